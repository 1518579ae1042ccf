/* linear.c — dispatch of runtime/linear: small-M weight-streaming kernels
 * or BLAS by M, the split of a product over the OpenMP team, the per-thread
 * widening scratch, conversions. The kernels themselves are the tables of
 * linear_internal.h (linear_generic.c everywhere; linear_avx2.c on x86-64). */
#include "dpep_linear.h"
#include "linear_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---------------------------------------------------------------------- */
/* types and conversions                                                   */
/* ---------------------------------------------------------------------- */
const char *dpep_wtype_name(dpep_wtype t)
{
    switch (t) {
    case DPEP_WT_F32: return "f32";
    case DPEP_WT_BF16: return "bf16";
    case DPEP_WT_F16: return "f16";
    case DPEP_WT_FP8: return "fp8";
    default: return "?";
    }
}

size_t dpep_wtype_size(dpep_wtype t) { return t == DPEP_WT_F32 ? 4 : t == DPEP_WT_FP8 ? 1 : 2; }

/* FP8 matrices live on GPUs only (the CPU loader widens them): a CPU
 * product handed one fills its output with NaN and says so once, so that a
 * wiring mistake shows instead of computing with misread bytes. */
static bool refuse_fp8(const dpep_mat *W, int M, float *Y, int64_t ldy, int n0, int nn)
{
    if (W->t != DPEP_WT_FP8) return false;
    static bool told;
    if (!told) {
        told = true;
        fprintf(stderr, "dpep linear: an FP8 matrix reached a CPU product (FP8 is kept on GPUs "
                        "only); its output is NaN\n");
    }
    for (int m = 0; m < M; m++)
        for (int j = 0; j < nn; j++) Y[(size_t)m * (size_t)ldy + (size_t)(n0 + j)] = NAN;
    return true;
}

float dpep_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t dpep_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float dpep_f16_to_f32(uint16_t h) { return linear_f16_to_f32(h); }

uint16_t dpep_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;            /* NaN            */
    if (a >= 0x477ff000u) return sign | 0x7c00u;           /* overflow: inf  */
    if (a < 0x38800000u) {                                 /* subnormal or 0 */
        /* value = a_float; f16 subnormal unit 2^-24: round(v * 2^24) */
        float v;
        memcpy(&v, &a, 4);
        float r = nearbyintf(v * 16777216.0f);             /* ties to even   */
        return sign | (uint16_t)r;
    }
    uint32_t e = (a >> 23) - 127 + 15, m = a & 0x7fffffu;
    uint32_t h = (e << 10) | (m >> 13);
    uint32_t rest = m & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;
    return sign | (uint16_t)h;
}

void dpep_linear_widen(const void *src, dpep_wtype t, int64_t n, float *dst)
{
    if (t == DPEP_WT_FP8) { /* no scales here: FP8 is widened by the loader */
        dpep_mat one = dpep_mat_make((void *)src, t, 1, (int)n);
        (void)refuse_fp8(&one, 1, dst, n, 0, (int)n);
        return;
    }
    linear_kernels_get()->widen(src, t, n, dst);
}

/* ---------------------------------------------------------------------- */
/* kernel table choice                                                      */
/* ---------------------------------------------------------------------- */
static const linear_kernels *g_forced; /* dpep_linear_force_isa */

/* The tables this CPU runs, portable first, widest last. */
static int tables(const linear_kernels **out)
{
    int n = 0;
    out[n++] = &linear_kernels_generic;
#if defined(DPEP_LINEAR_HAVE_AVX2) /* GCC/Clang on x86-64 only */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
        out[n++] = &linear_kernels_avx2;
        if (__builtin_cpu_supports("avx512f")) out[n++] = &linear_kernels_avx512;
    }
#endif
    return n;
}

/* The table of that name among this CPU's, or NULL. */
static const linear_kernels *table_named(const char *name)
{
    const linear_kernels *all[4];
    const int n = tables(all);
    for (int i = 0; i < n; i++)
        if (strcmp(all[i]->name, name) == 0) return all[i];
    return NULL;
}

const linear_kernels *linear_kernels_get(void)
{
    const linear_kernels *f = __atomic_load_n(&g_forced, __ATOMIC_ACQUIRE);
    if (f) return f;
    /* chosen on first use; the first calls may come from several threads */
    static const linear_kernels *best;
    const linear_kernels *b = __atomic_load_n(&best, __ATOMIC_ACQUIRE);
    if (!b) {
        const linear_kernels *all[4];
        b = all[tables(all) - 1];
        /* DPEP_CPU_LINEAR_KERNELS=generic|avx2|avx512: a table by name (tests
         * run suites through each; a name this CPU lacks is ignored) */
        const char *env = getenv("DPEP_CPU_LINEAR_KERNELS");
        const linear_kernels *e = env && *env ? table_named(env) : NULL;
        static int warned;
        if (e)
            b = e;
        else if (env && *env && !__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
            fprintf(stderr, "dpep linear: DPEP_CPU_LINEAR_KERNELS=%s is not a table this build "
                            "and CPU run (generic, avx2, avx512 where the CPU has them); using "
                            "%s\n", env, b->name);
        __atomic_store_n(&best, b, __ATOMIC_RELEASE);
    }
    return b;
}

const char *dpep_linear_isa(void) { return linear_kernels_get()->name; }

bool dpep_linear_force_isa(const char *name)
{
    const linear_kernels *k = name ? table_named(name) : NULL;
    if (name && !k) return false;
    __atomic_store_n(&g_forced, k, __ATOMIC_RELEASE);
    return true;
}

void dpep_linear_force_generic(bool on) { (void)dpep_linear_force_isa(on ? "generic" : NULL); }

/* CPUID once (products ask on every call through dpep_linear_small_m):
 * 1 AMD, 0 not, -1 not asked yet. */
static int g_cpu_amd = -1;

bool linear_cpu_amd(void)
{
    int v = __atomic_load_n(&g_cpu_amd, __ATOMIC_ACQUIRE);
    if (v < 0) {
        v = 0;
#if defined(DPEP_LINEAR_HAVE_AVX2)
        __builtin_cpu_init();
        v = __builtin_cpu_is("amd") != 0;
#endif
        __atomic_store_n(&g_cpu_amd, v, __ATOMIC_RELEASE);
    }
    return v == 1;
}

/* M = 1 access order. Streams (8 weight rows in lockstep, page streams for
 * rows under 4 KiB) were measured on Intel (the Sapphire Rapids VM: one
 * core ~16 GB/s, more streams in flight helped); on the Zen 4 VM one core
 * reads row order (two sequential streams, linear_simd.h nt_rows_seq) at
 * 32-37 GB/s and the lockstep streams at 23-28 (f32; BF16 31-35 vs 19-25),
 * so AMD CPUs take row order (bench/RESULTS.md, "Batch-1 products in row
 * order"). 0 streams, 1 rows, -1 not chosen. */
static int g_m1_forced = -1;
static int g_m1_choice = -1;

static int m1_named(const char *name)
{
    if (!name) return -1;
    if (strcmp(name, "rows") == 0) return 1;
    if (strcmp(name, "streams") == 0) return 0;
    return -2;
}

bool linear_m1_rows(void)
{
    const int f = __atomic_load_n(&g_m1_forced, __ATOMIC_ACQUIRE);
    if (f >= 0) return f == 1;
    int c = __atomic_load_n(&g_m1_choice, __ATOMIC_ACQUIRE);
    if (c < 0) {
        c = linear_cpu_amd() ? 1 : 0;
        /* DPEP_CPU_LINEAR_M1=rows|streams names one (tests, benchmarks) */
        const char *env = getenv("DPEP_CPU_LINEAR_M1");
        const int e = env && *env ? m1_named(env) : -1;
        static int warned;
        if (e >= 0)
            c = e;
        else if (e == -2 && !__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
            fprintf(stderr, "dpep linear: DPEP_CPU_LINEAR_M1=%s is not an order (rows, "
                            "streams); using %s\n", env, c ? "rows" : "streams");
        __atomic_store_n(&g_m1_choice, c, __ATOMIC_RELEASE);
    }
    return c == 1;
}

/* BF16 activations split once per call (the tables with nt_xs): 1 yes
 * (the default), 0 in every tile (dpep_linear_force_bf16_split). */
static int g_xsplit = 1;

void dpep_linear_force_bf16_split(bool on) { __atomic_store_n(&g_xsplit, on ? 1 : 0, __ATOMIC_RELEASE); }

const char *dpep_linear_m1_order(void) { return linear_m1_rows() ? "rows" : "streams"; }

const char *dpep_linear_blas_core(void)
{
    const char *c = openblas_get_corename();
    return c ? c : "?";
}

const char *dpep_linear_blas_core_wanted(void)
{
    const char *env = getenv("OPENBLAS_CORETYPE");
    if (env && *env) return NULL;
    /* OpenBLAS's generic picks for x86-64 CPUs it does not know */
    static const char *const k_fallback[] = {"Prescott", "Core2", "Penryn", "Nehalem", "Sandybridge"};
    const char *c = dpep_linear_blas_core();
    bool fallback = false;
    for (size_t i = 0; i < sizeof k_fallback / sizeof k_fallback[0]; i++)
        if (strcmp(c, k_fallback[i]) == 0) fallback = true;
    if (!fallback) return NULL;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vl"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
    return NULL;
}

bool dpep_linear_force_m1_order(const char *name)
{
    const int v = m1_named(name);
    if (v == -2) return false;
    __atomic_store_n(&g_m1_forced, v, __ATOMIC_RELEASE);
    return true;
}

/* -1: the measured crossover (linear_internal.h); else set by
 * dpep_linear_set_small_m. */
static int g_small_m[DPEP_WT_COUNT] = {-1, -1, -1, -1};

int dpep_linear_small_m(dpep_wtype t)
{
    if ((unsigned)t < DPEP_WT_COUNT && g_small_m[t] >= 0) return g_small_m[t];
    const linear_kernels *kk = linear_kernels_get();
    if (kk == &linear_kernels_generic) return LINEAR_GENERIC_SMALL_M;
#if defined(DPEP_LINEAR_HAVE_AVX2)
    if (kk == &linear_kernels_avx512 && linear_cpu_amd())
        return t == DPEP_WT_F32    ? LINEAR_AMD512_SMALL_M_F32
               : t == DPEP_WT_BF16 ? LINEAR_AMD512_SMALL_M_BF16
                                   : LINEAR_AMD512_SMALL_M_F16;
#endif
    return t == DPEP_WT_F32 ? DPEP_LINEAR_SMALL_M_F32 : DPEP_LINEAR_SMALL_M_HALF;
}

void dpep_linear_set_small_m(dpep_wtype t, int m)
{
    if ((unsigned)t < DPEP_WT_COUNT) g_small_m[t] = m < 0 ? -1 : m;
}

/* ---------------------------------------------------------------------- */
/* scratch and statistics                                                   */
/* ---------------------------------------------------------------------- */
static float *g_scratch;          /* n_threads x per-thread floats          */
static size_t g_scratch_per;      /* floats per thread                      */
static int g_scratch_threads;
static dpep_linear_stats g_stats;

static int team_max(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
static int thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}
static bool in_parallel(void)
{
#ifdef _OPENMP
    return omp_in_parallel() != 0;
#else
    return false;
#endif
}

bool dpep_linear_reserve(int64_t max_k, int64_t max_n, int n_threads)
{
    if (n_threads <= 0) n_threads = team_max();
    /* a panel of LINEAR_PANEL_ROWS weight rows of K (NT), or of the K x N
     * matrix in row blocks of the same size (NN) */
    int64_t inner = max_k > max_n ? max_k : max_n;
    size_t per = (size_t)LINEAR_PANEL_ROWS * (size_t)(inner > 0 ? inner : 1);
    if (per <= g_scratch_per && n_threads <= g_scratch_threads) return true;
    if (per < g_scratch_per) per = g_scratch_per;
    if (n_threads < g_scratch_threads) n_threads = g_scratch_threads;
    float *s = NULL;
    if (posix_memalign((void **)&s, 64, per * (size_t)n_threads * sizeof(float)) != 0) return false;
    free(g_scratch);
    g_scratch = s;
    g_scratch_per = per;
    g_scratch_threads = n_threads;
    return true;
}

/* This thread's widening scratch (*cap floats), or NULL when nothing was
 * reserved for this thread (then the caller takes a fallback). The slot is
 * the thread's number in the innermost team: callers in nested parallel
 * regions would share slots, so products are not called from those. */
static float *thread_scratch(size_t *cap)
{
    int t = thread_num();
    if (!g_scratch || t >= g_scratch_threads) {
        *cap = 0;
        return NULL;
    }
    *cap = g_scratch_per;
    return g_scratch + (size_t)t * g_scratch_per;
}

void dpep_linear_get_stats(dpep_linear_stats *out)
{
#pragma omp critical(dpep_linear_stats)
    *out = g_stats;
    if (out->max_team < 1) out->max_team = 1;
}

/* Products may be called from several threads at once (inside a parallel
 * region): the counters are updated atomically. */
static void count_call(bool small, double bytes)
{
    if (small) {
#pragma omp atomic
        g_stats.small_calls++;
#pragma omp atomic
        g_stats.small_bytes += bytes;
    } else {
#pragma omp atomic
        g_stats.blas_calls++;
#pragma omp atomic
        g_stats.blas_bytes += bytes;
    }
}

/* ---------------------------------------------------------------------- */
/* one thread's share: output columns [n0, n0 + nn)                         */
/* ---------------------------------------------------------------------- */
/* A single-row-stack small buffer for when no scratch is reserved. */
#define LINEAR_STACK_FLOATS 2048

/* The widening panel of this thread (its reserved scratch, else the
 * caller's stack buffer of LINEAR_STACK_FLOATS) in *panel, and how many rows
 * of `width` floats it holds (0: not even one). */
static int panel_rows(int width, float *stack, float **panel)
{
    size_t cap;
    *panel = thread_scratch(&cap);
    if (!*panel || cap < (size_t)width) {
        *panel = stack;
        cap = LINEAR_STACK_FLOATS;
    }
    return (int)(cap / (size_t)width);
}

/* NT on BLAS: f32 directly; BF16/F16 widened a panel of rows at a time. */
static void nt_blas(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                    float beta, float *Y, int64_t ldy)
{
    const int K = W->cols;
    if (W->t == DPEP_WT_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, nn, K, 1.0f, X, (int)ldx,
                    (const float *)dpep_mat_at(*W, n0, 0), (int)W->ld, beta, Y + n0, (int)ldy);
        return;
    }
    float stack[LINEAR_STACK_FLOATS];
    float *panel;
    const int rows = panel_rows(K, stack, &panel);
    if (rows < 1) {
        /* K longer than any panel: one row in column pieces (no BLAS) */
        linear_kernels_get()->nt(M, X, ldx, W, n0, nn, beta, Y, ldy);
        return;
    }
    const linear_kernels *kk = linear_kernels_get();
    for (int r = 0; r < nn; r += rows) {
        int nr = nn - r < rows ? nn - r : rows;
        for (int i = 0; i < nr; i++)
            kk->widen(dpep_mat_at(*W, n0 + r + i, 0), W->t, K, panel + (size_t)i * K);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, nr, K, 1.0f, X, (int)ldx, panel, K,
                    beta, Y + n0 + r, (int)ldy);
    }
}

/* NN on BLAS: Y[:, n0:n0+nn] = X W[:, n0:n0+nn]. BF16/F16: the K x nn block
 * widened in row blocks, accumulated. */
static void nn_blas(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                    float beta, float *Y, int64_t ldy)
{
    const int K = W->rows;
    if (W->t == DPEP_WT_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, nn, K, 1.0f, X, (int)ldx,
                    (const float *)dpep_mat_at(*W, 0, n0), (int)W->ld, beta, Y + n0, (int)ldy);
        return;
    }
    float stack[LINEAR_STACK_FLOATS];
    float *panel;
    const int rows = panel_rows(nn, stack, &panel);
    if (rows < 1) {
        linear_kernels_get()->nn(M, X, ldx, W, n0, nn, beta, Y, ldy);
        return;
    }
    const linear_kernels *kk = linear_kernels_get();
    for (int k = 0; k < K; k += rows) {
        int kr = K - k < rows ? K - k : rows;
        for (int i = 0; i < kr; i++)
            kk->widen(dpep_mat_at(*W, k + i, n0), W->t, nn, panel + (size_t)i * nn);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, nn, kr, 1.0f, X + k, (int)ldx,
                    panel, nn, k == 0 ? beta : 1.0f, Y + n0, (int)ldy);
    }
}

typedef void (*share_fn)(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                         float beta, float *Y, int64_t ldy);

/* The BLAS path in fixed blocks of LINEAR_BLAS_COLS output columns counted
 * from column 0 (n0 is a multiple of it): sgemm's result for an element
 * depends on where the element sits in the call's tile grid, so the calls
 * must not move with the thread split. */
static void nt_blas_blocks(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                           float beta, float *Y, int64_t ldy)
{
    for (int b = n0; b < n0 + nn; b += LINEAR_BLAS_COLS)
        nt_blas(M, X, ldx, W, b, n0 + nn - b < LINEAR_BLAS_COLS ? n0 + nn - b : LINEAR_BLAS_COLS,
                beta, Y, ldy);
}
static void nn_blas_blocks(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                           float beta, float *Y, int64_t ldy)
{
    for (int b = n0; b < n0 + nn; b += LINEAR_BLAS_COLS)
        nn_blas(M, X, ldx, W, b, n0 + nn - b < LINEAR_BLAS_COLS ? n0 + nn - b : LINEAR_BLAS_COLS,
                beta, Y, ldy);
}

/* Dynamic chunks of about LINEAR_CHUNK_BYTES of weights (whole align
 * multiples, at least 4 per thread when N allows): a thread slowed by a
 * neighbour does not hold the others at the region's end. */
static int col_chunk(const dpep_mat *W, int N, int align, int nthr)
{
    const double row_bytes = (double)W->cols * (double)dpep_wtype_size(W->t);
    int chunk = (int)(LINEAR_CHUNK_BYTES / (row_bytes > 1 ? row_bytes : 1));
    int most = (N + 4 * nthr - 1) / (4 * nthr);
    if (chunk > most) chunk = most;
    chunk = (chunk + align - 1) / align * align;
    return chunk < align ? align : chunk;
}

/* fn on columns [n0, n0 + nn) on the calling thread. OpenBLAS's OpenMP
 * build threads a call made outside a region (it follows
 * omp_get_max_threads()), and its threaded sgemm rounds differently: a BLAS
 * share called outside a region while the team has several threads runs
 * inside a region, on one thread, as every other BLAS call does. */
static void one_thread(share_fn fn, int M, const float *X, int64_t ldx, const dpep_mat *W, int n0,
                       int nn, float beta, float *Y, int64_t ldy)
{
    const bool blas = fn == nt_blas_blocks || fn == nn_blas_blocks;
    if (blas && !in_parallel() && team_max() > 1) {
#pragma omp parallel num_threads(2)
        {
            if (thread_num() == 0) fn(M, X, ldx, W, n0, nn, beta, Y, ldy);
        }
        return;
    }
    fn(M, X, ldx, W, n0, nn, beta, Y, ldy);
}

/* Runs fn over [0, N) split into per-thread column blocks (multiples of
 * `align` output columns), or on this thread alone for a small product or
 * inside a parallel region. */
static void run_split(share_fn fn, int align, int M, const float *X, int64_t ldx,
                      const dpep_mat *W, int N, double work, float beta, float *Y, int64_t ldy)
{
    int nthr = in_parallel() ? 1 : team_max();
    if (nthr > (N + align - 1) / align) nthr = (N + align - 1) / align;
    if (nthr <= 1 || work < LINEAR_PAR_MIN_WORK) {
        one_thread(fn, M, X, ldx, W, 0, N, beta, Y, ldy);
        return;
    }
    if (nthr > g_stats.max_team) {
#pragma omp atomic write
        g_stats.max_team = nthr;
    }
    const int chunk = col_chunk(W, N, align, nthr);
    const int n_chunks = (N + chunk - 1) / chunk;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthr)
    for (int c = 0; c < n_chunks; c++) {
        int n0 = c * chunk, nn = N - n0 < chunk ? N - n0 : chunk;
        fn(M, X, ldx, W, n0, nn, beta, Y, ldy);
    }
}

/* BF16/F16 with several row blocks: the kernel would widen each weight
 * vector once per block of rows; instead LINEAR_WIDEN_ROWS weight rows are
 * widened once into this thread's scratch (it stays in L1/L2) and the f32
 * kernel runs on them. Widening is exact and the kernel does the same
 * operations per element either way, so results are bit-identical to the
 * direct kernel's. Not for BF16 in a table that sums it by pairs
 * (bf16_direct: AVX-512), whose direct kernel needs no conversion. */
static void nt_small(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                     float beta, float *Y, int64_t ldy)
{
    const linear_kernels *kk = linear_kernels_get();
    const int K = W->cols;
    size_t cap;
    const bool widen = W->t != DPEP_WT_F32 && M >= LINEAR_WIDEN_MIN_M &&
                       !(W->t == DPEP_WT_BF16 && kk->bf16_direct);
    if (W->t == DPEP_WT_BF16 && kk->nt_xs && __atomic_load_n(&g_xsplit, __ATOMIC_ACQUIRE)) {
        /* BF16 pairs: the activations split once into this thread's
         * scratch rather than in every tile (bit-identical) */
        float *xs = thread_scratch(&cap);
        const int64_t ldxs = (K + kk->xs_block - 1) / kk->xs_block * kk->xs_block;
        if (xs && cap >= (size_t)M * (size_t)ldxs) {
            kk->x_split(M, X, ldx, K, xs, ldxs);
            kk->nt_xs(M, xs, ldxs, W, n0, nn, beta, Y, ldy);
            return;
        }
    }
    float *buf = widen ? thread_scratch(&cap) : NULL;
    if (!buf || cap < (size_t)LINEAR_WIDEN_ROWS * (size_t)K) {
        kk->nt(M, X, ldx, W, n0, nn, beta, Y, ldy);
        return;
    }
    for (int r = 0; r < nn; r += LINEAR_WIDEN_ROWS) {
        int nr = nn - r < LINEAR_WIDEN_ROWS ? nn - r : LINEAR_WIDEN_ROWS;
        for (int i = 0; i < nr; i++)
            kk->widen(dpep_mat_at(*W, n0 + r + i, 0), W->t, K, buf + (size_t)i * K);
        dpep_mat wf = dpep_mat_make(buf, DPEP_WT_F32, nr, K);
        kk->nt(M, X, ldx, &wf, 0, nr, beta, Y + n0 + r, ldy);
    }
}
static void nn_small(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                     float beta, float *Y, int64_t ldy)
{
    linear_kernels_get()->nn(M, X, ldx, W, n0, nn, beta, Y, ldy);
}

/* The calling thread's product offload (dpep_linear_set_offload). */
static _Thread_local const dpep_linear_offload *g_offload;

void dpep_linear_set_offload(const dpep_linear_offload *o) { g_offload = o; }

bool dpep_linear_offloading(void) { return g_offload != NULL && !in_parallel(); }

/* One product (nt: X W^T, else X W), without the offload: split over the
 * team outside a parallel region, on the calling thread inside one. */
static void product(bool nt, int M, const float *X, int64_t ldx, const dpep_mat *W, float beta,
                    float *Y, int64_t ldy)
{
    const int N = nt ? W->rows : W->cols, K = nt ? W->cols : W->rows;
    if (M <= 0 || N <= 0) return;
    if (refuse_fp8(W, M, Y, ldy, 0, N)) return;
    if (K <= 0) { /* Y = 0 (or kept), as nt_cols does for a part */
        if (beta == 0.0f)
            for (int m = 0; m < M; m++) memset(Y + (size_t)m * ldy, 0, sizeof(float) * (size_t)N);
        return;
    }
    const bool small = M <= dpep_linear_small_m(W->t);
    count_call(small, (double)N * K * (double)dpep_wtype_size(W->t));
    share_fn fn = nt ? (small ? nt_small : nt_blas_blocks) : (small ? nn_small : nn_blas_blocks);
    run_split(fn, small ? LINEAR_SMALL_ALIGN : LINEAR_BLAS_COLS, M, X, ldx, W, N,
              (double)M * N * K, beta, Y, ldy);
}

void dpep_linear_nt(int M, const float *X, int64_t ldx, const dpep_mat *W, float beta, float *Y,
                    int64_t ldy)
{
    if (M <= 0 || W->rows <= 0) return;
    if (g_offload && g_offload->nt && !in_parallel() &&
        g_offload->nt(g_offload->ctx, M, X, ldx, W, beta, Y, ldy))
        return;
    product(true, M, X, ldx, W, beta, Y, ldy);
}

void dpep_linear_nn(int M, const float *X, int64_t ldx, const dpep_mat *W, float beta, float *Y,
                    int64_t ldy)
{
    product(false, M, X, ldx, W, beta, Y, ldy);
}

void dpep_linear_batched_part(bool nt, int b0, int b1, int M, const float *X, int64_t ldx,
                              int64_t xs, const dpep_mat *W, int64_t ws, float beta, float *Y,
                              int64_t ldy, int64_t ys)
{
    const size_t es = dpep_wtype_size(W->t);
    for (int b = b0; b < b1; b++) {
        dpep_mat v = *W;
        v.p = W->p ? (char *)W->p + (size_t)b * (size_t)ws * es : NULL;
        product(nt, M, X + (size_t)b * (size_t)xs, ldx, &v, beta, Y + (size_t)b * (size_t)ys, ldy);
    }
}

void dpep_linear_batched(bool nt, int batch, int M, const float *X, int64_t ldx, int64_t xs,
                         const dpep_mat *W, int64_t ws, float beta, float *Y, int64_t ldy,
                         int64_t ys)
{
    if (batch <= 0 || M <= 0) return;
    if (g_offload && g_offload->batched && !in_parallel() &&
        g_offload->batched(g_offload->ctx, nt, batch, M, X, ldx, xs, W, ws, beta, Y, ldy, ys))
        return;
    const int nthr = in_parallel() ? 1 : team_max();
    /* one product per thread at a time, each on its thread (in a region) */
#pragma omp parallel for schedule(static) num_threads(nthr) if (nthr > 1)
    for (int b = 0; b < batch; b++)
        dpep_linear_batched_part(nt, b, b + 1, M, X, ldx, xs, W, ws, beta, Y, ldy, ys);
}

int dpep_linear_col_align(int M, const dpep_mat *W)
{
    return M <= dpep_linear_small_m(W->t) ? LINEAR_SMALL_ALIGN : LINEAR_BLAS_COLS;
}

int dpep_linear_col_chunk(int M, const dpep_mat *W, int n_threads)
{
    return col_chunk(W, W->rows, dpep_linear_col_align(M, W), n_threads > 0 ? n_threads : 1);
}

static void nt_cols(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                    float beta, float *Y, int64_t ldy, bool counted)
{
    const int K = W->cols;
    if (M <= 0 || nn <= 0) return;
    if (refuse_fp8(W, M, Y, ldy, n0, nn)) return;
    if (K <= 0) {
        if (beta == 0.0f)
            for (int m = 0; m < M; m++)
                memset(Y + (size_t)m * ldy + n0, 0, sizeof(float) * (size_t)nn);
        return;
    }
    const bool small = M <= dpep_linear_small_m(W->t);
    if (counted) count_call(small, (double)nn * K * (double)dpep_wtype_size(W->t));
    /* (outside a region, BLAS must not thread itself either: one_thread) */
    one_thread(small ? nt_small : nt_blas_blocks, M, X, ldx, W, n0, nn, beta, Y, ldy);
}

void dpep_linear_nt_cols(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                         float beta, float *Y, int64_t ldy)
{
    nt_cols(M, X, ldx, W, n0, nn, beta, Y, ldy, true);
}

void dpep_linear_nt_cols_again(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0,
                               int nn, float beta, float *Y, int64_t ldy)
{
    nt_cols(M, X, ldx, W, n0, nn, beta, Y, ldy, false);
}

void dpep_linear_gather(const dpep_mat *table, const int32_t *ids, int64_t n, float *out)
{
    if (table->t == DPEP_WT_FP8) {
        dpep_mat rows = *table;
        rows.rows = (int)n;
        (void)refuse_fp8(&rows, (int)n, out, table->cols, 0, table->cols);
        return;
    }
    const linear_kernels *kk = linear_kernels_get();
    for (int64_t i = 0; i < n; i++)
        kk->widen(dpep_mat_at(*table, ids[i], 0), table->t, table->cols,
                  out + (size_t)i * (size_t)table->cols);
}
