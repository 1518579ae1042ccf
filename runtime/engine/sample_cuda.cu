/* sample_cuda.cu — the CUDA table's sampler: every row of a step on the
 * device in one launch (greedy, temperature, top-k, top-p, min-p, the draw
 * with the request's own stream) and the log-prob of the chosen token; only
 * the ids and log-probs come back. sample_cpu.c is the reference.
 *
 * Per row, one block of SMP_NT threads (a grid-stride loop over rows):
 *   1. max and argmax of the logits (ties to the lowest id), and
 *      z = sum exp(l - max) in double for the log-prob (as dpep_logprob:
 *      the RAW logits, no temperature or filter).
 *   greedy rows stop here.
 *   2. top-k (0 < k < vocab): the k-th largest logit by radix select over
 *      order-preserving keys (3 passes of 11/11/10 bits, counts in shared
 *      memory); the kept set is `l >= cut`, ties kept, as the CPU.
 *   3. p = exp((l - max) / T) for kept logits, 0 else, written to this
 *      block's slot of the p buffer; (l - max) / T in fp32 as the CPU, exp in
 *      double rounded to fp32 (glibc's expf differs from that in ~1e-4 of
 *      the inputs, by one ulp; CUDA's expf would differ far more often).
 *   4. top-p (0 < top_p < 1): the CPU bisects a threshold on p/max with 40
 *      steps; its answer depends only on v = the largest p value whose
 *      "mass of all p >= v" reaches top_p * sum. That v is found by a radix
 *      select weighted by mass, and the CPU's 40 bisection steps are replayed
 *      on it (mid <= v <=> the CPU's "mass >= target"), giving its exact
 *      threshold `lo`; kept: p >= lo.
 *   5. min-p: kept p >= min_p (the max's weight is exp(0) = 1).
 *   6. the draw: first id (in id order, as the CPU) whose cumulative kept
 *      weight exceeds u * sum, u the uniform the host drew from rng[i].
 *
 * Masses are fixed point: q = round(p * 2^s), s = 62 - ceil(log2(vocab)), so
 * a row's total fits in 63 bits and every sum, scan and comparison of the
 * select and the draw is exact and independent of thread order (no float
 * atomics, a deterministic result). The draw compares integers exactly:
 * first id with cum > floor(m * S / 2^53), for u = m / 2^53 (every uniform
 * of the stream is such a multiple) and S the kept total.
 *
 * Agreement with the CPU: the kept sets are equal (top-k exactly; top-p and
 * min-p unless a p lies at the threshold within one ulp or a mass equals
 * top_p * sum within rounding) and the uniform is the CPU's, so the ids are
 * equal unless u * sum lies within eps * sum of a cumulative boundary,
 * eps = 1e-6: one fp32 ulp of a weight (<= 1.2e-7, weights <= 1 <= sum)
 * where the exps differ, plus the quantization (< vocab * 2^-(s+1) <= 2e-9).
 * A p below 2^-(s+1) (q = 0) is never drawn (CPU: chance < 1e-13).
 * Non-finite logits are not matched to the CPU.
 *
 * Memory (per CUDA device, on the first call under the lock, kept for the
 * life of the process): per-row parameters and results for SMP_MIN_ROWS
 * rows (device and pinned host), and the p buffer: one fp32 row of the
 * largest vocab seen per resident block (slots = blocks per SM at SMP_NT
 * threads x SMs, 264 on an H200: 137 MB at vocab 129280), not n x vocab
 * (4096 x 129280 would be 2.1 GB for no gain: the resident blocks are all
 * that run at once, each loops over its rows). Growth
 * happens only when a call brings more rows than SMP_MIN_ROWS or a larger
 * vocab than any before (a model's first step; dpep_engine_cuda_sample_reserve
 * does it at create instead), so steps allocate nothing. */
#include "dpep_cuda.cuh"
#include "dpep_engine.h"
#include "engine_cuda.h"

#include <cuda_runtime.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SMP_MAX_DEVICES 64
#define SMP_MIN_ROWS 4096  /* a step's rows at every preset                 */
#define SMP_NT 512         /* threads per block (one row at a time)          */
#define SMP_NW (SMP_NT / 32)
#define HIST_BINS 2048     /* radix digits: 11, 11, 10 bits from the top     */
#define DRAW_ITEMS 4       /* consecutive ids per thread in the draw scan    */
#define TOP_P_BISECT_STEPS 40 /* as sample_cpu.c                             */
#define VOCAB_MAX (1 << 30)

enum { ROW_SKIP = 0, ROW_GREEDY = 1, ROW_DRAW = 2 };

/* Per-row parameters, host to device (32 bytes). */
typedef struct smp_row {
    double u;          /* ROW_DRAW: the uniform in [0, 1) drawn from rng[i]  */
    float temperature;
    float top_p;       /* active in (0, 1)                                   */
    float min_p;       /* active > 0                                         */
    int32_t top_k;     /* active in (0, vocab)                               */
    int32_t mode;      /* ROW_*                                              */
    int32_t pad;
} smp_row;

/* Per-row results, device to host (16 bytes). */
typedef struct smp_out {
    double logprob;
    int32_t id;
    int32_t pad;
} smp_out;

/* ------------------------------------------------------------------------ */
/* Scalar pieces, shared by the kernel and the host model (tests)           */
/* ------------------------------------------------------------------------ */

/* Order-preserving: a larger float gives a larger key (NaNs at the ends). */
static __host__ __device__ __forceinline__ uint32_t f2key(uint32_t bits)
{
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}
static __host__ __device__ __forceinline__ uint32_t key2bits(uint32_t key)
{
    return (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
}

/* The CPU's weight, expf((l - mx) / T): the argument in fp32 exactly as the
 * CPU computes it, the exponential in double rounded once to fp32. */
static __host__ __device__ __forceinline__ float smp_prob(float l, float mx, float t)
{
#ifdef __CUDA_ARCH__
    const float x = __fdiv_rn(__fsub_rn(l, mx), t);
    return __double2float_rn(exp((double)x));
#else
    const float x = (l - mx) / t;
    return (float)exp((double)x);
#endif
}

/* Fixed-point mass of a weight in [0, 1]: exact for p >= 2^(23-s). */
static __host__ __device__ __forceinline__ unsigned long long smp_q(float p, double qscale)
{
#ifdef __CUDA_ARCH__
    return __double2ull_rn((double)p * qscale);
#else
    return (unsigned long long)llrint((double)p * qscale);
#endif
}

/* The CPU's top-p threshold: its bisection, whose test "mass >= target" is
 * "mid <= v" for v the value the weighted select found. */
static __host__ __device__ double smp_top_p_threshold(float v)
{
    double lo = 0.0, hi = 1.0;
    for (int it = 0; it < TOP_P_BISECT_STEPS; it++) {
        const double mid = 0.5 * (lo + hi);
        if (mid <= (double)v) lo = mid;
        else hi = mid;
    }
    return lo;
}

/* Kept after top-p (p >= lo) and min-p (p >= mp), and positive (drawable). */
static __host__ __device__ __forceinline__ bool smp_kept(float p, double lo, float mp)
{
    return p > 0.0f && (double)p >= lo && p >= mp;
}

/* floor(u * S) exactly for u = m / 2^53 (the stream's uniforms). */
static __host__ __device__ __forceinline__ unsigned long long smp_target(double u, unsigned long long s)
{
    const unsigned long long m = (unsigned long long)(u * 9007199254740992.0);
#ifdef __CUDA_ARCH__
    const unsigned long long hi = __umul64hi(m, s);
#else
    const unsigned long long hi = (unsigned long long)(((unsigned __int128)m * s) >> 64);
#endif
    const unsigned long long lo = m * s;
    return (hi << 11) | (lo >> 53);
}

static __host__ __device__ __forceinline__ int radix_shift(int pass) { return pass == 0 ? 21 : pass == 1 ? 10 : 0; }
static __host__ __device__ __forceinline__ int radix_bins(int pass) { return pass == 2 ? 1024 : 2048; }

static double smp_qscale(int vocab)
{
    int bits = 0;
    while ((1ll << bits) < (long long)vocab) bits++;
    return ldexp(1.0, 62 - bits); /* vocab * 2^(62-bits) <= 2^62 */
}

/* ------------------------------------------------------------------------ */
/* Block-wide pieces (SMP_NT threads)                                       */
/* ------------------------------------------------------------------------ */

/* Inclusive scan over the block in thread order; *total: the block's sum.
 * sh: SMP_NW elements; reusable after the return. */
static __device__ unsigned long long block_scan(unsigned long long v, unsigned long long *sh,
                                                unsigned long long *total)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    for (int o = 1; o < 32; o <<= 1) {
        const unsigned long long y = __shfl_up_sync(0xffffffffu, v, o);
        if (lane >= o) v += y;
    }
    if (lane == 31) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        unsigned long long w = lane < SMP_NW ? sh[lane] : 0ull;
        for (int o = 1; o < 32; o <<= 1) {
            const unsigned long long y = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += y;
        }
        if (lane < SMP_NW) sh[lane] = w;
    }
    __syncthreads();
    if (warp > 0) v += sh[warp - 1];
    *total = sh[SMP_NW - 1];
    __syncthreads();
    return v;
}

/* hist[digit] += w for the lanes with `valid`; called by all 32 lanes of the
 * warp together. Lanes with the same digit are summed first (one atomic per
 * distinct digit): the values of a row crowd into a few bins. */
static __device__ __forceinline__ void hist_add(unsigned long long *hist, bool valid, unsigned digit,
                                                unsigned long long w, bool unit)
{
    const unsigned lane = threadIdx.x & 31;
    const unsigned label = valid ? digit : 0xffffffffu;
    const unsigned peers = __match_any_sync(0xffffffffu, label);
    unsigned long long sum;
    if (unit) {
        sum = (unsigned long long)__popc(peers);
    } else if (peers == 0xffffffffu) { /* the whole warp in one bin (uniform branch) */
        sum = w;
        for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    } else { /* each group of peers sums over itself (mask: the group) */
        sum = 0;
        unsigned m = peers;
        while (m) {
            const int src = __ffs(m) - 1;
            m &= m - 1;
            sum += __shfl_sync(peers, w, src);
        }
    }
    if (valid && lane == (unsigned)(__ffs(peers) - 1) && sum) atomicAdd(&hist[digit], sum);
}

struct smp_shared {
    unsigned long long hist[HIST_BINS];
    unsigned long long scan[SMP_NW];
    double dsum[SMP_NW];
    float fv[SMP_NW];
    int iv[SMP_NW];
    unsigned sel;
    unsigned long long above;
    int pick;
};

/* The key of the largest value v among x[0, vocab) such that the weight of
 * all x >= v reaches `target` (weight 1 each: the target-th largest; weight
 * q(x) for x > 0: the top-p boundary). Exact integer sums, so the crossing
 * always exists: target <= total weight (callers). */
template <bool UNIT>
static __device__ uint32_t radix_select(const float *x, int vocab, double target, double qscale,
                                        smp_shared &sh)
{
    uint32_t prefix = 0, mask = 0;
    unsigned long long above = 0; /* weight of the keys above the prefix's range */
#pragma unroll 1
    for (int pass = 0; pass < 3; pass++) {
        const int shift = radix_shift(pass), nb = radix_bins(pass);
        for (int b = threadIdx.x; b < nb; b += SMP_NT) sh.hist[b] = 0;
        __syncthreads();
        for (int base = 0; base < vocab; base += SMP_NT) { /* warp-uniform trip count */
            const int j = base + (int)threadIdx.x;
            bool valid = false;
            unsigned digit = 0;
            unsigned long long w = 0;
            if (j < vocab) {
                const float v = x[j];
                const uint32_t key = f2key(__float_as_uint(v));
                w = UNIT ? 1ull : smp_q(v, qscale);
                valid = (key & mask) == prefix && w != 0;
                digit = (key >> shift) & (unsigned)(nb - 1);
            }
            hist_add(sh.hist, valid, digit, w, UNIT);
        }
        __syncthreads();
        /* thread t owns bins nb-1-4t .. nb-4-4t (descending); the one whose
         * range holds the crossing of `target` picks the bin */
        unsigned long long loc = 0;
        for (int i = 0; i < 4; i++) {
            const int d = nb - 1 - 4 * (int)threadIdx.x - i;
            if (d >= 0) loc += sh.hist[d];
        }
        if (threadIdx.x == 0) sh.sel = 0, sh.above = above; /* unreachable fallback */
        unsigned long long tot;
        const unsigned long long incl = block_scan(loc, sh.scan, &tot);
        unsigned long long c = above + incl - loc;
        if (loc != 0 && (double)c < target && (double)(c + loc) >= target) {
            for (int i = 0; i < 4; i++) {
                const int d = nb - 1 - 4 * (int)threadIdx.x - i;
                if (d < 0) break;
                const unsigned long long h = sh.hist[d];
                if ((double)(c + h) >= target) {
                    sh.sel = (unsigned)d;
                    sh.above = c;
                    break;
                }
                c += h;
            }
        }
        __syncthreads();
        prefix |= sh.sel << shift;
        mask |= (uint32_t)(nb - 1) << shift;
        above = sh.above;
        __syncthreads(); /* before the next pass clears hist / sets sel */
    }
    return prefix;
}

/* Max (ties to the lowest id) over the row: every thread gets both. */
static __device__ void block_argmax(const float *__restrict__ row, int vocab, smp_shared &sh, float *mx,
                                    int *am)
{
    float bv = -INFINITY;
    int bi = vocab; /* no candidate yet */
    for (int j = threadIdx.x; j < vocab; j += SMP_NT) {
        const float v = row[j];
        if (bi == vocab || v > bv) bv = v, bi = j; /* j rises: ties keep the first */
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_down_sync(0xffffffffu, bv, o);
        const int oi = __shfl_down_sync(0xffffffffu, bi, o);
        if (oi < vocab && (bi == vocab || ov > bv || (ov == bv && oi < bi))) bv = ov, bi = oi;
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sh.fv[warp] = bv, sh.iv[warp] = bi;
    __syncthreads();
    if (warp == 0) {
        bv = lane < SMP_NW ? sh.fv[lane] : -INFINITY;
        bi = lane < SMP_NW ? sh.iv[lane] : vocab;
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_down_sync(0xffffffffu, bv, o);
            const int oi = __shfl_down_sync(0xffffffffu, bi, o);
            if (oi < vocab && (bi == vocab || ov > bv || (ov == bv && oi < bi))) bv = ov, bi = oi;
        }
        if (lane == 0) sh.fv[0] = bv, sh.iv[0] = bi;
    }
    __syncthreads();
    *mx = sh.fv[0];
    *am = sh.iv[0];
    __syncthreads();
}

/* Steps 2-6 of the file comment for one row; every thread gets the id. */
static __device__ int draw_row(const float *__restrict__ row, int vocab, float mx, const smp_row &rp,
                               float *pr, double qscale, smp_shared &sh)
{
    float cut = -INFINITY;
    if (rp.top_k > 0 && rp.top_k < vocab)
        cut = __uint_as_float(key2bits(radix_select<true>(row, vocab, (double)rp.top_k, 0.0, sh)));

    unsigned long long s0 = 0;
    for (int j = threadIdx.x; j < vocab; j += SMP_NT) {
        const float l = row[j];
        const float p = l >= cut ? smp_prob(l, mx, rp.temperature) : 0.0f;
        pr[j] = p;
        s0 += smp_q(p, qscale);
    }
    s0 = dpep_block_sum<SMP_NT>(s0, sh.scan); /* syncs: pr is visible to the block */

    double lo = 0.0; /* top-p threshold (0: off) */
    bool filtered = false;
    if (rp.top_p > 0.0f && rp.top_p < 1.0f) {
        const double target = (double)rp.top_p * (double)s0; /* the CPU's top_p * sum */
        const uint32_t key = radix_select<false>(pr, vocab, target, qscale, sh);
        lo = smp_top_p_threshold(__uint_as_float(key2bits(key)));
        filtered = true;
    }
    const float mp = rp.min_p > 0.0f ? rp.min_p : 0.0f;
    filtered |= rp.min_p > 0.0f;
    unsigned long long s = s0;
    if (filtered) {
        s = 0;
        for (int j = threadIdx.x; j < vocab; j += SMP_NT) {
            const float p = pr[j];
            if (smp_kept(p, lo, mp)) s += smp_q(p, qscale);
        }
        s = dpep_block_sum<SMP_NT>(s, sh.scan);
    }

    /* the draw: first id with cum > t, scanning chunks of SMP_NT * DRAW_ITEMS ids */
    const unsigned long long t = smp_target(rp.u, s);
    if (threadIdx.x == 0) sh.pick = -1;
    unsigned long long acc = 0;
    for (int base = 0; base < vocab; base += SMP_NT * DRAW_ITEMS) {
        const int first = base + (int)threadIdx.x * DRAW_ITEMS;
        unsigned long long qi[DRAW_ITEMS], loc = 0;
#pragma unroll
        for (int k = 0; k < DRAW_ITEMS; k++) {
            const int j = first + k;
            const float p = j < vocab ? pr[j] : 0.0f;
            qi[k] = smp_kept(p, lo, mp) ? smp_q(p, qscale) : 0ull;
            loc += qi[k];
        }
        unsigned long long tot;
        const unsigned long long incl = block_scan(loc, sh.scan, &tot); /* syncs: pick = -1 seen */
        if (acc + tot > t) { /* block-uniform */
            unsigned long long c = acc + incl - loc;
            if (c <= t && c + loc > t) {
#pragma unroll
                for (int k = 0; k < DRAW_ITEMS; k++) {
                    c += qi[k];
                    if (c > t) {
                        sh.pick = first + k;
                        break;
                    }
                }
            }
            break;
        }
        acc += tot;
    }
    __syncthreads();
    const int id = sh.pick;
    __syncthreads();
    return id >= 0 ? id : 0; /* nothing kept (min_p > 1): the CPU's id 0 */
}

__global__ void __launch_bounds__(SMP_NT) k_sample(const float *__restrict__ logits, int n, int vocab,
                                               const smp_row *__restrict__ rows, float *pbuf,
                                               double qscale, smp_out *__restrict__ out)
{
    __shared__ smp_shared sh;
    /* this block's slot; written and read back within the kernel, so no
     * __restrict__ on it (read-only-cache loads would not see the writes) */
    float *pr = pbuf ? pbuf + (int64_t)blockIdx.x * vocab : NULL;
    for (int r = blockIdx.x; r < n; r += gridDim.x) {
        const smp_row rp = rows[r];
        if (rp.mode == ROW_SKIP) {
            if (threadIdx.x == 0) out[r].id = -1, out[r].logprob = 0.0;
            continue; /* block-uniform */
        }
        const float *row = logits + (int64_t)r * vocab;
        float mx;
        int am;
        block_argmax(row, vocab, sh, &mx, &am);
        double z = 0;
        for (int j = threadIdx.x; j < vocab; j += SMP_NT) z += exp((double)row[j] - (double)mx);
        z = dpep_block_sum<SMP_NT>(z, sh.dsum);
        const int id = rp.mode == ROW_GREEDY ? am : draw_row(row, vocab, mx, rp, pr, qscale, sh);
        if (threadIdx.x == 0) {
            out[r].id = id;
            out[r].logprob = (double)row[id] - (double)mx - log(z);
        }
        __syncthreads(); /* the next row reuses sh and pr */
    }
}

/* ------------------------------------------------------------------------ */
/* Host: state per device, the call                                         */
/* ------------------------------------------------------------------------ */

typedef struct smp_state {
    bool ready;
    int slots;            /* resident blocks of k_sample: rows in flight      */
    smp_row *rows_d;      /* [cap_rows]                                       */
    smp_row *rows_h;      /* [cap_rows] pinned                                */
    smp_out *out_d;       /* [cap_rows]                                       */
    smp_out *out_h;       /* [cap_rows] pinned                                */
    int64_t cap_rows;
    float *p_d;           /* [slots, cap_vocab] per-block weights             */
    int64_t cap_vocab;
} smp_state;

static smp_state g_smp[SMP_MAX_DEVICES];
static pthread_mutex_t g_smp_lock = PTHREAD_MUTEX_INITIALIZER;

static void smp_fail(int dev, const char *call, const char *err, dpep_status st)
{
    char what[256];
    snprintf(what, sizeof what, "%s on GPU %d", call, dev);
    dpep_engine_cuda_fail("sample", what, err, st);
}

#define SMP_CUDA(call)                                                                           \
    do {                                                                                         \
        cudaError_t rc_ = (call);                                                                \
        if (rc_ != cudaSuccess) {                                                                \
            smp_fail(dev, #call, cudaGetErrorString(rc_), DPEP_ERR_CUDA);                        \
            goto fail;                                                                           \
        }                                                                                        \
    } while (0)

/* The current device's state with room for `rows` rows and, when vocab > 0,
 * the p buffer for `vocab`. Called with g_smp_lock held; NULL on error. */
static smp_state *smp_state_get(int64_t rows, int vocab, int *dev_out)
{
    int dev = -1;
    smp_state *s = NULL;
    SMP_CUDA(cudaGetDevice(&dev));
    *dev_out = dev;
    if (dev < 0 || dev >= SMP_MAX_DEVICES) {
        smp_fail(dev, "cudaGetDevice", "device ordinal beyond SMP_MAX_DEVICES", DPEP_ERR_INTERNAL);
        return NULL;
    }
    s = &g_smp[dev];
    if (!s->ready) {
        int sms = 0, per_sm = 0;
        SMP_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
        SMP_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k_sample, SMP_NT, 0));
        if (sms <= 0 || per_sm <= 0) {
            smp_fail(dev, "cudaOccupancyMaxActiveBlocksPerMultiprocessor", "k_sample cannot be resident",
                     DPEP_ERR_CUDA);
            return NULL;
        }
        s->slots = sms * per_sm;
        s->ready = true;
    }
    if (rows > s->cap_rows) {
        int64_t cap = s->cap_rows > SMP_MIN_ROWS ? s->cap_rows : SMP_MIN_ROWS;
        while (cap < rows) cap *= 2;
        if (s->cap_rows) DPEP_DEBUG("engine cuda sample: row buffers grow to %lld rows on GPU %d",
                                    (long long)cap, dev);
        cudaFree(s->rows_d);
        cudaFree(s->out_d);
        cudaFreeHost(s->rows_h);
        cudaFreeHost(s->out_h);
        s->rows_d = NULL, s->out_d = NULL, s->rows_h = NULL, s->out_h = NULL;
        s->cap_rows = 0;
        SMP_CUDA(cudaMalloc((void **)&s->rows_d, sizeof(smp_row) * (size_t)cap));
        SMP_CUDA(cudaMalloc((void **)&s->out_d, sizeof(smp_out) * (size_t)cap));
        SMP_CUDA(cudaMallocHost((void **)&s->rows_h, sizeof(smp_row) * (size_t)cap));
        SMP_CUDA(cudaMallocHost((void **)&s->out_h, sizeof(smp_out) * (size_t)cap));
        s->cap_rows = cap;
    }
    if (vocab > s->cap_vocab) {
        if (s->cap_vocab) DPEP_DEBUG("engine cuda sample: p buffer grows to vocab %d on GPU %d", vocab, dev);
        cudaFree(s->p_d);
        s->p_d = NULL;
        s->cap_vocab = 0;
        SMP_CUDA(cudaMalloc((void **)&s->p_d, sizeof(float) * (size_t)s->slots * (size_t)vocab));
        s->cap_vocab = vocab;
    }
    return s;
fail:
    return NULL;
}

static bool smp_greedy(const dpep_sampling *sp) { return sp->temperature <= 0.0f || sp->top_k == 1; }

extern "C" dpep_status dpep_engine_cuda_sample_reserve(int vocab)
{
    if (vocab <= 0 || vocab > VOCAB_MAX) {
        DPEP_ERROR("engine cuda sample: vocab %d outside [1, %d]", vocab, VOCAB_MAX);
        return DPEP_ERR_INVALID;
    }
    int dev = -1;
    pthread_mutex_lock(&g_smp_lock);
    smp_state *s = smp_state_get(SMP_MIN_ROWS, vocab, &dev);
    pthread_mutex_unlock(&g_smp_lock);
    return s ? DPEP_OK : DPEP_ERR_CUDA;
}

extern "C" void dpep_engine_cuda_sample(const float *logits, int n, int vocab, const dpep_sampling *const *sp,
                                        uint64_t *const *rng, float *scratch, int32_t *ids, double *logprob)
{
    (void)scratch; /* the device keeps its own */
    for (int i = 0; i < n; i++) ids[i] = -1, logprob[i] = 0;
    if (n <= 0 || vocab <= 0) return;
    bool any = false, any_draw = false;
    for (int i = 0; i < n; i++) {
        if (!sp[i]) continue;
        any = true;
        any_draw |= !smp_greedy(sp[i]);
    }
    if (!any) return;
    int dev = -1;
    smp_state *s = NULL;
    unsigned grid = 0;
    pthread_mutex_lock(&g_smp_lock);
    if (vocab > VOCAB_MAX) {
        smp_fail(dev, "dpep_engine_cuda_sample", "vocab beyond 2^30", DPEP_ERR_INVALID);
        goto fail;
    }
    s = smp_state_get(n, any_draw ? vocab : 0, &dev);
    if (!s) goto fail;
    for (int i = 0; i < n; i++) {
        smp_row *r = &s->rows_h[i];
        *r = smp_row{};
        if (!sp[i]) continue;
        r->temperature = sp[i]->temperature;
        r->top_k = sp[i]->top_k;
        r->top_p = sp[i]->top_p;
        r->min_p = sp[i]->min_p;
        if (smp_greedy(sp[i])) {
            r->mode = ROW_GREEDY; /* no draw: the CPU leaves the stream alone */
        } else {
            r->mode = ROW_DRAW;
            /* the CPU's one draw per row, from a copy of the stream: the
             * request's stream advances only once the sample is done (a
             * failed step must not cost it a draw) */
            uint64_t st = *rng[i];
            r->u = dpep_rng_uniform(&st);
        }
    }
    SMP_CUDA(cudaMemcpy(s->rows_d, s->rows_h, sizeof(smp_row) * (size_t)n, cudaMemcpyHostToDevice));
    grid = (unsigned)(n < s->slots ? n : s->slots);
    SMP_CUDA((k_sample<<<grid, SMP_NT>>>(logits, n, vocab, s->rows_d, any_draw ? s->p_d : NULL,
                                     smp_qscale(vocab), s->out_d),
              cudaGetLastError()));
    SMP_CUDA(cudaMemcpy(s->out_h, s->out_d, sizeof(smp_out) * (size_t)n, cudaMemcpyDeviceToHost));
    for (int i = 0; i < n; i++) {
        if (!sp[i]) continue;
        ids[i] = s->out_h[i].id;
        logprob[i] = s->out_h[i].logprob;
        if (s->rows_h[i].mode == ROW_DRAW) (void)dpep_rng_uniform(rng[i]); /* the same draw, now kept */
    }
    pthread_mutex_unlock(&g_smp_lock);
    return;
fail:
    pthread_mutex_unlock(&g_smp_lock);
    for (int i = 0; i < n; i++)
        if (sp[i]) ids[i] = -1, logprob[i] = NAN;
}

/* ------------------------------------------------------------------------ */
/* Host model of one row (tests): the kernel's steps sequentially, with the  */
/* same keys, digits, crossing rule, fixed point and draw                    */
/* ------------------------------------------------------------------------ */

static uint32_t model_select(const float *x, int vocab, bool unit, double target, double qscale,
                             unsigned long long *hist)
{
    uint32_t prefix = 0, mask = 0;
    unsigned long long above = 0;
    for (int pass = 0; pass < 3; pass++) {
        const int shift = radix_shift(pass), nb = radix_bins(pass);
        for (int b = 0; b < nb; b++) hist[b] = 0;
        for (int j = 0; j < vocab; j++) {
            uint32_t bits;
            memcpy(&bits, &x[j], 4);
            const uint32_t key = f2key(bits);
            const unsigned long long w = unit ? 1ull : smp_q(x[j], qscale);
            if ((key & mask) == prefix && w != 0) hist[(key >> shift) & (uint32_t)(nb - 1)] += w;
        }
        unsigned sel = 0;
        unsigned long long c = above, sel_above = above;
        for (int d = nb - 1; d >= 0; d--) {
            if ((double)(c + hist[d]) >= target) {
                sel = (unsigned)d;
                sel_above = c;
                break;
            }
            c += hist[d];
        }
        prefix |= sel << shift;
        mask |= (uint32_t)(nb - 1) << shift;
        above = sel_above;
    }
    return prefix;
}

static float bits2f(uint32_t b)
{
    float f;
    memcpy(&f, &b, 4);
    return f;
}

extern "C" int dpep_engine_cuda_sample_model(const float *row, int vocab, const dpep_sampling *sp, double u,
                                             float *p)
{
    int am = 0;
    for (int j = 1; j < vocab; j++)
        if (row[j] > row[am]) am = j;
    if (smp_greedy(sp)) return am;
    const float mx = row[am];
    const double qscale = smp_qscale(vocab);
    unsigned long long *hist = (unsigned long long *)malloc(sizeof(unsigned long long) * HIST_BINS);
    float cut = -INFINITY;
    if (sp->top_k > 0 && sp->top_k < vocab)
        cut = bits2f(key2bits(model_select(row, vocab, true, (double)sp->top_k, 0.0, hist)));
    unsigned long long s0 = 0;
    for (int j = 0; j < vocab; j++) {
        p[j] = row[j] >= cut ? smp_prob(row[j], mx, sp->temperature) : 0.0f;
        s0 += smp_q(p[j], qscale);
    }
    double lo = 0.0;
    bool filtered = false;
    if (sp->top_p > 0.0f && sp->top_p < 1.0f) {
        const double target = (double)sp->top_p * (double)s0;
        lo = smp_top_p_threshold(bits2f(key2bits(model_select(p, vocab, false, target, qscale, hist))));
        filtered = true;
    }
    const float mp = sp->min_p > 0.0f ? sp->min_p : 0.0f;
    filtered |= sp->min_p > 0.0f;
    unsigned long long s = s0;
    if (filtered) {
        s = 0;
        for (int j = 0; j < vocab; j++)
            if (smp_kept(p[j], lo, mp)) s += smp_q(p[j], qscale);
    }
    free(hist);
    const unsigned long long t = smp_target(u, s);
    unsigned long long acc = 0;
    for (int j = 0; j < vocab; j++) {
        if (!smp_kept(p[j], lo, mp)) continue;
        acc += smp_q(p[j], qscale);
        if (acc > t) return j;
    }
    return 0; /* nothing kept (min_p > 1): the CPU's id 0 */
}
