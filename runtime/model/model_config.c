/* model_config.c — a Hugging Face config.json of a DeepSeek-V2/V3-style
 * model into dpep_model_config, with every field checked and named.
 *
 * Every field the loader reads is checked on its own first (type, range),
 * then, only when all of them are valid, against each other (divisibility,
 * sizes). Messages read "NAME: FIELD: what is wrong (expected …)". No value
 * of any field can make dpep divide by zero, overflow an int while it sizes
 * or indexes a tensor, or loop for long over the model's tensors. */
#include "dpep_model.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* dpep sizes and indexes one tensor with int (e.g. rows * cols in attn/ and
 * moe/), so no tensor of the model may hold more elements than this. The
 * largest tensor of DeepSeek-V3 (embed_tokens, 129280 x 7168) holds 0.93 G. */
#define MAX_TENSOR_ELEMS ((int64_t)INT_MAX)
/* Routed experts, num_hidden_layers x n_routed_experts: each is 3 tensors
 * every listing of the model walks (model info, model check, and plan, many
 * times over), and tables of n_layers x n_routed (expert load) are sized
 * with int. DeepSeek-V3 has 61 x 256 = 15616, Kimi K2 61 x 384 = 23424;
 * at 2^16 plan takes seconds, at 2^20 half a minute, at 2^32 (4096 layers
 * of 2^20 experts) it never ends. */
#define MAX_ROUTED_IN_ALL_LAYERS ((int64_t)1 << 16)
/* config.json is a few KB; anything beyond this is not one. */
#define MAX_CONFIG_BYTES ((int64_t)1 << 20)

typedef struct jctx {
    const char *name;
    dpep_diag *diag;
    int errors;
} jctx;

static void bad(jctx *c, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void bad(jctx *c, const char *key, const char *fmt, ...)
{
    char what[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    dpep_diag_add(c->diag, DPEP_DIAG_ERROR, "%s: %s: %s", c->name, key, what);
    c->errors++;
}

/* A string from the file, safe to print: cut at 40 bytes, control bytes
 * shown as '?', so that a value cannot forge lines of output. */
static const char *clean(const char *t, size_t len, char *buf, size_t n)
{
    size_t k = 0;
    for (; k < len && k < 40 && k + 4 < n; k++)
        buf[k] = (unsigned char)t[k] < 0x20 || t[k] == 0x7f ? '?' : t[k];
    snprintf(buf + k, n - k, "%s", k < len ? "..." : "");
    return buf;
}

/* What a JSON value is, for messages: `the string "4"`, `1.5`, `4.0`,
 * `true`, `a list`. */
static const char *describe(const json_t *v, char *buf, size_t n)
{
    char s[48];
    switch (json_typeof(v)) {
    case JSON_STRING:
        snprintf(buf, n, "the string \"%s\"",
                 clean(json_string_value(v), json_string_length(v), s, sizeof s));
        break;
    case JSON_INTEGER: snprintf(buf, n, "%lld", (long long)json_integer_value(v)); break;
    case JSON_REAL: {
        double x = json_real_value(v);
        /* 4.0 is still not an integer: print it so that this shows */
        if (x == floor(x) && fabs(x) < 1e15) snprintf(buf, n, "%.1f", x);
        else snprintf(buf, n, "%.17g", x);
        break;
    }
    case JSON_TRUE: snprintf(buf, n, "true"); break;
    case JSON_FALSE: snprintf(buf, n, "false"); break;
    case JSON_NULL: snprintf(buf, n, "null"); break;
    case JSON_ARRAY: snprintf(buf, n, "a list"); break;
    case JSON_OBJECT: snprintf(buf, n, "an object"); break;
    default: snprintf(buf, n, "a JSON value"); break;
    }
    return buf;
}

/* ------------------------------------------------------------------------ */
/* Scalar fields: one table (name, type, where it goes, default, bounds).    */
/* ------------------------------------------------------------------------ */
typedef enum ftype { F_INT, F_NUM, F_BOOL } ftype;
enum {
    F_REQ = 1u,  /* must be given                                            */
    F_NULL = 2u, /* null is allowed and means absent (HF's None)              */
    F_MOE = 4u,  /* required when n_routed_experts > 0, else may be absent   */
    F_OPEN = 8u, /* the lower bound itself is excluded (lo < x)              */
};

typedef struct field {
    const char *key;
    ftype type;
    size_t off;         /* into dpep_model_config: int, double or bool        */
    double def, lo, hi; /* def when absent (not F_REQ); integers exact        */
    unsigned flags;
    const char *expect; /* "(expected …)" text; NULL: from type and bounds   */
} field;

#define OFF(f) offsetof(dpep_model_config, f)
#define BIG ((double)(1 << 24))

/* In the order of the messages. */
static const field g_fields[] = {
    {"hidden_size", F_INT, OFF(hidden), 0, 1, BIG, F_REQ, NULL},
    {"num_hidden_layers", F_INT, OFF(n_layers), 0, 1, 4096, F_REQ, NULL},
    {"num_attention_heads", F_INT, OFF(n_heads), 0, 1, 65536, F_REQ, NULL},
    {"vocab_size", F_INT, OFF(vocab), 0, 1, 1 << 26, F_REQ, NULL},
    {"q_lora_rank", F_INT, OFF(q_lora_rank), 0, 1, BIG, F_NULL,
     "a positive rank from 1 to 16777216, or null for a plain q_proj"},
    {"kv_lora_rank", F_INT, OFF(kv_lora_rank), 0, 1, BIG, F_REQ, NULL},
    {"qk_nope_head_dim", F_INT, OFF(qk_nope), 0, 0, 65536, F_REQ, NULL},
    {"qk_rope_head_dim", F_INT, OFF(qk_rope), 0, 2, 65536, F_REQ, NULL},
    {"v_head_dim", F_INT, OFF(v_head), 0, 1, 65536, F_REQ, NULL},
    {"n_routed_experts", F_INT, OFF(n_routed), 0, 0, 1 << 16, F_NULL,
     "an integer in [0, 65536], 0 or null for a dense model"},
    {"n_shared_experts", F_INT, OFF(n_shared), 0, 0, 1024, F_NULL, NULL},
    {"num_experts_per_tok", F_INT, OFF(topk), 0, 1, 1024, F_NULL | F_MOE, NULL},
    {"n_group", F_INT, OFF(n_group), 1, 1, 1 << 16, F_NULL, NULL},
    {"topk_group", F_INT, OFF(topk_group), 1, 1, 1 << 16, F_NULL, NULL},
    {"routed_scaling_factor", F_NUM, OFF(routed_scaling_factor), 1.0, 0, 1e6, F_OPEN, NULL},
    {"norm_topk_prob", F_BOOL, OFF(norm_topk_prob), 0, 0, 0, 0, NULL},
    {"first_k_dense_replace", F_INT, OFF(first_k_dense), 0, 0, 4096, 0, NULL},
    {"moe_layer_freq", F_INT, OFF(moe_layer_freq), 1, 1, 4096, 0, NULL},
    {"moe_intermediate_size", F_INT, OFF(moe_inter), 0, 1, BIG, F_NULL | F_MOE, NULL},
    {"intermediate_size", F_INT, OFF(inter), 0, 1, BIG, F_REQ, NULL},
    {"max_position_embeddings", F_INT, OFF(max_pos), 4096, 1, 1 << 30, 0, NULL},
    {"rms_norm_eps", F_NUM, OFF(rms_eps), 1e-6, 0, 1, F_OPEN, NULL},
    {"tie_word_embeddings", F_BOOL, OFF(tie_word_embeddings), 0, 0, 0, 0, NULL},
    {"rope_interleave", F_BOOL, OFF(rope_interleave), 1, 0, 0, 0, NULL},
};

/* The yarn fields of rope_scaling / rope_parameters. mscale and
 * mscale_all_dim: 0 or null is absent, as transformers' `if mscale and
 * mscale_all_dim` reads them (the attention factor is then
 * 0.1 ln(factor) + 1). */
static const field g_yarn_fields[] = {
    {"factor", F_NUM, OFF(yarn_factor), 0, 1, 1e6, F_REQ, NULL},
    {"mscale", F_NUM, OFF(yarn_mscale), 0, 0, 1e3, F_NULL, NULL},
    {"mscale_all_dim", F_NUM, OFF(yarn_mscale_all_dim), 0, 0, 1e3, F_NULL, NULL},
    {"beta_fast", F_NUM, OFF(yarn_beta_fast), 32, 0, 1e6, F_OPEN, NULL},
    {"beta_slow", F_NUM, OFF(yarn_beta_slow), 1, 0, 1e6, F_OPEN, NULL},
    {"original_max_position_embeddings", F_INT, OFF(yarn_orig_max_pos), 4096, 1, 1 << 30, 0, NULL},
};

static void expect_text(const field *f, double lo, char *buf, size_t n)
{
    if (f->expect) snprintf(buf, n, "%s", f->expect);
    else if (f->type == F_BOOL) snprintf(buf, n, "true or false");
    else if (f->type == F_INT) snprintf(buf, n, "an integer in [%.0f, %.0f]", lo, f->hi);
    else snprintf(buf, n, "a number in %s%g, %g]", f->flags & F_OPEN ? "(" : "[", lo, f->hi);
}

/* Reads field f of object o (key shown as prefix + key) into m. */
static void read_field(jctx *c, json_t *o, const field *f, const char *prefix, dpep_model_config *m)
{
    char key[96], exp[128], got[96];
    snprintf(key, sizeof key, "%s%s", prefix, f->key);
    bool req = f->flags & F_REQ, nullable = f->flags & F_NULL;
    double lo = f->lo;
    if (f->flags & F_MOE) { /* only MoE models need it */
        req = m->n_routed > 0;
        if (!req) lo = 0;
    }
    expect_text(f, lo, exp, sizeof exp);
    void *dst = (char *)m + f->off;
    json_t *v = json_object_get(o, f->key);
    if (!v || (json_is_null(v) && nullable && !req)) { /* absent: the default */
        if (req) bad(c, key, "missing (expected %s)", exp);
        if (f->type == F_INT) *(int *)dst = (int)f->def;
        else if (f->type == F_NUM) *(double *)dst = f->def;
        else *(bool *)dst = f->def != 0;
        return;
    }
    if (f->type == F_BOOL) {
        if (!json_is_boolean(v)) bad(c, key, "not true or false: %s (expected %s)",
                                     describe(v, got, sizeof got), exp);
        else *(bool *)dst = json_is_true(v);
        return;
    }
    if (f->type == F_INT ? !json_is_integer(v) : !json_is_number(v)) {
        bad(c, key, "not %s: %s (expected %s)", f->type == F_INT ? "an integer" : "a number",
            describe(v, got, sizeof got), exp);
        return;
    }
    /* json_int_t (long long) values compare exactly with the bounds, which
     * are integers below 2^53. */
    double x = json_number_value(v);
    bool in = f->type == F_INT ? json_integer_value(v) >= (json_int_t)lo &&
                                     json_integer_value(v) <= (json_int_t)f->hi
                               : (f->flags & F_OPEN ? x > lo : x >= lo) && x <= f->hi;
    if (!in) {
        bad(c, key, "%s is out of range (expected %s)", describe(v, got, sizeof got), exp);
        return;
    }
    if (f->type == F_INT) *(int *)dst = (int)json_integer_value(v);
    else *(double *)dst = x;
}

static void read_fields(jctx *c, json_t *o, const field *f, size_t n, const char *prefix,
                        dpep_model_config *m)
{
    for (size_t i = 0; i < n; i++) read_field(c, o, &f[i], prefix, m);
}

/* A string field: absent or null is `def`; anything but a string is named.
 * NULL when it was not a string (already reported). */
static const char *read_str(jctx *c, json_t *o, const char *key, const char *shown, const char *def,
                            const char *exp)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return def;
    if (!json_is_string(v)) {
        char got[96];
        bad(c, shown, "not a string: %s (expected %s)", describe(v, got, sizeof got), exp);
        return NULL;
    }
    return json_string_value(v);
}

/* ------------------------------------------------------------------------ */
/* The architecture: read first, since the defaults of the rest depend on it */
/* ------------------------------------------------------------------------ */
#define ARCH_EXPECTED "[\"DeepseekV3ForCausalLM\"] or [\"DeepseekV2ForCausalLM\"]"

/* From `architectures`, else `model_type`; sets m->arch and m->arch_name.
 * False (with one message) for anything else: the rest of the fields would
 * be read against the wrong defaults. */
static bool parse_arch(jctx *c, json_t *root, dpep_model_config *m)
{
    json_t *archs = json_object_get(root, "architectures");
    const char *arch = NULL;
    char got[96], s[48];
    if (archs && !json_is_null(archs)) {
        json_t *first = json_is_array(archs) ? json_array_get(archs, 0) : NULL;
        if (!json_is_string(first)) {
            bad(c, "architectures", "not a list of class names: %s%s (expected %s)",
                first ? "its first item is " : "",
                json_is_array(archs) && !first ? "an empty list"
                                               : describe(first ? first : archs, got, sizeof got),
                ARCH_EXPECTED);
            return false;
        }
        arch = json_string_value(first);
    }
    const char *mtype = read_str(c, root, "model_type", "model_type", "",
                                 "deepseek_v3 or deepseek_v2");
    if (!mtype) return false;
    bool kimi = arch && strcmp(arch, "KimiK2ForCausalLM") == 0;
    if (arch && (strcmp(arch, "DeepseekV3ForCausalLM") == 0 || kimi))
        m->arch = DPEP_ARCH_DEEPSEEK_V3;
    else if (arch && strcmp(arch, "DeepseekV2ForCausalLM") == 0)
        m->arch = DPEP_ARCH_DEEPSEEK_V2;
    else if (!arch && strcmp(mtype, "deepseek_v3") == 0)
        m->arch = DPEP_ARCH_DEEPSEEK_V3;
    else if (!arch && strcmp(mtype, "deepseek_v2") == 0)
        m->arch = DPEP_ARCH_DEEPSEEK_V2;
    else {
        const char *what = arch ? arch : mtype[0] ? mtype : "(none)";
        bad(c, "architectures", "unsupported architecture %s (expected DeepseekV3ForCausalLM "
            "or DeepseekV2ForCausalLM)", clean(what, strlen(what), s, sizeof s));
        return false;
    }
    bool v3 = m->arch == DPEP_ARCH_DEEPSEEK_V3;
    /* a model_type naming the other DeepSeek version contradicts the class
     * (other names, e.g. kimi_k2, are the class's own business) */
    if (arch && strcmp(mtype, v3 ? "deepseek_v2" : "deepseek_v3") == 0) {
        bad(c, "model_type", "%s disagrees with architectures %s (expected %s)", mtype, arch,
            v3 ? "deepseek_v3" : "deepseek_v2");
        return false;
    }
    snprintf(m->arch_name, sizeof m->arch_name, "%s",
             kimi ? "KimiK2ForCausalLM" : v3 ? "DeepseekV3ForCausalLM" : "DeepseekV2ForCausalLM");
    return true;
}

/* Scoring and top-k method (their defaults depend on the architecture). */
static void parse_router_kind(jctx *c, json_t *root, dpep_model_config *m)
{
    bool v3 = m->arch == DPEP_ARCH_DEEPSEEK_V3;
    char s[48];
    const char *sf = read_str(c, root, "scoring_func", "scoring_func", v3 ? "sigmoid" : "softmax",
                              "sigmoid or softmax");
    if (sf && strcmp(sf, "sigmoid") == 0) m->scoring = DPEP_SCORE_SIGMOID;
    else if (sf && strcmp(sf, "softmax") == 0) m->scoring = DPEP_SCORE_SOFTMAX;
    else if (sf) bad(c, "scoring_func", "unknown function %s (expected sigmoid or softmax)",
                     clean(sf, strlen(sf), s, sizeof s));
    const char *tm = read_str(c, root, "topk_method", "topk_method", v3 ? "noaux_tc" : "greedy",
                              "noaux_tc, greedy or group_limited_greedy");
    if (tm && strcmp(tm, "noaux_tc") == 0) m->topk_method = DPEP_TOPK_NOAUX_TC;
    else if (tm && strcmp(tm, "greedy") == 0) m->topk_method = DPEP_TOPK_GREEDY;
    else if (tm && strcmp(tm, "group_limited_greedy") == 0)
        m->topk_method = DPEP_TOPK_GROUP_LIMITED_GREEDY;
    else if (tm) bad(c, "topk_method", "unknown method %s (expected noaux_tc, greedy or "
                     "group_limited_greedy)", clean(tm, strlen(tm), s, sizeof s));
}

/* The yarn fields, and the two transformers keys dpep does not implement:
 * a config that sets them is refused, not misread. */
static void parse_yarn(jctx *c, json_t *rs, const char *prefix, dpep_model_config *m)
{
    char key[64], got[96];
    m->yarn = true;
    read_fields(c, rs, g_yarn_fields, sizeof g_yarn_fields / sizeof g_yarn_fields[0], prefix, m);
    json_t *af = json_object_get(rs, "attention_factor");
    if (af && !json_is_null(af)) {
        snprintf(key, sizeof key, "%sattention_factor", prefix);
        bad(c, key, "%s is not supported (expected it absent: dpep derives the attention factor "
            "from factor, mscale and mscale_all_dim)", describe(af, got, sizeof got));
    }
    json_t *tr = json_object_get(rs, "truncate");
    if (tr && !json_is_null(tr) && !json_is_true(tr)) {
        snprintf(key, sizeof key, "%struncate", prefix);
        bad(c, key, "%s is not supported (expected true or absent)", describe(tr, got, sizeof got));
    }
}

/* RoPE: rope_scaling (or rope_parameters in transformers >= 5), with `type`
 * or `rope_type` (both alike when both are given); the theta may live
 * inside rope_parameters. A top-level rope_theta wins over the nested one;
 * 10000 when neither. Returns the prefix of the nested keys, for messages. */
static const char *parse_rope(jctx *c, json_t *root, dpep_model_config *m)
{
    static const field theta = {"rope_theta", F_NUM, OFF(rope_theta), 10000, 1, 1e12, F_OPEN, NULL};
    json_t *rs = json_object_get(root, "rope_scaling");
    const char *name = "rope_scaling", *prefix = "rope_scaling.";
    if (!rs || json_is_null(rs)) {
        rs = json_object_get(root, "rope_parameters");
        name = "rope_parameters", prefix = "rope_parameters.";
    }
    char kt[64], krt[64], got[96], s1[48], s2[48];
    m->rope_theta = 10000;
    if (rs && !json_is_null(rs) && !json_is_object(rs)) {
        bad(c, name, "not an object: %s (expected an object such as {\"type\": \"yarn\", "
            "\"factor\": 40, ...}, or null)", describe(rs, got, sizeof got));
    } else if (rs && json_is_object(rs)) {
        if (json_object_get(rs, "rope_theta")) read_field(c, rs, &theta, prefix, m);
        snprintf(kt, sizeof kt, "%stype", prefix);
        snprintf(krt, sizeof krt, "%srope_type", prefix);
        int before = c->errors;
        const char *t = read_str(c, rs, "type", kt, NULL, "yarn or default");
        const char *rt = read_str(c, rs, "rope_type", krt, NULL, "yarn or default");
        const char *type = rt ? rt : t ? t : "default";
        if (c->errors > before) {
            /* named above */
        } else if (t && rt && strcmp(t, rt) != 0) {
            bad(c, krt, "%s disagrees with %s %s (expected the same rope type)",
                clean(rt, strlen(rt), s1, sizeof s1), kt, clean(t, strlen(t), s2, sizeof s2));
        } else if (strcmp(type, "yarn") == 0) {
            parse_yarn(c, rs, prefix, m);
        } else if (strcmp(type, "default") != 0) {
            bad(c, rt ? krt : kt, "rope type %s is not supported (expected yarn or default)",
                clean(type, strlen(type), s1, sizeof s1));
        }
    }
    if (json_object_get(root, "rope_theta")) read_field(c, root, &theta, "", m);
    return prefix;
}

/* FP8 block quantization: quant_method fp8, fmt e4m3, [rows, cols] blocks. */
static void parse_quant(jctx *c, json_t *root, dpep_model_config *m)
{
    json_t *q = json_object_get(root, "quantization_config");
    char got[96], s[48];
    if (!q || json_is_null(q)) return;
    if (!json_is_object(q)) {
        bad(c, "quantization_config", "not an object: %s (expected {\"quant_method\": \"fp8\", ...} "
            "or absent)", describe(q, got, sizeof got));
        return;
    }
    const char *qm = read_str(c, q, "quant_method", "quantization_config.quant_method", "", "fp8");
    if (!qm) return;
    if (strcmp(qm, "fp8") != 0) {
        if (!qm[0]) bad(c, "quantization_config.quant_method", "missing (expected fp8)");
        else bad(c, "quantization_config.quant_method", "quant_method %s is not supported "
                 "(expected fp8)", clean(qm, strlen(qm), s, sizeof s));
        return;
    }
    m->fp8 = true;
    const char *fmt = read_str(c, q, "fmt", "quantization_config.fmt", "e4m3", "e4m3");
    if (fmt && strcmp(fmt, "e4m3") != 0)
        bad(c, "quantization_config.fmt", "%s is not supported (expected e4m3)",
            clean(fmt, strlen(fmt), s, sizeof s));
    json_t *bs = json_object_get(q, "weight_block_size");
    char what[128] = "";
    if (!json_is_array(bs) || json_array_size(bs) != 2) {
        if (json_is_array(bs)) snprintf(what, sizeof what, "a list of %zu", json_array_size(bs));
        else snprintf(what, sizeof what, "%s", bs ? describe(bs, got, sizeof got) : "absent");
    }
    for (size_t i = 0; !what[0] && i < 2; i++) {
        json_t *x = json_array_get(bs, i);
        if (json_is_integer(x) && json_integer_value(x) >= 1 && json_integer_value(x) <= 65536)
            m->fp8_block[i] = (int)json_integer_value(x);
        else
            snprintf(what, sizeof what, "item %zu is %s", i, describe(x, got, sizeof got));
    }
    /* "expected [rows, cols]" first: the shape of the value is the news */
    if (what[0])
        bad(c, "quantization_config.weight_block_size", "expected [rows, cols], e.g. [128, 128]: "
            "%s (expected two integers in [1, 65536])", what);
}

/* Weight dtype: torch_dtype, else dtype; bfloat16 when neither. */
static void parse_dtype(jctx *c, json_t *root, dpep_model_config *m)
{
    const char *key = "torch_dtype";
    char s[48];
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) key = "dtype";
    const char *dt = read_str(c, root, key, key, "bfloat16", "float32, bfloat16 or float16");
    if (!dt) return;
    if (strcmp(dt, "float32") == 0) m->dtype = DPEP_ST_F32;
    else if (strcmp(dt, "bfloat16") == 0) m->dtype = DPEP_ST_BF16;
    else if (strcmp(dt, "float16") == 0) m->dtype = DPEP_ST_F16;
    else bad(c, key, "unknown dtype %s (expected float32, bfloat16 or float16)",
             clean(dt, strlen(dt), s, sizeof s));
}

/* End-of-sequence ids: an integer, a list of at most DPEP_MAX_EOS integers,
 * or null; each checked against the vocabulary in check_rope_eos. */
static void parse_eos(jctx *c, json_t *root, dpep_model_config *m)
{
    json_t *eos = json_object_get(root, "eos_token_id");
    char got[96], key[48];
    if (!eos || json_is_null(eos)) return;
    size_t n = json_is_array(eos) ? json_array_size(eos) : 1;
    if (!json_is_array(eos) && !json_is_integer(eos)) {
        bad(c, "eos_token_id", "not an integer or a list: %s (expected a token id or a list of "
            "token ids)", describe(eos, got, sizeof got));
        return;
    }
    if (n > DPEP_MAX_EOS) {
        bad(c, "eos_token_id", "a list of %zu ids (expected at most %d)", n, DPEP_MAX_EOS);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *x = json_is_array(eos) ? json_array_get(eos, i) : eos;
        if (json_is_array(eos)) snprintf(key, sizeof key, "eos_token_id[%zu]", i);
        else snprintf(key, sizeof key, "eos_token_id");
        if (!json_is_integer(x)) {
            bad(c, key, "not an integer: %s (expected a token id)", describe(x, got, sizeof got));
        } else if (json_integer_value(x) < 0 || json_integer_value(x) > INT_MAX) {
            bad(c, key, "%lld is out of range (expected a token id in [0, vocab_size))",
                (long long)json_integer_value(x));
        } else {
            m->eos[m->n_eos++] = (int)json_integer_value(x);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Rules across fields; they run only once every field is valid alone.      */
/* ------------------------------------------------------------------------ */
/* No tensor may hold more than MAX_TENSOR_ELEMS elements, nor the model more
 * than MAX_ROUTED_IN_ALL_LAYERS routed experts. The products are int64: each
 * factor is bounded by its field (at most 2^26), so none overflows. */
static void check_sizes(jctx *c, const dpep_model_config *m)
{
    const int64_t h = m->hidden, H = m->n_heads, nope = m->qk_nope, rope = m->qk_rope;
    const int64_t q_in = m->q_lora_rank ? m->q_lora_rank : h;
    const struct {
        const char *field, *formula, *tensor;
        int64_t rows, cols;
    } t[] = {
        {"vocab_size", "vocab_size x hidden_size", "embed_tokens", m->vocab, h},
        {"q_lora_rank", "q_lora_rank x hidden_size", "q_a_proj", m->q_lora_rank, h},
        {"num_attention_heads",
         m->q_lora_rank ? "num_attention_heads x (qk_nope_head_dim + qk_rope_head_dim) x q_lora_rank"
                        : "num_attention_heads x (qk_nope_head_dim + qk_rope_head_dim) x hidden_size",
         m->q_lora_rank ? "q_b_proj" : "q_proj", H * (nope + rope), q_in},
        {"kv_lora_rank", "(kv_lora_rank + qk_rope_head_dim) x hidden_size", "kv_a_proj_with_mqa",
         m->kv_lora_rank + rope, h},
        {"num_attention_heads", "num_attention_heads x (qk_nope_head_dim + v_head_dim) x kv_lora_rank",
         "kv_b_proj", H * (nope + m->v_head), m->kv_lora_rank},
        {"num_attention_heads", "hidden_size x num_attention_heads x v_head_dim", "o_proj", h,
         H * m->v_head},
        {"intermediate_size", "intermediate_size x hidden_size", "a dense MLP's gate_proj", m->inter, h},
        {"moe_intermediate_size", "moe_intermediate_size x hidden_size", "an expert's gate_proj",
         m->moe_inter, h},
        {"n_shared_experts", "n_shared_experts x moe_intermediate_size x hidden_size",
         "shared_experts.gate_proj", (int64_t)m->n_shared * m->moe_inter, h},
        {"n_routed_experts", "n_routed_experts x hidden_size", "the router (mlp.gate)", m->n_routed, h},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (t[i].rows * t[i].cols > MAX_TENSOR_ELEMS)
            bad(c, t[i].field, "%s = %lld x %lld = %lld elements in %s (expected at most %lld "
                "in one tensor)", t[i].formula, (long long)t[i].rows, (long long)t[i].cols,
                (long long)(t[i].rows * t[i].cols), t[i].tensor, (long long)MAX_TENSOR_ELEMS);
    if ((int64_t)m->n_routed * m->n_layers > MAX_ROUTED_IN_ALL_LAYERS)
        bad(c, "n_routed_experts", "%d experts x num_hidden_layers %d = %lld routed experts "
            "(expected at most %lld over all layers)", m->n_routed, m->n_layers,
            (long long)m->n_routed * m->n_layers, (long long)MAX_ROUTED_IN_ALL_LAYERS);
}

/* Head sizes, which layers are MoE, and the router: top-k and groups. */
static void check_model(jctx *c, const dpep_model_config *m)
{
    if (m->qk_rope % 2)
        bad(c, "qk_rope_head_dim", "%d is odd (expected an even rotary dimension)", m->qk_rope);
    if (m->first_k_dense > m->n_layers)
        bad(c, "first_k_dense_replace", "%d dense layers exceed num_hidden_layers %d (expected "
            "at most %d)", m->first_k_dense, m->n_layers, m->n_layers);
    if (!m->n_routed) return;
    if (m->moe_layer_freq > m->n_layers)
        bad(c, "moe_layer_freq", "%d exceeds num_hidden_layers %d (expected at most %d)",
            m->moe_layer_freq, m->n_layers, m->n_layers);
    if (m->topk > m->n_routed) {
        bad(c, "num_experts_per_tok", "%d is more than n_routed_experts %d (expected 1 to %d)",
            m->topk, m->n_routed, m->n_routed);
        return;
    }
    /* n_group >= 1 here (its range); the guard keeps the division safe even so */
    if (m->n_group < 1) return;
    if (m->n_routed % m->n_group) {
        bad(c, "n_group", "must divide n_routed_experts: %d experts do not split into %d groups "
            "(expected a divisor of %d)", m->n_routed, m->n_group, m->n_routed);
        return;
    }
    if (m->topk_group > m->n_group)
        bad(c, "topk_group", "must not exceed n_group: %d > %d (expected 1 to %d)", m->topk_group,
            m->n_group, m->n_group);
    else if (m->topk_method != DPEP_TOPK_GREEDY && m->n_group > 1 &&
             (int64_t)m->topk > (int64_t)m->topk_group * (m->n_routed / m->n_group))
        bad(c, "num_experts_per_tok", "%d exceeds the %d experts of the topk_group %d kept "
            "groups of %d (expected at most %d)", m->topk, m->topk_group * (m->n_routed / m->n_group),
            m->topk_group, m->n_routed / m->n_group, m->topk_group * (m->n_routed / m->n_group));
}

static void check_rope_eos(jctx *c, const dpep_model_config *m, const char *rs_prefix)
{
    if (m->yarn && m->yarn_beta_fast < m->yarn_beta_slow) {
        char key[64];
        snprintf(key, sizeof key, "%sbeta_fast", rs_prefix);
        bad(c, key, "%g is below beta_slow %g (expected beta_fast >= beta_slow)",
            m->yarn_beta_fast, m->yarn_beta_slow);
    }
    for (int i = 0; i < m->n_eos; i++)
        if (m->eos[i] >= m->vocab)
            bad(c, "eos_token_id", "%d is outside the vocabulary (expected a token id in [0, %d))",
                m->eos[i], m->vocab);
}

/* Backwards from text[i] (exclusive) over blanks, then `want`; the offset
 * of `want`, or -1. */
static long back_to(const char *text, size_t i, char want)
{
    while (i > 0 && (text[i - 1] == ' ' || text[i - 1] == '\t' || text[i - 1] == '\r' ||
                     text[i - 1] == '\n'))
        i--;
    return i > 0 && text[i - 1] == want ? (long)i - 1 : -1;
}

/* The key before the ':' that ends just before text[i] ("key": …), copied
 * into key; the offset of its opening quote, or -1. */
static long key_before(const char *text, size_t i, char *key, size_t n)
{
    long colon = back_to(text, i, ':');
    long close = colon < 0 ? -1 : back_to(text, (size_t)colon, '"');
    if (close < 0) return -1;
    long open = close;
    while (open > 0 && text[open - 1] != '"') open--;
    if (open == 0) return -1;
    clean(text + open, (size_t)(close - open), key, n);
    return open - 1;
}

/* The field of a number jansson cannot hold (beyond 64-bit integers or
 * doubles, e.g. "n_group": 1e400), so that its message names it: `end` is
 * the offset just past the number. One enclosing object's key is put in
 * front ("rope_scaling.factor"); the scan back skips strings, roughly: this
 * only names a field in a message. False when the number is not an
 * object's value. */
static bool overflow_key(const char *text, size_t len, int end, char *key, size_t n)
{
    size_t i = end > 0 && (size_t)end <= len ? (size_t)end : 0;
    while (i > 0 && text[i - 1] && strchr("0123456789+-.eE", text[i - 1])) i--;
    char leaf[64], parent[64];
    long at = key_before(text, i, leaf, sizeof leaf);
    if (at < 0) return false;
    int depth = 0;
    bool in_str = false;
    for (long j = at - 1; j >= 0; j--) {
        if (text[j] == '"' && (j == 0 || text[j - 1] != '\\')) in_str = !in_str;
        if (in_str) continue;
        if (text[j] == '}' || text[j] == ']') depth++;
        else if ((text[j] == '{' || text[j] == '[') && depth > 0) depth--;
        else if (text[j] == '{' || text[j] == '[') {
            if (text[j] == '{' && key_before(text, (size_t)j, parent, sizeof parent) >= 0) {
                snprintf(key, n, "%s.%s", parent, leaf);
                return true;
            }
            break;
        }
    }
    snprintf(key, n, "%s", leaf);
    return true;
}

dpep_status dpep_model_config_parse(const char *text, size_t len, const char *name,
                                    dpep_model_config *out, dpep_diag *diag)
{
    json_error_t je;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!root) {
        char key[144];
        if (json_error_code(&je) == json_error_numeric_overflow &&
            overflow_key(text, len, je.position, key, sizeof key))
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d:%d: %s: %s (expected a value within "
                          "its field's range)", name, je.line, je.column, key, je.text);
        else
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d:%d: not valid JSON: %s", name, je.line,
                          je.column, je.text);
        return DPEP_ERR_INVALID;
    }
    jctx c = {name, diag, 0};
    dpep_model_config m;
    memset(&m, 0, sizeof m);
    char got[96];
    if (!json_is_object(root)) {
        bad(&c, "(top level)", "not an object: %s (expected a JSON object of the model's fields)",
            describe(root, got, sizeof got));
        json_decref(root);
        return DPEP_ERR_INVALID;
    }
    if (!parse_arch(&c, root, &m)) {
        json_decref(root);
        return DPEP_ERR_INVALID;
    }
    /* The order of the calls is the order of the messages. */
    read_fields(&c, root, g_fields, sizeof g_fields / sizeof g_fields[0], "", &m);
    parse_router_kind(&c, root, &m);
    const char *rope_prefix = parse_rope(&c, root, &m);
    parse_quant(&c, root, &m);
    parse_dtype(&c, root, &m);
    parse_eos(&c, root, &m);
    json_decref(root);
    if (c.errors) return DPEP_ERR_INVALID;
    /* every field is valid alone: now against each other */
    check_sizes(&c, &m);
    check_model(&c, &m);
    check_rope_eos(&c, &m, rope_prefix);
    if (c.errors) return DPEP_ERR_INVALID;
    *out = m;
    return DPEP_OK;
}

dpep_status dpep_model_config_load(const char *dir, dpep_model_config *out, dpep_diag *diag)
{
    char path[4200], why[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    /* a FIFO named config.json would block open() and /dev/zero never end:
     * only a regular file of at most MAX_CONFIG_BYTES is read */
    FILE *f = dpep_fopen_regular(path, MAX_CONFIG_BYTES, why, sizeof why);
    if (!f) {
        /* "is a FIFO (named pipe) (expected a regular file)" says what it
         * expected; "cannot open: No such file or directory" does not */
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s%s", path, why,
                      strstr(why, "(expected") ? ""
                                               : " (expected a Hugging Face model directory with "
                                                 "config.json)");
        return DPEP_ERR_INVALID;
    }
    /* one byte more than the limit tells a file that grew since the check */
    char *buf = malloc((size_t)MAX_CONFIG_BYTES + 1);
    if (!buf) {
        fclose(f);
        return DPEP_ERR_NOMEM;
    }
    size_t len = fread(buf, 1, (size_t)MAX_CONFIG_BYTES + 1, f);
    bool err = ferror(f);
    fclose(f);
    if (err || len > (size_t)MAX_CONFIG_BYTES) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s (expected a model config of at most %lld "
                      "bytes)", path, err ? "read error" : "grew beyond the limit while read",
                      (long long)MAX_CONFIG_BYTES);
        free(buf);
        return DPEP_ERR_INVALID;
    }
    dpep_status st = dpep_model_config_parse(buf, len, path, out, diag);
    free(buf);
    return st;
}

bool dpep_model_layer_is_moe(const dpep_model_config *m, int l)
{
    return m->n_routed > 0 && l >= m->first_k_dense && m->moe_layer_freq > 0 &&
           l % m->moe_layer_freq == 0;
}

dpep_status dpep_model_check_layout(const dpep_model_config *m, const dpep_layout *l,
                                    const char *name, dpep_diag *diag)
{
    int before = diag->n_errors;
    if (m->n_routed && l->ep > 0 && m->n_routed % l->ep)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: n_routed_experts %d is not divisible by ep %d "
                      "(expected ep to divide the experts)", name, m->n_routed, l->ep);
    if (l->attn_tp > 0 && m->n_heads % l->attn_tp)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: num_attention_heads %d is not divisible by the "
                      "attention-TP size %d (expected attn_tp to divide the heads)", name,
                      m->n_heads, l->attn_tp);
    if (m->n_routed && l->moe_tp > 0 && m->moe_inter % l->moe_tp)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: moe_intermediate_size %d is not divisible by "
                      "moe_tp %d", name, m->moe_inter, l->moe_tp);
    if (l->dense_tp > 0 && m->inter % l->dense_tp)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: intermediate_size %d is not divisible by the "
                      "dense-FFN TP size %d", name, m->inter, l->dense_tp);
    return diag->n_errors > before ? DPEP_ERR_INVALID : DPEP_OK;
}
