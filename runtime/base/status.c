/* status.c — the project's status strings, exit codes, CHECK failure report
 * and the diagnostics list used for user-input errors. */
#include "dpep_base.h"

#include <errno.h>
#include <mpi.h>
#include <stdarg.h>
#include <string.h>

const char *dpep_status_string(dpep_status st)
{
    switch (st) {
    case DPEP_OK: return "ok";
    case DPEP_ERR_INVALID: return "invalid input";
    case DPEP_ERR_USAGE: return "usage error";
    case DPEP_ERR_NOMEM: return "out of memory";
    case DPEP_ERR_IO: return "I/O error";
    case DPEP_ERR_MPI: return "MPI error";
    case DPEP_ERR_CUDA: return "CUDA error";
    case DPEP_ERR_NCCL: return "NCCL error";
    case DPEP_ERR_CUBLAS: return "cuBLAS error";
    case DPEP_ERR_TIMEOUT: return "timeout";
    case DPEP_ERR_UNSUPPORTED: return "unsupported";
    case DPEP_ERR_NO_DEVICE: return "no device";
    case DPEP_ERR_INTERNAL: return "internal error";
    case DPEP_ERR_INCOMPLETE: return "not every request was served";
    case DPEP_ERR_STOPPED: return "stopped by a signal";
    }
    return "unknown status";
}

int dpep_status_exit_code(dpep_status st)
{
    if (st == DPEP_OK) return 0;
    if (st == DPEP_ERR_INVALID || st == DPEP_ERR_USAGE) return 2;
    if (st == DPEP_ERR_INCOMPLETE) return 3;
    if (st == DPEP_ERR_STOPPED) return 4;
    return 1;
}

void dpep_check_fail_(const char *file, int line, const char *call, const char *err)
{
    const char *base = strrchr(file, '/');
    dpep_log(DPEP_LOG_ERROR, "%s:%d %s -> %s", base ? base + 1 : file, line, call, err);
}

const char *dpep_errno_string(void)
{
    return strerror(errno);
}

const char *dpep_mpi_error_string(int code)
{
    /* One buffer per thread: the string is used immediately by the caller. */
    static _Thread_local char buf[MPI_MAX_ERROR_STRING + 32];
    int len = 0, initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized && MPI_Error_string(code, buf, &len) == MPI_SUCCESS) return buf;
    snprintf(buf, sizeof buf, "MPI error code %d", code);
    return buf;
}

void dpep_diag_init(dpep_diag *d)
{
    memset(d, 0, sizeof *d);
}

void dpep_diag_add(dpep_diag *d, dpep_diag_kind kind, const char *fmt, ...)
{
    if (kind == DPEP_DIAG_ERROR) d->n_errors++;
    else d->n_notes++;
    if (d->n >= DPEP_DIAG_MAX) {
        d->dropped++;
        return;
    }
    d->item[d->n].kind = kind;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->item[d->n].msg, DPEP_DIAG_MSG, fmt, ap);
    va_end(ap);
    d->n++;
}

void dpep_diag_print(const dpep_diag *d, FILE *f)
{
    /* Errors print as they are ("FILE:LINE:COL: key: …", like a compiler's);
     * notes carry a prefix so that they are not mistaken for errors. */
    for (int i = 0; i < d->n; i++)
        fprintf(f, "%s%s\n", d->item[i].kind == DPEP_DIAG_ERROR ? "" : "note: ",
                d->item[i].msg);
    if (d->dropped) fprintf(f, "… and %d more message(s) not shown\n", d->dropped);
}

const char *dpep_diag_find(const dpep_diag *d, const char *needle)
{
    for (int i = 0; i < d->n; i++)
        if (d->item[i].kind == DPEP_DIAG_ERROR && strstr(d->item[i].msg, needle))
            return d->item[i].msg;
    return NULL;
}
