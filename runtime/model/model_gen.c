/* model_gen.c — `dpep model gen`: preset configs and a writer of real
 * Hugging Face checkpoints (config.json + safetensors, optionally sharded
 * with an index) holding deterministic random weights, installed in their
 * directory all at once (a temporary sibling renamed onto it, under a lock). */
#define _GNU_SOURCE /* renameat2 (RENAME_EXCHANGE) */
#include "dpep_model.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

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

/* The checkpoint files into `dir` (an empty directory): config.json first,
 * then the shards and, when sharded, the index. */
static dpep_status write_model(const char *dir, json_t *cj, dpep_model_config *m, dpep_st_dtype dtype,
                               uint64_t seed, uint64_t shard_bytes, dpep_diag *diag)
{
    char path[PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "wb");
    bool ok = f && json_dumpf(cj, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER) == 0;
    if (f && fclose(f) != 0) ok = false;
    if (!ok) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot write: %s", path, strerror(errno));
        return DPEP_ERR_IO;
    }
    /* Tests kill the generator here: config.json written, weights not yet. */
    dpep_fault("gen", 0);
    gen_ctx g = {m, dtype == DPEP_ST_F8_E4M3 ? DPEP_ST_BF16 : dtype, NULL, 0, 0, false};
    dpep_model_tensors(m, plan_one, &g);
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
        char name[64];
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
        snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
        json_t *idx = json_pack("{s:{s:I}, s:o}", "metadata", "total_size", (json_int_t)total,
                                "weight_map", wm);
        wm = NULL;
        if (json_dump_file(idx, path, JSON_INDENT(2) | JSON_SORT_KEYS) != 0) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot write: %s", path, strerror(errno));
            st = DPEP_ERR_IO;
        }
        json_decref(idx);
    }
    json_decref(wm);
    free(g.t);
    return st;
}

/* ---------------------------------------------------------------------- */
/* installing a model in its directory                                    */
/* ---------------------------------------------------------------------- */
/* A model appears in DIR all at once, so that config.json (what `dpep run`
 * looks for) is never there without its weights:
 *   - it is written into PARENT/.NAME.gen-HOST-PID-XXXXXX, synced, and
 *     renamed onto DIR (absent or empty); a model already in DIR is either
 *     kept (dpep run's first use) or swapped out in one renameat2
 *     RENAME_EXCHANGE (`dpep model gen`); a non-empty DIR without
 *     config.json is refused, never written into;
 *   - generators of one DIR take turns under flock(PARENT/.NAME.lock), and
 *     decide what to do only once they hold it;
 *   - whoever holds the lock first clears what killed generators of this
 *     host left: .NAME.gen-* (a partial model) and .NAME.old-* (a model a
 *     replace had set aside: put back when DIR is missing).
 * The lock file stays: removing it while another process waits on (or is
 * about to open) it would let two generators hold "the" lock at once. */
typedef struct gen_target {
    char parent[PATH_MAX];   /* absolute, symlinks resolved */
    char name[NAME_MAX + 1]; /* DIR's last component */
    char path[PATH_MAX];     /* parent/name */
    char host[64];           /* a PID in a temporary name means something on this host only */
} gen_target;

typedef enum { T_ABSENT, T_EMPTY, T_MODEL, T_OTHER, T_NOTDIR } target_state;

static bool join2(char *out, size_t n, const char *a, const char *b)
{
    int k = strcmp(a, "/") == 0 ? snprintf(out, n, "/%s", b) : snprintf(out, n, "%s/%s", a, b);
    return k >= 0 && (size_t)k < n;
}

static dpep_status too_long(const char *what, dpep_diag *diag)
{
    dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: path too long for a generated model's files", what);
    return DPEP_ERR_INVALID;
}

static dpep_status mkdir_p(const char *path, dpep_diag *diag)
{
    char p[PATH_MAX];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) return too_long(path, diag);
    for (char *q = p + 1; *q; q++)
        if (*q == '/') {
            *q = '\0';
            (void)mkdir(p, 0755); /* failures show at the last component */
            *q = '/';
        }
    struct stat sb;
    if (mkdir(p, 0755) != 0 && errno != EEXIST) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot create directory: %s", p, strerror(errno));
        return DPEP_ERR_IO;
    }
    if (stat(p, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: not a directory (expected the model's parent "
                      "directory)", p);
        return DPEP_ERR_INVALID;
    }
    return DPEP_OK;
}

/* DIR as an absolute parent (created if missing) and a name. DIR itself
 * may exist (a directory, or a link to one: its target is used) or not. */
static dpep_status target_resolve(const char *dir, gen_target *t, dpep_diag *diag)
{
    char d[PATH_MAX], full[PATH_MAX];
    size_t n = strlen(dir);
    if (n == 0) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "model directory: empty path");
        return DPEP_ERR_INVALID;
    }
    if (n >= sizeof d) return too_long(dir, diag);
    memcpy(d, dir, n + 1);
    while (n > 1 && d[n - 1] == '/') d[--n] = '\0';
    struct stat sb;
    if (lstat(d, &sb) != 0) {
        if (errno != ENOENT) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s", dir, strerror(errno));
            return errno == ENOTDIR ? DPEP_ERR_INVALID : DPEP_ERR_IO;
        }
        char *slash = strrchr(d, '/');
        if (slash && slash != d) {
            *slash = '\0';
            DPEP_TRY(mkdir_p(d, diag));
            *slash = '/';
        }
    } else if (!S_ISDIR(sb.st_mode) && (stat(d, &sb) != 0 || !S_ISDIR(sb.st_mode))) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s exists and is not a directory (expected a model "
                      "directory)", dir);
        return DPEP_ERR_INVALID;
    }
    if (stat(d, &sb) == 0) {
        if (!realpath(d, full)) goto unresolvable;
    } else {
        char *slash = strrchr(d, '/');
        const char *name = slash ? slash + 1 : d, *par = ".";
        if (slash == d) par = "/";
        else if (slash) *slash = '\0', par = d;
        char rp[PATH_MAX];
        if (!realpath(par, rp)) goto unresolvable;
        if (!join2(full, sizeof full, rp, name)) return too_long(dir, diag);
    }
    char *slash = strrchr(full, '/');
    const char *name = slash + 1;
    if (!*name || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || strlen(name) > NAME_MAX) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: not a directory a model can be generated in "
                      "(expected a path ending in a directory name)", dir);
        return DPEP_ERR_INVALID;
    }
    snprintf(t->name, sizeof t->name, "%s", name);
    snprintf(t->path, sizeof t->path, "%s", full);
    if (slash == full) snprintf(t->parent, sizeof t->parent, "/");
    else snprintf(t->parent, sizeof t->parent, "%.*s", (int)(slash - full), full);
    if (gethostname(t->host, sizeof t->host) != 0) snprintf(t->host, sizeof t->host, "localhost");
    t->host[sizeof t->host - 1] = '\0';
    for (char *c = t->host; *c; c++)
        if (!isalnum((unsigned char)*c) && *c != '.' && *c != '_') *c = '_';
    return DPEP_OK;
unresolvable:
    dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s", dir, strerror(errno));
    return DPEP_ERR_IO;
}

static target_state target_state_of(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0) return errno == ENOENT ? T_ABSENT : T_OTHER;
    if (!S_ISDIR(sb.st_mode)) return T_NOTDIR;
    char cj[PATH_MAX + 16];
    snprintf(cj, sizeof cj, "%s/config.json", path);
    if (access(cj, F_OK) == 0) return T_MODEL;
    DIR *d = opendir(path);
    if (!d) return T_OTHER;
    target_state s = T_EMPTY;
    for (struct dirent *e; (e = readdir(d)) && s == T_EMPTY;)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) s = T_OTHER;
    closedir(d);
    return s;
}

/* Takes the generation lock of t (blocking), telling the user whom it waits
 * for. The holder writes "pid N on HOST" into the file for that message. */
static dpep_status lock_take(const gen_target *t, int *fd_out, dpep_diag *diag)
{
    char lp[PATH_MAX], nm[NAME_MAX + 16];
    snprintf(nm, sizeof nm, ".%s.lock", t->name);
    if (!join2(lp, sizeof lp, t->parent, nm)) return too_long(t->path, diag);
    int fd = open(lp, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    const bool rw = fd >= 0;
    if (fd < 0 && errno == EACCES) fd = open(lp, O_RDONLY | O_CLOEXEC); /* another user's lock */
    if (fd < 0) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot open the model generation lock: %s", lp,
                      strerror(errno));
        return DPEP_ERR_IO;
    }
    int rc = flock(fd, LOCK_EX | LOCK_NB);
    if (rc != 0 && errno == EWOULDBLOCK) {
        char who[128];
        ssize_t k = pread(fd, who, sizeof who - 1, 0);
        who[k > 0 ? k : 0] = '\0';
        who[strcspn(who, "\n")] = '\0';
        DPEP_INFO("%s: another process (%s) is generating this model: waiting for it (lock %s)",
                  t->path, who[0] ? who : "unknown", lp);
        while ((rc = flock(fd, LOCK_EX)) != 0 && errno == EINTR) {}
    }
    if (rc != 0) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot lock: %s", lp, strerror(errno));
        close(fd);
        return DPEP_ERR_IO;
    }
    if (rw) {
        char who[128];
        int k = snprintf(who, sizeof who, "pid %ld on %s\n", (long)getpid(), t->host);
        if (ftruncate(fd, 0) != 0 || pwrite(fd, who, (size_t)k, 0) != k) {} /* only for messages */
    }
    *fd_out = fd;
    return DPEP_OK;
}

static bool is_weights_name(const char *s)
{
    size_t n = strlen(s), k = strlen(".safetensors");
    return strcmp(s, "model.safetensors.index.json") == 0 || (n > k && strcmp(s + n - k, ".safetensors") == 0);
}

/* Names a generation writes (the writer's and `model gen --tokenizer`'s). */
static bool is_generated_name(const char *s)
{
    return is_weights_name(s) || strcmp(s, "config.json") == 0 || strcmp(s, "tokenizer.json") == 0 ||
           strcmp(s, "tokenizer_config.json") == 0;
}

typedef enum {
    RETIRE_OURS,  /* our own temporary directory: everything in it is ours or a link */
    RETIRE_STALE, /* a dead generator's: files DIR has too (links, replaced) or that it wrote */
    RETIRE_OLD,   /* a replaced model: DIR's new model supersedes its model files; anything
                     else of the user's moves into DIR (unless DIR has that name) */
} retire_mode;

/* Empties and removes a temporary directory (never recursing: only its
 * regular files are deleted). What must not be deleted stays, and so does
 * the directory then, with a note naming it. */
static void retire(const char *tmp, const gen_target *t, retire_mode mode, dpep_diag *diag)
{
    DIR *d = opendir(tmp);
    if (d) {
        for (struct dirent *e; (e = readdir(d));) {
            const char *s = e->d_name;
            if (strcmp(s, ".") == 0 || strcmp(s, "..") == 0) continue;
            char p[PATH_MAX + NAME_MAX + 2], q[PATH_MAX + NAME_MAX + 2];
            struct stat sb, tb;
            snprintf(p, sizeof p, "%s/%s", tmp, s);
            snprintf(q, sizeof q, "%s/%s", t->path, s);
            if (lstat(p, &sb) != 0) continue;
            const bool in_dir = lstat(q, &tb) == 0;
            const bool reg = S_ISREG(sb.st_mode);
            if (mode == RETIRE_OURS) {
                if (reg) unlink(p);
            } else if (mode == RETIRE_STALE) {
                if (reg && (in_dir || is_generated_name(s))) unlink(p);
            } else if (in_dir || is_weights_name(s)) {
                if (reg) unlink(p);
            } else {
                (void)rename(p, q); /* the user's file, back into the model directory */
            }
        }
        closedir(d);
    }
    if (rmdir(tmp) != 0 && errno != ENOENT)
        dpep_diag_add(diag, DPEP_DIAG_NOTE, "kept %s (%s): it holds files dpep did not write there; "
                      "look through it and remove it", tmp, strerror(errno));
}

static bool pid_alive(long pid)
{
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

/* Clears what dead generators of t on this host left (called with the
 * lock held: no live generator is between creating and renaming one).
 * Matches exactly .NAME.gen-HOST-PID-XXXXXX and .NAME.old-HOST-PID-XXXXXX. */
static void sweep_stale(const gen_target *t, dpep_diag *diag)
{
    DIR *d = opendir(t->parent);
    if (!d) return;
    const size_t nl = strlen(t->name), hl = strlen(t->host);
    for (struct dirent *e; (e = readdir(d));) {
        const char *s = e->d_name;
        if (s[0] != '.' || strncmp(s + 1, t->name, nl) != 0 || s[1 + nl] != '.') continue;
        const char *kind = s + 2 + nl;
        const bool old = strncmp(kind, "old-", 4) == 0;
        if (!old && strncmp(kind, "gen-", 4) != 0) continue;
        const char *rest = kind + 4; /* HOST-PID-XXXXXX */
        const size_t rl = strlen(rest);
        if (rl < hl + 9 || strncmp(rest, t->host, hl) != 0 || rest[hl] != '-' ||
            rl != hl + 1 + strspn(rest + hl + 1, "0123456789") + 7 || rest[rl - 7] != '-')
            continue;
        bool suffix_ok = true;
        for (size_t i = rl - 6; i < rl; i++) suffix_ok = suffix_ok && isalnum((unsigned char)rest[i]);
        long pid = strtol(rest + hl + 1, NULL, 10);
        if (!suffix_ok || pid <= 0 || pid_alive(pid)) continue;
        char p[PATH_MAX + NAME_MAX + 2];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s", t->parent, s);
        if (lstat(p, &sb) != 0 || !S_ISDIR(sb.st_mode)) continue;
        if (old && target_state_of(t->path) == T_ABSENT && rename(p, t->path) == 0) {
            dpep_diag_add(diag, DPEP_DIAG_NOTE, "%s: put back the model that an interrupted "
                          "replace (pid %ld) had moved to %s", t->path, pid, p);
            continue;
        }
        retire(p, t, old ? RETIRE_OLD : RETIRE_STALE, diag);
        if (lstat(p, &sb) != 0)
            dpep_diag_add(diag, DPEP_DIAG_NOTE, "removed %s, left by a generator of %s that died "
                          "(pid %ld)", p, t->path, pid);
    }
    closedir(d);
}

/* fsync of every regular file in dir, then of dir: the rename that
 * publishes the model must not reach the disk before its contents. */
static dpep_status sync_dir(const char *dir, bool files, dpep_diag *diag)
{
    dpep_status st = DPEP_OK;
    DIR *d = files ? opendir(dir) : NULL;
    for (struct dirent *e; d && (e = readdir(d));) {
        char p[PATH_MAX + NAME_MAX + 2];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        if (lstat(p, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        int fd = open(p, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) != 0) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot sync: %s", p, strerror(errno));
            st = DPEP_ERR_IO;
        }
        if (fd >= 0) close(fd);
    }
    if (d) closedir(d);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || (fsync(fd) != 0 && errno != EINVAL)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot sync: %s", dir, strerror(errno));
        st = DPEP_ERR_IO;
    }
    if (fd >= 0) close(fd);
    return st;
}

/* Creates the temporary directory .NAME.gen-HOST-PID-XXXXXX (mkdir, not
 * mkdtemp, so that it gets the umask's permissions like any new directory);
 * `suffix` keeps HOST-PID-XXXXXX for the matching .old- name. */
static dpep_status make_tmp(const gen_target *t, char *tmp, size_t n, char *suffix, size_t sn,
                            dpep_diag *diag)
{
    static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t r = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ ((uint64_t)getpid() << 12);
    for (int tries = 0; tries < 100; tries++) {
        char x[7], nm[NAME_MAX + 128];
        uint64_t v = splitmix(&r);
        for (int i = 0; i < 6; i++, v /= 62) x[i] = al[v % 62];
        x[6] = '\0';
        snprintf(suffix, sn, "%s-%ld-%s", t->host, (long)getpid(), x);
        snprintf(nm, sizeof nm, ".%s.gen-%s", t->name, suffix);
        if (!join2(tmp, n, t->parent, nm)) return too_long(t->path, diag);
        if (mkdir(tmp, 0755) == 0) return DPEP_OK;
        if (errno != EEXIST) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot create the temporary model directory: %s",
                          tmp, strerror(errno));
            return DPEP_ERR_IO;
        }
    }
    dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: no free temporary directory name beside it", t->path);
    return DPEP_ERR_IO;
}

/* Links the user's files of a model directory being replaced into the new
 * one (kept across the swap, and safe from a sweep if we die mid-way). Its
 * model files (names the new model has, any weights) are not carried. What
 * cannot be linked (directories, links) moves over after the swap. */
static void carry_user_files(const gen_target *t, const char *tmp)
{
    DIR *d = opendir(t->path);
    for (struct dirent *e; d && (e = readdir(d));) {
        const char *s = e->d_name;
        char p[PATH_MAX + NAME_MAX + 2], q[PATH_MAX + NAME_MAX + 2];
        struct stat sb;
        snprintf(p, sizeof p, "%s/%s", t->path, s);
        snprintf(q, sizeof q, "%s/%s", tmp, s);
        if (is_weights_name(s) || lstat(p, &sb) != 0 || !S_ISREG(sb.st_mode) || access(q, F_OK) == 0)
            continue;
        (void)link(p, q);
    }
    if (d) closedir(d);
}

/* Puts the finished model `tmp` at t->path (state `st` under the lock). */
static dpep_status install(const gen_target *t, const char *tmp, const char *suffix,
                           target_state st, dpep_diag *diag)
{
    if (st != T_MODEL) {
        if (rename(tmp, t->path) == 0) return sync_dir(t->parent, false, diag);
        int err = errno;
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot rename the new model %s onto it: %s%s", t->path,
                      tmp, strerror(err), err == ENOTEMPTY || err == EEXIST
                      ? " (files appeared in it during generation; they are left as they are)" : "");
        return err == ENOTEMPTY || err == EEXIST ? DPEP_ERR_INVALID : DPEP_ERR_IO;
    }
    char old[PATH_MAX], nm[NAME_MAX + 128];
    snprintf(nm, sizeof nm, ".%s.old-%s", t->name, suffix);
    if (!join2(old, sizeof old, t->parent, nm)) return too_long(t->path, diag);
    carry_user_files(t, tmp);
    DPEP_TRY(sync_dir(tmp, false, diag));
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, t->path, RENAME_EXCHANGE) == 0) {
        /* tmp holds the old model now: its own name at once, so that a
         * sweep after a kill here would move its user files back too. */
        if (rename(tmp, old) != 0) snprintf(old, sizeof old, "%s", tmp);
    } else if (errno == EINVAL || errno == ENOSYS || errno == ENOTSUP) {
        /* No RENAME_EXCHANGE here (NFS, ...): set the old model aside, then
         * rename; a kill in between leaves no DIR and the next generator
         * puts the old model back (sweep_stale). */
        if (rename(t->path, old) != 0) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot move the old model aside to %s: %s",
                          t->path, old, strerror(errno));
            return DPEP_ERR_IO;
        }
        if (rename(tmp, t->path) != 0) {
            int err = errno;
            (void)rename(old, t->path);
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot rename the new model %s onto it: %s",
                          t->path, tmp, strerror(err));
            return DPEP_ERR_IO;
        }
    } else {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot swap the new model %s in: %s", t->path, tmp,
                      strerror(errno));
        return DPEP_ERR_IO;
    }
    dpep_status s = sync_dir(t->parent, false, diag);
    retire(old, t, RETIRE_OLD, diag);
    return s;
}

dpep_status dpep_model_generate_with(const char *dir, const char *config_json, dpep_st_dtype dtype,
                                     uint64_t seed, const dpep_model_gen_opts *o, dpep_diag *diag)
{
    static const dpep_model_gen_opts defaults = {0};
    if (!o) o = &defaults;
    dpep_model_config m;
    char cname[PATH_MAX + 16];
    snprintf(cname, sizeof cname, "%s/config.json", dir);
    DPEP_TRY(dpep_model_config_parse(config_json, strlen(config_json), cname, &m, diag));
    if (dtype == DPEP_ST_F8_E4M3 && !m.fp8) {
        m.fp8 = true;
        m.fp8_block[0] = m.fp8_block[1] = 128;
    }
    /* config.json as given (its extra keys kept), plus the quantization. */
    json_error_t je;
    json_t *cj = json_loads(config_json, 0, &je);
    if (!cj) return DPEP_ERR_NOMEM; /* it parsed above */
    if (m.fp8 && !json_object_get(cj, "quantization_config"))
        json_object_set_new(cj, "quantization_config",
                            json_pack("{s:s, s:s, s:s, s:[i,i]}", "quant_method", "fp8", "fmt",
                                      "e4m3", "activation_scheme", "dynamic", "weight_block_size",
                                      m.fp8_block[0], m.fp8_block[1]));
    gen_target t;
    int lock = -1;
    char tmp[PATH_MAX] = "", suffix[NAME_MAX];
    dpep_status st = target_resolve(dir, &t, diag);
    if (st == DPEP_OK) st = lock_take(&t, &lock, diag);
    if (st != DPEP_OK) goto done;
    sweep_stale(&t, diag);
    /* Decided under the lock: a config.json in DIR came by a rename, whole. */
    const target_state ts = target_state_of(t.path);
    if (ts == T_MODEL && !o->replace) {
        dpep_diag_add(diag, DPEP_DIAG_NOTE, "%s already holds a model (config.json; another "
                      "generator finished it meanwhile): using it as it is", t.path);
        goto done;
    }
    if (ts == T_OTHER || ts == T_NOTDIR) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s %s: not generating a model there (dpep writes a "
                      "model only into a new or empty directory, or over a model); choose another "
                      "directory, or empty this one", t.path, ts == T_NOTDIR ? "is not a directory"
                      : "is not empty and has no config.json");
        st = DPEP_ERR_INVALID;
        goto done;
    }
    DPEP_TRY_GOTO(make_tmp(&t, tmp, sizeof tmp, suffix, sizeof suffix, diag), st, done);
    DPEP_TRY_GOTO(write_model(tmp, cj, &m, dtype, seed, o->shard_bytes, diag), st, done);
    if (o->add_files) DPEP_TRY_GOTO(o->add_files(tmp, o->user, diag), st, done);
    DPEP_TRY_GOTO(sync_dir(tmp, true, diag), st, done);
    st = install(&t, tmp, suffix, ts, diag);
    if (st == DPEP_OK) tmp[0] = '\0';
done:
    if (tmp[0]) retire(tmp, &t, RETIRE_OURS, diag);
    if (lock >= 0) close(lock); /* releases the flock */
    json_decref(cj);
    return st;
}

dpep_status dpep_model_generate_json(const char *dir, const char *config_json, dpep_st_dtype dtype,
                                     uint64_t seed, uint64_t shard_bytes, dpep_diag *diag)
{
    dpep_model_gen_opts o = {.shard_bytes = shard_bytes};
    return dpep_model_generate_with(dir, config_json, dtype, seed, &o, diag);
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
    dpep_status st = dpep_model_generate_with(dir, text, dtype, seed, NULL, diag);
    free(text);
    return st;
}
