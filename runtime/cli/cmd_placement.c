/* cmd_placement.c — `dpep placement FILE`: start the MPI job as `dpep run`
 * will (nodes, GPUs, binding, communicators) and print where every rank
 * landed and which groups it belongs to. Run it under mpirun or srun. */
#include "dpep_cli.h"

#include <stdlib.h>
#include <string.h>

void dpep_cmd_placement_help(FILE *f)
{
    fprintf(f,
            "Run under the launcher, one rank per GPU (or per CPU slot on the CPU backend):\n"
            "  mpirun -np 4 dpep placement configs/tiny.yaml\n"
            "  srun --mpi=pmix -N 2 --ntasks-per-node 8 dpep placement deploy.yaml\n\n"
            "Every rank reads FILE, checks the job against it (world size, nodes, ranks per\n"
            "node, GPUs), binds itself per runtime.bind and splits the communicators. Rank 0\n"
            "prints the placement table (rank, host, local rank, GPU, NUMA node, cpuset)\n"
            "and each rank's groups. Takes the overrides of `dpep config check`.\n");
}

/* Each rank's groups, gathered so that rank 0 prints them in order. */
static dpep_status print_groups(const dpep_world *w)
{
    enum { N_FIELDS = 7, N_GROUPS = 5 };
    int mine[N_FIELDS] = {w->rank, w->me.instance, w->me.attn_dp_rank, w->me.attn_tp_rank,
                          w->me.ep_rank, w->me.moe_tp_rank, 0};
    int sizes[N_GROUPS];
    MPI_Comm cs[N_GROUPS] = {w->attn_tp, w->attn_dp, w->ep, w->moe_tp, w->dense};
    for (int k = 0; k < N_GROUPS; k++) DPEP_CHECK_MPI(MPI_Comm_size(cs[k], &sizes[k]));
    int *all = w->rank == 0 ? malloc(sizeof mine * (size_t)w->size) : NULL;
    /* rank 0 without memory: every rank learns it before the gather */
    int bad = w->rank == 0 && !all;
    /* Both collectives under the job comm's watchdog. */
    dpep_comm_watch_begin(w->job, "groups_ready", false);
    int rc = MPI_Bcast(&bad, 1, MPI_INT, 0, w->world);
    dpep_comm_watch_end(w->job);
    if (rc != MPI_SUCCESS) {
        free(all);
        DPEP_CHECK_MPI(rc);
    }
    if (bad) {
        free(all);
        return DPEP_ERR_NOMEM;
    }
    dpep_comm_watch_begin(w->job, "groups", false);
    rc = MPI_Gather(mine, N_FIELDS, MPI_INT, all, N_FIELDS, MPI_INT, 0, w->world);
    dpep_comm_watch_end(w->job);
    if (rc != MPI_SUCCESS) {
        free(all);
        DPEP_CHECK_MPI(rc);
    }
    if (w->rank == 0) {
        printf("\n%6s %9s %13s %13s %8s %12s   group sizes: attn_tp %d, attn_dp %d, ep %d, "
               "moe_tp %d, dense %d\n", "rank", "instance", "attn_dp_rank", "attn_tp_rank",
               "ep_rank", "moe_tp_rank", sizes[0], sizes[1], sizes[2], sizes[3], sizes[4]);
        for (int r = 0; r < w->size; r++) {
            const int *x = all + (size_t)N_FIELDS * r;
            printf("%6d %9d %13d %13d %8d %12d\n", x[0], x[1], x[2], x[3], x[4], x[5]);
        }
    }
    free(all);
    return DPEP_OK;
}

static dpep_status placement_body(dpep_world *w, const dpep_config *cfg, dpep_diag *diag)
{
    (void)cfg, (void)diag;
    return print_groups(w);
}

int dpep_cmd_placement(int argc, char **argv)
{
    return dpep_cli_job_main("placement", argc, argv, NULL, placement_body);
}
