/* linear_avx512.c — AVX-512 kernels of runtime/linear (the table
 * linear_kernels_avx512): linear_simd.h's body at 16 lanes, compiled with
 * per-function target attributes (the rest of the build keeps the baseline
 * ISA); linear.c picks this table at run time when the CPU reports
 * avx512f, fma and f16c.
 *
 * What the width buys: at M >= 4 the products are compute-bound on a small
 * machine (batched decode: 16 rows through the attention projections, the
 * dense and shared MLPs and the lm_head), and a tile of 4 weight rows x 6
 * activation rows keeps 24 accumulators in the 32 registers; one 16-wide FMA
 * does twice the AVX2 work. At M <= 3 (memory-bound) the access order is
 * AVX2's (page streams, the sweep, the in-stream prefetch of 16-bit
 * weights; linear_avx2.c).
 *
 * BF16 weights go by pairs (linear_simd.h, nt_tile_pairs): 32 per load,
 * widened by a shift and a mask instead of a conversion, at every M (no
 * widened-rows path: bf16_direct). On the Zen 4 VM: M = 4 products
 * 1.0-1.6x (large shapes 1.3-1.5x), M = 16 0.9-1.1x, M = 1 within the noise
 * but for 768-byte rows (q_b) 1.6-1.9x (bench/RESULTS.md, "BF16 by pairs").
 *
 * Summation order: linear_simd.h's, at 16 lanes (lane l of an output's
 * accumulator holds k = l mod 16; BF16: k = 32 j + 2 l, then k + 1),
 * reduced by one fixed tree: the two 256-bit halves added lane-wise
 * (l_i + l_i+8), then AVX2's 8-lane tree. Results differ from the AVX2
 * table's in rounding (another order), never within this table by M, tile
 * or split. */
#include "linear_internal.h"

#if defined(DPEP_LINEAR_HAVE_AVX2)

#include <immintrin.h>
#include <string.h>

#define AVX512_FN     __attribute__((target("avx512f,fma,f16c,avx2")))
#define AVX512_INLINE static inline __attribute__((always_inline, target("avx512f,fma,f16c,avx2")))
#define LIN_FN        AVX512_FN
#define LIN_INLINE    AVX512_INLINE
#define LIN_NAME(x)   x##_avx512
#define V             __m512
#define VW            16
#define VMASK         __mmask16
#define LIN_MR        6 /* 4 x 6 accumulators + 4 weight vectors + x: 29 of 32 registers */
#define V_ZERO()          _mm512_setzero_ps()
#define V_LOADU(p)        _mm512_loadu_ps(p)
#define V_STOREU(p, v)    _mm512_storeu_ps(p, v)
#define V_FMA(a, b, c)    _mm512_fmadd_ps(a, b, c)
#define V_ADD(a, b)       _mm512_add_ps(a, b)
#define V_BCAST(p)        _mm512_set1_ps(*(p))
#define V_MASKLOAD(p, m)  _mm512_maskz_loadu_ps(m, p)
#define HSUM(a)           hsum16(a)
#define HSUM4(a, b, c, d) hsum16x4(a, b, c, d)

AVX512_INLINE __mmask16 tail_mask(int r) { return (__mmask16)((1u << r) - 1u); }

AVX512_INLINE __m512 widen16(__m256i h, int t)
{
    if (t == DPEP_WT_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* 16 weights [k, k + 16) of a row of type t as f32. */
AVX512_INLINE __m512 load_wv(const void *row, int t, int64_t k)
{
    if (t == DPEP_WT_F32) return _mm512_loadu_ps((const float *)row + k);
    return widen16(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + k)), t);
}

/* r < 16 weights [k, k + r), zero in lanes [r, 16); nothing read past k + r
 * (the masked load does not fault on the lanes it leaves out). */
AVX512_INLINE __m512 load_w_tail(const void *row, int t, int64_t k, int r, __mmask16 mask)
{
    if (t == DPEP_WT_F32) return _mm512_maskz_loadu_ps(mask, (const float *)row + k);
    uint16_t b[16];
    memset(b, 0, sizeof b);
    memcpy(b, (const uint16_t *)row + k, sizeof(uint16_t) * (size_t)r);
    return widen16(_mm256_loadu_si256((const __m256i *)b), t);
}

/* The fixed reduction tree of one accumulator: the halves (l_i + l_i+8),
 * then AVX2's tree on the 8 sums. */
AVX512_INLINE float hsum16(__m512 a)
{
    const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a),
                                   _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    __m128 u = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)));
}

/* The same tree for four accumulators: lane i is hsum16(a_i) bit for bit. */
AVX512_INLINE __m128 hsum16x4(__m512 a0, __m512 a1, __m512 a2, __m512 a3)
{
#define HALVES(a)                                                                                  \
    _mm256_add_ps(_mm512_castps512_ps256(a),                                                       \
                  _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)))
    const __m256 h0 = HALVES(a0), h1 = HALVES(a1), h2 = HALVES(a2), h3 = HALVES(a3);
#undef HALVES
    __m128 s0 = _mm_add_ps(_mm256_castps256_ps128(h0), _mm256_extractf128_ps(h0, 1));
    __m128 s1 = _mm_add_ps(_mm256_castps256_ps128(h1), _mm256_extractf128_ps(h1, 1));
    __m128 s2 = _mm_add_ps(_mm256_castps256_ps128(h2), _mm256_extractf128_ps(h2, 1));
    __m128 s3 = _mm_add_ps(_mm256_castps256_ps128(h3), _mm256_extractf128_ps(h3, 1));
    _MM_TRANSPOSE4_PS(s0, s1, s2, s3);
    return _mm_add_ps(_mm_add_ps(s0, s2), _mm_add_ps(s1, s3));
}

/* BF16 by pairs (linear_simd.h, nt_tile_pairs): 32 weights per load,
 * widened by a shift (even-indexed) and a mask (odd-indexed); the
 * activations split to match by vpermt2ps. 4 x 5 accumulators + 8 weight
 * vectors + 2 activation vectors: 30 of the 32 registers. */
#define LIN_BF16_PAIRS 1
#define LIN_MR_PAIRS   5
#define VI             __m512i
#define PAIR_LOAD(p)   _mm512_loadu_si512((const void *)(p))
#define PAIR_TAIL(p, r) pair_tail(p, r)
#define PAIR_SPLIT(v, e, o)                                                                        \
    do {                                                                                           \
        (e) = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));                                       \
        (o) = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));       \
    } while (0)
#define X_PAIRS(p, r, e, o) x_pairs(p, r, &(e), &(o))

/* r < 32 BF16 values from p, zeros after them; nothing read past p + r. */
AVX512_INLINE __m512i pair_tail(const uint16_t *p, int r)
{
    uint16_t b[32];
    memset(b, 0, sizeof b);
    memcpy(b, p, sizeof(uint16_t) * (size_t)r);
    return _mm512_loadu_si512((const void *)b);
}

/* The activations x[0, 32) split as PAIR_SPLIT splits weights: e gets
 * x[0], x[2], ..., x[30], o gets x[1], ..., x[31]; r < 32: x[r, 32) read
 * as zeros (not read). */
AVX512_INLINE void x_pairs(const float *x, int r, __m512 *e, __m512 *o)
{
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    __m512 a, b;
    if (r >= 32) {
        a = _mm512_loadu_ps(x);
        b = _mm512_loadu_ps(x + 16);
    } else {
        a = _mm512_maskz_loadu_ps(r >= 16 ? (__mmask16)0xffffu : tail_mask(r), x);
        b = _mm512_maskz_loadu_ps(r > 16 ? tail_mask(r - 16) : (__mmask16)0, x + 16);
    }
    *e = _mm512_permutex2var_ps(a, ie, b);
    *o = _mm512_permutex2var_ps(a, io, b);
}

#include "linear_simd.h"

const linear_kernels linear_kernels_avx512 = {
    .name = "avx512", .nt = nt_avx512, .nn = nn_avx512, .widen = widen_avx512,
    .bf16_direct = true, .nt_xs = nt_xs_avx512, .x_split = x_split_avx512, .xs_block = 32};

#endif /* DPEP_LINEAR_HAVE_AVX2 */
