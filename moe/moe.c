/* moe.c — the MoE layer context: expert placement, the pool, dispatch and
 * combine over the EP comm (alltoall: each token once per destination rank;
 * allgather: the EP group's tokens, reduce-scatter back), the MoE-TP stage
 * (union of the group's tokens, partial outputs reduce-scattered), shared
 * experts and dense FFN layers. CPU backend. */
#include <stdlib.h>
#include <string.h>

#include "dpep_moe.h"
#include "moe_internal.h"

/* ------------------------------------------------------------------------ */
/* Placement                                                                 */
/* ------------------------------------------------------------------------ */
static dpep_status placement_alloc(int E, int R, dpep_moe_placement *p)
{
    memset(p, 0, sizeof *p);
    p->n_experts = E;
    p->n_ranks = R;
    p->rank = calloc((size_t)E, sizeof(int));
    p->slot = calloc((size_t)E, sizeof(int));
    p->n_slots = calloc((size_t)R, sizeof(int));
    if (!p->rank || !p->slot || !p->n_slots) {
        dpep_moe_placement_free(p);
        return DPEP_ERR_NOMEM;
    }
    return DPEP_OK;
}

void dpep_moe_placement_free(dpep_moe_placement *p)
{
    if (!p) return;
    free(p->rank);
    free(p->slot);
    free(p->n_slots);
    memset(p, 0, sizeof *p);
}

dpep_status dpep_moe_placement_contiguous(int n_experts, int n_ranks, dpep_moe_placement *out)
{
    if (n_experts < 1 || n_ranks < 1 || n_experts % n_ranks != 0) {
        DPEP_ERROR("moe placement: %d experts do not split evenly over %d EP ranks", n_experts,
                   n_ranks);
        return DPEP_ERR_INVALID;
    }
    dpep_moe_placement p;
    DPEP_TRY(placement_alloc(n_experts, n_ranks, &p));
    int per = n_experts / n_ranks;
    for (int e = 0; e < n_experts; e++) {
        p.rank[e] = e / per;
        p.slot[e] = e % per;
    }
    for (int r = 0; r < n_ranks; r++) p.n_slots[r] = per;
    *out = p;
    return DPEP_OK;
}

dpep_status dpep_moe_placement_from_table(int n_experts, int n_ranks, const int *rank,
                                          const int *slot, dpep_moe_placement *out,
                                          dpep_diag *diag)
{
    if (n_experts < 1 || n_ranks < 1) {
        if (diag) dpep_diag_add(diag, DPEP_DIAG_ERROR, "moe placement: %d experts, %d ranks",
                                n_experts, n_ranks);
        return DPEP_ERR_INVALID;
    }
    dpep_moe_placement p;
    DPEP_TRY(placement_alloc(n_experts, n_ranks, &p));
    int bad = 0;
    for (int e = 0; e < n_experts; e++) {
        if (rank[e] < 0 || rank[e] >= n_ranks || slot[e] < 0 || slot[e] >= n_experts) {
            if (diag) dpep_diag_add(diag, DPEP_DIAG_ERROR,
                                    "moe placement: expert %d: rank %d slot %d out of range", e,
                                    rank[e], slot[e]);
            bad = 1;
            continue;
        }
        p.rank[e] = rank[e];
        p.slot[e] = slot[e];
        p.n_slots[rank[e]]++;
    }
    /* each rank's slots must be 0..n-1, each used once */
    for (int e = 0; !bad && e < n_experts; e++) {
        if (p.slot[e] >= p.n_slots[p.rank[e]]) bad = 1;
        for (int f = e + 1; !bad && f < n_experts; f++)
            if (p.rank[f] == p.rank[e] && p.slot[f] == p.slot[e]) bad = 1;
        if (bad && diag)
            dpep_diag_add(diag, DPEP_DIAG_ERROR,
                          "moe placement: rank %d: slots not dense from 0 or used twice (expert %d)",
                          p.rank[e], e);
    }
    if (bad) {
        dpep_moe_placement_free(&p);
        return DPEP_ERR_INVALID;
    }
    *out = p;
    return DPEP_OK;
}

/* ------------------------------------------------------------------------ */
/* Context                                                                   */
/* ------------------------------------------------------------------------ */
void dpep_moe_config_from_model(const dpep_model_config *m, dpep_moe_config *out)
{
    dpep_moe_config c;
    memset(&c, 0, sizeof c);
    c.hidden = m->hidden;
    dpep_moe_gate_cfg_from_model(m, &c.gate);
    c.moe_inter = m->moe_inter;
    c.n_shared = m->n_shared;
    c.dense_inter = m->inter;
    c.backend = DPEP_A2A_ALLTOALL;
    c.chunk = 1024;
    *out = c;
}

static int comm_size(dpep_comm *c) { return c ? dpep_comm_size(c) : 1; }
static int comm_rank(dpep_comm *c) { return c ? dpep_comm_rank(c) : 0; }
static int64_t imax64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Pool carving: sizes first (bytes, 64-byte aligned), then pointers. */
typedef struct carve {
    unsigned char *base;
    size_t off;
} carve;
static void *take(carve *c, size_t bytes)
{
    void *p = c->base ? c->base + c->off : NULL;
    c->off += (bytes + 63) & ~(size_t)63;
    return p;
}

/* The EP buffers of the MPI transports (alltoall over MPI, allgather). */
static void carve_ep_bufs(dpep_moe *m, carve *c)
{
    const int64_t H = m->H, S = m->S, Um = m->Um, ep = m->ep_size;
    const bool a2a = m->cfg.backend == DPEP_A2A_ALLTOALL;
    const size_t f = sizeof(float);
    m->a2a_send = a2a ? take(c, f * (size_t)(Um * m->D * S)) : NULL;
    m->big_recv = take(c, f * (size_t)(ep * Um * S));
    m->big_part = take(c, f * (size_t)(ep * Um * H));
    m->comb_recv = a2a ? take(c, f * (size_t)(Um * m->D * H)) : NULL;
}

static void carve_pool(dpep_moe *m, carve *c)
{
    const int64_t H = m->H, S = m->S, E = m->cfg.gate.n_experts, k = m->k;
    const int64_t Tm = m->Tm, Um = m->Um, ep = m->ep_size;
    const int64_t kl = k < m->n_local ? k : m->n_local;
    const bool a2a = m->cfg.backend == DPEP_A2A_ALLTOALL;
    const size_t f = sizeof(float);
    m->logits = take(c, f * (size_t)(Tm * E));
    m->g_idx = take(c, sizeof(int32_t) * (size_t)(Tm * k));
    m->g_w = take(c, f * (size_t)(Tm * k));
    m->own_pack = m->tp_size > 1 ? take(c, f * (size_t)(Tm * S)) : NULL;
    /* alltoall with moe_tp = 1 reads the caller's arrays and sums into
     * `out`: no union copy, no union output */
    const bool packed = m->tp_size > 1 || !a2a;
    m->ubuf = packed ? take(c, f * (size_t)(Um * S)) : NULL;
    if (!m->shm_wanted) carve_ep_bufs(m, c);
    m->uout = packed ? take(c, f * (size_t)(Um * H)) : NULL;
    m->ushared = m->cfg.n_shared > 0 ? take(c, f * (size_t)(Um * H)) : NULL;
    m->rs_pad = m->tp_size > 1 ? take(c, f * (size_t)(m->tp_size * Tm * H)) : NULL;
    m->rs_recv = m->tp_size > 1 ? take(c, f * (size_t)(Tm * H)) : NULL;
    m->work = take(c, f * (size_t)(2 * m->chunk * H + 2 * m->chunk * m->I_max));
    m->tok_r = a2a ? take(c, sizeof(int32_t) * (size_t)(Um * m->D)) : NULL;
    m->tok_i = a2a ? take(c, sizeof(int32_t) * (size_t)(Um * m->D)) : NULL;
    m->tok_n = a2a ? take(c, sizeof(int32_t) * (size_t)Um) : NULL;
    m->row_base = take(c, sizeof(float *) * (size_t)ep);
    m->src_base = take(c, sizeof(float *) * (size_t)ep);
    m->peer_recv = take(c, sizeof(float *) * (size_t)ep);
    m->peer_part = take(c, sizeof(float *) * (size_t)ep);
    m->peer_cnt = take(c, sizeof(int64_t *) * (size_t)ep);
    m->px = take(c, sizeof(float *) * (size_t)(ep * Um * kl));
    m->pp = take(c, sizeof(float *) * (size_t)(ep * Um * kl));
    m->slot_w = take(c, f * (size_t)(ep * Um * kl));
    m->self_slot = a2a ? take(c, sizeof(int32_t) * (size_t)(Um * k)) : NULL;
    m->self_tok = a2a ? take(c, sizeof(int32_t) * (size_t)Um) : NULL;
    m->seg = take(c, sizeof(moe_rows) * (size_t)ep);
    if (m->dn_size > 1) {
        m->dn_send = take(c, f * (size_t)(Tm * H));
        m->dn_recv = take(c, f * (size_t)(m->dn_size * Tm * H));
        m->dn_part = take(c, f * (size_t)(m->dn_size * Tm * H));
        m->dn_rs = take(c, f * (size_t)(Tm * H));
    }
    int64_t g = imax64(imax64(ep, m->tp_size), m->dn_size);
    int64_t n64 = 13 * ep + 2 * g + 3 * m->tp_size + ep + m->n_local + 1 + m->dn_size;
    int64_t *a = take(c, sizeof(int64_t) * (size_t)n64);
    m->i64 = a;
    if (!a) return;
    m->sc = a; a += ep;
    m->sd = a; a += ep;
    m->rc = a; a += ep;
    m->rd = a; a += ep;
    m->tok_send = a; a += ep;
    m->tok_recv = a; a += ep;
    m->bytes_send = a; a += ep;
    m->bytes_recv = a; a += ep;
    m->stamp = a; a += ep;
    m->srow = a; a += ep;
    m->rrow = a; a += ep;
    m->row0 = a; a += ep;
    m->src0 = a; a += ep;
    m->one = a; a += g;
    m->seq = a; a += g;
    m->tp_T = a; a += m->tp_size;
    m->tp_cnt = a; a += m->tp_size;
    m->tp_dsp = a; a += m->tp_size;
    m->ep_U = a; a += ep;
    m->slot_cnt = a; a += m->n_local + 1;
    m->dn_T = a;
}

static bool shm_wanted(const dpep_moe_config *cfg)
{
    return cfg->backend == DPEP_A2A_ALLTOALL && cfg->transport != DPEP_A2A_TRANSPORT_MPI &&
           cfg->ep && dpep_comm_size(cfg->ep) > 1;
}

/* Checks and the pool: this rank alone. */
static dpep_status create_local(const dpep_moe_config *cfg, dpep_moe **out, dpep_diag *diag)
{
    DPEP_TRY(dpep_moe_gate_check(&cfg->gate, diag));
    int bad = 0;
#define CFG_BAD(...)                                                           \
    do {                                                                       \
        if (diag) dpep_diag_add(diag, DPEP_DIAG_ERROR, __VA_ARGS__);           \
        bad = 1;                                                               \
    } while (0)
    int ep = comm_size(cfg->ep), tp = comm_size(cfg->moe_tp), dn = comm_size(cfg->dense);
    if (!cfg->ep) CFG_BAD("moe: no EP comm given (use a comm of size 1 for ep = 1)");
    if (cfg->hidden < 1) CFG_BAD("moe: hidden_size %d (expected > 0)", cfg->hidden);
    if (cfg->max_tokens < 0 || cfg->max_tokens > INT32_MAX)
        CFG_BAD("moe: max_tokens %lld (expected 0..%d)", (long long)cfg->max_tokens, INT32_MAX);
    if (cfg->moe_inter < 1 || cfg->moe_inter % tp)
        CFG_BAD("moe: moe_intermediate_size %d not divisible by moe_tp %d", cfg->moe_inter, tp);
    if (cfg->n_shared < 0 || ((int64_t)cfg->n_shared * cfg->moe_inter) % tp)
        CFG_BAD("moe: n_shared_experts %d x moe_intermediate_size %d not divisible by moe_tp %d",
                cfg->n_shared, cfg->moe_inter, tp);
    if (cfg->dense_inter < 0 || (cfg->dense_inter && cfg->dense_inter % dn))
        CFG_BAD("moe: intermediate_size %d not divisible by the dense TP size %d",
                cfg->dense_inter, dn);
    if (cfg->placement && (cfg->placement->n_ranks != ep ||
                           cfg->placement->n_experts != cfg->gate.n_experts))
        CFG_BAD("moe: placement for %d experts on %d ranks, expected %d on %d",
                cfg->placement->n_experts, cfg->placement->n_ranks, cfg->gate.n_experts, ep);
    if (!cfg->placement && cfg->gate.n_experts % ep)
        CFG_BAD("moe: n_routed_experts %d not divisible by ep %d", cfg->gate.n_experts, ep);
    if ((int64_t)tp * cfg->max_tokens * ep > INT32_MAX)
        CFG_BAD("moe: ep x moe_tp x max_tokens exceeds 2^31 rows");
#undef CFG_BAD
    if (bad) return DPEP_ERR_INVALID;

    dpep_moe *m = calloc(1, sizeof *m);
    if (!m) return DPEP_ERR_NOMEM;
    m->cfg = *cfg;
    dpep_status st = cfg->placement
        ? dpep_moe_placement_from_table(cfg->gate.n_experts, ep, cfg->placement->rank,
                                        cfg->placement->slot, &m->pl, diag)
        : dpep_moe_placement_contiguous(cfg->gate.n_experts, ep, &m->pl);
    if (st != DPEP_OK) {
        free(m);
        return st;
    }
    m->cfg.placement = &m->pl;
    m->H = cfg->hidden;
    m->k = cfg->gate.topk;
    m->S = m->H + 2 * m->k;
    m->ep_size = ep;
    m->ep_rank = comm_rank(cfg->ep);
    m->tp_size = tp;
    m->tp_rank = comm_rank(cfg->moe_tp);
    m->dn_size = dn;
    m->n_local = m->pl.n_slots[m->ep_rank];
    m->D = m->k < ep ? m->k : ep;
    m->Tm = cfg->max_tokens;
    m->Um = (int64_t)tp * cfg->max_tokens;
    m->chunk = cfg->chunk > 0 ? cfg->chunk : 1024;
    m->I_max = imax64(imax64(cfg->moe_inter / tp, (int64_t)cfg->n_shared * cfg->moe_inter / tp),
                      dn > 0 ? cfg->dense_inter / dn : 0);
    m->shm_wanted = shm_wanted(cfg);
    carve c = {NULL, 0};
    carve_pool(m, &c);
    m->pool_bytes = c.off;
    m->pool = aligned_alloc(64, m->pool_bytes);
    if (!m->pool) {
        DPEP_ERROR("moe: cannot allocate the %zu-byte buffer pool (max_tokens %lld, ep %d, "
                   "moe_tp %d, hidden %d)", m->pool_bytes, (long long)m->Tm, ep, tp, m->H);
        dpep_moe_free(m);
        return DPEP_ERR_NOMEM;
    }
    /* zeroed once: padding rows that travel in collectives are defined */
    memset(m->pool, 0, m->pool_bytes);
    c.base = m->pool;
    c.off = 0;
    carve_pool(m, &c);
    int64_t g = imax64(imax64(ep, tp), dn);
    for (int64_t i = 0; i < g; i++) {
        m->one[i] = 1;
        m->seq[i] = i;
    }
    *out = m;
    return DPEP_OK;
}

/* The collective part: agree that every EP rank has its context, then map
 * the node-shared segments, or (auto, when they cannot be had) give the
 * context the MPI transport's buffers. */
static dpep_status shm_connect(dpep_moe *m, dpep_status local, const dpep_moe_config *cfg,
                               dpep_diag *diag)
{
    dpep_comm *c = cfg->ep;
    const int ep = dpep_comm_size(c);
    int64_t mine[2] = {local == DPEP_OK, m ? m->Um : 0};
    int64_t *all = malloc(sizeof(int64_t) * 2 * (size_t)ep); /* once, at create */
    if (!all) {
        DPEP_ERROR("moe: out of memory for %d EP ranks' sizes", ep);
        MPI_Abort(MPI_COMM_WORLD, 1); /* the peers wait in the allgather below */
    }
    dpep_status gst = dpep_comm_allgather(c, mine, all, 2, DPEP_COMM_I64);
    int64_t stride = 0;
    int bad_rank = -1;
    for (int r = 0; gst == DPEP_OK && r < ep; r++) {
        if (!all[2 * r] && bad_rank < 0) bad_rank = r;
        stride = imax64(stride, all[2 * r + 1]);
    }
    free(all);
    if (gst != DPEP_OK) return gst;
    if (local != DPEP_OK) return local;
    if (bad_rank >= 0) {
        if (diag) dpep_diag_add(diag, DPEP_DIAG_ERROR, "moe: EP rank %d could not create its MoE "
                                "context (its own error is logged there)", bad_rank);
        return DPEP_ERR_INVALID;
    }
    const int64_t H = m->H, S = m->S;
    const size_t hdr = ((size_t)ep * sizeof(int64_t) + 63) & ~(size_t)63;
    const size_t recv_b = sizeof(float) * (size_t)(ep * stride * S);
    const size_t bytes = hdr + recv_b + sizeof(float) * (size_t)(ep * stride * H);
    dpep_comm_shm *win = NULL;
    dpep_status st = dpep_comm_shm_create(c, bytes, &win);
    if (st == DPEP_OK) {
        m->win = win;
        m->shm = true;
        m->Ustride = stride;
        m->win_bytes = bytes;
        for (int r = 0; r < ep; r++) {
            unsigned char *b = dpep_comm_shm_ptr(win, r);
            m->peer_cnt[r] = (int64_t *)(void *)b;
            m->peer_recv[r] = (float *)(void *)(b + hdr);
            m->peer_part[r] = (float *)(void *)(b + hdr + recv_b);
        }
        m->big_recv = m->peer_recv[m->ep_rank];
        m->big_part = m->peer_part[m->ep_rank];
        return DPEP_OK;
    }
    if (st == DPEP_ERR_MPI || cfg->transport == DPEP_A2A_TRANSPORT_SHM) {
        if (diag)
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "moe: parallel.moe_a2a_transport shm: %s (expected "
                          "the EP group on one node with room in /dev/shm; use auto or mpi)",
                          st == DPEP_ERR_UNSUPPORTED ? "the EP group spans nodes"
                          : st == DPEP_ERR_NOMEM     ? "no room for the node-shared segments"
                                                     : "the shared window failed");
        return st == DPEP_ERR_MPI ? st : DPEP_ERR_INVALID;
    }
    /* auto: the MPI transport, with its own buffers */
    if (m->ep_rank == 0)
        DPEP_INFO("moe: alltoall dispatch/combine over MPI (%s)",
                  st == DPEP_ERR_UNSUPPORTED ? "the EP group spans nodes"
                                             : "no room for node-shared memory");
    carve cv = {NULL, 0};
    carve_ep_bufs(m, &cv);
    m->mpi_bytes = cv.off;
    m->mpi_bufs = aligned_alloc(64, m->mpi_bytes);
    if (!m->mpi_bufs) {
        DPEP_ERROR("moe: cannot allocate the %zu-byte MPI transport buffers", m->mpi_bytes);
        return DPEP_ERR_NOMEM;
    }
    memset(m->mpi_bufs, 0, m->mpi_bytes);
    cv.base = m->mpi_bufs;
    cv.off = 0;
    carve_ep_bufs(m, &cv);
    return DPEP_OK;
}

dpep_status dpep_moe_create(const dpep_moe_config *cfg, dpep_moe **out, dpep_diag *diag)
{
    dpep_moe *m = NULL;
    dpep_status st = create_local(cfg, &m, diag);
    if (shm_wanted(cfg)) {
        /* every EP rank comes here, also one whose checks failed */
        dpep_status cs = shm_connect(m, st, cfg, diag);
        if (st == DPEP_OK) st = cs;
    }
    if (st != DPEP_OK) {
        if (m) {
            /* only a failed connect leaves no window: free is local here */
            dpep_moe_free(m);
        }
        return st;
    }
    *out = m;
    return DPEP_OK;
}

void dpep_moe_free(dpep_moe *m)
{
    if (!m) return;
    dpep_comm_shm_destroy(m->win);
    free(m->mpi_bufs);
    free(m->pool);
    dpep_moe_placement_free(&m->pl);
    free(m);
}

size_t dpep_moe_pool_bytes(const dpep_moe *m)
{
    return m->pool_bytes + m->win_bytes + m->mpi_bytes;
}

const char *dpep_moe_transport_name(const dpep_moe *m)
{
    return m->cfg.backend == DPEP_A2A_ALLGATHER ? "allgather" : m->shm ? "shm" : "mpi";
}

void dpep_moe_get_stats(const dpep_moe *m, dpep_moe_stats *out) { *out = m->st; }

/* ------------------------------------------------------------------------ */
/* Stages                                                                    */
/* ------------------------------------------------------------------------ */
static void pack_rows(const dpep_moe *m, const float *x, int64_t T, const int32_t *idx,
                      const float *w, float *dst)
{
    const int H = m->H, k = m->k;
    for (int64_t t = 0; t < T; t++) {
        float *row = dst + t * m->S;
        memcpy(row, x + t * H, sizeof(float) * (size_t)H);
        memcpy(moe_row_slot(row, H), idx + t * k, sizeof(int32_t) * (size_t)k);
        memcpy(moe_row_w(row, H, k), w + t * k, sizeof(float) * (size_t)k);
    }
}

static void view_packed(dpep_moe *m)
{
    m->ux = m->ubuf;
    m->ux_ld = m->S;
    m->uidx = moe_row_slot_c(m->ubuf, m->H);
    m->uw = m->ubuf + m->H + m->k;
    m->um_ld = m->S;
}

/* MoE-TP union: the group's tokens (rank order), tp_T = their counts. */
static dpep_status tp_gather(dpep_moe *m, const float *x, int64_t T, const int32_t *idx,
                             const float *w)
{
    if (m->tp_size == 1) {
        m->U = T;
        m->tp_T[0] = T;
        m->Tpad_tp = T;
        if (m->cfg.backend == DPEP_A2A_ALLTOALL) {
            /* no copy: dispatch packs straight from the caller's arrays */
            m->ux = x;
            m->ux_ld = m->H;
            m->uidx = idx;
            m->uw = w;
            m->um_ld = m->k;
        } else {
            pack_rows(m, x, T, idx, w, m->ubuf);
            view_packed(m);
        }
        return DPEP_OK;
    }
    pack_rows(m, x, T, idx, w, m->own_pack);
    int64_t myT = T;
    DPEP_TRY(dpep_comm_allgather(m->cfg.moe_tp, &myT, m->tp_T, 1, DPEP_COMM_I64));
    int64_t U = 0, mx = 0;
    for (int r = 0; r < m->tp_size; r++) {
        m->tp_cnt[r] = m->tp_T[r] * m->S;
        m->tp_dsp[r] = U * m->S;
        U += m->tp_T[r];
        mx = imax64(mx, m->tp_T[r]);
    }
    DPEP_TRY(dpep_comm_allgatherv(m->cfg.moe_tp, m->own_pack, T * m->S, m->ubuf, m->tp_cnt,
                                  m->tp_dsp, DPEP_COMM_I32));
    m->U = U;
    m->Tpad_tp = mx;
    view_packed(m);
    return DPEP_OK;
}

/* tok_send[r]: tokens for EP rank r, each token once per rank holding any
 * of its experts. Leaves stamp[] at -1. */
static void count_destinations(dpep_moe *m)
{
    const int k = m->k, ep = m->ep_size;
    const int *prank = m->pl.rank;
    for (int r = 0; r < ep; r++) {
        m->tok_send[r] = 0;
        m->stamp[r] = -1;
    }
    for (int64_t t = 0; t < m->U; t++) {
        const int32_t *id = m->uidx + t * m->um_ld;
        for (int j = 0; j < k; j++) {
            int r = prank[id[j]];
            if (m->stamp[r] != t) {
                m->stamp[r] = t;
                m->tok_send[r]++;
            }
        }
    }
    for (int r = 0; r < ep; r++) m->stamp[r] = -1;
}

/* The one pass over the tokens: row i for rank r (tokens ascending) is
 * written at row_base[r] + (row0[r] + i) * S as [x | local slot ids (-1
 * for experts elsewhere) | weights]; tok_r/tok_i/tok_n record where each
 * token went, in rank order, for combine. */
static void write_rows(dpep_moe *m)
{
    const int H = m->H, k = m->k, ep = m->ep_size, D = m->D, me = m->ep_rank;
    const int64_t S = m->S;
    const int *prank = m->pl.rank, *pslot = m->pl.slot;
    int64_t *fill = m->ep_U; /* fill cursor [ep] (ep_U is the allgather path's) */
    for (int r = 0; r < ep; r++) fill[r] = 0;
    for (int64_t t = 0; t < m->U; t++) {
        const float *src = m->ux + t * m->ux_ld;
        const int32_t *id = m->uidx + t * m->um_ld;
        const float *wt = m->uw + t * m->um_ld;
        int32_t *tr = m->tok_r + t * D, *ti = m->tok_i + t * D;
        int n = 0;
        for (int j = 0; j < k; j++) {
            int r = prank[id[j]];
            if (m->stamp[r] == t) continue;
            m->stamp[r] = t;
            int64_t i = fill[r]++;
            int32_t *sl;
            if (r == me) {
                /* own rows stay where they are: their token and slot ids */
                m->self_tok[i] = (int32_t)t;
                sl = m->self_slot + i * k;
            } else {
                float *row = m->row_base[r] + (m->row0[r] + i) * S;
                memcpy(row, src, sizeof(float) * (size_t)H);
                sl = moe_row_slot(row, H);
                memcpy(moe_row_w(row, H, k), wt, sizeof(float) * (size_t)k);
            }
            for (int q = 0; q < k; q++) sl[q] = prank[id[q]] == r ? pslot[id[q]] : -1;
            /* insertion by rank: the summation order is the rank order */
            int p = n++;
            while (p > 0 && tr[p - 1] > r) {
                tr[p] = tr[p - 1];
                ti[p] = ti[p - 1];
                p--;
            }
            tr[p] = r;
            ti[p] = (int32_t)i;
        }
        m->tok_n[t] = n;
    }
}

/* A run of n packed rows [x | slots | weights] starting at `rows`. */
static moe_rows packed_rows(const dpep_moe *m, const float *rows, float *part, int64_t n)
{
    moe_rows q = {.x = rows, .tok = NULL, .ldx = m->S,
                  .slot = moe_row_slot_c(rows, m->H), .ld_slot = m->S,
                  .w = rows + m->H + m->k, .ld_w = m->S, .part = part, .n = n};
    return q;
}

/* This rank's own rows, read where they are (the caller's x and weights,
 * through self_tok) with the slot ids write_rows put in self_slot. */
static moe_rows own_rows(const dpep_moe *m, float *part)
{
    moe_rows q = {.x = m->ux, .tok = m->self_tok, .ldx = m->ux_ld, .slot = m->self_slot,
                  .ld_slot = m->k, .w = m->uw, .ld_w = m->um_ld, .part = part,
                  .n = m->tok_send[m->ep_rank]};
    return q;
}

static void dispatch_stats(dpep_moe *m, int64_t so, int64_t ro)
{
    const int64_t S = m->S;
    for (int r = 0; r < m->ep_size; r++) {
        m->bytes_send[r] = m->tok_send[r] * S * 4;
        m->bytes_recv[r] = m->tok_recv[r] * S * 4;
    }
    m->st.rows_sent = so;
    m->st.rows_recv = ro;
    m->st.dispatch_bytes_sent = so * S * 4;
    m->st.dispatch_bytes_recv = ro * S * 4;
}

/* alltoall over MPI: counts first, so that the receive layout is exact;
 * rows packed in destination order (this rank's own rows are not copied:
 * the experts read them in place), then one all-to-all-v. */
static dpep_status dispatch_alltoall_mpi(dpep_moe *m)
{
    const int ep = m->ep_size, me = m->ep_rank;
    const int64_t S = m->S;
    count_destinations(m);
    DPEP_TRY(dpep_comm_alltoallv(m->cfg.ep, m->tok_send, m->one, m->seq, m->tok_recv, m->one,
                                 m->seq, DPEP_COMM_I64));
    int64_t so = 0, ro = 0;
    for (int r = 0; r < ep; r++) {
        m->srow[r] = so;
        m->rrow[r] = ro;
        so += m->tok_send[r];
        ro += m->tok_recv[r];
        m->sc[r] = r == me ? 0 : m->tok_send[r] * S;
        m->sd[r] = m->srow[r] * S;
        m->rc[r] = r == me ? 0 : m->tok_recv[r] * S;
        m->rd[r] = m->rrow[r] * S;
    }
    if (ro > (int64_t)ep * m->Um) {
        DPEP_ERROR("moe: dispatch: %lld rows to receive, the pool holds %lld (a rank passed more "
                   "than max_tokens)", (long long)ro, (long long)ep * m->Um);
        return DPEP_ERR_INTERNAL;
    }
    for (int r = 0; r < ep; r++) {
        m->row_base[r] = m->a2a_send; /* unused for r == me */
        m->row0[r] = m->srow[r];
    }
    write_rows(m);
    DPEP_TRY(dpep_comm_alltoallv(m->cfg.ep, m->a2a_send, m->sc, m->sd, m->big_recv, m->rc, m->rd,
                                 DPEP_COMM_I32));
    for (int r = 0; r < ep; r++)
        m->seg[r] = r == me ? own_rows(m, m->big_part + m->rrow[me] * m->H)
                            : packed_rows(m, m->big_recv + m->rrow[r] * S,
                                          m->big_part + m->rrow[r] * m->H, m->tok_recv[r]);
    m->n_seg = ep;
    m->n_rows = ro;
    dispatch_stats(m, so, ro);
    return DPEP_OK;
}

/* alltoall over node-shared memory: every rank writes its rows for rank r
 * straight into r's segment, in the block reserved for it (rows
 * me*Ustride...), and its row count into r's header; one fence. No count
 * exchange, no packing pass, no receive copy, and no copy at all of the
 * rows for this rank (the experts read them in place). Reuse is safe: a
 * rank writes r's blocks only after leaving the previous step's combine
 * round, which needs r's announcement, made once r's experts were done
 * reading them; a rank rewrites its own partial sums only after this
 * dispatch's fence, which every reader of the previous ones has passed. */
static dpep_status dispatch_alltoall_shm(dpep_moe *m)
{
    const int ep = m->ep_size, me = m->ep_rank;
    count_destinations(m);
    for (int r = 0; r < ep; r++) {
        m->row_base[r] = m->peer_recv[r];
        m->row0[r] = (int64_t)me * m->Ustride;
    }
    write_rows(m);
    for (int r = 0; r < ep; r++) m->peer_cnt[r][me] = m->tok_send[r];
    DPEP_TRY(dpep_comm_shm_fence(m->win));
    int64_t so = 0, ro = 0;
    const int64_t *cnt = m->peer_cnt[me];
    for (int s = 0; s < ep; s++) {
        if (cnt[s] < 0 || cnt[s] > m->Ustride) {
            DPEP_ERROR("moe: dispatch: EP rank %d wrote %lld rows into a block of %lld (shared "
                       "segment overwritten?)", s, (long long)cnt[s], (long long)m->Ustride);
            return DPEP_ERR_INTERNAL;
        }
        m->tok_recv[s] = cnt[s];
        const int64_t r0 = (int64_t)s * m->Ustride;
        if (s == me) {
            m->seg[s] = own_rows(m, m->big_part + r0 * m->H);
        } else {
            m->seg[s] = packed_rows(m, m->big_recv + r0 * m->S, m->big_part + r0 * m->H, cnt[s]);
        }
        so += m->tok_send[s];
        ro += cnt[s];
    }
    m->n_seg = ep;
    m->n_rows = ro;
    dispatch_stats(m, so, ro);
    return DPEP_OK;
}

static dpep_status dispatch_allgather(dpep_moe *m)
{
    const int H = m->H, k = m->k, ep = m->ep_size;
    const int64_t S = m->S;
    int64_t myU = m->U;
    DPEP_TRY(dpep_comm_allgather(m->cfg.ep, &myU, m->ep_U, 1, DPEP_COMM_I64));
    int64_t Upad = 0;
    for (int r = 0; r < ep; r++) Upad = imax64(Upad, m->ep_U[r]);
    DPEP_TRY(dpep_comm_allgather(m->cfg.ep, m->ubuf, m->big_recv, Upad * S, DPEP_COMM_I32));
    /* logical expert ids -> this rank's slots (-1 elsewhere, and on padding) */
    for (int r = 0; r < ep; r++)
        for (int64_t t = 0; t < Upad; t++) {
            int32_t *sl = moe_row_slot(m->big_recv + (r * Upad + t) * S, H);
            for (int j = 0; j < k; j++) {
                int e = t < m->ep_U[r] ? sl[j] : -1;
                sl[j] = (e >= 0 && m->pl.rank[e] == m->ep_rank) ? m->pl.slot[e] : -1;
            }
        }
    m->Upad = Upad;
    m->n_rows = (int64_t)ep * Upad;
    m->n_seg = 1;
    m->seg[0] = packed_rows(m, m->big_recv, m->big_part, m->n_rows);
    for (int r = 0; r < ep; r++) {
        m->bytes_send[r] = myU * S * 4;
        m->bytes_recv[r] = m->ep_U[r] * S * 4;
    }
    m->st.rows_sent = myU * ep;
    m->st.rows_recv = m->n_rows;
    m->st.dispatch_bytes_sent = Upad * S * 4 * ep;
    m->st.dispatch_bytes_recv = Upad * S * 4 * ep;
    return DPEP_OK;
}

dpep_status dpep_moe_dispatch(dpep_moe *m, const float *x, int64_t n_tokens,
                              const int32_t *topk_idx, const float *topk_w)
{
    if (n_tokens < 0 || n_tokens > m->Tm) {
        DPEP_ERROR("moe: dispatch: %lld tokens on this rank, the context holds at most %lld "
                   "(max_tokens)", (long long)n_tokens, (long long)m->Tm);
        return DPEP_ERR_INVALID;
    }
    /* caller input: checked before any collective of this step */
    for (int64_t i = 0; i < n_tokens * m->k; i++)
        if (topk_idx[i] < 0 || topk_idx[i] >= m->cfg.gate.n_experts) {
            DPEP_ERROR("moe: dispatch: token %lld: expert id %d out of [0, %d)",
                       (long long)(i / m->k), (int)topk_idx[i], m->cfg.gate.n_experts);
            return DPEP_ERR_INVALID;
        }
    if (m->arrived) {
        DPEP_ERROR("moe: dispatch while the previous step's combine is pending (run_experts "
                   "was followed by another dispatch)");
        return DPEP_ERR_INTERNAL;
    }
    m->T = n_tokens;
    m->have_shared = false;
    memset(&m->st, 0, sizeof m->st);
    m->st.send_bytes = m->bytes_send;
    m->st.recv_bytes = m->bytes_recv;
    DPEP_TRY(tp_gather(m, x, n_tokens, topk_idx, topk_w));
    m->st.tokens_in = m->U;
    if (m->cfg.backend == DPEP_A2A_ALLGATHER) DPEP_TRY(dispatch_allgather(m));
    else if (m->shm) DPEP_TRY(dispatch_alltoall_shm(m));
    else DPEP_TRY(dispatch_alltoall_mpi(m));
    m->stage = 1;
    return DPEP_OK;
}

dpep_status dpep_moe_run_experts(dpep_moe *m, const dpep_layer_w *w, unsigned parts)
{
    if (m->stage < 1) { /* may run again on the same dispatch (benchmarks) */
        DPEP_ERROR("moe: run_experts called without a dispatch");
        return DPEP_ERR_INTERNAL;
    }
    if (m->arrived) { /* peers may be reading this step's partial sums */
        DPEP_ERROR("moe: run_experts twice on one dispatch (shm transport: once per step)");
        return DPEP_ERR_INTERNAL;
    }
    const int tp = m->tp_size;
    if (w->n_experts != m->n_local) {
        DPEP_ERROR("moe: layer holds %d experts, the placement puts %d on EP rank %d",
                   w->n_experts, m->n_local, m->ep_rank);
        return DPEP_ERR_INVALID;
    }
    for (int s = 0; s < w->n_experts; s++)
        if (w->experts[s].inter != m->cfg.moe_inter / tp) {
            DPEP_ERROR("moe: expert slot %d has intermediate %d, expected %d (moe_tp %d)", s,
                       w->experts[s].inter, m->cfg.moe_inter / tp, tp);
            return DPEP_ERR_INVALID;
        }
    if (parts & DPEP_MOE_ROUTED) {
        int64_t pairs = 0;
        m->st.expert_flops =
            moe_experts_cpu(w->experts, m->n_local, m->H, m->k, m->seg, m->n_seg, m->chunk, m->px,
                            m->pp, m->slot_w, m->slot_cnt, m->work, m->I_max, &pairs);
        m->st.expert_rows = pairs;
    } else {
        for (int g = 0; g < m->n_seg; g++)
            if (m->seg[g].n)
                memset(m->seg[g].part, 0, sizeof(float) * (size_t)m->seg[g].n * (size_t)m->H);
    }
    /* shm: this rank's partial sums are complete and its received rows
     * read: tell the peers now, so that the shared experts below overlap
     * their lateness (combine waits) */
    if (m->shm && !m->arrived) {
        DPEP_TRY(dpep_comm_shm_arrive(m->win));
        m->arrived = true;
    }
    if ((parts & DPEP_MOE_SHARED) && m->ushared && w->shared.inter > 0) {
        if (w->shared.inter != m->cfg.n_shared * m->cfg.moe_inter / tp) {
            DPEP_ERROR("moe: shared experts have intermediate %d, expected %d", w->shared.inter,
                       m->cfg.n_shared * m->cfg.moe_inter / tp);
            return DPEP_ERR_INVALID;
        }
        float *G = m->work + (size_t)2 * m->chunk * m->H;
        dpep_moe_mlp_forward(&w->shared, m->H, m->ux, m->ux_ld, m->U, m->chunk, G, m->ushared,
                             false);
        m->have_shared = true;
    }
    m->stage = 2;
    return DPEP_OK;
}

void dpep_moe_run_identity(dpep_moe *m)
{
    const int H = m->H, k = m->k;
    if (m->arrived) {
        DPEP_ERROR("moe: run_identity twice on one dispatch (shm transport: once per step)");
        return;
    }
    for (int g = 0; g < m->n_seg; g++) {
        const moe_rows *q = &m->seg[g];
        for (int64_t i = 0; i < q->n; i++) {
            const int64_t t = q->tok ? q->tok[i] : i;
            const float *x = q->x + t * q->ldx, *wr = q->w + t * q->ld_w;
            const int32_t *sl = q->slot + i * q->ld_slot;
            float ws = 0.0f;
            for (int j = 0; j < k; j++)
                if (sl[j] >= 0) ws += wr[j];
            float *dst = q->part + i * H;
            for (int h = 0; h < H; h++) dst[h] = ws * x[h];
        }
    }
    m->have_shared = false;
    m->stage = 2;
    if (m->shm && !m->arrived && dpep_comm_shm_arrive(m->win) == DPEP_OK) m->arrived = true;
}

/* dst = src[0] + src[1] + ... + src[n-1], left to right, n >= 1. Blocks of
 * 16 floats stay in registers while the sources stream past: each source
 * row is read once and dst written once. */
static void sum_rows(float *restrict dst, const float *const *src, int n, int H)
{
    int h = 0;
    for (; h + 16 <= H; h += 16) {
        float acc[16];
        const float *restrict s0 = src[0] + h;
        for (int q = 0; q < 16; q++) acc[q] = s0[q];
        for (int j = 1; j < n; j++) {
            const float *restrict sj = src[j] + h;
            for (int q = 0; q < 16; q++) acc[q] += sj[q];
        }
        for (int q = 0; q < 16; q++) dst[h + q] = acc[q];
    }
    for (; h < H; h++) {
        float a = src[0][h];
        for (int j = 1; j < n; j++) a += src[j][h];
        dst[h] = a;
    }
}

/* acc[t] = Σ over token t's destination ranks, in rank order, of its partial
 * row there: one pass that reads each partial once and writes acc once. */
static void sum_partials(dpep_moe *m, float *acc)
{
    const int H = m->H, D = m->D;
    const float *src[DPEP_MOE_MAX_TOPK];
    for (int64_t t = 0; t < m->U; t++) {
        float *dst = acc + t * H;
        const int n = m->tok_n[t];
        const int32_t *tr = m->tok_r + t * D, *ti = m->tok_i + t * D;
        if (n == 0) {
            memset(dst, 0, sizeof(float) * (size_t)H);
            continue;
        }
        for (int j = 0; j < n; j++) src[j] = m->src_base[tr[j]] + (m->src0[tr[j]] + ti[j]) * H;
        sum_rows(dst, src, n, H);
    }
}

dpep_status dpep_moe_combine(dpep_moe *m, float *out)
{
    if (m->stage != 2) {
        DPEP_ERROR("moe: combine called before run_experts");
        return DPEP_ERR_INTERNAL;
    }
    const int H = m->H, ep = m->ep_size, me = m->ep_rank;
    const int64_t U = m->U;
    /* with moe_tp = 1 the sum lands in `out` directly */
    float *acc = m->tp_size == 1 ? out : m->uout;
    if (m->cfg.backend == DPEP_A2A_ALLTOALL && m->shm) {
        /* partial sums stay in their rank's segment; each rank reads its
         * tokens' rows from there once every rank is done writing them */
        /* every rank arrived when its experts were done (run_experts) */
        if (!m->arrived) DPEP_TRY(dpep_comm_shm_arrive(m->win));
        m->arrived = false;
        for (int r = 0; r < ep; r++) DPEP_TRY(dpep_comm_shm_wait(m->win, r));
        for (int r = 0; r < ep; r++) {
            m->src_base[r] = m->peer_part[r];
            m->src0[r] = (int64_t)me * m->Ustride;
        }
        m->st.combine_bytes_sent = m->st.rows_recv * H * 4;
        m->st.combine_bytes_recv = m->st.rows_sent * H * 4;
        sum_partials(m, acc);
        DPEP_TRY(dpep_comm_shm_depart(m->win));
    } else if (m->cfg.backend == DPEP_A2A_ALLTOALL) {
        /* the reverse of dispatch, H floats per row; own rows stay here */
        for (int r = 0; r < ep; r++) {
            m->sc[r] = r == me ? 0 : m->tok_recv[r] * H;
            m->sd[r] = m->rrow[r] * H;
            m->rc[r] = r == me ? 0 : m->tok_send[r] * H;
            m->rd[r] = m->srow[r] * H;
        }
        DPEP_TRY(dpep_comm_alltoallv(m->cfg.ep, m->big_part, m->sc, m->sd, m->comb_recv, m->rc,
                                     m->rd, DPEP_COMM_F32));
        m->st.combine_bytes_sent = m->st.rows_recv * H * 4;
        m->st.combine_bytes_recv = m->st.rows_sent * H * 4;
        for (int r = 0; r < ep; r++) {
            m->src_base[r] = r == me ? m->big_part : m->comb_recv;
            m->src0[r] = r == me ? m->rrow[me] : m->srow[r];
        }
        sum_partials(m, acc);
    } else {
        DPEP_TRY(dpep_comm_reduce_scatter(m->cfg.ep, m->big_part, m->uout, m->Upad * H,
                                          DPEP_COMM_F32));
        m->st.combine_bytes_sent = m->Upad * H * 4 * ep;
        m->st.combine_bytes_recv = m->Upad * H * 4 * ep;
        if (acc != m->uout && U) memcpy(acc, m->uout, sizeof(float) * (size_t)U * (size_t)H);
    }
    if (m->have_shared)
        for (int64_t i = 0; i < U * H; i++) acc[i] += m->ushared[i];
    if (m->tp_size > 1) {
        /* reduce-scatter the partial sums of the MoE-TP group, rows padded
         * to the group's largest token count */
        const int64_t P = m->Tpad_tp;
        int64_t src = 0;
        for (int r = 0; r < m->tp_size; r++) {
            float *blk = m->rs_pad + (int64_t)r * P * H;
            int64_t n = m->tp_T[r];
            if (n) memcpy(blk, m->uout + src * H, sizeof(float) * (size_t)(n * H));
            if (P > n) memset(blk + n * H, 0, sizeof(float) * (size_t)((P - n) * H));
            src += n;
        }
        DPEP_TRY(dpep_comm_reduce_scatter(m->cfg.moe_tp, m->rs_pad, m->rs_recv, P * H,
                                          DPEP_COMM_F32));
        if (m->T) memcpy(out, m->rs_recv, sizeof(float) * (size_t)m->T * (size_t)H);
    }
    m->stage = 0;
    return DPEP_OK;
}

/* ------------------------------------------------------------------------ */
/* The layer                                                                 */
/* ------------------------------------------------------------------------ */
dpep_status dpep_moe_forward_parts(dpep_moe *m, const dpep_layer_w *w, const float *x,
                                   int64_t n_tokens, unsigned parts, float *out,
                                   int32_t *topk_idx, float *topk_w)
{
    if (n_tokens < 0 || n_tokens > m->Tm) {
        DPEP_ERROR("moe: forward: %lld tokens on this rank, the context holds at most %lld "
                   "(max_tokens)", (long long)n_tokens, (long long)m->Tm);
        return DPEP_ERR_INVALID;
    }
    int32_t *idx = topk_idx ? topk_idx : m->g_idx;
    float *wt = topk_w ? topk_w : m->g_w;
    const dpep_moe_gate_cfg *g = &m->cfg.gate;
    dpep_moe_router_logits(w->router, g->n_experts, m->H, x, n_tokens, m->logits);
    dpep_moe_gate_select(g, m->logits, w->router_bias, n_tokens, idx, wt);
    DPEP_TRY(dpep_moe_dispatch(m, x, n_tokens, idx, wt));
    DPEP_TRY(dpep_moe_run_experts(m, w, parts));
    return dpep_moe_combine(m, out);
}

dpep_status dpep_moe_forward(dpep_moe *m, const dpep_layer_w *w, const float *x, int64_t n_tokens,
                             float *out, int32_t *topk_idx, float *topk_w)
{
    return dpep_moe_forward_parts(m, w, x, n_tokens, DPEP_MOE_ROUTED | DPEP_MOE_SHARED, out,
                                  topk_idx, topk_w);
}

dpep_status dpep_moe_dense_forward(dpep_moe *m, const dpep_mlp_w *mlp, const float *x,
                                   int64_t n_tokens, float *out)
{
    if (n_tokens < 0 || n_tokens > m->Tm) {
        DPEP_ERROR("moe: dense: %lld tokens, at most %lld (max_tokens)", (long long)n_tokens,
                   (long long)m->Tm);
        return DPEP_ERR_INVALID;
    }
    const int H = m->H;
    float *scratch = m->work + (size_t)2 * m->chunk * H;
    if (mlp->inter != m->cfg.dense_inter / m->dn_size) {
        DPEP_ERROR("moe: dense MLP has intermediate %d, expected %d", mlp->inter,
                   m->cfg.dense_inter / m->dn_size);
        return DPEP_ERR_INVALID;
    }
    if (m->dn_size == 1) {
        dpep_moe_mlp_forward(mlp, H, x, H, n_tokens, m->chunk, scratch, out, false);
        return DPEP_OK;
    }
    /* TP over the dense group: gather the group's tokens (rows padded to
     * the largest count), each rank applies its slice, reduce-scatter back */
    dpep_comm *c = m->cfg.dense;
    int64_t myT = n_tokens, P = 0;
    DPEP_TRY(dpep_comm_allgather(c, &myT, m->dn_T, 1, DPEP_COMM_I64));
    for (int r = 0; r < m->dn_size; r++) P = imax64(P, m->dn_T[r]);
    if (P == 0) return DPEP_OK;
    if (n_tokens) memcpy(m->dn_send, x, sizeof(float) * (size_t)(n_tokens * H));
    if (P > n_tokens) memset(m->dn_send + n_tokens * H, 0, sizeof(float) * (size_t)((P - n_tokens) * H));
    DPEP_TRY(dpep_comm_allgather(c, m->dn_send, m->dn_recv, P * H, DPEP_COMM_F32));
    for (int r = 0; r < m->dn_size; r++) {
        const int64_t n = m->dn_T[r];
        float *dst = m->dn_part + (int64_t)r * P * H;
        dpep_moe_mlp_forward(mlp, H, m->dn_recv + (int64_t)r * P * H, H, n, m->chunk, scratch,
                             dst, false);
        if (P > n) memset(dst + n * H, 0, sizeof(float) * (size_t)((P - n) * H));
    }
    DPEP_TRY(dpep_comm_reduce_scatter(c, m->dn_part, m->dn_rs, P * H, DPEP_COMM_F32));
    if (n_tokens) memcpy(out, m->dn_rs, sizeof(float) * (size_t)(n_tokens * H));
    return DPEP_OK;
}
