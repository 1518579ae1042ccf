/* device_cuda.cu — CUDA device query: count, PCI bus ids (for placement),
 * the current device. The vendor error strings live in base/. */
#include "dpep_world.h"

#include <cuda_runtime.h>
#include <stdlib.h>

extern "C" dpep_status dpep_cuda_device_count(int *count, char *why, size_t why_len)
{
    int n = 0;
    cudaError_t rc = cudaGetDeviceCount(&n);
    if (rc != cudaSuccess) {
        /* No driver or no device is the normal case on CPU machines: report it
         * to the caller rather than logging an error. */
        snprintf(why, why_len, "no usable CUDA device: %s (%s)", cudaGetErrorString(rc),
                 cudaGetErrorName(rc));
        (void)cudaGetLastError();
        return DPEP_ERR_NO_DEVICE;
    }
    if (n == 0) {
        const char *vis = getenv("CUDA_VISIBLE_DEVICES");
        snprintf(why, why_len, "no CUDA device visible (CUDA_VISIBLE_DEVICES=%s)",
                 vis ? vis : "unset");
        return DPEP_ERR_NO_DEVICE;
    }
    *count = n;
    return DPEP_OK;
}

extern "C" dpep_status dpep_cuda_pci_bus_id(int dev, char *buf, size_t len)
{
    DPEP_CHECK_CUDA(cudaDeviceGetPCIBusId(buf, (int)len, dev));
    return DPEP_OK;
}

extern "C" dpep_status dpep_cuda_set_device(int dev)
{
    DPEP_CHECK_CUDA(cudaSetDevice(dev));
    return DPEP_OK;
}

extern "C" dpep_status dpep_cuda_mem_info(int dev, size_t *free_bytes, size_t *total_bytes)
{
    int cur = -1;
    DPEP_CHECK_CUDA(cudaGetDevice(&cur));
    if (cur != dev) DPEP_CHECK_CUDA(cudaSetDevice(dev));
    size_t f = 0, t = 0;
    cudaError_t rc = cudaMemGetInfo(&f, &t);
    if (cur != dev) (void)cudaSetDevice(cur);
    DPEP_CHECK_CUDA(rc);
    *free_bytes = f;
    *total_bytes = t;
    return DPEP_OK;
}
