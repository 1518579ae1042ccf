/* sched.c — the step scheduler of one DP group (see dpep_sched.h).
 *
 * One step:
 *   1. agree: all-gather over the instance of a small record per rank (the
 *      source's new arrivals, aborts and closed flag; every rank's work left;
 *      the previous step's prefill/decode tokens, done and output counts);
 *   2. account the previous step (prefill or decode time) now that the
 *      instance-wide counts are known;
 *   3. arrivals and aborts, when the record says there are some: the source
 *      broadcasts them over the instance; each rank keeps its group's;
 *   4. batch: one decode token of each running request, then chunked prefill
 *      of running requests, then admissions in arrival order while the token
 *      budget (chunked_prefill_size), max_running_requests and the KV pool
 *      allow (a request whose pages are not free waits; none is dropped);
 *   5. the forward (0 tokens on an idle rank, so every collective is joined);
 *   6. sampling on the engine's device, the attention-TP group taking its
 *      leader's tokens; retirement.
 * Every rank of an attention-TP group sees the same arrivals and makes the
 * same decisions, so their batches stay identical.
 *
 * Prefix cache (radix.h): an admitted request adopts the KV pages of the
 * longest cached whole-page prefix of its prompt (never all of it: the last
 * prompt token is always computed, for its logits) and prefills only the
 * rest; a finished or aborted request inserts the whole pages it wrote. When
 * the pool lacks pages for an admission, unlocked cached pages are evicted,
 * least recently used first. The tree's clock is the step count, so the
 * attention-TP ranks of a group keep identical trees. */
#include "dpep_sched.h"

#include <stdlib.h>
#include <string.h>

#include "dpep_comm.h"
#include "radix.h"

/* Waiting requests admission looks past per step while they wait for a
 * prefix another request is prefilling (bounds the scan of a long queue). */
#define SCHED_MAX_DEFERRED 256

/* A request on the wire (source -> instance). */
typedef struct wire_req {
    char id[DPEP_REQUEST_ID_MAX];
    int64_t index;
    int32_t input_len, max_new, top_k, group;
    float temperature, top_p, min_p;
    uint64_t seed;
    double t_submit;        /* seconds since the source's start, 0 before it */
    int32_t ignore_eos;
} wire_req;

typedef struct wire_abort {
    char id[DPEP_REQUEST_ID_MAX];
} wire_abort;

typedef struct req {
    wire_req q;
    int32_t *ids;           /* [input_len] owned                              */
    int slot;               /* KV slot while running, else -1                 */
    int64_t pos;            /* tokens in the cache                            */
    int n_out;
    int32_t *out;           /* [max_new]                                      */
    double *gaps;           /* [max_new] gaps between tokens                  */
    double *lp;             /* [max_new] log-probability of each output token */
    uint64_t rng;
    dpep_sampling sp;
    double t_arrive, t_first, t_last;
    dpep_radix_node *node;  /* the cached prefix it locks (NULL: none)        */
    int64_t inserted;       /* prompt pages it put in the cache so far        */
} req;

/* The agreement record (int64 per field). */
enum {
    R_ARRIVE, R_ARRIVE_TOK, R_ABORT, R_CLOSED, R_LEFT, R_PREV_PRE, R_PREV_DEC, R_DONE, R_OUT,
    R_LEADER, R_WAITING, R_GROUP, R_ABORT_ALL, R_N
};

/* Array of pointers grown on arrival (never per token). */
typedef struct vec {
    void **p;
    int64_t n, cap;
} vec;

static dpep_status vec_push(vec *v, void *x)
{
    if (!dpep_grow((void **)&v->p, &v->cap, v->n + 1, sizeof *v->p)) return DPEP_ERR_NOMEM;
    v->p[v->n++] = x;
    return DPEP_OK;
}

struct dpep_sched {
    dpep_sched_params p;
    const dpep_model_config *m;
    dpep_engine *e;
    dpep_attn_kv *kv;
    dpep_comm *c_inst, *c_atp;
    int isz;                /* ranks in the instance                          */
    bool source, leader;
    int my_group;           /* global DP group                                */
    int64_t kv_cap;
    /* pending submissions and aborts: the source's queue; on the other
     * ranks the receive buffers of exchange_arrivals */
    wire_req *pend;
    int32_t *pend_tok;
    wire_abort *pend_abort;
    int64_t n_pend, cap_pend, n_pend_tok, cap_pend_tok, n_pend_abort, cap_pend_abort;
    bool closed;
    bool abort_all;         /* source: abort everything at the next step      */
    /* this group's requests */
    vec waiting;            /* FIFO: waiting[wait_head..n) not yet admitted   */
    int wait_head;
    req **running;          /* [max_seqs]                                     */
    int n_running;
    int64_t n_left;         /* known and not finished                         */
    /* step buffers, [step_tokens] each */
    int32_t *step_tok, *sampled;
    double *lp;
    dpep_attn_seq *seqs;
    req **batch;
    const dpep_sampling **sps;
    uint64_t **rngs;
    int64_t *rec;           /* [isz, R_N]                                     */
    /* clock and counters */
    double t0;
    bool started;
    int64_t n_steps, out_mine, done_mine, kv_peak;
    int64_t prev_pre, prev_dec;  /* this rank's last step (leader's counts)    */
    double prev_dt;
    double prev_wbytes;     /* weight bytes the last step's products read     */
    bool prev_pending;
    dpep_sched_stats st;
    /* prefix cache (NULL: off) */
    dpep_radix *radix;
    int page;               /* tokens per KV page                             */
    int32_t *pg;            /* [max pages of a sequence] page ids, reused     */
    int32_t *seq_tok;       /* prompt + output of a finishing request, grown  */
    int64_t cap_seq_tok, max_pages, prompt_mine;
    /* attention-DP balance */
    bool admit;             /* this step may admit new requests                */
    int held;               /* consecutive steps admissions were held          */
    int64_t *arrived;       /* [attn_dp] this step's arrivals per group of the instance */
};

static void kv_retain(void *user, int32_t page) { dpep_attn_kv_page_retain(user, page); }
static void kv_release(void *user, int32_t page) { dpep_attn_kv_page_release(user, page); }

/* A request leaves its slot: the whole pages it wrote go into the prefix
 * cache (its lock on the prefix it adopted is dropped), then the slot closes.
 * Out of memory for the insert only means less is cached. */
static void leave_slot(dpep_sched *s, req *r)
{
    if (r->slot < 0) return;
    if (s->radix) {
        int64_t len = dpep_attn_kv_seq_len(s->kv, r->slot), n_pages = len / s->page;
        int64_t n_tok = n_pages * s->page;
        if (n_pages > 0 && dpep_grow((void **)&s->seq_tok, &s->cap_seq_tok, n_tok, sizeof *s->seq_tok)) {
            int64_t np = n_tok < r->q.input_len ? n_tok : r->q.input_len;
            memcpy(s->seq_tok, r->ids, sizeof *s->seq_tok * (size_t)np);
            for (int64_t i = np; i < n_tok; i++) s->seq_tok[i] = r->out[i - r->q.input_len];
            if (dpep_attn_kv_seq_pages(s->kv, r->slot, s->pg, n_pages) == n_pages)
                dpep_radix_insert(s->radix, s->seq_tok, n_pages, s->pg, (uint64_t)s->n_steps, NULL);
        }
        if (r->node) dpep_radix_unlock(s->radix, r->node);
        r->node = NULL;
    }
    dpep_attn_kv_seq_close(s->kv, r->slot);
    r->slot = -1;
}

/* Opens a slot for r, with its cached prefix adopted when use_cache, and
 * reserves pages for the whole request, evicting unlocked cached pages when
 * the pool lacks some. DPEP_ERR_NOMEM: no slot or no room (nothing held). */
static dpep_status try_slot(dpep_sched *s, req *r, bool use_cache)
{
    int slot = -1;
    DPEP_TRY(dpep_attn_kv_seq_open(s->kv, &slot));
    int64_t m = 0;
    dpep_radix_node *node = NULL;
    if (s->radix && use_cache) { /* whole pages, at least the last prompt token left to compute */
        m = dpep_radix_match(s->radix, r->ids, r->q.input_len, (r->q.input_len - 1) / s->page, s->pg,
                             &node, (uint64_t)s->n_steps);
        dpep_radix_lock(s->radix, node);
        if (m > 0 && dpep_attn_kv_seq_adopt(s->kv, slot, s->pg, m) != DPEP_OK) m = 0;
    }
    int64_t need = r->q.input_len + r->q.max_new;
    dpep_status st = dpep_attn_kv_seq_reserve(s->kv, slot, need);
    if (st == DPEP_ERR_NOMEM && s->radix) {
        int64_t want = (need + s->page - 1) / s->page - m - dpep_attn_kv_free_tokens(s->kv) / s->page;
        s->st.evicted_tokens += dpep_radix_evict(s->radix, want) * s->page;
        st = dpep_attn_kv_seq_reserve(s->kv, slot, need);
    }
    if (st != DPEP_OK) {
        if (node) dpep_radix_unlock(s->radix, node);
        dpep_attn_kv_seq_close(s->kv, slot);
        return st;
    }
    r->slot = slot;
    r->node = node;
    r->pos = m * s->page;
    r->inserted = m;
    return DPEP_OK;
}

/* In-batch prefix sharing: is the next page r would need beyond what the
 * cache holds being prefilled right now by a running request of this group?
 * Then r waits: that request inserts its pages as it goes (cache_progress),
 * so r finds them cached in a step or two instead of computing them again. */
static bool prefix_in_flight(dpep_sched *s, const req *r)
{
    if (!s->radix) return false;
    int64_t m = dpep_radix_match(s->radix, r->ids, r->q.input_len, (r->q.input_len - 1) / s->page,
                                 NULL, NULL, (uint64_t)s->n_steps);
    int64_t upto = (m + 1) * s->page; /* r's tokens through the page after its match */
    if (upto > r->q.input_len - 1) return false;
    for (int i = 0; i < s->n_running; i++) {
        const req *o = s->running[i];
        if (o->pos < upto && o->q.input_len >= upto &&
            memcmp(o->ids, r->ids, sizeof *r->ids * (size_t)upto) == 0)
            return true;
    }
    return false;
}

/* A running request's prompt pages written so far go into the cache as its
 * prefill progresses (whole pages; the tree then holds them, read-only), and
 * it locks their node instead of the one it adopted. */
static void cache_progress(dpep_sched *s, req *r)
{
    int64_t done = r->pos < r->q.input_len ? r->pos : r->q.input_len, n_pages = done / s->page;
    if (!s->radix || n_pages <= r->inserted ||
        dpep_attn_kv_seq_pages(s->kv, r->slot, s->pg, n_pages) != n_pages ||
        dpep_radix_insert(s->radix, r->ids, n_pages, s->pg, (uint64_t)s->n_steps, NULL) != DPEP_OK)
        return;
    dpep_radix_node *node = NULL;
    dpep_radix_match(s->radix, r->ids, n_pages * s->page, n_pages, NULL, &node, (uint64_t)s->n_steps);
    dpep_radix_lock(s->radix, node);
    if (r->node) dpep_radix_unlock(s->radix, r->node);
    r->node = node;
    r->inserted = n_pages;
}

/* A slot for r: with its cached prefix, else (the lock on a matched node
 * also pins the node's unmatched tail, which may be the room r needs)
 * without it. DPEP_ERR_NOMEM: r waits. */
static dpep_status take_slot(dpep_sched *s, req *r)
{
    dpep_status st = try_slot(s, r, true);
    if (st == DPEP_ERR_NOMEM && s->radix) st = try_slot(s, r, false);
    DPEP_TRY(st);
    s->prompt_mine += r->q.input_len;
    s->st.cached_tokens += r->pos;
    return DPEP_OK;
}

static bool is_eos(const dpep_model_config *m, int32_t t)
{
    for (int i = 0; i < m->n_eos; i++)
        if (m->eos[i] == t) return true;
    return false;
}

static void req_free(req *r)
{
    if (!r) return;
    free(r->ids);
    free(r->out);
    free(r->gaps);
    free(r->lp);
    free(r);
}

static dpep_sched_result result_of(const dpep_sched *s, const req *r, bool failed, bool aborted)
{
    dpep_sched_result x = {.id = r->q.id, .index = r->q.index, .dp_rank = s->my_group,
                           .input_len = r->q.input_len, .n_out = r->n_out, .out = r->out,
                           .logprob = r->lp, .gaps = r->gaps, .t_arrive = r->t_arrive,
                           .t_first = r->t_first, .t_last = r->t_last, .failed = failed,
                           .aborted = aborted};
    return x;
}

/* Reports (leader) and frees a request that is done. */
static void retire(dpep_sched *s, req *r, bool failed, bool aborted)
{
    if (s->leader && s->p.cb.on_finish) {
        dpep_sched_result x = result_of(s, r, failed, aborted);
        s->p.cb.on_finish(s->p.cb.user, &x);
    }
    s->n_left--;
    s->done_mine++;
    req_free(r);
}

void dpep_sched_destroy(dpep_sched *s)
{
    if (!s) return;
    for (int64_t i = s->wait_head; i < s->waiting.n; i++) req_free(s->waiting.p[i]);
    for (int i = 0; i < s->n_running; i++) {
        if (s->radix && s->running[i]->node) dpep_radix_unlock(s->radix, s->running[i]->node);
        req_free(s->running[i]);
    }
    dpep_radix_destroy(s->radix); /* its pages go back to the pool */
    free(s->pg);
    free(s->seq_tok);
    free(s->waiting.p);
    free(s->running);
    free(s->pend);
    free(s->pend_tok);
    free(s->pend_abort);
    free(s->step_tok);
    free(s->sampled);
    free(s->lp);
    free(s->seqs);
    free(s->batch);
    free(s->sps);
    free(s->rngs);
    free(s->rec);
    free(s->arrived);
    dpep_comm_destroy(s->c_atp);
    dpep_comm_destroy(s->c_inst);
    free(s);
}

dpep_status dpep_sched_create(const dpep_sched_params *p, dpep_sched **out)
{
    if (!p || !p->m || !p->engine || p->step_tokens < 1 || p->max_seqs < 1 || p->chunk < 1 ||
        p->max_running < 1 || p->attn_dp < 1)
        return DPEP_ERR_INVALID;
    dpep_sched *s = calloc(1, sizeof *s);
    if (!s) return DPEP_ERR_NOMEM;
    dpep_status st = DPEP_OK;
    s->p = *p;
    s->m = p->m;
    s->e = p->engine;
    s->kv = dpep_engine_kv(p->engine);
    s->kv_cap = dpep_attn_kv_capacity_tokens(s->kv);
    s->my_group = p->instance_index * p->attn_dp + p->attn_dp_rank;
    DPEP_TRY_GOTO(dpep_comm_create(p->instance, "instance", DPEP_COMM_MPI, p->comm_timeout_s,
                                   &s->c_inst), st, fail);
    DPEP_TRY_GOTO(dpep_comm_create_group(p->attn_tp, "attn_tp_sample", DPEP_COMM_MPI,
                                         p->comm_timeout_s, &s->c_atp), st, fail);
    s->isz = dpep_comm_size(s->c_inst);
    s->source = dpep_comm_rank(s->c_inst) == 0;
    s->leader = !s->c_atp || dpep_comm_rank(s->c_atp) == 0;
    const size_t n = (size_t)p->step_tokens;
    s->running = calloc((size_t)p->max_seqs, sizeof *s->running);
    s->step_tok = malloc(sizeof *s->step_tok * n);
    s->sampled = malloc(sizeof *s->sampled * n);
    s->lp = malloc(sizeof *s->lp * n);
    s->seqs = malloc(sizeof *s->seqs * n);
    s->batch = malloc(sizeof *s->batch * n);
    s->sps = malloc(sizeof *s->sps * n);
    s->rngs = malloc(sizeof *s->rngs * n);
    s->rec = malloc(sizeof *s->rec * R_N * (size_t)s->isz);
    s->arrived = calloc((size_t)p->attn_dp, sizeof *s->arrived);
    s->page = dpep_attn_kv_page_size(s->kv);
    s->max_pages = (p->max_ctx + s->page - 1) / s->page + 1;
    s->pg = malloc(sizeof *s->pg * (size_t)s->max_pages);
    if (!s->running || !s->step_tok || !s->sampled || !s->lp || !s->seqs || !s->batch ||
        !s->sps || !s->rngs || !s->rec || !s->pg || !s->arrived) {
        st = DPEP_ERR_NOMEM;
        goto fail;
    }
    if (p->prefix_cache) {
        dpep_radix_params rp = {.page_size = s->page, .pages = true, .retain = kv_retain,
                                .release = kv_release, .user = s->kv};
        DPEP_TRY_GOTO(dpep_radix_create(&rp, &s->radix), st, fail);
    }
    s->st.kv_capacity = s->kv_cap;
    *out = s;
    return DPEP_OK;
fail:
    dpep_sched_destroy(s);
    return st;
}

bool dpep_sched_is_leader(const dpep_sched *s) { return s->leader; }

dpep_status dpep_sched_submit(dpep_sched *s, const dpep_request *r, int dp_rank)
{
    if (!s->source || s->closed || !r || r->input_len < 0 || r->max_new_tokens < 0 ||
        dp_rank / s->p.attn_dp != s->p.instance_index || dp_rank < 0)
        return DPEP_ERR_INVALID;
    if (!dpep_grow((void **)&s->pend, &s->cap_pend, s->n_pend + 1, sizeof *s->pend) ||
        !dpep_grow((void **)&s->pend_tok, &s->cap_pend_tok, s->n_pend_tok + r->input_len,
                   sizeof *s->pend_tok))
        return DPEP_ERR_NOMEM;
    wire_req *q = &s->pend[s->n_pend++];
    memset(q, 0, sizeof *q);
    snprintf(q->id, sizeof q->id, "%s", r->id);
    q->index = r->index;
    q->input_len = r->input_len;
    q->max_new = r->max_new_tokens;
    q->top_k = r->sampling.top_k;
    q->temperature = r->sampling.temperature;
    q->top_p = r->sampling.top_p;
    q->min_p = r->sampling.min_p;
    q->seed = r->sampling.seed;
    q->group = dp_rank;
    q->ignore_eos = r->ignore_eos;
    q->t_submit = s->started ? dpep_clock_s() - s->t0 : 0.0;
    if (r->input_len)
        memcpy(s->pend_tok + s->n_pend_tok, r->input_ids, sizeof(int32_t) * (size_t)r->input_len);
    s->n_pend_tok += r->input_len;
    return DPEP_OK;
}

dpep_status dpep_sched_abort(dpep_sched *s, const char *id)
{
    /* An id that does not fit is no request's id: refused, not cut (a cut
     * one could abort another request). */
    if (!s->source || !id || strlen(id) >= DPEP_REQUEST_ID_MAX) return DPEP_ERR_INVALID;
    if (!dpep_grow((void **)&s->pend_abort, &s->cap_pend_abort, s->n_pend_abort + 1,
                   sizeof *s->pend_abort))
        return DPEP_ERR_NOMEM;
    snprintf(s->pend_abort[s->n_pend_abort++].id, DPEP_REQUEST_ID_MAX, "%s", id);
    return DPEP_OK;
}

dpep_status dpep_sched_abort_all(dpep_sched *s)
{
    if (!s->source) return DPEP_ERR_INVALID;
    s->abort_all = true;
    return DPEP_OK;
}

/* Every request of this group, waiting or running, retired as aborted (in
 * one pass: a stopping run aborts them all at once). */
static void abort_everything(dpep_sched *s)
{
    for (int i = 0; i < s->n_running; i++) {
        leave_slot(s, s->running[i]);
        retire(s, s->running[i], false, true);
    }
    s->n_running = 0;
    for (int64_t i = s->wait_head; i < s->waiting.n; i++) retire(s, s->waiting.p[i], false, true);
    s->waiting.n = s->wait_head = 0;
}

void dpep_sched_close(dpep_sched *s)
{
    if (s->source) s->closed = true;
}

dpep_status dpep_sched_start(dpep_sched *s)
{
    DPEP_TRY(dpep_comm_barrier(s->c_inst));
    s->t0 = dpep_clock_s();
    s->started = true;
    return DPEP_OK;
}

/* A new request of this group: allocated, checked against the context and
 * the KV pool (one that can never run is reported failed, not dropped), and
 * queued. */
static dpep_status arrive(dpep_sched *s, const wire_req *q, const int32_t *ids)
{
    req *r = calloc(1, sizeof *r);
    if (!r) return DPEP_ERR_NOMEM;
    size_t mn = (size_t)(q->max_new > 0 ? q->max_new : 1);
    r->q = *q;
    r->slot = -1;
    r->ids = malloc(sizeof(int32_t) * (size_t)(q->input_len > 0 ? q->input_len : 1));
    r->out = malloc(sizeof(int32_t) * mn);
    r->gaps = malloc(sizeof(double) * mn);
    r->lp = malloc(sizeof(double) * mn);
    if (!r->ids || !r->out || !r->gaps || !r->lp) {
        req_free(r);
        return DPEP_ERR_NOMEM;
    }
    if (q->input_len) memcpy(r->ids, ids, sizeof(int32_t) * (size_t)q->input_len);
    r->sp = (dpep_sampling){.temperature = q->temperature, .top_k = q->top_k, .top_p = q->top_p,
                            .seed = q->seed, .min_p = q->min_p};
    r->rng = dpep_rng_seed(q->seed);
    r->t_arrive = q->t_submit;
    s->n_left++;
    s->st.requests++;
    s->st.input_tokens += q->input_len;
    if (q->input_len + q->max_new > s->p.max_ctx || q->input_len + q->max_new > s->kv_cap ||
        q->input_len < 1) {
        if (s->leader)
            DPEP_WARN("request %s: %d prompt + %d new tokens do not fit (context %lld, KV pool "
                      "%lld tokens)", q->id, q->input_len, q->max_new, (long long)s->p.max_ctx,
                      (long long)s->kv_cap);
        retire(s, r, true, false);
        return DPEP_OK;
    }
    dpep_status st = vec_push(&s->waiting, r);
    if (st != DPEP_OK) {
        s->n_left--;
        req_free(r);
    }
    return st;
}

static void abort_id(dpep_sched *s, const char *id)
{
    for (int64_t i = s->wait_head; i < s->waiting.n; i++) {
        req *r = s->waiting.p[i];
        if (strcmp(r->q.id, id) != 0) continue;
        memmove(s->waiting.p + i, s->waiting.p + i + 1,
                sizeof(void *) * (size_t)(s->waiting.n - i - 1));
        s->waiting.n--;
        retire(s, r, false, true);
        return;
    }
    for (int i = 0; i < s->n_running; i++) {
        req *r = s->running[i];
        if (strcmp(r->q.id, id) != 0) continue;
        leave_slot(s, r);
        /* keep the running order: it decides the batch order */
        memmove(s->running + i, s->running + i + 1, sizeof *s->running * (size_t)(s->n_running - i - 1));
        s->n_running--;
        retire(s, r, false, true);
        return;
    }
}

/* Step 3: the source's arrivals and aborts, broadcast over the instance. */
static dpep_status exchange_arrivals(dpep_sched *s, int64_t n_new, int64_t n_tok, int64_t n_abort)
{
    /* the source sends its pending lists; the others receive into theirs
     * (unused otherwise), grown to size and kept for the next arrivals */
    dpep_status st = DPEP_OK;
    if (!s->source &&
        (!dpep_grow((void **)&s->pend, &s->cap_pend, n_new + 1, sizeof *s->pend) ||
         !dpep_grow((void **)&s->pend_tok, &s->cap_pend_tok, n_tok + 1, sizeof *s->pend_tok) ||
         !dpep_grow((void **)&s->pend_abort, &s->cap_pend_abort, n_abort + 1, sizeof *s->pend_abort)))
        st = DPEP_ERR_NOMEM; /* the peers wait in the broadcast: its watchdog names this rank */
    if (st == DPEP_OK && n_new > 0) {
        st = dpep_comm_bcast(s->c_inst, s->pend, n_new * (int64_t)sizeof *s->pend, DPEP_COMM_U8, 0);
        if (st == DPEP_OK && n_tok > 0)
            st = dpep_comm_bcast(s->c_inst, s->pend_tok, n_tok, DPEP_COMM_I32, 0);
    }
    if (st == DPEP_OK && n_abort > 0)
        st = dpep_comm_bcast(s->c_inst, s->pend_abort, n_abort * (int64_t)sizeof *s->pend_abort,
                             DPEP_COMM_U8, 0);
    int64_t off = 0, base = (int64_t)s->p.instance_index * s->p.attn_dp;
    for (int64_t i = 0; st == DPEP_OK && i < n_new; i++) {
        int64_t g = s->pend[i].group - base;
        if (g >= 0 && g < s->p.attn_dp) s->arrived[g]++;
        if (s->pend[i].group == s->my_group) st = arrive(s, &s->pend[i], s->pend_tok + off);
        off += s->pend[i].input_len;
    }
    for (int64_t i = 0; st == DPEP_OK && i < n_abort; i++) abort_id(s, s->pend_abort[i].id);
    s->n_pend = s->n_pend_tok = s->n_pend_abort = 0;
    return st;
}

/* Step 4: this group's batch. */
static int build_batch(dpep_sched *s, int *T_out, int64_t *n_pre_out, int64_t *n_dec_out)
{
    int ns = 0, T = 0;
    int64_t n_pre = 0, n_dec = 0;
    for (int i = 0; i < s->n_running; i++) {
        req *r = s->running[i];
        if (r->pos < r->q.input_len) continue;
        s->seqs[ns] = (dpep_attn_seq){r->slot, 1, r->pos};
        s->step_tok[T++] = r->out[r->n_out - 1];
        s->batch[ns++] = r;
        n_dec++;
    }
    int budget = s->p.chunk;
    if (budget > s->p.step_tokens - T) budget = s->p.step_tokens - T;
    for (int i = 0; i < s->n_running && budget > 0; i++) {
        req *r = s->running[i];
        if (r->pos >= r->q.input_len) continue;
        int n = (int)(r->q.input_len - r->pos);
        if (n > budget) n = budget;
        s->seqs[ns] = (dpep_attn_seq){r->slot, n, r->pos};
        memcpy(s->step_tok + T, r->ids + r->pos, sizeof(int32_t) * (size_t)n);
        T += n;
        s->batch[ns++] = r;
        budget -= n;
        n_pre += n;
    }
    int deferred = 0; /* a bounded look past requests waiting for an in-flight prefix */
    for (int64_t i = s->wait_head; s->admit && budget > 0 && s->n_running < s->p.max_running &&
                                   s->n_running < s->p.max_seqs && i < s->waiting.n;) {
        req *r = s->waiting.p[i];
        if (prefix_in_flight(s, r)) { /* it will be cached after a step or two: wait */
            if (++deferred > SCHED_MAX_DEFERRED) break;
            i++;
            continue;
        }
        if (take_slot(s, r) != DPEP_OK) break; /* no slot or the pool is full: wait */
        if (i == s->wait_head) { /* in order (the common case) */
            s->waiting.p[s->wait_head++] = NULL;
            i = s->wait_head;
        } else { /* past deferred ones: close the gap (i is then the next one) */
            memmove(s->waiting.p + i, s->waiting.p + i + 1, sizeof(void *) * (size_t)(s->waiting.n - i - 1));
            s->waiting.n--;
        }
        s->running[s->n_running++] = r;
        int n = (int)(r->q.input_len - r->pos) < budget ? (int)(r->q.input_len - r->pos) : budget;
        s->seqs[ns] = (dpep_attn_seq){r->slot, n, r->pos};
        memcpy(s->step_tok + T, r->ids + r->pos, sizeof(int32_t) * (size_t)n);
        T += n;
        s->batch[ns++] = r;
        budget -= n;
        n_pre += n;
    }
    /* Drop the admitted prefix of the FIFO once it is most of it. */
    if (s->wait_head > 0 && s->wait_head * 2 >= s->waiting.n) {
        memmove(s->waiting.p, s->waiting.p + s->wait_head,
                sizeof(void *) * (size_t)(s->waiting.n - s->wait_head));
        s->waiting.n -= s->wait_head;
        s->wait_head = 0;
    }
    int64_t used = s->kv_cap - dpep_attn_kv_free_tokens(s->kv);
    if (used > s->kv_peak) s->kv_peak = used;
    *T_out = T;
    *n_pre_out = n_pre;
    *n_dec_out = n_dec;
    return ns;
}

/* Step 6: sample, share the leader's tokens, retire. */
static dpep_status sample_and_retire(dpep_sched *s, int ns)
{
    for (int i = 0; i < ns; i++) {
        req *r = s->batch[i];
        bool wants = r->pos + s->seqs[i].n_new >= r->q.input_len && r->q.max_new > 0;
        s->sps[i] = wants ? &r->sp : NULL;
        s->rngs[i] = &r->rng;
    }
    DPEP_TRY(dpep_engine_sample(s->e, ns, s->sps, s->rngs, s->sampled, s->lp));
    if (s->c_atp && ns > 0) DPEP_TRY(dpep_comm_bcast(s->c_atp, s->sampled, ns, DPEP_COMM_I32, 0));
    const double tn = dpep_clock_s() - s->t0;
    for (int i = 0; i < ns; i++) {
        req *r = s->batch[i];
        if (s->sampled[i] >= 0) r->lp[r->n_out < r->q.max_new ? r->n_out : 0] = s->lp[i];
        r->pos += s->seqs[i].n_new;
        if (r->pos - s->seqs[i].n_new < r->q.input_len) cache_progress(s, r); /* prefilled now */
        if (r->pos < r->q.input_len) continue;
        bool fin = r->q.max_new == 0;
        if (!fin) {
            int32_t t = s->sampled[i];
            if (r->n_out == 0)
                r->t_first = tn;
            else
                r->gaps[r->n_out - 1] = tn - r->t_last;
            r->t_last = tn;
            r->out[r->n_out++] = t;
            s->out_mine++;
            if (s->leader && s->p.cb.on_token) {
                dpep_sched_result x = result_of(s, r, false, false);
                s->p.cb.on_token(s->p.cb.user, &x);
            }
            fin = r->n_out >= r->q.max_new ||
                  (!s->p.ignore_eos && !r->q.ignore_eos && is_eos(s->m, t));
        }
        if (fin) {
            if (r->n_out == 0) r->t_first = r->t_last = tn;
            leave_slot(s, r);
            int j = 0;
            for (int k = 0; k < s->n_running; k++)
                if (s->running[k] != r) s->running[j++] = s->running[k];
            s->n_running = j;
            retire(s, r, false, false);
        }
    }
    return DPEP_OK;
}

/* Step 3, attention-DP balance (TRT-LLM's): while some DP group of the
 * instance has no new request waiting, the others hold theirs, up to
 * balance_hold steps per round (a round ends when every group has some, or
 * when this group's queue empties), so that the groups prefill in the same
 * step (the slowest group paces every step). Never once the source is
 * closed: no request can come to the empty groups. The records are the
 * instance's, so the ranks of a group decide alike. */
static void balance(dpep_sched *s, bool closed)
{
    s->admit = true;
    if (s->p.balance_hold <= 0 || s->waiting.n == s->wait_head) {
        s->held = 0; /* nothing to hold: the next arrivals start a new round */
        return;
    }
    if (closed) return; /* no request can arrive any more: holding only waits */
    int with = 0, groups = 0;
    int64_t base = (int64_t)s->p.instance_index * s->p.attn_dp;
    for (int r = 0; r < s->isz; r++) {
        const int64_t *x = s->rec + (size_t)r * R_N;
        int64_t g = x[R_GROUP] - base;
        if (!x[R_LEADER] || g < 0 || g >= s->p.attn_dp) continue;
        groups++;
        with += x[R_WAITING] + s->arrived[g] > 0;
    }
    if (with == groups) {
        s->held = 0;
    } else if (s->held < s->p.balance_hold) { /* at most balance_hold steps per round */
        s->admit = false;
        s->held++;
        s->st.held_steps++;
    }
}

/* Step 2: the previous step's time goes to prefill or decode. */
static void account_prev(dpep_sched *s, int64_t pre_all, int64_t dec_all)
{
    if (!s->prev_pending) return;
    s->prev_pending = false;
    if (pre_all > 0) {
        s->st.prefill_s += s->prev_dt;
        s->st.prefill_tokens += pre_all;
    } else {
        s->st.decode_s += s->prev_dt;
        s->st.decode_tokens += dec_all;
        s->st.decode_steps++;
        s->st.decode_weight_bytes += s->prev_wbytes;
    }
}

dpep_status dpep_sched_step(dpep_sched *s, dpep_sched_step_info *info)
{
    if (!s->started) DPEP_TRY(dpep_sched_start(s));
    /* 1. agree */
    int64_t mine[R_N] = {0};
    if (s->source) {
        mine[R_ARRIVE] = s->n_pend;
        mine[R_ARRIVE_TOK] = s->n_pend_tok;
        mine[R_ABORT] = s->n_pend_abort;
        mine[R_CLOSED] = s->closed;
        mine[R_ABORT_ALL] = s->abort_all;
        s->abort_all = false;
    }
    mine[R_LEFT] = s->n_left;
    mine[R_PREV_PRE] = s->prev_pre;
    mine[R_PREV_DEC] = s->prev_dec;
    mine[R_DONE] = s->done_mine;
    mine[R_OUT] = s->out_mine;
    mine[R_LEADER] = s->leader;
    mine[R_WAITING] = s->waiting.n - s->wait_head;
    mine[R_GROUP] = s->my_group;
    DPEP_TRY(dpep_comm_allgather(s->c_inst, mine, s->rec, R_N, DPEP_COMM_I64));
    int64_t left = 0, pre_all = 0, dec_all = 0, done_all = 0, out_all = 0;
    const int64_t *src = s->rec; /* instance rank 0 is the source */
    for (int r = 0; r < s->isz; r++) {
        const int64_t *x = s->rec + (size_t)r * R_N;
        left += x[R_LEFT];
        if (!x[R_LEADER]) continue;
        pre_all += x[R_PREV_PRE];
        dec_all += x[R_PREV_DEC];
        done_all += x[R_DONE];
        out_all += x[R_OUT];
    }
    /* 2. account the previous step */
    account_prev(s, pre_all, dec_all);
    /* 3. arrivals and aborts */
    memset(s->arrived, 0, sizeof *s->arrived * (size_t)s->p.attn_dp);
    if (src[R_ARRIVE] > 0 || src[R_ABORT] > 0)
        DPEP_TRY(exchange_arrivals(s, src[R_ARRIVE], src[R_ARRIVE_TOK], src[R_ABORT]));
    if (src[R_ABORT_ALL]) abort_everything(s); /* after this step's arrivals: they too */
    balance(s, src[R_CLOSED] != 0); /* attention-DP balance, knowing this step's arrivals */
    *info = (dpep_sched_step_info){.ran = false, .finished = false, .steps = s->n_steps,
                                   .done = done_all, .left = left, .out_tokens = out_all};
    if (left == 0 && src[R_ARRIVE] == 0) {
        info->finished = src[R_CLOSED] != 0;
        s->st.steps = s->n_steps;
        s->st.output_tokens = s->out_mine;
        s->st.kv_peak = s->kv_peak;
        return DPEP_OK;
    }
    /* 4. batch */
    int T = 0;
    int64_t n_pre = 0, n_dec = 0;
    int ns = build_batch(s, &T, &n_pre, &n_dec);
    (void)T;
    /* 5. the forward (0 tokens on an idle rank) */
    double ts = dpep_clock_s();
    const int64_t pf = dpep_page_faults();
    const double wb = dpep_engine_weight_bytes(s->e);
    DPEP_TRY(dpep_engine_forward(s->e, s->seqs, ns, s->step_tok, DPEP_LOGITS_LAST, NULL));
    /* 6. sample and retire */
    DPEP_TRY(sample_and_retire(s, ns));
    s->prev_dt = dpep_clock_s() - ts;
    s->prev_wbytes = dpep_engine_weight_bytes(s->e) - wb;
    const int64_t faults = dpep_page_faults() - pf;
    s->st.step_faults += faults;
    if (faults > s->st.step_faults_max) s->st.step_faults_max = faults;
    s->st.steps_faulting += faults > 0;
    s->prev_pre = s->leader ? n_pre : 0;
    s->prev_dec = s->leader ? n_dec : 0;
    s->prev_pending = true;
    s->n_steps++;
    info->ran = true;
    info->steps = s->n_steps;
    s->st.steps = s->n_steps;
    s->st.output_tokens = s->out_mine;
    s->st.kv_peak = s->kv_peak;
    return DPEP_OK;
}

void dpep_sched_get_stats(const dpep_sched *s, dpep_sched_stats *out) { *out = s->st; }

void dpep_sched_get_live(const dpep_sched *s, dpep_sched_live *out)
{
    const dpep_attn_kv *kv = dpep_engine_kv(s->p.engine);
    int64_t cap = dpep_attn_kv_capacity_tokens(kv);
    *out = (dpep_sched_live){s->n_running, s->waiting.n - s->wait_head,
                             cap - dpep_attn_kv_free_tokens(kv), cap,
                             s->radix ? dpep_radix_cached_pages(s->radix) * s->page : 0,
                             s->prompt_mine, s->st.cached_tokens, s->st.evicted_tokens};
}

bool dpep_sched_flush_cache(dpep_sched *s)
{
    if (s->n_running > 0 || s->waiting.n > s->wait_head) return false;
    if (s->radix) dpep_radix_clear(s->radix);
    return true;
}
