/* metrics.h — private to runtime/serve: the counters, gauges and histograms
 * of `dpep serve`, rendered as Prometheus text for GET /metrics with
 * SGLang's metric names where SGLang has one (sglang:prompt_tokens_total,
 * sglang:time_to_first_token_seconds, sglang:num_running_reqs, ...), and
 * dpep's own (dpep_expert_tokens_total, dpep_dp_rank_*) for the rest.
 *
 * Writers: the hub (request events, under its own lock) and the serve loop
 * (per-DP-group state, expert load); the reader: an HTTP thread. One mutex of
 * its own guards it; it never calls out, so any caller may hold its own lock.
 *
 * Ownership: created and destroyed by the serve loop on rank 0; the hub and
 * the HTTP front borrow it. */
#ifndef DPEP_SERVE_METRICS_H
#define DPEP_SERVE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct serve_metrics serve_metrics; /* opaque */

/* groups: DP groups of the job; layers x experts: the routed-expert load
 * table (0 x 0 when the model has no routed experts). NULL when out of memory. */
serve_metrics *metrics_create(const char *model_name, int groups, int layers, int experts);
void metrics_destroy(serve_metrics *m);

/* Request events (rank 0). */
void metrics_on_admit(serve_metrics *m, int prompt_tokens);        /* taken into the job */
void metrics_on_token(serve_metrics *m, bool first, double since_s); /* TTFT or ITL     */
typedef enum metrics_end { M_END_OK, M_END_ABORT, M_END_ERROR } metrics_end;
void metrics_on_finish(serve_metrics *m, metrics_end end, double e2e_s);
void metrics_on_refused(serve_metrics *m); /* queue full or shutting down: 503 */
void metrics_on_assign(serve_metrics *m, int group); /* the request's DP group */

/* Each DP group's state as of the last step: running and waiting requests,
 * the tokens its KV pool holds of its capacity, and the requests and tokens
 * the assignment policy counts as outstanding there. */
typedef struct metrics_group {
    int64_t running, waiting, kv_used, kv_capacity;
    int64_t assigned_reqs, assigned_tokens;
    int64_t cache_tokens;                /* held by the prefix cache          */
    int64_t prompt_tokens, cached_tokens; /* admitted; of them from the cache */
    int64_t evicted_tokens;              /* dropped by the cache for room     */
} metrics_group;
void metrics_set_groups(serve_metrics *m, const metrics_group *g, int n, int64_t queued);
/* Tokens routed to each expert so far, all ranks: [layers * experts]. */
void metrics_set_expert_load(serve_metrics *m, const int64_t *load);

/* The Prometheus text exposition (version 0.0.4); malloc'd, the caller
 * frees it. NULL when out of memory. */
char *metrics_render(serve_metrics *m, size_t *len);

#endif
