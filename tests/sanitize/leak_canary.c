/* leak_canary.c — proof that LeakSanitizer still reports dpep's own leaks
 * under the tests' suppressions and MPI shim (built only in ASan builds).
 * Each rank brings MPI up and down through dpep_world, whose library-internal
 * leaks are hidden, and drops two blocks of its own: one from malloc, one from
 * a library dpep calls (an hwloc bitmap, which Open MPI's init also leaks: a
 * suppression by hwloc's function would hide dpep's too).
 * check_leak_canary.sh passes only when every rank reports both, and nothing
 * else. */
#include <hwloc.h>
#include <stdlib.h>
#include <string.h>

#include "dpep_world.h"

/* A size no library allocates by chance, so the report is unmistakable. */
#define CANARY_BYTES 4242

/* volatile: the compiler may not prove the blocks dead and drop the calls. */
static void *volatile g_canary;
static hwloc_bitmap_t volatile g_canary_set;

/* noinline: the reports' stacks must show these frames (ASan's fast unwinder
 * skips the caller of a library function built without frame pointers, so
 * the bitmap is made one call further down). */
__attribute__((noinline)) static void dpep_leak_canary_bitmap(void)
{
    g_canary_set = hwloc_bitmap_alloc();
    if (g_canary_set) hwloc_bitmap_set(g_canary_set, 3);
}

__attribute__((noinline)) static void dpep_leak_canary_drop(void)
{
    g_canary = malloc(CANARY_BYTES);
    if (g_canary) memset(g_canary, 0x5a, CANARY_BYTES);
    dpep_leak_canary_bitmap();
    g_canary = NULL; /* the only pointers are gone: direct leaks */
    g_canary_set = NULL;
}

int main(int argc, char **argv)
{
    dpep_world w;
    if (dpep_world_init(&argc, &argv, &w) != DPEP_OK) return 1;
    dpep_leak_canary_drop();
    dpep_world_finalize(&w);
    return 0;
}
