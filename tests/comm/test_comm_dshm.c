/* test_comm_dshm.c — device-shared segments (dpep_comm_dshm) under mpiexec:
 *   --device cpu   the CPU path (node-shared memory), in every CI run;
 *   --device cuda  CUDA IPC: rank r on GPU (local rank mod GPUs), so two or
 *                  four ranks on the one-GPU test machine share it (CUDA IPC
 *                  between processes on one device); SKIP (77) without a
 *                  GPU or in a build without CUDA.
 * Each: segment sizes per rank (rank 1 asks for nothing), zeroed at create;
 * 50 rounds in which every rank writes a rebuildable pattern into its slot
 * of every peer's segment through the device's copy (a peer's mapped
 * address), fences, reads back its own segment and checks every peer's
 * slot, and fences again; the kind string; destroy. On the world and on a
 * reversed-order comm. */
#include "dpep_comm.h"
#include "dpep_world.h"
#include "../dpep_test.h"

#include <stdlib.h>
#include <string.h>

static dpep_device g_dev;

static uint64_t pattern(int from, int to, int round, int64_t i)
{
    return ((uint64_t)from << 48) ^ ((uint64_t)to << 32) ^ ((uint64_t)round << 16) ^
           (uint64_t)(i * 2654435761u) ^ 0x5a5a5a5a00000001ull;
}

static void rounds(MPI_Comm parent, const char *name)
{
    dpep_comm *c = NULL;
    EXPECT(dpep_comm_create(parent, name, DPEP_COMM_MPI, 60, &c) == DPEP_OK, "%s: create", name);
    if (!c) return;
    const int n = dpep_comm_size(c), me = dpep_comm_rank(c);
    /* slot of each source: W words; rank 1 asks for nothing, so that it
     * only writes (its peers' segments) */
    const int64_t W = 37;
    size_t mine = me == 1 ? 0 : sizeof(uint64_t) * (size_t)(W * n + me);
    dpep_comm_dshm *s = NULL;
    dpep_status st = dpep_comm_dshm_create(c, &g_dev, mine, &s);
    EXPECT(st == DPEP_OK && s, "%s: dshm create on %s (%s)", name,
           dpep_device_kind_name(g_dev.kind), dpep_status_string(st));
    if (!s) {
        dpep_comm_destroy(c);
        return;
    }
    const char *want = g_dev.kind == DPEP_DEVICE_CPU ? "node-shared host memory" : "CUDA IPC";
    EXPECT(strcmp(dpep_comm_dshm_kind(s), want) == 0, "%s: kind %s", name, dpep_comm_dshm_kind(s));
    for (int p = 0; p < n; p++)
        EXPECT(dpep_comm_dshm_ptr(s, p) != NULL, "%s: peer %d mapped", name, p);
    EXPECT(dpep_comm_dshm_ptr(s, n) == NULL && dpep_comm_dshm_ptr(s, -1) == NULL,
           "%s: out of range peers are NULL", name);
    uint64_t *buf = calloc((size_t)(W * n + n) + 1, sizeof(uint64_t));
    uint64_t *blk = calloc((size_t)W, sizeof(uint64_t));
    /* zeroed at create */
    if (mine) {
        EXPECT(g_dev.ops->to_host(&g_dev, buf, dpep_comm_dshm_ptr(s, me), mine) == DPEP_OK,
               "%s: read own segment", name);
        int nz = 0;
        for (size_t i = 0; i < mine / sizeof(uint64_t); i++) nz += buf[i] != 0;
        EXPECT(nz == 0, "%s: own segment zeroed at create (%d nonzero words)", name, nz);
    }
    /* nobody writes before every rank has looked */
    EXPECT(dpep_comm_dshm_fence(s) == DPEP_OK, "%s: fence", name);
    long bad = 0;
    int fails = 0;
    for (int r = 0; r < 50; r++) {
        for (int p = 0; p < n; p++) {
            if (p == 1) continue; /* rank 1 has no segment */
            for (int64_t i = 0; i < W; i++) blk[i] = pattern(me, p, r, i);
            uint64_t *dst = (uint64_t *)dpep_comm_dshm_ptr(s, p) + (int64_t)me * W;
            fails += g_dev.ops->to_device(&g_dev, dst, blk, sizeof(uint64_t) * (size_t)W) != DPEP_OK;
        }
        fails += dpep_comm_dshm_fence(s) != DPEP_OK;
        if (mine) {
            fails += g_dev.ops->to_host(&g_dev, buf, dpep_comm_dshm_ptr(s, me), mine) != DPEP_OK;
            for (int from = 0; from < n; from++)
                for (int64_t i = 0; i < W; i++) bad += buf[from * W + i] != pattern(from, me, r, i);
            /* the words past the slots are never written */
            for (int q = 0; q < me; q++) bad += buf[W * n + q] != 0;
        }
        fails += dpep_comm_dshm_fence(s) != DPEP_OK;
    }
    EXPECT(fails == 0, "%s: %d copy or fence calls failed", name, fails);
    EXPECT(bad == 0, "%s: 50 rounds, %ld words wrong in this rank's segment", name, bad);
    dpep_comm_dshm_destroy(s);
    free(buf);
    free(blk);
    dpep_comm_destroy(c);
}

int main(int argc, char **argv)
{
    const char *dev = "cpu";
    for (int i = 1; i + 1 < argc; i++)
        if (strcmp(argv[i], "--device") == 0) dev = argv[i + 1];
    dpep_log_init();
    int prov = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &prov);
    int rank = 0, size = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    if (strcmp(dev, "cuda") == 0) {
        int n = 0;
        char why[256] = "";
        int ok = dpep_cuda_device_count(&n, why, sizeof why) == DPEP_OK && n > 0;
        MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
        if (!ok) {
            if (rank == 0) printf("SKIP: no GPU (%s)\n", why);
            MPI_Finalize();
            return 77;
        }
        MPI_Comm node;
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
        int lr = 0;
        MPI_Comm_rank(node, &lr);
        MPI_Comm_free(&node);
        EXPECT(dpep_cuda_set_device(lr % n) == DPEP_OK, "set device %d", lr % n);
        EXPECT(dpep_device_get(DPEP_DEVICE_CUDA, lr % n, &g_dev) == DPEP_OK, "cuda device");
        if (rank == 0) printf("%d ranks on %d GPU(s)\n", size, n);
    } else {
        EXPECT(dpep_device_get(DPEP_DEVICE_CPU, -1, &g_dev) == DPEP_OK, "cpu device");
    }
    rounds(MPI_COMM_WORLD, "world");
    MPI_Comm rev;
    MPI_Comm_split(MPI_COMM_WORLD, 0, size - rank, &rev);
    rounds(rev, "reversed");
    MPI_Comm_free(&rev);
    int fail = g_fail;
    MPI_Allreduce(MPI_IN_PLACE, &fail, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0) dpep_test_summary();
    MPI_Finalize();
    return fail ? 1 : 0;
}
