/* mpi_lsan_shim.c — test-only LD_PRELOAD shim of sanitizer builds, so that
 * LeakSanitizer reports dpep's leaks and not the MPI stack's. It is preloaded
 * into every process of a test (bash, mpiexec and python too), so it is built
 * without sanitizers and finds LeakSanitizer's interface at run time.
 *
 * - MPI_Init, MPI_Init_thread and MPI_Finalize run with leak tracking off on
 *   the calling thread (__lsan_disable): what Open MPI allocates in them for
 *   itself and never frees is never dpep's, and its stacks cannot be told
 *   apart otherwise: Debian's libraries have no frame pointers, so ASan's
 *   fast unwinder often keeps only the frame below malloc (hwloc_bitmap_alloc,
 *   vasprintf), which dpep's own leaks show too.
 * - dlclose() leaves shared objects mapped: Open MPI and PMIx unload their
 *   plugins in MPI_Finalize, and what the plugins allocated would then lose
 *   its last pointer (the plugin's globals) and show as "<unknown module>",
 *   which no suppression can name. Kept mapped, it stays reachable, and what
 *   the plugins' threads leak keeps a module name for tests/lsan.supp. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>

typedef void (*lsan_toggle_fn)(void);

/* LeakSanitizer's __lsan_disable / __lsan_enable when the process has it. */
static void lsan_toggle(const char *name)
{
    lsan_toggle_fn f = (lsan_toggle_fn)dlsym(RTLD_DEFAULT, name);
    if (f) f();
}

/* The MPI library's entry behind this shim (PMPI_*: the profiling names). */
static void *next_fn(const char *name)
{
    return dlsym(RTLD_NEXT, name);
}

int MPI_Init(int *argc, char ***argv)
{
    int (*real)(int *, char ***) = (int (*)(int *, char ***))next_fn("PMPI_Init");
    if (!real) return 1; /* not MPI_SUCCESS: no MPI library in this process */
    lsan_toggle("__lsan_disable");
    int rc = real(argc, argv);
    lsan_toggle("__lsan_enable");
    return rc;
}

int MPI_Init_thread(int *argc, char ***argv, int required, int *provided)
{
    int (*real)(int *, char ***, int, int *) =
        (int (*)(int *, char ***, int, int *))next_fn("PMPI_Init_thread");
    if (!real) return 1;
    lsan_toggle("__lsan_disable");
    int rc = real(argc, argv, required, provided);
    lsan_toggle("__lsan_enable");
    return rc;
}

int MPI_Finalize(void)
{
    int (*real)(void) = (int (*)(void))next_fn("PMPI_Finalize");
    if (!real) return 1;
    lsan_toggle("__lsan_disable");
    int rc = real();
    lsan_toggle("__lsan_enable");
    return rc;
}

/* The process ends soon after: nothing is lost by never unmapping. */
int dlclose(void *handle)
{
    (void)handle;
    return 0;
}
