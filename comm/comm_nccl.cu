/* comm_nccl.cu — the NCCL backend of dpep_comm (device memory), the ops table
 * dpep_comm_nccl_ops (compiled only with CUDA): the unique id travels over the
 * MPI communicator, all-to-all-v is grouped send/recv, the rest map to NCCL
 * collectives on one stream per comm. Synchronous: each call polls its stream
 * until done, so the watchdog can ask it to ncclCommAbort. The state (struct
 * dpep_nccl) is dpep_comm_backend_state(c). */
#include "comm_internal.h"

#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>
#include <nccl.h>

typedef struct dpep_nccl {
    ncclComm_t comm;
    cudaStream_t stream;
    int rank, size;
    char name[64];
    float *barrier_buf; /* (1) device scratch for the barrier's all-reduce */
    cudaEvent_t ready;  /* the caller's default-stream work, recorded per call */
    /* The watchdog's abort against the calling thread (atomic builtins):
     * in_op and abort_req are a Dekker pair (each side stores its flag, then
     * loads the other's, sequentially consistent), so either the caller
     * sees the request before it touches the communicator or the watchdog
     * sees the call and leaves the abort to its poll; abort_claim makes
     * ncclCommAbort run once, whichever thread gets there. */
    int in_op;          /* 1 while a call uses the communicator               */
    int abort_req;      /* set by the watchdog                                */
    int abort_claim;    /* a thread took the abort (compare-and-swap)         */
    int aborted;        /* ncclCommAbort done                                 */
} dpep_nccl;

static dpep_nccl *state_(dpep_comm *c) { return (dpep_nccl *)dpep_comm_backend_state(c); }

static ncclDataType_t nccl_type(dpep_comm_dtype t)
{
    switch (t) {
    case DPEP_COMM_U8: return ncclUint8;
    case DPEP_COMM_I32: return ncclInt32;
    case DPEP_COMM_I64: return ncclInt64;
    case DPEP_COMM_F32: return ncclFloat32;
    case DPEP_COMM_BF16: return ncclBfloat16;
    case DPEP_COMM_F16: return ncclFloat16;
    }
    return ncclUint8;
}

static int load_(const int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static void store_(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

static int load_sc_(const int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static void store_sc_(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }

/* ncclCommAbort once, by whichever thread claims it first; a thread that
 * loses the claim returns at once (aborted tells when it is done). */
static void do_abort(dpep_nccl *n)
{
    int free_ = 0;
    if (__atomic_compare_exchange_n(&n->abort_claim, &free_, 1, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST)) {
        ncclCommAbort(n->comm);
        store_(&n->aborted, 1);
    }
}

/* Polls the stream until the enqueued work is done, NCCL reports an async
 * error, or the watchdog asks for an abort. */
static dpep_status sync_(dpep_nccl *n)
{
    for (;;) {
        cudaError_t e = cudaStreamQuery(n->stream);
        if (e == cudaSuccess) return DPEP_OK;
        if (e != cudaErrorNotReady) DPEP_CHECK_CUDA(e);
        ncclResult_t ar = ncclSuccess;
        DPEP_CHECK_NCCL(ncclCommGetAsyncError(n->comm, &ar));
        if (ar != ncclSuccess && ar != ncclInProgress) DPEP_CHECK_NCCL(ar);
        if (load_(&n->abort_req)) {
            do_abort(n);
            DPEP_ERROR("comm \"%s\": NCCL communicator aborted by the watchdog", n->name);
            return DPEP_ERR_TIMEOUT;
        }
        sched_yield();
    }
}

/* Collective over the comm: rank 0 makes the unique id, MPI_Bcast shares it. */
static dpep_status nccl_create(dpep_comm *c, void **out)
{
    MPI_Comm comm = dpep_comm_mpi(c);
    int rank = dpep_comm_rank(c), size = dpep_comm_size(c);
    const char *name = dpep_comm_name(c);
    struct {
        int ok;
        ncclUniqueId id;
    } boot;
    memset(&boot, 0, sizeof boot);
    if (rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&boot.id);
        boot.ok = r == ncclSuccess;
        if (!boot.ok)
            dpep_check_fail_(__FILE__, __LINE__, "ncclGetUniqueId(&boot.id)",
                             dpep_nccl_error_string((int)r));
    }
    /* Rank 0's failure travels with the id, so nobody waits in InitRank for it. */
    DPEP_CHECK_MPI(MPI_Bcast(&boot, (int)sizeof boot, MPI_BYTE, 0, comm));
    if (!boot.ok) {
        DPEP_ERROR("comm \"%s\": rank 0 could not create an NCCL unique id", name);
        return DPEP_ERR_NCCL;
    }
    dpep_nccl *n = (dpep_nccl *)calloc(1, sizeof *n);
    if (!n) return DPEP_ERR_NOMEM;
    n->rank = rank;
    n->size = size;
    snprintf(n->name, sizeof n->name, "%s", name);
    dpep_status st = DPEP_OK;
    cudaError_t ce = cudaStreamCreateWithFlags(&n->stream, cudaStreamNonBlocking);
    if (ce != cudaSuccess) {
        dpep_check_fail_(__FILE__, __LINE__, "cudaStreamCreateWithFlags", cudaGetErrorString(ce));
        free(n);
        return DPEP_ERR_CUDA;
    }
    ce = cudaEventCreateWithFlags(&n->ready, cudaEventDisableTiming);
    if (ce != cudaSuccess) {
        dpep_check_fail_(__FILE__, __LINE__, "cudaEventCreateWithFlags", cudaGetErrorString(ce));
        cudaStreamDestroy(n->stream);
        free(n);
        return DPEP_ERR_CUDA;
    }
    ce = cudaMalloc((void **)&n->barrier_buf, sizeof(float));
    if (ce != cudaSuccess) {
        dpep_check_fail_(__FILE__, __LINE__, "cudaMalloc(barrier_buf)", cudaGetErrorString(ce));
        st = DPEP_ERR_CUDA;
        goto fail_stream;
    }
    {
        ncclResult_t r = ncclCommInitRank(&n->comm, size, boot.id, rank);
        if (r != ncclSuccess) {
            dpep_check_fail_(__FILE__, __LINE__, "ncclCommInitRank", dpep_nccl_error_string((int)r));
            st = DPEP_ERR_NCCL;
            goto fail_buf;
        }
    }
    *out = n;
    return DPEP_OK;
fail_buf:
    cudaFree(n->barrier_buf);
fail_stream:
    cudaEventDestroy(n->ready);
    cudaStreamDestroy(n->stream);
    free(n);
    return st;
}

static void nccl_destroy(dpep_comm *c)
{
    dpep_nccl *n = state_(c);
    if (!n) return;
    if (!load_sc_(&n->abort_claim)) {
        ncclCommDestroy(n->comm);
    } else {
        /* the watchdog's abort may still be running: the comm is its until done */
        while (!load_(&n->aborted)) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    cudaFree(n->barrier_buf);
    cudaEventDestroy(n->ready);
    cudaStreamDestroy(n->stream);
    free(n);
}

/* From the watchdog thread: asks the thread inside a collective to call
 * ncclCommAbort (it polls for this flag) and waits up to wait_s for it. If no
 * collective is running, aborts the NCCL communicator directly. */
static void nccl_abort(dpep_comm *c, double wait_s)
{
    dpep_nccl *n = state_(c);
    store_sc_(&n->abort_req, 1);
    for (double waited = 0; !load_(&n->aborted); waited += 0.01) {
        /* nobody inside: a caller that enters now sees abort_req first */
        if (!load_sc_(&n->in_op)) {
            do_abort(n);
            return;
        }
        if (waited >= wait_s) return;
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
}

/* The comm's stream (non-blocking) waits for what the calling thread queued
 * on its default stream before the call (kernels that wrote the send
 * buffer: the engine's and moe/'s kernels run there, the build's
 * --default-stream per-thread). */
static dpep_status after_default_stream_(dpep_nccl *n)
{
    DPEP_CHECK_CUDA(cudaEventRecord(n->ready, cudaStreamPerThread));
    DPEP_CHECK_CUDA(cudaStreamWaitEvent(n->stream, n->ready, 0));
    return DPEP_OK;
}

/* Every entry point: mark in_op for the watchdog, order after the default
 * stream, enqueue, poll. */
#define NCCL_OP_(n, body)                                                            \
    do {                                                                             \
        if (load_(&(n)->abort_claim)) return DPEP_ERR_TIMEOUT;                       \
        store_sc_(&(n)->in_op, 1);                                                   \
        if (load_sc_(&(n)->abort_req)) { /* asked before this call touched NCCL */   \
            do_abort(n);                                                             \
            store_sc_(&(n)->in_op, 0);                                               \
            return DPEP_ERR_TIMEOUT;                                                 \
        }                                                                            \
        dpep_status op_st_ = after_default_stream_(n);                               \
        if (op_st_ == DPEP_OK) op_st_ = (body);                                      \
        if (op_st_ == DPEP_OK) op_st_ = sync_(n);                                    \
        store_sc_(&(n)->in_op, 0);                                                   \
        return op_st_;                                                               \
    } while (0)

static inline char *at(const void *base, int64_t elems, size_t es)
{
    return (char *)base + (size_t)elems * es;
}

static dpep_status a2av_(dpep_nccl *n, const void *send, const int64_t *sc, const int64_t *sd,
                         void *recv, const int64_t *rc, const int64_t *rd, dpep_comm_dtype t)
{
    size_t es = dpep_comm_dtype_size(t);
    ncclDataType_t nt = nccl_type(t);
    DPEP_CHECK_NCCL(ncclGroupStart());
    for (int p = 0; p < n->size; p++) {
        if (sc[p] > 0) {
            ncclResult_t r = ncclSend(at(send, sd[p], es), (size_t)sc[p], nt, p, n->comm, n->stream);
            if (r != ncclSuccess) {
                ncclGroupEnd();
                DPEP_CHECK_NCCL(r);
            }
        }
        if (rc[p] > 0) {
            ncclResult_t r = ncclRecv(at(recv, rd[p], es), (size_t)rc[p], nt, p, n->comm, n->stream);
            if (r != ncclSuccess) {
                ncclGroupEnd();
                DPEP_CHECK_NCCL(r);
            }
        }
    }
    DPEP_CHECK_NCCL(ncclGroupEnd());
    return DPEP_OK;
}

static dpep_status nccl_alltoallv(dpep_comm *c, const void *send, const int64_t *send_counts,
                                  const int64_t *send_displs, void *recv,
                                  const int64_t *recv_counts, const int64_t *recv_displs,
                                  dpep_comm_dtype t)
{
    dpep_nccl *n = state_(c);
    NCCL_OP_(n, a2av_(n, send, send_counts, send_displs, recv, recv_counts, recv_displs, t));
}

static dpep_status allgather_(dpep_nccl *n, const void *send, void *recv, int64_t count,
                              dpep_comm_dtype t)
{
    if (count == 0) return DPEP_OK;
    DPEP_CHECK_NCCL(ncclAllGather(send, recv, (size_t)count, nccl_type(t), n->comm, n->stream));
    return DPEP_OK;
}

static dpep_status nccl_allgather(dpep_comm *c, const void *send, void *recv, int64_t count,
                                  dpep_comm_dtype t)
{
    dpep_nccl *n = state_(c);
    NCCL_OP_(n, allgather_(n, send, recv, count, t));
}

/* One broadcast per root in a group: rank r's block lands at its displacement. */
static dpep_status allgatherv_(dpep_nccl *n, const void *send, void *recv, const int64_t *rc,
                               const int64_t *rd, dpep_comm_dtype t)
{
    size_t es = dpep_comm_dtype_size(t);
    DPEP_CHECK_NCCL(ncclGroupStart());
    for (int r = 0; r < n->size; r++) {
        if (rc[r] == 0) continue;
        ncclResult_t e = ncclBroadcast(send, at(recv, rd[r], es), (size_t)rc[r], nccl_type(t), r,
                                       n->comm, n->stream);
        if (e != ncclSuccess) {
            ncclGroupEnd();
            DPEP_CHECK_NCCL(e);
        }
    }
    DPEP_CHECK_NCCL(ncclGroupEnd());
    return DPEP_OK;
}

static dpep_status nccl_allgatherv(dpep_comm *c, const void *send, int64_t send_count,
                                   void *recv, const int64_t *recv_counts,
                                   const int64_t *recv_displs, dpep_comm_dtype t)
{
    dpep_nccl *n = state_(c);
    (void)send_count; /* == recv_counts[rank], checked by the front end */
    NCCL_OP_(n, allgatherv_(n, send, recv, recv_counts, recv_displs, t));
}

static dpep_status reduce_scatter_(dpep_nccl *n, const void *send, void *recv, int64_t count,
                                   dpep_comm_dtype t)
{
    if (count == 0) return DPEP_OK;
    DPEP_CHECK_NCCL(ncclReduceScatter(send, recv, (size_t)count, nccl_type(t), ncclSum, n->comm,
                                      n->stream));
    return DPEP_OK;
}

static dpep_status nccl_reduce_scatter(dpep_comm *c, const void *send, void *recv,
                                       int64_t recv_count, dpep_comm_dtype t)
{
    dpep_nccl *n = state_(c);
    NCCL_OP_(n, reduce_scatter_(n, send, recv, recv_count, t));
}

static dpep_status allreduce_(dpep_nccl *n, const void *send, void *recv, int64_t count,
                              dpep_comm_dtype t)
{
    if (count == 0) return DPEP_OK;
    DPEP_CHECK_NCCL(
        ncclAllReduce(send, recv, (size_t)count, nccl_type(t), ncclSum, n->comm, n->stream));
    return DPEP_OK;
}

static dpep_status nccl_allreduce(dpep_comm *c, const void *send, void *recv, int64_t count,
                                  dpep_comm_dtype t)
{
    dpep_nccl *n = state_(c);
    NCCL_OP_(n, allreduce_(n, send, recv, count, t));
}

static dpep_status bcast_(dpep_nccl *n, void *buf, int64_t count, dpep_comm_dtype t, int root)
{
    if (count == 0) return DPEP_OK;
    DPEP_CHECK_NCCL(
        ncclBroadcast(buf, buf, (size_t)count, nccl_type(t), root, n->comm, n->stream));
    return DPEP_OK;
}

static dpep_status nccl_bcast(dpep_comm *c, void *buf, int64_t count, dpep_comm_dtype t,
                              int root)
{
    dpep_nccl *n = state_(c);
    NCCL_OP_(n, bcast_(n, buf, count, t, root));
}

static dpep_status barrier_(dpep_nccl *n)
{
    DPEP_CHECK_NCCL(ncclAllReduce(n->barrier_buf, n->barrier_buf, 1, ncclFloat32, ncclSum,
                                  n->comm, n->stream));
    return DPEP_OK;
}

static dpep_status nccl_barrier(dpep_comm *c)
{
    dpep_nccl *n = state_(c);
    NCCL_OP_(n, barrier_(n));
}

/* Positional (C++17 has no designated initializers): dpep_comm_ops' order. */
extern "C" const dpep_comm_ops dpep_comm_nccl_ops = {
    "nccl",              /* name           */
    false,               /* host_memory    */
    nccl_create,         /* create         */
    nccl_destroy,        /* destroy        */
    nccl_abort,          /* abort          */
    nccl_alltoallv,      /* alltoallv      */
    nccl_allgather,      /* allgather      */
    nccl_allgatherv,     /* allgatherv     */
    nccl_reduce_scatter, /* reduce_scatter */
    nccl_allreduce,      /* allreduce      */
    nccl_bcast,          /* bcast          */
    nccl_barrier,        /* barrier        */
};
