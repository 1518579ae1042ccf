/* fake_loop.c — the echo-model serve loop of the HTTP tests (fake_loop.h). */
#include "fake_loop.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FAKE_MAX_JOBS 1024
#define FAKE_MAX_TAKE 64

typedef struct fake_job {
    int64_t index;
    char rid[128];
    int32_t *ids;
    int n_input, max_new, n_out, dp_rank;
    bool ignore_eos;
} fake_job;

struct fake_loop {
    serve_hub *h;
    fake_loop_opts o;
    pthread_t th;
    atomic_bool stop;
    fake_job job[FAKE_MAX_JOBS];
    int n_job;
    double t0;
};

static void event(fake_loop *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void event(fake_loop *l, const char *fmt, ...)
{
    if (!l->o.events) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(l->o.events, "%.3f %s\n", dpep_clock_s() - l->t0, line);
    fflush(l->o.events);
}

static void job_end(fake_loop *l, int k, hub_finish why, const char *error)
{
    static const char *names[] = {"running", "length", "stop", "abort", "error"};
    fake_job *j = &l->job[k];
    event(l, "finish %s %s", j->rid, names[why]);
    hub_finish_req(l->h, j->index, why, error);
    free(j->ids);
    l->job[k] = l->job[--l->n_job];
}

static void take_new(fake_loop *l)
{
    int room = l->o.max_running - l->n_job;
    if (room > FAKE_MAX_TAKE) room = FAKE_MAX_TAKE;
    if (room <= 0) return;
    hub_req *taken[FAKE_MAX_TAKE];
    int n = hub_take_new(l->h, taken, room);
    for (int i = 0; i < n; i++) {
        const hub_req *r = taken[i];
        fake_job *j = &l->job[l->n_job++];
        memset(j, 0, sizeof *j);
        j->index = r->index;
        snprintf(j->rid, sizeof j->rid, "%s", r->rid);
        j->ids = malloc(sizeof *j->ids * (size_t)(r->n_input > 0 ? r->n_input : 1));
        if (j->ids) memcpy(j->ids, r->input_ids, sizeof *j->ids * (size_t)r->n_input);
        j->n_input = r->n_input;
        j->max_new = r->max_new_tokens;
        j->ignore_eos = r->ignore_eos;
        j->dp_rank = r->dp_rank;
        event(l, "take %s dp=%d n_in=%d max_new=%d temp=%g top_p=%g top_k=%d seed=%llu "
              "min_p=%g ignore_eos=%d", j->rid, r->dp_rank, r->n_input, r->max_new_tokens,
              (double)r->sampling.temperature, (double)r->sampling.top_p, r->sampling.top_k,
              (unsigned long long)r->sampling.seed, (double)r->sampling.min_p, (int)r->ignore_eos);
        if (!j->ids) job_end(l, l->n_job - 1, HUB_FINISH_ERROR, "out of memory");
        else if (j->max_new == 777)
            job_end(l, l->n_job - 1, HUB_FINISH_ERROR, "the request does not fit the KV pool");
    }
}

static void take_cancels(fake_loop *l)
{
    int64_t idx[FAKE_MAX_TAKE];
    int n = hub_take_cancels(l->h, idx, FAKE_MAX_TAKE);
    for (int i = 0; i < n; i++)
        for (int k = 0; k < l->n_job; k++)
            if (l->job[k].index == idx[i]) {
                event(l, "cancel %s", l->job[k].rid);
                job_end(l, k, HUB_FINISH_ABORT, "cancelled");
                break;
            }
}

/* One token for every running request; finishes. */
static void step(fake_loop *l)
{
    for (int k = 0; k < l->n_job;) {
        fake_job *j = &l->job[k];
        bool eos = !j->ignore_eos && j->n_out == j->n_input;
        int32_t tok = eos ? l->o.eos_id : j->ids[j->n_out % j->n_input];
        hub_deliver(l->h, j->index, tok, -(double)(j->n_out + 1) / 100.0);
        j->n_out++;
        if (eos) job_end(l, k, HUB_FINISH_STOP, NULL);
        else if (j->n_out >= j->max_new) job_end(l, k, HUB_FINISH_LENGTH, NULL);
        else if (j->max_new == 778 && j->n_out == 2) job_end(l, k, HUB_FINISH_ABORT, "aborted by the job");
        else k++;
    }
}

static void report_load(fake_loop *l)
{
    hub_load load[64] = {{0, 0, 0}};
    int n = l->o.dp_groups > 0 && l->o.dp_groups <= 64 ? l->o.dp_groups : 1;
    for (int k = 0; k < l->n_job; k++) {
        int g = l->job[k].dp_rank >= 0 && l->job[k].dp_rank < n ? l->job[k].dp_rank : 0;
        load[g].num_reqs++;
        load[g].num_tokens += l->job[k].n_input + l->job[k].n_out;
    }
    hub_set_load(l->h, load, n);
}

static void *loop_main(void *arg)
{
    fake_loop *l = arg;
    while (!atomic_load(&l->stop)) {
        if (l->n_job == 0) hub_wait_work(l->h, 0.05);
        if (hub_is_shutdown(l->h)) {
            take_new(l);
            while (l->n_job) job_end(l, 0, HUB_FINISH_ABORT, "the server is shutting down");
            struct timespec ts = {0, 10 * 1000 * 1000};
            nanosleep(&ts, NULL);
            continue;
        }
        take_cancels(l);
        take_new(l);
        if (hub_take_flush(l->h)) { /* idle: as the serve loop, drop the (absent) cache */
            event(l, "flush");
            hub_flush_done(l->h);
        }
        step(l);
        report_load(l);
        if (l->n_job && l->o.step_s > 0) {
            struct timespec ts = {(time_t)l->o.step_s,
                                  (long)((l->o.step_s - (double)(time_t)l->o.step_s) * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    while (l->n_job) job_end(l, 0, HUB_FINISH_ABORT, "stopped");
    return NULL;
}

fake_loop *fake_loop_start(serve_hub *h, const fake_loop_opts *o)
{
    fake_loop *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->h = h;
    l->o = *o;
    if (l->o.max_running <= 0 || l->o.max_running > FAKE_MAX_JOBS) l->o.max_running = FAKE_MAX_JOBS;
    l->t0 = dpep_clock_s();
    atomic_init(&l->stop, false);
    if (pthread_create(&l->th, NULL, loop_main, l) != 0) {
        free(l);
        return NULL;
    }
    return l;
}

void fake_loop_stop(fake_loop *l)
{
    if (!l) return;
    atomic_store(&l->stop, true);
    pthread_join(l->th, NULL);
    free(l);
}
