/* test_layout.c — every valid layout up to 8 ranks (and 96-rank ones): the
 * config rules accept exactly the layouts an independent predicate allows,
 * and each rank's groups (instance, attention-DP/TP, EP, MoE-TP, node) have
 * the sizes, members and ranks DESIGN.md prescribes. */
#include "dpep_config.h"

#include <stdlib.h>
#include <string.h>

static int g_fail;
#define CHECK(cond, ...)                                                                      \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            if (g_fail++ < 20) {                                                              \
                printf("FAIL %s:%d: ", __FILE__, __LINE__);                                   \
                printf(__VA_ARGS__);                                                          \
                printf("\n");                                                                 \
            }                                                                                 \
        }                                                                                     \
    } while (0)

/* The rules, written independently of runtime/config/layout.c. */
static bool valid_layout(int tp, int dp, int ep, bool dpa_asked, int nodes, int *world)
{
    bool dpa = dpa_asked && dp > 1;
    if (dpa && tp % dp) return false;
    if (tp % ep) return false;
    int w = dpa ? tp : tp * dp;
    if (w % nodes) return false;
    int rpn = w / nodes;
    if (rpn % tp && tp % rpn) return false;
    *world = w;
    return true;
}

static dpep_status make(int tp, int dp, int ep, bool dpa, int nodes, int dense, int world,
                        dpep_config *cfg, dpep_layout *l)
{
    dpep_config_init(cfg);
    cfg->parallel.tp = tp;
    cfg->parallel.dp = dp;
    cfg->parallel.ep = ep;
    cfg->parallel.enable_dp_attention = dpa;
    cfg->parallel.moe_dense_tp_size = dense;
    cfg->launch.nodes = nodes;
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_status st = dpep_config_validate(cfg, world, &diag);
    if (st == DPEP_OK) st = dpep_layout_from_config(cfg, world, l);
    return st;
}

/* Checks every group of a layout by counting members. */
static void check_groups(const dpep_layout *l, const char *what)
{
    int w = l->world;
    dpep_rank_info *ri = calloc((size_t)w, sizeof *ri);
    for (int r = 0; r < w; r++) dpep_layout_rank(l, r, &ri[r]);
    CHECK(l->attn_tp * l->attn_dp == l->tp, "%s: attn_tp*attn_dp != tp", what);
    CHECK(l->ep * l->moe_tp == l->tp, "%s: ep*moe_tp != tp", what);
    CHECK(l->n_instances * l->tp == w, "%s: instances*tp != world", what);
    CHECK(l->dpa ? l->attn_dp == l->dp : (l->attn_dp == 1 && l->n_instances == l->dp),
          "%s: DP semantics", what);
    for (int r = 0; r < w; r++) {
        const dpep_rank_info *a = &ri[r];
        CHECK(a->rank == r, "%s: rank", what);
        CHECK(a->instance == r / l->tp && a->instance_rank == r % l->tp, "%s: instance of %d", what, r);
        CHECK(a->attn_dp_rank >= 0 && a->attn_dp_rank < l->attn_dp, "%s: attn_dp_rank", what);
        CHECK(a->attn_tp_rank >= 0 && a->attn_tp_rank < l->attn_tp, "%s: attn_tp_rank", what);
        CHECK(a->ep_rank >= 0 && a->ep_rank < l->ep, "%s: ep_rank", what);
        CHECK(a->moe_tp_rank >= 0 && a->moe_tp_rank < l->moe_tp, "%s: moe_tp_rank", what);
        CHECK(a->attn_dp_rank * l->attn_tp + a->attn_tp_rank == a->instance_rank,
              "%s: attention coordinates of %d", what, r);
        CHECK(a->ep_rank * l->moe_tp + a->moe_tp_rank == a->instance_rank,
              "%s: expert coordinates of %d", what, r);
        CHECK(a->node * l->ranks_per_node + a->local_rank == r, "%s: node of %d", what, r);
        /* Group sizes: count the members sharing each group key. */
        int n_attn = 0, n_ep = 0, n_moetp = 0, n_node = 0, n_inst = 0;
        for (int s = 0; s < w; s++) {
            const dpep_rank_info *b = &ri[s];
            bool same_inst = b->instance == a->instance;
            n_inst += same_inst;
            n_attn += same_inst && b->attn_dp_rank == a->attn_dp_rank;
            n_ep += same_inst && b->moe_tp_rank == a->moe_tp_rank;
            n_moetp += same_inst && b->ep_rank == a->ep_rank;
            n_node += b->node == a->node;
            /* within a group, the group rank is unique */
            if (s != r && same_inst && b->attn_dp_rank == a->attn_dp_rank)
                CHECK(b->attn_tp_rank != a->attn_tp_rank, "%s: attn_tp_rank clash", what);
            if (s != r && same_inst && b->moe_tp_rank == a->moe_tp_rank)
                CHECK(b->ep_rank != a->ep_rank, "%s: ep_rank clash", what);
        }
        CHECK(n_inst == l->tp, "%s: instance size %d", what, n_inst);
        CHECK(n_attn == l->attn_tp, "%s: attention-TP group size %d", what, n_attn);
        CHECK(n_ep == l->ep, "%s: EP group size %d", what, n_ep);
        CHECK(n_moetp == l->moe_tp, "%s: MoE-TP group size %d", what, n_moetp);
        CHECK(n_node == l->ranks_per_node, "%s: node size %d", what, n_node);
    }
    /* an instance lies in one node or on whole nodes */
    for (int i = 0; i < l->n_instances; i++) {
        int first = ri[i * l->tp].node, last = ri[i * l->tp + l->tp - 1].node;
        if (first != last)
            CHECK(ri[i * l->tp].local_rank == 0 && ri[i * l->tp + l->tp - 1].local_rank ==
                  l->ranks_per_node - 1, "%s: instance %d straddles nodes", what, i);
    }
    free(ri);
}

int main(void)
{
    int valid = 0, invalid = 0;
    /* Every combination whose world could be <= 8. */
    for (int tp = 1; tp <= 8; tp++)
        for (int dp = 1; dp <= 8; dp++)
            for (int ep = 1; ep <= 8; ep++)
                for (int dpa = 0; dpa <= 1; dpa++)
                    for (int nodes = 1; nodes <= 8; nodes++)
                        for (int dense = 0; dense <= 1; dense++) {
                            bool eff_dpa = dpa && dp > 1;
                            int need = eff_dpa ? tp : tp * dp;
                            if (need > 8) continue;
                            int world = 0;
                            bool ok = valid_layout(tp, dp, ep, dpa, nodes, &world);
                            dpep_config cfg;
                            dpep_layout l;
                            char what[96];
                            snprintf(what, sizeof what, "tp%d dp%d ep%d dpa%d nodes%d dense%d", tp,
                                     dp, ep, dpa, nodes, dense);
                            dpep_status st = make(tp, dp, ep, dpa, nodes, dense, 0, &cfg, &l);
                            CHECK((st == DPEP_OK) == ok, "%s: config says %s, rules say %s", what,
                                  dpep_status_string(st), ok ? "valid" : "invalid");
                            if (st == DPEP_OK && ok) {
                                CHECK(l.world == world, "%s: world %d != %d", what, l.world, world);
                                CHECK(l.dense_tp == (dense ? 1 : tp), "%s: dense_tp", what);
                                check_groups(&l, what);
                                valid++;
                                /* the same layout against a wrong world size fails */
                                dpep_config c2;
                                dpep_layout l2;
                                CHECK(make(tp, dp, ep, dpa, nodes, dense, world + 1, &c2, &l2) != DPEP_OK,
                                      "%s: accepted world %d", what, world + 1);
                                dpep_config_free(&c2);
                            } else {
                                invalid++;
                            }
                            dpep_config_free(&cfg);
                        }
    printf("layouts up to 8 ranks: %d valid checked, %d invalid rejected\n", valid, invalid);

    /* 96 ranks: the LMSYS large-scale EP shape and variants, 12 nodes × 8. */
    struct { int tp, dp, ep, dpa, nodes; int attn_tp, moe_tp; } big[] = {
        {96, 48, 96, 1, 12, 2, 1},
        {96, 96, 96, 1, 12, 1, 1},
        {96, 96, 48, 1, 12, 1, 2},
        {96, 12, 96, 1, 12, 8, 1},
        {8, 12, 8, 0, 12, 8, 1},
        {96, 1, 96, 0, 12, 96, 1},
    };
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        dpep_config cfg;
        dpep_layout l;
        char what[96];
        snprintf(what, sizeof what, "96-rank tp%d dp%d ep%d dpa%d", big[i].tp, big[i].dp, big[i].ep,
                 big[i].dpa);
        dpep_status st = make(big[i].tp, big[i].dp, big[i].ep, big[i].dpa, big[i].nodes, 1, 96,
                              &cfg, &l);
        CHECK(st == DPEP_OK, "%s: %s", what, dpep_status_string(st));
        if (st == DPEP_OK) {
            CHECK(l.world == 96 && l.attn_tp == big[i].attn_tp && l.moe_tp == big[i].moe_tp &&
                  l.ranks_per_node == 8, "%s: attn_tp %d moe_tp %d", what, l.attn_tp, l.moe_tp);
            check_groups(&l, what);
        }
        dpep_config_free(&cfg);
    }
    /* Golden ranks of tp 96 dp 48 ep 96 on 12 nodes. */
    {
        dpep_config cfg;
        dpep_layout l;
        make(96, 48, 96, 1, 12, 0, 96, &cfg, &l);
        int golden[][7] = {
            /* rank node instance attn_dp attn_tp ep moe_tp */
            {0, 0, 0, 0, 0, 0, 0}, {1, 0, 0, 0, 1, 1, 0}, {9, 1, 0, 4, 1, 9, 0},
            {50, 6, 0, 25, 0, 50, 0}, {95, 11, 0, 47, 1, 95, 0},
        };
        for (size_t g = 0; g < sizeof golden / sizeof golden[0]; g++) {
            dpep_rank_info ri;
            dpep_layout_rank(&l, golden[g][0], &ri);
            CHECK(ri.node == golden[g][1] && ri.instance == golden[g][2] &&
                  ri.attn_dp_rank == golden[g][3] && ri.attn_tp_rank == golden[g][4] &&
                  ri.ep_rank == golden[g][5] && ri.moe_tp_rank == golden[g][6],
                  "golden rank %d", golden[g][0]);
        }
        dpep_config_free(&cfg);
    }
    /* Rejected 96-rank shapes name the rule. */
    {
        dpep_config cfg;
        dpep_layout l;
        CHECK(make(96, 48, 64, 1, 12, 0, 96, &cfg, &l) == DPEP_ERR_INVALID, "ep 64 of tp 96");
        dpep_config_free(&cfg);
        CHECK(make(96, 36, 96, 1, 12, 0, 96, &cfg, &l) == DPEP_ERR_INVALID, "dp 36 of tp 96");
        dpep_config_free(&cfg);
        CHECK(make(96, 48, 96, 1, 7, 0, 96, &cfg, &l) == DPEP_ERR_INVALID, "7 nodes");
        dpep_config_free(&cfg);
    }
    printf("%d passed, %d failed\n", valid + 9, g_fail);
    return g_fail ? 1 : 0;
}
