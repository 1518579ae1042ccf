/* test_attn_cuda.c — op test of the CUDA attention backend (attn/mla_cuda.cu)
 * against the CPU one (mla_cpu.c), in the style of ggml's test-backend-ops:
 * the same random weights (never zeros) and inputs on both, device outputs
 * poisoned with NaN before each run, normalized error ||gpu - cpu|| / ||cpu||
 * of the forward's output and of the latent rows it wrote into the cache.
 * Threshold: fp32 <= 1e-5 (issue 16).
 *
 * Cases, for q_lora on/off x heads 1, 3 (head0 2), 8 x page sizes 1/16/64:
 * a prefill of 7 tokens; a prefill of 5 over that cached prefix (pos0 7)
 * batched with a fresh prefill of 3 and an empty sequence; one-token decodes
 * (two sequences, then one); an empty batch; a 140-token prefill (keys span
 * two chunks of the kernel's online softmax) and a decode after it.
 *
 * Without a GPU (or in a build without CUDA) it runs the host-side checks
 * (the CUDA device and both creates refused with UNSUPPORTED, nothing
 * returned), then prints "SKIP: why" and exits 77. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpep_attn.h"
#include "../dpep_test.h"

#define TOL 1e-5

#include "attn_fixture.h"

/* ---- the device's memory through its allocator ---- */
static dpep_device g_gpu;
#define MAX_DEV_BUFS 16
static void *g_bufs[MAX_DEV_BUFS];
static int g_nbufs;

/* n floats on the device, freed by dev_free_all. */
static float *dev_buf(size_t n)
{
    void *p = NULL;
    if (g_nbufs == MAX_DEV_BUFS || dpep_device_alloc(&g_gpu, sizeof(float) * n, &p) != DPEP_OK) {
        printf("FAIL cannot allocate %zu floats on the device\n", n);
        exit(1);
    }
    g_bufs[g_nbufs++] = p;
    return (float *)p;
}
static float *dev_copy(const float *h, size_t n)
{
    if (!h) return NULL;
    float *p = dev_buf(n);
    if (g_gpu.ops->to_device(&g_gpu, p, h, sizeof(float) * n) != DPEP_OK) {
        printf("FAIL cannot copy %zu floats to the device\n", n);
        exit(1);
    }
    return p;
}
static void dev_free_all(void)
{
    for (int i = 0; i < g_nbufs; i++) dpep_device_free(&g_gpu, g_bufs[i]);
    g_nbufs = 0;
}

/* The heads [head0, head0 + nh) of one random layer, on the host (cw) and
 * the same values on the device (gw). Host arrays freed by the caller via
 * free_host_w. */
static void make_w(const dpep_model_config *m, int head0, int nh, dpep_layer_w *cw, dpep_layer_w *gw)
{
    const int h = m->hidden, qk = m->qk_nope + m->qk_rope, ql = m->q_lora_rank, qin = ql ? ql : h;
    const int row = m->kv_lora_rank + m->qk_rope, bw = m->qk_nope + m->v_head;
    const double sh = sqrt(3.0 / h), sq = sqrt(3.0 / qin), sl = sqrt(3.0 / m->kv_lora_rank),
                 so = sqrt(3.0 / (nh * m->v_head));
    memset(cw, 0, sizeof *cw);
    cw->head0 = head0;
    cw->n_heads = nh;
    size_t n_qa = (size_t)ql * h, n_qb = (size_t)nh * qk * qin, n_kva = (size_t)row * h,
           n_kvb = (size_t)nh * bw * m->kv_lora_rank, n_o = (size_t)h * nh * m->v_head;
    if (ql) {
        cw->q_a = malloc(sizeof(float) * n_qa);
        cw->q_a_norm = malloc(sizeof(float) * (size_t)ql);
        fill(cw->q_a, n_qa, -sh, sh);
        fill(cw->q_a_norm, (size_t)ql, 0.5, 1.5);
    }
    cw->q_b = malloc(sizeof(float) * n_qb);
    fill(cw->q_b, n_qb, -sq, sq);
    cw->kv_a = malloc(sizeof(float) * n_kva);
    fill(cw->kv_a, n_kva, -sh, sh);
    cw->kv_a_norm = malloc(sizeof(float) * (size_t)m->kv_lora_rank);
    fill(cw->kv_a_norm, (size_t)m->kv_lora_rank, 0.5, 1.5);
    cw->kv_b = malloc(sizeof(float) * n_kvb);
    fill(cw->kv_b, n_kvb, -sl, sl);
    cw->o = malloc(sizeof(float) * n_o);
    fill(cw->o, n_o, -so, so);
    *gw = *cw;
    gw->q_a = dev_copy(cw->q_a, n_qa);
    gw->q_a_norm = dev_copy(cw->q_a_norm, (size_t)ql);
    gw->q_b = dev_copy(cw->q_b, n_qb);
    gw->kv_a = dev_copy(cw->kv_a, n_kva);
    gw->kv_a_norm = dev_copy(cw->kv_a_norm, (size_t)m->kv_lora_rank);
    gw->kv_b = dev_copy(cw->kv_b, n_kvb);
    gw->o = dev_copy(cw->o, n_o);
}
static void free_host_w(dpep_layer_w *w)
{
    free(w->q_a);
    free(w->q_a_norm);
    free(w->q_b);
    free(w->kv_a);
    free(w->kv_a_norm);
    free(w->kv_b);
    free(w->o);
}

static double norm_err(const float *g, const float *c, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)g[i] - (double)c[i];
        num += d * d;
        den += (double)c[i] * c[i];
    }
    if (!(num == num)) return INFINITY; /* NaN: a poisoned value survived */
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

static double g_worst;

#define MAX_T 160
#define LAYER 1

typedef struct pair {
    dpep_attn *ca, *ga;
    dpep_attn_kv *ckv, *gkv;
    dpep_layer_w cw, gw;
    int hid, row;
    float *x, *out_c, *out_g; /* host (MAX_T, hidden) */
    float *dx, *dout;         /* device (MAX_T, hidden) */
} pair;

/* One step on both backends; compares out and the rows written. */
static void step(pair *p, const char *what, const char *cfg, const dpep_attn_seq *seq, int n_seq)
{
    int T = 0;
    for (int i = 0; i < n_seq; i++) {
        T += seq[i].n_new;
        EXPECT(dpep_attn_kv_seq_reserve(p->ckv, seq[i].slot, seq[i].pos0 + seq[i].n_new) == DPEP_OK &&
                   dpep_attn_kv_seq_reserve(p->gkv, seq[i].slot, seq[i].pos0 + seq[i].n_new) == DPEP_OK,
               "%s %s: reserve", cfg, what);
    }
    const size_t n = (size_t)(T > 0 ? T : 1) * p->hid;
    fill(p->x, n, -1.0, 1.0);
    for (size_t i = 0; i < n; i++) p->out_g[i] = NAN;
    g_gpu.ops->to_device(&g_gpu, p->dx, p->x, sizeof(float) * n);
    g_gpu.ops->to_device(&g_gpu, p->dout, p->out_g, sizeof(float) * n); /* poison */
    dpep_status sc = dpep_attn_forward(p->ca, &p->cw, LAYER, p->ckv, seq, n_seq, p->x, p->out_c);
    dpep_status sg = dpep_attn_forward(p->ga, &p->gw, LAYER, p->gkv, seq, n_seq, p->dx, p->dout);
    EXPECT(sc == DPEP_OK && sg == DPEP_OK, "%s %s: forward cpu %d cuda %d", cfg, what, sc, sg);
    if (sc != DPEP_OK || sg != DPEP_OK || T == 0) return;
    g_gpu.ops->to_host(&g_gpu, p->out_g, p->dout, sizeof(float) * (size_t)T * p->hid);
    double e = norm_err(p->out_g, p->out_c, (size_t)T * p->hid);
    /* the latent rows the step wrote */
    double ek = 0;
    float *rg = malloc(sizeof(float) * (size_t)p->row);
    for (int i = 0; i < n_seq; i++)
        for (int j = 0; j < seq[i].n_new; j++) {
            const float *c = dpep_attn_kv_row(p->ckv, seq[i].slot, LAYER, seq[i].pos0 + j);
            const float *g = dpep_attn_kv_row(p->gkv, seq[i].slot, LAYER, seq[i].pos0 + j);
            g_gpu.ops->to_host(&g_gpu, rg, g, sizeof(float) * (size_t)p->row);
            double r = norm_err(rg, c, (size_t)p->row);
            ek = r > ek ? r : ek;
        }
    free(rg);
    if (e > g_worst) g_worst = e;
    if (ek > g_worst) g_worst = ek;
    EXPECT(e <= TOL && ek <= TOL, "%s %s (T %d): out err %.3g, cache rows err %.3g (tol %.0e)", cfg,
           what, T, e, ek, TOL);
}

static void run_config(bool q_lora, int nh, int page_size)
{
    dpep_model_config m = test_model(q_lora);
    const int head0 = nh == 3 ? 2 : 0;
    char cfg[64];
    snprintf(cfg, sizeof cfg, "[q_lora %d heads %d page %d]", q_lora, nh, page_size);
    dpep_device cpu;
    dpep_device_get(DPEP_DEVICE_CPU, -1, &cpu);
    pair p;
    memset(&p, 0, sizeof p);
    p.hid = m.hidden;
    p.row = m.kv_lora_rank + m.qk_rope;
    dpep_attn_kv_params kp = {.n_layers = 2, .page_size = page_size, .budget_bytes = 4u << 20,
                              .max_seqs = 4, .max_seq_len = 256, .device = &cpu};
    dpep_attn_params ap = {.head0 = head0, .n_heads = nh, .max_tokens = MAX_T, .max_ctx = 256,
                           .decode = DPEP_ATTN_DECODE_ABSORBED, .device = &cpu};
    bool ok = dpep_attn_kv_create(&m, &kp, &p.ckv) == DPEP_OK && dpep_attn_create(&m, &ap, &p.ca) == DPEP_OK;
    kp.device = &g_gpu;
    ap.device = &g_gpu;
    ok = ok && dpep_attn_kv_create(&m, &kp, &p.gkv) == DPEP_OK && dpep_attn_create(&m, &ap, &p.ga) == DPEP_OK;
    EXPECT(ok, "%s: create both", cfg);
    if (!ok) goto done;
    make_w(&m, head0, nh, &p.cw, &p.gw);
    p.x = malloc(sizeof(float) * MAX_T * p.hid);
    p.out_c = malloc(sizeof(float) * MAX_T * p.hid);
    p.out_g = malloc(sizeof(float) * MAX_T * p.hid);
    p.dx = dev_buf((size_t)MAX_T * p.hid);
    p.dout = dev_buf((size_t)MAX_T * p.hid);
    int sa = -1, sb = -1, sc = -1, t;
    ok = dpep_attn_kv_seq_open(p.ckv, &sa) == DPEP_OK && dpep_attn_kv_seq_open(p.gkv, &t) == DPEP_OK && t == sa;
    ok = ok && dpep_attn_kv_seq_open(p.ckv, &sb) == DPEP_OK && dpep_attn_kv_seq_open(p.gkv, &t) == DPEP_OK && t == sb;
    ok = ok && dpep_attn_kv_seq_open(p.ckv, &sc) == DPEP_OK && dpep_attn_kv_seq_open(p.gkv, &t) == DPEP_OK && t == sc;
    EXPECT(ok, "%s: open the same slots on both", cfg);
    if (!ok) goto done;
    {
        dpep_attn_seq s1[] = {{sa, 7, 0}};
        step(&p, "prefill 7", cfg, s1, 1);
        dpep_attn_seq s2[] = {{sa, 5, 7}, {sb, 3, 0}, {sc, 0, 0}};
        step(&p, "prefill 5 over a cached prefix of 7 + prefill 3 + empty sequence", cfg, s2, 3);
        dpep_attn_seq s3[] = {{sa, 1, 12}, {sb, 1, 3}};
        step(&p, "decode x2", cfg, s3, 2);
        dpep_attn_seq s4[] = {{sb, 1, 4}};
        step(&p, "decode 1 token", cfg, s4, 1);
        step(&p, "empty batch", cfg, NULL, 0);
        dpep_attn_seq s5[] = {{sc, 140, 0}};
        step(&p, "prefill 140 (2 key chunks)", cfg, s5, 1);
        dpep_attn_seq s6[] = {{sc, 1, 140}, {sa, 1, 13}};
        step(&p, "decode after 140", cfg, s6, 2);
    }
done:
    free_host_w(&p.cw);
    free(p.x);
    free(p.out_c);
    free(p.out_g);
    dev_free_all();
    dpep_attn_destroy(p.ca);
    dpep_attn_destroy(p.ga);
    dpep_attn_kv_destroy(p.ckv);
    dpep_attn_kv_destroy(p.gkv);
}

int main(void)
{
    g_rng = 0x5eed;
    dpep_log_init();
#ifndef DPEP_HAVE_CUDA
    printf("SKIP: this build has no CUDA\n");
    return 77;
#else
    EXPECT(dpep_device_get(DPEP_DEVICE_CUDA, 0, &g_gpu) == DPEP_OK, "cuda device 0 in a CUDA build");
    dpep_model_config m = test_model(true);
    dpep_attn_kv_params kp = {.n_layers = 2, .page_size = 16, .budget_bytes = 1 << 20, .max_seqs = 2,
                              .max_seq_len = 64, .device = &g_gpu};
    dpep_attn_params ap = {.head0 = 0, .n_heads = 3, .max_tokens = 8, .max_ctx = 64, .device = &g_gpu};
    dpep_attn_kv *kv = NULL;
    dpep_attn *a = NULL;
    dpep_status skv = dpep_attn_kv_create(&m, &kp, &kv);
    dpep_status sa = dpep_attn_create(&m, &ap, &a);
    if (skv == DPEP_ERR_UNSUPPORTED || sa == DPEP_ERR_UNSUPPORTED) {
        /* host-side: both refused alike, nothing returned */
        EXPECT(skv == DPEP_ERR_UNSUPPORTED && sa == DPEP_ERR_UNSUPPORTED && !kv && !a,
               "no GPU: both creates UNSUPPORTED (kv %d, attn %d)", skv, sa);
        printf("host-side checks: %d passed, %d failed\n", g_pass, g_fail);
        if (g_fail) return 1;
        printf("SKIP: no usable CUDA device (the attention creates refuse cuda:0)\n");
        return 77;
    }
    EXPECT(skv == DPEP_OK && sa == DPEP_OK && dpep_attn_scratch_bytes(a) > 0, "creates on cuda:0");
    /* host weights are refused by the CUDA forward, with a message */
    if (a && kv) {
        dpep_layer_w hw, dw;
        make_w(&m, 0, 3, &hw, &dw);
        int s = -1;
        float x[64 * 2], out[64 * 2];
        fill(x, 128, -1, 1);
        dpep_attn_seq sq = {0, 2, 0};
        EXPECT(dpep_attn_kv_seq_open(kv, &s) == DPEP_OK && dpep_attn_kv_seq_reserve(kv, s, 2) == DPEP_OK,
               "open");
        sq.slot = s;
        EXPECT(dpep_attn_forward(a, &hw, 0, kv, &sq, 1, x, out) == DPEP_ERR_UNSUPPORTED,
               "host weights and buffers refused on cuda");
        free_host_w(&hw);
        dev_free_all();
    }
    dpep_attn_destroy(a);
    dpep_attn_kv_destroy(kv);
    const int heads[3] = {1, 3, 8}, pages[3] = {1, 16, 64};
    for (int ql = 1; ql >= 0; ql--)
        for (int h = 0; h < 3; h++)
            for (int pg = 0; pg < 3; pg++) run_config(ql, heads[h], pages[pg]);
    printf("attn cuda vs cpu: worst normalized error %.3g (tol %.0e)\n", g_worst, TOL);
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
#endif
}
