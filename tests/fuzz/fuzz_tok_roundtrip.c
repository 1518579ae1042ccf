/* fuzz_tok_roundtrip.c — libFuzzer target for encode/decode on a real
 * tokenizer (DPEP_FUZZ_TOKENIZER, a directory with tokenizer.json): for any
 * valid UTF-8 input, decode(encode(x)) == x (byte-level BPE loses nothing),
 * and the incremental detokenizer's pieces concatenate to the same text;
 * invalid UTF-8 is refused with a named error. */
#include "dpep_text.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static dpep_tokenizer *g_tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *dir = getenv("DPEP_FUZZ_TOKENIZER");
    dpep_diag d;
    dpep_diag_init(&d);
    if (!dir || dpep_tok_load(dir, &g_tok, &d) != DPEP_OK) {
        dpep_diag_print(&d, stderr);
        fprintf(stderr, "fuzz_tok_roundtrip: set DPEP_FUZZ_TOKENIZER to a tokenizer directory\n");
        exit(2);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size)
{
    dpep_diag d;
    dpep_diag_init(&d);
    int32_t *ids = NULL;
    size_t n = 0;
    dpep_status st = dpep_tok_encode(g_tok, (const char *)data, size, false, &ids, &n, &d);
    if (st == DPEP_ERR_INVALID && d.n_errors > 0) return 0; /* invalid UTF-8, named */
    if (st != DPEP_OK) abort();
    char *out = NULL;
    size_t len = 0;
    if (dpep_tok_decode(g_tok, ids, n, false, &out, &len, &d) != DPEP_OK) abort();
    if (len != size || memcmp(out, data, size) != 0) abort(); /* lossless */
    dpep_detok *dt = NULL;
    if (dpep_detok_create(g_tok, false, &dt) != DPEP_OK) abort();
    char *cat = malloc(size + 1);
    size_t at = 0;
    for (size_t i = 0; i <= n; i++) {
        const char *piece;
        size_t pl;
        st = i < n ? dpep_detok_push(dt, ids[i], &piece, &pl) : dpep_detok_finish(dt, &piece, &pl);
        if (st != DPEP_OK || at + pl > size) abort();
        memcpy(cat + at, piece, pl);
        at += pl;
    }
    if (at != size || memcmp(cat, data, size) != 0) abort(); /* streamed == full */
    free(cat);
    dpep_detok_free(dt);
    free(out);
    free(ids);
    return 0;
}
