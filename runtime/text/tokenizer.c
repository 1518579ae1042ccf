/* tokenizer.c — loading a Hugging Face tokenizer: tokenizer.json (BPE model,
 * added tokens, normalizer, pre-tokenizer, decoder, post-processor) and
 * tokenizer_config.json (bos/eos, add_bos_token/add_eos_token, chat
 * template). Every unsupported or malformed part is named with the file and
 * the JSON path of the field. */
#include "text_internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ------------------------------------------------------------------------ */
/* The GPT-2 byte alphabet.                                                  */
/* ------------------------------------------------------------------------ */
static uint16_t g_b2c[256];
static int16_t g_c2b[0x144];
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

/* Printable bytes map to themselves; the others to 256, 257, ... in byte
 * order (GPT-2's bytes_to_unicode). */
static void byte_table_init(void)
{
    int n = 0;
    for (int i = 0; i < 0x144; i++) g_c2b[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        g_b2c[b] = (uint16_t)(keep ? b : 256 + n++);
        g_c2b[g_b2c[b]] = (int16_t)b;
    }
}

static const uint16_t *b2c(void)
{
    pthread_once(&g_once, byte_table_init);
    return g_b2c;
}

uint32_t dpep_tok_byte_to_cp(int b)
{
    return b2c()[b & 0xFF];
}

int dpep_tok_cp_to_byte(uint32_t cp)
{
    pthread_once(&g_once, byte_table_init);
    return cp < 0x144 ? g_c2b[cp] : -1;
}

uint64_t dpep_tok_hash(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* ------------------------------------------------------------------------ */
/* Maps.                                                                     */
/* ------------------------------------------------------------------------ */
static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

int32_t dpep_tok_vocab_find(const dpep_tokenizer *t, const char *s, size_t n)
{
    const tok_strmap *m = &t->vocab;
    size_t i = dpep_tok_hash(s, n) & (m->cap - 1);
    for (;;) {
        uint32_t v = m->slot[i];
        if (!v) return -1;
        int32_t id = (int32_t)v - 1;
        if (t->tok_len[id] == n && memcmp(t->tok[id], s, n) == 0) return id;
        i = (i + 1) & (m->cap - 1);
    }
}

static void vocab_insert(dpep_tokenizer *t, int32_t id)
{
    tok_strmap *m = &t->vocab;
    size_t i = dpep_tok_hash(t->tok[id], t->tok_len[id]) & (m->cap - 1);
    while (m->slot[i]) i = (i + 1) & (m->cap - 1);
    m->slot[i] = (uint32_t)id + 1;
}

static void merge_insert(tok_pairmap *m, int32_t a, int32_t b, int32_t rank, int32_t merged)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & (m->cap - 1);
    while (m->key[i] && m->key[i] != key) i = (i + 1) & (m->cap - 1);
    if (m->key[i] == key) return; /* a repeated merge keeps its first rank */
    m->key[i] = key;
    m->rank[i] = rank;
    m->merged[i] = merged;
}

/* ------------------------------------------------------------------------ */
/* Loading helpers.                                                          */
/* ------------------------------------------------------------------------ */
typedef struct loadctx {
    dpep_tokenizer *t;
    dpep_diag *diag;
    const char *file;
} loadctx;

static dpep_status bad(loadctx *c, const char *field, const char *fmt, const char *arg)
{
    char msg[400];
    snprintf(msg, sizeof msg, fmt, arg ? arg : "");
    dpep_diag_add(c->diag, DPEP_DIAG_ERROR, "%s: %s: %s", c->file, field, msg);
    return DPEP_ERR_INVALID;
}

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_string(v) ? json_string_value(v) : NULL;
}

static bool jbool(json_t *o, const char *key, bool def)
{
    json_t *v = json_object_get(o, key);
    return json_is_boolean(v) ? json_is_true(v) : def;
}

/* The model's vocab: ids must be distinct, in [0, 2^24). */
static dpep_status load_vocab(loadctx *c, json_t *vocab, json_t *added, size_t *bytes)
{
    dpep_tokenizer *t = c->t;
    int32_t max_id = -1;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= (1 << 24))
            return bad(c, "model.vocab", "token %s: id must be an integer in [0, 2^24)", key);
        if (json_integer_value(v) > max_id) max_id = (int32_t)json_integer_value(v);
        *bytes += strlen(key) + 1;
    }
    t->n_vocab = max_id + 1;
    size_t i;
    json_array_foreach(added, i, v) {
        json_t *id = json_object_get(v, "id");
        const char *content = jstr(v, "content");
        if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= (1 << 24) ||
            !content)
            return bad(c, "added_tokens", "entry %s: needs an integer id in [0, 2^24) and a content "
                       "string", content ? content : "?");
        if (json_integer_value(id) > max_id) max_id = (int32_t)json_integer_value(id);
        *bytes += strlen(content) + 1;
    }
    t->n_ids = max_id + 1;
    return DPEP_OK;
}

static dpep_status fill_tokens(loadctx *c, json_t *vocab, json_t *added, size_t bytes)
{
    dpep_tokenizer *t = c->t;
    t->tok = calloc((size_t)t->n_ids, sizeof *t->tok);
    t->tok_len = calloc((size_t)t->n_ids, sizeof *t->tok_len);
    t->is_special = calloc((size_t)t->n_ids, sizeof *t->is_special);
    t->dec = calloc((size_t)t->n_ids, sizeof *t->dec);
    t->dec_len = calloc((size_t)t->n_ids, sizeof *t->dec_len);
    t->strings = malloc(bytes + 1);
    t->vocab.cap = pow2_at_least((size_t)t->n_ids * 2);
    t->vocab.slot = calloc(t->vocab.cap, sizeof *t->vocab.slot);
    if (!t->tok || !t->tok_len || !t->is_special || !t->dec || !t->dec_len || !t->strings ||
        !t->vocab.slot)
        return DPEP_ERR_NOMEM;
    char *p = t->strings;
    const char *key;
    json_t *v;
    json_object_foreach(vocab, key, v) {
        int32_t id = (int32_t)json_integer_value(v);
        if (t->tok[id]) return bad(c, "model.vocab", "id of %s is used twice", key);
        size_t n = strlen(key);
        memcpy(p, key, n + 1);
        t->tok[id] = p;
        t->tok_len[id] = n;
        p += n + 1;
        vocab_insert(t, id);
    }
    size_t i;
    json_array_foreach(added, i, v) {
        int32_t id = (int32_t)json_integer_value(json_object_get(v, "id"));
        const char *content = jstr(v, "content");
        size_t n = strlen(content);
        memcpy(p, content, n + 1);
        if (!t->tok[id]) { /* an added token may also be a vocab entry */
            t->tok[id] = p;
            t->tok_len[id] = n;
        }
        t->dec[id] = p; /* decoding: the added token's content wins */
        t->dec_len[id] = n;
        p += n + 1;
    }
    for (int id = 0; id < t->n_ids; id++)
        if (!t->dec[id] && t->tok[id]) {
            t->dec[id] = t->tok[id];
            t->dec_len[id] = t->tok_len[id];
        }
    return DPEP_OK;
}

static dpep_status load_merges(loadctx *c, json_t *merges)
{
    dpep_tokenizer *t = c->t;
    size_t n = json_array_size(merges);
    t->merges.cap = pow2_at_least(n * 2 + 1);
    t->merges.key = calloc(t->merges.cap, sizeof *t->merges.key);
    t->merges.rank = malloc(t->merges.cap * sizeof *t->merges.rank);
    t->merges.merged = malloc(t->merges.cap * sizeof *t->merges.merged);
    if (!t->merges.key || !t->merges.rank || !t->merges.merged) return DPEP_ERR_NOMEM;
    char buf[1024];
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(merges, i);
        const char *a = NULL, *b = NULL;
        size_t la = 0, lb = 0;
        if (json_is_string(m)) { /* "a b" */
            const char *s = json_string_value(m), *sp = strchr(s, ' ');
            if (!sp || strchr(sp + 1, ' ')) return bad(c, "model.merges", "entry \"%s\" is not two tokens", s);
            a = s, la = (size_t)(sp - s), b = sp + 1, lb = strlen(b);
        } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
                   json_is_string(json_array_get(m, 1))) { /* ["a", "b"] */
            a = json_string_value(json_array_get(m, 0)), la = strlen(a);
            b = json_string_value(json_array_get(m, 1)), lb = strlen(b);
        } else {
            return bad(c, "model.merges", "entry %s is neither \"a b\" nor [\"a\", \"b\"]", "");
        }
        if (la + lb >= sizeof buf) return bad(c, "model.merges", "entry too long%s", "");
        memcpy(buf, a, la);
        memcpy(buf + la, b, lb);
        int32_t ia = dpep_tok_vocab_find(t, a, la), ib = dpep_tok_vocab_find(t, b, lb);
        int32_t im = dpep_tok_vocab_find(t, buf, la + lb);
        if (ia < 0 || ib < 0 || im < 0) {
            buf[la + lb] = '\0';
            return bad(c, "model.merges", "merge into \"%s\" names a token not in model.vocab", buf);
        }
        merge_insert(&t->merges, ia, ib, (int32_t)i, im);
    }
    return DPEP_OK;
}

static dpep_status load_model(loadctx *c, json_t *root)
{
    json_t *model = json_object_get(root, "model");
    if (!json_is_object(model)) return bad(c, "model", "missing (expected an object)%s", "");
    const char *type = jstr(model, "type");
    if (!type || strcmp(type, "BPE") != 0)
        return bad(c, "model.type", "%s is not supported (expected BPE)", type ? type : "missing");
    const char *cont = jstr(model, "continuing_subword_prefix"), *suf = jstr(model, "end_of_word_suffix");
    if ((cont && *cont) || (suf && *suf))
        return bad(c, "model", "continuing_subword_prefix / end_of_word_suffix are not supported%s", "");
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && json_number_value(dropout) != 0.0)
        return bad(c, "model.dropout", "BPE dropout is not supported%s", "");
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab)) return bad(c, "model.vocab", "missing (expected an object)%s", "");
    if (!json_is_array(merges)) return bad(c, "model.merges", "missing (expected an array)%s", "");
    if (added && !json_is_array(added)) return bad(c, "added_tokens", "expected an array%s", "");
    json_t *empty = json_array();
    if (!added) added = empty;
    size_t bytes = 0;
    dpep_status st = load_vocab(c, vocab, added, &bytes);
    if (st == DPEP_OK) st = fill_tokens(c, vocab, added, bytes);
    if (st == DPEP_OK) st = load_merges(c, merges);
    json_decref(empty);
    c->t->ignore_merges = jbool(model, "ignore_merges", false);
    c->t->byte_fallback = jbool(model, "byte_fallback", false);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Added tokens.                                                             */
/* ------------------------------------------------------------------------ */
/* Sorts a first-byte list longest token first (stable: equal lengths keep
 * file order); lists are short, insertion sort. */
static void sort_by_len(int16_t *v, int k, const tok_added *a)
{
    for (int i = 1; i < k; i++) {
        int16_t x = v[i];
        int j = i;
        while (j > 0 && a[v[j - 1]].len < a[x].len) {
            v[j] = v[j - 1];
            j--;
        }
        v[j] = x;
    }
}

static dpep_status load_added(loadctx *c, json_t *root)
{
    dpep_tokenizer *t = c->t;
    json_t *added = json_object_get(root, "added_tokens");
    size_t n = json_array_size(added);
    if (n > 32000) return bad(c, "added_tokens", "more than 32000 entries%s", "");
    t->added = calloc(n ? n : 1, sizeof *t->added);
    if (!t->added) return DPEP_ERR_NOMEM;
    int count[256] = {0};
    for (size_t i = 0; i < n; i++) {
        json_t *v = json_array_get(added, i);
        tok_added *a = &t->added[t->n_added];
        const char *content = jstr(v, "content");
        if (!*content) continue; /* an empty token never matches */
        a->content = strdup(content);
        if (!a->content) return DPEP_ERR_NOMEM;
        a->len = strlen(content);
        a->id = (int32_t)json_integer_value(json_object_get(v, "id"));
        a->special = jbool(v, "special", false);
        a->lstrip = jbool(v, "lstrip", false);
        a->rstrip = jbool(v, "rstrip", false);
        a->single_word = jbool(v, "single_word", false);
        a->normalized = jbool(v, "normalized", !a->special);
        t->is_special[a->id] = a->special;
        count[(unsigned char)a->content[0]]++;
        t->n_added++;
    }
    for (int b = 0; b < 256; b++) {
        if (!count[b]) continue;
        t->added_first[b] = malloc(sizeof(int16_t) * (size_t)(count[b] + 1));
        if (!t->added_first[b]) return DPEP_ERR_NOMEM;
        int k = 0;
        for (int i = 0; i < t->n_added; i++)
            if ((unsigned char)t->added[i].content[0] == b) t->added_first[b][k++] = (int16_t)i;
        sort_by_len(t->added_first[b], k, t->added);
        t->added_first[b][k] = -1;
    }
    return DPEP_OK;
}

/* ------------------------------------------------------------------------ */
/* Normalizer, pre-tokenizer, decoder, post-processor.                       */
/* ------------------------------------------------------------------------ */
static dpep_status add_normalizer(loadctx *c, json_t *n, int depth)
{
    dpep_tokenizer *t = c->t;
    if (!n || json_is_null(n)) return DPEP_OK;
    const char *type = jstr(n, "type");
    if (!type) return bad(c, "normalizer.type", "missing%s", "");
    if (strcmp(type, "Sequence") == 0 && depth < 4) {
        json_t *list = json_object_get(n, "normalizers");
        size_t i;
        json_t *x;
        json_array_foreach(list, i, x) DPEP_TRY(add_normalizer(c, x, depth + 1));
        return DPEP_OK;
    }
    static const struct { const char *name; tok_norm_kind kind; } known[] = {
        {"NFC", TOK_NORM_NFC}, {"NFKC", TOK_NORM_NFKC}, {"NFD", TOK_NORM_NFD},
        {"NFKD", TOK_NORM_NFKD}, {"Lowercase", TOK_NORM_LOWERCASE}};
    for (size_t k = 0; k < sizeof known / sizeof known[0]; k++) {
        if (strcmp(type, known[k].name) != 0) continue;
        if (t->n_norm == TOK_MAX_STEPS) return bad(c, "normalizer", "too many steps%s", "");
        t->norm[t->n_norm++] = known[k].kind;
        return DPEP_OK;
    }
    return bad(c, "normalizer.type", "%s is not supported (expected Sequence, NFC, NFKC, NFD, "
               "NFKD or Lowercase)", type);
}

/* GPT-2's pre-tokenizer regex (ByteLevel with use_regex). */
static const char k_gpt2_re[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

static dpep_status compile_re(loadctx *c, const char *pattern, size_t len, bool literal,
                              pcre2_code **out)
{
    int err = 0;
    PCRE2_SIZE off = 0;
    /* UTF + UCP: \s, \d, \w and the POSIX classes are Unicode-aware, as in
     * Oniguruma (which HF tokenizers uses); MULTILINE: `$` and `^` match at
     * line ends, as Oniguruma's Ruby syntax does. */
    uint32_t opts = literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pattern, len, opts, &err, &off, NULL);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        char m[400];
        snprintf(m, sizeof m, "regex does not compile at offset %zu: %s", (size_t)off, (char *)msg);
        return bad(c, "pre_tokenizer.pattern", "%s", m);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: falls back to the interpreter */
    *out = re;
    return DPEP_OK;
}

static dpep_status add_split(loadctx *c, json_t *p, tok_pre *s)
{
    json_t *pat = json_object_get(p, "pattern");
    const char *re = jstr(pat, "Regex"), *lit = jstr(pat, "String");
    if (!re && !lit) return bad(c, "pre_tokenizer.pattern", "expected {\"Regex\": ...} or {\"String\": ...}%s", "");
    const char *beh = jstr(p, "behavior");
    static const char *const names[] = {"Isolated", "Removed", "MergedWithPrevious", "MergedWithNext",
                                        "Contiguous"};
    int k = -1;
    for (int i = 0; beh && i < 5; i++)
        if (strcmp(beh, names[i]) == 0) k = i;
    if (k < 0)
        return bad(c, "pre_tokenizer.behavior", "%s is not one of Isolated, Removed, "
                   "MergedWithPrevious, MergedWithNext, Contiguous", beh ? beh : "missing");
    s->kind = TOK_PRE_SPLIT;
    s->behavior = (tok_split_behavior)k;
    s->invert = jbool(p, "invert", false);
    json_t *pv = json_object_get(pat, re ? "Regex" : "String");
    return compile_re(c, json_string_value(pv), json_string_length(pv), !re, &s->re);
}

static dpep_status add_pre(loadctx *c, json_t *p, int depth)
{
    dpep_tokenizer *t = c->t;
    if (!p || json_is_null(p)) return DPEP_OK;
    const char *type = jstr(p, "type");
    if (!type) return bad(c, "pre_tokenizer.type", "missing%s", "");
    if (strcmp(type, "Sequence") == 0 && depth < 4) {
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(p, "pretokenizers"), i, x) DPEP_TRY(add_pre(c, x, depth + 1));
        return DPEP_OK;
    }
    if (t->n_pre == TOK_MAX_STEPS) return bad(c, "pre_tokenizer", "too many steps%s", "");
    if (t->n_pre > 0 && t->pre[t->n_pre - 1].kind == TOK_PRE_BYTELEVEL)
        return bad(c, "pre_tokenizer", "a %s step after ByteLevel is not supported", type);
    tok_pre *s = &t->pre[t->n_pre];
    memset(s, 0, sizeof *s);
    if (strcmp(type, "Split") == 0) {
        DPEP_TRY(add_split(c, p, s));
    } else if (strcmp(type, "Digits") == 0) {
        /* Rust's char::is_numeric is \p{N}; individual digits are isolated
         * one by one, else runs of them */
        s->kind = TOK_PRE_DIGITS;
        s->individual_digits = jbool(p, "individual_digits", false);
        s->behavior = TOK_SPLIT_ISOLATED;
        const char *re = s->individual_digits ? "\\p{N}" : "\\p{N}+";
        DPEP_TRY(compile_re(c, re, strlen(re), false, &s->re));
    } else if (strcmp(type, "ByteLevel") == 0) {
        s->kind = TOK_PRE_BYTELEVEL;
        s->add_prefix_space = jbool(p, "add_prefix_space", true);
        if (jbool(p, "use_regex", true)) DPEP_TRY(compile_re(c, k_gpt2_re, sizeof k_gpt2_re - 1, false, &s->re));
    } else {
        return bad(c, "pre_tokenizer.type", "%s is not supported (expected Sequence, Split, Digits or "
                   "ByteLevel)", type);
    }
    t->n_pre++;
    return DPEP_OK;
}

static dpep_status check_decoder(loadctx *c, json_t *d)
{
    if (!d || json_is_null(d)) return bad(c, "decoder", "missing (expected ByteLevel)%s", "");
    const char *type = jstr(d, "type");
    if (type && strcmp(type, "ByteLevel") == 0) return DPEP_OK;
    return bad(c, "decoder.type", "%s is not supported (expected ByteLevel)", type ? type : "missing");
}

/* TemplateProcessing's "single": the ids before and after $A. */
static dpep_status load_template(loadctx *c, json_t *p)
{
    dpep_tokenizer *t = c->t;
    json_t *single = json_object_get(p, "single"), *special = json_object_get(p, "special_tokens");
    bool seen_a = false;
    size_t i;
    json_t *x;
    json_array_foreach(single, i, x) {
        if (json_object_get(x, "Sequence")) {
            seen_a = true;
            continue;
        }
        const char *name = jstr(json_object_get(x, "SpecialToken"), "id");
        json_t *ids = json_object_get(json_object_get(special, name ? name : ""), "ids");
        if (!name || json_array_size(ids) != 1)
            return bad(c, "post_processor.single", "special token %s without one id", name);
        json_int_t id = json_integer_value(json_array_get(ids, 0));
        if (!json_is_integer(json_array_get(ids, 0)) || id < 0 || id >= t->n_ids || !t->tok[id])
            return bad(c, "post_processor.special_tokens", "%s: id is not a token of the vocabulary", name);
        int *n = seen_a ? &t->n_suffix : &t->n_prefix;
        int32_t *arr = seen_a ? t->suffix_ids : t->prefix_ids;
        if (*n == 4) return bad(c, "post_processor.single", "more than 4 special tokens%s", "");
        arr[(*n)++] = (int32_t)id;
    }
    return DPEP_OK;
}

static dpep_status load_post(loadctx *c, json_t *p, bool *template_seen, int depth)
{
    if (!p || json_is_null(p)) return DPEP_OK;
    const char *type = jstr(p, "type");
    if (type && strcmp(type, "Sequence") == 0 && depth < 4) {
        size_t i;
        json_t *x;
        json_array_foreach(json_object_get(p, "processors"), i, x)
            DPEP_TRY(load_post(c, x, template_seen, depth + 1));
        return DPEP_OK;
    }
    if (type && strcmp(type, "ByteLevel") == 0) return DPEP_OK; /* offsets only */
    if (type && strcmp(type, "TemplateProcessing") == 0) {
        *template_seen = true;
        return load_template(c, p);
    }
    return bad(c, "post_processor.type", "%s is not supported (expected ByteLevel, "
               "TemplateProcessing or Sequence)", type ? type : "missing");
}

/* ------------------------------------------------------------------------ */
/* tokenizer_config.json                                                     */
/* ------------------------------------------------------------------------ */
static const char *token_text(json_t *v)
{
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v)) return jstr(v, "content");
    return NULL;
}

static int32_t id_of_text(const dpep_tokenizer *t, const char *s)
{
    if (!s) return -1;
    for (int i = 0; i < t->n_added; i++)
        if (strcmp(t->added[i].content, s) == 0) return t->added[i].id;
    return dpep_tok_vocab_find(t, s, strlen(s));
}

/* root: the parsed tokenizer_config.json, or NULL when there is none. */
static dpep_status load_config(loadctx *c, json_t *root, bool template_seen)
{
    dpep_tokenizer *t = c->t;
    t->bos_id = t->eos_id = -1;
    if (!root) {
        t->bos = strdup("");
        t->eos = strdup("");
        return t->bos && t->eos ? DPEP_OK : DPEP_ERR_NOMEM;
    }
    loadctx cc = {t, c->diag, t->config_path};
    const char *bos = token_text(json_object_get(root, "bos_token"));
    const char *eos = token_text(json_object_get(root, "eos_token"));
    t->bos = strdup(bos ? bos : "");
    t->eos = strdup(eos ? eos : "");
    t->bos_id = id_of_text(t, bos);
    t->eos_id = id_of_text(t, eos);
    dpep_status st = DPEP_OK;
    if (bos && t->bos_id < 0) st = bad(&cc, "bos_token", "%s is not a token of tokenizer.json", bos);
    if (eos && t->eos_id < 0) st = bad(&cc, "eos_token", "%s is not a token of tokenizer.json", eos);
    t->clean_up_spaces = jbool(root, "clean_up_tokenization_spaces", false);
    if (!template_seen) { /* transformers' LlamaTokenizerFast: bos/eos from the flags */
        if (jbool(root, "add_bos_token", false) && t->bos_id >= 0) t->prefix_ids[t->n_prefix++] = t->bos_id;
        if (jbool(root, "add_eos_token", false) && t->eos_id >= 0) t->suffix_ids[t->n_suffix++] = t->eos_id;
    }
    json_t *ct = json_object_get(root, "chat_template");
    const char *tmpl = json_is_string(ct) ? json_string_value(ct) : NULL;
    size_t i;
    json_t *x;
    json_array_foreach(json_is_array(ct) ? ct : NULL, i, x) /* [{name, template}]: "default" */
        if (jstr(x, "name") && strcmp(jstr(x, "name"), "default") == 0) tmpl = jstr(x, "template");
    if (tmpl) t->chat_template = strdup(tmpl);
    t->chat_kind = dpep_chat_detect(tmpl);
    if (!t->bos || !t->eos || (tmpl && !t->chat_template)) return DPEP_ERR_NOMEM;
    return st;
}

/* ------------------------------------------------------------------------ */
/* Load / free.                                                              */
/* ------------------------------------------------------------------------ */
static dpep_status load_json(loadctx *c, json_t *root, json_t *config)
{
    dpep_tokenizer *t = c->t;
    if (!json_is_object(root)) return bad(c, "(top level)", "expected a JSON object%s", "");
    DPEP_TRY(load_model(c, root));
    DPEP_TRY(load_added(c, root));
    DPEP_TRY(add_normalizer(c, json_object_get(root, "normalizer"), 0));
    DPEP_TRY(add_pre(c, json_object_get(root, "pre_tokenizer"), 0));
    DPEP_TRY(check_decoder(c, json_object_get(root, "decoder")));
    if (t->n_pre == 0 || t->pre[t->n_pre - 1].kind != TOK_PRE_BYTELEVEL)
        return bad(c, "pre_tokenizer", "no ByteLevel step (dpep supports byte-level BPE)%s", "");
    bool template_seen = false;
    DPEP_TRY(load_post(c, json_object_get(root, "post_processor"), &template_seen, 0));
    for (int b = 0; b < 256; b++) {
        char u[4];
        int n = dpep_utf8_put(dpep_tok_byte_to_cp(b), u);
        t->byte_id[b] = dpep_tok_vocab_find(t, u, (size_t)n);
    }
    if (config && !json_is_object(config)) {
        loadctx cc = {t, c->diag, t->config_path};
        return bad(&cc, "(top level)", "expected a JSON object%s", "");
    }
    return load_config(c, config, template_seen);
}

static dpep_status json_problem(const char *path, const json_error_t *err, dpep_diag *diag)
{
    if (err->line < 0) /* not opened or not read */
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s", path, err->text);
    else
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d:%d: %s", path, err->line, err->column, err->text);
    return DPEP_ERR_INVALID;
}

/* Parses the JSON file at path into *out; an absent optional file leaves
 * *out NULL. Regular files only: json_load_file would block on a FIFO
 * without a writer and read /dev/zero until memory runs out. */
static dpep_status load_json_file(const char *path, bool optional, json_t **out, dpep_diag *diag)
{
    struct stat sb;
    if (optional && stat(path, &sb) != 0 && errno == ENOENT) return DPEP_OK;
    char why[160];
    FILE *f = dpep_fopen_regular(path, 0, why, sizeof why);
    if (!f) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s", path, why);
        return DPEP_ERR_INVALID;
    }
    json_error_t err;
    *out = json_loadf(f, JSON_REJECT_DUPLICATES, &err);
    fclose(f);
    return *out ? DPEP_OK : json_problem(path, &err, diag);
}

/* Builds a tokenizer from parsed JSON (config may be NULL); owns nothing of
 * the JSON. `name` is the directory shown in messages. */
static dpep_status build(const char *name, json_t *root, json_t *config, dpep_tokenizer **out,
                         dpep_diag *diag)
{
    dpep_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return DPEP_ERR_NOMEM;
    pthread_mutex_init(&t->cache_lock, NULL);
    t->bos_id = t->eos_id = -1;
    snprintf(t->path, sizeof t->path, "%s/tokenizer.json", name);
    snprintf(t->config_path, sizeof t->config_path, "%s/tokenizer_config.json", name);
    loadctx c = {t, diag, t->path};
    dpep_status st = load_json(&c, root, config);
    if (st == DPEP_OK) {
        t->cache = calloc(TOK_CACHE_SLOTS, sizeof *t->cache);
        if (!t->cache) st = DPEP_ERR_NOMEM;
    }
    if (st != DPEP_OK) {
        dpep_tok_free(t);
        return st;
    }
    *out = t;
    return DPEP_OK;
}

dpep_status dpep_tok_load(const char *dir, dpep_tokenizer **out, dpep_diag *diag)
{
    size_t n = strlen(dir) + sizeof "/tokenizer_config.json";
    char *path = malloc(n), *cpath = malloc(n);
    if (!path || !cpath) {
        free(path);
        free(cpath);
        return DPEP_ERR_NOMEM;
    }
    snprintf(path, n, "%s/tokenizer.json", dir);
    snprintf(cpath, n, "%s/tokenizer_config.json", dir);
    json_t *root = NULL, *config = NULL;
    dpep_status st = load_json_file(path, false, &root, diag);
    if (st == DPEP_OK) st = load_json_file(cpath, true, &config, diag);
    if (st == DPEP_OK) st = build(dir, root, config, out, diag);
    json_decref(root);
    json_decref(config);
    free(path);
    free(cpath);
    return st;
}

dpep_status dpep_tok_load_buffers(const char *tokenizer_json, size_t len, const char *config_json,
                                  size_t config_len, const char *name, dpep_tokenizer **out,
                                  dpep_diag *diag)
{
    json_error_t err;
    char path[1100];
    snprintf(path, sizeof path, "%s/tokenizer.json", name);
    json_t *root = json_loadb(tokenizer_json, len, JSON_REJECT_DUPLICATES, &err), *config = NULL;
    if (!root) return json_problem(path, &err, diag);
    dpep_status st = DPEP_OK;
    if (config_json) {
        config = json_loadb(config_json, config_len, JSON_REJECT_DUPLICATES, &err);
        if (!config) {
            snprintf(path, sizeof path, "%s/tokenizer_config.json", name);
            st = json_problem(path, &err, diag);
        }
    }
    if (st == DPEP_OK) st = build(name, root, config, out, diag);
    json_decref(root);
    json_decref(config);
    return st;
}

void dpep_tok_free(dpep_tokenizer *t)
{
    if (!t) return;
    for (int i = 0; i < t->n_pre; i++) pcre2_code_free(t->pre[i].re);
    for (int i = 0; i < t->n_added; i++) free(t->added[i].content);
    for (int b = 0; b < 256; b++) free(t->added_first[b]);
    free(t->added);
    free(t->tok);
    free(t->tok_len);
    free(t->dec);
    free(t->dec_len);
    free(t->is_special);
    free(t->strings);
    free(t->vocab.slot);
    free(t->merges.key);
    free(t->merges.rank);
    free(t->merges.merged);
    free(t->bos);
    free(t->eos);
    free(t->chat_template);
    free(t->cache);
    pthread_mutex_destroy(&t->cache_lock);
    free(t);
}

int dpep_tok_vocab_size(const dpep_tokenizer *t) { return t->n_ids; }
int dpep_tok_bos_id(const dpep_tokenizer *t) { return t->bos_id; }
int dpep_tok_eos_id(const dpep_tokenizer *t) { return t->eos_id; }
bool dpep_tok_is_special(const dpep_tokenizer *t, int id)
{
    return id >= 0 && id < t->n_ids && t->is_special[id];
}
const char *dpep_tok_id_to_token(const dpep_tokenizer *t, int id)
{
    return id >= 0 && id < t->n_ids ? t->tok[id] : NULL;
}

dpep_chat_kind dpep_tok_chat_kind(const dpep_tokenizer *t) { return t->chat_kind; }

dpep_status dpep_tok_chat_render(const dpep_tokenizer *t, const dpep_chat_msg *msgs, int n,
                                 const dpep_chat_opts *o, char **out, size_t *len, dpep_diag *diag)
{
    if (t->chat_kind == DPEP_CHAT_NONE) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: chat_template: missing (the tokenizer has no chat "
                      "template)", t->config_path);
        return DPEP_ERR_INVALID;
    }
    if (t->chat_kind == DPEP_CHAT_UNSUPPORTED) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: chat_template: unsupported chat template (dpep "
                      "renders the DeepSeek V2/V2.5/V3/V3.1/R1 templates natively)", t->config_path);
        return DPEP_ERR_INVALID;
    }
    return dpep_chat_render_kind(t->chat_kind, t->bos, t->eos, msgs, n, o, out, len, diag);
}
