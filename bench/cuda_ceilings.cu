/* cuda_ceilings.cu — the GPU's own ceilings, measured in the run that quotes
 * them (issue 16: every GPU speed figure is a ratio against these):
 *   copy   device-to-device bandwidth, bytes read + written, through
 *          cudaMemcpyAsync and a 16-byte vectorized copy kernel; sizes of
 *          1, 2 and 4 GiB; per (method, size) the median of the repetitions;
 *          the ceiling is the best of those medians;
 *   bf16   cuBLAS GEMM, n x n x n (default 8192), BF16 in and out, FP32
 *          accumulate (tensor cores), random data;
 *   fp32   the same in FP32, pedantic (no TF32): the precision of the
 *          current kernels.
 * Prints the device, a table, and lines for scripts:
 *   ceiling copy_gbs=...   ceiling bf16_tflops=...   ceiling fp32_tflops=...
 *   summary copy_gbs=... bf16_tflops=... fp32_tflops=...
 * Every copy is checked word by word and sampled GEMM outputs against a
 * double-precision dot product (which also catches TF32 in the fp32 run);
 * a wrong result or a failed call exits 1. Without a GPU: "SKIP: why", exit 0.
 *
 * Usage: cuda_ceilings [-d DEV] [-r REPS] [-n GEMM_N] [--quick]
 *   -d       CUDA device (default 0)
 *   -r       timed repetitions per measurement, median kept (default 15)
 *   -n       GEMM size (default 8192; a multiple of 8)
 *   --quick  1 GiB copies, n = 4096, 5 repetitions (a few seconds) */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpep_cuda.cuh"

#define GIB ((size_t)1 << 30)
#define COPY_THREADS 256
#define REF_THREADS 256
#define N_SAMPLES 128 /* GEMM outputs checked against double precision */

typedef struct opts {
    int dev, reps, gemm_n;
    bool quick;
} opts;

/* ---------------------------------------------------------------------- */
/* data: a counter-based hash, the same on host and device                */
/* ---------------------------------------------------------------------- */
__host__ __device__ static inline uint32_t mix32(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return (uint32_t)x;
}

/* uniform in [-1, 1), never all zeros (zeros would flatter the GEMM's power) */
__device__ static inline float uniform(uint64_t i, uint64_t seed)
{
    return (float)(mix32(i ^ (seed << 40)) >> 8) * (1.0f / 8388608.0f) - 1.0f;
}

__global__ void fill_words(uint32_t *p, size_t n, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = mix32(i ^ (seed << 40));
}

/* counts words of p that differ from fill_words' pattern */
__global__ void check_words(const uint32_t *p, size_t n, uint64_t seed, unsigned long long *bad)
{
    unsigned long long mine = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        mine += p[i] != mix32(i ^ (seed << 40));
    if (mine) atomicAdd(bad, mine);
}

__global__ void fill_f32(float *p, size_t n, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = uniform(i, seed);
}

__global__ void fill_bf16(__nv_bfloat16 *p, size_t n, uint64_t seed)
{
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        p[i] = __float2bfloat16(uniform(i, seed));
}

/* The copy kernel: 16-byte loads and stores, four in flight per thread
 * (all loads before the stores), grid-stride over n16 int4 words. */
__global__ void __launch_bounds__(COPY_THREADS) copy_v16(const int4 *__restrict__ src,
                                                         int4 *__restrict__ dst, size_t n16)
{
    const size_t T = (size_t)gridDim.x * blockDim.x;
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    for (; i + 3 * T < n16; i += 4 * T) {
        int4 a = src[i], b = src[i + T], c = src[i + 2 * T], d = src[i + 3 * T];
        dst[i] = a;
        dst[i + T] = b;
        dst[i + 2 * T] = c;
        dst[i + 3 * T] = d;
    }
    for (; i < n16; i += T) dst[i] = src[i];
}

/* Sample s of an n x n column-major product C = A B: the exact value in
 * double, the norm sqrt(sum (a_ik b_kj)^2) that scales its rounding, and
 * what C holds. One block per sample. */
__device__ static inline double as_double(float x) { return (double)x; }
__device__ static inline double as_double(__nv_bfloat16 x) { return (double)__bfloat162float(x); }

template <typename T>
__global__ void __launch_bounds__(REF_THREADS) gemm_ref(const T *A, const T *B, const T *C, int n,
                                                        double *out)
{
    __shared__ double sh[REF_THREADS / 32];
    const int s = blockIdx.x;
    const int64_t i = mix32(2 * (uint64_t)s + 1) % (uint32_t)n, j = mix32(2 * (uint64_t)s + 2) % (uint32_t)n;
    double acc = 0, sq = 0;
    for (int64_t k = threadIdx.x; k < n; k += REF_THREADS) {
        double t = as_double(A[i + k * n]) * as_double(B[k + j * n]);
        acc += t;
        sq += t * t;
    }
    acc = dpep_block_sum<REF_THREADS, double>(acc, sh);
    sq = dpep_block_sum<REF_THREADS, double>(sq, sh);
    if (threadIdx.x == 0) {
        out[3 * s] = acc;
        out[3 * s + 1] = sqrt(sq);
        out[3 * s + 2] = as_double(C[i + j * n]);
    }
}

/* ---------------------------------------------------------------------- */
/* timing                                                                 */
/* ---------------------------------------------------------------------- */
typedef dpep_status (*op_fn)(void *ctx, cudaStream_t s);

static double median(double *x, int n)
{
    std::sort(x, x + n);
    return n % 2 ? x[n / 2] : 0.5 * (x[n / 2 - 1] + x[n / 2]);
}

/* Runs op `warm` times, then `reps` repetitions of `iters` calls between two
 * events; the median and the best time of one call, in ms. */
static dpep_status time_op(op_fn op, void *ctx, cudaStream_t s, int warm, int iters, int reps,
                           double *med_ms, double *best_ms)
{
    cudaEvent_t e0 = NULL, e1 = NULL;
    double t[256];
    if (reps > 256) reps = 256;
    dpep_status st = DPEP_OK;
    DPEP_CHECK_CUDA(cudaEventCreate(&e0));
    if (cudaEventCreate(&e1) != cudaSuccess) {
        cudaEventDestroy(e0);
        DPEP_ERROR("cuda_ceilings: cudaEventCreate failed");
        return DPEP_ERR_CUDA;
    }
    for (int w = 0; w < warm && st == DPEP_OK; w++) st = op(ctx, s);
    for (int r = 0; r < reps && st == DPEP_OK; r++) {
        cudaError_t rc = cudaEventRecord(e0, s);
        for (int k = 0; k < iters && st == DPEP_OK && rc == cudaSuccess; k++) st = op(ctx, s);
        if (rc == cudaSuccess) rc = cudaEventRecord(e1, s);
        if (rc == cudaSuccess) rc = cudaEventSynchronize(e1);
        float ms = 0;
        if (rc == cudaSuccess) rc = cudaEventElapsedTime(&ms, e0, e1);
        if (rc != cudaSuccess) {
            DPEP_ERROR("cuda_ceilings: timing events -> %s", cudaGetErrorString(rc));
            st = DPEP_ERR_CUDA;
        }
        t[r] = (double)ms / iters;
    }
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
    if (st != DPEP_OK) return st;
    *med_ms = median(t, reps);
    *best_ms = t[0]; /* sorted by median() */
    return DPEP_OK;
}

/* ---------------------------------------------------------------------- */
/* device                                                                 */
/* ---------------------------------------------------------------------- */
static int g_sms;
static double g_dram_gbs; /* theoretical DRAM bandwidth from the clocks */

static dpep_status print_device(int dev)
{
    cudaDeviceProp p;
    DPEP_CHECK_CUDA(cudaGetDeviceProperties(&p, dev));
    int clk = 0, mclk = 0, bus = 0, drv = 0, rt = 0, cbv = 0;
    /* informative only: a query this runtime no longer answers reads 0 */
    if (cudaDeviceGetAttribute(&clk, cudaDevAttrClockRate, dev) != cudaSuccess) clk = 0;
    if (cudaDeviceGetAttribute(&mclk, cudaDevAttrMemoryClockRate, dev) != cudaSuccess) mclk = 0;
    if (cudaDeviceGetAttribute(&bus, cudaDevAttrGlobalMemoryBusWidth, dev) != cudaSuccess) bus = 0;
    (void)cudaGetLastError(); /* clear a failed query's error */
    DPEP_CHECK_CUDA(cudaDriverGetVersion(&drv));
    DPEP_CHECK_CUDA(cudaRuntimeGetVersion(&rt));
    cublasHandle_t h = NULL;
    DPEP_CHECK_CUBLAS(cublasCreate(&h));
    cublasGetVersion(h, &cbv);
    cublasDestroy(h);
    size_t free_b = 0, total_b = 0;
    DPEP_CHECK_CUDA(cudaMemGetInfo(&free_b, &total_b));
    g_sms = p.multiProcessorCount;
    /* DDR: two transfers per memory clock */
    g_dram_gbs = 2.0 * mclk * 1e3 * (bus / 8.0) / 1e9;
    printf("device %d: %s, sm_%d%d, %d SMs, SM clock %.0f MHz (max), memory clock %.0f MHz, "
           "%d-bit bus (%.0f GB/s DRAM peak)\n",
           dev, p.name, p.major, p.minor, p.multiProcessorCount, clk / 1e3, mclk / 1e3, bus,
           g_dram_gbs);
    printf("memory: %.1f GiB total, %.1f GiB free; L2 %.0f MiB; driver %d.%d, runtime %d.%d, "
           "cuBLAS %d\n",
           total_b / (double)GIB, free_b / (double)GIB, p.l2CacheSize / 1048576.0, drv / 1000,
           drv % 1000 / 10, rt / 1000, rt % 1000 / 10, cbv);
    return DPEP_OK;
}

/* ---------------------------------------------------------------------- */
/* copy                                                                   */
/* ---------------------------------------------------------------------- */
typedef struct copy_ctx {
    void *src, *dst;
    size_t bytes;
    bool kernel;
} copy_ctx;

static dpep_status copy_op(void *vc, cudaStream_t s)
{
    copy_ctx *c = (copy_ctx *)vc;
    if (!c->kernel) {
        DPEP_CHECK_CUDA(cudaMemcpyAsync(c->dst, c->src, c->bytes, cudaMemcpyDeviceToDevice, s));
        return DPEP_OK;
    }
    size_t n16 = c->bytes / 16;
    copy_v16<<<g_sms * (2048 / COPY_THREADS), COPY_THREADS, 0, s>>>((const int4 *)c->src,
                                                                    (int4 *)c->dst, n16);
    DPEP_CHECK_CUDA(cudaGetLastError());
    return DPEP_OK;
}

static const uint64_t COPY_SEED = 0xc0b1;

static dpep_status copy_ceiling(const opts *o, cudaStream_t s, double *ceiling)
{
    size_t free_b = 0, total_b = 0;
    DPEP_CHECK_CUDA(cudaMemGetInfo(&free_b, &total_b));
    /* two buffers of the largest size that fits with 1 GiB to spare */
    size_t sizes[3] = {GIB, 2 * GIB, 4 * GIB};
    int n_sizes = o->quick ? 1 : 3;
    while (n_sizes > 0 && 2 * sizes[n_sizes - 1] + GIB > free_b) n_sizes--;
    if (n_sizes == 0) {
        DPEP_ERROR("cuda_ceilings: copy needs 2 x 1 GiB + 1 GiB free, the device has %.1f GiB free",
                   free_b / (double)GIB);
        return DPEP_ERR_NOMEM;
    }
    size_t cap = sizes[n_sizes - 1];
    void *src = NULL, *dst = NULL;
    unsigned long long *bad_d = NULL;
    dpep_status st = DPEP_OK;
    *ceiling = 0;
    if (cudaMalloc(&src, cap) != cudaSuccess || cudaMalloc(&dst, cap) != cudaSuccess ||
        cudaMalloc(&bad_d, sizeof *bad_d) != cudaSuccess) {
        DPEP_ERROR("cuda_ceilings: cudaMalloc of 2 x %.0f GiB for the copy failed",
                   cap / (double)GIB);
        st = DPEP_ERR_NOMEM;
        goto out;
    }
    fill_words<<<g_sms * 8, 256, 0, s>>>((uint32_t *)src, cap / 4, COPY_SEED);
    if (cudaGetLastError() != cudaSuccess) {
        DPEP_ERROR("cuda_ceilings: fill_words launch failed");
        st = DPEP_ERR_CUDA;
        goto out;
    }
    printf("\n%-8s %8s %6s %6s %10s %10s %10s %8s\n", "copy", "GiB", "iters", "reps", "ms(med)",
           "GB/s(med)", "GB/s(best)", "%peak");
    for (int m = 0; m < 2 && st == DPEP_OK; m++)
        for (int k = 0; k < n_sizes && st == DPEP_OK; k++) {
            copy_ctx c = {src, dst, sizes[k], m == 1};
            /* each repetition moves about 16 GiB (read + written) */
            int iters = (int)std::max<size_t>(2, 8 * GIB / sizes[k]);
            double med = 0, best = 0;
            unsigned long long bad = 0;
            if (cudaMemsetAsync(dst, 0, sizes[k], s) != cudaSuccess ||
                cudaMemsetAsync(bad_d, 0, sizeof *bad_d, s) != cudaSuccess) {
                DPEP_ERROR("cuda_ceilings: cudaMemsetAsync failed");
                st = DPEP_ERR_CUDA;
                break;
            }
            st = time_op(copy_op, &c, s, 2, iters, o->reps, &med, &best);
            if (st != DPEP_OK) break;
            check_words<<<g_sms * 8, 256, 0, s>>>((const uint32_t *)dst, sizes[k] / 4, COPY_SEED,
                                                  bad_d);
            if (cudaGetLastError() != cudaSuccess ||
                cudaMemcpyAsync(&bad, bad_d, sizeof bad, cudaMemcpyDeviceToHost, s) != cudaSuccess ||
                cudaStreamSynchronize(s) != cudaSuccess) {
                DPEP_ERROR("cuda_ceilings: checking the copy failed");
                st = DPEP_ERR_CUDA;
                break;
            }
            double gbs = 2.0 * sizes[k] / (med * 1e-3) / 1e9, gbs_best = 2.0 * sizes[k] / (best * 1e-3) / 1e9;
            printf("%-8s %8.0f %6d %6d %10.3f %10.1f %10.1f %7.1f%%\n", m ? "kernel" : "memcpy",
                   sizes[k] / (double)GIB, iters, o->reps, med, gbs, gbs_best,
                   g_dram_gbs > 0 ? 100.0 * gbs / g_dram_gbs : 0.0);
            if (bad) {
                printf("FAILED: %s copy of %.0f GiB: %llu words wrong\n", m ? "kernel" : "memcpy",
                       sizes[k] / (double)GIB, bad);
                st = DPEP_ERR_INTERNAL;
                break;
            }
            *ceiling = std::max(*ceiling, gbs);
        }
out:
    cudaFree(src);
    cudaFree(dst);
    cudaFree(bad_d);
    return st;
}

/* ---------------------------------------------------------------------- */
/* GEMM                                                                   */
/* ---------------------------------------------------------------------- */
typedef struct gemm_ctx {
    cublasHandle_t h;
    int n;
    const void *A, *B;
    void *C;
    cudaDataType_t type;
    cublasComputeType_t compute;
} gemm_ctx;

static dpep_status gemm_op(void *vc, cudaStream_t s)
{
    (void)s; /* the handle's stream */
    gemm_ctx *g = (gemm_ctx *)vc;
    const float one = 1.0f, zero = 0.0f;
    DPEP_CHECK_CUBLAS(cublasGemmEx(g->h, CUBLAS_OP_N, CUBLAS_OP_N, g->n, g->n, g->n, &one, g->A,
                                   g->type, g->n, g->B, g->type, g->n, &zero, g->C, g->type, g->n,
                                   g->compute, CUBLAS_GEMM_DEFAULT));
    return DPEP_OK;
}

/* One precision: fill, time, check samples. tol bounds |C - exact| /
 * sqrt(sum of squared products) over the samples. */
static dpep_status gemm_ceiling(const opts *o, cudaStream_t s, bool bf16, double *tflops)
{
    const int n = o->gemm_n;
    const size_t nn = (size_t)n * n, es = bf16 ? 2 : 4;
    void *A = NULL, *B = NULL, *C = NULL;
    double *ref_d = NULL, ref[3 * N_SAMPLES];
    cublasHandle_t h = NULL;
    dpep_status st = DPEP_OK;
    const char *what = bf16 ? "bf16" : "fp32";
    /* bf16: the output's own rounding (2^-9 of |C|, |C| up to ~4 norms) dominates; fp32
     * pedantic: ~1e-7 * sqrt(n), where TF32 inputs would give ~5e-4 */
    const double tol = bf16 ? 2e-2 : 5e-5;
    double worst = 0, med = 0, best = 0;
    int iters = bf16 ? 10 : 2;
    *tflops = 0;
    if (cudaMalloc(&A, nn * es) != cudaSuccess || cudaMalloc(&B, nn * es) != cudaSuccess ||
        cudaMalloc(&C, nn * es) != cudaSuccess ||
        cudaMalloc(&ref_d, sizeof(double) * 3 * N_SAMPLES) != cudaSuccess) {
        DPEP_ERROR("cuda_ceilings: cudaMalloc of 3 x %.0f MiB for the %s GEMM failed",
                   nn * es / 1048576.0, what);
        st = DPEP_ERR_NOMEM;
        goto out;
    }
    if (bf16) {
        fill_bf16<<<g_sms * 8, 256, 0, s>>>((__nv_bfloat16 *)A, nn, 1);
        fill_bf16<<<g_sms * 8, 256, 0, s>>>((__nv_bfloat16 *)B, nn, 2);
    } else {
        fill_f32<<<g_sms * 8, 256, 0, s>>>((float *)A, nn, 1);
        fill_f32<<<g_sms * 8, 256, 0, s>>>((float *)B, nn, 2);
    }
    if (cudaGetLastError() != cudaSuccess) {
        DPEP_ERROR("cuda_ceilings: %s fill launch failed", what);
        st = DPEP_ERR_CUDA;
        goto out;
    }
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS || cublasSetStream(h, s) != CUBLAS_STATUS_SUCCESS ||
        /* fp32: pedantic math, no TF32 or other reduced-precision paths */
        cublasSetMathMode(h, bf16 ? CUBLAS_DEFAULT_MATH : CUBLAS_PEDANTIC_MATH) !=
            CUBLAS_STATUS_SUCCESS) {
        DPEP_ERROR("cuda_ceilings: cuBLAS handle for the %s GEMM failed", what);
        st = DPEP_ERR_CUBLAS;
        goto out;
    }
    {
        gemm_ctx g = {h, n, A, B, C, bf16 ? CUDA_R_16BF : CUDA_R_32F,
                      bf16 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_PEDANTIC};
        st = time_op(gemm_op, &g, s, 2, iters, o->reps, &med, &best);
        if (st != DPEP_OK) goto out;
    }
    if (bf16)
        gemm_ref<__nv_bfloat16><<<N_SAMPLES, REF_THREADS, 0, s>>>(
            (const __nv_bfloat16 *)A, (const __nv_bfloat16 *)B, (const __nv_bfloat16 *)C, n, ref_d);
    else
        gemm_ref<float><<<N_SAMPLES, REF_THREADS, 0, s>>>((const float *)A, (const float *)B,
                                                          (const float *)C, n, ref_d);
    if (cudaGetLastError() != cudaSuccess ||
        cudaMemcpyAsync(ref, ref_d, sizeof ref, cudaMemcpyDeviceToHost, s) != cudaSuccess ||
        cudaStreamSynchronize(s) != cudaSuccess) {
        DPEP_ERROR("cuda_ceilings: checking the %s GEMM failed", what);
        st = DPEP_ERR_CUDA;
        goto out;
    }
    for (int k = 0; k < N_SAMPLES; k++) {
        double e = fabs(ref[3 * k + 2] - ref[3 * k]) / (ref[3 * k + 1] > 0 ? ref[3 * k + 1] : 1.0);
        worst = isfinite(ref[3 * k + 2]) ? std::max(worst, e) : INFINITY;
    }
    {
        double flop = 2.0 * n * (double)n * n;
        *tflops = flop / (med * 1e-3) / 1e12;
        printf("%-8s %8d %6d %6d %10.3f %10.1f %10.1f %10.2e\n", what, n, iters, o->reps, med,
               *tflops, flop / (best * 1e-3) / 1e12, worst);
    }
    if (!(worst <= tol)) {
        printf("FAILED: %s GEMM: sampled error %.3g over the tolerance %.0e\n", what, worst, tol);
        st = DPEP_ERR_INTERNAL;
    }
out:
    if (h) cublasDestroy(h);
    cudaFree(A);
    cudaFree(B);
    cudaFree(C);
    cudaFree(ref_d);
    return st;
}

/* ---------------------------------------------------------------------- */
static int usage(const char *argv0)
{
    fprintf(stderr, "usage: %s [-d DEV] [-r REPS] [-n GEMM_N] [--quick]\n", argv0);
    return 2;
}

int main(int argc, char **argv)
{
    dpep_log_init();
    opts o = {0, 15, 8192, false};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--quick") == 0) {
            o.quick = true;
        } else if ((strcmp(a, "-d") == 0 || strcmp(a, "-r") == 0 || strcmp(a, "-n") == 0) &&
                   i + 1 < argc) {
            char *end = NULL;
            long v = strtol(argv[++i], &end, 10);
            if (!end || *end || v < 0 || v > 1 << 20) return usage(argv[0]);
            if (a[1] == 'd') o.dev = (int)v;
            else if (a[1] == 'r') o.reps = (int)v;
            else o.gemm_n = (int)v;
        } else {
            return usage(argv[0]);
        }
    }
    bool n_given = false;
    for (int i = 1; i < argc; i++) n_given |= strcmp(argv[i], "-n") == 0;
    if (o.quick) {
        if (!n_given) o.gemm_n = 4096;
        o.reps = std::min(o.reps, 5);
    }
    if (o.reps < 1 || o.reps > 256 || o.gemm_n < 256 || o.gemm_n % 8 || o.gemm_n > 32768) {
        fprintf(stderr, "cuda_ceilings: -r in 1..256, -n a multiple of 8 in 256..32768\n");
        return 2;
    }
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess || count == 0) {
        printf("SKIP: no usable CUDA device (%s)\n",
               rc != cudaSuccess ? cudaGetErrorString(rc) : "none visible");
        return 0;
    }
    if (o.dev >= count) {
        fprintf(stderr, "cuda_ceilings: device %d of %d\n", o.dev, count);
        return 2;
    }
    if (cudaSetDevice(o.dev) != cudaSuccess || print_device(o.dev) != DPEP_OK) return 1;
    cudaStream_t s = NULL;
    if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) {
        fprintf(stderr, "cuda_ceilings: cudaStreamCreate failed\n");
        return 1;
    }
    double copy = 0, bf16 = 0, fp32 = 0;
    dpep_status st = copy_ceiling(&o, s, &copy);
    if (st == DPEP_OK) {
        printf("\n%-8s %8s %6s %6s %10s %10s %10s %10s\n", "gemm", "n", "iters", "reps", "ms(med)",
               "TFLOP/s", "(best)", "max err");
        st = gemm_ceiling(&o, s, true, &bf16);
    }
    if (st == DPEP_OK) st = gemm_ceiling(&o, s, false, &fp32);
    cudaStreamDestroy(s);
    if (st != DPEP_OK) {
        printf("FAILED: %s\n", dpep_status_string(st));
        return 1;
    }
    printf("\nceiling copy_gbs=%.1f (device-to-device, bytes read + written, best of the medians)\n",
           copy);
    printf("ceiling bf16_tflops=%.1f (cuBLAS GEMM %d^3, BF16 in/out, FP32 accumulate)\n", bf16,
           o.gemm_n);
    printf("ceiling fp32_tflops=%.1f (cuBLAS GEMM %d^3, FP32 pedantic, no TF32)\n", fp32, o.gemm_n);
    printf("summary copy_gbs=%.1f bf16_tflops=%.1f fp32_tflops=%.1f\n", copy, bf16, fp32);
    return 0;
}
