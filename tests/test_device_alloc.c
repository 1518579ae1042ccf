/* test_device_alloc.c — the CPU device allocator (runtime/base/device.c):
 * small blocks 64-byte aligned and zeroed; blocks of 4 MiB or more 2 MiB
 * aligned, zeroed, in a mapping of their own that the kernel may back with
 * transparent huge pages (THPeligible in /proc/self/smaps wherever THP is
 * not "never"), and gone from the address space once freed; impossible
 * sizes refused with a status, never a crash. */
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

    /* small blocks: the heap, 64-byte aligned, zeroed, reusable after free */
    const size_t small[] = {1, 63, 64, 100, 4096, ((size_t)4 << 20) - 1};
    for (size_t i = 0; i < sizeof small / sizeof small[0]; i++) {
        void *p = NULL;
        EXPECT(dpep_device_alloc(&cpu, small[i], &p) == DPEP_OK && p, "alloc %zu", small[i]);
        if (!p) continue;
        EXPECT((uintptr_t)p % DPEP_ARENA_ALIGN == 0, "%zu bytes: %p not 64-byte aligned", small[i], p);
        EXPECT(all_zero(p, small[i]), "%zu bytes: not zeroed", small[i]);
        memset(p, 0xA5, small[i]);
        dpep_device_free(&cpu, p);
    }

    /* big blocks: 2 MiB aligned, zeroed, THP-eligible, unmapped on free */
    const int never = thp_mode_never();
    if (never) printf("note: transparent huge pages are off in this kernel: eligibility not checked\n");
    const size_t big[] = {(size_t)4 << 20, ((size_t)8 << 20) + 5, (size_t)64 << 20};
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        void *p = NULL;
        EXPECT(dpep_device_alloc(&cpu, big[i], &p) == DPEP_OK && p, "alloc %zu", big[i]);
        if (!p) continue;
        EXPECT((uintptr_t)p % ((uintptr_t)2 << 20) == 0, "%zu bytes: %p not 2 MiB aligned", big[i], p);
        EXPECT(all_zero(p, big[i]), "%zu bytes: not zeroed", big[i]);
        memset(p, 0x5A, big[i]); /* every byte writable, up to the last */
        int elig;
        long huge_kb;
        EXPECT(smaps_of(p, &elig, &huge_kb) == 1, "%zu bytes: block not found in smaps", big[i]);
        EXPECT(smaps_of((char *)p + big[i] - 1, &elig, &huge_kb) == 1, "%zu bytes: end not mapped", big[i]);
        if (!never && elig >= 0)
            EXPECT(elig == 1, "%zu bytes: mapping not THP-eligible (THPeligible %d)", big[i], elig);
        printf("%zu bytes at %p: THPeligible %d, AnonHugePages %ld kB\n", big[i], p, elig, huge_kb);
        dpep_device_free(&cpu, p);
        EXPECT(smaps_of(p, &elig, &huge_kb) == 0, "%zu bytes: still mapped after free", big[i]);
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
