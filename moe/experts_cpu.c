/* experts_cpu.c — SwiGLU expert FFN on the CPU: one MLP slice over a token
 * block, and the grouped routed experts of a rank (tokens gathered per
 * expert, weighted scatter-add of the outputs); and the CPU kernel table
 * (moe_kernels_cpu) the context calls them through.
 *
 * Threads: a "wave" of expert pieces (an expert and a run of its rows) runs
 * in one OpenMP region with two work-shared loops: gate and up products of
 * every piece split in column parts, each part finishing its own columns of
 * SwiGLU; then (one barrier) the down products split by output column, each
 * part running every piece in slot order and adding its rows into their
 * destinations. Three regions per expert became one per wave (at batch-1
 * decode: one per layer for all routed experts); every element is still
 * one fixed-order sum (runtime/linear's contract) and every destination row
 * receives its experts in slot order, so results are bit-identical to the
 * one-product-at-a-time form whatever the thread count. The products go
 * through runtime/linear (weights as stored; streaming kernel for a few
 * rows, BLAS for many). */
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "dpep_linear.h"
#include "dpep_moe.h"
#include "moe_internal.h"

size_t dpep_moe_mlp_scratch_floats(int hidden, int inter, int chunk)
{
    (void)hidden;
    return 2u * (size_t)chunk * (size_t)inter;
}

/* Most pieces in one wave (stack arrays; a longer run starts a new wave). */
#define WAVE_MAX 64

/* One expert over n rows: x -> g = silu(x Wg^T) * (x Wu^T) * row_w -> down. */
typedef struct piece {
    const dpep_mlp_w *w;
    int n;
    const float *x;    /* n rows, ldx apart                                  */
    int64_t ldx;
    float *g, *u;      /* n rows, ldg apart: the intermediate (g ends SwiGLU) */
    int64_t ldg;
    const float *row_w; /* per-row factor of the intermediate, or NULL        */
    float *y;          /* down's output rows, ldy apart (beta 0 or 1)        */
    int64_t ldy;
    float beta;
    float *const *dst; /* NULL, or row i of y is added into dst[i]           */
} piece;

/* g[:, c0:c0+cn] <- silu(g) * u [* w_row] on those columns */
static void swiglu_cols(float *g, const float *u, int64_t ld, int n, int c0, int cn,
                        const float *w_row)
{
    for (int i = 0; i < n; i++) {
        float *gi = g + (size_t)i * ld + c0;
        const float *ui = u + (size_t)i * ld + c0;
        float s = w_row ? w_row[i] : 1.0f;
        for (int j = 0; j < cn; j++) {
            float a = gi[j];
            gi[j] = a / (1.0f + expf(-a)) * ui[j] * s;
        }
    }
}

static int team_size(void)
{
#ifdef _OPENMP
    return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
}

/* Runs the pieces (see the top of the file). */
static void run_wave(const piece *pc, int np, int hidden)
{
    const int nthr = team_size();
    int first[WAVE_MAX + 1], ch1[WAVE_MAX]; /* phase-1 parts: prefix counts, widths */
    int ch2 = 1, al2 = 1;
    first[0] = 0;
    for (int i = 0; i < np; i++) {
        const dpep_mlp_w *w = pc[i].w;
        ch1[i] = w->inter > 0 ? dpep_linear_col_chunk(pc[i].n, &w->gate, nthr) : 1;
        first[i + 1] = first[i] + (w->inter > 0 ? (w->inter + ch1[i] - 1) / ch1[i] : 0);
        int c = dpep_linear_col_chunk(pc[i].n, &w->down, nthr), a = dpep_linear_col_align(pc[i].n, &w->down);
        if (c > ch2) ch2 = c;
        if (a > al2) al2 = a;
    }
    ch2 = (ch2 + al2 - 1) / al2 * al2; /* a multiple of every piece's alignment */
    const int parts1 = first[np], parts2 = (hidden + ch2 - 1) / ch2;
#pragma omp parallel num_threads(nthr) if (nthr > 1)
    {
#pragma omp for schedule(dynamic, 1)
        for (int q = 0; q < parts1; q++) {
            int i = 0;
            while (first[i + 1] <= q) i++;
            const piece *p = &pc[i];
            const int c0 = (q - first[i]) * ch1[i];
            const int cn = p->w->inter - c0 < ch1[i] ? p->w->inter - c0 : ch1[i];
            dpep_linear_nt_cols(p->n, p->x, p->ldx, &p->w->gate, c0, cn, 0.0f, p->g, p->ldg);
            dpep_linear_nt_cols(p->n, p->x, p->ldx, &p->w->up, c0, cn, 0.0f, p->u, p->ldg);
            swiglu_cols(p->g, p->u, p->ldg, p->n, c0, cn, p->row_w);
        }
#pragma omp for schedule(dynamic, 1)
        for (int q = 0; q < parts2; q++) {
            const int c0 = q * ch2, cn = hidden - c0 < ch2 ? hidden - c0 : ch2;
            for (int i = 0; i < np; i++) {
                const piece *p = &pc[i];
                if (p->w->inter <= 0) {
                    if (!p->dst && p->beta == 0.0f)
                        for (int r = 0; r < p->n; r++)
                            memset(p->y + (size_t)r * p->ldy + c0, 0, sizeof(float) * (size_t)cn);
                    continue;
                }
                dpep_linear_nt_cols(p->n, p->g, p->ldg, &p->w->down, c0, cn, p->dst ? 0.0f : p->beta,
                                    p->y, p->ldy);
                if (p->dst)
                    for (int r = 0; r < p->n; r++) {
                        float *d = p->dst[r] + c0;
                        const float *src = p->y + (size_t)r * p->ldy + c0;
                        for (int h = 0; h < cn; h++) d[h] += src[h];
                    }
            }
        }
    }
}

void dpep_moe_swiglu(float *g, const float *u, int64_t ld, int n, int c0, int cn)
{
    swiglu_cols(g, u, ld, n, c0, cn, NULL);
}

void dpep_moe_swiglu_w(float *g, const float *u, int64_t ld, int n, int c0, int cn,
                       const float *row_w)
{
    swiglu_cols(g, u, ld, n, c0, cn, row_w);
}

/* A wave offered to the expert pool first (moe_waves_now, dpep_moe.h): it
 * runs the same pieces with the node's other ranks; else here. */
static void run_or_pool(const piece *pc, int np, int hidden)
{
    const dpep_moe_wave_offload *pool = moe_waves_now;
    if (pool) {
        dpep_moe_piece q[WAVE_MAX];
        for (int i = 0; i < np; i++)
            q[i] = (dpep_moe_piece){.w = pc[i].w, .n = pc[i].n, .x = pc[i].x, .ldx = pc[i].ldx,
                                    .row_w = pc[i].row_w, .dst = pc[i].dst};
        if (pool->wave(pool->ctx, q, np, hidden)) return;
    }
    run_wave(pc, np, hidden);
}

/* One chunk of rows as three whole products (gate, up, down), so that an
 * installed product offload (dpep_linear_set_offload: the engine's DP
 * assist lends the products to idle node peers) sees each; the same bits
 * as run_wave's column parts (dpep_linear.h: a product's elements do not
 * depend on how its columns are split). */
static void mlp_products(const piece *p)
{
    const dpep_mlp_w *w = p->w;
    dpep_linear_nt(p->n, p->x, p->ldx, &w->gate, 0.0f, p->g, p->ldg);
    dpep_linear_nt(p->n, p->x, p->ldx, &w->up, 0.0f, p->u, p->ldg);
    swiglu_cols(p->g, p->u, p->ldg, p->n, 0, w->inter, p->row_w);
    dpep_linear_nt(p->n, p->g, p->ldg, &w->down, p->beta, p->y, p->ldy);
}

void dpep_moe_mlp_forward(const dpep_mlp_w *mlp, int hidden, const float *x, int64_t ldx,
                          int64_t n_tokens, int chunk, float *scratch, float *out, bool accumulate)
{
    const int ni = mlp->inter;
    if (n_tokens <= 0) return;
    if (ni <= 0) {
        if (!accumulate) memset(out, 0, sizeof(float) * (size_t)n_tokens * (size_t)hidden);
        return;
    }
    if (chunk <= 0) chunk = DPEP_MOE_CHUNK_DEFAULT;
    float *G = scratch, *U = scratch + (size_t)chunk * ni;
    for (int64_t t0 = 0; t0 < n_tokens; t0 += chunk) {
        const int n = (int)(n_tokens - t0 < chunk ? n_tokens - t0 : chunk);
        const piece p = {.w = mlp, .n = n, .x = x + t0 * ldx, .ldx = ldx, .g = G, .u = U, .ldg = ni,
                         .y = out + t0 * hidden, .ldy = hidden, .beta = accumulate ? 1.0f : 0.0f};
        if (dpep_linear_offloading())
            mlp_products(&p);
        else
            run_wave(&p, 1, hidden);
    }
}

static double experts_cpu(const dpep_mlp_w *experts, int n_slots, int hidden, int topk,
                          const moe_rows *seg, int n_seg, int chunk, const float **px,
                          float **pp, float *slot_w, int64_t *slot_cnt, float *work,
                          int64_t work_inter, int64_t *pairs)
{
    const int H = hidden, k = topk;
    int64_t n_rows = 0;
    for (int g = 0; g < n_seg; g++) {
        if (seg[g].n) memset(seg[g].part, 0, sizeof(float) * (size_t)(seg[g].n * H));
        n_rows += seg[g].n;
    }
    *pairs = 0;
    if (n_rows == 0 || n_slots == 0) return 0.0;
    /* counting sort of (row, weight) pairs by slot, rows in segment order */
    memset(slot_cnt, 0, sizeof(int64_t) * (size_t)(n_slots + 1));
    for (int g = 0; g < n_seg; g++)
        for (int64_t i = 0; i < seg[g].n; i++) {
            const int32_t *sl = seg[g].slot + i * seg[g].ld_slot;
            for (int j = 0; j < k; j++)
                if (sl[j] >= 0) slot_cnt[sl[j] + 1]++;
        }
    for (int s = 0; s < n_slots; s++) slot_cnt[s + 1] += slot_cnt[s];
    *pairs = slot_cnt[n_slots];
    for (int g = 0; g < n_seg; g++) {
        const moe_rows *q = &seg[g];
        for (int64_t i = 0; i < q->n; i++) {
            const int64_t t = q->tok ? q->tok[i] : i;
            const int32_t *sl = q->slot + i * q->ld_slot;
            const float *wr = q->w + t * q->ld_w;
            for (int j = 0; j < k; j++)
                if (sl[j] >= 0) {
                    int64_t p = slot_cnt[sl[j]]++;
                    px[p] = q->x + t * q->ldx;
                    pp[p] = q->part + i * H;
                    slot_w[p] = wr[j];
                }
        }
    }
    /* slot_cnt[s] is now the end of slot s; its begin is slot_cnt[s-1].
     * Waves: runs of whole slots (or one slot's chunk-row pieces) of up to
     * `chunk` pairs and WAVE_MAX pieces, gathered into X (pairs in order). */
    float *X = work, *G = X + (size_t)chunk * H, *U = G + (size_t)chunk * work_inter,
          *Y = U + (size_t)chunk * work_inter;
    double flops = 0.0;
    piece wave[WAVE_MAX];
    int np = 0, rows = 0;
    for (int s = 0; s < n_slots; s++) {
        const int64_t b = s ? slot_cnt[s - 1] : 0, e = slot_cnt[s];
        const dpep_mlp_w *mw = &experts[s];
        if (e == b || mw->inter <= 0) continue;
        for (int64_t p0 = b; p0 < e;) {
            if (rows == chunk || np == WAVE_MAX) { /* full: run what is gathered */
                run_or_pool(wave, np, H);
                np = rows = 0;
            }
            const int n = (int)(e - p0 < chunk - rows ? e - p0 : chunk - rows);
            for (int i = 0; i < n; i++)
                memcpy(X + (size_t)(rows + i) * H, px[p0 + i], sizeof(float) * (size_t)H);
            wave[np++] = (piece){.w = mw, .n = n, .x = X + (size_t)rows * H, .ldx = H,
                                 .g = G + (size_t)rows * work_inter,
                                 .u = U + (size_t)rows * work_inter, .ldg = work_inter,
                                 .row_w = slot_w + p0, .y = Y + (size_t)rows * H, .ldy = H,
                                 .dst = pp + p0};
            flops += 6.0 * (double)n * H * mw->inter;
            rows += n;
            p0 += n;
        }
    }
    if (np) run_or_pool(wave, np, H);
    return flops;
}

/* The CPU's kernels (moe.c: moe_kernels[DPEP_DEVICE_CPU]). */
/* The device transports' passes on host memory (the reference of the CUDA
 * ones). */
static void pack_rows_cpu(float *const *dst, const float *x, int64_t ldx, const float *w,
                          int64_t ldw, const int32_t *tok, const int32_t *slot, int64_t n, int H,
                          int k)
{
    for (int64_t i = 0; i < n; i++) {
        float *row = dst[i];
        const int64_t t = tok[i];
        memcpy(row, x + t * ldx, sizeof(float) * (size_t)H);
        memcpy(moe_row_slot(row, H), slot + i * k, sizeof(int32_t) * (size_t)k);
        memcpy(moe_row_w(row, H, k), w + t * ldw, sizeof(float) * (size_t)k);
    }
}

static void sum_rows_cpu(float *acc, const float *const *src, const int32_t *cnt, int64_t U,
                         int H, int D)
{
    for (int64_t t = 0; t < U; t++) {
        float *dst = acc + t * H;
        if (cnt[t] <= 0) memset(dst, 0, sizeof(float) * (size_t)H);
        else moe_sum_rows_host(dst, src + t * D, cnt[t], H);
    }
}

static void put_i64_cpu(int64_t *const *dst, const int64_t *src, int n)
{
    for (int i = 0; i < n; i++) *dst[i] = src[i];
}

static void identity_cpu(const moe_rows *seg, int n_seg, int H, int k)
{
    for (int g = 0; g < n_seg; g++) {
        const moe_rows *q = &seg[g];
        for (int64_t i = 0; i < q->n; i++) {
            const int64_t t = q->tok ? q->tok[i] : i;
            const float *x = q->x + t * q->ldx, *wr = q->w + t * q->ld_w;
            const int32_t *sl = q->slot + i * q->ld_slot;
            float ws = 0.0f;
            for (int j = 0; j < k; j++)
                if (sl[j] >= 0) ws += wr[j];
            float *dst = q->part + i * H;
            for (int h = 0; h < H; h++) dst[h] = ws * x[h];
        }
    }
}

static void remap_slots_cpu(float *rows, int ep, int64_t Upad, const int64_t *n_valid,
                            const int32_t *map, int H, int k)
{
    const int64_t S = (int64_t)H + 2 * k;
    for (int r = 0; r < ep; r++)
        for (int64_t t = 0; t < Upad; t++) {
            int32_t *sl = moe_row_slot(rows + ((int64_t)r * Upad + t) * S, H);
            for (int j = 0; j < k; j++) sl[j] = t < n_valid[r] && sl[j] >= 0 ? map[sl[j]] : -1;
        }
}

const moe_kernel_ops moe_kernels_cpu = {
    .name = "cpu",
    .router_logits = dpep_moe_router_logits,
    .gate_select = dpep_moe_gate_select,
    .mlp = dpep_moe_mlp_forward,
    .experts = experts_cpu,
    .pack_rows = pack_rows_cpu,
    .sum_rows = sum_rows_cpu,
    .put_i64 = put_i64_cpu,
    .identity = identity_cpu,
    .remap_slots = remap_slots_cpu,
};
