/* hub.c — the hub between rank 0's HTTP threads and the serve loop (hub.h).
 * One mutex guards everything; requests sit in a FIFO until the loop takes
 * them, then in an index-ordered list of requests in the job. */
#include "hub.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HUB_MAX_LOAD 1024

struct serve_hub {
    pthread_mutex_t mu;
    pthread_cond_t work;       /* the serve loop waits here                    */
    hub_req **queue;           /* submitted, not yet taken (FIFO)              */
    int64_t n_queue, cap_queue, max_queued, running;
    hub_req **job;             /* taken, not finished, in index order          */
    int64_t n_job, cap_job;
    int64_t next_index;
    bool shutdown, draining, pending_cancel;
    pthread_cond_t flushed;    /* flush_seq moved                              */
    int64_t flush_asked, flush_seq; /* asks made / answered                   */
    int flush_result;          /* the last answer: 1 flushed, 0 busy           */
    serve_metrics *metrics;    /* borrowed                                     */
    hub_load load[HUB_MAX_LOAD];
    int n_load;
};

serve_hub *hub_create(int max_queued, int64_t running, serve_metrics *metrics)
{
    serve_hub *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    h->metrics = metrics;
    h->running = running;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->work, NULL);
    pthread_cond_init(&h->flushed, NULL);
    h->max_queued = max_queued > 0 ? max_queued : 1;
    return h;
}

static void req_free(hub_req *r)
{
    pthread_cond_destroy(&r->cv);
    free(r->input_ids);
    free(r->out);
    free(r->logprob);
    free(r);
}

/* Drops one reference; the caller holds the mutex. */
static void unref_locked(hub_req *r)
{
    if (--r->refs == 0) req_free(r);
}

void hub_destroy(serve_hub *h)
{
    if (!h) return;
    for (int64_t i = 0; i < h->n_queue; i++) unref_locked(h->queue[i]);
    for (int64_t i = 0; i < h->n_job; i++) unref_locked(h->job[i]);
    free(h->queue);
    free(h->job);
    pthread_cond_destroy(&h->work);
    pthread_cond_destroy(&h->flushed);
    pthread_mutex_destroy(&h->mu);
    free(h);
}

hub_req *hub_req_new(void)
{
    hub_req *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    pthread_cond_init(&r->cv, NULL);
    r->refs = 1;
    r->dp_rank = -1;
    r->sampling.top_p = 1.0f;
    return r;
}

void hub_req_release(serve_hub *h, hub_req *r)
{
    if (!r) return;
    pthread_mutex_lock(&h->mu);
    unref_locked(r);
    pthread_mutex_unlock(&h->mu);
}

/* Requests waiting: not taken, or taken beyond what the job runs at once. */
static int64_t waiting_locked(const serve_hub *h)
{
    int64_t over = h->running > 0 && h->n_job > h->running ? h->n_job - h->running : 0;
    return h->n_queue + over;
}

bool hub_submit(serve_hub *h, hub_req *r, const char **why)
{
    pthread_mutex_lock(&h->mu);
    bool ok = false;
    if (h->shutdown || h->draining) {
        *why = "the server is shutting down";
    } else if (waiting_locked(h) >= h->max_queued) {
        *why = "too many queued requests (server.max_queued_requests)";
    } else if (!dpep_grow((void **)&h->queue, &h->cap_queue, h->n_queue + 1, sizeof *h->queue) ||
               r->max_new_tokens < 1 ||
               !(r->out = malloc(sizeof *r->out * (size_t)r->max_new_tokens)) ||
               !(r->logprob = malloc(sizeof *r->logprob * (size_t)r->max_new_tokens))) {
        *why = r->max_new_tokens < 1 ? "max_new_tokens must be at least 1" : "out of memory";
    } else {
        /* the output arrays never move: HTTP threads read them without the lock */
        r->cap_out = r->max_new_tokens;
        r->index = h->next_index++;
        if (!r->rid[0]) snprintf(r->rid, sizeof r->rid, "dpep-%lld", (long long)r->index);
        r->t_submit = dpep_clock_s();
        r->refs++;
        h->queue[h->n_queue++] = r;
        pthread_cond_signal(&h->work);
        ok = true;
    }
    if (!ok && (h->shutdown || h->draining || waiting_locked(h) >= h->max_queued))
        metrics_on_refused(h->metrics);
    pthread_mutex_unlock(&h->mu);
    return ok;
}

static void deadline(struct timespec *ts, double s)
{
    clock_gettime(CLOCK_REALTIME, ts);
    double sec = (double)ts->tv_sec + 1e-9 * (double)ts->tv_nsec + s;
    ts->tv_sec = (time_t)sec;
    ts->tv_nsec = (long)((sec - (double)ts->tv_sec) * 1e9);
}

int hub_wait(serve_hub *h, hub_req *r, int have, double timeout_s, hub_finish *finish)
{
    pthread_mutex_lock(&h->mu);
    struct timespec ts;
    if (timeout_s > 0) deadline(&ts, timeout_s);
    while (r->n_out <= have && r->finish == HUB_RUNNING && !h->shutdown) {
        if (timeout_s > 0) {
            if (pthread_cond_timedwait(&r->cv, &h->mu, &ts) != 0) break;
        } else {
            pthread_cond_wait(&r->cv, &h->mu);
        }
    }
    int n = r->n_out;
    *finish = r->finish;
    pthread_mutex_unlock(&h->mu);
    return n;
}

void hub_cancel(serve_hub *h, hub_req *r, bool done)
{
    pthread_mutex_lock(&h->mu);
    if (r->finish == HUB_RUNNING && !r->cancel) {
        r->cancel = true;
        r->done_early = done;
        h->pending_cancel = true;
        pthread_cond_signal(&h->work);
    }
    pthread_mutex_unlock(&h->mu);
}

int hub_get_load(serve_hub *h, hub_load *out, int n)
{
    pthread_mutex_lock(&h->mu);
    int k = h->n_load < n ? h->n_load : n;
    memcpy(out, h->load, sizeof *out * (size_t)k);
    pthread_mutex_unlock(&h->mu);
    return k;
}

void hub_set_load(serve_hub *h, const hub_load *load, int n)
{
    pthread_mutex_lock(&h->mu);
    h->n_load = n < HUB_MAX_LOAD ? n : HUB_MAX_LOAD;
    memcpy(h->load, load, sizeof *load * (size_t)h->n_load);
    pthread_mutex_unlock(&h->mu);
}

void hub_wait_work(serve_hub *h, double timeout_s)
{
    pthread_mutex_lock(&h->mu);
    if (h->n_queue == 0 && !h->pending_cancel && !h->shutdown && h->flush_asked == h->flush_seq) {
        struct timespec ts;
        deadline(&ts, timeout_s);
        pthread_cond_timedwait(&h->work, &h->mu, &ts);
    }
    pthread_mutex_unlock(&h->mu);
}

int hub_take_new(serve_hub *h, hub_req **out, int max)
{
    pthread_mutex_lock(&h->mu);
    int k = 0;
    while (k < max && k < h->n_queue &&
           dpep_grow((void **)&h->job, &h->cap_job, h->n_job + 1, sizeof *h->job)) {
        hub_req *r = h->queue[k];
        r->in_job = true;
        h->job[h->n_job++] = r; /* indices grow, so the list stays sorted */
        metrics_on_admit(h->metrics, r->n_input);
        out[k++] = r;
    }
    if (k > 0) {
        memmove(h->queue, h->queue + k, sizeof *h->queue * (size_t)(h->n_queue - k));
        h->n_queue -= k;
    }
    pthread_mutex_unlock(&h->mu);
    return k;
}

int hub_take_cancels(serve_hub *h, int64_t *index, int max)
{
    pthread_mutex_lock(&h->mu);
    int k = 0;
    bool more = false;
    for (int64_t i = 0; i < h->n_job; i++) {
        hub_req *r = h->job[i];
        if (!r->cancel || r->finish != HUB_RUNNING) continue;
        if (k == max) {
            more = true;
            break;
        }
        index[k++] = r->index;
        r->cancel = false; /* told once; the finish comes back from the job */
    }
    h->pending_cancel = more;
    pthread_mutex_unlock(&h->mu);
    return k;
}

/* The request in the job with this index (binary search), or NULL. */
static int64_t find_locked(serve_hub *h, int64_t index)
{
    int64_t lo = 0, hi = h->n_job - 1;
    while (lo <= hi) {
        int64_t mid = (lo + hi) / 2, x = h->job[mid]->index;
        if (x == index) return mid;
        if (x < index) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

void hub_deliver(serve_hub *h, int64_t index, int32_t token, double logprob)
{
    pthread_mutex_lock(&h->mu);
    int64_t k = find_locked(h, index);
    hub_req *r = k >= 0 ? h->job[k] : NULL;
    if (r && r->n_out < r->cap_out) { /* the job never makes more than max_new_tokens */
        r->out[r->n_out] = token;
        r->logprob[r->n_out] = logprob;
        double now = dpep_clock_s();
        metrics_on_token(h->metrics, r->n_out == 0, now - (r->n_out == 0 ? r->t_submit : r->t_last));
        if (r->n_out++ == 0) r->t_first = now;
        r->t_last = now;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&h->mu);
}

void hub_finish_req(serve_hub *h, int64_t index, hub_finish why, const char *error)
{
    pthread_mutex_lock(&h->mu);
    int64_t k = find_locked(h, index);
    if (k >= 0) {
        hub_req *r = h->job[k];
        r->finish = why;
        r->t_done = dpep_clock_s();
        metrics_on_finish(h->metrics, why == HUB_FINISH_ABORT && !r->done_early ? M_END_ABORT
                                      : why == HUB_FINISH_ERROR ? M_END_ERROR
                                                                : M_END_OK,
                          r->t_done - r->t_submit);
        if (error) snprintf(r->error, sizeof r->error, "%s", error);
        pthread_cond_broadcast(&r->cv);
        memmove(h->job + k, h->job + k + 1, sizeof *h->job * (size_t)(h->n_job - k - 1));
        h->n_job--;
        unref_locked(r);
    }
    pthread_mutex_unlock(&h->mu);
}

bool hub_job_info(serve_hub *h, int64_t index, int *group, int *max_new, int *n_input)
{
    pthread_mutex_lock(&h->mu);
    int64_t k = find_locked(h, index);
    if (k >= 0) {
        *group = h->job[k]->group;
        *max_new = h->job[k]->max_new_tokens;
        *n_input = h->job[k]->n_input;
    }
    pthread_mutex_unlock(&h->mu);
    return k >= 0;
}

int64_t hub_in_flight(serve_hub *h)
{
    pthread_mutex_lock(&h->mu);
    int64_t n = h->n_job;
    pthread_mutex_unlock(&h->mu);
    return n;
}

int hub_flush(serve_hub *h, double timeout_s)
{
    pthread_mutex_lock(&h->mu);
    int64_t mine = ++h->flush_asked;
    pthread_cond_signal(&h->work);
    struct timespec ts;
    deadline(&ts, timeout_s);
    int rc = 0;
    while (h->flush_seq < mine && !h->shutdown && rc == 0)
        rc = pthread_cond_timedwait(&h->flushed, &h->mu, &ts);
    int result = h->flush_seq >= mine ? h->flush_result : -1;
    pthread_mutex_unlock(&h->mu);
    return result;
}

bool hub_take_flush(serve_hub *h)
{
    pthread_mutex_lock(&h->mu);
    bool ask = h->flush_asked > h->flush_seq, idle = h->n_queue == 0 && h->n_job == 0;
    if (ask && !idle) { /* SGLang's rule: only when nothing runs or waits */
        h->flush_seq = h->flush_asked;
        h->flush_result = 0;
        pthread_cond_broadcast(&h->flushed);
    }
    pthread_mutex_unlock(&h->mu);
    return ask && idle;
}

void hub_flush_done(serve_hub *h)
{
    pthread_mutex_lock(&h->mu);
    h->flush_seq = h->flush_asked;
    h->flush_result = 1;
    pthread_cond_broadcast(&h->flushed);
    pthread_mutex_unlock(&h->mu);
}

int64_t hub_queued(serve_hub *h)
{
    pthread_mutex_lock(&h->mu);
    int64_t n = h->n_queue;
    pthread_mutex_unlock(&h->mu);
    return n;
}

void hub_stop_accepting(serve_hub *h)
{
    pthread_mutex_lock(&h->mu);
    h->draining = true;
    pthread_mutex_unlock(&h->mu);
}

bool hub_accepting(serve_hub *h)
{
    pthread_mutex_lock(&h->mu);
    bool a = !h->shutdown && !h->draining;
    pthread_mutex_unlock(&h->mu);
    return a;
}

void hub_shutdown(serve_hub *h)
{
    pthread_mutex_lock(&h->mu);
    h->shutdown = true;
    pthread_cond_broadcast(&h->work);
    pthread_cond_broadcast(&h->flushed);
    for (int64_t i = 0; i < h->n_queue; i++) pthread_cond_broadcast(&h->queue[i]->cv);
    for (int64_t i = 0; i < h->n_job; i++) pthread_cond_broadcast(&h->job[i]->cv);
    pthread_mutex_unlock(&h->mu);
}

bool hub_is_shutdown(serve_hub *h)
{
    pthread_mutex_lock(&h->mu);
    bool s = h->shutdown;
    pthread_mutex_unlock(&h->mu);
    return s;
}
