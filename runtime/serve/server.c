/* server.c — `dpep serve`: the job behind rank 0's HTTP API.
 *
 * Every iteration of the loop, on every rank:
 *   1. rank 0 collects new requests and cancels from the hub (sleeping on it
 *      while nothing is in flight), assigns each new request a DP group, and
 *      broadcasts a small header, then the requests and cancels when there
 *      are some; the other ranks wait for the header without spinning
 *      (nonblocking broadcast polled with growing sleeps);
 *   2. each instance's source rank submits its instance's requests to its
 *      scheduler and the cancels as aborts;
 *   3. when anything is in flight, every rank runs one scheduler step (the
 *      step agrees inside each instance, as in `dpep run`);
 *   4. the tokens and finishes the DP leaders saw are gathered to rank 0,
 *      which hands them to the waiting HTTP threads.
 * About once a second while busy, the header also asks every rank for its
 * expert load (a reduce to rank 0, for /metrics); every step, each DP leader's
 * live state (running, waiting, KV use) rides on the event gather.
 * Shutdown (SIGTERM/SIGINT on rank 0, or a failure) travels in the header:
 * the first signal drains (new requests get 503, in-flight ones may finish
 * for server.drain_timeout_s), a second one stops at once. */
#include "serve_internal.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dpep_text.h"
#include "http.h"

/* Requests taken from the hub per step at most. */
#define SERVE_MAX_NEW 256
#define SERVE_MAX_CANCEL 256
/* Idle: how long rank 0 sleeps on the hub between looks at the signal flag. */
#define SERVE_IDLE_WAIT_S 0.2
/* Polling a broadcast: spin this long, then sleep from 20 us doubling to 1 ms. */
#define SERVE_SPIN_S 50e-6
#define SERVE_SLEEP_MIN_NS 20000L
#define SERVE_SLEEP_MAX_NS 1000000L
/* How often a busy job refreshes the expert load of /metrics. */
#define SERVE_STATS_PERIOD_S 1.0

static volatile sig_atomic_t g_stop; /* signals received (the handler is the only writer) */
static void on_signal(int sig)
{
    (void)sig;
    if (g_stop < 2) g_stop = g_stop + 1;
}

/* A request on the wire (rank 0 -> all). */
typedef struct wire_new {
    int64_t index;
    int32_t input_len, max_new, top_k, group, ignore_eos;
    float temperature, top_p, min_p;
    uint64_t seed;
} wire_new;

enum { H_NEW, H_TOK, H_CANCEL, H_SHUTDOWN, H_BUSY, H_STATS, H_FLUSH, H_N };

/* Each rank's state, first in its share of the event gather. */
typedef struct rank_state {
    int32_t group, leader;  /* global DP group; is this rank its leader      */
    int64_t running, waiting, kv_used, kv_capacity;
    int64_t cache_tokens, prompt_tokens, cached_tokens, evicted_tokens;
} rank_state;

/* One event from a DP leader to rank 0. */
typedef struct event {
    int64_t index;
    int32_t group;          /* the request's global DP group                 */
    int32_t token;          /* >= 0: a new output token; -1: finished        */
    int32_t flags;          /* finished: 1 failed, 2 aborted                 */
    int32_t n_out;
    double logprob;
} event;

typedef struct server {
    serve_job job;
    const dpep_config *cfg;
    serve_hub *hub;
    serve_http *http;
    dpep_tokenizer *tok;
    dpep_assigner *as;      /* rank 0: the DP assignment (load, cache views) */
    event *ev;              /* this rank's events of the step                */
    int64_t n_ev, cap_ev;
    int32_t *ptok;          /* the step's new prompt tokens (grown, reused)  */
    int64_t cap_ptok;
    char *send;             /* this rank's state + events (grown, reused)    */
    int64_t cap_send;
    int *g_cnt, *g_dsp;     /* rank 0: [world] gather counts and displacements */
    char *g_all;            /* rank 0: the gathered events (grown, reused)    */
    int64_t cap_all;
    dpep_status ev_st;
    /* rank 0: metrics */
    serve_metrics *metrics;
    metrics_group *mg;      /* [groups]                                      */
    int64_t *expert;        /* [layers * routed experts]: the reduce's target */
    double t_stats;         /* the last expert-load refresh                   */
    bool stats_dirty;       /* a step ran since                               */
    /* rank 0: draining after a signal */
    bool draining;
    double t_drain;
} server;

static void on_token(void *user, const dpep_sched_result *r)
{
    server *s = user;
    if (!dpep_grow((void **)&s->ev, &s->cap_ev, s->n_ev + 1, sizeof *s->ev)) {
        s->ev_st = DPEP_ERR_NOMEM;
        return;
    }
    s->ev[s->n_ev++] = (event){r->index, r->dp_rank, r->out[r->n_out - 1], 0, r->n_out,
                               r->logprob[r->n_out - 1]};
}

static void on_finish(void *user, const dpep_sched_result *r)
{
    server *s = user;
    if (!dpep_grow((void **)&s->ev, &s->cap_ev, s->n_ev + 1, sizeof *s->ev)) {
        s->ev_st = DPEP_ERR_NOMEM;
        return;
    }
    s->ev[s->n_ev++] = (event){r->index, r->dp_rank, -1, (r->failed ? 1 : 0) | (r->aborted ? 2 : 0),
                               r->n_out, 0};
}

/* A broadcast that does not spin: polled with growing sleeps, so an idle
 * server costs no CPU, and a busy one waits at most SERVE_SPIN_S more. */
static dpep_status bcast_poll(void *buf, int count, MPI_Datatype t, MPI_Comm comm)
{
    MPI_Request req;
    DPEP_CHECK_MPI(MPI_Ibcast(buf, count, t, 0, comm, &req));
    double t0 = dpep_clock_s();
    long ns = SERVE_SLEEP_MIN_NS;
    for (;;) {
        int done = 0;
        DPEP_CHECK_MPI(MPI_Test(&req, &done, MPI_STATUS_IGNORE));
        if (done) return DPEP_OK;
        if (dpep_clock_s() - t0 < SERVE_SPIN_S) continue;
        struct timespec ts = {0, ns};
        nanosleep(&ts, NULL);
        if (ns < SERVE_SLEEP_MAX_NS) ns *= 2;
    }
}

/* Rank 0: each DP group's outstanding requests and tokens (the assignment's
 * load) and live state, for /get_load and /metrics. */
static void publish_load(server *s)
{
    hub_load l[256];
    int n = s->job.groups < 256 ? s->job.groups : 256;
    const dpep_dp_load *load = dpep_assigner_load(s->as);
    for (int g = 0; g < s->job.groups; g++) {
        s->mg[g].assigned_reqs = load[g].requests;
        s->mg[g].assigned_tokens = load[g].tokens;
        if (g < n) l[g] = (hub_load){load[g].requests, s->mg[g].waiting, load[g].tokens};
    }
    hub_set_load(s->hub, l, n);
    metrics_set_groups(s->metrics, s->mg, s->job.groups, hub_queued(s->hub));
}

/* Rank 0: the DP group of a new request (explicit or by the policy). */
static int assign(server *s, hub_req *q)
{
    dpep_request r = {.input_ids = q->input_ids, .input_len = q->n_input,
                      .max_new_tokens = q->max_new_tokens, .dp_rank = q->dp_rank};
    int g = dpep_assigner_pick(s->as, &r, NULL);
    q->group = g; /* the loop's own field: read back at the finish */
    metrics_on_assign(s->metrics, g);
    return g;
}

/* Rank 0, after a signal: stop taking requests, let the ones in flight
 * finish for server.drain_timeout_s (a second signal: no wait), then shut
 * down (the rest are aborted, their clients get 503). */
static void drain(server *s)
{
    if (!g_stop || hub_is_shutdown(s->hub)) return;
    double now = dpep_clock_s(), limit = s->cfg->server.drain_timeout_s;
    if (!s->draining) {
        s->draining = true;
        s->t_drain = now;
        hub_stop_accepting(s->hub);
        DPEP_INFO("dpep serve: signal received: draining %lld request(s) in flight (up to %g s; "
                  "a second signal stops at once)", (long long)(hub_in_flight(s->hub) + hub_queued(s->hub)),
                  limit);
    }
    int64_t left = hub_in_flight(s->hub) + hub_queued(s->hub);
    if (left == 0 || g_stop >= 2 || now - s->t_drain >= limit) {
        if (left > 0)
            DPEP_INFO("dpep serve: stopping: aborting %lld request(s) still in flight", (long long)left);
        hub_shutdown(s->hub);
    }
}

/* Step 1 on rank 0: the header and the payload of this iteration. */
static void collect(server *s, int64_t *hdr, wire_new *nw, int64_t *cancels, hub_req **taken)
{
    if (hub_in_flight(s->hub) == 0) hub_wait_work(s->hub, SERVE_IDLE_WAIT_S);
    drain(s);
    int n = hub_take_new(s->hub, taken, SERVE_MAX_NEW);
    int64_t n_tok = 0;
    for (int i = 0; i < n; i++) n_tok += taken[i]->n_input;
    bool room = dpep_grow((void **)&s->ptok, &s->cap_ptok, n_tok + 1, sizeof *s->ptok);
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        hub_req *q = taken[i];
        nw[i] = (wire_new){q->index, q->n_input, q->max_new_tokens, q->sampling.top_k, assign(s, q),
                           q->ignore_eos, q->sampling.temperature, q->sampling.top_p,
                           q->sampling.min_p, q->sampling.seed};
        if (room) memcpy(s->ptok + off, q->input_ids, sizeof(int32_t) * (size_t)q->n_input);
        off += q->n_input;
    }
    int nc = hub_take_cancels(s->hub, cancels, SERVE_MAX_CANCEL);
    bool shutdown = hub_is_shutdown(s->hub);
    hdr[H_FLUSH] = n == 0 && !shutdown && hub_take_flush(s->hub); /* idle: every group is */
    for (int i = 0; !room && i < n; i++) /* no memory for them: they fail here */
        hub_finish_req(s->hub, taken[i]->index, HUB_FINISH_ERROR, "out of memory");
    hdr[H_NEW] = room ? n : 0;
    hdr[H_TOK] = room ? n_tok : 0;
    hdr[H_CANCEL] = nc;
    hdr[H_SHUTDOWN] = shutdown;
    hdr[H_BUSY] = hub_in_flight(s->hub) > 0;
    double now = dpep_clock_s();
    hdr[H_STATS] = s->expert && s->stats_dirty && (now - s->t_stats >= SERVE_STATS_PERIOD_S ||
                                                   !hdr[H_BUSY] || shutdown);
    if (hdr[H_STATS]) {
        s->t_stats = now;
        s->stats_dirty = false;
    }
    if (n > 0) publish_load(s);
}

/* Step 2: this instance's share goes to its scheduler (source rank). */
static dpep_status submit(server *s, const wire_new *nw, int64_t n, const int32_t *tok,
                          const int64_t *cancels, int64_t nc)
{
    const dpep_world *w = s->job.w;
    if (w->me.instance_rank != 0) return DPEP_OK;
    int64_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        const wire_new *q = &nw[i];
        if (q->group / w->layout.attn_dp == w->me.instance) {
            dpep_request r = {.index = q->index, .input_ids = tok + off,
                              .input_len = q->input_len, .max_new_tokens = q->max_new,
                              .sampling = {.temperature = q->temperature, .top_k = q->top_k,
                                           .top_p = q->top_p, .seed = q->seed, .min_p = q->min_p},
                              .dp_rank = q->group, .ignore_eos = q->ignore_eos != 0};
            snprintf(r.id, sizeof r.id, "%lld", (long long)q->index);
            DPEP_TRY(dpep_sched_submit(s->job.s, &r, q->group));
        }
        off += q->input_len;
    }
    for (int64_t i = 0; i < nc; i++) {
        char id[DPEP_REQUEST_ID_MAX];
        snprintf(id, sizeof id, "%lld", (long long)cancels[i]);
        DPEP_TRY(dpep_sched_abort(s->job.s, id));
    }
    return DPEP_OK;
}

/* Step 4, this rank's share: its state, then its events of the step. */
static dpep_status pack_events(server *s, int *bytes)
{
    rank_state st = {.group = s->job.my_group, .leader = dpep_sched_is_leader(s->job.s)};
    if (st.leader) {
        dpep_sched_live live;
        dpep_sched_get_live(s->job.s, &live);
        st.running = live.running;
        st.waiting = live.waiting;
        st.kv_used = live.kv_used;
        st.kv_capacity = live.kv_capacity;
        st.cache_tokens = live.cache_tokens;
        st.prompt_tokens = live.prompt_tokens;
        st.cached_tokens = live.cached_tokens;
        st.evicted_tokens = live.evicted_tokens;
    }
    int64_t n = (int64_t)sizeof st + s->n_ev * (int64_t)sizeof(event);
    if (n > INT32_MAX || !dpep_grow((void **)&s->send, &s->cap_send, n, 1)) return DPEP_ERR_NOMEM;
    memcpy(s->send, &st, sizeof st);
    if (s->n_ev) memcpy(s->send + sizeof st, s->ev, sizeof(event) * (size_t)s->n_ev);
    s->n_ev = 0;
    *bytes = (int)n;
    return DPEP_OK;
}

/* Rank 0: one event to the hub (and the finish to the assignment's load). */
static void hand_over(server *s, const event *e)
{
    if (e->token >= 0) {
        hub_deliver(s->hub, e->index, e->token, e->logprob);
        return;
    }
    int group = -1, max_new = INT32_MAX, n_input = 0;
    bool known = hub_job_info(s->hub, e->index, &group, &max_new, &n_input);
    hub_finish why = e->flags & 1   ? HUB_FINISH_ERROR
                     : e->flags & 2 ? HUB_FINISH_ABORT
                     : e->n_out >= max_new ? HUB_FINISH_LENGTH : HUB_FINISH_STOP;
    if (known) dpep_assigner_done(s->as, group, (int64_t)n_input + max_new); /* its load */
    hub_finish_req(s->hub, e->index, why, e->flags & 1 ? "the request does not fit the KV pool "
                   "or the context" : NULL);
}

/* Step 4: states and events to rank 0, which hands them to the hub. */
static dpep_status deliver(server *s)
{
    const dpep_world *w = s->job.w;
    int mine = 0;
    dpep_status pst = pack_events(s, &mine);
    if (pst != DPEP_OK) mine = 0; /* the gather still runs; the error ends the job after */
    int *cnt = s->g_cnt, *dsp = s->g_dsp; /* rank 0 only, sized at start */
    DPEP_CHECK_MPI(MPI_Gather(&mine, 1, MPI_INT, cnt, 1, MPI_INT, 0, w->world));
    int64_t total = 0;
    if (w->rank == 0) {
        for (int r = 0; r < w->size; r++) {
            dsp[r] = (int)total;
            total += cnt[r];
        }
        /* out of memory on rank 0: it returns, and mpirun ends the job */
        if (total > INT32_MAX || !dpep_grow((void **)&s->g_all, &s->cap_all, total + 1, 1))
            return DPEP_ERR_NOMEM;
    }
    DPEP_CHECK_MPI(MPI_Gatherv(s->send, mine, MPI_BYTE, s->g_all, cnt, dsp, MPI_BYTE, 0, w->world));
    DPEP_TRY(pst);
    for (int r = 0; w->rank == 0 && r < w->size; r++) {
        if (cnt[r] < (int)sizeof(rank_state)) continue;
        const char *p = s->g_all + dsp[r];
        rank_state st;
        memcpy(&st, p, sizeof st);
        if (st.leader && st.group >= 0 && st.group < s->job.groups)
            s->mg[st.group] = (metrics_group){.running = st.running, .waiting = st.waiting,
                                              .kv_used = st.kv_used, .kv_capacity = st.kv_capacity,
                                              .cache_tokens = st.cache_tokens,
                                              .prompt_tokens = st.prompt_tokens,
                                              .cached_tokens = st.cached_tokens,
                                              .evicted_tokens = st.evicted_tokens};
        int ne = (cnt[r] - (int)sizeof st) / (int)sizeof(event);
        for (int i = 0; i < ne; i++) {
            event e;
            memcpy(&e, p + sizeof st + (size_t)i * sizeof e, sizeof e);
            hand_over(s, &e);
        }
    }
    if (w->rank == 0) publish_load(s);
    return DPEP_OK;
}

/* Every rank: the expert load of all ranks, summed on rank 0 for /metrics. */
static dpep_status reduce_stats(server *s)
{
    const dpep_model_config *m = &s->job.m;
    int nl = m->n_layers * m->n_routed;
    if (nl <= 0) return DPEP_OK;
    DPEP_CHECK_MPI(MPI_Reduce(dpep_engine_expert_load(s->job.e), s->expert, nl, MPI_INT64_T,
                              MPI_SUM, 0, s->job.w->world));
    if (s->job.w->rank == 0) metrics_set_expert_load(s->metrics, s->expert);
    return DPEP_OK;
}

/* One iteration of the loop (see the file comment). *stop: shut down. */
static dpep_status iterate(server *s, bool *stop)
{
    dpep_world *w = s->job.w;
    int64_t hdr[H_N] = {0};
    wire_new nw[SERVE_MAX_NEW];
    int64_t cancels[SERVE_MAX_CANCEL];
    hub_req *taken[SERVE_MAX_NEW];
    if (w->rank == 0) collect(s, hdr, nw, cancels, taken);
    DPEP_TRY(bcast_poll(hdr, H_N, MPI_INT64_T, w->world));
    dpep_status st = DPEP_OK;
    if (!dpep_grow((void **)&s->ptok, &s->cap_ptok, hdr[H_TOK] + 1, sizeof *s->ptok))
        return DPEP_ERR_NOMEM; /* the peers then wait: the step's watchdog ends the job */
    int32_t *tok = s->ptok;
    if (hdr[H_NEW] > 0) {
        DPEP_CHECK_MPI_GOTO(MPI_Bcast(nw, (int)(hdr[H_NEW] * (int64_t)sizeof *nw), MPI_BYTE, 0,
                                      w->world), st, out);
        DPEP_CHECK_MPI_GOTO(MPI_Bcast(tok, (int)hdr[H_TOK], MPI_INT32_T, 0, w->world), st, out);
    }
    if (hdr[H_CANCEL] > 0)
        DPEP_CHECK_MPI_GOTO(MPI_Bcast(cancels, (int)hdr[H_CANCEL], MPI_INT64_T, 0, w->world), st, out);
    DPEP_TRY_GOTO(submit(s, nw, hdr[H_NEW], tok, cancels, hdr[H_CANCEL]), st, out);
    if (hdr[H_FLUSH]) { /* /flush_cache: rank 0 saw nothing in flight, so no group runs */
        dpep_sched_flush_cache(s->job.s);
        if (w->rank == 0) {
            for (int g = 0; g < s->job.groups; g++) { /* no step reports it: idle pools are empty */
                s->mg[g].kv_used -= s->mg[g].cache_tokens;
                s->mg[g].cache_tokens = 0;
            }
            publish_load(s);
            hub_flush_done(s->hub);
        }
    }
    if (hdr[H_SHUTDOWN]) {
        if (hdr[H_STATS]) st = reduce_stats(s);
        *stop = true;
        goto out;
    }
    if (hdr[H_BUSY] || hdr[H_NEW] > 0) {
        dpep_sched_step_info info;
        DPEP_TRY_GOTO(dpep_sched_step(s->job.s, &info), st, out);
        DPEP_TRY_GOTO(s->ev_st, st, out);
        DPEP_TRY_GOTO(deliver(s), st, out);
        s->stats_dirty = true;
    }
    if (hdr[H_STATS]) DPEP_TRY_GOTO(reduce_stats(s), st, out);
out:
    return st;
}

/* Sizes for a server: any request up to the context; max_running_requests
 * sequences; the KV pool as large as memory allows (up to what they need). */static dpep_status size_server(server *sv)
{
    serve_job *r = &sv->job;
    const dpep_config *cfg = sv->cfg;
    int64_t ctx = cfg->server.context_length > 0 ? cfg->server.context_length : r->m.max_pos;
    r->max_ctx = ctx < r->m.max_pos ? ctx : r->m.max_pos;
    r->max_seqs = (int)cfg->runtime.max_running_requests;
    int chunk = (int)cfg->runtime.chunked_prefill_size;
    r->step_tokens = chunk > r->max_seqs ? chunk : r->max_seqs;
    return serve_job_size_kv(r, 0);
}

static dpep_status create_sched(server *sv)
{
    serve_job *r = &sv->job;
    const dpep_world *w = r->w;
    dpep_sched_params sp = {.m = &r->m, .engine = r->e, .instance = w->instance,
                            .attn_tp = w->attn_tp, .instance_index = w->me.instance,
                            .attn_dp = w->layout.attn_dp, .attn_dp_rank = w->me.attn_dp_rank,
                            .max_running = (int)sv->cfg->runtime.max_running_requests,
                            .max_seqs = r->max_seqs,
                            .chunk = (int)sv->cfg->runtime.chunked_prefill_size,
                            .step_tokens = r->step_tokens, .max_ctx = r->max_ctx,
                            .comm_timeout_s = sv->cfg->runtime.comm_timeout_s,
                            .prefix_cache = !sv->cfg->runtime.disable_radix_cache,
                            .balance_hold = (int)sv->cfg->runtime.dp_balance_hold_steps,
                            .cb = {.user = sv, .on_token = on_token, .on_finish = on_finish}};
    DPEP_TRY(dpep_sched_create(&sp, &r->s));
    return dpep_sched_start(r->s);
}

/* The model directory's last name, the default served_model_name. */
static const char *base_name(const char *path)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    const char *b = path + n;
    while (b > path && b[-1] != '/') b--;
    return b;
}

/* Rank 0: tokenizer, hub and HTTP front. */
static dpep_status start_front(server *sv, dpep_diag *diag)
{
    const dpep_config *cfg = sv->cfg;
    serve_job *r = &sv->job;
    DPEP_TRY(dpep_tok_load(cfg->model.path, &sv->tok, diag));
    if (dpep_tok_vocab_size(sv->tok) > r->m.vocab)
        DPEP_WARN("%s: tokenizer.json has %d tokens, the model's vocabulary %d: text whose tokens "
                  "fall beyond it will be refused (400); requests with input_ids below %d work",
                  cfg->model.path, dpep_tok_vocab_size(sv->tok), r->m.vocab, r->m.vocab);
    char name[256];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(base_name(cfg->model.path), "/"),
             base_name(cfg->model.path));
    const char *served = *cfg->server.served_model_name ? cfg->server.served_model_name : name;
    int experts = r->m.n_routed > 0 ? r->m.n_routed : 0;
    sv->metrics = metrics_create(served, r->groups, r->m.n_layers, experts);
    /* waiting = beyond what every DP group runs at once (max_running_requests) */
    int64_t running = (int64_t)r->groups * cfg->runtime.max_running_requests;
    sv->hub = sv->metrics ? hub_create((int)cfg->server.max_queued_requests, running, sv->metrics) : NULL;
    dpep_assigner_params ap = {.method = cfg->runtime.load_balance_method, .groups = r->groups,
                               .page_size = (int)cfg->runtime.page_size,
                               .cache_tokens = dpep_attn_kv_capacity_tokens(dpep_engine_kv(r->e)),
                               .cache_threshold = DPEP_ASSIGN_CACHE_THRESHOLD,
                               .balance_abs = DPEP_ASSIGN_BALANCE_ABS,
                               .balance_rel = DPEP_ASSIGN_BALANCE_REL};
    DPEP_TRY(dpep_assigner_create(&ap, &sv->as));
    sv->mg = calloc((size_t)r->groups, sizeof *sv->mg);
    sv->expert = calloc((size_t)r->m.n_layers * (size_t)experts + 1, sizeof *sv->expert);
    sv->g_cnt = calloc((size_t)r->w->size, sizeof *sv->g_cnt);
    sv->g_dsp = calloc((size_t)r->w->size, sizeof *sv->g_dsp);
    if (!sv->hub || !sv->mg || !sv->expert || !sv->g_cnt || !sv->g_dsp)
        return DPEP_ERR_NOMEM;
    serve_http_opts ho = {.host = cfg->server.host, .port = (int)cfg->server.port,
                          .api_key = cfg->server.api_key,
                          .served_model_name = served, .metrics = sv->metrics,
                          .model_path = cfg->model.path,
                          .model_type = r->m.arch == DPEP_ARCH_DEEPSEEK_V3 ? "deepseek_v3" : "deepseek_v2",
                          .architecture = r->m.arch_name, .tp_size = r->w->layout.tp,
                          .dp_size = r->w->layout.dp, .dp_groups = r->groups, .vocab = r->m.vocab,
                          .context_len = r->max_ctx,
                          .kv_cache_dtype = dpep_wtype_name(serve_job_kv_type(r)),
                          .default_max_new_tokens = (int)cfg->server.max_new_tokens,
                          .request_timeout_s = cfg->server.request_timeout_s,
                          .max_body_bytes = 64u << 20};
    DPEP_TRY(serve_http_start(&ho, sv->hub, sv->tok, &sv->http, diag));
    printf("dpep serve: listening on http://%s:%d (model %s, %d DP group%s, context %lld, KV pool "
           "%lld tokens per rank, %s)\n", cfg->server.host, serve_http_port(sv->http), ho.served_model_name,
           r->groups, r->groups == 1 ? "" : "s", (long long)r->max_ctx,
           (long long)dpep_attn_kv_capacity_tokens(dpep_engine_kv(r->e)), ho.kv_cache_dtype);
    fflush(stdout);
    return DPEP_OK;
}

static void stop_front(server *sv)
{
    if (sv->hub) hub_shutdown(sv->hub);
    serve_http_stop(sv->http);
    hub_destroy(sv->hub);
    metrics_destroy(sv->metrics);
    dpep_tok_free(sv->tok);
    dpep_assigner_destroy(sv->as);
    free(sv->mg);
    free(sv->expert);
    free(sv->g_cnt);
    free(sv->g_dsp);
    free(sv->g_all);
}

dpep_status dpep_serve_online(dpep_world *w, const dpep_config *cfg, dpep_diag *diag)
{
    server sv;
    memset(&sv, 0, sizeof sv);
    sv.cfg = cfg;
    sv.job.w = w;
    sv.job.cfg = cfg;
    const dpep_layout *L = &w->layout;
    sv.job.groups = L->n_instances * L->attn_dp;
    sv.job.my_group = w->me.instance * L->attn_dp + w->me.attn_dp_rank;
    dpep_thread_plan tp;
    dpep_world_thread_plan(w, &tp);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-write is an error, not a death */
    dpep_status st = dpep_comm_create(w->world, "world", DPEP_COMM_MPI, cfg->runtime.comm_timeout_s,
                                      &sv.job.c_world);
    if (st == DPEP_OK) st = serve_job_load_model(&sv.job, diag);
    if (st == DPEP_OK) st = size_server(&sv);
    if (st == DPEP_OK) st = serve_job_create_engine(&sv.job, diag);
    if (st == DPEP_OK) st = create_sched(&sv);
    if (st == DPEP_OK) {
        dpep_status fs = w->rank == 0 ? start_front(&sv, diag) : DPEP_OK;
        st = dpep_comm_agree(sv.job.c_world, fs, NULL, NULL);
    }
    bool stop = false;
    while (st == DPEP_OK && !stop) st = iterate(&sv, &stop);
    if (w->rank == 0) {
        stop_front(&sv);
        if (st == DPEP_OK) printf("dpep serve: stopped\n");
    }
    dpep_sched_destroy(sv.job.s);
    free(sv.ev);
    free(sv.send);
    free(sv.ptok);
    dpep_engine_destroy(sv.job.e);
    serve_job_unload_model(&sv.job);
    dpep_comm_destroy(sv.job.c_world);
    return st;
}
