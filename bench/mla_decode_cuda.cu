/* mla_decode_cuda.cu — MLA absorbed decode at DeepSeek-V3 dims on one GPU:
 * the attention core alone (dpep_mla_cu_core, attn/mla_cuda.cu: queries
 * already absorbed, q~ = [W_UK^T q_nope | q_pe], 576 wide; keys the 576-wide
 * latent rows of a paged cache in fp32 or BF16 (runtime.kv_cache_dtype; BF16
 * rows are widened as read), values their first 512 columns), timed
 * against two ceilings measured in the same run:
 *   - copy: cudaMemcpy device-to-device of 1 GiB, bytes read + written / s;
 *   - sgemm: cuBLAS SGEMM 8192^3 in exact fp32 (pedantic, no TF32), the
 *     ceiling of the fp32 kernel (f32 pools, and BF16 pools at other widths);
 *   - bf16 gemm: cublasGemmEx 8192^3, BF16 inputs, fp32 accumulation (tensor
 *     cores), the ceiling of the tensor-core kernel (BF16 pools at
 *     DeepSeek's widths, the default for them: runtime.kv_cache_dtype bf16).
 * Per shape (heads x batch x context, page size 64, pages handed out in a
 * shuffled order; each KV dtype of --kv): achieved GB/s = (latent KV bytes read once per token +
 * q~ and o~ bytes) / time over the copy ceiling, TFLOP/s = 2 H ctx (576 +
 * 512) per sequence over the SGEMM ceiling, and which bound the shape is
 * under (the larger of bytes / copy and flops / the kernel's ceiling).
 * Before timing, each shape is checked against the simple reference kernel
 * on the same pool (normalized error <= 1e-5 for the fp32 kernel, 1e-2 for
 * the tensor-core one, whose queries and probabilities are BF16; its one
 * timed run gives the speedup column); a wrong result exits 1.
 *
 *   dpep_mla_decode_cuda [--heads 128,16] [--kv f32,bf16] [--iters 20]
 *                        [--no-check] [--smoke] [--device N]
 *
 * Without a usable GPU it prints "SKIP: why" and exits 0. Memory: the pool
 * for the largest shape (64 x 16384 tokens x 2304 B = 2.4 GB, and its BF16
 * copy 1.2 GB), 2 GiB for the
 * copy, 0.8 GB for the SGEMM. */
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attn_internal.h"
#include "bench_cuda.cuh"

#define L_LAT 512  /* kv_lora_rank */
#define ROPE 64    /* qk_rope_head_dim */
#define ROW (L_LAT + ROPE)
#define PAGE 64
#define TOL 1e-5

#define CKB(call)                                                                            \
    do {                                                                                     \
        cublasStatus_t s_ = (call);                                                          \
        if (s_ != CUBLAS_STATUS_SUCCESS) {                                                   \
            fprintf(stderr, "mla_decode_cuda: %s:%d %s -> cuBLAS status %d\n", __FILE__,      \
                    __LINE__, #call, (int)s_);                                               \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

/* BF16 bits of x (nearest even), as the KV write rounds its rows. */
__global__ void k_to_bf16(const float *x, uint16_t *y, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const uint32_t u = __float_as_uint(x[i]);
        y[i] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16); /* finite data */
    }
}
static void fill(float *x, size_t n, uint32_t seed) { bench_fill(x, n, -1.0f, 1.0f, seed); }

static uint64_t g_rng = 0x5eed;
static double urand(void)
{
    g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(g_rng >> 11) / (double)(1ULL << 53);
}

int main(int argc, char **argv)
{
    int heads[8] = {128, 16}, n_heads = 2, iters = 20, check = 1, smoke = 0, dev = 0;
    int kv_on[2] = {1, 1}; /* f32, bf16 */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--heads") && i + 1 < argc) {
            n_heads = 0;
            for (char *t = strtok(argv[++i], ","); t && n_heads < 8; t = strtok(NULL, ","))
                heads[n_heads++] = atoi(t);
        } else if (!strcmp(argv[i], "--kv") && i + 1 < argc) {
            kv_on[0] = kv_on[1] = 0;
            for (char *t = strtok(argv[++i], ","); t; t = strtok(NULL, ",")) {
                if (!strcmp(t, "f32")) kv_on[0] = 1;
                else if (!strcmp(t, "bf16")) kv_on[1] = 1;
                else {
                    fprintf(stderr, "mla_decode_cuda: --kv %s: expected f32, bf16 or f32,bf16\n", t);
                    return 2;
                }
            }
        } else if (!strcmp(argv[i], "--iters") && i + 1 < argc) {
            iters = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--device") && i + 1 < argc) {
            dev = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--no-check")) {
            check = 0;
        } else if (!strcmp(argv[i], "--smoke")) {
            smoke = 1;
        } else {
            fprintf(stderr,
                    "usage: %s [--heads 128,16] [--kv f32,bf16] [--iters 20] [--no-check] [--smoke] "
                    "[--device N]\n",
                    argv[0]);
            return 2;
        }
    }
    for (int i = 0; i < n_heads; i++)
        if (heads[i] < 1 || heads[i] > 1024) {
            fprintf(stderr, "mla_decode_cuda: --heads %d out of range\n", heads[i]);
            return 2;
        }
    if (iters < 1) iters = 1;
    int n_dev = 0;
    cudaError_t rc = cudaGetDeviceCount(&n_dev);
    if (rc != cudaSuccess || dev < 0 || dev >= n_dev) {
        printf("SKIP: no usable CUDA device %d (%s; %d visible)\n", dev,
               rc != cudaSuccess ? cudaGetErrorString(rc) : "ordinal out of range", n_dev);
        return 0;
    }
    CK(cudaSetDevice(dev));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, dev));
    const int n_sm = dpep_mla_cu_sm_count(dev);
    printf("# dpep_mla_decode_cuda: %s, %d SMs, latent KV of %d B (fp32) / %d B (bf16) per token per "
           "layer, page %d\n", prop.name, n_sm, (int)(ROW * sizeof(float)), (int)(ROW * sizeof(uint16_t)),
           PAGE);

    /* ---- ceilings ---- */
    const size_t cp_bytes = smoke ? (64u << 20) : (1u << 30);
    float *ca = (float *)dalloc(cp_bytes), *cb = (float *)dalloc(cp_bytes);
    fill(ca, cp_bytes / sizeof(float), 1);
    CK(cudaMemcpy(cb, ca, cp_bytes, cudaMemcpyDeviceToDevice));
    const double t_cp = time_it(smoke ? 2 : 10, [&] { CK(cudaMemcpyAsync(cb, ca, cp_bytes, cudaMemcpyDeviceToDevice, 0)); });
    const double copy_gbs = 2.0 * (double)cp_bytes / t_cp * 1e-9;
    CK(cudaFree(ca));
    CK(cudaFree(cb));
    const int gn = smoke ? 1024 : 8192;
    float *ga = (float *)dalloc(sizeof(float) * (size_t)gn * gn), *gb = (float *)dalloc(sizeof(float) * (size_t)gn * gn),
          *gc = (float *)dalloc(sizeof(float) * (size_t)gn * gn);
    fill(ga, (size_t)gn * gn, 2);
    fill(gb, (size_t)gn * gn, 3);
    cublasHandle_t hb;
    CKB(cublasCreate(&hb));
    CKB(cublasSetMathMode(hb, CUBLAS_PEDANTIC_MATH));
    CKB(cublasSetStream(hb, cudaStreamPerThread)); /* where the events and kernels run */
    const float one = 1.0f, zero = 0.0f;
    auto sgemm = [&] { CKB(cublasSgemm(hb, CUBLAS_OP_N, CUBLAS_OP_N, gn, gn, gn, &one, ga, gn, gb, gn, &zero, gc, gn)); };
    sgemm();
    const double t_gemm = time_it(smoke ? 1 : 3, sgemm);
    const double sgemm_tfs = 2.0 * gn * (double)gn * gn / t_gemm * 1e-12;
    CKB(cublasDestroy(hb));
    CK(cudaFree(ga));
    CK(cudaFree(gb));
    CK(cudaFree(gc));
    /* the BF16 tensor-core ceiling: cublasGemmEx on BF16 inputs, fp32 sums */
    uint16_t *ha = (uint16_t *)dalloc(sizeof(uint16_t) * (size_t)gn * gn),
             *hb16 = (uint16_t *)dalloc(sizeof(uint16_t) * (size_t)gn * gn);
    float *hc = (float *)dalloc(sizeof(float) * (size_t)gn * gn), *tmp = (float *)dalloc(sizeof(float) * (size_t)gn * gn);
    fill(tmp, (size_t)gn * gn, 4);
    k_to_bf16<<<1024, 256>>>(tmp, ha, (size_t)gn * gn);
    fill(tmp, (size_t)gn * gn, 5);
    k_to_bf16<<<1024, 256>>>(tmp, hb16, (size_t)gn * gn);
    CK(cudaGetLastError());
    cublasHandle_t hh;
    CKB(cublasCreate(&hh));
    CKB(cublasSetStream(hh, cudaStreamPerThread));
    auto hgemm = [&] {
        CKB(cublasGemmEx(hh, CUBLAS_OP_N, CUBLAS_OP_N, gn, gn, gn, &one, ha, CUDA_R_16BF, gn, hb16, CUDA_R_16BF, gn,
                         &zero, hc, CUDA_R_32F, gn, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    };
    hgemm();
    const double t_h = time_it(smoke ? 1 : 5, hgemm);
    const double bf16_tfs = 2.0 * gn * (double)gn * gn / t_h * 1e-12;
    CKB(cublasDestroy(hh));
    CK(cudaFree(ha));
    CK(cudaFree(hb16));
    CK(cudaFree(hc));
    CK(cudaFree(tmp));
    printf("# ceilings: copy %.0f GB/s (cudaMemcpy D2D %zu MiB, read + written); sgemm fp32 %.1f TFLOP/s "
           "(%d^3, pedantic); bf16 gemm %.1f TFLOP/s (%d^3, fp32 sums)\n",
           copy_gbs, cp_bytes >> 20, sgemm_tfs, gn, bf16_tfs, gn);

    /* ---- shapes ---- */
    static const int full[4][2] = {{1, 4096}, {32, 4096}, {128, 2048}, {64, 16384}};
    static const int tiny[2][2] = {{1, 300}, {5, 130}};
    const int (*shapes)[2] = smoke ? tiny : full;
    const int n_shapes = smoke ? 2 : 4;
    int64_t max_pages = 0, max_b = 0, max_h = 0;
    for (int s = 0; s < n_shapes; s++) {
        const int64_t np = (int64_t)shapes[s][0] * ((shapes[s][1] + PAGE - 1) / PAGE);
        max_pages = np > max_pages ? np : max_pages;
        max_b = shapes[s][0] > max_b ? shapes[s][0] : max_b;
    }
    for (int i = 0; i < n_heads; i++) max_h = heads[i] > max_h ? heads[i] : max_h;
    const size_t pool_n = (size_t)max_pages * PAGE * ROW;
    float *pool = (float *)dalloc(sizeof(float) * pool_n);
    fill(pool, pool_n, 7);
    uint16_t *pool16 = (uint16_t *)dalloc(sizeof(uint16_t) * pool_n);
    k_to_bf16<<<1024, 256>>>(pool, pool16, pool_n);
    CK(cudaGetLastError());
    float *q = (float *)dalloc(sizeof(float) * (size_t)max_b * max_h * ROW);
    float *out = (float *)dalloc(sizeof(float) * (size_t)max_b * max_h * L_LAT);
    float *out_ref = (float *)dalloc(sizeof(float) * (size_t)max_b * max_h * L_LAT);
    const int64_t part_cap = 8 * (int64_t)(n_sm > 0 ? n_sm : 132);
    float *part_o = (float *)dalloc(sizeof(float) * (size_t)part_cap * 32 * L_LAT);
    float *part_ml = (float *)dalloc(sizeof(float) * (size_t)part_cap * 32 * 2);
    const int max_tiles = (int)max_b * (((int)max_h + 15) / 16) + 1; /* tiles of >= 16 rows */
    int *h_pages = (int *)malloc(sizeof(int) * (size_t)max_pages), *h_perm = (int *)malloc(sizeof(int) * (size_t)max_pages);
    int *h_poff = (int *)malloc(sizeof(int) * (size_t)max_b), *h_pos = (int *)malloc(sizeof(int) * (size_t)max_b);
    int *h_tiles = (int *)malloc(sizeof(int) * DPEP_MLA_CU_TILE_INTS * (size_t)max_tiles);
    int *d_pages = (int *)dalloc(sizeof(int) * (size_t)max_pages), *d_poff = (int *)dalloc(sizeof(int) * (size_t)max_b),
        *d_pos = (int *)dalloc(sizeof(int) * (size_t)max_b),
        *d_tiles = (int *)dalloc(sizeof(int) * DPEP_MLA_CU_TILE_INTS * (size_t)max_tiles);
    const size_t max_out = (size_t)max_b * max_h * L_LAT;
    float *h_o = (float *)malloc(sizeof(float) * max_out), *h_r = (float *)malloc(sizeof(float) * max_out);
    if (!h_pages || !h_perm || !h_poff || !h_pos || !h_tiles || !h_o || !h_r) {
        fprintf(stderr, "mla_decode_cuda: out of host memory\n");
        return 1;
    }
    printf("%6s %4s %4s %6s %7s %6s %6s %10s %9s %7s %9s %7s %8s %9s %9s\n", "heads", "kv", "core", "batch", "context", "tiles",
           "split", "time_us", "GB/s", "bw", "TFLOP/s", "flop", "bound", "vs_simple", "err");
    int wrong = 0, n_rows = 0;
    double fmin = 1e30, fmax = 0, bmin = 1e30, bmax = 0;
    for (int hi = 0; hi < n_heads; hi++)
        for (int s = 0; s < n_shapes; s++)
        for (int kt = 0; kt < 2; kt++) {
            if (!kv_on[kt]) continue;
            const size_t esz = kt ? sizeof(uint16_t) : sizeof(float);
            const int H = heads[hi], B = shapes[s][0], ctx = shapes[s][1];
            const int pps = (ctx + PAGE - 1) / PAGE;
            const int64_t np = (int64_t)B * pps;
            /* pages in a shuffled order, as a pool that has been in use */
            for (int64_t i = 0; i < np; i++) h_perm[i] = (int)i;
            for (int64_t i = np - 1; i > 0; i--) {
                int64_t j = (int64_t)(urand() * (double)(i + 1));
                int x = h_perm[i];
                h_perm[i] = h_perm[j];
                h_perm[j] = x;
            }
            int n_tiles = 0;
            for (int b = 0; b < B; b++) {
                h_poff[b] = b * pps;
                h_pos[b] = ctx - 1;
                n_tiles += dpep_mla_cu_plan(H, b, 1, ctx - 1, h_tiles + (size_t)n_tiles * DPEP_MLA_CU_TILE_INTS);
            }
            for (int64_t i = 0; i < np; i++) h_pages[i] = h_perm[i];
            CK(cudaMemcpy(d_pages, h_pages, sizeof(int) * (size_t)np, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(d_poff, h_poff, sizeof(int) * (size_t)B, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(d_pos, h_pos, sizeof(int) * (size_t)B, cudaMemcpyHostToDevice));
            CK(cudaMemcpy(d_tiles, h_tiles, sizeof(int) * DPEP_MLA_CU_TILE_INTS * (size_t)n_tiles,
                          cudaMemcpyHostToDevice));
            fill(q, (size_t)B * H * ROW, 100 + (uint32_t)s);
            dpep_mla_core_args c;
            memset(&c, 0, sizeof c);
            c.n_tokens = B;
            c.H = H;
            c.L = L_LAT;
            c.rope = ROPE;
            c.scale = 0.1352338f; /* V3's softmax scale */
            c.page_size = PAGE;
            c.q = q;
            c.pool = kt ? (const void *)pool16 : (const void *)pool;
            c.kv_type = kt ? DPEP_WT_BF16 : DPEP_WT_F32;
            /* the kernel the engine takes for this pool (tensor cores: BF16 at 512 + 64) */
            const bool tc = kt && dpep_mla_cu_tc_ok(L_LAT, ROPE, DPEP_WT_BF16) && prop.major >= 8;
            const double tol = tc ? 1e-2 : TOL, ceil_tfs = tc ? bf16_tfs : sgemm_tfs;
            c.pages = d_pages;
            c.tok_poff = d_poff;
            c.tok_pos = d_pos;
            c.tiles = d_tiles;
            c.n_tiles = n_tiles;
            c.n_split = dpep_mla_cu_splits(H, n_tiles, ctx, n_sm, part_cap);
            c.part_o = part_o;
            c.part_ml = part_ml;
            c.part_cap = part_cap;
            c.out = out;
            const size_t n_o = (size_t)B * H * L_LAT;
            double err = 0, t_simple = 0;
            if (check) {
                CK(cudaMemset(out, 0xff, sizeof(float) * n_o)); /* NaN poison */
                CK(cudaMemset(out_ref, 0xff, sizeof(float) * n_o));
                CKS(dpep_mla_cu_core(&c));
                dpep_mla_core_args r = c;
                r.simple = 1;
                r.out = out_ref;
                t_simple = time_it(1, [&] { CKS(dpep_mla_cu_core(&r)); });
                CK(cudaMemcpy(h_o, out, sizeof(float) * n_o, cudaMemcpyDeviceToHost));
                CK(cudaMemcpy(h_r, out_ref, sizeof(float) * n_o, cudaMemcpyDeviceToHost));
                double num = 0, den = 0;
                for (size_t i = 0; i < n_o; i++) {
                    const double d = (double)h_o[i] - h_r[i];
                    num += d * d;
                    den += (double)h_r[i] * h_r[i];
                }
                err = num == num && den > 0 ? sqrt(num / den) : INFINITY;
                if (!(err <= tol)) wrong++;
            }
            for (int w = 0; w < 3; w++) CKS(dpep_mla_cu_core(&c));
            CK(cudaDeviceSynchronize());
            const double t = time_it(smoke ? 2 : iters, [&] { CKS(dpep_mla_cu_core(&c)); });
            const double bytes = (double)B * ctx * ROW * esz +
                                 (double)B * H * (ROW + L_LAT) * sizeof(float);
            const double flops = 2.0 * B * H * (double)ctx * (ROW + L_LAT);
            const double gbs = bytes / t * 1e-9, tfs = flops / t * 1e-12;
            const bool compute = flops / (ceil_tfs * 1e12) > bytes / (copy_gbs * 1e9);
            char e_s[16] = "-", v_s[16] = "-";
            if (check) {
                snprintf(e_s, sizeof e_s, "%.1e", err);
                snprintf(v_s, sizeof v_s, "%.1fx", t_simple / t);
            }
            n_rows++;
            fmin = fmin < tfs / ceil_tfs ? fmin : tfs / ceil_tfs;
            fmax = fmax > tfs / ceil_tfs ? fmax : tfs / ceil_tfs;
            bmin = bmin < gbs / copy_gbs ? bmin : gbs / copy_gbs;
            bmax = bmax > gbs / copy_gbs ? bmax : gbs / copy_gbs;
            printf("%6d %4s %4s %6d %7d %6d %6d %10.1f %9.1f %7.3f %9.2f %7.3f %8s %9s %9s%s\n", H,
                   kt ? "bf16" : "f32", tc ? "tc" : "fp32", B, ctx, n_tiles,
                   c.n_split, t * 1e6, gbs, gbs / copy_gbs, tfs, tfs / ceil_tfs,
                   compute ? "compute" : "memory", v_s, e_s, check && !(err <= tol) ? "  WRONG" : "");
        }
    printf("# GB/s: latent KV read once per token (%d B per key in fp32, half in bf16) + q~ and o~; bw = "
           "over the copy ceiling.\n"
           "# TFLOP/s: 2 H ctx (576 + 512) per sequence; flop = over the kernel's ceiling (core fp32: "
           "SGEMM; tc: BF16 GEMM).\n"
           "# bound: the larger of bytes / copy and flops / the ceiling. err: vs the simple kernel on the "
           "same pool (tol %.0e; tc 1e-2).\n",
           (int)(ROW * sizeof(float)), TOL);
    printf("ceiling copy_gbs=%.0f sgemm_fp32_tflops=%.1f bf16_gemm_tflops=%.1f\n", copy_gbs, sgemm_tfs, bf16_tfs);
    printf("summary: %d shapes, flop %.2f-%.2f of the kernel's GEMM ceiling, bw %.2f-%.2f of copy, %s\n", n_rows, fmin, fmax,
           bmin, bmax, !check ? "unchecked" : wrong ? "WRONG results" : "all match the simple kernel");
    CK(cudaFree(pool));
    CK(cudaFree(pool16));
    CK(cudaFree(q));
    CK(cudaFree(out));
    CK(cudaFree(out_ref));
    CK(cudaFree(part_o));
    CK(cudaFree(part_ml));
    CK(cudaFree(d_pages));
    CK(cudaFree(d_poff));
    CK(cudaFree(d_pos));
    CK(cudaFree(d_tiles));
    free(h_pages);
    free(h_perm);
    free(h_poff);
    free(h_pos);
    free(h_tiles);
    free(h_o);
    free(h_r);
    if (wrong) {
        printf("FAIL: %d shape(s) differ from the simple kernel beyond %.0e\n", wrong, TOL);
        return 1;
    }
    return 0;
}
