/* assist.c — the DP assist (engine_assist.h): idle DP ranks of a node
 * compute column parts of a busy peer's replicated products.
 *
 * Shared memory: one segment per node rank (comm/'s dpep_comm_shm), each a
 * board (the rank's state as an owner) followed by xs [max_rows, kmax] (the
 * current job's activations), ys [max_rows, nmax] (the helpers' parts) and
 * gs, us [max_rows, imax] (a shared-expert MLP's intermediate) — or, for a
 * lent prefill core, the context's latents, a group of heads' queries and
 * the helpers' heads (seg_plan sizes it for both). A job is one product
 * cut into parts (kinds: COLS, BATCH, MLP, PREFILL; see `job`). The
 * board's claim word is (job << 32 | next part): a part is taken by a
 * compare-and-swap that names the job, so a claim made against a finished
 * job fails; the owner posts the next job only after every part of the
 * current one is done, and closes the claim word (the new job, no part
 * open) before it rewrites the descriptor, so a successful claim always
 * read the current job's descriptor, xs and ys. (Without that closing, a
 * helper that read a finished job's claim word and then the next job's
 * descriptor could claim a part past the finished job's end: its count of
 * done parts then ended the next job one part early.) */
#include "engine_assist.h"
#include "engine_spin.h"

#include "dpep_attn.h"
#include "dpep_linear.h"

#include <limits.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define ASSIST_MAX_PARTS 256  /* parts of one product at most              */
#define CLAIM_CLOSED 0x7fffffffu /* the part of a claim word whose job is being
                                    posted: past every job's parts          */
#define ASSIST_SEG_FLOATS ((int64_t)2 << 20) /* a segment's rows: up to 8 MiB of
                                    activations, parts and MLP intermediate,
                                    at least ENGINE_ASSIST_MIN_ROWS rows       */
#define ASSIST_PF_HEADS 8        /* the prefill core: heads of one group the
                                    segment holds for a step-sized prompt     */
#define ASSIST_SEG_MAX_FLOATS ((int64_t)16 << 20) /* what the prefill core may
                                    grow a segment to: 64 MiB                 */
#define ASSIST_SPIN_FIT_S 2e-3   /* a helper's spin before it sleeps, when every
                                    rank has cores of its own (the gaps
                                    between a region's products are shorter) */
#define ASSIST_SPIN_OVER_S 20e-6 /* the same with more ranks than cores       */

/* ROLE_SHARE: every node rank has tokens, few enough that the registered
 * products read more weight bytes than they compute on (see share_nt):
 * each product is computed once for all of the node's rows, column parts
 * claimed by whoever comes first. */
enum { ROLE_NONE = 0, ROLE_OWNER, ROLE_HELPER, ROLE_SHARE };

/* A job: one product cut into parts. COLS: dpep_linear_nt of a registered
 * matrix, part k = output columns [k width, (k+1) width); the activations
 * are copied with row stride K, the helpers' parts land with row stride N.
 * BATCH: dpep_linear_batched over views of a registered matrix (view 0
 * starts r0 elements into it: vrows x vcols, its row stride), part k =
 * products [k width, (k+1) width); activations and parts keep the caller's
 * layout (ldx, xs; ldy, ys). */
/* MLP: a SwiGLU MLP of registered gate / up / down (the shared experts),
 * posted before the owner's routed experts so that a helper that finishes
 * its own routed experts first computes it meanwhile: parts [0, n1) are
 * gate and up columns [k width, +width) with their SwiGLU into the shared
 * G (row stride inter), parts [n1, n_parts) down's output columns
 * [(k - n1) w2, +w2) from the whole G, started once every part of the
 * first phase is done (done1). */
/* PREFILL: a group of J_BATCH heads of one sequence's prefill attention
 * core (attn/'s dpep_attn_prefill_head), heads [J_H0, J_H0 + J_BATCH) of
 * the layer's (kv_b's rows of them), part k = the group's head k; the
 * context's latents at the segment's start, the group's queries packed
 * J_LDX floats in ([n, J_BATCH (nope + rope)]), the helpers' heads J_LDY
 * floats in ([n, J_BATCH v]); dims in J_VROWS (nope), J_VCOLS (v), J_WS
 * (rope), J_XS (kv_lora), the scale's bits in J_YS; J_R0 = pos0. */
enum { JOB_COLS = 0, JOB_BATCH = 1, JOB_MLP = 2, JOB_PREFILL = 3 };
enum { J_KIND, J_MAT, J_M, J_WIDTH, J_NPARTS, J_NT, J_R0, J_VROWS, J_VCOLS, J_WS, J_LDX, J_XS,
       J_LDY, J_YS, J_BATCH, J_UP, J_DOWN, J_N1, J_W2, J_H0, J_COUNT };
typedef struct job {
    int64_t v[J_COUNT];
} job;

typedef struct board {
    _Atomic uint32_t gen;      /* bumped at every post, open and close (futex) */
    _Atomic uint32_t sleepers; /* helpers asleep on gen                    */
    _Atomic uint32_t region;   /* the region the owner opened last         */
    _Atomic uint32_t closed;   /* the region it closed last                */
    _Atomic uint32_t failed;   /* the owner gave up a job (helpers stop)   */
    char pad0[44];
    _Atomic uint64_t claim;    /* job << 32 | next part                    */
    _Atomic uint32_t done;     /* parts helpers finished of the job        */
    _Atomic uint32_t done1;    /* MLP: first-phase parts finished (anyone) */
    char pad1[48];
    /* the current job (J_*), written before claim names it */
    _Atomic int64_t jd[J_COUNT];
    /* shared products (ROLE_SHARE): this rank's last posted product
     * (sh_post, its count since create; its rows in the segment), its
     * matrix and rows by the product's parity (a peer reading them for
     * product s may find this rank posted at s + 1 already, never s + 2);
     * node rank 0's board holds the node's part counters (monotonic:
     * product s owns parts [P_s, P_s + n_s) of them) */
    _Atomic uint64_t sh_post;
    _Atomic int32_t sh_mat[2], sh_M[2];
    _Atomic uint32_t sh_failed; /* this rank gave up a shared product      */
    _Alignas(64) _Atomic uint64_t sh_next; /* (rank 0's) next part to claim */
    _Alignas(64) _Atomic uint64_t sh_done; /* (rank 0's) parts finished    */
    _Alignas(64) char pad2[1];
    int64_t T[2];              /* the step's tokens, by step parity        */
    uint64_t reg_hash;         /* the registry's shape (create's check)    */
    int32_t reg_n, ok;         /* its size; this rank's allocations held  */
} board;
#define BOARD_BYTES (((sizeof(board) + 63) / 64) * 64)

typedef struct reg_entry {
    const void *p;
    int idx;
} reg_entry;


struct engine_assist {
    dpep_comm *c;               /* owned: the node's ranks of the EP group  */
    dpep_comm_shm *win;         /* owned                                    */
    int me, n;
    board **b;                  /* [n] each rank's board                    */
    float **xs, **ys;           /* [n] each rank's activations / parts      */
    float **gs, **us;           /* [n] each rank's MLP intermediate [max_rows, imax] */
    int64_t imax;               /* widest registered shared-expert MLP      */
    float *mlp_y;               /* [pf_rows, hidden] the posted MLP's output */
    int hidden;
    /* the MLP job posted and not finished yet (owner) */
    bool pending;
    job pend;                   /* its first row chunk (posted)             */
    const float *pend_x;
    int pend_rows, pend_chunks; /* all its rows, in that many chunks        */
    const dpep_mat **mats;      /* [n_mats] registry, in registration order */
    reg_entry *by_p;            /* [n_mats] sorted by storage address       */
    int n_mats;
    int max_rows;               /* rows of a lent product at once (more: in row chunks) */
    int64_t pf_rows;            /* new tokens of a lent prefill core at most */
    int64_t kmax, nmax;
    double timeout_s;
    double spin_s;              /* how long a helper spins before sleeping  */
    bool small_parts;           /* tests: parts of the column alignment     */
    bool leave_parts;           /* tests: the owner leaves every part to its
                                   helpers (lending is then certain)        */
    bool race;                  /* tests: pauses that widen the window of a
                                   late claim (DPEP_TEST_ASSIST_RACE=1)     */
    /* this step */
    uint64_t step;
    uint32_t region;            /* regions opened so far (every rank alike) */
    engine_assist_region kind;  /* the current region's                     */
    int role, owner, n_helpers;
    uint32_t job;               /* owner: jobs posted so far                */
    int64_t *T;                 /* [n] the step's token counts              */
    unsigned char mine[ASSIST_MAX_PARTS];
    dpep_status err;            /* the offload's first failure (owner)      */
    dpep_engine_assist_stats st;
    dpep_linear_offload table;  /* the owner's entries (ctx: this)          */
    dpep_linear_offload share_table; /* ROLE_SHARE's (ctx: this)            */
    bool share_off;             /* tests / A-B: no ROLE_SHARE
                                   (DPEP_TEST_ASSIST_SHARE=0)               */
    int share_rows;             /* every rank's tokens at most this for
                                   ROLE_SHARE: the small-M crossover of the
                                   registry's weights, at most max_rows     */
    uint64_t sh_seq;            /* shared products so far (every rank alike) */
    uint64_t sh_parts;          /* their parts so far (every rank alike)    */
    int *sh_m;                  /* [n] the node ranks' rows of a shared product */
    dpep_attn_lend attn_lend;   /* the prefill core's (ctx: this)           */
    bool open;                  /* a region is open (owner)                 */
    size_t seg_floats;          /* floats of a segment after its board      */
    float *pf;                  /* [team][pf_floats] prefill-core scratch   */
    size_t pf_floats;
};

/* ---------------------------------------------------------------------- */
static long futex(_Atomic uint32_t *w, int op, uint32_t val, const struct timespec *ts)
{
    /* shared (not FUTEX_PRIVATE): the word lives in a mapping of several
     * processes */
    return syscall(SYS_futex, (uint32_t *)w, op, val, ts, NULL, 0);
}

/* Owner: tell the helpers the board changed. */
static void bump(board *b)
{
    atomic_fetch_add_explicit(&b->gen, 1, memory_order_seq_cst);
    if (atomic_load_explicit(&b->sleepers, memory_order_seq_cst) > 0)
        futex(&b->gen, FUTEX_WAKE, INT_MAX, NULL);
}

/* Helper: wait until b->gen differs from g (spin, then sleep in 20 ms
 * slices); false once `deadline` has passed. */
static bool wait_gen(board *b, uint32_t g, double spin_s, double deadline)
{
    const double t_end = dpep_clock_s() + spin_s;
    for (int i = 1;; i++) {
        if (atomic_load_explicit(&b->gen, memory_order_acquire) != g) return true;
        engine_cpu_relax();
        if ((i & 255) == 0 && dpep_clock_s() > t_end) break;
    }
    const struct timespec ts = {0, 20 * 1000 * 1000};
    while (atomic_load_explicit(&b->gen, memory_order_acquire) == g) {
        if (dpep_clock_s() > deadline) return false;
        atomic_fetch_add_explicit(&b->sleepers, 1, memory_order_seq_cst);
        futex(&b->gen, FUTEX_WAIT, g, &ts);
        atomic_fetch_sub_explicit(&b->sleepers, 1, memory_order_seq_cst);
    }
    return true;
}

/* Tests: a pause of us microseconds. */
static void pause_us(long us)
{
    const struct timespec ts = {0, us * 1000};
    nanosleep(&ts, NULL);
}

/* ---------------------------------------------------------------------- */
/* Registry: the replicated matrices, in an order every rank repeats.     */
/* ---------------------------------------------------------------------- */
static int reg_collect(const dpep_model_config *m, const dpep_weights *w, unsigned what,
                       const dpep_mat **out)
{
    int n = 0;
#define ADD(M_)                                                            \
    do {                                                                   \
        if ((M_).p && (M_).rows > 0 && (M_).cols > 0) {                    \
            if (out) out[n] = &(M_);                                       \
            n++;                                                           \
        }                                                                  \
    } while (0)
    for (int l = 0; l < m->n_layers; l++) {
        const dpep_layer_w *L = &w->layer[l];
        ADD(L->q_a);
        ADD(L->q_b);
        ADD(L->kv_a);
        ADD(L->kv_b); /* its per-head views: the absorbed decode's batched products */
        ADD(L->o);
        const dpep_mlp_w *f = L->moe ? &L->shared : &L->mlp;
        if (f->inter > 0 && (what & (L->moe ? ENGINE_ASSIST_SHARED : ENGINE_ASSIST_DENSE))) {
            ADD(f->gate);
            ADD(f->up);
            ADD(f->down);
        }
    }
#undef ADD
    return n;
}

static int cmp_entry(const void *a, const void *b)
{
    const uintptr_t x = (uintptr_t)((const reg_entry *)a)->p, y = (uintptr_t)((const reg_entry *)b)->p;
    return x < y ? -1 : x > y;
}

/* The registry index of W, or -1 (not registered, or a view of a
 * registered matrix's storage with another shape). */
static int reg_find(const engine_assist *a, const dpep_mat *W)
{
    int lo = 0, hi = a->n_mats - 1;
    const uintptr_t key = (uintptr_t)W->p;
    while (lo <= hi) {
        const int mid = (lo + hi) / 2;
        const uintptr_t v = (uintptr_t)a->by_p[mid].p;
        if (v == key) {
            const dpep_mat *R = a->mats[a->by_p[mid].idx];
            if (R->rows != W->rows || R->cols != W->cols || R->t != W->t || R->ld != W->ld)
                return -1;
            return a->by_p[mid].idx;
        }
        if (v < key) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

/* Column width of a part of an M-row product with W: the single-product
 * split's chunk for two threads (about 256 KiB of weights), so that a part
 * is worth a claim; at most ASSIST_MAX_PARTS parts. */
static int part_width(const engine_assist *a, int M, const dpep_mat *W)
{
    const int N = W->rows, al = dpep_linear_col_align(M, W);
    int w = a->small_parts ? al : dpep_linear_col_chunk(M, W, 2);
    const int lo = (N + ASSIST_MAX_PARTS - 1) / ASSIST_MAX_PARTS;
    if (w < lo) w = lo;
    return (w + al - 1) / al * al;
}

/* The registered matrix whose storage holds p (a view's first element),
 * or -1. */
static int reg_holding(const engine_assist *a, const void *p)
{
    int lo = 0, hi = a->n_mats - 1, best = -1;
    while (lo <= hi) { /* the last entry at or below p */
        const int mid = (lo + hi) / 2;
        if ((uintptr_t)a->by_p[mid].p <= (uintptr_t)p) best = mid, lo = mid + 1;
        else hi = mid - 1;
    }
    if (best < 0) return -1;
    const dpep_mat *R = a->mats[a->by_p[best].idx];
    const uintptr_t end = (uintptr_t)R->p + (uintptr_t)R->rows * (uintptr_t)R->ld * dpep_wtype_size(R->t);
    return (uintptr_t)p < end ? a->by_p[best].idx : -1;
}

/* The matrix a part of job j reads: the registered one (COLS) or view 0 of
 * its products (BATCH). */
static dpep_mat job_matrix(const engine_assist *a, const job *j)
{
    dpep_mat m = *a->mats[j->v[J_MAT]];
    if (j->v[J_KIND] == JOB_BATCH) {
        m.p = (char *)m.p + (size_t)j->v[J_R0] * dpep_wtype_size(m.t);
        m.rows = (int)j->v[J_VROWS];
        m.cols = (int)j->v[J_VCOLS];
    }
    return m;
}

/* MLP: wait until every first-phase part is done (a second-phase part
 * reads the whole G); false past the timeout. */
static bool wait_phase1(const engine_assist *a, board *b, int64_t n1)
{
    const double t0 = dpep_clock_s();
    long spins = 0;
    while ((int64_t)atomic_load_explicit(&b->done1, memory_order_acquire) < n1) {
        engine_cpu_relax();
        if ((++spins & 1023) == 0) {
            sched_yield();
            if (dpep_clock_s() - t0 > a->timeout_s) return false;
        }
    }
    return true;
}

/* Part k of job j (posted on board b, whose segment holds G and U) on X / Y
 * (laid out as the job says for the shared copies; as the caller's for the
 * owner's own: the same ldx / ldy for BATCH). false: a wait timed out. */
static bool part_run(const engine_assist *a, board *b, float *G, float *U, const job *j,
                     const dpep_mat *W, int k, const float *X, int64_t ldx, float *Y, int64_t ldy)
{
    const int M = (int)j->v[J_M], width = (int)j->v[J_WIDTH];
    if (j->v[J_KIND] == JOB_PREFILL) {
        const int hn = (int)j->v[J_BATCH], bw = (int)(j->v[J_VROWS] + j->v[J_VCOLS]);
        const dpep_mat kg = dpep_mat_rows(*W, (int)j->v[J_H0] * bw, hn * bw);
        dpep_attn_prefill_job pj = {.H = hn, .nope = (int)j->v[J_VROWS],
                                    .rope = (int)j->v[J_WS], .v = (int)j->v[J_VCOLS],
                                    .kv_lora = (int)j->v[J_XS], .lat = X, .q = X + j->v[J_LDX],
                                    .pos0 = j->v[J_R0], .n = M, .out = Y, .ldo = ldy};
        const uint32_t bits = (uint32_t)j->v[J_YS];
        memcpy(&pj.scale, &bits, sizeof bits);
#ifdef _OPENMP
        const int tid = omp_in_parallel() ? omp_get_thread_num() : 0;
#else
        const int tid = 0;
#endif
        dpep_attn_prefill_head(&pj, &kg, k, a->pf + (size_t)tid * a->pf_floats);
        return true;
    }
    if (j->v[J_KIND] == JOB_COLS) {
        const int N = W->rows, c0 = k * width, cn = N - c0 < width ? N - c0 : width;
        dpep_linear_nt_cols(M, X, ldx, W, c0, cn, 0.0f, Y, ldy);
    } else if (j->v[J_KIND] == JOB_BATCH) {
        const int n = (int)j->v[J_BATCH], b0 = k * width, b1 = b0 + width < n ? b0 + width : n;
        dpep_linear_batched_part(j->v[J_NT] != 0, b0, b1, M, X, ldx, j->v[J_XS], W, j->v[J_WS],
                                 0.0f, Y, ldy, j->v[J_YS]);
    } else if (k < j->v[J_N1]) { /* MLP, first phase */
        const dpep_mat *Wg = a->mats[j->v[J_MAT]], *Wu = a->mats[j->v[J_UP]];
        const int I = Wg->rows, c0 = k * width, cn = I - c0 < width ? I - c0 : width;
        dpep_linear_nt_cols(M, X, ldx, Wg, c0, cn, 0.0f, G, I);
        dpep_linear_nt_cols(M, X, ldx, Wu, c0, cn, 0.0f, U, I);
        dpep_moe_swiglu(G, U, I, M, c0, cn);
        atomic_fetch_add_explicit(&b->done1, 1, memory_order_release);
    } else { /* MLP, second phase */
        const dpep_mat *Wd = a->mats[j->v[J_DOWN]];
        const int H = Wd->rows, w2 = (int)j->v[J_W2];
        const int c0 = (int)(k - j->v[J_N1]) * w2, cn = H - c0 < w2 ? H - c0 : w2;
        if (!wait_phase1(a, b, j->v[J_N1])) return false;
        dpep_linear_nt_cols(M, G, Wd->cols, Wd, c0, cn, 0.0f, Y, ldy);
    }
    return true;
}

/* Part k's results from the shared parts into Y (the owner's); an MLP's
 * first-phase parts are in the shared G already. */
static void part_copy(const engine_assist *a, const job *j, const dpep_mat *W, int k,
                      const float *Ys, float *Y, int64_t ldy)
{
    const int M = (int)j->v[J_M], width = (int)j->v[J_WIDTH];
    if (j->v[J_KIND] == JOB_PREFILL) { /* head k's columns of the n rows */
        const int v = (int)j->v[J_VCOLS];
        const size_t lds = (size_t)j->v[J_BATCH] * (size_t)v; /* the group's packed heads */
        for (int r = 0; r < M; r++)
            memcpy(Y + (size_t)r * (size_t)ldy + (size_t)k * v, Ys + (size_t)r * lds + (size_t)k * v,
                   sizeof(float) * (size_t)v);
        return;
    }
    if (j->v[J_KIND] == JOB_COLS || j->v[J_KIND] == JOB_MLP) {
        int N = W->rows, c0 = k * width, w = width;
        if (j->v[J_KIND] == JOB_MLP) {
            if (k < j->v[J_N1]) return;
            N = a->mats[j->v[J_DOWN]]->rows, w = (int)j->v[J_W2];
            c0 = (int)(k - j->v[J_N1]) * w;
        }
        const int cn = N - c0 < w ? N - c0 : w;
        for (int r = 0; r < M; r++)
            memcpy(Y + (size_t)r * (size_t)ldy + c0, Ys + (size_t)r * (size_t)N + c0,
                   sizeof(float) * (size_t)cn);
        return;
    }
    const int n = (int)j->v[J_BATCH], b0 = k * width, b1 = b0 + width < n ? b0 + width : n;
    const int N = j->v[J_NT] ? W->rows : W->cols;
    for (int bb = b0; bb < b1; bb++)
        for (int r = 0; r < M; r++) {
            const size_t o = (size_t)r * (size_t)ldy + (size_t)bb * (size_t)j->v[J_YS];
            memcpy(Y + o, Ys + o, sizeof(float) * (size_t)N);
        }
}

/* ---------------------------------------------------------------------- */
/* Owner: a job posted, its parts claimed with the helpers, theirs copied */
/* ---------------------------------------------------------------------- */
static void job_post(engine_assist *a, const job *j)
{
    board *b = a->b[a->me];
    const uint64_t id = (uint64_t)++a->job;
    /* close the claim word first (see the top of the file); the fence
     * orders it before the descriptor's stores */
    atomic_store_explicit(&b->claim, id << 32 | CLAIM_CLOSED, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    for (int i = 0; i < J_COUNT; i++) atomic_store_explicit(&b->jd[i], j->v[i], memory_order_relaxed);
    atomic_store_explicit(&b->done, 0, memory_order_relaxed);
    atomic_store_explicit(&b->done1, 0, memory_order_relaxed);
    if (a->race) pause_us(200); /* tests: the window a late claim would need */
    atomic_store_explicit(&b->claim, id << 32, memory_order_release);
    bump(b);
}

/* The owner's share of the posted job j: it claims what is left, waits for
 * the parts helpers hold, copies theirs into Y. */
static void job_finish(engine_assist *a, const job *j, const dpep_mat *W, const float *X,
                       int64_t ldx, float *Y, int64_t ldy)
{
    board *b = a->b[a->me];
    float *G = a->gs[a->me], *U = a->us[a->me];
    const float *Ys = j->v[J_KIND] == JOB_PREFILL ? a->xs[a->me] + j->v[J_LDY] : a->ys[a->me];
    const int n_parts = (int)j->v[J_NPARTS];
    memset(a->mine, 0, (size_t)n_parts);
    int own = 0, late = 0;
    const int nthr = engine_team();
    const bool claims = !a->leave_parts;
#pragma omp parallel num_threads(nthr) if (nthr > 1) reduction(+ : own, late)
    for (; claims;) {
        uint64_t c = atomic_load_explicit(&b->claim, memory_order_relaxed);
        const int k = (int)(c & 0xffffffffu);
        if (k >= n_parts) break;
        if (!atomic_compare_exchange_weak_explicit(&b->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_relaxed))
            continue;
        if (!part_run(a, b, G, U, j, W, k, X, ldx, Y, ldy)) late++;
        a->mine[k] = 1;
        own++;
    }
    /* the helpers' parts: each is being computed by a helper that claimed it */
    const uint32_t need = (uint32_t)(n_parts - own);
    const double t0 = dpep_clock_s();
    if (atomic_load_explicit(&b->done, memory_order_acquire) < need) a->st.waits_parts++;
    long spins = 0;
    while (late == 0 && atomic_load_explicit(&b->done, memory_order_acquire) < need) {
        engine_cpu_relax();
        if ((++spins & 1023) == 0) {
            sched_yield();
            if (dpep_clock_s() - t0 > a->timeout_s) late++;
        }
    }
    if (late) {
        DPEP_ERROR("engine: DP assist: rank %d waited %.0f s for a node peer's parts of a "
                   "product (%d of %d outstanding; runtime.comm_timeout_s)",
                   dpep_comm_rank(a->c), a->timeout_s, (int)(need - atomic_load(&b->done)),
                   n_parts);
        atomic_store_explicit(&b->failed, 1, memory_order_release);
        bump(b);
        a->err = DPEP_ERR_TIMEOUT; /* the step fails at close */
        return;
    }
    a->st.wait_parts_s += dpep_clock_s() - t0;
    for (int k = 0; need > 0 && k < n_parts; k++)
        if (!a->mine[k]) part_copy(a, j, W, k, Ys, Y, ldy);
    a->st.products++;
    a->st.parts_borrowed += need;
}

static void run_job(engine_assist *a, const job *j, const dpep_mat *W, const float *X,
                    int64_t ldx, float *Y, int64_t ldy)
{
    job_post(a, j);
    job_finish(a, j, W, X, ldx, Y, ldy);
}

/* Row chunks of an M-row product with W (matrices of W's type) when the
 * segment holds max_rows rows at once: how many (nearly equal: chunk c of
 * n starting at row r0 has chunk_rows(M, r0, n, c) rows), or 0 when chunks
 * would fall on the other side of runtime/linear's small-M crossover than
 * the whole product (row m's results depend on no other row only within
 * one path: dpep_linear.h). */
static int row_chunks(int64_t M, int max_rows, dpep_wtype t)
{
    const int n = (int)((M + max_rows - 1) / max_rows), small = dpep_linear_small_m(t);
    return n > 1 && (M > small) != (M / n > small) ? 0 : n;
}
static inline int chunk_rows(int64_t M, int64_t r0, int n, int c)
{
    return (int)((M - r0) / (n - c));
}

/* An nt product of a registered matrix, lent by column parts; more rows
 * than the segment holds go in row chunks of nearly equal size, one job
 * each. Row m's results do not depend on the other rows within one of
 * runtime/linear's paths (dpep_linear.h), so the chunks give the bits of
 * the whole product as long as each takes the path the whole would: a
 * product whose chunks would fall on the other side of the small-M
 * crossover runs unlent. */
static bool offload_nt(void *ctx, int M, const float *X, int64_t ldx, const dpep_mat *W,
                       float beta, float *Y, int64_t ldy)
{
    engine_assist *a = ctx;
    /* (a posted MLP holds the board until the region closes) */
    if (beta != 0.0f || M < 1 || a->err != DPEP_OK || a->pending) return false;
    const int idx = reg_find(a, W);
    if (idx < 0) return false;
    const int n_chunks = row_chunks(M, a->max_rows, W->t);
    if (n_chunks == 0) return false;
    /* every chunk's parts as wide as the first's (widths do not change the
     * bits) */
    const int N = W->rows, K = W->cols, width = part_width(a, chunk_rows(M, 0, n_chunks, 0), W);
    const int n_parts = (N + width - 1) / width;
    if (n_parts < 2) return false;
    float *xs = a->xs[a->me];
    for (int c = 0, r0 = 0; c < n_chunks; c++) {
        const int m = chunk_rows(M, r0, n_chunks, c);
        const float *Xc = X + (size_t)r0 * (size_t)ldx;
        for (int r = 0; r < m; r++)
            memcpy(xs + (size_t)r * (size_t)K, Xc + (size_t)r * (size_t)ldx, sizeof(float) * (size_t)K);
        job j = {{0}};
        j.v[J_KIND] = JOB_COLS, j.v[J_MAT] = idx, j.v[J_M] = m, j.v[J_WIDTH] = width;
        j.v[J_NPARTS] = n_parts;
        run_job(a, &j, W, Xc, ldx, Y + (size_t)r0 * (size_t)ldy, ldy);
        if (a->err != DPEP_OK) return true; /* (the step fails at close) */
        r0 += m;
    }
    if (n_chunks > 1) a->st.rows_chunked++;
    return true;
}

static bool offload_batched(void *ctx, bool nt, int batch, int M, const float *X, int64_t ldx,
                            int64_t xs, const dpep_mat *W, int64_t ws, float beta, float *Y,
                            int64_t ldy, int64_t ys)
{
    engine_assist *a = ctx;
    if (beta != 0.0f || M > a->max_rows || a->err != DPEP_OK || a->pending || !W->p || batch < 2)
        return false;
    const int idx = reg_holding(a, W->p);
    if (idx < 0) return false;
    const dpep_mat *R = a->mats[idx];
    const int K = nt ? W->cols : W->rows, N = nt ? W->rows : W->cols;
    const size_t es = dpep_wtype_size(R->t);
    const int64_t r0 = (int64_t)(((uintptr_t)W->p - (uintptr_t)R->p) / es);
    /* the views must lie in the registered matrix, laid out as it is; the
     * activations and results must fit the segment in the caller's layout
     * (each row's products within its stride) */
    if (W->t != R->t || W->ld != R->ld || W->rows <= 0 || W->cols <= 0 || ws < 0 ||
        r0 + (int64_t)(batch - 1) * ws + (int64_t)(W->rows - 1) * W->ld + W->cols >
            (int64_t)R->rows * R->ld ||
        (int64_t)(batch - 1) * xs + K > ldx || (int64_t)(batch - 1) * ys + N > ldy ||
        (int64_t)M * ldx > (int64_t)a->max_rows * a->kmax ||
        (int64_t)M * ldy > (int64_t)a->max_rows * a->nmax)
        return false;
    const int64_t one = (int64_t)W->rows * W->cols * (int64_t)es; /* bytes of one product */
    int width = a->small_parts ? 1 : (int)((256 * 1024 + one - 1) / one);
    if (width < 1) width = 1;
    if (width < (batch + ASSIST_MAX_PARTS - 1) / ASSIST_MAX_PARTS)
        width = (batch + ASSIST_MAX_PARTS - 1) / ASSIST_MAX_PARTS;
    const int n_parts = (batch + width - 1) / width;
    if (n_parts < 2) return false;
    memcpy(a->xs[a->me], X, sizeof(float) * (size_t)M * (size_t)ldx);
    job j = {{0}};
    j.v[J_KIND] = JOB_BATCH, j.v[J_MAT] = idx, j.v[J_M] = M, j.v[J_WIDTH] = width;
    j.v[J_NPARTS] = n_parts, j.v[J_NT] = nt, j.v[J_R0] = r0, j.v[J_VROWS] = W->rows;
    j.v[J_VCOLS] = W->cols, j.v[J_WS] = ws, j.v[J_LDX] = ldx, j.v[J_XS] = xs, j.v[J_LDY] = ldy;
    j.v[J_YS] = ys, j.v[J_BATCH] = batch;
    run_job(a, &j, W, X, ldx, Y, ldy);
    return true;
}


/* ---------------------------------------------------------------------- */
/* ROLE_SHARE: one product for the node's rows                            */
/* ---------------------------------------------------------------------- */
/* When every node rank has tokens, each reads every replicated matrix for
 * its own few rows: the node streams the attention's weights (and the
 * shared experts') once per rank, where one rank of two threads reads them
 * once. Shared, the ranks meet at each registered product: each copies its
 * rows into its segment, and each column part (about 256 KiB of weights)
 * is claimed by one rank, which computes it for every rank's rows one after
 * the other — the part's weights come from memory once, the second rank's
 * rows find them in cache — into each rank's results in the segments; each
 * rank copies out the parts others computed of its rows. Every rank's rows
 * are dpep_linear_nt_cols of its own M rows: the bits of the product
 * unshared. Every rank takes part in every registered product of an open
 * region in the same order (the engine's regions and the model's layers
 * are the same on every rank; a product's row count never exceeds the
 * step's tokens, which are all within share_rows), so products are counted
 * (sh_seq) and their parts numbered on from the last product's (sh_parts):
 * no counter is ever reset. A peer that posted another matrix for the same
 * product is a broken invariant: the step fails naming it, no rank hangs. */
static bool share_failed(const engine_assist *a)
{
    for (int p = 0; p < a->n; p++)
        if (atomic_load_explicit(&a->b[p]->sh_failed, memory_order_acquire)) return true;
    return false;
}

/* Spin (then yield) until *w >= v; false past the timeout or when a peer
 * gave up. */
static bool share_wait(const engine_assist *a, _Atomic uint64_t *w, uint64_t v)
{
    const double t0 = dpep_clock_s();
    for (long i = 1; atomic_load_explicit(w, memory_order_acquire) < v; i++) {
        engine_cpu_relax();
        if ((i & 1023) == 0) {
            if (share_failed(a) || dpep_clock_s() - t0 > a->timeout_s) return false;
            sched_yield();
        }
    }
    return true;
}

/* A wait that ended without its value: a peer gave up (its own error says
 * why), or the comm timeout passed. */
static void share_wait_error(const engine_assist *a, const char *what, int p)
{
    char w[96];
    snprintf(w, sizeof w, what, p);
    if (share_failed(a))
        DPEP_ERROR("engine: DP assist: rank %d stopped waiting for %s: a node rank gave up",
                   dpep_comm_rank(a->c), w);
    else
        DPEP_ERROR("engine: DP assist: rank %d waited %.0f s for %s (runtime.comm_timeout_s)",
                   dpep_comm_rank(a->c), a->timeout_s, w);
}

static void share_fail(engine_assist *a, dpep_status st)
{
    atomic_store_explicit(&a->b[a->me]->sh_failed, 1, memory_order_release);
    a->err = st; /* the step fails at close */
}

static bool share_nt(void *ctx, int M, const float *X, int64_t ldx, const dpep_mat *W, float beta,
                     float *Y, int64_t ldy)
{
    engine_assist *a = ctx;
    if (beta != 0.0f || M < 1 || a->err != DPEP_OK) return false;
    const int idx = reg_find(a, W);
    if (idx < 0) return false;
    const int N = W->rows, K = W->cols, n = a->n;
    const uint64_t s = ++a->sh_seq;
    board *mine = a->b[a->me], *b0 = a->b[0];
    float *xs = a->xs[a->me];
    for (int r = 0; r < M; r++)
        memcpy(xs + (size_t)r * (size_t)K, X + (size_t)r * (size_t)ldx, sizeof(float) * (size_t)K);
    atomic_store_explicit(&mine->sh_mat[s & 1], idx, memory_order_relaxed);
    atomic_store_explicit(&mine->sh_M[s & 1], M, memory_order_relaxed);
    atomic_store_explicit(&mine->sh_post, s, memory_order_release);
    /* every rank's rows of product s */
    int *m = a->sh_m, m_max = 0;
    double t0 = dpep_clock_s();
    for (int p = 0; p < n; p++) {
        /* posted s (or s + 1 already: a peer that computed every part of s
         * alone went on; its slot for s stays until it posts s + 2, which
         * waits for this rank's s + 1) */
        if (!share_wait(a, &a->b[p]->sh_post, s)) {
            share_wait_error(a, "node rank %d to reach a shared product", p);
            share_fail(a, DPEP_ERR_TIMEOUT);
            return true;
        }
        const int pm = atomic_load_explicit(&a->b[p]->sh_mat[s & 1], memory_order_relaxed);
        m[p] = atomic_load_explicit(&a->b[p]->sh_M[s & 1], memory_order_relaxed);
        if (pm != idx || m[p] < 1 || m[p] > a->share_rows) {
            DPEP_ERROR("engine: DP assist: node rank %d's shared product %llu is matrix %d of "
                       "%d rows, this rank's matrix %d of %d rows: the ranks' products differ",
                       p, (unsigned long long)s, pm, m[p], idx, M);
            share_fail(a, DPEP_ERR_INTERNAL);
            return true;
        }
        if (m[p] > m_max) m_max = m[p];
    }
    a->st.share_wait_s += dpep_clock_s() - t0;
    const int width = part_width(a, m_max, W), n_parts = (N + width - 1) / width;
    const uint64_t base = a->sh_parts, end = base + (uint64_t)n_parts;
    memset(a->mine, 0, (size_t)n_parts);
    int own = 0;
    const int nthr = engine_team();
    /* tests (DPEP_TEST_ASSIST_PARTS=2): node rank 0 leaves every part to
     * its peers, so that its rows are certainly computed elsewhere */
    const bool claims = !(a->leave_parts && a->me == 0);
#pragma omp parallel num_threads(nthr) if (nthr > 1) reduction(+ : own)
    for (; claims;) {
        uint64_t c = atomic_load_explicit(&b0->sh_next, memory_order_relaxed);
        if (c >= end) break;
        if (!atomic_compare_exchange_weak_explicit(&b0->sh_next, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_relaxed))
            continue;
        const int k = (int)(c - base), c0 = k * width, cn = N - c0 < width ? N - c0 : width;
        /* this rank's rows first, then the others' from the cached part
         * (counted once: the bytes read from memory) */
        dpep_linear_nt_cols(M, X, ldx, W, c0, cn, 0.0f, Y, ldy);
        for (int p = 0; p < n; p++)
            if (p != a->me)
                dpep_linear_nt_cols_again(m[p], a->xs[p], K, W, c0, cn, 0.0f, a->ys[p], N);
        a->mine[k] = 1;
        own++;
        atomic_fetch_add_explicit(&b0->sh_done, 1, memory_order_release);
    }
    a->sh_parts = end;
    t0 = dpep_clock_s();
    if (!share_wait(a, &b0->sh_done, end)) {
        share_wait_error(a, "node peers' parts of a shared product", 0);
        share_fail(a, DPEP_ERR_TIMEOUT);
        return true;
    }
    a->st.share_wait_s += dpep_clock_s() - t0;
    const float *ys = a->ys[a->me];
    for (int k = 0; k < n_parts; k++) {
        if (a->mine[k]) continue;
        const int c0 = k * width, cn = N - c0 < width ? N - c0 : width;
        for (int r = 0; r < M; r++)
            memcpy(Y + (size_t)r * (size_t)ldy + c0, ys + (size_t)r * (size_t)N + c0,
                   sizeof(float) * (size_t)cn);
    }
    a->st.share_products++;
    a->st.share_parts += own;
    return true;
}

/* The prefill core lent (dpep_attn_lend): the owner's segment holds the
 * context's latents, then a group of heads' queries (packed) and the
 * helpers' heads of the group; as many heads a group as fit (at least
 * two), the groups one after the other. */
static float *lend_buffer(void *ctx, size_t floats)
{
    engine_assist *a = ctx;
    if (a->role != ROLE_OWNER || !a->open || a->err != DPEP_OK || a->pending ||
        floats > a->seg_floats)
        return NULL;
    return a->xs[a->me];
}

static bool lend_run(void *ctx, const dpep_attn_prefill_job *pj, const dpep_mat *kv_b)
{
    engine_assist *a = ctx;
    const int idx = reg_find(a, kv_b);
    const int H = pj->H, n = pj->n, qk = pj->nope + pj->rope;
    if (idx < 0 || H < 2 || n < 1 || n > a->pf_rows || kv_b->rows != H * (pj->nope + pj->v) ||
        dpep_attn_prefill_head_floats(n, pj->nope, pj->rope, pj->v) > a->pf_floats)
        return false;
    float *base = a->xs[a->me];
    const int64_t lat_f = (pj->pos0 + n) * (int64_t)(pj->kv_lora + pj->rope);
    if (pj->lat != base || pj->ldo < (int64_t)H * pj->v || lat_f >= (int64_t)a->seg_floats)
        return false;
    /* heads a group: what fits after the latents, at most every head */
    int64_t hg = ((int64_t)a->seg_floats - lat_f) / ((int64_t)n * (qk + pj->v));
    if (hg > H) hg = H;
    if (hg > ASSIST_MAX_PARTS) hg = ASSIST_MAX_PARTS;
    if (hg < 2) return false;
    hg = (H + (H + hg - 1) / hg - 1) / ((H + hg - 1) / hg); /* groups of equal size */
    uint32_t bits;
    memcpy(&bits, &pj->scale, sizeof bits);
    a->st.prefill_cores++;
    for (int h0 = 0; h0 < H && a->err == DPEP_OK; h0 += (int)hg) {
        a->st.prefill_groups++;
        const int hn = H - h0 < hg ? H - h0 : (int)hg;
        float *qs = base + lat_f; /* the group's queries, packed */
        for (int r = 0; r < n; r++)
            memcpy(qs + (size_t)r * (size_t)hn * qk, pj->q + ((size_t)r * H + (size_t)h0) * qk,
                   sizeof(float) * (size_t)hn * qk);
        job j = {{0}};
        j.v[J_KIND] = JOB_PREFILL, j.v[J_MAT] = idx, j.v[J_M] = n, j.v[J_WIDTH] = 1;
        j.v[J_NPARTS] = hn, j.v[J_R0] = pj->pos0, j.v[J_VROWS] = pj->nope, j.v[J_VCOLS] = pj->v;
        j.v[J_WS] = pj->rope, j.v[J_XS] = pj->kv_lora, j.v[J_BATCH] = hn, j.v[J_H0] = h0;
        j.v[J_LDX] = lat_f, j.v[J_LDY] = lat_f + (int64_t)n * hn * qk, j.v[J_YS] = bits;
        job_post(a, &j);
        job_finish(a, &j, a->mats[idx], base, 0, pj->out + (size_t)h0 * pj->v, pj->ldo);
    }
    return true; /* (a helper's timeout fails the step at close) */
}

const dpep_attn_lend *engine_assist_attn_lend(engine_assist *a) { return a ? &a->attn_lend : NULL; }

/* The MLP job of rows [r0, r0 + m) of the posted MLP's x (copied into the
 * segment), gate / up of ig / iu (inter rows) and down of id, parts w1 and
 * w2 columns wide. */
static job mlp_job(engine_assist *a, int ig, int iu, int id, int r0, int m, int w1, int w2)
{
    const int I = a->mats[ig]->rows;
    const int n1 = (I + w1 - 1) / w1, n2 = (a->hidden + w2 - 1) / w2;
    memcpy(a->xs[a->me], a->pend_x + (size_t)r0 * (size_t)a->hidden,
           sizeof(float) * (size_t)m * (size_t)a->hidden);
    job j = {{0}};
    j.v[J_KIND] = JOB_MLP, j.v[J_MAT] = ig, j.v[J_UP] = iu, j.v[J_DOWN] = id, j.v[J_M] = m;
    j.v[J_WIDTH] = w1, j.v[J_N1] = n1, j.v[J_W2] = w2, j.v[J_NPARTS] = n1 + n2;
    return j;
}

float *engine_assist_mlp_post(engine_assist *a, const dpep_mlp_w *mlp, const float *x, int64_t M)
{
    if (a->role != ROLE_OWNER || a->pending || a->err != DPEP_OK || M < 1 || M > a->pf_rows ||
        mlp->inter <= 0 || mlp->inter > a->imax)
        return NULL;
    const int ig = reg_find(a, &mlp->gate), iu = reg_find(a, &mlp->up), id = reg_find(a, &mlp->down);
    if (ig < 0 || iu < 0 || id < 0 || mlp->down.rows != a->hidden) return NULL;
    /* more rows than the segment holds: row chunks, the first posted now,
     * the others run at the close (each on the path the whole would take:
     * see offload_nt) */
    const int n_chunks = row_chunks(M, a->max_rows, mlp->gate.t);
    if (n_chunks == 0 || row_chunks(M, a->max_rows, mlp->down.t) == 0) return NULL;
    const int m0 = chunk_rows(M, 0, n_chunks, 0);
    /* every chunk's parts as wide as the first's (widths do not change
     * the bits) */
    const int w1 = part_width(a, m0, &mlp->gate), w2 = part_width(a, m0, &mlp->down);
    if ((mlp->inter + w1 - 1) / w1 + (a->hidden + w2 - 1) / w2 > ASSIST_MAX_PARTS) return NULL;
    a->pend_x = x;
    a->pend_rows = (int)M;
    a->pend_chunks = n_chunks;
    if (n_chunks > 1) a->st.rows_chunked++;
    const job j = mlp_job(a, ig, iu, id, 0, m0, w1, w2);
    job_post(a, &j);
    a->pending = true;
    a->pend = j;
    return a->mlp_y;
}

/* At the close: the owner's share of the posted MLP's first chunk, then its
 * other chunks one after the other (helpers still serving the region). */
static void mlp_finish(engine_assist *a)
{
    const dpep_mat W = job_matrix(a, &a->pend);
    job_finish(a, &a->pend, &W, a->pend_x, a->hidden, a->mlp_y, a->hidden);
    const int ig = (int)a->pend.v[J_MAT], iu = (int)a->pend.v[J_UP], id = (int)a->pend.v[J_DOWN];
    const int w1 = (int)a->pend.v[J_WIDTH], w2 = (int)a->pend.v[J_W2];
    int r0 = (int)a->pend.v[J_M];
    for (int c = 1; c < a->pend_chunks && a->err == DPEP_OK; c++) {
        const int m = chunk_rows(a->pend_rows, r0, a->pend_chunks, c);
        const job j = mlp_job(a, ig, iu, id, r0, m, w1, w2);
        job_post(a, &j);
        job_finish(a, &j, &W, a->pend_x + (size_t)r0 * (size_t)a->hidden, a->hidden,
                   a->mlp_y + (size_t)r0 * (size_t)a->hidden, a->hidden);
        r0 += m;
    }
    a->pending = false;
}

/* ---------------------------------------------------------------------- */
/* Helper: serve the owner's parts until it closes region r               */
/* ---------------------------------------------------------------------- */
static dpep_status serve(engine_assist *a, uint32_t r)
{
    board *b = a->b[a->owner];
    const float *xs = a->xs[a->owner];
    float *ys = a->ys[a->owner], *G = a->gs[a->owner], *U = a->us[a->owner];
    double deadline = dpep_clock_s() + a->timeout_s;
    for (;;) {
        const uint32_t g = atomic_load_explicit(&b->gen, memory_order_acquire);
        if ((int32_t)(atomic_load_explicit(&b->closed, memory_order_acquire) - r) >= 0)
            return DPEP_OK;
        if (atomic_load_explicit(&b->failed, memory_order_acquire)) {
            DPEP_ERROR("engine: DP assist: node rank %d gave up waiting for this rank's parts",
                       a->owner);
            return DPEP_ERR_TIMEOUT;
        }
        bool worked = false;
        if (atomic_load_explicit(&b->region, memory_order_acquire) == r) {
            for (;;) {
                uint64_t c = atomic_load_explicit(&b->claim, memory_order_acquire);
                const int k = (int)(c & 0xffffffffu);
                if (a->race) pause_us(100); /* tests: the owner may post meanwhile */
                job j;
                for (int i = 0; i < J_COUNT; i++)
                    j.v[i] = atomic_load_explicit(&b->jd[i], memory_order_relaxed);
                /* a descriptor of a job posted since c was read: its post
                 * closed the claim word before, so the CAS below fails */
                atomic_thread_fence(memory_order_acquire);
                if (k >= j.v[J_NPARTS] || j.v[J_MAT] < 0 || j.v[J_MAT] >= a->n_mats) break;
                if (!atomic_compare_exchange_weak_explicit(&b->claim, &c, c + 1,
                                                           memory_order_acq_rel,
                                                           memory_order_relaxed))
                    continue;
                /* claimed: the descriptor read above is this job's */
                const dpep_mat W = job_matrix(a, &j);
                bool ok;
                if (j.v[J_KIND] == JOB_PREFILL) /* heads into the segment, [n, J_BATCH v] */
                    ok = part_run(a, b, G, U, &j, &W, k, xs, 0, (float *)xs + j.v[J_LDY],
                                  j.v[J_BATCH] * j.v[J_VCOLS]);
                else if (j.v[J_KIND] == JOB_BATCH)
                    ok = part_run(a, b, G, U, &j, &W, k, xs, j.v[J_LDX], ys, j.v[J_LDY]);
                else /* COLS: [M, K] in, [M, N] out; MLP: [M, hidden] both */
                    ok = part_run(a, b, G, U, &j, &W, k, xs, j.v[J_KIND] == JOB_MLP ? a->hidden : W.cols,
                                  ys, j.v[J_KIND] == JOB_MLP ? a->hidden : W.rows);
                if (!ok) {
                    DPEP_ERROR("engine: DP assist: rank %d waited %.0f s for node rank %d's "
                               "first MLP parts (runtime.comm_timeout_s)", a->me, a->timeout_s,
                               a->owner);
                    return DPEP_ERR_TIMEOUT;
                }
                atomic_fetch_add_explicit(&b->done, 1, memory_order_release);
                a->st.parts_lent++;
                worked = true;
            }
        }
        if (worked) {
            deadline = dpep_clock_s() + a->timeout_s;
            continue;
        }
        const double t_idle = dpep_clock_s();
        const bool woke = wait_gen(b, g, a->spin_s, deadline);
        a->st.idle_s[a->kind] += dpep_clock_s() - t_idle;
        if (!woke) {
            DPEP_ERROR("engine: DP assist: rank %d waited %.0f s for node rank %d to close a "
                       "region of its step (runtime.comm_timeout_s)",
                       a->me, a->timeout_s, a->owner);
            return DPEP_ERR_TIMEOUT;
        }
    }
}

/* ---------------------------------------------------------------------- */
dpep_status engine_assist_step(engine_assist *a, int64_t T)
{
    a->step++;
    board *mine = a->b[a->me];
    mine->T[a->step & 1] = T;
    DPEP_TRY(dpep_comm_shm_fence(a->win));
    int n_own = 0, n_idle = 0;
    for (int p = 0; p < a->n; p++) {
        a->T[p] = a->b[p]->T[a->step & 1];
        if (a->T[p] > 0) n_own++;
        else n_idle++;
    }
    a->role = ROLE_NONE;
    a->owner = -1;
    a->n_helpers = 0;
    if (n_idle == 0 && !a->share_off) {
        /* every rank busy: share the products when every rank's rows are
         * few (the same verdict on every rank: the same counts) */
        bool few = true;
        for (int p = 0; p < a->n; p++) few = few && a->T[p] <= a->share_rows;
        if (few) {
            a->role = ROLE_SHARE;
            a->st.steps_share++;
        }
        return DPEP_OK;
    }
    if (n_own == 0 || n_idle == 0) return DPEP_OK;
    /* idle ranks dealt round-robin over the owners, both in rank order:
     * the j-th idle rank serves owner j mod n_own */
    int j = 0;
    for (int p = 0; p < a->n; p++) {
        if (a->T[p] > 0) continue;
        int want = j++ % n_own, o = 0;
        for (o = 0; o < a->n; o++)
            if (a->T[o] > 0 && want-- == 0) break;
        if (p == a->me) a->role = ROLE_HELPER, a->owner = o;
        if (o == a->me) a->n_helpers++;
    }
    if (a->n_helpers > 0) a->role = ROLE_OWNER;
    if (a->role == ROLE_OWNER) a->st.steps_owner++;
    if (a->role == ROLE_HELPER) a->st.steps_helper++;
    return DPEP_OK;
}

dpep_status engine_assist_open(engine_assist *a, engine_assist_region kind)
{
    a->region++;
    a->kind = kind;
    if (a->role == ROLE_OWNER) {
        board *b = a->b[a->me];
        atomic_store_explicit(&b->region, a->region, memory_order_release);
        bump(b);
        dpep_linear_set_offload(&a->table);
        a->open = true;
    } else if (a->role == ROLE_SHARE) {
        dpep_linear_set_offload(&a->share_table);
    }
    return DPEP_OK;
}

dpep_status engine_assist_close(engine_assist *a)
{
    if (a->role == ROLE_OWNER) {
        if (a->pending) mlp_finish(a); /* the MLP posted in this region: the owner's share now */
        dpep_linear_set_offload(NULL);
        a->open = false;
        board *b = a->b[a->me];
        atomic_store_explicit(&b->closed, a->region, memory_order_release);
        bump(b);
        const dpep_status st = a->err;
        a->err = DPEP_OK;
        return st;
    }
    if (a->role == ROLE_HELPER) return serve(a, a->region);
    if (a->role == ROLE_SHARE) {
        dpep_linear_set_offload(NULL);
        const dpep_status st = a->err;
        a->err = DPEP_OK;
        return st;
    }
    return DPEP_OK;
}

dpep_status engine_assist_close_cb(void *a) { return engine_assist_close(a); }

void engine_assist_stats(const engine_assist *a, dpep_engine_assist_stats *out)
{
    *out = a->st;
    out->node_ranks = a->n;
}

/* ---------------------------------------------------------------------- */
static uint64_t reg_hash(const dpep_mat *const *mats, int n)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the shapes */
    for (int i = 0; i < n; i++) {
        const int64_t v[4] = {mats[i]->rows, mats[i]->cols, mats[i]->t, mats[i]->ld};
        const unsigned char *q = (const unsigned char *)v;
        for (size_t j = 0; j < sizeof v; j++) h = (h ^ q[j]) * 1099511628211ull;
    }
    return h;
}

/* A segment's size (floats after the board) and the rows of a product it
 * holds at once. Products: ASSIST_SEG_FLOATS over a row's floats
 * (activations, parts, the MLP's G and U: per), at least
 * ENGINE_ASSIST_MIN_ROWS (decode batches), at most a step's tokens; longer
 * products go in row chunks (offload_nt). The prefill core: a step-sized
 * prompt's latents (row floats a token) and the queries and results (qv
 * floats a token and head) of ASSIST_PF_HEADS heads (fewer when H is),
 * as far as ASSIST_SEG_MAX_FLOATS allows; longer contexts go in smaller
 * groups of heads (lend_run). Whatever size the prefill core sets, the
 * products use it as rows too. test_rows > 0 (DPEP_TEST_ASSIST_ROWS):
 * exactly that many rows and no more room (tests make row chunks and
 * small head groups certain). */
static void seg_plan(int64_t kmax, int64_t nmax, int64_t imax, int64_t H, int64_t row, int64_t qv,
                     int64_t step_tokens, int64_t test_rows, int64_t *rows, int64_t *floats)
{
    const int64_t per = kmax + nmax + 2 * imax > 0 ? kmax + nmax + 2 * imax : 1;
    if (test_rows > 0) {
        *rows = test_rows;
        *floats = test_rows * per;
        return;
    }
    int64_t r = ASSIST_SEG_FLOATS / per;
    if (r < ENGINE_ASSIST_MIN_ROWS) r = ENGINE_ASSIST_MIN_ROWS;
    if (r > step_tokens) r = step_tokens;
    int64_t f = r * per;
    int64_t pf = step_tokens * (row + qv * (H < ASSIST_PF_HEADS ? H : ASSIST_PF_HEADS));
    if (pf > ASSIST_SEG_MAX_FLOATS) pf = ASSIST_SEG_MAX_FLOATS;
    if (pf > f) {
        f = pf;
        r = f / per < step_tokens ? f / per : step_tokens;
    }
    *rows = r;
    *floats = f;
}

size_t dpep_engine_assist_segment_bytes(const dpep_model_config *m, bool shared, bool dense,
                                        int64_t step_tokens)
{
    if (step_tokens < 1 || m->n_layers < 1) return 0;
    const int64_t H = m->n_heads, hid = m->hidden;
    int64_t kmax = 0, nmax = 0, imax = 0;
#define MAT(R_, C_)                                                        \
    do {                                                                   \
        if ((R_) > nmax) nmax = (R_);                                      \
        if ((C_) > kmax) kmax = (C_);                                      \
    } while (0)
    if (m->q_lora_rank > 0) MAT(m->q_lora_rank, hid);
    MAT(H * (m->qk_nope + m->qk_rope), m->q_lora_rank > 0 ? m->q_lora_rank : hid);
    MAT(m->kv_lora_rank + m->qk_rope, hid);
    MAT(H * (m->qk_nope + m->v_head), m->kv_lora_rank);
    MAT(hid, H * m->v_head);
    const bool has_moe = m->n_routed > 0 && m->first_k_dense < m->n_layers;
    const int64_t is = (int64_t)m->n_shared * m->moe_inter;
    if (shared && has_moe && is > 0) {
        MAT(is, hid);
        MAT(hid, is);
        imax = is;
    }
    const bool has_dense = m->n_routed == 0 || m->first_k_dense > 0;
    if (dense && has_dense && m->inter > 0) {
        MAT(m->inter, hid);
        MAT(hid, m->inter);
    }
#undef MAT
    int64_t rows = 0, floats = 0;
    seg_plan(kmax, nmax, imax, H, m->kv_lora_rank + m->qk_rope,
             m->qk_nope + m->qk_rope + m->v_head, step_tokens, 0, &rows, &floats);
    return BOARD_BYTES + sizeof(float) * (size_t)floats;
}

dpep_status dpep_engine_node_fits(MPI_Comm node, int threads, bool *fits)
{
    int n = 0;
    MPI_Comm_size(node, &n);
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int mine = cpus > 0 && (long)n * (long)threads <= cpus, all = 0;
    DPEP_CHECK_MPI(MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, node));
    *fits = all != 0;
    return DPEP_OK;
}

dpep_status engine_assist_create(MPI_Comm ep, const dpep_model_config *m, const dpep_weights *w,
                                 unsigned what, int64_t step_tokens, double timeout_s,
                                 bool auto_mode, engine_assist **out)
{
    *out = NULL;
    MPI_Comm node = MPI_COMM_NULL;
    DPEP_CHECK_MPI(MPI_Comm_split_type(ep, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
    int n = 0, me = 0;
    MPI_Comm_size(node, &n);
    MPI_Comm_rank(node, &me);
    /* whether every rank's threads have cores of their own (auto: the
     * assist only then; else helpers spin only briefly) */
    bool fits_cores = false;
    DPEP_TRY(dpep_engine_node_fits(node, engine_team(), &fits_cores));
    if (n < 2 || (auto_mode && !fits_cores) || step_tokens < 1) {
        MPI_Comm_free(&node);
        return DPEP_OK;
    }
    dpep_status st = DPEP_OK;
    const int n_mats = reg_collect(m, w, what, NULL);
    int64_t seg_f = 0; /* floats of each segment after its board */
    engine_assist *a = NULL;
    {
        size_t bytes = sizeof *a + sizeof(board *) * (size_t)n + 4 * sizeof(float *) * (size_t)n +
                       sizeof(const dpep_mat *) * (size_t)n_mats + sizeof(reg_entry) * (size_t)n_mats +
                       sizeof(int64_t) * (size_t)n + sizeof(int) * (size_t)n + 64;
        a = calloc(1, bytes);
    }
    int ok = a != NULL;
    if (a) {
        char *q = (char *)(a + 1);
        a->b = (board **)(void *)q, q += sizeof(board *) * (size_t)n;
        a->xs = (float **)(void *)q, q += sizeof(float *) * (size_t)n;
        a->ys = (float **)(void *)q, q += sizeof(float *) * (size_t)n;
        a->gs = (float **)(void *)q, q += sizeof(float *) * (size_t)n;
        a->us = (float **)(void *)q, q += sizeof(float *) * (size_t)n;
        a->T = (int64_t *)(void *)q, q += sizeof(int64_t) * (size_t)n;
        a->sh_m = (int *)(void *)q, q += sizeof(int) * (size_t)n;
        a->mats = (const dpep_mat **)(void *)q, q += sizeof(const dpep_mat *) * (size_t)n_mats;
        a->by_p = (reg_entry *)(void *)q;
        a->n = n;
        a->me = me;
        a->n_mats = n_mats;
        a->timeout_s = timeout_s;
        a->spin_s = fits_cores ? ASSIST_SPIN_FIT_S : ASSIST_SPIN_OVER_S;
        const char *sp = getenv("DPEP_TEST_ASSIST_PARTS");
        a->small_parts = sp && (strcmp(sp, "1") == 0 || strcmp(sp, "2") == 0);
        a->leave_parts = sp && strcmp(sp, "2") == 0;
        const char *sh = getenv("DPEP_TEST_ASSIST_SHARE");
        a->share_off = sh && strcmp(sh, "0") == 0;
        const char *rc = getenv("DPEP_TEST_ASSIST_RACE");
        a->race = rc && strcmp(rc, "1") == 0;
        reg_collect(m, w, what, a->mats);
        a->table = (dpep_linear_offload){.nt = offload_nt, .batched = offload_batched, .ctx = a};
        a->share_table = (dpep_linear_offload){.nt = share_nt, .ctx = a};
        a->attn_lend = (dpep_attn_lend){.buffer = lend_buffer, .run = lend_run, .ctx = a};
        a->hidden = m->hidden;
        for (int l = 0; l < m->n_layers && (what & ENGINE_ASSIST_SHARED); l++)
            if (w->layer[l].moe && w->layer[l].shared.inter > a->imax) a->imax = w->layer[l].shared.inter;
        for (int i = 0; i < n_mats; i++) {
            a->by_p[i] = (reg_entry){a->mats[i]->p, i};
            if (a->mats[i]->cols > a->kmax) a->kmax = a->mats[i]->cols;
            if (a->mats[i]->rows > a->nmax) a->nmax = a->mats[i]->rows;
        }
        qsort(a->by_p, (size_t)n_mats, sizeof *a->by_p, cmp_entry);
        const char *tr = getenv("DPEP_TEST_ASSIST_ROWS");
        const int64_t test_rows = tr && *tr ? strtoll(tr, NULL, 10) : 0;
        int64_t rows = 0;
        seg_plan(a->kmax, a->nmax, a->imax, m->n_heads, m->kv_lora_rank + m->qk_rope,
                 m->qk_nope + m->qk_rope + m->v_head, step_tokens, test_rows, &rows, &seg_f);
        a->max_rows = (int)rows;
        /* ROLE_SHARE while every rank's tokens stay on runtime/linear's
         * small-M path for every registered matrix (products that read
         * more bytes than they compute on) and fit the segment */
        a->share_rows = a->max_rows;
        for (int i = 0; i < n_mats; i++)
            if (dpep_linear_small_m(a->mats[i]->t) < a->share_rows)
                a->share_rows = dpep_linear_small_m(a->mats[i]->t);
        /* a step's tokens: the posted MLP's output, the prefill core's
         * new tokens (its scratch, one per thread of a claiming team) */
        a->pf_rows = step_tokens;
        a->mlp_y = malloc(sizeof(float) * (size_t)a->pf_rows * (size_t)m->hidden);
        if (!a->mlp_y) ok = 0;
        a->pf_floats = dpep_attn_prefill_head_floats((int)step_tokens, m->qk_nope, m->qk_rope, m->v_head);
        a->pf = malloc(sizeof(float) * a->pf_floats * (size_t)engine_team());
        if (!a->pf) ok = 0;
    }
    const int max_rows = a ? a->max_rows : 0;
    /* every rank the same segment size (the model and the step agree) */
    const size_t seg = BOARD_BYTES + sizeof(float) * (size_t)seg_f;
    int all_ok = 0;
    DPEP_CHECK_MPI_GOTO(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, node), st, fail);
    if (!all_ok) {
        st = DPEP_ERR_NOMEM;
        goto fail;
    }
    DPEP_TRY_GOTO(dpep_comm_create(node, "dp_assist", DPEP_COMM_MPI, timeout_s, &a->c), st, fail);
    MPI_Comm_free(&node);
    st = dpep_comm_shm_create(a->c, seg, &a->win);
    if (st == DPEP_ERR_NOMEM && auto_mode) {
        /* no room in /dev/shm (the same verdict on every node rank): auto
         * goes on without the assist, as the shm transport falls back */
        if (me == 0)
            DPEP_WARN("engine: DP assist off: no room for its %.1f MiB per rank of node-shared "
                      "memory (runtime.dp_assist auto)", (double)seg / 1048576.0);
        dpep_comm_destroy(a->c);
        free(a->mlp_y);
        free(a->pf);
        free(a);
        return DPEP_OK;
    }
    if (st != DPEP_OK) goto fail;
    /* the lent products' rows and parts: resident before the first step */
    dpep_comm_shm_resident(a->win);
    dpep_device_advise_resident(NULL, a->mlp_y, sizeof(float) * (size_t)a->pf_rows * (size_t)m->hidden);
    dpep_device_advise_resident(NULL, a->pf, sizeof(float) * a->pf_floats * (size_t)engine_team());
    a->seg_floats = (seg - BOARD_BYTES) / sizeof(float); /* after the board */
    for (int p = 0; p < n; p++) {
        char *base = dpep_comm_shm_ptr(a->win, p);
        a->b[p] = (board *)(void *)base;
        a->xs[p] = (float *)(void *)(base + BOARD_BYTES);
        a->ys[p] = a->xs[p] + (size_t)max_rows * (size_t)a->kmax;
        a->gs[p] = a->ys[p] + (size_t)max_rows * (size_t)a->nmax;
        a->us[p] = a->gs[p] + (size_t)max_rows * (size_t)a->imax;
    }
    board *mine = a->b[me];
    memset(mine, 0, sizeof *mine);
    atomic_store_explicit(&mine->jd[J_MAT], -1, memory_order_relaxed);
    mine->reg_n = n_mats;
    /* (with the shared products' row bound: every rank must take the same
     * role in every step) */
    mine->reg_hash = reg_hash(a->mats, n_mats) ^ (uint64_t)a->share_rows << 40;
    DPEP_TRY_GOTO(dpep_comm_shm_fence(a->win), st, fail);
    int same = 1;
    for (int p = 0; p < n; p++)
        if (a->b[p]->reg_n != n_mats || a->b[p]->reg_hash != mine->reg_hash) same = 0;
    /* every rank read the same boards: the same verdict */
    DPEP_TRY_GOTO(dpep_comm_shm_fence(a->win), st, fail);
    if (!same || n_mats == 0) {
        if (!same && me == 0)
            DPEP_WARN("engine: DP assist off: the node's ranks hold different replicated "
                      "matrices (registries differ)");
        engine_assist_destroy(a);
        return DPEP_OK;
    }
    *out = a;
    return DPEP_OK;
fail:
    if (node != MPI_COMM_NULL) MPI_Comm_free(&node);
    if (a) {
        if (a->win) dpep_comm_shm_destroy(a->win);
        dpep_comm_destroy(a->c);
        free(a->mlp_y);
        free(a->pf);
        free(a);
    }
    return st;
}

void engine_assist_destroy(engine_assist *a)
{
    if (!a) return;
    dpep_linear_set_offload(NULL);
    dpep_comm_shm_destroy(a->win);
    dpep_comm_destroy(a->c);
    free(a->mlp_y);
    free(a->pf);
    free(a);
}
