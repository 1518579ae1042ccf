/* transport_ipc.c — the alltoall transport over device-shared segments
 * (dpep_comm_dshm: CUDA IPC between the GPU ranks of one node, ranks sharing
 * one GPU included; node-shared memory when the "device" is the CPU, under
 * dpep_moe_test_device_rows). The device twin of transport_shm.c: each EP
 * rank owns one segment = [cnt: ep int64 | recv: ep*Ustride rows of S |
 * part: ep*Ustride rows of H], block `src` of recv/part reserved for the
 * rows source rank src sends here.
 *
 *   dispatch  expert ids to the host (U x k int32) for the plan; the kernel
 *             table writes each row for rank r straight into r's segment
 *             (pack_rows through per-row destination pointers) and this
 *             rank's row count into r's header (put_i64): no count exchange,
 *             no send buffer, own rows read in place; one fence (device
 *             work done, MPI barrier); the rank reads its own header.
 *   experts   read the received rows where they landed and write their
 *             partial sums into this rank's own part blocks.
 *   combine   one fence (every rank's experts done), then sum_rows reads each
 *             token's partial rows straight from the segments they were
 *             computed in, in destination-rank order (the CPU transports'
 *             bits).
 * One copy each way. Reuse is safe: a rank rewrites r's recv block (next
 * dispatch) only after the combine fence, which r passed after its experts
 * had read it; a rank's experts rewrite its part blocks only after the next
 * dispatch fence, which every reader passed after its summation finished
 * (the fence waits for the reader's queued device work). Create and free
 * are collective. */
#include <string.h>

#include "moe_internal.h"

typedef struct moe_ipc {
    dpep_comm_dshm *seg;      /* owned: one segment per EP rank                */
    int64_t Ustride;          /* rows reserved per source rank (max Um)        */
    /* host arrays of device addresses (set by connect) */
    float **peer_recv;        /* [ep] each rank's recv                         */
    float **peer_part;        /* [ep] each rank's part                         */
    int64_t **peer_cnt;       /* [ep] each rank's per-source row counts        */
    int64_t *peer_Um;         /* [ep] each rank's Um (connect)                 */
    int64_t *cnt_h;           /* [ep] this rank's header, read after the fence */
    /* device: where this rank's count for rank r goes (peer_cnt[r] + me) */
    int64_t **cnt_dst_d;      /* [ep]                                          */
    moe_devplan plan;         /* the step's plan (devplan.c); cnt_val: the
                                 counts written into the peers' headers        */
} moe_ipc;

static moe_ipc *state(const dpep_moe *m) { return (moe_ipc *)m->tr_state; }

static void ipc_carve(dpep_moe *m, dpep_arena *a, dpep_arena *h)
{
    const int64_t ep = m->ep_size;
    moe_ipc *s = DPEP_ARENA_TAKE(h, moe_ipc, 1), t;
    memset(&t, 0, sizeof t);
    t.peer_recv = DPEP_ARENA_TAKE(h, float *, ep);
    t.peer_part = DPEP_ARENA_TAKE(h, float *, ep);
    t.peer_cnt = DPEP_ARENA_TAKE(h, int64_t *, ep);
    t.peer_Um = DPEP_ARENA_TAKE(h, int64_t, ep);
    t.cnt_h = DPEP_ARENA_TAKE(h, int64_t, ep);
    t.cnt_dst_d = DPEP_ARENA_TAKE(a, int64_t *, ep);
    moe_devplan_carve(m, &t.plan, a, h);
    m->tr_state = s;
    if (s) *s = t;
}

/* One segment's pieces (counting when base is NULL). */
static void ipc_segment(const dpep_moe *m, int64_t stride, dpep_arena *a, int64_t **cnt,
                        float **recv, float **part)
{
    const int64_t ep = m->ep_size;
    *cnt = DPEP_ARENA_TAKE(a, int64_t, ep);
    *recv = DPEP_ARENA_TAKE(a, float, ep * stride * m->S);
    *part = DPEP_ARENA_TAKE(a, float, ep * stride * m->H);
}

/* Collective: the segments, sized for the largest Um, mapped everywhere;
 * the count destinations sent to the device. */
static dpep_status ipc_connect(dpep_moe *m, dpep_diag *diag)
{
    moe_ipc *s = state(m);
    dpep_comm *c = m->cfg.ep;
    const int ep = m->ep_size, me = m->ep_rank;
    int64_t stride = 0;
    DPEP_TRY(moe_host_allgather_i64(c, m->Um, s->peer_Um));
    for (int r = 0; r < ep; r++) stride = moe_imax64(stride, s->peer_Um[r]);
    int64_t *cnt;
    float *recv, *part;
    dpep_arena a = dpep_arena_begin(NULL);
    ipc_segment(m, stride, &a, &cnt, &recv, &part);
    dpep_comm_dshm *seg = NULL;
    dpep_status st = dpep_comm_dshm_create(c, &m->dev, a.off, &seg);
    if (st != DPEP_OK) {
        /* auto: not here (spans nodes, no peer access, no room): moe.c falls back */
        if (m->cfg.transport == DPEP_A2A_TRANSPORT_AUTO &&
            (st == DPEP_ERR_UNSUPPORTED || st == DPEP_ERR_NOMEM))
            return st;
        if (diag)
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "moe: parallel.moe_a2a_transport ipc: %s "
                          "(expected the EP group on one node, its GPUs with peer access; use "
                          "auto, mpi or nccl)",
                          st == DPEP_ERR_UNSUPPORTED ? "the EP group spans nodes or its GPUs "
                                                       "cannot map each other's memory"
                          : st == DPEP_ERR_NOMEM     ? "a rank cannot allocate its segment"
                                                     : dpep_status_string(st));
        return st == DPEP_ERR_UNSUPPORTED || st == DPEP_ERR_NOMEM ? DPEP_ERR_INVALID : st;
    }
    s->seg = seg;
    s->Ustride = stride;
    m->ext_bytes = a.off;
    int64_t **dst = (int64_t **)(void *)s->plan.h; /* staging for the upload */
    for (int r = 0; r < ep; r++) {
        dpep_arena g = dpep_arena_begin(dpep_comm_dshm_ptr(seg, r));
        ipc_segment(m, stride, &g, &s->peer_cnt[r], &s->peer_recv[r], &s->peer_part[r]);
        dst[r] = s->peer_cnt[r] + me;
    }
    st = moe_to_dev(m, s->cnt_dst_d, dst, sizeof(int64_t *) * (size_t)ep);
    /* agreed; on failure the segments go now, on every rank (all are here) */
    st = dpep_comm_agree(c, st, NULL, NULL);
    if (st != DPEP_OK) {
        dpep_comm_dshm_destroy(seg);
        s->seg = NULL;
        m->ext_bytes = 0;
        if (diag) dpep_diag_add(diag, DPEP_DIAG_ERROR, "moe: ipc: a rank could not set up its "
                                "segment table on its device");
        return st == DPEP_ERR_UNSUPPORTED || st == DPEP_ERR_NOMEM ? DPEP_ERR_CUDA : st;
    }
    return DPEP_OK;
}

static dpep_status ipc_dispatch(dpep_moe *m)
{
    moe_ipc *s = state(m);
    moe_devplan *p = &s->plan;
    const int ep = m->ep_size, me = m->ep_rank, k = m->k, D = m->D;
    const int64_t S = m->S, H = m->H, U = m->U, stride = s->Ustride;
    DPEP_TRY(moe_devplan_ids(m, p));
    int64_t so = 0;
    for (int r = 0; r < ep; r++) {
        m->row0[r] = so; /* plan rows in destination order (own excluded) */
        if (r != me) so += m->tok_send[r];
    }
    const int64_t own = m->tok_send[me];
    DPEP_TRY(moe_devplan_layout(m, p, so, own));
    /* row i for rank r lands in r's block for this rank (rows me*stride +
     * i); token t's partial rows are in each destination's part block for
     * this rank, destination-rank order (own rows: this rank's block me) */
    for (int r = 0; r < ep; r++) {
        p->cnt_val[r] = m->tok_send[r];
        if (r == me) continue;
        for (int64_t i = 0; i < m->tok_send[r]; i++)
            p->dst[m->row0[r] + i] = s->peer_recv[r] + (me * stride + i) * S;
    }
    for (int64_t t = 0; t < U; t++) {
        const int32_t *tr = m->tok_r + t * D, *ti = m->tok_i + t * D;
        for (int j = 0; j < m->tok_n[t]; j++)
            p->src[t * D + j] = s->peer_part[tr[j]] + (me * stride + ti[j]) * H;
    }
    DPEP_TRY(moe_devplan_upload(m, p));
    if (so > 0)
        m->kern->pack_rows(p->dst_d, m->ux, m->ux_ld, m->uw, m->um_ld, p->row_tok_d,
                           p->row_slot_d, so, (int)H, k);
    m->kern->put_i64(s->cnt_dst_d, p->cnt_val_d, ep);
    /* a kernel error still joins the fence (nobody waits for this rank) */
    dpep_status kst = moe_kern_status(m->kern);
    DPEP_TRY(dpep_comm_dshm_fence(s->seg));
    DPEP_TRY(kst);
    DPEP_TRY(moe_to_host(m, s->cnt_h, s->peer_cnt[me], sizeof(int64_t) * (size_t)ep));
    int64_t ro = 0;
    for (int src_r = 0; src_r < ep; src_r++) {
        const int64_t n = src_r == me ? own : s->cnt_h[src_r];
        if (n < 0 || n > stride) {
            DPEP_ERROR("moe: dispatch: EP rank %d wrote %lld rows into a block of %lld (segment "
                       "overwritten?)", src_r, (long long)n, (long long)stride);
            return DPEP_ERR_INTERNAL;
        }
        if (ro + n > (int64_t)ep * m->Um) { /* the experts' scratch holds ep * Um rows */
            DPEP_ERROR("moe: dispatch: %lld rows arrive at EP rank %d, its expert buffers hold "
                       "%lld (max_tokens differs between ranks?)", (long long)(ro + n), me,
                       (long long)ep * m->Um);
            return DPEP_ERR_INTERNAL;
        }
        m->tok_recv[src_r] = n;
        float *pb = s->peer_part[me] + src_r * stride * H;
        m->seg[src_r] = src_r == me
                            ? moe_devplan_own_rows(m, p, pb, own)
                            : moe_packed_rows(m, s->peer_recv[me] + src_r * stride * S, pb, n);
        ro += n;
    }
    m->n_seg = ep;
    m->n_rows = ro;
    moe_a2a_dispatch_stats(m, so + own, ro);
    return DPEP_OK;
}

static dpep_status ipc_combine(dpep_moe *m, float *acc)
{
    moe_ipc *s = state(m);
    DPEP_TRY(dpep_comm_dshm_fence(s->seg));
    m->st.combine_bytes_sent = m->st.rows_recv * m->H * (int64_t)sizeof(float);
    m->st.combine_bytes_recv = m->st.rows_sent * m->H * (int64_t)sizeof(float);
    if (m->U > 0) m->kern->sum_rows(acc, s->plan.src_d, s->plan.cnt_d, m->U, m->H, m->D);
    return moe_kern_status(m->kern);
}

static void ipc_free(dpep_moe *m)
{
    moe_ipc *s = state(m);
    if (s) dpep_comm_dshm_destroy(s->seg);
}

const moe_transport_ops moe_transport_ipc = {
    .name = "ipc",
    .packed_union = false,
    .alltoall_rows = true,
    .dense_ids = true,
    .carve = ipc_carve,
    .connect = ipc_connect,
    .dispatch = ipc_dispatch,
    .announce = NULL,
    .combine = ipc_combine,
    .free = ipc_free,
};
