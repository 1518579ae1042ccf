/* mla_cpu.c — CPU backend of MLA attention (the DPEP_DEVICE_CPU entry of
 * attn.c's ops table): projections and kv_b's per-head products through
 * runtime/linear (weights as stored; BLAS for many rows), RMSNorm (the model's
 * dpep_rmsnorm_rows), RoPE and softmax loops in fp32 (OpenMP over rows or
 * heads), causal prefill over the paged latent cache by blocks (k_nope/v
 * expanded per block, online softmax), and absorbed decode (MQA over the
 * latent cache: the CPU decode core, mla_core*.c, per run of contiguous
 * rows, fused scores / online softmax / weighted sum). A BF16 pool's rows
 * are written rounded and widened to float32 before they are used. */
#include <math.h>
#include <string.h>

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "attn_internal.h"
#include "dpep_linear.h"

#define ROWMAJ CblasRowMajor
#define NT CblasNoTrans
#define TR CblasTrans

/* Rotates the interleaved pairs (x[2i], x[2i+1]) of one rope vector. */
static inline void rope_apply(float *x, const float *c, const float *s, int half)
{
    for (int i = 0; i < half; i++) {
        float x0 = x[2 * i], x1 = x[2 * i + 1];
        x[2 * i] = x0 * c[i] - x1 * s[i];
        x[2 * i + 1] = x1 * c[i] + x0 * s[i];
    }
}

/* C[M,N] = alpha A[M,K] B^T (B given as [N,K]) + beta C. */
static inline void gemm_nt(int M, int N, int K, float alpha, const float *A, int lda,
                           const float *B, int ldb, float beta, float *C, int ldc)
{
    cblas_sgemm(ROWMAJ, NT, TR, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
/* C[M,N] = alpha A[M,K] B[K,N] + beta C. */
static inline void gemm_nn(int M, int N, int K, float alpha, const float *A, int lda,
                           const float *B, int ldb, float beta, float *C, int ldc)
{
    cblas_sgemm(ROWMAJ, NT, NT, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* Threads: the OpenMP team of the rank's thread plan (runtime/world). The
 * projections split themselves over it (runtime/linear); prefill runs heads
 * in parallel and decode sequences (or split-KV for fewer sequences than
 * threads), each thread calling single-threaded products on its part. BLAS
 * stays at one thread (the thread plan), so there is one pool. */
static dpep_status cpu_init(dpep_attn *a)
{
#ifdef _OPENMP
    a->n_threads = omp_get_max_threads();
#else
    a->n_threads = 1;
#endif
    const dpep_attn_dims *d = &a->d;
    int64_t k = d->hidden > d->kv_lora ? d->hidden : d->kv_lora;
    if (d->q_lora > k) k = d->q_lora;
    if ((int64_t)d->H * d->v > k) k = (int64_t)d->H * d->v;
    if (!dpep_linear_reserve(k, d->kv_lora, a->n_threads)) return DPEP_ERR_NOMEM;
    return DPEP_OK;
}
static inline int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Projections of all T tokens: q (roped q_pe), kva (normalized c_kv, roped
 * k_pe), written to the cache. */
static void project(dpep_attn *a, const dpep_layer_w *w, int layer, dpep_attn_kv *kv,
                    const dpep_attn_seq *seq, int n_seq, int T, const float *x)
{
    const dpep_attn_dims *d = &a->d;
    dpep_attn_scratch *s = &a->sc;
    int H = d->H, half = d->rope / 2, hid = d->hidden;
    /* positions and cos/sin (angle in fp32 as transformers computes it) */
    for (int i = 0, t = 0; i < n_seq; i++)
        for (int j = 0; j < seq[i].n_new; j++, t++) s->pos[t] = (int)(seq[i].pos0 + j);
#pragma omp parallel for schedule(static) if (T > 64)
    for (int t = 0; t < T; t++) {
        float p = (float)s->pos[t];
        for (int k = 0; k < half; k++) {
            float ang = p * a->inv_freq[k];
            s->cosv[(size_t)t * half + k] = cosf(ang) * d->rope_factor;
            s->sinv[(size_t)t * half + k] = sinf(ang) * d->rope_factor;
        }
    }
    /* query: q_b(RMSNorm(q_a x)) or q_proj x; rows per head [nope | rope] */
    int qw = H * d->qk;
    if (d->q_lora > 0) {
        dpep_linear_nt(T, x, hid, &w->q_a, 0.0f, s->qa, d->q_lora);
        dpep_rmsnorm_rows(s->qa, d->q_lora, w->q_a_norm, T, d->q_lora, d->eps, s->qa, d->q_lora);
        dpep_linear_nt(T, s->qa, d->q_lora, &w->q_b, 0.0f, s->q, qw);
    } else {
        dpep_linear_nt(T, x, hid, &w->q_b, 0.0f, s->q, qw);
    }
    /* latent kv: [c_kv | k_pe] */
    dpep_linear_nt(T, x, hid, &w->kv_a, 0.0f, s->kva, d->row);
    dpep_rmsnorm_rows(s->kva, d->row, w->kv_a_norm, T, d->kv_lora, d->eps, s->kva, d->row);
#pragma omp parallel for schedule(static) if (T > 64)
    for (int t = 0; t < T; t++) {
        const float *c = s->cosv + (size_t)t * half, *sn = s->sinv + (size_t)t * half;
        rope_apply(s->kva + (size_t)t * d->row + d->kv_lora, c, sn, half);
        for (int h = 0; h < H; h++) rope_apply(s->q + (size_t)t * qw + h * d->qk + d->nope, c, sn, half);
    }
    for (int i = 0, t = 0; i < n_seq; i++)
        for (int j = 0; j < seq[i].n_new; j++, t++)
            dpep_attn_kv_store_(kv, dpep_attn_kv_row_(kv, seq[i].slot, layer, seq[i].pos0 + j),
                                s->kva + (size_t)t * d->row);
}

/* One head over one block of keys: E = [k_nope | k_pe | v] (bk, qk + v)
 * from the block's latents cblk (bk rows, `row` floats apart) and the
 * head's kv_b rows wk / wv, so that the scores are one GEMM with K = nope +
 * rope; scores of the nq queries that see the block (qrow: the head's part
 * of the first one, qw apart), the online softmax's running max m and sum
 * l (one per query, ml_ld apart), and P v added into acc (rows ldacc
 * apart); lim0: the last key the first query sees, relative to the block.
 * The forward (block-major, heads in parallel) and dpep_attn_prefill_head
 * (head-major) both run this: the same operations, the same bits. */
static void head_block(const dpep_mat *wk, const dpep_mat *wv, int rope, float scale,
                       const float *cblk, int row, int kv_lora, int bk, const float *qrow, int qw,
                       int nq, int64_t lim0, float *m, float *l, size_t ml_ld, float *acc,
                       int64_t ldacc, float *E, float *S)
{
    const int nope = wk->rows, v = wv->rows, qk = nope + rope, el = qk + v;
    dpep_linear_nt_cols(bk, cblk, row, wk, 0, nope, 0.0f, E, el);
    dpep_linear_nt_cols(bk, cblk, row, wv, 0, v, 0.0f, E + qk, el);
    for (int j = 0; j < bk; j++)
        memcpy(E + (size_t)j * el + nope, cblk + (size_t)j * row + kv_lora, sizeof(float) * (size_t)rope);
    gemm_nt(nq, bk, qk, scale, qrow, qw, E, el, 0.0f, S, bk);
    for (int r = 0; r < nq; r++) {
        float *srow = S + (size_t)r * bk;
        const int64_t lim = lim0 + r; /* last visible key in the block */
        const int jmax = lim < bk - 1 ? (int)lim : bk - 1;
        float *mi = m + (size_t)r * ml_ld, *li = l + (size_t)r * ml_ld;
        float mx = *mi;
#pragma omp simd reduction(max : mx)
        for (int j = 0; j <= jmax; j++) mx = srow[j] > mx ? srow[j] : mx;
        float alpha = expf(*mi - mx), sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j <= jmax; j++) {
            srow[j] = expf(srow[j] - mx);
            sum += srow[j];
        }
        for (int j = jmax + 1; j < bk; j++) srow[j] = 0.0f;
        *mi = mx;
        *li = *li * alpha + sum;
        if (alpha != 1.0f) {
            float *ar = acc + (size_t)r * (size_t)ldacc;
            for (int k = 0; k < v; k++) ar[k] *= alpha;
        }
    }
    gemm_nn(nq, v, bk, 1.0f, S, bk, E + qk, el, 1.0f, acc, (int)ldacc);
}

size_t dpep_attn_prefill_head_floats(int n, int nope, int rope, int v)
{
    /* S [n, block], E [block, nope + rope + v], m and l [n] */
    return (size_t)n * DPEP_ATTN_BLOCK + (size_t)DPEP_ATTN_BLOCK * (size_t)(nope + rope + v) +
           2 * (size_t)n;
}

/* prefill_seq's work for one head, all blocks in order: the same products
 * and loops on the same operands (runtime/linear's column parts and
 * products agree bit for bit), so the same bits. */
static void prefill_head(const dpep_attn_prefill_job *j, const dpep_mat *kv_b, int h,
                         float *scratch)
{
    const int n = j->n, qk = j->nope + j->rope, el = qk + j->v, bw = j->nope + j->v;
    const int row = j->kv_lora + j->rope, qw = j->H * qk;
    const int64_t ctx = j->pos0 + n;
    float *S = scratch, *E = S + (size_t)n * DPEP_ATTN_BLOCK, *m = E + (size_t)DPEP_ATTN_BLOCK * el,
          *l = m + n;
    for (int r = 0; r < n; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
        memset(j->out + (size_t)r * (size_t)j->ldo + (size_t)h * j->v, 0, sizeof(float) * (size_t)j->v);
    }
    const dpep_mat wk = dpep_mat_rows(*kv_b, h * bw, j->nope);
    const dpep_mat wv = dpep_mat_rows(*kv_b, h * bw + j->nope, j->v);
    for (int64_t j0 = 0; j0 < ctx; j0 += DPEP_ATTN_BLOCK) {
        const int bk = (int)(ctx - j0 < DPEP_ATTN_BLOCK ? ctx - j0 : DPEP_ATTN_BLOCK);
        const int i0 = j0 > j->pos0 ? (int)(j0 - j->pos0) : 0; /* first query that sees it */
        head_block(&wk, &wv, j->rope, j->scale, j->lat + (size_t)j0 * (size_t)row, row, j->kv_lora,
                   bk, j->q + (size_t)i0 * (size_t)qw + (size_t)h * qk, qw, n - i0,
                   j->pos0 + i0 - j0, m + i0, l + i0, 1,
                   j->out + (size_t)i0 * (size_t)j->ldo + (size_t)h * j->v, j->ldo, E, S);
    }
    for (int r = 0; r < n; r++) {
        float inv = 1.0f / l[r];
        float *ar = j->out + (size_t)r * (size_t)j->ldo + (size_t)h * j->v;
        for (int k = 0; k < j->v; k++) ar[k] *= inv;
    }
}

/* prefill_seq calls BLAS inside its parallel region, where OpenBLAS's
 * OpenMP build runs on one thread; called outside one, it would thread
 * itself over omp_get_max_threads() and round differently: the head runs
 * on the first thread of a region of two, as runtime/linear's BLAS shares
 * do. */
void dpep_attn_prefill_head(const dpep_attn_prefill_job *j, const dpep_mat *kv_b, int h,
                            float *scratch)
{
#ifdef _OPENMP
    if (!omp_in_parallel() && omp_get_max_threads() > 1) {
#pragma omp parallel num_threads(2)
        {
            if (omp_get_thread_num() == 0) prefill_head(j, kv_b, h, scratch);
        }
        return;
    }
#endif
    prefill_head(j, kv_b, h, scratch);
}

/* The prefill core lent (dpep_attn_lend): the context's latents widened
 * into the lender's buffer, the queries and results where they are;
 * false: not lent. */
static bool prefill_lent(dpep_attn *a, const dpep_layer_w *w, int layer, const dpep_attn_kv *kv,
                         const dpep_attn_seq *sq, int t0)
{
    const dpep_attn_lend *ld = a->lend;
    if (!ld || !ld->buffer || !ld->run) return false;
    const dpep_attn_dims *d = &a->d;
    const int n = sq->n_new, qw = d->H * d->qk, hv = d->H * d->v;
    const int64_t ctx = sq->pos0 + n;
    float *buf = ld->buffer(ld->ctx, (size_t)ctx * (size_t)d->row);
    if (!buf) return false;
    for (int64_t jj = 0; jj < ctx; jj++)
        dpep_linear_widen(dpep_attn_kv_row_(kv, sq->slot, layer, jj), kv->dtype, d->row,
                          buf + (size_t)jj * (size_t)d->row);
    const dpep_attn_prefill_job j = {.H = d->H, .nope = d->nope, .rope = d->rope, .v = d->v,
                                     .kv_lora = d->kv_lora, .scale = d->scale, .lat = buf,
                                     .q = a->sc.q + (size_t)t0 * (size_t)qw, .pos0 = sq->pos0, .n = n,
                                     .out = a->sc.heads + (size_t)t0 * (size_t)hv, .ldo = hv};
    return ld->run(ld->ctx, &j, &w->kv_b);
}

/* Causal attention of one sequence's n new tokens (batch rows t0..) over its
 * pos0 + n cached tokens, in the non-absorbed form: per block of context and
 * per head (one OpenMP task each), [k_nope | k_pe | v] from c_kv, scores, online
 * softmax, P v. The result goes to heads rows t0 .. t0+n-1. */
static void prefill_seq(dpep_attn *a, const dpep_layer_w *w, int layer, const dpep_attn_kv *kv,
                        const dpep_attn_seq *sq, int t0)
{
    const dpep_attn_dims *d = &a->d;
    dpep_attn_scratch *s = &a->sc;
    const int H = d->H, n = sq->n_new, qw = H * d->qk, bw = d->nope + d->v, hv = H * d->v;
    const int64_t pos0 = sq->pos0, ctx = pos0 + n;
    if (prefill_lent(a, w, layer, kv, sq, t0)) return;
    float *m = s->m + (size_t)t0 * H, *l = s->l + (size_t)t0 * H;
    float *acc = s->heads + (size_t)t0 * hv;
    for (size_t i = 0; i < (size_t)n * H; i++) {
        m[i] = -INFINITY;
        l[i] = 0.0f;
    }
    memset(acc, 0, sizeof(float) * (size_t)n * hv);
    for (int64_t j0 = 0; j0 < ctx; j0 += DPEP_ATTN_BLOCK) {
        const int bk = (int)(ctx - j0 < DPEP_ATTN_BLOCK ? ctx - j0 : DPEP_ATTN_BLOCK);
        for (int j = 0; j < bk; j++) /* widened from a BF16 pool; a copy from a float32 one */
            dpep_linear_widen(dpep_attn_kv_row_(kv, sq->slot, layer, j0 + j), kv->dtype, d->row,
                              s->cblk + (size_t)j * d->row);
        const int i0 = j0 > pos0 ? (int)(j0 - pos0) : 0; /* first query that sees this block */
        const int nq = n - i0;
        const float *qrow = s->q + (size_t)(t0 + i0) * qw;
#pragma omp parallel for schedule(dynamic, 1)
        for (int h = 0; h < H; h++) {
            const int tid = thread_id();
            float *S = s->s + (size_t)tid * s->s_len; /* [nq, bk] */
            /* per head and block: E = [k_nope | k_pe | v], (bk, qk + v), so
             * that the scores are one GEMM with K = nope + rope */
            const int el = d->qk + d->v;
            float *E = s->e + (size_t)tid * DPEP_ATTN_BLOCK * el;
            const dpep_mat wk = dpep_mat_rows(w->kv_b, h * bw, d->nope);
            const dpep_mat wv = dpep_mat_rows(w->kv_b, h * bw + d->nope, d->v);
            head_block(&wk, &wv, d->rope, d->scale, s->cblk, d->row, d->kv_lora, bk,
                       qrow + h * d->qk, qw, nq, pos0 + i0 - j0, m + (size_t)i0 * H + h,
                       l + (size_t)i0 * H + h, (size_t)H, acc + (size_t)i0 * hv + (size_t)h * d->v,
                       hv, E, S);
        }
    }
#pragma omp parallel for schedule(static) if (n > 16)
    for (int r = 0; r < n; r++)
        for (int h = 0; h < H; h++) {
            float inv = 1.0f / l[(size_t)r * H + h];
            float *ar = acc + (size_t)r * hv + (size_t)h * d->v;
            for (int k = 0; k < d->v; k++) ar[k] *= inv;
        }
}

/* The absorbed decode over positions [j0, j1) of a sequence's paged latent
 * cache for hn heads (absorbed queries qt [hn, R]), shared by both decode
 * schedules: unnormalized, O[hn, L] = sum_j e^(s_j - m) c_j with m[h] the
 * largest score and l[h] = sum_j e^(s_j - m). The CPU decode core
 * (attn_internal.h) runs once per run of physically consecutive rows, at
 * most DPEP_ATTN_BLOCK of them (so that the rows its scores read stay in
 * cache for its weighted sum); a BF16 pool's rows are widened into the
 * thread's Wk first. S: scratch [hn, DPEP_ATTN_BLOCK]. */
static void mqa_partial(const dpep_attn *a, int layer, const dpep_attn_kv *kv, const int32_t *pt,
                        const float *qt, int hn, int64_t j0, int64_t j1, float *S, float *Wk, float *O,
                        float *m, float *l)
{
    const dpep_attn_dims *d = &a->d;
    const int L = d->kv_lora, R = d->row, P = kv->page_size;
    const bool widen = kv->dtype != DPEP_WT_F32;
    const dpep_attn_core_cpu *core = dpep_attn_core_cpu_for(hn);
    for (int64_t j = j0; j < j1;) {
        int64_t p = j / P, e = p + 1;
        while (e * P < j1 && pt[e] == pt[e - 1] + 1) e++;
        int64_t end = e * P < j1 ? e * P : j1, nt = end - j;
        if (nt > DPEP_ATTN_BLOCK) {
            nt = DPEP_ATTN_BLOCK;
            end = j + nt;
        }
        const void *at = dpep_attn_kv_at_(kv, layer, pt[p], j - p * P);
        const float *base = at;
        if (widen) {
            dpep_linear_widen(at, kv->dtype, nt * R, Wk);
            base = Wk;
        }
        core->block(hn, R, L, d->scale, qt, base, (int)nt, S, O, m, l, j == j0);
        j = end;
    }
}

/* At least as many sequences as threads: one sequence (all heads) per task. */
static void decode_mqa(dpep_attn *a, int layer, const dpep_attn_kv *kv, const dpep_attn_seq *seq,
                       const int *seq_of, int gn)
{
    dpep_attn_scratch *s = &a->sc;
    const int H = a->d.H, L = a->d.kv_lora, R = a->d.row;
#pragma omp parallel for schedule(dynamic, 1)
    for (int g = 0; g < gn; g++) {
        const dpep_attn_seq *sq = &seq[seq_of[g]];
        const int t = thread_id();
        float *mt = s->mp + (size_t)t * H, *lt = s->lp + (size_t)t * H;
        float *ot = s->ot + (size_t)g * H * L;
        mqa_partial(a, layer, kv, kv->pages + (int64_t)sq->slot * kv->max_pages_seq,
                    s->qt + (size_t)g * H * R, H, 0, sq->pos0 + 1, s->s + (size_t)t * s->s_len,
                    s->kvw + (size_t)t * DPEP_ATTN_BLOCK * R, ot, mt, lt);
        for (int h = 0; h < H; h++) {
            float inv = 1.0f / lt[h];
            for (int k = 0; k < L; k++) ot[(size_t)h * L + k] *= inv;
        }
    }
}

/* Fewer sequences than threads: split-KV. Thread t takes a page-aligned part
 * of the context for all H heads; o = sum_t e^(m_t - m) O_t / sum_t e^(m_t - m) l_t. */
static void decode_split_kv(dpep_attn *a, int layer, const dpep_attn_kv *kv, const dpep_attn_seq *sq,
                            const float *qt, float *ot)
{
    dpep_attn_scratch *s = &a->sc;
    const int H = a->d.H, L = a->d.kv_lora, P = kv->page_size, nthr = a->n_threads;
    const int64_t ctx = sq->pos0 + 1;
    const int32_t *pt = kv->pages + (int64_t)sq->slot * kv->max_pages_seq;
    const int64_t per = ((ctx + P - 1) / P + nthr - 1) / nthr; /* pages per thread */
#pragma omp parallel for schedule(static)
    for (int t = 0; t < nthr; t++) {
        float *mt = s->mp + (size_t)t * H, *lt = s->lp + (size_t)t * H;
        const int64_t j0 = (int64_t)t * per * P, j1 = j0 + per * P < ctx ? j0 + per * P : ctx;
        if (j0 >= j1) {
            for (int h = 0; h < H; h++) {
                mt[h] = -INFINITY;
                lt[h] = 0.0f;
            }
            continue;
        }
        mqa_partial(a, layer, kv, pt, qt, H, j0, j1, s->s + (size_t)t * s->s_len,
                    s->kvw + (size_t)t * DPEP_ATTN_BLOCK * a->d.row, s->op + (size_t)t * H * L, mt, lt);
    }
#pragma omp parallel for schedule(static)
    for (int h = 0; h < H; h++) {
        float m = -INFINITY, l = 0.0f;
        for (int t = 0; t < nthr; t++) m = s->mp[(size_t)t * H + h] > m ? s->mp[(size_t)t * H + h] : m;
        float *o = ot + (size_t)h * L;
        for (int k = 0; k < L; k++) o[k] = 0.0f;
        for (int t = 0; t < nthr; t++) {
            float lt = s->lp[(size_t)t * H + h];
            if (lt == 0.0f) continue;
            float f = expf(s->mp[(size_t)t * H + h] - m);
            l += f * lt;
            const float *Ot = s->op + ((size_t)t * H + h) * L;
            for (int k = 0; k < L; k++) o[k] += f * Ot[k];
        }
        float inv = 1.0f / l;
        for (int k = 0; k < L; k++) o[k] *= inv;
    }
}

/* Absorbed decode of up to G one-token sequences (batch rows s->tok[g]). */
static void decode_group(dpep_attn *a, const dpep_layer_w *w, int layer, const dpep_attn_kv *kv,
                         const dpep_attn_seq *seq, const int *seq_of, int gn)
{
    const dpep_attn_dims *d = &a->d;
    dpep_attn_scratch *s = &a->sc;
    const int H = d->H, L = d->kv_lora, R = d->row, qw = H * d->qk, hv = H * d->v;
    const int bw = d->nope + d->v; /* kv_b rows per head */
    /* gather q_nope and the roped q_pe of the group */
    for (int g = 0; g < gn; g++) {
        const float *q = s->q + (size_t)s->tok[g] * qw;
        for (int h = 0; h < H; h++) {
            memcpy(s->qn + ((size_t)g * H + h) * d->nope, q + h * d->qk, sizeof(float) * d->nope);
            memcpy(s->qt + ((size_t)g * H + h) * R + L, q + h * d->qk + d->nope, sizeof(float) * d->rope);
        }
    }
    /* q~_h = W_UK_h^T q_nope_h: [gn, nope] x [nope, L] per head (head h's
     * rows of kv_b start h * bw rows after head 0's) */
    const int64_t hs = (int64_t)bw * w->kv_b.ld;
    const dpep_mat wk = dpep_mat_rows(w->kv_b, 0, d->nope);
    dpep_linear_batched(false, H, gn, s->qn, H * d->nope, d->nope, &wk, hs, 0.0f, s->qt, H * R, R);
    /* MQA over the latent cache. With fewer sequences than threads, each
     * sequence's context is split over the threads instead (split-KV, as
     * flash-decoding does): every thread runs all heads (M = H rows, so the
     * cache it packs serves all of them) on its part of the context, and the
     * partial softmaxes are merged by their maxima. */
    const int nthr = a->n_threads;
    if (gn < nthr && nthr > 1) {
        for (int g = 0; g < gn; g++)
            decode_split_kv(a, layer, kv, &seq[seq_of[g]], s->qt + (size_t)g * H * R,
                            s->ot + (size_t)g * H * L);
    } else {
        decode_mqa(a, layer, kv, seq, seq_of, gn);
    }
    /* o_h = W_UV_h o~_h: [gn, L] x [v, L]^T per head, then scattered */
    const dpep_mat wv = dpep_mat_rows(w->kv_b, d->nope, d->v);
    dpep_linear_batched(true, H, gn, s->ot, H * L, L, &wv, hs, 0.0f, s->ov, hv, d->v);
    for (int g = 0; g < gn; g++)
        memcpy(s->heads + (size_t)s->tok[g] * hv, s->ov + (size_t)g * hv, sizeof(float) * hv);
}

/* The scratch (attn_internal.h: dpep_attn_scratch) for max_tokens tokens
 * and contexts up to max_ctx, per-thread parts for n_threads threads. */
static void cpu_carve_scratch(dpep_attn *a, dpep_arena *ar)
{
    const dpep_attn_dims *d = &a->d;
    const size_t T = (size_t)a->max_tokens, H = (size_t)d->H, nt = (size_t)a->n_threads;
    const size_t G = T < DPEP_ATTN_DEC_GROUP ? T : DPEP_ATTN_DEC_GROUP;
    const size_t s_dec = H * (size_t)(a->max_ctx < DPEP_ATTN_BLOCK ? a->max_ctx : DPEP_ATTN_BLOCK),
                 s_pre = T * DPEP_ATTN_BLOCK;
    dpep_attn_scratch *s = &a->sc;
    s->qa = DPEP_ARENA_TAKE(ar, float, T * (size_t)(d->q_lora > 0 ? d->q_lora : 1));
    s->q = DPEP_ARENA_TAKE(ar, float, T * H * (size_t)d->qk);
    s->kva = DPEP_ARENA_TAKE(ar, float, T * (size_t)d->row);
    s->heads = DPEP_ARENA_TAKE(ar, float, T * H * (size_t)d->v);
    s->qn = DPEP_ARENA_TAKE(ar, float, G * H * (size_t)d->nope);
    s->qt = DPEP_ARENA_TAKE(ar, float, G * H * (size_t)d->row);
    s->ot = DPEP_ARENA_TAKE(ar, float, G * H * (size_t)d->kv_lora);
    s->ov = DPEP_ARENA_TAKE(ar, float, G * H * (size_t)d->v);
    s->tok = DPEP_ARENA_TAKE(ar, int, G);
    s->s_len = s_dec > s_pre ? s_dec : s_pre;
    s->s = DPEP_ARENA_TAKE(ar, float, s->s_len * nt);
    s->e = DPEP_ARENA_TAKE(ar, float, (size_t)DPEP_ATTN_BLOCK * (size_t)(d->qk + d->v) * nt);
    s->cblk = DPEP_ARENA_TAKE(ar, float, (size_t)DPEP_ATTN_BLOCK * (size_t)d->row);
    s->kvw = DPEP_ARENA_TAKE(ar, float, (size_t)DPEP_ATTN_BLOCK * (size_t)d->row * nt);
    s->m = DPEP_ARENA_TAKE(ar, float, T * H);
    s->l = DPEP_ARENA_TAKE(ar, float, T * H);
    s->op = DPEP_ARENA_TAKE(ar, float, H * (size_t)d->kv_lora * nt);
    s->mp = DPEP_ARENA_TAKE(ar, float, H * nt);
    s->lp = DPEP_ARENA_TAKE(ar, float, H * nt);
    s->cosv = DPEP_ARENA_TAKE(ar, float, T * (size_t)(d->rope / 2));
    s->sinv = DPEP_ARENA_TAKE(ar, float, T * (size_t)(d->rope / 2));
    s->pos = DPEP_ARENA_TAKE(ar, int, T);
}

static dpep_status cpu_forward(dpep_attn *a, const dpep_layer_w *w, int layer, dpep_attn_kv *kv,
                               const dpep_attn_seq *seq, int n_seq, int T, const float *x,
                               float *out)
{
    const dpep_attn_dims *d = &a->d;
    double t0 = dpep_clock_s();
    project(a, w, layer, kv, seq, n_seq, T, x);
    double t1 = dpep_clock_s();
    int seq_of[DPEP_ATTN_DEC_GROUP];
    int gn = 0, G = a->max_tokens < DPEP_ATTN_DEC_GROUP ? a->max_tokens : DPEP_ATTN_DEC_GROUP;
    for (int i = 0, t = 0; i < n_seq; t += seq[i].n_new, i++) {
        if (seq[i].n_new == 0) continue;
        if (seq[i].n_new == 1 && a->decode == DPEP_ATTN_DECODE_ABSORBED) {
            a->sc.tok[gn] = t;
            seq_of[gn++] = i;
            if (gn == G) {
                decode_group(a, w, layer, kv, seq, seq_of, gn);
                gn = 0;
            }
        } else {
            prefill_seq(a, w, layer, kv, &seq[i], t);
        }
    }
    if (gn > 0) decode_group(a, w, layer, kv, seq, seq_of, gn);
    double t2 = dpep_clock_s();
    /* o_proj over this rank's heads: a partial sum under attention-TP */
    dpep_linear_nt(T, a->sc.heads, d->H * d->v, &w->o, 0.0f, out, d->hidden);
    a->timing.proj_s += t1 - t0;
    a->timing.core_s += t2 - t1;
    a->timing.oproj_s += dpep_clock_s() - t2;
    return DPEP_OK;
}

const dpep_attn_ops dpep_attn_cpu_ops = {
    .name = "cpu", .init = cpu_init, .carve_scratch = cpu_carve_scratch, .forward = cpu_forward};
