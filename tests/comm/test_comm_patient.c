/* test_comm_patient.c — patient waits under the watchdog (comm "patient",
 * timeout 1 s). Modes (argv[1]):
 *   slow          rank 1 sleeps 3.5 s (3.5 timeouts) before entering
 *                 dpep_comm_wait_all; the others wait there, polling. The
 *                 job must complete (exit 0): rank 1 answers the watchdog.
 *   slow-bracket  every rank enters a patient dpep_comm_watch_begin bracket,
 *                 rank 1 sleeps 3.5 s inside it before the MPI_Barrier: all
 *                 have "arrived" and all answer, so it completes too.
 *   stop          rank 1 stops itself (SIGSTOP) instead of entering wait_all:
 *                 its watchdog cannot answer, so the job ends naming it.
 *   stop-bracket  rank 1 stops inside the patient bracket: same verdict.
 *   mismatch      rank 1 enters a patient bracket "test_bracket" around an
 *                 MPI_Barrier on MPI_COMM_WORLD while the others wait_all
 *                 ("test_wait"): both are #2 and everyone answers, but the
 *                 calls never match, so the job must end saying so instead
 *                 of waiting forever.
 *   stop-create   rank 1 stops instead of creating a third comm over the
 *                 world: the others' creation (MPI_Comm_dup, collective) is
 *                 watched on the newest comm over the same ranks ("patient",
 *                 op comm_create #2) and the job ends naming rank 1.
 * Each mode first runs a strict allreduce (#1) and, where the job goes on,
 * a strict allreduce after the patient op, so a patient op must leave no
 * state behind that confuses the watchdog about a strict one. A second comm
 * over the same ranks ("other", strict, created first) is used after it:
 * its queries and the patient op's never mix.
 * test_comm_patient.sh (stop modes: test_comm_timeout.sh) checks the output. */
#include "dpep_comm.h"
#include "dpep_test.h"

#include <signal.h>
#include <string.h>
#include <unistd.h>

static int g_polls;
static void count_poll(void *user)
{
    (void)user;
    g_polls++;
}

int main(int argc, char **argv)
{
    int provided = 0, rank = 0, size = 1;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    dpep_log_init();
    dpep_log_set_rank(rank);
    const char *mode = argc > 1 ? argv[1] : "slow";
    const bool mismatch = strcmp(mode, "mismatch") == 0;
    const bool bracket = strstr(mode, "bracket") != NULL || (mismatch && rank == 1);
    const bool stop = strncmp(mode, "stop", 4) == 0 || mismatch;
    const double timeout = 1.0;
    const unsigned slow_us = 3500000; /* 3.5 timeouts */

    dpep_comm *c = NULL, *other = NULL;
    /* "other" first: the creation of "patient" (same ranks) is watched on it. */
    if (dpep_comm_create(MPI_COMM_WORLD, "other", DPEP_COMM_MPI, timeout, &other) != DPEP_OK ||
        dpep_comm_create(MPI_COMM_WORLD, "patient", DPEP_COMM_MPI, timeout, &c) != DPEP_OK)
        return 1;
    int x = 1, sum = 0;
    EXPECT(dpep_comm_allreduce(c, &x, &sum, 1, DPEP_COMM_I32) == DPEP_OK && sum == size,
           "allreduce #1: sum %d, expected %d", sum, size);

    dpep_status st = DPEP_OK;
    if (strcmp(mode, "stop-create") == 0) {
        dpep_comm *third = NULL;
        if (rank == 1) {
            printf("world rank 1: stopping before comm_create #2\n");
            fflush(stdout);
            raise(SIGSTOP);
        }
        dpep_comm_create(MPI_COMM_WORLD, "third", DPEP_COMM_MPI, timeout, &third);
        printf("world rank %d: comm_create returned: the watchdog did not fire\n", rank);
        fflush(stdout);
        sleep(60);
        return 3;
    }
    if (!bracket) {
        if (rank == 1 && !mismatch) {
            printf("world rank 1: %s before test_wait #2\n", stop ? "stopping" : "sleeping 3.5 s");
            fflush(stdout);
            if (stop) raise(SIGSTOP); /* MPI_Abort's SIGKILL ends it */
            usleep(slow_us);
        }
        st = dpep_comm_wait_all(c, "test_wait", count_poll, NULL);
        EXPECT(st == DPEP_OK, "wait_all -> %s", dpep_status_string(st));
        if (rank != 1)
            EXPECT(g_polls > 100, "poll called %d times while waiting 3.5 s (2 ms sleeps)",
                   g_polls);
    } else {
        dpep_comm_watch_begin(c, "test_bracket", true);
        if (rank == 1 && !mismatch) {
            printf("world rank 1: %s inside test_bracket #2\n",
                   stop ? "stopping" : "sleeping 3.5 s");
            fflush(stdout);
            if (stop) raise(SIGSTOP);
            usleep(slow_us);
        }
        EXPECT(MPI_Barrier(mismatch ? MPI_COMM_WORLD : dpep_comm_mpi(c)) == MPI_SUCCESS,
               "MPI_Barrier in the bracket");
        dpep_comm_watch_end(c);
    }
    if (stop) {
        printf("world rank %d: the patient op returned: the watchdog did not fire\n", rank);
        fflush(stdout);
        sleep(60);
        return 3;
    }
    /* Strict again on both comms: a fast op must pass, and the patient op's
     * restarted clock must not linger. */
    sum = 0;
    EXPECT(dpep_comm_allreduce(c, &x, &sum, 1, DPEP_COMM_I32) == DPEP_OK && sum == size,
           "allreduce #3: sum %d", sum);
    sum = 0;
    EXPECT(dpep_comm_allreduce(other, &x, &sum, 1, DPEP_COMM_I32) == DPEP_OK && sum == size,
           "allreduce on \"other\": sum %d", sum);
    EXPECT(dpep_comm_seq(c) == 3, "seq %llu, expected 3", (unsigned long long)dpep_comm_seq(c));
    dpep_comm_destroy(other);
    dpep_comm_destroy(c);
    int rc = dpep_test_summary();
    MPI_Finalize();
    return rc;
}
