/* dpep_moe.h — public header of the moe module: DeepSeek gates (V3 sigmoid
 * noaux_tc, V2 softmax greedy / group_limited_greedy), token dispatch and
 * combine over the EP communicator (alltoall) or the all-gather path, grouped
 * SwiGLU expert FFN (BLAS), shared experts, dense FFN layers, and the expert
 * placement table.
 *
 * Inside (moe_internal.h; moe/README.md):
 *   Transports  how rows move between EP ranks is one ops table per
 *               transport (moe_transport_ops: carve its pool pieces, connect
 *               (collective create), dispatch, announce (after the routed
 *               experts), combine, free), one file each: transport_shm.c,
 *               transport_mpi.c, transport_allgather.c, and for device
 *               memory transport_device.c (one rank), transport_ipc.c and
 *               transport_devrows.c (several); the alltoall ones share
 *               a2a_rows.c. moe.c picks the table once at create
 *               (pick_transport) and calls only through it. A new transport
 *               is one new transport_<name>.c plus one case in
 *               pick_transport.
 *   Stages      a step is dispatch -> run_experts (or run_identity) ->
 *               combine, tracked as named stages (moe_stage: IDLE,
 *               DISPATCHED, EXPERTS_DONE, ANNOUNCED) with one table of the
 *               calls allowed in each; calls out of order return
 *               DPEP_ERR_INTERNAL.
 *   Kernels     the gate, the routed experts and the MLP (shared experts,
 *               dense FFN) run through a kernel table per device kind
 *               (moe_kernel_ops; the CPU's in experts_cpu.c, CUDA's in
 *               experts_cuda.cu). cfg.device picks it (NULL: the CPU); a
 *               kind without a table is DPEP_ERR_UNSUPPORTED at create. On
 *               CUDA every array (x, out, topk, weights) is device memory of
 *               that device, and create refuses (UNSUPPORTED, naming the
 *               field) moe_tp, dense TP or the allgather backend's EP group
 *               over a plain MPI comm (they need NCCL or mpi-staged comms),
 *               the shm transport, and with ep = 1 a placement with slot
 *               != expert.
 *
 * Ownership: dpep_moe_create allocates one pool on the context's device,
 * sized once for the worst case of `max_tokens` tokens per rank (every token
 * of every rank routed to this rank), plus the transport's own memory (SHM:
 * the node-shared segment; AUTO falling back to MPI: a block for that
 * transport's buffers); no step allocates memory. The comms and layer weights passed in
 * stay owned by the caller and must outlive the context. Functions taking
 * `T *out` write it only on DPEP_OK.
 *
 * Transports of the alltoall backend (cfg.transport, parallel.moe_a2a_transport):
 *   SHM  the EP group's ranks share one node: the receive rows and partial
 *        sums live in node-shared segments (dpep_comm_shm); dispatch writes
 *        each row straight into its destination's segment (one fence; the
 *        counts travel in the segments; rows for this rank are not copied:
 *        the experts read them in place), run_experts announces its partial
 *        sums as soon as the routed experts are done (before the shared
 *        experts run), and combine waits for every rank's announcement and
 *        reads the partial sums straight from their segments — one copy
 *        each way. Call run_experts (or run_identity) once per dispatch.
 *   MPI  count exchange, one packing pass (own rows excepted),
 *        dpep_comm_alltoallv; combine the reverse all-to-all-v and a
 *        summation pass. Any EP group.
 *   AUTO SHM when the EP group is on one node and /dev/shm has room, else MPI.
 * On a device (CUDA kernels), ep > 1 (moe/README.md, "Device transports"):
 *   IPC  the EP group on one node: each rank's device segment mapped into
 *        its peers (comm/'s dpep_comm_dshm, CUDA IPC); rows packed straight
 *        into the receivers' segments, counts into their headers; a fence
 *        after dispatch and before combine; one copy each way.
 *   NCCL the EP comm is an NCCL comm (cfg.ep made with DPEP_COMM_NCCL):
 *        counts over MPI, rows packed on the device, NCCL all-to-all-v.
 *   MPI  ("mpi-staged") the EP comm is MPI: as NCCL, the rows through host
 *        staging buffers. Ranks sharing a GPU, any layout.
 *   AUTO IPC when it can be had (one node, peer access, memory), else the
 *        EP comm's own (NCCL or mpi-staged).
 *   The host reads only the expert ids (U x k int32 per layer) to plan.
 * With SHM, IPC or AUTO (alltoall, ep > 1), dpep_moe_create and
 * dpep_moe_free are collective over the EP comm: every EP rank calls them,
 * a rank whose local checks or allocations fail included (every rank then
 * returns an error: they agree through dpep_comm_agree).
 *
 * Collectives: dpep_moe_dispatch, dpep_moe_combine, dpep_moe_forward and
 * dpep_moe_dense_forward are collective over the context's EP and MoE-TP
 * comms (dense: the dense comm); every rank calls them every step, a rank with
 * zero tokens included (n_tokens = 0, x may be NULL). So is
 * dpep_moe_run_experts between them (with SHM it announces this rank's
 * partial sums; it does not wait).
 *
 * Tie-breaking (gates): among equal scores the lower index wins — the lower
 * group index when groups are kept, the lower expert index when experts are
 * picked. NaN scores are never picked before a number. */
#ifndef DPEP_MOE_H
#define DPEP_MOE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dpep_comm.h"
#include "dpep_model.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DPEP_MOE_MAX_EXPERTS 1024 /* routed experts per layer (gate scratch) */
#define DPEP_MOE_MAX_TOPK 64
#define DPEP_MOE_CHUNK_DEFAULT 1024 /* expert GEMM rows per call (cfg.chunk 0) */

/* ------------------------------------------------------------------------ */
/* Gate                                                                      */
/* ------------------------------------------------------------------------ */
typedef struct dpep_moe_gate_cfg {
    int n_experts;              /* routed experts E                          */
    int topk;                   /* experts per token k                       */
    int n_group, topk_group;    /* expert groups and groups kept (1/1: none) */
    dpep_scoring scoring;       /* SIGMOID (V3) or SOFTMAX (V2)              */
    dpep_topk_method method;    /* NOAUX_TC, GREEDY, GROUP_LIMITED_GREEDY    */
    bool norm_topk_prob;        /* w /= (sum w + 1e-20), before the scale    */
    float routed_scaling_factor;
} dpep_moe_gate_cfg;

void dpep_moe_gate_cfg_from_model(const dpep_model_config *m, dpep_moe_gate_cfg *out);
/* DPEP_ERR_INVALID (with a message in diag) for inconsistent values: k out of
 * [1, E], E not divisible by n_group, fewer than k experts in the kept groups. */
dpep_status dpep_moe_gate_check(const dpep_moe_gate_cfg *g, dpep_diag *diag);

/* logits (T, E) = x (T, H) · router (E, H)^T, fp32 BLAS. */
void dpep_moe_router_logits(const float *router, int n_experts, int hidden, const float *x,
                            int64_t n_tokens, float *logits);
/* Selection from logits (T, E). V3 (sigmoid + noaux_tc): s = sigmoid(l),
 * selection on s + bias (bias may be NULL), group score = sum of the top-2,
 * weights from s. V2 (softmax): s = softmax(l) in fp32, greedy or group-limited
 * (group score = max). Then optional normalization and × routed_scaling_factor.
 * idx (T, k): expert ids sorted ascending; w (T, k): weights in that order.
 * The V2 path applies norm_topk_prob as DeepSeek's own code and REFERENCE.md
 * do (transformers' V2 router ignores it; V2/V2-Lite ship it false). */
void dpep_moe_gate_select(const dpep_moe_gate_cfg *g, const float *logits, const float *bias,
                          int64_t n_tokens, int32_t *idx, float *w);

/* ------------------------------------------------------------------------ */
/* Expert placement: logical expert -> (EP rank, local slot). Dispatch and    */
/* the all-gather path read only this table; w->experts[slot] is the expert  */
/* in that slot. One replica per expert today; redundant experts (EPLB) add  */
/* rows later without touching dispatch.                                     */
/* ------------------------------------------------------------------------ */
typedef struct dpep_moe_placement {
    int n_experts;      /* logical experts E                                */
    int n_ranks;        /* EP ranks                                         */
    int *rank;          /* [E] EP rank holding expert e (owned)             */
    int *slot;          /* [E] its slot on that rank (owned)                */
    int *n_slots;       /* [n_ranks] experts held by each rank (owned)      */
} dpep_moe_placement;

/* Contiguous: expert e on rank e / (E / n_ranks), slot e % (E / n_ranks). */
dpep_status dpep_moe_placement_contiguous(int n_experts, int n_ranks, dpep_moe_placement *out);
/* From explicit tables (copied). Every (rank, slot) pair must be used once,
 * slots of a rank dense from 0. */
dpep_status dpep_moe_placement_from_table(int n_experts, int n_ranks, const int *rank,
                                          const int *slot, dpep_moe_placement *out,
                                          dpep_diag *diag);
void dpep_moe_placement_free(dpep_moe_placement *p);

/* ------------------------------------------------------------------------ */
/* Local kernels                                                             */
/* ------------------------------------------------------------------------ */
/* out (T, H) (+)= down(silu(gate x) * up x) for an MLP slice; scratch holds
 * dpep_moe_mlp_scratch_floats(inter, chunk) floats; tokens go in chunks of
 * `chunk` rows. x rows are ldx floats apart. accumulate: add into out. */
size_t dpep_moe_mlp_scratch_floats(int hidden, int inter, int chunk);
void dpep_moe_mlp_forward(const dpep_mlp_w *mlp, int hidden, const float *x, int64_t ldx,
                          int64_t n_tokens, int chunk, float *scratch, float *out, bool accumulate);
/* The SwiGLU of dpep_moe_mlp_forward (CPU) on columns [c0, c0 + cn) of n rows:
 * g <- silu(g) * u, rows ld apart — for callers that compute an MLP's
 * column parts themselves (runtime/engine's DP assist), the same bits. */
void dpep_moe_swiglu(float *g, const float *u, int64_t ld, int n, int c0, int cn);
/* The same with row i's result times row_w[i] (row_w NULL: 1), as the
 * routed experts' waves apply their gate weights. */
void dpep_moe_swiglu_w(float *g, const float *u, int64_t ld, int n, int c0, int cn,
                       const float *row_w);

/* ------------------------------------------------------------------------ */
/* MoE layer context                                                         */
/* ------------------------------------------------------------------------ */
typedef struct dpep_moe dpep_moe; /* opaque */

typedef struct dpep_moe_config {
    int hidden;
    dpep_moe_gate_cfg gate;
    int moe_inter;              /* full expert intermediate size             */
    int n_shared;               /* shared experts (width n_shared*moe_inter) */
    int dense_inter;            /* full dense-FFN intermediate (0: none)     */
    dpep_a2a_backend backend;   /* ALLTOALL (dispatch/combine) or ALLGATHER  */
    dpep_a2a_transport transport; /* ALLTOALL rows: AUTO, SHM, MPI, NCCL, IPC  */
    int64_t max_tokens;         /* tokens per rank per step, upper bound     */
    int chunk;                  /* expert GEMM rows per call (0: DPEP_MOE_CHUNK_DEFAULT) */
    dpep_comm *ep;              /* EP group (size ep)                        */
    dpep_comm *moe_tp;          /* MoE-TP group, NULL when moe_tp = 1        */
    dpep_comm *dense;           /* dense-FFN TP group, NULL: data-parallel   */
    const dpep_moe_placement *placement; /* NULL: contiguous over ep (copied) */
    const dpep_device *device;  /* where the pool lives and the kernels run
                                   (copied); NULL: the CPU. A kind without a
                                   kernel table: DPEP_ERR_UNSUPPORTED       */
} dpep_moe_config;

void dpep_moe_config_from_model(const dpep_model_config *m, dpep_moe_config *out);

/* Checks the config (gate, divisibility by moe_tp) and the device (its
 * kernel table), allocates the pool through the device's allocator
 * (dpep_device_alloc) and sets up the transport. Collective over cfg.ep with SHM/AUTO (see above),
 * local otherwise. */
dpep_status dpep_moe_create(const dpep_moe_config *cfg, dpep_moe **out, dpep_diag *diag);
void dpep_moe_free(dpep_moe *m);
/* Bytes the context holds: the pool plus this rank's node-shared or device
 * segment or fallback transport buffers. */
size_t dpep_moe_pool_bytes(const dpep_moe *m);
/* The alltoall transport in use: "shm" or "mpi" ("allgather" for that
 * backend); on a CUDA device "device" (one rank, rows read in place),
 * "ipc", "nccl" or "mpi-staged" (several ranks). */
const char *dpep_moe_transport_name(const dpep_moe *m);

/* Parts of the layer (bit mask) for dpep_moe_forward_parts. */
#define DPEP_MOE_ROUTED 1u
#define DPEP_MOE_SHARED 2u

/* out (T, H) = Σ_k w_k Expert_k(x) + Shared(x) for this rank's T tokens.
 * Layer weights `w`: router, router_bias, experts per the placement (slot i
 * is w->experts[i]) and shared, sliced over moe_tp as dpep_weights_load does.
 * topk_idx / topk_w (T, k), optional: receive the gate's choice. */
dpep_status dpep_moe_forward(dpep_moe *m, const dpep_layer_w *w, const float *x, int64_t n_tokens,
                             float *out, int32_t *topk_idx, float *topk_w);
dpep_status dpep_moe_forward_parts(dpep_moe *m, const dpep_layer_w *w, const float *x,
                                   int64_t n_tokens, unsigned parts, float *out,
                                   int32_t *topk_idx, float *topk_w);

/* Work for the rank's idle time inside a layer: dpep_moe_forward(_parts)
 * calls fn(ctx) after this rank's experts (routed and shared) and before
 * the combine waits for its peers — the engine lends a rank without tokens
 * to a node peer's shared experts there (runtime/engine's DP assist). An
 * error from fn ends the layer with it. fn NULL: none (the default). */
void dpep_moe_set_between(dpep_moe *m, dpep_status (*fn)(void *ctx), void *ctx);

/* An expert pool (CPU): someone who can run a wave of this rank's routed
 * expert pieces with other workers — runtime/engine's pool shares them
 * with the node's other EP ranks when the node's routed experts live in
 * node-shared memory (runtime.node_experts), so a token's experts split
 * unevenly between the ranks still keep every core busy.
 *  - wave(ctx, pc, np, hidden): piece i is expert pc[i].w over n rows x
 *    (ldx apart), intermediate row r times row_w[r], the down output of
 *    row r added into dst[r] — pieces in order, exactly as the CPU kernel
 *    does (the same bits: column parts of the same products). false: not
 *    taken, the kernel runs the wave itself.
 *  - done(ctx): called once per dpep_moe_run_experts by every rank of the
 *    context's EP group after its waves (also without routed work): the
 *    pool may serve peers' waves there until the node's ranks are through.
 * Both are called from dpep_moe_run_experts, outside OpenMP regions. The
 * table is borrowed (NULL: none, the default). */
typedef struct dpep_moe_piece {
    const dpep_mlp_w *w;
    int n;
    const float *x;
    int64_t ldx;
    const float *row_w;
    float *const *dst;
} dpep_moe_piece;
typedef struct dpep_moe_wave_offload {
    bool (*wave)(void *ctx, const dpep_moe_piece *pc, int np, int hidden);
    dpep_status (*done)(void *ctx);
    void *ctx;
} dpep_moe_wave_offload;
void dpep_moe_set_wave_offload(dpep_moe *m, const dpep_moe_wave_offload *pool);

/* Dense FFN layer: data-parallel (cfg.dense NULL or size 1), or TP-split over
 * the dense comm (tokens gathered, slices computed, reduce-scatter back). */
dpep_status dpep_moe_dense_forward(dpep_moe *m, const dpep_mlp_w *mlp, const float *x,
                                   int64_t n_tokens, float *out);

/* Stages, for benchmarks and backends (dpep_moe_forward = gate, dispatch,
 * run_experts, combine). dispatch: with moe_tp > 1, first gathers the tokens
 * of the MoE-TP group; then alltoall: counts, then each token once per
 * destination rank holding one of its experts (rows + slot ids + weights);
 * allgather: the EP group's tokens. combine: sends the partial weighted sums
 * back (alltoall) or reduce-scatters them (allgather), sums them, and
 * reduce-scatters over moe_tp; out (T, H). x, topk_idx and topk_w must stay
 * unchanged until the matching dpep_moe_combine returns (alltoall with
 * moe_tp = 1 packs rows straight from them, without an intermediate copy,
 * and the experts read this rank's own rows from them in place). A row of
 * topk_idx names k distinct experts (the gate's always do; the CUDA
 * per-slot path adds a row's partial once per slot without atomics). */
dpep_status dpep_moe_dispatch(dpep_moe *m, const float *x, int64_t n_tokens,
                              const int32_t *topk_idx, const float *topk_w);
dpep_status dpep_moe_run_experts(dpep_moe *m, const dpep_layer_w *w, unsigned parts);
/* Bench/test hook: every local expert is the identity (partial = Σ w · x). */
void dpep_moe_run_identity(dpep_moe *m);
dpep_status dpep_moe_combine(dpep_moe *m, float *out);

/* What the last dispatch/combine moved over the EP comm (data collectives
 * only; the count exchange and the MoE-TP stage are not included). Arrays
 * are the per-peer byte counts of the last dispatch (combine moves the
 * reverse pattern); they live in the pool until the next dispatch. */
typedef struct dpep_moe_stats {
    int64_t tokens_in;          /* tokens on this rank entering the EP stage   */
    int64_t rows_sent, rows_recv; /* dispatch rows (token copies)              */
    int64_t dispatch_bytes_sent, dispatch_bytes_recv;
    int64_t combine_bytes_sent, combine_bytes_recv;
    const int64_t *send_bytes, *recv_bytes; /* [ep] dispatch bytes per peer   */
    int64_t expert_rows;        /* (token, local expert) pairs computed       */
    double expert_flops;        /* FLOPs of the last run_experts (routed)     */
} dpep_moe_stats;
void dpep_moe_get_stats(const dpep_moe *m, dpep_moe_stats *out);
/* on = true: this context's routed experts run without waiting for the
 * device (on a GPU the grouped expert tiles, which read the per-expert
 * counts on the device: no device-to-host copy, so a CUDA graph can
 * capture the layer; expert_rows and expert_flops then -1). With one EP
 * rank (the device transport) the whole forward is then free of host
 * syncs. Default false (cuBLAS per expert after one copy of the counts,
 * tensor cores for 16-bit weights: the faster path for large batches). The
 * context applies its setting to the device's expert table before each of
 * its expert calls. No effect on the CPU. */
void dpep_moe_set_sync_free(dpep_moe *m, bool on);

/* Testing hook: contexts created from now on with host kernels (the CPU)
 * and ep > 1 take the device-rows transport ("mpi-staged": ids copied to
 * the host for the plan, rows packed and partial sums summed by the kernel
 * table, all-to-all-v through host staging) instead of shm / mpi, so that
 * the path GPUs take runs in CPU CI. Process-wide. */
void dpep_moe_test_device_rows(bool on);

#ifdef __cplusplus
}
#endif
#endif /* DPEP_MOE_H */
