/* dpep_engine.h — public header of runtime/engine: the distributed forward
 * step of one rank (embedding, MLA with attention-TP, dense FFN or MoE,
 * final norm, lm_head) and the sampling of next tokens from its logits. The
 * engine runs its own kernels (embedding, RMSNorm, residual adds, lm_head,
 * sampling and log-probs) through an ops table per device
 * (dpep_engine_ops_for); attn/ and moe/ pick theirs the same way. Requests,
 * batching and admission live above it, in runtime/sched.
 *
 * Collectives: dpep_engine_create and dpep_engine_destroy are collective over
 * the rank's groups (they create/free its comms and, with the node-shared MoE
 * transport, the EP group's shared segments; a rank whose local allocations
 * fail still takes part and every EP rank then returns an error).
 * dpep_engine_forward is collective over the rank's attention-TP,
 * EP, MoE-TP and dense groups. Every rank of an instance calls it every step,
 * a rank without work with n_seq = 0 (0 tokens). Attention-TP ranks of one
 * group call it with the same batch.
 *
 * Ownership: the engine owns its comms, KV pool, attention and MoE contexts,
 * every activation buffer (one block from the device's allocator) and its
 * host-side state (sampling scratch, row counts of the attention-TP
 * gather, the host copy of the expert load; one malloc), both made at
 * create: the step path allocates nothing. Weights and the model config
 * are borrowed and must outlive it; the weights must live on the engine's
 * device (dpep_weights_load_on with the same device).
 *
 * Errors: a failed step returns its status and logs one line naming the
 * rank, the device (GPU ordinal and name), the layer and the op; on CUDA
 * the forward and sample wait for the device before returning, so a kernel
 * fault is reported by the step that caused it (DPEP_ERR_CUDA). */
#ifndef DPEP_ENGINE_H
#define DPEP_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dpep_attn.h"
#include "dpep_comm.h"
#include "dpep_moe.h"
#include "dpep_model.h"

#include <mpi.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Sampling (engine/sample_cpu.c is the reference kernel).                   */
/* ------------------------------------------------------------------------ */
typedef struct dpep_sampling {
    float temperature;   /* 0: greedy (argmax, lowest id among equals)        */
    int top_k;           /* 0: off                                            */
    float top_p;         /* (0, 1]; 1: off                                    */
    uint64_t seed;       /* per-request stream; deterministic for a seed      */
    float min_p;         /* [0, 1]: keep tokens of at least min_p x the top
                            probability (after top-k, top-p); 0: off         */
} dpep_sampling;

/* Draws the next token from logits[vocab]. `scratch` holds 2 * vocab floats
 * (caller-owned, so the decode loop does not allocate); `rng` is the
 * request's stream (start it with dpep_rng_seed). */
int dpep_sample(const float *logits, int vocab, const dpep_sampling *s, uint64_t *rng,
                float *scratch);
/* log-softmax of logits[vocab] at `token` (max-shifted, summed in double). */
double dpep_logprob(const float *logits, int vocab, int token);
uint64_t dpep_rng_seed(uint64_t seed);
/* Uniform double in [0, 1) from the stream. */
double dpep_rng_uniform(uint64_t *rng);

/* ------------------------------------------------------------------------ */
/* The engine's own kernels, one table per device (ops_cpu.c, ops_cuda.cu);  */
/* the step code is the same on every device: it never touches a device    */
/* buffer itself, it asks the table (zero, copy, expert_count) instead.      */
/* Pointers are memory of the table's device unless said otherwise. The     */
/* functions return void; a device table keeps the calling thread's first   */
/* error, which `check` reports (the CPU's never fail).                     */
/* ------------------------------------------------------------------------ */
typedef struct dpep_engine_ops {
    const char *name;                                          /* "cpu"      */
    /* h[t] = table[ids[t]] (widened to float32) for t < n; table [vocab,
     * hidden]; ids already range-checked, host or device memory (the engine
     * passes its step ids, e->ids: device memory on a GPU).                 */
    void (*embed)(const dpep_mat *table, const int32_t *ids, int64_t n, float *h);
    /* y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * g, rows of n (dpep_model.h).  */
    void (*rmsnorm)(const float *x, const float *g, int64_t rows, int n, double eps, float *y);
    /* h[i] += x[i] for i < n.                                               */
    void (*add)(float *h, const float *x, int64_t n);
    /* logits[rows, vocab] = x[rows, hidden] · w[vocab, hidden]^T.           */
    void (*lm_head)(const float *x, int64_t rows, const dpep_mat *w, float *logits);
    /* For each row i < n of logits[n, vocab] with sp[i] != NULL: ids[i] drawn
     * with rng[i], logprob[i] its log-probability; -1 and 0 for the others.
     * scratch: 2 * vocab floats of host memory. Only ids and log-probs are
     * host memory on every device. */
    void (*sample)(const float *logits, int n, int vocab, const dpep_sampling *const *sp,
                   uint64_t *const *rng, float *scratch, int32_t *ids, double *logprob);
    /* x[i] = 0 for i < n.                                                   */
    void (*zero)(float *x, int64_t n);
    /* dst[i] = src[i] for i < n; both on the device, not overlapping.       */
    void (*copy)(float *dst, const float *src, int64_t n);
    /* load[idx[i]] += 1 for i < n with 0 <= idx[i] < n_experts (others
     * skipped): a layer's routed-expert histogram from the gate's top-k.
     * lim (device memory, may be NULL): only i < *lim count, read when the
     * kernel runs (a padded decode step's real entries, which a replayed
     * CUDA graph learns from the device).                                   */
    void (*expert_count)(const int32_t *idx, int64_t n, const int64_t *lim, int n_experts,
                         int64_t *load);
    /* Waits for the work this thread queued and returns the first error of
     * its calls since the last check (DPEP_OK: none), forgetting it. `msg`
     * (host, `len` bytes) gets the current device, "GPU N (NAME)" ("CPU"),
     * and after an error ": op OP: call -> error". The CPU's returns OK.    */
    dpep_status (*check)(char *msg, size_t len);
    /* Called once at create: allocates the table's own scratch for steps of
     * up to max_tokens tokens of model m (its vocab logits per row; on the
     * CPU the products' widening panels for its sizes; on a GPU the products'
     * rounding workspace and, when m->fp8 — here: the weights hold FP8
     * matrices —, the FP8 dequantization buffer), so that no step
     * allocates. NULL: nothing to reserve. Errors as `check`.               */
    void (*reserve)(const dpep_model_config *m, int64_t max_tokens);
    /* Graphs of the forward step (CUDA graphs; NULL on a device without
     * them). graph_begin: from now on what this thread queues is recorded,
     * not run (DPEP_OK, or the error, logged). graph_end: stops recording;
     * with keep and a recording that held, the instantiated graph (an
     * opaque handle the caller owns), else NULL: the recording is dropped
     * and every error it left (the table's, the device's) cleared, so the
     * caller can run the same work eagerly. graph_launch queues one replay
     * (errors as `check`); graph_free releases a handle (NULL: nothing).  */
    dpep_status (*graph_begin)(void);
    void *(*graph_end)(bool keep);
    void (*graph_launch)(void *graph);
    void (*graph_free)(void *graph);
} dpep_engine_ops;

/* The engine's table for a device kind; NULL when this build has none. */
const dpep_engine_ops *dpep_engine_ops_for(dpep_device_kind kind);

typedef struct dpep_engine dpep_engine; /* opaque */

/* Where the lm_head runs (runtime.lm_head). REPLICATED: each DP group's
 * ranks compute their own rows' logits with the whole matrix. VOCAB: the
 * EP group's ranks each compute the logits of a vocabulary slice [v0, v1)
 * for the rows of every rank (rows all-gathered, logits returned by an
 * all-to-all-v), as SGLang does under DP attention: at batch 1 the rank
 * with the request no longer reads the whole matrix alone. CPU only (the
 * exchange runs over MPI on host memory). AUTO: VOCAB on the CPU when the
 * EP group has more than one rank, attention-TP is 1 and the model has MoE
 * layers (their collectives keep the group's forwards in step); else
 * REPLICATED. Each logit is the same fixed-order sum either way (row
 * values do not depend on which rank computes them). */
typedef enum dpep_lm_head_mode {
    DPEP_LM_HEAD_AUTO = 0,
    DPEP_LM_HEAD_REPLICATED,
    DPEP_LM_HEAD_VOCAB,
} dpep_lm_head_mode;

/* The DP assist (runtime.dp_assist; engine_assist.h): under DP attention
 * the ranks of one node whose DP groups have no tokens in a step compute
 * column parts of a busy peer's replicated products (attention
 * projections, shared experts, dense FFN) from their own copies of the
 * weights; results are bit-identical. CPU only; needs attention-TP 1 and
 * an EP group with several ranks on a node (the shared experts only with
 * MoE-TP 1, the dense FFN only without dense TP: else they are split). AUTO:
 * on when moreover the node's ranks x threads fit its online CPUs; ON: also
 * with more (correct, slower: waits sleep); OFF: never. */
typedef enum dpep_dp_assist_mode {
    DPEP_DP_ASSIST_AUTO = 0,
    DPEP_DP_ASSIST_OFF,
    DPEP_DP_ASSIST_ON,
} dpep_dp_assist_mode;

/* What the assist did on this rank so far (dpep_engine_assist). */
typedef struct dpep_engine_assist_stats {
    int node_ranks;             /* ranks of the node group (0: assist off)  */
    int64_t steps_owner;        /* steps with tokens here and idle peers    */
    int64_t steps_helper;       /* steps idle here, serving a peer          */
    int64_t products;           /* products this rank offered (owner)       */
    int64_t parts_borrowed;     /* of their parts, computed by helpers      */
    int64_t parts_lent;         /* parts this rank computed for a peer      */
    int64_t waits_parts;        /* products whose owner then waited for a
                                   helper's last parts                      */
    double wait_parts_s;        /* owner: seconds spent so                  */
    double idle_s[2];           /* helper: seconds serving with nothing to
                                   claim (the owner's own work between its
                                   products, or before it closes a region),
                                   in attention [0] and FFN / MoE [1] regions */
    int64_t rows_chunked;       /* owner: products and shared-expert MLPs lent
                                   in row chunks (more rows than a segment
                                   holds at once)                           */
    /* every node rank with a few tokens (ROLE_SHARE): each replicated
     * product computed once for the node's rows, its column parts shared */
    int64_t steps_share;        /* steps so                                 */
    int64_t share_products;     /* products this rank took part in          */
    int64_t share_parts;        /* of their parts, computed here (for every
                                   node rank's rows)                        */
    double share_wait_s;        /* seconds waiting: for the node's ranks to
                                   reach a product, and for their parts     */
    int64_t prefill_cores;      /* owner: prefill attention cores lent       */
    int64_t prefill_groups;     /* their groups of heads (more than the cores
                                   when a long prompt's queries went in
                                   several)                                 */
    /* the expert pool (runtime.node_experts: the node's routed experts in
     * shared memory, their products shared out among the node's ranks) */
    int64_t expert_bytes;       /* this rank's routed experts in the node's
                                   window (0: in its own arena, no pool)    */
    int64_t expert_huge_bytes;  /* of them, on 2 MiB pages (-1: unknown)     */
    int64_t pool_waves;         /* expert waves this rank posted to the pool */
    int64_t pool_waves_own;     /* waves it ran in its own kernel (prefill-
                                   sized: more rows than the pool lends)    */
    int64_t pool_parts_borrowed; /* of their parts, computed by node peers  */
    int64_t pool_parts_lent;    /* parts this rank computed for a peer      */
    double pool_wait_s;         /* seconds waiting: for peers' last parts of
                                   this rank's waves, and for the node's
                                   ranks to finish a layer's experts        */
} dpep_engine_assist_stats;

typedef struct dpep_engine_params {
    const dpep_model_config *m;
    const dpep_weights *w;      /* this rank's weights (outlive the engine)   */
    const dpep_layout *layout;
    const dpep_rank_info *me;
    /* Groups of the layout (MPI_COMM_NULL or size 1: none). Duplicated. */
    MPI_Comm attn_tp, ep, moe_tp, dense;
    dpep_a2a_backend backend;
    dpep_a2a_transport transport; /* alltoall rows: auto, shm, mpi or nccl   */
    /* The EP comm's backend when the EP group has several ranks: MPI (host
     * memory; on a GPU the alltoall rows go over ipc segments set up on it
     * or stage through the host: "mpi-staged"), NCCL (device memory: the
     * "nccl" transport; every EP rank on a GPU of its own) or STAGED (the
     * allgather backend on GPUs sharing one: its collectives move device
     * rows on the EP comm itself). */
    dpep_comm_backend ep_backend;
    /* The attention-TP, MoE-TP and dense comms' backends: MPI on the CPU;
     * on a GPU NCCL (the group's ranks on distinct GPUs) or STAGED (device
     * buffers through host memory: ranks sharing a GPU). A GPU engine with
     * attention-TP > 1 over an MPI comm is refused at create. */
    dpep_comm_backend attn_tp_backend, moe_tp_backend, dense_backend;
    double comm_timeout_s;
    int max_tokens;             /* new tokens per step of this DP group       */
    int64_t max_ctx;            /* longest sequence (prompt + generated)      */
    int max_seqs;               /* KV slots                                   */
    int page_size;
    size_t kv_budget_bytes;     /* KV pool of this rank                       */
    dpep_wtype kv_dtype;        /* its element type: DPEP_WT_F32 (0) or BF16
                                   (runtime.kv_cache_dtype, dpep_kv_cache_type) */
    const dpep_device *device;  /* where it runs (borrowed); NULL: the CPU    */
    dpep_lm_head_mode lm_head;  /* see dpep_lm_head_mode                      */
    /* CUDA graphs of decode steps (runtime.cuda_graph_max_bs; SGLang's
     * --cuda-graph-max-bs / --disable-cuda-graph): decode-only steps of up
     * to this many sequences are padded to a bucket size (1, 2, 3, 4, then
     * multiples of 8, and cuda_graph_max_bs itself), captured once per
     * (bucket, logits mode, attention split-KV shape) and replayed after,
     * when the device's table has graphs and the layout keeps the step on
     * this GPU (attention-TP 1, one EP rank, no MoE-TP or dense TP, the
     * lm_head replicated). 0: off (every step eager). Padding rows are
     * token 0 at position 0 of a slot of their own (the KV pool's extra
     * slots, one page each); their results are dropped and their expert
     * picks not counted. See dpep_engine_graph_stats. */
    int cuda_graph_max_bs;
    /* Tests: pad decode steps as the CUDA graphs do even where the engine
     * takes none (the CPU), so that the padding's effects — none on the real
     * rows — are checked in CI; needs a layout that keeps the step on this
     * rank, as graphs do. `dpep run` sets it from DPEP_TEST_PAD_DECODE=1. */
    bool pad_decode;
    dpep_dp_assist_mode dp_assist; /* see dpep_dp_assist_mode              */
    /* The routed experts of the EP group's ranks on this node in node-shared
     * memory (borrowed; NULL: each rank's in its own arena): a window over
     * the node's ranks of `ep` in their order (MPI_Comm_split_type of ep,
     * key 0), each rank's segment holding its experts as the loader lays
     * them out from dpep_weights.expert_mem. The engine then runs an expert
     * pool (engine_pool.h): each rank's routed expert waves are shared out
     * among the node's ranks. CPU only; collective over ep. */
    dpep_comm_shm *node_experts;
} dpep_engine_params;

/* Node-shared bytes the DP assist maps per rank for model m (its segment:
 * the activations, the helpers' parts and the shared experts' intermediate
 * of up to min(step_tokens, 64) rows), with the shared experts / dense FFN
 * lent or not; what `dpep plan` shows. */
size_t dpep_engine_assist_segment_bytes(const dpep_model_config *m, bool shared, bool dense,
                                        int64_t step_tokens);
/* The node experts window (dpep_engine_params.node_experts): segment q of
 * it is made DPEP_PAGE bytes larger than node rank q's experts, which
 * start at the segment's first page boundary — here. */
#define DPEP_ENGINE_NODE_EXPERTS_SLACK DPEP_PAGE
char *dpep_engine_node_experts_at(const dpep_comm_shm *win, int node_rank);
/* Whether every rank of `node` (one node's ranks) has a CPU of its own for
 * each of its `threads` OpenMP threads (its online CPUs; the same answer on
 * every rank): the DP assist's and the expert pool's auto rule. Collective
 * over node. */
dpep_status dpep_engine_node_fits(MPI_Comm node, int threads, bool *fits);
/* Node-shared bytes the expert pool maps per rank for model m (its board
 * and a wave's rows, intermediate and output; runtime.node_experts), on
 * top of the node's expert window; what `dpep plan` shows. */
size_t dpep_engine_pool_segment_bytes(const dpep_model_config *m);
/* Whether the DP assist or the expert pool is on for this rank's engine,
 * and their counts. */
bool dpep_engine_assist(const dpep_engine *e, dpep_engine_assist_stats *out);

/* The lm_head placement the engine resolved (never AUTO) and, for VOCAB,
 * the group size it splits the vocabulary over (1 for REPLICATED). */
dpep_lm_head_mode dpep_engine_lm_head(const dpep_engine *e, int *group);

dpep_status dpep_engine_create(const dpep_engine_params *p, dpep_engine **out, dpep_diag *diag);

/* The engine's CUDA graphs so far: whether it uses them at all (the layout
 * and device allow, cuda_graph_max_bs > 0), graphs captured and held, steps
 * replayed from one, decode steps that ran eagerly though graphs are on
 * (a batch above cuda_graph_max_bs, a failed capture), graphs freed to make
 * room (at most 256 keys are held; the least recently used goes). */
typedef struct dpep_engine_graph_stats {
    bool enabled;
    int captured;
    int64_t replayed, eager_decode, evicted;
    int64_t warmup_decode; /* decode steps run eagerly as their key's first (then captured) */
    int max_bs;
    int64_t padded_steps, padding_rows; /* decode steps padded, rows added */
} dpep_engine_graph_stats;
void dpep_engine_graph_stats_get(const dpep_engine *e, dpep_engine_graph_stats *out);
void dpep_engine_destroy(dpep_engine *e);
dpep_attn_kv *dpep_engine_kv(dpep_engine *e);

typedef enum dpep_logits_mode {
    DPEP_LOGITS_NONE = 0,
    DPEP_LOGITS_LAST,           /* one row per sequence: its last new token   */
    DPEP_LOGITS_ALL,            /* one row per new token                      */
} dpep_logits_mode;

/* One step: tokens[T] (T = sum of seq[i].n_new, concatenated in order; host
 * memory) at the sequences' positions; the slots must have pages for pos0 +
 * n_new. logits: [n_seq or T, vocab] per `mode` (fp32, host memory: copied
 * back from the device), or NULL to keep them on the device for
 * dpep_engine_sample. Collective (see above). */
dpep_status dpep_engine_forward(dpep_engine *e, const dpep_attn_seq *seq, int n_seq,
                                const int32_t *tokens, dpep_logits_mode mode, float *logits);

/* One prefill of n_tokens synthetic tokens (at most max_tokens, and
 * max_ctx - 1) and one
 * decode step after it, on a KV slot opened and closed here, so that the
 * one-time costs of a first step (first touch of the activations, KV pages
 * and MoE buffers, the first thread-pool regions and collectives, the
 * device's lazily made handles) are paid before the first request, as
 * SGLang's warm-up request does. Collective over the instance like
 * forward: every rank calls it with the same n_tokens. A rank whose KV pool
 * cannot hold the tokens joins the steps with none. Leaves the KV pool and
 * the expert load as it found them (the load is zeroed, so call it before
 * serving). n_tokens <= 0: nothing. */
dpep_status dpep_engine_warmup(dpep_engine *e, int n_tokens);

/* Samples row i (< n) of the logits the last forward kept (called with
 * logits NULL and DPEP_LOGITS_LAST): ids[i] and logprob[i] for every i whose
 * sp[i] is not NULL, -1 and 0 for the others. rng[i] is request i's stream.
 * Only the ids and log-probs leave the device. Not collective. */
dpep_status dpep_engine_sample(dpep_engine *e, int n, const dpep_sampling *const *sp,
                               uint64_t *const *rng, int32_t *ids, double *logprob);
/* The device the engine runs on. */
const dpep_device *dpep_engine_device(const dpep_engine *e);

/* Tokens this rank sent through each routed expert so far (from the gate's
 * top-k), [n_layers][n_routed]; rows of dense layers stay 0. The counts are
 * kept on the engine's device and copied into a host buffer the engine owns
 * on each call (valid until the next call or destroy; a failed copy is
 * logged and leaves the previous counts). Not collective; call it between
 * steps, not during one. */
const int64_t *dpep_engine_expert_load(const dpep_engine *e);
/* The comms of this rank's groups wider than one rank and their backends,
 * e.g. "attn_tp mpi-staged, ep mpi, dense nccl" ("" when none), into buf
 * (n bytes, truncated). */
void dpep_engine_comms(const dpep_engine *e, char *buf, size_t n);
/* The MoE layer's transport on this rank: "shm", "mpi", "allgather",
 * "device" (one rank on a GPU), "ipc", "nccl" or "mpi-staged" (GPU ranks). */
const char *dpep_engine_moe_transport(const dpep_engine *e);
/* Bytes of this rank's MoE buffers (pool + node-shared segment). */
size_t dpep_engine_moe_bytes(const dpep_engine *e);
/* Weight bytes the matrix products of this rank have read so far (each
 * product counts its weight matrix once, in the stored type): on the CPU,
 * runtime/linear's count for the process (one engine per process); on a
 * GPU, 0 (not counted yet). The scheduler takes it around each step, so a
 * run reports what a decode step streams on each rank. Not collective. */
double dpep_engine_weight_bytes(const dpep_engine *e);

#ifdef __cplusplus
}
#endif
#endif /* DPEP_ENGINE_H */
