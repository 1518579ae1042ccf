/* decode.c — ids to text (HF's ByteLevel decoder and Rust's lossy UTF-8), and
 * the incremental detokenizer for streaming. Both go through one lossy UTF-8
 * routine, so the streamed pieces concatenate to exactly the full decode. */
#include "text_internal.h"

#include <stdlib.h>
#include <string.h>

int dpep_utf8_put(uint32_t cp, char *buf)
{
    unsigned char *b = (unsigned char *)buf;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        b[0] = (unsigned char)(0xC0 | (cp >> 6));
        b[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | (cp >> 12));
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    b[0] = (unsigned char)(0xF0 | (cp >> 18));
    b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    b[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* How many bytes of s[0..n) form a valid prefix of one UTF-8 sequence, and
 * how long the whole sequence would be (Unicode's "maximal subpart" rule:
 * the second byte's range depends on the lead byte). */
static int utf8_prefix(const unsigned char *s, size_t n, int *want)
{
    unsigned char c = s[0];
    int len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80) len = 1;
    else if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else {
        *want = 1;
        return 0; /* never a lead byte */
    }
    *want = len;
    int k = 1;
    for (; k < len && (size_t)k < n; k++) {
        unsigned char d = s[k];
        if (k == 1 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) break;
    }
    return k;
}

int dpep_utf8_seq_len(const unsigned char *s, size_t n)
{
    int want = 0, k = n ? utf8_prefix(s, n, &want) : 0;
    return k == want && k > 0 ? k : 0;
}

bool tok_buf_put(tok_buf *b, const void *s, size_t n)
{
    if (!dpep_grow((void **)&b->p, &b->cap, b->n + (int64_t)n + 1, 1)) return false;
    memcpy(b->p + b->n, s, n);
    b->n += (int64_t)n;
    b->p[b->n] = '\0';
    return true;
}

bool dpep_utf8_lossy(const unsigned char *bytes, size_t n, bool stream, tok_buf *out, size_t *used)
{
    static const char fffd[] = "\xEF\xBF\xBD";
    size_t i = 0;
    while (i < n) {
        int want = 0, k = utf8_prefix(bytes + i, n - i, &want);
        if (k == want && k > 0) { /* one whole character */
            if (!tok_buf_put(out, bytes + i, (size_t)k)) return false;
            i += (size_t)k;
        } else if (stream && i + (size_t)k == n && k > 0) {
            break; /* a valid start that the next token may complete */
        } else { /* a maximal invalid subpart: one U+FFFD */
            if (!tok_buf_put(out, fffd, 3)) return false;
            i += (size_t)(k > 0 ? k : 1);
        }
    }
    if (used) *used = i;
    return true;
}

/* Appends the bytes of one token (HF's ByteLevel decoder: the byte-level
 * chars back to bytes when every char of the token is one, else the token's
 * own UTF-8). */
static bool token_bytes(const dpep_tokenizer *t, int32_t id, tok_buf *bytes)
{
    const unsigned char *s = (const unsigned char *)t->dec[id];
    size_t n = t->dec_len[id], old = (size_t)bytes->n;
    for (size_t i = 0; i < n;) {
        int k = dpep_utf8_seq_len(s + i, n - i);
        uint32_t cp = 0;
        if (k == 1) cp = s[i];
        else if (k == 2) cp = ((s[i] & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
        int b = k > 0 && k <= 2 ? dpep_tok_cp_to_byte(cp) : -1;
        if (b < 0) { /* not byte-level: the raw token */
            bytes->n = (int64_t)old;
            return tok_buf_put(bytes, s, n);
        }
        unsigned char c = (unsigned char)b;
        if (!tok_buf_put(bytes, &c, 1)) return false;
        i += (size_t)k;
    }
    return true;
}

static dpep_status check_id(const dpep_tokenizer *t, int32_t id, size_t pos, dpep_diag *diag)
{
    if (id >= 0 && id < t->n_ids && t->dec[id]) return DPEP_OK;
    if (diag)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "ids[%zu]: %d is not a token id (vocabulary of %d)",
                      pos, (int)id, t->n_ids);
    else
        DPEP_ERROR("detokenizer: %d is not a token id (vocabulary of %d)", (int)id, t->n_ids);
    return DPEP_ERR_INVALID;
}

/* transformers' clean_up_tokenization (when the config asks for it). */
static void clean_up(char *s, size_t *len)
{
    static const char *const from[] = {" .", " ?", " !", " ,", " ' ", " n't", " 'm", " 's", " 've", " 're"};
    static const char *const to[] = {".", "?", "!", ",", "'", "n't", "'m", "'s", "'ve", "'re"};
    for (size_t k = 0; k < sizeof from / sizeof from[0]; k++) {
        size_t fl = strlen(from[k]), tl = strlen(to[k]), w = 0;
        for (size_t r = 0; r < *len;) {
            if (r + fl <= *len && memcmp(s + r, from[k], fl) == 0) {
                memmove(s + w, to[k], tl);
                w += tl, r += fl;
            } else {
                s[w++] = s[r++];
            }
        }
        *len = w;
        s[w] = '\0';
    }
}

dpep_status dpep_tok_decode(const dpep_tokenizer *t, const int32_t *ids, size_t n,
                            bool skip_special, char **text, size_t *len, dpep_diag *diag)
{
    tok_buf bytes = {0}, out = {0};
    dpep_status st = DPEP_OK;
    for (size_t i = 0; i < n && st == DPEP_OK; i++) {
        st = check_id(t, ids[i], i, diag);
        if (st == DPEP_OK && !(skip_special && t->is_special[ids[i]]) && !token_bytes(t, ids[i], &bytes))
            st = DPEP_ERR_NOMEM;
    }
    if (st == DPEP_OK && !dpep_utf8_lossy((const unsigned char *)bytes.p, (size_t)bytes.n, false, &out, NULL))
        st = DPEP_ERR_NOMEM;
    if (st == DPEP_OK && !out.p && !tok_buf_put(&out, "", 0)) st = DPEP_ERR_NOMEM;
    free(bytes.p);
    if (st != DPEP_OK) {
        free(out.p);
        return st;
    }
    size_t l = (size_t)out.n;
    if (t->clean_up_spaces) clean_up(out.p, &l);
    *text = out.p;
    *len = l;
    return DPEP_OK;
}

/* ------------------------------------------------------------------------ */
/* Incremental detokenizer: bytes held back while they may still become a    */
/* character.                                                                */
/* ------------------------------------------------------------------------ */
struct dpep_detok {
    const dpep_tokenizer *t;
    bool skip_special;
    tok_buf pending;        /* bytes not yet emitted (at most a char's prefix) */
    tok_buf out;            /* the last piece                                  */
};

dpep_status dpep_detok_create(const dpep_tokenizer *t, bool skip_special, dpep_detok **out)
{
    dpep_detok *d = calloc(1, sizeof *d);
    if (!d) return DPEP_ERR_NOMEM;
    d->t = t;
    d->skip_special = skip_special;
    *out = d;
    return DPEP_OK;
}

void dpep_detok_free(dpep_detok *d)
{
    if (!d) return;
    free(d->pending.p);
    free(d->out.p);
    free(d);
}

static dpep_status emit(dpep_detok *d, bool final, const char **piece, size_t *len)
{
    size_t used = 0;
    d->out.n = 0;
    if (!dpep_utf8_lossy((const unsigned char *)d->pending.p, (size_t)d->pending.n, !final, &d->out, &used))
        return DPEP_ERR_NOMEM;
    if (used > 0) {
        memmove(d->pending.p, d->pending.p + used, (size_t)d->pending.n - used);
        d->pending.n -= (int64_t)used;
    }
    *piece = d->out.p ? d->out.p : "";
    *len = (size_t)d->out.n;
    return DPEP_OK;
}

dpep_status dpep_detok_push(dpep_detok *d, int32_t id, const char **piece, size_t *len)
{
    /* a generated id beyond the tokenizer (a model may have more embedding
     * rows than tokens) adds nothing, as HF's decode drops it */
    bool known = id >= 0 && id < d->t->n_ids && d->t->dec[id];
    if (known && !(d->skip_special && d->t->is_special[id]) && !token_bytes(d->t, id, &d->pending))
        return DPEP_ERR_NOMEM;
    return emit(d, false, piece, len);
}

dpep_status dpep_detok_finish(dpep_detok *d, const char **piece, size_t *len)
{
    return emit(d, true, piece, len);
}
