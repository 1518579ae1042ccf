/* launch.c — `dpep launch FILE`: the mpirun or srun command (or an sbatch
 * script) for a deployment YAML, validated against the config, the hostfile
 * and the Slurm allocation before anything starts. */
#include "dpep_launcher.h"
#include "dpep_cli.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------------- */
/* Slurm environment                                                      */
/* ---------------------------------------------------------------------- */
static int env_count(const char *name)
{
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    /* "8", or Slurm's compressed "8(x2)" / "8,8": the first count. */
    long v = strtol(s, NULL, 10);
    return v > 0 && v < INT_MAX ? (int)v : 0;
}

void dpep_slurm_env_read(dpep_slurm_env *out)
{
    memset(out, 0, sizeof *out);
    const char *id = getenv("SLURM_JOB_ID");
    if (!id || !*id) id = getenv("SLURM_JOBID");
    if (!id || !*id) return;
    out->inside = true;
    snprintf(out->job_id, sizeof out->job_id, "%s", id);
    out->nodes = env_count("SLURM_JOB_NUM_NODES");
    if (!out->nodes) out->nodes = env_count("SLURM_NNODES");
    out->ntasks_per_node = env_count("SLURM_NTASKS_PER_NODE");
    out->gpus_per_node = env_count("SLURM_GPUS_ON_NODE");
    if (!out->gpus_per_node) out->gpus_per_node = env_count("SLURM_GPUS_PER_NODE");
}

/* ---------------------------------------------------------------------- */
/* helpers                                                                */
/* ---------------------------------------------------------------------- */
static void where(const dpep_config *cfg, const char *dotted, char *buf, size_t n)
{
    dpep_config_where(cfg, dpep_config_option_find(dotted), buf, n);
}

#define LERR(optname, ...)                                                                     \
    do {                                                                                       \
        char w_[4300], m_[1024];                                                               \
        where(cfg, optname, w_, sizeof w_);                                                    \
        snprintf(m_, sizeof m_, __VA_ARGS__);                                                  \
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s: %s", w_, optname, m_);                   \
    } while (0)

static bool gpu_device(const dpep_config *cfg)
{
    /* auto counts as GPU when the config names GPUs per node. */
    return cfg->runtime.device == DPEP_DEVICE_CUDA ||
           (cfg->runtime.device == DPEP_DEVICE_AUTO && cfg->launch.gpus_per_node > 0);
}

/* Transport defaults (bench/RESULTS.md: shared memory on one node; TCP across
 * nodes), then launch.mca, whose entries win. NAME=VALUE strings. */
static void build_mca(const dpep_config *cfg, int nodes, dpep_argv *out)
{
    const char *key[DPEP_KV_MAX + 2], *val[DPEP_KV_MAX + 2];
    int n = 0;
    key[n] = "pml", val[n++] = "ob1";
    key[n] = "btl", val[n++] = nodes == 1 ? "self,vader" : "self,tcp";
    const dpep_kv_map *m = &cfg->launch.mca;
    for (int i = 0; i < m->n; i++) {
        int k;
        for (k = 0; k < n; k++)
            if (strcmp(key[k], m->key[i]) == 0) break;
        key[k] = m->key[i];
        val[k] = m->value[i];
        if (k == n) n++;
    }
    for (int k = 0; k < n; k++) dpep_argv_pushf(out, "%s=%s", key[k], val[k]);
}

static const char *mpirun_bind(dpep_bind b)
{
    return b == DPEP_BIND_CORE ? "core" : b == DPEP_BIND_NUMA ? "numa" : "none";
}

static const char *srun_bind(dpep_bind b)
{
    return b == DPEP_BIND_CORE ? "cores" : b == DPEP_BIND_NUMA ? "ldoms" : "none";
}

static void build_rank_argv(const dpep_launch_opts *o, dpep_argv *out)
{
    if (o->cmd && o->n_cmd > 0) {
        for (int i = 0; i < o->n_cmd; i++) dpep_argv_push(out, o->cmd[i]);
        return;
    }
    dpep_argv_push(out, o->dpep_bin);
    dpep_argv_push(out, o->program ? o->program : "run");
    dpep_argv_push(out, o->config_path);
    if (o->configuration) {
        dpep_argv_push(out, "--configuration");
        dpep_argv_push(out, o->configuration);
    }
    for (int i = 0; i < o->n_overrides; i++) dpep_argv_push(out, o->overrides[i]);
}

/* Checks the hosts mpirun will use: enough of them, enough slots each. */
static void check_hostfile(const dpep_config *cfg, int nodes, int per_node, dpep_diag *diag)
{
    dpep_hostfile h;
    if (dpep_hostfile_parse(cfg->launch.hostfile, &h, diag) != DPEP_OK) {
        char w[4300];
        where(cfg, "launch.hostfile", w, sizeof w);
        dpep_diag_add(diag, DPEP_DIAG_NOTE, "%s: launch.hostfile names %s", w, cfg->launch.hostfile);
        return;
    }
    if (h.n < nodes) {
        LERR("launch.hostfile", "%s lists %d host%s but launch.nodes is %d (expected at least %d "
             "hosts)", cfg->launch.hostfile, h.n, h.n == 1 ? "" : "s", nodes, nodes);
    } else {
        char gw[4300];
        where(cfg, cfg->launch.gpus_per_node ? "launch.gpus_per_node" : "launch.nodes", gw, sizeof gw);
        for (int i = 0; i < nodes; i++)
            if (h.host[i].slots < per_node)
                dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d: host %s has %d slot%s but the job "
                              "puts %d ranks on each node (%s) (expected slots=%d or more)",
                              cfg->launch.hostfile, h.host[i].line, h.host[i].name, h.host[i].slots,
                              h.host[i].slots == 1 ? "" : "s", per_node, gw, per_node);
        if (h.n > nodes)
            dpep_diag_add(diag, DPEP_DIAG_NOTE, "%s: %d hosts listed, the job uses the first %d "
                          "(launch.nodes)", cfg->launch.hostfile, h.n, nodes);
    }
    dpep_hostfile_free(&h);
}

/* The model every rank will read: config.json readable, layout it fits. */
static void check_model(const dpep_config *cfg, const dpep_layout *l, dpep_diag *diag)
{
    const char *p = cfg->model.path;
    if (!p || !*p) {
        LERR("model.path", "empty (expected the Hugging Face checkpoint directory every rank "
             "reads; or launch another program with --program / --)");
        return;
    }
    char cj[PATH_MAX + 16];
    snprintf(cj, sizeof cj, "%s/config.json", p);
    /* model.generate: dpep run writes the test model there on first use. */
    if (access(cj, F_OK) != 0 && cfg->model.generate != DPEP_GEN_NONE) return;
    if (access(cj, R_OK) != 0) {
        LERR("model.path", "%s is not readable: %s (expected a checkpoint directory at the same "
             "path on every node; `dpep model gen DIR` writes a test model)", cj, strerror(errno));
        return;
    }
    dpep_model_config m;
    if (dpep_model_config_load(p, &m, diag) != DPEP_OK) return;
    dpep_model_check_layout(&m, l, p, diag);
}

/* ---------------------------------------------------------------------- */
/* the command                                                            */
/* ---------------------------------------------------------------------- */
/* The launcher to use, with the reason for the "# launcher:" line in `why`. */
static dpep_launcher pick_launcher(const dpep_config *cfg, const dpep_slurm_env *slurm,
                                   char *why, size_t n)
{
    dpep_launcher kind = cfg->launch.launcher;
    if (kind == DPEP_LAUNCHER_AUTO) {
        kind = slurm->inside ? DPEP_LAUNCHER_SRUN : DPEP_LAUNCHER_MPIRUN;
        if (slurm->inside)
            snprintf(why, n, "launch.launcher auto, inside Slurm job %s", slurm->job_id);
        else
            snprintf(why, n, "launch.launcher auto, no Slurm allocation");
    } else {
        snprintf(why, n, "launch.launcher %s", kind == DPEP_LAUNCHER_SRUN ? "srun" : "mpirun");
    }
    return kind;
}

/* Inside a Slurm allocation: the job must fit its nodes, tasks and GPUs per
 * node. Errors go to diag; the caller counts them. */
static void check_slurm(const dpep_config *cfg, const dpep_slurm_env *slurm, int nodes,
                        int per_node, dpep_diag *diag)
{
    if (!slurm->inside) return;
    if (slurm->nodes && nodes > slurm->nodes)
        LERR("launch.nodes", "the job needs %d nodes but Slurm allocation %s has %d "
             "(SLURM_JOB_NUM_NODES) (expected salloc/sbatch --nodes=%d, or fewer launch.nodes)",
             nodes, slurm->job_id, slurm->nodes, nodes);
    else if (slurm->nodes > nodes)
        dpep_diag_add(diag, DPEP_DIAG_NOTE, "Slurm allocation %s has %d nodes; the job uses %d "
                      "(launch.nodes)", slurm->job_id, slurm->nodes, nodes);
    const char *pn = cfg->launch.gpus_per_node ? "launch.gpus_per_node" : "launch.nodes";
    if (slurm->ntasks_per_node && per_node > slurm->ntasks_per_node)
        LERR(pn, "the job puts %d ranks on each node but Slurm allocation %s allows %d "
             "(SLURM_NTASKS_PER_NODE) (expected --ntasks-per-node=%d in salloc/sbatch)",
             per_node, slurm->job_id, slurm->ntasks_per_node, per_node);
    if (gpu_device(cfg) && slurm->gpus_per_node && per_node > slurm->gpus_per_node)
        LERR(pn, "the job puts %d GPU ranks on each node but Slurm allocation %s has %d GPUs "
             "per node (SLURM_GPUS_ON_NODE) (expected --gpus-per-node=%d)", per_node,
             slurm->job_id, slurm->gpus_per_node, per_node);
}

/* Where the ranks go: launch.hostfile (mpirun only), else --host, else the
 * Slurm allocation or the local node. Returns whether mpirun gets the
 * hostfile. Errors go to diag; the caller counts them. */
static bool check_hosts(const dpep_config *cfg, const dpep_launch_opts *o,
                        const dpep_slurm_env *slurm, dpep_launcher kind, int nodes, int per_node,
                        dpep_diag *diag)
{
    bool use_hostfile = kind == DPEP_LAUNCHER_MPIRUN && cfg->launch.hostfile[0];
    if (kind == DPEP_LAUNCHER_SRUN && cfg->launch.hostfile[0]) {
        char w[4300];
        where(cfg, "launch.hostfile", w, sizeof w);
        dpep_diag_add(diag, DPEP_DIAG_NOTE, "%s: launch.hostfile is for mpirun; srun takes the "
                      "nodes of the Slurm allocation", w);
    }
    if (use_hostfile) check_hostfile(cfg, nodes, per_node, diag);
    if (kind == DPEP_LAUNCHER_MPIRUN && o->hosts && !use_hostfile) {
        int n_hosts = 1;
        for (const char *p = o->hosts; *p; p++) n_hosts += *p == ',';
        if (n_hosts < nodes)
            LERR("launch.nodes", "the job needs %d nodes but --host names %d (%s) (expected %d "
                 "hosts)", nodes, n_hosts, o->hosts, nodes);
    }
    if (kind == DPEP_LAUNCHER_MPIRUN && nodes > 1 && !use_hostfile && !o->hosts && !slurm->inside)
        LERR("launch.nodes", "%d nodes but neither launch.hostfile nor --host names them and "
             "this is not a Slurm allocation (expected a hostfile with one \"HOST slots=%d\" line "
             "per node, or run inside salloc/sbatch)", nodes, per_node);
    return use_hostfile;
}

/* mpirun's --host value: the first `nodes` names of the comma-separated
 * `hosts`, each with ":per_node" slots; cut at the buffer's end. */
static void host_list(const char *hosts, int nodes, int per_node, char *list, size_t n)
{
    size_t off = 0;
    const char *p = hosts;
    list[0] = '\0';
    for (int i = 0; i < nodes && *p; i++) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        off += (size_t)snprintf(list + off, n - off, "%s%.*s:%d", i ? "," : "", (int)len, p,
                                per_node);
        if (off >= n) break;
        p = comma ? comma + 1 : p + len;
    }
}

/* The mpirun line up to the rank's command: size, mapping, binding, hosts,
 * then every MCA setting and launch.env entry as flags. */
static void build_mpirun(const dpep_config *cfg, const dpep_launch_opts *o, bool use_hostfile,
                         dpep_launch_cmd *c)
{
    const dpep_kv_map *env = &cfg->launch.env;
    dpep_argv *a = &c->argv;
    dpep_argv_push(a, "mpirun");
    dpep_argv_push(a, "-np");
    dpep_argv_pushf(a, "%d", c->world);
    dpep_argv_push(a, "--map-by");
    dpep_argv_pushf(a, "ppr:%d:node", c->per_node);
    dpep_argv_push(a, "--bind-to");
    dpep_argv_push(a, mpirun_bind(cfg->runtime.bind));
    /* CPU ranks are processes, not GPUs: a small machine may have fewer
     * cores (slots) than ranks. */
    if (cfg->runtime.device == DPEP_DEVICE_CPU) dpep_argv_push(a, "--oversubscribe");
    if (use_hostfile) {
        dpep_argv_push(a, "--hostfile");
        dpep_argv_push(a, cfg->launch.hostfile);
    } else if (o->hosts) {
        char list[8192];
        host_list(o->hosts, c->nodes, c->per_node, list, sizeof list);
        dpep_argv_push(a, "--host");
        dpep_argv_push(a, list);
    }
    for (int i = 0; i < c->mca.n; i++) {
        const char *eq = strchr(c->mca.v[i], '=');
        dpep_argv_push(a, "--mca");
        dpep_argv_pushf(a, "%.*s", (int)(eq - c->mca.v[i]), c->mca.v[i]);
        dpep_argv_push(a, eq + 1);
    }
    for (int i = 0; i < env->n; i++) {
        dpep_argv_push(a, "-x");
        dpep_argv_pushf(a, "%s=%s", env->key[i], env->value[i]);
    }
}

/* The srun line up to the rank's command, and the environment it exports. */
static void build_srun(const dpep_config *cfg, dpep_launch_cmd *c)
{
    const dpep_kv_map *env = &cfg->launch.env;
    /* Open MPI under srun reads its MCA settings from OMPI_MCA_* variables;
     * srun exports the environment it is started with (--export=ALL). */
    for (int i = 0; i < c->mca.n; i++) dpep_argv_pushf(&c->env, "OMPI_MCA_%s", c->mca.v[i]);
    for (int i = 0; i < env->n; i++)
        dpep_argv_pushf(&c->env, "%s=%s", env->key[i], env->value[i]);
    dpep_argv *a = &c->argv;
    dpep_argv_push(a, "srun");
    dpep_argv_push(a, "--mpi=pmix");
    dpep_argv_pushf(a, "--nodes=%d", c->nodes);
    dpep_argv_pushf(a, "--ntasks=%d", c->world);
    dpep_argv_pushf(a, "--ntasks-per-node=%d", c->per_node);
    if (gpu_device(cfg)) dpep_argv_pushf(a, "--gpus-per-node=%d", c->per_node);
    dpep_argv_pushf(a, "--cpu-bind=%s", srun_bind(cfg->runtime.bind));
    dpep_argv_push(a, "--kill-on-bad-exit=1");
    dpep_argv_push(a, "--export=ALL");
}

dpep_status dpep_launch_build(dpep_config *cfg, const dpep_launch_opts *o,
                              const dpep_slurm_env *slurm, dpep_launch_cmd *out, dpep_diag *diag)
{
    int before = diag->n_errors;
    int nodes = (int)cfg->launch.nodes;
    /* World: nodes × gpus_per_node when given, else what the layout needs. */
    int world = cfg->launch.gpus_per_node ? (int)(cfg->launch.nodes * cfg->launch.gpus_per_node)
                                          : 0;
    if (dpep_config_validate(cfg, world, diag) != DPEP_OK) {
        if (world) {
            char w[4300];
            where(cfg, "launch.gpus_per_node", w, sizeof w);
            dpep_diag_add(diag, DPEP_DIAG_NOTE, "%s: launch.gpus_per_node: the job has nodes × "
                          "gpus_per_node = %lld × %lld = %d ranks", w, (long long)cfg->launch.nodes,
                          (long long)cfg->launch.gpus_per_node, world);
        }
        return DPEP_ERR_INVALID;
    }
    dpep_layout l;
    DPEP_TRY(dpep_layout_from_config(cfg, world, &l));
    world = l.world;
    int per_node = world / nodes;

    char why[256];
    dpep_launcher kind = pick_launcher(cfg, slurm, why, sizeof why);
    check_slurm(cfg, slurm, nodes, per_node, diag);
    bool use_hostfile = check_hosts(cfg, o, slurm, kind, nodes, per_node, diag);
    if (o->check_model && !(o->cmd && o->n_cmd)) check_model(cfg, &l, diag);
    if (diag->n_errors > before) return DPEP_ERR_INVALID;

    dpep_launch_cmd c;
    memset(&c, 0, sizeof c);
    c.kind = kind;
    c.world = world;
    c.nodes = nodes;
    c.per_node = per_node;
    snprintf(c.why, sizeof c.why, "%s", why);
    dpep_argv_init(&c.env);
    dpep_argv_init(&c.argv);
    dpep_argv_init(&c.rank_argv);
    dpep_argv_init(&c.mca);
    build_mca(cfg, nodes, &c.mca);
    build_rank_argv(o, &c.rank_argv);
    if (kind == DPEP_LAUNCHER_MPIRUN) build_mpirun(cfg, o, use_hostfile, &c);
    else build_srun(cfg, &c);
    for (int i = 0; i < c.rank_argv.n; i++) dpep_argv_push(&c.argv, c.rank_argv.v[i]);
    *out = c;
    return DPEP_OK;
}

void dpep_launch_cmd_free(dpep_launch_cmd *c)
{
    dpep_argv_free(&c->env);
    dpep_argv_free(&c->argv);
    dpep_argv_free(&c->rank_argv);
    dpep_argv_free(&c->mca);
}

/* ---------------------------------------------------------------------- */
/* sbatch                                                                 */
/* ---------------------------------------------------------------------- */
static void config_stem(const char *path, char *buf, size_t n)
{
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    snprintf(buf, n, "%s", base);
    char *dot = strrchr(buf, '.');
    if (dot && dot != buf) *dot = '\0';
}

static void print_env_line(FILE *f, const char *prefix, const char *nv)
{
    const char *eq = strchr(nv, '=');
    fprintf(f, "%s%.*s=", prefix, (int)(eq - nv), nv);
    dpep_shell_print_word(eq + 1, f);
}

dpep_status dpep_launch_write_sbatch(const dpep_config *cfg_in, const dpep_launch_opts *o,
                                     const dpep_sbatch_opts *so, const char *path, dpep_diag *diag)
{
    /* The script's srun runs inside the allocation it asks for. */
    dpep_config *cfg = (dpep_config *)cfg_in;
    dpep_slurm_env inside = {.inside = true, .job_id = "$SLURM_JOB_ID"};
    dpep_launcher saved = cfg->launch.launcher;
    cfg->launch.launcher = DPEP_LAUNCHER_SRUN;
    dpep_launch_cmd c;
    dpep_status st = dpep_launch_build(cfg, o, &inside, &c, diag);
    cfg->launch.launcher = saved;
    if (st != DPEP_OK) return st;
    FILE *f = fopen(path, "w");
    if (!f) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot write the sbatch script: %s", path,
                      strerror(errno));
        dpep_launch_cmd_free(&c);
        return DPEP_ERR_IO;
    }
    char stem[256], name[300];
    config_stem(o->config_path, stem, sizeof stem);
    snprintf(name, sizeof name, "%s", so->job_name ? so->job_name : "");
    if (!so->job_name) snprintf(name, sizeof name, "dpep-%s", stem);
    bool gpu = gpu_device(cfg);
    fprintf(f, "#!/bin/bash\n");
    fprintf(f, "# sbatch script for %s, written by `dpep launch --sbatch`.\n", o->config_path);
    fprintf(f, "# %d ranks: %d node%s x %d rank%s per node (one rank per %s).\n", c.world, c.nodes,
            c.nodes == 1 ? "" : "s", c.per_node, c.per_node == 1 ? "" : "s", gpu ? "GPU" : "CPU slot");
    fprintf(f, "# Submit with: sbatch %s\n", path);
    fprintf(f, "# The #SBATCH lines are yours to edit (time, partition, account); nodes and\n"
               "# tasks per node must stay as the config says (dpep checks them at start).\n");
    fprintf(f, "#SBATCH --job-name=%s\n", name);
    fprintf(f, "#SBATCH --nodes=%d\n", c.nodes);
    fprintf(f, "#SBATCH --ntasks-per-node=%d\n", c.per_node);
    if (gpu) fprintf(f, "#SBATCH --gpus-per-node=%d            # one rank per GPU\n", c.per_node);
    fprintf(f, "#SBATCH --time=%s               # wall-clock limit (HH:MM:SS)\n",
            so->time ? so->time : "01:00:00");
    fprintf(f, "#SBATCH --output=%%x-%%j.out          # stdout and stderr of every rank\n");
    if (so->partition) fprintf(f, "#SBATCH --partition=%s\n", so->partition);
    else fprintf(f, "##SBATCH --partition=PARTITION    # remove one '#' to pick a partition\n");
    if (so->account) fprintf(f, "#SBATCH --account=%s\n", so->account);
    else fprintf(f, "##SBATCH --account=ACCOUNT        # remove one '#' to charge an account\n");
    if (gpu) fprintf(f, "#SBATCH --exclusive                # whole nodes: no other job on the GPUs\n");
    else fprintf(f, "##SBATCH --exclusive               # whole nodes\n");
    fprintf(f, "\nset -eu\n\n");
    fprintf(f, "# Open MPI transport for every rank (dpep's default for %s, then launch.mca;\n"
               "# see docs/LAUNCH.md) and launch.env. srun passes the environment on.\n",
            c.nodes == 1 ? "one node: shared memory" : "several nodes: TCP");
    for (int i = 0; i < c.env.n; i++) {
        print_env_line(f, "export ", c.env.v[i]);
        fputc('\n', f);
    }
    fprintf(f, "\n# Every rank reads the same config file: it must be at this path on every node.\n");
    dpep_argv_print_shell(&c.argv, f);
    fputc('\n', f);
    int rc = fclose(f);
    dpep_launch_cmd_free(&c);
    if (rc != 0) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot write the sbatch script: %s", path,
                      strerror(errno));
        return DPEP_ERR_IO;
    }
    return DPEP_OK;
}

/* ---------------------------------------------------------------------- */
/* the subcommand                                                         */
/* ---------------------------------------------------------------------- */
void dpep_cmd_launch_help(FILE *f)
{
    fprintf(f,
            "usage: dpep launch FILE [options] [overrides] [-- CMD ARGS…]\n\n"
            "Builds the command that starts FILE's deployment and runs it (exec), prints it\n"
            "(--dry-run) or writes an sbatch script (--sbatch OUT). Inside a Slurm allocation\n"
            "(SLURM_JOB_ID set) launch.launcher auto picks `srun --mpi=pmix`, else `mpirun`.\n"
            "Every rank runs `dpep run ABSOLUTE/FILE [--configuration NAME] [overrides]`.\n\n"
            "options:\n"
            "  --dry-run            print the command (and the environment it sets) instead\n"
            "  --sbatch OUT         write an sbatch script to OUT (nodes, ntasks-per-node,\n"
            "                       gpus-per-node, time, job name, the srun line)\n"
            "  --program NAME       the dpep subcommand each rank runs (default run; e.g.\n"
            "                       placement to check the job's layout)\n"
            "  -- CMD ARGS…         run CMD ARGS… on every rank instead of dpep\n"
            "  --dpep PATH          the dpep binary the ranks run (default: $DPEP_BIN, this\n"
            "                       binary when it is dpep, a dpep beside it, or dpep in PATH)\n"
            "  --configuration NAME cookbook entry of FILE (passed to the ranks too)\n"
            "  --host A,B,…         mpirun hosts when there is no launch.hostfile\n"
            "  --no-model-check     do not require model.path/config.json to be readable\n"
            "  --time HH:MM:SS      sbatch time limit (default 01:00:00)\n"
            "  --job-name NAME      sbatch job name (default dpep-<file name>)\n"
            "  --partition P, --account A   sbatch partition and account\n"
            "  overrides            --tp-size N, --dp-size N, --nnodes N, --gpus-per-node N,\n"
            "                       --launcher mpirun|srun, --set launch.mca.NAME=V, … as in\n"
            "                       `dpep config check`; applied here and passed to the ranks\n\n"
            "Checks before starting: world size vs tp/dp, nodes × gpus_per_node, hostfile\n"
            "hosts and slots, the Slurm allocation's nodes and tasks per node, model path\n"
            "readable (for `run`); each error names the config's FILE:LINE:COL.\n"
            "Transport: one node uses --mca pml ob1 --mca btl self,vader (shared memory),\n"
            "several nodes --mca pml ob1 --mca btl self,tcp; launch.mca entries win.\n");
}

/* The dpep binary the ranks run. */
static bool find_dpep(const char *given, char *out, size_t n)
{
    if (given) {
        char *r = realpath(given, NULL);
        snprintf(out, n, "%s", r ? r : given);
        free(r);
        return true;
    }
    const char *env = getenv("DPEP_BIN");
    if (env && *env) {
        snprintf(out, n, "%s", env);
        return true;
    }
    char self[PATH_MAX];
    ssize_t k = readlink("/proc/self/exe", self, sizeof self - 1);
    if (k > 0) {
        self[k] = '\0';
        char *slash = strrchr(self, '/');
        if (slash && strcmp(slash + 1, "dpep") == 0) {
            snprintf(out, n, "%s", self);
            return true;
        }
        if (slash) {
            snprintf(out, n, "%.*s/dpep", (int)(slash - self), self);
            if (access(out, X_OK) == 0) return true;
        }
    }
    const char *path = getenv("PATH");
    while (path && *path) {
        const char *colon = strchr(path, ':');
        size_t len = colon ? (size_t)(colon - path) : strlen(path);
        snprintf(out, n, "%.*s/dpep", (int)len, path);
        if (len && access(out, X_OK) == 0) return true;
        path = colon ? colon + 1 : NULL;
    }
    return false;
}

/* Whether --help / -h comes before any "--". */
static bool wants_help(int argc, char **argv)
{
    for (int i = 0; i < argc && strcmp(argv[i], "--") != 0; i++)
        if ((strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)) return true;
    return false;
}

/* Usage rules the option scanner cannot see: a FILE, something after "--",
 * and --program or "-- CMD", not both. Returns the first failure (with its
 * message) or `st` as it was. */
static dpep_status check_usage(dpep_status st, const char *file, char **cmd, int n_cmd,
                               const char *program, dpep_diag *diag)
{
    if (st == DPEP_OK && !file) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR,
                      "dpep launch: missing FILE (see dpep launch --help)");
        st = DPEP_ERR_USAGE;
    }
    if (st == DPEP_OK && cmd && n_cmd == 0) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "dpep launch: nothing after -- (expected CMD ARGS…)");
        st = DPEP_ERR_USAGE;
    }
    if (st == DPEP_OK && cmd && program) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "dpep launch: --program and -- CMD exclude each "
                      "other (expected one of them)");
        st = DPEP_ERR_USAGE;
    }
    return st;
}

/* The overrides, verbatim, for the ranks: what dpep_cli_scan did not take
 * as an own option or the positional FILE. Pointers into argv go to `ovr`
 * (room for nargs); returns how many. Each override is parsed into a
 * scratch config only to learn how many words it takes. */
static int collect_overrides(int nargs, char **argv, const dpep_cli_opt *opts, int nopt,
                             char **ovr, dpep_diag *diag)
{
    int n_ovr = 0;
    dpep_config scratch;
    dpep_config_init(&scratch);
    bool seen_file = false;
    for (int i = 0; i < nargs;) {
        const char *a = argv[i];
        int k;
        size_t len = strcspn(a, "=");
        for (k = 0; k < nopt; k++)
            if (strlen(opts[k].name) == len && strncmp(a, opts[k].name, len) == 0) break;
        if (k < nopt) {
            i += (opts[k].flag || a[len] == '=') ? 1 : 2;
        } else if (strncmp(a, "--", 2) == 0) {
            int j = i;
            if (dpep_config_parse_flag(&scratch, nargs, argv, &j, diag) != DPEP_OK) break;
            for (; i < j; i++) ovr[n_ovr++] = argv[i];
        } else if (!seen_file) {
            seen_file = true;
            i++;
        } else {
            i++;
        }
    }
    dpep_config_free(&scratch);
    return n_ovr;
}

/* Prints the command (stdout for --dry-run, else stderr as a record) and,
 * unless dry, sets its environment and execs it. Returns the exit code
 * when there is no exec. */
static int print_and_exec(const dpep_config *cfg, dpep_launch_cmd *c, const char *cfg_abs,
                          bool dry)
{
    dpep_layout l;
    dpep_layout_from_config(cfg, c->world, &l);
    FILE *out = dry ? stdout : stderr;
    fprintf(out, "# dpep launch %s: %d rank%s = %d node%s x %d; tp %d, dp %d%s, ep %d\n",
            cfg_abs, c->world, c->world == 1 ? "" : "s", c->nodes, c->nodes == 1 ? "" : "s",
            c->per_node, l.tp, l.dp, l.dpa ? " with DP attention" : " replicas", l.ep);
    fprintf(out, "# launcher: %s (%s)\n", c->kind == DPEP_LAUNCHER_SRUN ? "srun" : "mpirun",
            c->why);
    for (int i = 0; i < c->env.n; i++) {
        const char *eq = strchr(c->env.v[i], '=');
        fprintf(out, "%.*s=", (int)(eq - c->env.v[i]), c->env.v[i]);
        dpep_shell_print_word(eq + 1, out);
        fputc(' ', out);
    }
    dpep_argv_print_shell(&c->argv, out);
    fputc('\n', out);
    fflush(out);
    if (dry) return 0;
    for (int i = 0; i < c->env.n; i++) {
        char *eq = strchr(c->env.v[i], '=');
        *eq = '\0';
        setenv(c->env.v[i], eq + 1, 1);
        *eq = '=';
    }
    fflush(stdout);
    execvp(c->argv.v[0], c->argv.v);
    fprintf(stderr, "dpep launch: cannot run %s: %s (expected it in PATH)\n", c->argv.v[0],
            strerror(errno));
    return 1;
}

/* After a clean command line and config: the sbatch script, or the command
 * built against this process's Slurm environment, printed and run. Prints
 * the diagnostics; returns the exit code. */
static int launch_or_write(dpep_config *cfg, const dpep_launch_opts *lo,
                           const dpep_sbatch_opts *so, const char *sbatch, bool dry,
                           dpep_diag *diag)
{
    dpep_status st;
    if (sbatch) {
        st = dpep_launch_write_sbatch(cfg, lo, so, sbatch, diag);
        dpep_diag_print(diag, stderr);
        if (st == DPEP_OK)
            printf("wrote %s; submit with: sbatch %s\n", sbatch, sbatch);
        return dpep_status_exit_code(st);
    }
    dpep_slurm_env slurm;
    dpep_slurm_env_read(&slurm);
    dpep_launch_cmd c;
    st = dpep_launch_build(cfg, lo, &slurm, &c, diag);
    dpep_diag_print(diag, stderr);
    if (st != DPEP_OK) return dpep_status_exit_code(st);
    int rc = print_and_exec(cfg, &c, lo->config_path, dry);
    dpep_launch_cmd_free(&c);
    return rc;
}

int dpep_cmd_launch(int argc, char **argv)
{
    if (wants_help(argc, argv)) {
        dpep_cmd_launch_help(stdout);
        return 0;
    }
    int nargs = argc, n_cmd = 0;
    char **cmd = NULL;
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--") == 0) {
            nargs = i;
            cmd = argv + i + 1;
            n_cmd = argc - i - 1;
            break;
        }
    bool dry = false, no_model = false;
    const char *sbatch = NULL, *program = NULL, *dpep_given = NULL, *conf = NULL, *hosts = NULL;
    dpep_sbatch_opts so = {0};
    dpep_cli_opt opts[] = {
        {"--dry-run", NULL, &dry},          {"--sbatch", &sbatch, NULL},
        {"--program", &program, NULL},      {"--dpep", &dpep_given, NULL},
        {"--configuration", &conf, NULL},   {"--host", &hosts, NULL},
        {"--no-model-check", NULL, &no_model}, {"--time", &so.time, NULL},
        {"--job-name", &so.job_name, NULL}, {"--partition", &so.partition, NULL},
        {"--account", &so.account, NULL},
    };
    int nopt = (int)(sizeof opts / sizeof opts[0]);
    dpep_diag diag;
    dpep_diag_init(&diag);
    const char *file = NULL;
    dpep_config cfg;
    if (dpep_config_init(&cfg) != DPEP_OK) return 1;
    dpep_status st = dpep_cli_scan("launch", nargs, argv, opts, nopt, &file, &diag);
    st = check_usage(st, file, cmd, n_cmd, program, &diag);
    char **ovr = calloc((size_t)nargs + 1, sizeof *ovr);
    int n_ovr = 0;
    if (st == DPEP_OK && ovr) n_ovr = collect_overrides(nargs, argv, opts, nopt, ovr, &diag);
    char cfg_abs[PATH_MAX] = "";
    if (st == DPEP_OK) {
        char *r = realpath(file, NULL);
        snprintf(cfg_abs, sizeof cfg_abs, "%s", r ? r : file);
        free(r);
        st = dpep_config_load_file(&cfg, cfg_abs, conf, &diag);
    }
    if (st == DPEP_OK) st = dpep_cli_apply_overrides(&cfg, nargs, argv, opts, nopt, &diag);
    char bin[PATH_MAX] = "dpep";
    if (st == DPEP_OK && !cmd && !find_dpep(dpep_given, bin, sizeof bin)) {
        dpep_diag_add(&diag, DPEP_DIAG_ERROR, "dpep launch: cannot find the dpep binary for the "
                      "ranks (expected --dpep PATH, $DPEP_BIN, or dpep in PATH)");
        st = DPEP_ERR_USAGE;
    }
    dpep_launch_opts lo = {
        .config_path = cfg_abs, .configuration = conf, .dpep_bin = bin, .program = program,
        .cmd = cmd, .n_cmd = n_cmd, .overrides = ovr, .n_overrides = n_ovr, .hosts = hosts,
        .check_model = !no_model && (!program || strcmp(program, "run") == 0),
    };
    int rc;
    if (st != DPEP_OK) {
        dpep_diag_print(&diag, stderr);
        rc = dpep_status_exit_code(st);
    } else {
        rc = launch_or_write(&cfg, &lo, &so, sbatch, dry, &diag);
    }
    free(ovr);
    dpep_config_free(&cfg);
    return rc;
}
