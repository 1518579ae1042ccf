/* linear_internal.h — runtime/linear's kernel tables (one per instruction
 * set) and tuning constants. Private to runtime/linear. */
#ifndef DPEP_LINEAR_INTERNAL_H
#define DPEP_LINEAR_INTERNAL_H

#include "dpep_linear.h"

/* Crossover M (bench/linear_perf, bench/RESULTS.md "linear kernels (issue
 * 19)"): the streaming kernel up to this many rows, BLAS above (but for the
 * AVX-512 table on AMD CPUs: LINEAR_AMD512_SMALL_M_*). Measured on
 * the 2-core development VM at the small preset's shapes, weights cold:
 * the AVX2 kernel beats OpenBLAS 0.3.21 sgemm (and widen + sgemm) up to
 * M = 32 (geometric mean 1.0-1.3x at 32), loses at 64 on 2 threads. */
#ifndef DPEP_LINEAR_SMALL_M_F32
#define DPEP_LINEAR_SMALL_M_F32 32
#endif
#ifndef DPEP_LINEAR_SMALL_M_HALF
#define DPEP_LINEAR_SMALL_M_HALF 32
#endif
/* The crossover of the AVX-512 table on AMD CPUs (linear_cpu_amd), whose
 * small path prefetches at every M and splits BF16 activations once per
 * call: measured on the Zen 4 VM (OpenBLAS 0.3.21; geometric means over
 * the small preset's shapes of widened-BLAS time / streaming time, 1 / 2
 * threads): f32 M = 64 1.06 / 1.10, M = 96 0.97 / 1.05; BF16 M = 128
 * 1.26 / 1.27 (M = 512 still 1.04); F16 M = 64 1.06 / 1.13, M = 96
 * 0.98 / 1.03 (bench/RESULTS.md, "Small-M products, Zen 4"). */
#define LINEAR_AMD512_SMALL_M_F32  64
#define LINEAR_AMD512_SMALL_M_BF16 128
#define LINEAR_AMD512_SMALL_M_F16  64
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
    /* Optional (NULL where the table has none): BF16 NT on activations
     * split beforehand by x_split into rows of ldxs floats (K rounded up to
     * xs_block), bit for bit nt's results without nt's per-tile split. */
    void (*nt_xs)(int M, const float *Xs, int64_t ldxs, const dpep_mat *W, int n0, int nn,
                  float beta, float *Y, int64_t ldy);
    void (*x_split)(int M, const float *X, int64_t ldx, int K, float *Xs, int64_t ldxs);
    int xs_block;
} linear_kernels;

extern const linear_kernels linear_kernels_generic;
#if defined(DPEP_LINEAR_HAVE_AVX2) /* x86-64 with GCC/Clang: both tables */
extern const linear_kernels linear_kernels_avx2;
extern const linear_kernels linear_kernels_avx512;
#endif

/* The table in use (the best the CPU runs, or the generic one when forced). */
const linear_kernels *linear_kernels_get(void);

/* Access order of the x86 tables' M <= LINEAR_ROWS_MAX_M products
 * (dpep_linear_m1_order):
 * true: row order (one weight row at a time: a thread's share of the matrix
 * is one sequential stream), false: streams (tiles of 8 rows in lockstep,
 * page streams for short rows). Results are the same either way. */
bool linear_m1_rows(void);
/* The CPU is AMD's (the x86 tables' access plan and crossover follow it). */
bool linear_cpu_amd(void);
/* Products of up to this many activation rows take the row order where
 * linear_m1_rows() holds (Zen 4 VM, one thread, against the streams:
 * M = 3 f32 1.12-1.15x, BF16 1.23-1.31x; M = 4 ~1.0x, M = 6-8 0.8-0.9x). */
#define LINEAR_ROWS_MAX_M 3

#endif
