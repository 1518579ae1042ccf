/* mla_cuda.cu — CUDA backend of MLA attention (the DPEP_DEVICE_CUDA entry of
 * attn.c's ops table), first piece of issue 16: CORRECT, NOT YET FAST. fp32
 * throughout: projections and o_proj through cuBLAS SGEMM (pedantic math, no
 * TF32), simple kernels for RMSNorm, YaRN RoPE, the latent KV write into the
 * pool's pages, and one attention kernel (one block per (token, head), online
 * softmax over keys read from the pages) serving prefill over a cached prefix
 * and decode alike. Checked against mla_cpu.c by tests/attn/test_attn_cuda.c.
 *
 * Memory contract of the forward: x, out, every weight of dpep_layer_w and
 * the KV pool are device memory of a->dev (the weights are checked: host
 * weights are refused, since dpep_weights_load_on cannot load onto CUDA yet).
 * Page tables stay in host memory (kv_cache.c); each forward stages the
 * step's page-table entries, positions and inv_freq in a host buffer
 * (a->host, malloc'ed at init) and copies them to the device with ONE
 * cudaMemcpy. Nothing on the forward path allocates.
 *
 * Attention form: every token (prefill and decode) runs the absorbed form
 * q~ = W_UK^T q_nope, scores over the latent rows [c_kv | k_pe], o~ = P c_kv,
 * o = W_UV (o~ / l): the same math as the CPU's absorbed decode; the CPU
 * prefill expands k_nope/v per block instead, which differs only in rounding
 * (well inside the test's 1e-5). Each block walks its keys in chunks of
 * blockDim keys: scores one key per thread, block max/sum, rescale.
 *
 * Scratch (a->sc, carved at create): qa, q, kva, heads as on the CPU (same
 * shapes); `tok` holds the staged ints (see stage layout below); cosv/sinv
 * the per-token cos/sin; `m` the device inv_freq. The other fields are
 * unused (NULL). s_len records the page entries the staging holds.
 *
 * Attention-TP: attn.c all-reduces `out` after the forward; with an NCCL
 * comm that works on device memory, so tp > 1 is accepted only with an NCCL
 * comm and refused (UNSUPPORTED) with an MPI one (host buffers).
 *
 * Errors: every CUDA / cuBLAS call through DPEP_CHECK_CUDA / _CUBLAS
 * (host:rank file:line call -> error); launches checked with
 * cudaGetLastError; the forward synchronizes at the end of each phase (for
 * timing and so a device fault is reported by the forward that caused it). */
#include <cublas_v2.h>
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
static dpep_status blas_get(int dev, cublasHandle_t *out) { return dpep_cublas_fp32("attn cuda", dev, out); }

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

/* The new latent rows into the layer's pages: token t at position pos[t] of
 * its sequence, whose page entries start at pages + poff[t]. One block per
 * token. `pool` is the layer's base (n_pages * P rows). */
__global__ void k_kv_write(const float *__restrict__ kva, int row, const int *__restrict__ poff,
                           const int *__restrict__ pos, const int *__restrict__ pages, int P,
                           float *__restrict__ pool)
{
    const int t = blockIdx.x;
    const int p = pos[t];
    float *dst = pool + ((int64_t)pages[poff[t] + p / P] * P + p % P) * row;
    const float *src = kva + (int64_t)t * row;
    for (int j = threadIdx.x; j < row; j += blockDim.x) dst[j] = src[j];
}

/* Causal attention of token t (blockIdx.x), head h (blockIdx.y) over keys
 * 0..pos[t] of its sequence in the paged latent cache, absorbed form:
 *   qt = [W_UK_h^T q_nope | q_pe]              (row = L + rope)
 *   s_j = scale * qt . [c_kv_j | k_pe_j],  o~ = sum_j softmax(s)_j c_kv_j
 *   heads[t, h, :] = W_UV_h (o~ / l)
 * Keys in chunks of BLOCK, one score per thread, online softmax across
 * chunks. Dynamic shared memory: qt (row) | acc (L) | p (BLOCK). */
__global__ void k_attn(const float *__restrict__ q, const float *__restrict__ kv_b,
                       const float *__restrict__ pool, const int *__restrict__ poff,
                       const int *__restrict__ pos, const int *__restrict__ pages, int P, int H,
                       int nope, int rope, int L, int V, float scale, float *__restrict__ heads)
{
    extern __shared__ float smem[];
    __shared__ float red[BLOCK / 32];
    const int t = blockIdx.x, h = blockIdx.y, row = L + rope, qk = nope + rope, bw = nope + V;
    float *qt = smem, *acc = smem + row, *pr = acc + L;
    const float *qh = q + ((int64_t)t * H + h) * qk;
    const float *wk = kv_b + (int64_t)h * bw * L;        /* W_UK_h: (nope, L) */
    const float *wv = wk + (int64_t)nope * L;            /* W_UV_h: (V, L)    */
    for (int c = threadIdx.x; c < L; c += BLOCK) {
        float a = 0.0f;
        for (int i = 0; i < nope; i++) a += qh[i] * wk[(int64_t)i * L + c];
        qt[c] = a;
        acc[c] = 0.0f;
    }
    for (int r = threadIdx.x; r < rope; r += BLOCK) qt[L + r] = qh[nope + r];
    __syncthreads();
    const int *pt = pages + poff[t];
    const int64_t ctx = (int64_t)pos[t] + 1;
    float m = -INFINITY, l = 0.0f;
    for (int64_t j0 = 0; j0 < ctx; j0 += BLOCK) {
        const int64_t j = j0 + threadIdx.x;
        float s = -INFINITY;
        if (j < ctx) {
            const float *kr = pool + ((int64_t)pt[j / P] * P + j % P) * row;
            float d = 0.0f;
            for (int c = 0; c < row; c++) d += qt[c] * kr[c];
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
                a += pr[k] * pool[((int64_t)pt[jj / P] * P + jj % P) * row + c];
            }
            acc[c] = acc[c] * alpha + a;
        }
        __syncthreads(); /* pr is rewritten by the next chunk */
    }
    const float inv = 1.0f / l;
    for (int c = threadIdx.x; c < L; c += BLOCK) acc[c] *= inv;
    __syncthreads();
    float *o = heads + ((int64_t)t * H + h) * V;
    for (int vv = threadIdx.x; vv < V; vv += BLOCK) {
        float a = 0.0f;
        for (int c = 0; c < L; c++) a += wv[(int64_t)vv * L + c] * acc[c];
        o[vv] = a;
    }
}

/* ------------------------------------------------------------------------ */
/* The ops                                                                  */
/* ------------------------------------------------------------------------ */

/* The staged step data (a->host on the host, a->sc.tok on the device), one
 * copy per forward:
 *   float inv_freq[rope / 2] | int poff[T] | int pos[T] | int pages[n entries]
 * inv_freq is in the int region's units (4-byte words, rope / 2 of them). */
static size_t stage_words(const dpep_attn *a)
{
    return (size_t)(a->d.rope / 2) + 2 * (size_t)a->max_tokens + a->sc.s_len;
}
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
    a->blas_pin = false;
    a->sc.s_len = stage_pages_cap(a);
    a->host = malloc(sizeof(int) * stage_words(a));
    if (!a->host) return DPEP_ERR_NOMEM;
    cublasHandle_t h;
    DPEP_CHECK_CUDA(cudaSetDevice(a->dev.ordinal));
    return blas_get(a->dev.ordinal, &h);
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
    s->tok = DPEP_ARENA_TAKE(ar, int, stage_words(a));            /* the staged step     */
}

/* C[M,N] = A[M,K] B[N,K]^T, row-major, on the device: column-major this is
 * C^T (N x M) = B (as K x N col-major)^T . A^T. */
static dpep_status gemm_nt(cublasHandle_t hb, int M, int N, int K, const float *A, int lda,
                           const float *B, float *C, int ldc)
{
    const float one = 1.0f, zero = 0.0f;
    DPEP_CHECK_CUBLAS(cublasSgemm(hb, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, B, K, A, lda, &zero,
                                  C, ldc));
    return DPEP_OK;
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

static dpep_status cuda_forward(dpep_attn *a, const dpep_layer_w *w, int layer, dpep_attn_kv *kv,
                                const dpep_attn_seq *seq, int n_seq, int T, const float *x,
                                float *out)
{
    const dpep_attn_dims *d = &a->d;
    dpep_attn_scratch *s = &a->sc;
    const int H = d->H, nhalf = d->rope / 2, hid = d->hidden, qw = H * d->qk, P = kv->page_size;
    const void *must[] = {x, out, w->q_a, w->q_a_norm, w->q_b, w->kv_a, w->kv_a_norm, w->kv_b, w->o};
    const char *names[] = {"x", "out", "q_a", "q_a_norm", "q_b", "kv_a", "kv_a_norm", "kv_b", "o"};
    for (int i = 0; i < 9; i++) {
        if (!on_device(must[i])) {
            DPEP_ERROR("attn cuda: %s is not device memory (the CUDA forward needs x, out and the "
                       "layer's weights on the GPU; dpep_weights_load_on cannot load onto CUDA "
                       "yet)",
                       names[i]);
            return DPEP_ERR_UNSUPPORTED;
        }
    }
    /* stage: inv_freq | poff | pos | the step's page entries */
    float *h_inv = (float *)a->host;
    int *h_poff = (int *)a->host + nhalf, *h_pos = h_poff + a->max_tokens, *h_pg = h_pos + a->max_tokens;
    memcpy(h_inv, a->inv_freq, sizeof(float) * (size_t)nhalf);
    size_t np = 0;
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
        for (int j = 0; j < seq[i].n_new; j++, t++) {
            h_poff[t] = (int)np;
            h_pos[t] = (int)(seq[i].pos0 + j);
        }
        np += (size_t)npg;
    }
    const float *d_inv = (const float *)s->tok;
    const int *d_poff = s->tok + nhalf, *d_pos = d_poff + a->max_tokens, *d_pg = d_pos + a->max_tokens;
    cublasHandle_t hb;
    double t0 = dpep_clock_s();
    DPEP_CHECK_CUDA(cudaSetDevice(a->dev.ordinal));
    DPEP_TRY(blas_get(a->dev.ordinal, &hb));
    DPEP_CHECK_CUDA(cudaMemcpy(s->tok, a->host,
                               sizeof(int) * ((size_t)nhalf + 2 * (size_t)a->max_tokens + np),
                               cudaMemcpyHostToDevice));
    /* projections: q = q_b(RMSNorm(q_a x)) or q_proj x; kva = [c_kv | k_pe] */
    if (d->q_lora > 0) {
        DPEP_TRY(gemm_nt(hb, T, d->q_lora, hid, x, hid, w->q_a, s->qa, d->q_lora));
        k_rmsnorm<<<(unsigned)T, BLOCK>>>(s->qa, d->q_lora, w->q_a_norm, d->q_lora, d->eps);
        LAUNCHED();
        DPEP_TRY(gemm_nt(hb, T, qw, d->q_lora, s->qa, d->q_lora, w->q_b, s->q, qw));
    } else {
        DPEP_TRY(gemm_nt(hb, T, qw, hid, x, hid, w->q_b, s->q, qw));
    }
    DPEP_TRY(gemm_nt(hb, T, d->row, hid, x, hid, w->kv_a, s->kva, d->row));
    k_rmsnorm<<<(unsigned)T, BLOCK>>>(s->kva, d->row, w->kv_a_norm, d->kv_lora, d->eps);
    LAUNCHED();
    k_rope<<<(unsigned)T, BLOCK>>>(d_pos, d_inv, nhalf, d->rope_factor, s->cosv, s->sinv, s->kva,
                                   d->row, d->kv_lora, s->q, H, d->qk, d->nope);
    LAUNCHED();
    float *pool = kv->pool + (int64_t)layer * kv->n_pages * P * kv->row;
    k_kv_write<<<(unsigned)T, BLOCK>>>(s->kva, d->row, d_poff, d_pos, d_pg, P, pool);
    LAUNCHED();
    DPEP_CHECK_CUDA(cudaDeviceSynchronize());
    double t1 = dpep_clock_s();
    /* attention core */
    const size_t shm = sizeof(float) * ((size_t)d->row + (size_t)d->kv_lora + BLOCK);
    if (shm > 48 * 1024) {
        DPEP_ERROR("attn cuda: %zu B of shared memory per block (kv_lora %d, rope %d) beyond 48 KiB",
                   shm, d->kv_lora, d->rope);
        return DPEP_ERR_UNSUPPORTED;
    }
    dim3 grid((unsigned)T, (unsigned)H);
    k_attn<<<grid, BLOCK, shm>>>(s->q, w->kv_b, pool, d_poff, d_pos, d_pg, P, H, d->nope, d->rope,
                                 d->kv_lora, d->v, d->scale, s->heads);
    LAUNCHED();
    DPEP_CHECK_CUDA(cudaDeviceSynchronize());
    double t2 = dpep_clock_s();
    /* o_proj over this rank's heads: a partial sum under attention-TP */
    DPEP_TRY(gemm_nt(hb, T, hid, H * d->v, s->heads, H * d->v, w->o, out, hid));
    DPEP_CHECK_CUDA(cudaDeviceSynchronize());
    a->timing.proj_s += t1 - t0;
    a->timing.core_s += t2 - t1;
    a->timing.oproj_s += dpep_clock_s() - t2;
    return DPEP_OK;
}

extern "C" const dpep_attn_ops dpep_attn_cuda_ops = {
    "cuda", cuda_usable, cuda_init, cuda_carve_scratch, cuda_forward,
};
