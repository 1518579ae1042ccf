/* ops_cuda.cu — the engine's CUDA table (issue 16): embedding gather,
 * RMSNorm, residual add, lm_head (runtime/linear: fp32 SGEMM without TF32, or
 * BF16/F16 weights as stored on tensor cores with fp32 sums), sampling
 * (sample_cuda.cu: every mode on the device), and the step's buffer ops (zero,
 * copy, the routed-expert histogram) plus `check`, which turns the thread's
 * first error into the step's status. Checked op by op against the CPU table
 * (ops_cpu.c) by tests/engine/test_engine_ops.c, and as a whole forward by
 * tests/engine/test_engine_cuda.c.
 *
 * Memory: every float pointer is device memory of the current CUDA device
 * (the engine's: its allocator made it current). Exceptions, as in the
 * table's contract: embed's `ids` may be host or device memory (the engine
 * passes the step's host tokens; they are copied with cudaMemcpyDefault),
 * sample's `sp`, `rng`, `scratch`, `ids` and `logprob` are host memory.
 *
 * State: per CUDA device, a device buffer for the step's token ids, made on
 * the first call on that device under a mutex and kept for the life of the
 * process. The products (lm_head) and the embedding gather are
 * runtime/linear's CUDA entries (float32, BF16 or F16 weights as loaded). The scratch
 * is sized for SCRATCH_MIN_ROWS rows (or more when a first call needs it),
 * so the step path does not allocate after the first step; a later call with
 * more rows grows it once (logged at debug level).
 *
 * Errors: the table's functions return void. A failed CUDA or cuBLAS call is
 * logged as "engine cuda OP: call -> error" and kept, with that text, as the
 * calling thread's first error (g_err, g_msg); sample then returns id -1 and
 * log-prob NaN for every row, so a broken step cannot pass for a sampled
 * token. `check` (called by the engine after each forward and sample)
 * synchronizes the device, so a kernel fault surfaces in the step that
 * caused it, returns the first error with the GPU's ordinal and name, and
 * forgets it. Other CUDA files of the engine (sample_cuda.cu) report through
 * dpep_engine_cuda_fail (engine_cuda.h). Kernels are static: every module's
 * .cu names its own k_add, k_rmsnorm, ... Everything runs on the calling
 * thread's default stream (the build's --default-stream per-thread), in
 * order with the allocator's copies. */
#include "dpep_engine.h"
#include "dpep_cuda.cuh"
#include "engine_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>

#define MAX_DEVICES 64
#define SCRATCH_MIN_ROWS 4096 /* covers a step's tokens at every preset      */
#define BLOCK 256             /* threads per block of every kernel here       */

typedef struct cuda_ops_state {
    int32_t *ids_d;        /* [cap_tokens] embed's token ids                  */
    int64_t cap_tokens;
} cuda_ops_state;

static cuda_ops_state g_state[MAX_DEVICES];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static thread_local dpep_status g_err = DPEP_OK;
static thread_local char g_msg[384]; /* "op OP: call -> error" of g_err      */

static void op_fail(const char *op, const char *call, const char *err, dpep_status st)
{
    DPEP_ERROR("engine cuda %s: %s -> %s", op, call, err);
    /* a non-sticky error (a failed cudaMalloc) is now recorded here: cleared,
     * so that the next launch's cudaGetLastError does not report it again */
    (void)cudaGetLastError();
    if (g_err != DPEP_OK) return;
    g_err = st;
    snprintf(g_msg, sizeof g_msg, "op %s: %s -> %s", op, call, err);
}

/* For the engine's other CUDA files: the same first-error record. */
extern "C" void dpep_engine_cuda_fail(const char *op, const char *call, const char *err,
                                      dpep_status st)
{
    op_fail(op, call, err, st);
}

/* Within an op: DPEP_OP_CUDA / DPEP_OP_CUBLAS (dpep_cuda.cuh) log through
 * op_fail above and leave through `fail` (which unlocks when needed). After a
 * launch: configuration errors show at once, faults at the next sync. */
#define OP_LAUNCHED(op, what) DPEP_OP_CUDA(op, (what, cudaGetLastError()))

static int64_t grow_cap(int64_t cap, int64_t need, int64_t floor)
{
    int64_t c = cap > floor ? cap : floor;
    while (c < need) c *= 2;
    return c;
}

/* The current device's state: scratch for `tokens` token
 * ids (0: not needed). Called and returned with g_lock held; NULL on error
 * (logged). Sampling keeps its own scratch (sample_cuda.cu). */
static cuda_ops_state *state_get(const char *op, int64_t tokens)
{
    int dev = 0;
    cuda_ops_state *s = NULL;
    DPEP_OP_CUDA(op, cudaGetDevice(&dev));
    if (dev < 0 || dev >= MAX_DEVICES) {
        op_fail(op, "cudaGetDevice", "device ordinal beyond MAX_DEVICES", DPEP_ERR_INTERNAL);
        return NULL;
    }
    s = &g_state[dev];
    if (tokens > s->cap_tokens) {
        int64_t cap = grow_cap(s->cap_tokens, tokens, SCRATCH_MIN_ROWS);
        if (s->cap_tokens) DPEP_DEBUG("engine cuda: token scratch grows to %lld", (long long)cap);
        cudaFree(s->ids_d);
        s->ids_d = NULL;
        s->cap_tokens = 0;
        DPEP_OP_CUDA(op, cudaMalloc((void **)&s->ids_d, sizeof(int32_t) * (size_t)cap));
        s->cap_tokens = cap;
    }
    return s;
fail:
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Kernels                                                                  */
/* ------------------------------------------------------------------------ */

/* Sum over the block of one value per thread (blockDim.x == BLOCK). */
template <typename T> __device__ T block_sum(T v, T *sh) { return dpep_block_sum<BLOCK>(v, sh); }

/* y[r] = x[r] / sqrt(mean(x[r]^2) + eps) * g; one block per row. As
 * dpep_rmsnorm_rows: the sum of squares in double, the scale computed in
 * double and rounded to float, then g * (x * inv) in float; only the order
 * of the sum differs (a tree here), so rows agree to a few ulps. */
static __global__ void k_rmsnorm(const float *__restrict__ x, const float *__restrict__ g, int n,
                                 double eps, float *__restrict__ y)
{
    __shared__ double sh[BLOCK / 32];
    const float *xr = x + (int64_t)blockIdx.x * n;
    float *yr = y + (int64_t)blockIdx.x * n;
    double ss = 0.0;
    for (int j = threadIdx.x; j < n; j += BLOCK) ss += (double)xr[j] * xr[j];
    ss = block_sum(ss, sh);
    const float inv = (float)(1.0 / sqrt(ss / n + eps));
    for (int j = threadIdx.x; j < n; j += BLOCK) yr[j] = g[j] * (xr[j] * inv);
}

static __global__ void k_add(float *__restrict__ h, const float *__restrict__ x, int64_t n)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        h[i] += x[i];
}

/* load[idx[i]] += 1 for idx[i] in [0, n_experts). With `shared` (n_experts
 * ints of dynamic shared memory) each block counts into shared memory first
 * and adds its nonzero bins to the global counts: most picks of a step hit
 * a few hot experts, and one global atomic per bin and block keeps them from
 * serializing. Grid-stride over i. */
static __global__ void k_expert_count(const int32_t *__restrict__ idx, int64_t n,
                                      const int64_t *__restrict__ lim, int n_experts,
                                      unsigned long long *__restrict__ load, bool shared)
{
    if (lim && *lim < n) n = *lim;
    extern __shared__ unsigned int bins[];
    if (shared) {
        for (int j = threadIdx.x; j < n_experts; j += blockDim.x) bins[j] = 0;
        __syncthreads();
    }
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int32_t x = idx[i];
        if (x < 0 || x >= n_experts) continue;
        if (shared) atomicAdd(&bins[x], 1u);
        else atomicAdd(&load[x], 1ull);
    }
    if (shared) {
        __syncthreads();
        for (int j = threadIdx.x; j < n_experts; j += blockDim.x)
            if (bins[j]) atomicAdd(&load[j], (unsigned long long)bins[j]);
    }
}

/* ------------------------------------------------------------------------ */
/* The table                                                                */
/* ------------------------------------------------------------------------ */

/* embed with host ids: copied to the device's id scratch first. */
static void embed_host_ids(const dpep_mat *tm, const int32_t *ids, int64_t n, float *h)
{
    pthread_mutex_lock(&g_lock);
    cuda_ops_state *s = state_get("embed", n);
    if (!s) goto fail;
    DPEP_OP_CUDA("embed", cudaMemcpy(s->ids_d, ids, sizeof(int32_t) * (size_t)n, cudaMemcpyDefault));
    DPEP_OP_STATUS("embed", dpep_linear_cuda_gather(tm, s->ids_d, n, h));
    /* the id scratch is the device's, shared by the host threads: kept
     * until the gather (queued on this thread's stream) has read it */
    DPEP_OP_CUDA("embed", cudaStreamSynchronize(cudaStreamPerThread));
fail:
    pthread_mutex_unlock(&g_lock);
}

static void cuda_embed(const dpep_mat *tm, const int32_t *ids, int64_t n, float *h)
{
    if (n <= 0 || tm->cols <= 0) return;
    /* ids on the device (the engine's): gathered in place, nothing to wait
     * for (a CUDA graph captures it); host ids: copied over first. The
     * table as stored (float32, BF16, F16), widened per row. */
    /* while a graph is captured the ids are the engine's device ids: no
     * pointer query then (one API call fewer inside the capture) */
    cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
    const bool capturing = cudaStreamIsCapturing(cudaStreamPerThread, &cs) == cudaSuccess &&
                           cs == cudaStreamCaptureStatusActive;
    cudaPointerAttributes at;
    if (!capturing && (cudaPointerGetAttributes(&at, ids) != cudaSuccess ||
                       (at.type != cudaMemoryTypeDevice && at.type != cudaMemoryTypeManaged))) {
        (void)cudaGetLastError(); /* a host pointer CUDA does not know */
        embed_host_ids(tm, ids, n, h);
        return;
    }
    DPEP_OP_STATUS("embed", dpep_linear_cuda_gather(tm, ids, n, h));
fail:
    return;
}

static void cuda_rmsnorm(const float *x, const float *g, int64_t rows, int n, double eps, float *y)
{
    if (rows <= 0 || n <= 0) return;
    OP_LAUNCHED("rmsnorm", (k_rmsnorm<<<(unsigned)rows, BLOCK>>>(x, g, n, eps, y)));
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

static void cuda_lm_head(const float *x, int64_t rows, const dpep_mat *wm, float *logits)
{
    if (rows <= 0 || wm->rows <= 0) return;
    if (rows > INT32_MAX) {
        op_fail("lm_head", "arguments", "more than 2^31 rows", DPEP_ERR_INTERNAL);
        return;
    }
    /* logits[rows, vocab] = x[rows, hidden] . w[vocab, hidden]^T: fp32 for a
     * float32 head, 16-bit inputs with fp32 sums for a BF16/F16 one */
    DPEP_OP_STATUS("lm_head", dpep_linear_cuda_nt((int)rows, x, wm->cols, wm, 0.0f, logits, wm->rows));
fail:
    return;
}

/* ------------------------------------------------------------------------ */
/* The step's buffer ops and the error check                                */
/* ------------------------------------------------------------------------ */

static void cuda_zero(float *x, int64_t n)
{
    if (n <= 0) return;
    DPEP_OP_CUDA("zero", cudaMemsetAsync(x, 0, sizeof(float) * (size_t)n, 0));
fail:
    return;
}

static void cuda_copy(float *dst, const float *src, int64_t n)
{
    if (n <= 0) return;
    DPEP_OP_CUDA("copy", cudaMemcpyAsync(dst, src, sizeof(float) * (size_t)n, cudaMemcpyDeviceToDevice, 0));
fail:
    return;
}

#define EXPERT_COUNT_SHARED_MAX 8192 /* bins in shared memory: 32 KiB        */

static void cuda_expert_count(const int32_t *idx, int64_t n, const int64_t *lim, int n_experts,
                              int64_t *load)
{
    if (n <= 0 || n_experts <= 0) return;
    const bool shared = n_experts <= EXPERT_COUNT_SHARED_MAX;
    const size_t sh = shared ? sizeof(unsigned int) * (size_t)n_experts : 0;
    int64_t blocks = (n + BLOCK - 1) / BLOCK;
    if (blocks > 1024) blocks = 1024; /* grid-stride beyond; bounds the bin flushes */
    /* CUDA's 64-bit atomicAdd is on unsigned long long: the same 8 bytes */
    static_assert(sizeof(int64_t) == sizeof(unsigned long long), "64-bit counters");
    OP_LAUNCHED("expert_count", (k_expert_count<<<(unsigned)blocks, BLOCK, sh>>>(
                                    idx, n, lim, n_experts, (unsigned long long *)load, shared)));
fail:
    return;
}

/* The name of CUDA device `dev` into buf, looked up once per device. */
static void device_name(int dev, char *buf, size_t len)
{
    static char names[MAX_DEVICES][256]; /* cudaDeviceProp.name's size */
    snprintf(buf, len, "?");
    if (dev < 0 || dev >= MAX_DEVICES) return;
    pthread_mutex_lock(&g_lock);
    if (!names[dev][0]) {
        cudaDeviceProp prop;
        if (cudaGetDeviceProperties(&prop, dev) == cudaSuccess)
            snprintf(names[dev], sizeof names[dev], "%s", prop.name);
    }
    if (names[dev][0]) snprintf(buf, len, "%s", names[dev]);
    pthread_mutex_unlock(&g_lock);
}

static dpep_status cuda_check(char *msg, size_t len)
{
    /* a fault of a kernel queued earlier surfaces here */
    cudaError_t rc = cudaDeviceSynchronize();
    if (rc != cudaSuccess) op_fail("check", "cudaDeviceSynchronize", cudaGetErrorString(rc), DPEP_ERR_CUDA);
    const dpep_status st = g_err;
    if (len) {
        int dev = -1;
        char name[128];
        if (cudaGetDevice(&dev) != cudaSuccess) dev = -1;
        device_name(dev, name, sizeof name);
        if (st != DPEP_OK) snprintf(msg, len, "GPU %d (%s): %s", dev, name, g_msg);
        else snprintf(msg, len, "GPU %d (%s)", dev, name);
    }
    g_err = DPEP_OK;
    g_msg[0] = '\0';
    (void)cudaGetLastError(); /* a non-sticky error is reported once */
    return st;
}

/* dpep_model_tensors callback: the most elements of a matrix kept FP8. */
static void largest_fp8(const dpep_tensor_spec *t, void *user)
{
    int64_t *most = (int64_t *)user;
    if (t->fp8 && !t->fp8_bf16 && t->ndim == 2 && t->shape[0] * t->shape[1] > *most)
        *most = t->shape[0] * t->shape[1];
}

/* Token-id scratch for max_tokens and the sampler's for vocab, at create. */
static void cuda_reserve(const dpep_model_config *m, int64_t max_tokens)
{
    const int vocab = m->vocab;
    pthread_mutex_lock(&g_lock);
    (void)state_get("reserve", max_tokens > 0 ? max_tokens : 1);
    pthread_mutex_unlock(&g_lock);
    {
        /* runtime/linear's rounded activations for BF16/F16 products: a
         * step's tokens times the widest input row (the rows cpu_reserve
         * sizes its panels for: hidden, q_lora, kv_lora, the heads' values
         * into o_proj, the dense or shared experts' intermediate) */
        int64_t row = m->hidden;
        const int64_t cand[] = {m->q_lora_rank, m->kv_lora_rank, (int64_t)m->n_heads * m->v_head,
                                m->inter, (int64_t)m->moe_inter * (m->n_shared > 0 ? m->n_shared : 1)};
        for (size_t i = 0; i < sizeof cand / sizeof cand[0]; i++) row = cand[i] > row ? cand[i] : row;
        const dpep_status st = dpep_linear_cuda_reserve(row * (max_tokens > 0 ? max_tokens : 1));
        if (st != DPEP_OK) op_fail("reserve", "dpep_linear_cuda_reserve", dpep_status_string(st), st);
    }
    if (m->fp8) {
        /* FP8 products beyond 64 rows are dequantized first (and the direct
         * kernel's split-K partials use the same buffer): a buffer for the
         * largest FP8 tensor of the model (whole, before any split: kv_b
         * whole for the per-head products) */
        int64_t most = 0;
        dpep_model_tensors(m, largest_fp8, &most);
        const dpep_status st = dpep_linear_cuda_reserve_fp8(most);
        if (st != DPEP_OK) op_fail("reserve", "dpep_linear_cuda_reserve_fp8", dpep_status_string(st), st);
    }
    if (vocab > 0) {
        const dpep_status st = dpep_engine_cuda_sample_reserve(vocab);
        /* the first error is kept: a CUDA failure it recorded itself wins */
        if (st != DPEP_OK)
            op_fail("reserve", "dpep_engine_cuda_sample_reserve", dpep_status_string(st), st);
    }
}

/* ------------------------------------------------------------------------ */
/* CUDA graphs: the capture of this thread's default stream                 */
/* ------------------------------------------------------------------------ */

static dpep_status cuda_graph_begin(void)
{
    /* thread-local: another thread's unrelated CUDA calls do not break the
     * capture (and are not captured); every kernel of the modules goes to
     * this thread's default stream (--default-stream per-thread) */
    cudaError_t rc = cudaStreamBeginCapture(cudaStreamPerThread, cudaStreamCaptureModeThreadLocal);
    if (rc != cudaSuccess) {
        /* not the step's error (it runs eagerly): logged, not kept */
        DPEP_WARN("engine cuda: cudaStreamBeginCapture -> %s; such steps run eagerly",
                  cudaGetErrorString(rc));
        (void)cudaGetLastError();
        return DPEP_ERR_CUDA;
    }
    return DPEP_OK;
}

static void *cuda_graph_end(bool keep)
{
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaError_t rc = cudaStreamEndCapture(cudaStreamPerThread, &graph);
    /* an op that failed while recording (kept in g_err: a launch or cuBLAS
     * error that did not break the capture) left a node out: not kept */
    if (g_err != DPEP_OK) keep = false;
    if (rc == cudaSuccess && keep && graph) {
        rc = cudaGraphInstantiateWithFlags(&exec, graph, 0);
        if (rc != cudaSuccess) exec = NULL;
    }
    if (rc != cudaSuccess || !keep) {
        /* dropped: the reason logged once per process at warning level (the
         * step runs eagerly), the errors it left behind cleared */
        static bool told;
        if (rc != cudaSuccess && !told) {
            told = true;
            DPEP_WARN("engine cuda: a CUDA graph capture failed (%s); such steps run eagerly",
                      cudaGetErrorString(rc));
        } else if (rc != cudaSuccess) {
            DPEP_DEBUG("engine cuda: CUDA graph capture failed (%s)", cudaGetErrorString(rc));
        }
        (void)cudaGetLastError();
        g_err = DPEP_OK;
        g_msg[0] = '\0';
        exec = NULL;
    }
    if (graph) (void)cudaGraphDestroy(graph);
    return (void *)exec;
}

static void cuda_graph_launch(void *g)
{
    if (!g) {
        op_fail("graph", "cudaGraphLaunch", "no graph", DPEP_ERR_INTERNAL);
        return;
    }
    DPEP_OP_CUDA("graph", cudaGraphLaunch((cudaGraphExec_t)g, cudaStreamPerThread));
fail:
    return;
}

static void cuda_graph_free(void *g)
{
    if (g) (void)cudaGraphExecDestroy((cudaGraphExec_t)g);
}

/* Positional (the .cu is C++): name, embed, rmsnorm, add, lm_head, sample,
 * zero, copy, expert_count, check, reserve, graph_begin, graph_end,
 * graph_launch, graph_free. */
extern "C" const dpep_engine_ops dpep_engine_cuda_ops = {
    "cuda", cuda_embed, cuda_rmsnorm, cuda_add, cuda_lm_head, dpep_engine_cuda_sample,
    cuda_zero, cuda_copy, cuda_expert_count, cuda_check, cuda_reserve,
    cuda_graph_begin, cuda_graph_end, cuda_graph_launch, cuda_graph_free,
};
