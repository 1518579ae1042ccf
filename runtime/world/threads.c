/* threads.c — the thread plan of a rank, chosen once at start: OpenMP
 * threads from the rank's cpuset (OMP_NUM_THREADS wins when set), BLAS at
 * one thread. Kernels never change it per call. */
#include "dpep_world.h"

#include <cblas.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif


static int cpuset_count(const char *list)
{
    if (!list || !*list) return 0;
    hwloc_bitmap_t b = hwloc_bitmap_alloc();
    int n = 0;
    if (b && hwloc_bitmap_list_sscanf(b, list) == 0) n = hwloc_bitmap_weight(b);
    hwloc_bitmap_free(b);
    return n;
}

void dpep_world_thread_plan(const dpep_world *w, dpep_thread_plan *out)
{
    int cores = cpuset_count(w->cpuset);
    dpep_thread_plan p = {.omp = 1, .blas = 1};
    /* One pool: every product splits itself over the OpenMP team
     * (runtime/linear) and calls BLAS on one thread's share, so BLAS never
     * runs threads of its own (with OpenBLAS's pthread build they would be
     * a second pool spinning against OpenMP's; its OpenMP build runs on the
     * calling thread inside a region anyway).
     *
     * Order matters: OpenBLAS's OpenMP build implements
     * openblas_set_num_threads(n) as omp_set_num_threads(n), so the team
     * is set again after it; otherwise every rank runs
     * its OpenMP team at one thread whatever its cpuset (it did, until
     * this was found in a profile with one core idle). */
#ifdef _OPENMP
    if (!getenv("OMP_NUM_THREADS") && cores > 0) omp_set_num_threads(cores);
    const int team = omp_get_max_threads();
    openblas_set_num_threads(1);
    omp_set_num_threads(team);
    p.omp = omp_get_max_threads();
#else
    openblas_set_num_threads(1);
#endif
    p.blas = 1;
    *out = p;
}
