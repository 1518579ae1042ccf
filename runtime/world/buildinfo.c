/* buildinfo.c — `dpep info`: version, libraries this build uses, devices. */
#include "dpep_world.h"

#include <cblas.h>
#include <hwloc.h>
#include <mpi.h>
#include <string.h>
#include <yaml.h>
#include <jansson.h>

#ifndef DPEP_VERSION
#define DPEP_VERSION "unknown"
#endif

void dpep_print_build_info(FILE *f)
{
    char mpi[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    /* Allowed before MPI_Init. */
    if (MPI_Get_library_version(mpi, &len) != MPI_SUCCESS) snprintf(mpi, sizeof mpi, "unknown");
    char *nl = strchr(mpi, '\n');
    if (nl) *nl = '\0';
    char *comma = strchr(mpi, ',');
    if (comma) *comma = '\0';
    unsigned hw = hwloc_get_api_version();
    fprintf(f, "dpep %s\n", DPEP_VERSION);
    fprintf(f, "  MPI:     %s (MPI %d.%d)\n", mpi, MPI_VERSION, MPI_SUBVERSION);
    fprintf(f, "  hwloc:   %u.%u.%u\n", hw >> 16, (hw >> 8) & 0xff, hw & 0xff);
    fprintf(f, "  libyaml: %s\n", yaml_get_version_string());
    fprintf(f, "  jansson: %s\n", jansson_version_str());
    fprintf(f, "  BLAS:    %s\n", openblas_get_config());
#ifdef DPEP_HAVE_CUDA
    fprintf(f, "  CUDA:    built (toolkit %s, architectures %s), NCCL %s\n", DPEP_CUDA_VERSION,
            DPEP_CUDA_ARCHS, DPEP_NCCL_VERSION);
#else
    fprintf(f, "  CUDA:    not built\n");
#endif
    int n = 0;
    char why[256];
    if (dpep_cuda_device_count(&n, why, sizeof why) == DPEP_OK)
        fprintf(f, "  GPUs:    %d visible\n", n);
    else
        fprintf(f, "  GPUs:    none (%s)\n", why);
}
