/* linear_cuda.cu — runtime/linear on a CUDA device: products of float32
 * activation rows with stored weight matrices (float32, BF16 or F16, as the
 * loader holds them on the GPU) and the widening row gather, for every
 * module's CUDA file (attention projections, experts, dense FFN, lm_head,
 * embeddings). The contract is dpep_linear.h's "On a CUDA device" section.
 *
 * Three paths, picked by the weight's type:
 *  - float32 weights: cuBLAS SGEMM in pedantic math (no TF32), the CPU's
 *    products up to the order of the sums (the fp32 goldens hold);
 *  - BF16 / F16 weights, kept as stored (half the bytes of float32, and
 *    tensor cores): the activation rows are rounded to the weight's type
 *    (round to nearest even) into this device's workspace, then one
 *    cublasGemmEx / cublasGemmStridedBatchedEx with 16-bit inputs, float32
 *    accumulation and float32 output, as SGLang and vLLM run BF16 models.
 *    Everything else (norms, RoPE, softmax, residuals, the KV cache) stays
 *    float32, so the only rounding beyond the CPU's is that of the
 *    activations at each product's input (relative 2^-9 for BF16);
 *  - FP8 (E4M3, 128x128 block scales) weights, kept as stored (1 byte per
 *    parameter): products of up to 64 rows (decode) in k_f8_nt, which reads
 *    each FP8 byte once and widens it in shared memory to the BF16 operand
 *    of a tensor-core product (split-K when the weight-row blocks are too
 *    few for the SMs); larger products (prefill: compute-bound) dequantize W
 *    into a BF16 buffer (the CPU loader's float32 values rounded once; in
 *    chunks of rows that fit the buffer reserved at create), then the BF16
 *    path (cuBLAS). Both give the same operands: X rounded to BF16, W's
 *    fp8 x scale rounded once to BF16.
 *
 * State per CUDA device, made on first use under one mutex and kept for the
 * life of the process (destroying a cuBLAS handle at exit races the CUDA
 * context's teardown): the fp32 handle (pedantic math), a 16-bit handle
 * (default math, so tensor cores serve the 16-bit inputs) and the workspace
 * of rounded activations. The workspace is sized by dpep_linear_cuda_reserve
 * at create time; a product bigger than it runs in chunks of rows that fit,
 * so no product allocates (only a product whose single row exceeds the
 * workspace grows it, logged at debug level; the old buffer is kept, since
 * a captured CUDA graph may read it). The mutex is held from the
 * rounding to the GEMM's launch: two threads never interleave their use of
 * one workspace.
 *
 * Streams: everything on the calling thread's default stream (the build's
 * --default-stream per-thread), in order with the modules' kernels and the
 * allocator's copies; nothing here synchronizes or allocates once reserved,
 * so a CUDA graph can capture the products. One host thread per device: the
 * workspace and the handles' workspaces are per device, and two threads'
 * default streams do not wait for each other (the mutex orders the
 * launches, not the kernels). */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>

#include "dpep_cuda.cuh"
#include "dpep_linear.h"

#define BLOCK 256
#define WS_MIN_ELEMS ((int64_t)1 << 20) /* 2 MB of 16-bit activations at least */
#define WS_MAX_RESERVE ((int64_t)1 << 25) /* reservations stop at 64 MB: chunks beyond */
#define WS_MAX_DEQUANT ((int64_t)1 << 26) /* FP8 dequantization: 128 MB at most reserved */

typedef struct lin_dev {
    bool ready;
    cublasHandle_t h32;  /* pedantic fp32 (dpep_cublas_fp32)                 */
    cublasHandle_t h16;  /* default math: tensor cores for 16-bit inputs     */
    void *ws;            /* rounded activations, 2-byte elements             */
    int64_t ws_elems;
    void *wq;            /* FP8 weights dequantized to BF16 for a product;
                            the direct FP8 kernel's split-K partials        */
    int64_t wq_elems;
} lin_dev;

static lin_dev g_dev[DPEP_CUDA_MAX_DEVICES];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t g_ws_cap = -1; /* tests: a workspace limit (elements), -1 none */
static int g_fp8_path;        /* tests: 0 auto, 1 always dequantize, 2 direct or fail */

static dpep_status lin_fail(const char *op, const char *call, const char *err, dpep_status st)
{
    int dev = -1;
    if (cudaGetDevice(&dev) != cudaSuccess) dev = -1;
    DPEP_ERROR("linear cuda %s (device %d): %s -> %s", op, dev, call, err);
    (void)cudaGetLastError(); /* a non-sticky error is reported once */
    return st;
}

#define LC_CUDA(call)                                                                            \
    do {                                                                                         \
        cudaError_t rc_ = (call);                                                                \
        if (rc_ != cudaSuccess) {                                                                \
            st = lin_fail(op, #call, cudaGetErrorString(rc_), DPEP_ERR_CUDA);                    \
            goto out;                                                                            \
        }                                                                                        \
    } while (0)
#define LC_BLAS(call)                                                                            \
    do {                                                                                         \
        cublasStatus_t rc_ = (call);                                                             \
        if (rc_ != CUBLAS_STATUS_SUCCESS) {                                                      \
            st = lin_fail(op, #call, dpep_cublas_error_string((int)rc_), DPEP_ERR_CUBLAS);       \
            goto out;                                                                            \
        }                                                                                        \
    } while (0)

/* The current device's state (handles made), with a workspace of at least
 * `need` elements when need > 0. Called with g_lock held. */
/* A buffer cannot grow while the thread's stream is being captured
 * (cudaMalloc would invalidate the capture): the product fails with a
 * message, the engine drops that graph and the step runs eagerly, where the
 * buffer grows. */
static dpep_status no_growth_in_capture(const char *op, const char *what)
{
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(cudaStreamPerThread, &cs) != cudaSuccess) {
        (void)cudaGetLastError();
        return DPEP_OK;
    }
    if (cs == cudaStreamCaptureStatusNone) return DPEP_OK;
    return lin_fail(op, what, "not possible while a CUDA graph is captured (the graph is dropped, "
                    "the step runs eagerly)", DPEP_ERR_UNSUPPORTED);
}

static dpep_status dev_get(const char *op, int64_t need, lin_dev **out)
{
    dpep_status st = DPEP_OK;
    int dev = 0;
    lin_dev *d = NULL;
    LC_CUDA(cudaGetDevice(&dev));
    if (dev < 0 || dev >= DPEP_CUDA_MAX_DEVICES) {
        st = lin_fail(op, "cudaGetDevice", "device ordinal beyond DPEP_CUDA_MAX_DEVICES",
                      DPEP_ERR_INTERNAL);
        goto out;
    }
    d = &g_dev[dev];
    if (!d->ready) {
        st = dpep_cublas_fp32("linear cuda", dev, &d->h32);
        if (st != DPEP_OK) goto out;
        if (!d->h16) {
            cublasHandle_t h = NULL;
            LC_BLAS(cublasCreate(&h));
            cublasStatus_t rc = cublasSetMathMode(h, CUBLAS_DEFAULT_MATH);
            if (rc == CUBLAS_STATUS_SUCCESS) rc = dpep_cublas_bind(h);
            if (rc != CUBLAS_STATUS_SUCCESS) {
                (void)cublasDestroy(h);
                st = lin_fail(op, "the 16-bit cuBLAS handle", dpep_cublas_error_string((int)rc),
                              DPEP_ERR_CUBLAS);
                goto out;
            }
            d->h16 = h;
        }
        d->ready = true;
    }
    if (need > d->ws_elems) {
        int64_t cap = d->ws_elems > WS_MIN_ELEMS ? d->ws_elems : WS_MIN_ELEMS;
        while (cap < need) cap *= 2;
        /* the old buffer is kept (not freed): a CUDA graph captured before
         * may still read it (growth is rare: only a product whose one row
         * does not fit what was reserved) */
        if (d->ws) DPEP_DEBUG("linear cuda: device %d workspace grows to %lld elements", dev, (long long)cap);
        DPEP_TRY_GOTO(no_growth_in_capture(op, "workspace growth"), st, out);
        void *nw = NULL;
        LC_CUDA(cudaMalloc(&nw, (size_t)cap * 2));
        d->ws = nw;
        d->ws_elems = cap;
    }
    *out = d;
out:
    return st;
}

extern "C" dpep_status dpep_linear_cuda_reserve(int64_t elems)
{
    const char *op = "reserve";
    lin_dev *d = NULL;
    pthread_mutex_lock(&g_lock);
    if (elems > WS_MAX_RESERVE) elems = WS_MAX_RESERVE;
    if (g_ws_cap >= 0 && elems > g_ws_cap) elems = g_ws_cap;
    dpep_status st = dev_get(op, elems > 0 ? elems : 0, &d);
    pthread_mutex_unlock(&g_lock);
    return st;
}

static dpep_status dq_get(const char *op, lin_dev *d, int64_t need);

extern "C" dpep_status dpep_linear_cuda_reserve_fp8(int64_t elems)
{
    const char *op = "reserve";
    lin_dev *d = NULL;
    if (elems > WS_MAX_DEQUANT) elems = WS_MAX_DEQUANT;
    pthread_mutex_lock(&g_lock);
    dpep_status st = dev_get(op, 0, &d);
    if (st == DPEP_OK) st = dq_get(op, d, elems);
    pthread_mutex_unlock(&g_lock);
    return st;
}

extern "C" void dpep_linear_cuda_test_fp8_path(int mode)
{
    pthread_mutex_lock(&g_lock);
    g_fp8_path = mode;
    pthread_mutex_unlock(&g_lock);
}

extern "C" void dpep_linear_cuda_test_workspace(int64_t max_elems)
{
    pthread_mutex_lock(&g_lock);
    g_ws_cap = max_elems;
    pthread_mutex_unlock(&g_lock);
}

/* ------------------------------------------------------------------------ */
/* Kernels                                                                  */
/* ------------------------------------------------------------------------ */
template <typename T> __device__ __forceinline__ T round16(float f);
template <> __device__ __forceinline__ __nv_bfloat16 round16<__nv_bfloat16>(float f)
{
    return __float2bfloat16_rn(f);
}
template <> __device__ __forceinline__ __half round16<__half>(float f) { return __float2half_rn(f); }

__device__ __forceinline__ float widen(float x) { return x; }
__device__ __forceinline__ float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float widen(__half x) { return __half2float(x); }

/* dst[b][r][k] (compact) = X[b * xs + r * ldx + k] rounded, for b < batch,
 * r < M, k < K; grid-stride. */
template <typename T>
static __global__ void k_round(const float *__restrict__ X, int64_t ldx, int64_t xs, int M, int K,
                        int batch, T *__restrict__ dst)
{
    const int64_t per = (int64_t)M * K, n = per * batch;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t b = i / per, rk = i - b * per, r = rk / K, k = rk - r * K;
        dst[i] = round16<T>(X[b * xs + r * ldx + k]);
    }
}

/* out[t, :] = table[ids[t], :] widened; grid (n), threads over the row. An
 * id outside [0, V) gives a row of NaN (the engine checks ids on the host;
 * this keeps a bad one from reading outside the table). */
template <typename T>
static __global__ void k_gather(const T *__restrict__ table, int64_t ld, int64_t V, int H,
                         const int32_t *__restrict__ ids, float *__restrict__ out)
{
    const int64_t t = blockIdx.x;
    const int32_t id = ids[t];
    float *dst = out + t * H;
    if (id < 0 || id >= V) {
        for (int j = threadIdx.x; j < H; j += blockDim.x) dst[j] = __int_as_float(0x7fc00000);
        return;
    }
    const T *src = table + (int64_t)id * ld;
    for (int j = threadIdx.x; j < H; j += blockDim.x) dst[j] = widen(src[j]);
}

static unsigned grid_for(int64_t n)
{
    int64_t b = (n + BLOCK - 1) / BLOCK;
    return (unsigned)(b < 65535 * 8 ? b : 65535 * 8);
}

/* dst[r * dld + c] = bf16(fp8(W8[r * ld + c]) x scale[((sr0 + r) / 128) * sld
 * + c / 128]) for r < rows, c < cols: the CPU loader's dequantization (the
 * product in float32), rounded once to BF16; grid-stride. */
static __global__ void k_dequant_fp8(const unsigned char *__restrict__ W8, int64_t ld, int rows, int cols,
                              const float *__restrict__ scale, int64_t sld, int sr0,
                              __nv_bfloat16 *__restrict__ dst, int64_t dld)
{
    const int64_t n = (int64_t)rows * cols;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t r = i / cols, c = i - r * cols;
        const float s = scale[((sr0 + r) / DPEP_FP8_BLOCK) * sld + c / DPEP_FP8_BLOCK];
        dst[r * dld + c] = __float2bfloat16_rn(dpep_fp8_scaled(W8[r * ld + c], s));
    }
}

/* FP8 weights read once, for products of few rows (decode): Y[M, N] =
 * beta Y + X W^T with M <= 64, W = [N, K] E4M3 with 128 x 128 block
 * scales. The operands are the dequantization path's exactly — X's rows
 * rounded to BF16, W's elements fp8 x scale in float32 rounded once to BF16
 * — multiplied on tensor cores (mma.sync m16n8k16, fp32 sums): only the
 * order of the sums differs from dequantize-then-cuBLAS, and each weight
 * byte is read from memory once (instead of FP8 in, BF16 out and in).
 * Block: 8 warps, F8_BN = 128 weight rows (each warp 16 of them, 2 blocks
 * of 8) x all 16 MB rows of X (MB blocks of 16), F8_BK = 64 columns per
 * step: the step's FP8 weights (2 x 16 bytes per thread) and X rows are
 * loaded into registers while the previous step multiplies, then widened /
 * rounded into shared memory (rows padded by 8 elements: the fragment loads
 * of one instruction fall in distinct banks). Split-K (grid.y): each slice
 * of the columns writes its partial sums to `part` (gridDim.y, M, N), and
 * k_f8_reduce adds them in slice order (bit-stable for a given split);
 * without a split the block writes Y. Needs K % 64 == 0, W's ld % 16 == 0,
 * 16-byte aligned W and X, ldx % 4 == 0 (the host checks; else the
 * dequantization path). */
#define F8_BN 128
#define F8_BK 64
#define F8_ST (F8_BK + 8)

/* fp8 byte `byte` of a little-endian word times the scale, in float32 */
__device__ __forceinline__ float f8_val(uint32_t word, int byte, float s)
{
    return dpep_fp8_scaled(word >> (8 * byte), s);
}

template <int MB>
__global__ void __launch_bounds__(256)
k_f8_nt(const float *__restrict__ X, int64_t ldx, int M, const unsigned char *__restrict__ W8, int64_t ld,
        int N, int K, const float *__restrict__ scale, int64_t sld, int sr0, int k_per, float beta,
        float *__restrict__ Y, int64_t ldy, float *__restrict__ part)
{
    constexpr int BM = 16 * MB;
    constexpr int XF = BM * F8_BK / 256; /* X floats per thread per step: 4 MB */
    constexpr int XT = F8_BK / XF;       /* threads per X row                  */
    __shared__ __align__(16) uint16_t Ws[F8_BN * F8_ST];
    __shared__ __align__(16) uint16_t Xs[BM * F8_ST];
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int n_blk = blockIdx.x * F8_BN;
    const int kb = blockIdx.y * k_per, ke = min(K, kb + k_per);
    /* this thread's loads: weight row wr (32 bytes at column half wh * 32),
     * X row xr (XF floats at xc) */
    const int wr = tid >> 1, wh = tid & 1, xr = tid / XT, xc = (tid % XT) * XF;
    const bool w_ok = n_blk + wr < N, x_ok = xr < M;
    const unsigned char *wrow = W8 + (int64_t)(n_blk + (w_ok ? wr : 0)) * ld + wh * 32;
    const float *srow = scale + (int64_t)((sr0 + n_blk + (w_ok ? wr : 0)) / DPEP_FP8_BLOCK) * sld;
    const float *xrow = X + (int64_t)(x_ok ? xr : 0) * ldx + xc;
    uint4 w0 = make_uint4(0, 0, 0, 0), w1 = w0;
    float ws = 0.0f, xv[XF];
    auto fetch = [&](int k0) {
        if (w_ok) {
            w0 = __ldg(reinterpret_cast<const uint4 *>(wrow + k0));
            w1 = __ldg(reinterpret_cast<const uint4 *>(wrow + k0 + 16));
            ws = __ldg(srow + k0 / DPEP_FP8_BLOCK);
        }
#pragma unroll
        for (int i = 0; i < XF; i += 4) {
            float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
            if (x_ok) v = __ldg(reinterpret_cast<const float4 *>(xrow + k0 + i));
            xv[i] = v.x;
            xv[i + 1] = v.y;
            xv[i + 2] = v.z;
            xv[i + 3] = v.w;
        }
    };
    float acc[MB][2][4];
#pragma unroll
    for (int mb = 0; mb < MB; mb++)
#pragma unroll
        for (int j = 0; j < 2; j++) acc[mb][j][0] = acc[mb][j][1] = acc[mb][j][2] = acc[mb][j][3] = 0.0f;
    if (kb < ke) fetch(kb);
    for (int k0 = kb; k0 < ke; k0 += F8_BK) {
        __syncthreads(); /* the previous step's readers are done */
        {
            /* 32 FP8 -> 32 BF16 (fp8 x scale rounded once), 64 bytes in four
             * 16-byte stores */
            const uint32_t w[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
            uint4 *dst = reinterpret_cast<uint4 *>(Ws + wr * F8_ST + wh * 32);
#pragma unroll
            for (int i = 0; i < 4; i++)
                dst[i] = make_uint4(dpep_pack16x2(f8_val(w[2 * i], 0, ws), f8_val(w[2 * i], 1, ws)),
                                    dpep_pack16x2(f8_val(w[2 * i], 2, ws), f8_val(w[2 * i], 3, ws)),
                                    dpep_pack16x2(f8_val(w[2 * i + 1], 0, ws), f8_val(w[2 * i + 1], 1, ws)),
                                    dpep_pack16x2(f8_val(w[2 * i + 1], 2, ws), f8_val(w[2 * i + 1], 3, ws)));
            uint32_t *xd = reinterpret_cast<uint32_t *>(Xs + xr * F8_ST + xc);
#pragma unroll
            for (int i = 0; i < XF; i += 2) xd[i / 2] = dpep_pack16x2(xv[i], xv[i + 1]);
        }
        __syncthreads();
        if (k0 + F8_BK < ke) fetch(k0 + F8_BK);
#pragma unroll
        for (int kk = 0; kk < F8_BK; kk += 16) {
            uint32_t b[2][2];
#pragma unroll
            for (int j = 0; j < 2; j++) {
                const uint16_t *wp = Ws + (warp * 16 + j * 8 + g) * F8_ST + kk + 2 * t4;
                b[j][0] = *reinterpret_cast<const uint32_t *>(wp);
                b[j][1] = *reinterpret_cast<const uint32_t *>(wp + 8);
            }
#pragma unroll
            for (int mb = 0; mb < MB; mb++) {
                const uint16_t *xa = Xs + (mb * 16 + g) * F8_ST + kk + 2 * t4, *xb = xa + 8 * F8_ST;
                const uint32_t a0 = *reinterpret_cast<const uint32_t *>(xa),
                               a1 = *reinterpret_cast<const uint32_t *>(xb),
                               a2 = *reinterpret_cast<const uint32_t *>(xa + 8),
                               a3 = *reinterpret_cast<const uint32_t *>(xb + 8);
#pragma unroll
                for (int j = 0; j < 2; j++) dpep_mma16816(acc[mb][j], a0, a1, a2, a3, b[j][0], b[j][1]);
            }
        }
    }
    /* c0, c1: row mb * 16 + g, columns n, n + 1; c2, c3: row + 8 */
#pragma unroll
    for (int mb = 0; mb < MB; mb++)
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int n = n_blk + warp * 16 + j * 8 + 2 * t4;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int m = mb * 16 + g + 8 * h;
                if (m >= M) continue;
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    if (n + e >= N) continue;
                    const float v = acc[mb][j][2 * h + e];
                    if (part) {
                        part[((int64_t)blockIdx.y * M + m) * N + n + e] = v;
                    } else {
                        float *y = Y + (int64_t)m * ldy + n + e;
                        *y = beta == 0.0f ? v : v + beta * *y;
                    }
                }
            }
        }
}

/* Y = beta Y + the split-K partials summed in slice order. */
static __global__ void k_f8_reduce(const float *__restrict__ part, int S, int M, int N, float beta,
                            float *__restrict__ Y, int64_t ldy)
{
    const int64_t n_all = (int64_t)M * N;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_all;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = 0.0f;
        for (int s = 0; s < S; s++) v += part[(int64_t)s * n_all + i];
        const int64_t m = i / N, n = i - m * N;
        float *y = Y + m * ldy + n;
        *y = beta == 0.0f ? v : v + beta * *y;
    }
}

/* ------------------------------------------------------------------------ */
/* Products                                                                 */
/* ------------------------------------------------------------------------ */
/* One product (or `batch` of them) in column-major terms:
 *   nt: Y^T (N x M) = W (K x N col-major view)^T . X^T   -> opA = T
 *   nn: Y^T (N x M) = W (N x K col-major view)    . X^T   -> opA = N
 * Batch b: X + b xs, W + b ws (elements of W's type), Y + b ys. */

/* The 16-bit path (W BF16 or F16) with g_lock held: X rounded to W's type
 * into the workspace, in chunks of rows that fit it, then GemmEx. */
static dpep_status gemm16(const char *op, lin_dev *d, bool nt, int batch, int M, const float *X,
                          int64_t ldx, int64_t xs, const dpep_mat *W, int64_t ws, float beta,
                          float *Y, int64_t ldy, int64_t ys)
{
    dpep_status st = DPEP_OK;
    const int N = nt ? W->rows : W->cols, K = nt ? W->cols : W->rows;
    const cublasOperation_t opA = nt ? CUBLAS_OP_T : CUBLAS_OP_N;
    const float one = 1.0f;
    const bool bf = W->t == DPEP_WT_BF16;
    const cudaDataType ty = bf ? CUDA_R_16BF : CUDA_R_16F;
    const int64_t row = (int64_t)K * batch; /* workspace elements per row of M */
    int64_t avail = d->ws_elems;
    if (g_ws_cap >= 0 && avail > g_ws_cap) avail = g_ws_cap;
    if (avail < row) {
        /* not one row in what was reserved: grow (logged) */
        /* all M rows, but no more than a reservation would take: beyond
         * it the product runs in chunks, as with a reserved workspace */
        int64_t grow = row * (int64_t)M;
        if (grow > WS_MAX_RESERVE) grow = WS_MAX_RESERVE;
        if (g_ws_cap >= 0 && grow > g_ws_cap) grow = g_ws_cap;
        if (grow < row) grow = row;
        st = dev_get(op, grow, &d);
        if (st != DPEP_OK) goto out;
        avail = grow;
    }
    {
        /* row > 0 here (product() answers K == 0 itself); at least one row */
        int chunk = (int)(avail / row < M ? avail / row : M);
        if (chunk < 1) chunk = 1;
        const char *W16 = (const char *)W->p;
        for (int m0 = 0; m0 < M; m0 += chunk) {
            const int mc = M - m0 < chunk ? M - m0 : chunk;
            const float *Xc = X + (int64_t)m0 * ldx;
            float *Yc = Y + (int64_t)m0 * ldy;
            const int64_t n = (int64_t)mc * row;
            if (n > 0) {
                if (bf)
                    k_round<__nv_bfloat16><<<grid_for(n), BLOCK>>>(Xc, ldx, xs, mc, K, batch,
                                                                   (__nv_bfloat16 *)d->ws);
                else
                    k_round<__half><<<grid_for(n), BLOCK>>>(Xc, ldx, xs, mc, K, batch, (__half *)d->ws);
                LC_CUDA(cudaGetLastError());
            }
            if (batch == 1)
                LC_BLAS(cublasGemmEx(d->h16, opA, CUBLAS_OP_N, N, mc, K, &one, W16, ty, (int)W->ld,
                                     d->ws, ty, K > 0 ? K : 1, &beta, Yc, CUDA_R_32F, (int)ldy,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
            else
                LC_BLAS(cublasGemmStridedBatchedEx(
                    d->h16, opA, CUBLAS_OP_N, N, mc, K, &one, W16, ty, (int)W->ld, (long long)ws,
                    d->ws, ty, K > 0 ? K : 1, (long long)mc * K, &beta, Yc, CUDA_R_32F, (int)ldy,
                    (long long)ys, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        }
    }
out:
    return st;
}

/* The dequantization buffer of `need` BF16 elements, g_lock held (grown
 * when the reservation was smaller; the old one kept, as the workspace). */
static dpep_status dq_get(const char *op, lin_dev *d, int64_t need)
{
    dpep_status st = DPEP_OK;
    if (need <= d->wq_elems) return DPEP_OK;
    {
        void *nw = NULL;
        if (d->wq) DPEP_DEBUG("linear cuda: FP8 dequantization buffer grows to %lld elements", (long long)need);
        DPEP_TRY_GOTO(no_growth_in_capture(op, "FP8 dequantization buffer growth"), st, out);
        LC_CUDA(cudaMalloc(&nw, (size_t)need * 2));
        d->wq = nw;
        d->wq_elems = need;
    }
out:
    return st;
}

/* The direct FP8 kernel for Y = beta Y + X W^T when it applies (M <= 64
 * rows, one product, the alignment k_f8_nt needs, sm_80+): *done = true
 * when it ran (dpep_linear_cuda_test_fp8_path(2): when it cannot, an error).
 * Split-K when the weight-row blocks would fill fewer than two waves of the
 * SMs: at most 16 slices of a multiple of 64 columns, about K / S >= 512
 * each (the last may be shorter), their partials in the dequantization
 * buffer (not used by this path), reduced in slice order. */
static dpep_status fp8_direct(const char *op, lin_dev *d, int M, const float *X, int64_t ldx,
                              const dpep_mat *W, float beta, float *Y, int64_t ldy, bool *done)
{
    dpep_status st = DPEP_OK;
    const int N = W->rows, K = W->cols;
    const dpep_cuda_facts *f = dpep_cuda_device_facts((int)(d - g_dev));
    *done = false;
    if (g_fp8_path == 1 || (g_fp8_path == 0 && dpep_cuda_tc_off()) || M > 64 || !f || f->major < 8 ||
        f->sms <= 0 || K % F8_BK != 0 || W->ld % 16 != 0 || ldx % 4 != 0 || ((uintptr_t)W->p & 15) != 0 ||
        ((uintptr_t)X & 15) != 0) {
        if (g_fp8_path == 2)
            return lin_fail(op, "arguments", "the direct FP8 kernel does not take this product (test mode 2)",
                            DPEP_ERR_INTERNAL);
        return DPEP_OK;
    }
    {
        const int nblk = (N + F8_BN - 1) / F8_BN;
        int S = 1;
        const int64_t part_cap = d->wq ? d->wq_elems / 2 : 0; /* floats */
        while (S < 16 && (int64_t)nblk * S < 2 * (int64_t)f->sms && K / (2 * S) >= 512 &&
               (int64_t)(2 * S) * M * N <= part_cap)
            S *= 2;
        const int k_per = ((K + S - 1) / S + F8_BK - 1) / F8_BK * F8_BK;
        S = (K + k_per - 1) / k_per;
        float *part = S > 1 ? (float *)d->wq : NULL;
        const dim3 grid((unsigned)nblk, (unsigned)S);
        const unsigned char *W8 = (const unsigned char *)W->p;
        if (M <= 16)
            k_f8_nt<1><<<grid, 256>>>(X, ldx, M, W8, W->ld, N, K, W->scale, W->sld, W->sr0, k_per, beta, Y,
                                      ldy, part);
        else if (M <= 32)
            k_f8_nt<2><<<grid, 256>>>(X, ldx, M, W8, W->ld, N, K, W->scale, W->sld, W->sr0, k_per, beta, Y,
                                      ldy, part);
        else
            k_f8_nt<4><<<grid, 256>>>(X, ldx, M, W8, W->ld, N, K, W->scale, W->sld, W->sr0, k_per, beta, Y,
                                      ldy, part);
        LC_CUDA(cudaGetLastError());
        if (S > 1) {
            k_f8_reduce<<<grid_for((int64_t)M * N), BLOCK>>>(part, S, M, N, beta, Y, ldy);
            LC_CUDA(cudaGetLastError());
        }
        *done = true;
    }
out:
    return st;
}

/* The FP8 path (g_lock held): W dequantized to BF16 (the CPU loader's
 * values, rounded once) into the dequantization buffer, then gemm16 —
 * nt in chunks of W's rows (Y's columns), nn in chunks of W's rows (X's
 * columns, the products summed into Y), batched as one span. */
static dpep_status gemm_fp8(const char *op, lin_dev *d, bool nt, int batch, int M, const float *X,
                            int64_t ldx, int64_t xs, const dpep_mat *W, int64_t ws, float beta,
                            float *Y, int64_t ldy, int64_t ys)
{
    dpep_status st = DPEP_OK;
    const unsigned char *W8 = (const unsigned char *)W->p;
    if (W->rows == 0 || W->cols == 0) {
        /* an empty inner dimension: Y = beta Y, as the 16-bit path does it */
        dpep_mat z = *W;
        z.t = DPEP_WT_BF16;
        if (z.ld < 1) z.ld = 1;
        return gemm16(op, d, nt, batch, M, X, ldx, xs, &z, ws, beta, Y, ldy, ys);
    }
    if (!W->scale || W->sld <= 0 || W->sr0 < 0 || W->sr0 >= DPEP_FP8_BLOCK)
        return lin_fail(op, "arguments", "an FP8 matrix without its block scales", DPEP_ERR_INTERNAL);
    if (nt && batch == 1) {
        /* few rows (decode): each FP8 byte read once, no dequantized copy */
        bool done = false;
        DPEP_TRY(fp8_direct(op, d, M, X, ldx, W, beta, Y, ldy, &done));
        if (done) return DPEP_OK;
    }
    if (batch > 1) {
        /* every batch's rows in one span, the strides kept */
        if (ws % W->ld != 0)
            return lin_fail(op, "arguments", "FP8 batch stride not whole rows", DPEP_ERR_INTERNAL);
        const int64_t span = (int64_t)(batch - 1) * (ws / W->ld) + W->rows;
        if (span > INT_MAX) return lin_fail(op, "arguments", "FP8 span beyond 2^31 rows", DPEP_ERR_INTERNAL);
        DPEP_TRY(dq_get(op, d, span * W->ld));
        k_dequant_fp8<<<grid_for(span * W->cols), BLOCK>>>(W8, W->ld, (int)span, W->cols, W->scale,
                                                          W->sld, W->sr0, (__nv_bfloat16 *)d->wq, W->ld);
        LC_CUDA(cudaGetLastError());
        dpep_mat w16 = dpep_mat_make(d->wq, DPEP_WT_BF16, W->rows, W->cols);
        w16.ld = W->ld;
        return gemm16(op, d, nt, batch, M, X, ldx, xs, &w16, ws, beta, Y, ldy, ys);
    }
    {
        /* chunks of whole rows of W that fit the buffer (at least one) */
        const int64_t cap = d->wq_elems >= W->cols ? d->wq_elems : 0;
        int rows_per = cap > 0 ? (int)(cap / W->cols < W->rows ? cap / W->cols : W->rows) : 0;
        if (rows_per < 1) {
            DPEP_TRY(dq_get(op, d, (int64_t)W->cols * (W->rows < 64 ? W->rows : 64)));
            rows_per = W->rows < 64 ? W->rows : 64;
        }
        for (int r0 = 0; r0 < W->rows; r0 += rows_per) {
            const int rc = W->rows - r0 < rows_per ? W->rows - r0 : rows_per;
            const dpep_mat part = dpep_mat_rows(*W, r0, rc);
            k_dequant_fp8<<<grid_for((int64_t)rc * W->cols), BLOCK>>>(
                (const unsigned char *)part.p, part.ld, rc, part.cols, part.scale, part.sld, part.sr0,
                (__nv_bfloat16 *)d->wq, part.cols);
            LC_CUDA(cudaGetLastError());
            const dpep_mat w16 = dpep_mat_make(d->wq, DPEP_WT_BF16, rc, W->cols);
            if (nt)
                DPEP_TRY(gemm16(op, d, true, 1, M, X, ldx, 0, &w16, 0, beta, Y + r0, ldy, 0));
            else /* rows of W are K: X's columns [r0, r0 + rc), summed into Y */
                DPEP_TRY(gemm16(op, d, false, 1, M, X + r0, ldx, 0, &w16, 0, r0 == 0 ? beta : 1.0f,
                                Y, ldy, 0));
        }
    }
out:
    return st;
}

static dpep_status product(const char *op, bool nt, int batch, int M, const float *X, int64_t ldx,
                           int64_t xs, const dpep_mat *W, int64_t ws, float beta, float *Y,
                           int64_t ldy, int64_t ys)
{
    dpep_status st = DPEP_OK;
    const int N = nt ? W->rows : W->cols, K = nt ? W->cols : W->rows;
    const cublasOperation_t opA = nt ? CUBLAS_OP_T : CUBLAS_OP_N;
    const float one = 1.0f;
    lin_dev *d = NULL;
    bool locked = false;
    if (M <= 0 || N <= 0 || batch <= 0) return DPEP_OK;
    if (!W->p || !X || !Y) return lin_fail(op, "arguments", "a NULL matrix", DPEP_ERR_INTERNAL);
    if (W->ld > INT_MAX || ldx > INT_MAX || ldy > INT_MAX || (int64_t)K * batch > INT_MAX)
        return lin_fail(op, "arguments", "a leading dimension beyond 2^31", DPEP_ERR_INTERNAL);
    if (K <= 0) {
        /* an empty sum, as on the CPU: Y = 0 with beta 0, else Y as it is
         * (cuBLAS would refuse the leading dimension of a K = 0 matrix) */
        if (beta == 0.0f)
            for (int b = 0; b < batch; b++) {
                cudaError_t e = cudaMemset2DAsync(Y + (int64_t)b * ys, (size_t)ldy * sizeof(float), 0,
                                                  (size_t)N * sizeof(float), (size_t)M, 0);
                if (e != cudaSuccess) return lin_fail(op, "cudaMemset2DAsync", cudaGetErrorString(e),
                                                      DPEP_ERR_CUDA);
            }
        return DPEP_OK;
    }
    pthread_mutex_lock(&g_lock);
    locked = true;
    st = dev_get(op, 0, &d);
    if (st != DPEP_OK) goto out;
    if (W->t == DPEP_WT_F32) {
        const float *A = (const float *)W->p;
        if (batch == 1)
            LC_BLAS(cublasSgemm(d->h32, opA, CUBLAS_OP_N, N, M, K, &one, A, (int)W->ld, X, (int)ldx,
                                &beta, Y, (int)ldy));
        else
            LC_BLAS(cublasSgemmStridedBatched(d->h32, opA, CUBLAS_OP_N, N, M, K, &one, A,
                                              (int)W->ld, (long long)ws, X, (int)ldx, (long long)xs,
                                              &beta, Y, (int)ldy, (long long)ys, batch));
    } else if (W->t == DPEP_WT_BF16 || W->t == DPEP_WT_F16) {
        st = gemm16(op, d, nt, batch, M, X, ldx, xs, W, ws, beta, Y, ldy, ys);
    } else if (W->t == DPEP_WT_FP8) {
        st = gemm_fp8(op, d, nt, batch, M, X, ldx, xs, W, ws, beta, Y, ldy, ys);
    } else {
        st = lin_fail(op, "arguments", "unknown weight type", DPEP_ERR_INTERNAL);
    }
out:
    if (locked) pthread_mutex_unlock(&g_lock);
    return st;
}

extern "C" dpep_status dpep_linear_cuda_nt(int M, const float *X, int64_t ldx, const dpep_mat *W,
                                           float beta, float *Y, int64_t ldy)
{
    return product("nt", true, 1, M, X, ldx, 0, W, 0, beta, Y, ldy, 0);
}

extern "C" dpep_status dpep_linear_cuda_nn(int M, const float *X, int64_t ldx, const dpep_mat *W,
                                           float beta, float *Y, int64_t ldy)
{
    return product("nn", false, 1, M, X, ldx, 0, W, 0, beta, Y, ldy, 0);
}

extern "C" dpep_status dpep_linear_cuda_batched(bool nt, int batch, int M, const float *X,
                                                int64_t ldx, int64_t xs, const dpep_mat *W,
                                                int64_t ws, float beta, float *Y, int64_t ldy,
                                                int64_t ys)
{
    return product(nt ? "batched nt" : "batched nn", nt, batch, M, X, ldx, xs, W, ws, beta, Y, ldy,
                   ys);
}

extern "C" dpep_status dpep_linear_cuda_gather(const dpep_mat *table, const int32_t *ids, int64_t n,
                                               float *out)
{
    const char *op = "gather";
    dpep_status st = DPEP_OK;
    const int H = table->cols;
    if (n <= 0 || H <= 0) return DPEP_OK;
    if (!table->p || !ids || !out) return lin_fail(op, "arguments", "a NULL table, ids or output",
                                                   DPEP_ERR_INTERNAL);
    if (n > INT_MAX) return lin_fail(op, "arguments", "more than 2^31 rows", DPEP_ERR_INTERNAL);
    switch (table->t) {
    case DPEP_WT_F32:
        k_gather<float><<<(unsigned)n, BLOCK>>>((const float *)table->p, table->ld, table->rows, H,
                                                ids, out);
        break;
    case DPEP_WT_BF16:
        k_gather<__nv_bfloat16><<<(unsigned)n, BLOCK>>>((const __nv_bfloat16 *)table->p, table->ld,
                                                        table->rows, H, ids, out);
        break;
    case DPEP_WT_F16:
        k_gather<__half><<<(unsigned)n, BLOCK>>>((const __half *)table->p, table->ld, table->rows,
                                                 H, ids, out);
        break;
    default:
        return lin_fail(op, "arguments", "unknown weight type", DPEP_ERR_INTERNAL);
    }
    LC_CUDA(cudaGetLastError());
out:
    return st;
}
