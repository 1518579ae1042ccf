/* moe.c — the MoE layer context: expert placement, the pool (one arena,
 * allocated on the context's device), the choice of the transport
 * (pick_transport: one table per transport, transport_*.c) and of the
 * kernel table (moe_kernels[]: one per device kind), the named stages of a
 * step (dispatch -> run_experts -> combine, moe_internal.h), the MoE-TP
 * stage (union of the group's tokens, partial outputs reduce-scattered),
 * shared experts and dense FFN layers. Data movement is the transport's,
 * arithmetic the kernel table's. */
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
    c.chunk = DPEP_MOE_CHUNK_DEFAULT;
    c.device = NULL; /* the CPU */
    *out = c;
}

static int comm_size(dpep_comm *c) { return c ? dpep_comm_size(c) : 1; }
static int comm_rank(dpep_comm *c) { return c ? dpep_comm_rank(c) : 0; }

/* The kernel table of each device kind; NULL: this build has none. */
static const moe_kernel_ops *const moe_kernels[DPEP_DEVICE_KINDS] = {
    [DPEP_DEVICE_CPU] = &moe_kernels_cpu,
#ifdef DPEP_HAVE_CUDA
    [DPEP_DEVICE_CUDA] = &moe_kernels_cuda,
#endif
};

/* The table for cfg.device (NULL: the CPU's); NULL when the build has none. */
static const moe_kernel_ops *kernels_of(const dpep_device *dev)
{
    const int kind = dev ? (int)dev->kind : (int)DPEP_DEVICE_CPU;
    return kind >= 0 && kind < DPEP_DEVICE_KINDS ? moe_kernels[kind] : NULL;
}

static bool g_test_devrows = false; /* dpep_moe_test_device_rows */

void dpep_moe_test_device_rows(bool on) { g_test_devrows = on; }

/* Device rows over the EP comm itself: NCCL on device memory, or MPI
 * through host staging. */
static const moe_transport_ops *device_rows_fallback(const dpep_moe_config *cfg)
{
    return dpep_comm_backend_of(cfg->ep) == DPEP_COMM_NCCL ? &moe_transport_nccl
                                                           : &moe_transport_staged;
}

/* The transport, chosen once per context from the config: the all-gather
 * path; alltoall over MPI when asked or when the EP group is one rank; else
 * node-shared memory (shm, or auto: connect falls back to mpi when the
 * segments cannot be had). A new transport is one more case here. */
static const moe_transport_ops *pick_transport(const dpep_moe_config *cfg)
{
    /* device memory, one EP rank: the device-local transport (create
     * refuses the allgather backend there). Several: the device rows over
     * the EP comm, NCCL or MPI through host staging by the comm's backend
     * (the engine picks that from where the ranks' GPUs are). */
    const moe_kernel_ops *kt = kernels_of(cfg->device);
    const int ep = cfg->ep ? dpep_comm_size(cfg->ep) : 1;
    const int tp = cfg->moe_tp ? dpep_comm_size(cfg->moe_tp) : 1;
    const bool device_rows = kt && (kt->device_only || g_test_devrows);
    if (kt && kt->device_only && ep < 2 && tp < 2) return &moe_transport_device;
    if (device_rows && (ep >= 2 || tp >= 2) && cfg->backend == DPEP_A2A_ALLTOALL) {
        /* auto: ipc inside a node (connect falls back to the comm's below);
         * one EP rank with MoE-TP: the union's own rows, mpi-staged */
        if (ep >= 2 &&
            (cfg->transport == DPEP_A2A_TRANSPORT_IPC || cfg->transport == DPEP_A2A_TRANSPORT_AUTO))
            return &moe_transport_ipc;
        return device_rows_fallback(cfg);
    }
    if (cfg->backend == DPEP_A2A_ALLGATHER) return &moe_transport_allgather;
    if (cfg->transport == DPEP_A2A_TRANSPORT_MPI || !cfg->ep || dpep_comm_size(cfg->ep) < 2)
        return &moe_transport_mpi;
    return &moe_transport_shm;
}

/* The pool: every buffer of the context, then the transport's pieces. Runs
 * twice (dpep_arena: counting with base NULL, then placing). `h` takes the
 * pieces only the host reads (the runs of rows, per-rank counts): the pool
 * itself (h == a) when the kernels run on host memory, a host block when
 * the pool is device memory. */
static void carve_pool(dpep_moe *m, dpep_arena *a, dpep_arena *h)
{
    const int64_t H = m->H, S = m->S, E = m->cfg.gate.n_experts, k = m->k;
    const int64_t Tm = m->Tm, Um = m->Um, ep = m->ep_size, tp = m->tp_size, dn = m->dn_size;
    const int64_t kl = k < m->n_local ? k : m->n_local;
    /* alltoall with moe_tp = 1 reads the caller's arrays and sums into
     * `out`: no union copy, no union output */
    const bool packed = tp > 1 || m->tr->packed_union;
    m->logits = DPEP_ARENA_TAKE(a, float, Tm * E);
    m->g_idx = DPEP_ARENA_TAKE(a, int32_t, Tm * k);
    m->g_w = DPEP_ARENA_TAKE(a, float, Tm * k);
    m->own_pack = tp > 1 ? DPEP_ARENA_TAKE(a, float, Tm * S) : NULL;
    m->pk_dst = packed ? DPEP_ARENA_TAKE(a, float *, Tm) : NULL;
    m->pk_tok = packed ? DPEP_ARENA_TAKE(a, int32_t, Tm) : NULL;
    m->uids = tp > 1 && m->tr->dense_ids ? DPEP_ARENA_TAKE(a, int32_t, Um * k) : NULL;
    m->tp_cnt_k = DPEP_ARENA_TAKE(h, int64_t, tp);
    m->tp_dsp_k = DPEP_ARENA_TAKE(h, int64_t, tp);
    m->ubuf = packed ? DPEP_ARENA_TAKE(a, float, Um * S) : NULL;
    m->uout = packed ? DPEP_ARENA_TAKE(a, float, Um * H) : NULL;
    m->ushared = m->cfg.n_shared > 0 ? DPEP_ARENA_TAKE(a, float, Um * H) : NULL;
    m->rs_pad = tp > 1 ? DPEP_ARENA_TAKE(a, float, tp * Tm * H) : NULL;
    m->rs_recv = tp > 1 ? DPEP_ARENA_TAKE(a, float, Tm * H) : NULL;
    m->work = DPEP_ARENA_TAKE(a, float, 2 * (int64_t)m->chunk * (H + m->I_max));
    m->px = DPEP_ARENA_TAKE(a, const float *, ep * Um * kl);
    m->pp = DPEP_ARENA_TAKE(a, float *, ep * Um * kl);
    m->slot_w = DPEP_ARENA_TAKE(a, float, ep * Um * kl);
    m->slot_cnt = DPEP_ARENA_TAKE(a, int64_t, m->n_local + 1);
    m->seg = DPEP_ARENA_TAKE(h, moe_rows, ep);
    if (dn > 1) {
        m->dn_send = DPEP_ARENA_TAKE(a, float, Tm * H);
        m->dn_recv = DPEP_ARENA_TAKE(a, float, dn * Tm * H);
        m->dn_part = DPEP_ARENA_TAKE(a, float, dn * Tm * H);
        m->dn_rs = DPEP_ARENA_TAKE(a, float, Tm * H);
    }
    m->dn_T = DPEP_ARENA_TAKE(h, int64_t, dn);
    m->tp_T = DPEP_ARENA_TAKE(h, int64_t, tp);
    m->tp_cnt = DPEP_ARENA_TAKE(h, int64_t, tp);
    m->tp_dsp = DPEP_ARENA_TAKE(h, int64_t, tp);
    m->bytes_send = DPEP_ARENA_TAKE(h, int64_t, ep);
    m->bytes_recv = DPEP_ARENA_TAKE(h, int64_t, ep);
    /* host loops over these (a2a_rows.c) and the transports' host pieces
     * go to h (device_only kernels: the device transports, whose carve
     * puts its data buffers in a and its plan and counts in h) */
    if (m->tr->alltoall_rows) moe_a2a_carve(m, h);
    m->tr->carve(m, a, h);
}

/* What the device-only kernels cannot do yet (multi-rank on the GPU is the
 * next step): each refused with the config field that asks for it. */
static dpep_status check_device_layout(const dpep_moe_config *cfg, const dpep_device *dev,
                                       dpep_diag *diag)
{
    const char *kn = dpep_device_kind_name(dev->kind);
    int bad = 0;
#define DEV_BAD(...)                                                           \
    do {                                                                       \
        if (diag) dpep_diag_add(diag, DPEP_DIAG_ERROR, __VA_ARGS__);           \
        else DPEP_ERROR(__VA_ARGS__);                                          \
        bad = 1;                                                               \
    } while (0)
    int ep = comm_size(cfg->ep), tp = comm_size(cfg->moe_tp), dn = comm_size(cfg->dense);
    if (ep > 1 && cfg->backend == DPEP_A2A_ALLTOALL && cfg->transport == DPEP_A2A_TRANSPORT_SHM)
        DEV_BAD("moe: device %s: parallel.moe_a2a_transport shm (dpep_moe_config.transport): "
                "node-shared memory moves host rows; on %s use auto, mpi (staged through the "
                "host) or nccl", kn, kn);
    if (ep > 1 && cfg->backend == DPEP_A2A_ALLTOALL &&
        cfg->transport == DPEP_A2A_TRANSPORT_NCCL &&
        dpep_comm_backend_of(cfg->ep) != DPEP_COMM_NCCL)
        DEV_BAD("moe: device %s: parallel.moe_a2a_transport nccl, but the EP comm is not an NCCL "
                "comm (dpep_moe_config.ep: create it with DPEP_COMM_NCCL)", kn);
    if (tp > 1 && dpep_comm_backend_of(cfg->moe_tp) == DPEP_COMM_MPI)
        DEV_BAD("moe: device %s: moe_tp %d (parallel.tp / parallel.ep) over an MPI comm on host "
                "memory (dpep_moe_config.moe_tp: an NCCL or mpi-staged comm on %s)", kn, tp, kn);
    if (dn > 1 && dpep_comm_backend_of(cfg->dense) == DPEP_COMM_MPI)
        DEV_BAD("moe: device %s: dense TP %d (parallel.moe_dense_tp_size) over an MPI comm on "
                "host memory (dpep_moe_config.dense: an NCCL or mpi-staged comm on %s)", kn, dn,
                kn);
    if (cfg->backend == DPEP_A2A_ALLGATHER && ep > 1 &&
        dpep_comm_backend_of(cfg->ep) == DPEP_COMM_MPI)
        DEV_BAD("moe: device %s: parallel.moe_a2a_backend allgather (dpep_moe_config.backend) "
                "over an MPI EP comm on host memory (dpep_moe_config.ep: an NCCL or mpi-staged "
                "comm on %s)", kn, kn);
    /* the device-local transport hands the gate's expert ids to the experts
     * as slot ids: slot e must hold expert e */
    if (cfg->placement && ep == 1)
        for (int e = 0; e < cfg->placement->n_experts && !bad; e++)
            if (cfg->placement->slot[e] != e)
                DEV_BAD("moe: device %s: dpep_moe_config.placement puts expert %d in slot %d: on "
                        "one EP rank the %s MoE layer needs slot e = expert e", kn, e,
                        cfg->placement->slot[e], kn);
#undef DEV_BAD
    return bad ? DPEP_ERR_UNSUPPORTED : DPEP_OK;
}

/* The config checks of this rank (every problem goes to diag). */
static dpep_status check_config(const dpep_moe_config *cfg, dpep_diag *diag)
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
    return bad ? DPEP_ERR_INVALID : DPEP_OK;
}

/* The device (cfg.device, NULL: the CPU) and its kernel table. */
static dpep_status pick_device(const dpep_moe_config *cfg, dpep_device *dev,
                               const moe_kernel_ops **kern, dpep_diag *diag)
{
    if (cfg->device) *dev = *cfg->device;
    else DPEP_TRY(dpep_device_get(DPEP_DEVICE_CPU, -1, dev));
    *kern = kernels_of(dev);
    if (!*kern || !dev->ops) {
        const char *name = dpep_device_kind_name(dev->kind);
        if (diag)
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "moe: device %s: this build has no %s kernels "
                          "for the MoE layer (gate, experts, dense FFN; the CPU backend is "
                          "complete, see moe/README.md)", name, name);
        else
            DPEP_ERROR("moe: device %s: this build has no %s kernels for the MoE layer", name,
                       name);
        return DPEP_ERR_UNSUPPORTED;
    }
    /* the layout first: its refusals do not need the device */
    if ((*kern)->device_only) DPEP_TRY(check_device_layout(cfg, dev, diag));
    else if ((cfg->transport == DPEP_A2A_TRANSPORT_NCCL ||
              (cfg->transport == DPEP_A2A_TRANSPORT_IPC && !g_test_devrows)) &&
             cfg->backend == DPEP_A2A_ALLTOALL && comm_size(cfg->ep) > 1) {
#define GPU_ONLY "moe: device %s: parallel.moe_a2a_transport %s moves rows between GPUs " \
                 "(dpep_moe_config.transport; on the CPU use auto, shm or mpi)"
        const char *tn = cfg->transport == DPEP_A2A_TRANSPORT_NCCL ? "nccl" : "ipc";
        if (diag) dpep_diag_add(diag, DPEP_DIAG_ERROR, GPU_ONLY, dpep_device_kind_name(dev->kind), tn);
        else DPEP_ERROR(GPU_ONLY, dpep_device_kind_name(dev->kind), tn);
#undef GPU_ONLY
        return DPEP_ERR_INVALID;
    }
    if ((*kern)->usable) DPEP_TRY((*kern)->usable(dev));
    return DPEP_OK;
}

/* Packed own tokens (moe_tp > 1, or a packed_union transport): pk_dst[t]
 * = own_pack (moe_tp > 1) or ubuf, + t * S, and pk_tok[t] = t, sent to the
 * pool's device once (pack_rows packs the own tokens through them). */
static dpep_status upload_pack_table(dpep_moe *m)
{
    const int64_t Tm = m->Tm;
    float *base = m->tp_size > 1 ? m->own_pack : m->ubuf;
    float **dst = malloc(sizeof(float *) * (size_t)(Tm ? Tm : 1));
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)(Tm ? Tm : 1));
    dpep_status st = dst && tok ? DPEP_OK : DPEP_ERR_NOMEM;
    for (int64_t t = 0; st == DPEP_OK && t < Tm; t++) {
        dst[t] = base + t * m->S;
        tok[t] = (int32_t)t;
    }
    if (st == DPEP_OK) st = moe_to_dev(m, m->pk_dst, dst, sizeof(float *) * (size_t)Tm);
    if (st == DPEP_OK) st = moe_to_dev(m, m->pk_tok, tok, sizeof(int32_t) * (size_t)Tm);
    free(dst);
    free(tok);
    if (st != DPEP_OK) DPEP_ERROR("moe: cannot set up the MoE-TP packing table on %s", m->dev.ops->name);
    return st;
}

/* Checks, the device and the pool: this rank alone. */
static dpep_status create_local(const dpep_moe_config *cfg, const moe_transport_ops *tr,
                                dpep_moe **out, dpep_diag *diag)
{
    DPEP_TRY(check_config(cfg, diag));
    dpep_device dev;
    const moe_kernel_ops *kern = NULL;
    DPEP_TRY(pick_device(cfg, &dev, &kern, diag));
    const int ep = comm_size(cfg->ep), tp = comm_size(cfg->moe_tp), dn = comm_size(cfg->dense);
    dpep_moe *m = calloc(1, sizeof *m);
    if (!m) return DPEP_ERR_NOMEM;
    m->cfg = *cfg;
    m->dev = dev;
    m->cfg.device = &m->dev;
    m->kern = kern;
    m->tr = tr;
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
    m->chunk = cfg->chunk > 0 ? cfg->chunk : DPEP_MOE_CHUNK_DEFAULT;
    const int64_t shared_inter = (int64_t)cfg->n_shared * cfg->moe_inter / tp;
    m->I_max = moe_imax64(moe_imax64(cfg->moe_inter / tp, shared_inter),
                          dn > 0 ? cfg->dense_inter / dn : 0);
    /* device-only kernels: the host pieces in a block of their own */
    const bool split = kern->device_only;
    dpep_arena a = dpep_arena_begin(NULL), h = dpep_arena_begin(NULL);
    carve_pool(m, &a, split ? &h : &a);
    m->pool_bytes = a.off;
    if (split) {
        m->host_bytes = h.off;
        m->host = calloc(1, h.off ? h.off : 1);
        if (!m->host) {
            dpep_moe_free(m);
            return DPEP_ERR_NOMEM;
        }
    }
    void *pool = NULL;
    /* zeroed by the allocator: padding rows that travel in collectives are defined */
    st = dpep_device_alloc(&m->dev, m->pool_bytes, &pool);
    if (st != DPEP_OK) {
        DPEP_ERROR("moe: cannot allocate the %zu-byte buffer pool on %s (max_tokens %lld, ep %d, "
                   "moe_tp %d, hidden %d)", m->pool_bytes, m->dev.ops->name, (long long)m->Tm, ep,
                   tp, m->H);
        dpep_moe_free(m);
        return st;
    }
    m->pool = pool;
    /* the step's rows go through it, each piece sized for what a full step
     * uses: resident now (dpep_device_advise_resident) */
    dpep_device_advise_resident(&m->dev, pool, m->pool_bytes);
    dpep_device_advise_resident(NULL, m->host, m->host_bytes); /* host pieces: NULL when in the pool */
    a = dpep_arena_begin(pool);
    h = dpep_arena_begin(m->host);
    carve_pool(m, &a, split ? &h : &a);
    if (m->pk_dst) {
        /* the own-token packing's destinations and tokens, once */
        st = upload_pack_table(m);
        if (st != DPEP_OK) {
            dpep_moe_free(m);
            return st;
        }
    }
    *out = m;
    return DPEP_OK;
}

/* The pieces of a transport taken after the pool was made, in a block of
 * their own (auto's fallback to mpi). */
static dpep_status carve_side(dpep_moe *m)
{
    /* its host pieces in a host block of their own when the pool is the
     * device's (ipc -> nccl / mpi-staged), else beside the rest */
    const bool split = m->kern->device_only;
    dpep_arena a = dpep_arena_begin(NULL), h = dpep_arena_begin(NULL);
    m->tr->carve(m, &a, split ? &h : &a);
    void *side = NULL;
    dpep_status st = dpep_device_alloc(&m->dev, a.off, &side);
    if (st == DPEP_OK && split) {
        m->side_host = calloc(1, h.off ? h.off : 1);
        if (!m->side_host) st = DPEP_ERR_NOMEM;
    }
    if (st != DPEP_OK) {
        DPEP_ERROR("moe: cannot allocate the %zu-byte %s transport buffers", a.off, m->tr->name);
        dpep_device_free(&m->dev, side);
        return st;
    }
    m->side = side;
    m->side_bytes = a.off + (split ? h.off : 0);
    /* (not made resident: a transport's receive buffers hold the worst
     * case, every token of the EP group sent to this rank — ep x Um rows —
     * of which a step touches about min(k, ep) Um) */
    a = dpep_arena_begin(side);
    h = dpep_arena_begin(m->side_host);
    m->tr->carve(m, &a, split ? &h : &a);
    return DPEP_OK;
}

/* Every EP rank agrees on `local`; a rank that failed learns it too. */
static dpep_status agree(dpep_comm *ep, dpep_status local, const char *what, dpep_diag *diag)
{
    int n_failed = 0, first = -1;
    dpep_status st = dpep_comm_agree(ep, local, &n_failed, &first);
    if (st != DPEP_OK && local == DPEP_OK && diag)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "moe: %d EP rank(s) could not %s (first: EP rank "
                      "%d; their own errors are logged there)", n_failed, what, first);
    return st;
}

/* The collective part of create (transports with connect): agree that
 * every EP rank has its context, then connect; under auto, a transport
 * not available here (shm: spans nodes, no room in /dev/shm) gives way to
 * mpi, whose buffers every rank then allocates and agrees on. */
static dpep_status connect_transport(dpep_moe *m, const dpep_moe_config *cfg, dpep_status local,
                                     dpep_diag *diag)
{
    DPEP_TRY(agree(cfg->ep, local, "create their MoE context", diag));
    dpep_status st = m->tr->connect(m, diag);
    if ((st == DPEP_ERR_UNSUPPORTED || st == DPEP_ERR_NOMEM) &&
        cfg->transport == DPEP_A2A_TRANSPORT_AUTO) {
        const bool dev = m->tr == &moe_transport_ipc;
        const moe_transport_ops *to = dev ? device_rows_fallback(cfg) : &moe_transport_mpi;
        if (m->ep_rank == 0)
            DPEP_INFO("moe: alltoall dispatch/combine over %s (%s)",
                      dev ? to->name : "MPI",
                      st == DPEP_ERR_UNSUPPORTED
                          ? (dev ? "the EP group spans nodes or its GPUs cannot map each "
                                   "other's memory"
                                 : "the EP group spans nodes")
                          : (dev ? "no room for the device segments"
                                 : "no room for node-shared memory"));
        m->tr = to;
        m->tr_state = NULL;
        st = agree(cfg->ep, carve_side(m), "allocate the fallback transport's buffers", diag);
    }
    return st;
}

dpep_status dpep_moe_create(const dpep_moe_config *cfg, dpep_moe **out, dpep_diag *diag)
{
    const moe_transport_ops *tr = pick_transport(cfg);
    dpep_moe *m = NULL;
    dpep_status st = create_local(cfg, tr, &m, diag);
    /* collective transports: every EP rank comes here, also one whose
     * local part failed */
    if (tr->connect) st = connect_transport(m, cfg, st, diag);
    if (st != DPEP_OK) {
        dpep_moe_free(m); /* a failed connect leaves no window: free is local here */
        return st;
    }
    *out = m;
    return DPEP_OK;
}

void dpep_moe_free(dpep_moe *m)
{
    if (!m) return;
    if (m->tr && m->tr->free) m->tr->free(m);
    dpep_device_free(&m->dev, m->side);
    free(m->side_host);
    dpep_device_free(&m->dev, m->pool);
    free(m->host);
    dpep_moe_placement_free(&m->pl);
    free(m);
}

size_t dpep_moe_pool_bytes(const dpep_moe *m)
{
    return m->pool_bytes + m->host_bytes + m->side_bytes + m->ext_bytes;
}

const char *dpep_moe_transport_name(const dpep_moe *m) { return m->tr->name; }

void dpep_moe_get_stats(const dpep_moe *m, dpep_moe_stats *out) { *out = m->st; }

void dpep_moe_set_sync_free(dpep_moe *m, bool on)
{
    if (m) m->sync_free = on;
}

/* ------------------------------------------------------------------------ */
/* Stages (moe_internal.h: moe_stage, the table of allowed calls)            */
/* ------------------------------------------------------------------------ */
typedef enum moe_call { MOE_CALL_DISPATCH, MOE_CALL_EXPERTS, MOE_CALL_COMBINE } moe_call;

#define STAGE_BIT(s) (1u << (s))
static const unsigned stage_allowed[] = {
    [MOE_CALL_DISPATCH] = STAGE_BIT(MOE_STAGE_IDLE) | STAGE_BIT(MOE_STAGE_DISPATCHED) |
                          STAGE_BIT(MOE_STAGE_EXPERTS_DONE),
    [MOE_CALL_EXPERTS] = STAGE_BIT(MOE_STAGE_DISPATCHED) | STAGE_BIT(MOE_STAGE_EXPERTS_DONE),
    [MOE_CALL_COMBINE] = STAGE_BIT(MOE_STAGE_EXPERTS_DONE) | STAGE_BIT(MOE_STAGE_ANNOUNCED),
};

/* DPEP_OK when `call` may run in m's stage, else DPEP_ERR_INTERNAL (logged). */
static dpep_status stage_check(const dpep_moe *m, moe_call call, const char *fn)
{
    if (stage_allowed[call] & STAGE_BIT(m->stage)) return DPEP_OK;
    const char *why = "out of order";
    if (call == MOE_CALL_DISPATCH)
        why = "while the previous step's combine is pending (run_experts was followed by "
              "another dispatch)";
    else if (call == MOE_CALL_EXPERTS && m->stage == MOE_STAGE_IDLE)
        why = "called without a dispatch";
    else if (call == MOE_CALL_EXPERTS)
        why = "twice on one dispatch (its partial sums are announced: once per step)";
    else if (call == MOE_CALL_COMBINE)
        why = "called before run_experts";
    DPEP_ERROR("moe: %s %s (%s transport)", fn, why, m->tr->name);
    return DPEP_ERR_INTERNAL;
}

/* One int64 per rank of c into out[size], over c's MPI communicator (host
 * memory whatever c's backend), under c's watchdog. */
dpep_status moe_host_allgather_i64(dpep_comm *c, int64_t v, int64_t *out)
{
    dpep_comm_watch_begin(c, "allgather(counts)", false);
    int rc = MPI_Allgather(&v, 1, MPI_INT64_T, out, 1, MPI_INT64_T, dpep_comm_mpi(c));
    dpep_comm_watch_end(c);
    if (rc != MPI_SUCCESS) {
        DPEP_ERROR("moe: comm \"%s\": count all-gather failed (MPI error %d)", dpep_comm_name(c),
                   rc);
        return DPEP_ERR_MPI;
    }
    return DPEP_OK;
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
        m->uid_c = idx;
        if (!m->tr->packed_union) {
            /* no copy: dispatch packs straight from the caller's arrays */
            m->ux = x;
            m->ux_ld = m->H;
            m->uidx = idx;
            m->uw = w;
            m->um_ld = m->k;
        } else {
            if (T > 0)
                m->kern->pack_rows(m->pk_dst, x, m->H, w, m->k, m->pk_tok, idx, T, m->H, m->k);
            DPEP_TRY(moe_kern_status(m->kern));
            view_packed(m);
        }
        return DPEP_OK;
    }
    /* own tokens packed [x | expert ids | weights] by the kernel table (the
     * device's memory), counts over MPI on the host, rows (and, for the
     * device transports, the ids alone) all-gathered over the MoE-TP comm */
    if (T > 0) m->kern->pack_rows(m->pk_dst, x, m->H, w, m->k, m->pk_tok, idx, T, m->H, m->k);
    DPEP_TRY(moe_kern_status(m->kern));
    DPEP_TRY(moe_host_allgather_i64(m->cfg.moe_tp, T, m->tp_T));
    int64_t U = 0, mx = 0;
    for (int r = 0; r < m->tp_size; r++) {
        m->tp_cnt[r] = m->tp_T[r] * m->S;
        m->tp_dsp[r] = U * m->S;
        m->tp_cnt_k[r] = m->tp_T[r] * m->k;
        m->tp_dsp_k[r] = U * m->k;
        U += m->tp_T[r];
        mx = moe_imax64(mx, m->tp_T[r]);
    }
    if (U > m->Um) {
        DPEP_ERROR("moe: the MoE-TP group holds %lld tokens, at most %lld (max_tokens differs "
                   "between ranks?)", (long long)U, (long long)m->Um);
        return DPEP_ERR_INTERNAL;
    }
    DPEP_TRY(dpep_comm_allgatherv(m->cfg.moe_tp, m->own_pack, T * m->S, m->ubuf, m->tp_cnt,
                                  m->tp_dsp, DPEP_COMM_I32));
    m->uid_c = NULL;
    if (m->uids) {
        DPEP_TRY(dpep_comm_allgatherv(m->cfg.moe_tp, idx, T * m->k, m->uids, m->tp_cnt_k,
                                      m->tp_dsp_k, DPEP_COMM_I32));
        m->uid_c = m->uids;
    }
    m->U = U;
    m->Tpad_tp = mx;
    view_packed(m);
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
    /* caller input: checked before any collective of this step. Not on a
     * device the host cannot read: there the gate made the ids */
    for (int64_t i = 0; !m->kern->device_only && i < n_tokens * m->k; i++)
        if (topk_idx[i] < 0 || topk_idx[i] >= m->cfg.gate.n_experts) {
            DPEP_ERROR("moe: dispatch: token %lld: expert id %d out of [0, %d)",
                       (long long)(i / m->k), (int)topk_idx[i], m->cfg.gate.n_experts);
            return DPEP_ERR_INVALID;
        }
    DPEP_TRY(stage_check(m, MOE_CALL_DISPATCH, "dispatch"));
    m->T = n_tokens;
    m->have_shared = false;
    memset(&m->st, 0, sizeof m->st);
    m->st.send_bytes = m->bytes_send;
    m->st.recv_bytes = m->bytes_recv;
    DPEP_TRY(tp_gather(m, x, n_tokens, topk_idx, topk_w));
    m->st.tokens_in = m->U;
    DPEP_TRY(m->tr->dispatch(m));
    m->stage = MOE_STAGE_DISPATCHED;
    return DPEP_OK;
}

/* The layer's weights against the context (before anything runs). */
static dpep_status check_layer(const dpep_moe *m, const dpep_layer_w *w, bool shared)
{
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
    if (shared && w->shared.inter != m->cfg.n_shared * m->cfg.moe_inter / tp) {
        DPEP_ERROR("moe: shared experts have intermediate %d, expected %d", w->shared.inter,
                   m->cfg.n_shared * m->cfg.moe_inter / tp);
        return DPEP_ERR_INVALID;
    }
    return DPEP_OK;
}

/* Routed experts done: transports that announce do it now (peers may read
 * the partial sums from here on). */
static dpep_status experts_done(dpep_moe *m)
{
    if (m->tr->announce) {
        DPEP_TRY(m->tr->announce(m));
        m->stage = MOE_STAGE_ANNOUNCED;
    } else {
        m->stage = MOE_STAGE_EXPERTS_DONE;
    }
    return DPEP_OK;
}

dpep_status dpep_moe_run_experts(dpep_moe *m, const dpep_layer_w *w, unsigned parts)
{
    DPEP_TRY(stage_check(m, MOE_CALL_EXPERTS, "run_experts"));
    const bool shared = (parts & DPEP_MOE_SHARED) && m->ushared && w->shared.inter > 0;
    DPEP_TRY(check_layer(m, w, shared));
    if (parts & DPEP_MOE_ROUTED) {
        int64_t pairs = 0;
        if (m->kern->sync_free) m->kern->sync_free(m->sync_free);
        moe_waves_now = m->waves;
        m->st.expert_flops =
            m->kern->experts(w->experts, m->n_local, m->H, m->k, m->seg, m->n_seg, m->chunk, m->px,
                             m->pp, m->slot_w, m->slot_cnt, m->work, m->I_max, &pairs);
        moe_waves_now = NULL;
        m->st.expert_rows = pairs;
    } else {
        for (int g = 0; g < m->n_seg; g++)
            moe_zero(m->kern, m->seg[g].part, m->seg[g].n * (int64_t)m->H);
    }
    /* every rank of the pool through its waves (also without routed work) */
    if (m->waves) DPEP_TRY(m->waves->done(m->waves->ctx));
    DPEP_TRY(moe_kern_status(m->kern));
    /* announce before the shared experts, so that they overlap the peers'
     * lateness (combine waits) */
    DPEP_TRY(experts_done(m));
    if (shared) {
        float *G = m->work + (size_t)2 * m->chunk * m->H;
        m->kern->mlp(&w->shared, m->H, m->ux, m->ux_ld, m->U, m->chunk, G, m->ushared, false);
        DPEP_TRY(moe_kern_status(m->kern));
        m->have_shared = true;
    }
    return DPEP_OK;
}

void dpep_moe_run_identity(dpep_moe *m)
{
    if (stage_check(m, MOE_CALL_EXPERTS, "run_identity") != DPEP_OK) return;
    if (!m->kern->identity) {
        DPEP_ERROR("moe: run_identity: no identity kernel on %s; stage unchanged",
                   m->kern->name);
        return;
    }
    m->kern->identity(m->seg, m->n_seg, m->H, m->k);
    if (moe_kern_status(m->kern) != DPEP_OK) return; /* logged; stage unchanged */
    m->have_shared = false;
    /* a failed announcement is made again by combine */
    if (experts_done(m) != DPEP_OK) m->stage = MOE_STAGE_EXPERTS_DONE;
}

/* moe_tp > 1: reduce-scatter the partial sums of the MoE-TP group, rows
 * padded to the group's largest token count; out (T, H). */
static dpep_status tp_scatter(dpep_moe *m, float *out)
{
    const int64_t H = m->H, P = m->Tpad_tp;
    int64_t src = 0;
    for (int r = 0; r < m->tp_size; r++) {
        float *blk = m->rs_pad + (int64_t)r * P * H;
        int64_t n = m->tp_T[r];
        moe_copy(m->kern, blk, m->uout + src * H, n * H);
        moe_zero(m->kern, blk + n * H, (P - n) * H);
        src += n;
    }
    DPEP_TRY(moe_kern_status(m->kern));
    DPEP_TRY(dpep_comm_reduce_scatter(m->cfg.moe_tp, m->rs_pad, m->rs_recv, P * H, DPEP_COMM_F32));
    moe_copy(m->kern, out, m->rs_recv, m->T * H);
    return moe_kern_status(m->kern);
}

dpep_status dpep_moe_combine(dpep_moe *m, float *out)
{
    DPEP_TRY(stage_check(m, MOE_CALL_COMBINE, "combine"));
    const int64_t U = m->U, H = m->H;
    /* with moe_tp = 1 the sum lands in `out` directly */
    float *acc = m->tp_size == 1 ? out : m->uout;
    /* every rank announced when its experts were done (run_experts); the
     * combine round consumes the announcement */
    if (m->tr->announce && m->stage != MOE_STAGE_ANNOUNCED) DPEP_TRY(m->tr->announce(m));
    m->stage = MOE_STAGE_EXPERTS_DONE;
    DPEP_TRY(m->tr->combine(m, acc));
    if (m->have_shared) moe_add(m->kern, acc, m->ushared, U * H);
    DPEP_TRY(moe_kern_status(m->kern));
    if (m->tp_size > 1) DPEP_TRY(tp_scatter(m, out));
    m->stage = MOE_STAGE_IDLE;
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
    m->kern->router_logits(w->router, g->n_experts, m->H, x, n_tokens, m->logits);
    m->kern->gate_select(g, m->logits, w->router_bias, n_tokens, idx, wt);
    DPEP_TRY(moe_kern_status(m->kern));
    DPEP_TRY(dpep_moe_dispatch(m, x, n_tokens, idx, wt));
    DPEP_TRY(dpep_moe_run_experts(m, w, parts));
    if (m->between) DPEP_TRY(m->between(m->between_ctx));
    return dpep_moe_combine(m, out);
}

_Thread_local const dpep_moe_wave_offload *moe_waves_now;

void dpep_moe_set_wave_offload(dpep_moe *m, const dpep_moe_wave_offload *pool) { m->waves = pool; }

void dpep_moe_set_between(dpep_moe *m, dpep_status (*fn)(void *ctx), void *ctx)
{
    m->between = fn;
    m->between_ctx = fn ? ctx : NULL;
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
        m->kern->mlp(mlp, H, x, H, n_tokens, m->chunk, scratch, out, false);
        return moe_kern_status(m->kern);
    }
    /* TP over the dense group: gather the group's tokens (rows padded to
     * the largest count), each rank applies its slice, reduce-scatter back.
     * The counts are host values (MPI whatever the comm's backend), the rows
     * the device's (a device comm: NCCL or mpi-staged). */
    dpep_comm *c = m->cfg.dense;
    int64_t P = 0;
    DPEP_TRY(moe_host_allgather_i64(c, n_tokens, m->dn_T));
    for (int r = 0; r < m->dn_size; r++) P = moe_imax64(P, m->dn_T[r]);
    if (P == 0) return DPEP_OK;
    moe_copy(m->kern, m->dn_send, x, n_tokens * H);
    moe_zero(m->kern, m->dn_send + n_tokens * H, (P - n_tokens) * H);
    DPEP_TRY(moe_kern_status(m->kern));
    DPEP_TRY(dpep_comm_allgather(c, m->dn_send, m->dn_recv, P * H, DPEP_COMM_F32));
    for (int r = 0; r < m->dn_size; r++) {
        const int64_t n = m->dn_T[r];
        float *dst = m->dn_part + (int64_t)r * P * H;
        m->kern->mlp(mlp, H, m->dn_recv + (int64_t)r * P * H, H, n, m->chunk, scratch, dst, false);
        moe_zero(m->kern, dst + n * H, (P - n) * H);
    }
    DPEP_TRY(moe_kern_status(m->kern));
    DPEP_TRY(dpep_comm_reduce_scatter(c, m->dn_part, m->dn_rs, P * H, DPEP_COMM_F32));
    moe_copy(m->kern, out, m->dn_rs, n_tokens * H);
    return moe_kern_status(m->kern);
}
