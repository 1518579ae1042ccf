/* threads.c — the thread plan of a rank, chosen once at start: OpenMP and
 * BLAS threads from the rank's cpuset (OMP_NUM_THREADS / OPENBLAS_NUM_THREADS
 * win when set). Kernels never change it per call. */
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
#ifdef _OPENMP
    if (!getenv("OMP_NUM_THREADS") && cores > 0) omp_set_num_threads(cores);
    p.omp = omp_get_max_threads();
#endif
    /* BLAS gets the same count. With OpenBLAS's OpenMP build (what
     * scripts/setup.sh installs and CMake prefers) it follows OpenMP: all
     * the rank's threads outside parallel regions, the calling thread inside
     * them. With the pthread build attn/ pins it to one thread around its
     * parallel regions (attn/README.md). */
    if (!getenv("OPENBLAS_NUM_THREADS") && cores > 0) openblas_set_num_threads(cores);
    p.blas = cores > 0 ? cores : p.omp;
    *out = p;
}
