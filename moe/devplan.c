/* devplan.c — what the device transports (transport_devrows.c,
 * transport_ipc.c) share: the step's expert ids brought to the host and
 * checked, the plan laid out in one host block (row destinations and the
 * combine's source rows as device addresses, each row's token and slot
 * ids, the own rows, the per-token counts), and its one copy to the
 * device. The transport fills in the addresses (where its rows go, where
 * its partial sums are) between layout and upload. */
#include <string.h>

#include "moe_internal.h"

void moe_devplan_carve(dpep_moe *m, moe_devplan *p, dpep_arena *a, dpep_arena *h)
{
    const int64_t Um = m->Um, D = m->D, k = m->k, ep = m->ep_size;
    memset(p, 0, sizeof *p);
    /* rows planned per step: at most D per token (own ones included) */
    p->cap = (size_t)(2 * Um * D) * sizeof(void *) + (size_t)ep * sizeof(int64_t) +
             (size_t)(Um * D * (k + 1) + Um) * sizeof(int32_t);
    p->h = DPEP_ARENA_TAKE(h, unsigned char, p->cap);
    p->d = DPEP_ARENA_TAKE(a, unsigned char, p->cap);
    p->ids_h = DPEP_ARENA_TAKE(h, int32_t, Um * k);
}

dpep_status moe_devplan_ids(dpep_moe *m, moe_devplan *p)
{
    const int k = m->k;
    const int64_t n = m->U * k;
    DPEP_TRY(moe_to_host(m, p->ids_h, m->uid_c, sizeof(int32_t) * (size_t)(n > 0 ? n : 0)));
    for (int64_t i = 0; i < n; i++)
        if (p->ids_h[i] < 0 || p->ids_h[i] >= m->cfg.gate.n_experts) {
            DPEP_ERROR("moe: dispatch: token %lld: expert id %d out of [0, %d) (gate output "
                       "corrupted?)", (long long)(i / k), (int)p->ids_h[i],
                       m->cfg.gate.n_experts);
            return DPEP_ERR_INTERNAL;
        }
    moe_a2a_count(m, p->ids_h, k);
    return DPEP_OK;
}

dpep_status moe_devplan_layout(dpep_moe *m, moe_devplan *p, int64_t so, int64_t own)
{
    const int64_t U = m->U, D = m->D, k = m->k, ep = m->ep_size;
    /* pointers first (8-byte aligned at the block's start), then int64, int32 */
    p->bytes = (size_t)(so + U * D) * sizeof(void *) + (size_t)ep * sizeof(int64_t) +
               (size_t)((so + own) * (k + 1) + U) * sizeof(int32_t);
    if (p->bytes > p->cap) {
        DPEP_ERROR("moe: dispatch: plan of %zu bytes over its %zu (internal)", p->bytes, p->cap);
        return DPEP_ERR_INTERNAL;
    }
    p->dst = (float **)(void *)p->h;
    p->src = (const float **)(void *)(p->dst + so);
    p->cnt_val = (int64_t *)(void *)(p->src + U * D);
    p->row_tok = (int32_t *)(void *)(p->cnt_val + ep);
    p->row_slot = p->row_tok + so;
    p->self_tok = p->row_slot + so * k;
    p->self_slot = p->self_tok + own;
    p->cnt = p->self_slot + own * k;
    moe_a2a_plan(m, p->ids_h, k, p->row_tok, p->row_slot, p->self_tok, p->self_slot);
    for (int64_t t = 0; t < U; t++) p->cnt[t] = m->tok_n[t];
    return DPEP_OK;
}

dpep_status moe_devplan_upload(dpep_moe *m, moe_devplan *p)
{
    DPEP_TRY(moe_to_dev(m, p->d, p->h, p->bytes));
#define ON_DEV(q) ((void *)(p->d + ((const unsigned char *)(q) - p->h)))
    p->dst_d = (float *const *)ON_DEV(p->dst);
    p->src_d = (const float *const *)ON_DEV(p->src);
    p->cnt_val_d = (const int64_t *)ON_DEV(p->cnt_val);
    p->row_tok_d = (const int32_t *)ON_DEV(p->row_tok);
    p->row_slot_d = (const int32_t *)ON_DEV(p->row_slot);
    p->self_tok_d = (const int32_t *)ON_DEV(p->self_tok);
    p->self_slot_d = (const int32_t *)ON_DEV(p->self_slot);
    p->cnt_d = (const int32_t *)ON_DEV(p->cnt);
#undef ON_DEV
    return DPEP_OK;
}

moe_rows moe_devplan_own_rows(const dpep_moe *m, const moe_devplan *p, float *part, int64_t own)
{
    moe_rows q = {.x = m->ux, .tok = p->self_tok_d, .ldx = m->ux_ld, .slot = p->self_slot_d,
                  .ld_slot = m->k, .w = m->uw, .ld_w = m->um_ld, .part = part, .n = own};
    return q;
}
