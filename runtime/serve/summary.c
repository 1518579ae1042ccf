/* summary.c — the run summary on rank 0: layout, requests and tokens,
 * throughput of prefill and decode steps, TTFT and inter-token percentiles,
 * per-DP-group load, KV use per rank and expert load; printed and, when
 * asked, written as JSON. */
#include "dpep_attn.h"
#include "dpep_linear.h"
#include "serve_internal.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *v, int64_t n, double p)
{
    if (n <= 0) return 0;
    int64_t i = (int64_t)ceil(p / 100.0 * (double)n) - 1;
    if (i < 0) i = 0;
    if (i >= n) i = n - 1;
    return v[i];
}

static json_t *pct_json(const double *v, int64_t n)
{
    return json_pack("{s:f,s:f,s:f}", "p50", pct(v, n, 50), "p90", pct(v, n, 90), "p99",
                     pct(v, n, 99));
}

/* Per MoE layer: tokens per routed expert (the text: min, mean, max; the
 * JSON also every expert's count, for placement work such as EPLB) and,
 * with several EP ranks, the busiest rank's share of the layer's tokens
 * over the mean (the contiguous placement: rank r holds experts
 * [r E / ep, (r + 1) E / ep)): the rank that paces the layer's experts. */
static void print_expert_load(FILE *f, const dpep_model_config *m, int ep, const int64_t *load,
                              json_t *js)
{
    json_t *arr = json_array();
    const int per = ep > 1 && m->n_routed % ep == 0 ? m->n_routed / ep : 0;
    double ep_worst = 0, ep_sum = 0;
    int ep_layers = 0;
    for (int l = 0; l < m->n_layers; l++) {
        if (!dpep_model_layer_is_moe(m, l)) continue;
        const int64_t *x = load + (size_t)l * m->n_routed;
        int64_t mn = INT64_MAX, mx = 0, sum = 0;
        json_t *counts = json_array();
        for (int e = 0; e < m->n_routed; e++) {
            mn = x[e] < mn ? x[e] : mn;
            mx = x[e] > mx ? x[e] : mx;
            sum += x[e];
            json_array_append_new(counts, json_integer((json_int_t)x[e]));
        }
        double mean = (double)sum / m->n_routed;
        fprintf(f, "  layer %3d: min %lld  mean %.1f  max %lld tokens per expert (max/mean %.2f)",
                l, (long long)mn, mean, (long long)mx, mean > 0 ? (double)mx / mean : 0.0);
        json_t *o = json_pack("{s:i, s:I, s:f, s:I}", "layer", l, "min", (json_int_t)mn, "mean", mean,
                              "max", (json_int_t)mx);
        if (per > 0 && sum > 0) {
            int64_t busiest = 0;
            for (int r = 0; r < ep; r++) {
                int64_t t = 0;
                for (int e = r * per; e < (r + 1) * per; e++) t += x[e];
                busiest = t > busiest ? t : busiest;
            }
            const double share = (double)busiest * ep / (double)sum;
            fprintf(f, "; EP ranks max/mean %.2f", share);
            json_object_set_new(o, "ep_rank_max_over_mean", json_real(share));
            ep_worst = share > ep_worst ? share : ep_worst;
            ep_sum += share;
            ep_layers++;
        }
        fprintf(f, "\n");
        json_object_set_new(o, "counts", counts);
        json_array_append_new(arr, o);
    }
    if (ep_layers > 0)
        fprintf(f, "  EP balance: the busiest EP rank's tokens over the mean, mean over the layers "
                   "%.3f, worst %.3f (it paces each layer's experts)\n",
                ep_sum / ep_layers, ep_worst);
    json_object_set_new(js, "expert_load", arr);
}

const char *serve_transport_desc(const char *tr)
{
    static const struct {
        const char *name, *desc;
    } k[] = {
        {"shm", "alltoall over node-shared memory (/dev/shm)"},
        {"mpi", "alltoall over MPI"},
        {"allgather", "allgather path"},
        {"device", "one EP rank on the device (rows read in place)"},
        {"ipc", "alltoall over CUDA IPC (rows written straight into the peers' device buffers)"},
        {"nccl", "alltoall over NCCL (device buffers)"},
        {"mpi-staged", "alltoall over MPI, device rows staged through host memory"},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (strcmp(tr, k[i].name) == 0) return k[i].desc;
    return tr;
}

static void print_layout(FILE *f, const serve_summary_in *in, json_t *js)
{
    const dpep_layout *L = &in->w->layout;
    const bool ag = in->cfg->parallel.moe_a2a_backend == DPEP_A2A_ALLGATHER;
    fprintf(f, "layout:           %d ranks, tp %d, dp %d%s, ep %d (attn_tp %d, moe_tp %d, "
               "dense_tp %d), moe %s%s\n", in->w->size, L->tp, L->dp,
            L->dpa ? " DP attention" : " replicas", L->ep, L->attn_tp, L->moe_tp, L->dense_tp,
            ag ? "allgather" : "alltoall",
            ag ? "" : L->ep == 1 ? " (ep 1: no exchange)"
            : strcmp(in->moe_transport, "shm") == 0 ? " over node-shared memory"
            : strcmp(in->moe_transport, "ipc") == 0 ? " over CUDA IPC"
            : strcmp(in->moe_transport, "nccl") == 0 ? " over NCCL"
            : strcmp(in->moe_transport, "mpi-staged") == 0 ? " over MPI (staged through the host)"
                                                          : " over MPI");
    json_object_set_new(js, "moe_transport", json_string(in->moe_transport));
    /* the groups' comm backends, when any is not plain MPI (GPU runs) */
    if (in->comms && *in->comms && (strstr(in->comms, "nccl") || strstr(in->comms, "staged")))
        fprintf(f, "comms:            %s (rank 0's groups)\n", in->comms);
    json_object_set_new(js, "comms", json_string(in->comms ? in->comms : ""));
    if (in->lm_head_group > 1)
        fprintf(f, "lm_head:          vocabulary-parallel over the EP group (%d ranks)\n",
                in->lm_head_group);
    json_object_set_new(js, "lm_head", json_string(in->lm_head_group > 1 ? "vocab" : "replicated"));
    json_object_set_new(js, "lm_head_group", json_integer(in->lm_head_group > 1 ? in->lm_head_group : 1));
    json_object_set_new(js, "world", json_integer(in->w->size));
    json_object_set_new(js, "tp", json_integer(L->tp));
    json_object_set_new(js, "dp", json_integer(L->dp));
    json_object_set_new(js, "ep", json_integer(L->ep));
    json_object_set_new(js, "dp_attention", json_boolean(L->dpa));
    json_object_set_new(js, "attn_tp", json_integer(L->attn_tp));
    json_object_set_new(js, "moe_tp", json_integer(L->moe_tp));
    json_object_set_new(js, "dense_tp", json_integer(L->dense_tp));
}

/* How rank 0 computes: where, the weights' type and size, its threads and
 * CPU kernels (every rank of a job runs the same build and config). */
static void print_compute(FILE *f, const serve_summary_in *in, json_t *js)
{
    static const char *const k_dtype_names[] = {"auto", "f32", "bf16", "f16"};
    const dpep_weights *w = in->wts;
    if (!w || !w->layer) return;
    size_t bytes = 0;
    for (int k = 0; k < DPEP_W_NKINDS; k++) bytes += w->bytes[k];
    const bool cpu = w->dev.kind == DPEP_DEVICE_CPU;
    fprintf(f, "compute:          %s, matrices %s (model.dtype %s), %.1f MiB of weights on rank 0",
            cpu ? "cpu" : "cuda", dpep_wtype_name(w->mat_type),
            k_dtype_names[in->cfg->model.dtype],
            (double)bytes / 1048576.0);
    dpep_linear_stats ls;
    dpep_linear_get_stats(&ls);
    const int heads0 = w->layer[0].n_heads; /* rank 0's attention heads */
    if (cpu) fprintf(f, ", %d thread%s per rank (products split over up to %d), %s kernels "
                        "(batch-1 products in %s order; attention decode core: %s; BLAS: OpenBLAS "
                        "%s%s)",
                     in->threads, in->threads == 1 ? "" : "s", ls.max_team, dpep_linear_isa(),
                     dpep_linear_m1_order(), dpep_attn_cpu_kernels(heads0), dpep_linear_blas_core(),
                     getenv("DPEP_BLAS_REEXEC") ? ", asked for: it took this CPU for a generic one" : "");
    fprintf(f, "\n");
    dpep_engine_graph_stats gs;
    memset(&gs, 0, sizeof gs);
    if (in->e) dpep_engine_graph_stats_get(in->e, &gs);
    if (!cpu && in->e) {
        if (gs.enabled)
            fprintf(f, "cuda graphs:      %d held (decode batches up to %d, padded to buckets: %lld "
                       "steps, %lld rows), %lld steps replayed, %lld run eagerly before their "
                       "capture, %lld decode steps eager, %lld evicted on rank 0\n",
                    gs.captured, gs.max_bs, (long long)gs.padded_steps, (long long)gs.padding_rows,
                    (long long)gs.replayed, (long long)gs.warmup_decode, (long long)gs.eager_decode,
                    (long long)gs.evicted);
        else
            fprintf(f, "cuda graphs:      off (%s)\n",
                    in->cfg->runtime.disable_cuda_graph ? "runtime.disable_cuda_graph"
                                                        : "the layout exchanges data within a step");
        json_object_set_new(js, "cuda_graphs",
                            json_pack("{s:b, s:i, s:I, s:I, s:I, s:I, s:I, s:I}", "enabled", gs.enabled,
                                      "captured", gs.captured, "replayed", (json_int_t)gs.replayed,
                                      "warmup_decode", (json_int_t)gs.warmup_decode,
                                      "eager_decode", (json_int_t)gs.eager_decode, "evicted",
                                      (json_int_t)gs.evicted, "padded_steps",
                                      (json_int_t)gs.padded_steps, "padding_rows",
                                      (json_int_t)gs.padding_rows));
    }
    if (cpu && gs.padded_steps > 0) {
        /* the tests' hook (DPEP_TEST_PAD_DECODE=1): the graphs' padding on the CPU */
        fprintf(f, "decode padding:   %lld steps padded to buckets, %lld rows added on rank 0\n",
                (long long)gs.padded_steps, (long long)gs.padding_rows);
        json_object_set_new(js, "decode_padding",
                            json_pack("{s:I, s:I}", "padded_steps", (json_int_t)gs.padded_steps,
                                      "padding_rows", (json_int_t)gs.padding_rows));
    }
    json_object_set_new(js, "weights_dtype", json_string(dpep_wtype_name(w->mat_type)));
    json_object_set_new(js, "weights_bytes_rank0", json_integer((json_int_t)bytes));
    json_object_set_new(js, "threads_per_rank", json_integer(in->threads));
    if (cpu) {
        json_object_set_new(js, "cpu_kernels", json_string(dpep_linear_isa()));
        json_object_set_new(js, "cpu_linear_m1_order", json_string(dpep_linear_m1_order()));
        json_object_set_new(js, "cpu_blas_core", json_string(dpep_linear_blas_core()));
        json_object_set_new(js, "cpu_attn_kernels", json_string(dpep_attn_cpu_kernels(heads0)));
        /* what the products really ran on: the plan's team is only a request */
        json_object_set_new(js, "cpu_product_team_max", json_integer(ls.max_team));
    }
}

/* What a decode-only step streams: the weight bytes each rank's products
 * read per step (CPU; the engine counts each product's matrix once) and
 * that over the step time, so a layout's busiest rank and its bandwidth show
 * (under DP attention at batch 1 the rank with the request also reads the
 * attention, dense and shared-expert weights alone). */
static void print_decode_weights(FILE *f, const serve_summary_in *in, json_t *js)
{
    const int size = in->w->size;
    int busiest = -1;
    double max_mb = 0, sum_mb = 0, min_mb = 0;
    int counted = 0;
    json_t *per = json_array(), *gbps = json_array();
    for (int r = 0; r < size; r++) {
        const serve_rank_facts *x = &in->facts[r];
        const double mb = x->decode_steps > 0 ? x->decode_wbytes / (double)x->decode_steps / 1e6 : 0;
        const double bw = x->decode_s > 0 ? x->decode_wbytes / x->decode_s / 1e9 : 0;
        json_array_append_new(per, json_real(mb * 1e6));
        json_array_append_new(gbps, json_real(bw));
        if (x->decode_steps <= 0 || x->decode_wbytes <= 0) continue;
        if (busiest < 0 || mb > max_mb) busiest = r, max_mb = mb;
        min_mb = counted == 0 || mb < min_mb ? mb : min_mb;
        sum_mb += mb;
        counted++;
    }
    if (busiest < 0) { /* no decode-only step, or not counted (GPU) */
        json_decref(per);
        json_decref(gbps);
        return;
    }
    const serve_rank_facts *b = &in->facts[busiest];
    fprintf(f, "decode weights:   %.1f MB read per decode-only step on the busiest rank (rank %d: "
               "%.1f GB/s over those steps)", max_mb, busiest, b->decode_wbytes / b->decode_s / 1e9);
    if (counted > 1)
        fprintf(f, "; per rank: mean %.1f, least %.1f MB", sum_mb / counted, min_mb);
    fprintf(f, "\n");
    json_object_set_new(js, "decode_weight_bytes_per_step", per);
    json_object_set_new(js, "decode_weight_GBps", gbps);
    json_object_set_new(js, "decode_weight_busiest_rank", json_integer(busiest));
}

/* Page faults in the steps, per rank: the memory plan is made resident at
 * create (dpep_device_advise_resident), so a rank whose steps fault shows
 * memory taken on the step path (what is left: the KV pool's pages as
 * sequences grow into them, MPI's and BLAS's own buffers). */
static void print_step_faults(FILE *f, const serve_summary_in *in, json_t *js)
{
    const int size = in->w->size;
    int most = 0;
    int64_t all = 0;
    json_t *per = json_array(), *mx = json_array();
    for (int r = 0; r < size; r++) {
        const serve_rank_facts *x = &in->facts[r];
        json_array_append_new(per, json_integer((json_int_t)x->step_faults));
        json_array_append_new(mx, json_integer((json_int_t)x->step_faults_max));
        all += x->step_faults;
        if (x->step_faults > in->facts[most].step_faults) most = r;
    }
    const serve_rank_facts *b = &in->facts[most];
    fprintf(f, "page faults:      %lld in steps on all ranks; the most on rank %d: %lld (%.1f MiB of "
               "4 KiB pages), at most %lld in one step, in %lld of its %lld steps\n",
            (long long)all, most, (long long)b->step_faults, (double)b->step_faults * 4096.0 / 1048576.0,
            (long long)b->step_faults_max, (long long)b->steps_faulting, (long long)b->steps);
    json_object_set_new(js, "step_page_faults", per);
    json_object_set_new(js, "step_page_faults_max", mx);
}

/* The DP assist (runtime.dp_assist): idle ranks' parts of busy node
 * peers' products, summed over the ranks. */
static void print_assist(FILE *f, const serve_summary_in *in, json_t *js)
{
    dpep_engine_assist_stats t;
    memset(&t, 0, sizeof t);
    int on = 0, pool_on = 0;
    double x_all = 0.0, x_huge = 0.0; /* the pool's experts, all ranks; on 2 MiB pages */
    bool x_known = true;
    for (int r = 0; r < in->w->size; r++) {
        const dpep_engine_assist_stats *x = &in->facts[r].assist;
        if (x->expert_bytes > 0) pool_on++;
        if (x->node_ranks <= 0 && x->expert_bytes <= 0) continue;
        if (x->node_ranks > 0) on++;
        if (x->node_ranks > t.node_ranks) t.node_ranks = x->node_ranks;
        t.steps_owner += x->steps_owner;
        t.steps_helper += x->steps_helper;
        t.products += x->products;
        t.parts_borrowed += x->parts_borrowed;
        t.parts_lent += x->parts_lent;
        t.waits_parts += x->waits_parts;
        t.wait_parts_s += x->wait_parts_s;
        t.idle_s[0] += x->idle_s[0];
        t.idle_s[1] += x->idle_s[1];
        t.rows_chunked += x->rows_chunked;
        t.prefill_cores += x->prefill_cores;
        t.prefill_groups += x->prefill_groups;
        t.steps_share += x->steps_share;
        t.share_products += x->share_products;
        t.share_parts += x->share_parts;
        t.share_wait_s += x->share_wait_s;
        if (x->expert_bytes > t.expert_bytes) t.expert_bytes = x->expert_bytes;
        if (x->expert_bytes > 0) {
            x_all += (double)x->expert_bytes;
            if (x->expert_huge_bytes < 0) x_known = false;
            else x_huge += (double)x->expert_huge_bytes;
        }
        t.pool_waves += x->pool_waves;
        t.pool_waves_own += x->pool_waves_own;
        t.pool_parts_borrowed += x->pool_parts_borrowed;
        t.pool_parts_lent += x->pool_parts_lent;
        t.pool_wait_s += x->pool_wait_s;
    }
    const char *mode = in->cfg->runtime.dp_assist == DPEP_DPA_ON    ? "on"
                       : in->cfg->runtime.dp_assist == DPEP_DPA_OFF ? "off"
                                                                    : "auto";
    if (on == 0 && pool_on == 0) {
        if (in->cfg->runtime.dp_assist != DPEP_DPA_AUTO)
            fprintf(f, "dp assist:        off (runtime.dp_assist %s)\n", mode);
        json_object_set_new(js, "dp_assist", json_pack("{s:b}", "enabled", 0));
        return;
    }
    if (on == 0)
        fprintf(f, "dp assist:        off (runtime.dp_assist %s)\n", mode);
    else
        fprintf(f, "dp assist:        on for %d rank%s (node groups of up to %d; runtime.dp_assist %s): "
               "%lld rank-steps with idle peers lent %lld of the parts of %lld products "
               "(%lld rank-steps idle)\n",
            on, on == 1 ? "" : "s", t.node_ranks, mode, (long long)t.steps_owner,
            (long long)t.parts_lent, (long long)t.products, (long long)t.steps_helper);
    /* where the lending loses time: an owner done with its parts waiting
     * for a helper's last ones; a helper with nothing to claim */
    if (t.steps_owner > 0 && t.steps_helper > 0)
        fprintf(f, "                  per step: owners waited %.2f ms for helpers' last parts "
                   "(%lld products); helpers found nothing to claim %.2f ms in attention, %.2f ms in "
                   "FFN / MoE layers\n",
                1e3 * t.wait_parts_s / (double)t.steps_owner, (long long)t.waits_parts,
                1e3 * t.idle_s[0] / (double)t.steps_helper, 1e3 * t.idle_s[1] / (double)t.steps_helper);
    /* prompts longer than a segment holds at once */
    if (t.prefill_cores > 0 || t.rows_chunked > 0)
        fprintf(f, "                  prefill: %lld attention cores lent (in %lld groups of heads), "
                   "%lld products and shared-expert MLPs lent in row chunks\n",
                (long long)t.prefill_cores, (long long)t.prefill_groups, (long long)t.rows_chunked);
    /* steps in which every node rank had a few tokens: replicated products
     * computed once for the node's rows */
    if (t.steps_share > 0)
        fprintf(f, "                  shared products: %lld rank-steps with every node rank busy "
                   "took part in %lld products (%lld column parts); %.2f ms per rank-step waiting "
                   "for node peers\n",
                (long long)t.steps_share, (long long)t.share_products, (long long)t.share_parts,
                1e3 * t.share_wait_s / (double)t.steps_share);
    json_t *o = json_pack("{s:b, s:i, s:i, s:I, s:I, s:I, s:I, s:I}", "enabled", on > 0, "ranks", on,
                          "node_ranks", t.node_ranks, "steps_owner", (json_int_t)t.steps_owner,
                          "steps_helper", (json_int_t)t.steps_helper, "products",
                          (json_int_t)t.products, "parts_borrowed", (json_int_t)t.parts_borrowed,
                          "parts_lent", (json_int_t)t.parts_lent);
    json_object_set_new(o, "waits_parts", json_integer((json_int_t)t.waits_parts));
    json_object_set_new(o, "wait_parts_s", json_real(t.wait_parts_s));
    json_object_set_new(o, "idle_attention_s", json_real(t.idle_s[0]));
    json_object_set_new(o, "idle_ffn_s", json_real(t.idle_s[1]));
    json_object_set_new(o, "rows_chunked", json_integer((json_int_t)t.rows_chunked));
    json_object_set_new(o, "prefill_cores", json_integer((json_int_t)t.prefill_cores));
    json_object_set_new(o, "prefill_head_groups", json_integer((json_int_t)t.prefill_groups));
    json_object_set_new(o, "steps_share", json_integer((json_int_t)t.steps_share));
    json_object_set_new(o, "share_products", json_integer((json_int_t)t.share_products));
    json_object_set_new(o, "share_parts", json_integer((json_int_t)t.share_parts));
    json_object_set_new(o, "share_wait_s", json_real(t.share_wait_s));
    const char *nx = in->cfg->runtime.node_experts == DPEP_DPA_ON    ? "on"
                     : in->cfg->runtime.node_experts == DPEP_DPA_OFF ? "off"
                                                                     : "auto";
    if (t.expert_bytes > 0)
        fprintf(f, "                  expert pool: routed experts node-shared on %d rank%s "
                   "(%.1f MiB per rank, runtime.node_experts %s): %lld waves posted, %lld of their "
                   "parts computed by node peers, %lld prefill-sized waves run alone; %.2f ms per "
                   "rank-step waiting\n",
                pool_on, pool_on == 1 ? "" : "s", (double)t.expert_bytes / 1048576.0, nx,
                (long long)t.pool_waves, (long long)t.pool_parts_borrowed, (long long)t.pool_waves_own,
                in->steps > 0 ? 1e3 * t.pool_wait_s / ((double)in->steps * pool_on) : 0.0);
    else
        fprintf(f, "                  expert pool: off (each rank's routed experts its own; "
                   "runtime.node_experts %s)\n", nx);
    /* the window's pages: comm/ asks for 2 MiB ones (MADV_COLLAPSE); a
     * kernel that cannot give them leaves 4 KiB pages, from which the
     * weights stream slower */
    const double x_frac = x_all > 0 && x_known ? x_huge / x_all : -1.0;
    if (x_frac >= 0)
        fprintf(f, "                  node-shared experts on 2 MiB pages: %.0f %%%s\n", 100.0 * x_frac,
                x_frac < 0.5 ? " (the kernel gave shared memory no 2 MiB pages: Linux 6.1 or later with "
                               "transparent huge pages and free 2 MiB blocks needed; from 4 KiB pages the "
                               "weights stream 10-15 % slower: runtime/engine/README.md)"
                             : "");
    json_object_set_new(o, "node_expert_bytes", json_integer((json_int_t)t.expert_bytes));
    if (x_frac >= 0) json_object_set_new(o, "node_expert_huge_fraction", json_real(x_frac));
    json_object_set_new(o, "pool_ranks", json_integer(pool_on));
    json_object_set_new(o, "pool_waves", json_integer((json_int_t)t.pool_waves));
    json_object_set_new(o, "pool_waves_own", json_integer((json_int_t)t.pool_waves_own));
    json_object_set_new(o, "pool_parts_borrowed", json_integer((json_int_t)t.pool_parts_borrowed));
    json_object_set_new(o, "pool_parts_lent", json_integer((json_int_t)t.pool_parts_lent));
    json_object_set_new(o, "pool_wait_s", json_real(t.pool_wait_s));
    json_object_set_new(js, "dp_assist", o);
}

static void print_per_rank(FILE *f, const serve_summary_in *in, json_t *js)
{
    const int size = in->w->size;
    fprintf(f, "per DP group:     requests / input tokens / output tokens / cached (hit rate) / "
               "evicted tokens\n");
    json_t *pg = json_array();
    int64_t in_all = 0, cached_all = 0, evicted_all = 0;
    for (int g = 0; g < in->groups; g++) {
        for (int r = 0; r < size; r++) {
            const serve_rank_facts *x = &in->facts[r];
            if (x->group != g || !x->leader) continue;
            double hit = x->input_tokens ? (double)x->cached_tokens / (double)x->input_tokens : 0;
            fprintf(f, "  dp %3d (rank %3d): %5lld / %7lld / %7lld / %7lld (%5.1f%%) / %lld\n", g, r,
                    (long long)x->requests, (long long)x->input_tokens, (long long)x->output_tokens,
                    (long long)x->cached_tokens, 100 * hit, (long long)x->evicted_tokens);
            json_array_append_new(pg, json_pack("{s:i,s:i,s:I,s:I,s:I,s:I,s:f,s:I}", "dp_rank", g,
                                                "rank", r, "requests", (json_int_t)x->requests,
                                                "input_tokens", (json_int_t)x->input_tokens,
                                                "output_tokens", (json_int_t)x->output_tokens,
                                                "cached_tokens", (json_int_t)x->cached_tokens,
                                                "cache_hit_rate", hit, "evicted_tokens",
                                                (json_int_t)x->evicted_tokens));
            in_all += x->input_tokens;
            cached_all += x->cached_tokens;
            evicted_all += x->evicted_tokens;
        }
    }
    json_object_set_new(js, "per_dp_rank", pg);
    double hit_all = in_all ? (double)cached_all / (double)in_all : 0;
    fprintf(f, "prefix cache: %lld of %lld prompt tokens reused (hit rate %.1f%%), %lld prefilled, "
               "%lld evicted\n", (long long)cached_all, (long long)in_all, 100 * hit_all,
            (long long)(in_all - cached_all), (long long)evicted_all);
    json_object_set_new(js, "cached_tokens", json_integer(cached_all));
    json_object_set_new(js, "prefill_tokens_computed", json_integer(in_all - cached_all));
    json_object_set_new(js, "cache_hit_rate", json_real(hit_all));
    json_object_set_new(js, "evicted_tokens", json_integer(evicted_all));
    fprintf(f, "KV cache per rank (%s, %lld B per token): peak tokens / capacity, peak bytes, "
               "pool bytes\n", dpep_wtype_name(in->kv_dtype),
            size > 0 ? (long long)in->facts[0].kv_tok_bytes : 0LL);
    json_object_set_new(js, "kv_cache_dtype", json_string(dpep_wtype_name(in->kv_dtype)));
    json_t *pk = json_array();
    for (int r = 0; r < size; r++) {
        const serve_rank_facts *x = &in->facts[r];
        double peak_b = (double)x->kv_peak * (double)x->kv_tok_bytes;
        fprintf(f, "  rank %3d (dp %3lld): %7lld / %7lld tokens (%5.1f%%), %.3f MiB used, %.3f MiB pool\n",
                r, (long long)x->group, (long long)x->kv_peak, (long long)x->kv_capacity,
                x->kv_capacity ? 100.0 * x->kv_peak / x->kv_capacity : 0.0, peak_b / 1048576.0,
                x->kv_pool / 1048576.0);
        json_array_append_new(pk, json_pack("{s:i,s:I,s:I,s:I,s:f,s:I}", "rank", r, "dp_rank",
                                            (json_int_t)x->group, "peak_tokens", (json_int_t)x->kv_peak,
                                            "capacity_tokens", (json_int_t)x->kv_capacity,
                                            "peak_bytes", peak_b, "pool_bytes", (json_int_t)x->kv_pool));
    }
    json_object_set_new(js, "kv_per_rank", pk);
}

dpep_status serve_print_summary(const serve_summary_in *in, const char *json_path)
{
    const serve_gathered *g = in->g;
    const int64_t n_all = in->n_requests;
    double *ttft = malloc(sizeof(double) * (size_t)(n_all > 0 ? n_all : 1));
    if (!ttft) return DPEP_ERR_NOMEM;
    /* served: finished this run; the times and tokens below are theirs */
    int64_t total_out = 0, total_in = 0, n = 0, n_failed = 0, n_aborted = 0, n_resumed = 0;
    for (int64_t i = 0; i < n_all; i++) {
        const serve_row *x = &g->row[i];
        if (in->meta[i].resumed) {
            n_resumed++;
            continue;
        }
        if (!x->present) continue;
        if (x->aborted) {
            n_aborted++;
            continue;
        }
        if (x->failed) {
            n_failed++;
            continue;
        }
        total_out += x->n_out;
        total_in += in->meta[i].input_len;
        ttft[n++] = x->ttft;
    }
    const int64_t n_missing = n_all - n_resumed - n - n_failed - n_aborted;
    qsort(ttft, (size_t)n, sizeof(double), cmp_double);
    qsort(g->gaps, (size_t)g->n_gaps, sizeof(double), cmp_double);
    /* Instances run side by side: their throughputs add up. */
    double pre_s = 0, dec_s = 0, pre_tok = 0, dec_tok = 0;
    for (int r = 0; r < in->w->size; r++) {
        const serve_rank_facts *x = &in->facts[r];
        if (r % in->w->layout.tp != 0) continue; /* one rank per instance */
        pre_s = x->prefill_s > pre_s ? x->prefill_s : pre_s;
        dec_s = x->decode_s > dec_s ? x->decode_s : dec_s;
        pre_tok += x->prefill_tokens;
        dec_tok += x->decode_tokens;
    }
    const double t = in->wall_s;
    json_t *js = json_object();
    FILE *f = stdout;
    fprintf(f, "\n==== dpep run summary ====\n");
    print_layout(f, in, js);
    print_compute(f, in, js);
    fprintf(f, "requests:         %lld served of %lld", (long long)n, (long long)n_all);
    if (n_failed) fprintf(f, "; %lld failed (do not fit the KV pool or context)", (long long)n_failed);
    if (n_aborted + n_missing)
        fprintf(f, "; %lld not served (stopped)", (long long)(n_aborted + n_missing));
    if (n_resumed) fprintf(f, "; %lld kept from the output (--resume)", (long long)n_resumed);
    if (in->bad_lines)
        fprintf(f, "; %d workload line%s skipped", in->bad_lines, in->bad_lines == 1 ? "" : "s");
    fprintf(f, "\n");
    if (in->output && in->sink) {
        const serve_sink *k = in->sink;
        if (k->werr)
            fprintf(f, "output:           %s: %lld lines written, then writing failed (%s): "
                       "%lld finished requests not delivered\n", in->output,
                    (long long)k->n_written, strerror(k->werr),
                    (long long)(n + n_failed - k->n_written));
        else
            fprintf(f, "output:           %s: %lld lines (%s)\n", in->output,
                    (long long)(k->n_written + k->n_kept),
                    in->stopped_by ? "in the order they finished" : "in request order");
    }
    if (in->stopped_by) fprintf(f, "stopped by:       %s\n", in->stopped_by);
    fprintf(f, "input tokens:     %lld\noutput tokens:    %lld\n", (long long)total_in,
            (long long)total_out);
    fprintf(f, "wall time:        %.3f s (%lld steps)\n", t, (long long)in->steps);
    fprintf(f, "prefill:          %.1f tok/s (%.0f tokens in %.3f s of steps with prefill)\n",
            pre_s > 0 ? pre_tok / pre_s : 0.0, pre_tok, pre_s);
    fprintf(f, "decode:           %.1f tok/s (%.0f tokens in %.3f s of decode-only steps)\n",
            dec_s > 0 ? dec_tok / dec_s : 0.0, dec_tok, dec_s);
    print_decode_weights(f, in, js);
    print_assist(f, in, js);
    print_step_faults(f, in, js);
    fprintf(f, "output:           %.1f tok/s overall\n", t > 0 ? total_out / t : 0.0);
    fprintf(f, "TTFT:             p50 %.4f  p90 %.4f  p99 %.4f s\n", pct(ttft, n, 50),
            pct(ttft, n, 90), pct(ttft, n, 99));
    fprintf(f, "inter-token:      p50 %.4f  p90 %.4f  p99 %.4f s (%lld gaps)\n",
            pct(g->gaps, g->n_gaps, 50), pct(g->gaps, g->n_gaps, 90), pct(g->gaps, g->n_gaps, 99),
            (long long)g->n_gaps);
    json_object_set_new(js, "requests", json_integer(n_all));
    json_object_set_new(js, "served", json_integer(n));
    json_object_set_new(js, "failed", json_integer(n_failed));
    json_object_set_new(js, "not_served", json_integer(n_aborted + n_missing));
    json_object_set_new(js, "resumed", json_integer(n_resumed));
    json_object_set_new(js, "bad_lines", json_integer(in->bad_lines));
    if (in->output && in->sink) {
        json_object_set_new(js, "output_lines",
                            json_integer(in->sink->n_written + in->sink->n_kept));
        if (in->sink->werr)
            json_object_set_new(js, "output_error", json_string(strerror(in->sink->werr)));
    }
    json_object_set_new(js, "stopped_by", in->stopped_by ? json_string(in->stopped_by) : json_null());
    json_object_set_new(js, "input_tokens", json_integer(total_in));
    json_object_set_new(js, "output_tokens", json_integer(total_out));
    json_object_set_new(js, "wall_s", json_real(t));
    json_object_set_new(js, "steps", json_integer(in->steps));
    json_object_set_new(js, "prefill_tok_s", json_real(pre_s > 0 ? pre_tok / pre_s : 0));
    json_object_set_new(js, "decode_tok_s", json_real(dec_s > 0 ? dec_tok / dec_s : 0));
    json_object_set_new(js, "output_tok_s", json_real(t > 0 ? total_out / t : 0));
    json_object_set_new(js, "ttft_s", pct_json(ttft, n));
    json_object_set_new(js, "itl_s", pct_json(g->gaps, g->n_gaps));
    print_per_rank(f, in, js);
    if (in->m->n_routed > 0) {
        fprintf(f, "expert load (tokens per routed expert, all ranks):\n");
        print_expert_load(f, in->m, in->w->layout.ep, in->expert_load, js);
    }
    fflush(f);
    dpep_status st = DPEP_OK;
    if (json_path && json_dump_file(js, json_path, JSON_INDENT(2) | JSON_PRESERVE_ORDER) != 0) {
        DPEP_ERROR("--summary-json %s: cannot write", json_path);
        st = DPEP_ERR_IO;
    }
    json_decref(js);
    free(ttft);
    return st;
}
