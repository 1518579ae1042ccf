/* attn_fixture.h — shared by the attention tests: a deterministic random
 * stream (the same on every rank for a seed), random fills, and the small
 * MLA model they run (q_lora on or off). */
#ifndef DPEP_TESTS_ATTN_FIXTURE_H
#define DPEP_TESTS_ATTN_FIXTURE_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "dpep_model.h"

static uint64_t g_rng;
static double urand(void)
{
    g_rng = g_rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(g_rng >> 11) / (double)(1ULL << 53);
}
static void fill(float *x, size_t n, double lo, double hi)
{
    for (size_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * urand());
}

static dpep_model_config test_model(bool q_lora)
{
    dpep_model_config m;
    memset(&m, 0, sizeof m);
    m.hidden = 64;
    m.n_layers = 2;
    m.n_heads = 8;
    m.q_lora_rank = q_lora ? 24 : 0;
    m.kv_lora_rank = 32;
    m.qk_nope = 16;
    m.qk_rope = 8;
    m.v_head = 12; /* != nope on purpose */
    m.rope_theta = 10000;
    m.rms_eps = 1e-6;
    m.yarn = true;
    m.yarn_factor = 40;
    m.yarn_mscale = 1.0;
    m.yarn_mscale_all_dim = 1.0;
    m.yarn_beta_fast = 32;
    m.yarn_beta_slow = 1;
    m.yarn_orig_max_pos = 64; /* small, so that the ramp is partial at rope dim 8 */
    m.max_pos = 1024;
    return m;
}

/* The same small model with V3's latent widths (kv_lora 512, rope 64): the
 * CUDA core's full-width tiles at a small hidden size. */
static inline dpep_model_config test_model_wide(bool q_lora, int n_heads)
{
    dpep_model_config m = test_model(q_lora);
    m.kv_lora_rank = 512;
    m.qk_rope = 64;
    m.n_heads = n_heads;
    return m;
}

#endif
