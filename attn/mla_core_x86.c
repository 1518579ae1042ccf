/* mla_core_x86.c — the CPU decode core's x86-64 tables (attn_internal.h,
 * "CPU decode core"): AVX-512 (16 lanes; scores 4 heads x 4 cache rows, P.V
 * 4 heads x 64 columns) and AVX2/FMA (8 lanes; 4 x 2 and 4 heads x 24
 * columns), each mla_core_simd.h compiled with per-function target
 * attributes (the rest of the build keeps the baseline ISA); mla_core.c
 * picks one by CPUID. */
#include "attn_internal.h"

#if defined(DPEP_ATTN_HAVE_X86)

#include <immintrin.h>
#include <math.h>

/* ln of the smallest normal float: e^x below it is taken as 0 */
#define CORE_EXP_MIN (-87.3365447505531f)
/* heads whose alpha sits on the stack at once (larger hn: in chunks) */
#define CORE_MAX_HEADS_STACK 128

/* ------------------------------------------------------------------ AVX-512 */
#define CORE_FN(x)  x##_avx512
#define CORE_ATTR   __attribute__((target("avx512f,avx512dq,fma")))
#define V           __m512
#define VW          16
#define S_HB        4 /* 4 x 4: as fast as 4 x 6, 6 x 4 or 8 x 2 here (RESULTS.md) */
#define S_TB        4
#define P_HB        4
#define P_CV        4
#define V_ZERO()          _mm512_setzero_ps()
#define V_SET1(f)         _mm512_set1_ps(f)
#define V_LOAD(p)         _mm512_loadu_ps(p)
#define V_STORE(p, v)     _mm512_storeu_ps(p, v)
#define V_FMA(a, b, c)    _mm512_fmadd_ps(a, b, c)
#define V_MUL(a, b)       _mm512_mul_ps(a, b)
#define V_ADD(a, b)       _mm512_add_ps(a, b)
#define V_MAX(a, b)       _mm512_max_ps(a, b)
#define V_ROUND(a)        _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define V_MASK(n)         ((__mmask16)((1u << (n)) - 1u))
#define V_LOADN(p, n)     _mm512_maskz_loadu_ps(V_MASK(n), p)
#define V_STOREN(p, v, n) _mm512_mask_storeu_ps(p, V_MASK(n), v)
#define V_HSUM(v)         _mm512_reduce_add_ps(v)
#define V_HMAX(v)         _mm512_reduce_max_ps(v)
#define V_EXP2I(n)                                                                           \
    _mm512_castsi512_ps(                                                                     \
        _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23))
#define V_FLUSH(x, r)                                                                        \
    _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, V_SET1(CORE_EXP_MIN), _CMP_GE_OQ), r)

/* 16 accumulators to their 16 sums in one vector, lane i = sum of a[i]:
 * pairs of neighbours summed lane-wise (unpack), then pairs of those
 * (shuffle), then the four 128-bit blocks (two shuffle rounds). */
static inline __attribute__((always_inline)) CORE_ATTR __m512 reduce16_avx512(const __m512 *a)
{
    __m512 t[8], u[4];
    for (int i = 0; i < 8; i++)
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                             _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
    /* u[q]: block b holds the partial sums of accumulators 4q..4q+3 */
    const __m512 s01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88),
                                     _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
    const __m512 s23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88),
                                     _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(s01, s23, 0x88), _mm512_shuffle_f32x4(s01, s23, 0xDD));
}
/* The S_HB x S_TB accumulators acc[h][t] (row-major) to out[h * S_TB + t],
 * in groups of 16 (the last one padded with zeros). */
#define CORE_REDUCE_TILE(acc, out)                                                           \
    do {                                                                                     \
        enum { n_ = S_HB * S_TB, g_ = (n_ + 15) / 16 };                                      \
        __m512 a_[g_ * 16];                                                                  \
        const __m512 *f_ = &acc[0][0];                                                       \
        for (int i_ = 0; i_ < g_ * 16; i_++) a_[i_] = i_ < n_ ? f_[i_] : V_ZERO();           \
        float o_[g_ * 16];                                                                   \
        for (int g = 0; g < g_; g++) _mm512_storeu_ps(o_ + 16 * g, reduce16_avx512(a_ + 16 * g)); \
        for (int i_ = 0; i_ < n_; i_++) out[i_] = o_[i_];                                    \
    } while (0)

#include "mla_core_simd.h"

const dpep_attn_core_cpu dpep_attn_core_avx512 = {.name = "avx512", .block = core_block_avx512};

#undef CORE_FN
#undef CORE_ATTR
#undef V
#undef VW
#undef S_HB
#undef S_TB
#undef P_HB
#undef P_CV
#undef V_ZERO
#undef V_SET1
#undef V_LOAD
#undef V_STORE
#undef V_FMA
#undef V_MUL
#undef V_ADD
#undef V_MAX
#undef V_ROUND
#undef V_MASK
#undef V_LOADN
#undef V_STOREN
#undef V_HSUM
#undef V_HMAX
#undef V_EXP2I
#undef V_FLUSH
#undef CORE_REDUCE_TILE

/* --------------------------------------------------------------------- AVX2 */
#define CORE_FN(x)  x##_avx2
#define CORE_ATTR   __attribute__((target("avx2,fma")))
#define V           __m256
#define VW          8
#define S_HB        4
#define S_TB        2
#define P_HB        4
#define P_CV        3
#define V_ZERO()          _mm256_setzero_ps()
#define V_SET1(f)         _mm256_set1_ps(f)
#define V_LOAD(p)         _mm256_loadu_ps(p)
#define V_STORE(p, v)     _mm256_storeu_ps(p, v)
#define V_FMA(a, b, c)    _mm256_fmadd_ps(a, b, c)
#define V_MUL(a, b)       _mm256_mul_ps(a, b)
#define V_ADD(a, b)       _mm256_add_ps(a, b)
#define V_MAX(a, b)       _mm256_max_ps(a, b)
#define V_ROUND(a)        _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define V_LOADN(p, n)     _mm256_maskload_ps(p, mask8_avx2(n))
#define V_STOREN(p, v, n) _mm256_maskstore_ps(p, mask8_avx2(n), v)
#define V_HSUM(v)         hsum8_avx2(v)
#define V_HMAX(v)         hmax8_avx2(v)
#define V_EXP2I(n)                                                                           \
    _mm256_castsi256_ps(                                                                     \
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23))
#define V_FLUSH(x, r) _mm256_and_ps(_mm256_cmp_ps(x, V_SET1(CORE_EXP_MIN), _CMP_GE_OQ), r)

static const int32_t k_core_mask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
static inline __attribute__((always_inline)) CORE_ATTR __m256i mask8_avx2(int n)
{
    return _mm256_loadu_si256((const __m256i *)(k_core_mask + 8 - n));
}
static inline __attribute__((always_inline)) CORE_ATTR float hsum8_avx2(__m256 a)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 u = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(u, _mm_movehdup_ps(u)));
}
static inline __attribute__((always_inline)) CORE_ATTR float hmax8_avx2(__m256 a)
{
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 u = _mm_max_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_max_ss(u, _mm_movehdup_ps(u)));
}
/* four accumulators to their four sums, lane i = sum of a[i] */
static inline __attribute__((always_inline)) CORE_ATTR __m128 reduce4_avx2(const __m256 *a)
{
    __m128 s0 = _mm_add_ps(_mm256_castps256_ps128(a[0]), _mm256_extractf128_ps(a[0], 1));
    __m128 s1 = _mm_add_ps(_mm256_castps256_ps128(a[1]), _mm256_extractf128_ps(a[1], 1));
    __m128 s2 = _mm_add_ps(_mm256_castps256_ps128(a[2]), _mm256_extractf128_ps(a[2], 1));
    __m128 s3 = _mm_add_ps(_mm256_castps256_ps128(a[3]), _mm256_extractf128_ps(a[3], 1));
    _MM_TRANSPOSE4_PS(s0, s1, s2, s3);
    return _mm_add_ps(_mm_add_ps(s0, s2), _mm_add_ps(s1, s3));
}
/* 8 accumulators acc[h][t] (4 x 2), row-major, to out[h * 2 + t] */
#define CORE_REDUCE_TILE(acc, out)                                                           \
    do {                                                                                     \
        _mm_storeu_ps(out, reduce4_avx2(&acc[0][0]));                                        \
        _mm_storeu_ps(out + 4, reduce4_avx2(&acc[2][0]));                                    \
    } while (0)

#include "mla_core_simd.h"

/* max_heads 32: at 128 heads (V3 under DP attention) the AVX2 table ran
 * 0.65-0.9x of OpenBLAS on the development VM, at 16 heads 1.2x
 * (bench/RESULTS.md, "Absorbed decode core") */
const dpep_attn_core_cpu dpep_attn_core_avx2 = {
    .name = "avx2", .block = core_block_avx2, .max_heads = 32};

#endif /* DPEP_ATTN_HAVE_X86 */
