/* dpep_test.h — the tiny in-house test helper shared by the unit tests:
 * pass/fail counters, EXPECT(cond, fmt, ...) and the closing line
 * "N passed, M failed" that CI reads. */
#ifndef DPEP_TEST_H
#define DPEP_TEST_H

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

/* Prints the closing line; returns the process exit code. */
static inline int dpep_test_summary(void)
{
    printf("%d passed, %d failed\n", g_pass, g_fail);
    return g_fail ? 1 : 0;
}

#endif
