/* engine_pool.h — private to runtime/engine: the expert pool.
 *
 * With expert parallelism a token's routed experts live on their ranks
 * only, so at small batches the ranks of a node get unequal shares (top-6
 * of 64 experts over 2 ranks: 3/3 only a third of the time) and the
 * lighter rank waits in the combine while the heavier one reads its extra
 * experts alone. When the node's routed experts live in node-shared memory
 * (runtime.node_experts: the loader places each rank's experts in its
 * segment of one window, the same bytes per node as private arenas), every
 * rank can read every expert of the node, and the pool shares each rank's
 * expert waves out among the node's ranks:
 *  - a rank's wave (moe/'s pieces: an expert and its rows; dpep_moe_wave_offload)
 *    is posted on the rank's board in a node-shared segment: its rows and
 *    gate weights copied in, each piece's matrices named by their offsets
 *    in the poster's expert segment; its parts — gate and up column parts
 *    of every piece with their SwiGLU, then (once every first-phase part is
 *    done) down's output column parts of all pieces — are claimed one at a
 *    time by whoever comes first (a compare-and-swap on a claim word naming
 *    the wave, closed while a wave is posted: the DP assist's protocol,
 *    assist.c);
 *  - the poster waits for its parts, then adds each piece's down rows into
 *    their destinations in piece order, as moe/'s kernel does: every part
 *    is dpep_linear_nt_cols of the same matrix and rows, so the results are
 *    bit-identical to the pool off (tests/engine/dp_assist.sh);
 *  - after its waves each rank serves its peers' until every node rank is
 *    through the layer's experts (done: once per dpep_moe_run_experts),
 *    but for peers whose first wave of the layer ran in their own kernel
 *    (declared on their board).
 * Prefill-sized waves (more than POOL_LEND_ROWS rows), waves with more
 * rows than the segment holds, FP8 experts, or matrices outside the
 * poster's segment are run by the poster's own kernel.
 *
 * Collectives: create and destroy over the EP group. wave/done: every rank
 * of the node group calls done once per MoE layer call, in the same order.
 * Ownership: the pool owns its comm and segment window; the expert window
 * and the weights are borrowed. Nothing is allocated after create. */
#ifndef DPEP_ENGINE_POOL_H
#define DPEP_ENGINE_POOL_H

#include "dpep_engine.h"
#include "dpep_moe.h"

typedef struct engine_pool engine_pool; /* opaque */

/* Collective over `ep` (MPI_Comm of the EP group). `experts`: the node's
 * expert window (dpep_engine_params.node_experts; its segment of this rank
 * must hold w->expert_mem at its first page). *out stays NULL (DPEP_OK)
 * when the node holds one rank of the group or the window does not match
 * the node's ranks (logged). */
dpep_status engine_pool_create(MPI_Comm ep, const dpep_model_config *m, const dpep_weights *w,
                               dpep_comm_shm *experts, double timeout_s, engine_pool **out);
void engine_pool_destroy(engine_pool *p); /* collective; NULL: no-op */
/* The table for dpep_moe_set_wave_offload (valid while the pool lives). */
const dpep_moe_wave_offload *engine_pool_table(engine_pool *p);
/* Adds the pool's counters to *out (expert_bytes, pool_*). */
void engine_pool_stats(const engine_pool *p, dpep_engine_assist_stats *out);

#endif
