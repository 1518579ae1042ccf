/* test_linear.c — runtime/linear against a double-precision reference:
 * both forms (NT, NN), f32/bf16/f16 weights, every kernel table the CPU
 * runs, the small-M and BLAS paths (M on both sides of the crossover),
 * beta 0/1, views, awkward sizes, 1/2 threads, inside and outside an
 * OpenMP region; bitwise thread/batch invariance; the conversions
 * (round-to-nearest-even against a search over the target format), widen
 * and gather. Tolerance: ||out - ref|| / ||mag|| <= 1e-5 for every dtype,
 * mag[m, n] = |beta y0[m, n]| + sum_k |x[m, k] w(n, k)| (the scale f32
 * rounding errors of the sum are proportional to; it equals ||ref|| when
 * the terms do not cancel, and a sum that cancels by chance cannot fail the
 * test) — the weights are exact in f32 once widened, only the f32 sums
 * round. */
#include "../dpep_test.h"
#include "dpep_linear.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define TOL 1e-5

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd64(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}
/* uniform in [0.1, 1), negative one time in four: never zero, and with a
 * positive mean, so that sums do not cancel (the normalized error of a
 * sum that cancels to almost nothing measures the cancellation, not the
 * kernel) */
static float rndf(void)
{
    float u = (float)(rnd64() >> 40) / (float)(1 << 24);
    float v = 0.1f + 0.9f * u;
    return (rnd64() & 3) ? v : -v;
}

static void set_threads(int n)
{
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

/* ---------------------------------------------------------------------- */
/* weights: a [rows, ld] buffer of type t, values rndf() rounded to t      */
/* ---------------------------------------------------------------------- */
typedef struct wbuf {
    void *p;
    dpep_mat m; /* the whole [rows, cols] with stride ld */
    double *wd; /* [rows, cols]: the widened values, for the reference */
} wbuf;

static wbuf wbuf_make(dpep_wtype t, int rows, int cols, int64_t ld)
{
    wbuf b;
    size_t es = dpep_wtype_size(t), n = (size_t)rows * (size_t)ld;
    b.p = malloc(n * es + 64);
    b.wd = malloc(sizeof(double) * ((size_t)rows * cols + 1));
    for (size_t i = 0; i < n; i++) {
        float f = rndf();
        if (t == DPEP_WT_F32)
            ((float *)b.p)[i] = f;
        else if (t == DPEP_WT_BF16)
            ((uint16_t *)b.p)[i] = dpep_f32_to_bf16(f);
        else
            ((uint16_t *)b.p)[i] = dpep_f32_to_f16(f);
    }
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * ld + c;
            double v = t == DPEP_WT_F32    ? ((float *)b.p)[i]
                       : t == DPEP_WT_BF16 ? dpep_bf16_to_f32(((uint16_t *)b.p)[i])
                                           : dpep_f16_to_f32(((uint16_t *)b.p)[i]);
            b.wd[(size_t)r * cols + c] = v;
        }
    b.m = dpep_mat_make(b.p, t, rows, cols);
    b.m.ld = ld;
    return b;
}
static void wbuf_free(wbuf *b)
{
    free(b->p);
    free(b->wd);
}

/* ref[m, n] = beta * y0[m, n] + sum_k x[m, k] w(n, k) (NT: w = W[n, k];
 * NN: w = W[k, n]) and mag[m, n] the same sum of magnitudes; wd is the
 * widened matrix with `cols` columns and rows starting at row r0. */
static void reference(bool nt, int M, int N, int K, const float *X, int64_t ldx, const double *wd,
                      int wcols, int r0, float beta, const float *Y0, int64_t ldy, double *ref,
                      double *mag)
{
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = beta != 0.0f ? Y0[(size_t)m * ldy + n] : 0.0, a = fabs(s);
            for (int k = 0; k < K; k++) {
                double w = nt ? wd[(size_t)(r0 + n) * wcols + k] : wd[(size_t)(r0 + k) * wcols + n];
                s += (double)X[(size_t)m * ldx + k] * w;
                a += fabs((double)X[(size_t)m * ldx + k] * w);
            }
            ref[(size_t)m * N + n] = s;
            mag[(size_t)m * N + n] = a;
        }
}

/* ||Y - ref|| / ||mag|| (NaN anywhere: infinity) */
static double rel_err(int M, int N, const float *Y, int64_t ldy, const double *ref,
                      const double *mag)
{
    double e = 0, r = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double d = (double)Y[(size_t)m * ldy + n] - ref[(size_t)m * N + n];
            if (d != d) return INFINITY; /* NaN left in the output */
            e += d * d;
            r += mag[(size_t)m * N + n] * mag[(size_t)m * N + n];
        }
    return r > 0 ? sqrt(e / r) : sqrt(e);
}

/* One product: the form, M x (N, K), view rows from r0, beta, and where it
 * runs (mode 0: outside a region with the team; 1: inside an omp parallel
 * region, every thread its own copy). Returns the relative error (max
 * over the copies); *out (optional, [M, ldy]) receives the result. */
static double run_case(bool nt, dpep_wtype t, int M, int N, int K, int r0, int64_t ldpad,
                       float beta, int mode, float *out_copy)
{
    /* the matrix: NT: W [r0 + N, K]; NN: W [r0 + K, N]; ld = cols + pad */
    int rows = nt ? r0 + N : r0 + K, cols = nt ? K : N;
    wbuf b = wbuf_make(t, rows, cols, cols + ldpad);
    dpep_mat W = dpep_mat_rows(b.m, r0, nt ? N : K);
    int64_t ldx = K + 3, ldy = N + 5;
    float *X = malloc(sizeof(float) * ((size_t)M * ldx + 1));
    float *Y0 = malloc(sizeof(float) * ((size_t)M * ldy + 1));
    float *Y = malloc(sizeof(float) * 2 * ((size_t)M * ldy + 1));
    double *ref = malloc(sizeof(double) * 2 * ((size_t)M * N + 1)), *mag = ref + (size_t)M * N + 1;
    for (size_t i = 0; i < (size_t)M * ldx; i++) X[i] = rndf();
    for (size_t i = 0; i < (size_t)M * ldy; i++) Y0[i] = rndf();
    reference(nt, M, N, K, X, ldx, b.wd, cols, r0, beta, Y0, ldy, ref, mag);
    size_t ny = (size_t)M * ldy + 1;
    for (int c = 0; c < 2; c++)
        for (size_t i = 0; i < ny; i++) Y[c * ny + i] = beta != 0.0f ? Y0[i] : NAN;
    if (mode == 0) {
        if (nt)
            dpep_linear_nt(M, X, ldx, &W, beta, Y, ldy);
        else
            dpep_linear_nn(M, X, ldx, &W, beta, Y, ldy);
    } else {
#pragma omp parallel num_threads(2)
        {
            int c = 0;
#ifdef _OPENMP
            c = omp_get_thread_num() & 1;
#endif
            if (nt)
                dpep_linear_nt(M, X, ldx, &W, beta, Y + c * ny, ldy);
            else
                dpep_linear_nn(M, X, ldx, &W, beta, Y + c * ny, ldy);
        }
    }
    double e = rel_err(M, N, Y, ldy, ref, mag);
    if (mode == 1) {
        double e1 = rel_err(M, N, Y + ny, ldy, ref, mag);
        if (e1 > e || e1 != e1) e = e1;
    }
    /* the padding between rows of Y (beta 0: NaN) must be untouched */
    for (int m = 0; m < M && beta == 0.0f; m++)
        for (int64_t j = N; j < ldy; j++)
            if (!isnan(Y[(size_t)m * ldy + j])) e = INFINITY;
    if (out_copy) memcpy(out_copy, Y, sizeof(float) * (size_t)M * ldy);
    free(X);
    free(Y0);
    free(Y);
    free(ref);
    wbuf_free(&b);
    return e;
}

/* ---------------------------------------------------------------------- */
/* every path against the reference                                        */
/* ---------------------------------------------------------------------- */
static void test_products(const char *table)
{
    static const int Ks[] = {1, 7, 8, 9, 33, 2049};
    static const int Ns[] = {1, 3, 17, 100};
    static const int Ms[] = {0, 1, 2, 3, 5, 8, 9, 16, 33};
    int ci = 0, bad = 0, cases = 0;
    double emax = 0;
    for (int form = 0; form < 2; form++)
        for (int t = 0; t < DPEP_WT_CPU_COUNT; t++)
            for (size_t ik = 0; ik < sizeof Ks / sizeof *Ks; ik++)
                for (size_t in = 0; in < sizeof Ns / sizeof *Ns; in++)
                    for (size_t im = 0; im < sizeof Ms / sizeof *Ms; im++)
                        for (int bi = 0; bi < 2; bi++, ci++) {
                            int K = Ks[ik], N = Ns[in], M = Ms[im];
                            /* views, padding, threads and the region rotate over the cases */
                            int r0 = ci % 3 == 0 ? 0 : 2, pad = ci % 4 == 1 ? 0 : 5;
                            int mode = ci % 5 == 2 ? 1 : 0;
                            set_threads(ci % 2 ? 2 : 1);
                            float beta = (float)bi;
                            double e = run_case(form == 0, (dpep_wtype)t, M, N, K, r0, pad, beta,
                                                mode, NULL);
                            cases++;
                            if (e > emax || e != e) emax = e;
                            if (!(e <= TOL)) {
                                bad++;
                                EXPECT(e <= TOL,
                                       "%s %s %s M=%d N=%d K=%d r0=%d pad=%d beta=%g mode=%d: "
                                       "rel err %.3g",
                                       table, form == 0 ? "nt" : "nn",
                                       dpep_wtype_name((dpep_wtype)t), M, N, K, r0, pad, beta, mode,
                                       e);
                            }
                        }
    EXPECT(bad == 0, "%s: %d of %d products wrong", table, bad, cases);
    printf("%s: %d products checked, %d wrong, largest normalized error %.3g\n", table, cases, bad,
           emax);
}

/* Larger shapes that split over the team (N >= 32, M N K above the
 * threshold) on both paths, and a K longer than the unreserved stack panel. */
static void test_split(const char *table)
{
    static const int Ms[] = {1, 2, 4, 7, 16, 40};
    for (int form = 0; form < 2; form++)
        for (int t = 0; t < DPEP_WT_CPU_COUNT; t++)
            for (size_t im = 0; im < sizeof Ms / sizeof *Ms; im++) {
                int M = Ms[im], N = form == 0 ? 300 : 260, K = form == 0 ? 1100 : 700;
                set_threads(2);
                double e =
                    run_case(form == 0, (dpep_wtype)t, M, N, K, 1, 3, (float)(im & 1), 0, NULL);
                EXPECT(e <= TOL, "%s split %s %s M=%d N=%d K=%d: rel err %.3g", table,
                       form == 0 ? "nt" : "nn", dpep_wtype_name((dpep_wtype)t), M, N, K, e);
            }
}

/* Bitwise: dpep_linear_nt_cols over parts of dpep_linear_col_chunk's
 * width, taken by a 2-thread region in dynamic order (as moe/'s expert
 * waves do), equals one dpep_linear_nt call; parts are multiples of
 * dpep_linear_col_align. */
static void test_cols(const char *table)
{
    static const int Ms[] = {1, 3, 16, 33, 70};
    static const int Ns[] = {1, 17, 300, 1100};
    for (int t = 0; t < DPEP_WT_CPU_COUNT; t++)
        for (size_t im = 0; im < sizeof Ms / sizeof *Ms; im++)
            for (size_t in = 0; in < sizeof Ns / sizeof *Ns; in++) {
                const int M = Ms[im], N = Ns[in], K = 515;
                wbuf w = wbuf_make((dpep_wtype)t, N, K, K + 3);
                float *X = malloc(sizeof(float) * (size_t)M * K);
                float *Y1 = malloc(sizeof(float) * (size_t)M * N);
                float *Y2 = malloc(sizeof(float) * (size_t)M * N);
                for (size_t i = 0; i < (size_t)M * K; i++) X[i] = rndf();
                for (size_t i = 0; i < (size_t)M * N; i++) Y1[i] = Y2[i] = rndf();
                const float beta = (float)((im + in) & 1);
                set_threads(2);
                dpep_linear_nt(M, X, K, &w.m, beta, Y1, N);
                const int ch = dpep_linear_col_chunk(M, &w.m, 2), al = dpep_linear_col_align(M, &w.m);
                const int parts = (N + ch - 1) / ch;
#pragma omp parallel for schedule(dynamic, 1) num_threads(2)
                for (int q = parts - 1; q >= 0; q--)
                    dpep_linear_nt_cols(M, X, K, &w.m, q * ch, N - q * ch < ch ? N - q * ch : ch,
                                        beta, Y2, N);
                EXPECT(ch % al == 0 && (al == 16 || al == 128), "%s cols: chunk %d, align %d", table,
                       ch, al);
                EXPECT(memcmp(Y1, Y2, sizeof(float) * (size_t)M * N) == 0,
                       "%s cols %s M=%d N=%d: parts of %d differ from one call", table,
                       dpep_wtype_name((dpep_wtype)t), M, N, ch);
                free(X);
                free(Y1);
                free(Y2);
                wbuf_free(&w);
            }
}

/* Short rows that tile a page (K x size dividing 4096) are read as page
 * streams at M <= 3 (linear_avx2.c "Access order"): groups of 8 (M = 1) or
 * 4 tiles, R rows apart, R = 2..16, rows left over after the last group.
 * The same products with a padded row stride (which no page divides: the
 * plain tiles and the sweep) must give the same bits, each row alone the
 * same bits as inside M = 2 or 3, and the values the double reference's. */
static void test_page_streams(const char *table)
{
    static const int Ks[] = {64, 128, 256, 512, 1024, 2048}; /* f32 up to 1024 divides */
    static const int Ns[] = {16, 200, 1000, 1037};
    for (int t = 0; t < DPEP_WT_CPU_COUNT; t++)
        for (size_t ik = 0; ik < sizeof Ks / sizeof *Ks; ik++)
            for (size_t in = 0; in < sizeof Ns / sizeof *Ns; in++)
                for (int M = 1; M <= 3; M++) {
                    const int K = Ks[ik], N = Ns[in];
                    if ((size_t)K * dpep_wtype_size((dpep_wtype)t) > 4096) continue;
                    wbuf a = wbuf_make((dpep_wtype)t, N, K, K);
                    /* the same values at a stride no page divides */
                    wbuf b = wbuf_make((dpep_wtype)t, N, K, K + 8);
                    const size_t es = dpep_wtype_size((dpep_wtype)t);
                    for (int r = 0; r < N; r++)
                        memcpy((char *)b.p + (size_t)r * (K + 8) * es,
                               (char *)a.p + (size_t)r * K * es, (size_t)K * es);
                    float *X = malloc(sizeof(float) * (size_t)M * K);
                    float *Y1 = malloc(sizeof(float) * (size_t)M * N);
                    float *Y2 = malloc(sizeof(float) * (size_t)M * N);
                    float *Yr = malloc(sizeof(float) * (size_t)N);
                    double *ref = malloc(sizeof(double) * (size_t)M * N);
                    double *mag = malloc(sizeof(double) * (size_t)M * N);
                    for (size_t i = 0; i < (size_t)M * K; i++) X[i] = rndf();
                    for (size_t i = 0; i < (size_t)M * N; i++) Y1[i] = Y2[i] = rndf();
                    const float beta = (float)((ik + in + (size_t)M) & 1);
                    reference(true, M, N, K, X, K, a.wd, K, 0, beta, Y1, N, ref, mag);
                    set_threads(2);
                    dpep_linear_nt(M, X, K, &a.m, beta, Y1, N);
                    dpep_linear_nt(M, X, K, &b.m, beta, Y2, N);
                    const char *tn = dpep_wtype_name((dpep_wtype)t);
                    EXPECT(memcmp(Y1, Y2, sizeof(float) * (size_t)M * N) == 0,
                           "%s page streams %s M=%d N=%d K=%d: differ from the padded stride",
                           table, tn, M, N, K);
                    const double e = rel_err(M, N, Y1, N, ref, mag);
                    EXPECT(e <= TOL, "%s page streams %s M=%d N=%d K=%d: rel err %.3g", table, tn,
                           M, N, K, e);
                    int diff = 0;
                    /* (rows alone: on the small path, as test_invariance) */
                    const bool small = M <= dpep_linear_small_m((dpep_wtype)t);
                    for (int m = 0; m < M && beta == 0.0f && small; m++) {
                        dpep_linear_nt(1, X + (size_t)m * K, K, &a.m, 0.0f, Yr, N);
                        diff += memcmp(Yr, Y1 + (size_t)m * N, sizeof(float) * N) != 0;
                    }
                    EXPECT(diff == 0, "%s page streams %s M=%d N=%d K=%d: %d rows differ alone",
                           table, tn, M, N, K, diff);
                    free(X);
                    free(Y1);
                    free(Y2);
                    free(Yr);
                    free(ref);
                    free(mag);
                    wbuf_free(&a);
                    wbuf_free(&b);
                }
}

/* The buffers of a case that runs one product two ways and compares the
 * bits: X [M, ldx] random, Y1 = Y2 [M, N] the same random start (for beta
 * 1), ref/mag [M, N] for the reference. */
typedef struct twoway {
    float *X, *Y1, *Y2;
    double *ref, *mag;
} twoway;

static twoway twoway_make(int M, int N, int64_t ldx)
{
    twoway b;
    b.X = malloc(sizeof(float) * (size_t)M * (size_t)ldx);
    b.Y1 = malloc(sizeof(float) * (size_t)M * N);
    b.Y2 = malloc(sizeof(float) * (size_t)M * N);
    b.ref = malloc(sizeof(double) * (size_t)M * N);
    b.mag = malloc(sizeof(double) * (size_t)M * N);
    for (size_t i = 0; i < (size_t)M * (size_t)ldx; i++) b.X[i] = rndf();
    for (int i = 0; i < M * N; i++) b.Y1[i] = b.Y2[i] = rndf();
    return b;
}

static void twoway_free(twoway *b)
{
    free(b->X);
    free(b->Y1);
    free(b->Y2);
    free(b->ref);
    free(b->mag);
}

/* Row order vs streams (dpep_linear_force_m1_order: the order of M <= 3,
 * and whether larger M prefetch): the same bits for every type, K (tails,
 * short rows that make page streams, long rows), N, M and beta, on 1 and 2
 * threads; and the reference's values. */
static void test_m1_order(const char *table)
{
    static const int Ks[] = {1, 7, 33, 384, 1024, 2049};
    static const int Ns[] = {1, 9, 200, 1037};
    static const int Ms[] = {1, 2, 3, 5, 8};
    for (int t = 0; t < DPEP_WT_CPU_COUNT; t++)
        for (size_t ik = 0; ik < sizeof Ks / sizeof *Ks; ik++)
            for (size_t in = 0; in < sizeof Ns / sizeof *Ns; in++)
                for (int th = 0; th < 10; th++) {
                    const int K = Ks[ik], N = Ns[in], M = Ms[th / 2], nt = 1 + (th & 1);
                    wbuf a = wbuf_make((dpep_wtype)t, N, K, K);
                    twoway b = twoway_make(M, N, K);
                    const float beta = (float)((ik + in) & 1);
                    reference(true, M, N, K, b.X, K, a.wd, K, 0, beta, b.Y1, N, b.ref, b.mag);
                    set_threads(nt);
                    EXPECT(dpep_linear_force_m1_order("streams"), "force streams");
                    dpep_linear_nt(M, b.X, K, &a.m, beta, b.Y1, N);
                    EXPECT(dpep_linear_force_m1_order("rows"), "force rows");
                    EXPECT(strcmp(dpep_linear_m1_order(), "rows") == 0, "forced rows: %s",
                           dpep_linear_m1_order());
                    dpep_linear_nt(M, b.X, K, &a.m, beta, b.Y2, N);
                    const char *tn = dpep_wtype_name((dpep_wtype)t);
                    EXPECT(memcmp(b.Y1, b.Y2, sizeof(float) * (size_t)M * N) == 0,
                           "%s M=%d rows vs streams %s N=%d K=%d beta=%g %d threads: differ", table,
                           M, tn, N, K, (double)beta, nt);
                    const double e = rel_err(M, N, b.Y2, N, b.ref, b.mag);
                    EXPECT(e <= TOL, "%s M=%d rows %s N=%d K=%d: rel err %.3g", table, M, tn, N, K,
                           e);
                    twoway_free(&b);
                    wbuf_free(&a);
                }
    EXPECT(dpep_linear_force_m1_order(NULL), "back to the M = 1 choice");
}

/* BF16 activations split once per call vs in every tile
 * (dpep_linear_force_bf16_split): the same bits at every M of the small
 * path, K with and without a tail of the 32-value pair step, short and
 * long rows, beta 0 and 1, 1 and 2 threads, in both M = 1 orders; and the
 * reference's values. A table without pairs runs the same code both ways. */
static void test_bf16_split(const char *table)
{
    static const int Ks[] = {1, 31, 32, 33, 384, 1000, 2049};
    static const int Ns[] = {1, 9, 203};
    static const int Ms[] = {1, 2, 3, 4, 6, 7, 16, 32};
    const int sm = dpep_linear_small_m(DPEP_WT_BF16);
    for (size_t ik = 0; ik < sizeof Ks / sizeof *Ks; ik++)
        for (size_t in = 0; in < sizeof Ns / sizeof *Ns; in++)
            for (size_t im = 0; im < sizeof Ms / sizeof *Ms; im++) {
                const int K = Ks[ik], N = Ns[in], M = Ms[im];
                if (M > sm) continue;
                const int nt = 1 + (int)((ik + im) & 1);
                const char *order = (in + im) & 1 ? "rows" : "streams";
                wbuf a = wbuf_make(DPEP_WT_BF16, N, K, K + 3);
                twoway b = twoway_make(M, N, K + 5);
                const float beta = (float)((ik + in + im) & 1);
                reference(true, M, N, K, b.X, K + 5, a.wd, K, 0, beta, b.Y1, N, b.ref, b.mag);
                set_threads(nt);
                EXPECT(dpep_linear_force_m1_order(order), "force %s", order);
                dpep_linear_force_bf16_split(false);
                dpep_linear_nt(M, b.X, K + 5, &a.m, beta, b.Y1, N);
                dpep_linear_force_bf16_split(true);
                dpep_linear_nt(M, b.X, K + 5, &a.m, beta, b.Y2, N);
                EXPECT(memcmp(b.Y1, b.Y2, sizeof(float) * (size_t)M * N) == 0,
                       "%s bf16 M=%d N=%d K=%d beta=%g %s %d threads: split once vs per tile "
                       "differ",
                       table, M, N, K, (double)beta, order, nt);
                const double e = rel_err(M, N, b.Y2, N, b.ref, b.mag);
                EXPECT(e <= TOL, "%s bf16 split M=%d N=%d K=%d: rel err %.3g", table, M, N, K, e);
                twoway_free(&b);
                wbuf_free(&a);
            }
    EXPECT(dpep_linear_force_m1_order(NULL), "back to the M = 1 choice");
}

/* Bitwise: 1 vs 2 threads, outside vs inside a region, and (small path)
 * row m alone vs inside a larger M. */
static void test_invariance(const char *table)
{
    for (int form = 0; form < 2; form++)
        for (int t = 0; t < DPEP_WT_CPU_COUNT; t++) {
            const bool nt = form == 0;
            const int N = 203, K = 777;
            const int sm = dpep_linear_small_m((dpep_wtype)t);
            const int Msmall = sm <= 128 ? sm : 40; /* forced paths: 0 or INT_MAX */
            const int Mlist[] = {1, 2, 3, Msmall, Msmall + 1, 40};
            for (size_t im = 0; im < sizeof Mlist / sizeof *Mlist; im++) {
                const int M = Mlist[im];
                int rows = nt ? N : K, cols = nt ? K : N;
                wbuf b = wbuf_make((dpep_wtype)t, rows, cols, cols);
                int64_t ldx = K, ldy = N;
                float *X = malloc(sizeof(float) * (size_t)M * K);
                float *Y1 = malloc(sizeof(float) * (size_t)M * N);
                float *Y2 = malloc(sizeof(float) * (size_t)M * N);
                float *Y3 = malloc(sizeof(float) * (size_t)M * N);
                float *Yr = malloc(sizeof(float) * (size_t)N);
                for (size_t i = 0; i < (size_t)M * K; i++) X[i] = rndf();
                set_threads(1);
                if (nt)
                    dpep_linear_nt(M, X, ldx, &b.m, 0.0f, Y1, ldy);
                else
                    dpep_linear_nn(M, X, ldx, &b.m, 0.0f, Y1, ldy);
                set_threads(2);
                if (nt)
                    dpep_linear_nt(M, X, ldx, &b.m, 0.0f, Y2, ldy);
                else
                    dpep_linear_nn(M, X, ldx, &b.m, 0.0f, Y2, ldy);
#pragma omp parallel num_threads(2)
                {
#ifdef _OPENMP
                    if (omp_get_thread_num() == 1)
#endif
                    {
                        if (nt)
                            dpep_linear_nt(M, X, ldx, &b.m, 0.0f, Y3, ldy);
                        else
                            dpep_linear_nn(M, X, ldx, &b.m, 0.0f, Y3, ldy);
                    }
                }
#ifndef _OPENMP
                memcpy(Y3, Y2, sizeof(float) * (size_t)M * N);
#endif
                const char *fn = nt ? "nt" : "nn", *tn = dpep_wtype_name((dpep_wtype)t);
                EXPECT(memcmp(Y1, Y2, sizeof(float) * (size_t)M * N) == 0,
                       "%s %s %s M=%d: 1 and 2 threads differ", table, fn, tn, M);
                EXPECT(memcmp(Y1, Y3, sizeof(float) * (size_t)M * N) == 0,
                       "%s %s %s M=%d: outside and inside a parallel region differ", table, fn, tn,
                       M);
                if (M <= sm) {
                    int diff = 0;
                    for (int m = 0; m < M; m++) {
                        if (nt)
                            dpep_linear_nt(1, X + (size_t)m * K, ldx, &b.m, 0.0f, Yr, ldy);
                        else
                            dpep_linear_nn(1, X + (size_t)m * K, ldx, &b.m, 0.0f, Yr, ldy);
                        diff += memcmp(Yr, Y2 + (size_t)m * N, sizeof(float) * N) != 0;
                    }
                    EXPECT(diff == 0, "%s %s %s M=%d: %d rows differ from the same row alone",
                           table, fn, tn, M, diff);
                    /* the same outputs from a view shifted by s weight rows
                     * (NT) or columns (NN): computed by other tile shapes */
                    for (int sh = 1; sh <= 5; sh += 2) {
                        dpep_mat v = b.m;
                        if (nt)
                            v = dpep_mat_rows(b.m, sh, N - sh);
                        else {
                            v.p = (char *)b.m.p + (size_t)sh * dpep_wtype_size(b.m.t);
                            v.cols = N - sh;
                        }
                        if (nt)
                            dpep_linear_nt(M, X, ldx, &v, 0.0f, Y3, ldy);
                        else
                            dpep_linear_nn(M, X, ldx, &v, 0.0f, Y3, ldy);
                        int dv = 0;
                        for (int m = 0; m < M; m++)
                            dv += memcmp(Y3 + (size_t)m * N, Y2 + (size_t)m * N + sh,
                                         sizeof(float) * (size_t)(N - sh)) != 0;
                        EXPECT(dv == 0, "%s %s %s M=%d: a view shifted by %d differs in %d rows",
                               table, fn, tn, M, sh, dv);
                    }
                }
                free(X);
                free(Y1);
                free(Y2);
                free(Y3);
                free(Yr);
                wbuf_free(&b);
            }
        }
}

/* ---------------------------------------------------------------------- */
/* conversions                                                             */
/* ---------------------------------------------------------------------- */
/* Magnitude of a finite bit pattern, continued past the largest finite
 * value (the infinity pattern counts as the next binade's first value,
 * where IEEE rounding places overflow). */
static double val_bf16(uint16_t h)
{
    int e = (h >> 7) & 0xff, m = h & 0x7f;
    return e == 0 ? ldexp(m, -133) : ldexp(128 + m, e - 134);
}
static double val_f16(uint16_t h)
{
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    return e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
}

/* Round-to-nearest-even by search: the largest magnitude pattern <= a
 * (binary search over [0, inf]) and the next one; the nearer wins, a tie
 * goes to the even pattern. */
static uint16_t ref_round(float f, uint16_t inf_bits, int sign_shift, double (*val)(uint16_t))
{
    uint16_t sign = (uint16_t)(signbit(f) ? 1u << sign_shift : 0);
    if (isnan(f)) return 0xffff; /* checked separately */
    double a = fabs((double)f);
    if (isinf(f) || a >= val(inf_bits)) return sign | inf_bits;
    unsigned lo = 0, hi = inf_bits; /* val(lo) <= a < val(hi) */
    while (hi - lo > 1) {
        unsigned mid = (lo + hi) / 2;
        if (val((uint16_t)mid) <= a)
            lo = mid;
        else
            hi = mid;
    }
    double dl = a - val((uint16_t)lo), dh = val((uint16_t)hi) - a;
    unsigned r = dl < dh ? lo : dh < dl ? hi : (lo & 1 ? hi : lo);
    return sign | (uint16_t)r;
}

static float from_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void check_one(float f, int *bad_b, int *bad_h)
{
    uint16_t b = dpep_f32_to_bf16(f), h = dpep_f32_to_f16(f);
    if (isnan(f)) {
        uint32_t u;
        memcpy(&u, &f, 4);
        if (!((b & 0x7f80) == 0x7f80 && (b & 0x7f))) {
            if ((*bad_b)++ < 5) printf("FAIL bf16(NaN %08x) = %04x, not NaN\n", u, b);
        }
        if (!((h & 0x7c00) == 0x7c00 && (h & 0x3ff))) {
            if ((*bad_h)++ < 5) printf("FAIL f16(NaN %08x) = %04x, not NaN\n", u, h);
        }
        return;
    }
    uint16_t rb = ref_round(f, 0x7f80, 15, val_bf16), rh = ref_round(f, 0x7c00, 15, val_f16);
    if (b != rb && (*bad_b)++ < 5)
        printf("FAIL bf16(%a) = %04x, expected %04x\n", (double)f, b, rb);
    if (h != rh && (*bad_h)++ < 5) printf("FAIL f16(%a) = %04x, expected %04x\n", (double)f, h, rh);
}

static void test_conversions(void)
{
    int bad_b = 0, bad_h = 0;
    /* random bit patterns (every class: NaN, inf, subnormal, ...) */
    for (int i = 0; i < 2000000; i++) check_one(from_bits((uint32_t)rnd64()), &bad_b, &bad_h);
    /* values in f16's range, where its rounding is interesting */
    for (int i = 0; i < 1000000; i++) {
        uint32_t u = (uint32_t)rnd64();
        uint32_t e = 100 + (u >> 24) % 50; /* 2^-27 .. 2^22 */
        check_one(from_bits((u & 0x807fffffu) | (e << 23)), &bad_b, &bad_h);
    }
    /* exact ties and their neighbours, both parities, normal and subnormal */
    for (uint32_t hb = 0; hb < 0x7c00; hb += 1) {
        double mid = (val_f16((uint16_t)hb) + val_f16((uint16_t)(hb + 1))) / 2;
        float fm = (float)mid; /* exact: f16 midpoints need 12 bits */
        check_one(fm, &bad_b, &bad_h);
        check_one(-fm, &bad_b, &bad_h);
        check_one(nextafterf(fm, 0), &bad_b, &bad_h);
        check_one(nextafterf(fm, INFINITY), &bad_b, &bad_h);
    }
    for (uint32_t hb = 0; hb < 0x7f80; hb += 1) {
        uint32_t u = ((uint32_t)hb << 16) | 0x8000u; /* bf16 midpoint */
        check_one(from_bits(u), &bad_b, &bad_h);
        check_one(from_bits(u | 0x80000000u), &bad_b, &bad_h);
        check_one(from_bits(u - 1), &bad_b, &bad_h);
        check_one(from_bits(u + 1), &bad_b, &bad_h);
    }
    const float specials[] = {0.0f,          -0.0f,    INFINITY,  -INFINITY, NAN,
                              -NAN,          65504.0f, 65519.99f, 65520.0f,  -65520.0f,
                              3.4028235e38f, 1e-45f,   5.96e-8f,  2.98e-8f,  2.9802322e-8f,
                              6.1035156e-5f, 1.0f,     -1.0f};
    for (size_t i = 0; i < sizeof specials / sizeof *specials; i++)
        check_one(specials[i], &bad_b, &bad_h);
    check_one(from_bits(0x7f800001u), &bad_b, &bad_h); /* signalling NaN: must stay NaN */
    check_one(from_bits(0xff800001u), &bad_b, &bad_h);
    check_one(from_bits(0x7fffffffu), &bad_b, &bad_h);
    EXPECT(bad_b == 0, "f32 -> bf16: %d wrong", bad_b);
    EXPECT(bad_h == 0, "f32 -> f16: %d wrong", bad_h);

    /* widening: exact, every pattern */
    int bad = 0;
    for (uint32_t hb = 0; hb < 0x10000; hb++) {
        float fb = dpep_bf16_to_f32((uint16_t)hb), fh = dpep_f16_to_f32((uint16_t)hb);
        int eb = (hb >> 7) & 0xff, eh = (hb >> 10) & 0x1f;
        double sb = hb & 0x8000 ? -1 : 1;
        if (eb == 0xff)
            bad += (hb & 0x7f) ? !isnan(fb) : fb != sb * INFINITY;
        else
            bad += (double)fb != sb * val_bf16((uint16_t)hb);
        if (eh == 0x1f)
            bad += (hb & 0x3ff) ? !isnan(fh) : fh != sb * INFINITY;
        else
            bad += (double)fh != sb * val_f16((uint16_t)hb);
        /* round trip */
        if (eb != 0xff) bad += dpep_f32_to_bf16(fb) != hb;
        if (eh != 0x1f) bad += dpep_f32_to_f16(fh) != hb;
    }
    EXPECT(bad == 0, "bf16/f16 -> f32 (scalar): %d wrong", bad);
}

/* widen (the table in use) vs the scalar conversion on every pattern,
 * at lengths with every tail */
static void test_widen(const char *table)
{
    uint16_t *src = malloc(sizeof(uint16_t) * 0x10000);
    float *dst = malloc(sizeof(float) * (0x10000 + 16));
    for (uint32_t i = 0; i < 0x10000; i++) src[i] = (uint16_t)(i * 40503u); /* a permutation */
    for (int t = DPEP_WT_BF16; t <= DPEP_WT_F16; t++)
        for (int64_t n = 0x10000 - 17; n <= 0x10000; n += 1) {
            int64_t off = 0x10000 - n; /* start anywhere */
            for (int i = 0; i < 16; i++) dst[n + i] = -7.0f;
            dpep_linear_widen(src + off, (dpep_wtype)t, n, dst);
            int bad = 0;
            for (int64_t i = 0; i < n; i++) {
                float r = t == DPEP_WT_BF16 ? dpep_bf16_to_f32(src[off + i])
                                            : dpep_f16_to_f32(src[off + i]);
                bad += isnan(r) ? !isnan(dst[i]) : memcmp(&r, dst + i, 4) != 0;
            }
            for (int i = 0; i < 16; i++) bad += dst[n + i] != -7.0f;
            if (bad) {
                EXPECT(bad == 0, "%s widen %s n=%lld: %d wrong", table,
                       dpep_wtype_name((dpep_wtype)t), (long long)n, bad);
                break;
            }
        }
    float fs[37], fd[37];
    for (int i = 0; i < 37; i++) fs[i] = rndf();
    dpep_linear_widen(fs, DPEP_WT_F32, 37, fd);
    EXPECT(memcmp(fs, fd, sizeof fs) == 0, "%s widen f32 is not a copy", table);
    free(src);
    free(dst);
}

static void test_gather(const char *table)
{
    for (int t = 0; t < DPEP_WT_CPU_COUNT; t++) {
        const int V = 50, H = 77;
        wbuf b = wbuf_make((dpep_wtype)t, V, H, H + 9);
        int32_t ids[13];
        for (int i = 0; i < 13; i++) ids[i] = (int32_t)(rnd64() % V);
        ids[3] = V - 1;
        ids[4] = 0;
        float *out = malloc(sizeof(float) * 13 * H);
        dpep_linear_gather(&b.m, ids, 13, out);
        int bad = 0;
        for (int i = 0; i < 13; i++)
            for (int c = 0; c < H; c++)
                bad += (double)out[i * H + c] != b.wd[(size_t)ids[i] * H + c];
        EXPECT(bad == 0, "%s gather %s: %d wrong", table, dpep_wtype_name((dpep_wtype)t), bad);
        free(out);
        wbuf_free(&b);
    }
}

static void force_small_m(int m)
{
    for (int t = 0; t < DPEP_WT_CPU_COUNT; t++) dpep_linear_set_small_m((dpep_wtype)t, m);
}

/* The measured crossover, then every M on one path: BLAS (small M = 0) and
 * the streaming kernel (small M = INT_MAX). */
/* Batched products over views of one matrix (MLA's per-head absorbed
 * products): dpep_linear_batched against a loop of single products on the
 * views (bit-identical) and the reference; split into parts with
 * dpep_linear_batched_part; 1 and 2 threads. Then the offload table: an
 * installed entry sees nt and batched calls (not nn, not inside a region),
 * one that declines leaves the call to run as usual, one that computes the
 * product itself (columns / products in parts) gives the same bits. */
typedef struct fake_offload {
    int nt_calls, batched_calls;
    bool take;
} fake_offload;
static bool fake_nt(void *ctx, int M, const float *X, int64_t ldx, const dpep_mat *W, float beta,
                    float *Y, int64_t ldy)
{
    fake_offload *f = ctx;
    f->nt_calls++;
    if (!f->take || beta != 0.0f) return false;
    for (int c0 = (W->rows - 1) / 16 * 16; c0 >= 0; c0 -= 16) /* parts of 16 columns, last first */
        dpep_linear_nt_cols(M, X, ldx, W, c0, W->rows - c0 < 16 ? W->rows - c0 : 16, 0.0f, Y, ldy);
    return true;
}
static bool fake_batched(void *ctx, bool nt, int batch, int M, const float *X, int64_t ldx,
                         int64_t xs, const dpep_mat *W, int64_t ws, float beta, float *Y,
                         int64_t ldy, int64_t ys)
{
    fake_offload *f = ctx;
    f->batched_calls++;
    if (!f->take) return false;
    for (int b0 = batch - 1; b0 >= 0; b0 -= 2) /* parts of two, last first */
        dpep_linear_batched_part(nt, b0 > 0 ? b0 - 1 : 0, b0 + 1, M, X, ldx, xs, W, ws, beta, Y,
                                 ldy, ys);
    return true;
}

static void test_batched(const char *table)
{
    static const int Ms[] = {1, 3, 9};
    for (int t = 0; t < DPEP_WT_CPU_COUNT; t++)
        for (int form = 0; form < 2; form++)
            for (size_t im = 0; im < sizeof Ms / sizeof *Ms; im++) {
                const bool nt = form == 0;
                const int M = Ms[im], B = 5, K = 67, N = 37, r0 = 2;
                /* views: product b is rows [r0 + b*per, +vr) of W, per > vr */
                const int vr = nt ? N : K, vc = nt ? K : N, per = vr + 3;
                wbuf w = wbuf_make((dpep_wtype)t, r0 + B * per, vc, vc + 1);
                const dpep_mat v0 = dpep_mat_rows(w.m, r0, vr);
                const int64_t ws = (int64_t)per * w.m.ld;
                const int64_t xs = K + 2, ldx = B * xs + 1, ys = N + 4, ldy = B * ys + 3;
                float *X = malloc(sizeof(float) * (size_t)M * ldx);
                float *Y[4];
                for (int c = 0; c < 4; c++) Y[c] = malloc(sizeof(float) * (size_t)M * ldy);
                double *ref = malloc(sizeof(double) * 2 * (size_t)M * N), *mag = ref + (size_t)M * N;
                for (size_t i = 0; i < (size_t)M * ldx; i++) X[i] = rndf();
                for (int c = 0; c < 4; c++)
                    for (size_t i = 0; i < (size_t)M * ldy; i++) Y[c][i] = NAN;
                set_threads(1);
                for (int b = 0; b < B; b++) { /* the loop of single products */
                    const dpep_mat v = dpep_mat_rows(w.m, r0 + b * per, vr);
                    if (nt)
                        dpep_linear_nt(M, X + b * xs, ldx, &v, 0.0f, Y[0] + b * ys, ldy);
                    else
                        dpep_linear_nn(M, X + b * xs, ldx, &v, 0.0f, Y[0] + b * ys, ldy);
                }
                dpep_linear_batched(nt, B, M, X, ldx, xs, &v0, ws, 0.0f, Y[1], ldy, ys);
                set_threads(2);
                dpep_linear_batched(nt, B, M, X, ldx, xs, &v0, ws, 0.0f, Y[2], ldy, ys);
                dpep_linear_batched_part(nt, 3, B, M, X, ldx, xs, &v0, ws, 0.0f, Y[3], ldy, ys);
                dpep_linear_batched_part(nt, 0, 3, M, X, ldx, xs, &v0, ws, 0.0f, Y[3], ldy, ys);
                for (int c = 1; c < 4; c++)
                    EXPECT(memcmp(Y[0], Y[c], sizeof(float) * (size_t)M * ldy) == 0, /* NaN padding too */
                           "%s batched %s %s M=%d: way %d differs from the loop of products", table,
                           nt ? "nt" : "nn", dpep_wtype_name((dpep_wtype)t), M, c);
                for (int b = 0; b < B; b++) {
                    reference(nt, M, N, K, X + b * xs, ldx, w.wd, vc, r0 + b * per, 0.0f, NULL, 0,
                              ref, mag);
                    const double e = rel_err(M, N, Y[2] + b * ys, ldy, ref, mag);
                    EXPECT(e <= TOL, "%s batched %s %s M=%d product %d: rel err %.3g", table,
                           nt ? "nt" : "nn", dpep_wtype_name((dpep_wtype)t), M, b, e);
                }
                /* the offload table: declined, then taken */
                for (int take = 0; take < 2; take++) {
                    fake_offload f = {0, 0, take != 0};
                    const dpep_linear_offload tab = {.nt = fake_nt, .batched = fake_batched, .ctx = &f};
                    for (size_t i = 0; i < (size_t)M * ldy; i++) Y[1][i] = NAN;
                    dpep_linear_set_offload(&tab);
                    EXPECT(dpep_linear_offloading(), "an installed table is offloading");
                    dpep_linear_batched(nt, B, M, X, ldx, xs, &v0, ws, 0.0f, Y[1], ldy, ys);
                    const dpep_mat v = dpep_mat_rows(w.m, r0, vr);
                    if (nt) dpep_linear_nt(M, X, ldx, &v, 0.0f, Y[3], ldy);
                    else dpep_linear_nn(M, X, ldx, &v, 0.0f, Y[3], ldy);
#pragma omp parallel num_threads(2)
                    {
#pragma omp single
                        { /* inside a region: never offered */
                            if (!dpep_linear_offloading())
                                dpep_linear_batched(nt, 1, M, X, ldx, xs, &v0, ws, 0.0f, Y[2], ldy, ys);
                        }
                    }
                    dpep_linear_set_offload(NULL);
                    EXPECT(!dpep_linear_offloading(), "a removed table is not offloading");
                    EXPECT(f.batched_calls == 1 && f.nt_calls == (nt ? 1 : 0),
                           "%s offload %s: entries saw %d batched / %d nt calls", table,
                           nt ? "nt" : "nn", f.batched_calls, f.nt_calls);
                    EXPECT(memcmp(Y[0], Y[1], sizeof(float) * (size_t)M * ldy) == 0,
                           "%s offload (%s) %s %s M=%d: batched differs", table,
                           take ? "taken" : "declined", nt ? "nt" : "nn",
                           dpep_wtype_name((dpep_wtype)t), M);
                    bool same = true;
                    for (int m = 0; m < M; m++)
                        same = same && memcmp(Y[0] + (size_t)m * ldy, Y[3] + (size_t)m * ldy,
                                              sizeof(float) * (size_t)N) == 0;
                    EXPECT(same, "%s offload (%s) %s M=%d: the single product differs", table,
                           take ? "taken" : "declined", nt ? "nt" : "nn", M);
                }
                free(X);
                for (int c = 0; c < 4; c++) free(Y[c]);
                free(ref);
                wbuf_free(&w);
            }
}

static void run_table(const char *table, bool blas_pass)
{
    char name[64];
    test_widen(table);
    test_gather(table);
    test_products(table);
    test_split(table);
    test_invariance(table);
    test_page_streams(table);
    test_m1_order(table);
    test_bf16_split(table);
    test_cols(table);
    test_batched(table);
    if (blas_pass) { /* the BLAS path uses only the table's widen */
        force_small_m(0);
        snprintf(name, sizeof name, "%s/all-blas", table);
        test_products(name);
        test_split(name);
    }
    force_small_m(INT_MAX);
    snprintf(name, sizeof name, "%s/all-stream", table);
    test_products(name);
    test_split(name);
    test_invariance(name);
    test_cols(name);
    test_batched(name);
    force_small_m(-1);
}

/* FP8 matrices are kept on GPUs only: a CPU product, widen or gather given
 * one writes NaN (not misread bytes); the type's size and name; an FP8 row
 * view's scales follow the rows. */
static void test_fp8_refused(void)
{
    static unsigned char w8[200 * 3];
    for (int i = 0; i < 200 * 3; i++) w8[i] = (unsigned char)(0x30 + i % 16);
    float scale[2] = {2, 3};
    dpep_mat W = dpep_mat_make(w8, DPEP_WT_FP8, 200, 3);
    W.scale = scale;
    W.sld = 1;
    float x[2 * 3] = {1, 2, 3, 4, 5, 6}, y[2 * 200];
    dpep_linear_nt(2, x, 3, &W, 0.0f, y, 200);
    bool nan = true;
    for (int i = 0; i < 2 * 200; i++) nan = nan && isnan(y[i]);
    float wd[3];
    dpep_linear_widen(w8, DPEP_WT_FP8, 3, wd);
    nan = nan && isnan(wd[0]) && isnan(wd[2]);
    dpep_mat v = dpep_mat_rows(W, 130, 2); /* (a view past a block: scales follow) */
    EXPECT(nan && dpep_wtype_size(DPEP_WT_FP8) == 1 && strcmp(dpep_wtype_name(DPEP_WT_FP8), "fp8") == 0 &&
               v.scale == scale + 1 && v.sr0 == 2 && v.p == (void *)(w8 + 130 * 3),
           "fp8 on the cpu: NaN output, size 1, name fp8, row views move their scales");
}

int main(void)
{
    test_fp8_refused();
    printf("kernels: %s; small-M crossover f32 %d, bf16/f16 %d\n", dpep_linear_isa(),
           dpep_linear_small_m(DPEP_WT_F32), dpep_linear_small_m(DPEP_WT_BF16));
    test_conversions();

    /* before any reserve: the BLAS path's stack panel (and the kernels when
     * K is longer than it) */
    dpep_linear_force_generic(false);
    set_threads(2);
    for (int t = 0; t < DPEP_WT_CPU_COUNT; t++)
        for (int form = 0; form < 2; form++) {
            double e = run_case(form == 0, (dpep_wtype)t, 33, 100, 2049, 1, 2, 0.0f, 0, NULL);
            double e2 = run_case(form == 0, (dpep_wtype)t, 33, 100, 500, 1, 2, 1.0f, 1, NULL);
            EXPECT(e <= TOL && e2 <= TOL, "unreserved %s %s: rel err %.3g %.3g",
                   form == 0 ? "nt" : "nn", dpep_wtype_name((dpep_wtype)t), e, e2);
        }
    EXPECT(dpep_linear_reserve(4096, 4096, 0), "dpep_linear_reserve failed");

    const char *best = dpep_linear_isa();
    if (strcmp(best, "generic") != 0)
        run_table(best, true);
    else
        printf("this CPU runs the generic kernels only\n");
    /* the narrower x86 table too where the CPU also runs a wider one */
    if (strcmp(best, "avx512") == 0) {
        EXPECT(dpep_linear_force_isa("avx2"), "an AVX-512 CPU runs the AVX2 table");
        EXPECT(strcmp(dpep_linear_isa(), "avx2") == 0, "forced avx2: isa is %s", dpep_linear_isa());
        run_table("avx2", false);
        EXPECT(dpep_linear_force_isa(NULL), "back to the choice");
        EXPECT(strcmp(dpep_linear_isa(), best) == 0, "the choice again: %s", dpep_linear_isa());
    }
    EXPECT(!dpep_linear_force_isa("no-such-isa"), "an unknown table is refused");
    {
        const char *m1 = dpep_linear_m1_order();
        EXPECT(!strcmp(m1, "rows") || !strcmp(m1, "streams"), "M = 1 order %s", m1);
        EXPECT(!dpep_linear_force_m1_order("diagonal"), "an unknown M = 1 order is refused");
        EXPECT(strcmp(dpep_linear_m1_order(), m1) == 0, "a refused order changes nothing");
        EXPECT(dpep_linear_force_m1_order("streams") &&
                   strcmp(dpep_linear_m1_order(), "streams") == 0, "forced streams");
        EXPECT(dpep_linear_force_m1_order(NULL) && strcmp(dpep_linear_m1_order(), m1) == 0,
               "back to the choice: %s", dpep_linear_m1_order());
    }
    dpep_linear_force_generic(true);
    EXPECT(strcmp(dpep_linear_isa(), "generic") == 0, "force_generic: isa is %s",
           dpep_linear_isa());
    run_table("generic", strcmp(best, "generic") == 0);
    dpep_linear_force_generic(false);

    dpep_linear_stats st;
    dpep_linear_get_stats(&st);
    printf("stats: small %lld calls %.3g MB, blas %lld calls %.3g MB\n", (long long)st.small_calls,
           st.small_bytes / 1e6, (long long)st.blas_calls, st.blas_bytes / 1e6);
    EXPECT(st.small_calls > 0 && st.blas_calls > 0, "both paths were not taken");
    return dpep_test_summary();
}
