/* moe_perf.c — dpep_moe_perf: the MoE layer's data movement and expert FFN,
 * in nccl-tests' columns, each beside a baseline measured in the same run.
 *
 *   mpiexec -n EP dpep_moe_perf comm [-t 128,512] [-H 2048,7168] [-E 256] [-k 8]
 *                                    [-w 1] [-n 3] [-M 12] [-d 1]
 *   dpep_moe_perf ffn [-H 2048] [-I 1408] [-x 8] [-t 64,256,1024] [-w 1] [-n 3]
 *
 * comm: per (tokens per rank, hidden) with random top-k routing (uniform over
 * E experts, seeded per rank), times on the EP comm:
 *   disp-shm   dpep_moe_dispatch, alltoall backend, transport auto (shm when
 *              the ranks share a node): [x | slot ids | weights] rows written
 *              straight into the destinations' node-shared segments + a fence
 *   comb-shm   dpep_moe_combine: a fence + one pass reading the partial sums
 *              from the segments they were written to
 *   disp-mpi   the same over MPI: count exchange + packing pass +
 *              dpep_comm_alltoallv
 *   comb-mpi   dpep_comm_alltoallv back + summation pass
 *   a2av       dpep_comm_alltoallv alone with dispatch's byte counts
 *   counts     dispatch's count exchange alone (one int64 per peer)
 *   memcpy     one memcpy of dispatch's send bytes (the least a packing
 *              pass costs; no raw baseline)
 *   ag-disp    dpep_moe_dispatch, allgather backend (count + MPI allgather)
 *   ag-comb    dpep_moe_combine, allgather backend (reduce-scatter)
 * and for each the raw MPI call with the same per-peer byte counts
 * (MPI_Alltoallv / MPI_Allgather / MPI_Reduce_scatter_block).
 * size = mean bytes a rank sends (for ag-*: a rank's allgather/reduce-scatter
 * buffer); time = median over iterations of the op's wall time (one node:
 * last rank's end - first rank's start after a barrier, which counts ranks
 * sharing a core one after the other; several nodes: the slowest rank's own
 * time), every stage timed next to its baseline in the same iteration;
 * algbw = size/time; busbw = algbw*(n-1)/n; ratio = raw time / dpep time
 * (>= 0.95 is the goal). -d 1 makes only the alltoall context with the
 * default transport (disp/comb, a2av, counts, memcpy rows), so that larger
 * cells fit in memory. #wrong: the layer runs with identity experts, so each
 * rank rebuilds the expected output x * sum(w) of its own tokens and counts the
 * elements off by more than 1e-5 (relative); raw rows print N/A.
 *
 * ffn: one rank, dpep_moe_run_experts (routed SwiGLU experts) on T tokens
 * spread evenly over x experts, GFLOP/s against one cblas_sgemm of the
 * gate-projection shape (tokens per expert x I x H) in the same run.
 *
 * Exit code: 0 all correct, 1 a wrong element or a failed call, 2 usage. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cblas.h>
#include <mpi.h>

#include "dpep_moe.h"

#define MAXL 16

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float rng_unit(uint64_t *s) { return (float)((rng_next(s) >> 40) * (1.0 / 16777216.0)); }

static int parse_list(const char *s, long *v)
{
    int n = 0;
    while (*s && n < MAXL) {
        char *end;
        v[n++] = strtol(s, &end, 10);
        if (*end == 'K' || *end == 'k') v[n - 1] *= 1024, end++;
        if (*end != ',' && *end) return -1;
        s = *end ? end + 1 : end;
    }
    return n;
}

typedef struct opts {
    long tok[MAXL], hid[MAXL];
    int n_tok, n_hid;
    int E, k, inter, x, warm, iters;
    int only_default;           /* -d 1: alltoall with the default transport only */
    double mem_gb;
} opts;

static int g_rank, g_size;

static double tsum(double t)
{
    double r;
    MPI_Allreduce(&t, &r, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    return r;
}

static void row(const char *op, long T, long H, double bytes, double t, double t_raw, long wrong)
{
    if (g_rank) return;
    int n = g_size;
    double alg = t > 0 ? bytes / t / 1e9 : 0, bus = alg * (n - 1) / n;
    double ralg = t_raw > 0 ? bytes / t_raw / 1e9 : 0, rbus = ralg * (n - 1) / n;
    char w[32];
    if (wrong < 0) snprintf(w, sizeof w, "N/A");
    else snprintf(w, sizeof w, "%ld", wrong);
    printf("%4d %7ld %6ld %-8s %12.0f %10.1f %7.3f %7.3f %10.1f %7.3f %6.3f %6s\n", n, T, H, op,
           bytes, t * 1e6, alg, bus, t_raw * 1e6, rbus, t > 0 ? t_raw / t : 0, w);
}

/* identity experts: out[t] = x[t] * sum_k w[t][k] */
static long check_out(const float *x, const float *w, const float *out, long T, long H, int k)
{
    long bad = 0;
    for (long t = 0; t < T; t++) {
        float s = 0;
        for (int j = 0; j < k; j++) s += w[t * k + j];
        for (long h = 0; h < H; h++) {
            double e = (double)x[t * H + h] * s, d = fabs(out[t * H + h] - e);
            if (d > 1e-5 * fmax(1.0, fabs(e))) bad++;
        }
    }
    return bad;
}

/* Timed ops, in the order each iteration runs them: every dpep stage sits
 * next to its raw baseline, so load changes on a shared machine hit both. */
enum {
    OP_DISP, OP_RAW_D, OP_COMB, OP_RAW_C, OP_DISP_MPI, OP_COMB_MPI, OP_AG_D, OP_RAW_AG, OP_AG_C,
    OP_RAW_RS, OP_A2AV, OP_CNT, OP_CNT_RAW, OP_MEMCPY, N_OP
};

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static int g_one_node; /* every rank on one node: MPI_Wtime is one clock */

/* Per iteration, the op's wall time: on one node, the last rank's end minus
 * the first rank's start (ranks that share cores run one after the other,
 * and only this counts it); across nodes, the slowest rank's own time. Then
 * the median over iterations. ts/te: start/end per iteration on this rank. */
static double med_wall(double *ts, double *te, int n)
{
    if (g_one_node) {
        MPI_Allreduce(MPI_IN_PLACE, ts, n, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
        MPI_Allreduce(MPI_IN_PLACE, te, n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        for (int i = 0; i < n; i++) te[i] -= ts[i];
    } else {
        for (int i = 0; i < n; i++) te[i] -= ts[i];
        MPI_Allreduce(MPI_IN_PLACE, te, n, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    }
    qsort(te, (size_t)n, sizeof *te, cmp_double);
    return n % 2 ? te[n / 2] : 0.5 * (te[n / 2 - 1] + te[n / 2]);
}

static int run_comm(const opts *o)
{
    MPI_Comm mc = MPI_COMM_WORLD;
    dpep_comm *ep = NULL;
    double wd = getenv("DPEP_MOE_PERF_TIMEOUT") ? atof(getenv("DPEP_MOE_PERF_TIMEOUT")) : 600;
    if (dpep_comm_create(mc, "ep", DPEP_COMM_MPI, wd, &ep) != DPEP_OK) return 1;
    MPI_Comm raw = dpep_comm_mpi(ep);
    long total_wrong = 0;
    {
        MPI_Comm node;
        int ns = 0;
        MPI_Comm_split_type(mc, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
        MPI_Comm_size(node, &ns);
        MPI_Comm_free(&node);
        MPI_Allreduce(MPI_IN_PLACE, &ns, 1, MPI_INT, MPI_MIN, mc);
        g_one_node = ns == g_size;
    }
    if (g_rank == 0) {
        char host[64] = "";
        gethostname(host, sizeof host);
        printf("# dpep_moe_perf comm: ep %d, experts %d, top-%d, uniform random routing, fp32 "
               "rows, host %s, %ld logical CPUs\n", g_size, o->E, o->k, host,
               sysconf(_SC_NPROCESSORS_ONLN));
        printf("# warmup %d iters %d; time = median over iterations of %s; each dpep stage runs "
               "beside its raw MPI baseline (same byte counts) in every iteration; ratio = raw "
               "time / dpep time\n#\n", o->warm, o->iters,
               g_one_node ? "the wall time (last rank's end - first rank's start, after a barrier)"
                          : "the slowest rank's time");
        printf("#%3s %7s %6s %-8s %12s %10s %7s %7s %10s %7s %6s %6s\n", "ep", "tokens", "hidden",
               "op", "size", "time", "algbw", "busbw", "raw_time", "raw_bus", "ratio", "#wrong");
        printf("#%3s %7s %6s %-8s %12s %10s %7s %7s %10s %7s %6s %6s\n", "", "/rank", "", "",
               "(B)", "(us)", "(GB/s)", "(GB/s)", "(us)", "(GB/s)", "", "");
    }
    for (int hi = 0; hi < o->n_hid; hi++)
        for (int ti = 0; ti < o->n_tok; ti++) {
            const long T = o->tok[ti], H = o->hid[hi];
            const int k = o->k, n = g_size;
            dpep_moe_config cfg;
            memset(&cfg, 0, sizeof cfg);
            cfg.hidden = (int)H;
            cfg.gate = (dpep_moe_gate_cfg){o->E, k, 1, 1, DPEP_SCORE_SIGMOID, DPEP_TOPK_GREEDY,
                                           false, 1.0f};
            cfg.moe_inter = 64;
            cfg.max_tokens = T;
            cfg.ep = ep;
            /* 0: alltoall, transport auto (shm on one node); 1: allgather;
             * 2: alltoall over MPI */
            dpep_moe *m[3] = {NULL, NULL, NULL};
            const int NB = o->only_default ? 1 : 3; /* contexts made */
            int ok = 1;
            double pool = 0;
            for (int b = 0; b < NB; b++) {
                cfg.backend = b == 1 ? DPEP_A2A_ALLGATHER : DPEP_A2A_ALLTOALL;
                cfg.transport = b == 2 ? DPEP_A2A_TRANSPORT_MPI : DPEP_A2A_TRANSPORT_AUTO;
                /* pools are sized for the worst case: stop before touching
                 * more than -M (create zeroes them) */
                dpep_status cst = dpep_moe_create(&cfg, &m[b], NULL);
                if (cst == DPEP_OK) pool += (double)dpep_moe_pool_bytes(m[b]);
                double all = tsum(pool);
                /* did every rank get its context (mpi and allgather create
                 * locally)? */
                ok = dpep_comm_agree(ep, cst, NULL, NULL) == DPEP_OK;
                if (!ok || all > o->mem_gb * 1e9) {
                    if (g_rank == 0)
                        printf("# skipped tokens %ld hidden %ld: pools %.1f GB > -M %.0f GB\n", T,
                               H, all / 1e9, o->mem_gb);
                    ok = 0;
                    break;
                }
            }
            if (!ok) {
                for (int b = 0; b < 3; b++) dpep_moe_free(m[b]);
                continue;
            }
            uint64_t s = 12345 + 1000003ull * (uint64_t)g_rank + 7919ull * (uint64_t)T;
            float *x = malloc(sizeof(float) * (size_t)(T * H + 1));
            float *out = malloc(sizeof(float) * (size_t)(T * H + 1));
            int32_t *idx = malloc(sizeof(int32_t) * (size_t)(T * k + 1));
            float *w = malloc(sizeof(float) * (size_t)(T * k + 1));
            for (long i = 0; i < T * H; i++) x[i] = 2.0f * rng_unit(&s) - 1.0f;
            for (long t = 0; t < T; t++) {
                /* k distinct experts, ascending */
                int j = 0;
                while (j < k) {
                    int e = (int)(rng_next(&s) % (uint64_t)o->E), dup = 0;
                    for (int i = 0; i < j; i++) dup |= idx[t * k + i] == e;
                    if (!dup) idx[t * k + j++] = e;
                }
                for (int i = 0; i < k; i++) w[t * k + i] = 0.05f + rng_unit(&s);
            }
            /* one untimed step per context: the byte counts of the raw
             * baselines come from the alltoall dispatch's statistics */
            dpep_moe_stats st[3];
            memset(st, 0, sizeof st);
            for (int b = 0; b < NB; b++) {
                if (dpep_moe_dispatch(m[b], x, T, idx, w) != DPEP_OK) return 1;
                dpep_moe_run_identity(m[b]);
                if (dpep_moe_combine(m[b], out) != DPEP_OK) return 1;
                dpep_moe_get_stats(m[b], &st[b]);
            }
            int *sc = calloc((size_t)n, sizeof(int)), *sd = calloc((size_t)n, sizeof(int));
            int *rc = calloc((size_t)n, sizeof(int)), *rd = calloc((size_t)n, sizeof(int));
            int *csc = calloc((size_t)n, sizeof(int)), *csd = calloc((size_t)n, sizeof(int));
            int *crc = calloc((size_t)n, sizeof(int)), *crd = calloc((size_t)n, sizeof(int));
            int64_t *lsc = calloc((size_t)n, sizeof(int64_t)), *lsd = calloc((size_t)n, sizeof(int64_t));
            int64_t *lrc = calloc((size_t)n, sizeof(int64_t)), *lrd = calloc((size_t)n, sizeof(int64_t));
            const long S = H + 2 * k;
            long so = 0, ro = 0, cso = 0, cro = 0;
            for (int p = 0; p < n; p++) {
                sc[p] = (int)st[0].send_bytes[p];
                rc[p] = (int)st[0].recv_bytes[p];
                sd[p] = (int)so;
                rd[p] = (int)ro;
                so += sc[p];
                ro += rc[p];
                lsc[p] = sc[p];
                lsd[p] = sd[p];
                lrc[p] = rc[p];
                lrd[p] = rd[p];
                /* combine: the reverse pattern, H floats per row */
                csc[p] = (int)(rc[p] / (4 * S) * 4 * H);
                crc[p] = (int)(sc[p] / (4 * S) * 4 * H);
                csd[p] = (int)cso;
                crd[p] = (int)cro;
                cso += csc[p];
                cro += crc[p];
            }
            long big = so > ro ? so : ro;
            long agb = (long)st[1].dispatch_bytes_sent / n; /* Upad * S * 4 */
            long rsb = (long)st[1].combine_bytes_sent / n;  /* Upad * H * 4 */
            size_t need = (size_t)(big > agb * n ? big : agb * n) + (size_t)rsb * n + 64;
            char *bs = malloc(need), *br = malloc(need);
            memset(bs, 1, need);
            memset(br, 0, need);
            int64_t *cs = calloc((size_t)n, sizeof(int64_t)), *cr = calloc((size_t)n, sizeof(int64_t));
            int64_t *ones = calloc((size_t)n, sizeof(int64_t)), *seq = calloc((size_t)n, sizeof(int64_t));
            for (int p = 0; p < n; p++) {
                ones[p] = 1;
                seq[p] = p;
            }
            const int NI = o->iters;
            double *tm = calloc((size_t)N_OP * (size_t)NI, sizeof(double));
            double *tb = calloc((size_t)N_OP * (size_t)NI, sizeof(double));
            long wrong[3] = {0, 0, 0};
            double t0 = 0;
#define TIC() (MPI_Barrier(mc), t0 = MPI_Wtime())
#define TOC(op) do { double t1_ = MPI_Wtime(); if (it >= o->warm) { tb[(op) * NI + it - o->warm] = t0; tm[(op) * NI + it - o->warm] = t1_; } } while (0)
#define RUN(call) do { if ((call) != DPEP_OK) return 1; } while (0)
            for (int it = 0; it < o->warm + NI; it++) {
                /* alltoall, transport auto, beside MPI_Alltoallv of its bytes */
                TIC(); RUN(dpep_moe_dispatch(m[0], x, T, idx, w)); TOC(OP_DISP);
                TIC(); MPI_Alltoallv(bs, sc, sd, MPI_BYTE, br, rc, rd, MPI_BYTE, raw); TOC(OP_RAW_D);
                dpep_moe_run_identity(m[0]);
                TIC(); RUN(dpep_moe_combine(m[0], out)); TOC(OP_COMB);
                if (it >= o->warm) wrong[0] += check_out(x, w, out, T, H, k);
                TIC(); MPI_Alltoallv(bs, csc, csd, MPI_BYTE, br, crc, crd, MPI_BYTE, raw); TOC(OP_RAW_C);
                if (NB == 1) goto small_ops;
                /* alltoall over MPI */
                TIC(); RUN(dpep_moe_dispatch(m[2], x, T, idx, w)); TOC(OP_DISP_MPI);
                dpep_moe_run_identity(m[2]);
                TIC(); RUN(dpep_moe_combine(m[2], out)); TOC(OP_COMB_MPI);
                if (it >= o->warm) wrong[2] += check_out(x, w, out, T, H, k);
                /* allgather path beside MPI_Allgather / MPI_Reduce_scatter_block */
                TIC(); RUN(dpep_moe_dispatch(m[1], x, T, idx, w)); TOC(OP_AG_D);
                TIC(); MPI_Allgather(bs, (int)agb, MPI_BYTE, br, (int)agb, MPI_BYTE, raw); TOC(OP_RAW_AG);
                dpep_moe_run_identity(m[1]);
                TIC(); RUN(dpep_moe_combine(m[1], out)); TOC(OP_AG_C);
                if (it >= o->warm) wrong[1] += check_out(x, w, out, T, H, k);
                TIC();
                MPI_Reduce_scatter_block((float *)(void *)bs, (float *)(void *)br, (int)(rsb / 4),
                                         MPI_FLOAT, MPI_SUM, raw);
                TOC(OP_RAW_RS);
            small_ops:
                /* comm's alltoallv alone; the MPI transport's count exchange;
                 * one memcpy of dispatch's send bytes */
                TIC(); dpep_comm_alltoallv(ep, bs, lsc, lsd, br, lrc, lrd, DPEP_COMM_U8); TOC(OP_A2AV);
                TIC(); dpep_comm_alltoallv(ep, cs, ones, seq, cr, ones, seq, DPEP_COMM_I64); TOC(OP_CNT);
                TIC(); MPI_Alltoall(cs, 1, MPI_INT64_T, cr, 1, MPI_INT64_T, raw); TOC(OP_CNT_RAW);
                TIC(); memcpy(br, bs, (size_t)so); TOC(OP_MEMCPY);
            }
#undef TIC
#undef TOC
#undef RUN
            double med[N_OP];
            for (int op = 0; op < N_OP; op++) med[op] = med_wall(tb + op * NI, tm + op * NI, NI);
            free(tm);
            free(tb);
            free(cs);
            free(cr);
            free(ones);
            free(seq);
            double mean_send = tsum((double)so) / n, mean_csend = tsum((double)cso) / n;
            long wr0 = (long)tsum((double)wrong[0]), wr1 = (long)tsum((double)wrong[1]),
                 wr2 = (long)tsum((double)wrong[2]);
            char dn[16], cn[16];
            snprintf(dn, sizeof dn, "disp-%s", dpep_moe_transport_name(m[0]));
            snprintf(cn, sizeof cn, "comb-%s", dpep_moe_transport_name(m[0]));
            row(dn, T, H, mean_send, med[OP_DISP], med[OP_RAW_D], wr0);
            row(cn, T, H, mean_csend, med[OP_COMB], med[OP_RAW_C], wr0);
            if (NB > 1 && strcmp(dpep_moe_transport_name(m[0]), "mpi") != 0) {
                row("disp-mpi", T, H, mean_send, med[OP_DISP_MPI], med[OP_RAW_D], wr2);
                row("comb-mpi", T, H, mean_csend, med[OP_COMB_MPI], med[OP_RAW_C], wr2);
            }
            row("a2av", T, H, mean_send, med[OP_A2AV], med[OP_RAW_D], -1);
            row("counts", T, H, 8.0 * n, med[OP_CNT], med[OP_CNT_RAW], -1);
            row("memcpy", T, H, mean_send, med[OP_MEMCPY], 0, -1);
            if (NB > 1) {
                row("ag-disp", T, H, (double)agb * n, med[OP_AG_D], med[OP_RAW_AG], wr1);
                row("ag-comb", T, H, (double)rsb * n, med[OP_AG_C], med[OP_RAW_RS], wr1);
            }
            if (g_rank == 0) fflush(stdout);
            total_wrong += wr0 + wr1 + wr2;
            free(bs);
            free(br);
            free(sc); free(sd); free(rc); free(rd);
            free(csc); free(csd); free(crc); free(crd);
            free(lsc); free(lsd); free(lrc); free(lrd);
            free(x);
            free(out);
            free(idx);
            free(w);
            for (int b = 0; b < 3; b++) dpep_moe_free(m[b]);
        }
    if (g_rank == 0) printf("# Out of bounds values : %ld %s\n#\n", total_wrong,
                            total_wrong ? "FAILED" : "OK");
    dpep_comm_destroy(ep);
    return total_wrong ? 1 : 0;
}

static float *randv(size_t n, float scale, uint64_t *s)
{
    float *v = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) v[i] = scale * (2.0f * rng_unit(s) - 1.0f);
    return v;
}

static int run_ffn(const opts *o)
{
    dpep_comm *self = NULL;
    if (dpep_comm_create(MPI_COMM_SELF, "self", DPEP_COMM_MPI, 0, &self) != DPEP_OK) return 1;
    printf("# dpep_moe_perf ffn: %d experts on one rank, top-1, tokens spread evenly, SwiGLU "
           "(3 GEMMs), fp32, OpenBLAS; baseline: one cblas_sgemm (tokens/expert x I x H)\n",
           o->x);
    printf("# warmup %d iters %d; ratio = expert GFLOP/s / sgemm GFLOP/s (goal >= 0.8 at >= 256 "
           "tokens per expert)\n#\n", o->warm, o->iters);
    printf("#%6s %6s %8s %8s %10s %9s %10s %9s %6s\n", "hidden", "inter", "tok/exp", "experts",
           "time(us)", "GFLOP/s", "sgemm(us)", "GFLOP/s", "ratio");
    for (int hi = 0; hi < o->n_hid; hi++) {
        const int H = (int)o->hid[hi], ni = o->inter, X = o->x;
        uint64_t s = 99;
        dpep_layer_w L;
        memset(&L, 0, sizeof L);
        L.moe = true;
        L.n_experts = X;
        L.experts = calloc((size_t)X, sizeof *L.experts);
        for (int e = 0; e < X; e++) {
            L.experts[e].inter = ni;
            L.experts[e].gate = dpep_mat_make(randv((size_t)ni * H, 1.0f / sqrtf((float)H), &s),
                                              DPEP_WT_F32, ni, H);
            L.experts[e].up = dpep_mat_make(randv((size_t)ni * H, 1.0f / sqrtf((float)H), &s),
                                            DPEP_WT_F32, ni, H);
            L.experts[e].down = dpep_mat_make(randv((size_t)ni * H, 1.0f / sqrtf((float)ni), &s),
                                              DPEP_WT_F32, H, ni);
        }
        for (int ti = 0; ti < o->n_tok; ti++) {
            const long per = o->tok[ti], T = per * X;
            dpep_moe_config cfg;
            memset(&cfg, 0, sizeof cfg);
            cfg.hidden = H;
            cfg.gate = (dpep_moe_gate_cfg){X, 1, 1, 1, DPEP_SCORE_SIGMOID, DPEP_TOPK_GREEDY, false,
                                           1.0f};
            cfg.moe_inter = ni;
            cfg.max_tokens = T;
            cfg.chunk = 1024;
            cfg.ep = self;
            dpep_moe *m = NULL;
            if (dpep_moe_create(&cfg, &m, NULL) != DPEP_OK) return 1;
            float *x = randv((size_t)T * H, 1.0f, &s);
            int32_t *idx = malloc(sizeof(int32_t) * (size_t)T);
            float *w = malloc(sizeof(float) * (size_t)T);
            for (long t = 0; t < T; t++) {
                idx[t] = (int32_t)(t % X);
                w[t] = 1.0f;
            }
            if (dpep_moe_dispatch(m, x, T, idx, w) != DPEP_OK) return 1;
            double te = 0, tg = 0, fl = 0;
            float *C = malloc(sizeof(float) * (size_t)per * ni);
            for (int it = 0; it < o->warm + o->iters; it++) {
                double a = MPI_Wtime();
                if (dpep_moe_run_experts(m, &L, DPEP_MOE_ROUTED) != DPEP_OK) return 1;
                double b = MPI_Wtime();
                /* the same FLOPs as one expert's gate projection, X*3 times */
                for (int r = 0; r < 3 * X; r++)
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)per, ni, H, 1.0f, x,
                                H, dpep_mat_f32(L.experts[r % X].gate), H, 0.0f, C, ni);
                double c = MPI_Wtime();
                if (it >= o->warm) {
                    te += b - a;
                    tg += c - b;
                }
            }
            dpep_moe_stats st;
            dpep_moe_get_stats(m, &st);
            fl = st.expert_flops;
            double ge = fl * o->iters / te / 1e9, gg = fl * o->iters / tg / 1e9;
            printf("%7d %6d %8ld %8d %10.1f %9.1f %10.1f %9.1f %6.3f\n", H, ni, per, X,
                   te / o->iters * 1e6, ge, tg / o->iters * 1e6, gg, ge / gg);
            fflush(stdout);
            free(C);
            free(x);
            free(idx);
            free(w);
            dpep_moe_free(m);
        }
        for (int e = 0; e < X; e++) {
            free(L.experts[e].gate.p);
            free(L.experts[e].up.p);
            free(L.experts[e].down.p);
        }
        free(L.experts);
    }
    dpep_comm_destroy(self);
    return 0;
}

int main(int argc, char **argv)
{
    int prov;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &prov);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    dpep_log_set_rank(g_rank);
    opts o;
    memset(&o, 0, sizeof o);
    o.n_tok = parse_list("128,512", o.tok);
    o.n_hid = parse_list("2048", o.hid);
    o.E = 256;
    o.k = 8;
    o.inter = 2048;
    o.x = 4;
    o.warm = 1;
    o.iters = 3;
    o.mem_gb = 12;
    const char *mode = argc > 1 ? argv[1] : "";
    int bad = strcmp(mode, "comm") && strcmp(mode, "ffn");
    for (int i = 2; !bad && i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v || a[0] != '-' || strlen(a) != 2) {
            bad = 1;
            break;
        }
        i++;
        switch (a[1]) {
        case 't': bad = (o.n_tok = parse_list(v, o.tok)) <= 0; break;
        case 'H': bad = (o.n_hid = parse_list(v, o.hid)) <= 0; break;
        case 'E': o.E = atoi(v); break;
        case 'k': o.k = atoi(v); break;
        case 'I': o.inter = atoi(v); break;
        case 'x': o.x = atoi(v); break;
        case 'w': o.warm = atoi(v); break;
        case 'n': o.iters = atoi(v); break;
        case 'M': o.mem_gb = atof(v); break;
        case 'd': o.only_default = atoi(v) != 0; break;
        default: bad = 1;
        }
    }
    if (bad || o.E < 1 || o.k < 1 || o.k > o.E || o.iters < 1 || o.warm < 0 || o.x < 1) {
        if (g_rank == 0)
            fprintf(stderr, "usage: dpep_moe_perf comm|ffn [-t tokens,..] [-H hidden,..] [-E experts] "
                            "[-k topk] [-I inter] [-x experts(ffn)] [-w warmup] [-n iters] "
                            "[-M pool GB limit] [-d 1: alltoall default transport only]\n");
        MPI_Finalize();
        return 2;
    }
    int rc = strcmp(mode, "comm") == 0 ? run_comm(&o) : (g_rank == 0 ? run_ffn(&o) : 0);
    MPI_Finalize();
    return rc;
}
