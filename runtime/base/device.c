/* device.c — the device table and the CPU allocator (host memory, 64-byte
 * aligned, zeroed; big blocks on transparent huge pages). The CUDA
 * allocator lives in vendor_cuda.cu when this build has CUDA; without it,
 * asking for a CUDA device is UNSUPPORTED. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, madvise */
#include "dpep_base.h"

#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

/* Blocks of DPEP_HUGE_MIN bytes or more (weights, KV pools, activation
 * blocks) are anonymous mappings aligned to 2 MiB and advised
 * MADV_HUGEPAGE: where transparent huge pages are "madvise" (Debian's
 * default) a calloc'd block gets 4 KiB pages, and a decode step that streams
 * every weight once then takes a TLB miss per page per row stream, each a
 * two-level walk under a hypervisor (numpy advises its big arrays the same
 * way). Fresh mappings are zero pages mapped on first touch, as the run uses
 * them. Smaller blocks come from calloc. Either way the block is aligned by
 * hand; the two words before it keep the start of what was allocated and
 * the mapping's length (0: calloc'd). */
#define DPEP_HUGE_MIN ((size_t)4 << 20)
#define DPEP_HUGE_PAGE ((size_t)2 << 20)
#define HDR (2 * sizeof(void *))

static dpep_status cpu_alloc(const dpep_device *d, size_t bytes, void **out)
{
    (void)d;
    if (bytes == 0 || bytes > SIZE_MAX - DPEP_HUGE_PAGE - DPEP_ARENA_ALIGN - HDR)
        return DPEP_ERR_INVALID;
    if (bytes >= DPEP_HUGE_MIN) {
        const size_t len = bytes + DPEP_HUGE_PAGE + HDR;
        void *raw = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (raw != MAP_FAILED) {
            uintptr_t a = ((uintptr_t)raw + HDR + DPEP_HUGE_PAGE - 1) & ~(uintptr_t)(DPEP_HUGE_PAGE - 1);
#ifdef MADV_HUGEPAGE
            /* advice only: a kernel without THP keeps 4 KiB pages */
            (void)madvise((void *)a, bytes, MADV_HUGEPAGE);
#endif
            ((void **)a)[-1] = raw;
            ((size_t *)a)[-2] = len;
            *out = (void *)a;
            return DPEP_OK;
        }
        /* no mapping: try the heap, which reports the shortage the same way */
    }
    void *raw = calloc(1, bytes + DPEP_ARENA_ALIGN + HDR);
    if (!raw) return DPEP_ERR_NOMEM;
    uintptr_t a = ((uintptr_t)raw + HDR + DPEP_ARENA_ALIGN - 1) & ~(uintptr_t)(DPEP_ARENA_ALIGN - 1);
    ((void **)a)[-1] = raw;
    ((size_t *)a)[-2] = 0;
    *out = (void *)a;
    return DPEP_OK;
}

static void cpu_free(const dpep_device *d, void *p)
{
    (void)d;
    if (!p) return;
    void *raw = ((void **)p)[-1];
    const size_t len = ((size_t *)p)[-2];
    if (len)
        munmap(raw, len);
    else
        free(raw);
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
