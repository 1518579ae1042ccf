/* test_attn_golden.c — layer-0 MLA of the tiny HF transformers checkpoints
 * (tests/reference) against their goldens: from p{i}.act.l0.attn_norm, the
 * o_proj output must equal p{i}.act.l0.attn_out within 1e-4 (fp32), in one
 * prefill call, token by token (absorbed and naive decode), in chunks over a
 * cached prefix, and for all prompts batched in one call.
 * Usage: test_attn_golden SOURCE_DIR */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dpep_attn.h"
#include "../dpep_golden.h"
#include "../dpep_test.h"

#define TOL 1e-4

static double max_err(const float *a, const float *b, size_t n)
{
    double e = 0;
    for (size_t i = 0; i < n; i++) e = fmax(e, fabs((double)a[i] - b[i]));
    return e;
}

static void run_model(const char *src, const char *model)
{
    dpep_golden gf;
    if (!dpep_golden_open(&gf, src, model)) {
        EXPECT(0, "%s: goldens", model);
        return;
    }
    const char *dir = gf.model_dir;
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_model_config m;
    dpep_ckpt *ck = NULL;
    dpep_config c;
    dpep_config_init(&c);
    c.parallel.tp = c.parallel.dp = c.parallel.ep = 1;
    dpep_layout lay;
    dpep_rank_info r;
    dpep_weights w;
    memset(&w, 0, sizeof w);
    bool ok = dpep_model_config_load(dir, &m, &d) == DPEP_OK && dpep_ckpt_open(dir, &ck, &d) == DPEP_OK &&
              dpep_config_validate(&c, 0, &d) == DPEP_OK &&
              dpep_layout_from_config(&c, 0, &lay) == DPEP_OK;
    if (ok) {
        dpep_layout_rank(&lay, 0, &r);
        ok = dpep_weights_load(ck, &m, &lay, &r, &w, &d) == DPEP_OK;
    }
    EXPECT(ok, "%s: load model, weights and goldens", model);
    if (!ok) {
        dpep_diag_print(&d, stdout);
        goto done;
    }
    /* inv_freq against the golden */
    {
        int64_t rr, cc;
        float *inv = dpep_golden_f32(&gf, "rope.inv_freq", &rr, &cc);
        float mine[64];
        dpep_attn_rope_params(&m, mine, NULL, NULL);
        double e = 0;
        for (int i = 0; inv && i < m.qk_rope / 2; i++) e = fmax(e, fabs(mine[i] - inv[i]) / inv[i]);
        EXPECT(inv && cc == m.qk_rope / 2 && e < 1e-6, "%s: inv_freq rel err %.3g", model, e);
        printf("%s: inv_freq max rel err %.3g\n", model, e);
        free(inv);
    }
    const dpep_layer_w *L0 = &w.layer[0];
    int Hd = m.hidden;
    dpep_attn_kv_params kp = {.n_layers = m.n_layers, .page_size = 4, .budget_bytes = 1u << 20,
                              .max_seqs = 8, .max_seq_len = 128};
    dpep_attn_params ap = {.head0 = 0, .n_heads = m.n_heads, .max_tokens = 64, .max_ctx = 128,
                           .decode = DPEP_ATTN_DECODE_ABSORBED, .tp = NULL};
    dpep_attn_kv *kv = NULL;
    dpep_attn *a = NULL;
    EXPECT(dpep_attn_kv_create(&m, &kp, &kv) == DPEP_OK && dpep_attn_create(&m, &ap, &a) == DPEP_OK,
           "%s: create", model);
    if (!kv || !a) goto done_attn;
    float *xs[3] = {0}, *gold[3] = {0};
    int len[3] = {0}, total = 0;
    for (int p = 0; p < 3; p++) {
        char n1[64], n2[64];
        int64_t rows = 0, cols = 0, r2 = 0, c2 = 0;
        snprintf(n1, sizeof n1, "p%d.act.l0.attn_norm", p);
        snprintf(n2, sizeof n2, "p%d.act.l0.attn_out", p);
        xs[p] = dpep_golden_f32(&gf, n1, &rows, &cols);
        gold[p] = dpep_golden_f32(&gf, n2, &r2, &c2);
        EXPECT(xs[p] && gold[p] && cols == Hd && c2 == Hd && rows == r2, "%s p%d goldens", model, p);
        if (!xs[p] || !gold[p]) goto done_prompts;
        len[p] = (int)rows;
        total += len[p];
    }
    float *out = malloc(sizeof(float) * (size_t)total * Hd);
    const char *mode_name[4] = {"prefill", "decode-absorbed", "decode-naive", "chunks-of-5"};
    for (int p = 0; p < 3; p++) {
        int n = len[p];
        for (int mode = 0; mode < 4; mode++) {
            int slot = -1;
            dpep_status st = dpep_attn_kv_seq_open(kv, &slot);
            if (st == DPEP_OK) st = dpep_attn_kv_seq_reserve(kv, slot, n);
            dpep_attn_set_decode(a, mode == 2 ? DPEP_ATTN_DECODE_NAIVE : DPEP_ATTN_DECODE_ABSORBED);
            int step = mode == 0 ? n : mode == 3 ? 5 : 1;
            for (int j = 0; st == DPEP_OK && j < n; j += step) {
                int nn = n - j < step ? n - j : step;
                dpep_attn_seq sq = {slot, nn, j};
                st = dpep_attn_forward(a, L0, 0, kv, &sq, 1, xs[p] + (size_t)j * Hd, out + (size_t)j * Hd);
            }
            double e = max_err(out, gold[p], (size_t)n * Hd);
            EXPECT(st == DPEP_OK && e < TOL, "%s p%d %s: status %d, max abs err %.3g", model, p,
                   mode_name[mode], st, e);
            printf("%s p%d (%2d tokens) %-16s max abs err vs HF %.3g\n", model, p, n, mode_name[mode], e);
            dpep_attn_kv_seq_close(kv, slot);
        }
    }
    /* the three prompts as one batch of prefills, then one batched decode
     * step (the last token of each again, recomputed at its own position) */
    {
        dpep_attn_seq sq[3];
        float *x = malloc(sizeof(float) * (size_t)total * Hd);
        int off = 0;
        for (int p = 0; p < 3; p++) {
            int slot = -1;
            dpep_attn_kv_seq_open(kv, &slot);
            dpep_attn_kv_seq_reserve(kv, slot, len[p]);
            sq[p] = (dpep_attn_seq){slot, len[p], 0};
            memcpy(x + (size_t)off * Hd, xs[p], sizeof(float) * (size_t)len[p] * Hd);
            off += len[p];
        }
        dpep_status st = dpep_attn_forward(a, L0, 0, kv, sq, 3, x, out);
        double e = 0;
        off = 0;
        for (int p = 0; p < 3; p++) {
            e = fmax(e, max_err(out + (size_t)off * Hd, gold[p], (size_t)len[p] * Hd));
            off += len[p];
        }
        EXPECT(st == DPEP_OK && e < TOL, "%s batched prefill: max abs err %.3g", model, e);
        printf("%s batch of 3 prompts prefill          max abs err vs HF %.3g\n", model, e);
        dpep_attn_set_decode(a, DPEP_ATTN_DECODE_ABSORBED);
        for (int p = 0; p < 3; p++) {
            sq[p].pos0 = len[p] - 1;
            sq[p].n_new = 1;
            memcpy(x + (size_t)p * Hd, xs[p] + (size_t)(len[p] - 1) * Hd, sizeof(float) * Hd);
        }
        st = dpep_attn_forward(a, L0, 0, kv, sq, 3, x, out);
        e = 0;
        for (int p = 0; p < 3; p++)
            e = fmax(e, max_err(out + (size_t)p * Hd, gold[p] + (size_t)(len[p] - 1) * Hd, Hd));
        EXPECT(st == DPEP_OK && e < TOL, "%s batched decode: max abs err %.3g", model, e);
        printf("%s batch of 3 decode steps (absorbed)  max abs err vs HF %.3g\n", model, e);
        for (int p = 0; p < 3; p++) dpep_attn_kv_seq_close(kv, sq[p].slot);
        free(x);
    }
    free(out);
done_prompts:
    for (int p = 0; p < 3; p++) {
        free(xs[p]);
        free(gold[p]);
    }
done_attn:
    dpep_attn_destroy(a);
    dpep_attn_kv_destroy(kv);
done:
    if (w.arena) dpep_weights_free(&w);
    dpep_config_free(&c);
    dpep_ckpt_close(ck);
    dpep_golden_close(&gf);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s SOURCE_DIR\n", argv[0]);
        return 2;
    }
    dpep_log_init();
    run_model(argv[1], "deepseek_v3_tiny");
    run_model(argv[1], "deepseek_v2_tiny");
    return dpep_test_summary();
}
