/* assign.c — the DP-rank assignment rule (runtime.load_balance_method):
 * explicit data_parallel_rank, round robin, shortest queue, total tokens,
 * and the stateful assigner with cache_aware (dpep_sched.h). */
#include "dpep_sched.h"

#include <stdlib.h>

#include "radix.h"

int dpep_sched_assign(dpep_lb_method method, const dpep_request *r, int dp, dpep_dp_load *load,
                      int *rr)
{
    int pick = 0;
    if (r->dp_rank >= 0 && r->dp_rank < dp) {
        pick = r->dp_rank;
    } else if (method == DPEP_LB_ROUND_ROBIN) {
        pick = *rr % dp;
        *rr = (*rr + 1) % dp;
    } else {
        for (int i = 1; i < dp; i++) {
            int64_t a = method == DPEP_LB_SHORTEST_QUEUE ? load[i].requests : load[i].tokens;
            int64_t b = method == DPEP_LB_SHORTEST_QUEUE ? load[pick].requests : load[pick].tokens;
            if (a < b) pick = i;
        }
    }
    load[pick].requests++;
    load[pick].tokens += r->input_len + r->max_new_tokens;
    return pick;
}

struct dpep_assigner {
    dpep_assigner_params p;
    dpep_dp_load *load;        /* [groups]                                    */
    dpep_radix **view;         /* [groups] cache_aware: token-only trees       */
    int rr;
    uint64_t now;              /* picks so far: the views' clock              */
};

dpep_status dpep_assigner_create(const dpep_assigner_params *p, dpep_assigner **out)
{
    if (!p || p->groups < 1 || p->page_size < 1) return DPEP_ERR_INVALID;
    dpep_assigner *a = calloc(1, sizeof *a);
    if (!a) return DPEP_ERR_NOMEM;
    a->p = *p;
    a->load = calloc((size_t)p->groups, sizeof *a->load);
    dpep_status st = a->load ? DPEP_OK : DPEP_ERR_NOMEM;
    if (st == DPEP_OK && p->method == DPEP_LB_CACHE_AWARE) {
        a->view = calloc((size_t)p->groups, sizeof *a->view);
        dpep_radix_params rp = {.page_size = p->page_size, .pages = false};
        st = a->view ? DPEP_OK : DPEP_ERR_NOMEM;
        for (int g = 0; st == DPEP_OK && g < p->groups; g++) st = dpep_radix_create(&rp, &a->view[g]);
    }
    if (st != DPEP_OK) {
        dpep_assigner_destroy(a);
        return st;
    }
    *out = a;
    return DPEP_OK;
}

void dpep_assigner_destroy(dpep_assigner *a)
{
    if (!a) return;
    for (int g = 0; a->view && g < a->p.groups; g++) dpep_radix_destroy(a->view[g]);
    free(a->view);
    free(a->load);
    free(a);
}

const dpep_dp_load *dpep_assigner_load(const dpep_assigner *a) { return a->load; }

void dpep_assigner_done(dpep_assigner *a, int group, int64_t tokens)
{
    if (group < 0 || group >= a->p.groups) return;
    a->load[group].requests--;
    a->load[group].tokens -= tokens;
}

/* The least loaded group by outstanding tokens (ties: the lowest). */
static int least_tokens(const dpep_assigner *a)
{
    int pick = 0;
    for (int g = 1; g < a->p.groups; g++)
        if (a->load[g].tokens < a->load[pick].tokens) pick = g;
    return pick;
}

/* Are the groups' outstanding requests out of balance? */
static bool unbalanced(const dpep_assigner *a)
{
    int64_t lo = a->load[0].requests, hi = lo;
    for (int g = 1; g < a->p.groups; g++) {
        if (a->load[g].requests < lo) lo = a->load[g].requests;
        if (a->load[g].requests > hi) hi = a->load[g].requests;
    }
    return hi - lo > a->p.balance_abs && (double)hi > a->p.balance_rel * (double)lo;
}

/* cache_aware: see dpep_sched.h. */
static int pick_cached(dpep_assigner *a, const dpep_request *r, int64_t *matched)
{
    int64_t pages = r->input_len / a->p.page_size, best_m = -1;
    int best = 0;
    for (int g = 0; g < a->p.groups; g++) {
        int64_t m = dpep_radix_match(a->view[g], r->input_ids, r->input_len, pages, NULL, NULL, a->now);
        if (m > best_m) { /* the lowest group among equals */
            best_m = m;
            best = g;
        }
    }
    int64_t m_tok = best_m * a->p.page_size;
    bool hit = r->input_len > 0 && (double)m_tok > a->p.cache_threshold * (double)r->input_len;
    int pick = !unbalanced(a) && hit ? best : least_tokens(a);
    if (matched) *matched = pick == best ? m_tok : 0;
    return pick;
}

int dpep_assigner_pick(dpep_assigner *a, const dpep_request *r, int64_t *matched)
{
    a->now++;
    if (matched) *matched = 0;
    bool cache = a->p.method == DPEP_LB_CACHE_AWARE;
    int g;
    if (!cache || (r->dp_rank >= 0 && r->dp_rank < a->p.groups)) {
        g = dpep_sched_assign(cache ? DPEP_LB_TOTAL_TOKENS : a->p.method, r, a->p.groups, a->load,
                              &a->rr);
    } else {
        g = pick_cached(a, r, matched);
        a->load[g].requests++;
        a->load[g].tokens += r->input_len + r->max_new_tokens;
    }
    if (!cache) return g;
    /* the group will cache the prompt's whole pages: its view learns them
     * (out of memory there only leaves the view short of this prompt) */
    dpep_radix *v = a->view[g];
    dpep_radix_insert(v, r->input_ids, r->input_len / a->p.page_size, NULL, a->now, NULL);
    int64_t cap = a->p.cache_tokens / a->p.page_size, held = dpep_radix_cached_pages(v);
    if (cap > 0 && held > cap) dpep_radix_evict(v, held - cap);
    return g;
}
