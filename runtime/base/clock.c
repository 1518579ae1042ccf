/* clock.c — the one monotonic clock of dpep (timings, progress, watchdog)
 * and the process's page-fault count beside it. */
#include "dpep_base.h"

#include <sys/resource.h>
#include <time.h>

double dpep_clock_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int64_t dpep_page_faults(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (int64_t)ru.ru_minflt + (int64_t)ru.ru_majflt;
}
