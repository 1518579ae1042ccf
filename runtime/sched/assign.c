/* assign.c — the DP-rank assignment rule (runtime.load_balance_method):
 * explicit data_parallel_rank, round robin, shortest queue, total tokens. */
#include "dpep_sched.h"

int dpep_sched_assign(dpep_lb_method method, const dpep_request *r, int dp, dpep_dp_load *load,
                      int *rr)
{
    int pick = 0;
    if (r->dp_rank >= 0 && r->dp_rank < dp) {
        pick = r->dp_rank;
    } else if (method == DPEP_LB_ROUND_ROBIN) {
        pick = *rr % dp;
        *rr = (*rr + 1) % dp;
    } else {
        for (int i = 1; i < dp; i++) {
            int64_t a = method == DPEP_LB_SHORTEST_QUEUE ? load[i].requests : load[i].tokens;
            int64_t b = method == DPEP_LB_SHORTEST_QUEUE ? load[pick].requests : load[pick].tokens;
            if (a < b) pick = i;
        }
    }
    load[pick].requests++;
    load[pick].tokens += r->input_len + r->max_new_tokens;
    return pick;
}
