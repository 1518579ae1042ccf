/* mpi_twonode_check.c — self-test for the two-node harness (twonode.sh).
 *
 * Every rank reports its rank, hostname and node index, where the node index
 * comes from MPI_Comm_split_type(MPI_COMM_TYPE_SHARED): one shared-memory
 * communicator per node, numbered by the order of their lowest world rank.
 * Then an MPI_Alltoall and an MPI_Allreduce of a few MiB run on data that
 * every rank can rebuild from a seed, and every received element is checked.
 *
 *   mpi_twonode_check [--expect-nodes N] [--mib M] [--seed S] [--iters K]
 *
 * Output: one line per rank (printed by rank 0, in rank order), then
 * "N passed, M failed". Exit code 0 when nothing failed, 1 otherwise,
 * 2 on bad arguments. */
#define _DEFAULT_SOURCE /* gethostname */
#include <mpi.h>

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define HOST_LEN 256

/* splitmix64: a cheap, well-mixed function of (seed, a, b, i). */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t value(uint64_t seed, uint64_t a, uint64_t b, uint64_t i)
{
    return mix(seed ^ mix(a * 0x100000001b3ULL ^ mix(b ^ mix(i))));
}

static int passed, failed;

static void check(int ok, int rank, const char *what)
{
    if (ok) {
        passed++;
    } else {
        failed++;
        fprintf(stderr, "FAIL rank %d: %s\n", rank, what);
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: mpi_twonode_check [--expect-nodes N] [--mib M] [--seed S] [--iters K]\n");
}

int main(int argc, char **argv)
{
    int expect_nodes = 0, iters = 2;
    double mib = 4.0;
    uint64_t seed = 12345;

    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);

    for (int a = 1; a < argc; a++) {
        const char *next = a + 1 < argc ? argv[a + 1] : NULL;
        if (!strcmp(argv[a], "--expect-nodes") && next) {
            expect_nodes = atoi(next);
            a++;
        } else if (!strcmp(argv[a], "--mib") && next) {
            mib = atof(next);
            a++;
        } else if (!strcmp(argv[a], "--seed") && next) {
            seed = strtoull(next, NULL, 0);
            a++;
        } else if (!strcmp(argv[a], "--iters") && next) {
            iters = atoi(next);
            a++;
        } else {
            if (rank == 0) usage();
            MPI_Finalize();
            return 2;
        }
    }
    if (mib <= 0 || iters < 1 || expect_nodes < 0) {
        if (rank == 0) usage();
        MPI_Finalize();
        return 2;
    }

    /* ---- topology: node index from the shared-memory split ---- */
    char host[HOST_LEN];
    memset(host, 0, sizeof host);
    if (gethostname(host, sizeof host - 1) != 0) strcpy(host, "?");

    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    int lrank, lsize;
    MPI_Comm_rank(node, &lrank);
    MPI_Comm_size(node, &lsize);
    /* Leaders (local rank 0) form a communicator ordered by world rank; a
     * leader's rank in it is its node's index, and its size the node count. */
    MPI_Comm leaders;
    MPI_Comm_split(MPI_COMM_WORLD, lrank == 0 ? 0 : MPI_UNDEFINED, rank, &leaders);
    int ids[2] = {0, 0}; /* node index, node count */
    if (leaders != MPI_COMM_NULL) {
        MPI_Comm_rank(leaders, &ids[0]);
        MPI_Comm_size(leaders, &ids[1]);
        MPI_Comm_free(&leaders);
    }
    MPI_Bcast(ids, 2, MPI_INT, 0, node);
    const int node_index = ids[0], nnodes = ids[1];

    /* Gather (node index, local rank, local size, hostname) on rank 0. */
    int mine[3] = {node_index, lrank, lsize};
    int *all = rank == 0 ? malloc(sizeof(int) * 3 * (size_t)size) : NULL;
    char *hosts = rank == 0 ? malloc((size_t)HOST_LEN * (size_t)size) : NULL;
    MPI_Gather(mine, 3, MPI_INT, all, 3, MPI_INT, 0, MPI_COMM_WORLD);
    MPI_Gather(host, HOST_LEN, MPI_CHAR, hosts, HOST_LEN, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        for (int r = 0; r < size; r++) {
            printf("rank %d/%d host %s node %d/%d local %d/%d\n", r, size, hosts + (size_t)r * HOST_LEN,
                   all[3 * r], nnodes, all[3 * r + 1], all[3 * r + 2]);
        }
        /* Same node <=> same hostname (the harness gives each node its own). */
        int consistent = 1;
        for (int r = 0; r < size; r++) {
            for (int q = r + 1; q < size; q++) {
                int same_node = all[3 * r] == all[3 * q];
                int same_host = !strcmp(hosts + (size_t)r * HOST_LEN, hosts + (size_t)q * HOST_LEN);
                if (same_node != same_host) consistent = 0;
            }
        }
        check(consistent, rank, "ranks share a node index exactly when they share a hostname");
        if (expect_nodes > 0) {
            char msg[96];
            snprintf(msg, sizeof msg, "expected %d nodes, saw %d", expect_nodes, nnodes);
            check(nnodes == expect_nodes, rank, msg);
        }
        printf("nodes: %d\n", nnodes);
        fflush(stdout);
        free(all);
        free(hosts);
    }
    MPI_Comm_free(&node);

    /* ---- alltoall: block to rank d from rank r holds value(seed, r, d, i) ---- */
    size_t total = (size_t)(mib * 1024.0 * 1024.0) / sizeof(uint64_t); /* elements per rank */
    size_t block = total / (size_t)size;
    if (block == 0) block = 1;
    if (block > (size_t)INT32_MAX) block = INT32_MAX;
    uint64_t *sbuf = malloc(block * (size_t)size * sizeof(uint64_t));
    uint64_t *rbuf = malloc(block * (size_t)size * sizeof(uint64_t));
    if (!sbuf || !rbuf) {
        fprintf(stderr, "rank %d: out of memory\n", rank);
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    for (int it = 0; it < iters; it++) {
        uint64_t s = seed + (uint64_t)it;
        for (int d = 0; d < size; d++)
            for (size_t i = 0; i < block; i++) sbuf[(size_t)d * block + i] = value(s, (uint64_t)rank, (uint64_t)d, i);
        memset(rbuf, 0, block * (size_t)size * sizeof(uint64_t));
        MPI_Alltoall(sbuf, (int)block, MPI_UINT64_T, rbuf, (int)block, MPI_UINT64_T, MPI_COMM_WORLD);
        size_t bad = 0;
        for (int src = 0; src < size; src++)
            for (size_t i = 0; i < block; i++)
                if (rbuf[(size_t)src * block + i] != value(s, (uint64_t)src, (uint64_t)rank, i)) bad++;
        char msg[96];
        snprintf(msg, sizeof msg, "alltoall iteration %d: %zu of %zu elements wrong", it, bad, block * (size_t)size);
        check(bad == 0, rank, msg);
    }

    /* ---- allreduce: element i of rank r is 16 bits of value(seed, r, ~0, i);
     * the uint64 sum is exact and every rank can recompute it. ---- */
    size_t n = block * (size_t)size;
    for (int it = 0; it < iters; it++) {
        uint64_t s = seed ^ (0xa5a5ULL + (uint64_t)it);
        for (size_t i = 0; i < n; i++) sbuf[i] = value(s, (uint64_t)rank, UINT64_MAX, i) & 0xffffu;
        memset(rbuf, 0, n * sizeof(uint64_t));
        MPI_Allreduce(sbuf, rbuf, (int)n, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
        size_t bad = 0;
        for (size_t i = 0; i < n; i++) {
            uint64_t want = 0;
            for (int r = 0; r < size; r++) want += value(s, (uint64_t)r, UINT64_MAX, i) & 0xffffu;
            if (rbuf[i] != want) bad++;
        }
        char msg[96];
        snprintf(msg, sizeof msg, "allreduce iteration %d: %zu of %zu elements wrong", it, bad, n);
        check(bad == 0, rank, msg);
    }
    free(sbuf);
    free(rbuf);

    int counts[2] = {passed, failed}, sums[2] = {0, 0};
    MPI_Reduce(counts, sums, 2, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    int any_failed = 0;
    MPI_Allreduce(&failed, &any_failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("data: %zu bytes per rank per collective, %d iterations\n", n * sizeof(uint64_t), iters);
        printf("%d passed, %d failed\n", sums[0], sums[1]);
        fflush(stdout);
    }
    MPI_Finalize();
    return any_failed ? 1 : 0;
}
