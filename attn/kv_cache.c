/* kv_cache.c — the paged latent KV pool: one allocation per rank on the
 * pool's device sized from a byte budget, a free-page stack, a reference
 * count per page (a page may sit in several page tables: shared prefixes),
 * and one page table per sequence slot. The bookkeeping is host memory. */
#include <stdlib.h>
#include <string.h>

#include "attn_internal.h"

/* The host arrays of the pool (free stack, refcounts, page tables, lengths)
 * carved from one block; a NULL base counts. */
static size_t carve_meta(dpep_attn_kv *kv, void *base)
{
    dpep_arena ar = dpep_arena_begin(base);
    kv->free_list = DPEP_ARENA_TAKE(&ar, int32_t, kv->n_pages);
    kv->refs = DPEP_ARENA_TAKE(&ar, int32_t, kv->n_pages);
    kv->pages = DPEP_ARENA_TAKE(&ar, int32_t, kv->max_pages_seq * kv->max_seqs);
    kv->n_seq_pages = DPEP_ARENA_TAKE(&ar, int64_t, kv->max_seqs);
    kv->len = DPEP_ARENA_TAKE(&ar, int64_t, kv->max_seqs);
    kv->wrow = DPEP_ARENA_TAKE(&ar, uint16_t, kv->row);
    return ar.off;
}

dpep_status dpep_attn_kv_create(const dpep_model_config *m, const dpep_attn_kv_params *p,
                                dpep_attn_kv **out)
{
    if (!m || !p || !out) return DPEP_ERR_INVALID;
    int64_t max_len = p->max_seq_len > 0 ? p->max_seq_len : m->max_pos;
    if (p->n_layers < 1 || p->page_size < 1 || p->max_seqs < 1 || max_len < 1 || p->extra_slots < 0 ||
        p->extra_slots > 1024 ||
        m->kv_lora_rank < 1 || m->qk_rope < 0) {
        DPEP_ERROR("attn kv: invalid parameters: n_layers %d, page_size %d, max_seqs %d, "
                   "max_seq_len %lld (each must be >= 1)",
                   p->n_layers, p->page_size, p->max_seqs, (long long)max_len);
        return DPEP_ERR_INVALID;
    }
    if (p->dtype != DPEP_WT_F32 && p->dtype != DPEP_WT_BF16) {
        DPEP_ERROR("attn kv: dtype %s: the pool holds f32 or bf16", dpep_wtype_name(p->dtype));
        return DPEP_ERR_INVALID;
    }
    dpep_device dev;
    const dpep_attn_ops *ops;
    DPEP_TRY(dpep_attn_device_(p->device, "attn kv", &dev, &ops));
    const int row = dpep_model_kv_row(m);
    const size_t esz = dpep_wtype_size(p->dtype);
    const size_t page_bytes = (size_t)p->n_layers * (size_t)p->page_size * (size_t)row * esz;
    int64_t n_pages = (int64_t)(p->budget_bytes / page_bytes);
    if (n_pages > INT32_MAX) n_pages = INT32_MAX;
    if (n_pages < 1) {
        DPEP_ERROR("attn kv: budget %zu B holds no page (one page of %d tokens x %d layers is %zu B)",
                   p->budget_bytes, p->page_size, p->n_layers, page_bytes);
        return DPEP_ERR_NOMEM;
    }
    dpep_attn_kv *kv = calloc(1, sizeof *kv);
    if (!kv) return DPEP_ERR_NOMEM;
    kv->dev = dev;
    kv->n_layers = p->n_layers;
    kv->page_size = p->page_size;
    kv->row = row;
    kv->dtype = p->dtype;
    kv->esz = esz;
    kv->kv_lora = m->kv_lora_rank;
    kv->rope = m->qk_rope;
    kv->n_pages = n_pages;
    kv->max_seqs = p->max_seqs + p->extra_slots;
    kv->user_slots = p->max_seqs;
    kv->max_seq_len = max_len;
    kv->max_pages_seq = (max_len + p->page_size - 1) / p->page_size;
    kv->meta = malloc(carve_meta(kv, NULL));
    void *pool = NULL;
    if (!kv->meta || dpep_device_alloc(&kv->dev, page_bytes * (size_t)n_pages, &pool) != DPEP_OK) {
        DPEP_ERROR("attn kv: cannot allocate a pool of %zu B on %s", page_bytes * (size_t)n_pages,
                   ops->name);
        dpep_attn_kv_destroy(kv);
        return DPEP_ERR_NOMEM;
    }
    kv->pool = pool;
    carve_meta(kv, kv->meta);
    /* stack popped from the end: pages are handed out in increasing order, so
     * a fresh pool gives a sequence contiguous pages (one BLAS call per run) */
    for (int64_t i = 0; i < n_pages; i++) {
        kv->free_list[i] = (int32_t)(n_pages - 1 - i);
        kv->refs[i] = 0;
    }
    kv->n_free = n_pages;
    for (int s = 0; s < kv->max_seqs; s++) {
        kv->n_seq_pages[s] = -1;
        kv->len[s] = -1;
    }
    *out = kv;
    return DPEP_OK;
}

void dpep_attn_kv_destroy(dpep_attn_kv *kv)
{
    if (!kv) return;
    if (kv->pool) dpep_device_free(&kv->dev, kv->pool);
    free(kv->meta);
    free(kv);
}

size_t dpep_attn_kv_bytes_per_token(const dpep_attn_kv *kv)
{
    return (size_t)kv->n_layers * (size_t)kv->row * kv->esz;
}

dpep_wtype dpep_attn_kv_dtype(const dpep_attn_kv *kv) { return kv->dtype; }

int64_t dpep_attn_kv_capacity_tokens(const dpep_attn_kv *kv) { return kv->n_pages * kv->page_size; }
int dpep_attn_kv_page_size(const dpep_attn_kv *kv) { return kv->page_size; }
int64_t dpep_attn_kv_free_tokens(const dpep_attn_kv *kv) { return kv->n_free * kv->page_size; }
size_t dpep_attn_kv_pool_bytes(const dpep_attn_kv *kv)
{
    return (size_t)kv->n_pages * (size_t)kv->page_size * dpep_attn_kv_bytes_per_token(kv);
}

dpep_status dpep_attn_kv_seq_open_extra(dpep_attn_kv *kv, int i, int *slot)
{
    const int s = kv ? kv->user_slots + i : -1;
    if (!kv || i < 0 || s >= kv->max_seqs || kv->n_seq_pages[s] >= 0) {
        DPEP_ERROR("attn kv: extra slot %d: out of range (%d) or open", i,
                   kv ? kv->max_seqs - kv->user_slots : 0);
        return DPEP_ERR_INVALID;
    }
    kv->n_seq_pages[s] = 0;
    kv->len[s] = 0;
    *slot = s;
    return DPEP_OK;
}

dpep_status dpep_attn_kv_seq_open(dpep_attn_kv *kv, int *slot)
{
    for (int s = 0; s < kv->user_slots; s++) {
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
    for (int64_t i = 0; i < need; i++) {
        int32_t page = kv->free_list[--kv->n_free];
        kv->refs[page] = 1;
        pt[kv->n_seq_pages[slot]++] = page;
    }
    return DPEP_OK;
}

dpep_status dpep_attn_kv_seq_close(dpep_attn_kv *kv, int slot)
{
    if (!slot_open(kv, slot)) return DPEP_ERR_INVALID;
    const int32_t *pt = kv->pages + (int64_t)slot * kv->max_pages_seq;
    /* drop one reference per page; a page nobody holds any more goes back,
     * pushed in reverse so that the next sequence gets them in order */
    for (int64_t i = kv->n_seq_pages[slot] - 1; i >= 0; i--)
        if (--kv->refs[pt[i]] == 0) kv->free_list[kv->n_free++] = pt[i];
    kv->n_seq_pages[slot] = -1;
    kv->len[slot] = -1;
    return DPEP_OK;
}

dpep_status dpep_attn_kv_seq_share(dpep_attn_kv *kv, int dst, int src, int64_t n_tokens)
{
    if (!kv || !slot_open(kv, dst) || !slot_open(kv, src) || dst == src) {
        DPEP_ERROR("attn kv: share from slot %d into slot %d: both must be open and different", src,
                   dst);
        return DPEP_ERR_INVALID;
    }
    if (kv->n_seq_pages[dst] != 0) {
        DPEP_ERROR("attn kv: share into slot %d: it already holds %lld pages (shared pages go at "
                   "the start of an empty slot)",
                   dst, (long long)kv->n_seq_pages[dst]);
        return DPEP_ERR_INVALID;
    }
    if (n_tokens < 0 || n_tokens % kv->page_size != 0 || n_tokens > kv->len[src]) {
        DPEP_ERROR("attn kv: share %lld tokens of slot %d: must be whole pages of %d tokens, "
                   "already written (the slot holds %lld)",
                   (long long)n_tokens, src, kv->page_size, (long long)kv->len[src]);
        return DPEP_ERR_INVALID;
    }
    const int64_t n = n_tokens / kv->page_size;
    const int32_t *ps = kv->pages + (int64_t)src * kv->max_pages_seq;
    int32_t *pd = kv->pages + (int64_t)dst * kv->max_pages_seq;
    for (int64_t i = 0; i < n; i++) {
        pd[i] = ps[i];
        kv->refs[ps[i]]++;
    }
    kv->n_seq_pages[dst] = n;
    kv->len[dst] = n_tokens;
    return DPEP_OK;
}

int64_t dpep_attn_kv_seq_pages(const dpep_attn_kv *kv, int slot, int32_t *pages, int64_t max)
{
    if (!slot_open(kv, slot)) return -1;
    int64_t n = kv->n_seq_pages[slot] < max ? kv->n_seq_pages[slot] : max;
    if (pages && n > 0)
        memcpy(pages, kv->pages + (int64_t)slot * kv->max_pages_seq, sizeof *pages * (size_t)n);
    return n;
}

dpep_status dpep_attn_kv_seq_adopt(dpep_attn_kv *kv, int slot, const int32_t *pages, int64_t n)
{
    if (!kv || !slot_open(kv, slot) || kv->n_seq_pages[slot] != 0 || n < 0 ||
        n > kv->max_pages_seq) {
        DPEP_ERROR("attn kv: adopt %lld pages into slot %d: the slot must be open and empty, and "
                   "hold at most %lld pages", (long long)n, slot, (long long)kv->max_pages_seq);
        return DPEP_ERR_INVALID;
    }
    for (int64_t i = 0; i < n; i++) {
        if (pages[i] < 0 || pages[i] >= kv->n_pages || kv->refs[pages[i]] < 1) {
            DPEP_ERROR("attn kv: adopt into slot %d: page %d is not a held page of the pool", slot,
                       (int)pages[i]);
            return DPEP_ERR_INVALID;
        }
    }
    int32_t *pt = kv->pages + (int64_t)slot * kv->max_pages_seq;
    for (int64_t i = 0; i < n; i++) {
        pt[i] = pages[i];
        kv->refs[pages[i]]++;
    }
    kv->n_seq_pages[slot] = n;
    kv->len[slot] = n * kv->page_size;
    return DPEP_OK;
}

void dpep_attn_kv_page_retain(dpep_attn_kv *kv, int32_t page)
{
    if (page >= 0 && page < kv->n_pages && kv->refs[page] > 0) kv->refs[page]++;
}

void dpep_attn_kv_page_release(dpep_attn_kv *kv, int32_t page)
{
    if (page < 0 || page >= kv->n_pages || kv->refs[page] <= 0) return;
    if (--kv->refs[page] == 0) kv->free_list[kv->n_free++] = page;
}

int dpep_attn_kv_page_refs(const dpep_attn_kv *kv, int slot, int64_t pos)
{
    if (!slot_open(kv, slot) || pos < 0 || pos >= kv->n_seq_pages[slot] * kv->page_size) return -1;
    return kv->refs[kv->pages[(int64_t)slot * kv->max_pages_seq + pos / kv->page_size]];
}

bool dpep_attn_kv_private_(const dpep_attn_kv *kv, int slot, int64_t pos0, int64_t n)
{
    const int32_t *pt = kv->pages + (int64_t)slot * kv->max_pages_seq;
    if (n <= 0) return true;
    for (int64_t p = pos0 / kv->page_size; p <= (pos0 + n - 1) / kv->page_size; p++)
        if (kv->refs[pt[p]] != 1) return false;
    return true;
}

int64_t dpep_attn_kv_seq_len(const dpep_attn_kv *kv, int slot)
{
    return slot_open(kv, slot) ? kv->len[slot] : -1;
}

int64_t dpep_attn_kv_seq_capacity(const dpep_attn_kv *kv, int slot)
{
    return slot_open(kv, slot) ? kv->n_seq_pages[slot] * kv->page_size : -1;
}

const void *dpep_attn_kv_row(const dpep_attn_kv *kv, int slot, int layer, int64_t pos)
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
        pos0 > kv->len[slot] || pos0 + n > kv->n_seq_pages[slot] * kv->page_size || (n && !rows) ||
        !dpep_attn_kv_private_(kv, slot, pos0, n)) {
        DPEP_ERROR("attn kv: cannot write %lld rows at %lld of slot %d layer %d (beyond the "
                   "reservation, after a gap, or into a shared page)",
                   (long long)n, (long long)pos0, slot, layer);
        return DPEP_ERR_INVALID;
    }
    for (int64_t i = 0; i < n; i++) {
        const float *src = rows + i * kv->row;
        const void *from = src;
        if (kv->dtype == DPEP_WT_BF16) { /* rounded as the forward rounds its rows */
            dpep_attn_kv_store_(kv, kv->wrow, src);
            from = kv->wrow;
        }
        DPEP_TRY(kv->dev.ops->to_device(&kv->dev, dpep_attn_kv_row_(kv, slot, layer, pos0 + i), from,
                                        kv->esz * (size_t)kv->row));
    }
    if (pos0 + n > kv->len[slot]) kv->len[slot] = pos0 + n;
    return DPEP_OK;
}

double dpep_attn_kv_rank_bytes(const dpep_model_config *m, const dpep_layout *l, int64_t tokens,
                               double elem_bytes)
{
    double per_tok = dpep_model_kv_bytes_per_token(m, elem_bytes > 0 ? elem_bytes : sizeof(float));
    int attn_dp = l && l->attn_dp > 0 ? l->attn_dp : 1;
    return per_tok * (double)tokens / attn_dp;
}
