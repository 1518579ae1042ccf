/* ipc_cuda.cu — the CUDA calls behind dpep_comm_dshm (comm_dshm.c) on a GPU:
 * a segment of device memory, its CUDA IPC handle, mapping a peer's handle
 * into this process (the same GPU in another process, or a GPU this one has
 * peer access to: NVLink or PCIe P2P), and waiting for this process's
 * queued work. Built with CUDA only; comm_internal.h declares them. */
#include "comm_internal.h"

#include <cuda_runtime.h>
#include <string.h>

static_assert(sizeof(cudaIpcMemHandle_t) == DPEP_IPC_HANDLE_BYTES,
              "cudaIpcMemHandle_t is not DPEP_IPC_HANDLE_BYTES bytes");

extern "C" dpep_status dpep_ipc_alloc(int dev, size_t bytes, void **p, void *handle)
{
    *p = NULL;
    DPEP_CHECK_CUDA(cudaSetDevice(dev));
    void *q = NULL;
    DPEP_CHECK_CUDA(cudaMalloc(&q, bytes ? bytes : 256));
    cudaError_t e = cudaMemset(q, 0, bytes ? bytes : 256);
    if (e == cudaSuccess) e = cudaIpcGetMemHandle((cudaIpcMemHandle_t *)handle, q);
    if (e != cudaSuccess) {
        dpep_check_fail_(__FILE__, __LINE__, "cudaMemset / cudaIpcGetMemHandle", cudaGetErrorString(e));
        cudaFree(q);
        return DPEP_ERR_CUDA;
    }
    *p = q;
    return DPEP_OK;
}

extern "C" dpep_status dpep_ipc_open(int dev, const void *handle, void **p)
{
    *p = NULL;
    DPEP_CHECK_CUDA(cudaSetDevice(dev));
    cudaIpcMemHandle_t h;
    memcpy(&h, handle, sizeof h);
    DPEP_CHECK_CUDA(cudaIpcOpenMemHandle(p, h, cudaIpcMemLazyEnablePeerAccess));
    return DPEP_OK;
}

extern "C" void dpep_ipc_close(void *p)
{
    if (p) (void)cudaIpcCloseMemHandle(p);
}

extern "C" void dpep_ipc_free(void *p)
{
    if (p) (void)cudaFree(p);
}

extern "C" dpep_status dpep_ipc_sync(void)
{
    /* the calling thread's default stream, where the kernels that wrote
     * into the segments ran (--default-stream per-thread), is done */
    DPEP_CHECK_CUDA(cudaStreamSynchronize(cudaStreamPerThread));
    return DPEP_OK;
}
