/* mla_core_simd.h — the vector body of the CPU decode core (see
 * attn_internal.h, "CPU decode core"), written once and included by
 * mla_core_x86.c for each instruction set. The includer defines:
 *
 *   CORE_FN(x)        the ISA-suffixed name of x (static functions)
 *   CORE_ATTR         the target attribute of every function here
 *   V, VW             the vector type and its float lanes
 *   V_ZERO(), V_SET1(f), V_LOAD(p), V_STORE(p, v), V_FMA(a, b, c) (a b + c),
 *   V_MUL, V_ADD, V_MAX, V_ROUND (to nearest), V_LT_ZERO_MASK...
 *   V_LOADN(p, n), V_STOREN(p, v, n)   lanes [0, n) only, n < VW, zero filled
 *   V_HSUM(v), V_HMAX(v)               one float from the lanes
 *   V_EXP2I(n)                         2^n for integral-valued n in [-126, 127]
 *   V_FLUSH(x, r)                      r where x >= CORE_EXP_MIN, else 0
 *   S_HB, S_TB        the scores tile: heads x cache rows
 *   P_HB, P_CV        the P.V tile: heads x vectors of latent columns
 *   CORE_REDUCE_TILE(acc, out)  sums of the S_HB * S_TB accumulators acc[h][t]
 *                               into out[h * S_TB + t] (one fixed tree)
 *
 * Order of operations (the same for every tile position, so a score or an
 * output element does not depend on where its tile fell): a score is one
 * VW-lane accumulator over k in steps of VW (the tail zero-filled), reduced
 * by CORE_REDUCE_TILE's tree, times the scale; an output column is the
 * previous value times alpha, then one FMA per cache row in order. */

/* e^x for x <= 0 (what the core feeds it): x = n ln2 + r, |r| <= ln2/2,
 * e^r by Cephes' degree-6 polynomial (about 1 ulp), times 2^n; x below
 * CORE_EXP_MIN (where e^x leaves the normal floats) gives 0. */
static inline __attribute__((always_inline)) CORE_ATTR V CORE_FN(vexp)(V x)
{
    const V xc = V_MAX(x, V_SET1(CORE_EXP_MIN));
    const V n = V_ROUND(V_MUL(xc, V_SET1(1.44269504088896341f)));
    V r = V_FMA(n, V_SET1(-0.693359375f), xc);
    r = V_FMA(n, V_SET1(2.12194440e-4f), r);
    V p = V_SET1(1.9875691500e-4f);
    p = V_FMA(p, r, V_SET1(1.3981999507e-3f));
    p = V_FMA(p, r, V_SET1(8.3334519073e-3f));
    p = V_FMA(p, r, V_SET1(4.1665795894e-2f));
    p = V_FMA(p, r, V_SET1(1.6666665459e-1f));
    p = V_FMA(p, r, V_SET1(5.0000001201e-1f));
    p = V_FMA(p, V_MUL(r, r), V_ADD(r, V_SET1(1.0f)));
    return V_FLUSH(x, V_MUL(p, V_EXP2I(n)));
}

/* Scores of heads [h, h + HB) x cache rows [t, t + TB): dot products over
 * the R columns, times scale, into S[hh * lds + tt]. */
static inline __attribute__((always_inline)) CORE_ATTR void
CORE_FN(score_tile)(const int HB, const int TB, int R, float scale, const float *q,
                    const float *kv, float *S, int lds)
{
    V acc[S_HB][S_TB];
#pragma GCC unroll 8
    for (int i = 0; i < S_HB; i++)
#pragma GCC unroll 8
        for (int j = 0; j < S_TB; j++) acc[i][j] = V_ZERO();
    int k = 0;
    for (; k + VW <= R; k += VW) {
        V kr[S_TB];
#pragma GCC unroll 8
        for (int j = 0; j < TB; j++) kr[j] = V_LOAD(kv + (size_t)j * (size_t)R + k);
#pragma GCC unroll 8
        for (int i = 0; i < HB; i++) {
            const V qv = V_LOAD(q + (size_t)i * (size_t)R + k);
#pragma GCC unroll 8
            for (int j = 0; j < TB; j++) acc[i][j] = V_FMA(qv, kr[j], acc[i][j]);
        }
    }
    if (k < R) {
        const int n = R - k;
        V kr[S_TB];
#pragma GCC unroll 8
        for (int j = 0; j < TB; j++) kr[j] = V_LOADN(kv + (size_t)j * (size_t)R + k, n);
#pragma GCC unroll 8
        for (int i = 0; i < HB; i++) {
            const V qv = V_LOADN(q + (size_t)i * (size_t)R + k, n);
#pragma GCC unroll 8
            for (int j = 0; j < TB; j++) acc[i][j] = V_FMA(qv, kr[j], acc[i][j]);
        }
    }
    float out[S_HB * S_TB];
    CORE_REDUCE_TILE(acc, out);
    for (int i = 0; i < HB; i++)
        for (int j = 0; j < TB; j++) S[(size_t)i * (size_t)lds + j] = out[i * S_TB + j] * scale;
}

/* O[h + hh, c + ...] = (first ? 0 : O * alpha[hh]) + sum_t P[hh, t] kv[t, c + ...]
 * over CV vectors of columns (the last one lanes [0, tail) only when
 * tail > 0). */
static inline __attribute__((always_inline)) CORE_ATTR void
CORE_FN(pv_tile)(const int HB, const int CV, int tail, int R, int nt, const float *P, int ldp,
                 const float *kv, const float *alpha, int first, float *O, int L)
{
    V acc[P_HB][P_CV];
#pragma GCC unroll 8
    for (int i = 0; i < HB; i++) {
        const V a = V_SET1(first ? 0.0f : alpha[i]);
#pragma GCC unroll 8
        for (int v = 0; v < CV; v++) {
            const float *o = O + (size_t)i * (size_t)L + (size_t)v * VW;
            if (first)
                acc[i][v] = V_ZERO();
            else if (tail && v == CV - 1)
                acc[i][v] = V_MUL(V_LOADN(o, tail), a);
            else
                acc[i][v] = V_MUL(V_LOAD(o), a);
        }
    }
    for (int t = 0; t < nt; t++) {
        const float *kr = kv + (size_t)t * (size_t)R;
        V kvv[P_CV];
#pragma GCC unroll 8
        for (int v = 0; v < CV; v++)
            kvv[v] = tail && v == CV - 1 ? V_LOADN(kr + (size_t)v * VW, tail) : V_LOAD(kr + (size_t)v * VW);
#pragma GCC unroll 8
        for (int i = 0; i < HB; i++) {
            const V p = V_SET1(P[(size_t)i * (size_t)ldp + t]);
#pragma GCC unroll 8
            for (int v = 0; v < CV; v++) acc[i][v] = V_FMA(p, kvv[v], acc[i][v]);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < HB; i++)
#pragma GCC unroll 8
        for (int v = 0; v < CV; v++) {
            float *o = O + (size_t)i * (size_t)L + (size_t)v * VW;
            if (tail && v == CV - 1)
                V_STOREN(o, acc[i][v], tail);
            else
                V_STORE(o, acc[i][v]);
        }
}

/* Heads [h, h + HB) over every latent column. */
static inline __attribute__((always_inline)) CORE_ATTR void
CORE_FN(pv_heads)(const int HB, int R, int L, int nt, const float *P, int ldp, const float *kv,
                  const float *alpha, int first, float *O)
{
    int c = 0;
    for (; c + P_CV * VW <= L; c += P_CV * VW)
        CORE_FN(pv_tile)(HB, P_CV, 0, R, nt, P, ldp, kv + c, alpha, first, O + c, L);
    for (; c + VW <= L; c += VW)
        CORE_FN(pv_tile)(HB, 1, 0, R, nt, P, ldp, kv + c, alpha, first, O + c, L);
    if (c < L) CORE_FN(pv_tile)(HB, 1, L - c, R, nt, P, ldp, kv + c, alpha, first, O + c, L);
}

/* The table's block function (attn_internal.h, dpep_attn_core_cpu.block). */
static CORE_ATTR void CORE_FN(core_block)(int hn, int R, int L, float scale, const float *q,
                                          const float *kv, int nt, float *S, float *O, float *m,
                                          float *l, int first)
{
    if (nt <= 0 || hn <= 0) return;
    /* 1. scores S[h, t]: tiles of S_HB heads (then 4, then 1) x S_TB rows;
     * the heads outer, so that a tile's query rows stay in L1 while the
     * block's cache rows stream from L2 */
    for (int h = 0; h < hn;) {
        const int hb = hn - h >= S_HB ? S_HB : hn - h >= 4 ? 4 : 1;
        const float *qh = q + (size_t)h * (size_t)R;
        float *sh = S + (size_t)h * (size_t)nt;
        int t = 0;
        if (hb == S_HB) {
            for (; t + S_TB <= nt; t += S_TB)
                CORE_FN(score_tile)(S_HB, S_TB, R, scale, qh, kv + (size_t)t * (size_t)R, sh + t, nt);
            for (; t < nt; t++)
                CORE_FN(score_tile)(S_HB, 1, R, scale, qh, kv + (size_t)t * (size_t)R, sh + t, nt);
        } else if (hb == 4) {
            for (; t + S_TB <= nt; t += S_TB)
                CORE_FN(score_tile)(4, S_TB, R, scale, qh, kv + (size_t)t * (size_t)R, sh + t, nt);
            for (; t < nt; t++)
                CORE_FN(score_tile)(4, 1, R, scale, qh, kv + (size_t)t * (size_t)R, sh + t, nt);
        } else {
            for (; t + S_TB <= nt; t += S_TB)
                CORE_FN(score_tile)(1, S_TB, R, scale, qh, kv + (size_t)t * (size_t)R, sh + t, nt);
            for (; t < nt; t++)
                CORE_FN(score_tile)(1, 1, R, scale, qh, kv + (size_t)t * (size_t)R, sh + t, nt);
        }
        h += hb;
    }
    /* 2. the online softmax: new maxima, P = e^(S - m') in place, alpha =
     * e^(m - m') for the outputs so far, l = l alpha + sum P */
    float alpha[CORE_MAX_HEADS_STACK];
    for (int h0 = 0; h0 < hn; h0 += CORE_MAX_HEADS_STACK) {
        const int hc = hn - h0 < CORE_MAX_HEADS_STACK ? hn - h0 : CORE_MAX_HEADS_STACK;
        for (int i = 0; i < hc; i++) {
            float *sr = S + (size_t)(h0 + i) * (size_t)nt;
            int t = 0;
            V mv = V_SET1(-INFINITY);
            for (; t + VW <= nt; t += VW) mv = V_MAX(mv, V_LOAD(sr + t));
            float mx = V_HMAX(mv);
            for (; t < nt; t++) mx = sr[t] > mx ? sr[t] : mx;
            const float mo = first ? -INFINITY : m[h0 + i];
            const float mn = mo > mx ? mo : mx;
            V sv = V_ZERO();
            t = 0;
            for (; t + VW <= nt; t += VW) {
                const V e = CORE_FN(vexp)(V_ADD(V_LOAD(sr + t), V_SET1(-mn)));
                V_STORE(sr + t, e);
                sv = V_ADD(sv, e);
            }
            if (t < nt) {
                const V e = CORE_FN(vexp)(V_ADD(V_LOADN(sr + t, nt - t), V_SET1(-mn)));
                /* lanes past nt hold e^(-m'): left out of the sum */
                V_STOREN(sr + t, e, nt - t);
                sv = V_ADD(sv, V_LOADN(sr + t, nt - t));
            }
            const float sum = V_HSUM(sv);
            if (first) {
                alpha[i] = 0.0f;
                l[h0 + i] = sum;
            } else {
                const V av = CORE_FN(vexp)(V_SET1(mo - mn));
                float a1[VW];
                V_STORE(a1, av);
                alpha[i] = a1[0];
                l[h0 + i] = l[h0 + i] * alpha[i] + sum;
            }
            m[h0 + i] = mn;
        }
        /* 3. O = O alpha + P kv[:, :L] for these heads */
        const float *P = S + (size_t)h0 * (size_t)nt;
        float *Oh = O + (size_t)h0 * (size_t)L;
        int i = 0;
        for (; i + P_HB <= hc; i += P_HB)
            CORE_FN(pv_heads)(P_HB, R, L, nt, P + (size_t)i * (size_t)nt, nt, kv, alpha + i, first,
                              Oh + (size_t)i * (size_t)L);
        for (; i < hc; i++)
            CORE_FN(pv_heads)(1, R, L, nt, P + (size_t)i * (size_t)nt, nt, kv, alpha + i, first,
                              Oh + (size_t)i * (size_t)L);
    }
}
