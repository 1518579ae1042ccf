/* mla_core.c — the CPU decode core's portable table and the choice of table
 * (attn_internal.h, "CPU decode core"). The portable block states the
 * operation in its plainest form: the scores and the weighted sum as two
 * BLAS products, the online softmax as a scalar loop between them — every
 * machine has it, and it is the form to read the vector tables
 * (mla_core_x86.c: fused, no packing) against. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

#include "attn_internal.h"

static void core_block_generic(int hn, int R, int L, float scale, const float *q, const float *kv,
                               int nt, float *S, float *O, float *m, float *l, int first)
{
    if (nt <= 0 || hn <= 0) return;
    /* S = scale q kv^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, hn, nt, R, scale, q, R, kv, R, 0.0f, S,
                nt);
    for (int h = 0; h < hn; h++) {
        float *sr = S + (size_t)h * (size_t)nt, mx = -INFINITY;
        for (int t = 0; t < nt; t++) mx = sr[t] > mx ? sr[t] : mx;
        const float mo = first ? -INFINITY : m[h];
        const float mn = mo > mx ? mo : mx;
        float sum = 0.0f;
        for (int t = 0; t < nt; t++) {
            sr[t] = expf(sr[t] - mn);
            sum += sr[t];
        }
        m[h] = mn;
        if (first) {
            l[h] = sum;
        } else {
            const float alpha = expf(mo - mn);
            l[h] = l[h] * alpha + sum;
            float *o = O + (size_t)h * (size_t)L;
            for (int c = 0; c < L; c++) o[c] *= alpha;
        }
    }
    /* O = (O alpha) + P kv[:, :L] */
    if (L > 0)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, hn, L, nt, 1.0f, S, nt, kv, R,
                    first ? 0.0f : 1.0f, O, L);
}

const dpep_attn_core_cpu dpep_attn_core_generic = {.name = "generic", .block = core_block_generic};

static const dpep_attn_core_cpu *g_forced; /* dpep_attn_cpu_kernels_force */

int dpep_attn_core_cpu_list(const dpep_attn_core_cpu **out, int cap)
{
    int n = 0;
    if (n < cap) out[n++] = &dpep_attn_core_generic;
#if defined(DPEP_ATTN_HAVE_X86)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && n < cap)
        out[n++] = &dpep_attn_core_avx2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma") && n < cap)
        out[n++] = &dpep_attn_core_avx512;
#endif
    return n;
}

/* The table of that name among this CPU's, or NULL. */
static const dpep_attn_core_cpu *by_name(const char *name)
{
    const dpep_attn_core_cpu *all[4];
    const int n = dpep_attn_core_cpu_list(all, 4);
    for (int i = 0; i < n; i++)
        if (strcmp(all[i]->name, name) == 0) return all[i];
    return NULL;
}

/* The choice, made on first use (the first calls may come from several
 * threads): the widest table the CPU runs (the last of the list), or the one
 * DPEP_CPU_ATTN_KERNELS names (*named: then it is not handed blocks by head
 * count). */
static const dpep_attn_core_cpu *choice(bool *named)
{
    static const dpep_attn_core_cpu *best;
    static int from_env; /* 1: named by the environment */
    static int warned;   /* the first thread to choose says it once */
    const dpep_attn_core_cpu *b = __atomic_load_n(&best, __ATOMIC_ACQUIRE);
    if (!b) {
        const dpep_attn_core_cpu *all[4];
        b = all[dpep_attn_core_cpu_list(all, 4) - 1];
        /* DPEP_CPU_ATTN_KERNELS=generic|avx2|avx512: a table by name (tests
         * run the attention suites through each; a name this CPU lacks is
         * ignored with a warning) */
        const char *env = getenv("DPEP_CPU_ATTN_KERNELS");
        const dpep_attn_core_cpu *e = env && *env ? by_name(env) : NULL;
        if (e)
            b = e;
        else if (env && *env && !__atomic_exchange_n(&warned, 1, __ATOMIC_RELAXED))
            DPEP_WARN("DPEP_CPU_ATTN_KERNELS=%s: not a decode core this build and CPU run "
                      "(generic, avx2, avx512 where the CPU has them); using %s",
                      env, b->name);
        __atomic_store_n(&from_env, e != NULL, __ATOMIC_RELAXED);
        __atomic_store_n(&best, b, __ATOMIC_RELEASE);
    }
    *named = __atomic_load_n(&from_env, __ATOMIC_RELAXED) != 0;
    return b;
}

const dpep_attn_core_cpu *dpep_attn_core_cpu_get(void)
{
    const dpep_attn_core_cpu *f = __atomic_load_n(&g_forced, __ATOMIC_ACQUIRE);
    bool named;
    return f ? f : choice(&named);
}

const dpep_attn_core_cpu *dpep_attn_core_cpu_for(int hn)
{
    const dpep_attn_core_cpu *f = __atomic_load_n(&g_forced, __ATOMIC_ACQUIRE);
    if (f) return f;
    bool named;
    const dpep_attn_core_cpu *c = choice(&named);
    if (!named && c->max_heads > 0 && hn > c->max_heads) return &dpep_attn_core_generic;
    return c;
}

bool dpep_attn_cpu_kernels_force(const char *name)
{
    const dpep_attn_core_cpu *c = name ? by_name(name) : NULL;
    if (name && !c) return false;
    __atomic_store_n(&g_forced, c, __ATOMIC_RELEASE);
    return true;
}

const char *dpep_attn_cpu_kernels(int n_heads) { return dpep_attn_core_cpu_for(n_heads)->name; }
