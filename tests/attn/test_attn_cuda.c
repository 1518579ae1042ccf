/* test_attn_cuda.c — op test of the CUDA attention backend (attn/mla_cuda.cu)
 * against the CPU one (mla_cpu.c), in the style of ggml's test-backend-ops:
 * the same random weights (never zeros) and inputs on both, device outputs
 * poisoned with NaN before each run, normalized error ||gpu - ref|| / ||ref||.
 * Threshold: fp32 <= 1e-5 (issue 16); the forward again with BF16 and F16
 * weights (the CPU widens them, the GPU rounds each product's input rows to
 * the weight's type: runtime/linear) <= 1e-2.
 *
 * 1. Host side (runs everywhere): the core's tile plan (every row once, in
 *    order, the right causal end per tile) and the split-KV heuristic (its
 *    documented choices, its bounds).
 * 2. The attention core alone (dpep_mla_cu_core) on random absorbed queries
 *    and random fragmented pages against a double-precision reference and
 *    against the simple reference kernel: V3 widths (512 + 64) and awkward
 *    ones, heads 1/3/7/16/128, page sizes 1/16/64, decode batches, 1 x 5000
 *    keys (split-KV) with the heuristic's split and forced ones, mixed
 *    prefill + decode over cached prefixes, a large batch that does not
 *    split, an empty batch.
 * 3. The whole forward (CUDA vs CPU), each step run through the tiled core
 *    with the heuristic's split, with a forced split of 7, through the
 *    simple kernel, and staged first (dpep_attn_stage: the engine's CUDA
 *    graph path, one copy per step, forwards that only launch): small model with q_lora on/off x heads 1, 3 (head0 2), 7,
 *    16, 128 x page sizes 1/16/64: a prefill of 7 tokens; a prefill of 5
 *    over that cached prefix (pos0 7) batched with a fresh prefill of 3 and
 *    an empty sequence; one-token decodes; an empty batch; a 140-token
 *    prefill and a decode after it. Then V3 latent widths (heads 16 and
 *    128, page 64): 5000 cached rows imported, a decode over them (split-KV)
 *    batched with a short decode, and a prefill of 40 over the prefix.
 *
 * Without a GPU (or in a build without CUDA) it runs the host-side checks
 * (1, and the CUDA device and both creates refused with UNSUPPORTED,
 * nothing returned), then prints "SKIP: why" and exits 77. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_internal.h" /* the CUDA core's entry points (dpep_mla_cu_*) */
#include "dpep_attn.h"
#include "../dpep_test.h"
#include "../dpep_test_device.h"

#define TOL 1e-5
#define TOL16 1e-2
#define TOL_KV16 1e-3
static dpep_wtype g_wt = DPEP_WT_F32; /* the projections' type in make_w */
static dpep_wtype g_kv = DPEP_WT_F32; /* both pools' dtype in the forward tests */
static bool g_pair_tc;                /* the pair's widths take the tensor-core core */
/* A BF16 pool on both sides: each backend rounds its own f32 row, and the
 * two rows differ in the last f32 bits, so an element now and then lands one
 * BF16 step (2^-8) apart (TOL_KV16); at DeepSeek's widths the GPU's core runs
 * on tensor cores with BF16 queries and probabilities: the BF16 operand
 * bound (TOL16). */
static double tol_now(void)
{
    if (g_wt != DPEP_WT_F32) return TOL16;
    if (g_kv != DPEP_WT_F32) return g_pair_tc ? TOL16 : TOL_KV16;
    return TOL;
}

#include "attn_fixture.h"

/* ---- the device's memory: tests/dpep_test_device.h (g_tdev), in floats ---- */
static float *dev_buf(size_t n) { return (float *)dtest_alloc(sizeof(float) * n); }
static float *dev_copy(const float *h, size_t n)
{
    return h ? (float *)dtest_up(h, sizeof(float) * n) : NULL;
}

/* f (n floats, malloc'd) in g_wt: f itself for F32, else a rounded 16-bit
 * copy (f freed). NULL stays NULL. */
static void *as_type(float *f, size_t n)
{
    if (!f || g_wt == DPEP_WT_F32) return f;
    uint16_t *h = malloc(sizeof(uint16_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        h[i] = g_wt == DPEP_WT_BF16 ? dpep_f32_to_bf16(f[i]) : dpep_f32_to_f16(f[i]);
    free(f);
    return h;
}

/* The heads [head0, head0 + nh) of one random layer, on the host (cw) and
 * the same values on the device (gw). Host arrays freed by the caller via
 * free_host_w. */
static void make_w(const dpep_model_config *m, int head0, int nh, dpep_layer_w *cw, dpep_layer_w *gw)
{
    const int h = m->hidden, qk = m->qk_nope + m->qk_rope, ql = m->q_lora_rank, qin = ql ? ql : h;
    const int row = m->kv_lora_rank + m->qk_rope, bw = m->qk_nope + m->v_head;
    const double sh = sqrt(3.0 / h), sq = sqrt(3.0 / qin), sl = sqrt(3.0 / m->kv_lora_rank),
                 so = sqrt(3.0 / (nh * m->v_head));
    memset(cw, 0, sizeof *cw);
    cw->head0 = head0;
    cw->n_heads = nh;
    size_t n_qa = (size_t)ql * h, n_qb = (size_t)nh * qk * qin, n_kva = (size_t)row * h,
           n_kvb = (size_t)nh * bw * m->kv_lora_rank, n_o = (size_t)h * nh * m->v_head;
    float *qa = NULL, *qb = malloc(sizeof(float) * n_qb), *kva = malloc(sizeof(float) * n_kva);
    float *kvb = malloc(sizeof(float) * n_kvb), *o = malloc(sizeof(float) * n_o);
    if (ql) {
        qa = malloc(sizeof(float) * n_qa);
        cw->q_a_norm = malloc(sizeof(float) * (size_t)ql);
        fill(qa, n_qa, -sh, sh);
        fill(cw->q_a_norm, (size_t)ql, 0.5, 1.5);
    }
    fill(qb, n_qb, -sq, sq);
    fill(kva, n_kva, -sh, sh);
    cw->kv_a_norm = malloc(sizeof(float) * (size_t)m->kv_lora_rank);
    fill(cw->kv_a_norm, (size_t)m->kv_lora_rank, 0.5, 1.5);
    fill(kvb, n_kvb, -sl, sl);
    fill(o, n_o, -so, so);
    /* g_wt BF16/F16: the matrices rounded to it, as a 16-bit checkpoint
     * holds them (the CPU widens them in its kernels) */
    const size_t es = dpep_wtype_size(g_wt);
    void *mq_a = as_type(qa, n_qa), *mq_b = as_type(qb, n_qb), *mkv_a = as_type(kva, n_kva),
         *mkv_b = as_type(kvb, n_kvb), *mo = as_type(o, n_o);
    cw->q_a = dpep_mat_make(mq_a, g_wt, mq_a ? ql : 0, mq_a ? h : 0);
    cw->q_b = dpep_mat_make(mq_b, g_wt, nh * qk, qin);
    cw->kv_a = dpep_mat_make(mkv_a, g_wt, row, h);
    cw->kv_b = dpep_mat_make(mkv_b, g_wt, nh * bw, m->kv_lora_rank);
    cw->o = dpep_mat_make(mo, g_wt, h, nh * m->v_head);
    /* the device's copy: the same matrices in the same type, as loaded */
    *gw = *cw;
    gw->q_a.p = mq_a ? dtest_up(mq_a, es * n_qa) : NULL;
    gw->q_a_norm = dev_copy(cw->q_a_norm, (size_t)ql);
    gw->q_b.p = dtest_up(mq_b, es * n_qb);
    gw->kv_a.p = dtest_up(mkv_a, es * n_kva);
    gw->kv_a_norm = dev_copy(cw->kv_a_norm, (size_t)m->kv_lora_rank);
    gw->kv_b.p = dtest_up(mkv_b, es * n_kvb);
    gw->o.p = dtest_up(mo, es * n_o);
}
static void free_host_w(dpep_layer_w *w)
{
    free(w->q_a.p);
    free(w->q_a_norm);
    free(w->q_b.p);
    free(w->kv_a.p);
    free(w->kv_a_norm);
    free(w->kv_b.p);
    free(w->o.p);
}

static double norm_err(const float *g, const float *c, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)g[i] - (double)c[i];
        num += d * d;
        den += (double)c[i] * c[i];
    }
    if (!(num == num)) return INFINITY; /* NaN: a poisoned value survived */
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static double g_worst;
static double g_worst_tc __attribute__((unused)); /* the tensor-core core kernel (BF16 operands) */

#ifdef DPEP_HAVE_CUDA
/* ------------------------------------------------------------------------ */
/* 1. Host side: the tile plan and the split heuristic (host functions of    */
/*    mla_cuda.cu: they need the CUDA build, not a GPU)                       */
/* ------------------------------------------------------------------------ */
static void host_checks(void)
{
    /* plan: rows [tok0 H, (tok0 + n) H) in order, each once; kv_end = the
     * last row's position + 1 */
    const int Hs[] = {1, 3, 7, 16, 17, 32, 48, 128};
    int tiles[4 * 700];
    for (size_t k = 0; k < sizeof Hs / sizeof Hs[0]; k++) {
        const int H = Hs[k], HT = dpep_mla_cu_heads_per_tile(H);
        const int ns[] = {1, 2, 5, 37};
        for (int u = 0; u < 4; u++) {
            const int n = ns[u], tok0 = 3;
            const int64_t pos0 = 11;
            int nt = dpep_mla_cu_plan(H, tok0, n, pos0, tiles);
            bool ok = nt == (n * H + HT - 1) / HT && nt <= n * ((H + HT - 1) / HT);
            int next = tok0 * H;
            for (int i = 0; i < nt && ok; i++) {
                const int *t = tiles + 4 * i;
                const int last = t[0] + t[1] - 1;
                ok = t[0] == next && t[1] >= 1 && t[1] <= HT && t[2] == (int)(pos0 + last / H - tok0 + 1);
                next += t[1];
            }
            ok = ok && next == (tok0 + n) * H;
            EXPECT(ok, "plan: H %d, %d tokens: %d tiles covering the rows with their causal ends", H, n, nt);
        }
    }
    EXPECT(dpep_mla_cu_heads_per_tile(1) == 16 && dpep_mla_cu_heads_per_tile(16) == 16 &&
               dpep_mla_cu_heads_per_tile(17) == 32 && dpep_mla_cu_heads_per_tile(128) == 32,
           "heads per tile");
    EXPECT(dpep_mla_cu_fast_ok(512, 64) && dpep_mla_cu_fast_ok(32, 8) && !dpep_mla_cu_fast_ok(30, 8) &&
               !dpep_mla_cu_fast_ok(512, 68) && !dpep_mla_cu_fast_ok(516, 0),
           "tiled-kernel widths");
    /* the heuristic's documented choices on 132 SMs */
    const int64_t cap = 8 * 132;
    int s1 = dpep_mla_cu_splits(128, 4, 4096, 132, cap), s2 = dpep_mla_cu_splits(128, 128, 4096, 132, cap),
        s3 = dpep_mla_cu_splits(128, 512, 2048, 132, cap), s4 = dpep_mla_cu_splits(16, 1, 4096, 132, cap),
        s5 = dpep_mla_cu_splits(16, 32, 4096, 132, cap), s6 = dpep_mla_cu_splits(16, 64, 16384, 132, cap);
    EXPECT(s1 == 32 && s2 == 1 && s3 == 1 && s4 == 64 && s5 == 8 && s6 == 4,
           "splits (1x4096, 32x4096, 128x2048 at 128 heads; 1x4096, 32x4096, 64x16384 at 16): "
           "%d %d %d %d %d %d (want 32 1 1 64 8 4)",
           s1, s2, s3, s4, s5, s6);
    /* bounds: chunks >= 64 keys, partial capacity, at most 64, 1 when short */
    bool ok = true;
    for (int nt = 1; nt <= 600 && ok; nt += 7)
        for (int64_t kv = 1; kv <= 70000 && ok; kv = kv * 3 + 1) {
            const int sp = dpep_mla_cu_splits(32, nt, kv, 132, cap);
            ok = sp >= 1 && sp <= DPEP_MLA_CU_MAX_SPLIT && (sp == 1 || ((int64_t)nt * sp <= cap && kv / sp >= 63));
            if (!ok) printf("  splits(%d tiles, %lld keys) = %d\n", nt, (long long)kv, sp);
        }
    EXPECT(ok, "splits within their bounds");
    EXPECT(dpep_mla_cu_splits(128, 0, 5000, 132, cap) == 1 && dpep_mla_cu_splits(128, 4, 50, 132, cap) == 1 &&
               dpep_mla_cu_splits(128, 4, 5000, 0, cap) == 1 && dpep_mla_cu_splits(128, 4, 5000, 132, 4) == 1,
           "splits: no tiles, short context, unknown SMs, no partials -> 1");
}

/* ------------------------------------------------------------------------ */
/* 2. The core alone                                                         */
/* ------------------------------------------------------------------------ */
typedef struct core_case {
    const char *what;
    int L, rope, H, P;
    int n_seq;
    const int *n_new;
    const int64_t *pos0;
} core_case;

/* o~ of every (token, head) in double: softmax(scale q~ . k) v over the
 * token's keys [0, pos]. rows: (n_pages, P, row) host copy of the pool. */
static void core_ref(const core_case *c, int T, const float *q, const float *pool, const int *pages,
                     const int *poff, const int *pos, float scale, double *out)
{
    const int row = c->L + c->rope;
    double *sc = malloc(sizeof(double) * 6000);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < c->H; h++) {
            const float *qh = q + ((size_t)t * c->H + h) * row;
            const int n = pos[t] + 1;
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < n; j++) {
                const float *k = pool + ((size_t)pages[poff[t] + j / c->P] * c->P + j % c->P) * row;
                double d = 0;
                for (int i = 0; i < row; i++) d += (double)qh[i] * k[i];
                sc[j] = d * scale;
                mx = sc[j] > mx ? sc[j] : mx;
            }
            double *o = out + ((size_t)t * c->H + h) * c->L;
            for (int i = 0; i < c->L; i++) o[i] = 0;
            for (int j = 0; j < n; j++) {
                const double e = exp(sc[j] - mx);
                sum += e;
                const float *k = pool + ((size_t)pages[poff[t] + j / c->P] * c->P + j % c->P) * row;
                for (int i = 0; i < c->L; i++) o[i] += e * k[i];
            }
            for (int i = 0; i < c->L; i++) o[i] /= sum;
        }
    free(sc);
}

static double norm_err_d(const float *g, const double *r, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)g[i] - r[i];
        num += d * d;
        den += r[i] * r[i];
    }
    if (!(num == num)) return INFINITY;
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static void core_run(const core_case *c, int n_sm)
{
    const int row = c->L + c->rope, H = c->H, P = c->P;
    const float scale = 0.1352338f;
    int T = 0, n_pg = 0;
    int64_t max_kv = 0;
    for (int i = 0; i < c->n_seq; i++) {
        T += c->n_new[i];
        if (c->n_new[i] == 0) continue;
        const int64_t ctx = c->pos0[i] + c->n_new[i];
        n_pg += (int)((ctx + P - 1) / P);
        max_kv = ctx > max_kv ? ctx : max_kv;
    }
    const int n_pages = n_pg + 5; /* a few never used */
    /* pages handed out in a shuffled order: fragmented page tables */
    int *perm = malloc(sizeof(int) * (size_t)n_pages);
    for (int i = 0; i < n_pages; i++) perm[i] = i;
    for (int i = n_pages - 1; i > 0; i--) {
        int j = (int)(urand() * (i + 1)), x = perm[i];
        perm[i] = perm[j];
        perm[j] = x;
    }
    const int Tt = T > 0 ? T : 1;
    const int max_tiles = Tt * ((H + 15) / 16) + c->n_seq;
    int *pages = malloc(sizeof(int) * (size_t)(n_pg + 1)), *poff = malloc(sizeof(int) * (size_t)Tt),
        *pos = malloc(sizeof(int) * (size_t)Tt), *tiles = malloc(sizeof(int) * 4 * (size_t)max_tiles);
    int np = 0, n_tiles = 0;
    for (int i = 0, t = 0; i < c->n_seq; i++) {
        if (c->n_new[i] == 0) continue;
        const int64_t ctx = c->pos0[i] + c->n_new[i];
        const int npg = (int)((ctx + P - 1) / P);
        for (int j = 0; j < c->n_new[i]; j++, t++) {
            poff[t] = np;
            pos[t] = (int)(c->pos0[i] + j);
        }
        n_tiles += dpep_mla_cu_plan(H, t - c->n_new[i], c->n_new[i], c->pos0[i], tiles + 4 * n_tiles);
        for (int j = 0; j < npg; j++) pages[np + j] = perm[np + j];
        np += npg;
    }
    const size_t n_pool = (size_t)n_pages * P * row, n_q = (size_t)Tt * H * row, n_o = (size_t)Tt * H * c->L;
    float *pool = malloc(sizeof(float) * n_pool), *q = malloc(sizeof(float) * n_q),
          *o = malloc(sizeof(float) * n_o);
    double *ref = malloc(sizeof(double) * n_o);
    fill(pool, n_pool, -1, 1);
    fill(q, n_q, -1, 1);
    core_ref(c, T, q, pool, pages, poff, pos, scale, ref);
    const int64_t cap = 8 * (int64_t)n_sm;
    const int HT = dpep_mla_cu_heads_per_tile(H);
    dpep_mla_core_args ca;
    memset(&ca, 0, sizeof ca);
    ca.n_tokens = T;
    ca.H = H;
    ca.L = c->L;
    ca.rope = c->rope;
    ca.scale = scale;
    ca.page_size = P;
    ca.q = dev_copy(q, n_q);
    ca.pool = dev_copy(pool, n_pool);
    ca.pages = (const int *)dev_copy((const float *)pages, (size_t)(np > 0 ? np : 1));
    ca.tok_poff = (const int *)dev_copy((const float *)poff, (size_t)Tt);
    ca.tok_pos = (const int *)dev_copy((const float *)pos, (size_t)Tt);
    ca.tiles = (const int *)dev_copy((const float *)tiles, 4 * (size_t)(n_tiles > 0 ? n_tiles : 1));
    ca.n_tiles = n_tiles;
    ca.part_o = dev_buf((size_t)cap * HT * c->L);
    ca.part_ml = dev_buf((size_t)cap * HT * 2);
    ca.part_cap = cap;
    ca.out = dev_buf(n_o);
    const int heur = dpep_mla_cu_splits(H, n_tiles, max_kv, n_sm, cap);
    /* kernels: a float32 pool; then the same rows in a BF16 pool
     * (runtime.kv_cache_dtype bf16), the fp32 kernels widening them (the
     * reference on the rounded rows, fp32 tolerance); then, at DeepSeek's
     * widths, the tensor-core kernel on that pool (the reference on the
     * rounded rows and on queries rounded to BF16 as it rounds them; its P
     * is BF16 too: TOL16) */
    uint16_t *p16 = malloc(sizeof(uint16_t) * n_pool);
    const int n_kt = dpep_mla_cu_tc_ok(c->L, c->rope, DPEP_WT_BF16) ? 3 : 2;
    double worst_tc = -1;
    for (int kt = 0; kt < n_kt; kt++) {
        if (kt == 1) {
            for (size_t i = 0; i < n_pool; i++) {
                p16[i] = dpep_f32_to_bf16(pool[i]);
                pool[i] = dpep_bf16_to_f32(p16[i]);
            }
            core_ref(c, T, q, pool, pages, poff, pos, scale, ref);
            ca.pool = dtest_up(p16, sizeof(uint16_t) * n_pool);
            ca.kv_type = DPEP_WT_BF16;
            ca.tc_off = 1;
        } else if (kt == 2) {
            float *qr = malloc(sizeof(float) * n_q);
            for (size_t i = 0; i < n_q; i++) qr[i] = dpep_bf16_to_f32(dpep_f32_to_bf16(q[i]));
            core_ref(c, T, qr, pool, pages, poff, pos, scale, ref);
            free(qr);
            ca.tc_off = 0;
        }
        const double tol = kt == 2 ? TOL16 : TOL;
        /* runs: the heuristic's split, no split, forced splits, the simple kernel
         * (not for the tensor-core pass: the simple kernel has no such form) */
        int splits[5] = {heur, 1, 3, 64, 0};
        for (int r = 0; r < (kt == 2 ? 4 : 5); r++) {
            const int simple = r == 4;
            int sp = simple ? 1 : splits[r];
            while (sp > 1 && (int64_t)sp * n_tiles > cap) sp--;
            ca.n_split = sp;
            ca.simple = simple;
            for (size_t i = 0; i < n_o; i++) o[i] = NAN;
            g_tdev.ops->to_device(&g_tdev, ca.out, o, sizeof(float) * n_o); /* poison */
            dpep_status st = dpep_mla_cu_core(&ca);
            dpep_status sy = g_tdev.ops->to_host(&g_tdev, o, ca.out, sizeof(float) * n_o);
            EXPECT(st == DPEP_OK && sy == DPEP_OK, "core %s: run (status %d, copy %d)", c->what, st, sy);
            if (st != DPEP_OK || T == 0) continue;
            const double e = norm_err_d(o, ref, n_o);
            if (kt == 2) {
                if (e > worst_tc) worst_tc = e;
                if (e > g_worst_tc) g_worst_tc = e;
            } else if (e > g_worst) {
                g_worst = e;
            }
            EXPECT(e <= tol, "core %s [H %d L %d rope %d page %d, T %d, %d tiles, %s %d, kv %s%s]: err %.3g "
                   "(tol %.0e)", c->what, H, c->L, c->rope, P, T, n_tiles, simple ? "simple" : "split", sp,
                   dpep_wtype_name(ca.kv_type), kt == 2 ? ", tensor cores" : "", e, tol);
        }
    }
    free(p16);
    char tcs[48] = "";
    if (worst_tc >= 0) snprintf(tcs, sizeof tcs, ", tensor cores err %.2g", worst_tc);
    printf("  core %-34s H %3d L %3d+%-2d page %2d T %4d tiles %4d heuristic split %2d%s\n", c->what, H,
           c->L, c->rope, P, T, n_tiles, heur, tcs);
    dtest_free_all();
    free(perm);
    free(pages);
    free(poff);
    free(pos);
    free(tiles);
    free(pool);
    free(q);
    free(o);
    free(ref);
}

static void core_tests(void)
{
    const int n_sm = dpep_mla_cu_sm_count(g_tdev.ordinal);
    EXPECT(n_sm > 0, "SM count of cuda:%d", g_tdev.ordinal);
    const int nd[] = {1, 1, 1}, heads[] = {1, 3, 7, 16, 128}, pgs[] = {1, 16, 64};
    const int64_t pd[] = {0, 16, 299};
    for (int h = 0; h < 5; h++)
        for (int p = 0; p < 3; p++) {
            core_case c = {"decode ctx 1/17/300", 512, 64, heads[h], pgs[p], 3, nd, pd};
            core_run(&c, n_sm);
        }
    /* split-KV: one sequence, 5000 keys */
    const int n1[] = {1};
    const int64_t p1[] = {4999};
    const int hs[] = {3, 16, 48, 128}; /* 48: 32-row tiles, the last one partial */
    for (int h = 0; h < 4; h++) {
        core_case c = {"decode 1 x 5000", 512, 64, hs[h], 64, 1, n1, p1};
        core_run(&c, n_sm);
    }
    core_case c16 = {"decode 1 x 5000", 512, 64, 128, 16, 1, n1, p1};
    core_run(&c16, n_sm);
    /* mixed prefill (over a cached prefix) + decode + fresh prefill + empty */
    const int nm[] = {37, 1, 5, 0};
    const int64_t pm[] = {100, 250, 0, 3};
    const int hm[] = {1, 7, 16, 20, 48, 128};
    for (int h = 0; h < 6; h++) {
        core_case c = {"prefill 37 over 100 + decode + 5", 512, 64, hm[h], 16, 4, nm, pm};
        core_run(&c, n_sm);
    }
    /* awkward widths (the tiled kernel with partial float4 column groups) */
    core_case cw1 = {"prefill 37 over 100 + decode + 5", 32, 8, 3, 16, 4, nm, pm};
    core_run(&cw1, n_sm);
    core_case cw2 = {"prefill 37 over 100 + decode + 5", 36, 12, 16, 1, 4, nm, pm};
    core_run(&cw2, n_sm);
    core_case cw3 = {"decode ctx 1/17/300", 128, 0, 7, 64, 3, nd, pd};
    core_run(&cw3, n_sm);
    /* widths the tiled kernel does not take: the reference runs */
    core_case cw4 = {"decode ctx 1/17/300 (reference only)", 30, 6, 3, 16, 3, nd, pd};
    core_run(&cw4, n_sm);
    /* a batch large enough not to split (128 heads: 4 tiles per token) */
    static int nb[64];
    static int64_t pb[64];
    for (int i = 0; i < 64; i++) {
        nb[i] = 1;
        pb[i] = 40 + 9 * i;
    }
    core_case cb = {"decode 64 seqs ctx 41..608", 512, 64, 128, 64, 64, nb, pb};
    core_run(&cb, n_sm);
    /* the empty batch: nothing launched, OK */
    core_case ce = {"empty batch", 512, 64, 16, 16, 0, NULL, NULL};
    core_run(&ce, n_sm);
}
#endif

/* ------------------------------------------------------------------------ */
/* 3. The forward, CUDA vs CPU                                               */
/* ------------------------------------------------------------------------ */
#define MAX_T 160
#define LAYER 1
#define MAX_CTX 5100

typedef struct pair {
    dpep_attn *ca, *ga;
    dpep_attn_kv *ckv, *gkv;
    dpep_layer_w cw, gw;
    int hid, row;
    float *x, *out_c, *out_g; /* host (MAX_T, hidden) */
    float *dx, *dout;         /* device (MAX_T, hidden) */
} pair;

/* NaN (all-ones bytes: NaN in f32, BF16 and F16) over what a variant of
 * the CUDA forward writes before its output: the absorbed queries and
 * outputs, the heads, and the step's cache rows, so that a variant that
 * leaves some of them unwritten cannot pass on the previous variant's
 * values. */
static void poison_gpu(pair *p, const dpep_attn_seq *seq, int n_seq, int T)
{
    const dpep_attn_dims *d = &p->ga->d;
    const size_t nq = (size_t)T * (size_t)d->H * (size_t)(d->kv_lora + d->rope),
                 no = (size_t)T * (size_t)d->H * (size_t)d->kv_lora,
                 nh = (size_t)T * (size_t)d->H * (size_t)d->v;
    const size_t rowb = dpep_wtype_size(g_kv) * (size_t)p->row;
    size_t most = sizeof(float) * (nq > nh ? nq : nh); /* bytes; no <= nq */
    if (most < rowb) most = rowb;
    unsigned char *ones = malloc(most);
    if (!ones) return;
    memset(ones, 0xff, most);
    if (T > 0) {
        if (p->ga->sc.qt) g_tdev.ops->to_device(&g_tdev, p->ga->sc.qt, ones, sizeof(float) * nq);
        if (p->ga->sc.ot) g_tdev.ops->to_device(&g_tdev, p->ga->sc.ot, ones, sizeof(float) * no);
        if (p->ga->sc.heads) g_tdev.ops->to_device(&g_tdev, p->ga->sc.heads, ones, sizeof(float) * nh);
    }
    for (int i = 0; i < n_seq; i++)
        for (int j = 0; j < seq[i].n_new; j++)
            g_tdev.ops->to_device(&g_tdev, (void *)(uintptr_t)dpep_attn_kv_row(p->gkv, seq[i].slot, LAYER,
                                                                               seq[i].pos0 + j),
                                  ones, rowb);
    free(ones);
}

/* One step on both backends, the CUDA one three times (tiled core with the
 * heuristic's split, with 7 key chunks, the simple kernel: each rewrites
 * the same rows); compares out and the rows written. */
static void step(pair *p, const char *what, const char *cfg, const dpep_attn_seq *seq, int n_seq)
{
    int T = 0;
    for (int i = 0; i < n_seq; i++) {
        T += seq[i].n_new;
        EXPECT(dpep_attn_kv_seq_reserve(p->ckv, seq[i].slot, seq[i].pos0 + seq[i].n_new) == DPEP_OK &&
                   dpep_attn_kv_seq_reserve(p->gkv, seq[i].slot, seq[i].pos0 + seq[i].n_new) == DPEP_OK,
               "%s %s: reserve", cfg, what);
    }
    const size_t n = (size_t)(T > 0 ? T : 1) * p->hid;
    fill(p->x, n, -1.0, 1.0);
    g_tdev.ops->to_device(&g_tdev, p->dx, p->x, sizeof(float) * n);
    dpep_status sc = dpep_attn_forward(p->ca, &p->cw, LAYER, p->ckv, seq, n_seq, p->x, p->out_c);
    EXPECT(sc == DPEP_OK, "%s %s: forward cpu %d", cfg, what, sc);
    static const char *core_name[4] = {"tiled core", "tiled core, 7 key chunks", "simple core",
                                       "staged step (dpep_attn_stage), tiled core"};
    for (int v = 0; v < 4 && sc == DPEP_OK; v++) {
#ifdef DPEP_HAVE_CUDA
        dpep_attn_cuda_debug(p->ga, v == 2, v == 1 ? 7 : 0);
#endif
        for (size_t i = 0; i < n; i++) p->out_g[i] = NAN;
        g_tdev.ops->to_device(&g_tdev, p->dout, p->out_g, sizeof(float) * n); /* poison */
        poison_gpu(p, seq, n_seq, T);
        int shape = -1;
        if (v == 3) {
            /* the engine's graph path: planned and copied once, the forward
             * only launches */
            dpep_status ss = dpep_attn_stage(p->ga, p->gkv, seq, n_seq, &shape);
            EXPECT(ss == DPEP_OK && (T == 0 ? shape == 0 : shape >= 1), "%s %s: stage %d, shape %d",
                   cfg, what, ss, shape);
        }
        dpep_status sg = dpep_attn_forward(p->ga, &p->gw, LAYER, p->gkv, seq, n_seq, p->dx, p->dout);
        if (v == 3) dpep_attn_unstage(p->ga);
        EXPECT(sg == DPEP_OK, "%s %s (%s): forward cuda %d", cfg, what, core_name[v], sg);
        if (sg != DPEP_OK || T == 0) continue;
        g_tdev.ops->to_host(&g_tdev, p->out_g, p->dout, sizeof(float) * (size_t)T * p->hid);
        double e = norm_err(p->out_g, p->out_c, (size_t)T * p->hid);
        /* the latent rows the step wrote */
        double ek = 0;
        const size_t esz = dpep_wtype_size(g_kv);
        void *rg_raw = malloc(esz * (size_t)p->row);
        float *rg = malloc(sizeof(float) * (size_t)p->row), *rc = malloc(sizeof(float) * (size_t)p->row);
        for (int i = 0; i < n_seq; i++)
            for (int j = 0; j < seq[i].n_new; j++) {
                const void *c = dpep_attn_kv_row(p->ckv, seq[i].slot, LAYER, seq[i].pos0 + j);
                const void *g = dpep_attn_kv_row(p->gkv, seq[i].slot, LAYER, seq[i].pos0 + j);
                g_tdev.ops->to_host(&g_tdev, rg_raw, g, esz * (size_t)p->row);
                dpep_linear_widen(rg_raw, g_kv, p->row, rg);
                dpep_linear_widen(c, g_kv, p->row, rc);
                double r = norm_err(rg, rc, (size_t)p->row);
                ek = r > ek ? r : ek;
            }
        free(rg_raw);
        free(rg);
        free(rc);
        if (e > g_worst) g_worst = e;
        if (ek > g_worst) g_worst = ek;
        EXPECT(e <= tol_now() && ek <= tol_now(),
               "%s %s (T %d, %s, %s weights, %s KV): out err %.3g, cache rows err %.3g (tol %.0e)",
               cfg, what, T, core_name[v], dpep_wtype_name(g_wt), dpep_wtype_name(g_kv), e, ek,
               tol_now());
    }
#ifdef DPEP_HAVE_CUDA
    dpep_attn_cuda_debug(p->ga, 0, 0);
#endif
}

/* Both contexts and caches for model m (heads [head0, head0 + nh)). */
static bool pair_open(pair *p, const dpep_model_config *m, int head0, int nh, int page_size, const char *cfg)
{
    dpep_device cpu;
    dpep_device_get(DPEP_DEVICE_CPU, -1, &cpu);
    memset(p, 0, sizeof *p);
    p->hid = m->hidden;
    p->row = m->kv_lora_rank + m->qk_rope;
#ifdef DPEP_HAVE_CUDA
    g_pair_tc = dpep_mla_cu_tc_ok(m->kv_lora_rank, m->qk_rope, g_kv) != 0;
#endif
    const size_t budget = (size_t)2 * (MAX_CTX + 2 * MAX_T + 64 * 4) * p->row * sizeof(float) * 2;
    dpep_attn_kv_params kp = {.n_layers = 2, .page_size = page_size, .budget_bytes = budget,
                              .max_seqs = 4, .max_seq_len = MAX_CTX, .device = &cpu, .dtype = g_kv};
    dpep_attn_params ap = {.head0 = head0, .n_heads = nh, .max_tokens = MAX_T, .max_ctx = MAX_CTX,
                           .decode = DPEP_ATTN_DECODE_ABSORBED, .device = &cpu};
    bool ok = dpep_attn_kv_create(m, &kp, &p->ckv) == DPEP_OK && dpep_attn_create(m, &ap, &p->ca) == DPEP_OK;
    kp.device = &g_tdev;
    ap.device = &g_tdev;
    ok = ok && dpep_attn_kv_create(m, &kp, &p->gkv) == DPEP_OK && dpep_attn_create(m, &ap, &p->ga) == DPEP_OK;
    EXPECT(ok, "%s: create both", cfg);
    if (!ok) return false;
    make_w(m, head0, nh, &p->cw, &p->gw);
    p->x = malloc(sizeof(float) * MAX_T * p->hid);
    p->out_c = malloc(sizeof(float) * MAX_T * p->hid);
    p->out_g = malloc(sizeof(float) * MAX_T * p->hid);
    p->dx = dev_buf((size_t)MAX_T * p->hid);
    p->dout = dev_buf((size_t)MAX_T * p->hid);
    return true;
}
static void pair_close(pair *p)
{
    free_host_w(&p->cw);
    free(p->x);
    free(p->out_c);
    free(p->out_g);
    dtest_free_all();
    dpep_attn_destroy(p->ca);
    dpep_attn_destroy(p->ga);
    dpep_attn_kv_destroy(p->ckv);
    dpep_attn_kv_destroy(p->gkv);
}
/* n slots opened on both caches, the same ids. */
static bool open_slots(pair *p, int n, int *slots, const char *cfg)
{
    bool ok = true;
    for (int i = 0; i < n && ok; i++) {
        int t = -1;
        ok = dpep_attn_kv_seq_open(p->ckv, &slots[i]) == DPEP_OK && dpep_attn_kv_seq_open(p->gkv, &t) == DPEP_OK &&
             t == slots[i];
    }
    EXPECT(ok, "%s: open the same slots on both", cfg);
    return ok;
}

/* Without CUDA main() only prints why it skips: these two go unused. */
#ifdef DPEP_HAVE_CUDA
#define DPEP_TEST_MAYBE_UNUSED
#else
#define DPEP_TEST_MAYBE_UNUSED __attribute__((unused))
#endif

DPEP_TEST_MAYBE_UNUSED static void run_config(bool q_lora, int nh, int page_size)
{
    dpep_model_config m = test_model(q_lora);
    const int head0 = nh == 3 ? 2 : 0;
    if (m.n_heads < head0 + nh) m.n_heads = head0 + nh;
    char cfg[64];
    snprintf(cfg, sizeof cfg, "[q_lora %d heads %d page %d]", q_lora, nh, page_size);
    pair p;
    int sl[3];
    if (pair_open(&p, &m, head0, nh, page_size, cfg) && open_slots(&p, 3, sl, cfg)) {
        const int sa = sl[0], sb = sl[1], sc = sl[2];
        dpep_attn_seq s1[] = {{sa, 7, 0}};
        step(&p, "prefill 7", cfg, s1, 1);
        dpep_attn_seq s2[] = {{sa, 5, 7}, {sb, 3, 0}, {sc, 0, 0}};
        step(&p, "prefill 5 over a cached prefix of 7 + prefill 3 + empty sequence", cfg, s2, 3);
        dpep_attn_seq s3[] = {{sa, 1, 12}, {sb, 1, 3}};
        step(&p, "decode x2", cfg, s3, 2);
        dpep_attn_seq s4[] = {{sb, 1, 4}};
        step(&p, "decode 1 token", cfg, s4, 1);
        step(&p, "empty batch", cfg, NULL, 0);
        dpep_attn_seq s5[] = {{sc, 140, 0}};
        step(&p, "prefill 140", cfg, s5, 1);
        dpep_attn_seq s6[] = {{sc, 1, 140}, {sa, 1, 13}};
        step(&p, "decode after 140", cfg, s6, 2);
        dpep_attn_seq s7[] = {{sa, 9, 14}, {sc, 1, 141}};
        step(&p, "mixed prefill 9 over 14 + decode", cfg, s7, 2);
        if (nh == 3) {
            /* 8 tokens as 1 + 7 and as 4 + 4: tiles of heads of several
             * tokens (HT does not divide H) make 3 and 2 tiles: the staged
             * shapes must differ (a graph keyed by the shape would replay
             * the wrong grid) */
            dpep_attn_seq ga[] = {{sa, 1, 23}, {sb, 7, 5}}, gb[] = {{sa, 4, 24}, {sb, 4, 12}};
            int sha = -1, shb = -1;
            bool ok = dpep_attn_kv_seq_reserve(p.gkv, sa, 28) == DPEP_OK &&
                      dpep_attn_kv_seq_reserve(p.gkv, sb, 16) == DPEP_OK &&
                      dpep_attn_stage(p.ga, p.gkv, ga, 2, &sha) == DPEP_OK;
            dpep_attn_unstage(p.ga);
            ok = ok && dpep_attn_stage(p.ga, p.gkv, gb, 2, &shb) == DPEP_OK;
            dpep_attn_unstage(p.ga);
            EXPECT(ok && sha >= 1 && shb >= 1 && sha != shb,
                   "%s: staged shapes of 1 + 7 and 4 + 4 tokens differ (%d, %d)", cfg, sha, shb);
        }
    }
    pair_close(&p);
}

/* V3 latent widths: 5000 cached rows (imported, the same on both caches),
 * a decode over them (split-KV) with a short decode beside, then a prefill
 * of 40 over the 5001 cached rows. */
DPEP_TEST_MAYBE_UNUSED static void run_wide(int nh)
{
    dpep_model_config m = test_model_wide(true, nh);
    char cfg[64];
    snprintf(cfg, sizeof cfg, "[V3 widths heads %d page 64]", nh);
    pair p;
    int sl[2];
    if (pair_open(&p, &m, 0, nh, 64, cfg) && open_slots(&p, 2, sl, cfg)) {
        const int64_t n = 5000;
        float *rows = malloc(sizeof(float) * (size_t)n * p.row);
        fill(rows, (size_t)n * p.row, -1, 1);
        bool ok = dpep_attn_kv_seq_reserve(p.ckv, sl[0], n) == DPEP_OK &&
                  dpep_attn_kv_seq_reserve(p.gkv, sl[0], n) == DPEP_OK &&
                  dpep_attn_kv_write(p.ckv, sl[0], LAYER, 0, n, rows) == DPEP_OK &&
                  dpep_attn_kv_write(p.gkv, sl[0], LAYER, 0, n, rows) == DPEP_OK;
        free(rows);
        EXPECT(ok, "%s: import 5000 rows", cfg);
        if (ok) {
            dpep_attn_seq s1[] = {{sl[1], 3, 0}};
            step(&p, "prefill 3", cfg, s1, 1);
            dpep_attn_seq s2[] = {{sl[0], 1, 5000}, {sl[1], 1, 3}};
            step(&p, "decode over 5000 + decode over 3", cfg, s2, 2);
            dpep_attn_seq s3[] = {{sl[0], 40, 5001}};
            step(&p, "prefill 40 over 5001", cfg, s3, 1);
        }
    }
    pair_close(&p);
}

int main(void)
{
    g_rng = 0x5eed;
    dpep_log_init();
#ifndef DPEP_HAVE_CUDA
    printf("SKIP: this build has no CUDA\n");
    return 77;
#else
    host_checks();
    EXPECT(dpep_device_get(DPEP_DEVICE_CUDA, 0, &g_tdev) == DPEP_OK, "cuda device 0 in a CUDA build");
    dpep_model_config m = test_model(true);
    dpep_attn_kv_params kp = {.n_layers = 2, .page_size = 16, .budget_bytes = 1 << 20, .max_seqs = 2,
                              .max_seq_len = 64, .device = &g_tdev};
    dpep_attn_params ap = {.head0 = 0, .n_heads = 3, .max_tokens = 8, .max_ctx = 64, .device = &g_tdev};
    dpep_attn_kv *kv = NULL;
    dpep_attn *a = NULL;
    dpep_status skv = dpep_attn_kv_create(&m, &kp, &kv);
    dpep_status sa = dpep_attn_create(&m, &ap, &a);
    if (skv == DPEP_ERR_UNSUPPORTED || sa == DPEP_ERR_UNSUPPORTED) {
        /* host-side: both refused alike, nothing returned */
        EXPECT(skv == DPEP_ERR_UNSUPPORTED && sa == DPEP_ERR_UNSUPPORTED && !kv && !a,
               "no GPU: both creates UNSUPPORTED (kv %d, attn %d)", skv, sa);
        printf("host-side checks: %d passed, %d failed\n", g_pass, g_fail);
        if (g_fail) return 1;
        printf("SKIP: no usable CUDA device (the attention creates refuse cuda:0)\n");
        return 77;
    }
    EXPECT(skv == DPEP_OK && sa == DPEP_OK && dpep_attn_scratch_bytes(a) > 0, "creates on cuda:0");
    /* host weights are refused by the CUDA forward, with a message */
    if (a && kv) {
        dpep_layer_w hw, dw;
        make_w(&m, 0, 3, &hw, &dw);
        int s = -1;
        float x[64 * 2], out[64 * 2];
        fill(x, 128, -1, 1);
        dpep_attn_seq sq = {0, 2, 0};
        EXPECT(dpep_attn_kv_seq_open(kv, &s) == DPEP_OK && dpep_attn_kv_seq_reserve(kv, s, 2) == DPEP_OK,
               "open");
        sq.slot = s;
        EXPECT(dpep_attn_forward(a, &hw, 0, kv, &sq, 1, x, out) == DPEP_ERR_UNSUPPORTED,
               "host weights and buffers refused on cuda");
        free_host_w(&hw);
        dtest_free_all();
    }
    dpep_attn_destroy(a);
    dpep_attn_kv_destroy(kv);
    core_tests();
    const int heads[5] = {1, 3, 7, 16, 128}, pages[3] = {1, 16, 64};
    for (int ql = 1; ql >= 0; ql--)
        for (int h = 0; h < 5; h++)
            for (int pg = 0; pg < 3; pg++) run_config(ql, heads[h], pages[pg]);
    run_config(true, 48, 16); /* 32-row tiles, the last partial */
    run_wide(16);
    run_wide(128);
    printf("attn cuda vs cpu / double reference: worst normalized error %.3g (tol %.0e); the "
           "tensor-core core on BF16 pools %.3g (tol %.0e)\n", g_worst, TOL, g_worst_tc, TOL16);
    /* 16-bit weights: the forward's products through runtime/linear's
     * 16-bit path (inputs rounded on the device, widened on the CPU) */
    static const dpep_wtype w16[2] = {DPEP_WT_BF16, DPEP_WT_F16};
    for (int i = 0; i < 2; i++) {
        g_wt = w16[i];
        g_worst = 0;
        run_config(true, 16, 16);
        run_config(false, 3, 1);
        run_config(true, 7, 64);
        run_config(true, 48, 16);
        run_wide(128);
        printf("attn cuda vs cpu, %s weights: worst normalized error %.3g (tol %.0e)\n",
               dpep_wtype_name(g_wt), g_worst, TOL16);
    }
    g_wt = DPEP_WT_F32;
    /* a BF16 KV pool on both backends (runtime.kv_cache_dtype bf16): the
     * rows written, prefill and decode over them, split-KV at V3 widths */
    g_kv = DPEP_WT_BF16;
    g_worst = 0;
    run_config(true, 16, 16);
    run_config(false, 3, 1);
    run_config(true, 128, 64);
    run_wide(16);
    run_wide(128);
    printf("attn cuda vs cpu, bf16 KV pools: worst normalized error %.3g (tol %.0e; %.0e where the "
           "core runs on tensor cores)\n", g_worst, TOL_KV16, TOL16);
    g_kv = DPEP_WT_F32;
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
#endif
}
