/* vendor_cuda.cu — the vendor error strings behind DPEP_CHECK_CUDA / _NCCL /
 * _CUBLAS, and the CUDA device allocator (cudaMalloc on the rank's device),
 * for builds with CUDA. */
#include "dpep_base.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>
#include <stdio.h>

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

/* A failed runtime call's error, cleared (a non-sticky error left pending
 * would be reported by the next launch's cudaGetLastError as that launch's
 * failure), reported through the CHECK family's reporter. */
#define CUDA_CALL_CLEARED(call)                                                                   \
    do {                                                                                          \
        cudaError_t rc_ = (call);                                                                 \
        if (rc_ != cudaSuccess) {                                                                 \
            (void)cudaGetLastError();                                                             \
            dpep_check_fail_(__FILE__, __LINE__, #call, cudaGetErrorString(rc_));                 \
            return DPEP_ERR_CUDA;                                                                 \
        }                                                                                         \
    } while (0)

static dpep_status cuda_alloc(const dpep_device *d, size_t bytes, void **out)
{
    if (bytes == 0) return DPEP_ERR_INVALID;
    void *p = NULL;
    CUDA_CALL_CLEARED(cudaSetDevice(d->ordinal));
    CUDA_CALL_CLEARED(cudaMalloc(&p, bytes)); /* out of memory is not sticky */
    const cudaError_t rc = cudaMemset(p, 0, bytes);
    if (rc != cudaSuccess) {
        cudaFree(p);
        (void)cudaGetLastError();
        dpep_check_fail_(__FILE__, __LINE__, "cudaMemset(p, 0, bytes)", cudaGetErrorString(rc));
        return DPEP_ERR_CUDA;
    }
    *out = p;
    return DPEP_OK;
}

static void cuda_free(const dpep_device *d, void *p)
{
    (void)d;
    cudaFree(p);
}

static dpep_status cuda_to_device(const dpep_device *d, void *dst, const void *src, size_t bytes)
{
    (void)d;
    CUDA_CALL_CLEARED(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
    return DPEP_OK;
}

static dpep_status cuda_to_host(const dpep_device *d, void *dst, const void *src, size_t bytes)
{
    (void)d;
    CUDA_CALL_CLEARED(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
    return DPEP_OK;
}

extern "C" const dpep_device_ops dpep_device_cuda_ops = {"cuda", cuda_alloc, cuda_free,
                                                         cuda_to_device, cuda_to_host};
