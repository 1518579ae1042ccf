/* cmd_model.c — `dpep model gen` (write a Hugging Face checkpoint with
 * deterministic random weights) and `dpep model info` (architecture,
 * parameters by kind, each rank's weight memory for a layout). */
#include "dpep_cli.h"
#include "dpep_text.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

void dpep_cmd_model_gen_help(FILE *f)
{
    fprintf(f,
            "options:\n"
            "  --arch deepseek_v3|deepseek_v2   architecture (default deepseek_v3)\n"
            "  --preset tiny|small              tiny: hidden 256, 4 layers (1 dense), 16 experts in 4\n"
            "                                   groups, top-4, q_lora, YaRN (fast tests); small: ~0.8 B\n"
            "                                   parameters, 64 experts (benchmarks). Default tiny.\n"
            "  --seed N                         weights are a function of (seed, tensor name); default 0\n"
            "  --dtype f32|bf16|f16|fp8         stored dtype (fp8: F8_E4M3 projections with 128x128\n"
            "                                   float32 *_scale_inv blocks); default: the preset's\n"
            "  --shard-mb N                     split into shards of at most N MB with an index\n"
            "  --tokenizer DIR                  copy DIR's tokenizer.json (+ tokenizer_config.json)\n"
            "                                   into the model; vocab_size and bos/eos ids follow it\n"
            "  --set KEY=VALUE                  override a config.json field (VALUE is JSON, else a\n"
            "                                   string; KEY may be dotted: rope_scaling.factor=4)\n"
            "DIR is created if needed (or may be empty). The model is written into a temporary\n"
            "directory beside DIR and renamed onto it, so DIR never holds half a model; a model\n"
            "already in DIR is replaced in one swap (its other files stay). A non-empty DIR\n"
            "without config.json is refused. Generators of one DIR take turns (lock file\n"
            ".DIR.lock beside it).\n");
}

void dpep_cmd_model_info_help(FILE *f)
{
    fprintf(f,
            "Prints the architecture, parameter counts by kind (attention, dense MLP, routed\n"
            "experts, shared experts, embeddings) and the weight memory of a rank for a layout,\n"
            "from config.json alone (no weights read).\n\n"
            "options:\n"
            "  --config FILE      take the layout from a deployment YAML\n"
            "  --tp N --dp N --ep N --enable-dp-attention --moe-dense-tp-size 1|null, --set …\n"
            "                     layout overrides as in `dpep config check`\n");
}

/* Sets a dotted key in a JSON object (creating objects on the way). */
static bool json_set_path(json_t *o, const char *key, json_t *v)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", key);
    char *p = buf, *dot;
    while ((dot = strchr(p, '.'))) {
        *dot = '\0';
        json_t *next = json_object_get(o, p);
        if (!json_is_object(next)) {
            next = json_object();
            json_object_set_new(o, p, next);
        }
        o = next;
        p = dot + 1;
    }
    return json_object_set_new(o, p, v) == 0;
}

/* --tokenizer DIR: the generated model gets that tokenizer's vocabulary size
 * and bos/eos ids in config.json (so ids it produces are valid tokens). */
static dpep_status gen_apply_tokenizer(json_t *cj, const char *tokdir, dpep_diag *diag)
{
    dpep_tokenizer *t = NULL;
    DPEP_TRY(dpep_tok_load(tokdir, &t, diag));
    json_object_set_new(cj, "vocab_size", json_integer(dpep_tok_vocab_size(t)));
    if (dpep_tok_bos_id(t) >= 0) json_object_set_new(cj, "bos_token_id", json_integer(dpep_tok_bos_id(t)));
    if (dpep_tok_eos_id(t) >= 0) json_object_set_new(cj, "eos_token_id", json_integer(dpep_tok_eos_id(t)));
    dpep_tok_free(t);
    return DPEP_OK;
}

static dpep_status copy_file(const char *from, const char *to, bool optional, dpep_diag *diag)
{
    FILE *in = fopen(from, "rb");
    if (!in) {
        if (optional) return DPEP_OK;
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot open: %s", from, strerror(errno));
        return DPEP_ERR_INVALID;
    }
    FILE *out = fopen(to, "wb");
    dpep_status st = out ? DPEP_OK : DPEP_ERR_IO;
    char buf[1 << 16];
    size_t n;
    while (st == DPEP_OK && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n) st = DPEP_ERR_IO;
    if (ferror(in)) st = DPEP_ERR_IO;
    if (out && fclose(out) != 0) st = DPEP_ERR_IO;
    fclose(in);
    if (st != DPEP_OK) dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot write: %s", to, strerror(errno));
    return st;
}

/* add_files of the generation: the tokenizer goes into the temporary
 * directory, so that it is in DIR from the moment the model is. */
static dpep_status gen_copy_tokenizer(const char *dir, void *user, dpep_diag *diag)
{
    const char *tokdir = user;
    static const char *const names[] = {"tokenizer.json", "tokenizer_config.json"};
    for (int k = 0; k < 2; k++) {
        size_t nf = strlen(tokdir) + strlen(names[k]) + 2, nt = strlen(dir) + strlen(names[k]) + 2;
        char *from = malloc(nf), *to = malloc(nt);
        dpep_status st = from && to ? DPEP_OK : DPEP_ERR_NOMEM;
        if (st == DPEP_OK) {
            snprintf(from, nf, "%s/%s", tokdir, names[k]);
            snprintf(to, nt, "%s/%s", dir, names[k]);
            st = copy_file(from, to, k == 1, diag);
        }
        free(from);
        free(to);
        DPEP_TRY(st);
    }
    return DPEP_OK;
}

int dpep_cmd_model_gen(int argc, char **argv)
{
    const char *arch = "deepseek_v3", *preset = "tiny", *dir = NULL, *dtype_s = NULL, *tokdir = NULL;
    long seed = 0, shard_mb = 0;
    const char *sets[64];
    int n_sets = 0;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        bool takes = strcmp(a, "--arch") == 0 || strcmp(a, "--preset") == 0 ||
                     strcmp(a, "--seed") == 0 || strcmp(a, "--dtype") == 0 ||
                     strcmp(a, "--set") == 0 || strcmp(a, "--shard-mb") == 0 ||
                     strcmp(a, "--tokenizer") == 0;
        if (takes && !v) {
            fprintf(stderr, "dpep model gen: %s needs a value\n", a);
            return 2;
        }
        if (strcmp(a, "--arch") == 0) arch = v;
        else if (strcmp(a, "--preset") == 0) preset = v;
        else if (strcmp(a, "--dtype") == 0) dtype_s = v;
        else if (strcmp(a, "--tokenizer") == 0) tokdir = v;
        else if (strcmp(a, "--seed") == 0) {
            if (!dpep_parse_int(v, 0, 1L << 62, &seed)) {
                fprintf(stderr, "dpep model gen: --seed %s (expected a non-negative integer)\n", v);
                return 2;
            }
        } else if (strcmp(a, "--shard-mb") == 0) {
            if (!dpep_parse_int(v, 1, 1 << 20, &shard_mb)) {
                fprintf(stderr, "dpep model gen: --shard-mb %s (expected 1 to 1048576)\n", v);
                return 2;
            }
        } else if (strcmp(a, "--set") == 0) {
            if (n_sets == 64 || !strchr(v, '=') || v[0] == '=') {
                fprintf(stderr, "dpep model gen: --set %s (expected KEY=VALUE, at most 64)\n", v);
                return 2;
            }
            sets[n_sets++] = v;
        } else if (a[0] == '-') {
            fprintf(stderr, "dpep model gen: unknown option %s (see --help)\n", a);
            return 2;
        } else if (!dir) {
            dir = a;
            continue;
        } else {
            fprintf(stderr, "dpep model gen: unexpected argument %s (expected one DIR)\n", a);
            return 2;
        }
        i++;
    }
    if (!dir) {
        fprintf(stderr, "dpep model gen: missing DIR (see --help)\n");
        return 2;
    }
    dpep_arch ar;
    if (strcmp(arch, "deepseek_v3") == 0) ar = DPEP_ARCH_DEEPSEEK_V3;
    else if (strcmp(arch, "deepseek_v2") == 0) ar = DPEP_ARCH_DEEPSEEK_V2;
    else {
        fprintf(stderr, "dpep model gen: --arch %s (expected deepseek_v3 or deepseek_v2)\n", arch);
        return 2;
    }
    dpep_model_config m;
    if (dpep_model_preset(ar, preset, &m) != DPEP_OK) {
        fprintf(stderr, "dpep model gen: --preset %s (expected tiny or small)\n", preset);
        return 2;
    }
    dpep_st_dtype dtype = m.dtype;
    if (dtype_s) {
        if (strcmp(dtype_s, "f32") == 0) dtype = DPEP_ST_F32;
        else if (strcmp(dtype_s, "bf16") == 0) dtype = DPEP_ST_BF16;
        else if (strcmp(dtype_s, "f16") == 0) dtype = DPEP_ST_F16;
        else if (strcmp(dtype_s, "fp8") == 0) dtype = DPEP_ST_F8_E4M3;
        else {
            fprintf(stderr, "dpep model gen: --dtype %s (expected f32, bf16, f16 or fp8)\n", dtype_s);
            return 2;
        }
        m.dtype = dtype == DPEP_ST_F8_E4M3 ? DPEP_ST_BF16 : dtype;
    }
    char *text = dpep_model_config_to_json(&m);
    json_error_t je;
    json_t *cj = text ? json_loads(text, 0, &je) : NULL;
    free(text);
    if (!cj) return 1;
    dpep_diag diag;
    dpep_diag_init(&diag);
    if (tokdir && gen_apply_tokenizer(cj, tokdir, &diag) != DPEP_OK) {
        dpep_diag_print(&diag, stderr);
        json_decref(cj);
        return 2;
    }
    for (int i = 0; i < n_sets; i++) {
        char key[256];
        const char *eq = strchr(sets[i], '=');
        snprintf(key, sizeof key, "%.*s", (int)(eq - sets[i]), sets[i]);
        json_t *v = json_loads(eq + 1, JSON_DECODE_ANY, &je);
        if (!v) v = json_string(eq + 1);
        json_set_path(cj, key, v);
    }
    text = json_dumps(cj, JSON_PRESERVE_ORDER | JSON_INDENT(2));
    json_decref(cj);
    /* An existing model in DIR is replaced, as `model gen` always did, but
     * in one swap: DIR holds the old model or the new one, never a mix. */
    dpep_model_gen_opts go = {.shard_bytes = (uint64_t)shard_mb << 20, .replace = true,
                              .add_files = tokdir ? gen_copy_tokenizer : NULL,
                              .user = (void *)tokdir};
    dpep_status st = dpep_model_generate_with(dir, text, dtype, (uint64_t)seed, &go, &diag);
    free(text);
    dpep_diag_print(&diag, stderr);
    if (st == DPEP_OK) {
        dpep_model_config got;
        dpep_diag_init(&diag);
        dpep_model_config_load(dir, &got, &diag);
        int64_t cnt[DPEP_W_NKINDS], total = 0;
        dpep_model_param_counts(&got, cnt);
        for (int k = 0; k < DPEP_W_NKINDS; k++) total += cnt[k];
        printf("wrote %s: %s, %.1f M parameters, %s\n", dir, got.arch_name, total / 1e6,
               dtype == DPEP_ST_F8_E4M3 ? "fp8 (e4m3, 128x128 block scales)" : dpep_st_dtype_name(dtype));
    } else {
        fprintf(stderr, "dpep model gen: %s\n", dpep_status_string(st));
    }
    return dpep_status_exit_code(st);
}

/* Shared by info and check: DIR, an optional --config YAML, the layout
 * overrides, then config.json checked against the layout. */
static dpep_status model_setup(const char *cmd, int argc, char **argv, dpep_cli_opt *opts, int nopt,
                               const char **dir, dpep_config *cfg, dpep_layout *l,
                               dpep_model_config *m, dpep_diag *diag)
{
    const char *cfg_file = NULL;
    opts[0] = (dpep_cli_opt){"--config", &cfg_file, NULL};
    DPEP_TRY(dpep_config_init(cfg));
    dpep_status st = dpep_cli_scan(cmd, argc, argv, opts, nopt, dir, diag);
    if (st == DPEP_OK && !*dir) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "dpep %s: missing DIR (see --help)", cmd);
        st = DPEP_ERR_USAGE;
    }
    if (st == DPEP_OK && cfg_file) st = dpep_config_load_file(cfg, cfg_file, NULL, diag);
    if (st == DPEP_OK) st = dpep_cli_apply_overrides(cfg, argc, argv, opts, nopt, diag);
    if (st == DPEP_OK) st = dpep_config_validate(cfg, 0, diag);
    if (st == DPEP_OK) st = dpep_layout_from_config(cfg, 0, l);
    if (st == DPEP_OK) st = dpep_model_config_load(*dir, m, diag);
    if (st == DPEP_OK) st = dpep_model_check_layout(m, l, *dir, diag);
    return st;
}

int dpep_cmd_model_info(int argc, char **argv)
{
    const char *dir = NULL;
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_config cfg;
    dpep_layout l;
    dpep_model_config m;
    dpep_cli_opt opts[1];
    dpep_status st = model_setup("model info", argc, argv, opts, 1, &dir, &cfg, &l, &m, &diag);
    dpep_diag_print(&diag, stderr);
    if (st != DPEP_OK) {
        dpep_config_free(&cfg);
        return dpep_status_exit_code(st);
    }
    int n_moe = 0;
    for (int i = 0; i < m.n_layers; i++) n_moe += dpep_model_layer_is_moe(&m, i);
    printf("%s: %s\n", dir, m.arch_name);
    printf("  hidden %d, layers %d (%d dense, %d MoE), heads %d, vocab %d\n", m.hidden, m.n_layers,
           m.n_layers - n_moe, n_moe, m.n_heads, m.vocab);
    printf("  MLA: q_lora %d, kv_lora %d, qk_nope %d, qk_rope %d, v_head %d; KV cache %d values "
           "per token per layer\n", m.q_lora_rank, m.kv_lora_rank, m.qk_nope, m.qk_rope, m.v_head,
           dpep_model_kv_row(&m));
    printf("  MoE: %d routed + %d shared experts, top-%d, %d groups keep %d, %s/%s, scale %g%s\n",
           m.n_routed, m.n_shared, m.topk, m.n_group, m.topk_group,
           m.scoring == DPEP_SCORE_SIGMOID ? "sigmoid" : "softmax",
           m.topk_method == DPEP_TOPK_NOAUX_TC ? "noaux_tc"
           : m.topk_method == DPEP_TOPK_GREEDY ? "greedy" : "group_limited_greedy",
           m.routed_scaling_factor, m.norm_topk_prob ? ", normalized" : "");
    if (m.yarn)
        printf("  RoPE: theta %g, YaRN factor %g, mscale %g / %g, beta %g/%g, original %d\n",
               m.rope_theta, m.yarn_factor, m.yarn_mscale, m.yarn_mscale_all_dim,
               m.yarn_beta_fast, m.yarn_beta_slow, m.yarn_orig_max_pos);
    printf("  stored as %s%s\n", dpep_st_dtype_name(m.dtype),
           m.fp8 ? " with FP8 e4m3 projections (block scales)" : "");
    int64_t cnt[DPEP_W_NKINDS], total = 0;
    dpep_model_param_counts(&m, cnt);
    for (int k = 0; k < DPEP_W_NKINDS; k++) total += cnt[k];
    printf("\nparameters:\n");
    for (int k = 0; k < DPEP_W_NKINDS; k++)
        printf("  %-16s %14lld  %5.1f%%\n", dpep_wkind_name((dpep_wkind)k), (long long)cnt[k],
               100.0 * (double)cnt[k] / (double)total);
    printf("  %-16s %14lld\n", "total", (long long)total);

    double esz = dpep_st_dtype_size(m.dtype);
    printf("\nweight memory per rank: world %d, tp %d, dp %d%s, ep %d (attn_tp %d, moe_tp %d, "
           "dense_tp %d), stored dtype\n", l.world, l.tp, l.dp, l.dpa ? " DPA" : "", l.ep,
           l.attn_tp, l.moe_tp, l.dense_tp);
    printf("  %-16s", "rank");
    for (int k = 0; k < DPEP_W_NKINDS; k++) printf(" %14s", dpep_wkind_name((dpep_wkind)k));
    printf(" %12s\n", "total MB");
    /* Ranks differ only by which experts they hold; show the first instance. */
    int shown = l.tp < 16 ? l.tp : 16;
    for (int r = 0; r < shown; r++) {
        dpep_rank_info ri;
        dpep_layout_rank(&l, r, &ri);
        double b[DPEP_W_NKINDS], sum = 0;
        dpep_model_rank_bytes(&m, &l, &ri, esz, b);
        printf("  %-16d", r);
        for (int k = 0; k < DPEP_W_NKINDS; k++) {
            printf(" %14.2f", b[k] / 1e6);
            sum += b[k];
        }
        printf(" %12.2f\n", sum / 1e6);
    }
    if (shown < l.tp) printf("  … (%d more ranks alike)\n", l.world - shown);
    dpep_config_free(&cfg);
    return 0;
}

void dpep_cmd_model_check_help(FILE *f)
{
    fprintf(f,
            "Checks a checkpoint against its config.json without reading weights: every tensor the\n"
            "model needs is present with the right shape and a floating-point dtype (FP8 ones with\n"
            "their block scales); tensors the model does not use (e.g. the MTP layer) are counted.\n\n"
            "options:\n"
            "  --load             also load, as float32, the share of one rank and report its\n"
            "                     resident memory (VmRSS) before and after\n"
            "  --rank R           the rank to load (default 0)\n"
            "  --config FILE, --tp N, --dp N, --ep N, --enable-dp-attention, …  the layout\n");
}

static long vm_rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    while (f && fgets(line, sizeof line, f))
        if (strncmp(line, "VmRSS:", 6) == 0) kb = strtol(line + 6, NULL, 10);
    if (f) fclose(f);
    return kb;
}

typedef struct check_ctx {
    dpep_ckpt *ck;
    const dpep_model_config *m;
    dpep_diag *diag;
    int checked;
} check_ctx;

static void check_one(const dpep_tensor_spec *t, void *user)
{
    check_ctx *c = user;
    if (c->diag->n_errors >= 16) return;
    const dpep_tensor_info *i = dpep_ckpt_find(c->ck, t->name);
    if (!i) {
        dpep_diag_add(c->diag, DPEP_DIAG_ERROR, "%s: tensor %s is missing (expected [%lld%s%lld])",
                      dpep_ckpt_file_name(c->ck, 0), t->name, (long long)t->shape[0],
                      t->ndim == 2 ? ", " : "", t->ndim == 2 ? (long long)t->shape[1] : 0LL);
        return;
    }
    bool shape_ok = i->ndim == t->ndim && i->shape[0] == t->shape[0] &&
                    (t->ndim == 1 || i->shape[1] == t->shape[1]);
    if (!shape_ok) {
        dpep_diag_add(c->diag, DPEP_DIAG_ERROR, "%s: tensor %s has %d dims [%lld, %lld] (expected "
                      "[%lld%s%lld] from config.json)", dpep_ckpt_file_name(c->ck, i->file), t->name,
                      i->ndim, (long long)i->shape[0], i->ndim > 1 ? (long long)i->shape[1] : 0LL,
                      (long long)t->shape[0], t->ndim == 2 ? ", " : "",
                      t->ndim == 2 ? (long long)t->shape[1] : 0LL);
        return;
    }
    bool fp = i->dtype == DPEP_ST_F32 || i->dtype == DPEP_ST_BF16 || i->dtype == DPEP_ST_F16 ||
              i->dtype == DPEP_ST_F8_E4M3;
    if (!fp) {
        dpep_diag_add(c->diag, DPEP_DIAG_ERROR, "%s: tensor %s has dtype %s (expected F32, BF16, F16 "
                      "or F8_E4M3)", dpep_ckpt_file_name(c->ck, i->file), t->name,
                      dpep_st_dtype_name(i->dtype));
        return;
    }
    if (i->dtype == DPEP_ST_F8_E4M3) {
        char sname[160];
        snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
        const dpep_tensor_info *s = dpep_ckpt_find(c->ck, sname);
        int bh = c->m->fp8 ? c->m->fp8_block[0] : 0, bw = c->m->fp8 ? c->m->fp8_block[1] : 0;
        if (!bh || !s || s->ndim != 2 || s->dtype != DPEP_ST_F32 ||
            s->shape[0] != (t->shape[0] + bh - 1) / bh || s->shape[1] != (t->shape[1] + bw - 1) / bw)
            dpep_diag_add(c->diag, DPEP_DIAG_ERROR, "%s: FP8 tensor %s needs %s as float32 [%lld, "
                          "%lld] and quantization_config.weight_block_size in config.json",
                          dpep_ckpt_file_name(c->ck, i->file), t->name, sname,
                          bh ? (long long)((t->shape[0] + bh - 1) / bh) : 0LL,
                          bw ? (long long)((t->shape[1] + bw - 1) / bw) : 0LL);
    }
    c->checked++;
}

int dpep_cmd_model_check(int argc, char **argv)
{
    const char *dir = NULL, *rank_s = NULL;
    bool load = false;
    long rank = 0;
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_config cfg;
    dpep_layout l;
    dpep_model_config m;
    dpep_ckpt *ck = NULL;
    dpep_cli_opt opts[3] = {{0}, {"--load", NULL, &load}, {"--rank", &rank_s, NULL}};
    dpep_status st = model_setup("model check", argc, argv, opts, 3, &dir, &cfg, &l, &m, &diag);
    if (st == DPEP_OK && rank_s && !dpep_parse_int(rank_s, 0, 1 << 20, &rank)) {
        dpep_diag_add(&diag, DPEP_DIAG_ERROR, "command line --rank: got %s (expected a rank)", rank_s);
        st = DPEP_ERR_USAGE;
    }
    if (st == DPEP_OK) st = dpep_ckpt_open(dir, &ck, &diag);
    check_ctx cc = {ck, &m, &diag, 0};
    if (st == DPEP_OK) {
        dpep_model_tensors(&m, check_one, &cc);
        if (diag.n_errors) st = DPEP_ERR_INVALID;
    }
    if (st == DPEP_OK) {
        int extra = dpep_ckpt_count(ck) - cc.checked;
        for (int i = 0; i < dpep_ckpt_count(ck); i++)
            if (strstr(dpep_ckpt_tensor(ck, i)->name, "_scale_inv")) extra--;
        printf("%s: %d tensors match config.json (%s)%s", dir, cc.checked, m.arch_name,
               extra > 0 ? "" : "\n");
        if (extra > 0) printf("; %d tensors the model does not use (e.g. an MTP layer) ignored\n", extra);
    }
    if (st == DPEP_OK && load) {
        if (rank >= l.world) {
            fprintf(stderr, "dpep model check: --rank %ld outside the world of %d\n", rank, l.world);
            st = DPEP_ERR_USAGE;
        } else {
            dpep_rank_info ri;
            dpep_layout_rank(&l, (int)rank, &ri);
            long before = vm_rss_kb();
            dpep_weights w;
            st = dpep_weights_load(ck, &m, &l, &ri, &w, &diag);
            if (st == DPEP_OK) {
                long after = vm_rss_kb();
                printf("rank %ld of world %d (ep %d, ep_rank %d, experts %d..%d): loaded %.1f MB as "
                       "float32; VmRSS %.1f -> %.1f MB\n", rank, l.world, l.ep, ri.ep_rank,
                       ri.ep_rank * (m.n_routed / l.ep), (ri.ep_rank + 1) * (m.n_routed / l.ep) - 1,
                       w.arena_bytes / 1e6, before / 1e3, after / 1e3);
                for (int k = 0; k < DPEP_W_NKINDS; k++)
                    printf("  %-16s %10.2f MB\n", dpep_wkind_name((dpep_wkind)k), w.bytes[k] / 1e6);
                dpep_weights_free(&w);
            }
        }
    }
    dpep_diag_print(&diag, stderr);
    dpep_ckpt_close(ck);
    dpep_config_free(&cfg);
    return dpep_status_exit_code(st);
}
