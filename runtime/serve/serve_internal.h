/* serve_internal.h — the sinks of the offline run, private to runtime/serve:
 * finished requests recorded on their DP group's leader and gathered to
 * rank 0 (results.c), the JSONL output (results.c) and the summary
 * (summary.c). */
#ifndef DPEP_SERVE_INTERNAL_H
#define DPEP_SERVE_INTERNAL_H

#include "dpep_serve.h"

/* Finished requests of this rank, packed as they finish:
 * ints [index, failed, n_out, dp_rank, ids...], doubles [ttft, latency,
 * gaps[n_out - 1], logprob[n_out]]. */
typedef struct serve_results {
    int32_t *ib;
    double *db;
    int64_t ni, nd, cap_i, cap_d;
    dpep_status st;          /* first recording failure (NOMEM)            */
} serve_results;

/* A dpep_sched_callbacks.on_finish recording into a serve_results. */
void serve_results_on_finish(void *user, const dpep_sched_result *r);
void serve_results_free(serve_results *r);

/* One request as rank 0 holds it after the gather. */
typedef struct serve_row {
    int failed, n_out;
    const int32_t *out;
    const double *logprob;
    double ttft, latency;
} serve_row;

typedef struct serve_gathered {
    int64_t n;
    serve_row *row;          /* [n] by request index                        */
    double *gaps;            /* [n_gaps] every inter-token gap              */
    int64_t n_gaps;
    int32_t *iall;           /* the gathered buffers the rows point into    */
    double *dall;
} serve_gathered;

/* Collective over `comm`: every rank's records to its rank 0, which fills
 * `g` for n_requests requests (empty elsewhere). */
dpep_status serve_results_gather(const serve_results *r, MPI_Comm comm, int64_t n_requests,
                                 serve_gathered *g);
void serve_gathered_free(serve_gathered *g);

/* JSONL: one line per request in index order (id, dp_rank, input_len,
 * output_ids, ttft_s, latency_s, logprobs[, error]). */
typedef struct serve_req_meta {
    char id[64];
    int32_t input_len, group;
} serve_req_meta;
dpep_status serve_write_jsonl(const char *path, const serve_req_meta *meta, const serve_gathered *g);

/* Per-rank facts gathered for the summary. */
typedef struct serve_rank_facts {
    int64_t group, leader, requests, input_tokens, output_tokens, kv_capacity, kv_peak, kv_pool,
        kv_tok_bytes, steps;
    int64_t cached_tokens, evicted_tokens; /* prefix cache: prompt tokens reused, tokens evicted */
    double prefill_s, decode_s, prefill_tokens, decode_tokens;
} serve_rank_facts;

typedef struct serve_summary_in {
    const dpep_world *w;
    const dpep_config *cfg;
    const dpep_model_config *m;
    const char *moe_transport;   /* "shm", "mpi", "allgather"                */
    const serve_req_meta *meta;
    const serve_gathered *g;
    const serve_rank_facts *facts; /* [world size]                           */
    const int64_t *expert_load;  /* [n_layers, n_routed] summed              */
    int64_t n_requests;
    int groups;
    double wall_s;
    int64_t steps;
} serve_summary_in;

/* Prints the summary to stdout and, with a path, writes it as JSON (rank 0). */
dpep_status serve_print_summary(const serve_summary_in *in, const char *json_path);

#include "dpep_comm.h"

/* The state of a serving job (offline run or server), so that each stage
 * is its own function. */
typedef struct serve_job {
    dpep_world *w;
    const dpep_config *cfg;
    const dpep_run_opts *o;
    dpep_comm *c_world;         /* agreements over the job                    */
    dpep_model_config m;
    dpep_weights wts;
    dpep_device dev;
    int groups, my_group;
    dpep_request *req;          /* [n_req] every request (all ranks)           */
    serve_req_meta *meta;       /* [n_req] id, input_len, group                */
    int32_t *toks;              /* every request's input ids                   */
    int64_t n_req;
    int64_t max_ctx;
    int max_seqs, step_tokens;
    size_t kv_budget;
    dpep_engine *e;
    dpep_sched *s;
    serve_results res;
    double wall_s;
} serve_job;

/* 1. The device, the model and this rank's weights, agreed over the world. */
dpep_status serve_job_load_model(serve_job *r, dpep_diag *diag);
/* The KV pool for r->max_seqs sequences of r->max_ctx tokens, within the
 * memory left after the weights (and max_kv_tokens when > 0); the smallest
 * over the world. Collective. */
dpep_status serve_job_size_kv(serve_job *r, int64_t max_kv_tokens);
/* The engine for r's sizes (max_ctx, max_seqs, step_tokens, kv_budget), agreed. */
dpep_status serve_job_create_engine(serve_job *r, dpep_diag *diag);
/* After a failed agreement: a shared problem printed once (collective). */
void serve_dedup_errors(dpep_world *w, dpep_diag *diag);

#endif
