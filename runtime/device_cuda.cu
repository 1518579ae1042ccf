/* device_cuda.cu — CUDA device query and the vendor error strings behind
 * DPEP_CHECK_CUDA / _NCCL / _CUBLAS. */
#include "dpep_runtime.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdlib.h>

extern "C" const char *dpep_cuda_error_string(int code)
{
    return cudaGetErrorString((cudaError_t)code);
}

/* NCCL and cuBLAS codes are named from their headers' enums, so that the
 * runtime does not link (and map) libnccl and libcublas just for messages;
 * the modules that call them link them. */
extern "C" const char *dpep_nccl_error_string(int code)
{
    switch ((ncclResult_t)code) {
    case ncclSuccess: return "ncclSuccess";
    case ncclUnhandledCudaError: return "ncclUnhandledCudaError: a CUDA call failed";
    case ncclSystemError: return "ncclSystemError: a system or network call failed";
    case ncclInternalError: return "ncclInternalError";
    case ncclInvalidArgument: return "ncclInvalidArgument";
    case ncclInvalidUsage: return "ncclInvalidUsage";
    case ncclRemoteError: return "ncclRemoteError: a remote peer failed or vanished";
    case ncclInProgress: return "ncclInProgress";
    default: break;
    }
    static thread_local char buf[48];
    snprintf(buf, sizeof buf, "NCCL error %d", code);
    return buf;
}

extern "C" const char *dpep_cublas_error_string(int code)
{
    switch ((cublasStatus_t)code) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: break;
    }
    static thread_local char buf[48];
    snprintf(buf, sizeof buf, "cuBLAS status %d", code);
    return buf;
}

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
