/* agree.c — dpep_comm_agree: "did every rank succeed?" after a local step,
 * with the failing ranks named by count and lowest rank. The one helper for
 * this pattern (engine create, model load, MoE create all use it).
 *
 * Front end like comm.c's collectives (bracketed for the watchdog), but not
 * through c->ops: by contract it runs on host memory over the comm's MPI
 * communicator whatever the backend (an NCCL comm's ops want device memory),
 * and it needs MPI_MIN, which the ops table does not offer. */
#include "comm_internal.h"

dpep_status dpep_comm_agree(dpep_comm *c, dpep_status local, int *n_failed, int *first_failed)
{
    static const char op[] = "agree";
    /* [0]: lowest failed rank (size when none, by MIN); [1]: failures (SUM) */
    int mine[2] = {local != DPEP_OK ? c->rank : c->size, local != DPEP_OK};
    int all[2] = {c->size, 0};
    dpep_comm_op_begin(c, op);
    int rc = MPI_Allreduce(&mine[0], &all[0], 1, MPI_INT, MPI_MIN, c->comm);
    if (rc == MPI_SUCCESS) rc = MPI_Allreduce(&mine[1], &all[1], 1, MPI_INT, MPI_SUM, c->comm);
    int status_of_first = local;
    if (rc == MPI_SUCCESS && all[1] > 0) {
        /* the lowest failed rank's status, for ranks that did not fail */
        int first = all[0];
        rc = MPI_Bcast(&status_of_first, 1, MPI_INT, first, c->comm);
    }
    if (rc != MPI_SUCCESS) {
        dpep_check_fail_(__FILE__, __LINE__, "MPI_Allreduce/MPI_Bcast(agree)",
                         dpep_mpi_error_string(rc));
        dpep_comm_op_end(c, DPEP_ERR_MPI);
        return DPEP_ERR_MPI;
    }
    dpep_comm_op_end(c, DPEP_OK);
    if (n_failed) *n_failed = all[1];
    if (first_failed) *first_failed = all[1] > 0 ? all[0] : -1;
    if (all[1] == 0) return DPEP_OK;
    if (local != DPEP_OK) return local;
    return status_of_first != DPEP_OK ? (dpep_status)status_of_first : DPEP_ERR_INTERNAL;
}
