/* fuzz_model_config.c — libFuzzer target for config.json (the model's
 * config): any input ends in DPEP_OK or in a DPEP_ERR_INVALID whose every
 * error names the file, never a crash, a division by zero, a leak or
 * unbounded work. A config that loads must keep the loader's promises
 * (dpep_model.h): groups divide the experts, no tensor beyond INT_MAX
 * elements, at most 2^16 routed experts in all; its tensor list is walked,
 * and it survives dpep_model_config_to_json and back unchanged. */
#include "dpep_model.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define NAME "fuzz/config.json"

static void check(bool ok)
{
    if (!ok) abort();
}

typedef struct walk {
    int64_t n;
} walk;

static void on_tensor(const dpep_tensor_spec *t, void *user)
{
    walk *w = user;
    w->n++;
    check(t->ndim >= 1 && t->ndim <= 2 && t->shape[0] >= 1);
    int64_t elems = t->ndim == 2 ? t->shape[0] * t->shape[1] : t->shape[0];
    check(elems >= 1 && elems <= INT_MAX);
}

static void check_loaded(const dpep_model_config *m)
{
    check(m->hidden >= 1 && m->n_layers >= 1 && m->n_heads >= 1 && m->vocab >= 1);
    check(m->kv_lora_rank >= 1 && m->qk_rope >= 2 && m->qk_rope % 2 == 0 && m->v_head >= 1);
    check(m->q_lora_rank >= 0 && m->qk_nope >= 0 && m->inter >= 1);
    check(m->first_k_dense >= 0 && m->first_k_dense <= m->n_layers && m->moe_layer_freq >= 1);
    check(m->n_group >= 1 && m->topk_group >= 1 && m->n_shared >= 0);
    if (m->n_routed > 0) {
        check(m->topk >= 1 && m->topk <= m->n_routed && m->moe_inter >= 1);
        check(m->n_routed % m->n_group == 0 && m->topk_group <= m->n_group);
        check((int64_t)m->n_routed * m->n_layers <= (1 << 16));
    }
    check(m->rms_eps > 0 && m->rope_theta > 1 && m->routed_scaling_factor > 0);
    if (m->yarn)
        check(m->yarn_factor >= 1 && m->yarn_beta_slow > 0 && m->yarn_beta_fast >= m->yarn_beta_slow &&
              m->yarn_mscale >= 0 && m->yarn_mscale_all_dim >= 0 && m->yarn_orig_max_pos >= 1);
    check(m->n_eos >= 0 && m->n_eos <= DPEP_MAX_EOS);
    for (int i = 0; i < m->n_eos; i++) check(m->eos[i] >= 0 && m->eos[i] < m->vocab);
    if (m->fp8) check(m->fp8_block[0] >= 1 && m->fp8_block[1] >= 1);
    /* layers and MoE layers as everyone counts them (no division by zero) */
    int n_moe = 0;
    for (int l = 0; l < m->n_layers; l++) n_moe += dpep_model_layer_is_moe(m, l);
    check(n_moe <= m->n_layers);
    /* the tensor list (walked twice): on a copy small enough that one input
     * stays well under the 2 s timeout under ASan on a busy machine; every
     * MoE layer and every expert has the same shapes, so a few show them */
    check((int64_t)m->n_routed * m->hidden <= INT_MAX); /* the router, not walked in full below */
    dpep_model_config few = *m;
    if (few.n_routed > 1024) few.n_routed = 1024;
    int64_t per_layer = (int64_t)few.n_routed * 3 + 16;
    if ((int64_t)few.n_layers * per_layer > 8000) few.n_layers = (int)(8000 / per_layer) + 1;
    if (few.n_layers < few.first_k_dense + 1) few.first_k_dense = few.n_layers - 1;
    walk w = {0};
    dpep_model_tensors(&few, on_tensor, &w);
    check(w.n >= 3);
    int64_t count[DPEP_W_NKINDS];
    dpep_model_param_counts(&few, count);
    for (int k = 0; k < DPEP_W_NKINDS; k++) check(count[k] >= 0);
}

/* parse(to_json(m)) == m, as far as to_json writes it (it writes no
 * quantization_config and one eos id). */
static void round_trip(const dpep_model_config *m)
{
    /* to_json writes eos_token_id 1 for a config without any: outside a
     * vocabulary of one token (model_gen.c's business, not the parser's) */
    if (m->n_eos == 0 && m->vocab <= 1) return;
    char *a = dpep_model_config_to_json(m);
    check(a != NULL);
    dpep_model_config back;
    dpep_diag d;
    dpep_diag_init(&d);
    check(dpep_model_config_parse(a, strlen(a), NAME, &back, &d) == DPEP_OK);
    char *b = dpep_model_config_to_json(&back);
    check(b != NULL && strcmp(a, b) == 0);
    free(a);
    free(b);
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    dpep_model_config m;
    memset(&m, 0x5A, sizeof m);
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_status st = dpep_model_config_parse((const char *)data, size, NAME, &m, &diag);
    if (st == DPEP_ERR_INVALID) {
        check(diag.n_errors > 0);
        for (int i = 0; i < diag.n; i++) check(strncmp(diag.item[i].msg, NAME ":", strlen(NAME) + 1) == 0);
        for (size_t i = 0; i < sizeof m; i++) check(((unsigned char *)&m)[i] == 0x5A); /* untouched */
        return 0;
    }
    check(st == DPEP_OK && diag.n_errors == 0);
    check_loaded(&m);
    round_trip(&m);
    return 0;
}
