/* fuzz_tokenizer.c — libFuzzer target for tokenizer.json loading: any input
 * ends in DPEP_OK or a named error (never a crash, a leak or unbounded work);
 * what loads encodes and decodes a fixed text, and decoding every id of its
 * vocabulary stays in bounds. */
#include "dpep_text.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_tokenizer *t = NULL;
    dpep_status st = dpep_tok_load_buffers((const char *)data, size, NULL, 0, "fuzz", &t, &diag);
    if (st != DPEP_OK && st != DPEP_ERR_INVALID && st != DPEP_ERR_NOMEM) abort();
    if (st == DPEP_ERR_INVALID && diag.n_errors == 0) abort(); /* errors are always named */
    if (st != DPEP_OK) return 0;
    static const char text[] = "Hello, world! 你好 123 \n\t<think> 👍🏽 e\xCC\x81";
    int32_t *ids = NULL;
    size_t n = 0;
    if (dpep_tok_encode(t, text, sizeof text - 1, true, &ids, &n, &diag) == DPEP_OK) {
        char *out = NULL;
        size_t len = 0;
        if (dpep_tok_decode(t, ids, n, false, &out, &len, &diag) != DPEP_OK) abort();
        free(out);
    }
    free(ids);
    int V = dpep_tok_vocab_size(t);
    for (int32_t id = 0; id < V && id < 4096; id++) {
        char *out = NULL;
        size_t len = 0;
        if (dpep_tok_decode(t, &id, 1, false, &out, &len, &diag) == DPEP_OK) free(out);
    }
    dpep_tok_free(t);
    return 0;
}
