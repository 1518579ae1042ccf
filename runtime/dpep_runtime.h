/* dpep_runtime.h — public header of the runtime module: the status type, the
 * CHECK macro family, logging, the YAML deployment config and the parallel
 * layout. Every other module includes this header and nothing else of runtime/.
 *
 * Ownership: functions taking `T *out` write it only on DPEP_OK. Strings inside
 * a dpep_config are owned by it and released by dpep_config_free(). */
#ifndef DPEP_RUNTIME_H
#define DPEP_RUNTIME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <hwloc.h>
#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Status: one type for the whole project. OK = 0, errors negative.          */
/* ------------------------------------------------------------------------ */
typedef enum dpep_status {
    DPEP_OK = 0,
    DPEP_ERR_INVALID = -1,     /* bad user input: config, checkpoint, request */
    DPEP_ERR_USAGE = -2,       /* bad command line                            */
    DPEP_ERR_NOMEM = -3,       /* allocation failed or a pool is full         */
    DPEP_ERR_IO = -4,          /* file or socket I/O                          */
    DPEP_ERR_MPI = -5,         /* an MPI call failed                          */
    DPEP_ERR_CUDA = -6,        /* a CUDA runtime call failed                  */
    DPEP_ERR_NCCL = -7,        /* an NCCL call failed                         */
    DPEP_ERR_CUBLAS = -8,      /* a cuBLAS call failed                        */
    DPEP_ERR_TIMEOUT = -9,     /* a collective or wait ran past its limit     */
    DPEP_ERR_UNSUPPORTED = -10,/* valid request this build cannot serve       */
    DPEP_ERR_NO_DEVICE = -11,  /* no usable GPU                               */
    DPEP_ERR_INTERNAL = -12,   /* broken invariant: a bug in dpep             */
} dpep_status;

/* Static string naming the status ("invalid input", …); never NULL. */
const char *dpep_status_string(dpep_status st);
/* Process exit code for a status: 0 success, 2 bad input/usage, 1 otherwise. */
int dpep_status_exit_code(dpep_status st);

/* ------------------------------------------------------------------------ */
/* Logging: "[host:rank] LEVEL message". Level from DPEP_LOG_LEVEL           */
/* (error|warn|info|debug|trace, default info). Info and below print on rank */
/* 0 only unless DPEP_LOG_ALL_RANKS=1; warnings and errors print everywhere. */
/* ------------------------------------------------------------------------ */
typedef enum dpep_log_level {
    DPEP_LOG_ERROR = 0,
    DPEP_LOG_WARN = 1,
    DPEP_LOG_INFO = 2,
    DPEP_LOG_DEBUG = 3,
    DPEP_LOG_TRACE = 4,
} dpep_log_level;

/* Reads DPEP_LOG_LEVEL / DPEP_LOG_ALL_RANKS; safe to call more than once. */
void dpep_log_init(void);
/* Sets the rank shown in the prefix (before MPI it is taken from the
 * launcher's environment: OMPI_COMM_WORLD_RANK, PMIX_RANK, SLURM_PROCID). */
void dpep_log_set_rank(int rank);
int dpep_log_rank(void);
bool dpep_log_enabled(dpep_log_level level);
void dpep_log(dpep_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define DPEP_ERROR(...) dpep_log(DPEP_LOG_ERROR, __VA_ARGS__)
#define DPEP_WARN(...) dpep_log(DPEP_LOG_WARN, __VA_ARGS__)
#define DPEP_INFO(...) dpep_log(DPEP_LOG_INFO, __VA_ARGS__)
#define DPEP_DEBUG(...) dpep_log(DPEP_LOG_DEBUG, __VA_ARGS__)

/* ------------------------------------------------------------------------ */
/* CHECK family. Each evaluates a call once; on failure it logs              */
/*   "[host:rank] ERROR file:line call -> error"                             */
/* and returns the matching dpep_status from the enclosing function. The     */
/* _GOTO forms store the status in `st` and jump to a cleanup label instead. */
/* ------------------------------------------------------------------------ */
void dpep_check_fail_(const char *file, int line, const char *call, const char *err);

#define DPEP_CHECK_GENERIC_(ok, call_str, err_str, status, on_fail)              \
    do {                                                                       \
        if (!(ok)) {                                                           \
            dpep_check_fail_(__FILE__, __LINE__, call_str, err_str);           \
            on_fail(status);                                                   \
        }                                                                      \
    } while (0)
#define DPEP_ON_FAIL_RETURN_(s) return (s)

/* A dpep call: propagate its status. */
#define DPEP_TRY(call)                                                         \
    do {                                                                       \
        dpep_status dpep_try_st_ = (call);                                     \
        if (dpep_try_st_ != DPEP_OK) return dpep_try_st_;                      \
    } while (0)
#define DPEP_TRY_GOTO(call, st, label)                                         \
    do {                                                                       \
        (st) = (call);                                                         \
        if ((st) != DPEP_OK) goto label;                                       \
    } while (0)

/* libc-style calls returning -1/NULL with errno. */
const char *dpep_errno_string(void);
#define DPEP_CHECK_LIBC(cond, call_str)                                        \
    DPEP_CHECK_GENERIC_((cond), call_str, dpep_errno_string(), DPEP_ERR_IO,    \
                        DPEP_ON_FAIL_RETURN_)

/* MPI calls (communicators use MPI_ERRORS_RETURN so errors reach us). */
const char *dpep_mpi_error_string(int code);
#define DPEP_CHECK_MPI(call)                                                   \
    do {                                                                       \
        int dpep_mpi_rc_ = (call);                                             \
        DPEP_CHECK_GENERIC_(dpep_mpi_rc_ == 0, #call,                          \
                            dpep_mpi_error_string(dpep_mpi_rc_), DPEP_ERR_MPI, \
                            DPEP_ON_FAIL_RETURN_);                             \
    } while (0)
#define DPEP_CHECK_MPI_GOTO(call, st, label)                                   \
    do {                                                                       \
        int dpep_mpi_rc_ = (call);                                             \
        if (dpep_mpi_rc_ != 0) {                                               \
            dpep_check_fail_(__FILE__, __LINE__, #call,                        \
                             dpep_mpi_error_string(dpep_mpi_rc_));             \
            (st) = DPEP_ERR_MPI;                                               \
            goto label;                                                        \
        }                                                                      \
    } while (0)

/* CUDA, NCCL and cuBLAS calls (in .cu files). The codes are the vendors'
 * enums (cudaSuccess, ncclSuccess, CUBLAS_STATUS_SUCCESS are all 0); the
 * strings come from the vendor libraries when this build has CUDA. */
const char *dpep_cuda_error_string(int code);
const char *dpep_nccl_error_string(int code);
const char *dpep_cublas_error_string(int code);
#define DPEP_CHECK_VENDOR_(call, strfn, status)                                \
    do {                                                                       \
        int dpep_vendor_rc_ = (int)(call);                                     \
        DPEP_CHECK_GENERIC_(dpep_vendor_rc_ == 0, #call,                       \
                            strfn(dpep_vendor_rc_), status,                    \
                            DPEP_ON_FAIL_RETURN_);                             \
    } while (0)
#define DPEP_CHECK_CUDA(call) DPEP_CHECK_VENDOR_(call, dpep_cuda_error_string, DPEP_ERR_CUDA)
#define DPEP_CHECK_NCCL(call) DPEP_CHECK_VENDOR_(call, dpep_nccl_error_string, DPEP_ERR_NCCL)
#define DPEP_CHECK_CUBLAS(call)                                                \
    DPEP_CHECK_VENDOR_(call, dpep_cublas_error_string, DPEP_ERR_CUBLAS)

/* ------------------------------------------------------------------------ */
/* Diagnostics: messages about user input, collected without malloc so that  */
/* a loader can report several problems at once. Each error reads            */
/*   FILE:LINE:COL: key: what is wrong (what was expected)                   */
/* ------------------------------------------------------------------------ */
#define DPEP_DIAG_MAX 32
#define DPEP_DIAG_MSG 512

typedef enum dpep_diag_kind { DPEP_DIAG_ERROR = 0, DPEP_DIAG_NOTE = 1 } dpep_diag_kind;

typedef struct dpep_diag {
    int n;              /* messages stored, <= DPEP_DIAG_MAX          */
    int n_errors;       /* errors reported (stored or dropped)        */
    int n_notes;        /* notes reported (stored or dropped)         */
    int dropped;        /* messages beyond DPEP_DIAG_MAX              */
    struct {
        dpep_diag_kind kind;
        char msg[DPEP_DIAG_MSG];
    } item[DPEP_DIAG_MAX];
} dpep_diag;

void dpep_diag_init(dpep_diag *d);
void dpep_diag_add(dpep_diag *d, dpep_diag_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prints errors as they are and notes as "note: …" to `f`. */
void dpep_diag_print(const dpep_diag *d, FILE *f);
/* First stored error containing `needle`, or NULL. For tests. */
const char *dpep_diag_find(const dpep_diag *d, const char *needle);

/* ------------------------------------------------------------------------ */
/* Deployment config (YAML). One option table (runtime/config_options.c)     */
/* drives parsing, validation, command-line overrides, --help and docs.      */
/* ------------------------------------------------------------------------ */
typedef enum dpep_dtype { DPEP_DTYPE_AUTO = 0, DPEP_DTYPE_F32, DPEP_DTYPE_BF16, DPEP_DTYPE_F16 } dpep_dtype;
typedef enum dpep_a2a_backend { DPEP_A2A_ALLTOALL = 0, DPEP_A2A_ALLGATHER } dpep_a2a_backend;
typedef enum dpep_a2a_transport { DPEP_A2A_TRANSPORT_AUTO = 0, DPEP_A2A_TRANSPORT_SHM, DPEP_A2A_TRANSPORT_MPI } dpep_a2a_transport;
typedef enum dpep_device_kind { DPEP_DEVICE_AUTO = 0, DPEP_DEVICE_CPU, DPEP_DEVICE_CUDA } dpep_device_kind;
typedef enum dpep_lb_method { DPEP_LB_ROUND_ROBIN = 0, DPEP_LB_SHORTEST_QUEUE, DPEP_LB_TOTAL_TOKENS } dpep_lb_method;
typedef enum dpep_bind { DPEP_BIND_AUTO = 0, DPEP_BIND_NONE, DPEP_BIND_CORE, DPEP_BIND_NUMA } dpep_bind;
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
        double mem_fraction_static;
        int64_t page_size;
        int64_t max_running_requests;
        int64_t chunked_prefill_size;
        dpep_lb_method load_balance_method;
        double comm_timeout_s;
        dpep_bind bind;
        int64_t seed;
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

/* ------------------------------------------------------------------------ */
/* Placement (runtime/placement.c): which cores a rank is bound to. A pure    */
/* function of (topology, ranks on the node, GPUs), tested on synthetic      */
/* hwloc topologies and saved XML.                                           */
/* ------------------------------------------------------------------------ */
/* Cpuset for local rank `local_rank` of `local_size` ranks on one node.
 *   gpu_numa[g]: logical index of the NUMA node nearest GPU g (-1: unknown);
 *   n_gpus: GPUs on the node (0: CPU only); rank i drives GPU i % n_gpus.
 *   mode: AUTO — with GPUs, the cores of the rank's GPU's NUMA node split
 *   evenly among the ranks sharing it; without, the node's cores split into
 *   local_size contiguous blocks (so ranks spread evenly over NUMA nodes);
 *   CORE — one core each; NUMA — the whole NUMA node; NONE — every PU.
 *   Oversubscribed ranks (more ranks than cores) share cores round-robin.
 * `out` is allocated by the caller (hwloc_bitmap_alloc) and overwritten. */
dpep_status dpep_placement_cpuset(hwloc_topology_t topo, int local_rank, int local_size,
                                  const int *gpu_numa, int n_gpus, dpep_bind mode,
                                  hwloc_bitmap_t out);
/* CORE picks the first core of the rank's AUTO block; one GPU of unknown
 * locality among those the node's ranks drive sends the whole node to the
 * no-GPU spread (so the sets stay disjoint). */

/* Logical NUMA index nearest each of the n_gpus CUDA devices (from their PCI
 * bus ids and hwloc's I/O tree); -1 where hwloc cannot tell. The topology must
 * be loaded with I/O objects kept (HWLOC_TYPE_FILTER_KEEP_IMPORTANT).
 * DPEP_ERR_NO_DEVICE when fewer than n_gpus devices are visible; gpu_numa is
 * written only on DPEP_OK. */
dpep_status dpep_placement_gpu_numa(hwloc_topology_t topo, int n_gpus, int *gpu_numa);
/* Logical NUMA index of the PCI device with bus id "dddd:bb:dd.f", -1 when
 * absent or ambiguous. */
int dpep_placement_busid_numa(hwloc_topology_t topo, const char *busid);
/* Binds the calling process per `mode`: NONE binds nothing; AUTO keeps a
 * binding the launcher already made (a strict subset of the machine; sets
 * *kept_existing), else binds to `set`; CORE and NUMA always bind to `set`.
 * A failed bind is a warning, not an error. `desc` receives the resulting
 * binding as a list ("0-3,8"), or "" when it cannot be read. */
dpep_status dpep_placement_apply(hwloc_topology_t topo, hwloc_const_bitmap_t set, dpep_bind mode,
                                 bool *kept_existing, char *desc, size_t desc_len);

/* ------------------------------------------------------------------------ */
/* World (runtime/world.c): MPI start-up, nodes, GPU choice, binding and the  */
/* communicators of the layout. Every communicator uses MPI_ERRORS_RETURN.   */
/* ------------------------------------------------------------------------ */
typedef struct dpep_world {
    int rank, size;           /* in MPI_COMM_WORLD                            */
    int local_rank, local_size; /* on this node (MPI_COMM_TYPE_SHARED)        */
    int node, n_nodes;        /* node index (ordered by lowest world rank)    */
    char host[64];
    int gpu;                  /* CUDA device of this rank, -1 on CPU          */
    char cpuset[128];         /* binding as a list string ("0-3"), or ""      */
    int numa;                 /* NUMA node of the binding, -1 if several/none */
    dpep_layout layout;
    dpep_rank_info me;
    /* Owned; MPI_COMM_NULL until dpep_world_setup. Members of each:
     *   world     all ranks                   node      ranks on my node
     *   instance  my model instance (tp)      attn_tp   my attention batch group
     *   attn_dp   same attn_tp_rank across the attention-DP groups of my instance
     *   ep        same moe_tp_rank, ep ranks  moe_tp    same ep_rank, moe_tp ranks
     *   dense     the dense-FFN group (myself, or the instance)                   */
    MPI_Comm world, node_comm, instance, attn_tp, attn_dp, ep, moe_tp, dense;
    bool mpi_owned;           /* dpep_world_init called MPI_Init_thread       */
} dpep_world;

/* MPI_Init_thread(MPI_THREAD_MULTIPLE) unless MPI is up; sets the log rank. */
dpep_status dpep_world_init(int *argc, char ***argv, dpep_world *w);
/* Checks the world and node counts against the config (errors name the
 * config line), picks the GPU, binds per runtime.bind and splits the
 * communicators. Collective over MPI_COMM_WORLD. */
dpep_status dpep_world_setup(dpep_world *w, const dpep_config *cfg, dpep_diag *diag);
/* Rank 0 prints rank, host, local rank, GPU, NUMA node, cpuset for all ranks.
 * Collective. */
dpep_status dpep_world_print_placement(const dpep_world *w, FILE *f);
/* Frees the communicators; finalizes MPI if dpep_world_init started it. */
void dpep_world_finalize(dpep_world *w);

/* ------------------------------------------------------------------------ */
/* Checkpoints (runtime/safetensors.c): Hugging Face safetensors, read in    */
/* place through mmap; a rank converts only the tensors (and slices) it      */
/* needs. Every malformed file is a DPEP_ERR_INVALID naming file and tensor. */
/* ------------------------------------------------------------------------ */
typedef enum dpep_st_dtype {
    DPEP_ST_F32 = 0, DPEP_ST_F16, DPEP_ST_BF16, DPEP_ST_F8_E4M3, DPEP_ST_F8_E5M2,
    DPEP_ST_F64, DPEP_ST_I64, DPEP_ST_I32, DPEP_ST_I16, DPEP_ST_I8, DPEP_ST_U8, DPEP_ST_BOOL,
    DPEP_ST_NDTYPES
} dpep_st_dtype;

#define DPEP_ST_MAX_DIMS 8
#define DPEP_ST_MAX_HEADER (100u << 20) /* as the safetensors reference library */

typedef struct dpep_tensor_info {
    const char *name;        /* owned by the file/checkpoint                */
    dpep_st_dtype dtype;
    int ndim;
    int64_t shape[DPEP_ST_MAX_DIMS];
    uint64_t begin, end;     /* byte offsets in the data section            */
    int file;                /* shard index inside a checkpoint             */
} dpep_tensor_info;

/* One parsed header. Tensors are sorted by name. */
typedef struct dpep_st_header {
    int n;
    dpep_tensor_info *tensor;   /* owned */
    char *names;                /* owned: the name strings                   */
    char format[32];            /* __metadata__.format ("pt"), "" if absent  */
} dpep_st_header;

/* Parses a safetensors header (the JSON after the 8-byte length) for a file
 * whose data section holds `data_len` bytes. Pure: used by the fuzz target. */
dpep_status dpep_st_parse_header(const char *json, size_t len, uint64_t data_len,
                                 const char *fname, dpep_st_header *out, dpep_diag *diag);
void dpep_st_header_free(dpep_st_header *h);
size_t dpep_st_dtype_size(dpep_st_dtype t);
const char *dpep_st_dtype_name(dpep_st_dtype t);

typedef struct dpep_ckpt dpep_ckpt; /* opaque: shards, maps, tensor index */

/* Opens the safetensors of a Hugging Face directory: through
 * model.safetensors.index.json when present, else model.safetensors, else
 * every *.safetensors in it.
 * Maps the shards read-only; touches no tensor data. */
dpep_status dpep_ckpt_open(const char *dir, dpep_ckpt **out, dpep_diag *diag);
/* Opens one safetensors file (e.g. a file of golden tensors). */
dpep_status dpep_ckpt_open_file(const char *path, dpep_ckpt **out, dpep_diag *diag);
void dpep_ckpt_close(dpep_ckpt *c);
/* Copies the stored bytes of a tensor of any dtype (e.g. I64 token ids);
 * DPEP_ERR_INVALID when absent or larger than cap. */
dpep_status dpep_ckpt_read_raw(const dpep_ckpt *c, const char *name, void *dst, size_t cap,
                               dpep_diag *diag);
/* NULL when absent. The pointer lives as long as the checkpoint. */
const dpep_tensor_info *dpep_ckpt_find(const dpep_ckpt *c, const char *name);
int dpep_ckpt_count(const dpep_ckpt *c);
const dpep_tensor_info *dpep_ckpt_tensor(const dpep_ckpt *c, int i);
const char *dpep_ckpt_file_name(const dpep_ckpt *c, int file);

/* Reads tensor `name` as float32 into dst, checking its shape against
 * `shape[ndim]` (the full tensor's). Optionally a slice along dimension
 * `slice_dim` (0 or 1): rows/cols [slice_begin, slice_begin + slice_len); pass
 * slice_dim = -1 for the whole tensor. F8_E4M3 tensors are dequantized with
 * their NAME_scale_inv block scales (block bh × bw, e.g. 128 × 128). The pages
 * read are released from the process afterwards (MADV_DONTNEED), so a rank's
 * resident memory holds only what it converted. */
dpep_status dpep_ckpt_read_f32(dpep_ckpt *c, const char *name, const int64_t *shape, int ndim,
                               int slice_dim, int64_t slice_begin, int64_t slice_len,
                               int block_h, int block_w, float *dst, dpep_diag *diag);

/* ------------------------------------------------------------------------ */
/* Model config (runtime/model_config.c): a Hugging Face config.json of a    */
/* DeepseekV3ForCausalLM / DeepseekV2ForCausalLM model (REFERENCE.md §1).    */
/* ------------------------------------------------------------------------ */
typedef enum dpep_arch { DPEP_ARCH_DEEPSEEK_V3 = 0, DPEP_ARCH_DEEPSEEK_V2 } dpep_arch;
typedef enum dpep_scoring { DPEP_SCORE_SIGMOID = 0, DPEP_SCORE_SOFTMAX } dpep_scoring;
typedef enum dpep_topk_method {
    DPEP_TOPK_NOAUX_TC = 0, DPEP_TOPK_GREEDY, DPEP_TOPK_GROUP_LIMITED_GREEDY
} dpep_topk_method;

#define DPEP_MAX_EOS 8

typedef struct dpep_model_config {
    dpep_arch arch;
    char arch_name[64];         /* "DeepseekV3ForCausalLM"                    */
    int hidden, n_layers, n_heads, vocab;
    int q_lora_rank;            /* 0: plain q_proj (V2-Lite)                  */
    int kv_lora_rank, qk_nope, qk_rope, v_head;
    int n_routed, n_shared, topk, n_group, topk_group;
    double routed_scaling_factor;
    bool norm_topk_prob;
    dpep_scoring scoring;
    dpep_topk_method topk_method;
    int first_k_dense, moe_layer_freq, moe_inter, inter;
    double rope_theta, rms_eps;
    bool yarn;                  /* rope_scaling / rope_parameters type yarn   */
    double yarn_factor, yarn_mscale, yarn_mscale_all_dim, yarn_beta_fast, yarn_beta_slow; /* mscale, mscale_all_dim: 0 when absent */
    int yarn_orig_max_pos;
    bool rope_interleave;       /* transformers' V3 flag (default true)       */
    int max_pos;
    bool tie_word_embeddings;
    bool fp8;                   /* quantization_config fp8 e4m3, block scales */
    int fp8_block[2];
    dpep_st_dtype dtype;        /* torch_dtype / dtype of the checkpoint      */
    int n_eos, eos[DPEP_MAX_EOS];
} dpep_model_config;

/* Reads DIR/config.json. Every missing or bad field is named:
 * "DIR/config.json: key: what is wrong (expected …)". A layer beyond
 * num_hidden_layers (the MTP layer) is not part of the model. */
dpep_status dpep_model_config_load(const char *dir, dpep_model_config *out, dpep_diag *diag);
/* Same from a JSON text (`name` in messages). */
dpep_status dpep_model_config_parse(const char *json, size_t len, const char *name,
                                    dpep_model_config *out, dpep_diag *diag);
/* Is layer l a MoE layer (else a dense MLP)? */
bool dpep_model_layer_is_moe(const dpep_model_config *m, int l);
/* Checks the model against a layout: experts divisible by ep, heads by
 * attn_tp, intermediate sizes by moe_tp / dense_tp. */
dpep_status dpep_model_check_layout(const dpep_model_config *m, const dpep_layout *l,
                                    const char *name, dpep_diag *diag);

/* ------------------------------------------------------------------------ */
/* Model tensors and per-rank weights (runtime/model.c).                     */
/* ------------------------------------------------------------------------ */
typedef enum dpep_wkind {
    DPEP_W_EMBED = 0,   /* embed_tokens, lm_head                            */
    DPEP_W_ATTN,        /* MLA projections and their norms                  */
    DPEP_W_DENSE,       /* dense MLP layers                                 */
    DPEP_W_ROUTED,      /* routed experts                                   */
    DPEP_W_SHARED,      /* shared experts                                   */
    DPEP_W_OTHER,       /* layer norms, router gate and bias, final norm     */
    DPEP_W_NKINDS
} dpep_wkind;
const char *dpep_wkind_name(dpep_wkind k);

/* One tensor of the Hub layout. `expert` is the routed expert index or -1;
 * `split` says how TP splits it: 0 none, 'r' rows (output dim), 'c' columns. */
typedef struct dpep_tensor_spec {
    char name[128];
    int ndim;
    int64_t shape[2];
    dpep_wkind kind;
    int layer, expert;
    char split;
    bool fp8;           /* stored as F8_E4M3 + _scale_inv in FP8 checkpoints */
} dpep_tensor_spec;

/* Calls fn for every tensor the model has, in a fixed order (Hub names). */
typedef void (*dpep_tensor_fn)(const dpep_tensor_spec *t, void *user);
void dpep_model_tensors(const dpep_model_config *m, dpep_tensor_fn fn, void *user);

/* SwiGLU MLP slice: down(silu(gate x) * up x). */
typedef struct dpep_mlp_w {
    int inter;          /* this rank's slice of the intermediate size       */
    float *gate, *up;   /* [inter, hidden]                                  */
    float *down;        /* [hidden, inter]                                  */
} dpep_mlp_w;

typedef struct dpep_layer_w {
    float *input_norm, *post_norm;   /* [hidden]                             */
    /* MLA, this rank's heads [head0, head0 + n_heads)                        */
    int head0, n_heads;
    float *q_a;          /* [q_lora, hidden], NULL without q_lora            */
    float *q_a_norm;     /* [q_lora]                                         */
    float *q_b;          /* [n_heads*(nope+rope), q_lora or hidden (q_proj)] */
    float *kv_a;         /* [kv_lora + rope, hidden]                         */
    float *kv_a_norm;    /* [kv_lora]                                        */
    float *kv_b;         /* [n_heads*(nope+v), kv_lora]                      */
    float *o;            /* [hidden, n_heads*v]                              */
    bool moe;
    dpep_mlp_w mlp;      /* dense layer: intermediate split over dense_tp    */
    float *router;       /* [n_routed, hidden]                               */
    float *router_bias;  /* [n_routed] e_score_correction_bias, or NULL      */
    int expert0, n_experts; /* this EP rank's routed experts                 */
    dpep_mlp_w *experts; /* [n_experts], intermediate split over moe_tp      */
    dpep_mlp_w shared;   /* n_shared * moe_inter wide, split over moe_tp     */
} dpep_layer_w;

typedef struct dpep_weights {
    dpep_model_config cfg;
    float *embed;        /* [vocab, hidden]                                  */
    float *final_norm;   /* [hidden]                                         */
    float *lm_head;      /* [vocab, hidden] (embed when tied)                */
    dpep_layer_w *layer; /* [n_layers]                                       */
    float *arena;        /* owned: every tensor above lives in it            */
    size_t arena_bytes;
    size_t bytes[DPEP_W_NKINDS]; /* what this rank holds, by kind            */
} dpep_weights;

/* Bytes of each kind a rank of `l` holds, stored in `dtype_bytes` per
 * element (FP8 adds its scales), e.g. for memory plans. */
void dpep_model_rank_bytes(const dpep_model_config *m, const dpep_layout *l,
                           const dpep_rank_info *r, double dtype_bytes, double *bytes);
/* Parameters by kind over the whole model. */
void dpep_model_param_counts(const dpep_model_config *m, int64_t *count);

/* Loads, as float32, exactly the tensors (and TP slices) rank `r` of layout
 * `l` needs. Checks the model against the layout first. One allocation. */
dpep_status dpep_weights_load(dpep_ckpt *ck, const dpep_model_config *m, const dpep_layout *l,
                              const dpep_rank_info *r, dpep_weights *out, dpep_diag *diag);
void dpep_weights_free(dpep_weights *w);

/* Writes a Hugging Face checkpoint (config.json + model.safetensors) with
 * deterministic random weights. `m` gives the architecture; dtype F32, BF16
 * or (m->fp8) F8_E4M3 with 128x128 block scales for the projection weights. */
dpep_status dpep_model_generate(const char *dir, const dpep_model_config *m, dpep_st_dtype dtype,
                                uint64_t seed, dpep_diag *diag);
/* The same from config.json text (written out as given; extra keys kept),
 * in shards of at most shard_bytes (0: one file) with an index when sharded. */
dpep_status dpep_model_generate_json(const char *dir, const char *config_json, dpep_st_dtype dtype,
                                     uint64_t seed, uint64_t shard_bytes, dpep_diag *diag);
/* config.json text (Hub key names) for a config; malloc'd, caller frees. */
char *dpep_model_config_to_json(const dpep_model_config *m);
/* Preset configs for `dpep model gen`: "tiny" or "small". */
dpep_status dpep_model_preset(dpep_arch arch, const char *preset, dpep_model_config *out);

/* ------------------------------------------------------------------------ */
/* Requests, workloads, DP scheduling and sampling (runtime/workload.c,      */
/* runtime/sampling.c): what `dpep run` serves and how tokens are drawn.     */
/* ------------------------------------------------------------------------ */
typedef struct dpep_sampling {
    float temperature;   /* 0: greedy (argmax, lowest id among equals)        */
    int top_k;           /* 0: off                                            */
    float top_p;         /* (0, 1]; 1: off                                    */
    uint64_t seed;       /* per-request stream; deterministic for a seed      */
} dpep_sampling;

typedef struct dpep_request {
    char id[64];         /* from the file, else the request's index           */
    int index;           /* order of intake (output order)                    */
    const int32_t *input_ids; /* [input_len], into the workload's token arena */
    int input_len;
    int max_new_tokens;
    dpep_sampling sampling;
    int dp_rank;         /* explicit data_parallel_rank, -1 if none           */
} dpep_request;

typedef struct dpep_workload {
    int n;
    dpep_request *req;   /* owned [n]                                         */
    int32_t *tokens;     /* owned: every request's input ids                  */
    size_t n_tokens;
    int bad_lines;       /* file: lines rejected (each named in the diag)     */
} dpep_workload;

/* Builds the workload the config describes (random, shared_prefix, file)
 * for a model of `vocab` tokens and `dp` DP ranks. For a JSONL file, a bad
 * line is reported ("FILE:LINE: key: what (expected …)") and skipped; the
 * other requests are kept, bad_lines counts the rejected ones, and the
 * status is DPEP_OK unless no request is left. */
dpep_status dpep_workload_build(const dpep_config *cfg, int vocab, int dp, dpep_workload *out,
                                dpep_diag *diag);
void dpep_workload_free(dpep_workload *w);

/* Load of one DP rank as the scheduler sees it. */
typedef struct dpep_dp_load {
    int64_t requests;    /* outstanding requests                              */
    int64_t tokens;      /* outstanding tokens (prompt + max new)             */
} dpep_dp_load;

/* Picks the DP rank for request r: its data_parallel_rank when given, else
 * by `method` (round robin over `*rr`, fewest outstanding requests, fewest
 * outstanding tokens; ties to the lowest rank). Updates load[] and *rr. */
int dpep_sched_assign(dpep_lb_method method, const dpep_request *r, int dp, dpep_dp_load *load,
                      int *rr);

/* Draws the next token from logits[vocab]. `scratch` holds 2 * vocab floats
 * (caller-owned, so the decode loop does not allocate); `rng` is the
 * request's stream (start it with dpep_rng_seed). */
int dpep_sample(const float *logits, int vocab, const dpep_sampling *s, uint64_t *rng,
                float *scratch);
uint64_t dpep_rng_seed(uint64_t seed);
/* Uniform double in [0, 1) from the stream. */
double dpep_rng_uniform(uint64_t *rng);

/* ------------------------------------------------------------------------ */
/* Devices and build facts.                                                  */
/* ------------------------------------------------------------------------ */
/* Number of CUDA devices visible. DPEP_ERR_NO_DEVICE with a reason in `why`
 * (no CUDA in this build, no driver, no device) when there are none. */
dpep_status dpep_cuda_device_count(int *count, char *why, size_t why_len);
/* PCI bus id ("0000:3b:00.0") of CUDA device `dev`; DPEP_ERR_NO_DEVICE
 * without CUDA. */
dpep_status dpep_cuda_pci_bus_id(int dev, char *buf, size_t len);
/* Makes `dev` the current CUDA device of the calling thread. */
dpep_status dpep_cuda_set_device(int dev);
/* One line per fact (version, MPI library, hwloc, BLAS, CUDA, NCCL). */
void dpep_print_build_info(FILE *f);

#ifdef __cplusplus
}
#endif
#endif /* DPEP_RUNTIME_H */
