/* http.h — private to runtime/serve: the HTTP front of `dpep serve` on rank 0
 * (libmicrohttpd, one thread per connection so a handler may block on the
 * hub). Endpoints, with SGLang's and OpenAI's field names:
 *   POST /generate, /v1/completions, /v1/chat/completions (stream or not),
 *   GET /v1/models, /health, /health_generate, /server_info, /get_server_info,
 *   /model_info, /get_model_info, /get_load, /metrics; GET or POST /flush_cache.
 * Every bad request is a 4xx with an OpenAI-style error object naming the
 * field; a full queue is 503 with Retry-After.
 *
 * Ownership: the server borrows the hub and the tokenizer (they outlive it). */
#ifndef DPEP_SERVE_HTTP_H
#define DPEP_SERVE_HTTP_H

#include "dpep_text.h"
#include "hub.h"

typedef struct serve_http_opts {
    const char *host;              /* "127.0.0.1", "0.0.0.0"                    */
    int port;                      /* 0: any free port (see serve_http_port)    */
    const char *api_key;           /* NULL/"": none; else Bearer on all but /health */
    const char *served_model_name; /* the model id clients send                 */
    const char *model_path;        /* reported in /server_info, /model_info     */
    const char *model_type;        /* "deepseek_v3"                              */
    const char *architecture;      /* "DeepseekV3ForCausalLM"                    */
    int tp_size, dp_size;          /* reported as JSON integers                 */
    int dp_groups;                 /* valid data_parallel_rank: [0, dp_groups)  */
    int vocab;                     /* the model's vocabulary (ids must be below) */
    int64_t context_len;           /* prompt + max_new_tokens must fit            */
    const char *kv_cache_dtype;    /* "f32" / "bf16": /server_info (SGLang's name) */
    int default_max_new_tokens;
    double request_timeout_s;      /* <= 0: none                                */
    size_t max_body_bytes;         /* larger bodies: 413                         */
    serve_metrics *metrics;        /* GET /metrics (borrowed; NULL: 404)         */
} serve_http_opts;

typedef struct serve_http serve_http; /* opaque */

/* Starts listening (threads of its own). DPEP_ERR_IO naming host:port when the
 * port cannot be bound. */
dpep_status serve_http_start(const serve_http_opts *o, serve_hub *hub, const dpep_tokenizer *tok,
                             serve_http **out, dpep_diag *diag);
/* The port actually bound. */
int serve_http_port(const serve_http *s);
/* Stops accepting and waits for the connection threads (after hub_shutdown
 * has woken the ones waiting on the hub). NULL is a no-op. */
void serve_http_stop(serve_http *s);

#endif
