/* dpep_linear.h — public header of runtime/linear: products of activations
 * (float32 rows) with stored weight matrices (float32, BF16 or F16 as the
 * checkpoint has them), the CPU's one entry for every projection, expert
 * product and lm_head.
 *
 * Two paths, picked per call by the number of activation rows M:
 *  - small M (decode: one token per sequence, an expert with a few rows):
 *    a kernel of our own that reads each weight row once for all M rows
 *    (AVX2/FMA/F16C when the CPU has them, chosen once at run time; a
 *    portable loop otherwise), widening BF16/F16 in registers, f32 sums;
 *  - large M (prefill): BLAS sgemm; a BF16/F16 matrix is widened one panel
 *    of rows at a time into per-thread scratch first (that costs O(N K), the
 *    product O(M N K)).
 * The crossover (DPEP_LINEAR_SMALL_M_*) was measured by bench/linear_perf.
 *
 * Threads: one pool, OpenMP's. Called outside a parallel region, a product
 * big enough is split by output columns (weight rows) over the team; called
 * inside one, it runs on the calling thread. BLAS is only ever called on one
 * thread's share (world's thread plan keeps BLAS at one thread), so no
 * second pool exists. (Not from nested parallel regions: the per-thread
 * scratch is indexed by the thread's number in the innermost team.) Each
 * output element is computed by one thread in a
 * fixed order: results do not depend on the thread count or on how N is
 * split; within one path, row m's results do not depend on the other rows.
 *
 * Depends on BLAS, OpenMP, the C library and runtime/base (the status type
 * of the CUDA part), so every layer above base may use it. No allocation on
 * the call path: the scratch is reserved once (dpep_linear_reserve) before
 * the first product.
 *
 * CUDA builds add the same products on a GPU (linear_cuda.cu; see "On a
 * CUDA device" below): float32 weights through cuBLAS SGEMM without TF32,
 * BF16/F16 weights kept as stored through cuBLAS with 16-bit inputs and
 * float32 accumulation. */
#ifndef DPEP_LINEAR_H
#define DPEP_LINEAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dpep_base.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Element types of stored weights. FP8: E4M3 with one float32 scale per
 * 128 x 128 block (DeepSeek-V3's checkpoints), held as stored on a GPU
 * only — the CPU's loader widens FP8, and the CPU products refuse it. */
typedef enum dpep_wtype {
    DPEP_WT_F32 = 0, DPEP_WT_BF16, DPEP_WT_F16, DPEP_WT_FP8, DPEP_WT_COUNT
} dpep_wtype;

const char *dpep_wtype_name(dpep_wtype t);   /* "f32", "bf16", "f16", "fp8" */
size_t dpep_wtype_size(dpep_wtype t);        /* 4, 2, 2, 1                  */
#define DPEP_FP8_BLOCK 128                   /* rows and columns per scale  */
#define DPEP_WT_CPU_COUNT 3 /* the types the CPU products take: F32, BF16, F16 */

/* A weight matrix [rows, cols], row-major with a row stride of `ld`
 * elements (ld == cols for a whole tensor, larger for a view of some of its
 * columns). Not owned: `p` points into the weights' arena (or any memory
 * the caller keeps alive). p == NULL is an absent matrix. */
typedef struct dpep_mat {
    void *p;
    dpep_wtype t;
    int rows, cols;
    int64_t ld;
    /* FP8 only: element (r, c) is fp8(r, c) x scale[((sr0 + r) / 128) * sld
     * + c / 128]; sr0 < 128 is the first row's place in its block (views of
     * rows, dpep_mat_rows). Not owned, like p. */
    const float *scale;
    int64_t sld;
    int sr0;
} dpep_mat;

static inline dpep_mat dpep_mat_make(void *p, dpep_wtype t, int rows, int cols)
{
    dpep_mat m = {p, t, rows, cols, cols, (const float *)0, 0, 0};
    return m;
}
/* Rows [r0, r0 + n) of m (a view; same storage; an FP8 view's scales
 * follow). */
static inline dpep_mat dpep_mat_rows(dpep_mat m, int r0, int n)
{
    dpep_mat v = m;
    v.p = m.p ? (char *)m.p + (size_t)r0 * (size_t)m.ld * dpep_wtype_size(m.t) : NULL;
    v.rows = n;
    if (m.t == DPEP_WT_FP8 && m.scale) {
        const int a = m.sr0 + r0;
        v.scale = m.scale + (size_t)(a / DPEP_FP8_BLOCK) * (size_t)m.sld;
        v.sr0 = a % DPEP_FP8_BLOCK;
    }
    return v;
}
/* Address of element (r, c). */
static inline const void *dpep_mat_at(dpep_mat m, int64_t r, int64_t c)
{
    return (const char *)m.p + ((size_t)r * (size_t)m.ld + (size_t)c) * dpep_wtype_size(m.t);
}
/* The float32 storage of an F32 matrix (NULL for another type): for code
 * that only handles float32, e.g. device backends that load weights as f32. */
static inline float *dpep_mat_f32(dpep_mat m)
{
    return m.t == DPEP_WT_F32 ? (float *)m.p : (float *)0;
}

/* Conversions (round to nearest even for f32 -> bf16/f16; NaN kept NaN). */
float dpep_bf16_to_f32(uint16_t h);
uint16_t dpep_f32_to_bf16(float f);
float dpep_f16_to_f32(uint16_t h);
uint16_t dpep_f32_to_f16(float f);
/* dst[i] = (float)src[i] for n elements of type t (a widening copy; for
 * F32 a memcpy). */
void dpep_linear_widen(const void *src, dpep_wtype t, int64_t n, float *dst);

/* Y[M, N] = X[M, K] W^T + beta Y, with W = [N, K] (a weight as stored:
 * out_features x in_features), N = W->rows, K = W->cols; beta 0 or 1 (0:
 * Y is written, never read, so it may hold NaN). Rows of X are ldx floats
 * apart, rows of Y ldy. M == 0 or N == 0 does nothing. */
void dpep_linear_nt(int M, const float *X, int64_t ldx, const dpep_mat *W, float beta, float *Y,
                    int64_t ldy);

/* Y[M, N] = X[M, K] W + beta Y, with W = [K, N] (K = W->rows, N = W->cols):
 * the other orientation, e.g. MLA's absorbed query (q_nope times a head's
 * slice of kv_b). Same contract as dpep_linear_nt. */
void dpep_linear_nn(int M, const float *X, int64_t ldx, const dpep_mat *W, float beta, float *Y,
                    int64_t ldy);

/* Several products in one parallel region (e.g. all experts of a layer):
 * the caller splits output columns over its own team and computes each
 * part on the calling thread with dpep_linear_nt_cols, results bit-identical
 * to dpep_linear_nt's (every element is one fixed-order sum whatever the
 * split). dpep_linear_col_chunk(M, W, n_threads) is the part width the
 * single-product split would take (a multiple of the path's column
 * alignment, about 256 KiB of weights, at least 4 parts per thread when N
 * allows); n0 must be a multiple of it, nn == it except for the last part.
 * nt_cols never starts threads. */
int dpep_linear_col_chunk(int M, const dpep_mat *W, int n_threads);
/* The column alignment parts of an M-row product with W need (16 on the
 * streaming path, 128 on the BLAS path; the second is a multiple of the
 * first, so a multiple of 128 suits both). */
int dpep_linear_col_align(int M, const dpep_mat *W);
void dpep_linear_nt_cols(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                         float beta, float *Y, int64_t ldy);
/* The same part of W again, for other rows, right after a call that read
 * it (runtime/engine's shared products: one rank computes a part for every
 * node rank's rows): computed exactly as dpep_linear_nt_cols, but its
 * weight bytes are not counted again in dpep_linear_stats (they come from
 * cache, not memory). */
void dpep_linear_nt_cols_again(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0,
                               int nn, float beta, float *Y, int64_t ldy);

/* `batch` products of one shape (the CPU twin of dpep_linear_cuda_batched):
 * product b on X + b*xs, the matrix of W's shape and row stride starting
 * b*ws elements after W->p, and Y + b*ys (MLA's per-head absorbed products
 * over one kv_b). nt as dpep_linear_nt, else as dpep_linear_nn. Outside a
 * parallel region the products are spread over the team, one per thread at
 * a time, each on its thread; every product's elements are what the single
 * product gives. dpep_linear_batched_part: products [b0, b1) only, one after
 * the other (each split over the team as dpep_linear_nt would, outside a
 * region). */
void dpep_linear_batched(bool nt, int batch, int M, const float *X, int64_t ldx, int64_t xs,
                         const dpep_mat *W, int64_t ws, float beta, float *Y, int64_t ldy,
                         int64_t ys);
void dpep_linear_batched_part(bool nt, int b0, int b1, int M, const float *X, int64_t ldx,
                              int64_t xs, const dpep_mat *W, int64_t ws, float beta, float *Y,
                              int64_t ldy, int64_t ys);

/* Product offload (runtime/engine's DP assist, engine_assist.h): while a
 * table is installed on the calling thread, dpep_linear_nt and
 * dpep_linear_batched called outside a parallel region first offer the
 * product to its entry (NULL: not offered). An entry returns true when it
 * has written Y — bit-identical to what the call would write, which holds
 * when it splits an nt product by output columns computed with
 * dpep_linear_nt_cols, and a batched one by products computed with
 * dpep_linear_batched_part, wherever those run — and false to let the call
 * run here as usual. Per thread (OpenMP workers never see it); the table is
 * borrowed until removed (NULL). dpep_linear_offloading: whether one is
 * installed and the caller is outside a parallel region (callers that build
 * a product out of column parts themselves, e.g. moe/'s MLP, then call whole
 * products so that the table sees them). dpep_linear_nn is never offered. */
typedef struct dpep_linear_offload {
    bool (*nt)(void *ctx, int M, const float *X, int64_t ldx, const dpep_mat *W, float beta,
               float *Y, int64_t ldy);
    bool (*batched)(void *ctx, bool nt, int batch, int M, const float *X, int64_t ldx, int64_t xs,
                    const dpep_mat *W, int64_t ws, float beta, float *Y, int64_t ldy, int64_t ys);
    void *ctx;
} dpep_linear_offload;
void dpep_linear_set_offload(const dpep_linear_offload *o);
bool dpep_linear_offloading(void);

/* Embedding gather: rows ids[0..n) of table [V, H] widened into out [n, H]. */
void dpep_linear_gather(const dpep_mat *table, const int32_t *ids, int64_t n, float *out);

/* Reserves the scratch a product with inner size up to max_k (and row
 * count up to max_n for the NN form) needs on each of up to n_threads
 * threads (0: OpenMP's maximum). Call once per size at create time, before
 * any product; grows only. Returns false when memory runs out. Not
 * thread-safe: call it from one thread, outside products. */
bool dpep_linear_reserve(int64_t max_k, int64_t max_n, int n_threads);

/* Which kernels this process uses: "avx512", "avx2" or "generic" (the
 * widest this CPU runs, unless forced or named by the environment variable
 * DPEP_CPU_LINEAR_KERNELS). */
const char *dpep_linear_isa(void);
/* Tests and benchmarks: run the named table ("generic", "avx2", "avx512";
 * NULL: back to the choice); false when this build or CPU has no such table.
 * Call it from one thread, outside products. */
bool dpep_linear_force_isa(const char *name);
/* dpep_linear_force_isa("generic") or NULL. */
void dpep_linear_force_generic(bool on);

/* The x86 tables' access order for products of one or two activation rows
 * (batch-1 decode; experts with two rows in batched decode): "rows" (a thread's share as two sequential streams, its halves)
 * or "streams" (8 rows in lockstep, page streams for rows under 4 KiB). Rows on AMD CPUs, streams elsewhere (what each was
 * measured fastest on), unless the environment variable DPEP_CPU_LINEAR_M1
 * names one. Results are bit-identical either way; the generic table has
 * one order only (its own). Tests and benchmarks may force one by name
 * (NULL: back to the choice; false for another name); call it from one
 * thread, outside products. */
const char *dpep_linear_m1_order(void);
bool dpep_linear_force_m1_order(const char *name);

/* BLAS (OpenBLAS) kernel family: the one OpenBLAS picked for this CPU at
 * load (openblas_get_corename, e.g. "SkylakeX"). */
const char *dpep_linear_blas_core(void);
/* The OpenBLAS kernel family to ask for when OpenBLAS fell back to a
 * generic one on a CPU newer than itself (Debian's 0.3.21 takes Intel
 * model 207, Emerald Rapids, for "Prescott": its SGEMM, the prefill's
 * products, then run ~3x slower): "SkylakeX" where the CPU has AVX-512
 * (F, CD, BW, DQ, VL), "Haswell" where it has AVX2 and FMA; NULL when the
 * pick is not a fallback, the CPU has neither, or OPENBLAS_CORETYPE is set.
 * OpenBLAS reads OPENBLAS_CORETYPE when it loads: the CLI re-executes
 * itself with it (runtime/cli/main.c) before anything else runs. */
const char *dpep_linear_blas_core_wanted(void);

/* BF16 products in a table that sums BF16 by pairs (AVX-512): the
 * activations are split into even- and odd-indexed halves once per call,
 * into the thread's reserved scratch (dpep_linear_reserve), rather than in
 * every tile; without scratch, or forced off here, in every tile. The same
 * bits either way. For tests and benchmarks; call it outside products. */
void dpep_linear_force_bf16_split(bool on);

/* The small-M crossover: a product with M <= this many rows takes the
 * weight-streaming kernel, a larger one BLAS (measured by bench/linear_perf
 * on the development machine; see bench/RESULTS.md). */
int dpep_linear_small_m(dpep_wtype t);
/* Overrides that crossover for type t (m >= 0: M <= m takes the streaming
 * kernel, so 0 forces BLAS and INT_MAX the kernel; m < 0 restores the
 * measured value): for the bench's crossover search and for tests. Not
 * thread-safe: call it outside products. */
void dpep_linear_set_small_m(dpep_wtype t, int m);

/* Statistics of this process since start (for benches and tests): calls
 * and weight bytes read by each path. */
typedef struct dpep_linear_stats {
    int64_t small_calls, blas_calls;
    double small_bytes, blas_bytes;
    int max_team; /* most threads one product was split over (1: never split) */
} dpep_linear_stats;
void dpep_linear_get_stats(dpep_linear_stats *out);

/* ---- On a CUDA device (CUDA builds only; linear_cuda.cu) -----------------
 * Every pointer is device memory of the CURRENT CUDA device (W->p too; the
 * dpep_mat struct itself is host memory); the work is queued on the calling
 * thread's default stream (CUDA builds use --default-stream per-thread), in
 * order with the caller's kernels, and nothing here synchronizes, so a
 * fault shows at the caller's next sync (and a CUDA graph can capture it).
 *
 * Precision: a float32 W takes cuBLAS SGEMM in pedantic math (no TF32): the
 * CPU's products up to the order of the sums. A BF16 / F16 W is read as
 * stored: X's rows are rounded to W's type (nearest even) and multiplied on
 * tensor cores with float32 accumulation and float32 Y (relative error of
 * a BF16 product against the CPU's, which widens W and keeps X float32:
 * about 2^-9 ‖X‖‖W‖ per element, bounded by the op test at 1e-2). With an
 * F16 W, X's elements above 65504 in magnitude become inf (the CPU keeps X
 * float32): F16 checkpoints with such activations need float32 weights
 * (model.dtype f32); BF16 and FP8 have float32's range. An FP8 W
 * (with its block scales) gives BF16 operands — its fp8 x scale rounded
 * once to BF16, X rounded to BF16 — read once by a kernel of our own for
 * products of up to 64 rows (decode), dequantized into a buffer for cuBLAS
 * beyond (op test bound 1e-2; the two agree up to the order of the sums).
 * The gather takes float32 / BF16 / F16 tables only.
 *
 * Memory: the rounded rows go to a per-device workspace sized by
 * dpep_linear_cuda_reserve at create; a product bigger than the workspace
 * runs in chunks of rows that fit (no allocation), and only a product whose
 * single row does not fit grows it (logged at debug level). One host thread
 * per device (the workspace is the device's; each thread's default stream
 * runs on its own): calls from several threads are serialized by a mutex at
 * launch, which does not order their kernels.
 * Errors are logged ("linear cuda OP (device D): call -> error") and
 * returned: DPEP_ERR_CUDA, DPEP_ERR_CUBLAS, DPEP_ERR_INTERNAL (bad
 * arguments: a NULL matrix, a dimension beyond 2^31). */

/* As dpep_linear_nt / dpep_linear_nn (same shapes, beta 0 or 1). */
dpep_status dpep_linear_cuda_nt(int M, const float *X, int64_t ldx, const dpep_mat *W, float beta,
                                float *Y, int64_t ldy);
dpep_status dpep_linear_cuda_nn(int M, const float *X, int64_t ldx, const dpep_mat *W, float beta,
                                float *Y, int64_t ldy);
/* `batch` products of one shape, product b on X + b*xs, the matrix of W's
 * shape and row stride starting b*ws elements after W->p, and Y + b*ys (e.g.
 * MLA's per-head absorbed products over one kv_b). nt as dpep_linear_nt,
 * else as dpep_linear_nn. */
dpep_status dpep_linear_cuda_batched(bool nt, int batch, int M, const float *X, int64_t ldx,
                                     int64_t xs, const dpep_mat *W, int64_t ws, float beta,
                                     float *Y, int64_t ldy, int64_t ys);
/* As dpep_linear_gather, with ids in device memory; an id outside
 * [0, table->rows) gives a row of NaN. */
dpep_status dpep_linear_cuda_gather(const dpep_mat *table, const int32_t *ids, int64_t n,
                                    float *out);
/* Makes the current device's handles and a workspace of at least `elems`
 * rounded activations (the largest M x K x batch of a 16-bit product the
 * caller will run; grows only; at most 2^25 elements, 64 MB: bigger
 * products run in chunks of rows). Call at create time, before any product. */
dpep_status dpep_linear_cuda_reserve(int64_t elems);
/* The buffer FP8 matrices are dequantized into for a product: `elems` BF16
 * elements (the largest FP8 matrix's rows x cols; at most 2^26, 128 MB: a
 * bigger one runs in chunks of rows). Call at create when the weights hold
 * FP8 (a product otherwise makes a buffer of 64 rows on first use). */
dpep_status dpep_linear_cuda_reserve_fp8(int64_t elems);
/* Tests only: use at most max_elems of the workspace, so that products run
 * in chunks; -1 lifts the limit. */
void dpep_linear_cuda_test_workspace(int64_t max_elems);
/* Tests and benches only: the FP8 products' path — 0 the default (up to
 * 64 rows: the direct kernel, reading each FP8 byte once, where its
 * alignment holds; else dequantize, then cuBLAS), 1 always dequantize, 2
 * the direct kernel or DPEP_ERR_INTERNAL (an nt product it cannot take). */
void dpep_linear_cuda_test_fp8_path(int mode);

#ifdef __cplusplus
}
#endif
#endif
