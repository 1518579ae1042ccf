/* attn_internal.h — private to attn/: the KV pool and context structs and the
 * per-device backend ops tables (mla_cpu.c fills the CPU one; a mla_cuda.cu
 * would fill the CUDA one, listed in attn.c's table). Not installed; other
 * modules include dpep_attn.h only. */
#ifndef DPEP_ATTN_INTERNAL_H
#define DPEP_ATTN_INTERNAL_H

#include <string.h>

#include "dpep_attn.h"

struct dpep_attn_kv {
    dpep_device dev;         /* where the pool lives; its allocator           */
    int n_layers, page_size;
    int row;                 /* elements per token per layer: kv_lora + rope */
    dpep_wtype dtype;        /* DPEP_WT_F32 or DPEP_WT_BF16                  */
    size_t esz;              /* bytes per element (4 or 2)                   */
    int kv_lora, rope;
    int64_t n_pages;         /* pages in the pool                            */
    int64_t max_pages_seq;   /* page-table entries per slot                  */
    int max_seqs;            /* slots in all: user_slots + the extra ones    */
    int user_slots;          /* slots dpep_attn_kv_seq_open hands out        */
    int64_t max_seq_len;
    void *pool;              /* (n_layers, n_pages, page_size, row) elements of
                                `dtype` in device memory of `dev`, owned      */
    void *meta;              /* host block holding the arrays below, owned   */
    uint16_t *wrow;          /* (row) host staging of dpep_attn_kv_write's
                                BF16 rows, in meta                            */
    int32_t *free_list;      /* (n_pages) stack of free page ids             */
    int64_t n_free;
    int32_t *refs;           /* (n_pages) page tables holding the page, 0: free */
    int32_t *pages;          /* (max_seqs, max_pages_seq) page tables        */
    int64_t *n_seq_pages;    /* (max_seqs) pages held, -1: slot closed       */
    int64_t *len;            /* (max_seqs) tokens written                    */
};

/* Rows of (layer, physical page `page`, offset `off`) on: their address in
 * the pool (row elements of kv->dtype each). */
static inline void *dpep_attn_kv_at_(const dpep_attn_kv *kv, int layer, int64_t page, int64_t off)
{
    return (char *)kv->pool +
           ((((int64_t)layer * kv->n_pages + page) * kv->page_size + off) * kv->row) * (int64_t)kv->esz;
}
/* One row (kv->row floats) into host-addressable dst in the pool's dtype:
 * BF16 rounded to nearest even (what every writer of the pool does), F32
 * copied. */
static inline void dpep_attn_kv_store_(const dpep_attn_kv *kv, void *dst, const float *src)
{
    if (kv->dtype == DPEP_WT_BF16) {
        uint16_t *h = (uint16_t *)dst;
        for (int c = 0; c < kv->row; c++) h[c] = dpep_f32_to_bf16(src[c]);
    } else {
        memcpy(dst, src, sizeof(float) * (size_t)kv->row);
    }
}
/* Cache row of (slot, layer, pos); pos must be below the slot's capacity. */
static inline void *dpep_attn_kv_row_(const dpep_attn_kv *kv, int slot, int layer, int64_t pos)
{
    int64_t page = kv->pages[(int64_t)slot * kv->max_pages_seq + pos / kv->page_size];
    return dpep_attn_kv_at_(kv, layer, page, pos % kv->page_size);
}

/* Model dimensions the kernels use; H = this rank's heads. */
typedef struct dpep_attn_dims {
    int hidden, H, head0;
    int q_lora, kv_lora, nope, rope, v;
    int qk;                  /* nope + rope                                 */
    int row;                 /* kv_lora + rope                              */
    double eps;              /* q_a / kv_a RMSNorm eps (DPEP_ATTN_LATENT_NORM_EPS) */
    float scale;             /* softmax scale                               */
    float rope_factor;       /* cos/sin factor                              */
} dpep_attn_dims;

/* eps of the q_a / kv_a RMSNorms: transformers builds q_a_layernorm and
 * kv_a_layernorm with DeepseekV3RMSNorm's default eps (1e-6), not the
 * config's rms_norm_eps. */
#define DPEP_ATTN_LATENT_NORM_EPS 1e-6

/* Decode tokens are processed in groups of this many (absorbed path). */
#define DPEP_ATTN_DEC_GROUP 32
/* Context tokens per block of the prefill (naive) path. */
#define DPEP_ATTN_BLOCK 256

/* ------------------------------------------------------------------------ */
/* CPU decode core (mla_core.c: the portable table and the choice;           */
/* mla_core_x86.c: AVX2 and AVX-512). One block of the absorbed decode's     */
/* online softmax over nt cache rows kv (nt, R) float32 (R = L + rope, rows  */
/* R apart), for hn heads' absorbed queries q (hn, R):                       */
/*   s[h, t] = scale q[h] . kv[t]            into S (hn, nt), then replaced   */
/*   m'[h] = max(m[h], max_t s[h, t])          by p = e^(s - m')             */
/*   O[h] = O[h] e^(m - m') + sum_t p[h, t] kv[t, 0:L]     O (hn, L)          */
/*   l[h] = l[h] e^(m - m') + sum_t p[h, t]                                   */
/* With first != 0 the block is the run's first: O, m, l are not read (as if */
/* O = 0, l = 0, m = -inf). mla_cpu.c calls it per run of contiguous rows   */
/* (at most DPEP_ATTN_BLOCK) of a sequence's pages; no allocation, no        */
/* threads (its callers split the work). Tables differ in their order of    */
/* summation and in e^x (the vector ones: a polynomial, ~1 ulp); within a   */
/* vector table a head's result does not depend on hn or on where its tile  */
/* fell (the portable table leaves that to BLAS). tests/attn/               */
/* test_attn_core.c checks each table against a double reference, and that */
/* independence.                                                             */
/* ------------------------------------------------------------------------ */
typedef struct dpep_attn_core_cpu {
    const char *name;
    void (*block)(int hn, int R, int L, float scale, const float *q, const float *kv, int nt,
                  float *S, float *O, float *m, float *l, int first);
    /* > 0: above this many heads the choice (not a forced table) takes the
     * portable one (BLAS ran faster there; bench/RESULTS.md) */
    int max_heads;
} dpep_attn_core_cpu;

extern const dpep_attn_core_cpu dpep_attn_core_generic;
#if defined(DPEP_ATTN_HAVE_X86)
extern const dpep_attn_core_cpu dpep_attn_core_avx2, dpep_attn_core_avx512;
#endif
/* The tables this CPU runs, portable first, widest last (at most cap). */
int dpep_attn_core_cpu_list(const dpep_attn_core_cpu **out, int cap);
/* The table in use: the widest this CPU runs, or the one forced. */
const dpep_attn_core_cpu *dpep_attn_core_cpu_get(void);
/* The table for blocks of hn heads: the forced one, else the widest unless
 * hn exceeds its max_heads (then the portable one). */
const dpep_attn_core_cpu *dpep_attn_core_cpu_for(int hn);

/* Scratch of the CPU backend, sized at create time for max_tokens / max_ctx
 * (mla_cpu.c carves it). */
typedef struct dpep_attn_scratch {
    float *qa;      /* (T, q_lora)                 q_a output, normalized in place   */
    float *q;       /* (T, H, nope + rope)         queries, q_pe roped in place      */
    float *kva;     /* (T, kv_lora + rope)         c_kv normalized | k_pe roped      */
    float *heads;   /* (T, H, v)                   attention output (o_proj input)   */
    float *qn;      /* (G, H, nope)                gathered q_nope of decode tokens  */
    float *qt;      /* (G, H, kv_lora + rope)      absorbed queries                  */
    float *ot;      /* (G, H, kv_lora)             absorbed outputs (latent)         */
    float *ov;      /* (G, H, v)                   absorbed outputs (per head)       */
    int *tok;       /* (G)                         batch index of each decode token  */
    float *s;       /* per thread: (H, BLOCK) decode or (T, BLOCK) prefill scores */
    size_t s_len;   /* floats per thread in s                                        */
    float *e;       /* per thread: (BLOCK, nope + rope + v)  k_nope | k_pe | v of a block, one head */
    float *cblk;    /* (BLOCK, kv_lora + rope)     gathered cache rows of a block    */
    float *kvw;     /* per thread: (BLOCK, kv_lora + rope) a BF16 pool's rows widened
                       for the decode products (unused with a float32 pool)      */
    float *m, *l;   /* (T, H)                      online softmax max and sum        */
    float *op;      /* per thread: (H, kv_lora)    split-KV decode partial outputs    */
    float *mp, *lp; /* per thread: (H)             split-KV decode partial max / sum  */
    float *cosv, *sinv; /* (T, rope/2)             per-token cos/sin                 */
    int *pos;       /* (T)                         position of each token            */
} dpep_attn_scratch;

/* The kernels of one device kind. attn.c's table maps each kind to its ops
 * (dpep_attn_ops_for); a kind without an entry cannot create a context or a
 * pool. Buffers handed to the ops (scratch, the KV pool, weights) live in
 * that device's memory. A new backend = one file filling this struct + one
 * entry in the table in attn.c. */
typedef struct dpep_attn_ops {
    const char *name;
    /* Optional, before anything is allocated on `dev` (both creates): whether
     * this process can use the device at all (CUDA: a visible GPU with that
     * ordinal). Logs why not and returns DPEP_ERR_UNSUPPORTED. */
    dpep_status (*usable)(const dpep_device *dev);
    /* Once at create, before the scratch is carved: the backend's decisions
     * (CPU: thread count for the per-thread scratch, the BLAS thread plan). */
    dpep_status (*init)(dpep_attn *a);
    /* Carves the backend's scratch for a->max_tokens / a->max_ctx out of
     * `ar` into a->sc. Called twice: a counting pass (NULL base, every
     * pointer NULL), then on the block allocated on the device. */
    void (*carve_scratch)(dpep_attn *a, dpep_arena *ar);
    /* Local-head attention for the batch: projections, cache writes and the
     * o_proj partial sum into out (T, hidden). */
    dpep_status (*forward)(dpep_attn *a, const dpep_layer_w *w, int layer, dpep_attn_kv *kv,
                           const dpep_attn_seq *seq, int n_seq, int T, const float *x,
                           float *out);
    /* dpep_attn_stage for a checked batch of T tokens (NULL: nothing to
     * stage, shape 0): plans and copies the step's data to the device; the
     * forwards that follow only launch, until dpep_attn_unstage. */
    dpep_status (*stage)(dpep_attn *a, dpep_attn_kv *kv, const dpep_attn_seq *seq, int n_seq,
                         int T, int *shape);
} dpep_attn_ops;

struct dpep_attn {
    dpep_device dev;           /* where the scratch lives and the kernels run */
    const dpep_attn_ops *ops;  /* the device's table                          */
    dpep_attn_dims d;
    int max_tokens;
    int64_t max_ctx;
    int n_threads;             /* CPU: OpenMP threads at create (1 without)   */
    dpep_attn_decode decode;
    dpep_comm *tp;
    float *inv_freq;           /* (rope/2), host */
    void *host;                /* backend's host scratch (CUDA: staging of the
                                  step's page tables), malloc'ed by its init,
                                  freed by dpep_attn_destroy; NULL on the CPU */
    dpep_attn_scratch sc;
    /* CUDA backend only (mla_cuda.cu; set by its init, unused on the CPU): */
    int cu_sms;                /* multiprocessors of the device (split-KV plan) */
    int64_t cu_part_cap;       /* split-KV partial tiles the scratch holds      */
    int cu_simple;             /* 1: the reference attention kernel (tests)     */
    int cu_force_split;        /* > 0: this many key chunks per tile (tests)    */
    int cu_staged;             /* 1: dpep_attn_stage's plan holds (forwards
                                  only launch); 0: each forward plans      */
    int cu_T, cu_nseq;         /* the planned step's tokens and sequences      */
    int cu_tiles, cu_split;    /* its core tiles and split-KV chunk count      */
    int64_t cu_max_kv;         /* its longest context                          */
    void *arena;               /* owns every scratch buffer (device memory)   */
    size_t arena_bytes;
    dpep_attn_timing timing;
    const dpep_attn_lend *lend; /* CPU: where a prefill core may go (borrowed) */
};

/* The ops of a device kind; NULL when this build has none. */
const dpep_attn_ops *dpep_attn_ops_for(dpep_device_kind kind);
/* The device a params struct names (NULL: the CPU) and its ops; logs and
 * returns DPEP_ERR_UNSUPPORTED naming the device when this build has no
 * attention backend for it. `what` prefixes the message. */
dpep_status dpep_attn_device_(const dpep_device *given, const char *what, dpep_device *dev,
                              const dpep_attn_ops **ops);
/* Whether positions [pos0, pos0 + n) of the slot lie in pages only this slot
 * holds (a shared page is read-only). The range must be reserved. */
bool dpep_attn_kv_private_(const dpep_attn_kv *kv, int slot, int64_t pos0, int64_t n);

extern const dpep_attn_ops dpep_attn_cpu_ops;

#ifdef DPEP_HAVE_CUDA
/* ------------------------------------------------------------------------ */
/* The CUDA attention core (mla_cuda.cu), absorbed form, FlashMLA's shape:  */
/* queries are already absorbed, q~ = [W_UK^T q_nope | q_pe] (L + rope wide) */
/* per (token, head); keys are the layer's latent rows [c_kv | k_pe] read    */
/* from the pages, values their first L columns. The forward calls it       */
/* between two batched GEMMs (W_UK, W_UV); tests/attn/test_attn_cuda.c and   */
/* bench/mla_decode_cuda.cu call it directly. Device pointers throughout;    */
/* no allocation, no host sync (graph-capturable on a capturing stream).    */
/*                                                                           */
/* Work: the rows (token, head) of one sequence, numbered t * H + h over    */
/* the batch (q~ and o~ are (T, H, .) so a sequence's rows are contiguous), */
/* are cut into tiles of dpep_mla_cu_heads_per_tile(H) rows; a decode token  */
/* is one or more tiles of its heads, a prefill tile may span tokens (each  */
/* row keeps its own causal limit). Each tile's keys [0, kv_end) are cut    */
/* into n_split chunks (split-KV), one block per (tile, chunk), then a      */
/* combine pass when n_split > 1.                                           */
/* ------------------------------------------------------------------------ */
#define DPEP_MLA_CU_TILE_INTS 4  /* per tile: row0, nrows, kv_end, 0           */
#define DPEP_MLA_CU_MAX_SPLIT 64 /* key chunks per tile at most               */

typedef struct dpep_mla_core_args {
    int n_tokens;          /* T; 0 launches nothing                           */
    int H, L, rope;        /* heads, latent (= value) width, rope width       */
    float scale;           /* softmax scale                                   */
    int page_size;
    const float *q;        /* (T, H, L + rope) absorbed queries               */
    const void *pool;      /* (n_pages, page_size, L + rope) this layer's pages,
                              elements of kv_type                             */
    dpep_wtype kv_type;    /* DPEP_WT_F32 (0) or DPEP_WT_BF16 (widened to fp32
                              as read)                                        */
    const int *pages;      /* page entries of the batch's sequences           */
    const int *tok_poff;   /* (T) where the token's sequence's entries start  */
    const int *tok_pos;    /* (T) position: the token attends keys [0, pos]   */
    const int *tiles;      /* (n_tiles, DPEP_MLA_CU_TILE_INTS), dpep_mla_cu_plan */
    int n_tiles;
    int n_split;           /* key chunks per tile, 1..DPEP_MLA_CU_MAX_SPLIT    */
    float *part_o;         /* (part_cap, HT, L) partial outputs (n_split > 1)  */
    float *part_ml;        /* (part_cap, HT, 2) partial max and sum            */
    int64_t part_cap;      /* tile-chunks the partial buffers hold: n_tiles *
                              n_split must not exceed it when n_split > 1     */
    float *out;            /* (T, H, L) o~ = softmax(s) c_kv, normalized       */
    int simple;            /* 1: the reference kernel (one block per token and
                              head; tiles, split and partials unused)         */
    int tc_off;            /* 1: a BF16 pool at L 512 / rope 64 takes the fp32
                              tiled kernel (widening its loads) instead of the
                              tensor-core one (tests, benches)                */
    void *stream;          /* cudaStream_t; NULL: the thread's default stream */
} dpep_mla_core_args;

#ifdef __cplusplus
extern "C" {
#endif
/* Rows per tile for H heads (16 or 32). */
int dpep_mla_cu_heads_per_tile(int H);
/* Whether the tiled kernels take these widths (L % 4 == 0, rope % 4 == 0,
 * L <= 512, L + rope <= 576); otherwise the reference kernel runs. */
int dpep_mla_cu_fast_ok(int L, int rope);
/* Appends the tiles of one sequence (its tokens are rows [tok0 * H, (tok0 +
 * n_new) * H) of the batch, at positions pos0..) to `tiles` (host); returns
 * how many (ceil(n_new * H / HT), at most n_new * ceil(H / HT)). */
int dpep_mla_cu_plan(int H, int tok0, int n_new, int64_t pos0, int *tiles);
/* Whether a pool of kv_type at these widths takes the tensor-core kernel
 * (BF16, L 512, rope 64: DeepSeek V2/V3) on a device of compute capability
 * 8.0 or later, unless dpep_mla_core_args.tc_off. Its results carry BF16
 * rounding of the queries and probabilities (op test bound 1e-2). */
int dpep_mla_cu_tc_ok(int L, int rope, dpep_wtype kv_type);
/* Key chunks per tile (see mla_cuda.cu, "Split-KV"): from the tile count, the
 * longest kv_end, the SM count and the partial capacity. */
int dpep_mla_cu_splits(int H, int n_tiles, int64_t max_kv, int n_sm, int64_t part_cap);
/* Multiprocessors of CUDA device `dev` (0 when unknown). */
int dpep_mla_cu_sm_count(int dev);
/* The core on the current device, enqueued on c->stream. DPEP_ERR_INVALID
 * for arguments out of range (message), DPEP_ERR_CUDA for a failed launch. */
dpep_status dpep_mla_cu_core(const dpep_mla_core_args *c);
/* Tests: the forward's core through the reference kernel (simple = 1) and a
 * fixed split count (force_split > 0; 0: the heuristic). */
void dpep_attn_cuda_debug(dpep_attn *a, int simple, int force_split);
#ifdef __cplusplus
}
#endif
#endif /* DPEP_HAVE_CUDA */

#ifdef DPEP_HAVE_CUDA
#ifdef __cplusplus
extern "C" const dpep_attn_ops dpep_attn_cuda_ops; /* mla_cuda.cu */
#else
extern const dpep_attn_ops dpep_attn_cuda_ops; /* mla_cuda.cu */
#endif
#endif

#endif /* DPEP_ATTN_INTERNAL_H */
