/* gate.c — DeepSeek MoE gates on the CPU: router logits (BLAS) and top-k
 * selection for V3 (sigmoid, noaux_tc with e_score_correction_bias and group
 * top-2 sums) and V2 (softmax, greedy / group_limited_greedy). All fp32.
 * Ties: the lower group / expert index wins (see dpep_moe.h). */
#include <math.h>
#include <string.h>

#include "dpep_linear.h"
#include "dpep_moe.h"
#include "moe_internal.h"

void dpep_moe_gate_cfg_from_model(const dpep_model_config *m, dpep_moe_gate_cfg *out)
{
    dpep_moe_gate_cfg g;
    memset(&g, 0, sizeof g);
    g.n_experts = m->n_routed;
    g.topk = m->topk;
    g.n_group = m->n_group > 0 ? m->n_group : 1;
    g.topk_group = m->topk_group > 0 ? m->topk_group : g.n_group;
    g.scoring = m->scoring;
    g.method = m->topk_method;
    g.norm_topk_prob = m->norm_topk_prob;
    g.routed_scaling_factor = (float)m->routed_scaling_factor;
    *out = g;
}

dpep_status dpep_moe_gate_check(const dpep_moe_gate_cfg *g, dpep_diag *diag)
{
    int bad = 0;
#define GATE_BAD(...)                                                          \
    do {                                                                       \
        if (diag) dpep_diag_add(diag, DPEP_DIAG_ERROR, __VA_ARGS__);           \
        bad = 1;                                                               \
    } while (0)
    if (g->n_experts < 1 || g->n_experts > DPEP_MOE_MAX_EXPERTS)
        GATE_BAD("moe gate: n_routed_experts: %d (expected 1..%d)", g->n_experts,
                 DPEP_MOE_MAX_EXPERTS);
    if (g->topk < 1 || g->topk > g->n_experts || g->topk > DPEP_MOE_MAX_TOPK)
        GATE_BAD("moe gate: num_experts_per_tok: %d (expected 1..min(n_routed_experts %d, %d))",
                 g->topk, g->n_experts, DPEP_MOE_MAX_TOPK);
    if (g->n_group < 1 || (g->n_experts > 0 && g->n_experts % g->n_group != 0))
        GATE_BAD("moe gate: n_group: %d (expected a divisor of n_routed_experts %d)", g->n_group,
                 g->n_experts);
    else if (g->topk_group < 1 || g->topk_group > g->n_group)
        GATE_BAD("moe gate: topk_group: %d (expected 1..n_group %d)", g->topk_group, g->n_group);
    else if (g->method != DPEP_TOPK_GREEDY &&
             (int64_t)g->topk_group * (g->n_experts / g->n_group) < g->topk)
        GATE_BAD("moe gate: topk_group %d x %d experts per group < num_experts_per_tok %d",
                 g->topk_group, g->n_experts / g->n_group, g->topk);
    if (g->scoring != DPEP_SCORE_SIGMOID && g->scoring != DPEP_SCORE_SOFTMAX)
        GATE_BAD("moe gate: scoring_func: unknown value %d", (int)g->scoring);
    if (g->method != DPEP_TOPK_NOAUX_TC && g->method != DPEP_TOPK_GREEDY &&
        g->method != DPEP_TOPK_GROUP_LIMITED_GREEDY)
        GATE_BAD("moe gate: topk_method: unknown value %d", (int)g->method);
#undef GATE_BAD
    return bad ? DPEP_ERR_INVALID : DPEP_OK;
}

void dpep_moe_router_logits(const float *router, int n_experts, int hidden, const float *x,
                            int64_t n_tokens, float *logits)
{
    if (n_tokens <= 0 || n_experts <= 0) return;
    /* float32 router (as transformers computes it): runtime/linear streams
     * it once for a few tokens, BLAS for many */
    const dpep_mat r = dpep_mat_make((void *)router, DPEP_WT_F32, n_experts, hidden);
    dpep_linear_nt((int)n_tokens, x, hidden, &r, 0.0f, logits, n_experts);
}

/* a ranks before b: larger, and any number before NaN. Strict, so that a
 * scan in index order keeps the lower index among equals. */
static inline bool better(float a, float b) { return a > b || (isnan(b) && !isnan(a)); }

/* Index of the best allowed, not yet taken entry of v[0..n), -1 if none. */
static int best_of(const float *v, int n, const unsigned char *allowed, const unsigned char *taken)
{
    int best = -1;
    for (int i = 0; i < n; i++) {
        if ((allowed && !allowed[i]) || (taken && taken[i])) continue;
        if (best < 0 || better(v[i], v[best])) best = i;
    }
    return best;
}

void moe_gate_one(const dpep_moe_gate_cfg *g, const float *logit, const float *bias,
                  int32_t *idx, float *w)
{
    const int E = g->n_experts, k = g->topk;
    float s[DPEP_MOE_MAX_EXPERTS], sc[DPEP_MOE_MAX_EXPERTS];
    unsigned char allowed[DPEP_MOE_MAX_EXPERTS], taken[DPEP_MOE_MAX_EXPERTS];

    if (g->scoring == DPEP_SCORE_SIGMOID) {
        for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-logit[e]));
    } else {
        float mx = logit[0];
        for (int e = 1; e < E; e++) mx = logit[e] > mx ? logit[e] : mx;
        float sum = 0.0f;
        for (int e = 0; e < E; e++) {
            s[e] = expf(logit[e] - mx);
            sum += s[e];
        }
        float inv = 1.0f / sum;
        for (int e = 0; e < E; e++) s[e] *= inv;
    }
    /* selection scores: the correction bias only for noaux_tc */
    for (int e = 0; e < E; e++)
        sc[e] = s[e] + ((g->method == DPEP_TOPK_NOAUX_TC && bias) ? bias[e] : 0.0f);

    /* groups: keep the topk_group best (noaux_tc: sum of top-2; group-limited:
     * max); the other groups' experts cannot be picked */
    memset(allowed, 1, (size_t)E);
    if (g->method != DPEP_TOPK_GREEDY && g->n_group > 1 && g->topk_group < g->n_group) {
        const int G = g->n_group, gs = E / G;
        float gsc[DPEP_MOE_MAX_EXPERTS];
        unsigned char gtaken[DPEP_MOE_MAX_EXPERTS];
        for (int gi = 0; gi < G; gi++) {
            const float *v = sc + (size_t)gi * gs;
            int b1 = best_of(v, gs, NULL, NULL);
            if (g->method == DPEP_TOPK_NOAUX_TC && gs >= 2) {
                unsigned char t1[DPEP_MOE_MAX_EXPERTS];
                memset(t1, 0, (size_t)gs);
                t1[b1] = 1;
                int b2 = best_of(v, gs, NULL, t1);
                gsc[gi] = v[b1] + v[b2];
            } else {
                gsc[gi] = v[b1];
            }
        }
        memset(gtaken, 0, (size_t)G);
        for (int j = 0; j < g->topk_group; j++) gtaken[best_of(gsc, G, NULL, gtaken)] = 1;
        for (int e = 0; e < E; e++) allowed[e] = gtaken[e / gs];
    }
    memset(taken, 0, (size_t)E);
    for (int j = 0; j < k; j++) {
        int b = best_of(sc, E, allowed, taken);
        taken[b] = 1;
    }
    /* ascending expert ids, weights from the unbiased scores */
    int n = 0;
    float sum = 0.0f;
    for (int e = 0; e < E && n < k; e++)
        if (taken[e]) {
            idx[n] = e;
            w[n] = s[e];
            sum += s[e];
            n++;
        }
    if (g->norm_topk_prob) {
        float den = sum + 1e-20f;
        for (int j = 0; j < k; j++) w[j] /= den;
    }
    for (int j = 0; j < k; j++) w[j] *= g->routed_scaling_factor;
}

void dpep_moe_gate_select(const dpep_moe_gate_cfg *g, const float *logits, const float *bias,
                          int64_t n_tokens, int32_t *idx, float *w)
{
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n_tokens >= MOE_GATE_PAR_MIN_TOKENS)
#endif
    for (int64_t t = 0; t < n_tokens; t++)
        moe_gate_one(g, logits + t * g->n_experts, bias, idx + t * g->topk, w + t * g->topk);
}
