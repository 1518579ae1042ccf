/* encode.c — text to ids (the pipeline of text_internal.h): added tokens,
 * normalizer (utf8proc), pre-tokenizer (PCRE2), byte-level BPE with a word
 * cache, post-processing. */
#include "text_internal.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* A piece of text on its way through the pipeline. */
typedef struct piece {
    const char *p;
    size_t n;
    int32_t added;          /* id of an added token, -1 for text             */
    bool normalized;        /* already through the normalizer               */
    bool prefix_space;      /* ByteLevel add_prefix_space: a space in front  */
} piece;

typedef struct pieces {
    piece *v;
    int64_t n, cap;
} pieces;

/* A stretch of a piece: a regex match or the text between two. */
typedef struct seg {
    size_t s, e;
    bool match;
} seg;

/* Per-call state: the pieces, buffers that normalized text lives in, ids. */
typedef struct enc {
    const dpep_tokenizer *t;
    pieces a, b;            /* current and next piece lists                  */
    char **bufs;            /* owned normalized texts                        */
    int64_t n_bufs, cap_bufs;
    int32_t *ids;
    int64_t n_ids, cap_ids;
    pcre2_match_data *md;
    seg *seg;               /* one piece's segments                          */
    int64_t n_seg, cap_seg;
    /* BPE scratch */
    int32_t *sym;
    int64_t *prev, *next;
    int64_t cap_sym, cap_prev, cap_next;
    uint64_t *heap;
    int64_t cap_heap;
    dpep_status st;
} enc;

static bool push_piece(pieces *l, piece x)
{
    if (x.n == 0 && x.added < 0 && !x.prefix_space) return true; /* empty splits vanish */
    if (!dpep_grow((void **)&l->v, &l->cap, l->n + 1, sizeof *l->v)) return false;
    l->v[l->n++] = x;
    return true;
}

static bool push_id(enc *e, int32_t id)
{
    if (!dpep_grow((void **)&e->ids, &e->cap_ids, e->n_ids + 1, sizeof *e->ids)) return false;
    e->ids[e->n_ids++] = id;
    return true;
}

static void swap_lists(enc *e)
{
    pieces tmp = e->a;
    e->a = e->b;
    e->b = tmp;
    e->b.n = 0;
}

/* ------------------------------------------------------------------------ */
/* 1-2. Added tokens (leftmost-longest, as HF's Aho-Corasick matcher).       */
/* ------------------------------------------------------------------------ */
static bool is_ws(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
static bool is_word(unsigned char c) { return c == '_' || (c >= '0' && c <= '9') || ((c | 32) >= 'a' && (c | 32) <= 'z') || c >= 0x80; }

/* The longest added token of this pass starting at s[i], or -1. */
static int added_at(const dpep_tokenizer *t, const char *s, size_t n, size_t i, bool normalized_pass)
{
    const int16_t *list = t->added_first[(unsigned char)s[i]];
    for (int k = 0; list && list[k] >= 0; k++) {
        const tok_added *a = &t->added[list[k]];
        /* pass 1 (raw text) takes non-normalized tokens, pass 2 the others;
         * without a normalizer both are one pass */
        if (t->n_norm > 0 && a->normalized != normalized_pass) continue;
        if (a->len <= n - i && memcmp(s + i, a->content, a->len) == 0) return list[k];
    }
    return -1;
}

/* Splits one text piece around the added tokens of a pass. */
static bool split_added(enc *e, const piece *x, bool normalized_pass)
{
    const dpep_tokenizer *t = e->t;
    const char *s = x->p;
    size_t n = x->n, start = 0, i = 0;
    while (i < n) {
        int k = t->n_added ? added_at(t, s, n, i, normalized_pass) : -1;
        if (k < 0) {
            i++;
            continue;
        }
        const tok_added *a = &t->added[k];
        size_t ms = i, me = i + a->len;
        if (a->single_word && ((ms > 0 && is_word((unsigned char)s[ms - 1])) ||
                               (me < n && is_word((unsigned char)s[me])))) {
            i = me; /* dropped: the matcher resumes after it */
            continue;
        }
        if (a->lstrip)
            while (ms > start && is_ws((unsigned char)s[ms - 1])) ms--;
        if (a->rstrip)
            while (me < n && is_ws((unsigned char)s[me])) me++;
        piece before = {s + start, ms - start, -1, x->normalized, false};
        piece tok = {s + ms, me - ms, a->id, true, false};
        if (!push_piece(&e->b, before) || !push_piece(&e->b, tok)) return false;
        start = i = me;
    }
    piece rest = {s + start, n - start, -1, x->normalized, false};
    return push_piece(&e->b, rest);
}

static bool added_pass(enc *e, bool normalized_pass)
{
    for (int64_t i = 0; i < e->a.n; i++) {
        const piece *x = &e->a.v[i];
        if (x->added >= 0) {
            if (!push_piece(&e->b, *x)) return false;
        } else if (!split_added(e, x, normalized_pass)) {
            return false;
        }
    }
    swap_lists(e);
    return true;
}

/* Normalizes every text piece (utf8proc), keeping the result alive. */
static bool normalize(enc *e)
{
    const dpep_tokenizer *t = e->t;
    for (int64_t i = 0; i < e->a.n; i++) {
        piece *x = &e->a.v[i];
        if (x->added >= 0 || x->n == 0) continue;
        char *cur = NULL;
        for (int k = 0; k < t->n_norm; k++) {
            utf8proc_option_t opt = UTF8PROC_STABLE;
            switch (t->norm[k]) {
            case TOK_NORM_NFC: opt |= UTF8PROC_COMPOSE; break;
            case TOK_NORM_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
            case TOK_NORM_NFD: opt |= UTF8PROC_DECOMPOSE; break;
            case TOK_NORM_NFKD: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
            case TOK_NORM_LOWERCASE: opt |= UTF8PROC_CASEFOLD; break;
            }
            utf8proc_uint8_t *out = NULL;
            utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)(cur ? cur : x->p),
                                              cur ? (utf8proc_ssize_t)strlen(cur) : (utf8proc_ssize_t)x->n,
                                              &out, opt);
            free(cur);
            if (r < 0) return false;
            cur = (char *)out;
        }
        if (!cur) continue;
        if (!dpep_grow((void **)&e->bufs, &e->cap_bufs, e->n_bufs + 1, sizeof *e->bufs)) {
            free(cur);
            return false;
        }
        e->bufs[e->n_bufs++] = cur;
        x->p = cur;
        x->n = strlen(cur);
        x->normalized = true;
    }
    return true;
}

/* ------------------------------------------------------------------------ */
/* 3. Pre-tokenizer steps.                                                   */
/* ------------------------------------------------------------------------ */
/* The matches of step s in piece x as segments covering it (HF's
 * find_matches), `invert` applied. */
static bool find_segments(enc *e, const tok_pre *s, const piece *x)
{
    const char *p = x->p;
    size_t n = x->n, prev = 0, off = 0;
    e->n_seg = 0;
    while (off <= n) {
        int rc = pcre2_match(s->re, (PCRE2_SPTR)p, n, off, 0, e->md, NULL);
        if (rc < 0) break;
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(e->md);
        if (ov[1] == ov[0]) { /* an empty match: step over one character */
            off = ov[0] + 1;
            while (off < n && ((unsigned char)p[off] & 0xC0) == 0x80) off++;
            continue;
        }
        if (!dpep_grow((void **)&e->seg, &e->cap_seg, e->n_seg + 2, sizeof *e->seg)) return false;
        if (ov[0] > prev) e->seg[e->n_seg++] = (seg){prev, ov[0], s->invert};
        e->seg[e->n_seg++] = (seg){ov[0], ov[1], !s->invert};
        prev = off = ov[1];
    }
    if (!dpep_grow((void **)&e->seg, &e->cap_seg, e->n_seg + 1, sizeof *e->seg)) return false;
    if (prev < n) e->seg[e->n_seg++] = (seg){prev, n, s->invert};
    return true;
}

/* Folds the segments per the split behavior (HF's SplitDelimiterBehavior),
 * in place: afterwards e->seg holds the pieces, `match` unused. */
static void fold_segments(enc *e, tok_split_behavior b)
{
    int64_t m = 0;
    bool prev_match = false;
    if (b == TOK_SPLIT_MERGED_NEXT) { /* folds from the right */
        for (int64_t i = e->n_seg - 1; i >= 0; i--) {
            seg x = e->seg[i];
            if (x.match && !prev_match && m > 0)
                e->seg[e->n_seg - m].s = x.s; /* joins the piece after it */
            else
                e->seg[e->n_seg - 1 - m++] = x;
            prev_match = x.match;
        }
        memmove(e->seg, e->seg + e->n_seg - m, sizeof *e->seg * (size_t)m);
        e->n_seg = m;
        return;
    }
    for (int64_t i = 0; i < e->n_seg; i++) {
        seg x = e->seg[i];
        if (b == TOK_SPLIT_REMOVED && x.match) continue;
        bool join = (b == TOK_SPLIT_MERGED_PREV && x.match && !prev_match && m > 0) ||
                    (b == TOK_SPLIT_CONTIGUOUS && x.match == prev_match && m > 0);
        if (join)
            e->seg[m - 1].e = x.e;
        else
            e->seg[m++] = x;
        prev_match = x.match;
    }
    e->n_seg = m;
}

/* Splits piece x by the regex of step s into e->b per its behavior. */
static bool split_regex(enc *e, const tok_pre *s, const piece *x)
{
    if (!find_segments(e, s, x)) return false;
    fold_segments(e, s->behavior);
    for (int64_t i = 0; i < e->n_seg; i++) {
        piece y = {x->p + e->seg[i].s, e->seg[i].e - e->seg[i].s, -1, x->normalized,
                   e->seg[i].s == 0 && x->prefix_space};
        if (!push_piece(&e->b, y)) return false;
    }
    return true;
}

static bool pre_step(enc *e, const tok_pre *s)
{
    for (int64_t i = 0; i < e->a.n; i++) {
        piece x = e->a.v[i];
        if (x.added >= 0) {
            if (!push_piece(&e->b, x)) return false;
            continue;
        }
        if (s->kind == TOK_PRE_BYTELEVEL && s->add_prefix_space && !(x.n && x.p[0] == ' '))
            x.prefix_space = true;
        if (s->re) {
            if (x.prefix_space && s->kind == TOK_PRE_BYTELEVEL) {
                /* the GPT-2 regex sees the added space: run it on a copy */
                char *buf = malloc(x.n + 2);
                if (!buf || !dpep_grow((void **)&e->bufs, &e->cap_bufs, e->n_bufs + 1, sizeof *e->bufs)) {
                    free(buf);
                    return false;
                }
                buf[0] = ' ';
                memcpy(buf + 1, x.p, x.n);
                buf[x.n + 1] = '\0';
                e->bufs[e->n_bufs++] = buf;
                x.p = buf, x.n++, x.prefix_space = false;
            }
            if (!split_regex(e, s, &x)) return false;
        } else if (!push_piece(&e->b, x)) {
            return false;
        }
    }
    swap_lists(e);
    return true;
}

/* ------------------------------------------------------------------------ */
/* 4. Byte-level BPE.                                                        */
/* ------------------------------------------------------------------------ */
static bool pair_rank(const dpep_tokenizer *t, int32_t a, int32_t b, int32_t *rank, int32_t *merged)
{
    const tok_pairmap *m = &t->merges;
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & (m->cap - 1);
    for (;;) {
        if (!m->key[i]) return false;
        if (m->key[i] == key) {
            *rank = m->rank[i];
            *merged = m->merged[i];
            return true;
        }
        i = (i + 1) & (m->cap - 1);
    }
}

/* Min-heap of (rank << 32 | pos): the lowest rank first, then the leftmost. */
static void heap_push(uint64_t *h, int64_t *n, uint64_t v)
{
    int64_t i = (*n)++;
    while (i > 0 && h[(i - 1) / 2] > v) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, int64_t *n)
{
    uint64_t top = h[0], v = h[--(*n)];
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = v;
    return top;
}

static void push_pair(enc *e, int64_t *nh, int64_t pos)
{
    int32_t rank, merged;
    if (e->next[pos] < 0) return;
    if (pair_rank(e->t, e->sym[pos], e->sym[e->next[pos]], &rank, &merged))
        heap_push(e->heap, nh, ((uint64_t)(uint32_t)rank << 32) | (uint64_t)pos);
}

/* Merges the symbols sym[0..n) in place (HF's Word::merge_all); appends the
 * resulting ids. */
static bool bpe_merge(enc *e, int64_t n)
{
    const dpep_tokenizer *t = e->t;
    int64_t nh = 0;
    for (int64_t i = 0; i < n; i++) {
        e->prev[i] = i - 1;
        e->next[i] = i + 1 < n ? i + 1 : -1;
    }
    for (int64_t i = 0; i + 1 < n; i++) push_pair(e, &nh, i);
    while (nh > 0) {
        uint64_t top = heap_pop(e->heap, &nh);
        int64_t pos = (int64_t)(top & 0xFFFFFFFFu);
        int32_t want = (int32_t)(top >> 32), rank, merged;
        if (e->sym[pos] < 0 || e->next[pos] < 0) continue; /* merged away */
        int64_t nx = e->next[pos];
        if (!pair_rank(t, e->sym[pos], e->sym[nx], &rank, &merged) || rank != want) continue;
        e->sym[pos] = merged;
        e->sym[nx] = -1;
        e->next[pos] = e->next[nx];
        if (e->next[nx] >= 0) e->prev[e->next[nx]] = pos;
        if (e->prev[pos] >= 0) push_pair(e, &nh, e->prev[pos]);
        push_pair(e, &nh, pos);
    }
    for (int64_t i = 0; i >= 0 && i < n; i = e->next[i])
        if (!push_id(e, e->sym[i])) return false;
    return true;
}

static bool cache_get(enc *e, const char *key, size_t n)
{
    const dpep_tokenizer *t = e->t;
    if (n > TOK_CACHE_MAX_WORD) return false;
    tok_cache_entry *c = &t->cache[dpep_tok_hash(key, n) & (TOK_CACHE_SLOTS - 1)];
    bool hit = false;
    pthread_mutex_lock((pthread_mutex_t *)&t->cache_lock);
    if (c->len == n && c->n_ids && memcmp(c->word, key, n) == 0) {
        hit = true;
        for (int i = 0; i < c->n_ids && hit; i++) hit = push_id(e, c->ids[i]);
    }
    pthread_mutex_unlock((pthread_mutex_t *)&t->cache_lock);
    return hit;
}

static void cache_put(enc *e, const char *key, size_t n, const int32_t *ids, int64_t n_ids)
{
    const dpep_tokenizer *t = e->t;
    if (n > TOK_CACHE_MAX_WORD || n_ids > TOK_CACHE_MAX_IDS || n_ids < 1) return;
    tok_cache_entry *c = &t->cache[dpep_tok_hash(key, n) & (TOK_CACHE_SLOTS - 1)];
    pthread_mutex_lock((pthread_mutex_t *)&t->cache_lock);
    c->len = (uint8_t)n;
    c->n_ids = (uint8_t)n_ids;
    memcpy(c->word, key, n);
    memcpy(c->ids, ids, sizeof(int32_t) * (size_t)n_ids);
    pthread_mutex_unlock((pthread_mutex_t *)&t->cache_lock);
}

/* One pre-token: its bytes (with the prefix space) as byte-level symbols. */
static bool bpe_word(enc *e, const piece *x)
{
    const dpep_tokenizer *t = e->t;
    int64_t n = (int64_t)x->n + x->prefix_space;
    char key[TOK_CACHE_MAX_WORD + 1];
    bool cacheable = n <= TOK_CACHE_MAX_WORD;
    if (cacheable) {
        if (x->prefix_space) key[0] = ' ';
        memcpy(key + x->prefix_space, x->p, x->n);
        if (cache_get(e, key, (size_t)n)) return true;
    }
    if (!dpep_grow((void **)&e->sym, &e->cap_sym, n, sizeof *e->sym) ||
        !dpep_grow((void **)&e->prev, &e->cap_prev, n, sizeof *e->prev) ||
        !dpep_grow((void **)&e->next, &e->cap_next, n, sizeof *e->next) ||
        !dpep_grow((void **)&e->heap, &e->cap_heap, 2 * n + 1, sizeof *e->heap))
        return false;
    for (int64_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)(x->prefix_space ? (i == 0 ? ' ' : x->p[i - 1]) : x->p[i]);
        if (t->byte_id[b] < 0) {
            e->st = DPEP_ERR_INVALID; /* the vocab lacks a byte: reported by the caller */
            return false;
        }
        e->sym[i] = t->byte_id[b];
    }
    int64_t first = e->n_ids;
    if (t->ignore_merges && n <= 1024) {
        char mapped[4 * 1024];
        size_t m = 0;
        for (int64_t i = 0; i < n; i++) m += (size_t)dpep_utf8_put(dpep_tok_byte_to_cp(
            (unsigned char)(x->prefix_space ? (i == 0 ? ' ' : x->p[i - 1]) : x->p[i])), mapped + m);
        int32_t id = dpep_tok_vocab_find(t, mapped, m);
        if (id >= 0) {
            if (!push_id(e, id)) return false;
            if (cacheable) cache_put(e, key, (size_t)n, e->ids + first, 1);
            return true;
        }
    }
    if (!bpe_merge(e, n)) return false;
    if (cacheable) cache_put(e, key, (size_t)n, e->ids + first, e->n_ids - first);
    return true;
}

/* ------------------------------------------------------------------------ */
/* The whole encode.                                                         */
/* ------------------------------------------------------------------------ */
static bool run_pipeline(enc *e, const char *text, size_t len)
{
    const dpep_tokenizer *t = e->t;
    piece all = {text, len, -1, t->n_norm == 0, false};
    if (!push_piece(&e->a, all)) return false;
    if (!added_pass(e, false)) return false;
    if (t->n_norm > 0) {
        if (!normalize(e) || !added_pass(e, true)) return false;
    }
    for (int k = 0; k < t->n_pre; k++)
        if (!pre_step(e, &t->pre[k])) return false;
    for (int64_t i = 0; i < e->a.n; i++) {
        const piece *x = &e->a.v[i];
        if (x->added >= 0) {
            if (!push_id(e, x->added)) return false;
        } else if (!bpe_word(e, x)) {
            return false;
        }
    }
    return true;
}

static void enc_free(enc *e)
{
    free(e->a.v);
    free(e->b.v);
    for (int64_t i = 0; i < e->n_bufs; i++) free(e->bufs[i]);
    free(e->bufs);
    free(e->sym);
    free(e->prev);
    free(e->next);
    free(e->heap);
    free(e->seg);
    pcre2_match_data_free(e->md);
}

dpep_status dpep_tok_encode(const dpep_tokenizer *t, const char *text, size_t len,
                            bool add_special, int32_t **ids, size_t *n_ids, dpep_diag *diag)
{
    size_t bad = 0;
    for (size_t i = 0; i < len;) {
        int k = dpep_utf8_seq_len((const unsigned char *)text + i, len - i);
        if (k == 0) {
            bad = i + 1;
            break;
        }
        i += (size_t)k;
    }
    if (bad) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "text: invalid UTF-8 at byte %zu (HF tokenizers takes "
                      "only valid Unicode text)", bad - 1);
        return DPEP_ERR_INVALID;
    }
    enc e;
    memset(&e, 0, sizeof e);
    e.t = t;
    e.st = DPEP_OK;
    e.md = pcre2_match_data_create(4, NULL);
    bool ok = e.md != NULL;
    for (int i = 0; ok && add_special && i < t->n_prefix; i++) ok = push_id(&e, t->prefix_ids[i]);
    ok = ok && run_pipeline(&e, text, len);
    for (int i = 0; ok && add_special && i < t->n_suffix; i++) ok = push_id(&e, t->suffix_ids[i]);
    dpep_status st = ok ? DPEP_OK : e.st != DPEP_OK ? e.st : DPEP_ERR_NOMEM;
    if (st == DPEP_ERR_INVALID)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: model.vocab: a byte has no byte-level token",
                      t->path);
    if (st == DPEP_OK) {
        if (!e.ids) e.ids = malloc(sizeof(int32_t));
        if (!e.ids) st = DPEP_ERR_NOMEM;
    }
    if (st == DPEP_OK) {
        *ids = e.ids;
        *n_ids = (size_t)e.n_ids;
        e.ids = NULL;
    }
    free(e.ids);
    enc_free(&e);
    return st;
}
