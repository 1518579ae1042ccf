/* test_comm_timeout.c — the watchdog ends a hung collective: the last rank
 * never joins an allreduce on comm "ep"; the others, with a 2 s timeout, must
 * log which ranks did not arrive and abort the job (checked by
 * test_comm_timeout.sh). Optional argument: "sub" runs it on a sub-communicator
 * (odd world ranks, comm "odd") instead of the world; "stop" makes the last
 * rank stop itself (SIGSTOP), so its watchdog cannot answer either; "shm"
 * hangs a node-shared memory fence instead (#1 is the segments' creation,
 * the last rank never enters fence #2); "shm-round" a split-phase round whose
 * waits the last rank never arrives for. */
#include "dpep_comm.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    int provided = 0, rank = 0, size = 1;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    dpep_log_init();
    dpep_log_set_rank(rank);
    bool sub = argc > 1 && strcmp(argv[1], "sub") == 0;
    bool stop = argc > 1 && strcmp(argv[1], "stop") == 0;
    bool shm = argc > 1 && strcmp(argv[1], "shm") == 0;
    bool round = argc > 1 && strcmp(argv[1], "shm-round") == 0;

    MPI_Comm parent = MPI_COMM_WORLD;
    if (sub) MPI_Comm_split(MPI_COMM_WORLD, rank % 2, rank, &parent);
    dpep_comm *c = NULL;
    if (dpep_comm_create(parent, sub ? (rank % 2 ? "odd" : "even") : "ep", DPEP_COMM_MPI, 2.0,
                         &c) != DPEP_OK)
        return 1;
    if (shm || round) {
        dpep_comm_shm *s = NULL;
        if (dpep_comm_shm_create(c, 4096, &s) != DPEP_OK) return 1;
        if (rank == size - 1) {
            printf("world rank %d: not joining %s #2\n", rank, shm ? "shm_fence" : "shm_round");
            fflush(stdout);
            sleep(60);
            return 0;
        }
        if (shm) {
            dpep_comm_shm_fence(s);
        } else {
            dpep_comm_shm_arrive(s);
            for (int p = 0; p < size; p++) dpep_comm_shm_wait(s, p);
        }
        printf("world rank %d: %s #2 returned: the watchdog did not fire\n", rank,
               shm ? "shm_fence" : "shm_round");
        return 3;
    }
    float x[4] = {1, 2, 3, 4};
    /* #1 completes everywhere, so the hang is #2 and the laggard is "at #1". */
    if (dpep_comm_allreduce(c, x, x, 4, DPEP_COMM_F32) != DPEP_OK) return 1;
    if (rank == size - 1) {
        printf("world rank %d: not joining allreduce #2\n", rank);
        fflush(stdout);
        if (stop) raise(SIGSTOP); /* MPI_Abort's SIGKILL still ends it */
        sleep(60); /* the job is aborted long before this ends */
        return 0;
    }
    if (sub && rank % 2 == 0) {
        /* Not on the hung comm: wait to be aborted with the rest (finalizing
         * here would race the abort and can crash Open MPI 4.1's mpiexec). */
        sleep(60);
        return 0;
    }
    dpep_comm_allreduce(c, x, x, 4, DPEP_COMM_F32);
    printf("world rank %d: allreduce #2 returned: the watchdog did not fire\n", rank);
    dpep_comm_destroy(c);
    MPI_Finalize();
    return 3;
}
