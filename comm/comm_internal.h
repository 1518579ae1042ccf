/* comm_internal.h — private to comm/: the dpep_comm struct, the MPI backend,
 * the NCCL backend entry points (C linkage, no C11 atomics so nvcc can read
 * it) and the watchdog registry. */
#ifndef DPEP_COMM_INTERNAL_H
#define DPEP_COMM_INTERNAL_H

#include "dpep_comm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Tags on the control communicator (watchdog queries) and on the data
 * communicator (point-to-point rounds of the large-count paths). */
#define DPEP_COMM_TAG_QUERY 11
#define DPEP_COMM_TAG_REPLY 12
#define DPEP_COMM_TAG_DATA 13

/* ---- NCCL backend (comm_nccl.cu; without CUDA, comm.c answers DPEP_ERR_UNSUPPORTED) ---- */
typedef struct dpep_nccl dpep_nccl;
/* Collective over `comm` (rank 0 makes the unique id, MPI_Bcast shares it). */
dpep_status dpep_nccl_create(MPI_Comm comm, int rank, int size, const char *name,
                             dpep_nccl **out);
void dpep_nccl_destroy(dpep_nccl *n);
/* From the watchdog thread: asks the thread inside a collective to call
 * ncclCommAbort (it polls for this flag) and waits up to wait_s for it. If no
 * collective is running, aborts the NCCL communicator directly. */
void dpep_nccl_abort(dpep_nccl *n, double wait_s);
dpep_status dpep_nccl_alltoallv(dpep_nccl *n, const void *send, const int64_t *send_counts,
                                const int64_t *send_displs, void *recv,
                                const int64_t *recv_counts, const int64_t *recv_displs,
                                dpep_comm_dtype t);
dpep_status dpep_nccl_allgather(dpep_nccl *n, const void *send, void *recv, int64_t count,
                                dpep_comm_dtype t);
dpep_status dpep_nccl_allgatherv(dpep_nccl *n, const void *send, int64_t send_count,
                                 void *recv, const int64_t *recv_counts,
                                 const int64_t *recv_displs, dpep_comm_dtype t);
dpep_status dpep_nccl_reduce_scatter(dpep_nccl *n, const void *send, void *recv,
                                     int64_t recv_count, dpep_comm_dtype t);
dpep_status dpep_nccl_allreduce(dpep_nccl *n, const void *send, void *recv, int64_t count,
                                dpep_comm_dtype t);
dpep_status dpep_nccl_bcast(dpep_nccl *n, void *buf, int64_t count, dpep_comm_dtype t,
                            int root);
dpep_status dpep_nccl_barrier(dpep_nccl *n);

#ifndef __cplusplus
#include <stdatomic.h>

struct dpep_comm {
    char name[64];
    dpep_comm_backend backend;
    MPI_Comm comm;           /* data communicator (owned)                         */
    MPI_Comm ctrl;           /* watchdog queries (owned), same group as comm      */
    int rank, size;
    double timeout_s;        /* <= 0: no watchdog for this comm                   */
    int64_t int_limit;       /* counts/displs above this take the large paths     */

    /* Watched state: written by the calling thread on entry/exit of every
     * collective, read by the watchdog thread and reported to peers. */
    _Atomic uint64_t seq;    /* collectives entered                               */
    _Atomic int in_op;       /* 1 while inside collective #seq                    */
    _Atomic int64_t start_ns;/* CLOCK_MONOTONIC at entry of #seq                  */
    _Atomic(const char *) op;/* static name of collective #seq                    */

    /* Scratch sized at create (no malloc per call). */
    int *sc, *rc, *rd;       /* (size) int copies of counts/displs for MPI        */
    int64_t *l_sc, *l_sd;    /* (size) per-peer send counts/displs, large paths   */
    MPI_Request *reqs;       /* (2*size) point-to-point rounds                    */
    int *world_rank;         /* (size) world rank of each comm rank, for messages */
    /* Watchdog only (used under the registry lock). */
    uint64_t *wd_reply;      /* (size, 2) {seq, in_op} answered by each peer      */
    MPI_Request *wd_reqs;    /* (2*size) query sends and reply receives           */

    dpep_nccl *nccl;         /* NCCL backend state, NULL for MPI                  */
    struct dpep_comm *next;  /* watchdog registry list                            */
};

/* ---- MPI backend (comm_mpi.c) ---- */
/* Creates the shared bf16/f16 datatypes and sum ops once (refcounted). */
dpep_status dpep_mpi_types_acquire(void);
void dpep_mpi_types_release(void);
dpep_status dpep_mpi_alltoallv(dpep_comm *c, const void *send, const int64_t *send_counts,
                               const int64_t *send_displs, void *recv,
                               const int64_t *recv_counts, const int64_t *recv_displs,
                               dpep_comm_dtype t);
dpep_status dpep_mpi_allgatherv(dpep_comm *c, const void *send, int64_t send_count,
                                void *recv, const int64_t *recv_counts,
                                const int64_t *recv_displs, dpep_comm_dtype t);
dpep_status dpep_mpi_allgather(dpep_comm *c, const void *send, void *recv, int64_t count,
                               dpep_comm_dtype t);
dpep_status dpep_mpi_reduce_scatter(dpep_comm *c, const void *send, void *recv,
                                    int64_t recv_count, dpep_comm_dtype t);
dpep_status dpep_mpi_allreduce(dpep_comm *c, const void *send, void *recv, int64_t count,
                               dpep_comm_dtype t);
dpep_status dpep_mpi_bcast(dpep_comm *c, void *buf, int64_t count, dpep_comm_dtype t,
                           int root);

/* Entry/exit bookkeeping of a collective (comm.c): every operation that can
 * block on peers brackets its wait with these so the watchdog can name the
 * ranks that did not arrive. `op` must be a static string. */
void dpep_comm_op_begin(dpep_comm *c, const char *op);
dpep_status dpep_comm_op_end(dpep_comm *c, dpep_status st);

/* ---- watchdog (watchdog.c) ---- */
int64_t dpep_comm_now_ns(void);
/* Adds c to the registry; starts the thread with the first comm (when MPI
 * has MPI_THREAD_MULTIPLE; otherwise warns once if c has a timeout). */
dpep_status dpep_watchdog_register(dpep_comm *c);
/* Removes c; stops and joins the thread with the last comm. */
void dpep_watchdog_unregister(dpep_comm *c);
#endif /* !__cplusplus */

#ifdef __cplusplus
}
#endif
#endif /* DPEP_COMM_INTERNAL_H */
