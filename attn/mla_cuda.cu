/* mla_cuda.cu — CUDA backend of MLA attention (the DPEP_DEVICE_CUDA entry of
 * attn.c's ops table), issue 16. fp32 arithmetic throughout: projections, the
 * W_UK / W_UV absorptions and o_proj through runtime/linear (cuBLAS; fp32 or
 * 16-bit weights), small kernels for RMSNorm, YaRN RoPE and the latent KV
 * write into the pool's pages (fp32, or BF16 rounded to nearest even), and
 * the attention core (pool rows widened to fp32 as loaded): a tiled kernel in FlashMLA's shape
 * (absorbed queries of all heads of a token together, 576-wide keys and
 * 512-wide values from the same latent rows through shared memory, online
 * softmax, split-KV with a combine pass) serving decode and prefill over a
 * cached prefix alike, beside the simple reference kernel (one block per
 * (token, head)) the tests compare it with. Checked against mla_cpu.c by
 * tests/attn/test_attn_cuda.c; timed by bench/mla_decode_cuda.cu.
 *
 * Memory contract of the forward: x, out, every weight of dpep_layer_w and
 * the KV pool are device memory of a->dev (checked: host pointers are
 * refused; runtime/model's dpep_weights_load_on loads the weights onto the
 * CUDA device).
 * Page tables stay in host memory (kv_cache.c); a step's page-table
 * entries, positions, the core's tiles and inv_freq are planned in a host
 * buffer (a->host, malloc'ed at init) and copied to the device with ONE
 * cudaMemcpy: once per step when the engine stages it (dpep_attn_stage:
 * every layer's forward then only queues device work), else by each
 * forward. Nothing on the forward path allocates.
 *
 * Attention form: every token (prefill and decode) runs the absorbed form
 *   q~ = [W_UK_h^T q_nope | q_pe]     one strided-batched GEMM over heads
 *   o~ = softmax(scale q~ . [c_kv | k_pe]) c_kv   the core (dpep_mla_cu_core)
 *   heads = W_UV_h o~                  a second strided-batched GEMM
 * (the products: runtime/linear's CUDA entries, fp32 or 16-bit weights)
 * the same math as the CPU's absorbed decode; the CPU prefill expands
 * k_nope/v per block instead, which differs only in rounding (well inside
 * the test's 1e-5). For prefill the expanded form does 3.4x fewer flops per
 * (query, key) at V3 dims (320 vs 1088 FMAs per head) but needs k_nope / v
 * expanded per context token; the absorbed form is kept as a first step.
 *
 * Scratch (a->sc, carved at create): qa, q, kva, heads as on the CPU (same
 * shapes); qt (T, H, kv_lora + rope) the absorbed queries; ot (T, H,
 * kv_lora) the core's output; op / mp the split-KV partials (a->cu_part_cap
 * tile-chunks of (HT, kv_lora) and (HT, 2)); `tok` holds the staged ints
 * (see stage layout below); cosv/sinv the per-token cos/sin. The other
 * fields are unused (NULL). s_len records the page entries the staging
 * holds.
 *
 * Attention-TP: attn.c all-reduces `out` after the forward; with an NCCL
 * comm that works on device memory, so tp > 1 is accepted only with an NCCL
 * comm and refused (UNSUPPORTED) with an MPI one (host buffers).
 *
 * Graphs: after dpep_attn_stage the forward neither synchronizes, copies
 * from the host, allocates nor sets a kernel attribute (the core's shared
 * memory limit is raised on the first call per size): a CUDA graph can
 * capture it, and the staged data it reads sits at fixed addresses, so a
 * replay of the same shape (tokens, sequences, split-KV chunks) after a new
 * dpep_attn_stage reads the new step's plan. The forward does not wait for
 * its kernels: a fault surfaces at the engine's check after the step.
 *
 * Errors: every CUDA / cuBLAS call through DPEP_CHECK_CUDA / _CUBLAS
 * (host:rank file:line call -> error); launches checked with
 * cudaGetLastError. */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn_internal.h"
#include "dpep_cuda.cuh"

#define BLOCK 128          /* threads per block of every kernel here        */
/* Page entries the staging holds when max_tokens * max_ctx is larger
 * (a step needing more is refused with a message). */
#define STAGE_PAGES_CAP (1 << 22)

/* cuBLAS: dpep_cublas_fp32 (runtime/base/dpep_cuda.cuh), one handle per device. */

/* ------------------------------------------------------------------------ */
/* Kernels                                                                  */
/* ------------------------------------------------------------------------ */

/* Block-wide sum / max of one value per thread (blockDim.x == BLOCK). */
template <typename T> __device__ T block_sum(T v, T *sh) { return dpep_block_sum<BLOCK>(v, sh); }
__device__ float block_max(float v, float *sh) { return dpep_block_max<BLOCK>(v, sh); }

/* In place on the first n of each row (stride ld): x * rsqrt(mean(x^2) + eps)
 * * g, the sum of squares in double and the scale rounded to float as
 * dpep_rmsnorm_rows does. One block per row. */
__global__ void k_rmsnorm(float *__restrict__ x, int64_t ld, const float *__restrict__ g, int n,
                          double eps)
{
    __shared__ double sh[BLOCK / 32];
    float *xr = x + (int64_t)blockIdx.x * ld;
    double ss = 0;
    for (int j = threadIdx.x; j < n; j += BLOCK) ss += (double)xr[j] * xr[j];
    ss = block_sum(ss, sh);
    const float inv = (float)(1.0 / sqrt(ss / n + eps));
    for (int j = threadIdx.x; j < n; j += BLOCK) xr[j] = g[j] * (xr[j] * inv);
}

/* Per token: cos/sin of pos * inv_freq (angle in fp32, times the YaRN
 * factor), then the interleaved-pair rotation of k_pe (kva) and of each
 * head's q_pe. One block per token. */
__global__ void k_rope(const int *__restrict__ pos, const float *__restrict__ inv_freq, int nhalf,
                       float factor, float *__restrict__ cosv, float *__restrict__ sinv,
                       float *__restrict__ kva, int row, int kv_lora, float *__restrict__ q, int H,
                       int qk, int nope)
{
    const int t = blockIdx.x;
    float *c = cosv + (int64_t)t * nhalf, *s = sinv + (int64_t)t * nhalf;
    const float p = (float)pos[t];
    for (int k = threadIdx.x; k < nhalf; k += blockDim.x) {
        float ang = p * inv_freq[k];
        c[k] = cosf(ang) * factor;
        s[k] = sinf(ang) * factor;
    }
    __syncthreads();
    /* vector 0: k_pe; vectors 1..H: q_pe of each head */
    for (int i = threadIdx.x; i < (H + 1) * nhalf; i += blockDim.x) {
        const int vec = i / nhalf, k = i % nhalf;
        float *x = vec == 0 ? kva + (int64_t)t * row + kv_lora
                            : q + (int64_t)t * H * qk + (int64_t)(vec - 1) * qk + nope;
        float x0 = x[2 * k], x1 = x[2 * k + 1];
        x[2 * k] = x0 * c[k] - x1 * s[k];
        x[2 * k + 1] = x1 * c[k] + x0 * s[k];
    }
}

/* The pool's elements: float32, or BF16 (uint16_t bits) rounded to nearest
 * even when stored (the CPU's dpep_f32_to_bf16) and widened exactly when
 * loaded. kv_ld4 reads 4 consecutive elements (16 or 8 bytes, aligned: rows
 * are a multiple of 4 elements on the tiled path). */
__device__ __forceinline__ float kv_ld(const float *p) { return __ldg(p); }
__device__ __forceinline__ float kv_ld(const uint16_t *p)
{
    return __uint_as_float((unsigned)__ldg(p) << 16);
}
__device__ __forceinline__ float4 kv_ld4(const float *p)
{
    return __ldg(reinterpret_cast<const float4 *>(p));
}
__device__ __forceinline__ float4 kv_ld4(const uint16_t *p)
{
    const uint2 u = __ldg(reinterpret_cast<const uint2 *>(p)); /* little endian: element 0 low */
    return make_float4(__uint_as_float(u.x << 16), __uint_as_float(u.x & 0xffff0000u),
                       __uint_as_float(u.y << 16), __uint_as_float(u.y & 0xffff0000u));
}
__device__ __forceinline__ void kv_st(float *p, float v) { *p = v; }
__device__ __forceinline__ void kv_st(uint16_t *p, float v)
{
    *p = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

/* The new latent rows into the layer's pages: token t at position pos[t] of
 * its sequence, whose page entries start at pages + poff[t]. One block per
 * token. `pool` is the layer's base (n_pages * P rows of KT). */
template <typename KT>
__global__ void k_kv_write(const float *__restrict__ kva, int row, const int *__restrict__ poff,
                           const int *__restrict__ pos, const int *__restrict__ pages, int P,
                           KT *__restrict__ pool)
{
    const int t = blockIdx.x;
    const int p = pos[t];
    KT *dst = pool + ((int64_t)pages[poff[t] + p / P] * P + p % P) * row;
    const float *src = kva + (int64_t)t * row;
    for (int j = threadIdx.x; j < row; j += blockDim.x) kv_st(dst + j, src[j]);
}

/* ------------------------------------------------------------------------ */
/* Attention core, reference form                                           */
/* ------------------------------------------------------------------------ */

/* The simple kernel, kept as the reference the tiled one is tested against
 * (dpep_mla_core_args.simple): one block per (token t = blockIdx.x, head h =
 * blockIdx.y), keys 0..pos[t] read from the pages in chunks of BLOCK, one
 * score per thread, online softmax across chunks:
 *   s_j = scale * q~ . [c_kv_j | k_pe_j],   o~ = sum_j softmax(s)_j c_kv_j
 * q~ (T, H, row) in, o~ (T, H, L) out, normalized. Dynamic shared memory:
 * qt (row) | acc (L) | p (BLOCK). */
template <typename KT>
__global__ void k_attn_simple(const float *__restrict__ qtil, const KT *__restrict__ pool,
                              const int *__restrict__ poff, const int *__restrict__ pos,
                              const int *__restrict__ pages, int P, int H, int L, int row,
                              float scale, float *__restrict__ otil)
{
    extern __shared__ float smem[];
    __shared__ float red[BLOCK / 32];
    const int t = blockIdx.x, h = blockIdx.y;
    float *qt = smem, *acc = smem + row, *pr = acc + L;
    const float *qh = qtil + ((int64_t)t * H + h) * row;
    for (int c = threadIdx.x; c < row; c += BLOCK) qt[c] = qh[c];
    for (int c = threadIdx.x; c < L; c += BLOCK) acc[c] = 0.0f;
    __syncthreads();
    const int *pt = pages + poff[t];
    const int64_t ctx = (int64_t)pos[t] + 1;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j0 = 0; j0 < ctx; j0 += BLOCK) {
        const int64_t j = j0 + threadIdx.x;
        float s = -INFINITY;
        if (j < ctx) {
            const KT *kr = pool + ((int64_t)pt[j / P] * P + j % P) * row;
            float d = 0.0f;
            for (int c = 0; c < row; c++) d += qt[c] * kv_ld(kr + c);
            s = scale * d;
        }
        const float mx = fmaxf(m, block_max(s, red));
        const float e = j < ctx ? expf(s - mx) : 0.0f;
        pr[threadIdx.x] = e;
        const float sum = block_sum(e, red); /* its barriers also publish pr */
        const float alpha = expf(m - mx);     /* 0 on the first chunk (m = -inf) */
        l = l * alpha + sum;
        m = mx;
        const int nk = ctx - j0 < BLOCK ? (int)(ctx - j0) : BLOCK;
        for (int c = threadIdx.x; c < L; c += BLOCK) {
            float a = 0.0f;
            for (int k = 0; k < nk; k++) {
                const int64_t jj = j0 + k;
                a += pr[k] * kv_ld(pool + ((int64_t)pt[jj / P] * P + jj % P) * row + c);
            }
            acc[c] = acc[c] * alpha + a;
        }
        __syncthreads(); /* pr is rewritten by the next chunk */
    }
    const float inv = 1.0f / l;
    float *o = otil + ((int64_t)t * H + h) * L;
    for (int c = threadIdx.x; c < L; c += BLOCK) o[c] = acc[c] * inv;
}

/* ------------------------------------------------------------------------ */
/* Attention core, tiled (FlashMLA's shape)                                  */
/* ------------------------------------------------------------------------ */
/* One block per (tile of HT rows, key chunk): the tile's absorbed queries
 * sit in shared memory (HT x (L + rope)); keys go through shared memory
 * CORE_BK rows at a time (the next tile's rows are fetched into registers
 * while the current one is computed), so each latent row is read from
 * global memory once per tile (decode: once per token and HT heads, the
 * head tiles of one token being adjacent blocks that share it through L2).
 * Per key tile, fp32 on the CUDA cores (no TF32):
 *   S phase  S[HT, BK] = Q K^T: warps split the heads (16 per warp) and the
 *            576 columns (KS slices, partial sums in shared memory); a lane
 *            holds 2 heads x 4 keys.
 *   softmax  16 lanes per row (one per key), online max/sum per row in
 *            registers, causal mask per row (its token's position), p into
 *            shared memory transposed (BK x HT), the rescale factor alpha.
 *   O phase  O[HT, L] = O * alpha + P V: a warp holds 8 heads x (32 * CI)
 *            float4 columns in registers (64 floats per thread at HT 32).
 * Shared memory rows are padded by 4 floats (stride row + 4) so the
 * float4 reads of 8 different rows fall in different banks.
 * Split-KV: chunk = ceil(kv_end / n_split) rounded up to BK; a block whose
 * chunk is empty writes max -inf, sum 0. With n_split == 1 the block
 * normalizes and writes o~; otherwise it writes its unnormalized partial
 * (o, max, sum) and k_mla_combine merges them by log-sum-exp. */
#define CORE_NT 256      /* threads per block (8 warps)                    */
#define CORE_BK 16       /* keys per shared-memory tile                    */
#define CORE_MAX_ROW4 144 /* (L + rope) / 4 at most: 576 floats            */
#define CORE_MAX_L4 128  /* L / 4 at most: 512 floats                      */
#define CORE_NLD ((CORE_BK * CORE_MAX_ROW4 + CORE_NT - 1) / CORE_NT) /* float4 loads per thread per tile */

static_assert(CORE_BK == 16, "the softmax maps 16 lanes to the 16 keys of a tile");

/* Shared memory of the tiled kernel for HT rows and row width `row`. */
static size_t core_smem_bytes(int HT, int row)
{
    const size_t kst = (size_t)row + 4, KS = 128 / (size_t)HT;
    return sizeof(float) * ((HT + CORE_BK) * kst + KS * HT * CORE_BK + CORE_BK * HT + 3 * (size_t)HT);
}

__device__ __forceinline__ float4 f4_zero() { return make_float4(0.f, 0.f, 0.f, 0.f); }

/* Fetches key rows [k0, k0 + BK) (those below k_end; zeros after) into
 * registers: float4 idx = tid + i * NT of the tile's BK x row4, walked as
 * (key kk, column f) with additions only, and the key's page found from
 * one division per tile (a page holds >= 16 keys: at most one step; page
 * size 1 takes up to 15). */
template <typename KT>
__device__ __forceinline__ void core_fetch(float4 (&pre)[CORE_NLD], const KT *__restrict__ pool,
                                           const int *__restrict__ pt, int P, int row, int row4,
                                           int k0, int k_end)
{
    const int q_nt = CORE_NT / row4, r_nt = CORE_NT - q_nt * row4;
    const int pg0 = k0 / P, off0 = k0 - pg0 * P;
    int kk = threadIdx.x / row4, f = threadIdx.x - kk * row4;
#pragma unroll
    for (int i = 0; i < CORE_NLD; i++) {
        float4 v = f4_zero();
        const int kj = k0 + kk;
        if (kk < CORE_BK && kj < k_end) {
            int pg = pg0, off = off0 + kk;
            while (off >= P) {
                off -= P;
                pg++;
            }
            const int64_t r = (int64_t)pt[pg] * P + off;
            v = kv_ld4(pool + r * row + 4 * f);
        }
        pre[i] = v;
        kk += q_nt;
        f += r_nt;
        if (f >= row4) {
            f -= row4;
            kk++;
        }
    }
}

template <int HT, typename KT>
__global__ void __launch_bounds__(CORE_NT, HT == 16 ? 2 : 1)
k_mla_core(const float *__restrict__ q, const KT *__restrict__ pool, const int *__restrict__ pages,
           const int *__restrict__ tok_poff, const int *__restrict__ tok_pos,
           const int *__restrict__ tiles, int H, int L, int row, int P, float scale, int n_split,
           float *__restrict__ out, float *__restrict__ part_o, float *__restrict__ part_ml)
{
    static_assert(HT == 16 || HT == 32, "tiles of 16 or 32 rows");
    constexpr int HB = HT / 16; /* S phase: blocks of 16 heads          */
    constexpr int KS = 8 / HB;  /* S phase: column slices               */
    constexpr int HG = HT / 8;  /* O phase: groups of 8 heads           */
    constexpr int CI = HT / 16; /* O phase: float4 columns per lane     */
    constexpr int RR = HT / 16; /* softmax: rows per thread             */
    extern __shared__ float4 smem4[];
    float *Qs = reinterpret_cast<float *>(smem4);
    const int kst = row + 4, row4 = row >> 2, L4 = L >> 2;
    float *Ks = Qs + HT * kst;            /* (BK, kst)                  */
    float *Sp = Ks + CORE_BK * kst;       /* (KS, HT, BK) partial scores */
    float *Ps = Sp + KS * HT * CORE_BK;   /* (BK, HT) probabilities     */
    float *As = Ps + CORE_BK * HT;        /* (HT) rescale of this tile  */
    float *Ms = As + HT, *Ls = Ms + HT;   /* (HT) final max / sum       */

    const int tile = blockIdx.x, split = blockIdx.y;
    const int *tp = tiles + (int64_t)tile * DPEP_MLA_CU_TILE_INTS;
    const int row0 = tp[0], nrows = tp[1], kv_end = tp[2];
    const int chunk = ((kv_end + n_split - 1) / n_split + CORE_BK - 1) / CORE_BK * CORE_BK;
    const int k_begin = split * chunk; /* < 64 * max_ctx: no overflow for kv_end < 2^24 */
    const int k_end = min(kv_end, k_begin + chunk);
    const int64_t pidx = (int64_t)tile * n_split + split; /* partial slot */
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    if (k_begin >= k_end) { /* empty chunk (n_split > 1 only): contributes nothing */
        if (tid < HT) {
            part_ml[(pidx * HT + tid) * 2] = -INFINITY;
            part_ml[(pidx * HT + tid) * 2 + 1] = 0.0f;
        }
        return;
    }
    const int *pt = pages + tok_poff[row0 / H];

    /* queries of the tile (zeros past nrows) */
    for (int i = tid; i < HT * row4; i += CORE_NT) {
        const int r = i / row4, f = i - r * row4;
        float4 v = f4_zero();
        if (r < nrows) v = __ldg(reinterpret_cast<const float4 *>(q + ((int64_t)row0 + r) * row) + f);
        *reinterpret_cast<float4 *>(Qs + r * kst + 4 * f) = v;
    }
    /* softmax rows of this thread: key sj, rows sr + 16 i; their causal
     * limit within the chunk (0 for rows past nrows: all masked) */
    const int sj = tid & 15, sr = tid >> 4;
    int lim[RR];
    float m_r[RR], l_r[RR];
#pragma unroll
    for (int i = 0; i < RR; i++) {
        const int r = sr + 16 * i;
        lim[i] = r < nrows ? min(tok_pos[(row0 + r) / H] + 1, k_end) : 0;
        m_r[i] = -INFINITY;
        l_r[i] = 0.0f;
    }
    /* O phase: 8 heads og*8.. and float4 columns ocol + 32 c of this thread */
    const int og = warp % HG, ocol = (warp / HG) * 32 * CI + lane;
    float4 acc[8][CI];
#pragma unroll
    for (int hh = 0; hh < 8; hh++)
#pragma unroll
        for (int c = 0; c < CI; c++) acc[hh][c] = f4_zero();
    /* S phase: heads sb*16 + hh*8 + (lane>>2), keys (lane&3) + 4*jj (the 4
     * rows one load instruction reads fall in different banks), columns
     * [f0, f1) in float4 */
    const int sb = warp % HB, ks = warp / HB, kg = lane & 3, hl = lane >> 2;
    const int fch = (row4 + KS - 1) / KS, f0 = ks * fch, f1 = min(row4, f0 + fch);
    const float *qa = Qs + (sb * 16 + hl) * kst, *qb = qa + 8 * kst;
    const float *kb = Ks + kg * kst;

    float4 pre[CORE_NLD];
    core_fetch(pre, pool, pt, P, row, row4, k_begin, k_end);
    for (int k0 = k_begin; k0 < k_end; k0 += CORE_BK) {
        __syncthreads(); /* readers of the previous tile are done (and Qs is in) */
        {
            /* as core_fetch walks them (recomputed: registers are short) */
            const int st_q = CORE_NT / row4, st_r = CORE_NT - st_q * row4;
            int kk = tid / row4, f = tid - kk * row4;
#pragma unroll
            for (int i = 0; i < CORE_NLD; i++) {
                if (kk < CORE_BK) *reinterpret_cast<float4 *>(Ks + kk * kst + 4 * f) = pre[i];
                kk += st_q;
                f += st_r;
                if (f >= row4) {
                    f -= row4;
                    kk++;
                }
            }
        }
        __syncthreads();
        if (k0 + CORE_BK < k_end) core_fetch(pre, pool, pt, P, row, row4, k0 + CORE_BK, k_end);

        /* S phase */
        {
            float s[2][4];
#pragma unroll
            for (int hh = 0; hh < 2; hh++)
#pragma unroll
                for (int jj = 0; jj < 4; jj++) s[hh][jj] = 0.0f;
#pragma unroll 1
            for (int f = f0; f < f1; f++) {
                const float4 a0 = *reinterpret_cast<const float4 *>(qa + 4 * f);
                const float4 a1 = *reinterpret_cast<const float4 *>(qb + 4 * f);
#pragma unroll
                for (int jj = 0; jj < 4; jj++) {
                    const float4 k = *reinterpret_cast<const float4 *>(kb + jj * 4 * kst + 4 * f);
                    s[0][jj] = fmaf(a0.x, k.x, fmaf(a0.y, k.y, fmaf(a0.z, k.z, fmaf(a0.w, k.w, s[0][jj]))));
                    s[1][jj] = fmaf(a1.x, k.x, fmaf(a1.y, k.y, fmaf(a1.z, k.z, fmaf(a1.w, k.w, s[1][jj]))));
                }
            }
#pragma unroll
            for (int hh = 0; hh < 2; hh++)
#pragma unroll
                for (int jj = 0; jj < 4; jj++)
                    Sp[(ks * HT + sb * 16 + hh * 8 + hl) * CORE_BK + kg + 4 * jj] = s[hh][jj];
        }
        __syncthreads();
        /* online softmax, 16 lanes per row */
#pragma unroll
        for (int i = 0; i < RR; i++) {
            const int r = sr + 16 * i, kj = k0 + sj;
            float sc = -INFINITY;
            if (kj < lim[i]) {
                float d = 0.0f;
#pragma unroll
                for (int z = 0; z < KS; z++) d += Sp[(z * HT + r) * CORE_BK + sj];
                sc = d * scale;
            }
            float mx = sc;
#pragma unroll
            for (int o = 8; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            const float mn = fmaxf(m_r[i], mx);
            const float p = sc == -INFINITY ? 0.0f : expf(sc - mn);
            const float alpha = m_r[i] == -INFINITY ? 0.0f : expf(m_r[i] - mn);
            float ps = p;
#pragma unroll
            for (int o = 8; o > 0; o >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o);
            l_r[i] = l_r[i] * alpha + ps;
            m_r[i] = mn;
            Ps[sj * HT + r] = p;
            if (sj == 0) As[r] = alpha;
        }
        __syncthreads();
        /* O phase: O = O * alpha + P V (V = the first L columns of the keys) */
        {
            const float4 al0 = *reinterpret_cast<const float4 *>(As + og * 8);
            const float4 al1 = *reinterpret_cast<const float4 *>(As + og * 8 + 4);
            const float al[8] = {al0.x, al0.y, al0.z, al0.w, al1.x, al1.y, al1.z, al1.w};
#pragma unroll
            for (int hh = 0; hh < 8; hh++)
#pragma unroll
                for (int c = 0; c < CI; c++) {
                    acc[hh][c].x *= al[hh];
                    acc[hh][c].y *= al[hh];
                    acc[hh][c].z *= al[hh];
                    acc[hh][c].w *= al[hh];
                }
#pragma unroll 1
            for (int j = 0; j < CORE_BK; j++) {
                const float4 p0 = *reinterpret_cast<const float4 *>(Ps + j * HT + og * 8);
                const float4 p1 = *reinterpret_cast<const float4 *>(Ps + j * HT + og * 8 + 4);
                const float p[8] = {p0.x, p0.y, p0.z, p0.w, p1.x, p1.y, p1.z, p1.w};
#pragma unroll
                for (int c = 0; c < CI; c++) {
                    const int f = ocol + 32 * c;
                    if (f < L4) {
                        const float4 v = *reinterpret_cast<const float4 *>(Ks + j * kst + 4 * f);
#pragma unroll
                        for (int hh = 0; hh < 8; hh++) {
                            acc[hh][c].x = fmaf(p[hh], v.x, acc[hh][c].x);
                            acc[hh][c].y = fmaf(p[hh], v.y, acc[hh][c].y);
                            acc[hh][c].z = fmaf(p[hh], v.z, acc[hh][c].z);
                            acc[hh][c].w = fmaf(p[hh], v.w, acc[hh][c].w);
                        }
                    }
                }
            }
        }
    }
    /* the rows' final max and sum to every thread */
#pragma unroll
    for (int i = 0; i < RR; i++)
        if (sj == 0) {
            Ms[sr + 16 * i] = m_r[i];
            Ls[sr + 16 * i] = l_r[i];
        }
    __syncthreads();
    if (n_split == 1) {
#pragma unroll
        for (int hh = 0; hh < 8; hh++) {
            const int r = og * 8 + hh;
            if (r >= nrows) continue;
            const float inv = 1.0f / Ls[r]; /* > 0: key 0 is in every row's range */
            float4 *o = reinterpret_cast<float4 *>(out + ((int64_t)row0 + r) * L);
#pragma unroll
            for (int c = 0; c < CI; c++) {
                const int f = ocol + 32 * c;
                if (f < L4)
                    o[f] = make_float4(acc[hh][c].x * inv, acc[hh][c].y * inv, acc[hh][c].z * inv,
                                       acc[hh][c].w * inv);
            }
        }
    } else {
#pragma unroll
        for (int hh = 0; hh < 8; hh++) {
            const int r = og * 8 + hh;
            if (r >= nrows) continue;
            float4 *o = reinterpret_cast<float4 *>(part_o + (pidx * HT + r) * L);
#pragma unroll
            for (int c = 0; c < CI; c++) {
                const int f = ocol + 32 * c;
                if (f < L4) o[f] = acc[hh][c];
            }
        }
        if (tid < HT) {
            part_ml[(pidx * HT + tid) * 2] = Ms[tid];
            part_ml[(pidx * HT + tid) * 2 + 1] = Ls[tid];
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Attention core on tensor cores: BF16 pools at DeepSeek's latent widths   */
/* ------------------------------------------------------------------------ */
/* The tiled kernel's work and outputs (same tiles, split-KV chunks, partial
 * layout and combine), for a BF16 pool with L = 512, rope = 64 (V2/V3), on
 * mma.sync m16n8k16 (BF16 inputs, fp32 accumulation; sm_80 and later):
 *   S phase  S[HT, BK] = Q K^T with Q the tile's absorbed queries rounded to
 *            BF16 in shared memory and K the key tile as stored; 8 warps, each
 *            one 16 x 8 block of S over a slice of the 576 columns (HT 32: the
 *            8 blocks, all columns; HT 16: 4 blocks, two halves, summed in the
 *            softmax).
 *   softmax  256 / HT threads per row, online max / sum in fp32 as the fp32
 *            kernel, causal limit per row; p rounded to BF16 into shared
 *            memory for the next product (the sum l keeps the fp32 p's).
 *   O phase  O[HT, 512] = O * alpha + P V, V = the first 512 columns of the
 *            same key tile; each warp holds 16 rows x (512 / (8 / (HT / 16)))
 *            columns of O in registers (64 floats per thread at HT 32).
 * Key tiles of TC_BK rows go global -> shared with cp.async, double
 * buffered (the next tile in flight while this one is computed); keys past
 * the chunk are zero-filled (never read from the page table). Shared rows
 * are padded by 8 elements (stride 584: the fragment loads of one
 * instruction fall in distinct banks). Precision: Q and P are BF16 operands
 * (relative error about 2^-9 each), sums fp32 — the op test's BF16 bound
 * (1e-2) against the double reference on the same BF16 rows. */
#define TC_L 512
#define TC_ROW 576
#define TC_BK 32                 /* keys per shared-memory tile                  */
#define TC_KST (TC_ROW + 8)      /* shared row stride, elements                 */
#define TC_PST (TC_BK + 8)       /* shared stride of P, elements                */
#define TC_CHUNKS (TC_ROW / 8)   /* 16-byte chunks per key row                  */

static size_t tc_smem_bytes(int HT)
{
    const size_t wpf = 8 / ((size_t)(HT / 16) * (TC_BK / 8)); /* warps per S block */
    return 2 * ((size_t)HT * TC_KST + 2 * (size_t)TC_BK * TC_KST + (size_t)HT * TC_PST) +
           4 * (wpf * (size_t)HT * TC_BK + 3 * (size_t)HT);
}

/* 16 bytes global -> shared, asynchronous; zeros when !valid (nothing read). */
/* (cp.async is sm_80+, as the tensor-core core that uses it; a build for
 * older architectures compiles these to a trap, never launched there) */
__device__ __forceinline__ void tc_cp16(void *smem, const void *gmem, bool valid)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned sa = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(sa), "l"(gmem),
                 "r"(valid ? 16 : 0)
                 : "memory");
#else
    (void)smem, (void)gmem, (void)valid;
    __trap();
#endif
}
__device__ __forceinline__ void tc_cp_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void tc_cp_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    /* "memory": no shared-memory access moves across the wait, even where
     * no __syncthreads follows it */
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

/* Key rows [k0, k0 + TC_BK) into Ks (rows past k_end: zeros). */
__device__ __forceinline__ void tc_fetch(uint16_t *Ks, const uint16_t *__restrict__ pool,
                                         const int *__restrict__ pt, int P, int k0, int k_end)
{
    for (int i = threadIdx.x; i < TC_BK * TC_CHUNKS; i += CORE_NT) {
        const int kk = i / TC_CHUNKS, ch = i - kk * TC_CHUNKS, kj = k0 + kk;
        const bool valid = kj < k_end;
        const uint16_t *src = pool;
        if (valid) src = pool + ((int64_t)pt[kj / P] * P + kj % P) * TC_ROW + ch * 8;
        tc_cp16(Ks + kk * TC_KST + ch * 8, src, valid);
    }
}

__device__ __forceinline__ uint32_t tc_ld2(const uint16_t *p) /* 2 adjacent elements */
{
    return *reinterpret_cast<const uint32_t *>(p);
}
__device__ __forceinline__ uint32_t tc_pack(uint16_t lo, uint16_t hi)
{
    return (uint32_t)lo | ((uint32_t)hi << 16);
}

template <int HT>
__global__ void __launch_bounds__(CORE_NT, 1)
k_mla_core_tc(const float *__restrict__ q, const uint16_t *__restrict__ pool, const int *__restrict__ pages,
              const int *__restrict__ tok_poff, const int *__restrict__ tok_pos,
              const int *__restrict__ tiles, int H, int P, float scale, int n_split,
              float *__restrict__ out, float *__restrict__ part_o, float *__restrict__ part_ml)
{
    static_assert(HT == 16 || HT == 32, "tiles of 16 or 32 rows");
    static_assert(CORE_NT == 256, "8 warps");
    constexpr int MB = HT / 16;            /* 16-row blocks                     */
    constexpr int SF = MB * (TC_BK / 8);   /* S blocks of 16 x 8                */
    constexpr int WPF = 8 / SF;            /* warps per S block (column slices)  */
    constexpr int KSTEPS = TC_ROW / 16;    /* 36                                */
    constexpr int TPR = CORE_NT / HT;      /* softmax threads per row            */
    constexpr int KPT = TC_BK / TPR;       /* softmax keys per thread            */
    constexpr int WPM = 8 / MB;            /* O phase: warps per row block       */
    constexpr int NPW = (TC_L / 8) / WPM;  /* O phase: 8-column blocks per warp  */
    static_assert(WPF * SF == 8 && KSTEPS % WPF == 0 && KPT >= 1 && NPW * WPM * 8 == TC_L, "shape");
    extern __shared__ float4 smem4[];
    uint16_t *Qs = reinterpret_cast<uint16_t *>(smem4);      /* (HT, KST) bf16         */
    uint16_t *Kb = Qs + HT * TC_KST;                          /* 2 x (BK, KST) bf16     */
    uint16_t *Ps = Kb + 2 * TC_BK * TC_KST;                   /* (HT, PST) bf16         */
    float *Sp = reinterpret_cast<float *>(Ps + HT * TC_PST);  /* (WPF, HT, BK) partials */
    float *As = Sp + WPF * HT * TC_BK;                        /* (HT) rescale           */
    float *Ms = As + HT, *Ls = Ms + HT;                       /* (HT) final max / sum   */

    const int tile = blockIdx.x, split = blockIdx.y;
    const int *tp = tiles + (int64_t)tile * DPEP_MLA_CU_TILE_INTS;
    const int row0 = tp[0], nrows = tp[1], kv_end = tp[2];
    const int chunk = ((kv_end + n_split - 1) / n_split + TC_BK - 1) / TC_BK * TC_BK;
    const int k_begin = split * chunk;
    const int k_end = min(kv_end, k_begin + chunk);
    const int64_t pidx = (int64_t)tile * n_split + split;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t4 = lane & 3;
    if (k_begin >= k_end) {
        if (tid < HT) {
            part_ml[(pidx * HT + tid) * 2] = -INFINITY;
            part_ml[(pidx * HT + tid) * 2 + 1] = 0.0f;
        }
        return;
    }
    const int *pt = pages + tok_poff[row0 / H];
    tc_fetch(Kb, pool, pt, P, k_begin, k_end);
    tc_cp_commit();
    /* queries of the tile rounded to BF16 (zeros past nrows) */
    for (int i = tid; i < HT * (TC_ROW / 2); i += CORE_NT) {
        const int r = i / (TC_ROW / 2), c2 = i - r * (TC_ROW / 2);
        float2 v = make_float2(0.f, 0.f);
        if (r < nrows) v = __ldg(reinterpret_cast<const float2 *>(q + ((int64_t)row0 + r) * TC_ROW) + c2);
        *reinterpret_cast<uint32_t *>(Qs + r * TC_KST + 2 * c2) = dpep_pack16x2(v.x, v.y);
    }
    /* softmax: this thread's row and keys, the row's causal limit */
    const int sr = tid / TPR, ss = tid % TPR;
    const int lim = sr < nrows ? min(tok_pos[(row0 + sr) / H] + 1, k_end) : 0;
    float m_r = -INFINITY, l_r = 0.0f;
    /* S phase: this warp's block and column slice */
    const int sf = warp / WPF, sl = warp % WPF, smb = sf / (TC_BK / 8), snb = sf % (TC_BK / 8);
    const int ks0 = sl * (KSTEPS / WPF), ks1 = ks0 + KSTEPS / WPF;
    /* O phase: this warp's row block and columns */
    const int omb = warp / WPM, on0 = (warp % WPM) * NPW;
    float acc[NPW][4];
#pragma unroll
    for (int j = 0; j < NPW; j++) acc[j][0] = acc[j][1] = acc[j][2] = acc[j][3] = 0.0f;

    int buf = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += TC_BK, buf ^= 1) {
        if (k0 + TC_BK < k_end) {
            tc_fetch(Kb + (buf ^ 1) * TC_BK * TC_KST, pool, pt, P, k0 + TC_BK, k_end);
            tc_cp_commit();
            tc_cp_wait<1>(); /* this tile's group is done, the next may fly */
        } else {
            tc_cp_wait<0>();
        }
        __syncthreads(); /* the key tile (and Qs) visible to every warp */
        const uint16_t *Ks = Kb + buf * TC_BK * TC_KST;
        /* S phase */
        {
            float c[4] = {0.f, 0.f, 0.f, 0.f};
            const uint16_t *qa = Qs + (smb * 16 + g) * TC_KST + 2 * t4, *qb = qa + 8 * TC_KST;
            const uint16_t *kb = Ks + (snb * 8 + g) * TC_KST + 2 * t4;
#pragma unroll 4
            for (int ks = ks0; ks < ks1; ks++) {
                const int o = ks * 16;
                dpep_mma16816(c, tc_ld2(qa + o), tc_ld2(qb + o), tc_ld2(qa + o + 8), tc_ld2(qb + o + 8),
                       tc_ld2(kb + o), tc_ld2(kb + o + 8));
            }
            float *sp = Sp + (sl * HT + smb * 16 + g) * TC_BK + snb * 8 + 2 * t4;
            sp[0] = c[0];
            sp[1] = c[1];
            sp[8 * TC_BK] = c[2];
            sp[8 * TC_BK + 1] = c[3];
        }
        __syncthreads();
        /* online softmax: TPR threads per row, KPT keys each */
        {
            float sc[KPT], mx = -INFINITY;
#pragma unroll
            for (int i = 0; i < KPT; i++) {
                const int j = ss * KPT + i;
                sc[i] = -INFINITY;
                if (k0 + j < lim) {
                    float d = 0.0f;
#pragma unroll
                    for (int z = 0; z < WPF; z++) d += Sp[(z * HT + sr) * TC_BK + j];
                    sc[i] = d * scale;
                }
                mx = fmaxf(mx, sc[i]);
            }
#pragma unroll
            for (int o = TPR / 2; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
            const float mn = fmaxf(m_r, mx);
            const float alpha = m_r == -INFINITY ? 0.0f : expf(m_r - mn);
            float ps = 0.0f;
#pragma unroll
            for (int i = 0; i < KPT; i++) {
                const float p = sc[i] == -INFINITY ? 0.0f : expf(sc[i] - mn);
                ps += p;
                Ps[sr * TC_PST + ss * KPT + i] = __bfloat16_as_ushort(__float2bfloat16_rn(p));
            }
#pragma unroll
            for (int o = TPR / 2; o > 0; o >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o);
            l_r = l_r * alpha + ps;
            m_r = mn;
            if (ss == 0) As[sr] = alpha;
        }
        __syncthreads();
        /* O phase: O = O * alpha + P V */
        {
            const float al0 = As[omb * 16 + g], al1 = As[omb * 16 + g + 8];
#pragma unroll
            for (int j = 0; j < NPW; j++) {
                acc[j][0] *= al0;
                acc[j][1] *= al0;
                acc[j][2] *= al1;
                acc[j][3] *= al1;
            }
            const uint16_t *pa = Ps + (omb * 16 + g) * TC_PST + 2 * t4, *pb = pa + 8 * TC_PST;
#pragma unroll
            for (int kk = 0; kk < TC_BK / 16; kk++) {
                const uint32_t a0 = tc_ld2(pa + kk * 16), a1 = tc_ld2(pb + kk * 16),
                               a2 = tc_ld2(pa + kk * 16 + 8), a3 = tc_ld2(pb + kk * 16 + 8);
                const uint16_t *v0 = Ks + (kk * 16 + 2 * t4) * TC_KST + g; /* V[k][n]: key k, column n */
#pragma unroll
                for (int j = 0; j < NPW; j++) {
                    const uint16_t *v = v0 + (on0 + j) * 8;
                    dpep_mma16816(acc[j], a0, a1, a2, a3, tc_pack(v[0], v[TC_KST]),
                           tc_pack(v[8 * TC_KST], v[9 * TC_KST]));
                }
            }
        }
        __syncthreads(); /* the buffer is rewritten two tiles on, Ps / Sp next tile */
    }
    if (ss == 0) {
        Ms[sr] = m_r;
        Ls[sr] = l_r;
    }
    __syncthreads();
    const int r0 = omb * 16 + g, r1 = r0 + 8;
    if (n_split == 1) {
        const float i0 = r0 < nrows ? 1.0f / Ls[r0] : 0.0f, i1 = r1 < nrows ? 1.0f / Ls[r1] : 0.0f;
#pragma unroll
        for (int j = 0; j < NPW; j++) {
            const int col = (on0 + j) * 8 + 2 * t4;
            if (r0 < nrows)
                *reinterpret_cast<float2 *>(out + ((int64_t)row0 + r0) * TC_L + col) =
                    make_float2(acc[j][0] * i0, acc[j][1] * i0);
            if (r1 < nrows)
                *reinterpret_cast<float2 *>(out + ((int64_t)row0 + r1) * TC_L + col) =
                    make_float2(acc[j][2] * i1, acc[j][3] * i1);
        }
    } else {
#pragma unroll
        for (int j = 0; j < NPW; j++) {
            const int col = (on0 + j) * 8 + 2 * t4;
            if (r0 < nrows)
                *reinterpret_cast<float2 *>(part_o + (pidx * HT + r0) * TC_L + col) =
                    make_float2(acc[j][0], acc[j][1]);
            if (r1 < nrows)
                *reinterpret_cast<float2 *>(part_o + (pidx * HT + r1) * TC_L + col) =
                    make_float2(acc[j][2], acc[j][3]);
        }
        if (tid < HT) {
            part_ml[(pidx * HT + tid) * 2] = Ms[tid];
            part_ml[(pidx * HT + tid) * 2 + 1] = Ls[tid];
        }
    }
}

/* Split-KV combine: one block per tile; per row, the chunks' partials are
 * weighted by exp(m_s - M) (M the rows' max over chunks; a chunk with sum 0
 * saw no key of the row and is skipped), o~ = sum_s w_s o_s / sum_s w_s l_s. */
__global__ void __launch_bounds__(CORE_NT)
k_mla_combine(const int *__restrict__ tiles, int HT, int L, int n_split,
              const float *__restrict__ part_o, const float *__restrict__ part_ml,
              float *__restrict__ out)
{
    __shared__ float wsh[32 * DPEP_MLA_CU_MAX_SPLIT];
    __shared__ float inv_l[32];
    const int tile = blockIdx.x;
    const int *tp = tiles + (int64_t)tile * DPEP_MLA_CU_TILE_INTS;
    const int row0 = tp[0], nrows = tp[1], L4 = L >> 2;
    const int64_t base = (int64_t)tile * n_split;
    for (int r = threadIdx.x; r < nrows; r += blockDim.x) {
        float M = -INFINITY;
        for (int s = 0; s < n_split; s++) {
            const float *ml = part_ml + ((base + s) * HT + r) * 2;
            if (ml[1] > 0.0f) M = fmaxf(M, ml[0]);
        }
        float l = 0.0f;
        for (int s = 0; s < n_split; s++) {
            const float *ml = part_ml + ((base + s) * HT + r) * 2;
            const float w = ml[1] > 0.0f ? expf(ml[0] - M) : 0.0f;
            wsh[r * DPEP_MLA_CU_MAX_SPLIT + s] = w;
            l += w * ml[1];
        }
        inv_l[r] = 1.0f / l;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nrows * L4; i += blockDim.x) {
        const int r = i / L4, f = i - r * L4;
        float4 o = f4_zero();
        for (int s = 0; s < n_split; s++) {
            const float w = wsh[r * DPEP_MLA_CU_MAX_SPLIT + s];
            if (w == 0.0f) continue;
            const float4 v = __ldg(reinterpret_cast<const float4 *>(part_o + ((base + s) * HT + r) * L) + f);
            o.x = fmaf(w, v.x, o.x);
            o.y = fmaf(w, v.y, o.y);
            o.z = fmaf(w, v.z, o.z);
            o.w = fmaf(w, v.w, o.w);
        }
        const float il = inv_l[r];
        reinterpret_cast<float4 *>(out + ((int64_t)row0 + r) * L)[f] =
            make_float4(o.x * il, o.y * il, o.z * il, o.w * il);
    }
}

/* ------------------------------------------------------------------------ */
/* The core's host side                                                     */
/* ------------------------------------------------------------------------ */

extern "C" int dpep_mla_cu_heads_per_tile(int H) { return H <= 16 ? 16 : 32; }

extern "C" int dpep_mla_cu_fast_ok(int L, int rope)
{
    return L > 0 && rope >= 0 && L % 4 == 0 && rope % 4 == 0 && L <= 4 * CORE_MAX_L4 &&
           L + rope <= 4 * CORE_MAX_ROW4;
}

extern "C" int dpep_mla_cu_plan(int H, int tok0, int n_new, int64_t pos0, int *tiles)
{
    const int HT = dpep_mla_cu_heads_per_tile(H);
    const int rows = n_new * H;
    int n = 0;
    for (int r0 = 0; r0 < rows; r0 += HT, n++) {
        const int nr = rows - r0 < HT ? rows - r0 : HT;
        int *t = tiles + (size_t)n * DPEP_MLA_CU_TILE_INTS;
        t[0] = tok0 * H + r0;
        t[1] = nr;
        t[2] = (int)(pos0 + (r0 + nr - 1) / H + 1); /* last row's token: its keys */
        t[3] = 0;
    }
    return n;
}

/* Split-KV: the count s of key chunks per tile minimizes an estimate of the
 * time, waves(s) * (keys per chunk(s) + CORE_SPLIT_OVERHEAD), where
 * waves = ceil(n_tiles * s / (SMs * blocks per SM)) and the overhead (in key
 * rows' worth of memory traffic) stands for loading the queries and writing
 * and combining a partial (HT x L floats, about 32 keys' rows). Bounded by
 * DPEP_MLA_CU_MAX_SPLIT, by chunks of at least CORE_MIN_CHUNK keys, and by
 * the partial buffers (n_tiles * s <= part_cap). Ties go to fewer chunks.
 * Examples on 132 SMs, 128 heads (4 tiles of 32 per token, 1 block per
 * SM): 1 x 4096 -> 32 chunks of 128 keys; 32 x 4096 -> 1 (128 blocks
 * already fill the SMs); 128 x 2048 -> 1. 16 heads (1 tile of 16 per
 * token, 2 blocks per SM): 1 x 4096 -> 64; 32 x 4096 -> 8; 64 x 16384 -> 4. */
#define CORE_MIN_CHUNK 64
#define CORE_SPLIT_OVERHEAD 32
extern "C" int dpep_mla_cu_splits(int H, int n_tiles, int64_t max_kv, int n_sm, int64_t part_cap)
{
    if (n_tiles <= 0 || max_kv <= CORE_MIN_CHUNK || n_sm <= 0) return 1;
    const int64_t slots = (int64_t)n_sm * (dpep_mla_cu_heads_per_tile(H) == 16 ? 2 : 1);
    int best = 1;
    double best_cost = 0;
    for (int s = 1; s <= DPEP_MLA_CU_MAX_SPLIT; s++) {
        if (s > 1 && ((int64_t)n_tiles * s > part_cap || (max_kv + s - 1) / s < CORE_MIN_CHUNK)) break;
        const int64_t chunk = ((max_kv + s - 1) / s + CORE_BK - 1) / CORE_BK * CORE_BK;
        const int64_t waves = ((int64_t)n_tiles * s + slots - 1) / slots;
        const double cost = (double)waves * (double)(chunk + CORE_SPLIT_OVERHEAD);
        if (s == 1 || cost < best_cost) {
            best = s;
            best_cost = cost;
        }
    }
    return best;
}

extern "C" int dpep_mla_cu_sm_count(int dev)
{
    const dpep_cuda_facts *f = dpep_cuda_device_facts(dev);
    return f ? f->sms : 0;
}

/* The tensor-core kernel's launch for tiles of HT rows. */
template <int HT>
static dpep_status core_launch_tc(const dpep_mla_core_args *c, dim3 grid, size_t shm, bool raise,
                                  cudaStream_t st)
{
    if (raise)
        DPEP_CHECK_CUDA(cudaFuncSetAttribute(k_mla_core_tc<HT>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shm));
    k_mla_core_tc<HT><<<grid, CORE_NT, shm, st>>>(c->q, (const uint16_t *)c->pool, c->pages, c->tok_poff,
                                                  c->tok_pos, c->tiles, c->H, c->page_size, c->scale,
                                                  c->n_split, c->out, c->part_o, c->part_ml);
    DPEP_CHECK_CUDA(cudaGetLastError());
    return DPEP_OK;
}

extern "C" int dpep_mla_cu_tc_ok(int L, int rope, dpep_wtype kv_type)
{
    return kv_type == DPEP_WT_BF16 && L == TC_L && L + rope == TC_ROW;
}

/* One tiled-core launch for tiles of HT rows over a pool of KT (the
 * shared-memory limit raised first when `raise`). */
template <int HT, typename KT>
static dpep_status core_launch(const dpep_mla_core_args *c, const KT *pool, dim3 grid, size_t shm,
                               bool raise, cudaStream_t st)
{
    if (raise)
        DPEP_CHECK_CUDA(cudaFuncSetAttribute(k_mla_core<HT, KT>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)shm));
    k_mla_core<HT, KT><<<grid, CORE_NT, shm, st>>>(c->q, pool, c->pages, c->tok_poff, c->tok_pos,
                                                   c->tiles, c->H, c->L, c->L + c->rope,
                                                   c->page_size, c->scale, c->n_split, c->out,
                                                   c->part_o, c->part_ml);
    DPEP_CHECK_CUDA(cudaGetLastError());
    return DPEP_OK;
}

extern "C" dpep_status dpep_mla_cu_core(const dpep_mla_core_args *c)
{
    const int T = c->n_tokens, H = c->H, L = c->L, row = c->L + c->rope;
    cudaStream_t st = (cudaStream_t)c->stream;
    if (T < 0 || H < 1 || L < 1 || c->rope < 0 || c->page_size < 1) {
        DPEP_ERROR("attn cuda core: bad shape (T %d, H %d, L %d, rope %d, page %d)", T, H, L,
                   c->rope, c->page_size);
        return DPEP_ERR_INVALID;
    }
    if (c->kv_type != DPEP_WT_F32 && c->kv_type != DPEP_WT_BF16) {
        DPEP_ERROR("attn cuda core: KV pool of %s (f32 or bf16)", dpep_wtype_name(c->kv_type));
        return DPEP_ERR_INVALID;
    }
    const bool bf16 = c->kv_type == DPEP_WT_BF16;
    if (T == 0) return DPEP_OK; /* no zero-sized grid */
    int dev = 0;
    DPEP_CHECK_CUDA(cudaGetDevice(&dev));
    const dpep_cuda_facts *df = dpep_cuda_device_facts(dev);
    const int HT = dpep_mla_cu_heads_per_tile(H);
    /* kernels: 0 fp32 pool, 1 BF16 pool widened into the fp32 kernel, 2 BF16
     * pool on tensor cores (DeepSeek's widths, sm_80+, unless tc_off); a
     * device whose blocks cannot hold a kernel's shared memory takes the next
     * one down, and the reference kernel last (logged once per device) */
    int kind = !bf16 ? 0
               : !c->tc_off && !dpep_cuda_tc_off() && dpep_mla_cu_tc_ok(L, c->rope, c->kv_type) && df &&
                         df->major >= 8
                   ? 2
                   : 1;
    size_t shm = kind == 2 ? tc_smem_bytes(HT) : core_smem_bytes(HT, row);
    if (kind == 2 && df && shm > df->smem_optin) {
        kind = 1;
        shm = core_smem_bytes(HT, row);
    }
    bool simple = c->simple || !dpep_mla_cu_fast_ok(L, c->rope);
    if (!simple && df && shm > df->smem_optin) {
        static int told[DPEP_CUDA_MAX_DEVICES];
        if (dev >= 0 && dev < DPEP_CUDA_MAX_DEVICES && !told[dev]) {
            told[dev] = 1;
            DPEP_WARN("attn cuda core: cuda:%d lets a block have %zu B of shared memory, the tiled "
                      "kernel needs %zu B at %d rows per tile: the reference kernel runs instead "
                      "(slower)", dev, df->smem_optin, shm, HT);
        }
        simple = true;
    }
    if (simple) {
        const size_t shm = sizeof(float) * ((size_t)row + (size_t)L + BLOCK);
        if (shm > 48 * 1024) {
            DPEP_ERROR("attn cuda core: %zu B of shared memory for the reference kernel (L %d, "
                       "rope %d) beyond 48 KiB",
                       shm, L, c->rope);
            return DPEP_ERR_UNSUPPORTED;
        }
        if (H > 65535) {
            DPEP_ERROR("attn cuda core: %d heads beyond the grid's 65535", H);
            return DPEP_ERR_UNSUPPORTED;
        }
        dim3 grid((unsigned)T, (unsigned)H);
        if (bf16)
            k_attn_simple<<<grid, BLOCK, shm, st>>>(c->q, (const uint16_t *)c->pool, c->tok_poff,
                                                    c->tok_pos, c->pages, c->page_size, H, L, row,
                                                    c->scale, c->out);
        else
            k_attn_simple<<<grid, BLOCK, shm, st>>>(c->q, (const float *)c->pool, c->tok_poff,
                                                    c->tok_pos, c->pages, c->page_size, H, L, row,
                                                    c->scale, c->out);
        DPEP_CHECK_CUDA(cudaGetLastError());
        return DPEP_OK;
    }
    if (c->n_tiles < 1 || c->n_split < 1 || c->n_split > DPEP_MLA_CU_MAX_SPLIT ||
        (c->n_split > 1 && (!c->part_o || !c->part_ml || (int64_t)c->n_tiles * c->n_split > c->part_cap))) {
        DPEP_ERROR("attn cuda core: %d tiles x %d key chunks (at most %d chunks, %lld partial "
                   "tiles)",
                   c->n_tiles, c->n_split, DPEP_MLA_CU_MAX_SPLIT, (long long)c->part_cap);
        return DPEP_ERR_INVALID;
    }
    dim3 grid((unsigned)c->n_tiles, (unsigned)c->n_split);
    /* the kernel's shared-memory limit, raised once per device, kernel and
     * size (not again in the steps a CUDA graph captures) */
    static size_t shm_set[2][3][DPEP_CUDA_MAX_DEVICES];
    size_t *done = dev >= 0 && dev < DPEP_CUDA_MAX_DEVICES ? &shm_set[HT == 16 ? 0 : 1][kind][dev] : NULL;
    const bool raise = !done || *done < shm;
    if (kind == 2 && HT == 16)
        DPEP_TRY(core_launch_tc<16>(c, grid, shm, raise, st));
    else if (kind == 2)
        DPEP_TRY(core_launch_tc<32>(c, grid, shm, raise, st));
    else if (HT == 16 && bf16)
        DPEP_TRY(core_launch<16>(c, (const uint16_t *)c->pool, grid, shm, raise, st));
    else if (HT == 16)
        DPEP_TRY(core_launch<16>(c, (const float *)c->pool, grid, shm, raise, st));
    else if (bf16)
        DPEP_TRY(core_launch<32>(c, (const uint16_t *)c->pool, grid, shm, raise, st));
    else
        DPEP_TRY(core_launch<32>(c, (const float *)c->pool, grid, shm, raise, st));
    if (raise && done) *done = shm;
    if (c->n_split > 1) {
        k_mla_combine<<<(unsigned)c->n_tiles, CORE_NT, 0, st>>>(c->tiles, HT, L, c->n_split, c->part_o,
                                                                c->part_ml, c->out);
        DPEP_CHECK_CUDA(cudaGetLastError());
    }
    return DPEP_OK;
}

/* ------------------------------------------------------------------------ */
/* The ops                                                                  */
/* ------------------------------------------------------------------------ */

/* The staged step data (a->host on the host, a->sc.tok on the device), one
 * copy per forward, packed for the step's T tokens and n_tiles tiles:
 *   float inv_freq[rope / 2] | int poff[T] | int pos[T]
 *   | int tiles[n_tiles][DPEP_MLA_CU_TILE_INTS] (room for T x ceil(H / HT))
 *   | int pages[n entries]
 * inv_freq is in the int region's units (4-byte words, rope / 2 of them).
 * Sized for max_tokens tokens, their most tiles and s_len page entries.
 * stage_o_pg: where a step of T tokens puts its page entries: after the most
 * tiles T tokens can make (T x ceil(H / HT)), not after the tiles it made, so that
 * the offset depends on T alone — what a CUDA graph, keyed by T, replays
 * (the tile count depends on how the tokens fall into sequences). */
static size_t stage_o_pg(const dpep_attn *a, int64_t T)
{
    const int HT = dpep_mla_cu_heads_per_tile(a->d.H);
    return (size_t)(a->d.rope / 2) + 2 * (size_t)T +
           DPEP_MLA_CU_TILE_INTS * (size_t)T * (size_t)((a->d.H + HT - 1) / HT);
}
static size_t stage_words(const dpep_attn *a) { return stage_o_pg(a, a->max_tokens) + a->sc.s_len; }
static size_t stage_pages_cap(const dpep_attn *a)
{
    double want = (double)a->max_tokens * (double)a->max_ctx;
    return want > STAGE_PAGES_CAP ? (size_t)(a->max_ctx > STAGE_PAGES_CAP ? a->max_ctx : STAGE_PAGES_CAP)
                                  : (size_t)want;
}

static dpep_status cuda_usable(const dpep_device *dev)
{
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess || dev->ordinal < 0 || dev->ordinal >= n) {
        DPEP_ERROR("attn: device cuda:%d: no usable CUDA device (%s; %d visible)", dev->ordinal,
                   rc != cudaSuccess ? cudaGetErrorString(rc) : "ordinal out of range", n);
        (void)cudaGetLastError(); /* so that later calls do not report this one */
        return DPEP_ERR_UNSUPPORTED;
    }
    return DPEP_OK;
}

static dpep_status cuda_init(dpep_attn *a)
{
    if (a->tp && dpep_comm_size(a->tp) > 1 && dpep_comm_backend_of(a->tp) != DPEP_COMM_NCCL) {
        DPEP_ERROR("attn cuda: attention-TP over %d ranks needs an NCCL comm (the MPI comm "
                   "reduces host buffers; the CUDA forward's output is device memory)",
                   dpep_comm_size(a->tp));
        return DPEP_ERR_UNSUPPORTED;
    }
    a->n_threads = 1;
    a->cu_simple = 0;
    a->cu_force_split = 0;
    a->cu_sms = dpep_mla_cu_sm_count(a->dev.ordinal);
    /* split-KV partials: room for 8 chunks per SM (the heuristic never
     * wants more than about two waves of blocks) */
    a->cu_part_cap = 8 * (int64_t)(a->cu_sms > 0 ? a->cu_sms : 132);
    a->sc.s_len = stage_pages_cap(a);
    a->host = malloc(sizeof(int) * stage_words(a));
    if (!a->host) return DPEP_ERR_NOMEM;
    DPEP_CHECK_CUDA(cudaSetDevice(a->dev.ordinal));
    /* the rounded activations of BF16/F16 products (runtime/linear): the
     * widest row of a step's products times its tokens */
    const dpep_attn_dims *d = &a->d;
    int64_t row = d->hidden;
    const int64_t cand[] = {d->q_lora, (int64_t)d->H * d->nope, (int64_t)d->H * d->kv_lora,
                            (int64_t)d->H * d->v, (int64_t)d->H * d->qk};
    for (int i = 0; i < 5; i++) row = cand[i] > row ? cand[i] : row;
    return dpep_linear_cuda_reserve(row * (int64_t)a->max_tokens);
}

static void cuda_carve_scratch(dpep_attn *a, dpep_arena *ar)
{
    const dpep_attn_dims *d = &a->d;
    const size_t T = (size_t)a->max_tokens, H = (size_t)d->H;
    dpep_attn_scratch *s = &a->sc;
    const size_t s_len = s->s_len; /* set by cuda_init, kept across both passes */
    memset(s, 0, sizeof *s);
    s->s_len = s_len;
    s->qa = DPEP_ARENA_TAKE(ar, float, T * (size_t)(d->q_lora > 0 ? d->q_lora : 1)); /* (T, q_lora) */
    s->q = DPEP_ARENA_TAKE(ar, float, T * H * (size_t)d->qk);     /* (T, H, nope + rope) */
    s->kva = DPEP_ARENA_TAKE(ar, float, T * (size_t)d->row);      /* (T, kv_lora + rope) */
    s->heads = DPEP_ARENA_TAKE(ar, float, T * H * (size_t)d->v);  /* (T, H, v)           */
    s->cosv = DPEP_ARENA_TAKE(ar, float, T * (size_t)(d->rope / 2)); /* (T, rope/2)      */
    s->sinv = DPEP_ARENA_TAKE(ar, float, T * (size_t)(d->rope / 2));
    s->qt = DPEP_ARENA_TAKE(ar, float, T * H * (size_t)d->row);     /* (T, H, kv_lora + rope) q~ */
    s->ot = DPEP_ARENA_TAKE(ar, float, T * H * (size_t)d->kv_lora); /* (T, H, kv_lora)        o~ */
    if (dpep_mla_cu_fast_ok(d->kv_lora, d->rope)) {
        const size_t HT = (size_t)dpep_mla_cu_heads_per_tile(d->H), cap = (size_t)a->cu_part_cap;
        s->op = DPEP_ARENA_TAKE(ar, float, cap * HT * (size_t)d->kv_lora); /* (cap, HT, kv_lora) */
        s->mp = DPEP_ARENA_TAKE(ar, float, cap * HT * 2);                  /* (cap, HT, 2) max, sum */
    }
    s->tok = DPEP_ARENA_TAKE(ar, int, stage_words(a));            /* the staged step     */
}

static bool on_device(const void *p)
{
    if (!p) return true;
    cudaPointerAttributes at;
    if (cudaPointerGetAttributes(&at, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return false;
    }
    return at.type == cudaMemoryTypeDevice || at.type == cudaMemoryTypeManaged;
}

#define LAUNCHED() DPEP_CHECK_CUDA(cudaGetLastError())

/* Plans the step on the host and stages it on the device (one copy):
 *   float inv_freq[rope / 2] | int poff[T] | int pos[T]
 *   | int tiles[n_tiles][DPEP_MLA_CU_TILE_INTS] | the step's page entries,
 * and the split-KV chunk count of its core; the plan goes to a->cu_*. The
 * only synchronous call of a step (a host-to-device cudaMemcpy). */
static dpep_status cuda_plan(dpep_attn *a, dpep_attn_kv *kv, const dpep_attn_seq *seq, int n_seq,
                             int T)
{
    const dpep_attn_dims *d = &a->d;
    dpep_attn_scratch *s = &a->sc;
    const int H = d->H, nhalf = d->rope / 2, P = kv->page_size;
    int n_tiles = 0;
    for (int i = 0; i < n_seq; i++)
        n_tiles += (seq[i].n_new * H + dpep_mla_cu_heads_per_tile(H) - 1) / dpep_mla_cu_heads_per_tile(H);
    const size_t o_poff = (size_t)nhalf, o_pos = o_poff + (size_t)T, o_tiles = o_pos + (size_t)T,
                 o_pg = stage_o_pg(a, T);
    float *h_inv = (float *)a->host;
    int *h_poff = (int *)a->host + o_poff, *h_pos = (int *)a->host + o_pos;
    int *h_tiles = (int *)a->host + o_tiles, *h_pg = (int *)a->host + o_pg;
    memcpy(h_inv, a->inv_freq, sizeof(float) * (size_t)nhalf);
    size_t np = 0;
    int planned = 0;
    int64_t max_kv = 0;
    for (int i = 0, t = 0; i < n_seq; i++) {
        if (seq[i].n_new == 0) continue;
        const int64_t ctx = seq[i].pos0 + seq[i].n_new, npg = (ctx + P - 1) / P;
        if (np + (size_t)npg > s->s_len) {
            DPEP_ERROR("attn cuda: the step needs more than %zu page entries (staging sized at "
                       "create for max_tokens %d x max_ctx %lld)",
                       s->s_len, a->max_tokens, (long long)a->max_ctx);
            return DPEP_ERR_INVALID;
        }
        memcpy(h_pg + np, kv->pages + (int64_t)seq[i].slot * kv->max_pages_seq, sizeof(int) * (size_t)npg);
        planned += dpep_mla_cu_plan(H, t, seq[i].n_new, seq[i].pos0,
                                    h_tiles + (size_t)planned * DPEP_MLA_CU_TILE_INTS);
        max_kv = ctx > max_kv ? ctx : max_kv;
        for (int j = 0; j < seq[i].n_new; j++, t++) {
            h_poff[t] = (int)np;
            h_pos[t] = (int)(seq[i].pos0 + j);
        }
        np += (size_t)npg;
    }
    if (planned != n_tiles) {
        DPEP_ERROR("attn cuda: %d tiles planned, %d counted", planned, n_tiles);
        return DPEP_ERR_INTERNAL;
    }
    const int64_t cap = s->op ? a->cu_part_cap : 0;
    int n_split = a->cu_force_split > 0 ? a->cu_force_split
                                        : dpep_mla_cu_splits(H, n_tiles, max_kv, a->cu_sms, cap);
    if ((int64_t)n_split * n_tiles > cap) n_split = 1; /* forced beyond the partials */
    DPEP_CHECK_CUDA(cudaSetDevice(a->dev.ordinal));
    DPEP_CHECK_CUDA(cudaMemcpy(s->tok, a->host, sizeof(int) * (o_pg + np), cudaMemcpyHostToDevice));
    a->cu_T = T;
    a->cu_nseq = n_seq;
    a->cu_tiles = n_tiles;
    a->cu_split = n_split;
    a->cu_max_kv = max_kv;
    return DPEP_OK;
}

static dpep_status cuda_stage(dpep_attn *a, dpep_attn_kv *kv, const dpep_attn_seq *seq, int n_seq,
                              int T, int *shape)
{
    a->cu_staged = 0;
    if (T > 0) DPEP_TRY(cuda_plan(a, kv, seq, n_seq, T));
    a->cu_staged = 1;
    a->cu_T = T;
    a->cu_nseq = n_seq;
    /* the launch shape: the split count and the tile count (grid.x of the
     * core and the combine), which also depends on how the tokens fall into
     * sequences when HT does not divide H: 7 + 17 bits; beyond, -1 (the
     * caller runs such a step eagerly) */
    if (T == 0) *shape = 0;
    else if (a->cu_tiles < (1 << 17)) *shape = a->cu_split | (a->cu_tiles << 7);
    else *shape = -1;
    return DPEP_OK;
}

static dpep_status cuda_forward(dpep_attn *a, const dpep_layer_w *w, int layer, dpep_attn_kv *kv,
                                const dpep_attn_seq *seq, int n_seq, int T, const float *x,
                                float *out)
{
    const dpep_attn_dims *d = &a->d;
    dpep_attn_scratch *s = &a->sc;
    const int H = d->H, nhalf = d->rope / 2, hid = d->hidden, qw = H * d->qk, P = kv->page_size;
    if (a->cu_staged) {
        /* dpep_attn_stage's plan: launches only (what a CUDA graph captures) */
        if (a->cu_T != T || a->cu_nseq != n_seq) {
            DPEP_ERROR("attn cuda: the step was staged for %d tokens of %d sequences, the forward "
                       "has %d of %d", a->cu_T, a->cu_nseq, T, n_seq);
            return DPEP_ERR_INTERNAL;
        }
    } else {
        /* the products go through runtime/linear's CUDA entry: float32
         * weights in fp32, BF16/F16 as stored (tensor cores, fp32 sums) */
        const void *must[] = {x, out, w->q_a.p, w->q_a_norm, w->q_b.p, w->kv_a.p, w->kv_a_norm, w->kv_b.p, w->o.p};
        const char *names[] = {"x", "out", "q_a", "q_a_norm", "q_b", "kv_a", "kv_a_norm", "kv_b", "o"};
        for (int i = 0; i < 9; i++) {
            if (!on_device(must[i])) {
                DPEP_ERROR("attn cuda: %s is not device memory of cuda:%d (the CUDA forward needs x, "
                           "out and the layer's weights on the GPU: load the weights onto the device "
                           "with dpep_weights_load_on)",
                           names[i], a->dev.ordinal);
                return DPEP_ERR_UNSUPPORTED;
            }
        }
        DPEP_TRY(cuda_plan(a, kv, seq, n_seq, T));
    }
    const int n_tiles = a->cu_tiles;
    const size_t o_poff = (size_t)nhalf, o_pos = o_poff + (size_t)T, o_tiles = o_pos + (size_t)T,
                 o_pg = stage_o_pg(a, T);
    const float *d_inv = (const float *)s->tok;
    const int *d_poff = s->tok + o_poff, *d_pos = s->tok + o_pos, *d_tiles = s->tok + o_tiles,
              *d_pg = s->tok + o_pg;
    double t0 = dpep_clock_s();
    DPEP_CHECK_CUDA(cudaSetDevice(a->dev.ordinal));
    /* projections: q = q_b(RMSNorm(q_a x)) or q_proj x; kva = [c_kv | k_pe] */
    if (d->q_lora > 0) {
        DPEP_TRY(dpep_linear_cuda_nt(T, x, hid, &w->q_a, 0.0f, s->qa, d->q_lora));
        k_rmsnorm<<<(unsigned)T, BLOCK>>>(s->qa, d->q_lora, w->q_a_norm, d->q_lora, d->eps);
        LAUNCHED();
        DPEP_TRY(dpep_linear_cuda_nt(T, s->qa, d->q_lora, &w->q_b, 0.0f, s->q, qw));
    } else {
        DPEP_TRY(dpep_linear_cuda_nt(T, x, hid, &w->q_b, 0.0f, s->q, qw));
    }
    DPEP_TRY(dpep_linear_cuda_nt(T, x, hid, &w->kv_a, 0.0f, s->kva, d->row));
    k_rmsnorm<<<(unsigned)T, BLOCK>>>(s->kva, d->row, w->kv_a_norm, d->kv_lora, d->eps);
    LAUNCHED();
    k_rope<<<(unsigned)T, BLOCK>>>(d_pos, d_inv, nhalf, d->rope_factor, s->cosv, s->sinv, s->kva,
                                   d->row, d->kv_lora, s->q, H, d->qk, d->nope);
    LAUNCHED();
    void *pool = dpep_attn_kv_at_(kv, layer, 0, 0); /* the layer's pages */
    if (kv->dtype == DPEP_WT_BF16)
        k_kv_write<<<(unsigned)T, BLOCK>>>(s->kva, d->row, d_poff, d_pos, d_pg, P, (uint16_t *)pool);
    else
        k_kv_write<<<(unsigned)T, BLOCK>>>(s->kva, d->row, d_poff, d_pos, d_pg, P, (float *)pool);
    LAUNCHED();
    /* attention core, absorbed: q~ = [W_UK_h^T q_nope | q_pe] per head (one
     * strided-batched GEMM over heads + a 2-D copy of q_pe), the core over
     * the latent pages (o~, normalized), o = W_UV_h o~ (a second batched GEMM) */
    const int L = d->kv_lora, bw = d->nope + d->v;
    /* head h's W_UK: rows [h bw, h bw + nope) of kv_b, as [nope, L] (NN);
     * its W_UV: rows [h bw + nope, (h + 1) bw), as [v, L] (NT) */
    dpep_mat wuk = dpep_mat_rows(w->kv_b, 0, d->nope), wuv = dpep_mat_rows(w->kv_b, d->nope, d->v);
    const int64_t wstep = (int64_t)bw * w->kv_b.ld;
    DPEP_TRY(dpep_linear_cuda_batched(false, H, T, s->q, (int64_t)H * d->qk, d->qk, &wuk, wstep,
                                      0.0f, s->qt, (int64_t)H * d->row, d->row));
    if (d->rope > 0)
        DPEP_CHECK_CUDA(cudaMemcpy2DAsync(s->qt + L, sizeof(float) * (size_t)d->row, s->q + d->nope,
                                          sizeof(float) * (size_t)d->qk, sizeof(float) * (size_t)d->rope,
                                          (size_t)T * H, cudaMemcpyDeviceToDevice, 0));
    dpep_mla_core_args ca;
    memset(&ca, 0, sizeof ca);
    ca.n_tokens = T;
    ca.H = H;
    ca.L = L;
    ca.rope = d->rope;
    ca.scale = d->scale;
    ca.page_size = P;
    ca.q = s->qt;
    ca.pool = pool;
    ca.kv_type = kv->dtype;
    ca.pages = d_pg;
    ca.tok_poff = d_poff;
    ca.tok_pos = d_pos;
    ca.tiles = d_tiles;
    ca.n_tiles = n_tiles;
    ca.part_o = s->op;
    ca.part_ml = s->mp;
    ca.part_cap = s->op ? a->cu_part_cap : 0;
    ca.n_split = a->cu_split;
    ca.out = s->ot;
    ca.simple = a->cu_simple;
    ca.stream = NULL;
    DPEP_TRY(dpep_mla_cu_core(&ca));
    DPEP_TRY(dpep_linear_cuda_batched(true, H, T, s->ot, (int64_t)H * L, L, &wuv, wstep, 0.0f,
                                      s->heads, (int64_t)H * d->v, d->v));
    /* o_proj over this rank's heads: a partial sum under attention-TP */
    DPEP_TRY(dpep_linear_cuda_nt(T, s->heads, (int64_t)H * d->v, &w->o, 0.0f, out, hid));
    /* asynchronous: the time to queue the layer's work (the phases are not
     * timed apart on a GPU; waiting for them would stall every layer) */
    a->timing.proj_s += dpep_clock_s() - t0;
    return DPEP_OK;
}



extern "C" void dpep_attn_cuda_debug(dpep_attn *a, int simple, int force_split)
{
    a->cu_simple = simple ? 1 : 0;
    a->cu_force_split = force_split > DPEP_MLA_CU_MAX_SPLIT ? DPEP_MLA_CU_MAX_SPLIT : force_split;
}

extern "C" const dpep_attn_ops dpep_attn_cuda_ops = {
    "cuda", cuda_usable, cuda_init, cuda_carve_scratch, cuda_forward, cuda_stage,
};
