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
    for (int i = 0; i < o->n_program_args; i++) dpep_argv_push(out, o->program_args[i]);
}

static bool is_serve(const dpep_launch_opts *o)
{
    return o->program && strcmp(o->program, "serve") == 0 && !(o->cmd && o->n_cmd);
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

/* The model every rank will read: config.json readable, layout it fits;
 * for `serve` also the tokenizer rank 0 encodes prompts with. */
static void check_model(const dpep_config *cfg, const dpep_launch_opts *o, const dpep_layout *l,
                        dpep_diag *diag)
{
    const char *p = cfg->model.path;
    bool serve = is_serve(o);
    if (!p || !*p) {
        LERR("model.path", "empty (expected the Hugging Face checkpoint directory every rank "
             "reads; or launch another program with --program / --)");
        return;
    }
    char cj[PATH_MAX + 16];
    snprintf(cj, sizeof cj, "%s/config.json", p);
    /* model.generate: dpep run (not serve) writes the test model there on first use. */
    if (access(cj, F_OK) != 0 && cfg->model.generate != DPEP_GEN_NONE && !serve) return;
    if (access(cj, R_OK) != 0) {
        LERR("model.path", "%s is not readable: %s (expected a checkpoint directory at the same "
             "path on every node; `dpep model gen DIR` writes a test model)", cj, strerror(errno));
        return;
    }
    snprintf(cj, sizeof cj, "%s/tokenizer.json", p);
    if (serve && access(cj, R_OK) != 0) {
        LERR("model.path", "%s is not readable: %s (dpep serve needs the checkpoint's "
             "tokenizer.json; `dpep model gen --tokenizer DIR` writes a test model with one)", cj,
             strerror(errno));
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
    if (o->check_model && !(o->cmd && o->n_cmd)) check_model(cfg, o, &l, diag);
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
/* where `dpep serve` listens                                             */
/* ---------------------------------------------------------------------- */
/* server.host names every interface of rank 0's node. */
static bool host_any(const char *h)
{
    return !*h || strcmp(h, "0.0.0.0") == 0 || strcmp(h, "::") == 0;
}

/* server.host reachable from rank 0's node only. */
static bool host_loopback(const char *h)
{
    return strncmp(h, "127.", 4) == 0 || strcmp(h, "localhost") == 0 || strcmp(h, "::1") == 0;
}

/* The base URL of the server: `node` (rank 0's node) when it listens on
 * every interface, else server.host itself; "PORT" when server.port is 0
 * (a free port chosen at start and printed by dpep serve). */
static void server_url(const dpep_config *cfg, const char *node, char *buf, size_t n)
{
    const char *h = host_any(cfg->server.host) ? node : cfg->server.host;
    bool v6 = strchr(h, ':') != NULL;
    char port[32];
    if (cfg->server.port) snprintf(port, sizeof port, "%lld", (long long)cfg->server.port);
    else snprintf(port, sizeof port, "PORT");
    snprintf(buf, n, "http://%s%s%s:%s", v6 ? "[" : "", h, v6 ? "]" : "", port);
}

/* "server.host:server.port" as dpep serve binds it ("[::]:30000" for IPv6). */
static void listen_addr(const dpep_config *cfg, char *buf, size_t n)
{
    const char *h = *cfg->server.host ? cfg->server.host : "0.0.0.0";
    bool v6 = strchr(h, ':') != NULL;
    snprintf(buf, n, "%s%s%s:%lld", v6 ? "[" : "", h, v6 ? "]" : "", (long long)cfg->server.port);
}

/* Rank 0's node as the launcher will place it: the first host of the
 * hostfile or of --host, "FIRST_NODE" (the first node of the Slurm
 * allocation), or this machine. */
static void first_node(const dpep_config *cfg, const dpep_launch_opts *o, const dpep_launch_cmd *c,
                       const dpep_slurm_env *slurm, char *buf, size_t n)
{
    bool mpirun = c->kind == DPEP_LAUNCHER_MPIRUN;
    if (mpirun && cfg->launch.hostfile[0]) {
        dpep_hostfile h;
        dpep_diag quiet;
        dpep_diag_init(&quiet);
        if (dpep_hostfile_parse(cfg->launch.hostfile, &h, &quiet) == DPEP_OK) {
            snprintf(buf, n, "%s", h.n > 0 ? h.host[0].name : "FIRST_NODE");
            dpep_hostfile_free(&h);
            return;
        }
    }
    if (mpirun && o->hosts) {
        snprintf(buf, n, "%.*s", (int)strcspn(o->hosts, ","), o->hosts);
    } else if (slurm->inside) {
        snprintf(buf, n, "FIRST_NODE");
    } else if (gethostname(buf, n) != 0 || !buf[0]) {
        snprintf(buf, n, "localhost");
    }
    buf[n - 1] = '\0';
}

/* The "# server:" and "# router:" lines of a printed serve command. */
static void print_server(FILE *out, const dpep_config *cfg, const dpep_launch_opts *o,
                         const dpep_launch_cmd *c, const dpep_slurm_env *slurm)
{
    char node[256], on[400], url[600];
    first_node(cfg, o, c, slurm, node, sizeof node);
    server_url(cfg, node, url, sizeof url);
    if (strcmp(node, "FIRST_NODE") == 0)
        snprintf(on, sizeof on, "the first node of Slurm allocation %s (FIRST_NODE: scontrol show "
                 "hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)", slurm->job_id);
    else
        snprintf(on, sizeof on, "%s", node);
    char addr[300];
    listen_addr(cfg, addr, sizeof addr);
    fprintf(out, "# server: rank 0 on %s listens on %s (server.host, server.port): %s", on, addr,
            url);
    if (host_loopback(cfg->server.host))
        fprintf(out, " from %s only (--host 0.0.0.0 after serve: every interface)", node);
    if (!cfg->server.port) fprintf(out, " (PORT: printed by dpep serve at start)");
    fprintf(out, "\n# router: python -m sglang_router.launch_router --worker-urls %s --policy "
                 "cache_aware --dp-aware%s\n", url, *cfg->server.api_key ? " --api-key KEY" : "");
}

/* The comments and echo line of a serve script: where the server is, how to
 * check it, how to put sglang-router in front of several such jobs. */
static void sbatch_serve_notes(FILE *f, const dpep_config *cfg)
{
    char url[600], other[600];
    server_url(cfg, "FIRST_NODE", url, sizeof url);
    server_url(cfg, "OTHER_FIRST_NODE", other, sizeof other);
    bool lo = host_loopback(cfg->server.host), key = *cfg->server.api_key;
    char addr[300];
    listen_addr(cfg, addr, sizeof addr);
    fprintf(f, "\n# The HTTP server: rank 0 runs on the first node of the allocation (FIRST_NODE\n"
               "# below; the echo line puts its URL at the top of the output file) and listens\n"
               "# on %s (server.host, server.port of the config).\n", addr);
    if (lo)
        fprintf(f, "# %s reaches it from FIRST_NODE only (server.host 0.0.0.0, or --host 0.0.0.0\n"
                   "# after `serve`, opens every interface); run the commands below there.\n",
                cfg->server.host);
    if (!cfg->server.port)
        fprintf(f, "# server.port 0: a free port, printed by dpep serve at start (\"listening on\").\n");
    fprintf(f, "# Check it and send it a request:\n#   curl -s %s/health\n", url);
    fprintf(f, "#   curl -s %s/generate%s -d '{\"text\": \"Hello\", \"sampling_params\": "
               "{\"max_new_tokens\": 8}}'\n", url, key ? " -H 'Authorization: Bearer KEY'" : "");
    if (key) fprintf(f, "# KEY: server.api_key of the config (every endpoint but /health needs it).\n");
    fprintf(f, "# sglang-router in front of this job and others started the same way (pip install\n"
               "# sglang-router; one URL per job; --dp-aware sends each request to one DP group):\n"
               "#   python -m sglang_router.launch_router --host 0.0.0.0 --port 8000 --policy "
               "cache_aware --dp-aware%s \\\n#     --worker-urls %s %s\n",
            key ? " --api-key KEY" : "", url, other);
    fprintf(f, "# The router loads the tokenizer from the worker's model_path (model.path) when\n"
               "# that directory exists where the router runs; otherwise it tries to download it\n"
               "# from the Hugging Face Hub.\n"
               "# scancel JOBID stops the server (SIGTERM: every rank exits 0), as does --time.\n");
    fprintf(f, "head_node=$(scontrol show hostnames \"${SLURM_JOB_NODELIST:-}\" 2>/dev/null | "
               "head -n 1)\nhead_node=${head_node:-$(hostname)}\n");
    server_url(cfg, "${head_node}", url, sizeof url);
    fprintf(f, "echo \"dpep serve: %s (job ${SLURM_JOB_ID:-}, rank 0 on ${head_node})\"\n", url);
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
    if (is_serve(o)) sbatch_serve_notes(f, cfg);
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
            "usage: dpep launch FILE [options] [overrides] [run|serve|placement [their options\n"
            "                   and overrides]] [-- CMD ARGS…]\n\n"
            "Builds the command that starts FILE's deployment and runs it (exec), prints it\n"
            "(--dry-run) or writes an sbatch script (--sbatch OUT). Inside a Slurm allocation\n"
            "(SLURM_JOB_ID set) launch.launcher auto picks `srun --mpi=pmix`, else `mpirun`.\n"
            "Every rank runs `dpep SUBCOMMAND ABSOLUTE/FILE [--configuration NAME] [overrides]\n"
            "[the subcommand's words]`; the subcommand is run unless named after FILE:\n"
            "  dpep launch FILE --dry-run                      every rank: dpep run FILE\n"
            "  dpep launch FILE --dry-run serve --port 30001   every rank: dpep serve FILE --port 30001\n"
            "  dpep launch FILE --sbatch serve.sbatch serve --host 0.0.0.0\n"
            "Launch's options go before the subcommand; after it come that subcommand's options\n"
            "(run: --output, --summary-json, --ignore-eos, --quiet, --max-kv-tokens; all:\n"
            "--configuration) and overrides, checked here and passed to the ranks. After\n"
            "`serve`, --host is server.host (the address rank 0 listens on); before it, --host\n"
            "lists mpirun's hosts. For serve the printed command and the sbatch script say\n"
            "where the server is (rank 0's node: the first host, under Slurm the first node of\n"
            "the allocation; server.port) and how to put sglang-router in front of it.\n\n"
            "options:\n"
            "  --dry-run            print the command (and the environment it sets) instead\n"
            "  --sbatch OUT         write an sbatch script to OUT (nodes, ntasks-per-node,\n"
            "                       gpus-per-node, time, job name, the srun line)\n"
            "  --program NAME       the dpep subcommand each rank runs (default run), passed\n"
            "                       no words of its own; naming run, serve or placement after\n"
            "                       FILE does the same and excludes it\n"
            "  -- CMD ARGS…         run CMD ARGS… on every rank instead of dpep\n"
            "  --dpep PATH          the dpep binary the ranks run (default: $DPEP_BIN, this\n"
            "                       binary when it is dpep, a dpep beside it, or dpep in PATH)\n"
            "  --configuration NAME cookbook entry of FILE (passed to the ranks too)\n"
            "  --host A,B,…         mpirun hosts when there is no launch.hostfile\n"
            "  --no-model-check     do not require model.path/config.json to be readable\n"
            "                       (for serve also tokenizer.json)\n"
            "  --time HH:MM:SS      sbatch time limit (default 01:00:00; a server stops there)\n"
            "  --job-name NAME      sbatch job name (default dpep-<file name>)\n"
            "  --partition P, --account A   sbatch partition and account\n"
            "  overrides            --tp-size N, --dp-size N, --nnodes N, --gpus-per-node N,\n"
            "                       --launcher mpirun|srun, --set launch.mca.NAME=V, … as in\n"
            "                       `dpep config check`; applied here and passed to the ranks\n\n"
            "Checks before starting: world size vs tp/dp, nodes × gpus_per_node, hostfile\n"
            "hosts and slots, the Slurm allocation's nodes and tasks per node, model path\n"
            "readable and the model fitting the layout (run and serve; serve: tokenizer.json\n"
            "too); each error names the config's FILE:LINE:COL. Bad usage exits 2.\n"
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

/* The command line of `dpep launch`, in three parts: launch's own words
 * (FILE, options, overrides), the subcommand named after FILE with its own
 * words, and `-- CMD…`. */
typedef struct launch_args {
    int n_own;                 /* argv[0, n_own): launch's part               */
    const char *word;          /* run | serve | placement after FILE, or NULL */
    char **prog;               /* the words after `word`, [n_prog]            */
    int n_prog;
    char **cmd;                /* the words after "--", or NULL               */
    int n_cmd;
    const char *file, *sbatch, *program, *dpep_given, *conf, *hosts;
    const char *prog_conf;     /* --configuration after `word`                */
    const char *sink;          /* values of the subcommand's other options    */
    bool dry, no_model, sink_flag;
    dpep_sbatch_opts so;
} launch_args;

#define LAUNCH_NOPT 11
static void launch_opt_table(launch_args *a, dpep_cli_opt *t)
{
    const dpep_cli_opt k[LAUNCH_NOPT] = {
        {"--dry-run", NULL, &a->dry},           {"--sbatch", &a->sbatch, NULL},
        {"--program", &a->program, NULL},       {"--dpep", &a->dpep_given, NULL},
        {"--configuration", &a->conf, NULL},    {"--host", &a->hosts, NULL},
        {"--no-model-check", NULL, &a->no_model}, {"--time", &a->so.time, NULL},
        {"--job-name", &a->so.job_name, NULL},  {"--partition", &a->so.partition, NULL},
        {"--account", &a->so.account, NULL},
    };
    memcpy(t, k, sizeof k);
}

/* The subcommands `dpep launch FILE WORD` names, with their own options
 * (value-taking, then flags); their other words are config overrides. */
static const struct {
    const char *name;
    const char *value_opt[5];
    const char *flag_opt[3];
} k_programs[] = {
    {"run", {"--configuration", "--output", "--summary-json", "--max-kv-tokens"},
     {"--ignore-eos", "--quiet"}},
    {"serve", {"--configuration"}, {NULL}},
    {"placement", {"--configuration"}, {NULL}},
};
#define N_PROGRAMS ((int)(sizeof k_programs / sizeof k_programs[0]))

static int program_index(const char *word)
{
    for (int p = 0; word && p < N_PROGRAMS; p++)
        if (strcmp(word, k_programs[p].name) == 0) return p;
    return -1;
}

/* The own options of subcommand p as a scanner table (room for 8); returns
 * how many. --configuration lands in a->prog_conf, the rest in sinks. */
static int program_opt_table(int p, launch_args *a, dpep_cli_opt *t)
{
    int n = 0;
    for (int i = 0; i < 5 && k_programs[p].value_opt[i]; i++, n++)
        t[n] = (dpep_cli_opt){k_programs[p].value_opt[i],
                              strcmp(k_programs[p].value_opt[i], "--configuration") == 0
                                  ? &a->prog_conf : &a->sink, NULL};
    for (int i = 0; i < 3 && k_programs[p].flag_opt[i]; i++, n++)
        t[n] = (dpep_cli_opt){k_programs[p].flag_opt[i], NULL, &a->sink_flag};
    return n;
}

/* The option of `opts` that `arg` names ("--x" or "--x=v"), or -1. */
static int opt_index(const char *arg, const dpep_cli_opt *opts, int nopt)
{
    size_t len = strcspn(arg, "=");
    for (int k = 0; k < nopt; k++)
        if (strlen(opts[k].name) == len && strncmp(arg, opts[k].name, len) == 0) return k;
    return -1;
}

/* Where the subcommand's name is in argv[0, nargs): the second bare word
 * (the first is FILE), skipping option values and overrides' words; nargs
 * when there is none or an override is bad (the scan then reports it). */
static int find_word(int nargs, char **argv, const dpep_cli_opt *opts, int nopt)
{
    dpep_config scratch;
    if (dpep_config_init(&scratch) != DPEP_OK) return nargs;
    dpep_diag quiet;
    dpep_diag_init(&quiet);
    int at = nargs, bare = 0;
    for (int i = 0; i < nargs;) {
        int k = opt_index(argv[i], opts, nopt);
        if (k >= 0) {
            i += (opts[k].flag || strchr(argv[i], '=')) ? 1 : 2;
        } else if (strncmp(argv[i], "--", 2) == 0) {
            if (dpep_config_parse_flag(&scratch, nargs, argv, &i, &quiet) != DPEP_OK) break;
        } else if (bare++ == 1) {
            at = i;
            break;
        } else {
            i++;
        }
    }
    dpep_config_free(&scratch);
    return at;
}

#define USAGE(...)                                                                             \
    do {                                                                                       \
        dpep_diag_add(diag, DPEP_DIAG_ERROR, __VA_ARGS__);                                     \
        return DPEP_ERR_USAGE;                                                                 \
    } while (0)

/* Usage rules the option scanner cannot see: a FILE first, a known
 * subcommand, something after "--", one way of naming what the ranks run,
 * no wildcard address as an mpirun host. Returns the first failure (with its
 * message) or `st` as it was. */
static dpep_status check_usage(dpep_status st, const launch_args *a, dpep_diag *diag)
{
    if (st != DPEP_OK) return st;
    if (!a->file) USAGE("dpep launch: missing FILE (see dpep launch --help)");
    if (program_index(a->file) >= 0 && access(a->file, F_OK) != 0)
        USAGE("dpep launch: %s before FILE: FILE comes first (expected dpep launch FILE "
              "[options] %s [%s options])", a->file, a->file, a->file);
    if (a->word && program_index(a->word) < 0)
        USAGE("dpep launch: unknown subcommand %s after FILE (expected run, serve or placement; "
              "--program NAME or -- CMD ARGS… for anything else)", a->word);
    if (a->cmd && a->n_cmd == 0) USAGE("dpep launch: nothing after -- (expected CMD ARGS…)");
    if (a->cmd && a->program)
        USAGE("dpep launch: --program and -- CMD exclude each other (expected one of them)");
    if (a->word && a->program)
        USAGE("dpep launch: --program %s and the subcommand %s exclude each other (expected "
              "one of them)", a->program, a->word);
    if (a->word && a->cmd)
        USAGE("dpep launch: the subcommand %s and -- CMD exclude each other (expected one of "
              "them)", a->word);
    if (a->hosts && (strcmp(a->hosts, "0.0.0.0") == 0 || strcmp(a->hosts, "::") == 0))
        USAGE("dpep launch: --host %s before the subcommand names the hosts mpirun starts ranks "
              "on, and %s is not one (expected host names; the address dpep serve listens on "
              "is --host after `serve`, or server.host)", a->hosts, a->hosts);
    return DPEP_OK;
}

/* The words after the subcommand's name: its own options (their values
 * kept), config overrides (checked on a scratch config), nothing of
 * launch's own but --host, which is server.host there. */
static dpep_status scan_program(launch_args *a, const dpep_cli_opt *lopts,
                                const dpep_cli_opt *popts, int n_popt, dpep_diag *diag)
{
    dpep_config scratch;
    DPEP_TRY(dpep_config_init(&scratch));
    dpep_status st = DPEP_OK;
    for (int i = 0; i < a->n_prog && st == DPEP_OK;) {
        const char *w = a->prog[i], *eq = strchr(w, '=');
        int k = opt_index(w, popts, n_popt), l = opt_index(w, lopts, LAUNCH_NOPT);
        if (k >= 0 && !popts[k].flag && !eq && i + 1 >= a->n_prog) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "command line %s: missing value (see dpep "
                          "launch --help)", popts[k].name);
            st = DPEP_ERR_USAGE;
        } else if (k >= 0) {
            if (popts[k].value) *popts[k].value = eq ? eq + 1 : a->prog[i + 1];
            i += (popts[k].flag || eq) ? 1 : 2;
        } else if (l >= 0 && strcmp(lopts[l].name, "--host") != 0) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "dpep launch: %s is an option of dpep launch, "
                          "not of dpep %s: put it before `%s` (expected dpep launch FILE "
                          "[options] %s [%s options and overrides])", lopts[l].name, a->word,
                          a->word, a->word, a->word);
            st = DPEP_ERR_USAGE;
        } else if (strncmp(w, "--", 2) == 0) {
            st = dpep_config_parse_flag(&scratch, a->n_prog, a->prog, &i, diag);
        } else {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "dpep launch: unexpected argument %s after `%s` "
                          "(expected options and config overrides of dpep %s; see dpep %s "
                          "--help)", w, a->word, a->word, a->word);
            st = DPEP_ERR_USAGE;
        }
    }
    dpep_config_free(&scratch);
    if (st == DPEP_OK && a->prog_conf && a->conf)
        USAGE("dpep launch: --configuration given before and after `%s` (expected it once)",
              a->word);
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
    for (int i = 0; i < nargs;) {
        int k = opt_index(argv[i], opts, nopt);
        if (k >= 0) {
            i += (opts[k].flag || strchr(argv[i], '=')) ? 1 : 2;
        } else if (strncmp(argv[i], "--", 2) == 0) {
            int j = i;
            if (dpep_config_parse_flag(&scratch, nargs, argv, &j, diag) != DPEP_OK) break;
            for (; i < j; i++) ovr[n_ovr++] = argv[i];
        } else {
            i++;  /* FILE */
        }
    }
    dpep_config_free(&scratch);
    return n_ovr;
}

/* Prints the command (stdout for --dry-run, else stderr as a record) and,
 * unless dry, sets its environment and execs it. Returns the exit code
 * when there is no exec. */
static int print_and_exec(const dpep_config *cfg, const dpep_launch_opts *o,
                          const dpep_slurm_env *slurm, dpep_launch_cmd *c, bool dry)
{
    const char *cfg_abs = o->config_path;
    dpep_layout l;
    dpep_layout_from_config(cfg, c->world, &l);
    FILE *out = dry ? stdout : stderr;
    fprintf(out, "# dpep launch %s: %d rank%s = %d node%s x %d; tp %d, dp %d%s, ep %d\n",
            cfg_abs, c->world, c->world == 1 ? "" : "s", c->nodes, c->nodes == 1 ? "" : "s",
            c->per_node, l.tp, l.dp, l.dpa ? " with DP attention" : " replicas", l.ep);
    fprintf(out, "# launcher: %s (%s)\n", c->kind == DPEP_LAUNCHER_SRUN ? "srun" : "mpirun",
            c->why);
    if (is_serve(o)) print_server(out, cfg, o, c, slurm);
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
        if (is_serve(lo) && host_loopback(cfg->server.host)) {
            char w[4300];
            where(cfg, "server.host", w, sizeof w);
            dpep_diag_add(diag, DPEP_DIAG_NOTE, "%s: server.host %s: only programs on the job's "
                          "first node reach the server (expected 0.0.0.0 — --host 0.0.0.0 after "
                          "`serve` — for clients or a router elsewhere)", w, cfg->server.host);
        }
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
    int rc = print_and_exec(cfg, lo, &slurm, &c, dry);
    dpep_launch_cmd_free(&c);
    return rc;
}

/* Splits argv at "--" and after the subcommand's name, then scans each
 * part: launch's options and FILE, the subcommand's words. */
static dpep_status parse_args(int argc, char **argv, launch_args *a, dpep_cli_opt *lopts,
                              dpep_diag *diag)
{
    memset(a, 0, sizeof *a);
    launch_opt_table(a, lopts);
    a->n_own = argc;
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--") == 0) {
            a->n_own = i;
            a->cmd = argv + i + 1;
            a->n_cmd = argc - i - 1;
            break;
        }
    int w = find_word(a->n_own, argv, lopts, LAUNCH_NOPT);
    if (w < a->n_own) {
        a->word = argv[w];
        a->prog = argv + w + 1;
        a->n_prog = a->n_own - w - 1;
        a->n_own = w;
    }
    dpep_status st = dpep_cli_scan("launch", a->n_own, argv, lopts, LAUNCH_NOPT, &a->file, diag);
    st = check_usage(st, a, diag);
    int p = program_index(a->word);
    if (st == DPEP_OK && p >= 0) {
        dpep_cli_opt popts[8];
        st = scan_program(a, lopts, popts, program_opt_table(p, a, popts), diag);
    }
    return st;
}

/* FILE read with --configuration, launch's overrides and then the
 * subcommand's on top. */
static dpep_status load_config(dpep_config *cfg, launch_args *a, char **argv,
                               const dpep_cli_opt *lopts, const char *cfg_abs, dpep_diag *diag)
{
    DPEP_TRY(dpep_config_load_file(cfg, cfg_abs, a->conf ? a->conf : a->prog_conf, diag));
    DPEP_TRY(dpep_cli_apply_overrides(cfg, a->n_own, argv, lopts, LAUNCH_NOPT, diag));
    int p = program_index(a->word);
    if (p < 0) return DPEP_OK;
    dpep_cli_opt popts[8];
    int n = program_opt_table(p, a, popts);
    return dpep_cli_apply_overrides(cfg, a->n_prog, a->prog, popts, n, diag);
}

int dpep_cmd_launch(int argc, char **argv)
{
    if (wants_help(argc, argv)) {
        dpep_cmd_launch_help(stdout);
        return 0;
    }
    launch_args a;
    dpep_cli_opt lopts[LAUNCH_NOPT];
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_config cfg;
    if (dpep_config_init(&cfg) != DPEP_OK) return 1;
    dpep_status st = parse_args(argc, argv, &a, lopts, &diag);
    char **ovr = calloc((size_t)a.n_own + 1, sizeof *ovr);
    int n_ovr = 0;
    if (st == DPEP_OK && !ovr) st = DPEP_ERR_NOMEM;
    if (st == DPEP_OK) n_ovr = collect_overrides(a.n_own, argv, lopts, LAUNCH_NOPT, ovr, &diag);
    char cfg_abs[PATH_MAX] = "";
    if (st == DPEP_OK) {
        char *r = realpath(a.file, NULL);
        snprintf(cfg_abs, sizeof cfg_abs, "%s", r ? r : a.file);
        free(r);
        st = load_config(&cfg, &a, argv, lopts, cfg_abs, &diag);
    }
    char bin[PATH_MAX] = "dpep";
    if (st == DPEP_OK && !a.cmd && !find_dpep(a.dpep_given, bin, sizeof bin)) {
        dpep_diag_add(&diag, DPEP_DIAG_ERROR, "dpep launch: cannot find the dpep binary for the "
                      "ranks (expected --dpep PATH, $DPEP_BIN, or dpep in PATH)");
        st = DPEP_ERR_USAGE;
    }
    const char *program = a.word ? a.word : a.program;
    dpep_launch_opts lo = {
        .config_path = cfg_abs, .configuration = a.conf, .dpep_bin = bin, .program = program,
        .cmd = a.cmd, .n_cmd = a.n_cmd, .overrides = ovr, .n_overrides = n_ovr,
        .program_args = a.prog, .n_program_args = a.n_prog, .hosts = a.hosts,
        .check_model = !a.no_model && (!program || strcmp(program, "run") == 0 ||
                                       strcmp(program, "serve") == 0),
    };
    int rc;
    if (st != DPEP_OK) {
        dpep_diag_print(&diag, stderr);
        rc = dpep_status_exit_code(st);
    } else {
        rc = launch_or_write(&cfg, &lo, &a.so, a.sbatch, a.dry, &diag);
    }
    free(ovr);
    dpep_config_free(&cfg);
    return rc;
}
