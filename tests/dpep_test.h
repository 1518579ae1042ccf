/* dpep_test.h — the tiny in-house test helper shared by the unit tests:
 * pass/fail counters, EXPECT(cond, fmt, ...), the closing line
 * "N passed, M failed" that CI reads, and a seeded random source for
 * test inputs (xorshift64; never zeros from dpep_test_fill). */
#ifndef DPEP_TEST_H
#define DPEP_TEST_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

static int g_pass, g_fail;

#define EXPECT(cond, ...)                                                                     \
    do {                                                                                      \
        if (cond) {                                                                           \
            g_pass++;                                                                         \
        } else {                                                                              \
            g_fail++;                                                                         \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);                                       \
            printf(__VA_ARGS__);                                                              \
            printf("\n");                                                                     \
        }                                                                                     \
    } while (0)

/* Uniform in [0, 1) from the stream *s (a nonzero seed). */
static inline double dpep_test_urand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (double)(*s >> 11) / 9007199254740992.0;
}
/* p[0..n) uniform in [lo, hi], an exact 0 replaced by 1e-3 (inputs are
 * never zeros: a kernel that skips work must not pass by accident). */
static inline void dpep_test_fill(uint64_t *s, float *p, size_t n, double lo, double hi)
{
    for (size_t i = 0; i < n; i++) {
        float v = (float)(lo + (hi - lo) * dpep_test_urand(s));
        p[i] = v == 0.0f ? 1e-3f : v;
    }
}

/* The value of an FP8 E4M3 byte (0x7f / 0xff: NaN), as the checkpoint
 * reader decodes it. */
static inline float dpep_test_fp8_e4m3(unsigned char b)
{
    const int sg = b >> 7, e = (b >> 3) & 15, mt = b & 7;
    if (e == 15 && mt == 7) return __builtin_nanf("");
    float v = (float)mt / 8.0f;
    if (e == 0) v *= 1.0f / 64.0f; /* subnormal: m/8 * 2^-6 */
    else {
        v += 1.0f;
        for (int i = 7; i < e; i++) v *= 2.0f;
        for (int i = e; i < 7; i++) v *= 0.5f;
    }
    return sg ? -v : v;
}
/* A random FP8 byte, neither zero nor NaN. */
static inline unsigned char dpep_test_fp8_byte(uint64_t *s)
{
    unsigned char b;
    do b = (unsigned char)(dpep_test_urand(s) * 256);
    while ((b & 0x7f) == 0x7f || (b & 0x7f) == 0);
    return b;
}

/* A random FP8 matrix rows x cols (bytes neither zero nor NaN) with one
 * scale in [lo, hi) per 128 x 128 block: bytes[rows * cols],
 * scales[ceil(rows / 128) * ceil(cols / 128)] (row-major, the returned
 * number of columns) and values[rows * cols] = fp8 x scale in float, as the
 * checkpoint reader computes them. */
static inline int64_t dpep_test_fp8_matrix(uint64_t *s, int rows, int cols, double lo, double hi,
                                           unsigned char *bytes, float *scales, float *values)
{
    const int64_t sr = (rows + 127) / 128, sc = (cols + 127) / 128;
    for (int64_t i = 0; i < (int64_t)rows * cols; i++) bytes[i] = dpep_test_fp8_byte(s);
    for (int64_t i = 0; i < sr * sc; i++) scales[i] = (float)(lo + (hi - lo) * dpep_test_urand(s));
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++)
            values[(size_t)r * cols + c] =
                dpep_test_fp8_e4m3(bytes[(size_t)r * cols + c]) * scales[(r / 128) * sc + c / 128];
    return sc;
}

/* Prints the closing line; returns the process exit code. */
static inline int dpep_test_summary(void)
{
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}

#endif
