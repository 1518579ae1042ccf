/* experts_cpu.c — SwiGLU expert FFN on the CPU: one MLP slice over a token
 * block, and the grouped routed experts of a rank (tokens gathered per
 * expert, three products per chunk, weighted scatter-add of the outputs); and
 * the CPU kernel table (moe_kernels_cpu) the context calls them through.
 * The products go through runtime/linear (weights as stored; an expert with
 * a few rows streams its weights once, one with many takes BLAS), which
 * splits each over the rank's OpenMP team. */
#include <math.h>
#include <string.h>

#include "dpep_linear.h"
#include "dpep_moe.h"
#include "moe_internal.h"

size_t dpep_moe_mlp_scratch_floats(int hidden, int inter, int chunk)
{
    (void)hidden;
    return 2u * (size_t)chunk * (size_t)inter;
}

/* g (n, ni) <- silu(g) * u [* w_row] */
static void swiglu(float *g, const float *u, int64_t n, int inter, const float *w_row)
{
    for (int64_t i = 0; i < n; i++) {
        float *gi = g + i * inter;
        const float *ui = u + i * inter;
        float s = w_row ? w_row[i] : 1.0f;
        for (int j = 0; j < inter; j++) {
            float a = gi[j];
            gi[j] = a / (1.0f + expf(-a)) * ui[j] * s;
        }
    }
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
        int n = (int)(n_tokens - t0 < chunk ? n_tokens - t0 : chunk);
        const float *xc = x + t0 * ldx;
        dpep_linear_nt(n, xc, ldx, &mlp->gate, 0.0f, G, ni);
        dpep_linear_nt(n, xc, ldx, &mlp->up, 0.0f, U, ni);
        swiglu(G, U, n, ni, NULL);
        dpep_linear_nt(n, G, ni, &mlp->down, accumulate ? 1.0f : 0.0f, out + t0 * hidden, hidden);
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
    /* slot_cnt[s] is now the end of slot s; its begin is slot_cnt[s-1] */
    float *X = work, *G = X + (size_t)chunk * H, *U = G + (size_t)chunk * work_inter,
          *Y = U + (size_t)chunk * work_inter;
    double flops = 0.0;
    for (int s = 0; s < n_slots; s++) {
        int64_t b = s ? slot_cnt[s - 1] : 0, e = slot_cnt[s];
        const dpep_mlp_w *mw = &experts[s];
        const int ni = mw->inter;
        if (e == b || ni <= 0) continue;
        flops += 6.0 * (double)(e - b) * H * ni;
        for (int64_t p0 = b; p0 < e; p0 += chunk) {
            int n = (int)(e - p0 < chunk ? e - p0 : chunk);
            for (int i = 0; i < n; i++)
                memcpy(X + (size_t)i * H, px[p0 + i], sizeof(float) * (size_t)H);
            dpep_linear_nt(n, X, H, &mw->gate, 0.0f, G, ni);
            dpep_linear_nt(n, X, H, &mw->up, 0.0f, U, ni);
            /* the gate weight scales the intermediate row: down is linear */
            swiglu(G, U, n, ni, slot_w + p0);
            dpep_linear_nt(n, G, ni, &mw->down, 0.0f, Y, H);
            for (int i = 0; i < n; i++) {
                float *dst = pp[p0 + i];
                const float *src = Y + (size_t)i * H;
                for (int h = 0; h < H; h++) dst[h] += src[h];
            }
        }
    }
    return flops;
}

/* The CPU's kernels (moe.c: moe_kernels[DPEP_DEVICE_CPU]). */
const moe_kernel_ops moe_kernels_cpu = {
    .name = "cpu",
    .router_logits = dpep_moe_router_logits,
    .gate_select = dpep_moe_gate_select,
    .mlp = dpep_moe_mlp_forward,
    .experts = experts_cpu,
};
