/* ops_cpu.c — the engine's CPU table: embedding gather, RMSNorm (the model's
 * reference, runtime/model), residual add, lm_head through BLAS, sampling,
 * and the small buffer ops the step needs (zero, copy, expert histogram). */
#include "dpep_engine.h"

#include <cblas.h>
#include <stdio.h>
#include <string.h>

static void cpu_embed(const float *table, int hidden, const int32_t *ids, int64_t n, float *h)
{
    for (int64_t t = 0; t < n; t++)
        memcpy(h + t * hidden, table + (size_t)ids[t] * (size_t)hidden, sizeof(float) * (size_t)hidden);
}

static void cpu_rmsnorm(const float *x, const float *g, int64_t rows, int n, double eps, float *y)
{
    dpep_rmsnorm_rows(x, n, g, rows, n, eps, y, n);
}

static void cpu_add(float *h, const float *x, int64_t n)
{
    for (int64_t i = 0; i < n; i++) h[i] += x[i];
}

static void cpu_lm_head(const float *x, int64_t rows, const float *w, int vocab, int hidden,
                        float *logits)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, vocab, hidden, 1.0f, x, hidden,
                w, hidden, 0.0f, logits, vocab);
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

static void cpu_expert_count(const int32_t *idx, int64_t n, int n_experts, int64_t *load)
{
    for (int64_t i = 0; i < n; i++) {
        int32_t x = idx[i];
        if (x >= 0 && x < n_experts) load[x]++;
    }
}

static dpep_status cpu_check(char *msg, size_t len)
{
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
    .reserve = NULL,
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
