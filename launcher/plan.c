/* plan.c — `dpep plan FILE`: will the deployment fit, and how many tokens of
 * KV cache each rank holds. From config.json alone (no weights read): weight
 * bytes by kind per rank, KV bytes per token, estimated activation and
 * communication buffers, then KV tokens and the largest batch at a context. */
#include "dpep_launcher.h"
#include "dpep_cli.h"
#include "dpep_engine.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GB 1e9
#define HIDDEN_BUFFERS 4.0    /* the engine's [T, hidden] buffers: h, xn, ao, ff */


/* The weights of the largest rank of an instance (ranks differ only by
 * which experts they hold), by kind into b and summed into *total, with
 * `elem` bytes per non-FP8 element. When ep does not divide the experts,
 * ceil(n_routed / ep) expert slots per rank, as an EPLB deployment with
 * redundant experts holds (e.g. 288 slots for 256 experts on 96 ranks). */
static void largest_rank(const dpep_model_config *m, const dpep_layout *l, double elem, int slots,
                         double *b_out, double *total)
{
    const bool redundant = m->n_routed && m->n_routed % l->ep != 0;
    *total = 0;
    memset(b_out, 0, sizeof(double) * DPEP_W_NKINDS);
    for (int r = 0; r < l->tp; r++) {
        dpep_rank_info ri;
        dpep_layout_rank(l, r, &ri);
        double b[DPEP_W_NKINDS], sum = 0;
        dpep_model_rank_bytes(m, l, &ri, elem, b);
        if (redundant) {
            dpep_layout one = *l;
            one.ep = 1;
            dpep_rank_info r1 = ri;
            r1.ep_rank = 0;
            double all[DPEP_W_NKINDS];
            dpep_model_rank_bytes(m, &one, &r1, elem, all);
            b[DPEP_W_ROUTED] = all[DPEP_W_ROUTED] / m->n_routed * slots;
        }
        for (int k = 0; k < DPEP_W_NKINDS; k++) sum += b[k];
        if (sum > *total) {
            *total = sum;
            memcpy(b_out, b, sizeof b);
        }
    }
}

/* A whole decimal number in [lo, hi]. */
static bool parse_count(const char *s, long lo, long hi, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

dpep_status dpep_plan_compute(const dpep_model_config *m_in, const dpep_config *cfg,
                              const dpep_layout *l, int64_t context, double kv_dtype_bytes,
                              dpep_mem_plan *out)
{
    if (context < 1) return DPEP_ERR_INVALID;
    dpep_mem_plan p;
    memset(&p, 0, sizeof p);
    p.layout = *l;
    p.context = context;
    p.on_gpu = cfg->runtime.device != DPEP_DEVICE_CPU;
    dpep_model_config m = *m_in;
    /* GPU: the checkpoint's dtypes (FP8 projections stay FP8 with their
     * block scales). CPU: the loader's rule for model.dtype
     * (dpep_weights_matrix_type; FP8 projections are widened to float32;
     * norms and the router stay float32: a few kB per layer, not counted
     * apart). */
    if (!p.on_gpu) m.fp8 = false;
    const dpep_st_dtype stored = m_in->fp8 ? DPEP_ST_F8_E4M3 : m_in->dtype;
    p.weight_elem_bytes =
        p.on_gpu ? (double)dpep_st_dtype_size(m.dtype)
                 : (double)dpep_wtype_size(dpep_weights_matrix_type(cfg->model.dtype, DPEP_DEVICE_CPU, stored));
    /* KV cache: runtime.kv_cache_dtype as the engine resolves it for the
     * weights this plan counts (unless the caller names a size) */
    const dpep_device_kind dk = p.on_gpu ? DPEP_DEVICE_CUDA : DPEP_DEVICE_CPU;
    p.kv_elem_bytes = kv_dtype_bytes > 0
                          ? kv_dtype_bytes
                          : (double)dpep_wtype_size(dpep_kv_cache_type(
                                cfg->runtime.kv_cache_dtype, dk,
                                dpep_weights_matrix_type(cfg->model.dtype, dk, stored)));

    /* Weights: ranks of one instance differ only by which experts they hold;
     * take the largest. */
    p.expert_slots = m.n_routed ? (m.n_routed + l->ep - 1) / l->ep : 0;
    p.redundant_experts = m.n_routed && m.n_routed % l->ep != 0;
    largest_rank(&m, l, p.weight_elem_bytes, p.expert_slots, p.weights, &p.weights_total);

    /* (this build's CUDA loader keeps FP8 as stored where a rank's slice
     * starts on a 128-block — every layout whose splits divide the blocks; a
     * slice that does not is held as BF16, which this plan does not count) */

    /* KV cache: one latent vector (kv_lora) and one RoPE key (rope) per token
     * per layer — MLA has a single KV head, so attention-TP ranks of one
     * group each hold the whole cache of the group's requests. */
    p.kv_per_token = dpep_model_kv_bytes_per_token(&m, p.kv_elem_bytes);

    /* Activations per rank (estimate; element size a = 4: this build's
     * activations and exchanged rows are float32 on every device):
     *   T = chunked_prefill_size tokens per attention-DP group per step
     *   hidden:    4 · T · hidden · a               (residual, norm, attn out, ffn out)
     *   attention: T · h · (nope + rope + kv_lora + rope + v) · a, h = heads / attn_tp
     *              (q, absorbed q, per-head output; scores are tiled, not stored)
     *   ffn:       max(MoE: R · 2 · moe_inter / moe_tp, dense: T_d · 2 · inter / dense_tp) · a
     *              R = min(2 · T · attn_dp · topk / ep, T · attn_dp · min(topk, slots))
     *              (received tokens, capacity factor 2), T_d = T · (dense_tp > 1 ? attn_dp : 1)
     *   logits:    max_running_requests · vocab · 4  (float32)
     * Communication per rank:
     *   alltoall:  2 · (S + R') · hidden · a, S = T · min(topk, ep) dispatch copies,
     *              R' = min(2 · T · attn_dp · min(topk, ep) / ep, T · attn_dp · min(topk, ep))
     *              (dispatch send/recv, combine recv/send)
     *   allgather: 2 · T · attn_dp · hidden · a (gathered tokens, reduce-scatter)
     *   attention TP (attn_tp > 1): T · hidden · a for the all-reduce */
    double a = (double)sizeof(float);
    double T = (double)cfg->runtime.chunked_prefill_size;
    p.step_tokens = cfg->runtime.chunked_prefill_size;
    double heads = (double)m.n_heads / l->attn_tp;
    double act = HIDDEN_BUFFERS * T * m.hidden * a;
    act += T * heads * (m.qk_nope + m.qk_rope + m.kv_lora_rank + m.qk_rope + m.v_head) * a;
    double ffn = 0;
    if (m.n_routed) {
        double R = fmin(2.0 * T * l->attn_dp * m.topk / l->ep,
                        T * l->attn_dp * fmin(m.topk, p.expert_slots));
        ffn = R * 2.0 * ((double)m.moe_inter / l->moe_tp) * a;
    }
    if (m.first_k_dense > 0 || !m.n_routed) {
        double Td = T * (l->dense_tp > 1 ? l->attn_dp : 1);
        ffn = fmax(ffn, Td * 2.0 * ((double)m.inter / l->dense_tp) * a);
    }
    act += ffn;
    act += (double)cfg->runtime.max_running_requests * m.vocab * sizeof(float); /* fp32 logits */
    p.act_bytes = act;
    double comm = 0;
    if (m.n_routed && (l->ep > 1 || l->attn_dp > 1)) {
        if (cfg->parallel.moe_a2a_backend == DPEP_A2A_ALLTOALL) {
            double k = fmin(m.topk, l->ep);
            double S = T * k, Rr = fmin(2.0 * T * l->attn_dp * k / l->ep, T * l->attn_dp * k);
            comm = 2.0 * (S + Rr) * m.hidden * a;
        } else {
            comm = 2.0 * T * l->attn_dp * m.hidden * a;
        }
    }
    if (l->attn_tp > 1) comm += T * m.hidden * a;
    /* The transport dpep run takes (moe/: pick_transport; serve/ for the EP
     * comm's backend): the segment transports reserve, on every rank, room
     * for every token of the EP group: ep · moe_tp · (T / attn_tp) rows of
     * [x | ids | weights] plus their partial sums, in fp32. */
    const dpep_a2a_transport tr = cfg->parallel.moe_a2a_transport;
    const bool one_node = l->tp <= l->ranks_per_node;
    p.transport = "none";
    p.segment_bytes = 0;
    if (m.n_routed && l->ep > 1) {
        if (cfg->parallel.moe_a2a_backend == DPEP_A2A_ALLGATHER) p.transport = "allgather";
        else if (tr == DPEP_A2A_TRANSPORT_SHM) p.transport = "shm";
        else if (tr == DPEP_A2A_TRANSPORT_IPC) p.transport = "ipc";
        else if (tr == DPEP_A2A_TRANSPORT_NCCL) p.transport = "nccl";
        else if (tr == DPEP_A2A_TRANSPORT_MPI) p.transport = p.on_gpu ? "mpi-staged" : "mpi";
        else if (p.on_gpu) p.transport = one_node ? "ipc" : "nccl";
        else p.transport = one_node ? "shm" : "mpi";
        if (strcmp(p.transport, "shm") == 0 || strcmp(p.transport, "ipc") == 0) {
            const double rows = (double)l->ep * l->moe_tp * ceil(T / l->attn_tp);
            p.segment_bytes = rows * (2.0 * m.hidden + 2.0 * m.topk) * sizeof(float);
            /* ipc's segment is device memory: it takes the place of the
             * send/receive buffers estimated above, when larger */
            if (p.on_gpu) comm = fmax(comm, p.segment_bytes);
        }
    }
    p.comm_bytes = comm;
    /* the DP assist's segment (CPU, DP attention with attention-TP 1, EP over
     * several ranks of a node; auto also needs the node's CPUs, unknown
     * here), in /dev/shm like the shm transport's */
    p.assist_bytes = 0;
    if (!p.on_gpu && cfg->runtime.dp_assist != DPEP_DPA_OFF && l->attn_tp == 1 && l->ep > 1 &&
        l->ranks_per_node > 1)
        p.assist_bytes = (double)dpep_engine_assist_segment_bytes(&m, l->moe_tp == 1, l->dense_tp == 1,
                                                                  (int64_t)T);
    /* the node's routed experts in /dev/shm where the assist may run */
    p.node_experts_bytes = p.assist_bytes > 0 && cfg->runtime.node_experts != DPEP_DPA_OFF
                               ? p.weights[DPEP_W_ROUTED]
                               : 0.0;
    p.pool_bytes = p.node_experts_bytes > 0 ? (double)dpep_engine_pool_segment_bytes(&m) : 0.0;

    p.budget = cfg->launch.gpu_memory_gb * GB * cfg->runtime.mem_fraction_static;
    p.kv_bytes = p.budget - p.weights_total - p.act_bytes - p.comm_bytes;
    int64_t page = cfg->runtime.page_size;
    if (p.kv_bytes > 0) {
        p.kv_tokens_rank = (int64_t)floor(p.kv_bytes / p.kv_per_token) / page * page;
        p.kv_tokens_instance = p.kv_tokens_rank * l->attn_dp;
        p.batch_group = p.kv_tokens_rank / context;
        p.batch_instance = p.batch_group * l->attn_dp;
        p.batch_total = p.batch_instance * l->n_instances;
    }
    p.fits = p.batch_group >= 1;
    if (!p.fits) {
        double need = p.weights_total + p.act_bytes + p.comm_bytes;
        int big = 0;
        for (int k = 1; k < DPEP_W_NKINDS; k++)
            if (p.weights[k] > p.weights[big]) big = k;
        if (p.kv_bytes <= 0)
            snprintf(p.overflow, sizeof p.overflow,
                     "weights %.2f GB (largest: %s %.2f GB) + activations %.2f GB + communication "
                     "%.2f GB = %.2f GB exceed the %.2f GB per rank (gpu_memory_gb %g x "
                     "mem_fraction_static %g) by %.2f GB; nothing is left for the KV cache",
                     p.weights_total / GB, dpep_wkind_name((dpep_wkind)big), p.weights[big] / GB,
                     p.act_bytes / GB, p.comm_bytes / GB, need / GB, p.budget / GB,
                     cfg->launch.gpu_memory_gb, cfg->runtime.mem_fraction_static,
                     (need - p.budget) / GB);
        else
            snprintf(p.overflow, sizeof p.overflow,
                     "the KV cache: %.3f GB are left per rank after weights, activations and "
                     "communication, room for %lld tokens, less than one request of %lld tokens "
                     "(%.3f GB)", p.kv_bytes / GB, (long long)p.kv_tokens_rank, (long long)context,
                     p.kv_per_token * (double)context / GB);
    }
    *out = p;
    return DPEP_OK;
}

/* ---------------------------------------------------------------------- */
/* printing                                                               */
/* ---------------------------------------------------------------------- */
static void print_plan(const dpep_mem_plan *p, const dpep_model_config *m, const dpep_config *cfg)
{
    const dpep_layout *l = &p->layout;
    printf("layout: world %d = %d node%s x %d; tp %d, dp %d%s (attn_tp %d, attn_dp %d), ep %d "
           "(moe_tp %d), dense_tp %d, %d instance%s\n", l->world, l->nodes, l->nodes == 1 ? "" : "s",
           l->ranks_per_node, l->tp, l->dp, l->dpa ? " with DP attention" : " replicas", l->attn_tp,
           l->attn_dp, l->ep, l->moe_tp, l->dense_tp, l->n_instances, l->n_instances == 1 ? "" : "s");
    if (p->on_gpu)
        printf("memory per rank: %.2f GB = launch.gpu_memory_gb %g x runtime.mem_fraction_static "
               "%g; weights in the checkpoint's dtypes (%s%s), KV cache %s\n", p->budget / GB,
               cfg->launch.gpu_memory_gb, cfg->runtime.mem_fraction_static,
               dpep_st_dtype_name(m->dtype), m->fp8 ? " + FP8 e4m3 projections with float32 block "
               "scales" : "", p->kv_elem_bytes == 2 ? "bf16" : "f32");
    else
        printf("memory per rank: %.2f GB = launch.gpu_memory_gb %g x runtime.mem_fraction_static "
               "%g (CPU backend: weights loaded as f32, KV cache %s)\n", p->budget / GB,
               cfg->launch.gpu_memory_gb, cfg->runtime.mem_fraction_static,
               p->kv_elem_bytes == 2 ? "bf16" : "f32");
    printf("\nweights per rank (largest rank of an instance):\n");
    for (int k = 0; k < DPEP_W_NKINDS; k++)
        printf("  %-16s %12.3f GB\n", dpep_wkind_name((dpep_wkind)k), p->weights[k] / GB);
    printf("  %-16s %12.3f GB\n", "total", p->weights_total / GB);
    if (m->n_routed)
        printf("  routed experts: %d per rank%s\n", p->expert_slots,
               p->redundant_experts ? " (ep does not divide n_routed_experts: planned as "
               "redundant-expert slots; dpep run needs ep to divide the experts)" : "");
    printf("activations:      %12.3f GB  (T = %lld tokens per attention-DP group per step: "
           "hidden, attention, FFN, logits; see docs/LAUNCH.md)\n", p->act_bytes / GB,
           (long long)p->step_tokens);
    printf("communication:    %12.3f GB  (%s; MoE transport %s)\n", p->comm_bytes / GB,
           cfg->parallel.moe_a2a_backend == DPEP_A2A_ALLTOALL ? "alltoall dispatch/combine buffers"
                                                               : "allgather / reduce-scatter buffers",
           p->transport);
    if (p->segment_bytes > 0)
        printf("  %s segment:     %12.3f GB per rank (%s; room for every token of the EP group "
               "on one rank)\n", p->transport, p->segment_bytes / GB,
               strcmp(p->transport, "ipc") == 0 ? "device memory, mapped into the node's peers "
                                                  "with CUDA IPC"
                                                : "node-shared host memory in /dev/shm");
    if (p->assist_bytes > 0)
        printf("  dp assist segment: %.2f MiB per rank (node-shared host memory in /dev/shm; "
               "runtime.dp_assist %s)\n", p->assist_bytes / 1048576.0,
               cfg->runtime.dp_assist == DPEP_DPA_ON ? "on"
                                                     : "auto: on when the node's ranks x threads "
                                                       "fit its CPUs");
    if (p->node_experts_bytes > 0)
        printf("  node experts:      %.3f GB per rank of the weights above in node-shared host "
               "memory, and an expert pool segment of %.1f MiB (/dev/shm; runtime.node_experts "
               "%s)\n", p->node_experts_bytes / GB, p->pool_bytes / 1048576.0,
               cfg->runtime.node_experts == DPEP_DPA_ON ? "on"
                                                        : "auto: when the DP assist runs and "
                                                          "/dev/shm has room");
    printf("KV cache per token: %d layers x (kv_lora %d + rope %d) x %g B = %.0f B\n", m->n_layers,
           m->kv_lora_rank, m->qk_rope, p->kv_elem_bytes, p->kv_per_token);
    printf("left for the KV cache: %.3f GB per rank\n", p->kv_bytes / GB);
    if (p->kv_bytes > 0) {
        printf("KV tokens per rank: %lld (pages of %lld)\n", (long long)p->kv_tokens_rank,
               (long long)cfg->runtime.page_size);
        printf("KV tokens per instance: %lld distinct (%d attention-DP group%s x %lld%s)\n",
               (long long)p->kv_tokens_instance, l->attn_dp, l->attn_dp == 1 ? "" : "s",
               (long long)p->kv_tokens_rank,
               l->attn_tp > 1 ? "; the attn_tp ranks of a group hold the same cache" : "");
        printf("largest batch at context %lld: %lld per attention-DP group, %lld per instance, "
               "%lld in the job\n", (long long)p->context, (long long)p->batch_group,
               (long long)p->batch_instance, (long long)p->batch_total);
        if (p->batch_group > cfg->runtime.max_running_requests)
            printf("  (runtime.max_running_requests = %lld caps the decode batch per "
                   "attention-DP group)\n", (long long)cfg->runtime.max_running_requests);
    }
    if (p->fits) printf("verdict: fits\n");
    else printf("verdict: does not fit: %s\n", p->overflow);
}

static json_t *plan_json(const dpep_mem_plan *p)
{
    json_t *o = json_object(), *w = json_object();
    for (int k = 0; k < DPEP_W_NKINDS; k++)
        json_object_set_new(w, dpep_wkind_name((dpep_wkind)k), json_real(p->weights[k]));
    json_object_set_new(w, "total", json_real(p->weights_total));
    const dpep_layout *l = &p->layout;
    json_t *lay = json_pack("{s:i,s:i,s:i,s:i,s:b,s:i,s:i,s:i,s:i,s:i,s:i}", "world", l->world,
                            "tp", l->tp, "dp", l->dp, "ep", l->ep, "dpa", l->dpa, "attn_tp",
                            l->attn_tp, "attn_dp", l->attn_dp, "moe_tp", l->moe_tp, "dense_tp",
                            l->dense_tp, "nodes", l->nodes, "instances", l->n_instances);
    json_object_set_new(o, "layout", lay);
    json_object_set_new(o, "device", json_string(p->on_gpu ? "gpu" : "cpu"));
    json_object_set_new(o, "kv_dtype", json_string(p->kv_elem_bytes == 2 ? "bf16" : "f32"));
    json_object_set_new(o, "weights_bytes", w);
    json_object_set_new(o, "expert_slots_per_rank", json_integer(p->expert_slots));
    json_object_set_new(o, "redundant_experts", json_boolean(p->redundant_experts));
    json_object_set_new(o, "kv_bytes_per_token", json_real(p->kv_per_token));
    json_object_set_new(o, "step_tokens", json_integer(p->step_tokens));
    json_object_set_new(o, "activation_bytes", json_real(p->act_bytes));
    json_object_set_new(o, "comm_bytes", json_real(p->comm_bytes));
    json_object_set_new(o, "moe_transport", json_string(p->transport));
    json_object_set_new(o, "moe_segment_bytes", json_real(p->segment_bytes));
    json_object_set_new(o, "dp_assist_segment_bytes", json_real(p->assist_bytes));
    json_object_set_new(o, "node_experts_bytes", json_real(p->node_experts_bytes));
    json_object_set_new(o, "expert_pool_segment_bytes", json_real(p->pool_bytes));
    json_object_set_new(o, "budget_bytes", json_real(p->budget));
    json_object_set_new(o, "kv_cache_bytes", json_real(p->kv_bytes));
    json_object_set_new(o, "kv_tokens_per_rank", json_integer(p->kv_tokens_rank));
    json_object_set_new(o, "kv_tokens_per_instance", json_integer(p->kv_tokens_instance));
    json_object_set_new(o, "context", json_integer(p->context));
    json_object_set_new(o, "max_batch_per_dp_group", json_integer(p->batch_group));
    json_object_set_new(o, "max_batch_per_instance", json_integer(p->batch_instance));
    json_object_set_new(o, "max_batch_total", json_integer(p->batch_total));
    json_object_set_new(o, "fits", json_boolean(p->fits));
    if (!p->fits) json_object_set_new(o, "overflow", json_string(p->overflow));
    return o;
}

/* The seeds' point: the same tp without DP attention (KV duplicated on every
 * rank) and with dp = tp (each rank its own requests' KV). */
static dpep_status compare_plans(dpep_config *cfg, const dpep_model_config *m, int64_t context,
                                 double kvb, dpep_mem_plan *tp_only, dpep_mem_plan *dpa)
{
    int64_t dp = cfg->parallel.dp;
    bool e = cfg->parallel.enable_dp_attention;
    dpep_layout a, b;
    cfg->parallel.dp = 1;
    cfg->parallel.enable_dp_attention = false;
    dpep_status st = dpep_layout_from_config(cfg, (int)cfg->parallel.tp, &a);
    cfg->parallel.dp = cfg->parallel.tp;
    cfg->parallel.enable_dp_attention = true;
    if (st == DPEP_OK) st = dpep_layout_from_config(cfg, (int)cfg->parallel.tp, &b);
    if (st == DPEP_OK) st = dpep_plan_compute(m, cfg, &a, context, kvb, tp_only);
    if (st == DPEP_OK) st = dpep_plan_compute(m, cfg, &b, context, kvb, dpa);
    cfg->parallel.dp = dp;
    cfg->parallel.enable_dp_attention = e;
    return st;
}

static void print_compare(const dpep_mem_plan *A, const dpep_mem_plan *B)
{
    int tp = A->layout.tp;
    char ha[64], hb[64];
    snprintf(ha, sizeof ha, "TP %d, no DP attention", tp);
    snprintf(hb, sizeof hb, "TP %d, DP %d, DP attention", tp, tp);
    printf("\nDP attention vs TP for the KV cache (ep %d, context %lld, same GPUs):\n",
           A->layout.ep, (long long)A->context);
    printf("  %-44s %26s %26s\n", "", ha, hb);
    printf("  %-44s %23.2f GB %23.2f GB\n", "weights per GPU", A->weights_total / GB,
           B->weights_total / GB);
    printf("  %-44s %23.2f GB %23.2f GB\n", "KV cache memory per GPU", A->kv_bytes / GB,
           B->kv_bytes / GB);
    printf("  %-44s %26lld %26lld\n", "KV tokens per GPU", (long long)A->kv_tokens_rank,
           (long long)B->kv_tokens_rank);
    printf("  %-44s %26d %26d\n", "GPUs holding each token's KV", A->layout.attn_tp,
           B->layout.attn_tp);
    printf("  %-44s %26lld %26lld\n", "distinct KV tokens per instance",
           (long long)A->kv_tokens_instance, (long long)B->kv_tokens_instance);
    /* A reference batch: the TP layout's largest. Its KV on one GPU and on
     * all GPUs under each layout (the seeds' 1x / 1/8x, 8x / 1x table). */
    double ref_tokens = (double)A->batch_instance * (double)A->context;
    double per_a = ref_tokens * A->kv_per_token, per_b = per_a / B->layout.attn_dp;
    char lbl[96];
    snprintf(lbl, sizeof lbl, "KV of a %lld x %lld batch, per GPU", (long long)A->batch_instance,
             (long long)A->context);
    printf("  %-44s %20.2f GB (1x) %16.2f GB (1/%dx)\n", lbl, per_a / GB, per_b / GB,
           B->layout.attn_dp);
    snprintf(lbl, sizeof lbl, "KV of that batch, all %d GPUs", tp);
    printf("  %-44s %20.2f GB (%dx) %18.2f GB (1x)\n", lbl, per_a * tp / GB, tp, per_b * tp / GB);
    printf("  %-44s %26lld %26lld\n", "largest batch per instance", (long long)A->batch_instance,
           (long long)B->batch_instance);
    if (A->batch_instance > 0)
        printf("  batch capacity with DP attention: x%.2f (x%d at equal KV memory per GPU; DP "
               "attention replicates the attention weights, %+.2f GB per GPU, and each GPU's own "
               "batch needs larger activation and dispatch buffers, %+.2f GB)\n",
               (double)B->batch_instance / (double)A->batch_instance, B->layout.attn_dp,
               (B->weights_total - A->weights_total) / GB,
               (B->act_bytes + B->comm_bytes - A->act_bytes - A->comm_bytes) / GB);
    else
        printf("  batch capacity with DP attention: %lld vs none without it\n",
               (long long)B->batch_instance);
}

void dpep_cmd_plan_help(FILE *f)
{
    fprintf(f,
            "usage: dpep plan FILE [--context N] [--compare] [--json] [--kv-dtype bf16|f32]\n"
            "                 [--configuration NAME] [overrides]\n\n"
            "Memory plan of FILE's deployment from model.path/config.json alone (no weights\n"
            "read): weight bytes per rank by kind (attention and embeddings per DP rank or\n"
            "TP-split, routed experts over EP, shared experts, dense layers) in the\n"
            "checkpoint's dtypes (FP8 with block scales, BF16; f32 on the CPU backend), KV\n"
            "bytes per token (layers x (kv_lora + rope)), estimated activation and\n"
            "communication buffers; then, for launch.gpu_memory_gb x runtime.mem_fraction_static,\n"
            "the KV tokens each rank holds and the largest batch at the context length, or\n"
            "\"does not fit\" naming what overflows.\n\n"
            "options:\n"
            "  --context N      context length (prompt + output tokens) per request; default 4096\n"
            "  --compare        also show TP N without DP attention vs TP N DP N with it (shown\n"
            "                   anyway when the config uses DP attention)\n"
            "  --kv-dtype D     KV cache dtype to plan with: bf16 or f32 (default:\n"
            "                   runtime.kv_cache_dtype, whose auto is bf16 on a GPU holding\n"
            "                   16-bit or FP8 weights, else f32, and f32 on the CPU)\n"
            "  --json           one JSON object instead of the text\n"
            "  --configuration NAME, --tp-size N, --dp-size N, --ep-size N, --enable-dp-attention,\n"
            "  --gpu-memory-gb G, --mem-fraction-static F, --model-path DIR, --set K=V, …\n"
            "Exit codes: 0 fits, 2 does not fit or bad input/usage.\n");
}

int dpep_cmd_plan(int argc, char **argv)
{
    for (int i = 0; i < argc; i++)
        if ((strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)) {
            dpep_cmd_plan_help(stdout);
            return 0;
        }
    bool json = false, compare = false;
    const char *ctx_s = NULL, *conf = NULL, *kvd = NULL, *file = NULL;
    dpep_cli_opt opts[] = {{"--json", NULL, &json}, {"--compare", NULL, &compare},
                           {"--context", &ctx_s, NULL}, {"--configuration", &conf, NULL},
                           {"--kv-dtype", &kvd, NULL}};
    int nopt = (int)(sizeof opts / sizeof opts[0]);
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_config cfg;
    if (dpep_config_init(&cfg) != DPEP_OK) return 1;
    dpep_status st = dpep_cli_scan("plan", argc, argv, opts, nopt, &file, &diag);
    long context = 4096;
    double kvb = 0;
    if (st == DPEP_OK && !file) {
        dpep_diag_add(&diag, DPEP_DIAG_ERROR, "dpep plan: missing FILE (see dpep plan --help)");
        st = DPEP_ERR_USAGE;
    }
    if (st == DPEP_OK && ctx_s && !parse_count(ctx_s, 1, 1L << 30, &context)) {
        dpep_diag_add(&diag, DPEP_DIAG_ERROR, "command line --context: got %s (expected a token "
                      "count from 1 to 1073741824)", ctx_s);
        st = DPEP_ERR_USAGE;
    }
    if (st == DPEP_OK && kvd) {
        if (strcmp(kvd, "bf16") == 0) kvb = 2;
        else if (strcmp(kvd, "f32") == 0) kvb = 4;
        else {
            dpep_diag_add(&diag, DPEP_DIAG_ERROR, "command line --kv-dtype: got %s (expected bf16 "
                          "or f32)", kvd);
            st = DPEP_ERR_USAGE;
        }
    }
    if (st == DPEP_OK) st = dpep_config_load_file(&cfg, file, conf, &diag);
    if (st == DPEP_OK) st = dpep_cli_apply_overrides(&cfg, argc, argv, opts, nopt, &diag);
    int world = cfg.launch.gpus_per_node ? (int)(cfg.launch.nodes * cfg.launch.gpus_per_node) : 0;
    if (st == DPEP_OK) st = dpep_config_validate(&cfg, world, &diag);
    dpep_layout l;
    dpep_model_config m;
    if (st == DPEP_OK) st = dpep_layout_from_config(&cfg, world, &l);
    if (st == DPEP_OK && !cfg.model.path[0]) {
        char w[4300];
        dpep_config_where(&cfg, dpep_config_option_find("model.path"), w, sizeof w);
        dpep_diag_add(&diag, DPEP_DIAG_ERROR, "%s: model.path: empty (expected a directory with "
                      "the model's config.json)", w);
        st = DPEP_ERR_INVALID;
    }
    if (st == DPEP_OK) {
        st = dpep_model_config_load(cfg.model.path, &m, &diag);
        if (st != DPEP_OK) {
            char w[4300];
            dpep_config_where(&cfg, dpep_config_option_find("model.path"), w, sizeof w);
            dpep_diag_add(&diag, DPEP_DIAG_NOTE, "%s: model.path is %s", w, cfg.model.path);
        }
    }
    if (st == DPEP_OK) {
        /* Experts that do not divide over ep are planned as redundant slots
         * (a note); every other layout rule is an error. */
        dpep_layout chk = l;
        if (m.n_routed && m.n_routed % l.ep) chk.ep = 1;
        st = dpep_model_check_layout(&m, &chk, cfg.model.path, &diag);
    }
    dpep_mem_plan p;
    if (st == DPEP_OK) st = dpep_plan_compute(&m, &cfg, &l, context, kvb, &p);
    bool show_cmp = st == DPEP_OK && (compare || l.dpa) && l.tp > 1;
    dpep_mem_plan A, B;
    if (show_cmp) {
        dpep_diag cd;
        dpep_diag_init(&cd);
        dpep_layout la = l;
        la.attn_tp = l.tp; /* heads must divide over the TP-attention layout */
        if (dpep_model_check_layout(&m, &la, cfg.model.path, &cd) != DPEP_OK ||
            compare_plans(&cfg, &m, context, kvb, &A, &B) != DPEP_OK) {
            dpep_diag_add(&diag, DPEP_DIAG_NOTE, "no TP vs DP-attention comparison: tp %d does "
                          "not divide the %d heads", l.tp, m.n_heads);
            show_cmp = false;
        }
    }
    dpep_diag_print(&diag, stderr);
    if (st != DPEP_OK) {
        dpep_config_free(&cfg);
        return dpep_status_exit_code(st);
    }
    if (json) {
        json_t *o = plan_json(&p);
        json_object_set_new(o, "config", json_string(cfg.source));
        json_object_set_new(o, "model", json_string(cfg.model.path));
        if (show_cmp) {
            json_t *c = json_object();
            json_object_set_new(c, "tp", plan_json(&A));
            json_object_set_new(c, "dp_attention", plan_json(&B));
            json_object_set_new(c, "batch_ratio",
                                json_real(A.batch_instance ? (double)B.batch_instance /
                                                                 (double)A.batch_instance : 0));
            json_object_set_new(o, "compare", c);
        }
        char *s = json_dumps(o, JSON_PRESERVE_ORDER | JSON_INDENT(2));
        printf("%s\n", s ? s : "{}");
        free(s);
        json_decref(o);
    } else {
        int n_moe = 0;
        for (int i = 0; i < m.n_layers; i++) n_moe += dpep_model_layer_is_moe(&m, i);
        printf("dpep plan %s\n", cfg.source);
        printf("model: %s (%s): %d layers (%d dense, %d MoE), %d routed + %d shared experts, "
               "top-%d\n", m.arch_name, cfg.model.path, m.n_layers, m.n_layers - n_moe, n_moe,
               m.n_routed, m.n_shared, m.topk);
        print_plan(&p, &m, &cfg);
        if (show_cmp) print_compare(&A, &B);
    }
    dpep_config_free(&cfg);
    return p.fits ? 0 : 2;
}
