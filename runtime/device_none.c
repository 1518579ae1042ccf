/* device_none.c — device query and vendor error strings for builds without
 * CUDA. */
#include "dpep_runtime.h"

dpep_status dpep_cuda_device_count(int *count, char *why, size_t why_len)
{
    (void)count;
    snprintf(why, why_len, "this build of dpep has no CUDA support (configured with "
                           "DPEP_CUDA=OFF or without nvcc)");
    return DPEP_ERR_NO_DEVICE;
}

static const char *code_string(const char *lib, int code)
{
    static _Thread_local char buf[64];
    snprintf(buf, sizeof buf, "%s error %d (no CUDA in this build)", lib, code);
    return buf;
}
const char *dpep_cuda_error_string(int code) { return code_string("CUDA", code); }
const char *dpep_nccl_error_string(int code) { return code_string("NCCL", code); }
const char *dpep_cublas_error_string(int code) { return code_string("cuBLAS", code); }

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
