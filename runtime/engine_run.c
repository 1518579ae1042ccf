/* engine_run.c — `dpep run`: rank 0 builds the workload and assigns each
 * request to a DP group (an attention-DP group of an instance, or a replica
 * without DP attention); the assignment is broadcast so every rank agrees.
 * Each DP group runs continuous batching over its own requests: every step
 * decodes one token of each running request, continues chunked prefills and
 * admits waiting requests while the token budget (chunked_prefill_size),
 * max_running_requests and the KV pool allow (a request whose pages are not
 * free waits; none is dropped). Before each step the ranks of an instance
 * all-gather a small record (tokens, work left); a rank without work runs a
 * 0-token step, so every collective of the forward is joined by every rank,
 * and the instance stops when no rank has work left. Rank 0 writes the JSONL
 * output in request order and the summary. */
#include "dpep_engine.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* A request on the wire (rank 0 -> all). */
typedef struct wire_req {
    char id[64];
    int32_t index, input_len, max_new, top_k, group;
    float temperature, top_p;
    uint64_t seed;
    int64_t tok_off;
} wire_req;

typedef struct req_state {
    const wire_req *q;
    const int32_t *ids;
    int slot;
    int64_t pos;            /* tokens in the cache                          */
    int n_out;
    int32_t *out;           /* [max_new]                                    */
    double *itl;            /* [max_new] gaps between tokens                */
    double *lp;             /* [max_new] log-probability of each output token */
    uint64_t rng;
    double t_first, t_last;
    bool admitted, done, failed;
} req_state;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Per-rank facts gathered for the summary. */
enum {
    F_GROUP, F_LEADER, F_REQS, F_IN, F_OUT, F_KV_CAP, F_KV_PEAK, F_KV_POOL, F_KV_TOK_BYTES,
    F_STEPS, F_N
};
/* Per-rank timings. */
enum { D_PREFILL_S, D_DECODE_S, D_PREFILL_TOK, D_DECODE_TOK, D_N };

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *v, int64_t n, double p)
{
    if (n <= 0) return 0;
    int64_t i = (int64_t)ceil(p / 100.0 * (double)n) - 1;
    if (i < 0) i = 0;
    if (i >= n) i = n - 1;
    return v[i];
}

static int cpuset_count(const char *list)
{
    if (!list || !*list) return 0;
    hwloc_bitmap_t b = hwloc_bitmap_alloc();
    int n = 0;
    if (b && hwloc_bitmap_list_sscanf(b, list) == 0) n = hwloc_bitmap_weight(b);
    hwloc_bitmap_free(b);
    return n;
}

static bool is_eos(const dpep_model_config *m, int32_t t)
{
    for (int i = 0; i < m->n_eos; i++)
        if (m->eos[i] == t) return true;
    return false;
}

/* After a failed agreement: the ranks usually fail for the same reason (a
 * config or checkpoint problem every rank sees). Rank 0 keeps its messages;
 * another rank drops its own when its first message is rank 0's, so a
 * 96-rank job prints a shared problem once and a rank-specific one still
 * shows. Collective over the world. */
static void dedup_errors(dpep_world *w, dpep_diag *diag)
{
    char first[DPEP_DIAG_MSG] = "";
    if (w->rank == 0 && diag->n) snprintf(first, sizeof first, "%s", diag->item[0].msg);
    MPI_Bcast(first, (int)sizeof first, MPI_CHAR, 0, w->world);
    if (w->rank != 0 && diag->n && strcmp(diag->item[0].msg, first) == 0) dpep_diag_init(diag);
}

/* Rank 0: workload and assignment; everyone: the broadcast copy. */
static dpep_status intake(dpep_world *w, const dpep_config *cfg, const dpep_model_config *m,
                          int groups, wire_req **reqs_out, int32_t **toks_out, int64_t *n_out,
                          dpep_diag *diag)
{
    int64_t hdr[3] = {0, 0, 0}; /* status, n, tokens */
    wire_req *reqs = NULL;
    int32_t *toks = NULL;
    if (w->rank == 0) {
        dpep_workload wl;
        dpep_status st = dpep_workload_build(cfg, m->vocab, groups, &wl, diag);
        if (st != DPEP_OK) {
            hdr[0] = st;
        } else {
            if (wl.bad_lines)
                DPEP_WARN("workload: %d bad line%s skipped (named above)", wl.bad_lines,
                          wl.bad_lines == 1 ? "" : "s");
            dpep_diag_print(diag, stderr);
            dpep_diag_init(diag);
            hdr[1] = wl.n;
            hdr[2] = 0;
            for (int i = 0; i < wl.n; i++) hdr[2] += wl.req[i].input_len;
            reqs = calloc((size_t)(wl.n > 0 ? wl.n : 1), sizeof *reqs);
            toks = malloc(sizeof(int32_t) * (size_t)(hdr[2] > 0 ? hdr[2] : 1));
            dpep_dp_load *load = calloc((size_t)groups, sizeof *load);
            int rr = 0;
            if (!reqs || !toks || !load) {
                hdr[0] = DPEP_ERR_NOMEM;
            } else {
                int64_t off = 0;
                for (int i = 0; i < wl.n; i++) {
                    const dpep_request *r = &wl.req[i];
                    wire_req *q = &reqs[i];
                    snprintf(q->id, sizeof q->id, "%s", r->id);
                    q->index = i;
                    q->input_len = r->input_len;
                    q->max_new = r->max_new_tokens;
                    q->top_k = r->sampling.top_k;
                    q->temperature = r->sampling.temperature;
                    q->top_p = r->sampling.top_p;
                    q->seed = r->sampling.seed;
                    q->group = dpep_sched_assign(cfg->runtime.load_balance_method, r, groups,
                                                 load, &rr);
                    if (q->group < 0 || q->group >= groups) q->group = 0;
                    q->tok_off = off;
                    memcpy(toks + off, r->input_ids, sizeof(int32_t) * (size_t)r->input_len);
                    off += r->input_len;
                }
            }
            free(load);
            dpep_workload_free(&wl);
        }
    }
    DPEP_CHECK_MPI(MPI_Bcast(hdr, 3, MPI_INT64_T, 0, w->world));
    if (hdr[0] != DPEP_OK) {
        free(reqs);
        free(toks);
        return (dpep_status)hdr[0];
    }
    if (w->rank != 0) {
        reqs = calloc((size_t)(hdr[1] > 0 ? hdr[1] : 1), sizeof *reqs);
        toks = malloc(sizeof(int32_t) * (size_t)(hdr[2] > 0 ? hdr[2] : 1));
        if (!reqs || !toks) return DPEP_ERR_NOMEM;
    }
    DPEP_CHECK_MPI(MPI_Bcast(reqs, (int)(hdr[1] * (int64_t)sizeof *reqs), MPI_BYTE, 0, w->world));
    DPEP_CHECK_MPI(MPI_Bcast(toks, (int)hdr[2], MPI_INT32_T, 0, w->world));
    *reqs_out = reqs;
    *toks_out = toks;
    *n_out = hdr[1];
    return DPEP_OK;
}

static void print_expert_load(FILE *f, const dpep_model_config *m, const int64_t *load,
                              json_t *js)
{
    json_t *arr = json_array();
    for (int l = 0; l < m->n_layers; l++) {
        if (!dpep_model_layer_is_moe(m, l)) continue;
        const int64_t *x = load + (size_t)l * m->n_routed;
        int64_t mn = INT64_MAX, mx = 0, sum = 0;
        for (int e = 0; e < m->n_routed; e++) {
            mn = x[e] < mn ? x[e] : mn;
            mx = x[e] > mx ? x[e] : mx;
            sum += x[e];
        }
        double mean = (double)sum / m->n_routed;
        fprintf(f, "  layer %3d: min %lld  mean %.1f  max %lld tokens per expert (max/mean %.2f)\n",
                l, (long long)mn, mean, (long long)mx, mean > 0 ? (double)mx / mean : 0.0);
        json_array_append_new(arr, json_pack("{s:i, s:I, s:f, s:I}", "layer", l, "min",
                                             (json_int_t)mn, "mean", mean, "max", (json_int_t)mx));
    }
    json_object_set_new(js, "expert_load", arr);
}

dpep_status dpep_engine_run(dpep_world *w, const dpep_config *cfg, const dpep_run_opts *o,
                            dpep_diag *diag)
{
    dpep_status st = DPEP_OK;
    const dpep_layout *L = &w->layout;
    const dpep_rank_info *me = &w->me;
    dpep_model_config m;
    dpep_ckpt *ck = NULL;
    dpep_weights wts;
    memset(&wts, 0, sizeof wts);
    dpep_engine *e = NULL;
    dpep_comm *c_inst = NULL, *c_atp = NULL;
    wire_req *reqs = NULL;
    int32_t *toks = NULL;
    int64_t n_req = 0;
    req_state *rs = NULL;
    int n_mine = 0;
    float *logits = NULL, *scratch = NULL;
    int64_t *rec = NULL;
    int32_t *step_tok = NULL, *sampled = NULL;
    dpep_attn_seq *seqs = NULL;
    req_state **batch = NULL, **running = NULL;
    int64_t *load_all = NULL;

#ifdef _OPENMP
    if (!getenv("OMP_NUM_THREADS")) {
        int n = cpuset_count(w->cpuset);
        if (n > 0) omp_set_num_threads(n);
    }
#else
    (void)cpuset_count;
#endif
    /* Model and this rank's weights. Every rank reports its own errors. */
    int ok = 1, all_ok = 1;
    st = dpep_model_config_load(cfg->model.path, &m, diag);
    if (st == DPEP_OK) st = dpep_ckpt_open(cfg->model.path, &ck, diag);
    if (st == DPEP_OK) st = dpep_weights_load(ck, &m, L, me, &wts, diag);
    ok = st == DPEP_OK;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, w->world);
    if (!all_ok) {
        dedup_errors(w, diag);
        if (st == DPEP_OK) st = DPEP_ERR_INVALID;
        goto done;
    }
    dpep_ckpt_close(ck);
    ck = NULL;

    const int groups = L->n_instances * L->attn_dp;
    const int my_group = me->instance * L->attn_dp + me->attn_dp_rank;
    const bool leader = me->attn_tp_rank == 0;
    DPEP_TRY_GOTO(intake(w, cfg, &m, groups, &reqs, &toks, &n_req, diag), st, done);

    /* Sizes: context, slots, tokens per step, KV pool. */
    int64_t max_ctx = 1;
    for (int64_t i = 0; i < n_req; i++)
        if (reqs[i].input_len + reqs[i].max_new > max_ctx) max_ctx = reqs[i].input_len + reqs[i].max_new;
    if (max_ctx > m.max_pos) max_ctx = m.max_pos;
    for (int64_t i = 0; i < n_req; i++)
        if (reqs[i].group == my_group) n_mine++;
    int max_running = (int)cfg->runtime.max_running_requests;
    int max_seqs = max_running < n_mine ? max_running : (n_mine > 0 ? n_mine : 1);
    int chunk = (int)cfg->runtime.chunked_prefill_size;
    int step_tokens = chunk > max_running ? chunk : max_running;
    /* Every rank of an instance sizes alike (the attention-TP ranks of a group
     * must make the same admission decisions): the largest group's slots. */
    MPI_Allreduce(MPI_IN_PLACE, &max_seqs, 1, MPI_INT, MPI_MAX, w->world);
    int page = (int)cfg->runtime.page_size;
    size_t tok_bytes = (size_t)m.n_layers * (size_t)(m.kv_lora_rank + m.qk_rope) * sizeof(float);
    int64_t pages_per_seq = (max_ctx + page - 1) / page;
    double need = (double)max_seqs * (double)pages_per_seq * page * (double)tok_bytes;
    double mem = cfg->launch.gpu_memory_gb * 1e9 * cfg->runtime.mem_fraction_static -
                 (double)wts.arena_bytes;
    double budget = need < mem ? need : mem;
    if (o->max_kv_tokens > 0 && (double)o->max_kv_tokens * tok_bytes < budget)
        budget = (double)o->max_kv_tokens * (double)tok_bytes;
    if (budget < (double)page * tok_bytes) budget = (double)page * tok_bytes;
    MPI_Allreduce(MPI_IN_PLACE, &budget, 1, MPI_DOUBLE, MPI_MIN, w->world);

    dpep_engine_params ep = {.m = &m, .w = &wts, .layout = L, .me = me, .attn_tp = w->attn_tp,
                             .ep = w->ep, .moe_tp = w->moe_tp, .dense = w->dense,
                             .backend = cfg->parallel.moe_a2a_backend,
                             .transport = cfg->parallel.moe_a2a_transport,
                             .comm_timeout_s = cfg->runtime.comm_timeout_s,
                             .max_tokens = step_tokens, .max_ctx = max_ctx, .max_seqs = max_seqs,
                             .page_size = page, .kv_budget_bytes = (size_t)budget + 1};
    st = dpep_engine_create(&ep, &e, diag);
    ok = st == DPEP_OK;
    MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, w->world);
    if (!all_ok) {
        dedup_errors(w, diag);
        if (st == DPEP_OK) st = DPEP_ERR_INTERNAL;
        goto done;
    }
    DPEP_TRY_GOTO(dpep_comm_create(w->instance, "instance", DPEP_COMM_MPI,
                                   cfg->runtime.comm_timeout_s, &c_inst), st, done);
    if (L->attn_tp > 1)
        DPEP_TRY_GOTO(dpep_comm_create(w->attn_tp, "attn_tp_sample", DPEP_COMM_MPI,
                                       cfg->runtime.comm_timeout_s, &c_atp), st, done);
    dpep_attn_kv *kv = dpep_engine_kv(e);
    const int64_t kv_cap = dpep_attn_kv_capacity_tokens(kv);
    if (w->rank == 0) {
        printf("dpep run: %lld requests over %d DP group%s; model %s (%d layers, %d experts); "
               "KV pool %lld tokens per rank (%.1f MiB), %d tokens per step, %d running max\n",
               (long long)n_req, groups, groups == 1 ? "" : "s", m.arch_name, m.n_layers,
               m.n_routed, (long long)kv_cap, dpep_attn_kv_pool_bytes(kv) / 1048576.0, step_tokens,
               max_running);
        printf("dpep run: MoE buffers %.1f MiB per rank (sized for every token of the EP group "
               "on one rank), %s\n", dpep_engine_moe_bytes(e) / 1048576.0,
               strcmp(dpep_engine_moe_transport(e), "shm") == 0
                   ? "alltoall over node-shared memory (/dev/shm)"
               : strcmp(dpep_engine_moe_transport(e), "mpi") == 0 ? "alltoall over MPI"
                                                                 : "allgather path");
        fflush(stdout);
    }

    /* This group's requests, in request order. */
    rs = calloc((size_t)(n_mine > 0 ? n_mine : 1), sizeof *rs);
    int64_t max_new_all = 1;
    for (int64_t i = 0; i < n_req; i++)
        if (reqs[i].max_new > max_new_all) max_new_all = reqs[i].max_new;
    if (!rs) {
        st = DPEP_ERR_NOMEM;
        goto done;
    }
    for (int64_t i = 0, k = 0; i < n_req; i++) {
        if (reqs[i].group != my_group) continue;
        req_state *r = &rs[k++];
        r->q = &reqs[i];
        r->ids = toks + reqs[i].tok_off;
        r->slot = -1;
        r->out = malloc(sizeof(int32_t) * (size_t)(reqs[i].max_new > 0 ? reqs[i].max_new : 1));
        r->itl = malloc(sizeof(double) * (size_t)(reqs[i].max_new > 0 ? reqs[i].max_new : 1));
        r->lp = malloc(sizeof(double) * (size_t)(reqs[i].max_new > 0 ? reqs[i].max_new : 1));
        r->rng = dpep_rng_seed(reqs[i].seed);
        if (!r->out || !r->itl || !r->lp) {
            st = DPEP_ERR_NOMEM;
            goto done;
        }
        if (reqs[i].input_len + reqs[i].max_new > max_ctx ||
            reqs[i].input_len + reqs[i].max_new > kv_cap || reqs[i].input_len < 1) {
            /* Could never run here: reported, not silently dropped. */
            r->failed = r->done = true;
            if (leader)
                DPEP_WARN("request %s: %d prompt + %d new tokens do not fit (context %lld, KV pool "
                          "%lld tokens)", reqs[i].id, reqs[i].input_len, reqs[i].max_new,
                          (long long)max_ctx, (long long)kv_cap);
        }
    }
    const int V = m.vocab;
    logits = malloc(sizeof(float) * (size_t)V * (size_t)step_tokens);
    scratch = malloc(sizeof(float) * 2 * (size_t)V);
    int isz = dpep_comm_size(c_inst);
    enum { R_T, R_LEFT, R_PREFILL, R_DECODE, R_DONE, R_OUT, R_LEADER, R_N };
    rec = malloc(sizeof(int64_t) * R_N * (size_t)(isz + 1));
    step_tok = malloc(sizeof(int32_t) * (size_t)step_tokens);
    sampled = malloc(sizeof(int32_t) * (size_t)step_tokens);
    seqs = malloc(sizeof *seqs * (size_t)step_tokens);
    batch = malloc(sizeof *batch * (size_t)step_tokens);
    running = malloc(sizeof *running * (size_t)max_seqs);
    if (!logits || !scratch || !rec || !step_tok || !sampled || !seqs || !batch || !running) {
        st = DPEP_ERR_NOMEM;
        goto done;
    }

    int n_running = 0, next_wait = 0, n_done_mine = 0, n_steps = 0;
    int64_t out_mine = 0, kv_peak = 0;
    double t0, t_prefill = 0, t_decode = 0, last_progress;
    int64_t tok_prefill = 0, tok_decode = 0;
    /* A live progress line only on a real terminal: Open MPI gives every rank a
     * pseudo-terminal even when mpirun's output goes to a file, so under
     * mpirun plain log lines are used unless DPEP_PROGRESS=tty asks for it. */
    const char *prog_env = getenv("DPEP_PROGRESS");
    bool tty = !o->quiet && isatty(fileno(stdout)) &&
               (prog_env ? strcmp(prog_env, "tty") == 0 : getenv("OMPI_COMM_WORLD_SIZE") == NULL);
    MPI_Barrier(w->instance);
    t0 = now_s();
    last_progress = t0;
    for (int k = 0; k < n_mine; k++)
        if (rs[k].done) n_done_mine++;
    for (;;) {
        /* 1. This group's batch. */
        int ns = 0, T = 0;
        int64_t n_pre = 0, n_dec = 0;
        for (int i = 0; i < n_running; i++) {
            req_state *r = running[i];
            if (r->pos < r->q->input_len) continue;
            seqs[ns] = (dpep_attn_seq){r->slot, 1, r->pos};
            step_tok[T++] = r->out[r->n_out - 1];
            batch[ns++] = r;
            n_dec++;
        }
        int pre_budget = chunk;
        if (pre_budget > step_tokens - T) pre_budget = step_tokens - T;
        for (int i = 0; i < n_running && pre_budget > 0; i++) {
            req_state *r = running[i];
            if (r->pos >= r->q->input_len) continue;
            int n = (int)(r->q->input_len - r->pos);
            if (n > pre_budget) n = pre_budget;
            seqs[ns] = (dpep_attn_seq){r->slot, n, r->pos};
            memcpy(step_tok + T, r->ids + r->pos, sizeof(int32_t) * (size_t)n);
            T += n;
            batch[ns++] = r;
            pre_budget -= n;
            n_pre += n;
        }
        while (pre_budget > 0 && n_running < max_running && n_running < max_seqs) {
            while (next_wait < n_mine && rs[next_wait].done) next_wait++;
            if (next_wait >= n_mine) break;
            req_state *r = &rs[next_wait];
            int slot = -1;
            if (dpep_attn_kv_seq_open(kv, &slot) != DPEP_OK) break;
            if (dpep_attn_kv_seq_reserve(kv, slot, r->q->input_len + r->q->max_new) != DPEP_OK) {
                dpep_attn_kv_seq_close(kv, slot); /* the pool is full: wait */
                break;
            }
            next_wait++;
            r->slot = slot;
            r->admitted = true;
            running[n_running++] = r;
            int n = r->q->input_len < pre_budget ? r->q->input_len : pre_budget;
            seqs[ns] = (dpep_attn_seq){r->slot, n, 0};
            memcpy(step_tok + T, r->ids, sizeof(int32_t) * (size_t)n);
            T += n;
            batch[ns++] = r;
            pre_budget -= n;
            n_pre += n;
        }
        int64_t used = kv_cap - dpep_attn_kv_free_tokens(kv);
        if (used > kv_peak) kv_peak = used;
        /* 2. Agree on the step. */
        int64_t mine[R_N] = {T, n_mine - n_done_mine, n_pre, n_dec, n_done_mine, out_mine, leader};
        DPEP_TRY_GOTO(dpep_comm_allgather(c_inst, mine, rec, R_N, DPEP_COMM_I64), st, done);
        int64_t left = 0, pre_all = 0, dec_all = 0, done_all = 0, out_all = 0;
        for (int r = 0; r < isz; r++) {
            const int64_t *x = rec + (size_t)r * R_N;
            left += x[R_LEFT];
            if (!x[R_LEADER]) continue;
            pre_all += x[R_PREFILL];
            dec_all += x[R_DECODE];
            done_all += x[R_DONE];
            out_all += x[R_OUT];
        }
        if (left == 0) break;
        /* 3. The forward (0 tokens on an idle rank). */
        double ts = now_s();
        DPEP_TRY_GOTO(dpep_engine_forward(e, seqs, ns, step_tok, DPEP_LOGITS_LAST, logits), st, done);
        /* 4. Sample; the attention-TP group takes its leader's tokens. */
        for (int i = 0; i < ns; i++) {
            req_state *r = batch[i];
            sampled[i] = -1;
            if (r->pos + seqs[i].n_new < r->q->input_len || r->q->max_new == 0) continue;
            dpep_sampling sp = {.temperature = r->q->temperature, .top_k = r->q->top_k,
                                .top_p = r->q->top_p, .seed = r->q->seed};
            sampled[i] = dpep_sample(logits + (size_t)i * V, V, &sp, &r->rng, scratch);
        }
        if (c_atp && ns > 0)
            DPEP_TRY_GOTO(dpep_comm_bcast(c_atp, sampled, ns, DPEP_COMM_I32, 0), st, done);
        double tn = now_s();
        /* log-softmax of the chosen token, reported per output token (the
         * layout tests compare them: logits equal within 1e-4). */
        for (int i = 0; i < ns; i++) {
            if (sampled[i] < 0) continue;
            const float *lg = logits + (size_t)i * V;
            float mx = lg[0];
            for (int v = 1; v < V; v++) mx = lg[v] > mx ? lg[v] : mx;
            double z = 0;
            for (int v = 0; v < V; v++) z += exp((double)lg[v] - mx);
            batch[i]->lp[batch[i]->n_out < batch[i]->q->max_new ? batch[i]->n_out : 0] =
                (double)lg[sampled[i]] - mx - log(z);
        }
        for (int i = 0; i < ns; i++) {
            req_state *r = batch[i];
            r->pos += seqs[i].n_new;
            if (r->pos < r->q->input_len) continue;
            bool fin = r->q->max_new == 0;
            if (!fin) {
                int32_t t = sampled[i];
                if (r->n_out == 0) {
                    r->t_first = tn - t0;
                } else {
                    r->itl[r->n_out - 1] = tn - t0 - r->t_last;
                }
                r->t_last = tn - t0;
                r->out[r->n_out++] = t;
                out_mine++;
                fin = r->n_out >= r->q->max_new || (!o->ignore_eos && is_eos(&m, t));
            }
            if (fin) {
                r->done = true;
                if (r->n_out == 0) r->t_first = r->t_last = tn - t0;
                dpep_attn_kv_seq_close(kv, r->slot);
                r->slot = -1;
                n_done_mine++;
                int j = 0;
                for (int k = 0; k < n_running; k++)
                    if (running[k] != r) running[j++] = running[k];
                n_running = j;
            }
        }
        double dt = now_s() - ts;
        n_steps++;
        if (pre_all > 0) {
            t_prefill += dt;
            tok_prefill += pre_all;
        } else {
            t_decode += dt;
            tok_decode += dec_all;
        }
        if (w->rank == 0 && !o->quiet && (tn - last_progress >= (tty ? 0.25 : 2.0))) {
            last_progress = tn;
            double el = tn - t0;
            if (tty)
                printf("\r  step %d  requests %lld/%lld done (instance 0)  %.0f out tok/s  ", n_steps,
                       (long long)done_all, (long long)(done_all + left), out_all / el);
            else
                printf("progress: step %d, requests %lld/%lld done (instance 0), %lld output "
                       "tokens, %.0f tok/s\n", n_steps, (long long)done_all,
                       (long long)(done_all + left), (long long)out_all, out_all / el);
            fflush(stdout);
        }
    }
    double t_total = now_s() - t0;
    if (tty && w->rank == 0) printf("\n");

    /* ---- results to rank 0 ---- */
    {
        /* ints: per request [index, failed, n_out, ids...]; doubles: [ttft, latency,
         * itl[n_out - 1], logprob[n_out]] */
        int64_t ni = 0, nd = 0;
        if (leader)
            for (int k = 0; k < n_mine; k++) {
                ni += 3 + rs[k].n_out;
                nd += 2 + (rs[k].n_out > 1 ? rs[k].n_out - 1 : 0) + rs[k].n_out;
            }
        int32_t *ib = malloc(sizeof(int32_t) * (size_t)(ni + 1));
        double *db = malloc(sizeof(double) * (size_t)(nd + 1));
        int64_t pi = 0, pd = 0;
        for (int k = 0; leader && k < n_mine; k++) {
            req_state *r = &rs[k];
            ib[pi++] = r->q->index;
            ib[pi++] = r->failed;
            ib[pi++] = r->n_out;
            memcpy(ib + pi, r->out, sizeof(int32_t) * (size_t)r->n_out);
            pi += r->n_out;
            db[pd++] = r->t_first;
            db[pd++] = r->t_last;
            for (int j = 0; j + 1 < r->n_out; j++) db[pd++] = r->itl[j];
            for (int j = 0; j < r->n_out; j++) db[pd++] = r->lp[j];
        }
        int cnt[2] = {(int)ni, (int)nd};
        int *cnts = w->rank == 0 ? malloc(sizeof(int) * 2 * (size_t)w->size) : NULL;
        MPI_Gather(cnt, 2, MPI_INT, cnts, 2, MPI_INT, 0, w->world);
        int *ci = NULL, *cd = NULL, *di = NULL, *dd = NULL;
        int32_t *iall = NULL;
        double *dall = NULL;
        if (w->rank == 0) {
            ci = malloc(sizeof(int) * (size_t)w->size);
            cd = malloc(sizeof(int) * (size_t)w->size);
            di = malloc(sizeof(int) * (size_t)w->size);
            dd = malloc(sizeof(int) * (size_t)w->size);
            int si = 0, sd = 0;
            for (int r = 0; r < w->size; r++) {
                ci[r] = cnts[2 * r];
                cd[r] = cnts[2 * r + 1];
                di[r] = si;
                dd[r] = sd;
                si += ci[r];
                sd += cd[r];
            }
            iall = malloc(sizeof(int32_t) * (size_t)(si + 1));
            dall = malloc(sizeof(double) * (size_t)(sd + 1));
        }
        MPI_Gatherv(ib, cnt[0], MPI_INT32_T, iall, ci, di, MPI_INT32_T, 0, w->world);
        MPI_Gatherv(db, cnt[1], MPI_DOUBLE, dall, cd, dd, MPI_DOUBLE, 0, w->world);
        free(ib);
        free(db);

        /* Per-rank facts and timings, expert load. */
        int64_t facts[F_N] = {my_group, leader, 0, 0, out_mine, kv_cap, kv_peak,
                              (int64_t)dpep_attn_kv_pool_bytes(kv), (int64_t)tok_bytes, n_steps};
        for (int k = 0; k < n_mine; k++) {
            facts[F_REQS]++;
            facts[F_IN] += rs[k].q->input_len;
        }
        double tim[D_N] = {t_prefill, t_decode, (double)tok_prefill, (double)tok_decode};
        int64_t *fall = w->rank == 0 ? malloc(sizeof facts * (size_t)w->size) : NULL;
        double *tall = w->rank == 0 ? malloc(sizeof tim * (size_t)w->size) : NULL;
        MPI_Gather(facts, F_N, MPI_INT64_T, fall, F_N, MPI_INT64_T, 0, w->world);
        MPI_Gather(tim, D_N, MPI_DOUBLE, tall, D_N, MPI_DOUBLE, 0, w->world);
        size_t nl = (size_t)m.n_layers * (size_t)(m.n_routed > 0 ? m.n_routed : 1);
        load_all = calloc(nl, sizeof(int64_t));
        if (m.n_routed > 0)
            MPI_Reduce(dpep_engine_expert_load(e), load_all, (int)nl, MPI_INT64_T, MPI_SUM, 0,
                       w->world);

        if (w->rank == 0) {
            /* Unpack per request. */
            int32_t **outs = calloc((size_t)n_req, sizeof *outs);
            int *nouts = calloc((size_t)n_req, sizeof *nouts);
            int *failed = calloc((size_t)n_req, sizeof *failed);
            double *ttft = calloc((size_t)n_req, sizeof *ttft);
            double *lat = calloc((size_t)n_req, sizeof *lat);
            const double **lps = calloc((size_t)n_req, sizeof *lps);
            int64_t n_itl = 0, total_out = 0, total_in = 0;
            for (int r = 0; r < w->size; r++) n_itl += cd[r];
            double *itl = malloc(sizeof(double) * (size_t)(n_itl + 1));
            n_itl = 0;
            for (int r = 0; r < w->size; r++) {
                int32_t *p = iall + di[r], *pe = p + ci[r];
                double *q = dall + dd[r];
                while (p < pe) {
                    int idx = p[0];
                    failed[idx] = p[1];
                    nouts[idx] = p[2];
                    outs[idx] = p + 3;
                    p += 3 + nouts[idx];
                    ttft[idx] = q[0];
                    lat[idx] = q[1];
                    for (int j = 0; j + 1 < nouts[idx]; j++) itl[n_itl++] = q[2 + j];
                    q += 2 + (nouts[idx] > 1 ? nouts[idx] - 1 : 0);
                    lps[idx] = q;
                    q += nouts[idx];
                }
            }
            FILE *of = NULL;
            if (o->output) {
                of = fopen(o->output, "w");
                if (!of) {
                    DPEP_ERROR("--output %s: cannot open for writing", o->output);
                    st = DPEP_ERR_IO;
                }
            }
            int n_failed = 0;
            for (int64_t i = 0; i < n_req; i++) {
                total_out += nouts[i];
                total_in += reqs[i].input_len;
                n_failed += failed[i] != 0;
                if (!of) continue;
                json_t *ids = json_array();
                for (int j = 0; j < nouts[i]; j++) json_array_append_new(ids, json_integer(outs[i][j]));
                json_t *js = json_pack("{s:s, s:i, s:i, s:o, s:f, s:f}", "id", reqs[i].id, "dp_rank",
                                       reqs[i].group, "input_len", reqs[i].input_len, "output_ids",
                                       ids, "ttft_s", ttft[i], "latency_s", lat[i]);
                json_t *lpa = json_array();
                for (int j = 0; j < nouts[i]; j++) json_array_append_new(lpa, json_real(lps[i][j]));
                json_object_set_new(js, "logprobs", lpa);
                if (failed[i]) json_object_set_new(js, "error", json_string("does not fit the KV pool or context"));
                char *line = json_dumps(js, JSON_COMPACT | JSON_PRESERVE_ORDER);
                fprintf(of, "%s\n", line);
                free(line);
                json_decref(js);
            }
            if (of) fclose(of);
            qsort(ttft, (size_t)n_req, sizeof(double), cmp_double);
            qsort(itl, (size_t)n_itl, sizeof(double), cmp_double);
            double pre_s = 0, dec_s = 0, pre_tok = 0, dec_tok = 0;
            /* Instances run side by side: their throughputs add up. */
            for (int r = 0; r < w->size; r++) {
                const double *t = tall + (size_t)r * D_N;
                if (r % L->tp != 0) continue; /* one rank per instance */
                pre_s = t[D_PREFILL_S] > pre_s ? t[D_PREFILL_S] : pre_s;
                dec_s = t[D_DECODE_S] > dec_s ? t[D_DECODE_S] : dec_s;
                pre_tok += t[D_PREFILL_TOK];
                dec_tok += t[D_DECODE_TOK];
            }
            json_t *js = json_object();
            FILE *f = stdout;
            fprintf(f, "\n==== dpep run summary ====\n");
            fprintf(f, "layout:           %d ranks, tp %d, dp %d%s, ep %d (attn_tp %d, moe_tp %d, "
                       "dense_tp %d), moe %s%s\n", w->size, L->tp, L->dp,
                    L->dpa ? " DP attention" : " replicas", L->ep, L->attn_tp, L->moe_tp,
                    L->dense_tp, cfg->parallel.moe_a2a_backend == DPEP_A2A_ALLGATHER ? "allgather" : "alltoall",
                    cfg->parallel.moe_a2a_backend == DPEP_A2A_ALLGATHER ? ""
                    : L->ep == 1 ? " (ep 1: no exchange)"
                    : strcmp(dpep_engine_moe_transport(e), "shm") == 0 ? " over node-shared memory"
                                                                       : " over MPI");
            fprintf(f, "requests:         %lld (%d failed)\n", (long long)n_req, n_failed);
            fprintf(f, "input tokens:     %lld\noutput tokens:    %lld\n", (long long)total_in,
                    (long long)total_out);
            fprintf(f, "wall time:        %.3f s (%d steps)\n", t_total, n_steps);
            fprintf(f, "prefill:          %.1f tok/s (%.0f tokens in %.3f s of steps with prefill)\n",
                    pre_s > 0 ? pre_tok / pre_s : 0.0, pre_tok, pre_s);
            fprintf(f, "decode:           %.1f tok/s (%.0f tokens in %.3f s of decode-only steps)\n",
                    dec_s > 0 ? dec_tok / dec_s : 0.0, dec_tok, dec_s);
            fprintf(f, "output:           %.1f tok/s overall\n", t_total > 0 ? total_out / t_total : 0.0);
            fprintf(f, "TTFT:             p50 %.4f  p90 %.4f  p99 %.4f s\n", pct(ttft, n_req, 50),
                    pct(ttft, n_req, 90), pct(ttft, n_req, 99));
            fprintf(f, "inter-token:      p50 %.4f  p90 %.4f  p99 %.4f s (%lld gaps)\n",
                    pct(itl, n_itl, 50), pct(itl, n_itl, 90), pct(itl, n_itl, 99), (long long)n_itl);
            json_object_set_new(js, "world", json_integer(w->size));
            json_object_set_new(js, "tp", json_integer(L->tp));
            json_object_set_new(js, "dp", json_integer(L->dp));
            json_object_set_new(js, "ep", json_integer(L->ep));
            json_object_set_new(js, "dp_attention", json_boolean(L->dpa));
            json_object_set_new(js, "attn_tp", json_integer(L->attn_tp));
            json_object_set_new(js, "moe_tp", json_integer(L->moe_tp));
            json_object_set_new(js, "dense_tp", json_integer(L->dense_tp));
            json_object_set_new(js, "requests", json_integer(n_req));
            json_object_set_new(js, "failed", json_integer(n_failed));
            json_object_set_new(js, "input_tokens", json_integer(total_in));
            json_object_set_new(js, "output_tokens", json_integer(total_out));
            json_object_set_new(js, "wall_s", json_real(t_total));
            json_object_set_new(js, "steps", json_integer(n_steps));
            json_object_set_new(js, "prefill_tok_s", json_real(pre_s > 0 ? pre_tok / pre_s : 0));
            json_object_set_new(js, "decode_tok_s", json_real(dec_s > 0 ? dec_tok / dec_s : 0));
            json_object_set_new(js, "output_tok_s", json_real(t_total > 0 ? total_out / t_total : 0));
            json_object_set_new(js, "ttft_s", json_pack("{s:f,s:f,s:f}", "p50", pct(ttft, n_req, 50),
                                                        "p90", pct(ttft, n_req, 90), "p99", pct(ttft, n_req, 99)));
            json_object_set_new(js, "itl_s", json_pack("{s:f,s:f,s:f}", "p50", pct(itl, n_itl, 50),
                                                       "p90", pct(itl, n_itl, 90), "p99", pct(itl, n_itl, 99)));
            fprintf(f, "per DP group:     requests / input tokens / output tokens\n");
            json_t *pg = json_array();
            for (int g = 0; g < groups; g++) {
                for (int r = 0; r < w->size; r++) {
                    const int64_t *x = fall + (size_t)r * F_N;
                    if (x[F_GROUP] != g || !x[F_LEADER]) continue;
                    fprintf(f, "  dp %3d (rank %3d): %5lld / %7lld / %7lld\n", g, r, (long long)x[F_REQS],
                            (long long)x[F_IN], (long long)x[F_OUT]);
                    json_array_append_new(pg, json_pack("{s:i,s:i,s:I,s:I,s:I}", "dp_rank", g, "rank", r,
                                                        "requests", (json_int_t)x[F_REQS], "input_tokens",
                                                        (json_int_t)x[F_IN], "output_tokens", (json_int_t)x[F_OUT]));
                }
            }
            json_object_set_new(js, "per_dp_rank", pg);
            fprintf(f, "KV cache per rank: peak tokens / capacity, peak bytes, pool bytes\n");
            json_t *pk = json_array();
            for (int r = 0; r < w->size; r++) {
                const int64_t *x = fall + (size_t)r * F_N;
                double peak_b = (double)x[F_KV_PEAK] * (double)x[F_KV_TOK_BYTES];
                fprintf(f, "  rank %3d (dp %3lld): %7lld / %7lld tokens (%5.1f%%), %.3f MiB used, %.3f MiB pool\n",
                        r, (long long)x[F_GROUP], (long long)x[F_KV_PEAK], (long long)x[F_KV_CAP],
                        x[F_KV_CAP] ? 100.0 * x[F_KV_PEAK] / x[F_KV_CAP] : 0.0, peak_b / 1048576.0,
                        x[F_KV_POOL] / 1048576.0);
                json_array_append_new(pk, json_pack("{s:i,s:I,s:I,s:I,s:f,s:I}", "rank", r, "dp_rank",
                                                    (json_int_t)x[F_GROUP], "peak_tokens", (json_int_t)x[F_KV_PEAK],
                                                    "capacity_tokens", (json_int_t)x[F_KV_CAP], "peak_bytes", peak_b,
                                                    "pool_bytes", (json_int_t)x[F_KV_POOL]));
            }
            json_object_set_new(js, "kv_per_rank", pk);
            if (m.n_routed > 0) {
                fprintf(f, "expert load (tokens per routed expert, all ranks):\n");
                print_expert_load(f, &m, load_all, js);
            }
            fflush(f);
            if (o->summary_json) {
                if (json_dump_file(js, o->summary_json, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0) {
                    DPEP_ERROR("--summary-json %s: cannot write", o->summary_json);
                    st = DPEP_ERR_IO;
                }
            }
            json_decref(js);
            free(outs);
            free(nouts);
            free(failed);
            free(ttft);
            free(lat);
            free(lps);
            free(itl);
        }
        free(cnts);
        free(ci);
        free(cd);
        free(di);
        free(dd);
        free(iall);
        free(dall);
        free(fall);
        free(tall);
    }
done:
    if (rs)
        for (int k = 0; k < n_mine; k++) {
            free(rs[k].out);
            free(rs[k].itl);
            free(rs[k].lp);
        }
    free(rs);
    free(reqs);
    free(toks);
    free(logits);
    free(scratch);
    free(rec);
    free(step_tok);
    free(sampled);
    free(seqs);
    free(batch);
    free(running);
    free(load_all);
    dpep_comm_destroy(c_atp);
    dpep_comm_destroy(c_inst);
    dpep_engine_destroy(e);
    dpep_weights_free(&wts);
    dpep_ckpt_close(ck);
    return st;
}
