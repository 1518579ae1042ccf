/* tokenizer_bench.c — dpep_tok_bench: single-threaded encode and decode
 * throughput of runtime/text on a corpus (JSONL, one {"text": ...} per line),
 * printed as one JSON line (bench/tokenizer.sh puts HF tokenizers beside it).
 *   dpep_tok_bench DIR CORPUS.jsonl [ITERS] [join]
 * `join`: the texts concatenated into one (long-text throughput).
 * Each iteration encodes every text (no special tokens) and decodes every id
 * list; the median iteration is reported. MB are of UTF-8 text (10^6 bytes). */
#include "dpep_text.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: dpep_tok_bench DIR CORPUS.jsonl [ITERS]\n");
        return 2;
    }
    int iters = argc > 3 ? atoi(argv[3]) : 5;
    if (iters < 1) iters = 1;
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_tokenizer *t = NULL;
    if (dpep_tok_load(argv[1], &t, &d) != DPEP_OK) {
        dpep_diag_print(&d, stderr);
        return 2;
    }
    FILE *f = fopen(argv[2], "r");
    if (!f) {
        perror(argv[2]);
        return 2;
    }
    char **text = NULL, *line = NULL;
    size_t *len = NULL, cap = 0, n = 0, lcap = 0, bytes = 0;
    while (getline(&line, &lcap, f) > 0) {
        json_t *o = json_loads(line, JSON_ALLOW_NUL, NULL);
        json_t *s = json_object_get(o, "text");
        if (json_is_string(s)) {
            if (n == cap) {
                cap = cap ? 2 * cap : 256;
                text = realloc(text, sizeof *text * cap);
                len = realloc(len, sizeof *len * cap);
            }
            len[n] = json_string_length(s);
            text[n] = malloc(len[n] + 1);
            memcpy(text[n], json_string_value(s), len[n] + 1);
            bytes += len[n++];
        }
        json_decref(o);
    }
    fclose(f);
    free(line);
    if (argc > 4 && strcmp(argv[4], "join") == 0 && n > 1) {
        char *all = malloc(bytes + 1);
        size_t off = 0;
        for (size_t i = 0; i < n; i++) {
            memcpy(all + off, text[i], len[i]);
            off += len[i];
            free(text[i]);
        }
        all[off] = '\0';
        text[0] = all;
        len[0] = off;
        n = 1;
    }
    int32_t **ids = calloc(n, sizeof *ids);
    size_t *n_ids = calloc(n, sizeof *n_ids), tokens = 0;
    double *te = malloc(sizeof(double) * (size_t)iters), *td = malloc(sizeof(double) * (size_t)iters);
    for (int it = 0; it < iters + 1; it++) { /* iteration 0 warms up */
        double t0 = dpep_clock_s();
        tokens = 0;
        for (size_t i = 0; i < n; i++) {
            free(ids[i]);
            if (dpep_tok_encode(t, text[i], len[i], false, &ids[i], &n_ids[i], &d) != DPEP_OK) {
                dpep_diag_print(&d, stderr);
                return 1;
            }
            tokens += n_ids[i];
        }
        double t1 = dpep_clock_s();
        for (size_t i = 0; i < n; i++) {
            char *out = NULL;
            size_t ol = 0;
            if (dpep_tok_decode(t, ids[i], n_ids[i], false, &out, &ol, &d) != DPEP_OK) return 1;
            free(out);
        }
        double t2 = dpep_clock_s();
        if (it > 0) {
            te[it - 1] = t1 - t0;
            td[it - 1] = t2 - t1;
        }
    }
    qsort(te, (size_t)iters, sizeof *te, cmp_d);
    qsort(td, (size_t)iters, sizeof *td, cmp_d);
    double e = te[iters / 2], dd = td[iters / 2];
    printf("{\"impl\": \"dpep\", \"texts\": %zu, \"bytes\": %zu, \"tokens\": %zu, \"encode_s\": %.6f, "
           "\"decode_s\": %.6f, \"encode_mb_s\": %.3f, \"encode_tok_s\": %.0f, \"decode_mb_s\": %.3f, "
           "\"decode_tok_s\": %.0f}\n", n, bytes, tokens, e, dd, bytes / e / 1e6, tokens / e,
           bytes / dd / 1e6, tokens / dd);
    for (size_t i = 0; i < n; i++) {
        free(text[i]);
        free(ids[i]);
    }
    free(text);
    free(len);
    free(ids);
    free(n_ids);
    free(te);
    free(td);
    dpep_tok_free(t);
    return 0;
}
