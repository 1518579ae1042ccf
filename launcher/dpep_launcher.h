/* dpep_launcher.h — public header of the launcher module: `dpep launch`
 * (mpirun / srun command lines and sbatch scripts from the YAML `launch`
 * section) and `dpep plan` (per-rank weight, KV and buffer memory from
 * config.json alone).
 *
 * Ownership: functions taking `T *out` write it only on DPEP_OK; what they
 * allocate inside `out` is released by the matching *_free(). */
#ifndef DPEP_LAUNCHER_H
#define DPEP_LAUNCHER_H

#include "dpep_model.h"
#include "dpep_world.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Subcommands. argv[0] is the first argument after the subcommand; the
 * return value is the process exit code: 0 ok, 2 bad input or usage (also a
 * plan that does not fit), 1 runtime failure (e.g. exec failed). */
int dpep_cmd_launch(int argc, char **argv);
void dpep_cmd_launch_help(FILE *f);
int dpep_cmd_plan(int argc, char **argv);
void dpep_cmd_plan_help(FILE *f);

/* ------------------------------------------------------------------------ */
/* Open MPI hostfile: "host [slots=N] [max_slots=N]" per line, '#' comments. */
/* A host named twice adds up its slots.                                     */
/* ------------------------------------------------------------------------ */
#define DPEP_HOSTFILE_MAX 4096
typedef struct dpep_host {
    char name[256];
    int slots;           /* 0: not given (Open MPI then counts the cores)      */
    int line;            /* first line naming the host, 1-based                */
} dpep_host;

typedef struct dpep_hostfile {
    int n;
    dpep_host *host;     /* owned [n]                                         */
} dpep_hostfile;

/* Errors read "PATH:LINE: what is wrong (expected …)". */
dpep_status dpep_hostfile_parse(const char *path, dpep_hostfile *out, dpep_diag *diag);
void dpep_hostfile_free(dpep_hostfile *h);

/* ------------------------------------------------------------------------ */
/* A growable argument vector of owned strings (NULL-terminated for exec).   */
/* ------------------------------------------------------------------------ */
typedef struct dpep_argv {
    int n, cap;
    char **v;            /* owned [cap], v[n] == NULL                         */
} dpep_argv;

void dpep_argv_init(dpep_argv *a);
void dpep_argv_push(dpep_argv *a, const char *s);
void dpep_argv_pushf(dpep_argv *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void dpep_argv_free(dpep_argv *a);
/* Writes one word for a POSIX shell, single-quoted when it needs to be. */
void dpep_shell_print_word(const char *s, FILE *f);
/* Writes the vector as one shell line, quoting where needed. */
void dpep_argv_print_shell(const dpep_argv *a, FILE *f);

/* ------------------------------------------------------------------------ */
/* Slurm allocation, as the environment tells it.                           */
/* ------------------------------------------------------------------------ */
typedef struct dpep_slurm_env {
    bool inside;             /* SLURM_JOB_ID (or SLURM_JOBID) set            */
    char job_id[64];
    int nodes;               /* SLURM_JOB_NUM_NODES / SLURM_NNODES, 0 unknown */
    int ntasks_per_node;     /* SLURM_NTASKS_PER_NODE ("8" or "8(x2)"), 0 unknown */
    int gpus_per_node;       /* SLURM_GPUS_ON_NODE / SLURM_GPUS_PER_NODE, 0 unknown */
} dpep_slurm_env;

void dpep_slurm_env_read(dpep_slurm_env *out);

/* ------------------------------------------------------------------------ */
/* Launch commands.                                                          */
/* ------------------------------------------------------------------------ */
typedef struct dpep_launch_opts {
    const char *config_path;   /* absolute path of the YAML every rank reads  */
    const char *configuration; /* cookbook entry, or NULL                     */
    const char *dpep_bin;      /* the dpep binary the ranks run               */
    const char *program;       /* dpep subcommand (default "run")             */
    char **cmd;                /* `-- CMD…`: run this instead of dpep, or NULL */
    int n_cmd;
    char **overrides;          /* config overrides, passed through verbatim   */
    int n_overrides;
    char **program_args;       /* words after `launch FILE … serve`: the
                                * subcommand's options and overrides, verbatim
                                * after `overrides`                           */
    int n_program_args;
    const char *hosts;         /* --host list "a,b" (mpirun), or NULL         */
    bool check_model;          /* model path readable (and fits the layout)   */
} dpep_launch_opts;

typedef struct dpep_launch_cmd {
    dpep_launcher kind;        /* MPIRUN or SRUN                              */
    int world, nodes, per_node;
    dpep_argv env;             /* NAME=VALUE set for the launcher (srun)      */
    dpep_argv argv;            /* the launcher command                        */
    dpep_argv rank_argv;       /* what every rank runs                        */
    dpep_argv mca;             /* NAME=VALUE, transport defaults + launch.mca */
    char why[256];             /* why this launcher was chosen                */
} dpep_launch_cmd;

/* Validates the config for a launch (world vs tp/dp, nodes × gpus_per_node,
 * hostfile slots, Slurm allocation, model path) with the config's file:line
 * on each error, and builds the command. */
dpep_status dpep_launch_build(dpep_config *cfg, const dpep_launch_opts *o,
                              const dpep_slurm_env *slurm, dpep_launch_cmd *out, dpep_diag *diag);
void dpep_launch_cmd_free(dpep_launch_cmd *c);

typedef struct dpep_sbatch_opts {
    const char *job_name;      /* NULL: dpep-<config file stem>               */
    const char *time;          /* NULL: 01:00:00                              */
    const char *partition;     /* NULL: left as a comment                     */
    const char *account;       /* NULL: left as a comment                     */
} dpep_sbatch_opts;

/* Writes an sbatch script for `cfg` (built with an in-allocation srun).
 * For program "serve" the script also says, as comments and one echo line at
 * start, where the server listens (the allocation's first node, server.port)
 * and how to put sglang-router in front of it. */
dpep_status dpep_launch_write_sbatch(const dpep_config *cfg, const dpep_launch_opts *o,
                                     const dpep_sbatch_opts *so, const char *path, dpep_diag *diag);

/* ------------------------------------------------------------------------ */
/* Memory plan (launcher/plan.c).                                            */
/* ------------------------------------------------------------------------ */
typedef struct dpep_mem_plan {
    dpep_layout layout;
    bool on_gpu;               /* GPU plan (checkpoint dtypes, bf16 KV) or CPU (f32) */
    double weight_elem_bytes;  /* non-FP8 tensors' element size                */
    double kv_elem_bytes;      /* 2 (bf16) or 4 (f32): runtime.kv_cache_dtype  */
    double weights[DPEP_W_NKINDS]; /* per rank (largest rank), bytes           */
    double weights_total;
    int expert_slots;          /* routed experts per EP rank (ceil)            */
    bool redundant_experts;    /* n_routed % ep != 0: slots beyond n_routed/ep */
    double kv_per_token;       /* bytes: layers × (kv_lora + rope) × kv_elem   */
    int64_t step_tokens;       /* T: tokens per attention-DP group per step    */
    double act_bytes;          /* activation workspace per rank                */
    double comm_bytes;         /* dispatch/combine (or gather) buffers per rank */
    const char *transport;     /* the MoE transport dpep run is expected to take
                                  ("shm", "mpi", "ipc", "nccl", "mpi-staged",
                                  "allgather", "none" for ep 1), static  */
    double segment_bytes;      /* shm / ipc: one rank's segment, sized for every
                                  token of the EP group landing on it (0 else) */
    double assist_bytes;       /* CPU: the DP assist's node-shared segment per
                                  rank (runtime.dp_assist; 0: not in this layout) */
    double node_experts_bytes; /* CPU: the routed experts each rank keeps in the
                                  node's shared window instead of its own memory
                                  (runtime.node_experts; part of weights, not
                                  more: 0 when they stay private)            */
    double pool_bytes;         /* CPU: the expert pool's node-shared segment per
                                  rank beside them (0 when they stay private) */
    double budget;             /* gpu_memory_gb × 1e9 × mem_fraction_static    */
    double kv_bytes;           /* budget − weights − act − comm (may be < 0)   */
    bool fits;
    int64_t kv_tokens_rank;    /* tokens of KV one rank holds (whole pages)    */
    int64_t kv_tokens_instance;/* distinct tokens one instance holds           */
    int64_t context;           /* context length asked for                     */
    int64_t batch_group;       /* largest batch per attention-DP group         */
    int64_t batch_instance;    /* … per instance                               */
    int64_t batch_total;       /* … over the whole job                         */
    char overflow[512];        /* when !fits: what overflows, in words         */
} dpep_mem_plan;

/* Plans `l` for model `m` under cfg's runtime and launch settings.
 * `kv_dtype_bytes` 0 means runtime.kv_cache_dtype as the engine resolves it
 * (dpep_kv_cache_type: auto is bf16 on a GPU holding 16-bit or FP8 weights,
 * f32 otherwise and on the CPU). */
dpep_status dpep_plan_compute(const dpep_model_config *m, const dpep_config *cfg,
                              const dpep_layout *l, int64_t context, double kv_dtype_bytes,
                              dpep_mem_plan *out);

#ifdef __cplusplus
}
#endif
#endif /* DPEP_LAUNCHER_H */
