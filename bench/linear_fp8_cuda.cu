/* linear_fp8_cuda.cu — dpep_linear_fp8_cuda: FP8 weight products (E4M3 with
 * 128 x 128 block scales, DeepSeek-V3's checkpoint format) on one GPU at
 * V3's decode shapes, through runtime/linear's CUDA entry
 * (dpep_linear_cuda_nt) both ways:
 *   direct     the kernel that reads each FP8 byte once (k_f8_nt; products
 *              of up to 64 rows, the default there),
 *   dequant    the weight dequantized to BF16 into a buffer, then cuBLAS
 *              (dpep_linear_cuda_test_fp8_path(1); the default beyond 64
 *              rows),
 * against the device-to-device copy ceiling measured in the same run
 * (cudaMemcpy of 1 GiB, bytes read + written / s). Per shape and row count:
 * time of each path, the direct path's bytes (FP8 weight + scales + X + Y)
 * per second over the copy ceiling (bw; a decode product is memory-bound),
 * direct / dequant speedup, and the two results' normalized difference
 * (same BF16 operands: <= 1e-5, else WRONG and exit 1).
 *
 *   dpep_linear_fp8_cuda [--rows 1,8,32,64] [--iters 50] [--smoke]
 *
 * Without a usable GPU it prints "SKIP: why" and exits 0. Memory: the
 * largest weight (q_b, 24576 x 1536 = 38 MB in FP8) and its 75 MB BF16
 * dequantization buffer, 2 GiB for the copy. */
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_cuda.cuh"
#include "dpep_linear.h"

/* Random finite E4M3 bytes (0x7f / 0xff are NaN: moved to 0x7e / 0xfe). */
__global__ void k_fill_fp8(unsigned char *w, size_t n, uint32_t seed)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        unsigned char b = (unsigned char)(bench_hash32(i, seed) >> 8);
        if ((b & 0x7f) == 0x7f) b ^= 1;
        w[i] = b;
    }
}

typedef struct shape {
    const char *name;
    int N, K; /* W = [N, K] */
} shape;

int main(int argc, char **argv)
{
    int rows[8] = {1, 8, 32, 64}, n_rows = 4, iters = 50, smoke = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc) {
            n_rows = 0;
            for (char *t = strtok(argv[++i], ","); t && n_rows < 8; t = strtok(NULL, ",")) rows[n_rows++] = atoi(t);
        } else if (!strcmp(argv[i], "--iters") && i + 1 < argc) {
            iters = atoi(argv[++i]);
        } else if (!strcmp(argv[i], "--smoke")) {
            smoke = 1;
        } else {
            fprintf(stderr, "usage: %s [--rows 1,8,32,64] [--iters 50] [--smoke]\n", argv[0]);
            return 2;
        }
    }
    for (int i = 0; i < n_rows; i++)
        if (rows[i] < 1 || rows[i] > 4096) {
            fprintf(stderr, "linear_fp8_cuda: --rows %d out of range\n", rows[i]);
            return 2;
        }
    if (iters < 1) iters = 1;
    int n_dev = 0;
    cudaError_t rc = cudaGetDeviceCount(&n_dev);
    if (rc != cudaSuccess || n_dev < 1) {
        printf("SKIP: no usable CUDA device (%s; %d visible)\n",
               rc != cudaSuccess ? cudaGetErrorString(rc) : "none", n_dev);
        return 0;
    }
    CK(cudaSetDevice(0));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("# dpep_linear_fp8_cuda: %s, %d SMs, FP8 E4M3 weights with 128 x 128 block scales\n", prop.name,
           prop.multiProcessorCount);

    /* ceiling: device-to-device copy, bytes read + written */
    const size_t cp = smoke ? (64u << 20) : (1u << 30);
    void *ca = NULL, *cb = NULL;
    CK(cudaMalloc(&ca, cp));
    CK(cudaMalloc(&cb, cp));
    CK(cudaMemset(ca, 1, cp));
    CK(cudaMemcpy(cb, ca, cp, cudaMemcpyDeviceToDevice));
    const double t_cp = time_it(smoke ? 2 : 10, [&] { CK(cudaMemcpyAsync(cb, ca, cp, cudaMemcpyDeviceToDevice, 0)); });
    const double copy_gbs = 2.0 * (double)cp / t_cp * 1e-9;
    CK(cudaFree(ca));
    CK(cudaFree(cb));
    printf("# ceiling: copy %.0f GB/s (cudaMemcpy D2D %zu MiB, read + written)\n", copy_gbs, cp >> 20);

    /* V3's FP8 projections as one rank holds them (attention per DP rank,
     * one routed expert, o_proj) */
    static const shape full[] = {{"q_a 1536x7168", 1536, 7168},    {"q_b 24576x1536", 24576, 1536},
                                 {"kv_a 576x7168", 576, 7168},     {"o_proj 7168x16384", 7168, 16384},
                                 {"expert up 2048x7168", 2048, 7168}, {"expert down 7168x2048", 7168, 2048}};
    static const shape tiny[] = {{"small 320x512", 320, 512}, {"split-K 200x8192", 200, 8192}};
    const shape *shapes = smoke ? tiny : full;
    const int n_shapes = smoke ? 2 : 6;
    int max_m = 0;
    size_t max_w = 0, max_x = 0, max_y = 0;
    for (int i = 0; i < n_rows; i++) max_m = rows[i] > max_m ? rows[i] : max_m;
    for (int s = 0; s < n_shapes; s++) {
        const size_t w = (size_t)shapes[s].N * shapes[s].K;
        max_w = w > max_w ? w : max_w;
        max_x = (size_t)max_m * shapes[s].K > max_x ? (size_t)max_m * shapes[s].K : max_x;
        max_y = (size_t)max_m * shapes[s].N > max_y ? (size_t)max_m * shapes[s].N : max_y;
    }
    CKS(dpep_linear_cuda_reserve((int64_t)max_x));
    CKS(dpep_linear_cuda_reserve_fp8((int64_t)max_w));
    unsigned char *w8 = NULL;
    float *sc = NULL, *x = NULL, *y0 = NULL, *y1 = NULL;
    CK(cudaMalloc((void **)&w8, max_w));
    CK(cudaMalloc((void **)&sc, sizeof(float) * (max_w / (128 * 128) + 256)));
    CK(cudaMalloc((void **)&x, sizeof(float) * max_x));
    CK(cudaMalloc((void **)&y0, sizeof(float) * max_y));
    CK(cudaMalloc((void **)&y1, sizeof(float) * max_y));
    float *h0 = (float *)malloc(sizeof(float) * max_y), *h1 = (float *)malloc(sizeof(float) * max_y);
    if (!h0 || !h1) {
        fprintf(stderr, "linear_fp8_cuda: out of host memory\n");
        return 1;
    }
    printf("%-22s %5s %10s %10s %9s %7s %8s %9s\n", "weight", "rows", "direct_us", "dequant_us", "GB/s", "bw",
           "speedup", "diff");
    int wrong = 0, n_out = 0;
    double bw_min = 1e30, bw_max = 0, sp_min = 1e30, sp_max = 0;
    for (int s = 0; s < n_shapes; s++) {
        const int N = shapes[s].N, K = shapes[s].K;
        const int64_t sld = (K + 127) / 128, srows = (N + 127) / 128;
        k_fill_fp8<<<1024, 256>>>(w8, (size_t)N * K, 11 + (uint32_t)s);
        bench_fill(sc, (size_t)(srows * sld), 0.002f, 0.012f, 21 + (uint32_t)s);
        CK(cudaGetLastError());
        dpep_mat W = dpep_mat_make(w8, DPEP_WT_FP8, N, K);
        W.scale = sc;
        W.sld = sld;
        for (int ri = 0; ri < n_rows; ri++) {
            const int M = rows[ri];
            bench_fill(x, (size_t)M * K, -1.0f, 1.0f, 31 + (uint32_t)(s * 8 + ri));
            CK(cudaGetLastError());
            dpep_linear_cuda_test_fp8_path(M <= 64 ? 2 : 0); /* the direct kernel, or an error */
            CKS(dpep_linear_cuda_nt(M, x, K, &W, 0.0f, y0, N));
            const double t0 = time_it(smoke ? 2 : iters, [&] { CKS(dpep_linear_cuda_nt(M, x, K, &W, 0.0f, y0, N)); });
            dpep_linear_cuda_test_fp8_path(1);
            CKS(dpep_linear_cuda_nt(M, x, K, &W, 0.0f, y1, N));
            const double t1 = time_it(smoke ? 2 : iters, [&] { CKS(dpep_linear_cuda_nt(M, x, K, &W, 0.0f, y1, N)); });
            dpep_linear_cuda_test_fp8_path(0);
            CK(cudaDeviceSynchronize());
            CK(cudaMemcpy(h0, y0, sizeof(float) * (size_t)M * N, cudaMemcpyDeviceToHost));
            CK(cudaMemcpy(h1, y1, sizeof(float) * (size_t)M * N, cudaMemcpyDeviceToHost));
            double num = 0, den = 0;
            for (size_t i = 0; i < (size_t)M * N; i++) {
                const double d = (double)h0[i] - h1[i];
                num += d * d;
                den += (double)h1[i] * h1[i];
            }
            const double diff = num == num && den > 0 ? sqrt(num / den) : INFINITY;
            const bool bad = !(diff <= 1e-5);
            wrong += bad;
            const double bytes = (double)N * K + 4.0 * (double)(srows * sld) + 4.0 * M * (double)(K + N);
            const double gbs = bytes / t0 * 1e-9, bw = gbs / copy_gbs, sp = t1 / t0;
            n_out++;
            if (M <= 64) {
                bw_min = bw < bw_min ? bw : bw_min;
                bw_max = bw > bw_max ? bw : bw_max;
                sp_min = sp < sp_min ? sp : sp_min;
                sp_max = sp > sp_max ? sp : sp_max;
            }
            printf("%-22s %5d %10.1f %10.1f %9.0f %7.3f %7.2fx %9.1e%s\n", shapes[s].name, M, t0 * 1e6, t1 * 1e6,
                   gbs, bw, sp, diff, bad ? "  WRONG" : "");
        }
    }
    printf("# GB/s: the direct path's bytes (FP8 weight + scales + X + Y) per second; bw = over the copy "
           "ceiling (read + written). speedup: dequant time / direct time. diff: direct vs dequant "
           "(same BF16 operands; <= 1e-5). Rows > 64 take the dequantizing path both times.\n");
    printf("ceiling copy_gbs=%.0f\n", copy_gbs);
    printf("summary: %d products, up to 64 rows: bw %.2f-%.2f of copy, speedup %.2f-%.2fx over "
           "dequantize + cuBLAS, %s\n", n_out, bw_min, bw_max, sp_min, sp_max,
           wrong ? "WRONG results" : "direct = dequantized");
    free(h0);
    free(h1);
    CK(cudaFree(w8));
    CK(cudaFree(sc));
    CK(cudaFree(x));
    CK(cudaFree(y0));
    CK(cudaFree(y1));
    return wrong ? 1 : 0;
}
