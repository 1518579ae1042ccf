/* transport_allgather.c — the all-gather path (SGLang's `none`; backend
 * DPEP_A2A_ALLGATHER): every EP rank gathers the group's packed rows
 * (padded to the largest union), runs its local experts on all of them,
 * and combine reduce-scatters the partial sums back. The union sizes go
 * over MPI on the host; the rows, their slot ids (remapped by the kernel
 * table) and the partial sums stay in the device's memory, so on a GPU the
 * EP comm is a device comm (NCCL or mpi-staged). */
#include <string.h>

#include "moe_internal.h"

typedef struct moe_ag {
    float *recv;                /* (ep*Um, S) the group's rows (device)      */
    float *part;                /* (ep*Um, H) their partial sums (device)    */
    int64_t *ep_U;              /* [ep] union size of each EP rank (host)    */
    int64_t *ep_U_d;            /* [ep] the same on the device               */
    int32_t *map_h, *map_d;     /* [E] logical expert -> local slot, or -1   */
    bool map_ready;             /* map_d sent (first dispatch)               */
    int64_t Upad;               /* this step's largest union                 */
} moe_ag;

static moe_ag *state(const dpep_moe *m) { return (moe_ag *)m->tr_state; }

static void ag_carve(dpep_moe *m, dpep_arena *a, dpep_arena *h)
{
    const int64_t ep = m->ep_size, E = m->cfg.gate.n_experts;
    moe_ag *s = DPEP_ARENA_TAKE(h, moe_ag, 1), t;
    memset(&t, 0, sizeof t);
    t.recv = DPEP_ARENA_TAKE(a, float, ep * m->Um * m->S);
    t.part = DPEP_ARENA_TAKE(a, float, ep * m->Um * m->H);
    t.ep_U = DPEP_ARENA_TAKE(h, int64_t, ep);
    t.ep_U_d = DPEP_ARENA_TAKE(a, int64_t, ep);
    t.map_h = DPEP_ARENA_TAKE(h, int32_t, E);
    t.map_d = DPEP_ARENA_TAKE(a, int32_t, E);
    m->tr_state = s;
    if (s) *s = t;
}

static dpep_status ag_dispatch(dpep_moe *m)
{
    moe_ag *s = state(m);
    const int H = m->H, k = m->k, ep = m->ep_size;
    const int64_t S = m->S, row_bytes = S * (int64_t)sizeof(float);
    if (!s->map_ready) {
        for (int e = 0; e < m->cfg.gate.n_experts; e++)
            s->map_h[e] = m->pl.rank[e] == m->ep_rank ? m->pl.slot[e] : -1;
        DPEP_TRY(moe_to_dev(m, s->map_d, s->map_h, sizeof(int32_t) * (size_t)m->cfg.gate.n_experts));
        s->map_ready = true;
    }
    int64_t myU = m->U;
    DPEP_TRY(moe_host_allgather_i64(m->cfg.ep, myU, s->ep_U));
    int64_t Upad = 0;
    for (int r = 0; r < ep; r++) Upad = moe_imax64(Upad, s->ep_U[r]);
    if (Upad > m->Um) {
        DPEP_ERROR("moe: allgather: an EP rank holds %lld tokens, at most %lld (max_tokens "
                   "differs between ranks?)", (long long)Upad, (long long)m->Um);
        return DPEP_ERR_INTERNAL;
    }
    DPEP_TRY(dpep_comm_allgather(m->cfg.ep, m->ubuf, s->recv, Upad * S, DPEP_COMM_I32));
    /* logical expert ids -> this rank's slots (-1 elsewhere, and on padding) */
    DPEP_TRY(moe_to_dev(m, s->ep_U_d, s->ep_U, sizeof(int64_t) * (size_t)ep));
    m->kern->remap_slots(s->recv, ep, Upad, s->ep_U_d, s->map_d, H, k);
    DPEP_TRY(moe_kern_status(m->kern));
    s->Upad = Upad;
    m->n_rows = (int64_t)ep * Upad;
    m->n_seg = 1;
    m->seg[0] = moe_packed_rows(m, s->recv, s->part, m->n_rows);
    for (int r = 0; r < ep; r++) {
        m->bytes_send[r] = myU * row_bytes;
        m->bytes_recv[r] = s->ep_U[r] * row_bytes;
    }
    m->st.rows_sent = myU * ep;
    m->st.rows_recv = m->n_rows;
    m->st.dispatch_bytes_sent = Upad * row_bytes * ep;
    m->st.dispatch_bytes_recv = Upad * row_bytes * ep;
    return DPEP_OK;
}

/* Reduce-scatter of the partial sums: this rank's union rows in uout. */
static dpep_status ag_combine(dpep_moe *m, float *acc)
{
    moe_ag *s = state(m);
    const int64_t H = m->H, blk_bytes = s->Upad * H * (int64_t)sizeof(float);
    DPEP_TRY(dpep_comm_reduce_scatter(m->cfg.ep, s->part, m->uout, s->Upad * H, DPEP_COMM_F32));
    m->st.combine_bytes_sent = blk_bytes * m->ep_size;
    m->st.combine_bytes_recv = blk_bytes * m->ep_size;
    if (acc != m->uout) moe_copy(m->kern, acc, m->uout, m->U * H);
    return moe_kern_status(m->kern);
}

const moe_transport_ops moe_transport_allgather = {
    .name = "allgather",
    .packed_union = true,
    .alltoall_rows = false,
    .carve = ag_carve,
    .connect = NULL,
    .dispatch = ag_dispatch,
    .announce = NULL,
    .combine = ag_combine,
    .free = NULL,
};
