/* attn.c — backend-neutral part of MLA attention: YaRN parameters, the
 * context (the device's ops table, scratch sized once and allocated on the
 * device), batch validation, the attention-TP reduction. */
#include <math.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "attn_internal.h"

static double yarn_mscale(double factor, double m)
{
    return factor <= 1.0 ? 1.0 : 0.1 * m * log(factor) + 1.0;
}

dpep_status dpep_attn_rope_params(const dpep_model_config *m, float *inv_freq,
                                  double *cos_sin_factor, double *softmax_scale)
{
    int d = m->qk_rope;
    if (d <= 0 || d % 2 != 0) {
        DPEP_ERROR("attn: qk_rope_head_dim %d must be even and positive", d);
        return DPEP_ERR_INVALID;
    }
    double theta = m->rope_theta > 0 ? m->rope_theta : 10000.0;
    double factor = m->yarn_factor;
    bool yarn = m->yarn && factor > 0;
    double low = 0, high = 0;
    if (yarn) {
        /* corr(r) = d ln(L0 / (2 pi r)) / (2 ln theta), truncated as
         * transformers does (floor / ceil), clamped to [0, d-1] */
        double L0 = m->yarn_orig_max_pos > 0 ? m->yarn_orig_max_pos : 4096;
        double bf = m->yarn_beta_fast > 0 ? m->yarn_beta_fast : 32;
        double bs = m->yarn_beta_slow > 0 ? m->yarn_beta_slow : 1;
        low = floor(d * log(L0 / (bf * 2 * M_PI)) / (2 * log(theta)));
        high = ceil(d * log(L0 / (bs * 2 * M_PI)) / (2 * log(theta)));
        if (low < 0) low = 0;
        if (high > d - 1) high = d - 1;
        if (low == high) high += 0.001;
    }
    for (int i = 0; inv_freq && i < d / 2; i++) {
        /* transformers: pos_freqs = theta ** (arange(0, d, 2) / d) in fp32 */
        float pf = (float)pow(theta, (double)(float)((float)(2 * i) / (float)d));
        float extrap = 1.0f / pf;
        if (!yarn) {
            inv_freq[i] = extrap;
            continue;
        }
        float interp = 1.0f / ((float)factor * pf);
        double ramp = (i - low) / (high - low);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        float r = (float)ramp;
        inv_freq[i] = interp * r + extrap * (1.0f - r);
    }
    double att = 1.0, scale = 1.0 / sqrt((double)(m->qk_nope + m->qk_rope));
    if (yarn) {
        if (m->yarn_mscale != 0 && m->yarn_mscale_all_dim != 0)
            att = yarn_mscale(factor, m->yarn_mscale) / yarn_mscale(factor, m->yarn_mscale_all_dim);
        else
            att = yarn_mscale(factor, 1.0);
        if (m->yarn_mscale_all_dim != 0) {
            double ms = yarn_mscale(factor, m->yarn_mscale_all_dim);
            scale *= ms * ms;
        }
    }
    if (cos_sin_factor) *cos_sin_factor = att;
    if (softmax_scale) *softmax_scale = scale;
    return DPEP_OK;
}

/* ------------------------------------------------------------------------ */
/* Backends per device kind: the CPU one always, the CUDA one (mla_cuda.cu,
 * added to attn/CMakeLists.txt) in builds with CUDA. */
/* ------------------------------------------------------------------------ */
static const dpep_attn_ops *const g_ops[DPEP_DEVICE_KINDS] = {
    [DPEP_DEVICE_CPU] = &dpep_attn_cpu_ops,
#ifdef DPEP_HAVE_CUDA
    [DPEP_DEVICE_CUDA] = &dpep_attn_cuda_ops, /* mla_cuda.cu: first, fp32, correct-not-fast */
#endif
};

const dpep_attn_ops *dpep_attn_ops_for(dpep_device_kind kind)
{
    return kind >= 0 && kind < DPEP_DEVICE_KINDS ? g_ops[kind] : NULL;
}

dpep_status dpep_attn_device_(const dpep_device *given, const char *what, dpep_device *dev,
                              const dpep_attn_ops **ops)
{
    if (given)
        *dev = *given;
    else
        DPEP_TRY(dpep_device_get(DPEP_DEVICE_CPU, -1, dev));
    *ops = dpep_attn_ops_for(dev->kind);
    if (!*ops || !dev->ops) {
        char ord[16] = "";
        if (dev->ordinal >= 0) snprintf(ord, sizeof ord, ":%d", dev->ordinal);
        DPEP_ERROR("%s: device %s%s: this build has no attention backend for it (the CPU "
                   "backend is attn/mla_cpu.c; a %s one would be a new file plus one entry in "
                   "attn.c's ops table)",
                   what, dpep_device_kind_name(dev->kind), ord, dpep_device_kind_name(dev->kind));
        return DPEP_ERR_UNSUPPORTED;
    }
    if ((*ops)->usable) return (*ops)->usable(dev);
    return DPEP_OK;
}

static bool params_ok(const dpep_model_config *m, const dpep_attn_params *p)
{
    if (p->n_heads < 1 || p->head0 < 0 || p->head0 + p->n_heads > m->n_heads || p->max_tokens < 1 ||
        p->max_ctx < 1 || m->kv_lora_rank < 1 || m->qk_nope < 1 || m->v_head < 1) {
        DPEP_ERROR("attn: invalid parameters: heads [%d, %d) of %d, max_tokens %d, max_ctx %lld",
                   p->head0, p->head0 + p->n_heads, m->n_heads, p->max_tokens,
                   (long long)p->max_ctx);
        return false;
    }
    return true;
}

static void dims_init(dpep_attn_dims *d, const dpep_model_config *m, const dpep_attn_params *p)
{
    d->hidden = m->hidden;
    d->H = p->n_heads;
    d->head0 = p->head0;
    d->q_lora = m->q_lora_rank;
    d->kv_lora = m->kv_lora_rank;
    d->nope = m->qk_nope;
    d->rope = m->qk_rope;
    d->v = m->v_head;
    d->qk = d->nope + d->rope;
    d->row = dpep_model_kv_row(m);
    d->eps = DPEP_ATTN_LATENT_NORM_EPS;
}

dpep_status dpep_attn_create(const dpep_model_config *m, const dpep_attn_params *p, dpep_attn **out)
{
    if (!m || !p || !out) return DPEP_ERR_INVALID;
    if (!params_ok(m, p)) return DPEP_ERR_INVALID;
    dpep_device dev;
    const dpep_attn_ops *ops;
    DPEP_TRY(dpep_attn_device_(p->device, "attn", &dev, &ops));
    dpep_attn *a = calloc(1, sizeof *a);
    if (!a) return DPEP_ERR_NOMEM;
    a->dev = dev;
    a->ops = ops;
    dims_init(&a->d, m, p);
    a->max_tokens = p->max_tokens;
    a->max_ctx = p->max_ctx;
    a->n_threads = 1;
    a->decode = p->decode;
    a->tp = p->tp;
    a->inv_freq = malloc(sizeof(float) * (size_t)(a->d.rope / 2 + 1));
    double att = 1, scale = 1;
    dpep_status st = a->inv_freq ? dpep_attn_rope_params(m, a->inv_freq, &att, &scale) : DPEP_ERR_NOMEM;
    if (st == DPEP_OK && ops->init) st = ops->init(a);
    if (st != DPEP_OK) {
        dpep_attn_destroy(a);
        return st;
    }
    a->d.scale = (float)scale;
    a->d.rope_factor = (float)att;
    /* the scratch: counted, allocated on the device, then carved */
    dpep_arena ar = dpep_arena_begin(NULL);
    ops->carve_scratch(a, &ar);
    a->arena_bytes = ar.off;
    st = dpep_device_alloc(&a->dev, a->arena_bytes, &a->arena);
    if (st != DPEP_OK) {
        DPEP_ERROR("attn: cannot allocate %zu B of scratch on %s", a->arena_bytes, ops->name);
        a->arena = NULL;
        dpep_attn_destroy(a);
        return DPEP_ERR_NOMEM;
    }
    ar = dpep_arena_begin(a->arena);
    ops->carve_scratch(a, &ar);
    /* every step writes into it: resident now, not at a long prompt's first touch */
    dpep_device_advise_resident(&a->dev, a->arena, a->arena_bytes);
    *out = a;
    return DPEP_OK;
}

void dpep_attn_destroy(dpep_attn *a)
{
    if (!a) return;
    if (a->arena) dpep_device_free(&a->dev, a->arena);
    free(a->host);
    free(a->inv_freq);
    free(a);
}

void dpep_attn_set_decode(dpep_attn *a, dpep_attn_decode mode) { a->decode = mode; }

void dpep_attn_set_lend(dpep_attn *a, const dpep_attn_lend *lend) { a->lend = lend; }
size_t dpep_attn_scratch_bytes(const dpep_attn *a) { return a->arena_bytes; }

/* The batch against the context and the cache: slots open and reserved,
 * positions contiguous with the cache, no slot twice, no write into a shared
 * page, at most max_tokens in all (*T). */
static dpep_status check_batch(const dpep_attn *a, const dpep_attn_kv *kv, const dpep_attn_seq *seq,
                               int n_seq, int64_t *T)
{
    *T = 0;
    for (int i = 0; i < n_seq; i++) {
        const dpep_attn_seq *s = &seq[i];
        int64_t len = dpep_attn_kv_seq_len(kv, s->slot);
        if (s->n_new < 0 || s->pos0 < 0 || len < 0 || s->pos0 > len ||
            s->pos0 + s->n_new > dpep_attn_kv_seq_capacity(kv, s->slot) ||
            s->pos0 + s->n_new > a->max_ctx) {
            DPEP_ERROR("attn: sequence %d (slot %d, pos0 %lld, n_new %d): cached length %lld, "
                       "reserved %lld, max_ctx %lld",
                       i, s->slot, (long long)s->pos0, s->n_new, (long long)len,
                       (long long)dpep_attn_kv_seq_capacity(kv, s->slot), (long long)a->max_ctx);
            return DPEP_ERR_INVALID;
        }
        if (!dpep_attn_kv_private_(kv, s->slot, s->pos0, s->n_new)) {
            DPEP_ERROR("attn: sequence %d (slot %d) would write positions [%lld, %lld) into a page "
                       "shared with another sequence (shared pages are read-only)",
                       i, s->slot, (long long)s->pos0, (long long)(s->pos0 + s->n_new));
            return DPEP_ERR_INVALID;
        }
        for (int j = 0; j < i; j++) {
            if (seq[j].slot == s->slot) {
                DPEP_ERROR("attn: slot %d appears twice in one batch", s->slot);
                return DPEP_ERR_INVALID;
            }
        }
        *T += s->n_new;
    }
    if (*T > a->max_tokens) {
        DPEP_ERROR("attn: %lld tokens in the batch, max_tokens %d", (long long)*T, a->max_tokens);
        return DPEP_ERR_INVALID;
    }
    return DPEP_OK;
}

dpep_status dpep_attn_forward(dpep_attn *a, const dpep_layer_w *w, int layer, dpep_attn_kv *kv,
                              const dpep_attn_seq *seq, int n_seq, const float *x, float *out)
{
    if (!a || !w || !kv || (n_seq > 0 && (!seq || !x || !out)) || n_seq < 0) return DPEP_ERR_INVALID;
    if (layer < 0 || layer >= kv->n_layers) {
        DPEP_ERROR("attn: layer %d outside the cache's %d layers", layer, kv->n_layers);
        return DPEP_ERR_INVALID;
    }
    if (w->n_heads != a->d.H || w->head0 != a->d.head0) {
        DPEP_ERROR("attn: weights hold heads [%d, %d), the context [%d, %d)", w->head0,
                   w->head0 + w->n_heads, a->d.head0, a->d.head0 + a->d.H);
        return DPEP_ERR_INVALID;
    }
    if (kv->dev.kind != a->dev.kind || kv->dev.ordinal != a->dev.ordinal) {
        DPEP_ERROR("attn: the cache is on %s %d, the context on %s %d",
                   dpep_device_kind_name(kv->dev.kind), kv->dev.ordinal,
                   dpep_device_kind_name(a->dev.kind), a->dev.ordinal);
        return DPEP_ERR_INVALID;
    }
    if (kv->kv_lora != a->d.kv_lora || kv->rope != a->d.rope) {
        DPEP_ERROR("attn: cache rows (%d + %d) do not match the model (%d + %d)", kv->kv_lora,
                   kv->rope, a->d.kv_lora, a->d.rope);
        return DPEP_ERR_INVALID;
    }
    int64_t T = 0;
    DPEP_TRY(check_batch(a, kv, seq, n_seq, &T));
    if (T > 0) DPEP_TRY(a->ops->forward(a, w, layer, kv, seq, n_seq, (int)T, x, out));
    if (a->tp && dpep_comm_size(a->tp) > 1) {
        double t0 = dpep_clock_s();
        DPEP_TRY(dpep_comm_allreduce(a->tp, out, out, T * a->d.hidden, DPEP_COMM_F32));
        a->timing.reduce_s += dpep_clock_s() - t0;
    }
    a->timing.calls++;
    /* the cache now ends after the new tokens of each sequence */
    for (int i = 0; i < n_seq; i++) kv->len[seq[i].slot] = seq[i].pos0 + seq[i].n_new;
    return DPEP_OK;
}

dpep_status dpep_attn_stage(dpep_attn *a, dpep_attn_kv *kv, const dpep_attn_seq *seq, int n_seq,
                            int *shape)
{
    if (!a || !kv || !shape || n_seq < 0 || (n_seq > 0 && !seq)) return DPEP_ERR_INVALID;
    *shape = 0;
    int64_t T = 0;
    DPEP_TRY(check_batch(a, kv, seq, n_seq, &T));
    if (a->ops->stage) DPEP_TRY(a->ops->stage(a, kv, seq, n_seq, (int)T, shape));
    for (int i = 0; i < n_seq; i++) kv->len[seq[i].slot] = seq[i].pos0 + seq[i].n_new;
    return DPEP_OK;
}

void dpep_attn_unstage(dpep_attn *a)
{
    if (a) a->cu_staged = 0;
}

void dpep_attn_timing_get(const dpep_attn *a, dpep_attn_timing *t) { *t = a->timing; }
void dpep_attn_timing_reset(dpep_attn *a) { memset(&a->timing, 0, sizeof a->timing); }

double dpep_attn_core_flops(const dpep_model_config *m, int n_heads, int n_new, int64_t pos0,
                            dpep_attn_decode form)
{
    const double L = m->kv_lora_rank;
    /* keys attended by the new tokens, causal: sum over i of (pos0 + i + 1) */
    double keys = (double)n_new * (double)pos0 + (double)n_new * (n_new + 1) / 2.0;
    if (form == DPEP_ATTN_DECODE_ABSORBED)
        return n_heads * (keys * (2.0 * (L + m->qk_rope) + 2.0 * L) +
                          n_new * (2.0 * m->qk_nope * L + 2.0 * L * m->v_head));
    double ctx = (double)pos0 + n_new;
    return n_heads * (keys * (2.0 * (m->qk_nope + m->qk_rope) + 2.0 * m->v_head) +
                      ctx * 2.0 * L * (m->qk_nope + m->v_head));
}
