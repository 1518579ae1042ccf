/* comm_dshm.c — device-shared segments (dpep_comm_dshm): every rank of a
 * comm on one node owns a segment of its device's memory that the peers'
 * kernels read and write as their own. On a GPU: cudaMalloc'd, exported
 * with CUDA IPC and mapped into every peer (ipc_cuda.cu); the fence waits
 * for this process's queued device work, then an MPI barrier. On the CPU:
 * node-shared memory (comm_shm.c) and its fence, so that what runs on GPUs
 * runs in CPU CI too. Create and destroy are collective and agreed: every
 * rank gets the same answer. */
#include "comm_internal.h"

#include <stdlib.h>
#include <string.h>

struct dpep_comm_dshm {
    dpep_comm *c;           /* not owned                                     */
    dpep_device_kind kind;  /* CPU: shm below; CUDA: the mapped segments     */
    int ordinal;
    dpep_comm_shm *shm;     /* CPU: owned                                    */
    void **base;            /* CUDA: [size] each rank's segment, mapped here  */
    void *mine;             /* CUDA: this rank's (owned)                     */
};

/* Sum over the comm (host values), outside the watchdog's op bracket. */
static dpep_status allsum(dpep_comm *c, int64_t *v, int n)
{
    DPEP_CHECK_MPI(MPI_Allreduce(MPI_IN_PLACE, v, n, MPI_INT64_T, MPI_SUM, c->comm));
    return DPEP_OK;
}

#ifdef DPEP_HAVE_CUDA
static void unmap_all(dpep_comm_dshm *s)
{
    for (int p = 0; s->base && p < s->c->size; p++)
        if (s->base[p] && s->base[p] != s->mine) dpep_ipc_close(s->base[p]);
    dpep_ipc_free(s->mine);
    s->mine = NULL;
}

/* Collective: segments, handles, mapping; agreed at each stage. */
static dpep_status create_cuda(dpep_comm_dshm *s, size_t bytes)
{
    dpep_comm *c = s->c;
    const int n = c->size;
    dpep_status st = DPEP_OK;
    unsigned char mine_h[DPEP_IPC_HANDLE_BYTES];
    unsigned char *all = calloc((size_t)n, DPEP_IPC_HANDLE_BYTES);
    s->base = calloc((size_t)n, sizeof *s->base);
    int64_t bad = !all || !s->base;
    if (!bad) bad = dpep_ipc_alloc(s->ordinal, bytes, &s->mine, mine_h) != DPEP_OK;
    DPEP_TRY_GOTO(allsum(c, &bad, 1), st, out);
    if (bad) {
        if (c->rank == 0)
            DPEP_WARN("comm \"%s\": %lld rank(s) could not allocate or export a %zu-byte device "
                      "segment (CUDA IPC)", c->name, (long long)bad, bytes);
        st = DPEP_ERR_NOMEM;
        goto out;
    }
    DPEP_CHECK_MPI_GOTO(MPI_Allgather(mine_h, DPEP_IPC_HANDLE_BYTES, MPI_BYTE, all,
                                      DPEP_IPC_HANDLE_BYTES, MPI_BYTE, c->comm),
                        st, out);
    for (int p = 0; p < n && !bad; p++) {
        if (p == c->rank) s->base[p] = s->mine;
        else bad = dpep_ipc_open(s->ordinal, all + (size_t)p * DPEP_IPC_HANDLE_BYTES,
                                 &s->base[p]) != DPEP_OK;
    }
    DPEP_TRY_GOTO(allsum(c, &bad, 1), st, out);
    if (bad) {
        if (c->rank == 0)
            DPEP_WARN("comm \"%s\": %lld rank(s) could not map a peer's device segment (CUDA IPC "
                      "needs the peers' GPUs to allow peer access: NVLink, or PCIe P2P)", c->name,
                      (long long)bad);
        st = DPEP_ERR_UNSUPPORTED;
        goto out;
    }
    /* every segment zeroed before anyone writes */
    bad = dpep_ipc_sync() != DPEP_OK;
    DPEP_TRY_GOTO(allsum(c, &bad, 1), st, out);
    if (bad) st = DPEP_ERR_CUDA;
out:
    free(all);
    if (st != DPEP_OK) unmap_all(s);
    return st;
}
#endif

dpep_status dpep_comm_dshm_create(dpep_comm *c, const dpep_device *dev, size_t bytes,
                                  dpep_comm_dshm **out)
{
    static const char op[] = "dshm_create";
    if (!c || !dev || !out) {
        DPEP_ERROR("dpep_comm_dshm_create: NULL argument");
        return DPEP_ERR_INVALID;
    }
    if (!c->ops->host_memory) {
        DPEP_ERROR("comm \"%s\": device-shared segments are set up over an MPI comm", c->name);
        return DPEP_ERR_UNSUPPORTED;
    }
    dpep_comm_dshm *s = calloc(1, sizeof *s);
    int64_t v[2] = {s == NULL, 0};
    if (s) {
        s->c = c;
        s->kind = dev->kind;
        s->ordinal = dev->ordinal;
    }
    if (dev->kind == DPEP_DEVICE_CPU) {
        /* collective itself, agreed; a rank without its struct still joins */
        dpep_comm_shm *shm = NULL;
        dpep_status st = dpep_comm_shm_create(c, bytes, &shm);
        if (st == DPEP_OK && !s) {
            dpep_comm_shm_destroy(shm); /* collective: every rank is here */
            st = DPEP_ERR_NOMEM;
        }
        if (st != DPEP_OK) {
            free(s);
            return st;
        }
        s->shm = shm;
        *out = s;
        return DPEP_OK;
    }
    dpep_comm_op_begin(c, op);
    dpep_status st = DPEP_OK;
    /* every rank on one node? */
    MPI_Comm node = MPI_COMM_NULL;
    int node_size = 0;
    DPEP_CHECK_MPI_GOTO(MPI_Comm_split_type(c->comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node),
                        st, done);
    MPI_Comm_size(node, &node_size);
    MPI_Comm_free(&node);
    v[1] = node_size != c->size;
    DPEP_TRY_GOTO(allsum(c, v, 2), st, done);
    if (v[1]) {
        st = DPEP_ERR_UNSUPPORTED; /* spans nodes */
        goto done;
    }
    if (v[0]) {
        st = DPEP_ERR_NOMEM;
        goto done;
    }
#ifdef DPEP_HAVE_CUDA
    if (dev->kind == DPEP_DEVICE_CUDA) {
        st = create_cuda(s, bytes);
        goto done;
    }
#endif
    if (c->rank == 0)
        DPEP_ERROR("comm \"%s\": no device-shared segments for device %s in this build", c->name,
                   dpep_device_kind_name(dev->kind));
    st = DPEP_ERR_UNSUPPORTED;
done:
    dpep_comm_op_end(c, st);
    if (st != DPEP_OK) {
        if (s) free(s->base);
        free(s);
        return st;
    }
    *out = s;
    return DPEP_OK;
}

void dpep_comm_dshm_destroy(dpep_comm_dshm *s)
{
    if (!s) return;
    if (s->shm) {
        dpep_comm_shm_destroy(s->shm);
    } else {
#ifdef DPEP_HAVE_CUDA
        /* nobody reads a segment any more before it goes */
        dpep_comm_op_begin(s->c, "dshm_free");
        (void)dpep_ipc_sync();
        (void)MPI_Barrier(s->c->comm);
        dpep_comm_op_end(s->c, DPEP_OK);
        unmap_all(s);
#endif
    }
    free(s->base);
    free(s);
}

void *dpep_comm_dshm_ptr(const dpep_comm_dshm *s, int peer)
{
    if (!s || peer < 0 || peer >= s->c->size) return NULL;
    if (s->shm) return dpep_comm_shm_ptr(s->shm, peer);
    return s->base ? s->base[peer] : NULL;
}

const char *dpep_comm_dshm_kind(const dpep_comm_dshm *s)
{
    return !s ? "?" : s->shm ? "node-shared host memory" : "CUDA IPC";
}

dpep_status dpep_comm_dshm_fence(dpep_comm_dshm *s)
{
    if (s->shm) return dpep_comm_shm_fence(s->shm);
    dpep_comm *c = s->c;
    dpep_comm_op_begin(c, "dshm_fence");
    dpep_status st = DPEP_OK;
#ifdef DPEP_HAVE_CUDA
    st = dpep_ipc_sync();
#endif
    /* a rank whose device failed still joins the barrier: nobody hangs */
    int rc = MPI_Barrier(c->comm);
    if (st == DPEP_OK && rc != MPI_SUCCESS) {
        DPEP_ERROR("comm \"%s\": dshm fence: MPI_Barrier failed (%d)", c->name, rc);
        st = DPEP_ERR_MPI;
    }
    return dpep_comm_op_end(c, st);
}
