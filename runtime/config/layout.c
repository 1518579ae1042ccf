/* layout.c — rank -> (node, instance, attention-DP/TP, EP/MoE-TP) from a
 * validated config, with SGLang's semantics (DESIGN.md):
 *   DPA:  world = tp, attn_tp = tp / dp;  no DPA: world = tp * dp, attn_tp = tp
 *   moe_tp = tp / ep; within an instance r: attn_dp_rank = r / attn_tp,
 *   attn_tp_rank = r % attn_tp, ep_rank = r / moe_tp, moe_tp_rank = r % moe_tp. */
#include "dpep_config.h"

dpep_status dpep_layout_from_config(const dpep_config *cfg, int world, dpep_layout *out)
{
    int64_t tp = cfg->parallel.tp, dp = cfg->parallel.dp, ep = cfg->parallel.ep;
    bool dpa = cfg->parallel.enable_dp_attention && dp > 1;
    int64_t need = dpa ? tp : tp * dp;
    if (world <= 0) world = (int)need;
    if (need != world || tp % ep != 0 || (dpa && tp % dp != 0) || world % cfg->launch.nodes != 0)
        return DPEP_ERR_INVALID; /* dpep_config_validate names the rule */
    dpep_layout l = {0};
    l.world = world;
    l.tp = (int)tp;
    l.dp = (int)dp;
    l.ep = (int)ep;
    l.dpa = dpa;
    l.n_instances = (int)(world / tp);
    l.attn_dp = dpa ? (int)dp : 1;
    l.attn_tp = (int)(tp / l.attn_dp);
    l.moe_tp = (int)(tp / ep);
    l.dense_tp = cfg->parallel.moe_dense_tp_size == 1 ? 1 : (int)tp;
    l.nodes = (int)cfg->launch.nodes;
    l.ranks_per_node = world / l.nodes;
    *out = l;
    return DPEP_OK;
}

void dpep_layout_rank(const dpep_layout *l, int rank, dpep_rank_info *out)
{
    dpep_rank_info r;
    r.rank = rank;
    r.node = rank / l->ranks_per_node;
    r.local_rank = rank % l->ranks_per_node;
    r.instance = rank / l->tp;
    r.instance_rank = rank % l->tp;
    r.attn_dp_rank = r.instance_rank / l->attn_tp;
    r.attn_tp_rank = r.instance_rank % l->attn_tp;
    r.ep_rank = r.instance_rank / l->moe_tp;
    r.moe_tp_rank = r.instance_rank % l->moe_tp;
    r.dense_tp_rank = l->dense_tp == 1 ? 0 : r.instance_rank;
    *out = r;
}
