/* metrics.c — the serving metrics and their Prometheus text (metrics.h). */
#include "metrics.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpep_base.h"

/* Histogram bounds (seconds), as SGLang's dashboards expect them: log-like
 * from a millisecond to minutes. */
static const double k_ttft_le[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5,
                                   0.75, 1, 2.5, 5, 7.5, 10, 15, 20, 25, 30, 40, 60, 120, 240, 400};
static const double k_itl_le[] = {0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.06,
                                  0.08, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 10};
static const double k_e2e_le[] = {0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200,
                                  1800, 2400};
#define N_LE(a) ((int)(sizeof(a) / sizeof((a)[0])))
#define MAX_LE 32

typedef struct hist {
    const double *le;
    int n;
    int64_t count[MAX_LE + 1]; /* per bucket (not cumulative); [n]: +Inf only */
    double sum;
    int64_t total;
} hist;

struct serve_metrics {
    pthread_mutex_t mu;
    char model[256];                 /* the label value, escaped                */
    int groups, layers, experts;
    int64_t prompt_tokens, gen_tokens, requests, aborted, failed, refused;
    hist ttft, itl, e2e;
    metrics_group *g;                /* [groups]                                */
    int64_t *assigned;               /* [groups] requests assigned, ever        */
    int64_t queued;                  /* in the hub, not yet taken by the job    */
    int64_t *expert;                 /* [layers * experts]                      */
    double t_mark;                   /* generation throughput: last mark        */
    int64_t gen_mark;
    double gen_rate;
};

/* A label value: backslash, quote and newline escaped (Prometheus text). */
static void escape_label(char *dst, size_t cap, const char *src)
{
    size_t o = 0;
    for (; *src && o + 3 < cap; src++) {
        char c = *src;
        if (c == '\\' || c == '"' || c == '\n') {
            dst[o++] = '\\';
            dst[o++] = c == '\n' ? 'n' : c;
        } else {
            dst[o++] = c;
        }
    }
    dst[o] = 0;
}

serve_metrics *metrics_create(const char *model_name, int groups, int layers, int experts)
{
    serve_metrics *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    pthread_mutex_init(&m->mu, NULL);
    escape_label(m->model, sizeof m->model, model_name ? model_name : "");
    m->groups = groups > 0 ? groups : 1;
    m->layers = layers > 0 && experts > 0 ? layers : 0;
    m->experts = m->layers ? experts : 0;
    m->ttft = (hist){.le = k_ttft_le, .n = N_LE(k_ttft_le)};
    m->itl = (hist){.le = k_itl_le, .n = N_LE(k_itl_le)};
    m->e2e = (hist){.le = k_e2e_le, .n = N_LE(k_e2e_le)};
    m->g = calloc((size_t)m->groups, sizeof *m->g);
    m->assigned = calloc((size_t)m->groups, sizeof *m->assigned);
    m->expert = calloc((size_t)m->layers * (size_t)m->experts + 1, sizeof *m->expert);
    m->t_mark = dpep_clock_s();
    if (!m->g || !m->assigned || !m->expert) {
        metrics_destroy(m);
        return NULL;
    }
    return m;
}

void metrics_destroy(serve_metrics *m)
{
    if (!m) return;
    pthread_mutex_destroy(&m->mu);
    free(m->g);
    free(m->assigned);
    free(m->expert);
    free(m);
}

static void hist_add(hist *h, double v)
{
    int b = 0;
    while (b < h->n && v > h->le[b]) b++;
    h->count[b]++;
    h->sum += v;
    h->total++;
}

void metrics_on_admit(serve_metrics *m, int prompt_tokens)
{
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->prompt_tokens += prompt_tokens;
    pthread_mutex_unlock(&m->mu);
}

void metrics_on_token(serve_metrics *m, bool first, double since_s)
{
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->gen_tokens++;
    hist_add(first ? &m->ttft : &m->itl, since_s);
    pthread_mutex_unlock(&m->mu);
}

void metrics_on_finish(serve_metrics *m, metrics_end end, double e2e_s)
{
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->requests++;
    if (end == M_END_ABORT) m->aborted++;
    if (end == M_END_ERROR) m->failed++;
    hist_add(&m->e2e, e2e_s);
    pthread_mutex_unlock(&m->mu);
}

void metrics_on_refused(serve_metrics *m)
{
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    m->refused++;
    pthread_mutex_unlock(&m->mu);
}

void metrics_on_assign(serve_metrics *m, int group)
{
    if (!m || group < 0 || group >= m->groups) return;
    pthread_mutex_lock(&m->mu);
    m->assigned[group]++;
    pthread_mutex_unlock(&m->mu);
}

/* The generation rate over the last mark (at least a second apart). */
static void update_rate(serve_metrics *m, double now)
{
    if (now - m->t_mark < 1.0) return;
    m->gen_rate = (double)(m->gen_tokens - m->gen_mark) / (now - m->t_mark);
    m->gen_mark = m->gen_tokens;
    m->t_mark = now;
}

void metrics_set_groups(serve_metrics *m, const metrics_group *g, int n, int64_t queued)
{
    if (!m) return;
    pthread_mutex_lock(&m->mu);
    memcpy(m->g, g, sizeof *g * (size_t)(n < m->groups ? n : m->groups));
    m->queued = queued;
    update_rate(m, dpep_clock_s());
    pthread_mutex_unlock(&m->mu);
}

void metrics_set_expert_load(serve_metrics *m, const int64_t *load)
{
    if (!m || !m->layers) return;
    pthread_mutex_lock(&m->mu);
    memcpy(m->expert, load, sizeof *load * (size_t)m->layers * (size_t)m->experts);
    pthread_mutex_unlock(&m->mu);
}

/* ------------------------------------------------------------------------ */
/* Rendering                                                                 */
/* ------------------------------------------------------------------------ */

static void head(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void one(FILE *f, const serve_metrics *m, const char *name, const char *type,
                const char *help, double v)
{
    head(f, name, type, help);
    fprintf(f, "%s{model_name=\"%s\"} %.17g\n", name, m->model, v);
}

static void histogram(FILE *f, const serve_metrics *m, const char *name, const char *help,
                      const hist *h)
{
    head(f, name, "histogram", help);
    int64_t cum = 0;
    for (int b = 0; b < h->n; b++) {
        cum += h->count[b];
        fprintf(f, "%s_bucket{le=\"%g\",model_name=\"%s\"} %lld\n", name, h->le[b], m->model,
                (long long)cum);
    }
    fprintf(f, "%s_bucket{le=\"+Inf\",model_name=\"%s\"} %lld\n", name, m->model,
            (long long)h->total);
    fprintf(f, "%s_sum{model_name=\"%s\"} %.17g\n", name, m->model, h->sum);
    fprintf(f, "%s_count{model_name=\"%s\"} %lld\n", name, m->model, (long long)h->total);
}

/* One gauge per DP group; field: the offset of an int64 in metrics_group. */
static void per_group(FILE *f, const serve_metrics *m, const char *name, const char *help,
                      size_t field)
{
    size_t n = strlen(name);
    head(f, name, n > 6 && strcmp(name + n - 6, "_total") == 0 ? "counter" : "gauge", help);
    for (int i = 0; i < m->groups; i++) {
        int64_t v;
        memcpy(&v, (const char *)&m->g[i] + field, sizeof v);
        fprintf(f, "%s{model_name=\"%s\",dp_rank=\"%d\"} %lld\n", name, m->model, i, (long long)v);
    }
}

static void render_counters(FILE *f, const serve_metrics *m)
{
    one(f, m, "sglang:prompt_tokens_total", "counter", "Number of prefill tokens processed.",
        (double)m->prompt_tokens);
    one(f, m, "sglang:generation_tokens_total", "counter",
        "Number of generation tokens processed.", (double)m->gen_tokens);
    one(f, m, "sglang:num_requests_total", "counter", "Number of requests processed.",
        (double)m->requests);
    one(f, m, "sglang:num_aborted_requests_total", "counter",
        "Number of requests aborted (client gone, timeout, shutdown).", (double)m->aborted);
    one(f, m, "dpep_failed_requests_total", "counter",
        "Requests that could not run (larger than the KV pool).", (double)m->failed);
    one(f, m, "dpep_refused_requests_total", "counter",
        "Requests answered 503 (queue full or shutting down).", (double)m->refused);
    int64_t cached = 0;
    for (int i = 0; i < m->groups; i++) cached += m->g[i].cached_tokens;
    one(f, m, "sglang:cached_tokens_total", "counter",
        "Prompt tokens served from the prefix cache (all DP groups).", (double)cached);
    per_group(f, m, "dpep_dp_rank_cached_tokens_total",
              "Prompt tokens the DP group took from its prefix cache.",
              offsetof(metrics_group, cached_tokens));
    per_group(f, m, "dpep_dp_rank_prompt_tokens_total",
              "Prompt tokens admitted by the DP group (cached or computed).",
              offsetof(metrics_group, prompt_tokens));
    per_group(f, m, "dpep_dp_rank_evicted_tokens_total",
              "Tokens the DP group's prefix cache dropped to make room.",
              offsetof(metrics_group, evicted_tokens));
}

static void render_gauges(FILE *f, const serve_metrics *m)
{
    int64_t used = 0, cap = 0, prompt = 0, cached = 0;
    for (int i = 0; i < m->groups; i++) {
        used += m->g[i].kv_used;
        cap += m->g[i].kv_capacity;
        prompt += m->g[i].prompt_tokens;
        cached += m->g[i].cached_tokens;
    }
    per_group(f, m, "sglang:num_running_reqs", "The number of running requests.",
              offsetof(metrics_group, running));
    per_group(f, m, "sglang:num_queue_reqs", "The number of requests waiting for admission.",
              offsetof(metrics_group, waiting));
    per_group(f, m, "sglang:num_used_tokens", "The number of tokens held in the KV pool.",
              offsetof(metrics_group, kv_used));
    per_group(f, m, "dpep_kv_capacity_tokens", "The tokens the DP group's KV pool holds.",
              offsetof(metrics_group, kv_capacity));
    per_group(f, m, "dpep_dp_rank_outstanding_requests",
              "Requests assigned to the DP group and not finished (the assignment's load).",
              offsetof(metrics_group, assigned_reqs));
    per_group(f, m, "dpep_dp_rank_outstanding_tokens",
              "Prompt plus max new tokens of the DP group's outstanding requests.",
              offsetof(metrics_group, assigned_tokens));
    one(f, m, "sglang:token_usage", "gauge", "The token usage (KV pool used / capacity).",
        cap > 0 ? (double)used / (double)cap : 0);
    one(f, m, "sglang:gen_throughput", "gauge", "The generation throughput (token/s).", m->gen_rate);
    one(f, m, "sglang:cache_hit_rate", "gauge",
        "The prefix cache hit rate (prompt tokens from the cache / prompt tokens admitted).",
        prompt > 0 ? (double)cached / (double)prompt : 0);
    per_group(f, m, "dpep_prefix_cache_tokens", "Tokens the DP group's prefix cache holds.",
              offsetof(metrics_group, cache_tokens));
    one(f, m, "dpep_http_queued_requests", "gauge",
        "Requests accepted by the HTTP front, not yet taken by the job.", (double)m->queued);
}

static void render_assigned(FILE *f, const serve_metrics *m)
{
    head(f, "dpep_dp_rank_requests_total", "counter",
         "Requests assigned to each DP group (explicit data_parallel_rank or the policy).");
    for (int i = 0; i < m->groups; i++)
        fprintf(f, "dpep_dp_rank_requests_total{model_name=\"%s\",dp_rank=\"%d\"} %lld\n", m->model, i,
                (long long)m->assigned[i]);
}

static void render_experts(FILE *f, const serve_metrics *m)
{
    if (!m->layers) return;
    head(f, "dpep_expert_tokens_total", "counter",
         "Tokens routed to each routed expert (all ranks; refreshed about once a second).");
    for (int l = 0; l < m->layers; l++)
        for (int x = 0; x < m->experts; x++)
            fprintf(f, "dpep_expert_tokens_total{model_name=\"%s\",layer=\"%d\",expert=\"%d\"} %lld\n",
                    m->model, l, x, (long long)m->expert[(size_t)l * (size_t)m->experts + (size_t)x]);
}

char *metrics_render(serve_metrics *m, size_t *len)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&buf, &n);
    if (!f) return NULL;
    pthread_mutex_lock(&m->mu);
    double now = dpep_clock_s();
    if (now - m->t_mark > 2.0) update_rate(m, now); /* idle: the rate decays to 0 */
    render_counters(f, m);
    render_gauges(f, m);
    render_assigned(f, m);
    histogram(f, m, "sglang:time_to_first_token_seconds",
              "Histogram of time to first token in seconds.", &m->ttft);
    histogram(f, m, "sglang:inter_token_latency_seconds",
              "Histogram of inter-token latency in seconds.", &m->itl);
    histogram(f, m, "sglang:e2e_request_latency_seconds",
              "Histogram of end-to-end request latency in seconds.", &m->e2e);
    render_experts(f, m);
    pthread_mutex_unlock(&m->mu);
    bool bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}
