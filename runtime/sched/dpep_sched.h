/* dpep_sched.h — public header of runtime/sched: requests, DP-rank
 * assignment, and the step scheduler of one DP group (continuous batching,
 * chunked prefill, KV admission, sampling, retirement).
 *
 * The scheduler is driven step by step. Requests enter through the
 * instance's source rank (instance rank 0) with dpep_sched_submit at any time;
 * at the start of the next step the ranks of the instance agree on every
 * arrival and abort (one all-gather of a small record, plus a broadcast of
 * the new requests only when there are some), and each rank keeps those of
 * its own DP group. The step then batches, runs the engine's forward
 * (every rank, 0 tokens when idle), samples, and retires finished requests.
 * Produced tokens and finished requests are reported through callbacks on the
 * leader (attention-TP rank 0) of the request's DP group, as they happen, so
 * an offline run (runtime/serve's workload and JSONL sink) and a live server
 * share every line of batching, admission and agreement.
 *
 * Collectives: dpep_sched_create, dpep_sched_step and dpep_sched_destroy are
 * collective over the instance (and the attention-TP group inside it).
 * submit/abort/close are local to the source rank.
 *
 * Ownership: the scheduler borrows the engine and the model config (they
 * outlive it). A submitted request's ids are copied. The buffers of a step
 * are allocated at create; a request's output arrays when it arrives. */
#ifndef DPEP_SCHED_H
#define DPEP_SCHED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <mpi.h>

#include "dpep_config.h"
#include "dpep_engine.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Requests and DP-rank assignment.                                          */
/* ------------------------------------------------------------------------ */
/* A request id's size in bytes, NUL included: ids of up to
 * DPEP_REQUEST_ID_MAX - 1 bytes are kept whole, longer ones are refused
 * where they enter (a workload line, an HTTP rid), never cut. */
#define DPEP_REQUEST_ID_MAX 128

typedef struct dpep_request {
    char id[DPEP_REQUEST_ID_MAX]; /* from the file, else the request's index  */
    int64_t index;       /* order of intake (output order); a server's unique id */
    const int32_t *input_ids; /* [input_len], borrowed                        */
    int input_len;
    int max_new_tokens;
    dpep_sampling sampling;
    int dp_rank;         /* explicit data_parallel_rank, -1 if none           */
    bool ignore_eos;     /* generate max_new_tokens regardless of eos         */
} dpep_request;

/* Load of one DP rank as the assignment sees it. */
typedef struct dpep_dp_load {
    int64_t requests;    /* outstanding requests                              */
    int64_t tokens;      /* outstanding tokens (prompt + max new)             */
} dpep_dp_load;

/* Picks the DP rank for request r: its data_parallel_rank when given, else
 * by `method` (round robin over `*rr`, fewest outstanding requests, fewest
 * outstanding tokens; ties to the lowest rank). Updates load[] and *rr. */
int dpep_sched_assign(dpep_lb_method method, const dpep_request *r, int dp, dpep_dp_load *load,
                      int *rr);

/* The stateful assignment of rank 0 (every method; cache_aware needs the
 * state): per DP group the outstanding load and, for cache_aware, a view of
 * the group's prefix cache (a token-only radix tree of the prompts sent
 * there, whole pages, least recently used dropped beyond the group's KV
 * pool). cache_aware, in the spirit of SGLang's router: when the groups'
 * outstanding requests are out of balance (the most loaded has more than
 * balance_abs more than the least and more than balance_rel times it) the
 * least loaded group by tokens; else the group whose view holds the longest
 * prefix of the prompt when it covers more than cache_threshold of it; else
 * the least loaded by tokens. An explicit data_parallel_rank always wins.
 * Ownership: the assigner owns its views; the caller owns requests. */
typedef struct dpep_assigner dpep_assigner; /* opaque */
#define DPEP_ASSIGN_CACHE_THRESHOLD 0.3 /* sglang-router's --cache-threshold  */
#define DPEP_ASSIGN_BALANCE_ABS 64      /* its --balance-abs-threshold (0.3.2) */
#define DPEP_ASSIGN_BALANCE_REL 1.5     /* its --balance-rel-threshold        */
typedef struct dpep_assigner_params {
    dpep_lb_method method;
    int groups;                /* DP groups of the job                        */
    int page_size;             /* the KV page size (views match whole pages)  */
    int64_t cache_tokens;      /* tokens one group's view keeps (its KV pool)  */
    double cache_threshold;    /* share of the prompt a match must cover (0.3) */
    int64_t balance_abs;       /* outstanding requests apart (64)             */
    double balance_rel;        /* and times apart (1.5)                        */
} dpep_assigner_params;
dpep_status dpep_assigner_create(const dpep_assigner_params *p, dpep_assigner **out);
void dpep_assigner_destroy(dpep_assigner *a);
/* The DP group of r; counts r in its load. *matched (may be NULL) gets the
 * prompt tokens the group's view held (cache_aware; else 0). */
int dpep_assigner_pick(dpep_assigner *a, const dpep_request *r, int64_t *matched);
/* A request of `group` with `tokens` (prompt + max new) is done. */
void dpep_assigner_done(dpep_assigner *a, int group, int64_t tokens);
/* The outstanding load per group ([groups]). */
const dpep_dp_load *dpep_assigner_load(const dpep_assigner *a);

/* ------------------------------------------------------------------------ */
/* The step scheduler.                                                       */
/* ------------------------------------------------------------------------ */
typedef struct dpep_sched dpep_sched; /* opaque */

/* A request as its DP group saw it, handed to the callbacks. Arrays live
 * until the finish callback returns. Times are seconds since
 * dpep_sched_start; gaps[i] is the time between output tokens i and i+1. */
typedef struct dpep_sched_result {
    const char *id;
    int64_t index;       /* as submitted                                       */
    int dp_rank;         /* the DP group (global: instance * attn_dp + group)   */
    int input_len;
    int n_out;
    const int32_t *out;  /* [n_out] output ids                                 */
    const double *logprob; /* [n_out] log-probability of each output token     */
    const double *gaps;  /* [n_out - 1] inter-token gaps                       */
    double t_arrive, t_first, t_last;
    bool failed;         /* could never run (context or KV pool too small)     */
    bool aborted;
} dpep_sched_result;

typedef struct dpep_sched_callbacks {
    void *user;
    /* A new output token of r (r->out[r->n_out - 1]); may be NULL. */
    void (*on_token)(void *user, const dpep_sched_result *r);
    /* r is done (finished, failed or aborted); may be NULL. */
    void (*on_finish)(void *user, const dpep_sched_result *r);
} dpep_sched_callbacks;

typedef struct dpep_sched_params {
    const dpep_model_config *m;
    dpep_engine *engine;        /* borrowed; its KV pool is admitted against   */
    MPI_Comm instance;          /* ranks of this model instance               */
    MPI_Comm attn_tp;           /* this DP group's attention-TP ranks (NULL/1: none) */
    int instance_index;         /* which instance                             */
    int attn_dp;                /* DP groups per instance                     */
    int attn_dp_rank;           /* this rank's group in the instance          */
    int max_running;            /* runtime.max_running_requests               */
    int max_seqs;               /* KV slots of the engine                     */
    int chunk;                  /* runtime.chunked_prefill_size               */
    int step_tokens;            /* the engine's max_tokens                    */
    int64_t max_ctx;            /* the engine's longest sequence              */
    bool ignore_eos;
    bool prefix_cache;          /* a radix tree of KV pages (runtime.disable_radix_cache off) */
    int balance_hold;           /* runtime.dp_balance_hold_steps: new prefills wait up to this
                                   many steps for every DP group of the instance to have some */
    double comm_timeout_s;
    dpep_sched_callbacks cb;
} dpep_sched_params;

dpep_status dpep_sched_create(const dpep_sched_params *p, dpep_sched **out);
void dpep_sched_destroy(dpep_sched *s);

/* Source rank only (instance rank 0; others get DPEP_ERR_INVALID): queue a
 * request for the next step's agreement. `dp_rank` is the global DP group it
 * was assigned to and must belong to this instance. The ids are copied. */
dpep_status dpep_sched_submit(dpep_sched *s, const dpep_request *r, int dp_rank);
/* Source rank only: abort the request with this id at the next step (a no-op
 * when it is unknown or already done). */
dpep_status dpep_sched_abort(dpep_sched *s, const char *id);
/* Source rank only: abort every request of the instance (waiting, running,
 * and those submitted before the next step) at the next step, in one pass
 * (a stopping run; per-id aborts cost a search each). */
dpep_status dpep_sched_abort_all(dpep_sched *s);
/* Source rank only: no more submissions; the instance stops once drained. */
void dpep_sched_close(dpep_sched *s);

/* Starts the clock (times are relative to it) after a barrier over the
 * instance. Collective. */
dpep_status dpep_sched_start(dpep_sched *s);

/* What one step saw, instance-wide (identical on every rank of it). */
typedef struct dpep_sched_step_info {
    bool ran;            /* a forward ran (false: nothing to do)               */
    bool finished;       /* closed and drained: no step will run again         */
    int64_t steps;       /* forwards run so far                                */
    int64_t done;        /* requests finished so far (all groups of the instance) */
    int64_t left;        /* requests known and not finished                    */
    int64_t out_tokens;  /* output tokens so far                               */
} dpep_sched_step_info;

/* One step (see the header comment). Collective over the instance. */
dpep_status dpep_sched_step(dpep_sched *s, dpep_sched_step_info *info);

/* This rank's counters for the summary. Prefill/decode times are the
 * instance's steps with and without prefill (tokens of every group). */
typedef struct dpep_sched_stats {
    int64_t requests, input_tokens, output_tokens; /* this DP group (leader)   */
    int64_t steps;
    int64_t kv_capacity, kv_peak;       /* tokens of this rank's KV pool       */
    double prefill_s, decode_s;
    int64_t prefill_tokens, decode_tokens;
    int64_t decode_steps;               /* decode-only steps of the instance   */
    double decode_weight_bytes;         /* weights this rank's products read in them (CPU) */
    int64_t cached_tokens;              /* prompt tokens taken from the prefix cache (leader) */
    int64_t evicted_tokens;             /* tokens the prefix cache dropped for room          */
    int64_t held_steps;                 /* steps admissions waited for balance               */
    /* page faults this rank's process took in its steps (forward, sampling,
     * retiring; dpep_page_faults): a step's memory is made resident at
     * create, so past the first steps these stay near 0 (growth of the KV
     * pool's pages, MPI's and BLAS's own buffers are what remain) */
    int64_t step_faults, step_faults_max, steps_faulting;
} dpep_sched_stats;
void dpep_sched_get_stats(const dpep_sched *s, dpep_sched_stats *out);
/* This rank's DP group now: requests running (holding KV) and waiting for
 * admission, and the tokens held in this rank's KV pool of its capacity. */
typedef struct dpep_sched_live {
    int64_t running, waiting;
    int64_t kv_used, kv_capacity;
    int64_t cache_tokens;       /* of kv_used: held by the prefix cache        */
    int64_t prompt_tokens, cached_tokens; /* admitted so far; of them from the cache */
    int64_t evicted_tokens;     /* the cache dropped for room so far          */
} dpep_sched_live;
void dpep_sched_get_live(const dpep_sched *s, dpep_sched_live *out);
/* Drops the prefix cache when nothing runs or waits in this group (as
 * SGLang's /flush_cache). Call on every rank of the group, between steps.
 * Returns whether it was flushed (false: requests in the group). */
bool dpep_sched_flush_cache(dpep_sched *s);
/* Is this rank its DP group's leader (the one that reports)? */
bool dpep_sched_is_leader(const dpep_sched *s);

#ifdef __cplusplus
}
#endif
#endif /* DPEP_SCHED_H */
