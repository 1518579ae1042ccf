/* engine.c — the distributed forward step of one rank:
 *   h = embed(ids)
 *   per layer: h += MLA(RMSNorm(h)) (attention-TP all-reduce inside attn/),
 *              h += FFN(RMSNorm(h)) with FFN the dense MLP or the MoE layer
 *   logits = lm_head(RMSNorm(h))
 * The FFN input of an attention-TP group (whose ranks hold the same batch) is
 * split into contiguous row slices, one per rank, and the slices' outputs are
 * all-gathered back, so that the MoE and dense layers see each token once. */
#include "dpep_engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Memory: the activations live on the engine's device (one block from its
 * allocator; on CUDA the host never dereferences them: the step reaches them
 * only through the ops table, attn/ and moe/); the host-side state is one
 * malloc. Both are made at create. */
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
    char where[160];                /* "GPU 0 (NAME)" or "CPU", for messages  */
    /* device memory (act owns them all) */
    void *act;
    float *h, *xn, *ao, *ff;        /* [max_tokens, hidden] each            */
    float *logits;                  /* [max_tokens, vocab] kept logits       */
    int n_logits;                   /* rows of it the last forward kept      */
    int32_t *topk_idx;              /* [max_tokens, topk] the gate's picks    */
    float *topk_w;                  /* [max_tokens, topk]                    */
    int64_t *expert_load;           /* [n_layers, n_routed] counts           */
    /* host memory (host owns them all) */
    void *host;
    float *scratch;                 /* [2 * vocab] sampling                  */
    int64_t *counts, *displs;       /* [attn_tp] rows per slice              */
    int64_t *load_h;                /* [n_layers, n_routed] copy of the load  */
};

static size_t load_len(const dpep_model_config *m)
{
    return (size_t)m->n_layers * (size_t)(m->n_routed > 0 ? m->n_routed : 1);
}

/* The activation block, carved twice (count, then place). */
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
    e->topk_idx = DPEP_ARENA_TAKE(&a, int32_t, rows * k);
    e->topk_w = DPEP_ARENA_TAKE(&a, float, rows * k);
    e->expert_load = DPEP_ARENA_TAKE(&a, int64_t, load_len(m));
    return a.off;
}

/* The host block, the same way. */
static size_t carve_host(dpep_engine *e, void *base)
{
    dpep_arena a = dpep_arena_begin(base);
    e->scratch = DPEP_ARENA_TAKE(&a, float, 2 * (size_t)e->m->vocab);
    e->counts = DPEP_ARENA_TAKE(&a, int64_t, e->attn_tp);
    e->displs = DPEP_ARENA_TAKE(&a, int64_t, e->attn_tp);
    e->load_h = DPEP_ARENA_TAKE(&a, int64_t, load_len(e->m));
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
    free(e->host);
    free(e);
}

dpep_attn_kv *dpep_engine_kv(dpep_engine *e) { return e->kv; }

const int64_t *dpep_engine_expert_load(const dpep_engine *e)
{
    dpep_status st = e->dev.ops->to_host(&e->dev, e->load_h, e->expert_load,
                                         sizeof(int64_t) * load_len(e->m));
    if (st != DPEP_OK)
        DPEP_ERROR("engine: rank %d, %s: copying the expert load back: %s (the counts shown are "
                   "the previous ones)", e->me.rank, e->where, dpep_status_string(st));
    return e->load_h;
}
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
    /* refined with the GPU's name once the device answers (below) */
    if (e->dev.kind == DPEP_DEVICE_CUDA) snprintf(e->where, sizeof e->where, "GPU %d", e->dev.ordinal);
    else snprintf(e->where, sizeof e->where, "%s", dpep_device_kind_name(e->dev.kind));
    if (e->attn_tp > 1 && e->dev.kind != DPEP_DEVICE_CPU) {
        /* the FFN rows of an attention-TP group are all-gathered over MPI,
         * which is given host buffers only */
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d: attention-TP %d on %s: the FFN "
                      "all-gather of the attention-TP group runs over MPI on host memory; on a "
                      "GPU use attention-TP 1 (DP attention) for now", e->me.rank, e->attn_tp,
                      dpep_device_kind_name(e->dev.kind));
        st = DPEP_ERR_UNSUPPORTED;
        goto fail;
    }
    /* (weights put together by hand have no allocator: host memory) */
    const dpep_device_kind wk = p->w->dev.ops ? p->w->dev.kind : DPEP_DEVICE_CPU;
    const int wo = p->w->dev.ops ? p->w->dev.ordinal : -1;
    if (wk != e->dev.kind || (wk == DPEP_DEVICE_CUDA && wo != e->dev.ordinal)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d: the weights are on %s (device %d) "
                      "but the engine runs on %s (device %d): load them with "
                      "dpep_weights_load_on and the engine's device", e->me.rank,
                      dpep_device_kind_name(wk), wo, dpep_device_kind_name(e->dev.kind),
                      e->dev.ordinal);
        st = DPEP_ERR_INVALID;
        goto fail;
    }
    e->host = malloc(carve_host(e, NULL));
    if (!e->host) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d: host buffers: out of memory",
                      e->me.rank);
        st = DPEP_ERR_NOMEM;
        goto fail;
    }
    carve_host(e, e->host);
    memset(e->load_h, 0, sizeof(int64_t) * load_len(m));

    dpep_attn_kv_params kp = {.n_layers = m->n_layers, .page_size = p->page_size,
                              .budget_bytes = p->kv_budget_bytes, .max_seqs = p->max_seqs,
                              .max_seq_len = p->max_ctx, .device = &e->dev};
    st = dpep_attn_kv_create(m, &kp, &e->kv);
    if (st != DPEP_OK) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d, %s: KV pool of %zu bytes (page %d, "
                      "%d slots, max_seq_len %lld): %s", e->me.rank, e->where, p->kv_budget_bytes,
                      p->page_size, p->max_seqs, (long long)p->max_ctx, dpep_status_string(st));
        goto fail;
    }
    dpep_attn_params ap = {.head0 = p->w->layer[0].head0, .n_heads = p->w->layer[0].n_heads,
                           .max_tokens = p->max_tokens, .max_ctx = p->max_ctx,
                           .decode = DPEP_ATTN_DECODE_ABSORBED, .tp = e->c_attn_tp,
                           .device = &e->dev};
    st = dpep_attn_create(m, &ap, &e->attn);
    if (st != DPEP_OK) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d, %s: attention context: %s",
                      e->me.rank, e->where, dpep_status_string(st));
        goto fail;
    }
    st = dpep_device_alloc(&e->dev, carve_activations(e, NULL), &e->act);
    if (st != DPEP_OK) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d, %s: activations (%zu bytes): %s",
                      e->me.rank, e->where, carve_activations(e, NULL), dpep_status_string(st));
        goto fail;
    }
    carve_activations(e, e->act);
    /* the table's scratch (token ids, sampling) now, not in the first step */
    if (e->ops->reserve) e->ops->reserve(m, p->max_tokens);
    /* The device's description for messages; an error here (a device that
     * cannot finish the allocator's zeroing, a failed reserve) fails the
     * create. */
    {
        char msg[sizeof e->where + 256];
        dpep_status cst = e->ops->check(msg, sizeof msg);
        if (cst != DPEP_OK) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d: %s", e->me.rank, msg);
            st = cst;
            goto fail;
        }
        snprintf(e->where, sizeof e->where, "%s", msg);
    }
fail:
    /* the EP group agrees either way (a failed rank still joins) */
    if (e->c_ep) return finish_create(e, p, st, out, diag);
    dpep_engine_destroy(e);
    return st;
}

/* After a failed part of the step (`st`, already logged by the part):
 * one line naming the rank, the device, the layer and the part, with the
 * device's own first error if it kept one. Returns st. */
static dpep_status step_failed(dpep_engine *e, dpep_status st, int layer, const char *part)
{
    char msg[512];
    dpep_status dst = e->ops->check(msg, sizeof msg);
    char lay[32] = "";
    if (layer >= 0) snprintf(lay, sizeof lay, "layer %d ", layer);
    if (dst != DPEP_OK)
        DPEP_ERROR("engine: rank %d, %s: forward step failed (%s%s): %s; device error: %s",
                   e->me.rank, e->where, lay, part, dpep_status_string(st), msg);
    else
        DPEP_ERROR("engine: rank %d, %s: forward step failed (%s%s): %s", e->me.rank, e->where,
                   lay, part, dpep_status_string(st));
    return st;
}

/* The device's first error of the step, if any, as the step's status. */
static dpep_status step_check(dpep_engine *e, const char *what)
{
    char msg[512];
    dpep_status st = e->ops->check(msg, sizeof msg);
    if (st != DPEP_OK) DPEP_ERROR("engine: rank %d: %s failed on %s", e->me.rank, what, msg);
    return st;
}

dpep_status dpep_engine_forward(dpep_engine *e, const dpep_attn_seq *seq, int n_seq,
                                const int32_t *tokens, dpep_logits_mode mode, float *logits)
{
    const dpep_model_config *m = e->m;
    const dpep_weights *w = e->w;
    const int H = m->hidden;
    dpep_status st;
    int64_t T = 0;
    for (int i = 0; i < n_seq; i++) T += seq[i].n_new;
    e->n_logits = 0;
    if (T > e->max_tokens || (mode == DPEP_LOGITS_LAST && n_seq > e->max_tokens)) {
        DPEP_ERROR("engine: %lld tokens of %d sequences in one step (max %d)", (long long)T, n_seq,
                   e->max_tokens);
        return DPEP_ERR_INTERNAL;
    }
    for (int64_t t = 0; t < T; t++) {
        int32_t id = tokens[t];
        if (id < 0 || id >= m->vocab) {
            DPEP_ERROR("engine: token id %d out of range [0, %d)", id, m->vocab);
            return DPEP_ERR_INVALID;
        }
    }
    e->ops->embed(&w->embed, tokens, T, e->h); /* host ids: the op copies them over */
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
        st = dpep_attn_forward(e->attn, L, l, e->kv, seq, n_seq, e->xn, e->ao);
        if (st != DPEP_OK) return step_failed(e, st, l, "attention");
        e->ops->add(e->h, e->ao, T * H);
        e->ops->rmsnorm(e->h + s0 * H, L->post_norm, sn, H, m->rms_eps, e->xn + s0 * H);
        const float *xin = sn ? e->xn + s0 * H : NULL;
        float *fout = e->ff + s0 * H;
        if (L->moe) {
            st = dpep_moe_forward(e->moe, L, xin, sn, fout, e->topk_idx, e->topk_w);
            if (st != DPEP_OK) return step_failed(e, st, l, "MoE");
            /* the gate's picks stay on the device: counted there */
            e->ops->expert_count(e->topk_idx, sn * m->topk, m->n_routed,
                                 e->expert_load + (size_t)l * (size_t)m->n_routed);
        } else {
            st = dpep_moe_dense_forward(e->moe, &L->mlp, xin, sn, fout);
            if (st != DPEP_OK) return step_failed(e, st, l, "dense FFN");
        }
        if (P > 1) {
            /* MPI forbids aliasing send and receive: send from a copy. */
            e->ops->copy(e->ao, fout, sn * H);
            st = dpep_comm_allgatherv(e->c_attn_tp, e->ao, sn * H, e->ff, e->counts, e->displs,
                                      DPEP_COMM_F32);
            if (st != DPEP_OK) return step_failed(e, st, l, "attention-TP all-gather");
        }
        e->ops->add(e->h, e->ff, T * H);
    }
    if (mode == DPEP_LOGITS_NONE || T == 0) return step_check(e, "the forward step");
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
                e->ops->zero(e->xn + i * H, H);
        }
        n_rows = n_seq;
    }
    e->ops->lm_head(e->xn, n_rows, &w->lm_head, e->logits);
    DPEP_TRY(step_check(e, "the forward step"));
    if (logits) {
        /* the caller's rows are host memory */
        st = e->dev.ops->to_host(&e->dev, logits, e->logits,
                                 sizeof(float) * (size_t)n_rows * (size_t)m->vocab);
        if (st != DPEP_OK) return step_failed(e, st, -1, "copying the logits back");
        return DPEP_OK;
    }
    e->n_logits = (int)n_rows;
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
    return step_check(e, "sampling");
}
