/* test_weights_cuda.c — one rank's weights loaded onto a device that is not
 * host-addressable (the staged path of dpep_weights_load_on): tiny generated
 * V3 (F32, BF16, FP8 with 128x128 block scales, BF16 with tied embeddings)
 * and V2 models, several layouts and every rank of each.
 *
 * Reference: the direct CPU load. Checked against it, bit for bit:
 *  1. the staged load onto the CPU with staging buffers from 64 bytes (pieces
 *     of one row) to the default (whole tensors);
 *  2. the staged load onto a simulated device whose arena is an inaccessible
 *     (PROT_NONE) reservation, written only through its to_device op into a
 *     host shadow: the exact path a CUDA load takes, proving that the loader
 *     never touches device memory from the host and copies at most one
 *     staging buffer at a time;
 *  3. with a GPU: the load onto cuda:0, every byte copied back.
 * Same arena size, same bytes by kind, every tensor pointer at the same
 * offset of its arena, lm_head == embed when tied.
 * Without a GPU: a CUDA load fails with the device named and *out untouched,
 * then "SKIP: why" and exit 77. */
#include "dpep_model.h"
#include "dpep_world.h"
#include "../dpep_test.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static char g_tmp[] = "/tmp/dpep-test-wcuda-XXXXXX";

/* ---- a simulated device: arena not host-addressable, a host shadow ---- */
static struct {
    unsigned char *base;   /* PROT_NONE reservation: the "device" addresses */
    unsigned char *shadow; /* host copy of what was written there           */
    size_t bytes;
    size_t max_copy, n_copies;
    int bad;               /* copies outside the arena                      */
} g_sim;

static dpep_status sim_alloc(const dpep_device *d, size_t bytes, void **out)
{
    (void)d;
    if (g_sim.base || bytes == 0) return DPEP_ERR_INTERNAL; /* one arena at a time */
    void *p = mmap(NULL, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return DPEP_ERR_NOMEM;
    g_sim.shadow = calloc(1, bytes);
    if (!g_sim.shadow) {
        munmap(p, bytes);
        return DPEP_ERR_NOMEM;
    }
    g_sim.base = p;
    g_sim.bytes = bytes;
    g_sim.max_copy = g_sim.n_copies = 0;
    g_sim.bad = 0;
    *out = p;
    return DPEP_OK;
}

static void sim_free(const dpep_device *d, void *p)
{
    (void)d;
    if (p != g_sim.base) g_sim.bad++;
    munmap(g_sim.base, g_sim.bytes);
    free(g_sim.shadow);
    g_sim.base = g_sim.shadow = NULL;
}

static dpep_status sim_to_device(const dpep_device *d, void *dst, const void *src, size_t bytes)
{
    (void)d;
    uintptr_t a = (uintptr_t)dst, b = (uintptr_t)g_sim.base;
    if (a < b || a - b > g_sim.bytes || bytes > g_sim.bytes - (a - b)) {
        g_sim.bad++;
        return DPEP_ERR_INTERNAL;
    }
    memcpy(g_sim.shadow + (a - b), src, bytes);
    if (bytes > g_sim.max_copy) g_sim.max_copy = bytes;
    g_sim.n_copies++;
    return DPEP_OK;
}

static dpep_status sim_to_host(const dpep_device *d, void *dst, const void *src, size_t bytes)
{
    (void)d;
    uintptr_t a = (uintptr_t)src, b = (uintptr_t)g_sim.base;
    if (a < b || a - b > g_sim.bytes || bytes > g_sim.bytes - (a - b)) return DPEP_ERR_INTERNAL;
    memcpy(dst, g_sim.shadow + (a - b), bytes);
    return DPEP_OK;
}

static const dpep_device_ops g_sim_ops = {"simdev", sim_alloc, sim_free, sim_to_device, sim_to_host};

/* ---- comparison against the reference ---- */
static int g_bad_ptr;

static void same_ptr(const dpep_weights *ref, const void *pr, const dpep_weights *w,
                     const void *pw)
{
    if (!pr || !pw) {
        g_bad_ptr += (pr == NULL) != (pw == NULL);
        return;
    }
    ptrdiff_t oa = (const char *)pr - (const char *)ref->arena;
    ptrdiff_t ob = (const char *)pw - (const char *)w->arena;
    g_bad_ptr += oa != ob || oa < 0 || (size_t)oa >= ref->arena_bytes || oa % 64 != 0;
}

/* A matrix: the same place, type and shape. */
static void same_mat(const dpep_weights *ref, dpep_mat a, const dpep_weights *w, dpep_mat b)
{
    same_ptr(ref, a.p, w, b.p);
    g_bad_ptr += a.p && (a.t != b.t || a.rows != b.rows || a.cols != b.cols || a.ld != b.ld ||
                         a.ld != a.cols);
}

static void same_mlp(const dpep_weights *ref, const dpep_mlp_w *a, const dpep_weights *w,
                     const dpep_mlp_w *b)
{
    g_bad_ptr += a->inter != b->inter;
    same_mat(ref, a->gate, w, b->gate);
    same_mat(ref, a->up, w, b->up);
    same_mat(ref, a->down, w, b->down);
}

/* w (arena bytes copied to host in `host`) against the CPU reference. */
static void compare(const dpep_weights *ref, const dpep_weights *w, const void *host,
                    const char *what)
{
    const dpep_model_config *m = &ref->cfg;
    EXPECT(w->arena_bytes == ref->arena_bytes, "%s: arena %zu bytes (cpu %zu)", what,
           w->arena_bytes, ref->arena_bytes);
    if (w->arena_bytes != ref->arena_bytes) return;
    for (int k = 0; k < DPEP_W_NKINDS; k++)
        EXPECT(w->bytes[k] == ref->bytes[k], "%s: %s bytes %zu (cpu %zu)", what,
               dpep_wkind_name((dpep_wkind)k), w->bytes[k], ref->bytes[k]);
    size_t first = SIZE_MAX;
    const unsigned char *a = (const unsigned char *)ref->arena, *b = host;
    for (size_t i = 0; i < ref->arena_bytes && first == SIZE_MAX; i++)
        if (a[i] != b[i]) first = i;
    EXPECT(first == SIZE_MAX, "%s: arena differs from the cpu load first at byte %zu of %zu", what,
           first, ref->arena_bytes);
    g_bad_ptr = 0;
    same_mat(ref, ref->embed, w, w->embed);
    same_ptr(ref, ref->final_norm, w, w->final_norm);
    same_mat(ref, ref->lm_head, w, w->lm_head);
    for (int l = 0; l < m->n_layers; l++) {
        const dpep_layer_w *x = &ref->layer[l], *y = &w->layer[l];
        g_bad_ptr += x->head0 != y->head0 || x->n_heads != y->n_heads || x->moe != y->moe ||
                     x->expert0 != y->expert0 || x->n_experts != y->n_experts;
        same_ptr(ref, x->input_norm, w, y->input_norm);
        same_ptr(ref, x->post_norm, w, y->post_norm);
        same_mat(ref, x->q_a, w, y->q_a);
        same_ptr(ref, x->q_a_norm, w, y->q_a_norm);
        same_mat(ref, x->q_b, w, y->q_b);
        same_mat(ref, x->kv_a, w, y->kv_a);
        same_ptr(ref, x->kv_a_norm, w, y->kv_a_norm);
        same_mat(ref, x->kv_b, w, y->kv_b);
        same_mat(ref, x->o, w, y->o);
        same_mlp(ref, &x->mlp, w, &y->mlp);
        same_ptr(ref, x->router, w, y->router);
        same_ptr(ref, x->router_bias, w, y->router_bias);
        for (int e = 0; x->moe && e < x->n_experts && x->n_experts == y->n_experts; e++)
            same_mlp(ref, &x->experts[e], w, &y->experts[e]);
        same_mlp(ref, &x->shared, w, &y->shared);
    }
    EXPECT(g_bad_ptr == 0, "%s: %d tensor pointers or shapes differ from the cpu load", what,
           g_bad_ptr);
    EXPECT(!m->tie_word_embeddings || (w->lm_head.p == w->embed.p && w->embed.p),
           "%s: tied lm_head is embed", what);
    EXPECT(w->embed.p && w->final_norm && w->lm_head.p && w->layer[0].input_norm &&
               w->layer[0].kv_b.p,
           "%s: tensors set", what);
    EXPECT(w->mat_type == ref->mat_type && w->layer[0].kv_b.t == ref->layer[0].kv_b.t,
           "%s: matrices %s (cpu %s)", what, dpep_wtype_name(w->mat_type),
           dpep_wtype_name(ref->mat_type));
}

/* ---- an FP8 checkpoint on a GPU: projections kept as stored ---- */
static float fp8_e4m3(unsigned char b) { return dpep_test_fp8_e4m3(b); }

#define MAX_MATS 4096
/* Every matrix of w, in one fixed order (embed, lm_head, then per layer). */
static int mats_of(const dpep_weights *w, const dpep_mat **out)
{
    int n = 0;
    out[n++] = &w->embed;
    out[n++] = &w->lm_head;
    for (int l = 0; l < w->cfg.n_layers; l++) {
        const dpep_layer_w *L = &w->layer[l];
        const dpep_mat *one[] = {&L->q_a, &L->q_b, &L->kv_a, &L->kv_b, &L->o, &L->mlp.gate,
                                 &L->mlp.up, &L->mlp.down, &L->shared.gate, &L->shared.up,
                                 &L->shared.down};
        for (size_t i = 0; i < sizeof one / sizeof one[0] && n < MAX_MATS; i++) out[n++] = one[i];
        for (int e = 0; e < L->n_experts && n + 3 <= MAX_MATS; e++) {
            out[n++] = &L->experts[e].gate;
            out[n++] = &L->experts[e].up;
            out[n++] = &L->experts[e].down;
        }
    }
    return n;
}

/* A GPU load of an FP8 checkpoint (w, arena copied to `host`): each FP8
 * matrix, dequantized here with its block scales, equals the CPU's float32
 * load (ref32) bit for bit; every other matrix equals, as stored, the CPU's
 * load under model.dtype bf16 (refdev); the norms and routers equal the
 * float32 ones. Returns the number of FP8 matrices seen. */
static int compare_fp8(const dpep_weights *ref32, const dpep_weights *refdev, const dpep_weights *w,
                       const unsigned char *host, const char *what)
{
    static const dpep_mat *a[MAX_MATS], *b[MAX_MATS], *c[MAX_MATS];
    const int n = mats_of(w, a);
    EXPECT(mats_of(ref32, b) == n && mats_of(refdev, c) == n, "%s: matrix lists", what);
    int n_fp8 = 0, bad = 0;
    for (int i = 0; i < n; i++) {
        const dpep_mat *x = a[i], *r = b[i], *d = c[i];
        if (!x->p || !r->p) {
            bad += (x->p == NULL) != (r->p == NULL);
            continue;
        }
        const unsigned char *xp = host + ((const char *)x->p - (const char *)w->arena);
        if (x->t == DPEP_WT_FP8) {
            n_fp8++;
            const float *sc = (const float *)(host + ((const char *)x->scale - (const char *)w->arena));
            bad += x->rows != r->rows || x->cols != r->cols || !x->scale || x->sr0 != 0;
            for (int rr = 0; rr < x->rows && !bad; rr++)
                for (int cc = 0; cc < x->cols; cc++) {
                    const float v = fp8_e4m3(xp[(size_t)rr * (size_t)x->ld + (size_t)cc]) *
                                    sc[(size_t)((x->sr0 + rr) / DPEP_FP8_BLOCK) * (size_t)x->sld +
                                       (size_t)(cc / DPEP_FP8_BLOCK)];
                    const float want = ((const float *)r->p)[(size_t)rr * (size_t)r->ld + (size_t)cc];
                    if (memcmp(&v, &want, sizeof v) != 0) {
                        bad++;
                        break;
                    }
                }
        } else {
            const size_t es = dpep_wtype_size(x->t);
            bad += x->t != d->t || x->rows != d->rows || x->cols != d->cols ||
                   memcmp(xp, d->p, es * (size_t)x->rows * (size_t)x->cols) != 0;
        }
    }
    /* the float32 vectors: final norm, per layer the norms and the router */
    const dpep_model_config *m = &ref32->cfg;
    const size_t H = (size_t)m->hidden;
    const float *vw[4096], *vr[4096];
    size_t vl[4096];
    int nv = 0;
    vw[nv] = w->final_norm, vr[nv] = ref32->final_norm, vl[nv++] = H;
    for (int l = 0; l < m->n_layers && nv + 6 < 4096; l++) {
        const dpep_layer_w *x = &w->layer[l], *r = &ref32->layer[l];
        vw[nv] = x->input_norm, vr[nv] = r->input_norm, vl[nv++] = H;
        vw[nv] = x->post_norm, vr[nv] = r->post_norm, vl[nv++] = H;
        vw[nv] = x->q_a_norm, vr[nv] = r->q_a_norm, vl[nv++] = (size_t)m->q_lora_rank;
        vw[nv] = x->kv_a_norm, vr[nv] = r->kv_a_norm, vl[nv++] = (size_t)m->kv_lora_rank;
        vw[nv] = x->router, vr[nv] = r->router, vl[nv++] = (size_t)m->n_routed * H;
        vw[nv] = x->router_bias, vr[nv] = r->router_bias, vl[nv++] = (size_t)m->n_routed;
    }
    for (int i = 0; i < nv; i++) {
        if (!vw[i] || !vr[i]) {
            bad += (vw[i] == NULL) != (vr[i] == NULL);
            continue;
        }
        const unsigned char *xp = host + ((const char *)vw[i] - (const char *)w->arena);
        bad += memcmp(xp, vr[i], sizeof(float) * vl[i]) != 0;
    }
    EXPECT(bad == 0, "%s: %d matrices or vectors differ from the cpu loads (%d fp8 kept)", what, bad,
           n_fp8);
    return n_fp8;
}

static dpep_config layout_cfg(int tp, int dp, int ep, bool dpa)
{
    dpep_config c;
    dpep_config_init(&c);
    c.parallel.tp = tp;
    c.parallel.dp = dp;
    c.parallel.ep = ep;
    c.parallel.enable_dp_attention = dpa;
    return c;
}

static bool g_gpu;        /* a usable CUDA device 0 */
static dpep_device g_cuda; /* cuda:0 (CUDA builds)   */
static double g_gpu_bytes;

/* Every rank of every layout of one model. */
static void check_model(const char *dir, const char *name)
{
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_model_config m;
    dpep_ckpt *ck = NULL;
    if (dpep_model_config_load(dir, &m, &d) != DPEP_OK || dpep_ckpt_open(dir, &ck, &d) != DPEP_OK) {
        dpep_diag_print(&d, stdout);
        EXPECT(0, "%s: config and checkpoint", name);
        return;
    }
    /* tp dp ep dpa: single rank; attention TP 2 with column-split o_proj
     * and MoE TP 2; EP 4 with DP attention; EP 4 x attention TP 2 */
    static const int layouts[][4] = {{1, 1, 1, 0}, {2, 1, 1, 0}, {4, 4, 4, 1}, {4, 2, 4, 1}};
    /* 64 B: 16 floats, pieces of a row; 1000 B: 250 floats, a row of 256 in
     * two pieces; 40000 B: 39 rows of 256 (chunks across FP8 blocks); 0: the
     * default (whole tensors of a tiny model) */
    static const size_t stagings[] = {64, 1000, 40000, 0};
    dpep_device cpu, sim = {DPEP_DEVICE_CUDA, 0, &g_sim_ops};
    dpep_device_get(DPEP_DEVICE_CPU, -1, &cpu);
    int n_loads = 0;
    for (size_t k = 0; k < sizeof layouts / sizeof layouts[0]; k++) {
        const int *L = layouts[k];
        dpep_config c = layout_cfg(L[0], L[1], L[2], L[3]);
        dpep_layout l;
        dpep_config_validate(&c, 0, &d);
        if (dpep_layout_from_config(&c, 0, &l) != DPEP_OK) {
            EXPECT(0, "%s: layout tp%d dp%d ep%d", name, L[0], L[1], L[2]);
            dpep_config_free(&c);
            continue;
        }
        for (int rank = 0; rank < l.world; rank++) {
            char what[160];
            dpep_rank_info r;
            dpep_layout_rank(&l, rank, &r);
            dpep_weights ref, ref32;
            snprintf(what, sizeof what, "%s tp%d dp%d ep%d rank %d", name, L[0], L[1], L[2], rank);
            /* the CPU keeps BF16 matrices as stored, widens FP8 to float32;
             * a GPU keeps BF16 and FP8 (block-aligned slices) as stored and
             * dequantizes other FP8 slices to BF16: compared with the CPU's
             * float32 load (FP8 dequantized here) and its load under
             * model.dtype bf16 */
            const dpep_weights_opts f32 = {.dtype = DPEP_DTYPE_F32};
            dpep_status st = dpep_weights_load_on(ck, &m, &l, &r, &cpu, &ref, &d);
            EXPECT(st == DPEP_OK, "%s: cpu load %s", what, dpep_status_string(st));
            if (st != DPEP_OK) {
                dpep_diag_print(&d, stdout);
                continue;
            }
            st = dpep_weights_load_with(ck, &m, &l, &r, &cpu, &f32, &ref32, &d);
            EXPECT(st == DPEP_OK && ref32.mat_type == DPEP_WT_F32, "%s: cpu f32 load %s", what,
                   dpep_status_string(st));
            if (st != DPEP_OK) {
                dpep_weights_free(&ref);
                continue;
            }
            dpep_weights refdev = ref;
            if (m.fp8) {
                const dpep_weights_opts b16 = {.dtype = DPEP_DTYPE_BF16};
                st = dpep_weights_load_with(ck, &m, &l, &r, &cpu, &b16, &refdev, &d);
                EXPECT(st == DPEP_OK && refdev.layer[0].q_b.t == DPEP_WT_BF16, "%s: cpu bf16 load %s",
                       what, dpep_status_string(st));
                if (st != DPEP_OK) {
                    dpep_weights_free(&ref);
                    dpep_weights_free(&ref32);
                    continue;
                }
            }
            {
                /* AUTO keeps a checkpoint's BF16 matrices BF16 (half the
                 * bytes); an FP8 checkpoint's FP8 projections are widened
                 * to float32, its BF16 embeddings kept */
                const bool half = strstr(name, "bf16") != NULL, fp8 = m.fp8;
                const dpep_wtype want = half ? DPEP_WT_BF16 : DPEP_WT_F32;
                EXPECT(ref.layer[0].q_b.t == want && ref.layer[0].kv_b.t == want &&
                           ref.embed.t == (fp8 ? DPEP_WT_BF16 : want) &&
                           ref.mat_type == (fp8 ? DPEP_WT_BF16 : want),
                       "%s: cpu matrices %s, q_b %s, embed %s", what,
                       dpep_wtype_name(ref.mat_type), dpep_wtype_name(ref.layer[0].q_b.t),
                       dpep_wtype_name(ref.embed.t));
                const size_t k16 = ref.bytes[DPEP_W_ROUTED] + ref.bytes[DPEP_W_EMBED];
                const size_t k32 = ref32.bytes[DPEP_W_ROUTED] + ref32.bytes[DPEP_W_EMBED];
                EXPECT(!half || (k16 * 2 == k32 && k16 > 0), "%s: expert + embedding bytes %zu, "
                       "f32 %zu", what, k16, k32);
            }
            /* the tiny buffers on the first rank only, 64 B (a chunk each 16
             * floats, slow) on the FP8 model only, where pieces of a row
             * cross scale blocks */
            size_t s0 = k == 0 && rank == 0 ? (m.fp8 ? 0 : 1) : rank == 0 ? 2 : 3;
            for (size_t s = s0; s < sizeof stagings / sizeof stagings[0]; s++) {
                char w2[200];
                dpep_weights w;
                snprintf(w2, sizeof w2, "%s staged cpu %zu B", what, stagings[s]);
                st = dpep_weights_load_staged(ck, &m, &l, &r, &cpu, stagings[s], &w, &d);
                EXPECT(st == DPEP_OK, "%s: %s", w2, dpep_status_string(st));
                if (st != DPEP_OK) continue;
                compare(&ref, &w, w.arena, w2);
                dpep_weights_free(&w);
                n_loads++;
            }
            /* the simulated device takes the CUDA path: load_on streams
             * (and 1000 B chunks, on the first rank of each layout) */
            for (size_t s = 0; s < (rank == 0 ? 2u : 1u); s++) {
                char w2[200];
                dpep_weights w;
                size_t sb = s ? 1000 : 0;
                snprintf(w2, sizeof w2, "%s simulated device %zu B", what, sb);
                st = s ? dpep_weights_load_staged(ck, &m, &l, &r, &sim, sb, &w, &d)
                       : dpep_weights_load_on(ck, &m, &l, &r, &sim, &w, &d);
                EXPECT(st == DPEP_OK, "%s: %s", w2, dpep_status_string(st));
                if (st != DPEP_OK) {
                    dpep_diag_print(&d, stdout);
                    continue;
                }
                size_t cap = sb ? sb / 4 * 4 : DPEP_WEIGHTS_STAGING_BYTES;
                EXPECT(g_sim.bad == 0 && g_sim.n_copies > 0 && g_sim.max_copy <= cap,
                       "%s: %zu copies, largest %zu B (staging %zu B), %d out of the arena", w2,
                       g_sim.n_copies, g_sim.max_copy, cap, g_sim.bad);
                if (m.fp8) {
                    const int nf = compare_fp8(&ref32, &refdev, &w, g_sim.shadow, w2);
                    /* rank 0's slices all start at 0: its FP8 projections are kept */
                    EXPECT(rank != 0 || nf > 0, "%s: FP8 projections kept as stored (%d)", w2, nf);
                    EXPECT(nf == 0 || w.mat_type == DPEP_WT_FP8, "%s: matrices %s", w2,
                           dpep_wtype_name(w.mat_type));
                    /* kv_b, read per head by the absorbed attention, is
                     * held BF16 (dequantized at load), q_b kept FP8 */
                    EXPECT(w.layer[0].kv_b.t == DPEP_WT_BF16 &&
                               (rank != 0 || w.layer[0].q_b.t == DPEP_WT_FP8),
                           "%s: kv_b %s, q_b %s", w2, dpep_wtype_name(w.layer[0].kv_b.t),
                           dpep_wtype_name(w.layer[0].q_b.t));
                } else {
                    compare(&refdev, &w, g_sim.shadow, w2);
                }
                dpep_weights_free(&w);
                EXPECT(g_sim.base == NULL && g_sim.bad == 0, "%s: arena freed through the device",
                       w2);
                n_loads++;
            }
            if (g_gpu) {
                for (size_t s = 0; s < (rank == 0 ? 2u : 1u); s++) {
                    char w2[200];
                    dpep_weights w;
                    size_t sb = s ? 1000 : 0;
                    snprintf(w2, sizeof w2, "%s cuda:0 %zu B", what, sb);
                    st = s ? dpep_weights_load_staged(ck, &m, &l, &r, &g_cuda, sb, &w, &d)
                           : dpep_weights_load_on(ck, &m, &l, &r, &g_cuda, &w, &d);
                    EXPECT(st == DPEP_OK && w.dev.kind == DPEP_DEVICE_CUDA, "%s: %s", w2,
                           dpep_status_string(st));
                    if (st != DPEP_OK) {
                        dpep_diag_print(&d, stdout);
                        continue;
                    }
                    void *host = malloc(w.arena_bytes);
                    dpep_status sh = host ? w.dev.ops->to_host(&w.dev, host, w.arena, w.arena_bytes)
                                          : DPEP_ERR_NOMEM;
                    EXPECT(sh == DPEP_OK, "%s: copy back %s", w2, dpep_status_string(sh));
                    if (sh == DPEP_OK && m.fp8) (void)compare_fp8(&ref32, &refdev, &w, host, w2);
                    else if (sh == DPEP_OK) compare(&refdev, &w, host, w2);
                    g_gpu_bytes += (double)w.arena_bytes;
                    free(host);
                    dpep_weights_free(&w);
                    n_loads++;
                }
            }
            if (m.fp8) dpep_weights_free(&refdev);
            dpep_weights_free(&ref);
            dpep_weights_free(&ref32);
        }
        dpep_config_free(&c);
    }
    printf("ok   %-14s %d staged loads equal to the cpu load, bit for bit\n", name, n_loads);
    dpep_ckpt_close(ck);
}

/* Without a GPU: the CUDA load fails cleanly, names the device, and leaves
 * *out untouched. */
static void no_gpu_checks(const char *dir)
{
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_model_config m;
    dpep_ckpt *ck = NULL;
    if (dpep_model_config_load(dir, &m, &d) != DPEP_OK || dpep_ckpt_open(dir, &ck, &d) != DPEP_OK) {
        EXPECT(0, "config and checkpoint");
        return;
    }
    dpep_config c = layout_cfg(1, 1, 1, false);
    dpep_layout l;
    dpep_rank_info r;
    dpep_config_validate(&c, 0, &d);
    dpep_layout_from_config(&c, 0, &l);
    dpep_layout_rank(&l, 0, &r);
    dpep_weights w;
    memset(&w, 0xab, sizeof w);
    unsigned char poison[sizeof w];
    memcpy(poison, &w, sizeof w);
    dpep_status st = dpep_weights_load_on(ck, &m, &l, &r, &g_cuda, &w, &d);
    const char *msg = dpep_diag_find(&d, "on cuda:0");
    EXPECT(st != DPEP_OK && msg && memcmp(&w, poison, sizeof w) == 0,
           "no GPU: cuda load refused (%s), device named, *out untouched", dpep_status_string(st));
    if (msg) printf("ok   no GPU: the cuda load says: %s\n", msg);
    dpep_config_free(&c);
    dpep_ckpt_close(ck);
}

int main(void)
{
    dpep_log_init();
    if (!mkdtemp(g_tmp)) return 1;
    int n_dev = -1;
    char why[256] = "";
    g_gpu = dpep_cuda_device_count(&n_dev, why, sizeof why) == DPEP_OK && n_dev > 0;
    bool have_cuda = dpep_device_get(DPEP_DEVICE_CUDA, 0, &g_cuda) == DPEP_OK;
    EXPECT(!g_gpu || have_cuda, "a GPU is visible, so cuda:0 must exist in this build");
    g_gpu = g_gpu && have_cuda;

    dpep_diag d;
    dpep_diag_init(&d);
    dpep_model_config m3, m3t, m2;
    dpep_model_preset(DPEP_ARCH_DEEPSEEK_V3, "tiny", &m3);
    dpep_model_preset(DPEP_ARCH_DEEPSEEK_V2, "tiny", &m2);
    m3t = m3;
    m3t.tie_word_embeddings = true;
    struct {
        const char *name;
        const dpep_model_config *m;
        dpep_st_dtype dtype;
    } models[] = {{"v3-f32", &m3, DPEP_ST_F32},
                  {"v3-bf16", &m3, DPEP_ST_BF16},
                  {"v3-fp8", &m3, DPEP_ST_F8_E4M3},
                  {"v3-bf16-tied", &m3t, DPEP_ST_BF16},
                  {"v2-f32", &m2, DPEP_ST_F32}};
    char dirs[5][512];
    for (int i = 0; i < 5; i++) {
        snprintf(dirs[i], sizeof dirs[i], "%s/%s", g_tmp, models[i].name);
        EXPECT(dpep_model_generate(dirs[i], models[i].m, models[i].dtype, 11, &d) == DPEP_OK,
               "generate %s", models[i].name);
    }
    dpep_diag_print(&d, stdout);
    {
        /* the FP8 model really is FP8 with block scales */
        dpep_model_config mf;
        dpep_diag_init(&d);
        EXPECT(dpep_model_config_load(dirs[2], &mf, &d) == DPEP_OK && mf.fp8 &&
                   mf.fp8_block[0] == 128 && mf.fp8_block[1] == 128,
               "fp8 model: 128x128 blocks");
    }
    for (int i = 0; i < 5; i++) check_model(dirs[i], models[i].name);
    if (!g_gpu && have_cuda) no_gpu_checks(dirs[0]);

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_tmp);
    if (system(cmd) != 0) printf("note: could not remove %s\n", g_tmp);
    if (!g_gpu) {
        printf("host-side checks: %d passed, %d failed\n", g_pass, g_fail);
        if (g_fail) return 1;
        printf("SKIP: no usable CUDA device (%s)\n",
               have_cuda ? why : "this build has no CUDA");
        return 77;
    }
    printf("cuda:0: %.1f MB of weights loaded and compared\n", g_gpu_bytes / 1e6);
    return dpep_test_summary();
}
