/* experts_cuda.cu — the MoE kernel table on CUDA (moe_kernels_cuda, slot
 * DPEP_DEVICE_CUDA of moe.c's moe_kernels[]): router logits (cuBLAS SGEMM),
 * gate top-k (one warp per token, the CPU's semantics and tie-breaks), the
 * SwiGLU MLP slice (gate/up/down through runtime/linear's CUDA products, a
 * silu·mul kernel), the routed experts of one rank, and the element-wise
 * helpers moe.c needs on device memory (zero, add, copy). Activations fp32;
 * weights float32 (pedantic cuBLAS, no TF32) or BF16/F16 as loaded (16-bit
 * inputs, fp32 sums): checked against the CPU table by
 * tests/moe/test_moe_cuda.c.
 *
 * Routed experts, grouped on the device: (1) one block per local slot
 * counts its (row, slot) pairs, (2) a one-thread scan turns the counts into
 * offsets, (3) one block per slot writes its pairs (input row, partial-sum
 * row, gate weight) in (segment, row, j) order — the CPU's counting sort,
 * stable, no atomics; then per slot and chunk of `chunk` pairs: gather the
 * rows, gate and up GEMMs, silu(g)·u·w, down GEMM, add into each pair's
 * partial-sum row. Slots run in ascending order on one stream and a row
 * meets each slot at most once per launch, so every row's contributions are
 * added in ascending slot order — the CPU's order: deterministic, no atomics.
 * FIRST STEP (documented in moe/README.md): the per-expert GEMMs are cuBLAS
 * calls whose row counts the host needs, so the offsets come back to the
 * host once per call (one cudaMemcpy, n_slots + 1 int64): one
 * device-to-host sync per MoE layer; nothing else here syncs. The
 * sync-free path (dpep_moe_set_sync_free, the table's sync_free entry; the
 * engine turns it on for its CUDA graphs) runs grouped fp32-sum tiles that
 * read the offsets on the device (see "Routed experts without a host sync"
 * below): capturable in a CUDA graph, a first version in speed.
 *
 * Memory: every pointer the functions take is device memory of the current
 * CUDA device (the context's allocator made it current), except the moe_rows
 * array and the dpep_mlp_w structs (host structs holding device pointers).
 * Scratch: the moe pool's pieces (px/pp/slot_w: the pairs; slot_cnt: counts
 * then offsets; work: X, G, U, Y of `chunk` rows), plus one host array of
 * offsets per thread (thread_local, DPEP_MOE_MAX_EXPERTS + 1): nothing is
 * allocated per call.
 *
 * Errors: the table's functions return void (or the FLOPs). A failed CUDA or
 * cuBLAS call is logged as "moe cuda OP: call -> error" and kept as this
 * thread's first error, which moe_kernels_cuda.status returns (and clears);
 * moe.c asks after each stage. Everything runs on the calling thread's
 * default stream (--default-stream per-thread), in order with the
 * allocator's copies. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <type_traits>

#include "dpep_cuda.cuh"
#include "moe_internal.h"

#define BLOCK 256       /* threads of the element-wise and slot kernels     */
#define MAX_SEG 128     /* non-empty runs of rows one experts call takes (one per EP rank) */

static thread_local dpep_status g_err = DPEP_OK;

static void op_fail(const char *op, const char *call, const char *err, dpep_status st)
{
    int dev = -1;
    (void)cudaGetDevice(&dev);
    DPEP_ERROR("moe cuda %s (device %d): %s -> %s", op, dev, call, err);
    if (g_err == DPEP_OK) g_err = st;
}

/* Within an op: DPEP_OP_CUDA / DPEP_OP_CUBLAS (dpep_cuda.cuh) log through
 * op_fail above and leave through `fail`. After a launch: configuration errors show at once, faults at the next sync. */
#define OP_LAUNCHED(op, what)                                                                    \
    do {                                                                                         \
        cudaError_t rc_ = cudaGetLastError();                                                    \
        if (rc_ != cudaSuccess) {                                                                \
            op_fail(op, what, cudaGetErrorString(rc_), DPEP_ERR_CUDA);                           \
            goto fail;                                                                           \
        }                                                                                        \
    } while (0)

/* The current device's fp32 handle; NULL on error (logged). */
static cublasHandle_t blas_get(const char *op)
{
    int dev = 0;
    cublasHandle_t h = NULL;
    DPEP_OP_CUDA(op, cudaGetDevice(&dev));
    {
        dpep_status st = dpep_cublas_fp32("moe cuda", dev, &h);
        if (st != DPEP_OK) {
            op_fail(op, "dpep_cublas_fp32", dpep_status_string(st), st);
            return NULL;
        }
    }
    return h;
fail:
    return NULL;
}

/* Row-major C (n, m) = A (n, kd) · B (m, kd)^T (+ beta C), A rows lda apart:
 * in cuBLAS's column-major terms C^T = B^T·A^T with B read transposed. */
static cublasStatus_t gemm_nt(cublasHandle_t h, int n, int m, int kd, const float *A, int64_t lda,
                              const float *B, float *C, float beta)
{
    const float one = 1.0f;
    return cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, m, n, kd, &one, B, kd, A, (int)lda, &beta, C,
                       m);
}

static unsigned grid_for(int64_t n)
{
    int64_t b = (n + BLOCK - 1) / BLOCK;
    return (unsigned)(b < 65535 * 8 ? b : 65535 * 8); /* grid-stride loops cover the rest */
}

/* ------------------------------------------------------------------------ */
/* Element-wise kernels                                                      */
/* ------------------------------------------------------------------------ */
__global__ void k_add(float *__restrict__ acc, const float *__restrict__ x, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        acc[i] += x[i];
}

/* g (n, ni) <- silu(g) * u [* w[row]]: the CPU's expression, term by term. */
__global__ void k_swiglu(float *__restrict__ g, const float *__restrict__ u, int64_t n, int ni,
                         const float *__restrict__ w_row)
{
    const int64_t total = n * (int64_t)ni;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float s = w_row ? w_row[i / ni] : 1.0f;
        const float a = g[i];
        g[i] = a / (1.0f + expf(-a)) * u[i] * s;
    }
}

/* X (n, H) <- the rows px[0..n); grid (n), threads over the row. */
__global__ void k_gather(float *__restrict__ X, const float *const *__restrict__ px, int H)
{
    const float *src = px[blockIdx.x];
    float *dst = X + (int64_t)blockIdx.x * H;
    for (int h = threadIdx.x; h < H; h += blockDim.x) dst[h] = src[h];
}

/* pp[i] += Y[i] for the n rows; grid (n). The rows are distinct within a
 * launch (a row meets a slot once), so no two threads add into one float. */
__global__ void k_scatter_add(float *const *__restrict__ pp, const float *__restrict__ Y, int H)
{
    float *dst = pp[blockIdx.x];
    const float *src = Y + (int64_t)blockIdx.x * H;
    for (int h = threadIdx.x; h < H; h += blockDim.x) dst[h] += src[h];
}

/* ------------------------------------------------------------------------ */
/* Gate: one warp per token (block of 32), its scores in shared memory       */
/* ------------------------------------------------------------------------ */
struct gate_args {
    int E, k, G, topk_group;
    int sigmoid;          /* else softmax                                   */
    int method;           /* dpep_topk_method                               */
    int norm;
    float scale;
};

/* The double exp rounded once: correctly rounded but near midpoints.
 * glibc's expf (the CPU gate's) is within 0.502 ulp, not correctly rounded:
 * measured over every float in [-20, 20], 148,374 of 2.2e9 inputs differ by
 * one ulp. Scores can then differ from the CPU's by an ulp and expert ids
 * only on ties within it (the op test's integer logits agree exactly);
 * CUDA's own expf is further off (a few ulps). */
__device__ __forceinline__ float exp_cr(float x) { return (float)exp((double)x); }

/* gate.c's order: a before b when larger, any number before NaN. */
__device__ __forceinline__ bool better(float a, float b)
{
    return a > b || (isnan(b) && !isnan(a));
}

/* The best allowed, untaken entry of v[0..n) (lower index among equals, as
 * gate.c's scan in index order), -1 if none; every lane gets it. */
__device__ int warp_best(const float *v, int n, const unsigned char *allowed,
                         const unsigned char *taken)
{
    const int lane = threadIdx.x & 31;
    int best = -1;
    float bv = 0.0f;
    for (int i = lane; i < n; i += 32) {
        if ((allowed && !allowed[i]) || (taken && taken[i])) continue;
        if (best < 0 || better(v[i], bv)) {
            best = i;
            bv = v[i];
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const int ob = __shfl_xor_sync(0xffffffffu, best, o);
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        if (ob >= 0 && (best < 0 || better(ov, bv) || (!better(bv, ov) && ob < best))) {
            best = ob;
            bv = ov;
        }
    }
    return best;
}

/* gate.c's best_of for one thread (groups: one lane each). */
__device__ int seq_best(const float *v, int n, int skip)
{
    int best = -1;
    for (int i = 0; i < n; i++) {
        if (i == skip) continue;
        if (best < 0 || better(v[i], v[best])) best = i;
    }
    return best;
}

/* Shared memory: s[E], sc[E], gsc[G] floats; allowed[E], taken[E], gtaken[G]. */
static size_t gate_smem(int E, int G)
{
    return sizeof(float) * (size_t)(2 * E + G) + (size_t)(2 * E + G);
}

__global__ void __launch_bounds__(32) k_gate(gate_args a, const float *__restrict__ logits,
                                             const float *__restrict__ bias,
                                             int32_t *__restrict__ idx, float *__restrict__ w)
{
    extern __shared__ float gsm[];
    const int E = a.E, G = a.G, lane = threadIdx.x;
    float *s = gsm, *sc = s + E, *gsc = sc + E;
    unsigned char *allowed = (unsigned char *)(gsc + G), *taken = allowed + E,
                  *gtaken = taken + E;
    const int64_t t = blockIdx.x;
    const float *l = logits + t * E;

    if (a.sigmoid) {
        for (int e = lane; e < E; e += 32) s[e] = 1.0f / (1.0f + exp_cr(-l[e]));
    } else {
        /* max: gate.c's scan (any order gives that value); the sum in index
         * order on lane 0, as gate.c adds */
        float mx = l[0];
        for (int e = lane; e < E; e += 32) mx = l[e] > mx ? l[e] : mx;
        for (int o = 16; o > 0; o >>= 1) {
            const float om = __shfl_xor_sync(0xffffffffu, mx, o);
            mx = om > mx ? om : mx;
        }
        for (int e = lane; e < E; e += 32) s[e] = exp_cr(l[e] - mx);
        __syncwarp();
        float inv = 0.0f;
        if (lane == 0) {
            float sum = 0.0f;
            for (int e = 0; e < E; e++) sum += s[e];
            inv = 1.0f / sum;
        }
        inv = __shfl_sync(0xffffffffu, inv, 0);
        for (int e = lane; e < E; e += 32) s[e] *= inv;
    }
    const bool use_bias = a.method == DPEP_TOPK_NOAUX_TC && bias;
    for (int e = lane; e < E; e += 32) {
        sc[e] = s[e] + (use_bias ? bias[e] : 0.0f);
        allowed[e] = 1;
        taken[e] = 0;
    }
    __syncwarp();
    if (a.method != DPEP_TOPK_GREEDY && G > 1 && a.topk_group < G) {
        const int gs = E / G;
        for (int gi = lane; gi < G; gi += 32) {
            const float *v = sc + (int64_t)gi * gs;
            const int b1 = seq_best(v, gs, -1);
            if (a.method == DPEP_TOPK_NOAUX_TC && gs >= 2) gsc[gi] = v[b1] + v[seq_best(v, gs, b1)];
            else gsc[gi] = v[b1];
            gtaken[gi] = 0;
        }
        __syncwarp();
        for (int j = 0; j < a.topk_group; j++) {
            const int b = warp_best(gsc, G, NULL, gtaken);
            if (lane == 0 && b >= 0) gtaken[b] = 1;
            __syncwarp();
        }
        for (int e = lane; e < E; e += 32) allowed[e] = gtaken[e / gs];
        __syncwarp();
    }
    for (int j = 0; j < a.k; j++) {
        const int b = warp_best(sc, E, allowed, taken);
        if (lane == 0 && b >= 0) taken[b] = 1;
        __syncwarp();
    }
    /* ascending expert ids, weights from the unbiased scores: gate.c's loop */
    if (lane == 0) {
        int32_t *ti = idx + t * a.k;
        float *tw = w + t * a.k;
        int n = 0;
        float sum = 0.0f;
        for (int e = 0; e < E && n < a.k; e++)
            if (taken[e]) {
                ti[n] = e;
                tw[n] = s[e];
                sum += s[e];
                n++;
            }
        if (a.norm) {
            const float den = sum + 1e-20f;
            for (int j = 0; j < a.k; j++) tw[j] /= den;
        }
        for (int j = 0; j < a.k; j++) tw[j] *= a.scale;
    }
}

/* ------------------------------------------------------------------------ */
/* Routed experts: pairs by slot                                             */
/* ------------------------------------------------------------------------ */
struct seg_set {
    moe_rows q[MAX_SEG];
    int n_seg;
};
/* passed by value to k_slot_pairs: CUDA 12.1+ takes up to 32764 bytes of
 * kernel parameters on sm_70 and later */
static_assert(sizeof(seg_set) + 64 <= 32764, "seg_set: kernel parameters over 32764 bytes");

/* Exclusive prefix sum of one int per thread over the block (BLOCK
 * threads); *total gets the block's sum. sh: BLOCK/32 ints. */
__device__ int block_exscan(int v, int *sh, int *total)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int x = v;
    for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, x, o);
        if (lane >= o) x += y;
    }
    if (lane == 31) sh[warp] = x;
    __syncthreads();
    int before = 0, all = 0;
    for (int i = 0; i < BLOCK / 32; i++) {
        if (i < warp) before += sh[i];
        all += sh[i];
    }
    __syncthreads(); /* sh is reused by the next call */
    *total = all;
    return before + x - v;
}

/* One block per slot s: walks every row (segment order, then row order);
 * COUNT: cnt[s + 1] = its pairs (cnt[0] = 0 by block 0); else writes them
 * from off[s] in that order (j ascending within a row): the CPU's stable
 * counting sort. */
template <bool COUNT>
__global__ void __launch_bounds__(BLOCK) k_slot_pairs(seg_set ss, int k, int H,
                                                      int64_t *__restrict__ cnt,
                                                      const float **__restrict__ px,
                                                      float **__restrict__ pp,
                                                      float *__restrict__ slot_w)
{
    __shared__ int sh[BLOCK / 32];
    const int s = blockIdx.x;
    int64_t run = COUNT ? 0 : cnt[s];
    for (int g = 0; g < ss.n_seg; g++) {
        const moe_rows q = ss.q[g];
        for (int64_t i0 = 0; i0 < q.n; i0 += BLOCK) {
            const int64_t i = i0 + threadIdx.x;
            int c = 0;
            const int32_t *sl = q.slot + i * q.ld_slot;
            if (i < q.n)
                for (int j = 0; j < k; j++) c += sl[j] == s;
            int total = 0;
            const int pre = block_exscan(c, sh, &total);
            if (!COUNT && c) {
                const int64_t t = q.tok ? (int64_t)q.tok[i] : i;
                const float *wr = q.w + t * q.ld_w;
                int64_t p = run + pre;
                for (int j = 0; j < k; j++)
                    if (sl[j] == s) {
                        px[p] = q.x + t * q.ldx;
                        pp[p] = q.part + i * H;
                        slot_w[p] = wr[j];
                        p++;
                    }
            }
            run += total;
        }
    }
    if (COUNT && threadIdx.x == 0) {
        cnt[s + 1] = run;
        if (s == 0) cnt[0] = 0;
    }
}

/* cnt[0..n] counts -> offsets (cnt[s] = first pair of slot s). */
__global__ void k_offsets(int64_t *cnt, int n)
{
    if (threadIdx.x || blockIdx.x) return;
    for (int s = 0; s < n; s++) cnt[s + 1] += cnt[s];
}

/* ------------------------------------------------------------------------ */
/* The table's functions                                                     */
/* ------------------------------------------------------------------------ */
static dpep_status cuda_usable(const dpep_device *dev)
{
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess || dev->ordinal < 0 || dev->ordinal >= n) {
        (void)cudaGetLastError(); /* so that later calls do not report this one */
        DPEP_ERROR("moe: device cuda:%d: not usable (%s; %d CUDA device(s) visible)", dev->ordinal,
                   rc != cudaSuccess ? cudaGetErrorString(rc) : "no such ordinal", n);
        return DPEP_ERR_UNSUPPORTED;
    }
    /* the router's cuBLAS handle (and its workspace) now, at create, on the
     * context's device (this thread's device from here on, as the pool's
     * allocation would make it), not in a step a CUDA graph may be
     * capturing */
    rc = cudaSetDevice(dev->ordinal);
    if (rc != cudaSuccess) {
        (void)cudaGetLastError();
        DPEP_ERROR("moe: device cuda:%d: cannot be made current (%s)", dev->ordinal,
                   cudaGetErrorString(rc));
        return DPEP_ERR_CUDA;
    }
    cublasHandle_t h = NULL;
    return dpep_cublas_fp32("moe cuda", dev->ordinal, &h);
}

static void cuda_router_logits(const float *router, int n_experts, int hidden, const float *x,
                               int64_t n_tokens, float *logits)
{
    const char *op = "router_logits";
    if (n_tokens <= 0 || n_experts <= 0) return;
    cublasHandle_t h = blas_get(op);
    if (!h) return;
    DPEP_OP_CUBLAS(op, gemm_nt(h, (int)n_tokens, n_experts, hidden, x, hidden, router, logits, 0.0f));
fail:
    return;
}

static void cuda_gate_select(const dpep_moe_gate_cfg *g, const float *logits, const float *bias,
                             int64_t n_tokens, int32_t *idx, float *w)
{
    const char *op = "gate_select";
    if (n_tokens <= 0) return;
    gate_args a;
    a.E = g->n_experts;
    a.k = g->topk;
    a.G = g->n_group > 0 ? g->n_group : 1;
    a.topk_group = g->topk_group;
    a.sigmoid = g->scoring == DPEP_SCORE_SIGMOID;
    a.method = (int)g->method;
    a.norm = g->norm_topk_prob;
    a.scale = g->routed_scaling_factor;
    if (n_tokens > INT32_MAX) {
        op_fail(op, "launch", "more than 2^31 tokens", DPEP_ERR_INVALID);
        return;
    }
    /* E <= DPEP_MOE_MAX_EXPERTS: at most 10 KiB + groups, under the 48 KiB default */
    k_gate<<<(unsigned)n_tokens, 32, gate_smem(a.E, a.G)>>>(a, logits, bias, idx, w);
    OP_LAUNCHED(op, "k_gate");
fail:
    return;
}

static void cuda_mlp(const dpep_mlp_w *mlp, int hidden, const float *x, int64_t ldx,
                     int64_t n_tokens, int chunk, float *scratch, float *out, bool accumulate)
{
    const char *op = "mlp";
    const int ni = mlp->inter;
    if (n_tokens <= 0) return;
    if (ni <= 0) {
        if (!accumulate)
            DPEP_OP_CUDA(op, cudaMemsetAsync(out, 0, sizeof(float) * (size_t)n_tokens * (size_t)hidden, 0));
        return;
    }
    if (chunk <= 0) chunk = DPEP_MOE_CHUNK_DEFAULT;
    {
        float *G = scratch, *U = scratch + (size_t)chunk * ni;
        for (int64_t t0 = 0; t0 < n_tokens; t0 += chunk) {
            const int n = (int)(n_tokens - t0 < chunk ? n_tokens - t0 : chunk);
            const float *xc = x + t0 * ldx;
            DPEP_OP_STATUS(op, dpep_linear_cuda_nt(n, xc, ldx, &mlp->gate, 0.0f, G, ni));
            DPEP_OP_STATUS(op, dpep_linear_cuda_nt(n, xc, ldx, &mlp->up, 0.0f, U, ni));
            k_swiglu<<<grid_for((int64_t)n * ni), BLOCK>>>(G, U, n, ni, NULL);
            OP_LAUNCHED(op, "k_swiglu");
            DPEP_OP_STATUS(op, dpep_linear_cuda_nt(n, G, ni, &mlp->down, accumulate ? 1.0f : 0.0f,
                                                   out + t0 * hidden, hidden));
        }
    }
fail:
    return;
}

/* ------------------------------------------------------------------------ */
/* Routed experts without a host sync (MOE_CUDA_EXPERTS_GROUPED, opt-in)     */
/* ------------------------------------------------------------------------ */
/* The pairs, sorted by slot, go in chunks of `chunk` pairs [lo, lo + chunk):
 * the host loops over ceil(rows·min(k, n_slots) / chunk) chunks (known
 * without the counts), and blocks of a chunk past the real pairs exit.
 * Within a chunk, tiles of GBM pairs of one slot: block y picks its tile by
 * walking the offsets (at most chunk/GBM + n_slots tiles). Per chunk:
 * gate+up GEMM with silu·u·w fused (into G: (chunk, I)), down GEMM (into Y:
 * (chunk, H)), and the add into the partial sums one column per thread,
 * pairs in slot order: each row's contributions in ascending slot order, no
 * atomics, deterministic. Plain fp32 FMA tiles (GBM x GBN x GBK, 4x4 per
 * thread) reading float32, BF16, F16 or FP8 weights (widened as loaded, FP8
 * times its block scale) for float32 weights (the fp32 goldens' path) and
 * shapes the tensor-core tiles below do not take; 16-bit and FP8 weights
 * take those (k_grouped_tc). */
#define GBM 64
#define GBN 64
#define GBK 16
#define GTHREADS 256
#define MAX_GROUPED_SLOTS 256 /* weight pointers passed by value (kernel params) */

struct grp_w {
    const void *a[MAX_GROUPED_SLOTS]; /* gate (GATEUP) or down (DOWN), per slot */
    const void *b[MAX_GROUPED_SLOTS]; /* up (GATEUP)                            */
    const float *sa[MAX_GROUPED_SLOTS]; /* FP8: a's block scales, per slot     */
    const float *sb[MAX_GROUPED_SLOTS]; /* FP8: b's                           */
    int64_t sld;                      /* FP8: scale columns (all slots alike) */
};

/* Weight (row, k) of a [rows, K] matrix widened to float (the tiles read
 * float32, BF16, F16 or FP8 matrices as stored; FP8 times its 128 x 128
 * block's scale; the sums stay float32). */
__device__ __forceinline__ float wget(const float *p, const float *, int64_t, int64_t row, int k, int K)
{
    return p[row * K + k];
}
__device__ __forceinline__ float wget(const __nv_bfloat16 *p, const float *, int64_t, int64_t row, int k,
                                      int K)
{
    return __bfloat162float(p[row * K + k]);
}
__device__ __forceinline__ float wget(const __half *p, const float *, int64_t, int64_t row, int k, int K)
{
    return __half2float(p[row * K + k]);
}
__device__ __forceinline__ float wget(const __nv_fp8_e4m3 *p, const float *s, int64_t sld, int64_t row,
                                      int k, int K)
{
    return static_cast<float>(p[row * K + k]) * s[(row / DPEP_FP8_BLOCK) * sld + k / DPEP_FP8_BLOCK];
}
/* k_grouped's parameters: the table plus ~80 bytes, over the pre-12.1 4 KB
 * limit; CUDA >= 12.1 (this build needs 13) takes 32764 bytes on sm_70+. */
static_assert(sizeof(grp_w) + 256 <= 32764, "k_grouped: kernel parameters over 32764 bytes");
#if CUDART_VERSION < 12010
#error "moe/experts_cuda.cu: k_grouped passes > 4 KB of kernel parameters (needs CUDA >= 12.1)"
#endif

/* This block's tile in chunk [lo, hi): slot *s, pairs [*r0, *r1); false if
 * none (past the chunk's tiles). */
__device__ bool grp_tile(const int64_t *__restrict__ off, int n_slots, int64_t lo, int64_t hi,
                         int ti, int *s_out, int64_t *r0, int64_t *r1)
{
    const int64_t end = off[n_slots] < hi ? off[n_slots] : hi;
    if (end <= lo) return false;
    for (int s = 0; s < n_slots; s++) {
        const int64_t b = off[s] > lo ? off[s] : lo, e = off[s + 1] < end ? off[s + 1] : end;
        if (e <= b) continue;
        const int64_t nt = (e - b + GBM - 1) / GBM;
        if (ti < nt) {
            *s_out = s;
            *r0 = b + (int64_t)ti * GBM;
            *r1 = *r0 + GBM < e ? *r0 + GBM : e;
            return true;
        }
        ti -= (int)nt;
        if (off[s + 1] >= end) break;
    }
    return false;
}

/* GATEUP: G[(p-lo), n] = silu(x_p·gate_s[n]) · (x_p·up_s[n]) · w_p, x_p at
 * px[p], K = H, N = ni. DOWN: Y[(p-lo), n] = G[(p-lo)]·down_s[n], K = ni,
 * N = H. grid (ceil(N/GBN), chunk/GBM + n_slots), GTHREADS threads. */
template <typename TW, bool GATEUP>
__global__ void __launch_bounds__(GTHREADS)
    k_grouped(grp_w wts, const int64_t *__restrict__ off, int n_slots, int64_t lo, int64_t hi,
              const float *const *__restrict__ px, const float *__restrict__ slot_w,
              const float *__restrict__ Ain, int K, int N, float *__restrict__ out)
{
    __shared__ float As[GBK][GBM + 4];
    __shared__ float Bs[GBK][GBN + 4];
    __shared__ float Cs[GATEUP ? GBK : 1][GATEUP ? GBN + 4 : 1];
    int s = 0;
    int64_t r0 = 0, r1 = 0;
    if (!grp_tile(off, n_slots, lo, hi, blockIdx.y, &s, &r0, &r1)) return; /* whole block */
    const int n0 = blockIdx.x * GBN;
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int rows = (int)(r1 - r0);
    const TW *Bw = (const TW *)wts.a[s], *Bu = GATEUP ? (const TW *)wts.b[s] : NULL;
    const float *Sw = wts.sa[s], *Su = GATEUP ? wts.sb[s] : NULL;
    float acc[4][4], acc2[4][4];
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++) acc[i][j] = acc2[i][j] = 0.0f;
    for (int k0 = 0; k0 < K; k0 += GBK) {
        /* 64 rows x 16 k of A and of each B: 4 elements per thread, 16
         * consecutive k of one row per 16 threads */
        for (int q = 0; q < 4; q++) {
            const int e = tid + GTHREADS * q, r = e / GBK, kk = e % GBK, k = k0 + kk;
            float av = 0.0f, bv = 0.0f, uv = 0.0f;
            if (r < rows && k < K) {
                const int64_t p = r0 + r;
                av = GATEUP ? px[p][k] : Ain[(p - lo) * (int64_t)K + k];
            }
            if (n0 + r < N && k < K) {
                bv = wget(Bw, Sw, wts.sld, (int64_t)(n0 + r), k, K);
                if (GATEUP) uv = wget(Bu, Su, wts.sld, (int64_t)(n0 + r), k, K);
            }
            As[kk][r] = av;
            Bs[kk][r] = bv;
            if (GATEUP) Cs[kk][r] = uv;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GBK; kk++) {
            float a[4], b[4], u[4];
            for (int i = 0; i < 4; i++) a[i] = As[kk][ty + 16 * i];
            for (int j = 0; j < 4; j++) {
                b[j] = Bs[kk][tx + 16 * j];
                u[j] = GATEUP ? Cs[kk][tx + 16 * j] : 0.0f;
            }
            for (int i = 0; i < 4; i++)
                for (int j = 0; j < 4; j++) {
                    acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
                    if (GATEUP) acc2[i][j] = fmaf(a[i], u[j], acc2[i][j]);
                }
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; i++) {
        const int r = ty + 16 * i;
        if (r >= rows) continue;
        const int64_t p = r0 + r;
        for (int j = 0; j < 4; j++) {
            const int n = n0 + tx + 16 * j;
            if (n >= N) continue;
            if (GATEUP) {
                const float g = acc[i][j];
                out[(p - lo) * (int64_t)N + n] = g / (1.0f + expf(-g)) * acc2[i][j] * slot_w[p];
            } else {
                out[(p - lo) * (int64_t)N + n] = acc[i][j];
            }
        }
    }
}

/* The same tiles on tensor cores (16-bit and FP8 weights; float32 weights
 * keep the FMA tiles above): mma.sync m16n8k16 with fp32 sums on the
 * operands the per-slot cuBLAS path uses — the pair rows rounded to the
 * weights' 16-bit type (BF16 for FP8), the weights as stored (FP8: its
 * value x block scale rounded once to BF16). Tile GBM (64) pairs x TBN (64)
 * weight rows x TBK (32) columns per step, the next step's rows and weights
 * loaded into registers while this one multiplies; 8 warps, each 16 pairs x
 * 32 weight rows (gate and up both in GATEUP). Needs K % 32 == 0 and 16-byte
 * aligned weights (the host checks; else the FMA tiles). */
#define TBN 64
#define TBK 32
#define TST (TBK + 8) /* shared row stride, elements: fragment loads in distinct banks */

/* 8 weights (row, k .. k + 7) of a [rows, K] matrix as 4 packed operands. */
__device__ __forceinline__ void w8(const __nv_bfloat16 *p, const float *, int64_t, int64_t row, int k, int K,
                                   uint32_t (&o)[4])
{
    const uint4 v = __ldg(reinterpret_cast<const uint4 *>(p + row * K + k));
    o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
}
__device__ __forceinline__ void w8(const __half *p, const float *, int64_t, int64_t row, int k, int K,
                                   uint32_t (&o)[4])
{
    const uint4 v = __ldg(reinterpret_cast<const uint4 *>(p + row * K + k));
    o[0] = v.x, o[1] = v.y, o[2] = v.z, o[3] = v.w;
}
__device__ __forceinline__ void w8(const __nv_fp8_e4m3 *p, const float *s, int64_t sld, int64_t row, int k,
                                   int K, uint32_t (&o)[4])
{
    const uint2 v = __ldg(reinterpret_cast<const uint2 *>(p + row * K + k));
    const float sc = s[(row / DPEP_FP8_BLOCK) * sld + k / DPEP_FP8_BLOCK];
    const uint32_t w[2] = {v.x, v.y};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const uint32_t h = w[i / 2] >> (16 * (i % 2)); /* bytes 2i, 2i + 1: little endian */
        o[i] = dpep_pack16x2(dpep_fp8_scaled(h, sc), dpep_fp8_scaled(h >> 8, sc));
    }
}

template <typename TW, bool GATEUP>
__global__ void __launch_bounds__(GTHREADS)
    k_grouped_tc(grp_w wts, const int64_t *__restrict__ off, int n_slots, int64_t lo, int64_t hi,
                 const float *const *__restrict__ px, const float *__restrict__ slot_w,
                 const float *__restrict__ Ain, int K, int N, float *__restrict__ out)
{
    typedef typename std::conditional<std::is_same<TW, __half>::value, __half, __nv_bfloat16>::type OT;
    constexpr bool F16 = std::is_same<OT, __half>::value; /* the mma's input type */
    static_assert(GBM == 64 && TBN == 64 && TBK == 32 && GTHREADS == 256, "the load map below");
    __shared__ __align__(16) uint16_t As[GBM * TST];
    __shared__ __align__(16) uint16_t Bs[TBN * TST];
    __shared__ __align__(16) uint16_t Cs[(GATEUP ? TBN : 1) * TST];
    int s = 0;
    int64_t r0 = 0, r1 = 0;
    if (!grp_tile(off, n_slots, lo, hi, blockIdx.y, &s, &r0, &r1)) return; /* whole block */
    const int n0 = blockIdx.x * TBN;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    const int rows = (int)(r1 - r0);
    const TW *Bw = (const TW *)wts.a[s], *Bu = GATEUP ? (const TW *)wts.b[s] : NULL;
    const float *Sw = wts.sa[s], *Su = GATEUP ? wts.sb[s] : NULL;
    /* loads: pair row lr (8 floats from column ls), weight row lr (8 elements) */
    const int lr = tid >> 2, ls = (tid & 3) * 8;
    const bool a_ok = lr < rows, b_ok = n0 + lr < N;
    const float *arow = NULL;
    if (a_ok) arow = GATEUP ? px[r0 + lr] : Ain + (r0 + lr - lo) * (int64_t)K;
    float xa[8];
    uint32_t wb[4] = {0, 0, 0, 0}, wu[4] = {0, 0, 0, 0};
    auto fetch = [&](int k0) {
#pragma unroll
        for (int i = 0; i < 8; i++) xa[i] = a_ok ? arow[k0 + ls + i] : 0.0f;
        if (b_ok) {
            w8(Bw, Sw, wts.sld, (int64_t)(n0 + lr), k0 + ls, K, wb);
            if (GATEUP) w8(Bu, Su, wts.sld, (int64_t)(n0 + lr), k0 + ls, K, wu);
        }
    };
    /* this warp's 16 pairs (mb) and 32 weight rows (4 blocks of 8 from nh) */
    const int mb = warp & 3, nh = warp >> 2;
    float acc[4][4], acc2[4][4];
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) acc[j][e] = acc2[j][e] = 0.0f;
    fetch(0);
    for (int k0 = 0; k0 < K; k0 += TBK) {
        __syncthreads(); /* the previous step's readers are done */
        {
            *reinterpret_cast<uint4 *>(As + lr * TST + ls) =
                make_uint4(dpep_pack16x2<F16>(xa[0], xa[1]), dpep_pack16x2<F16>(xa[2], xa[3]),
                           dpep_pack16x2<F16>(xa[4], xa[5]), dpep_pack16x2<F16>(xa[6], xa[7]));
            *reinterpret_cast<uint4 *>(Bs + lr * TST + ls) = make_uint4(wb[0], wb[1], wb[2], wb[3]);
            if (GATEUP) *reinterpret_cast<uint4 *>(Cs + lr * TST + ls) = make_uint4(wu[0], wu[1], wu[2], wu[3]);
        }
        __syncthreads();
        if (k0 + TBK < K) fetch(k0 + TBK);
#pragma unroll
        for (int kk = 0; kk < TBK; kk += 16) {
            const uint16_t *xa0 = As + (mb * 16 + g) * TST + kk + 2 * t4, *xa1 = xa0 + 8 * TST;
            const uint32_t a0 = *reinterpret_cast<const uint32_t *>(xa0),
                           a1 = *reinterpret_cast<const uint32_t *>(xa1),
                           a2 = *reinterpret_cast<const uint32_t *>(xa0 + 8),
                           a3 = *reinterpret_cast<const uint32_t *>(xa1 + 8);
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int br = (nh * 32 + j * 8 + g) * TST + kk + 2 * t4;
                dpep_mma16816<F16>(acc[j], a0, a1, a2, a3, *reinterpret_cast<const uint32_t *>(Bs + br),
                                   *reinterpret_cast<const uint32_t *>(Bs + br + 8));
                if (GATEUP)
                    dpep_mma16816<F16>(acc2[j], a0, a1, a2, a3, *reinterpret_cast<const uint32_t *>(Cs + br),
                                       *reinterpret_cast<const uint32_t *>(Cs + br + 8));
            }
        }
    }
    /* acc[j][e]: pair mb * 16 + g (+ 8 for e >= 2), weight row nh * 32 + j * 8 + 2 t4 + (e & 1) */
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int r = mb * 16 + g + (e >= 2 ? 8 : 0), n = n0 + nh * 32 + j * 8 + 2 * t4 + (e & 1);
            if (r >= rows || n >= N) continue;
            const int64_t p = r0 + r;
            if (GATEUP) {
                const float gv = acc[j][e];
                out[(p - lo) * (int64_t)N + n] = gv / (1.0f + expf(-gv)) * acc2[j][e] * slot_w[p];
            } else {
                out[(p - lo) * (int64_t)N + n] = acc[j][e];
            }
        }
}

/* pp[p][h] += Y[p - lo][h] for the chunk's pairs in order, one column h per
 * thread: a row's contributions land in slot order, without atomics. */
__global__ void k_grouped_add(const int64_t *__restrict__ off, int n_slots, int64_t lo,
                              int64_t hi, float *const *__restrict__ pp,
                              const float *__restrict__ Y, int H)
{
    const int h = blockIdx.x * blockDim.x + threadIdx.x;
    if (h >= H) return;
    const int64_t end = off[n_slots] < hi ? off[n_slots] : hi;
    for (int64_t p = lo; p < end; p++) pp[p][h] += Y[(p - lo) * (int64_t)H + h];
}

static int g_experts_impl = MOE_CUDA_EXPERTS_CUBLAS;

extern "C" void moe_cuda_set_experts_impl(int impl) { g_experts_impl = impl; }

static void cuda_sync_free(bool on)
{
    g_experts_impl = on ? MOE_CUDA_EXPERTS_GROUPED : MOE_CUDA_EXPERTS_CUBLAS;
}

/* The grouped path after the pairs are written (offsets in slot_cnt on the
 * device); false when this call does not fit it (then cuBLAS per slot):
 * every slot's matrices of one intermediate size and one type. */
static bool grouped_fits(const dpep_mlp_w *experts, int n_slots, int chunk)
{
    if ((g_experts_impl != MOE_CUDA_EXPERTS_GROUPED && g_experts_impl != MOE_CUDA_EXPERTS_GROUPED_FMA) ||
        n_slots > MAX_GROUPED_SLOTS)
        return false;
    if ((int64_t)(chunk + GBM - 1) / GBM + n_slots > 65535) return false; /* grid y */
    const dpep_wtype t = n_slots > 0 ? experts[0].gate.t : DPEP_WT_F32;
    if (t != DPEP_WT_F32 && t != DPEP_WT_BF16 && t != DPEP_WT_F16 && t != DPEP_WT_FP8) return false;
    for (int s = 0; s < n_slots; s++) {
        const dpep_mlp_w *e = &experts[s];
        /* the tiles index whole rows (row stride = columns); FP8: whole
         * matrices with their scales, one scale stride for all slots */
        if (e->inter != experts[0].inter || e->inter <= 0 || e->gate.t != t || e->up.t != t ||
            e->down.t != t || e->gate.ld != e->gate.cols || e->up.ld != e->up.cols ||
            e->down.ld != e->down.cols)
            return false;
        if (t == DPEP_WT_FP8 &&
            (!e->gate.scale || !e->up.scale || !e->down.scale || e->gate.sr0 || e->up.sr0 ||
             e->down.sr0 || e->gate.sld != experts[0].gate.sld || e->up.sld != e->gate.sld ||
             e->down.sld != experts[0].down.sld))
            return false;
    }
    return true;
}

/* GEMMs the tensor-core tiles ran (tests: that the path they check ran). */
static int64_t g_tc_launches;
extern "C" int64_t moe_cuda_grouped_tc_count(void) { return g_tc_launches; }

/* A launch of k_grouped_tc (16-bit / FP8 weights; float32 has none: the
 * FMA tiles, so nothing is instantiated for it). */
template <typename TW, bool GATEUP>
static void launch_tc(dim3 grid, const grp_w &w, const int64_t *off, int n_slots, int64_t lo, int64_t hi,
                      const float *const *px, const float *slot_w, const float *Ain, int K, int N, float *out)
{
    if constexpr (!std::is_same<TW, float>::value) {
        k_grouped_tc<TW, GATEUP><<<grid, GTHREADS>>>(w, off, n_slots, lo, hi, px, slot_w, Ain, K, N, out);
        g_tc_launches++;
    }
}

/* Compute capability major of the current device (0: unknown). */
static int cc_major(void)
{
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    const dpep_cuda_facts *f = dpep_cuda_device_facts(dev);
    return f ? f->major : 0;
}

/* Whether one of the two GEMMs (K columns; matrices a, and b when given, of
 * every slot) takes the tensor-core tiles. */
static bool grouped_tc_ok(dpep_wtype t, int K, const grp_w &w, bool both, int n_slots)
{
    if (t == DPEP_WT_F32 || g_experts_impl == MOE_CUDA_EXPERTS_GROUPED_FMA || dpep_cuda_tc_off() ||
        K % TBK != 0 || cc_major() < 8)
        return false;
    for (int s = 0; s < n_slots; s++)
        if (((uintptr_t)w.a[s] & 15) || (both && ((uintptr_t)w.b[s] & 15))) return false;
    return true;
}

template <typename TW>
static void grouped_launch(const grp_w &gu, const grp_w &dn, int n_slots, int H, int ni,
                           int64_t max_pairs, int chunk, float *const *pp, const float *const *px,
                           const float *slot_w, const int64_t *off, float *G, float *Y, bool tc_gu,
                           bool tc_dn)
{
    const char *op = "experts (grouped)";
    const unsigned tiles = (unsigned)((chunk + GBM - 1) / GBM + n_slots);
    for (int64_t lo = 0; lo < max_pairs; lo += chunk) {
        const int64_t hi = lo + chunk;
        if (tc_gu)
            launch_tc<TW, true>(dim3((ni + TBN - 1) / TBN, tiles), gu, off, n_slots, lo, hi, px, slot_w, NULL,
                                H, ni, G);
        else
            k_grouped<TW, true><<<dim3((ni + GBN - 1) / GBN, tiles), GTHREADS>>>(
                gu, off, n_slots, lo, hi, px, slot_w, NULL, H, ni, G);
        OP_LAUNCHED(op, tc_gu ? "k_grouped_tc<gate_up>" : "k_grouped<gate_up>");
        if (tc_dn)
            launch_tc<TW, false>(dim3((H + TBN - 1) / TBN, tiles), dn, off, n_slots, lo, hi, NULL, NULL, G, ni,
                                 H, Y);
        else
            k_grouped<TW, false><<<dim3((H + GBN - 1) / GBN, tiles), GTHREADS>>>(
                dn, off, n_slots, lo, hi, NULL, NULL, G, ni, H, Y);
        OP_LAUNCHED(op, tc_dn ? "k_grouped_tc<down>" : "k_grouped<down>");
        k_grouped_add<<<(H + BLOCK - 1) / BLOCK, BLOCK>>>(off, n_slots, lo, hi, pp, Y, H);
        OP_LAUNCHED(op, "k_grouped_add");
    }
fail:
    return;
}

static void grouped_run(const dpep_mlp_w *experts, int n_slots, int H, int64_t max_pairs,
                        int chunk, float *const *pp, const float *const *px, const float *slot_w,
                        const int64_t *off, float *work, int64_t work_inter)
{
    const int ni = experts[0].inter;
    grp_w gu, dn;
    memset(&gu, 0, sizeof gu);
    memset(&dn, 0, sizeof dn);
    for (int s = 0; s < n_slots; s++) {
        gu.a[s] = experts[s].gate.p;
        gu.b[s] = experts[s].up.p;
        gu.sa[s] = experts[s].gate.scale;
        gu.sb[s] = experts[s].up.scale;
        dn.a[s] = experts[s].down.p;
        dn.sa[s] = experts[s].down.scale;
    }
    gu.sld = n_slots > 0 ? experts[0].gate.sld : 0;
    dn.sld = n_slots > 0 ? experts[0].down.sld : 0;
    float *G = work + (size_t)chunk * H, *Y = G + 2 * (size_t)chunk * work_inter;
    const dpep_wtype t = experts[0].gate.t;
    const bool tg = grouped_tc_ok(t, H, gu, true, n_slots), td = grouped_tc_ok(t, ni, dn, false, n_slots);
    switch (t) {
    case DPEP_WT_BF16:
        grouped_launch<__nv_bfloat16>(gu, dn, n_slots, H, ni, max_pairs, chunk, pp, px, slot_w, off, G, Y, tg, td);
        break;
    case DPEP_WT_F16:
        grouped_launch<__half>(gu, dn, n_slots, H, ni, max_pairs, chunk, pp, px, slot_w, off, G, Y, tg, td);
        break;
    case DPEP_WT_FP8:
        grouped_launch<__nv_fp8_e4m3>(gu, dn, n_slots, H, ni, max_pairs, chunk, pp, px, slot_w, off, G, Y, tg,
                                      td);
        break;
    default:
        grouped_launch<float>(gu, dn, n_slots, H, ni, max_pairs, chunk, pp, px, slot_w, off, G, Y, false, false);
        break;
    }
}

static double cuda_experts(const dpep_mlp_w *experts, int n_slots, int hidden, int topk,
                           const moe_rows *seg, int n_seg, int chunk, const float **px,
                           float **pp, float *slot_w, int64_t *slot_cnt, float *work,
                           int64_t work_inter, int64_t *pairs)
{
    const char *op = "experts";
    static thread_local int64_t off[DPEP_MOE_MAX_EXPERTS + 1]; /* host copy of slot_cnt */
    const int H = hidden, k = topk;
    int64_t n_rows = 0;
    double flops = 0.0;
    seg_set ss;
    *pairs = 0;
    int n_full = 0;
    for (int g = 0; g < n_seg; g++) n_full += seg[g].n > 0;
    if (n_full > MAX_SEG || n_slots > DPEP_MOE_MAX_EXPERTS) {
        op_fail(op, "arguments", "more runs of rows or slots than the kernels take",
                DPEP_ERR_INTERNAL);
        return 0.0;
    }
    memset(&ss, 0, sizeof ss);
    ss.n_seg = 0;
    for (int g = 0; g < n_seg; g++) {
        if (seg[g].n <= 0) continue;
        DPEP_OP_CUDA(op, cudaMemsetAsync(seg[g].part, 0, sizeof(float) * (size_t)seg[g].n * (size_t)H, 0));
        ss.q[ss.n_seg++] = seg[g];
        n_rows += seg[g].n;
    }
    if (n_rows == 0 || n_slots == 0) return 0.0;
    if (chunk <= 0) chunk = DPEP_MOE_CHUNK_DEFAULT;
    k_slot_pairs<true><<<n_slots, BLOCK>>>(ss, k, H, slot_cnt, px, pp, slot_w);
    OP_LAUNCHED(op, "k_slot_pairs<count>");
    k_offsets<<<1, 1>>>(slot_cnt, n_slots);
    OP_LAUNCHED(op, "k_offsets");
    k_slot_pairs<false><<<n_slots, BLOCK>>>(ss, k, H, slot_cnt, px, pp, slot_w);
    OP_LAUNCHED(op, "k_slot_pairs<write>");
    if (grouped_fits(experts, n_slots, chunk)) {
        /* no sync: the counts stay on the device, so do the stats */
        const int64_t kl = k < n_slots ? k : n_slots;
        grouped_run(experts, n_slots, H, n_rows * kl, chunk, pp, px, slot_w, slot_cnt, work,
                    work_inter);
        *pairs = -1;
        return -1.0;
    }
    /* the one device-to-host sync (file header: the first step); never
     * inside a CUDA graph's capture, which it would invalidate: a step
     * whose experts the sync-free tiles cannot take (grouped_fits) must
     * not be captured */
    {
        cudaStreamCaptureStatus cs = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing(cudaStreamPerThread, &cs) == cudaSuccess &&
            cs != cudaStreamCaptureStatusNone) {
            op_fail(op, "cudaStreamIsCapturing",
                    "these experts need the per-slot path, whose device-to-host copy a CUDA "
                    "graph cannot capture (runtime.disable_cuda_graph: true runs every step eagerly)",
                    DPEP_ERR_UNSUPPORTED);
            goto fail;
        }
    }
    DPEP_OP_CUDA(op, cudaMemcpy(off, slot_cnt, sizeof(int64_t) * (size_t)(n_slots + 1),
                           cudaMemcpyDeviceToHost));
    *pairs = off[n_slots];
    {
        float *X = work, *G = X + (size_t)chunk * H, *U = G + (size_t)chunk * work_inter,
              *Y = U + (size_t)chunk * work_inter;
        for (int s = 0; s < n_slots; s++) {
            const int64_t b = off[s], e = off[s + 1];
            const dpep_mlp_w *mw = &experts[s];
            const int ni = mw->inter;
            if (e == b || ni <= 0) continue;
            flops += 6.0 * (double)(e - b) * H * ni;
            for (int64_t p0 = b; p0 < e; p0 += chunk) {
                const int n = (int)(e - p0 < chunk ? e - p0 : chunk);
                k_gather<<<n, BLOCK>>>(X, px + p0, H);
                OP_LAUNCHED(op, "k_gather");
                DPEP_OP_STATUS(op, dpep_linear_cuda_nt(n, X, H, &mw->gate, 0.0f, G, ni));
                DPEP_OP_STATUS(op, dpep_linear_cuda_nt(n, X, H, &mw->up, 0.0f, U, ni));
                /* the gate weight scales the intermediate row: down is linear */
                k_swiglu<<<grid_for((int64_t)n * ni), BLOCK>>>(G, U, n, ni, slot_w + p0);
                OP_LAUNCHED(op, "k_swiglu");
                DPEP_OP_STATUS(op, dpep_linear_cuda_nt(n, G, ni, &mw->down, 0.0f, Y, H));
                k_scatter_add<<<n, BLOCK>>>(pp + p0, Y, H);
                OP_LAUNCHED(op, "k_scatter_add");
            }
        }
    }
    return flops;
fail:
    return 0.0;
}

/* row i = [x row tok[i] | slot ids of row i | w row tok[i]] at dst[i];
 * rows grid-strided over the blocks, threads over a row. */
__global__ void k_pack_rows(float *const *__restrict__ dst, const float *__restrict__ x,
                            int64_t ldx, const float *__restrict__ w, int64_t ldw,
                            const int32_t *__restrict__ tok, const int32_t *__restrict__ slot,
                            int64_t n, int H, int k)
{
    for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
        float *row = dst[i];
        const int64_t t = tok[i];
        const float *xr = x + t * ldx, *wr = w + t * ldw;
        for (int h = threadIdx.x; h < H; h += blockDim.x) row[h] = xr[h];
        int32_t *sl = (int32_t *)(row + H);
        for (int j = threadIdx.x; j < k; j += blockDim.x) {
            sl[j] = slot[i * k + j];
            row[H + k + j] = wr[j];
        }
    }
}

/* acc row t = its cnt[t] source rows added left to right (0: zeros), the
 * host's order (moe_sum_rows_host): plain adds, the same bits. */
__global__ void k_sum_rows(float *__restrict__ acc, const float *const *__restrict__ src,
                           const int32_t *__restrict__ cnt, int64_t U, int H, int D)
{
    for (int64_t t = blockIdx.x; t < U; t += gridDim.x) {
        const int n = cnt[t];
        const float *const *r = src + t * D;
        for (int h = threadIdx.x; h < H; h += blockDim.x) {
            float a = 0.0f;
            if (n > 0) {
                a = r[0][h];
                for (int j = 1; j < n; j++) a = __fadd_rn(a, r[j][h]);
            }
            acc[t * H + h] = a;
        }
    }
}

__global__ void k_put_i64(int64_t *const *__restrict__ dst, const int64_t *__restrict__ src, int n)
{
    for (int i = threadIdx.x; i < n; i += blockDim.x) *dst[i] = src[i];
}

/* Identity experts over one run of rows: part row i = (Σ of the local
 * slots' weights, slot order) · x row (the CPU's expression). */
__global__ void k_identity(moe_rows q, int H, int k)
{
    for (int64_t i = blockIdx.x; i < q.n; i += gridDim.x) {
        const int64_t t = q.tok ? (int64_t)q.tok[i] : i;
        const float *x = q.x + t * q.ldx, *wr = q.w + t * q.ld_w;
        const int32_t *sl = q.slot + i * q.ld_slot;
        float ws = 0.0f;
        for (int j = 0; j < k; j++)
            if (sl[j] >= 0) ws = __fadd_rn(ws, wr[j]);
        float *dst = q.part + i * H;
        for (int h = threadIdx.x; h < H; h += blockDim.x) dst[h] = __fmul_rn(ws, x[h]);
    }
}

/* The allgather path's slot ids, in place: row g = r * Upad + t, valid when
 * t < n_valid[r]; id -> map[id] (-1 elsewhere), padding -> -1. */
__global__ void k_remap_slots(float *__restrict__ rows, int ep, int64_t Upad,
                              const int64_t *__restrict__ n_valid,
                              const int32_t *__restrict__ map, int H, int k)
{
    const int64_t S = (int64_t)H + 2 * k, n = (int64_t)ep * Upad;
    for (int64_t g = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; g < n * k;
         g += (int64_t)gridDim.x * blockDim.x) {
        const int64_t row = g / k, r = row / Upad, t = row % Upad;
        int32_t *sl = (int32_t *)(rows + row * S + H) + g % k;
        const int32_t e = *sl;
        *sl = t < n_valid[r] && e >= 0 ? map[e] : -1;
    }
}

static unsigned row_grid(int64_t n) { return (unsigned)(n < (1 << 20) ? n : (1 << 20)); }

static void cuda_remap_slots(float *rows, int ep, int64_t Upad, const int64_t *n_valid,
                             const int32_t *map, int H, int k)
{
    if (ep <= 0 || Upad <= 0) return;
    k_remap_slots<<<grid_for((int64_t)ep * Upad * k), BLOCK>>>(rows, ep, Upad, n_valid, map, H, k);
    OP_LAUNCHED("remap_slots", "k_remap_slots");
fail:
    return;
}

static void cuda_identity(const moe_rows *seg, int n_seg, int H, int k)
{
    for (int g = 0; g < n_seg; g++) {
        if (seg[g].n <= 0) continue;
        k_identity<<<row_grid(seg[g].n), BLOCK>>>(seg[g], H, k);
        OP_LAUNCHED("identity", "k_identity");
    }
fail:
    return;
}

static void cuda_pack_rows(float *const *dst, const float *x, int64_t ldx, const float *w,
                           int64_t ldw, const int32_t *tok, const int32_t *slot, int64_t n, int H,
                           int k)
{
    if (n <= 0) return;
    k_pack_rows<<<row_grid(n), BLOCK>>>(dst, x, ldx, w, ldw, tok, slot, n, H, k);
    OP_LAUNCHED("pack_rows", "k_pack_rows");
fail:
    return;
}

static void cuda_sum_rows(float *acc, const float *const *src, const int32_t *cnt, int64_t U,
                          int H, int D)
{
    if (U <= 0) return;
    k_sum_rows<<<row_grid(U), BLOCK>>>(acc, src, cnt, U, H, D);
    OP_LAUNCHED("sum_rows", "k_sum_rows");
fail:
    return;
}

static void cuda_put_i64(int64_t *const *dst, const int64_t *src, int n)
{
    if (n <= 0) return;
    k_put_i64<<<1, 128>>>(dst, src, n);
    OP_LAUNCHED("put_i64", "k_put_i64");
fail:
    return;
}

static void cuda_zero(float *p, int64_t n)
{
    DPEP_OP_CUDA("zero", cudaMemsetAsync(p, 0, sizeof(float) * (size_t)n, 0));
fail:
    return;
}

static void cuda_add(float *acc, const float *x, int64_t n)
{
    k_add<<<grid_for(n), BLOCK>>>(acc, x, n);
    OP_LAUNCHED("add", "k_add");
fail:
    return;
}

static void cuda_copy(float *dst, const float *src, int64_t n)
{
    DPEP_OP_CUDA("copy", cudaMemcpyAsync(dst, src, sizeof(float) * (size_t)n, cudaMemcpyDeviceToDevice, 0));
fail:
    return;
}

static dpep_status cuda_status(void)
{
    dpep_status st = g_err;
    g_err = DPEP_OK;
    return st;
}

extern "C" const moe_kernel_ops moe_kernels_cuda = {
    /* name */ "cuda",
    /* device_only */ true,
    /* usable */ cuda_usable,
    /* router_logits */ cuda_router_logits,
    /* gate_select */ cuda_gate_select,
    /* mlp */ cuda_mlp,
    /* experts */ cuda_experts,
    /* zero */ cuda_zero,
    /* add */ cuda_add,
    /* copy */ cuda_copy,
    /* pack_rows */ cuda_pack_rows,
    /* sum_rows */ cuda_sum_rows,
    /* put_i64 */ cuda_put_i64,
    /* identity */ cuda_identity,
    /* remap_slots */ cuda_remap_slots,
    /* status */ cuda_status,
    /* sync_free */ cuda_sync_free,
};
