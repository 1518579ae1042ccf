/* dpep_cli.h — public header of runtime/cli: the subcommands of the dpep
 * binary, the command table entry type, and the option scanning and job
 * start shared with launcher/ (`dpep launch`, `dpep plan`). Each command
 * returns a process exit code (0 ok, 2 bad input/usage, 1 runtime failure). */
#ifndef DPEP_CLI_H
#define DPEP_CLI_H

#include "dpep_model.h"
#include "dpep_world.h"

typedef struct dpep_command {
    const char *name;     /* "config"                       */
    const char *sub;      /* "check", or NULL               */
    int (*run)(int argc, char **argv); /* argv[0] is the first argument after the command */
    const char *args;     /* "FILE [options]"               */
    const char *summary;  /* one line for `dpep --help`     */
    void (*help)(FILE *f);/* full help for `dpep CMD --help` */
} dpep_command;

int dpep_cmd_config_check(int argc, char **argv);
void dpep_cmd_config_check_help(FILE *f);
int dpep_cmd_config_options(int argc, char **argv);
void dpep_cmd_config_options_help(FILE *f);

int dpep_cmd_placement(int argc, char **argv);
void dpep_cmd_placement_help(FILE *f);

int dpep_cmd_run(int argc, char **argv);
void dpep_cmd_run_help(FILE *f);

int dpep_cmd_serve(int argc, char **argv);
void dpep_cmd_serve_help(FILE *f);

int dpep_cmd_tokenize(int argc, char **argv);
void dpep_cmd_tokenize_help(FILE *f);
int dpep_cmd_detokenize(int argc, char **argv);
void dpep_cmd_detokenize_help(FILE *f);

int dpep_cmd_model_gen(int argc, char **argv);
void dpep_cmd_model_gen_help(FILE *f);
int dpep_cmd_model_info(int argc, char **argv);
void dpep_cmd_model_info_help(FILE *f);
int dpep_cmd_model_check(int argc, char **argv);
void dpep_cmd_model_check_help(FILE *f);

/* A subcommand's own option: "--name VALUE" / "--name=VALUE" stored in
 * *value, or a boolean "--name" setting *flag (value NULL). */
typedef struct dpep_cli_opt {
    const char *name;
    const char **value;
    bool *flag;
} dpep_cli_opt;
/* Pass 1: the command's options, at most one positional argument, and a dry
 * run of every config override (usage errors before any work). */
dpep_status dpep_cli_scan(const char *cmd, int argc, char **argv, const dpep_cli_opt *opts, int n,
                          const char **positional, dpep_diag *diag);
/* Pass 2: the overrides, on top of the config file just loaded. */
dpep_status dpep_cli_apply_overrides(dpep_config *cfg, int argc, char **argv,
                                     const dpep_cli_opt *opts, int n, dpep_diag *diag);

/* Start of a command that runs under the launcher (placement, run): MPI up,
 * the command's options and FILE scanned, the config read with the overrides,
 * validated against the world and checked by `check` (may be NULL), then the
 * world set up and the layout line printed by rank 0. Returns 0 when ready;
 * otherwise the errors are printed (input errors all ranks share: by rank 0
 * only), w and cfg are released, and the exit code is returned. */
int dpep_cli_job_start(const char *cmd, int argc, char **argv, const dpep_cli_opt *opts, int n,
                       const char **conf, dpep_world *w, dpep_config *cfg,
                       dpep_status (*check)(const dpep_config *cfg, const char *file, dpep_diag *diag),
                       dpep_diag *diag);

/* A whole job command with no options of its own but --configuration: job
 * start (see above), the placement table, then body(w, cfg, diag); prints the
 * diagnostics, releases everything and returns the exit code. */
int dpep_cli_job_main(const char *cmd, int argc, char **argv,
                      dpep_status (*check)(const dpep_config *cfg, const char *file, dpep_diag *diag),
                      dpep_status (*body)(dpep_world *w, const dpep_config *cfg, dpep_diag *diag));

/* Parses a whole decimal int in [lo, hi]; false on anything else. */
bool dpep_parse_int(const char *s, long lo, long hi, long *out);
/* Is argv[i] one of the help flags? */
bool dpep_is_help(const char *arg);

#endif
