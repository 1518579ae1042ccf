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
 * the instance reports `finished` only after close. */
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
    bool aborted[MAXR], failed[MAXR];
} seen;

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
    for (int j = 0; j < r->n_out && j < NGEN; j++) s->out[r->index][j] = r->out[j];
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
    dpep_sched_destroy(sc);
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
    dpep_sched_destroy(sc);
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
                              .max_seqs = 8, .page_size = 4, .kv_budget_bytes = 4u << 20};
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
        scenario_offline(&f);
        scenario_live(&f);
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
