/* moe_internal.h — private to moe/: the context struct, its pool layout and
 * the CPU kernels shared by the stages. */
#ifndef DPEP_MOE_INTERNAL_H
#define DPEP_MOE_INTERNAL_H

#include "dpep_moe.h"

/* One token's gate (logit: [E]; idx/w: [k]). */
void moe_gate_one(const dpep_moe_gate_cfg *g, const float *logit, const float *bias,
                  int32_t *idx, float *w);

/* A run of rows the experts read: row i's activations at x + t_i * ldx,
 * its k local slot ids (-1: expert elsewhere) at slot + i * ld_slot, its k
 * weights at w + t_i * ld_w, with t_i = tok ? tok[i] : i; its partial sum
 * goes to part + i * H. Received rows are packed [x | slots | weights]
 * (x = row, slot = row + H, w = row + H + k, strides S); this rank's own
 * rows are read where they are (the caller's x and weights, via tok). */
typedef struct moe_rows {
    const float *x;
    const int32_t *tok;
    int64_t ldx;
    const int32_t *slot;
    int64_t ld_slot;
    const float *w;
    int64_t ld_w;
    float *part;
    int64_t n;
} moe_rows;

/* Routed experts of one rank over n_seg runs of rows: each row's partial
 * sum = Σ over its local slots of w · Expert_slot(x) (rows without a local
 * slot get 0). px/pp/slot_w: scratch of (rows) * min(k, n_slots) entries;
 * slot_cnt: n_slots + 1 entries; work: X (chunk, H), G and U (chunk, I_max),
 * Y (chunk, H). Returns the routed FLOPs; *pairs = (row, slot) pairs. */
double moe_experts_cpu(const dpep_mlp_w *experts, int n_slots, int hidden, int topk,
                       const moe_rows *seg, int n_seg, int chunk, const float **px, float **pp,
                       float *slot_w, int64_t *slot_cnt, float *work, int64_t work_inter,
                       int64_t *pairs);

/* Packed row helpers: S = H + 2k words. */
static inline int32_t *moe_row_slot(float *row, int H) { return (int32_t *)(void *)(row + H); }
static inline const int32_t *moe_row_slot_c(const float *row, int H)
{
    return (const int32_t *)(const void *)(row + H);
}
static inline float *moe_row_w(float *row, int H, int k) { return row + H + k; }

struct dpep_moe {
    dpep_moe_config cfg;        /* placement points at `pl`               */
    dpep_moe_placement pl;      /* owned copy                             */
    int H, k, S;                /* S = H + 2k: packed row, in 4-byte words */
    int ep_size, ep_rank, tp_size, tp_rank, dn_size;
    int n_local;                /* expert slots on this EP rank            */
    int D;                      /* max destination ranks per token         */
    int64_t Tm, Um;             /* max tokens per rank / per MoE-TP union  */
    int chunk;
    int64_t I_max;              /* widest MLP slice run here               */

    unsigned char *pool;        /* owned: every buffer below lives in it   */
    size_t pool_bytes;
    /* alltoall transport (moe.c: shm_connect) */
    bool shm_wanted;            /* alltoall, ep > 1, transport auto or shm  */
    bool shm;                   /* rows move through node-shared memory     */
    dpep_comm_shm *win;         /* owned (shm): one segment per EP rank =   */
                                /* [cnt: ep int64 | recv: ep*Ustride rows of S | part: ep*Ustride rows of H] */
    int64_t Ustride;            /* shm: rows reserved per source rank       */
    bool arrived;               /* shm: this step's round arrived (experts done) */
    size_t win_bytes;
    float **peer_recv, **peer_part; /* [ep] shm: each rank's recv / part    */
    int64_t **peer_cnt;         /* [ep] shm: each rank's per-source counts  */
    unsigned char *mpi_bufs;    /* owned: EP buffers when auto fell back    */
    size_t mpi_bytes;
    float *logits;              /* (Tm, E)                                 */
    int32_t *g_idx;             /* (Tm, k) gate choice when caller gives none */
    float *g_w;                 /* (Tm, k)                                 */
    float *own_pack;            /* (Tm, S) own tokens packed (moe_tp > 1)  */
    float *ubuf;                /* (Um, S) MoE-TP union, packed            */
    /* EP buffers: in the pool, or (alltoall over shm) in the node-shared
     * segment, or (shm wanted, unavailable) in mpi_bufs */
    float *a2a_send;            /* (Um*D, S) alltoall over MPI only        */
    float *big_recv;            /* (ep*Um, S) received / gathered rows     */
    float *big_part;            /* (ep*Um, H) partial sums per row         */
    float *comb_recv;           /* (Um*D, H) alltoall over MPI only        */
    float *uout;                /* (Um, H) union output                    */
    float *ushared;             /* (Um, H) shared-expert partial           */
    float *rs_pad;              /* (tp*Tm, H) moe_tp > 1                   */
    float *rs_recv;             /* (Tm, H) moe_tp > 1                      */
    float *work;                /* X, G, U, Y                              */
    int32_t *tok_r, *tok_i;     /* (Um, D) where each token's rows went: EP
                                   rank, row index in its block there      */
    int32_t *tok_n;             /* (Um) destinations of each token         */
    float **row_base;           /* [ep] dispatch: rows for rank r go to     */
    int64_t *row0;              /*   row_base[r] + (row0[r] + i) * S        */
    const float **src_base;     /* [ep] combine: partial sums from rank r   */
    int64_t *src0;              /*   at src_base[r] + (src0[r] + i) * H     */
    const float **px;           /* (ep*Um*min(k, n_local)) experts' scratch */
    float **pp;                 /* same                                    */
    float *slot_w;              /* same                                    */
    int32_t *self_slot;         /* (Um, k) local slot ids of the own rows   */
    int32_t *self_tok;          /* (Um) token of own row i                  */
    float *dn_send, *dn_recv, *dn_part, *dn_rs; /* dense TP: (Tm, H), (dn*Tm, H) x2, (Tm, H) */
    int64_t *i64;               /* small arrays, carved below              */
    int64_t *sc, *sd, *rc, *rd; /* [ep] alltoallv counts/displs (elements) */
    int64_t *tok_send, *tok_recv; /* [ep] tokens per peer                  */
    int64_t *bytes_send, *bytes_recv; /* [ep]                              */
    int64_t *stamp;             /* [ep]                                    */
    int64_t *one, *seq;         /* [max group] 1s and 0..n-1               */
    int64_t *tp_T, *tp_cnt, *tp_dsp; /* [tp]                               */
    int64_t *ep_U;              /* [ep]                                    */
    int64_t *slot_cnt;          /* [n_local + 1]                           */
    int64_t *dn_T;              /* [dense group] tokens per rank           */

    int64_t *srow, *rrow;       /* [ep] dispatch row offsets, send / receive */
    moe_rows *seg;              /* [ep] the rows the experts read this step */
    int n_seg;
    /* step state. The union view: this rank's EP-stage tokens, either the
     * caller's arrays (alltoall, moe_tp = 1: no copy) or ubuf (packed). */
    const float *ux;            /* (U, ux_ld)                              */
    const int32_t *uidx;        /* (U, um_ld) expert ids                   */
    const float *uw;            /* (U, um_ld) weights                      */
    int64_t ux_ld, um_ld;
    int64_t T, U, n_rows, Upad, Tpad_tp;
    bool have_shared;
    int stage;                  /* 0 idle, 1 dispatched, 2 experts done    */
    dpep_moe_stats st;
};

#endif /* DPEP_MOE_INTERNAL_H */
