/* transport_device.c — the device-local transport: one EP rank whose rows
 * and partial sums are device memory (picked for device_only kernel tables,
 * moe.c: pick_transport). Dispatch moves nothing: the experts read the
 * caller's x, expert ids and weights in place (slot id = expert id: create
 * refuses a placement that permutes slots); they write their partial sums
 * into this transport's buffer, which combine copies to the output through
 * the kernel table. No host loop touches step data, and nothing here waits
 * for the device.
 *
 * Multi-rank GPU dispatch (NCCL, CUDA IPC) is a transport of its own. */
#include "moe_internal.h"

/* m->tr_state: the partial sums (Um, H), device memory (never read on the
 * host). */
static void device_carve(dpep_moe *m, dpep_arena *a, dpep_arena *h)
{
    (void)h; /* nothing on the host */
    m->tr_state = DPEP_ARENA_TAKE(a, float, m->Um * (int64_t)m->H);
}

static dpep_status device_dispatch(dpep_moe *m)
{
    if (m->ep_size != 1 || m->tp_size != 1) {
        DPEP_ERROR("moe: device transport: ep %d, moe_tp %d (one rank only)", m->ep_size,
                   m->tp_size);
        return DPEP_ERR_INTERNAL;
    }
    const int64_t U = m->U;
    moe_rows q = {.x = m->ux, .tok = NULL, .ldx = m->ux_ld, .slot = m->uidx,
                  .ld_slot = m->um_ld, .w = m->uw, .ld_w = m->um_ld,
                  .part = (float *)m->tr_state, .n = U};
    m->seg[0] = q;
    m->n_seg = 1;
    m->n_rows = U;
    /* the stats of the mpi transport at ep = 1: every token is one row for
     * this rank (k >= 1), none leaves it */
    const int64_t row_bytes = m->S * (int64_t)sizeof(float);
    m->bytes_send[0] = m->bytes_recv[0] = U * row_bytes;
    m->st.rows_sent = m->st.rows_recv = U;
    m->st.dispatch_bytes_sent = m->st.dispatch_bytes_recv = U * row_bytes;
    return DPEP_OK;
}

static dpep_status device_combine(dpep_moe *m, float *acc)
{
    const int64_t n = m->U * (int64_t)m->H;
    m->st.combine_bytes_sent = m->st.combine_bytes_recv = n * (int64_t)sizeof(float);
    moe_copy(m->kern, acc, (const float *)m->tr_state, n);
    return DPEP_OK;
}

const moe_transport_ops moe_transport_device = {
    .name = "device",
    .packed_union = false,
    .alltoall_rows = false,
    .carve = device_carve,
    .connect = NULL,
    .dispatch = device_dispatch,
    .announce = NULL,
    .combine = device_combine,
    .free = NULL,
};
