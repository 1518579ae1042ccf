/* comm_shm.c — node-shared memory over a comm whose ranks share one node:
 * one file in /dev/shm (or OMPI_MCA_osc_sm_backing_directory, as Open MPI's
 * own windows), created by rank 0, opened by every rank and unlinked before
 * any byte is used, holding one segment per rank; every rank maps the whole
 * file, so that plain loads and stores are the data path. Synchronization
 * is dpep_comm_shm_fence (a counting barrier on rank 0's control block) or
 * the split-phase arrive/wait/depart (a per-rank arrival counter), both
 * spinning briefly, then sleeping on a futex in the shared mapping.
 *
 * The mapping is dpep's own (it was an MPI-3 shared window) for one reason:
 * its pages. A segment of at least DPEP_SHM_HUGE_MIN starts on a 2 MiB
 * boundary of the file and of every rank's mapping, and its owner asks the
 * kernel to back it with 2 MiB pages (MADV_COLLAPSE, Linux >= 6.1: honoured
 * whatever /dev/shm's huge= option, which defaults to never); every rank
 * then maps those pages whole. Weights streamed from 4 KiB shared pages read
 * 11-15 % slower on the 2-core VM (a TLB miss a page, each a two-level walk
 * under a hypervisor): bench/RESULTS.md. Open MPI picks its window's address
 * itself, not congruent with the file's 2 MiB boundaries, so its pages can
 * only ever be mapped 4 KiB at a time. */
#include "comm_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__linux__) && !defined(MADV_COLLAPSE)
#define MADV_COLLAPSE 25 /* Linux 6.1; older kernels answer EINVAL */
#endif

#define HUGE_BYTES ((uint64_t)2 << 20)
/* segments from this size (control block included) get 2 MiB pages */
#define DPEP_SHM_HUGE_MIN ((uint64_t)4 << 20)

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
    void *map;          /* owned: the reservation the file is mapped in */
    size_t map_bytes;   /* its length                                   */
    void **base;        /* [size] each rank's segment (owned array) */
    uint64_t *bytes;    /* [size] each segment's size as asked */
};

/* The directory of the backing file and its free bytes (-1: unknown). */
static int64_t backing_room(const char **dir_out)
{
    const char *dir = getenv("OMPI_MCA_osc_sm_backing_directory");
    if (!dir || !*dir) dir = "/dev/shm";
    *dir_out = dir;
    struct statvfs sv;
    if (statvfs(dir, &sv) != 0) return -1;
    return (int64_t)sv.f_bavail * (int64_t)sv.f_frsize;
}

static uint64_t round_up(uint64_t x, uint64_t a)
{
    return (x + a - 1) / a * a;
}

/* Does a segment of len bytes (control block included) get 2 MiB pages? */
static bool seg_huge(uint64_t len)
{
    return len >= DPEP_SHM_HUGE_MIN;
}

/* Segment p's span in the file (control block included): starts at off[p];
 * huge segments start on a 2 MiB boundary and span whole 2 MiB pages. The
 * same on every rank (from the gathered sizes). Returns the file's size. */
static uint64_t lay_out(const uint64_t *bytes, int n, uint64_t *off, uint64_t *span)
{
    uint64_t at = 0;
    for (int p = 0; p < n; p++) {
        const uint64_t len = bytes[p] + CTL_BYTES;
        const bool huge = seg_huge(len);
        off[p] = round_up(at, huge ? HUGE_BYTES : DPEP_PAGE);
        span[p] = round_up(len, huge ? HUGE_BYTES : DPEP_PAGE);
        at = off[p] + span[p];
    }
    return at;
}

/* Rank 0: a new file in dir, sized; *fd and path on success, else errno. */
static int make_file(const char *dir, uint64_t size, char *path, size_t cap, int *fd)
{
    static _Atomic unsigned seq;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    for (int tries = 0; tries < 16; tries++) {
        snprintf(path, cap, "%s/dpep-shm.%ld.%u.%lx", dir, (long)getpid(),
                 atomic_fetch_add(&seq, 1), (unsigned long)(ts.tv_nsec + tries));
        *fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (*fd >= 0) {
            if (ftruncate(*fd, (off_t)size) == 0) return 0;
            const int err = errno;
            close(*fd);
            unlink(path);
            *fd = -1;
            return err;
        }
        if (errno != EEXIST) return errno;
    }
    return EEXIST;
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
    int node_size = 0, fd = -1, linked = 0;
    uint64_t *off = NULL, *span = NULL;
    char path[PATH_MAX + 64];
    s = calloc(1, sizeof *s);
    if (s) {
        s->c = c;
        s->base = calloc((size_t)c->size, sizeof *s->base);
        s->bytes = calloc((size_t)c->size, sizeof *s->bytes);
    }
    off = calloc((size_t)c->size, sizeof *off);
    span = calloc((size_t)c->size, sizeof *span);
    const int nomem = !s || !s->base || !s->bytes || !off || !span;
    /* 1. every rank on one node? (the sum is the same on every rank) */
    DPEP_CHECK_MPI_GOTO(MPI_Comm_split_type(c->comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
                        st, done);
    MPI_Comm_size(node, &node_size);
    MPI_Comm_free(&node);
    int64_t v[2] = {node_size == c->size ? 0 : 1, nomem};
    DPEP_CHECK_MPI_GOTO(MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_INT64_T, MPI_SUM, c->comm), st, done);
    if (v[0]) {
        st = DPEP_ERR_UNSUPPORTED; /* spans nodes: every rank says so */
        goto done;
    }
    if (v[1]) {
        if (nomem) DPEP_ERROR("comm \"%s\": out of memory for %d segment pointers", c->name, c->size);
        st = DPEP_ERR_NOMEM;
        goto done;
    }
    /* 2. the layout, the same on every rank */
    uint64_t want = bytes;
    DPEP_CHECK_MPI_GOTO(MPI_Allgather(&want, 1, MPI_UINT64_T, s->bytes, 1, MPI_UINT64_T, c->comm),
                        st, done);
    const uint64_t total = lay_out(s->bytes, c->size, off, span);
    /* 3. room for every segment, plus slack, before anything is touched: a
     * full tmpfs answers the first store to a page with SIGBUS */
    const char *dir = NULL;
    int64_t room = backing_room(&dir);
    const int64_t need = (int64_t)(total + total / 16 + ((uint64_t)1 << 20));
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
    /* 4. the file: rank 0 makes it, the others open it by name, then it is
     * unlinked (it lives while mapped; nothing is left behind by a crash
     * after this point) */
    int err = 0;
    if (c->rank == 0) {
        err = make_file(dir, total, path, sizeof path, &fd);
        if (err) {
            DPEP_ERROR("comm \"%s\": node-shared memory: cannot create a %.1f MiB file in %s: %s",
                       c->name, (double)total / 1048576.0, dir, strerror(err));
            path[0] = '\0';
        } else {
            linked = 1;
        }
    }
    DPEP_CHECK_MPI_GOTO(MPI_Bcast(path, (int)sizeof path, MPI_CHAR, 0, c->comm), st, done);
    if (c->rank != 0 && path[0]) {
        fd = open(path, O_RDWR | O_CLOEXEC);
        if (fd < 0) {
            err = errno;
            DPEP_ERROR("comm \"%s\": node-shared memory: rank %d cannot open %s: %s (is %s the "
                       "same file system on every rank of the node?)", c->name, c->rank, path,
                       strerror(err), dir);
        }
    }
    /* 5. the mapping: a reservation 2 MiB larger, the file on its first
     * 2 MiB boundary (file offsets and addresses then agree mod 2 MiB) */
    if (fd >= 0) {
        s->map_bytes = (size_t)(total + HUGE_BYTES);
        s->map = mmap(NULL, s->map_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (s->map == MAP_FAILED) {
            err = errno;
            s->map = NULL;
        } else {
            char *at = (char *)(((uintptr_t)s->map + HUGE_BYTES - 1) & ~(uintptr_t)(HUGE_BYTES - 1));
            if (mmap(at, (size_t)total, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) ==
                MAP_FAILED)
                err = errno;
            for (int p = 0; p < c->size; p++) s->base[p] = at + off[p] + CTL_BYTES;
        }
        if (err)
            DPEP_ERROR("comm \"%s\": node-shared memory: rank %d cannot map %.1f MiB of %s: %s",
                       c->name, c->rank, (double)total / 1048576.0, path, strerror(err));
    }
    int failed = err != 0 || !path[0];
    DPEP_CHECK_MPI_GOTO(MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, c->comm), st, done);
    if (linked) {
        unlink(path); /* every rank has opened it (or failed to) */
        linked = 0;
    }
    if (fd >= 0) close(fd);
    fd = -1;
    if (failed) {
        st = DPEP_ERR_IO;
        goto done;
    }
    /* 6. first touch by the owner: its pages land on its NUMA node. A large
     * segment: one store per 2 MiB, then the kernel collapses each 2 MiB
     * into one zeroed huge page (a new file's holes read as zeros) — 10x
     * faster than faulting in 4 KiB pages (1 GiB: 0.10 s against 0.93 s on
     * the 2-core VM; faulting them in, then collapsing: 4.2 s). Where the
     * kernel cannot, the segment is written whole on 4 KiB pages as before
     * (peers' faults map whatever pages it has). */
    {
        char *mine = (char *)s->base[c->rank] - CTL_BYTES;
        const size_t len = (size_t)(s->bytes[c->rank] + CTL_BYTES);
        bool zeroed = false;
#ifdef MADV_COLLAPSE
        if (seg_huge(len)) { /* its span: whole 2 MiB pages (lay_out) */
            for (size_t at = 0; at < span[c->rank]; at += HUGE_BYTES) mine[at] = 0;
            zeroed = madvise(mine, (size_t)span[c->rank], MADV_COLLAPSE) == 0;
        }
#endif
        if (!zeroed) memset(mine, 0, len);
    }
    atomic_thread_fence(memory_order_seq_cst);
    DPEP_CHECK_MPI_GOTO(MPI_Barrier(c->comm), st, done);
    atomic_thread_fence(memory_order_seq_cst);
done:
    if (linked) unlink(path);
    if (fd >= 0) close(fd);
    free(off);
    free(span);
    dpep_comm_op_end(c, st);
    if (st != DPEP_OK) {
        if (s) {
            if (s->map) munmap(s->map, s->map_bytes);
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
    /* not collective: the file lives until its last mapping goes, so a
     * peer still reading this rank's segment reads what was there */
    munmap(s->map, s->map_bytes);
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
    atomic_thread_fence(memory_order_seq_cst);
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
    atomic_thread_fence(memory_order_seq_cst);
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
    atomic_thread_fence(memory_order_seq_cst);
    ctl_fence(peer_ctl(s, 0), c->size);
    atomic_thread_fence(memory_order_seq_cst);
    return dpep_comm_op_end(c, DPEP_OK);
}
