/* chat_json.c — conversations from JSON (CLI files, workload lines, HTTP
 * bodies) and their encoding through the tokenizer's chat template. */
#include "text_internal.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

/* Storage of a parsed conversation: the messages, their tool calls and one
 * string block. */
typedef struct conv_mem {
    dpep_chat_msg *msg;
    dpep_chat_tool_call *calls;
    char **strs;
    int64_t n_strs, cap_strs;
} conv_mem;

static const char *keep(conv_mem *m, const char *s, size_t n)
{
    if (!dpep_grow((void **)&m->strs, &m->cap_strs, m->n_strs + 1, sizeof *m->strs)) return NULL;
    char *c = malloc(n + 1);
    if (!c) return NULL;
    memcpy(c, s, n);
    c[n] = '\0';
    m->strs[m->n_strs++] = c;
    return c;
}

void dpep_chat_conv_free(dpep_chat_conv *c)
{
    conv_mem *m = c->mem_;
    if (m) {
        for (int64_t i = 0; i < m->n_strs; i++) free(m->strs[i]);
        free(m->strs);
        free(m->calls);
        free(m->msg);
        free(m);
    }
    memset(c, 0, sizeof *c);
}

static dpep_status bad(dpep_diag *d, const char *name, int i, const char *field, const char *what)
{
    dpep_diag_add(d, DPEP_DIAG_ERROR, "%s: messages[%d].%s: %s", name, i, field, what);
    return DPEP_ERR_INVALID;
}

/* content: a string, null, or text parts. */
static dpep_status parse_content(conv_mem *m, json_t *c, const char *name, int i, const char **out,
                                 dpep_diag *d)
{
    if (!c || json_is_null(c)) {
        *out = NULL;
        return DPEP_OK;
    }
    if (json_is_string(c)) {
        *out = keep(m, json_string_value(c), json_string_length(c));
        return *out ? DPEP_OK : DPEP_ERR_NOMEM;
    }
    if (!json_is_array(c)) return bad(d, name, i, "content", "expected a string, null or an array of text parts");
    size_t total = 0, k;
    json_t *part;
    json_array_foreach(c, k, part) {
        json_t *txt = json_object_get(part, "text");
        const char *type = json_string_value(json_object_get(part, "type"));
        if (!type || strcmp(type, "text") != 0 || !json_is_string(txt))
            return bad(d, name, i, "content", "only {\"type\": \"text\", \"text\": ...} parts are supported");
        total += json_string_length(txt);
    }
    char *buf = malloc(total + 1);
    if (!buf) return DPEP_ERR_NOMEM;
    size_t off = 0;
    json_array_foreach(c, k, part) {
        json_t *txt = json_object_get(part, "text");
        memcpy(buf + off, json_string_value(txt), json_string_length(txt));
        off += json_string_length(txt);
    }
    *out = keep(m, buf, total);
    free(buf);
    return *out ? DPEP_OK : DPEP_ERR_NOMEM;
}

static dpep_status parse_calls(conv_mem *m, json_t *tc, const char *name, int i, int *used,
                               dpep_chat_msg *msg, dpep_diag *d)
{
    msg->has_tool_calls = tc != NULL && !json_is_null(tc);
    if (!msg->has_tool_calls) return DPEP_OK;
    if (!json_is_array(tc)) return bad(d, name, i, "tool_calls", "expected an array");
    msg->tool_calls = m->calls + *used;
    size_t k;
    json_t *call;
    json_array_foreach(tc, k, call) {
        json_t *fn = json_object_get(call, "function");
        json_t *args = json_object_get(fn, "arguments");
        const char *type = json_string_value(json_object_get(call, "type"));
        const char *fname = json_string_value(json_object_get(fn, "name"));
        if (!fname) return bad(d, name, i, "tool_calls", "each call needs function.name");
        dpep_chat_tool_call *c = &m->calls[(*used)++];
        c->type = keep(m, type ? type : "function", strlen(type ? type : "function"));
        c->name = keep(m, fname, strlen(fname));
        /* arguments: a JSON string, as OpenAI sends it (the templates
         * concatenate it: an object is an error there too) */
        if (!json_is_string(args))
            return bad(d, name, i, "tool_calls", "function.arguments must be a string (JSON text)");
        c->arguments = keep(m, json_string_value(args), json_string_length(args));
        if (!c->type || !c->name || !c->arguments) return DPEP_ERR_NOMEM;
        msg->n_tool_calls++;
    }
    return DPEP_OK;
}

static dpep_status parse_messages(conv_mem *m, json_t *arr, const char *name, int *n_out, dpep_diag *d)
{
    size_t n = json_array_size(arr), n_calls = 0, i;
    json_t *x;
    json_array_foreach(arr, i, x) n_calls += json_array_size(json_object_get(x, "tool_calls"));
    m->msg = calloc(n ? n : 1, sizeof *m->msg);
    m->calls = calloc(n_calls ? n_calls : 1, sizeof *m->calls);
    if (!m->msg || !m->calls) return DPEP_ERR_NOMEM;
    int used = 0;
    json_array_foreach(arr, i, x) {
        dpep_chat_msg *msg = &m->msg[i];
        if (!json_is_object(x)) return bad(d, name, (int)i, "role", "each message must be an object");
        json_t *role = json_object_get(x, "role");
        if (!json_is_string(role)) return bad(d, name, (int)i, "role", "missing (expected a string)");
        msg->role = keep(m, json_string_value(role), json_string_length(role));
        if (!msg->role) return DPEP_ERR_NOMEM;
        DPEP_TRY(parse_content(m, json_object_get(x, "content"), name, (int)i, &msg->content, d));
        DPEP_TRY(parse_calls(m, json_object_get(x, "tool_calls"), name, (int)i, &used, msg, d));
        msg->prefix = json_is_true(json_object_get(x, "prefix"));
    }
    *n_out = (int)n;
    return DPEP_OK;
}

dpep_status dpep_chat_parse_json(const char *json, size_t len, const char *name,
                                 dpep_chat_conv *out, dpep_diag *diag)
{
    json_error_t err;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &err);
    if (!root) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d:%d: %s", name, err.line, err.column, err.text);
        return DPEP_ERR_INVALID;
    }
    json_t *arr = json_is_array(root) ? root : json_object_get(root, "messages");
    dpep_status st = DPEP_OK;
    if (!json_is_array(arr)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: messages: expected an array of messages (or an "
                      "object with \"messages\")", name);
        st = DPEP_ERR_INVALID;
    }
    conv_mem *m = st == DPEP_OK ? calloc(1, sizeof *m) : NULL;
    if (st == DPEP_OK && !m) st = DPEP_ERR_NOMEM;
    dpep_chat_conv c = {0};
    c.mem_ = m;
    if (st == DPEP_OK) st = parse_messages(m, arr, name, &c.n, diag);
    json_decref(root);
    if (st != DPEP_OK) {
        dpep_chat_conv_free(&c);
        return st;
    }
    c.msg = m->msg;
    *out = c;
    return DPEP_OK;
}

dpep_status dpep_tok_chat_encode(const dpep_tokenizer *t, const dpep_chat_msg *msgs, int n,
                                 const dpep_chat_opts *o, int32_t **ids, size_t *n_ids,
                                 dpep_diag *diag)
{
    char *text = NULL;
    size_t len = 0;
    DPEP_TRY(dpep_tok_chat_render(t, msgs, n, o, &text, &len, diag));
    dpep_status st = dpep_tok_encode(t, text, len, false, ids, n_ids, diag);
    free(text);
    return st;
}
