/* linear_avx2.c — AVX2/FMA/F16C kernels of runtime/linear (the table
 * linear_kernels_avx2), compiled with per-function target attributes so the
 * rest of the build keeps the baseline ISA; linear.c picks this table at run
 * time only when the CPU reports avx2, fma and f16c.
 *
 * Summation order (the contract of linear_internal.h): every output element
 * of the NT form is one 8-lane accumulator over k in steps of 8 (lane l
 * holds k = l mod 8, one FMA per step, the K % 8 tail as a last zero-padded
 * step), reduced by one fixed tree ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
 * Every tile shape below performs exactly these operations per element, so
 * a result does not depend on M, on the tile that computed it, or on n0/nn.
 * The NN form is one fused multiply-add per k in order, scalar or vector
 * alike (fmaf and vfmadd round the same way).
 *
 * Access order: a tile reads its NR weight rows as NR streams in lockstep.
 * Rows of 4 KiB or more (one stream per page) are left to the hardware
 * prefetchers. Shorter rows share pages, and two interleaved streams in one
 * page defeat them (BF16 rows of 2 KiB ran at ~0.55 of the read bandwidth
 * where f32 rows of 4 KiB ran at ~1.0). There, at M <= 3 (memory-bound),
 * the rows are taken as page streams: a group of NR x R rows (R rows per
 * 4 KiB) is computed by R tiles whose NR rows lie R rows apart, tile r
 * taking rows r, R + r, 2R + r, ...; so each of the NR streams walks one
 * page (R consecutive rows) from its start to its end across the R tiles,
 * as a row of 4 KiB would, and the prefetchers follow (rows whose size
 * divides 4 KiB; the page streams start where the matrix does, which the
 * loader aligns to pages for matrices that large). Measured on 2-KiB
 * BF16 rows, 2 threads: ~1.2x the software sweep this replaced (which
 * prefetched the next tile's block in address order, ~0.8 of read). The
 * sweep is kept for the rows left over after the last whole group. A tile
 * computes its elements by the same operations whatever rows it holds, so
 * the order of tiles changes no result. */
#include "linear_internal.h"

#if defined(DPEP_LINEAR_HAVE_AVX2)

#include <immintrin.h>
#include <string.h>

#define AVX2_FN     __attribute__((target("avx2,fma,f16c")))
#define AVX2_INLINE static inline __attribute__((always_inline, target("avx2,fma,f16c")))

/* In-stream prefetch distance of 16-bit weights at M <= 3 (bytes ahead of
 * the k-step in each row; measured on the Intel VM, one thread: BF16 rows of
 * 2 and 4 KiB 13.3-13.6 -> 14.8-15.3 GB/s at 384-768, f32 rows no gain; a
 * line per 64 bytes consumed). */
#define LINEAR_STREAM_AHEAD 512

/* _mm256_maskload_ps masks: tail_mask(r) has lanes [0, r) set. */
static const int32_t k_mask_tab[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

AVX2_INLINE __m256i tail_mask(int r)
{
    return _mm256_loadu_si256((const __m256i *)(k_mask_tab + 8 - r));
}

AVX2_INLINE __m256 widen8(__m128i h, int t)
{
    if (t == DPEP_WT_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* 8 weights [k, k + 8) of a row of type t as f32. */
AVX2_INLINE __m256 load_w8(const void *row, int t, int64_t k)
{
    if (t == DPEP_WT_F32) return _mm256_loadu_ps((const float *)row + k);
    return widen8(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + k)), t);
}

/* r < 8 weights [k, k + r), zero in lanes [r, 8); nothing read past k + r. */
AVX2_INLINE __m256 load_w_tail(const void *row, int t, int64_t k, int r, __m256i mask)
{
    if (t == DPEP_WT_F32) return _mm256_maskload_ps((const float *)row + k, mask);
    uint16_t b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    memcpy(b, (const uint16_t *)row + k, sizeof(uint16_t) * (size_t)r);
    return widen8(_mm_loadu_si128((const __m128i *)b), t);
}

/* The fixed reduction tree of one accumulator. */
AVX2_INLINE float hsum8(__m256 a)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1)); /* l_i + l_i+4 */
    __m128 u = _mm_add_ps(s, _mm_movehl_ps(s, s)); /* s0+s2, s1+s3 */
    return _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)));
}

/* The same tree for four accumulators at once: lane i of the result is
 * hsum8(a_i) bit for bit ((s0+s2)+(s1+s3) in both). */
AVX2_INLINE __m128 hsum8x4(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
    __m128 s0 = _mm_add_ps(_mm256_castps256_ps128(a0), _mm256_extractf128_ps(a0, 1));
    __m128 s1 = _mm_add_ps(_mm256_castps256_ps128(a1), _mm256_extractf128_ps(a1, 1));
    __m128 s2 = _mm_add_ps(_mm256_castps256_ps128(a2), _mm256_extractf128_ps(a2, 1));
    __m128 s3 = _mm_add_ps(_mm256_castps256_ps128(a3), _mm256_extractf128_ps(a3, 1));
    _MM_TRANSPOSE4_PS(s0, s1, s2, s3); /* s_j now holds lane j of a0..a3 */
    return _mm_add_ps(_mm_add_ps(s0, s2), _mm_add_ps(s1, s3));
}

/* ---------------------------------------------------------------------- */
/* NT: Y[m, n] = sum_k X[m, k] W[n, k]                                     */
/* ---------------------------------------------------------------------- */
/* One tile: NR weight rows [n, n + NR) x MR activation rows [m, m + MR),
 * NR * MR accumulators live in registers over the whole of K, each weight
 * vector loaded (and widened) once for the MR rows. NR, MR and t are
 * constants at every call site, so the loops unroll completely. */
AVX2_INLINE void nt_tile(const int NR, const int MR, const int t, const int PF, const int SP,
                         int K, const float *X, int64_t ldx, const char *w, size_t wld, float beta,
                         float *Y, int64_t ldy, int ys)
{
    /* SP: each row stream prefetched LINEAR_STREAM_AHEAD bytes ahead, a
     * line per 64 bytes consumed (16-bit weights at M <= 3) */
    /* ys: output columns between the tile's weight rows (1, or R for a
     * tile of page streams) */
    /* PF: lines of the next tile's block [w + NR wld, w + 2 NR wld) to
     * prefetch per k-step so that the sweep ends with the tile */
    const size_t blk = (size_t)NR * wld;
    const size_t per = PF && K >= 8 ? (blk / 64 + (size_t)(K / 8) - 1) / (size_t)(K / 8) : 0;
    const char *pf = w + blk;
    __m256 acc[8][4];
#pragma GCC unroll 8
    for (int i = 0; i < NR; i++)
#pragma GCC unroll 8
        for (int j = 0; j < MR; j++) acc[i][j] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        if (PF) /* prefetches never fault: past the matrix's end is harmless */
            for (size_t q = 0; q < per; q++, pf += 64) _mm_prefetch(pf, _MM_HINT_T0);
        if (SP && (k & 31) == 0) /* 16-bit weights: 64 bytes per 32 of k */
#pragma GCC unroll 8
            for (int i = 0; i < NR; i++)
                _mm_prefetch(w + (size_t)i * wld + (size_t)k * 2 + LINEAR_STREAM_AHEAD, _MM_HINT_T0);
        __m256 wv[8];
#pragma GCC unroll 8
        for (int i = 0; i < NR; i++) wv[i] = load_w8(w + (size_t)i * wld, t, k);
#pragma GCC unroll 8
        for (int j = 0; j < MR; j++) {
            __m256 xv = _mm256_loadu_ps(X + (size_t)j * ldx + k);
#pragma GCC unroll 8
            for (int i = 0; i < NR; i++) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    if (k < K) {
        const int r = (int)(K - k);
        const __m256i mask = tail_mask(r);
        __m256 wv[8];
#pragma GCC unroll 8
        for (int i = 0; i < NR; i++) wv[i] = load_w_tail(w + (size_t)i * wld, t, k, r, mask);
#pragma GCC unroll 8
        for (int j = 0; j < MR; j++) {
            __m256 xv = _mm256_maskload_ps(X + (size_t)j * ldx + k, mask);
#pragma GCC unroll 8
            for (int i = 0; i < NR; i++) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < MR; j++) {
        float *y = Y + (size_t)j * ldy;
        if (NR % 4 == 0 && ys == 1) {
#pragma GCC unroll 8
            for (int i = 0; i < NR; i += 4) {
                __m128 s = hsum8x4(acc[i][j], acc[i + 1][j], acc[i + 2][j], acc[i + 3][j]);
                if (beta != 0.0f) s = _mm_add_ps(s, _mm_loadu_ps(y + i));
                _mm_storeu_ps(y + i, s);
            }
        } else if (NR % 4 == 0) {
#pragma GCC unroll 8
            for (int i = 0; i < NR; i += 4) {
                float v[4];
                _mm_storeu_ps(v, hsum8x4(acc[i][j], acc[i + 1][j], acc[i + 2][j], acc[i + 3][j]));
                for (int q = 0; q < 4; q++) {
                    float *o = y + (size_t)(i + q) * (size_t)ys;
                    *o = beta != 0.0f ? *o + v[q] : v[q];
                }
            }
        } else {
#pragma GCC unroll 8
            for (int i = 0; i < NR; i++) {
                float s = hsum8(acc[i][j]);
                float *o = y + (size_t)i * (size_t)ys;
                *o = beta != 0.0f ? *o + s : s;
            }
        }
    }
}

/* Activation rows [0, M) for weight rows [n, n + NR): blocks of 3 rows
 * (12 accumulators + 4 weight vectors fill the 16 registers), then 1-2. */
AVX2_INLINE void nt_rows(const int NR, const int t, const int PF, const int SP, int M, int K,
                         const float *X, int64_t ldx, const char *w, size_t wld, float beta,
                         float *Y, int64_t ldy, int ys)
{
    int m = 0;
    for (; m + 3 <= M; m += 3)
        nt_tile(NR, 3, t, PF, SP, K, X + (size_t)m * ldx, ldx, w, wld, beta, Y + (size_t)m * ldy,
                ldy, ys);
    if (M - m == 2)
        nt_tile(NR, 2, t, PF, SP, K, X + (size_t)m * ldx, ldx, w, wld, beta, Y + (size_t)m * ldy,
                ldy, ys);
    if (M - m == 1)
        nt_tile(NR, 1, t, PF, SP, K, X + (size_t)m * ldx, ldx, w, wld, beta, Y + (size_t)m * ldy,
                ldy, ys);
}

/* Rows per page stream (see "Access order"): the rows of one DPEP_PAGE, at
 * most LINEAR_PAGE_ROWS_MAX (tiny rows: the group would outgrow a chunk). */
#define LINEAR_PAGE_ROWS_MAX 16

AVX2_INLINE void nt_body(const int t, const int PF, const int SP, int M, const float *X,
                         int64_t ldx, const dpep_mat *W, int n0, int nn, float beta, float *Y,
                         int64_t ldy)
{
    const int K = W->cols;
    const size_t wld = (size_t)W->ld * dpep_wtype_size(W->t);
    const char *w = dpep_mat_at(*W, n0, 0);
    float *y = Y + n0;
    int n = 0;
    /* short rows that tile a page, memory-bound M: groups of page streams
     * (rows that do not divide a page would straddle pages: measured
     * slower than the sweep, ~0.9x at 768- and 1536-byte rows) */
    if (PF && DPEP_PAGE % wld == 0) {
        int R = (int)(DPEP_PAGE / wld);
        if (R > LINEAR_PAGE_ROWS_MAX) R = LINEAR_PAGE_ROWS_MAX;
        const size_t sw = (size_t)R * wld; /* between a tile's rows */
        if (M == 1)
            for (; n + 8 * R <= nn; n += 8 * R)
                for (int r = 0; r < R; r++)
                    nt_tile(8, 1, t, 0, SP, K, X, ldx, w + (size_t)(n + r) * wld, sw, beta,
                            y + n + r, ldy, R);
        for (; n + 4 * R <= nn; n += 4 * R)
            for (int r = 0; r < R; r++)
                nt_rows(4, t, 0, SP, M, K, X, ldx, w + (size_t)(n + r) * wld, sw, beta, y + n + r,
                        ldy, R);
    }
    /* the rest: the sweep (PF) or, for rows of a page or more, the
     * in-stream prefetch (SP without PF) */
    if (M == 1) /* one row: 8 weight rows in flight (8 FMA chains) */
        for (; n + 8 <= nn; n += 8)
            nt_tile(8, 1, t, PF, PF ? 0 : SP, K, X, ldx, w + (size_t)n * wld, wld, beta, y + n, ldy,
                    1);
    for (; n + 4 <= nn; n += 4)
        nt_rows(4, t, PF, PF ? 0 : SP, M, K, X, ldx, w + (size_t)n * wld, wld, beta, y + n, ldy, 1);
    for (; n < nn; n++)
        nt_rows(1, t, PF, PF ? 0 : SP, M, K, X, ldx, w + (size_t)n * wld, wld, beta, y + n, ldy, 1);
}

static AVX2_FN void nt_avx2(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                            float beta, float *Y, int64_t ldy)
{
    /* page streams (and the sweep for the rows left over): short rows
     * (several per page), memory-bound M; 16-bit weights at memory-bound M
     * also prefetch ahead in each stream */
    const bool pf = (size_t)W->ld * dpep_wtype_size(W->t) < DPEP_PAGE && M <= 3;
    const bool sp = M <= 3;
    switch (W->t) {
    case DPEP_WT_F32:
        if (pf)
            nt_body(DPEP_WT_F32, 1, 0, M, X, ldx, W, n0, nn, beta, Y, ldy);
        else
            nt_body(DPEP_WT_F32, 0, 0, M, X, ldx, W, n0, nn, beta, Y, ldy);
        break;
    case DPEP_WT_BF16:
        if (pf)
            nt_body(DPEP_WT_BF16, 1, 1, M, X, ldx, W, n0, nn, beta, Y, ldy);
        else if (sp)
            nt_body(DPEP_WT_BF16, 0, 1, M, X, ldx, W, n0, nn, beta, Y, ldy);
        else
            nt_body(DPEP_WT_BF16, 0, 0, M, X, ldx, W, n0, nn, beta, Y, ldy);
        break;
    default:
        if (pf)
            nt_body(DPEP_WT_F16, 1, 1, M, X, ldx, W, n0, nn, beta, Y, ldy);
        else if (sp)
            nt_body(DPEP_WT_F16, 0, 1, M, X, ldx, W, n0, nn, beta, Y, ldy);
        else
            nt_body(DPEP_WT_F16, 0, 0, M, X, ldx, W, n0, nn, beta, Y, ldy);
        break;
    }
}

/* ---------------------------------------------------------------------- */
/* NN: Y[m, n] = sum_k X[m, k] W[k, n] (axpy over the rows of W)           */
/* ---------------------------------------------------------------------- */
/* Columns [c, c + 8 NV) x rows [0, MR): acc[j][v] += X[j, k] W[k, c + 8v..]
 * for k in order; each weight vector loaded once for the MR rows. */
AVX2_INLINE void nn_tile(const int NV, const int MR, const int t, int K, const float *X,
                         int64_t ldx, const char *w, size_t wld, float beta, float *Y, int64_t ldy)
{
    __m256 acc[2][4];
#pragma GCC unroll 8
    for (int j = 0; j < MR; j++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) acc[j][v] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        const char *wr = w + (size_t)k * wld;
        __m256 wv[4];
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) wv[v] = load_w8(wr, t, 8 * v);
#pragma GCC unroll 8
        for (int j = 0; j < MR; j++) {
            __m256 xb = _mm256_broadcast_ss(X + (size_t)j * ldx + k);
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) acc[j][v] = _mm256_fmadd_ps(wv[v], xb, acc[j][v]);
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < MR; j++) {
        float *y = Y + (size_t)j * ldy;
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) {
            __m256 s = acc[j][v];
            if (beta != 0.0f) s = _mm256_add_ps(s, _mm256_loadu_ps(y + 8 * v));
            _mm256_storeu_ps(y + 8 * v, s);
        }
    }
}

AVX2_INLINE float wscalar(const char *row, int t, int c)
{
    if (t == DPEP_WT_F32) return ((const float *)row)[c];
    if (t == DPEP_WT_BF16) return dpep_bf16_to_f32(((const uint16_t *)row)[c]);
    return _cvtsh_ss(((const uint16_t *)row)[c]);
}

AVX2_INLINE void nn_cols(const int NV, const int t, int M, int K, const float *X, int64_t ldx,
                         const char *w, size_t wld, float beta, float *Y, int64_t ldy)
{
    int m = 0;
    for (; m + 2 <= M; m += 2)
        nn_tile(NV, 2, t, K, X + (size_t)m * ldx, ldx, w, wld, beta, Y + (size_t)m * ldy, ldy);
    if (m < M)
        nn_tile(NV, 1, t, K, X + (size_t)m * ldx, ldx, w, wld, beta, Y + (size_t)m * ldy, ldy);
}

AVX2_INLINE void nn_body(const int t, int M, const float *X, int64_t ldx, const dpep_mat *W, int n0,
                         int nn, float beta, float *Y, int64_t ldy)
{
    const int K = W->rows;
    const size_t es = dpep_wtype_size(W->t), wld = (size_t)W->ld * es;
    const char *w = dpep_mat_at(*W, 0, n0);
    float *y = Y + n0;
    int c = 0;
    for (; c + 32 <= nn; c += 32) nn_cols(4, t, M, K, X, ldx, w + c * es, wld, beta, y + c, ldy);
    for (; c + 8 <= nn; c += 8) nn_cols(1, t, M, K, X, ldx, w + c * es, wld, beta, y + c, ldy);
    for (; c < nn; c++) /* the last < 8 columns: the same FMA per k, scalar */
        for (int m = 0; m < M; m++) {
            const float *x = X + (size_t)m * ldx;
            float s = 0.0f;
            for (int64_t k = 0; k < K; k++)
                s = __builtin_fmaf(wscalar(w + (size_t)k * wld, t, c), x[k], s);
            float *yy = y + (size_t)m * ldy + c;
            *yy = beta != 0.0f ? *yy + s : s;
        }
}

static AVX2_FN void nn_avx2(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                            float beta, float *Y, int64_t ldy)
{
    switch (W->t) {
    case DPEP_WT_F32: nn_body(DPEP_WT_F32, M, X, ldx, W, n0, nn, beta, Y, ldy); break;
    case DPEP_WT_BF16: nn_body(DPEP_WT_BF16, M, X, ldx, W, n0, nn, beta, Y, ldy); break;
    default: nn_body(DPEP_WT_F16, M, X, ldx, W, n0, nn, beta, Y, ldy); break;
    }
}

/* ---------------------------------------------------------------------- */
/* widen                                                                   */
/* ---------------------------------------------------------------------- */
static AVX2_FN void widen_avx2(const void *src, dpep_wtype t, int64_t n, float *dst)
{
    if (t == DPEP_WT_F32) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    }
    const uint16_t *s = src;
    int64_t i = 0;
    if (t == DPEP_WT_BF16) {
        for (; i + 16 <= n; i += 16) {
            _mm256_storeu_ps(dst + i,
                             widen8(_mm_loadu_si128((const __m128i *)(s + i)), DPEP_WT_BF16));
            _mm256_storeu_ps(dst + i + 8,
                             widen8(_mm_loadu_si128((const __m128i *)(s + i + 8)), DPEP_WT_BF16));
        }
        for (; i < n; i++) dst[i] = dpep_bf16_to_f32(s[i]);
        return;
    }
    for (; i + 16 <= n; i += 16) {
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i))));
        _mm256_storeu_ps(dst + i + 8,
                         _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + i + 8))));
    }
    for (; i < n; i++) dst[i] = _cvtsh_ss(s[i]);
}

const linear_kernels linear_kernels_avx2 = {
    .name = "avx2", .nt = nt_avx2, .nn = nn_avx2, .widen = widen_avx2};

#endif /* DPEP_LINEAR_HAVE_AVX2 */
