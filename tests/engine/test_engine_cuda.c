/* test_engine_cuda.c — the whole forward step on one GPU against the CPU
 * engine, on the tiny V3 and V2 models of the HF goldens (tests/reference).
 *
 * One multi-step schedule runs on each engine (page size 4, the prompts of
 * the goldens plus two made-up ones):
 *   1. prefill, logits of every row copied back: A = p2 (first 20 of its 29
 *      tokens), B = p1 (7), C = p0 (1);
 *   2. A's last 9 prompt tokens, B and C decode, D (13 tokens) prefill;
 *   3. E shares A's first 16 tokens (4 pages, dpep_attn_kv_seq_share) and
 *      prefills its own 6 after them; A..D decode;
 *   4. an empty step (0 sequences);
 *   5. six decode steps of A..E, alternately with the logits copied back and
 *      kept on the device for dpep_engine_sample (greedy);
 *   6. an empty step, then F = E's 22 tokens without the cached prefix.
 * Each engine feeds back its own greedy tokens. CUDA vs CPU: each row's
 * logits within 1e-4 relative (‖cuda − cpu‖₂ / ‖cpu‖₂; fp32 weights, cuBLAS
 * in pedantic fp32, no TF32), greedy tokens and sampled ids identical,
 * log-probs within 1e-4, expert load counts equal.
 *
 * Without a GPU it checks what the host can: the schedule on the CPU engine
 * (A, B, C's tokens equal the HF goldens; F's logits equal E's, i.e. the
 * cached prefix is right; expert load sums to tokens x top-k per MoE layer),
 * the CPU table's zero / copy / expert_count / check, and the engine's
 * refusal of weights on another device; then prints "SKIP: why" and exits
 * 77. With a GPU it also checks the CUDA table's zero, copy, expert_count
 * (shared-memory and global-atomic paths) and that `check` reports an error
 * once, naming the GPU and the op (a GEMM cuBLAS refuses on its arguments),
 * and runs the schedule again with CUDA graphs for decode steps (up to 8
 * sequences): the same checks against the CPU, every decode step replayed
 * from a graph, its 5 sequences padded to the bucket of 8
 * (dpep_engine_graph_stats). */
#include "dpep_engine.h"
#include "dpep_world.h"
#include "../dpep_golden.h"
#include "../dpep_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { SA, SB, SC, SD, SE, SF, NSEQ };
static const char *const k_seq_name = "ABCDEF";
#define PAGE 4
#define SHARED 16   /* E's cached prefix: A's first 4 pages                 */
#define E_SUF 6     /* E's own tokens after it                              */
#define D_LEN 13
#define N_DECODE 6
#define MAX_STEPS 16
#define MAX_GEN 16
#define MAX_TOKENS 64
#define LOGITS_TOL 1e-4
#define LOGPROB_TOL 1e-4

typedef struct prompts {
    int32_t *tok[NSEQ];
    int64_t len[NSEQ];
    int64_t *greedy[3];     /* HF goldens of p0, p1, p2 (16 tokens each)    */
} prompts;

typedef struct step_out {
    int rows;               /* logits rows copied back; 0: none            */
    float *logits;          /* [rows, vocab]                                */
    int n_seq;
    int who[NSEQ];          /* sequence of each part                        */
    bool sampled;           /* ids/lp from dpep_engine_sample               */
    int32_t ids[NSEQ];
    double lp[NSEQ];
} step_out;

typedef struct run_rec {
    int n_steps;
    step_out step[MAX_STEPS];
    int32_t gen[NSEQ][MAX_GEN];
    int ngen[NSEQ];
    float *e_row;           /* E's logits after its prefill (step 3)        */
    float *f_row;           /* F's logits after its prefill                 */
    int64_t tokens;         /* tokens through the forward                   */
    int64_t *load;          /* [n_layers * n_routed] at the end             */
    bool ok;                /* every call returned DPEP_OK                  */
} run_rec;

/* The schedule's state on one engine. */
typedef struct sched_state {
    dpep_engine *e;
    dpep_attn_kv *kv;
    const prompts *P;
    int V;
    int slot[NSEQ];
    int64_t pos[NSEQ];
    run_rec *R;
} sched_state;

typedef struct part {
    int s, n;               /* sequence s takes n new tokens               */
} part;

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static double rel_l2(const float *got, const float *ref, int64_t n)
{
    double d = 0, r = 0;
    for (int64_t i = 0; i < n; i++) {
        double x = (double)got[i] - ref[i];
        d += x * x;
        r += (double)ref[i] * ref[i];
    }
    return r > 0 ? sqrt(d / r) : sqrt(d);
}

/* One forward step of `parts` (np 0: an empty step). A part past its prompt
 * feeds the sequence's last generated token. mode ALL or LAST with the
 * logits copied back, or LAST kept and sampled (greedy) when `sample`. */
static void do_step(sched_state *S, const part *parts, int np, dpep_logits_mode mode, bool sample)
{
    run_rec *R = S->R;
    if (R->n_steps >= MAX_STEPS) {
        EXPECT(0, "schedule longer than MAX_STEPS");
        R->ok = false;
        return;
    }
    step_out *o = &R->step[R->n_steps++];
    dpep_attn_seq seq[NSEQ];
    int32_t tok[MAX_TOKENS];
    int T = 0;
    for (int i = 0; i < np; i++) {
        const int s = parts[i].s, n = parts[i].n;
        if (S->pos[s] < S->P->len[s]) {
            memcpy(tok + T, S->P->tok[s] + S->pos[s], sizeof(int32_t) * (size_t)n);
        } else {
            tok[T] = S->R->gen[s][S->R->ngen[s] - 1];
        }
        seq[i] = (dpep_attn_seq){S->slot[s], n, S->pos[s]};
        o->who[i] = s;
        T += n;
    }
    o->n_seq = np;
    R->tokens += T;
    dpep_status st;
    if (sample) {
        st = dpep_engine_forward(S->e, seq, np, tok, DPEP_LOGITS_LAST, NULL);
        const dpep_sampling greedy = {.temperature = 0, .top_k = 0, .top_p = 1, .seed = 0, .min_p = 0};
        const dpep_sampling *sp[NSEQ];
        uint64_t rs[NSEQ], *rng[NSEQ];
        for (int i = 0; i < np; i++) sp[i] = &greedy, rs[i] = dpep_rng_seed(7), rng[i] = &rs[i];
        if (st == DPEP_OK) st = dpep_engine_sample(S->e, np, sp, rng, o->ids, o->lp);
        o->sampled = true;
    } else {
        o->rows = mode == DPEP_LOGITS_ALL ? T : np;
        o->logits = malloc(sizeof(float) * (size_t)(o->rows > 0 ? o->rows : 1) * (size_t)S->V);
        st = dpep_engine_forward(S->e, seq, np, tok, mode, o->logits);
    }
    EXPECT(st == DPEP_OK, "step %d: %s", R->n_steps, dpep_status_string(st));
    if (st != DPEP_OK) R->ok = false;
    /* Positions advance; a sequence whose prompt is done gets its next token. */
    int row = 0;
    for (int i = 0; i < np; i++) {
        const int s = parts[i].s, n = parts[i].n;
        S->pos[s] += n;
        row += mode == DPEP_LOGITS_ALL ? n : 1;
        if (S->pos[s] < S->P->len[s] || R->ngen[s] >= MAX_GEN) continue;
        int32_t next = o->sampled ? o->ids[i] : argmax(o->logits + (size_t)(row - 1) * S->V, S->V);
        R->gen[s][R->ngen[s]++] = next;
    }
}

static void open_seq(sched_state *S, int s)
{
    EXPECT(dpep_attn_kv_seq_open(S->kv, &S->slot[s]) == DPEP_OK &&
               dpep_attn_kv_seq_reserve(S->kv, S->slot[s], S->P->len[s] + MAX_GEN) == DPEP_OK,
           "open %c", k_seq_name[s]);
}

static void run_schedule(dpep_engine *e, const dpep_model_config *m, const prompts *P, run_rec *R)
{
    memset(R, 0, sizeof *R);
    R->ok = true;
    sched_state S = {.e = e, .kv = dpep_engine_kv(e), .P = P, .V = m->vocab, .R = R};
    for (int s = SA; s <= SD; s++) open_seq(&S, s);
    const part s1[] = {{SA, 20}, {SB, 7}, {SC, 1}};
    do_step(&S, s1, 3, DPEP_LOGITS_ALL, false);
    const part s2[] = {{SA, 9}, {SB, 1}, {SC, 1}, {SD, D_LEN}};
    do_step(&S, s2, 4, DPEP_LOGITS_LAST, false);
    /* E: A's first pages as its cached prefix */
    EXPECT(dpep_attn_kv_seq_open(S.kv, &S.slot[SE]) == DPEP_OK &&
               dpep_attn_kv_seq_share(S.kv, S.slot[SE], S.slot[SA], SHARED) == DPEP_OK &&
               dpep_attn_kv_seq_reserve(S.kv, S.slot[SE], P->len[SE] + MAX_GEN) == DPEP_OK,
           "E shares A's prefix");
    S.pos[SE] = SHARED;
    const part s3[] = {{SE, E_SUF}, {SA, 1}, {SB, 1}, {SC, 1}, {SD, 1}};
    do_step(&S, s3, 5, DPEP_LOGITS_LAST, false);
    const step_out *o3 = &R->step[R->n_steps - 1];
    R->e_row = malloc(sizeof(float) * (size_t)m->vocab);
    if (o3->logits) memcpy(R->e_row, o3->logits, sizeof(float) * (size_t)m->vocab);
    do_step(&S, NULL, 0, DPEP_LOGITS_LAST, false);
    const part dec[] = {{SA, 1}, {SB, 1}, {SC, 1}, {SD, 1}, {SE, 1}};
    for (int k = 0; k < N_DECODE; k++) do_step(&S, dec, 5, DPEP_LOGITS_LAST, (k & 1) != 0);
    do_step(&S, NULL, 0, DPEP_LOGITS_LAST, true);
    open_seq(&S, SF);
    const part sf[] = {{SF, (int)P->len[SF]}};
    do_step(&S, sf, 1, DPEP_LOGITS_LAST, false);
    const step_out *of = &R->step[R->n_steps - 1];
    R->f_row = malloc(sizeof(float) * (size_t)m->vocab);
    if (of->logits) memcpy(R->f_row, of->logits, sizeof(float) * (size_t)m->vocab);
    const size_t nl = (size_t)m->n_layers * (size_t)(m->n_routed > 0 ? m->n_routed : 1);
    R->load = malloc(sizeof(int64_t) * nl);
    memcpy(R->load, dpep_engine_expert_load(e), sizeof(int64_t) * nl);
    for (int s = 0; s < NSEQ; s++) dpep_attn_kv_seq_close(S.kv, S.slot[s]);
}

static void free_rec(run_rec *R)
{
    for (int i = 0; i < R->n_steps; i++) free(R->step[i].logits);
    free(R->e_row);
    free(R->f_row);
    free(R->load);
}

/* What the host can check of a schedule run on the CPU. */
static void check_cpu_run(const char *model, const dpep_model_config *m, const prompts *P,
                          const run_rec *R)
{
    EXPECT(R->ok, "%s cpu: every step ran", model);
    /* A = p2, B = p1, C = p0 follow HF's greedy tokens */
    const int golden_of[3] = {2, 1, 0};
    for (int s = SA; s <= SC; s++) {
        const int64_t *g = P->greedy[golden_of[s]];
        int same = 0;
        for (int j = 0; g && j < R->ngen[s]; j++) same += R->gen[s][j] == g[j];
        /* B and C finish their prompts in step 1, A in step 2 */
        const int want = (s == SA ? 2 : 3) + N_DECODE;
        EXPECT(R->ngen[s] == want && same == R->ngen[s], "%s cpu: %c greedy %d/%d as HF",
               model, k_seq_name[s], same, R->ngen[s]);
    }
    EXPECT(R->ngen[SD] == 2 + N_DECODE && R->ngen[SE] == 1 + N_DECODE && R->ngen[SF] == 1,
           "%s cpu: tokens generated D %d E %d F %d", model, R->ngen[SD], R->ngen[SE], R->ngen[SF]);
    /* the cached prefix gives what the whole prompt gives */
    double ef = rel_l2(R->e_row, R->f_row, m->vocab);
    EXPECT(ef <= 1e-5, "%s cpu: E (cached prefix) vs F (whole prompt) logits rel %.3g", model, ef);
    EXPECT(R->gen[SE][0] == R->gen[SF][0], "%s cpu: E and F first token", model);
    /* every token of every MoE layer picked top-k experts */
    bool sums = true;
    for (int l = 0; l < m->n_layers && m->n_routed > 0; l++) {
        int64_t sum = 0;
        for (int x = 0; x < m->n_routed; x++) sum += R->load[(size_t)l * m->n_routed + x];
        const bool moe = dpep_model_layer_is_moe(m, l);
        if (sum != (moe ? R->tokens * m->topk : 0)) {
            printf("%s cpu: layer %d expert load sums to %lld (tokens %lld x topk %d, moe %d)\n",
                   model, l, (long long)sum, (long long)R->tokens, m->topk, moe);
            sums = false;
        }
    }
    EXPECT(sums, "%s cpu: expert load sums", model);
    printf("%s cpu: %d steps, %lld tokens; A/B/C greedy as HF; E vs F %.2g\n", model, R->n_steps,
           (long long)R->tokens, ef);
}

/* A run on a device (`dev` names it) against the CPU run. */
static void compare_runs(const char *model, const char *dev, const dpep_model_config *m,
                         const run_rec *cpu, const run_rec *gpu)
{
    EXPECT(gpu->ok, "%s %s: every step ran", model, dev);
    EXPECT(gpu->n_steps == cpu->n_steps, "%s: steps %d vs %d", model, gpu->n_steps, cpu->n_steps);
    double worst = 0, worst_lp = 0;
    int bad_ids = 0;
    for (int i = 0; i < cpu->n_steps && i < gpu->n_steps; i++) {
        const step_out *a = &gpu->step[i], *b = &cpu->step[i];
        if (a->rows != b->rows || a->sampled != b->sampled) {
            EXPECT(0, "%s step %d: shapes differ", model, i + 1);
            continue;
        }
        for (int r = 0; r < a->rows; r++) {
            double e = rel_l2(a->logits + (size_t)r * m->vocab, b->logits + (size_t)r * m->vocab,
                              m->vocab);
            if (e > worst) worst = e;
            EXPECT(e <= LOGITS_TOL, "%s step %d row %d: logits rel %.3g > %g", model, i + 1, r, e,
                   LOGITS_TOL);
        }
        if (a->sampled)
            for (int r = 0; r < a->n_seq; r++) {
                bad_ids += a->ids[r] != b->ids[r];
                double d = fabs(a->lp[r] - b->lp[r]);
                if (!(d <= worst_lp)) worst_lp = d; /* NaN sticks */
            }
    }
    EXPECT(bad_ids == 0, "%s: %d sampled ids differ", model, bad_ids);
    EXPECT(worst_lp <= LOGPROB_TOL, "%s: sampled log-probs differ by %.3g", model, worst_lp);
    int same_tokens = 1;
    for (int s = 0; s < NSEQ; s++) {
        bool same = gpu->ngen[s] == cpu->ngen[s];
        for (int j = 0; same && j < cpu->ngen[s]; j++) same = gpu->gen[s][j] == cpu->gen[s][j];
        EXPECT(same, "%s: %c greedy tokens differ", model, k_seq_name[s]);
        same_tokens &= same;
    }
    const size_t nl = (size_t)m->n_layers * (size_t)(m->n_routed > 0 ? m->n_routed : 1);
    const bool load_eq = memcmp(gpu->load, cpu->load, sizeof(int64_t) * nl) == 0;
    EXPECT(load_eq, "%s: expert load counts differ", model);
    printf("%s %s vs cpu: logits max rel %.3g, sampled log-probs max |d| %.3g, greedy tokens %s, "
           "expert load %s\n", model, dev, worst, worst_lp, same_tokens ? "identical" : "DIFFER",
           load_eq ? "equal" : "DIFFERS");
}

static bool load_prompts(const dpep_golden *gold, const char *model, int V, prompts *P)
{
    memset(P, 0, sizeof *P);
    int32_t *p[3] = {0};
    int64_t pl[3] = {0};
    for (int k = 0; k < 3; k++) {
        char name[64];
        snprintf(name, sizeof name, "p%d.input_ids", k);
        int64_t *ids64 = dpep_golden_i64(gold, name, &pl[k]);
        snprintf(name, sizeof name, "p%d.greedy", k);
        int64_t ng = 0;
        P->greedy[k] = dpep_golden_i64(gold, name, &ng);
        if (!ids64 || !P->greedy[k] || ng < 2 + N_DECODE) {
            EXPECT(0, "%s: golden p%d", model, k);
            free(ids64);
            return false;
        }
        p[k] = malloc(sizeof(int32_t) * (size_t)pl[k]);
        for (int64_t i = 0; i < pl[k]; i++) p[k][i] = (int32_t)ids64[i];
        free(ids64);
    }
    if (pl[2] != 29 || pl[1] != 7 || pl[0] != 1) {
        EXPECT(0, "%s: golden prompt lengths %lld/%lld/%lld (the schedule expects 1/7/29)", model,
               (long long)pl[0], (long long)pl[1], (long long)pl[2]);
        for (int k = 0; k < 3; k++) free(p[k]);
        return false;
    }
    P->tok[SA] = p[2], P->len[SA] = pl[2];
    P->tok[SB] = p[1], P->len[SB] = pl[1];
    P->tok[SC] = p[0], P->len[SC] = pl[0];
    P->len[SD] = D_LEN;
    P->tok[SD] = malloc(sizeof(int32_t) * D_LEN);
    for (int i = 0; i < D_LEN; i++) P->tok[SD][i] = (int32_t)((7 + 31 * i) % V);
    P->len[SE] = P->len[SF] = SHARED + E_SUF;
    P->tok[SE] = malloc(sizeof(int32_t) * (SHARED + E_SUF));
    P->tok[SF] = malloc(sizeof(int32_t) * (SHARED + E_SUF));
    memcpy(P->tok[SE], P->tok[SA], sizeof(int32_t) * SHARED);
    for (int i = 0; i < E_SUF; i++) P->tok[SE][SHARED + i] = (int32_t)((11 + 17 * i) % V);
    memcpy(P->tok[SF], P->tok[SE], sizeof(int32_t) * (SHARED + E_SUF));
    return true;
}

static void free_prompts(prompts *P)
{
    for (int s = 0; s < NSEQ; s++) free(P->tok[s]);
    for (int k = 0; k < 3; k++) free(P->greedy[k]);
}

typedef struct model_ctx {
    dpep_model_config m;
    dpep_ckpt *ck;
    dpep_golden gold;
    dpep_config c;
    dpep_layout l;
    dpep_rank_info r;
    prompts P;
    run_rec cpu;
    bool ready;
} model_ctx;

static dpep_engine *make_engine_g(model_ctx *x, const dpep_weights *w, const dpep_device *dev,
                                  int graph_bs, dpep_diag *d)
{
    dpep_engine_params ep = {.m = &x->m, .w = w, .layout = &x->l, .me = &x->r,
                             .attn_tp = MPI_COMM_NULL, .ep = MPI_COMM_NULL,
                             .moe_tp = MPI_COMM_NULL, .dense = MPI_COMM_NULL,
                             .backend = DPEP_A2A_ALLTOALL, .comm_timeout_s = 60,
                             .max_tokens = MAX_TOKENS, .max_ctx = 128, .max_seqs = 8,
                             .page_size = PAGE, .kv_budget_bytes = 4u << 20, .device = dev,
                             .cuda_graph_max_bs = graph_bs};
    dpep_engine *e = NULL;
    if (dpep_engine_create(&ep, &e, d) != DPEP_OK) {
        dpep_diag_print(d, stdout);
        return NULL;
    }
    return e;
}

static dpep_engine *make_engine(model_ctx *x, const dpep_weights *w, const dpep_device *dev,
                                dpep_diag *d)
{
    return make_engine_g(x, w, dev, 0, d);
}

/* The model, its prompts and the CPU run (host-side checks). */
static void setup_model(const char *src, const char *model, model_ctx *x)
{
    memset(x, 0, sizeof *x);
    if (!dpep_golden_open_model(&x->gold, src, model, &x->m, &x->ck)) {
        EXPECT(0, "%s: goldens, config and checkpoint", model);
        return;
    }
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_config_init(&x->c);
    x->c.parallel.tp = x->c.parallel.dp = x->c.parallel.ep = 1;
    x->c.parallel.enable_dp_attention = false;
    dpep_config_validate(&x->c, 1, &d);
    dpep_layout_from_config(&x->c, 1, &x->l);
    dpep_layout_rank(&x->l, 0, &x->r);
    if (!load_prompts(&x->gold, model, x->m.vocab, &x->P)) return;
    dpep_weights w;
    if (dpep_weights_load(x->ck, &x->m, &x->l, &x->r, &w, &d) != DPEP_OK) {
        dpep_diag_print(&d, stdout);
        EXPECT(0, "%s: cpu weights", model);
        return;
    }
    /* weights said to be on another device: refused, naming both */
    {
        dpep_weights other = w;
        other.dev.kind = DPEP_DEVICE_CUDA;
        other.dev.ordinal = 3;
        dpep_diag dd;
        dpep_diag_init(&dd);
        dpep_engine *bad = make_engine(x, &other, NULL, &dd);
        EXPECT(!bad && dpep_diag_find(&dd, "weights are on cuda"),
               "%s: a CPU engine refuses weights on cuda", model);
        dpep_engine_destroy(bad);
    }
    dpep_engine *e = make_engine(x, &w, NULL, &d);
    EXPECT(e != NULL, "%s: cpu engine", model);
    if (e) {
        run_schedule(e, &x->m, &x->P, &x->cpu);
        check_cpu_run(model, &x->m, &x->P, &x->cpu);
        x->ready = x->cpu.ok;
    }
    dpep_engine_destroy(e);
    dpep_weights_free(&w);
}

static void teardown_model(model_ctx *x)
{
    free_rec(&x->cpu);
    free_prompts(&x->P);
    dpep_config_free(&x->c);
    dpep_ckpt_close(x->ck);
    dpep_golden_close(&x->gold);
}

/* The same schedule on `dev` (the GPU; the CPU once as the harness's own
 * check), weights loaded onto it, compared with the CPU run. graph_bs > 0:
 * CUDA graphs for decode steps of up to that many sequences (on the GPU
 * every decode step of the schedule then replays a graph; the CPU has
 * none and runs eagerly). */
static void run_on(const char *model, model_ctx *x, const dpep_device *dev, int graph_bs)
{
    if (!x->ready) {
        EXPECT(0, "%s: no CPU run to compare with", model);
        return;
    }
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_weights w;
    if (dpep_weights_load_on(x->ck, &x->m, &x->l, &x->r, dev, &w, &d) != DPEP_OK) {
        dpep_diag_print(&d, stdout);
        EXPECT(0, "%s: weights onto %s:%d", model, dpep_device_kind_name(dev->kind), dev->ordinal);
        return;
    }
    dpep_engine *e = make_engine_g(x, &w, dev, graph_bs, &d);
    EXPECT(e != NULL, "%s: %s engine", model, dpep_device_kind_name(dev->kind));
    if (e) {
        EXPECT(dpep_engine_device(e)->kind == dev->kind, "%s: engine on %s", model,
               dpep_device_kind_name(dev->kind));
        run_rec gpu;
        run_schedule(e, &x->m, &x->P, &gpu);
        char name[64];
        snprintf(name, sizeof name, "%s%s", dpep_device_kind_name(dev->kind),
                 graph_bs ? " (cuda graphs)" : "");
        compare_runs(model, name, &x->m, &x->cpu, &gpu);
        dpep_engine_graph_stats gs;
        dpep_engine_graph_stats_get(e, &gs);
        if (graph_bs && dev->kind == DPEP_DEVICE_CUDA) {
            /* the schedule's decode steps (N_DECODE of A..E) replay graphs
             * but for each key's first (run eagerly, then captured); their
             * 5 sequences are padded to the bucket of 8 (3 padding rows
             * each, dropped: the results and expert load compared above
             * are the CPU's) */
            EXPECT(gs.enabled && gs.captured >= 1 && gs.warmup_decode == gs.captured &&
                       gs.replayed + gs.warmup_decode >= N_DECODE && gs.replayed >= 1 &&
                       gs.eager_decode == 0 &&
                       gs.padded_steps >= N_DECODE && gs.padding_rows == 3 * gs.padded_steps,
                   "%s: cuda graphs: enabled %d, %d captured, %lld replayed, %lld before capture, "
                   "%lld decode steps eager, %lld padded (%lld rows)",
                   model, gs.enabled, gs.captured, (long long)gs.replayed,
                   (long long)gs.warmup_decode, (long long)gs.eager_decode,
                   (long long)gs.padded_steps, (long long)gs.padding_rows);
            printf("%s cuda graphs: %d captured, %lld steps replayed, %lld padded\n", model, gs.captured,
                   (long long)gs.replayed, (long long)gs.padded_steps);
        } else {
            EXPECT(!gs.enabled && gs.captured == 0 && gs.replayed == 0,
                   "%s %s: no graphs (enabled %d, %d captured)", model, name, gs.enabled, gs.captured);
        }
        free_rec(&gpu);
    }
    dpep_engine_destroy(e);
    dpep_weights_free(&w);
}

/* ------------------------------------------------------------------------ */
/* The table's step ops                                                     */
/* ------------------------------------------------------------------------ */

static void check_cpu_ops(void)
{
    const dpep_engine_ops *o = dpep_engine_ops_for(DPEP_DEVICE_CPU);
    EXPECT(o && o->zero && o->copy && o->expert_count && o->check, "cpu table: step ops");
    if (!o || !o->zero || !o->copy || !o->expert_count || !o->check) return;
    float a[5] = {1, 2, 3, 4, 5}, b[5] = {9, 9, 9, 9, 9};
    o->copy(b, a, 4);
    EXPECT(b[0] == 1 && b[3] == 4 && b[4] == 9, "cpu copy");
    o->zero(a + 1, 3);
    EXPECT(a[0] == 1 && a[1] == 0 && a[3] == 0 && a[4] == 5, "cpu zero");
    const int32_t idx[8] = {0, 2, 2, -1, 5, 3, 2, 0};
    int64_t load[4] = {10, 0, 0, 0};
    o->expert_count(idx, 8, NULL, 4, load);
    EXPECT(load[0] == 12 && load[1] == 0 && load[2] == 3 && load[3] == 1, "cpu expert_count");
    int64_t lim = 5, load2[4] = {0, 0, 0, 0};
    o->expert_count(idx, 8, &lim, 4, load2); /* the first 5 entries only (a padded step's real ones) */
    EXPECT(load2[0] == 1 && load2[1] == 0 && load2[2] == 2 && load2[3] == 0, "cpu expert_count with a limit");
    char msg[64];
    EXPECT(o->check(msg, sizeof msg) == DPEP_OK && strcmp(msg, "CPU") == 0, "cpu check");
}

static uint32_t lcg(uint32_t *s) { return *s = *s * 1664525u + 1013904223u; }

/* expert_count on the device vs the CPU on n random picks over n_experts
 * (about 1 in 16 out of range: -1 padding or past the end). */
static void test_expert_count(const dpep_engine_ops *cu, const dpep_device *dev, int64_t n,
                              int n_experts)
{
    const dpep_engine_ops *cpu = dpep_engine_ops_for(DPEP_DEVICE_CPU);
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
    int64_t *ref = calloc((size_t)n_experts, sizeof(int64_t));
    int64_t *got = calloc((size_t)n_experts, sizeof(int64_t));
    uint32_t s = 12345u + (uint32_t)n;
    for (int64_t i = 0; i < n; i++) {
        uint32_t r = lcg(&s) >> 8;
        idx[i] = r % 16 == 0 ? (r & 32 ? -1 : n_experts + (int32_t)(r % 7))
                 : r % 3 == 0 ? (int32_t)(r % 4) /* a few hot experts */
                              : (int32_t)(r % (uint32_t)n_experts);
    }
    for (int x = 0; x < n_experts; x++) ref[x] = x; /* counts add to what is there */
    cpu->expert_count(idx, n, NULL, n_experts, ref);
    void *d_idx = NULL, *d_load = NULL;
    char msg[512];
    bool ok = dpep_device_alloc(dev, sizeof(int32_t) * (size_t)(n > 0 ? n : 1), &d_idx) == DPEP_OK &&
              dpep_device_alloc(dev, sizeof(int64_t) * (size_t)n_experts, &d_load) == DPEP_OK;
    if (ok) {
        for (int x = 0; x < n_experts; x++) got[x] = x;
        ok = (n == 0 || dev->ops->to_device(dev, d_idx, idx, sizeof(int32_t) * (size_t)n) == DPEP_OK) &&
             dev->ops->to_device(dev, d_load, got, sizeof(int64_t) * (size_t)n_experts) == DPEP_OK;
        cu->expert_count((const int32_t *)d_idx, n, NULL, n_experts, (int64_t *)d_load);
        cu->expert_count((const int32_t *)d_idx, 0, NULL, n_experts, (int64_t *)d_load); /* no launch */
        ok = ok && cu->check(msg, sizeof msg) == DPEP_OK;
        memset(got, 0xff, sizeof(int64_t) * (size_t)n_experts);
        ok = ok && dev->ops->to_host(dev, got, d_load, sizeof(int64_t) * (size_t)n_experts) == DPEP_OK;
    }
    EXPECT(ok && memcmp(got, ref, sizeof(int64_t) * (size_t)n_experts) == 0,
           "cuda expert_count n %lld experts %d", (long long)n, n_experts);
    /* with a limit read on the device: the first n / 3 entries */
    const int64_t lim = n / 3;
    void *d_lim = NULL;
    for (int x = 0; x < n_experts; x++) ref[x] = got[x] = 0;
    cpu->expert_count(idx, n, &lim, n_experts, ref);
    ok = ok && dpep_device_alloc(dev, sizeof(int64_t), &d_lim) == DPEP_OK &&
         dev->ops->to_device(dev, d_lim, &lim, sizeof lim) == DPEP_OK &&
         dev->ops->to_device(dev, d_load, got, sizeof(int64_t) * (size_t)n_experts) == DPEP_OK;
    if (ok) {
        cu->expert_count((const int32_t *)d_idx, n, (const int64_t *)d_lim, n_experts, (int64_t *)d_load);
        ok = cu->check(msg, sizeof msg) == DPEP_OK &&
             dev->ops->to_host(dev, got, d_load, sizeof(int64_t) * (size_t)n_experts) == DPEP_OK;
    }
    EXPECT(ok && memcmp(got, ref, sizeof(int64_t) * (size_t)n_experts) == 0,
           "cuda expert_count n %lld (limit %lld on the device) experts %d", (long long)n, (long long)lim,
           n_experts);
    dpep_device_free(dev, d_lim);
    dpep_device_free(dev, d_idx);
    dpep_device_free(dev, d_load);
    free(idx);
    free(ref);
    free(got);
}

static void test_zero_copy(const dpep_engine_ops *cu, const dpep_device *dev, int64_t n)
{
    float *h = malloc(sizeof(float) * (size_t)(n + 2));
    for (int64_t i = 0; i < n + 2; i++) h[i] = (float)(i % 1000) + 0.5f;
    void *a = NULL, *b = NULL;
    char msg[512];
    bool ok = dpep_device_alloc(dev, sizeof(float) * (size_t)(n + 2), &a) == DPEP_OK &&
              dpep_device_alloc(dev, sizeof(float) * (size_t)(n + 2), &b) == DPEP_OK &&
              dev->ops->to_device(dev, a, h, sizeof(float) * (size_t)(n + 2)) == DPEP_OK;
    if (ok) {
        /* b[1..n] = a[1..n]; then a[1..n] = 0; b[0] and b[n+1] stay 0 */
        cu->copy((float *)b + 1, (const float *)a + 1, n);
        cu->zero((float *)a + 1, n);
        cu->zero((float *)a, 0);
        ok = cu->check(msg, sizeof msg) == DPEP_OK;
        float *hb = malloc(sizeof(float) * (size_t)(n + 2)), *ha = malloc(sizeof(float) * (size_t)(n + 2));
        ok = ok && dev->ops->to_host(dev, hb, b, sizeof(float) * (size_t)(n + 2)) == DPEP_OK &&
             dev->ops->to_host(dev, ha, a, sizeof(float) * (size_t)(n + 2)) == DPEP_OK;
        for (int64_t i = 0; ok && i < n + 2; i++) {
            const bool in = i >= 1 && i <= n;
            if (hb[i] != (in ? h[i] : 0.0f) || ha[i] != (in ? 0.0f : h[i])) ok = false;
        }
        free(ha);
        free(hb);
    }
    EXPECT(ok, "cuda zero/copy n %lld", (long long)n);
    dpep_device_free(dev, a);
    dpep_device_free(dev, b);
    free(h);
}

static void check_cuda_ops(const dpep_engine_ops *cu, const dpep_device *dev)
{
    EXPECT(cu->zero && cu->copy && cu->expert_count && cu->check, "cuda table: step ops");
    if (!cu->zero || !cu->copy || !cu->expert_count || !cu->check) return;
    char msg[512];
    EXPECT(cu->check(msg, sizeof msg) == DPEP_OK && strncmp(msg, "GPU 0 (", 7) == 0,
           "cuda check describes the device: %s", msg);
    printf("device: %s\n", msg);
    const int64_t zn[] = {0, 1, 7, 1000003};
    for (int k = 0; k < 4; k++) test_zero_copy(cu, dev, zn[k]);
    const int64_t cn[] = {0, 1, 37, 4096, 300001}; /* 300001: more than 1024 blocks' worth */
    const int ce[] = {1, 16, 256, 8192, 9000};     /* 9000: global atomics, no shared bins */
    for (int i = 0; i < 5; i++)
        for (int k = 0; k < 5; k++) test_expert_count(cu, dev, cn[i], ce[k]);
}

/* Last (it makes the device report an error): a call cuBLAS refuses on its
 * arguments (k < 0; checked on the host, nothing launched, so the context
 * stays usable) is reported once by check, naming the GPU and the op, and
 * forgotten after. */
static void check_cuda_error_report(const dpep_engine_ops *cu, const dpep_device *dev)
{
    void *a = NULL;
    if (dpep_device_alloc(dev, 4096, &a) != DPEP_OK) {
        EXPECT(0, "cuda alloc");
        return;
    }
    char msg[512];
    float *buf = (float *)a;
    const dpep_mat bad = dpep_mat_make(buf + 256, DPEP_WT_F32, 4, -1); /* hidden -1: refused */
    cu->lm_head(buf, 1, &bad, buf + 512);
    dpep_status st = cu->check(msg, sizeof msg);
    EXPECT(st == DPEP_ERR_CUBLAS && strstr(msg, "GPU 0 (") && strstr(msg, "op lm_head"),
           "cuda check reports the refused GEMM: %s (%s)", dpep_status_string(st), msg);
    printf("reported: %s\n", msg);
    EXPECT(cu->check(msg, sizeof msg) == DPEP_OK, "cuda check forgets a reported error");
    dpep_device_free(dev, a);
}

int main(int argc, char **argv)
{
    int prov;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &prov);
    dpep_log_init();
    const char *src = argc > 1 ? argv[1] : ".";
    static const char *const models[2] = {"deepseek_v3_tiny", "deepseek_v2_tiny"};
    model_ctx *x = calloc(2, sizeof *x);

    check_cpu_ops();
    for (int k = 0; k < 2; k++) setup_model(src, models[k], &x[k]);
    /* the comparison itself, on a second CPU run: everything equal */
    dpep_device cpu_dev;
    dpep_device_get(DPEP_DEVICE_CPU, -1, &cpu_dev);
    for (int k = 0; k < 2; k++) run_on(models[k], &x[k], &cpu_dev, 0);
    /* graphs asked for on the CPU: none (its table has no graphs), same results */
    run_on(models[0], &x[0], &cpu_dev, 8);

    int rc = 0;
    const dpep_engine_ops *cu = dpep_engine_ops_for(DPEP_DEVICE_CUDA);
    int count = 0;
    char why[256] = "";
    dpep_device dev;
    if (g_fail) {
        rc = dpep_test_summary();
    } else if (!cu) {
        printf("host-side checks: %d passed\nSKIP: this build has no CUDA engine\n", g_pass);
        rc = 77;
    } else if (dpep_cuda_device_count(&count, why, sizeof why) != DPEP_OK) {
        printf("host-side checks: %d passed\nSKIP: %s\n", g_pass, why);
        rc = 77;
    } else if (dpep_cuda_set_device(0) != DPEP_OK ||
               dpep_device_get(DPEP_DEVICE_CUDA, 0, &dev) != DPEP_OK) {
        EXPECT(0, "CUDA device 0 of %d", count);
        rc = dpep_test_summary();
    } else {
        printf("host-side checks: %d passed; CUDA engine on device 0 of %d\n", g_pass, count);
        check_cuda_ops(cu, &dev);
        for (int k = 0; k < 2; k++) {
            run_on(models[k], &x[k], &dev, 0); /* eager */
            run_on(models[k], &x[k], &dev, 8); /* decode steps through CUDA graphs */
        }
        check_cuda_error_report(cu, &dev);
        rc = dpep_test_summary();
    }
    for (int k = 0; k < 2; k++) teardown_model(&x[k]);
    free(x);
    MPI_Finalize();
    return rc;
}
