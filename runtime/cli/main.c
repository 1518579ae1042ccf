/* main.c — the dpep command line: one binary, subcommands from one table. */
#include "dpep_cli.h"
#include "dpep_launcher.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dpep_linear.h"

#ifndef DPEP_VERSION
#define DPEP_VERSION "unknown"
#endif

static int cmd_info(int argc, char **argv)
{
    if (argc > 0) {
        fprintf(stderr, "dpep info: unexpected argument %s (expected none)\n", argv[0]);
        return 2;
    }
    dpep_print_build_info(stdout);
    return 0;
}

static void cmd_info_help(FILE *f)
{
    fprintf(f, "Prints the dpep version, the libraries this build uses (MPI, hwloc, libyaml,\n"
               "jansson, BLAS, CUDA, NCCL) and the GPUs visible to this process.\n");
}

static const dpep_command k_commands[] = {
    {"config", "check", dpep_cmd_config_check, "FILE [--configuration NAME] [--world N] [--json] [overrides]",
     "validate a deployment YAML and print the normalized config and the rank layout",
     dpep_cmd_config_check_help},
    {"config", "options", dpep_cmd_config_options, "[--markdown]",
     "list every config option: type, default, bounds, command-line flags",
     dpep_cmd_config_options_help},
    {"model", "gen", dpep_cmd_model_gen, "[--arch A] [--preset tiny|small] [--seed N] [--dtype D] [--set K=V] DIR",
     "write a Hugging Face checkpoint with deterministic random weights", dpep_cmd_model_gen_help},
    {"model", "info", dpep_cmd_model_info, "DIR [--config FILE] [layout overrides]",
     "architecture, parameters by kind and each rank's weight memory for a layout",
     dpep_cmd_model_info_help},
    {"model", "check", dpep_cmd_model_check, "DIR [--load] [--rank R] [layout overrides]",
     "check a checkpoint against its config.json; optionally load one rank's share",
     dpep_cmd_model_check_help},
    {"launch", NULL, dpep_cmd_launch, "FILE [--dry-run] [--sbatch OUT] [--program NAME] [overrides] [-- CMD…]",
     "start FILE's deployment with mpirun or srun (or write an sbatch script), validated first",
     dpep_cmd_launch_help},
    {"plan", NULL, dpep_cmd_plan, "FILE [--context N] [--compare] [--json] [overrides]",
     "memory plan: weights per rank, KV bytes per token, KV tokens per GPU, largest batch",
     dpep_cmd_plan_help},
    {"placement", NULL, dpep_cmd_placement, "FILE [--configuration NAME] [overrides]",
     "under mpirun/srun: check the job against FILE, bind ranks, split communicators, "
     "print the placement", dpep_cmd_placement_help},
    {"run", NULL, dpep_cmd_run, "FILE [--output FILE.jsonl] [--summary-json FILE] [--ignore-eos] [overrides]",
     "under mpirun/srun: serve FILE's workload (DP attention, EP, continuous batching) "
     "and print a summary", dpep_cmd_run_help},
    {"serve", NULL, dpep_cmd_serve, "FILE [--host H] [--port P] [--api-key K] [overrides]",
     "under mpirun/srun: serve the model over HTTP (OpenAI and SGLang APIs, streaming)",
     dpep_cmd_serve_help},
    {"tokenize", NULL, dpep_cmd_tokenize, "DIR (--text T | --text-file F | --chat M.json) [--no-special-tokens] [--add-generation-prompt] [--render]",
     "encode text or a chat with DIR's tokenizer.json; prints the ids as a JSON array",
     dpep_cmd_tokenize_help},
    {"detokenize", NULL, dpep_cmd_detokenize, "DIR [--skip-special-tokens] ID...",
     "decode ids with DIR's tokenizer.json; prints the text", dpep_cmd_detokenize_help},
    {"info", NULL, cmd_info, "", "print build facts (MPI, hwloc, BLAS, CUDA, NCCL) and GPUs",
     cmd_info_help},
};
#define N_COMMANDS (sizeof k_commands / sizeof k_commands[0])

bool dpep_is_help(const char *arg)
{
    return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0;
}

bool dpep_parse_int(const char *s, long lo, long hi, long *out)
{
    if (!s || !*s) return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*end || errno == ERANGE || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static void usage(FILE *f)
{
    fprintf(f, "dpep %s — MPI-native serving of DeepSeek-style MoE models with data-parallel\n"
               "attention and expert parallelism.\n\n"
               "usage: dpep COMMAND [args]      (launch with mpirun/srun for multi-rank work)\n\n"
               "commands:\n", DPEP_VERSION);
    for (size_t i = 0; i < N_COMMANDS; i++) {
        char name[64];
        snprintf(name, sizeof name, "%s%s%s", k_commands[i].name, k_commands[i].sub ? " " : "",
                 k_commands[i].sub ? k_commands[i].sub : "");
        fprintf(f, "  %-16s %s\n", name, k_commands[i].summary);
    }
    fprintf(f, "\n'dpep COMMAND --help' shows a command's arguments and options.\n"
               "Exit codes: 0 success, 2 bad input or usage, 1 runtime failure.\n"
               "Environment: DPEP_LOG_LEVEL=error|warn|info|debug|trace, DPEP_LOG_ALL_RANKS=1.\n");
}

static void command_help(const dpep_command *c, FILE *f)
{
    fprintf(f, "usage: dpep %s%s%s %s\n\n%s.\n\n", c->name, c->sub ? " " : "", c->sub ? c->sub : "",
            c->args, c->summary);
    c->help(f);
}

/* OpenBLAS on a CPU newer than itself falls back to generic kernels (see
 * dpep_linear_blas_core_wanted); it reads OPENBLAS_CORETYPE only when it
 * loads, so dpep runs itself again, once, with the family this CPU can run
 * (before MPI_Init: mpirun's and srun's environment goes along). */
static void blas_core_reexec(char **argv)
{
    const char *want = dpep_linear_blas_core_wanted();
    if (!want || getenv("DPEP_BLAS_REEXEC")) return;
    char was[64];
    snprintf(was, sizeof was, "%s", dpep_linear_blas_core());
    if (setenv("OPENBLAS_CORETYPE", want, 1) != 0 || setenv("DPEP_BLAS_REEXEC", was, 1) != 0) return;
    execv("/proc/self/exe", argv);
    DPEP_WARN("OpenBLAS took this CPU for %s (generic kernels, slow products); running again "
              "with OPENBLAS_CORETYPE=%s failed (%s): set it yourself", was, want, strerror(errno));
    unsetenv("OPENBLAS_CORETYPE");
    unsetenv("DPEP_BLAS_REEXEC"); /* (the run summary reads it as "asked for") */
}

int main(int argc, char **argv)
{
    dpep_log_init();
    blas_core_reexec(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (dpep_is_help(argv[1]) || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
        printf("dpep %s\n", DPEP_VERSION);
        return 0;
    }
    bool known = false;
    for (size_t i = 0; i < N_COMMANDS; i++) {
        const dpep_command *c = &k_commands[i];
        if (strcmp(argv[1], c->name) != 0) continue;
        known = true;
        if (!c->sub) {
            if (argc > 2 && dpep_is_help(argv[2])) {
                command_help(c, stdout);
                return 0;
            }
            return c->run(argc - 2, argv + 2);
        }
        if (argc > 2 && strcmp(argv[2], c->sub) == 0) {
            if (argc > 3 && dpep_is_help(argv[3])) {
                command_help(c, stdout);
                return 0;
            }
            return c->run(argc - 3, argv + 3);
        }
    }
    if (known) {
        /* `dpep config` without (or with a wrong) subcommand. */
        FILE *f = (argc > 2 && dpep_is_help(argv[2])) ? stdout : stderr;
        if (f == stderr)
            fprintf(stderr, "dpep %s: %s%s (expected one of:", argv[1],
                    argc > 2 ? "unknown subcommand " : "missing subcommand",
                    argc > 2 ? argv[2] : "");
        else
            fprintf(f, "dpep %s subcommands:", argv[1]);
        for (size_t i = 0; i < N_COMMANDS; i++)
            if (strcmp(argv[1], k_commands[i].name) == 0 && k_commands[i].sub)
                fprintf(f, " %s", k_commands[i].sub);
        fprintf(f, "%s\n", f == stderr ? ")" : "");
        return f == stderr ? 2 : 0;
    }
    fprintf(stderr, "dpep: unknown command '%s' (see dpep --help)\n", argv[1]);
    return 2;
}
