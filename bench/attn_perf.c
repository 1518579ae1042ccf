/* attn_perf.c — MLA attention benchmark (CPU backend): absorbed decode at
 * batch x context and causal prefill on DeepSeek-V3 head dimensions, against
 * the machine's cblas_sgemm GFLOP/s and memcpy GB/s measured in the same run;
 * absorbed vs naive (k_nope/v expanded) decode. Exits non-zero when a result
 * is wrong (absorbed vs naive mismatch, prefill vs decode mismatch, NaN).
 *
 * Usage: dpep_attn_perf [--heads N] [--reps R] [--naive-seqs K] [--only decode|prefill]
 *                       [--core generic|avx2|avx512] [--smoke]
 *   --heads       local heads (default 128 = V3 at attention-TP 1, i.e. DPA)
 *   --reps        timed repetitions per decode shape (best kept; default 3)
 *   --naive-seqs  sequences of each decode batch run in the naive form
 *                 (default 2; its time is scaled to the batch)
 *   --core        the absorbed decode's CPU core table (default: the widest
 *                 this CPU runs; generic = two BLAS products per run)
 *   --smoke       tiny dims and shapes, correctness only (CTest) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "dpep_attn.h"

static uint64_t g_rng = 12345;
static void fill(float *x, size_t n, float amp)
{
    for (size_t i = 0; i < n; i++) {
        g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
        x[i] = amp * (2.0f * (float)((g_rng >> 40) * (1.0 / 16777216.0)) - 1.0f);
    }
}
static float *rnd(size_t n, float amp)
{
    float *x = malloc(sizeof(float) * n);
    if (!x) {
        fprintf(stderr, "out of memory (%zu floats)\n", n);
        exit(1);
    }
    fill(x, n, amp);
    return x;
}

static double bench_sgemm(int n)
{
    float *a = rnd((size_t)n * n, 1), *b = rnd((size_t)n * n, 1), *c = rnd((size_t)n * n, 1);
    double best = 1e30;
    for (int r = 0; r < 4; r++) {
        double t = dpep_clock_s();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
        t = dpep_clock_s() - t;
        if (r > 0 && t < best) best = t;
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * n * n * (double)n / best / 1e9;
}

static double bench_memcpy(size_t bytes)
{
    char *a = malloc(bytes), *b = malloc(bytes);
    memset(a, 1, bytes);
    memset(b, 2, bytes);
    double best = 1e30;
    for (int r = 0; r < 5; r++) {
        double t = dpep_clock_s();
        memcpy(b, a, bytes);
        t = dpep_clock_s() - t;
        if (r > 0 && t < best) best = t;
    }
    volatile char sink = b[bytes / 2];
    (void)sink;
    free(a);
    free(b);
    return (double)bytes / best / 1e9;
}

/* Baselines measured right before and after each row (the mean is used):
 * on a shared machine the load changes within one run. */
typedef struct baseline {
    double sgemm, memcpy;
} baseline;
static baseline measure(bool smoke)
{
    baseline b = {bench_sgemm(smoke ? 128 : 1024), bench_memcpy(smoke ? (4u << 20) : (128u << 20))};
    return b;
}
static baseline mean_of(baseline a, baseline b)
{
    baseline r = {(a.sgemm + b.sgemm) / 2, (a.memcpy + b.memcpy) / 2};
    return r;
}

static double load_avg(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1) l = -1;
        fclose(f);
    }
    return l;
}

static double rel_diff(const float *a, const float *b, size_t n)
{
    double e = 0, mx = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) || !isfinite(b[i])) return INFINITY;
        e = fmax(e, fabs((double)a[i] - b[i]));
        mx = fmax(mx, fabs((double)b[i]));
    }
    return e / (mx > 0 ? mx : 1);
}

/* DeepSeek-V3 attention dims (smoke: tiny), one layer. */
static dpep_model_config v3_dims(bool smoke, int heads)
{
    dpep_model_config m;
    memset(&m, 0, sizeof m);
    m.hidden = smoke ? 128 : 7168;
    m.n_layers = 1;
    m.n_heads = smoke ? 4 : heads;
    m.q_lora_rank = smoke ? 48 : 1536;
    m.kv_lora_rank = smoke ? 64 : 512;
    m.qk_nope = smoke ? 32 : 128;
    m.qk_rope = smoke ? 16 : 64;
    m.v_head = smoke ? 32 : 128;
    m.rope_theta = 10000;
    m.yarn = true;
    m.yarn_factor = 40;
    m.yarn_mscale = m.yarn_mscale_all_dim = 1;
    m.yarn_beta_fast = 32;
    m.yarn_beta_slow = 1;
    m.yarn_orig_max_pos = 4096;
    m.max_pos = 163840;
    return m;
}

/* One layer of random weights (scaled like 1/sqrt(fan_in)), all heads. */
static dpep_layer_w random_layer(const dpep_model_config *m)
{
    const int H = m->n_heads, qk = m->qk_nope + m->qk_rope, row = dpep_model_kv_row(m);
    const int hid = m->hidden;
    dpep_layer_w w;
    memset(&w, 0, sizeof w);
    w.head0 = 0;
    w.n_heads = H;
    w.q_a = dpep_mat_make(rnd((size_t)m->q_lora_rank * hid, 1.7f / sqrtf((float)hid)), DPEP_WT_F32,
                          m->q_lora_rank, hid);
    w.q_a_norm = rnd((size_t)m->q_lora_rank, 0.1f);
    for (int i = 0; i < m->q_lora_rank; i++) w.q_a_norm[i] += 1.0f;
    w.q_b = dpep_mat_make(rnd((size_t)H * qk * m->q_lora_rank, 1.7f / sqrtf((float)m->q_lora_rank)),
                          DPEP_WT_F32, H * qk, m->q_lora_rank);
    w.kv_a = dpep_mat_make(rnd((size_t)row * hid, 1.7f / sqrtf((float)hid)), DPEP_WT_F32, row, hid);
    w.kv_a_norm = rnd((size_t)m->kv_lora_rank, 0.1f);
    for (int i = 0; i < m->kv_lora_rank; i++) w.kv_a_norm[i] += 1.0f;
    w.kv_b = dpep_mat_make(rnd((size_t)H * (m->qk_nope + m->v_head) * m->kv_lora_rank,
                               1.7f / sqrtf((float)m->kv_lora_rank)),
                           DPEP_WT_F32, H * (m->qk_nope + m->v_head), m->kv_lora_rank);
    w.o = dpep_mat_make(rnd((size_t)hid * H * m->v_head, 1.7f / sqrtf((float)(H * m->v_head))),
                        DPEP_WT_F32, hid, H * m->v_head);
    return w;
}

static void free_layer(dpep_layer_w *w)
{
    free(w->q_a.p);
    free(w->q_a_norm);
    free(w->q_b.p);
    free(w->kv_a.p);
    free(w->kv_a_norm);
    free(w->kv_b.p);
    free(w->o.p);
}

/* What every row of the table uses. */
typedef struct bench {
    dpep_model_config m;
    dpep_layer_w w;
    dpep_attn *a;
    float *x, *out, *out2;
    int reps, naive_seqs;
    bool smoke;
} bench;

/* One decode row: B sequences of ctx cached tokens, one new token each,
 * absorbed (best of reps) against naive on the first naive_seqs sequences.
 * 1 when the result is wrong, -1 on an error. */
static int decode_row(bench *b, int B, int ctx)
{
    const dpep_model_config *m = &b->m;
    const int H = m->n_heads, row = dpep_model_kv_row(m), hid = m->hidden;
    dpep_attn_kv_params kp = {.n_layers = 1, .page_size = 64,
                              .budget_bytes = (size_t)B * (ctx + 65) * row * sizeof(float),
                              .max_seqs = B, .max_seq_len = ctx + 1};
    dpep_attn_kv *kv = NULL;
    if (dpep_attn_kv_create(m, &kp, &kv) != DPEP_OK) return -1;
    dpep_attn_seq *sq = malloc(sizeof *sq * (size_t)B);
    float *rows = rnd((size_t)ctx * row, 1.0f);
    for (int i = 0; i < B; i++) {
        int slot;
        if (dpep_attn_kv_seq_open(kv, &slot) != DPEP_OK || dpep_attn_kv_seq_reserve(kv, slot, ctx + 1) ||
            dpep_attn_kv_write(kv, slot, 0, 0, ctx, rows))
            return -1;
        sq[i] = (dpep_attn_seq){slot, 1, ctx};
    }
    dpep_attn_set_decode(b->a, DPEP_ATTN_DECODE_ABSORBED);
    dpep_attn_forward(b->a, &b->w, 0, kv, sq, B, b->x, b->out); /* warm-up */
    baseline b0 = measure(b->smoke);
    double best = 1e30, best_core = 1e30;
    for (int r = 0; r < b->reps; r++) {
        dpep_attn_timing_reset(b->a);
        double t = dpep_clock_s();
        if (dpep_attn_forward(b->a, &b->w, 0, kv, sq, B, b->x, b->out) != DPEP_OK) return -1;
        t = dpep_clock_s() - t;
        dpep_attn_timing tm;
        dpep_attn_timing_get(b->a, &tm);
        best = fmin(best, t);
        best_core = fmin(best_core, tm.core_s);
    }
    baseline bl = mean_of(b0, measure(b->smoke));
    /* naive on the first K sequences, scaled to the batch */
    int K = b->naive_seqs < B ? b->naive_seqs : B;
    dpep_attn_set_decode(b->a, DPEP_ATTN_DECODE_NAIVE);
    dpep_attn_timing_reset(b->a);
    if (dpep_attn_forward(b->a, &b->w, 0, kv, sq, K, b->x, b->out2) != DPEP_OK) return -1;
    dpep_attn_timing tm;
    dpep_attn_timing_get(b->a, &tm);
    double naive_core = tm.core_s * B / K;
    double err = rel_diff(b->out, b->out2, (size_t)K * hid);
    double flops = B * dpep_attn_core_flops(m, H, 1, ctx, DPEP_ATTN_DECODE_ABSORBED);
    double kvb = (double)B * (ctx + 1) * row * sizeof(float);
    double gf = flops / best_core / 1e9, gbs = kvb / best_core / 1e9;
    bool ok = err < 1e-3;
    printf("%-8s %6d %6d %6d %10.2f %10.2f %10.1f %8.2f %8.1f %8.2f %8.2f %8.3f %10.1f %8.1fx %8.1e%s\n",
           "decode", B, ctx, H, best * 1e3, best_core * 1e3, gf, gbs, bl.sgemm, bl.memcpy, gf / bl.sgemm,
           gbs / bl.memcpy, naive_core * 1e3, naive_core / best_core, err, ok ? "" : " WRONG");
    free(rows);
    free(sq);
    dpep_attn_kv_destroy(kv);
    return ok ? 0 : 1;
}

/* One prefill row: n tokens in one call (best of 2 up to 512 tokens), then
 * the last token again as an absorbed decode step must agree. 1 when the
 * result is wrong, -1 on an error. */
static int prefill_row(bench *b, int n)
{
    const dpep_model_config *m = &b->m;
    const int H = m->n_heads, qk = m->qk_nope + m->qk_rope, row = dpep_model_kv_row(m);
    const int hid = m->hidden;
    const double proj_flops_tok = 2.0 * hid * m->q_lora_rank + 2.0 * m->q_lora_rank * H * qk +
                                  2.0 * hid * row + 2.0 * H * m->v_head * hid;
    dpep_attn_kv_params kp = {.n_layers = 1, .page_size = 64,
                              .budget_bytes = (size_t)(n + 64) * row * sizeof(float), .max_seqs = 1,
                              .max_seq_len = n};
    dpep_attn_kv *kv = NULL;
    int slot;
    if (dpep_attn_kv_create(m, &kp, &kv) != DPEP_OK || dpep_attn_kv_seq_open(kv, &slot) ||
        dpep_attn_kv_seq_reserve(kv, slot, n))
        return -1;
    dpep_attn_seq sq = {slot, n, 0};
    int r_n = b->smoke || n <= 512 ? 2 : 1;
    double best = 1e30, best_core = 1e30, best_proj = 0;
    baseline b0 = measure(b->smoke);
    for (int r = 0; r < r_n; r++) {
        dpep_attn_timing_reset(b->a);
        double t = dpep_clock_s();
        if (dpep_attn_forward(b->a, &b->w, 0, kv, &sq, 1, b->x, b->out) != DPEP_OK) return -1;
        t = dpep_clock_s() - t;
        dpep_attn_timing tm;
        dpep_attn_timing_get(b->a, &tm);
        if (t < best) {
            best = t;
            best_core = tm.core_s;
            best_proj = tm.proj_s + tm.oproj_s;
        }
    }
    baseline bl = mean_of(b0, measure(b->smoke));
    /* the last token again, as an absorbed decode step */
    dpep_attn_set_decode(b->a, DPEP_ATTN_DECODE_ABSORBED);
    dpep_attn_seq last = {slot, 1, n - 1};
    dpep_attn_forward(b->a, &b->w, 0, kv, &last, 1, b->x + (size_t)(n - 1) * hid, b->out2);
    double err = rel_diff(b->out2, b->out + (size_t)(n - 1) * hid, (size_t)hid);
    double flops = dpep_attn_core_flops(m, H, n, 0, DPEP_ATTN_DECODE_NAIVE);
    double gf = flops / best_core / 1e9;
    double kvb = (double)n * row * sizeof(float);
    bool ok = err < 1e-3;
    printf("%-8s %6d %6d %6d %10.2f %10.2f %10.1f %8.2f %8.1f %8.2f %8.2f %8.3f %10s %9s %8.1e%s\n",
           "prefill", 1, n, H, best * 1e3, best_core * 1e3, gf, kvb / best_core / 1e9, bl.sgemm,
           bl.memcpy, gf / bl.sgemm, kvb / best_core / 1e9 / bl.memcpy, "-", "-", err,
           ok ? "" : " WRONG");
    printf("#   prefill %d: projections %.1f GFLOP/s (%.2f of sgemm), whole step %.1f GFLOP/s\n", n,
           proj_flops_tok * n / best_proj / 1e9, proj_flops_tok * n / best_proj / 1e9 / bl.sgemm,
           (proj_flops_tok * n + flops) / best / 1e9);
    dpep_attn_kv_destroy(kv);
    return ok ? 0 : 1;
}

int main(int argc, char **argv)
{
    int heads = 128;
    bench b = {.reps = 3, .naive_seqs = 2};
    const char *only = "";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--heads") && i + 1 < argc) heads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) b.reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--naive-seqs") && i + 1 < argc) b.naive_seqs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
        else if (!strcmp(argv[i], "--smoke")) b.smoke = true;
        else if (!strcmp(argv[i], "--core") && i + 1 < argc) {
            if (!dpep_attn_cpu_kernels_force(argv[++i])) {
                fprintf(stderr, "%s: --core %s: not a table this build and CPU run\n", argv[0], argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "usage: %s [--heads N] [--reps R] [--naive-seqs K] [--only decode|prefill] "
                            "[--core generic|avx2|avx512] [--smoke]\n", argv[0]);
            return 2;
        }
    }
    if (heads < 1 || b.reps < 1 || b.naive_seqs < 1) return 2;
    dpep_log_init();
    const bool smoke = b.smoke;
    b.m = v3_dims(smoke, heads);
    const dpep_model_config *m = &b.m;
    double sg = bench_sgemm(smoke ? 256 : 2048);
    double mc = bench_memcpy(smoke ? (8u << 20) : (512u << 20));
    printf("# dpep_attn_perf: MLA on DeepSeek-V3 head dims (hidden %d, q_lora %d, kv_lora %d, "
           "nope %d, rope %d, v %d), %d heads, fp32, decode core %s\n",
           m->hidden, m->q_lora_rank, m->kv_lora_rank, m->qk_nope, m->qk_rope, m->v_head, m->n_heads,
           dpep_attn_cpu_kernels(heads));
    printf("# baseline: cblas_sgemm %d^3 %.1f GFLOP/s; memcpy %d MiB %.2f GB/s (bytes copied / s); "
           "load average %.2f\n",
           smoke ? 256 : 2048, sg, smoke ? 8 : 512, mc, load_avg());
    printf("# per row: sgemm 1024^3 and memcpy 128 MiB measured before and after the row (mean), "
           "ratios against those\n");
    b.w = random_layer(m);

    struct { int batch, ctx; } dec[3] = {{1, 4096}, {32, 1024}, {128, 512}};
    int pre[2] = {512, 2048};
    if (smoke) {
        dec[0].ctx = 100;
        dec[1].batch = 4, dec[1].ctx = 37;
        dec[2].batch = 9, dec[2].ctx = 16;
        pre[0] = 20;
        pre[1] = 70;
    }
    int max_tokens = 0;
    int64_t max_ctx = 0;
    for (int i = 0; i < 3; i++) {
        max_tokens = dec[i].batch > max_tokens ? dec[i].batch : max_tokens;
        max_ctx = dec[i].ctx + 1 > max_ctx ? dec[i].ctx + 1 : max_ctx;
    }
    for (int i = 0; i < 2; i++) {
        max_tokens = pre[i] > max_tokens ? pre[i] : max_tokens;
        max_ctx = pre[i] > max_ctx ? pre[i] : max_ctx;
    }
    dpep_attn_params ap = {.head0 = 0, .n_heads = m->n_heads, .max_tokens = max_tokens, .max_ctx = max_ctx,
                           .decode = DPEP_ATTN_DECODE_ABSORBED, .tp = NULL};
    if (dpep_attn_create(m, &ap, &b.a) != DPEP_OK) return 1;
    b.x = rnd((size_t)max_tokens * m->hidden, 1.0f);
    b.out = malloc(sizeof(float) * (size_t)max_tokens * m->hidden);
    b.out2 = malloc(sizeof(float) * (size_t)max_tokens * m->hidden);
    int bad = 0;

    printf("# core = attention without the q/kv/o projections (absorbed: incl. W_UK/W_UV products);\n"
           "# KV GB/s = latent cache bytes (each row once) / core time; ratios against the baselines above\n");
    printf("%-8s %6s %6s %6s %10s %10s %10s %8s %8s %8s %8s %8s %10s %9s %8s\n", "phase", "batch",
           "ctx", "heads", "step_ms", "core_ms", "core_GF/s", "KV_GB/s", "sgemm", "memcpy", "/sgemm",
           "/memcpy", "naive_ms", "speedup", "err");
    for (int c = 0; c < 3 && strcmp(only, "prefill"); c++) {
        int r = decode_row(&b, dec[c].batch, dec[c].ctx);
        if (r < 0) return 1;
        bad += r;
    }
    for (int c = 0; c < 2 && strcmp(only, "decode"); c++) {
        int r = prefill_row(&b, pre[c]);
        if (r < 0) return 1;
        bad += r;
    }
    printf("# wrong results: %d; load average at the end %.2f\n", bad, load_avg());
    dpep_attn_destroy(b.a);
    free(b.x);
    free(b.out);
    free(b.out2);
    free_layer(&b.w);
    return bad ? 1 : 0;
}
