/* http.c — the HTTP front of `dpep serve` (http.h) on libmicrohttpd.
 *
 * Threads: MHD runs one thread per connection. A generation handler submits
 * its request to the hub and then blocks on it in slices of HTTP_WAIT_S
 * (hub_wait), checking between slices the request timeout, whether the
 * client is still connected and whether the server is stopping; a stream
 * does the same inside MHD's content reader, so each SSE chunk is written
 * as soon as its tokens arrive. While a generation runs the connection's
 * idle timeout is off (MHD checks it only after a handler returns, which
 * would drop a long answer); it comes back when the request completes.
 *
 * Output: tokens go through an incremental detokenizer; eos (unless
 * ignore_eos), stop_token_ids and stop strings end a request here, on rank
 * 0, which then cancels it in the job and trims the output (SGLang's rules:
 * the text ends before the stop string or token unless no_stop_trim). A
 * stream holds back the last (longest stop - 1) bytes so that what it sends
 * is never trimmed later: the chunks concatenate to the non-stream text.
 *
 * Sections: 1 errors and replies; 2 typed field readers; 3 generation
 * requests (parse and validate); 4 a generation in flight; 5 response
 * bodies and SSE; 6 info endpoints; 7 MHD glue, routing and lifetime. */
#define _GNU_SOURCE /* memmem */
#include "http.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#ifndef DPEP_VERSION
#define DPEP_VERSION "unknown"
#endif

#define HTTP_WAIT_S 0.5               /* one hub_wait slice                     */
#define HTTP_GONE_CHECK_S 0.25        /* how often a waiting thread peeks the socket */
#define HTTP_CONN_TIMEOUT_S 60u       /* idle connections (not while generating) */
#define HTTP_MAX_CONNECTIONS 4096u    /* poll(), so beyond FD_SETSIZE            */
#define HTTP_STREAM_BLOCK (16 * 1024) /* MHD's buffer for a streamed response   */
#define HTTP_DEFAULT_MAX_BODY ((size_t)8 << 20)
#define HTTP_DEFAULT_MAX_NEW 128
#define HTTP_HEALTH_TIMEOUT_S 60.0
#define HTTP_STOP_GRACE_S 2.0         /* serve_http_stop: time to answer 503s    */
#define HTTP_MAX_STOP 64              /* stop strings / stop_token_ids per request */
#define HTTP_FLUSH_TIMEOUT_S 30.0     /* /flush_cache waits this long for the job */
#define HTTP_MAX_STOP_LEN 1024

struct serve_http {
    serve_http_opts o;        /* strings point at the copies below           */
    char *host, *api_key, *served, *model_path, *model_type, *arch;
    serve_hub *hub;           /* borrowed                                     */
    const dpep_tokenizer *tok;/* borrowed                                     */
    struct MHD_Daemon *d;
    atomic_int port;          /* written after the start, read by handlers  */
    atomic_bool stopping;     /* serve_http_stop: waiting threads give up     */
    atomic_int active;        /* generations not yet freed                    */
    atomic_bool starting;     /* MHD messages go to start_err                 */
    atomic_uint_fast64_t seq; /* seeds for requests without one               */
    char start_err[256];
};

/* ======================================================================== */
/* 1. Errors and replies                                                     */
/* ======================================================================== */

/* An error answer: {"error": {"message", "type", "param", "code"}}. */
typedef struct http_err {
    unsigned status;
    const char *type;         /* "invalid_request_error" / "server_error"     */
    const char *code;         /* NULL: the status as an integer               */
    const char *allow;        /* 405: the Allow header                        */
    bool retry_after;         /* 503 queue full: Retry-After: 1               */
    char param[96];           /* "": null                                     */
    char msg[640];
} http_err;

/* Cuts a trailing incomplete UTF-8 sequence (after snprintf truncation). */
static void utf8_trim(char *s)
{
    size_t n = strlen(s), i = n;
    while (i > 0 && (s[i - 1] & 0xC0) == 0x80 && n - i < 3) i--;
    if (i == 0) return;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t want = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    if (n - (i - 1) < want) s[i - 1] = 0;
}

/* Fills e ("WHERE: what", param PARAM) and returns false, so that a reader
 * can `return fail(...)`. */
static bool vfail_at(http_err *e, unsigned status, const char *param, const char *where,
                     const char *fmt, va_list ap)
{
    e->status = status;
    e->type = status >= 500 ? "server_error" : "invalid_request_error";
    e->code = NULL;
    e->allow = NULL;
    e->retry_after = false;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    char what[512];
    vsnprintf(what, sizeof what, fmt, ap);
    if (where && *where) snprintf(e->msg, sizeof e->msg, "%s: %s", where, what);
    else snprintf(e->msg, sizeof e->msg, "%s", what);
    utf8_trim(e->param);
    utf8_trim(e->msg);
    return false;
}

__attribute__((format(printf, 4, 5))) static bool fail(http_err *e, unsigned status,
                                                       const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail_at(e, status, param, param, fmt, ap);
    va_end(ap);
    return false;
}

__attribute__((format(printf, 5, 6))) static bool fail_at(http_err *e, unsigned status,
                                                          const char *param, const char *where,
                                                          const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfail_at(e, status, param, where, fmt, ap);
    va_end(ap);
    return false;
}

/* A JSON string of s[n], which should be UTF-8; invalid bytes become U+FFFD
 * rather than failing the answer. NULL only when out of memory. */
static json_t *jstr(const char *s, size_t n)
{
    json_t *v = json_stringn(s, n);
    if (v) return v;
    char *c = malloc(3 * n + 1);
    if (!c) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        unsigned char b = (unsigned char)s[i];
        size_t len = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3
                     : (b & 0xF8) == 0xF0 ? 4 : 0;
        json_t *one = len && i + len <= n && b ? json_stringn(s + i, len) : NULL;
        if (one) {
            memcpy(c + k, s + i, len);
            k += len;
            i += len;
            json_decref(one);
        } else {
            memcpy(c + k, "\xEF\xBF\xBD", 3);
            k += 3;
            i++;
        }
    }
    v = json_stringn(c, k);
    free(c);
    return v;
}

/* A JSON number for a log-probability (-9999 for -inf, as OpenAI does). */
static json_t *jlogprob(double lp)
{
    return json_real(isfinite(lp) ? lp : -9999.0);
}

static enum MHD_Result reply_buf(struct MHD_Connection *c, unsigned status, char *body,
                                 size_t len, const char *ctype, const http_err *e)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (e && e->retry_after) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (e && e->allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, e->allow);
    if (status == MHD_HTTP_UNAUTHORIZED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Out of memory while answering: a fixed 500 (or a close). */
static enum MHD_Result reply_oom(struct MHD_Connection *c)
{
    static const char body[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                               "\"server_error\",\"param\":null,\"code\":500}}";
    struct MHD_Response *r = MHD_create_response_from_buffer(sizeof body - 1, (void *)body,
                                                             MHD_RESPMEM_PERSISTENT);
    if (!r) return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_INTERNAL_SERVER_ERROR, r);
    MHD_destroy_response(r);
    return ret;
}

/* Queues v (a reference taken) as JSON; extra headers from e when given. */
static enum MHD_Result reply_json(struct MHD_Connection *c, unsigned status, json_t *v,
                                  const http_err *e)
{
    char *s = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(v);
    if (!s) return reply_oom(c);
    return reply_buf(c, status, s, strlen(s), "application/json", e);
}

static json_t *err_json(const http_err *e)
{
    json_t *o = json_object(), *in = json_object();
    if (!o || !in) {
        json_decref(o);
        json_decref(in);
        return NULL;
    }
    json_object_set_new(o, "error", in);
    json_object_set_new(in, "message", jstr(e->msg, strlen(e->msg)));
    json_object_set_new(in, "type", json_string(e->type));
    json_object_set_new(in, "param", e->param[0] ? jstr(e->param, strlen(e->param)) : json_null());
    json_object_set_new(in, "code", e->code ? json_string(e->code) : json_integer(e->status));
    return o;
}

static enum MHD_Result reply_err(struct MHD_Connection *c, const http_err *e)
{
    return reply_json(c, e->status, err_json(e), e);
}

/* ======================================================================== */
/* 2. Typed field readers: each names its field in the error                 */
/* ======================================================================== */

/* The value of key in o; NULL when absent or JSON null (null = not given). */
static json_t *opt(const json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

static bool rd_int(const json_t *v, const char *name, int64_t lo, int64_t hi, int64_t *out,
                   http_err *e)
{
    int64_t x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && floor(json_real_value(v)) == json_real_value(v) &&
               fabs(json_real_value(v)) < 9e15) {
        x = (int64_t)json_real_value(v);
    } else {
        return fail(e, 400, name, "expected an integer");
    }
    if (x < lo || x > hi)
        return fail(e, 400, name, "must be in [%lld, %lld] (got %lld)", (long long)lo,
                    (long long)hi, (long long)x);
    *out = x;
    return true;
}

static bool rd_num(const json_t *v, const char *name, double *out, http_err *e)
{
    if (!json_is_number(v) || !isfinite(json_number_value(v)))
        return fail(e, 400, name, "expected a number");
    *out = json_number_value(v);
    return true;
}

static bool rd_bool(const json_t *v, const char *name, bool *out, http_err *e)
{
    if (!json_is_boolean(v)) return fail(e, 400, name, "expected true or false");
    *out = json_is_true(v);
    return true;
}

/* An optional number that must equal `neutral` (a sampling knob dpep does
 * not implement, accepted at its no-op value since clients send defaults). */
static bool rd_neutral(const json_t *o, const char *key, const char *name, double neutral,
                       http_err *e)
{
    json_t *v = opt(o, key);
    double x = 0;
    if (!v) return true;
    if (!rd_num(v, name, &x, e)) return false;
    if (x != neutral) return fail(e, 400, name, "%s is not supported (only %g)", key, neutral);
    return true;
}

/* Token ids: an array of integers in [0, vocab). The error names the
 * element (NAME[i]); *ids malloc'd. */
static bool rd_ids(const json_t *v, const char *name, int vocab, int32_t **ids, int *n,
                   http_err *e)
{
    if (!json_is_array(v)) return fail(e, 400, name, "expected an array of token ids");
    size_t len = json_array_size(v);
    if (len > INT32_MAX / 2) return fail(e, 400, name, "too many token ids");
    int32_t *a = malloc(sizeof *a * (len ? len : 1));
    if (!a) return fail(e, 500, NULL, "out of memory");
    for (size_t i = 0; i < len; i++) {
        char where[128];
        snprintf(where, sizeof where, "%s[%zu]", name, i);
        json_t *x = json_array_get(v, i);
        if (!json_is_integer(x)) {
            free(a);
            return fail_at(e, 400, name, where, "expected an integer token id");
        }
        json_int_t id = json_integer_value(x);
        if (id < 0 || id >= vocab) {
            free(a);
            return fail_at(e, 400, name, where, "token id %lld is out of the vocabulary [0, %d)",
                           (long long)id, vocab);
        }
        a[i] = (int32_t)id;
    }
    *ids = a;
    *n = (int)len;
    return true;
}

/* ======================================================================== */
/* 3. Generation requests: parsing and validation                           */
/* ======================================================================== */

typedef enum gen_api { API_GENERATE, API_COMPLETIONS, API_CHAT, API_HEALTH } gen_api;

/* A validated request, before the hub. */
typedef struct gen_req {
    gen_api api;
    int32_t *ids;             /* the prompt, malloc'd (moves to the hub_req)  */
    int n_ids;
    const char *prompt_name;  /* "text", "input_ids", "prompt", "messages"     */
    int max_new;
    bool max_given;
    const char *max_name;     /* the field that set max_new                    */
    dpep_sampling sp;
    bool seed_given;
    bool ignore_eos, skip_special, no_stop_trim, stream, include_usage, logprobs;
    char **stop;              /* stop strings, malloc'd                        */
    int n_stop;
    size_t max_stop;          /* longest stop string (bytes)                   */
    int32_t *stop_ids;
    int n_stop_ids;
    char rid[DPEP_REQUEST_ID_MAX];
    int dp_rank;
} gen_req;

static void gen_req_free(gen_req *q)
{
    free(q->ids);
    for (int i = 0; i < q->n_stop; i++) free(q->stop[i]);
    free(q->stop);
    free(q->stop_ids);
}

static void gen_req_init(gen_req *q, gen_api api)
{
    memset(q, 0, sizeof *q);
    q->api = api;
    q->sp.temperature = 1.0f;
    q->sp.top_p = 1.0f;
    q->skip_special = true;
    q->dp_rank = -1;
}

/* stop: a string or an array of strings (empty strings are ignored). */
static bool rd_stop(const json_t *v, const char *name, gen_req *q, http_err *e)
{
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (!json_is_array(v) && !json_is_string(v))
        return fail(e, 400, name, "expected a string or an array of strings");
    if (n > HTTP_MAX_STOP) return fail(e, 400, name, "at most %d stop strings", HTTP_MAX_STOP);
    q->stop = calloc(n ? n : 1, sizeof *q->stop);
    if (!q->stop) return fail(e, 500, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *s = json_is_array(v) ? json_array_get(v, i) : v;
        if (!json_is_string(s)) return fail(e, 400, name, "expected strings");
        size_t len = json_string_length(s);
        if (len == 0) continue;
        if (len > HTTP_MAX_STOP_LEN)
            return fail(e, 400, name, "a stop string is longer than %d bytes", HTTP_MAX_STOP_LEN);
        q->stop[q->n_stop] = malloc(len + 1);
        if (!q->stop[q->n_stop]) return fail(e, 500, NULL, "out of memory");
        memcpy(q->stop[q->n_stop], json_string_value(s), len + 1);
        q->n_stop++;
        if (len > q->max_stop) q->max_stop = len;
    }
    return true;
}

/* The sampling knobs shared by the three APIs: in `sampling_params` for
 * /generate (pfx "sampling_params."), at the top level for OpenAI's. */
static bool parse_sampling(const json_t *o, const char *pfx, gen_req *q, const serve_http *s,
                           http_err *e)
{
    char name[128];
#define NAME(k) (snprintf(name, sizeof name, "%s%s", pfx, k), name)
    json_t *v;
    double d = 0;
    int64_t i;
    if ((v = opt(o, "temperature"))) {
        if (!rd_num(v, NAME("temperature"), &d, e)) return false;
        if (d < 0) return fail(e, 400, name, "must be >= 0 (got %g)", d);
        q->sp.temperature = (float)d;
    }
    if ((v = opt(o, "top_p"))) {
        if (!rd_num(v, NAME("top_p"), &d, e)) return false;
        if (!(d > 0 && d <= 1)) return fail(e, 400, name, "must be in (0, 1] (got %g)", d);
        q->sp.top_p = (float)d;
    }
    if ((v = opt(o, "min_p"))) {
        if (!rd_num(v, NAME("min_p"), &d, e)) return false;
        if (!(d >= 0 && d <= 1)) return fail(e, 400, name, "must be in [0, 1] (got %g)", d);
        q->sp.min_p = (float)d;
    }
    if ((v = opt(o, "top_k"))) { /* SGLang: -1 (or 0) is off */
        if (!rd_int(v, NAME("top_k"), INT32_MIN, INT32_MAX, &i, e)) return false;
        if (i < -1) return fail(e, 400, name, "must be -1 (off) or >= 0 (got %lld)", (long long)i);
        q->sp.top_k = i < 0 ? 0 : (int)i;
    }
    if ((v = opt(o, "n"))) {
        if (!rd_int(v, NAME("n"), INT32_MIN, INT32_MAX, &i, e)) return false;
        if (i != 1) return fail(e, 400, name, "only n = 1 is supported (got %lld)", (long long)i);
    }
    if ((v = opt(o, "ignore_eos")) && !rd_bool(v, NAME("ignore_eos"), &q->ignore_eos, e))
        return false;
    if ((v = opt(o, "skip_special_tokens")) &&
        !rd_bool(v, NAME("skip_special_tokens"), &q->skip_special, e))
        return false;
    if ((v = opt(o, "no_stop_trim")) && !rd_bool(v, NAME("no_stop_trim"), &q->no_stop_trim, e))
        return false;
    if ((v = opt(o, "stop")) && !rd_stop(v, NAME("stop"), q, e)) return false;
    if ((v = opt(o, "stop_token_ids"))) {
        if (!rd_ids(v, NAME("stop_token_ids"), s->o.vocab, &q->stop_ids, &q->n_stop_ids, e))
            return false;
        if (q->n_stop_ids > HTTP_MAX_STOP)
            return fail(e, 400, name, "at most %d stop token ids", HTTP_MAX_STOP);
    }
    return rd_neutral(o, "frequency_penalty", NAME("frequency_penalty"), 0, e) &&
           rd_neutral(o, "presence_penalty", NAME("presence_penalty"), 0, e) &&
           rd_neutral(o, "repetition_penalty", NAME("repetition_penalty"), 1, e) &&
           rd_neutral(o, "min_new_tokens", NAME("min_new_tokens"), 0, e) &&
           rd_neutral(o, "min_tokens", NAME("min_tokens"), 0, e);
#undef NAME
}

/* max_new_tokens / max_tokens / max_completion_tokens (v may be NULL). */
static bool rd_max(const json_t *v, const char *name, gen_req *q, http_err *e)
{
    int64_t i;
    if (!v) return true;
    if (!rd_int(v, name, 1, INT32_MAX, &i, e)) return false;
    q->max_new = (int)i;
    q->max_given = true;
    q->max_name = name;
    return true;
}

static bool rd_seed(const json_t *v, const char *name, gen_req *q, http_err *e)
{
    int64_t i;
    if (!v) return true;
    if (!rd_int(v, name, INT64_MIN, INT64_MAX, &i, e)) return false;
    q->sp.seed = (uint64_t)i;
    q->seed_given = true;
    return true;
}

/* rid and data_parallel_rank, accepted on every generation endpoint (the
 * router's --dp-aware adds data_parallel_rank to every POST body). */
static bool parse_routing(const json_t *o, gen_req *q, const serve_http *s, http_err *e)
{
    json_t *v;
    if ((v = opt(o, "rid"))) {
        if (!json_is_string(v)) return fail(e, 400, "rid", "expected a string (one request)");
        if (json_string_length(v) >= sizeof q->rid)
            return fail(e, 400, "rid", "longer than %zu bytes", sizeof q->rid - 1);
        snprintf(q->rid, sizeof q->rid, "%s", json_string_value(v));
    }
    if ((v = opt(o, "data_parallel_rank"))) {
        int groups = s->o.dp_groups > 0 ? s->o.dp_groups : 1;
        int64_t i;
        if (!rd_int(v, "data_parallel_rank", 0, groups - 1, &i, e)) return false;
        q->dp_rank = (int)i;
    }
    return true;
}

/* Tokenizes text[len] (bos added as SGLang does) into q->ids. */
static bool encode_text(const serve_http *s, const char *text, size_t len, const char *name,
                        gen_req *q, http_err *e)
{
    if (len == 0) return fail(e, 400, name, "empty prompt");
    dpep_diag diag;
    dpep_diag_init(&diag);
    size_t n = 0;
    dpep_status st = dpep_tok_encode(s->tok, text, len, true, &q->ids, &n, &diag);
    if (st != DPEP_OK)
        return fail(e, st == DPEP_ERR_NOMEM ? 500 : 400, name, "%s",
                    diag.n ? diag.item[0].msg : dpep_status_string(st));
    if (n > INT32_MAX / 2) return fail(e, 400, name, "prompt too long");
    q->n_ids = (int)n;
    q->prompt_name = name;
    return true;
}

/* Prompt length and max_new_tokens against the context and the vocabulary;
 * max_new_tokens not given: the default, capped by what the context leaves. */
static bool check_lengths(const serve_http *s, gen_req *q, http_err *e)
{
    int64_t ctx = s->o.context_len;
    if (q->n_ids == 0) return fail(e, 400, q->prompt_name, "empty prompt");
    for (int i = 0; i < q->n_ids; i++)
        if (q->ids[i] < 0 || q->ids[i] >= s->o.vocab)
            return fail(e, 400, q->prompt_name, "token %d of the prompt (id %d) is out of the "
                        "model's vocabulary [0, %d)", i, (int)q->ids[i], s->o.vocab);
    if (ctx > 0 && q->n_ids >= ctx)
        return fail(e, 400, q->prompt_name, "the prompt has %d tokens; the model's context "
                    "length is %lld tokens (prompt + max new tokens must fit)", q->n_ids,
                    (long long)ctx);
    if (!q->max_given) {
        int64_t d = s->o.default_max_new_tokens > 0 ? s->o.default_max_new_tokens
                                                      : HTTP_DEFAULT_MAX_NEW;
        if (ctx > 0 && d > ctx - q->n_ids) d = ctx - q->n_ids;
        q->max_new = (int)d;
    } else if (ctx > 0 && (int64_t)q->n_ids + q->max_new > ctx) {
        return fail(e, 400, q->max_name, "the prompt (%d tokens) + %s (%d) = %lld tokens exceeds "
                    "the model's context length of %lld tokens", q->n_ids, q->max_name,
                    q->max_new, (long long)q->n_ids + q->max_new, (long long)ctx);
    }
    return true;
}

/* POST /generate (SGLang): text or input_ids, sampling_params, stream,
 * return_logprob, rid, data_parallel_rank. */
static bool parse_generate(const serve_http *s, const json_t *o, gen_req *q, http_err *e)
{
    json_t *text = opt(o, "text"), *ids = opt(o, "input_ids"), *sp = opt(o, "sampling_params");
    json_t *v;
    int64_t i;
    if (sp && !json_is_object(sp)) return fail(e, 400, "sampling_params", "expected an object");
    if (sp && (!parse_sampling(sp, "sampling_params.", q, s, e) ||
               !rd_max(opt(sp, "max_new_tokens"), "sampling_params.max_new_tokens", q, e) ||
               !rd_seed(opt(sp, "sampling_seed"), "sampling_params.sampling_seed", q, e) ||
               !rd_seed(opt(sp, "seed"), "sampling_params.seed", q, e)))
        return false;
    if ((v = opt(o, "stream")) && !rd_bool(v, "stream", &q->stream, e)) return false;
    if ((v = opt(o, "return_logprob")) && !rd_bool(v, "return_logprob", &q->logprobs, e))
        return false;
    if ((v = opt(o, "top_logprobs_num"))) {
        if (!rd_int(v, "top_logprobs_num", INT32_MIN, INT32_MAX, &i, e)) return false;
        if (i != 0) return fail(e, 400, "top_logprobs_num", "top logprobs are not supported");
    }
    if (!parse_routing(o, q, s, e)) return false;
    if (text && ids) return fail(e, 400, "text", "give either text or input_ids, not both");
    if (!text && !ids) return fail(e, 400, "text", "either text or input_ids is required");
    if (text) {
        if (json_is_array(text))
            return fail(e, 400, "text", "batched text is not supported (send one string)");
        if (!json_is_string(text)) return fail(e, 400, "text", "expected a string");
        if (!encode_text(s, json_string_value(text), json_string_length(text), "text", q, e))
            return false;
    } else {
        if (json_is_array(json_array_get(ids, 0)))
            return fail(e, 400, "input_ids", "batched input_ids are not supported");
        if (!rd_ids(ids, "input_ids", s->o.vocab, &q->ids, &q->n_ids, e)) return false;
        q->prompt_name = "input_ids";
    }
    if (!q->max_name) q->max_name = "sampling_params.max_new_tokens";
    return check_lengths(s, q, e);
}

/* model: the served name; absent (or the router's "unknown") is accepted. */
static bool check_model(const serve_http *s, const json_t *o, http_err *e)
{
    json_t *v = opt(o, "model");
    if (!v) return true;
    if (!json_is_string(v)) return fail(e, 400, "model", "expected a string");
    const char *m = json_string_value(v);
    if (strcmp(m, s->served) == 0 || strcmp(m, "unknown") == 0) return true;
    fail_at(e, 404, "model", NULL, "The model `%s` does not exist (this server serves `%s`).", m,
            s->served);
    e->code = "model_not_found";
    return false;
}

/* The OpenAI fields shared by completions and chat. */
static bool parse_openai_common(const serve_http *s, const json_t *o, gen_req *q, http_err *e)
{
    json_t *v, *so;
    if (!check_model(s, o, e) || !parse_sampling(o, "", q, s, e) ||
        !rd_seed(opt(o, "seed"), "seed", q, e) || !parse_routing(o, q, s, e))
        return false;
    if ((v = opt(o, "stream")) && !rd_bool(v, "stream", &q->stream, e)) return false;
    if ((so = opt(o, "stream_options"))) {
        if (!json_is_object(so)) return fail(e, 400, "stream_options", "expected an object");
        if ((v = opt(so, "include_usage")) &&
            !rd_bool(v, "stream_options.include_usage", &q->include_usage, e))
            return false;
    }
    if ((v = opt(o, "logit_bias")) && (!json_is_object(v) || json_object_size(v) > 0))
        return fail(e, 400, "logit_bias", "logit_bias is not supported");
    if ((v = opt(o, "response_format"))) { /* no constrained decoding: only plain text */
        json_t *t = json_is_object(v) ? opt(v, "type") : NULL;
        if (!json_is_object(v) || !json_is_string(t))
            return fail(e, 400, "response_format", "expected an object with a string \"type\"");
        if (strcmp(json_string_value(t), "text") != 0)
            return fail(e, 400, "response_format", "response_format type \"%.40s\" is not supported "
                        "(no constrained decoding; only \"text\")", json_string_value(t));
    }
    return true;
}

/* The prompt of /v1/completions: a string, token ids, or a list of one of
 * either (a longer list is a batch: refused). */
static bool completion_prompt(const serve_http *s, json_t *p, gen_req *q, http_err *e)
{
    if (!p) return fail(e, 400, "prompt", "required");
    if (json_is_array(p) && (json_is_string(json_array_get(p, 0)) ||
                             json_is_array(json_array_get(p, 0)))) {
        if (json_array_size(p) > 1)
            return fail(e, 400, "prompt", "batched prompts are not supported (send one prompt)");
        p = json_array_get(p, 0);
    }
    if (json_is_string(p))
        return encode_text(s, json_string_value(p), json_string_length(p), "prompt", q, e);
    if (!json_is_array(p))
        return fail(e, 400, "prompt", "expected a string or an array of token ids");
    q->prompt_name = "prompt";
    return rd_ids(p, "prompt", s->o.vocab, &q->ids, &q->n_ids, e);
}

/* POST /v1/completions. */
static bool parse_completions(const serve_http *s, const json_t *o, gen_req *q, http_err *e)
{
    json_t *v;
    int64_t i;
    if (!parse_openai_common(s, o, q, e) || !rd_max(opt(o, "max_tokens"), "max_tokens", q, e))
        return false;
    if ((v = opt(o, "logprobs"))) {
        if (!rd_int(v, "logprobs", 0, 5, &i, e)) return false;
        q->logprobs = true;
    }
    bool b = false;
    if ((v = opt(o, "echo")) && (!rd_bool(v, "echo", &b, e) || b))
        return b ? fail(e, 400, "echo", "echo is not supported") : false;
    if ((v = opt(o, "best_of"))) {
        if (!rd_int(v, "best_of", INT32_MIN, INT32_MAX, &i, e)) return false;
        if (i != 1) return fail(e, 400, "best_of", "only best_of = 1 is supported");
    }
    if ((v = opt(o, "suffix")) && (!json_is_string(v) || json_string_length(v) > 0))
        return fail(e, 400, "suffix", "suffix is not supported");
    if (!completion_prompt(s, opt(o, "prompt"), q, e)) return false;
    if (!q->max_name) q->max_name = "max_tokens";
    return check_lengths(s, q, e);
}

/* The chat fields: logprobs, top_logprobs, max(_completion)_tokens, the
 * template's kwargs (thinking). */
static bool parse_chat_fields(const json_t *o, gen_req *q, dpep_chat_opts *co, http_err *e)
{
    json_t *v, *kw;
    int64_t i;
    if ((v = opt(o, "logprobs")) && !rd_bool(v, "logprobs", &q->logprobs, e)) return false;
    if ((v = opt(o, "top_logprobs"))) {
        if (!rd_int(v, "top_logprobs", INT32_MIN, INT32_MAX, &i, e)) return false;
        if (i != 0) return fail(e, 400, "top_logprobs", "top logprobs are not supported");
    }
    if ((v = opt(o, "tools")) && (!json_is_array(v) || json_array_size(v) > 0))
        return fail(e, 400, "tools", "tools are not supported");
    json_t *mct = opt(o, "max_completion_tokens");
    if (!rd_max(mct ? mct : opt(o, "max_tokens"), mct ? "max_completion_tokens" : "max_tokens", q,
                e))
        return false;
    co->add_generation_prompt = true;
    if ((kw = opt(o, "chat_template_kwargs"))) {
        if (!json_is_object(kw)) return fail(e, 400, "chat_template_kwargs", "expected an object");
        if ((v = opt(kw, "thinking")) &&
            !rd_bool(v, "chat_template_kwargs.thinking", &co->thinking, e))
            return false;
        if ((v = opt(kw, "enable_thinking")) &&
            !rd_bool(v, "chat_template_kwargs.enable_thinking", &co->thinking, e))
            return false;
    }
    return true;
}

/* POST /v1/chat/completions: messages through the tokenizer's template. */
static bool parse_chat(const serve_http *s, const json_t *o, const char *body, size_t len,
                       gen_req *q, http_err *e)
{
    dpep_chat_opts co = {0};
    if (!parse_openai_common(s, o, q, e) || !parse_chat_fields(o, q, &co, e)) return false;
    dpep_chat_kind k = dpep_tok_chat_kind(s->tok);
    if (k == DPEP_CHAT_NONE || k == DPEP_CHAT_UNSUPPORTED)
        return fail(e, 400, "chat_template", "the model's tokenizer has %s chat template (dpep "
                    "renders the DeepSeek V2/V2.5/V3/V3.1/R1 templates); use /v1/completions",
                    k == DPEP_CHAT_NONE ? "no" : "an unsupported");
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_chat_conv conv = {0};
    dpep_status st = dpep_chat_parse_json(body, len, "request", &conv, &diag);
    if (st == DPEP_OK && conv.n == 0) {
        dpep_chat_conv_free(&conv);
        return fail(e, 400, "messages", "must not be empty");
    }
    size_t n = 0;
    if (st == DPEP_OK) st = dpep_tok_chat_encode(s->tok, conv.msg, conv.n, &co, &q->ids, &n, &diag);
    dpep_chat_conv_free(&conv);
    if (st != DPEP_OK)
        return fail_at(e, st == DPEP_ERR_NOMEM ? 500 : 400, "messages", NULL, "%s",
                       diag.n ? diag.item[0].msg : dpep_status_string(st));
    q->n_ids = (int)n;
    q->prompt_name = "messages";
    if (!q->max_name) q->max_name = "max_tokens";
    return check_lengths(s, q, e);
}

/* ======================================================================== */
/* 4. A generation in flight                                                 */
/* ======================================================================== */

typedef enum gen_end {
    GE_RUNNING = 0,
    GE_LENGTH,      /* max_new_tokens reached                                */
    GE_STOP,        /* eos, a stop token (matched_id) or string (matched_str) */
    GE_ABORT,       /* the job aborted it (hub ABORT): finish_reason abort    */
    GE_ERROR,       /* the job could not run it (hub ERROR): 400              */
    GE_TIMEOUT,     /* request_timeout_s passed: 504                          */
    GE_STOPPING,    /* the server is stopping (or drained the job): 503      */
    GE_NOMEM,       /* out of memory while answering: 500                     */
    GE_GONE,        /* the client disconnected: no answer                     */
} gen_end;

typedef enum sse_state { SSE_START = 0, SSE_RUN, SSE_DONE } sse_state;

/* One generation; owned by its connection's context. */
typedef struct gen {
    serve_http *s;
    struct MHD_Connection *conn;
    gen_req q;
    hub_req *r;               /* our reference; NULL before submit            */
    hub_finish hub_fin;       /* the hub's finish as last seen                 */
    bool cancelled;           /* hub_cancel called (once: the job aborts once) */
    dpep_detok *dt;
    char *text;               /* decoded output, trimmed at a stop             */
    size_t len;
    int64_t cap;
    int n_seen;               /* hub tokens processed                          */
    int n_keep;               /* output tokens in the answer (<= n_seen)       */
    gen_end end;
    int matched_id, matched_str; /* GE_STOP: the token / stop[] index, or -1  */
    char why[256];            /* GE_ABORT / GE_ERROR: the job's message        */
    double t0, t_check, timeout_s;
    char id[160];             /* OpenAI id ("cmpl-RID", "chatcmpl-RID")        */
    long long created;
    /* streaming */
    sse_state sse;
    size_t sent;              /* text bytes sent                               */
    int n_sent;               /* tokens sent (ids / logprobs)                  */
    char *out;                /* pending SSE bytes                             */
    size_t out_len, out_off;
    int64_t out_cap;
} gen;

static gen *gen_new(serve_http *s, struct MHD_Connection *c, gen_api api)
{
    gen *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    atomic_fetch_add(&s->active, 1);
    g->s = s;
    g->conn = c;
    gen_req_init(&g->q, api);
    g->matched_id = g->matched_str = -1;
    g->t0 = g->t_check = dpep_clock_s();
    g->timeout_s = s->o.request_timeout_s;
    g->created = (long long)time(NULL);
    return g;
}

static void gen_free(gen *g)
{
    if (!g) return;
    if (g->r) {
        if (g->hub_fin == HUB_RUNNING && !g->cancelled) hub_cancel(g->s->hub, g->r, false);
        hub_req_release(g->s->hub, g->r);
    }
    dpep_detok_free(g->dt);
    gen_req_free(&g->q);
    free(g->text);
    free(g->out);
    atomic_fetch_sub(&g->s->active, 1);
    free(g);
}

/* Grows *buf (capacity *cap) to hold need bytes (base's dpep_grow). */
static bool buf_reserve(char **buf, int64_t *cap, size_t need)
{
    return dpep_grow((void **)buf, cap, (int64_t)need, 1);
}

/* Ends the generation; a request the job may still run is cancelled there. */
static void gen_set_end(gen *g, gen_end end)
{
    if (g->end != GE_RUNNING) return;
    g->end = end;
    if (g->r && g->hub_fin == HUB_RUNNING && !g->cancelled) {
        g->cancelled = true;
        hub_cancel(g->s->hub, g->r, end == GE_STOP || end == GE_LENGTH);
    }
}

/* The earliest stop string in text that ends after byte `from`. */
static void gen_check_stops(gen *g, size_t from)
{
    if (g->q.n_stop == 0 || g->end != GE_RUNNING) return;
    size_t start = from > g->q.max_stop - 1 ? from - (g->q.max_stop - 1) : 0;
    const char *best = NULL;
    for (int i = 0; i < g->q.n_stop; i++) {
        const char *p = memmem(g->text + start, g->len - start, g->q.stop[i], strlen(g->q.stop[i]));
        if (p && (!best || p < best)) {
            best = p;
            g->matched_str = i;
        }
    }
    if (!best) return;
    if (!g->q.no_stop_trim) g->len = (size_t)(best - g->text);
    gen_set_end(g, GE_STOP);
}

static void gen_append(gen *g, const char *piece, size_t n)
{
    if (n == 0 || g->end != GE_RUNNING) return;
    if (!buf_reserve(&g->text, &g->cap, g->len + n + 1)) {
        gen_set_end(g, GE_NOMEM);
        return;
    }
    size_t from = g->len;
    memcpy(g->text + g->len, piece, n);
    g->len += n;
    gen_check_stops(g, from);
}

/* Flushes what the detokenizer holds back (at the end of the output). */
static void gen_flush(gen *g)
{
    const char *piece = NULL;
    size_t n = 0;
    if (g->dt && dpep_detok_finish(g->dt, &piece, &n) == DPEP_OK) gen_append(g, piece, n);
}

static bool is_stop_id(const gen *g, int32_t id)
{
    if (!g->q.ignore_eos && id == dpep_tok_eos_id(g->s->tok)) return true;
    for (int i = 0; i < g->q.n_stop_ids; i++)
        if (g->q.stop_ids[i] == id) return true;
    return false;
}

/* Output token i of the hub request: stop ids, then text and stop strings. */
static void gen_token(gen *g, int i)
{
    int32_t id = g->r->out[i];
    g->n_seen = g->n_keep = i + 1;
    bool stop = is_stop_id(g, id);
    if (!stop || g->q.no_stop_trim) {
        const char *piece = NULL;
        size_t n = 0;
        if (dpep_detok_push(g->dt, id, &piece, &n) != DPEP_OK) {
            gen_set_end(g, GE_NOMEM);
            return;
        }
        gen_append(g, piece, n);
    }
    if (stop && g->end == GE_RUNNING) {
        gen_flush(g);
        if (g->end == GE_RUNNING) {
            g->matched_id = id;
            gen_set_end(g, GE_STOP);
        }
    }
}

/* Is the client gone? A peek at the socket: EOF or an error (a client does
 * not send more while it waits; a pipelined request reads as data). */
static bool client_gone(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return false;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return true;
    return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

/* The hub's finish, once every token before it has been processed. */
static void gen_hub_finished(gen *g, int n)
{
    gen_flush(g);
    if (g->end != GE_RUNNING) return;
    switch (g->hub_fin) {
    case HUB_FINISH_LENGTH: g->end = GE_LENGTH; break;
    case HUB_FINISH_STOP:
        g->matched_id = n > 0 ? g->r->out[n - 1] : -1;
        g->end = GE_STOP;
        break;
    case HUB_FINISH_ERROR:
    case HUB_FINISH_ABORT:
        snprintf(g->why, sizeof g->why, "%s", g->r->error[0] ? g->r->error : "aborted");
        utf8_trim(g->why);
        g->end = g->hub_fin == HUB_FINISH_ERROR        ? GE_ERROR
                 : hub_is_shutdown(g->s->hub) ? GE_STOPPING /* drained at shutdown: 503 */
                                              : GE_ABORT;
        break;
    default: g->end = GE_ABORT; break;
    }
}

/* One slice of waiting (at most wait_s): new tokens are processed, the end
 * is set when the job finished, the timeout passed, the client left or the
 * server stops. Returns whether anything changed. */
static bool gen_pump(gen *g, double wait_s)
{
    if (g->end != GE_RUNNING) return false;
    double now = dpep_clock_s();
    if (atomic_load(&g->s->stopping)) return gen_set_end(g, GE_STOPPING), true;
    if (g->timeout_s > 0 && now - g->t0 >= g->timeout_s) return gen_set_end(g, GE_TIMEOUT), true;
    if (now - g->t_check >= HTTP_GONE_CHECK_S) {
        g->t_check = now;
        if (client_gone(g->conn)) return gen_set_end(g, GE_GONE), true;
    }
    double w = wait_s;
    if (g->timeout_s > 0 && g->t0 + g->timeout_s - now < w) w = g->t0 + g->timeout_s - now;
    if (w < 0.001) w = 0.001;
    int seen = g->n_seen;
    int n = hub_wait(g->s->hub, g->r, seen, w, &g->hub_fin);
    for (int i = seen; i < n && g->end == GE_RUNNING; i++) gen_token(g, i);
    if (g->end == GE_RUNNING && g->hub_fin != HUB_RUNNING && g->n_seen >= n) gen_hub_finished(g, n);
    bool changed = n > seen || g->end != GE_RUNNING;
    if (!changed && dpep_clock_s() - now < w / 2) { /* hub_wait returns at once after shutdown */
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return changed;
}

/* A seed for a request without one: distinct per request and run. */
static uint64_t fresh_seed(serve_http *s)
{
    uint64_t x = atomic_fetch_add(&s->seq, 1) + (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull;
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Hands the request to the hub. 503 when the queue is full (Retry-After)
 * or the server is shutting down. */
static bool gen_submit(gen *g, http_err *e)
{
    serve_http *s = g->s;
    gen_req *q = &g->q;
    if (dpep_detok_create(s->tok, q->skip_special, &g->dt) != DPEP_OK)
        return fail(e, 500, NULL, "out of memory");
    hub_req *r = hub_req_new();
    if (!r) return fail(e, 500, NULL, "out of memory");
    snprintf(r->rid, sizeof r->rid, "%s", q->rid);
    r->input_ids = q->ids;
    r->n_input = q->n_ids;
    q->ids = NULL;
    r->max_new_tokens = q->max_new;
    r->sampling = q->sp;
    if (!q->seed_given) r->sampling.seed = fresh_seed(s);
    r->ignore_eos = q->ignore_eos;
    r->dp_rank = q->dp_rank;
    const char *why = "refused";
    if (!hub_submit(s->hub, r, &why)) {
        hub_req_release(s->hub, r);
        if (atomic_load(&s->stopping) || hub_is_shutdown(s->hub))
            return fail(e, 503, NULL, "the server is shutting down");
        fail(e, 503, NULL, "the server is busy: %s; retry later", why);
        e->retry_after = true;
        return false;
    }
    g->r = r;
    snprintf(g->id, sizeof g->id, "%s%s", q->api == API_CHAT ? "chatcmpl-" : "cmpl-", r->rid);
    return true;
}

/* ======================================================================== */
/* 5. Response bodies (SGLang and OpenAI shapes) and SSE                     */
/* ======================================================================== */

/* The token's text for logprobs (special tokens included); NULL if none. */
static char *token_text(const serve_http *s, int32_t id, size_t *len)
{
    char *t = NULL;
    dpep_diag diag;
    dpep_diag_init(&diag);
    if (dpep_tok_decode(s->tok, &id, 1, false, &t, len, &diag) != DPEP_OK) return NULL;
    return t;
}

/* SGLang's finish_reason object, or null while running. */
static json_t *finish_obj(const gen *g)
{
    switch (g->end) {
    case GE_RUNNING: return json_null();
    case GE_LENGTH: return json_pack("{s:s, s:i}", "type", "length", "length", g->n_keep);
    case GE_STOP:
        if (g->matched_str >= 0) {
            const char *m = g->q.stop[g->matched_str];
            return json_pack("{s:s, s:o}", "type", "stop", "matched", jstr(m, strlen(m)));
        }
        if (g->matched_id >= 0) return json_pack("{s:s, s:i}", "type", "stop", "matched", g->matched_id);
        return json_pack("{s:s, s:n}", "type", "stop", "matched");
    default: return json_pack("{s:s, s:s}", "type", "abort", "message", g->why[0] ? g->why : "aborted");
    }
}

/* OpenAI's finish_reason string, or null while running. */
static json_t *finish_str(const gen *g)
{
    switch (g->end) {
    case GE_RUNNING: return json_null();
    case GE_LENGTH: return json_string("length");
    case GE_STOP: return json_string("stop");
    default: return json_string("abort");
    }
}

/* Log-probs of output tokens [a, b) in the endpoint's shape. */
static json_t *logprobs_json(const gen *g, int a, int b)
{
    const hub_req *r = g->r;
    if (g->q.api == API_GENERATE) {
        json_t *arr = json_array();
        for (int i = a; arr && i < b; i++)
            json_array_append_new(arr, json_pack("[o, i, n]", jlogprob(r->logprob[i]), r->out[i]));
        return arr;
    }
    json_t *toks = json_array(), *lps = json_array(), *content = json_array();
    for (int i = a; toks && lps && content && i < b; i++) {
        size_t len = 0;
        char *t = token_text(g->s, r->out[i], &len);
        json_t *bytes = json_array();
        for (size_t k = 0; t && bytes && k < len; k++)
            json_array_append_new(bytes, json_integer((unsigned char)t[k]));
        json_array_append_new(toks, jstr(t ? t : "", t ? len : 0));
        json_array_append_new(lps, jlogprob(r->logprob[i]));
        json_array_append_new(content, json_pack("{s:o, s:o, s:o, s:[]}", "token",
                                                 jstr(t ? t : "", t ? len : 0), "logprob",
                                                 jlogprob(r->logprob[i]), "bytes",
                                                 bytes ? bytes : json_null(), "top_logprobs"));
        free(t);
    }
    if (g->q.api == API_COMPLETIONS) {
        json_decref(content);
        return json_pack("{s:o, s:o, s:n}", "tokens", toks ? toks : json_null(), "token_logprobs",
                         lps ? lps : json_null(), "top_logprobs");
    }
    json_decref(toks);
    json_decref(lps);
    return json_pack("{s:o}", "content", content ? content : json_null());
}

static json_t *usage_json(const gen *g)
{
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", g->r->n_input, "completion_tokens",
                     g->n_keep, "total_tokens", g->r->n_input + g->n_keep);
}

/* /generate: {"text", "output_ids", "meta_info"}; text[0..tlen), ids so far. */
static json_t *body_generate(const gen *g, size_t tlen)
{
    json_t *ids = json_array();
    for (int i = 0; ids && i < g->n_keep; i++) json_array_append_new(ids, json_integer(g->r->out[i]));
    json_t *meta = json_pack("{s:s, s:o, s:i, s:i, s:i, s:f}", "id", g->r->rid, "finish_reason",
                             finish_obj(g), "prompt_tokens", g->r->n_input, "completion_tokens",
                             g->n_keep, "cached_tokens", 0, "e2e_latency", dpep_clock_s() - g->t0);
    if (meta && g->q.logprobs)
        json_object_set_new(meta, "output_token_logprobs", logprobs_json(g, 0, g->n_keep));
    json_t *text = jstr(g->text ? g->text : "", tlen);
    if (!ids || !meta || !text) {
        json_decref(ids);
        json_decref(meta);
        json_decref(text);
        return NULL;
    }
    return json_pack("{s:o, s:o, s:o}", "text", text, "output_ids", ids, "meta_info", meta);
}

/* An OpenAI object around one choice (NULL choice: "choices": []). */
static json_t *openai_obj(const gen *g, const char *object, json_t *choice, bool usage)
{
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[]}", "id", g->id, "object", object, "created",
                          (json_int_t)g->created, "model", g->s->served, "choices");
    if (!o) {
        json_decref(choice);
        return NULL;
    }
    if (choice) json_array_append_new(json_object_get(o, "choices"), choice);
    if (usage) json_object_set_new(o, "usage", usage_json(g));
    return o;
}

/* The non-stream answer of completions / chat. */
static json_t *body_openai(const gen *g)
{
    json_t *lp = g->q.logprobs ? logprobs_json(g, 0, g->n_keep) : json_null();
    json_t *text = jstr(g->text ? g->text : "", g->len);
    json_t *choice;
    if (g->q.api == API_CHAT)
        choice = json_pack("{s:i, s:{s:s, s:o}, s:o, s:o}", "index", 0, "message", "role",
                           "assistant", "content", text, "logprobs", lp, "finish_reason",
                           finish_str(g));
    else
        choice = json_pack("{s:i, s:o, s:o, s:o}", "index", 0, "text", text, "logprobs", lp,
                           "finish_reason", finish_str(g));
    return openai_obj(g, g->q.api == API_CHAT ? "chat.completion" : "text_completion", choice,
                      true);
}

/* Appends "data: JSON\n\n" (v taken) to the pending SSE bytes. */
static void sse_emit(gen *g, json_t *v)
{
    char *s = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    size_t n = s ? strlen(s) : 0;
    if (!s || !buf_reserve(&g->out, &g->out_cap, g->out_len + n + 9)) {
        free(s);
        gen_set_end(g, GE_NOMEM);
        return;
    }
    memcpy(g->out + g->out_len, "data: ", 6);
    memcpy(g->out + g->out_len + 6, s, n);
    memcpy(g->out + g->out_len + 6 + n, "\n\n", 2);
    g->out_len += n + 8;
    free(s);
}

static void sse_done(gen *g)
{
    static const char done[] = "data: [DONE]\n\n";
    if (buf_reserve(&g->out, &g->out_cap, g->out_len + sizeof done)) {
        memcpy(g->out + g->out_len, done, sizeof done - 1);
        g->out_len += sizeof done - 1;
    }
    g->sse = SSE_DONE;
}

/* Text that is safe to send: all of it once ended, else all but what a stop
 * string could still trim, cut at a character boundary. */
static size_t sse_safe_len(const gen *g)
{
    if (g->end != GE_RUNNING || g->q.max_stop <= 1) return g->len;
    size_t keep = g->q.max_stop - 1;
    if (g->len <= keep) return g->sent;
    size_t n = g->len - keep;
    while (n > g->sent && (g->text[n] & 0xC0) == 0x80) n--;
    return n > g->sent ? n : g->sent;
}

/* One OpenAI chunk with the text (and logprobs) since the last one. */
static json_t *chunk_openai(gen *g, size_t safe)
{
    json_t *piece = jstr(g->text ? g->text + g->sent : "", safe - g->sent);
    json_t *lp = g->q.logprobs ? logprobs_json(g, g->n_sent, g->n_keep) : json_null();
    json_t *fin = finish_str(g), *choice;
    if (g->q.api == API_CHAT) {
        json_t *delta = g->end != GE_RUNNING && safe == g->sent ? json_object()
                                                                : json_pack("{s:o}", "content", piece);
        if (json_object_size(delta) == 0) json_decref(piece);
        choice = json_pack("{s:i, s:o, s:o, s:o}", "index", 0, "delta", delta, "logprobs", lp,
                           "finish_reason", fin);
    } else {
        choice = json_pack("{s:i, s:o, s:o, s:o}", "index", 0, "text", piece, "logprobs", lp,
                           "finish_reason", fin);
    }
    return openai_obj(g, g->q.api == API_CHAT ? "chat.completion.chunk" : "text_completion",
                      choice, false);
}

/* Emits what is new (final: with the finish reason). */
static void sse_progress(gen *g)
{
    bool final = g->end != GE_RUNNING;
    size_t safe = sse_safe_len(g);
    bool news = safe > g->sent || (g->q.api == API_GENERATE && g->n_keep > g->n_sent);
    if (!news && !final) return;
    sse_emit(g, g->q.api == API_GENERATE ? body_generate(g, safe) : chunk_openai(g, safe));
    g->sent = safe;
    g->n_sent = g->n_keep;
}

/* The next SSE bytes: the chat's role chunk, new text, the end (finish
 * chunk, usage, [DONE]) or an error event and [DONE]. */
static void sse_fill(gen *g)
{
    if (g->sse == SSE_START) {
        g->sse = SSE_RUN;
        if (g->q.api == API_CHAT) {
            json_t *c = json_pack("{s:i, s:{s:s, s:s}, s:n, s:n}", "index", 0, "delta", "role",
                                  "assistant", "content", "", "logprobs", "finish_reason");
            sse_emit(g, openai_obj(g, "chat.completion.chunk", c, false));
            return;
        }
    }
    if (g->end == GE_RUNNING) gen_pump(g, HTTP_WAIT_S);
    if (g->end == GE_GONE) return;
    if (g->end >= GE_ERROR) {
        http_err e;
        unsigned st = g->end == GE_TIMEOUT ? 504 : g->end == GE_STOPPING ? 503
                      : g->end == GE_NOMEM ? 500 : 400;
        fail(&e, st, NULL, "%s", g->end == GE_TIMEOUT    ? "request timed out (request_timeout_s)"
                                 : g->end == GE_STOPPING ? "the server is shutting down"
                                 : g->end == GE_NOMEM    ? "out of memory"
                                                         : g->why);
        g->out_len = g->out_off = 0; /* drop a partial chunk if any */
        sse_emit(g, err_json(&e));
        sse_done(g);
        return;
    }
    sse_progress(g);
    if (g->end == GE_RUNNING) return;
    if (g->q.include_usage && g->q.api != API_GENERATE)
        sse_emit(g, openai_obj(g, g->q.api == API_CHAT ? "chat.completion.chunk" : "text_completion",
                               NULL, true));
    sse_done(g);
}

/* MHD's content reader of a stream: blocks (in slices) until there is
 * something to send. */
static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    gen *g = cls;
    while (g->out_off == g->out_len) {
        g->out_off = g->out_len = 0;
        if (g->sse == SSE_DONE) return MHD_CONTENT_READER_END_OF_STREAM;
        if (g->end == GE_GONE) return MHD_CONTENT_READER_END_WITH_ERROR;
        sse_fill(g);
    }
    size_t n = g->out_len - g->out_off;
    if (n > max) n = max;
    memcpy(buf, g->out + g->out_off, n);
    g->out_off += n;
    return (ssize_t)n;
}

static enum MHD_Result reply_stream(struct MHD_Connection *c, gen *g)
{
    struct MHD_Response *r =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, HTTP_STREAM_BLOCK, sse_read, g, NULL);
    if (!r) return reply_oom(c);
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    enum MHD_Result ret = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

/* The non-stream answer once the generation has ended. */
static enum MHD_Result reply_gen(struct MHD_Connection *c, gen *g)
{
    http_err e;
    switch (g->end) {
    case GE_GONE: return MHD_NO; /* nobody to answer: close */
    case GE_TIMEOUT:
        fail(&e, 504, NULL, "request timed out after %g s (request_timeout_s)", g->timeout_s);
        return reply_err(c, &e);
    case GE_STOPPING: fail(&e, 503, NULL, "the server is shutting down"); return reply_err(c, &e);
    case GE_NOMEM: return reply_oom(c);
    case GE_ERROR: fail(&e, 400, NULL, "%s", g->why); return reply_err(c, &e);
    default: break;
    }
    json_t *v = g->q.api == API_GENERATE ? body_generate(g, g->len) : body_openai(g);
    return v ? reply_json(c, MHD_HTTP_OK, v, NULL) : reply_oom(c);
}

/* ======================================================================== */
/* 6. Info endpoints                                                         */
/* ======================================================================== */

static json_t *server_info(const serve_http *s)
{
    return json_pack("{s:s, s:s, s:s, s:s, s:i, s:i, s:i, s:I, s:i, s:s, s:s, s:s}", "model_path",
                     s->model_path, "served_model_name", s->served, "tokenizer_path", s->model_path,
                     "host", s->host, "port", atomic_load(&s->port), "tp_size", s->o.tp_size, "dp_size",
                     s->o.dp_size, "context_length", (json_int_t)s->o.context_len, "vocab_size",
                     s->o.vocab, "kv_cache_dtype", s->o.kv_cache_dtype ? s->o.kv_cache_dtype : "f32",
                     "version", "dpep " DPEP_VERSION, "engine", "dpep");
}

static json_t *model_info(const serve_http *s)
{
    json_t *arch = json_array();
    if (arch && *s->arch) json_array_append_new(arch, json_string(s->arch));
    return json_pack("{s:s, s:s, s:o, s:b, s:s}", "model_path", s->model_path, "model_type",
                     s->model_type, "architectures", arch ? arch : json_null(), "is_generation", 1,
                     "tokenizer_path", s->model_path);
}

/* The model card of /v1/models and /v1/models/{id}. */
static json_t *model_card(const serve_http *s)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:I}", "id", s->served, "object", "model", "created",
                     (json_int_t)time(NULL), "owned_by", "dpep", "root", s->model_path,
                     "max_model_len", (json_int_t)s->o.context_len);
}

static json_t *models_list(const serve_http *s)
{
    return json_pack("{s:s, s:[o]}", "object", "list", "data", model_card(s));
}

/* GET /v1/models/{id}: the card, or 404 model_not_found naming the id. */
static enum MHD_Result reply_model(const serve_http *s, struct MHD_Connection *c, const char *url)
{
    const char *id = url + strlen("/v1/models/");
    if (strcmp(id, s->served) == 0) return reply_json(c, MHD_HTTP_OK, model_card(s), NULL);
    http_err e;
    fail_at(&e, 404, "model", NULL, "The model `%.200s` does not exist (this server serves `%s`).",
            id, s->served);
    e.code = "model_not_found";
    return reply_err(c, &e);
}

/* /get_load: one object per DP group, in group order. */
static json_t *load_list(serve_http *s)
{
    int n = s->o.dp_groups > 0 ? s->o.dp_groups : 1;
    hub_load *l = calloc((size_t)n, sizeof *l);
    json_t *arr = json_array();
    if (!l || !arr) {
        free(l);
        json_decref(arr);
        return NULL;
    }
    int got = hub_get_load(s->hub, l, n);
    for (int i = 0; i < n; i++) {
        hub_load x = i < got ? l[i] : (hub_load){0, 0, 0};
        json_array_append_new(arr, json_pack("{s:i, s:I, s:I, s:I}", "dp_rank", i, "num_reqs",
                                             (json_int_t)x.num_reqs, "num_waiting_reqs",
                                             (json_int_t)x.num_waiting, "num_tokens",
                                             (json_int_t)x.num_tokens));
    }
    free(l);
    return arr;
}

/* /metrics: Prometheus text (metrics.c). */
static enum MHD_Result reply_metrics(serve_http *s, struct MHD_Connection *c)
{
    size_t n = 0;
    char *text = s->o.metrics ? metrics_render(s->o.metrics, &n) : NULL;
    if (s->o.metrics && !text) return reply_oom(c);
    if (!text) { /* a front without a job behind it (tests): no metrics */
        http_err e;
        return fail(&e, 404, NULL, "this server keeps no metrics"), reply_err(c, &e);
    }
    return reply_buf(c, MHD_HTTP_OK, text, n, "text/plain; version=0.0.4; charset=utf-8", NULL);
}

/* /flush_cache (SGLang: drop the prefix cache of every DP group, only when
 * nothing runs or waits; sglang-router calls it on every worker). */
static enum MHD_Result reply_flush(serve_http *s, struct MHD_Connection *c)
{
    http_err e;
    int r = hub_flush(s->hub, HTTP_FLUSH_TIMEOUT_S);
    if (r == 0)
        return fail(&e, 400, NULL, "cache not flushed: requests are running or waiting (flush "
                    "only when idle)"), reply_err(c, &e);
    if (r < 0) return fail(&e, 503, NULL, "cache not flushed: the server is busy or stopping"),
               reply_err(c, &e);
    static const char msg[] = "Cache flushed.\n";
    char *b = strdup(msg);
    if (!b) return reply_oom(c);
    return reply_buf(c, MHD_HTTP_OK, b, sizeof msg - 1, "text/plain; charset=utf-8", NULL);
}

/* ======================================================================== */
/* 7. MHD glue: routing, body, auth, lifetime                                */
/* ======================================================================== */

typedef enum route {
    R_NONE = 0, R_HEALTH, R_HEALTH_GEN, R_SERVER_INFO, R_MODEL_INFO, R_MODELS, R_LOAD,
    R_METRICS, R_FLUSH, R_GENERATE, R_COMPLETIONS, R_CHAT, R_MODEL,
} route;

enum { M_GET = 1, M_POST = 2 }; /* the methods a route takes (GET: also HEAD) */

static const struct {
    const char *path;
    route rt;
    unsigned methods;
} k_routes[] = {
    {"/health", R_HEALTH, M_GET},          {"/health_generate", R_HEALTH_GEN, M_GET},
    {"/server_info", R_SERVER_INFO, M_GET}, {"/get_server_info", R_SERVER_INFO, M_GET},
    {"/model_info", R_MODEL_INFO, M_GET},  {"/get_model_info", R_MODEL_INFO, M_GET},
    {"/v1/models", R_MODELS, M_GET},       {"/get_load", R_LOAD, M_GET},
    {"/metrics", R_METRICS, M_GET},        {"/flush_cache", R_FLUSH, M_GET | M_POST},
    {"/generate", R_GENERATE, M_POST},     {"/v1/completions", R_COMPLETIONS, M_POST},
    {"/v1/chat/completions", R_CHAT, M_POST},
    {"/v1/models/", R_MODEL, M_GET}, /* a prefix: /v1/models/{id} */
};

/* Per request (MHD's con_cls): the route, the body, a generation. */
typedef struct http_ctx {
    serve_http *s;
    int route_i;              /* index in k_routes, -1: unknown path          */
    bool keep_body;           /* a POST route called with POST                */
    char *body;
    size_t len;
    int64_t cap;
    bool too_big, oom;
    gen *g;
    bool untimed;             /* the connection timeout is off (generating)   */
} http_ctx;

static void ctx_free(http_ctx *x)
{
    gen_free(x->g);
    free(x->body);
    free(x);
}

static int route_find(const char *url)
{
    for (size_t i = 0; i < sizeof k_routes / sizeof k_routes[0]; i++) {
        const char *p = k_routes[i].path;
        size_t n = strlen(p);
        if (p[n - 1] == '/' ? strncmp(url, p, n) == 0 && url[n] && !strchr(url + n, '/')
                            : strcmp(url, p) == 0)
            return (int)i;
    }
    return -1;
}

/* Appends upload data (a body beyond max_body_bytes is drained, then 413). */
static void body_add(http_ctx *x, const char *data, size_t n)
{
    if (!x->keep_body || x->too_big || x->oom) return;
    size_t max = x->s->o.max_body_bytes ? x->s->o.max_body_bytes : HTTP_DEFAULT_MAX_BODY;
    if (x->len + n > max) {
        x->too_big = true;
        free(x->body);
        x->body = NULL;
        x->len = x->cap = 0;
        return;
    }
    if (!buf_reserve(&x->body, &x->cap, x->len + n + 1)) {
        x->oom = true;
        return;
    }
    memcpy(x->body + x->len, data, n);
    x->len += n;
    x->body[x->len] = 0;
}

static bool authorized(const serve_http *s, struct MHD_Connection *c)
{
    if (!s->api_key || !*s->api_key) return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncasecmp(h, "Bearer ", 7) != 0) return false;
    h += 7;
    while (*h == ' ') h++;
    size_t n = strlen(h), k = strlen(s->api_key);
    unsigned char diff = n != k;
    for (size_t i = 0; i < n && i < k; i++) diff |= (unsigned char)(h[i] ^ s->api_key[i]);
    return diff == 0;
}

/* The connection's idle timeout is off while a generation runs. */
static void untime(http_ctx *x, struct MHD_Connection *c)
{
    if (!x->untimed) MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
    x->untimed = true;
}

/* GET /health_generate: one real token through the job. */
static enum MHD_Result handle_health_gen(http_ctx *x, struct MHD_Connection *c)
{
    http_err e;
    gen *g = x->g = gen_new(x->s, c, API_HEALTH);
    if (!g || !(g->q.ids = malloc(sizeof *g->q.ids))) return reply_oom(c);
    int bos = dpep_tok_bos_id(x->s->tok);
    g->q.ids[0] = bos >= 0 && bos < x->s->o.vocab ? bos : 0;
    g->q.n_ids = 1;
    g->q.max_new = 1;
    g->q.sp.temperature = 0;
    g->q.ignore_eos = true;
    snprintf(g->q.rid, sizeof g->q.rid, "health-generate-%llu",
             (unsigned long long)atomic_fetch_add(&x->s->seq, 1));
    if (g->timeout_s <= 0 || g->timeout_s > HTTP_HEALTH_TIMEOUT_S) g->timeout_s = HTTP_HEALTH_TIMEOUT_S;
    if (!gen_submit(g, &e)) return reply_err(c, &e);
    untime(x, c);
    while (g->end == GE_RUNNING) gen_pump(g, HTTP_WAIT_S);
    if (g->end == GE_GONE) return MHD_NO;
    bool ok = (g->end == GE_LENGTH || g->end == GE_STOP) && g->n_seen > 0;
    if (ok) return reply_buf(c, MHD_HTTP_OK, NULL, 0, "text/plain", NULL);
    fail(&e, 503, NULL, "health_generate failed: %s",
         g->end == GE_TIMEOUT ? "no token in time" : g->why[0] ? g->why : "aborted");
    return reply_err(c, &e);
}

/* POST /generate, /v1/completions, /v1/chat/completions. */
static enum MHD_Result handle_gen(http_ctx *x, struct MHD_Connection *c, gen_api api)
{
    http_err e;
    json_error_t jerr;
    json_t *o = json_loadb(x->body ? x->body : "", x->len, 0, &jerr);
    if (!o) {
        fail(&e, 400, NULL, "invalid JSON in the request body (line %d, column %d): %s", jerr.line,
             jerr.column, jerr.text);
        return reply_err(c, &e);
    }
    gen *g = x->g = json_is_object(o) ? gen_new(x->s, c, api) : NULL;
    bool ok = g != NULL;
    if (!json_is_object(o)) fail(&e, 400, NULL, "the request body must be a JSON object");
    else if (!g) fail(&e, 500, NULL, "out of memory");
    else if (api == API_GENERATE) ok = parse_generate(x->s, o, &g->q, &e);
    else if (api == API_COMPLETIONS) ok = parse_completions(x->s, o, &g->q, &e);
    else ok = parse_chat(x->s, o, x->body, x->len, &g->q, &e);
    json_decref(o);
    if (!ok || !gen_submit(g, &e)) return reply_err(c, &e);
    untime(x, c);
    if (g->q.stream) return reply_stream(c, g);
    while (g->end == GE_RUNNING) gen_pump(g, HTTP_WAIT_S);
    return reply_gen(c, g);
}

/* The request is complete: method, auth, size, then the endpoint. */
static enum MHD_Result dispatch(http_ctx *x, struct MHD_Connection *c, const char *url,
                                const char *method)
{
    http_err e;
    serve_http *s = x->s;
    if (x->route_i < 0) return fail(&e, 404, NULL, "no such endpoint: %s", url), reply_err(c, &e);
    route rt = k_routes[x->route_i].rt;
    unsigned can = k_routes[x->route_i].methods;
    bool ok_method = ((can & M_POST) && strcmp(method, "POST") == 0) ||
                     ((can & M_GET) && (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0));
    if (!ok_method) {
        const char *allow = can == M_POST ? "POST" : can == M_GET ? "GET, HEAD" : "GET, HEAD, POST";
        fail(&e, 405, NULL, "method %s is not allowed on %s (use %s)", method, url, allow);
        e.allow = allow;
        return reply_err(c, &e);
    }
    if (rt != R_HEALTH && !authorized(s, c)) {
        fail(&e, 401, NULL, "invalid or missing API key (Authorization: Bearer KEY)");
        return reply_err(c, &e);
    }
    if (x->too_big) {
        fail(&e, 413, NULL, "the request body is larger than %zu bytes",
             s->o.max_body_bytes ? s->o.max_body_bytes : HTTP_DEFAULT_MAX_BODY);
        return reply_err(c, &e);
    }
    if (x->oom) return reply_oom(c);
    switch (rt) {
    case R_HEALTH:
        if (!hub_accepting(s->hub)) /* draining: out of a router's rotation */
            return fail(&e, 503, NULL, "the server is shutting down"), reply_err(c, &e);
        return reply_buf(c, MHD_HTTP_OK, NULL, 0, "text/plain", NULL);
    case R_HEALTH_GEN: return handle_health_gen(x, c);
    case R_SERVER_INFO: return reply_json(c, MHD_HTTP_OK, server_info(s), NULL);
    case R_MODEL_INFO: return reply_json(c, MHD_HTTP_OK, model_info(s), NULL);
    case R_MODELS: return reply_json(c, MHD_HTTP_OK, models_list(s), NULL);
    case R_LOAD: return reply_json(c, MHD_HTTP_OK, load_list(s), NULL);
    case R_METRICS: return reply_metrics(s, c);
    case R_MODEL: return reply_model(s, c, url);
    case R_FLUSH: return reply_flush(s, c);
    case R_GENERATE: return handle_gen(x, c, API_GENERATE);
    case R_COMPLETIONS: return handle_gen(x, c, API_COMPLETIONS);
    case R_CHAT: return handle_gen(x, c, API_CHAT);
    default: return reply_oom(c);
    }
}

/* MHD's access handler: called first with the headers, then with each
 * piece of the body, then once with nothing (the request is complete). */
static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls)
{
    (void)version;
    http_ctx *x = *con_cls;
    if (!x) {
        x = calloc(1, sizeof *x);
        if (!x) return MHD_NO;
        x->s = cls;
        x->route_i = route_find(url);
        x->keep_body = x->route_i >= 0 && (k_routes[x->route_i].methods & M_POST) &&
                       strcmp(method, "POST") == 0;
        *con_cls = x;
        if (*upload_size == 0) return MHD_YES;
    }
    if (*upload_size) {
        body_add(x, upload_data, *upload_size);
        *upload_size = 0;
        return MHD_YES;
    }
    return dispatch(x, c, url, method);
}

/* The request is over (answered, failed or the client left). */
static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)toe;
    http_ctx *x = *con_cls;
    if (!x) return;
    if (x->untimed)
        MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)HTTP_CONN_TIMEOUT_S);
    (void)cls;
    ctx_free(x);
    *con_cls = NULL;
}

/* MHD's messages: kept for the error of a failed start, else debug lines
 * (a client that leaves mid-answer is routine). */
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    serve_http *s = cls;
    char msg[256];
    vsnprintf(msg, sizeof msg, fmt, ap);
    msg[strcspn(msg, "\r\n")] = 0;
    if (atomic_load(&s->starting)) snprintf(s->start_err, sizeof s->start_err, "%s", msg);
    else DPEP_DEBUG("http: %s", msg);
}

static char *dup_or(const char *v, const char *dflt)
{
    return strdup(v && *v ? v : dflt);
}

static void http_free(serve_http *s)
{
    free(s->host);
    free(s->api_key);
    free(s->served);
    free(s->model_path);
    free(s->model_type);
    free(s->arch);
    free(s);
}

/* host (name, IPv4, IPv6, "[v6]") and port -> a listening address. */
static bool resolve(const char *host, int port, struct sockaddr_storage *ss, char *err, size_t n)
{
    char h[256], ps[16];
    size_t len = strlen(host);
    if (len >= 2 && host[0] == '[' && host[len - 1] == ']') snprintf(h, sizeof h, "%.*s", (int)len - 2, host + 1);
    else snprintf(h, sizeof h, "%s", host);
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV}, *res = NULL;
    int rc = getaddrinfo(h, ps, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, n, "cannot resolve the host: %s", gai_strerror(rc));
        return false;
    }
    memset(ss, 0, sizeof *ss);
    memcpy(ss, res->ai_addr, res->ai_addrlen < sizeof *ss ? res->ai_addrlen : sizeof *ss);
    freeaddrinfo(res);
    return true;
}

/* The owned copy of the options (NULL strings get defaults). */
static serve_http *http_new(const serve_http_opts *o, serve_hub *hub, const dpep_tokenizer *tok)
{
    serve_http *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->o = *o;
    s->hub = hub;
    s->tok = tok;
    s->host = dup_or(o->host, "127.0.0.1");
    s->api_key = o->api_key && *o->api_key ? strdup(o->api_key) : NULL;
    s->model_path = dup_or(o->model_path, "");
    s->served = dup_or(o->served_model_name, *s->model_path ? s->model_path : "default");
    s->model_type = dup_or(o->model_type, "");
    s->arch = dup_or(o->architecture, "");
    if (!s->host || (o->api_key && *o->api_key && !s->api_key) || !s->model_path || !s->served ||
        !s->model_type || !s->arch) {
        http_free(s);
        return NULL;
    }
    s->o.host = s->host;
    s->o.api_key = s->api_key;
    s->o.served_model_name = s->served;
    s->o.model_path = s->model_path;
    s->o.model_type = s->model_type;
    s->o.architecture = s->arch;
    atomic_init(&s->stopping, false);
    atomic_init(&s->active, 0);
    atomic_init(&s->starting, true);
    atomic_init(&s->seq, 1);
    atomic_init(&s->port, o->port);
    return s;
}

dpep_status serve_http_start(const serve_http_opts *o, serve_hub *hub, const dpep_tokenizer *tok,
                             serve_http **out, dpep_diag *diag)
{
    if (!o || !hub || !tok || !out) return DPEP_ERR_INTERNAL;
    if (o->port < 0 || o->port > 65535) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "server.port: %d is not a TCP port (0-65535)", o->port);
        return DPEP_ERR_INVALID;
    }
    serve_http *s = http_new(o, hub, tok);
    if (!s) return DPEP_ERR_NOMEM;
    struct sockaddr_storage ss;
    char err[256];
    if (!resolve(s->host, o->port, &ss, err, sizeof err)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "server: cannot listen on %s:%d: %s", s->host,
                      o->port, err);
        http_free(s);
        return DPEP_ERR_IO;
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_ERROR_LOG | MHD_USE_POLL;
    if (ss.ss_family == AF_INET6)
        flags |= strcmp(s->host, "::") == 0 || strcmp(s->host, "[::]") == 0 ? MHD_USE_DUAL_STACK
                                                                            : MHD_USE_IPv6;
    s->d = MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_request, s,
                            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
                            MHD_OPTION_CONNECTION_TIMEOUT, HTTP_CONN_TIMEOUT_S,
                            MHD_OPTION_CONNECTION_LIMIT, HTTP_MAX_CONNECTIONS,
                            MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                            MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s, MHD_OPTION_END);
    atomic_store(&s->starting, false);
    if (!s->d) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "server: cannot listen on %s:%d: %s", s->host,
                      o->port, s->start_err[0] ? s->start_err : "libmicrohttpd failed to start");
        http_free(s);
        return DPEP_ERR_IO;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    atomic_store(&s->port, di ? (int)di->port : o->port);
    *out = s;
    return DPEP_OK;
}

int serve_http_port(const serve_http *s)
{
    return s ? atomic_load(&s->port) : -1;
}

/* Waiting generations see `stopping` within a slice and answer 503 (or an
 * error event); they get HTTP_STOP_GRACE_S to write it before MHD shuts
 * every socket down and joins the connection threads. */
void serve_http_stop(serve_http *s)
{
    if (!s) return;
    atomic_store(&s->stopping, true);
    double t0 = dpep_clock_s();
    while (atomic_load(&s->active) > 0 && dpep_clock_s() - t0 < HTTP_STOP_GRACE_S) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(s->d);
    http_free(s);
}
