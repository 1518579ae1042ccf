/* cli.h — internal: the subcommands of the dpep binary. Each returns a
 * process exit code (0 ok, 2 bad input/usage, 1 runtime failure). */
#ifndef DPEP_CLI_H
#define DPEP_CLI_H

#include "dpep_runtime.h"

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

int dpep_cmd_model_gen(int argc, char **argv);
void dpep_cmd_model_gen_help(FILE *f);
int dpep_cmd_model_info(int argc, char **argv);
void dpep_cmd_model_info_help(FILE *f);
int dpep_cmd_model_check(int argc, char **argv);
void dpep_cmd_model_check_help(FILE *f);

/* Parses a whole decimal int in [lo, hi]; false on anything else. */
bool dpep_parse_int(const char *s, long lo, long hi, long *out);
/* Is argv[i] one of the help flags? */
bool dpep_is_help(const char *arg);

#endif
