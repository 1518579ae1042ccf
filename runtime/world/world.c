/* world.c — MPI start-up, node discovery, GPU choice, CPU binding and the
 * communicators of the parallel layout (DESIGN.md). Every communicator made
 * here returns errors (MPI_ERRORS_RETURN) instead of aborting, and every
 * collective made here runs under the watchdog of the job's comm (w->job):
 * a rank that never arrives is named and the job ends instead of hanging. */
#include "dpep_world.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One plain MPI collective under the job comm's watchdog. Every rank
 * brackets the same calls in the same order (comm/dpep_comm.h); `op` names
 * the call in a timeout message. Patient: for waits that a rank's local work
 * (hwloc, CUDA start-up) may legitimately stretch. */
#define WATCHED_MPI(w, op, patient, call)                                             \
    do {                                                                              \
        dpep_comm_watch_begin((w)->job, op, patient);                                 \
        int watched_rc_ = (call);                                                     \
        dpep_comm_watch_end((w)->job);                                                \
        if (watched_rc_ != MPI_SUCCESS) {                                             \
            dpep_check_fail_(__FILE__, __LINE__, #call, dpep_mpi_error_string(watched_rc_)); \
            return DPEP_ERR_MPI;                                                      \
        }                                                                             \
    } while (0)

static void comm_null_all(dpep_world *w)
{
    w->world = w->node_comm = w->instance = w->attn_tp = w->attn_dp = MPI_COMM_NULL;
    w->ep = w->moe_tp = w->dense = MPI_COMM_NULL;
}

dpep_status dpep_world_init(int *argc, char ***argv, dpep_world *w)
{
    memset(w, 0, sizeof *w);
    comm_null_all(w);
    w->gpu = -1;
    w->numa = -1;
    int up = 0;
    MPI_Initialized(&up);
    if (!up) {
        int provided = 0;
        /* THREAD_MULTIPLE: comm/'s watchdog thread talks MPI while the main
         * thread sits in a collective. */
        int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
        if (rc != MPI_SUCCESS) {
            fprintf(stderr, "dpep: MPI_Init_thread failed (%d): is this an MPI launch?\n", rc);
            return DPEP_ERR_MPI;
        }
        w->mpi_owned = true;
        /* Below MPI_THREAD_MULTIPLE the job comm's creation warns that the
         * watchdog is off. */
        (void)provided;
    }
    DPEP_CHECK_MPI(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    DPEP_CHECK_MPI(MPI_Comm_rank(MPI_COMM_WORLD, &w->rank));
    DPEP_CHECK_MPI(MPI_Comm_size(MPI_COMM_WORLD, &w->size));
    dpep_log_set_rank(w->rank);
    if (gethostname(w->host, sizeof w->host) != 0) strcpy(w->host, "?");
    w->host[sizeof w->host - 1] = '\0';
    /* From here on every collective of the job is watched (until the config
     * gives runtime.comm_timeout_s, with the default). */
    DPEP_TRY(dpep_comm_create(MPI_COMM_WORLD, "job", DPEP_COMM_MPI, DPEP_WORLD_JOB_TIMEOUT_S,
                              &w->job));
    dpep_fault("startup", w->rank);
    return DPEP_OK;
}

/* Node index and count: nodes are the MPI_COMM_TYPE_SHARED groups, numbered
 * in the order of their lowest world rank (works under mpirun and srun). */
static dpep_status discover_nodes(dpep_world *w)
{
    WATCHED_MPI(w, "node_split", false,
                MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, w->rank, MPI_INFO_NULL,
                                    &w->node_comm));
    DPEP_CHECK_MPI(MPI_Comm_set_errhandler(w->node_comm, MPI_ERRORS_RETURN));
    DPEP_CHECK_MPI(MPI_Comm_rank(w->node_comm, &w->local_rank));
    DPEP_CHECK_MPI(MPI_Comm_size(w->node_comm, &w->local_size));
    int leader = w->rank; /* lowest world rank on my node */
    WATCHED_MPI(w, "node_leader", false,
                MPI_Allreduce(MPI_IN_PLACE, &leader, 1, MPI_INT, MPI_MIN, w->node_comm));
    int is_leader = leader == w->rank, before = 0;
    /* node index = number of leaders with a lower world rank than mine */
    int *flags = calloc((size_t)w->size, sizeof(int));
    if (!flags) return DPEP_ERR_NOMEM;
    dpep_status st = DPEP_OK;
    dpep_comm_watch_begin(w->job, "node_leaders", false);
    int rc = MPI_Allgather(&is_leader, 1, MPI_INT, flags, 1, MPI_INT, MPI_COMM_WORLD);
    dpep_comm_watch_end(w->job);
    DPEP_CHECK_MPI_GOTO(rc, st, out);
    w->n_nodes = 0;
    for (int r = 0; r < w->size; r++) {
        if (r < leader) before += flags[r];
        w->n_nodes += flags[r];
    }
    w->node = before;
out:
    free(flags);
    return st;
}

/* Splits `parent` by (color, key) under the watchdog (`op` names the group)
 * and sets MPI_ERRORS_RETURN. */
static dpep_status split(dpep_world *w, const char *op, MPI_Comm parent, int color, int key,
                         MPI_Comm *out)
{
    WATCHED_MPI(w, op, false, MPI_Comm_split(parent, color, key, out));
    DPEP_CHECK_MPI(MPI_Comm_set_errhandler(*out, MPI_ERRORS_RETURN));
    return DPEP_OK;
}

/* The GPU of this rank: local rank i drives visible device i / R, R =
 * runtime.ranks_per_gpu (1: one rank per GPU). runtime.device auto falls
 * back to the CPU (one line on rank 0) when this node has no usable GPU or
 * fewer GPUs than ranks / R; cuda fails, naming the rank, its host and
 * why. */
static dpep_status choose_gpu(dpep_world *w, const dpep_config *cfg, dpep_diag *diag)
{
    w->gpu = -1;
    if (cfg->runtime.device == DPEP_DEVICE_CPU) return DPEP_OK;
    const bool want_cuda = cfg->runtime.device == DPEP_DEVICE_CUDA;
    const int rpg = cfg->runtime.ranks_per_gpu > 1 ? (int)cfg->runtime.ranks_per_gpu : 1;
    const int need = (w->local_size + rpg - 1) / rpg, mine = w->local_rank / rpg;
    int n = 0;
    char why[256];
    char where[4300];
    dpep_status st = dpep_cuda_device_count(&n, why, sizeof why);
    if (st != DPEP_OK) {
        if (!want_cuda) {
            if (w->rank == 0) DPEP_INFO("runtime.device auto: CPU backend (%s)", why);
            return DPEP_OK;
        }
        dpep_config_where(cfg, dpep_config_option_find("runtime.device"), where, sizeof where);
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: runtime.device: cuda requested, but rank %d "
                      "(%s, local rank %d) has no GPU: %s", where, w->rank, w->host,
                      w->local_rank, why);
        return DPEP_ERR_NO_DEVICE;
    }
    if (need > n) {
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");
        if (!want_cuda) {
            /* auto must not turn a CPU job with more ranks than GPUs into a failure */
            if (w->rank == 0)
                DPEP_INFO("runtime.device auto: CPU backend (%s runs %d ranks but sees %d GPU%s; "
                          "the CUDA backend needs one GPU per %d rank%s: "
                          "runtime.ranks_per_gpu)", w->host, w->local_size, n,
                          n == 1 ? "" : "s", rpg, rpg == 1 ? "" : "s");
            return DPEP_OK;
        }
        /* Only the ranks past the last GPU say so (the others have theirs;
         * the job fails on the agreement in dpep_world_setup). A rank's own
         * device status, not DPEP_ERR_INVALID: the CLI prints every rank's
         * device errors but only rank 0's config errors, and rank 0 may be
         * on a node with GPUs enough. */
        if (mine >= n) {
            dpep_config_where(cfg, dpep_config_option_find("launch.gpus_per_node"), where,
                              sizeof where);
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: launch.gpus_per_node: rank %d (%s, local "
                          "rank %d) has no GPU of its own: %s runs %d ranks but sees %d GPU%s "
                          "(CUDA_VISIBLE_DEVICES=%s; expected one GPU per %d rank%s, "
                          "runtime.ranks_per_gpu)", where, w->rank, w->host, w->local_rank,
                          w->host, w->local_size, n, n == 1 ? "" : "s", vis ? vis : "unset", rpg,
                          rpg == 1 ? "" : "s");
            return DPEP_ERR_NO_DEVICE;
        }
    }
    st = dpep_cuda_set_device(mine);
    if (st != DPEP_OK) {
        /* e.g. a GPU in exclusive-process mode already taken, or a broken one */
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "rank %d (%s): runtime.device %s: cannot use GPU %d "
                      "(cudaSetDevice: %s; see the CUDA error logged above)", w->rank, w->host,
                      dpep_device_kind_name(cfg->runtime.device), mine,
                      dpep_status_string(st));
        return st;
    }
    w->gpu = mine;
    return DPEP_OK;
}

static dpep_status bind_rank(dpep_world *w, const dpep_config *cfg)
{
    w->cpuset[0] = '\0';
    w->numa = -1;
    hwloc_topology_t topo;
    if (hwloc_topology_init(&topo) != 0) return DPEP_ERR_NOMEM;
    /* I/O devices only when GPUs are used: their PCI locality picks the cores. */
    if (w->gpu >= 0)
        hwloc_topology_set_io_types_filter(topo, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    dpep_status st = DPEP_OK;
    if (hwloc_topology_load(topo) != 0) {
        DPEP_WARN("hwloc cannot read the topology of %s: ranks stay unbound", w->host);
        hwloc_topology_destroy(topo);
        return DPEP_OK;
    }
    int n_gpus = 0, gpu_numa[64];
    if (w->gpu >= 0) {
        char why[64];
        if (dpep_cuda_device_count(&n_gpus, why, sizeof why) == DPEP_OK) {
            if (n_gpus > 64) n_gpus = 64;
            if (dpep_placement_gpu_numa(topo, n_gpus, gpu_numa) != DPEP_OK) n_gpus = 0;
        }
        /* ranks sharing a GPU (runtime.ranks_per_gpu): local rank r drives
         * GPU r / R, so the placement sees one entry per local rank */
        const int rpg = cfg->runtime.ranks_per_gpu > 1 ? (int)cfg->runtime.ranks_per_gpu : 1;
        if (rpg > 1 && n_gpus > 0) {
            if (w->local_size <= 64) {
                int per_rank[64];
                for (int r = 0; r < w->local_size; r++)
                    per_rank[r] = r / rpg < n_gpus ? gpu_numa[r / rpg] : -1;
                memcpy(gpu_numa, per_rank, sizeof(int) * (size_t)w->local_size);
                n_gpus = w->local_size;
            } else {
                n_gpus = 0; /* the CPU-only spread */
            }
        }
    }
    hwloc_bitmap_t set = hwloc_bitmap_alloc();
    if (!set) {
        hwloc_topology_destroy(topo);
        return DPEP_ERR_NOMEM;
    }
    st = dpep_placement_cpuset(topo, w->local_rank, w->local_size, n_gpus ? gpu_numa : NULL,
                               n_gpus, cfg->runtime.bind, set);
    if (st == DPEP_OK) {
        bool kept = false;
        st = dpep_placement_apply(topo, set, cfg->runtime.bind, &kept, w->cpuset, sizeof w->cpuset);
        if (kept) DPEP_DEBUG("keeping the launcher's binding %s", w->cpuset);
        /* The NUMA node the binding lies in, if just one. */
        hwloc_bitmap_t cur = hwloc_bitmap_alloc();
        if (cur && hwloc_get_cpubind(topo, cur, HWLOC_CPUBIND_PROCESS) == 0) {
            int n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_NUMANODE);
            for (int i = 0; i < n; i++) {
                hwloc_obj_t nn = hwloc_get_obj_by_type(topo, HWLOC_OBJ_NUMANODE, i);
                if (hwloc_bitmap_isincluded(cur, nn->cpuset)) w->numa = (int)nn->logical_index;
            }
            char *s = NULL;
            if (!w->cpuset[0] && hwloc_bitmap_list_asprintf(&s, cur) >= 0) {
                snprintf(w->cpuset, sizeof w->cpuset, "%s", s);
                free(s);
            }
        }
        hwloc_bitmap_free(cur);
    }
    hwloc_bitmap_free(set);
    hwloc_topology_destroy(topo);
    return st;
}

/* A local step that one rank may take much longer than the others (CUDA
 * start-up, hwloc's topology load on a big node): the others wait for it
 * patiently, sleeping (no spinning in a collective), then every rank learns
 * whether all succeeded. Returns this rank's status if it failed, else the
 * lowest failed rank's. */
static dpep_status agree_after_slow_step(dpep_world *w, const char *op, dpep_status local)
{
    DPEP_TRY(dpep_comm_wait_all(w->job, op, NULL, NULL));
    return dpep_comm_agree(w->job, local, NULL, NULL);
}

dpep_status dpep_world_setup(dpep_world *w, const dpep_config *cfg, dpep_diag *diag)
{
    if (!w->job) {
        DPEP_ERROR("dpep_world_setup: the world has no job comm (call dpep_world_init first)");
        return DPEP_ERR_INTERNAL;
    }
    /* From here on a stall ends the job within the configured timeout. */
    dpep_comm_set_timeout(w->job, cfg->runtime.comm_timeout_s);
    WATCHED_MPI(w, "world_dup", false, MPI_Comm_dup(MPI_COMM_WORLD, &w->world));
    DPEP_CHECK_MPI(MPI_Comm_set_errhandler(w->world, MPI_ERRORS_RETURN));
    DPEP_TRY(discover_nodes(w));

    /* The job must be the one the config describes; every rank checks the
     * same facts, so every rank fails (and none waits) together. */
    char where[4300];
    if (w->n_nodes != cfg->launch.nodes) {
        dpep_config_where(cfg, dpep_config_option_find("launch.nodes"), where, sizeof where);
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: launch.nodes: the job runs on %d node%s but the "
                      "config says %lld (expected them equal)", where, w->n_nodes,
                      w->n_nodes == 1 ? "" : "s", (long long)cfg->launch.nodes);
        return DPEP_ERR_INVALID;
    }
    int counts_ok = w->local_size * w->n_nodes == w->size, all_ok = 0;
    WATCHED_MPI(w, "node_sizes", false,
                MPI_Allreduce(&counts_ok, &all_ok, 1, MPI_INT, MPI_MIN, w->world));
    if (!all_ok) {
        dpep_config_where(cfg, dpep_config_option_find("launch.nodes"), where, sizeof where);
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: launch.nodes: nodes run different numbers of "
                      "ranks (%s runs %d of %d; expected %d per node)", where, w->host,
                      w->local_size, w->size, w->size / w->n_nodes);
        return DPEP_ERR_INVALID;
    }
    DPEP_TRY(dpep_layout_from_config(cfg, w->size, &w->layout));
    dpep_layout_rank(&w->layout, w->rank, &w->me);
    int placed_ok = w->me.node == w->node && w->me.local_rank == w->local_rank;
    WATCHED_MPI(w, "rank_order", false,
                MPI_Allreduce(&placed_ok, &all_ok, 1, MPI_INT, MPI_MIN, w->world));
    if (!all_ok) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "launcher: ranks are not in node-contiguous blocks "
                      "(rank %d is on node %d, expected node %d); launch with --map-by "
                      "ppr:%d:node (mpirun) or --distribution=block (srun)", w->rank, w->node,
                      w->me.node, w->layout.ranks_per_node);
        return DPEP_ERR_INVALID;
    }

    /* A rank that fails either step still takes part in the agreement, so
     * no rank is left waiting in the splits below. */
    DPEP_TRY(agree_after_slow_step(w, "gpu_choice", choose_gpu(w, cfg, diag)));
    DPEP_TRY(agree_after_slow_step(w, "binding", bind_rank(w, cfg)));

    dpep_fault("setup", w->rank);

    /* The communicators (DESIGN.md): groups are keyed inside the instance. */
    const dpep_layout *l = &w->layout;
    const dpep_rank_info *me = &w->me;
    DPEP_TRY(split(w, "split_instance", w->world, me->instance, me->instance_rank,
                   &w->instance));
    DPEP_TRY(split(w, "split_attn_tp", w->world, me->instance * l->attn_dp + me->attn_dp_rank,
                   me->attn_tp_rank, &w->attn_tp));
    DPEP_TRY(split(w, "split_attn_dp", w->world, me->instance * l->attn_tp + me->attn_tp_rank,
                   me->attn_dp_rank, &w->attn_dp));
    DPEP_TRY(split(w, "split_ep", w->world, me->instance * l->moe_tp + me->moe_tp_rank,
                   me->ep_rank, &w->ep));
    DPEP_TRY(split(w, "split_moe_tp", w->world, me->instance * l->ep + me->ep_rank,
                   me->moe_tp_rank, &w->moe_tp));
    DPEP_TRY(split(w, "split_dense", w->world, l->dense_tp == 1 ? w->rank : me->instance,
                   me->instance_rank, &w->dense));
    return DPEP_OK;
}

typedef struct placement_rec {
    int rank, local_rank, gpu, numa;
    char host[64];
    char cpuset[128];
} placement_rec;

dpep_status dpep_world_print_placement(const dpep_world *w, FILE *f)
{
    placement_rec me = {w->rank, w->local_rank, w->gpu, w->numa, "", ""};
    memcpy(me.host, w->host, sizeof me.host);
    memcpy(me.cpuset, w->cpuset, sizeof me.cpuset);
    placement_rec *all = NULL;
    if (w->rank == 0) {
        all = calloc((size_t)w->size, sizeof *all);
        if (!all) return DPEP_ERR_NOMEM;
    }
    dpep_status st = DPEP_OK;
    MPI_Comm comm = w->world != MPI_COMM_NULL ? w->world : MPI_COMM_WORLD;
    dpep_comm_watch_begin(w->job, "placement", false);
    int rc = MPI_Gather(&me, (int)sizeof me, MPI_BYTE, all, (int)sizeof me, MPI_BYTE, 0, comm);
    dpep_comm_watch_end(w->job);
    DPEP_CHECK_MPI_GOTO(rc, st, out);
    if (w->rank == 0) {
        fprintf(f, "%6s  %-20s %5s %4s %4s  %s\n", "rank", "host", "local", "gpu", "numa",
                "cpuset");
        for (int r = 0; r < w->size; r++) {
            char gpu[16], numa[16];
            snprintf(gpu, sizeof gpu, "%d", all[r].gpu);
            snprintf(numa, sizeof numa, "%d", all[r].numa);
            fprintf(f, "%6d  %-20s %5d %4s %4s  %s\n", all[r].rank, all[r].host,
                    all[r].local_rank, all[r].gpu < 0 ? "cpu" : gpu,
                    all[r].numa < 0 ? "-" : numa, all[r].cpuset[0] ? all[r].cpuset : "unbound");
        }
        fflush(f);
    }
out:
    free(all);
    return st;
}

void dpep_world_finalize(dpep_world *w)
{
    dpep_fault("finalize", w->rank);
    /* Every rank meets here before anything is freed: a rank that never
     * comes (stopped, stuck) is named by the watchdog instead of hanging
     * MPI_Finalize. Patient: ranks legitimately finish their work at
     * different times. A failed barrier (MPI error, logged) still frees. */
    if (w->job) (void)dpep_comm_wait_all(w->job, "finalize", NULL, NULL);
    MPI_Comm *comms[] = {&w->dense, &w->moe_tp, &w->ep, &w->attn_dp, &w->attn_tp, &w->instance,
                         &w->node_comm, &w->world};
    for (size_t i = 0; i < sizeof comms / sizeof comms[0]; i++)
        if (*comms[i] != MPI_COMM_NULL) MPI_Comm_free(comms[i]);
    dpep_comm_destroy(w->job); /* before MPI_Finalize: its watchdog thread talks MPI */
    w->job = NULL;
    if (w->mpi_owned) {
        int fin = 0;
        MPI_Finalized(&fin);
        if (!fin) MPI_Finalize();
        w->mpi_owned = false;
    }
}
