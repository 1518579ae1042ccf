/* test_attn_core.c — the CPU decode core (attn/attn_internal.h, "CPU
 * decode core"): every table this CPU runs (portable, AVX2, AVX-512) against
 * a double-precision softmax attention on fresh random inputs, its output
 * poisoned first, over awkward sizes (1..17 heads, rows of 8..576 with
 * latent widths off the vector width, runs of 1..300 rows cut into blocks
 * several ways, scores spread wide enough that most weights underflow), and
 * the independence the header promises: a head's result is bit-for-bit the
 * same computed alone or among others. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attn_internal.h"
#include "dpep_test.h"

/* o[h] = sum_t softmax_t(scale q[h].kv[t]) kv[t, :L]; lse[h] = log sum_t
 * e^(scale q[h].kv[t]) */
static void reference(int hn, int R, int L, float scale, const float *q, const float *kv, int n,
                      double *o, double *lse)
{
    double *s = malloc(sizeof(double) * (size_t)(n > 0 ? n : 1));
    for (int h = 0; h < hn; h++) {
        double mx = -INFINITY;
        for (int t = 0; t < n; t++) {
            double d = 0;
            for (int k = 0; k < R; k++) d += (double)q[(size_t)h * R + k] * kv[(size_t)t * R + k];
            s[t] = d * scale;
            mx = s[t] > mx ? s[t] : mx;
        }
        double sum = 0;
        for (int t = 0; t < n; t++) sum += exp(s[t] - mx);
        for (int c = 0; c < L; c++) {
            double acc = 0;
            for (int t = 0; t < n; t++) acc += exp(s[t] - mx) * kv[(size_t)t * R + c];
            o[(size_t)h * L + c] = acc / sum;
        }
        lse[h] = mx + log(sum);
    }
    free(s);
}

/* Runs the table over n rows cut into blocks of the lengths cuts[] (cycled),
 * then normalizes: out = O / l. */
static void run_core(const dpep_attn_core_cpu *c, int hn, int R, int L, float scale, const float *q,
                     const float *kv, int n, const int *cuts, int ncuts, float *O, float *m, float *l,
                     float *S)
{
    for (size_t i = 0; i < (size_t)hn * L; i++) O[i] = NAN; /* poisoned */
    for (int h = 0; h < hn; h++) m[h] = l[h] = NAN;
    for (int j = 0, i = 0; j < n; i++) {
        int nt = cuts[i % ncuts];
        if (nt > n - j) nt = n - j;
        for (size_t x = 0; x < (size_t)hn * nt; x++) S[x] = NAN;
        c->block(hn, R, L, scale, q, kv + (size_t)j * R, nt, S, O, m, l, j == 0);
        j += nt;
    }
}

static double g_worst_o, g_worst_lse;

static void check_case(const dpep_attn_core_cpu *c, uint64_t *rng, int hn, int R, int L, int n,
                       double amp, const int *cuts, int ncuts)
{
    const float scale = 1.0f / sqrtf((float)R);
    float *q = malloc(sizeof(float) * (size_t)hn * R), *kv = malloc(sizeof(float) * (size_t)n * R);
    float *O = malloc(sizeof(float) * (size_t)hn * (L > 0 ? L : 1));
    float *m = malloc(sizeof(float) * (size_t)hn), *l = malloc(sizeof(float) * (size_t)hn);
    int maxcut = 0;
    for (int i = 0; i < ncuts; i++) maxcut = cuts[i] > maxcut ? cuts[i] : maxcut;
    float *S = malloc(sizeof(float) * (size_t)hn * (size_t)maxcut);
    double *ro = malloc(sizeof(double) * (size_t)hn * (L > 0 ? L : 1));
    double *rl = malloc(sizeof(double) * (size_t)hn);
    dpep_test_fill(rng, q, (size_t)hn * R, -amp, amp);
    dpep_test_fill(rng, kv, (size_t)n * R, -1.0, 1.0);
    reference(hn, R, L, scale, q, kv, n, ro, rl);
    run_core(c, hn, R, L, scale, q, kv, n, cuts, ncuts, O, m, l, S);
    double num = 0, den = 0, lse_err = 0;
    for (int h = 0; h < hn; h++) {
        for (int x = 0; x < L; x++) {
            double d = (double)O[(size_t)h * L + x] / l[h] - ro[(size_t)h * L + x];
            num += d * d;
            den += ro[(size_t)h * L + x] * ro[(size_t)h * L + x];
        }
        double e = fabs((m[h] + log((double)l[h])) - rl[h]) / (fabs(rl[h]) > 1 ? fabs(rl[h]) : 1);
        if (!(e <= lse_err)) lse_err = e; /* NaN sticks */
    }
    const double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    if (!(rel <= g_worst_o)) g_worst_o = rel;
    if (!(lse_err <= g_worst_lse)) g_worst_lse = lse_err;
    /* fp32 through a few hundred terms: 1e-5 normalized (the op tests' fp32
     * bound); the log-sum-exp within 1e-5 relative */
    EXPECT(rel <= 1e-5, "%s: hn %d R %d L %d n %d amp %g cut %d: |o - ref|/|ref| %.3g", c->name, hn,
           R, L, n, amp, cuts[0], rel);
    EXPECT(lse_err <= 1e-5, "%s: hn %d R %d L %d n %d amp %g cut %d: log-sum-exp error %.3g", c->name,
           hn, R, L, n, amp, cuts[0], lse_err);

    /* the vector tables: each head alone gives the same bits as inside the
     * group (the portable one leaves the order to BLAS) */
    if (hn > 1 && strcmp(c->name, "generic") != 0) {
        float *O1 = malloc(sizeof(float) * (size_t)(L > 0 ? L : 1)), m1, l1;
        int same = 1;
        for (int h = 0; h < hn; h++) {
            run_core(c, 1, R, L, scale, q + (size_t)h * R, kv, n, cuts, ncuts, O1, &m1, &l1, S);
            if (memcmp(&m1, &m[h], sizeof m1) || memcmp(&l1, &l[h], sizeof l1) ||
                memcmp(O1, O + (size_t)h * L, sizeof(float) * (size_t)L))
                same = 0;
        }
        EXPECT(same, "%s: hn %d R %d L %d n %d: a head alone differs from the same head among %d",
               c->name, hn, R, L, n, hn);
        free(O1);
    }
    free(q);
    free(kv);
    free(O);
    free(m);
    free(l);
    free(S);
    free(ro);
    free(rl);
}

int main(void)
{
    const dpep_attn_core_cpu *all[4];
    const int n_tables = dpep_attn_core_cpu_list(all, 4);
    printf("decode core tables on this CPU:");
    for (int i = 0; i < n_tables; i++) printf(" %s", all[i]->name);
    printf(" (in use: %s)\n", dpep_attn_core_cpu_get()->name);
    EXPECT(n_tables >= 1 && strcmp(all[0]->name, "generic") == 0, "the portable table comes first");
    EXPECT(dpep_attn_core_cpu_get() == all[n_tables - 1], "the widest table is the one in use");

    /* heads x (row R, latent L): DeepSeek-V3 / the small preset / odd widths */
    static const int heads[] = {1, 3, 4, 5, 16, 17};
    static const int rl[][2] = {{576, 512}, {288, 256}, {40, 33}, {17, 9}, {8, 8}, {24, 0}};
    static const int ns[] = {1, 2, 7, 37, 300};
    static const int cut_a[] = {256}, cut_b[] = {1}, cut_c[] = {16, 5, 1, 64, 3};
    uint64_t rng = 0x9e3779b97f4a7c15ULL;
    for (int ti = 0; ti < n_tables; ti++) {
        g_worst_o = g_worst_lse = 0;
        for (size_t hi = 0; hi < sizeof heads / sizeof *heads; hi++)
            for (size_t ri = 0; ri < sizeof rl / sizeof *rl; ri++)
                for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
                    const int hn = heads[hi], R = rl[ri][0], L = rl[ri][1], n = ns[ni];
                    if (hn * (size_t)R * n > 16 * 576 * 300 / 2 && hn != 16) continue; /* time */
                    check_case(all[ti], &rng, hn, R, L, n, 1.0, cut_a, 1);
                    if (n > 1) {
                        check_case(all[ti], &rng, hn, R, L, n, 1.0, cut_b, 1);
                        check_case(all[ti], &rng, hn, R, L, n, 1.0, cut_c, 5);
                    }
                }
        /* wide scores: most weights underflow to 0 */
        check_case(all[ti], &rng, 16, 288, 256, 300, 40.0, cut_c, 5);
        check_case(all[ti], &rng, 3, 40, 33, 37, 60.0, cut_a, 1);
        printf("%s: worst |o - ref|/|ref| %.3g, worst log-sum-exp error %.3g\n", all[ti]->name,
               g_worst_o, g_worst_lse);
    }
    /* forcing a table by name (benchmarks, A/B) and back */
    for (int ti = 0; ti < n_tables; ti++) {
        EXPECT(dpep_attn_cpu_kernels_force(all[ti]->name), "force %s", all[ti]->name);
        EXPECT(strcmp(dpep_attn_cpu_kernels(1000), all[ti]->name) == 0, "forced %s in use",
               all[ti]->name);
    }
    /* the choice by head count: a table's max_heads hands larger blocks to
     * the portable one, a forced table keeps them */
    EXPECT(dpep_attn_cpu_kernels_force(NULL), "back to the choice");
    const dpep_attn_core_cpu *best = all[n_tables - 1];
    EXPECT(dpep_attn_core_cpu_for(1) == best, "1 head: %s", dpep_attn_core_cpu_for(1)->name);
    if (best->max_heads > 0) {
        EXPECT(dpep_attn_core_cpu_for(best->max_heads) == best, "%d heads: the widest",
               best->max_heads);
        EXPECT(dpep_attn_core_cpu_for(best->max_heads + 1) == &dpep_attn_core_generic,
               "%d heads: the portable table", best->max_heads + 1);
    } else {
        EXPECT(dpep_attn_core_cpu_for(128) == best, "128 heads: the widest");
    }
    for (int ti = 0; ti < n_tables; ti++) {
        dpep_attn_cpu_kernels_force(all[ti]->name);
        EXPECT(dpep_attn_core_cpu_for(1000) == all[ti], "forced %s for 1000 heads", all[ti]->name);
    }
    EXPECT(!dpep_attn_cpu_kernels_force("no-such-isa"), "an unknown table is refused");
    EXPECT(dpep_attn_cpu_kernels_force(NULL), "back to the choice");
    EXPECT(dpep_attn_core_cpu_get() == all[n_tables - 1], "the choice again");
    return dpep_test_summary();
}
