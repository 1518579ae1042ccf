/* test_ckpt.c — checkpoints: generated tiny V3/V2 models load; every rank's
 * share equals the matching slice of the whole tensor; BF16 and FP8 copies
 * match the F32 one within their precision; sharded equals single-file; the
 * per-rank bytes follow 1/ep; and each kind of broken file is rejected with
 * the file and tensor named. */
#include "dpep_model.h"
#include "../dpep_golden.h"
#include "../dpep_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


static char g_tmp[] = "/tmp/dpep-test-ckpt-XXXXXX";

static void path(char *buf, size_t n, const char *a, const char *b)
{
    snprintf(buf, n, "%s/%s%s%s", g_tmp, a, b ? "/" : "", b ? b : "");
}

static dpep_config layout_cfg(int tp, int dp, int ep, bool dpa, bool dense1)
{
    dpep_config c;
    dpep_config_init(&c);
    c.parallel.tp = tp;
    c.parallel.dp = dp;
    c.parallel.ep = ep;
    c.parallel.enable_dp_attention = dpa;
    c.parallel.moe_dense_tp_size = dense1 ? 1 : 0;
    return c;
}

/* Whole tensor as float32 (malloc'd). */
static float *whole(dpep_ckpt *ck, const char *name, int64_t *rows, int64_t *cols)
{
    const dpep_tensor_info *t = dpep_ckpt_find(ck, name);
    if (!t) return NULL;
    *rows = t->ndim >= 2 ? t->shape[0] : 1;
    *cols = t->ndim >= 2 ? t->shape[1] : t->shape[0];
    float *x = malloc(sizeof(float) * (size_t)(*rows * *cols));
    dpep_diag d;
    dpep_diag_init(&d);
    const dpep_model_config *m = NULL;
    (void)m;
    int64_t shape[2] = {t->shape[0], t->ndim >= 2 ? t->shape[1] : 0};
    /* FP8 checkpoints in these tests use 128 x 128 blocks */
    if (dpep_ckpt_read_f32(ck, name, shape, t->ndim, -1, 0, 0, 128, 128, x, &d) != DPEP_OK) {
        dpep_diag_print(&d, stdout);
        free(x);
        return NULL;
    }
    return x;
}

/* Every slice a rank loaded equals the slice of the whole tensor. */
static void check_rank_slices(dpep_ckpt *ck, const dpep_weights *w, const dpep_layout *l,
                              const dpep_rank_info *r, const char *what)
{
    const dpep_model_config *m = &w->cfg;
    int bad = 0, checked = 0;
    for (int li = 0; li < m->n_layers && !bad; li++) {
        const dpep_layer_w *L = &w->layer[li];
        char name[160];
        int64_t rows, cols;
        /* q_b rows of my heads */
        snprintf(name, sizeof name, "model.layers.%d.self_attn.%s.weight", li,
                 m->q_lora_rank ? "q_b_proj" : "q_proj");
        float *x = whole(ck, name, &rows, &cols);
        int64_t qk = m->qk_nope + m->qk_rope;
        for (int64_t i = 0; x && i < L->n_heads * qk && !bad; i++)
            bad += memcmp(dpep_mat_f32(L->q_b) + i * cols, x + (L->head0 * qk + i) * cols, sizeof(float) * (size_t)cols) != 0;
        free(x);
        checked++;
        /* o_proj columns of my heads */
        snprintf(name, sizeof name, "model.layers.%d.self_attn.o_proj.weight", li);
        x = whole(ck, name, &rows, &cols);
        int64_t oc = (int64_t)L->n_heads * m->v_head;
        for (int64_t i = 0; x && i < rows && !bad; i++)
            for (int64_t j = 0; j < oc; j++)
                bad += dpep_mat_f32(L->o)[i * oc + j] != x[i * cols + L->head0 * m->v_head + j];
        free(x);
        checked++;
        if (!L->moe) {
            snprintf(name, sizeof name, "model.layers.%d.mlp.down_proj.weight", li);
            x = whole(ck, name, &rows, &cols);
            int part = l->dense_tp == 1 ? 0 : r->dense_tp_rank;
            for (int64_t i = 0; x && i < rows && !bad; i++)
                for (int64_t j = 0; j < L->mlp.inter; j++)
                    bad += dpep_mat_f32(L->mlp.down)[i * L->mlp.inter + j] != x[i * cols + part * L->mlp.inter + j];
            free(x);
            checked++;
            continue;
        }
        for (int e = 0; e < L->n_experts && !bad; e++) {
            snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.gate_proj.weight", li,
                     L->expert0 + e);
            x = whole(ck, name, &rows, &cols);
            int64_t in = L->experts[e].inter;
            bad += !x || memcmp(dpep_mat_f32(L->experts[e].gate), x + r->moe_tp_rank * in * cols,
                                sizeof(float) * (size_t)(in * cols)) != 0;
            free(x);
            checked++;
        }
    }
    EXPECT(!bad && checked > 0, "%s: rank %d slices differ from the whole tensors", what, r->rank);
}

static double rel_err(const float *a, const float *b, size_t n)
{
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        num += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        den += (double)b[i] * b[i];
    }
    return sqrt(num / (den + 1e-30));
}

static void write_bytes(const char *p, const void *buf, size_t n)
{
    FILE *f = fopen(p, "wb");
    fwrite(buf, 1, n, f);
    fclose(f);
}

/* Writes a safetensors file with header text `hdr` (declared length
 * `declared_len`, 0: its real length) and `data` bytes of zeros. */
static void write_st(const char *p, const char *hdr, uint64_t declared_len, size_t data)
{
    FILE *f = fopen(p, "wb");
    if (declared_len == 0) declared_len = strlen(hdr);
    unsigned char l8[8];
    for (int i = 0; i < 8; i++) l8[i] = (unsigned char)(declared_len >> (8 * i));
    fwrite(l8, 1, 8, f);
    fwrite(hdr, 1, strlen(hdr), f);
    for (size_t i = 0; i < data; i++) fputc(0, f);
    fclose(f);
}

static void expect_open_error(const char *dir, const char *needle, const char *what)
{
    dpep_ckpt *ck = NULL;
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_status st = dpep_ckpt_open(dir, &ck, &d);
    EXPECT(st == DPEP_ERR_INVALID && dpep_diag_find(&d, needle), "%s: status %s, wanted an error with '%s'",
           what, dpep_status_string(st), needle);
    if (st == DPEP_ERR_INVALID && dpep_diag_find(&d, needle)) printf("ok   %-26s %s\n", what, d.item[0].msg);
    else dpep_diag_print(&d, stdout);
    dpep_ckpt_close(ck);
}

static void bad_files(void)
{
    char dir[512], p[600];
    path(dir, sizeof dir, "bad", NULL);
    mkdir(dir, 0755);
    path(p, sizeof p, "bad", "model.safetensors");
    const char *ok_hdr = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";

    write_bytes(p, "abc", 3);
    expect_open_error(dir, "model.safetensors: truncated: 3 bytes", "truncated_tiny");
    write_st(p, ok_hdr, 1000, 8);
    expect_open_error(dir, "header length 1000 goes beyond the file", "header_beyond_file");
    write_st(p, ok_hdr, 0, 4);
    expect_open_error(dir, "tensor a: data_offsets [0, 8] out of bounds", "truncated_data");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 0, 8);
    expect_open_error(dir, "overlap", "overlapping");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 0, 8);
    expect_open_error(dir, "tensor a: 8 data bytes but dtype F32 and its shape need 12", "size_mismatch");
    write_st(p, "{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8);
    expect_open_error(dir, "tensor a: unsupported dtype Q4", "unknown_dtype");
    write_st(p, "{\"a\": [1, 2", 0, 0);
    expect_open_error(dir, "header is not valid JSON", "bad_json");
    write_st(p, "{\"a\xff\xfe\":{}}", 0, 0);
    expect_open_error(dir, "header is not valid JSON", "not_utf8");
    write_st(p, "[1,2,3]", 0, 0);
    expect_open_error(dir, "header is not a JSON object", "not_object");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 0, 8);
    expect_open_error(dir, "tensor a: bad shape", "negative_shape");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8],\"x\":1}}", 0, 8);
    expect_open_error(dir, "tensor a: expected exactly", "extra_field");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8);
    expect_open_error(dir, "header is not valid JSON: duplicate object key", "duplicate_name");
    write_st(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}XYZ", 0, 8);
    expect_open_error(dir, "trailing bytes", "trailing_garbage");
    /* huge header: the parser refuses before reading */
    {
        dpep_st_header h;
        dpep_diag d;
        dpep_diag_init(&d);
        EXPECT(dpep_st_parse_header("{}", DPEP_ST_MAX_HEADER + 1ull, 0, "big.safetensors", &h, &d) ==
                   DPEP_ERR_INVALID && dpep_diag_find(&d, "big.safetensors: header of"),
               "huge header");
    }
    /* index naming a missing shard */
    unlink(p);
    path(p, sizeof p, "bad", "model.safetensors.index.json");
    const char *idx = "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\"}}";
    write_bytes(p, idx, strlen(idx));
    expect_open_error(dir, "names shard model-00001-of-00002.safetensors, which is missing", "index_missing_shard");
    const char *idx2 = "{\"weight_map\": {\"a\": \"../etc/passwd\"}}";
    write_bytes(p, idx2, strlen(idx2));
    expect_open_error(dir, "weight_map.a: expected a shard file name", "index_path_escape");
    unlink(p);
    expect_open_error(dir, "no *.safetensors files", "empty_dir");
}

/* Model-level errors: missing tensor, wrong shape, bad config, layout. */
static void bad_models(void)
{
    char dir[512], p[600];
    path(dir, sizeof dir, "v3", NULL);
    dpep_model_config m;
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_model_config_load(dir, &m, &d);
    dpep_ckpt *ck = NULL;
    dpep_ckpt_open(dir, &ck, &d);
    /* a config that disagrees with the tensors: wrong intermediate size */
    dpep_model_config m2 = m;
    m2.inter = 500;
    dpep_config c = layout_cfg(1, 1, 1, false, false);
    dpep_layout l;
    dpep_config_validate(&c, 0, &d);
    dpep_layout_from_config(&c, 0, &l);
    dpep_rank_info r;
    dpep_layout_rank(&l, 0, &r);
    dpep_weights w;
    dpep_diag_init(&d);
    dpep_status st = dpep_weights_load(ck, &m2, &l, &r, &w, &d);
    EXPECT(st == DPEP_ERR_INVALID && dpep_diag_find(&d, "tensor model.layers.0.mlp.gate_proj.weight has shape [512, 256] (expected [500, 256]"),
           "shape mismatch: %s", d.n ? d.item[0].msg : "no message");
    /* more layers than the file has: a missing tensor */
    m2 = m;
    m2.n_layers = 5;
    dpep_diag_init(&d);
    st = dpep_weights_load(ck, &m2, &l, &r, &w, &d);
    EXPECT(st == DPEP_ERR_INVALID && dpep_diag_find(&d, "tensor model.layers.4.input_layernorm.weight is missing"),
           "missing tensor: %s", d.n ? d.item[0].msg : "no message");
    /* experts not divisible by ep; heads not divisible by attn_tp */
    dpep_config c3 = layout_cfg(3, 1, 3, false, false);
    dpep_diag_init(&d);
    dpep_config_validate(&c3, 0, &d);
    dpep_layout l3;
    dpep_layout_from_config(&c3, 0, &l3);
    EXPECT(dpep_model_check_layout(&m, &l3, dir, &d) == DPEP_ERR_INVALID &&
               dpep_diag_find(&d, "n_routed_experts 16 is not divisible by ep 3") &&
               dpep_diag_find(&d, "num_attention_heads 8 is not divisible by the attention-TP size 3"),
           "layout divisibility");
    dpep_config_free(&c3);
    dpep_config_free(&c);
    dpep_ckpt_close(ck);
    /* config.json errors */
    struct {
        const char *json, *needle;
    } cases[] = {
        {"{\"architectures\": [\"LlamaForCausalLM\"]}", "architectures: unsupported architecture LlamaForCausalLM"},
        {"{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"hidden_size\": \"big\"}", "hidden_size: not an integer"},
        {"{\"architectures\": [\"DeepseekV3ForCausalLM\"]}", "hidden_size: missing"},
        {"{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"hidden_size\": 64, \"num_hidden_layers\": 1,"
         "\"num_attention_heads\": 2, \"vocab_size\": 10, \"kv_lora_rank\": 8, \"qk_nope_head_dim\": 4,"
         "\"qk_rope_head_dim\": 4, \"v_head_dim\": 4, \"intermediate_size\": 8, \"n_routed_experts\": 6,"
         "\"num_experts_per_tok\": 2, \"n_group\": 4, \"moe_intermediate_size\": 4}", "n_group: must divide n_routed_experts"},
        /* n_group 0 or not a number: named, not a division by zero */
        {"{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"hidden_size\": 64, \"num_hidden_layers\": 1,"
         "\"num_attention_heads\": 2, \"vocab_size\": 10, \"kv_lora_rank\": 8, \"qk_nope_head_dim\": 4,"
         "\"qk_rope_head_dim\": 4, \"v_head_dim\": 4, \"intermediate_size\": 8, \"n_routed_experts\": 6,"
         "\"num_experts_per_tok\": 2, \"n_group\": 0, \"moe_intermediate_size\": 4}", "n_group"},
        {"{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"hidden_size\": 64, \"num_hidden_layers\": 1,"
         "\"num_attention_heads\": 2, \"vocab_size\": 10, \"kv_lora_rank\": 8, \"qk_nope_head_dim\": 4,"
         "\"qk_rope_head_dim\": 4, \"v_head_dim\": 4, \"intermediate_size\": 8, \"n_routed_experts\": 6,"
         "\"num_experts_per_tok\": 2, \"n_group\": \"x\", \"moe_intermediate_size\": 4}", "n_group"},
        {"{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"hidden_size\": 64, \"num_hidden_layers\": 1,"
         "\"num_attention_heads\": 2, \"vocab_size\": 10, \"kv_lora_rank\": 8, \"qk_nope_head_dim\": 4,"
         "\"qk_rope_head_dim\": 4, \"v_head_dim\": 4, \"intermediate_size\": 8,"
         "\"rope_scaling\": {\"type\": \"longrope\"}}", "rope type longrope is not supported"},
        {"{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"hidden_size\": 64, \"num_hidden_layers\": 1,"
         "\"num_attention_heads\": 2, \"vocab_size\": 10, \"kv_lora_rank\": 8, \"qk_nope_head_dim\": 4,"
         "\"qk_rope_head_dim\": 4, \"v_head_dim\": 4, \"intermediate_size\": 8,"
         "\"quantization_config\": {\"quant_method\": \"fp8\", \"weight_block_size\": [128]}}",
         "quantization_config.weight_block_size: expected [rows, cols]"},
        {"{\"architectures\": [\"DeepseekV3ForCausalLM\"],", "config.json:1:"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dpep_diag_init(&d);
        dpep_model_config mm;
        st = dpep_model_config_parse(cases[i].json, strlen(cases[i].json), "x/config.json", &mm, &d);
        EXPECT(st == DPEP_ERR_INVALID && dpep_diag_find(&d, cases[i].needle), "config case %zu: %s",
               i, d.n ? d.item[0].msg : "accepted");
    }
    /* rope_parameters (transformers >= 5) with rope_type is read like rope_scaling */
    const char *v5 = "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"hidden_size\": 64, \"num_hidden_layers\": 1,"
                     "\"num_attention_heads\": 2, \"vocab_size\": 10, \"kv_lora_rank\": 8, \"qk_nope_head_dim\": 4,"
                     "\"qk_rope_head_dim\": 4, \"v_head_dim\": 4, \"intermediate_size\": 8, \"q_lora_rank\": null,"
                     "\"rope_parameters\": {\"rope_type\": \"yarn\", \"factor\": 40, \"rope_theta\": 5000,"
                     "\"mscale\": 0.707, \"mscale_all_dim\": 0.707, \"original_max_position_embeddings\": 4096}}";
    dpep_model_config mv;
    dpep_diag_init(&d);
    st = dpep_model_config_parse(v5, strlen(v5), "v5/config.json", &mv, &d);
    EXPECT(st == DPEP_OK && mv.yarn && mv.yarn_factor == 40 && mv.rope_theta == 5000 &&
               mv.q_lora_rank == 0 && fabs(mv.yarn_mscale - 0.707) < 1e-12,
           "rope_parameters form");
    (void)p;
}

/* The HF transformers checkpoints of tests/reference load through dpep with
 * the exact bytes transformers used: rebuild a few layer-0/1 activations of
 * prompt 0 from dpep's loaded weights and compare with the goldens. */
static void hf_reference(const char *src, const char *model, bool q_lora)
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
    dpep_config c = layout_cfg(1, 1, 1, false, false);
    dpep_layout l;
    dpep_config_validate(&c, 0, &d);
    dpep_layout_from_config(&c, 0, &l);
    dpep_rank_info r;
    dpep_layout_rank(&l, 0, &r);
    dpep_weights w;
    /* weights on a CUDA device: loaded (tests/ckpt/test_weights_cuda.c checks
     * the bytes), or, without a GPU, refused with the device named */
    dpep_device cuda;
    if (dpep_device_get(DPEP_DEVICE_CUDA, 0, &cuda) == DPEP_OK) {
        dpep_weights wc;
        dpep_status sc = dpep_weights_load_on(ck, &m, &l, &r, &cuda, &wc, &d);
        EXPECT(sc == DPEP_OK ? wc.dev.kind == DPEP_DEVICE_CUDA
                             : dpep_diag_find(&d, "on cuda:0") != NULL,
               "%s weights on cuda: %s", model, dpep_status_string(sc));
        if (sc == DPEP_OK) dpep_weights_free(&wc);
        dpep_diag_init(&d);
    }
    dpep_device cpu;
    EXPECT(dpep_device_get(DPEP_DEVICE_CPU, -1, &cpu) == DPEP_OK, "cpu device");
    EXPECT(dpep_weights_load_on(ck, &m, &l, &r, &cpu, &w, &d) == DPEP_OK && w.dev.kind == DPEP_DEVICE_CPU,
           "%s weights", model);
    int64_t rows, cols, n_ids = 0;
    int64_t *ids = dpep_golden_i64(&gold, "p0.input_ids", &n_ids);
    int64_t id = ids && n_ids > 0 ? ids[0] : -1;
    free(ids);
    EXPECT(id >= 0 && id < m.vocab, "%s prompt 0 id %lld", model, (long long)id);
    int H = m.hidden;
    float *embed = dpep_golden_f32(&gold, "p0.act.embed", &rows, &cols);
    float *attn_norm = dpep_golden_f32(&gold, "p0.act.l0.attn_norm", &rows, &cols);
    double e1 = 0, e2 = 0, e3 = 0;
    for (int j = 0; embed && j < H; j++) e1 = fmax(e1, fabs(dpep_mat_f32(w.embed)[id * H + j] - embed[j]));
    /* RMSNorm in double, then the layer's weight */
    double ss = 0;
    for (int j = 0; j < H; j++) ss += (double)dpep_mat_f32(w.embed)[id * H + j] * dpep_mat_f32(w.embed)[id * H + j];
    double inv = 1.0 / sqrt(ss / H + m.rms_eps);
    for (int j = 0; attn_norm && j < H; j++)
        e2 = fmax(e2, fabs(dpep_mat_f32(w.embed)[id * H + j] * inv * w.layer[0].input_norm[j] - attn_norm[j]));
    /* first projection of the query (q_a, or q_proj without q_lora) */
    float *q = dpep_golden_f32(&gold, q_lora ? "p0.act.l0.q_a" : "p0.act.l0.q", &rows, &cols);
    int qn = q_lora ? m.q_lora_rank : m.n_heads * (m.qk_nope + m.qk_rope);
    const float *wq = dpep_mat_f32(q_lora ? w.layer[0].q_a : w.layer[0].q_b);
    for (int o = 0; q && attn_norm && o < qn; o++) {
        double acc = 0;
        for (int j = 0; j < H; j++) acc += (double)wq[(size_t)o * H + j] * attn_norm[j];
        e3 = fmax(e3, fabs(acc - q[o]));
    }
    /* router logits of layer 1 from its input */
    float *mn = dpep_golden_f32(&gold, "p0.act.l1.mlp_norm", &rows, &cols);
    float *rl = dpep_golden_f32(&gold, "p0.act.l1.router_logits", &rows, &cols);
    double e4 = 0;
    for (int e = 0; mn && rl && e < m.n_routed; e++) {
        double acc = 0;
        for (int j = 0; j < H; j++) acc += (double)w.layer[1].router[(size_t)e * H + j] * mn[j];
        e4 = fmax(e4, fabs(acc - rl[e]));
    }
    EXPECT(embed && e1 == 0, "%s embedding row differs by %g", model, e1);
    EXPECT(attn_norm && e2 < 1e-5, "%s input RMSNorm differs by %g", model, e2);
    EXPECT(q && e3 < 1e-4, "%s first q projection differs by %g", model, e3);
    EXPECT(mn && rl && e4 < 1e-4, "%s router logits differ by %g", model, e4);
    printf("ok   %-26s HF %s: embed %.1e, RMSNorm %.1e, q proj %.1e, router %.1e (max abs diff)\n",
           "hf_reference", model, e1, e2, e3, e4);
    free(embed);
    free(attn_norm);
    free(q);
    free(mn);
    free(rl);
    dpep_weights_free(&w);
    dpep_config_free(&c);
    dpep_ckpt_close(ck);
    dpep_golden_close(&gold);
}

int main(int argc, char **argv)
{
    if (!mkdtemp(g_tmp)) return 1;
    char v3[512], v3b[512], v3f8[512], v3s[512], v2[512], v3h[512];
    path(v3h, sizeof v3h, "v3f16", NULL);
    path(v3, sizeof v3, "v3", NULL);
    path(v3b, sizeof v3b, "v3bf16", NULL);
    path(v3f8, sizeof v3f8, "v3fp8", NULL);
    path(v3s, sizeof v3s, "v3sharded", NULL);
    path(v2, sizeof v2, "v2", NULL);
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_model_config m3, m2;
    dpep_model_preset(DPEP_ARCH_DEEPSEEK_V3, "tiny", &m3);
    dpep_model_preset(DPEP_ARCH_DEEPSEEK_V2, "tiny", &m2);
    EXPECT(dpep_model_generate(v3, &m3, DPEP_ST_F32, 7, &d) == DPEP_OK, "gen v3");
    EXPECT(dpep_model_generate(v3b, &m3, DPEP_ST_BF16, 7, &d) == DPEP_OK, "gen v3 bf16");
    EXPECT(dpep_model_generate(v3f8, &m3, DPEP_ST_F8_E4M3, 7, &d) == DPEP_OK, "gen v3 fp8");
    EXPECT(dpep_model_generate(v2, &m2, DPEP_ST_F32, 7, &d) == DPEP_OK, "gen v2");
    EXPECT(dpep_model_generate(v3h, &m3, DPEP_ST_F16, 7, &d) == DPEP_OK, "gen v3 f16");
    char *js = dpep_model_config_to_json(&m3);
    EXPECT(dpep_model_generate_json(v3s, js, DPEP_ST_F32, 7, 4u << 20, &d) == DPEP_OK, "gen sharded");
    free(js);
    dpep_diag_print(&d, stdout);

    /* Round trip of the config, and a sharded index. */
    dpep_model_config back;
    EXPECT(dpep_model_config_load(v3, &back, &d) == DPEP_OK && back.hidden == 256 &&
               back.n_routed == 16 && back.n_group == 4 && back.q_lora_rank == 96 && back.yarn &&
               back.topk_method == DPEP_TOPK_NOAUX_TC,
           "v3 config round trip");
    char idx[600];
    path(idx, sizeof idx, "v3sharded", "model.safetensors.index.json");
    EXPECT(access(idx, F_OK) == 0, "sharded checkpoint has an index");

    /* Every layout of up to 8 ranks that fits the tiny model: each rank's
     * share is the right slice, and routed-expert bytes scale as 1/ep. */
    dpep_ckpt *ck = NULL, *cks = NULL, *ckb = NULL, *ck8 = NULL, *ckh = NULL;
    EXPECT(dpep_ckpt_open(v3h, &ckh, &d) == DPEP_OK, "open f16");
    EXPECT(dpep_ckpt_open(v3, &ck, &d) == DPEP_OK, "open v3");
    EXPECT(dpep_ckpt_open(v3s, &cks, &d) == DPEP_OK, "open sharded");
    EXPECT(dpep_ckpt_open(v3b, &ckb, &d) == DPEP_OK, "open bf16");
    EXPECT(dpep_ckpt_open(v3f8, &ck8, &d) == DPEP_OK, "open fp8");
    if (!ck || !cks || !ckb || !ck8) {
        dpep_diag_print(&d, stdout);
        return 1;
    }
    int layouts[][5] = {{1, 1, 1, 0, 0}, {2, 2, 2, 1, 1}, {4, 4, 4, 1, 1}, {4, 2, 4, 1, 0},
                        {4, 4, 2, 1, 1}, {4, 1, 4, 0, 0}, {8, 8, 8, 1, 1}, {8, 4, 8, 1, 0},
                        {8, 8, 4, 1, 0}, {2, 1, 1, 0, 0}};
    for (size_t k = 0; k < sizeof layouts / sizeof layouts[0]; k++) {
        int *L = layouts[k];
        dpep_config c = layout_cfg(L[0], L[1], L[2], L[3], L[4]);
        dpep_layout l;
        char what[64];
        snprintf(what, sizeof what, "tp%d dp%d ep%d dpa%d dense1=%d", L[0], L[1], L[2], L[3], L[4]);
        dpep_config_validate(&c, 0, &d);
        EXPECT(dpep_layout_from_config(&c, 0, &l) == DPEP_OK, "%s layout", what);
        for (int rank = 0; rank < l.world; rank++) {
            dpep_rank_info r;
            dpep_layout_rank(&l, rank, &r);
            dpep_weights w;
            dpep_status st = dpep_weights_load(rank % 2 ? cks : ck, &m3, &l, &r, &w, &d);
            EXPECT(st == DPEP_OK, "%s rank %d load: %s", what, rank, dpep_status_string(st));
            if (st != DPEP_OK) {
                dpep_diag_print(&d, stdout);
                continue;
            }
            check_rank_slices(ck, &w, &l, &r, what);
            int64_t cnt[DPEP_W_NKINDS];
            dpep_model_param_counts(&m3, cnt);
            EXPECT(w.bytes[DPEP_W_ROUTED] == (size_t)cnt[DPEP_W_ROUTED] * 4 / (size_t)l.ep / (size_t)l.moe_tp,
                   "%s routed bytes %zu", what, w.bytes[DPEP_W_ROUTED]);
            double pb[DPEP_W_NKINDS];
            dpep_model_rank_bytes(&m3, &l, &r, 4.0, pb);
            for (int kk = 0; kk < DPEP_W_NKINDS; kk++)
                EXPECT(fabs(pb[kk] - (double)w.bytes[kk]) < 1.0, "%s plan bytes of %s: %.0f vs %zu",
                       what, dpep_wkind_name((dpep_wkind)kk), pb[kk], w.bytes[kk]);
            dpep_weights_free(&w);
        }
        dpep_config_free(&c);
    }
    /* Routed experts in caller memory (dpep_weights_opts.expert_mem: the
     * node-shared window of runtime.node_experts): the same bytes as the
     * arena's copy, every expert matrix inside that memory, laid out alike
     * on ranks holding as many experts, the arena smaller by them; too
     * little or misaligned memory refused with a message. F32 and BF16. */
    {
        dpep_config c = layout_cfg(2, 2, 2, true, true);
        dpep_layout l;
        dpep_config_validate(&c, 0, &d);
        dpep_layout_from_config(&c, 0, &l);
        dpep_ckpt *cx[2] = {ck, ckb};
        for (int k = 0; k < 2; k++) {
            size_t off0[64];
            int n_off = 0;
            for (int rank = 0; rank < 2; rank++) {
                dpep_rank_info r;
                dpep_layout_rank(&l, rank, &r);
                const size_t xb = dpep_weights_expert_bytes(cx[k], &m3, &l, &r, NULL);
                char *mem = aligned_alloc(DPEP_PAGE, (xb + DPEP_PAGE - 1) / DPEP_PAGE * DPEP_PAGE);
                dpep_weights ref, w;
                dpep_weights_opts o = {.expert_mem = mem, .expert_mem_bytes = xb};
                EXPECT(mem && dpep_weights_load(cx[k], &m3, &l, &r, &ref, &d) == DPEP_OK &&
                           dpep_weights_load_with(cx[k], &m3, &l, &r, NULL, &o, &w, &d) == DPEP_OK,
                       "expert_mem %s rank %d: load", k ? "bf16" : "f32", rank);
                if (!mem) continue;
                bool inside = w.expert_mem == mem && w.expert_bytes == xb, same = true, alike = true;
                int n_mats = 0;
                for (int li = 0; li < m3.n_layers; li++) {
                    const dpep_layer_w *a = &w.layer[li], *b = &ref.layer[li];
                    for (int e = 0; a->moe && e < a->n_experts; e++) {
                        const dpep_mat *ma[3] = {&a->experts[e].gate, &a->experts[e].up, &a->experts[e].down};
                        const dpep_mat *mb[3] = {&b->experts[e].gate, &b->experts[e].up, &b->experts[e].down};
                        for (int j = 0; j < 3; j++) {
                            const size_t nb = (size_t)ma[j]->rows * (size_t)ma[j]->ld * dpep_wtype_size(ma[j]->t);
                            const char *pa = ma[j]->p;
                            inside = inside && pa >= mem && pa + nb <= mem + xb;
                            same = same && ma[j]->t == mb[j]->t && ma[j]->ld == mb[j]->ld &&
                                   memcmp(pa, mb[j]->p, nb) == 0;
                            /* rank 1: the offsets rank 0's matrices had */
                            if (n_mats < 64 && rank == 0) off0[n_off++] = (size_t)(pa - mem);
                            else if (n_mats < n_off) alike = alike && off0[n_mats] == (size_t)(pa - mem);
                            n_mats++;
                        }
                    }
                }
                EXPECT(n_mats > 0 && inside, "expert_mem %s rank %d: %d expert matrices inside it",
                       k ? "bf16" : "f32", rank, n_mats);
                EXPECT(same, "expert_mem %s rank %d: the same bytes as the arena's", k ? "bf16" : "f32", rank);
                EXPECT(alike, "expert_mem %s: rank 1 lays its experts out as rank 0", k ? "bf16" : "f32");
                EXPECT(w.bytes[DPEP_W_ROUTED] == ref.bytes[DPEP_W_ROUTED] &&
                           w.arena_bytes + w.bytes[DPEP_W_ROUTED] <= ref.arena_bytes + 64 * (size_t)n_mats &&
                           w.arena_bytes < ref.arena_bytes,
                       "expert_mem %s rank %d: arena %zu B against %zu", k ? "bf16" : "f32", rank,
                       w.arena_bytes, ref.arena_bytes);
                if (rank == 0 && k == 0)
                    printf("ok   %-26s %d expert matrices, %zu B in caller memory; arena %zu -> %zu B\n",
                           "expert_mem", n_mats, xb, ref.arena_bytes, w.arena_bytes);
                dpep_weights_free(&w);
                dpep_weights_free(&ref);
                /* too little, or not page-aligned: refused, said why */
                dpep_diag dx;
                dpep_diag_init(&dx);
                dpep_weights_opts small = {.expert_mem = mem, .expert_mem_bytes = xb - 1};
                EXPECT(dpep_weights_load_with(cx[k], &m3, &l, &r, NULL, &small, &w, &dx) == DPEP_ERR_INVALID &&
                           dpep_diag_find(&dx, "the memory given for them"),
                       "expert_mem one byte short refused");
                dpep_diag_init(&dx);
                dpep_weights_opts odd = {.expert_mem = mem + 64, .expert_mem_bytes = xb};
                EXPECT(dpep_weights_load_with(cx[k], &m3, &l, &r, NULL, &odd, &w, &dx) == DPEP_ERR_INVALID &&
                           dpep_diag_find(&dx, "alignment"),
                       "expert_mem misaligned refused");
                free(mem);
            }
        }
        dpep_config_free(&c);
    }
    /* BF16 and FP8 copies against F32: same values within their precision. */
    {
        const char *names[] = {"model.layers.1.mlp.experts.3.down_proj.weight",
                               "model.layers.0.self_attn.q_b_proj.weight", "model.embed_tokens.weight",
                               "model.layers.2.self_attn.kv_a_proj_with_mqa.weight"};
        for (size_t i = 0; i < 4; i++) {
            int64_t r1, c1, r2, c2, r3, c3;
            int64_t r4, c4;
            float *a = whole(ck, names[i], &r1, &c1), *b = whole(ckb, names[i], &r2, &c2),
                  *f = whole(ck8, names[i], &r3, &c3), *h = whole(ckh, names[i], &r4, &c4);
            EXPECT(a && b && f && h, "read %s", names[i]);
            if (a && b && f && h) {
                double eb = rel_err(b, a, (size_t)(r1 * c1)), ef = rel_err(f, a, (size_t)(r1 * c1));
                double eh = rel_err(h, a, (size_t)(r1 * c1));
                /* f16: 11 significant bits (~0.03% rms) */
                EXPECT(eh < 5e-4, "%s f16 rel err %.6f", names[i], eh);
                /* bf16: 8 mantissa bits (~0.2% rms); e4m3 with block scales: 3 bits (~3% rms) */
                EXPECT(eb < 0.004, "%s bf16 rel err %.5f", names[i], eb);
                EXPECT(ef < (i == 2 ? 0.004 : 0.05), "%s fp8 rel err %.5f", names[i], ef);
                printf("ok   %-48s f16 %.6f  bf16 %.5f  fp8 %.5f (relative rms error)\n", names[i], eh,
                       eb, ef);
            }
            free(h);
            free(a);
            free(b);
            free(f);
        }
        const dpep_tensor_info *t = dpep_ckpt_find(ck8, "model.layers.1.mlp.experts.3.down_proj.weight");
        EXPECT(t && t->dtype == DPEP_ST_F8_E4M3 &&
                   dpep_ckpt_find(ck8, "model.layers.1.mlp.experts.3.down_proj.weight_scale_inv"),
               "fp8 tensor with scales");
    }
    /* V2: no q_lora, softmax greedy, no correction bias. */
    {
        dpep_ckpt *c2 = NULL;
        dpep_model_config mm;
        EXPECT(dpep_model_config_load(v2, &mm, &d) == DPEP_OK && mm.q_lora_rank == 0 &&
                   mm.scoring == DPEP_SCORE_SOFTMAX && mm.topk_method == DPEP_TOPK_GREEDY,
               "v2 config");
        EXPECT(dpep_ckpt_open(v2, &c2, &d) == DPEP_OK && dpep_ckpt_find(c2, "model.layers.0.self_attn.q_proj.weight") &&
                   !dpep_ckpt_find(c2, "model.layers.1.mlp.gate.e_score_correction_bias"),
               "v2 tensors");
        dpep_config c = layout_cfg(2, 2, 2, true, true);
        dpep_layout l;
        dpep_config_validate(&c, 0, &d);
        dpep_layout_from_config(&c, 0, &l);
        dpep_rank_info r;
        dpep_layout_rank(&l, 1, &r);
        dpep_weights w;
        EXPECT(c2 && dpep_weights_load(c2, &mm, &l, &r, &w, &d) == DPEP_OK && w.layer[0].q_a.p == NULL &&
                   w.layer[1].router_bias == NULL && w.layer[1].expert0 == 8,
               "v2 load");
        if (c2) dpep_weights_free(&w);
        dpep_config_free(&c);
        dpep_ckpt_close(c2);
    }
    dpep_ckpt_close(ck);
    dpep_ckpt_close(cks);
    dpep_ckpt_close(ckb);
    dpep_ckpt_close(ck8);
    dpep_ckpt_close(ckh);
    bad_files();
    bad_models();
    if (argc > 1) {
        hf_reference(argv[1], "deepseek_v3_tiny", true);
        hf_reference(argv[1], "deepseek_v2_tiny", false);
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    if (system(cmd) != 0) printf("note: could not remove %s\n", g_tmp);
    return dpep_test_summary();
}
