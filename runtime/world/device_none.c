/* device_none.c — device query for builds without
 * CUDA. */
#include "dpep_world.h"

dpep_status dpep_cuda_device_count(int *count, char *why, size_t why_len)
{
    (void)count;
    snprintf(why, why_len, "this build of dpep has no CUDA support (configured with "
                           "DPEP_CUDA=OFF or without nvcc)");
    return DPEP_ERR_NO_DEVICE;
}

dpep_status dpep_cuda_pci_bus_id(int dev, char *buf, size_t len)
{
    (void)dev;
    if (len) buf[0] = '\0';
    return DPEP_ERR_NO_DEVICE;
}

dpep_status dpep_cuda_set_device(int dev)
{
    (void)dev;
    return DPEP_ERR_NO_DEVICE;
}

dpep_status dpep_cuda_mem_info(int dev, size_t *free_bytes, size_t *total_bytes)
{
    (void)dev;
    *free_bytes = *total_bytes = 0;
    return DPEP_ERR_NO_DEVICE;
}
