/* sample_cpu.c — next-token sampling (greedy, temperature, top-k, top-p, min-p) with
 * a per-request random stream, and the log-probability of the chosen token:
 * the CPU kernels of the engine's sampling and the reference for other
 * devices'. */
#include "dpep_engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Bisection steps of the top-p threshold: 2^-40 of the max probability, far
 * below float resolution. */
#define TOP_P_BISECT_STEPS 40

uint64_t dpep_rng_seed(uint64_t seed)
{
    /* Avoid the all-zero state of xorshift; mix the seed once. */
    uint64_t z = seed + 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return z ? z : 0x2545f4914f6cdd1dull;
}

double dpep_rng_uniform(uint64_t *rng)
{
    /* xorshift64* */
    uint64_t x = *rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *rng = x;
    return (double)((x * 0x2545f4914f6cdd1dull) >> 11) * (1.0 / 9007199254740992.0);
}

static int argmax(const float *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i; /* strict: the lowest id wins ties */
    return best;
}

/* Selection of the k-th largest value (k >= 1) over a copy in `tmp`. */
static float kth_largest(const float *x, int n, int k, float *tmp)
{
    memcpy(tmp, x, sizeof(float) * (size_t)n);
    int lo = 0, hi = n - 1, want = k - 1;
    while (lo < hi) { /* quickselect, descending */
        float pivot = tmp[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (tmp[i] > pivot) i++;
            while (tmp[j] < pivot) j--;
            if (i <= j) {
                float t = tmp[i];
                tmp[i] = tmp[j];
                tmp[j] = t;
                i++;
                j--;
            }
        }
        if (want <= j) hi = j;
        else if (want >= i) lo = i;
        else break;
    }
    return tmp[want];
}

int dpep_sample(const float *logits, int vocab, const dpep_sampling *s, uint64_t *rng,
                float *scratch)
{
    if (s->temperature <= 0.0f || s->top_k == 1) return argmax(logits, vocab);
    float *p = scratch, *tmp = scratch + vocab;
    /* top-k: keep the logits >= the k-th largest (ties kept: deterministic). */
    float cut = -INFINITY;
    if (s->top_k > 0 && s->top_k < vocab) cut = kth_largest(logits, vocab, s->top_k, tmp);
    float mx = logits[argmax(logits, vocab)];
    double sum = 0;
    for (int i = 0; i < vocab; i++) {
        p[i] = logits[i] >= cut ? expf((logits[i] - mx) / s->temperature) : 0.0f;
        sum += p[i];
    }
    /* top-p: the smallest set of the most probable tokens whose mass reaches
     * top_p; found by bisection on a probability threshold (no sort). */
    if (s->top_p > 0.0f && s->top_p < 1.0f) {
        double target = s->top_p * sum, lo = 0, hi = 1.0; /* p/max in (0, 1] */
        float pmax = 1.0f;                                 /* exp(0) at the max */
        for (int it = 0; it < TOP_P_BISECT_STEPS; it++) {
            double mid = 0.5 * (lo + hi), mass = 0;
            for (int i = 0; i < vocab; i++)
                if (p[i] >= mid * pmax) mass += p[i];
            if (mass >= target) lo = mid;
            else hi = mid;
        }
        double keep = lo * pmax;
        sum = 0;
        for (int i = 0; i < vocab; i++) {
            if (p[i] < keep) p[i] = 0.0f;
            sum += p[i];
        }
    }
    /* min-p: drop what is below min_p of the most probable token (whose
     * weight is exp(0) = 1, and which top-k and top-p always keep). */
    if (s->min_p > 0.0f) {
        float keep = s->min_p;
        sum = 0;
        for (int i = 0; i < vocab; i++) {
            if (p[i] < keep) p[i] = 0.0f;
            sum += p[i];
        }
    }
    double u = dpep_rng_uniform(rng) * sum, acc = 0;
    int last = 0;
    for (int i = 0; i < vocab; i++) {
        if (p[i] <= 0.0f) continue;
        acc += p[i];
        last = i;
        if (u < acc) return i;
    }
    return last; /* rounding at the top end */
}

double dpep_logprob(const float *logits, int vocab, int token)
{
    float mx = logits[0];
    for (int v = 1; v < vocab; v++) mx = logits[v] > mx ? logits[v] : mx;
    double z = 0;
    for (int v = 0; v < vocab; v++) z += exp((double)logits[v] - mx);
    return (double)logits[token] - mx - log(z);
}
