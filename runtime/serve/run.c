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
 *   5. each finished request goes from its group's leader to rank 0 after
 *      the step it finished in (results.c), and rank 0 writes its line at
 *      once (sink.c): a job that dies keeps what it finished, and
 *      --resume serves the rest. At the end every rank meets in a patient
 *      barrier (it waits for the slowest instance; a rank that stops
 *      answering is named), rank 0 puts the file in request order and
 *      prints the summary.
 * SIGTERM/SIGINT: any rank that gets one asks rank 0, which tells every
 * instance's source to abort what is left; the instances drain, the lines
 * written stay, the summary says what was stopped, exit code 4. A second
 * signal ends the process at once. Every collective of the run is under the
 * watchdog (dpep_comm or a watch bracket on c_world). */
#include "serve_internal.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dpep_comm.h"
#include "dpep_moe.h"

/* ---- signals ------------------------------------------------------------ */
static volatile sig_atomic_t g_signal; /* the first SIGTERM/SIGINT, 0: none */

/* What the handler may say at once on rank 0: mpirun kills the ranks about
 * a second after forwarding SIGTERM, perhaps before the step in progress
 * ends, so the line saying what was stopped and where the finished requests
 * are is written from the handler itself (write(2) only). */
static bool g_root;
static const char *g_out_path;          /* --output, NULL: none           */
static volatile sig_atomic_t g_lines;   /* lines flushed to it so far      */

static size_t put_str(char *b, size_t n, size_t cap, const char *s)
{
    while (*s && n < cap) b[n++] = *s++;
    return n;
}

static void say_stopping(int sig)
{
    char b[512];
    size_t n = put_str(b, 0, sizeof b, "dpep run: ");
    n = put_str(b, n, sizeof b, sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : "signal");
    n = put_str(b, n, sizeof b, ": stopping");
    if (g_out_path) {
        char d[24];
        int k = 0;
        long v = (long)g_lines;
        do d[k++] = (char)('0' + v % 10); while ((v /= 10) > 0 && k < 20);
        n = put_str(b, n, sizeof b, "; ");
        while (k > 0 && n < sizeof b) b[n++] = d[--k];
        n = put_str(b, n, sizeof b, " finished requests are in ");
        n = put_str(b, n, sizeof b, g_out_path);
        n = put_str(b, n, sizeof b, " (rerun with --resume to serve the rest)");
    }
    n = put_str(b, n, sizeof b, "\n");
    ssize_t w = write(STDOUT_FILENO, b, n);
    (void)w;
}

static void on_signal(int sig)
{
    if (g_signal) { /* the second one: end now, the default way */
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    g_signal = sig;
    if (g_root) say_stopping(sig);
}

typedef struct saved_signals {
    struct sigaction term, intr;
} saved_signals;

static void signals_install(saved_signals *old)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    g_signal = 0;
    sigaction(SIGTERM, &sa, &old->term);
    sigaction(SIGINT, &sa, &old->intr);
}

static void signals_restore(const saved_signals *old)
{
    sigaction(SIGTERM, &old->term, NULL);
    sigaction(SIGINT, &old->intr, NULL);
}

static const char *signal_name(int sig)
{
    return sig == SIGTERM ? "SIGTERM" : sig == SIGINT ? "SIGINT" : "a signal";
}

/* A stage's local status, made STOPPED when a signal came: the agreement
 * after the stage then ends the run on every rank. */
static dpep_status or_stopped(dpep_status st)
{
    return st == DPEP_OK && g_signal ? DPEP_ERR_STOPPED : st;
}

/* Seconds between progress lines: live on a terminal, plain lines in logs. */
#define PROGRESS_TTY_S 0.25
#define PROGRESS_LOG_S 2.0

/* After a failed agreement: the ranks usually fail for the same reason (a
 * config or checkpoint problem every rank sees). Rank 0 keeps its messages;
 * another rank drops its own when its first message is rank 0's, so a
 * 96-rank job prints a shared problem once and a rank-specific one still
 * shows. Collective over the world. */
void serve_dedup_errors(serve_job *r, dpep_diag *diag)
{
    const dpep_world *w = r->w;
    char first[DPEP_DIAG_MSG] = "";
    if (w->rank == 0 && diag->n) snprintf(first, sizeof first, "%s", diag->item[0].msg);
    dpep_comm_watch_begin(r->c_world, "bcast(errors)", false);
    const int rc = MPI_Bcast(first, (int)sizeof first, MPI_CHAR, 0, dpep_comm_mpi(r->c_world));
    dpep_comm_watch_end(r->c_world);
    if (rc != MPI_SUCCESS) return;
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
    /* auto takes the GPU for every layout but the shm transport asked for
     * explicitly with EP or MoE-TP wider than one rank (shm moves host
     * rows); the same answer on every rank. An explicit cuda without the
     * CUDA engine, or with shm, is refused by the engine / moe/, naming
     * what. */
    const dpep_config *cfg = r->cfg;
    const bool one_wide = (comm_size_of(w->ep) == 1 && comm_size_of(w->moe_tp) == 1) ||
                          cfg->parallel.moe_a2a_backend == DPEP_A2A_ALLGATHER ||
                          cfg->parallel.moe_a2a_transport != DPEP_A2A_TRANSPORT_SHM;
    if (w->gpu >= 0 && want == DPEP_DEVICE_AUTO && !one_wide &&
        dpep_engine_ops_for(DPEP_DEVICE_CUDA) != NULL) {
        if (w->rank == 0)
            DPEP_INFO("runtime.device auto: CPU backend (parallel.moe_a2a_transport shm moves "
                      "host rows; auto, ipc, nccl or mpi run on GPUs)");
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

/* 1a. The routed experts of this node's EP ranks in one node-shared window
 * (runtime.node_experts), so that the engine's expert pool can share a
 * rank's routed expert products out among the node's ranks
 * (runtime/engine/engine_pool.h). The caller checked the configuration
 * (not off, the DP assist not off, attention-TP 1, EP over several ranks);
 * here: the CPU, routed experts, several EP ranks on this node. The same
 * bytes per node as private arenas. auto: without room in
 * /dev/shm each rank keeps its experts (a warning); on: that fails. On
 * success wo->expert_mem is this rank's segment. Collective over the EP
 * group (the same decision on every rank: config and layout). */
static dpep_status node_experts(serve_job *r, dpep_ckpt *ck, dpep_weights_opts *wo, dpep_diag *diag)
{
    const dpep_config *cfg = r->cfg;
    const dpep_world *w = r->w;
    const dpep_dp_assist_opt mode = cfg->runtime.node_experts;
    if (r->dev.kind != DPEP_DEVICE_CPU || r->m.n_routed == 0) return DPEP_OK;
    dpep_diag quiet;
    dpep_diag_init(&quiet);
    const bool valid = dpep_model_check_layout(&r->m, &w->layout, "", &quiet) == DPEP_OK;
    if (!valid) return DPEP_OK; /* the loader says why */
    MPI_Comm node = MPI_COMM_NULL;
    DPEP_CHECK_MPI(MPI_Comm_split_type(w->ep, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
    if (comm_size_of(node) < 2) {
        MPI_Comm_free(&node);
        return DPEP_OK;
    }
    dpep_status st = DPEP_OK;
    /* the DP assist's auto runs only when the node's ranks x threads fit
     * its CPUs (engine_assist_create): the window only where it runs */
    dpep_thread_plan tp;
    dpep_world_thread_plan(w, &tp);
    bool fits = false;
    DPEP_TRY_GOTO(dpep_engine_node_fits(node, tp.omp, &fits), st, out);
    if (!fits && cfg->runtime.dp_assist == DPEP_DPA_AUTO) goto out;
    uint64_t bytes = dpep_weights_expert_bytes(ck, &r->m, &w->layout, &w->me, wo);
    DPEP_CHECK_MPI_GOTO(MPI_Allreduce(MPI_IN_PLACE, &bytes, 1, MPI_UINT64_T, MPI_MAX, node), st, out);
    DPEP_TRY_GOTO(dpep_comm_create(node, "node_experts", DPEP_COMM_MPI, cfg->runtime.comm_timeout_s,
                                   &r->c_xnode), st, out);
    st = dpep_comm_shm_create(r->c_xnode, (size_t)bytes + DPEP_ENGINE_NODE_EXPERTS_SLACK, &r->xnode);
    if (st != DPEP_OK) {
        dpep_comm_destroy(r->c_xnode);
        r->c_xnode = NULL;
        if (st == DPEP_ERR_NOMEM && mode == DPEP_DPA_AUTO) {
            if (w->rank == 0)
                DPEP_WARN("runtime.node_experts auto: no room for the routed experts in node-shared "
                          "memory (%.1f MiB per rank): each rank holds its own", (double)bytes / 1048576.0);
            st = DPEP_OK;
        } else {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "rank %d: runtime.node_experts: the node-shared window "
                          "for %.1f MiB of routed experts per rank: %s", w->rank,
                          (double)bytes / 1048576.0, dpep_status_string(st));
        }
        goto out;
    }
    /* (comm/ backs the segment with 2 MiB pages where the kernel can) */
    wo->expert_mem = dpep_engine_node_experts_at(r->xnode, dpep_comm_rank(r->c_xnode));
    wo->expert_mem_bytes = (size_t)bytes;
out:
    MPI_Comm_free(&node);
    return st;
}

void serve_job_unload_model(serve_job *r)
{
    dpep_weights_free(&r->wts);
    dpep_comm_shm_destroy(r->xnode);
    r->xnode = NULL;
    dpep_comm_destroy(r->c_xnode);
    r->c_xnode = NULL;
}

/* 1. The device, the model and this rank's weights, agreed. Every rank
 * reports its own errors. */
dpep_status serve_job_load_model(serve_job *r, dpep_diag *diag)
{
    dpep_ckpt *ck = NULL;
    dpep_status st = pick_device(r, diag);
    if (st == DPEP_OK) st = dpep_model_config_load(r->cfg->model.path, &r->m, diag);
    if (st == DPEP_OK) st = dpep_ckpt_open(r->cfg->model.path, &ck, diag);
    dpep_weights_opts wo = {.dtype = r->cfg->model.dtype};
    /* the node's expert window is collective over the EP group: made only
     * once every rank got this far (agreed), and watched, so that a rank
     * stopped before it is named instead of hanging its peers */
    const dpep_config *cfg = r->cfg;
    if (cfg->runtime.node_experts != DPEP_DPA_OFF && cfg->runtime.dp_assist != DPEP_DPA_OFF &&
        r->w->layout.attn_tp == 1 && comm_size_of(r->w->ep) > 1) {
        const dpep_status all = dpep_comm_agree(r->c_world, or_stopped(st), NULL, NULL);
        if (all != DPEP_OK) {
            dpep_ckpt_close(ck);
            serve_dedup_errors(r, diag);
            return all;
        }
        dpep_comm_watch_begin(r->c_world, "node_experts", true);
        st = node_experts(r, ck, &wo, diag);
        dpep_comm_watch_end(r->c_world);
    }
    if (st == DPEP_OK) {
        st = dpep_weights_load_with(ck, &r->m, &r->w->layout, &r->w->me, &r->dev, &wo, &r->wts,
                                    diag);
    }
    dpep_ckpt_close(ck);
    dpep_status all = dpep_comm_agree(r->c_world, or_stopped(st), NULL, NULL);
    if (all != DPEP_OK) serve_dedup_errors(r, diag);
    return all;
}

/* 2. Rank 0: workload, --resume and assignment; everyone: the broadcast
 * copy. Rank 0 may read a large workload file while the others wait: a
 * patient wait for the watchdog. */
static dpep_status intake(serve_job *r, dpep_diag *diag)
{
    dpep_world *w = r->w;
    int64_t hdr[3] = {0, 0, 0}; /* status, n, tokens */
    dpep_workload wl;
    memset(&wl, 0, sizeof wl);
    if (w->rank == 0) {
        dpep_status st = or_stopped(dpep_workload_build(r->cfg, r->m.vocab, r->groups, &wl, diag));
        if (st != DPEP_OK) {
            hdr[0] = st;
        } else {
            if (wl.bad_lines)
                DPEP_WARN("workload: %d bad line%s skipped (named above)", wl.bad_lines,
                          wl.bad_lines == 1 ? "" : "s");
            dpep_diag_print(diag, stderr);
            dpep_diag_init(diag);
            r->bad_lines = wl.bad_lines;
            hdr[1] = wl.n;
            hdr[2] = (int64_t)wl.n_tokens;
        }
    }
    dpep_comm_watch_begin(r->c_world, "bcast(workload size)", true);
    int rc = MPI_Bcast(hdr, 3, MPI_INT64_T, 0, dpep_comm_mpi(r->c_world));
    dpep_comm_watch_end(r->c_world);
    if (rc != MPI_SUCCESS) {
        dpep_check_fail_(__FILE__, __LINE__, "MPI_Bcast(workload size)", dpep_mpi_error_string(rc));
        dpep_workload_free(&wl);
        return DPEP_ERR_MPI;
    }
    if (hdr[0] != DPEP_OK) {
        dpep_workload_free(&wl);
        return (dpep_status)hdr[0];
    }
    r->n_req = hdr[1];
    r->req = calloc((size_t)(hdr[1] > 0 ? hdr[1] : 1), sizeof *r->req);
    r->meta = calloc((size_t)(hdr[1] > 0 ? hdr[1] : 1), sizeof *r->meta);
    r->toks = malloc(sizeof(int32_t) * (size_t)(hdr[2] > 0 ? hdr[2] : 1));
    dpep_status st = r->req && r->meta && r->toks ? DPEP_OK : DPEP_ERR_NOMEM;
    if (w->rank == 0 && st == DPEP_OK) {
        int64_t off = 0;
        for (int i = 0; i < wl.n; i++) {
            r->req[i] = wl.req[i];
            r->req[i].index = i;
            r->meta[i].input_len = wl.req[i].input_len;
            snprintf(r->meta[i].id, sizeof r->meta[i].id, "%s", wl.req[i].id);
            memcpy(r->toks + off, wl.req[i].input_ids, sizeof(int32_t) * (size_t)wl.req[i].input_len);
            off += wl.req[i].input_len;
        }
        if (r->o->resume && r->o->output)
            st = serve_sink_resume(&r->sink, r->o->output, r->meta, r->n_req, diag);
        for (int64_t i = 0; i < r->n_req; i++) r->n_resumed += r->meta[i].resumed != 0;
        /* offline the whole workload is assigned before the first step: the
         * cache views are not bounded by the pools (not sized yet) */
        dpep_assigner_params ap = {.method = r->cfg->runtime.load_balance_method,
                                   .groups = r->groups, .page_size = (int)r->cfg->runtime.page_size,
                                   .cache_threshold = DPEP_ASSIGN_CACHE_THRESHOLD,
                                   .balance_abs = DPEP_ASSIGN_BALANCE_ABS,
                                   .balance_rel = DPEP_ASSIGN_BALANCE_REL};
        dpep_assigner *as = NULL;
        if (st == DPEP_OK) st = dpep_assigner_create(&ap, &as);
        for (int i = 0; st == DPEP_OK && i < wl.n; i++) {
            if (r->meta[i].resumed) continue;
            int g = dpep_assigner_pick(as, &wl.req[i], NULL);
            r->meta[i].group = g < 0 || g >= r->groups ? 0 : g;
        }
        dpep_assigner_destroy(as);
        st = or_stopped(st);
    }
    dpep_workload_free(&wl);
    DPEP_TRY(dpep_comm_agree(r->c_world, st, NULL, NULL));
    /* dpep_request holds a pointer: it travels as bytes and is re-pointed */
    DPEP_TRY(dpep_comm_bcast(r->c_world, r->req, r->n_req * (int64_t)sizeof *r->req, DPEP_COMM_U8, 0));
    DPEP_TRY(dpep_comm_bcast(r->c_world, r->meta, r->n_req * (int64_t)sizeof *r->meta, DPEP_COMM_U8, 0));
    DPEP_TRY(dpep_comm_bcast(r->c_world, r->toks, hdr[2], DPEP_COMM_I32, 0));
    int64_t off = 0;
    for (int64_t i = 0; i < r->n_req; i++) {
        r->req[i].input_ids = r->toks + off;
        off += r->req[i].input_len;
    }
    return DPEP_OK;
}

dpep_wtype serve_job_kv_type(const serve_job *r)
{
    return dpep_kv_cache_type(r->cfg->runtime.kv_cache_dtype, r->dev.kind, r->wts.mat_type);
}

dpep_status serve_job_size_kv(serve_job *r, int64_t max_kv_tokens)
{
    const dpep_config *cfg = r->cfg;
    const int page = (int)cfg->runtime.page_size;
    const double tok_bytes = dpep_model_kv_bytes_per_token(&r->m, (double)dpep_wtype_size(serve_job_kv_type(r)));
    const int64_t pages_per_seq = (r->max_ctx + page - 1) / page;
    double need = (double)r->max_seqs * (double)pages_per_seq * page * tok_bytes;
    /* ranks sharing a GPU (runtime.ranks_per_gpu) split its share evenly */
    const double rpg = (double)(cfg->runtime.ranks_per_gpu > 1 ? cfg->runtime.ranks_per_gpu : 1);
    double mem = cfg->launch.gpu_memory_gb * 1e9 * cfg->runtime.mem_fraction_static / rpg -
                 (double)r->wts.arena_bytes;
    if (r->dev.kind == DPEP_DEVICE_CUDA) {
        /* The plan above trusts launch.gpu_memory_gb; the GPU may have less
         * (or be shared). The weights are on it now, so what is free minus
         * the part mem_fraction_static keeps back (activations, MoE buffers,
         * attention scratch, cuBLAS workspaces, made after this) is what the
         * KV pool can really take. */
        size_t fr = 0, tot = 0;
        if (dpep_cuda_mem_info(r->dev.ordinal, &fr, &tot) == DPEP_OK) {
            /* shared: the peers load at the same time, so what is free
             * now says little; this rank's share of the total instead */
            const double real =
                rpg > 1 ? (double)tot * cfg->runtime.mem_fraction_static / rpg -
                              (double)r->wts.arena_bytes
                        : (double)fr - (double)tot * (1.0 - cfg->runtime.mem_fraction_static);
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
    dpep_comm_watch_begin(r->c_world, "allreduce(kv budget)", false);
    int rc = MPI_Allreduce(MPI_IN_PLACE, &budget, 1, MPI_DOUBLE, MPI_MIN, dpep_comm_mpi(r->c_world));
    dpep_comm_watch_end(r->c_world);
    DPEP_CHECK_MPI(rc);
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
        if (r->meta[i].group == r->my_group && !r->meta[i].resumed) n_mine++;
    }
    if (max_ctx > r->m.max_pos) max_ctx = r->m.max_pos;
    int max_running = (int)cfg->runtime.max_running_requests;
    int max_seqs = max_running < n_mine ? max_running : (n_mine > 0 ? (int)n_mine : 1);
    int chunk = (int)cfg->runtime.chunked_prefill_size;
    dpep_comm_watch_begin(r->c_world, "allreduce(max seqs)", false);
    int rc = MPI_Allreduce(MPI_IN_PLACE, &max_seqs, 1, MPI_INT, MPI_MAX, dpep_comm_mpi(r->c_world));
    dpep_comm_watch_end(r->c_world);
    DPEP_CHECK_MPI(rc);
    r->max_ctx = max_ctx;
    r->max_seqs = max_seqs;
    r->step_tokens = chunk > max_running ? chunk : max_running;
    return serve_job_size_kv(r, r->o->max_kv_tokens);
}

/* Where the GPUs of a group are: host name + PCI bus id of each rank's GPU,
 * gathered over `g` (collective). *a, *b: the first two ranks sharing one
 * GPU (-1: none); *one_node: every rank on rank 0's host; *first_id: the
 * shared GPU's id when a >= 0. */
enum { GPU_ID = 320 };
static dpep_status group_gpus(serve_job *r, MPI_Comm g, int *a, int *b, bool *one_node,
                              char *first_id)
{
    const dpep_world *w = r->w;
    const int n = comm_size_of(g);
    *a = *b = -1;
    *one_node = true;
    first_id[0] = '\0';
    char mine[GPU_ID];
    char bus[64] = "?";
    if (dpep_cuda_pci_bus_id(r->dev.ordinal, bus, sizeof bus) != DPEP_OK)
        snprintf(bus, sizeof bus, "ordinal %d", r->dev.ordinal);
    memset(mine, 0, sizeof mine);
    snprintf(mine, sizeof mine, "%s|%s", w->host, bus);
    char *all = calloc((size_t)n, GPU_ID);
    if (!all) return DPEP_ERR_NOMEM;
    /* (watched by the caller's bracket over the world: every rank makes
     * it, the ranks of one-rank groups included) */
    int rc = MPI_Allgather(mine, GPU_ID, MPI_CHAR, all, GPU_ID, MPI_CHAR, g);
    if (rc != MPI_SUCCESS) {
        free(all);
        DPEP_CHECK_MPI(rc);
    }
    for (int i = 0; i < n; i++) {
        const char *hi = all + (size_t)i * GPU_ID, *bar = strchr(hi, '|');
        const size_t hl = bar ? (size_t)(bar - hi) : strlen(hi);
        if (strncmp(hi, all, hl) != 0 || all[hl] != '|') *one_node = false;
        for (int j = i + 1; j < n && *a < 0; j++)
            if (strcmp(hi, all + (size_t)j * GPU_ID) == 0) {
                *a = i;
                *b = j;
                snprintf(first_id, GPU_ID, "%s", hi);
            }
    }
    free(all);
    return DPEP_OK;
}

/* DPEP_TEST_DEVICE_COMMS=1 (tests only, like DPEP_FAULT): on the CPU, the
 * comms and MoE transports a GPU job takes — mpi-staged TP and allgather
 * comms on the CPU device, the MoE layer's device transports (ipc for
 * auto, mpi-staged for mpi; dpep_moe_test_device_rows) — so that
 * tests/engine/layouts.sh --device-comms runs the GPU engine's multi-rank
 * path, its kernels excepted, against the goldens. */
static bool test_device_comms(void)
{
    const char *v = getenv("DPEP_TEST_DEVICE_COMMS");
    return v && strcmp(v, "1") == 0;
}

/* The backend of a TP group (attention-TP, MoE-TP, dense) of rank r's
 * layout: MPI on the CPU; on GPUs NCCL when its ranks drive distinct GPUs
 * (and the build has NCCL), else mpi-staged (device rows through host
 * memory). Collective over g when it has more than one rank. */
static dpep_status pick_tp_backend(serve_job *r, MPI_Comm g, dpep_comm_backend *out)
{
    *out = DPEP_COMM_MPI;
    if (r->dev.kind != DPEP_DEVICE_CUDA || comm_size_of(g) < 2) {
        if (test_device_comms() && comm_size_of(g) > 1) *out = DPEP_COMM_STAGED;
        return DPEP_OK;
    }
    int a = -1, b = -1;
    bool one_node = true;
    char id[GPU_ID];
    DPEP_TRY(group_gpus(r, g, &a, &b, &one_node, id));
    *out = a < 0 && dpep_comm_backend_available(DPEP_COMM_NCCL) ? DPEP_COMM_NCCL
                                                                : DPEP_COMM_STAGED;
    return DPEP_OK;
}

/* The EP comm's backend (parallel.moe_a2a_transport on GPUs): NCCL for
 * nccl, and for auto when the EP group spans nodes and every EP rank drives
 * a GPU of its own; else MPI: ipc (auto inside a node) sets up its CUDA IPC
 * segments over it, mpi stages the rows through host memory. nccl with
 * ranks sharing a GPU (runtime.ranks_per_gpu > 1), which NCCL refuses, is a
 * config error naming both ranks. The same answer on every EP rank. */
static dpep_status pick_ep_backend(serve_job *r, dpep_comm_backend *out, dpep_diag *diag)
{
    const dpep_world *w = r->w;
    const dpep_config *cfg = r->cfg;
    const dpep_a2a_transport tr = cfg->parallel.moe_a2a_transport;
    *out = DPEP_COMM_MPI;
    /* the allgather backend gathers and reduce-scatters device rows on the
     * EP comm itself: a device comm, as a TP group's */
    if (cfg->parallel.moe_a2a_backend == DPEP_A2A_ALLGATHER) return pick_tp_backend(r, w->ep, out);
    if (r->dev.kind != DPEP_DEVICE_CUDA || comm_size_of(w->ep) < 2 ||
        (tr != DPEP_A2A_TRANSPORT_AUTO && tr != DPEP_A2A_TRANSPORT_NCCL))
        return DPEP_OK;
    int a = -1, b = -1;
    bool one_node = true;
    char id[GPU_ID];
    DPEP_TRY(group_gpus(r, w->ep, &a, &b, &one_node, id));
    dpep_status st = DPEP_OK;
    if (tr == DPEP_A2A_TRANSPORT_AUTO && one_node) {
        /* ipc over an MPI comm */
    } else if (a < 0 && dpep_comm_backend_available(DPEP_COMM_NCCL)) {
        *out = DPEP_COMM_NCCL;
    } else if (tr == DPEP_A2A_TRANSPORT_NCCL) {
        char where[4300];
        dpep_config_where(cfg, dpep_config_option_find("parallel.moe_a2a_transport"), where,
                          sizeof where);
        if (a >= 0)
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: parallel.moe_a2a_transport: nccl, but EP "
                          "ranks %d and %d share one GPU (%s; runtime.ranks_per_gpu %lld) and "
                          "NCCL runs one rank per GPU (expected auto, ipc or mpi)", where, a, b,
                          id, (long long)cfg->runtime.ranks_per_gpu);
        else
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: parallel.moe_a2a_transport: nccl, but this "
                          "build has no NCCL (expected auto or mpi)", where);
        st = DPEP_ERR_INVALID;
    }
    if (w->rank == 0 && st == DPEP_OK && !(tr == DPEP_A2A_TRANSPORT_AUTO && one_node))
        DPEP_INFO("moe: EP exchange between GPUs over %s (%s)",
                  *out == DPEP_COMM_NCCL ? "NCCL" : "MPI through host memory",
                  *out == DPEP_COMM_NCCL ? "the EP group spans nodes, every EP rank has a GPU "
                                           "of its own"
                  : a >= 0               ? "EP ranks share a GPU: NCCL runs one rank per GPU"
                                         : "no NCCL in this build");
    return st;
}

dpep_status serve_job_create_engine(serve_job *r, dpep_diag *diag)
{
    dpep_world *w = r->w;
    const dpep_config *cfg = r->cfg;
    dpep_status st = DPEP_OK;
    dpep_comm_backend ep_backend = DPEP_COMM_MPI, atp_backend = DPEP_COMM_MPI,
                      mtp_backend = DPEP_COMM_MPI, dn_backend = DPEP_COMM_MPI;
    {
        /* one device kind on every rank (runtime.device auto decides per
         * node): the group set-ups below are collective on GPUs only */
        int kind[2] = {(int)r->dev.kind, -(int)r->dev.kind};
        dpep_comm_watch_begin(r->c_world, "allreduce(device kind)", false);
        int rc = MPI_Allreduce(MPI_IN_PLACE, kind, 2, MPI_INT, MPI_MAX, dpep_comm_mpi(r->c_world));
        dpep_comm_watch_end(r->c_world);
        DPEP_CHECK_MPI(rc);
        if (kind[0] != -kind[1]) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "rank %d (%s): runtime.device: some ranks run "
                          "on a GPU and some on the CPU (runtime.device auto found GPUs on some "
                          "nodes only; set runtime.device cpu or cuda)", w->rank, w->host);
            return DPEP_ERR_INVALID;
        }
    }
    if (test_device_comms()) dpep_moe_test_device_rows(true);
    /* each group's GPUs, gathered over the group: one bracket on the world
     * around all of them, so that every rank makes the same watched calls */
    dpep_comm_watch_begin(r->c_world, "gather(group gpus)", false);
    /* (all four made even after a refusal: the groups' collectives match) */
    st = pick_ep_backend(r, &ep_backend, diag);
    dpep_status st2 = pick_tp_backend(r, w->attn_tp, &atp_backend);
    if (st == DPEP_OK) st = st2;
    st2 = pick_tp_backend(r, w->moe_tp, &mtp_backend);
    if (st == DPEP_OK) st = st2;
    st2 = pick_tp_backend(r, w->dense, &dn_backend);
    if (st == DPEP_OK) st = st2;
    dpep_comm_watch_end(r->c_world);
    if (st == DPEP_OK) {
        const char *pad_test = getenv("DPEP_TEST_PAD_DECODE");
        dpep_engine_params ep = {.m = &r->m, .w = &r->wts, .layout = &w->layout, .me = &w->me,
                                 .attn_tp = w->attn_tp, .ep = w->ep, .moe_tp = w->moe_tp,
                                 .dense = w->dense, .backend = cfg->parallel.moe_a2a_backend,
                                 .transport = cfg->parallel.moe_a2a_transport,
                                 .ep_backend = ep_backend, .attn_tp_backend = atp_backend,
                                 .moe_tp_backend = mtp_backend, .dense_backend = dn_backend,
                                 .comm_timeout_s = cfg->runtime.comm_timeout_s,
                                 .max_tokens = r->step_tokens, .max_ctx = r->max_ctx,
                                 .max_seqs = r->max_seqs, .page_size = (int)cfg->runtime.page_size,
                                 .kv_budget_bytes = r->kv_budget, .kv_dtype = serve_job_kv_type(r),
                                 .device = &r->dev,
                                 .lm_head = cfg->runtime.lm_head == DPEP_LMH_VOCAB ? DPEP_LM_HEAD_VOCAB
                                            : cfg->runtime.lm_head == DPEP_LMH_REPLICATED
                                                ? DPEP_LM_HEAD_REPLICATED
                                                : DPEP_LM_HEAD_AUTO,
                                 .cuda_graph_max_bs = cfg->runtime.disable_cuda_graph
                                                          ? 0
                                                          : (int)cfg->runtime.cuda_graph_max_bs,
                                 /* tests: the graphs' decode padding on the CPU */
                                 .pad_decode = pad_test && strcmp(pad_test, "1") == 0,
                                 .dp_assist = cfg->runtime.dp_assist == DPEP_DPA_OFF ? DPEP_DP_ASSIST_OFF
                                              : cfg->runtime.dp_assist == DPEP_DPA_ON
                                                  ? DPEP_DP_ASSIST_ON
                                                  : DPEP_DP_ASSIST_AUTO,
                                 .node_experts = r->xnode};
        /* the engine's communicators over subgroups (EP, attention-TP, ...)
         * and its shared windows are made inside: watched as one patient op
         * of the world, so a rank stopped here is named */
        dpep_comm_watch_begin(r->c_world, "engine_create", true);
        dpep_fault("engine", r->w->rank);
        st = dpep_engine_create(&ep, &r->e, diag);
        dpep_comm_watch_end(r->c_world);
    }
    dpep_status all = dpep_comm_agree(r->c_world, or_stopped(st), NULL, NULL);
    if (all == DPEP_OK && cfg->runtime.warmup_tokens > 0) {
        /* every rank's engine exists: one synthetic prefill + decode step */
        const int64_t n = cfg->runtime.warmup_tokens;
        const double t0 = dpep_clock_s();
        dpep_comm_watch_begin(r->c_world, "engine_warmup", true);
        st = dpep_engine_warmup(r->e, (int)n); /* the engine clamps it to a step */
        dpep_comm_watch_end(r->c_world);
        all = dpep_comm_agree(r->c_world, or_stopped(st), NULL, NULL);
        DPEP_DEBUG("engine warm-up (runtime.warmup_tokens %lld): %.3f s", (long long)n, dpep_clock_s() - t0);
    }
    if (all != DPEP_OK) serve_dedup_errors(r, diag);
    return all;
}

static int lm_head_group(const dpep_engine *e)
{
    int g = 1;
    return dpep_engine_lm_head(e, &g) == DPEP_LM_HEAD_VOCAB ? g : 1;
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
           serve_transport_desc(tr));
    const int lm_group = lm_head_group(r->e);
    if (lm_group > 1)
        printf("dpep run: lm_head vocabulary-parallel over the EP group (%d ranks, %d tokens of "
               "the vocabulary each; runtime.lm_head %s)\n", lm_group,
               (r->m.vocab + lm_group - 1) / lm_group,
               r->cfg->runtime.lm_head == DPEP_LMH_AUTO ? "auto" : "vocab");
    fflush(stdout);
}

/* The source of an instance stops it: every request of the instance not
 * done yet is aborted at the next step. */
static void abort_instance(serve_job *r)
{
    const dpep_world *w = r->w;
    if (w->me.instance_rank != 0 || !r->s || r->inst_finished) return;
    (void)dpep_sched_abort_all(r->s);
}

/* After each step and while waiting at the end: a signal here asks rank 0
 * to stop; rank 0 (asked, or its output failing) says so once and tells
 * every instance source; a source told aborts its instance. */
static void check_stop(serve_job *r)
{
    serve_results *res = &r->res;
    const bool root = r->w->rank == 0;
    if (g_signal) {
        serve_results_ask_stop(res, g_signal);
        if (root && !r->stopped_by) r->stopped_by = signal_name(g_signal);
    }
    if (root && r->sink.werr && !res->stop_asked) {
        res->stop_asked = true;
        r->stopped_by = "a write error on --output";
    }
    if (!res->stop_asked || r->stopping) return;
    r->stopping = true;
    if (root) {
        const bool said = g_signal != 0; /* the handler wrote its line */
        if (!r->stopped_by) {
            snprintf(r->stop_why, sizeof r->stop_why, "%s to rank %d", signal_name(res->stop_sig),
                     res->stop_from);
            r->stopped_by = r->stop_why;
        }
        if (!said)
            printf("dpep run: %s: stopping (no new requests; what runs is aborted); %lld of %lld "
                   "requests done so far%s%s\n", r->stopped_by,
                   (long long)(r->sink.n_records + r->n_resumed), (long long)r->n_req,
                   r->o->output ? ", written to " : "", r->o->output ? r->o->output : "");
        fflush(stdout);
        serve_results_send_stop(res, r->sources, r->n_sources);
    }
    abort_instance(r);
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
    /* its instance and attention-TP comms are made inside (subgroups no comm
     * watches yet): one patient op of the world */
    dpep_comm_watch_begin(r->c_world, "sched_create", true);
    dpep_fault("sched", w->rank);
    dpep_status sc = dpep_sched_create(&sp, &r->s);
    dpep_comm_watch_end(r->c_world);
    DPEP_TRY(sc);
    if (w->me.instance_rank == 0) {
        for (int64_t i = 0; i < r->n_req; i++)
            if (r->meta[i].group / L->attn_dp == w->me.instance && !r->meta[i].resumed)
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
    r->t0 = t0;
    double last = t0;
    dpep_sched_step_info info;
    do {
        DPEP_TRY(dpep_sched_step(r->s, &info));
        if (info.ran && dpep_fault_armed()) {
            char pt[40];
            snprintf(pt, sizeof pt, "step:%lld", (long long)info.steps);
            dpep_fault(pt, w->rank);
            dpep_fault("step", w->rank); /* every step (e.g. sleep:MS) */
        }
        serve_results_pump(&r->res);
        if (w->rank == 0) g_lines = (sig_atomic_t)(r->sink.n_written + r->sink.n_kept);
        if (info.finished) r->inst_finished = true;
        check_stop(r);
        const double tn = dpep_clock_s();
        if (w->rank == 0 && !r->o->quiet && info.ran && tn - last >= (tty ? PROGRESS_TTY_S : PROGRESS_LOG_S)) {
            last = tn;
            const double el = tn - t0;
            const long long done = (long long)r->sink.n_records, all = (long long)(r->n_req - r->n_resumed);
            if (tty)
                printf("\r  step %lld  requests %lld/%lld done  %.0f out tok/s (instance 0)  ",
                       (long long)info.steps, done, all, info.out_tokens / el);
            else
                printf("progress: step %lld, requests %lld/%lld done, %lld output tokens of "
                       "instance 0, %.0f tok/s\n", (long long)info.steps, done, all,
                       (long long)info.out_tokens, info.out_tokens / el);
            fflush(stdout);
        }
    } while (!info.finished);
    r->wall_s = dpep_clock_s() - t0;
    if (tty && w->rank == 0) printf("\n");
    return r->res.st;
}

/* 4b. The end of the run: this rank's last records and end marker, then a
 * patient barrier (the slowest instance may serve for long; rank 0 keeps
 * writing what arrives and any rank may still be asked to stop), then
 * rank 0 takes every end marker. */
static void finish_poll(void *user)
{
    serve_job *r = user;
    serve_results_pump(&r->res);
    if (r->w->rank == 0) g_lines = (sig_atomic_t)(r->sink.n_written + r->sink.n_kept);
    check_stop(r);
}

static dpep_status finish(serve_job *r)
{
    serve_results_end(&r->res);
    DPEP_TRY(dpep_comm_wait_all(r->c_world, "run end", finish_poll, r));
    int stop_sent = r->w->rank == 0 && r->res.stop_sent;
    dpep_comm_watch_begin(r->c_world, "bcast(stop sent)", false);
    int rc = MPI_Bcast(&stop_sent, 1, MPI_INT, 0, dpep_comm_mpi(r->c_world));
    dpep_comm_watch_end(r->c_world);
    DPEP_CHECK_MPI(rc);
    dpep_fault("results", r->w->rank);
    return serve_results_complete(&r->res, stop_sent != 0, r->w->me.instance_rank == 0);
}

/* 5. Summary on rank 0 and the run's outcome (every rank returns it). */
static dpep_status report(serve_job *r)
{
    dpep_world *w = r->w;
    dpep_status st = DPEP_OK;
    dpep_sched_stats ss;
    dpep_sched_get_stats(r->s, &ss);
    dpep_attn_kv *kv = dpep_engine_kv(r->e);
    serve_rank_facts mine = {.group = r->my_group, .leader = dpep_sched_is_leader(r->s),
                             .requests = ss.requests, .input_tokens = ss.input_tokens,
                             .output_tokens = ss.output_tokens, .kv_capacity = ss.kv_capacity,
                             .kv_peak = ss.kv_peak, .kv_pool = (int64_t)dpep_attn_kv_pool_bytes(kv),
                             .kv_tok_bytes = (int64_t)dpep_attn_kv_bytes_per_token(kv),
                             .steps = ss.steps, .prefill_s = ss.prefill_s, .decode_s = ss.decode_s,
                             .prefill_tokens = (double)ss.prefill_tokens,
                             .decode_tokens = (double)ss.decode_tokens,
                             .decode_steps = ss.decode_steps,
                             .decode_wbytes = ss.decode_weight_bytes,
                             .step_faults = ss.step_faults, .step_faults_max = ss.step_faults_max,
                             .steps_faulting = ss.steps_faulting,
                             .cached_tokens = ss.cached_tokens, .evicted_tokens = ss.evicted_tokens};
    (void)dpep_engine_assist(r->e, &mine.assist);
    serve_rank_facts *facts = w->rank == 0 ? calloc((size_t)w->size, sizeof *facts) : NULL;
    const size_t nl = (size_t)r->m.n_layers * (size_t)(r->m.n_routed > 0 ? r->m.n_routed : 1);
    int64_t *load = calloc(nl, sizeof(int64_t));
    if ((w->rank == 0 && !facts) || !load) st = DPEP_ERR_NOMEM;
    /* a rank without memory still joins: the agreement below reports it */
    st = dpep_comm_agree(r->c_world, st, NULL, NULL);
    MPI_Comm cw = dpep_comm_mpi(r->c_world);
    if (st == DPEP_OK) {
        dpep_comm_watch_begin(r->c_world, "gather(summary)", false);
        int rc = MPI_Gather(&mine, (int)sizeof mine, MPI_BYTE, facts, (int)sizeof mine, MPI_BYTE, 0, cw);
        if (rc == MPI_SUCCESS && r->m.n_routed > 0)
            rc = MPI_Reduce(dpep_engine_expert_load(r->e), load, (int)nl, MPI_INT64_T, MPI_SUM, 0, cw);
        dpep_comm_watch_end(r->c_world);
        if (rc != MPI_SUCCESS) {
            dpep_check_fail_(__FILE__, __LINE__, "MPI_Gather/MPI_Reduce(summary)",
                             dpep_mpi_error_string(rc));
            st = DPEP_ERR_MPI;
        }
    }
    dpep_fault("report", w->rank);
    int outcome = st;
    if (st == DPEP_OK && w->rank == 0) {
        serve_sink *k = &r->sink;
        const bool in_order = !r->stopping && !k->werr;
        dpep_status s_out = serve_sink_finish(k, in_order);
        serve_gathered g;
        dpep_status s_rows = serve_sink_rows(k, &g);
        if (s_rows == DPEP_OK) {
            char comms[256];
            dpep_engine_comms(r->e, comms, sizeof comms);
            serve_summary_in in = {.w = w, .cfg = r->cfg, .m = &r->m,
                                   .moe_transport = dpep_engine_moe_transport(r->e),
                                   .comms = comms, .e = r->e,
                                   .lm_head_group = lm_head_group(r->e),
                                   .wts = &r->wts, .threads = r->threads,
                                   .kv_dtype = serve_job_kv_type(r),
                                   .meta = r->meta, .g = &g, .sink = k, .output = r->o->output,
                                   .bad_lines = r->bad_lines, .stopped_by = r->stopped_by,
                                   .facts = facts, .expert_load = load, .n_requests = r->n_req,
                                   .groups = r->groups, .wall_s = r->wall_s, .steps = ss.steps};
            s_rows = serve_print_summary(&in, r->o->summary_json);
            serve_gathered_free(&g);
        }
        const int64_t served = k->n_records - k->n_failed - k->n_aborted;
        const int64_t not_served = r->n_req - r->n_resumed - served;
        if (s_out != DPEP_OK) outcome = s_out;
        else if (r->res.st != DPEP_OK || k->st != DPEP_OK) outcome = r->res.st != DPEP_OK ? r->res.st : k->st;
        else if (r->stopping) outcome = DPEP_ERR_STOPPED;
        else if (s_rows != DPEP_OK) outcome = s_rows;
        else if (not_served > 0 || r->bad_lines > 0) outcome = DPEP_ERR_INCOMPLETE;
        if (r->stopping && !k->werr)
            printf("dpep run: stopped by %s after %.1f s: %lld of %lld requests served%s%s%s; "
                   "%lld not served%s\n", r->stopped_by ? r->stopped_by : "a signal",
                   dpep_clock_s() - r->t0, (long long)(served + r->n_resumed), (long long)r->n_req,
                   r->o->output ? " and written to " : "", r->o->output ? r->o->output : "",
                   r->n_resumed ? " (with the lines kept by --resume)" : "",
                   (long long)not_served,
                   r->o->output ? ": rerun the same command with --resume to serve them" : "");
        else if (outcome == DPEP_ERR_INCOMPLETE)
            printf("dpep run: not every request was served: %lld failed, %lld not served, %d "
                   "workload line%s skipped (exit code 3)\n", (long long)k->n_failed,
                   (long long)(not_served - k->n_failed), r->bad_lines, r->bad_lines == 1 ? "" : "s");
        fflush(stdout);
    }
    dpep_comm_watch_begin(r->c_world, "bcast(outcome)", false);
    int rc = MPI_Bcast(&outcome, 1, MPI_INT, 0, dpep_comm_mpi(r->c_world));
    dpep_comm_watch_end(r->c_world);
    if (rc != MPI_SUCCESS) outcome = DPEP_ERR_MPI;
    free(facts);
    free(load);
    return (dpep_status)outcome;
}

/* Every instance source's world rank (STOP goes to them). */
static dpep_status find_sources(serve_job *r)
{
    const dpep_world *w = r->w;
    r->sources = malloc(sizeof(int) * (size_t)w->size);
    if (!r->sources) return DPEP_ERR_NOMEM;
    for (int p = 0; p < w->size; p++) {
        dpep_rank_info ri;
        dpep_layout_rank(&w->layout, p, &ri);
        if (ri.instance_rank == 0) r->sources[r->n_sources++] = p;
    }
    return DPEP_OK;
}

dpep_status dpep_serve_offline(dpep_world *w, const dpep_config *cfg, const dpep_run_opts *o,
                               dpep_diag *diag)
{
    serve_job r;
    memset(&r, 0, sizeof r);
    r.w = w;
    r.cfg = cfg;
    r.o = o;
    r.res.chan = MPI_COMM_NULL;
    const dpep_layout *L = &w->layout;
    r.groups = L->n_instances * L->attn_dp;
    r.my_group = w->me.instance * L->attn_dp + w->me.attn_dp_rank;
    saved_signals old;
    g_root = w->rank == 0;
    g_out_path = o->output;
    g_lines = 0;
    signals_install(&old);
    dpep_thread_plan tp;
    dpep_world_thread_plan(w, &tp);
    r.threads = tp.omp;
    dpep_status st = dpep_comm_create(w->world, "world", DPEP_COMM_MPI, cfg->runtime.comm_timeout_s,
                                      &r.c_world);
    if (st == DPEP_OK) {
        /* an unwritable --output is found before anything is loaded */
        dpep_status s0 = w->rank == 0 ? serve_sink_check(o->output, diag) : DPEP_OK;
        if (s0 == DPEP_OK) s0 = find_sources(&r);
        st = dpep_comm_agree(r.c_world, s0, NULL, NULL);
    }
    if (st == DPEP_OK) {
        dpep_fault("model", w->rank);
        st = serve_job_load_model(&r, diag);
    }
    if (st == DPEP_OK) {
        dpep_fault("intake", w->rank);
        st = intake(&r, diag);
    }
    if (st == DPEP_OK) st = size_engine(&r);
    if (st == DPEP_OK) st = serve_job_create_engine(&r, diag);
    if (st == DPEP_OK) {
        dpep_comm_watch_begin(r.c_world, "comm_dup(results)", false);
        dpep_status s0 = serve_results_init(&r.res, w->world, &r.sink);
        dpep_comm_watch_end(r.c_world);
        if (s0 == DPEP_OK && w->rank == 0) s0 = serve_sink_start(&r.sink, o->output, r.meta, r.n_req);
        st = dpep_comm_agree(r.c_world, or_stopped(s0), NULL, NULL);
    }
    if (st == DPEP_OK) {
        print_start(&r);
        st = serve_requests(&r);
        if (st != DPEP_OK) {
            /* A rank failing mid-run leaves its peers inside a step's
             * collectives: the job cannot go on consistently. End it now,
             * the lines written so far kept (rank 0 flushes them). */
            DPEP_ERROR("rank %d (%s): the run failed mid-way (%s); ending the job", w->rank,
                       w->host, dpep_status_string(st));
            if (w->rank == 0) serve_sink_finish(&r.sink, false);
            fflush(stdout);
            fflush(stderr);
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        st = finish(&r);
    }
    if (st == DPEP_OK) st = report(&r);
    if (st == DPEP_ERR_STOPPED && !r.stopping && w->rank == 0)
        printf("dpep run: stopped by %s before serving%s\n", signal_name(g_signal),
               o->output ? ": nothing written" : "");
    if (w->rank == 0) serve_sink_finish(&r.sink, false); /* after a failure: what was written stays */
    serve_sink_free(&r.sink);
    dpep_sched_destroy(r.s);
    serve_results_free(&r.res);
    free(r.req);
    free(r.meta);
    free(r.toks);
    free(r.sources);
    dpep_engine_destroy(r.e);
    serve_job_unload_model(&r);
    dpep_comm_destroy(r.c_world);
    signals_restore(&old);
    return st;
}
