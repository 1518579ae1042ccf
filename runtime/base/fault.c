/* fault.c — fault injection for tests: DPEP_FAULT names points of a run
 * where a rank stops, dies or signals itself, so that the tests of hangs
 * and lost work hit the same phase every time instead of racing a timer.
 *
 *   DPEP_FAULT="POINT@RANK=ACTION[,POINT@RANK=ACTION...]"
 *     POINT   a name the code passes to dpep_fault ("startup", "intake",
 *             "step:5", "results", "finalize", "gen", ...)
 *     RANK    a world rank, or * for every rank
 *     ACTION  stop (SIGSTOP), kill (SIGKILL), term (SIGTERM), int (SIGINT),
 *             exit (_exit(1) without finalizing MPI), sleep:MS (wait MS
 *             milliseconds, silently: with the point "step", reached after
 *             every step, it slows a run down so that a test's signal lands
 *             mid-run however fast the engine is)
 * Unset (every production run) it costs one getenv at the first call. */
#include "dpep_base.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *fault_spec(void)
{
    static const char *spec;
    static bool read;
    if (!read) {
        spec = getenv("DPEP_FAULT");
        read = true;
    }
    return spec && *spec ? spec : NULL;
}

bool dpep_fault_armed(void)
{
    return fault_spec() != NULL;
}

void dpep_fault(const char *point, int rank)
{
    const char *s = fault_spec();
    if (!s) return;
    const size_t plen = strlen(point);
    while (*s) {
        const char *end = strchr(s, ',');
        const size_t len = end ? (size_t)(end - s) : strlen(s);
        const char *at = memchr(s, '@', len), *eq = memchr(s, '=', len);
        if (at && eq && eq > at && (size_t)(at - s) == plen && memcmp(s, point, plen) == 0) {
            const bool any = at[1] == '*';
            const int r = any ? -1 : atoi(at + 1);
            if (any || r == rank) {
                const char *act = eq + 1;
                const size_t alen = len - (size_t)(act - s);
                if (alen > 6 && memcmp(act, "sleep:", 6) == 0) {
                    const long ms = strtol(act + 6, NULL, 10);
                    if (ms > 0) usleep((useconds_t)(ms > 60000 ? 60000 : ms) * 1000u);
                    goto next;
                }
                fprintf(stderr, "dpep: DPEP_FAULT: rank %d at %s: %.*s\n", rank, point, (int)alen, act);
                fflush(stderr);
                fflush(stdout);
                if (alen == 4 && memcmp(act, "stop", 4) == 0) raise(SIGSTOP);
                else if (alen == 4 && memcmp(act, "kill", 4) == 0) raise(SIGKILL);
                else if (alen == 4 && memcmp(act, "term", 4) == 0) raise(SIGTERM);
                else if (alen == 3 && memcmp(act, "int", 3) == 0) raise(SIGINT);
                else if (alen == 4 && memcmp(act, "exit", 4) == 0) _exit(1);
            }
        }
    next:
        if (!end) break;
        s = end + 1;
    }
}
