/* engine_assist.h — private to runtime/engine: the DP assist.
 *
 * Under DP attention a rank whose DP group has no tokens in a step sits idle
 * through every layer's attention (and the dense FFN, and its node peers'
 * shared experts) while the peer with the request runs them alone: at
 * batch 1 on a CPU node one core streams the attention weights and the
 * other waits. Those weights are replicated on every rank of the EP group
 * (attention-TP 1, MoE-TP 1, dense group of one), so an idle rank can
 * compute part of a busy peer's product from its own copy. The assist does
 * that between the ranks of one node:
 *  - at each step the ranks publish their token counts (one shared-memory
 *    fence); a rank with tokens and idle peers is an owner, the idle ranks
 *    its helpers (idle ranks dealt round-robin over the owners);
 *  - regions: the engine brackets the work in which helpers are idle
 *    (attention, the dense FFN, the MoE layer up to the combine) with
 *    engine_assist_open / engine_assist_close; a helper only serves in
 *    close, after its own (empty) share of the region's work, so regions
 *    may hold collectives (a dense FFN over a dense-TP group). An owner installs a product
 *    offload (dpep_linear_set_offload) from open to close: each
 *    dpep_linear_nt of a registered matrix (q_a, q_b, kv_a, o, the shared
 *    experts' and the dense FFN's gate / up / down) with at most max_rows
 *    rows is cut into column parts, its activations copied into the owner's
 *    shared segment, and the parts claimed one at a time — by the owner and
 *    by its helpers, whoever comes first (an atomic claim word), so a
 *    helper still busy elsewhere costs nothing; helpers write their parts
 *    into the segment, the owner copies them out once they are done. A
 *    helper's close serves the owner's parts until the owner closes the
 *    same region.
 *  - Each part is dpep_linear_nt_cols of the same matrix (every rank holds
 *    the same bits) and rows: the results are bit-identical to the
 *    unassisted product whoever computes which part (dpep_linear.h).
 *  - Shared products: in a step where every node rank has tokens, all of
 *    them few (within runtime/linear's small-M crossover for the
 *    registered weights), each rank's regions install another table: the
 *    ranks meet at each registered product, and each column part is
 *    claimed by one rank and computed for every rank's rows (the part's
 *    weights read from memory once, not once per rank); each rank copies
 *    out the parts others computed of its rows. Products are numbered
 *    alike on every rank (same regions, same layers); a mismatch fails the
 *    step naming the peer.
 * Waits spin briefly, then sleep on a futex in the shared mapping (more
 * ranks than cores stay correct, only slower); a wait longer than the
 * comm timeout ends the step with an error naming the peer.
 *
 * Collectives: create and destroy over the EP group (they split it by node
 * and map the segments); engine_assist_step over the node's ranks of it.
 * open / close: every rank of the node group calls them at the same points
 * of every step, in the same order. Ownership: the assist owns its comm,
 * its shared window and its registry (one malloc); the weights are
 * borrowed. Nothing is allocated after create. */
#ifndef DPEP_ENGINE_ASSIST_H
#define DPEP_ENGINE_ASSIST_H

#include "dpep_engine.h"

#define ENGINE_ASSIST_MIN_ROWS 64 /* rows of a product the assist offers at least (a
                                     model's widest rows permitting more, up to a
                                     step's tokens: see assist.c) */

typedef struct engine_assist engine_assist; /* opaque */

/* Collective over `ep` (MPI_Comm of the EP group). The attention's
 * projections are registered always (the caller ensures attention-TP 1),
 * the shared experts' and dense FFN's matrices as `what` says (only where
 * every rank holds them whole). *out stays NULL (DPEP_OK)
 * when this node holds one rank of the group, when `auto_mode` and the
 * node's ranks x OpenMP threads exceed its online CPUs (helpers would take
 * cores their owners' threads use), or when the ranks' registries differ
 * (logged). Products of any row count are offered, R rows at a time (R:
 * what the segment holds of the model's widest rows, at least 64, at most
 * step_tokens; the segment: 8 MiB of products' rows or, when larger, a
 * step-sized prompt's latents with 8 heads' queries and results, at most
 * 64 MiB), and prefill cores of up to step_tokens new tokens. */
#define ENGINE_ASSIST_SHARED 1u /* register the shared experts (MoE-TP 1)  */
#define ENGINE_ASSIST_DENSE 2u  /* register the dense FFN (no dense TP)    */
dpep_status engine_assist_create(MPI_Comm ep, const dpep_model_config *m, const dpep_weights *w,
                                 unsigned what, int64_t step_tokens, double timeout_s,
                                 bool auto_mode, engine_assist **out);
void engine_assist_destroy(engine_assist *a); /* collective; NULL: no-op */
/* Start of a step with T tokens on this rank: publishes T, learns the node
 * peers', decides this step's role (owner, helper, share, or none). */
dpep_status engine_assist_step(engine_assist *a, int64_t T);
/* What a region holds (the stats keep helpers' idle time by it). */
typedef enum engine_assist_region {
    ENGINE_ASSIST_ATTENTION = 0, /* a layer's attention                     */
    ENGINE_ASSIST_FFN = 1,       /* its dense FFN or MoE layer (to the combine) */
} engine_assist_region;
dpep_status engine_assist_open(engine_assist *a, engine_assist_region kind);
dpep_status engine_assist_close(engine_assist *a);
/* An owner's shared experts for its M rows x (hidden) of this MoE region,
 * posted before its routed experts (so that a helper done with its own
 * routed experts computes them meanwhile) and finished at the region's
 * close: the result, [M, hidden] in the assist's buffer, valid after the
 * close, or NULL (not an owner, not registered, too many rows: the caller
 * runs them itself). x must stay unchanged until the close. */
float *engine_assist_mlp_post(engine_assist *a, const dpep_mlp_w *mlp, const float *x, int64_t M);
/* The prefill core's lending table for dpep_attn_set_lend (NULL: a NULL
 * assist): an owner in an open region lends each sequence's prefill
 * attention core by heads (attn/'s dpep_attn_prefill_head, the same bits);
 * anyone else computes it as usual. Valid while the assist lives. */
struct dpep_attn_lend;
const struct dpep_attn_lend *engine_assist_attn_lend(engine_assist *a);
/* For dpep_moe_set_between: engine_assist_close. */
dpep_status engine_assist_close_cb(void *a);
void engine_assist_stats(const engine_assist *a, dpep_engine_assist_stats *out);

#endif
