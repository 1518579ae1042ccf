/* hub.h — private to runtime/serve: the meeting point, on rank 0, of the HTTP
 * threads (which submit requests and wait for their tokens) and the serve
 * loop (which takes new requests each step, runs the job's step, and delivers
 * tokens and finishes). All of it is guarded by one mutex; each request has
 * its own condition variable.
 *
 * Ownership: a hub_req is created by an HTTP thread (hub_req_new), owned
 * jointly by that thread and the hub (reference count 2 after submit); the
 * HTTP thread releases its reference with hub_req_release when its response
 * is done, the hub when the request has finished in the job. */
#ifndef DPEP_SERVE_HUB_H
#define DPEP_SERVE_HUB_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "dpep_engine.h"
#include "dpep_sched.h"
#include "metrics.h"

typedef enum hub_finish {
    HUB_RUNNING = 0,
    HUB_FINISH_LENGTH,   /* max_new_tokens reached                       */
    HUB_FINISH_STOP,     /* eos (or a stop string, matched on rank 0)     */
    HUB_FINISH_ABORT,    /* aborted: client gone, shutdown, timeout       */
    HUB_FINISH_ERROR,    /* could not run (does not fit the KV pool ...)  */
} hub_finish;

typedef struct hub_req {
    /* set by the HTTP thread before hub_submit */
    char rid[DPEP_REQUEST_ID_MAX]; /* request id ("" : the hub makes one)    */
    int32_t *input_ids;      /* [n_input] owned                              */
    int n_input;
    int max_new_tokens;
    dpep_sampling sampling;
    bool ignore_eos;
    int dp_rank;             /* data_parallel_rank, -1: the policy picks      */
    /* set by the hub */
    int64_t index;           /* unique, monotonic                            */
    double t_submit;         /* dpep_clock_s at submit                        */
    /* results, written by the serve loop under the hub mutex */
    int32_t *out;            /* [max_new_tokens] output ids, n_out filled; allocated at
                                submit and never moved (read without the lock)  */
    double *logprob;         /* [max_new_tokens]                              */
    int n_out, cap_out;
    hub_finish finish;
    char error[256];         /* with HUB_FINISH_ERROR / ABORT: why            */
    double t_first, t_last, t_done; /* dpep_clock_s of the first / last token, the finish */
    /* internal */
    pthread_cond_t cv;
    int refs;
    bool cancel;             /* the client is gone: abort at the next step    */
    bool done_early;         /* cancelled with its answer complete (a stop)   */
    bool in_job;             /* taken by the serve loop                       */
    int group;               /* the DP group the serve loop assigned          */
} hub_req;

typedef struct serve_hub serve_hub; /* opaque */

/* Submit says "full" when the waiting requests reach max_queued: those not
 * yet taken by the job, plus those in the job beyond the `running` it can run
 * at once (0: the job's own count is not limited). metrics (borrowed, may be
 * NULL) sees every request event. */
serve_hub *hub_create(int max_queued, int64_t running, serve_metrics *metrics);
void hub_destroy(serve_hub *h);

/* HTTP side. hub_req_new returns a zeroed request with one reference. */
hub_req *hub_req_new(void);
void hub_req_release(serve_hub *h, hub_req *r);
/* Queues r for the next step (takes a second reference). false when the
 * queue is full or the hub is shutting down (*why says which). */
bool hub_submit(serve_hub *h, hub_req *r, const char **why);
/* Blocks until r has more than `have` output tokens, or has finished, or
 * timeout_s passed (<= 0: no limit). Returns r->n_out (read under the lock;
 * r->out[0..n_out) stays valid until release). *finish gets r->finish. */
int hub_wait(serve_hub *h, hub_req *r, int have, double timeout_s, hub_finish *finish);
/* Abort r at the next step: the client is gone or timed out, or (done) the
 * HTTP side has its whole answer (a stop string or stop id matched there),
 * which the metrics count as finished, not aborted. */
void hub_cancel(serve_hub *h, hub_req *r, bool done);
/* Per-DP-group load for /get_load: fills up to n entries of running/queued
 * requests and tokens as the serve loop last reported them. */
typedef struct hub_load {
    int64_t num_reqs, num_waiting, num_tokens;
} hub_load;
int hub_get_load(serve_hub *h, hub_load *out, int n);

/* Serve-loop side. */
/* Blocks up to timeout_s for new work (a submit, a cancel, shutdown);
 * returns at once when there is some. */
void hub_wait_work(serve_hub *h, double timeout_s);
/* Moves up to max queued requests into `out` (marks them in_job). */
int hub_take_new(serve_hub *h, hub_req **out, int max);
/* Requests to abort (cancelled, in the job, not yet told): up to max. */
int hub_take_cancels(serve_hub *h, int64_t *index, int max);
/* Delivers one output token / the finish of request `index`. */
void hub_deliver(serve_hub *h, int64_t index, int32_t token, double logprob);
void hub_finish_req(serve_hub *h, int64_t index, hub_finish why, const char *error);
/* What the serve loop needs of a request in the job at its finish: false
 * when `index` is not in the job. */
bool hub_job_info(serve_hub *h, int64_t index, int *group, int *max_new, int *n_input);
/* Requests in the job that have not finished. */
int64_t hub_in_flight(serve_hub *h);
void hub_set_load(serve_hub *h, const hub_load *load, int n);
/* POST /flush_cache (HTTP side): asks the serve loop to drop every DP
 * group's prefix cache and waits up to timeout_s for it. 1: flushed; 0: not
 * idle (requests in flight or queued: SGLang's rule, nothing done); -1: no
 * answer in time or shutting down. */
int hub_flush(serve_hub *h, double timeout_s);
/* Serve-loop side: a flush is asked for and the job is idle (true: flush
 * now, then hub_flush_done). A flush asked while busy is answered 0 here. */
bool hub_take_flush(serve_hub *h);
void hub_flush_done(serve_hub *h);
/* Requests submitted and not yet taken by the job. */
int64_t hub_queued(serve_hub *h);
/* Draining: submit refuses from now on (503); requests already accepted go
 * on. hub_shutdown then ends the rest. */
void hub_stop_accepting(serve_hub *h);
/* Neither draining nor shut down (GET /health answers 503 otherwise, so a
 * router takes the worker out of rotation). */
bool hub_accepting(serve_hub *h);
/* Shutdown: submit refuses from now on; every waiting HTTP thread wakes. */
void hub_shutdown(serve_hub *h);
bool hub_is_shutdown(serve_hub *h);

#endif
