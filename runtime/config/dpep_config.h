/* dpep_config.h — public header of runtime/config: the YAML deployment
 * config (one option table drives parsing, validation, command-line
 * overrides, --help and docs) and the parallel layout derived from it.
 *
 * Ownership: strings inside a dpep_config are owned by it and released by
 * dpep_config_free(). */
#ifndef DPEP_CONFIG_H
#define DPEP_CONFIG_H

#include "dpep_base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Deployment config (YAML). One option table (config/config_options.c)      */
/* drives parsing, validation, command-line overrides, --help and docs.      */
/* ------------------------------------------------------------------------ */
typedef enum dpep_dtype { DPEP_DTYPE_AUTO = 0, DPEP_DTYPE_F32, DPEP_DTYPE_BF16, DPEP_DTYPE_F16 } dpep_dtype;
/* runtime.kv_cache_dtype (SGLang's --kv-cache-dtype): the latent KV cache's
 * element type; auto resolves with dpep_kv_cache_type (runtime/model). */
typedef enum dpep_kv_dtype { DPEP_KV_AUTO = 0, DPEP_KV_F32, DPEP_KV_BF16 } dpep_kv_dtype;
typedef enum dpep_a2a_backend { DPEP_A2A_ALLTOALL = 0, DPEP_A2A_ALLGATHER } dpep_a2a_backend;
typedef enum dpep_a2a_transport { DPEP_A2A_TRANSPORT_AUTO = 0, DPEP_A2A_TRANSPORT_SHM, DPEP_A2A_TRANSPORT_MPI, DPEP_A2A_TRANSPORT_NCCL, DPEP_A2A_TRANSPORT_IPC } dpep_a2a_transport;
typedef enum dpep_lb_method {
    DPEP_LB_ROUND_ROBIN = 0, DPEP_LB_SHORTEST_QUEUE, DPEP_LB_TOTAL_TOKENS, DPEP_LB_CACHE_AWARE
} dpep_lb_method;
typedef enum dpep_bind { DPEP_BIND_AUTO = 0, DPEP_BIND_NONE, DPEP_BIND_CORE, DPEP_BIND_NUMA } dpep_bind;
typedef enum dpep_lm_head_opt { DPEP_LMH_AUTO = 0, DPEP_LMH_REPLICATED, DPEP_LMH_VOCAB } dpep_lm_head_opt;
typedef enum dpep_dp_assist_opt { DPEP_DPA_AUTO = 0, DPEP_DPA_OFF, DPEP_DPA_ON } dpep_dp_assist_opt;
typedef enum dpep_launcher { DPEP_LAUNCHER_AUTO = 0, DPEP_LAUNCHER_MPIRUN, DPEP_LAUNCHER_SRUN } dpep_launcher;
typedef enum dpep_model_generate { DPEP_GEN_NONE = 0, DPEP_GEN_TINY_V3, DPEP_GEN_TINY_V2 } dpep_model_generate_kind;
typedef enum dpep_workload_kind { DPEP_WORKLOAD_RANDOM = 0, DPEP_WORKLOAD_SHARED_PREFIX, DPEP_WORKLOAD_FILE } dpep_workload_kind;

/* A small string map (launch.mca, launch.env). Keys are unique. */
#define DPEP_KV_MAX 64
typedef struct dpep_kv_map {
    int n;
    char *key[DPEP_KV_MAX];   /* owned */
    char *value[DPEP_KV_MAX]; /* owned */
} dpep_kv_map;

/* Where an option's value came from: its default, a YAML file position, or
 * a command-line flag. Lines and columns are 1-based. */
typedef enum dpep_origin_kind { DPEP_ORIGIN_DEFAULT = 0, DPEP_ORIGIN_FILE, DPEP_ORIGIN_CLI } dpep_origin_kind;
typedef struct dpep_origin {
    dpep_origin_kind kind;
    int line, col;    /* DPEP_ORIGIN_FILE */
    char flag[64];    /* DPEP_ORIGIN_CLI: the flag as typed, e.g. "--tp" */
} dpep_origin;

typedef struct dpep_config {
    struct {
        char *path;                     /* HF checkpoint dir, "" if unset; relative
                                           paths are resolved against the YAML's dir */
        dpep_dtype dtype;
        dpep_model_generate_kind generate; /* dpep run makes this preset at path if absent */
    } model;
    struct {
        int64_t tp, dp, ep;
        bool enable_dp_attention;       /* after validation: effective value */
        dpep_a2a_backend moe_a2a_backend;
        dpep_a2a_transport moe_a2a_transport;
        int64_t moe_dense_tp_size;      /* 1, or 0 meaning null (TP over the instance) */
    } parallel;
    struct {
        dpep_device_kind device;
        int64_t ranks_per_gpu;          /* ranks sharing one GPU (1: own GPU) */
        double mem_fraction_static;
        int64_t page_size;
        int64_t max_running_requests;
        int64_t chunked_prefill_size;
        dpep_lb_method load_balance_method;
        bool disable_radix_cache;       /* SGLang's name: no prefix cache      */
        int64_t dp_balance_hold_steps;  /* 0: off                              */
        double comm_timeout_s;
        dpep_bind bind;
        int64_t seed;
        dpep_lm_head_opt lm_head;       /* runtime/engine: dpep_lm_head_mode   */
        dpep_dp_assist_opt dp_assist;   /* runtime/engine: dpep_dp_assist_mode */
        dpep_dp_assist_opt node_experts; /* runtime/serve: the node's routed
                                            experts in node-shared memory     */
        int64_t warmup_tokens;          /* dpep_engine_warmup at start; 0: off */
        int64_t cuda_graph_max_bs;      /* CUDA graphs of decode steps up to it */
        bool disable_cuda_graph;        /* SGLang's name: every step eager     */
        dpep_kv_dtype kv_cache_dtype;   /* the KV pool's element type          */
    } runtime;
    struct {
        dpep_launcher launcher;
        int64_t nodes;
        int64_t gpus_per_node;          /* 0 meaning null: world / nodes */
        char *hostfile;
        double gpu_memory_gb;
        dpep_kv_map mca;
        dpep_kv_map env;
    } launch;
    struct {
        dpep_workload_kind kind;
        int64_t num_prompts, input_len, output_len;
        double range_ratio;
        int64_t num_groups, prompts_per_group, system_prompt_len, question_len;
        char *path;
        double temperature;
        int64_t top_k;
        double top_p;
    } workload;
    struct {                            /* `dpep serve` (SGLang's flag names)  */
        char *host;
        int64_t port;
        char *api_key;                  /* "": none                            */
        char *served_model_name;        /* "": the model directory's name      */
        int64_t max_queued_requests;
        double request_timeout_s;       /* 0: none                             */
        double drain_timeout_s;         /* at a stop signal: finish, then abort */
        int64_t context_length;         /* 0: the model's max_position_embeddings */
        int64_t max_new_tokens;         /* default for requests that name none  */
    } server;

    char source[4096];        /* YAML file the config came from, "" if none */
    char configuration[128];  /* selected cookbook entry, "" if none        */
    dpep_origin *origin;      /* one per option (dpep_config_option_count()) */
} dpep_config;

typedef enum dpep_opt_type {
    DPEP_OPT_INT = 0,
    DPEP_OPT_FLOAT,
    DPEP_OPT_BOOL,
    DPEP_OPT_ENUM,
    DPEP_OPT_STRING,
    DPEP_OPT_MAP,
} dpep_opt_type;

#define DPEP_OPT_NULLABLE 0x1u   /* `null` accepted (stored as 0)            */
#define DPEP_OPT_POW2 0x2u       /* integer must be a power of two           */
#define DPEP_OPT_MIN_EXCL 0x4u   /* lower bound is exclusive                 */
#define DPEP_OPT_PATH 0x8u       /* string is a path relative to the YAML    */

/* One row of the option table. */
typedef struct dpep_option {
    const char *section;            /* "parallel"                          */
    const char *key;                /* "tp"                                */
    dpep_opt_type type;
    size_t offset;                  /* into dpep_config                    */
    unsigned flags;                 /* DPEP_OPT_*                          */
    const char *def;                /* default, as YAML text               */
    double min, max;                /* bounds for INT/FLOAT                */
    const char *const *values;      /* ENUM names, NULL-terminated         */
    const char *const *aliases;     /* ENUM aliases "alias=name", or NULL  */
    const char *cli;                /* flags, '|'-separated, or NULL       */
    const char *help;
} dpep_option;

size_t dpep_config_option_count(void);
const dpep_option *dpep_config_option(size_t i);
/* Index of "section.key", or -1. */
int dpep_config_option_find(const char *dotted);

/* Sets every option to its default. Allocates the origin table. */
dpep_status dpep_config_init(dpep_config *cfg);
void dpep_config_free(dpep_config *cfg);

/* Loads a YAML file on top of the current values. `configuration` selects an
 * entry of a cookbook-style `configurations:` list (NULL: none, or the only
 * one). Errors go to `diag`; returns DPEP_ERR_INVALID if any. Memory and time
 * are bounded: files over DPEP_CONFIG_MAX_BYTES, nesting deeper than
 * DPEP_CONFIG_MAX_DEPTH, YAML aliases and tags are refused. */
#define DPEP_CONFIG_MAX_BYTES (1u << 20)
#define DPEP_CONFIG_MAX_DEPTH 16
#define DPEP_CONFIG_MAX_NODES 65536
dpep_status dpep_config_load_file(dpep_config *cfg, const char *path,
                                  const char *configuration, dpep_diag *diag);
/* Same from memory; `name` is used in messages and to resolve relative paths. */
dpep_status dpep_config_load_buffer(dpep_config *cfg, const char *buf, size_t len,
                                    const char *name, const char *configuration,
                                    dpep_diag *diag);

/* Sets one option from text, as from the command line (`flag` names where it
 * came from, e.g. "--tp" or "--set"). `dotted` is "section.key", or
 * "launch.mca.NAME" / "launch.env.NAME" for map entries. */
dpep_status dpep_config_set(dpep_config *cfg, const char *dotted, const char *value,
                            const char *flag, dpep_diag *diag);

/* Tries argv[*i] as an override flag (--tp-size 8, --tp=8, --enable-dp-attention,
 * --set k=v). Returns DPEP_OK and advances *i past it when it is one;
 * DPEP_ERR_USAGE with a message (and did-you-mean) when argv[*i] is no known
 * flag; DPEP_ERR_INVALID when the value is bad. */
dpep_status dpep_config_parse_flag(dpep_config *cfg, int argc, char **argv, int *i,
                                   dpep_diag *diag);

/* Cross-field rules (DESIGN.md, seeds). world_size 0 means "derive it".
 * Applies notices (dp == 1 switches DP attention off). */
dpep_status dpep_config_validate(dpep_config *cfg, int world_size, dpep_diag *diag);

/* "FILE:LINE:COL" / "command line --tp" / "FILE (default)" for option i. */
void dpep_config_where(const dpep_config *cfg, int opt, char *buf, size_t n);

/* Value of option i as text ("8", "true", "alltoall", "null"); buf owned by caller. */
void dpep_config_format_value(const dpep_config *cfg, int opt, char *buf, size_t n);

/* Prints the help for every option (grouped by section) or a Markdown table. */
void dpep_config_print_options(FILE *f, bool markdown);

/* ------------------------------------------------------------------------ */
/* Parallel layout (SGLang semantics, DESIGN.md).                            */
/* ------------------------------------------------------------------------ */
typedef struct dpep_layout {
    int world;          /* ranks in the job                                  */
    int tp;             /* ranks in one model instance                       */
    int dp;             /* DPA: attention-DP groups per instance; else replicas */
    int ep;             /* expert-parallel degree inside an instance         */
    bool dpa;           /* DP attention in effect                            */
    int n_instances;    /* world / tp                                        */
    int attn_tp;        /* ranks sharing one attention batch                 */
    int attn_dp;        /* attention-DP groups per instance (1 without DPA)  */
    int moe_tp;         /* tp / ep                                           */
    int dense_tp;       /* ranks a dense FFN is split over (1 or tp)         */
    int nodes;
    int ranks_per_node;
} dpep_layout;

typedef struct dpep_rank_info {
    int rank, node, local_rank;
    int instance, instance_rank;
    int attn_dp_rank, attn_tp_rank;
    int ep_rank, moe_tp_rank;
    int dense_tp_rank;
} dpep_rank_info;

/* Layout of a validated config (world 0: tp with DPA, tp*dp without). */
dpep_status dpep_layout_from_config(const dpep_config *cfg, int world, dpep_layout *out);
void dpep_layout_rank(const dpep_layout *l, int rank, dpep_rank_info *out);

#ifdef __cplusplus
}
#endif
#endif /* DPEP_CONFIG_H */
