/* transport_shm.c — the alltoall transport over node-shared memory (the EP
 * group on one node; comm/'s dpep_comm_shm, an MPI-3 shared window). Each
 * EP rank owns one segment = [cnt: ep int64 | recv: ep*Ustride rows of S |
 * part: ep*Ustride rows of H], block `src` of recv/part reserved for the
 * rows source rank src sends here. dispatch writes each row straight into
 * its destination's segment and its counts into the header (one fence; own
 * rows are not copied); the rank announces its partial sums once its routed
 * experts are done (split-phase arrive); combine waits for every rank's
 * announcement and reads its tokens' partial rows from the segments they
 * were computed in. One copy each way. Create and free are collective. */
#include "moe_internal.h"

typedef struct moe_shm {
    dpep_comm_shm *win;         /* owned: one segment per EP rank            */
    int64_t Ustride;            /* rows reserved per source rank (max Um)    */
    float **peer_recv;          /* [ep] each rank's recv                     */
    float **peer_part;          /* [ep] each rank's part                     */
    int64_t **peer_cnt;         /* [ep] each rank's per-source row counts    */
    int64_t *peer_Um;           /* [ep] each rank's Um (create)              */
} moe_shm;

static moe_shm *state(const dpep_moe *m) { return (moe_shm *)m->tr_state; }

static void shm_carve(dpep_moe *m, dpep_arena *a, dpep_arena *h)
{
    (void)h; /* host kernels only: h is a */
    const int64_t ep = m->ep_size;
    moe_shm *s = DPEP_ARENA_TAKE(a, moe_shm, 1), t = {0};
    t.peer_recv = DPEP_ARENA_TAKE(a, float *, ep);
    t.peer_part = DPEP_ARENA_TAKE(a, float *, ep);
    t.peer_cnt = DPEP_ARENA_TAKE(a, int64_t *, ep);
    t.peer_Um = DPEP_ARENA_TAKE(a, int64_t, ep);
    m->tr_state = s;
    if (s) *s = t;
}

/* One segment's pieces (counting when base is NULL). */
static void shm_segment(const dpep_moe *m, int64_t stride, dpep_arena *a, int64_t **cnt,
                        float **recv, float **part)
{
    const int64_t ep = m->ep_size;
    *cnt = DPEP_ARENA_TAKE(a, int64_t, ep);
    *recv = DPEP_ARENA_TAKE(a, float, ep * stride * m->S);
    *part = DPEP_ARENA_TAKE(a, float, ep * stride * m->H);
}

/* Collective: map the node-shared segments, sized for the largest Um. */
static dpep_status shm_connect(dpep_moe *m, dpep_diag *diag)
{
    moe_shm *s = state(m);
    dpep_comm *c = m->cfg.ep;
    const int ep = m->ep_size;
    int64_t myUm = m->Um, stride = 0;
    DPEP_TRY(dpep_comm_allgather(c, &myUm, s->peer_Um, 1, DPEP_COMM_I64));
    for (int r = 0; r < ep; r++) stride = moe_imax64(stride, s->peer_Um[r]);
    int64_t *cnt;
    float *recv, *part;
    dpep_arena a = dpep_arena_begin(NULL);
    shm_segment(m, stride, &a, &cnt, &recv, &part);
    dpep_comm_shm *win = NULL;
    dpep_status st = dpep_comm_shm_create(c, a.off, &win);
    if (st == DPEP_OK) {
        s->win = win;
        s->Ustride = stride;
        m->ext_bytes = a.off;
        for (int r = 0; r < ep; r++) {
            dpep_arena seg = dpep_arena_begin(dpep_comm_shm_ptr(win, r));
            shm_segment(m, stride, &seg, &s->peer_cnt[r], &s->peer_recv[r], &s->peer_part[r]);
        }
        return DPEP_OK;
    }
    /* auto: not here (spans nodes, no room), moe.c takes the MPI transport */
    if (st != DPEP_ERR_MPI && m->cfg.transport == DPEP_A2A_TRANSPORT_AUTO) return st;
    if (diag)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "moe: parallel.moe_a2a_transport shm: %s (expected "
                      "the EP group on one node with room in /dev/shm; use auto or mpi)",
                      st == DPEP_ERR_UNSUPPORTED ? "the EP group spans nodes"
                      : st == DPEP_ERR_NOMEM     ? "no room for the node-shared segments"
                                                 : "the shared window failed");
    return st == DPEP_ERR_MPI ? st : DPEP_ERR_INVALID;
}

/* Every rank writes its rows for rank r straight into r's segment, in the
 * block reserved for it (rows me*Ustride...), and its row count into r's
 * header; one fence. No count exchange, no packing pass, no receive copy,
 * and no copy at all of the rows for this rank (the experts read them in
 * place). Reuse is safe: a rank writes r's blocks only after leaving the
 * previous step's combine round, which needs r's announcement, made once
 * r's experts were done reading them; a rank rewrites its own partial sums
 * only after this dispatch's fence, which every reader of the previous
 * ones has passed. */
static dpep_status shm_dispatch(dpep_moe *m)
{
    moe_shm *s = state(m);
    const int ep = m->ep_size, me = m->ep_rank;
    float *recv = s->peer_recv[me], *part = s->peer_part[me];
    moe_a2a_count(m, m->uidx, m->um_ld);
    for (int r = 0; r < ep; r++) {
        m->row_base[r] = s->peer_recv[r];
        m->row0[r] = (int64_t)me * s->Ustride;
    }
    moe_a2a_write_rows(m);
    for (int r = 0; r < ep; r++) s->peer_cnt[r][me] = m->tok_send[r];
    DPEP_TRY(dpep_comm_shm_fence(s->win));
    int64_t so = 0, ro = 0;
    const int64_t *cnt = s->peer_cnt[me];
    for (int src = 0; src < ep; src++) {
        if (cnt[src] < 0 || cnt[src] > s->Ustride) {
            DPEP_ERROR("moe: dispatch: EP rank %d wrote %lld rows into a block of %lld (shared "
                       "segment overwritten?)", src, (long long)cnt[src], (long long)s->Ustride);
            return DPEP_ERR_INTERNAL;
        }
        if (ro + cnt[src] > (int64_t)ep * m->Um) { /* the experts' scratch holds ep * Um rows */
            DPEP_ERROR("moe: dispatch: %lld rows arrive at EP rank %d, its expert buffers hold "
                       "%lld (max_tokens differs between ranks?)", (long long)(ro + cnt[src]), me,
                       (long long)ep * m->Um);
            return DPEP_ERR_INTERNAL;
        }
        m->tok_recv[src] = cnt[src];
        const int64_t r0 = (int64_t)src * s->Ustride;
        if (src == me) m->seg[src] = moe_a2a_own_rows(m, part + r0 * m->H);
        else m->seg[src] = moe_packed_rows(m, recv + r0 * m->S, part + r0 * m->H, cnt[src]);
        so += m->tok_send[src];
        ro += cnt[src];
    }
    m->n_seg = ep;
    m->n_rows = ro;
    moe_a2a_dispatch_stats(m, so, ro);
    return DPEP_OK;
}

/* This rank's partial sums are complete and its received rows read: tell
 * the peers now, so that the work before combine (shared experts) overlaps
 * their lateness. */
static dpep_status shm_announce(dpep_moe *m) { return dpep_comm_shm_arrive(state(m)->win); }

/* Partial sums stay in their rank's segment; each rank reads its tokens'
 * rows from there once every rank has announced. */
static dpep_status shm_combine(dpep_moe *m, float *acc)
{
    moe_shm *s = state(m);
    const int ep = m->ep_size, me = m->ep_rank;
    for (int r = 0; r < ep; r++) DPEP_TRY(dpep_comm_shm_wait(s->win, r));
    for (int r = 0; r < ep; r++) {
        m->src_base[r] = s->peer_part[r];
        m->src0[r] = (int64_t)me * s->Ustride;
    }
    m->st.combine_bytes_sent = m->st.rows_recv * m->H * (int64_t)sizeof(float);
    m->st.combine_bytes_recv = m->st.rows_sent * m->H * (int64_t)sizeof(float);
    moe_a2a_sum_partials(m, acc);
    return dpep_comm_shm_depart(s->win);
}

static void shm_free(dpep_moe *m)
{
    moe_shm *s = state(m);
    if (s) dpep_comm_shm_destroy(s->win);
}

const moe_transport_ops moe_transport_shm = {
    .name = "shm",
    .packed_union = false,
    .alltoall_rows = true,
    .carve = shm_carve,
    .connect = shm_connect,
    .dispatch = shm_dispatch,
    .announce = shm_announce,
    .combine = shm_combine,
    .free = shm_free,
};
