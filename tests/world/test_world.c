/* test_world.c — under mpiexec -n N: for every valid layout of N ranks on one
 * node (or the one given with --layout tp,dp,ep,dpa), dpep_world_setup makes
 * communicators whose sizes, members and ranks match the layout rules; each
 * is then used for an allreduce that every rank can predict. */
#include "dpep_world.h"

#include <stdlib.h>
#include <string.h>

static int g_fail, g_pass;
#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (cond) {                                                                           \
            g_pass++;                                                                         \
        } else {                                                                              \
            if (g_fail++ < 10) {                                                              \
                printf("FAIL rank %d line %d: ", g_rank, __LINE__);                          \
                printf(__VA_ARGS__);                                                          \
                printf("\n");                                                                 \
            }                                                                                 \
        }                                                                                     \
    } while (0)
static int g_rank;
static int g_nodes = 1; /* nodes of this job, counted once in main() */

/* Group key and rank-in-group of world rank r, straight from DESIGN.md. */
typedef struct { int key, grank; } gk;
enum { G_INSTANCE, G_ATTN_TP, G_ATTN_DP, G_EP, G_MOE_TP, G_DENSE, G_N };
static const char *const k_gname[G_N] = {"instance", "attn_tp", "attn_dp", "ep", "moe_tp", "dense"};

static gk group_of(int g, int r, int tp, int attn_tp, int moe_tp, int dense_tp)
{
    int inst = r / tp, i = r % tp;
    switch (g) {
    case G_INSTANCE: return (gk){inst, i};
    case G_ATTN_TP: return (gk){inst * 100000 + i / attn_tp, i % attn_tp};
    case G_ATTN_DP: return (gk){inst * 100000 + i % attn_tp, i / attn_tp};
    case G_EP: return (gk){inst * 100000 + i % moe_tp, i / moe_tp};
    case G_MOE_TP: return (gk){inst * 100000 + i / moe_tp, i % moe_tp};
    default: return dense_tp == 1 ? (gk){r, 0} : (gk){inst, i};
    }
}

static void check_layout(int tp, int dp, int ep, int dpa, int dense, int world)
{
    dpep_config cfg;
    dpep_config_init(&cfg);
    cfg.parallel.tp = tp;
    cfg.parallel.dp = dp;
    cfg.parallel.ep = ep;
    cfg.parallel.enable_dp_attention = dpa;
    cfg.parallel.moe_dense_tp_size = dense;
    cfg.runtime.device = DPEP_DEVICE_CPU;
    cfg.runtime.bind = DPEP_BIND_NONE;
    cfg.launch.nodes = g_nodes;
    dpep_diag diag;
    dpep_diag_init(&diag);
    if (dpep_config_validate(&cfg, world, &diag) != DPEP_OK) {
        dpep_config_free(&cfg);
        return; /* not a valid layout for this world */
    }
    dpep_world w;
    dpep_world_init(NULL, NULL, &w);
    dpep_status st = dpep_world_setup(&w, &cfg, &diag);
    CHECK(st == DPEP_OK, "setup tp%d dp%d ep%d dpa%d: %s", tp, dp, ep, dpa, dpep_status_string(st));
    if (st != DPEP_OK) {
        dpep_diag_print(&diag, stdout);
        dpep_world_finalize(&w);
        dpep_config_free(&cfg);
        return;
    }
    const dpep_layout *l = &w.layout;
    MPI_Comm comms[G_N] = {w.instance, w.attn_tp, w.attn_dp, w.ep, w.moe_tp, w.dense};
    int members[1024];
    for (int g = 0; g < G_N; g++) {
        gk mine = group_of(g, w.rank, l->tp, l->attn_tp, l->moe_tp, l->dense_tp);
        int expect_size = 0;
        for (int r = 0; r < world; r++)
            expect_size += group_of(g, r, l->tp, l->attn_tp, l->moe_tp, l->dense_tp).key == mine.key;
        int size = -1, rank = -1;
        MPI_Comm_size(comms[g], &size);
        MPI_Comm_rank(comms[g], &rank);
        CHECK(size == expect_size && rank == mine.grank, "tp%d dp%d ep%d dpa%d %s: size %d rank %d, expected %d %d",
              tp, dp, ep, dpa, k_gname[g], size, rank, expect_size, mine.grank);
        if (size != expect_size || size > 1024) continue;
        /* members, in group-rank order */
        MPI_Allgather(&w.rank, 1, MPI_INT, members, 1, MPI_INT, comms[g]);
        for (int k = 0; k < size; k++) {
            gk other = group_of(g, members[k], l->tp, l->attn_tp, l->moe_tp, l->dense_tp);
            CHECK(other.key == mine.key && other.grank == k, "%s member %d is world rank %d",
                  k_gname[g], k, members[k]);
        }
        /* an allreduce whose result every rank predicts: sum of world ranks + 1 */
        long v = w.rank + 1, sum = 0, want = 0;
        MPI_Allreduce(&v, &sum, 1, MPI_LONG, MPI_SUM, comms[g]);
        for (int k = 0; k < size; k++) want += members[k] + 1;
        CHECK(sum == want, "%s allreduce %ld != %ld", k_gname[g], sum, want);
    }
    /* the rank info agrees with the communicators */
    CHECK(w.me.attn_tp_rank == group_of(G_ATTN_TP, w.rank, l->tp, l->attn_tp, l->moe_tp, 1).grank &&
          w.me.ep_rank == group_of(G_EP, w.rank, l->tp, l->attn_tp, l->moe_tp, 1).grank,
          "rank info");
    CHECK(w.n_nodes == g_nodes && w.local_size == world / g_nodes && w.gpu == -1 &&
          w.node == w.rank / (world / g_nodes), "node facts: %d nodes, %d local", w.n_nodes,
          w.local_size);
    dpep_world_finalize(&w);
    dpep_config_free(&cfg);
}

int main(int argc, char **argv)
{
    dpep_world w0;
    if (dpep_world_init(&argc, &argv, &w0) != DPEP_OK) return 1;
    g_rank = w0.rank;
    int world = w0.size, layouts = 0;
    /* Nodes = shared-memory groups; the twonode test runs this on 2 "nodes". */
    {
        MPI_Comm node;
        int lr, leaders = 0;
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
        MPI_Comm_rank(node, &lr);
        int lead = lr == 0;
        MPI_Allreduce(&lead, &leaders, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
        MPI_Comm_free(&node);
        g_nodes = leaders;
    }
    if (argc > 2 && strcmp(argv[1], "--layout") == 0) {
        int tp, dp, ep, dpa;
        if (sscanf(argv[2], "%d,%d,%d,%d", &tp, &dp, &ep, &dpa) != 4) {
            fprintf(stderr, "usage: test_world [--layout tp,dp,ep,dpa]\n");
            MPI_Abort(MPI_COMM_WORLD, 2);
        }
        check_layout(tp, dp, ep, dpa, 1, world);
        check_layout(tp, dp, ep, dpa, 0, world);
        layouts = 2;
    } else {
        for (int tp = 1; tp <= world; tp++)
            for (int dp = 1; dp <= world; dp++)
                for (int ep = 1; ep <= tp; ep++)
                    for (int dpa = 0; dpa <= 1; dpa++) {
                        int need = (dpa && dp > 1) ? tp : tp * dp;
                        if (need != world || tp % ep || (dpa && dp > 1 && tp % dp) || (dpa && dp == 1))
                            continue;
                        dpep_config probe;
                        dpep_config_init(&probe);
                        probe.parallel.tp = tp;
                        probe.parallel.dp = dp;
                        probe.parallel.ep = ep;
                        probe.parallel.enable_dp_attention = dpa;
                        probe.launch.nodes = g_nodes;
                        dpep_diag pd;
                        dpep_diag_init(&pd);
                        bool ok = dpep_config_validate(&probe, world, &pd) == DPEP_OK;
                        dpep_config_free(&probe);
                        if (!ok) continue; /* e.g. an instance straddling nodes */
                        check_layout(tp, dp, ep, dpa, (tp + dp + ep) % 2, world);
                        layouts++;
                    }
    }
    /* A config that names the wrong node count fails on every rank, naming the key. */
    {
        dpep_config cfg;
        dpep_config_init(&cfg);
        cfg.parallel.tp = world;
        cfg.launch.nodes = g_nodes + 1;
        cfg.runtime.device = DPEP_DEVICE_CPU;
        dpep_diag diag;
        dpep_diag_init(&diag);
        dpep_world w;
        dpep_world_init(NULL, NULL, &w);
        dpep_status st = dpep_world_setup(&w, &cfg, &diag);
        CHECK(st == DPEP_ERR_INVALID && dpep_diag_find(&diag, "launch.nodes: the job runs on"),
              "node count mismatch: %s", dpep_status_string(st));
        dpep_world_finalize(&w);
        dpep_config_free(&cfg);
    }
    int fails = 0, passes = 0;
    MPI_Allreduce(&g_fail, &fails, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(&g_pass, &passes, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (w0.rank == 0) {
        printf("%d ranks on %d node%s, %d layouts\n", world, g_nodes, g_nodes == 1 ? "" : "s", layouts);
        printf("%d passed, %d failed\n", passes, fails);
    }
    w0.mpi_owned = true;
    dpep_world_finalize(&w0);
    return fails ? 1 : 0;
}
