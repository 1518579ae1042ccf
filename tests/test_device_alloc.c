/* test_device_alloc.c — the CPU device allocator (runtime/base/device.c):
 * blocks of every size 64-byte aligned and zeroed, writable to the last
 * byte; dpep_device_advise_streamed makes a big block's 2 MiB-aligned
 * interior eligible for transparent huge pages (THPeligible in
 * /proc/self/smaps wherever THP is not "never") while an unadvised block
 * stays on small pages where THP is "madvise" (the KV pool and activations:
 * a first touch there must not zero 2 MiB); small blocks and other devices
 * are left alone; dpep_device_advise_resident maps a fresh block's pages
 * (writing it then takes no page fault, counted by dpep_page_faults, which
 * does count the faults of an unadvised block) and keeps its content;
 * impossible sizes refused with a status, never a crash. */
#define _DEFAULT_SOURCE
#include "dpep_base.h"
#include "dpep_test.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* The smaps entry of the mapping holding p: 1 found (thp_eligible and
 * anon_huge_kb filled when the kernel reports them), 0 not mapped. */
static int smaps_of(const void *p, int *thp_eligible, long *anon_huge_kb)
{
    FILE *f = fopen("/proc/self/smaps", "r");
    if (!f) return -1;
    char line[512];
    int in = 0, found = 0;
    *thp_eligible = -1, *anon_huge_kb = -1;
    while (fgets(line, sizeof line, f)) {
        uintptr_t lo, hi;
        if (sscanf(line, "%" SCNxPTR "-%" SCNxPTR " ", &lo, &hi) == 2 && strchr(line, '-') &&
            strchr(line, '-') < strchr(line, ' ')) {
            in = (uintptr_t)p >= lo && (uintptr_t)p < hi;
            found |= in;
            continue;
        }
        if (!in) continue;
        if (strncmp(line, "THPeligible:", 12) == 0) *thp_eligible = atoi(line + 12);
        if (strncmp(line, "AnonHugePages:", 14) == 0) *anon_huge_kb = atol(line + 14);
    }
    fclose(f);
    return found;
}

static int thp_mode_never(void)
{
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f) return 1; /* no THP in this kernel */
    char buf[128] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, "[never]") != NULL;
}

static int thp_mode_madvise(void)
{
    FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
    if (!f) return 0;
    char buf[128] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, "[madvise]") != NULL;
}

static int all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i]) return 0;
    return 1;
}

int main(void)
{
    dpep_device cpu;
    EXPECT(dpep_device_get(DPEP_DEVICE_CPU, 0, &cpu) == DPEP_OK, "cpu device");

    /* every size: 64-byte aligned, zeroed, writable, reusable after free */
    const size_t sizes[] = {1, 63, 64, 100, 4096, ((size_t)4 << 20) - 1, (size_t)4 << 20,
                            ((size_t)8 << 20) + 5, (size_t)64 << 20};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        void *p = NULL;
        EXPECT(dpep_device_alloc(&cpu, sizes[i], &p) == DPEP_OK && p, "alloc %zu", sizes[i]);
        if (!p) continue;
        EXPECT((uintptr_t)p % DPEP_ARENA_ALIGN == 0, "%zu bytes: %p not 64-byte aligned", sizes[i], p);
        EXPECT(all_zero(p, sizes[i]), "%zu bytes: not zeroed", sizes[i]);
        memset(p, 0xA5, sizes[i]);
        dpep_device_free(&cpu, p);
    }

    /* advised blocks: the 2 MiB-aligned interior THP-eligible */
    const int never = thp_mode_never(), madv = thp_mode_madvise();
    if (never) printf("note: transparent huge pages are off in this kernel: eligibility not checked\n");
    const size_t big[] = {((size_t)8 << 20) + 5, (size_t)64 << 20};
    const uintptr_t huge = (uintptr_t)2 << 20;
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        void *p = NULL, *q = NULL;
        EXPECT(dpep_device_alloc(&cpu, big[i], &p) == DPEP_OK && p, "alloc %zu", big[i]);
        EXPECT(dpep_device_alloc(&cpu, big[i], &q) == DPEP_OK && q, "alloc %zu", big[i]);
        if (!p || !q) continue;
        dpep_device_advise_streamed(&cpu, p, big[i]);
        memset(p, 0x5A, big[i]); /* the advice changes nothing a caller sees */
        memset(q, 0x5A, big[i]);
        const char *mid = (const char *)(((uintptr_t)p + huge - 1) & ~(huge - 1));
        const char *qmid = (const char *)(((uintptr_t)q + huge - 1) & ~(huge - 1));
        int elig, qelig;
        long huge_kb, qhuge_kb;
        EXPECT(smaps_of(mid, &elig, &huge_kb) == 1, "%zu bytes: block not found in smaps", big[i]);
        EXPECT(smaps_of(qmid, &qelig, &qhuge_kb) == 1, "%zu bytes: block not found in smaps", big[i]);
        if (!never && elig >= 0)
            EXPECT(elig == 1, "%zu bytes advised: interior not THP-eligible (THPeligible %d)", big[i], elig);
        if (madv && qelig >= 0)
            EXPECT(qelig == 0, "%zu bytes not advised: THP-eligible under \"madvise\" (THPeligible %d)",
                   big[i], qelig);
        printf("%zu bytes advised: THPeligible %d, AnonHugePages %ld kB; not advised: THPeligible %d, "
               "AnonHugePages %ld kB\n", big[i], elig, huge_kb, qelig, qhuge_kb);
        /* dpep_pages_huge_bytes: the block's share of its mapping's huge
         * pages — some exactly when smaps reports some, at most the block */
        const int64_t hb = dpep_pages_huge_bytes(p, big[i]), qhb = dpep_pages_huge_bytes(q, big[i]);
        if (huge_kb >= 0)
            EXPECT(hb >= 0 && (hb > 0) == (huge_kb > 0) && hb <= (int64_t)big[i],
                   "%zu bytes advised: dpep_pages_huge_bytes %lld with AnonHugePages %ld kB", big[i],
                   (long long)hb, huge_kb);
        if (qhuge_kb >= 0)
            EXPECT(qhb >= 0 && (qhb > 0) == (qhuge_kb > 0) && qhb <= (int64_t)big[i],
                   "%zu bytes not advised: dpep_pages_huge_bytes %lld with AnonHugePages %ld kB",
                   big[i], (long long)qhb, qhuge_kb);
        EXPECT(dpep_pages_huge_bytes(p, 0) == 0, "dpep_pages_huge_bytes of an empty range");
        for (size_t k = 0; k < big[i]; k += 4096)
            if (((unsigned char *)p)[k] != 0x5A) {
                EXPECT(0, "%zu bytes advised: byte %zu changed", big[i], k);
                break;
            }
        dpep_device_free(&cpu, p);
        dpep_device_free(&cpu, q);
    }
    /* no-ops: a small block, NULL, no device */
    void *s4 = NULL;
    EXPECT(dpep_device_alloc(&cpu, 4096, &s4) == DPEP_OK, "alloc 4096");
    dpep_device_advise_streamed(&cpu, s4, 4096);
    dpep_device_advise_streamed(&cpu, NULL, (size_t)64 << 20);
    dpep_device_advise_streamed(NULL, s4, 4096);
    dpep_device_free(&cpu, s4);

    /* resident: a fresh 16 MiB block written whole after the advice takes
     * (almost) no fault; its twin without the advice takes one per page
     * (per huge page under THP "always") */
    {
        const size_t n = (size_t)16 << 20, pages = n / 4096;
        void *r = NULL, *u = NULL;
        EXPECT(dpep_device_alloc(&cpu, n, &r) == DPEP_OK && r, "alloc %zu", n);
        EXPECT(dpep_device_alloc(&cpu, n, &u) == DPEP_OK && u, "alloc %zu", n);
        if (r && u) {
            ((unsigned char *)r)[n - 1] = 0x77; /* content kept by the advice */
            const int64_t f0 = dpep_page_faults();
            EXPECT(dpep_device_advise_resident(&cpu, r, n), "advise_resident refused a CPU block");
            const int64_t f1 = dpep_page_faults();
            memset(r, 0x33, n - 1);
            const int64_t f2 = dpep_page_faults();
            memset(u, 0x33, n);
            const int64_t f3 = dpep_page_faults();
            printf("resident: %lld faults while advising, %lld writing it; unadvised block: %lld "
                   "(%zu pages)\n", (long long)(f1 - f0), (long long)(f2 - f1), (long long)(f3 - f2),
                   pages);
            EXPECT(((unsigned char *)r)[n - 1] == 0x77, "advise_resident changed the block's content");
            EXPECT(f2 - f1 <= 16, "writing a resident block took %lld page faults (expected ~0)",
                   (long long)(f2 - f1));
            /* one per 4 KiB page, or per 2 MiB where THP is "always" */
            EXPECT(f3 - f2 >= (int64_t)(n >> 21) && f3 - f2 > f2 - f1,
                   "writing a fresh block took %lld page faults: the counter does not see them "
                   "(expected %zu to %zu)", (long long)(f3 - f2), n >> 21, pages);
        }
        dpep_device_free(&cpu, r);
        dpep_device_free(&cpu, u);
        /* NULL device: host memory; no pointer or no bytes: nothing */
        void *h = malloc(1 << 20);
        EXPECT(h && dpep_device_advise_resident(NULL, h, 1 << 20), "advise_resident(NULL device) on host memory");
        free(h);
        EXPECT(!dpep_device_advise_resident(&cpu, NULL, 4096), "advise_resident(NULL block)");
        char one[64];
        EXPECT(!dpep_device_advise_resident(&cpu, one, 0), "advise_resident(0 bytes)");
    }

    /* impossible sizes: a status, no crash */
    void *q = NULL;
    EXPECT(dpep_device_alloc(&cpu, 0, &q) == DPEP_ERR_INVALID, "0 bytes refused");
    EXPECT(dpep_device_alloc(&cpu, SIZE_MAX, &q) == DPEP_ERR_INVALID, "SIZE_MAX refused");
    dpep_status st = dpep_device_alloc(&cpu, SIZE_MAX / 4, &q);
    EXPECT(st == DPEP_ERR_NOMEM, "SIZE_MAX/4: got %s, expected out of memory", dpep_status_string(st));
    dpep_device_free(&cpu, NULL);
    return dpep_test_summary();
}
