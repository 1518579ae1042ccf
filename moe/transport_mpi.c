/* transport_mpi.c — the alltoall transport over MPI (any EP group): a count
 * exchange (all-to-all-v of one int64 per peer), one packing pass into a
 * send buffer (own rows excepted: the experts read them in place),
 * dpep_comm_alltoallv; combine is the reverse all-to-all-v of the partial
 * sums and the summation pass of a2a_rows.c. Two copies each way. */
#include "moe_internal.h"

typedef struct moe_mpi {
    float *send;            /* (Um*D, S) packed rows, destination order     */
    float *recv;            /* (ep*Um, S) received rows                     */
    float *part;            /* (ep*Um, H) partial sums of the received rows */
    float *comb;            /* (Um*D, H) partial sums coming back           */
    int64_t *sc, *sd, *rc, *rd; /* [ep] alltoallv counts/displs (elements)  */
    int64_t *srow, *rrow;   /* [ep] first row per peer, send / receive      */
    int64_t *one, *seq;     /* [ep] 1s and 0..ep-1 (the count exchange)     */
} moe_mpi;

static moe_mpi *state(const dpep_moe *m) { return (moe_mpi *)m->tr_state; }

static void mpi_carve(dpep_moe *m, dpep_arena *a, dpep_arena *h)
{
    (void)h; /* host kernels only: h is a */
    const int64_t H = m->H, S = m->S, Um = m->Um, ep = m->ep_size;
    moe_mpi *s = DPEP_ARENA_TAKE(a, moe_mpi, 1), t;
    t.send = DPEP_ARENA_TAKE(a, float, Um * m->D * S);
    t.recv = DPEP_ARENA_TAKE(a, float, ep * Um * S);
    t.part = DPEP_ARENA_TAKE(a, float, ep * Um * H);
    t.comb = DPEP_ARENA_TAKE(a, float, Um * m->D * H);
    t.sc = DPEP_ARENA_TAKE(a, int64_t, ep);
    t.sd = DPEP_ARENA_TAKE(a, int64_t, ep);
    t.rc = DPEP_ARENA_TAKE(a, int64_t, ep);
    t.rd = DPEP_ARENA_TAKE(a, int64_t, ep);
    t.srow = DPEP_ARENA_TAKE(a, int64_t, ep);
    t.rrow = DPEP_ARENA_TAKE(a, int64_t, ep);
    t.one = DPEP_ARENA_TAKE(a, int64_t, ep);
    t.seq = DPEP_ARENA_TAKE(a, int64_t, ep);
    m->tr_state = s;
    if (!s) return; /* counting pass */
    *s = t;
    for (int64_t i = 0; i < ep; i++) {
        s->one[i] = 1;
        s->seq[i] = i;
    }
}

/* Counts first, so that the receive layout is exact; rows packed in
 * destination order, then one all-to-all-v. */
static dpep_status mpi_dispatch(dpep_moe *m)
{
    moe_mpi *s = state(m);
    const int ep = m->ep_size, me = m->ep_rank;
    const int64_t S = m->S;
    moe_a2a_count(m, m->uidx, m->um_ld);
    DPEP_TRY(dpep_comm_alltoallv(m->cfg.ep, m->tok_send, s->one, s->seq, m->tok_recv, s->one,
                                 s->seq, DPEP_COMM_I64));
    int64_t so = 0, ro = 0;
    for (int r = 0; r < ep; r++) {
        s->srow[r] = so;
        s->rrow[r] = ro;
        so += m->tok_send[r];
        ro += m->tok_recv[r];
        s->sc[r] = r == me ? 0 : m->tok_send[r] * S;
        s->sd[r] = s->srow[r] * S;
        s->rc[r] = r == me ? 0 : m->tok_recv[r] * S;
        s->rd[r] = s->rrow[r] * S;
    }
    if (ro > (int64_t)ep * m->Um) {
        DPEP_ERROR("moe: dispatch: %lld rows to receive, the pool holds %lld (a rank passed more "
                   "than max_tokens)", (long long)ro, (long long)ep * m->Um);
        return DPEP_ERR_INTERNAL;
    }
    for (int r = 0; r < ep; r++) {
        m->row_base[r] = s->send; /* unused for r == me */
        m->row0[r] = s->srow[r];
    }
    moe_a2a_write_rows(m);
    DPEP_TRY(dpep_comm_alltoallv(m->cfg.ep, s->send, s->sc, s->sd, s->recv, s->rc, s->rd,
                                 DPEP_COMM_I32));
    for (int r = 0; r < ep; r++)
        m->seg[r] = r == me ? moe_a2a_own_rows(m, s->part + s->rrow[me] * m->H)
                            : moe_packed_rows(m, s->recv + s->rrow[r] * S,
                                              s->part + s->rrow[r] * m->H, m->tok_recv[r]);
    m->n_seg = ep;
    m->n_rows = ro;
    moe_a2a_dispatch_stats(m, so, ro);
    return DPEP_OK;
}

/* The reverse of dispatch, H floats per row; own rows stay here. */
static dpep_status mpi_combine(dpep_moe *m, float *acc)
{
    moe_mpi *s = state(m);
    const int64_t H = m->H;
    const int ep = m->ep_size, me = m->ep_rank;
    for (int r = 0; r < ep; r++) {
        s->sc[r] = r == me ? 0 : m->tok_recv[r] * H;
        s->sd[r] = s->rrow[r] * H;
        s->rc[r] = r == me ? 0 : m->tok_send[r] * H;
        s->rd[r] = s->srow[r] * H;
    }
    DPEP_TRY(dpep_comm_alltoallv(m->cfg.ep, s->part, s->sc, s->sd, s->comb, s->rc, s->rd,
                                 DPEP_COMM_F32));
    m->st.combine_bytes_sent = m->st.rows_recv * H * (int64_t)sizeof(float);
    m->st.combine_bytes_recv = m->st.rows_sent * H * (int64_t)sizeof(float);
    for (int r = 0; r < ep; r++) {
        m->src_base[r] = r == me ? s->part : s->comb;
        m->src0[r] = r == me ? s->rrow[me] : s->srow[r];
    }
    moe_a2a_sum_partials(m, acc);
    return DPEP_OK;
}

const moe_transport_ops moe_transport_mpi = {
    .name = "mpi",
    .packed_union = false,
    .alltoall_rows = true,
    .carve = mpi_carve,
    .connect = NULL,
    .dispatch = mpi_dispatch,
    .announce = NULL,
    .combine = mpi_combine,
    .free = NULL,
};
