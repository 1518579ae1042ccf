/* workload.c — the requests `dpep run` serves: SGLang's random and
 * generated-shared-prefix benchmark workloads, or a JSONL file of requests
 * whose bad lines are reported by line and skipped. */
#include "dpep_serve.h"
#include "dpep_text.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINE (16u << 20)     /* one JSONL request line */
#define MAX_REQUESTS 10000000

void dpep_workload_free(dpep_workload *w)
{
    free(w->req);
    free(w->tokens);
    memset(w, 0, sizeof *w);
}

/* Uniform integer in [lo, hi]. */
static int64_t uniform_int(uint64_t *rng, int64_t lo, int64_t hi)
{
    return lo + (int64_t)(dpep_rng_uniform(rng) * (double)(hi - lo + 1));
}

static dpep_sampling default_sampling(const dpep_config *cfg, uint64_t seed)
{
    dpep_sampling s = {.temperature = (float)cfg->workload.temperature,
                       .top_k = (int)cfg->workload.top_k, .top_p = (float)cfg->workload.top_p,
                       .seed = seed};
    return s;
}

static dpep_status alloc_workload(dpep_workload *w, int n, size_t tokens)
{
    w->req = calloc((size_t)(n ? n : 1), sizeof *w->req);
    w->tokens = malloc(sizeof(int32_t) * (tokens ? tokens : 1));
    if (!w->req || !w->tokens) {
        dpep_workload_free(w);
        return DPEP_ERR_NOMEM;
    }
    w->n = n;
    return DPEP_OK;
}

/* SGLang's random dataset: lengths uniform in [max(len * ratio, 1), len]. */
static dpep_status build_random(const dpep_config *cfg, int vocab, dpep_workload *w)
{
    const int64_t n = cfg->workload.num_prompts, in = cfg->workload.input_len,
                  outl = cfg->workload.output_len;
    const double ratio = cfg->workload.range_ratio;
    uint64_t rng = dpep_rng_seed((uint64_t)cfg->runtime.seed ^ 0x72616e646f6dull);
    int64_t in_lo = (int64_t)((double)in * ratio), out_lo = (int64_t)((double)outl * ratio);
    if (in_lo < 1) in_lo = 1;
    if (out_lo < 1) out_lo = 1;
    int *ilen = malloc(sizeof(int) * (size_t)n), *olen = malloc(sizeof(int) * (size_t)n);
    if (!ilen || !olen) {
        free(ilen);
        free(olen);
        return DPEP_ERR_NOMEM;
    }
    size_t total = 0;
    for (int64_t i = 0; i < n; i++) {
        ilen[i] = (int)uniform_int(&rng, in_lo, in);
        olen[i] = (int)uniform_int(&rng, out_lo, outl);
        total += (size_t)ilen[i];
    }
    dpep_status st = alloc_workload(w, (int)n, total);
    size_t off = 0;
    for (int64_t i = 0; st == DPEP_OK && i < n; i++) {
        dpep_request *r = &w->req[i];
        snprintf(r->id, sizeof r->id, "%lld", (long long)i);
        r->index = (int)i;
        r->input_len = ilen[i];
        r->max_new_tokens = olen[i];
        r->dp_rank = -1;
        r->sampling = default_sampling(cfg, (uint64_t)cfg->runtime.seed * 1000003u + (uint64_t)i);
        int32_t *t = w->tokens + off;
        for (int k = 0; k < ilen[i]; k++) t[k] = (int32_t)uniform_int(&rng, 0, vocab - 1);
        r->input_ids = t;
        off += (size_t)ilen[i];
    }
    w->n_tokens = total;
    free(ilen);
    free(olen);
    return st;
}

/* SGLang's generated-shared-prefix: groups × prompts, each prompt = the
 * group's system prompt + its own question, all shuffled. */
static dpep_status build_shared_prefix(const dpep_config *cfg, int vocab, dpep_workload *w)
{
    const int64_t g = cfg->workload.num_groups, p = cfg->workload.prompts_per_group,
                  sys = cfg->workload.system_prompt_len, q = cfg->workload.question_len;
    if (g * p > MAX_REQUESTS) return DPEP_ERR_INVALID;
    const int n = (int)(g * p);
    const size_t per = (size_t)(sys + q);
    if (per > SIZE_MAX / sizeof(int32_t) / (size_t)n) return DPEP_ERR_NOMEM;
    DPEP_TRY(alloc_workload(w, n, per * (size_t)n));
    uint64_t rng = dpep_rng_seed((uint64_t)cfg->runtime.seed ^ 0x67737061ull);
    int *order = malloc(sizeof(int) * (size_t)n);
    if (!order) {
        dpep_workload_free(w);
        return DPEP_ERR_NOMEM;
    }
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = n - 1; i > 0; i--) { /* Fisher-Yates */
        int j = (int)uniform_int(&rng, 0, i), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (int64_t gi = 0; gi < g; gi++) {
        int32_t *sys_tokens = w->tokens + (size_t)(gi * p) * per; /* group's first prompt */
        for (int64_t k = 0; k < sys; k++) sys_tokens[k] = (int32_t)uniform_int(&rng, 0, vocab - 1);
        for (int64_t pi = 0; pi < p; pi++) {
            int32_t *t = w->tokens + (size_t)(gi * p + pi) * per;
            if (pi) memcpy(t, sys_tokens, sizeof(int32_t) * (size_t)sys);
            for (int64_t k = 0; k < q; k++) t[sys + k] = (int32_t)uniform_int(&rng, 0, vocab - 1);
        }
    }
    for (int i = 0; i < n; i++) {
        int src = order[i]; /* prompt src (group src / p) goes to position i */
        dpep_request *r = &w->req[i];
        snprintf(r->id, sizeof r->id, "g%d-p%d", (int)(src / p), (int)(src % p));
        r->index = i;
        r->input_ids = w->tokens + (size_t)src * per;
        r->input_len = (int)per;
        r->max_new_tokens = (int)cfg->workload.output_len;
        r->dp_rank = -1;
        r->sampling = default_sampling(cfg, (uint64_t)cfg->runtime.seed * 1000003u + (uint64_t)i);
    }
    w->n_tokens = per * (size_t)n;
    free(order);
    return DPEP_OK;
}

/* One JSONL line into r (tokens appended to *tok). Returns false with a
 * message naming FILE:LINE and the key. */
/* The model directory's tokenizer, loaded on the first line that has text
 * or messages. */
typedef struct line_tok {
    const char *dir;
    dpep_tokenizer *t;
    bool tried;
    char why[300];           /* why it could not be loaded                   */
} line_tok;

/* ids of a line's "text" (bos/eos as the tokenizer adds them) or "messages"
 * (the chat template with the generation prompt, no extra bos). */
static bool text_ids(line_tok *lt, json_t *txt, json_t *msgs, int32_t **ids, size_t *n, char *why,
                     size_t why_len)
{
    if (!lt->tried) {
        lt->tried = true;
        dpep_diag d;
        dpep_diag_init(&d);
        if (dpep_tok_load(lt->dir, &lt->t, &d) != DPEP_OK)
            snprintf(lt->why, sizeof lt->why, "%s", d.n ? d.item[0].msg : "cannot load");
    }
    if (!lt->t) {
        snprintf(why, why_len, "%s: needs the model's tokenizer: %s", txt ? "text" : "messages", lt->why);
        return false;
    }
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_status st;
    if (txt) {
        if (!json_is_string(txt)) {
            snprintf(why, why_len, "text: expected a string");
            return false;
        }
        st = dpep_tok_encode(lt->t, json_string_value(txt), json_string_length(txt), true, ids, n, &d);
    } else {
        char *js = json_dumps(msgs, JSON_COMPACT);
        dpep_chat_conv conv;
        st = js ? dpep_chat_parse_json(js, strlen(js), "messages", &conv, &d) : DPEP_ERR_NOMEM;
        free(js);
        if (st == DPEP_OK) {
            dpep_chat_opts o = {.add_generation_prompt = true};
            st = dpep_tok_chat_encode(lt->t, conv.msg, conv.n, &o, ids, n, &d);
            dpep_chat_conv_free(&conv);
        }
    }
    if (st != DPEP_OK) snprintf(why, why_len, "%s", d.n ? d.item[0].msg : dpep_status_string(st));
    return st == DPEP_OK;
}

static bool parse_line(const char *path, int line, const char *text, size_t len,
                       const dpep_config *cfg, int vocab, int dp, line_tok *lt, dpep_request *r,
                       int32_t **tok, size_t *n_tok, size_t *cap_tok, dpep_diag *diag)
{
    json_error_t je;
    json_t *o = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
#define BAD(...)                                                                               \
    do {                                                                                       \
        char m_[300];                                                                          \
        snprintf(m_, sizeof m_, __VA_ARGS__);                                                  \
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d: %s", path, line, m_);                     \
        json_decref(o);                                                                        \
        return false;                                                                          \
    } while (0)
    if (!o) BAD("not valid JSON: %s (column %d)", je.text, je.column);
    if (!json_is_object(o)) BAD("expected a JSON object per line");
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        if (strcmp(k, "input_ids") && strcmp(k, "text") && strcmp(k, "messages") &&
            strcmp(k, "max_new_tokens") && strcmp(k, "sampling") &&
            strcmp(k, "data_parallel_rank") && strcmp(k, "id"))
            BAD("%.40s: unknown key (expected input_ids, text, messages, max_new_tokens, sampling, "
                "data_parallel_rank, id)", k);
    }
    int32_t *own = NULL; /* ids from text or messages */
    size_t n = 0;
    json_t *ids = json_object_get(o, "input_ids");
    json_t *txt = json_object_get(o, "text"), *msgs = json_object_get(o, "messages");
    int n_inputs = (ids != NULL) + (txt != NULL) + (msgs != NULL);
    if (n_inputs == 0) BAD("input_ids: missing (expected input_ids, text or messages)");
    if (n_inputs > 1) BAD("input_ids, text, messages: give only one of them");
    if (txt || msgs) {
        char why[400];
        if (!text_ids(lt, txt, msgs, &own, &n, why, sizeof why)) BAD("%s", why);
    } else {
        if (!json_is_array(ids) || json_array_size(ids) == 0)
            BAD("input_ids: missing or empty (expected an array of token ids)");
        n = json_array_size(ids);
    }
    if (n == 0) {
        free(own);
        BAD("%s: encodes to no token", txt ? "text" : "messages");
    }
    if (n > (1u << 24)) {
        free(own);
        BAD("input_ids: %zu tokens (expected at most 16777216)", n);
    }
    if (*n_tok + n > *cap_tok) {
        size_t cap = *cap_tok ? *cap_tok : 4096;
        while (cap < *n_tok + n) cap *= 2;
        int32_t *p = realloc(*tok, sizeof(int32_t) * cap);
        if (!p) {
            free(own);
            BAD("out of memory for %zu tokens", cap);
        }
        *tok = p;
        *cap_tok = cap;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = own ? NULL : json_array_get(ids, i);
        json_int_t t = own ? own[i] : json_is_integer(e) ? json_integer_value(e) : -1;
        if (t < 0 || t >= vocab) {
            free(own);
            BAD("%s[%zu]: %s (expected a token id from 0 to %d)", own ? "text ids" : "input_ids", i,
                own || json_is_integer(e) ? "out of the vocabulary" : "not an integer", vocab - 1);
        }
        (*tok)[*n_tok + i] = (int32_t)t;
    }
    free(own);
    json_t *mx = json_object_get(o, "max_new_tokens");
    json_int_t mnt = mx ? (json_is_integer(mx) ? json_integer_value(mx) : -1) : cfg->workload.output_len;
    if (mnt < 1 || mnt > (1 << 24)) BAD("max_new_tokens: expected an integer from 1 to 16777216");
    r->input_len = (int)n;
    r->max_new_tokens = (int)mnt;
    r->dp_rank = -1;
    json_t *dr = json_object_get(o, "data_parallel_rank");
    if (dr && !json_is_null(dr)) {
        if (!json_is_integer(dr) || json_integer_value(dr) < 0 || json_integer_value(dr) >= dp)
            BAD("data_parallel_rank: expected an integer from 0 to %d (dp = %d)", dp - 1, dp);
        r->dp_rank = (int)json_integer_value(dr);
    }
    r->sampling = default_sampling(cfg, (uint64_t)cfg->runtime.seed * 1000003u + (uint64_t)line);
    json_t *sp = json_object_get(o, "sampling");
    if (sp && !json_is_null(sp)) {
        if (!json_is_object(sp)) BAD("sampling: expected an object");
        json_object_foreach(sp, k, v)
        {
            if (strcmp(k, "temperature") == 0) {
                if (!json_is_number(v) || json_number_value(v) < 0 || json_number_value(v) > 100)
                    BAD("sampling.temperature: expected a number from 0 (greedy) to 100");
                r->sampling.temperature = (float)json_number_value(v);
            } else if (strcmp(k, "top_k") == 0) {
                if (!json_is_integer(v) || json_integer_value(v) < 0)
                    BAD("sampling.top_k: expected a non-negative integer (0 = off)");
                r->sampling.top_k = (int)(json_integer_value(v) > vocab ? vocab : json_integer_value(v));
            } else if (strcmp(k, "top_p") == 0) {
                if (!json_is_number(v) || !(json_number_value(v) > 0 && json_number_value(v) <= 1))
                    BAD("sampling.top_p: expected a number in (0, 1]");
                r->sampling.top_p = (float)json_number_value(v);
            } else if (strcmp(k, "min_p") == 0) {
                if (!json_is_number(v) || !(json_number_value(v) >= 0 && json_number_value(v) <= 1))
                    BAD("sampling.min_p: expected a number in [0, 1] (0 = off)");
                r->sampling.min_p = (float)json_number_value(v);
            } else if (strcmp(k, "seed") == 0) {
                if (!json_is_integer(v) || json_integer_value(v) < 0)
                    BAD("sampling.seed: expected a non-negative integer");
                r->sampling.seed = (uint64_t)json_integer_value(v);
            } else {
                BAD("sampling.%.40s: unknown key (expected temperature, top_k, top_p, min_p, seed)", k);
            }
        }
    }
    /* Ids are kept whole or refused: a cut id could end inside a UTF-8
     * character or collide with another one. */
    json_t *id = json_object_get(o, "id");
    if (id && json_is_string(id)) {
        size_t idn = json_string_length(id); /* valid UTF-8, no NUL (jansson) */
        if (idn >= sizeof r->id)
            BAD("id: %zu bytes (expected at most %zu)", idn, sizeof r->id - 1);
        memcpy(r->id, json_string_value(id), idn + 1);
    } else if (id && json_is_integer(id)) {
        snprintf(r->id, sizeof r->id, "%lld", (long long)json_integer_value(id));
    } else if (id && !json_is_null(id)) {
        BAD("id: expected a string or an integer");
    } else {
        snprintf(r->id, sizeof r->id, "%d", line);
    }
    *n_tok += n;
    json_decref(o);
    return true;
#undef BAD
}

/* The ids seen so far, for the uniqueness rule (resume finds requests by
 * id): open addressing over the requests' indices, kept at most half full. */
typedef struct id_set {
    int *slot;     /* [cap] request index + 1, 0 = empty                      */
    size_t cap;    /* a power of two                                          */
    size_t n;
} id_set;

static uint64_t id_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* The index of the request with r's id, or -1 after adding i (r = req[i]);
 * -2 when out of memory. */
static int id_set_add(id_set *set, const dpep_request *req, int i)
{
    if (2 * (set->n + 1) > set->cap) {
        size_t cap = set->cap ? 2 * set->cap : 1024;
        int *slot = calloc(cap, sizeof *slot);
        if (!slot) return -2;
        for (size_t k = 0; k < set->cap; k++) {
            if (!set->slot[k]) continue;
            size_t h = (size_t)id_hash(req[set->slot[k] - 1].id) & (cap - 1);
            while (slot[h]) h = (h + 1) & (cap - 1);
            slot[h] = set->slot[k];
        }
        free(set->slot);
        set->slot = slot;
        set->cap = cap;
    }
    size_t h = (size_t)id_hash(req[i].id) & (set->cap - 1);
    for (; set->slot[h]; h = (h + 1) & (set->cap - 1))
        if (strcmp(req[set->slot[h] - 1].id, req[i].id) == 0) return set->slot[h] - 1;
    set->slot[h] = i + 1;
    set->n++;
    return -1;
}

/* s for a message: a JSON string body (quotes, backslashes and control
 * bytes escaped) so that it stays on one line, cut at a character boundary
 * with "..." when it does not fit in `cap` (the line numbers after it must
 * fit in the message too). */
static void quote_id(const char *s, char *out, size_t cap)
{
    size_t o = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        size_t need = c == '"' || c == '\\' ? 2 : c < 0x20 || c == 0x7f ? 6 : 1;
        /* at a character's start: room for the largest unit (6 bytes: an
         * escape or a UTF-8 character) and then "..." with the NUL */
        if ((c & 0xc0) != 0x80 && o + 6 + 4 > cap) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (need == 2) out[o++] = '\\';
        if (need == 6) o += (size_t)snprintf(out + o, cap - o, "\\u%04x", c);
        else out[o++] = (char)c;
    }
    out[o] = '\0';
}

static dpep_status build_file(const dpep_config *cfg, int vocab, int dp, dpep_workload *w,
                              dpep_diag *diag)
{
    const char *path = cfg->workload.path;
    /* A regular file only: rank 0 would block on a FIFO without a writer or
     * read /dev/zero forever while the other ranks wait for the requests. */
    char why[160];
    FILE *f = dpep_fopen_regular(path, 0, why, sizeof why);
    if (!f) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: workload.path: %s", path, why);
        return DPEP_ERR_INVALID;
    }
    char *buf = malloc(MAX_LINE + 1);
    int32_t *tok = NULL;
    size_t n_tok = 0, cap_tok = 0, *tok_off = NULL;
    int n = 0, cap = 0, line = 0;
    dpep_request *req = NULL;
    int *req_line = NULL; /* [cap] the line of each request */
    id_set ids = {0};
    line_tok lt = {.dir = cfg->model.path};
    dpep_status st = buf ? DPEP_OK : DPEP_ERR_NOMEM;
    for (;;) {
        if (st != DPEP_OK) break;
        /* One line, NUL bytes included; over-long lines are consumed and
         * rejected without holding them. */
        size_t len = 0;
        int c = EOF;
        while ((c = getc_unlocked(f)) != EOF && c != '\n') {
            if (len < MAX_LINE) buf[len] = (char)c;
            len++;
        }
        if (c == EOF && len == 0) break;
        line++;
        if (len > MAX_LINE) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d: line longer than %u bytes", path, line, MAX_LINE);
            w->bad_lines++;
            continue;
        }
        buf[len] = '\0';
        if (memchr(buf, '\0', len)) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d: NUL byte in line (expected JSON text)", path, line);
            w->bad_lines++;
            continue;
        }
        size_t lead = strspn(buf, " \t\r");
        if (buf[lead] == '\0') continue; /* blank line */
        if (n == cap) {
            cap = cap ? 2 * cap : 256;
            dpep_request *p = realloc(req, sizeof *req * (size_t)cap);
            size_t *q = realloc(tok_off, sizeof *tok_off * (size_t)cap);
            int *l = realloc(req_line, sizeof *req_line * (size_t)cap);
            if (p) req = p;
            if (q) tok_off = q;
            if (l) req_line = l;
            if (!p || !q || !l) {
                st = DPEP_ERR_NOMEM;
                break;
            }
        }
        memset(&req[n], 0, sizeof req[n]);
        size_t before = n_tok;
        if (parse_line(path, line, buf, len, cfg, vocab, dp, &lt, &req[n], &tok, &n_tok, &cap_tok, diag)) {
            int dup = id_set_add(&ids, req, n);
            if (dup == -2) {
                st = DPEP_ERR_NOMEM;
                break;
            }
            if (dup >= 0) { /* a bad line: its tokens are dropped */
                char q[168]; /* a 127-byte id whole, unless escaped */
                quote_id(req[n].id, q, sizeof q);
                dpep_diag_add(diag, DPEP_DIAG_ERROR,
                              "%s:%d: id \"%s\": already used on line %d (ids must be unique)", path,
                              line, q, req_line[dup]);
                n_tok = before;
                w->bad_lines++;
                continue;
            }
            tok_off[n] = before;
            req_line[n] = line;
            req[n].index = n;
            n++;
            if (n > MAX_REQUESTS) {
                dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d: more than %d requests", path, line, MAX_REQUESTS);
                st = DPEP_ERR_INVALID;
            }
        } else {
            w->bad_lines++;
        }
    }
    if (st == DPEP_OK && ferror(f)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: workload.path: read error: %s", path, strerror(errno));
        st = DPEP_ERR_IO;
    }
    fclose(f);
    free(buf);
    free(ids.slot);
    free(req_line);
    dpep_tok_free(lt.t);
    if (st == DPEP_OK && n == 0) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: no valid request (%d line%s rejected)", path,
                      w->bad_lines, w->bad_lines == 1 ? "" : "s");
        st = DPEP_ERR_INVALID;
    }
    if (st != DPEP_OK) {
        free(req);
        free(tok);
        free(tok_off);
        return st;
    }
    for (int i = 0; i < n; i++) req[i].input_ids = tok + tok_off[i];
    free(tok_off);
    w->req = req;
    w->n = n;
    w->tokens = tok;
    w->n_tokens = n_tok;
    return DPEP_OK;
}

dpep_status dpep_workload_build(const dpep_config *cfg, int vocab, int dp, dpep_workload *out,
                                dpep_diag *diag)
{
    dpep_workload w;
    memset(&w, 0, sizeof w);
    dpep_status st;
    switch (cfg->workload.kind) {
    case DPEP_WORKLOAD_RANDOM: st = build_random(cfg, vocab, &w); break;
    case DPEP_WORKLOAD_SHARED_PREFIX: st = build_shared_prefix(cfg, vocab, &w); break;
    default: st = build_file(cfg, vocab, dp, &w, diag); break;
    }
    if (st == DPEP_ERR_NOMEM)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "workload: not enough memory for the requests' tokens");
    if (st != DPEP_OK) return st;
    *out = w;
    return DPEP_OK;
}
