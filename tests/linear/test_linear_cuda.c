/* test_linear_cuda.c — op test of runtime/linear's CUDA entries
 * (linear_cuda.cu) against the CPU's (linear.c), in the style of ggml's
 * test-backend-ops: the same random inputs on both (never zeros), device
 * outputs poisoned with 0xFF bytes (NaN) before each run, normalized error
 * ||gpu - cpu|| / ||cpu|| per product, and the CPU's own error against a
 * double-precision sum printed beside it.
 *
 * Thresholds (documented in runtime/linear/README.md): float32 weights 1e-5
 * (cuBLAS SGEMM in pedantic math against OpenBLAS / the CPU kernels: only
 * the order of the sums differs); BF16 and F16 weights 1e-2 (the device
 * rounds the input rows to the weight's type, the CPU keeps them float32;
 * the figures measured are printed: about 2^-9 for BF16, 2^-12 for F16).
 *
 * Cases, for each weight type: nt and nn products at M = 1, 2, 3, 7, 64,
 * 300 rows, odd N and K (1, 7, 33, 129, 257, 1000, 4096), rows of X and Y
 * further apart than their widths (strided views), beta 0 and 1, a matrix
 * that is a view of some columns of a wider one (ld > cols), empty products
 * (M = 0, N = 0: the output untouched); batched products with MLA's
 * per-head strides (X rows holding every head, W a run of rows of one
 * tensor per head, nn and nt); the same products with the workspace capped
 * at a few rows (so they run in chunks: the same results within the type's
 * tolerance); the row gather from float32, BF16 and F16 tables (views
 * included) bit for bit equal to the CPU's widening, an out-of-range id
 * giving a row of NaN; bad arguments (a NULL matrix) refused with
 * DPEP_ERR_INTERNAL. FP8 (E4M3 with 128 x 128 block scales, dequantized
 * per product): nt and nn with partial blocks, the first product run in
 * chunks of 64 rows of W, a view of rows starting inside a block, MLA's
 * per-head products over one FP8 kv_b; against the CPU product on the
 * float32 values (the loader's: fp8 x scale), tolerance 1e-2; a matrix
 * without its scales refused.
 *
 * Without a GPU (or in a build without CUDA) it prints "SKIP: why" and
 * exits 77. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpep_linear.h"
#include "../dpep_test.h"
#include "../dpep_test_device.h"

#ifdef DPEP_HAVE_CUDA
static uint64_t g_rng = 0x11ea5;
static void fill(float *p, size_t n, double lo, double hi) { dpep_test_fill(&g_rng, p, n, lo, hi); }

/* ||a - b|| / ||b|| over rows x cols of two row-major arrays (ld apart). */
static double nerr2(const float *a, const float *b, int rows, int cols, int64_t ld)
{
    double d = 0, r = 0;
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            const double x = a[i * ld + j], y = b[i * ld + j];
            d += (x - y) * (x - y);
            r += y * y;
        }
    if (rows == 0 || cols == 0) return 0.0;
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

/* A weight of rows x cols (ld >= cols) of type t with random values in
 * [-1, 1]: host storage (the CPU's matrix) and a device copy. */
typedef struct tmat {
    dpep_mat h, d;
    void *host;
} tmat;
static tmat make_mat(dpep_wtype t, int rows, int cols, int64_t ld)
{
    tmat m;
    const size_t n = (size_t)rows * (size_t)ld, es = dpep_wtype_size(t);
    float *f = malloc(sizeof(float) * (n ? n : 1));
    fill(f, n, -1, 1);
    m.host = malloc(es * (n ? n : 1));
    for (size_t i = 0; i < n; i++) {
        if (t == DPEP_WT_F32) ((float *)m.host)[i] = f[i];
        else if (t == DPEP_WT_BF16) ((uint16_t *)m.host)[i] = dpep_f32_to_bf16(f[i]);
        else ((uint16_t *)m.host)[i] = dpep_f32_to_f16(f[i]);
    }
    free(f);
    m.h = dpep_mat_make(m.host, t, rows, cols);
    m.h.ld = ld;
    m.d = m.h;
    m.d.p = dtest_up(m.host, es * n);
    return m;
}
static void free_mat(tmat *m)
{
    dtest_free(m->d.p);
    free(m->host);
}

static double tol_of(dpep_wtype t) { return t == DPEP_WT_F32 ? 1e-5 : 1e-2; }
static double g_worst[DPEP_WT_COUNT];

/* One product (nt or nn), M rows, the GPU against the CPU. */
static void one_product(dpep_wtype t, bool nt, int M, int N, int K, int xpad, int ypad, float beta,
                        int wpad)
{
    const int64_t ldx = K + xpad, ldy = N + ypad;
    const int wr = nt ? N : K, wc = nt ? K : N;
    tmat w = make_mat(t, wr, wc, wc + wpad);
    const size_t nx = (size_t)M * ldx, ny = (size_t)M * ldy;
    float *x = malloc(sizeof(float) * (nx + 1)), *y0 = malloc(sizeof(float) * (ny + 1));
    float *yc = malloc(sizeof(float) * (ny + 1)), *yg = malloc(sizeof(float) * (ny + 1));
    double *yd = malloc(sizeof(double) * (ny + 1));
    fill(x, nx, -1, 1);
    fill(y0, ny, -1, 1);
    memcpy(yc, y0, sizeof(float) * ny);
    /* the double reference from the widened weights */
    float *wf = malloc(sizeof(float) * ((size_t)wr * wc + 1));
    for (int r = 0; r < wr; r++)
        dpep_linear_widen(dpep_mat_at(w.h, r, 0), t, wc, wf + (size_t)r * wc);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = beta ? (double)y0[m * ldy + n] : 0.0;
            for (int k = 0; k < K; k++)
                s += (double)x[m * ldx + k] * (nt ? wf[(size_t)n * K + k] : wf[(size_t)k * N + n]);
            yd[m * ldy + n] = s;
        }
    if (nt) dpep_linear_nt(M, x, ldx, &w.h, beta, yc, ldy);
    else dpep_linear_nn(M, x, ldx, &w.h, beta, yc, ldy);
    float *dx = dtest_up(x, sizeof(float) * nx), *dy = dtest_up(NULL, sizeof(float) * ny);
    if (beta) g_tdev.ops->to_device(&g_tdev, dy, y0, sizeof(float) * ny);
    else dtest_poison(dy, sizeof(float) * ny);
    dpep_status st = nt ? dpep_linear_cuda_nt(M, dx, ldx, &w.d, beta, dy, ldy)
                        : dpep_linear_cuda_nn(M, dx, ldx, &w.d, beta, dy, ldy);
    dtest_down(yg, dy, sizeof(float) * ny);
    float *ydf = malloc(sizeof(float) * (ny + 1));
    for (size_t i = 0; i < ny; i++) ydf[i] = (float)yd[i];
    const double e = nerr2(yg, yc, M, N, ldy), ec = nerr2(yc, ydf, M, N, ldy);
    if (e > g_worst[t]) g_worst[t] = e;
    EXPECT(st == DPEP_OK && e <= tol_of(t),
           "%s %s M %d N %d K %d ldx %lld ldy %lld ld %lld beta %g: err %.2e (tol %.0e; cpu vs "
           "double %.2e)",
           dpep_wtype_name(t), nt ? "nt" : "nn", M, N, K, (long long)ldx, (long long)ldy,
           (long long)w.h.ld, beta, e, tol_of(t), ec);
    /* the padding between rows of Y: untouched */
    if (ypad && M > 0) {
        bool kept = true;
        for (int m = 0; m < M && kept; m++)
            for (int j = N; j < ldy; j++) {
                const float v = yg[m * ldy + j];
                if (beta ? v != y0[m * ldy + j] : !isnan(v)) kept = false;
            }
        EXPECT(kept, "%s %s M %d N %d: Y's padding untouched", dpep_wtype_name(t), nt ? "nt" : "nn",
               M, N);
    }
    dtest_free(dx);
    dtest_free(dy);
    free_mat(&w);
    free(x), free(y0), free(yc), free(yg), free(yd), free(wf), free(ydf);
}

static void test_products(dpep_wtype t)
{
    static const int shapes[][3] = {{1, 1, 1},    {1, 7, 33},   {2, 129, 65},  {3, 257, 7},
                                    {7, 1000, 257}, {64, 33, 129}, {300, 96, 200}, {5, 64, 4096}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int nt = 0; nt < 2; nt++) {
            const int *s = shapes[i];
            one_product(t, nt, s[0], s[1], s[2], 0, 0, 0.0f, 0);
            one_product(t, nt, s[0], s[1], s[2], 3, 5, 1.0f, 0);
            one_product(t, nt, s[0], s[1], s[2], 1, 0, 0.0f, 9);
        }
    /* empty products: nothing written */
    for (int nt = 0; nt < 2; nt++) {
        tmat w = make_mat(t, 5, 5, 5);
        float *dy = dtest_up(NULL, sizeof(float) * 25), *dx = dtest_up(NULL, sizeof(float) * 25);
        float y[25];
        dtest_poison(dy, sizeof y);
        dpep_status a = nt ? dpep_linear_cuda_nt(0, dx, 5, &w.d, 0.0f, dy, 5)
                           : dpep_linear_cuda_nn(0, dx, 5, &w.d, 0.0f, dy, 5);
        dpep_mat none = w.d;
        none.rows = none.cols = 0;
        dpep_status b = nt ? dpep_linear_cuda_nt(5, dx, 5, &none, 0.0f, dy, 5)
                           : dpep_linear_cuda_nn(5, dx, 5, &none, 0.0f, dy, 5);
        dtest_down(y, dy, sizeof y);
        bool all_nan = true;
        for (int i = 0; i < 25; i++) all_nan = all_nan && isnan(y[i]);
        EXPECT(a == DPEP_OK && b == DPEP_OK && all_nan, "%s %s: M 0 and N 0 write nothing",
               dpep_wtype_name(t), nt ? "nt" : "nn");
        dpep_mat null = w.d;
        null.p = NULL;
        dpep_status c = dpep_linear_cuda_nt(2, dx, 5, &null, 0.0f, dy, 5);
        EXPECT(c == DPEP_ERR_INTERNAL, "%s: a NULL matrix refused (%s)", dpep_wtype_name(t),
               dpep_status_string(c));
        dtest_free(dy);
        dtest_free(dx);
        free_mat(&w);
    }
}

/* MLA's absorbed products over one kv_b of H heads (bw = nope + v rows
 * each): X (T, H, xw) per head against the head's W view — wh on the host
 * (a view of the CPU's matrix, stepped by wstep elements), wd on the device
 * — the CPU product per head against dpep_linear_cuda_batched; the error
 * goes to g_worst[slot], checked against tol. */
static void check_batched(bool nt, int H, int T, int N, int xw, const dpep_mat *wh,
                          const dpep_mat *wd, int64_t wstep, int slot, double tol, const char *what)
{
    const int64_t ldx = (int64_t)H * xw, ldy = (int64_t)H * N;
    const size_t nx = (size_t)T * ldx, ny = (size_t)T * ldy;
    float *x = malloc(sizeof(float) * (nx + 1)), *yc = malloc(sizeof(float) * (ny + 1)),
          *yg = malloc(sizeof(float) * (ny + 1));
    fill(x, nx, -1, 1);
    for (int h = 0; h < H; h++) {
        dpep_mat w1 = *wh;
        w1.p = (char *)wh->p + (size_t)h * wstep * dpep_wtype_size(wh->t);
        if (nt) dpep_linear_nt(T, x + (size_t)h * xw, ldx, &w1, 0.0f, yc + (size_t)h * N, ldy);
        else dpep_linear_nn(T, x + (size_t)h * xw, ldx, &w1, 0.0f, yc + (size_t)h * N, ldy);
    }
    float *dx = dtest_up(x, sizeof(float) * nx), *dy = dtest_up(NULL, sizeof(float) * ny);
    dtest_poison(dy, sizeof(float) * ny);
    dpep_status st = dpep_linear_cuda_batched(nt, H, T, dx, ldx, xw, wd, wstep, 0.0f, dy, ldy, N);
    dtest_down(yg, dy, sizeof(float) * ny);
    const double e = nerr2(yg, yc, T, (int)ldy, ldy);
    if (e > g_worst[slot]) g_worst[slot] = e;
    EXPECT(st == DPEP_OK && e <= tol, "%s batched %s H %d T %d: err %.2e", what, nt ? "nt" : "nn", H,
           T, e);
    dtest_free(dx);
    dtest_free(dy);
    free(x), free(yc), free(yg);
}

/* MLA's absorbed products: H heads, X (T, H, qk) read K = nope or L of each
 * head, W one tensor kv_b [H * bw, L] of which each head takes a run of rows. */
static void one_batched(dpep_wtype t, bool nt, int H, int T, int nope, int v, int L, int qk)
{
    const int bw = nope + v;
    tmat kvb = make_mat(t, H * bw, L, L);
    /* nn: Y_h[T, L] = X_h[T, nope] W_UK_h (rows [h bw, h bw + nope)), X = q (T, H, qk)
     * nt: Y_h[T, v] = X_h[T, L] W_UV_h^T (rows [h bw + nope, (h+1) bw)), X = o~ (T, H, L) */
    const dpep_mat wh = dpep_mat_rows(kvb.h, nt ? nope : 0, nt ? v : nope);
    const dpep_mat wd = dpep_mat_rows(kvb.d, nt ? nope : 0, nt ? v : nope);
    char what[96];
    snprintf(what, sizeof what, "%s nope %d v %d L %d", dpep_wtype_name(t), nope, v, L);
    check_batched(nt, H, T, nt ? v : L, nt ? L : qk, &wh, &wd, (int64_t)bw * L, t, tol_of(t), what);
    free_mat(&kvb);
}

static void test_batched(dpep_wtype t)
{
    for (int nt = 0; nt < 2; nt++) {
        one_batched(t, nt, 1, 1, 16, 16, 32, 24);
        one_batched(t, nt, 3, 5, 16, 8, 40, 24);
        one_batched(t, nt, 16, 33, 128, 128, 512, 192); /* V3's dims, attention-TP 8 */
        one_batched(t, nt, 7, 130, 32, 48, 64, 48);
    }
}

/* ---- FP8 (E4M3, 128 x 128 block scales), kept as stored on the GPU ---- */
/* rows x cols FP8 (ld cols) with scales, and their float32 values (the
 * CPU loader's: fp8 x scale in float) as a host F32 matrix. */
typedef struct f8mat {
    dpep_mat d, h32;
    unsigned char *w8;
    float *sc, *f;
    int64_t srows, scols;
} f8mat;
static double g_worst_fp8_paths;
static f8mat make_fp8(int rows, int cols)
{
    f8mat m;
    m.srows = (rows + 127) / 128;
    m.scols = (cols + 127) / 128;
    const size_t n = (size_t)rows * (size_t)cols;
    m.w8 = malloc(n ? n : 1);
    m.sc = malloc(sizeof(float) * (size_t)(m.srows * m.scols));
    m.f = malloc(sizeof(float) * (n ? n : 1));
    dpep_test_fp8_matrix(&g_rng, rows, cols, 0.002, 0.012, m.w8, m.sc, m.f);
    m.h32 = dpep_mat_make(m.f, DPEP_WT_F32, rows, cols);
    m.d = dpep_mat_make(dtest_up(m.w8, n), DPEP_WT_FP8, rows, cols);
    m.d.scale = dtest_up(m.sc, sizeof(float) * (size_t)(m.srows * m.scols));
    m.d.sld = m.scols;
    return m;
}
static void free_fp8(f8mat *m)
{
    dtest_free(m->d.p);
    dtest_free((void *)m->d.scale);
    free(m->w8), free(m->sc), free(m->f);
}

/* Y = X W^T / X W (+ beta Y) with an FP8 W (and a view of its rows from
 * r0), against the CPU product on the float32 values. */
static void one_fp8(bool nt, int M, int rows, int cols, int r0, int nrows, float beta)
{
    f8mat w = make_fp8(rows, cols);
    const dpep_mat vd = dpep_mat_rows(w.d, r0, nrows), vh = dpep_mat_rows(w.h32, r0, nrows);
    const int N = nt ? nrows : cols, K = nt ? cols : nrows;
    const size_t nx = (size_t)M * K, ny = (size_t)M * N;
    float *x = malloc(sizeof(float) * (nx + 1)), *yc = malloc(sizeof(float) * (ny + 1)),
          *yg = malloc(sizeof(float) * (ny + 1));
    fill(x, nx, -1, 1);
    fill(yc, ny, -1, 1); /* the beta base */
    float *dx = dtest_up(x, sizeof(float) * nx), *dy = dtest_up(NULL, sizeof(float) * ny);
    if (beta != 0.0f) g_tdev.ops->to_device(&g_tdev, dy, yc, sizeof(float) * ny);
    else dtest_poison(dy, sizeof(float) * ny);
    if (nt) dpep_linear_nt(M, x, K, &vh, beta, yc, N);
    else dpep_linear_nn(M, x, K, &vh, beta, yc, N);
    dpep_status st = nt ? dpep_linear_cuda_nt(M, dx, K, &vd, beta, dy, N)
                        : dpep_linear_cuda_nn(M, dx, K, &vd, beta, dy, N);
    dtest_down(yg, dy, sizeof(float) * ny);
    const double e = nerr2(yg, yc, M, N, N);
    if (e > g_worst[DPEP_WT_FP8]) g_worst[DPEP_WT_FP8] = e;
    EXPECT(st == DPEP_OK && e <= 1e-2,
           "fp8 %s M %d W [%d, %d] rows [%d, +%d) (sr0 %d) beta %g: err %.2e", nt ? "nt" : "nn", M,
           rows, cols, r0, nrows, vd.sr0, beta, e);
    dtest_free(dx);
    dtest_free(dy);
    free_fp8(&w);
    free(x), free(yc), free(yg);
}

/* An nt product of up to 64 rows both ways: the direct FP8 kernel (the
 * default there) and dequantize-then-cuBLAS (dpep_linear_cuda_test_fp8_path
 * 1). Each against the CPU at 1e-2; with each other at 1e-5 (the same BF16
 * operands, only the order of the sums differs — split-K's too). */
static void fp8_paths(int M, int rows, int cols, int r0, int nrows, float beta)
{
    f8mat w = make_fp8(rows, cols);
    const dpep_mat vd = dpep_mat_rows(w.d, r0, nrows), vh = dpep_mat_rows(w.h32, r0, nrows);
    const int N = nrows, K = cols;
    const size_t nx = (size_t)M * K, ny = (size_t)M * N;
    float *x = malloc(sizeof(float) * (nx + 1)), *y0 = malloc(sizeof(float) * (ny + 1)),
          *yc = malloc(sizeof(float) * (ny + 1)), *yd = malloc(sizeof(float) * (ny + 1)),
          *yq = malloc(sizeof(float) * (ny + 1));
    fill(x, nx, -1, 1);
    fill(y0, ny, -1, 1);
    memcpy(yc, y0, sizeof(float) * ny);
    dpep_linear_nt(M, x, K, &vh, beta, yc, N);
    float *dx = dtest_up(x, sizeof(float) * nx), *dy = dtest_up(NULL, sizeof(float) * ny);
    dpep_status st[2];
    for (int mode = 0; mode < 2; mode++) {
        dpep_linear_cuda_test_fp8_path(mode ? 1 : 2); /* direct (or an error), then dequantized */
        if (beta != 0.0f) g_tdev.ops->to_device(&g_tdev, dy, y0, sizeof(float) * ny);
        else dtest_poison(dy, sizeof(float) * ny);
        st[mode] = dpep_linear_cuda_nt(M, dx, K, &vd, beta, dy, N);
        dtest_down(mode ? yq : yd, dy, sizeof(float) * ny);
    }
    dpep_linear_cuda_test_fp8_path(0);
    const double ed = nerr2(yd, yc, M, N, N), eq = nerr2(yq, yc, M, N, N), e2 = nerr2(yd, yq, M, N, N);
    if (ed > g_worst[DPEP_WT_FP8]) g_worst[DPEP_WT_FP8] = ed;
    if (e2 > g_worst_fp8_paths) g_worst_fp8_paths = e2;
    EXPECT(st[0] == DPEP_OK && st[1] == DPEP_OK && ed <= 1e-2 && eq <= 1e-2 && e2 <= 1e-5,
           "fp8 nt M %d W [%d, %d] rows [%d, +%d) (sr0 %d) beta %g: direct %.2e, dequantized %.2e "
           "vs the CPU; direct vs dequantized %.2e (tol 1e-5)",
           M, rows, cols, r0, nrows, vd.sr0, beta, ed, eq, e2);
    dtest_free(dx);
    dtest_free(dy);
    free_fp8(&w);
    free(x), free(y0), free(yc), free(yd), free(yq);
}

/* MLA's per-head products over an FP8 kv_b (H heads of nope + v rows). */
static void one_fp8_batched(bool nt, int H, int T, int nope, int v, int L, int qk)
{
    const int bw = nope + v;
    f8mat kvb = make_fp8(H * bw, L);
    const dpep_mat wd = dpep_mat_rows(kvb.d, nt ? nope : 0, nt ? v : nope);
    const dpep_mat wh = dpep_mat_rows(kvb.h32, nt ? nope : 0, nt ? v : nope);
    char what[96];
    snprintf(what, sizeof what, "fp8 nope %d v %d L %d (sr0 %d)", nope, v, L, wd.sr0);
    check_batched(nt, H, T, nt ? v : L, nt ? L : qk, &wh, &wd, (int64_t)bw * L, DPEP_WT_FP8, 1e-2, what);
    free_fp8(&kvb);
}

static void test_fp8(void)
{
    g_worst[DPEP_WT_FP8] = 0;
    for (int nt = 0; nt < 2; nt++) {
        /* (the first FP8 product makes a buffer of 64 rows of its W: the
         * later, wider ones run in chunks of rows) */
        one_fp8(nt, 1, 100, 70, 0, 100, 0.0f);    /* one partial block */
        one_fp8(nt, 3, 300, 257, 0, 300, 0.0f);   /* partial blocks, chunks */
        one_fp8(nt, 17, 1024, 512, 0, 1024, 1.0f); /* beta 1 */
        one_fp8(nt, 5, 520, 384, 200, 256, 0.0f); /* a view from row 200: sr0 72 */
        one_fp8_batched(nt, 3, 5, 128, 128, 512, 192);
        one_fp8_batched(nt, 16, 9, 128, 128, 512, 192); /* V3's widths, attention-TP 8 */
        one_fp8_batched(nt, 5, 3, 64, 96, 256, 96);     /* heads of 160 rows: views inside blocks */
    }
    /* products of up to 64 rows (decode): the direct kernel against the
     * dequantizing path — 1, 16, 17, 33 and 64 rows, partial weight-row
     * blocks, a view from a row inside a block, beta 1, and split-K (one
     * weight-row block, 8192 columns: its partials need the dequantization
     * buffer, reserved here as the engine does when the weights hold FP8) */
    EXPECT(dpep_linear_cuda_reserve_fp8((int64_t)1 << 22) == DPEP_OK, "fp8 buffer reserved");
    fp8_paths(1, 128, 512, 0, 128, 0.0f);
    fp8_paths(16, 300, 256, 0, 300, 1.0f);
    fp8_paths(17, 520, 384, 200, 256, 0.0f); /* sr0 72 */
    fp8_paths(33, 130, 128, 0, 130, 0.0f);
    fp8_paths(64, 256, 640, 64, 192, 1.0f);
    fp8_paths(1, 200, 8192, 0, 200, 0.0f);   /* split-K */
    fp8_paths(5, 96, 4096, 17, 70, 1.0f);    /* split-K, a view, beta 1 */
    printf("ok   fp8  direct kernel (up to 64 rows) vs dequantized: worst normalized difference %.2e "
           "(tolerance 1e-05)\n", g_worst_fp8_paths);
    /* a matrix without its scales: refused */
    f8mat w = make_fp8(8, 8);
    dpep_mat bad = w.d;
    bad.scale = NULL;
    float *dx = dtest_up(NULL, sizeof(float) * 8), *dy = dtest_up(NULL, sizeof(float) * 8);
    EXPECT(dpep_linear_cuda_nt(1, dx, 8, &bad, 0.0f, dy, 8) == DPEP_ERR_INTERNAL,
           "fp8 without scales refused");
    dtest_free(dx);
    dtest_free(dy);
    free_fp8(&w);
    printf("ok   fp8  (direct to 64 rows, dequantized beyond): worst normalized error against the CPU %.2e "
           "(tolerance 1e-02)\n", g_worst[DPEP_WT_FP8]);
}

static void test_gather(dpep_wtype t)
{
    const int V = 301, Hd = 77, ld = 90;
    tmat tab = make_mat(t, V, Hd, ld);
    int32_t ids[6] = {0, 300, 5, 5, 150, 1};
    const int n = 6;
    float ref[6 * 77], got[6 * 77];
    dpep_linear_gather(&tab.h, ids, n, ref);
    int32_t *did = dtest_up(ids, sizeof ids);
    float *dout = dtest_up(NULL, sizeof got);
    dtest_poison(dout, sizeof got);
    dpep_status st = dpep_linear_cuda_gather(&tab.d, did, n, dout);
    dtest_down(got, dout, sizeof got);
    EXPECT(st == DPEP_OK && memcmp(got, ref, sizeof ref) == 0,
           "%s gather of 6 rows (ld %d > cols %d): bit-identical to the CPU's", dpep_wtype_name(t), ld,
           Hd);
    int32_t bad[2] = {3, V};
    float row3[77];
    dpep_linear_gather(&tab.h, bad, 1, row3);
    g_tdev.ops->to_device(&g_tdev, did, bad, sizeof bad);
    st = dpep_linear_cuda_gather(&tab.d, did, 2, dout);
    dtest_down(got, dout, sizeof(float) * 2 * Hd);
    bool nan_row = true;
    for (int j = 0; j < Hd; j++) nan_row = nan_row && isnan(got[Hd + j]);
    EXPECT(st == DPEP_OK && memcmp(got, row3, sizeof row3) == 0 && nan_row,
           "%s gather: id %d (out of range) gives a NaN row, id 3 its row", dpep_wtype_name(t), V);
    dtest_free(did);
    dtest_free(dout);
    free_mat(&tab);
}
#endif

int main(void)
{
    dpep_log_init();
#ifndef DPEP_HAVE_CUDA
    printf("SKIP: this build has no CUDA\n");
    return 77;
#else
    /* a usable GPU: cuda:0 exists in this build and gives memory */
    void *probe = NULL;
    if (dpep_device_get(DPEP_DEVICE_CUDA, 0, &g_tdev) != DPEP_OK ||
        dpep_device_alloc(&g_tdev, 64, &probe) != DPEP_OK) {
        printf("SKIP: no usable CUDA device (cuda:0 gives no memory)\n");
        return 77;
    }
    dpep_device_free(&g_tdev, probe);
    EXPECT(dpep_linear_reserve(4096, 4096, 1), "cpu scratch");
    EXPECT(dpep_linear_cuda_reserve(1 << 16) == DPEP_OK, "device workspace");
    static const dpep_wtype types[] = {DPEP_WT_F32, DPEP_WT_BF16, DPEP_WT_F16};
    for (int pass = 0; pass < 2; pass++) {
        /* pass 1: the workspace capped at 3 rows of the widest product, so
         * the 16-bit products run in chunks */
        dpep_linear_cuda_test_workspace(pass ? 3 * 4096 : -1);
        for (int i = 0; i < 3; i++) {
            g_worst[types[i]] = 0;
            test_products(types[i]);
            test_batched(types[i]);
            if (pass == 0) test_gather(types[i]);
            printf("ok   %-4s %s: worst normalized error against the CPU %.2e (tolerance %.0e)\n",
                   dpep_wtype_name(types[i]), pass ? "workspace of 3 rows" : "reserved workspace",
                   g_worst[types[i]], tol_of(types[i]));
        }
    }
    dpep_linear_cuda_test_workspace(-1);
    test_fp8();
    dtest_free_all();
    printf("linear cuda: %d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
#endif
}
