/* bench_cuda.cuh — helpers the CUDA benches share (header-only, bench/ only):
 * exit-on-error checks for CUDA calls and dpep statuses, device fills of
 * random data from a hash (no host copy), device allocation, and a timer on
 * the calling thread's default stream. Every failure prints the file, line
 * and call, then exits 1 (a bench has nothing to recover). */
#ifndef DPEP_BENCH_CUDA_CUH
#define DPEP_BENCH_CUDA_CUH

#include <cuda_runtime.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "dpep_base.h"

#define CK(call)                                                                                 \
    do {                                                                                         \
        cudaError_t e_ = (call);                                                                 \
        if (e_ != cudaSuccess) {                                                                 \
            fprintf(stderr, "%s:%d %s -> %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)
#define CKS(call)                                                                                \
    do {                                                                                         \
        if ((call) != DPEP_OK) {                                                                 \
            fprintf(stderr, "%s:%d %s failed\n", __FILE__, __LINE__, #call);                     \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)

__device__ __forceinline__ uint32_t bench_hash32(uint64_t i, uint32_t seed)
{
    uint64_t h = i * 0x9E3779B97F4A7C15ull + seed;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return (uint32_t)(h >> 32);
}
/* x[i] uniform in [lo, hi) from a hash of (seed, i). */
__global__ void k_bench_fill(float *x, size_t n, float lo, float hi, uint32_t seed)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = lo + (hi - lo) * (float)(bench_hash32(i, seed) >> 8) * (1.0f / 16777216.0f);
}
static inline void bench_fill(float *x, size_t n, float lo, float hi, uint32_t seed)
{
    k_bench_fill<<<1024, 256>>>(x, n, lo, hi, seed);
    CK(cudaGetLastError());
}

static inline void *dalloc(size_t bytes)
{
    void *p = NULL;
    CK(cudaMalloc(&p, bytes));
    return p;
}

/* Seconds per call of fn over n calls (events on the default stream). */
template <typename F> static double time_it(int n, F fn)
{
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    CK(cudaEventRecord(a, 0));
    for (int i = 0; i < n; i++) fn();
    CK(cudaEventRecord(b, 0));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return ms * 1e-3 / n;
}

#endif
