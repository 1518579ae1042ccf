/* fake_loop.h — a stand-in for the serve loop of `dpep serve`, for the HTTP
 * tests: one thread consuming the hub as the real loop does (hub_take_new,
 * hub_take_cancels, hub_deliver, hub_finish_req, hub_set_load), with an
 * "echo model" instead of the job:
 *   - output token k is input_ids[k % n_input], with log-prob -(k+1)/100;
 *   - without ignore_eos, once the whole input has been echoed the next
 *     token is eos and the request finishes STOP; else LENGTH at
 *     max_new_tokens;
 *   - magic max_new_tokens: 777 finishes ERROR at once ("the request does not
 *     fit the KV pool"), 778 delivers 2 tokens then finishes ABORT;
 *   - one token per request per step; a step sleeps step_s while busy.
 * Every event is a line in `events` (flushed): "take RID dp=D n_in=N
 * max_new=M temp=T top_p=P top_k=K seed=S ignore_eos=B", "cancel RID",
 * "finish RID length|stop|abort|error", with a time stamp (seconds since
 * start) first. After hub_shutdown the loop aborts everything in flight, as
 * the real one does. */
#ifndef DPEP_TEST_FAKE_LOOP_H
#define DPEP_TEST_FAKE_LOOP_H

#include <stdio.h>

#include "hub.h"

typedef struct fake_loop_opts {
    double step_s;       /* sleep per step while requests run            */
    int max_running;     /* requests in the "job" at once                */
    int eos_id;
    FILE *events;        /* may be NULL                                   */
    int dp_groups;       /* for hub_set_load                              */
} fake_loop_opts;

typedef struct fake_loop fake_loop;

fake_loop *fake_loop_start(serve_hub *h, const fake_loop_opts *o);
/* Stops the thread (after it aborted what runs) and frees the loop. */
void fake_loop_stop(fake_loop *l);

#endif
