/* dpep_base.h — public header of runtime/base, the floor of the tree: the
 * status type, the CHECK macro family, logging, diagnostics about user input,
 * arena carving, the monotonic clock and the device allocator. It is the only
 * runtime header comm/, attn/ and moe/ need besides runtime/model; it includes
 * neither MPI nor hwloc (the CHECK_MPI macros only name MPI's int codes).
 *
 * Ownership: functions taking `T *out` write it only on DPEP_OK. */
#ifndef DPEP_BASE_H
#define DPEP_BASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Status: one type for the whole project. OK = 0, errors negative.          */
/* ------------------------------------------------------------------------ */
typedef enum dpep_status {
    DPEP_OK = 0,
    DPEP_ERR_INVALID = -1,     /* bad user input: config, checkpoint, request */
    DPEP_ERR_USAGE = -2,       /* bad command line                            */
    DPEP_ERR_NOMEM = -3,       /* allocation failed or a pool is full         */
    DPEP_ERR_IO = -4,          /* file or socket I/O                          */
    DPEP_ERR_MPI = -5,         /* an MPI call failed                          */
    DPEP_ERR_CUDA = -6,        /* a CUDA runtime call failed                  */
    DPEP_ERR_NCCL = -7,        /* an NCCL call failed                         */
    DPEP_ERR_CUBLAS = -8,      /* a cuBLAS call failed                        */
    DPEP_ERR_TIMEOUT = -9,     /* a collective or wait ran past its limit     */
    DPEP_ERR_UNSUPPORTED = -10,/* valid request this build cannot serve       */
    DPEP_ERR_NO_DEVICE = -11,  /* no usable GPU                               */
    DPEP_ERR_INTERNAL = -12,   /* broken invariant: a bug in dpep             */
    DPEP_ERR_INCOMPLETE = -13, /* a run ended, but not every request was served */
    DPEP_ERR_STOPPED = -14,    /* stopped by a signal (SIGTERM, SIGINT)        */
} dpep_status;

/* Static string naming the status ("invalid input", …); never NULL. */
const char *dpep_status_string(dpep_status st);
/* Process exit code for a status: 0 success, 2 bad input/usage, 3 a run
 * that ended with requests not served (failed, skipped), 4 a run stopped
 * by SIGTERM/SIGINT, 1 otherwise (a runtime failure). */
int dpep_status_exit_code(dpep_status st);

/* ------------------------------------------------------------------------ */
/* Logging: "[host:rank] LEVEL message". Level from DPEP_LOG_LEVEL           */
/* (error|warn|info|debug|trace, default info). Info and below print on rank */
/* 0 only unless DPEP_LOG_ALL_RANKS=1; warnings and errors print everywhere. */
/* ------------------------------------------------------------------------ */
typedef enum dpep_log_level {
    DPEP_LOG_ERROR = 0,
    DPEP_LOG_WARN = 1,
    DPEP_LOG_INFO = 2,
    DPEP_LOG_DEBUG = 3,
    DPEP_LOG_TRACE = 4,
} dpep_log_level;

/* Reads DPEP_LOG_LEVEL / DPEP_LOG_ALL_RANKS; safe to call more than once. */
void dpep_log_init(void);
/* Sets the rank shown in the prefix (before MPI it is taken from the
 * launcher's environment: OMPI_COMM_WORLD_RANK, PMIX_RANK, SLURM_PROCID). */
void dpep_log_set_rank(int rank);
int dpep_log_rank(void);
bool dpep_log_enabled(dpep_log_level level);
void dpep_log(dpep_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define DPEP_ERROR(...) dpep_log(DPEP_LOG_ERROR, __VA_ARGS__)
#define DPEP_WARN(...) dpep_log(DPEP_LOG_WARN, __VA_ARGS__)
#define DPEP_INFO(...) dpep_log(DPEP_LOG_INFO, __VA_ARGS__)
#define DPEP_DEBUG(...) dpep_log(DPEP_LOG_DEBUG, __VA_ARGS__)

/* ------------------------------------------------------------------------ */
/* CHECK family. Each evaluates a call once; on failure it logs              */
/*   "[host:rank] ERROR file:line call -> error"                             */
/* and returns the matching dpep_status from the enclosing function. The     */
/* _GOTO forms store the status in `st` and jump to a cleanup label instead. */
/* ------------------------------------------------------------------------ */
void dpep_check_fail_(const char *file, int line, const char *call, const char *err);

#define DPEP_CHECK_GENERIC_(ok, call_str, err_str, status, on_fail)              \
    do {                                                                       \
        if (!(ok)) {                                                           \
            dpep_check_fail_(__FILE__, __LINE__, call_str, err_str);           \
            on_fail(status);                                                   \
        }                                                                      \
    } while (0)
#define DPEP_ON_FAIL_RETURN_(s) return (s)

/* A dpep call: propagate its status. */
#define DPEP_TRY(call)                                                         \
    do {                                                                       \
        dpep_status dpep_try_st_ = (call);                                     \
        if (dpep_try_st_ != DPEP_OK) return dpep_try_st_;                      \
    } while (0)
#define DPEP_TRY_GOTO(call, st, label)                                         \
    do {                                                                       \
        (st) = (call);                                                         \
        if ((st) != DPEP_OK) goto label;                                       \
    } while (0)

/* libc-style calls returning -1/NULL with errno. */
const char *dpep_errno_string(void);
#define DPEP_CHECK_LIBC(cond, call_str)                                        \
    DPEP_CHECK_GENERIC_((cond), call_str, dpep_errno_string(), DPEP_ERR_IO,    \
                        DPEP_ON_FAIL_RETURN_)

/* MPI calls (communicators use MPI_ERRORS_RETURN so errors reach us). */
const char *dpep_mpi_error_string(int code);
#define DPEP_CHECK_MPI(call)                                                   \
    do {                                                                       \
        int dpep_mpi_rc_ = (call);                                             \
        DPEP_CHECK_GENERIC_(dpep_mpi_rc_ == 0, #call,                          \
                            dpep_mpi_error_string(dpep_mpi_rc_), DPEP_ERR_MPI, \
                            DPEP_ON_FAIL_RETURN_);                             \
    } while (0)
#define DPEP_CHECK_MPI_GOTO(call, st, label)                                   \
    do {                                                                       \
        int dpep_mpi_rc_ = (call);                                             \
        if (dpep_mpi_rc_ != 0) {                                               \
            dpep_check_fail_(__FILE__, __LINE__, #call,                        \
                             dpep_mpi_error_string(dpep_mpi_rc_));             \
            (st) = DPEP_ERR_MPI;                                               \
            goto label;                                                        \
        }                                                                      \
    } while (0)

/* CUDA, NCCL and cuBLAS calls (in .cu files). The codes are the vendors'
 * enums (cudaSuccess, ncclSuccess, CUBLAS_STATUS_SUCCESS are all 0); the
 * strings come from the vendor libraries when this build has CUDA. */
const char *dpep_cuda_error_string(int code);
const char *dpep_nccl_error_string(int code);
const char *dpep_cublas_error_string(int code);
#define DPEP_CHECK_VENDOR_(call, strfn, status)                                \
    do {                                                                       \
        int dpep_vendor_rc_ = (int)(call);                                     \
        DPEP_CHECK_GENERIC_(dpep_vendor_rc_ == 0, #call,                       \
                            strfn(dpep_vendor_rc_), status,                    \
                            DPEP_ON_FAIL_RETURN_);                             \
    } while (0)
#define DPEP_CHECK_CUDA(call) DPEP_CHECK_VENDOR_(call, dpep_cuda_error_string, DPEP_ERR_CUDA)
#define DPEP_CHECK_NCCL(call) DPEP_CHECK_VENDOR_(call, dpep_nccl_error_string, DPEP_ERR_NCCL)
#define DPEP_CHECK_CUBLAS(call)                                                \
    DPEP_CHECK_VENDOR_(call, dpep_cublas_error_string, DPEP_ERR_CUBLAS)

/* ------------------------------------------------------------------------ */
/* Diagnostics: messages about user input, collected without malloc so that  */
/* a loader can report several problems at once. Each error reads            */
/*   FILE:LINE:COL: key: what is wrong (what was expected)                   */
/* ------------------------------------------------------------------------ */
#define DPEP_DIAG_MAX 32
#define DPEP_DIAG_MSG 512

typedef enum dpep_diag_kind { DPEP_DIAG_ERROR = 0, DPEP_DIAG_NOTE = 1 } dpep_diag_kind;

typedef struct dpep_diag {
    int n;              /* messages stored, <= DPEP_DIAG_MAX          */
    int n_errors;       /* errors reported (stored or dropped)        */
    int n_notes;        /* notes reported (stored or dropped)         */
    int dropped;        /* messages beyond DPEP_DIAG_MAX              */
    struct {
        dpep_diag_kind kind;
        char msg[DPEP_DIAG_MSG];
    } item[DPEP_DIAG_MAX];
} dpep_diag;

void dpep_diag_init(dpep_diag *d);
void dpep_diag_add(dpep_diag *d, dpep_diag_kind kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Prints errors as they are and notes as "note: …" to `f`. */
void dpep_diag_print(const dpep_diag *d, FILE *f);
/* First stored error containing `needle`, or NULL. For tests. */
const char *dpep_diag_find(const dpep_diag *d, const char *needle);

/* ------------------------------------------------------------------------ */
/* Arena carving: a few big buffers split into many aligned pieces. Pass 1   */
/* runs the carving with base NULL and only counts bytes (every take returns  */
/* NULL); pass 2 runs the same code on the allocated block. Ownership: the    */
/* pieces belong to whoever owns the block.                                  */
/* ------------------------------------------------------------------------ */
#define DPEP_ARENA_ALIGN 64
/* Blocks of at least DPEP_PAGE_ALIGN_MIN bytes that are streamed whole (the
 * weights) start on a DPEP_PAGE: the CPU allocator aligns such blocks, the
 * weights' arena such tensors, and runtime/linear reads short weight rows
 * as page streams from a matrix's start. */
#define DPEP_PAGE 4096
#define DPEP_PAGE_ALIGN_MIN 65536

typedef struct dpep_arena {
    unsigned char *base;   /* NULL: counting pass                          */
    size_t off;            /* bytes carved so far (aligned)                 */
} dpep_arena;

/* Starts carving `base` (NULL to count). */
static inline dpep_arena dpep_arena_begin(void *base)
{
    dpep_arena a = {(unsigned char *)base, 0};
    return a;
}
/* Next piece of `bytes` bytes, DPEP_ARENA_ALIGN-aligned; NULL when counting. */
static inline void *dpep_arena_take(dpep_arena *a, size_t bytes)
{
    void *p = a->base ? a->base + a->off : NULL;
    a->off += (bytes + (DPEP_ARENA_ALIGN - 1)) & ~(size_t)(DPEP_ARENA_ALIGN - 1);
    return p;
}
#define DPEP_ARENA_TAKE(a, type, n) ((type *)dpep_arena_take((a), sizeof(type) * (size_t)(n)))

/* Grows *p (elements of `elem` bytes, capacity *cap) to hold at least `need`
 * elements, doubling; for arrays that grow off the step path (arrivals,
 * recorded results). false (and *p untouched) when out of memory. */
bool dpep_grow(void **p, int64_t *cap, int64_t need, size_t elem);

/* ------------------------------------------------------------------------ */
/* Input files (file.c). Paths from configs and the command line are opened  */
/* only when they name a regular file: a FIFO without a writer would block   */
/* open(), /dev/zero would never end.                                        */
/* ------------------------------------------------------------------------ */
/* "a regular file", "a directory", "a FIFO (named pipe)", ... for st_mode. */
const char *dpep_file_kind_name(unsigned mode);
/* Opens `path` read-only (O_CLOEXEC) when it is a regular file of at most
 * max_bytes (<= 0: any size), without blocking on a FIFO. Returns the fd
 * (owned by the caller) and its size in *size (may be NULL), or -1 with the
 * reason in `why` ("cannot open: No such file or directory", "is a FIFO
 * (named pipe) (expected a regular file)", "is N bytes (expected at most
 * M)"); the caller prefixes the path and the field. */
int dpep_open_regular(const char *path, int64_t max_bytes, int64_t *size, char *why, size_t why_len);
/* The same as a stdio stream ("rb"); NULL with `why` on refusal. */
FILE *dpep_fopen_regular(const char *path, int64_t max_bytes, char *why, size_t why_len);

/* ------------------------------------------------------------------------ */
/* Fault injection for tests (fault.c): with DPEP_FAULT="POINT@RANK=ACTION"  */
/* (actions stop, kill, term, int, exit; RANK * for all), the rank reaching  */
/* dpep_fault(POINT, rank) acts; without it, nothing happens.                */
/* ------------------------------------------------------------------------ */
void dpep_fault(const char *point, int rank);
bool dpep_fault_armed(void);

/* ------------------------------------------------------------------------ */
/* Monotonic clock (CLOCK_MONOTONIC), seconds as a double.                    */
/* ------------------------------------------------------------------------ */
double dpep_clock_s(void);
/* Page faults this process took so far (getrusage's minor + major counts,
 * all threads): the scheduler counts them over its steps, so a summary
 * shows whether the memory the steps use was in place before them. */
int64_t dpep_page_faults(void);

/* ------------------------------------------------------------------------ */
/* Devices and their allocator. Every module allocates its weights,          */
/* activations and scratch through the device of its rank, so a backend's    */
/* memory lives where its kernels run (host memory for the CPU backend,      */
/* device memory for CUDA). `runtime.device` picks the kind; world/ resolves */
/* `auto` to the kind the rank really has.                                   */
/* ------------------------------------------------------------------------ */
typedef enum dpep_device_kind { DPEP_DEVICE_AUTO = 0, DPEP_DEVICE_CPU, DPEP_DEVICE_CUDA } dpep_device_kind;
#define DPEP_DEVICE_KINDS 3

typedef struct dpep_device dpep_device;
/* The allocator of one device kind (base/device.c: cpu; base/vendor_cuda.cu: cuda). */
typedef struct dpep_device_ops {
    const char *name;                                        /* "cpu", "cuda" */
    /* `bytes` (> 0) zeroed, DPEP_ARENA_ALIGN-aligned; *out only on DPEP_OK. */
    dpep_status (*alloc)(const dpep_device *d, size_t bytes, void **out);
    void (*free)(const dpep_device *d, void *p);             /* NULL: no-op   */
    /* Copies between host memory and this device's memory (either way). */
    dpep_status (*to_device)(const dpep_device *d, void *dst, const void *src, size_t bytes);
    dpep_status (*to_host)(const dpep_device *d, void *dst, const void *src, size_t bytes);
} dpep_device_ops;

struct dpep_device {
    dpep_device_kind kind;     /* CPU or CUDA, never AUTO                    */
    int ordinal;               /* CUDA device index, -1 on CPU               */
    const dpep_device_ops *ops;
};

/* "auto", "cpu", "cuda". */
const char *dpep_device_kind_name(dpep_device_kind k);
/* The device of `kind` (CPU, or CUDA device `ordinal`). DPEP_ERR_UNSUPPORTED
 * for CUDA in a build without it, DPEP_ERR_INVALID for AUTO. */
dpep_status dpep_device_get(dpep_device_kind kind, int ordinal, dpep_device *out);
static inline dpep_status dpep_device_alloc(const dpep_device *d, size_t bytes, void **out)
{
    return d->ops->alloc(d, bytes, out);
}
static inline void dpep_device_free(const dpep_device *d, void *p)
{
    if (p) d->ops->free(d, p);
}
/* Asks for transparent huge pages on a CPU block that every step reads
 * whole (the weight arena), before it is written; no-op on other devices,
 * on blocks under 4 MiB and where the kernel has no THP (device.c). */
void dpep_device_advise_streamed(const dpep_device *d, void *p, size_t bytes);
/* Makes the pages of [p, p + bytes) resident now (CPU: MADV_POPULATE_WRITE;
 * without it, kernels before 5.14, a zero byte written per page — so call
 * it on a fresh, zeroed block only), for a block a forward step writes that
 * is sized at create (activations, scratch, exchange buffers): the memory
 * plan is then taken when the engine starts, as device memory is, and a
 * step never pays a first touch (a page fault per 4 KiB, and on a VM that
 * hands freed memory back to its host, a host fault too: measured 2 x 1
 * prefill of 512 tokens 1.2-3.3 s cold against 1.1 s warm). Content is
 * unchanged by the populate path. d NULL: host memory (a block of a device
 * table's host side). Other devices, p NULL or 0 bytes: nothing. Returns
 * whether the pages were made resident. */
bool dpep_device_advise_resident(const dpep_device *d, void *p, size_t bytes);
/* The populate step alone, on host pages of any mapping (private or
 * shared; content unchanged): MADV_POPULATE_WRITE over the pages holding
 * [p, p + bytes). 0, or the errno (EINVAL: a kernel before 5.14). */
int dpep_pages_populate(void *p, size_t bytes);
/* Bytes of [p, p + bytes) this process maps with 2 MiB pages (anonymous
 * THP, or shared memory / file pages mapped by PMD), from /proc/self/smaps
 * (each mapping's huge-page total, counted in proportion to its overlap
 * with the range); -1 when smaps cannot be read. For reports: the weights
 * stream ~10 % slower from 4 KiB shared-memory pages on the 2-core VM. */
int64_t dpep_pages_huge_bytes(const void *p, size_t bytes);

#ifdef __cplusplus
}
#endif
#endif /* DPEP_BASE_H */
