/* comm.c — the dpep_comm front end: the list of backends, creation (which
 * picks the backend's ops table once), argument checks, the entry/exit
 * bookkeeping the watchdog reads, and the call through c->ops. */
#include "comm_internal.h"

#include <time.h>

#include <limits.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    size_t size;
    const char *name;
} k_dtype[DPEP_COMM_DTYPE_COUNT] = {
    [DPEP_COMM_U8] = {1, "uint8"},     [DPEP_COMM_I32] = {4, "int32"},
    [DPEP_COMM_I64] = {8, "int64"},    [DPEP_COMM_F32] = {4, "float"},
    [DPEP_COMM_BF16] = {2, "bfloat16"}, [DPEP_COMM_F16] = {2, "half"},
};

size_t dpep_comm_dtype_size(dpep_comm_dtype t)
{
    return (unsigned)t < DPEP_COMM_DTYPE_COUNT ? k_dtype[t].size : 0;
}

const char *dpep_comm_dtype_name(dpep_comm_dtype t)
{
    return (unsigned)t < DPEP_COMM_DTYPE_COUNT ? k_dtype[t].name : "?";
}

/* The backends of this build, by dpep_comm_backend; NULL: not built (NCCL
 * without CUDA). A new backend adds its enum value and its table here. */
#define BACKEND_COUNT (DPEP_COMM_STAGED + 1)
static const dpep_comm_ops *const k_backends[BACKEND_COUNT] = {
    [DPEP_COMM_MPI] = &dpep_comm_mpi_ops,
    [DPEP_COMM_STAGED] = &dpep_comm_staged_ops,
#ifdef DPEP_HAVE_CUDA
    [DPEP_COMM_NCCL] = &dpep_comm_nccl_ops,
#endif
};

static const dpep_comm_ops *backend_ops(dpep_comm_backend b)
{
    return (unsigned)b < BACKEND_COUNT ? k_backends[b] : NULL;
}

/* Named whether or not it is built, so "not in this build" can say which. */
const char *dpep_comm_backend_name(dpep_comm_backend b)
{
    return b == DPEP_COMM_NCCL     ? "nccl"
           : b == DPEP_COMM_MPI    ? "mpi"
           : b == DPEP_COMM_STAGED ? "mpi-staged"
                                   : "?";
}

bool dpep_comm_backend_available(dpep_comm_backend b) { return backend_ops(b) != NULL; }

uint16_t dpep_comm_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

float dpep_comm_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ------------------------------------------------------------------------ */
/* Create / destroy                                                          */
/* ------------------------------------------------------------------------ */
static void free_scratch(dpep_comm *c)
{
    free(c->sc);
    free(c->rc);
    free(c->rd);
    free(c->l_sc);
    free(c->l_sd);
    free(c->reqs);
    free(c->world_rank);
    free(c->wd_reply);
    free(c->wd_reqs);
    free(c->wd_replied);
}

dpep_status dpep_comm_create(MPI_Comm parent, const char *name, dpep_comm_backend backend,
                             double timeout_s, dpep_comm **out)
{
    return dpep_comm_create_on(parent, name, backend, NULL, timeout_s, out);
}

dpep_status dpep_comm_create_on(MPI_Comm parent, const char *name, dpep_comm_backend backend,
                                const dpep_device *dev, double timeout_s, dpep_comm **out)
{
    dpep_status st = DPEP_OK;
    if (!out || parent == MPI_COMM_NULL || !name) {
        DPEP_ERROR("dpep_comm_create: NULL argument (name %s)", name ? name : "NULL");
        return DPEP_ERR_INVALID;
    }
    const dpep_comm_ops *ops = backend_ops(backend);
    if (!ops) {
        DPEP_ERROR("comm \"%s\": backend %s is not in this build (built without CUDA/NCCL)",
                   name, dpep_comm_backend_name(backend));
        return DPEP_ERR_UNSUPPORTED;
    }
    dpep_comm *c = calloc(1, sizeof *c);
    if (!c) return DPEP_ERR_NOMEM;
    snprintf(c->name, sizeof c->name, "%s", name);
    c->backend = backend;
    c->ops = ops;
    if (dev) c->dev = *dev;
    atomic_init(&c->timeout_s, timeout_s);
    c->int_limit = INT_MAX;
    c->comm = MPI_COMM_NULL;
    c->ctrl = MPI_COMM_NULL;
    atomic_init(&c->seq, 0);
    atomic_init(&c->in_op, 0);
    atomic_init(&c->start_s, 0.0);
    atomic_init(&c->op, "none");
    atomic_init(&c->patient, 0);
    bool backend_made = false;
    /* The dups (and a backend's own set-up) are collective over parent: a
     * rank that never comes would hang them. When a registered comm spans
     * the same ranks (the job's comm for a comm over the world), they run
     * under its watchdog. */
    dpep_comm *watcher = dpep_watchdog_congruent(parent);
    dpep_comm_watch_begin(watcher, "comm_create", false);

    DPEP_CHECK_MPI_GOTO(MPI_Comm_dup(parent, &c->comm), st, fail);
    DPEP_CHECK_MPI_GOTO(MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN), st, fail);
    DPEP_CHECK_MPI_GOTO(MPI_Comm_dup(parent, &c->ctrl), st, fail);
    DPEP_CHECK_MPI_GOTO(MPI_Comm_set_errhandler(c->ctrl, MPI_ERRORS_RETURN), st, fail);
    DPEP_CHECK_MPI_GOTO(MPI_Comm_rank(c->comm, &c->rank), st, fail);
    DPEP_CHECK_MPI_GOTO(MPI_Comm_size(c->comm, &c->size), st, fail);

    size_t n = (size_t)c->size;
    c->sc = malloc(n * sizeof *c->sc);
    c->rc = malloc(n * sizeof *c->rc);
    c->rd = malloc(n * sizeof *c->rd);
    c->l_sc = malloc(n * sizeof *c->l_sc);
    c->l_sd = malloc(n * sizeof *c->l_sd);
    c->reqs = malloc(2 * n * sizeof *c->reqs);
    c->world_rank = malloc(n * sizeof *c->world_rank);
    c->wd_reply = malloc(3 * n * sizeof *c->wd_reply);
    c->wd_reqs = malloc(2 * n * sizeof *c->wd_reqs);
    c->wd_replied = malloc(n * sizeof *c->wd_replied);
    if (!c->sc || !c->rc || !c->rd || !c->l_sc || !c->l_sd || !c->reqs ||
        !c->world_rank || !c->wd_reply || !c->wd_reqs || !c->wd_replied) {
        st = DPEP_ERR_NOMEM;
        goto fail;
    }

    {
        /* World ranks, so timeout messages can name processes, not only comm ranks. */
        MPI_Group g, wg;
        DPEP_CHECK_MPI_GOTO(MPI_Comm_group(c->comm, &g), st, fail);
        DPEP_CHECK_MPI_GOTO(MPI_Comm_group(MPI_COMM_WORLD, &wg), st, fail);
        for (int i = 0; i < c->size; i++) c->sc[i] = i;
        int rc = MPI_Group_translate_ranks(g, c->size, c->sc, wg, c->world_rank);
        MPI_Group_free(&g);
        MPI_Group_free(&wg);
        DPEP_CHECK_MPI_GOTO(rc, st, fail);
    }

    DPEP_TRY_GOTO(ops->create(c, &c->be), st, fail);
    backend_made = true;
    dpep_comm_watch_end(watcher);

    DPEP_TRY_GOTO(dpep_watchdog_register(c), st, fail);
    *out = c;
    return DPEP_OK;

fail:
    dpep_comm_watch_end(watcher);
    if (backend_made) ops->destroy(c);
    free_scratch(c);
    if (c->ctrl != MPI_COMM_NULL) MPI_Comm_free(&c->ctrl);
    if (c->comm != MPI_COMM_NULL) MPI_Comm_free(&c->comm);
    free(c);
    return st;
}

dpep_status dpep_comm_create_group(MPI_Comm parent, const char *name, dpep_comm_backend backend,
                                   double timeout_s, dpep_comm **out)
{
    return dpep_comm_create_group_on(parent, name, backend, NULL, timeout_s, out);
}

dpep_status dpep_comm_create_group_on(MPI_Comm parent, const char *name,
                                      dpep_comm_backend backend, const dpep_device *dev,
                                      double timeout_s, dpep_comm **out)
{
    *out = NULL;
    if (parent == MPI_COMM_NULL) return DPEP_OK;
    int n = 1;
    DPEP_CHECK_MPI(MPI_Comm_size(parent, &n));
    if (n < 2) return DPEP_OK;
    return dpep_comm_create_on(parent, name, backend, dev, timeout_s, out);
}

dpep_status dpep_comm_reserve(dpep_comm *c, size_t send_bytes, size_t recv_bytes)
{
    if (!c || c->backend != DPEP_COMM_STAGED) return DPEP_OK;
    return dpep_comm_staged_reserve(c, send_bytes, recv_bytes);
}

void dpep_comm_destroy(dpep_comm *c)
{
    if (!c) return;
    dpep_watchdog_unregister(c);
    c->ops->destroy(c);
    free_scratch(c);
    MPI_Comm_free(&c->ctrl);
    MPI_Comm_free(&c->comm);
    free(c);
}

int dpep_comm_rank(const dpep_comm *c) { return c->rank; }
int dpep_comm_size(const dpep_comm *c) { return c->size; }
const char *dpep_comm_name(const dpep_comm *c) { return c->name; }
dpep_comm_backend dpep_comm_backend_of(const dpep_comm *c) { return c->backend; }
MPI_Comm dpep_comm_mpi(const dpep_comm *c) { return c->comm; }
void *dpep_comm_backend_state(const dpep_comm *c) { return c->be; }
uint64_t dpep_comm_seq(const dpep_comm *c)
{
    return atomic_load(&((dpep_comm *)c)->seq);
}

void dpep_comm_set_int_limit(dpep_comm *c, int64_t limit)
{
    c->int_limit = limit < 1 ? 1 : limit > INT_MAX ? INT_MAX : limit;
}

/* ------------------------------------------------------------------------ */
/* Entry/exit bookkeeping and argument checks                                */
/* ------------------------------------------------------------------------ */
/* start_s and op are stored before seq and in_op (release), so the watchdog,
 * reading seq, in_op (acquire) and then start_s, never pairs a new seq with
 * an old start time. */
void dpep_comm_op_begin(dpep_comm *c, const char *op)
{
    atomic_store_explicit(&c->in_op, 0, memory_order_release);
    atomic_store_explicit(&c->start_s, dpep_clock_s(), memory_order_relaxed);
    atomic_store_explicit(&c->op, op, memory_order_release); /* after in_op = 0 */
    atomic_fetch_add_explicit(&c->seq, 1, memory_order_release);
    atomic_store_explicit(&c->in_op, 1, memory_order_release);
}

dpep_status dpep_comm_op_end(dpep_comm *c, dpep_status st)
{
    atomic_store_explicit(&c->in_op, 0, memory_order_release);
    /* After in_op (release): a watchdog that sees 0 here also sees the op
     * over, so it never takes a patient op that just ended for a strict one. */
    atomic_store_explicit(&c->patient, 0, memory_order_release);
    return st;
}

void dpep_comm_watch_begin(dpep_comm *c, const char *op, bool patient)
{
    if (!c) return;
    atomic_store_explicit(&c->patient, patient ? 1 : 0, memory_order_relaxed);
    dpep_comm_op_begin(c, op);
}

void dpep_comm_watch_end(dpep_comm *c)
{
    if (c) dpep_comm_op_end(c, DPEP_OK);
}

/* Without MPI_THREAD_MULTIPLE there is no watchdog thread (register left
 * the comm unwatched); the new value is kept but nothing reads it. */
void dpep_comm_set_timeout(dpep_comm *c, double timeout_s)
{
    if (c) atomic_store(&c->timeout_s, timeout_s);
}

dpep_status dpep_comm_wait_all(dpep_comm *c, const char *op, dpep_comm_poll_fn poll, void *user)
{
    if (!c) return DPEP_OK;
    MPI_Request rq = MPI_REQUEST_NULL;
    dpep_comm_watch_begin(c, op, true);
    int rc = MPI_Ibarrier(c->comm, &rq);
    int done = 0;
    while (rc == MPI_SUCCESS && !done) {
        if (poll) poll(user);
        rc = MPI_Test(&rq, &done, MPI_STATUS_IGNORE);
        if (rc == MPI_SUCCESS && !done) {
            struct timespec ts = {0, 2000000}; /* 2 ms: no rank spins while it waits */
            nanosleep(&ts, NULL);
        }
    }
    if (rc != MPI_SUCCESS) {
        dpep_check_fail_(__FILE__, __LINE__, "MPI_Ibarrier/MPI_Test(wait_all)",
                         dpep_mpi_error_string(rc));
        return dpep_comm_op_end(c, DPEP_ERR_MPI);
    }
    return dpep_comm_op_end(c, DPEP_OK);
}

static dpep_status check_common(const dpep_comm *c, const char *op, dpep_comm_dtype t)
{
    if (!c) {
        DPEP_ERROR("dpep_comm_%s: NULL comm", op);
        return DPEP_ERR_INVALID;
    }
    if ((unsigned)t >= DPEP_COMM_DTYPE_COUNT) {
        DPEP_ERROR("comm \"%s\": %s: unknown dtype %d", c->name, op, (int)t);
        return DPEP_ERR_INVALID;
    }
    return DPEP_OK;
}

static dpep_status check_counts(const dpep_comm *c, const char *op, const char *what,
                                const int64_t *a)
{
    if (!a) {
        DPEP_ERROR("comm \"%s\": %s: %s is NULL", c->name, op, what);
        return DPEP_ERR_INVALID;
    }
    for (int i = 0; i < c->size; i++)
        if (a[i] < 0) {
            DPEP_ERROR("comm \"%s\": %s: %s[%d] = %lld is negative", c->name, op, what, i,
                       (long long)a[i]);
            return DPEP_ERR_INVALID;
        }
    return DPEP_OK;
}

static dpep_status check_count(const dpep_comm *c, const char *op, int64_t n)
{
    if (n < 0) {
        DPEP_ERROR("comm \"%s\": %s: count %lld is negative", c->name, op, (long long)n);
        return DPEP_ERR_INVALID;
    }
    return DPEP_OK;
}

/* ------------------------------------------------------------------------ */
/* Collectives                                                               */
/* ------------------------------------------------------------------------ */
dpep_status dpep_comm_alltoallv(dpep_comm *c, const void *send, const int64_t *send_counts,
                                const int64_t *send_displs, void *recv,
                                const int64_t *recv_counts, const int64_t *recv_displs,
                                dpep_comm_dtype t)
{
    static const char op[] = "alltoallv";
    DPEP_TRY(check_common(c, op, t));
    DPEP_TRY(check_counts(c, op, "send_counts", send_counts));
    DPEP_TRY(check_counts(c, op, "send_displs", send_displs));
    DPEP_TRY(check_counts(c, op, "recv_counts", recv_counts));
    DPEP_TRY(check_counts(c, op, "recv_displs", recv_displs));
    if (send_counts[c->rank] != recv_counts[c->rank]) {
        DPEP_ERROR("comm \"%s\": alltoallv: send_counts[me] = %lld but recv_counts[me] = %lld",
                   c->name, (long long)send_counts[c->rank], (long long)recv_counts[c->rank]);
        return DPEP_ERR_INVALID;
    }
    dpep_comm_op_begin(c, op);
    dpep_status st = c->ops->alltoallv(c, send, send_counts, send_displs, recv, recv_counts,
                                       recv_displs, t);
    return dpep_comm_op_end(c, st);
}

dpep_status dpep_comm_allgather(dpep_comm *c, const void *send, void *recv, int64_t count,
                                dpep_comm_dtype t)
{
    static const char op[] = "allgather";
    DPEP_TRY(check_common(c, op, t));
    DPEP_TRY(check_count(c, op, count));
    dpep_comm_op_begin(c, op);
    dpep_status st = c->ops->allgather(c, send, recv, count, t);
    return dpep_comm_op_end(c, st);
}

dpep_status dpep_comm_allgatherv(dpep_comm *c, const void *send, int64_t send_count,
                                 void *recv, const int64_t *recv_counts,
                                 const int64_t *recv_displs, dpep_comm_dtype t)
{
    static const char op[] = "allgatherv";
    DPEP_TRY(check_common(c, op, t));
    DPEP_TRY(check_count(c, op, send_count));
    DPEP_TRY(check_counts(c, op, "recv_counts", recv_counts));
    DPEP_TRY(check_counts(c, op, "recv_displs", recv_displs));
    if (send_count != recv_counts[c->rank]) {
        DPEP_ERROR("comm \"%s\": allgatherv: send_count %lld != recv_counts[%d] = %lld",
                   c->name, (long long)send_count, c->rank, (long long)recv_counts[c->rank]);
        return DPEP_ERR_INVALID;
    }
    dpep_comm_op_begin(c, op);
    dpep_status st =
        c->ops->allgatherv(c, send, send_count, recv, recv_counts, recv_displs, t);
    return dpep_comm_op_end(c, st);
}

dpep_status dpep_comm_reduce_scatter(dpep_comm *c, const void *send, void *recv,
                                     int64_t recv_count, dpep_comm_dtype t)
{
    static const char op[] = "reduce_scatter";
    DPEP_TRY(check_common(c, op, t));
    DPEP_TRY(check_count(c, op, recv_count));
    dpep_comm_op_begin(c, op);
    dpep_status st = c->ops->reduce_scatter(c, send, recv, recv_count, t);
    return dpep_comm_op_end(c, st);
}

dpep_status dpep_comm_allreduce(dpep_comm *c, const void *send, void *recv, int64_t count,
                                dpep_comm_dtype t)
{
    static const char op[] = "allreduce";
    DPEP_TRY(check_common(c, op, t));
    DPEP_TRY(check_count(c, op, count));
    dpep_comm_op_begin(c, op);
    dpep_status st = c->ops->allreduce(c, send, recv, count, t);
    return dpep_comm_op_end(c, st);
}

dpep_status dpep_comm_bcast(dpep_comm *c, void *buf, int64_t count, dpep_comm_dtype t,
                            int root)
{
    static const char op[] = "bcast";
    DPEP_TRY(check_common(c, op, t));
    DPEP_TRY(check_count(c, op, count));
    if (root < 0 || root >= c->size) {
        DPEP_ERROR("comm \"%s\": bcast: root %d is not in [0, %d)", c->name, root, c->size);
        return DPEP_ERR_INVALID;
    }
    dpep_comm_op_begin(c, op);
    dpep_status st = c->ops->bcast(c, buf, count, t, root);
    return dpep_comm_op_end(c, st);
}

dpep_status dpep_comm_barrier(dpep_comm *c)
{
    static const char op[] = "barrier";
    DPEP_TRY(check_common(c, op, DPEP_COMM_U8));
    dpep_comm_op_begin(c, op);
    dpep_status st = c->ops->barrier(c);
    return dpep_comm_op_end(c, st);
}
