/* moe_internal.h — private to moe/: the context struct, its named stages,
 * the transport ops table (how rows move between EP ranks: one file per
 * transport, transport_*.c), the kernel ops table (gate, experts, MLP,
 * element-wise helpers: one table per device kind, experts_cpu.c and
 * experts_cuda.cu) and the alltoall row helpers the alltoall transports
 * share (a2a_rows.c).
 *
 * Adding a transport (CUDA IPC, NCCL): one new file transport_<name>.c that
 * defines `const moe_transport_ops moe_transport_<name>`, its extern below,
 * and one entry in pick_transport() in moe.c. Adding a device's kernels
 * (CUDA): one new file (experts_cuda.cu) that defines `const moe_kernel_ops
 * moe_kernels_cuda`, and its slot in moe_kernels[] in moe.c. */
#ifndef DPEP_MOE_INTERNAL_H
#define DPEP_MOE_INTERNAL_H

#include <string.h>

#include "dpep_moe.h"

#ifdef __cplusplus
extern "C" { /* experts_cuda.cu */
#endif

/* Tuning constants. */
#define MOE_GATE_PAR_MIN_TOKENS 256 /* gate_select: OpenMP over tokens from here   */
#define MOE_SUM_BLOCK 16            /* combine's summation: floats kept in registers */

/* One token's gate (logit: [E]; idx/w: [k]). */
void moe_gate_one(const dpep_moe_gate_cfg *g, const float *logit, const float *bias,
                  int32_t *idx, float *w);

/* A run of rows the experts read: row i's activations at x + t_i * ldx,
 * its k local slot ids (-1: expert elsewhere) at slot + i * ld_slot, its k
 * weights at w + t_i * ld_w, with t_i = tok ? tok[i] : i; its partial sum
 * goes to part + i * H. Received rows are packed [x | slots | weights]
 * (x = row, slot = row + H, w = row + H + k, strides S); this rank's own
 * rows are read where they are (the caller's x and weights, via tok). */
typedef struct moe_rows {
    const float *x;
    const int32_t *tok;
    int64_t ldx;
    const int32_t *slot;
    int64_t ld_slot;
    const float *w;
    int64_t ld_w;
    float *part;
    int64_t n;
} moe_rows;

/* ------------------------------------------------------------------------ */
/* Kernels: one table per device kind (moe.c: moe_kernels[])                */
/* ------------------------------------------------------------------------ */
typedef struct moe_kernel_ops {
    const char *name; /* "cpu", "cuda" */
    /* true: every array the kernels take (activations, weights, the pool's
     * data pieces) is device memory the host cannot touch (CUDA); moe.c
     * then skips its host-side reads of step data (dispatch's expert-id
     * check: the gate made the ids) and refuses what has no device path
     * yet (run_identity; ep, moe_tp, dense TP > 1 and the allgather backend
     * at create). false (CPU): host memory. */
    bool device_only;
    /* NULL: always usable. Else DPEP_ERR_UNSUPPORTED (logged) when `dev`
     * cannot run these kernels (no GPU visible); checked at create. */
    dpep_status (*usable)(const dpep_device *dev);
    /* logits (T, E) = x (T, H) · router (E, H)^T */
    void (*router_logits)(const float *router, int n_experts, int hidden, const float *x,
                          int64_t n_tokens, float *logits);
    /* top-k selection (dpep_moe_gate_select) */
    void (*gate_select)(const dpep_moe_gate_cfg *g, const float *logits, const float *bias,
                        int64_t n_tokens, int32_t *idx, float *w);
    /* one SwiGLU MLP slice (shared experts, dense FFN): dpep_moe_mlp_forward */
    void (*mlp)(const dpep_mlp_w *mlp, int hidden, const float *x, int64_t ldx, int64_t n_tokens,
                int chunk, float *scratch, float *out, bool accumulate);
    /* Routed experts of one rank over n_seg runs of rows: each row's partial
     * sum = Σ over its local slots of w · Expert_slot(x) (rows without a
     * local slot get 0). px/pp/slot_w: scratch of (rows) * min(k, n_slots)
     * entries; slot_cnt: n_slots + 1 entries; work: X (chunk, H), G and U
     * (chunk, I_max), Y (chunk, H). Returns the routed FLOPs; *pairs =
     * (row, slot) pairs. The moe_rows array itself is host memory; what its
     * pointers point at is the device's. */
    /* (the CPU kernel hands its waves to moe_waves_now, when set) */
    double (*experts)(const dpep_mlp_w *experts, int n_slots, int hidden, int topk,
                      const moe_rows *seg, int n_seg, int chunk, const float **px, float **pp,
                      float *slot_w, int64_t *slot_cnt, float *work, int64_t work_inter,
                      int64_t *pairs);
    /* Element-wise on the device's memory (NULL: host memset / loop /
     * memcpy, see moe_zero/moe_add/moe_copy below). n floats, n >= 1. */
    void (*zero)(float *p, int64_t n);
    void (*add)(float *acc, const float *x, int64_t n); /* acc += x */
    void (*copy)(float *dst, const float *src, int64_t n);
    /* The device transports' passes (transport_devrows.c, transport_ipc.c):
     * pack_rows: n packed rows (S = H + 2k words), row i written at dst[i]
     * (anywhere: a local buffer, a peer's mapped segment) as [x + tok[i] *
     * ldx (H floats) | slot + i * k (k ids) | w + tok[i] * ldw (k floats)];
     * sum_rows: acc (U, H), row t = the rows src[t * D + j], j = 0 ..
     * cnt[t] - 1, added left to right (0 rows: zeros) — the order and bits
     * of moe_a2a_sum_partials; put_i64: *dst[i] = src[i], i < n (counts
     * into the peers' segments). Every array, the pointer arrays included,
     * is the device's. */
    void (*pack_rows)(float *const *dst, const float *x, int64_t ldx, const float *w,
                      int64_t ldw, const int32_t *tok, const int32_t *slot, int64_t n, int H,
                      int k);
    void (*sum_rows)(float *acc, const float *const *src, const int32_t *cnt, int64_t U, int H,
                     int D);
    void (*put_i64)(int64_t *const *dst, const int64_t *src, int n);
    /* Bench/test hook behind dpep_moe_run_identity: every local expert is
     * the identity, so each row's partial sum = (Σ of its local slots'
     * weights, slot order) · x. The moe_rows array is host memory. */
    void (*identity)(const moe_rows *seg, int n_seg, int H, int k);
    /* The allgather path's remap, in place: rows (ep * Upad, S), block r's
     * first n_valid[r] rows real, the rest padding; each row's k expert ids
     * become map[id] (this rank's slot, or -1), padding rows' -1. n_valid
     * and map are the device's. */
    void (*remap_slots)(float *rows, int ep, int64_t Upad, const int64_t *n_valid,
                        const int32_t *map, int H, int k);
    /* NULL: the functions above cannot fail. Else the first error of this
     * thread's calls since the last status() (already logged, naming the
     * op), and clears it: the functions return void, moe.c asks after each
     * stage. */
    dpep_status (*status)(void);
    /* NULL: every path is free of host syncs already (the CPU). Else
     * on = true makes `experts` run without waiting for the device (CUDA:
     * the grouped tiles: no device-to-host copy of the counts, so a CUDA
     * graph can capture it; FLOPs and pairs then unknown, -1), false back
     * to the default. Process-wide on the device's table. */
    void (*sync_free)(bool on);
} moe_kernel_ops;

extern const moe_kernel_ops moe_kernels_cpu; /* experts_cpu.c */
#ifdef DPEP_HAVE_CUDA
extern const moe_kernel_ops moe_kernels_cuda; /* experts_cuda.cu */
/* How moe_kernels_cuda.experts runs the expert GEMMs (process-wide; tests
 * and benchmarks that call the table directly switch it;
 * dpep_moe_run_experts applies its context's dpep_moe_set_sync_free
 * setting through the table's sync_free entry before each call):
 *   CUBLAS   cuBLAS per slot and chunk after one device-to-host copy of
 *            the offsets (the default: FLOPs and pairs reported);
 *   GROUPED  grouped tiles reading the offsets on the device, no host sync
 *            (capturable); FLOPs and pairs unknown there (returns -1, *pairs
 *            -1). Falls back to CUBLAS past 256 slots or with uneven slices.
 *            16-bit and FP8 weights on tensor cores where the shapes allow
 *            (K % 32, aligned matrices, sm_80+), else FMA tiles;
 *   GROUPED_FMA  the same with the FMA tiles always (tests, benches). */
enum { MOE_CUDA_EXPERTS_CUBLAS = 0, MOE_CUDA_EXPERTS_GROUPED = 1, MOE_CUDA_EXPERTS_GROUPED_FMA = 2 };
void moe_cuda_set_experts_impl(int impl);
/* Tests: GEMMs the grouped path has run on its tensor-core tiles so far. */
int64_t moe_cuda_grouped_tc_count(void);
#endif

/* Element-wise helpers through the kernel table (host fallbacks when the
 * table has none: the CPU's). n < 1: nothing. */
static inline void moe_zero(const moe_kernel_ops *kt, float *p, int64_t n)
{
    if (n < 1) return;
    if (kt->zero) kt->zero(p, n);
    else memset(p, 0, sizeof(float) * (size_t)n);
}
static inline void moe_add(const moe_kernel_ops *kt, float *acc, const float *x, int64_t n)
{
    if (n < 1) return;
    if (kt->add) kt->add(acc, x, n);
    else
        for (int64_t i = 0; i < n; i++) acc[i] += x[i];
}
static inline void moe_copy(const moe_kernel_ops *kt, float *dst, const float *src, int64_t n)
{
    if (n < 1) return;
    if (kt->copy) kt->copy(dst, src, n);
    else memcpy(dst, src, sizeof(float) * (size_t)n);
}
/* The kernels' first error since the last call (DPEP_OK when none). */
static inline dpep_status moe_kern_status(const moe_kernel_ops *kt)
{
    return kt->status ? kt->status() : DPEP_OK;
}

/* ------------------------------------------------------------------------ */
/* Transports: how the rows reach the experts' ranks and the partial sums    */
/* come back (moe.c picks one table at create and calls only through it).    */
/* ------------------------------------------------------------------------ */
typedef struct moe_transport_ops {
    const char *name;     /* dpep_moe_transport_name: "shm", "mpi", "allgather", "device" */
    bool packed_union;    /* reads the union as packed rows (ubuf) even when
                             moe_tp = 1 (else the caller's arrays in place)    */
    bool alltoall_rows;   /* uses the alltoall row arrays (a2a_rows.c)          */
    bool dense_ids;       /* reads the union's expert ids contiguous (m->uid_c,
                             (U, k)): with moe_tp > 1 they are all-gathered too */
    /* Its pieces of the pool: private state (sets m->tr_state) and buffers.
     * Runs twice, as every arena carving: counting (a->base NULL), then
     * placing (pieces zeroed; it may set constants in them). `a` is the
     * pool (the device's memory), `h` the host pieces (the same arena when
     * the kernels run on host memory). */
    void (*carve)(dpep_moe *m, dpep_arena *a, dpep_arena *h);
    /* NULL: create and free are local. Else they are collective over the EP
     * comm: connect runs on every EP rank once all agreed that their local
     * part succeeded, and gives every rank the same answer (it agrees on
     * its own local failures). DPEP_ERR_UNSUPPORTED or DPEP_ERR_NOMEM under
     * transport auto: not available here, moe.c falls back to mpi. */
    dpep_status (*connect)(dpep_moe *m, dpep_diag *diag);
    /* The union's rows (m->ux/uidx/uw, m->U) to their experts' ranks: fills
     * m->seg[0..n_seg) (the rows the experts read), m->n_rows, m->tok_recv
     * (alltoall), the per-peer byte counts and the dispatch stats. */
    dpep_status (*dispatch)(dpep_moe *m);
    /* NULL: nothing to announce. Else called once the routed experts are
     * done (MOE_STAGE_ANNOUNCED): peers may read this rank's partial sums
     * from then on, until its combine. */
    dpep_status (*announce)(dpep_moe *m);
    /* acc (U, H) = Σ over each union token's partial sums; combine stats. */
    dpep_status (*combine)(dpep_moe *m, float *acc);
    /* NULL: holds nothing outside its pieces. Collective when connect is. */
    void (*free)(dpep_moe *m);
} moe_transport_ops;

extern const moe_transport_ops moe_transport_shm;       /* transport_shm.c */
extern const moe_transport_ops moe_transport_mpi;       /* transport_mpi.c */
extern const moe_transport_ops moe_transport_allgather; /* transport_allgather.c */
extern const moe_transport_ops moe_transport_device;    /* transport_device.c */
/* Device rows over the EP comm (transport_devrows.c): rows packed on the
 * device, all-to-all-v over an NCCL comm (device memory, "nccl") or over
 * MPI through host staging ("mpi-staged"). */
extern const moe_transport_ops moe_transport_nccl;
extern const moe_transport_ops moe_transport_staged;
/* Device-shared segments of the EP group's node (transport_ipc.c): CUDA
 * IPC, rows written straight into the peers' segments ("ipc"). */
extern const moe_transport_ops moe_transport_ipc;

/* ------------------------------------------------------------------------ */
/* Stages of one step                                                        */
/* ------------------------------------------------------------------------ */
/* dispatch -> run_experts / run_identity -> combine.
 *   call          allowed in                     leads to
 *   dispatch      IDLE, DISPATCHED, EXPERTS_DONE DISPATCHED
 *   run_experts   DISPATCHED, EXPERTS_DONE (*)   ANNOUNCED (transport with
 *   run_identity                                 announce), else EXPERTS_DONE
 *   combine       EXPERTS_DONE, ANNOUNCED        IDLE
 * (*) again on one dispatch only without an announcement (benchmarks): once
 * announced, peers may be reading the partial sums, so a second run_experts
 * and a dispatch before the pending combine are refused (DPEP_ERR_INTERNAL).
 * A call that fails leaves the stage it found, except combine, which consumes
 * the announcement first (a failed combine leaves EXPERTS_DONE). */
typedef enum moe_stage {
    MOE_STAGE_IDLE = 0,     /* no step in flight                              */
    MOE_STAGE_DISPATCHED,   /* rows are where the experts read them           */
    MOE_STAGE_EXPERTS_DONE, /* partial sums written, not announced             */
    MOE_STAGE_ANNOUNCED,    /* partial sums announced to the peers (shm)      */
} moe_stage;

/* Packed row helpers: S = H + 2k words. */
static inline int32_t *moe_row_slot(float *row, int H) { return (int32_t *)(void *)(row + H); }
static inline const int32_t *moe_row_slot_c(const float *row, int H)
{
    return (const int32_t *)(const void *)(row + H);
}
static inline float *moe_row_w(float *row, int H, int k) { return row + H + k; }
static inline int64_t moe_imax64(int64_t a, int64_t b) { return a > b ? a : b; }

struct dpep_moe {
    bool sync_free;             /* dpep_moe_set_sync_free                     */
    dpep_moe_config cfg;        /* placement points at `pl`, device at `dev` */
    dpep_moe_placement pl;      /* owned copy                             */
    dpep_device dev;            /* where the pool lives (cfg.device or CPU) */
    const moe_kernel_ops *kern; /* the device's kernels                    */
    const moe_transport_ops *tr; /* chosen once at create                  */
    void *tr_state;             /* the transport's own struct (its file)   */
    int H, k, S;                /* S = H + 2k: packed row, in 4-byte words */
    int ep_size, ep_rank, tp_size, tp_rank, dn_size;
    int n_local;                /* expert slots on this EP rank            */
    int D;                      /* max destination ranks per token         */
    int64_t Tm, Um;             /* max tokens per rank / per MoE-TP union  */
    int chunk;
    int64_t I_max;              /* widest MLP slice run here               */

    unsigned char *pool;        /* owned (device alloc): pieces below + the transport's */
    size_t pool_bytes;
    unsigned char *host;        /* owned (calloc) when the kernels are      */
    size_t host_bytes;          /*   device_only: the host control pieces (seg, counts); else NULL (in the pool) */
    unsigned char *side;        /* owned (device alloc): the pieces of a    */
    size_t side_bytes;          /*   transport taken after the pool was made (auto -> mpi,
                                     ipc -> nccl / mpi-staged); with its host part: */
    unsigned char *side_host;   /* owned (calloc) when the kernels are device_only */
    size_t ext_bytes;           /* held by the transport elsewhere (shm: its segment) */
    float *logits;              /* (Tm, E)                                 */
    int32_t *g_idx;             /* (Tm, k) gate choice when caller gives none */
    float *g_w;                 /* (Tm, k)                                 */
    float *own_pack;            /* (Tm, S) own tokens packed (moe_tp > 1)  */
    float **pk_dst;             /* (Tm) own_pack + t * S, moe_tp > 1 (device) */
    int32_t *pk_tok;            /* (Tm) 0, 1, ... (device)                 */
    int32_t *uids;              /* (Um, k) union expert ids, moe_tp > 1 and dense_ids */
    int64_t *tp_cnt_k, *tp_dsp_k; /* [tp] their all-gather counts / displs */
    float *ubuf;                /* (Um, S) MoE-TP union, packed            */
    float *uout;                /* (Um, H) union output                    */
    float *ushared;             /* (Um, H) shared-expert partial           */
    float *rs_pad;              /* (tp*Tm, H) moe_tp > 1                   */
    float *rs_recv;             /* (Tm, H) moe_tp > 1                      */
    float *work;                /* X, G, U, Y                              */
    /* alltoall rows (tr->alltoall_rows; a2a_rows.c) */
    int32_t *tok_r, *tok_i;     /* (Um, D) where each token's rows went: EP
                                   rank, row index in its block there      */
    int32_t *tok_n;             /* (Um) destinations of each token         */
    int32_t *self_slot;         /* (Um, k) local slot ids of the own rows   */
    int32_t *self_tok;          /* (Um) token of own row i                  */
    float **row_base;           /* [ep] dispatch: rows for rank r go to     */
    int64_t *row0;              /*   row_base[r] + (row0[r] + i) * S        */
    const float **src_base;     /* [ep] combine: partial sums from rank r   */
    int64_t *src0;              /*   at src_base[r] + (src0[r] + i) * H     */
    int64_t *tok_send, *tok_recv; /* [ep] tokens per peer                  */
    int64_t *stamp;             /* [ep] last token seen per rank            */
    int64_t *fill;              /* [ep] write_rows' cursor per rank         */
    /* experts' scratch */
    const float **px;           /* (ep*Um*min(k, n_local))                 */
    float **pp;                 /* same                                    */
    float *slot_w;              /* same                                    */
    int64_t *slot_cnt;          /* [n_local + 1]                           */
    /* dense TP: (Tm, H), (dn*Tm, H) x2, (Tm, H); tokens per rank [dn] */
    float *dn_send, *dn_recv, *dn_part, *dn_rs;
    int64_t *dn_T;
    int64_t *tp_T, *tp_cnt, *tp_dsp; /* [tp]                               */
    int64_t *bytes_send, *bytes_recv; /* [ep] dispatch bytes per peer      */
    moe_rows *seg;              /* [ep] the rows the experts read this step */
    int n_seg;
    int64_t n_rows;             /* rows the experts read this step          */
    /* step state. The union view: this rank's EP-stage tokens, either the
     * caller's arrays (alltoall, moe_tp = 1: no copy) or ubuf (packed). */
    const float *ux;            /* (U, ux_ld)                              */
    const int32_t *uidx;        /* (U, um_ld) expert ids                   */
    const int32_t *uid_c;       /* (U, k) the same, contiguous (tr->dense_ids) */
    const float *uw;            /* (U, um_ld) weights                      */
    int64_t ux_ld, um_ld;
    int64_t T, U, Tpad_tp;
    bool have_shared;
    dpep_status (*between)(void *ctx); /* dpep_moe_set_between (NULL: none) */
    void *between_ctx;
    const dpep_moe_wave_offload *waves; /* dpep_moe_set_wave_offload (NULL: none)           */
    moe_stage stage;
    dpep_moe_stats st;
};

/* Copies between host memory and the context's device (0 bytes: nothing). */
static inline dpep_status moe_to_host(const dpep_moe *m, void *dst, const void *src, size_t bytes)
{
    return bytes ? m->dev.ops->to_host(&m->dev, dst, src, bytes) : DPEP_OK;
}
static inline dpep_status moe_to_dev(const dpep_moe *m, void *dst, const void *src, size_t bytes)
{
    return bytes ? m->dev.ops->to_device(&m->dev, dst, src, bytes) : DPEP_OK;
}

/* A run of n packed rows [x | slots | weights] starting at `rows`. */
static inline moe_rows moe_packed_rows(const dpep_moe *m, const float *rows, float *part,
                                       int64_t n)
{
    moe_rows q = {.x = rows, .tok = NULL, .ldx = m->S,
                  .slot = moe_row_slot_c(rows, m->H), .ld_slot = m->S,
                  .w = rows + m->H + m->k, .ld_w = m->S, .part = part, .n = n};
    return q;
}

/* ------------------------------------------------------------------------ */
/* Alltoall rows (a2a_rows.c): what the shm and mpi transports share         */
/* ------------------------------------------------------------------------ */
/* The alltoall row arrays above (tok_r ... fill); host memory. */
void moe_a2a_carve(dpep_moe *m, dpep_arena *a);
/* tok_send[r]: tokens for EP rank r, each token once per rank holding any
 * of its experts; ids (U, ld): the union's expert ids (host memory).
 * Leaves stamp[] at -1. */
void moe_a2a_count(dpep_moe *m, const int32_t *ids, int64_t ld);
/* The one pass over the tokens: row i for rank r (tokens ascending) is
 * written at row_base[r] + (row0[r] + i) * S as [x | local slot ids (-1
 * for experts elsewhere) | weights]; own rows are not copied (self_tok,
 * self_slot); tok_r/tok_i/tok_n record where each token went, in rank
 * order, for combine. */
void moe_a2a_write_rows(dpep_moe *m);
/* The same pass as a plan only (ids (U, ld) in host memory; nothing read
 * from the activations): row g = row0[r] + i for rank r != me gets its
 * token in row_tok[g] and its slot ids in row_slot[g * k ...]; own row i
 * its token in self_tok[i], its slot ids in self_slot[i * k ...]. */
void moe_a2a_plan(dpep_moe *m, const int32_t *ids, int64_t ld, int32_t *row_tok,
                  int32_t *row_slot, int32_t *self_tok, int32_t *self_slot);
/* This rank's own rows, read where they are (the caller's x and weights,
 * through self_tok) with the slot ids write_rows put in self_slot. */
moe_rows moe_a2a_own_rows(const dpep_moe *m, float *part);
/* bytes_send/recv per peer and the dispatch stats: so rows sent, ro received. */
void moe_a2a_dispatch_stats(dpep_moe *m, int64_t so, int64_t ro);
/* acc[t] = Σ over token t's destination ranks, in rank order, of its
 * partial row at src_base[r] + (src0[r] + i) * H: each partial read once,
 * acc written once (the same bits whatever the transport). */
void moe_a2a_sum_partials(dpep_moe *m, float *acc);
/* ------------------------------------------------------------------------ */
/* Device plan (devplan.c): what the device transports share                 */
/* ------------------------------------------------------------------------ */
typedef struct moe_devplan {
    unsigned char *h, *d;       /* the plan block (host) and its copy (device) */
    size_t cap, bytes;          /* their size; this step's part               */
    int32_t *ids_h;             /* (Um, k) the union's expert ids, host       */
    /* this step's plan, host addresses. The transport fills dst (where each
     * row for a peer goes), src (token t's partial rows, t * D + j) and
     * cnt_val (what it needs per peer) between layout and upload. */
    float **dst;
    const float **src;
    int64_t *cnt_val;           /* [ep]                                       */
    int32_t *row_tok, *row_slot; /* rows for the peers: token, k slot ids     */
    int32_t *self_tok, *self_slot; /* own rows                                */
    int32_t *cnt;               /* [U] partial rows per token                 */
    /* the same at the device copy's addresses (upload) */
    float *const *dst_d;
    const float *const *src_d;
    const int64_t *cnt_val_d;
    const int32_t *row_tok_d, *row_slot_d, *self_tok_d, *self_slot_d, *cnt_d;
} moe_devplan;

/* Its pieces: the block and ids in h, the device copy in a. */
void moe_devplan_carve(dpep_moe *m, moe_devplan *p, dpep_arena *a, dpep_arena *h);
/* m->uid_c to the host (U x k int32), checked, and moe_a2a_count on them. */
dpep_status moe_devplan_ids(dpep_moe *m, moe_devplan *p);
/* The layout for `so` rows to peers and `own` own rows, with moe_a2a_plan
 * run into it (m->row0[r]: the first row for peer r) and cnt[] filled. */
dpep_status moe_devplan_layout(dpep_moe *m, moe_devplan *p, int64_t so, int64_t own);
/* One copy to the device; sets the *_d addresses. */
dpep_status moe_devplan_upload(dpep_moe *m, moe_devplan *p);
/* The own rows as a run the experts read in place (after upload). */
moe_rows moe_devplan_own_rows(const dpep_moe *m, const moe_devplan *p, float *part, int64_t own);

/* One int64 per rank of c into out[size], over c's MPI communicator (host
 * memory whatever c's backend: counts beside device collectives), under
 * c's watchdog (moe.c). */
dpep_status moe_host_allgather_i64(dpep_comm *c, int64_t v, int64_t *out);

/* dst = src[0] + ... + src[n - 1] (H floats each), left to right, n >= 1:
 * the summation of moe_a2a_sum_partials, for the CPU kernel table. */
void moe_sum_rows_host(float *dst, const float *const *src, int n, int H);

/* The expert pool of the dpep_moe_run_experts in progress on this thread
 * (moe.c sets it around the routed experts' kernel; NULL: none): the CPU
 * kernel offers it its waves. */
#ifndef __cplusplus /* (C11's thread storage; the CPU kernel only) */
extern _Thread_local const dpep_moe_wave_offload *moe_waves_now;
#endif


#ifdef __cplusplus
}
#endif
#endif /* DPEP_MOE_INTERNAL_H */
