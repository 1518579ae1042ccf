/* transport_allgather.c — the all-gather path (SGLang's `none`; backend
 * DPEP_A2A_ALLGATHER): every EP rank gathers the group's packed rows
 * (padded to the largest union), runs its local experts on all of them,
 * and combine reduce-scatters the partial sums back. */
#include <string.h>

#include "moe_internal.h"

typedef struct moe_ag {
    float *recv;                /* (ep*Um, S) the group's rows               */
    float *part;                /* (ep*Um, H) their partial sums here        */
    int64_t *ep_U;              /* [ep] union size of each EP rank           */
    int64_t Upad;               /* this step's largest union                 */
} moe_ag;

static moe_ag *state(const dpep_moe *m) { return (moe_ag *)m->tr_state; }

static void ag_carve(dpep_moe *m, dpep_arena *a, dpep_arena *h)
{
    (void)h; /* host kernels only: h is a */
    const int64_t ep = m->ep_size;
    moe_ag *s = DPEP_ARENA_TAKE(a, moe_ag, 1), t = {0};
    t.recv = DPEP_ARENA_TAKE(a, float, ep * m->Um * m->S);
    t.part = DPEP_ARENA_TAKE(a, float, ep * m->Um * m->H);
    t.ep_U = DPEP_ARENA_TAKE(a, int64_t, ep);
    m->tr_state = s;
    if (s) *s = t;
}

static dpep_status ag_dispatch(dpep_moe *m)
{
    moe_ag *s = state(m);
    const int H = m->H, k = m->k, ep = m->ep_size;
    const int64_t S = m->S, row_bytes = S * (int64_t)sizeof(float);
    int64_t myU = m->U;
    DPEP_TRY(dpep_comm_allgather(m->cfg.ep, &myU, s->ep_U, 1, DPEP_COMM_I64));
    int64_t Upad = 0;
    for (int r = 0; r < ep; r++) Upad = moe_imax64(Upad, s->ep_U[r]);
    DPEP_TRY(dpep_comm_allgather(m->cfg.ep, m->ubuf, s->recv, Upad * S, DPEP_COMM_I32));
    /* logical expert ids -> this rank's slots (-1 elsewhere, and on padding) */
    for (int r = 0; r < ep; r++)
        for (int64_t t = 0; t < Upad; t++) {
            int32_t *sl = moe_row_slot(s->recv + (r * Upad + t) * S, H);
            for (int j = 0; j < k; j++) {
                int e = t < s->ep_U[r] ? sl[j] : -1;
                sl[j] = (e >= 0 && m->pl.rank[e] == m->ep_rank) ? m->pl.slot[e] : -1;
            }
        }
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
    if (acc != m->uout && m->U) memcpy(acc, m->uout, sizeof(float) * (size_t)m->U * (size_t)H);
    return DPEP_OK;
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
