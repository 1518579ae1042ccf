/* comm_staged.c — the "mpi-staged" backend of dpep_comm: buffers in a
 * device's memory (dpep_comm_create_on: the comm's device), moved by the MPI
 * backend's collectives through host buffers — device to host, MPI, host to
 * device. The portable path for device collectives where NCCL cannot run:
 * ranks sharing one GPU (NCCL refuses two ranks on a device), a build or a
 * machine without NCCL. On the CPU device the copies are memcpy, which is
 * how CI runs it. Host buffers grow to the largest call and are kept
 * (dpep_comm_reserve sizes them at start: no allocation on the step path).
 * A rank whose copy fails still joins the collective (nobody waits for it)
 * and returns the error after. */
#include "comm_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct staged {
    void *hs, *hr;      /* host send / receive buffers (owned)   */
    size_t cap_s, cap_r;
} staged;

static staged *st_(dpep_comm *c) { return (staged *)c->be; }

static dpep_status staged_create(dpep_comm *c, void **state)
{
    if (!c->dev.ops) {
        DPEP_ERROR("comm \"%s\": the mpi-staged backend needs a device (dpep_comm_create_on)",
                   c->name);
        return DPEP_ERR_INVALID;
    }
    staged *s = calloc(1, sizeof *s);
    if (!s) return DPEP_ERR_NOMEM;
    void *none = NULL;
    dpep_status st = dpep_comm_mpi_ops.create(c, &none); /* its datatypes and ops */
    if (st != DPEP_OK) {
        free(s);
        return st;
    }
    *state = s;
    return DPEP_OK;
}

static void staged_destroy(dpep_comm *c)
{
    staged *s = st_(c);
    dpep_comm_mpi_ops.destroy(c);
    if (!s) return;
    free(s->hs);
    free(s->hr);
    free(s);
    c->be = NULL;
}

/* *buf grown to `need` bytes (kept when large enough). */
static dpep_status grow_one(dpep_comm *c, void **buf, size_t *cap, size_t need, const char *what)
{
    if (need <= *cap) return DPEP_OK;
    void *p = realloc(*buf, need);
    if (!p) {
        DPEP_ERROR("comm \"%s\": cannot grow the host staging %s buffer to %zu bytes", c->name,
                   what, need);
        return DPEP_ERR_NOMEM;
    }
    DPEP_DEBUG("comm \"%s\": staging %s buffer %zu -> %zu bytes", c->name, what, *cap, need);
    *buf = p;
    *cap = need;
    return DPEP_OK;
}

static dpep_status grow(dpep_comm *c, size_t need_s, size_t need_r)
{
    staged *s = st_(c);
    DPEP_TRY(grow_one(c, &s->hs, &s->cap_s, need_s, "send"));
    return grow_one(c, &s->hr, &s->cap_r, need_r, "receive");
}

static dpep_status down(dpep_comm *c, void *h, const void *d, size_t bytes)
{
    return bytes ? c->dev.ops->to_host(&c->dev, h, d, bytes) : DPEP_OK;
}
static dpep_status up(dpep_comm *c, void *d, const void *h, size_t bytes)
{
    return bytes ? c->dev.ops->to_device(&c->dev, d, h, bytes) : DPEP_OK;
}

/* The first error of a, b (DPEP_OK when none). */
static dpep_status first(dpep_status a, dpep_status b) { return a != DPEP_OK ? a : b; }

/* Largest end (displacement + count) over the ranks, in elements. */
static int64_t extent(const dpep_comm *c, const int64_t *cnt, const int64_t *dsp)
{
    int64_t e = 0;
    for (int p = 0; p < c->size; p++)
        if (cnt[p] > 0 && dsp[p] + cnt[p] > e) e = dsp[p] + cnt[p];
    return e;
}

static dpep_status staged_alltoallv(dpep_comm *c, const void *send, const int64_t *sc,
                                    const int64_t *sd, void *recv, const int64_t *rc,
                                    const int64_t *rd, dpep_comm_dtype t)
{
    const size_t es = dpep_comm_dtype_size(t);
    const size_t ns = (size_t)extent(c, sc, sd) * es, nr = (size_t)extent(c, rc, rd) * es;
    DPEP_TRY(grow(c, ns, nr));
    staged *s = st_(c);
    dpep_status cp = down(c, s->hs, send, ns);
    dpep_status st = dpep_comm_mpi_ops.alltoallv(c, s->hs, sc, sd, s->hr, rc, rd, t);
    /* only the blocks received: what lies between stays as it was */
    for (int p = 0; p < c->size && st == DPEP_OK && cp == DPEP_OK; p++)
        if (rc[p] > 0)
            cp = up(c, (char *)recv + (size_t)rd[p] * es, (char *)s->hr + (size_t)rd[p] * es,
                    (size_t)rc[p] * es);
    return first(cp, st);
}

static dpep_status staged_allgather(dpep_comm *c, const void *send, void *recv, int64_t count,
                                    dpep_comm_dtype t)
{
    const size_t n = (size_t)count * dpep_comm_dtype_size(t);
    DPEP_TRY(grow(c, n, n * (size_t)c->size));
    staged *s = st_(c);
    dpep_status cp = down(c, s->hs, send, n);
    dpep_status st = dpep_comm_mpi_ops.allgather(c, s->hs, s->hr, count, t);
    if (st == DPEP_OK && cp == DPEP_OK) cp = up(c, recv, s->hr, n * (size_t)c->size);
    return first(cp, st);
}

static dpep_status staged_allgatherv(dpep_comm *c, const void *send, int64_t send_count,
                                     void *recv, const int64_t *rc, const int64_t *rd,
                                     dpep_comm_dtype t)
{
    const size_t es = dpep_comm_dtype_size(t);
    const size_t ns = (size_t)send_count * es, nr = (size_t)extent(c, rc, rd) * es;
    DPEP_TRY(grow(c, ns, nr));
    staged *s = st_(c);
    dpep_status cp = down(c, s->hs, send, ns);
    dpep_status st = dpep_comm_mpi_ops.allgatherv(c, s->hs, send_count, s->hr, rc, rd, t);
    for (int p = 0; p < c->size && st == DPEP_OK && cp == DPEP_OK; p++)
        if (rc[p] > 0)
            cp = up(c, (char *)recv + (size_t)rd[p] * es, (char *)s->hr + (size_t)rd[p] * es,
                    (size_t)rc[p] * es);
    return first(cp, st);
}

static dpep_status staged_reduce_scatter(dpep_comm *c, const void *send, void *recv,
                                         int64_t recv_count, dpep_comm_dtype t)
{
    const size_t n = (size_t)recv_count * dpep_comm_dtype_size(t);
    DPEP_TRY(grow(c, n * (size_t)c->size, n));
    staged *s = st_(c);
    dpep_status cp = down(c, s->hs, send, n * (size_t)c->size);
    dpep_status st = dpep_comm_mpi_ops.reduce_scatter(c, s->hs, s->hr, recv_count, t);
    if (st == DPEP_OK && cp == DPEP_OK) cp = up(c, recv, s->hr, n);
    return first(cp, st);
}

static dpep_status staged_allreduce(dpep_comm *c, const void *send, void *recv, int64_t count,
                                    dpep_comm_dtype t)
{
    const size_t n = (size_t)count * dpep_comm_dtype_size(t);
    DPEP_TRY(grow(c, n, n));
    staged *s = st_(c);
    /* send may be recv (in place): the host buffers are distinct */
    dpep_status cp = down(c, s->hs, send, n);
    dpep_status st = dpep_comm_mpi_ops.allreduce(c, s->hs, s->hr, count, t);
    if (st == DPEP_OK && cp == DPEP_OK) cp = up(c, recv, s->hr, n);
    return first(cp, st);
}

static dpep_status staged_bcast(dpep_comm *c, void *buf, int64_t count, dpep_comm_dtype t,
                                int root)
{
    const size_t n = (size_t)count * dpep_comm_dtype_size(t);
    DPEP_TRY(grow(c, n, 0));
    staged *s = st_(c);
    dpep_status cp = c->rank == root ? down(c, s->hs, buf, n) : DPEP_OK;
    dpep_status st = dpep_comm_mpi_ops.bcast(c, s->hs, count, t, root);
    if (st == DPEP_OK && cp == DPEP_OK && c->rank != root) cp = up(c, buf, s->hs, n);
    return first(cp, st);
}

static dpep_status staged_barrier(dpep_comm *c) { return dpep_comm_mpi_ops.barrier(c); }

dpep_status dpep_comm_staged_reserve(dpep_comm *c, size_t send_bytes, size_t recv_bytes)
{
    return grow(c, send_bytes, recv_bytes);
}

const dpep_comm_ops dpep_comm_staged_ops = {
    .name = "mpi-staged",
    .host_memory = false,
    .create = staged_create,
    .destroy = staged_destroy,
    .abort = NULL, /* MPI_Abort ends the calls in flight */
    .alltoallv = staged_alltoallv,
    .allgather = staged_allgather,
    .allgatherv = staged_allgatherv,
    .reduce_scatter = staged_reduce_scatter,
    .allreduce = staged_allreduce,
    .bcast = staged_bcast,
    .barrier = staged_barrier,
};
