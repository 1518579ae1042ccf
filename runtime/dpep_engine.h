/* dpep_engine.h — public header of the engine: the distributed forward step
 * (embedding, MLA with attention-TP, dense FFN or MoE, final norm, lm_head)
 * and `dpep run` (DP scheduling, continuous batching, chunked prefill, paged
 * KV admission, sampling, output and summary).
 *
 * Collectives: dpep_engine_create and dpep_engine_destroy are collective over
 * the rank's groups (they create/free its comms and, with the node-shared MoE
 * transport, the EP group's shared segments; a rank whose local allocations
 * fail still takes part and every EP rank then returns an error).
 * dpep_engine_forward is collective over the rank's attention-TP,
 * EP, MoE-TP and dense groups. Every rank of an instance calls it every step,
 * a rank without work with n_seq = 0 (0 tokens). Attention-TP ranks of one
 * group call it with the same batch. */
#ifndef DPEP_ENGINE_H
#define DPEP_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dpep_attn.h"
#include "dpep_comm.h"
#include "dpep_moe.h"
#include "dpep_runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dpep_engine dpep_engine; /* opaque */

typedef struct dpep_engine_params {
    const dpep_model_config *m;
    const dpep_weights *w;      /* this rank's weights (outlive the engine)   */
    const dpep_layout *layout;
    const dpep_rank_info *me;
    /* Groups of the layout (MPI_COMM_NULL or size 1: none). Duplicated. */
    MPI_Comm attn_tp, ep, moe_tp, dense;
    dpep_a2a_backend backend;
    dpep_a2a_transport transport; /* alltoall rows: auto, shm or mpi         */
    double comm_timeout_s;
    int max_tokens;             /* new tokens per step of this DP group       */
    int64_t max_ctx;            /* longest sequence (prompt + generated)      */
    int max_seqs;               /* KV slots                                   */
    int page_size;
    size_t kv_budget_bytes;     /* KV pool of this rank                       */
} dpep_engine_params;

dpep_status dpep_engine_create(const dpep_engine_params *p, dpep_engine **out, dpep_diag *diag);
void dpep_engine_destroy(dpep_engine *e);
dpep_attn_kv *dpep_engine_kv(dpep_engine *e);

typedef enum dpep_logits_mode {
    DPEP_LOGITS_NONE = 0,
    DPEP_LOGITS_LAST,           /* one row per sequence: its last new token   */
    DPEP_LOGITS_ALL,            /* one row per new token                      */
} dpep_logits_mode;

/* One step: tokens[T] (T = sum of seq[i].n_new, concatenated in order) at
 * the sequences' positions; the slots must have pages for pos0 + n_new.
 * logits: [n_seq or T, vocab] per `mode` (fp32). Collective (see above). */
dpep_status dpep_engine_forward(dpep_engine *e, const dpep_attn_seq *seq, int n_seq,
                                const int32_t *tokens, dpep_logits_mode mode, float *logits);

/* Tokens this rank sent through each routed expert so far (from the gate's
 * top-k), [n_layers][n_routed]; rows of dense layers stay 0. */
const int64_t *dpep_engine_expert_load(const dpep_engine *e);
/* The MoE layer's transport on this rank: "shm", "mpi" or "allgather". */
const char *dpep_engine_moe_transport(const dpep_engine *e);
/* Bytes of this rank's MoE buffers (pool + node-shared segment). */
size_t dpep_engine_moe_bytes(const dpep_engine *e);

/* `dpep run` options beyond the config. */
typedef struct dpep_run_opts {
    const char *output;         /* JSONL per request, NULL: none              */
    const char *summary_json;   /* summary as JSON, NULL: none                */
    bool ignore_eos;            /* generate max_new_tokens regardless of eos  */
    bool quiet;                 /* no progress lines                          */
    int64_t max_kv_tokens;      /* cap the KV pool per rank (tests), 0: none  */
} dpep_run_opts;

/* The whole run on a set-up world (collective over MPI_COMM_WORLD). */
dpep_status dpep_engine_run(dpep_world *w, const dpep_config *cfg, const dpep_run_opts *o,
                            dpep_diag *diag);

#ifdef __cplusplus
}
#endif
#endif /* DPEP_ENGINE_H */
