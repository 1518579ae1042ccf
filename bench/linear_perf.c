/* linear_perf.c — dpep_linear_perf: runtime/linear's products (Y = X W^T)
 * at the shapes of the `small` preset and of DeepSeek-V3 decode, beside
 * baselines measured in the same run, and the small-M crossover.
 *
 *   dpep_linear_perf [-s small|v3|all] [-m 1,2,4,8,16,32,64] [-t 1,2]
 *                    [-d f32,bf16,f16] [-r 7] [-P 256] [-q NAME] [-g] [-i ISA]
 *                    [-o rows|streams]
 *   dpep_linear_perf -c MiB [-t 1,2] [-r 7]
 *
 * Per shape (W [N, K]), thread count T, M and dtype:
 *   stream  dpep_linear_nt forced onto the weight-streaming kernel
 *   blas    dpep_linear_nt forced onto the BLAS path (f32: sgemm on blocks
 *           of output columns; bf16/f16: widened panels + sgemm)
 *   sgemm   cblas_sgemm on the same shape in f32, OpenBLAS with T threads
 *   sgemv   cblas_sgemv (M = 1 only), f32, OpenBLAS with T threads
 *   memcpy  memcpy of a buffer the size of the weights (this dtype's
 *           bytes), split over T threads; GB/s = bytes read / time (the
 *           same bytes are written too)
 *   read    a sum over the same bytes (the floor of a kernel that only
 *           reads the weights), split over T threads; GB/s = bytes / time
 * time = median over -r repeats after one warm-up call; each repeat reads
 * the next of enough copies of the weights to fill -P MiB (more than the
 * last-level cache), so weights come from memory as in a decode step.
 * GB/s = weight bytes (this dtype) / time; GFLOP/s = 2 M N K / time.
 * Ratios are speedups (baseline time / our time, > 1: ours faster):
 * x_sgemm = sgemm / stream, x_sgemv = sgemv / stream; bw = stream GB/s /
 * memcpy GB/s, rd = stream GB/s / read GB/s. pick = the path the measured crossover takes for this
 * M. Crossover: per dtype and T, the geometric mean over shapes of blas time / stream time for each
 * M; the crossover is the largest M up to which the stream kernel wins at every M of the list. -g:
 * the portable kernels (dpep_linear_force_generic) instead of the best the CPU runs; -i NAME: that
 * table (generic, avx2, avx512; dpep_linear_force_isa); -o rows|streams: the x86 tables' M = 1
 * access order (dpep_linear_force_m1_order).
 * -c MiB: only the machine's ceilings, one JSON line per thread count of -t: a buffer of MiB placed
 * as the weight arena (huge pages), read by the read kernel above and copied by memcpy into a second
 * one, each split over T threads; the best of -r repeats after a warm-up (a ceiling, not a typical
 * figure: bench/llama_compare.sh divides decode steps by it). read_GBps = bytes / time;
 * memcpy_rw_GBps = 2 x bytes / time (STREAM's Copy convention: read + written);
 * memcpy_copied_GBps = bytes / time. Exit code: 0,
 * or 1 when a result is wrong (stream vs blas vs sgemm normalized difference > 1e-5), 2 usage. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "dpep_base.h"
#include "dpep_linear.h"

#define MAXLIST 16

typedef struct shape {
    const char *set, *name;
    int N, K;
} shape;

/* small preset (hidden 1024, q_lora 384, kv_lora 256, 16 heads x (64 nope +
 * 32 rope), v 64, moe_inter 512, inter 2816, vocab 32000) and DeepSeek-V3
 * (hidden 7168, q_lora 1536, kv_lora 512, 128 heads x (128 + 64), v 128,
 * moe_inter 2048); V3's lm_head (3.7 GB in f32) is left out. */
static const shape k_shapes[] = {
    {"small", "q_a", 384, 1024},       {"small", "q_b", 1536, 384},
    {"small", "kv_a", 288, 1024},      {"small", "kv_b", 2048, 256},
    {"small", "o_proj", 1024, 1024},   {"small", "exp_gate_up", 512, 1024},
    {"small", "exp_down", 1024, 512},  {"small", "mlp_gate_up", 2816, 1024},
    {"small", "mlp_down", 1024, 2816}, {"small", "lm_head", 32000, 1024},
    {"v3", "q_a", 1536, 7168},         {"v3", "q_b", 24576, 1536},
    {"v3", "kv_a", 576, 7168},         {"v3", "o_proj", 7168, 16384},
    {"v3", "exp_gate_up", 2048, 7168}, {"v3", "exp_down", 7168, 2048},
};
#define NSHAPES (int)(sizeof k_shapes / sizeof *k_shapes)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double median(double *v, int n)
{
    qsort(v, n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static int parse_list(const char *s, int *out)
{
    int n = 0;
    while (*s && n < MAXLIST) {
        char *e;
        long v = strtol(s, &e, 10);
        if (e == s || v <= 0) return -1;
        out[n++] = (int)v;
        s = *e == ',' ? e + 1 : e;
    }
    return n;
}

static void set_threads(int t)
{
#ifdef _OPENMP
    omp_set_num_threads(t);
#endif
    (void)t;
}

/* weights: `copies` copies of one [N, K] matrix of type t, back to back */
typedef struct wset {
    char *p;
    size_t bytes; /* one copy */
    int copies, next;
} wset;

/* Big buffers placed as the loader places the weight arena: the CPU
 * device's allocator, advised onto transparent huge pages before they are
 * written (runtime/base). NULL when out of memory; free with huge_free. */
static void *huge_alloc(size_t bytes)
{
    dpep_device cpu;
    void *p = NULL;
    if (dpep_device_get(DPEP_DEVICE_CPU, 0, &cpu) != DPEP_OK || dpep_device_alloc(&cpu, bytes, &p) != DPEP_OK)
        return NULL;
    dpep_device_advise_streamed(&cpu, p, bytes);
    return p;
}

static void huge_free(void *p)
{
    dpep_device cpu;
    if (dpep_device_get(DPEP_DEVICE_CPU, 0, &cpu) == DPEP_OK) dpep_device_free(&cpu, p);
}

static int wset_make(wset *w, dpep_wtype t, int N, int K, size_t pool)
{
    w->bytes = (size_t)N * K * dpep_wtype_size(t);
    w->copies = (int)((pool + w->bytes - 1) / w->bytes);
    if (w->copies < 2) w->copies = 2;
    w->next = 0;
    w->p = huge_alloc(w->bytes * w->copies);
    if (!w->p) return -1;
    uint64_t s = 0x1234567ull + (uint64_t)t;
    size_t n = (size_t)N * K;
    for (size_t i = 0; i < n; i++) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        float f = (float)((int)(s >> 40) - (1 << 23)) / (float)(1 << 23);
        if (t == DPEP_WT_F32)
            ((float *)w->p)[i] = f;
        else if (t == DPEP_WT_BF16)
            ((uint16_t *)w->p)[i] = dpep_f32_to_bf16(f);
        else
            ((uint16_t *)w->p)[i] = dpep_f32_to_f16(f);
    }
    for (int c = 1; c < w->copies; c++) memcpy(w->p + (size_t)c * w->bytes, w->p, w->bytes);
    return 0;
}
static void *wset_take(wset *w)
{
    void *p = w->p + (size_t)w->next * w->bytes;
    w->next = (w->next + 1) % w->copies;
    return p;
}

enum { OP_STREAM, OP_BLAS, OP_SGEMM, OP_SGEMV, OP_MEMCPY, OP_READ };

/* The read floor: a sum of n bytes as floats, 4 independent 8-lane sums
 * (AVX2 where the compiler targets x86-64, plain C otherwise). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define READ_KERNEL "avx2 sum of 4 x 8 floats"
__attribute__((target("avx2"))) static float read_sum(const char *p, size_t n)
{
    const float *f = (const float *)p;
    size_t nf = n / 4, i = 0;
    __m256 a = _mm256_setzero_ps(), b = a, c = a, d = a;
    for (; i + 32 <= nf; i += 32) {
        a = _mm256_add_ps(a, _mm256_loadu_ps(f + i));
        b = _mm256_add_ps(b, _mm256_loadu_ps(f + i + 8));
        c = _mm256_add_ps(c, _mm256_loadu_ps(f + i + 16));
        d = _mm256_add_ps(d, _mm256_loadu_ps(f + i + 24));
    }
    float r[8];
    _mm256_storeu_ps(r, _mm256_add_ps(_mm256_add_ps(a, b), _mm256_add_ps(c, d)));
    float s = r[0] + r[1] + r[2] + r[3] + r[4] + r[5] + r[6] + r[7];
    for (; i < nf; i++) s += f[i];
    return s;
}
#else
#define READ_KERNEL "portable sum of 32 floats"
static float read_sum(const char *p, size_t n)
{
    const float *f = (const float *)p;
    float acc[32] = {0};
    size_t nf = n / 4, i = 0;
    for (; i + 32 <= nf; i += 32)
        for (int l = 0; l < 32; l++) acc[l] += f[i + l];
    float s = 0;
    for (int l = 0; l < 32; l++) s += acc[l];
    for (; i < nf; i++) s += f[i];
    return s;
}
#endif
static volatile float g_sink;

typedef struct ctx {
    int M, N, K, T;
    dpep_wtype t;
    wset *w;
    const float *X;
    float *Y;
    char *dst; /* memcpy destination */
} ctx;

static void run_op(int op, ctx *c)
{
    void *p = wset_take(c->w);
    switch (op) {
    case OP_STREAM:
    case OP_BLAS: {
        dpep_mat W = dpep_mat_make(p, c->t, c->N, c->K);
        dpep_linear_nt(c->M, c->X, c->K, &W, 0.0f, c->Y, c->N);
        break;
    }
    case OP_SGEMM:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c->M, c->N, c->K, 1.0f, c->X, c->K, p,
                    c->K, 0.0f, c->Y, c->N);
        break;
    case OP_SGEMV:
        cblas_sgemv(CblasRowMajor, CblasNoTrans, c->N, c->K, 1.0f, p, c->K, c->X, 1, 0.0f, c->Y, 1);
        break;
    case OP_READ: {
        size_t b = c->w->bytes, per = (b / c->T + 63) / 64 * 64;
        float s = 0;
#pragma omp parallel for num_threads(c->T) schedule(static) reduction(+ : s)
        for (int i = 0; i < c->T; i++) {
            size_t o = (size_t)i * per;
            if (o < b) s += read_sum((char *)p + o, b - o < per ? b - o : per);
        }
        g_sink = s;
        break;
    }
    case OP_MEMCPY: {
        size_t b = c->w->bytes, per = (b / c->T + 63) / 64 * 64;
#pragma omp parallel for num_threads(c->T) schedule(static)
        for (int i = 0; i < c->T; i++) {
            size_t o = (size_t)i * per;
            if (o < b) memcpy(c->dst + o, (char *)p + o, b - o < per ? b - o : per);
        }
        break;
    }
    }
}

/* median seconds of `reps` calls after one warm-up */
static double time_op(int op, ctx *c, int reps)
{
    double v[64];
    if (op == OP_STREAM) dpep_linear_set_small_m(c->t, INT_MAX);
    if (op == OP_BLAS) dpep_linear_set_small_m(c->t, 0);
    /* ours: BLAS on one thread (our team splits); baselines: OpenBLAS's T threads */
    openblas_set_num_threads(op == OP_SGEMM || op == OP_SGEMV ? c->T : 1);
    /* OpenBLAS's OpenMP build sets the OpenMP team with it: ours is T */
    set_threads(c->T);
    run_op(op, c);
    double t0 = now();
    int n = 0;
    for (; n < reps && n < 64; n++) {
        double a = now();
        run_op(op, c);
        v[n] = now() - a;
        if (now() - t0 > 3.0 && n >= 2) {
            n++;
            break;
        } /* long cells: fewer repeats */
    }
    dpep_linear_set_small_m(c->t, -1);
    return median(v, n);
}

static double rel_diff(const float *a, const float *b, size_t n)
{
    double e = 0, r = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        e += d * d;
        r += (double)b[i] * b[i];
    }
    return r > 0 ? sqrt(e / r) : sqrt(e);
}

/* -c: best-of-reps read and memcpy bandwidth over a buffer of `mib` MiB, per thread count */
static int ceilings(size_t mib, const int *Ts, int nT, int reps)
{
    size_t bytes = mib << 20;
    wset w = {huge_alloc(bytes), bytes, 1, 0};
    char *dst = huge_alloc(bytes);
    if (!w.p || !dst) {
        fprintf(stderr, "dpep_linear_perf: -c %zu: out of memory\n", mib);
        return 1;
    }
    for (size_t i = 0; i < bytes; i += 4) ((float *)w.p)[i / 4] = (float)(i % 4093) * 1e-3f;
    memset(dst, 1, bytes);
    for (int it = 0; it < nT; it++) {
        const int T = Ts[it];
        set_threads(T);
        ctx c = {1, 0, 0, T, DPEP_WT_F32, &w, NULL, NULL, dst};
        double best_r = INFINITY, best_c = INFINITY;
        run_op(OP_READ, &c);
        run_op(OP_MEMCPY, &c);
        for (int r = 0; r < reps; r++) {
            double t0 = now();
            run_op(OP_READ, &c);
            double t1 = now();
            run_op(OP_MEMCPY, &c);
            double t2 = now();
            best_r = t1 - t0 < best_r ? t1 - t0 : best_r;
            best_c = t2 - t1 < best_c ? t2 - t1 : best_c;
        }
        printf("{\"threads\": %d, \"bytes\": %zu, \"reps\": %d, \"read_GBps\": %.3f, "
               "\"memcpy_rw_GBps\": %.3f, \"memcpy_copied_GBps\": %.3f, \"read_kernel\": \"%s\"}\n",
               T, bytes, reps, bytes / best_r / 1e9, 2.0 * bytes / best_c / 1e9, bytes / best_c / 1e9,
               READ_KERNEL);
    }
    huge_free(w.p);
    huge_free(dst);
    return 0;
}

static void usage(void)
{
    fprintf(stderr, "usage: dpep_linear_perf [-s small|v3|all] [-m 1,2,4,...] [-t 1,2] "
                    "[-d f32,bf16,f16] [-r reps] [-P pool_MiB] [-q shape_name] [-g] [-i isa] [-o rows|streams]\n"
                    "       dpep_linear_perf -c MiB [-t 1,2] [-r reps]   (the read and memcpy ceilings, JSON)\n");
}

int main(int argc, char **argv)
{
    const char *set = "small", *only = NULL;
    int Ms[MAXLIST] = {1, 2, 4, 8, 16, 32, 64}, nM = 7;
    int Ts[MAXLIST] = {1, 2}, nT = 2;
    bool dt[DPEP_WT_COUNT] = {true, true, true};
    int reps = 7;
    size_t pool = 256u << 20, ceil_mib = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "-g")) {
            dpep_linear_force_generic(true);
            continue;
        }
        if (!v) return usage(), 2;
        if (!strcmp(a, "-s"))
            set = v;
        else if (!strcmp(a, "-m"))
            nM = parse_list(v, Ms);
        else if (!strcmp(a, "-t"))
            nT = parse_list(v, Ts);
        else if (!strcmp(a, "-r"))
            reps = atoi(v);
        else if (!strcmp(a, "-P"))
            pool = (size_t)atol(v) << 20;
        else if (!strcmp(a, "-c")) {
            if (atol(v) <= 0) return usage(), 2;
            ceil_mib = (size_t)atol(v);
        } else if (!strcmp(a, "-q"))
            only = v;
        else if (!strcmp(a, "-i")) {
            if (!dpep_linear_force_isa(v)) {
                fprintf(stderr, "dpep_linear_perf: -i %s: not a table this build and CPU run\n", v);
                return 2;
            }
        }
        else if (!strcmp(a, "-o")) {
            if (!dpep_linear_force_m1_order(v)) {
                fprintf(stderr, "dpep_linear_perf: -o %s: the M = 1 order is rows or streams\n", v);
                return 2;
            }
        }
        else if (!strcmp(a, "-d")) {
            char buf[64];
            snprintf(buf, sizeof buf, "%s", v);
            memset(dt, 0, sizeof dt);
            for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
                int t = 0;
                while (t < DPEP_WT_CPU_COUNT && strcmp(tok, dpep_wtype_name((dpep_wtype)t))) t++;
                if (t == DPEP_WT_CPU_COUNT) return usage(), 2;
                dt[t] = true;
            }
        } else
            return usage(), 2;
        i++;
    }
    if (nM <= 0 || nT <= 0 || reps < 1 || reps > 64) return usage(), 2;
    if (ceil_mib) return ceilings(ceil_mib, Ts, nT, reps);
    int maxM = 0, maxT = 1;
    for (int i = 0; i < nM; i++) maxM = Ms[i] > maxM ? Ms[i] : maxM;
    for (int i = 0; i < nT; i++) maxT = Ts[i] > maxT ? Ts[i] : maxT;

    printf("# dpep_linear_perf: kernels %s (M = 1 in %s order), crossover (built in) f32 M<=%d, "
           "bf16/f16 M<=%d; threads %d max; pool %zu MiB of weight copies; median of %d repeats\n",
           dpep_linear_isa(), dpep_linear_m1_order(), dpep_linear_small_m(DPEP_WT_F32),
           dpep_linear_small_m(DPEP_WT_BF16),
           maxT, pool >> 20, reps);
    printf("# times in us; x_sgemm = sgemm/stream, x_sgemv = sgemv/stream, bw = stream GB/s / "
           "memcpy GB/s (memcpy: bytes read / time), rd = stream GB/s / read GB/s\n");
    printf("%-5s %-12s %6s %5s %-4s %3s %2s %10s %7s %7s %10s %10s %10s %7s %7s %7s %7s %7s %5s "
           "%5s\n",
           "set", "shape", "N", "K", "type", "M", "T", "stream", "GB/s", "GFLOP/s", "blas", "sgemm",
           "sgemv", "x_sgemm", "x_sgemv", "memcpy", "read", "bw", "rd", "pick");

    /* crossover statistics: sum of log(blas/stream) per dtype, T, M */
    static double lsum[DPEP_WT_COUNT][MAXLIST][MAXLIST];
    static int lcnt[DPEP_WT_COUNT][MAXLIST][MAXLIST];
    int wrong = 0;

    dpep_linear_reserve(16384, 16384, maxT);
    float *X = malloc(sizeof(float) * (size_t)maxM * 16384);
    for (size_t i = 0; i < (size_t)maxM * 16384; i++)
        X[i] = (float)((i * 7919) % 2001) / 1000.0f - 1.0f;

    for (int s = 0; s < NSHAPES; s++) {
        const shape *sh = &k_shapes[s];
        if (strcmp(set, "all") && strcmp(set, sh->set)) continue;
        if (only && strcmp(only, sh->name)) continue;
        const int N = sh->N, K = sh->K;
        wset w[DPEP_WT_COUNT];
        memset(w, 0, sizeof w);
        bool ok = wset_make(&w[DPEP_WT_F32], DPEP_WT_F32, N, K, pool) == 0;
        for (int t = 1; t < DPEP_WT_CPU_COUNT; t++)
            if (dt[t]) ok = ok && wset_make(&w[t], (dpep_wtype)t, N, K, pool) == 0;
        float *Y = malloc(sizeof(float) * (size_t)maxM * N),
              *Yb = malloc(sizeof(float) * (size_t)maxM * N);
        float *Ys = malloc(sizeof(float) * (size_t)maxM * N);
        char *dst = huge_alloc(w[DPEP_WT_F32].bytes);
        if (!ok || !Y || !Yb || !Ys || !dst) {
            fprintf(stderr, "out of memory at %s %s\n", sh->set, sh->name);
            return 1;
        }
        for (int it = 0; it < nT; it++) {
            const int T = Ts[it];
            set_threads(T);
            double mc[DPEP_WT_COUNT] = {0}, rd[DPEP_WT_COUNT] = {0};
            for (int t = 0; t < DPEP_WT_CPU_COUNT; t++) {
                if (!dt[t]) continue;
                ctx c = {1, N, K, T, (dpep_wtype)t, &w[t], X, Y, dst};
                mc[t] = (double)w[t].bytes / time_op(OP_MEMCPY, &c, reps) / 1e9;
                rd[t] = (double)w[t].bytes / time_op(OP_READ, &c, reps) / 1e9;
            }
            for (int im = 0; im < nM; im++) {
                const int M = Ms[im];
                ctx c32 = {M, N, K, T, DPEP_WT_F32, &w[DPEP_WT_F32], X, Ys, dst};
                double t_sgemm = time_op(OP_SGEMM, &c32, reps);
                double t_sgemv = M == 1 ? time_op(OP_SGEMV, &c32, reps) : NAN;
                for (int t = 0; t < DPEP_WT_CPU_COUNT; t++) {
                    if (!dt[t]) continue;
                    ctx c = {M, N, K, T, (dpep_wtype)t, &w[t], X, Y, dst};
                    double t_st = time_op(OP_STREAM, &c, reps);
                    c.Y = Yb;
                    double t_bl = time_op(OP_BLAS, &c, reps);
                    /* the same weights in every copy: results must agree */
                    double d = rel_diff(Y, Yb, (size_t)M * N);
                    if (t == DPEP_WT_F32) {
                        double d2 = rel_diff(Y, Ys, (size_t)M * N);
                        d = d2 > d ? d2 : d;
                    }
                    if (!(d <= 1e-5)) {
                        wrong++;
                        printf("# WRONG %s %s %s M=%d T=%d: normalized difference %.3g\n", sh->set,
                               sh->name, dpep_wtype_name((dpep_wtype)t), M, T, d);
                    }
                    double gbs = (double)w[t].bytes / t_st / 1e9;
                    printf("%-5s %-12s %6d %5d %-4s %3d %2d %10.1f %7.2f %7.2f %10.1f %10.1f ",
                           sh->set, sh->name, N, K, dpep_wtype_name((dpep_wtype)t), M, T,
                           t_st * 1e6, gbs, 2.0 * M * N * K / t_st / 1e9, t_bl * 1e6,
                           t_sgemm * 1e6);
                    if (M == 1)
                        printf("%10.1f ", t_sgemv * 1e6);
                    else
                        printf("%10s ", "-");
                    printf("%7.2f ", t_sgemm / t_st);
                    if (M == 1)
                        printf("%7.2f ", t_sgemv / t_st);
                    else
                        printf("%7s ", "-");
                    printf("%7.2f %7.2f %7.2f %5.2f %5s\n", mc[t], rd[t], gbs / mc[t], gbs / rd[t],
                           M <= dpep_linear_small_m((dpep_wtype)t) ? "strm" : "blas");
                    fflush(stdout);
                    lsum[t][it][im] += log(t_bl / t_st);
                    lcnt[t][it][im]++;
                }
            }
        }
        for (int t = 0; t < DPEP_WT_CPU_COUNT; t++) huge_free(w[t].p);
        free(Y);
        free(Yb);
        free(Ys);
        huge_free(dst);
    }

    printf("#\n# crossover: geometric mean over shapes of blas time / stream time (> 1: stream "
           "wins)\n");
    for (int t = 0; t < DPEP_WT_CPU_COUNT; t++) {
        if (!dt[t]) continue;
        for (int it = 0; it < nT; it++) {
            printf("# %-4s T=%d:", dpep_wtype_name((dpep_wtype)t), Ts[it]);
            int cross = 0;
            bool run = true;
            for (int im = 0; im < nM; im++) {
                if (!lcnt[t][it][im]) continue;
                double g = exp(lsum[t][it][im] / lcnt[t][it][im]);
                printf("  M=%d %.2f", Ms[im], g);
                if (run && g > 1.0)
                    cross = Ms[im];
                else
                    run = false;
            }
            printf("  -> stream up to M=%d\n", cross);
        }
    }
    printf("# wrong results: %d %s\n", wrong, wrong ? "FAILED" : "OK");
    free(X);
    return wrong ? 1 : 0;
}
