/* a2a_rows.c — what the alltoall transports (transport_shm.c,
 * transport_mpi.c) share: each token's destination ranks, the one pass that
 * writes its rows [x | local slot ids | weights] wherever the transport says
 * (row_base/row0), this rank's own rows read in place, and combine's
 * summation of the partial rows in destination-rank order. Host loops. */
#include <string.h>

#include "moe_internal.h"

void moe_a2a_carve(dpep_moe *m, dpep_arena *a)
{
    const int64_t Um = m->Um, ep = m->ep_size;
    m->tok_r = DPEP_ARENA_TAKE(a, int32_t, Um * m->D);
    m->tok_i = DPEP_ARENA_TAKE(a, int32_t, Um * m->D);
    m->tok_n = DPEP_ARENA_TAKE(a, int32_t, Um);
    m->self_slot = DPEP_ARENA_TAKE(a, int32_t, Um * m->k);
    m->self_tok = DPEP_ARENA_TAKE(a, int32_t, Um);
    m->row_base = DPEP_ARENA_TAKE(a, float *, ep);
    m->row0 = DPEP_ARENA_TAKE(a, int64_t, ep);
    m->src_base = DPEP_ARENA_TAKE(a, const float *, ep);
    m->src0 = DPEP_ARENA_TAKE(a, int64_t, ep);
    m->tok_send = DPEP_ARENA_TAKE(a, int64_t, ep);
    m->tok_recv = DPEP_ARENA_TAKE(a, int64_t, ep);
    m->stamp = DPEP_ARENA_TAKE(a, int64_t, ep);
    m->fill = DPEP_ARENA_TAKE(a, int64_t, ep);
}

void moe_a2a_count(dpep_moe *m, const int32_t *ids, int64_t ld)
{
    const int k = m->k, ep = m->ep_size;
    const int *prank = m->pl.rank;
    for (int r = 0; r < ep; r++) {
        m->tok_send[r] = 0;
        m->stamp[r] = -1;
    }
    for (int64_t t = 0; t < m->U; t++) {
        const int32_t *id = ids + t * ld;
        for (int j = 0; j < k; j++) {
            int r = prank[id[j]];
            if (m->stamp[r] != t) {
                m->stamp[r] = t;
                m->tok_send[r]++;
            }
        }
    }
    for (int r = 0; r < ep; r++) m->stamp[r] = -1;
}

/* The pass of write_rows and plan: with row_tok NULL the rows for other
 * ranks are written at row_base (activations and weights read from
 * ux/uw), else only their tokens and slot ids are recorded. */
static void rows_pass(dpep_moe *m, const int32_t *ids, int64_t ld, int32_t *row_tok,
                      int32_t *row_slot, int32_t *self_tok, int32_t *self_slot)
{
    const int H = m->H, k = m->k, ep = m->ep_size, D = m->D, me = m->ep_rank;
    const int64_t S = m->S;
    const int *prank = m->pl.rank, *pslot = m->pl.slot;
    int64_t *fill = m->fill;
    for (int r = 0; r < ep; r++) fill[r] = 0;
    for (int64_t t = 0; t < m->U; t++) {
        const int32_t *id = ids + t * ld;
        int32_t *tr = m->tok_r + t * D, *ti = m->tok_i + t * D;
        int n = 0;
        for (int j = 0; j < k; j++) {
            int r = prank[id[j]];
            if (m->stamp[r] == t) continue;
            m->stamp[r] = t;
            int64_t i = fill[r]++;
            int32_t *sl;
            if (r == me) {
                /* own rows stay where they are: their token and slot ids */
                self_tok[i] = (int32_t)t;
                sl = self_slot + i * k;
            } else if (row_tok) {
                const int64_t g = m->row0[r] + i;
                row_tok[g] = (int32_t)t;
                sl = row_slot + g * k;
            } else {
                float *row = m->row_base[r] + (m->row0[r] + i) * S;
                memcpy(row, m->ux + t * m->ux_ld, sizeof(float) * (size_t)H);
                sl = moe_row_slot(row, H);
                memcpy(moe_row_w(row, H, k), m->uw + t * m->um_ld, sizeof(float) * (size_t)k);
            }
            for (int q = 0; q < k; q++) sl[q] = prank[id[q]] == r ? pslot[id[q]] : -1;
            /* insertion by rank: the summation order is the rank order */
            int p = n++;
            while (p > 0 && tr[p - 1] > r) {
                tr[p] = tr[p - 1];
                ti[p] = ti[p - 1];
                p--;
            }
            tr[p] = r;
            ti[p] = (int32_t)i;
        }
        m->tok_n[t] = n;
    }
}

void moe_a2a_write_rows(dpep_moe *m)
{
    rows_pass(m, m->uidx, m->um_ld, NULL, NULL, m->self_tok, m->self_slot);
}

void moe_a2a_plan(dpep_moe *m, const int32_t *ids, int64_t ld, int32_t *row_tok,
                  int32_t *row_slot, int32_t *self_tok, int32_t *self_slot)
{
    rows_pass(m, ids, ld, row_tok, row_slot, self_tok, self_slot);
}

moe_rows moe_a2a_own_rows(const dpep_moe *m, float *part)
{
    moe_rows q = {.x = m->ux, .tok = m->self_tok, .ldx = m->ux_ld, .slot = m->self_slot,
                  .ld_slot = m->k, .w = m->uw, .ld_w = m->um_ld, .part = part,
                  .n = m->tok_send[m->ep_rank]};
    return q;
}

void moe_a2a_dispatch_stats(dpep_moe *m, int64_t so, int64_t ro)
{
    const int64_t row_bytes = m->S * (int64_t)sizeof(float);
    for (int r = 0; r < m->ep_size; r++) {
        m->bytes_send[r] = m->tok_send[r] * row_bytes;
        m->bytes_recv[r] = m->tok_recv[r] * row_bytes;
    }
    m->st.rows_sent = so;
    m->st.rows_recv = ro;
    m->st.dispatch_bytes_sent = so * row_bytes;
    m->st.dispatch_bytes_recv = ro * row_bytes;
}

/* dst = src[0] + src[1] + ... + src[n-1], left to right, n >= 1. Blocks of
 * MOE_SUM_BLOCK floats stay in registers while the sources stream past:
 * each source row is read once and dst written once. */
void moe_sum_rows_host(float *restrict dst, const float *const *src, int n, int H)
{
    int h = 0;
    for (; h + MOE_SUM_BLOCK <= H; h += MOE_SUM_BLOCK) {
        float acc[MOE_SUM_BLOCK];
        const float *restrict s0 = src[0] + h;
        for (int q = 0; q < MOE_SUM_BLOCK; q++) acc[q] = s0[q];
        for (int j = 1; j < n; j++) {
            const float *restrict sj = src[j] + h;
            for (int q = 0; q < MOE_SUM_BLOCK; q++) acc[q] += sj[q];
        }
        for (int q = 0; q < MOE_SUM_BLOCK; q++) dst[h + q] = acc[q];
    }
    for (; h < H; h++) {
        float a = src[0][h];
        for (int j = 1; j < n; j++) a += src[j][h];
        dst[h] = a;
    }
}

void moe_a2a_sum_partials(dpep_moe *m, float *acc)
{
    const int H = m->H, D = m->D;
    const float *src[DPEP_MOE_MAX_TOPK];
    for (int64_t t = 0; t < m->U; t++) {
        float *dst = acc + t * H;
        const int n = m->tok_n[t];
        const int32_t *tr = m->tok_r + t * D, *ti = m->tok_i + t * D;
        if (n == 0) {
            memset(dst, 0, sizeof(float) * (size_t)H);
            continue;
        }
        for (int j = 0; j < n; j++) src[j] = m->src_base[tr[j]] + (m->src0[tr[j]] + ti[j]) * H;
        moe_sum_rows_host(dst, src, n, H);
    }
}
