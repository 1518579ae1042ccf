/* device.c — the device table and the CPU allocator (host memory, 64-byte
 * aligned, zeroed; blocks streamed whole every step advised onto huge
 * pages). The CUDA allocator lives in vendor_cuda.cu when this build has
 * CUDA; without it, asking for a CUDA device is UNSUPPORTED. */
#define _DEFAULT_SOURCE /* madvise */
#include "dpep_base.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

/* Zeroed through calloc, so that big blocks (KV pools, activations) come from
 * fresh zero pages the kernel maps on first touch, as the run uses them;
 * aligned by hand (blocks of DPEP_PAGE_ALIGN_MIN or more to a DPEP_PAGE,
 * others to DPEP_ARENA_ALIGN), the block's start kept in the word before
 * it. */
static dpep_status cpu_alloc(const dpep_device *d, size_t bytes, void **out)
{
    (void)d;
    const size_t al = bytes >= DPEP_PAGE_ALIGN_MIN ? DPEP_PAGE : DPEP_ARENA_ALIGN;
    if (bytes == 0 || bytes > SIZE_MAX - al - sizeof(void *)) return DPEP_ERR_INVALID;
    void *raw = calloc(1, bytes + al + sizeof(void *));
    if (!raw) return DPEP_ERR_NOMEM;
    uintptr_t a = ((uintptr_t)raw + sizeof(void *) + al - 1) & ~(uintptr_t)(al - 1);
    ((void **)a)[-1] = raw;
    *out = (void *)a;
    return DPEP_OK;
}

static void cpu_free(const dpep_device *d, void *p)
{
    (void)d;
    if (p) free(((void **)p)[-1]);
}

/* Transparent huge pages for a block the step reads whole (the weights):
 * where THP is "madvise" (Debian's default) a heap block gets 4 KiB pages,
 * and a decode step that streams every weight once then takes a TLB miss
 * per page per row stream, each a two-level walk under a hypervisor
 * (measured on the 2-core VM: batch-1 decode +12 %; numpy advises its big
 * arrays the same way). Only the 2 MiB-aligned interior is advised; call it
 * before the block is written (pages already touched stay small until
 * khugepaged merges them). Not for blocks touched a little at a time (KV
 * pools, activations): there a first touch zeroes 2 MiB at once, which
 * landed in the first prefill step (prefill of 32 tokens -12 %). */
void dpep_device_advise_streamed(const dpep_device *d, void *p, size_t bytes)
{
    const uintptr_t huge = (uintptr_t)2 << 20;
    if (!d || d->kind != DPEP_DEVICE_CPU || !p || bytes < 2 * huge) return;
    const uintptr_t a = ((uintptr_t)p + huge - 1) & ~(huge - 1);
    const uintptr_t e = ((uintptr_t)p + bytes) & ~(huge - 1);
#ifdef MADV_HUGEPAGE
    if (e > a) (void)madvise((void *)a, e - a, MADV_HUGEPAGE); /* advice: no THP, no change */
#else
    (void)a, (void)e;
#endif
}

int64_t dpep_pages_huge_bytes(const void *p, size_t bytes)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    const uintptr_t a = (uintptr_t)p, e = a + bytes;
    uintptr_t lo = 0, hi = 0;
    double huge = 0.0;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        unsigned long x, y;
        char c;
        if (sscanf(line, "%lx-%lx %c", &x, &y, &c) == 3) {
            lo = x, hi = y; /* a mapping's header: its counters follow */
            continue;
        }
        long kb = 0;
        if (sscanf(line, "AnonHugePages: %ld kB", &kb) != 1 && sscanf(line, "ShmemPmdMapped: %ld kB", &kb) != 1 &&
            sscanf(line, "FilePmdMapped: %ld kB", &kb) != 1)
            continue;
        const uintptr_t o0 = lo > a ? lo : a, o1 = hi < e ? hi : e;
        if (kb <= 0 || o1 <= o0 || hi <= lo) continue;
        huge += 1024.0 * (double)kb * (double)(o1 - o0) / (double)(hi - lo);
    }
    fclose(f);
    return (int64_t)huge;
}

int dpep_pages_populate(void *p, size_t bytes)
{
    if (!p || bytes == 0) return 0;
#ifdef MADV_POPULATE_WRITE
    const uintptr_t pg = DPEP_PAGE;
    const uintptr_t a = (uintptr_t)p & ~(pg - 1);
    const uintptr_t e = ((uintptr_t)p + bytes + pg - 1) & ~(pg - 1);
    return madvise((void *)a, e - a, MADV_POPULATE_WRITE) == 0 ? 0 : errno;
#else
    return EINVAL;
#endif
}

bool dpep_device_advise_resident(const dpep_device *d, void *p, size_t bytes)
{
    if ((d && d->kind != DPEP_DEVICE_CPU) || !p || bytes == 0) return false;
    const int err = dpep_pages_populate(p, bytes);
    if (err == 0) return true;
    if (err != EINVAL) return false; /* no memory for it now: the step's faults will tell */
    /* EINVAL: a kernel before 5.14; the first page may hold bytes before p:
     * write only inside the block */
    const uintptr_t pg = DPEP_PAGE;
    volatile unsigned char *b = (volatile unsigned char *)p;
    for (uintptr_t q = (uintptr_t)p; q < (uintptr_t)p + bytes; q = (q & ~(pg - 1)) + pg)
        b[q - (uintptr_t)p] = 0;
    return true;
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
