/* linear_internal.h — runtime/linear's kernel tables (one per instruction
 * set) and tuning constants. Private to runtime/linear. */
#ifndef DPEP_LINEAR_INTERNAL_H
#define DPEP_LINEAR_INTERNAL_H

#include "dpep_linear.h"

/* Crossover M (bench/linear_perf, bench/RESULTS.md "linear kernels (issue
 * 19)"): the streaming kernel up to this many rows, BLAS above. Measured on
 * the 2-core development VM at the small preset's shapes, weights cold:
 * the AVX2 kernel beats OpenBLAS 0.3.21 sgemm (and widen + sgemm) up to
 * M = 32 (geometric mean 1.0-1.3x at 32), loses at 64 on 2 threads. */
#ifndef DPEP_LINEAR_SMALL_M_F32
#define DPEP_LINEAR_SMALL_M_F32 32
#endif
#ifndef DPEP_LINEAR_SMALL_M_HALF
#define DPEP_LINEAR_SMALL_M_HALF 32
#endif
/* Weight rows widened per BLAS panel (BF16/F16 on the BLAS path). */
#define LINEAR_PANEL_ROWS 128
/* The BLAS path calls sgemm on fixed blocks of this many output columns
 * (from column 0, whatever the thread split), so that results do not
 * depend on the thread count; threads take whole blocks. */
#define LINEAR_BLAS_COLS 128
/* Small path, BF16/F16, M >= LINEAR_WIDEN_MIN_M: weight rows widened
 * LINEAR_WIDEN_ROWS at a time into the thread's scratch, then the f32
 * kernel (bit-identical results; saves re-widening per block of rows). */
#define LINEAR_WIDEN_MIN_M 4
#define LINEAR_WIDEN_ROWS 16
/* Per-thread column chunks of the small-M path are multiples of this (the
 * kernels' widest tile; the kernels' results do not depend on it). */
#define LINEAR_SMALL_ALIGN 16
/* Weight bytes per dynamic chunk of a split product. */
#ifndef LINEAR_CHUNK_BYTES
#define LINEAR_CHUNK_BYTES 262144.0
#endif
/* M*N*K below which a product stays on the calling thread. */
#define LINEAR_PAR_MIN_WORK 1.5e5

/* The generic kernels' crossover (measured with dpep_linear_perf -g on the
 * development VM: plain C beats sgemm at M = 1-2 only). */
#ifndef LINEAR_GENERIC_SMALL_M
#define LINEAR_GENERIC_SMALL_M 2
#endif

/* F16 -> f32 without branches on the value class, so that loops over it
 * vectorize: normal numbers rebiased, subnormals through an exact int ->
 * float conversion (no denormal arithmetic, so DAZ cannot change it), inf
 * and NaN (payload kept) by their exponent. */
static inline float linear_f16_to_f32(uint16_t h)
{
    const uint32_t sign = (uint32_t)(h & 0x8000u) << 16, em = h & 0x7fffu;
    const uint32_t e = em >> 10;
    union {
        float f;
        uint32_t u;
    } nrm, sub, r;
    nrm.u = (em << 13) + (112u << 23);
    sub.f = (float)(em & 0x3ffu) * 0x1p-24f;
    r.u = e == 0 ? sub.u : e == 31 ? 0x7f800000u | ((em & 0x3ffu) << 13) : nrm.u;
    r.u |= sign;
    return r.f;
}

/* One instruction set's kernels. Each computes one thread's share: output
 * columns [n0, n0 + nn) of the product (see dpep_linear_nt / _nn), every
 * output element in a fixed order of k whatever M, n0 and nn are. */
typedef struct linear_kernels {
    const char *name;
    /* Y[m, n] = sum_k X[m, k] W[n, k] (+ Y[m, n] when beta == 1) */
    void (*nt)(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn, float beta,
               float *Y, int64_t ldy);
    /* Y[m, n] = sum_k X[m, k] W[k, n] (+ Y[m, n] when beta == 1) */
    void (*nn)(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn, float beta,
               float *Y, int64_t ldy);
    void (*widen)(const void *src, dpep_wtype t, int64_t n, float *dst);
    /* BF16 NT products at every M through nt itself (the table sums BF16 in
     * an order of its own: widened rows through the f32 kernel would differ) */
    bool bf16_direct;
} linear_kernels;

extern const linear_kernels linear_kernels_generic;
#if defined(DPEP_LINEAR_HAVE_AVX2) /* x86-64 with GCC/Clang: both tables */
extern const linear_kernels linear_kernels_avx2;
extern const linear_kernels linear_kernels_avx512;
#endif

/* The table in use (the best the CPU runs, or the generic one when forced). */
const linear_kernels *linear_kernels_get(void);

/* Access order of the x86 tables' M = 1 products (dpep_linear_m1_order):
 * true: row order (one weight row at a time: a thread's share of the matrix
 * is one sequential stream), false: streams (tiles of 8 rows in lockstep,
 * page streams for short rows). Results are the same either way. */
bool linear_m1_rows(void);

#endif
