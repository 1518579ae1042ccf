/* ops_cuda.cu — the engine's CUDA table (issue 16, first piece): embedding
 * gather, RMSNorm, residual add, lm_head (cuBLAS SGEMM, FP32, TF32 off) and
 * greedy sampling with log-probs on the device. Checked op by op against the
 * CPU table (ops_cpu.c) by tests/engine/test_engine_ops.c.
 *
 * Memory: every float pointer is device memory of the current CUDA device
 * (the engine's: its allocator made it current). Exceptions, as in the
 * table's contract: embed's `ids` may be host or device memory (the engine
 * passes the step's host tokens; they are copied with cudaMemcpyDefault),
 * sample's `sp`, `rng`, `scratch`, `ids` and `logprob` are host memory.
 *
 * State: per CUDA device, one cuBLAS handle and small scratch buffers
 * (device: token ids, per-row argmax and log-prob; host: one logits row for
 * the host sampling path), created on the first call on that device under a
 * mutex and kept for the life of the process (never freed: destroying a
 * cuBLAS handle at exit races the CUDA context's own teardown). The scratch
 * is sized for SCRATCH_MIN_ROWS rows (or more when a first call needs it),
 * so the step path does not allocate after the first step; a later call with
 * more rows grows it once (logged at debug level).
 *
 * Errors: the table's functions return void. A failed CUDA or cuBLAS call is
 * logged as "engine cuda OP: call -> error" and kept as the calling thread's
 * first error (g_err); sample then returns id -1 and log-prob NaN for every
 * row, so a broken step cannot pass for a sampled token. Everything runs on
 * the legacy default stream, in order with the allocator's copies. */
#include "dpep_engine.h"
#include "dpep_cuda.cuh"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#define MAX_DEVICES 64
#define SCRATCH_MIN_ROWS 4096 /* covers a step's tokens at every preset      */
#define BLOCK 256             /* threads per block of every kernel here       */

typedef struct cuda_ops_state {
    bool ready;
    cublasHandle_t blas;
    int32_t *ids_d;        /* [cap_tokens] embed's token ids                  */
    int64_t cap_tokens;
    int32_t *arg_d;        /* [cap_rows] per-row argmax                       */
    double *lp_d;          /* [cap_rows] log-softmax at the argmax            */
    int32_t *arg_h;        /* [cap_rows] host copies of the two above         */
    double *lp_h;
    int64_t cap_rows;
    float *row_h;          /* [cap_vocab] host: one logits row (host sampling) */
    int64_t cap_vocab;
} cuda_ops_state;

static cuda_ops_state g_state[MAX_DEVICES];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static thread_local dpep_status g_err = DPEP_OK;

static void op_fail(const char *op, const char *call, const char *err, dpep_status st)
{
    DPEP_ERROR("engine cuda %s: %s -> %s", op, call, err);
    if (g_err == DPEP_OK) g_err = st;
}

/* Within an op: log and leave through `fail` (which unlocks when needed). */
#define OP_CUDA(op, call)                                                                        \
    do {                                                                                         \
        cudaError_t rc_ = (call);                                                                \
        if (rc_ != cudaSuccess) {                                                                \
            op_fail(op, #call, cudaGetErrorString(rc_), DPEP_ERR_CUDA);                          \
            goto fail;                                                                           \
        }                                                                                        \
    } while (0)
#define OP_CUBLAS(op, call)                                                                      \
    do {                                                                                         \
        cublasStatus_t rc_ = (call);                                                             \
        if (rc_ != CUBLAS_STATUS_SUCCESS) {                                                      \
            op_fail(op, #call, dpep_cublas_error_string((int)rc_), DPEP_ERR_CUBLAS);             \
            goto fail;                                                                           \
        }                                                                                        \
    } while (0)
/* After a launch: configuration errors show at once, faults at the next sync. */
#define OP_LAUNCHED(op, what) OP_CUDA(op, (what, cudaGetLastError()))

static int64_t grow_cap(int64_t cap, int64_t need, int64_t floor)
{
    int64_t c = cap > floor ? cap : floor;
    while (c < need) c *= 2;
    return c;
}

/* The current device's state with its handle, and scratch for `tokens` token
 * ids, `rows` sampled rows and a host row of `vocab` floats (0: not needed).
 * Called and returned with g_lock held; NULL on error (logged). */
static cuda_ops_state *state_get(const char *op, int64_t tokens, int64_t rows, int64_t vocab)
{
    int dev = 0;
    cuda_ops_state *s = NULL;
    OP_CUDA(op, cudaGetDevice(&dev));
    if (dev < 0 || dev >= MAX_DEVICES) {
        op_fail(op, "cudaGetDevice", "device ordinal beyond MAX_DEVICES", DPEP_ERR_INTERNAL);
        return NULL;
    }
    s = &g_state[dev];
    if (!s->ready) {
        /* FP32 as written (no TF32): logits match the CPU and the fp32 goldens */
        dpep_status bst = dpep_cublas_fp32("engine cuda", dev, &s->blas);
        if (bst != DPEP_OK) {
            op_fail(op, "dpep_cublas_fp32", dpep_status_string(bst), bst);
            goto fail;
        }
        s->ready = true;
    }
    if (tokens > s->cap_tokens) {
        int64_t cap = grow_cap(s->cap_tokens, tokens, SCRATCH_MIN_ROWS);
        if (s->cap_tokens) DPEP_DEBUG("engine cuda: token scratch grows to %lld", (long long)cap);
        cudaFree(s->ids_d);
        s->ids_d = NULL;
        s->cap_tokens = 0;
        OP_CUDA(op, cudaMalloc((void **)&s->ids_d, sizeof(int32_t) * (size_t)cap));
        s->cap_tokens = cap;
    }
    if (rows > s->cap_rows) {
        int64_t cap = grow_cap(s->cap_rows, rows, SCRATCH_MIN_ROWS);
        if (s->cap_rows) DPEP_DEBUG("engine cuda: sampling scratch grows to %lld rows", (long long)cap);
        cudaFree(s->arg_d);
        cudaFree(s->lp_d);
        cudaFreeHost(s->arg_h);
        cudaFreeHost(s->lp_h);
        s->arg_d = NULL, s->lp_d = NULL, s->arg_h = NULL, s->lp_h = NULL;
        s->cap_rows = 0;
        OP_CUDA(op, cudaMalloc((void **)&s->arg_d, sizeof(int32_t) * (size_t)cap));
        OP_CUDA(op, cudaMalloc((void **)&s->lp_d, sizeof(double) * (size_t)cap));
        OP_CUDA(op, cudaMallocHost((void **)&s->arg_h, sizeof(int32_t) * (size_t)cap));
        OP_CUDA(op, cudaMallocHost((void **)&s->lp_h, sizeof(double) * (size_t)cap));
        s->cap_rows = cap;
    }
    if (vocab > s->cap_vocab) {
        cudaFreeHost(s->row_h);
        s->row_h = NULL;
        s->cap_vocab = 0;
        OP_CUDA(op, cudaMallocHost((void **)&s->row_h, sizeof(float) * (size_t)vocab));
        s->cap_vocab = vocab;
    }
    return s;
fail:
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Kernels                                                                  */
/* ------------------------------------------------------------------------ */

/* h[t, :] = table[ids[t], :]; grid (n tokens), threads over the row. */
__global__ void k_embed(const float *__restrict__ table, int hidden, const int32_t *__restrict__ ids,
                        float *__restrict__ h)
{
    const int64_t t = blockIdx.x;
    const float *src = table + (int64_t)ids[t] * hidden;
    float *dst = h + t * hidden;
    for (int j = threadIdx.x; j < hidden; j += blockDim.x) dst[j] = src[j];
}

/* Sum over the block of one value per thread (blockDim.x == BLOCK). */
template <typename T> __device__ T block_sum(T v, T *sh) { return dpep_block_sum<BLOCK>(v, sh); }

/* y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * g; one block per row, the sum of
 * squares accumulated in fp32 (tree order; the CPU sums in double). */
__global__ void k_rmsnorm(const float *__restrict__ x, const float *__restrict__ g, int n, float eps,
                          float *__restrict__ y)
{
    __shared__ float sh[BLOCK / 32];
    const float *xr = x + (int64_t)blockIdx.x * n;
    float *yr = y + (int64_t)blockIdx.x * n;
    float ss = 0.0f;
    for (int j = threadIdx.x; j < n; j += BLOCK) ss += xr[j] * xr[j];
    ss = block_sum(ss, sh);
    const float inv = 1.0f / sqrtf(ss / (float)n + eps);
    for (int j = threadIdx.x; j < n; j += BLOCK) yr[j] = g[j] * (xr[j] * inv);
}

__global__ void k_add(float *__restrict__ h, const float *__restrict__ x, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        h[i] += x[i];
}

/* Per row: argmax (the lowest id among equal maxima, as the CPU) and the
 * log-softmax there, max-shifted, the exponentials summed in double as
 * dpep_logprob does. One block per row. */
__global__ void k_argmax_logprob(const float *__restrict__ logits, int vocab, int32_t *__restrict__ arg,
                                 double *__restrict__ lp)
{
    __shared__ float sv[BLOCK / 32];
    __shared__ int si[BLOCK / 32];
    __shared__ double sd[BLOCK / 32];
    const float *row = logits + (int64_t)blockIdx.x * vocab;
    float bv = -INFINITY;
    int bi = vocab; /* no candidate yet: loses every comparison */
    for (int j = threadIdx.x; j < vocab; j += BLOCK) {
        float v = row[j];
        if (v > bv || bi == vocab) bv = v, bi = j; /* j rises: ties keep the first */
    }
    /* (value, id) max with ties to the lower id, warp then block. */
    for (int o = 16; o > 0; o >>= 1) {
        float ov = __shfl_down_sync(0xffffffffu, bv, o);
        int oi = __shfl_down_sync(0xffffffffu, bi, o);
        if (oi < vocab && (bi == vocab || ov > bv || (ov == bv && oi < bi))) bv = ov, bi = oi;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sv[warp] = bv, si[warp] = bi;
    __syncthreads();
    if (warp == 0) {
        bv = lane < BLOCK / 32 ? sv[lane] : -INFINITY;
        bi = lane < BLOCK / 32 ? si[lane] : vocab;
        for (int o = 16; o > 0; o >>= 1) {
            float ov = __shfl_down_sync(0xffffffffu, bv, o);
            int oi = __shfl_down_sync(0xffffffffu, bi, o);
            if (oi < vocab && (bi == vocab || ov > bv || (ov == bv && oi < bi))) bv = ov, bi = oi;
        }
        if (lane == 0) sv[0] = bv, si[0] = bi;
    }
    __syncthreads();
    const float mx = sv[0];
    const int id = si[0];
    double z = 0;
    for (int j = threadIdx.x; j < vocab; j += BLOCK) z += exp((double)row[j] - (double)mx);
    z = block_sum(z, sd);
    if (threadIdx.x == 0) {
        arg[blockIdx.x] = id;
        lp[blockIdx.x] = (double)row[id] - (double)mx - log(z);
    }
}

/* ------------------------------------------------------------------------ */
/* The table                                                                */
/* ------------------------------------------------------------------------ */

static void cuda_embed(const float *table, int hidden, const int32_t *ids, int64_t n, float *h)
{
    if (n <= 0 || hidden <= 0) return;
    pthread_mutex_lock(&g_lock);
    cuda_ops_state *s = state_get("embed", n, 0, 0);
    if (!s) goto fail;
    OP_CUDA("embed", cudaMemcpy(s->ids_d, ids, sizeof(int32_t) * (size_t)n, cudaMemcpyDefault));
    OP_LAUNCHED("embed", (k_embed<<<(unsigned)n, BLOCK>>>(table, hidden, s->ids_d, h)));
fail:
    pthread_mutex_unlock(&g_lock);
}

static void cuda_rmsnorm(const float *x, const float *g, int64_t rows, int n, double eps, float *y)
{
    if (rows <= 0 || n <= 0) return;
    OP_LAUNCHED("rmsnorm", (k_rmsnorm<<<(unsigned)rows, BLOCK>>>(x, g, n, (float)eps, y)));
fail:
    return;
}

static void cuda_add(float *h, const float *x, int64_t n)
{
    if (n <= 0) return;
    int64_t blocks = (n + BLOCK - 1) / BLOCK;
    if (blocks > 65536) blocks = 65536; /* grid-stride beyond */
    OP_LAUNCHED("add", (k_add<<<(unsigned)blocks, BLOCK>>>(h, x, n)));
fail:
    return;
}

static void cuda_lm_head(const float *x, int64_t rows, const float *w, int vocab, int hidden,
                         float *logits)
{
    if (rows <= 0 || vocab <= 0) return;
    const float one = 1.0f, zero = 0.0f;
    pthread_mutex_lock(&g_lock);
    cuda_ops_state *s = state_get("lm_head", 0, 0, 0);
    if (!s) goto fail;
    /* Row-major logits[rows, vocab] = x[rows, hidden] · w[vocab, hidden]^T is,
     * column-major, logits^T (vocab x rows) = w^T-view^T · x^T-view. */
    OP_CUBLAS("lm_head", cublasSgemm(s->blas, CUBLAS_OP_T, CUBLAS_OP_N, vocab, (int)rows, hidden,
                                     &one, w, hidden, x, hidden, &zero, logits, vocab));
fail:
    pthread_mutex_unlock(&g_lock);
}

static bool is_greedy(const dpep_sampling *sp) { return sp->temperature <= 0.0f || sp->top_k == 1; }

/* Greedy rows (temperature 0 or top_k 1) never leave the device: the kernel
 * gives their id and log-prob. FIRST STEP for stochastic rows: the row's
 * logits are copied to host memory and drawn by the CPU reference
 * (dpep_sample, dpep_logprob) with the request's stream, so ids equal the CPU
 * table's for the same rng state; top-k/top-p/min-p on the device is a later
 * piece of issue 16. */
static void cuda_sample(const float *logits, int n, int vocab, const dpep_sampling *const *sp,
                        uint64_t *const *rng, float *scratch, int32_t *ids, double *logprob)
{
    for (int i = 0; i < n; i++) ids[i] = -1, logprob[i] = 0;
    if (n <= 0 || vocab <= 0) return;
    bool any_host = false, any = false;
    for (int i = 0; i < n; i++) {
        if (!sp[i]) continue;
        any = true;
        any_host |= !is_greedy(sp[i]);
    }
    if (!any) return;
    pthread_mutex_lock(&g_lock);
    cuda_ops_state *s = state_get("sample", 0, n, any_host ? vocab : 0);
    if (!s) goto fail;
    OP_LAUNCHED("sample", (k_argmax_logprob<<<(unsigned)n, BLOCK>>>(logits, vocab, s->arg_d, s->lp_d)));
    OP_CUDA("sample", cudaMemcpy(s->arg_h, s->arg_d, sizeof(int32_t) * (size_t)n, cudaMemcpyDeviceToHost));
    OP_CUDA("sample", cudaMemcpy(s->lp_h, s->lp_d, sizeof(double) * (size_t)n, cudaMemcpyDeviceToHost));
    if (g_err != DPEP_OK) goto fail; /* an earlier op of this thread failed */
    for (int i = 0; i < n; i++) {
        if (!sp[i]) continue;
        if (is_greedy(sp[i])) {
            ids[i] = s->arg_h[i];
            logprob[i] = s->lp_h[i];
            continue;
        }
        OP_CUDA("sample", cudaMemcpy(s->row_h, logits + (size_t)i * (size_t)vocab,
                                     sizeof(float) * (size_t)vocab, cudaMemcpyDeviceToHost));
        ids[i] = dpep_sample(s->row_h, vocab, sp[i], rng[i], scratch);
        logprob[i] = dpep_logprob(s->row_h, vocab, ids[i]);
    }
    pthread_mutex_unlock(&g_lock);
    return;
fail:
    pthread_mutex_unlock(&g_lock);
    for (int i = 0; i < n; i++)
        if (sp[i]) ids[i] = -1, logprob[i] = NAN;
}

extern "C" const dpep_engine_ops dpep_engine_cuda_ops = {
    "cuda", cuda_embed, cuda_rmsnorm, cuda_add, cuda_lm_head, cuda_sample,
};
