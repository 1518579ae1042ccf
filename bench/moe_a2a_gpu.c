/* moe_a2a_gpu.c — dpep_moe_a2a_gpu: MoE dispatch + combine between GPU ranks
 * (issue 17), nccl-tests' columns, against the device's own copy bandwidth
 * measured in the same run.
 *
 *   mpirun -np N dpep_moe_a2a_gpu [-t 128,512,2048] [-H 7168] [-E 256] [-k 8]
 *                                 [-w 3] [-n 10] [--transport auto|ipc|mpi|nccl]
 *
 * Rank r drives GPU (local rank mod GPUs): on the one-GPU test machine the
 * ranks share it (ipc between processes of one device, or mpi-staged; NCCL
 * refuses two ranks on a GPU). Per tokens-per-rank T: random top-k routing
 * (uniform over E experts, seeded per rank), fp32 rows of H; one iteration
 * = dispatch, identity experts (dpep_moe_run_identity: partial = Σ local
 * weights · x), combine, device synchronized; the time is the slowest
 * rank's mean over n iterations after w warm-ups.
 *
 * Columns: size = bytes this rank moves to peers per iteration (dispatch
 * rows of H + 2k words to other ranks + the partial sums it returns),
 * largest over the ranks; time (us); algbw = size / time (GB/s); busbw =
 * algbw (each rank's own bytes, nccl-tests' alltoall convention with the
 * own block left out); copy = a device-to-device cudaMemcpy of `size`
 * bytes on this rank's GPU (GB/s, bytes copied / time) timed the same way;
 * ratio = algbw / copy; nccl = with --transport nccl (ranks on distinct
 * GPUs), raw NCCL all-to-all-v of the same per-peer bytes both ways on the
 * EP comm (algbw GB/s; "-" otherwise), its ratio printed in the summary
 * line; #wrong = output elements differing from x ·
 * Σ_j w_j summed in the transports' order (any transport: bit-identical
 * expected; counted with a 1e-6 relative slack).
 *
 * Exit: 0 every element right (or SKIP: no GPU, one rank), 1 a wrong
 * element or a failed call, 2 usage. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime.h>
#include <mpi.h>

#include "dpep_moe.h"
#include "dpep_world.h"

static int g_rank, g_size;

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}
static float unit(uint64_t *s)
{
    *s = mix(*s);
    return (float)((*s >> 40) * (1.0 / 16777216.0));
}

static int parse_list(const char *s, int64_t *v, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *e;
        v[n++] = strtoll(s, &e, 10);
        if (e == s) return -1;
        s = *e == ',' ? e + 1 : e;
    }
    return n;
}

#define CK(call)                                                                  \
    do {                                                                          \
        cudaError_t e_ = (call);                                                  \
        if (e_ != cudaSuccess) {                                                  \
            fprintf(stderr, "rank %d: %s: %s\n", g_rank, #call, cudaGetErrorString(e_)); \
            MPI_Abort(MPI_COMM_WORLD, 1);                                         \
        }                                                                         \
    } while (0)

int main(int argc, char **argv)
{
    int64_t Ts[16] = {128, 512, 2048};
    int nT = 3, H = 7168, E = 256, k = 8, warm = 3, iters = 10;
    const char *trn = "auto";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) goto usage;
        if (!strcmp(a, "-t")) nT = parse_list(v, Ts, 16);
        else if (!strcmp(a, "-H")) H = atoi(v);
        else if (!strcmp(a, "-E")) E = atoi(v);
        else if (!strcmp(a, "-k")) k = atoi(v);
        else if (!strcmp(a, "-w")) warm = atoi(v);
        else if (!strcmp(a, "-n")) iters = atoi(v);
        else if (!strcmp(a, "--transport")) trn = v;
        else goto usage;
        i++;
    }
    if (nT < 1 || H < 1 || E < 1 || k < 1 || k > E || iters < 1 || warm < 0) goto usage;
    dpep_a2a_transport tr;
    if (!strcmp(trn, "auto")) tr = DPEP_A2A_TRANSPORT_AUTO;
    else if (!strcmp(trn, "ipc")) tr = DPEP_A2A_TRANSPORT_IPC;
    else if (!strcmp(trn, "mpi")) tr = DPEP_A2A_TRANSPORT_MPI;
    else if (!strcmp(trn, "nccl")) tr = DPEP_A2A_TRANSPORT_NCCL;
    else goto usage;

    int prov = 0;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &prov);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    dpep_log_init();
    dpep_log_set_rank(g_rank);
    int ngpu = 0;
    char why[256] = "";
    int ok = dpep_cuda_device_count(&ngpu, why, sizeof why) == DPEP_OK && ngpu > 0;
    MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!ok || g_size < 2 || E % g_size) {
        if (g_rank == 0)
            printf("SKIP: %s\n", !ok ? why : g_size < 2 ? "run under mpirun -np >= 2"
                                                       : "E not divisible by the ranks");
        MPI_Finalize();
        return 0;
    }
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node);
    int lr = 0, ln = 1;
    MPI_Comm_rank(node, &lr);
    MPI_Comm_size(node, &ln);
    MPI_Comm_free(&node);
    const int gpu = lr % ngpu;
    dpep_cuda_set_device(gpu);
    dpep_device dev;
    if (dpep_device_get(DPEP_DEVICE_CUDA, gpu, &dev) != DPEP_OK) MPI_Abort(MPI_COMM_WORLD, 1);
    dpep_comm *ep = NULL;
    const dpep_comm_backend be = tr == DPEP_A2A_TRANSPORT_NCCL ? DPEP_COMM_NCCL : DPEP_COMM_MPI;
    if (dpep_comm_create(MPI_COMM_WORLD, "ep", be, 120, &ep) != DPEP_OK) {
        if (g_rank == 0) printf("FAIL: the EP comm (%s)\n", dpep_comm_backend_name(be));
        MPI_Finalize();
        return 1;
    }
    int64_t Tmax = 0;
    for (int i = 0; i < nT; i++) Tmax = Ts[i] > Tmax ? Ts[i] : Tmax;
    dpep_moe_config mc;
    memset(&mc, 0, sizeof mc);
    mc.hidden = H;
    mc.gate = (dpep_moe_gate_cfg){.n_experts = E, .topk = k, .n_group = 1, .topk_group = 1,
                                  .scoring = DPEP_SCORE_SIGMOID, .method = DPEP_TOPK_NOAUX_TC,
                                  .routed_scaling_factor = 1.0f};
    mc.moe_inter = 8;
    mc.backend = DPEP_A2A_ALLTOALL;
    mc.transport = tr;
    mc.max_tokens = Tmax;
    mc.ep = ep;
    mc.device = &dev;
    dpep_moe *m = NULL;
    dpep_diag d;
    dpep_diag_init(&d);
    if (dpep_moe_create(&mc, &m, &d) != DPEP_OK) {
        if (g_rank == 0) {
            printf("FAIL: dpep_moe_create\n");
            dpep_diag_print(&d, stdout);
        }
        dpep_comm_destroy(ep);
        MPI_Finalize();
        return 1;
    }
    if (g_rank == 0) {
        printf("# dpep_moe_a2a_gpu: %d ranks on %d GPU(s) of this node (%d ranks here), "
               "transport %s (asked %s), hidden %d, experts %d, top-%d, uniform random "
               "routing, fp32 rows; MoE buffers %.1f MiB per rank\n", g_size, ngpu, ln,
               dpep_moe_transport_name(m), trn, H, E, k, dpep_moe_pool_bytes(m) / 1048576.0);
        printf("%10s %12s %10s %9s %9s %9s %7s %9s %8s\n", "tokens", "size(B)", "time(us)",
               "algbw", "busbw", "copy", "ratio", "nccl", "#wrong");
    }
    float *x_h = malloc(sizeof(float) * (size_t)(Tmax * H));
    float *w_h = malloc(sizeof(float) * (size_t)(Tmax * k));
    int32_t *id_h = malloc(sizeof(int32_t) * (size_t)(Tmax * k));
    float *out_h = malloc(sizeof(float) * (size_t)(Tmax * H));
    float *x_d, *w_d, *out_d, *cp_d;
    int32_t *id_d;
    CK(cudaMalloc((void **)&x_d, sizeof(float) * (size_t)(Tmax * H)));
    CK(cudaMalloc((void **)&w_d, sizeof(float) * (size_t)(Tmax * k)));
    CK(cudaMalloc((void **)&id_d, sizeof(int32_t) * (size_t)(Tmax * k)));
    CK(cudaMalloc((void **)&out_d, sizeof(float) * (size_t)(Tmax * H)));
    int bad_any = 0;
    const int per = E / g_size;
    for (int it = 0; it < nT; it++) {
        const int64_t T = Ts[it];
        uint64_t s = 1000 + 7919 * (uint64_t)g_rank + 31 * (uint64_t)T;
        for (int64_t i = 0; i < T * H; i++) x_h[i] = unit(&s) * 2.0f - 1.0f;
        for (int64_t t = 0; t < T; t++) {
            /* k distinct experts, ascending (as the gate gives them) */
            int32_t *id = id_h + t * k;
            for (int j = 0; j < k; j++) {
                int e, dup;
                do {
                    e = (int)(unit(&s) * (float)E) % E;
                    dup = 0;
                    for (int q = 0; q < j; q++) dup |= id[q] == e;
                } while (dup);
                id[j] = e;
            }
            for (int a = 1; a < k; a++)
                for (int b = a; b > 0 && id[b - 1] > id[b]; b--) {
                    int32_t tmp = id[b];
                    id[b] = id[b - 1];
                    id[b - 1] = tmp;
                }
            for (int j = 0; j < k; j++) w_h[t * k + j] = 0.05f + unit(&s);
        }
        CK(cudaMemcpy(x_d, x_h, sizeof(float) * (size_t)(T * H), cudaMemcpyHostToDevice));
        CK(cudaMemcpy(w_d, w_h, sizeof(float) * (size_t)(T * k), cudaMemcpyHostToDevice));
        CK(cudaMemcpy(id_d, id_h, sizeof(int32_t) * (size_t)(T * k), cudaMemcpyHostToDevice));
        int fail = 0;
        double t0 = 0;
        for (int rep = 0; rep < warm + iters; rep++) {
            if (rep == warm) {
                MPI_Barrier(MPI_COMM_WORLD);
                t0 = MPI_Wtime();
            }
            fail |= dpep_moe_dispatch(m, x_d, T, id_d, w_d) != DPEP_OK;
            dpep_moe_run_identity(m);
            fail |= dpep_moe_combine(m, out_d) != DPEP_OK;
            CK(cudaDeviceSynchronize());
        }
        double dt = (MPI_Wtime() - t0) / iters;
        MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        dpep_moe_stats st;
        dpep_moe_get_stats(m, &st);
        /* bytes to peers: dispatch rows, and the partial sums returned */
        const int64_t S = H + 2 * (int64_t)k;
        int64_t sent = 0, recv_rows_peers = 0;
        for (int r = 0; r < g_size; r++)
            if (r != g_rank) {
                sent += st.send_bytes[r];
                recv_rows_peers += st.recv_bytes[r] / (S * (int64_t)sizeof(float));
            }
        int64_t size = sent + recv_rows_peers * H * (int64_t)sizeof(float);
        MPI_Allreduce(MPI_IN_PLACE, &size, 1, MPI_INT64_T, MPI_MAX, MPI_COMM_WORLD);
        /* the copy ceiling: `size` bytes device to device on this GPU */
        double cp_dt = 0;
        if (size > 0) {
            CK(cudaMalloc((void **)&cp_d, (size_t)size * 2));
            for (int rep = 0; rep < warm + iters; rep++) {
                if (rep == warm) {
                    CK(cudaDeviceSynchronize());
                    MPI_Barrier(MPI_COMM_WORLD);
                    cp_dt = MPI_Wtime();
                }
                CK(cudaMemcpy((char *)cp_d + size, cp_d, (size_t)size, cudaMemcpyDeviceToDevice));
            }
            CK(cudaDeviceSynchronize());
            cp_dt = (MPI_Wtime() - cp_dt) / iters;
            MPI_Allreduce(MPI_IN_PLACE, &cp_dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
            CK(cudaFree(cp_d));
        }
        /* raw NCCL (an NCCL EP comm): the same bytes per peer, dispatch
         * then combine, as two all-to-all-v of bytes on device buffers */
        double raw_dt = 0;
        if (be == DPEP_COMM_NCCL && size > 0) {
            int64_t *sc = calloc((size_t)g_size * 4, sizeof(int64_t));
            int64_t *sd = sc + g_size, *rc = sd + g_size, *rd = rc + g_size;
            int64_t so = 0, ro = 0;
            for (int r = 0; r < g_size; r++) {
                sc[r] = r == g_rank ? 0 : st.send_bytes[r];
                rc[r] = r == g_rank ? 0 : st.recv_bytes[r];
                sd[r] = so;
                rd[r] = ro;
                so += sc[r];
                ro += rc[r];
            }
            char *bs, *br;
            CK(cudaMalloc((void **)&bs, (size_t)(so + ro) + 16));
            CK(cudaMalloc((void **)&br, (size_t)(so + ro) + 16));
            for (int rep = 0; rep < warm + iters; rep++) {
                if (rep == warm) {
                    MPI_Barrier(MPI_COMM_WORLD);
                    raw_dt = MPI_Wtime();
                }
                /* dispatch's pattern, then the reverse (combine's, rows of H
                 * floats instead of H + 2k words: close enough for a ceiling) */
                fail |= dpep_comm_alltoallv(ep, bs, sc, sd, br, rc, rd, DPEP_COMM_U8) != DPEP_OK;
                fail |= dpep_comm_alltoallv(ep, br, rc, rd, bs, sc, sd, DPEP_COMM_U8) != DPEP_OK;
            }
            raw_dt = (MPI_Wtime() - raw_dt) / iters;
            MPI_Allreduce(MPI_IN_PLACE, &raw_dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
            CK(cudaFree(bs));
            CK(cudaFree(br));
            free(sc);
        }
        /* the answer: out[t] = Σ over its destination ranks (ascending) of
         * (Σ of its weights there, in id order) · x[t] */
        CK(cudaMemcpy(out_h, out_d, sizeof(float) * (size_t)(T * H), cudaMemcpyDeviceToHost));
        long wrong = 0;
        for (int64_t t = 0; t < T; t++) {
            float wsr[64];
            int nr = 0, rr[64];
            const int32_t *id = id_h + t * k;
            for (int j = 0; j < k; j++) {
                const int r = id[j] / per;
                if (nr == 0 || rr[nr - 1] != r) {
                    rr[nr] = r;
                    wsr[nr++] = 0.0f;
                }
                wsr[nr - 1] += w_h[t * k + j];
            }
            for (int64_t h = 0; h < H; h++) {
                const float xv = x_h[t * H + h];
                float acc = wsr[0] * xv;
                for (int q = 1; q < nr; q++) acc += wsr[q] * xv;
                const float got = out_h[t * H + h];
                wrong += fabsf(got - acc) > 1e-6f * fabsf(acc) + 1e-30f;
            }
        }
        MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
        MPI_Allreduce(MPI_IN_PLACE, &fail, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
        const double alg = dt > 0 ? (double)size / dt / 1e9 : 0.0;
        const double cpy = cp_dt > 0 ? (double)size / cp_dt / 1e9 : 0.0;
        const double raw = raw_dt > 0 ? (double)size / raw_dt / 1e9 : 0.0;
        char rawcol[32] = "-";
        if (raw > 0) snprintf(rawcol, sizeof rawcol, "%.2f", raw);
        if (g_rank == 0) {
            printf("%10lld %12lld %10.1f %9.2f %9.2f %9.2f %7.3f %9s %8ld%s\n", (long long)T,
                   (long long)size, dt * 1e6, alg, alg, cpy, cpy > 0 ? alg / cpy : 0.0, rawcol,
                   wrong, fail ? "  FAILED call" : "");
            if (raw > 0)
                printf("# T %lld: dpep dispatch + combine over raw NCCL all-to-all-v of the same "
                       "bytes: %.3f\n", (long long)T, alg / raw);
        }
        bad_any |= wrong != 0 || fail;
    }
    if (g_rank == 0) printf("%s\n", bad_any ? "FAILED" : "summary: every element right");
    dpep_moe_free(m);
    dpep_comm_destroy(ep);
    cudaFree(x_d);
    cudaFree(w_d);
    cudaFree(id_d);
    cudaFree(out_d);
    free(x_h);
    free(w_h);
    free(id_h);
    free(out_h);
    MPI_Finalize();
    return bad_any ? 1 : 0;
usage:
    fprintf(stderr, "usage: mpirun -np N dpep_moe_a2a_gpu [-t T,..] [-H hidden] [-E experts] "
                    "[-k topk] [-w warmup] [-n iters] [--transport auto|ipc|mpi|nccl]\n");
    return 2;
}
