/* device.c — the device table and the CPU allocator (host memory, 64-byte
 * aligned, zeroed). The CUDA allocator lives in vendor_cuda.cu when this
 * build has CUDA; without it, asking for a CUDA device is UNSUPPORTED. */
#include "dpep_base.h"

#include <stdlib.h>
#include <stdint.h>
#include <string.h>

/* Zeroed through calloc, so that big blocks (KV pools, activations) come from
 * fresh zero pages the kernel maps on first touch, as the run uses them;
 * aligned by hand, the block's start kept in the word before it. */
static dpep_status cpu_alloc(const dpep_device *d, size_t bytes, void **out)
{
    (void)d;
    if (bytes == 0 || bytes > SIZE_MAX - DPEP_ARENA_ALIGN - sizeof(void *)) return DPEP_ERR_INVALID;
    void *raw = calloc(1, bytes + DPEP_ARENA_ALIGN + sizeof(void *));
    if (!raw) return DPEP_ERR_NOMEM;
    uintptr_t a = ((uintptr_t)raw + sizeof(void *) + DPEP_ARENA_ALIGN - 1) &
                  ~(uintptr_t)(DPEP_ARENA_ALIGN - 1);
    ((void **)a)[-1] = raw;
    *out = (void *)a;
    return DPEP_OK;
}

static void cpu_free(const dpep_device *d, void *p)
{
    (void)d;
    if (p) free(((void **)p)[-1]);
}

static dpep_status cpu_copy(const dpep_device *d, void *dst, const void *src, size_t bytes)
{
    (void)d;
    if (bytes) memcpy(dst, src, bytes);
    return DPEP_OK;
}

static const dpep_device_ops cpu_ops = {"cpu", cpu_alloc, cpu_free, cpu_copy, cpu_copy};

#ifdef DPEP_HAVE_CUDA
extern const dpep_device_ops dpep_device_cuda_ops; /* vendor_cuda.cu */
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
