/* test_moe_cuda.c — op test of the MoE CUDA kernel table (moe/experts_cuda.cu)
 * against the CPU one, in the style of ggml's test-backend-ops: the same
 * random inputs and weights (never zeros, but the layer's quantized x) on
 * both, device outputs poisoned with 0xFF bytes (NaN) before each run,
 * normalized error ||gpu - cpu|| / ||cpu|| per output. Thresholds (fp32, pedantic cuBLAS, issue 16): 1e-5
 * for every op (router_logits, gate weights, mlp, experts, the layer);
 * gate expert ids must be identical (also on logits quantized to 5 levels,
 * where most scores tie: the lower index wins on both).
 *
 * Cases: router logits and mlp at 0, 1, 5, 300 tokens and odd hidden sizes
 * (mlp: several chunks, strided x, accumulate); gate_select for V3
 * (sigmoid, noaux_tc, bias, n_group/topk_group), V3 without groups, V2
 * greedy and group_limited_greedy, norm_topk_prob on/off, n_routed 1..64,
 * topk 1..8; routed experts (n_slots 1..64, topk 1..8, rows without a local
 * slot, a run read through a token index, two runs); a whole layer through
 * dpep_moe_forward on a CUDA context vs a CPU one (V3 with shared experts,
 * V2 without; x and router weights on a grid that makes the logits exact,
 * so that the ids compared exactly cannot flip on a near-tie), and
 * dpep_moe_dense_forward. The experts and the layer run
 * twice: cuBLAS per slot (default) and the grouped, sync-free path.
 *
 * Without a GPU (or in a build without CUDA) it runs the host-side checks
 * (the refusals of what the CUDA path does not do, with messages naming the
 * field; the create on cuda:0 refused with UNSUPPORTED), then prints
 * "SKIP: why" and exits 77. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mpi.h>

#include "dpep_moe.h"
#include "moe_internal.h"
#include "../dpep_test.h"
#include "../dpep_test_device.h"

#ifdef DPEP_HAVE_CUDA /* the whole test; main says SKIP otherwise */
#define TOL 1e-5
#define TOL16 1e-2
/* the expert / MLP matrices' type (make_mlp): F32, then BF16 and F16,
 * whose products the GPU runs on 16-bit inputs (runtime/linear) */
static dpep_wtype g_wt = DPEP_WT_F32;
static double tol_w(void) { return g_wt == DPEP_WT_F32 ? TOL : TOL16; }
/* FP8: the matrices are made as FP8 with block scales (make_fp8); the CPU
 * side computes with their float32 values */

static uint64_t g_rng = 0x5eed;
static double urand(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}
/* uniform in [lo, hi], never exactly 0 */
static void fill(float *p, size_t n, double lo, double hi)
{
    for (size_t i = 0; i < n; i++) {
        float v = (float)(lo + (hi - lo) * urand());
        p[i] = v == 0.0f ? 1e-3f : v;
    }
}
static float *hbuf(size_t n) { return (float *)calloc(n ? n : 1, sizeof(float)); }
/* p[i] rounded to a multiple of 2^-bits. The layer test feeds such x and
 * router weights: every product and partial sum of the router GEMM is then
 * exact in fp32, so cuBLAS and OpenBLAS give the same logits bit for bit
 * whatever their summation order, and the expert ids (compared exactly) do
 * not depend on which near-tie a rounding difference would tip. */
static void quantize(float *p, size_t n, int bits)
{
    const float s = ldexpf(1.0f, bits);
    for (size_t i = 0; i < n; i++) p[i] = nearbyintf(p[i] * s) / s;
}

/* ---- the device's memory: tests/dpep_test_device.h (g_tdev) ---- */

/* ||a - b|| / ||b|| (0 when both are empty; NaN stays NaN -> fails). */
static double nerr(const float *a, const float *b, size_t n)
{
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        double e = (double)a[i] - (double)b[i];
        d += e * e;
        r += (double)b[i] * b[i];
    }
    if (n == 0) return 0.0;
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

static dpep_status kstat(void) { return moe_kern_status(&moe_kernels_cuda); }

/* moe_kernels_cuda.experts: cuBLAS per slot (0, the default), the grouped
 * path (1: tensor-core tiles for 16-bit / FP8 weights where the shapes
 * allow) or the grouped path on the FMA tiles only (2) */
static int g_grouped;
static void set_grouped(int mode)
{
    static const int impl[3] = {MOE_CUDA_EXPERTS_CUBLAS, MOE_CUDA_EXPERTS_GROUPED,
                                MOE_CUDA_EXPERTS_GROUPED_FMA};
    g_grouped = mode;
    moe_cuda_set_experts_impl(impl[mode]);
}
static const char *grouped_name(void)
{
    return g_grouped == 0 ? "cublas" : g_grouped == 1 ? "grouped" : "grouped fma";
}

/* ------------------------------------------------------------------------ */
/* router_logits                                                            */
/* ------------------------------------------------------------------------ */
static void test_router(void)
{
    const int Ts[] = {0, 1, 5, 300}, Hs[] = {1, 7, 129}, Es[] = {1, 8, 64};
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 3; c++) {
                const int T = Ts[a], H = Hs[b], E = Es[c];
                float *x = hbuf((size_t)T * H), *r = hbuf((size_t)E * H), *ref = hbuf((size_t)T * E),
                      *got = hbuf((size_t)T * E);
                fill(x, (size_t)T * H, -1, 1);
                fill(r, (size_t)E * H, -0.5, 0.5);
                moe_kernels_cpu.router_logits(r, E, H, x, T, ref);
                float *dx = dtest_up(x, sizeof(float) * T * H), *dr = dtest_up(r, sizeof(float) * E * H),
                      *dl = dtest_alloc(sizeof(float) * T * E);
                dtest_poison(dl, sizeof(float) * T * E);
                moe_kernels_cuda.router_logits(dr, E, H, dx, T, dl);
                EXPECT(kstat() == DPEP_OK, "router_logits T %d H %d E %d: status", T, H, E);
                dtest_down(got, dl, sizeof(float) * T * E);
                double e = nerr(got, ref, (size_t)T * E);
                EXPECT(e <= TOL, "router_logits T %d H %d E %d: err %.3g", T, H, E, e);
                free(x), free(r), free(ref), free(got);
                dtest_free_all();
            }
}

/* ------------------------------------------------------------------------ */
/* gate_select                                                              */
/* ------------------------------------------------------------------------ */
static void test_gate(void)
{
    typedef struct { const char *name; int E, k, G, tg; dpep_scoring sc; dpep_topk_method m; bool norm; float rsf; bool bias; } gcase;
    const gcase cs[] = {
        {"v3", 64, 8, 8, 4, DPEP_SCORE_SIGMOID, DPEP_TOPK_NOAUX_TC, true, 2.5f, true},
        {"v3 nobias", 32, 4, 4, 2, DPEP_SCORE_SIGMOID, DPEP_TOPK_NOAUX_TC, true, 1.0f, false},
        {"v3 groups of 1", 8, 3, 8, 5, DPEP_SCORE_SIGMOID, DPEP_TOPK_NOAUX_TC, false, 1.5f, true},
        {"v3 no groups", 16, 8, 1, 1, DPEP_SCORE_SIGMOID, DPEP_TOPK_NOAUX_TC, true, 2.5f, true},
        {"v3 one expert", 1, 1, 1, 1, DPEP_SCORE_SIGMOID, DPEP_TOPK_NOAUX_TC, true, 1.0f, true},
        {"v2 greedy", 16, 6, 1, 1, DPEP_SCORE_SOFTMAX, DPEP_TOPK_GREEDY, false, 1.0f, false},
        {"v2 greedy norm", 64, 8, 1, 1, DPEP_SCORE_SOFTMAX, DPEP_TOPK_GREEDY, true, 16.0f, false},
        {"v2 group-limited", 64, 6, 8, 3, DPEP_SCORE_SOFTMAX, DPEP_TOPK_GROUP_LIMITED_GREEDY, false, 1.0f, false},
        {"v2 group-limited k1", 24, 1, 3, 1, DPEP_SCORE_SOFTMAX, DPEP_TOPK_GROUP_LIMITED_GREEDY, true, 1.0f, false},
    };
    const int Ts[] = {0, 1, 33, 300};
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++)
        for (int ti = 0; ti < 4; ti++)
            for (int quant = 0; quant < 2; quant++) {
                const gcase *c = &cs[ci];
                dpep_moe_gate_cfg g = {.n_experts = c->E, .topk = c->k, .n_group = c->G,
                                       .topk_group = c->tg, .scoring = c->sc, .method = c->m,
                                       .norm_topk_prob = c->norm, .routed_scaling_factor = c->rsf};
                EXPECT(dpep_moe_gate_check(&g, NULL) == DPEP_OK, "gate %s: config", c->name);
                const int T = Ts[ti], E = c->E, k = c->k;
                float *l = hbuf((size_t)T * E), *bias = hbuf((size_t)E), *wr = hbuf((size_t)T * k),
                      *wg = hbuf((size_t)T * k);
                int32_t *ir = calloc((size_t)T * k + 1, 4), *ig = calloc((size_t)T * k + 1, 4);
                fill(l, (size_t)T * E, -4, 4);
                /* quantized: 5 levels, most scores tie */
                if (quant)
                    for (int64_t i = 0; i < (int64_t)T * E; i++) l[i] = (float)(floor(urand() * 5) - 2);
                fill(bias, (size_t)E, -0.1, 0.1);
                if (quant)
                    for (int e = 0; e < E; e++) bias[e] = (float)(floor(urand() * 3) * 0.25);
                const float *hb = c->bias ? bias : NULL;
                moe_kernels_cpu.gate_select(&g, l, hb, T, ir, wr);
                float *dl = dtest_up(l, sizeof(float) * T * E);
                float *db = c->bias ? dtest_up(bias, sizeof(float) * E) : NULL;
                int32_t *di = dtest_alloc(4 * (size_t)T * k);
                float *dw = dtest_alloc(sizeof(float) * T * k);
                dtest_poison(di, 4 * (size_t)T * k);
                dtest_poison(dw, sizeof(float) * T * k);
                moe_kernels_cuda.gate_select(&g, dl, db, T, di, dw);
                EXPECT(kstat() == DPEP_OK, "gate %s T %d: status", c->name, T);
                dtest_down(ig, di, 4 * (size_t)T * k);
                dtest_down(wg, dw, sizeof(float) * T * k);
                int64_t bad = -1;
                for (int64_t i = 0; i < (int64_t)T * k && bad < 0; i++)
                    if (ig[i] != ir[i]) bad = i;
                EXPECT(bad < 0, "gate %s T %d quant %d: ids differ at token %lld (gpu %d cpu %d)",
                       c->name, T, quant, (long long)(bad / (k ? k : 1)), bad >= 0 ? ig[bad] : 0,
                       bad >= 0 ? ir[bad] : 0);
                double e = nerr(wg, wr, (size_t)T * k);
                EXPECT(e <= TOL, "gate %s T %d quant %d: weights err %.3g", c->name, T, quant, e);
                free(l), free(bias), free(wr), free(wg), free(ir), free(ig);
                dtest_free_all();
            }
}

/* ------------------------------------------------------------------------ */
/* mlp                                                                      */
/* ------------------------------------------------------------------------ */
typedef struct wset {
    dpep_mlp_w h, d; /* host, device (same values) */
} wset;

/* f (n floats, malloc'd) in g_wt: f itself for F32, else a rounded 16-bit
 * copy (f freed). */
static void *as_type(float *f, size_t n)
{
    if (g_wt == DPEP_WT_F32) return f;
    uint16_t *h = malloc(sizeof(uint16_t) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        h[i] = g_wt == DPEP_WT_BF16 ? dpep_f32_to_bf16(f[i]) : dpep_f32_to_f16(f[i]);
    free(f);
    return h;
}

/* An FP8 matrix rows x cols (random E4M3 bytes, a random scale per 128 x
 * 128 block, about `amp` in size): the device's FP8 copy with its scales,
 * and the host's float32 values (fp8 x scale, as the CPU loader makes them). */
static void make_fp8(int rows, int cols, double amp, dpep_mat *h, dpep_mat *d)
{
    const int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
    const size_t n = (size_t)rows * (size_t)cols;
    unsigned char *b = malloc(n ? n : 1);
    float *s = malloc(sizeof(float) * (size_t)(sr * sc > 0 ? sr * sc : 1)), *f = hbuf(n);
    dpep_test_fp8_matrix(&g_rng, rows, cols, 0.02 * amp, 0.08 * amp, b, s, f); /* |e4m3| < 448 */
    *h = dpep_mat_make(f, DPEP_WT_F32, rows, cols);
    *d = dpep_mat_make(dtest_up(b, n), DPEP_WT_FP8, rows, cols);
    d->scale = dtest_up(s, sizeof(float) * (size_t)(sr * sc));
    d->sld = sc;
    free(b), free(s);
}

static void make_mlp(int H, int ni, wset *w)
{
    const double sh = sqrt(3.0 / H), si = sqrt(3.0 / (ni > 0 ? ni : 1));
    size_t a = (size_t)ni * H;
    w->h.inter = w->d.inter = ni;
    if (g_wt == DPEP_WT_FP8) {
        /* the CPU computes with the float32 values of the FP8 weights */
        make_fp8(ni, H, sh / 4, &w->h.gate, &w->d.gate);
        make_fp8(ni, H, sh / 4, &w->h.up, &w->d.up);
        make_fp8(H, ni, si / 4, &w->h.down, &w->d.down);
        return;
    }
    float *g = hbuf(a), *u = hbuf(a), *dn = hbuf(a);
    fill(g, a, -sh, sh);
    fill(u, a, -sh, sh);
    fill(dn, a, -si, si);
    void *gq = as_type(g, a), *uq = as_type(u, a), *dq = as_type(dn, a);
    const size_t es = dpep_wtype_size(g_wt);
    w->h.gate = dpep_mat_make(gq, g_wt, ni, H);
    w->h.up = dpep_mat_make(uq, g_wt, ni, H);
    w->h.down = dpep_mat_make(dq, g_wt, H, ni);
    w->d.gate = dpep_mat_make(dtest_up(gq, es * a), g_wt, ni, H);
    w->d.up = dpep_mat_make(dtest_up(uq, es * a), g_wt, ni, H);
    w->d.down = dpep_mat_make(dtest_up(dq, es * a), g_wt, H, ni);
}
static void free_mlp(wset *w)
{
    free(w->h.gate.p), free(w->h.up.p), free(w->h.down.p);
}

static void test_mlp(void)
{
    const int Ts[] = {0, 1, 5, 300}, Hs[] = {33, 129}, Is[] = {1, 17, 64};
    const int chunk = 64;
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 2; b++)
            for (int c = 0; c < 3; c++)
                for (int acc = 0; acc < 2; acc++) {
                    const int T = Ts[a], H = Hs[b], ni = Is[c];
                    const int64_t ldx = H + 3; /* strided rows */
                    wset w;
                    make_mlp(H, ni, &w);
                    float *x = hbuf((size_t)T * ldx), *ref = hbuf((size_t)T * H),
                          *got = hbuf((size_t)T * H), *scr = hbuf(2 * (size_t)chunk * ni);
                    fill(x, (size_t)T * ldx, -1, 1);
                    fill(ref, (size_t)T * H, -1, 1); /* the accumulate base */
                    float *dx = dtest_up(x, sizeof(float) * T * ldx),
                          *dout = dtest_alloc(sizeof(float) * T * H),
                          *dscr = dtest_alloc(sizeof(float) * 2 * chunk * ni);
                    if (acc) {
                        if (T) g_tdev.ops->to_device(&g_tdev, dout, ref, sizeof(float) * T * H);
                    } else {
                        dtest_poison(dout, sizeof(float) * T * H);
                    }
                    dtest_poison(dscr, sizeof(float) * 2 * chunk * ni);
                    moe_kernels_cpu.mlp(&w.h, H, x, ldx, T, chunk, scr, ref, acc);
                    moe_kernels_cuda.mlp(&w.d, H, dx, ldx, T, chunk, dscr, dout, acc);
                    EXPECT(kstat() == DPEP_OK, "mlp: status");
                    dtest_down(got, dout, sizeof(float) * T * H);
                    double e = nerr(got, ref, (size_t)T * H);
                    EXPECT(e <= tol_w(), "mlp %s T %d H %d I %d acc %d: err %.3g",
                           dpep_wtype_name(g_wt), T, H, ni, acc, e);
                    free(x), free(ref), free(got), free(scr);
                    free_mlp(&w);
                    dtest_free_all();
                }
}

/* ------------------------------------------------------------------------ */
/* routed experts                                                           */
/* ------------------------------------------------------------------------ */
/* n rows of k distinct slots in [0, n_slots) (or -1 with probability
 * p_none each: expert on another rank), sorted ascending like the gate's */
static void make_slots(int32_t *sl, int64_t n, int k, int n_slots, double p_none)
{
    for (int64_t i = 0; i < n; i++) {
        int32_t *r = sl + i * k;
        for (int j = 0; j < k; j++) {
            int s, dup;
            do {
                s = (int)(urand() * n_slots);
                if (s >= n_slots) s = n_slots - 1;
                dup = 0;
                for (int q = 0; q < j; q++) dup |= r[q] == s;
            } while (dup);
            r[j] = s;
        }
        for (int j = 0; j < k; j++)
            if (urand() < p_none) r[j] = -1;
    }
}

static void test_experts_case(int n_slots, int k, int H, int ni, int64_t n0, int64_t n1, int chunk)
{
    /* run 0: rows read in place (tok = NULL); run 1 (n1 > 0): through a
     * token index over a larger x (the own rows of the alltoall path) */
    wset *w = calloc((size_t)n_slots, sizeof *w);
    dpep_mlp_w *eh = calloc((size_t)n_slots, sizeof *eh), *ed = calloc((size_t)n_slots, sizeof *ed);
    for (int s = 0; s < n_slots; s++) {
        make_mlp(H, ni, &w[s]);
        eh[s] = w[s].h;
        ed[s] = w[s].d;
    }
    const int64_t nx1 = n1 * 2 + 1, ldx1 = H + 5;
    float *x0 = hbuf((size_t)n0 * H), *w0 = hbuf((size_t)n0 * k), *x1 = hbuf((size_t)nx1 * ldx1),
          *w1 = hbuf((size_t)nx1 * k);
    int32_t *s0 = calloc((size_t)(n0 * k + 1), 4), *s1 = calloc((size_t)(n1 * k + 1), 4),
            *tok1 = calloc((size_t)n1 + 1, 4);
    fill(x0, (size_t)n0 * H, -1, 1);
    fill(w0, (size_t)n0 * k, 0.05, 1);
    fill(x1, (size_t)nx1 * ldx1, -1, 1);
    fill(w1, (size_t)nx1 * k, 0.05, 1);
    make_slots(s0, n0, k, n_slots, 0.0);
    make_slots(s1, n1, k, n_slots, 0.3);
    for (int64_t i = 0; i < n1; i++) tok1[i] = (int32_t)(nx1 - 1 - 2 * i);
    const int64_t nrows = n0 + n1, kl = k < n_slots ? k : n_slots, np = nrows * kl + 1;
    float *part_r = hbuf((size_t)nrows * H), *part_g = hbuf((size_t)nrows * H);
    /* CPU */
    const float **px = calloc((size_t)np, sizeof *px);
    float **pp = calloc((size_t)np, sizeof *pp), *sw = hbuf((size_t)np);
    int64_t *cnt = calloc((size_t)n_slots + 1, 8);
    float *work = hbuf(2 * (size_t)chunk * (H + ni));
    moe_rows seg[2] = {
        {.x = x0, .tok = NULL, .ldx = H, .slot = s0, .ld_slot = k, .w = w0, .ld_w = k, .part = part_r, .n = n0},
        {.x = x1, .tok = tok1, .ldx = ldx1, .slot = s1, .ld_slot = k, .w = w1, .ld_w = k, .part = part_r + n0 * H, .n = n1}};
    int64_t pr = 0, pg = -1;
    double fr = moe_kernels_cpu.experts(eh, n_slots, H, k, seg, n1 ? 2 : 1, chunk, px, pp, sw, cnt,
                                        work, ni, &pr);
    /* CUDA */
    float *dpart = dtest_alloc(sizeof(float) * nrows * H);
    dtest_poison(dpart, sizeof(float) * nrows * H);
    moe_rows dseg[2] = {seg[0], seg[1]};
    dseg[0].x = dtest_up(x0, sizeof(float) * n0 * H);
    dseg[0].slot = dtest_up(s0, 4 * (size_t)n0 * k);
    dseg[0].w = dtest_up(w0, sizeof(float) * n0 * k);
    dseg[0].part = dpart;
    dseg[1].x = dtest_up(x1, sizeof(float) * nx1 * ldx1);
    dseg[1].tok = dtest_up(tok1, 4 * (size_t)n1);
    dseg[1].slot = dtest_up(s1, 4 * (size_t)n1 * k);
    dseg[1].w = dtest_up(w1, sizeof(float) * nx1 * k);
    dseg[1].part = dpart + n0 * H;
    void *dpx = dtest_alloc(sizeof(void *) * np), *dpp = dtest_alloc(sizeof(void *) * np);
    float *dsw = dtest_alloc(sizeof(float) * np), *dwork = dtest_alloc(sizeof(float) * 2 * chunk * (H + ni));
    int64_t *dcnt = dtest_alloc(8 * ((size_t)n_slots + 1));
    dtest_poison(dpx, sizeof(void *) * np), dtest_poison(dpp, sizeof(void *) * np), dtest_poison(dsw, sizeof(float) * np);
    dtest_poison(dcnt, 8 * ((size_t)n_slots + 1)), dtest_poison(dwork, sizeof(float) * 2 * chunk * (H + ni));
    double fg = moe_kernels_cuda.experts(ed, n_slots, H, k, dseg, n1 ? 2 : 1, chunk, dpx, dpp, dsw,
                                         dcnt, dwork, ni, &pg);
    EXPECT(kstat() == DPEP_OK, "experts: status");
    dtest_down(part_g, dpart, sizeof(float) * nrows * H);
    double e = nerr(part_g, part_r, (size_t)nrows * H);
    /* the grouped path does not know the counts on the host (-1), except
     * when it had nothing to do */
    EXPECT(!g_grouped || nrows == 0 || pg == -1,
           "experts slots %d k %d: the grouped path ran (not the cuBLAS fallback)", n_slots, k);
    if (g_grouped && pg == -1 && fg == -1.0) pg = pr, fg = fr;
    EXPECT(e <= tol_w() && pr == pg && fr == fg,
           "experts %s (%s) slots %d k %d H %d I %d rows %lld+%lld chunk %d: err %.3g pairs %lld/%lld "
           "flops %g/%g", dpep_wtype_name(g_wt), grouped_name(), n_slots, k, H, ni, (long long)n0,
           (long long)n1, chunk, e, (long long)pg, (long long)pr, fg, fr);
    /* again: the same bits (deterministic) */
    float *again = hbuf((size_t)nrows * H);
    dtest_poison(dpart, sizeof(float) * nrows * H);
    moe_kernels_cuda.experts(ed, n_slots, H, k, dseg, n1 ? 2 : 1, chunk, dpx, dpp, dsw, dcnt, dwork,
                             ni, &pg);
    dtest_down(again, dpart, sizeof(float) * nrows * H);
    EXPECT(nrows == 0 || memcmp(again, part_g, sizeof(float) * nrows * H) == 0,
           "experts slots %d k %d: a second run gives other bits", n_slots, k);
    free(again);
    for (int s = 0; s < n_slots; s++) free_mlp(&w[s]);
    free(w), free(eh), free(ed), free(x0), free(w0), free(x1), free(w1), free(s0), free(s1),
        free(tok1), free(part_r), free(part_g), free(px), free(pp), free(sw), free(cnt), free(work);
    dtest_free_all();
}

static void test_experts(void)
{
    test_experts_case(1, 1, 33, 17, 0, 0, 64);
    test_experts_case(1, 1, 33, 17, 1, 0, 64);
    test_experts_case(8, 2, 33, 17, 50, 0, 16);
    test_experts_case(8, 8, 129, 48, 300, 0, 64);
    test_experts_case(64, 8, 129, 24, 300, 0, 64);
    test_experts_case(64, 1, 7, 5, 513, 0, 1024);
    test_experts_case(16, 4, 65, 32, 90, 40, 32); /* two runs, one through tok */
    test_experts_case(16, 4, 65, 32, 0, 40, 32);  /* an empty run first */
    test_experts_case(6, 2, 300, 260, 120, 0, 64); /* several 128-blocks both ways */
    /* shapes the tensor-core tiles take (H and I multiples of 32): partial
     * 64-row tiles, an empty run, several 128-blocks (FP8), a lone pair */
    test_experts_case(8, 2, 256, 96, 70, 0, 64);
    test_experts_case(16, 4, 128, 64, 90, 40, 32);
    test_experts_case(6, 2, 384, 256, 120, 0, 64);
    test_experts_case(4, 1, 64, 32, 1, 0, 64);
}

/* ------------------------------------------------------------------------ */
/* The layer on a CUDA context vs a CPU one                                  */
/* ------------------------------------------------------------------------ */
typedef struct layer {
    dpep_layer_w h, d;
    wset *ex, sh, dense;
} layer;

static void make_layer(const dpep_moe_config *c, layer *L)
{
    const int E = c->gate.n_experts, H = c->hidden;
    memset(L, 0, sizeof *L);
    L->ex = calloc((size_t)E, sizeof *L->ex);
    L->h.experts = calloc((size_t)E, sizeof(dpep_mlp_w));
    L->d.experts = calloc((size_t)E, sizeof(dpep_mlp_w));
    L->h.n_experts = L->d.n_experts = E;
    for (int e = 0; e < E; e++) {
        make_mlp(H, c->moe_inter, &L->ex[e]);
        L->h.experts[e] = L->ex[e].h;
        L->d.experts[e] = L->ex[e].d;
    }
    L->h.router = hbuf((size_t)E * H);
    fill(L->h.router, (size_t)E * H, -0.3, 0.3);
    quantize(L->h.router, (size_t)E * H, 6); /* exact logits: see quantize */
    L->d.router = dtest_up(L->h.router, sizeof(float) * E * H);
    if (c->gate.method == DPEP_TOPK_NOAUX_TC) {
        L->h.router_bias = hbuf((size_t)E);
        fill(L->h.router_bias, (size_t)E, -0.05, 0.05);
        L->d.router_bias = dtest_up(L->h.router_bias, sizeof(float) * E);
    }
    if (c->n_shared) {
        make_mlp(H, c->n_shared * c->moe_inter, &L->sh);
        L->h.shared = L->sh.h;
        L->d.shared = L->sh.d;
    }
    if (c->dense_inter) {
        make_mlp(H, c->dense_inter, &L->dense);
        L->h.mlp = L->dense.h;
        L->d.mlp = L->dense.d;
    }
}
static void free_layer(const dpep_moe_config *c, layer *L)
{
    for (int e = 0; e < c->gate.n_experts; e++) free_mlp(&L->ex[e]);
    if (c->n_shared) free_mlp(&L->sh);
    if (c->dense_inter) free_mlp(&L->dense);
    free(L->ex), free(L->h.experts), free(L->d.experts), free(L->h.router), free(L->h.router_bias);
}

static void test_layer(dpep_comm *ep, bool v3, int n_shared)
{
    dpep_moe_config c;
    memset(&c, 0, sizeof c);
    c.hidden = 65;
    c.gate = (dpep_moe_gate_cfg){.n_experts = v3 ? 32 : 16, .topk = v3 ? 8 : 6, .n_group = v3 ? 4 : 1,
                                 .topk_group = v3 ? 2 : 1,
                                 .scoring = v3 ? DPEP_SCORE_SIGMOID : DPEP_SCORE_SOFTMAX,
                                 .method = v3 ? DPEP_TOPK_NOAUX_TC : DPEP_TOPK_GREEDY,
                                 .norm_topk_prob = v3, .routed_scaling_factor = v3 ? 2.5f : 1.0f};
    c.moe_inter = 24;
    c.n_shared = n_shared;
    c.dense_inter = 40;
    c.backend = DPEP_A2A_ALLTOALL;
    c.transport = DPEP_A2A_TRANSPORT_AUTO;
    c.max_tokens = 200;
    c.chunk = 64;
    c.ep = ep;
    dpep_moe *mc = NULL, *mg = NULL;
    dpep_diag d;
    dpep_diag_init(&d);
    EXPECT(dpep_moe_create(&c, &mc, &d) == DPEP_OK, "layer: cpu create");
    c.device = &g_tdev;
    dpep_diag_init(&d);
    dpep_status st = dpep_moe_create(&c, &mg, &d);
    EXPECT(st == DPEP_OK, "layer: cuda create (%s)", dpep_status_string(st));
    if (st != DPEP_OK) dpep_diag_print(&d, stdout);
    if (!mc || !mg) {
        dpep_moe_free(mc);
        dpep_moe_free(mg);
        return;
    }
    EXPECT(strcmp(dpep_moe_transport_name(mg), "device") == 0, "layer: the device transport");
    if (g_grouped) dpep_moe_set_sync_free(mg, true); /* the engine's switch, for its graphs */
    layer L;
    make_layer(&c, &L);
    const int H = c.hidden, k = c.gate.topk;
    const int Ts[] = {0, 1, 7, 200};
    for (int ti = 0; ti < 4; ti++) {
        const int T = Ts[ti];
        float *x = hbuf((size_t)T * H), *ref = hbuf((size_t)T * H), *got = hbuf((size_t)T * H),
              *wr = hbuf((size_t)T * k), *wg = hbuf((size_t)T * k);
        int32_t *ir = calloc((size_t)T * k + 1, 4), *ig = calloc((size_t)T * k + 1, 4);
        fill(x, (size_t)T * H, -1, 1);
        quantize(x, (size_t)T * H, 3); /* |logit| <= 65 * 0.3 in steps of 2^-9: exact */
        float *dx = dtest_up(x, sizeof(float) * T * H), *dout = dtest_alloc(sizeof(float) * T * H),
              *dw = dtest_alloc(sizeof(float) * T * k);
        int32_t *di = dtest_alloc(4 * (size_t)T * k);
        dtest_poison(dout, sizeof(float) * T * H);
        EXPECT(dpep_moe_forward(mc, &L.h, x, T, ref, ir, wr) == DPEP_OK, "layer: cpu forward");
        st = dpep_moe_forward(mg, &L.d, T ? dx : NULL, T, dout, di, dw);
        EXPECT(st == DPEP_OK, "layer v3 %d shared %d T %d: cuda forward %s", v3, n_shared, T,
               dpep_status_string(st));
        dtest_down(got, dout, sizeof(float) * T * H);
        dtest_down(ig, di, 4 * (size_t)T * k);
        dtest_down(wg, dw, sizeof(float) * T * k);
        double e = nerr(got, ref, (size_t)T * H), ew = nerr(wg, wr, (size_t)T * k);
        EXPECT(e <= tol_w() && ew <= TOL && memcmp(ig, ir, 4 * (size_t)T * k) == 0,
               "layer %s v3 %d shared %d T %d: out err %.3g, weights err %.3g, ids %s",
               dpep_wtype_name(g_wt), v3, n_shared, T, e, ew, memcmp(ig, ir, 4 * (size_t)T * k) ? "differ" : "same");
        dpep_moe_stats sc, sg;
        dpep_moe_get_stats(mc, &sc);
        dpep_moe_get_stats(mg, &sg);
        if (g_grouped && sg.expert_rows == -1) sg.expert_rows = sc.expert_rows;
        if (g_grouped && sg.expert_flops == -1.0) sg.expert_flops = sc.expert_flops;
        EXPECT(sc.expert_rows == sg.expert_rows && sc.rows_sent == sg.rows_sent &&
                   sc.expert_flops == sg.expert_flops,
               "layer T %d: stats (pairs %lld/%lld)", T, (long long)sg.expert_rows,
               (long long)sc.expert_rows);
        /* the dense FFN on the same tokens */
        dtest_poison(dout, sizeof(float) * T * H);
        EXPECT(dpep_moe_dense_forward(mc, &L.h.mlp, x, T, ref) == DPEP_OK, "dense: cpu");
        st = dpep_moe_dense_forward(mg, &L.d.mlp, T ? dx : NULL, T, dout);
        EXPECT(st == DPEP_OK, "dense T %d: cuda %s", T, dpep_status_string(st));
        dtest_down(got, dout, sizeof(float) * T * H);
        e = nerr(got, ref, (size_t)T * H);
        EXPECT(e <= tol_w(), "dense %s T %d: err %.3g", dpep_wtype_name(g_wt), T, e);
        free(x), free(ref), free(got), free(wr), free(wg), free(ir), free(ig);
    }
    free_layer(&c, &L);
    dtest_free_all();
    dpep_moe_free(mc);
    dpep_moe_free(mg);
}

/* ------------------------------------------------------------------------ */
/* pack_rows / sum_rows (the device-rows transports): bit-identical to the   */
/* CPU table's (copies, and plain adds in the same order)                    */
/* ------------------------------------------------------------------------ */
static void test_pack_sum(void)
{
    const int Hs[] = {1, 7, 129, 1031}, ks[] = {1, 3, 8};
    const int64_t ns[] = {0, 1, 5, 300};
    int cases = 0;
    long bad_pack = 0, bad_sum = 0;
    for (int a = 0; a < 4; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 4; c++) {
                const int H = Hs[a], k = ks[b];
                const int64_t n = ns[c], T = n + 3, ldx = H + 5, ldw = k + 2, S = H + 2 * k;
                float *x = hbuf((size_t)(T * ldx)), *w = hbuf((size_t)(T * ldw));
                fill(x, (size_t)(T * ldx), -2, 2);
                fill(w, (size_t)(T * ldw), 0, 1);
                int32_t *tok = (int32_t *)calloc((size_t)n + 1, 4),
                        *slot = (int32_t *)calloc((size_t)(n * k) + 1, 4);
                for (int64_t i = 0; i < n; i++) tok[i] = (int32_t)(urand() * (double)T) % (int32_t)T;
                for (int64_t i = 0; i < n * k; i++) slot[i] = (int32_t)(urand() * 40.0) - 8;
                /* rows in reverse order: the destinations are per row */
                float *ref = hbuf((size_t)(n * S)), *got = hbuf((size_t)(n * S));
                float **hdst = (float **)calloc((size_t)n + 1, sizeof(float *));
                for (int64_t i = 0; i < n; i++) hdst[i] = ref + (n - 1 - i) * S;
                moe_kernels_cpu.pack_rows(hdst, x, ldx, w, ldw, tok, slot, n, H, k);
                float *dx = (float *)dtest_up(x, sizeof(float) * (size_t)(T * ldx));
                float *dw = (float *)dtest_up(w, sizeof(float) * (size_t)(T * ldw));
                int32_t *dt = (int32_t *)dtest_up(tok, 4 * (size_t)n);
                int32_t *ds = (int32_t *)dtest_up(slot, 4 * (size_t)(n * k));
                float *dd = (float *)dtest_alloc(sizeof(float) * (size_t)(n * S));
                dtest_poison(dd, sizeof(float) * (size_t)(n * S));
                for (int64_t i = 0; i < n; i++) hdst[i] = dd + (n - 1 - i) * S;
                float **ddst = (float **)dtest_up(hdst, sizeof(float *) * (size_t)n);
                moe_kernels_cuda.pack_rows(ddst, dx, ldx, dw, ldw, dt, ds, n, H, k);
                EXPECT(kstat() == DPEP_OK, "pack_rows H %d k %d n %lld: no error", H, k,
                       (long long)n);
                dtest_down(got, dd, sizeof(float) * (size_t)(n * S));
                const long bp = n ? (long)(memcmp(got, ref, sizeof(float) * (size_t)(n * S)) != 0) : 0;
                bad_pack += bp;
                EXPECT(!bp, "pack_rows H %d k %d n %lld: rows differ from the CPU's", H, k,
                       (long long)n);
                /* sum_rows: U tokens, up to D rows each out of R */
                const int D = k < 4 ? k : 4;
                const int64_t U = n, R = n * D + 1;
                float *src = hbuf((size_t)(R * H));
                fill(src, (size_t)(R * H), -3, 3);
                int32_t *cnt = (int32_t *)calloc((size_t)U + 1, 4),
                        *rows = (int32_t *)calloc((size_t)(U * D) + 1, 4);
                for (int64_t t = 0; t < U; t++) {
                    cnt[t] = t == 0 ? 0 : (int32_t)(urand() * (D + 1)) % (D + 1);
                    for (int j = 0; j < D; j++) rows[t * D + j] = (int32_t)(urand() * (double)R) % (int32_t)R;
                }
                const float **hsrc = (const float **)calloc((size_t)(U * D) + 1, sizeof(float *));
                for (int64_t i = 0; i < U * D; i++) hsrc[i] = src + (int64_t)rows[i] * H;
                float *sref = hbuf((size_t)(U * H)), *sgot = hbuf((size_t)(U * H));
                moe_kernels_cpu.sum_rows(sref, hsrc, cnt, U, H, D);
                float *dsrc = (float *)dtest_up(src, sizeof(float) * (size_t)(R * H));
                for (int64_t i = 0; i < U * D; i++) hsrc[i] = dsrc + (int64_t)rows[i] * H;
                int32_t *dcnt = (int32_t *)dtest_up(cnt, 4 * (size_t)U);
                const float **dptr = (const float **)dtest_up(hsrc, sizeof(float *) * (size_t)(U * D));
                float *dacc = (float *)dtest_alloc(sizeof(float) * (size_t)(U * H));
                dtest_poison(dacc, sizeof(float) * (size_t)(U * H));
                moe_kernels_cuda.sum_rows(dacc, dptr, dcnt, U, H, D);
                EXPECT(kstat() == DPEP_OK, "sum_rows H %d D %d U %lld: no error", H, D,
                       (long long)U);
                dtest_down(sgot, dacc, sizeof(float) * (size_t)(U * H));
                const long bs = U ? (long)(memcmp(sgot, sref, sizeof(float) * (size_t)(U * H)) != 0) : 0;
                bad_sum += bs;
                EXPECT(!bs, "sum_rows H %d D %d U %lld: sums differ from the CPU's (order or "
                       "contraction)", H, D, (long long)U);
                dtest_free_all();
                free(x), free(w), free(tok), free(slot), free(ref), free(got), free(hdst);
                free(src), free(cnt), free(rows), free(sref), free(sgot), free(hsrc);
                cases++;
            }
    /* put_i64: values to scattered addresses */
    {
        int64_t vals[5] = {7, -1, 0, 1LL << 40, 3}, got5[5 * 3];
        int64_t *dv = (int64_t *)dtest_up(vals, sizeof vals);
        int64_t *dslots = (int64_t *)dtest_alloc(sizeof got5);
        dtest_poison(dslots, sizeof got5);
        int64_t *hp[5];
        for (int i = 0; i < 5; i++) hp[i] = dslots + 3 * (4 - i);
        int64_t **dp = (int64_t **)dtest_up(hp, sizeof hp);
        moe_kernels_cuda.put_i64(dp, dv, 5);
        EXPECT(kstat() == DPEP_OK, "put_i64: no error");
        dtest_down(got5, dslots, sizeof got5);
        int ok = 1;
        for (int i = 0; i < 5; i++) ok &= got5[3 * (4 - i)] == vals[i] && got5[3 * (4 - i) + 1] == -1;
        EXPECT(ok, "put_i64: each value at its address, neighbours untouched");
        dtest_free_all();
    }
    /* remap_slots: 3 blocks of 5 rows, 5 / 2 / 0 of them real; identity:
     * a run read through a token index, ids -1 mixed in */
    {
        const int ep = 3, H = 7, k = 3, E = 12;
        const int64_t Upad = 5, S = H + 2 * k, n = ep * Upad;
        float *rows = hbuf((size_t)(n * S)), *ref = hbuf((size_t)(n * S)), *got = hbuf((size_t)(n * S));
        fill(rows, (size_t)(n * S), -1, 1);
        for (int64_t i = 0; i < n; i++)
            for (int j = 0; j < k; j++) ((int32_t *)(rows + i * S + H))[j] = (int32_t)(urand() * E) % E;
        int64_t nv[3] = {5, 2, 0};
        int32_t map[12];
        for (int e = 0; e < E; e++) map[e] = e % 3 == 1 ? e / 3 : -1;
        memcpy(ref, rows, sizeof(float) * (size_t)(n * S));
        moe_kernels_cpu.remap_slots(ref, ep, Upad, nv, map, H, k);
        float *drows = (float *)dtest_up(rows, sizeof(float) * (size_t)(n * S));
        int64_t *dnv = (int64_t *)dtest_up(nv, sizeof nv);
        int32_t *dmap = (int32_t *)dtest_up(map, sizeof map);
        moe_kernels_cuda.remap_slots(drows, ep, Upad, dnv, dmap, H, k);
        EXPECT(kstat() == DPEP_OK, "remap_slots: no error");
        dtest_down(got, drows, sizeof(float) * (size_t)(n * S));
        EXPECT(memcmp(got, ref, sizeof(float) * (size_t)(n * S)) == 0,
               "remap_slots: rows identical to the CPU's (ids remapped, padding -1)");
        /* identity over the remapped rows as one run, tokens reversed */
        int32_t tok[15];
        for (int64_t i = 0; i < n; i++) tok[i] = (int32_t)(n - 1 - i);
        float *pref = hbuf((size_t)(n * H)), *pgot = hbuf((size_t)(n * H));
        moe_rows q = {.x = ref, .tok = tok, .ldx = S, .slot = (const int32_t *)(ref + H),
                      .ld_slot = S, .w = ref + H + k, .ld_w = S, .part = pref, .n = n};
        moe_kernels_cpu.identity(&q, 1, H, k);
        int32_t *dtok = (int32_t *)dtest_up(tok, sizeof tok);
        float *dpart = (float *)dtest_alloc(sizeof(float) * (size_t)(n * H));
        dtest_poison(dpart, sizeof(float) * (size_t)(n * H));
        moe_rows dq = {.x = drows, .tok = dtok, .ldx = S, .slot = (const int32_t *)(drows + H),
                       .ld_slot = S, .w = drows + H + k, .ld_w = S, .part = dpart, .n = n};
        moe_kernels_cuda.identity(&dq, 1, H, k);
        EXPECT(kstat() == DPEP_OK, "identity: no error");
        dtest_down(pgot, dpart, sizeof(float) * (size_t)(n * H));
        EXPECT(memcmp(pgot, pref, sizeof(float) * (size_t)(n * H)) == 0,
               "identity: partial sums identical to the CPU's");
        dtest_free_all();
        free(rows), free(ref), free(got), free(pref), free(pgot);
    }
    printf("ok   pack_rows / sum_rows: %d cases, bit-identical to the CPU (%ld / %ld differ); "
           "put_i64, remap_slots, identity\n", cases, bad_pack, bad_sum);
}

/* ------------------------------------------------------------------------ */
/* Host-side: refusals that need no GPU                                      */
/* ------------------------------------------------------------------------ */
static void base_cfg(dpep_moe_config *c, dpep_comm *ep)
{
    memset(c, 0, sizeof *c);
    c->hidden = 16;
    c->gate = (dpep_moe_gate_cfg){.n_experts = 8, .topk = 2, .n_group = 1, .topk_group = 1,
                                  .scoring = DPEP_SCORE_SIGMOID, .method = DPEP_TOPK_NOAUX_TC,
                                  .routed_scaling_factor = 1.0f};
    c->moe_inter = 8;
    c->max_tokens = 4;
    c->ep = ep;
    c->device = &g_tdev;
}

static void test_refusals(dpep_comm *ep)
{
    dpep_moe_config c;
    dpep_moe *m = NULL;
    dpep_diag d;
    base_cfg(&c, ep);
    c.backend = DPEP_A2A_ALLGATHER;
    dpep_diag_init(&d);
    /* one EP rank: the device-local transport, whatever the backend (the
     * layout is not refused; without a GPU the device is) */
    dpep_status st = dpep_moe_create(&c, &m, &d);
    EXPECT((st == DPEP_OK || st == DPEP_ERR_UNSUPPORTED) && !dpep_diag_find(&d, "moe_a2a_backend"),
           "cuda + allgather on one EP rank: not refused for the layout (%s)",
           dpep_status_string(st));
    if (m) EXPECT(strcmp(dpep_moe_transport_name(m), "device") == 0, "one EP rank: device transport");
    dpep_moe_free(m);
    m = NULL;
    base_cfg(&c, ep);
    int rank[8], slot[8];
    for (int e = 0; e < 8; e++) rank[e] = 0, slot[e] = 7 - e;
    dpep_moe_placement pl;
    EXPECT(dpep_moe_placement_from_table(8, 1, rank, slot, &pl, NULL) == DPEP_OK, "placement");
    c.placement = &pl;
    dpep_diag_init(&d);
    EXPECT(dpep_moe_create(&c, &m, &d) == DPEP_ERR_UNSUPPORTED && !m &&
               dpep_diag_find(&d, "placement"),
           "cuda + permuted slots refused, naming the placement");
    dpep_moe_placement_free(&pl);
}

#endif /* DPEP_HAVE_CUDA */

int main(int argc, char **argv)
{
    (void)argc, (void)argv;
    dpep_log_init();
#ifndef DPEP_HAVE_CUDA
    printf("SKIP: this build has no CUDA\n");
    return 77;
#else
    MPI_Init(&argc, &argv);
    dpep_comm *ep = NULL;
    if (dpep_comm_create(MPI_COMM_SELF, "ep", DPEP_COMM_MPI, 60, &ep) != DPEP_OK) {
        printf("FAIL cannot make the EP comm\n");
        return 1;
    }
    EXPECT(dpep_device_get(DPEP_DEVICE_CUDA, 0, &g_tdev) == DPEP_OK, "cuda device 0 in a CUDA build");
    EXPECT(moe_kernels_cuda.device_only && !moe_kernels_cpu.device_only, "device_only flags");
    test_refusals(ep);
    /* a valid config: refused only when there is no usable GPU */
    dpep_moe_config c;
    base_cfg(&c, ep);
    dpep_moe *m = NULL;
    dpep_status st = dpep_moe_create(&c, &m, NULL);
    if (st == DPEP_ERR_UNSUPPORTED) {
        EXPECT(!m, "no GPU: nothing returned");
        printf("host-side checks: %d passed, %d failed\n", g_pass, g_fail);
        dpep_comm_destroy(ep);
        MPI_Finalize();
        if (g_fail) return 1;
        printf("SKIP: no usable CUDA device (the MoE create refuses cuda:0)\n");
        return 77;
    }
    EXPECT(st == DPEP_OK && m, "create on cuda:0");
    dpep_moe_free(m);
    test_router();
    test_pack_sum();
    test_gate();
    test_mlp();
    for (int grouped = 0; grouped < 2; grouped++) {
        set_grouped(grouped);
        test_experts();
        test_layer(ep, true, 2);
        test_layer(ep, true, 0);
        test_layer(ep, false, 0);
        test_layer(ep, false, 1);
    }
    set_grouped(0);
    /* BF16 and F16 experts, shared experts and dense FFN (the router stays
     * float32): the per-slot products on 16-bit inputs, and the grouped
     * tiles widening the 16-bit weights */
    static const dpep_wtype w16[3] = {DPEP_WT_BF16, DPEP_WT_F16, DPEP_WT_FP8};
    for (int i = 0; i < 3; i++) {
        g_wt = w16[i];
        test_mlp();
        for (int grouped = 0; grouped < 3; grouped++) {
            set_grouped(grouped);
            const int64_t tc0 = moe_cuda_grouped_tc_count();
            test_experts();
            const int64_t tc = moe_cuda_grouped_tc_count() - tc0;
            EXPECT(grouped == 1 ? tc > 0 : tc == 0, "experts %s (%s): %lld GEMMs on the tensor-core tiles",
                   dpep_wtype_name(g_wt), grouped_name(), (long long)tc);
        }
        set_grouped(0);
        test_layer(ep, true, 2);
        test_layer(ep, false, 1);
    }
    g_wt = DPEP_WT_F32;
    dpep_comm_destroy(ep);
    MPI_Finalize();
    return dpep_test_summary();
#endif
}
