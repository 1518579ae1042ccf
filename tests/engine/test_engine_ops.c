/* test_engine_ops.c — the engine's CUDA ops table against its CPU table, in
 * the style of ggml's test-backend-ops: fresh random inputs (never zero),
 * device outputs poisoned with 0xFF bytes (NaN) before each run, normalized
 * error ||out - ref|| / ||ref|| against a threshold per op, awkward sizes.
 *
 * Thresholds (fp32 everywhere):
 *   embed, add   0      a gather and one IEEE add per element: bit-equal
 *   rmsnorm      1e-5   fp32 tree sum on the GPU vs double sum on the CPU
 *   lm_head      1e-5   SGEMM with TF32 off, K <= 1024: the difference is
 *                       summation order, ~sqrt(K) * 6e-8 relative; TF32 would
 *                       give ~1e-3, so this bound also proves it is off
 *   sample       greedy ids equal (ties to the lowest id); stochastic ids
 *                equal for the same streams over a grid of temperature,
 *                top-k, top-p, min-p, vocab 1..129280 and 0..300 rows,
 *                except draws within 1e-6 * sum of a cumulative boundary of
 *                the CPU's weights (counted, printed, at most 1 in 1000);
 *                log-probs within 1e-5 absolute; rng states equal after;
 *                one row drawn 32768 times: chi-square against the CPU's
 *                filtered distribution, nothing outside its kept set.
 * Without a GPU (or a build without CUDA) it first checks the harness, the
 * CPU table against naive double references and (CUDA builds) the device
 * sampler's algorithm run on the host against the CPU sampler, then prints
 * "SKIP: why" and exits 77. */
#include "dpep_engine.h"
#include "dpep_test.h"
#include "dpep_test_device.h"
#ifdef DPEP_HAVE_CUDA
#include "engine_cuda.h" /* the CUDA sampler and its host model */
#endif
#include "dpep_world.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define TOL_F32 1e-5
#define TOL_LOGPROB 1e-5

/* ------------------------------------------------------------------------ */
/* Inputs                                                                   */
/* ------------------------------------------------------------------------ */
static uint64_t g_rng = 0x243f6a8885a308d3ull;

/* Uniform in [-1, -0.05] U [0.05, 1]: never zero, so an op that leaves its
 * output untouched or zeroed cannot pass. */
static float rnd(void)
{
    double m = 0.05 + 0.95 * dpep_rng_uniform(&g_rng);
    return (float)(dpep_rng_uniform(&g_rng) < 0.5 ? -m : m);
}

static float *rnd_vec(size_t n, float scale)
{
    float *x = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++) x[i] = scale * rnd();
    return x;
}

/* ||out - ref|| / ||ref||; INFINITY when out has a non-finite value (the
 * poison left in place); 0 for empty vectors. */
static double nerr(const float *out, const float *ref, size_t n)
{
    double d = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(out[i])) return INFINITY;
        d += ((double)out[i] - ref[i]) * ((double)out[i] - ref[i]);
        r += (double)ref[i] * ref[i];
    }
    if (n == 0) return 0;
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

/* ------------------------------------------------------------------------ */
/* Device buffers: tests/dpep_test_device.h (g_tdev, dtest_*)               */
/* ------------------------------------------------------------------------ */
/* The poison byte still in place (the op wrote nothing where it must not). */
static bool dev_still_poisoned(const void *p)
{
    unsigned char b = 0;
    dtest_down(&b, p, 1);
    return b == 0xFF;
}

/* ------------------------------------------------------------------------ */
/* Ops, each: inputs, CPU reference, CUDA run, compare                      */
/* ------------------------------------------------------------------------ */
static const dpep_engine_ops *g_cpu, *g_cuda;

static void test_embed(int vocab, int hidden, int64_t n, bool ids_on_device)
{
    size_t tb = sizeof(float) * (size_t)vocab * hidden, hb = sizeof(float) * (size_t)n * hidden;
    float *table = rnd_vec((size_t)vocab * hidden, 1.0f);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    for (int64_t t = 0; t < n; t++) ids[t] = (int32_t)(dpep_rng_uniform(&g_rng) * vocab);
    if (n > 1) ids[n - 1] = vocab - 1; /* the last row of the table */
    float *ref = rnd_vec((size_t)n * hidden, 1.0f), *out = malloc(hb ? hb : 1);
    const dpep_mat tm = dpep_mat_make(table, DPEP_WT_F32, vocab, hidden);
    g_cpu->embed(&tm, ids, n, ref);

    float *d_table = dtest_up(table, tb), *d_h = dtest_up(NULL, hb);
    int32_t *d_ids = ids_on_device ? dtest_up(ids, sizeof(int32_t) * (size_t)n) : NULL;
    dtest_poison(d_h, hb);
    const dpep_mat dtm = dpep_mat_make(d_table, DPEP_WT_F32, vocab, hidden);
    g_cuda->embed(&dtm, ids_on_device ? d_ids : ids, n, d_h);
    dtest_down(out, d_h, hb);
    double e = nerr(out, ref, (size_t)n * hidden);
    EXPECT(e == 0, "embed vocab %d hidden %d n %lld ids on %s: error %g (want 0)", vocab, hidden,
           (long long)n, ids_on_device ? "device" : "host", e);
    if (n == 0) EXPECT(dev_still_poisoned(d_h), "embed n 0 wrote its output");
    printf("  embed    vocab %5d hidden %4d n %3lld ids %-6s  err %.3g\n", vocab, hidden, (long long)n,
           ids_on_device ? "device" : "host", e);
    dtest_free(d_table);
    dtest_free(d_h);
    dtest_free(d_ids);
    free(table), free(ids), free(ref), free(out);
}

static void test_rmsnorm(int64_t rows, int n, float scale)
{
    size_t xb = sizeof(float) * (size_t)rows * n;
    float *x = rnd_vec((size_t)rows * n, scale), *g = rnd_vec((size_t)n, 1.0f);
    float *ref = rnd_vec((size_t)rows * n, 1.0f), *out = malloc(xb ? xb : 1);
    const double eps = 1e-6;
    g_cpu->rmsnorm(x, g, rows, n, eps, ref);

    float *d_x = dtest_up(x, xb), *d_g = dtest_up(g, sizeof(float) * (size_t)n), *d_y = dtest_up(NULL, xb);
    dtest_poison(d_y, xb);
    g_cuda->rmsnorm(d_x, d_g, rows, n, eps, d_y);
    dtest_down(out, d_y, xb);
    double e = nerr(out, ref, (size_t)rows * n);
    EXPECT(e <= TOL_F32, "rmsnorm rows %lld n %d scale %g: error %g > %g", (long long)rows, n, scale,
           e, TOL_F32);
    if (rows == 0) EXPECT(dev_still_poisoned(d_y), "rmsnorm rows 0 wrote its output");
    printf("  rmsnorm  rows %4lld n %5d scale %-6g           err %.3g\n", (long long)rows, n, scale, e);
    dtest_free(d_x);
    dtest_free(d_g);
    dtest_free(d_y);
    free(x), free(g), free(ref), free(out);
}

static void test_add(int64_t n)
{
    size_t b = sizeof(float) * (size_t)n;
    float *h = rnd_vec((size_t)n, 1.0f), *x = rnd_vec((size_t)n, 1.0f), *out = malloc(b ? b : 1);
    float *d_h = dtest_up(h, b), *d_x = dtest_up(x, b);
    g_cpu->add(h, x, n); /* h is now the reference */
    g_cuda->add(d_h, d_x, n);
    dtest_down(out, d_h, b);
    double e = nerr(out, h, (size_t)n);
    EXPECT(e == 0, "add n %lld: error %g (want 0)", (long long)n, e);
    printf("  add      n %8lld                             err %.3g\n", (long long)n, e);
    dtest_free(d_h);
    dtest_free(d_x);
    free(h), free(x), free(out);
}

static void test_lm_head(int64_t rows, int vocab, int hidden)
{
    size_t xb = sizeof(float) * (size_t)rows * hidden, wb = sizeof(float) * (size_t)vocab * hidden;
    size_t lb = sizeof(float) * (size_t)rows * vocab;
    float *x = rnd_vec((size_t)rows * hidden, 1.0f), *w = rnd_vec((size_t)vocab * hidden, 0.1f);
    float *ref = rnd_vec((size_t)rows * vocab, 1.0f), *out = malloc(lb ? lb : 1);
    const dpep_mat wm = dpep_mat_make(w, DPEP_WT_F32, vocab, hidden);
    if (rows > 0) g_cpu->lm_head(x, rows, &wm, ref);

    float *d_x = dtest_up(x, xb), *d_w = dtest_up(w, wb), *d_l = dtest_up(NULL, lb);
    dtest_poison(d_l, lb);
    const dpep_mat dwm = dpep_mat_make(d_w, DPEP_WT_F32, vocab, hidden);
    g_cuda->lm_head(d_x, rows, &dwm, d_l);
    dtest_down(out, d_l, lb);
    double e = nerr(out, ref, (size_t)rows * vocab);
    EXPECT(e <= TOL_F32, "lm_head rows %lld vocab %d hidden %d: error %g > %g", (long long)rows,
           vocab, hidden, e, TOL_F32);
    if (rows == 0) EXPECT(dev_still_poisoned(d_l), "lm_head rows 0 wrote its output");
    printf("  lm_head  rows %4lld vocab %5d hidden %4d        err %.3g\n", (long long)rows, vocab,
           hidden, e);
    dtest_free(d_x);
    dtest_free(d_w);
    dtest_free(d_l);
    free(x), free(w), free(ref), free(out);
}

/* ------------------------------------------------------------------------ */
/* Sampling                                                                 */
/* ------------------------------------------------------------------------ */
/* The device's ids equal the CPU's except when the draw lies within
 * SAMPLE_EPS * sum of a cumulative boundary of the CPU's filtered weights
 * (sample_cuda.cu, "Agreement with the CPU": one fp32 ulp of a weight where
 * the device's exp and glibc's expf differ, and fixed-point rounding). Such
 * draws are counted and printed; they must be rare (SAMPLE_NEAR_PER_DRAW). */
#define SAMPLE_EPS 1e-6
#define SAMPLE_NEAR_PER_DRAW 1e-3

typedef void (*sample_fn)(const float *logits, int n, int vocab, const dpep_sampling *const *sp,
                          uint64_t *const *rng, float *scratch, int32_t *ids, double *logprob);

/* Sampling parameters by row kind (the CPU checks below). */
static const dpep_sampling SP_GREEDY = {.temperature = 0.0f, .top_p = 1.0f, .seed = 1};

static int cmp_desc(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x < y) - (x > y);
}

/* The CPU's final weights for one row: sample_cpu.c's steps with the same
 * fp32 operations (top-k by a sort here), w[i] = 0 where filtered; returns
 * their sum in id order, as the CPU's draw uses it. tmp: vocab floats. */
static double ref_weights(const float *row, int vocab, const dpep_sampling *s, float *w, float *tmp)
{
    float cut = -INFINITY, mx = row[0];
    for (int i = 1; i < vocab; i++) mx = row[i] > mx ? row[i] : mx;
    if (s->top_k > 0 && s->top_k < vocab) {
        memcpy(tmp, row, sizeof(float) * (size_t)vocab);
        qsort(tmp, (size_t)vocab, sizeof(float), cmp_desc);
        cut = tmp[s->top_k - 1];
    }
    double sum = 0;
    for (int i = 0; i < vocab; i++) {
        w[i] = row[i] >= cut ? expf((row[i] - mx) / s->temperature) : 0.0f;
        sum += w[i];
    }
    if (s->top_p > 0.0f && s->top_p < 1.0f) {
        double target = s->top_p * sum, lo = 0, hi = 1.0;
        for (int it = 0; it < 40; it++) {
            double mid = 0.5 * (lo + hi), mass = 0;
            for (int i = 0; i < vocab; i++)
                if (w[i] >= mid) mass += w[i];
            if (mass >= target) lo = mid;
            else hi = mid;
        }
        sum = 0;
        for (int i = 0; i < vocab; i++) {
            if (w[i] < lo) w[i] = 0.0f;
            sum += w[i];
        }
    }
    if (s->min_p > 0.0f) {
        sum = 0;
        for (int i = 0; i < vocab; i++) {
            if (w[i] < s->min_p) w[i] = 0.0f;
            sum += w[i];
        }
    }
    return sum;
}

/* The CPU's draw over those weights with uniform u. */
static int ref_pick(const float *w, int vocab, double sum, double u)
{
    double x = u * sum, acc = 0;
    int last = 0;
    for (int i = 0; i < vocab; i++) {
        if (w[i] <= 0.0f) continue;
        acc += w[i];
        last = i;
        if (x < acc) return i;
    }
    return last;
}

/* The CPU drew c, the device d != c: true when d is one of the CPU's
 * candidates and u * sum lies within SAMPLE_EPS * sum of the cumulative
 * boundary between them (the end of d when d < c, its start when d > c). */
static bool near_boundary(const float *w, int vocab, double sum, double u, int c, int d)
{
    if (d < 0 || d >= vocab || c < 0 || c >= vocab || !(w[d] > 0.0f)) return false;
    double x = u * sum, acc = 0, start = 0;
    for (int i = 0; i <= d; i++) {
        if (i == d) start = acc;
        if (w[i] > 0.0f) acc += w[i];
    }
    return d < c ? x - acc <= SAMPLE_EPS * sum : start - x <= SAMPLE_EPS * sum;
}

/* Settings of one row over the grid of the tests: NULL, greedy, and
 * temperature 0.3..2 with top_k 0/1/5/50/vocab-1/vocab, top_p 0.1..1 and
 * min_p 0..0.3 in combinations. */
static const dpep_sampling *gen_sampling(dpep_sampling *s, int vocab, uint64_t *g)
{
    static const float temps[] = {0.3f, 0.7f, 1.0f, 2.0f};
    static const float top_ps[] = {1.0f, 0.1f, 0.5f, 0.9f, 0.99f};
    static const float min_ps[] = {0.0f, 0.0f, 0.05f, 0.3f};
    const int top_ks[] = {0, 0, 1, 5, 50, vocab - 1, vocab};
    double r = dpep_rng_uniform(g);
    if (r < 0.06) return NULL;
    memset(s, 0, sizeof *s);
    s->top_p = 1.0f;
    s->seed = (uint64_t)(dpep_rng_uniform(g) * 1e9);
    if (r < 0.12) return s; /* temperature 0: greedy */
    int a = (int)(dpep_rng_uniform(g) * 5), b = (int)(dpep_rng_uniform(g) * 7);
    int c = (int)(dpep_rng_uniform(g) * 6), d = (int)(dpep_rng_uniform(g) * 5);
    s->temperature = a < 4 ? temps[a] : (float)(0.3 + 1.7 * dpep_rng_uniform(g));
    s->top_k = top_ks[b];
    s->top_p = c < 5 ? top_ps[c] : (float)(0.1 + 0.9 * dpep_rng_uniform(g));
    s->min_p = d < 4 ? min_ps[d] : (float)(0.3 * dpep_rng_uniform(g));
    return s;
}

/* Logits of one row by style: 0 uniform * 4, 1 a random scale in 1..12,
 * 2 multiples of 0.5 (many ties, also at the top-k cut), 3 the maximum at
 * two ids (vocab/3 and the last; the lower must win greedy rows). */
static void gen_row(float *row, int vocab, int style, uint64_t *g)
{
    float scale = style == 1 ? (float)(1.0 + 11.0 * dpep_rng_uniform(g)) : 4.0f;
    for (int j = 0; j < vocab; j++) {
        float v = scale * (float)(2.0 * dpep_rng_uniform(g) - 1.0);
        row[j] = style == 2 ? 0.5f * rintf(2.0f * v) : v;
    }
    if (style == 3 && vocab >= 3) {
        row[vocab / 3] = row[vocab - 1] = 30.0f; /* above every random value */
        row[0] = 29.0f;
    }
}

static long g_draws, g_near; /* stochastic rows compared; of them within eps */

/* n rows of one style through `fn` (the CUDA sampler on device logits)
 * against the CPU table with the same streams. */
static void test_sample(sample_fn fn, const char *who, int n, int vocab, int style)
{
    uint64_t g = 0x5eed0000ull + (uint64_t)n * 131 + (uint64_t)vocab * 7 + (uint64_t)style;
    size_t rows = (size_t)(n ? n : 1), lb = sizeof(float) * (size_t)n * vocab;
    float *logits = malloc(lb ? lb : 1);
    dpep_sampling *spv = malloc(sizeof(*spv) * rows);
    const dpep_sampling **sp = malloc(sizeof(*sp) * rows);
    uint64_t *st0 = malloc(sizeof(uint64_t) * rows), *st_cpu = malloc(sizeof(uint64_t) * rows);
    uint64_t *st_dev = malloc(sizeof(uint64_t) * rows);
    uint64_t **r_cpu = malloc(sizeof(*r_cpu) * rows), **r_dev = malloc(sizeof(*r_dev) * rows);
    for (int i = 0; i < n; i++) {
        gen_row(logits + (size_t)i * vocab, vocab, style, &g);
        sp[i] = gen_sampling(&spv[i], vocab, &g);
        st0[i] = st_cpu[i] = st_dev[i] = dpep_rng_seed(1000 + (uint64_t)i * 7919 + (uint64_t)vocab);
        r_cpu[i] = &st_cpu[i];
        r_dev[i] = &st_dev[i];
    }
    float *scratch = malloc(sizeof(float) * 2 * (size_t)vocab);
    int32_t *id_ref = malloc(sizeof(int32_t) * rows), *id_out = malloc(sizeof(int32_t) * rows);
    double *lp_ref = malloc(sizeof(double) * rows), *lp_out = malloc(sizeof(double) * rows);
    g_cpu->sample(logits, n, vocab, sp, r_cpu, scratch, id_ref, lp_ref);

    float *d_l = dtest_up(logits, lb);
    for (int i = 0; i < n; i++) id_out[i] = 0x7fffffff, lp_out[i] = NAN; /* host poison */
    fn(d_l, n, vocab, sp, r_dev, scratch, id_out, lp_out);
    int bad_id = 0, bad_lp = 0, bad_rng = 0, near = 0, draws = 0;
    double worst = 0;
    for (int i = 0; i < n; i++) {
        const float *row = logits + (size_t)i * vocab;
        bad_rng += st_cpu[i] != st_dev[i];
        if (!sp[i]) {
            bad_id += id_out[i] != -1;
            bad_lp += lp_out[i] != 0;
            continue;
        }
        bool greedy = sp[i]->temperature <= 0.0f || sp[i]->top_k == 1;
        draws += !greedy;
        if (id_out[i] != id_ref[i]) {
            uint64_t s = st0[i];
            double u = dpep_rng_uniform(&s);
            double sum = greedy ? 0 : ref_weights(row, vocab, sp[i], scratch, scratch + vocab);
            if (!greedy && near_boundary(scratch, vocab, sum, u, id_ref[i], id_out[i])) {
                near++;
            } else {
                bad_id++;
                printf("  row %d (T %g k %d p %g min_p %g u %.17g): id %d, CPU %d\n", i,
                       sp[i]->temperature, sp[i]->top_k, sp[i]->top_p, sp[i]->min_p, u, id_out[i],
                       id_ref[i]);
            }
        }
        if (id_out[i] < 0 || id_out[i] >= vocab) {
            bad_lp++;
            continue;
        }
        double d = fabs(lp_out[i] - dpep_logprob(row, vocab, id_out[i]));
        if (!(d <= worst)) worst = isfinite(d) ? d : INFINITY;
        bad_lp += !(d <= TOL_LOGPROB);
    }
    g_draws += draws;
    g_near += near;
    EXPECT(bad_id == 0, "sample %s n %d vocab %d style %d: %d ids differ from the CPU's", who, n,
           vocab, style, bad_id);
    EXPECT(near <= 1 + SAMPLE_NEAR_PER_DRAW * draws,
           "sample %s n %d vocab %d style %d: %d of %d draws within eps of a boundary", who, n, vocab,
           style, near, draws);
    EXPECT(bad_lp == 0, "sample %s n %d vocab %d: %d log-probs off by > %g (worst %g)", who, n,
           vocab, bad_lp, TOL_LOGPROB, worst);
    EXPECT(bad_rng == 0, "sample %s n %d vocab %d: %d rng streams differ after", who, n, vocab,
           bad_rng);
    printf("  sample   %-6s n %3d vocab %6d style %d  draws %3d near %d  logprob err %.3g\n", who, n,
           vocab, style, draws, near, worst);
    dtest_free(d_l);
    free(logits), free(spv), free(sp), free(st0), free(st_cpu), free(st_dev), free(r_cpu);
    free(r_dev), free(scratch), free(id_ref), free(id_out), free(lp_ref), free(lp_out);
}

/* Pearson chi-square of counts against weights w/sum (bins with expected
 * count < 5 pooled; a draw where w is 0 counts as out-of-set), and the
 * 6-sigma bound dof + 6 sqrt(2 dof). */
static void check_distribution(const char *who, const long *count, long draws, const float *w,
                               int vocab, double sum, const dpep_sampling *s)
{
    double chi2 = 0, pool_e = 0, pool_o = 0, tv = 0;
    long outside = 0;
    int dof = -1;
    for (int i = 0; i < vocab; i++) {
        double e = draws * (double)w[i] / sum;
        tv += fabs((double)count[i] / draws - (double)w[i] / sum);
        if (w[i] <= 0.0f) {
            outside += count[i];
            continue;
        }
        if (e < 5) {
            pool_e += e, pool_o += (double)count[i];
            continue;
        }
        chi2 += ((double)count[i] - e) * ((double)count[i] - e) / e;
        dof++;
    }
    if (pool_e > 0) {
        chi2 += (pool_o - pool_e) * (pool_o - pool_e) / (pool_e > 1 ? pool_e : 1);
        dof++;
    }
    if (dof < 1) dof = 1;
    double bound = dof + 6 * sqrt(2.0 * dof);
    EXPECT(outside == 0, "distribution %s: %ld draws outside the CPU's kept set", who, outside);
    EXPECT(chi2 <= bound, "distribution %s (T %g k %d p %g min_p %g): chi2 %.1f > %.1f (dof %d)", who,
           s->temperature, s->top_k, s->top_p, s->min_p, chi2, bound, dof);
    printf("  distribution %-6s T %-4g k %-3d p %-4g min_p %-4g  %ld draws  chi2 %.1f (dof %d, "
           "bound %.1f)  TV %.4f\n",
           who, s->temperature, s->top_k, s->top_p, s->min_p, draws, chi2, dof, bound, tv / 2);
}

static const dpep_sampling SP_DIST[2] = {
    {.temperature = 0.8f, .top_k = 50, .top_p = 0.9f, .seed = 3, .min_p = 0.05f},
    {.temperature = 1.5f, .top_k = 0, .top_p = 0.95f, .seed = 4, .min_p = 0.0f},
};
#define DIST_VOCAB 1000
#define DIST_ROWS 4096
#define DIST_CALLS 8

/* One row drawn DIST_ROWS x DIST_CALLS times (a stream per draw) by the
 * device against the CPU's filtered distribution. */
static void test_sample_distribution(sample_fn fn, const char *who, const dpep_sampling *s)
{
    uint64_t g = 0xd157ull;
    float *row = malloc(sizeof(float) * DIST_VOCAB), *w = malloc(sizeof(float) * 2 * DIST_VOCAB);
    gen_row(row, DIST_VOCAB, 0, &g);
    double sum = ref_weights(row, DIST_VOCAB, s, w, w + DIST_VOCAB);
    float *logits = malloc(sizeof(float) * (size_t)DIST_ROWS * DIST_VOCAB);
    for (int i = 0; i < DIST_ROWS; i++) memcpy(logits + (size_t)i * DIST_VOCAB, row, sizeof(float) * DIST_VOCAB);
    float *d_l = dtest_up(logits, sizeof(float) * (size_t)DIST_ROWS * DIST_VOCAB);
    const dpep_sampling **sp = malloc(sizeof(*sp) * DIST_ROWS);
    uint64_t *st = malloc(sizeof(uint64_t) * DIST_ROWS), **rr = malloc(sizeof(*rr) * DIST_ROWS);
    int32_t *ids = malloc(sizeof(int32_t) * DIST_ROWS);
    double *lp = malloc(sizeof(double) * DIST_ROWS);
    float *scratch = malloc(sizeof(float) * 2 * DIST_VOCAB);
    long *count = calloc(DIST_VOCAB, sizeof(long)), bad = 0;
    for (int i = 0; i < DIST_ROWS; i++) {
        sp[i] = s;
        st[i] = dpep_rng_seed(77 + (uint64_t)i);
        rr[i] = &st[i];
    }
    for (int c = 0; c < DIST_CALLS; c++) { /* the streams go on from call to call */
        fn(d_l, DIST_ROWS, DIST_VOCAB, sp, rr, scratch, ids, lp);
        for (int i = 0; i < DIST_ROWS; i++) {
            if (ids[i] < 0 || ids[i] >= DIST_VOCAB) bad++;
            else count[ids[i]]++;
        }
    }
    EXPECT(bad == 0, "distribution %s: %ld ids out of range", who, bad);
    check_distribution(who, count, (long)DIST_ROWS * DIST_CALLS, w, DIST_VOCAB, sum, s);
    dtest_free(d_l);
    free(row), free(w), free(logits), free(sp), free(st), free(rr), free(ids), free(lp);
    free(scratch), free(count);
}

#ifdef DPEP_HAVE_CUDA
/* Without a GPU: the device's algorithm (its host model in sample_cuda.cu:
 * the same keys, radix digits, fixed point, replayed bisection and integer
 * draw) against the CPU sampler over the settings grid, and the test's own
 * reference (ref_weights, ref_pick) against the CPU, draw for draw. */
static void check_sample_model(void)
{
    const int vocabs[] = {1, 5, 1000, 32000, 129280}, rows[] = {40, 500, 1500, 200, 12};
    long draws = 0, near = 0, bad = 0, bad_ref = 0;
    for (int v = 0; v < 5; v++) {
        int vocab = vocabs[v];
        float *row = malloc(sizeof(float) * (size_t)vocab), *w = malloc(sizeof(float) * 2 * (size_t)vocab);
        float *scratch = malloc(sizeof(float) * 2 * (size_t)vocab);
        uint64_t g = 0xab5eull + (uint64_t)vocab;
        for (int i = 0; i < rows[v]; i++) {
            dpep_sampling spv;
            gen_row(row, vocab, i % 4, &g);
            const dpep_sampling *sp = gen_sampling(&spv, vocab, &g);
            if (!sp) continue;
            uint64_t s_cpu = dpep_rng_seed((uint64_t)i), s_u = s_cpu;
            int c = dpep_sample(row, vocab, sp, &s_cpu, scratch);
            bool greedy = sp->temperature <= 0.0f || sp->top_k == 1;
            double u = greedy ? 0.0 : dpep_rng_uniform(&s_u);
            EXPECT(s_u == s_cpu, "model vocab %d row %d: the CPU's stream moved differently", vocab, i);
            int d = dpep_engine_cuda_sample_model(row, vocab, sp, u, scratch);
            if (greedy) {
                bad += d != c;
                continue;
            }
            draws++;
            double sum = ref_weights(row, vocab, sp, w, w + vocab);
            if (ref_pick(w, vocab, sum, u) != c) bad_ref++;
            if (d == c) continue;
            if (near_boundary(w, vocab, sum, u, c, d)) {
                near++;
            } else {
                bad++;
                printf("  model vocab %d row %d (T %g k %d p %g min_p %g u %.17g): id %d, CPU %d\n",
                       vocab, i, sp->temperature, sp->top_k, sp->top_p, sp->min_p, u, d, c);
            }
        }
        free(row), free(w), free(scratch);
    }
    EXPECT(bad_ref == 0, "the test's CPU reference differs from dpep_sample in %ld draws", bad_ref);
    EXPECT(bad == 0, "the device's algorithm (host model) differs from the CPU in %ld rows", bad);
    EXPECT(near <= 1 + SAMPLE_NEAR_PER_DRAW * draws, "model: %ld of %ld draws within eps", near, draws);
    printf("sample model vs CPU: %ld draws, %ld within %g of a boundary, %ld other differences\n",
           draws, near, SAMPLE_EPS, bad);

    /* the model's distribution over many uniforms */
    for (int k = 0; k < 2; k++) {
        uint64_t g = 0xd157ull, st = dpep_rng_seed(5);
        float *row = malloc(sizeof(float) * DIST_VOCAB), *w = malloc(sizeof(float) * 2 * DIST_VOCAB);
        float *p = malloc(sizeof(float) * DIST_VOCAB);
        long *count = calloc(DIST_VOCAB, sizeof(long)), n = (long)DIST_ROWS * DIST_CALLS;
        gen_row(row, DIST_VOCAB, 0, &g);
        double sum = ref_weights(row, DIST_VOCAB, &SP_DIST[k], w, w + DIST_VOCAB);
        for (long i = 0; i < n; i++)
            count[dpep_engine_cuda_sample_model(row, DIST_VOCAB, &SP_DIST[k], dpep_rng_uniform(&st), p)]++;
        check_distribution("model", count, n, w, DIST_VOCAB, sum, &SP_DIST[k]);
        free(row), free(w), free(p), free(count);
    }
}
#endif

/* ------------------------------------------------------------------------ */
/* Without a GPU: the harness and the CPU table against naive references    */
/* ------------------------------------------------------------------------ */
static void check_host_side(void)
{
    /* nerr: zero on equal, INFINITY on the poison, scale-free. */
    float a[3] = {1, -2, 3}, b[3] = {1, -2, 3}, nan3[3];
    memset(nan3, 0xFF, sizeof nan3);
    EXPECT(nerr(a, b, 3) == 0, "nerr of equal vectors");
    EXPECT(isinf(nerr(nan3, a, 3)), "nerr does not catch 0xFF poison");
    b[2] = 3.5f;
    EXPECT(fabs(nerr(b, a, 3) - 0.5 / sqrt(14.0)) < 1e-12, "nerr value");
    for (int i = 0; i < 1000; i++) {
        float v = rnd();
        if (!(fabsf(v) >= 0.05f && fabsf(v) <= 1.0f)) {
            EXPECT(0, "rnd() gave %g, outside [-1,-0.05] U [0.05,1]", v);
            break;
        }
    }
    /* CPU rmsnorm and lm_head vs double references at awkward sizes. */
    const int ns[] = {1, 7, 129};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        int n = ns[k], rows = 3, vocab = 5;
        float *x = rnd_vec((size_t)rows * n, 1.0f), *g = rnd_vec((size_t)n, 1.0f);
        float *y = rnd_vec((size_t)rows * n, 1.0f), *yr = malloc(sizeof(float) * (size_t)rows * n);
        g_cpu->rmsnorm(x, g, rows, n, 1e-6, y);
        for (int r = 0; r < rows; r++) {
            double ss = 0;
            for (int j = 0; j < n; j++) ss += (double)x[r * n + j] * x[r * n + j];
            for (int j = 0; j < n; j++) yr[r * n + j] = (float)(x[r * n + j] / sqrt(ss / n + 1e-6) * g[j]);
        }
        double e = nerr(y, yr, (size_t)rows * n);
        EXPECT(e <= TOL_F32, "cpu rmsnorm n %d vs double: %g", n, e);
        float *w = rnd_vec((size_t)vocab * n, 0.1f), *l = rnd_vec((size_t)rows * vocab, 1.0f);
        float *lr = malloc(sizeof(float) * (size_t)rows * vocab);
        const dpep_mat wm = dpep_mat_make(w, DPEP_WT_F32, vocab, n);
        g_cpu->lm_head(x, rows, &wm, l);
        for (int r = 0; r < rows; r++)
            for (int v = 0; v < vocab; v++) {
                double s = 0;
                for (int j = 0; j < n; j++) s += (double)x[r * n + j] * w[v * n + j];
                lr[r * vocab + v] = (float)s;
            }
        e = nerr(l, lr, (size_t)rows * vocab);
        EXPECT(e <= TOL_F32, "cpu lm_head hidden %d vs double: %g", n, e);
        free(x), free(g), free(y), free(yr), free(w), free(l), free(lr);
    }
    /* CPU sampling: ties to the lowest id; NULL rows give -1 and 0. */
    float row[6] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f, 2.0f}, scratch[12];
    const dpep_sampling *sp[2] = {&SP_GREEDY, NULL};
    uint64_t s0 = dpep_rng_seed(1), s1 = s0, *rr[2] = {&s0, &s1};
    int32_t ids[2];
    double lp[2];
    float rows2[12];
    memcpy(rows2, row, sizeof row);
    memcpy(rows2 + 6, row, sizeof row);
    g_cpu->sample(rows2, 2, 6, sp, rr, scratch, ids, lp);
    EXPECT(ids[0] == 1, "cpu greedy tie: id %d, want 1", ids[0]);
    EXPECT(ids[1] == -1 && lp[1] == 0, "cpu NULL row: %d %g", ids[1], lp[1]);
    double z = 0;
    for (int v = 0; v < 6; v++) z += exp((double)row[v] - 2.0);
    EXPECT(fabs(lp[0] - (0.0 - log(z))) < 1e-12, "cpu greedy logprob %g", lp[0]);
    /* near_boundary: weights 0.5 0.25 0.25 (sum 1), boundaries at 0.5, 0.75 */
    const float wb[3] = {0.5f, 0.25f, 0.25f};
    EXPECT(ref_pick(wb, 3, 1.0, 0.5) == 1 && ref_pick(wb, 3, 1.0, 0.4999) == 0, "ref_pick");
    EXPECT(near_boundary(wb, 3, 1.0, 0.5, 1, 0), "near_boundary: u on the end of the lower id");
    EXPECT(near_boundary(wb, 3, 1.0, 0.75 - 1e-9, 1, 2), "near_boundary: u just below the start");
    EXPECT(!near_boundary(wb, 3, 1.0, 0.6, 1, 0), "near_boundary: u well inside the CPU's id");
    EXPECT(!near_boundary(wb, 3, 1.0, 0.4, 0, 2), "near_boundary: ids not adjacent");
    const float wz[3] = {0.5f, 0.0f, 0.5f};
    EXPECT(!near_boundary(wz, 3, 1.0, 0.5, 2, 1), "near_boundary: a filtered id");
#ifdef DPEP_HAVE_CUDA
    check_sample_model();
#endif
}

int main(void)
{
    dpep_log_init();
    g_cpu = dpep_engine_ops_for(DPEP_DEVICE_CPU);
    g_cuda = dpep_engine_ops_for(DPEP_DEVICE_CUDA);
    if (!g_cpu) {
        printf("FAIL: no CPU table\n");
        return 1;
    }
    check_host_side();
    if (g_fail) return dpep_test_summary();

    int count = -1;
    char why[256] = "";
    if (!g_cuda) {
        printf("host-side checks: %d passed\nSKIP: this build has no CUDA ops table\n", g_pass);
        return 77;
    }
    if (dpep_cuda_device_count(&count, why, sizeof why) != DPEP_OK) {
#ifdef DPEP_HAVE_CUDA
        /* the sampler's failure contract: no device -> an error is logged,
         * sampled rows get id -1 and log-prob NaN, NULL rows -1 and 0 */
        float lg[2] = {0.5f, 1.0f};
        dpep_sampling ds = {.temperature = 1.0f, .top_p = 1.0f};
        const dpep_sampling *fsp[2] = {&ds, NULL};
        uint64_t fs = dpep_rng_seed(9), *fr[2] = {&fs, &fs};
        int32_t fid[2] = {7, 7};
        double flp[2] = {1, 1};
        printf("(an \"engine cuda sample\" error is expected next)\n");
        dpep_engine_cuda_sample(lg, 2, 2, fsp, fr, NULL, fid, flp);
        EXPECT(fid[0] == -1 && isnan(flp[0]) && fid[1] == -1 && flp[1] == 0,
               "cuda sample without a device: ids %d %d log-probs %g %g", fid[0], fid[1], flp[0], flp[1]);
#endif
        printf("host-side checks: %d passed\nSKIP: %s\n", g_pass, why);
        return 77;
    }
    if (dpep_device_get(DPEP_DEVICE_CUDA, 0, &g_tdev) != DPEP_OK) {
        printf("FAIL: CUDA device 0\n");
        return 1;
    }
    printf("CUDA table \"%s\" vs CPU table on device 0 of %d\n", g_cuda->name, count);

    const int vocabs[] = {1, 5, 32000}, hiddens[] = {1, 7, 129, 1024};
    const int64_t ns[] = {0, 1, 3, 17};
    for (size_t v = 0; v < 3; v++)
        for (size_t h = 0; h < 4; h++)
            for (size_t k = 0; k < 4; k++) test_embed(vocabs[v], hiddens[h], ns[k], (k & 1) != 0);

    const int64_t rows[] = {0, 1, 3, 33};
    const int norm_n[] = {1, 7, 129, 1000, 7168};
    for (size_t r = 0; r < 4; r++)
        for (size_t k = 0; k < 5; k++) test_rmsnorm(rows[r], norm_n[k], 1.0f);
    test_rmsnorm(5, 513, 1e-3f); /* small activations: eps matters */
    test_rmsnorm(5, 513, 1e3f);

    const int64_t add_n[] = {0, 1, 7, 4097, 1000003, 33554439};
    for (size_t k = 0; k < 6; k++) test_add(add_n[k]);

    const int64_t lm_rows[] = {0, 1, 3, 17};
    const int lm_hidden[] = {7, 129, 1024};
    for (size_t r = 0; r < 4; r++)
        for (size_t v = 0; v < 3; v++)
            for (size_t h = 0; h < 3; h++) {
                if (vocabs[v] == 32000 && lm_hidden[h] == 1024 && lm_rows[r] > 3) continue; /* CPU time */
                test_lm_head(lm_rows[r], vocabs[v], lm_hidden[h]);
            }

    /* sampling: the table's entry and the CUDA sampler called directly (the
     * same function once ops_cuda.cu points its table at it) */
#ifdef DPEP_HAVE_CUDA
    const struct { sample_fn fn; const char *who; } fns[] = {{g_cuda->sample, "table"},
                                                            {dpep_engine_cuda_sample, "direct"}};
#else
    const struct { sample_fn fn; const char *who; } fns[] = {{g_cuda->sample, "table"}};
#endif
    const int s_vocab[] = {1, 5, 32000, 129280}, s_n[] = {0, 1, 7, 64, 300};
    for (size_t f = 0; f < sizeof fns / sizeof fns[0]; f++) {
        for (size_t v = 0; v < 4; v++)
            for (size_t k = 0; k < 5; k++) {
                if (s_vocab[v] == 129280 && s_n[k] == 64) continue; /* CPU time */
                test_sample(fns[f].fn, fns[f].who, s_n[k], s_vocab[v], (int)((v + k) % 4));
            }
        for (int style = 0; style < 4; style++) test_sample(fns[f].fn, fns[f].who, 37, 32000, style);
        for (int k = 0; k < 2; k++) test_sample_distribution(fns[f].fn, fns[f].who, &SP_DIST[k]);
    }
    printf("sample: %ld draws compared, %ld within %g * sum of a cumulative boundary\n", g_draws, g_near,
           SAMPLE_EPS);
    return dpep_test_summary();
}
