/* model.c — the tensors of a DeepSeek-V2/V3 checkpoint (Hub names), how the
 * layout splits them, and loading one rank's share onto the CPU
 * (converted in place; BF16/F16 matrices kept as stored) or a GPU (streamed
 * through a host staging buffer). */
#include "dpep_model.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

const char *dpep_wkind_name(dpep_wkind k)
{
    static const char *const n[DPEP_W_NKINDS] = {"embeddings", "attention", "dense MLP",
                                                 "routed experts", "shared experts", "norms+router"};
    return (unsigned)k < DPEP_W_NKINDS ? n[k] : "?";
}

/* emit's fp8: how an FP8 checkpoint stores and dpep holds the tensor */
#define NO_F8 0      /* as the checkpoint's other tensors                 */
#define F8 1         /* F8_E4M3 + block scales, kept FP8 on GPUs          */
#define F8_AS_BF16 2 /* F8_E4M3 + block scales, held BF16 on GPUs (kv_b)  */

static void emit(dpep_tensor_fn fn, void *user, dpep_wkind kind, int layer, int expert,
                 char split, int fp8, int64_t rows, int64_t cols, const char *fmt, ...)
    __attribute__((format(printf, 10, 11)));

static void emit(dpep_tensor_fn fn, void *user, dpep_wkind kind, int layer, int expert,
                 char split, int fp8, int64_t rows, int64_t cols, const char *fmt, ...)
{
    dpep_tensor_spec t;
    memset(&t, 0, sizeof t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t.name, sizeof t.name, fmt, ap);
    va_end(ap);
    t.ndim = cols ? 2 : 1;
    t.shape[0] = rows;
    t.shape[1] = cols;
    t.kind = kind;
    t.layer = layer;
    t.expert = expert;
    t.split = split;
    t.fp8 = fp8 != NO_F8 && cols;
    t.fp8_bf16 = fp8 == F8_AS_BF16 && cols;
    fn(&t, user);
}

static void mlp_tensors(dpep_tensor_fn fn, void *user, dpep_wkind kind, int l, int e,
                        const char *prefix, int64_t hidden, int64_t inter)
{
    emit(fn, user, kind, l, e, 'r', F8, inter, hidden, "%s.gate_proj.weight", prefix);
    emit(fn, user, kind, l, e, 'r', F8, inter, hidden, "%s.up_proj.weight", prefix);
    emit(fn, user, kind, l, e, 'c', F8, hidden, inter, "%s.down_proj.weight", prefix);
}

void dpep_model_tensors(const dpep_model_config *m, dpep_tensor_fn fn, void *user)
{
    int64_t h = m->hidden, H = m->n_heads, qk = m->qk_nope + m->qk_rope;
    emit(fn, user, DPEP_W_EMBED, -1, -1, 0, NO_F8, m->vocab, h, "model.embed_tokens.weight");
    for (int l = 0; l < m->n_layers; l++) {
        char p[96];
        snprintf(p, sizeof p, "model.layers.%d", l);
        emit(fn, user, DPEP_W_OTHER, l, -1, 0, NO_F8, h, 0, "%s.input_layernorm.weight", p);
        if (m->q_lora_rank) {
            emit(fn, user, DPEP_W_ATTN, l, -1, 0, F8, m->q_lora_rank, h,
                 "%s.self_attn.q_a_proj.weight", p);
            emit(fn, user, DPEP_W_ATTN, l, -1, 0, NO_F8, m->q_lora_rank, 0,
                 "%s.self_attn.q_a_layernorm.weight", p);
            emit(fn, user, DPEP_W_ATTN, l, -1, 'r', F8, H * qk, m->q_lora_rank,
                 "%s.self_attn.q_b_proj.weight", p);
        } else {
            emit(fn, user, DPEP_W_ATTN, l, -1, 'r', F8, H * qk, h, "%s.self_attn.q_proj.weight", p);
        }
        emit(fn, user, DPEP_W_ATTN, l, -1, 0, F8, dpep_model_kv_row(m), h,
             "%s.self_attn.kv_a_proj_with_mqa.weight", p);
        emit(fn, user, DPEP_W_ATTN, l, -1, 0, NO_F8, m->kv_lora_rank, 0,
             "%s.self_attn.kv_a_layernorm.weight", p);
        emit(fn, user, DPEP_W_ATTN, l, -1, 'r', F8_AS_BF16, H * (m->qk_nope + m->v_head),
             m->kv_lora_rank, "%s.self_attn.kv_b_proj.weight", p);
        emit(fn, user, DPEP_W_ATTN, l, -1, 'c', F8, h, H * m->v_head, "%s.self_attn.o_proj.weight", p);
        emit(fn, user, DPEP_W_OTHER, l, -1, 0, NO_F8, h, 0, "%s.post_attention_layernorm.weight", p);
        char q[128];
        if (!dpep_model_layer_is_moe(m, l)) {
            snprintf(q, sizeof q, "%s.mlp", p);
            mlp_tensors(fn, user, DPEP_W_DENSE, l, -1, q, h, m->inter);
            continue;
        }
        emit(fn, user, DPEP_W_OTHER, l, -1, 0, NO_F8, m->n_routed, h, "%s.mlp.gate.weight", p);
        if (m->topk_method == DPEP_TOPK_NOAUX_TC)
            emit(fn, user, DPEP_W_OTHER, l, -1, 0, NO_F8, m->n_routed, 0,
                 "%s.mlp.gate.e_score_correction_bias", p);
        for (int e = 0; e < m->n_routed; e++) {
            snprintf(q, sizeof q, "%s.mlp.experts.%d", p, e);
            mlp_tensors(fn, user, DPEP_W_ROUTED, l, e, q, h, m->moe_inter);
        }
        if (m->n_shared) {
            snprintf(q, sizeof q, "%s.mlp.shared_experts", p);
            mlp_tensors(fn, user, DPEP_W_SHARED, l, -1, q, h, (int64_t)m->n_shared * m->moe_inter);
        }
    }
    emit(fn, user, DPEP_W_OTHER, -1, -1, 0, NO_F8, h, 0, "model.norm.weight");
    if (!m->tie_word_embeddings)
        emit(fn, user, DPEP_W_EMBED, -1, -1, 0, NO_F8, m->vocab, h, "lm_head.weight");
}

/* ---------------------------------------------------------------------- */
/* what a rank holds                                                      */
/* ---------------------------------------------------------------------- */
/* Rows/cols of tensor t that rank r holds (the TP slice), 0 if none. */
static int64_t rank_elems(const dpep_model_config *m, const dpep_layout *l, const dpep_rank_info *r,
                          const dpep_tensor_spec *t, int64_t *begin, int64_t *len)
{
    int64_t extent = t->split == 'c' ? t->shape[1] : t->shape[0], parts = 1, part = 0;
    if (t->kind == DPEP_W_ROUTED) {
        int per = m->n_routed / l->ep;
        if (t->expert / per != r->ep_rank) return 0;
        parts = l->moe_tp;
        part = r->moe_tp_rank;
    } else if (t->kind == DPEP_W_SHARED) {
        parts = l->moe_tp;
        part = r->moe_tp_rank;
    } else if (t->kind == DPEP_W_DENSE) {
        parts = l->dense_tp;
        part = r->dense_tp_rank;
    } else if (t->kind == DPEP_W_ATTN && t->split) {
        parts = l->attn_tp;
        part = r->attn_tp_rank;
    }
    *begin = t->split ? extent / parts * part : 0;
    *len = t->split ? extent / parts : extent;
    int64_t other = t->ndim == 1 ? 1 : t->split == 'c' ? t->shape[0] : t->shape[1];
    return *len * other;
}

typedef struct bytes_ctx {
    const dpep_model_config *m;
    const dpep_layout *l;
    const dpep_rank_info *r;
    double dtype_bytes;
    double *bytes;
} bytes_ctx;

static void count_rank(const dpep_tensor_spec *t, void *user)
{
    bytes_ctx *c = user;
    int64_t b, n, e = rank_elems(c->m, c->l, c->r, t, &b, &n);
    const bool kept8 = t->fp8 && !t->fp8_bf16 && c->m->fp8;
    double per = kept8                       ? 1.0
                 : t->fp8_bf16 && c->m->fp8 ? (double)dpep_wtype_size(DPEP_WT_BF16)
                                            : c->dtype_bytes;
    double bytes = (double)e * per;
    if (kept8 && e) /* float32 scale per block */
        bytes += sizeof(float) * (double)e / ((double)c->m->fp8_block[0] * c->m->fp8_block[1]);
    c->bytes[t->kind] += bytes;
}

void dpep_model_rank_bytes(const dpep_model_config *m, const dpep_layout *l,
                           const dpep_rank_info *r, double dtype_bytes, double *bytes)
{
    for (int k = 0; k < DPEP_W_NKINDS; k++) bytes[k] = 0;
    bytes_ctx c = {m, l, r, dtype_bytes, bytes};
    dpep_model_tensors(m, count_rank, &c);
}

static void count_params(const dpep_tensor_spec *t, void *user)
{
    int64_t *count = user;
    count[t->kind] += t->shape[0] * (t->ndim == 2 ? t->shape[1] : 1);
}

void dpep_model_param_counts(const dpep_model_config *m, int64_t *count)
{
    for (int k = 0; k < DPEP_W_NKINDS; k++) count[k] = 0;
    dpep_model_tensors(m, count_params, count);
}

/* ---------------------------------------------------------------------- */
/* loading                                                                */
/* ---------------------------------------------------------------------- */
#define ARENA_ALIGN 64
/* Tensors of at least DPEP_PAGE_ALIGN_MIN bytes start at arena offsets that
 * are multiples of DPEP_PAGE (dpep_base.h; the CPU allocator aligns the
 * arena itself so): the CPU products read short weight rows as page streams
 * (runtime/linear), which want a matrix's rows to tile pages from its
 * start. Offsets do not depend on the device, so a staged load lays its
 * arena out as the CPU does. */

typedef struct load_ctx {
    dpep_ckpt *ck;
    const dpep_model_config *m;
    const dpep_layout *l;
    const dpep_rank_info *r;
    dpep_weights *w;
    dpep_dtype policy;   /* model.dtype                                        */
    dpep_device_kind dev_kind;
    float *conv;         /* float32 rows to round (model.dtype bf16/f16)      */
    size_t conv_floats;
    char *base;          /* the arena's first page (placement pass)          */
    char *next;          /* bump pointer into the arena (NULL: sizing pass) */
    size_t bytes;        /* sizing pass: total, aligned                       */
    bool x_sep;          /* routed experts in their own region (expert_mem)  */
    char *xbase, *xnext; /* the same for that region                         */
    size_t xbytes;
    dpep_diag *diag;
    dpep_status st;
    size_t done_bytes, total_bytes, n_done;
    double t0, last_print;
    char *stage;         /* host staging buffer (NULL: convert in place)      */
    size_t stage_bytes;  /* its capacity                                      */
    char dev_name[32];   /* "cuda:0", for messages                            */
} load_ctx;

/* Where tensor t goes in the weights: a matrix (*mat) or a float32 vector or
 * router (*vec); both NULL: this rank does not hold it. */
static void slot(dpep_weights *w, const dpep_tensor_spec *t, dpep_mat **mat, float ***vec)
{
    const char *n = t->name;
    *mat = NULL;
    *vec = NULL;
    if (t->layer < 0) {
        if (strcmp(n, "model.embed_tokens.weight") == 0) *mat = &w->embed;
        else if (strcmp(n, "lm_head.weight") == 0) *mat = &w->lm_head;
        else if (strcmp(n, "model.norm.weight") == 0) *vec = &w->final_norm;
        return;
    }
    dpep_layer_w *L = &w->layer[t->layer];
    const char *leaf = strchr(n + strlen("model.layers."), '.') + 1; /* after "N." */
    dpep_mlp_w *mlp = NULL;
    if (t->kind == DPEP_W_ROUTED) mlp = &L->experts[t->expert - L->expert0];
    else if (t->kind == DPEP_W_SHARED) mlp = &L->shared;
    else if (t->kind == DPEP_W_DENSE) mlp = &L->mlp;
    if (mlp) {
        const char *p = strrchr(n, '.');
        while (p > n && p[-1] != '.') p--; /* "gate_proj.weight" */
        if (strncmp(p, "gate_proj", 9) == 0) *mat = &mlp->gate;
        else if (strncmp(p, "up_proj", 7) == 0) *mat = &mlp->up;
        else *mat = &mlp->down;
        return;
    }
    static const struct {
        const char *leaf;
        size_t off;
        bool mat;
    } k_attn[] = {
        {"input_layernorm.weight", offsetof(dpep_layer_w, input_norm), false},
        {"post_attention_layernorm.weight", offsetof(dpep_layer_w, post_norm), false},
        {"self_attn.q_a_proj.weight", offsetof(dpep_layer_w, q_a), true},
        {"self_attn.q_a_layernorm.weight", offsetof(dpep_layer_w, q_a_norm), false},
        {"self_attn.q_b_proj.weight", offsetof(dpep_layer_w, q_b), true},
        {"self_attn.q_proj.weight", offsetof(dpep_layer_w, q_b), true},
        {"self_attn.kv_a_proj_with_mqa.weight", offsetof(dpep_layer_w, kv_a), true},
        {"self_attn.kv_a_layernorm.weight", offsetof(dpep_layer_w, kv_a_norm), false},
        {"self_attn.kv_b_proj.weight", offsetof(dpep_layer_w, kv_b), true},
        {"self_attn.o_proj.weight", offsetof(dpep_layer_w, o), true},
        {"mlp.gate.weight", offsetof(dpep_layer_w, router), false},
        {"mlp.gate.e_score_correction_bias", offsetof(dpep_layer_w, router_bias), false},
    };
    for (size_t i = 0; i < sizeof k_attn / sizeof k_attn[0]; i++)
        if (strcmp(leaf, k_attn[i].leaf) == 0) {
            if (k_attn[i].mat) *mat = (dpep_mat *)((char *)L + k_attn[i].off);
            else *vec = (float **)((char *)L + k_attn[i].off);
            return;
        }
}

dpep_wtype dpep_weights_matrix_type(dpep_dtype policy, dpep_device_kind dev, dpep_st_dtype stored)
{
    if (policy == DPEP_DTYPE_BF16) return DPEP_WT_BF16;
    if (policy == DPEP_DTYPE_F16) return DPEP_WT_F16;
    if (policy != DPEP_DTYPE_AUTO) return DPEP_WT_F32;
    if (stored == DPEP_ST_BF16) return DPEP_WT_BF16;
    if (stored == DPEP_ST_F16) return DPEP_WT_F16;
    /* FP8 projections: widened to float32 on the CPU (its kernels have no
     * FP8 path); on a GPU kept as stored (E4M3 with 128x128 block scales,
     * where the rank's slice starts on a block: load_one), else BF16 */
    if (dev != DPEP_DEVICE_CPU && stored == DPEP_ST_F8_E4M3) return DPEP_WT_FP8;
    if (dev != DPEP_DEVICE_CPU && stored == DPEP_ST_F8_E5M2) return DPEP_WT_BF16;
    return DPEP_WT_F32;
}

dpep_wtype dpep_kv_cache_type(dpep_kv_dtype opt, dpep_device_kind dev, dpep_wtype weights)
{
    if (opt == DPEP_KV_BF16) return DPEP_WT_BF16;
    if (opt == DPEP_KV_F32) return DPEP_WT_F32;
    return dev != DPEP_DEVICE_CPU && weights != DPEP_WT_F32 ? DPEP_WT_BF16 : DPEP_WT_F32;
}

/* The type tensor t is held in: a matrix as dpep_weights_matrix_type says
 * for its stored dtype (the router is a float32 product, so it widens);
 * vectors float32. A tensor missing from the checkpoint: float32 (the read
 * names it). */
static dpep_wtype held_type(const load_ctx *c, const dpep_tensor_spec *t, int64_t b)
{
    if (t->ndim != 2 || t->kind == DPEP_W_OTHER) return DPEP_WT_F32;
    const dpep_tensor_info *ti = dpep_ckpt_find(c->ck, t->name);
    dpep_wtype ty = dpep_weights_matrix_type(c->policy, c->dev_kind, ti ? ti->dtype : DPEP_ST_F32);
    /* FP8 kept as stored only with DeepSeek's 128 x 128 blocks and a rank
     * slice that starts on a block (its scales are then whole blocks), and
     * not for kv_b (fp8_bf16); otherwise dequantized to BF16 */
    if (ty == DPEP_WT_FP8 && (!t->fp8 || t->fp8_bf16 || c->m->fp8_block[0] != DPEP_FP8_BLOCK ||
                              c->m->fp8_block[1] != DPEP_FP8_BLOCK ||
                              (t->split != 0 && b % DPEP_FP8_BLOCK != 0)))
        ty = DPEP_WT_BF16;
    return ty;
}

/* FP8 matrix rows x cols: its block scales' grid. */
static int64_t fp8_scale_floats(int64_t rows, int64_t cols, int64_t *srows, int64_t *scols)
{
    *srows = (rows + DPEP_FP8_BLOCK - 1) / DPEP_FP8_BLOCK;
    *scols = (cols + DPEP_FP8_BLOCK - 1) / DPEP_FP8_BLOCK;
    return *srows * *scols;
}

/* The block scales of t's rank slice (rows x cols starting at row0, col0,
 * both on a block) into dst on the device, through the staging buffer, a
 * row of scales (or a piece of one) at a time. */
static dpep_status load_fp8_scales(load_ctx *c, const dpep_tensor_spec *t, int64_t row0,
                                   int64_t col0, int64_t rows, int64_t cols, float *dst)
{
    int64_t srows, scols;
    fp8_scale_floats(rows, cols, &srows, &scols);
    const int64_t all_r = (t->shape[0] + DPEP_FP8_BLOCK - 1) / DPEP_FP8_BLOCK,
                  all_c = (t->shape[1] + DPEP_FP8_BLOCK - 1) / DPEP_FP8_BLOCK;
    const int64_t sshape[2] = {all_r, all_c};
    char sname[512];
    snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
    const int64_t per = c->stage_bytes / sizeof(float) > 0 ? (int64_t)(c->stage_bytes / sizeof(float)) : 1;
    const dpep_device *d = &c->w->dev;
    if (srows * scols <= per) {
        /* the whole rectangle through the staging buffer at once */
        DPEP_TRY(dpep_ckpt_read_f32_rect(c->ck, sname, sshape, 2, row0 / DPEP_FP8_BLOCK, srows,
                                         col0 / DPEP_FP8_BLOCK, scols, 0, 0, (float *)c->stage, c->diag));
        dpep_status st = d->ops->to_device(d, dst, c->stage, sizeof(float) * (size_t)(srows * scols));
        if (st != DPEP_OK)
            dpep_diag_add(c->diag, DPEP_DIAG_ERROR, "weights: copying the block scales of %s to %s "
                          "failed (%s)", t->name, c->dev_name, dpep_status_string(st));
        return st;
    }
    for (int64_t i = 0; i < srows; i++)
        for (int64_t j = 0; j < scols; j += per) {
            const int64_t n = scols - j < per ? scols - j : per;
            DPEP_TRY(dpep_ckpt_read_f32_rect(c->ck, sname, sshape, 2, row0 / DPEP_FP8_BLOCK + i, 1,
                                             col0 / DPEP_FP8_BLOCK + j, n, 0, 0, (float *)c->stage,
                                             c->diag));
            dpep_status st = d->ops->to_device(d, dst + i * scols + j, c->stage, sizeof(float) * (size_t)n);
            if (st != DPEP_OK) {
                dpep_diag_add(c->diag, DPEP_DIAG_ERROR, "weights: copying the block scales of %s "
                              "to %s failed (%s)", t->name, c->dev_name, dpep_status_string(st));
                return st;
            }
        }
    return DPEP_OK;
}

/* Rows x cols of t's rank slice [b, b + n) along its split. */
static void slice_dims(const dpep_tensor_spec *t, int64_t n, int64_t *rows, int64_t *cols)
{
    bool one_d = t->ndim == 1;
    *rows = one_d ? 1 : t->split == 'r' ? n : t->shape[0];
    *cols = one_d ? t->shape[0] : t->split == 'c' ? n : t->shape[1];
}

/* Rectangle [row0 + i, +nr) x [col0 + j, +nc) of t into dst, in type `ty`. */
static dpep_status read_piece(load_ctx *c, const dpep_tensor_spec *t, dpep_wtype ty, int64_t row0,
                              int64_t nr, int64_t col0, int64_t nc, int blk_h, int blk_w, void *dst)
{
    if (ty == DPEP_WT_F32)
        return dpep_ckpt_read_f32_rect(c->ck, t->name, t->shape, t->ndim, row0, nr, col0, nc, blk_h,
                                       blk_w, dst, c->diag);
    const dpep_tensor_info *ti = dpep_ckpt_find(c->ck, t->name);
    if (ti && ((ti->dtype == DPEP_ST_BF16 && ty == DPEP_WT_BF16) ||
               (ti->dtype == DPEP_ST_F16 && ty == DPEP_WT_F16) ||
               (ti->dtype == DPEP_ST_F8_E4M3 && ty == DPEP_WT_FP8)))
        return dpep_ckpt_read_rect_stored(c->ck, t->name, t->shape, t->ndim, row0, nr, col0, nc,
                                          dst, c->diag);
    /* rounded from float32 (model.dtype bf16/f16 over another dtype), a
     * bounded run of rows at a time */
    uint16_t *o = dst;
    int64_t per = nc > 0 ? (int64_t)c->conv_floats / nc : 0;
    if (per < 1) {
        /* a row longer than the buffer: in pieces */
        for (int64_t i = 0; i < nr; i++)
            for (int64_t j = 0; j < nc; j += (int64_t)c->conv_floats) {
                int64_t n = nc - j < (int64_t)c->conv_floats ? nc - j : (int64_t)c->conv_floats;
                DPEP_TRY(dpep_ckpt_read_f32_rect(c->ck, t->name, t->shape, t->ndim, row0 + i, 1,
                                                 col0 + j, n, blk_h, blk_w, c->conv, c->diag));
                for (int64_t k = 0; k < n; k++)
                    o[i * nc + j + k] = ty == DPEP_WT_BF16 ? dpep_f32_to_bf16(c->conv[k])
                                                           : dpep_f32_to_f16(c->conv[k]);
            }
        return DPEP_OK;
    }
    for (int64_t i = 0; i < nr; i += per) {
        int64_t n = nr - i < per ? nr - i : per;
        DPEP_TRY(dpep_ckpt_read_f32_rect(c->ck, t->name, t->shape, t->ndim, row0 + i, n, col0, nc,
                                         blk_h, blk_w, c->conv, c->diag));
        for (int64_t k = 0; k < n * nc; k++)
            o[i * nc + k] = ty == DPEP_WT_BF16 ? dpep_f32_to_bf16(c->conv[k])
                                               : dpep_f32_to_f16(c->conv[k]);
    }
    return DPEP_OK;
}

/* Rank slice [b, b + n) of tensor t (along its split) into dst on the
 * device, through the staging buffer: whole rows per chunk, or pieces of one
 * row when a row is longer than the buffer. dst holds the slice as
 * rows x cols, row-major, exactly as the direct path writes it. */
static dpep_status stream_one(load_ctx *c, const dpep_tensor_spec *t, dpep_wtype ty, int64_t b,
                              int64_t n, int blk_h, int blk_w, char *dst)
{
    int64_t row0 = t->split == 'r' ? b : 0, col0 = t->split == 'c' ? b : 0, rows, cols;
    slice_dims(t, n, &rows, &cols);
    const size_t es = dpep_wtype_size(ty);
    int64_t cap = (int64_t)(c->stage_bytes / es);
    const dpep_device *d = &c->w->dev;
    int64_t per = cols <= cap ? cap / cols : 1;      /* rows per chunk    */
    int64_t piece = cols <= cap ? cols : cap;        /* cols per chunk    */
    for (int64_t i = 0; i < rows; i += per) {
        int64_t nr = rows - i < per ? rows - i : per;
        for (int64_t j = 0; j < cols; j += piece) {
            int64_t nc = cols - j < piece ? cols - j : piece;
            DPEP_TRY(read_piece(c, t, ty, row0 + i, nr, col0 + j, nc, blk_h, blk_w, c->stage));
            /* nr > 1 only when whole rows fit (nc == cols): one contiguous span */
            size_t bytes = es * (size_t)(nr * nc);
            dpep_status st =
                d->ops->to_device(d, dst + (size_t)(i * cols + j) * es, c->stage, bytes);
            if (st != DPEP_OK) {
                dpep_diag_add(c->diag, DPEP_DIAG_ERROR, "weights: copying %zu bytes of %s to %s "
                              "failed (%s)", bytes, t->name, c->dev_name, dpep_status_string(st));
                return st;
            }
        }
    }
    return DPEP_OK;
}

static void load_one(const dpep_tensor_spec *t, void *user)
{
    load_ctx *c = user;
    if (c->st != DPEP_OK) return;
    int64_t b, n, e = rank_elems(c->m, c->l, c->r, t, &b, &n);
    if (e == 0) return;
    const dpep_wtype ty = held_type(c, t, b);
    size_t bytes = (size_t)e * dpep_wtype_size(ty);
    size_t span = (bytes + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    int64_t srows = 0, scols = 0;
    if (ty == DPEP_WT_FP8) {
        /* its block scales right after it, float32 */
        int64_t rows0, cols0;
        slice_dims(t, n, &rows0, &cols0);
        const size_t sb = sizeof(float) * (size_t)fp8_scale_floats(rows0, cols0, &srows, &scols);
        bytes += sb;
        span += (sb + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
    }
    /* both passes pad from the same offset, so the sizes agree; routed
     * experts in expert_mem have a bump pointer of their own */
    const bool rx = c->x_sep && t->kind == DPEP_W_ROUTED;
    char **next = rx ? &c->xnext : &c->next, *base = rx ? c->xbase : c->base;
    const size_t al = bytes >= DPEP_PAGE_ALIGN_MIN ? DPEP_PAGE : ARENA_ALIGN;
    const size_t off = *next ? (size_t)(*next - base) : rx ? c->xbytes : c->bytes;
    const size_t pad = (al - off % al) % al;
    if (!*next) {
        *(rx ? &c->xbytes : &c->bytes) += pad + span;
        c->total_bytes += bytes;
        return;
    }
    dpep_mat *mat;
    float **vec;
    slot(c->w, t, &mat, &vec);
    if (!mat && !vec) {
        c->st = DPEP_ERR_INTERNAL;
        return;
    }
    char *dst = *next + pad;
    *next = dst + span;
    if (mat) {
        int64_t rows, cols;
        slice_dims(t, n, &rows, &cols);
        *mat = dpep_mat_make(dst, ty, (int)rows, (int)cols);
        if (ty == DPEP_WT_FP8) {
            const size_t mb = ((size_t)rows * (size_t)cols + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
            mat->scale = (const float *)(dst + mb);
            mat->sld = scols;
            mat->sr0 = 0;
        }
        /* the summary's type: FP8 when any matrix is kept FP8 */
        if (ty != DPEP_WT_F32 && c->w->mat_type != DPEP_WT_FP8) c->w->mat_type = ty;
    } else {
        *vec = (float *)dst;
    }
    c->w->bytes[t->kind] += bytes;
    int blk_h = c->m->fp8 ? c->m->fp8_block[0] : 0, blk_w = c->m->fp8 ? c->m->fp8_block[1] : 0;
    if (c->stage) {
        c->st = stream_one(c, t, ty, b, n, blk_h, blk_w, dst);
        if (c->st == DPEP_OK && ty == DPEP_WT_FP8)
            c->st = load_fp8_scales(c, t, t->split == 'r' ? b : 0, t->split == 'c' ? b : 0,
                                    mat->rows, mat->cols, (float *)mat->scale);
    } else if (ty == DPEP_WT_FP8) {
        /* (a host-addressable device never holds FP8: GPUs are staged) */
        c->st = DPEP_ERR_INTERNAL;
    } else if (ty == DPEP_WT_F32) {
        c->st = dpep_ckpt_read_f32(c->ck, t->name, t->shape, t->ndim,
                                   t->split == 'r' ? 0 : t->split == 'c' ? 1 : -1, b, n, blk_h,
                                   blk_w, (float *)dst, c->diag);
    } else {
        int64_t rows, cols;
        slice_dims(t, n, &rows, &cols);
        c->st = read_piece(c, t, ty, t->split == 'r' ? b : 0, rows, t->split == 'c' ? b : 0, cols,
                           blk_h, blk_w, dst);
    }
    c->done_bytes += bytes;
    c->n_done++;
    double now = dpep_clock_s();
    if (now - c->last_print > 2.0 && c->r->rank == 0) {
        c->last_print = now;
        DPEP_INFO("loading weights: %zu tensors, %.1f / %.1f MB (%.0f MB/s)", c->n_done,
                  c->done_bytes / 1e6, c->total_bytes / 1e6,
                  c->done_bytes / 1e6 / (now - c->t0 + 1e-9));
    }
}

dpep_status dpep_weights_load(dpep_ckpt *ck, const dpep_model_config *m, const dpep_layout *l,
                              const dpep_rank_info *r, dpep_weights *out, dpep_diag *diag)
{
    return dpep_weights_load_with(ck, m, l, r, NULL, NULL, out, diag);
}

/* A load's context before its passes: zeroed but for these (st DPEP_OK). */
static load_ctx load_ctx_make(dpep_ckpt *ck, const dpep_model_config *m, const dpep_layout *l,
                              const dpep_rank_info *r, dpep_dtype policy, dpep_device_kind kind)
{
    return (load_ctx){.ck = ck, .m = m, .l = l, .r = r, .policy = policy, .dev_kind = kind,
                      .st = DPEP_OK};
}

dpep_status dpep_weights_load_with(dpep_ckpt *ck, const dpep_model_config *m, const dpep_layout *l,
                                   const dpep_rank_info *r, const dpep_device *device,
                                   const dpep_weights_opts *o, dpep_weights *out, dpep_diag *diag)
{
    dpep_weights_opts opts;
    memset(&opts, 0, sizeof opts);
    if (o) opts = *o;
    bool staged = opts.staged;
    DPEP_TRY(dpep_model_check_layout(m, l, dpep_ckpt_file_name(ck, 0), diag));
    dpep_weights w;
    memset(&w, 0, sizeof w);
    if (device)
        w.dev = *device;
    else
        DPEP_TRY(dpep_device_get(DPEP_DEVICE_CPU, -1, &w.dev));
    if (w.dev.kind != DPEP_DEVICE_CPU) staged = true; /* not host-addressable */
    char dev_name[32];
    if (w.dev.kind == DPEP_DEVICE_CPU) snprintf(dev_name, sizeof dev_name, "%s", w.dev.ops->name);
    else snprintf(dev_name, sizeof dev_name, "%s:%d", w.dev.ops->name, w.dev.ordinal);
    w.cfg = *m;
    w.mat_type = DPEP_WT_F32;
    w.layer = calloc((size_t)m->n_layers, sizeof *w.layer);
    if (!w.layer) return DPEP_ERR_NOMEM;
    int per = m->n_routed ? m->n_routed / l->ep : 0;
    for (int i = 0; i < m->n_layers; i++) {
        dpep_layer_w *L = &w.layer[i];
        L->n_heads = m->n_heads / l->attn_tp;
        L->head0 = r->attn_tp_rank * L->n_heads;
        L->moe = dpep_model_layer_is_moe(m, i);
        L->mlp.inter = m->inter / l->dense_tp;
        if (L->moe) {
            L->expert0 = r->ep_rank * per;
            L->n_experts = per;
            L->experts = calloc((size_t)per, sizeof *L->experts);
            if (per && !L->experts) {
                dpep_weights_free(&w);
                return DPEP_ERR_NOMEM;
            }
            for (int e = 0; e < per; e++) L->experts[e].inter = m->moe_inter / l->moe_tp;
            L->shared.inter = m->n_shared * m->moe_inter / l->moe_tp;
        }
    }
    load_ctx c = load_ctx_make(ck, m, l, r, opts.dtype, w.dev.kind);
    c.w = &w;
    /* rounding float32 (or FP8 dequantized) rows to BF16/F16 on the host:
     * model.dtype bf16/f16, or an FP8 checkpoint on a GPU */
    const bool rounds = opts.dtype == DPEP_DTYPE_BF16 || opts.dtype == DPEP_DTYPE_F16 ||
                        (m->fp8 && w.dev.kind != DPEP_DEVICE_CPU);
    float *conv = NULL;
    if (rounds) {
        c.conv_floats = (size_t)1 << 20; /* 4 MB of rows being rounded */
        conv = malloc(c.conv_floats * sizeof(float));
        if (!conv) {
            dpep_weights_free(&w);
            return DPEP_ERR_NOMEM;
        }
        c.conv = conv;
    }
    c.diag = diag;
    c.t0 = c.last_print = dpep_clock_s();
    snprintf(c.dev_name, sizeof c.dev_name, "%s", dev_name);
    if (opts.expert_mem) {
        if (w.dev.kind != DPEP_DEVICE_CPU || staged ||
            (uintptr_t)opts.expert_mem % DPEP_PAGE != 0) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "weights: routed experts in caller memory need "
                          "the CPU, no staging and %d-byte alignment", DPEP_PAGE);
            dpep_weights_free(&w);
            free(conv);
            return DPEP_ERR_INVALID;
        }
        c.x_sep = true;
    }
    dpep_model_tensors(m, load_one, &c); /* sizing pass */
    if (opts.expert_mem && c.xbytes > opts.expert_mem_bytes) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "weights: the routed experts take %zu bytes, the "
                      "memory given for them %zu", c.xbytes, opts.expert_mem_bytes);
        dpep_weights_free(&w);
        free(conv);
        return DPEP_ERR_INVALID;
    }
    w.arena_bytes = c.bytes;
    if (opts.expert_mem) {
        w.expert_mem = opts.expert_mem;
        w.expert_bytes = c.xbytes;
        c.xbase = c.xnext = opts.expert_mem;
    }
    void *arena = NULL;
    dpep_status ast = dpep_device_alloc(&w.dev, w.arena_bytes ? w.arena_bytes : 1, &arena);
    w.arena = arena;
    if (ast != DPEP_OK) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "weights: cannot allocate %.1f MB on %s for this "
                      "rank's share (%s)", w.arena_bytes / 1e6, dev_name, dpep_status_string(ast));
        /* the CPU's failure is memory; a GPU's may be no usable device */
        dpep_status ret = w.dev.kind == DPEP_DEVICE_CPU ? DPEP_ERR_NOMEM : ast;
        dpep_weights_free(&w);
        free(conv);
        return ret;
    }
    /* every decode step streams the arena whole: huge pages (CPU) */
    dpep_device_advise_streamed(&w.dev, arena, w.arena_bytes);
    if ((uintptr_t)arena % ARENA_ALIGN) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "weights: the allocator of %s returned memory not "
                      "aligned to %d bytes", dev_name, ARENA_ALIGN);
        dpep_weights_free(&w);
        free(conv);
        return DPEP_ERR_INTERNAL;
    }
    char *stage = NULL;
    if (staged) {
        /* no bigger than the arena: a small model needs no 32 MB buffer */
        size_t sb = opts.staging_bytes ? opts.staging_bytes : DPEP_WEIGHTS_STAGING_BYTES;
        if (sb < 64) sb = 64;
        if (sb > w.arena_bytes && w.arena_bytes >= 64) sb = w.arena_bytes;
        c.stage_bytes = sb;
        stage = malloc(sb);
        if (!stage) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "weights: cannot allocate the %.1f MB host "
                          "staging buffer for %s", sb / 1e6, dev_name);
            dpep_weights_free(&w);
            free(conv);
            return DPEP_ERR_NOMEM;
        }
        c.stage = stage;
    }
    c.base = c.next = w.arena;
    dpep_model_tensors(m, load_one, &c);
    free(stage);
    free(conv);
    if (c.st != DPEP_OK) {
        dpep_weights_free(&w);
        return c.st;
    }
    if (m->tie_word_embeddings) w.lm_head = w.embed;
    if (r->rank == 0 && c.total_bytes > (64u << 20))
        DPEP_INFO("loaded %zu tensors, %.1f MB in %.1f s onto %s (matrices %s)", c.n_done,
                  c.done_bytes / 1e6, dpep_clock_s() - c.t0, dev_name, dpep_wtype_name(w.mat_type));
    *out = w;
    return DPEP_OK;
}

size_t dpep_weights_expert_bytes(dpep_ckpt *ck, const dpep_model_config *m, const dpep_layout *l,
                                 const dpep_rank_info *r, const dpep_weights_opts *o)
{
    load_ctx c = load_ctx_make(ck, m, l, r, o ? o->dtype : DPEP_DTYPE_AUTO, DPEP_DEVICE_CPU);
    c.x_sep = true;
    dpep_model_tensors(m, load_one, &c); /* the sizing pass alone */
    return c.xbytes;
}

dpep_status dpep_weights_load_on(dpep_ckpt *ck, const dpep_model_config *m, const dpep_layout *l,
                                 const dpep_rank_info *r, const dpep_device *device,
                                 dpep_weights *out, dpep_diag *diag)
{
    return dpep_weights_load_with(ck, m, l, r, device, NULL, out, diag);
}

dpep_status dpep_weights_load_staged(dpep_ckpt *ck, const dpep_model_config *m,
                                     const dpep_layout *l, const dpep_rank_info *r,
                                     const dpep_device *device, size_t staging_bytes,
                                     dpep_weights *out, dpep_diag *diag)
{
    dpep_weights_opts o = {.dtype = DPEP_DTYPE_AUTO, .staged = true, .staging_bytes = staging_bytes};
    return dpep_weights_load_with(ck, m, l, r, device, &o, out, diag);
}

void dpep_weights_free(dpep_weights *w)
{
    if (w->layer)
        for (int i = 0; i < w->cfg.n_layers; i++) free(w->layer[i].experts);
    free(w->layer);
    if (w->arena) dpep_device_free(&w->dev, w->arena);
    memset(w, 0, sizeof *w);
}
