/* test_model_config_bad.c — config.json, one bad value at a time: every
 * field dpep reads, set on a valid config to zero, negative, the wrong JSON
 * type, fractional, huge or inconsistent with another field, must fail with
 * DPEP_ERR_INVALID and a message "x/config.json: FIELD: … (expected …)"
 * naming that field, and leave *out untouched; the valid configs (the tiny
 * V2/V3 shapes, configs/models, tests/reference) still load; a config.json
 * that is a FIFO, a device or a directory is refused without blocking.
 *   test_model_config_bad SOURCE_DIR */
#include "dpep_model.h"
#include "../dpep_test.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A DeepSeek-V3 shape (dpep's tiny preset) and a V2-Lite shape (no q_lora,
 * one group, softmax, greedy). */
static const char *BASE_V3 =
    "{\"architectures\": [\"DeepseekV3ForCausalLM\"], \"model_type\": \"deepseek_v3\","
    " \"vocab_size\": 512, \"hidden_size\": 256, \"intermediate_size\": 512,"
    " \"moe_intermediate_size\": 128, \"num_hidden_layers\": 4, \"num_attention_heads\": 8,"
    " \"num_key_value_heads\": 8, \"n_shared_experts\": 1, \"n_routed_experts\": 16,"
    " \"routed_scaling_factor\": 2.5, \"kv_lora_rank\": 64, \"q_lora_rank\": 96,"
    " \"qk_rope_head_dim\": 16, \"v_head_dim\": 32, \"qk_nope_head_dim\": 32,"
    " \"topk_method\": \"noaux_tc\", \"n_group\": 4, \"topk_group\": 2, \"num_experts_per_tok\": 4,"
    " \"moe_layer_freq\": 1, \"first_k_dense_replace\": 1, \"norm_topk_prob\": true,"
    " \"scoring_func\": \"sigmoid\", \"hidden_act\": \"silu\", \"max_position_embeddings\": 4096,"
    " \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0,"
    " \"rope_scaling\": {\"type\": \"yarn\", \"factor\": 40.0, \"mscale\": 1.0, \"mscale_all_dim\": 1.0,"
    "   \"beta_fast\": 32.0, \"beta_slow\": 1.0, \"original_max_position_embeddings\": 64},"
    " \"rope_interleave\": true, \"tie_word_embeddings\": false, \"bos_token_id\": 0,"
    " \"eos_token_id\": 1, \"torch_dtype\": \"float32\","
    " \"quantization_config\": {\"quant_method\": \"fp8\", \"fmt\": \"e4m3\","
    "   \"activation_scheme\": \"dynamic\", \"weight_block_size\": [128, 128]}}";

static const char *BASE_V2 =
    "{\"architectures\": [\"DeepseekV2ForCausalLM\"], \"model_type\": \"deepseek_v2\","
    " \"hidden_size\": 2048, \"intermediate_size\": 10944, \"moe_intermediate_size\": 1408,"
    " \"num_hidden_layers\": 27, \"num_attention_heads\": 16, \"num_key_value_heads\": 16,"
    " \"q_lora_rank\": null, \"kv_lora_rank\": 512, \"qk_nope_head_dim\": 128,"
    " \"qk_rope_head_dim\": 64, \"v_head_dim\": 128, \"n_routed_experts\": 64,"
    " \"n_shared_experts\": 2, \"num_experts_per_tok\": 6, \"n_group\": 1, \"topk_group\": 1,"
    " \"routed_scaling_factor\": 1.0, \"norm_topk_prob\": false, \"scoring_func\": \"softmax\","
    " \"topk_method\": \"greedy\", \"first_k_dense_replace\": 1, \"moe_layer_freq\": 1,"
    " \"vocab_size\": 102400, \"max_position_embeddings\": 163840, \"rms_norm_eps\": 1e-06,"
    " \"rope_theta\": 10000, \"rope_scaling\": null,"
    " \"rope_parameters\": {\"rope_type\": \"yarn\", \"factor\": 40, \"mscale\": 0.707,"
    "   \"mscale_all_dim\": 0.707, \"beta_fast\": 32, \"beta_slow\": 1,"
    "   \"original_max_position_embeddings\": 4096},"
    " \"tie_word_embeddings\": false, \"bos_token_id\": 100000, \"eos_token_id\": 100001,"
    " \"dtype\": \"bfloat16\"}";

#define DEL "<delete>"

/* Sets PATH ("key" or "obj.key") of a copy of base to the JSON text value
 * (DEL: removes it); returns the config as malloc'd text. A value jansson
 * cannot hold (1e400) is spliced in as text. */
static char *with(const char *base, const char *path, const char *value)
{
    json_error_t je;
    json_t *root = json_loads(base, 0, &je);
    if (!root) {
        printf("FAIL base config: %s\n", je.text);
        exit(1);
    }
    char key[128];
    snprintf(key, sizeof key, "%s", path);
    json_t *obj = root;
    char *dot = strchr(key, '.');
    if (dot) {
        *dot = 0;
        obj = json_object_get(root, key);
        if (!json_is_object(obj)) {
            json_object_set_new(root, key, json_object());
            obj = json_object_get(root, key);
        }
    }
    const char *leaf = dot ? dot + 1 : key;
    json_t *v = strcmp(value, DEL) ? json_loads(value, JSON_DECODE_ANY, &je) : NULL;
    char *text;
    if (strcmp(value, DEL) == 0) {
        json_object_del(obj, leaf);
        text = json_dumps(root, JSON_INDENT(1));
    } else if (v) {
        json_object_set_new(obj, leaf, v);
        text = json_dumps(root, JSON_INDENT(1));
    } else { /* a number jansson rejects: put a marker, then the text in its place */
        json_object_set_new(obj, leaf, json_string("@@VALUE@@"));
        char *t = json_dumps(root, JSON_INDENT(1));
        char *at = strstr(t, "\"@@VALUE@@\"");
        text = malloc(strlen(t) + strlen(value) + 1);
        memcpy(text, t, (size_t)(at - t));
        strcpy(text + (at - t), value);
        strcat(text, at + strlen("\"@@VALUE@@\""));
        free(t);
    }
    json_decref(root);
    return text;
}

/* One bad value: rejected, the field named with what was expected, *out as it was. */
static void expect_bad(const char *base, const char *path, const char *value, const char *field)
{
    char *text = with(base, path, value);
    dpep_model_config m;
    memset(&m, 0xAB, sizeof m);
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_status st = dpep_model_config_parse(text, strlen(text), "x/config.json", &m, &d);
    char want[160], want_json[160];
    snprintf(want, sizeof want, "x/config.json: %s: ", field ? field : path);
    snprintf(want_json, sizeof want_json, ": %s: ", field ? field : path); /* FILE:LINE:COL: key: */
    bool named = false, untouched = true;
    for (int i = 0; i < d.n; i++) {
        const char *msg = d.item[i].msg;
        if ((strncmp(msg, want, strlen(want)) == 0 ||
             (strncmp(msg, "x/config.json:", 14) == 0 && strstr(msg, want_json))) &&
            strstr(msg, "(expected"))
            named = true;
    }
    for (size_t i = 0; i < sizeof m; i++) untouched &= ((unsigned char *)&m)[i] == 0xAB;
    EXPECT(st == DPEP_ERR_INVALID && named && untouched, "%s = %s: status %d, %s%s", path, value,
           (int)st, d.n ? d.item[0].msg : "accepted", untouched ? "" : " (out written)");
    free(text);
}

static bool loads(const char *text, const char *what, dpep_model_config *m)
{
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_status st = dpep_model_config_parse(text, strlen(text), "ok/config.json", m, &d);
    EXPECT(st == DPEP_OK, "%s: should load: %s", what, d.n ? d.item[0].msg : "(no message)");
    return st == DPEP_OK;
}

static void expect_ok(const char *base, const char *path, const char *value)
{
    char *text = with(base, path, value);
    char what[256];
    snprintf(what, sizeof what, "%s = %s", path, value);
    dpep_model_config m;
    loads(text, what, &m);
    free(text);
}

/* ------------------------------------------------------------------------ */
/* Generated bad values, by kind of field.                                   */
/* ------------------------------------------------------------------------ */
typedef struct ispec {
    const char *base, *path;
    long long lo, hi;
    bool nullable; /* null means absent there */
} ispec;

static void bad_ints(void)
{
    const ispec f[] = {
        {BASE_V3, "hidden_size", 1, 1 << 24, false},
        {BASE_V3, "num_hidden_layers", 1, 4096, false},
        {BASE_V3, "num_attention_heads", 1, 65536, false},
        {BASE_V3, "vocab_size", 1, 1 << 26, false},
        {BASE_V3, "q_lora_rank", 1, 1 << 24, true},
        {BASE_V3, "kv_lora_rank", 1, 1 << 24, false},
        {BASE_V3, "qk_nope_head_dim", 0, 65536, false},
        {BASE_V3, "qk_rope_head_dim", 2, 65536, false},
        {BASE_V3, "v_head_dim", 1, 65536, false},
        {BASE_V3, "n_routed_experts", 0, 1 << 16, true},
        {BASE_V3, "n_shared_experts", 0, 1024, true},
        {BASE_V3, "num_experts_per_tok", 1, 1024, false},
        {BASE_V3, "n_group", 1, 1 << 16, true},
        {BASE_V3, "topk_group", 1, 1 << 16, true},
        {BASE_V3, "first_k_dense_replace", 0, 4096, false},
        {BASE_V3, "moe_layer_freq", 1, 4096, false},
        {BASE_V3, "moe_intermediate_size", 1, 1 << 24, false},
        {BASE_V3, "intermediate_size", 1, 1 << 24, false},
        {BASE_V3, "max_position_embeddings", 1, 1 << 30, false},
        {BASE_V3, "rope_scaling.original_max_position_embeddings", 1, 1 << 30, false},
        {BASE_V2, "rope_parameters.original_max_position_embeddings", 1, 1 << 30, false},
    };
    const char *wrong_type[] = {"\"4\"", "\"\"", "1.5", "4.0", "-0.5", "1e3", "true", "false",
                                "[4]", "[]", "{}", "{\"n\": 4}"};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        char v[64];
        snprintf(v, sizeof v, "%lld", f[i].lo - 1); /* zero or negative */
        expect_bad(f[i].base, f[i].path, v, NULL);
        snprintf(v, sizeof v, "%lld", f[i].hi + 1);
        expect_bad(f[i].base, f[i].path, v, NULL);
        expect_bad(f[i].base, f[i].path, "-1", NULL);
        expect_bad(f[i].base, f[i].path, "2147483648", NULL);             /* beyond int */
        expect_bad(f[i].base, f[i].path, "-9223372036854775808", NULL);   /* int64 min */
        expect_bad(f[i].base, f[i].path, "9223372036854775807", NULL);    /* int64 max */
        expect_bad(f[i].base, f[i].path, "99999999999999999999999", NULL); /* beyond int64 */
        expect_bad(f[i].base, f[i].path, "1e400", NULL);                  /* beyond double */
        for (size_t k = 0; k < sizeof wrong_type / sizeof wrong_type[0]; k++)
            expect_bad(f[i].base, f[i].path, wrong_type[k], NULL);
        if (!f[i].nullable) expect_bad(f[i].base, f[i].path, "null", NULL);
    }
    /* required ones, absent */
    const char *req[] = {"hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size",
                         "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                         "intermediate_size", "num_experts_per_tok", "moe_intermediate_size",
                         "rope_scaling.factor"};
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++) expect_bad(BASE_V3, req[i], DEL, NULL);
    expect_bad(BASE_V2, "rope_parameters.factor", DEL, NULL);
}

typedef struct nspec {
    const char *base, *path;
    const char *too_low, *too_high; /* NULL: none */
    bool nullable;
} nspec;

static void bad_numbers(void)
{
    const nspec f[] = {
        {BASE_V3, "routed_scaling_factor", "0", "1e7", false},
        {BASE_V3, "rms_norm_eps", "0", "1.5", false},
        {BASE_V3, "rope_theta", "1", "1e13", false},
        {BASE_V3, "rope_scaling.factor", "0.5", "1e7", false},
        {BASE_V3, "rope_scaling.mscale", "-0.1", "1001", true},
        {BASE_V3, "rope_scaling.mscale_all_dim", "-0.1", "1001", true},
        {BASE_V3, "rope_scaling.beta_fast", "0", "1e7", false},
        {BASE_V3, "rope_scaling.beta_slow", "0", "1e7", false},
        {BASE_V2, "rope_parameters.factor", "0", "1e7", false},
        {BASE_V2, "rope_parameters.rope_theta", "0.5", "1e13", false},
        {BASE_V2, "rope_parameters.beta_fast", "-1", "1e7", false},
    };
    const char *wrong_type[] = {"\"1\"", "true", "[1]", "{}"};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
        expect_bad(f[i].base, f[i].path, f[i].too_low, NULL);
        expect_bad(f[i].base, f[i].path, f[i].too_high, NULL);
        expect_bad(f[i].base, f[i].path, "-1", NULL);
        expect_bad(f[i].base, f[i].path, "1e400", NULL);
        expect_bad(f[i].base, f[i].path, "-1e400", NULL);
        for (size_t k = 0; k < sizeof wrong_type / sizeof wrong_type[0]; k++)
            expect_bad(f[i].base, f[i].path, wrong_type[k], NULL);
        if (!f[i].nullable) expect_bad(f[i].base, f[i].path, "null", NULL);
    }
}

static void bad_bools_and_strings(void)
{
    const char *bools[] = {"norm_topk_prob", "tie_word_embeddings", "rope_interleave"};
    const char *not_bool[] = {"1", "0", "\"true\"", "null", "[true]", "{}"};
    for (size_t i = 0; i < sizeof bools / sizeof bools[0]; i++)
        for (size_t k = 0; k < sizeof not_bool / sizeof not_bool[0]; k++)
            expect_bad(BASE_V3, bools[i], not_bool[k], NULL);
    const char *strs[] = {"scoring_func", "topk_method", "torch_dtype", "model_type",
                          "rope_scaling.type", "quantization_config.quant_method",
                          "quantization_config.fmt"};
    const char *not_str[] = {"3", "true", "[\"sigmoid\"]", "{}"};
    for (size_t i = 0; i < sizeof strs / sizeof strs[0]; i++)
        for (size_t k = 0; k < sizeof not_str / sizeof not_str[0]; k++)
            expect_bad(BASE_V3, strs[i], not_str[k], NULL);
    expect_bad(BASE_V2, "dtype", "3", NULL);
    expect_bad(BASE_V2, "rope_parameters.rope_type", "3", NULL);
    /* unknown names */
    expect_bad(BASE_V3, "scoring_func", "\"relu\"", NULL);
    expect_bad(BASE_V3, "scoring_func", "\"sigmoid\\n\\u0001x\"", NULL);
    expect_bad(BASE_V3, "topk_method", "\"topk\"", NULL);
    expect_bad(BASE_V3, "torch_dtype", "\"int8\"", NULL);
    expect_bad(BASE_V2, "dtype", "\"float64\"", NULL);
    expect_bad(BASE_V3, "quantization_config.quant_method", "\"awq\"", NULL);
    expect_bad(BASE_V3, "quantization_config.quant_method", DEL, NULL);
    expect_bad(BASE_V3, "quantization_config.fmt", "\"e5m2\"", NULL);
    expect_bad(BASE_V3, "rope_scaling.type", "\"linear\"", NULL);
    expect_bad(BASE_V3, "rope_scaling.type", "\"longrope\"", NULL);
    expect_bad(BASE_V2, "rope_parameters.rope_type", "\"dynamic\"", NULL);
    expect_bad(BASE_V3, "model_type", "\"deepseek_v2\"", NULL); /* V3 class, V2 type */
    expect_bad(BASE_V2, "model_type", "\"deepseek_v3\"", NULL);
}

/* Objects and lists: architectures, rope_scaling, quantization_config,
 * weight_block_size, eos_token_id. */
static void bad_structures(void)
{
    const char *archs[] = {"\"DeepseekV3ForCausalLM\"", "[]", "[3]", "[null]", "{}", "3", "true",
                           "[\"LlamaForCausalLM\"]", "[\"deepseekv3forcausallm\"]"};
    for (size_t k = 0; k < sizeof archs / sizeof archs[0]; k++)
        expect_bad(BASE_V3, "architectures", archs[k], NULL);
    const char *objs[] = {"\"yarn\"", "3", "[]", "true"};
    for (size_t k = 0; k < sizeof objs / sizeof objs[0]; k++) {
        expect_bad(BASE_V3, "rope_scaling", objs[k], NULL);
        expect_bad(BASE_V2, "rope_parameters", objs[k], NULL);
        expect_bad(BASE_V3, "quantization_config", objs[k], NULL);
    }
    const char *blocks[] = {"[128]", "[128, 128, 1]", "[0, 128]", "[128, -1]", "[128, 65537]",
                            "[128, \"128\"]", "[128.5, 128]", "128", "null", "{}"};
    for (size_t k = 0; k < sizeof blocks / sizeof blocks[0]; k++)
        expect_bad(BASE_V3, "quantization_config.weight_block_size", blocks[k], NULL);
    expect_bad(BASE_V3, "quantization_config.weight_block_size", DEL, NULL);
    /* eos_token_id: vocab_size is 512 */
    expect_bad(BASE_V3, "eos_token_id", "512", NULL);
    expect_bad(BASE_V3, "eos_token_id", "-1", NULL);
    expect_bad(BASE_V3, "eos_token_id", "4294967297", NULL); /* 1 once cut to 32 bits */
    expect_bad(BASE_V3, "eos_token_id", "1.0", NULL);
    expect_bad(BASE_V3, "eos_token_id", "\"1\"", NULL);
    expect_bad(BASE_V3, "eos_token_id", "true", NULL);
    expect_bad(BASE_V3, "eos_token_id", "{}", NULL);
    expect_bad(BASE_V3, "eos_token_id", "[1, 600]", NULL);
    expect_bad(BASE_V3, "eos_token_id", "[1, 2, 3, 4, 5, 6, 7, 8, 9]", NULL);
    expect_bad(BASE_V3, "eos_token_id", "[1, \"x\"]", "eos_token_id[1]");
    expect_bad(BASE_V3, "eos_token_id", "[1, null]", "eos_token_id[1]");
    expect_bad(BASE_V3, "eos_token_id", "[[1]]", "eos_token_id[0]");
    expect_bad(BASE_V3, "eos_token_id", "[-5]", "eos_token_id[0]");
    /* the keys transformers reads and dpep does not implement */
    expect_bad(BASE_V3, "rope_scaling.attention_factor", "1.2", NULL);
    expect_bad(BASE_V3, "rope_scaling.truncate", "false", NULL);
    expect_bad(BASE_V2, "rope_parameters.attention_factor", "0.5", NULL);
}

/* Fields valid alone, wrong together. */
static void bad_combinations(void)
{
    struct {
        const char *base, *path, *value, *field;
        const char *path2, *value2; /* a second field set first, or NULL */
    } c[] = {
        {BASE_V3, "qk_rope_head_dim", "15", NULL, NULL, NULL},
        {BASE_V3, "qk_rope_head_dim", "65535", NULL, NULL, NULL},
        {BASE_V3, "n_group", "3", NULL, NULL, NULL},       /* 16 experts do not split into 3 */
        {BASE_V3, "n_group", "32", NULL, NULL, NULL},      /* more groups than experts */
        {BASE_V3, "topk_group", "5", NULL, NULL, NULL},    /* > n_group 4 */
        {BASE_V3, "num_experts_per_tok", "17", NULL, NULL, NULL},  /* > 16 experts */
        {BASE_V3, "num_experts_per_tok", "9", NULL, NULL, NULL},   /* > 2 kept groups x 4 */
        {BASE_V3, "first_k_dense_replace", "5", NULL, NULL, NULL}, /* > 4 layers */
        {BASE_V3, "moe_layer_freq", "5", NULL, NULL, NULL},
        {BASE_V3, "rope_scaling.beta_fast", "0.5", NULL, NULL, NULL}, /* below beta_slow 1 */
        {BASE_V3, "rope_scaling.beta_slow", "64", "rope_scaling.beta_fast", NULL, NULL},
        {BASE_V2, "rope_parameters.beta_slow", "33", "rope_parameters.beta_fast", NULL, NULL},
        {BASE_V3, "rope_scaling.rope_type", "\"default\"", NULL, NULL, NULL}, /* type says yarn */
        /* sizes: no tensor beyond INT_MAX elements, no billions of experts */
        {BASE_V3, "vocab_size", "67108864", NULL, NULL, NULL},          /* x hidden 256 = 2^34 */
        {BASE_V3, "hidden_size", "16777216", "vocab_size", NULL, NULL}, /* 512 x 2^24 = 2^33 */
        /* 65536 heads x (65536 + 16) x q_lora 96: q_b_proj */
        {BASE_V3, "num_attention_heads", "65536", NULL, "qk_nope_head_dim", "65536"},
        /* no q_lora: 65536 heads x 65552 x hidden 256: q_proj */
        {BASE_V2, "num_attention_heads", "65536", NULL, "qk_nope_head_dim", "65536"},
        /* 256 x 65536 heads x 65536: o_proj */
        {BASE_V3, "v_head_dim", "65536", "num_attention_heads", "num_attention_heads", "65536"},
        {BASE_V3, "q_lora_rank", "16777216", NULL, NULL, NULL},         /* x hidden 256 */
        {BASE_V3, "kv_lora_rank", "16777216", NULL, NULL, NULL},
        {BASE_V3, "intermediate_size", "16777216", NULL, NULL, NULL},
        {BASE_V3, "moe_intermediate_size", "16777216", NULL, NULL, NULL},
        /* 1024 x 65536 x 256 = 2^34 (one expert: 2^24) */
        {BASE_V3, "n_shared_experts", "1024", NULL, "moe_intermediate_size", "65536"},
        {BASE_V3, "n_routed_experts", "65536", NULL, NULL, NULL},       /* x 4 layers > 2^16 */
        {BASE_V2, "num_hidden_layers", "1025", "n_routed_experts", NULL, NULL}, /* x 64 > 2^16 */
    };
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        char *base = c[i].path2 ? with(c[i].base, c[i].path2, c[i].value2) : NULL;
        expect_bad(base ? base : c[i].base, c[i].path, c[i].value, c[i].field);
        free(base);
    }
    /* at the bound (64 x 1024 = 65536 routed experts): loads */
    expect_ok(BASE_V2, "num_hidden_layers", "1024");
    /* top level not an object; invalid JSON; duplicate key */
    dpep_diag d;
    dpep_model_config m;
    const char *tops[] = {"[1]", "3", "\"x\"", "null", "", "{", "{\"hidden_size\": 1,}"};
    for (size_t i = 0; i < sizeof tops / sizeof tops[0]; i++) {
        dpep_diag_init(&d);
        /* a list is valid JSON but no config; the rest is not JSON at all */
        const char *want = i == 0 ? "x/config.json: (top level): not an object" : "x/config.json:1:";
        EXPECT(dpep_model_config_parse(tops[i], strlen(tops[i]), "x/config.json", &m, &d) ==
                       DPEP_ERR_INVALID && dpep_diag_find(&d, want),
               "top level %s: %s", tops[i], d.n ? d.item[0].msg : "accepted");
    }
    const char *dup = "{\"hidden_size\": 1, \"hidden_size\": 2}";
    dpep_diag_init(&d);
    EXPECT(dpep_model_config_parse(dup, strlen(dup), "x/config.json", &m, &d) == DPEP_ERR_INVALID &&
               dpep_diag_find(&d, "x/config.json:1:") && dpep_diag_find(&d, "duplicate"),
           "duplicate key: %s", d.n ? d.item[0].msg : "accepted");
}

/* ------------------------------------------------------------------------ */
/* What must still load.                                                     */
/* ------------------------------------------------------------------------ */
static void good(const char *src)
{
    dpep_model_config m;
    if (loads(BASE_V3, "base V3", &m))
        EXPECT(m.n_group == 4 && m.topk_group == 2 && m.yarn && m.yarn_orig_max_pos == 64 && m.fp8 &&
                   m.fp8_block[0] == 128 && m.n_eos == 1 && m.eos[0] == 1 && m.q_lora_rank == 96,
               "base V3 values");
    if (loads(BASE_V2, "base V2", &m))
        EXPECT(m.arch == DPEP_ARCH_DEEPSEEK_V2 && m.q_lora_rank == 0 && m.yarn &&
                   m.scoring == DPEP_SCORE_SOFTMAX && m.topk_method == DPEP_TOPK_GREEDY &&
                   m.dtype == DPEP_ST_BF16 && m.yarn_mscale == 0.707,
               "base V2 values");
    /* HF's None and the defaults */
    char *t0 = with(BASE_V3, "n_group", "null"); /* one group: keep it, and any top-k */
    expect_ok(t0, "topk_group", "null");
    expect_ok(t0, "topk_group", "1");
    free(t0);
    expect_ok(BASE_V3, "topk_group", "null");
    expect_ok(BASE_V3, "q_lora_rank", "null");
    expect_ok(BASE_V3, "n_shared_experts", "null");
    expect_ok(BASE_V3, "eos_token_id", "null");
    expect_ok(BASE_V3, "eos_token_id", "[1, 2, 511]");
    expect_ok(BASE_V3, "eos_token_id", "[]");
    expect_ok(BASE_V3, "rope_scaling", "null");
    expect_ok(BASE_V3, "rope_scaling", "{\"type\": \"default\"}");
    expect_ok(BASE_V3, "rope_scaling.rope_type", "\"yarn\"");
    expect_ok(BASE_V3, "rope_scaling.mscale", "0");
    expect_ok(BASE_V3, "rope_scaling.mscale_all_dim", "null");
    expect_ok(BASE_V3, "rope_scaling.truncate", "true");
    expect_ok(BASE_V3, "rope_scaling.beta_fast", "1");
    expect_ok(BASE_V3, "quantization_config", "null");
    expect_ok(BASE_V3, "num_key_value_heads", "1");   /* not read by dpep */
    expect_ok(BASE_V3, "architectures", "[\"KimiK2ForCausalLM\"]");
    expect_ok(BASE_V3, "model_type", "\"kimi_k2\"");
    expect_ok(BASE_V3, "routed_scaling_factor", "1");  /* an integer where a number goes */
    expect_ok(BASE_V3, "first_k_dense_replace", "4");  /* every layer dense */
    expect_ok(BASE_V3, "num_experts_per_tok", "8");    /* = 2 kept groups x 4 */
    expect_ok(BASE_V3, "qk_nope_head_dim", "0");
    expect_ok(BASE_V2, "n_group", "16");               /* greedy ignores groups beyond dividing */
    /* a dense model: no experts, no top-k, no moe size */
    char *t1 = with(BASE_V3, "n_routed_experts", "0"), *t2 = with(t1, "num_experts_per_tok", DEL);
    char *t3 = with(t2, "moe_intermediate_size", "null");
    if (loads(t3, "dense model", &m))
        EXPECT(m.n_routed == 0 && m.topk == 0 && !dpep_model_layer_is_moe(&m, 2), "dense model values");
    free(t1), free(t2), free(t3);
    /* only model_type, no architectures */
    t1 = with(BASE_V2, "architectures", DEL);
    if (loads(t1, "model_type only", &m)) EXPECT(m.arch == DPEP_ARCH_DEEPSEEK_V2, "model_type only: V2");
    free(t1);
    /* the real shapes kept in the tree */
    const char *dirs[] = {"configs/models/deepseek-v3", "configs/models/deepseek-v2-lite",
                          "tests/reference/deepseek_v3_tiny", "tests/reference/deepseek_v2_tiny"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s/%s", src, dirs[i]);
        dpep_diag d;
        dpep_diag_init(&d);
        EXPECT(dpep_model_config_load(dir, &m, &d) == DPEP_OK, "%s: %s", dirs[i],
               d.n ? d.item[0].msg : "");
    }
}

/* config.json that is not a regular file: refused at once, with the kind. An
 * alarm turns a blocking open() (the old behaviour on a FIFO) into a failure
 * instead of a hang. */
static void not_regular(void)
{
    char tmpl[] = "/tmp/dpep-test-cfg-XXXXXX";
    char *dir = mkdtemp(tmpl);
    if (!dir) {
        EXPECT(0, "mkdtemp");
        return;
    }
    char path[256];
    snprintf(path, sizeof path, "%s/config.json", dir);
    struct {
        const char *what, *needle;
        int kind; /* 0 FIFO, 1 /dev/zero symlink, 2 directory, 3 too big, 4 missing */
    } c[] = {{"FIFO", "is a FIFO (named pipe) (expected a regular file)", 0},
             {"/dev/zero", "is a character device (expected a regular file)", 1},
             {"directory", "is a directory (expected a regular file)", 2},
             {"2 MiB file", "bytes (expected at most", 3},
             {"missing", "cannot open: No such file or directory", 4}};
    for (size_t i = 0; i < sizeof c / sizeof c[0]; i++) {
        bool made = true;
        if (c[i].kind == 0) made = mkfifo(path, 0600) == 0;
        else if (c[i].kind == 1) made = symlink("/dev/zero", path) == 0;
        else if (c[i].kind == 2) made = mkdir(path, 0700) == 0;
        else if (c[i].kind == 3) {
            FILE *f = fopen(path, "wb");
            made = f && fseek(f, (2 << 20) - 1, SEEK_SET) == 0 && fputc(' ', f) != EOF;
            if (f) fclose(f);
        }
        if (!made) {
            EXPECT(0, "%s: could not make it", c[i].what);
            continue;
        }
        dpep_model_config m;
        dpep_diag d;
        dpep_diag_init(&d);
        alarm(10);
        dpep_status st = dpep_model_config_load(dir, &m, &d);
        alarm(0);
        EXPECT(st == DPEP_ERR_INVALID && dpep_diag_find(&d, path) && dpep_diag_find(&d, c[i].needle),
               "config.json as %s: %s", c[i].what, d.n ? d.item[0].msg : "accepted");
        if (c[i].kind == 2) rmdir(path);
        else unlink(path);
    }
    /* and a regular one loads */
    FILE *f = fopen(path, "wb");
    if (f) {
        fputs(BASE_V3, f);
        fclose(f);
    }
    dpep_model_config m;
    dpep_diag d;
    dpep_diag_init(&d);
    EXPECT(dpep_model_config_load(dir, &m, &d) == DPEP_OK, "regular config.json: %s",
           d.n ? d.item[0].msg : "");
    unlink(path);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    const char *src = argc > 1 ? argv[1] : ".";
    bad_ints();
    bad_numbers();
    bad_bools_and_strings();
    bad_structures();
    bad_combinations();
    good(src);
    not_regular();
    return dpep_test_summary();
}
