/* dpep_cuda.cuh — for the CUDA files of the modules only (included from .cu
 * files; header-only, so runtime/base itself links neither cuBLAS nor any
 * kernel): the block reductions every kernel file needs, and the
 * per-device cuBLAS handle in exact fp32.
 *
 * Ownership: each module that includes it keeps its own handle per device,
 * created on first use under a mutex and kept for the life of the process
 * (destroying a cuBLAS handle at exit races the CUDA context's teardown). */
#ifndef DPEP_CUDA_CUH
#define DPEP_CUDA_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dpep_base.h"

#define DPEP_CUDA_MAX_DEVICES 64

/* Inside a void function of a module's CUDA kernel table: a failed call is
 * handed to the including file's own
 *     static void op_fail(const char *op, const char *call, const char *err, dpep_status st)
 * (it logs "MODULE cuda OP: call -> error" and keeps the thread's first error
 * for the table's status/check entry), then control leaves through the
 * function's `fail:` label. */
#define DPEP_OP_CUDA(op, call)                                                                   \
    do {                                                                                         \
        cudaError_t rc_ = (call);                                                                \
        if (rc_ != cudaSuccess) {                                                                \
            op_fail(op, #call, cudaGetErrorString(rc_), DPEP_ERR_CUDA);                          \
            goto fail;                                                                           \
        }                                                                                        \
    } while (0)
#define DPEP_OP_CUBLAS(op, call)                                                                 \
    do {                                                                                         \
        cublasStatus_t rc_ = (call);                                                             \
        if (rc_ != CUBLAS_STATUS_SUCCESS) {                                                      \
            op_fail(op, #call, dpep_cublas_error_string((int)rc_), DPEP_ERR_CUBLAS);             \
            goto fail;                                                                           \
        }                                                                                        \
    } while (0)

/* The same for a call returning dpep_status (e.g. runtime/linear's CUDA
 * products, which have logged their own error already). */
#define DPEP_OP_STATUS(op, call)                                                                 \
    do {                                                                                         \
        dpep_status st_ = (call);                                                                \
        if (st_ != DPEP_OK) {                                                                    \
            op_fail(op, #call, dpep_status_string(st_), st_);                                    \
            goto fail;                                                                           \
        }                                                                                        \
    } while (0)

/* Sum / max over the block of one value per thread; every thread gets the
 * result. NT: threads per block (a multiple of 32, at most 1024); sh: NT/32
 * elements of shared memory, reusable by the caller afterwards. */
template <int NT, typename T> __device__ T dpep_block_sum(T v, T *sh)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < NT / 32 ? sh[lane] : (T)0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    T r = sh[0];
    __syncthreads();
    return r;
}
template <int NT> __device__ float dpep_block_max(float v, float *sh)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < NT / 32 ? sh[lane] : -INFINITY;
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    float r = sh[0];
    __syncthreads();
    return r;
}

/* D += A B on tensor cores, mma.sync.aligned.m16n8k16 with fp32
 * accumulators: A (16 x 16, row-major) and B (16 x 8, column-major) as
 * packed pairs of BF16 elements (F16 with F16 = true), the lower-index
 * element in the low 16 bits. The PTX ISA's fragments, g = lane / 4 and
 * t = lane % 4: a0 = A[g][2t, 2t+1], a1 = A[g+8][2t, 2t+1], a2 = A[g][2t+8,
 * 2t+9], a3 = A[g+8][2t+8, 2t+9]; b0 = B[2t, 2t+1][g], b1 = B[2t+8, 2t+9][g];
 * d[0], d[1] = D[g][2t, 2t+1], d[2], d[3] = D[g+8][2t, 2t+1]. sm_80 and
 * later (a trap below: the callers check the device first). */
template <bool F16 = false>
__device__ __forceinline__ void dpep_mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                              uint32_t a3, uint32_t b0, uint32_t b1)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (F16)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, "
                     "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
                     "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                     : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
    (void)d, (void)a0, (void)a1, (void)a2, (void)a3, (void)b0, (void)b1;
    __trap();
#endif
}

/* Two floats rounded to nearest even and packed as an mma operand pair:
 * BF16 (F16 with F16 = true), lo in the low 16 bits. */
template <bool F16 = false> __device__ __forceinline__ uint32_t dpep_pack16x2(float lo, float hi)
{
    if (F16)
        return (uint32_t)__half_as_ushort(__float2half_rn(lo)) |
               ((uint32_t)__half_as_ushort(__float2half_rn(hi)) << 16);
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
}

/* An E4M3 byte times its 128 x 128 block's scale, in float32: the CPU
 * loader's value of an FP8 weight, which every FP8 path rounds from. */
__device__ __forceinline__ float dpep_fp8_scaled(unsigned byte, float scale)
{
    __nv_fp8_e4m3 v;
    v.__x = (__nv_fp8_storage_t)(byte & 0xffu);
    return static_cast<float>(v) * scale;
}

/* What the kernels choose by on CUDA device `dev`, asked once per device and
 * file (0s when the device cannot be asked): compute capability's major
 * (mma.sync on BF16 from 8), multiprocessors, and the shared memory one
 * block may opt into (227 KB on H100/H200, 163 KB on A100, 99 KB on the 8.6
 * and 8.9 parts). NULL for an ordinal past DPEP_CUDA_MAX_DEVICES. */
typedef struct dpep_cuda_facts {
    int major, sms;
    size_t smem_optin;
} dpep_cuda_facts;
static inline const dpep_cuda_facts *dpep_cuda_device_facts(int dev)
{
    static dpep_cuda_facts f[DPEP_CUDA_MAX_DEVICES];
    static bool asked[DPEP_CUDA_MAX_DEVICES];
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    if (dev < 0 || dev >= DPEP_CUDA_MAX_DEVICES) return NULL;
    pthread_mutex_lock(&lock);
    if (!asked[dev]) {
        int major = 0, sms = 0, optin = 0;
        if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
            cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
            (void)cudaGetLastError();
            major = sms = optin = 0;
        }
        f[dev].major = major;
        f[dev].sms = sms;
        f[dev].smem_optin = (size_t)optin;
        asked[dev] = true;
    }
    pthread_mutex_unlock(&lock);
    return &f[dev];
}

/* DPEP_CUDA_NO_TC=1 (any value but "0" or empty) in the environment: the
 * tensor-core kernels of our own stay off — the attention core on BF16 pools
 * (k_mla_core_tc), the direct FP8 products (k_f8_nt), the grouped expert
 * tiles (k_grouped_tc) — and their previous paths run (the fp32 tiled core,
 * dequantize + cuBLAS, the FMA tiles): to tell, on a GPU, whether a failure
 * comes from them (scripts/gpu-check.sh's header). Read once per process. */
static inline bool dpep_cuda_tc_off(void)
{
    static int off = -1;
    if (off < 0) {
        const char *v = getenv("DPEP_CUDA_NO_TC");
        off = v && *v && strcmp(v, "0") != 0;
    }
    return off != 0;
}

/* Binds a new cuBLAS handle to the calling thread's default stream (where
 * every kernel of the modules runs: the build's --default-stream
 * per-thread) and gives it a workspace of its own (32 MiB, Hopper's
 * recommendation), so that no call allocates: a CUDA graph can capture it.
 * The workspace lives as long as the handle (the process). */
#define DPEP_CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)
static inline cublasStatus_t dpep_cublas_bind(cublasHandle_t h)
{
    cublasStatus_t rc = cublasSetStream(h, cudaStreamPerThread);
    void *ws = NULL;
    if (rc == CUBLAS_STATUS_SUCCESS) {
        if (cudaMalloc(&ws, DPEP_CUBLAS_WORKSPACE_BYTES) != cudaSuccess) {
            (void)cudaGetLastError();
            return CUBLAS_STATUS_ALLOC_FAILED;
        }
        rc = cublasSetWorkspace(h, ws, DPEP_CUBLAS_WORKSPACE_BYTES);
        if (rc != CUBLAS_STATUS_SUCCESS) (void)cudaFree(ws);
    }
    return rc;
}

/* This module's cuBLAS handle on CUDA device `dev`: pedantic math (no TF32
 * or other reduced-precision paths, so results match the CPU and the fp32
 * goldens), the calling thread's default stream, a workspace of its own
 * (dpep_cublas_bind). `who` prefixes the logged error. */
static inline dpep_status dpep_cublas_fp32(const char *who, int dev, cublasHandle_t *out)
{
    static cublasHandle_t handles[DPEP_CUDA_MAX_DEVICES];
    static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    if (dev < 0 || dev >= DPEP_CUDA_MAX_DEVICES) {
        DPEP_ERROR("%s: device ordinal %d beyond %d", who, dev, DPEP_CUDA_MAX_DEVICES);
        return DPEP_ERR_INTERNAL;
    }
    dpep_status st = DPEP_OK;
    pthread_mutex_lock(&lock);
    if (!handles[dev]) {
        cublasHandle_t h = NULL;
        cublasStatus_t rc = cublasCreate(&h);
        if (rc == CUBLAS_STATUS_SUCCESS) rc = cublasSetMathMode(h, CUBLAS_PEDANTIC_MATH);
        if (rc == CUBLAS_STATUS_SUCCESS) rc = dpep_cublas_bind(h);
        if (rc != CUBLAS_STATUS_SUCCESS) {
            DPEP_ERROR("%s: cuBLAS handle on device %d -> %s", who, dev,
                       dpep_cublas_error_string((int)rc));
            if (h) cublasDestroy(h);
            st = DPEP_ERR_CUBLAS;
        } else {
            handles[dev] = h;
        }
    }
    *out = handles[dev];
    pthread_mutex_unlock(&lock);
    return st;
}

#endif /* DPEP_CUDA_CUH */
