/* dpep_golden.h — the HF transformers goldens of tests/reference, for tests:
 * golden.safetensors opened with dpep's own reader, float tensors as float32,
 * I64 tensors (token ids, expert ids) as int64. */
#ifndef DPEP_GOLDEN_H
#define DPEP_GOLDEN_H

#include "dpep_model.h"

#include <stdlib.h>

typedef struct dpep_golden {
    dpep_ckpt *ck;          /* golden.safetensors                       */
    char model_dir[1024];   /* tests/reference/MODEL: the HF checkpoint */
} dpep_golden;

/* Opens SRC/tests/reference/MODEL/golden.safetensors. */
static inline bool dpep_golden_open(dpep_golden *g, const char *src, const char *model)
{
    snprintf(g->model_dir, sizeof g->model_dir, "%s/tests/reference/%s", src, model);
    char path[1100];
    snprintf(path, sizeof path, "%s/golden.safetensors", g->model_dir);
    dpep_diag d;
    dpep_diag_init(&d);
    g->ck = NULL;
    if (dpep_ckpt_open_file(path, &g->ck, &d) != DPEP_OK) {
        dpep_diag_print(&d, stdout);
        return false;
    }
    return true;
}

static inline void dpep_golden_close(dpep_golden *g)
{
    dpep_ckpt_close(g->ck);
    g->ck = NULL;
}

/* The goldens plus the model they were made from: its config.json and its
 * checkpoint (owned by the caller: dpep_ckpt_close). Prints why on failure. */
static inline bool dpep_golden_open_model(dpep_golden *g, const char *src, const char *model,
                                          dpep_model_config *m, dpep_ckpt **ck)
{
    *ck = NULL;
    if (!dpep_golden_open(g, src, model)) return false;
    dpep_diag d;
    dpep_diag_init(&d);
    if (dpep_model_config_load(g->model_dir, m, &d) != DPEP_OK ||
        dpep_ckpt_open(g->model_dir, ck, &d) != DPEP_OK) {
        dpep_diag_print(&d, stdout);
        dpep_golden_close(g);
        return false;
    }
    return true;
}


/* A float tensor as float32 [rows, cols] (1-D: 1 x n); malloc'd, NULL if absent. */
static inline float *dpep_golden_f32(const dpep_golden *g, const char *name, int64_t *rows,
                                     int64_t *cols)
{
    const dpep_tensor_info *t = dpep_ckpt_find(g->ck, name);
    if (!t || t->ndim < 1 || t->ndim > 2) return NULL;
    *rows = t->ndim == 2 ? t->shape[0] : 1;
    *cols = t->ndim == 2 ? t->shape[1] : t->shape[0];
    float *x = malloc(sizeof(float) * (size_t)(*rows * *cols));
    dpep_diag d;
    dpep_diag_init(&d);
    if (!x || dpep_ckpt_read_f32(g->ck, name, t->shape, t->ndim, -1, 0, 0, 0, 0, x, &d) != DPEP_OK) {
        dpep_diag_print(&d, stdout);
        free(x);
        return NULL;
    }
    return x;
}

/* An I64 tensor, all its n elements; malloc'd, NULL if absent or not I64. */
static inline int64_t *dpep_golden_i64(const dpep_golden *g, const char *name, int64_t *n)
{
    const dpep_tensor_info *t = dpep_ckpt_find(g->ck, name);
    if (!t || t->dtype != DPEP_ST_I64) return NULL;
    *n = 1;
    for (int k = 0; k < t->ndim; k++) *n *= t->shape[k];
    int64_t *v = malloc(sizeof(int64_t) * (size_t)(*n > 0 ? *n : 1));
    dpep_diag d;
    dpep_diag_init(&d);
    if (!v || dpep_ckpt_read_raw(g->ck, name, v, sizeof(int64_t) * (size_t)*n, &d) != DPEP_OK) {
        free(v);
        return NULL;
    }
    return v;
}

#endif
