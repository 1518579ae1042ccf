/* vendor_none.c — the vendor error strings behind DPEP_CHECK_CUDA / _NCCL /
 * _CUBLAS in builds without CUDA (no device allocator but the CPU one). */
#include "dpep_base.h"

static const char *code_string(const char *lib, int code)
{
    static _Thread_local char buf[64];
    snprintf(buf, sizeof buf, "%s error %d (no CUDA in this build)", lib, code);
    return buf;
}
const char *dpep_cuda_error_string(int code) { return code_string("CUDA", code); }
const char *dpep_nccl_error_string(int code) { return code_string("NCCL", code); }
const char *dpep_cublas_error_string(int code) { return code_string("cuBLAS", code); }

