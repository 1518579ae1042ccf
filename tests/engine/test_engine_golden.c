/* test_engine_golden.c — the engine's forward step on one rank against the
 * Hugging Face transformers goldens (tests/reference): prefill logits of each
 * golden prompt within 1e-4 max abs error, the 16 greedy tokens through the
 * KV cache (prefill + 15 decode steps) identical, the decode-step logits vs
 * the no-cache seq_logits, and the three prompts batched together (chunked
 * prefill of 5 tokens per sequence per step) giving the same tokens. */
#include "dpep_engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int g_fail;
#define EXPECT(c, ...)                                                          \
    do {                                                                        \
        if (!(c)) {                                                             \
            g_fail++;                                                           \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                         \
            printf(__VA_ARGS__);                                                \
            printf("\n");                                                       \
        }                                                                       \
    } while (0)

static char g_tmp[] = "/tmp/dpep-engine-golden-XXXXXX";

/* I64 tensor of the golden file (read at its offset: dpep_ckpt_read_f32
 * reads floating-point tensors only). */
static int64_t *read_i64(const char *file, const dpep_tensor_info *t, int64_t *n)
{
    *n = 1;
    for (int d = 0; d < t->ndim; d++) *n *= t->shape[d];
    int64_t *v = malloc(sizeof(int64_t) * (size_t)*n);
    FILE *f = fopen(file, "rb");
    unsigned char b8[8];
    uint64_t hl = 0;
    bool ok = f && v && fread(b8, 1, 8, f) == 8;
    for (int i = 7; ok && i >= 0; i--) hl = (hl << 8) | b8[i];
    ok = ok && fseek(f, (long)(8 + hl + t->begin), SEEK_SET) == 0 &&
         fread(v, 8, (size_t)*n, f) == (size_t)*n;
    if (f) fclose(f);
    if (!ok) {
        free(v);
        return NULL;
    }
    return v;
}

static float *read_f32(dpep_ckpt *g, const char *name, int64_t *rows, int64_t *cols)
{
    const dpep_tensor_info *t = dpep_ckpt_find(g, name);
    if (!t || t->ndim != 2) return NULL;
    *rows = t->shape[0];
    *cols = t->shape[1];
    float *x = malloc(sizeof(float) * (size_t)(*rows * *cols));
    dpep_diag d;
    dpep_diag_init(&d);
    if (dpep_ckpt_read_f32(g, name, t->shape, 2, -1, 0, 0, 0, 0, x, &d) != DPEP_OK) {
        dpep_diag_print(&d, stdout);
        free(x);
        return NULL;
    }
    return x;
}

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
    char dir[1024], gdir[600], link[700], gpath[1024];
    snprintf(dir, sizeof dir, "%s/tests/reference/%s", src, model);
    snprintf(gdir, sizeof gdir, "%s/golden-%s", g_tmp, model);
    mkdir(gdir, 0755);
    snprintf(link, sizeof link, "%s/model.safetensors", gdir);
    snprintf(gpath, sizeof gpath, "%s/golden.safetensors", dir);
    char *abs = realpath(gpath, NULL);
    if (abs) {
        snprintf(gpath, sizeof gpath, "%s", abs);
        free(abs);
    }
    if (symlink(gpath, link) != 0 && access(link, F_OK) != 0) {
        EXPECT(0, "symlink %s", link);
        return;
    }
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_model_config m;
    dpep_ckpt *ck = NULL, *g = NULL;
    bool ok = dpep_model_config_load(dir, &m, &d) == DPEP_OK &&
              dpep_ckpt_open(dir, &ck, &d) == DPEP_OK && dpep_ckpt_open(gdir, &g, &d) == DPEP_OK;
    EXPECT(ok, "%s: open", model);
    if (!ok) {
        dpep_diag_print(&d, stdout);
        dpep_ckpt_close(ck);
        dpep_ckpt_close(g);
        return;
    }
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
        const dpep_tensor_info *ti = dpep_ckpt_find(g, name);
        int64_t *ids64 = ti ? read_i64(gpath, ti, &len[p]) : NULL;
        snprintf(name, sizeof name, "p%d.greedy", p);
        ti = dpep_ckpt_find(g, name);
        int64_t ng = 0;
        greedy[p] = ti ? read_i64(gpath, ti, &ng) : NULL;
        EXPECT(ids64 && greedy[p] && ng == NGEN, "%s p%d ids", model, p);
        if (!ids64 || !greedy[p]) continue;
        ids[p] = malloc(sizeof(int32_t) * (size_t)len[p]);
        for (int64_t i = 0; i < len[p]; i++) ids[p][i] = (int32_t)ids64[i];
        free(ids64);
        int64_t rows, cols, srows, scols;
        snprintf(name, sizeof name, "p%d.logits", p);
        float *gl = read_f32(g, name, &rows, &cols);
        snprintf(name, sizeof name, "p%d.seq_logits", p);
        float *sl = read_f32(g, name, &srows, &scols);
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
    dpep_ckpt_close(g);
}

int main(int argc, char **argv)
{
    int prov;
    MPI_Init_thread(&argc, &argv, MPI_THREAD_MULTIPLE, &prov);
    dpep_log_init();
    const char *src = argc > 1 ? argv[1] : ".";
    if (!mkdtemp(g_tmp)) return 1;
    run_model(src, "deepseek_v3_tiny");
    run_model(src, "deepseek_v2_tiny");
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    if (system(cmd) != 0) printf("note: could not remove %s\n", g_tmp);
    printf("%s (%d failures)\n", g_fail ? "FAILED" : "PASSED", g_fail);
    MPI_Finalize();
    return g_fail ? 1 : 0;
}
