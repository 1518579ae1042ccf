/* dpep_text.h — public header of runtime/text: text in, text out.
 *   - a Hugging Face tokenizer (tokenizer.json + tokenizer_config.json):
 *     byte-level BPE with its normalizer, pre-tokenizer (Split regexes run by
 *     PCRE2 with Unicode properties, ByteLevel), added tokens matched before
 *     the model, post-processing (bos/eos per add_bos_token/add_eos_token),
 *     the ByteLevel decoder;
 *   - an incremental detokenizer for streaming (never emits half a UTF-8
 *     character; its pieces concatenate to the full decode);
 *   - the DeepSeek chat templates (V2, V2.5, V3, V3.1, R1), recognized and
 *     rendered natively; any other template is refused with a message.
 * Exactness: ids equal HF `tokenizers`, decodes and renderings equal
 * transformers (tests/reference/tokenizers).
 *
 * Ownership: a dpep_tokenizer is immutable after load and may be shared by
 * threads for encode/decode (its word cache is per call or internally locked,
 * see dpep_tok_encode). Output arrays are malloc'd and owned by the caller
 * (free()). Functions taking `T *out` write it only on DPEP_OK. */
#ifndef DPEP_TEXT_H
#define DPEP_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dpep_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dpep_tokenizer dpep_tokenizer; /* opaque */

/* Loads DIR/tokenizer.json and DIR/tokenizer_config.json (the config is
 * optional: without it no bos/eos are added and there is no chat template).
 * Every problem is named: "DIR/tokenizer.json: model.type: ..." */
dpep_status dpep_tok_load(const char *dir, dpep_tokenizer **out, dpep_diag *diag);
/* The same from the files' contents (config_json NULL: none); `name` stands
 * for the directory in messages. Used by the fuzz target. */
dpep_status dpep_tok_load_buffers(const char *tokenizer_json, size_t len, const char *config_json,
                                  size_t config_len, const char *name, dpep_tokenizer **out,
                                  dpep_diag *diag);
void dpep_tok_free(dpep_tokenizer *t);

/* Vocabulary size: the largest id + 1 over the model vocab and added tokens. */
int dpep_tok_vocab_size(const dpep_tokenizer *t);
/* Special token ids, -1 when the config names none. */
int dpep_tok_bos_id(const dpep_tokenizer *t);
int dpep_tok_eos_id(const dpep_tokenizer *t);
/* The token's string as stored (byte-level form for model tokens), or NULL
 * for an id out of range. Lives as long as the tokenizer. */
const char *dpep_tok_id_to_token(const dpep_tokenizer *t, int id);
/* Is id a special added token? */
bool dpep_tok_is_special(const dpep_tokenizer *t, int id);

/* text[len] (UTF-8) -> ids. add_special: prepend bos / append eos per
 * tokenizer_config (add_bos_token / add_eos_token). Invalid UTF-8 is
 * DPEP_ERR_INVALID (HF takes only valid Unicode strings). *ids malloc'd. */
dpep_status dpep_tok_encode(const dpep_tokenizer *t, const char *text, size_t len,
                            bool add_special, int32_t **ids, size_t *n_ids, dpep_diag *diag);

/* ids -> text (malloc'd, NUL-terminated; *len without the NUL). Byte
 * sequences that are not valid UTF-8 become U+FFFD as in HF (lossy). An id
 * out of range is DPEP_ERR_INVALID naming it. */
dpep_status dpep_tok_decode(const dpep_tokenizer *t, const int32_t *ids, size_t n,
                            bool skip_special, char **text, size_t *len, dpep_diag *diag);

/* Incremental detokenizer for one stream: feed ids one at a time, get the
 * new text (possibly empty) each time. Holds back bytes until they form whole
 * UTF-8 characters; the concatenated pieces plus dpep_detok_finish equal
 * dpep_tok_decode of all ids. */
typedef struct dpep_detok dpep_detok; /* opaque */
dpep_status dpep_detok_create(const dpep_tokenizer *t, bool skip_special, dpep_detok **out);
void dpep_detok_free(dpep_detok *d);
/* Appends id; *piece points into the detokenizer (valid until the next call)
 * and holds *len bytes of new text. An id the tokenizer does not have (a
 * model may have more embedding rows than tokens) adds nothing, as in HF's
 * decode; dpep_tok_decode, which takes ids from users, names it instead. */
dpep_status dpep_detok_push(dpep_detok *d, int32_t id, const char **piece, size_t *len);
/* Flushes what is held back (an incomplete UTF-8 tail becomes U+FFFD). */
dpep_status dpep_detok_finish(dpep_detok *d, const char **piece, size_t *len);

/* ------------------------------------------------------------------------ */
/* Chat templates (text/chat.c).                                             */
/* ------------------------------------------------------------------------ */
typedef enum dpep_chat_kind {
    DPEP_CHAT_NONE = 0,      /* no chat_template in tokenizer_config.json     */
    DPEP_CHAT_DEEPSEEK_V2,   /* "User: ...\n\nAssistant: ..."                 */
    DPEP_CHAT_DEEPSEEK_V25,  /* <｜User｜> / <｜Assistant｜>, tool calls        */
    DPEP_CHAT_DEEPSEEK_V3,   /* V2.5 + several system messages joined          */
    DPEP_CHAT_DEEPSEEK_V31,  /* V3.1: thinking on/off, </think> handling       */
    DPEP_CHAT_DEEPSEEK_R1,   /* R1: reasoning dropped from history, <think>\n   */
    DPEP_CHAT_UNSUPPORTED,   /* present but not one of the above               */
} dpep_chat_kind;

/* One tool call of an assistant message (OpenAI shape). */
typedef struct dpep_chat_tool_call {
    const char *type;        /* "function"                                     */
    const char *name;        /* function.name                                  */
    const char *arguments;   /* function.arguments (a JSON string)             */
} dpep_chat_tool_call;

typedef struct dpep_chat_msg {
    const char *role;        /* "system", "user", "assistant", "tool"          */
    const char *content;     /* NULL: JSON null (assistant with tool calls)    */
    const dpep_chat_tool_call *tool_calls; /* NULL when absent                 */
    int n_tool_calls;
    bool has_tool_calls;     /* the key is present (even with 0 calls)         */
    bool prefix;             /* V3.1: message['prefix'] (continue this turn)   */
} dpep_chat_msg;

typedef struct dpep_chat_opts {
    bool add_generation_prompt;
    bool thinking;           /* V3.1's `thinking` variable                      */
} dpep_chat_opts;

/* Which template a chat_template text is (exact text match of the known
 * DeepSeek templates, tolerant only of the newline spellings they ship in). */
dpep_chat_kind dpep_chat_detect(const char *chat_template);
const char *dpep_chat_kind_name(dpep_chat_kind k);

/* Renders messages with a template kind and the tokenizer's bos/eos strings;
 * *out malloc'd, NUL-terminated. DPEP_ERR_INVALID for a message the template
 * cannot render (unknown role is skipped as the template skips it; a null
 * content where the template concatenates it is an error naming the message),
 * DPEP_ERR_UNSUPPORTED for DPEP_CHAT_NONE/UNSUPPORTED. */
dpep_status dpep_chat_render_kind(dpep_chat_kind kind, const char *bos, const char *eos,
                                  const dpep_chat_msg *msgs, int n, const dpep_chat_opts *o,
                                  char **out, size_t *len, dpep_diag *diag);

/* The tokenizer's template (from tokenizer_config.json). A missing or
 * unsupported one is DPEP_ERR_INVALID (the user's file): "DIR/tokenizer_config.json:
 * chat_template: unsupported chat template (dpep renders the DeepSeek
 * V2/V2.5/V3/V3.1/R1 templates natively)". */
dpep_chat_kind dpep_tok_chat_kind(const dpep_tokenizer *t);
dpep_status dpep_tok_chat_render(const dpep_tokenizer *t, const dpep_chat_msg *msgs, int n,
                                 const dpep_chat_opts *o, char **out, size_t *len,
                                 dpep_diag *diag);

/* A conversation parsed from JSON (text/chat_json.c): an array of OpenAI-style
 * messages, or an object with "messages". content may be a string, null, or
 * an array of {"type": "text", "text": ...} parts (concatenated). Owns its
 * strings. Errors name `name` and the message: "NAME: messages[2].role: ...". */
typedef struct dpep_chat_conv {
    dpep_chat_msg *msg;
    int n;
    void *mem_;              /* owned storage                                   */
} dpep_chat_conv;
dpep_status dpep_chat_parse_json(const char *json, size_t len, const char *name,
                                 dpep_chat_conv *out, dpep_diag *diag);
void dpep_chat_conv_free(dpep_chat_conv *c);

/* Renders with the tokenizer's template and encodes the text without adding
 * bos/eos (the template writes them), as transformers' apply_chat_template
 * with tokenize=True. */
dpep_status dpep_tok_chat_encode(const dpep_tokenizer *t, const dpep_chat_msg *msgs, int n,
                                 const dpep_chat_opts *o, int32_t **ids, size_t *n_ids,
                                 dpep_diag *diag);

#ifdef __cplusplus
}
#endif
#endif /* DPEP_TEXT_H */
