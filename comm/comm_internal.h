/* comm_internal.h — private to comm/: the backend ops table (C linkage, no
 * C11 atomics, so nvcc can read it), the dpep_comm struct, the bookkeeping
 * the watchdog reads and the watchdog registry. */
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

/* ---- Backend ops table ----
 * One table per backend, picked once by dpep_comm_create (c->ops); the
 * public collectives in comm.c check arguments, bracket the call for the
 * watchdog and call c->ops->op. A backend is one file defining one table
 * (comm_mpi.c: dpep_comm_mpi_ops; comm_nccl.cu: dpep_comm_nccl_ops, CUDA
 * builds only) plus its line in comm.c's backend list. Every entry takes the
 * comm; a backend keeps its own state behind dpep_comm_backend_state(c)
 * (what its create returned) and reads the rest through the public accessors
 * (dpep_comm_mpi/rank/size/name), or through the struct below when it is C.
 * Arguments reach the ops already checked (see dpep_comm.h); counts and
 * displacements are elements. */
typedef struct dpep_comm_ops {
    const char *name;  /* "mpi", "nccl": as dpep_comm_backend_name        */
    bool host_memory;  /* buffers are host memory (dpep_comm_shm allowed) */
    /* Called by every rank of c (may be collective over dpep_comm_mpi(c))
     * once the communicators and the scratch exist. Sets *state (may leave it
     * NULL); on failure frees what it made, and no rank may be left waiting. */
    dpep_status (*create)(dpep_comm *c, void **state);
    /* Collective; frees what create made. Called only after create succeeded. */
    void (*destroy)(dpep_comm *c);
    /* From the watchdog thread before MPI_Abort, while the calling thread may
     * be inside a collective: make that collective return (wait up to wait_s).
     * NULL: nothing to do (MPI_Abort ends MPI calls). */
    void (*abort)(dpep_comm *c, double wait_s);
    dpep_status (*alltoallv)(dpep_comm *c, const void *send, const int64_t *send_counts,
                             const int64_t *send_displs, void *recv,
                             const int64_t *recv_counts, const int64_t *recv_displs,
                             dpep_comm_dtype t);
    dpep_status (*allgather)(dpep_comm *c, const void *send, void *recv, int64_t count,
                             dpep_comm_dtype t);
    dpep_status (*allgatherv)(dpep_comm *c, const void *send, int64_t send_count, void *recv,
                              const int64_t *recv_counts, const int64_t *recv_displs,
                              dpep_comm_dtype t);
    dpep_status (*reduce_scatter)(dpep_comm *c, const void *send, void *recv,
                                  int64_t recv_count, dpep_comm_dtype t);
    dpep_status (*allreduce)(dpep_comm *c, const void *send, void *recv, int64_t count,
                             dpep_comm_dtype t);
    dpep_status (*bcast)(dpep_comm *c, void *buf, int64_t count, dpep_comm_dtype t, int root);
    dpep_status (*barrier)(dpep_comm *c);
} dpep_comm_ops;

extern const dpep_comm_ops dpep_comm_mpi_ops;  /* comm_mpi.c                  */
extern const dpep_comm_ops dpep_comm_staged_ops; /* comm_staged.c             */
dpep_status dpep_comm_staged_reserve(dpep_comm *c, size_t send_bytes, size_t recv_bytes);
#ifdef DPEP_HAVE_CUDA
extern const dpep_comm_ops dpep_comm_nccl_ops; /* comm_nccl.cu                */
#endif

/* CUDA IPC for dpep_comm_dshm (ipc_cuda.cu, CUDA builds only): a zeroed
 * segment on device `dev` and its handle; a peer's handle mapped here;
 * unmapping, freeing; waiting for this process's queued device work. */
#define DPEP_IPC_HANDLE_BYTES 64
dpep_status dpep_ipc_alloc(int dev, size_t bytes, void **p, void *handle);
dpep_status dpep_ipc_open(int dev, const void *handle, void **p);
void dpep_ipc_close(void *p);
void dpep_ipc_free(void *p);
dpep_status dpep_ipc_sync(void);

/* The state the comm's backend create returned (NULL for MPI). */
void *dpep_comm_backend_state(const dpep_comm *c);

#ifndef __cplusplus
#include <stdatomic.h>

struct dpep_comm {
    char name[64];
    dpep_comm_backend backend;
    dpep_device dev;         /* the buffers' device (STAGED); kind 0 + NULL ops: none */
    MPI_Comm comm;           /* data communicator (owned)                         */
    MPI_Comm ctrl;           /* watchdog queries (owned), same group as comm      */
    int rank, size;
    _Atomic double timeout_s;/* <= 0: unwatched (dpep_comm_set_timeout may change it) */
    int64_t int_limit;       /* counts/displs above this take the large paths     */

    /* Watched state: written by the calling thread on entry/exit of every
     * collective, read by the watchdog thread and reported to peers. */
    _Atomic uint64_t seq;    /* collectives entered                               */
    _Atomic int in_op;       /* 1 while inside collective #seq                    */
    _Atomic double start_s;  /* dpep_clock_s() at entry of #seq                   */
    _Atomic(const char *) op;/* static name of collective #seq                    */
    _Atomic int patient;     /* 1: #seq is a patient wait (dpep_comm_watch_begin);
                              * set before op_begin, cleared (release) after in_op
                              * by op_end                                         */

    /* Scratch sized at create (no malloc per call). */
    int *sc, *rc, *rd;       /* (size) int copies of counts/displs for MPI        */
    int64_t *l_sc, *l_sd;    /* (size) per-peer send counts/displs, large paths   */
    MPI_Request *reqs;       /* (2*size) point-to-point rounds                    */
    int *world_rank;         /* (size) world rank of each comm rank, for messages */
    /* Watchdog only (used under the registry lock). */
    uint64_t *wd_reply;      /* (size, 3) {seq, in_op, op_id} answered by each peer */
    MPI_Request *wd_reqs;    /* (2*size) query sends and reply receives           */
    bool *wd_replied;        /* (size) peer answered the last query round         */
    uint64_t wd_query;       /* the seq sent in the current round (send buffer)   */
    uint64_t wd_seq;         /* patient op whose clock was restarted ...          */
    double wd_since;         /* ... at this dpep_clock_s() (all answered)         */
    uint64_t wd_logged;      /* patient op already named in a "still waiting" line */

    const dpep_comm_ops *ops;/* the backend, picked once at create               */
    void *be;                /* backend state (ops->create), NULL for MPI         */
    struct dpep_comm *next;  /* watchdog registry list                            */
};

/* Entry/exit bookkeeping of a collective (comm.c): every operation that can
 * block on peers brackets its wait with these so the watchdog can name the
 * ranks that did not arrive. `op` must be a static string. */
void dpep_comm_op_begin(dpep_comm *c, const char *op);
dpep_status dpep_comm_op_end(dpep_comm *c, dpep_status st);

/* ---- watchdog (watchdog.c) ---- */
/* Adds c to the registry; starts the thread with the first comm (when MPI
 * has MPI_THREAD_MULTIPLE; otherwise warns once if c has a timeout). */
dpep_status dpep_watchdog_register(dpep_comm *c);
/* Removes c; stops and joins the thread with the last comm. */
void dpep_watchdog_unregister(dpep_comm *c);
/* The newest registered comm over the same group as `parent`, in the same
 * order (MPI_CONGRUENT), and not inside a collective, or NULL:
 * dpep_comm_create watches its collective set-up on it, since every rank of
 * that comm takes part. Every member finds the same one (comms of one group
 * are created and destroyed collectively, so in the same order on each
 * member). */
dpep_comm *dpep_watchdog_congruent(MPI_Comm parent);
#endif /* !__cplusplus */

#ifdef __cplusplus
}
#endif
#endif /* DPEP_COMM_INTERNAL_H */
