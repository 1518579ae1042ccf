/* test_comm.c — correctness of every dpep_comm collective, nccl-tests style:
 * each rank builds its send data from a seed of (case, rank, peer, index), so
 * every receiver rebuilds what it should have got and checks every element
 * (and the untouched gaps between blocks). Runs on the world, on each half of
 * a split, on a reversed-order comm and, for MPI, with the large-count paths
 * forced (int limit 7). `--nccl` runs the same on device memory (skips with
 * exit 77 without a GPU per rank); `--staged cpu|cuda` on the mpi-staged
 * backend (the buffers a device's: the CPU's in CI, a GPU's — ranks may
 * share it — on the GPU machine; cuda skips with 77 without a GPU);
 * `--thread-funneled` initializes MPI without
 * MPI_THREAD_MULTIPLE (watchdog disabled). Prints "N passed, M failed". */
#include "dpep_comm.h"
#include "dpep_world.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef DPEP_HAVE_CUDA
#include <cuda_runtime.h>
#endif

static dpep_comm_backend g_backend = DPEP_COMM_MPI;
static dpep_device g_sdev;  /* the staged backend's device */
static int g_on_gpu;        /* buffers are device memory: nccl, or staged on cuda */
static int g_wrank;
static int g_pass, g_fail; /* cases counted on comm rank 0 */
static int g_msgs;         /* failure lines printed by this rank */

/* ---- memory: host for MPI, device for NCCL ---- */
static void *dev_alloc(size_t bytes)
{
    if (bytes == 0) bytes = 1;
#ifdef DPEP_HAVE_CUDA
    if (g_on_gpu) {
        void *p = NULL;
        if (cudaMalloc(&p, bytes) != cudaSuccess) abort();
        return p;
    }
#endif
    void *p = malloc(bytes);
    if (!p) abort();
    return p;
}
static void dev_free(void *p)
{
#ifdef DPEP_HAVE_CUDA
    if (g_on_gpu) {
        cudaFree(p);
        return;
    }
#endif
    free(p);
}
static void to_dev(void *d, const void *h, size_t bytes)
{
    if (!bytes) return;
#ifdef DPEP_HAVE_CUDA
    if (g_on_gpu) {
        if (cudaMemcpy(d, h, bytes, cudaMemcpyHostToDevice) != cudaSuccess) abort();
        return;
    }
#endif
    memcpy(d, h, bytes);
}
static void to_host(void *h, const void *d, size_t bytes)
{
    if (!bytes) return;
#ifdef DPEP_HAVE_CUDA
    if (g_on_gpu) {
        if (cudaMemcpy(h, d, bytes, cudaMemcpyDeviceToHost) != cudaSuccess) abort();
        return;
    }
#endif
    memcpy(h, d, bytes);
}

/* ---- data ---- */
static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}
static uint64_t seed(int kase, int src, int dst, int64_t i)
{
    return mix(((uint64_t)kase << 48) ^ ((uint64_t)src << 36) ^ ((uint64_t)dst << 24) ^
               (uint64_t)i);
}
/* Bit pattern for data-movement tests (any bits will do; no NaN concerns as
 * elements are compared with memcmp). */
static void put_bits(dpep_comm_dtype t, void *base, int64_t i, uint64_t v)
{
    size_t es = dpep_comm_dtype_size(t);
    memcpy((char *)base + (size_t)i * es, &v, es); /* little-endian low bytes */
}
/* Small integer in [-8, 8) with 1/16 steps, exact in every dtype we sum. */
static double small_val(uint64_t v, dpep_comm_dtype t)
{
    if (t == DPEP_COMM_U8) return (double)(v % 8);
    if (t == DPEP_COMM_I32 || t == DPEP_COMM_I64) return (double)((int64_t)(v % 2001) - 1000);
    return ((double)(v % 256) - 128.0) / 16.0;
}
static void put_num(dpep_comm_dtype t, void *base, int64_t i, double x)
{
    switch (t) {
    case DPEP_COMM_U8: ((uint8_t *)base)[i] = (uint8_t)x; break;
    case DPEP_COMM_I32: ((int32_t *)base)[i] = (int32_t)x; break;
    case DPEP_COMM_I64: ((int64_t *)base)[i] = (int64_t)x; break;
    case DPEP_COMM_F32: ((float *)base)[i] = (float)x; break;
    case DPEP_COMM_BF16: ((uint16_t *)base)[i] = dpep_comm_f32_to_bf16((float)x); break;
    case DPEP_COMM_F16: {
        /* x is a multiple of 1/16 with |x| <= 8: exact in half; build it by hand. */
        float f = (float)x;
        uint32_t u;
        memcpy(&u, &f, 4);
        uint16_t h = 0;
        if (f != 0) {
            uint32_t e = ((u >> 23) & 0xff) - 127 + 15;
            h = (uint16_t)(((u >> 16) & 0x8000) | (e << 10) | ((u & 0x7fffff) >> 13));
        }
        ((uint16_t *)base)[i] = h;
        break;
    }
    }
}
static double get_num(dpep_comm_dtype t, const void *base, int64_t i)
{
    switch (t) {
    case DPEP_COMM_U8: return ((const uint8_t *)base)[i];
    case DPEP_COMM_I32: return ((const int32_t *)base)[i];
    case DPEP_COMM_I64: return (double)((const int64_t *)base)[i];
    case DPEP_COMM_F32: return ((const float *)base)[i];
    case DPEP_COMM_BF16: return dpep_comm_bf16_to_f32(((const uint16_t *)base)[i]);
    case DPEP_COMM_F16: {
        uint16_t h = ((const uint16_t *)base)[i];
        int e = (h >> 10) & 0x1f, m = h & 0x3ff;
        double v = e == 0 ? ldexp(m, -24) : e == 31 ? INFINITY : ldexp(1024 + m, e - 25);
        return (h & 0x8000) ? -v : v;
    }
    }
    return 0;
}

/* Tolerance of a sum of n terms with absolute sum `abs_sum` in dtype t:
 * integers and f32 (small integers / 1/16 steps) are exact; bf16 and f16 are
 * rounded after each pairwise add, so the recursive-summation bound
 * (n-1) * u * sum|x| applies, u = 2^-8 (bf16) or 2^-11 (f16); we allow n*u. */
static double tolerance(dpep_comm_dtype t, int n, double abs_sum)
{
    if (t == DPEP_COMM_BF16) return n * ldexp(1, -8) * abs_sum;
    if (t == DPEP_COMM_F16) return n * ldexp(1, -11) * abs_sum;
    return 0;
}

/* ---- case bookkeeping: a case passes when it passes on every rank ---- */
static void report(dpep_comm *c, const char *what, int bad)
{
    int any = 0;
    MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, dpep_comm_mpi(c));
    if (dpep_comm_rank(c) == 0) {
        if (any) {
            g_fail++;
            printf("FAIL [%s/%s size %d] %s\n", dpep_comm_name(c),
                   dpep_comm_backend_name(g_backend), dpep_comm_size(c), what);
        } else {
            g_pass++;
        }
    }
}
#define MISMATCH(...)                                                                \
    do {                                                                             \
        if (g_msgs++ < 20) {                                                         \
            printf("  world rank %d: ", g_wrank);                                    \
            printf(__VA_ARGS__);                                                     \
            printf("\n");                                                            \
        }                                                                            \
    } while (0)

static const uint8_t SENTINEL = 0xA5;

static bool is_sentinel(const void *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (((const uint8_t *)p)[i] != SENTINEL) return false;
    return true;
}

/* ---- alltoallv ---- */
enum { A2A_UNIFORM, A2A_SKEWED, A2A_ZERO_SENDER, A2A_TO_ONE, A2A_EMPTY, A2A_BIG, A2A_N };
static const char *const k_a2a_name[] = {"uniform", "skewed", "rank0-sends-nothing",
                                         "all-to-last", "all-empty", "big"};
static int64_t a2a_count(int scheme, int src, int dst, int size)
{
    switch (scheme) {
    case A2A_UNIFORM: return 5;
    case A2A_SKEWED: return ((src * 7 + dst * 3) % 5) * (1 + src);
    case A2A_ZERO_SENDER: return src == 0 ? 0 : 1 + (src + dst) % 4;
    case A2A_TO_ONE: return dst == size - 1 ? 3 * (src + 1) : 0;
    case A2A_EMPTY: return 0;
    case A2A_BIG: return 1500 + 37 * src + 11 * dst;
    }
    return 0;
}

static void test_alltoallv(dpep_comm *c, int scheme, dpep_comm_dtype t, int kase)
{
    int n = dpep_comm_size(c), me = dpep_comm_rank(c);
    size_t es = dpep_comm_dtype_size(t);
    int64_t *sc = calloc(n, 8), *sd = calloc(n, 8), *rc = calloc(n, 8), *rd = calloc(n, 8);
    int64_t stot = 0, rtot = 0;
    for (int p = 0; p < n; p++) {
        /* one-element gap after every send block, two after every recv block */
        sc[p] = a2a_count(scheme, me, p, n);
        sd[p] = stot;
        stot += sc[p] + 1;
        rc[p] = a2a_count(scheme, p, me, n);
        rd[p] = rtot;
        rtot += rc[p] + 2;
    }
    char *hs = malloc(stot * es + 1), *hr = malloc(rtot * es + 1);
    memset(hs, SENTINEL, stot * es);
    for (int p = 0; p < n; p++)
        for (int64_t i = 0; i < sc[p]; i++) put_bits(t, hs, sd[p] + i, seed(kase, me, p, i));
    void *ds = dev_alloc(stot * es), *dr = dev_alloc(rtot * es);
    to_dev(ds, hs, stot * es);
    memset(hr, SENTINEL, rtot * es);
    to_dev(dr, hr, rtot * es);
    dpep_status st = dpep_comm_alltoallv(c, ds, sc, sd, dr, rc, rd, t);
    to_host(hr, dr, rtot * es);
    int bad = st != DPEP_OK;
    if (bad) MISMATCH("alltoallv returned %s", dpep_status_string(st));
    char ebuf[8];
    for (int p = 0; p < n && !bad; p++) {
        for (int64_t i = 0; i < rc[p]; i++) {
            put_bits(t, ebuf, 0, seed(kase, p, me, i));
            if (memcmp(hr + (rd[p] + i) * es, ebuf, es) != 0) {
                MISMATCH("alltoallv %s %s: from %d elem %lld wrong", k_a2a_name[scheme],
                         dpep_comm_dtype_name(t), p, (long long)i);
                bad = 1;
                break;
            }
        }
        if (!is_sentinel(hr + (rd[p] + rc[p]) * es, 2 * es)) {
            MISMATCH("alltoallv %s: gap after block from %d overwritten", k_a2a_name[scheme], p);
            bad = 1;
        }
    }
    char what[96];
    snprintf(what, sizeof what, "alltoallv %s %s", k_a2a_name[scheme], dpep_comm_dtype_name(t));
    report(c, what, bad);
    dev_free(ds);
    dev_free(dr);
    free(hs);
    free(hr);
    free(sc);
    free(sd);
    free(rc);
    free(rd);
}

/* ---- allgather / allgatherv ---- */
static void test_allgather(dpep_comm *c, int64_t count, dpep_comm_dtype t, int kase)
{
    int n = dpep_comm_size(c), me = dpep_comm_rank(c);
    size_t es = dpep_comm_dtype_size(t);
    char *hs = malloc(count * es + 1), *hr = malloc(n * count * es + 1);
    for (int64_t i = 0; i < count; i++) put_bits(t, hs, i, seed(kase, me, 0, i));
    void *ds = dev_alloc(count * es), *dr = dev_alloc(n * count * es);
    to_dev(ds, hs, count * es);
    dpep_status st = dpep_comm_allgather(c, ds, dr, count, t);
    to_host(hr, dr, n * count * es);
    int bad = st != DPEP_OK;
    char ebuf[8];
    for (int r = 0; r < n && !bad; r++)
        for (int64_t i = 0; i < count; i++) {
            put_bits(t, ebuf, 0, seed(kase, r, 0, i));
            if (memcmp(hr + (r * count + i) * es, ebuf, es) != 0) {
                MISMATCH("allgather: block %d elem %lld wrong", r, (long long)i);
                bad = 1;
                break;
            }
        }
    char what[96];
    snprintf(what, sizeof what, "allgather count %lld %s", (long long)count,
             dpep_comm_dtype_name(t));
    report(c, what, bad);
    dev_free(ds);
    dev_free(dr);
    free(hs);
    free(hr);
}

enum { AGV_ODD_ONLY, AGV_ROOT0_ONLY, AGV_EMPTY, AGV_RAMP, AGV_N };
static const char *const k_agv_name[] = {"odd-ranks-only", "rank0-only", "all-empty", "ramp"};
static int64_t agv_count(int scheme, int r)
{
    switch (scheme) {
    case AGV_ODD_ONLY: return r % 2 ? 3 + r : 0;
    case AGV_ROOT0_ONLY: return r == 0 ? 40 : 0;
    case AGV_EMPTY: return 0;
    case AGV_RAMP: return 100 + 13 * r;
    }
    return 0;
}

static void test_allgatherv(dpep_comm *c, int scheme, dpep_comm_dtype t, int kase)
{
    int n = dpep_comm_size(c), me = dpep_comm_rank(c);
    size_t es = dpep_comm_dtype_size(t);
    int64_t *rc = calloc(n, 8), *rd = calloc(n, 8), tot = 0;
    for (int r = 0; r < n; r++) {
        rc[r] = agv_count(scheme, r);
        rd[r] = tot;
        tot += rc[r] + 1; /* one-element gap */
    }
    int64_t cnt = rc[me];
    char *hs = malloc(cnt * es + 1), *hr = malloc(tot * es + 1);
    for (int64_t i = 0; i < cnt; i++) put_bits(t, hs, i, seed(kase, me, 0, i));
    void *ds = dev_alloc(cnt * es), *dr = dev_alloc(tot * es);
    to_dev(ds, hs, cnt * es);
    memset(hr, SENTINEL, tot * es);
    to_dev(dr, hr, tot * es);
    dpep_status st = dpep_comm_allgatherv(c, ds, cnt, dr, rc, rd, t);
    to_host(hr, dr, tot * es);
    int bad = st != DPEP_OK;
    char ebuf[8];
    for (int r = 0; r < n && !bad; r++) {
        for (int64_t i = 0; i < rc[r]; i++) {
            put_bits(t, ebuf, 0, seed(kase, r, 0, i));
            if (memcmp(hr + (rd[r] + i) * es, ebuf, es) != 0) {
                MISMATCH("allgatherv %s: block %d elem %lld wrong", k_agv_name[scheme], r,
                         (long long)i);
                bad = 1;
                break;
            }
        }
        if (!is_sentinel(hr + (rd[r] + rc[r]) * es, es)) {
            MISMATCH("allgatherv %s: gap after block %d overwritten", k_agv_name[scheme], r);
            bad = 1;
        }
    }
    char what[96];
    snprintf(what, sizeof what, "allgatherv %s %s", k_agv_name[scheme], dpep_comm_dtype_name(t));
    report(c, what, bad);
    dev_free(ds);
    dev_free(dr);
    free(hs);
    free(hr);
    free(rc);
    free(rd);
}

/* ---- reductions ---- */
/* Checks got[i] against the fp64 sum over ranks of small_val(seed(kase, r, blk, off+i)). */
static int check_sum(dpep_comm *c, const char *op, const void *got, int64_t count, int blk,
                     int64_t off, dpep_comm_dtype t, int kase)
{
    int n = dpep_comm_size(c);
    for (int64_t i = 0; i < count; i++) {
        double ref = 0, abs_sum = 0;
        for (int r = 0; r < n; r++) {
            char tmp[8];
            put_num(t, tmp, 0, small_val(seed(kase, r, blk, off + i), t));
            double x = get_num(t, tmp, 0); /* the input as the dtype holds it */
            ref += x;
            abs_sum += fabs(x);
        }
        if (t == DPEP_COMM_U8) ref = fmod(ref, 256.0);
        double g = get_num(t, got, i);
        if (!(fabs(g - ref) <= tolerance(t, n, abs_sum))) {
            MISMATCH("%s %s: elem %lld = %.9g, expected %.9g (tol %.3g)", op,
                     dpep_comm_dtype_name(t), (long long)(off + i), g, ref,
                     tolerance(t, n, abs_sum));
            return 1;
        }
    }
    return 0;
}

static void test_allreduce(dpep_comm *c, int64_t count, dpep_comm_dtype t, bool in_place,
                           int kase)
{
    int me = dpep_comm_rank(c);
    size_t es = dpep_comm_dtype_size(t);
    char *hs = malloc(count * es + 1), *hr = malloc(count * es + 1);
    for (int64_t i = 0; i < count; i++) put_num(t, hs, i, small_val(seed(kase, me, 0, i), t));
    void *ds = dev_alloc(count * es), *dr = in_place ? ds : dev_alloc(count * es);
    to_dev(ds, hs, count * es);
    dpep_status st = dpep_comm_allreduce(c, ds, dr, count, t);
    to_host(hr, dr, count * es);
    int bad = st != DPEP_OK;
    if (!bad) bad = check_sum(c, "allreduce", hr, count, 0, 0, t, kase);
    char what[96];
    snprintf(what, sizeof what, "allreduce count %lld %s%s", (long long)count,
             dpep_comm_dtype_name(t), in_place ? " in-place" : "");
    report(c, what, bad);
    dev_free(ds);
    if (!in_place) dev_free(dr);
    free(hs);
    free(hr);
}

static void test_reduce_scatter(dpep_comm *c, int64_t count, dpep_comm_dtype t, int kase)
{
    int n = dpep_comm_size(c), me = dpep_comm_rank(c);
    size_t es = dpep_comm_dtype_size(t);
    char *hs = malloc(n * count * es + 1), *hr = malloc(count * es + 1);
    /* block b of my send buffer: values seeded by (me, b, i) */
    for (int b = 0; b < n; b++)
        for (int64_t i = 0; i < count; i++)
            put_num(t, hs, b * count + i, small_val(seed(kase, me, b, i), t));
    void *ds = dev_alloc(n * count * es), *dr = dev_alloc(count * es);
    to_dev(ds, hs, n * count * es);
    dpep_status st = dpep_comm_reduce_scatter(c, ds, dr, count, t);
    to_host(hr, dr, count * es);
    int bad = st != DPEP_OK;
    if (!bad) bad = check_sum(c, "reduce_scatter", hr, count, me, 0, t, kase);
    char what[96];
    snprintf(what, sizeof what, "reduce_scatter count %lld %s", (long long)count,
             dpep_comm_dtype_name(t));
    report(c, what, bad);
    dev_free(ds);
    dev_free(dr);
    free(hs);
    free(hr);
}

static void test_bcast(dpep_comm *c, int64_t count, dpep_comm_dtype t, int root, int kase)
{
    int me = dpep_comm_rank(c);
    size_t es = dpep_comm_dtype_size(t);
    char *h = malloc(count * es + 1);
    if (me == root)
        for (int64_t i = 0; i < count; i++) put_bits(t, h, i, seed(kase, root, 0, i));
    else
        memset(h, SENTINEL, count * es);
    void *d = dev_alloc(count * es);
    to_dev(d, h, count * es);
    dpep_status st = dpep_comm_bcast(c, d, count, t, root);
    to_host(h, d, count * es);
    int bad = st != DPEP_OK;
    char ebuf[8];
    for (int64_t i = 0; i < count && !bad; i++) {
        put_bits(t, ebuf, 0, seed(kase, root, 0, i));
        if (memcmp(h + i * es, ebuf, es) != 0) {
            MISMATCH("bcast root %d: elem %lld wrong", root, (long long)i);
            bad = 1;
        }
    }
    char what[96];
    snprintf(what, sizeof what, "bcast root %d count %lld %s", root, (long long)count,
             dpep_comm_dtype_name(t));
    report(c, what, bad);
    dev_free(d);
    free(h);
}

static void test_barrier_and_errors(dpep_comm *c)
{
    uint64_t s0 = dpep_comm_seq(c);
    int bad = 0;
    for (int i = 0; i < 3; i++) bad |= dpep_comm_barrier(c) != DPEP_OK;
    if (dpep_comm_seq(c) != s0 + 3) {
        MISMATCH("barrier: seq %llu, expected %llu", (unsigned long long)dpep_comm_seq(c),
                 (unsigned long long)(s0 + 3));
        bad = 1;
    }
    report(c, "barrier x3 and sequence numbers", bad);

    /* Bad arguments are refused locally (every rank alike), before any MPI call. */
    bad = 0;
    if (dpep_comm_rank(c) == 0)
        printf("[%s] 3 ERROR lines per rank expected next (bad root, count, dtype)\n",
               dpep_comm_name(c));
    fflush(stdout);
    char buf[8];
    bad |= dpep_comm_bcast(c, buf, 1, DPEP_COMM_U8, dpep_comm_size(c)) != DPEP_ERR_INVALID;
    bad |= dpep_comm_allreduce(c, buf, buf, -1, DPEP_COMM_F32) != DPEP_ERR_INVALID;
    bad |= dpep_comm_allreduce(c, buf, buf, 1, (dpep_comm_dtype)42) != DPEP_ERR_INVALID;
    bad |= dpep_comm_seq(c) != s0 + 3;
    report(c, "invalid arguments refused (DPEP_ERR_INVALID, no collective entered)", bad);
}

static const dpep_comm_dtype k_move_types[] = {DPEP_COMM_U8, DPEP_COMM_I32, DPEP_COMM_I64,
                                               DPEP_COMM_F32, DPEP_COMM_BF16, DPEP_COMM_F16};
static const dpep_comm_dtype k_sum_types[] = {DPEP_COMM_U8, DPEP_COMM_I32, DPEP_COMM_I64,
                                              DPEP_COMM_F32, DPEP_COMM_BF16, DPEP_COMM_F16};

static void suite(dpep_comm *c)
{
    int kase = 1;
    for (int s = 0; s < A2A_N; s++)
        for (size_t k = 0; k < sizeof k_move_types / sizeof k_move_types[0]; k++)
            if (s != A2A_BIG || k_move_types[k] == DPEP_COMM_F32 ||
                k_move_types[k] == DPEP_COMM_BF16)
                test_alltoallv(c, s, k_move_types[k], kase++);
    const int64_t ag_counts[] = {0, 1, 17, 1000};
    for (size_t i = 0; i < 4; i++) {
        test_allgather(c, ag_counts[i], DPEP_COMM_I32, kase++);
        test_allgather(c, ag_counts[i], DPEP_COMM_BF16, kase++);
    }
    for (int s = 0; s < AGV_N; s++) {
        test_allgatherv(c, s, DPEP_COMM_U8, kase++);
        test_allgatherv(c, s, DPEP_COMM_F32, kase++);
    }
    const int64_t red_counts[] = {0, 1, 33, 1024};
    for (size_t i = 0; i < 4; i++)
        for (size_t k = 0; k < sizeof k_sum_types / sizeof k_sum_types[0]; k++) {
            test_allreduce(c, red_counts[i], k_sum_types[k], false, kase++);
            test_reduce_scatter(c, red_counts[i], k_sum_types[k], kase++);
        }
    test_allreduce(c, 333, DPEP_COMM_F32, true, kase++);
    test_allreduce(c, 333, DPEP_COMM_BF16, true, kase++);
    for (int root = 0; root < dpep_comm_size(c); root++) {
        test_bcast(c, 0, DPEP_COMM_I64, root, kase++);
        test_bcast(c, 100, DPEP_COMM_I64, root, kase++);
        test_bcast(c, 37, DPEP_COMM_BF16, root, kase++);
    }
    test_barrier_and_errors(c);
}

static int run_on(MPI_Comm parent, const char *name, int64_t int_limit)
{
    dpep_comm *c = NULL;
    dpep_status st = dpep_comm_create_on(parent, name, g_backend, &g_sdev, 60.0, &c);
    if (st != DPEP_OK) {
        printf("FAIL: world rank %d: dpep_comm_create(%s) -> %s\n", g_wrank, name,
               dpep_status_string(st));
        return 1;
    }
    if (int_limit > 0) dpep_comm_set_int_limit(c, int_limit);
    suite(c);
    dpep_comm_destroy(c);
    return 0;
}

int main(int argc, char **argv)
{
    int want_thread = MPI_THREAD_MULTIPLE;
    const char *staged = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--nccl") == 0) {
            g_backend = DPEP_COMM_NCCL;
            g_on_gpu = 1;
        } else if (strcmp(argv[i], "--staged") == 0 && i + 1 < argc &&
                   (strcmp(argv[i + 1], "cpu") == 0 || strcmp(argv[i + 1], "cuda") == 0)) {
            g_backend = DPEP_COMM_STAGED;
            staged = argv[++i];
            g_on_gpu = strcmp(staged, "cuda") == 0;
        } else if (strcmp(argv[i], "--thread-funneled") == 0) {
            want_thread = MPI_THREAD_FUNNELED; /* watchdog off: warns once */
        } else {
            fprintf(stderr, "usage: %s [--nccl | --staged cpu|cuda] [--thread-funneled]\n",
                    argv[0]);
            return 2;
        }
    }
    if (dpep_device_get(DPEP_DEVICE_CPU, -1, &g_sdev) != DPEP_OK) return 1;
    if (g_backend == DPEP_COMM_STAGED && g_on_gpu) {
        int ndev = 0;
        char why[256] = "";
        if (dpep_cuda_device_count(&ndev, why, sizeof why) != DPEP_OK) {
            printf("SKIP: %s\n", why);
            return 77;
        }
    }
    if (g_backend == DPEP_COMM_NCCL) {
        /* Decided before MPI so a CPU-only machine skips cleanly. */
        int ndev = 0;
        char why[256] = "";
        if (!dpep_comm_backend_available(DPEP_COMM_NCCL)) {
            printf("SKIP: NCCL backend not built (no CUDA in this build)\n");
            return 77;
        }
        if (dpep_cuda_device_count(&ndev, why, sizeof why) != DPEP_OK) {
            printf("SKIP: %s\n", why);
            return 77;
        }
    }
    int provided = 0;
    MPI_Init_thread(&argc, &argv, want_thread, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_wrank);
    int wsize = 1;
    MPI_Comm_size(MPI_COMM_WORLD, &wsize);
    dpep_log_init();
    dpep_log_set_rank(g_wrank);

    if (g_backend == DPEP_COMM_NCCL) {
        /* One GPU per rank: NCCL refuses two ranks of a comm on one device. */
        MPI_Comm node;
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
        int lrank = 0, lsize = 1, ndev = 0, short_ = 0, any = 0;
        char why[256];
        MPI_Comm_rank(node, &lrank);
        MPI_Comm_size(node, &lsize);
        MPI_Comm_free(&node);
        dpep_cuda_device_count(&ndev, why, sizeof why);
        short_ = ndev < lsize;
        MPI_Allreduce(&short_, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        if (any) {
            if (g_wrank == 0)
                printf("SKIP: %d ranks per node but %d GPU(s); NCCL needs one GPU per rank\n",
                       lsize, ndev);
            MPI_Finalize();
            return 77;
        }
        dpep_cuda_set_device(lrank);
    }
    if (g_backend == DPEP_COMM_STAGED && g_on_gpu) {
        /* ranks may share a GPU: local rank mod the GPUs */
        MPI_Comm node;
        MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
        int lrank = 0, ndev = 1;
        char why[256];
        MPI_Comm_rank(node, &lrank);
        MPI_Comm_free(&node);
        dpep_cuda_device_count(&ndev, why, sizeof why);
        dpep_cuda_set_device(lrank % ndev);
        if (dpep_device_get(DPEP_DEVICE_CUDA, lrank % ndev, &g_sdev) != DPEP_OK) {
            printf("FAIL: world rank %d: no CUDA device %d\n", g_wrank, lrank % ndev);
            MPI_Finalize();
            return 1;
        }
    }

    int setup_fail = 0;
    setup_fail |= run_on(MPI_COMM_WORLD, "world", 0);
    /* Two halves, each its own comm (sizes differ when wsize is odd). */
    MPI_Comm half, rev;
    MPI_Comm_split(MPI_COMM_WORLD, g_wrank < (wsize + 1) / 2, g_wrank, &half);
    setup_fail |= run_on(half, "half", 0);
    MPI_Comm_free(&half);
    /* Reversed rank order: comm rank != world rank. */
    MPI_Comm_split(MPI_COMM_WORLD, 0, wsize - g_wrank, &rev);
    setup_fail |= run_on(rev, "reversed", 0);
    MPI_Comm_free(&rev);
    /* Large-count paths (chunked collectives, point-to-point rounds). */
    if (g_backend != DPEP_COMM_NCCL) setup_fail |= run_on(MPI_COMM_WORLD, "world-int-limit-7", 7);

    /* Cases were counted on each comm's rank 0; sum over the world. */
    int mine[3] = {g_pass, g_fail, setup_fail}, tot[3] = {0, 0, 0};
    MPI_Reduce(mine, tot, 3, MPI_INT, MPI_SUM, 0, MPI_COMM_WORLD);
    MPI_Bcast(tot, 3, MPI_INT, 0, MPI_COMM_WORLD);
    if (g_wrank == 0) {
        printf("%d passed, %d failed\n", tot[0], tot[1] + tot[2]);
        fflush(stdout);
    }
    MPI_Finalize();
    return tot[1] + tot[2] ? 1 : 0;
}
