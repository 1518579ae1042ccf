/* comm_perf.c — dpep_comm_perf: times the collectives of dpep_comm.h with
 * nccl-tests' flags and columns, checks every received element against data
 * each rank rebuilds from a seed, and compares bus bandwidth with the node's
 * memcpy bandwidth measured in the same run (all ranks copying at once).
 *
 * Size semantics follow nccl-tests: `size` is the bytes a rank sends for
 * alltoallv (split evenly over the group, self included), the bytes a rank
 * receives for allgather (group × count), the bytes a rank sends for
 * reducescatter (group × count), the buffer for allreduce and bcast.
 * busbw = algbw × factor with n the group size: alltoallv, allgather,
 * reducescatter (n-1)/n; allreduce 2(n-1)/n; bcast 1.
 *
 * Exit code: 0 all correct, 1 any wrong element or a failed call, 2 bad usage. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <mpi.h>

#include "dpep_comm.h"
#include "dpep_world.h"

/* ------------------------------------------------------------------------ */
/* Operations                                                                */
/* ------------------------------------------------------------------------ */
typedef enum perf_op {
    PERF_ALLTOALLV = 0,
    PERF_ALLGATHER,
    PERF_REDUCESCATTER,
    PERF_ALLREDUCE,
    PERF_BCAST,
} perf_op;

static const char *const perf_op_names[] = {"alltoallv", "allgather", "reducescatter",
                                            "allreduce", "bcast", NULL};

/* nccl-tests' bus-bandwidth factors, n = ranks in the communicator. */
static double perf_busbw_factor(perf_op op, int n) {
    switch (op) {
    case PERF_ALLTOALLV:
    case PERF_ALLGATHER:
    case PERF_REDUCESCATTER: return n > 0 ? (double)(n - 1) / n : 0.0;
    case PERF_ALLREDUCE: return n > 0 ? 2.0 * (n - 1) / n : 0.0;
    case PERF_BCAST: return 1.0;
    }
    return 0.0;
}

static bool perf_op_reduces(perf_op op) {
    return op == PERF_REDUCESCATTER || op == PERF_ALLREDUCE;
}

/* ------------------------------------------------------------------------ */
/* Options: one table drives parsing and --help.                             */
/* ------------------------------------------------------------------------ */
typedef struct perf_opts {
    int64_t min_bytes, max_bytes;  /* -b -e                                  */
    int64_t step_factor;           /* -f (multiplicative)                    */
    int64_t warmup, iters;         /* -w -n                                  */
    int64_t check;                 /* -c 0/1                                 */
    int64_t volume;                /* -V: cap on iters × size (0: none)      */
    int64_t group;                 /* -g: ranks per group (0: world)         */
    int64_t root;                  /* -r: bcast root (group rank)            */
    int64_t seed;                  /* -s                                     */
    int64_t memcpy_iters;          /* -m                                     */
    double timeout_s;              /* -T: comm watchdog (0: off)             */
    char op[32];                   /* -o                                     */
    char dtype[32];                /* -d                                     */
    char json[1024];               /* -j: JSON summary path ("" none)        */
    char config[1024];             /* -y: deployment YAML for -l             */
    char layout_group[32];         /* -l: a communicator of that layout      */
} perf_opts;

typedef enum perf_opt_type { PO_SIZE = 0, PO_INT, PO_DOUBLE, PO_STRING } perf_opt_type;

typedef struct perf_opt_row {
    char flag;             /* -X                                            */
    const char *name;      /* long name, also the JSON key                  */
    perf_opt_type type;
    size_t offset;         /* into perf_opts                                */
    size_t cap;            /* PO_STRING: buffer size                        */
    const char *def;       /* default, as typed                             */
    double min, max;       /* bounds for numbers                            */
    const char *help;
} perf_opt_row;

#define PO_OFF(f) offsetof(perf_opts, f)
static const perf_opt_row perf_opt_table[] = {
    {'b', "minbytes", PO_SIZE, PO_OFF(min_bytes), 0, "32M", 1, 1e15, "smallest size in bytes (K/M/G suffixes)"},
    {'e', "maxbytes", PO_SIZE, PO_OFF(max_bytes), 0, "32M", 1, 1e15, "largest size in bytes"},
    {'f', "stepfactor", PO_INT, PO_OFF(step_factor), 0, "2", 2, 1024, "multiplicative step between sizes"},
    {'w', "warmup_iters", PO_INT, PO_OFF(warmup), 0, "5", 0, 1e9, "untimed iterations per size"},
    {'n', "iters", PO_INT, PO_OFF(iters), 0, "20", 1, 1e9, "timed iterations per size"},
    {'c', "check", PO_INT, PO_OFF(check), 0, "1", 0, 1, "check every received element (0/1)"},
    {'o', "op", PO_STRING, PO_OFF(op), sizeof(((perf_opts *)0)->op), "alltoallv", 0, 0,
     "alltoallv | allgather | reducescatter | allreduce | bcast"},
    {'d', "dtype", PO_STRING, PO_OFF(dtype), sizeof(((perf_opts *)0)->dtype), "float", 0, 0,
     "float | bfloat16 | half | int8 | int32 | int64"},
    {'g', "group", PO_INT, PO_OFF(group), 0, "0", 0, 1e9,
     "ranks per group: the world split into groups of G consecutive ranks (an EP or attention-TP group), the collective run in every group at once; 0 = world"},
    {'r', "root", PO_INT, PO_OFF(root), 0, "0", 0, 1e9, "bcast root (rank within the group)"},
    {'s', "seed", PO_INT, PO_OFF(seed), 0, "1234", 0, 1e15, "seed of the check data"},
    {'V', "volume", PO_SIZE, PO_OFF(volume), 0, "0", 0, 1e18,
     "cap on iters × size per size (fewer iterations at large sizes, at least 2); 0 = none"},
    {'m', "memcpy_iters", PO_INT, PO_OFF(memcpy_iters), 0, "10", 1, 1e6, "memcpys per baseline trial (at least 256 MiB worth)"},
    {'T', "timeout", PO_DOUBLE, PO_OFF(timeout_s), 0, "300", 0, 1e6, "comm watchdog in seconds (0: off)"},
    {'j', "json", PO_STRING, PO_OFF(json), sizeof(((perf_opts *)0)->json), "", 0, 0, "write a JSON summary to FILE"},
    {'y', "config", PO_STRING, PO_OFF(config), sizeof(((perf_opts *)0)->config), "", 0, 0,
     "deployment YAML whose layout -l picks groups from (world size must match it)"},
    {'l', "layout_group", PO_STRING, PO_OFF(layout_group), sizeof(((perf_opts *)0)->layout_group), "", 0, 0,
     "with -y: run in that layout communicator: instance | attn_tp | attn_dp | ep | moe_tp | dense | world"},
};
#define PERF_N_OPTS (sizeof(perf_opt_table) / sizeof(perf_opt_table[0]))

/* "64M" -> 67108864. Suffixes K/M/G/T are powers of 1024. */
static bool perf_parse_size(const char *s, int64_t *out) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno != 0 || v < 0) return false;
    double mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1024.0; end++; break;
    case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
    case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: break;
    }
    if (*end == 'B' || *end == 'b') end++;
    if (*end != '\0' || v * mul > 9e18) return false;
    *out = (int64_t)(v * mul);
    return true;
}

/* Sets one option from text; a message in `err` on failure. */
static bool perf_opt_set(perf_opts *o, const perf_opt_row *row, const char *val, char *err,
                         size_t errn) {
    char *base = (char *)o + row->offset;
    switch (row->type) {
    case PO_SIZE:
    case PO_INT: {
        int64_t v = 0;
        if (row->type == PO_SIZE) {
            if (!perf_parse_size(val, &v)) goto bad;
        } else {
            char *end = NULL;
            errno = 0;
            long long x = strtoll(val, &end, 10);
            if (end == val || *end != '\0' || errno != 0) goto bad;
            v = x;
        }
        if ((double)v < row->min || (double)v > row->max) {
            snprintf(err, errn, "-%c %s: %s out of range [%.0f, %.0f]", row->flag, row->name,
                     val, row->min, row->max);
            return false;
        }
        memcpy(base, &v, sizeof v);
        return true;
    }
    case PO_DOUBLE: {
        char *end = NULL;
        errno = 0;
        double v = strtod(val, &end);
        if (end == val || *end != '\0' || errno != 0) goto bad;
        if (v < row->min || v > row->max) {
            snprintf(err, errn, "-%c %s: %s out of range [%g, %g]", row->flag, row->name, val,
                     row->min, row->max);
            return false;
        }
        memcpy(base, &v, sizeof v);
        return true;
    }
    case PO_STRING:
        if (strlen(val) >= row->cap) {
            snprintf(err, errn, "-%c %s: value longer than %zu characters", row->flag,
                     row->name, row->cap - 1);
            return false;
        }
        memcpy(base, val, strlen(val) + 1);
        return true;
    }
bad:
    snprintf(err, errn, "-%c %s: '%s' is not a %s", row->flag, row->name, val,
             row->type == PO_SIZE ? "size (e.g. 1M)" : "number");
    return false;
}

static void perf_usage(FILE *f) {
    fprintf(f, "usage: dpep_comm_perf [options]   (run under mpiexec)\n");
    for (size_t i = 0; i < PERF_N_OPTS; i++) {
        const perf_opt_row *r = &perf_opt_table[i];
        fprintf(f, "  -%c %-14s %s (default %s)\n", r->flag, r->name, r->help,
                r->def[0] ? r->def : "none");
    }
    fprintf(f, "  -h                help\n");
}

/* Returns DPEP_OK, or DPEP_ERR_USAGE with the message in err ("" for -h). */
static dpep_status perf_parse_args(int argc, char **argv, perf_opts *o, char *err, size_t errn) {
    memset(o, 0, sizeof *o);
    for (size_t i = 0; i < PERF_N_OPTS; i++)
        if (!perf_opt_set(o, &perf_opt_table[i], perf_opt_table[i].def, err, errn))
            return DPEP_ERR_INTERNAL;
    err[0] = '\0';
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) return DPEP_ERR_USAGE;
        if (arg[0] != '-' || arg[1] == '\0') {
            snprintf(err, errn, "unexpected argument '%s'", arg);
            return DPEP_ERR_USAGE;
        }
        const perf_opt_row *row = NULL;
        for (size_t i = 0; i < PERF_N_OPTS; i++)
            if (arg[1] == perf_opt_table[i].flag && arg[2] == '\0') row = &perf_opt_table[i];
        if (!row) {
            snprintf(err, errn, "unknown flag '%s' (see -h)", arg);
            return DPEP_ERR_USAGE;
        }
        if (a + 1 >= argc) {
            snprintf(err, errn, "-%c %s needs a value", row->flag, row->name);
            return DPEP_ERR_USAGE;
        }
        if (!perf_opt_set(o, row, argv[++a], err, errn)) return DPEP_ERR_USAGE;
    }
    if (o->min_bytes > o->max_bytes) {
        snprintf(err, errn, "-b %lld is larger than -e %lld", (long long)o->min_bytes,
                 (long long)o->max_bytes);
        return DPEP_ERR_USAGE;
    }
    return DPEP_OK;
}

static bool perf_parse_op(const char *s, perf_op *out) {
    for (int i = 0; perf_op_names[i]; i++)
        if (strcmp(s, perf_op_names[i]) == 0) {
            *out = (perf_op)i;
            return true;
        }
    /* nccl-tests' binary names, minus "_perf". */
    static const struct { const char *alias; perf_op op; } aliases[] = {
        {"alltoall", PERF_ALLTOALLV},    {"all_to_all", PERF_ALLTOALLV},
        {"all_gather", PERF_ALLGATHER},  {"reduce_scatter", PERF_REDUCESCATTER},
        {"all_reduce", PERF_ALLREDUCE},  {"broadcast", PERF_BCAST},
    };
    for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
        if (strcmp(s, aliases[i].alias) == 0) {
            *out = aliases[i].op;
            return true;
        }
    return false;
}

static bool perf_parse_dtype(const char *s, dpep_comm_dtype *out) {
    static const struct { const char *name; dpep_comm_dtype t; } names[] = {
        {"float", DPEP_COMM_F32},  {"f32", DPEP_COMM_F32},     {"fp32", DPEP_COMM_F32},
        {"float32", DPEP_COMM_F32}, {"bfloat16", DPEP_COMM_BF16}, {"bf16", DPEP_COMM_BF16},
        {"half", DPEP_COMM_F16},   {"f16", DPEP_COMM_F16},     {"fp16", DPEP_COMM_F16},
        {"float16", DPEP_COMM_F16}, {"int8", DPEP_COMM_U8},    {"uint8", DPEP_COMM_U8},
        {"u8", DPEP_COMM_U8},      {"int32", DPEP_COMM_I32},   {"i32", DPEP_COMM_I32},
        {"int", DPEP_COMM_I32},    {"int64", DPEP_COMM_I64},   {"i64", DPEP_COMM_I64},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(s, names[i].name) == 0) {
            *out = names[i].t;
            return true;
        }
    return false;
}

/* ------------------------------------------------------------------------ */
/* Check data: element i of the block rank s sends to rank d (world ranks;   */
/* d = PERF_ANY when the data has no destination) is a small integer, so     */
/* that sums over up to 32 ranks are exact in every dtype (bf16: <= 256).     */
/* ------------------------------------------------------------------------ */
#define PERF_ANY 0xFFFFFu

static inline uint64_t perf_mix(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Per-block key: mixed once per block, then per element. */
static inline uint64_t perf_block_key(uint64_t seed, uint32_t s, uint32_t d) {
    return perf_mix(seed ^ ((uint64_t)s << 40) ^ ((uint64_t)d << 20) ^ 0x5DEECE66Dull);
}

/* Values 0..range-1. */
static inline uint32_t perf_value(uint64_t key, int64_t i, uint32_t range) {
    return (uint32_t)(perf_mix(key ^ (uint64_t)i) % range);
}

/* Exact f32 -> f16 for the small integers used here (0..2048). */
static uint16_t perf_small_int_to_f16(uint32_t v) {
    if (v == 0) return 0;
    int e = 31 - __builtin_clz(v);                /* v in [2^e, 2^(e+1)) */
    uint32_t mant = (v << (10 - e)) & 0x3FFu;     /* exact for e <= 10   */
    return (uint16_t)(((uint32_t)(e + 15) << 10) | mant);
}

static double perf_f16_to_double(uint16_t h) {
    int e = (h >> 10) & 0x1F;
    int m = h & 0x3FF;
    double sign = (h & 0x8000) ? -1.0 : 1.0;
    if (e == 0) return sign * ldexp(m, -24);
    if (e == 31) return m ? NAN : sign * INFINITY;
    return sign * ldexp(1024 + m, e - 25);
}

static void perf_store(void *buf, dpep_comm_dtype t, int64_t i, uint32_t v) {
    switch (t) {
    case DPEP_COMM_U8: ((uint8_t *)buf)[i] = (uint8_t)v; break;
    case DPEP_COMM_I32: ((int32_t *)buf)[i] = (int32_t)v; break;
    case DPEP_COMM_I64: ((int64_t *)buf)[i] = (int64_t)v; break;
    case DPEP_COMM_F32: ((float *)buf)[i] = (float)v; break;
    case DPEP_COMM_BF16: ((uint16_t *)buf)[i] = dpep_comm_f32_to_bf16((float)v); break;
    case DPEP_COMM_F16: ((uint16_t *)buf)[i] = perf_small_int_to_f16(v); break;
    }
}

static double perf_load(const void *buf, dpep_comm_dtype t, int64_t i) {
    switch (t) {
    case DPEP_COMM_U8: return ((const uint8_t *)buf)[i];
    case DPEP_COMM_I32: return ((const int32_t *)buf)[i];
    case DPEP_COMM_I64: return (double)((const int64_t *)buf)[i];
    case DPEP_COMM_F32: return ((const float *)buf)[i];
    case DPEP_COMM_BF16: return dpep_comm_bf16_to_f32(((const uint16_t *)buf)[i]);
    case DPEP_COMM_F16: return perf_f16_to_double(((const uint16_t *)buf)[i]);
    }
    return NAN;
}

/* Fills block [off, off+count) with the data rank s sends to d. */
static void perf_fill(void *buf, dpep_comm_dtype t, int64_t off, int64_t count, uint64_t seed,
                      uint32_t s, uint32_t d, uint32_t range) {
    uint64_t key = perf_block_key(seed, s, d);
    for (int64_t i = 0; i < count; i++) perf_store(buf, t, off + i, perf_value(key, i, range));
}

/* Counts elements of block [off, off+count) differing from what s sent to d. */
static int64_t perf_verify(const void *buf, dpep_comm_dtype t, int64_t off, int64_t count,
                           uint64_t seed, uint32_t s, uint32_t d, uint32_t range) {
    uint64_t key = perf_block_key(seed, s, d);
    int64_t wrong = 0;
    for (int64_t i = 0; i < count; i++)
        wrong += perf_load(buf, t, off + i) != (double)perf_value(key, i, range);
    return wrong;
}

/* ------------------------------------------------------------------------ */
/* The benchmark                                                             */
/* ------------------------------------------------------------------------ */
typedef struct perf_ctx {
    perf_opts o;
    perf_op op;
    dpep_comm_dtype t;
    size_t esize;                /* bytes per element                         */
    int wrank, wsize;            /* MPI_COMM_WORLD                            */
    int gsize, group, grank;     /* my group: size, index, my rank in it      */
    int local_size, cores;       /* ranks on this node, cores online          */
    dpep_comm *comm;             /* my group                                  */
    uint32_t range;              /* check values are 0..range-1               */
    /* Buffers sized for the largest message, owned here. */
    void *send, *recv;           /* bytes: send_cap, recv_cap                 */
    size_t send_cap, recv_cap;
    int64_t *scounts, *sdispls, *rcounts, *rdispls; /* (gsize,) elements      */
    int *members;                /* -l: world rank of each group rank (owned) */
} perf_ctx;

static uint32_t perf_world_of(const perf_ctx *c, int group_rank) {
    if (c->members) return (uint32_t)c->members[group_rank];
    return (uint32_t)(c->group * c->gsize + group_rank);
}

/* -y/-l: the communicator of a layout group, from dpep's own world setup, so
 * the bench measures exactly the groups dpep run uses (strided ones too). */
static dpep_status perf_layout_comm(perf_ctx *c, MPI_Comm *out) {
    dpep_config cfg;
    DPEP_TRY(dpep_config_init(&cfg));
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_world w;
    dpep_status st = dpep_world_init(NULL, NULL, &w);
    if (st == DPEP_OK) st = dpep_config_load_file(&cfg, c->o.config, NULL, &diag);
    if (st == DPEP_OK) cfg.runtime.bind = DPEP_BIND_NONE; /* keep the launcher's binding */
    if (st == DPEP_OK) st = dpep_config_validate(&cfg, c->wsize, &diag);
    if (st == DPEP_OK) st = dpep_world_setup(&w, &cfg, &diag);
    if (st != DPEP_OK) {
        if (c->wrank == 0) dpep_diag_print(&diag, stderr);
        dpep_config_free(&cfg);
        return st;
    }
    static const char *const names[] = {"instance", "attn_tp", "attn_dp", "ep", "moe_tp", "dense", "world"};
    MPI_Comm comms[] = {w.instance, w.attn_tp, w.attn_dp, w.ep, w.moe_tp, w.dense, w.world};
    int pick = -1;
    for (int i = 0; i < 7; i++)
        if (strcmp(c->o.layout_group, names[i]) == 0) pick = i;
    if (pick < 0) {
        if (c->wrank == 0)
            DPEP_ERROR("-l %s: expected instance, attn_tp, attn_dp, ep, moe_tp, dense or world",
                       c->o.layout_group);
        st = DPEP_ERR_USAGE;
    } else {
        st = MPI_Comm_dup(comms[pick], out) == MPI_SUCCESS ? DPEP_OK : DPEP_ERR_MPI;
    }
    w.mpi_owned = false; /* the bench owns MPI */
    dpep_world_finalize(&w);
    dpep_config_free(&cfg);
    return st;
}

/* Elements per block for `bytes` (see the size semantics at the top), and
 * the send/recv byte counts per rank. */
typedef struct perf_shape {
    int64_t block;        /* alltoallv: per peer; gather/rs: per rank; else buffer */
    int64_t bytes;        /* the `size` column (after rounding down)               */
    int64_t count;        /* the `count` column: bytes / esize                     */
    size_t send_bytes, recv_bytes;
} perf_shape;

static perf_shape perf_shape_of(const perf_ctx *c, int64_t bytes) {
    perf_shape s = {0};
    int64_t n = c->gsize, es = (int64_t)c->esize;
    switch (c->op) {
    case PERF_ALLTOALLV:
    case PERF_ALLGATHER:
    case PERF_REDUCESCATTER: s.block = bytes / (n * es); s.count = s.block * n; break;
    case PERF_ALLREDUCE:
    case PERF_BCAST: s.block = bytes / es; s.count = s.block; break;
    }
    s.bytes = s.count * es;
    size_t blk = (size_t)(s.block * es);
    switch (c->op) {
    case PERF_ALLTOALLV: s.send_bytes = s.recv_bytes = blk * (size_t)n; break;
    case PERF_ALLGATHER: s.send_bytes = blk; s.recv_bytes = blk * (size_t)n; break;
    case PERF_REDUCESCATTER: s.send_bytes = blk * (size_t)n; s.recv_bytes = blk; break;
    case PERF_ALLREDUCE: s.send_bytes = s.recv_bytes = blk; break;
    case PERF_BCAST: s.send_bytes = 0; s.recv_bytes = blk; break;
    }
    return s;
}

/* One collective call at shape s (send/recv/counts prepared by perf_prepare). */
static dpep_status perf_run_once(perf_ctx *c, const perf_shape *s) {
    switch (c->op) {
    case PERF_ALLTOALLV:
        return dpep_comm_alltoallv(c->comm, c->send, c->scounts, c->sdispls, c->recv, c->rcounts,
                                   c->rdispls, c->t);
    case PERF_ALLGATHER: return dpep_comm_allgather(c->comm, c->send, c->recv, s->block, c->t);
    case PERF_REDUCESCATTER:
        return dpep_comm_reduce_scatter(c->comm, c->send, c->recv, s->block, c->t);
    case PERF_ALLREDUCE: return dpep_comm_allreduce(c->comm, c->send, c->recv, s->block, c->t);
    case PERF_BCAST: return dpep_comm_bcast(c->comm, c->recv, s->block, c->t, (int)c->o.root);
    }
    return DPEP_ERR_INTERNAL;
}

/* Counts/displacements for alltoallv; check data into send (and into recv
 * for the bcast root); recv poisoned with 0xFF bytes (NaN for floats) so a
 * block that never arrives is counted wrong. */
static void perf_prepare(perf_ctx *c, const perf_shape *s, bool fill) {
    for (int p = 0; p < c->gsize; p++) {
        c->scounts[p] = c->rcounts[p] = s->block;
        c->sdispls[p] = c->rdispls[p] = s->block * p;
    }
    if (!fill) return;
    uint32_t me = (uint32_t)c->wrank;
    uint64_t seed = (uint64_t)c->o.seed;
    memset(c->recv, 0xFF, s->recv_bytes);
    switch (c->op) {
    case PERF_ALLTOALLV:
    case PERF_REDUCESCATTER:
        for (int p = 0; p < c->gsize; p++)
            perf_fill(c->send, c->t, s->block * p, s->block, seed, me, perf_world_of(c, p),
                      c->range);
        break;
    case PERF_ALLGATHER:
    case PERF_ALLREDUCE:
        perf_fill(c->send, c->t, 0, s->block, seed, me, PERF_ANY, c->range);
        break;
    case PERF_BCAST:
        if (c->grank == c->o.root)
            perf_fill(c->recv, c->t, 0, s->block, seed, me, PERF_ANY, c->range);
        break;
    }
}

/* Wrong elements in recv after one call on prepared data. */
static int64_t perf_check(const perf_ctx *c, const perf_shape *s) {
    uint32_t me = (uint32_t)c->wrank;
    uint64_t seed = (uint64_t)c->o.seed;
    int64_t wrong = 0;
    switch (c->op) {
    case PERF_ALLTOALLV:
        for (int p = 0; p < c->gsize; p++)
            wrong += perf_verify(c->recv, c->t, s->block * p, s->block, seed, perf_world_of(c, p),
                                 me, c->range);
        break;
    case PERF_ALLGATHER:
        for (int p = 0; p < c->gsize; p++)
            wrong += perf_verify(c->recv, c->t, s->block * p, s->block, seed, perf_world_of(c, p),
                                 PERF_ANY, c->range);
        break;
    case PERF_BCAST:
        wrong = perf_verify(c->recv, c->t, 0, s->block, seed, perf_world_of(c, (int)c->o.root),
                            PERF_ANY, c->range);
        break;
    case PERF_REDUCESCATTER:
    case PERF_ALLREDUCE: {
        /* Expected: sum over the group's ranks of what each sent for my block
         * (reducescatter) or for the buffer (allreduce). U8 sums wrap. */
        int n = c->gsize;
        uint64_t keys[n];
        for (int p = 0; p < n; p++)
            keys[p] = perf_block_key(seed, perf_world_of(c, p),
                                     c->op == PERF_REDUCESCATTER ? me : PERF_ANY);
        for (int64_t i = 0; i < s->block; i++) {
            uint64_t sum = 0;
            for (int p = 0; p < n; p++) sum += perf_value(keys[p], i, c->range);
            if (c->t == DPEP_COMM_U8) sum &= 0xFF;
            wrong += perf_load(c->recv, c->t, i) != (double)sum;
        }
        break;
    }
    }
    return wrong;
}

static double perf_now(void) { return MPI_Wtime(); }

/* Time per iteration (max over the world of each rank's mean) for shape s. */
static dpep_status perf_time(perf_ctx *c, const perf_shape *s, int64_t warm, int64_t iters,
                             double *time_s) {
    for (int64_t i = 0; i < warm; i++) DPEP_TRY(perf_run_once(c, s));
    DPEP_CHECK_MPI(MPI_Barrier(MPI_COMM_WORLD));
    double t0 = perf_now();
    for (int64_t i = 0; i < iters; i++) DPEP_TRY(perf_run_once(c, s));
    double mine = (perf_now() - t0) / (double)iters, worst = 0;
    DPEP_CHECK_MPI(MPI_Allreduce(&mine, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
    *time_s = worst;
    return DPEP_OK;
}

/* memcpy baseline: every rank copies `bytes` between two first-touched
 * buffers of its own, all ranks at once, in PERF_MEMCPY_TRIALS barrier-started
 * trials. Reports bytes copied (counted once, not read+write) / (max over
 * ranks of the mean time per copy) of the best trial: the copy rate one rank
 * gets while the whole node copies, the same per-rank view as busbw. */
#define PERF_MEMCPY_TRIALS 5
typedef struct perf_memcpy {
    int64_t bytes, copies;  /* buffer size; copies per trial                     */
    double per_rank_GBps;   /* bytes / max-rank mean time                        */
    double node_GBps;       /* per_rank × ranks on the node                      */
    double min_GBps, max_GBps; /* spread of the ranks' own rates                 */
} perf_memcpy;

static dpep_status perf_memcpy_baseline(const perf_ctx *c, int64_t bytes, perf_memcpy *out) {
    dpep_status st = DPEP_OK;
    char *a = malloc((size_t)bytes), *b = malloc((size_t)bytes);
    if (!a || !b) {
        DPEP_ERROR("memcpy baseline: cannot allocate 2 x %lld bytes", (long long)bytes);
        st = DPEP_ERR_NOMEM;
        goto free_bufs;
    }
    memset(a, 1, (size_t)bytes);
    memset(b, 2, (size_t)bytes);
    memcpy(b, a, (size_t)bytes); /* warm-up */
    /* At least 256 MiB per trial so that small buffers still time well. */
    int64_t copies = c->o.memcpy_iters, min_copies = ((int64_t)256 << 20) / bytes;
    if (copies < min_copies) copies = min_copies;
    double best = 0, rate = 0, rmin = 0, rmax = 0;
    for (int trial = 0; trial < PERF_MEMCPY_TRIALS; trial++) {
        DPEP_CHECK_MPI_GOTO(MPI_Barrier(MPI_COMM_WORLD), st, free_bufs);
        double t0 = perf_now();
        for (int64_t i = 0; i < copies; i++) {
            memcpy((i & 1) ? a : b, (i & 1) ? b : a, (size_t)bytes);
            __asm__ __volatile__("" ::: "memory");
        }
        double mine = (perf_now() - t0) / (double)copies, worst = 0;
        DPEP_CHECK_MPI_GOTO(MPI_Allreduce(&mine, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD),
                            st, free_bufs);
        if (trial == 0 || worst < best) {
            best = worst;
            rate = (double)bytes / mine / 1e9;
        }
    }
    DPEP_CHECK_MPI_GOTO(MPI_Allreduce(&rate, &rmin, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD), st,
                        free_bufs);
    DPEP_CHECK_MPI_GOTO(MPI_Allreduce(&rate, &rmax, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD), st,
                        free_bufs);
    out->copies = copies;
    out->bytes = bytes;
    out->per_rank_GBps = (double)bytes / best / 1e9;
    out->node_GBps = out->per_rank_GBps * c->local_size;
    out->min_GBps = rmin;
    out->max_GBps = rmax;
free_bufs:
    free(b);
    free(a);
    return st;
}

/* Transport as chosen on the mpirun line (mpirun exports --mca as OMPI_MCA_*). */
static void perf_transport(char *buf, size_t n) {
    const char *pml = getenv("OMPI_MCA_pml"), *btl = getenv("OMPI_MCA_btl");
    const char *tls = getenv("OMPI_MCA_pml_ucx_tls");
    if (pml && strcmp(pml, "ucx") == 0)
        snprintf(buf, n, "pml=ucx (tls=%s)", tls ? tls : "default");
    else
        snprintf(buf, n, "pml=%s btl=%s", pml ? pml : "default", btl ? btl : "default");
}

typedef struct perf_row {
    int64_t bytes, count, iters;
    double time_us, algbw, busbw, ratio;
    int64_t wrong;   /* -1: not checked */
} perf_row;

static dpep_status perf_write_json(const perf_ctx *c, const char *transport,
                                   const perf_memcpy *mc, const perf_row *rows, int nrows,
                                   double avg_busbw, int64_t total_wrong) {
    dpep_status st = DPEP_OK;
    json_t *root = json_object(), *arr = json_array();
    if (!root || !arr) {
        json_decref(root);
        json_decref(arr);
        return DPEP_ERR_NOMEM;
    }
    for (int i = 0; i < nrows; i++) {
        const perf_row *r = &rows[i];
        json_array_append_new(
            arr, json_pack("{s:I, s:I, s:s, s:f, s:f, s:f, s:I, s:I, s:f, s:f}", "bytes",
                           (json_int_t)r->bytes, "count", (json_int_t)r->count, "type",
                           dpep_comm_dtype_name(c->t), "time_us", r->time_us, "algbw",
                           r->algbw, "busbw", r->busbw, "wrong", (json_int_t)r->wrong, "iters",
                           (json_int_t)r->iters, "memcpy_GBps", mc->per_rank_GBps, "ratio",
                           r->ratio));
    }
    json_object_set_new(root, "tool", json_string("dpep_comm_perf"));
    json_object_set_new(root, "op", json_string(perf_op_names[c->op]));
    json_object_set_new(root, "type", json_string(dpep_comm_dtype_name(c->t)));
    json_object_set_new(root, "backend", json_string(dpep_comm_backend_name(DPEP_COMM_MPI)));
    json_object_set_new(root, "transport", json_string(transport));
    json_object_set_new(root, "ranks", json_integer(c->wsize));
    json_object_set_new(root, "group_size", json_integer(c->gsize));
    json_object_set_new(root, "groups", json_integer(c->wsize / c->gsize));
    json_object_set_new(root, "ranks_per_node", json_integer(c->local_size));
    json_object_set_new(root, "cores_online", json_integer(c->cores));
    json_object_set_new(root, "oversubscribed", json_boolean(c->local_size > c->cores));
    json_object_set_new(root, "check", json_boolean(c->o.check != 0));
    json_object_set_new(root, "seed", json_integer(c->o.seed));
    json_object_set_new(root, "memcpy_bytes", json_integer(mc->bytes));
    json_object_set_new(root, "memcpy_GBps", json_real(mc->per_rank_GBps));
    json_object_set_new(root, "memcpy_node_GBps", json_real(mc->node_GBps));
    json_object_set_new(root, "memcpy_baseline",
                        json_string("per-rank memcpy rate (bytes copied once / max over ranks of "
                                    "mean time per copy, best of 5 trials) of a buffer of the "
                                    "largest message size, all ranks of the node copying at once"));
    json_object_set_new(root, "avg_busbw", json_real(avg_busbw));
    json_object_set_new(root, "wrong", json_integer(total_wrong));
    json_object_set_new(root, "sizes", arr);
    if (json_dump_file(root, c->o.json, JSON_INDENT(2) | JSON_REAL_PRECISION(6)) != 0) {
        DPEP_ERROR("cannot write JSON summary to %s", c->o.json);
        st = DPEP_ERR_IO;
    }
    json_decref(root);
    return st;
}

#define PERF_MAX_ROWS 64

/* Everything after argument parsing; collective over MPI_COMM_WORLD. */
static dpep_status perf_main(perf_ctx *c, bool *any_wrong) {
    dpep_status st = DPEP_OK;
    MPI_Comm group_comm = MPI_COMM_NULL, node_comm = MPI_COMM_NULL;
    perf_row rows[PERF_MAX_ROWS];
    int nrows = 0;
    *any_wrong = false;

    if (c->o.layout_group[0] || c->o.config[0]) {
        if (!c->o.layout_group[0] || !c->o.config[0] || c->o.group) {
            if (c->wrank == 0) DPEP_ERROR("-l and -y go together, and exclude -g");
            return DPEP_ERR_USAGE;
        }
        DPEP_TRY(perf_layout_comm(c, &group_comm));
        DPEP_CHECK_MPI(MPI_Comm_size(group_comm, &c->gsize));
        c->members = malloc(sizeof(int) * (size_t)c->gsize);
        if (!c->members) return DPEP_ERR_NOMEM;
        DPEP_CHECK_MPI(MPI_Allgather(&c->wrank, 1, MPI_INT, c->members, 1, MPI_INT, group_comm));
        c->group = c->members[0];
    }
    if (!c->members) c->gsize = c->o.group ? (int)c->o.group : c->wsize;
    if (c->wsize % c->gsize != 0) {
        if (c->wrank == 0)
            DPEP_ERROR("-g %d does not divide the %d ranks into equal groups", c->gsize, c->wsize);
        return DPEP_ERR_USAGE;
    }
    if (c->op == PERF_BCAST && c->o.root >= c->gsize) {
        if (c->wrank == 0) DPEP_ERROR("-r %lld: the group has %d ranks", (long long)c->o.root, c->gsize);
        return DPEP_ERR_USAGE;
    }
    if (!c->members) c->group = c->wrank / c->gsize;
    c->esize = dpep_comm_dtype_size(c->t);
    /* Reductions: sums of n values < range must stay exact (bf16: <= 256). */
    c->range = perf_op_reduces(c->op) ? (uint32_t)(256 / c->gsize) : 16u;
    if (c->range > 16) c->range = 16;
    if (c->range < 2) c->range = 2;
    if (perf_op_reduces(c->op) && c->t == DPEP_COMM_BF16 && (c->range - 1) * (uint32_t)c->gsize > 256
        && c->wrank == 0)
        DPEP_WARN("bf16 sums over %d ranks may exceed 256 and round: the check may report wrong "
                  "elements that are rounding", c->gsize);

    if (!c->members) DPEP_CHECK_MPI(MPI_Comm_split(MPI_COMM_WORLD, c->group, c->wrank, &group_comm));
    DPEP_CHECK_MPI_GOTO(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0,
                                            MPI_INFO_NULL, &node_comm), st, free_comms);
    DPEP_CHECK_MPI_GOTO(MPI_Comm_size(node_comm, &c->local_size), st, free_comms);
    c->cores = (int)sysconf(_SC_NPROCESSORS_ONLN);
    char name[32];
    snprintf(name, sizeof name, "perf_g%d", c->group);
    DPEP_TRY_GOTO(dpep_comm_create(group_comm, name, DPEP_COMM_MPI, c->o.timeout_s, &c->comm), st,
                  free_comms);
    c->grank = dpep_comm_rank(c->comm);

    /* Buffers for the largest message. */
    perf_shape big = perf_shape_of(c, c->o.max_bytes);
    if (big.count == 0) {
        if (c->wrank == 0)
            DPEP_ERROR("-e %lld bytes is less than one %s element per rank of the group (%d)",
                       (long long)c->o.max_bytes, dpep_comm_dtype_name(c->t), c->gsize);
        st = DPEP_ERR_USAGE;
        goto destroy_comm;
    }
    c->send_cap = big.send_bytes ? big.send_bytes : 1;
    c->recv_cap = big.recv_bytes;
    c->send = malloc(c->send_cap);
    c->recv = malloc(c->recv_cap);
    c->scounts = calloc((size_t)c->gsize * 4, sizeof(int64_t));
    if (!c->send || !c->recv || !c->scounts) {
        DPEP_ERROR("cannot allocate %zu + %zu bytes of buffers", c->send_cap, c->recv_cap);
        st = DPEP_ERR_NOMEM;
        goto free_bufs;
    }
    c->sdispls = c->scounts + c->gsize;
    c->rcounts = c->sdispls + c->gsize;
    c->rdispls = c->rcounts + c->gsize;
    memset(c->send, 0, c->send_cap); /* first touch before timing */
    memset(c->recv, 0, c->recv_cap);

    perf_memcpy mc = {0};
    int64_t mc_bytes = (int64_t)(big.send_bytes > big.recv_bytes ? big.send_bytes : big.recv_bytes);
    DPEP_TRY_GOTO(perf_memcpy_baseline(c, mc_bytes, &mc), st, free_bufs);

    char transport[128];
    perf_transport(transport, sizeof transport);
    bool oversub = c->local_size > c->cores;
    if (c->wrank == 0) {
        char host[64] = "?";
        gethostname(host, sizeof host - 1);
        printf("# dpep_comm_perf: op %s, type %s, backend %s, transport %s\n", perf_op_names[c->op],
               dpep_comm_dtype_name(c->t), dpep_comm_backend_name(DPEP_COMM_MPI), transport);
        printf("# ranks %d (%d group%s of %d %s ranks, all running at once), host %s: "
               "%d ranks on %d cores online%s\n",
               c->wsize, c->wsize / c->gsize, c->wsize / c->gsize == 1 ? "" : "s", c->gsize,
               c->members ? c->o.layout_group : "consecutive", host,
               c->local_size, c->cores,
               oversub ? " -- OVERSUBSCRIBED: ranks share cores, times include waiting for a core" : "");
        printf("# minBytes %lld maxBytes %lld step: %lldx warmup iters: %lld iters: %lld "
               "volume cap: %lld validation: %lld seed: %lld\n",
               (long long)c->o.min_bytes, (long long)c->o.max_bytes, (long long)c->o.step_factor,
               (long long)c->o.warmup, (long long)c->o.iters, (long long)c->o.volume,
               (long long)c->o.check, (long long)c->o.seed);
        printf("# size: %s; time: max over ranks of the mean per-iteration time; algbw = size/time; "
               "busbw = algbw x %.4f (n=%d)\n",
               c->op == PERF_ALLTOALLV     ? "bytes one rank sends (split evenly over the group)"
               : c->op == PERF_ALLGATHER   ? "bytes one rank receives (group x count)"
               : c->op == PERF_REDUCESCATTER ? "bytes one rank sends (group x recv count)"
                                           : "buffer bytes",
               perf_busbw_factor(c->op, c->gsize), c->gsize);
        printf("# memcpy baseline: every one of the %d ranks on the node memcpy()s %lld bytes "
               "(the largest message) at the same time;\n"
               "#   best of %d trials of %lld copies; GB/s = bytes copied / max-rank mean time per copy\n",
               c->local_size, (long long)mc.bytes, PERF_MEMCPY_TRIALS, (long long)mc.copies);
        printf("# memcpy %8.2f GB/s per rank (bytes / max-rank time; ranks' own rates %.2f..%.2f), "
               "%8.2f GB/s node total\n",
               mc.per_rank_GBps, mc.min_GBps, mc.max_GBps, mc.node_GBps);
        printf("# ratio = busbw / memcpy per-rank GB/s (fraction of the physical limit)\n#\n");
        printf("#%11s %12s %8s %6s %6s %10s %8s %8s %7s %7s %6s\n", "size", "count", "type", "redop",
               "root", "time", "algbw", "busbw", "#wrong", "ratio", "iters");
        printf("#%11s %12s %8s %6s %6s %10s %8s %8s %7s %7s %6s\n", "(B)", "(elements)", "", "", "",
               "(us)", "(GB/s)", "(GB/s)", "", "", "");
        fflush(stdout);
    }

    int64_t total_wrong = 0;
    double sum_busbw = 0;
    for (int64_t bytes = c->o.min_bytes; bytes <= c->o.max_bytes && nrows < PERF_MAX_ROWS;
         bytes *= c->o.step_factor) {
        perf_shape s = perf_shape_of(c, bytes);
        if (s.count == 0) continue;
        perf_row *r = &rows[nrows];
        r->bytes = s.bytes;
        r->count = s.count;
        r->wrong = -1;
        /* Correctness pass on fresh data, then the timed loop on the same buffers. */
        perf_prepare(c, &s, c->o.check != 0);
        if (c->o.check) {
            DPEP_TRY_GOTO(perf_run_once(c, &s), st, free_bufs);
            int64_t mine = perf_check(c, &s), sum = 0;
            DPEP_CHECK_MPI_GOTO(MPI_Allreduce(&mine, &sum, 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD),
                                st, free_bufs);
            if (mine)
                DPEP_WARN("size %lld: %lld wrong elements on rank %d", (long long)s.bytes,
                          (long long)mine, c->wrank);
            r->wrong = sum;
            total_wrong += sum;
        }
        int64_t iters = c->o.iters;
        if (c->o.volume > 0) {
            int64_t cap = c->o.volume / (s.bytes > 0 ? s.bytes : 1);
            if (cap < 2) cap = 2;
            if (cap < iters) iters = cap;
        }
        int64_t warm = c->o.warmup < iters ? c->o.warmup : iters;
        double t = 0;
        DPEP_TRY_GOTO(perf_time(c, &s, warm, iters, &t), st, free_bufs);
        r->iters = iters;
        r->time_us = t * 1e6;
        r->algbw = (double)s.bytes / t / 1e9;
        r->busbw = r->algbw * perf_busbw_factor(c->op, c->gsize);
        r->ratio = mc.per_rank_GBps > 0 ? r->busbw / mc.per_rank_GBps : 0;
        sum_busbw += r->busbw;
        if (c->wrank == 0) {
            char wrong[24];
            if (r->wrong < 0) snprintf(wrong, sizeof wrong, "N/A");
            else snprintf(wrong, sizeof wrong, "%lld", (long long)r->wrong);
            printf("%12lld %12lld %8s %6s %6d %10.1f %8.3f %8.3f %7s %7.3f %6lld\n",
                   (long long)r->bytes, (long long)r->count, dpep_comm_dtype_name(c->t),
                   perf_op_reduces(c->op) ? "sum" : "none",
                   c->op == PERF_BCAST ? (int)c->o.root : -1, r->time_us, r->algbw, r->busbw,
                   wrong, r->ratio, (long long)r->iters);
            fflush(stdout);
        }
        nrows++;
        if (bytes > INT64_MAX / c->o.step_factor) break;
    }
    double avg = nrows ? sum_busbw / nrows : 0;
    if (c->wrank == 0) {
        printf("# Out of bounds values : %lld %s\n", (long long)total_wrong,
               !c->o.check ? "(not checked)" : total_wrong ? "FAILED" : "OK");
        printf("# Avg bus bandwidth    : %.4f GB/s\n", avg);
        printf("# Avg ratio to memcpy  : %.4f\n#\n", mc.per_rank_GBps > 0 ? avg / mc.per_rank_GBps : 0);
        fflush(stdout);
        if (c->o.json[0])
            DPEP_TRY_GOTO(perf_write_json(c, transport, &mc, rows, nrows, avg, total_wrong), st,
                          free_bufs);
    }
    *any_wrong = total_wrong != 0;

free_bufs:
    free(c->scounts);
    free(c->recv);
    free(c->send);
destroy_comm:
    dpep_comm_destroy(c->comm);
    c->comm = NULL;
free_comms:
    if (node_comm != MPI_COMM_NULL) MPI_Comm_free(&node_comm);
    if (group_comm != MPI_COMM_NULL) MPI_Comm_free(&group_comm);
    free(c->members);
    c->members = NULL;
    return st;
}

int main(int argc, char **argv) {
    int provided = 0;
    if (MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "dpep_comm_perf: MPI_Init_thread failed\n");
        return 1;
    }
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    perf_ctx c;
    memset(&c, 0, sizeof c);
    MPI_Comm_rank(MPI_COMM_WORLD, &c.wrank);
    MPI_Comm_size(MPI_COMM_WORLD, &c.wsize);
    dpep_log_init();
    dpep_log_set_rank(c.wrank);

    char err[256];
    dpep_status st = perf_parse_args(argc, argv, &c.o, err, sizeof err);
    if (st == DPEP_OK && !perf_parse_op(c.o.op, &c.op)) {
        snprintf(err, sizeof err, "-o %s: unknown op (alltoallv|allgather|reducescatter|allreduce|bcast)",
                 c.o.op);
        st = DPEP_ERR_USAGE;
    }
    if (st == DPEP_OK && !perf_parse_dtype(c.o.dtype, &c.t)) {
        snprintf(err, sizeof err, "-d %s: unknown dtype (float|bfloat16|half|int8|int32|int64)",
                 c.o.dtype);
        st = DPEP_ERR_USAGE;
    }
    bool any_wrong = false;
    if (st != DPEP_OK) {
        if (c.wrank == 0) {
            if (err[0]) fprintf(stderr, "dpep_comm_perf: %s\n", err);
            perf_usage(err[0] ? stderr : stdout);
        }
        if (!err[0]) st = DPEP_OK; /* -h */
    } else {
        st = perf_main(&c, &any_wrong);
    }
    MPI_Finalize();
    if (st != DPEP_OK) return dpep_status_exit_code(st);
    return any_wrong ? 1 : 0;
}
