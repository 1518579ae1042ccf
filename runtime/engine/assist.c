/* assist.c — the DP assist (engine_assist.h): idle DP ranks of a node
 * compute column parts of a busy peer's replicated products.
 *
 * Shared memory: one segment per node rank (comm/'s dpep_comm_shm), each a
 * board (the rank's state as an owner) followed by xs [max_rows, kmax] (the
 * current product's activations) and ys [max_rows, nmax] (the helpers'
 * parts, row stride N). The board's claim word is (job << 32 | next part):
 * a part is taken by a compare-and-swap that names the job, so a claim
 * made against a finished job fails; the owner posts the next job only
 * after every part of the current one is done, so a successful claim
 * always reads the current job's descriptor, xs and ys. */
#include "engine_assist.h"

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
#define ASSIST_SPIN_FIT_S 2e-3   /* a helper's spin before it sleeps, when every
                                    rank has cores of its own (the gaps
                                    between a region's products are shorter) */
#define ASSIST_SPIN_OVER_S 20e-6 /* the same with more ranks than cores       */

enum { ROLE_NONE = 0, ROLE_OWNER, ROLE_HELPER };

typedef struct board {
    _Atomic uint32_t gen;      /* bumped at every post, open and close (futex) */
    _Atomic uint32_t sleepers; /* helpers asleep on gen                    */
    _Atomic uint32_t region;   /* the region the owner opened last         */
    _Atomic uint32_t closed;   /* the region it closed last                */
    _Atomic uint32_t failed;   /* the owner gave up a job (helpers stop)   */
    char pad0[44];
    _Atomic uint64_t claim;    /* job << 32 | next part                    */
    _Atomic uint32_t done;     /* parts helpers finished of the job        */
    char pad1[52];
    /* the current job, written before claim names it */
    _Atomic int32_t mat, M, width, n_parts;
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
    const dpep_mat **mats;      /* [n_mats] registry, in registration order */
    reg_entry *by_p;            /* [n_mats] sorted by storage address       */
    int n_mats;
    int max_rows;
    int64_t kmax, nmax;
    double timeout_s;
    double spin_s;              /* how long a helper spins before sleeping  */
    bool small_parts;           /* tests: parts of the column alignment     */
    bool leave_parts;           /* tests: the owner leaves every part to its
                                   helpers (lending is then certain)        */
    /* this step */
    uint64_t step;
    uint32_t region;            /* regions opened so far (every rank alike) */
    int role, owner, n_helpers;
    uint32_t job;               /* owner: jobs posted so far                */
    int64_t *T;                 /* [n] the step's token counts              */
    unsigned char mine[ASSIST_MAX_PARTS];
    dpep_status err;            /* the offload's first failure (owner)      */
    dpep_engine_assist_stats st;
};

/* ---------------------------------------------------------------------- */
static long futex(_Atomic uint32_t *w, int op, uint32_t val, const struct timespec *ts)
{
    /* shared (not FUTEX_PRIVATE): the word lives in a mapping of several
     * processes */
    return syscall(SYS_futex, (uint32_t *)w, op, val, ts, NULL, 0);
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
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
    const double t_end = now_s() + spin_s;
    for (int i = 1;; i++) {
        if (atomic_load_explicit(&b->gen, memory_order_acquire) != g) return true;
        cpu_relax();
        if ((i & 255) == 0 && now_s() > t_end) break;
    }
    const struct timespec ts = {0, 20 * 1000 * 1000};
    while (atomic_load_explicit(&b->gen, memory_order_acquire) == g) {
        if (now_s() > deadline) return false;
        atomic_fetch_add_explicit(&b->sleepers, 1, memory_order_seq_cst);
        futex(&b->gen, FUTEX_WAIT, g, &ts);
        atomic_fetch_sub_explicit(&b->sleepers, 1, memory_order_seq_cst);
    }
    return true;
}

static int team(void)
{
#ifdef _OPENMP
    return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
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

/* ---------------------------------------------------------------------- */
/* Owner: a product cut into parts                                        */
/* ---------------------------------------------------------------------- */
static bool offload(void *ctx, int M, const float *X, int64_t ldx, const dpep_mat *W, float beta,
                    float *Y, int64_t ldy)
{
    engine_assist *a = ctx;
    if (beta != 0.0f || M > a->max_rows || a->err != DPEP_OK) return false;
    const int idx = reg_find(a, W);
    if (idx < 0) return false;
    const int N = W->rows, K = W->cols, width = part_width(a, M, W);
    const int n_parts = (N + width - 1) / width;
    if (n_parts < 2) return false;
    board *b = a->b[a->me];
    float *xs = a->xs[a->me], *ys = a->ys[a->me];
    for (int r = 0; r < M; r++)
        memcpy(xs + (size_t)r * (size_t)K, X + (size_t)r * (size_t)ldx, sizeof(float) * (size_t)K);
    atomic_store_explicit(&b->mat, idx, memory_order_relaxed);
    atomic_store_explicit(&b->M, M, memory_order_relaxed);
    atomic_store_explicit(&b->width, width, memory_order_relaxed);
    atomic_store_explicit(&b->n_parts, n_parts, memory_order_relaxed);
    atomic_store_explicit(&b->done, 0, memory_order_relaxed);
    const uint64_t job = (uint64_t)++a->job;
    atomic_store_explicit(&b->claim, job << 32, memory_order_release);
    bump(b);
    memset(a->mine, 0, (size_t)n_parts);
    int own = 0;
    const int nthr = team();
    const bool claims = !a->leave_parts;
#pragma omp parallel num_threads(nthr) if (nthr > 1) reduction(+ : own)
    for (; claims;) {
        uint64_t c = atomic_load_explicit(&b->claim, memory_order_relaxed);
        const int k = (int)(c & 0xffffffffu);
        if (k >= n_parts) break;
        if (!atomic_compare_exchange_weak_explicit(&b->claim, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_relaxed))
            continue;
        const int c0 = k * width, cn = N - c0 < width ? N - c0 : width;
        dpep_linear_nt_cols(M, X, ldx, W, c0, cn, 0.0f, Y, ldy);
        a->mine[k] = 1;
        own++;
    }
    /* the helpers' parts: each is being computed by a helper that claimed it */
    const uint32_t need = (uint32_t)(n_parts - own);
    if (need > 0) {
        const double t0 = now_s();
        long spins = 0;
        while (atomic_load_explicit(&b->done, memory_order_acquire) < need) {
            cpu_relax();
            if ((++spins & 1023) == 0) {
                sched_yield();
                if (now_s() - t0 > a->timeout_s) {
                    DPEP_ERROR("engine: DP assist: rank %d waited %.0f s for a node peer's parts "
                               "of a product (%d of %d outstanding; runtime.comm_timeout_s)",
                               dpep_comm_rank(a->c), now_s() - t0,
                               (int)(need - atomic_load(&b->done)), n_parts);
                    atomic_store_explicit(&b->failed, 1, memory_order_release);
                    bump(b);
                    a->err = DPEP_ERR_TIMEOUT;
                    /* Y's missing parts: computed here so the caller's
                     * product is still right; the step fails at close */
                    for (int p = 0; p < n_parts; p++)
                        if (!a->mine[p]) {
                            const int c0 = p * width, cn = N - c0 < width ? N - c0 : width;
                            dpep_linear_nt_cols(M, X, ldx, W, c0, cn, 0.0f, Y, ldy);
                        }
                    return true;
                }
            }
        }
        for (int p = 0; p < n_parts; p++) {
            if (a->mine[p]) continue;
            const int c0 = p * width, cn = N - c0 < width ? N - c0 : width;
            for (int r = 0; r < M; r++)
                memcpy(Y + (size_t)r * (size_t)ldy + c0, ys + (size_t)r * (size_t)N + c0,
                       sizeof(float) * (size_t)cn);
        }
    }
    a->st.products++;
    a->st.parts_borrowed += need;
    return true;
}

/* ---------------------------------------------------------------------- */
/* Helper: serve the owner's parts until it closes region r               */
/* ---------------------------------------------------------------------- */
static dpep_status serve(engine_assist *a, uint32_t r)
{
    board *b = a->b[a->owner];
    const float *xs = a->xs[a->owner];
    float *ys = a->ys[a->owner];
    double deadline = now_s() + a->timeout_s;
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
                const int n_parts = atomic_load_explicit(&b->n_parts, memory_order_relaxed);
                const int mat = atomic_load_explicit(&b->mat, memory_order_relaxed);
                const int M = atomic_load_explicit(&b->M, memory_order_relaxed);
                const int width = atomic_load_explicit(&b->width, memory_order_relaxed);
                if (k >= n_parts || mat < 0 || mat >= a->n_mats) break;
                if (!atomic_compare_exchange_weak_explicit(&b->claim, &c, c + 1,
                                                           memory_order_acq_rel,
                                                           memory_order_relaxed))
                    continue;
                /* claimed: the descriptor read above is this job's */
                const dpep_mat *W = a->mats[mat];
                const int N = W->rows, K = W->cols;
                const int c0 = k * width, cn = N - c0 < width ? N - c0 : width;
                dpep_linear_nt_cols(M, xs, K, W, c0, cn, 0.0f, ys, N);
                atomic_fetch_add_explicit(&b->done, 1, memory_order_release);
                a->st.parts_lent++;
                worked = true;
            }
        }
        if (worked) {
            deadline = now_s() + a->timeout_s;
            continue;
        }
        if (!wait_gen(b, g, a->spin_s, deadline)) {
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

dpep_status engine_assist_open(engine_assist *a)
{
    a->region++;
    if (a->role == ROLE_OWNER) {
        board *b = a->b[a->me];
        atomic_store_explicit(&b->region, a->region, memory_order_release);
        bump(b);
        dpep_linear_set_offload(offload, a);
    }
    return DPEP_OK;
}

dpep_status engine_assist_close(engine_assist *a)
{
    if (a->role == ROLE_OWNER) {
        dpep_linear_set_offload(NULL, NULL);
        board *b = a->b[a->me];
        atomic_store_explicit(&b->closed, a->region, memory_order_release);
        bump(b);
        const dpep_status st = a->err;
        a->err = DPEP_OK;
        return st;
    }
    if (a->role == ROLE_HELPER) return serve(a, a->region);
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

dpep_status engine_assist_create(MPI_Comm ep, const dpep_model_config *m, const dpep_weights *w,
                                 unsigned what, int max_rows, double timeout_s, bool auto_mode,
                                 engine_assist **out)
{
    *out = NULL;
    MPI_Comm node = MPI_COMM_NULL;
    DPEP_CHECK_MPI(MPI_Comm_split_type(ep, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node));
    int n = 0, me = 0;
    MPI_Comm_size(node, &n);
    MPI_Comm_rank(node, &me);
    /* whether every rank's threads have cores of their own (auto: the
     * assist only then; else helpers spin only briefly) */
    const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int fits = cpus > 0 && (long)n * (long)team() <= cpus, all_fit = 0;
    DPEP_CHECK_MPI(MPI_Allreduce(&fits, &all_fit, 1, MPI_INT, MPI_MIN, node));
    const bool fits_cores = all_fit != 0;
    if (n < 2 || (auto_mode && !fits_cores) || max_rows < 1) {
        MPI_Comm_free(&node);
        return DPEP_OK;
    }
    dpep_status st = DPEP_OK;
    const int n_mats = reg_collect(m, w, what, NULL);
    engine_assist *a = NULL;
    {
        size_t bytes = sizeof *a + sizeof(board *) * (size_t)n + 2 * sizeof(float *) * (size_t)n +
                       sizeof(const dpep_mat *) * (size_t)n_mats + sizeof(reg_entry) * (size_t)n_mats +
                       sizeof(int64_t) * (size_t)n + 64;
        a = calloc(1, bytes);
    }
    int ok = a != NULL;
    if (a) {
        char *q = (char *)(a + 1);
        a->b = (board **)(void *)q, q += sizeof(board *) * (size_t)n;
        a->xs = (float **)(void *)q, q += sizeof(float *) * (size_t)n;
        a->ys = (float **)(void *)q, q += sizeof(float *) * (size_t)n;
        a->T = (int64_t *)(void *)q, q += sizeof(int64_t) * (size_t)n;
        a->mats = (const dpep_mat **)(void *)q, q += sizeof(const dpep_mat *) * (size_t)n_mats;
        a->by_p = (reg_entry *)(void *)q;
        a->n = n;
        a->me = me;
        a->n_mats = n_mats;
        a->max_rows = max_rows;
        a->timeout_s = timeout_s;
        a->spin_s = fits_cores ? ASSIST_SPIN_FIT_S : ASSIST_SPIN_OVER_S;
        const char *sus = getenv("DPEP_ASSIST_SPIN_US");
        if (sus && *sus) a->spin_s = atof(sus) * 1e-6;
        const char *sp = getenv("DPEP_TEST_ASSIST_PARTS");
        a->small_parts = sp && (strcmp(sp, "1") == 0 || strcmp(sp, "2") == 0);
        a->leave_parts = sp && strcmp(sp, "2") == 0;
        reg_collect(m, w, what, a->mats);
        for (int i = 0; i < n_mats; i++) {
            a->by_p[i] = (reg_entry){a->mats[i]->p, i};
            if (a->mats[i]->cols > a->kmax) a->kmax = a->mats[i]->cols;
            if (a->mats[i]->rows > a->nmax) a->nmax = a->mats[i]->rows;
        }
        qsort(a->by_p, (size_t)n_mats, sizeof *a->by_p, cmp_entry);
    }
    /* every rank the same segment size (the model and max_rows agree) */
    const size_t seg = BOARD_BYTES + sizeof(float) * (size_t)max_rows *
                                         (size_t)((a ? a->kmax : 0) + (a ? a->nmax : 0));
    int all_ok = 0;
    DPEP_CHECK_MPI_GOTO(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, node), st, fail);
    if (!all_ok) {
        st = DPEP_ERR_NOMEM;
        goto fail;
    }
    DPEP_TRY_GOTO(dpep_comm_create(node, "dp_assist", DPEP_COMM_MPI, timeout_s, &a->c), st, fail);
    MPI_Comm_free(&node);
    DPEP_TRY_GOTO(dpep_comm_shm_create(a->c, seg, &a->win), st, fail);
    for (int p = 0; p < n; p++) {
        char *base = dpep_comm_shm_ptr(a->win, p);
        a->b[p] = (board *)(void *)base;
        a->xs[p] = (float *)(void *)(base + BOARD_BYTES);
        a->ys[p] = a->xs[p] + (size_t)max_rows * (size_t)a->kmax;
    }
    board *mine = a->b[me];
    memset(mine, 0, sizeof *mine);
    atomic_store_explicit(&mine->mat, -1, memory_order_relaxed);
    mine->reg_n = n_mats;
    mine->reg_hash = reg_hash(a->mats, n_mats);
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
        free(a);
    }
    return st;
}

void engine_assist_destroy(engine_assist *a)
{
    if (!a) return;
    dpep_linear_set_offload(NULL, NULL);
    dpep_comm_shm_destroy(a->win);
    dpep_comm_destroy(a->c);
    free(a);
}
