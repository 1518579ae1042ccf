/* test_chat.c — the native DeepSeek chat templates against goldens rendered
 * by transformers' Jinja (tests/text/chat_golden/, see make_chat_golden.py).
 *
 * Usage: test_chat SRC_DIR
 *
 * For each of deepseek-v2, -v2.5, -v3, -v3.1, -r1 it reads
 * SRC_DIR/tests/text/chat_golden/NAME.tokenizer_config.json (the Hub file:
 * chat_template, bos_token, eos_token), checks that dpep_chat_detect names
 * the template, renders every golden conversation of NAME.json and compares
 * byte for byte, and checks that each golden error input is DPEP_ERR_INVALID
 * with a message naming the field where Jinja raises. Then: detection of the
 * other newline spelling and of padded text, refusal of changed templates
 * and of a ChatML one, NONE for NULL/"", and the API's own error cases. */
#include "dpep_text.h"

#include "../dpep_test.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define N_TEMPLATES 5
static const char *const k_names[N_TEMPLATES] = {"deepseek-v2", "deepseek-v2.5", "deepseek-v3",
                                                 "deepseek-v3.1", "deepseek-r1"};
static const dpep_chat_kind k_kinds[N_TEMPLATES] = {
    DPEP_CHAT_DEEPSEEK_V2, DPEP_CHAT_DEEPSEEK_V25, DPEP_CHAT_DEEPSEEK_V3, DPEP_CHAT_DEEPSEEK_V31,
    DPEP_CHAT_DEEPSEEK_R1};

/* One template's inputs from its tokenizer_config.json (strings owned by
 * the json_t). */
typedef struct tmpl_cfg {
    json_t *root;
    const char *chat_template;
    const char *bos, *eos;
} tmpl_cfg;

/* A conversation built from golden JSON; strings point into the json_t. */
typedef struct conv {
    dpep_chat_msg *msgs;
    dpep_chat_tool_call *calls;
    int n;
    dpep_chat_opts opt;
} conv;

static json_t *load_json(const char *dir, const char *name, const char *suffix)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/tests/text/chat_golden/%s%s", dir, name, suffix);
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    EXPECT(j != NULL, "%s: %s (line %d)", path, err.text, err.line);
    return j;
}

/* bos_token/eos_token are a string or an AddedToken object {"content": ...}. */
static const char *token_text(json_t *cfg, const char *key)
{
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    return json_string_value(v);
}

static bool load_cfg(const char *dir, const char *name, tmpl_cfg *t)
{
    t->root = load_json(dir, name, ".tokenizer_config.json");
    if (!t->root) return false;
    t->chat_template = json_string_value(json_object_get(t->root, "chat_template"));
    t->bos = token_text(t->root, "bos_token");
    t->eos = token_text(t->root, "eos_token");
    EXPECT(t->chat_template && t->bos && t->eos, "%s: chat_template/bos/eos missing", name);
    return t->chat_template != NULL;
}

/* A string field or NULL (absent or null). */
static const char *str_or_null(json_t *obj, const char *key)
{
    return json_string_value(json_object_get(obj, key));
}

static void conv_free(conv *c)
{
    free(c->msgs);
    free(c->calls);
    memset(c, 0, sizeof *c);
}

/* Fills c from a golden case: messages (role, content string|null,
 * tool_calls array when present, prefix), add_generation_prompt, thinking.
 * The golden always spells content (null or a string). */
static bool conv_from_json(json_t *cs, conv *c)
{
    json_t *ms = json_object_get(cs, "messages");
    memset(c, 0, sizeof *c);
    if (!json_is_array(ms)) return false;
    size_t n_calls = 0, i, j;
    json_t *m, *tc;
    json_array_foreach(ms, i, m) n_calls += json_array_size(json_object_get(m, "tool_calls"));
    c->n = (int)json_array_size(ms);
    c->msgs = calloc((size_t)c->n + 1, sizeof *c->msgs);
    c->calls = calloc(n_calls + 1, sizeof *c->calls);
    if (!c->msgs || !c->calls) return false;
    size_t next = 0;
    json_array_foreach(ms, i, m) {
        dpep_chat_msg *d = &c->msgs[i];
        json_t *content = json_object_get(m, "content");
        if (!content || !(json_is_string(content) || json_is_null(content))) return false;
        d->role = str_or_null(m, "role");
        d->content = json_string_value(content);
        d->prefix = json_is_true(json_object_get(m, "prefix"));
        json_t *calls = json_object_get(m, "tool_calls");
        if (!calls) continue;
        if (!json_is_array(calls)) return false;
        d->has_tool_calls = true;
        d->tool_calls = &c->calls[next];
        d->n_tool_calls = (int)json_array_size(calls);
        json_array_foreach(calls, j, tc) {
            json_t *fn = json_object_get(tc, "function");
            c->calls[next].type = str_or_null(tc, "type");
            c->calls[next].name = str_or_null(fn, "name");
            c->calls[next].arguments = str_or_null(fn, "arguments");
            next++;
        }
    }
    c->opt.add_generation_prompt = json_is_true(json_object_get(cs, "add_generation_prompt"));
    c->opt.thinking = json_is_true(json_object_get(cs, "thinking"));
    return true;
}

/* Prints where got and want first differ. */
static void show_diff(const char *what, const char *got, size_t got_len, const char *want,
                      size_t want_len)
{
    size_t k = 0;
    while (k < got_len && k < want_len && got[k] == want[k]) k++;
    size_t from = k > 40 ? k - 40 : 0;
    printf("  %s: first difference at byte %zu (got %zu bytes, want %zu)\n", what, k, got_len,
           want_len);
    printf("  got:  ...%.*s\n", (int)(got_len - from < 120 ? got_len - from : 120), got + from);
    printf("  want: ...%.*s\n", (int)(want_len - from < 120 ? want_len - from : 120), want + from);
}

static void check_case(const char *name, dpep_chat_kind kind, const tmpl_cfg *t, json_t *cs)
{
    const char *cname = str_or_null(cs, "name");
    const char *want = str_or_null(cs, "expected");
    conv c;
    bool ok = conv_from_json(cs, &c) && cname && want;
    EXPECT(ok, "%s/%s: malformed golden case", name, cname ? cname : "?");
    if (ok) {
        dpep_diag diag;
        dpep_diag_init(&diag);
        char *got = NULL;
        size_t len = 0;
        dpep_status st =
            dpep_chat_render_kind(kind, t->bos, t->eos, c.msgs, c.n, &c.opt, &got, &len, &diag);
        EXPECT(st == DPEP_OK, "%s/%s: render failed: %s", name, cname,
               diag.n ? diag.item[0].msg : dpep_status_string(st));
        if (st == DPEP_OK) {
            size_t want_len = json_string_length(json_object_get(cs, "expected"));
            bool same = len == want_len && memcmp(got, want, len) == 0 && got[len] == '\0';
            EXPECT(same, "%s/%s: rendering differs from the golden", name, cname);
            if (!same) show_diff(cname, got, len, want, want_len);
        }
        free(got);
    }
    conv_free(&c);
}

static void check_error(const char *name, dpep_chat_kind kind, const tmpl_cfg *t, json_t *cs)
{
    const char *cname = str_or_null(cs, "name");
    const char *field = str_or_null(cs, "field");
    conv c;
    bool ok = conv_from_json(cs, &c) && cname && field;
    EXPECT(ok, "%s/%s: malformed golden error case", name, cname ? cname : "?");
    if (ok) {
        dpep_diag diag;
        dpep_diag_init(&diag);
        char *got = (char *)"untouched";
        size_t len = 12345;
        dpep_status st =
            dpep_chat_render_kind(kind, t->bos, t->eos, c.msgs, c.n, &c.opt, &got, &len, &diag);
        EXPECT(st == DPEP_ERR_INVALID, "%s/%s: Jinja raises (%s) but dpep returned %s", name,
               cname, str_or_null(cs, "jinja_error"), dpep_status_string(st));
        EXPECT(dpep_diag_find(&diag, field) != NULL, "%s/%s: no error naming %s (got: %s)",
               name, cname, field, diag.n ? diag.item[0].msg : "nothing");
        EXPECT(strcmp(got, "untouched") == 0 && len == 12345, "%s/%s: output written on error",
               name, cname);
        if (st == DPEP_OK) free(got);
    }
    conv_free(&c);
}

/* Detection and every golden of one template; counts go to n_cases and n_err. */
static void check_template(const char *dir, int k, tmpl_cfg *t, int *n_cases, int *n_err)
{
    const char *name = k_names[k];
    *n_cases = *n_err = 0;
    if (!load_cfg(dir, name, t)) return;
    dpep_chat_kind kind = dpep_chat_detect(t->chat_template);
    EXPECT(kind == k_kinds[k], "%s: detected as %s", name, dpep_chat_kind_name(kind));
    EXPECT(strcmp(dpep_chat_kind_name(k_kinds[k]), name) == 0, "%s: kind name %s", name,
           dpep_chat_kind_name(k_kinds[k]));
    json_t *g = load_json(dir, name, ".json");
    if (!g) return;
    EXPECT(json_is_string(json_object_get(g, "template")) &&
               strcmp(str_or_null(g, "template"), name) == 0,
           "%s.json: template is not %s", name, name);
    size_t i;
    json_t *cs;
    json_array_foreach(json_object_get(g, "cases"), i, cs) {
        check_case(name, k_kinds[k], t, cs);
        (*n_cases)++;
    }
    json_array_foreach(json_object_get(g, "errors"), i, cs) {
        check_error(name, k_kinds[k], t, cs);
        (*n_err)++;
    }
    json_decref(g);
}

/* Copy of s with every real newline written as backslash-n and every
 * backslash-n as a real newline (the templates' other spelling). */
static char *swap_newline_spelling(const char *s)
{
    char *r = malloc(2 * strlen(s) + 1), *w = r;
    if (!r) return NULL;
    for (; *s; s++) {
        if (*s == '\n') {
            *w++ = '\\';
            *w++ = 'n';
        } else if (s[0] == '\\' && s[1] == 'n') {
            *w++ = '\n';
            s++;
        } else {
            *w++ = *s;
        }
    }
    *w = '\0';
    return r;
}

/* Spellings that must still be recognized, and edits that must not be. */
static void check_detect_variants(const tmpl_cfg *t, int k)
{
    const char *name = k_names[k], *tx = t->chat_template;
    size_t n = strlen(tx);
    char *buf = malloc(n + 16);
    char *sw = swap_newline_spelling(tx);
    if (!buf || !sw) {
        EXPECT(0, "out of memory");
        free(buf);
        free(sw);
        return;
    }
    EXPECT(dpep_chat_detect(sw) == k_kinds[k], "%s: other newline spelling not recognized", name);
    /* a single trailing newline is dropped by Jinja (same template); any
     * other padding is printed, so it is another template */
    snprintf(buf, n + 16, "%s\n", tx);
    EXPECT(dpep_chat_detect(buf) == k_kinds[k], "%s: trailing newline not recognized", name);
    snprintf(buf, n + 16, " %s", tx);
    EXPECT(dpep_chat_detect(buf) == DPEP_CHAT_UNSUPPORTED, "%s: leading space accepted", name);
    snprintf(buf, n + 16, "%s\n\n", tx);
    EXPECT(dpep_chat_detect(buf) == DPEP_CHAT_UNSUPPORTED, "%s: two trailing newlines accepted", name);
    /* One byte changed (start, middle, inside a special token, end), one
     * removed, one appended, CRLF newlines: each a different template. */
    size_t at[4] = {0, n / 2, (size_t)(strstr(tx, "end") - tx), n - 1};
    for (int i = 0; i < 4; i++) {
        memcpy(buf, tx, n + 1);
        buf[at[i]] = buf[at[i]] == 'x' ? 'y' : 'x';
        EXPECT(dpep_chat_detect(buf) == DPEP_CHAT_UNSUPPORTED, "%s: byte %zu changed: detected",
               name, at[i]);
    }
    memcpy(buf, tx, n - 1);
    buf[n - 1] = '\0';
    EXPECT(dpep_chat_detect(buf) == DPEP_CHAT_UNSUPPORTED, "%s: last byte cut: detected", name);
    snprintf(buf, n + 16, "%s}", tx);
    EXPECT(dpep_chat_detect(buf) == DPEP_CHAT_UNSUPPORTED, "%s: byte appended: detected", name);
    const char *nl = strchr(tx, '\n') ? strchr(tx, '\n') : strstr(tx, "\\n");
    if (nl) {
        size_t p = (size_t)(nl - tx);
        snprintf(buf, n + 16, "%.*s\r%s", (int)p, tx, tx + p);
        EXPECT(dpep_chat_detect(buf) == DPEP_CHAT_UNSUPPORTED, "%s: CR added: detected", name);
    }
    free(buf);
    free(sw);
}

static const char k_chatml[] =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}";

/* Detection outside the five, and render errors of the API itself. */
static void check_api(const tmpl_cfg *t)
{
    EXPECT(dpep_chat_detect(NULL) == DPEP_CHAT_NONE, "NULL template not NONE");
    EXPECT(dpep_chat_detect("") == DPEP_CHAT_NONE, "empty template not NONE");
    EXPECT(dpep_chat_detect(k_chatml) == DPEP_CHAT_UNSUPPORTED, "ChatML template not UNSUPPORTED");
    EXPECT(dpep_chat_detect("{{ bos_token }}") == DPEP_CHAT_UNSUPPORTED, "tiny template");

    dpep_chat_msg user = {.role = "user", .content = "hi"};
    dpep_chat_msg asst = {.role = "assistant", .content = "yo"};
    dpep_chat_msg two[2] = {user, asst};
    dpep_chat_opts gen = {.add_generation_prompt = true};
    dpep_diag d;
    char *out = (char *)"untouched";
    size_t len = 7;
    const dpep_chat_kind refused[2] = {DPEP_CHAT_NONE, DPEP_CHAT_UNSUPPORTED};
    for (int k = 0; k < 2; k++) {
        dpep_diag_init(&d);
        dpep_status st =
            dpep_chat_render_kind(refused[k], "<s>", "</s>", &user, 1, &gen, &out, &len, &d);
        EXPECT(st == DPEP_ERR_UNSUPPORTED && d.n_errors == 1, "render of %s: %d",
               dpep_chat_kind_name(refused[k]), (int)st);
    }
    for (int k = 0; k < N_TEMPLATES; k++) {
        dpep_diag_init(&d);
        dpep_status st =
            dpep_chat_render_kind(k_kinds[k], t->bos, t->eos, &user, 0, &gen, &out, &len, &d);
        EXPECT(st == DPEP_ERR_INVALID && dpep_diag_find(&d, "empty conversation"),
               "%s: empty conversation accepted", k_names[k]);
    }
    EXPECT(strcmp(out, "untouched") == 0 && len == 7, "output written on error");

    /* V2 appends eos_token to assistant messages: without one Jinja raises. */
    dpep_diag_init(&d);
    EXPECT(dpep_chat_render_kind(DPEP_CHAT_DEEPSEEK_V2, "<s>", NULL, two, 2, NULL, &out, &len,
                                 &d) == DPEP_ERR_INVALID &&
               dpep_diag_find(&d, "eos_token"),
           "V2 without eos accepted");
    /* No bos: nothing printed; no opts: all false; len may be NULL. */
    char *v2 = NULL;
    EXPECT(dpep_chat_render_kind(DPEP_CHAT_DEEPSEEK_V2, NULL, "</s>", two, 2, NULL, &v2, NULL,
                                 &d) == DPEP_OK,
           "V2 without bos failed");
    EXPECT(v2 && strcmp(v2, "User: hi\n\nAssistant: yo</s>") == 0, "V2 without bos: %s",
           v2 ? v2 : "NULL");
    free(v2);

    /* tool_calls present with n > 0 but no array: a caller bug, refused. */
    dpep_chat_msg bad = {.role = "assistant", .has_tool_calls = true, .n_tool_calls = 1};
    dpep_diag_init(&d);
    EXPECT(dpep_chat_render_kind(DPEP_CHAT_DEEPSEEK_V3, "<s>", "</s>", &bad, 1, NULL, &out, &len,
                                 &d) == DPEP_ERR_INVALID &&
               dpep_diag_find(&d, "messages[0].tool_calls"),
           "tool_calls NULL with n_tool_calls 1 accepted");

    for (int k = DPEP_CHAT_NONE; k <= DPEP_CHAT_UNSUPPORTED; k++)
        for (int j = k + 1; j <= DPEP_CHAT_UNSUPPORTED; j++)
            EXPECT(strcmp(dpep_chat_kind_name((dpep_chat_kind)k),
                          dpep_chat_kind_name((dpep_chat_kind)j)) != 0,
                   "kind names %d and %d equal", k, j);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SRC_DIR\n", argv[0]);
        return 2;
    }
    tmpl_cfg t[N_TEMPLATES] = {{0}};
    int n_cases[N_TEMPLATES], n_err[N_TEMPLATES];
    for (int k = 0; k < N_TEMPLATES; k++) {
        check_template(argv[1], k, &t[k], &n_cases[k], &n_err[k]);
        if (t[k].chat_template) check_detect_variants(&t[k], k);
        EXPECT(n_cases[k] >= 20, "%s: only %d golden renderings", k_names[k], n_cases[k]);
        EXPECT(n_cases[k] + n_err[k] == n_cases[0] + n_err[0],
               "%s: %d conversations, %s has %d", k_names[k], n_cases[k] + n_err[k], k_names[0],
               n_cases[0] + n_err[0]);
        printf("%s: %d conversations (%d rendered, %d Jinja errors)\n", k_names[k],
               n_cases[k] + n_err[k], n_cases[k], n_err[k]);
    }
    /* No two known templates may be the same text. */
    for (int k = 0; k < N_TEMPLATES; k++)
        for (int j = k + 1; j < N_TEMPLATES; j++)
            if (t[k].chat_template && t[j].chat_template)
                EXPECT(strcmp(t[k].chat_template, t[j].chat_template) != 0, "%s == %s",
                       k_names[k], k_names[j]);
    if (t[0].root) check_api(&t[0]);
    for (int k = 0; k < N_TEMPLATES; k++) json_decref(t[k].root);
    return dpep_test_summary();
}
