/* clock.c — the one monotonic clock of dpep (timings, progress, watchdog). */
#include "dpep_base.h"

#include <time.h>

double dpep_clock_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
