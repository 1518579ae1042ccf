/* attn_internal.h — private to attn/: the KV pool and context structs and the
 * per-device backend ops tables (mla_cpu.c fills the CPU one; a mla_cuda.cu
 * would fill the CUDA one, listed in attn.c's table). Not installed; other
 * modules include dpep_attn.h only. */
#ifndef DPEP_ATTN_INTERNAL_H
#define DPEP_ATTN_INTERNAL_H

#include "dpep_attn.h"

struct dpep_attn_kv {
    dpep_device dev;         /* where the pool lives; its allocator           */
    int n_layers, page_size;
    int row;                 /* floats per token per layer: kv_lora + rope   */
    int kv_lora, rope;
    int64_t n_pages;         /* pages in the pool                            */
    int64_t max_pages_seq;   /* page-table entries per slot                  */
    int max_seqs;
    int64_t max_seq_len;
    float *pool;             /* (n_layers, n_pages, page_size, row) in device
                                memory of `dev`, owned                        */
    void *meta;              /* host block holding the arrays below, owned   */
    int32_t *free_list;      /* (n_pages) stack of free page ids             */
    int64_t n_free;
    int32_t *refs;           /* (n_pages) page tables holding the page, 0: free */
    int32_t *pages;          /* (max_seqs, max_pages_seq) page tables        */
    int64_t *n_seq_pages;    /* (max_seqs) pages held, -1: slot closed       */
    int64_t *len;            /* (max_seqs) tokens written                    */
};

/* Cache row of (slot, layer, pos); pos must be below the slot's capacity. */
static inline float *dpep_attn_kv_row_(const dpep_attn_kv *kv, int slot, int layer, int64_t pos)
{
    int64_t page = kv->pages[(int64_t)slot * kv->max_pages_seq + pos / kv->page_size];
    return kv->pool + (((int64_t)layer * kv->n_pages + page) * kv->page_size + pos % kv->page_size) *
                          kv->row;
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
    float *s;       /* per thread: (H, max_ctx) decode or (T, BLOCK) prefill scores */
    size_t s_len;   /* floats per thread in s                                        */
    float *e;       /* per thread: (BLOCK, nope + rope + v)  k_nope | k_pe | v of a block, one head */
    float *cblk;    /* (BLOCK, kv_lora + rope)     gathered cache rows of a block    */
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
} dpep_attn_ops;

struct dpep_attn {
    dpep_device dev;           /* where the scratch lives and the kernels run */
    const dpep_attn_ops *ops;  /* the device's table                          */
    dpep_attn_dims d;
    int max_tokens;
    int64_t max_ctx;
    int n_threads;             /* CPU: OpenMP threads at create (1 without)   */
    bool blas_pin;             /* CPU: BLAS must be held at one thread inside
                                  the forward (see mla_cpu.c, thread plan)    */
    dpep_attn_decode decode;
    dpep_comm *tp;
    float *inv_freq;           /* (rope/2), host */
    void *host;                /* backend's host scratch (CUDA: staging of the
                                  step's page tables), malloc'ed by its init,
                                  freed by dpep_attn_destroy; NULL on the CPU */
    dpep_attn_scratch sc;
    void *arena;               /* owns every scratch buffer (device memory)   */
    size_t arena_bytes;
    dpep_attn_timing timing;
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
#ifdef __cplusplus
extern "C" const dpep_attn_ops dpep_attn_cuda_ops; /* mla_cuda.cu */
#else
extern const dpep_attn_ops dpep_attn_cuda_ops; /* mla_cuda.cu */
#endif
#endif

#endif /* DPEP_ATTN_INTERNAL_H */
