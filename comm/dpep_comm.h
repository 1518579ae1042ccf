/* dpep_comm.h — public header of the comm module: collectives behind one
 * interface, with an MPI backend (host memory) and an NCCL backend (device
 * memory, bootstrapped over MPI), guarded by a watchdog that ends the job with
 * a message naming the ranks that did not arrive instead of hanging.
 *
 * Ownership: dpep_comm_create allocates the comm (and duplicates `parent`
 * twice: a data communicator and a control communicator used by the
 * watchdog); dpep_comm_destroy frees both. Buffers passed to collectives stay
 * owned by the caller. Every collective is synchronous (returns once its
 * result is in `recv`) and does not allocate memory.
 *
 * Threading: a dpep_comm is used by one thread at a time. The watchdog needs
 * MPI_THREAD_MULTIPLE; with less it is disabled with a logged warning. */
#ifndef DPEP_COMM_H
#define DPEP_COMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mpi.h>

#include "dpep_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dpep_comm dpep_comm; /* opaque */

/* MPI: host memory. NCCL: device memory, one rank per GPU. STAGED
 * ("mpi-staged"): a device's memory moved by the MPI collectives through
 * host buffers (device -> host, MPI, host -> device): device collectives
 * where NCCL cannot run (ranks sharing one GPU, no NCCL); the device is
 * given at create (dpep_comm_create_on). */
typedef enum dpep_comm_backend { DPEP_COMM_MPI = 0, DPEP_COMM_NCCL, DPEP_COMM_STAGED } dpep_comm_backend;

typedef enum dpep_comm_dtype {
    DPEP_COMM_U8 = 0,
    DPEP_COMM_I32,
    DPEP_COMM_I64,
    DPEP_COMM_F32,
    DPEP_COMM_BF16,
    DPEP_COMM_F16,
} dpep_comm_dtype;
#define DPEP_COMM_DTYPE_COUNT 6

/* Bytes per element (0 for an out-of-range value). */
size_t dpep_comm_dtype_size(dpep_comm_dtype t);
/* "uint8", "int32", "int64", "float", "bfloat16", "half" as nccl-tests prints;
 * "?" for an out-of-range value. */
const char *dpep_comm_dtype_name(dpep_comm_dtype t);
/* "mpi" / "nccl" / "mpi-staged". */
const char *dpep_comm_backend_name(dpep_comm_backend b);
/* Whether this build has backend b (NCCL only when built with CUDA). */
bool dpep_comm_backend_available(dpep_comm_backend b);

/* Wraps a duplicate of `parent` (MPI_Comm_dup, MPI_ERRORS_RETURN). `name`
 * (e.g. "ep", "attn_tp") is copied and used in timeout messages. timeout_s
 * <= 0 disables the watchdog for this comm. For DPEP_COMM_NCCL the calling
 * rank's current CUDA device is used. Collective over parent. *out is
 * written only on DPEP_OK. */
dpep_status dpep_comm_create(MPI_Comm parent, const char *name, dpep_comm_backend backend,
                             double timeout_s, dpep_comm **out);
/* dpep_comm_create for an optional group: *out stays NULL (DPEP_OK) when
 * `parent` is MPI_COMM_NULL or has one rank — nothing to communicate. */
dpep_status dpep_comm_create_group(MPI_Comm parent, const char *name, dpep_comm_backend backend,
                                   double timeout_s, dpep_comm **out);
/* The same with the device whose memory the buffers are (copied; needed by
 * DPEP_COMM_STAGED, ignored by the others; NULL: none). */
dpep_status dpep_comm_create_on(MPI_Comm parent, const char *name, dpep_comm_backend backend,
                                const dpep_device *dev, double timeout_s, dpep_comm **out);
dpep_status dpep_comm_create_group_on(MPI_Comm parent, const char *name,
                                      dpep_comm_backend backend, const dpep_device *dev,
                                      double timeout_s, dpep_comm **out);
/* DPEP_COMM_STAGED: sizes the host staging buffers for calls sending up to
 * send_bytes and receiving up to recv_bytes, so that the step path
 * allocates nothing; larger calls grow them. No-op for the other backends.
 * Local. */
dpep_status dpep_comm_reserve(dpep_comm *c, size_t send_bytes, size_t recv_bytes);
/* Collective over the comm (frees communicators). NULL is a no-op. Destroy
 * every comm before MPI_Finalize: the watchdog thread calls MPI while any
 * comm exists. */
void dpep_comm_destroy(dpep_comm *c);

int dpep_comm_rank(const dpep_comm *c);
int dpep_comm_size(const dpep_comm *c);
const char *dpep_comm_name(const dpep_comm *c);
dpep_comm_backend dpep_comm_backend_of(const dpep_comm *c);
MPI_Comm dpep_comm_mpi(const dpep_comm *c); /* the duplicated communicator (owned by c) */
/* Number of collectives entered on this comm so far. */
uint64_t dpep_comm_seq(const dpep_comm *c);

/* All collectives below: counts and displacements in elements; buffers are
 * host memory for MPI, device memory for NCCL. Errors: DPEP_ERR_INVALID for
 * bad arguments (negative counts, bad root, unknown dtype), DPEP_ERR_UNSUPPORTED
 * for an operation/dtype the backend cannot do, DPEP_ERR_MPI / DPEP_ERR_NCCL /
 * DPEP_ERR_CUDA for library failures. A rank with nothing to send or receive
 * still takes part. A collective running past the comm's timeout ends the job
 * (MPI_Abort) after logging which ranks did not arrive. */

/* send_counts[p] elements from send + send_displs[p] go to peer p;
 * recv_counts[p] elements from peer p land at recv + recv_displs[p].
 * Arrays have dpep_comm_size(c) entries. Counts may exceed INT_MAX. */
dpep_status dpep_comm_alltoallv(dpep_comm *c, const void *send, const int64_t *send_counts,
                                const int64_t *send_displs, void *recv,
                                const int64_t *recv_counts, const int64_t *recv_displs,
                                dpep_comm_dtype t);
/* recv: (size, count); rank r's `count` elements land at recv + r*count. */
dpep_status dpep_comm_allgather(dpep_comm *c, const void *send, void *recv, int64_t count,
                                dpep_comm_dtype t);
/* recv_counts[r] elements from rank r land at recv + recv_displs[r];
 * send_count must equal recv_counts[my rank]; recv_counts must be the same on
 * every rank. MPI: when every count fits in an int but a displacement does
 * not, returns DPEP_ERR_UNSUPPORTED (logged) while the others wait — the
 * watchdog then ends the job. */
dpep_status dpep_comm_allgatherv(dpep_comm *c, const void *send, int64_t send_count,
                                 void *recv, const int64_t *recv_counts,
                                 const int64_t *recv_displs, dpep_comm_dtype t);
/* Sum; send: (size, recv_count); rank r receives the sum of block r.
 * Same dtype rules as allreduce. */
dpep_status dpep_comm_reduce_scatter(dpep_comm *c, const void *send, void *recv,
                                     int64_t recv_count, dpep_comm_dtype t);
/* Sum; in place when send == recv. Every dtype (U8 wraps mod 256). MPI:
 * BF16/F16 add pairwise in fp32 and round to nearest-even after each add
 * (a user MPI_Op); NCCL: ncclSum on ncclBfloat16/ncclFloat16. */
dpep_status dpep_comm_allreduce(dpep_comm *c, const void *send, void *recv, int64_t count,
                                dpep_comm_dtype t);
dpep_status dpep_comm_bcast(dpep_comm *c, void *buf, int64_t count, dpep_comm_dtype t,
                            int root);
dpep_status dpep_comm_barrier(dpep_comm *c);

/* Agreement after a local step that may fail (an allocation, a load): every
 * rank learns whether all succeeded. Returns DPEP_OK when every rank's
 * `local` is DPEP_OK; else this rank's own status when it failed, else the
 * status of the lowest failed rank. *n_failed (may be NULL) receives how
 * many ranks failed, *first_failed (may be NULL) the lowest one (-1: none).
 * A rank whose step failed must still call it. Collective; MPI backend
 * (host memory) whatever the comm's backend. */
dpep_status dpep_comm_agree(dpep_comm *c, dpep_status local, int *n_failed, int *first_failed);

/* Watching blocking calls made outside this interface (plain MPI on
 * dpep_comm_mpi(c), or a sequence of them), so that every collective of a
 * job is under the watchdog. Every rank of c brackets the same calls in the
 * same order; `op` is a static string named in the timeout message.
 * patient false: the usual rule (past the comm's timeout the job ends,
 * naming the ranks that did not arrive). patient true: for waits whose
 * length is legitimately unbounded (rank 0 reading a large workload, the
 * end of a run while other instances still serve): the job ends only when
 * a rank that has not arrived also stops answering the watchdog's queries
 * for the timeout (stopped, or gone), naming it; ranks that answer are
 * working and the wait goes on. */
void dpep_comm_watch_begin(dpep_comm *c, const char *op, bool patient);
void dpep_comm_watch_end(dpep_comm *c);
/* A patient barrier (see above) over c that calls poll(user) every few
 * milliseconds until every rank has entered (poll may be NULL): rank 0 of a
 * run drains its results channel while it waits. Sleeps between polls (no
 * rank spins). Collective. */
typedef void (*dpep_comm_poll_fn)(void *user);
dpep_status dpep_comm_wait_all(dpep_comm *c, const char *op, dpep_comm_poll_fn poll, void *user);
/* Changes c's timeout (<= 0: unwatched from now on) between collectives
 * (the job's comm exists before the config gives its timeout). */
void dpep_comm_set_timeout(dpep_comm *c, double timeout_s);

/* ------------------------------------------------------------------------ */
/* Node-shared memory (MPI backend)                                          */
/* For a comm whose ranks all run on one node: each rank owns a segment that  */
/* every rank of the comm reads and writes with plain loads and stores (an    */
/* file in /dev/shm that every rank maps; segments of 4 MiB or more on 2 MiB */
/* pages where the kernel allows: comm/README.md). Moving                     */
/* data through it costs one copy, made by the producer or the consumer: no   */
/* packing pass and no rendezvous, which is how MoE dispatch/combine beat     */
/* MPI_Alltoallv inside a node (bench/RESULTS.md). The device counterpart is */
/* dpep_comm_dshm below.                                                      */
/* ------------------------------------------------------------------------ */
typedef struct dpep_comm_shm dpep_comm_shm; /* opaque */

/* Collective over c. Allocates `bytes` on this rank (sizes may differ per
 * rank; 0 is allowed), zeroes it (first touch by its owner), backs it with
 * 2 MiB pages when it is 4 MiB or more and the kernel can (MADV_COLLAPSE)
 * and maps every peer's segment. Every rank gets the same answer:
 * DPEP_ERR_UNSUPPORTED when the comm spans nodes or uses NCCL,
 * DPEP_ERR_NOMEM when the backing file system (/dev/shm, or
 * OMPI_MCA_osc_sm_backing_directory when set) lacks room for the node's
 * segments (checked before any page is touched: a full tmpfs would end the
 * job with SIGBUS; logged once) or a rank is out of memory, DPEP_ERR_IO when
 * the backing file cannot be made, opened or mapped (the rank that failed
 * says why), DPEP_ERR_MPI when an MPI call fails. *out only on DPEP_OK. The
 * caller owns the result; destroy it before c (not collective: peers may
 * still read this rank's segment; it stays until every rank destroyed). */
dpep_status dpep_comm_shm_create(dpep_comm *c, size_t bytes, dpep_comm_shm **out);
void dpep_comm_shm_destroy(dpep_comm_shm *s);
/* Peer p's segment (p = own rank: this rank's) and its size; NULL / 0 for
 * p out of range. Pointers stay valid until destroy. */
void *dpep_comm_shm_ptr(const dpep_comm_shm *s, int peer);
/* Maps this rank's view of every segment of the window now (page tables,
 * writable: MADV_POPULATE_WRITE; the pages exist, their owners zeroed them;
 * content unchanged), so that a step's first writes into a peer's segment
 * take no fault. For small windows the steps write whole (the DP assist's
 * and the expert pool's boards and rows); not for one sized for a worst
 * case (the MoE exchange) nor a big read-mostly one (the node's experts).
 * Before Linux 5.14: nothing. Not collective. */
void dpep_comm_shm_resident(dpep_comm_shm *s);
size_t dpep_comm_shm_size(const dpep_comm_shm *s, int peer);
/* Collective: every store made by any rank to any segment before the call
 * is visible to every load made by any rank after it (a full fence, the
 * counting barrier on rank 0's control block, a full fence). Watched by the
 * comm's watchdog like any collective. */
dpep_status dpep_comm_shm_fence(dpep_comm_shm *s);
/* Split phase: a round is arrive (publish: this rank's stores so far are
 * complete), later wait(peer) for the peers whose stores it needs, depart.
 * wait returns once peer has arrived in this rank's current round; what
 * peer stored before arriving is then visible. The arrive can be posted
 * early (when the data is ready) and the waits made later, so that the
 * work in between overlaps the peers' lateness. Every rank runs the same
 * number of rounds and waits for every peer before departing: no rank
 * leaves round n before all have arrived in it. Reads peers make after
 * arriving are not covered: overwrite what they read only after a later
 * fence. From arrive to depart counts as one collective for the watchdog
 * ("shm_round"). DPEP_ERR_INTERNAL for calls out of order. */
dpep_status dpep_comm_shm_arrive(dpep_comm_shm *s);
dpep_status dpep_comm_shm_wait(dpep_comm_shm *s, int peer);
dpep_status dpep_comm_shm_depart(dpep_comm_shm *s);

/* ------------------------------------------------------------------------ */
/* Device-shared segments (MPI comm, ranks on one node)                      */
/* Each rank owns a segment of its device's memory that the peers' kernels   */
/* read and write directly. CUDA: cudaMalloc'd, exported with CUDA IPC and   */
/* mapped into every peer (the same GPU in another process, or a GPU with    */
/* peer access: NVLink, PCIe P2P) — the shape of DeepEP's and TRT-LLM's      */
/* intranode buffers. CPU: node-shared memory (dpep_comm_shm), so the same   */
/* code runs in CPU CI.                                                      */
/* ------------------------------------------------------------------------ */
typedef struct dpep_comm_dshm dpep_comm_dshm; /* opaque */

/* Collective over c (an MPI comm). `bytes` on this rank's device `dev` (the
 * rank's current GPU for CUDA; sizes may differ per rank), zeroed, every
 * peer's segment mapped here. Every rank gets the same answer:
 * DPEP_ERR_UNSUPPORTED when the comm spans nodes, a peer's segment cannot be
 * mapped (no peer access between the GPUs) or the build has no such device;
 * DPEP_ERR_NOMEM when a rank cannot allocate (CPU: no room in /dev/shm).
 * The caller owns the result; destroy it (collective) before c. */
dpep_status dpep_comm_dshm_create(dpep_comm *c, const dpep_device *dev, size_t bytes,
                                  dpep_comm_dshm **out);
void dpep_comm_dshm_destroy(dpep_comm_dshm *s);
/* Peer p's segment as this process addresses it (device memory: for
 * kernels and device copies; CPU: plain host memory); NULL out of range. */
void *dpep_comm_dshm_ptr(const dpep_comm_dshm *s, int peer);
/* "CUDA IPC" or "node-shared host memory". */
const char *dpep_comm_dshm_kind(const dpep_comm_dshm *s);
/* Collective: what any rank's device work queued before the call wrote into
 * any segment is visible to every rank's work after it (CUDA: this
 * process's queued work finishes, then an MPI barrier; CPU: the shm fence).
 * Watched by the comm's watchdog. */
dpep_status dpep_comm_dshm_fence(dpep_comm_dshm *s);

/* Testing hook: take the large-count code paths (chunked collectives and
 * point-to-point rounds) for any count or displacement above `limit` elements
 * (default and maximum INT_MAX), so they can be checked with small buffers. */
void dpep_comm_set_int_limit(dpep_comm *c, int64_t limit);

/* bf16 <-> f32 helpers (round to nearest-even; NaN stays NaN). Host only. */
uint16_t dpep_comm_f32_to_bf16(float f);
float dpep_comm_bf16_to_f32(uint16_t h);

#ifdef __cplusplus
}
#endif
#endif /* DPEP_COMM_H */
