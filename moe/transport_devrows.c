/* transport_devrows.c — the alltoall transport for rows in device memory
 * (a GPU's, or the CPU's under dpep_moe_test_device_rows), any EP group:
 *
 *   dispatch  the union's expert ids come to the host (U x k int32, the only
 *             step data the host reads); the host plans every row (count,
 *             destination, slot ids: a2a_rows.c's pass, as a plan) and the
 *             combine's summation lists, and sends the plan to the device in
 *             one copy; the counts go round over MPI (one int64 per peer);
 *             the kernel table packs the rows for the peers [x | slots |
 *             weights] in destination order (own rows are read in place);
 *             one all-to-all-v of the rows;
 *   combine   the partial sums of the received rows go back in one
 *             all-to-all-v, the own rows' partials are already beside them,
 *             and the kernel table sums each token's rows in destination-rank
 *             order (the CPU transports' order and bits).
 *
 * Two tables over one set of functions, by the EP comm's backend:
 *   "nccl"        the all-to-all-v runs on the device buffers (NCCL grouped
 *                 send/recv): ranks on distinct GPUs;
 *   "mpi-staged"  the EP comm is MPI on host memory: the packed rows and the
 *                 partial sums cross through host buffers (one copy each
 *                 side). Any layout, also several ranks on one GPU, where
 *                 NCCL refuses to run.
 * No host loop touches activations; the plan is O(U x k) host work. */
#include <string.h>

#include "moe_internal.h"

typedef struct moe_dr {
    bool staged;              /* the EP comm is MPI: through host buffers      */
    /* device (the pool) */
    float *send;              /* (Um*D, S) packed rows, destination order      */
    float *recv;              /* (ep*Um, S) received rows, source order        */
    float *part;              /* (ep*Um, H) their partial sums                 */
    float *comb;              /* (Um*D, H) partials back from the peers, then
                                 the own rows' partials (rows so ...)          */
    moe_devplan plan;         /* the step's plan (devplan.c)                   */
    /* host */
    float *stage_s, *stage_r; /* staged: (Um*D, S) and (ep*Um, S) host rows    */
    int64_t *sc, *sd, *rc, *rd; /* [ep] all-to-all-v counts / displs (elements) */
    int64_t *srow, *rrow;     /* [ep] first row per peer (own rank: none)      */
    int64_t so, ro, own;      /* rows to peers, from peers, kept here          */
} moe_dr;

static moe_dr *state(const dpep_moe *m) { return (moe_dr *)m->tr_state; }

static bool comm_staged(const dpep_moe *m)
{
    return dpep_comm_backend_of(m->cfg.ep) != DPEP_COMM_NCCL;
}

static void dr_carve(dpep_moe *m, dpep_arena *a, dpep_arena *h)
{
    const int64_t H = m->H, S = m->S, Um = m->Um, ep = m->ep_size, D = m->D;
    moe_dr *s = DPEP_ARENA_TAKE(h, moe_dr, 1), t;
    memset(&t, 0, sizeof t);
    t.staged = comm_staged(m);
    t.send = DPEP_ARENA_TAKE(a, float, Um * D * S);
    t.recv = DPEP_ARENA_TAKE(a, float, ep * Um * S);
    t.part = DPEP_ARENA_TAKE(a, float, ep * Um * H);
    t.comb = DPEP_ARENA_TAKE(a, float, Um * D * H);
    moe_devplan_carve(m, &t.plan, a, h);
    if (t.staged) {
        t.stage_s = DPEP_ARENA_TAKE(h, float, Um * D * S);
        t.stage_r = DPEP_ARENA_TAKE(h, float, ep * Um * S);
    }
    t.sc = DPEP_ARENA_TAKE(h, int64_t, ep);
    t.sd = DPEP_ARENA_TAKE(h, int64_t, ep);
    t.rc = DPEP_ARENA_TAKE(h, int64_t, ep);
    t.rd = DPEP_ARENA_TAKE(h, int64_t, ep);
    t.srow = DPEP_ARENA_TAKE(h, int64_t, ep);
    t.rrow = DPEP_ARENA_TAKE(h, int64_t, ep);
    m->tr_state = s;
    if (s) *s = t;
}

/* One all-to-all-v of `dt` elements between device buffers: straight on an
 * NCCL comm; through the host buffers hs/hr over MPI (n_send / n_recv
 * elements in all, packed from 0). */
static dpep_status exchange(dpep_moe *m, const void *send, int64_t n_send, void *recv,
                            int64_t n_recv, float *hs, float *hr)
{
    moe_dr *s = state(m);
    const size_t w = sizeof(float); /* I32 and F32 alike */
    if (!s->staged)
        return dpep_comm_alltoallv(m->cfg.ep, send, s->sc, s->sd, recv, s->rc, s->rd,
                                   DPEP_COMM_I32);
    DPEP_TRY(moe_to_host(m, hs, send, (size_t)n_send * w));
    DPEP_TRY(dpep_comm_alltoallv(m->cfg.ep, hs, s->sc, s->sd, hr, s->rc, s->rd, DPEP_COMM_I32));
    return moe_to_dev(m, recv, hr, (size_t)n_recv * w);
}

/* The counts, one int64 per peer, over the EP comm's MPI communicator
 * (host memory whatever the data backend), under its watchdog. */
static dpep_status exchange_counts(dpep_moe *m)
{
    dpep_comm *c = m->cfg.ep;
    dpep_comm_watch_begin(c, "moe dispatch counts", false);
    int rc = MPI_Alltoall(m->tok_send, 1, MPI_INT64_T, m->tok_recv, 1, MPI_INT64_T,
                          dpep_comm_mpi(c));
    dpep_comm_watch_end(c);
    if (rc != MPI_SUCCESS) {
        DPEP_ERROR("moe: dispatch: the count exchange over the EP comm failed (MPI error %d)", rc);
        return DPEP_ERR_MPI;
    }
    return DPEP_OK;
}

static dpep_status dr_dispatch(dpep_moe *m)
{
    moe_dr *s = state(m);
    moe_devplan *p = &s->plan;
    const int ep = m->ep_size, me = m->ep_rank, k = m->k, D = m->D;
    const int64_t S = m->S, H = m->H, U = m->U;
    DPEP_TRY(moe_devplan_ids(m, p));
    DPEP_TRY(exchange_counts(m));
    int64_t so = 0, ro = 0;
    for (int r = 0; r < ep; r++) {
        s->srow[r] = so;
        s->rrow[r] = ro;
        if (r == me) continue;
        if (m->tok_recv[r] < 0 || m->tok_recv[r] > m->Um) {
            DPEP_ERROR("moe: dispatch: EP rank %d sends %lld rows, at most %lld per rank "
                       "(max_tokens differs between ranks?)", r, (long long)m->tok_recv[r],
                       (long long)m->Um);
            return DPEP_ERR_INTERNAL;
        }
        so += m->tok_send[r];
        ro += m->tok_recv[r];
    }
    const int64_t own = m->tok_send[me];
    s->so = so;
    s->ro = ro;
    s->own = own;
    for (int r = 0; r < ep; r++) m->row0[r] = s->srow[r];
    DPEP_TRY(moe_devplan_layout(m, p, so, own));
    /* rows for the peers into the send buffer, destination order; token
     * t's partial rows in comb, destination-rank order, own rows' partials
     * after the peers' (rows so ...) */
    for (int64_t g = 0; g < so; g++) p->dst[g] = s->send + g * S;
    for (int64_t t = 0; t < U; t++) {
        const int32_t *tr = m->tok_r + t * D, *ti = m->tok_i + t * D;
        for (int j = 0; j < m->tok_n[t]; j++)
            p->src[t * D + j] =
                s->comb + (tr[j] == me ? so + ti[j] : s->srow[tr[j]] + ti[j]) * H;
    }
    DPEP_TRY(moe_devplan_upload(m, p));
    if (so > 0)
        m->kern->pack_rows(p->dst_d, m->ux, m->ux_ld, m->uw, m->um_ld, p->row_tok_d,
                           p->row_slot_d, so, (int)H, k);
    DPEP_TRY(moe_kern_status(m->kern));
    for (int r = 0; r < ep; r++) {
        s->sc[r] = r == me ? 0 : m->tok_send[r] * S;
        s->sd[r] = s->srow[r] * S;
        s->rc[r] = r == me ? 0 : m->tok_recv[r] * S;
        s->rd[r] = s->rrow[r] * S;
    }
    DPEP_TRY(exchange(m, s->send, so * S, s->recv, ro * S, s->stage_s, s->stage_r));
    for (int r = 0; r < ep; r++)
        m->seg[r] = r == me ? moe_devplan_own_rows(m, p, s->comb + so * H, own)
                            : moe_packed_rows(m, s->recv + s->rrow[r] * S,
                                              s->part + s->rrow[r] * H, m->tok_recv[r]);
    m->n_seg = ep;
    m->n_rows = ro + own;
    moe_a2a_dispatch_stats(m, so + own, ro + own);
    return DPEP_OK;
}

static dpep_status dr_combine(dpep_moe *m, float *acc)
{
    moe_dr *s = state(m);
    const int ep = m->ep_size, me = m->ep_rank;
    const int64_t H = m->H;
    for (int r = 0; r < ep; r++) {
        s->sc[r] = r == me ? 0 : m->tok_recv[r] * H;
        s->sd[r] = s->rrow[r] * H;
        s->rc[r] = r == me ? 0 : m->tok_send[r] * H;
        s->rd[r] = s->srow[r] * H;
    }
    /* staged: the partials leave through stage_r, come back through
     * stage_s (H <= S: they fit) */
    DPEP_TRY(exchange(m, s->part, s->ro * H, s->comb, s->so * H, s->stage_r, s->stage_s));
    m->st.combine_bytes_sent = m->st.rows_recv * H * (int64_t)sizeof(float);
    m->st.combine_bytes_recv = m->st.rows_sent * H * (int64_t)sizeof(float);
    if (m->U > 0)
        m->kern->sum_rows(acc, s->plan.src_d, s->plan.cnt_d, m->U, (int)H, m->D);
    return moe_kern_status(m->kern);
}

/* One set of functions, named by the EP comm's backend. */
#define DEVROWS_OPS(NAME)                                                      \
    {                                                                          \
        .name = NAME, .packed_union = false, .alltoall_rows = true,            \
        .dense_ids = true, .carve = dr_carve, .connect = NULL,                 \
        .dispatch = dr_dispatch, .announce = NULL, .combine = dr_combine,      \
        .free = NULL,                                                          \
    }
const moe_transport_ops moe_transport_nccl = DEVROWS_OPS("nccl");
const moe_transport_ops moe_transport_staged = DEVROWS_OPS("mpi-staged");
