/* comm_mpi.c — the MPI backend of dpep_comm (host memory), the ops table
 * dpep_comm_mpi_ops: MPI collectives when every count fits in an int, chunked
 * collectives and point-to-point rounds beyond that; bf16/f16 sums through
 * user ops that add in fp32. Its state is the comm itself (c->comm and the
 * scratch comm.c sizes at create). */
#include "comm_internal.h"

#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Datatypes and ops, created once per process (refcounted by the comms).    */
/* ------------------------------------------------------------------------ */
static pthread_mutex_t g_types_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_types_refs;
static MPI_Datatype g_bf16_type = MPI_DATATYPE_NULL, g_f16_type = MPI_DATATYPE_NULL;
static MPI_Op g_bf16_sum = MPI_OP_NULL, g_f16_sum = MPI_OP_NULL;

static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return sign | 0x7e00u;  /* NaN */
    if (ax >= 0x477ff000u) return sign | 0x7c00u; /* >= 65520 rounds to inf */
    if (ax < 0x38800000u) {                       /* below 2^-14: subnormal or 0 */
        float af;
        memcpy(&af, &ax, sizeof af);
        /* multiples of 2^-24, rounded to nearest even (default rounding mode);
         * 1024 becomes 0x400, the smallest normal, as it should. */
        return (uint16_t)(sign | (uint16_t)nearbyintf(af * 16777216.0f));
    }
    uint32_t h = ((((ax >> 23) - 127u + 15u) << 10) | ((ax & 0x7fffffu) >> 13));
    uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h++; /* carry may reach inf: right */
    return (uint16_t)(sign | h);
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, u;
    if (e == 0) {
        float f = ldexpf((float)m, -24);
        return sign ? -f : f;
    }
    u = e == 31 ? (sign | 0x7f800000u | (m << 13)) : (sign | ((e - 15u + 127u) << 23) | (m << 13));
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* inout[i] = round(in[i] + inout[i]), the sum formed in fp32. */
static void bf16_sum_fn(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    (void)dt;
    const uint16_t *a = in;
    uint16_t *b = inout;
    for (int i = 0; i < *len; i++)
        b[i] = dpep_comm_f32_to_bf16(dpep_comm_bf16_to_f32(a[i]) + dpep_comm_bf16_to_f32(b[i]));
}

static void f16_sum_fn(void *in, void *inout, int *len, MPI_Datatype *dt)
{
    (void)dt;
    const uint16_t *a = in;
    uint16_t *b = inout;
    for (int i = 0; i < *len; i++) b[i] = f32_to_f16(f16_to_f32(a[i]) + f16_to_f32(b[i]));
}

/* The backend's create: the shared datatypes and ops, made with the first comm. */
static dpep_status mpi_create(dpep_comm *c, void **state)
{
    (void)c;
    *state = NULL;
    dpep_status st = DPEP_OK;
    pthread_mutex_lock(&g_types_lock);
    if (g_types_refs == 0) {
        DPEP_CHECK_MPI_GOTO(MPI_Type_contiguous(2, MPI_BYTE, &g_bf16_type), st, out);
        DPEP_CHECK_MPI_GOTO(MPI_Type_commit(&g_bf16_type), st, out);
        DPEP_CHECK_MPI_GOTO(MPI_Type_contiguous(2, MPI_BYTE, &g_f16_type), st, out);
        DPEP_CHECK_MPI_GOTO(MPI_Type_commit(&g_f16_type), st, out);
        DPEP_CHECK_MPI_GOTO(MPI_Op_create(bf16_sum_fn, 1, &g_bf16_sum), st, out);
        DPEP_CHECK_MPI_GOTO(MPI_Op_create(f16_sum_fn, 1, &g_f16_sum), st, out);
    }
    g_types_refs++;
out:
    pthread_mutex_unlock(&g_types_lock);
    return st;
}

/* Frees them with the last comm. */
static void mpi_destroy(dpep_comm *c)
{
    (void)c;
    pthread_mutex_lock(&g_types_lock);
    if (g_types_refs > 0 && --g_types_refs == 0) {
        MPI_Op_free(&g_bf16_sum);
        MPI_Op_free(&g_f16_sum);
        MPI_Type_free(&g_bf16_type);
        MPI_Type_free(&g_f16_type);
    }
    pthread_mutex_unlock(&g_types_lock);
}

static MPI_Datatype mpi_type(dpep_comm_dtype t)
{
    switch (t) {
    case DPEP_COMM_U8: return MPI_UINT8_T;
    case DPEP_COMM_I32: return MPI_INT32_T;
    case DPEP_COMM_I64: return MPI_INT64_T;
    case DPEP_COMM_F32: return MPI_FLOAT;
    case DPEP_COMM_BF16: return g_bf16_type;
    case DPEP_COMM_F16: return g_f16_type;
    }
    return MPI_DATATYPE_NULL;
}

static MPI_Op mpi_sum(dpep_comm_dtype t)
{
    return t == DPEP_COMM_BF16 ? g_bf16_sum : t == DPEP_COMM_F16 ? g_f16_sum : MPI_SUM;
}

/* Like DPEP_CHECK_MPI, with the comm's name and the collective in the log. */
#define MPI_OK_(c, call)                                                              \
    do {                                                                              \
        int rc_ = (call);                                                             \
        if (rc_ != MPI_SUCCESS) {                                                     \
            char what_[160];                                                          \
            snprintf(what_, sizeof what_, "comm \"%s\": %s", (c)->name, #call);       \
            dpep_check_fail_(__FILE__, __LINE__, what_, dpep_mpi_error_string(rc_));  \
            return DPEP_ERR_MPI;                                                      \
        }                                                                             \
    } while (0)

static inline char *at(void *base, int64_t elems, size_t es)
{
    return (char *)base + (size_t)elems * es;
}

static bool fits(const dpep_comm *c, const int64_t *a)
{
    for (int i = 0; i < c->size; i++)
        if (a[i] > c->int_limit) return false;
    return true;
}

static void to_int(const dpep_comm *c, const int64_t *a, int *out)
{
    for (int i = 0; i < c->size; i++) out[i] = (int)a[i];
}

/* Point-to-point rounds for counts beyond int_limit: round k moves elements
 * [k*chunk, (k+1)*chunk) of every pair's message. Messages between a pair
 * keep their order, so ranks need not agree on the number of rounds. Own
 * block is copied (memmove: allgatherv may pass it in place). Sends come
 * from send + send_displs[p] (send_displs NULL: all from send). */
static dpep_status p2p_rounds(dpep_comm *c, const void *send, const int64_t *send_counts,
                              const int64_t *send_displs, void *recv,
                              const int64_t *recv_counts, const int64_t *recv_displs,
                              dpep_comm_dtype t)
{
    size_t es = dpep_comm_dtype_size(t);
    MPI_Datatype dt = mpi_type(t);
    int64_t chunk = c->int_limit;
    const char *src_me = at((void *)send, send_displs ? send_displs[c->rank] : 0, es);
    char *dst_me = at(recv, recv_displs[c->rank], es);
    if (recv_counts[c->rank] > 0 && src_me != dst_me)
        memmove(dst_me, src_me, (size_t)recv_counts[c->rank] * es);
    for (int64_t k = 0;; k++) {
        int64_t lo = k * chunk;
        int nreq = 0;
        for (int d = 1; d < c->size; d++) {
            /* Spread the order over peers (everyone receives from me-d while
             * sending to me+d) so no rank is the first target of all. */
            int to = (c->rank + d) % c->size, from = (c->rank - d + c->size) % c->size;
            if (recv_counts[from] > lo) {
                int64_t n = recv_counts[from] - lo < chunk ? recv_counts[from] - lo : chunk;
                MPI_OK_(c, MPI_Irecv(at(recv, recv_displs[from] + lo, es), (int)n, dt, from,
                                     DPEP_COMM_TAG_DATA, c->comm, &c->reqs[nreq++]));
            }
            if (send_counts[to] > lo) {
                int64_t n = send_counts[to] - lo < chunk ? send_counts[to] - lo : chunk;
                int64_t off = (send_displs ? send_displs[to] : 0) + lo;
                MPI_OK_(c, MPI_Isend(at((void *)send, off, es), (int)n, dt, to,
                                     DPEP_COMM_TAG_DATA, c->comm, &c->reqs[nreq++]));
            }
        }
        if (nreq == 0) break;
        MPI_OK_(c, MPI_Waitall(nreq, c->reqs, MPI_STATUSES_IGNORE));
    }
    return DPEP_OK;
}

/* Always point-to-point (the linear algorithm Open MPI's alltoallv uses too):
 * whether a count exceeds an int is known only to the two ranks of a pair, so
 * choosing between MPI_Alltoallv and another path per rank would let ranks
 * disagree and hang. The pairwise rounds work for any count. */
static dpep_status mpi_alltoallv(dpep_comm *c, const void *send, const int64_t *send_counts,
                                 const int64_t *send_displs, void *recv,
                                 const int64_t *recv_counts, const int64_t *recv_displs,
                                 dpep_comm_dtype t)
{
    return p2p_rounds(c, send, send_counts, send_displs, recv, recv_counts, recv_displs, t);
}

/* recv_counts are the same on every rank, so the path chosen from them is the
 * same everywhere; displacements are each rank's own and cannot choose it. */
static dpep_status mpi_allgatherv(dpep_comm *c, const void *send, int64_t send_count,
                                  void *recv, const int64_t *recv_counts,
                                  const int64_t *recv_displs, dpep_comm_dtype t)
{
    if (!fits(c, recv_counts)) {
        for (int i = 0; i < c->size; i++) c->l_sc[i] = send_count;
        return p2p_rounds(c, send, c->l_sc, NULL, recv, recv_counts, recv_displs, t);
    }
    if (!fits(c, recv_displs)) {
        /* The other ranks are entering MPI_Allgatherv: this rank's error ends
         * in the watchdog's abort, with this line saying why. */
        DPEP_ERROR("comm \"%s\": allgatherv: counts fit in an int but a displacement "
                   "exceeds %lld elements; unsupported (use counts > INT_MAX or a smaller "
                   "receive layout)", c->name, (long long)c->int_limit);
        return DPEP_ERR_UNSUPPORTED;
    }
    to_int(c, recv_counts, c->rc);
    to_int(c, recv_displs, c->rd);
    MPI_OK_(c, MPI_Allgatherv(send, (int)send_count, mpi_type(t), recv, c->rc, c->rd,
                              mpi_type(t), c->comm));
    return DPEP_OK;
}

static dpep_status mpi_allgather(dpep_comm *c, const void *send, void *recv, int64_t count,
                                 dpep_comm_dtype t)
{
    if (count > c->int_limit || count * (int64_t)c->size > c->int_limit) {
        for (int i = 0; i < c->size; i++) {
            c->l_sc[i] = count;
            c->l_sd[i] = count * i;
        }
        return p2p_rounds(c, send, c->l_sc, NULL, recv, c->l_sc, c->l_sd, t);
    }
    MPI_OK_(c, MPI_Allgather(send, (int)count, mpi_type(t), recv, (int)count, mpi_type(t),
                             c->comm));
    return DPEP_OK;
}

static dpep_status mpi_reduce_scatter(dpep_comm *c, const void *send, void *recv,
                                      int64_t recv_count, dpep_comm_dtype t)
{
    size_t es = dpep_comm_dtype_size(t);
    if (recv_count * (int64_t)c->size <= c->int_limit) {
        MPI_OK_(c, MPI_Reduce_scatter_block(send, recv, (int)recv_count, mpi_type(t),
                                            mpi_sum(t), c->comm));
        return DPEP_OK;
    }
    /* Large: block r of every rank's send buffer is summed onto rank r, one
     * chunk and one root at a time. Slow, but only for beyond-int sizes. */
    for (int64_t lo = 0; lo < recv_count; lo += c->int_limit) {
        int64_t n = recv_count - lo < c->int_limit ? recv_count - lo : c->int_limit;
        for (int r = 0; r < c->size; r++)
            MPI_OK_(c, MPI_Reduce(at((void *)send, (int64_t)r * recv_count + lo, es),
                                  at(recv, lo, es), (int)n, mpi_type(t), mpi_sum(t), r,
                                  c->comm));
    }
    return DPEP_OK;
}

static dpep_status mpi_allreduce(dpep_comm *c, const void *send, void *recv, int64_t count,
                                 dpep_comm_dtype t)
{
    size_t es = dpep_comm_dtype_size(t);
    bool in_place = send == recv;
    for (int64_t lo = 0; lo < count; lo += c->int_limit) {
        int64_t n = count - lo < c->int_limit ? count - lo : c->int_limit;
        MPI_OK_(c, MPI_Allreduce(in_place ? MPI_IN_PLACE : at((void *)send, lo, es),
                                 at(recv, lo, es), (int)n, mpi_type(t), mpi_sum(t), c->comm));
    }
    return DPEP_OK;
}

static dpep_status mpi_bcast(dpep_comm *c, void *buf, int64_t count, dpep_comm_dtype t,
                             int root)
{
    size_t es = dpep_comm_dtype_size(t);
    for (int64_t lo = 0; lo < count; lo += c->int_limit) {
        int64_t n = count - lo < c->int_limit ? count - lo : c->int_limit;
        MPI_OK_(c, MPI_Bcast(at(buf, lo, es), (int)n, mpi_type(t), root, c->comm));
    }
    return DPEP_OK;
}

static dpep_status mpi_barrier(dpep_comm *c)
{
    int rc = MPI_Barrier(c->comm);
    if (rc != MPI_SUCCESS) {
        dpep_check_fail_(__FILE__, __LINE__, "MPI_Barrier(c->comm)", dpep_mpi_error_string(rc));
        return DPEP_ERR_MPI;
    }
    return DPEP_OK;
}

const dpep_comm_ops dpep_comm_mpi_ops = {
    .name = "mpi",
    .host_memory = true,
    .create = mpi_create,
    .destroy = mpi_destroy,
    .abort = NULL, /* MPI_Abort ends the calls in flight */
    .alltoallv = mpi_alltoallv,
    .allgather = mpi_allgather,
    .allgatherv = mpi_allgatherv,
    .reduce_scatter = mpi_reduce_scatter,
    .allreduce = mpi_allreduce,
    .bcast = mpi_bcast,
    .barrier = mpi_barrier,
};
