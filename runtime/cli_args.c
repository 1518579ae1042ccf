/* cli_args.c — the argument scan shared by the subcommands: their own flags,
 * one positional argument, and config overrides. Overrides are scanned
 * first (so that usage errors come before any work) and applied after the
 * config file is read (so that they win over it). */
#include "cli.h"

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
