/* test_engine_golden.c — the engine's forward step on one rank against the
 * Hugging Face transformers goldens (tests/reference): prefill logits of each
 * golden prompt within 1e-4 max abs error, the 16 greedy tokens through the
 * KV cache (prefill + 15 decode steps) identical, the decode-step logits vs
 * the no-cache seq_logits, and the three prompts batched together (chunked
 * prefill of 5 tokens per sequence per step) giving the same tokens. */
#include "dpep_engine.h"
#include "../dpep_golden.h"
#include "../dpep_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int argmax(const float *x, int n)
{
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

static double max_abs(const float *a, const float *b, int64_t n)
{
    double e = 0;
    for (int64_t i = 0; i < n; i++) e = fmax(e, fabs((double)a[i] - b[i]));
    return e;
}

#define NP 3
#define NGEN 16

static void run_model(const char *src, const char *model)
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
    dpep_config c;
    dpep_config_init(&c);
    c.parallel.tp = c.parallel.dp = c.parallel.ep = 1;
    c.parallel.enable_dp_attention = false;
    dpep_layout l;
    dpep_rank_info r;
    dpep_config_validate(&c, 1, &d);
    dpep_layout_from_config(&c, 1, &l);
    dpep_layout_rank(&l, 0, &r);
    dpep_weights w;
    EXPECT(dpep_weights_load(ck, &m, &l, &r, &w, &d) == DPEP_OK, "%s weights", model);
    dpep_engine_params ep = {.m = &m, .w = &w, .layout = &l, .me = &r,
                             .attn_tp = MPI_COMM_NULL, .ep = MPI_COMM_NULL,
                             .moe_tp = MPI_COMM_NULL, .dense = MPI_COMM_NULL,
                             .backend = DPEP_A2A_ALLTOALL, .comm_timeout_s = 60,
                             .max_tokens = 64, .max_ctx = 128, .max_seqs = 8, .page_size = 4,
                             .kv_budget_bytes = 4u << 20};
    dpep_engine *e = NULL;
    EXPECT(dpep_engine_create(&ep, &e, &d) == DPEP_OK, "%s engine", model);
    if (!e) {
        dpep_diag_print(&d, stdout);
        goto out;
    }
    dpep_attn_kv *kv = dpep_engine_kv(e);
    const int V = m.vocab;
    float *logits = malloc(sizeof(float) * 64 * (size_t)V);
    int32_t *ids[NP] = {0};
    int64_t len[NP] = {0};
    int64_t *greedy[NP] = {0};
    for (int p = 0; p < NP; p++) {
        char name[64];
        snprintf(name, sizeof name, "p%d.input_ids", p);
        int64_t *ids64 = dpep_golden_i64(&gold, name, &len[p]);
        snprintf(name, sizeof name, "p%d.greedy", p);
        int64_t ng = 0;
        greedy[p] = dpep_golden_i64(&gold, name, &ng);
        EXPECT(ids64 && greedy[p] && ng == NGEN, "%s p%d ids", model, p);
        if (!ids64 || !greedy[p]) continue;
        ids[p] = malloc(sizeof(int32_t) * (size_t)len[p]);
        for (int64_t i = 0; i < len[p]; i++) ids[p][i] = (int32_t)ids64[i];
        free(ids64);
        int64_t rows, cols, srows, scols;
        snprintf(name, sizeof name, "p%d.logits", p);
        float *gl = dpep_golden_f32(&gold, name, &rows, &cols);
        snprintf(name, sizeof name, "p%d.seq_logits", p);
        float *sl = dpep_golden_f32(&gold, name, &srows, &scols);
        EXPECT(gl && rows == len[p] && cols == V && sl && srows == len[p] + NGEN, "%s p%d goldens",
               model, p);
        if (!gl || !sl) {
            free(gl);
            free(sl);
            continue;
        }
        /* Prefill: every row's logits. */
        int slot = -1;
        EXPECT(dpep_attn_kv_seq_open(kv, &slot) == DPEP_OK &&
                   dpep_attn_kv_seq_reserve(kv, slot, len[p] + NGEN) == DPEP_OK, "reserve");
        dpep_attn_seq s = {slot, (int)len[p], 0};
        EXPECT(dpep_engine_forward(e, &s, 1, ids[p], DPEP_LOGITS_ALL, logits) == DPEP_OK, "fwd");
        double err = max_abs(logits, gl, len[p] * V);
        /* Greedy through the cache. */
        int32_t out[NGEN];
        double derr = 0;
        out[0] = argmax(logits + (len[p] - 1) * V, V);
        for (int j = 1; j < NGEN; j++) {
            s = (dpep_attn_seq){slot, 1, len[p] + j - 1};
            EXPECT(dpep_engine_forward(e, &s, 1, &out[j - 1], DPEP_LOGITS_LAST, logits) == DPEP_OK,
                   "decode");
            derr = fmax(derr, max_abs(logits, sl + (len[p] - 1 + j) * V, V));
            out[j] = argmax(logits, V);
        }
        int same = 0;
        for (int j = 0; j < NGEN; j++) same += out[j] == greedy[p][j];
        printf("%s p%d (len %2lld): prefill logits max abs err %.3g, decode logits err %.3g, "
               "greedy %d/%d identical\n", model, p, (long long)len[p], err, derr, same, NGEN);
        EXPECT(err <= 1e-4, "%s p%d prefill logits err %g > 1e-4", model, p, err);
        EXPECT(derr <= 1e-4, "%s p%d decode logits err %g > 1e-4", model, p, derr);
        EXPECT(same == NGEN, "%s p%d greedy tokens differ", model, p);
        dpep_attn_kv_seq_close(kv, slot);
        free(gl);
        free(sl);
    }
    /* All prompts in one batch: chunked prefill (5 tokens per sequence per
     * step), then batched decode. */
    {
        int slot[NP];
        int64_t pos[NP] = {0};
        int32_t gen[NP][NGEN];
        int ngen[NP] = {0};
        for (int p = 0; p < NP; p++) {
            dpep_attn_kv_seq_open(kv, &slot[p]);
            dpep_attn_kv_seq_reserve(kv, slot[p], len[p] + NGEN);
        }
        for (int step = 0; step < 100; step++) {
            dpep_attn_seq s[NP];
            int32_t tok[64];
            int ns = 0, T = 0, who[NP];
            for (int p = 0; p < NP; p++) {
                if (!ids[p] || ngen[p] >= NGEN) continue;
                int n;
                if (pos[p] < len[p]) {
                    n = (int)(len[p] - pos[p] < 5 ? len[p] - pos[p] : 5);
                    memcpy(tok + T, ids[p] + pos[p], sizeof(int32_t) * (size_t)n);
                } else {
                    n = 1;
                    tok[T] = gen[p][ngen[p] - 1];
                }
                s[ns] = (dpep_attn_seq){slot[p], n, pos[p]};
                who[ns++] = p;
                T += n;
            }
            if (!ns) break;
            EXPECT(dpep_engine_forward(e, s, ns, tok, DPEP_LOGITS_LAST, logits) == DPEP_OK, "batch");
            for (int i = 0; i < ns; i++) {
                int p = who[i];
                pos[p] += s[i].n_new;
                if (pos[p] >= len[p]) gen[p][ngen[p]++] = argmax(logits + (size_t)i * V, V);
            }
        }
        for (int p = 0; p < NP; p++) {
            int same = 0;
            for (int j = 0; greedy[p] && j < ngen[p]; j++) same += gen[p][j] == greedy[p][j];
            printf("%s batched p%d: greedy %d/%d identical\n", model, p, same, NGEN);
            EXPECT(same == NGEN, "%s batched p%d", model, p);
            dpep_attn_kv_seq_close(kv, slot[p]);
        }
    }
    for (int p = 0; p < NP; p++) {
        free(ids[p]);
        free(greedy[p]);
    }
    free(logits);
    dpep_engine_destroy(e);
out:
    dpep_weights_free(&w);
    dpep_config_free(&c);
    dpep_ckpt_close(ck);
    dpep_golden_close(&gold);
}

int main(int argc, char **argv)
{
    int prov;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &prov);
    dpep_log_init();
    const char *src = argc > 1 ? argv[1] : ".";
    run_model(src, "deepseek_v3_tiny");
    run_model(src, "deepseek_v2_tiny");
    int rc = dpep_test_summary();
    MPI_Finalize();
    return rc;
}
