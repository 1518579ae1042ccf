/* dpep_attn.h — public header of the attn module: MLA attention (DeepSeek
 * V2/V3) over a paged latent KV cache: q/kv projections, YaRN RoPE, causal
 * prefill (with a cached prefix), absorbed decode, attention-TP.
 *
 * Math: ../shared/REFERENCE.md §2. Compute is fp32 (attn/mla_cpu.c on the
 * CPU); the latent KV cache holds fp32 or BF16 rows (dpep_attn_kv_params).
 *
 * Devices: both create calls take a `device` (NULL: the CPU) and pick that
 * device kind's kernels from the ops table in attn/attn.c (CPU: mla_cpu.c;
 * CUDA, when built with it: mla_cuda.cu, a first fp32 version not yet run on a
 * GPU). A kind this build has no kernels for, or a GPU that is not usable, is
 * refused with DPEP_ERR_UNSUPPORTED. The KV pool
 * and the scratch are allocated with that device's allocator (dpep_device_alloc:
 * zeroed), so they live where the kernels run; page tables and the other
 * bookkeeping stay in host memory. A context and a cache used together must
 * be on the same device.
 *
 * Ownership: dpep_attn_kv_create / dpep_attn_create allocate everything they
 * will ever need (the pool, page tables, scratch for max_tokens); nothing in
 * dpep_attn_forward allocates. Pointers passed in stay owned by the caller;
 * `*out` is written only on DPEP_OK. A dpep_attn and a dpep_attn_kv are used
 * by one thread at a time (the forward uses OpenMP and BLAS threads inside).
 *
 * Threads: the counts are the rank's plan (runtime/world, once at start).
 * The CPU backend splits its work over the OpenMP threads with one-thread
 * sgemm calls inside; it never changes a count, except with a
 * pthreads-built OpenBLAS, which ignores OpenMP regions: that one is held at
 * one thread for the duration of each forward and restored on return
 * (attn/README.md, "Threading"). */
#ifndef DPEP_ATTN_H
#define DPEP_ATTN_H

#include <stddef.h>
#include <stdint.h>

#include "dpep_comm.h"
#include "dpep_linear.h"
#include "dpep_model.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* RoPE / YaRN                                                               */
/* ------------------------------------------------------------------------ */
/* inv_freq[qk_rope/2] as transformers computes it (YaRN blend when m->yarn),
 * the cos/sin factor (YaRN attention_scaling: mscale(f, mscale) /
 * mscale(f, mscale_all_dim), 1 without YaRN) and the softmax scale
 * (qk_head_dim^-0.5 * mscale(f, mscale_all_dim)^2). Any output may be NULL.
 * DPEP_ERR_INVALID when qk_rope is odd or not positive. */
dpep_status dpep_attn_rope_params(const dpep_model_config *m, float *inv_freq,
                                  double *cos_sin_factor, double *softmax_scale);

/* ------------------------------------------------------------------------ */
/* Paged latent KV cache: one pool per rank.                                 */
/* Per token per layer it holds kv_lora_rank + qk_rope elements: c_kv after  */
/* its RMSNorm, then k_pe after RoPE, as float32 or BF16 (the pool's dtype,  */
/* SGLang's --kv-cache-dtype: a BF16 row is the float32 row rounded to       */
/* nearest even when written; attention reads it widened to float32, so     */
/* every later read sees the rounded values). The pool is layer-major:       */
/*   pool[layer][page][page_size][kv_lora + rope]                            */
/* so consecutive pages of one layer are contiguous. Each sequence (a cache  */
/* slot) has a page table; pages are taken from a free list. Every page has  */
/* a reference count: the page tables holding it. A page can sit in several  */
/* (dpep_attn_kv_seq_share: a shared prompt prefix); it is read-only while   */
/* shared and goes back to the free list when its last holder closes.        */
/* ------------------------------------------------------------------------ */
typedef struct dpep_attn_kv dpep_attn_kv; /* opaque */

typedef struct dpep_attn_kv_params {
    int n_layers;          /* layers held (m->n_layers for the whole model)  */
    int page_size;         /* tokens per page, >= 1                          */
    size_t budget_bytes;   /* pool size: floor(budget / page bytes) pages    */
    int max_seqs;          /* sequence slots (page tables)                   */
    int64_t max_seq_len;   /* tokens per sequence; 0: m->max_pos             */
    const dpep_device *device; /* where the pool lives; NULL: the CPU        */
    dpep_wtype dtype;      /* element type: DPEP_WT_F32 (0, the default) or
                              DPEP_WT_BF16 (half the bytes); others refused */
    int extra_slots;       /* slots past max_seqs that dpep_attn_kv_seq_open
                              never hands out: the owner's own (the engine's
                              padding rows), dpep_attn_kv_seq_open_extra   */
} dpep_attn_kv_params;

/* DPEP_ERR_INVALID for bad parameters (message names the field),
 * DPEP_ERR_NOMEM when the budget holds not one page or an allocation fails,
 * DPEP_ERR_UNSUPPORTED for a device kind without attention kernels. */
dpep_status dpep_attn_kv_create(const dpep_model_config *m, const dpep_attn_kv_params *p,
                                dpep_attn_kv **out);
void dpep_attn_kv_destroy(dpep_attn_kv *kv);

/* Bytes one token takes over all layers held (in the pool's dtype). */
size_t dpep_attn_kv_bytes_per_token(const dpep_attn_kv *kv);
/* The pool's element type (DPEP_WT_F32 or DPEP_WT_BF16). */
dpep_wtype dpep_attn_kv_dtype(const dpep_attn_kv *kv);
/* Tokens per page. */
int dpep_attn_kv_page_size(const dpep_attn_kv *kv);
/* Tokens the pool holds in all (pages * page_size) and still free. */
int64_t dpep_attn_kv_capacity_tokens(const dpep_attn_kv *kv);
int64_t dpep_attn_kv_free_tokens(const dpep_attn_kv *kv);
/* Bytes of the pool allocation. */
size_t dpep_attn_kv_pool_bytes(const dpep_attn_kv *kv);

/* Opens a sequence slot with no pages. DPEP_ERR_NOMEM when every slot is
 * in use. */
dpep_status dpep_attn_kv_seq_open(dpep_attn_kv *kv, int *slot);
/* Opens extra slot i (0 <= i < extra_slots; its id is max_seqs + i), which
 * dpep_attn_kv_seq_open never gives out. DPEP_ERR_INVALID when i is out of
 * range or the slot is open. */
dpep_status dpep_attn_kv_seq_open_extra(dpep_attn_kv *kv, int i, int *slot);
/* Makes sure the slot has pages for `n_tokens` tokens in all (extend; never
 * shrinks). DPEP_ERR_NOMEM when the pool lacks the pages — nothing is taken
 * then, so a scheduler can make the request wait; DPEP_ERR_INVALID beyond
 * max_seq_len or for a closed slot. */
dpep_status dpep_attn_kv_seq_reserve(dpep_attn_kv *kv, int slot, int64_t n_tokens);
/* Closes the slot: drops its reference to each of its pages; a page no page
 * table holds any more goes back to the pool (free tokens grow by those
 * pages only). DPEP_ERR_INVALID for a slot that is not open (double close). */
dpep_status dpep_attn_kv_seq_close(dpep_attn_kv *kv, int slot);
/* Puts the pages holding tokens [0, n_tokens) of slot `src` at the start of
 * the page table of slot `dst` (one more reference each; nothing is copied
 * and no free page is taken): dst then holds that prefix as cached, with
 * length n_tokens, and reserves and computes its own tokens after it.
 * n_tokens must be whole pages (a multiple of page_size) already written in
 * src; dst must be open with no pages yet. Shared pages are read-only: a
 * forward or kv_write touching them fails (in either slot) until only one
 * holder is left. DPEP_ERR_INVALID otherwise. */
dpep_status dpep_attn_kv_seq_share(dpep_attn_kv *kv, int dst, int src, int64_t n_tokens);
/* Pages by id, for a prefix cache that holds pages beyond any slot (the
 * scheduler's radix tree): the slot's page ids (up to max; returns how many,
 * -1 for a closed slot); adopt: put held pages at the start of an open, empty
 * slot (one more reference each; it then holds n * page_size cached tokens);
 * retain / release: one more / one less reference on a held page (a page
 * whose last reference goes returns to the pool). Shared pages are
 * read-only, as with dpep_attn_kv_seq_share. */
int64_t dpep_attn_kv_seq_pages(const dpep_attn_kv *kv, int slot, int32_t *pages, int64_t max);
dpep_status dpep_attn_kv_seq_adopt(dpep_attn_kv *kv, int slot, const int32_t *pages, int64_t n);
void dpep_attn_kv_page_retain(dpep_attn_kv *kv, int32_t page);
void dpep_attn_kv_page_release(dpep_attn_kv *kv, int32_t page);
/* Reference count of the page holding token `pos` of the slot (the page
 * tables holding it); -1 for a closed slot or pos outside its pages. */
int dpep_attn_kv_page_refs(const dpep_attn_kv *kv, int slot, int64_t pos);
/* Tokens of the slot written by forward calls (pos0 + n_new of the last
 * call); -1 for a closed slot. */
int64_t dpep_attn_kv_seq_len(const dpep_attn_kv *kv, int slot);
/* Tokens the slot has pages for. */
int64_t dpep_attn_kv_seq_capacity(const dpep_attn_kv *kv, int slot);
/* Read access to the cache row of (slot, layer, pos): kv_lora + rope
 * elements of the pool's dtype (dpep_attn_kv_dtype) in the pool's device
 * memory, NULL when not reserved. For tests and debugging. */
const void *dpep_attn_kv_row(const dpep_attn_kv *kv, int slot, int layer, int64_t pos);

/* Writes n rows (kv_lora + rope floats each: normalized c_kv, roped k_pe)
 * at positions pos0 .. pos0+n-1 of (slot, layer), e.g. to import a prefix
 * computed elsewhere or to fill a cache in a benchmark (rows are host memory,
 * rounded to the pool's dtype as the forward rounds its own rows, copied to
 * the pool's device). pos0 must not exceed the slot's length, the rows must
 * not fall in a shared page; the length becomes max(length, pos0 + n). */
dpep_status dpep_attn_kv_write(dpep_attn_kv *kv, int slot, int layer, int64_t pos0, int64_t n,
                               const float *rows);

/* KV bytes one rank of layout `l` holds when its instance serves `tokens`
 * tokens in all: with DP attention each attention-DP group caches only its
 * own requests (tokens / attn_dp); attention-TP ranks of a group duplicate
 * the latent cache (it has one head shared by all heads). fp32 unless
 * elem_bytes says otherwise (2 for BF16). */
double dpep_attn_kv_rank_bytes(const dpep_model_config *m, const dpep_layout *l, int64_t tokens,
                               double elem_bytes);

/* ------------------------------------------------------------------------ */
/* Attention context                                                          */
/* ------------------------------------------------------------------------ */
typedef struct dpep_attn dpep_attn; /* opaque */

typedef enum dpep_attn_decode {
    DPEP_ATTN_DECODE_ABSORBED = 0, /* 1-token sequences: q~ = W_UK^T q_nope,
                                      scores on the latent cache, o = W_UV o~ */
    DPEP_ATTN_DECODE_NAIVE,        /* every sequence through the prefill path
                                      (expands k_nope/v from c_kv)             */
} dpep_attn_decode;

typedef struct dpep_attn_params {
    int head0, n_heads;     /* this rank's heads (dpep_layer_w head0/n_heads) */
    int max_tokens;         /* new tokens per forward call, over all seqs     */
    int64_t max_ctx;        /* longest context (cached + new) of one sequence */
    dpep_attn_decode decode;
    dpep_comm *tp;          /* attention-TP group: o_proj partials are summed
                               over it; NULL (or size 1) for no TP            */
    const dpep_device *device; /* whose kernels run and where the scratch
                               lives; NULL: the CPU. The cache passed to the
                               forward must be on the same device.           */
} dpep_attn_params;

/* DPEP_ERR_INVALID for bad parameters, DPEP_ERR_NOMEM when the scratch
 * cannot be allocated, DPEP_ERR_UNSUPPORTED (message naming the device) for
 * a device kind this build has no attention kernels for. */
dpep_status dpep_attn_create(const dpep_model_config *m, const dpep_attn_params *p,
                             dpep_attn **out);
void dpep_attn_destroy(dpep_attn *a);
void dpep_attn_set_decode(dpep_attn *a, dpep_attn_decode mode);
/* Bytes of scratch the context holds. */
size_t dpep_attn_scratch_bytes(const dpep_attn *a);

/* Lending the CPU prefill core (runtime/engine's DP assist): one sequence's
 * causal attention over its context, in the non-absorbed form, head by
 * head. A head's result does not depend on which process computes it or
 * in which order the heads run: dpep_attn_prefill_head writes exactly the
 * bits the CPU forward writes for that head. */
typedef struct dpep_attn_prefill_job {
    int H, nope, rope, v, kv_lora; /* this rank's heads and the MLA dims   */
    float scale;                   /* softmax scale                        */
    const float *lat;  /* [pos0 + n, kv_lora + rope] the context's latents, float32 */
    const float *q;    /* [n, H (nope + rope)] the new tokens' queries (rope applied) */
    int64_t pos0;      /* cached tokens before the n new ones                 */
    int n;
    float *out;        /* [n, H v] rows ldo apart; head h at columns h v      */
    int64_t ldo;
} dpep_attn_prefill_job;
/* Floats of scratch dpep_attn_prefill_head needs for up to n new tokens. */
size_t dpep_attn_prefill_head_floats(int n, int nope, int rope, int v);
/* Head h of job j with kv_b (this layer's [H (nope + v), kv_lora], any
 * copy of the same bits): out's head-h columns, normalized. One thread;
 * scratch of dpep_attn_prefill_head_floats. */
void dpep_attn_prefill_head(const dpep_attn_prefill_job *j, const dpep_mat *kv_b, int h,
                            float *scratch);
/* Where a prefill core may go (borrowed; NULL: none): `buffer` returns
 * room for `floats` floats, the context's latents, that the lender's
 * helpers read (NULL: not lent now); `run` computes every head of j (its
 * lat in that buffer, filled by the caller; q and out in the caller's own
 * memory, which the lender copies as it needs) and returns true, or false
 * (the caller computes it). A lender may run the heads in groups: head h of
 * a job over heads [h0, h0 + hn) — q's columns of those heads packed
 * ([n, hn (nope + rope)]), kv_b's rows of those heads (dpep_mat_rows(kv_b,
 * h0 (nope + v), hn (nope + v))) — is head h0 + h of j, the same bits. CPU
 * only; called outside parallel regions, from dpep_attn_forward. */
typedef struct dpep_attn_lend {
    float *(*buffer)(void *ctx, size_t floats);
    bool (*run)(void *ctx, const dpep_attn_prefill_job *j, const dpep_mat *kv_b);
    void *ctx;
} dpep_attn_lend;
void dpep_attn_set_lend(dpep_attn *a, const dpep_attn_lend *lend);

/* One sequence of a batch: its n_new new tokens are at positions
 * pos0 .. pos0 + n_new - 1 and attend causally to the slot's cached tokens
 * [0, pos0) and to themselves. pos0 <= dpep_attn_kv_seq_len (a smaller pos0
 * recomputes from there); the slot must have pages for pos0 + n_new tokens,
 * and [pos0, pos0 + n_new) must not fall in a page shared with another slot. */
typedef struct dpep_attn_seq {
    int slot;
    int n_new;
    int64_t pos0;
} dpep_attn_seq;

/* out[T, hidden] = MLA(x[T, hidden]) for layer `layer` (its weights `w`,
 * this rank's heads), T = sum of n_new; tokens of the sequences are
 * concatenated in order. Writes the new tokens' latents into the cache.
 * With a TP comm the o_proj partials are all-reduced (collective: every TP
 * rank calls with the same batch; T may be 0). x and out must not overlap. */
dpep_status dpep_attn_forward(dpep_attn *a, const dpep_layer_w *w, int layer, dpep_attn_kv *kv,
                              const dpep_attn_seq *seq, int n_seq, const float *x, float *out);

/* Stages the step's batch for the forward calls of every layer that follow
 * (until dpep_attn_unstage): the batch is checked as dpep_attn_forward
 * checks it, the backend plans it and copies what its kernels read to the
 * device once (CUDA: positions, page-table entries, the core's tiles), and
 * the cache's lengths are advanced to pos0 + n_new of each sequence (as a
 * forward does), so that the forwards only queue device work: what a CUDA
 * graph captures, and what it replays after the next stage. *shape gets
 * the backend's launch shape for the batch (CUDA: the split-KV chunk count
 * and the core's tile count, >= 1; -1 when the batch has no shape worth
 * keeping, to be run eagerly; 0 on the CPU, which stages nothing, and for
 * an empty batch): two stagings with equal token and sequence counts and
 * equal shapes launch the same kernels. `seq` must not
 * change while staged. Not collective (the attention-TP all-reduce stays in
 * each forward). As with a forward that fails part-way, a step that fails
 * after its staging leaves the lengths advanced: its sequences must be
 * dropped (the engine fails their requests). */
dpep_status dpep_attn_stage(dpep_attn *a, dpep_attn_kv *kv, const dpep_attn_seq *seq, int n_seq,
                            int *shape);
/* Ends a staging: the forwards plan their batch themselves again. */
void dpep_attn_unstage(dpep_attn *a);

/* Wall time the context spent since the last reset, by phase: q/kv
 * projections with RoPE and cache writes, the attention core (prefill
 * blocks, absorbed decode incl. the W_UK / W_UV products), o_proj, and the
 * attention-TP all-reduce. On a GPU the forward does not wait for its
 * kernels: proj_s holds the time to queue each layer's work, core_s and
 * oproj_s stay 0. */
typedef struct dpep_attn_timing {
    double proj_s, core_s, oproj_s, reduce_s;
    int64_t calls;
} dpep_attn_timing;
void dpep_attn_timing_get(const dpep_attn *a, dpep_attn_timing *t);
void dpep_attn_timing_reset(dpep_attn *a);

/* The CPU backend's absorbed-decode kernels for n_heads local heads
 * ("avx512", "avx2" or "generic": the widest this CPU runs, unless BLAS ran
 * faster at that head count, or the one the environment variable
 * DPEP_CPU_ATTN_KERNELS names) — for summaries and benchmarks. Tests and
 * benchmarks may force one by name (NULL: back to the choice); false when
 * this build or CPU has no such table. */
const char *dpep_attn_cpu_kernels(int n_heads);
bool dpep_attn_cpu_kernels_force(const char *name);

/* FLOPs of the attention core for one sequence step (n_new tokens after
 * pos0 cached ones), for benchmarks. Absorbed: scores and weighted sum over
 * the latent rows plus q~ = W_UK^T q_nope and o = W_UV o~. Naive: scores and
 * weighted sum per head plus the k_nope/v expansion of every context token. */
double dpep_attn_core_flops(const dpep_model_config *m, int n_heads, int n_new, int64_t pos0,
                            dpep_attn_decode form);

#ifdef __cplusplus
}
#endif
#endif /* DPEP_ATTN_H */
