/* placement.c — which cores a rank is bound to: a pure function of (topology,
 * ranks on the node, GPUs) over hwloc, plus the helper that applies it.
 *
 * Indices. Every index this file takes or reasons with is an hwloc *logical*
 * index: gpu_numa[] holds logical NUMA indices, cores are enumerated and split
 * in logical order (depth-first, so the cores of one NUMA node are contiguous
 * and NUMA nodes follow each other). Only the output is in OS numbering: an
 * hwloc cpuset is a set of PU OS indices, which is what hwloc_set_cpubind and
 * the kernel take. On synthetic topologies the two numberings coincide; on
 * real machines (e.g. hyperthread siblings numbered c and c+N) they do not.
 *
 * Cores are the unit of placement: a rank gets whole cores, with all their
 * PUs (hyperthreads). A topology without Core objects uses PUs as cores. */
#include "dpep_world.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The object type placement hands out: Core, or PU where hwloc found none. */
static hwloc_obj_type_t unit_type(hwloc_topology_t topo)
{
    return hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE) > 0 ? HWLOC_OBJ_CORE
                                                                : HWLOC_OBJ_PU;
}

/* Number of placement units (cores) inside `pool`. */
static int units_in(hwloc_topology_t topo, hwloc_const_cpuset_t pool)
{
    return hwloc_get_nbobjs_inside_cpuset_by_type(topo, pool, unit_type(topo));
}

/* ORs into `out` the PUs of units [first, first+count) of `pool`, counted in
 * logical order among the units inside `pool`. */
static dpep_status add_units(hwloc_topology_t topo, hwloc_const_cpuset_t pool, int first,
                             int count, hwloc_bitmap_t out)
{
    hwloc_obj_type_t t = unit_type(topo);
    for (int i = first; i < first + count; i++) {
        hwloc_obj_t o = hwloc_get_obj_inside_cpuset_by_type(topo, pool, t, (unsigned)i);
        if (!o || !o->cpuset) return DPEP_ERR_INTERNAL;
        if (hwloc_bitmap_or(out, out, o->cpuset) < 0) return DPEP_ERR_NOMEM;
    }
    return DPEP_OK;
}

/* Rank `pos` of `k` ranks sharing `pool`: AUTO gives it block
 * [pos*C/k, (pos+1)*C/k) of the pool's C cores (contiguous, sizes differ by at
 * most one); CORE gives it the first core of that block, so CORE ⊆ AUTO and
 * single cores are spread across the pool. With more ranks than cores
 * (oversubscription) rank pos gets core pos % C in both modes. */
static dpep_status split_pool(hwloc_topology_t topo, hwloc_const_cpuset_t pool, int pos, int k,
                              dpep_bind mode, hwloc_bitmap_t out)
{
    int c = units_in(topo, pool);
    if (c <= 0 || k <= 0 || pos < 0 || pos >= k) return DPEP_ERR_INTERNAL;
    if (k > c) return add_units(topo, pool, pos % c, 1, out);
    int first = (int)((long long)pos * c / k);
    int end = (int)((long long)(pos + 1) * c / k);
    return add_units(topo, pool, first, mode == DPEP_BIND_CORE ? 1 : end - first, out);
}

/* NUMA node with logical index `idx`, if it has cores; NULL otherwise
 * (CPU-less memory such as HBM or CXL cannot host a rank). */
static hwloc_obj_t numa_with_cores(hwloc_topology_t topo, int idx)
{
    hwloc_obj_t n = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, (unsigned)idx);
    if (!n || !n->cpuset || units_in(topo, n->cpuset) <= 0) return NULL;
    return n;
}

dpep_status dpep_placement_cpuset(hwloc_topology_t topo, int local_rank, int local_size,
                                  const int *gpu_numa, int n_gpus, dpep_bind mode,
                                  hwloc_bitmap_t out)
{
    if (!topo || !out || local_size < 1 || local_rank < 0 || local_rank >= local_size ||
        n_gpus < 0 || (n_gpus > 0 && !gpu_numa))
        return DPEP_ERR_INVALID;
    if (mode != DPEP_BIND_AUTO && mode != DPEP_BIND_NONE && mode != DPEP_BIND_CORE &&
        mode != DPEP_BIND_NUMA)
        return DPEP_ERR_INVALID;
    int n_numa = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
    for (int g = 0; g < n_gpus; g++)
        if (gpu_numa[g] < -1 || gpu_numa[g] >= n_numa) return DPEP_ERR_INVALID;

    hwloc_const_cpuset_t all = hwloc_topology_get_topology_cpuset(topo);
    if (!all || units_in(topo, all) <= 0) return DPEP_ERR_INVALID;

    /* Build into a scratch bitmap so that `out` is written only on success. */
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (!set) return DPEP_ERR_NOMEM;
    dpep_status st = DPEP_OK;

    if (mode == DPEP_BIND_NONE) {
        if (hwloc_bitmap_copy(set, all) < 0) st = DPEP_ERR_NOMEM;
        goto done;
    }

    /* GPU placement needs the locality of every GPU some local rank drives;
     * if any is unknown (or CPU-less) all ranks fall back to the CPU-only
     * spread, so the node's sets stay disjoint. */
    bool by_gpu = n_gpus > 0;
    int used_gpus = n_gpus < local_size ? n_gpus : local_size;
    for (int g = 0; by_gpu && g < used_gpus; g++)
        if (gpu_numa[g] < 0 || !numa_with_cores(topo, gpu_numa[g])) by_gpu = false;

    if (by_gpu) {
        int my_numa = gpu_numa[local_rank % n_gpus];
        hwloc_obj_t numa = numa_with_cores(topo, my_numa);
        if (mode == DPEP_BIND_NUMA) {
            if (hwloc_bitmap_copy(set, numa->cpuset) < 0) st = DPEP_ERR_NOMEM;
            goto done;
        }
        /* The ranks whose GPUs sit on my NUMA node share its cores, in rank order. */
        int k = 0, pos = 0;
        for (int r = 0; r < local_size; r++) {
            if (gpu_numa[r % n_gpus] != my_numa) continue;
            if (r == local_rank) pos = k;
            k++;
        }
        st = split_pool(topo, numa->cpuset, pos, k, mode, set);
        goto done;
    }

    if (mode == DPEP_BIND_NUMA) {
        /* Round-robin over the NUMA nodes that have cores. */
        int n_cpu_numa = 0;
        for (int i = 0; i < n_numa; i++)
            if (numa_with_cores(topo, i)) n_cpu_numa++;
        if (n_cpu_numa == 0) {
            /* No NUMA information: the whole machine is the one "node". */
            if (hwloc_bitmap_copy(set, all) < 0) st = DPEP_ERR_NOMEM;
            goto done;
        }
        int want = local_rank % n_cpu_numa;
        for (int i = 0; i < n_numa; i++) {
            hwloc_obj_t n = numa_with_cores(topo, i);
            if (!n) continue;
            if (want-- == 0) {
                if (hwloc_bitmap_copy(set, n->cpuset) < 0) st = DPEP_ERR_NOMEM;
                break;
            }
        }
        goto done;
    }

    /* CPU only: the node's cores in local_size contiguous blocks. */
    st = split_pool(topo, all, local_rank, local_size, mode, set);

done:
    if (st == DPEP_OK && hwloc_bitmap_iszero(set)) st = DPEP_ERR_INTERNAL;
    if (st == DPEP_OK && hwloc_bitmap_copy(out, set) < 0) st = DPEP_ERR_NOMEM;
    hwloc_bitmap_free(set);
    return st;
}

/* Logical index of the NUMA node nearest the PCI device `busid`
 * ("0000:3b:00.0"; any case, 4 or 8 domain digits), or -1 when hwloc cannot
 * tell: the device is not in the topology (not loaded with I/O objects), or
 * its first non-I/O ancestor is local to no single NUMA node with cores (e.g.
 * the Machine, when the firmware gives no locality, or a Package holding
 * several NUMA nodes). */
int dpep_placement_busid_numa(hwloc_topology_t topo, const char *busid)
{
    if (!topo || !busid || !busid[0]) return -1;
    hwloc_obj_t pci = hwloc_get_pcidev_by_busidstring(topo, busid);
    if (!pci) return -1;
    hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(topo, pci);
    if (!anc || !anc->nodeset) return -1;
    /* The ancestor's nodeset names the NUMA nodes local to it; CPU-less ones
     * (HBM, CXL memory) sit beside a normal one and are ignored. */
    int found = -1, n_found = 0;
    int os;
    hwloc_bitmap_foreach_begin(os, anc->nodeset)
    {
        hwloc_obj_t n = hwloc_get_numanode_obj_by_os_index(topo, (unsigned)os);
        if (n && n->cpuset && !hwloc_bitmap_iszero(n->cpuset)) {
            found = (int)n->logical_index;
            n_found++;
        }
    }
    hwloc_bitmap_foreach_end();
    return n_found == 1 ? found : -1;
}

/* DPEP_ERR_NO_DEVICE when fewer than n_gpus CUDA devices are visible (none
 * in this build, no driver, no device). Requires a topology loaded with I/O
 * objects kept, e.g.
 *   hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT)
 * before hwloc_topology_load; otherwise every GPU reads -1. gpu_numa is
 * written only on DPEP_OK. */
dpep_status dpep_placement_gpu_numa(hwloc_topology_t topo, int n_gpus, int *gpu_numa)
{
    if (!topo || n_gpus < 0 || (n_gpus > 0 && !gpu_numa)) return DPEP_ERR_INVALID;
    if (n_gpus == 0) return DPEP_OK;
    /* Ask for the count first: a build with CUDA on a machine without a
     * usable driver answers DPEP_ERR_NO_DEVICE here, quietly. */
    int count = 0;
    char why[256] = "";
    if (dpep_cuda_device_count(&count, why, sizeof why) != DPEP_OK || count < n_gpus) {
        DPEP_DEBUG("placement: GPU locality of %d GPU(s) unavailable: %s", n_gpus,
                   count < n_gpus && count > 0 ? "fewer CUDA devices visible" : why);
        return DPEP_ERR_NO_DEVICE;
    }
    int *tmp = calloc((size_t)n_gpus, sizeof *tmp);
    if (!tmp) return DPEP_ERR_NOMEM;
    if (!hwloc_get_next_pcidev(topo, NULL))
        DPEP_DEBUG("placement: topology has no PCI devices (loaded without I/O "
                   "objects?); GPU locality unknown");
    for (int g = 0; g < n_gpus; g++) {
        char busid[32];
        dpep_status st = dpep_cuda_pci_bus_id(g, busid, sizeof busid);
        if (st != DPEP_OK) {
            free(tmp);
            return st;
        }
        tmp[g] = dpep_placement_busid_numa(topo, busid);
        DPEP_DEBUG("placement: GPU %d at %s -> NUMA L#%d", g, busid, tmp[g]);
    }
    memcpy(gpu_numa, tmp, (size_t)n_gpus * sizeof *tmp);
    free(tmp);
    return DPEP_OK;
}

/* Binds the calling process per `mode` (see the prototype at the top):
 *   NONE        binds nothing;
 *   AUTO        keeps an existing binding that is a strict subset of the
 *               topology's cpuset (set by mpirun/srun) and sets *kept_existing;
 *               otherwise binds to `set`;
 *   CORE, NUMA  bind to `set` (the config asked for it explicitly, so it wins
 *               over the launcher's binding).
 * Binding uses HWLOC_CPUBIND_PROCESS (all threads, MPI's and BLAS's included).
 * A failed bind is a logged warning and DPEP_OK: running unbound is slower,
 * never wrong. `desc` (may be NULL) receives the process's binding after the
 * call as a list string ("0-3,8"), or "" when it cannot be read; for NONE it
 * is the binding the process already had. */
dpep_status dpep_placement_apply(hwloc_topology_t topo, hwloc_const_bitmap_t set,
                                 dpep_bind mode, bool *kept_existing, char *desc,
                                 size_t desc_len)
{
    if (kept_existing) *kept_existing = false;
    if (desc && desc_len) desc[0] = '\0';
    if (!topo) return DPEP_ERR_INVALID;
    if (mode != DPEP_BIND_NONE && (!set || hwloc_bitmap_iszero(set))) return DPEP_ERR_INVALID;

    hwloc_bitmap_t cur = hwloc_bitmap_alloc();
    if (!cur) return DPEP_ERR_NOMEM;
    bool have_cur = hwloc_get_cpubind(topo, cur, HWLOC_CPUBIND_PROCESS) == 0;

    if (mode == DPEP_BIND_AUTO && have_cur) {
        hwloc_const_cpuset_t all = hwloc_topology_get_topology_cpuset(topo);
        hwloc_bitmap_t mine = hwloc_bitmap_alloc();
        if (!mine) {
            hwloc_bitmap_free(cur);
            return DPEP_ERR_NOMEM;
        }
        hwloc_bitmap_and(mine, cur, all);
        bool launcher_bound = !hwloc_bitmap_iszero(mine) && !hwloc_bitmap_isequal(mine, all);
        hwloc_bitmap_free(mine);
        if (launcher_bound) {
            if (kept_existing) *kept_existing = true;
            mode = DPEP_BIND_NONE;
        }
    }

    if (mode != DPEP_BIND_NONE) {
        if (hwloc_set_cpubind(topo, set, HWLOC_CPUBIND_PROCESS) != 0) {
            char *want = NULL;
            hwloc_bitmap_list_asprintf(&want, set);
            DPEP_WARN("placement: binding to cpuset %s failed (%s); running unbound",
                      want ? want : "?", strerror(errno));
            free(want);
        }
        have_cur = hwloc_get_cpubind(topo, cur, HWLOC_CPUBIND_PROCESS) == 0;
    }
    if (desc && desc_len && have_cur) hwloc_bitmap_list_snprintf(desc, desc_len, cur);
    hwloc_bitmap_free(cur);
    return DPEP_OK;
}
