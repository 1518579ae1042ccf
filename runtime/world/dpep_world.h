/* dpep_world.h — public header of runtime/world: MPI start-up, placement
 * (hwloc), the communicators of the layout, the thread plan, the devices
 * (CUDA) and build facts. Everything above runtime/world (engine, sched,
 * serve, cli) reaches MPI and hwloc through this header. */
#ifndef DPEP_WORLD_H
#define DPEP_WORLD_H

#include <hwloc.h>
#include <mpi.h>

#include "dpep_comm.h"
#include "dpep_config.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Placement (world/placement.c): which cores a rank is bound to. A pure    */
/* function of (topology, ranks on the node, GPUs), tested on synthetic      */
/* hwloc topologies and saved XML.                                           */
/* ------------------------------------------------------------------------ */
/* Cpuset for local rank `local_rank` of `local_size` ranks on one node.
 *   gpu_numa[g]: logical index of the NUMA node nearest GPU g (-1: unknown);
 *   n_gpus: GPUs on the node (0: CPU only); rank i drives GPU i % n_gpus.
 *   mode: AUTO — with GPUs, the cores of the rank's GPU's NUMA node split
 *   evenly among the ranks sharing it; without, the node's cores split into
 *   local_size contiguous blocks (so ranks spread evenly over NUMA nodes);
 *   CORE — one core each; NUMA — the whole NUMA node; NONE — every PU.
 *   Oversubscribed ranks (more ranks than cores) share cores round-robin.
 * `out` is allocated by the caller (hwloc_bitmap_alloc) and overwritten. */
dpep_status dpep_placement_cpuset(hwloc_topology_t topo, int local_rank, int local_size,
                                  const int *gpu_numa, int n_gpus, dpep_bind mode,
                                  hwloc_bitmap_t out);
/* CORE picks the first core of the rank's AUTO block; one GPU of unknown
 * locality among those the node's ranks drive sends the whole node to the
 * no-GPU spread (so the sets stay disjoint). */

/* Logical NUMA index nearest each of the n_gpus CUDA devices (from their PCI
 * bus ids and hwloc's I/O tree); -1 where hwloc cannot tell. The topology must
 * be loaded with I/O objects kept (HWLOC_TYPE_FILTER_KEEP_IMPORTANT).
 * DPEP_ERR_NO_DEVICE when fewer than n_gpus devices are visible; gpu_numa is
 * written only on DPEP_OK. */
dpep_status dpep_placement_gpu_numa(hwloc_topology_t topo, int n_gpus, int *gpu_numa);
/* Logical NUMA index of the PCI device with bus id "dddd:bb:dd.f", -1 when
 * absent or ambiguous. */
int dpep_placement_busid_numa(hwloc_topology_t topo, const char *busid);
/* Binds the calling process per `mode`: NONE binds nothing; AUTO keeps a
 * binding the launcher already made (a strict subset of the machine; sets
 * *kept_existing), else binds to `set`; CORE and NUMA always bind to `set`.
 * A failed bind is a warning, not an error. `desc` receives the resulting
 * binding as a list ("0-3,8"), or "" when it cannot be read. */
dpep_status dpep_placement_apply(hwloc_topology_t topo, hwloc_const_bitmap_t set, dpep_bind mode,
                                 bool *kept_existing, char *desc, size_t desc_len);

/* ------------------------------------------------------------------------ */
/* World (world/world.c): MPI start-up, nodes, GPU choice, binding and the  */
/* communicators of the layout. Every communicator uses MPI_ERRORS_RETURN.   */
/* Every collective of the job that is not made through a dpep_comm of its   */
/* own (start-up, setup, placement, intake, results, finalize) is bracketed  */
/* on w->job (dpep_comm_watch_begin/end, dpep_comm_wait_all), so that the    */
/* watchdog names a rank that never arrives instead of the job hanging.      */
/* ------------------------------------------------------------------------ */
/* The job comm's timeout from dpep_world_init until dpep_world_setup applies
 * runtime.comm_timeout_s (the config is not read yet): the option's default. */
#define DPEP_WORLD_JOB_TIMEOUT_S 300.0
typedef struct dpep_world {
    int rank, size;           /* in MPI_COMM_WORLD                            */
    int local_rank, local_size; /* on this node (MPI_COMM_TYPE_SHARED)        */
    int node, n_nodes;        /* node index (ordered by lowest world rank)    */
    char host[64];
    int gpu;                  /* CUDA device of this rank, -1 on CPU          */
    char cpuset[128];         /* binding as a list string ("0-3"), or ""      */
    int numa;                 /* NUMA node of the binding, -1 if several/none */
    dpep_layout layout;
    dpep_rank_info me;
    /* Owned; MPI_COMM_NULL until dpep_world_setup. Members of each:
     *   world     all ranks                   node      ranks on my node
     *   instance  my model instance (tp)      attn_tp   my attention batch group
     *   attn_dp   same attn_tp_rank across the attention-DP groups of my instance
     *   ep        same moe_tp_rank, ep ranks  moe_tp    same ep_rank, moe_tp ranks
     *   dense     the dense-FFN group (myself, or the instance)                   */
    MPI_Comm world, node_comm, instance, attn_tp, attn_dp, ep, moe_tp, dense;
    /* The job's comm (owned; "job", over MPI_COMM_WORLD, MPI backend): made
     * by dpep_world_init, destroyed by dpep_world_finalize. Bracket plain MPI
     * collectives on any of the communicators above with it (every rank the
     * same calls in the same order); patient for waits one rank's work may
     * legitimately stretch (rank 0 reading the workload, the end of a run). */
    dpep_comm *job;
    bool mpi_owned;           /* dpep_world_init called MPI_Init_thread       */
} dpep_world;

/* MPI_Init_thread(MPI_THREAD_MULTIPLE) unless MPI is up; sets the log rank;
 * creates w->job (collective over MPI_COMM_WORLD; timeout
 * DPEP_WORLD_JOB_TIMEOUT_S). Fault point "startup" (dpep_fault) once it
 * exists. */
dpep_status dpep_world_init(int *argc, char ***argv, dpep_world *w);
/* Sets w->job's timeout to runtime.comm_timeout_s, checks the world and
 * node counts against the config (errors name the config line), picks the
 * GPU, binds per runtime.bind and splits the communicators. Collective over
 * MPI_COMM_WORLD, every call under the watchdog (the GPU choice and the
 * binding are waited for patiently, then agreed: a rank that fails either
 * makes every rank fail). Fault point "setup" before the splits. */
dpep_status dpep_world_setup(dpep_world *w, const dpep_config *cfg, dpep_diag *diag);
/* Rank 0 prints rank, host, local rank, GPU, NUMA node, cpuset for all ranks.
 * Collective (watched: "placement"). */
dpep_status dpep_world_print_placement(const dpep_world *w, FILE *f);
/* The thread plan of this rank, applied once at start (after binding): one
 * pool, OpenMP's, of as many threads as the rank's cpuset has cores unless
 * OMP_NUM_THREADS says otherwise; BLAS at one thread (products split
 * themselves over the pool: runtime/linear). */
typedef struct dpep_thread_plan {
    int omp, blas;
} dpep_thread_plan;
void dpep_world_thread_plan(const dpep_world *w, dpep_thread_plan *out);

/* Fault point "finalize"; a patient barrier ("finalize") on w->job, so that a
 * rank stopped or stuck before it is named rather than hanging MPI_Finalize;
 * frees the communicators and w->job; finalizes MPI if dpep_world_init
 * started it. Collective: every rank of the job calls it. */
void dpep_world_finalize(dpep_world *w);


/* ------------------------------------------------------------------------ */
/* Devices and build facts.                                                  */
/* ------------------------------------------------------------------------ */
/* Number of CUDA devices visible. DPEP_ERR_NO_DEVICE with a reason in `why`
 * (no CUDA in this build, no driver, no device) when there are none. */
dpep_status dpep_cuda_device_count(int *count, char *why, size_t why_len);
/* PCI bus id ("0000:3b:00.0") of CUDA device `dev`; DPEP_ERR_NO_DEVICE
 * without CUDA. */
dpep_status dpep_cuda_pci_bus_id(int dev, char *buf, size_t len);
/* Makes `dev` the current CUDA device of the calling thread. */
dpep_status dpep_cuda_set_device(int dev);
/* Free and total memory of CUDA device `dev` in bytes (cudaMemGetInfo; the
 * current device is restored); DPEP_ERR_NO_DEVICE without CUDA. */
dpep_status dpep_cuda_mem_info(int dev, size_t *free_bytes, size_t *total_bytes);
/* One line per fact (version, MPI library, hwloc, BLAS, CUDA, NCCL). */
void dpep_print_build_info(FILE *f);

#ifdef __cplusplus
}
#endif
#endif /* DPEP_WORLD_H */
