/* model_gen.c — `dpep model gen`: preset configs and a writer of real
 * Hugging Face checkpoints (config.json + safetensors, optionally sharded
 * with an index) holding deterministic random weights. */
#include "dpep_model.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------------- */
/* presets                                                                */
/* ---------------------------------------------------------------------- */
dpep_status dpep_model_preset(dpep_arch arch, const char *preset, dpep_model_config *out)
{
    dpep_model_config m;
    memset(&m, 0, sizeof m);
    m.arch = arch;
    bool v3 = arch == DPEP_ARCH_DEEPSEEK_V3;
    snprintf(m.arch_name, sizeof m.arch_name, "%s", v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM");
    if (strcmp(preset, "tiny") == 0) {
        /* hidden 256, 4 layers (1 dense), 16 experts in 4 groups, top-4. */
        m.hidden = 256, m.n_layers = 4, m.n_heads = 8, m.vocab = 512;
        m.q_lora_rank = v3 ? 96 : 0, m.kv_lora_rank = 64;
        m.qk_nope = 32, m.qk_rope = 16, m.v_head = 32;
        m.n_routed = 16, m.n_shared = v3 ? 1 : 2, m.topk = 4;
        m.n_group = v3 ? 4 : 1, m.topk_group = v3 ? 2 : 1;
        m.moe_inter = 128, m.inter = 512, m.first_k_dense = 1;
        m.max_pos = 4096, m.yarn_orig_max_pos = 64;
        m.dtype = DPEP_ST_F32;
    } else if (strcmp(preset, "small") == 0) {
        /* ~0.8 B parameters, 64 experts: the CPU benchmark model. */
        m.hidden = 1024, m.n_layers = 8, m.n_heads = 16, m.vocab = 32000;
        m.q_lora_rank = v3 ? 384 : 0, m.kv_lora_rank = 256;
        m.qk_nope = 64, m.qk_rope = 32, m.v_head = 64;
        m.n_routed = 64, m.n_shared = v3 ? 1 : 2, m.topk = 6;
        m.n_group = v3 ? 8 : 1, m.topk_group = v3 ? 4 : 1;
        m.moe_inter = 512, m.inter = 2816, m.first_k_dense = 1;
        m.max_pos = 16384, m.yarn_orig_max_pos = 4096;
        m.dtype = DPEP_ST_BF16;
    } else {
        return DPEP_ERR_INVALID;
    }
    m.moe_layer_freq = 1;
    m.routed_scaling_factor = v3 ? 2.5 : 1.0;
    m.norm_topk_prob = v3;
    m.scoring = v3 ? DPEP_SCORE_SIGMOID : DPEP_SCORE_SOFTMAX;
    m.topk_method = v3 ? DPEP_TOPK_NOAUX_TC : DPEP_TOPK_GREEDY;
    m.rope_theta = 10000, m.rms_eps = 1e-6;
    m.yarn = true, m.yarn_factor = 40, m.yarn_beta_fast = 32, m.yarn_beta_slow = 1;
    m.yarn_mscale = m.yarn_mscale_all_dim = v3 ? 1.0 : 0.707;
    m.rope_interleave = true;
    m.n_eos = 1, m.eos[0] = 1;
    *out = m;
    return DPEP_OK;
}

/* config.json for a dpep_model_config, in the Hub's key names. */
static json_t *config_json(const dpep_model_config *m)
{
    bool v3 = m->arch == DPEP_ARCH_DEEPSEEK_V3;
    json_t *o = json_object();
    json_object_set_new(o, "architectures", json_pack("[s]", m->arch_name));
    json_object_set_new(o, "model_type", json_string(v3 ? "deepseek_v3" : "deepseek_v2"));
#define SETI(k, v) json_object_set_new(o, k, json_integer(v))
#define SETR(k, v) json_object_set_new(o, k, json_real(v))
    SETI("vocab_size", m->vocab);
    SETI("hidden_size", m->hidden);
    SETI("intermediate_size", m->inter);
    SETI("moe_intermediate_size", m->moe_inter);
    SETI("num_hidden_layers", m->n_layers);
    SETI("num_attention_heads", m->n_heads);
    SETI("num_key_value_heads", m->n_heads);
    SETI("n_shared_experts", m->n_shared);
    SETI("n_routed_experts", m->n_routed);
    SETR("routed_scaling_factor", m->routed_scaling_factor);
    SETI("kv_lora_rank", m->kv_lora_rank);
    json_object_set_new(o, "q_lora_rank", m->q_lora_rank ? json_integer(m->q_lora_rank) : json_null());
    SETI("qk_rope_head_dim", m->qk_rope);
    SETI("v_head_dim", m->v_head);
    SETI("qk_nope_head_dim", m->qk_nope);
    json_object_set_new(o, "topk_method", json_string(m->topk_method == DPEP_TOPK_NOAUX_TC ? "noaux_tc"
                                                      : m->topk_method == DPEP_TOPK_GREEDY ? "greedy"
                                                      : "group_limited_greedy"));
    SETI("n_group", m->n_group);
    SETI("topk_group", m->topk_group);
    SETI("num_experts_per_tok", m->topk);
    SETI("moe_layer_freq", m->moe_layer_freq);
    SETI("first_k_dense_replace", m->first_k_dense);
    json_object_set_new(o, "norm_topk_prob", json_boolean(m->norm_topk_prob));
    json_object_set_new(o, "scoring_func", json_string(m->scoring == DPEP_SCORE_SIGMOID ? "sigmoid" : "softmax"));
    json_object_set_new(o, "hidden_act", json_string("silu"));
    SETI("max_position_embeddings", m->max_pos);
    SETR("rms_norm_eps", m->rms_eps);
    SETR("rope_theta", m->rope_theta);
    if (m->yarn)
        json_object_set_new(o, "rope_scaling",
                            json_pack("{s:s, s:f, s:f, s:f, s:f, s:f, s:i}", "type", "yarn", "factor",
                                      m->yarn_factor, "mscale", m->yarn_mscale, "mscale_all_dim",
                                      m->yarn_mscale_all_dim, "beta_fast", m->yarn_beta_fast,
                                      "beta_slow", m->yarn_beta_slow,
                                      "original_max_position_embeddings", m->yarn_orig_max_pos));
    else
        json_object_set_new(o, "rope_scaling", json_null());
    json_object_set_new(o, "rope_interleave", json_boolean(m->rope_interleave));
    json_object_set_new(o, "tie_word_embeddings", json_boolean(m->tie_word_embeddings));
    json_object_set_new(o, "attention_bias", json_false());
    SETI("bos_token_id", 0);
    SETI("eos_token_id", m->n_eos ? m->eos[0] : 1);
    json_object_set_new(o, "torch_dtype", json_string(m->dtype == DPEP_ST_F32    ? "float32"
                                                      : m->dtype == DPEP_ST_F16 ? "float16"
                                                                               : "bfloat16"));
    if (m->fp8)
        json_object_set_new(o, "quantization_config",
                            json_pack("{s:s, s:s, s:s, s:[i,i]}", "quant_method", "fp8", "fmt", "e4m3",
                                      "activation_scheme", "dynamic", "weight_block_size",
                                      m->fp8_block[0], m->fp8_block[1]));
#undef SETI
#undef SETR
    return o;
}

/* ---------------------------------------------------------------------- */
/* deterministic values                                                   */
/* ---------------------------------------------------------------------- */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t hash_name(uint64_t seed, const char *s)
{
    uint64_t h = 1469598103934665603ull ^ seed;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* Approximately normal(0, 1): sum of 4 uniforms, rescaled. */
static float gauss(uint64_t *s)
{
    double a = 0;
    for (int i = 0; i < 4; i++) a += (double)(splitmix(s) >> 11) * (1.0 / 9007199254740992.0);
    return (float)((a - 2.0) * 1.7320508075688772);
}

static void fill(const dpep_tensor_spec *t, uint64_t seed, float *x, int64_t n)
{
    uint64_t s = hash_name(seed, t->name);
    const char *leaf = strrchr(t->name, '.');
    bool norm = strstr(t->name, "norm") != NULL;
    if (norm) { /* randomized RMSNorm weights around 1 */
        for (int64_t i = 0; i < n; i++) x[i] = 0.8f + 0.4f * (float)((splitmix(&s) >> 11) * (1.0 / 9007199254740992.0));
    } else if (leaf && strcmp(leaf, ".e_score_correction_bias") == 0) {
        for (int64_t i = 0; i < n; i++) x[i] = 0.05f * gauss(&s);
    } else {
        float sd = strcmp(t->name, "model.embed_tokens.weight") == 0 ? 1.0f
                                                                    : 1.0f / sqrtf((float)t->shape[1]);
        for (int64_t i = 0; i < n; i++) x[i] = sd * gauss(&s);
    }
}

static uint16_t f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return 0x7fc0; /* NaN */
    u += 0x7fff + ((u >> 16) & 1);                     /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* float -> IEEE half, round to nearest even (normals, subnormals, inf). */
static uint16_t f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    float a = fabsf(f);
    if (!(a == a)) return sign | 0x7e00;
    if (a >= 65520.0f) return sign | 0x7c00;
    if (a < 6.103515625e-05f) /* subnormal: multiples of 2^-24 */
        return sign | (uint16_t)nearbyintf(a * 16777216.0f);
    int e;
    float m = frexpf(a, &e);                          /* a = m 2^e, m in [0.5, 1) */
    int q = (int)nearbyintf((m * 2.0f - 1.0f) * 1024.0f);
    int exp = e - 1 + 15;
    if (q == 1024) {
        q = 0;
        exp++;
    }
    if (exp >= 31) return sign | 0x7c00;
    return sign | (uint16_t)(exp << 10) | (uint16_t)q;
}

/* float -> OCP E4M3 (max 448, no infinities), round to nearest even. */
static uint8_t f32_to_e4m3(float f)
{
    uint8_t sign = f < 0 ? 0x80 : 0;
    float a = fabsf(f);
    if (!(a == a)) return 0x7f;
    if (a >= 464.0f) return sign | 0x7e; /* saturate at 448 */
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    int exp = e - 1 + 7;     /* biased exponent of 1.mmm form */
    if (exp <= 0) {          /* subnormal: value = k * 2^-9 */
        float k = nearbyintf(a * 512.0f);
        return sign | (uint8_t)k; /* k in 0..8; 8 rolls into the first normal */
    }
    float q = nearbyintf((m * 2.0f - 1.0f) * 8.0f); /* 3 mantissa bits */
    if (q >= 8.0f) {
        q = 0;
        exp++;
    }
    if (exp > 15 || (exp == 15 && q > 6)) return sign | 0x7e;
    return sign | (uint8_t)(exp << 3) | (uint8_t)q;
}

/* ---------------------------------------------------------------------- */
/* the writer                                                             */
/* ---------------------------------------------------------------------- */
typedef struct out_tensor {
    dpep_tensor_spec spec;  /* name may carry a _scale_inv suffix */
    dpep_st_dtype dtype;
    uint64_t bytes;
    int shard;
    bool is_scale;
} out_tensor;

typedef struct gen_ctx {
    const dpep_model_config *m;
    dpep_st_dtype dtype;
    out_tensor *t;
    int n, cap;
    bool oom;
} gen_ctx;

static void plan_one(const dpep_tensor_spec *s, void *user)
{
    gen_ctx *g = user;
    for (int pass = 0; pass < 2; pass++) {
        bool scale = pass == 1;
        if (scale && !(s->fp8 && g->m->fp8)) break;
        if (g->n == g->cap) {
            int cap = g->cap ? 2 * g->cap : 256;
            out_tensor *p = realloc(g->t, sizeof *g->t * (size_t)cap);
            if (!p) {
                g->oom = true;
                return;
            }
            g->t = p;
            g->cap = cap;
        }
        out_tensor *o = &g->t[g->n++];
        memset(o, 0, sizeof *o);
        o->spec = *s;
        int64_t n = s->shape[0] * (s->ndim == 2 ? s->shape[1] : 1);
        if (scale) {
            o->is_scale = true;
            snprintf(o->spec.name, sizeof o->spec.name, "%s_scale_inv", s->name);
            o->spec.shape[0] = (s->shape[0] + g->m->fp8_block[0] - 1) / g->m->fp8_block[0];
            o->spec.shape[1] = (s->shape[1] + g->m->fp8_block[1] - 1) / g->m->fp8_block[1];
            o->dtype = DPEP_ST_F32;
            n = o->spec.shape[0] * o->spec.shape[1];
        } else if (s->fp8 && g->m->fp8) {
            o->dtype = DPEP_ST_F8_E4M3;
        } else if (strstr(s->name, "e_score_correction_bias")) {
            o->dtype = DPEP_ST_F32; /* as DeepSeek ships it */
        } else {
            o->dtype = g->dtype;
        }
        o->bytes = (uint64_t)n * dpep_st_dtype_size(o->dtype);
    }
}

/* Values of tensor o (and, for an FP8 weight, the scales) as stored bytes. */
static void encode(const gen_ctx *g, const out_tensor *o, uint64_t seed, unsigned char *buf)
{
    const dpep_tensor_spec *s = &o->spec;
    int64_t rows = s->shape[0], cols = s->ndim == 2 ? s->shape[1] : 1;
    if (o->is_scale) {
        /* Recompute the weight to get its block maxima. */
        const out_tensor *w = o - 1;
        int64_t wr = w->spec.shape[0], wc = w->spec.shape[1];
        float *x = malloc(sizeof(float) * (size_t)(wr * wc));
        fill(&w->spec, seed, x, wr * wc);
        float *sc = (float *)buf;
        int bh = g->m->fp8_block[0], bw = g->m->fp8_block[1];
        for (int64_t br = 0; br < rows; br++)
            for (int64_t bc = 0; bc < cols; bc++) {
                float amax = 0;
                for (int64_t i = br * bh; i < wr && i < (br + 1) * bh; i++)
                    for (int64_t j = bc * bw; j < wc && j < (bc + 1) * bw; j++)
                        amax = fmaxf(amax, fabsf(x[i * wc + j]));
                sc[br * cols + bc] = amax > 0 ? amax / 448.0f : 1.0f;
            }
        free(x);
        return;
    }
    float *x = malloc(sizeof(float) * (size_t)(rows * cols));
    fill(s, seed, x, rows * cols);
    if (o->dtype == DPEP_ST_F32) {
        memcpy(buf, x, sizeof(float) * (size_t)(rows * cols));
    } else if (o->dtype == DPEP_ST_BF16 || o->dtype == DPEP_ST_F16) {
        for (int64_t i = 0; i < rows * cols; i++) {
            uint16_t h = o->dtype == DPEP_ST_BF16 ? f32_to_bf16(x[i]) : f32_to_f16(x[i]);
            memcpy(buf + 2 * i, &h, 2);
        }
    } else { /* F8_E4M3 with per-block scales = amax / 448 */
        int bh = g->m->fp8_block[0], bw = g->m->fp8_block[1];
        for (int64_t br = 0; br * bh < rows; br++)
            for (int64_t bc = 0; bc * bw < cols; bc++) {
                float amax = 0;
                for (int64_t i = br * bh; i < rows && i < (br + 1) * bh; i++)
                    for (int64_t j = bc * bw; j < cols && j < (bc + 1) * bw; j++)
                        amax = fmaxf(amax, fabsf(x[i * cols + j]));
                float scale = amax > 0 ? amax / 448.0f : 1.0f;
                for (int64_t i = br * bh; i < rows && i < (br + 1) * bh; i++)
                    for (int64_t j = bc * bw; j < cols && j < (bc + 1) * bw; j++)
                        buf[i * cols + j] = f32_to_e4m3(x[i * cols + j] / scale);
            }
    }
    free(x);
}

static dpep_status write_shard(const char *path, const gen_ctx *g, int shard, uint64_t seed,
                               dpep_diag *diag)
{
    json_t *hdr = json_object();
    json_object_set_new(hdr, "__metadata__", json_pack("{s:s}", "format", "pt"));
    uint64_t off = 0, maxb = 0;
    for (int i = 0; i < g->n; i++) {
        const out_tensor *o = &g->t[i];
        if (o->shard != shard) continue;
        json_t *shape = json_array();
        for (int d = 0; d < o->spec.ndim; d++) json_array_append_new(shape, json_integer(o->spec.shape[d]));
        json_object_set_new(hdr, o->spec.name,
                            json_pack("{s:s, s:o, s:[I,I]}", "dtype", dpep_st_dtype_name(o->dtype),
                                      "shape", shape, "data_offsets", (json_int_t)off,
                                      (json_int_t)(off + o->bytes)));
        off += o->bytes;
        if (o->bytes > maxb) maxb = o->bytes;
    }
    char *text = json_dumps(hdr, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(hdr);
    if (!text) return DPEP_ERR_NOMEM;
    size_t hl = strlen(text), padded = (hl + 7) / 8 * 8;
    FILE *f = fopen(path, "wb");
    if (!f) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot create: %s", path, strerror(errno));
        free(text);
        return DPEP_ERR_IO;
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    bool ok = fwrite(len8, 1, 8, f) == 8 && fwrite(text, 1, hl, f) == hl;
    for (size_t i = hl; i < padded && ok; i++) ok = fputc(' ', f) != EOF;
    free(text);
    unsigned char *buf = malloc(maxb ? maxb : 1);
    if (!buf) {
        fclose(f);
        return DPEP_ERR_NOMEM;
    }
    for (int i = 0; i < g->n && ok; i++) {
        const out_tensor *o = &g->t[i];
        if (o->shard != shard) continue;
        encode(g, o, seed, buf);
        ok = fwrite(buf, 1, o->bytes, f) == o->bytes;
    }
    free(buf);
    if (fclose(f) != 0) ok = false;
    if (!ok) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: write failed: %s", path, strerror(errno));
        return DPEP_ERR_IO;
    }
    return DPEP_OK;
}

dpep_status dpep_model_generate_json(const char *dir, const char *config_json, dpep_st_dtype dtype,
                                     uint64_t seed, uint64_t shard_bytes, dpep_diag *diag)
{
    dpep_model_config m;
    char cname[4200];
    snprintf(cname, sizeof cname, "%s/config.json", dir);
    DPEP_TRY(dpep_model_config_parse(config_json, strlen(config_json), cname, &m, diag));
    if (dtype == DPEP_ST_F8_E4M3 && !m.fp8) {
        m.fp8 = true;
        m.fp8_block[0] = m.fp8_block[1] = 128;
    }
    /* mkdir -p */
    char partial[4096];
    snprintf(partial, sizeof partial, "%s", dir);
    for (char *q = partial + 1; *q; q++)
        if (*q == '/') {
            *q = '\0';
            if (mkdir(partial, 0755) != 0 && errno != EEXIST) break;
            *q = '/';
        }
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot create directory: %s", dir, strerror(errno));
        return DPEP_ERR_IO;
    }
    /* config.json as given (its extra keys kept), plus the quantization. */
    json_error_t je;
    json_t *cj = json_loads(config_json, 0, &je);
    if (m.fp8 && !json_object_get(cj, "quantization_config"))
        json_object_set_new(cj, "quantization_config",
                            json_pack("{s:s, s:s, s:s, s:[i,i]}", "quant_method", "fp8", "fmt",
                                      "e4m3", "activation_scheme", "dynamic", "weight_block_size",
                                      m.fp8_block[0], m.fp8_block[1]));
    if (json_dump_file(cj, cname, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0) {
        json_decref(cj);
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot write", cname);
        return DPEP_ERR_IO;
    }
    json_decref(cj);
    gen_ctx g = {&m, dtype == DPEP_ST_F8_E4M3 ? DPEP_ST_BF16 : dtype, NULL, 0, 0, false};
    dpep_model_tensors(&m, plan_one, &g);
    if (g.oom) {
        free(g.t);
        return DPEP_ERR_NOMEM;
    }
    /* Shards of at most shard_bytes (0: one file), in tensor order. */
    int shards = 1;
    uint64_t acc = 0;
    for (int i = 0; i < g.n; i++) {
        if (shard_bytes && acc > 0 && acc + g.t[i].bytes > shard_bytes && !g.t[i].is_scale) {
            shards++;
            acc = 0;
        }
        g.t[i].shard = shards - 1;
        acc += g.t[i].bytes;
    }
    dpep_status st = DPEP_OK;
    json_t *wm = json_object();
    uint64_t total = 0;
    for (int s = 0; s < shards && st == DPEP_OK; s++) {
        char name[64], path[4300];
        if (shards == 1) snprintf(name, sizeof name, "model.safetensors");
        else snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, shards);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        st = write_shard(path, &g, s, seed, diag);
        for (int i = 0; i < g.n; i++)
            if (g.t[i].shard == s) {
                json_object_set_new(wm, g.t[i].spec.name, json_string(name));
                total += g.t[i].bytes;
            }
    }
    if (st == DPEP_OK && shards > 1) {
        char path[4300];
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        json_t *idx = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total,
                                "weight_map", wm);
        wm = NULL;
        if (json_dump_file(idx, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0) st = DPEP_ERR_IO;
        json_decref(idx);
    }
    json_decref(wm);
    free(g.t);
    return st;
}

char *dpep_model_config_to_json(const dpep_model_config *m)
{
    json_t *cj = config_json(m);
    char *text = json_dumps(cj, JSON_PRESERVE_ORDER | JSON_INDENT(2));
    json_decref(cj);
    return text;
}

dpep_status dpep_model_generate(const char *dir, const dpep_model_config *m, dpep_st_dtype dtype,
                                uint64_t seed, dpep_diag *diag)
{
    char *text = dpep_model_config_to_json(m);
    if (!text) return DPEP_ERR_NOMEM;
    dpep_status st = dpep_model_generate_json(dir, text, dtype, seed, 0, diag);
    free(text);
    return st;
}
