/* run.c — `dpep run`, the offline driver: the workload is the request source,
 * the JSONL output and the summary are the sinks, and the scheduler of
 * runtime/sched does the serving.
 *   1. every rank loads the model and its share of the weights (agreed);
 *   2. rank 0 builds the workload and assigns each request to a DP group (an
 *      attention-DP group of an instance, or a replica without DP attention);
 *      the requests are broadcast so every rank knows the sizes;
 *   3. the engine is sized for the workload (context, KV slots, KV pool) and
 *      created (agreed);
 *   4. the source rank of each instance submits its instance's requests and
 *      closes; every rank steps its scheduler until its instance is drained;
 *   5. finished requests, recorded on their group's leader, are gathered to
 *      rank 0, which writes the JSONL output and the summary. */
#include "serve_internal.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dpep_comm.h"

/* Seconds between progress lines: live on a terminal, plain lines in logs. */
#define PROGRESS_TTY_S 0.25
#define PROGRESS_LOG_S 2.0

/* After a failed agreement: the ranks usually fail for the same reason (a
 * config or checkpoint problem every rank sees). Rank 0 keeps its messages;
 * another rank drops its own when its first message is rank 0's, so a
 * 96-rank job prints a shared problem once and a rank-specific one still
 * shows. Collective over the world. */
void serve_dedup_errors(dpep_world *w, dpep_diag *diag)
{
    char first[DPEP_DIAG_MSG] = "";
    if (w->rank == 0 && diag->n) snprintf(first, sizeof first, "%s", diag->item[0].msg);
    if (MPI_Bcast(first, (int)sizeof first, MPI_CHAR, 0, w->world) != MPI_SUCCESS) return;
    if (w->rank != 0 && diag->n && strcmp(diag->item[0].msg, first) == 0) dpep_diag_init(diag);
}



/* Ranks in `c` (1 for MPI_COMM_NULL: a group the layout does not make). */
static int comm_size_of(MPI_Comm c)
{
    int n = 1;
    if (c != MPI_COMM_NULL && MPI_Comm_size(c, &n) != MPI_SUCCESS) n = 1;
    return n;
}

/* 0. The device of this rank: its GPU (world/ made it current) when it has
 * one and runtime.device is cuda, or auto in a build with the CUDA engine;
 * else the CPU. The weights, the KV pool, attention and MoE all take this
 * device through the engine. runtime.device cuda on a rank without a GPU
 * is refused naming the rank (world/ refuses a node without GPUs first). */
static dpep_status pick_device(serve_job *r, dpep_diag *diag)
{
    const dpep_world *w = r->w;
    const dpep_device_kind want = r->cfg->runtime.device;
    if (want == DPEP_DEVICE_CUDA && w->gpu < 0) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "rank %d (%s): runtime.device cuda, but this rank "
                      "has no GPU (every rank needs its own; see `dpep placement`)", w->rank, w->host);
        return DPEP_ERR_NO_DEVICE;
    }
    /* auto takes the GPU only for what the CUDA engine runs today: every
     * group of the layout one rank wide (attention-TP, EP, MoE-TP, dense-TP);
     * the same answer on every rank. An explicit cuda without the CUDA
     * engine, or with a wider layout, is refused by the engine / moe/,
     * naming what. */
    const bool one_wide = comm_size_of(w->attn_tp) == 1 && comm_size_of(w->ep) == 1 &&
                          comm_size_of(w->moe_tp) == 1 && comm_size_of(w->dense) == 1;
    if (w->gpu >= 0 && want == DPEP_DEVICE_AUTO && !one_wide &&
        dpep_engine_ops_for(DPEP_DEVICE_CUDA) != NULL) {
        if (w->rank == 0)
            DPEP_INFO("runtime.device auto: CPU backend (the CUDA engine runs attention-TP, EP, "
                      "MoE-TP and dense-TP of 1 for now; set runtime.device cuda to be told why)");
        return dpep_device_get(DPEP_DEVICE_CPU, -1, &r->dev);
    }
    if (w->gpu >= 0 && (want == DPEP_DEVICE_CUDA ||
                        (want == DPEP_DEVICE_AUTO && dpep_engine_ops_for(DPEP_DEVICE_CUDA) != NULL))) {
        dpep_status st = dpep_device_get(DPEP_DEVICE_CUDA, w->gpu, &r->dev);
        if (st != DPEP_OK) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "rank %d (%s): GPU %d: %s", w->rank, w->host,
                          w->gpu, dpep_status_string(st));
            return st;
        }
        if (w->rank == 0)
            DPEP_INFO("runtime.device %s: the CUDA engine, one GPU per rank (rank 0: GPU %d)",
                      dpep_device_kind_name(want), w->gpu);
        return DPEP_OK;
    }
    if (w->gpu >= 0 && w->rank == 0)
        DPEP_INFO("runtime.device auto: CPU backend (this build has no CUDA engine)");
    return dpep_device_get(DPEP_DEVICE_CPU, -1, &r->dev);
}

/* 1. The device, the model and this rank's weights, agreed. Every rank
 * reports its own errors. */
dpep_status serve_job_load_model(serve_job *r, dpep_diag *diag)
{
    dpep_ckpt *ck = NULL;
    dpep_status st = pick_device(r, diag);
    if (st == DPEP_OK) st = dpep_model_config_load(r->cfg->model.path, &r->m, diag);
    if (st == DPEP_OK) st = dpep_ckpt_open(r->cfg->model.path, &ck, diag);
    if (st == DPEP_OK)
        st = dpep_weights_load_on(ck, &r->m, &r->w->layout, &r->w->me, &r->dev, &r->wts, diag);
    dpep_ckpt_close(ck);
    dpep_status all = dpep_comm_agree(r->c_world, st, NULL, NULL);
    if (all != DPEP_OK) serve_dedup_errors(r->w, diag);
    return all;
}

/* 2. Rank 0: workload and assignment; everyone: the broadcast copy. */
static dpep_status intake(serve_job *r, dpep_diag *diag)
{
    dpep_world *w = r->w;
    int64_t hdr[3] = {0, 0, 0}; /* status, n, tokens */
    dpep_workload wl;
    memset(&wl, 0, sizeof wl);
    if (w->rank == 0) {
        dpep_status st = dpep_workload_build(r->cfg, r->m.vocab, r->groups, &wl, diag);
        if (st != DPEP_OK) {
            hdr[0] = st;
        } else {
            if (wl.bad_lines)
                DPEP_WARN("workload: %d bad line%s skipped (named above)", wl.bad_lines,
                          wl.bad_lines == 1 ? "" : "s");
            dpep_diag_print(diag, stderr);
            dpep_diag_init(diag);
            hdr[1] = wl.n;
            hdr[2] = (int64_t)wl.n_tokens;
        }
    }
    DPEP_CHECK_MPI(MPI_Bcast(hdr, 3, MPI_INT64_T, 0, w->world));
    if (hdr[0] != DPEP_OK) return (dpep_status)hdr[0];
    r->n_req = hdr[1];
    r->req = calloc((size_t)(hdr[1] > 0 ? hdr[1] : 1), sizeof *r->req);
    r->meta = calloc((size_t)(hdr[1] > 0 ? hdr[1] : 1), sizeof *r->meta);
    r->toks = malloc(sizeof(int32_t) * (size_t)(hdr[2] > 0 ? hdr[2] : 1));
    dpep_status st = r->req && r->meta && r->toks ? DPEP_OK : DPEP_ERR_NOMEM;
    if (w->rank == 0 && st == DPEP_OK) {
        /* offline the whole workload is assigned before the first step: the
         * cache views are not bounded by the pools (not sized yet) */
        dpep_assigner_params ap = {.method = r->cfg->runtime.load_balance_method,
                                   .groups = r->groups, .page_size = (int)r->cfg->runtime.page_size,
                                   .cache_threshold = DPEP_ASSIGN_CACHE_THRESHOLD,
                                   .balance_abs = DPEP_ASSIGN_BALANCE_ABS,
                                   .balance_rel = DPEP_ASSIGN_BALANCE_REL};
        dpep_assigner *as = NULL;
        st = dpep_assigner_create(&ap, &as);
        int64_t off = 0;
        for (int i = 0; st == DPEP_OK && i < wl.n; i++) {
            r->req[i] = wl.req[i];
            r->req[i].index = i;
            int g = dpep_assigner_pick(as, &wl.req[i], NULL);
            r->meta[i].group = g < 0 || g >= r->groups ? 0 : g;
            r->meta[i].input_len = wl.req[i].input_len;
            snprintf(r->meta[i].id, sizeof r->meta[i].id, "%s", wl.req[i].id);
            memcpy(r->toks + off, wl.req[i].input_ids, sizeof(int32_t) * (size_t)wl.req[i].input_len);
            off += wl.req[i].input_len;
        }
        dpep_assigner_destroy(as);
    }
    dpep_workload_free(&wl);
    DPEP_TRY(dpep_comm_agree(r->c_world, st, NULL, NULL));
    /* dpep_request holds a pointer: it travels as bytes and is re-pointed */
    DPEP_CHECK_MPI(MPI_Bcast(r->req, (int)(r->n_req * (int64_t)sizeof *r->req), MPI_BYTE, 0, w->world));
    DPEP_CHECK_MPI(MPI_Bcast(r->meta, (int)(r->n_req * (int64_t)sizeof *r->meta), MPI_BYTE, 0, w->world));
    DPEP_CHECK_MPI(MPI_Bcast(r->toks, (int)hdr[2], MPI_INT32_T, 0, w->world));
    int64_t off = 0;
    for (int64_t i = 0; i < r->n_req; i++) {
        r->req[i].input_ids = r->toks + off;
        off += r->req[i].input_len;
    }
    return DPEP_OK;
}

dpep_status serve_job_size_kv(serve_job *r, int64_t max_kv_tokens)
{
    const dpep_config *cfg = r->cfg;
    const int page = (int)cfg->runtime.page_size;
    const double tok_bytes = dpep_model_kv_bytes_per_token(&r->m, sizeof(float));
    const int64_t pages_per_seq = (r->max_ctx + page - 1) / page;
    double need = (double)r->max_seqs * (double)pages_per_seq * page * tok_bytes;
    double mem = cfg->launch.gpu_memory_gb * 1e9 * cfg->runtime.mem_fraction_static -
                 (double)r->wts.arena_bytes;
    if (r->dev.kind == DPEP_DEVICE_CUDA) {
        /* The plan above trusts launch.gpu_memory_gb; the GPU may have less
         * (or be shared). The weights are on it now, so what is free minus
         * the part mem_fraction_static keeps back (activations, MoE buffers,
         * attention scratch, cuBLAS workspaces, made after this) is what the
         * KV pool can really take. */
        size_t fr = 0, tot = 0;
        if (dpep_cuda_mem_info(r->dev.ordinal, &fr, &tot) == DPEP_OK) {
            const double real = (double)fr - (double)tot * (1.0 - cfg->runtime.mem_fraction_static);
            if (real < mem) {
                if (need > real)
                    DPEP_WARN("rank %d (%s), GPU %d: the KV pool is held to %.2f GB: %.2f of %.2f "
                              "GB free after the weights, less (1 - mem_fraction_static) of the "
                              "total (launch.gpu_memory_gb %.0f plans %.2f GB)", r->w->rank,
                              r->w->host, r->dev.ordinal, real > 0 ? real / 1e9 : 0.0, fr / 1e9,
                              tot / 1e9, cfg->launch.gpu_memory_gb, mem / 1e9);
                mem = real;
            }
        }
    }
    double budget = need < mem ? need : mem;
    if (max_kv_tokens > 0 && (double)max_kv_tokens * tok_bytes < budget)
        budget = (double)max_kv_tokens * tok_bytes;
    if (budget < (double)page * tok_bytes) budget = (double)page * tok_bytes;
    DPEP_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &budget, 1, MPI_DOUBLE, MPI_MIN, r->w->world));
    r->kv_budget = (size_t)budget + 1;
    return DPEP_OK;
}

/* 3a. Sizes: context, slots, tokens per step, KV pool. Every rank of an
 * instance sizes alike (the attention-TP ranks of a group must make the same
 * admission decisions): the largest group's slots, the smallest pool. */
static dpep_status size_engine(serve_job *r)
{
    const dpep_config *cfg = r->cfg;
    int64_t max_ctx = 1, n_mine = 0;
    for (int64_t i = 0; i < r->n_req; i++) {
        int64_t need = r->req[i].input_len + r->req[i].max_new_tokens;
        if (need > max_ctx) max_ctx = need;
        if (r->meta[i].group == r->my_group) n_mine++;
    }
    if (max_ctx > r->m.max_pos) max_ctx = r->m.max_pos;
    int max_running = (int)cfg->runtime.max_running_requests;
    int max_seqs = max_running < n_mine ? max_running : (n_mine > 0 ? (int)n_mine : 1);
    int chunk = (int)cfg->runtime.chunked_prefill_size;
    DPEP_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, &max_seqs, 1, MPI_INT, MPI_MAX, r->w->world));
    r->max_ctx = max_ctx;
    r->max_seqs = max_seqs;
    r->step_tokens = chunk > max_running ? chunk : max_running;
    return serve_job_size_kv(r, r->o->max_kv_tokens);
}

dpep_status serve_job_create_engine(serve_job *r, dpep_diag *diag)
{
    dpep_world *w = r->w;
    const dpep_config *cfg = r->cfg;
    dpep_status st = DPEP_OK;
    {
        dpep_engine_params ep = {.m = &r->m, .w = &r->wts, .layout = &w->layout, .me = &w->me,
                                 .attn_tp = w->attn_tp, .ep = w->ep, .moe_tp = w->moe_tp,
                                 .dense = w->dense, .backend = cfg->parallel.moe_a2a_backend,
                                 .transport = cfg->parallel.moe_a2a_transport,
                                 .comm_timeout_s = cfg->runtime.comm_timeout_s,
                                 .max_tokens = r->step_tokens, .max_ctx = r->max_ctx,
                                 .max_seqs = r->max_seqs, .page_size = (int)cfg->runtime.page_size,
                                 .kv_budget_bytes = r->kv_budget, .device = &r->dev};
        st = dpep_engine_create(&ep, &r->e, diag);
    }
    dpep_status all = dpep_comm_agree(r->c_world, st, NULL, NULL);
    if (all != DPEP_OK) serve_dedup_errors(w, diag);
    return all;
}

static void print_start(const serve_job *r)
{
    if (r->w->rank != 0) return;
    dpep_attn_kv *kv = dpep_engine_kv(r->e);
    const char *tr = dpep_engine_moe_transport(r->e);
    printf("dpep run: %lld requests over %d DP group%s; model %s (%d layers, %d experts); "
           "KV pool %lld tokens per rank (%.1f MiB), %d tokens per step, %d running max\n",
           (long long)r->n_req, r->groups, r->groups == 1 ? "" : "s", r->m.arch_name,
           r->m.n_layers, r->m.n_routed, (long long)dpep_attn_kv_capacity_tokens(kv),
           dpep_attn_kv_pool_bytes(kv) / 1048576.0, r->step_tokens,
           (int)r->cfg->runtime.max_running_requests);
    printf("dpep run: MoE buffers %.1f MiB per rank (sized for every token of the EP group "
           "on one rank), %s\n", dpep_engine_moe_bytes(r->e) / 1048576.0,
           strcmp(tr, "shm") == 0   ? "alltoall over node-shared memory (/dev/shm)"
           : strcmp(tr, "mpi") == 0 ? "alltoall over MPI"
                                    : "allgather path");
    fflush(stdout);
}

/* 4. The scheduler, fed by this instance's share of the workload. */
static dpep_status serve_requests(serve_job *r)
{
    dpep_world *w = r->w;
    const dpep_config *cfg = r->cfg;
    const dpep_layout *L = &w->layout;
    dpep_sched_params sp = {.m = &r->m, .engine = r->e, .instance = w->instance,
                            .attn_tp = w->attn_tp, .instance_index = w->me.instance,
                            .attn_dp = L->attn_dp, .attn_dp_rank = w->me.attn_dp_rank,
                            .max_running = (int)cfg->runtime.max_running_requests,
                            .max_seqs = r->max_seqs, .chunk = (int)cfg->runtime.chunked_prefill_size,
                            .step_tokens = r->step_tokens, .max_ctx = r->max_ctx,
                            .ignore_eos = r->o->ignore_eos,
                            .prefix_cache = !cfg->runtime.disable_radix_cache,
                            .balance_hold = (int)cfg->runtime.dp_balance_hold_steps,
                            .comm_timeout_s = cfg->runtime.comm_timeout_s,
                            .cb = {.user = &r->res, .on_finish = serve_results_on_finish}};
    DPEP_TRY(dpep_sched_create(&sp, &r->s));
    if (w->me.instance_rank == 0) {
        for (int64_t i = 0; i < r->n_req; i++)
            if (r->meta[i].group / L->attn_dp == w->me.instance)
                DPEP_TRY(dpep_sched_submit(r->s, &r->req[i], r->meta[i].group));
        dpep_sched_close(r->s);
    }
    /* A live progress line only on a real terminal: Open MPI gives every rank a
     * pseudo-terminal even when mpirun's output goes to a file, so under
     * mpirun plain log lines are used unless DPEP_PROGRESS=tty asks for it. */
    const char *prog_env = getenv("DPEP_PROGRESS");
    const bool tty = !r->o->quiet && isatty(fileno(stdout)) &&
                     (prog_env ? strcmp(prog_env, "tty") == 0 : getenv("OMPI_COMM_WORLD_SIZE") == NULL);
    DPEP_TRY(dpep_sched_start(r->s));
    const double t0 = dpep_clock_s();
    double last = t0;
    dpep_sched_step_info info;
    do {
        DPEP_TRY(dpep_sched_step(r->s, &info));
        const double tn = dpep_clock_s();
        if (w->rank == 0 && !r->o->quiet && info.ran && tn - last >= (tty ? PROGRESS_TTY_S : PROGRESS_LOG_S)) {
            last = tn;
            const double el = tn - t0;
            if (tty)
                printf("\r  step %lld  requests %lld/%lld done (instance 0)  %.0f out tok/s  ",
                       (long long)info.steps, (long long)info.done,
                       (long long)(info.done + info.left), info.out_tokens / el);
            else
                printf("progress: step %lld, requests %lld/%lld done (instance 0), %lld output "
                       "tokens, %.0f tok/s\n", (long long)info.steps, (long long)info.done,
                       (long long)(info.done + info.left), (long long)info.out_tokens,
                       info.out_tokens / el);
            fflush(stdout);
        }
    } while (!info.finished);
    r->wall_s = dpep_clock_s() - t0;
    if (tty && w->rank == 0) printf("\n");
    return r->res.st;
}

/* 5. Results and summary on rank 0. */
static dpep_status report(serve_job *r)
{
    dpep_world *w = r->w;
    dpep_status st = DPEP_OK;
    serve_gathered g;
    DPEP_TRY(serve_results_gather(&r->res, w->world, r->n_req, &g));
    dpep_sched_stats ss;
    dpep_sched_get_stats(r->s, &ss);
    dpep_attn_kv *kv = dpep_engine_kv(r->e);
    serve_rank_facts mine = {.group = r->my_group, .leader = dpep_sched_is_leader(r->s),
                             .requests = ss.requests, .input_tokens = ss.input_tokens,
                             .output_tokens = ss.output_tokens, .kv_capacity = ss.kv_capacity,
                             .kv_peak = ss.kv_peak, .kv_pool = (int64_t)dpep_attn_kv_pool_bytes(kv),
                             .kv_tok_bytes = (int64_t)dpep_model_kv_bytes_per_token(&r->m, sizeof(float)),
                             .steps = ss.steps, .prefill_s = ss.prefill_s, .decode_s = ss.decode_s,
                             .prefill_tokens = (double)ss.prefill_tokens,
                             .decode_tokens = (double)ss.decode_tokens,
                             .cached_tokens = ss.cached_tokens, .evicted_tokens = ss.evicted_tokens};
    serve_rank_facts *facts = w->rank == 0 ? calloc((size_t)w->size, sizeof *facts) : NULL;
    const size_t nl = (size_t)r->m.n_layers * (size_t)(r->m.n_routed > 0 ? r->m.n_routed : 1);
    int64_t *load = calloc(nl, sizeof(int64_t));
    if ((w->rank == 0 && !facts) || !load) st = DPEP_ERR_NOMEM;
    /* a rank without memory still joins: the agreement below reports it */
    st = dpep_comm_agree(r->c_world, st, NULL, NULL);
    if (st == DPEP_OK)
        DPEP_CHECK_MPI_GOTO(MPI_Gather(&mine, (int)sizeof mine, MPI_BYTE, facts, (int)sizeof mine,
                                       MPI_BYTE, 0, w->world), st, done);
    if (st == DPEP_OK && r->m.n_routed > 0)
        DPEP_CHECK_MPI_GOTO(MPI_Reduce(dpep_engine_expert_load(r->e), load, (int)nl, MPI_INT64_T,
                                       MPI_SUM, 0, w->world), st, done);
    if (st == DPEP_OK && w->rank == 0) {
        if (r->o->output) st = serve_write_jsonl(r->o->output, r->meta, &g);
        serve_summary_in in = {.w = w, .cfg = r->cfg, .m = &r->m,
                               .moe_transport = dpep_engine_moe_transport(r->e), .meta = r->meta,
                               .g = &g, .facts = facts, .expert_load = load, .n_requests = r->n_req,
                               .groups = r->groups, .wall_s = r->wall_s, .steps = ss.steps};
        dpep_status s2 = serve_print_summary(&in, r->o->summary_json);
        if (st == DPEP_OK) st = s2;
    }
done:
    free(facts);
    free(load);
    serve_gathered_free(&g);
    return st;
}

dpep_status dpep_serve_offline(dpep_world *w, const dpep_config *cfg, const dpep_run_opts *o,
                               dpep_diag *diag)
{
    serve_job r;
    memset(&r, 0, sizeof r);
    r.w = w;
    r.cfg = cfg;
    r.o = o;
    const dpep_layout *L = &w->layout;
    r.groups = L->n_instances * L->attn_dp;
    r.my_group = w->me.instance * L->attn_dp + w->me.attn_dp_rank;
    dpep_thread_plan tp;
    dpep_world_thread_plan(w, &tp);
    dpep_status st = dpep_comm_create(w->world, "world", DPEP_COMM_MPI, cfg->runtime.comm_timeout_s,
                                      &r.c_world);
    if (st == DPEP_OK) st = serve_job_load_model(&r, diag);
    if (st == DPEP_OK) st = intake(&r, diag);
    if (st == DPEP_OK) st = size_engine(&r);
    if (st == DPEP_OK) st = serve_job_create_engine(&r, diag);
    if (st == DPEP_OK) {
        print_start(&r);
        st = serve_requests(&r);
    }
    if (st == DPEP_OK) st = report(&r);
    dpep_sched_destroy(r.s);
    serve_results_free(&r.res);
    free(r.req);
    free(r.meta);
    free(r.toks);
    dpep_engine_destroy(r.e);
    dpep_weights_free(&r.wts);
    dpep_comm_destroy(r.c_world);
    return st;
}
