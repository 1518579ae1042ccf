/* moe_experts_cuda.cu — dpep_moe_experts_cuda: the routed experts of one EP
 * rank on CUDA (moe_kernels_cuda.experts, moe/experts_cuda.cu) at DeepSeek-V3
 * sizes, against one dense cuBLAS GEMM of the same FLOPs timed in the same
 * run (ratio = experts TFLOP/s / GEMM TFLOP/s), for both paths of the
 * experts: cuBLAS per expert (one device-to-host sync per call) and the
 * grouped tiles without a sync (moe_cuda_set_experts_impl; tensor-core
 * tiles for BF16 weights, and their FMA tiles as a third column). Weights BF16
 * (-d bf16, the default: the expert products on 16-bit inputs with fp32
 * sums, runtime/linear; the baseline a BF16 cublasGemmEx with fp32 sums) or
 * float32 (-d f32: pedantic SGEMM both).
 *
 * Model of a balanced step: every one of the ep ranks sends T tokens, each
 * routed to 8 of 256 experts at random (random gate weights); this rank
 * holds 256/ep of them and receives the tokens with at least one local
 * expert (rows), about 8·T (row, expert) pairs in all. Memory: x and the
 * partial sums (rows, H), the local experts' weights, the GEMM's A (pairs,
 * H) and C (pairs, 3·I): under ~20 GB at ep 8, T 8192.
 *
 * First it checks the CUDA experts against the CPU table at small sizes
 * (normalized error <= 1e-5 for f32, 1e-2 for bf16; exit 1 otherwise).
 * Without a GPU it says it skips and exits 0.
 *
 *   dpep_moe_experts_cuda [-d bf16|f32] [-e 8,32] [-t 128,512,2048,8192] [-H 7168]
 *                         [-I 2048] [-E 256] [-k 8] [-c chunk] [-w warmup] [-n iters] */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpep_cuda.cuh"
#include "moe_internal.h"

#define CK(call)                                                                                 \
    do {                                                                                         \
        cudaError_t rc_ = (call);                                                                \
        if (rc_ != cudaSuccess) {                                                                \
            fprintf(stderr, "FAILED %s:%d %s -> %s\n", __FILE__, __LINE__, #call,                \
                    cudaGetErrorString(rc_));                                                    \
            exit(1);                                                                             \
        }                                                                                        \
    } while (0)

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static double urand(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) / 9007199254740992.0;
}

/* p[i] = uniform in [-a, a] from a hash of (seed, i): device-side fill */
__global__ void k_fill(float *p, int64_t n, float a, uint32_t seed)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ seed;
        h ^= h >> 16;
        h *= 0x7feb352du;
        h ^= h >> 15;
        h *= 0x846ca68bu;
        h ^= h >> 16;
        p[i] = a * (2.0f * ((float)(h >> 8) * (1.0f / 16777216.0f)) - 1.0f) + 1e-4f;
    }
}
static float *dalloc_fill(int64_t n, float a, uint32_t seed)
{
    float *p = NULL;
    CK(cudaMalloc((void **)&p, sizeof(float) * (size_t)(n > 0 ? n : 1)));
    if (n > 0) {
        k_fill<<<4096, 256>>>(p, n, a, seed);
        CK(cudaGetLastError());
    }
    return p;
}
__global__ void k_to_bf16(const float *src, __nv_bfloat16 *dst, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}
static bool g_bf16 = true; /* -d: the weights' type */
static dpep_wtype wt(void) { return g_bf16 ? DPEP_WT_BF16 : DPEP_WT_F32; }
/* n weights in [-a, a] of the bench's type (float32, or BF16 rounded from
 * the same values) */
static void *walloc_fill(int64_t n, float a, uint32_t seed)
{
    float *f = dalloc_fill(n, a, seed);
    if (!g_bf16) return f;
    __nv_bfloat16 *b = NULL;
    CK(cudaMalloc((void **)&b, sizeof(__nv_bfloat16) * (size_t)(n > 0 ? n : 1)));
    if (n > 0) {
        k_to_bf16<<<4096, 256>>>(f, b, n);
        CK(cudaGetLastError());
    }
    CK(cudaFree(f));
    return b;
}
static void *dalloc(size_t bytes)
{
    void *p = NULL;
    CK(cudaMalloc(&p, bytes ? bytes : 4));
    return p;
}

static int parse_list(const char *s, int *out, int max)
{
    int n = 0;
    while (*s && n < max) {
        out[n++] = atoi(s);
        const char *c = strchr(s, ',');
        if (!c) break;
        s = c + 1;
    }
    return n;
}

/* One rank's rows: ep·T tokens, k of E experts each (distinct, random);
 * kept when one is among this rank's nl (experts 0..nl-1): slot ids (k per
 * row, -1 elsewhere) and weights. Returns the rows; *pairs the pairs. */
static int64_t make_rows(int64_t tokens, int E, int k, int nl, int32_t *slot, float *w,
                         int64_t *pairs)
{
    int64_t n = 0, p = 0;
    int ids[64];
    for (int64_t t = 0; t < tokens; t++) {
        int local = 0;
        for (int j = 0; j < k; j++) {
            int e, dup;
            do {
                e = (int)(urand() * E);
                if (e >= E) e = E - 1;
                dup = 0;
                for (int q = 0; q < j; q++) dup |= ids[q] == e;
            } while (dup);
            ids[j] = e;
            local += e < nl;
        }
        if (!local) continue;
        for (int j = 0; j < k; j++) {
            slot[n * k + j] = ids[j] < nl ? ids[j] : -1;
            w[n * k + j] = (float)(0.05 + 0.95 * urand());
        }
        p += local;
        n++;
    }
    *pairs = p;
    return n;
}

/* The CUDA table against the CPU one at small sizes; false on a mismatch. */
static bool self_check(int impl)
{
    const int H = 256, I = 96, E = 16, k = 4, chunk = 64; /* multiples of 32: the tensor-core tiles */
    const int64_t T = 300;
    dpep_mlp_w eh[E], ed[E];
    size_t a = (size_t)I * H;
    const size_t es = dpep_wtype_size(wt());
    for (int s = 0; s < E; s++) {
        ed[s].inter = eh[s].inter = I;
        ed[s].gate = dpep_mat_make(walloc_fill((int64_t)a, 0.1f, 11u * s + 1), wt(), I, H);
        ed[s].up = dpep_mat_make(walloc_fill((int64_t)a, 0.1f, 11u * s + 2), wt(), I, H);
        ed[s].down = dpep_mat_make(walloc_fill((int64_t)a, 0.1f, 11u * s + 3), wt(), H, I);
        eh[s].gate = dpep_mat_make(malloc(es * a), wt(), I, H);
        eh[s].up = dpep_mat_make(malloc(es * a), wt(), I, H);
        eh[s].down = dpep_mat_make(malloc(es * a), wt(), H, I);
        CK(cudaMemcpy(eh[s].gate.p, ed[s].gate.p, es * a, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(eh[s].up.p, ed[s].up.p, es * a, cudaMemcpyDeviceToHost));
        CK(cudaMemcpy(eh[s].down.p, ed[s].down.p, es * a, cudaMemcpyDeviceToHost));
    }
    int32_t *slot = (int32_t *)malloc(sizeof(int32_t) * T * k);
    float *w = (float *)malloc(sizeof(float) * T * k);
    int64_t pairs = 0;
    const int64_t n = make_rows(T, 2 * E, k, E, slot, w, &pairs);
    float *dx = dalloc_fill(n * H, 1.0f, 77), *x = (float *)malloc(sizeof(float) * n * H);
    CK(cudaMemcpy(x, dx, sizeof(float) * n * H, cudaMemcpyDeviceToHost));
    int32_t *dslot = (int32_t *)dalloc(sizeof(int32_t) * n * k);
    float *dw = (float *)dalloc(sizeof(float) * n * k);
    CK(cudaMemcpy(dslot, slot, sizeof(int32_t) * n * k, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dw, w, sizeof(float) * n * k, cudaMemcpyHostToDevice));
    float *ref = (float *)malloc(sizeof(float) * n * H), *got = (float *)malloc(sizeof(float) * n * H);
    float *dpart = (float *)dalloc(sizeof(float) * n * H);
    const int64_t np = n * k;
    const float **px = (const float **)malloc(sizeof(void *) * np);
    float **pp = (float **)malloc(sizeof(void *) * np), *sw = (float *)malloc(sizeof(float) * np);
    int64_t *cnt = (int64_t *)malloc(sizeof(int64_t) * (E + 1));
    float *work = (float *)malloc(sizeof(float) * 2 * chunk * (H + I));
    moe_rows q = {x, NULL, H, slot, k, w, k, ref, n};
    int64_t pr = 0, pg = 0;
    moe_kernels_cpu.experts(eh, E, H, k, &q, 1, chunk, px, pp, sw, cnt, work, I, &pr);
    moe_rows dq = {dx, NULL, H, dslot, k, dw, k, dpart, n};
    moe_cuda_set_experts_impl(impl);
    void *dpx = dalloc(sizeof(void *) * np), *dpp = dalloc(sizeof(void *) * np);
    float *dsw = (float *)dalloc(sizeof(float) * np),
          *dwork = (float *)dalloc(sizeof(float) * 2 * chunk * (H + I));
    int64_t *dcnt = (int64_t *)dalloc(sizeof(int64_t) * (E + 1));
    moe_kernels_cuda.experts(ed, E, H, k, &dq, 1, chunk, (const float **)dpx, (float **)dpp, dsw,
                             dcnt, dwork, I, &pg);
    bool ok = moe_kernels_cuda.status() == DPEP_OK;
    CK(cudaMemcpy(got, dpart, sizeof(float) * n * H, cudaMemcpyDeviceToHost));
    double d = 0, r = 0;
    for (int64_t i = 0; i < n * H; i++) {
        d += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        r += (double)ref[i] * ref[i];
    }
    const double err = sqrt(d / (r > 0 ? r : 1));
    if (impl != MOE_CUDA_EXPERTS_CUBLAS && pg == -1) pg = pr; /* not known there */
    moe_cuda_set_experts_impl(MOE_CUDA_EXPERTS_CUBLAS);
    ok = ok && err <= (g_bf16 ? 1e-2 : 1e-5) && pr == pg && pr == pairs;
    printf("# check %s %s vs CPU (H %d, I %d, %d experts, top-%d, %lld rows): err %.3g, pairs %lld/%lld: %s\n",
           dpep_wtype_name(wt()),
           impl == MOE_CUDA_EXPERTS_GROUPED ? "grouped" : impl == MOE_CUDA_EXPERTS_GROUPED_FMA ? "grouped fma" : "cublas",
           H, I, E, k, (long long)n, err,
           (long long)pg, (long long)pr, ok ? "ok" : "FAILED");
    for (int s = 0; s < E; s++) {
        cudaFree(ed[s].gate.p), cudaFree(ed[s].up.p), cudaFree(ed[s].down.p);
        free(eh[s].gate.p), free(eh[s].up.p), free(eh[s].down.p);
    }
    cudaFree(dx), cudaFree(dslot), cudaFree(dw), cudaFree(dpart), cudaFree(dpx), cudaFree(dpp),
        cudaFree(dsw), cudaFree(dwork), cudaFree(dcnt);
    free(slot), free(w), free(x), free(ref), free(got), free(px), free(pp), free(sw), free(cnt),
        free(work);
    return ok;
}

int main(int argc, char **argv)
{
    int eps[8] = {8, 32}, n_ep = 2, ts[16] = {128, 512, 2048, 8192}, n_t = 4;
    int H = 7168, I = 2048, E = 256, k = 8, chunk = 1024, warm = 1, iters = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *o = argv[i], *v = argv[i + 1];
        if (!strcmp(o, "-d") && (!strcmp(v, "bf16") || !strcmp(v, "f32"))) g_bf16 = !strcmp(v, "bf16");
        else if (!strcmp(o, "-e")) n_ep = parse_list(v, eps, 8);
        else if (!strcmp(o, "-t")) n_t = parse_list(v, ts, 16);
        else if (!strcmp(o, "-H")) H = atoi(v);
        else if (!strcmp(o, "-I")) I = atoi(v);
        else if (!strcmp(o, "-E")) E = atoi(v);
        else if (!strcmp(o, "-k")) k = atoi(v);
        else if (!strcmp(o, "-c")) chunk = atoi(v);
        else if (!strcmp(o, "-w")) warm = atoi(v);
        else if (!strcmp(o, "-n")) iters = atoi(v);
        else {
            fprintf(stderr, "usage: %s [-d bf16|f32] [-e 8,32] [-t 128,...] [-H] [-I] [-E] [-k] [-c] [-w] [-n]\n", argv[0]);
            return 2;
        }
    }
    if (H < 1 || I < 1 || E < 1 || k < 1 || k > 64 || k > E || chunk < 1 || iters < 1) {
        fprintf(stderr, "FAILED bad sizes\n");
        return 2;
    }
    int ndev = 0;
    if (cudaGetDeviceCount(&ndev) != cudaSuccess || ndev < 1) {
        (void)cudaGetLastError();
        printf("SKIP: no CUDA device: dpep_moe_experts_cuda needs a GPU\n");
        return 0;
    }
    CK(cudaSetDevice(0));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("# dpep_moe_experts_cuda: %s, %s, H %d, moe_inter %d, top-%d of %d, "
           "chunk %d, %d warmup + %d timed\n", prop.name,
           g_bf16 ? "bf16 weights (16-bit inputs, fp32 sums; baseline cublasGemmEx bf16)"
                  : "fp32 (pedantic cuBLAS; baseline SGEMM)", H, I, k, E, chunk, warm, iters);
    if (!self_check(MOE_CUDA_EXPERTS_CUBLAS) || !self_check(MOE_CUDA_EXPERTS_GROUPED) ||
        !self_check(MOE_CUDA_EXPERTS_GROUPED_FMA))
        return 1;
    cublasHandle_t h = NULL, h16 = NULL;
    if (dpep_cublas_fp32("bench", 0, &h) != DPEP_OK) return 1;
    if (cublasCreate(&h16) != CUBLAS_STATUS_SUCCESS || dpep_cublas_bind(h16) != CUBLAS_STATUS_SUCCESS) {
        printf("FAILED a cuBLAS handle for the bf16 baseline\n");
        return 1;
    }
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    /* cublas: cuBLAS per expert (one sync per call); grouped: the sync-free
     * grouped tiles (tensor cores for BF16 weights at these shapes); fma:
     * the same on the FMA tiles; ratio: TFLOP/s over the dense GEMM's */
    printf("%4s %6s %7s %8s %8s %10s %8s %10s %8s %8s %10s %8s %7s %7s\n", "ep", "local", "tokens",
           "rows", "pairs", "cublas_ms", "TFLOP/s", "grouped_ms", "TFLOP/s", "fma_ms", "gemm_ms", "TFLOP/s",
           "ratio", "ratio_g");
    int bad = 0;
    double rmin[2] = {1e30, 1e30}, rmax[2] = {0, 0}; /* ratio over the dense GEMM: cublas, grouped */
    for (int a = 0; a < n_ep; a++) {
        const int ep = eps[a];
        if (ep < 1 || E % ep) {
            fprintf(stderr, "FAILED %d experts do not split over ep %d\n", E, ep);
            return 2;
        }
        const int nl = E / ep;
        /* local experts: gate/up (I, H), down (H, I) */
        dpep_mlp_w *ed = (dpep_mlp_w *)calloc((size_t)nl, sizeof *ed);
        const float sh = sqrtf(3.0f / H), si = sqrtf(3.0f / I);
        for (int s = 0; s < nl; s++) {
            ed[s].inter = I;
            ed[s].gate = dpep_mat_make(walloc_fill((int64_t)I * H, sh, 3u * s + 101), wt(), I, H);
            ed[s].up = dpep_mat_make(walloc_fill((int64_t)I * H, sh, 3u * s + 102), wt(), I, H);
            ed[s].down = dpep_mat_make(walloc_fill((int64_t)I * H, si, 3u * s + 103), wt(), H, I);
        }
        for (int b = 0; b < n_t; b++) {
            const int64_t tokens = (int64_t)ep * ts[b];
            int32_t *slot = (int32_t *)malloc(sizeof(int32_t) * tokens * k);
            float *w = (float *)malloc(sizeof(float) * tokens * k);
            int64_t pairs = 0;
            const int64_t n = make_rows(tokens, E, k, nl, slot, w, &pairs);
            float *dx = dalloc_fill(n * H, 1.0f, 7u + b), *dpart = (float *)dalloc(sizeof(float) * n * H);
            int32_t *dslot = (int32_t *)dalloc(sizeof(int32_t) * n * k);
            float *dw = (float *)dalloc(sizeof(float) * n * k);
            CK(cudaMemcpy(dslot, slot, sizeof(int32_t) * n * k, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(dw, w, sizeof(float) * n * k, cudaMemcpyHostToDevice));
            const int64_t np = pairs > 0 ? pairs : 1;
            void *dpx = dalloc(sizeof(void *) * np), *dpp = dalloc(sizeof(void *) * np);
            float *dsw = (float *)dalloc(sizeof(float) * np);
            float *dwork = (float *)dalloc(sizeof(float) * 2 * (size_t)chunk * (H + I));
            int64_t *dcnt = (int64_t *)dalloc(sizeof(int64_t) * (nl + 1));
            moe_rows q = {dx, NULL, H, dslot, k, dw, k, dpart, n};
            int64_t pg = 0;
            double flops = 6.0 * (double)pairs * H * I, t_ex = 0, t_gr = 0, t_fma = 0, t_mm = 0;
            float ms = 0;
            static const int impls[3] = {MOE_CUDA_EXPERTS_CUBLAS, MOE_CUDA_EXPERTS_GROUPED,
                                         MOE_CUDA_EXPERTS_GROUPED_FMA};
            static const char *const inames[3] = {"cublas", "grouped", "grouped fma"};
            for (int impl = 0; impl < 3; impl++) {
                moe_cuda_set_experts_impl(impls[impl]);
                for (int it = 0; it < warm + iters; it++) {
                    CK(cudaEventRecord(e0, 0));
                    double f = moe_kernels_cuda.experts(ed, nl, H, k, &q, 1, chunk, (const float **)dpx,
                                                        (float **)dpp, dsw, dcnt, dwork, I, &pg);
                    CK(cudaEventRecord(e1, 0));
                    CK(cudaEventSynchronize(e1));
                    CK(cudaEventElapsedTime(&ms, e0, e1));
                    if (it >= warm) *(impl == 0 ? &t_ex : impl == 1 ? &t_gr : &t_fma) += ms;
                    if (!impl && (pg != pairs || f != flops)) {
                        printf("FAILED experts (pairs %lld, expected %lld)\n", (long long)pg,
                               (long long)pairs);
                        bad = 1;
                    }
                }
                if (moe_kernels_cuda.status() != DPEP_OK) {
                    printf("FAILED experts (%s): a CUDA error (logged)\n", inames[impl]);
                    bad = 1;
                }
            }
            moe_cuda_set_experts_impl(MOE_CUDA_EXPERTS_CUBLAS);
            cudaFree(dx), cudaFree(dslot), cudaFree(dw), cudaFree(dpx), cudaFree(dpp),
                cudaFree(dsw), cudaFree(dwork), cudaFree(dcnt), cudaFree(dpart);
            /* the baseline: C (pairs, 3I) = A (pairs, H) · B (3I, H)^T, the same FLOPs */
            void *A = walloc_fill(pairs * (int64_t)H, 1.0f, 5), *B = walloc_fill(3 * (int64_t)I * H, sh, 6);
            float *C = (float *)dalloc(sizeof(float) * (size_t)pairs * 3 * I);
            const float one = 1.0f, zero = 0.0f;
            for (int it = 0; it < warm + iters && pairs > 0; it++) {
                CK(cudaEventRecord(e0, 0));
                cublasStatus_t rc =
                    g_bf16 ? cublasGemmEx(h16, CUBLAS_OP_T, CUBLAS_OP_N, 3 * I, (int)pairs, H, &one, B,
                                          CUDA_R_16BF, H, A, CUDA_R_16BF, H, &zero, C, CUDA_R_32F, 3 * I,
                                          CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT)
                           : cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, 3 * I, (int)pairs, H, &one,
                                         (const float *)B, H, (const float *)A, H, &zero, C, 3 * I);
                CK(cudaEventRecord(e1, 0));
                CK(cudaEventSynchronize(e1));
                if (rc != CUBLAS_STATUS_SUCCESS) {
                    printf("FAILED the baseline GEMM -> %d\n", (int)rc);
                    return 1;
                }
                CK(cudaEventElapsedTime(&ms, e0, e1));
                if (it >= warm) t_mm += ms;
            }
            cudaFree(A), cudaFree(B), cudaFree(C);
            t_ex /= iters;
            t_gr /= iters;
            t_fma /= iters;
            t_mm /= iters;
            const double mm_flops = 2.0 * pairs * 3.0 * I * H;
            const double tf_ex = t_ex > 0 ? flops / (t_ex * 1e9) : 0, tf_gr = t_gr > 0 ? flops / (t_gr * 1e9) : 0,
                         tf_mm = t_mm > 0 ? mm_flops / (t_mm * 1e9) : 0;
            printf("%4d %6d %7d %8lld %8lld %10.3f %8.2f %10.3f %8.2f %8.3f %10.3f %8.2f %7.3f %7.3f\n", ep, nl,
                   ts[b], (long long)n, (long long)pairs, t_ex, tf_ex, t_gr, tf_gr, t_fma, t_mm, tf_mm,
                   tf_mm > 0 ? tf_ex / tf_mm : 0, tf_mm > 0 ? tf_gr / tf_mm : 0);
            if (tf_mm > 0) {
                const double r[2] = {tf_ex / tf_mm, tf_gr / tf_mm};
                for (int i = 0; i < 2; i++) {
                    rmin[i] = r[i] < rmin[i] ? r[i] : rmin[i];
                    rmax[i] = r[i] > rmax[i] ? r[i] : rmax[i];
                }
            }
            fflush(stdout);
            free(slot), free(w);
        }
        for (int s = 0; s < nl; s++) cudaFree(ed[s].gate.p), cudaFree(ed[s].up.p), cudaFree(ed[s].down.p);
        free(ed);
    }
    printf("summary: experts TFLOP/s over the dense GEMM's: cublas %.2f-%.2f, grouped (no sync) "
           "%.2f-%.2f%s\n", rmin[0], rmax[0], rmin[1], rmax[1], bad ? " (FAILED)" : "");
    return bad;
}
