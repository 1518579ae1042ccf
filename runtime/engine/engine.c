/* engine.c — the distributed forward step of one rank:
 *   h = embed(ids)
 *   per layer: h += MLA(RMSNorm(h)) (attention-TP all-reduce inside attn/),
 *              h += FFN(RMSNorm(h)) with FFN the dense MLP or the MoE layer
 *   logits = lm_head(RMSNorm(h))
 * The FFN input of an attention-TP group (whose ranks hold the same batch) is
 * split into contiguous row slices, one per rank, and the slices' outputs are
 * all-gathered back, so that the MoE and dense layers see each token once. */
#include "dpep_engine.h"

#include <stdlib.h>
#include <string.h>

struct dpep_engine {
    const dpep_model_config *m;
    const dpep_weights *w;
    dpep_layout layout;
    dpep_rank_info me;
    int max_tokens;
    dpep_comm *c_attn_tp, *c_ep, *c_moe_tp, *c_dense;
    int attn_tp, attn_tp_rank;
    dpep_attn *attn;
    dpep_attn_kv *kv;
    dpep_moe *moe;
    dpep_device dev;                /* where the activations live            */
    const dpep_engine_ops *ops;     /* the device's kernels                   */
    void *act;                      /* owned: every buffer below lives in it  */
    float *h, *xn, *ao, *ff;        /* [max_tokens, hidden] each            */
    float *logits;                  /* [max_tokens, vocab] kept logits       */
    int n_logits;                   /* rows of it the last forward wrote     */
    float *scratch;                 /* [2 * vocab] host: sampling            */
    int32_t *topk_idx;              /* [max_tokens, topk]                    */
    float *topk_w;                  /* [max_tokens, topk]                    */
    int64_t *counts, *displs;       /* [attn_tp] rows per slice              */
    int64_t *expert_load;           /* [n_layers, n_routed]                  */
};

/* The activation arena, carved twice (count, then place). */
static size_t carve_activations(dpep_engine *e, void *base)
{
    const dpep_model_config *m = e->m;
    size_t rows = (size_t)e->max_tokens, H = (size_t)m->hidden;
    size_t k = (size_t)(m->topk > 0 ? m->topk : 1);
    dpep_arena a = dpep_arena_begin(base);
    e->h = DPEP_ARENA_TAKE(&a, float, rows * H);
    e->xn = DPEP_ARENA_TAKE(&a, float, rows * H);
    e->ao = DPEP_ARENA_TAKE(&a, float, rows * H);
    e->ff = DPEP_ARENA_TAKE(&a, float, rows * H);
    e->logits = DPEP_ARENA_TAKE(&a, float, rows * (size_t)m->vocab);
    e->scratch = DPEP_ARENA_TAKE(&a, float, 2 * (size_t)m->vocab);
    e->topk_idx = DPEP_ARENA_TAKE(&a, int32_t, rows * k);
    e->topk_w = DPEP_ARENA_TAKE(&a, float, rows * k);
    e->counts = DPEP_ARENA_TAKE(&a, int64_t, e->attn_tp);
    e->displs = DPEP_ARENA_TAKE(&a, int64_t, e->attn_tp);
    e->expert_load = DPEP_ARENA_TAKE(&a, int64_t, (size_t)m->n_layers * (size_t)(m->n_routed > 0 ? m->n_routed : 1));
    return a.off;
}

void dpep_engine_destroy(dpep_engine *e)
{
    if (!e) return;
    dpep_moe_free(e->moe);
    dpep_attn_destroy(e->attn);
    dpep_attn_kv_destroy(e->kv);
    dpep_comm_destroy(e->c_dense);
    dpep_comm_destroy(e->c_moe_tp);
    dpep_comm_destroy(e->c_ep);
    dpep_comm_destroy(e->c_attn_tp);
    if (e->ops) dpep_device_free(&e->dev, e->act);
    free(e);
}

dpep_attn_kv *dpep_engine_kv(dpep_engine *e) { return e->kv; }
const int64_t *dpep_engine_expert_load(const dpep_engine *e) { return e->expert_load; }
const char *dpep_engine_moe_transport(const dpep_engine *e) { return dpep_moe_transport_name(e->moe); }
size_t dpep_engine_moe_bytes(const dpep_engine *e) { return dpep_moe_pool_bytes(e->moe); }
const dpep_device *dpep_engine_device(const dpep_engine *e) { return &e->dev; }

/* The MoE context last: with the node-shared transport it is collective over
 * the EP group (create and free), so every local allocation is done and
 * agreed on first, and nothing can fail after it. */
static dpep_status finish_create(dpep_engine *e, const dpep_engine_params *p, dpep_status local,
                                 dpep_engine **out, dpep_diag *diag)
{
    int n_failed = 0, first = -1;
    dpep_status st = dpep_comm_agree(e->c_ep, local, &n_failed, &first);
    if (st != DPEP_OK && local == DPEP_OK)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: %d EP rank(s) could not set up (first: EP "
                      "rank %d; their own errors are logged there)", n_failed, first);
    if (st == DPEP_OK) {
        dpep_moe_config mc;
        dpep_moe_config_from_model(p->m, &mc);
        mc.backend = p->backend;
        mc.transport = p->transport;
        mc.max_tokens = (p->max_tokens + e->attn_tp - 1) / e->attn_tp;
        mc.ep = e->c_ep;
        mc.moe_tp = e->c_moe_tp;
        mc.dense = e->c_dense;
        mc.placement = NULL;
        mc.device = &e->dev;
        st = dpep_moe_create(&mc, &e->moe, diag);
    }
    if (st != DPEP_OK) {
        dpep_engine_destroy(e); /* no window exists: local */
        return st;
    }
    *out = e;
    return DPEP_OK;
}

dpep_status dpep_engine_create(const dpep_engine_params *p, dpep_engine **out, dpep_diag *diag)
{
    const dpep_model_config *m = p->m;
    if (p->max_tokens < 1 || p->max_seqs < 1 || p->page_size < 1) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: max_tokens, max_seqs and page_size must be >= 1");
        return DPEP_ERR_INVALID;
    }
    dpep_engine *e = calloc(1, sizeof *e);
    if (!e) return DPEP_ERR_NOMEM;
    dpep_status st = DPEP_OK;
    e->m = m;
    e->w = p->w;
    e->layout = *p->layout;
    e->me = *p->me;
    e->max_tokens = p->max_tokens;
    DPEP_TRY_GOTO(dpep_comm_create_group(p->attn_tp, "attn_tp", DPEP_COMM_MPI, p->comm_timeout_s, &e->c_attn_tp), st, fail);
    DPEP_TRY_GOTO(dpep_comm_create_group(p->ep, "ep", DPEP_COMM_MPI, p->comm_timeout_s, &e->c_ep), st, fail);
    DPEP_TRY_GOTO(dpep_comm_create_group(p->moe_tp, "moe_tp", DPEP_COMM_MPI, p->comm_timeout_s, &e->c_moe_tp), st, fail);
    DPEP_TRY_GOTO(dpep_comm_create_group(p->dense, "dense", DPEP_COMM_MPI, p->comm_timeout_s, &e->c_dense), st, fail);
    /* An EP group of one still needs a comm for the MoE layer. */
    if (!e->c_ep) {
        MPI_Comm self = p->ep != MPI_COMM_NULL ? p->ep : MPI_COMM_SELF;
        DPEP_TRY_GOTO(dpep_comm_create(self, "ep", DPEP_COMM_MPI, p->comm_timeout_s, &e->c_ep), st, fail);
    }
    /* The device's allocator and kernels (CPU unless the caller says). */
    if (p->device)
        e->dev = *p->device;
    else
        DPEP_TRY_GOTO(dpep_device_get(DPEP_DEVICE_CPU, -1, &e->dev), st, fail);
    if (!dpep_engine_ops_for(e->dev.kind)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: runtime.device %s: this build has no %s "
                      "kernels for the forward step (the CPU backend is complete; see README)",
                      dpep_device_kind_name(e->dev.kind), dpep_device_kind_name(e->dev.kind));
        st = DPEP_ERR_UNSUPPORTED;
        goto fail;
    }
    e->ops = dpep_engine_ops_for(e->dev.kind);
    e->attn_tp = e->c_attn_tp ? dpep_comm_size(e->c_attn_tp) : 1;
    e->attn_tp_rank = e->c_attn_tp ? dpep_comm_rank(e->c_attn_tp) : 0;

    dpep_attn_kv_params kp = {.n_layers = m->n_layers, .page_size = p->page_size,
                              .budget_bytes = p->kv_budget_bytes, .max_seqs = p->max_seqs,
                              .max_seq_len = p->max_ctx, .device = &e->dev};
    st = dpep_attn_kv_create(m, &kp, &e->kv);
    if (st != DPEP_OK) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: KV pool of %zu bytes (page %d, %d slots, "
                      "max_seq_len %lld): %s", p->kv_budget_bytes, p->page_size, p->max_seqs,
                      (long long)p->max_ctx, dpep_status_string(st));
        goto fail;
    }
    dpep_attn_params ap = {.head0 = p->w->layer[0].head0, .n_heads = p->w->layer[0].n_heads,
                           .max_tokens = p->max_tokens, .max_ctx = p->max_ctx,
                           .decode = DPEP_ATTN_DECODE_ABSORBED, .tp = e->c_attn_tp,
                           .device = &e->dev};
    st = dpep_attn_create(m, &ap, &e->attn);
    if (st != DPEP_OK) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: attention context: %s", dpep_status_string(st));
        goto fail;
    }
    st = dpep_device_alloc(&e->dev, carve_activations(e, NULL), &e->act);
    if (st != DPEP_OK) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: activations on %s: %s", e->ops->name,
                      dpep_status_string(st));
        goto fail;
    }
    carve_activations(e, e->act);
fail:
    /* the EP group agrees either way (a failed rank still joins) */
    if (e->c_ep) return finish_create(e, p, st, out, diag);
    dpep_engine_destroy(e);
    return st;
}

dpep_status dpep_engine_forward(dpep_engine *e, const dpep_attn_seq *seq, int n_seq,
                                const int32_t *tokens, dpep_logits_mode mode, float *logits)
{
    const dpep_model_config *m = e->m;
    const dpep_weights *w = e->w;
    const int H = m->hidden;
    int64_t T = 0;
    for (int i = 0; i < n_seq; i++) T += seq[i].n_new;
    if (T > e->max_tokens) {
        DPEP_ERROR("engine: %lld tokens in one step (max %d)", (long long)T, e->max_tokens);
        return DPEP_ERR_INTERNAL;
    }
    for (int64_t t = 0; t < T; t++) {
        int32_t id = tokens[t];
        if (id < 0 || id >= m->vocab) {
            DPEP_ERROR("engine: token id %d out of range [0, %d)", id, m->vocab);
            return DPEP_ERR_INVALID;
        }
    }
    e->ops->embed(w->embed, H, tokens, T, e->h);
    /* This rank's slice of the FFN rows. */
    int P = e->attn_tp;
    for (int r = 0; r < P; r++) {
        int64_t b = T * r / P, en = T * (r + 1) / P;
        e->counts[r] = (en - b) * H;
        e->displs[r] = b * H;
    }
    int64_t s0 = T * e->attn_tp_rank / P, s1 = T * (e->attn_tp_rank + 1) / P, sn = s1 - s0;
    for (int l = 0; l < m->n_layers; l++) {
        const dpep_layer_w *L = &w->layer[l];
        e->ops->rmsnorm(e->h, L->input_norm, T, H, m->rms_eps, e->xn);
        DPEP_TRY(dpep_attn_forward(e->attn, L, l, e->kv, seq, n_seq, e->xn, e->ao));
        e->ops->add(e->h, e->ao, T * H);
        e->ops->rmsnorm(e->h + s0 * H, L->post_norm, sn, H, m->rms_eps, e->xn + s0 * H);
        const float *xin = sn ? e->xn + s0 * H : NULL;
        float *fout = e->ff + s0 * H;
        if (L->moe) {
            DPEP_TRY(dpep_moe_forward(e->moe, L, xin, sn, fout, e->topk_idx, e->topk_w));
            int64_t *load = e->expert_load + (size_t)l * m->n_routed;
            for (int64_t i = 0; i < sn * m->topk; i++) {
                int32_t x = e->topk_idx[i];
                if (x >= 0 && x < m->n_routed) load[x]++;
            }
        } else {
            DPEP_TRY(dpep_moe_dense_forward(e->moe, &L->mlp, xin, sn, fout));
        }
        if (P > 1) {
            /* MPI forbids aliasing send and receive: send from a copy. */
            memcpy(e->ao, fout, sizeof(float) * (size_t)(sn * H));
            DPEP_TRY(dpep_comm_allgatherv(e->c_attn_tp, e->ao, sn * H, e->ff, e->counts,
                                          e->displs, DPEP_COMM_F32));
        }
        e->ops->add(e->h, e->ff, T * H);
    }
    e->n_logits = 0;
    if (mode == DPEP_LOGITS_NONE || T == 0) return DPEP_OK;
    /* Rows that need logits, normalized into xn. */
    int64_t n_rows = 0;
    if (mode == DPEP_LOGITS_ALL) {
        e->ops->rmsnorm(e->h, w->final_norm, T, H, m->rms_eps, e->xn);
        n_rows = T;
    } else {
        int64_t off = 0;
        for (int i = 0; i < n_seq; i++) {
            off += seq[i].n_new;
            if (seq[i].n_new > 0)
                e->ops->rmsnorm(e->h + (off - 1) * H, w->final_norm, 1, H, m->rms_eps, e->xn + i * H);
            else
                memset(e->xn + i * H, 0, sizeof(float) * (size_t)H);
        }
        n_rows = n_seq;
    }
    e->ops->lm_head(e->xn, n_rows, w->lm_head, m->vocab, H, logits ? logits : e->logits);
    e->n_logits = logits ? 0 : (int)n_rows;
    return DPEP_OK;
}

dpep_status dpep_engine_sample(dpep_engine *e, int n, const dpep_sampling *const *sp,
                               uint64_t *const *rng, int32_t *ids, double *logprob)
{
    if (n < 0 || n > e->n_logits) {
        DPEP_ERROR("engine: sampling %d rows of %d kept logits", n, e->n_logits);
        return DPEP_ERR_INTERNAL;
    }
    e->ops->sample(e->logits, n, e->m->vocab, sp, rng, e->scratch, ids, logprob);
    return DPEP_OK;
}
