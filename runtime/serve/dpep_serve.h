/* dpep_serve.h — public header of runtime/serve: where requests come from and
 * where results go. Today: the YAML workload (random, shared_prefix or a JSONL
 * file of requests) as a source, and the JSONL output plus the run summary as
 * sinks, driven by `dpep run` (dpep_serve_offline). The HTTP server of a
 * later issue is one more source/sink pair here, over the same scheduler
 * (runtime/sched).
 *
 * Ownership: a dpep_workload owns its requests and their token arena. */
#ifndef DPEP_SERVE_H
#define DPEP_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dpep_engine.h"
#include "dpep_sched.h"
#include "dpep_world.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Source: the workload of the YAML (serve/workload.c).                      */
/* ------------------------------------------------------------------------ */
typedef struct dpep_workload {
    int n;
    dpep_request *req;   /* owned [n]; input_ids point into `tokens`          */
    int32_t *tokens;     /* owned: every request's input ids                  */
    size_t n_tokens;
    int bad_lines;       /* file: lines rejected (each named in the diag)     */
} dpep_workload;

/* Builds the workload the config describes (random, shared_prefix, file)
 * for a model of `vocab` tokens and `dp` DP ranks. For a JSONL file, a bad
 * line is reported ("FILE:LINE: key: what (expected …)") and skipped; the
 * other requests are kept, bad_lines counts the rejected ones, and the
 * status is DPEP_OK unless no request is left. A line's id (its "id", else
 * its line number) is kept whole up to DPEP_REQUEST_ID_MAX - 1 bytes and
 * must be unique: a longer id or a repeated one makes a bad line. The file
 * must be a regular file (a FIFO or a device is refused, DPEP_ERR_INVALID). */
dpep_status dpep_workload_build(const dpep_config *cfg, int vocab, int dp, dpep_workload *out,
                                dpep_diag *diag);
void dpep_workload_free(dpep_workload *w);

/* ------------------------------------------------------------------------ */
/* The offline run: `dpep run` (serve/run.c).                                */
/* ------------------------------------------------------------------------ */
typedef struct dpep_run_opts {
    const char *output;         /* JSONL per request, NULL: none              */
    const char *summary_json;   /* summary as JSON, NULL: none                */
    bool ignore_eos;            /* generate max_new_tokens regardless of eos  */
    bool quiet;                 /* no progress lines                          */
    int64_t max_kv_tokens;      /* cap the KV pool per rank (tests), 0: none  */
    bool resume;                /* keep output's complete lines, serve the rest */
} dpep_run_opts;

/* The whole run on a set-up world: the model and this rank's weights, the
 * workload (rank 0) and its DP assignment, the engine sized for it, one
 * scheduler per rank stepped until every instance is drained, then the
 * results (JSONL, in request order) and the summary on rank 0. Collective
 * over MPI_COMM_WORLD. */
dpep_status dpep_serve_offline(dpep_world *w, const dpep_config *cfg, const dpep_run_opts *o,
                               dpep_diag *diag);

/* ------------------------------------------------------------------------ */
/* The server: `dpep serve` (serve/server.c).                                */
/* ------------------------------------------------------------------------ */
/* Rank 0 serves the HTTP API of the config's `server` section (OpenAI and
 * SGLang endpoints, serve/http.c); at the start of every step the world
 * agrees on the new requests and aborts, each instance's scheduler takes its
 * share, and the tokens produced travel back to rank 0 and out to the
 * clients. An idle job sleeps (no rank spins). SIGTERM/SIGINT: stop
 * accepting, abort what runs, every rank returns DPEP_OK. Collective over
 * MPI_COMM_WORLD. */
dpep_status dpep_serve_online(dpep_world *w, const dpep_config *cfg, dpep_diag *diag);

#ifdef __cplusplus
}
#endif
#endif /* DPEP_SERVE_H */
