/* linear_generic.c — portable kernels of runtime/linear: plain C loops the
 * compiler vectorizes for the build's baseline ISA (SSE2 on x86-64, NEON on
 * aarch64). Built with -ffp-contract=off (runtime/CMakeLists.txt) so every
 * loop below rounds the same way whatever the compiler fuses.
 *
 * Summation order (linear_internal.h's contract): NT sums each output
 * element in 8 lanes (lane l takes k = l mod 8, in order) reduced by one
 * fixed tree; NN sums over k in order. The blocking over weight rows and
 * activation rows changes which loop computes an element, never its
 * operations, so results do not depend on M, n0 or nn. */
#include "linear_internal.h"

#include <string.h>

#define GL 8  /* lanes of an NT sum        */
#define GR 4  /* weight rows per NT block  */
#define GC 64 /* columns per NN block      */

static inline float wval(const void *row, dpep_wtype t, int64_t k)
{
    switch (t) {
    case DPEP_WT_F32: return ((const float *)row)[k];
    case DPEP_WT_BF16: return dpep_bf16_to_f32(((const uint16_t *)row)[k]);
    default: return linear_f16_to_f32(((const uint16_t *)row)[k]);
    }
}

static void widen_generic(const void *src, dpep_wtype t, int64_t n, float *dst)
{
    if (t == DPEP_WT_F32) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    }
    const uint16_t *s = src;
    if (t == DPEP_WT_BF16) {
        for (int64_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)s[i] << 16;
            memcpy(dst + i, &u, 4);
        }
        return;
    }
    for (int64_t i = 0; i < n; i++) dst[i] = linear_f16_to_f32(s[i]);
}

/* ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)): the AVX2 kernels' tree too */
static inline float tree8(const float *a)
{
    float s0 = a[0] + a[4], s1 = a[1] + a[5], s2 = a[2] + a[6], s3 = a[3] + a[7];
    return (s0 + s2) + (s1 + s3);
}

/* acc[i][l] += x[k + l] * W[row i][k + l] over k, for nr <= GR rows */
static inline void nt_block(dpep_wtype t, int nr, int64_t K, const float *x, const char *w,
                            size_t wld, float acc[GR][GL])
{
    int64_t k = 0;
    if (t == DPEP_WT_F32) {
        for (; k + GL <= K; k += GL)
            for (int i = 0; i < nr; i++) {
                const float *wr = (const float *)(w + (size_t)i * wld) + k;
                for (int l = 0; l < GL; l++) acc[i][l] += x[k + l] * wr[l];
            }
    } else if (t == DPEP_WT_BF16) {
        for (; k + GL <= K; k += GL)
            for (int i = 0; i < nr; i++) {
                const uint16_t *wr = (const uint16_t *)(w + (size_t)i * wld) + k;
                for (int l = 0; l < GL; l++) {
                    uint32_t u = (uint32_t)wr[l] << 16;
                    float f;
                    memcpy(&f, &u, 4);
                    acc[i][l] += x[k + l] * f;
                }
            }
    } else {
        for (; k + GL <= K; k += GL)
            for (int i = 0; i < nr; i++) {
                const uint16_t *wr = (const uint16_t *)(w + (size_t)i * wld) + k;
                for (int l = 0; l < GL; l++) acc[i][l] += x[k + l] * linear_f16_to_f32(wr[l]);
            }
    }
    for (int i = 0; i < nr; i++)
        for (int l = 0; k + l < K; l++) acc[i][l] += x[k + l] * wval(w + (size_t)i * wld, t, k + l);
}

static void nt_generic(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                       float beta, float *Y, int64_t ldy)
{
    const int K = W->cols;
    const size_t wld = (size_t)W->ld * dpep_wtype_size(W->t);
    for (int n = n0; n < n0 + nn; n += GR) {
        const int nr = n0 + nn - n < GR ? n0 + nn - n : GR;
        const char *w = dpep_mat_at(*W, n, 0);
        for (int m = 0; m < M; m++) {
            float acc[GR][GL];
            memset(acc, 0, sizeof acc);
            nt_block(W->t, nr, K, X + (size_t)m * ldx, w, wld, acc);
            float *y = Y + (size_t)m * ldy + n;
            for (int i = 0; i < nr; i++) {
                float s = tree8(acc[i]);
                y[i] = beta != 0.0f ? y[i] + s : s;
            }
        }
    }
}

/* NN as axpy over the rows of W: acc[j] += x[k] W[k, c + j], k in order */
static void nn_generic(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                       float beta, float *Y, int64_t ldy)
{
    const int K = W->rows;
    for (int c = n0; c < n0 + nn; c += GC) {
        const int nc = n0 + nn - c < GC ? n0 + nn - c : GC;
        for (int m = 0; m < M; m++) {
            const float *x = X + (size_t)m * ldx;
            float acc[GC];
            memset(acc, 0, sizeof acc);
            for (int k = 0; k < K; k++) {
                const void *wr = dpep_mat_at(*W, k, c);
                const float xk = x[k];
                if (W->t == DPEP_WT_F32) {
                    const float *wf = wr;
                    for (int j = 0; j < nc; j++) acc[j] += xk * wf[j];
                } else {
                    for (int j = 0; j < nc; j++) acc[j] += xk * wval(wr, W->t, j);
                }
            }
            float *y = Y + (size_t)m * ldy + c;
            for (int j = 0; j < nc; j++) y[j] = beta != 0.0f ? y[j] + acc[j] : acc[j];
        }
    }
}

const linear_kernels linear_kernels_generic = {
    .name = "generic", .nt = nt_generic, .nn = nn_generic, .widen = widen_generic};
