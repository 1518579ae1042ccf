/* test_tokenizer.c — runtime/text against HF on the five real DeepSeek
 * tokenizers (tests/reference/tokenizers: tokenizer.json.xz, its config and
 * golden.json.xz made by HF tokenizers / transformers 4.57):
 *   - every corpus text: ids without and with special tokens identical,
 *     decode and decode(skip_special_tokens) identical, the incremental
 *     detokenizer's pieces (never half a UTF-8 character) concatenating to
 *     the full decode;
 *   - invalid UTF-8: refused with a named error; its replaced text encodes as
 *     HF encodes it;
 *   - decode cases (random ids, special tokens, ids splitting characters):
 *     decode identical, every streamed prefix a prefix of HF's decode of the
 *     ids so far;
 *   - chat: every conversation rendered and encoded identically, and an error
 *     wherever transformers raises.
 *   test_tokenizer SRC_DIR   (needs xz on PATH) */
#include "dpep_text.h"
#include "../dpep_test.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* runtime/text's UTF-8 check (text_internal.h). */
int dpep_utf8_seq_len(const unsigned char *s, size_t n);

static const char *const k_names[] = {"deepseek-v2", "deepseek-v2.5", "deepseek-v3", "deepseek-v3.1",
                                      "deepseek-r1"};

static json_t *load_xz_json(const char *path)
{
    char cmd[2200];
    snprintf(cmd, sizeof cmd, "xz -dc '%s'", path);
    FILE *p = popen(cmd, "r");
    if (!p) return NULL;
    json_error_t err;
    json_t *j = json_loadf(p, JSON_ALLOW_NUL, &err);
    if (!j) printf("FAIL %s: %s\n", path, err.text);
    pclose(p);
    return j;
}

/* DIR/tokenizer.json decompressed into tmp/ beside a copy of the config. */
static bool stage(const char *src, const char *name, const char *tmp)
{
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "xz -dc '%s/tests/reference/tokenizers/%s/tokenizer.json.xz' > '%s/tokenizer.json' && "
             "cp '%s/tests/reference/tokenizers/%s/tokenizer_config.json' '%s/'", src, name, tmp, src,
             name, tmp);
    return system(cmd) == 0;
}

static bool ids_equal(const int32_t *a, size_t n, json_t *arr)
{
    if (json_array_size(arr) != n) return false;
    for (size_t i = 0; i < n; i++)
        if (json_integer_value(json_array_get(arr, i)) != a[i]) return false;
    return true;
}

static int32_t *ids_of(json_t *arr, size_t *n)
{
    *n = json_array_size(arr);
    int32_t *v = malloc(sizeof(int32_t) * (*n + 1));
    for (size_t i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(arr, i));
    return v;
}

static bool jtext_eq(json_t *s, const char *p, size_t n)
{
    return json_is_string(s) && json_string_length(s) == n && memcmp(json_string_value(s), p, n) == 0;
}

/* Streams ids through the detokenizer: each piece whole UTF-8, the pieces
 * so far a prefix of prefixes[k] (HF's decode of ids[:k+1]) when given, and
 * all pieces together equal to `full`. */
static bool stream_ok(const dpep_tokenizer *t, const int32_t *ids, size_t n, bool skip, json_t *full,
                      json_t *prefixes)
{
    dpep_detok *d = NULL;
    if (dpep_detok_create(t, skip, &d) != DPEP_OK) return false;
    size_t cap = 64 + json_string_length(full) * 2, at = 0;
    char *cat = malloc(cap);
    bool ok = true;
    for (size_t i = 0; ok && i <= n; i++) {
        const char *piece;
        size_t pl;
        dpep_status st = i < n ? dpep_detok_push(d, ids[i], &piece, &pl) : dpep_detok_finish(d, &piece, &pl);
        if (st != DPEP_OK || at + pl > cap) {
            ok = false;
            break;
        }
        for (size_t k = 0; k < pl;) { /* whole characters only */
            int c = dpep_utf8_seq_len((const unsigned char *)piece + k, pl - k);
            if (c == 0) ok = false;
            k += c ? (size_t)c : 1;
        }
        memcpy(cat + at, piece, pl);
        at += pl;
        json_t *pre = i < n && prefixes ? json_array_get(prefixes, i) : NULL;
        if (pre && (json_string_length(pre) < at || memcmp(json_string_value(pre), cat, at) != 0)) ok = false;
    }
    ok = ok && jtext_eq(full, cat, at);
    free(cat);
    dpep_detok_free(d);
    return ok;
}

static void check_encode(const dpep_tokenizer *t, const char *name, json_t *cases, int *n_ok)
{
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        json_t *text = json_object_get(c, "text");
        const char *cn = json_string_value(json_object_get(c, "name"));
        dpep_diag d;
        dpep_diag_init(&d);
        int32_t *ids = NULL, *ids2 = NULL;
        size_t n = 0, n2 = 0;
        bool ok = dpep_tok_encode(t, json_string_value(text), json_string_length(text), false, &ids, &n, &d) == DPEP_OK &&
                  dpep_tok_encode(t, json_string_value(text), json_string_length(text), true, &ids2, &n2, &d) == DPEP_OK;
        bool same = ok && ids_equal(ids, n, json_object_get(c, "ids"));
        bool same2 = ok && ids_equal(ids2, n2, json_object_get(c, "ids_special"));
        char *out = NULL, *out2 = NULL;
        size_t l = 0, l2 = 0;
        bool dec = ok && dpep_tok_decode(t, ids, n, false, &out, &l, &d) == DPEP_OK &&
                   jtext_eq(json_object_get(c, "decode"), out, l);
        bool dec2 = ok && dpep_tok_decode(t, ids2, n2, true, &out2, &l2, &d) == DPEP_OK &&
                    jtext_eq(json_object_get(c, "decode_skip"), out2, l2);
        bool str = ok && stream_ok(t, ids, n, false, json_object_get(c, "decode"), NULL) &&
                   stream_ok(t, ids2, n2, true, json_object_get(c, "decode_skip"), NULL);
        EXPECT(same && same2 && dec && dec2 && str, "%s encode %s: ids %d, with special %d, decode %d, "
               "skip %d, stream %d", name, cn, same, same2, dec, dec2, str);
        *n_ok += same && same2 && dec && dec2 && str;
        free(ids);
        free(ids2);
        free(out);
        free(out2);
    }
}

static void check_invalid(const dpep_tokenizer *t, const char *name, json_t *cases, int *n_ok)
{
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *hex = json_string_value(json_object_get(c, "hex"));
        size_t hl = strlen(hex), bl = hl / 2;
        unsigned char *b = malloc(bl + 1);
        for (size_t k = 0; k < bl; k++) sscanf(hex + 2 * k, "%2hhx", &b[k]);
        dpep_diag d;
        dpep_diag_init(&d);
        int32_t *ids = NULL;
        size_t n = 0;
        bool refused = dpep_tok_encode(t, (const char *)b, bl, false, &ids, &n, &d) == DPEP_ERR_INVALID &&
                       dpep_diag_find(&d, "invalid UTF-8 at byte");
        json_t *rep = json_object_get(c, "replaced");
        bool same = dpep_tok_encode(t, json_string_value(rep), json_string_length(rep), false, &ids, &n, &d) == DPEP_OK &&
                    ids_equal(ids, n, json_object_get(c, "ids"));
        EXPECT(refused && same, "%s invalid %s: refused %d, replaced text ids %d", name,
               json_string_value(json_object_get(c, "name")), refused, same);
        *n_ok += refused && same;
        free(ids);
        free(b);
    }
}

static void check_decode(const dpep_tokenizer *t, const char *name, json_t *cases, int *n_ok)
{
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        size_t n;
        int32_t *ids = ids_of(json_object_get(c, "ids"), &n);
        dpep_diag d;
        dpep_diag_init(&d);
        char *o1 = NULL, *o2 = NULL;
        size_t l1 = 0, l2 = 0;
        /* HF skips ids outside the vocabulary; dpep names them (an error) */
        bool oob = false;
        for (size_t k = 0; k < n; k++) oob |= dpep_tok_id_to_token(t, ids[k]) == NULL;
        if (oob) {
            bool named = dpep_tok_decode(t, ids, n, false, &o1, &l1, &d) == DPEP_ERR_INVALID &&
                         dpep_diag_find(&d, "is not a token id");
            /* the streaming detokenizer drops them as HF does */
            bool s = stream_ok(t, ids, n, false, json_object_get(c, "text"), NULL);
            EXPECT(named && s, "%s decode %s: an id out of the vocabulary is an error (%d), the "
                   "stream drops it as HF (%d)", name, json_string_value(json_object_get(c, "name")),
                   named, s);
            *n_ok += named && s;
            free(ids);
            continue;
        }
        bool a = dpep_tok_decode(t, ids, n, false, &o1, &l1, &d) == DPEP_OK && jtext_eq(json_object_get(c, "text"), o1, l1);
        bool b = dpep_tok_decode(t, ids, n, true, &o2, &l2, &d) == DPEP_OK && jtext_eq(json_object_get(c, "text_skip"), o2, l2);
        bool s = stream_ok(t, ids, n, false, json_object_get(c, "text"), json_object_get(c, "prefix_texts")) &&
                 stream_ok(t, ids, n, true, json_object_get(c, "text_skip"), NULL);
        EXPECT(a && b && s, "%s decode %s: text %d, skip %d, stream %d", name,
               json_string_value(json_object_get(c, "name")), a, b, s);
        *n_ok += a && b && s;
        free(o1);
        free(o2);
        free(ids);
    }
}

static json_t *find_conv(json_t *convs, const char *name)
{
    size_t i;
    json_t *c;
    json_array_foreach(convs, i, c) if (strcmp(json_string_value(json_object_get(c, "name")), name) == 0) return c;
    return NULL;
}

static void check_chat(const dpep_tokenizer *t, const char *name, json_t *cases, json_t *convs, int *n_ok)
{
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *cn = json_string_value(json_object_get(c, "conversation"));
        json_t *conv = find_conv(convs, cn);
        char *js = conv ? json_dumps(json_object_get(conv, "messages"), JSON_COMPACT) : NULL;
        dpep_diag d;
        dpep_diag_init(&d);
        dpep_chat_conv cv;
        bool parsed = js && dpep_chat_parse_json(js, strlen(js), cn, &cv, &d) == DPEP_OK;
        free(js);
        dpep_chat_opts o = {.add_generation_prompt = json_is_true(json_object_get(c, "add_generation_prompt")),
                            .thinking = json_is_true(json_object_get(json_object_get(c, "kwargs"), "thinking"))};
        char *text = NULL;
        size_t len = 0;
        int32_t *ids = NULL;
        size_t n = 0;
        dpep_status st = parsed ? dpep_tok_chat_render(t, cv.msg, cv.n, &o, &text, &len, &d) : DPEP_ERR_INVALID;
        bool ok;
        if (json_object_get(c, "error")) {
            ok = st != DPEP_OK && d.n_errors > 0;
        } else {
            ok = st == DPEP_OK && jtext_eq(json_object_get(c, "text"), text, len) &&
                 dpep_tok_chat_encode(t, cv.msg, cv.n, &o, &ids, &n, &d) == DPEP_OK &&
                 ids_equal(ids, n, json_object_get(c, "ids"));
        }
        EXPECT(ok, "%s chat %s (generation prompt %d, thinking %d): %s", name, cn,
               o.add_generation_prompt, o.thinking, d.n ? d.item[0].msg : "differs");
        *n_ok += ok;
        free(text);
        free(ids);
        if (parsed) dpep_chat_conv_free(&cv);
    }
}

int main(int argc, char **argv)
{
    const char *src = argc > 1 ? argv[1] : ".";
    if (system("xz --version > /dev/null 2>&1") != 0) {
        printf("SKIP: xz not found (apt-get install xz-utils)\n");
        return 77;
    }
    char convpath[2048];
    snprintf(convpath, sizeof convpath, "%s/tests/reference/tokenizers/conversations.json", src);
    json_t *convs = json_load_file(convpath, 0, NULL);
    EXPECT(convs != NULL, "conversations.json");
    for (size_t k = 0; k < sizeof k_names / sizeof k_names[0]; k++) {
        const char *name = k_names[k];
        char tmp[] = "/tmp/dpep-tok-XXXXXX", gold[2048];
        if (!mkdtemp(tmp) || !stage(src, name, tmp)) {
            EXPECT(0, "%s: staging the tokenizer", name);
            continue;
        }
        snprintf(gold, sizeof gold, "%s/tests/reference/tokenizers/%s/golden.json.xz", src, name);
        json_t *g = load_xz_json(gold);
        dpep_diag d;
        dpep_diag_init(&d);
        dpep_tokenizer *t = NULL;
        double t0 = dpep_clock_s();
        bool loaded = dpep_tok_load(tmp, &t, &d) == DPEP_OK;
        double t_load = dpep_clock_s() - t0;
        if (!loaded) dpep_diag_print(&d, stdout);
        EXPECT(loaded && g, "%s: tokenizer and goldens", name);
        if (loaded && g) {
            json_t *cfg = json_object_get(g, "config");
            EXPECT(dpep_tok_bos_id(t) == json_integer_value(json_object_get(cfg, "bos_id")) &&
                       dpep_tok_eos_id(t) == json_integer_value(json_object_get(cfg, "eos_id")) &&
                       dpep_tok_vocab_size(t) == json_integer_value(json_object_get(cfg, "vocab_size_with_added")),
                   "%s: bos/eos ids and vocabulary size", name);
            int e = 0, iv = 0, dc = 0, ch = 0;
            check_encode(t, name, json_object_get(g, "encode"), &e);
            check_invalid(t, name, json_object_get(g, "invalid_utf8"), &iv);
            json_t *dcases = json_object_get(g, "decode_cases");
            EXPECT(json_array_size(json_object_get(g, "encode")) >= 100 && json_array_size(dcases) >= 50 &&
                       json_array_size(json_object_get(g, "chat")) >= 50,
                   "%s: goldens hold the expected cases", name);
            check_decode(t, name, dcases, &dc);
            check_chat(t, name, json_object_get(g, "chat"), convs, &ch);
            printf("%s: load %.2f s; encode %d/%zu, invalid UTF-8 %d/%zu, decode %d/%zu, chat %d/%zu equal to HF\n",
                   name, t_load, e, json_array_size(json_object_get(g, "encode")), iv,
                   json_array_size(json_object_get(g, "invalid_utf8")), dc,
                   json_array_size(dcases), ch,
                   json_array_size(json_object_get(g, "chat")));
        }
        dpep_tok_free(t);
        json_decref(g);
        char rm[200];
        snprintf(rm, sizeof rm, "rm -rf '%s'", tmp);
        if (system(rm) != 0) printf("note: could not remove %s\n", tmp);
    }
    json_decref(convs);
    return dpep_test_summary();
}
