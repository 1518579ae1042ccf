/* dpep_model.h — public header of runtime/model: Hugging Face checkpoints
 * (safetensors read in place), config.json of DeepSeek V2/V3 models, the
 * tensor list, one rank's weights and the test-model generator, plus the
 * model's own definitions every backend shares (KV bytes per token, RMSNorm
 * reference). comm/, attn/ and moe/ may include it (and, through it,
 * runtime/config for the layout); it includes neither MPI nor hwloc. */
#ifndef DPEP_MODEL_H
#define DPEP_MODEL_H

#include "dpep_config.h"
#include "dpep_linear.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Checkpoints (model/safetensors.c): Hugging Face safetensors, read in    */
/* place through mmap; a rank converts only the tensors (and slices) it      */
/* needs. Every malformed file is a DPEP_ERR_INVALID naming file and tensor. */
/* ------------------------------------------------------------------------ */
typedef enum dpep_st_dtype {
    DPEP_ST_F32 = 0, DPEP_ST_F16, DPEP_ST_BF16, DPEP_ST_F8_E4M3, DPEP_ST_F8_E5M2,
    DPEP_ST_F64, DPEP_ST_I64, DPEP_ST_I32, DPEP_ST_I16, DPEP_ST_I8, DPEP_ST_U8, DPEP_ST_BOOL,
    DPEP_ST_NDTYPES
} dpep_st_dtype;

#define DPEP_ST_MAX_DIMS 8
#define DPEP_ST_MAX_HEADER (100u << 20) /* as the safetensors reference library */

typedef struct dpep_tensor_info {
    const char *name;        /* owned by the file/checkpoint                */
    dpep_st_dtype dtype;
    int ndim;
    int64_t shape[DPEP_ST_MAX_DIMS];
    uint64_t begin, end;     /* byte offsets in the data section            */
    int file;                /* shard index inside a checkpoint             */
} dpep_tensor_info;

/* One parsed header. Tensors are sorted by name. */
typedef struct dpep_st_header {
    int n;
    dpep_tensor_info *tensor;   /* owned */
    char *names;                /* owned: the name strings                   */
    char format[32];            /* __metadata__.format ("pt"), "" if absent  */
} dpep_st_header;

/* Parses a safetensors header (the JSON after the 8-byte length) for a file
 * whose data section holds `data_len` bytes. Pure: used by the fuzz target. */
dpep_status dpep_st_parse_header(const char *json, size_t len, uint64_t data_len,
                                 const char *fname, dpep_st_header *out, dpep_diag *diag);
void dpep_st_header_free(dpep_st_header *h);
size_t dpep_st_dtype_size(dpep_st_dtype t);
const char *dpep_st_dtype_name(dpep_st_dtype t);

typedef struct dpep_ckpt dpep_ckpt; /* opaque: shards, maps, tensor index */

/* Opens the safetensors of a Hugging Face directory: through
 * model.safetensors.index.json when present, else model.safetensors, else
 * every *.safetensors in it.
 * Maps the shards read-only; touches no tensor data. */
dpep_status dpep_ckpt_open(const char *dir, dpep_ckpt **out, dpep_diag *diag);
/* Opens one safetensors file (e.g. a file of golden tensors). */
dpep_status dpep_ckpt_open_file(const char *path, dpep_ckpt **out, dpep_diag *diag);
void dpep_ckpt_close(dpep_ckpt *c);
/* Copies the stored bytes of a tensor of any dtype (e.g. I64 token ids);
 * DPEP_ERR_INVALID when absent or larger than cap. */
dpep_status dpep_ckpt_read_raw(const dpep_ckpt *c, const char *name, void *dst, size_t cap,
                               dpep_diag *diag);
/* NULL when absent. The pointer lives as long as the checkpoint. */
const dpep_tensor_info *dpep_ckpt_find(const dpep_ckpt *c, const char *name);
int dpep_ckpt_count(const dpep_ckpt *c);
const dpep_tensor_info *dpep_ckpt_tensor(const dpep_ckpt *c, int i);
const char *dpep_ckpt_file_name(const dpep_ckpt *c, int file);

/* Reads tensor `name` as float32 into dst, checking its shape against
 * `shape[ndim]` (the full tensor's). Optionally a slice along dimension
 * `slice_dim` (0 or 1): rows/cols [slice_begin, slice_begin + slice_len); pass
 * slice_dim = -1 for the whole tensor. F8_E4M3 tensors are dequantized with
 * their NAME_scale_inv block scales (block bh × bw, e.g. 128 × 128). The pages
 * read are released from the process afterwards (MADV_DONTNEED), so a rank's
 * resident memory holds only what it converted. */
dpep_status dpep_ckpt_read_f32(dpep_ckpt *c, const char *name, const int64_t *shape, int ndim,
                               int slice_dim, int64_t slice_begin, int64_t slice_len,
                               int block_h, int block_w, float *dst, dpep_diag *diag);
/* The same on a rectangle: rows [row0, row0 + nrows) x cols [col0, col0 +
 * ncols) of the tensor viewed as rows x cols (a 1-D tensor is one row), into
 * dst as nrows x ncols, row-major. Same checks and the same per-element
 * conversion (FP8: only the block scales the rectangle touches are read), so
 * a tensor read in rectangles is bit-identical to it read at once; this is
 * how weights stream through a bounded staging buffer. Tensors of at most 2
 * dims; a rectangle outside the tensor is DPEP_ERR_INTERNAL. */
dpep_status dpep_ckpt_read_f32_rect(dpep_ckpt *c, const char *name, const int64_t *shape, int ndim,
                                    int64_t row0, int64_t nrows, int64_t col0, int64_t ncols,
                                    int block_h, int block_w, float *dst, dpep_diag *diag);

/* The same rectangle of a BF16, F16 or F8_E4M3 tensor copied as stored (2
 * or 1 bytes an element, nrows x ncols into dst, no conversion; FP8's block
 * scales are not read): how these matrices are kept in their dtype. Another dtype is DPEP_ERR_INTERNAL (the caller checks
 * the dtype first). Pages released as dpep_ckpt_read_f32 does. */
dpep_status dpep_ckpt_read_rect_stored(dpep_ckpt *c, const char *name, const int64_t *shape,
                                       int ndim, int64_t row0, int64_t nrows, int64_t col0,
                                       int64_t ncols, void *dst, dpep_diag *diag);

/* ------------------------------------------------------------------------ */
/* Model config (model/model_config.c): a Hugging Face config.json of a    */
/* DeepseekV3ForCausalLM / DeepseekV2ForCausalLM model (REFERENCE.md §1).    */
/* ------------------------------------------------------------------------ */
typedef enum dpep_arch { DPEP_ARCH_DEEPSEEK_V3 = 0, DPEP_ARCH_DEEPSEEK_V2 } dpep_arch;
typedef enum dpep_scoring { DPEP_SCORE_SIGMOID = 0, DPEP_SCORE_SOFTMAX } dpep_scoring;
typedef enum dpep_topk_method {
    DPEP_TOPK_NOAUX_TC = 0, DPEP_TOPK_GREEDY, DPEP_TOPK_GROUP_LIMITED_GREEDY
} dpep_topk_method;

#define DPEP_MAX_EOS 8

typedef struct dpep_model_config {
    dpep_arch arch;
    char arch_name[64];         /* "DeepseekV3ForCausalLM"                    */
    int hidden, n_layers, n_heads, vocab;
    int q_lora_rank;            /* 0: plain q_proj (V2-Lite)                  */
    int kv_lora_rank, qk_nope, qk_rope, v_head;
    int n_routed, n_shared, topk, n_group, topk_group;
    double routed_scaling_factor;
    bool norm_topk_prob;
    dpep_scoring scoring;
    dpep_topk_method topk_method;
    int first_k_dense, moe_layer_freq, moe_inter, inter;
    double rope_theta, rms_eps;
    bool yarn;                  /* rope_scaling / rope_parameters type yarn   */
    double yarn_factor, yarn_mscale, yarn_mscale_all_dim, yarn_beta_fast, yarn_beta_slow; /* mscale, mscale_all_dim: 0 when absent */
    int yarn_orig_max_pos;
    bool rope_interleave;       /* transformers' V3 flag (default true)       */
    int max_pos;
    bool tie_word_embeddings;
    bool fp8;                   /* quantization_config fp8 e4m3, block scales */
    int fp8_block[2];
    dpep_st_dtype dtype;        /* torch_dtype / dtype of the checkpoint      */
    int n_eos, eos[DPEP_MAX_EOS];
} dpep_model_config;

/* Reads DIR/config.json: only a regular file of at most 1 MiB (a FIFO or a
 * device named config.json is refused at once, never blocked on). Every
 * missing or bad field is named, DPEP_ERR_INVALID:
 * "DIR/config.json: key: what is wrong (expected …)". A layer beyond
 * num_hidden_layers (the MTP layer) is not part of the model. */
dpep_status dpep_model_config_load(const char *dir, dpep_model_config *out, dpep_diag *diag);
/* Same from a JSON text of len bytes (`name` in messages; the fuzz target's
 * entry). Each field the loader reads is checked alone (JSON type, range;
 * null only where Hugging Face's None means something), then, once all are
 * valid, against the others (groups divide the experts, top-k fits the
 * kept groups, dense layers within the layers, beta_fast >= beta_slow,
 * eos ids in the vocabulary). A config that loads has no tensor beyond
 * INT_MAX elements and at most 2^16 routed experts over all layers, so
 * sizes computed from it in int do not overflow. *out is written only on
 * DPEP_OK. */
dpep_status dpep_model_config_parse(const char *json, size_t len, const char *name,
                                    dpep_model_config *out, dpep_diag *diag);
/* Is layer l a MoE layer (else a dense MLP)? */
bool dpep_model_layer_is_moe(const dpep_model_config *m, int l);
/* Checks the model against a layout: experts divisible by ep, heads by
 * attn_tp, intermediate sizes by moe_tp / dense_tp. */
dpep_status dpep_model_check_layout(const dpep_model_config *m, const dpep_layout *l,
                                    const char *name, dpep_diag *diag);

/* ------------------------------------------------------------------------ */
/* Model tensors and per-rank weights (model/model.c).                      */
/* ------------------------------------------------------------------------ */
typedef enum dpep_wkind {
    DPEP_W_EMBED = 0,   /* embed_tokens, lm_head                            */
    DPEP_W_ATTN,        /* MLA projections and their norms                  */
    DPEP_W_DENSE,       /* dense MLP layers                                 */
    DPEP_W_ROUTED,      /* routed experts                                   */
    DPEP_W_SHARED,      /* shared experts                                   */
    DPEP_W_OTHER,       /* layer norms, router gate and bias, final norm     */
    DPEP_W_NKINDS
} dpep_wkind;
const char *dpep_wkind_name(dpep_wkind k);

/* One tensor of the Hub layout. `expert` is the routed expert index or -1;
 * `split` says how TP splits it: 0 none, 'r' rows (output dim), 'c' columns. */
typedef struct dpep_tensor_spec {
    char name[128];
    int ndim;
    int64_t shape[2];
    dpep_wkind kind;
    int layer, expert;
    char split;
    bool fp8;           /* stored as F8_E4M3 + _scale_inv in FP8 checkpoints */
    bool fp8_bf16;      /* ... but held BF16 where FP8 is kept (GPUs): kv_b,
                         * which the absorbed attention reads per head
                         * through batched products (FP8 there would be
                         * dequantized at every call; SGLang likewise
                         * dequantizes it at load) */
} dpep_tensor_spec;

/* Calls fn for every tensor the model has, in a fixed order (Hub names). */
typedef void (*dpep_tensor_fn)(const dpep_tensor_spec *t, void *user);
void dpep_model_tensors(const dpep_model_config *m, dpep_tensor_fn fn, void *user);

/* SwiGLU MLP slice: down(silu(gate x) * up x). */
typedef struct dpep_mlp_w {
    int inter;          /* this rank's slice of the intermediate size       */
    dpep_mat gate, up;  /* [inter, hidden]                                  */
    dpep_mat down;      /* [hidden, inter]                                  */
} dpep_mlp_w;

/* Matrices (dpep_mat) are stored as the weights' policy says (see
 * dpep_weights_opts): F32, or BF16/F16 as the checkpoint has them; vectors
 * (norms, router bias) and the router matrix are always float32 (the
 * router's product is computed in float32, as transformers does). */
typedef struct dpep_layer_w {
    float *input_norm, *post_norm;   /* [hidden]                             */
    /* MLA, this rank's heads [head0, head0 + n_heads)                        */
    int head0, n_heads;
    dpep_mat q_a;        /* [q_lora, hidden], absent (p NULL) without q_lora */
    float *q_a_norm;     /* [q_lora]                                         */
    dpep_mat q_b;        /* [n_heads*(nope+rope), q_lora or hidden (q_proj)] */
    dpep_mat kv_a;       /* [kv_lora + rope, hidden]                         */
    float *kv_a_norm;    /* [kv_lora]                                        */
    dpep_mat kv_b;       /* [n_heads*(nope+v), kv_lora]                      */
    dpep_mat o;          /* [hidden, n_heads*v]                              */
    bool moe;
    dpep_mlp_w mlp;      /* dense layer: intermediate split over dense_tp    */
    float *router;       /* [n_routed, hidden], float32                      */
    float *router_bias;  /* [n_routed] e_score_correction_bias, or NULL      */
    int expert0, n_experts; /* this EP rank's routed experts                 */
    dpep_mlp_w *experts; /* [n_experts], intermediate split over moe_tp      */
    dpep_mlp_w shared;   /* n_shared * moe_inter wide, split over moe_tp     */
} dpep_layer_w;

/* Every tensor pointer below (embed, final_norm, lm_head, each layer's
 * tensors, experts, shared, router, router_bias) points into `arena`, i.e.
 * into the memory of `dev`: host memory for the CPU, device memory for CUDA
 * (then the host must not dereference them). Each tensor starts on a 64-byte
 * boundary. On the CPU, BF16/F16 checkpoints' matrices stay BF16/F16 (2
 * bytes per parameter; the kernels widen them, runtime/linear) unless
 * model.dtype asks otherwise; FP8 and F32 matrices are F32 (FP8 dequantized with its
 * block scales: 4 bytes per parameter). On CUDA every tensor is F32 for now
 * (a GPU memory plan counts 4 bytes per parameter until BF16/FP8 weights are
 * kept as stored there). `bytes` and `arena_bytes` say what was held. */
typedef struct dpep_weights {
    dpep_model_config cfg;
    dpep_mat embed;      /* [vocab, hidden]                                  */
    float *final_norm;   /* [hidden]                                         */
    dpep_mat lm_head;    /* [vocab, hidden] (embed when tied)                */
    dpep_layer_w *layer; /* [n_layers] host array; its pointers are on dev   */
    void *arena;         /* owned: every tensor above lives in it (but the
                          * routed experts when expert_mem holds them)       */
    size_t arena_bytes;
    void *expert_mem;    /* borrowed (dpep_weights_opts.expert_mem), or NULL:
                          * the routed experts' matrices, from its start     */
    size_t expert_bytes; /* what they take of it                             */
    dpep_device dev;     /* where the arena lives (its allocator)            */
    size_t bytes[DPEP_W_NKINDS]; /* what this rank holds, by kind            */
    dpep_wtype mat_type; /* the type of the matrices held in the stored dtype
                          * (F32 when every matrix was widened; FP8 when any
                          * matrix is kept FP8, with its block scales)       */
} dpep_weights;

/* How matrices are held is the config's model.dtype (dpep_dtype): AUTO as
 * stored for BF16/F16 everywhere; FP8 (E4M3, 128 x 128 block scales) as
 * stored on a GPU where the rank's slice starts on a block (the scales of
 * its blocks right after it in the arena, dpep_mat.scale), else BF16 there,
 * float32 on the CPU; F32 as float32. F32 widened at load; BF16 / F16
 * rounded to that type at load (to nearest even). */

/* Bytes of each kind a rank of `l` holds, stored in `dtype_bytes` per
 * element (FP8 adds its scales), e.g. for memory plans. */
void dpep_model_rank_bytes(const dpep_model_config *m, const dpep_layout *l,
                           const dpep_rank_info *r, double dtype_bytes, double *bytes);
/* Parameters by kind over the whole model. */
void dpep_model_param_counts(const dpep_model_config *m, int64_t *count);

/* Host staging buffer of a load onto a device that is not host-addressable
 * (CUDA): each tensor is converted into it in row (or, for rows longer than
 * it, column) chunks, and each chunk copied to its place on the device. */
#define DPEP_WEIGHTS_STAGING_BYTES ((size_t)32 << 20)

/* Loads exactly the tensors (and TP slices) rank `r` of layout
 * `l` needs, the matrices in the type the AUTO policy picks (see
 * dpep_weights). Checks the model against the layout first. One allocation (the
 * arena), from the allocator of `device` (NULL: the CPU), made once.
 * On the CPU the tensors are converted from the mapped checkpoint straight
 * into the arena (a kept BF16/F16 matrix is copied). On CUDA they stream through one host staging buffer of
 * DPEP_WEIGHTS_STAGING_BYTES and the device's to_device copy, so the host
 * memory a load takes is bounded by the buffer, not by the model; the values
 * are bit-identical to a CPU load (the same conversion code) and the arena
 * has the same layout. A device that cannot hold the arena is an error naming
 * the device and the size; *out is written only on DPEP_OK. */
dpep_status dpep_weights_load_on(dpep_ckpt *ck, const dpep_model_config *m, const dpep_layout *l,
                                 const dpep_rank_info *r, const dpep_device *device,
                                 dpep_weights *out, dpep_diag *diag);
/* dpep_weights_load_on that always streams through a staging buffer of
 * `staging_bytes` (0: DPEP_WEIGHTS_STAGING_BYTES; at least 64 bytes are
 * used), on any device, the CPU included: the tests check the chunking with
 * tiny buffers on the CPU against the direct load. */
dpep_status dpep_weights_load_staged(dpep_ckpt *ck, const dpep_model_config *m,
                                     const dpep_layout *l, const dpep_rank_info *r,
                                     const dpep_device *device, size_t staging_bytes,
                                     dpep_weights *out, dpep_diag *diag);
/* dpep_weights_load_on on the CPU. */
dpep_status dpep_weights_load(dpep_ckpt *ck, const dpep_model_config *m, const dpep_layout *l,
                              const dpep_rank_info *r, dpep_weights *out, dpep_diag *diag);
/* The type a weight matrix stored as `stored` is held in under model.dtype
 * `policy` on a device of kind `dev` (the loader's rule, per tensor; the
 * memory plan's, for the checkpoint's dtype). */
dpep_wtype dpep_weights_matrix_type(dpep_dtype policy, dpep_device_kind dev, dpep_st_dtype stored);
/* The KV cache's element type under runtime.kv_cache_dtype `opt` on a
 * device of kind `dev` whose weight matrices are held as `weights`
 * (dpep_weights_matrix_type): F32 or BF16 as asked; auto is BF16 on a GPU
 * holding 16-bit or FP8 matrices (SGLang's auto: the model's dtype), F32
 * otherwise and always on the CPU (its attention computes in f32 and its
 * goldens are exact). */
dpep_wtype dpep_kv_cache_type(dpep_kv_dtype opt, dpep_device_kind dev, dpep_wtype weights);
/* Options of dpep_weights_load_with; zeroed: AUTO, direct on the CPU. */
typedef struct dpep_weights_opts {
    dpep_dtype dtype;     /* model.dtype: see above; BF16/F16 on a GPU is
                           * DPEP_ERR_UNSUPPORTED (its kernels read f32)     */
    bool staged;          /* stream through a staging buffer even on the CPU */
    size_t staging_bytes; /* 0: DPEP_WEIGHTS_STAGING_BYTES                   */
    void *expert_mem;     /* CPU: the routed experts' matrices go here instead
                           * of the arena (caller-owned, e.g. node-shared
                           * memory; aligned to DPEP_PAGE), laid out from its
                           * start in load order, so ranks holding the same
                           * number of experts of one model lay them out
                           * alike; NULL: in the arena. Not with staging.   */
    size_t expert_mem_bytes; /* its size: at least dpep_weights_expert_bytes */
} dpep_weights_opts;
/* Bytes this rank's routed experts take in dpep_weights_opts.expert_mem (0:
 * it holds none). o: as for the load (its dtype policy). */
size_t dpep_weights_expert_bytes(dpep_ckpt *ck, const dpep_model_config *m, const dpep_layout *l,
                                 const dpep_rank_info *r, const dpep_weights_opts *o);
/* The loader with options (NULL: zeroed); device NULL: the CPU. */
dpep_status dpep_weights_load_with(dpep_ckpt *ck, const dpep_model_config *m, const dpep_layout *l,
                                   const dpep_rank_info *r, const dpep_device *device,
                                   const dpep_weights_opts *o, dpep_weights *out, dpep_diag *diag);
/* Frees the arena through its device's allocator (device memory on CUDA) and
 * the host arrays; *w is zeroed. */
void dpep_weights_free(dpep_weights *w);

/* Writes a Hugging Face checkpoint (config.json + model.safetensors) with
 * deterministic random weights. `m` gives the architecture; dtype F32, BF16
 * or (m->fp8) F8_E4M3 with 128x128 block scales for the projection weights.
 * The model appears in `dir` all at once, whatever kills the generator: it
 * is written into a temporary sibling (PARENT/.NAME.gen-HOST-PID-XXXXXX),
 * synced and renamed onto `dir`, which may be missing (its parents are
 * created) or an empty directory. A `dir` that is not empty and has no
 * config.json is refused (DPEP_ERR_INVALID), never written into.
 * Generators of one `dir` take turns (flock on PARENT/.NAME.lock, a small
 * file left in place); the first to get the lock removes what killed
 * generators of this host left. If `dir` holds a model (config.json) once
 * the lock is held, it is used as it is: DPEP_OK with a note, nothing
 * written (dpep run's first use, where several jobs may race). */
dpep_status dpep_model_generate(const char *dir, const dpep_model_config *m, dpep_st_dtype dtype,
                                uint64_t seed, dpep_diag *diag);
/* The same from config.json text (written out as given; extra keys kept),
 * in shards of at most shard_bytes (0: one file) with an index when sharded. */
dpep_status dpep_model_generate_json(const char *dir, const char *config_json, dpep_st_dtype dtype,
                                     uint64_t seed, uint64_t shard_bytes, dpep_diag *diag);
/* Options of dpep_model_generate_with; zeroed: one file, keep a model
 * already in `dir`, nothing added. */
typedef struct dpep_model_gen_opts {
    uint64_t shard_bytes; /* shards of at most this many bytes, with an index; 0: one file */
    /* A model already in `dir` is replaced (`dpep model gen`), in one atomic
     * swap (renameat2 RENAME_EXCHANGE; where the filesystem lacks it, moved
     * aside first and put back by the next generator if killed between).
     * The old model's files go: config.json, weights, and any file the new
     * model also writes; other files of the directory stay in it. */
    bool replace;
    /* Called with the temporary directory once the weights are in it, before
     * it becomes `dir`, to add files (`model gen --tokenizer`); may be NULL.
     * A sweep after a kill deletes only the names a generation writes
     * (config.json, *.safetensors, the index, tokenizer.json,
     * tokenizer_config.json): other names are kept. */
    dpep_status (*add_files)(const char *tmp_dir, void *user, dpep_diag *diag);
    void *user;
} dpep_model_gen_opts;
/* dpep_model_generate_json with options (`o` may be NULL). */
dpep_status dpep_model_generate_with(const char *dir, const char *config_json, dpep_st_dtype dtype,
                                     uint64_t seed, const dpep_model_gen_opts *o, dpep_diag *diag);
/* config.json text (Hub key names) for a config; malloc'd, caller frees. */
char *dpep_model_config_to_json(const dpep_model_config *m);
/* Preset configs for `dpep model gen`: "tiny" or "small". */
dpep_status dpep_model_preset(dpep_arch arch, const char *preset, dpep_model_config *out);

/* ------------------------------------------------------------------------ */
/* The model's own definitions every backend and planner shares.             */
/* ------------------------------------------------------------------------ */
/* Bytes of latent KV cache one token takes over all layers: one compressed
 * vector (kv_lora) and one RoPE key (rope) per layer, `elem_bytes` each. */
static inline double dpep_model_kv_bytes_per_token(const dpep_model_config *m, double elem_bytes)
{
    return (double)m->n_layers * (double)(m->kv_lora_rank + m->qk_rope) * elem_bytes;
}
/* Elements of one token's latent KV row in one layer (kv_lora + rope). */
static inline int dpep_model_kv_row(const dpep_model_config *m)
{
    return m->kv_lora_rank + m->qk_rope;
}

/* RMSNorm of `rows` rows of n: y = x / sqrt(mean(x^2) + eps) * g, as
 * transformers computes it (fp32 math, the mean of squares accumulated in
 * double). Row r reads x + r*ldx and writes y + r*ldy; y may equal x (in
 * place). The reference every backend's RMSNorm is tested against. */
void dpep_rmsnorm_rows(const float *x, int64_t ldx, const float *g, int64_t rows, int n,
                       double eps, float *y, int64_t ldy);

#ifdef __cplusplus
}
#endif
#endif /* DPEP_MODEL_H */
