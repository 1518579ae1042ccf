/* dpep_test_device.h — device buffers for the tests that compare a device's
 * kernels with the CPU's (test_*_cuda, test_engine_ops): allocation, copies
 * and poisoning through the device's own allocator (dpep_device_ops: no CUDA
 * headers needed). Every buffer is tracked: dtest_free frees one,
 * dtest_free_all the rest. A failed call prints a FAIL line and exits, so a
 * test never compares against memory it could not fill.
 *
 * The test sets g_tdev (dpep_device_get) before the first call. */
#ifndef DPEP_TEST_DEVICE_H
#define DPEP_TEST_DEVICE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dpep_base.h"

static dpep_device g_tdev;
#define DTEST_MAX_BUFS 4096
static void *g_tbufs[DTEST_MAX_BUFS];
static int g_tnbufs;

/* `bytes` of device memory (at least 4: empty cases still get a pointer). */
static inline void *dtest_alloc(size_t bytes)
{
    void *p = NULL;
    if (g_tnbufs == DTEST_MAX_BUFS || dpep_device_alloc(&g_tdev, bytes ? bytes : 4, &p) != DPEP_OK) {
        printf("FAIL: cannot allocate %zu bytes on the device\n", bytes);
        exit(1);
    }
    g_tbufs[g_tnbufs++] = p;
    return p;
}

/* A device copy of `bytes` of host memory (host NULL: only allocated). */
static inline void *dtest_up(const void *host, size_t bytes)
{
    void *p = dtest_alloc(bytes);
    if (host && bytes && g_tdev.ops->to_device(&g_tdev, p, host, bytes) != DPEP_OK) {
        printf("FAIL: cannot copy %zu bytes to the device\n", bytes);
        exit(1);
    }
    return p;
}

static inline void dtest_down(void *host, const void *dev, size_t bytes)
{
    if (bytes && g_tdev.ops->to_host(&g_tdev, host, dev, bytes) != DPEP_OK) {
        printf("FAIL: cannot copy %zu bytes to the host\n", bytes);
        exit(1);
    }
}

/* 0xFF over max(bytes, 1) bytes: NaN as floats, -1 as ints. */
static inline void dtest_poison(void *dev, size_t bytes)
{
    if (!bytes) bytes = 1;
    unsigned char *h = malloc(bytes);
    if (!h) {
        printf("FAIL: out of host memory poisoning %zu bytes\n", bytes);
        exit(1);
    }
    memset(h, 0xFF, bytes);
    if (g_tdev.ops->to_device(&g_tdev, dev, h, bytes) != DPEP_OK) {
        printf("FAIL: cannot poison %zu bytes of device memory\n", bytes);
        exit(1);
    }
    free(h);
}

static inline void dtest_free(void *dev)
{
    for (int i = 0; i < g_tnbufs; i++)
        if (g_tbufs[i] == dev) {
            dpep_device_free(&g_tdev, dev);
            g_tbufs[i] = g_tbufs[--g_tnbufs];
            return;
        }
}

static inline void dtest_free_all(void)
{
    for (int i = 0; i < g_tnbufs; i++) dpep_device_free(&g_tdev, g_tbufs[i]);
    g_tnbufs = 0;
}

#endif
