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
 *   sample       ids equal (greedy, ties to the lowest id, and stochastic
 *                rows via the host path with the same rng state), log-probs
 *                within 1e-5 absolute, rng states equal after.
 * Without a GPU (or a build without CUDA) it first checks the harness and
 * the CPU table against naive double references, then prints "SKIP: why"
 * and exits 77. */
#include "dpep_engine.h"
#include "dpep_test.h"
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
/* Device buffers through the device allocator (no CUDA headers here)       */
/* ------------------------------------------------------------------------ */
static dpep_device g_dev;

static void *dev_up(const void *host, size_t bytes)
{
    void *p = NULL;
    if (dpep_device_alloc(&g_dev, bytes ? bytes : 1, &p) != DPEP_OK) {
        printf("FAIL: device allocation of %zu bytes\n", bytes);
        exit(1);
    }
    if (host && bytes && g_dev.ops->to_device(&g_dev, p, host, bytes) != DPEP_OK) {
        printf("FAIL: copy to device\n");
        exit(1);
    }
    return p;
}

/* Fills `bytes` (at least 1) of device memory with 0xFF: NaN as floats. */
static void dev_poison(void *p, size_t bytes)
{
    if (!bytes) bytes = 1;
    unsigned char *ff = malloc(bytes);
    memset(ff, 0xFF, bytes);
    if (g_dev.ops->to_device(&g_dev, p, ff, bytes) != DPEP_OK) {
        printf("FAIL: poisoning device memory\n");
        exit(1);
    }
    free(ff);
}

static void dev_down(void *host, const void *p, size_t bytes)
{
    if (bytes && g_dev.ops->to_host(&g_dev, host, p, bytes) != DPEP_OK) {
        printf("FAIL: copy to host\n");
        exit(1);
    }
}

/* The poison byte still in place (the op wrote nothing where it must not). */
static bool dev_still_poisoned(const void *p)
{
    unsigned char b = 0;
    dev_down(&b, p, 1);
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
    g_cpu->embed(table, hidden, ids, n, ref);

    float *d_table = dev_up(table, tb), *d_h = dev_up(NULL, hb);
    int32_t *d_ids = ids_on_device ? dev_up(ids, sizeof(int32_t) * (size_t)n) : NULL;
    dev_poison(d_h, hb);
    g_cuda->embed(d_table, hidden, ids_on_device ? d_ids : ids, n, d_h);
    dev_down(out, d_h, hb);
    double e = nerr(out, ref, (size_t)n * hidden);
    EXPECT(e == 0, "embed vocab %d hidden %d n %lld ids on %s: error %g (want 0)", vocab, hidden,
           (long long)n, ids_on_device ? "device" : "host", e);
    if (n == 0) EXPECT(dev_still_poisoned(d_h), "embed n 0 wrote its output");
    printf("  embed    vocab %5d hidden %4d n %3lld ids %-6s  err %.3g\n", vocab, hidden, (long long)n,
           ids_on_device ? "device" : "host", e);
    dpep_device_free(&g_dev, d_table);
    dpep_device_free(&g_dev, d_h);
    dpep_device_free(&g_dev, d_ids);
    free(table), free(ids), free(ref), free(out);
}

static void test_rmsnorm(int64_t rows, int n, float scale)
{
    size_t xb = sizeof(float) * (size_t)rows * n;
    float *x = rnd_vec((size_t)rows * n, scale), *g = rnd_vec((size_t)n, 1.0f);
    float *ref = rnd_vec((size_t)rows * n, 1.0f), *out = malloc(xb ? xb : 1);
    const double eps = 1e-6;
    g_cpu->rmsnorm(x, g, rows, n, eps, ref);

    float *d_x = dev_up(x, xb), *d_g = dev_up(g, sizeof(float) * (size_t)n), *d_y = dev_up(NULL, xb);
    dev_poison(d_y, xb);
    g_cuda->rmsnorm(d_x, d_g, rows, n, eps, d_y);
    dev_down(out, d_y, xb);
    double e = nerr(out, ref, (size_t)rows * n);
    EXPECT(e <= TOL_F32, "rmsnorm rows %lld n %d scale %g: error %g > %g", (long long)rows, n, scale,
           e, TOL_F32);
    if (rows == 0) EXPECT(dev_still_poisoned(d_y), "rmsnorm rows 0 wrote its output");
    printf("  rmsnorm  rows %4lld n %5d scale %-6g           err %.3g\n", (long long)rows, n, scale, e);
    dpep_device_free(&g_dev, d_x);
    dpep_device_free(&g_dev, d_g);
    dpep_device_free(&g_dev, d_y);
    free(x), free(g), free(ref), free(out);
}

static void test_add(int64_t n)
{
    size_t b = sizeof(float) * (size_t)n;
    float *h = rnd_vec((size_t)n, 1.0f), *x = rnd_vec((size_t)n, 1.0f), *out = malloc(b ? b : 1);
    float *d_h = dev_up(h, b), *d_x = dev_up(x, b);
    g_cpu->add(h, x, n); /* h is now the reference */
    g_cuda->add(d_h, d_x, n);
    dev_down(out, d_h, b);
    double e = nerr(out, h, (size_t)n);
    EXPECT(e == 0, "add n %lld: error %g (want 0)", (long long)n, e);
    printf("  add      n %8lld                             err %.3g\n", (long long)n, e);
    dpep_device_free(&g_dev, d_h);
    dpep_device_free(&g_dev, d_x);
    free(h), free(x), free(out);
}

static void test_lm_head(int64_t rows, int vocab, int hidden)
{
    size_t xb = sizeof(float) * (size_t)rows * hidden, wb = sizeof(float) * (size_t)vocab * hidden;
    size_t lb = sizeof(float) * (size_t)rows * vocab;
    float *x = rnd_vec((size_t)rows * hidden, 1.0f), *w = rnd_vec((size_t)vocab * hidden, 0.1f);
    float *ref = rnd_vec((size_t)rows * vocab, 1.0f), *out = malloc(lb ? lb : 1);
    if (rows > 0) g_cpu->lm_head(x, rows, w, vocab, hidden, ref);

    float *d_x = dev_up(x, xb), *d_w = dev_up(w, wb), *d_l = dev_up(NULL, lb);
    dev_poison(d_l, lb);
    g_cuda->lm_head(d_x, rows, d_w, vocab, hidden, d_l);
    dev_down(out, d_l, lb);
    double e = nerr(out, ref, (size_t)rows * vocab);
    EXPECT(e <= TOL_F32, "lm_head rows %lld vocab %d hidden %d: error %g > %g", (long long)rows,
           vocab, hidden, e, TOL_F32);
    if (rows == 0) EXPECT(dev_still_poisoned(d_l), "lm_head rows 0 wrote its output");
    printf("  lm_head  rows %4lld vocab %5d hidden %4d        err %.3g\n", (long long)rows, vocab,
           hidden, e);
    dpep_device_free(&g_dev, d_x);
    dpep_device_free(&g_dev, d_w);
    dpep_device_free(&g_dev, d_l);
    free(x), free(w), free(ref), free(out);
}

/* Sampling parameters by row kind. */
static const dpep_sampling SP_GREEDY = {.temperature = 0.0f, .top_p = 1.0f, .seed = 1};
static const dpep_sampling SP_TOPK1 = {.temperature = 0.7f, .top_k = 1, .top_p = 1.0f, .seed = 2};
static const dpep_sampling SP_STOCH = {
    .temperature = 0.8f, .top_k = 40, .top_p = 0.9f, .seed = 3, .min_p = 0.05f};
static const dpep_sampling SP_PLAIN = {.temperature = 1.0f, .top_p = 1.0f, .seed = 4};

/* n rows of `vocab` logits; row kinds cycle greedy, NULL, top_k 1, stochastic,
 * plain temperature; `ties` puts the row's maximum at two ids (and a third,
 * lower, copy of a smaller value) so the lowest of the maxima must win. */
static void test_sample(int n, int vocab, bool ties)
{
    size_t lb = sizeof(float) * (size_t)n * vocab;
    float *logits = rnd_vec((size_t)n * vocab, 4.0f);
    const dpep_sampling *kinds[5] = {&SP_GREEDY, NULL, &SP_TOPK1, &SP_STOCH, &SP_PLAIN};
    const dpep_sampling **sp = malloc(sizeof(*sp) * (size_t)(n ? n : 1));
    uint64_t *st_cpu = malloc(sizeof(uint64_t) * (size_t)(n ? n : 1));
    uint64_t *st_dev = malloc(sizeof(uint64_t) * (size_t)(n ? n : 1));
    uint64_t **r_cpu = malloc(sizeof(*r_cpu) * (size_t)(n ? n : 1));
    uint64_t **r_dev = malloc(sizeof(*r_dev) * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) {
        sp[i] = kinds[i % 5];
        st_cpu[i] = st_dev[i] = dpep_rng_seed(1000 + (uint64_t)i);
        r_cpu[i] = &st_cpu[i];
        r_dev[i] = &st_dev[i];
        float *row = logits + (size_t)i * vocab;
        if (ties && vocab >= 3) {
            int a = vocab / 3, b = vocab - 1;
            row[a] = row[b] = 30.0f; /* above every random value */
            row[0] = 29.0f;
        }
    }
    float *scratch = malloc(sizeof(float) * 2 * (size_t)vocab);
    int32_t *id_ref = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    int32_t *id_out = malloc(sizeof(int32_t) * (size_t)(n ? n : 1));
    double *lp_ref = malloc(sizeof(double) * (size_t)(n ? n : 1));
    double *lp_out = malloc(sizeof(double) * (size_t)(n ? n : 1));
    g_cpu->sample(logits, n, vocab, sp, r_cpu, scratch, id_ref, lp_ref);

    float *d_l = dev_up(logits, lb);
    for (int i = 0; i < n; i++) id_out[i] = 0x7fffffff, lp_out[i] = NAN; /* host poison */
    g_cuda->sample(d_l, n, vocab, sp, r_dev, scratch, id_out, lp_out);
    int bad_id = 0, bad_lp = 0, bad_rng = 0;
    double worst = 0;
    for (int i = 0; i < n; i++) {
        double d = fabs(lp_out[i] - lp_ref[i]);
        if (!(d <= worst)) worst = isfinite(d) ? d : INFINITY;
        bad_id += id_out[i] != id_ref[i];
        bad_lp += !(d <= TOL_LOGPROB);
        bad_rng += st_cpu[i] != st_dev[i];
        if (ties && vocab >= 3 && sp[i] && (sp[i]->temperature <= 0 || sp[i]->top_k == 1))
            EXPECT(id_out[i] == vocab / 3, "sample tie row %d: id %d, want %d", i, id_out[i], vocab / 3);
    }
    EXPECT(bad_id == 0, "sample n %d vocab %d%s: %d ids differ from the CPU's", n, vocab,
           ties ? " ties" : "", bad_id);
    EXPECT(bad_lp == 0, "sample n %d vocab %d: %d log-probs off by > %g (worst %g)", n, vocab,
           bad_lp, TOL_LOGPROB, worst);
    EXPECT(bad_rng == 0, "sample n %d vocab %d: %d rng streams differ after", n, vocab, bad_rng);
    printf("  sample   n %3d vocab %5d%-5s  ids differ %d  logprob err %.3g\n", n, vocab,
           ties ? " ties" : "", bad_id, worst);
    dpep_device_free(&g_dev, d_l);
    free(logits), free(sp), free(st_cpu), free(st_dev), free(r_cpu), free(r_dev), free(scratch);
    free(id_ref), free(id_out), free(lp_ref), free(lp_out);
}

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
        g_cpu->lm_head(x, rows, w, vocab, n, l);
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
        printf("host-side checks: %d passed\nSKIP: %s\n", g_pass, why);
        return 77;
    }
    if (dpep_device_get(DPEP_DEVICE_CUDA, 0, &g_dev) != DPEP_OK) {
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

    const int s_n[] = {0, 1, 5, 12};
    for (size_t k = 0; k < 4; k++)
        for (size_t v = 0; v < 3; v++) {
            test_sample(s_n[k], vocabs[v], false);
            if (vocabs[v] >= 3) test_sample(s_n[k], vocabs[v], true);
        }
    return dpep_test_summary();
}
