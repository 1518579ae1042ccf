/* test_attn.c — MLA attention against a naive double-precision reference on
 * random weights and inputs (prefill, decode, prefill over a cached prefix,
 * mixed batches, page sizes 1/3/16/64, fragmented page tables, a second
 * layer, with and without q_lora, over a prefix shared with another slot),
 * absorbed vs naive decode, the KV pool (capacity, NOMEM, reuse, page
 * reference counts and sharing), devices (explicit CPU, a kind without
 * kernels refused), YaRN frequencies for the V3 and V2-Lite
 * settings, and per-rank KV bytes. Run under mpiexec -n 1, 2 or 4: the ranks
 * form the attention-TP group and split the heads; every rank rebuilds the
 * full weights from a seed, so the reference (all heads) is the attn_tp=1
 * result.
 *
 * Tolerance (documented in attn/README.md): max |out - ref| <= 1e-4 *
 * max |ref| (fp32 against double; observed ~1e-6); absorbed against naive
 * decode: <= 2e-5 * max |naive|. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpep_attn.h"
#include "dpep_world.h"

static int g_pass, g_fail, g_rank, g_size;
#define EXPECT(cond, ...)                                                      \
    do {                                                                       \
        if (cond) {                                                            \
            g_pass++;                                                          \
        } else {                                                               \
            g_fail++;                                                          \
            printf("FAIL [rank %d] %s:%d: ", g_rank, __FILE__, __LINE__);      \
            printf(__VA_ARGS__);                                               \
            printf("\n");                                                      \
        }                                                                      \
    } while (0)
#define SAY(...)                                                               \
    do {                                                                       \
        if (g_rank == 0) printf(__VA_ARGS__);                                  \
    } while (0)

/* vs the double reference; with a BF16 KV pool 1e-3: the kernels round a
 * row computed in f32 and the reference one computed in double, which land
 * on different sides of a BF16 rounding boundary for an element now and
 * then (seen: 2.7e-4; a reference that does not round is 4e-3 off) */
#define REL_TOL (g_kv == DPEP_WT_BF16 ? 1e-3 : 1e-4)
#define ABS_VS_NAIVE_TOL 2e-5

#include "attn_fixture.h"

/* Full (all heads) weights of one layer, as in a checkpoint. With g_wt
 * BF16 or F16 the matrices are rounded to that type (the double reference
 * then sees exactly what the kernels widen) and kept as stored in h16. */
typedef struct full_w {
    float *q_a, *q_a_norm, *q_b, *kv_a, *kv_a_norm, *kv_b, *o;
    uint16_t *q_a16, *q_b16, *kv_a16, *kv_b16, *o16;
} full_w;

static dpep_wtype g_wt = DPEP_WT_F32;
/* The KV pool's dtype in the scenarios; with BF16 the double reference
 * rounds each latent row to BF16 too (what the cache holds). */
static dpep_wtype g_kv = DPEP_WT_F32;

/* Rounds x[0..n) to g_wt and returns the stored copy (NULL for F32). */
static uint16_t *round_to_wt(float *x, size_t n)
{
    if (g_wt == DPEP_WT_F32 || !x) return NULL;
    uint16_t *h = malloc(sizeof(uint16_t) * n);
    for (size_t i = 0; i < n; i++) {
        h[i] = g_wt == DPEP_WT_BF16 ? dpep_f32_to_bf16(x[i]) : dpep_f32_to_f16(x[i]);
        x[i] = g_wt == DPEP_WT_BF16 ? dpep_bf16_to_f32(h[i]) : dpep_f16_to_f32(h[i]);
    }
    return h;
}

/* A matrix [rows, cols] over f32 storage or its stored 16-bit copy. */
static dpep_mat wmat(float *f32, uint16_t *h, size_t off, int rows, int cols)
{
    if (!f32) return dpep_mat_make(NULL, DPEP_WT_F32, 0, 0);
    if (g_wt == DPEP_WT_F32) return dpep_mat_make(f32 + off, DPEP_WT_F32, rows, cols);
    return dpep_mat_make(h + off, g_wt, rows, cols);
}

static void full_w_init(full_w *f, const dpep_model_config *m, uint64_t seed)
{
    g_rng = seed;
    int h = m->hidden, H = m->n_heads, qk = m->qk_nope + m->qk_rope, ql = m->q_lora_rank;
    int qin = ql ? ql : h;
    double sh = sqrt(3.0 / h), sq = sqrt(3.0 / qin), sl = sqrt(3.0 / m->kv_lora_rank),
           so = sqrt(3.0 / (H * m->v_head));
    f->q_a = ql ? malloc(sizeof(float) * (size_t)ql * h) : NULL;
    f->q_a_norm = ql ? malloc(sizeof(float) * (size_t)ql) : NULL;
    if (ql) {
        fill(f->q_a, (size_t)ql * h, -sh, sh);
        fill(f->q_a_norm, (size_t)ql, 0.5, 1.5);
    }
    f->q_b = malloc(sizeof(float) * (size_t)H * qk * qin);
    fill(f->q_b, (size_t)H * qk * qin, -sq, sq);
    int row = m->kv_lora_rank + m->qk_rope;
    f->kv_a = malloc(sizeof(float) * (size_t)row * h);
    fill(f->kv_a, (size_t)row * h, -sh, sh);
    f->kv_a_norm = malloc(sizeof(float) * (size_t)m->kv_lora_rank);
    fill(f->kv_a_norm, (size_t)m->kv_lora_rank, 0.5, 1.5);
    size_t kvb = (size_t)H * (m->qk_nope + m->v_head) * m->kv_lora_rank;
    f->kv_b = malloc(sizeof(float) * kvb);
    fill(f->kv_b, kvb, -sl, sl);
    f->o = malloc(sizeof(float) * (size_t)h * H * m->v_head);
    fill(f->o, (size_t)h * H * m->v_head, -so, so);
    f->q_a16 = round_to_wt(f->q_a, ql ? (size_t)ql * h : 0);
    f->q_b16 = round_to_wt(f->q_b, (size_t)H * qk * qin);
    f->kv_a16 = round_to_wt(f->kv_a, (size_t)row * h);
    f->kv_b16 = round_to_wt(f->kv_b, kvb);
    f->o16 = round_to_wt(f->o, (size_t)h * H * m->v_head);
}

static void full_w_free(full_w *f)
{
    free(f->q_a);
    free(f->q_a_norm);
    free(f->q_b);
    free(f->kv_a);
    free(f->kv_a_norm);
    free(f->kv_b);
    free(f->o);
    free(f->q_a16);
    free(f->q_b16);
    free(f->kv_a16);
    free(f->kv_b16);
    free(f->o16);
}

/* This rank's slice [head0, head0 + nh) as dpep_layer_w (o's columns copied). */
static dpep_layer_w rank_w(const full_w *f, const dpep_model_config *m, int head0, int nh)
{
    dpep_layer_w w;
    memset(&w, 0, sizeof w);
    int qk = m->qk_nope + m->qk_rope, qin = m->q_lora_rank ? m->q_lora_rank : m->hidden;
    int bw = m->qk_nope + m->v_head, V = m->v_head, HV = m->n_heads * V;
    w.head0 = head0;
    w.n_heads = nh;
    int h = m->hidden, row = m->kv_lora_rank + m->qk_rope;
    w.q_a = wmat(f->q_a, f->q_a16, 0, m->q_lora_rank, h);
    w.q_a_norm = f->q_a_norm;
    w.q_b = wmat(f->q_b, f->q_b16, (size_t)head0 * qk * qin, nh * qk, qin);
    w.kv_a = wmat(f->kv_a, f->kv_a16, 0, row, h);
    w.kv_a_norm = f->kv_a_norm;
    w.kv_b = wmat(f->kv_b, f->kv_b16, (size_t)head0 * bw * m->kv_lora_rank, nh * bw,
                  m->kv_lora_rank);
    /* o's columns of these heads, copied (in the stored type) */
    size_t es = dpep_wtype_size(g_wt);
    char *o = malloc(es * (size_t)h * nh * V);
    const char *src = g_wt == DPEP_WT_F32 ? (const char *)f->o : (const char *)f->o16;
    for (int r = 0; r < h; r++)
        memcpy(o + es * (size_t)r * nh * V, src + es * ((size_t)r * HV + (size_t)head0 * V),
               es * (size_t)nh * V);
    w.o = dpep_mat_make(o, g_wt, h, nh * V);
    return w;
}

/* ---- naive double reference: one sequence, positions 0..N-1, causal ---- */
static void ref_inv_freq(const dpep_model_config *m, double *inv)
{
    int d = m->qk_rope;
    double th = m->rope_theta, f = m->yarn_factor, L0 = m->yarn_orig_max_pos;
    double lo = floor(d * log(L0 / (m->yarn_beta_fast * 2 * M_PI)) / (2 * log(th)));
    double hi = ceil(d * log(L0 / (m->yarn_beta_slow * 2 * M_PI)) / (2 * log(th)));
    lo = fmax(lo, 0);
    hi = fmin(hi, d - 1);
    if (lo == hi) hi += 0.001;
    for (int i = 0; i < d / 2; i++) {
        double base = pow(th, -2.0 * i / d);
        double ramp = fmin(fmax((i - lo) / (hi - lo), 0), 1);
        inv[i] = m->yarn ? base / f * ramp + base * (1 - ramp) : base;
    }
}

static double ref_mscale(double f, double ms) { return f <= 1 ? 1 : 0.1 * ms * log(f) + 1; }

static void ref_rms(double *x, int n, const float *w, double eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double inv = 1 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) x[i] = x[i] * inv * w[i];
}

static void ref_rope(double *x, int d, const double *inv, int pos, double fac)
{
    for (int i = 0; i < d / 2; i++) {
        double c = cos(pos * inv[i]) * fac, s = sin(pos * inv[i]) * fac;
        double a = x[2 * i], b = x[2 * i + 1];
        x[2 * i] = a * c - b * s;
        x[2 * i + 1] = b * c + a * s;
    }
}

static void ref_mla(const dpep_model_config *m, const full_w *f, const float *x, int N, double *out)
{
    int h = m->hidden, H = m->n_heads, nope = m->qk_nope, R = m->qk_rope, V = m->v_head,
        L = m->kv_lora_rank, qk = nope + R, ql = m->q_lora_rank, qin = ql ? ql : h, bw = nope + V;
    double inv[64];
    ref_inv_freq(m, inv);
    double fac = m->yarn ? ref_mscale(m->yarn_factor, m->yarn_mscale) /
                               ref_mscale(m->yarn_factor, m->yarn_mscale_all_dim)
                         : 1;
    double ms = m->yarn ? ref_mscale(m->yarn_factor, m->yarn_mscale_all_dim) : 1;
    double scale = ms * ms / sqrt(qk);
    double *q = calloc((size_t)N * H * qk, sizeof(double));
    double *k = calloc((size_t)N * H * qk, sizeof(double));
    double *v = calloc((size_t)N * H * V, sizeof(double));
    double *qa = calloc((size_t)qin, sizeof(double)), *kva = calloc((size_t)L + R, sizeof(double));
    double *heads = calloc((size_t)H * V, sizeof(double)), *p = calloc((size_t)N, sizeof(double));
    for (int t = 0; t < N; t++) {
        const float *xt = x + (size_t)t * h;
        if (ql) {
            for (int o = 0; o < ql; o++) {
                double a = 0;
                for (int j = 0; j < h; j++) a += (double)f->q_a[(size_t)o * h + j] * xt[j];
                qa[o] = a;
            }
            ref_rms(qa, ql, f->q_a_norm, 1e-6);
        } else {
            for (int j = 0; j < h; j++) qa[j] = xt[j];
        }
        for (int o = 0; o < H * qk; o++) {
            double a = 0;
            for (int j = 0; j < qin; j++) a += (double)f->q_b[(size_t)o * qin + j] * qa[j];
            q[(size_t)t * H * qk + o] = a;
        }
        for (int o = 0; o < L + R; o++) {
            double a = 0;
            for (int j = 0; j < h; j++) a += (double)f->kv_a[(size_t)o * h + j] * xt[j];
            kva[o] = a;
        }
        ref_rms(kva, L, f->kv_a_norm, 1e-6);
        ref_rope(kva + L, R, inv, t, fac);
        if (g_kv == DPEP_WT_BF16)
            for (int o = 0; o < L + R; o++) kva[o] = dpep_bf16_to_f32(dpep_f32_to_bf16((float)kva[o]));
        for (int hh = 0; hh < H; hh++) {
            double *qh = q + ((size_t)t * H + hh) * qk, *kh = k + ((size_t)t * H + hh) * qk;
            ref_rope(qh + nope, R, inv, t, fac);
            for (int o = 0; o < bw; o++) {
                double a = 0;
                for (int j = 0; j < L; j++) a += (double)f->kv_b[((size_t)hh * bw + o) * L + j] * kva[j];
                if (o < nope)
                    kh[o] = a;
                else
                    v[((size_t)t * H + hh) * V + o - nope] = a;
            }
            for (int j = 0; j < R; j++) kh[nope + j] = kva[L + j];
        }
    }
    for (int t = 0; t < N; t++) {
        for (int hh = 0; hh < H; hh++) {
            const double *qh = q + ((size_t)t * H + hh) * qk;
            double mx = -INFINITY, sum = 0;
            for (int s = 0; s <= t; s++) {
                const double *kh = k + ((size_t)s * H + hh) * qk;
                double a = 0;
                for (int j = 0; j < qk; j++) a += qh[j] * kh[j];
                p[s] = a * scale;
                mx = fmax(mx, p[s]);
            }
            for (int s = 0; s <= t; s++) sum += (p[s] = exp(p[s] - mx));
            for (int j = 0; j < V; j++) {
                double a = 0;
                for (int s = 0; s <= t; s++) a += p[s] * v[((size_t)s * H + hh) * V + j];
                heads[hh * V + j] = a / sum;
            }
        }
        for (int o = 0; o < h; o++) {
            double a = 0;
            for (int j = 0; j < H * V; j++) a += (double)f->o[(size_t)o * H * V + j] * heads[j];
            out[(size_t)t * h + o] = a;
        }
    }
    free(q);
    free(k);
    free(v);
    free(qa);
    free(kva);
    free(heads);
    free(p);
}

/* max |a - ref| / max |ref| over rows [r0, r0 + n) of ref. */
static double rel_err(const float *a, const double *ref, int r0, int n, int h)
{
    double e = 0, mx = 0;
    for (size_t i = 0; i < (size_t)n * h; i++) {
        e = fmax(e, fabs(a[i] - ref[(size_t)r0 * h + i]));
        mx = fmax(mx, fabs(ref[(size_t)r0 * h + i]));
    }
    return e / (mx > 0 ? mx : 1);
}

static double g_worst; /* worst error vs the double reference, this rank */

/* Slot `sb` holds n tokens of layer 1 (x rows 0..n-1, reference ref). A new
 * slot shares its whole pages up to n - 8 tokens and computes the rest over
 * them; the shared pages are read-only while both hold them. */
static void shared_prefix(dpep_attn *a, const dpep_layer_w *w, dpep_attn_kv *kv, int h, int page_size,
                          int sb, const float *x, const double *ref, int n, const char *what)
{
    const int n_sh = (n - 8) / page_size * page_size;
    int sp = -1;
    int64_t free0 = dpep_attn_kv_free_tokens(kv);
    dpep_status st = dpep_attn_kv_seq_open(kv, &sp);
    if (st == DPEP_OK) st = dpep_attn_kv_seq_share(kv, sp, sb, n_sh);
    EXPECT(st == DPEP_OK && dpep_attn_kv_seq_len(kv, sp) == n_sh &&
               dpep_attn_kv_seq_capacity(kv, sp) == n_sh && dpep_attn_kv_free_tokens(kv) == free0,
           "%s share %d tokens: st %d", what, n_sh, st);
    if (n_sh > 0)
        EXPECT(dpep_attn_kv_page_refs(kv, sp, 0) == 2 && dpep_attn_kv_page_refs(kv, sb, n_sh - 1) == 2 &&
                   dpep_attn_kv_page_refs(kv, sb, n_sh) == 1 &&
                   dpep_attn_kv_row(kv, sp, 1, n_sh - 1) == dpep_attn_kv_row(kv, sb, 1, n_sh - 1),
               "%s shared pages: refs 2, same rows", what);
    if (st == DPEP_OK) st = dpep_attn_kv_seq_reserve(kv, sp, n);
    float *out = malloc(sizeof(float) * (size_t)n * h);
    dpep_attn_seq q = {sp, n - n_sh, n_sh};
    if (st == DPEP_OK) st = dpep_attn_forward(a, w, 1, kv, &q, 1, x + (size_t)n_sh * h, out);
    double e = rel_err(out, ref, n_sh, n - n_sh, h);
    g_worst = fmax(g_worst, e);
    EXPECT(st == DPEP_OK && e < REL_TOL, "%s %d tokens over a shared prefix of %d: st %d err %.3g",
           what, n - n_sh, n_sh, st, e);
    if (n_sh > 0) {
        /* recomputing into a shared page is refused, in both holders */
        q = (dpep_attn_seq){sp, 1, n_sh - 1};
        EXPECT(dpep_attn_forward(a, w, 1, kv, &q, 1, x, out) == DPEP_ERR_INVALID, "%s write shared", what);
        q = (dpep_attn_seq){sb, 1, 0};
        EXPECT(dpep_attn_forward(a, w, 1, kv, &q, 1, x, out) == DPEP_ERR_INVALID, "%s write shared src",
               what);
    }
    EXPECT(dpep_attn_kv_seq_close(kv, sp) == DPEP_OK && dpep_attn_kv_free_tokens(kv) == free0 &&
               (n_sh == 0 || dpep_attn_kv_page_refs(kv, sb, 0) == 1),
           "%s close the sharer: only its own pages return", what);
    free(out);
}

/* Scenarios on one model / page size. */
static void scenarios(const dpep_model_config *m, dpep_comm *tp, int page_size)
{
    int h = m->hidden, nh = m->n_heads / g_size, head0 = g_rank * nh;
    full_w f;
    full_w_init(&f, m, 42 + (uint64_t)m->q_lora_rank);
    dpep_layer_w w = rank_w(&f, m, head0, nh);
    enum { NA = 40, NB = 32, NC = 13, ND = 21, NE = 9 };
    int lens[5] = {NA, NB, NC, ND, NE};
    float *x[5];
    double *ref[5];
    for (int i = 0; i < 5; i++) {
        x[i] = malloc(sizeof(float) * (size_t)lens[i] * h);
        fill(x[i], (size_t)lens[i] * h, -1.5, 1.5);
        ref[i] = malloc(sizeof(double) * (size_t)lens[i] * h);
        ref_mla(m, &f, x[i], lens[i], ref[i]);
    }
    dpep_attn_kv_params kp = {.n_layers = 2, .page_size = page_size, .budget_bytes = 4u << 20,
                              .max_seqs = 8, .max_seq_len = 256, .dtype = g_kv};
    dpep_attn_params ap = {.head0 = head0, .n_heads = nh, .max_tokens = 48, .max_ctx = 256,
                           .decode = DPEP_ATTN_DECODE_ABSORBED, .tp = tp};
    dpep_attn_kv *kv = NULL;
    dpep_attn *a = NULL;
    EXPECT(dpep_attn_kv_create(m, &kp, &kv) == DPEP_OK && dpep_attn_create(m, &ap, &a) == DPEP_OK,
           "create");
    float *out = malloc(sizeof(float) * 64 * (size_t)h), *xb = malloc(sizeof(float) * 64 * (size_t)h);
    char what[96];
    snprintf(what, sizeof what, "%s kv %s q_lora %d page %d attn_tp %d", dpep_wtype_name(g_wt),
             dpep_wtype_name(g_kv), m->q_lora_rank, page_size, g_size);
    dpep_status st;
    double e;
    /* 1. prefill of 40 tokens in one call (layer 0) */
    int sa = -1;
    st = dpep_attn_kv_seq_open(kv, &sa);
    if (st == DPEP_OK) st = dpep_attn_kv_seq_reserve(kv, sa, NA);
    dpep_attn_seq q1 = {sa, NA, 0};
    if (st == DPEP_OK) st = dpep_attn_forward(a, &w, 0, kv, &q1, 1, x[0], out);
    e = rel_err(out, ref[0], 0, NA, h);
    g_worst = fmax(g_worst, e);
    EXPECT(st == DPEP_OK && e < REL_TOL, "%s prefill 40: st %d err %.3g", what, st, e);
    /* 2. layer 1: prefix 17, chunk of 9 over it, then 6 decode steps, with the
     * pages interleaved with another sequence's (fragmented page table) */
    int sb = -1, sx = -1;
    dpep_attn_kv_seq_open(kv, &sb);
    dpep_attn_kv_seq_open(kv, &sx);
    for (int n = page_size; n < NB + page_size; n += page_size) {
        dpep_attn_kv_seq_reserve(kv, sb, n < NB ? n : NB);
        dpep_attn_kv_seq_reserve(kv, sx, n);
    }
    dpep_attn_seq qb = {sb, 17, 0};
    st = dpep_attn_forward(a, &w, 1, kv, &qb, 1, x[1], out);
    e = rel_err(out, ref[1], 0, 17, h);
    qb = (dpep_attn_seq){sb, 9, 17};
    if (st == DPEP_OK) st = dpep_attn_forward(a, &w, 1, kv, &qb, 1, x[1] + 17 * h, out);
    e = fmax(e, rel_err(out, ref[1], 17, 9, h));
    EXPECT(st == DPEP_OK && e < REL_TOL, "%s prefix 17 + chunk 9: st %d err %.3g", what, st, e);
    g_worst = fmax(g_worst, e);
    double e_abs = 0, e_naive = 0;
    for (int t = 26; t < NB && st == DPEP_OK; t++) {
        qb = (dpep_attn_seq){sb, 1, t};
        float *o2 = out + 32 * h;
        dpep_attn_set_decode(a, DPEP_ATTN_DECODE_NAIVE);
        st = dpep_attn_forward(a, &w, 1, kv, &qb, 1, x[1] + (size_t)t * h, o2);
        dpep_attn_set_decode(a, DPEP_ATTN_DECODE_ABSORBED);
        if (st == DPEP_OK) st = dpep_attn_forward(a, &w, 1, kv, &qb, 1, x[1] + (size_t)t * h, out);
        e_abs = fmax(e_abs, rel_err(out, ref[1], t, 1, h));
        e_naive = fmax(e_naive, rel_err(o2, ref[1], t, 1, h));
        double mx = 0, d = 0;
        for (int j = 0; j < h; j++) {
            mx = fmax(mx, fabs(o2[j]));
            d = fmax(d, fabs(o2[j] - out[j]));
        }
        EXPECT(d <= ABS_VS_NAIVE_TOL * mx, "%s absorbed vs naive at %d: %.3g", what, t, d / mx);
    }
    EXPECT(st == DPEP_OK && e_abs < REL_TOL && e_naive < REL_TOL,
           "%s decode steps: st %d absorbed %.3g naive %.3g", what, st, e_abs, e_naive);
    g_worst = fmax(g_worst, fmax(e_abs, e_naive));
    dpep_attn_kv_seq_close(kv, sx);
    /* 3. one mixed batch: C prefill 13, D decode at 20 (cached 20), E chunk
     * 4..8 over a cached 4, B decode again at 31 (recompute) */
    int sc_ = -1, sd = -1, se = -1;
    dpep_attn_kv_seq_open(kv, &sc_);
    dpep_attn_kv_seq_open(kv, &sd);
    dpep_attn_kv_seq_open(kv, &se);
    dpep_attn_kv_seq_reserve(kv, sc_, NC);
    dpep_attn_kv_seq_reserve(kv, sd, ND);
    dpep_attn_kv_seq_reserve(kv, se, NE);
    dpep_attn_seq pre[2] = {{sd, 20, 0}, {se, 4, 0}};
    memcpy(xb, x[3], sizeof(float) * 20 * h);
    memcpy(xb + 20 * h, x[4], sizeof(float) * 4 * h);
    st = dpep_attn_forward(a, &w, 0, kv, pre, 2, xb, out);
    e = fmax(rel_err(out, ref[3], 0, 20, h), rel_err(out + 20 * h, ref[4], 0, 4, h));
    dpep_attn_seq mix[4] = {{sc_, NC, 0}, {sd, 1, 20}, {se, 5, 4}, {sb, 1, 31}};
    memcpy(xb, x[2], sizeof(float) * NC * h);
    memcpy(xb + NC * h, x[3] + 20 * h, sizeof(float) * h);
    memcpy(xb + (NC + 1) * h, x[4] + 4 * h, sizeof(float) * 5 * h);
    memcpy(xb + (NC + 6) * h, x[1] + 31 * h, sizeof(float) * h);
    /* B lives in layer 1 only; run the mix on layer 0 without B, then B alone */
    if (st == DPEP_OK) st = dpep_attn_forward(a, &w, 0, kv, mix, 3, xb, out);
    e = fmax(e, rel_err(out, ref[2], 0, NC, h));
    e = fmax(e, rel_err(out + NC * h, ref[3], 20, 1, h));
    e = fmax(e, rel_err(out + (NC + 1) * h, ref[4], 4, 5, h));
    EXPECT(st == DPEP_OK && e < REL_TOL, "%s mixed batch: st %d err %.3g", what, st, e);
    g_worst = fmax(g_worst, e);
    /* 4. bad batches are refused with DPEP_ERR_INVALID, not a crash */
    dpep_attn_seq bad = {sc_, 1, NC + 1}; /* pos0 beyond the cached length */
    EXPECT(dpep_attn_forward(a, &w, 0, kv, &bad, 1, xb, out) == DPEP_ERR_INVALID, "%s gap", what);
    bad = (dpep_attn_seq){sc_, 60, 0}; /* beyond the reservation */
    EXPECT(dpep_attn_forward(a, &w, 0, kv, &bad, 1, xb, out) == DPEP_ERR_INVALID, "%s reserve", what);
    dpep_attn_seq twice[2] = {{sd, 1, 20}, {sd, 1, 20}};
    EXPECT(dpep_attn_forward(a, &w, 0, kv, twice, 2, xb, out) == DPEP_ERR_INVALID, "%s twice", what);
    EXPECT(dpep_attn_kv_seq_len(kv, sd) == 21 && dpep_attn_kv_seq_len(kv, sc_) == NC, "%s lengths", what);
    /* 5. a prefix shared with B (layer 1): S attends over B's pages */
    shared_prefix(a, &w, kv, h, page_size, sb, x[1], ref[1], NB, what);
    free(out);
    free(xb);
    free(w.o.p);
    for (int i = 0; i < 5; i++) {
        free(x[i]);
        free(ref[i]);
    }
    dpep_attn_destroy(a);
    dpep_attn_kv_destroy(kv);
    full_w_free(&f);
}

static void pool_tests(void)
{
    dpep_model_config m = test_model(true);
    /* 2 layers x 40 floats x 4 B = 320 B per token; pages of 4 -> 1280 B */
    dpep_attn_kv_params kp = {.n_layers = 2, .page_size = 4, .budget_bytes = 10 * 1280 + 100,
                              .max_seqs = 3, .max_seq_len = 64};
    dpep_attn_kv *kv = NULL;
    EXPECT(dpep_attn_kv_create(&m, &kp, &kv) == DPEP_OK, "pool create");
    if (!kv) return;
    EXPECT(dpep_attn_kv_bytes_per_token(kv) == 320 && dpep_attn_kv_capacity_tokens(kv) == 40,
           "bytes per token %zu, capacity %lld", dpep_attn_kv_bytes_per_token(kv),
           (long long)dpep_attn_kv_capacity_tokens(kv));
    int s0 = -1, s1 = -1, s2 = -1, s3 = -1;
    EXPECT(dpep_attn_kv_seq_open(kv, &s0) == DPEP_OK && dpep_attn_kv_seq_open(kv, &s1) == DPEP_OK &&
               dpep_attn_kv_seq_open(kv, &s2) == DPEP_OK,
           "open 3 slots");
    EXPECT(dpep_attn_kv_seq_open(kv, &s3) == DPEP_ERR_NOMEM, "4th slot: NOMEM");
    EXPECT(dpep_attn_kv_seq_reserve(kv, s0, 30) == DPEP_OK && dpep_attn_kv_free_tokens(kv) == 8,
           "reserve 30 -> 8 free");
    EXPECT(dpep_attn_kv_seq_reserve(kv, s1, 9) == DPEP_ERR_NOMEM && dpep_attn_kv_free_tokens(kv) == 8 &&
               dpep_attn_kv_seq_capacity(kv, s1) == 0,
           "pool full: NOMEM and nothing taken");
    EXPECT(dpep_attn_kv_seq_reserve(kv, s1, 8) == DPEP_OK && dpep_attn_kv_free_tokens(kv) == 0, "fill");
    EXPECT(dpep_attn_kv_seq_reserve(kv, s2, 65) == DPEP_ERR_INVALID, "beyond max_seq_len: INVALID");
    EXPECT(dpep_attn_kv_seq_close(kv, s0) == DPEP_OK && dpep_attn_kv_free_tokens(kv) == 32 &&
               dpep_attn_kv_seq_len(kv, s0) == -1,
           "close returns pages");
    EXPECT(dpep_attn_kv_seq_reserve(kv, s2, 32) == DPEP_OK && dpep_attn_kv_row(kv, s2, 1, 31) &&
               !dpep_attn_kv_row(kv, s2, 1, 32) && !dpep_attn_kv_row(kv, s2, 2, 0),
           "reuse after close; row bounds");
    EXPECT(dpep_attn_kv_seq_close(kv, s0) == DPEP_ERR_INVALID, "double close: INVALID");
    dpep_attn_kv_destroy(kv);
    kp.budget_bytes = 1000;
    kv = NULL;
    EXPECT(dpep_attn_kv_create(&m, &kp, &kv) == DPEP_ERR_NOMEM && !kv, "budget below a page: NOMEM");
    /* a BF16 pool: half the bytes per token (twice the pages for a budget);
     * written rows rounded to nearest even; other dtypes refused */
    kp.budget_bytes = 10 * 1280 + 100;
    kp.dtype = DPEP_WT_BF16;
    EXPECT(dpep_attn_kv_create(&m, &kp, &kv) == DPEP_OK, "bf16 pool create");
    if (kv) {
        EXPECT(dpep_attn_kv_bytes_per_token(kv) == 160 && dpep_attn_kv_capacity_tokens(kv) == 80 &&
                   dpep_attn_kv_dtype(kv) == DPEP_WT_BF16 && dpep_attn_kv_pool_bytes(kv) == 80 * 160,
               "bf16 pool: bytes per token %zu, capacity %lld", dpep_attn_kv_bytes_per_token(kv),
               (long long)dpep_attn_kv_capacity_tokens(kv));
        float rows[3 * 40];
        for (int i = 0; i < 3 * 40; i++) rows[i] = (float)(i - 60) * 0.01234567f + 1e-3f;
        rows[5] = 1.0f + 0x1p-8f;          /* a tie: to even (1.0) */
        rows[6] = 1.0f + 3 * 0x1p-8f;      /* a tie: to even (1 + 2^-6) */
        rows[7] = -3.0e38f;                /* large values stay finite */
        int sw = -1;
        bool ok = dpep_attn_kv_seq_open(kv, &sw) == DPEP_OK && dpep_attn_kv_seq_reserve(kv, sw, 3) == DPEP_OK &&
                  dpep_attn_kv_write(kv, sw, 1, 0, 3, rows) == DPEP_OK && dpep_attn_kv_seq_len(kv, sw) == 3;
        for (int r = 0; ok && r < 3; r++) {
            const uint16_t *h = dpep_attn_kv_row(kv, sw, 1, r);
            for (int j = 0; ok && j < 40; j++) ok = h && h[j] == dpep_f32_to_bf16(rows[r * 40 + j]);
        }
        const uint16_t *h0 = dpep_attn_kv_row(kv, sw, 1, 0);
        EXPECT(ok && h0 && h0[5] == 0x3f80 && h0[6] == 0x3f82 && dpep_bf16_to_f32(h0[7]) < -2.9e38f,
               "bf16 pool: kv_write rounds rows to nearest even");
        dpep_attn_kv_destroy(kv);
        kv = NULL;
    }
    kp.dtype = DPEP_WT_F16;
    EXPECT(dpep_attn_kv_create(&m, &kp, &kv) == DPEP_ERR_INVALID && !kv, "an f16 pool is refused");
    /* per-rank KV bytes of DeepSeek-V3 (61 layers, 512 + 64) for 100k
     * tokens on tp 8: DP attention (dp 8) vs attention-TP 8 (dp 1) */
    dpep_model_config v3 = m;
    v3.n_layers = 61;
    v3.kv_lora_rank = 512;
    v3.qk_rope = 64;
    dpep_layout dpa = {.world = 8, .tp = 8, .dp = 8, .ep = 8, .dpa = true, .n_instances = 1,
                       .attn_tp = 1, .attn_dp = 8, .moe_tp = 1, .dense_tp = 1};
    dpep_layout tp8 = dpa;
    tp8.dpa = false;
    tp8.dp = 1;
    tp8.attn_tp = 8;
    tp8.attn_dp = 1;
    double b_dpa = dpep_attn_kv_rank_bytes(&v3, &dpa, 100000, 2),
           b_tp = dpep_attn_kv_rank_bytes(&v3, &tp8, 100000, 2);
    SAY("V3 KV per rank for 100k tokens (BF16): DP attention dp8 %.2f GiB, attention-TP 8 %.2f GiB "
        "(bytes/token/layer %d)\n",
        b_dpa / (1 << 30), b_tp / (1 << 30), 2 * 576);
    EXPECT(fabs(b_tp - 8 * b_dpa) < 1 && fabs(b_tp - 100000.0 * 61 * 576 * 2) < 1, "rank bytes");
}

/* Page reference counts: shared pages count their holders, close drops one
 * reference per page and frees only pages nobody holds, shared pages are
 * read-only, free-token accounting follows. */
static void refcount_tests(void)
{
    dpep_model_config m = test_model(true);
    /* 2 layers x 40 floats x 4 B = 320 B per token; pages of 4 -> 1280 B */
    dpep_attn_kv_params kp = {.n_layers = 2, .page_size = 4, .budget_bytes = 10 * 1280,
                              .max_seqs = 4, .max_seq_len = 64};
    dpep_attn_kv *kv = NULL;
    EXPECT(dpep_attn_kv_create(&m, &kp, &kv) == DPEP_OK, "refs: pool create");
    if (!kv) return;
    float rows[16 * 40];
    fill(rows, 16 * 40, -1, 1);
    int s0 = -1, s1 = -1, s2 = -1;
    EXPECT(dpep_attn_kv_seq_open(kv, &s0) == DPEP_OK && dpep_attn_kv_seq_reserve(kv, s0, 10) == DPEP_OK &&
               dpep_attn_kv_write(kv, s0, 0, 0, 10, rows) == DPEP_OK &&
               dpep_attn_kv_write(kv, s0, 1, 0, 10, rows) == DPEP_OK && dpep_attn_kv_free_tokens(kv) == 28,
           "refs: s0 holds 3 pages, 10 tokens written");
    EXPECT(dpep_attn_kv_page_refs(kv, s0, 0) == 1 && dpep_attn_kv_page_refs(kv, s0, 11) == 1 &&
               dpep_attn_kv_page_refs(kv, s0, 12) == -1 && dpep_attn_kv_page_refs(kv, 3, 0) == -1,
           "refs: one holder each; -1 outside the pages or for a closed slot");
    EXPECT(dpep_attn_kv_seq_open(kv, &s1) == DPEP_OK, "refs: open s1");
    EXPECT(dpep_attn_kv_seq_share(kv, s1, s0, 6) == DPEP_ERR_INVALID &&
               dpep_attn_kv_seq_share(kv, s1, s0, 12) == DPEP_ERR_INVALID &&
               dpep_attn_kv_seq_share(kv, s1, s1, 4) == DPEP_ERR_INVALID &&
               dpep_attn_kv_seq_share(kv, s1, 3, 4) == DPEP_ERR_INVALID &&
               dpep_attn_kv_seq_capacity(kv, s1) == 0,
           "refs: share refused for part of a page, unwritten tokens, itself, a closed slot");
    EXPECT(dpep_attn_kv_seq_share(kv, s1, s0, 8) == DPEP_OK && dpep_attn_kv_free_tokens(kv) == 28 &&
               dpep_attn_kv_seq_len(kv, s1) == 8 && dpep_attn_kv_seq_capacity(kv, s1) == 8 &&
               dpep_attn_kv_page_refs(kv, s0, 0) == 2 && dpep_attn_kv_page_refs(kv, s0, 7) == 2 &&
               dpep_attn_kv_page_refs(kv, s0, 8) == 1 &&
               dpep_attn_kv_row(kv, s1, 1, 5) == dpep_attn_kv_row(kv, s0, 1, 5),
           "refs: share 2 pages: refs 2, no free page taken, same rows");
    EXPECT(dpep_attn_kv_seq_share(kv, s1, s0, 4) == DPEP_ERR_INVALID, "refs: share into a non-empty slot");
    EXPECT(dpep_attn_kv_seq_open(kv, &s2) == DPEP_OK && dpep_attn_kv_seq_share(kv, s2, s1, 4) == DPEP_OK &&
               dpep_attn_kv_page_refs(kv, s0, 0) == 3 && dpep_attn_kv_page_refs(kv, s1, 4) == 2,
           "refs: a third holder of page 0");
    EXPECT(dpep_attn_kv_write(kv, s1, 0, 4, 1, rows) == DPEP_ERR_INVALID &&
               dpep_attn_kv_write(kv, s0, 0, 0, 1, rows) == DPEP_ERR_INVALID &&
               dpep_attn_kv_write(kv, s0, 0, 8, 2, rows) == DPEP_OK,
           "refs: shared pages are read-only, the private one is not");
    EXPECT(dpep_attn_kv_seq_reserve(kv, s1, 12) == DPEP_OK && dpep_attn_kv_free_tokens(kv) == 24 &&
               dpep_attn_kv_write(kv, s1, 0, 8, 4, rows) == DPEP_OK,
           "refs: s1 extends with a page of its own");
    EXPECT(dpep_attn_kv_seq_close(kv, s0) == DPEP_OK && dpep_attn_kv_free_tokens(kv) == 28 &&
               dpep_attn_kv_page_refs(kv, s1, 0) == 2 && dpep_attn_kv_page_refs(kv, s1, 4) == 1,
           "refs: closing s0 frees only its unshared page");
    EXPECT(dpep_attn_kv_seq_close(kv, s0) == DPEP_ERR_INVALID && dpep_attn_kv_free_tokens(kv) == 28,
           "refs: double close refused, nothing freed twice");
    EXPECT(dpep_attn_kv_write(kv, s1, 0, 4, 1, rows) == DPEP_OK, "refs: a page shared no more is writable");
    EXPECT(dpep_attn_kv_seq_close(kv, s1) == DPEP_OK && dpep_attn_kv_free_tokens(kv) == 36 &&
               dpep_attn_kv_page_refs(kv, s2, 0) == 1,
           "refs: closing s1 frees its pages but page 0 (s2 holds it)");
    EXPECT(dpep_attn_kv_seq_close(kv, s2) == DPEP_OK && dpep_attn_kv_free_tokens(kv) == 40,
           "refs: the last holder frees page 0");
    /* pages by id: a cache holds them past the slot, another slot adopts them */
    int s4 = -1, s5 = -1;
    int32_t held[4] = {-1, -1, -1, -1};
    EXPECT(dpep_attn_kv_seq_open(kv, &s4) == DPEP_OK && dpep_attn_kv_seq_reserve(kv, s4, 12) == DPEP_OK &&
               dpep_attn_kv_write(kv, s4, 0, 0, 12, rows) == DPEP_OK &&
               dpep_attn_kv_write(kv, s4, 1, 0, 12, rows) == DPEP_OK &&
               dpep_attn_kv_seq_pages(kv, s4, held, 4) == 3 && dpep_attn_kv_seq_pages(kv, 3, held, 4) == -1,
           "pages: the ids of a slot's 3 pages; -1 for a closed slot");
    const float *row_before = dpep_attn_kv_row(kv, s4, 1, 5);
    dpep_attn_kv_page_retain(kv, held[0]);
    dpep_attn_kv_page_retain(kv, held[1]);
    EXPECT(dpep_attn_kv_seq_close(kv, s4) == DPEP_OK && dpep_attn_kv_free_tokens(kv) == 32,
           "pages: retained pages outlive their slot (only the third returns)");
    EXPECT(dpep_attn_kv_seq_open(kv, &s5) == DPEP_OK && dpep_attn_kv_seq_adopt(kv, s5, held, 2) == DPEP_OK &&
               dpep_attn_kv_seq_len(kv, s5) == 8 && dpep_attn_kv_page_refs(kv, s5, 0) == 2 &&
               dpep_attn_kv_row(kv, s5, 1, 5) == row_before && dpep_attn_kv_free_tokens(kv) == 32,
           "pages: adopted into a new slot: 8 cached tokens, the same rows, refs 2, no page taken");
    EXPECT(dpep_attn_kv_write(kv, s5, 0, 4, 1, rows) == DPEP_ERR_INVALID &&
               dpep_attn_kv_seq_adopt(kv, s5, held, 1) == DPEP_ERR_INVALID,
           "pages: adopted pages are read-only while the cache holds them; adopt needs an empty slot");
    int32_t bad[1] = {held[2]}; /* returned to the pool: not a held page */
    int s6 = -1;
    EXPECT(dpep_attn_kv_seq_open(kv, &s6) == DPEP_OK && dpep_attn_kv_seq_adopt(kv, s6, bad, 1) == DPEP_ERR_INVALID &&
               dpep_attn_kv_seq_close(kv, s6) == DPEP_OK,
           "pages: a free page cannot be adopted");
    dpep_attn_kv_page_release(kv, held[0]);
    dpep_attn_kv_page_release(kv, held[1]);
    EXPECT(dpep_attn_kv_free_tokens(kv) == 32 && dpep_attn_kv_page_refs(kv, s5, 0) == 1 &&
               dpep_attn_kv_write(kv, s5, 0, 4, 1, rows) == DPEP_OK,
           "pages: the cache's release leaves the slot the only holder (writable again)");
    EXPECT(dpep_attn_kv_seq_close(kv, s5) == DPEP_OK && dpep_attn_kv_free_tokens(kv) == 40,
           "pages: the last holder returns them");
    dpep_attn_kv_page_release(kv, held[0]); /* a free page: ignored */
    int s3 = -1;
    EXPECT(dpep_attn_kv_free_tokens(kv) == 40 && dpep_attn_kv_seq_open(kv, &s3) == DPEP_OK &&
               dpep_attn_kv_seq_reserve(kv, s3, 40) == DPEP_OK &&
               dpep_attn_kv_free_tokens(kv) == 0 && dpep_attn_kv_page_refs(kv, s3, 39) == 1,
           "refs: every page back: the whole pool reservable");
    dpep_attn_kv_destroy(kv);
}

/* Devices: the CPU explicitly, a zeroed pool from the device allocator, and a
 * device kind without attention kernels refused by both creates. */
/* Absorbed decode over a long cache (one run of contiguous pages longer
 * than the BF16 path's widening block of DPEP_ATTN_BLOCK rows, then a
 * fragmented one) against the naive decode over the same pool, f32 and
 * BF16 pools; 2 sequences in one batch (split-KV with more threads than
 * sequences, one sequence per thread otherwise). */
static void long_context(dpep_comm *tp, dpep_wtype kvt)
{
    dpep_model_config m = test_model(true);
    const int h = m.hidden, nh = m.n_heads / g_size, head0 = g_rank * nh, row = 40, N = 700;
    full_w f;
    full_w_init(&f, &m, 7);
    dpep_layer_w w = rank_w(&f, &m, head0, nh);
    dpep_attn_kv_params kp = {.n_layers = 2, .page_size = 64, .budget_bytes = 2u << 20,
                              .max_seqs = 4, .max_seq_len = 1024, .dtype = kvt};
    dpep_attn_params ap = {.head0 = head0, .n_heads = nh, .max_tokens = 4, .max_ctx = 1024,
                           .decode = DPEP_ATTN_DECODE_ABSORBED, .tp = tp};
    dpep_attn_kv *kv = NULL;
    dpep_attn *a = NULL;
    float *rows = malloc(sizeof(float) * (size_t)N * row), *x = malloc(sizeof(float) * 2 * (size_t)h);
    float *o1 = malloc(sizeof(float) * 2 * (size_t)h), *o2 = malloc(sizeof(float) * 2 * (size_t)h);
    g_rng = 99;
    fill(rows, (size_t)N * row, -1.0, 1.0);
    fill(x, 2 * (size_t)h, -1.5, 1.5);
    int s0 = -1, s1 = -1, sx = -1;
    bool ok = dpep_attn_kv_create(&m, &kp, &kv) == DPEP_OK && dpep_attn_create(&m, &ap, &a) == DPEP_OK &&
              dpep_attn_kv_seq_open(kv, &s0) == DPEP_OK && dpep_attn_kv_seq_open(kv, &s1) == DPEP_OK &&
              dpep_attn_kv_seq_open(kv, &sx) == DPEP_OK;
    /* s0: 640 contiguous tokens (10 pages in a row); s1: 500 tokens whose
     * pages alternate with sx's */
    ok = ok && dpep_attn_kv_seq_reserve(kv, s0, 641) == DPEP_OK;
    for (int n = 64; ok && n < 501 + 64; n += 64)
        ok = dpep_attn_kv_seq_reserve(kv, s1, n < 501 ? n : 501) == DPEP_OK &&
             dpep_attn_kv_seq_reserve(kv, sx, n) == DPEP_OK;
    ok = ok && dpep_attn_kv_write(kv, s0, 1, 0, 640, rows) == DPEP_OK &&
         dpep_attn_kv_write(kv, s1, 1, 0, 500, rows + 20 * row) == DPEP_OK;
    dpep_attn_seq q[2] = {{s0, 1, 640}, {s1, 1, 500}};
    double d = 0, mx = 0;
    for (int nb = 1; ok && nb <= 2; nb++) {
        dpep_attn_set_decode(a, DPEP_ATTN_DECODE_NAIVE);
        ok = dpep_attn_forward(a, &w, 1, kv, q, nb, x, o1) == DPEP_OK;
        dpep_attn_set_decode(a, DPEP_ATTN_DECODE_ABSORBED);
        ok = ok && dpep_attn_forward(a, &w, 1, kv, q, nb, x, o2) == DPEP_OK;
        for (int j = 0; ok && j < nb * h; j++) {
            mx = fmax(mx, fabs(o1[j]));
            d = fmax(d, fabs(o1[j] - o2[j]));
        }
    }
    EXPECT(ok && mx > 0 && d <= ABS_VS_NAIVE_TOL * mx,
           "kv %s: absorbed vs naive decode over 640 contiguous / 500 fragmented tokens: %.3g",
           dpep_wtype_name(kvt), mx > 0 ? d / mx : -1.0);
    free(rows);
    free(x);
    free(o1);
    free(o2);
    free(w.o.p);
    dpep_attn_destroy(a);
    dpep_attn_kv_destroy(kv);
    full_w_free(&f);
}

static void device_tests(void)
{
    dpep_model_config m = test_model(true);
    dpep_device cpu;
    EXPECT(dpep_device_get(DPEP_DEVICE_CPU, -1, &cpu) == DPEP_OK, "cpu device");
    dpep_attn_kv_params kp = {.n_layers = 2, .page_size = 4, .budget_bytes = 1 << 16, .max_seqs = 2,
                              .max_seq_len = 64, .device = &cpu};
    dpep_attn_params ap = {.head0 = 0, .n_heads = 8, .max_tokens = 8, .max_ctx = 64, .device = &cpu};
    dpep_attn_kv *kv = NULL;
    dpep_attn *a = NULL;
    int s = -1;
    EXPECT(dpep_attn_kv_create(&m, &kp, &kv) == DPEP_OK && dpep_attn_create(&m, &ap, &a) == DPEP_OK &&
               dpep_attn_scratch_bytes(a) > 0,
           "create on the cpu device");
    bool zero = kv && dpep_attn_kv_seq_open(kv, &s) == DPEP_OK &&
                dpep_attn_kv_seq_reserve(kv, s, 64) == DPEP_OK;
    for (int p = 0; zero && p < 64; p++)
        for (int j = 0; j < 40; j++)
            zero = zero && ((const float *)dpep_attn_kv_row(kv, s, 1, p))[j] == 0.0f;
    EXPECT(zero, "the pool comes zeroed from the device allocator");
    if (a && kv) {
        /* staging on the CPU: the batch checked, nothing to stage (shape
         * 0), the cache's length advanced as a forward does; a bad batch
         * refused and nothing advanced */
        int shape = -1, s2 = -1;
        dpep_attn_seq ok[2] = {{s, 5, 0}, {0, 0, 0}};
        EXPECT(dpep_attn_kv_seq_open(kv, &s2) == DPEP_OK && dpep_attn_kv_seq_reserve(kv, s2, 8) == DPEP_OK,
               "stage: second slot");
        ok[1].slot = s2;
        dpep_status st = dpep_attn_stage(a, kv, ok, 2, &shape);
        EXPECT(st == DPEP_OK && shape == 0 && dpep_attn_kv_seq_len(kv, s) == 5 &&
                   dpep_attn_kv_seq_len(kv, s2) == 0,
               "cpu stage: OK, shape %d, lengths %lld / %lld", shape,
               (long long)dpep_attn_kv_seq_len(kv, s), (long long)dpep_attn_kv_seq_len(kv, s2));
        dpep_attn_unstage(a);
        dpep_attn_seq gap = {s2, 1, 3}; /* pos0 3 beyond the cached 0 */
        shape = -1;
        st = dpep_attn_stage(a, kv, &gap, 1, &shape);
        EXPECT(st == DPEP_ERR_INVALID && shape == 0 && dpep_attn_kv_seq_len(kv, s2) == 0,
               "cpu stage: a batch past the cached length refused (%s), nothing advanced",
               dpep_status_string(st));
        dpep_attn_seq twice[2] = {{s, 1, 5}, {s, 1, 5}};
        EXPECT(dpep_attn_stage(a, kv, twice, 2, &shape) == DPEP_ERR_INVALID &&
                   dpep_attn_kv_seq_len(kv, s) == 5,
               "cpu stage: a slot twice in one batch refused");
    }
    dpep_attn_destroy(a);
    dpep_attn_kv_destroy(kv);
    dpep_device gpu = {.kind = DPEP_DEVICE_CUDA, .ordinal = 0, .ops = NULL};
    int n_gpu = 0;
    char why[256];
    bool have_gpu = dpep_device_get(DPEP_DEVICE_CUDA, 0, &gpu) == DPEP_OK &&
                    dpep_cuda_device_count(&n_gpu, why, sizeof why) == DPEP_OK && n_gpu > 0;
    if (dpep_device_get(DPEP_DEVICE_CUDA, 0, &gpu) != DPEP_OK) gpu.ops = NULL; /* a build without CUDA */
    kp.device = &gpu;
    ap.device = &gpu;
    kv = NULL;
    a = NULL;
    if (have_gpu) { /* the CUDA backend (attn/mla_cuda.cu; tests/attn/test_attn_cuda.c checks it) */
        EXPECT(dpep_attn_kv_create(&m, &kp, &kv) == DPEP_OK && kv && dpep_attn_create(&m, &ap, &a) == DPEP_OK && a,
               "cuda: a GPU is usable: the pool and the context are created on it");
        dpep_attn_destroy(a);
        dpep_attn_kv_destroy(kv);
    } else {
        EXPECT(dpep_attn_kv_create(&m, &kp, &kv) == DPEP_ERR_UNSUPPORTED && !kv &&
                   dpep_attn_create(&m, &ap, &a) == DPEP_ERR_UNSUPPORTED && !a,
               "cuda: no usable GPU (or no CUDA in this build): UNSUPPORTED");
    }
}

static void yarn_tests(void)
{
    struct {
        const char *name;
        double factor, ms, msa, scale;
    } cases[] = {{"V3", 40, 1.0, 1.0, 0.1352338}, {"V2-Lite", 40, 0.707, 0.707, -1}};
    for (int c = 0; c < 2; c++) {
        dpep_model_config m;
        memset(&m, 0, sizeof m);
        m.qk_nope = 128;
        m.qk_rope = 64;
        m.rope_theta = 10000;
        m.yarn = true;
        m.yarn_factor = cases[c].factor;
        m.yarn_mscale = cases[c].ms;
        m.yarn_mscale_all_dim = cases[c].msa;
        m.yarn_beta_fast = 32;
        m.yarn_beta_slow = 1;
        m.yarn_orig_max_pos = 4096;
        float inv[32];
        double att = 0, scale = 0, ref[32];
        EXPECT(dpep_attn_rope_params(&m, inv, &att, &scale) == DPEP_OK, "%s rope params", cases[c].name);
        ref_inv_freq(&m, ref);
        double e = 0;
        for (int i = 0; i < 32; i++) e = fmax(e, fabs(inv[i] - ref[i]) / ref[i]);
        double ms = 0.1 * cases[c].msa * log(cases[c].factor) + 1;
        double want = ms * ms / sqrt(192.0);
        EXPECT(e < 2e-7 && fabs(att - 1.0) < 1e-12 && fabs(scale - want) < 1e-9 &&
                   (cases[c].scale < 0 || fabs(scale - cases[c].scale) < 1e-7),
               "%s yarn: inv_freq rel err %.3g, cos/sin factor %.9g, scale %.9g (want %.9g)",
               cases[c].name, e, att, scale, want);
        SAY("YaRN %-7s inv_freq max rel err vs formula %.2g; softmax scale %.7f; cos/sin factor %.3f; "
            "inv_freq[0,15,16,31] = %.4g %.4g %.4g %.4g\n",
            cases[c].name, e, scale, att, inv[0], inv[15], inv[16], inv[31]);
    }
    /* odd rope dim: an error, not a crash */
    dpep_model_config bad = test_model(true);
    bad.qk_rope = 7;
    EXPECT(dpep_attn_rope_params(&bad, NULL, NULL, NULL) == DPEP_ERR_INVALID, "odd rope dim");
}

/* The prefill core lent (dpep_attn_set_lend): a lender that computes the
 * heads with dpep_attn_prefill_head in groups of three (the last group
 * shorter), groups and heads in reverse order, each group on its heads'
 * packed query columns and kv_b rows into a packed result (as the engine's
 * DP assist does when a sequence's queries do not fit its segment at once),
 * must give the bits of the forward that keeps it — a prompt in one call
 * and a chunk over a cached prefix (pos0 > 0), over two context blocks.
 * One rank, all heads. */
static float *g_lend_buf;
static size_t g_lend_cap;
static int g_lend_runs;
static float *lend_buffer(void *ctx, size_t floats)
{
    (void)ctx;
    return floats <= g_lend_cap ? g_lend_buf : NULL;
}
static bool lend_run(void *ctx, const dpep_attn_prefill_job *j, const dpep_mat *kv_b)
{
    (void)ctx;
    enum { G = 3 };
    const int qk = j->nope + j->rope, bw = j->nope + j->v;
    float *scr = malloc(sizeof(float) * dpep_attn_prefill_head_floats(j->n, j->nope, j->rope, j->v));
    float *qg = malloc(sizeof(float) * (size_t)j->n * G * (size_t)qk);
    float *og = malloc(sizeof(float) * (size_t)j->n * G * (size_t)j->v);
    if (!scr || !qg || !og) {
        free(scr), free(qg), free(og);
        return false;
    }
    for (int h0 = (j->H - 1) / G * G; h0 >= 0; h0 -= G) {
        const int hn = j->H - h0 < G ? j->H - h0 : G;
        for (int r = 0; r < j->n; r++)
            memcpy(qg + (size_t)r * hn * qk, j->q + (size_t)r * j->H * qk + (size_t)h0 * qk,
                   sizeof(float) * (size_t)hn * qk);
        dpep_attn_prefill_job g = *j;
        g.H = hn, g.q = qg, g.out = og, g.ldo = (int64_t)hn * j->v;
        const dpep_mat kg = dpep_mat_rows(*kv_b, h0 * bw, hn * bw);
        for (int h = hn - 1; h >= 0; h--) dpep_attn_prefill_head(&g, &kg, h, scr);
        for (int r = 0; r < j->n; r++)
            memcpy(j->out + (size_t)r * (size_t)j->ldo + (size_t)h0 * j->v,
                   og + (size_t)r * hn * j->v, sizeof(float) * (size_t)hn * j->v);
    }
    free(scr), free(qg), free(og);
    g_lend_runs++;
    return true;
}
static void lend_tests(int page_size)
{
    dpep_model_config m = test_model(true);
    const int h = m.hidden, N = 300, P = 280; /* 300 > DPEP_ATTN_BLOCK: two blocks */
    full_w f;
    full_w_init(&f, &m, 77);
    dpep_layer_w w = rank_w(&f, &m, 0, m.n_heads);
    /* o[lent][scenario]: the whole prompt; the prefix and the chunk */
    float *x = malloc(sizeof(float) * (size_t)N * h), *o[2][2];
    for (int i = 0; i < 4; i++) o[i / 2][i % 2] = malloc(sizeof(float) * (size_t)N * h);
    fill(x, (size_t)N * h, -1.5, 1.5);
    g_lend_cap = (size_t)4 << 20;
    g_lend_buf = malloc(sizeof(float) * g_lend_cap);
    const dpep_attn_lend lend = {.buffer = lend_buffer, .run = lend_run, .ctx = NULL};
    bool same[2] = {true, true};
    int runs = 0;
    for (int lent = 0; lent < 2; lent++) {
        dpep_attn_kv_params kp = {.n_layers = 1, .page_size = page_size, .budget_bytes = 16u << 20,
                                  .max_seqs = 4, .max_seq_len = 512, .dtype = g_kv};
        dpep_attn_params ap = {.head0 = 0, .n_heads = m.n_heads, .max_tokens = N, .max_ctx = 512,
                               .decode = DPEP_ATTN_DECODE_ABSORBED, .tp = NULL};
        dpep_attn_kv *kv = NULL;
        dpep_attn *a = NULL;
        if (dpep_attn_kv_create(&m, &kp, &kv) != DPEP_OK || dpep_attn_create(&m, &ap, &a) != DPEP_OK) {
            EXPECT(false, "lend: create");
            break;
        }
        if (lent) dpep_attn_set_lend(a, &lend);
        int s1 = -1, s2 = -1;
        dpep_attn_kv_seq_open(kv, &s1);
        dpep_attn_kv_seq_reserve(kv, s1, N);
        dpep_attn_seq q1 = {s1, N, 0};
        dpep_status st = dpep_attn_forward(a, &w, 0, kv, &q1, 1, x, o[lent][0]);
        if (lent) same[0] = st == DPEP_OK && memcmp(o[0][0], o[1][0], sizeof(float) * (size_t)N * h) == 0;
        dpep_attn_kv_seq_open(kv, &s2);
        dpep_attn_kv_seq_reserve(kv, s2, N);
        /* a chunk of 20 new tokens over the 280 cached: prefill, not decode */
        dpep_attn_seq qp = {s2, P, 0}, qc = {s2, N - P, P};
        if (st == DPEP_OK) st = dpep_attn_forward(a, &w, 0, kv, &qp, 1, x, o[lent][1]);
        if (st == DPEP_OK)
            st = dpep_attn_forward(a, &w, 0, kv, &qc, 1, x + (size_t)P * h, o[lent][1] + (size_t)P * h);
        if (lent) same[1] = st == DPEP_OK && memcmp(o[0][1], o[1][1], sizeof(float) * (size_t)N * h) == 0;
        runs = g_lend_runs;
        dpep_attn_destroy(a);
        dpep_attn_kv_destroy(kv);
    }
    EXPECT(same[0] && runs >= 1, "lend (kv %s, page %d): a %d-token prefill's core lent by heads is "
           "bit-identical (%d cores lent)", dpep_wtype_name(g_kv), page_size, N, runs);
    EXPECT(same[1] && runs >= 3, "lend (kv %s, page %d): a %d-token chunk over a %d-token prefix "
           "lent is bit-identical", dpep_wtype_name(g_kv), page_size, N - P, P);
    g_lend_runs = 0;
    free(g_lend_buf);
    free(x);
    for (int i = 0; i < 4; i++) free(o[i / 2][i % 2]);
    full_w_free(&f);
}

int main(int argc, char **argv)
{
    int prov;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &prov);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    dpep_log_init();
    dpep_log_set_rank(g_rank);
    dpep_comm *tp = NULL;
    if (dpep_comm_create(MPI_COMM_WORLD, "attn_tp", DPEP_COMM_MPI, 60, &tp) != DPEP_OK) {
        printf("FAIL cannot create the attn_tp comm\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (8 % g_size != 0) {
        SAY("SKIP: 8 heads do not split over %d ranks\n", g_size);
        dpep_comm_destroy(tp);
        MPI_Finalize();
        return 77;
    }
    if (g_rank == 0) {
        yarn_tests();
        pool_tests();
        refcount_tests();
        device_tests();
        lend_tests(16);
        lend_tests(1);
        g_kv = DPEP_WT_BF16;
        lend_tests(16);
        g_kv = DPEP_WT_F32;
    }
    int pages[4] = {1, 3, 16, 64};
    for (int ql = 1; ql >= 0; ql--) {
        dpep_model_config m = test_model(ql);
        for (int p = 0; p < 4; p++) {
            if (!ql && p % 2) continue; /* without q_lora: page sizes 1 and 16 */
            scenarios(&m, tp, pages[p]);
        }
    }
    /* the matrices kept as BF16 / F16 (the checkpoint's types): the same
     * scenarios against the reference on the rounded values */
    for (int t = DPEP_WT_BF16; t <= DPEP_WT_F16; t++) {
        g_wt = (dpep_wtype)t;
        for (int ql = 1; ql >= 0; ql--) {
            dpep_model_config m = test_model(ql);
            scenarios(&m, tp, ql ? 16 : 3);
        }
    }
    g_wt = DPEP_WT_F32;
    /* a BF16 KV pool (runtime.kv_cache_dtype bf16): the same scenarios
     * against the reference whose latent rows are rounded to BF16, on f32 and
     * BF16 weights, every page size */
    double worst_f32 = g_worst;
    g_worst = 0;
    g_kv = DPEP_WT_BF16;
    for (int ql = 1; ql >= 0; ql--) {
        dpep_model_config m = test_model(ql);
        for (int p = 0; p < 4; p++) scenarios(&m, tp, pages[p]);
    }
    g_wt = DPEP_WT_BF16;
    {
        dpep_model_config m = test_model(true);
        scenarios(&m, tp, 16);
    }
    g_wt = DPEP_WT_F32;
    g_kv = DPEP_WT_F32;
    long_context(tp, DPEP_WT_F32);
    long_context(tp, DPEP_WT_BF16);
    double worst_kv = 0, wkv = g_worst;
    MPI_Allreduce(&wkv, &worst_kv, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    g_worst = worst_f32;
    SAY("attn_tp %d: bf16 KV pool, worst error vs the reference on bf16-rounded latent rows %.3g\n",
        g_size, worst_kv);
    double worst = 0;
    int tot[2] = {g_pass, g_fail}, sum[2];
    MPI_Allreduce(&g_worst, &worst, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(tot, sum, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    SAY("attn_tp %d: worst error vs the double reference (all heads) %.3g of max|ref|\n", g_size, worst);
    SAY("%d passed, %d failed\n", sum[0], sum[1]);
    dpep_comm_destroy(tp);
    MPI_Finalize();
    return sum[1] ? 1 : 0;
}
