/* model_config.c — a Hugging Face config.json of a DeepSeek-V2/V3-style
 * model into dpep_model_config, with every field checked and named. */
#include "dpep_model.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct jctx {
    const char *name;
    dpep_diag *diag;
    int errors;
} jctx;

static void bad(jctx *c, const char *key, const char *what)
{
    dpep_diag_add(c->diag, DPEP_DIAG_ERROR, "%s: %s: %s", c->name, key, what);
    c->errors++;
}

/* Integer field: required unless `def` >= 0 is given; bounds [lo, hi]. */
static int get_int(jctx *c, json_t *o, const char *key, long def, long lo, long hi)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (def < 0) bad(c, key, "missing (expected an integer)");
        return (int)(def < 0 ? 0 : def);
    }
    if (!json_is_integer(v)) {
        bad(c, key, "not an integer");
        return 0;
    }
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        char msg[128];
        snprintf(msg, sizeof msg, "%lld is out of range (expected %ld to %ld)", (long long)x, lo, hi);
        bad(c, key, msg);
        return 0;
    }
    return (int)x;
}

static double get_num(jctx *c, json_t *o, const char *key, double def, double lo, double hi,
                      const char *prefix)
{
    char full[96];
    snprintf(full, sizeof full, "%s%s", prefix, key);
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (isnan(def)) bad(c, full, "missing (expected a number)");
        return isnan(def) ? 0 : def;
    }
    if (!json_is_number(v)) {
        bad(c, full, "not a number");
        return 0;
    }
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) {
        char msg[128];
        snprintf(msg, sizeof msg, "%g is out of range (expected %g to %g)", x, lo, hi);
        bad(c, full, msg);
        return 0;
    }
    return x;
}

static bool get_bool(jctx *c, json_t *o, const char *key, bool def)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_boolean(v)) {
        bad(c, key, "not true or false");
        return def;
    }
    return json_is_true(v);
}

static const char *get_str(jctx *c, json_t *o, const char *key, const char *def)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_string(v)) {
        bad(c, key, "not a string");
        return def;
    }
    return json_string_value(v);
}

/* Architecture: from `architectures`, else `model_type`; sets m->arch and
 * m->arch_name. False (with one message) for anything else: the rest of
 * the fields would be read against the wrong defaults. */
static bool parse_arch(jctx *c, json_t *root, dpep_model_config *m)
{
    json_t *archs = json_object_get(root, "architectures");
    const char *arch = NULL;
    if (json_is_array(archs) && json_array_size(archs) > 0)
        arch = json_string_value(json_array_get(archs, 0));
    const char *mtype = get_str(c, root, "model_type", "");
    if (arch && (strcmp(arch, "DeepseekV3ForCausalLM") == 0 ||
                 strcmp(arch, "KimiK2ForCausalLM") == 0))
        m->arch = DPEP_ARCH_DEEPSEEK_V3;
    else if (arch && strcmp(arch, "DeepseekV2ForCausalLM") == 0)
        m->arch = DPEP_ARCH_DEEPSEEK_V2;
    else if (!arch && strcmp(mtype, "deepseek_v3") == 0)
        m->arch = DPEP_ARCH_DEEPSEEK_V3;
    else if (!arch && strcmp(mtype, "deepseek_v2") == 0)
        m->arch = DPEP_ARCH_DEEPSEEK_V2;
    else {
        char msg[200];
        snprintf(msg, sizeof msg, "unsupported architecture %s (expected DeepseekV3ForCausalLM "
                 "or DeepseekV2ForCausalLM)", arch ? arch : mtype[0] ? mtype : "(none)");
        bad(c, "architectures", msg);
        return false;
    }
    snprintf(m->arch_name, sizeof m->arch_name, "%s",
             arch ? arch : m->arch == DPEP_ARCH_DEEPSEEK_V3 ? "DeepseekV3ForCausalLM"
                                                            : "DeepseekV2ForCausalLM");
    return true;
}

/* Model dimensions and the attention (MLA) head sizes. */
static void parse_dims(jctx *c, json_t *root, dpep_model_config *m)
{
    const long BIG = 1L << 24;
    m->hidden = get_int(c, root, "hidden_size", -1, 1, BIG);
    m->n_layers = get_int(c, root, "num_hidden_layers", -1, 1, 4096);
    m->n_heads = get_int(c, root, "num_attention_heads", -1, 1, 65536);
    m->vocab = get_int(c, root, "vocab_size", -1, 1, 1L << 26);
    m->q_lora_rank = get_int(c, root, "q_lora_rank", 0, 0, BIG); /* null: q_proj */
    m->kv_lora_rank = get_int(c, root, "kv_lora_rank", -1, 1, BIG);
    m->qk_nope = get_int(c, root, "qk_nope_head_dim", -1, 0, 65536);
    m->qk_rope = get_int(c, root, "qk_rope_head_dim", -1, 2, 65536);
    m->v_head = get_int(c, root, "v_head_dim", -1, 1, 65536);
    if (m->qk_rope % 2) bad(c, "qk_rope_head_dim", "odd (expected an even rotary dimension)");
}

/* Expert routing: counts, top-k and groups, scoring and top-k method (the
 * defaults of the latter two depend on the architecture). */
static void parse_routing(jctx *c, json_t *root, dpep_model_config *m)
{
    bool v3 = m->arch == DPEP_ARCH_DEEPSEEK_V3;
    m->n_routed = get_int(c, root, "n_routed_experts", 0, 0, 1L << 20);
    m->n_shared = get_int(c, root, "n_shared_experts", 0, 0, 1024);
    m->topk = get_int(c, root, "num_experts_per_tok", m->n_routed ? -1 : 0, 0, 1024);
    m->n_group = get_int(c, root, "n_group", 1, 1, 1L << 20);
    m->topk_group = get_int(c, root, "topk_group", 1, 1, 1L << 20);
    m->routed_scaling_factor = get_num(c, root, "routed_scaling_factor", 1.0, 0, 1e6, "");
    m->norm_topk_prob = get_bool(c, root, "norm_topk_prob", false);
    const char *sf = get_str(c, root, "scoring_func", v3 ? "sigmoid" : "softmax");
    if (strcmp(sf, "sigmoid") == 0) m->scoring = DPEP_SCORE_SIGMOID;
    else if (strcmp(sf, "softmax") == 0) m->scoring = DPEP_SCORE_SOFTMAX;
    else bad(c, "scoring_func", "unknown (expected sigmoid or softmax)");
    const char *tm = get_str(c, root, "topk_method", v3 ? "noaux_tc" : "greedy");
    if (strcmp(tm, "noaux_tc") == 0) m->topk_method = DPEP_TOPK_NOAUX_TC;
    else if (strcmp(tm, "greedy") == 0) m->topk_method = DPEP_TOPK_GREEDY;
    else if (strcmp(tm, "group_limited_greedy") == 0)
        m->topk_method = DPEP_TOPK_GROUP_LIMITED_GREEDY;
    else bad(c, "topk_method", "unknown (expected noaux_tc, greedy or group_limited_greedy)");
}

/* Which layers are MoE, FFN sizes, positions, norm and embedding flags. */
static void parse_layers(jctx *c, json_t *root, dpep_model_config *m)
{
    const long BIG = 1L << 24;
    m->first_k_dense = get_int(c, root, "first_k_dense_replace", 0, 0, 4096);
    m->moe_layer_freq = get_int(c, root, "moe_layer_freq", 1, 1, 4096);
    m->moe_inter = get_int(c, root, "moe_intermediate_size", m->n_routed ? -1 : 0, 0, BIG);
    m->inter = get_int(c, root, "intermediate_size", -1, 1, BIG);
    m->max_pos = get_int(c, root, "max_position_embeddings", 4096, 1, 1L << 30);
    m->rms_eps = get_num(c, root, "rms_norm_eps", 1e-6, 0, 1, "");
    m->tie_word_embeddings = get_bool(c, root, "tie_word_embeddings", false);
    m->rope_interleave = get_bool(c, root, "rope_interleave", true);
}

/* Cross-field rules of the router, once every field is read. */
static void check_routing(jctx *c, const dpep_model_config *m)
{
    if (!m->n_routed) return;
    if (m->topk < 1 || m->topk > m->n_routed)
        bad(c, "num_experts_per_tok", "must be from 1 to n_routed_experts");
    /* n_group is 0 when it was missing or bad (already reported) */
    if (m->n_group < 1) return;
    if (m->n_routed % m->n_group)
        bad(c, "n_group", "must divide n_routed_experts");
    if (m->topk_group > m->n_group) bad(c, "topk_group", "must not exceed n_group");
    else if (m->n_group > 1 && m->topk > m->topk_group * (m->n_routed / m->n_group))
        bad(c, "num_experts_per_tok", "exceeds the experts of the topk_group kept groups");
}

/* RoPE: rope_scaling (or rope_parameters in transformers >= 5), with
 * `type` or `rope_type`; the theta may live inside rope_parameters. A
 * top-level rope_theta wins over the nested one; 10000 when neither. */
static void parse_rope(jctx *c, json_t *root, dpep_model_config *m)
{
    json_t *rs = json_object_get(root, "rope_scaling");
    const char *rs_key = "rope_scaling.";
    if (!rs || json_is_null(rs)) {
        rs = json_object_get(root, "rope_parameters");
        rs_key = "rope_parameters.";
    }
    double theta_in = NAN;
    if (rs && json_is_object(rs)) {
        json_t *t = json_object_get(rs, "rope_type");
        if (!t) t = json_object_get(rs, "type");
        const char *type = json_is_string(t) ? json_string_value(t) : "default";
        if (json_object_get(rs, "rope_theta"))
            theta_in = get_num(c, rs, "rope_theta", NAN, 1, 1e12, rs_key);
        if (strcmp(type, "yarn") == 0) {
            m->yarn = true;
            m->yarn_factor = get_num(c, rs, "factor", NAN, 1, 1e6, rs_key);
            /* 0 = absent: transformers then uses 0.1 ln(factor) + 1 as the cos/sin
             * attention factor instead of the mscale ratio */
            m->yarn_mscale = get_num(c, rs, "mscale", 0.0, 0, 1e3, rs_key);
            m->yarn_mscale_all_dim = get_num(c, rs, "mscale_all_dim", 0.0, 0, 1e3, rs_key);
            m->yarn_beta_fast = get_num(c, rs, "beta_fast", 32, 0, 1e6, rs_key);
            m->yarn_beta_slow = get_num(c, rs, "beta_slow", 1, 0, 1e6, rs_key);
            m->yarn_orig_max_pos = (int)get_num(c, rs, "original_max_position_embeddings", 4096,
                                                1, 1e9, rs_key);
        } else if (strcmp(type, "default") != 0) {
            char msg[160];
            snprintf(msg, sizeof msg, "rope type %s is not supported (expected yarn or default)",
                     type);
            bad(c, rs_key, msg);
        }
    } else if (rs && !json_is_null(rs)) {
        bad(c, "rope_scaling", "not an object");
    }
    m->rope_theta = json_object_get(root, "rope_theta")
                        ? get_num(c, root, "rope_theta", NAN, 1, 1e12, "")
                    : !isnan(theta_in) ? theta_in
                                       : 10000.0;
}

/* FP8 block quantization: quant_method fp8, fmt e4m3, [rows, cols] blocks. */
static void parse_quant(jctx *c, json_t *root, dpep_model_config *m)
{
    json_t *q = json_object_get(root, "quantization_config");
    if (!q || !json_is_object(q)) return;
    const char *qm = get_str(c, q, "quant_method", "");
    if (strcmp(qm, "fp8") != 0) {
        char msg[160];
        snprintf(msg, sizeof msg, "quant_method %s is not supported (expected fp8)", qm);
        bad(c, "quantization_config.quant_method", msg);
        return;
    }
    m->fp8 = true;
    const char *fmt = get_str(c, q, "fmt", "e4m3");
    if (strcmp(fmt, "e4m3") != 0) bad(c, "quantization_config.fmt", "expected e4m3");
    json_t *bs = json_object_get(q, "weight_block_size");
    if (!json_is_array(bs) || json_array_size(bs) != 2 ||
        !json_is_integer(json_array_get(bs, 0)) || !json_is_integer(json_array_get(bs, 1)) ||
        json_integer_value(json_array_get(bs, 0)) < 1 ||
        json_integer_value(json_array_get(bs, 1)) < 1 ||
        json_integer_value(json_array_get(bs, 0)) > 65536 ||
        json_integer_value(json_array_get(bs, 1)) > 65536) {
        bad(c, "quantization_config.weight_block_size",
            "expected [rows, cols], e.g. [128, 128]");
    } else {
        m->fp8_block[0] = (int)json_integer_value(json_array_get(bs, 0));
        m->fp8_block[1] = (int)json_integer_value(json_array_get(bs, 1));
    }
}

/* Weight dtype (torch_dtype, else dtype; bfloat16 when neither) and the end-of-
 * sequence ids (an integer or a list; non-integers in a list are skipped). */
static void parse_dtype_eos(jctx *c, json_t *root, dpep_model_config *m)
{
    const char *dt = get_str(c, root, "torch_dtype", NULL);
    if (!dt) dt = get_str(c, root, "dtype", "bfloat16");
    if (strcmp(dt, "float32") == 0) m->dtype = DPEP_ST_F32;
    else if (strcmp(dt, "bfloat16") == 0) m->dtype = DPEP_ST_BF16;
    else if (strcmp(dt, "float16") == 0) m->dtype = DPEP_ST_F16;
    else bad(c, "torch_dtype", "unknown (expected float32, bfloat16 or float16)");

    json_t *eos = json_object_get(root, "eos_token_id");
    if (json_is_integer(eos)) {
        m->eos[m->n_eos++] = (int)json_integer_value(eos);
    } else if (json_is_array(eos)) {
        for (size_t i = 0; i < json_array_size(eos) && m->n_eos < DPEP_MAX_EOS; i++)
            if (json_is_integer(json_array_get(eos, i)))
                m->eos[m->n_eos++] = (int)json_integer_value(json_array_get(eos, i));
    }
    for (int i = 0; i < m->n_eos; i++)
        if (m->eos[i] < 0 || m->eos[i] >= m->vocab)
            bad(c, "eos_token_id", "outside the vocabulary");
}

dpep_status dpep_model_config_parse(const char *text, size_t len, const char *name,
                                    dpep_model_config *out, dpep_diag *diag)
{
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d:%d: not valid JSON: %s", name, je.line,
                      je.column, je.text);
        return DPEP_ERR_INVALID;
    }
    jctx c = {name, diag, 0};
    dpep_model_config m;
    memset(&m, 0, sizeof m);
    if (!json_is_object(root)) {
        bad(&c, "(top level)", "not a JSON object");
        json_decref(root);
        return DPEP_ERR_INVALID;
    }
    if (!parse_arch(&c, root, &m)) {
        json_decref(root);
        return DPEP_ERR_INVALID;
    }
    /* The order of the calls is the order of the messages. */
    parse_dims(&c, root, &m);
    parse_routing(&c, root, &m);
    parse_layers(&c, root, &m);
    check_routing(&c, &m);
    parse_rope(&c, root, &m);
    parse_quant(&c, root, &m);
    parse_dtype_eos(&c, root, &m);
    json_decref(root);
    if (c.errors) return DPEP_ERR_INVALID;
    *out = m;
    return DPEP_OK;
}

dpep_status dpep_model_config_load(const char *dir, dpep_model_config *out, dpep_diag *diag)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot open (expected a Hugging Face model "
                      "directory with config.json)", path);
        return DPEP_ERR_INVALID;
    }
    char *buf = malloc(1 << 20);
    size_t len = buf ? fread(buf, 1, 1 << 20, f) : 0;
    bool big = len == (1 << 20);
    fclose(f);
    if (!buf) return DPEP_ERR_NOMEM;
    if (big) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: larger than 1 MiB (expected a model config)", path);
        free(buf);
        return DPEP_ERR_INVALID;
    }
    dpep_status st = dpep_model_config_parse(buf, len, path, out, diag);
    free(buf);
    return st;
}

bool dpep_model_layer_is_moe(const dpep_model_config *m, int l)
{
    return m->n_routed > 0 && l >= m->first_k_dense && l % m->moe_layer_freq == 0;
}

dpep_status dpep_model_check_layout(const dpep_model_config *m, const dpep_layout *l,
                                    const char *name, dpep_diag *diag)
{
    int before = diag->n_errors;
    if (m->n_routed && m->n_routed % l->ep)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: n_routed_experts %d is not divisible by ep %d "
                      "(expected ep to divide the experts)", name, m->n_routed, l->ep);
    if (m->n_heads % l->attn_tp)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: num_attention_heads %d is not divisible by the "
                      "attention-TP size %d (expected attn_tp to divide the heads)", name,
                      m->n_heads, l->attn_tp);
    if (m->n_routed && m->moe_inter % l->moe_tp)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: moe_intermediate_size %d is not divisible by "
                      "moe_tp %d", name, m->moe_inter, l->moe_tp);
    if (m->inter % l->dense_tp)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: intermediate_size %d is not divisible by the "
                      "dense-FFN TP size %d", name, m->inter, l->dense_tp);
    return diag->n_errors > before ? DPEP_ERR_INVALID : DPEP_OK;
}
