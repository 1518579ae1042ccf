/* engine_spin.h — private to runtime/engine: what the DP assist (assist.c)
 * and the expert pool (expert_pool.c) both use while they wait on a
 * node-shared word or split a job over their OpenMP team. */
#ifndef DPEP_ENGINE_SPIN_H
#define DPEP_ENGINE_SPIN_H

#ifdef _OPENMP
#include <omp.h>
#endif

/* One spin-wait step: a pause, so the sibling hyper-thread runs. */
static inline void engine_cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* Threads this rank can put on a job here: its OpenMP team outside a
 * parallel region, 1 inside one. */
static inline int engine_team(void)
{
#ifdef _OPENMP
    return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
}

#endif
