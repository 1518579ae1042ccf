/* test_comm_shm.c — node-shared memory (dpep_comm_shm) under mpiexec:
 *   (default)   on the world, two halves and a reversed-order comm: segment
 *               sizes per rank (one rank 0 bytes), zeroed at create; 300
 *               rounds in which every rank writes a rebuildable pattern into
 *               its slot of every peer's segment, fences, checks what its own
 *               segment received and fences again; 300 split-phase rounds
 *               (arrive, per-peer wait and check, depart) and calls out of
 *               order refused; 6 MiB segments: 2 MiB-aligned, right on
 *               every rank, and on 2 MiB pages in every rank's mapping
 *               whenever this kernel gives shared memory such pages
 *               (probed on a memfd of its own with MADV_COLLAPSE).
 *   --spans     the world spans two nodes (tests/twonode): create on the
 *               world answers DPEP_ERR_UNSUPPORTED on every rank, create on
 *               each node's comm works.
 *   --room MIB  the backing directory (OMPI_MCA_osc_sm_backing_directory)
 *               has less than MIB MiB free: a request of MIB MiB per rank
 *               answers DPEP_ERR_NOMEM on every rank before touching a page,
 *               a 4 KiB one works.
 *   --nodir     the backing directory does not exist: create answers
 *               DPEP_ERR_IO on every rank (rank 0 cannot make the file;
 *               no rank is left waiting), and works again once it does. */
#include "dpep_comm.h"
#include "../dpep_test.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__linux__) && !defined(MADV_COLLAPSE)
#define MADV_COLLAPSE 25
#endif

static int g_wrank;

static uint64_t pattern(int from, int to, int round, int64_t i)
{
    return ((uint64_t)from << 48) ^ ((uint64_t)to << 32) ^ ((uint64_t)round << 16) ^
           (uint64_t)(i * 2654435761u);
}

static void exchange(MPI_Comm parent, const char *name)
{
    dpep_comm *c = NULL;
    EXPECT(dpep_comm_create(parent, name, DPEP_COMM_MPI, 60, &c) == DPEP_OK, "%s: create", name);
    if (!c) return;
    const int n = dpep_comm_size(c), me = dpep_comm_rank(c);

    /* sizes differ per rank; rank 1 asks for nothing */
    size_t mine = me == 1 ? 0 : 1000 + 4096 * (size_t)me;
    dpep_comm_shm *s = NULL;
    EXPECT(dpep_comm_shm_create(c, mine, &s) == DPEP_OK, "%s: shm create", name);
    if (s) {
        for (int p = 0; p < n; p++) {
            size_t want = p == 1 ? 0 : 1000 + 4096 * (size_t)p;
            EXPECT(dpep_comm_shm_size(s, p) == want, "%s: segment %d: %zu bytes, expected %zu",
                   name, p, dpep_comm_shm_size(s, p), want);
            const unsigned char *b = dpep_comm_shm_ptr(s, p);
            size_t nz = 0;
            for (size_t i = 0; b && i < want; i++) nz += b[i] != 0;
            EXPECT(want == 0 || (b && nz == 0), "%s: segment %d: %zu nonzero bytes after create",
                   name, p, nz);
        }
        EXPECT(dpep_comm_shm_ptr(s, n) == NULL && dpep_comm_shm_ptr(s, -1) == NULL,
               "%s: out-of-range peers give NULL", name);
        dpep_comm_shm_destroy(s);
    }

    /* rounds: slot q of segment p (L words) is written by rank q only */
    const int64_t L = 517; /* odd: rows that straddle cache lines */
    s = NULL;
    EXPECT(dpep_comm_shm_create(c, sizeof(uint64_t) * (size_t)(L * n), &s) == DPEP_OK,
           "%s: shm create (rounds)", name);
    long bad = 0, fence_fail = 0;
    for (int round = 0; s && round < 300; round++) {
        for (int p = 0; p < n; p++) {
            uint64_t *slot = (uint64_t *)dpep_comm_shm_ptr(s, p) + (int64_t)me * L;
            for (int64_t i = 0; i < L; i++) slot[i] = pattern(me, p, round, i);
        }
        fence_fail += dpep_comm_shm_fence(s) != DPEP_OK;
        const uint64_t *own = dpep_comm_shm_ptr(s, me);
        for (int q = 0; q < n; q++)
            for (int64_t i = 0; i < L; i++) bad += own[(int64_t)q * L + i] != pattern(q, me, round, i);
        /* nobody overwrites a slot before its reader is done with it */
        fence_fail += dpep_comm_shm_fence(s) != DPEP_OK;
    }
    EXPECT(bad == 0 && fence_fail == 0, "%s: %ld words wrong, %ld fences failed over 300 rounds",
           name, bad, fence_fail);

    /* split phase: write, arrive, check each peer's slot as soon as that
     * peer has arrived (own first, then the next ranks), depart; a fence
     * before the slots are written again */
    bad = 0;
    long call_fail = 0;
    for (int round = 0; s && round < 300; round++) {
        for (int p = 0; p < n; p++) {
            uint64_t *slot = (uint64_t *)dpep_comm_shm_ptr(s, p) + (int64_t)me * L;
            for (int64_t i = 0; i < L; i++) slot[i] = pattern(me, p, round + 1000, i);
        }
        call_fail += dpep_comm_shm_arrive(s) != DPEP_OK;
        const uint64_t *own = dpep_comm_shm_ptr(s, me);
        for (int j = 0; j < n; j++) {
            const int q = (me + j) % n;
            call_fail += dpep_comm_shm_wait(s, q) != DPEP_OK;
            for (int64_t i = 0; i < L; i++)
                bad += own[(int64_t)q * L + i] != pattern(q, me, round + 1000, i);
        }
        call_fail += dpep_comm_shm_depart(s) != DPEP_OK;
        call_fail += dpep_comm_shm_fence(s) != DPEP_OK;
    }
    EXPECT(bad == 0 && call_fail == 0, "%s: split phase: %ld words wrong, %ld calls failed", name,
           bad, call_fail);
    /* out of order: refused without touching the round count */
    if (s) {
        EXPECT(dpep_comm_shm_wait(s, 0) == DPEP_ERR_INTERNAL, "%s: wait outside a round", name);
        EXPECT(dpep_comm_shm_depart(s) == DPEP_ERR_INTERNAL, "%s: depart without arrive", name);
        EXPECT(dpep_comm_shm_arrive(s) == DPEP_OK, "%s: arrive", name);
        EXPECT(dpep_comm_shm_arrive(s) == DPEP_ERR_INTERNAL, "%s: arrive twice", name);
        EXPECT(dpep_comm_shm_wait(s, n) == DPEP_ERR_INTERNAL, "%s: wait for rank %d", name, n);
        for (int q = 0; q < n; q++) EXPECT(dpep_comm_shm_wait(s, q) == DPEP_OK, "%s: wait", name);
        EXPECT(dpep_comm_shm_depart(s) == DPEP_OK, "%s: depart", name);
    }
    dpep_comm_shm_destroy(s);

    /* a NULL comm / out pointer is a usage error, not a crash */
    EXPECT(dpep_comm_shm_create(NULL, 8, &s) == DPEP_ERR_INVALID, "%s: NULL comm", name);
    if (me == 0)
        printf("ok   %-10s %d ranks: sizes, zeroing, 300 write/fence/check rounds and 300 "
               "write/arrive/wait/check/depart rounds of %lld words per pair\n", name, n,
               (long long)L);
    dpep_comm_destroy(c);
}

/* Can this kernel back shared memory with 2 MiB pages on request? 0 when
 * it can, else the errno of the attempt. */
static int kernel_collapses_shmem(void)
{
    const size_t H = (size_t)2 << 20;
    int err = ENOSYS;
#if defined(MADV_COLLAPSE) && defined(__linux__)
    char name[] = "/dev/shm/dpep-probe.XXXXXX";
    const int fd = mkstemp(name);
    if (fd < 0) return errno;
    unlink(name);
    char *r = ftruncate(fd, (off_t)H) == 0
                  ? mmap(NULL, 2 * H, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
                  : MAP_FAILED;
    if (r != MAP_FAILED) {
        char *a = (char *)(((uintptr_t)r + H - 1) & ~(uintptr_t)(H - 1));
        if (mmap(a, H, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) != MAP_FAILED) {
            memset(a, 1, H);
            err = madvise(a, H, MADV_COLLAPSE) == 0 ? 0 : errno;
        } else {
            err = errno;
        }
        munmap(r, 2 * H);
    } else {
        err = errno;
    }
    close(fd);
#endif
    return err;
}

/* Segments of 6 MiB: each starts on a 2 MiB boundary (the control block
 * before it is the first bytes of that page), holds what its writers put
 * there, and is mapped with 2 MiB pages in every rank where the kernel
 * gives them. */
static void huge(void)
{
    dpep_comm *c = NULL;
    EXPECT(dpep_comm_create(MPI_COMM_WORLD, "huge", DPEP_COMM_MPI, 60, &c) == DPEP_OK, "create");
    if (!c) return;
    const int n = dpep_comm_size(c), me = dpep_comm_rank(c);
    const size_t H = (size_t)2 << 20, bytes = (size_t)6 << 20;
    dpep_comm_shm *s = NULL;
    EXPECT(dpep_comm_shm_create(c, bytes, &s) == DPEP_OK, "huge: shm create");
    if (!s) {
        dpep_comm_destroy(c);
        return;
    }
    long bad = 0, misaligned = 0, nonzero = 0;
    for (int p = 0; p < n; p++)
        misaligned += ((uintptr_t)dpep_comm_shm_ptr(s, p) & (H - 1)) >= 4096;
    const unsigned char *z = dpep_comm_shm_ptr(s, me);
    for (size_t i = 0; i < bytes; i++) nonzero += z[i] != 0;
    EXPECT(nonzero == 0, "huge: %ld bytes of a new segment not zero", nonzero);
    EXPECT(dpep_comm_shm_fence(s) == DPEP_OK, "huge: fence"); /* all checked before any write */
    /* every rank fills its slice of every segment; each checks its own */
    const size_t L = bytes / sizeof(uint64_t) / (size_t)n;
    for (int p = 0; p < n; p++) {
        uint64_t *w = (uint64_t *)dpep_comm_shm_ptr(s, p) + (size_t)me * L;
        for (size_t i = 0; i < L; i++) w[i] = pattern(me, p, 7, (int64_t)i);
    }
    EXPECT(dpep_comm_shm_fence(s) == DPEP_OK, "huge: fence");
    /* every segment read whole by every rank (each page then mapped here) */
    for (int p = 0; p < n; p++) {
        const uint64_t *seg = dpep_comm_shm_ptr(s, p);
        for (int q = 0; q < n; q++)
            for (size_t i = 0; i < L; i++) bad += seg[(size_t)q * L + i] != pattern(q, p, 7, (int64_t)i);
    }
    EXPECT(misaligned == 0 && bad == 0, "huge: %ld segments off a 2 MiB boundary, %ld words wrong",
           misaligned, bad);
    /* the pages, in this rank's view (its mapping: all segments read) */
    const int probe = kernel_collapses_shmem();
    double frac = 0.0;
    for (int p = 0; p < n; p++) {
        const int64_t h = dpep_pages_huge_bytes(dpep_comm_shm_ptr(s, p), bytes - H);
        frac += h > 0 ? (double)h / (double)(bytes - H) / n : 0.0;
    }
    if (probe == 0)
        EXPECT(frac > 0.99, "huge: this kernel gives shared memory 2 MiB pages, yet %.0f %% of the "
               "segments are on them", 100.0 * frac);
    if (me == 0)
        printf("ok   huge       %d ranks: 6 MiB segments 2 MiB-aligned and right; %.0f %% on 2 MiB "
               "pages%s%s%s\n", n, 100.0 * frac,
               probe ? " (this kernel gives shared memory none: MADV_COLLAPSE: " : "",
               probe ? strerror(probe) : "", probe ? ")" : "");
    dpep_comm_shm_destroy(s);
    dpep_comm_destroy(c);
}

static void spans(void)
{
    dpep_comm *c = NULL, *nc = NULL;
    EXPECT(dpep_comm_create(MPI_COMM_WORLD, "world", DPEP_COMM_MPI, 60, &c) == DPEP_OK, "create");
    dpep_comm_shm *s = NULL;
    dpep_status st = dpep_comm_shm_create(c, 4096, &s);
    EXPECT(st == DPEP_ERR_UNSUPPORTED && !s, "world over two nodes: %s, expected unsupported",
           dpep_status_string(st));
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    EXPECT(dpep_comm_create(node, "node", DPEP_COMM_MPI, 60, &nc) == DPEP_OK, "node create");
    st = dpep_comm_shm_create(nc, 4096, &s);
    EXPECT(st == DPEP_OK, "node comm: %s", dpep_status_string(st));
    if (s) {
        *(int *)dpep_comm_shm_ptr(s, (dpep_comm_rank(nc) + 1) % dpep_comm_size(nc)) = g_wrank + 1;
        EXPECT(dpep_comm_shm_fence(s) == DPEP_OK, "fence");
        EXPECT(*(int *)dpep_comm_shm_ptr(s, dpep_comm_rank(nc)) > 0, "neighbour's write seen");
        dpep_comm_shm_destroy(s);
    }
    if (g_wrank == 0) printf("ok   spanning world refused, per-node comms work\n");
    dpep_comm_destroy(nc);
    MPI_Comm_free(&node);
    dpep_comm_destroy(c);
}

static void room(double mib)
{
    dpep_comm *c = NULL;
    EXPECT(dpep_comm_create(MPI_COMM_WORLD, "world", DPEP_COMM_MPI, 60, &c) == DPEP_OK, "create");
    dpep_comm_shm *s = NULL;
    dpep_status st = dpep_comm_shm_create(c, (size_t)(mib * 1048576.0), &s);
    EXPECT(st == DPEP_ERR_NOMEM && !s, "%.0f MiB per rank: %s, expected out of memory", mib,
           dpep_status_string(st));
    st = dpep_comm_shm_create(c, 4096, &s);
    EXPECT(st == DPEP_OK, "4 KiB per rank: %s", dpep_status_string(st));
    dpep_comm_shm_destroy(s);
    if (g_wrank == 0) printf("ok   no room: refused on every rank; a small segment works\n");
    dpep_comm_destroy(c);
}

static void nodir(void)
{
    dpep_comm *c = NULL;
    EXPECT(dpep_comm_create(MPI_COMM_WORLD, "world", DPEP_COMM_MPI, 60, &c) == DPEP_OK, "create");
    if (!c) return;
    const char *was = getenv("OMPI_MCA_osc_sm_backing_directory");
    char *keep = was ? strdup(was) : NULL;
    setenv("OMPI_MCA_osc_sm_backing_directory", "/nonexistent/dpep-test-dir", 1);
    dpep_comm_shm *s = NULL;
    /* rank 0's stderr caught, to check that the error names the directory */
    FILE *cap = g_wrank == 0 ? tmpfile() : NULL;
    const int saved = cap ? dup(2) : -1;
    if (cap) {
        fflush(stderr);
        dup2(fileno(cap), 2);
    }
    dpep_status st = dpep_comm_shm_create(c, (size_t)5 << 20, &s);
    if (cap) {
        fflush(stderr);
        dup2(saved, 2);
        close(saved);
        char text[4096] = {0};
        rewind(cap);
        const size_t got = fread(text, 1, sizeof text - 1, cap);
        fclose(cap);
        text[got] = '\0';
        fputs(text, stderr);
        EXPECT(strstr(text, "cannot create") && strstr(text, "/nonexistent/dpep-test-dir") &&
                   strstr(text, "No such file or directory"),
               "the error names the directory and why: \"%s\"", text);
    }
    EXPECT(st == DPEP_ERR_IO && !s, "no backing directory: %s, expected an I/O error",
           dpep_status_string(st));
    if (keep) setenv("OMPI_MCA_osc_sm_backing_directory", keep, 1);
    else unsetenv("OMPI_MCA_osc_sm_backing_directory");
    free(keep);
    st = dpep_comm_shm_create(c, (size_t)5 << 20, &s);
    EXPECT(st == DPEP_OK, "backing directory back: %s", dpep_status_string(st));
    if (s) EXPECT(dpep_comm_shm_fence(s) == DPEP_OK, "fence");
    dpep_comm_shm_destroy(s);
    if (g_wrank == 0) printf("ok   no backing directory: an I/O error on every rank; then it works\n");
    dpep_comm_destroy(c);
}

int main(int argc, char **argv)
{
    int provided = 0, wsize = 1;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_wrank);
    MPI_Comm_size(MPI_COMM_WORLD, &wsize);
    dpep_log_init();
    dpep_log_set_rank(g_wrank);
    if (argc > 1 && strcmp(argv[1], "--spans") == 0) {
        spans();
    } else if (argc > 1 && strcmp(argv[1], "--nodir") == 0) {
        nodir();
    } else if (argc > 2 && strcmp(argv[1], "--room") == 0) {
        room(atof(argv[2]));
    } else {
        exchange(MPI_COMM_WORLD, "world");
        MPI_Comm half, rev;
        MPI_Comm_split(MPI_COMM_WORLD, g_wrank < (wsize + 1) / 2, g_wrank, &half);
        exchange(half, "half");
        MPI_Comm_free(&half);
        MPI_Comm_split(MPI_COMM_WORLD, 0, wsize - g_wrank, &rev);
        exchange(rev, "reversed");
        MPI_Comm_free(&rev);
        huge();
    }
    int mine[2] = {g_pass, g_fail}, tot[2];
    MPI_Allreduce(mine, tot, 2, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (g_wrank == 0) printf("%d passed, %d failed\n", tot[0], tot[1]);
    MPI_Finalize();
    return tot[1] ? 1 : 0;
}
