/* serve_internal.h — the sinks of the offline run, private to runtime/serve:
 * finished requests recorded on their DP group's leader and gathered to
 * rank 0 (results.c), the JSONL output (results.c) and the summary
 * (summary.c). */
#ifndef DPEP_SERVE_INTERNAL_H
#define DPEP_SERVE_INTERNAL_H

#include "dpep_serve.h"

#include <sys/types.h>

/* ------------------------------------------------------------------------ */
/* Records and rows (results.c)                                              */
/* ------------------------------------------------------------------------ */
/* A finished request travels as one record: ints [index, state, n_out,
 * dp_rank, ids[n_out]] and doubles [ttft, latency, gaps[n_out - 1],
 * logprob[n_out]]. */
enum { SERVE_DONE = 0, SERVE_FAILED = 1, SERVE_ABORTED = 2 };
#define SERVE_REC_INTS(n_out) (4 + (int64_t)(n_out))
#define SERVE_REC_DBLS(n_out) (2 + ((n_out) > 1 ? (int64_t)(n_out) - 1 : 0) + (int64_t)(n_out))

/* One request as rank 0 holds it. */
typedef struct serve_row {
    int present;             /* a record arrived (this run)                  */
    int failed, aborted, n_out;
    const int32_t *out;
    const double *logprob, *gaps;
    double ttft, latency;
} serve_row;

/* The request of each index (rank 0 after the run): rows point into the
 * sink's record arrays. */
typedef struct serve_gathered {
    int64_t n;
    serve_row *row;          /* [n] by request index                        */
    double *gaps;            /* [n_gaps] every inter-token gap (a copy)      */
    int64_t n_gaps;
} serve_gathered;
void serve_gathered_free(serve_gathered *g);

/* What rank 0 knows of a request before it runs. */
typedef struct serve_req_meta {
    char id[sizeof ((dpep_request *)0)->id];
    int32_t input_len, group;
    int32_t resumed;         /* complete in the output already (--resume)    */
} serve_req_meta;

/* One output line (no newline; malloc'd, NULL when out of memory). */
char *serve_format_line(const serve_req_meta *meta, const serve_row *row);

/* ------------------------------------------------------------------------ */
/* The output file of rank 0 (sink.c)                                        */
/* ------------------------------------------------------------------------ */
/* Lines are written as requests finish (completion order) and flushed
 * after every step that finished some, so a killed job keeps every line it
 * reported; a failed request gets a line with "error", an aborted one
 * (the run was stopped) none, so --resume serves it. When the whole run
 * completes, the file is rewritten in request order (a temporary file
 * renamed over it). Every write is checked: the first failure stops the
 * writing and is reported with the file and strerror. */
typedef struct serve_sink {
    const char *path;        /* borrowed; NULL: no output file               */
    FILE *f;
    int64_t n;               /* requests of the workload                     */
    const serve_req_meta *meta; /* borrowed [n]                              */
    int32_t *ib;             /* records, appended as they arrive             */
    double *db;
    int64_t ni, nd, cap_i, cap_d;
    int64_t *oi, *od;        /* [n] offset of the request's record, -1: none  */
    char **kept;             /* [n] lines kept from the output (--resume)     */
    int64_t n_kept, n_records, n_written, n_failed, n_aborted, n_dropped;
    int64_t unflushed;       /* lines written since the last fflush           */
    off_t off_ok;            /* file size after the last successful flush     */
    int werr;                /* errno of the first write failure (0: none)    */
    dpep_status st;          /* NOMEM while recording                        */
} serve_sink;

/* Before the model loads (rank 0): --output must be creatable and writable
 * and a regular file (or absent); it is not truncated yet. */
dpep_status serve_sink_check(const char *path, dpep_diag *diag);
/* Rank 0 after intake: --resume reads the output's complete lines (a line
 * without "error", ending in a newline, whose id is in the workload) and
 * marks their requests meta[i].resumed. A line whose id is not in the
 * workload is refused (another workload's output); a cut or failed line is
 * dropped (served again). */
dpep_status serve_sink_resume(serve_sink *s, const char *path, serve_req_meta *meta, int64_t n,
                              dpep_diag *diag);
/* Rank 0 before the first step: the file restarted with the kept lines only
 * (atomically: a temporary file renamed over it), open for appending. */
dpep_status serve_sink_start(serve_sink *s, const char *path, const serve_req_meta *meta, int64_t n);
/* A record (index in ib[0]); its line is written unless aborted. */
void serve_sink_add(serve_sink *s, const int32_t *ib, const double *db);
/* fflush when lines were written since the last one. */
void serve_sink_flush(serve_sink *s);
/* End of run: flush and fsync; when `in_order`, rewrite the file in request
 * order. DPEP_ERR_IO when a write failed (reported). */
dpep_status serve_sink_finish(serve_sink *s, bool in_order);
/* The rows of every request (pointing into the sink). */
dpep_status serve_sink_rows(const serve_sink *s, serve_gathered *g);
void serve_sink_free(serve_sink *s);

/* ------------------------------------------------------------------------ */
/* The results channel (results.c): finished requests from their DP group's  */
/* leader to rank 0 as they finish, and the stop requests of a stopping run.  */
/* ------------------------------------------------------------------------ */
typedef struct serve_results {
    MPI_Comm chan;           /* owned: a duplicate of the world              */
    int rank, size;
    serve_sink *sink;        /* rank 0: where records go                     */
    /* pending records of this rank (not rank 0) */
    int32_t *ib;
    double *db;
    int64_t ni, nd, cap_i, cap_d, n_rec;
    unsigned char *buf[2];   /* [0] records in flight, [1] the end message    */
    int64_t cap_b[2];
    MPI_Request req[2];
    MPI_Request stop_req_rq; /* a rank's request to stop, to rank 0         */
    int stop_payload;
    /* rank 0 */
    int ends;                /* end messages received                        */
    MPI_Request *stop_rq;    /* [size] STOP sent to each instance source     */
    bool stop_sent;
    int stop_from, stop_sig; /* the first rank that asked, and its signal     */
    /* both */
    bool stop_asked;         /* rank 0: someone asked; a source: STOP came   */
    bool stop_req_sent;
    bool ended;              /* the end marker is posted                     */
    dpep_status st;          /* first failure (NOMEM, MPI)                    */
} serve_results;

/* Collective over the world: the channel. */
dpep_status serve_results_init(serve_results *r, MPI_Comm world, serve_sink *sink);
/* A dpep_sched_callbacks.on_finish recording into a serve_results. */
void serve_results_on_finish(void *user, const dpep_sched_result *r);
/* After each step: rank 0 writes what arrived; another rank sends what it
 * has (one message in flight at a time) and looks for a STOP. */
void serve_results_pump(serve_results *r);
/* Asks rank 0 to stop the run (signal `sig` reached this rank), once. */
void serve_results_ask_stop(serve_results *r, int sig);
/* Rank 0: STOP to every instance source but itself (sources[] world ranks). */
void serve_results_send_stop(serve_results *r, const int *sources, int n_sources);
/* This rank's instance is drained: its last records and the end marker
 * are posted (not rank 0). */
void serve_results_end(serve_results *r);
/* After the final barrier: rank 0 takes every end marker; the others
 * complete their sends. stop_sent (rank 0's, broadcast by the caller) tells
 * a source to take its STOP. */
dpep_status serve_results_complete(serve_results *r, bool stop_sent, bool is_source);
void serve_results_free(serve_results *r);

/* Per-rank facts gathered for the summary. */
typedef struct serve_rank_facts {
    int64_t group, leader, requests, input_tokens, output_tokens, kv_capacity, kv_peak, kv_pool,
        kv_tok_bytes, steps;
    int64_t cached_tokens, evicted_tokens; /* prefix cache: prompt tokens reused, tokens evicted */
    double prefill_s, decode_s, prefill_tokens, decode_tokens;
    int64_t decode_steps;        /* decode-only steps                        */
    double decode_wbytes;        /* weight bytes read in them (CPU; 0: not counted) */
    int64_t step_faults, step_faults_max, steps_faulting; /* dpep_sched_stats'   */
    dpep_engine_assist_stats assist; /* the DP assist (node_ranks 0: off)      */
} serve_rank_facts;

typedef struct serve_summary_in {
    const dpep_world *w;
    const dpep_config *cfg;
    const dpep_model_config *m;
    const char *moe_transport;   /* dpep_engine_moe_transport's name          */
    const char *comms;           /* dpep_engine_comms of rank 0               */
    const dpep_engine *e;        /* rank 0's engine (its CUDA graph counts)  */
    int lm_head_group;           /* > 1: lm_head vocab-parallel over it      */
    const dpep_weights *wts;     /* rank 0's weights (for the compute line)  */
    int threads;                 /* OpenMP threads per rank (rank 0's plan)  */
    dpep_wtype kv_dtype;         /* the KV pools' element type               */
    const serve_req_meta *meta;
    const serve_gathered *g;
    const serve_sink *sink;      /* what the output holds                    */
    const char *output;          /* --output (NULL: none)                    */
    int bad_lines;               /* workload lines skipped                   */
    const char *stopped_by;      /* "SIGTERM", "SIGINT", "a write error", NULL */
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
    dpep_comm *c_xnode;         /* the node's EP ranks (node_experts' window)  */
    dpep_comm_shm *xnode;       /* the node's routed experts, or NULL: in wts  */
    dpep_device dev;
    int groups, my_group;
    dpep_request *req;          /* [n_req] every request (all ranks)           */
    int bad_lines;              /* workload lines skipped (rank 0)             */
    int64_t n_resumed;          /* requests complete in the output already     */
    serve_sink sink;            /* rank 0's output                             */
    serve_req_meta *meta;       /* [n_req] id, input_len, group                */
    int32_t *toks;              /* every request's input ids                   */
    int64_t n_req;
    int64_t max_ctx;
    int max_seqs, step_tokens;
    size_t kv_budget;
    dpep_engine *e;
    dpep_sched *s;
    serve_results res;
    int threads;                 /* OpenMP threads per rank (thread plan)    */
    double wall_s, t0;
    int *sources, n_sources;    /* world rank of every instance source        */
    bool inst_finished;         /* this rank's instance is drained            */
    bool stopping;              /* the run is being stopped                   */
    const char *stopped_by;     /* rank 0: why ("SIGTERM", ...)              */
    char stop_why[64];          /* rank 0: "SIGTERM to rank 3"                */
} serve_job;

/* 1. The device, the model and this rank's weights, agreed over the world. */
dpep_status serve_job_load_model(serve_job *r, dpep_diag *diag);
/* The weights and the node's expert window freed (collective over the
 * window's ranks: every rank of the job calls it). */
void serve_job_unload_model(serve_job *r);
/* The KV pool for r->max_seqs sequences of r->max_ctx tokens, within the
 * memory left after the weights (and max_kv_tokens when > 0); the smallest
 * over the world. Collective. */
dpep_status serve_job_size_kv(serve_job *r, int64_t max_kv_tokens);
/* The KV cache's element type of this job (runtime.kv_cache_dtype resolved
 * for its device and weights: dpep_kv_cache_type); the weights are loaded. */
dpep_wtype serve_job_kv_type(const serve_job *r);
/* The engine for r's sizes (max_ctx, max_seqs, step_tokens, kv_budget), agreed. */
dpep_status serve_job_create_engine(serve_job *r, dpep_diag *diag);
/* After a failed agreement: a shared problem printed once (collective). */
void serve_dedup_errors(serve_job *r, dpep_diag *diag);

/* One line on an MoE transport by its name (dpep_moe_transport_name). */
const char *serve_transport_desc(const char *tr);

#endif
