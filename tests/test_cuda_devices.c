/* test_cuda_devices.c — the device query works with and without a GPU; skips
 * (exit 77) with the reason printed when none is usable. */
#include "dpep_world.h"

#include <string.h>

int main(void)
{
    int n = -1;
    char why[256] = "";
    dpep_status st = dpep_cuda_device_count(&n, why, sizeof why);
    if (st == DPEP_ERR_NO_DEVICE) {
        if (!why[0] || n != -1) {
            fprintf(stderr, "FAIL: no device but no reason given or count written\n");
            return 1;
        }
        printf("SKIP: %s\n", why);
        return 77;
    }
    if (st != DPEP_OK || n < 1) {
        fprintf(stderr, "FAIL: status %s, count %d\n", dpep_status_string(st), n);
        return 1;
    }
    printf("OK: %d CUDA device(s)\n", n);
    return 0;
}
