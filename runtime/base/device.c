/* device.c — the device table and the CPU allocator (host memory, 64-byte
 * aligned, zeroed). The CUDA allocator lives in device_cuda.cu when this
 * build has CUDA; without it, asking for a CUDA device is UNSUPPORTED. */
#include "dpep_base.h"

#include <stdlib.h>
#include <string.h>

static dpep_status cpu_alloc(const dpep_device *d, size_t bytes, void **out)
{
    (void)d;
    if (bytes == 0) return DPEP_ERR_INVALID;
    size_t n = (bytes + DPEP_ARENA_ALIGN - 1) & ~(size_t)(DPEP_ARENA_ALIGN - 1);
    void *p = aligned_alloc(DPEP_ARENA_ALIGN, n);
    if (!p) return DPEP_ERR_NOMEM;
    memset(p, 0, n);
    *out = p;
    return DPEP_OK;
}

static void cpu_free(const dpep_device *d, void *p)
{
    (void)d;
    free(p);
}

static dpep_status cpu_copy(const dpep_device *d, void *dst, const void *src, size_t bytes)
{
    (void)d;
    if (bytes) memcpy(dst, src, bytes);
    return DPEP_OK;
}

static const dpep_device_ops cpu_ops = {"cpu", cpu_alloc, cpu_free, cpu_copy, cpu_copy};

#ifdef DPEP_HAVE_CUDA
extern const dpep_device_ops dpep_device_cuda_ops; /* device_cuda.cu */
#endif

const char *dpep_device_kind_name(dpep_device_kind k)
{
    switch (k) {
    case DPEP_DEVICE_AUTO: return "auto";
    case DPEP_DEVICE_CPU: return "cpu";
    case DPEP_DEVICE_CUDA: return "cuda";
    }
    return "?";
}

dpep_status dpep_device_get(dpep_device_kind kind, int ordinal, dpep_device *out)
{
    dpep_device d = {kind, -1, NULL};
    switch (kind) {
    case DPEP_DEVICE_CPU:
        d.ops = &cpu_ops;
        break;
    case DPEP_DEVICE_CUDA:
#ifdef DPEP_HAVE_CUDA
        if (ordinal < 0) return DPEP_ERR_INVALID;
        d.ordinal = ordinal;
        d.ops = &dpep_device_cuda_ops;
        break;
#else
        (void)ordinal;
        return DPEP_ERR_UNSUPPORTED;
#endif
    default:
        return DPEP_ERR_INVALID;
    }
    *out = d;
    return DPEP_OK;
}
