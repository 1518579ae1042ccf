/* kv_cache.c — the paged latent KV pool: one allocation per rank sized from a
 * byte budget, a free-page stack, and one page table per sequence slot. */
#include <stdlib.h>
#include <string.h>

#include "attn_internal.h"

dpep_status dpep_attn_kv_create(const dpep_model_config *m, const dpep_attn_kv_params *p,
                                dpep_attn_kv **out)
{
    if (!m || !p || !out) return DPEP_ERR_INVALID;
    int64_t max_len = p->max_seq_len > 0 ? p->max_seq_len : m->max_pos;
    if (p->n_layers < 1 || p->page_size < 1 || p->max_seqs < 1 || max_len < 1 ||
        m->kv_lora_rank < 1 || m->qk_rope < 0) {
        DPEP_ERROR("attn kv: invalid parameters: n_layers %d, page_size %d, max_seqs %d, "
                   "max_seq_len %lld (each must be >= 1)",
                   p->n_layers, p->page_size, p->max_seqs, (long long)max_len);
        return DPEP_ERR_INVALID;
    }
    int row = m->kv_lora_rank + m->qk_rope;
    size_t page_bytes = (size_t)p->n_layers * (size_t)p->page_size * (size_t)row * sizeof(float);
    int64_t n_pages = (int64_t)(p->budget_bytes / page_bytes);
    if (n_pages > INT32_MAX) n_pages = INT32_MAX;
    if (n_pages < 1) {
        DPEP_ERROR("attn kv: budget %zu B holds no page (one page of %d tokens x %d layers is %zu B)",
                   p->budget_bytes, p->page_size, p->n_layers, page_bytes);
        return DPEP_ERR_NOMEM;
    }
    dpep_attn_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return DPEP_ERR_NOMEM;
    kv->n_layers = p->n_layers;
    kv->page_size = p->page_size;
    kv->row = row;
    kv->kv_lora = m->kv_lora_rank;
    kv->rope = m->qk_rope;
    kv->n_pages = n_pages;
    kv->max_seqs = p->max_seqs;
    kv->max_seq_len = max_len;
    kv->max_pages_seq = (max_len + p->page_size - 1) / p->page_size;
    kv->pool = malloc(page_bytes * (size_t)n_pages);
    kv->free_list = malloc(sizeof(int32_t) * (size_t)n_pages);
    kv->pages = malloc(sizeof(int32_t) * (size_t)kv->max_pages_seq * (size_t)p->max_seqs);
    kv->n_seq_pages = malloc(sizeof(int64_t) * (size_t)p->max_seqs);
    kv->len = malloc(sizeof(int64_t) * (size_t)p->max_seqs);
    if (!kv->pool || !kv->free_list || !kv->pages || !kv->n_seq_pages || !kv->len) {
        DPEP_ERROR("attn kv: cannot allocate a pool of %zu B", page_bytes * (size_t)n_pages);
        dpep_attn_kv_destroy(kv);
        return DPEP_ERR_NOMEM;
    }
    /* stack popped from the end: pages are handed out in increasing order, so
     * a fresh pool gives a sequence contiguous pages (one BLAS call per run) */
    for (int64_t i = 0; i < n_pages; i++) kv->free_list[i] = (int32_t)(n_pages - 1 - i);
    kv->n_free = n_pages;
    for (int s = 0; s < p->max_seqs; s++) {
        kv->n_seq_pages[s] = -1;
        kv->len[s] = -1;
    }
    *out = kv;
    return DPEP_OK;
}

void dpep_attn_kv_destroy(dpep_attn_kv *kv)
{
    if (!kv) return;
    free(kv->pool);
    free(kv->free_list);
    free(kv->pages);
    free(kv->n_seq_pages);
    free(kv->len);
    free(kv);
}

size_t dpep_attn_kv_bytes_per_token(const dpep_attn_kv *kv)
{
    return (size_t)kv->n_layers * (size_t)kv->row * sizeof(float);
}

int64_t dpep_attn_kv_capacity_tokens(const dpep_attn_kv *kv) { return kv->n_pages * kv->page_size; }
int64_t dpep_attn_kv_free_tokens(const dpep_attn_kv *kv) { return kv->n_free * kv->page_size; }
size_t dpep_attn_kv_pool_bytes(const dpep_attn_kv *kv)
{
    return (size_t)kv->n_pages * (size_t)kv->page_size * dpep_attn_kv_bytes_per_token(kv);
}

dpep_status dpep_attn_kv_seq_open(dpep_attn_kv *kv, int *slot)
{
    for (int s = 0; s < kv->max_seqs; s++) {
        if (kv->n_seq_pages[s] < 0) {
            kv->n_seq_pages[s] = 0;
            kv->len[s] = 0;
            *slot = s;
            return DPEP_OK;
        }
    }
    return DPEP_ERR_NOMEM;
}

static bool slot_open(const dpep_attn_kv *kv, int slot)
{
    return slot >= 0 && slot < kv->max_seqs && kv->n_seq_pages[slot] >= 0;
}

dpep_status dpep_attn_kv_seq_reserve(dpep_attn_kv *kv, int slot, int64_t n_tokens)
{
    if (!slot_open(kv, slot)) {
        DPEP_ERROR("attn kv: slot %d is not open", slot);
        return DPEP_ERR_INVALID;
    }
    if (n_tokens < 0 || n_tokens > kv->max_seq_len) {
        DPEP_ERROR("attn kv: %lld tokens for slot %d (max_seq_len %lld)", (long long)n_tokens, slot,
                   (long long)kv->max_seq_len);
        return DPEP_ERR_INVALID;
    }
    int64_t need = (n_tokens + kv->page_size - 1) / kv->page_size - kv->n_seq_pages[slot];
    if (need <= 0) return DPEP_OK;
    if (need > kv->n_free) return DPEP_ERR_NOMEM; /* not logged: the scheduler's normal case */
    int32_t *pt = kv->pages + (int64_t)slot * kv->max_pages_seq;
    for (int64_t i = 0; i < need; i++) pt[kv->n_seq_pages[slot]++] = kv->free_list[--kv->n_free];
    return DPEP_OK;
}

dpep_status dpep_attn_kv_seq_close(dpep_attn_kv *kv, int slot)
{
    if (!slot_open(kv, slot)) return DPEP_ERR_INVALID;
    const int32_t *pt = kv->pages + (int64_t)slot * kv->max_pages_seq;
    /* pushed back in reverse so that the next sequence gets them in order */
    for (int64_t i = kv->n_seq_pages[slot] - 1; i >= 0; i--) kv->free_list[kv->n_free++] = pt[i];
    kv->n_seq_pages[slot] = -1;
    kv->len[slot] = -1;
    return DPEP_OK;
}

int64_t dpep_attn_kv_seq_len(const dpep_attn_kv *kv, int slot)
{
    return slot_open(kv, slot) ? kv->len[slot] : -1;
}

int64_t dpep_attn_kv_seq_capacity(const dpep_attn_kv *kv, int slot)
{
    return slot_open(kv, slot) ? kv->n_seq_pages[slot] * kv->page_size : -1;
}

const float *dpep_attn_kv_row(const dpep_attn_kv *kv, int slot, int layer, int64_t pos)
{
    if (!slot_open(kv, slot) || layer < 0 || layer >= kv->n_layers || pos < 0 ||
        pos >= kv->n_seq_pages[slot] * kv->page_size)
        return NULL;
    return dpep_attn_kv_row_(kv, slot, layer, pos);
}

dpep_status dpep_attn_kv_write(dpep_attn_kv *kv, int slot, int layer, int64_t pos0, int64_t n,
                               const float *rows)
{
    if (!slot_open(kv, slot) || layer < 0 || layer >= kv->n_layers || pos0 < 0 || n < 0 ||
        pos0 > kv->len[slot] || pos0 + n > kv->n_seq_pages[slot] * kv->page_size || (n && !rows)) {
        DPEP_ERROR("attn kv: cannot write %lld rows at %lld of slot %d layer %d", (long long)n,
                   (long long)pos0, slot, layer);
        return DPEP_ERR_INVALID;
    }
    for (int64_t i = 0; i < n; i++)
        memcpy(dpep_attn_kv_row_(kv, slot, layer, pos0 + i), rows + i * kv->row,
               sizeof(float) * (size_t)kv->row);
    if (pos0 + n > kv->len[slot]) kv->len[slot] = pos0 + n;
    return DPEP_OK;
}

double dpep_attn_kv_rank_bytes(const dpep_model_config *m, const dpep_layout *l, int64_t tokens,
                               double elem_bytes)
{
    double per_tok = (double)m->n_layers * (m->kv_lora_rank + m->qk_rope) *
                     (elem_bytes > 0 ? elem_bytes : 4.0);
    int attn_dp = l && l->attn_dp > 0 ? l->attn_dp : 1;
    return per_tok * (double)tokens / attn_dp;
}
