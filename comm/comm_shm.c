/* comm_shm.c — node-shared memory over a comm whose ranks share one node:
 * an MPI-3 shared window (MPI_Win_allocate_shared; Open MPI's osc/sm backs it
 * with a file in /dev/shm), one segment per rank, every segment mapped by
 * every rank, kept in a passive-target epoch (lock_all) for its lifetime so
 * that plain loads and stores are the data path; synchronization is
 * dpep_comm_shm_fence (a counting barrier on rank 0's control block) or the
 * split-phase arrive/wait/depart (a per-rank arrival counter), both spinning
 * briefly, then sleeping on a futex in the shared mapping. */
#include "comm_internal.h"

#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/futex.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Each segment starts with a hidden control block; rank 0's holds the fence
 * (a counting barrier with a generation word waiters sleep on). */
typedef struct shm_ctl {
    _Atomic uint32_t count;     /* rank 0's: ranks arrived at the current fence */
    char pad0[60];
    _Atomic uint32_t gen;       /* rank 0's: fences completed (futex word)       */
    char pad1[60];
    _Atomic uint32_t arrived;   /* every rank's own: rounds it arrived in (futex) */
    char pad2[60];
} shm_ctl;
#define CTL_BYTES ((size_t)sizeof(shm_ctl))

struct dpep_comm_shm {
    dpep_comm *c;       /* not owned */
    uint32_t rounds;    /* rounds this rank arrived in             */
    int in_round;       /* between arrive and depart               */
    MPI_Win win;        /* owned: the shared window            */
    void **base;        /* [size] each rank's segment (owned array) */
    uint64_t *bytes;    /* [size] each segment's size as asked */
};

/* Free bytes of the file system behind Open MPI's shared windows; -1 when
 * unknown (another MPI, or the directory cannot be inspected). */
static int64_t backing_room(const char **dir_out)
{
    const char *dir = getenv("OMPI_MCA_osc_sm_backing_directory");
    if (!dir || !*dir) dir = "/dev/shm";
    *dir_out = dir;
    struct statvfs sv;
    if (statvfs(dir, &sv) != 0) return -1;
    return (int64_t)sv.f_bavail * (int64_t)sv.f_frsize;
}

dpep_status dpep_comm_shm_create(dpep_comm *c, size_t bytes, dpep_comm_shm **out)
{
    static const char op[] = "shm_create";
    if (!c || !out) {
        DPEP_ERROR("dpep_comm_shm_create: NULL argument");
        return DPEP_ERR_INVALID;
    }
    if (!c->ops->host_memory) {
        DPEP_ERROR("comm \"%s\": node-shared host memory needs an MPI comm", c->name);
        return DPEP_ERR_UNSUPPORTED;
    }
    dpep_comm_op_begin(c, op);
    dpep_status st = DPEP_OK;
    dpep_comm_shm *s = NULL;
    MPI_Comm node = MPI_COMM_NULL;
    MPI_Info info = MPI_INFO_NULL;
    int node_size = 0;
    s = calloc(1, sizeof *s);
    if (s) {
        s->win = MPI_WIN_NULL;
        s->base = calloc((size_t)c->size, sizeof *s->base);
        s->bytes = calloc((size_t)c->size, sizeof *s->bytes);
    }
    const int nomem = !s || !s->base || !s->bytes;
    /* 1. every rank on one node? (the sum is the same on every rank) */
    DPEP_CHECK_MPI_GOTO(MPI_Comm_split_type(c->comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
                        st, done);
    MPI_Comm_size(node, &node_size);
    MPI_Comm_free(&node);
    int64_t v[3] = {node_size == c->size ? 0 : 1, (int64_t)(bytes + CTL_BYTES), nomem};
    DPEP_CHECK_MPI_GOTO(MPI_Allreduce(MPI_IN_PLACE, v, 3, MPI_INT64_T, MPI_SUM, c->comm), st, done);
    if (v[0]) {
        st = DPEP_ERR_UNSUPPORTED; /* spans nodes: every rank says so */
        goto done;
    }
    if (v[2]) {
        if (nomem) DPEP_ERROR("comm \"%s\": out of memory for %d segment pointers", c->name, c->size);
        st = DPEP_ERR_NOMEM;
        goto done;
    }
    /* 2. room for every segment, plus slack, before anything is touched: a
     * full tmpfs answers the first store to a page with SIGBUS */
    const char *dir = NULL;
    int64_t room = backing_room(&dir), need = v[1] + v[1] / 16 + ((int64_t)1 << 20);
    int bad = room >= 0 && room < need;
    DPEP_CHECK_MPI_GOTO(MPI_Allreduce(MPI_IN_PLACE, &bad, 1, MPI_INT, MPI_MAX, c->comm), st, done);
    if (bad) {
        if (c->rank == 0)
            DPEP_WARN("comm \"%s\": node-shared memory for %d ranks needs %.1f MiB in %s, "
                      "%.1f MiB free (enlarge that tmpfs, e.g. docker --shm-size)", c->name,
                      c->size, (double)need / 1048576.0, dir,
                      room >= 0 ? (double)room / 1048576.0 : 0.0);
        st = DPEP_ERR_NOMEM;
        goto done;
    }
    /* 3. the window: one segment per rank, each page-aligned on its own */
    s->c = c;
    MPI_Info_create(&info);
    MPI_Info_set(info, "alloc_shared_noncontig", "true");
    void *mine = NULL;
    DPEP_CHECK_MPI_GOTO(MPI_Win_allocate_shared((MPI_Aint)(bytes + CTL_BYTES), 1, info, c->comm,
                                                &mine, &s->win),
                        st, done);
    MPI_Win_set_errhandler(s->win, MPI_ERRORS_RETURN);
    /* sizes as asked (the window may round segments up to pages) */
    uint64_t want = bytes;
    DPEP_CHECK_MPI_GOTO(MPI_Allgather(&want, 1, MPI_UINT64_T, s->bytes, 1, MPI_UINT64_T, c->comm),
                        st, done);
    for (int p = 0; p < c->size; p++) {
        MPI_Aint sz = 0;
        int du = 0;
        DPEP_CHECK_MPI_GOTO(MPI_Win_shared_query(s->win, p, &sz, &du, &s->base[p]), st, done);
        if ((size_t)sz < s->bytes[p] + CTL_BYTES) {
            DPEP_ERROR("comm \"%s\": shared segment of rank %d has %lld bytes, asked %zu", c->name,
                       p, (long long)sz, s->bytes[p] + CTL_BYTES);
            st = DPEP_ERR_MPI; /* the same on every rank: all saw the same sizes */
            goto done;
        }
        s->base[p] = (char *)s->base[p] + CTL_BYTES;
    }
    /* first touch by the owner: its pages land on its NUMA node */
    memset(mine, 0, bytes + CTL_BYTES);
    DPEP_CHECK_MPI_GOTO(MPI_Win_lock_all(MPI_MODE_NOCHECK, s->win), st, done);
    MPI_Win_sync(s->win);
    DPEP_CHECK_MPI_GOTO(MPI_Barrier(c->comm), st, done);
    MPI_Win_sync(s->win);
done:
    if (info != MPI_INFO_NULL) MPI_Info_free(&info);
    dpep_comm_op_end(c, st);
    if (st != DPEP_OK) {
        if (s && s->win != MPI_WIN_NULL) MPI_Win_free(&s->win);
        if (s) {
            free(s->base);
            free(s->bytes);
            free(s);
        }
        return st;
    }
    *out = s;
    return DPEP_OK;
}

void dpep_comm_shm_destroy(dpep_comm_shm *s)
{
    if (!s) return;
    /* MPI_Win_free synchronizes the comm's ranks (osc/sm: a barrier): watched
     * like a collective, so a rank that never comes is named, not waited for. */
    dpep_comm_op_begin(s->c, "shm_free");
    MPI_Win_unlock_all(s->win);
    MPI_Win_free(&s->win);
    dpep_comm_op_end(s->c, DPEP_OK);
    free(s->base);
    free(s->bytes);
    free(s);
}

void *dpep_comm_shm_ptr(const dpep_comm_shm *s, int peer)
{
    return peer >= 0 && peer < s->c->size ? s->base[peer] : NULL;
}

void dpep_comm_shm_resident(dpep_comm_shm *s)
{
    /* advice: a page it cannot map faults later (no fallback that writes:
     * peers may be using their segments already) */
    for (int p = 0; s && p < s->c->size; p++) (void)dpep_pages_populate(s->base[p], s->bytes[p]);
}

size_t dpep_comm_shm_size(const dpep_comm_shm *s, int peer)
{
    return peer >= 0 && peer < s->c->size ? s->bytes[peer] : 0;
}

static long futex(_Atomic uint32_t *w, int op, uint32_t val, const struct timespec *ts)
{
    /* shared (not FUTEX_PRIVATE): the word lives in a mapping of several
     * processes */
    return syscall(SYS_futex, (uint32_t *)w, op, val, ts, NULL, 0);
}

/* Spin briefly (the fast case: one rank per core, the peer microseconds
 * away), then sleep on the word (50 ms bounded waits: a peer that never
 * comes is the watchdog's to report) until it differs from `old`. */
static void wait_changed(_Atomic uint32_t *w, uint32_t old)
{
    for (int i = 0; i < 4096; i++) {
        if (atomic_load_explicit(w, memory_order_acquire) != old) return;
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    const struct timespec ts = {0, 50 * 1000 * 1000};
    while (atomic_load_explicit(w, memory_order_acquire) == old) futex(w, FUTEX_WAIT, old, &ts);
}

/* A counting barrier on rank 0's control block. Waiters spin briefly (the
 * fast case: one rank per core, peers a few microseconds away), then sleep
 * on the generation word, so that with more ranks than cores the late ranks
 * get the CPU at once instead of after the spinners' time slices. The
 * generation is read before arriving: it cannot move until this rank has. */
static void ctl_fence(shm_ctl *ctl, int n)
{
    uint32_t g = atomic_load_explicit(&ctl->gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&ctl->count, 1, memory_order_acq_rel) == (uint32_t)n - 1) {
        atomic_store_explicit(&ctl->count, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&ctl->gen, 1, memory_order_release);
        futex(&ctl->gen, FUTEX_WAKE, INT_MAX, NULL);
        return;
    }
    wait_changed(&ctl->gen, g);
}

static shm_ctl *peer_ctl(const dpep_comm_shm *s, int p)
{
    return (shm_ctl *)(void *)((char *)s->base[p] - CTL_BYTES);
}

dpep_status dpep_comm_shm_arrive(dpep_comm_shm *s)
{
    static const char op[] = "shm_round";
    dpep_comm *c = s->c;
    if (s->in_round) {
        DPEP_ERROR("comm \"%s\": shm arrive twice without depart", c->name);
        return DPEP_ERR_INTERNAL;
    }
    dpep_comm_op_begin(c, op);
    s->in_round = 1;
    s->rounds++;
    MPI_Win_sync(s->win);
    shm_ctl *me = peer_ctl(s, c->rank);
    atomic_store_explicit(&me->arrived, s->rounds, memory_order_release);
    futex(&me->arrived, FUTEX_WAKE, INT_MAX, NULL);
    return DPEP_OK;
}

dpep_status dpep_comm_shm_wait(dpep_comm_shm *s, int peer)
{
    if (!s->in_round || peer < 0 || peer >= s->c->size) {
        DPEP_ERROR("comm \"%s\": shm wait for peer %d outside a round", s->c->name, peer);
        return DPEP_ERR_INTERNAL;
    }
    _Atomic uint32_t *w = &peer_ctl(s, peer)->arrived;
    for (;;) { /* wrap-safe: has peer reached this rank's round? */
        uint32_t v = atomic_load_explicit(w, memory_order_acquire);
        if ((int32_t)(v - s->rounds) >= 0) break;
        wait_changed(w, v);
    }
    MPI_Win_sync(s->win);
    return DPEP_OK;
}

dpep_status dpep_comm_shm_depart(dpep_comm_shm *s)
{
    if (!s->in_round) {
        DPEP_ERROR("comm \"%s\": shm depart without arrive", s->c->name);
        return DPEP_ERR_INTERNAL;
    }
    s->in_round = 0;
    return dpep_comm_op_end(s->c, DPEP_OK);
}

dpep_status dpep_comm_shm_fence(dpep_comm_shm *s)
{
    static const char op[] = "shm_fence";
    dpep_comm *c = s->c;
    dpep_comm_op_begin(c, op);
    MPI_Win_sync(s->win);
    ctl_fence(peer_ctl(s, 0), c->size);
    MPI_Win_sync(s->win);
    return dpep_comm_op_end(c, DPEP_OK);
}
