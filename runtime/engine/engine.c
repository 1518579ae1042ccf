/* engine.c — the distributed forward step of one rank:
 *   h = embed(ids)
 *   per layer: h += MLA(RMSNorm(h)) (attention-TP all-reduce inside attn/),
 *              h += FFN(RMSNorm(h)) with FFN the dense MLP or the MoE layer
 *   logits = lm_head(RMSNorm(h))
 * The FFN input of an attention-TP group (whose ranks hold the same batch) is
 * split into contiguous row slices, one per rank, and the slices' outputs are
 * all-gathered back, so that the MoE and dense layers see each token once. */
#include "dpep_engine.h"
#include "dpep_linear.h"
#include "engine_assist.h"
#include "engine_pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ENGINE_MAX_GRAPHS 256 /* (sequences, mode, split) keys held at most;
                                  the least recently used goes for a new one */
#define ENGINE_PAD_SLOTS 7    /* padding rows of a decode step at most: the
                                  largest gap between two bucket sizes - 1 */

/* Memory: the activations live on the engine's device (one block from its
 * allocator; on CUDA the host never dereferences them: the step reaches them
 * only through the ops table, attn/ and moe/); the host-side state is one
 * malloc. Both are made at create. */
struct dpep_engine {
    const dpep_model_config *m;
    const dpep_weights *w;
    dpep_layout layout;
    dpep_rank_info me;
    int max_tokens;
    int64_t max_ctx;                /* tokens of one sequence at most         */
    dpep_comm *c_attn_tp, *c_ep, *c_moe_tp, *c_dense;
    int attn_tp, attn_tp_rank;
    dpep_attn *attn;
    dpep_attn_kv *kv;
    dpep_moe *moe;
    dpep_device dev;                /* where the activations live            */
    const dpep_engine_ops *ops;     /* the device's kernels                   */
    char where[160];                /* "GPU 0 (NAME)" or "CPU", for messages  */
    /* device memory (act owns them all) */
    void *act;
    float *h, *xn, *ao, *ff;        /* [max_tokens, hidden] each            */
    float *logits;                  /* [max_tokens, vocab] kept logits       */
    int n_logits;                   /* rows of it the last forward kept      */
    int32_t *ids;                   /* [max_tokens] the step's token ids      */
    int32_t *topk_idx;              /* [max_tokens, topk] the gate's picks    */
    float *topk_w;                  /* [max_tokens, topk]                    */
    int64_t *expert_load;           /* [n_layers, n_routed] counts           */
    /* host memory (host owns them all) */
    void *host;
    size_t host_bytes;
    float *scratch;                 /* [2 * vocab] sampling                  */
    int64_t *counts, *displs;       /* [attn_tp] rows per slice              */
    int64_t *load_h;                /* [n_layers, n_routed] copy of the load  */
    /* the vocabulary-parallel lm_head (lm_mode VOCAB; host memory, in host) */
    dpep_lm_head_mode lm_mode;      /* resolved: REPLICATED or VOCAB          */
    int lm_P, lm_me;                /* the EP group: size, this rank          */
    int lm_chunk;                   /* rows per rank per exchange round       */
    float *lm_x;                    /* [lm_P * lm_chunk, hidden] rows of all  */
    float *lm_y;                    /* [lm_P * lm_chunk, slice] their logits  */
    float *lm_stage;                /* [lm_chunk, vocab] own rows, by source  */
    int64_t *lm_cnt, *lm_rk, *lm_off, *lm_sc, *lm_sd, *lm_rc, *lm_rd; /* [lm_P] */
    /* CUDA graphs of decode steps (dpep_engine_params.cuda_graph_max_bs):
     * the instantiated graphs (owned, freed at destroy or when evicted) by
     * key, and the keys whose capture failed (run eagerly, not captured
     * again while held) */
    bool graphs_on;
    int graph_max_bs;
    struct engine_graph {
        uint64_t key;
        void *exec;                 /* NULL: not captured (yet, or failed)   */
        int64_t used;               /* the step that last used it (LRU)      */
        int seen;                   /* steps of this key run eagerly so far  */
        int failed;                 /* its failed captures                   */
    } graphs[ENGINE_MAX_GRAPHS];
    int n_graphs;
    int64_t graph_replays, graph_eager, graph_evicted, graph_steps, graph_warmup;
    /* decode steps padded to a bucket (graphs: one graph per bucket, not per
     * batch size; dpep_engine_params.cuda_graph_max_bs): the KV pool's extra
     * slots the padding rows use (one page each, position 0), host staging
     * of the padded batch, and on the device the step's real top-k entries
     * (expert counts stop there: what a replayed graph reads) */
    bool pad_on;
    int pad_max;                    /* buckets up to this many sequences      */
    int n_pad_slots, pad_slot[ENGINE_PAD_SLOTS];
    dpep_attn_seq *seq_pad;         /* [max_tokens] host                      */
    int32_t *ids_pad;               /* [max_tokens] host                      */
    int64_t *count_lim;             /* [1] device: real rows x top-k          */
    int64_t count_lim_h;            /* the value last copied there (-1: none) */
    int64_t padded_steps, padding_rows;
    engine_assist *assist;          /* the DP assist (NULL: off)              */
    engine_pool *pool;              /* the expert pool (NULL: off)            */
};

/* Vocabulary slice of EP rank r of P: [V r / P, V (r + 1) / P). */
static int lm_v0(int V, int P, int r) { return (int)((int64_t)V * r / P); }

static size_t load_len(const dpep_model_config *m)
{
    return (size_t)m->n_layers * (size_t)(m->n_routed > 0 ? m->n_routed : 1);
}

/* The activation block, carved twice (count, then place). */
static size_t carve_activations(dpep_engine *e, void *base)
{
    const dpep_model_config *m = e->m;
    size_t rows = (size_t)e->max_tokens, H = (size_t)m->hidden;
    size_t k = (size_t)(m->topk > 0 ? m->topk : 1);
    dpep_arena a = dpep_arena_begin(base);
    e->h = DPEP_ARENA_TAKE(&a, float, rows * H);
    e->xn = DPEP_ARENA_TAKE(&a, float, rows * H);
    e->ao = DPEP_ARENA_TAKE(&a, float, rows * H);
    e->ff = DPEP_ARENA_TAKE(&a, float, rows * H);
    e->ids = DPEP_ARENA_TAKE(&a, int32_t, rows);
    e->topk_idx = DPEP_ARENA_TAKE(&a, int32_t, rows * k);
    e->topk_w = DPEP_ARENA_TAKE(&a, float, rows * k);
    e->expert_load = DPEP_ARENA_TAKE(&a, int64_t, load_len(m));
    e->count_lim = DPEP_ARENA_TAKE(&a, int64_t, 1);
    /* last: only its first rows are made resident (see make_resident) */
    e->logits = DPEP_ARENA_TAKE(&a, float, rows * (size_t)m->vocab);
    return a.off;
}

/* The host block, the same way. */
static size_t carve_host(dpep_engine *e, void *base)
{
    dpep_arena a = dpep_arena_begin(base);
    e->scratch = DPEP_ARENA_TAKE(&a, float, 2 * (size_t)e->m->vocab);
    e->counts = DPEP_ARENA_TAKE(&a, int64_t, e->attn_tp);
    e->displs = DPEP_ARENA_TAKE(&a, int64_t, e->attn_tp);
    e->load_h = DPEP_ARENA_TAKE(&a, int64_t, load_len(e->m));
    e->seq_pad = DPEP_ARENA_TAKE(&a, dpep_attn_seq, (size_t)e->max_tokens);
    e->ids_pad = DPEP_ARENA_TAKE(&a, int32_t, (size_t)e->max_tokens);
    if (e->lm_mode == DPEP_LM_HEAD_VOCAB) {
        const size_t P = (size_t)e->lm_P, C = (size_t)e->lm_chunk, V = (size_t)e->m->vocab;
        const size_t slice = (V + P - 1) / P;
        e->lm_x = DPEP_ARENA_TAKE(&a, float, P * C * (size_t)e->m->hidden);
        e->lm_y = DPEP_ARENA_TAKE(&a, float, P * C * slice);
        e->lm_stage = DPEP_ARENA_TAKE(&a, float, C * V);
        int64_t **arr[] = {&e->lm_cnt, &e->lm_rk, &e->lm_off, &e->lm_sc, &e->lm_sd, &e->lm_rc, &e->lm_rd};
        for (size_t i = 0; i < sizeof arr / sizeof *arr; i++) *arr[i] = DPEP_ARENA_TAKE(&a, int64_t, P);
    }
    return a.off;
}

/* The memory a step writes, made resident at create (the plan taken when
 * the engine starts, as on a device; dpep_device_advise_resident): the
 * activations but the logits past a step's sequences (DPEP_LOGITS_ALL of a
 * long prompt, the one use of the rest, touches them when it comes: rows x
 * vocab would be most of the block) and the host block. The attention, MoE,
 * DP assist and expert pool make their own resident. */
static void make_resident(dpep_engine *e, int max_seqs)
{
    const size_t rows = (size_t)(max_seqs < e->max_tokens ? max_seqs : e->max_tokens);
    const size_t lead = (size_t)((char *)e->logits - (char *)e->act);
    dpep_device_advise_resident(&e->dev, e->act, lead + rows * (size_t)e->m->vocab * sizeof(float));
    dpep_device_advise_resident(NULL, e->host, e->host_bytes); /* host memory on any device */
}

void dpep_engine_destroy(dpep_engine *e)
{
    if (!e) return;
    for (int i = 0; i < e->n_graphs; i++)
        if (e->ops && e->ops->graph_free) e->ops->graph_free(e->graphs[i].exec);
    if (e->attn) dpep_attn_set_lend(e->attn, NULL);
    engine_assist_destroy(e->assist);
    engine_pool_destroy(e->pool);
    dpep_moe_free(e->moe);
    dpep_attn_destroy(e->attn);
    dpep_attn_kv_destroy(e->kv);
    dpep_comm_destroy(e->c_dense);
    dpep_comm_destroy(e->c_moe_tp);
    dpep_comm_destroy(e->c_ep);
    dpep_comm_destroy(e->c_attn_tp);
    if (e->ops) dpep_device_free(&e->dev, e->act);
    free(e->host);
    free(e);
}

dpep_attn_kv *dpep_engine_kv(dpep_engine *e) { return e->kv; }

const int64_t *dpep_engine_expert_load(const dpep_engine *e)
{
    dpep_status st = e->dev.ops->to_host(&e->dev, e->load_h, e->expert_load,
                                         sizeof(int64_t) * load_len(e->m));
    if (st != DPEP_OK)
        DPEP_ERROR("engine: rank %d, %s: copying the expert load back: %s (the counts shown are "
                   "the previous ones)", e->me.rank, e->where, dpep_status_string(st));
    return e->load_h;
}
const char *dpep_engine_moe_transport(const dpep_engine *e) { return dpep_moe_transport_name(e->moe); }

void dpep_engine_comms(const dpep_engine *e, char *buf, size_t n)
{
    const struct {
        const char *name;
        const dpep_comm *c;
    } g[] = {{"attn_tp", e->c_attn_tp}, {"ep", e->c_ep}, {"moe_tp", e->c_moe_tp},
             {"dense", e->c_dense}};
    size_t off = 0;
    if (n) buf[0] = '\0';
    for (size_t i = 0; i < sizeof g / sizeof g[0] && off < n; i++) {
        if (!g[i].c || dpep_comm_size(g[i].c) < 2) continue;
        int w = snprintf(buf + off, n - off, "%s%s %s", off ? ", " : "", g[i].name,
                         dpep_comm_backend_name(dpep_comm_backend_of(g[i].c)));
        if (w < 0) break;
        off += (size_t)w;
    }
}
size_t dpep_engine_moe_bytes(const dpep_engine *e) { return dpep_moe_pool_bytes(e->moe); }
double dpep_engine_weight_bytes(const dpep_engine *e)
{
    if (e->dev.kind != DPEP_DEVICE_CPU) return 0;
    dpep_linear_stats ls;
    dpep_linear_get_stats(&ls);
    return ls.small_bytes + ls.blas_bytes;
}
const dpep_device *dpep_engine_device(const dpep_engine *e) { return &e->dev; }
dpep_status dpep_engine_warmup(dpep_engine *e, int n_tokens)
{
    if (n_tokens <= 0) return DPEP_OK;
    /* one step's tokens at most, and room for the decode token after them */
    int n = n_tokens < e->max_tokens ? n_tokens : e->max_tokens;
    if (n > e->max_ctx - 1) n = (int)(e->max_ctx - 1);
    if (n < 1) return DPEP_OK; /* the same on every rank: max_ctx is the instance's */
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    int slot = -1;
    bool have = ids && dpep_attn_kv_seq_open(e->kv, &slot) == DPEP_OK;
    if (have && dpep_attn_kv_seq_reserve(e->kv, slot, (int64_t)n + 1) != DPEP_OK) {
        DPEP_DEBUG("engine: rank %d: warm-up: the KV pool cannot hold %d tokens; joining with none",
                   e->me.rank, n + 1);
        dpep_attn_kv_seq_close(e->kv, slot);
        have = false;
    }
    for (int i = 0; ids && i < n; i++) ids[i] = (int32_t)(((int64_t)i * 7919 + 1) % e->m->vocab);
    /* the two steps run whatever happened above: the peers are in them */
    dpep_attn_seq sq = {slot, n, 0};
    dpep_status st = dpep_engine_forward(e, have ? &sq : NULL, have ? 1 : 0, ids, DPEP_LOGITS_LAST, NULL);
    if (st == DPEP_OK) {
        sq = (dpep_attn_seq){slot, 1, n};
        st = dpep_engine_forward(e, have ? &sq : NULL, have ? 1 : 0, ids, DPEP_LOGITS_LAST, NULL);
    }
    if (have) dpep_attn_kv_seq_close(e->kv, slot);
    e->n_logits = 0;
    /* the requests' expert load starts from zero (int64 zeros are float zeros) */
    e->ops->zero((float *)e->expert_load, (int64_t)(2 * load_len(e->m)));
    if (!ids) {
        DPEP_ERROR("engine: rank %d: warm-up: out of memory", e->me.rank);
        if (st == DPEP_OK) st = DPEP_ERR_NOMEM;
    }
    free(ids);
    return st;
}

dpep_lm_head_mode dpep_engine_lm_head(const dpep_engine *e, int *group)
{
    if (group) *group = e->lm_mode == DPEP_LM_HEAD_VOCAB ? e->lm_P : 1;
    return e->lm_mode;
}

/* runtime.lm_head against what this engine can do (see dpep_lm_head_mode). */
static dpep_status resolve_lm_head(dpep_engine *e, dpep_lm_head_mode want, dpep_diag *diag)
{
    bool has_moe = false;
    for (int l = 0; l < e->m->n_layers; l++) has_moe = has_moe || e->w->layer[l].moe;
    const int P = e->c_ep ? dpep_comm_size(e->c_ep) : 1;
    const bool cpu = e->dev.kind == DPEP_DEVICE_CPU;
    e->lm_mode = DPEP_LM_HEAD_REPLICATED;
    e->lm_P = 1;
    e->lm_me = 0;
    if (want == DPEP_LM_HEAD_REPLICATED || P <= 1) return DPEP_OK;
    if (want == DPEP_LM_HEAD_AUTO && (!cpu || !has_moe || e->attn_tp > 1)) return DPEP_OK;
    if (!cpu) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d: runtime.lm_head vocab on %s: the "
                      "vocabulary-parallel lm_head exchanges rows and logits over MPI on host "
                      "memory (CPU only for now); use replicated or auto", e->me.rank,
                      dpep_device_kind_name(e->dev.kind));
        return DPEP_ERR_UNSUPPORTED;
    }
    if (!has_moe) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d: runtime.lm_head vocab needs MoE "
                      "layers (their collectives keep the EP group's steps together); this model "
                      "has none: use replicated or auto", e->me.rank);
        return DPEP_ERR_INVALID;
    }
    e->lm_mode = DPEP_LM_HEAD_VOCAB;
    e->lm_P = P;
    e->lm_me = dpep_comm_rank(e->c_ep);
    e->lm_chunk = e->max_tokens < 128 ? e->max_tokens : 128;
    return DPEP_OK;
}

/* The MoE context last: with the node-shared transport it is collective over
 * the EP group (create and free), so every local allocation is done and
 * agreed on first, and nothing can fail after it. */
static dpep_status finish_create(dpep_engine *e, const dpep_engine_params *p, dpep_status local,
                                 dpep_engine **out, dpep_diag *diag)
{
    int n_failed = 0, first = -1;
    dpep_status st = dpep_comm_agree(e->c_ep, local, &n_failed, &first);
    if (st != DPEP_OK && local == DPEP_OK)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: %d EP rank(s) could not set up (first: EP "
                      "rank %d; their own errors are logged there)", n_failed, first);
    if (st == DPEP_OK) {
        dpep_moe_config mc;
        dpep_moe_config_from_model(p->m, &mc);
        mc.backend = p->backend;
        mc.transport = p->transport;
        mc.max_tokens = (p->max_tokens + e->attn_tp - 1) / e->attn_tp;
        mc.ep = e->c_ep;
        mc.moe_tp = e->c_moe_tp;
        mc.dense = e->c_dense;
        mc.placement = NULL;
        mc.device = &e->dev;
        st = dpep_moe_create(&mc, &e->moe, diag);
    }
    /* the DP assist: ranks of the EP group hold the same attention (no
     * attention-TP), and the same shared experts and dense FFN where those
     * are not split (MoE-TP, dense TP); host memory; the same decision on
     * every EP rank (layout and config) */
    if (st == DPEP_OK && p->dp_assist != DPEP_DP_ASSIST_OFF && e->dev.kind == DPEP_DEVICE_CPU &&
        e->attn_tp == 1 && dpep_comm_size(e->c_ep) > 1) {
        const unsigned what =
            ((!e->c_moe_tp || dpep_comm_size(e->c_moe_tp) == 1) ? ENGINE_ASSIST_SHARED : 0u) |
            ((!e->c_dense || dpep_comm_size(e->c_dense) == 1) ? ENGINE_ASSIST_DENSE : 0u);
        st = engine_assist_create(dpep_comm_mpi(e->c_ep), p->m, p->w, what,
                                  (int64_t)p->max_tokens,
                                  p->comm_timeout_s, p->dp_assist == DPEP_DP_ASSIST_AUTO, &e->assist);
        if (st != DPEP_OK)
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d: the DP assist's node-shared "
                          "segments: %s (runtime.dp_assist off avoids them)", e->me.rank,
                          dpep_status_string(st));
        else if (e->assist) {
            dpep_moe_set_between(e->moe, engine_assist_close_cb, e->assist);
            dpep_attn_set_lend(e->attn, engine_assist_attn_lend(e->assist));
        }
    }
    /* the expert pool: the node's routed experts in node-shared memory
     * (the loader put them there: runtime.node_experts) */
    if (st == DPEP_OK && p->node_experts && e->dev.kind == DPEP_DEVICE_CPU &&
        dpep_comm_size(e->c_ep) > 1) {
        st = engine_pool_create(dpep_comm_mpi(e->c_ep), p->m, p->w, p->node_experts,
                                p->comm_timeout_s, &e->pool);
        if (st != DPEP_OK)
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d: the expert pool's node-shared "
                          "segments: %s (runtime.node_experts off avoids them)", e->me.rank,
                          dpep_status_string(st));
        else if (e->pool)
            dpep_moe_set_wave_offload(e->moe, engine_pool_table(e->pool));
    }
    if (st != DPEP_OK) {
        dpep_engine_destroy(e); /* collective windows: every EP rank is here */
        return st;
    }
    /* CUDA graphs: only where a decode step stays on this GPU and queues
     * device work only (no collective, no host exchange of the MoE rows) */
    const bool alone = e->attn_tp == 1 && dpep_comm_size(e->c_ep) == 1 &&
                       (!e->c_moe_tp || dpep_comm_size(e->c_moe_tp) == 1) &&
                       (!e->c_dense || dpep_comm_size(e->c_dense) == 1);
    e->graph_max_bs = p->cuda_graph_max_bs > e->max_tokens ? e->max_tokens : p->cuda_graph_max_bs;
    const bool stays = alone && e->lm_mode == DPEP_LM_HEAD_REPLICATED;
    e->graphs_on = p->cuda_graph_max_bs > 0 && e->ops->graph_begin && e->ops->graph_end &&
                   e->ops->graph_launch && stays &&
                   strcmp(dpep_moe_transport_name(e->moe), "device") == 0;
    /* padding where the graphs run (or the tests ask, on such a layout) */
    e->pad_on = e->n_pad_slots > 0 && (e->graphs_on || (p->pad_decode && stays));
    e->pad_max = p->cuda_graph_max_bs > 0 ? e->graph_max_bs : e->max_tokens;
    *out = e;
    return DPEP_OK;
}

bool dpep_engine_assist(const dpep_engine *e, dpep_engine_assist_stats *out)
{
    if (out) memset(out, 0, sizeof *out);
    if (!e->assist && !e->pool) return false;
    if (out && e->assist) engine_assist_stats(e->assist, out);
    if (out) engine_pool_stats(e->pool, out);
    return true;
}

void dpep_engine_graph_stats_get(const dpep_engine *e, dpep_engine_graph_stats *out)
{
    memset(out, 0, sizeof *out);
    out->enabled = e->graphs_on;
    out->max_bs = e->graphs_on ? e->graph_max_bs : 0;
    for (int i = 0; i < e->n_graphs; i++) out->captured += e->graphs[i].exec != NULL;
    out->replayed = e->graph_replays;
    out->padded_steps = e->padded_steps;
    out->padding_rows = e->padding_rows;
    out->eager_decode = e->graph_eager;
    out->warmup_decode = e->graph_warmup;
    out->evicted = e->graph_evicted;
}

dpep_status dpep_engine_create(const dpep_engine_params *p, dpep_engine **out, dpep_diag *diag)
{
    const dpep_model_config *m = p->m;
    if (p->max_tokens < 1 || p->max_seqs < 1 || p->page_size < 1) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: max_tokens, max_seqs and page_size must be >= 1");
        return DPEP_ERR_INVALID;
    }
    dpep_engine *e = calloc(1, sizeof *e);
    if (!e) return DPEP_ERR_NOMEM;
    dpep_status st = DPEP_OK;
    e->m = m;
    e->w = p->w;
    e->layout = *p->layout;
    e->me = *p->me;
    e->max_tokens = p->max_tokens;
    e->max_ctx = p->max_ctx;
    /* The device's allocator and kernels (CPU unless the caller says);
     * the staged comms move its memory. */
    if (p->device)
        e->dev = *p->device;
    else
        DPEP_TRY_GOTO(dpep_device_get(DPEP_DEVICE_CPU, -1, &e->dev), st, fail);
    DPEP_TRY_GOTO(dpep_comm_create_group_on(p->attn_tp, "attn_tp", p->attn_tp_backend, &e->dev, p->comm_timeout_s, &e->c_attn_tp), st, fail);
    DPEP_TRY_GOTO(dpep_comm_create_group_on(p->ep, "ep", p->ep_backend, &e->dev, p->comm_timeout_s, &e->c_ep), st, fail);
    DPEP_TRY_GOTO(dpep_comm_create_group_on(p->moe_tp, "moe_tp", p->moe_tp_backend, &e->dev, p->comm_timeout_s, &e->c_moe_tp), st, fail);
    DPEP_TRY_GOTO(dpep_comm_create_group_on(p->dense, "dense", p->dense_backend, &e->dev, p->comm_timeout_s, &e->c_dense), st, fail);
    /* An EP group of one still needs a comm for the MoE layer. */
    if (!e->c_ep) {
        MPI_Comm self = p->ep != MPI_COMM_NULL ? p->ep : MPI_COMM_SELF;
        DPEP_TRY_GOTO(dpep_comm_create(self, "ep", DPEP_COMM_MPI, p->comm_timeout_s, &e->c_ep), st, fail);
    }
    if (!dpep_engine_ops_for(e->dev.kind)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: runtime.device %s: this build has no %s "
                      "kernels for the forward step (the CPU backend is complete; see README)",
                      dpep_device_kind_name(e->dev.kind), dpep_device_kind_name(e->dev.kind));
        st = DPEP_ERR_UNSUPPORTED;
        goto fail;
    }
    e->ops = dpep_engine_ops_for(e->dev.kind);
    e->attn_tp = e->c_attn_tp ? dpep_comm_size(e->c_attn_tp) : 1;
    e->attn_tp_rank = e->c_attn_tp ? dpep_comm_rank(e->c_attn_tp) : 0;
    /* refined with the GPU's name once the device answers (below) */
    if (e->dev.kind == DPEP_DEVICE_CUDA) snprintf(e->where, sizeof e->where, "GPU %d", e->dev.ordinal);
    else snprintf(e->where, sizeof e->where, "%s", dpep_device_kind_name(e->dev.kind));
    if (e->attn_tp > 1 && e->dev.kind != DPEP_DEVICE_CPU &&
        dpep_comm_backend_of(e->c_attn_tp) == DPEP_COMM_MPI) {
        /* the attention-TP all-reduce and FFN all-gather move device rows:
         * plain MPI takes host buffers only */
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d: attention-TP %d on %s over an MPI "
                      "comm on host memory (dpep_engine_params.attn_tp_backend: NCCL or "
                      "mpi-staged on a GPU)", e->me.rank, e->attn_tp,
                      dpep_device_kind_name(e->dev.kind));
        st = DPEP_ERR_UNSUPPORTED;
        goto fail;
    }
    /* the staged comms' host buffers now, not in the first step: the
     * largest call of each (rows of hidden floats; the MoE's packed rows
     * [x | ids | weights] are hidden + 2 topk words) */
    {
        const size_t H4 = (size_t)m->hidden * sizeof(float);
        const size_t S4 = ((size_t)m->hidden + 2u * (size_t)(m->topk > 0 ? m->topk : 0)) * sizeof(float);
        const size_t T = (size_t)p->max_tokens, Tm = (T + (size_t)e->attn_tp - 1) / (size_t)e->attn_tp;
        const size_t dn = e->c_dense ? (size_t)dpep_comm_size(e->c_dense) : 1;
        const size_t mtp = e->c_moe_tp ? (size_t)dpep_comm_size(e->c_moe_tp) : 1;
        const size_t epn = e->c_ep ? (size_t)dpep_comm_size(e->c_ep) : 1;
        DPEP_TRY_GOTO(dpep_comm_reserve(e->c_attn_tp, T * H4, T * H4), st, fail);
        DPEP_TRY_GOTO(dpep_comm_reserve(e->c_dense, dn * Tm * H4, dn * Tm * H4), st, fail);
        DPEP_TRY_GOTO(dpep_comm_reserve(e->c_moe_tp, mtp * Tm * S4, mtp * Tm * S4), st, fail);
        DPEP_TRY_GOTO(dpep_comm_reserve(e->c_ep, epn * mtp * Tm * S4, epn * mtp * Tm * S4), st, fail);
    }
    /* (weights put together by hand have no allocator: host memory) */
    const dpep_device_kind wk = p->w->dev.ops ? p->w->dev.kind : DPEP_DEVICE_CPU;
    const int wo = p->w->dev.ops ? p->w->dev.ordinal : -1;
    if (wk != e->dev.kind || (wk == DPEP_DEVICE_CUDA && wo != e->dev.ordinal)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d: the weights are on %s (device %d) "
                      "but the engine runs on %s (device %d): load them with "
                      "dpep_weights_load_on and the engine's device", e->me.rank,
                      dpep_device_kind_name(wk), wo, dpep_device_kind_name(e->dev.kind),
                      e->dev.ordinal);
        st = DPEP_ERR_INVALID;
        goto fail;
    }
    DPEP_TRY_GOTO(resolve_lm_head(e, p->lm_head, diag), st, fail);
    e->host_bytes = carve_host(e, NULL);
    e->host = malloc(e->host_bytes);
    if (!e->host) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d: host buffers: out of memory",
                      e->me.rank);
        st = DPEP_ERR_NOMEM;
        goto fail;
    }
    carve_host(e, e->host);
    memset(e->load_h, 0, sizeof(int64_t) * load_len(m));

    /* decode padding (for CUDA graphs, or the tests' hook): its rows' slots,
     * one page each, beyond the budget the caller planned */
    const bool pad_wanted = (p->cuda_graph_max_bs > 0 && e->ops->graph_begin) || p->pad_decode;
    const size_t page_bytes = (size_t)p->page_size *
                              (size_t)dpep_model_kv_bytes_per_token(m, (double)dpep_wtype_size(p->kv_dtype));
    dpep_attn_kv_params kp = {.n_layers = m->n_layers, .page_size = p->page_size,
                              .budget_bytes = p->kv_budget_bytes + (pad_wanted ? ENGINE_PAD_SLOTS * page_bytes : 0),
                              .max_seqs = p->max_seqs, .max_seq_len = p->max_ctx, .device = &e->dev,
                              .dtype = p->kv_dtype, .extra_slots = pad_wanted ? ENGINE_PAD_SLOTS : 0};
    st = dpep_attn_kv_create(m, &kp, &e->kv);
    if (st != DPEP_OK) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d, %s: KV pool of %zu bytes (%s, page "
                      "%d, %d slots, max_seq_len %lld): %s", e->me.rank, e->where, p->kv_budget_bytes,
                      dpep_wtype_name(p->kv_dtype), p->page_size, p->max_seqs, (long long)p->max_ctx,
                      dpep_status_string(st));
        goto fail;
    }
    e->count_lim_h = -1;
    for (int i = 0; pad_wanted && i < ENGINE_PAD_SLOTS; i++) {
        int s = -1;
        if (dpep_attn_kv_seq_open_extra(e->kv, i, &s) != DPEP_OK ||
            dpep_attn_kv_seq_reserve(e->kv, s, 1) != DPEP_OK)
            break; /* fewer slots: steps whose padding needs more run unpadded */
        e->pad_slot[e->n_pad_slots++] = s;
    }
    dpep_attn_params ap = {.head0 = p->w->layer[0].head0, .n_heads = p->w->layer[0].n_heads,
                           .max_tokens = p->max_tokens, .max_ctx = p->max_ctx,
                           .decode = DPEP_ATTN_DECODE_ABSORBED, .tp = e->c_attn_tp,
                           .device = &e->dev};
    st = dpep_attn_create(m, &ap, &e->attn);
    if (st != DPEP_OK) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d, %s: attention context: %s",
                      e->me.rank, e->where, dpep_status_string(st));
        goto fail;
    }
    st = dpep_device_alloc(&e->dev, carve_activations(e, NULL), &e->act);
    if (st != DPEP_OK) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d, %s: activations (%zu bytes): %s",
                      e->me.rank, e->where, carve_activations(e, NULL), dpep_status_string(st));
        goto fail;
    }
    carve_activations(e, e->act);
    make_resident(e, p->max_seqs);
    /* the table's scratch (token ids, sampling) now, not in the first step;
     * its m->fp8 says whether the weights hold FP8 matrices (not only the
     * checkpoint: model.dtype bf16 dequantizes them at load) */
    if (e->ops->reserve) {
        dpep_model_config mr = *m;
        mr.fp8 = p->w->mat_type == DPEP_WT_FP8;
        e->ops->reserve(&mr, p->max_tokens);
    }
    /* The device's description for messages; an error here (a device that
     * cannot finish the allocator's zeroing, a failed reserve) fails the
     * create. */
    {
        char msg[sizeof e->where + 256];
        dpep_status cst = e->ops->check(msg, sizeof msg);
        if (cst != DPEP_OK) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "engine: rank %d: %s", e->me.rank, msg);
            st = cst;
            goto fail;
        }
        snprintf(e->where, sizeof e->where, "%s", msg);
    }
fail:
    /* the EP group agrees either way (a failed rank still joins) */
    if (e->c_ep) return finish_create(e, p, st, out, diag);
    dpep_engine_destroy(e);
    return st;
}

/* After a failed part of the step (`st`, already logged by the part):
 * one line naming the rank, the device, the layer and the part, with the
 * device's own first error if it kept one. Returns st. */
static dpep_status step_failed(dpep_engine *e, dpep_status st, int layer, const char *part)
{
    char msg[512];
    dpep_status dst = e->ops->check(msg, sizeof msg);
    char lay[32] = "";
    if (layer >= 0) snprintf(lay, sizeof lay, "layer %d ", layer);
    if (dst != DPEP_OK)
        DPEP_ERROR("engine: rank %d, %s: forward step failed (%s%s): %s; device error: %s",
                   e->me.rank, e->where, lay, part, dpep_status_string(st), msg);
    else
        DPEP_ERROR("engine: rank %d, %s: forward step failed (%s%s): %s", e->me.rank, e->where,
                   lay, part, dpep_status_string(st));
    return st;
}

/* The device's first error of the step, if any, as the step's status. */
static dpep_status step_check(dpep_engine *e, const char *what)
{
    char msg[512];
    dpep_status st = e->ops->check(msg, sizeof msg);
    if (st != DPEP_OK) DPEP_ERROR("engine: rank %d: %s failed on %s", e->me.rank, what, msg);
    return st;
}

/* The vocabulary-parallel lm_head (lm_mode VOCAB): this rank's n_rows
 * normalized rows (xn) -> their full logits rows (logits). In rounds of up
 * to lm_chunk rows per rank (every rank knows every count, so all run the
 * same rounds): all-gather the rows, logits of this rank's vocabulary slice
 * for all of them, all-to-all-v each rank's rows back to it, and place the
 * slices side by side. */
static dpep_status lm_head_vocab(dpep_engine *e, int64_t n_rows)
{
    const int P = e->lm_P, me = e->lm_me, V = e->m->vocab, H = e->m->hidden, C = e->lm_chunk;
    int64_t *cnt = e->lm_cnt, *rk = e->lm_rk, *off = e->lm_off;
    for (int r = 0; r < P; r++) {
        rk[r] = 1;
        off[r] = r;
    }
    DPEP_TRY(dpep_comm_allgatherv(e->c_ep, &n_rows, 1, cnt, rk, off, DPEP_COMM_I64));
    int64_t rounds = 0;
    for (int r = 0; r < P; r++) {
        int64_t k = (cnt[r] + C - 1) / C;
        rounds = k > rounds ? k : rounds;
    }
    const int v0 = lm_v0(V, P, me), vn = lm_v0(V, P, me + 1) - v0;
    const dpep_mat slice = dpep_mat_rows(e->w->lm_head, v0, vn);
    for (int64_t k = 0; k < rounds; k++) {
        int64_t total = 0;
        for (int r = 0; r < P; r++) {
            int64_t left = cnt[r] - k * C;
            rk[r] = left <= 0 ? 0 : left < C ? left : C;
            off[r] = total;
            total += rk[r];
        }
        for (int r = 0; r < P; r++) {
            e->lm_sc[r] = rk[r] * H;
            e->lm_sd[r] = off[r] * H;
        }
        DPEP_TRY(dpep_comm_allgatherv(e->c_ep, e->xn + k * C * H, rk[me] * H, e->lm_x, e->lm_sc,
                                      e->lm_sd, DPEP_COMM_F32));
        if (total > 0) e->ops->lm_head(e->lm_x, total, &slice, e->lm_y);
        int64_t rd = 0;
        for (int r = 0; r < P; r++) {
            const int64_t vr = lm_v0(V, P, r + 1) - lm_v0(V, P, r);
            e->lm_sc[r] = rk[r] * vn; /* rank r's rows of my slice */
            e->lm_sd[r] = off[r] * vn;
            e->lm_rc[r] = rk[me] * vr; /* my rows of rank r's slice */
            e->lm_rd[r] = rd;
            rd += e->lm_rc[r];
        }
        DPEP_TRY(dpep_comm_alltoallv(e->c_ep, e->lm_y, e->lm_sc, e->lm_sd, e->lm_stage, e->lm_rc,
                                     e->lm_rd, DPEP_COMM_F32));
        for (int r = 0; r < P; r++) {
            const int a = lm_v0(V, P, r), vr = lm_v0(V, P, r + 1) - a;
            for (int64_t i = 0; i < rk[me]; i++)
                memcpy(e->logits + (size_t)(k * C + i) * (size_t)V + (size_t)a,
                       e->lm_stage + (size_t)e->lm_rd[r] + (size_t)i * (size_t)vr,
                       sizeof(float) * (size_t)vr);
        }
    }
    return DPEP_OK;
}

/* The step's device work from the embedding (token ids already in e->ids)
 * to the logits of *n_rows rows in e->logits. Reports nothing itself: on a
 * failure it returns the status with the layer (-1: none) and the part in
 * *fl / *fp, and the caller, outside any graph capture, logs them. With
 * the attention staged and the step kept on this rank (graphs_on), nothing
 * here waits for the device: what a CUDA graph captures. */
static dpep_status forward_body(dpep_engine *e, const dpep_attn_seq *seq, int n_seq, int64_t T,
                                dpep_logits_mode mode, int64_t *n_rows, int *fl, const char **fp)
{
    const dpep_model_config *m = e->m;
    const dpep_weights *w = e->w;
    const int H = m->hidden;
    dpep_status st;
    *n_rows = 0;
    *fl = -1;
    /* the DP assist: this step's roles (a fence of the node's ranks) */
    if (e->assist) {
        st = engine_assist_step(e->assist, T);
        if (st != DPEP_OK) return *fp = "the DP assist's token counts", st;
    }
    e->ops->embed(&w->embed, e->ids, T, e->h);
    /* This rank's slice of the FFN rows. */
    int P = e->attn_tp;
    for (int r = 0; r < P; r++) {
        int64_t b = T * r / P, en = T * (r + 1) / P;
        e->counts[r] = (en - b) * H;
        e->displs[r] = b * H;
    }
    int64_t s0 = T * e->attn_tp_rank / P, s1 = T * (e->attn_tp_rank + 1) / P, sn = s1 - s0;
    for (int l = 0; l < m->n_layers; l++) {
        const dpep_layer_w *L = &w->layer[l];
        *fl = l;
        e->ops->rmsnorm(e->h, L->input_norm, T, H, m->rms_eps, e->xn);
        /* regions of the DP assist: opened and closed by every node rank
         * alike (an owner lends its products out in between; a helper's
         * close serves them); closed whatever the part returned */
        if (e->assist) (void)engine_assist_open(e->assist, ENGINE_ASSIST_ATTENTION);
        st = dpep_attn_forward(e->attn, L, l, e->kv, seq, n_seq, e->xn, e->ao);
        if (e->assist) {
            const dpep_status ast = engine_assist_close(e->assist);
            if (st == DPEP_OK && ast != DPEP_OK) return *fp = "the DP assist (attention)", ast;
        }
        if (st != DPEP_OK) return *fp = "attention", st;
        e->ops->add(e->h, e->ao, T * H);
        e->ops->rmsnorm(e->h + s0 * H, L->post_norm, sn, H, m->rms_eps, e->xn + s0 * H);
        const float *xin = sn ? e->xn + s0 * H : NULL;
        float *fout = e->ff + s0 * H;
        if (e->assist) (void)engine_assist_open(e->assist, ENGINE_ASSIST_FFN);
        if (L->moe) {
            /* the assist's region closes inside, between the experts and
             * the combine (dpep_moe_set_between); an owner's shared experts
             * go to it first (the same sum: combine's result + shared) */
            const float *sh = e->assist ? engine_assist_mlp_post(e->assist, &L->shared, xin, sn) : NULL;
            st = dpep_moe_forward_parts(e->moe, L, xin, sn,
                                        sh ? DPEP_MOE_ROUTED : DPEP_MOE_ROUTED | DPEP_MOE_SHARED, fout,
                                        e->topk_idx, e->topk_w);
            if (st != DPEP_OK) return *fp = "MoE", st;
            if (sh) e->ops->add(fout, sh, sn * H);
            /* the gate's picks stay on the device: counted there */
            e->ops->expert_count(e->topk_idx, sn * m->topk, e->pad_on ? e->count_lim : NULL,
                                 m->n_routed, e->expert_load + (size_t)l * (size_t)m->n_routed);
        } else {
            st = dpep_moe_dense_forward(e->moe, &L->mlp, xin, sn, fout);
            if (e->assist) {
                const dpep_status ast = engine_assist_close(e->assist);
                if (st == DPEP_OK && ast != DPEP_OK) return *fp = "the DP assist (dense FFN)", ast;
            }
            if (st != DPEP_OK) return *fp = "dense FFN", st;
        }
        if (P > 1) {
            /* MPI forbids aliasing send and receive: send from a copy. */
            e->ops->copy(e->ao, fout, sn * H);
            st = dpep_comm_allgatherv(e->c_attn_tp, e->ao, sn * H, e->ff, e->counts, e->displs,
                                      DPEP_COMM_F32);
            if (st != DPEP_OK) return *fp = "attention-TP all-gather", st;
        }
        e->ops->add(e->h, e->ff, T * H);
    }
    *fl = -1;
    /* Rows that need logits, normalized into xn. */
    if (mode == DPEP_LOGITS_ALL && T > 0) {
        e->ops->rmsnorm(e->h, w->final_norm, T, H, m->rms_eps, e->xn);
        *n_rows = T;
    } else if (mode == DPEP_LOGITS_LAST && T > 0) {
        int64_t off = 0;
        for (int i = 0; i < n_seq; i++) {
            off += seq[i].n_new;
            if (seq[i].n_new > 0)
                e->ops->rmsnorm(e->h + (off - 1) * H, w->final_norm, 1, H, m->rms_eps, e->xn + i * H);
            else
                e->ops->zero(e->xn + i * H, H);
        }
        *n_rows = n_seq;
    }
    if (e->lm_mode == DPEP_LM_HEAD_VOCAB) {
        /* every rank of the group joins, with 0 rows too */
        st = lm_head_vocab(e, *n_rows);
        if (st != DPEP_OK) return *fp = "the vocabulary-parallel lm_head", st;
    } else if (*n_rows > 0) {
        e->ops->lm_head(e->xn, *n_rows, &w->lm_head, e->logits);
    }
    return DPEP_OK;
}

#define ENGINE_GRAPH_TRIES 2 /* captures of one key tried at most */

/* The graph held for `key`: its slot, or NULL. */
static struct engine_graph *graph_find(dpep_engine *e, uint64_t key)
{
    for (int i = 0; i < e->n_graphs; i++)
        if (e->graphs[i].key == key) return &e->graphs[i];
    return NULL;
}

/* A slot for a new key, cleared: a free one, else the least recently used
 * (its graph freed: the previous step's check waited for every launch). */
static struct engine_graph *graph_slot(dpep_engine *e, uint64_t key)
{
    struct engine_graph *g;
    if (e->n_graphs < ENGINE_MAX_GRAPHS) {
        g = &e->graphs[e->n_graphs++];
    } else {
        g = &e->graphs[0];
        for (int i = 1; i < e->n_graphs; i++)
            if (e->graphs[i].used < g->used) g = &e->graphs[i];
        if (g->exec && e->ops->graph_free) e->ops->graph_free(g->exec);
        e->graph_evicted++;
    }
    *g = (struct engine_graph){.key = key};
    return g;
}

/* A decode step (every sequence one new token, the attention staged with
 * launch shape `shape`) through a CUDA graph: the graph of this shape
 * replayed. A key's first step runs eagerly (what a kernel or a library
 * loads or sizes on its first use, which a capture refuses, happens
 * there, as SGLang and vLLM warm up before they capture); its second is
 * captured; a failed capture is tried once more at a later step, then the
 * key runs eagerly while its entry is held. At most ENGINE_MAX_GRAPHS
 * keys: the least recently used makes room. Same contract as forward_body. */
static dpep_status forward_graph(dpep_engine *e, const dpep_attn_seq *seq, int n_seq, int64_t T,
                                 dpep_logits_mode mode, int shape, int64_t *n_rows, int *fl,
                                 const char **fp)
{
    dpep_status st = DPEP_OK;
    *n_rows = 0;
    *fl = -1;
    const uint64_t key = ((uint64_t)T << 32) | ((uint64_t)mode << 24) | ((uint64_t)shape & 0xffffff);
    struct engine_graph *g = graph_find(e, key);
    e->graph_steps++;
    if (!g) g = graph_slot(e, key);
    g->used = e->graph_steps;
    if (!g->exec && g->seen >= 1 && g->failed < ENGINE_GRAPH_TRIES) {
        /* a capture that cannot start or does not hold: counted; the step's
         * results then come from the eager run below */
        void *exec = NULL;
        if (e->ops->graph_begin() == DPEP_OK) {
            st = forward_body(e, seq, n_seq, T, mode, n_rows, fl, fp);
            exec = e->ops->graph_end(st == DPEP_OK);
        }
        g->exec = exec;
        if (!exec) g->failed++;
        if (exec)
            DPEP_DEBUG("engine: rank %d: CUDA graph %d captured (%lld sequences, split %d, "
                       "%d tiles)", e->me.rank, e->n_graphs, (long long)T, shape & 0x7f, shape >> 7);
    }
    if (g->exec) {
        e->ops->graph_launch(g->exec);
        e->graph_replays++;
        *n_rows = mode == DPEP_LOGITS_ALL ? T : mode == DPEP_LOGITS_LAST ? n_seq : 0;
        return DPEP_OK;
    }
    /* eagerly, the attention still staged: a key's first step (its
     * warm-up; no capture was tried before it), or one whose captures failed */
    if (g->seen++ == 0) e->graph_warmup++;
    else e->graph_eager++;
    return forward_body(e, seq, n_seq, T, mode, n_rows, fl, fp);
}

/* The bucket a decode step of T sequences is padded to: T up to 4, then the
 * next multiple of 8, at most `max` (T <= max). */
static int64_t pad_bucket(int64_t T, int max)
{
    if (T <= 4) return T;
    const int64_t b = (T + 7) / 8 * 8;
    return b < max ? b : max;
}

dpep_status dpep_engine_forward(dpep_engine *e, const dpep_attn_seq *seq, int n_seq,
                                const int32_t *tokens, dpep_logits_mode mode, float *logits)
{
    const dpep_model_config *m = e->m;
    dpep_status st;
    int64_t T = 0;
    bool decode = n_seq > 0;
    for (int i = 0; i < n_seq; i++) {
        T += seq[i].n_new;
        decode = decode && seq[i].n_new == 1;
    }
    e->n_logits = 0;
    if (T > e->max_tokens || (mode == DPEP_LOGITS_LAST && n_seq > e->max_tokens)) {
        DPEP_ERROR("engine: %lld tokens of %d sequences in one step (max %d)", (long long)T, n_seq,
                   e->max_tokens);
        return DPEP_ERR_INTERNAL;
    }
    for (int64_t t = 0; t < T; t++) {
        int32_t id = tokens[t];
        if (id < 0 || id >= m->vocab) {
            DPEP_ERROR("engine: token id %d out of range [0, %d)", id, m->vocab);
            return DPEP_ERR_INVALID;
        }
    }
    /* a decode step padded to its bucket: sequences of token 0 at position 0
     * of the padding slots after the real ones (their rows are dropped below,
     * their expert picks not counted: count_lim) */
    const int64_t T_real = T;
    const int n_seq_real = n_seq;
    if (e->pad_on && decode && T <= e->pad_max) {
        const int64_t Tp = pad_bucket(T, e->pad_max);
        if (Tp > T && Tp - T <= e->n_pad_slots) {
            memcpy(e->seq_pad, seq, sizeof *seq * (size_t)n_seq);
            memcpy(e->ids_pad, tokens, sizeof *tokens * (size_t)T);
            for (int64_t i = 0; i < Tp - T; i++) {
                e->seq_pad[n_seq + i] = (dpep_attn_seq){e->pad_slot[i], 1, 0};
                e->ids_pad[T + i] = 0;
            }
            e->padded_steps++;
            e->padding_rows += Tp - T;
            seq = e->seq_pad;
            tokens = e->ids_pad;
            n_seq = (int)Tp;
            T = Tp;
        }
    }
    if (e->pad_on) { /* copied when it changes (a steady batch: never) */
        const int64_t lim = T_real * (int64_t)(m->topk > 0 ? m->topk : 1);
        if (lim != e->count_lim_h) {
            st = e->dev.ops->to_device(&e->dev, e->count_lim, &lim, sizeof lim);
            if (st != DPEP_OK) return step_failed(e, st, -1, "copying the step's row count");
            e->count_lim_h = lim;
        }
    }
    /* the step's ids onto the device (the one copy the embedding reads) */
    if (T > 0) {
        st = e->dev.ops->to_device(&e->dev, e->ids, tokens, sizeof(int32_t) * (size_t)T);
        if (st != DPEP_OK) return step_failed(e, st, -1, "copying the token ids");
    }
    int64_t n_rows = 0;
    int fl = -1, shape = 0;
    const char *fp = "";
    /* the attention staged once for every layer (on a GPU one host-to-device
     * copy per step instead of one per layer; what a graph replays against) */
    st = dpep_attn_stage(e->attn, e->kv, seq, n_seq, &shape);
    if (st != DPEP_OK) return step_failed(e, st, -1, "staging the attention");
    if (e->graphs_on && decode && T <= e->graph_max_bs && shape >= 0) {
        /* the routed experts without a host sync (the grouped tiles), so
         * that the step can be captured; other steps keep cuBLAS per expert */
        dpep_moe_set_sync_free(e->moe, true);
        st = forward_graph(e, seq, n_seq, T, mode, shape, &n_rows, &fl, &fp);
        dpep_moe_set_sync_free(e->moe, false);
    } else {
        if (e->graphs_on && decode) e->graph_eager++;
        st = forward_body(e, seq, n_seq, T, mode, &n_rows, &fl, &fp);
    }
    dpep_attn_unstage(e->attn);
    if (st != DPEP_OK) return step_failed(e, st, fl, fp);
    DPEP_TRY(step_check(e, "the forward step"));
    if (n_seq != n_seq_real) /* padded: the real rows come first */
        n_rows = mode == DPEP_LOGITS_ALL ? T_real : mode == DPEP_LOGITS_LAST ? n_seq_real : 0;
    if (n_rows == 0) return DPEP_OK;
    if (logits) {
        /* the caller's rows are host memory */
        st = e->dev.ops->to_host(&e->dev, logits, e->logits,
                                 sizeof(float) * (size_t)n_rows * (size_t)m->vocab);
        if (st != DPEP_OK) return step_failed(e, st, -1, "copying the logits back");
        return DPEP_OK;
    }
    e->n_logits = (int)n_rows;
    return DPEP_OK;
}

dpep_status dpep_engine_sample(dpep_engine *e, int n, const dpep_sampling *const *sp,
                               uint64_t *const *rng, int32_t *ids, double *logprob)
{
    if (n < 0 || n > e->n_logits) {
        DPEP_ERROR("engine: sampling %d rows of %d kept logits", n, e->n_logits);
        return DPEP_ERR_INTERNAL;
    }
    e->ops->sample(e->logits, n, e->m->vocab, sp, rng, e->scratch, ids, logprob);
    return step_check(e, "sampling");
}
