/* cli_args.c — the argument scan shared by the subcommands: their own flags,
 * one positional argument, and config overrides. Overrides are scanned
 * first (so that usage errors come before any work) and applied after the
 * config file is read (so that they win over it). */
#include "dpep_cli.h"

#include <string.h>

/* The option of `opts` that argv[i] names ("--x" or "--x=v"), or NULL. */
static const dpep_cli_opt *own_opt(const char *arg, const dpep_cli_opt *opts, int n,
                                   const char **inline_value)
{
    const char *eq = strchr(arg, '=');
    size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
    for (int k = 0; k < n; k++)
        if (strlen(opts[k].name) == len && strncmp(arg, opts[k].name, len) == 0) {
            *inline_value = eq ? eq + 1 : NULL;
            return &opts[k];
        }
    return NULL;
}

dpep_status dpep_cli_scan(const char *cmd, int argc, char **argv, const dpep_cli_opt *opts, int n,
                          const char **positional, dpep_diag *diag)
{
    dpep_config scratch;
    DPEP_TRY(dpep_config_init(&scratch));
    dpep_status st = DPEP_OK;
    *positional = NULL;
    for (int i = 0; i < argc && st == DPEP_OK;) {
        const char *v;
        const dpep_cli_opt *o = own_opt(argv[i], opts, n, &v);
        if (o) {
            if (o->flag) {
                *o->flag = true;
                i++;
                continue;
            }
            if (!v && i + 1 >= argc) {
                dpep_diag_add(diag, DPEP_DIAG_ERROR, "command line %s: missing value (see dpep %s --help)",
                              o->name, cmd);
                st = DPEP_ERR_USAGE;
                break;
            }
            *o->value = v ? v : argv[i + 1];
            i += v ? 1 : 2;
        } else if (strncmp(argv[i], "--", 2) == 0) {
            /* A dry run tells how many arguments the override takes and
             * rejects a bad one before anything is loaded. */
            st = dpep_config_parse_flag(&scratch, argc, argv, &i, diag);
        } else if (!*positional) {
            *positional = argv[i++];
        } else {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "command line: unexpected argument %s (see dpep %s "
                          "--help)", argv[i], cmd);
            st = DPEP_ERR_USAGE;
        }
    }
    dpep_config_free(&scratch);
    return st;
}

dpep_status dpep_cli_apply_overrides(dpep_config *cfg, int argc, char **argv,
                                     const dpep_cli_opt *opts, int n, dpep_diag *diag)
{
    for (int i = 0; i < argc;) {
        const char *v;
        const dpep_cli_opt *o = own_opt(argv[i], opts, n, &v);
        if (o) i += (o->flag || v) ? 1 : 2;
        else if (strncmp(argv[i], "--", 2) == 0) DPEP_TRY(dpep_config_parse_flag(cfg, argc, argv, &i, diag));
        else i++;
    }
    return DPEP_OK;
}

/* After each rank has read the config: does every rank agree? A rank that
 * could not (a file readable on one node only) must not leave the others
 * waiting in dpep_world_setup. Under the job comm's watchdog, with the
 * config's timeout once this rank has read it. Returns 0 when every rank
 * succeeded, else the largest exit code of the failed ranks; *rank0_failed
 * says whether rank 0 is among them (it then speaks for every rank). */
static int agree_on_config(dpep_world *w, const dpep_config *cfg, dpep_status st,
                           bool *rank0_failed)
{
    if (st == DPEP_OK) dpep_comm_set_timeout(w->job, cfg->runtime.comm_timeout_s);
    const int failed = st != DPEP_OK;
    int mine[3] = {failed, failed && w->rank == 0, failed ? dpep_status_exit_code(st) : 0};
    int all[3] = {0, 0, 0};
    dpep_comm_watch_begin(w->job, "config", false);
    int rc = MPI_Allreduce(mine, all, 3, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    dpep_comm_watch_end(w->job);
    if (rc != MPI_SUCCESS) {
        dpep_check_fail_(__FILE__, __LINE__, "MPI_Allreduce(config agreement)",
                         dpep_mpi_error_string(rc));
        *rank0_failed = false;
        return dpep_status_exit_code(DPEP_ERR_MPI);
    }
    *rank0_failed = all[1] != 0;
    return all[0] ? all[2] : 0;
}

int dpep_cli_job_start(const char *cmd, int argc, char **argv, const dpep_cli_opt *opts, int n,
                       const char **conf, dpep_world *w, dpep_config *cfg,
                       dpep_status (*check)(const dpep_config *cfg, const char *file, dpep_diag *diag),
                       dpep_diag *diag)
{
    int margc = 0;
    char **margv = NULL;
    dpep_status st = dpep_world_init(&margc, &margv, w);
    if (st != DPEP_OK) return dpep_status_exit_code(st);
    const char *file = NULL;
    st = dpep_config_init(cfg);
    if (st == DPEP_OK) st = dpep_cli_scan(cmd, argc, argv, opts, n, &file, diag);
    if (st == DPEP_OK && !file) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "dpep %s: missing FILE (see --help)", cmd);
        st = DPEP_ERR_USAGE;
    }
    if (st == DPEP_OK) st = dpep_config_load_file(cfg, file, conf ? *conf : NULL, diag);
    if (st == DPEP_OK) st = dpep_cli_apply_overrides(cfg, argc, argv, opts, n, diag);
    if (st == DPEP_OK) st = dpep_config_validate(cfg, w->size, diag);
    if (st == DPEP_OK && check) st = check(cfg, file, diag);
    bool rank0_failed = false;
    const int agreed = agree_on_config(w, cfg, st, &rank0_failed);
    if (agreed != 0 && st == DPEP_OK) {
        /* Another rank failed; it prints its own reason. */
        if (w->rank == 0)
            fprintf(stderr, "dpep %s: other ranks could not read the configuration (see their "
                    "messages)\n", cmd);
        dpep_config_free(cfg);
        dpep_world_finalize(w);
        return agreed;
    }
    const bool own_config_failure = st != DPEP_OK && !rank0_failed;
    if (st == DPEP_OK) st = dpep_world_setup(w, cfg, diag);
    if (st != DPEP_OK) {
        /* Every rank reached the same verdict from the same input: rank 0
         * says it once; other failures (MPI, devices, a config rank 0 could
         * read) are each rank's own. */
        if (w->rank == 0 || (st != DPEP_ERR_INVALID && st != DPEP_ERR_USAGE) || own_config_failure)
            dpep_diag_print(diag, stderr);
        dpep_config_free(cfg);
        dpep_world_finalize(w);
        return dpep_status_exit_code(st);
    }
    if (w->rank == 0) {
        dpep_diag_print(diag, stderr); /* notes */
        const dpep_layout *l = &w->layout;
        printf("dpep %s: %d ranks on %d node%s; tp %d, dp %d%s, ep %d (attn_tp %d, moe_tp %d, "
               "dense_tp %d)\n", cmd, w->size, w->n_nodes, w->n_nodes == 1 ? "" : "s", l->tp, l->dp,
               l->dpa ? " with DP attention" : " replicas", l->ep, l->attn_tp, l->moe_tp,
               l->dense_tp);
        fflush(stdout);
    }
    dpep_diag_init(diag);
    return 0;
}

int dpep_cli_job_main(const char *cmd, int argc, char **argv,
                      dpep_status (*check)(const dpep_config *cfg, const char *file, dpep_diag *diag),
                      dpep_status (*body)(dpep_world *w, const dpep_config *cfg, dpep_diag *diag))
{
    dpep_world w;
    dpep_config cfg;
    dpep_diag diag;
    dpep_diag_init(&diag);
    const char *conf = NULL;
    dpep_cli_opt opts[] = {{"--configuration", &conf, NULL}};
    int rc = dpep_cli_job_start(cmd, argc, argv, opts, 1, &conf, &w, &cfg, check, &diag);
    if (rc != 0) return rc;
    dpep_status st = dpep_world_print_placement(&w, stdout);
    if (st == DPEP_OK) st = body(&w, &cfg, &diag);
    if (diag.n) dpep_diag_print(&diag, stderr);
    dpep_config_free(&cfg);
    dpep_world_finalize(&w);
    return dpep_status_exit_code(st);
}
