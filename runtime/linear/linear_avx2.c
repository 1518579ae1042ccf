/* linear_avx2.c — AVX2/FMA/F16C kernels of runtime/linear (the table
 * linear_kernels_avx2): linear_simd.h's body at 8 lanes, compiled with
 * per-function target attributes so the rest of the build keeps the baseline
 * ISA; linear.c picks this table at run time when the CPU reports avx2, fma
 * and f16c but not AVX-512 (linear_avx512.c).
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
#define LIN_FN      AVX2_FN
#define LIN_INLINE  AVX2_INLINE
#define LIN_NAME(x) x##_avx2
#define V           __m256
#define VW          8
#define VMASK       __m256i
#define LIN_MR      3 /* 4 x 3 accumulators + 4 weight vectors: the 16 registers */
#define V_ZERO()          _mm256_setzero_ps()
#define V_LOADU(p)        _mm256_loadu_ps(p)
#define V_STOREU(p, v)    _mm256_storeu_ps(p, v)
#define V_FMA(a, b, c)    _mm256_fmadd_ps(a, b, c)
#define V_ADD(a, b)       _mm256_add_ps(a, b)
#define V_BCAST(p)        _mm256_broadcast_ss(p)
#define V_MASKLOAD(p, m)  _mm256_maskload_ps(p, m)
#define HSUM(a)           hsum8(a)
#define HSUM4(a, b, c, d) hsum8x4(a, b, c, d)

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
AVX2_INLINE __m256 load_wv(const void *row, int t, int64_t k)
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

#include "linear_simd.h"

const linear_kernels linear_kernels_avx2 = {
    .name = "avx2", .nt = nt_avx2, .nn = nn_avx2, .widen = widen_avx2};

#endif /* DPEP_LINEAR_HAVE_AVX2 */
