/* fuzz_safetensors.c — libFuzzer target for the safetensors header parser:
 * the input is [8-byte little-endian data length][header JSON]; any input
 * ends in DPEP_OK with in-bounds, non-overlapping tensors, or in a named
 * DPEP_ERR_INVALID — never a crash, leak or unbounded work. */
#include "dpep_model.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    if (size < 8) return 0;
    uint64_t data_len = 0;
    for (int i = 7; i >= 0; i--) data_len = (data_len << 8) | data[i];
    data_len &= (UINT64_C(1) << 40) - 1;
    dpep_st_header h;
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_status st = dpep_st_parse_header((const char *)data + 8, size - 8, data_len, "fuzz.safetensors",
                                          &h, &diag);
    if (st == DPEP_ERR_INVALID) {
        if (diag.n_errors == 0) abort();
        return 0;
    }
    if (st != DPEP_OK) abort();
    for (int i = 0; i < h.n; i++) {
        const dpep_tensor_info *t = &h.tensor[i];
        if (t->end > data_len || t->begin > t->end) abort();
        uint64_t n = dpep_st_dtype_size(t->dtype);
        for (int d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
        if (n != t->end - t->begin) abort();
        if (i > 0 && strcmp(h.tensor[i - 1].name, t->name) >= 0) abort(); /* sorted, unique */
    }
    dpep_st_header_free(&h);
    return 0;
}
