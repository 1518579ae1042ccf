/* ops_cpu.c — the engine's CPU table: embedding gather, RMSNorm (the model's
 * reference, runtime/model), residual add, lm_head (runtime/linear: weights
 * as stored, streamed once per step at decode), sampling, and the small
 * buffer ops the step needs (zero, copy, expert histogram). */
#include "dpep_engine.h"
#include "dpep_linear.h"

#include <stdio.h>
#include <string.h>

static bool g_cpu_nomem; /* a failed reserve, reported by the next check */

static void cpu_embed(const dpep_mat *table, const int32_t *ids, int64_t n, float *h)
{
    dpep_linear_gather(table, ids, n, h);
}

static void cpu_rmsnorm(const float *x, const float *g, int64_t rows, int n, double eps, float *y)
{
    dpep_rmsnorm_rows(x, n, g, rows, n, eps, y, n);
}

static void cpu_add(float *h, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) h[i] += x[i];
}

static void cpu_lm_head(const float *x, int64_t rows, const dpep_mat *w, float *logits)
{
    dpep_linear_nt((int)rows, x, w->cols, w, 0.0f, logits, w->rows);
}

static void cpu_sample(const float *logits, int n, int vocab, const dpep_sampling *const *sp,
                       uint64_t *const *rng, float *scratch, int32_t *ids, double *logprob)
{
    for (int i = 0; i < n; i++) {
        ids[i] = -1;
        logprob[i] = 0;
        if (!sp[i]) continue;
        const float *row = logits + (size_t)i * (size_t)vocab;
        ids[i] = dpep_sample(row, vocab, sp[i], rng[i], scratch);
        logprob[i] = dpep_logprob(row, vocab, ids[i]);
    }
}

static void cpu_zero(float *x, int64_t n)
{
    if (n > 0) memset(x, 0, sizeof(float) * (size_t)n);
}

static void cpu_copy(float *dst, const float *src, int64_t n)
{
    if (n > 0) memcpy(dst, src, sizeof(float) * (size_t)n);
}

static void cpu_expert_count(const int32_t *idx, int64_t n, const int64_t *lim, int n_experts,
                             int64_t *load)
{
    if (lim && *lim < n) n = *lim;
    for (int64_t i = 0; i < n; i++) {
        int32_t x = idx[i];
        if (x >= 0 && x < n_experts) load[x]++;
    }
}

/* The widening panels of every product the model's step makes (the largest
 * inner size of its matrices), on each OpenMP thread. */
static void cpu_reserve(const dpep_model_config *m, int64_t max_tokens)
{
    (void)max_tokens;
    int64_t k = m->hidden;
    const int64_t in[] = {m->q_lora_rank, m->kv_lora_rank, (int64_t)m->n_heads * m->v_head,
                          m->moe_inter, (int64_t)m->n_shared * m->moe_inter, m->inter};
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++)
        if (in[i] > k) k = in[i];
    if (!dpep_linear_reserve(k, m->kv_lora_rank, 0)) g_cpu_nomem = true;
}

static dpep_status cpu_check(char *msg, size_t len)
{
    if (g_cpu_nomem) {
        g_cpu_nomem = false;
        if (len) snprintf(msg, len, "CPU: out of memory reserving the products' scratch");
        return DPEP_ERR_NOMEM;
    }
    if (len) snprintf(msg, len, "CPU");
    return DPEP_OK;
}

static const dpep_engine_ops cpu_ops = {
    .name = "cpu",
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .add = cpu_add,
    .lm_head = cpu_lm_head,
    .sample = cpu_sample,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .expert_count = cpu_expert_count,
    .check = cpu_check,
    .reserve = cpu_reserve,
};

#ifdef DPEP_HAVE_CUDA
extern const dpep_engine_ops dpep_engine_cuda_ops; /* ops_cuda.cu */
#define ENGINE_CUDA_OPS (&dpep_engine_cuda_ops)
#else
#define ENGINE_CUDA_OPS NULL
#endif

/* One entry per device kind. */
static const dpep_engine_ops *const engine_ops[DPEP_DEVICE_KINDS] = {
    [DPEP_DEVICE_CPU] = &cpu_ops,
    [DPEP_DEVICE_CUDA] = ENGINE_CUDA_OPS,
};

const dpep_engine_ops *dpep_engine_ops_for(dpep_device_kind kind)
{
    if ((int)kind < 0 || kind >= DPEP_DEVICE_KINDS) return NULL;
    return engine_ops[kind];
}
