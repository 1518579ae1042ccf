/* norm.c — the model's RMSNorm over rows, shared by the engine's CPU table
 * and attn/'s latent norms (one definition, so every RMSNorm of dpep rounds
 * the same way). */
#include "dpep_model.h"

#include <math.h>

/* Rows are independent: a parallel loop gives bit-identical results. */
#define RMSNORM_PARALLEL_ROWS 64

void dpep_rmsnorm_rows(const float *x, int64_t ldx, const float *g, int64_t rows, int n,
                       double eps, float *y, int64_t ldy)
{
#pragma omp parallel for schedule(static) if (rows > RMSNORM_PARALLEL_ROWS)
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * ldx;
        float *yr = y + r * ldy;
        double ss = 0;
        for (int j = 0; j < n; j++) ss += (double)xr[j] * xr[j];
        float inv = (float)(1.0 / sqrt(ss / n + eps));
        for (int j = 0; j < n; j++) yr[j] = g[j] * (xr[j] * inv);
    }
}
