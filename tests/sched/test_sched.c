/* test_sched.c — the step scheduler (runtime/sched) driven as a live server
 * would drive it, on the HF transformers tiny V3 reference model, under
 * mpiexec with any layout given as --layout TP,DP,EP,DPA:
 *   A. every request submitted before the first step (the offline shape);
 *   B. requests submitted at different steps, one aborted while it decodes,
 *      one aborted in the step it arrives, idle steps before the source
 *      closes;
 * and in both: every greedy continuation equals the goldens' 16 tokens, the
 * streamed tokens (on_token) equal the final output in order, each request
 * finishes exactly once on its DP group's leader, aborted ones say so, and
 * the instance reports `finished` only after close. Both run with the
 * prefix cache off, then on (with a KV pool small enough that the cache
 * must evict), then on with attention-DP balance holding admissions; after
 * each, every KV page is back in the pool.
 *   C. the prefix cache, requests one after another on one DP group, cache
 *      on vs off: a repeated prompt (its prefix ends mid-page), a prompt
 *      entirely cached (its last page still computed), a prompt extending a
 *      cached prompt + output, a request aborted while it holds shared pages
 *      then the same prompt again, an unrelated prompt: greedy tokens equal,
 *      logprobs within 1e-5, the cached token counts exact. */
#include "dpep_sched.h"
#include "dpep_world.h"
#include "../dpep_golden.h"
#include "../dpep_test.h"

#include <stdlib.h>
#include <string.h>

#define NP 3          /* golden prompts                                */
#define NGEN 16       /* golden greedy tokens                          */
#define MAXR 16       /* requests per scenario                         */

typedef struct seen {
    int streamed[MAXR];          /* on_token calls                       */
    int32_t stream[MAXR][NGEN];  /* streamed tokens                      */
    int finished[MAXR];          /* on_finish calls                      */
    int n_out[MAXR];
    int32_t out[MAXR][NGEN];
    double lp[MAXR][NGEN];
    bool aborted[MAXR], failed[MAXR];
} seen;

static bool g_cache; /* the scenarios' schedulers keep a prefix cache */
static int g_balance; /* and hold admissions for attention-DP balance   */

static void on_token(void *user, const dpep_sched_result *r)
{
    seen *s = user;
    if (r->index < 0 || r->index >= MAXR) return;
    int k = s->streamed[r->index]++;
    if (k < NGEN) s->stream[r->index][k] = r->out[r->n_out - 1];
}

static void on_finish(void *user, const dpep_sched_result *r)
{
    seen *s = user;
    if (r->index < 0 || r->index >= MAXR) return;
    s->finished[r->index]++;
    s->n_out[r->index] = r->n_out;
    s->aborted[r->index] = r->aborted;
    s->failed[r->index] = r->failed;
    for (int j = 0; j < r->n_out && j < NGEN; j++) {
        s->out[r->index][j] = r->out[j];
        s->lp[r->index][j] = r->logprob[j];
    }
}

typedef struct fixture {
    dpep_world w;
    dpep_model_config m;
    dpep_weights wts;
    dpep_engine *e;
    int32_t *ids[NP];
    int64_t len[NP];
    int64_t *greedy[NP];
    int groups;
} fixture;

static dpep_request make_req(const fixture *f, int index, int prompt)
{
    dpep_request r;
    memset(&r, 0, sizeof r);
    snprintf(r.id, sizeof r.id, "req-%d", index);
    r.index = index;
    r.input_ids = f->ids[prompt];
    r.input_len = (int)f->len[prompt];
    r.max_new_tokens = NGEN;
    r.sampling.temperature = 0;
    r.sampling.top_p = 1;
    r.dp_rank = -1;
    return r;
}

static dpep_sched *make_sched(fixture *f, seen *s)
{
    const dpep_layout *L = &f->w.layout;
    dpep_sched_params p = {.m = &f->m, .engine = f->e, .instance = f->w.instance,
                           .attn_tp = f->w.attn_tp, .instance_index = f->w.me.instance,
                           .attn_dp = L->attn_dp, .attn_dp_rank = f->w.me.attn_dp_rank,
                           .max_running = 4, .max_seqs = 8, .chunk = 8, .step_tokens = 16,
                           .max_ctx = 64, .ignore_eos = true, .comm_timeout_s = 60,
                           .prefix_cache = g_cache, .balance_hold = g_balance,
                           .cb = {.user = s, .on_token = on_token, .on_finish = on_finish}};
    dpep_sched *sc = NULL;
    EXPECT(dpep_sched_create(&p, &sc) == DPEP_OK, "sched create");
    return sc;
}

/* Each request's DP group: round robin over the instance's groups. */
static int group_of(const fixture *f, int index)
{
    return f->w.me.instance * f->w.layout.attn_dp + index % f->w.layout.attn_dp;
}

/* The checks every scenario shares, on the leaders; the counts summed over
 * the world must cover every request once. */
static void check_seen(const fixture *f, const seen *s, dpep_sched *sc, int n_req,
                       const int *prompt, const bool *aborted, const char *what)
{
    int fin_local = 0;
    if (dpep_sched_is_leader(sc)) {
        for (int i = 0; i < n_req; i++) {
            if (!s->finished[i]) continue;
            fin_local += s->finished[i];
            EXPECT(s->finished[i] == 1, "%s req %d finished %d times", what, i, s->finished[i]);
            EXPECT(s->aborted[i] == aborted[i], "%s req %d aborted %d (want %d)", what, i,
                   s->aborted[i], aborted[i]);
            EXPECT(!s->failed[i], "%s req %d failed", what, i);
            EXPECT(s->streamed[i] == s->n_out[i], "%s req %d streamed %d of %d tokens", what, i,
                   s->streamed[i], s->n_out[i]);
            bool same_stream = true, golden = true;
            for (int j = 0; j < s->n_out[i]; j++) {
                same_stream &= s->stream[i][j] == s->out[i][j];
                golden &= s->out[i][j] == (int32_t)f->greedy[prompt[i]][j];
            }
            EXPECT(same_stream, "%s req %d: streamed tokens differ from the output", what, i);
            EXPECT(golden, "%s req %d (prompt %d): tokens differ from the goldens", what, i,
                   prompt[i]);
            if (!aborted[i]) EXPECT(s->n_out[i] == NGEN, "%s req %d: %d tokens", what, i, s->n_out[i]);
            else EXPECT(s->n_out[i] < NGEN, "%s req %d aborted after %d tokens", what, i, s->n_out[i]);
        }
    }
    int fin_all = 0;
    MPI_Allreduce(&fin_local, &fin_all, 1, MPI_INT, MPI_SUM, f->w.world);
    EXPECT(fin_all == n_req * f->w.layout.n_instances, "%s: %d of %d requests finished", what,
           fin_all, n_req * f->w.layout.n_instances);
}

/* After a scheduler is gone every KV page is back in the pool (the cache's
 * included). */
static void check_pool(const fixture *f, const char *what)
{
    const dpep_attn_kv *kv = dpep_engine_kv(f->e);
    EXPECT(dpep_attn_kv_free_tokens(kv) == dpep_attn_kv_capacity_tokens(kv),
           "%s (cache %d): %lld of %lld KV tokens back in the pool", what, g_cache,
           (long long)dpep_attn_kv_free_tokens(kv), (long long)dpep_attn_kv_capacity_tokens(kv));
}

/* A: everything before the first step. */
static void scenario_offline(fixture *f)
{
    seen s;
    memset(&s, 0, sizeof s);
    dpep_sched *sc = make_sched(f, &s);
    if (!sc) return;
    const int n = 2 * NP;
    int prompt[MAXR];
    bool aborted[MAXR] = {0};
    for (int i = 0; i < n; i++) {
        prompt[i] = i % NP;
        if (f->w.me.instance_rank == 0) {
            dpep_request r = make_req(f, i, prompt[i]);
            EXPECT(dpep_sched_submit(sc, &r, group_of(f, i)) == DPEP_OK, "submit %d", i);
        }
    }
    if (f->w.me.instance_rank != 0) {
        dpep_request r = make_req(f, 0, 0);
        EXPECT(dpep_sched_submit(sc, &r, group_of(f, 0)) == DPEP_ERR_INVALID,
               "submit refused off the source rank");
    }
    dpep_sched_close(sc);
    dpep_sched_step_info info;
    int steps = 0;
    do {
        EXPECT(dpep_sched_step(sc, &info) == DPEP_OK, "step");
    } while (!info.finished && ++steps < 1000);
    EXPECT(info.finished, "offline: finished");
    check_seen(f, &s, sc, n, prompt, aborted, "offline");
    dpep_sched_stats ss;
    dpep_sched_get_stats(sc, &ss);
    int64_t ev = ss.evicted_tokens, ev_max = 0;
    MPI_Allreduce(&ev, &ev_max, 1, MPI_INT64_T, MPI_MAX, f->w.world);
    if (!g_cache) EXPECT(ev_max == 0, "offline without the cache: nothing evicted");
    dpep_sched_destroy(sc);
    check_pool(f, "offline");
}

/* B: arrivals at different steps, aborts, idle steps, then close. */
static void scenario_live(fixture *f)
{
    seen s;
    memset(&s, 0, sizeof s);
    dpep_sched *sc = make_sched(f, &s);
    if (!sc) return;
    const bool src = f->w.me.instance_rank == 0;
    /* step at which request i is submitted; request 3 is aborted at step 8
     * (while decoding), request 5 in the step it arrives */
    const int at[] = {0, 0, 2, 3, 5, 9, 14};
    const int n = (int)(sizeof at / sizeof at[0]);
    int prompt[MAXR];
    bool aborted[MAXR] = {0};
    aborted[3] = aborted[5] = true;
    for (int i = 0; i < n; i++) prompt[i] = (i * 2) % NP;
    dpep_sched_step_info info;
    int step = 0, idle = 0;
    for (; step < 2000; step++) {
        for (int i = 0; src && i < n; i++) {
            if (at[i] != step) continue;
            dpep_request r = make_req(f, i, prompt[i]);
            EXPECT(dpep_sched_submit(sc, &r, group_of(f, i)) == DPEP_OK, "submit %d", i);
            if (i == 5) EXPECT(dpep_sched_abort(sc, r.id) == DPEP_OK, "abort at arrival");
        }
        if (src && step == 8) EXPECT(dpep_sched_abort(sc, "req-3") == DPEP_OK, "abort 3");
        if (src && step == 8) EXPECT(dpep_sched_abort(sc, "no-such-id") == DPEP_OK, "abort unknown");
        /* a few idle steps after the last arrival drains, then close */
        if (src && step == 200) dpep_sched_close(sc);
        EXPECT(dpep_sched_step(sc, &info) == DPEP_OK, "step %d", step);
        if (!info.ran && !info.finished) idle++;
        if (info.finished) break;
    }
    EXPECT(info.finished, "live: finished after close");
    EXPECT(idle > 0, "live: idle steps reported (ran = false) before close");
    EXPECT(step >= 200, "live: not finished before the source closed (step %d)", step);
    check_seen(f, &s, sc, n, prompt, aborted, "live");
    dpep_sched_stats ss;
    dpep_sched_get_stats(sc, &ss);
    int64_t held = ss.held_steps, held_all = 0;
    MPI_Allreduce(&held, &held_all, 1, MPI_INT64_T, MPI_SUM, f->w.world);
    if (g_balance && f->w.layout.attn_dp > 1)
        EXPECT(held_all > 0, "live with balance: arrivals on some groups only were held (%lld steps)",
               (long long)held_all);
    if (!g_balance) EXPECT(held_all == 0, "live without balance: nothing held");
    dpep_sched_destroy(sc);
    check_pool(f, "live");
}

/* The leader of this rank's DP group (attention-TP rank 0) sees its results. */
static bool is_leader(const fixture *f)
{
    int r = 0;
    if (f->w.attn_tp != MPI_COMM_NULL) MPI_Comm_rank(f->w.attn_tp, &r);
    return r == 0;
}

/* C: one request at a time on DP group 0 of each instance; steps until the
 * instance has finished `target` requests in all. */
static void run_until(dpep_sched *sc, int64_t target)
{
    dpep_sched_step_info info = {0};
    int guard = 0;
    do {
        EXPECT(dpep_sched_step(sc, &info) == DPEP_OK, "step");
    } while (info.done < target && ++guard < 500);
    EXPECT(info.done >= target, "cache: %lld of %lld finished", (long long)info.done, (long long)target);
}

#define NC 9 /* scenario C's requests */

static void scenario_cache_run(fixture *f, bool cache, seen *s, int64_t *cached)
{
    g_cache = cache;
    memset(s, 0, sizeof *s);
    dpep_sched *sc = make_sched(f, s);
    if (!sc) return;
    const bool src = f->w.me.instance_rank == 0;
    const int g0 = f->w.me.instance * f->w.layout.attn_dp;
    const int32_t *p0 = f->ids[2]; /* the longest golden prompt (29 tokens) */
    const int L0 = (int)f->len[2];
    static int32_t ext[64], head[8], big[2][48];
    for (int b = 0; b < 2; b++)
        for (int j = 0; j < 48; j++) big[b][j] = (int32_t)(1 + (j * 7 + b * 101) % 300);
    if (L0 < 9 || L0 + 10 > 64) {
        EXPECT(false, "cache: golden prompt 2 has %d tokens (want 9..54)", L0);
        dpep_sched_destroy(sc);
        return;
    }
    memcpy(ext, p0, sizeof *ext * (size_t)L0);
    for (int j = 0; j < 10; j++) ext[L0 + j] = (int32_t)f->greedy[2][j]; /* prompt 2 + its output */
    memcpy(head, p0, sizeof head);
    const struct { const int32_t *ids; int len; bool abort; } q[NC] = {
        {p0, L0, false},       /* 0: fills the cache                          */
        {p0, L0, false},       /* 1: the same prompt (ends mid-page)          */
        {head, 8, false},      /* 2: two whole pages, all cached: one computed */
        {ext, L0 + 10, false}, /* 3: prompt + output of 0                     */
        {p0, L0, true},        /* 4: aborted while it holds shared pages      */
        {p0, L0, false},       /* 5: the same prompt again                    */
        {f->ids[1], (int)f->len[1], false}, /* 6: another prompt (golden 1)    */
        {big[0], 48, false},   /* 7, 8: 64 tokens each: the 160-token pool     */
        {big[1], 48, false},   /*   cannot hold 8 beside the cache: it evicts  */
    };
    for (int i = 0; i < NC; i++) {
        dpep_sched_live before, after;
        dpep_sched_get_live(sc, &before);
        if (src) {
            dpep_request r = make_req(f, i, 0);
            r.input_ids = q[i].ids;
            r.input_len = q[i].len;
            EXPECT(dpep_sched_submit(sc, &r, g0) == DPEP_OK, "cache: submit %d", i);
        }
        if (q[i].abort) {
            dpep_sched_step_info info;
            for (int k = 0; k < 3; k++) EXPECT(dpep_sched_step(sc, &info) == DPEP_OK, "step");
            if (src) EXPECT(dpep_sched_abort(sc, "req-4") == DPEP_OK, "cache: abort 4");
        }
        run_until(sc, i + 1);
        dpep_sched_get_live(sc, &after);
        cached[i] = after.cached_tokens - before.cached_tokens;
    }
    if (src) dpep_sched_close(sc);
    dpep_sched_step_info info;
    do {
        EXPECT(dpep_sched_step(sc, &info) == DPEP_OK, "step");
    } while (!info.finished);
    dpep_sched_live live;
    dpep_sched_get_live(sc, &live);
    dpep_sched_stats ss;
    dpep_sched_get_stats(sc, &ss);
    if (f->w.me.attn_dp_rank == 0) {
        EXPECT(cache ? live.cache_tokens > 0 : live.cache_tokens == 0,
               "cache %d: the tree holds %lld tokens at the end", cache, (long long)live.cache_tokens);
        EXPECT(cache ? ss.evicted_tokens > 0 : ss.evicted_tokens == 0,
               "cache %d: %lld tokens evicted for room", cache, (long long)ss.evicted_tokens);
    }
    EXPECT(dpep_sched_flush_cache(sc), "flush when idle");
    dpep_sched_get_live(sc, &live);
    EXPECT(live.cache_tokens == 0, "flushed: the tree is empty");
    dpep_sched_destroy(sc);
    check_pool(f, "cache scenario");
}

static void scenario_cache(fixture *f)
{
    static seen off, on;
    int64_t c_off[NC], c_on[NC];
    scenario_cache_run(f, false, &off, c_off);
    scenario_cache_run(f, true, &on, c_on);
    g_cache = false;
    if (f->w.me.attn_dp_rank != 0) return; /* group 0 of each instance ran them */
    const int L0 = (int)f->len[2];
    const int64_t want[NC] = {0, (L0 - 1) / 4 * 4, 4, (L0 + 9) / 4 * 4, -1, (L0 - 1) / 4 * 4, -1, -1, -1};
    for (int i = 0; i < NC; i++) {
        EXPECT(c_off[i] == 0, "cache off: req %d took %lld cached tokens", i, (long long)c_off[i]);
        if (want[i] >= 0)
            EXPECT(c_on[i] == want[i], "cache on: req %d took %lld cached tokens (want %lld)", i,
                   (long long)c_on[i], (long long)want[i]);
        if (!is_leader(f)) continue;
        bool same = on.n_out[i] == off.n_out[i] && on.aborted[i] == off.aborted[i];
        double dlp = 0;
        int nmin = on.n_out[i] < off.n_out[i] ? on.n_out[i] : off.n_out[i];
        for (int j = 0; j < nmin && j < NGEN; j++) {
            same &= on.out[i][j] == off.out[i][j];
            double d = on.lp[i][j] - off.lp[i][j];
            dlp = d < 0 ? (dlp > -d ? dlp : -d) : (dlp > d ? dlp : d);
        }
        if (i == 4) { /* aborted after a few steps: a prefix of the same tokens */
            same = on.aborted[i] && off.aborted[i];
            int n = on.n_out[i] < off.n_out[i] ? on.n_out[i] : off.n_out[i];
            for (int j = 0; j < n; j++) same &= on.out[i][j] == off.out[i][j];
        }
        EXPECT(same, "req %d: cache on gives the tokens of cache off", i);
        EXPECT(dlp < 1e-5, "req %d: logprobs within 1e-5 (max diff %.2e)", i, dlp);
    }
    for (int i = 0; i < NC; i++) {
        if (!is_leader(f) || i == 4 || i == 2 || i == 3 || i >= 7) continue;
        int pr = i == 6 ? 1 : 2;
        bool golden = on.n_out[i] == NGEN;
        for (int j = 0; j < on.n_out[i]; j++) golden &= on.out[i][j] == (int32_t)f->greedy[pr][j];
        EXPECT(golden, "req %d with the cache: the goldens' tokens", i);
    }
}

static bool setup(fixture *f, const char *src, int tp, int dp, int ep, int dpa)
{
    memset(f, 0, sizeof *f);
    dpep_config cfg;
    dpep_config_init(&cfg);
    cfg.parallel.tp = tp;
    cfg.parallel.dp = dp;
    cfg.parallel.ep = ep;
    cfg.parallel.enable_dp_attention = dpa;
    cfg.parallel.moe_dense_tp_size = 1;
    cfg.runtime.device = DPEP_DEVICE_CPU;
    cfg.runtime.bind = DPEP_BIND_NONE;
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_world_init(NULL, NULL, &f->w);
    bool ok = dpep_config_validate(&cfg, f->w.size, &d) == DPEP_OK &&
              dpep_world_setup(&f->w, &cfg, &d) == DPEP_OK;
    dpep_config_free(&cfg);
    dpep_golden gold;
    memset(&gold, 0, sizeof gold);
    dpep_ckpt *ck = NULL;
    ok = ok && dpep_golden_open_model(&gold, src, "deepseek_v3_tiny", &f->m, &ck);
    ok = ok && dpep_weights_load(ck, &f->m, &f->w.layout, &f->w.me, &f->wts, &d) == DPEP_OK;
    dpep_ckpt_close(ck);
    for (int p = 0; ok && p < NP; p++) {
        char name[64];
        snprintf(name, sizeof name, "p%d.input_ids", p);
        int64_t *ids64 = dpep_golden_i64(&gold, name, &f->len[p]);
        snprintf(name, sizeof name, "p%d.greedy", p);
        int64_t ng = 0;
        f->greedy[p] = dpep_golden_i64(&gold, name, &ng);
        ok = ids64 && f->greedy[p] && ng == NGEN;
        f->ids[p] = ok ? malloc(sizeof(int32_t) * (size_t)f->len[p]) : NULL;
        for (int64_t i = 0; ok && i < f->len[p]; i++) f->ids[p][i] = (int32_t)ids64[i];
        free(ids64);
    }
    if (gold.ck) dpep_golden_close(&gold);
    if (!ok) {
        dpep_diag_print(&d, stdout);
        return false;
    }
    dpep_engine_params ep_ = {.m = &f->m, .w = &f->wts, .layout = &f->w.layout, .me = &f->w.me,
                              .attn_tp = f->w.attn_tp, .ep = f->w.ep, .moe_tp = f->w.moe_tp,
                              .dense = f->w.dense, .backend = DPEP_A2A_ALLTOALL,
                              .comm_timeout_s = 60, .max_tokens = 16, .max_ctx = 64,
                              .max_seqs = 8, .page_size = 4,
                              /* 160 tokens: the running requests fit, the cache must evict */
                              .kv_budget_bytes = (size_t)(160 * dpep_model_kv_bytes_per_token(&f->m, 4))};
    return dpep_engine_create(&ep_, &f->e, &d) == DPEP_OK;
}

int main(int argc, char **argv)
{
    int tp = 1, dp = 1, ep = 1, dpa = 0;
    const char *src = argc > 1 ? argv[1] : ".";
    if (argc > 3 && strcmp(argv[2], "--layout") == 0)
        sscanf(argv[3], "%d,%d,%d,%d", &tp, &dp, &ep, &dpa);
    fixture f;
    bool ok = setup(&f, src, tp, dp, ep, dpa);
    EXPECT(ok, "setup tp %d dp %d ep %d dpa %d", tp, dp, ep, dpa);
    int all_ok = 0, mine = ok;
    MPI_Allreduce(&mine, &all_ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (all_ok) {
        for (int c = 0; c < 3; c++) { /* cache off, on, on + balance (hold 3 steps) */
            g_cache = c >= 1;
            g_balance = c == 2 ? 3 : 0;
            scenario_offline(&f);
            scenario_live(&f);
        }
        g_balance = 0;
        scenario_cache(&f);
    }
    dpep_engine_destroy(f.e);
    dpep_weights_free(&f.wts);
    for (int p = 0; p < NP; p++) {
        free(f.ids[p]);
        free(f.greedy[p]);
    }
    int fails = g_fail, total = 0;
    MPI_Allreduce(&fails, &total, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (f.w.rank == 0) printf("ranks' failures: %d\n", total);
    dpep_world_finalize(&f.w);
    int rc = dpep_test_summary();
    return rc || total ? 1 : 0;
}
