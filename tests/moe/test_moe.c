/* test_moe.c — moe/: gates against an independent sort-based reference (ties
 * included, lower index wins); the layer against the HF transformers goldens
 * of tests/reference (V3 and V2 tiny; any ep x moe_tp); and, under mpiexec,
 * the layer on random inputs against a single-rank double-precision
 * reference for both backends (alltoall == allgather), with idle ranks and
 * worst-case skew (every token of every rank to one rank / one expert set).
 *
 *   test_moe gate                       (no MPI)
 *   mpiexec -n N test_moe golden SRC MOE_TP
 *   mpiexec -n N test_moe random MOE_TP */
#include "dpep_moe.h"
#include "../dpep_golden.h"
#include "../dpep_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

static int g_rank = 0, g_size = 1;

/* ------------------------------------------------------------------------ */
/* Small deterministic RNG                                                   */
/* ------------------------------------------------------------------------ */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static float rng_uniform(uint64_t *s) { return (float)((rng_next(s) >> 40) * (1.0 / 16777216.0)); }
static float rng_normal(uint64_t *s)
{
    float u1 = rng_uniform(s) + 1e-7f, u2 = rng_uniform(s);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.2831853f * u2);
}

/* ------------------------------------------------------------------------ */
/* Reference gate: sort-based, written independently of moe/gate.c           */
/* ------------------------------------------------------------------------ */
typedef struct scored {
    float v;
    int i;
} scored;
/* descending value, NaN last, then ascending index */
static int cmp_scored(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    int xn = isnan(x->v), yn = isnan(y->v);
    if (xn != yn) return xn - yn;
    if (!xn && x->v != y->v) return x->v > y->v ? -1 : 1;
    return x->i - y->i;
}
static int cmp_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

static void ref_gate(const dpep_moe_gate_cfg *g, const float *logit, const float *bias, int *idx,
                     float *w)
{
    int E = g->n_experts, k = g->topk;
    float *s = malloc(sizeof(float) * E), *sc = malloc(sizeof(float) * E);
    scored *v = malloc(sizeof(scored) * E);
    int *keep = calloc((size_t)E, sizeof(int));
    if (g->scoring == DPEP_SCORE_SIGMOID) {
        for (int e = 0; e < E; e++) s[e] = 1.0f / (1.0f + expf(-logit[e]));
    } else {
        double mx = -INFINITY, sum = 0;
        for (int e = 0; e < E; e++) mx = fmax(mx, logit[e]);
        for (int e = 0; e < E; e++) sum += exp((double)logit[e] - mx);
        for (int e = 0; e < E; e++) s[e] = (float)(exp((double)logit[e] - mx) / sum);
    }
    for (int e = 0; e < E; e++)
        sc[e] = s[e] + (g->method == DPEP_TOPK_NOAUX_TC && bias ? bias[e] : 0.0f);
    for (int e = 0; e < E; e++) keep[e] = 1;
    if (g->method != DPEP_TOPK_GREEDY && g->n_group > 1) {
        int G = g->n_group, gs = E / G;
        scored *gv = malloc(sizeof(scored) * G);
        for (int gi = 0; gi < G; gi++) {
            for (int j = 0; j < gs; j++) v[j] = (scored){sc[gi * gs + j], j};
            qsort(v, (size_t)gs, sizeof *v, cmp_scored);
            gv[gi].v = (g->method == DPEP_TOPK_NOAUX_TC && gs > 1) ? v[0].v + v[1].v : v[0].v;
            gv[gi].i = gi;
        }
        qsort(gv, (size_t)G, sizeof *gv, cmp_scored);
        for (int e = 0; e < E; e++) keep[e] = 0;
        for (int j = 0; j < g->topk_group; j++)
            for (int e = 0; e < gs; e++) keep[gv[j].i * gs + e] = 1;
        free(gv);
    }
    int n = 0;
    for (int e = 0; e < E; e++)
        if (keep[e]) v[n++] = (scored){sc[e], e};
    qsort(v, (size_t)n, sizeof *v, cmp_scored);
    for (int j = 0; j < k; j++) idx[j] = v[j].i;
    qsort(idx, (size_t)k, sizeof(int), cmp_int);
    double sum = 0;
    for (int j = 0; j < k; j++) sum += s[idx[j]];
    for (int j = 0; j < k; j++) {
        double x = s[idx[j]];
        if (g->norm_topk_prob) x /= (sum + 1e-20);
        w[j] = (float)(x * g->routed_scaling_factor);
    }
    free(s);
    free(sc);
    free(v);
    free(keep);
}

/* Gate vs reference over random and heavily tied logits. */
static void test_gate(void)
{
    struct {
        const char *name;
        dpep_moe_gate_cfg g;
        bool bias;
    } cases[] = {
        {"v3 256/8 g8/4", {256, 8, 8, 4, DPEP_SCORE_SIGMOID, DPEP_TOPK_NOAUX_TC, true, 2.5f}, true},
        {"v3 16/4 g4/2", {16, 4, 4, 2, DPEP_SCORE_SIGMOID, DPEP_TOPK_NOAUX_TC, true, 2.5f}, true},
        {"v3 no bias", {64, 6, 8, 3, DPEP_SCORE_SIGMOID, DPEP_TOPK_NOAUX_TC, false, 1.0f}, false},
        {"v3 1 group", {32, 4, 1, 1, DPEP_SCORE_SIGMOID, DPEP_TOPK_NOAUX_TC, true, 1.0f}, true},
        {"v3 group size 1", {8, 2, 8, 3, DPEP_SCORE_SIGMOID, DPEP_TOPK_NOAUX_TC, true, 1.0f}, true},
        {"v2 greedy 64/6", {64, 6, 1, 1, DPEP_SCORE_SOFTMAX, DPEP_TOPK_GREEDY, false, 1.0f}, false},
        {"v2 greedy norm", {12, 3, 1, 1, DPEP_SCORE_SOFTMAX, DPEP_TOPK_GREEDY, true, 16.0f}, false},
        {"v2 group-limited 160/6 g8/3",
         {160, 6, 8, 3, DPEP_SCORE_SOFTMAX, DPEP_TOPK_GROUP_LIMITED_GREEDY, false, 16.0f}, false},
        {"sigmoid greedy", {16, 4, 1, 1, DPEP_SCORE_SIGMOID, DPEP_TOPK_GREEDY, false, 1.0f}, false},
    };
    uint64_t seed = 42;
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const dpep_moe_gate_cfg *g = &cases[c].g;
        dpep_diag d;
        dpep_diag_init(&d);
        EXPECT(dpep_moe_gate_check(g, &d) == DPEP_OK, "%s: gate check", cases[c].name);
        int E = g->n_experts, k = g->topk, T = 300;
        float *lg = malloc(sizeof(float) * T * E), *bias = malloc(sizeof(float) * E);
        int32_t *idx = malloc(sizeof(int32_t) * T * k);
        float *w = malloc(sizeof(float) * T * k);
        for (int e = 0; e < E; e++) bias[e] = 0.1f * (float)(rng_next(&seed) % 3);
        int idx_bad = 0, ties = 0;
        double werr = 0;
        for (int mode = 0; mode < 2; mode++) {
            /* mode 0: continuous; mode 1: 5 levels, so most scores tie */
            for (int i = 0; i < T * E; i++)
                lg[i] = mode ? 0.5f * (float)((int)(rng_next(&seed) % 5) - 2) : rng_normal(&seed);
            dpep_moe_gate_select(g, lg, cases[c].bias ? bias : NULL, T, idx, w);
            for (int t = 0; t < T; t++) {
                int ri[DPEP_MOE_MAX_TOPK];
                float rw[DPEP_MOE_MAX_TOPK];
                ref_gate(g, lg + (size_t)t * E, cases[c].bias ? bias : NULL, ri, rw);
                for (int j = 0; j < k; j++) {
                    if (ri[j] != idx[t * k + j]) idx_bad++;
                    werr = fmax(werr, fabs(rw[j] - w[t * k + j]));
                }
                if (mode) ties++;
            }
        }
        EXPECT(idx_bad == 0, "%s: %d expert ids differ from the reference", cases[c].name, idx_bad);
        EXPECT(werr < 2e-6 * g->routed_scaling_factor, "%s: weights differ by %g", cases[c].name,
               werr);
        printf("ok   gate %-28s ids equal (%d tokens, %d of them on 5-level tied logits), max |dw| %.2e\n",
               cases[c].name, 2 * T, ties, werr);
        free(lg);
        free(bias);
        free(idx);
        free(w);
    }
    /* bad configs are errors with a message, not asserts */
    dpep_moe_gate_cfg bad = {16, 20, 4, 2, DPEP_SCORE_SIGMOID, DPEP_TOPK_NOAUX_TC, true, 1.0f};
    dpep_diag d;
    dpep_diag_init(&d);
    EXPECT(dpep_moe_gate_check(&bad, &d) == DPEP_ERR_INVALID && dpep_diag_find(&d, "num_experts_per_tok"),
           "k > E rejected");
    dpep_moe_gate_cfg bad2 = {16, 4, 3, 2, DPEP_SCORE_SIGMOID, DPEP_TOPK_NOAUX_TC, true, 1.0f};
    dpep_diag_init(&d);
    EXPECT(dpep_moe_gate_check(&bad2, &d) == DPEP_ERR_INVALID && dpep_diag_find(&d, "n_group"),
           "E %% n_group rejected");
    dpep_moe_gate_cfg bad3 = {16, 8, 4, 1, DPEP_SCORE_SIGMOID, DPEP_TOPK_NOAUX_TC, true, 1.0f};
    dpep_diag_init(&d);
    EXPECT(dpep_moe_gate_check(&bad3, &d) == DPEP_ERR_INVALID && dpep_diag_find(&d, "topk_group"),
           "too few experts in kept groups rejected");
    /* placement table validation */
    dpep_moe_placement p;
    int rk[4] = {0, 0, 1, 1}, sl[4] = {0, 0, 0, 1};
    dpep_diag_init(&d);
    EXPECT(dpep_moe_placement_from_table(4, 2, rk, sl, &p, &d) == DPEP_ERR_INVALID,
           "placement with a slot used twice rejected");
    int sl2[4] = {1, 0, 0, 1};
    EXPECT(dpep_moe_placement_from_table(4, 2, rk, sl2, &p, &d) == DPEP_OK && p.slot[0] == 1,
           "placement table accepted");
    dpep_moe_placement_free(&p);
}

/* ------------------------------------------------------------------------ */
/* Communicators of one instance: ep_rank = r / moe_tp (DESIGN.md)           */
/* ------------------------------------------------------------------------ */
typedef struct comms {
    int tp, ep, ep_rank, tp_rank;
    MPI_Comm ep_mpi, tp_mpi;
    dpep_comm *ep_c, *tp_c, *world_c;
} comms;

static void comms_make(comms *c, int tp)
{
    c->tp = tp;
    c->ep = g_size / tp;
    c->ep_rank = g_rank / tp;
    c->tp_rank = g_rank % tp;
    MPI_Comm_split(MPI_COMM_WORLD, c->tp_rank, c->ep_rank, &c->ep_mpi);
    MPI_Comm_split(MPI_COMM_WORLD, c->ep_rank, c->tp_rank, &c->tp_mpi);
    dpep_comm_create(c->ep_mpi, "ep", DPEP_COMM_MPI, 60, &c->ep_c);
    c->tp_c = NULL;
    if (tp > 1) dpep_comm_create(c->tp_mpi, "moe_tp", DPEP_COMM_MPI, 60, &c->tp_c);
    dpep_comm_create(MPI_COMM_WORLD, "world", DPEP_COMM_MPI, 60, &c->world_c);
}

static void comms_free(comms *c)
{
    dpep_comm_destroy(c->ep_c);
    dpep_comm_destroy(c->tp_c);
    dpep_comm_destroy(c->world_c);
    MPI_Comm_free(&c->ep_mpi);
    MPI_Comm_free(&c->tp_mpi);
}

/* max over ranks */
static double allmax(double v)
{
    double r = v;
    MPI_Allreduce(&v, &r, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return r;
}
/* /dev/shm has room for the node-shared transport (256 MB free): a
 * container with a small --shm-size legitimately falls back to MPI. */
static bool shm_room(void)
{
    struct statvfs sv;
    return statvfs("/dev/shm", &sv) == 0 && (double)sv.f_bavail * sv.f_frsize >= 256e6;
}

static long allsum(long v)
{
    long r = v;
    MPI_Allreduce(&v, &r, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    return r;
}

/* ------------------------------------------------------------------------ */
/* HF goldens                                                                */
/* ------------------------------------------------------------------------ */
static double maxdiff(const float *a, const float *b, int64_t n)
{
    double e = 0;
    for (int64_t i = 0; i < n; i++) e = fmax(e, fabs((double)a[i] - b[i]));
    return e;
}

static void test_golden(const char *src, const char *model, int tp)
{
    dpep_golden gold;
    dpep_model_config m;
    dpep_ckpt *ck = NULL;
    if (!dpep_golden_open_model(&gold, src, model, &m, &ck)) {
        EXPECT(0, "%s: goldens, config and checkpoint", model);
        return;
    }
    dpep_diag d;
    dpep_diag_init(&d);
    comms cm;
    comms_make(&cm, tp);
    /* the layout of dpep: tp = world, ep = world / moe_tp, no DPA; dense
     * layers TP-split over the instance (dense1 = false) or data-parallel */
    double e_idx = 0, e_w = 0, e_routed = 0, e_shared = 0, e_out = 0, e_dense = 0, e_gate = 0;
    long wrong_ids = 0, tokens = 0;
    for (int dense1 = 0; dense1 < 2; dense1++) {
        dpep_config c;
        dpep_config_init(&c);
        c.parallel.tp = g_size;
        c.parallel.dp = 1;
        c.parallel.ep = g_size / tp;
        c.parallel.moe_dense_tp_size = dense1 ? 1 : 0;
        dpep_layout l;
        dpep_rank_info r;
        EXPECT(dpep_config_validate(&c, g_size, &d) == DPEP_OK, "config validate");
        EXPECT(dpep_layout_from_config(&c, g_size, &l) == DPEP_OK, "layout");
        dpep_layout_rank(&l, g_rank, &r);
        EXPECT(r.ep_rank == cm.ep_rank && r.moe_tp_rank == cm.tp_rank, "rank layout");
        dpep_weights w;
        dpep_status st = dpep_weights_load(ck, &m, &l, &r, &w, &d);
        EXPECT(st == DPEP_OK, "%s weights", model);
        if (st != DPEP_OK) {
            dpep_diag_print(&d, stdout);
            dpep_config_free(&c);
            break;
        }
        MPI_Comm dense_mpi;
        MPI_Comm_split(MPI_COMM_WORLD, dense1 ? g_rank : 0, g_rank, &dense_mpi);
        dpep_comm *dense_c = NULL;
        if (!dense1 && g_size > 1) dpep_comm_create(dense_mpi, "dense", DPEP_COMM_MPI, 60, &dense_c);
        dpep_moe_config mc;
        dpep_moe_config_from_model(&m, &mc);
        mc.ep = cm.ep_c;
        mc.moe_tp = cm.tp_c;
        mc.dense = dense_c;
        mc.max_tokens = 32;
        mc.chunk = 5; /* several GEMM chunks even for 29 tokens */
        /* alltoall over shm (ep > 1; auto when /dev/shm is nearly full),
         * alltoall over MPI, allgather */
        const bool room = shm_room();
        for (int be = 0; be < 3; be++) {
            mc.backend = be == 2 ? DPEP_A2A_ALLGATHER : DPEP_A2A_ALLTOALL;
            mc.transport = be == 1 ? DPEP_A2A_TRANSPORT_MPI
                           : room  ? DPEP_A2A_TRANSPORT_SHM
                                   : DPEP_A2A_TRANSPORT_AUTO;
            dpep_moe *moe = NULL;
            EXPECT(dpep_moe_create(&mc, &moe, &d) == DPEP_OK, "moe create");
            if (!moe) {
                dpep_diag_print(&d, stdout);
                continue;
            }
            const char *want = be == 2 ? "allgather" : be == 0 && cm.ep > 1 ? "shm" : "mpi";
            if (be == 0 && !room) want = dpep_moe_transport_name(moe);
            EXPECT(strcmp(dpep_moe_transport_name(moe), want) == 0, "transport %s, expected %s",
                   dpep_moe_transport_name(moe), want);
            const dpep_layer_w *L = &w.layer[1];
            for (int p = 0; p < 3; p++) {
                char nm[64];
                int64_t rows = 0, cols = 0, n = 0;
                snprintf(nm, sizeof nm, "p%d.act.l1.mlp_norm", p);
                float *x = dpep_golden_f32(&gold, nm, &rows, &cols);
                snprintf(nm, sizeof nm, "p%d.act.l1.router_logits", p);
                int64_t lr, lc;
                float *lg = dpep_golden_f32(&gold, nm, &lr, &lc);
                snprintf(nm, sizeof nm, "p%d.act.l1.topk_idx", p);
                int64_t *gi = dpep_golden_i64(&gold, nm, &n);
                int64_t tr, tc;
                snprintf(nm, sizeof nm, "p%d.act.l1.topk_w", p);
                float *gw = dpep_golden_f32(&gold, nm, &tr, &tc);
                snprintf(nm, sizeof nm, "p%d.act.l1.routed_out", p);
                float *gro = dpep_golden_f32(&gold, nm, &tr, &tc);
                snprintf(nm, sizeof nm, "p%d.act.l1.shared_out", p);
                float *gso = dpep_golden_f32(&gold, nm, &tr, &tc);
                snprintf(nm, sizeof nm, "p%d.act.l1.moe_out", p);
                float *gmo = dpep_golden_f32(&gold, nm, &tr, &tc);
                snprintf(nm, sizeof nm, "p%d.act.l0.mlp_norm", p);
                float *dx = dpep_golden_f32(&gold, nm, &tr, &tc);
                snprintf(nm, sizeof nm, "p%d.act.l0.mlp_out", p);
                float *dy = dpep_golden_f32(&gold, nm, &tr, &tc);
                bool have = x && lg && gi && gw && gro && gso && gmo && dx && dy &&
                            cols == m.hidden && n == rows * m.topk;
                EXPECT(have, "%s p%d goldens present", model, p);
                if (have) {
                    /* this rank's tokens: a contiguous block (p0: 1 token,
                     * so other ranks are idle) */
                    int64_t t0 = rows * g_rank / g_size, t1 = rows * (g_rank + 1) / g_size;
                    int64_t T = t1 - t0, H = m.hidden, k = m.topk;
                    float *out = malloc(sizeof(float) * (size_t)(T * H + 1));
                    float *o2 = malloc(sizeof(float) * (size_t)(T * H + 1));
                    int32_t *idx = malloc(sizeof(int32_t) * (size_t)(T * k + 1));
                    float *wt = malloc(sizeof(float) * (size_t)(T * k + 1));
                    const float *xr = x + t0 * H;
                    EXPECT(dpep_moe_forward(moe, L, xr, T, out, idx, wt) == DPEP_OK, "forward");
                    for (int64_t i = 0; i < T * k; i++) {
                        if (idx[i] != gi[t0 * k + i]) wrong_ids++;
                        e_w = fmax(e_w, fabs(wt[i] - gw[t0 * k + i]));
                    }
                    e_out = fmax(e_out, maxdiff(out, gmo + t0 * H, T * H));
                    EXPECT(dpep_moe_forward_parts(moe, L, xr, T, DPEP_MOE_ROUTED, o2, NULL, NULL) ==
                               DPEP_OK, "routed");
                    e_routed = fmax(e_routed, maxdiff(o2, gro + t0 * H, T * H));
                    EXPECT(dpep_moe_forward_parts(moe, L, xr, T, DPEP_MOE_SHARED, o2, NULL, NULL) ==
                               DPEP_OK, "shared");
                    e_shared = fmax(e_shared, maxdiff(o2, gso + t0 * H, T * H));
                    /* the gate alone on the golden logits */
                    dpep_moe_gate_cfg gc;
                    dpep_moe_gate_cfg_from_model(&m, &gc);
                    int32_t *i2 = malloc(sizeof(int32_t) * (size_t)(rows * k));
                    float *w2 = malloc(sizeof(float) * (size_t)(rows * k));
                    dpep_moe_gate_select(&gc, lg, L->router_bias, rows, i2, w2);
                    for (int64_t i = 0; i < rows * k; i++) {
                        if (i2[i] != gi[i]) wrong_ids++;
                        e_gate = fmax(e_gate, fabs(w2[i] - gw[i]));
                    }
                    /* dense layer 0 */
                    EXPECT(dpep_moe_dense_forward(moe, &w.layer[0].mlp, dx + t0 * H, T, o2) ==
                               DPEP_OK, "dense");
                    e_dense = fmax(e_dense, maxdiff(o2, dy + t0 * H, T * H));
                    tokens += T;
                    free(i2);
                    free(w2);
                    free(out);
                    free(o2);
                    free(idx);
                    free(wt);
                }
                free(x);
                free(lg);
                free(gi);
                free(gw);
                free(gro);
                free(gso);
                free(gmo);
                free(dx);
                free(dy);
            }
            dpep_moe_free(moe);
        }
        dpep_comm_destroy(dense_c);
        MPI_Comm_free(&dense_mpi);
        dpep_weights_free(&w);
        dpep_config_free(&c);
    }
    wrong_ids = allsum(wrong_ids);
    tokens = allsum(tokens);
    e_w = allmax(e_w);
    e_gate = allmax(e_gate);
    e_routed = allmax(e_routed);
    e_shared = allmax(e_shared);
    e_out = allmax(e_out);
    e_dense = allmax(e_dense);
    (void)e_idx;
    EXPECT(wrong_ids == 0, "%s: %ld expert ids differ from transformers'", model, wrong_ids);
    EXPECT(e_w < 1e-5 && e_gate < 1e-5, "%s: topk_w differs by %g (gate on golden logits %g)",
           model, e_w, e_gate);
    EXPECT(e_routed < 1e-4, "%s: routed_out differs by %g", model, e_routed);
    EXPECT(e_shared < 1e-4, "%s: shared_out differs by %g", model, e_shared);
    EXPECT(e_out < 1e-4, "%s: moe_out differs by %g", model, e_out);
    EXPECT(e_dense < 1e-4, "%s: dense mlp_out differs by %g", model, e_dense);
    if (g_rank == 0)
        printf("ok   golden %-16s np %d ep %d moe_tp %d (both backends, dense TP and DP, %ld "
               "token rows): ids equal; max |diff| topk_w %.1e (gate alone %.1e), routed %.1e, "
               "shared %.1e, moe_out %.1e, dense %.1e\n",
               model, g_size, g_size / tp, tp, tokens, e_w, e_gate, e_routed, e_shared, e_out,
               e_dense);
    comms_free(&cm);
    dpep_ckpt_close(ck);
    dpep_golden_close(&gold);
}

/* ------------------------------------------------------------------------ */
/* Random model vs a single-rank reference                                   */
/* ------------------------------------------------------------------------ */
typedef struct full_model {
    int H, E, I, n_shared;
    dpep_moe_gate_cfg g;
    float *router, *bias;   /* (E, H), (E)                         */
    float **gate, **up, **down; /* per expert: (I, H), (I, H), (H, I) */
    float *sg, *su, *sd;    /* shared: (n_shared*I, H) ... (H, n_shared*I) */
} full_model;

static float *randn(int64_t n, float scale, uint64_t *s)
{
    float *x = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) x[i] = scale * rng_normal(s);
    return x;
}

static void full_make(full_model *f, uint64_t seed)
{
    f->H = 48;
    f->E = 32;
    f->I = 24;
    f->n_shared = 1;
    f->g = (dpep_moe_gate_cfg){32, 4, 4, 2, DPEP_SCORE_SIGMOID, DPEP_TOPK_NOAUX_TC, true, 2.5f};
    uint64_t s = seed;
    f->router = randn((int64_t)f->E * f->H, 1.0f / sqrtf((float)f->H), &s);
    f->bias = randn(f->E, 0.1f, &s);
    f->gate = malloc(sizeof(float *) * f->E);
    f->up = malloc(sizeof(float *) * f->E);
    f->down = malloc(sizeof(float *) * f->E);
    for (int e = 0; e < f->E; e++) {
        f->gate[e] = randn((int64_t)f->I * f->H, 1.0f / sqrtf((float)f->H), &s);
        f->up[e] = randn((int64_t)f->I * f->H, 1.0f / sqrtf((float)f->H), &s);
        f->down[e] = randn((int64_t)f->H * f->I, 1.0f / sqrtf((float)f->I), &s);
    }
    int SI = f->n_shared * f->I;
    f->sg = randn((int64_t)SI * f->H, 1.0f / sqrtf((float)f->H), &s);
    f->su = randn((int64_t)SI * f->H, 1.0f / sqrtf((float)f->H), &s);
    f->sd = randn((int64_t)f->H * SI, 1.0f / sqrtf((float)SI), &s);
}

static void full_free(full_model *f)
{
    for (int e = 0; e < f->E; e++) {
        free(f->gate[e]);
        free(f->up[e]);
        free(f->down[e]);
    }
    free(f->gate);
    free(f->up);
    free(f->down);
    free(f->router);
    free(f->bias);
    free(f->sg);
    free(f->su);
    free(f->sd);
}

/* MLP slice [i0, i0+n) of an (I, H)/(H, I) MLP, as dpep_weights_load cuts it. */
static void slice_mlp(dpep_mlp_w *o, const float *g, const float *u, const float *dn, int H, int I,
                      int i0, int n)
{
    o->inter = n;
    float *gs = malloc(sizeof(float) * (size_t)n * H), *us = malloc(sizeof(float) * (size_t)n * H);
    float *ds = malloc(sizeof(float) * (size_t)n * H);
    memcpy(gs, g + (size_t)i0 * H, sizeof(float) * (size_t)n * H);
    memcpy(us, u + (size_t)i0 * H, sizeof(float) * (size_t)n * H);
    for (int h = 0; h < H; h++)
        for (int j = 0; j < n; j++) ds[(size_t)h * n + j] = dn[(size_t)h * I + i0 + j];
    o->gate = dpep_mat_make(gs, DPEP_WT_F32, n, H);
    o->up = dpep_mat_make(us, DPEP_WT_F32, n, H);
    o->down = dpep_mat_make(ds, DPEP_WT_F32, H, n);
}

/* This rank's layer; round_robin: expert e in slot e / ep of rank e % ep
 * (a non-contiguous placement table), else dpep_weights_load's contiguous. */
static void rank_layer(const full_model *f, const comms *c, bool round_robin, dpep_layer_w *L)
{
    memset(L, 0, sizeof *L);
    L->moe = true;
    L->router = f->router;
    L->router_bias = f->bias;
    int per = f->E / c->ep, n = f->I / c->tp;
    L->expert0 = c->ep_rank * per;
    L->n_experts = per;
    L->experts = calloc((size_t)per, sizeof *L->experts);
    for (int sl = 0; sl < per; sl++) {
        int e = round_robin ? sl * c->ep + c->ep_rank : L->expert0 + sl;
        slice_mlp(&L->experts[sl], f->gate[e], f->up[e], f->down[e], f->H, f->I, c->tp_rank * n, n);
    }
    int SI = f->n_shared * f->I, sn = SI / c->tp;
    slice_mlp(&L->shared, f->sg, f->su, f->sd, f->H, SI, c->tp_rank * sn, sn);
}

static void rank_layer_free(dpep_layer_w *L)
{
    for (int e = 0; e < L->n_experts; e++) {
        free(L->experts[e].gate.p);
        free(L->experts[e].up.p);
        free(L->experts[e].down.p);
    }
    free(L->experts);
    free(L->shared.gate.p);
    free(L->shared.up.p);
    free(L->shared.down.p);
}

/* double-precision MLP of one token */
static void ref_mlp(const float *g, const float *u, const float *dn, int H, int I, const float *x,
                    double scale, double *acc)
{
    double *a = malloc(sizeof(double) * I);
    for (int i = 0; i < I; i++) {
        double gg = 0, uu = 0;
        for (int h = 0; h < H; h++) {
            gg += (double)g[(size_t)i * H + h] * x[h];
            uu += (double)u[(size_t)i * H + h] * x[h];
        }
        a[i] = gg / (1.0 + exp(-gg)) * uu;
    }
    for (int h = 0; h < H; h++) {
        double s = 0;
        for (int i = 0; i < I; i++) s += (double)dn[(size_t)h * I + i] * a[i];
        acc[h] += scale * s;
    }
    free(a);
}

/* Reference layer for T tokens (single rank, whole model). Returns the
 * number of tokens whose expert set differs from `idx`. */
static int ref_layer(const full_model *f, const float *x, int64_t T, const int32_t *idx,
                     double *out)
{
    int H = f->H, k = f->g.topk, bad = 0;
    for (int64_t t = 0; t < T; t++) {
        const float *xt = x + t * H;
        float lg[DPEP_MOE_MAX_EXPERTS];
        for (int e = 0; e < f->E; e++) {
            double s = 0;
            for (int h = 0; h < H; h++) s += (double)f->router[(size_t)e * H + h] * xt[h];
            lg[e] = (float)s;
        }
        int ri[DPEP_MOE_MAX_TOPK];
        float rw[DPEP_MOE_MAX_TOPK];
        ref_gate(&f->g, lg, f->bias, ri, rw);
        double *o = out + t * H;
        for (int h = 0; h < H; h++) o[h] = 0;
        for (int j = 0; j < k; j++) {
            if (idx && ri[j] != idx[t * k + j]) bad++;
            ref_mlp(f->gate[ri[j]], f->up[ri[j]], f->down[ri[j]], H, f->I, xt, rw[j], o);
        }
        ref_mlp(f->sg, f->su, f->sd, H, f->n_shared * f->I, xt, 1.0, o);
    }
    return bad;
}

/* Scenario: tokens per rank and a router bias that forces a skew. */
typedef enum scen { SC_UNIFORM = 0, SC_IDLE, SC_ALL_IDLE, SC_ONE_RANK, SC_MAX_SKEW, SC_COUNT } scen;
static const char *const scen_name[] = {"uniform", "idle ranks", "all ranks idle",
                                        "all tokens to one rank", "max tokens, all to one rank"};

static void test_random(int tp)
{
    comms cm;
    comms_make(&cm, tp);
    full_model f;
    full_make(&f, 2024);
    dpep_layer_w L, L2;
    rank_layer(&f, &cm, false, &L);
    rank_layer(&f, &cm, true, &L2);
    int *prk = malloc(sizeof(int) * f.E), *psl = malloc(sizeof(int) * f.E);
    for (int e = 0; e < f.E; e++) {
        prk[e] = e % cm.ep;
        psl[e] = e / cm.ep;
    }
    dpep_moe_placement rr;
    dpep_diag d0;
    dpep_diag_init(&d0);
    EXPECT(dpep_moe_placement_from_table(f.E, cm.ep, prk, psl, &rr, &d0) == DPEP_OK, "rr table");
    const int H = f.H, k = f.g.topk;
    const int64_t Tmax = 40;
    /* 0: alltoall (auto: shm when ep > 1), 1: allgather, 2: alltoall with a
     * round-robin placement (auto), 3 and 4: 0 and 2 over MPI, 5: 0 over the
     * device-rows transport GPUs take (mpi-staged when ep > 1,
     * dpep_moe_test_device_rows), 6: 0 over the device-segment transport
     * GPUs of a node take (ipc; its segments node-shared host memory here) */
    enum { NB = 7 };
    dpep_moe *moe[NB] = {NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    dpep_diag d;
    dpep_diag_init(&d);
    /* with_small_shm.sh (no room in /dev/shm): 6 asks auto instead, whose
     * ipc gives way to mpi-staged (the fallback path of device contexts) */
    const char *env_tr = getenv("DPEP_TEST_EXPECT_TRANSPORT");
    const bool no_room = env_tr && strcmp(env_tr, "mpi") == 0;
    for (int be = 0; be < NB; be++) {
        dpep_moe_config mc;
        memset(&mc, 0, sizeof mc);
        mc.hidden = H;
        mc.gate = f.g;
        mc.moe_inter = f.I;
        mc.n_shared = f.n_shared;
        mc.backend = be == 1 ? DPEP_A2A_ALLGATHER : DPEP_A2A_ALLTOALL;
        mc.transport = be == 6 ? (no_room ? DPEP_A2A_TRANSPORT_AUTO : DPEP_A2A_TRANSPORT_IPC)
                       : be >= 3 ? DPEP_A2A_TRANSPORT_MPI
                                 : DPEP_A2A_TRANSPORT_AUTO;
        mc.placement = be == 2 || be == 4 ? &rr : NULL; /* copied by create */
        mc.max_tokens = Tmax;
        mc.chunk = 16;
        mc.ep = cm.ep_c;
        mc.moe_tp = cm.tp_c;
        /* 3: the CPU device given explicitly (NULL elsewhere: the CPU) */
        dpep_device cpu;
        EXPECT(dpep_device_get(DPEP_DEVICE_CPU, -1, &cpu) == DPEP_OK, "cpu device");
        mc.device = be == 3 ? &cpu : NULL;
        dpep_moe_test_device_rows(be >= 5);
        EXPECT(dpep_moe_create(&mc, &moe[be], &d) == DPEP_OK, "create");
        dpep_moe_test_device_rows(false);
        if (!moe[be]) dpep_diag_print(&d, stdout);
    }
    if (moe[0] && moe[3]) {
        /* with_small_shm.sh runs this test with no room for the segments:
         * auto must then fall back to MPI */
        const char *env = getenv("DPEP_TEST_EXPECT_TRANSPORT");
        const char *want = env && *env ? env : cm.ep > 1 ? "shm" : "mpi";
        /* a host whose /dev/shm is nearly full (small container --shm-size)
         * legitimately falls back to MPI: only expect shm with room */
        if (!(env && *env) && cm.ep > 1 && !shm_room()) want = dpep_moe_transport_name(moe[0]);
        EXPECT(strcmp(dpep_moe_transport_name(moe[0]), want) == 0 &&
                   strcmp(dpep_moe_transport_name(moe[3]), "mpi") == 0,
               "transports %s / %s, expected %s / mpi", dpep_moe_transport_name(moe[0]),
               dpep_moe_transport_name(moe[3]), want);
    }
    if (moe[5]) {
        const char *want = cm.ep > 1 || tp > 1 ? "mpi-staged" : "mpi";
        EXPECT(strcmp(dpep_moe_transport_name(moe[5]), want) == 0,
               "device-rows hook: transport %s, expected %s", dpep_moe_transport_name(moe[5]),
               want);
    }
    if (moe[6] && (cm.ep > 1 || tp > 1)) {
        /* ipc needs two EP ranks: one EP rank with MoE-TP takes mpi-staged */
        const char *want = no_room || cm.ep < 2 ? "mpi-staged" : "ipc";
        EXPECT(strcmp(dpep_moe_transport_name(moe[6]), want) == 0,
               "device-segment hook: transport %s, expected %s", dpep_moe_transport_name(moe[6]),
               want);
    }
    if (no_room && cm.ep > 1) {
        /* ipc asked explicitly without room: an error on every rank, naming
         * the field */
        dpep_moe_config bc;
        memset(&bc, 0, sizeof bc);
        bc.hidden = H;
        bc.gate = f.g;
        bc.moe_inter = f.I;
        bc.max_tokens = Tmax;
        bc.ep = cm.ep_c;
        bc.transport = DPEP_A2A_TRANSPORT_IPC;
        dpep_moe *bad = NULL;
        dpep_diag bd;
        dpep_diag_init(&bd);
        dpep_moe_test_device_rows(true);
        dpep_status bst = dpep_moe_create(&bc, &bad, &bd);
        dpep_moe_test_device_rows(false);
        EXPECT(bst == DPEP_ERR_INVALID && !bad && dpep_diag_find(&bd, "moe_a2a_transport ipc"),
               "ipc without room refused naming parallel.moe_a2a_transport (got %s)",
               dpep_status_string(bst));
        dpep_moe_free(bad);
    }
    {
        /* one EP rank fails its local checks: with shm every rank gets an
         * error (no rank waits in the shared-window setup) */
        dpep_moe_config bc;
        memset(&bc, 0, sizeof bc);
        bc.hidden = dpep_comm_rank(cm.ep_c) == cm.ep - 1 ? 0 : H;
        bc.gate = f.g;
        bc.moe_inter = f.I;
        bc.max_tokens = 4;
        bc.ep = cm.ep_c;
        bc.moe_tp = cm.tp_c;
        bc.transport = DPEP_A2A_TRANSPORT_SHM;
        dpep_moe *bad = NULL;
        dpep_diag bd;
        dpep_diag_init(&bd);
        EXPECT(dpep_moe_create(&bc, &bad, &bd) != DPEP_OK && !bad,
               "a failing EP rank fails create everywhere");
        dpep_moe_free(bad);
    }
    /* AddressSanitizer ends the job on an impossible allocation unless told
     * to return NULL like malloc: the out-of-memory case then only runs
     * with ASAN_OPTIONS=allocator_may_return_null=1 (same on every rank) */
    bool may_oom = true;
#if defined(__SANITIZE_ADDRESS__)
    may_oom = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    may_oom = false;
#endif
#endif
    if (!may_oom) {
        const char *ao = getenv("ASAN_OPTIONS");
        may_oom = ao && strstr(ao, "allocator_may_return_null=1");
    }
    {
        /* one EP rank cannot allocate its pool (2^61 bytes of expert work
         * space, 2 x chunk 2^29 x hidden 2^29 floats: beyond any address
         * space, whatever the overcommit policy):
         * it still joins the agreement, and every rank returns an error */
        const bool last = dpep_comm_rank(cm.ep_c) == cm.ep - 1;
        dpep_moe_config bc;
        memset(&bc, 0, sizeof bc);
        bc.hidden = last ? 1 << 29 : H;
        bc.chunk = last ? 1 << 29 : 0;
        bc.gate = f.g;
        bc.moe_inter = f.I;
        bc.max_tokens = 4;
        bc.ep = cm.ep_c;
        bc.moe_tp = cm.tp_c;
        bc.transport = DPEP_A2A_TRANSPORT_AUTO;
        dpep_moe *bad = NULL;
        dpep_diag bd;
        dpep_diag_init(&bd);
        dpep_status st = DPEP_OK;
        if (may_oom) {
            st = dpep_moe_create(&bc, &bad, &bd);
            EXPECT(st != DPEP_OK && !bad, "a rank out of memory fails create everywhere");
            EXPECT(!last || st == DPEP_ERR_NOMEM, "the rank out of memory returns NOMEM (got %s)",
                   dpep_status_string(st));
            dpep_moe_free(bad);
        } else if (g_rank == 0) {
            printf("skip out-of-memory create under AddressSanitizer (set "
                   "ASAN_OPTIONS=allocator_may_return_null=1)\n");
        }
        /* nccl on the CPU (ep > 1): INVALID on every rank, naming the field */
        if (cm.ep > 1) {
            bc.hidden = H;
            bc.chunk = 0;
            bc.transport = DPEP_A2A_TRANSPORT_NCCL;
            dpep_diag_init(&bd);
            st = dpep_moe_create(&bc, &bad, &bd);
            EXPECT(st == DPEP_ERR_INVALID && !bad && dpep_diag_find(&bd, "moe_a2a_transport nccl"),
                   "nccl on the CPU refused naming parallel.moe_a2a_transport (got %s)",
                   dpep_status_string(st));
            dpep_moe_free(bad);
            bad = NULL;
            bc.transport = DPEP_A2A_TRANSPORT_AUTO;
        }
        /* a device kind without a MoE kernel table (the last EP rank asks
         * for one): DPEP_ERR_UNSUPPORTED there with a message, an error on
         * every rank */
        dpep_device nokern = {DPEP_DEVICE_CUDA, 0, NULL};
        bc.hidden = H;
        bc.chunk = 0;
        bc.device = last ? &nokern : NULL;
        dpep_diag_init(&bd);
        st = dpep_moe_create(&bc, &bad, &bd);
        EXPECT(st != DPEP_OK && !bad, "a device without kernels fails create everywhere");
        EXPECT(!last || (st == DPEP_ERR_UNSUPPORTED && dpep_diag_find(&bd, "no cuda kernels")),
               "a device without kernels: UNSUPPORTED with a message (got %s)",
               dpep_status_string(st));
        dpep_moe_free(bad);
    }
    float *bias0 = malloc(sizeof(float) * f.E);
    memcpy(bias0, f.bias, sizeof(float) * f.E);
    dpep_moe_placement_free(&rr);
    free(prk);
    free(psl);
    for (int sc = 0;
         sc < SC_COUNT && moe[0] && moe[1] && moe[2] && moe[3] && moe[4] && moe[5] && moe[6];
         sc++) {
        uint64_t s = 1000 + 77 * (uint64_t)g_rank + 13 * (uint64_t)sc;
        int64_t T;
        switch (sc) {
        case SC_UNIFORM: T = 17 + (5 * g_rank) % 23; break;
        case SC_IDLE: T = (g_rank % 2) ? 0 : 11 + g_rank; break;
        case SC_ALL_IDLE: T = 0; break;
        case SC_ONE_RANK: T = 9 + g_rank; break;
        default: T = Tmax; break;
        }
        memcpy(f.bias, bias0, sizeof(float) * f.E);
        if (sc >= SC_ONE_RANK) /* experts 28..31 (group 3, the last EP rank) win */
            for (int e = f.E - k; e < f.E; e++) f.bias[e] = 100.0f;
        float *x = randn(T * H + 1, 1.0f, &s);
        float *out[NB];
        for (int be = 0; be < NB; be++) out[be] = malloc(sizeof(float) * (size_t)(T * H + 1));
        int32_t *idx = malloc(sizeof(int32_t) * (size_t)(T * k + 1));
        float *wt = malloc(sizeof(float) * (size_t)(T * k + 1));
        for (int be = 0; be < NB; be++)
            EXPECT(dpep_moe_forward(moe[be], be == 2 || be == 4 ? &L2 : &L, x, T, out[be], idx,
                                    wt) == DPEP_OK,
                   "%s forward (%d)", scen_name[sc], be);
        /* every transport sums in rank order: bit-identical outputs */
        long diff_tr = 0, diff_dr = 0;
        for (int64_t i = 0; i < T * H; i++) {
            diff_tr += memcmp(&out[0][i], &out[3][i], sizeof(float)) != 0 ||
                       memcmp(&out[2][i], &out[4][i], sizeof(float)) != 0;
            diff_dr += memcmp(&out[5][i], &out[3][i], sizeof(float)) != 0 ||
                       memcmp(&out[6][i], &out[3][i], sizeof(float)) != 0;
        }
        diff_tr = allsum(diff_tr);
        diff_dr = allsum(diff_dr);
        EXPECT(diff_tr == 0, "%s: shm and MPI transports differ in %ld elements", scen_name[sc],
               diff_tr);
        EXPECT(diff_dr == 0, "%s: %s / %s and MPI transports differ in %ld elements",
               scen_name[sc], dpep_moe_transport_name(moe[5]), dpep_moe_transport_name(moe[6]),
               diff_dr);
        dpep_moe_stats st5, st3;
        dpep_moe_get_stats(moe[5], &st5);
        dpep_moe_get_stats(moe[3], &st3);
        EXPECT(st5.rows_sent == st3.rows_sent && st5.rows_recv == st3.rows_recv &&
                   st5.dispatch_bytes_sent == st3.dispatch_bytes_sent &&
                   st5.combine_bytes_recv == st3.combine_bytes_recv,
               "%s: %s stats (rows %lld/%lld) differ from mpi's (%lld/%lld)", scen_name[sc],
               dpep_moe_transport_name(moe[5]), (long long)st5.rows_sent,
               (long long)st5.rows_recv, (long long)st3.rows_sent, (long long)st3.rows_recv);
        for (int r = 0; r < cm.ep; r++)
            EXPECT(st5.send_bytes[r] == st3.send_bytes[r] && st5.recv_bytes[r] == st3.recv_bytes[r],
                   "%s: per-peer bytes to/from EP rank %d differ", scen_name[sc], r);
        dpep_moe_stats st6;
        dpep_moe_get_stats(moe[6], &st6);
        EXPECT(st6.rows_sent == st3.rows_sent && st6.rows_recv == st3.rows_recv &&
                   st6.combine_bytes_sent == st3.combine_bytes_sent,
               "%s: %s stats differ from mpi's", scen_name[sc], dpep_moe_transport_name(moe[6]));
        dpep_moe_stats st;
        dpep_moe_get_stats(moe[0], &st);
        long recv = allsum(st.rows_recv), maxrecv = (long)allmax((double)st.rows_recv);
        double *ref = malloc(sizeof(double) * (size_t)(T * H + 1));
        int bad_ids = ref_layer(&f, x, T, idx, ref);
        double e_a2a = 0, e_ag = 0, e_ab = 0, e_rr = 0, mag = 0;
        for (int64_t i = 0; i < T * H; i++) {
            mag = fmax(mag, fabs(ref[i]));
            e_a2a = fmax(e_a2a, fabs(out[0][i] - ref[i]));
            e_ag = fmax(e_ag, fabs(out[1][i] - ref[i]));
            e_ab = fmax(e_ab, fabs((double)out[0][i] - out[1][i]));
            e_rr = fmax(e_rr, fabs(out[2][i] - ref[i]));
        }
        bad_ids = (int)allsum(bad_ids);
        mag = allmax(mag);
        e_a2a = allmax(e_a2a) / fmax(mag, 1e-30);
        e_ag = allmax(e_ag) / fmax(mag, 1e-30);
        e_ab = allmax(e_ab) / fmax(mag, 1e-30);
        e_rr = allmax(e_rr) / fmax(mag, 1e-30);
        long tot = allsum((long)T);
        EXPECT(bad_ids == 0, "%s: %d expert ids differ from the reference gate", scen_name[sc],
               bad_ids);
        EXPECT(e_a2a < 2e-5 && e_ag < 2e-5, "%s: rel. error alltoall %g allgather %g",
               scen_name[sc], e_a2a, e_ag);
        EXPECT(e_ab < 2e-5, "%s: alltoall vs allgather %g", scen_name[sc], e_ab);
        EXPECT(e_rr < 2e-5, "%s: round-robin placement: rel. error %g", scen_name[sc], e_rr);
        if (sc >= SC_ONE_RANK && cm.ep > 1)
            EXPECT(maxrecv == tot, "%s: the last EP rank should receive every token once (%ld of "
                   "%ld)", scen_name[sc], maxrecv, tot);
        if (g_rank == 0)
            printf("ok   random np %d ep %d moe_tp %d %-28s %4ld tokens, %4ld rows moved (max %ld "
                   "on one rank): rel err a2a (%s) %.1e, allgather %.1e, a2a-vs-ag %.1e, "
                   "round-robin placement %.1e; a2a over mpi, %s and %s bit-identical\n",
                   g_size, cm.ep, tp, scen_name[sc], tot, recv, maxrecv,
                   dpep_moe_transport_name(moe[0]), e_a2a, e_ag, e_ab, e_rr,
                   dpep_moe_transport_name(moe[5]), dpep_moe_transport_name(moe[6]));
        free(x);
        for (int be = 0; be < NB; be++) free(out[be]);
        free(idx);
        free(wt);
        free(ref);
    }
    memcpy(f.bias, bias0, sizeof(float) * f.E);
    free(bias0);
    /* stage order with the shm transport: a second run_experts on one
     * dispatch, or a dispatch before the pending combine, is refused on
     * every rank (peers may be reading the partial sums); the step then
     * completes with the right answer */
    if (moe[0] && strcmp(dpep_moe_transport_name(moe[0]), "shm") == 0) {
        uint64_t s = 4242 + (uint64_t)g_rank;
        const int64_t T = 7;
        float *x = randn(T * H, 1.0f, &s), *o1 = malloc(sizeof(float) * (size_t)(T * H)),
              *o2 = malloc(sizeof(float) * (size_t)(T * H));
        int32_t *idx = malloc(sizeof(int32_t) * (size_t)(T * k));
        float *wt = malloc(sizeof(float) * (size_t)(T * k));
        EXPECT(dpep_moe_forward_parts(moe[0], &L, x, T, DPEP_MOE_ROUTED, o1, idx, wt) == DPEP_OK,
               "reference step");
        EXPECT(dpep_moe_dispatch(moe[0], x, T, idx, wt) == DPEP_OK, "dispatch");
        EXPECT(dpep_moe_run_experts(moe[0], &L, DPEP_MOE_ROUTED) == DPEP_OK, "experts");
        EXPECT(dpep_moe_run_experts(moe[0], &L, DPEP_MOE_ROUTED) == DPEP_ERR_INTERNAL,
               "second run_experts on one dispatch refused");
        EXPECT(dpep_moe_dispatch(moe[0], x, T, idx, wt) == DPEP_ERR_INTERNAL,
               "dispatch before the pending combine refused");
        EXPECT(dpep_moe_combine(moe[0], o2) == DPEP_OK, "combine");
        EXPECT(memcmp(o1, o2, sizeof(float) * (size_t)(T * H)) == 0,
               "the step after refused calls equals the reference step");
        free(x);
        free(o1);
        free(o2);
        free(idx);
        free(wt);
    }
    /* stage order without an announcement (mpi transport): combine or
     * run_experts without a dispatch, and combine before run_experts, are
     * refused; run_experts may run again on one dispatch (benchmarks) and a
     * dispatch may restart the step; the answers equal the reference step */
    if (moe[3]) {
        uint64_t s = 5151 + (uint64_t)g_rank;
        const int64_t T = 9;
        float *x = randn(T * H, 1.0f, &s), *o1 = malloc(sizeof(float) * (size_t)(T * H)),
              *o2 = malloc(sizeof(float) * (size_t)(T * H));
        int32_t *idx = malloc(sizeof(int32_t) * (size_t)(T * k));
        float *wt = malloc(sizeof(float) * (size_t)(T * k));
        EXPECT(dpep_moe_combine(moe[3], o2) == DPEP_ERR_INTERNAL,
               "combine without dispatch refused");
        EXPECT(dpep_moe_run_experts(moe[3], &L, DPEP_MOE_ROUTED) == DPEP_ERR_INTERNAL,
               "run_experts without dispatch refused");
        dpep_moe_run_identity(moe[3]); /* refused: logs, changes nothing */
        EXPECT(dpep_moe_combine(moe[3], o2) == DPEP_ERR_INTERNAL,
               "run_identity without dispatch refused");
        EXPECT(dpep_moe_forward_parts(moe[3], &L, x, T, DPEP_MOE_ROUTED, o1, idx, wt) == DPEP_OK,
               "reference step");
        EXPECT(dpep_moe_dispatch(moe[3], x, T, idx, wt) == DPEP_OK, "dispatch");
        EXPECT(dpep_moe_combine(moe[3], o2) == DPEP_ERR_INTERNAL,
               "combine before run_experts refused");
        EXPECT(dpep_moe_run_experts(moe[3], &L, DPEP_MOE_ROUTED) == DPEP_OK, "experts");
        EXPECT(dpep_moe_run_experts(moe[3], &L, DPEP_MOE_ROUTED) == DPEP_OK, "experts again (mpi)");
        EXPECT(dpep_moe_combine(moe[3], o2) == DPEP_OK, "combine");
        EXPECT(memcmp(o1, o2, sizeof(float) * (size_t)(T * H)) == 0, "experts twice: same answer");
        EXPECT(dpep_moe_dispatch(moe[3], x, T, idx, wt) == DPEP_OK, "dispatch");
        EXPECT(dpep_moe_run_experts(moe[3], &L, DPEP_MOE_ROUTED) == DPEP_OK, "experts");
        EXPECT(dpep_moe_dispatch(moe[3], x, T, idx, wt) == DPEP_OK, "dispatch restarts the step");
        EXPECT(dpep_moe_run_experts(moe[3], &L, DPEP_MOE_ROUTED) == DPEP_OK, "experts");
        memset(o2, 0, sizeof(float) * (size_t)(T * H));
        EXPECT(dpep_moe_combine(moe[3], o2) == DPEP_OK, "combine");
        EXPECT(memcmp(o1, o2, sizeof(float) * (size_t)(T * H)) == 0,
               "restarted step: same answer");
        free(x);
        free(o1);
        free(o2);
        free(idx);
        free(wt);
    }
    /* more tokens than max_tokens is an error before any collective on
     * every rank that passes them: all ranks do here */
    if (moe[0]) {
        float dummy[1] = {0};
        EXPECT(dpep_moe_dispatch(moe[0], dummy, Tmax + 1, NULL, NULL) == DPEP_ERR_INVALID,
               "too many tokens rejected");
        float xb[64] = {0};
        int32_t bad_idx[4] = {0, 1, 2, 32}; /* E = 32 */
        float bad_w[4] = {1, 1, 1, 1};
        EXPECT(dpep_moe_dispatch(moe[0], xb, 1, bad_idx, bad_w) == DPEP_ERR_INVALID,
               "expert id out of range rejected");
    }
    for (int be = 0; be < NB; be++) dpep_moe_free(moe[be]);
    rank_layer_free(&L);
    rank_layer_free(&L2);
    full_free(&f);
    comms_free(&cm);
}

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "gate") == 0) {
        test_gate();
        return dpep_test_summary();
    }
    if (argc < 3) {
        fprintf(stderr, "usage: test_moe gate | golden SRC MOE_TP | random MOE_TP\n");
        return 2;
    }
    int prov;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &prov);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    dpep_log_set_rank(g_rank);
    int tp = atoi(argv[argc - 1]);
    if (tp < 1 || g_size % tp) {
        if (g_rank == 0) fprintf(stderr, "moe_tp %d does not divide %d ranks\n", tp, g_size);
        MPI_Finalize();
        return 2;
    }
    if (strcmp(argv[1], "golden") == 0 && argc >= 4) {
        test_golden(argv[2], "deepseek_v3_tiny", tp);
        test_golden(argv[2], "deepseek_v2_tiny", tp);
    } else if (strcmp(argv[1], "random") == 0) {
        test_random(tp);
    }
    long p = allsum(g_pass), fl = allsum(g_fail);
    MPI_Finalize();
    if (g_rank == 0) printf("%ld passed, %ld failed\n", p, fl);
    return fl ? 1 : 0;
}
