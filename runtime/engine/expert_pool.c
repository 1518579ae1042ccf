/* expert_pool.c — the expert pool (engine_pool.h): the node's EP ranks
 * share out each other's routed expert waves, reading the experts from the
 * node-shared expert window.
 *
 * Shared memory: one segment per node rank, a board (claim word, done
 * counts, the node-wide stage count, the current wave's descriptor)
 * followed by X [R, H] (the wave's rows), RW [R] (their gate weights), G
 * and U [R, I] (the intermediate) and Y [R, H] (down's output). The claim
 * word is (wave << 32 | next part); a post closes it (the new wave, no
 * part open) before it rewrites the descriptor and opens it after, so a
 * successful compare-and-swap always read the current wave's descriptor
 * (assist.c has the same protocol and the story of why). */
#include "engine_pool.h"
#include "engine_spin.h"

#include "dpep_linear.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define POOL_WAVE_MAX 64          /* pieces of a wave (moe/'s WAVE_MAX)        */
#define POOL_CLOSED 0x7fffffffu   /* a claim word's part while a wave is posted */
#define POOL_SEG_FLOATS ((int64_t)2 << 20) /* a segment's rows: about 8 MiB   */
#define POOL_MIN_ROWS 16
/* Waves of more rows run in their poster's kernel: prefill-sized waves keep
 * every core busy on their own (a 512-token prefill of the `small` preset
 * over 2 ranks: 1536 rows a rank), and lending them measured slower (column
 * parts of large products through the segment, and the first large prefill
 * paid for first touches). Decode-sized waves are where a node's ranks get
 * unequal shares of a step's experts. */
#define POOL_LEND_ROWS 256
#define POOL_MAX_ROWS 1024

/* the descriptor: a header, then POOL_WAVE_MAX pieces */
enum { D_NPARTS, D_N1, D_NP, D_CH2, D_T, D_HDR };
enum { P_N, P_ROW0, P_OFFG, P_OFFU, P_OFFD, P_INTER, P_LDG, P_LDU, P_LDD, P_CH1, P_FIRST, P_COUNT };
#define D_TOTAL (D_HDR + POOL_WAVE_MAX * P_COUNT)
#define PD(i, f) (D_HDR + (i) * P_COUNT + (f))

typedef struct pboard {
    _Atomic uint64_t claim; /* wave << 32 | next part                        */
    char pad0[56];
    _Atomic uint32_t done;  /* parts finished of the wave (anyone)           */
    _Atomic uint32_t done1; /* first-phase parts finished                    */
    _Atomic uint32_t failed; /* a claimer gave up waiting (the wave is lost) */
    _Atomic uint32_t decl;  /* stage << 1 | pooled: whether this rank's first
                               wave of that stage went to the pool (peers wait
                               for its waves in done only then)           */
    char pad1[48];
    _Atomic uint32_t stage; /* dpep_moe_run_experts calls this rank is through */
    char pad2[60];
    _Atomic int64_t d[D_TOTAL];
} pboard;
#define PBOARD_BYTES (((sizeof(pboard) + 63) / 64) * 64)

struct engine_pool {
    dpep_comm *c;         /* owned: the node's ranks of the EP group        */
    dpep_comm_shm *win;   /* owned: the boards and rows                      */
    int me, n;
    pboard **b;           /* [n]                                             */
    float **X, **RW, **G, **U, **Y; /* [n] each rank's                        */
    char **base;          /* [n] each rank's experts in the expert window    */
    const char *mine;     /* this rank's experts: [mine, mine + mine_len)    */
    size_t mine_len;
    int R, H, I;          /* rows, hidden, widest intermediate               */
    double timeout_s;
    bool over;            /* more ranks x threads than cores: yield often    */
    bool leave;           /* DPEP_TEST_POOL_LEAVE=1: a poster leaves every
                             part of its waves to its peers (tests: that
                             borrowing is certain)                         */
    uint32_t wave, stage;
    uint32_t declared;    /* the stage of the last decl written              */
    dpep_status err;
    dpep_engine_assist_stats st;
    dpep_moe_wave_offload table;
};

/* A spin step of a wait; true once `t0` is more than the timeout ago. */
static bool spin_step(const engine_pool *p, long *spins, double t0)
{
    engine_cpu_relax();
    if ((++*spins & (p->over ? 63 : 1023)) == 0) {
        if (p->over) sched_yield();
        if (dpep_clock_s() - t0 > p->timeout_s) return true;
    }
    return false;
}

static int64_t dget(const pboard *b, int i)
{
    return atomic_load_explicit((_Atomic int64_t *)&b->d[i], memory_order_relaxed);
}

static dpep_mat pmat(const engine_pool *p, int q, const pboard *b, int i, int off, int ld,
                     bool down)
{
    const int inter = (int)dget(b, PD(i, P_INTER));
    dpep_mat m = dpep_mat_make(p->base[q] + dget(b, PD(i, off)), (dpep_wtype)dget(b, D_T),
                               down ? p->H : inter, down ? inter : p->H);
    m.ld = dget(b, PD(i, ld));
    return m;
}

/* Part k of rank q's wave (claimed: the descriptor is that wave's). false:
 * a second-phase part waited past the timeout for the first phase. */
static bool run_part(engine_pool *p, int q, int k)
{
    pboard *b = p->b[q];
    const int H = p->H, I = p->I, np = (int)dget(b, D_NP);
    const int64_t n1 = dget(b, D_N1);
    float *X = p->X[q], *G = p->G[q], *U = p->U[q], *Y = p->Y[q];
    const float *RW = p->RW[q];
    if (k < n1) { /* gate and up columns of one piece, with their SwiGLU */
        int i = 0;
        while (i + 1 < np && dget(b, PD(i + 1, P_FIRST)) <= k) i++;
        const int n = (int)dget(b, PD(i, P_N)), r0 = (int)dget(b, PD(i, P_ROW0));
        const int inter = (int)dget(b, PD(i, P_INTER)), ch = (int)dget(b, PD(i, P_CH1));
        const int c0 = (int)(k - dget(b, PD(i, P_FIRST))) * ch, cn = inter - c0 < ch ? inter - c0 : ch;
        const dpep_mat Wg = pmat(p, q, b, i, P_OFFG, P_LDG, false);
        const dpep_mat Wu = pmat(p, q, b, i, P_OFFU, P_LDU, false);
        float *g = G + (size_t)r0 * I, *u = U + (size_t)r0 * I;
        dpep_linear_nt_cols(n, X + (size_t)r0 * H, H, &Wg, c0, cn, 0.0f, g, I);
        dpep_linear_nt_cols(n, X + (size_t)r0 * H, H, &Wu, c0, cn, 0.0f, u, I);
        dpep_moe_swiglu_w(g, u, I, n, c0, cn, RW + r0);
        atomic_fetch_add_explicit(&b->done1, 1, memory_order_release);
        return true;
    }
    /* down's output columns of every piece, once G is whole */
    const double t0 = dpep_clock_s();
    long spins = 0;
    while ((int64_t)atomic_load_explicit(&b->done1, memory_order_acquire) < n1)
        if (spin_step(p, &spins, t0)) return false;
    const int ch2 = (int)dget(b, D_CH2), c0 = (int)(k - n1) * ch2, cn = H - c0 < ch2 ? H - c0 : ch2;
    for (int i = 0; i < np; i++) {
        const int n = (int)dget(b, PD(i, P_N)), r0 = (int)dget(b, PD(i, P_ROW0));
        const dpep_mat Wd = pmat(p, q, b, i, P_OFFD, P_LDD, true);
        dpep_linear_nt_cols(n, G + (size_t)r0 * I, I, &Wd, c0, cn, 0.0f, Y + (size_t)r0 * H, H);
    }
    return true;
}

/* Claims and runs one part of rank q's wave: 1, or 0 when none is open. */
static int claim(engine_pool *p, int q)
{
    pboard *b = p->b[q];
    for (;;) {
        uint64_t c = atomic_load_explicit(&b->claim, memory_order_acquire);
        const uint32_t k = (uint32_t)(c & 0xffffffffu);
        const int64_t n_parts = dget(b, D_NPARTS);
        /* a descriptor of a wave posted since c was read: its post closed
         * the claim word before, so the CAS below fails */
        atomic_thread_fence(memory_order_acquire);
        if ((int64_t)k >= n_parts) return 0;
        if (!atomic_compare_exchange_weak_explicit(&b->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_relaxed))
            continue;
        if (!run_part(p, q, (int)k)) {
            DPEP_ERROR("engine: expert pool: rank %d waited %.0f s for the first parts of node "
                       "rank %d's expert wave (runtime.comm_timeout_s)", dpep_comm_rank(p->c),
                       p->timeout_s, q);
            atomic_store_explicit(&b->failed, 1, memory_order_release);
#ifdef _OPENMP
#pragma omp critical(engine_pool_err)
#endif
            p->err = DPEP_ERR_TIMEOUT;
        }
        atomic_fetch_add_explicit(&b->done, 1, memory_order_release);
        if (q != p->me) {
#ifdef _OPENMP
#pragma omp atomic
#endif
            p->st.pool_parts_lent++;
        }
        return 1;
    }
}

/* One part of any peer's wave: 1, or 0 when none is open. */
static int claim_peer(engine_pool *p)
{
    for (int d = 1; d < p->n; d++)
        if (claim(p, (p->me + d) % p->n)) return 1;
    return 0;
}

static bool mat_mine(const engine_pool *p, const dpep_mat *W)
{
    const char *a = W->p;
    const size_t bytes = (size_t)W->rows * (size_t)W->ld * dpep_wtype_size(W->t);
    return W->t != DPEP_WT_FP8 && a >= p->mine && W->ld >= W->cols &&
           (size_t)(a - p->mine) + bytes <= p->mine_len;
}

/* Whether this rank's waves of the coming stage go to the pool, as its
 * first wave of the stage (or its done, without waves) found: peers that
 * finish their own experts first wait for its waves only when they do. */
static void declare(engine_pool *p, bool pooled)
{
    const uint32_t s = p->stage + 1;
    if (p->declared == s) return;
    p->declared = s;
    atomic_store_explicit(&p->b[p->me]->decl, s << 1 | (pooled ? 1u : 0u), memory_order_release);
}

static bool wave_fits(const engine_pool *p, const dpep_moe_piece *pc, int np, int hidden)
{
    if (p->err != DPEP_OK || np < 1 || np > POOL_WAVE_MAX || hidden != p->H) return false;
    int rows = 0;
    for (int i = 0; i < np; i++) {
        const dpep_mlp_w *w = pc[i].w;
        if (w->inter <= 0 || w->inter > p->I || !mat_mine(p, &w->gate) || !mat_mine(p, &w->up) ||
            !mat_mine(p, &w->down) || w->gate.t != w->up.t || w->gate.t != w->down.t ||
            w->gate.t != pc[0].w->gate.t || w->gate.cols != p->H || w->down.rows != p->H)
            return false;
        rows += pc[i].n;
    }
    return rows <= p->R && rows <= POOL_LEND_ROWS;
}

static bool pool_wave(void *ctx, const dpep_moe_piece *pc, int np, int hidden)
{
    engine_pool *p = ctx;
    const bool fits = wave_fits(p, pc, np, hidden);
    declare(p, fits);
    if (!fits) {
        p->st.pool_waves_own++;
        return false;
    }
    pboard *b = p->b[p->me];
    const int H = p->H, nw = p->n * engine_team() > 2 ? p->n * engine_team() : 2;
    float *X = p->X[p->me], *RW = p->RW[p->me];
    /* the parts: as moe/'s kernel splits them for nw threads */
    int64_t first = 0, ch2 = 1, al2 = 1, r0 = 0;
    int64_t pd[POOL_WAVE_MAX][P_COUNT];
    for (int i = 0; i < np; i++) {
        const dpep_mlp_w *w = pc[i].w;
        const int n = pc[i].n, ch1 = dpep_linear_col_chunk(n, &w->gate, nw);
        for (int r = 0; r < n; r++) {
            memcpy(X + (size_t)(r0 + r) * H, pc[i].x + (size_t)r * (size_t)pc[i].ldx,
                   sizeof(float) * (size_t)H);
            RW[r0 + r] = pc[i].row_w ? pc[i].row_w[r] : 1.0f;
        }
        pd[i][P_N] = n, pd[i][P_ROW0] = r0, pd[i][P_INTER] = w->inter, pd[i][P_CH1] = ch1;
        pd[i][P_OFFG] = (const char *)w->gate.p - p->mine, pd[i][P_LDG] = w->gate.ld;
        pd[i][P_OFFU] = (const char *)w->up.p - p->mine, pd[i][P_LDU] = w->up.ld;
        pd[i][P_OFFD] = (const char *)w->down.p - p->mine, pd[i][P_LDD] = w->down.ld;
        pd[i][P_FIRST] = first;
        first += (w->inter + ch1 - 1) / ch1;
        const int c = dpep_linear_col_chunk(n, &w->down, nw), a = dpep_linear_col_align(n, &w->down);
        if (c > ch2) ch2 = c;
        if (a > al2) al2 = a;
        r0 += n;
    }
    ch2 = (ch2 + al2 - 1) / al2 * al2;
    const int64_t n1 = first, n_parts = n1 + (H + ch2 - 1) / ch2;
    /* post: close the claim word, write the descriptor, open it */
    const uint64_t id = (uint64_t)++p->wave;
    atomic_store_explicit(&b->claim, id << 32 | POOL_CLOSED, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    atomic_store_explicit(&b->d[D_NPARTS], n_parts, memory_order_relaxed);
    atomic_store_explicit(&b->d[D_N1], n1, memory_order_relaxed);
    atomic_store_explicit(&b->d[D_NP], np, memory_order_relaxed);
    atomic_store_explicit(&b->d[D_CH2], ch2, memory_order_relaxed);
    atomic_store_explicit(&b->d[D_T], (int64_t)pc[0].w->gate.t, memory_order_relaxed);
    for (int i = 0; i < np; i++)
        for (int f = 0; f < P_COUNT; f++)
            atomic_store_explicit(&b->d[PD(i, f)], pd[i][f], memory_order_relaxed);
    atomic_store_explicit(&b->done, 0, memory_order_relaxed);
    atomic_store_explicit(&b->done1, 0, memory_order_relaxed);
    atomic_store_explicit(&b->claim, id << 32, memory_order_release);
    /* this rank's team takes what it can; then it waits for its peers'
     * parts, serving their waves meanwhile */
    int own = 0;
    const int nthr = engine_team();
    if (!p->leave) {
#pragma omp parallel num_threads(nthr) if (nthr > 1) reduction(+ : own)
        while (claim(p, p->me)) own++;
    }
    const double t0 = dpep_clock_s();
    long spins = 0;
    bool late = false;
    while ((int64_t)atomic_load_explicit(&b->done, memory_order_acquire) < n_parts && !late) {
        if (atomic_load_explicit(&b->failed, memory_order_acquire)) late = true;
        else if (!claim_peer(p)) late = spin_step(p, &spins, t0);
    }
    p->st.pool_wait_s += dpep_clock_s() - t0;
    if (late || p->err != DPEP_OK) {
        if (p->err == DPEP_OK)
            DPEP_ERROR("engine: expert pool: rank %d waited %.0f s for node peers' parts of its "
                       "expert wave (%lld of %lld outstanding; runtime.comm_timeout_s)",
                       dpep_comm_rank(p->c), p->timeout_s,
                       (long long)(n_parts - atomic_load(&b->done)), (long long)n_parts);
        p->err = DPEP_ERR_TIMEOUT; /* done() fails the layer */
        return true;
    }
    /* down's rows into their destinations, pieces in order (moe/'s sums) */
    const float *Y = p->Y[p->me];
    for (int i = 0; i < np; i++)
        for (int r = 0; r < pc[i].n; r++) {
            float *d = pc[i].dst[r];
            const float *y = Y + (size_t)(pd[i][P_ROW0] + r) * H;
            for (int h = 0; h < H; h++) d[h] += y[h];
        }
    p->st.pool_waves++;
    p->st.pool_parts_borrowed += n_parts - own;
    return true;
}

static dpep_status pool_done(void *ctx)
{
    engine_pool *p = ctx;
    declare(p, false); /* no waves in this stage */
    const uint32_t s = ++p->stage;
    atomic_store_explicit(&p->b[p->me]->stage, s, memory_order_release);
    const double t0 = dpep_clock_s();
    double t_work = 0.0;
    long spins = 0;
    for (;;) {
        const double t1 = dpep_clock_s();
        if (claim_peer(p)) {
            t_work += dpep_clock_s() - t1;
            continue;
        }
        /* a peer not through this stage is waited for unless its first
         * wave ran in its own kernel (prefill-sized: it needs no help, and
         * this rank has other work, e.g. an owner's shared experts) */
        int behind = -1;
        for (int q = 0; q < p->n && behind < 0; q++) {
            if ((int32_t)(atomic_load_explicit(&p->b[q]->stage, memory_order_acquire) - s) >= 0)
                continue;
            const uint32_t d = atomic_load_explicit(&p->b[q]->decl, memory_order_acquire);
            if ((d >> 1) == s && !(d & 1u)) continue;
            behind = q;
        }
        if (behind < 0) break;
        if (spin_step(p, &spins, t0)) {
            DPEP_ERROR("engine: expert pool: rank %d waited %.0f s for node rank %d to finish a "
                       "layer's experts (runtime.comm_timeout_s)", dpep_comm_rank(p->c),
                       p->timeout_s, behind);
            p->err = DPEP_ERR_TIMEOUT;
            break;
        }
    }
    p->st.pool_wait_s += dpep_clock_s() - t0 - t_work;
    const dpep_status st = p->err;
    p->err = DPEP_OK;
    return st;
}

/* Maps a peer's experts into this process's page tables at create: the
 * window's pages exist (written by their owner), but a process takes a
 * fault at its first read of each 4 KiB page of a peer's segment (no huge
 * pages for node-shared memory): at create rather than inside the first
 * steps that borrow a peer's expert. */
static void prefault(const char *p, size_t n)
{
#ifdef MADV_POPULATE_READ
    if (n == 0 || madvise((void *)(uintptr_t)p, n, MADV_POPULATE_READ) == 0) return;
#endif
    volatile char sink = 0;
    for (size_t o = 0; o < n; o += DPEP_PAGE) sink ^= p[o];
    (void)sink;
}

/* ---------------------------------------------------------------------- */
static int widest_inter(const dpep_model_config *m) { return m->moe_inter > 0 ? m->moe_inter : 1; }

static int pool_rows(int H, int I)
{
    const int64_t per = 2 * (int64_t)H + 2 * (int64_t)I + 1;
    int64_t r = POOL_SEG_FLOATS / per;
    if (r < POOL_MIN_ROWS) r = POOL_MIN_ROWS;
    if (r > POOL_MAX_ROWS) r = POOL_MAX_ROWS;
    return (int)r;
}

size_t dpep_engine_pool_segment_bytes(const dpep_model_config *m)
{
    const int H = m->hidden, I = widest_inter(m), R = pool_rows(H, I);
    return PBOARD_BYTES + sizeof(float) * (size_t)R * (size_t)(2 * H + 2 * I + 1);
}

char *dpep_engine_node_experts_at(const dpep_comm_shm *win, int node_rank)
{
    const uintptr_t seg = (uintptr_t)dpep_comm_shm_ptr(win, node_rank);
    return (char *)((seg + DPEP_PAGE - 1) & ~(uintptr_t)(DPEP_PAGE - 1));
}

dpep_status engine_pool_create(MPI_Comm ep, const dpep_model_config *m, const dpep_weights *w,
                               dpep_comm_shm *experts, double timeout_s, engine_pool **out)
{
    *out = NULL;
    if (!experts || !w->expert_mem || m->n_routed == 0) return DPEP_OK;
    MPI_Comm node = MPI_COMM_NULL;
    DPEP_CHECK_MPI(MPI_Comm_split_type(ep, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
    int n = 0, me = 0;
    MPI_Comm_size(node, &n);
    MPI_Comm_rank(node, &me);
    /* the expert window's segment `me` must be this rank's experts */
    int ok = n >= 2 && dpep_engine_node_experts_at(experts, me) == w->expert_mem, all_ok = 0;
    DPEP_CHECK_MPI(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, node));
    if (!all_ok) {
        if (n >= 2 && me == 0)
            DPEP_WARN("engine: expert pool off: the expert window does not match the node's "
                      "ranks of the EP group");
        MPI_Comm_free(&node);
        return DPEP_OK;
    }
    bool all_fit = false;
    DPEP_TRY(dpep_engine_node_fits(node, engine_team(), &all_fit));
    engine_pool *p = calloc(1, sizeof *p + (sizeof(pboard *) + 6 * sizeof(float *)) * (size_t)n);
    dpep_status st = DPEP_OK;
    ok = p != NULL;
    DPEP_CHECK_MPI_GOTO(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, node), st, fail);
    if (!all_ok) {
        st = DPEP_ERR_NOMEM;
        goto fail;
    }
    {
        char *q = (char *)(p + 1);
        p->b = (pboard **)(void *)q, q += sizeof(pboard *) * (size_t)n;
        p->X = (float **)(void *)q, q += sizeof(float *) * (size_t)n;
        p->RW = (float **)(void *)q, q += sizeof(float *) * (size_t)n;
        p->G = (float **)(void *)q, q += sizeof(float *) * (size_t)n;
        p->U = (float **)(void *)q, q += sizeof(float *) * (size_t)n;
        p->Y = (float **)(void *)q, q += sizeof(float *) * (size_t)n;
        p->base = (char **)(void *)q;
    }
    p->n = n;
    p->me = me;
    p->H = m->hidden;
    p->I = widest_inter(m);
    p->R = pool_rows(p->H, p->I);
    p->timeout_s = timeout_s;
    p->over = !all_fit;
    const char *lv = getenv("DPEP_TEST_POOL_LEAVE");
    p->leave = lv && strcmp(lv, "1") == 0;
    p->mine = w->expert_mem;
    p->mine_len = w->expert_bytes;
    p->st.expert_bytes = (int64_t)w->expert_bytes;
    p->table = (dpep_moe_wave_offload){.wave = pool_wave, .done = pool_done, .ctx = p};
    DPEP_TRY_GOTO(dpep_comm_create(node, "expert_pool", DPEP_COMM_MPI, timeout_s, &p->c), st, fail);
    MPI_Comm_free(&node);
    st = dpep_comm_shm_create(p->c, dpep_engine_pool_segment_bytes(m), &p->win);
    if (st == DPEP_ERR_NOMEM) { /* the same verdict on every node rank */
        if (me == 0)
            DPEP_WARN("engine: expert pool off: no room for its %.1f MiB per rank of node-shared "
                      "memory", (double)dpep_engine_pool_segment_bytes(m) / 1048576.0);
        dpep_comm_destroy(p->c);
        free(p);
        return DPEP_OK;
    }
    if (st != DPEP_OK) goto fail;
    dpep_comm_shm_resident(p->win); /* waves' rows and parts: no first touch in a step */
    for (int q = 0; q < n; q++) {
        char *seg = dpep_comm_shm_ptr(p->win, q);
        const size_t R = (size_t)p->R, H = (size_t)p->H, I = (size_t)p->I;
        p->b[q] = (pboard *)(void *)seg;
        p->X[q] = (float *)(void *)(seg + PBOARD_BYTES);
        p->Y[q] = p->X[q] + R * H;
        p->G[q] = p->Y[q] + R * H;
        p->U[q] = p->G[q] + R * I;
        p->RW[q] = p->U[q] + R * I;
        p->base[q] = dpep_engine_node_experts_at(experts, q);
    }
    for (int q = 0; q < n; q++) {
        if (q == me) continue;
        const char *seg = dpep_comm_shm_ptr(experts, q);
        const size_t len = dpep_comm_shm_size(experts, q), skip = (size_t)(p->base[q] - seg);
        prefault(p->base[q], len > skip ? (len - skip) / DPEP_PAGE * DPEP_PAGE : 0);
    }
    /* which pages the window gave the experts, once every segment of it is
     * mapped here (smaps counts a mapping's huge pages as a whole: the
     * window is one mapping) */
    p->st.expert_huge_bytes = dpep_pages_huge_bytes(w->expert_mem, w->expert_bytes);
    memset(p->b[me], 0, sizeof(pboard));
    DPEP_TRY_GOTO(dpep_comm_shm_fence(p->win), st, fail);
    *out = p;
    return DPEP_OK;
fail:
    if (node != MPI_COMM_NULL) MPI_Comm_free(&node);
    if (p) {
        if (p->win) dpep_comm_shm_destroy(p->win);
        dpep_comm_destroy(p->c);
        free(p);
    }
    return st;
}

void engine_pool_destroy(engine_pool *p)
{
    if (!p) return;
    dpep_comm_shm_destroy(p->win);
    dpep_comm_destroy(p->c);
    free(p);
}

const dpep_moe_wave_offload *engine_pool_table(engine_pool *p) { return p ? &p->table : NULL; }

void engine_pool_stats(const engine_pool *p, dpep_engine_assist_stats *out)
{
    if (!p) return;
    out->expert_bytes = p->st.expert_bytes;
    out->expert_huge_bytes = p->st.expert_huge_bytes;
    out->pool_waves = p->st.pool_waves;
    out->pool_waves_own = p->st.pool_waves_own;
    out->pool_parts_borrowed = p->st.pool_parts_borrowed;
    out->pool_parts_lent = p->st.pool_parts_lent;
    out->pool_wait_s = p->st.pool_wait_s;
}
