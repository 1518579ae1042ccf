/* text_internal.h — private to runtime/text: the tokenizer's tables.
 *
 * Pipeline of an encode (as HF tokenizers runs it):
 *   1. added tokens that are not `normalized` are cut out of the raw text
 *      (leftmost-longest); the rest is
 *   2. normalized (none, NFC, NFKC, Lowercase, or a Sequence of them), then
 *      `normalized` added tokens are cut out of the normalized pieces;
 *   3. each remaining piece goes through the pre-tokenizer steps in order
 *      (Split by a PCRE2 regex, Digits, ByteLevel), each step splitting every
 *      piece the previous one produced;
 *   4. each pre-token, mapped byte by byte to the GPT-2 byte alphabet, is
 *      encoded by BPE (merges by rank, the lowest first, leftmost among equals);
 *   5. the post-processor adds bos/eos when asked. */
#ifndef DPEP_TEXT_INTERNAL_H
#define DPEP_TEXT_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>

#include "dpep_text.h"

/* Open-addressing map from a byte string to an id (vocab). */
typedef struct tok_strmap {
    uint32_t *slot;            /* [cap] id + 1, 0 empty                        */
    size_t cap;                /* power of two                                 */
} tok_strmap;

/* Open-addressing map from a pair of ids to (rank, merged id). */
typedef struct tok_pairmap {
    uint64_t *key;             /* [cap] (a << 32 | b) + 1, 0 empty             */
    int32_t *rank, *merged;    /* [cap]                                        */
    size_t cap;
} tok_pairmap;

typedef struct tok_added {
    char *content;             /* owned, UTF-8                                 */
    size_t len;
    int32_t id;
    bool special, lstrip, rstrip, single_word, normalized;
} tok_added;

typedef enum tok_norm_kind { TOK_NORM_NFC = 0, TOK_NORM_NFKC, TOK_NORM_NFD, TOK_NORM_NFKD,
                             TOK_NORM_LOWERCASE } tok_norm_kind;

typedef enum tok_split_behavior {
    TOK_SPLIT_ISOLATED = 0, TOK_SPLIT_REMOVED, TOK_SPLIT_MERGED_PREV, TOK_SPLIT_MERGED_NEXT,
    TOK_SPLIT_CONTIGUOUS
} tok_split_behavior;

typedef enum tok_pre_kind { TOK_PRE_SPLIT = 0, TOK_PRE_DIGITS, TOK_PRE_BYTELEVEL } tok_pre_kind;

typedef struct tok_pre {
    tok_pre_kind kind;
    pcre2_code *re;            /* SPLIT, DIGITS, BYTELEVEL with use_regex      */
    tok_split_behavior behavior;
    bool invert;
    bool individual_digits;    /* DIGITS                                       */
    bool add_prefix_space;     /* BYTELEVEL                                    */
} tok_pre;

#define TOK_MAX_STEPS 16
#define TOK_CACHE_SLOTS 4096   /* pre-token -> ids cache entries (direct-mapped) */
#define TOK_CACHE_MAX_WORD 64  /* bytes: longer pre-tokens are not cached       */
#define TOK_CACHE_MAX_IDS 32

typedef struct tok_cache_entry {
    uint8_t len, n_ids;
    char word[TOK_CACHE_MAX_WORD];
    int32_t ids[TOK_CACHE_MAX_IDS];
} tok_cache_entry;

struct dpep_tokenizer {
    char path[1024];           /* DIR/tokenizer.json, for messages             */
    /* model: BPE */
    int n_vocab;               /* ids [0, n_vocab) of the model                 */
    char **tok;                /* [n_ids] token strings (model + added), owned by `strings` */
    size_t *tok_len;           /* [n_ids]                                      */
    int n_ids;                 /* largest id + 1                                */
    char **dec;                /* [n_ids] decoding strings: an added token's content, else tok */
    size_t *dec_len;
    char *strings;             /* one block for every token string             */
    tok_strmap vocab;
    tok_pairmap merges;
    bool ignore_merges, byte_fallback;
    int32_t byte_id[256];      /* id of each byte's byte-level char (-1 absent) */
    /* added tokens */
    tok_added *added;
    int n_added;
    int16_t *added_first[256]; /* per first byte: indices into added, longest first, -1 ended */
    bool *is_special;          /* [n_ids]                                      */
    /* normalizer and pre-tokenizer */
    tok_norm_kind norm[TOK_MAX_STEPS];
    int n_norm;
    tok_pre pre[TOK_MAX_STEPS];
    int n_pre;
    /* post-processing */
    int32_t prefix_ids[4], suffix_ids[4];
    int n_prefix, n_suffix;
    int bos_id, eos_id;
    char *bos, *eos;           /* owned token texts, "" when none               */
    bool clean_up_spaces;      /* tokenizer_config clean_up_tokenization_spaces */
    /* chat */
    char *chat_template;       /* owned, NULL when none                         */
    dpep_chat_kind chat_kind;
    char config_path[1100];
    /* word cache (encode), shared by threads */
    tok_cache_entry *cache;    /* [TOK_CACHE_SLOTS]                            */
    pthread_mutex_t cache_lock;
};

/* The GPT-2 byte alphabet: byte b is code point byte_to_cp[b]; cp_to_byte
 * maps back (-1 for code points outside it, up to 0x143). */
uint32_t dpep_tok_byte_to_cp(int b);
int dpep_tok_cp_to_byte(uint32_t cp);

/* FNV-1a hash of a byte string. */
uint64_t dpep_tok_hash(const char *s, size_t n);
/* Vocab lookup: id or -1. */
int32_t dpep_tok_vocab_find(const dpep_tokenizer *t, const char *s, size_t n);

/* UTF-8 helpers. Length of the valid UTF-8 sequence at s[0..n) (1..4), or 0
 * when it is not one (invalid or truncated). */
int dpep_utf8_seq_len(const unsigned char *s, size_t n);
/* Appends the UTF-8 of code point cp to buf; returns bytes written (1..4). */
int dpep_utf8_put(uint32_t cp, char *buf);
/* Lossy UTF-8 of bytes[0..n) appended to a growable buffer (maximal invalid
 * subparts -> U+FFFD, as Rust's String::from_utf8_lossy). When `stream` is
 * true an incomplete but valid-so-far tail is not consumed: *used tells how
 * many bytes were. */
typedef struct tok_buf {
    char *p;
    int64_t n, cap;
} tok_buf;
bool tok_buf_put(tok_buf *b, const void *s, size_t n);
bool dpep_utf8_lossy(const unsigned char *bytes, size_t n, bool stream, tok_buf *out,
                     size_t *used);

#endif
