/* linear_simd.h — the body of runtime/linear's x86 kernel tables, written
 * once and compiled per instruction set by linear_avx2.c (8 lanes) and
 * linear_avx512.c (16 lanes) with per-function target attributes. The
 * includer defines:
 *
 *   LIN_INLINE, LIN_FN     the attributes of the helpers and the entry points
 *   LIN_NAME(x)            the ISA-suffixed name of an entry point
 *   V, VW, VMASK           vector type, float lanes, tail-mask type
 *   LIN_MR                 activation rows per NT tile (NR = 4 weight rows)
 *   V_ZERO, V_LOADU, V_STOREU, V_FMA, V_ADD, V_BCAST (one float to all
 *   lanes), V_MASKLOAD(p, mask)        lanes [0, r) of tail_mask(r), zeros
 *   tail_mask(r), load_wv(row, t, k) (VW weights of type t as f32),
 *   load_w_tail(row, t, k, r, mask) (r < VW of them, zero filled, nothing
 *   read past k + r), HSUM(v) (the table's fixed reduction tree), HSUM4(a0,
 *   a1, a2, a3) (an __m128 whose lane i is HSUM(a_i) bit for bit).
 *
 * Summation order (the contract of linear_internal.h): every output element
 * of the NT form is one VW-lane accumulator over k in steps of VW (lane l
 * holds k = l mod VW, one FMA per step, the K % VW tail as a last
 * zero-padded step; BF16 in a table that defines LIN_BF16_PAIRS: see
 * nt_tile_pairs), reduced by HSUM's tree; every tile shape performs
 * exactly these operations per element, so a result does not depend on M,
 * on the tile that computed it, or on n0/nn (it does depend on the table:
 * the AVX2 and AVX-512 tables sum in different orders). The NN form is one
 * fused multiply-add per k in order, scalar or vector alike, so its results
 * are the same in every table. Access order: see linear_avx2.c. */

/* In-stream prefetch distance of 16-bit weights (nt_prefetch; bytes ahead of
 * the k-step in each row; measured on the Intel VM, one thread: BF16 rows of
 * 2 and 4 KiB 13.3-13.6 -> 14.8-15.3 GB/s at 384-768, f32 rows no gain; a
 * line per 64 bytes consumed). */
#define LINEAR_STREAM_AHEAD 512

/* The kernels' weight type argument t for BF16 pairs whose activations were
 * split beforehand (x_split; tables that define LIN_BF16_PAIRS). */
#define LIN_T_BF16_XS 100

/* ---------------------------------------------------------------------- */
/* NT: Y[m, n] = sum_k X[m, k] W[n, k]                                     */
/* ---------------------------------------------------------------------- */
/* The tile's NR x MR results: each accumulator reduced by the table's
 * tree, written to (beta 0) or added into (beta 1) Y. */
LIN_INLINE void nt_store(const int NR, const int MR, V acc[8][LIN_MR], float beta, float *Y,
                         int64_t ldy, int ys)
{
#pragma GCC unroll 8
    for (int j = 0; j < MR; j++) {
        float *y = Y + (size_t)j * ldy;
        if (NR % 4 == 0 && ys == 1) {
#pragma GCC unroll 8
            for (int i = 0; i < NR; i += 4) {
                __m128 s = HSUM4(acc[i][j], acc[i + 1][j], acc[i + 2][j], acc[i + 3][j]);
                if (beta != 0.0f) s = _mm_add_ps(s, _mm_loadu_ps(y + i));
                _mm_storeu_ps(y + i, s);
            }
        } else if (NR % 4 == 0) {
#pragma GCC unroll 8
            for (int i = 0; i < NR; i += 4) {
                float v[4];
                _mm_storeu_ps(v, HSUM4(acc[i][j], acc[i + 1][j], acc[i + 2][j], acc[i + 3][j]));
                for (int q = 0; q < 4; q++) {
                    float *o = y + (size_t)(i + q) * (size_t)ys;
                    *o = beta != 0.0f ? *o + v[q] : v[q];
                }
            }
        } else {
#pragma GCC unroll 8
            for (int i = 0; i < NR; i++) {
                float s = HSUM(acc[i][j]);
                float *o = y + (size_t)i * (size_t)ys;
                *o = beta != 0.0f ? *o + s : s;
            }
        }
    }
}

/* One tile: NR weight rows [n, n + NR) x MR activation rows [m, m + MR),
 * NR * MR accumulators live in registers over the whole of K, each weight
 * vector loaded (and widened) once for the MR rows. NR, MR and t are
 * constants at every call site, so the loops unroll completely. */
LIN_INLINE void nt_tile(const int NR, const int MR, const int t, const int PF, const int SP,
                         int K, const float *X, int64_t ldx, const char *w, size_t wld, float beta,
                         float *Y, int64_t ldy, int ys)
{
    /* SP: each row stream prefetched LINEAR_STREAM_AHEAD bytes ahead, a
     * line per 64 bytes consumed (16-bit weights, nt_prefetch) */
    /* ys: output columns between the tile's weight rows (1, or R for a
     * tile of page streams) */
    /* PF: lines of the next tile's block [w + NR wld, w + 2 NR wld) to
     * prefetch per k-step so that the sweep ends with the tile */
    const size_t blk = (size_t)NR * wld;
    const size_t per = PF && K >= VW ? (blk / 64 + (size_t)(K / VW) - 1) / (size_t)(K / VW) : 0;
    const char *pf = w + blk;
    V acc[8][LIN_MR];
#pragma GCC unroll 8
    for (int i = 0; i < NR; i++)
#pragma GCC unroll 8
        for (int j = 0; j < MR; j++) acc[i][j] = V_ZERO();
    int64_t k = 0;
    for (; k + VW <= K; k += VW) {
        if (PF) /* prefetches never fault: past the matrix's end is harmless */
            for (size_t q = 0; q < per; q++, pf += 64) _mm_prefetch(pf, _MM_HINT_T0);
        if (SP && (k & 31) == 0) /* 16-bit weights: 64 bytes per 32 of k */
#pragma GCC unroll 8
            for (int i = 0; i < NR; i++)
                _mm_prefetch(w + (size_t)i * wld + (size_t)k * 2 + LINEAR_STREAM_AHEAD, _MM_HINT_T0);
        V wv[8];
#pragma GCC unroll 8
        for (int i = 0; i < NR; i++) wv[i] = load_wv(w + (size_t)i * wld, t, k);
#pragma GCC unroll 8
        for (int j = 0; j < MR; j++) {
            V xv = V_LOADU(X + (size_t)j * ldx + k);
#pragma GCC unroll 8
            for (int i = 0; i < NR; i++) acc[i][j] = V_FMA(wv[i], xv, acc[i][j]);
        }
    }
    if (k < K) {
        const int r = (int)(K - k);
        const VMASK mask = tail_mask(r);
        V wv[8];
#pragma GCC unroll 8
        for (int i = 0; i < NR; i++) wv[i] = load_w_tail(w + (size_t)i * wld, t, k, r, mask);
#pragma GCC unroll 8
        for (int j = 0; j < MR; j++) {
            V xv = V_MASKLOAD(X + (size_t)j * ldx + k, mask);
#pragma GCC unroll 8
            for (int i = 0; i < NR; i++) acc[i][j] = V_FMA(wv[i], xv, acc[i][j]);
        }
    }
    nt_store(NR, MR, acc, beta, Y, ldy, ys);
}

#ifdef LIN_BF16_PAIRS
/* BF16 weights by pairs (tables that define LIN_BF16_PAIRS: the AVX-512
 * one). A BF16 is the high half of its f32, so a load of 2 VW weights
 * widens without a conversion instruction: shifted left 16 bits, each
 * 32-bit lane gives its even-indexed weight, masked to its high half the
 * odd-indexed one (PAIR_SPLIT). The activations' 2 VW values are split the
 * same way by one two-source permute each (X_PAIRS), once per activation
 * row for the NR weight rows. Per element: lane l of the accumulator takes
 * k = 2 VW j + 2 l, then k + 1, for j = 0, 1, ... (two FMAs per k-step, the
 * K % (2 VW) tail as a last zero-padded step), then HSUM's tree. The
 * caller (nt_rows) blocks activation rows by LIN_MR_PAIRS (two weight
 * vectors per row stay live). The includer defines VI (an integer vector),
 * PAIR_LOAD(p) / PAIR_TAIL(p, r) (2 VW / r < 2 VW BF16 values, zero
 * filled, nothing read past p + r), PAIR_SPLIT(v, e, o) and X_PAIRS(p, r,
 * e, o) (r >= 2 VW: all, else r values and zeros). */
/* One k-step of a pairs tile: the 2 VW weights from k of each row (full),
 * or the last r < 2 VW of them zero-padded, two FMAs per accumulator. */
LIN_INLINE void pairs_step(const int NR, const int MR, const int t, const int full, int r,
                           const char *w, size_t wld, int64_t k, const float *X, int64_t ldx,
                           V acc[8][LIN_MR])
{
    V we[8], wo[8];
#pragma GCC unroll 8
    for (int i = 0; i < NR; i++) {
        const uint16_t *row = (const uint16_t *)(w + (size_t)i * wld) + k;
        VI v = full ? PAIR_LOAD(row) : PAIR_TAIL(row, r);
        PAIR_SPLIT(v, we[i], wo[i]);
    }
#pragma GCC unroll 8
    for (int j = 0; j < MR; j++) {
        V xe, xo;
        if (t == LIN_T_BF16_XS) { /* split beforehand (x_split), zero padded */
            xe = V_LOADU(X + (size_t)j * ldx + k);
            xo = V_LOADU(X + (size_t)j * ldx + k + VW);
        } else {
            X_PAIRS(X + (size_t)j * ldx + k, r, xe, xo);
        }
#pragma GCC unroll 8
        for (int i = 0; i < NR; i++) {
            acc[i][j] = V_FMA(we[i], xe, acc[i][j]);
            acc[i][j] = V_FMA(wo[i], xo, acc[i][j]);
        }
    }
}

LIN_INLINE void nt_tile_pairs(const int NR, const int MR, const int t, const int PF, const int SP, int K,
                              const float *X, int64_t ldx, const char *w, size_t wld, float beta,
                              float *Y, int64_t ldy, int ys)
{
    const int KW = 2 * VW;
    const size_t blk = (size_t)NR * wld;
    const size_t per = PF && K >= KW ? (blk / 64 + (size_t)(K / KW) - 1) / (size_t)(K / KW) : 0;
    const char *pf = w + blk;
    V acc[8][LIN_MR];
#pragma GCC unroll 8
    for (int i = 0; i < NR; i++)
#pragma GCC unroll 8
        for (int j = 0; j < MR; j++) acc[i][j] = V_ZERO();
    int64_t k = 0;
    for (; k + KW <= K; k += KW) {
        if (PF)
            for (size_t q = 0; q < per; q++, pf += 64) _mm_prefetch(pf, _MM_HINT_T0);
        if (SP) /* 2 VW weights: 64 bytes of each row per k-step */
#pragma GCC unroll 8
            for (int i = 0; i < NR; i++)
                _mm_prefetch(w + (size_t)i * wld + (size_t)k * 2 + LINEAR_STREAM_AHEAD, _MM_HINT_T0);
        pairs_step(NR, MR, t, 1, KW, w, wld, k, X, ldx, acc);
    }
    if (k < K) pairs_step(NR, MR, t, 0, (int)(K - k), w, wld, k, X, ldx, acc);
    nt_store(NR, MR, acc, beta, Y, ldy, ys);
}
#define LIN_PAIRS(t) ((t) == DPEP_WT_BF16 || (t) == LIN_T_BF16_XS)
#else
#define LIN_PAIRS(t) 0
#define LIN_MR_PAIRS LIN_MR
LIN_INLINE void nt_tile_pairs(const int NR, const int MR, const int t, const int PF, const int SP, int K,
                              const float *X, int64_t ldx, const char *w, size_t wld, float beta,
                              float *Y, int64_t ldy, int ys)
{
    (void)NR, (void)MR, (void)t, (void)PF, (void)SP, (void)K, (void)X, (void)ldx, (void)w, (void)wld;
    (void)beta, (void)Y, (void)ldy, (void)ys;
}
#endif

/* One tile of any weight type: BF16 by pairs where the table does that. */
LIN_INLINE void nt_tile_t(const int NR, const int MR, const int t, const int PF, const int SP,
                          int K, const float *X, int64_t ldx, const char *w, size_t wld,
                          float beta, float *Y, int64_t ldy, int ys)
{
    if (LIN_PAIRS(t))
        nt_tile_pairs(NR, MR, t, PF, SP, K, X, ldx, w, wld, beta, Y, ldy, ys);
    else
        nt_tile(NR, MR, t, PF, SP, K, X, ldx, w, wld, beta, Y, ldy, ys);
}

/* Activation rows [0, M) for weight rows [n, n + NR): blocks of LIN_MR
 * rows (the accumulators and NR weight vectors fill the registers), then
 * the remainder as one tile. */
LIN_INLINE void nt_rows(const int NR, const int t, const int PF, const int SP, int M, int K,
                        const float *X, int64_t ldx, const char *w, size_t wld, float beta,
                        float *Y, int64_t ldy, int ys)
{
    const int MRB = LIN_PAIRS(t) ? LIN_MR_PAIRS : LIN_MR;
    int m = 0;
    for (; m + MRB <= M; m += MRB) {
        if (LIN_PAIRS(t))
            nt_tile_t(NR, LIN_MR_PAIRS, t, PF, SP, K, X + (size_t)m * ldx, ldx, w, wld, beta,
                      Y + (size_t)m * ldy, ldy, ys);
        else
            nt_tile_t(NR, LIN_MR, t, PF, SP, K, X + (size_t)m * ldx, ldx, w, wld, beta,
                      Y + (size_t)m * ldy, ldy, ys);
    }
    const float *Xm = X + (size_t)m * ldx;
    float *Ym = Y + (size_t)m * ldy;
    switch (M - m) {
    case 1: nt_tile_t(NR, 1, t, PF, SP, K, Xm, ldx, w, wld, beta, Ym, ldy, ys); break;
    case 2: nt_tile_t(NR, 2, t, PF, SP, K, Xm, ldx, w, wld, beta, Ym, ldy, ys); break;
#if LIN_MR > 3
    case 3: nt_tile_t(NR, 3, t, PF, SP, K, Xm, ldx, w, wld, beta, Ym, ldy, ys); break;
    case 4: nt_tile_t(NR, 4, t, PF, SP, K, Xm, ldx, w, wld, beta, Ym, ldy, ys); break;
    case 5: nt_tile_t(NR, 5, t, PF, SP, K, Xm, ldx, w, wld, beta, Ym, ldy, ys); break;
#endif
    default: break;
    }
}

/* Rows per page stream (see "Access order"): the rows of one DPEP_PAGE, at
 * most LINEAR_PAGE_ROWS_MAX (tiny rows: the group would outgrow a chunk). */
#define LINEAR_PAGE_ROWS_MAX 16

LIN_INLINE void nt_body(const int t, const int PF, const int SP, int M, const float *X,
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
                    nt_tile_t(8, 1, t, 0, SP, K, X, ldx, w + (size_t)(n + r) * wld, sw, beta,
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
            nt_tile_t(8, 1, t, PF, PF ? 0 : SP, K, X, ldx, w + (size_t)n * wld, wld, beta, y + n, ldy,
                    1);
    for (; n + 4 <= nn; n += 4)
        nt_rows(4, t, PF, PF ? 0 : SP, M, K, X, ldx, w + (size_t)n * wld, wld, beta, y + n, ldy, 1);
    for (; n < nn; n++)
        nt_rows(1, t, PF, PF ? 0 : SP, M, K, X, ldx, w + (size_t)n * wld, wld, beta, y + n, ldy, 1);
}

/* 16-bit weights: page streams with the in-stream prefetch (pf), the
 * prefetch alone (sp: rows of a page or more), or neither. */
LIN_INLINE void nt_16bit(const int t, bool pf, bool sp, int M, const float *X, int64_t ldx,
                         const dpep_mat *W, int n0, int nn, float beta, float *Y, int64_t ldy)
{
    if (pf)
        nt_body(t, 1, 1, M, X, ldx, W, n0, nn, beta, Y, ldy);
    else if (sp)
        nt_body(t, 0, 1, M, X, ldx, W, n0, nn, beta, Y, ldy);
    else
        nt_body(t, 0, 0, M, X, ldx, W, n0, nn, beta, Y, ldy);
}

/* Whether the products of M rows prefetch (page streams for short rows,
 * the in-stream prefetch of 16-bit weights): at every M of the small path,
 * on every CPU. It was M <= 3 only until measured at larger M: without it
 * M = 4-8 ran latency-bound on the Zen 4 VM (one thread, geometric means
 * over the small preset's shapes: f32 M = 4-8 1.13-1.18x, BF16 1.48-1.62x,
 * M = 16-32 1.04-1.05x and 1.15-1.23x; bench/RESULTS.md "Small-M products,
 * Zen 4") and on the Intel VM too (2 threads: BF16 M = 4-32 1.23-1.84x,
 * f32 M = 4-16 1.07-1.13x; "Prefetch at every small M, Intel"). */
LIN_INLINE bool nt_prefetch(int M)
{
    (void)M;
    return true;
}

/* M <= LINEAR_ROWS_MAX_M in row order (linear_m1_rows): the thread's rows
 * as two sequential streams, its first and its second half, row n of each
 * taken together (rows are contiguous, so each half is read start to end).
 * Two rows give two independent FMA chains per activation row (a BF16 pair
 * step is two dependent FMAs: one row alone ran ~0.8x); two *adjacent*
 * rows in lockstep ran 0.4x on Zen 4 (two streams in one page), as 8 did
 * 0.8x. Each element by the same operations as in any tile, so results
 * equal the streams' bit for bit. */
LIN_INLINE void nt_rows_seq(const int t, int M, const float *X, int64_t ldx, const dpep_mat *W,
                            int n0, int nn, float beta, float *Y, int64_t ldy)
{
    const int K = W->cols;
    const size_t wld = (size_t)W->ld * dpep_wtype_size(W->t);
    const char *w = dpep_mat_at(*W, n0, 0);
    const int h = nn / 2;
    for (int n = 0; n < h; n++)
        nt_rows(2, t, 0, 0, M, K, X, ldx, w + (size_t)n * wld, (size_t)h * wld, beta, Y + n0 + n,
                ldy, h);
    if (nn & 1)
        nt_rows(1, t, 0, 0, M, K, X, ldx, w + (size_t)(nn - 1) * wld, wld, beta, Y + n0 + nn - 1,
                ldy, 1);
}

/* One product of weight type t (or LIN_T_BF16_XS): row order at M <=
 * LINEAR_ROWS_MAX_M where linear_m1_rows() holds; else page streams (and
 * the sweep for the rows left over) for short rows (several per page),
 * 16-bit weights also prefetching ahead in each stream (nt_prefetch). */
LIN_INLINE void nt_plan(const int t, int M, const float *X, int64_t ldx, const dpep_mat *W,
                        int n0, int nn, float beta, float *Y, int64_t ldy)
{
    if (M <= LINEAR_ROWS_MAX_M && linear_m1_rows()) {
        nt_rows_seq(t, M, X, ldx, W, n0, nn, beta, Y, ldy);
        return;
    }
    const bool sp = nt_prefetch(M);
    const bool pf = sp && (size_t)W->ld * dpep_wtype_size(W->t) < DPEP_PAGE;
    if (t != DPEP_WT_F32)
        nt_16bit(t, pf, sp, M, X, ldx, W, n0, nn, beta, Y, ldy);
    else if (pf)
        nt_body(DPEP_WT_F32, 1, 0, M, X, ldx, W, n0, nn, beta, Y, ldy);
    else
        nt_body(DPEP_WT_F32, 0, 0, M, X, ldx, W, n0, nn, beta, Y, ldy);
}

static LIN_FN void LIN_NAME(nt)(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
                            float beta, float *Y, int64_t ldy)
{
    switch (W->t) {
    case DPEP_WT_F32: nt_plan(DPEP_WT_F32, M, X, ldx, W, n0, nn, beta, Y, ldy); break;
    case DPEP_WT_BF16: nt_plan(DPEP_WT_BF16, M, X, ldx, W, n0, nn, beta, Y, ldy); break;
    default: nt_plan(DPEP_WT_F16, M, X, ldx, W, n0, nn, beta, Y, ldy); break;
    }
}

#ifdef LIN_BF16_PAIRS
/* BF16 pairs on activations split beforehand: Xs is x_split's layout (rows
 * of ldxs floats), W BF16. The same operations per element as nt's, on the
 * same values (the split's zero padding stands where the tail step's masked
 * loads put zeros), so results equal nt's bit for bit; what it saves is the
 * two permutes per activation row and k-step of every tile. */
static LIN_FN void LIN_NAME(nt_xs)(int M, const float *Xs, int64_t ldxs, const dpep_mat *W, int n0,
                               int nn, float beta, float *Y, int64_t ldy)
{
    nt_plan(LIN_T_BF16_XS, M, Xs, ldxs, W, n0, nn, beta, Y, ldy);
}

/* Activation rows [0, M) of K split as PAIR_SPLIT splits weights, into rows
 * of ldxs = K rounded up to 2 VW floats: each 2 VW values from k = 2 VW j
 * as VW even-indexed then VW odd-indexed ones, the last block zero padded. */
static LIN_FN void LIN_NAME(x_split)(int M, const float *X, int64_t ldx, int K, float *Xs,
                                 int64_t ldxs)
{
    for (int m = 0; m < M; m++) {
        const float *x = X + (size_t)m * ldx;
        float *d = Xs + (size_t)m * ldxs;
        for (int k = 0; k < K; k += 2 * VW) {
            V e, o;
            X_PAIRS(x + k, K - k, e, o);
            V_STOREU(d + k, e);
            V_STOREU(d + k + VW, o);
        }
    }
}
#endif

/* ---------------------------------------------------------------------- */
/* NN: Y[m, n] = sum_k X[m, k] W[k, n] (axpy over the rows of W)           */
/* ---------------------------------------------------------------------- */
/* Columns [c, c + VW NV) x rows [0, MR): acc[j][v] += X[j, k] W[k, c + VW v..]
 * for k in order; each weight vector loaded once for the MR rows. */
LIN_INLINE void nn_tile(const int NV, const int MR, const int t, int K, const float *X,
                         int64_t ldx, const char *w, size_t wld, float beta, float *Y, int64_t ldy)
{
    V acc[2][4];
#pragma GCC unroll 8
    for (int j = 0; j < MR; j++)
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) acc[j][v] = V_ZERO();
    for (int64_t k = 0; k < K; k++) {
        const char *wr = w + (size_t)k * wld;
        V wv[4];
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) wv[v] = load_wv(wr, t, VW * v);
#pragma GCC unroll 8
        for (int j = 0; j < MR; j++) {
            V xb = V_BCAST(X + (size_t)j * ldx + k);
#pragma GCC unroll 8
            for (int v = 0; v < NV; v++) acc[j][v] = V_FMA(wv[v], xb, acc[j][v]);
        }
    }
#pragma GCC unroll 8
    for (int j = 0; j < MR; j++) {
        float *y = Y + (size_t)j * ldy;
#pragma GCC unroll 8
        for (int v = 0; v < NV; v++) {
            V s = acc[j][v];
            if (beta != 0.0f) s = V_ADD(s, V_LOADU(y + VW * v));
            V_STOREU(y + VW * v, s);
        }
    }
}

LIN_INLINE float wscalar(const char *row, int t, int c)
{
    if (t == DPEP_WT_F32) return ((const float *)row)[c];
    if (t == DPEP_WT_BF16) return dpep_bf16_to_f32(((const uint16_t *)row)[c]);
    return _cvtsh_ss(((const uint16_t *)row)[c]);
}

LIN_INLINE void nn_cols(const int NV, const int t, int M, int K, const float *X, int64_t ldx,
                         const char *w, size_t wld, float beta, float *Y, int64_t ldy)
{
    int m = 0;
    for (; m + 2 <= M; m += 2)
        nn_tile(NV, 2, t, K, X + (size_t)m * ldx, ldx, w, wld, beta, Y + (size_t)m * ldy, ldy);
    if (m < M)
        nn_tile(NV, 1, t, K, X + (size_t)m * ldx, ldx, w, wld, beta, Y + (size_t)m * ldy, ldy);
}

LIN_INLINE void nn_body(const int t, int M, const float *X, int64_t ldx, const dpep_mat *W, int n0,
                         int nn, float beta, float *Y, int64_t ldy)
{
    const int K = W->rows;
    const size_t es = dpep_wtype_size(W->t), wld = (size_t)W->ld * es;
    const char *w = dpep_mat_at(*W, 0, n0);
    float *y = Y + n0;
    int c = 0;
    for (; c + 4 * VW <= nn; c += 4 * VW)
        nn_cols(4, t, M, K, X, ldx, w + c * es, wld, beta, y + c, ldy);
    for (; c + VW <= nn; c += VW) nn_cols(1, t, M, K, X, ldx, w + c * es, wld, beta, y + c, ldy);
    for (; c < nn; c++) /* the last < VW columns: the same FMA per k, scalar */
        for (int m = 0; m < M; m++) {
            const float *x = X + (size_t)m * ldx;
            float s = 0.0f;
            for (int64_t k = 0; k < K; k++)
                s = __builtin_fmaf(wscalar(w + (size_t)k * wld, t, c), x[k], s);
            float *yy = y + (size_t)m * ldy + c;
            *yy = beta != 0.0f ? *yy + s : s;
        }
}

static LIN_FN void LIN_NAME(nn)(int M, const float *X, int64_t ldx, const dpep_mat *W, int n0, int nn,
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
static LIN_FN void LIN_NAME(widen)(const void *src, dpep_wtype t, int64_t n, float *dst)
{
    if (t == DPEP_WT_F32) {
        memcpy(dst, src, sizeof(float) * (size_t)n);
        return;
    }
    const uint16_t *s = src;
    int64_t i = 0;
    if (t == DPEP_WT_BF16) {
        for (; i + VW <= n; i += VW) V_STOREU(dst + i, load_wv(s, DPEP_WT_BF16, i));
        for (; i < n; i++) dst[i] = dpep_bf16_to_f32(s[i]);
        return;
    }
    for (; i + VW <= n; i += VW) V_STOREU(dst + i, load_wv(s, DPEP_WT_F16, i));
    for (; i < n; i++) dst[i] = _cvtsh_ss(s[i]);
}
