/* chat.c — the DeepSeek chat templates (V2, V2.5, V3, V3.1, R1): recognized
 * by their exact text and rendered natively, byte for byte as the Jinja
 * templates render them in transformers (goldens: tests/text/chat_golden).
 *
 * Semantics mapped from Jinja onto dpep_chat_msg:
 *   - content == NULL is Jinja None: `is none` is true, printing it writes
 *     "None", and concatenating it (`'x' + None`, `'</think>' in None`)
 *     raises; we return DPEP_ERR_INVALID naming messages[i].content.
 *   - has_tool_calls is `'tool_calls' in message` / `is defined and is not
 *     none`; without it `for tool in message['tool_calls']` loops zero times
 *     (Jinja's Undefined is an empty iterable). A JSON `tool_calls: null`
 *     cannot be expressed and must be passed as has_tool_calls = false.
 *   - a tool call's NULL type/name/arguments is a missing or null key, which
 *     the templates concatenate: DPEP_ERR_INVALID naming the field, but only
 *     when the template really reaches it (V3.1 never reads `type`).
 *   - roles other than system/user/assistant/tool (or NULL) are skipped.
 *   - bos == NULL prints nothing (undefined bos_token); eos is read only by
 *     V2 (the others spell <｜end▁of▁sentence｜> literally).
 *   - n == 0 is an error, as in transformers' apply_chat_template.
 * Every quirk of the templates is kept (see each render_* function). */
#include "dpep_text.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* The known templates, as shipped in tokenizer_config.json "chat_template"  */
/* of deepseek-ai/DeepSeek-V2, -V2.5, -V3, -V3.1 and -R1, with every newline  */
/* written as the two characters backslash-n (V2, V3 and V3.1 ship real       */
/* newlines inside their string literals, V2.5 and R1 ship backslash-n;       */
/* Jinja reads both as a newline).                                            */
/* ------------------------------------------------------------------------ */
static const char k_tmpl_v2[] =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    "{% endif %}{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ 'Assistant: ' + message['content'] + eos_token }}"
    "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";

static const char k_tmpl_v25[] =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    "{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}{{bos_token}}"
    "{{ns.system_prompt}}{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}"
    "{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}"
    "{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + "
    "'<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + "
    "tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + "
    "tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + "
    "'\\n' + '```' + '<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}"
    "{%- set ns.is_tool = false -%}{%- else %}"
    "{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}"
    "{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + "
    "'<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}"
    "{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}";

static const char k_tmpl_v3[] =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    "{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}"
    "{% set ns.is_first_sp = false %}{%- else %}"
    "{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}{{bos_token}}{{ns.system_prompt}}{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}"
    "{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is none %}"
    "{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls']%}"
    "{%- if not ns.is_first %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + "
    "'<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + "
    "tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}"
    "{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + "
    "tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + "
    "'\\n' + '```' + '<｜tool▁call▁end｜>'}}{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}"
    "{%- endif %}{%- endfor %}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}"
    "{%- set ns.is_tool = false -%}{%- else %}"
    "{{'<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}"
    "{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + "
    "'<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}"
    "{{'\\n<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}"
    "{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}";

static const char k_tmpl_v31[] =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    "{% endif %}{% if not thinking is defined %}{% set thinking = false %}{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, system_prompt='', is_first_sp=true, is_last_user=false) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}"
    "{% set ns.is_first_sp = false %}{%- else %}"
    "{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{%- set ns.is_tool = false -%}{%- set ns.is_first = false -%}"
    "{%- set ns.is_last_user = true -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] is not none %}"
    "{%- if ns.is_last_user %}{{'<｜Assistant｜></think>'}}{%- endif %}"
    "{%- set ns.is_last_user = false -%}{%- set ns.is_first = false %}"
    "{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls'] %}"
    "{%- if not ns.is_first %}{%- if message['content'] is none %}"
    "{{'<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>'+ tool['function']['name'] + "
    "'<｜tool▁sep｜>' + tool['function']['arguments'] + '<｜tool▁call▁end｜>'}}{%- else %}"
    "{{message['content'] + '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + "
    "tool['function']['name'] + '<｜tool▁sep｜>' + tool['function']['arguments'] + "
    "'<｜tool▁call▁end｜>'}}{%- endif %}{%- set ns.is_first = true -%}{%- else %}"
    "{{'<｜tool▁call▁begin｜>'+ tool['function']['name'] + '<｜tool▁sep｜>' + "
    "tool['function']['arguments'] + '<｜tool▁call▁end｜>'}}{%- endif %}{%- endfor %}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and (message['tool_calls'] is not defined or message['tool_calls'] is none) %}"
    "{%- if ns.is_last_user %}{{'<｜Assistant｜>'}}"
    "{%- if message['prefix'] is defined and message['prefix'] and thinking %}{{'<think>'}}  "
    "{%- else %}{{'</think>'}}{%- endif %}{%- endif %}{%- set ns.is_last_user = false -%}"
    "{%- if ns.is_tool %}{{message['content'] + '<｜end▁of▁sentence｜>'}}"
    "{%- set ns.is_tool = false -%}{%- else %}{%- set content = message['content'] -%}"
    "{%- if '</think>' in content %}{%- set content = content.split('</think>', 1)[1] -%}"
    "{%- endif %}{{content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_last_user = false -%}"
    "{%- set ns.is_tool = true -%}"
    "{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}"
    "{%- endfor -%}{%- if add_generation_prompt and ns.is_last_user and not ns.is_tool %}"
    "{{'<｜Assistant｜>'}}{%- if not thinking %}{{'</think>'}}{%- else %}{{'<think>'}}"
    "{%- endif %}{% endif %}";

static const char k_tmpl_r1[] =
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}"
    "{% endif %}"
    "{% set ns = namespace(is_first=false, is_tool=false, is_output_first=true, system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{%- if ns.is_first_sp %}"
    "{% set ns.system_prompt = ns.system_prompt + message['content'] %}"
    "{% set ns.is_first_sp = false %}{%- else %}"
    "{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}"
    "{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and 'tool_calls' in message %}"
    "{%- set ns.is_tool = false -%}{%- for tool in message['tool_calls'] %}"
    "{%- if not ns.is_first %}{%- if message['content'] is none %}"
    "{{'<｜Assistant｜><｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + tool['type'] + "
    "'<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + "
    "tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- else %}"
    "{{'<｜Assistant｜>' + message['content'] + '<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>' + "
    "tool['type'] + '<｜tool▁sep｜>' + tool['function']['name'] + '\\n' + '```json' + '\\n' + "
    "tool['function']['arguments'] + '\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- endif %}"
    "{%- set ns.is_first = true -%}{%- else %}"
    "{{'\\n' + '<｜tool▁call▁begin｜>' + tool['type'] + '<｜tool▁sep｜>' + "
    "tool['function']['name'] + '\\n' + '```json' + '\\n' + tool['function']['arguments'] + "
    "'\\n' + '```' + '<｜tool▁call▁end｜>'}}{%- endif %}{%- endfor %}"
    "{{'<｜tool▁calls▁end｜><｜end▁of▁sentence｜>'}}{%- endif %}"
    "{%- if message['role'] == 'assistant' and 'tool_calls' not in message %}"
    "{%- if ns.is_tool %}"
    "{{'<｜tool▁outputs▁end｜>' + message['content'] + '<｜end▁of▁sentence｜>'}}"
    "{%- set ns.is_tool = false -%}{%- else %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}"
    "{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endif %}"
    "{%- if message['role'] == 'tool' %}{%- set ns.is_tool = true -%}"
    "{%- if ns.is_output_first %}"
    "{{'<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>' + message['content'] + "
    "'<｜tool▁output▁end｜>'}}{%- set ns.is_output_first = false %}{%- else %}"
    "{{'<｜tool▁output▁begin｜>' + message['content'] + '<｜tool▁output▁end｜>'}}{%- endif %}"
    "{%- endif %}{%- endfor -%}{% if ns.is_tool %}{{'<｜tool▁outputs▁end｜>'}}{% endif %}"
    "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜><think>\\n'}}{% endif %}";
typedef struct known_template {
    dpep_chat_kind kind;
    const char *text;
} known_template;

static const known_template k_known[] = {
    {DPEP_CHAT_DEEPSEEK_V2, k_tmpl_v2},   {DPEP_CHAT_DEEPSEEK_V25, k_tmpl_v25},
    {DPEP_CHAT_DEEPSEEK_V3, k_tmpl_v3},   {DPEP_CHAT_DEEPSEEK_V31, k_tmpl_v31},
    {DPEP_CHAT_DEEPSEEK_R1, k_tmpl_r1},
};

/* Is cand[0, n) the text `known`? A real newline in cand stands for the
 * backslash-n that `known` holds (all of them sit inside string literals,
 * where Jinja reads both spellings as a newline); every other byte must be
 * equal. */
static bool same_template(const char *cand, size_t n, const char *known)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (cand[i] == '\n') {
            if (known[k] != '\\' || known[k + 1] != 'n') return false;
            k += 2;
        } else {
            if (known[k] != cand[i]) return false; /* also known's end */
            k++;
        }
    }
    return known[k] == '\0';
}

dpep_chat_kind dpep_chat_detect(const char *chat_template)
{
    if (!chat_template || !chat_template[0]) return DPEP_CHAT_NONE;
    /* exact text; only a single trailing newline may differ (transformers'
     * Jinja environment drops it: keep_trailing_newline is false) — any other
     * surrounding whitespace would be printed, so it is a different template */
    const char *b = chat_template, *e = chat_template + strlen(chat_template);
    if (e > b && e[-1] == '\n') e--;
    for (size_t i = 0; i < sizeof k_known / sizeof k_known[0]; i++)
        if (same_template(b, (size_t)(e - b), k_known[i].text)) return k_known[i].kind;
    return DPEP_CHAT_UNSUPPORTED;
}

const char *dpep_chat_kind_name(dpep_chat_kind k)
{
    switch (k) {
    case DPEP_CHAT_NONE: return "none";
    case DPEP_CHAT_DEEPSEEK_V2: return "deepseek-v2";
    case DPEP_CHAT_DEEPSEEK_V25: return "deepseek-v2.5";
    case DPEP_CHAT_DEEPSEEK_V3: return "deepseek-v3";
    case DPEP_CHAT_DEEPSEEK_V31: return "deepseek-v3.1";
    case DPEP_CHAT_DEEPSEEK_R1: return "deepseek-r1";
    case DPEP_CHAT_UNSUPPORTED: return "unsupported";
    }
    return "unknown";
}

/* ------------------------------------------------------------------------ */
/* Output buffer: grows by doubling; after a failed allocation it ignores     */
/* further appends and `oom` stays set (checked once at the end).             */
/* ------------------------------------------------------------------------ */
typedef struct sbuf {
    char *p;      /* NUL-terminated once anything was appended */
    size_t len;
    int64_t cap;
    bool oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
    if (b->oom) return;
    if (n >= SIZE_MAX / 2 - b->len ||
        !dpep_grow((void **)&b->p, &b->cap, (int64_t)(b->len + n + 1), 1)) {
        b->oom = true;
        return;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_str(sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

/* ------------------------------------------------------------------------ */
/* Rendering.                                                                */
/* ------------------------------------------------------------------------ */
/* Literal special tokens of the V2.5/V3/V3.1/R1 templates. */
#define TK_USER "<｜User｜>"
#define TK_ASSISTANT "<｜Assistant｜>"
#define TK_EOS "<｜end▁of▁sentence｜>"
#define TK_CALLS_BEGIN "<｜tool▁calls▁begin｜>"
#define TK_CALLS_END "<｜tool▁calls▁end｜>"
#define TK_CALL_BEGIN "<｜tool▁call▁begin｜>"
#define TK_CALL_END "<｜tool▁call▁end｜>"
#define TK_SEP "<｜tool▁sep｜>"
#define TK_OUTS_BEGIN "<｜tool▁outputs▁begin｜>"
#define TK_OUTS_END "<｜tool▁outputs▁end｜>"
#define TK_OUT_BEGIN "<｜tool▁output▁begin｜>"
#define TK_OUT_END "<｜tool▁output▁end｜>"
#define TK_THINK "<think>"
#define TK_THINK_END "</think>"

/* One rendering: the input, the output so far and the template's `ns`
 * namespace (each template uses the subset it declares). */
typedef struct chat_ctx {
    dpep_chat_kind kind;
    const char *bos, *eos;
    const dpep_chat_msg *msgs;
    int n;
    dpep_chat_opts opt;
    dpep_diag *diag;
    sbuf out;
    bool is_first;        /* ns.is_first: the first tool call was written   */
    bool is_tool;         /* ns.is_tool: the last message was a tool output */
    bool is_output_first; /* ns.is_output_first (V2.5/V3/R1), starts true   */
    bool is_last_user;    /* ns.is_last_user (V3.1)                         */
} chat_ctx;

static bool role_is(const dpep_chat_msg *m, const char *role)
{
    return m->role && strcmp(m->role, role) == 0;
}

/* OK when s is a string; else the error Jinja raises where the template
 * concatenates messages[i].FIELD (or messages[i].tool_calls[call].FIELD when
 * call >= 0). */
static dpep_status need(chat_ctx *c, const char *s, int i, int call, const char *field)
{
    if (s) return DPEP_OK;
    if (c->diag) {
        if (call >= 0)
            dpep_diag_add(c->diag, DPEP_DIAG_ERROR,
                          "messages[%d].tool_calls[%d].%s: missing or null, but the %s chat "
                          "template concatenates it as a string",
                          i, call, field, dpep_chat_kind_name(c->kind));
        else
            dpep_diag_add(c->diag, DPEP_DIAG_ERROR,
                          "messages[%d].%s: null, but the %s chat template concatenates it as "
                          "a string",
                          i, field, dpep_chat_kind_name(c->kind));
    }
    return DPEP_ERR_INVALID;
}

/* The text after the last (R1: split('</think>')[-1]) or the first (V3.1:
 * split('</think>', 1)[1]) "</think>"; s itself when there is none. */
static const char *after_think(const char *s, bool last)
{
    const char *r = s;
    for (const char *p = strstr(s, TK_THINK_END); p; p = strstr(p + 1, TK_THINK_END)) {
        r = p + strlen(TK_THINK_END);
        if (!last) break;
    }
    return r;
}

/* V3, V3.1, R1: every system message's content in order, joined with
 * "\n\n" (a null one raises). V2.5: the last system message's content alone,
 * and a null one prints as "None" (Jinja's str(None)). */
static dpep_status put_system_prompt(chat_ctx *c)
{
    const char *last = "";
    bool first = true;
    for (int i = 0; i < c->n; i++) {
        const dpep_chat_msg *m = &c->msgs[i];
        if (!role_is(m, "system")) continue;
        if (c->kind == DPEP_CHAT_DEEPSEEK_V25) {
            last = m->content ? m->content : "None";
            continue;
        }
        DPEP_TRY(need(c, m->content, i, -1, "content"));
        if (!first) sb_str(&c->out, "\n\n");
        sb_str(&c->out, m->content);
        first = false;
    }
    if (c->kind == DPEP_CHAT_DEEPSEEK_V25) sb_str(&c->out, last);
    return DPEP_OK;
}

/* V2: "User: X\n\n", "Assistant: X" + eos, system "X\n\n", in message
 * order; generation prompt "Assistant:" (no space). Tool messages and tool
 * calls are ignored; any null content raises. */
static dpep_status render_v2(chat_ctx *c)
{
    for (int i = 0; i < c->n; i++) {
        const dpep_chat_msg *m = &c->msgs[i];
        if (role_is(m, "user")) {
            DPEP_TRY(need(c, m->content, i, -1, "content"));
            sb_str(&c->out, "User: ");
            sb_str(&c->out, m->content);
            sb_str(&c->out, "\n\n");
        } else if (role_is(m, "assistant")) {
            DPEP_TRY(need(c, m->content, i, -1, "content"));
            if (!c->eos) {
                if (c->diag)
                    dpep_diag_add(c->diag, DPEP_DIAG_ERROR,
                                  "eos_token: not set, but the %s chat template appends it to "
                                  "messages[%d] (assistant)",
                                  dpep_chat_kind_name(c->kind), i);
                return DPEP_ERR_INVALID;
            }
            sb_str(&c->out, "Assistant: ");
            sb_str(&c->out, m->content);
            sb_str(&c->out, c->eos);
        } else if (role_is(m, "system")) {
            DPEP_TRY(need(c, m->content, i, -1, "content"));
            sb_str(&c->out, m->content);
            sb_str(&c->out, "\n\n");
        }
    }
    if (c->opt.add_generation_prompt) sb_str(&c->out, "Assistant:");
    return DPEP_OK;
}

/* One tool call as V2.5/V3/R1 write it after their lead-in:
 *   TYPE<｜tool▁sep｜>NAME\n```json\nARGUMENTS\n```<｜tool▁call▁end｜> */
static dpep_status put_call_fenced(chat_ctx *c, int i, int j)
{
    const dpep_chat_tool_call *t = &c->msgs[i].tool_calls[j];
    DPEP_TRY(need(c, t->type, i, j, "type"));
    DPEP_TRY(need(c, t->name, i, j, "function.name"));
    DPEP_TRY(need(c, t->arguments, i, j, "function.arguments"));
    sb_str(&c->out, t->type);
    sb_str(&c->out, TK_SEP);
    sb_str(&c->out, t->name);
    sb_str(&c->out, "\n```json\n");
    sb_str(&c->out, t->arguments);
    sb_str(&c->out, "\n```" TK_CALL_END);
    return DPEP_OK;
}

/* A tool output (V2.5/V3/R1). The first one of the whole conversation opens
 * with <｜tool▁outputs▁begin｜> (ns.is_output_first is never reset, so a
 * later group of outputs does not); the others are separated by "\n" in
 * V2.5/V3 and by nothing in R1. */
static dpep_status put_tool_output(chat_ctx *c, int i)
{
    const char *content = c->msgs[i].content;
    c->is_tool = true;
    DPEP_TRY(need(c, content, i, -1, "content"));
    if (c->is_output_first) {
        sb_str(&c->out, TK_OUTS_BEGIN);
        c->is_output_first = false;
    } else if (c->kind != DPEP_CHAT_DEEPSEEK_R1) {
        sb_str(&c->out, "\n");
    }
    sb_str(&c->out, TK_OUT_BEGIN);
    sb_str(&c->out, content);
    sb_str(&c->out, TK_OUT_END);
    return DPEP_OK;
}

/* V2.5/V3 assistant message with null content: its tool calls (none when
 * has_tool_calls is false). ns.is_first is never reset, so only the first
 * call of the whole conversation gets the <｜Assistant｜><｜tool▁calls▁begin｜>
 * lead-in; every later call is "\n<｜tool▁call▁begin｜>..." followed by
 * <｜tool▁calls▁end｜><｜end▁of▁sentence｜> (so a message with a single first
 * call is never closed). */
static dpep_status v25_tool_calls(chat_ctx *c, int i)
{
    const dpep_chat_msg *m = &c->msgs[i];
    c->is_tool = false;
    if (!m->has_tool_calls) return DPEP_OK;
    for (int j = 0; j < m->n_tool_calls; j++) {
        if (!c->is_first) {
            sb_str(&c->out, TK_ASSISTANT TK_CALLS_BEGIN TK_CALL_BEGIN);
            DPEP_TRY(put_call_fenced(c, i, j));
            c->is_first = true;
        } else {
            sb_str(&c->out, "\n" TK_CALL_BEGIN);
            DPEP_TRY(put_call_fenced(c, i, j));
            sb_str(&c->out, TK_CALLS_END TK_EOS);
        }
    }
    return DPEP_OK;
}

/* A user message in V2.5, V3 and R1: it ends any run of tool outputs. */
static dpep_status put_user(chat_ctx *c, int i)
{
    c->is_tool = false;
    DPEP_TRY(need(c, c->msgs[i].content, i, -1, "content"));
    sb_str(&c->out, TK_USER);
    sb_str(&c->out, c->msgs[i].content);
    return DPEP_OK;
}

/* V2.5 and V3 (they differ only in the system prompt). An assistant message
 * with content renders as text (its tool calls, if any, are ignored); after
 * tool outputs it closes them with <｜tool▁outputs▁end｜> instead of opening
 * with <｜Assistant｜>. */
static dpep_status render_v25_v3(chat_ctx *c)
{
    DPEP_TRY(put_system_prompt(c));
    for (int i = 0; i < c->n; i++) {
        const dpep_chat_msg *m = &c->msgs[i];
        if (role_is(m, "user")) {
            DPEP_TRY(put_user(c, i));
        } else if (role_is(m, "assistant") && !m->content) {
            DPEP_TRY(v25_tool_calls(c, i));
        } else if (role_is(m, "assistant")) {
            sb_str(&c->out, c->is_tool ? TK_OUTS_END : TK_ASSISTANT);
            sb_str(&c->out, m->content);
            sb_str(&c->out, TK_EOS);
            c->is_tool = false;
        } else if (role_is(m, "tool")) {
            DPEP_TRY(put_tool_output(c, i));
        }
    }
    if (c->is_tool) sb_str(&c->out, TK_OUTS_END);
    if (c->opt.add_generation_prompt && !c->is_tool) sb_str(&c->out, TK_ASSISTANT);
    return DPEP_OK;
}

/* R1 assistant message with the tool_calls key. As in V2.5/V3 ns.is_first is
 * never reset: the first call of the conversation opens with <｜Assistant｜>,
 * the content (when not null, unstripped) and <｜tool▁calls▁begin｜>; every
 * later call, also in later messages (whose content is then dropped), is
 * "\n<｜tool▁call▁begin｜>...". Each message ends with
 * <｜tool▁calls▁end｜><｜end▁of▁sentence｜>, even with zero calls. */
static dpep_status r1_tool_calls(chat_ctx *c, int i)
{
    const dpep_chat_msg *m = &c->msgs[i];
    c->is_tool = false;
    for (int j = 0; j < m->n_tool_calls; j++) {
        if (!c->is_first) {
            sb_str(&c->out, TK_ASSISTANT);
            if (m->content) sb_str(&c->out, m->content);
            sb_str(&c->out, TK_CALLS_BEGIN TK_CALL_BEGIN);
            DPEP_TRY(put_call_fenced(c, i, j));
            c->is_first = true;
        } else {
            sb_str(&c->out, "\n" TK_CALL_BEGIN);
            DPEP_TRY(put_call_fenced(c, i, j));
        }
    }
    sb_str(&c->out, TK_CALLS_END TK_EOS);
    return DPEP_OK;
}

/* R1. A plain assistant message drops everything up to its last "</think>"
 * (not after tool outputs, where it closes them with
 * <｜tool▁outputs▁end｜> and is written whole). Generation prompt:
 * "<｜Assistant｜><think>\n", only when not right after tool outputs. */
static dpep_status render_r1(chat_ctx *c)
{
    DPEP_TRY(put_system_prompt(c));
    for (int i = 0; i < c->n; i++) {
        const dpep_chat_msg *m = &c->msgs[i];
        if (role_is(m, "user")) {
            DPEP_TRY(put_user(c, i));
        } else if (role_is(m, "assistant") && m->has_tool_calls) {
            DPEP_TRY(r1_tool_calls(c, i));
        } else if (role_is(m, "assistant")) {
            DPEP_TRY(need(c, m->content, i, -1, "content"));
            if (c->is_tool) {
                sb_str(&c->out, TK_OUTS_END);
                sb_str(&c->out, m->content);
                c->is_tool = false;
            } else {
                sb_str(&c->out, TK_ASSISTANT);
                sb_str(&c->out, after_think(m->content, true));
            }
            sb_str(&c->out, TK_EOS);
        } else if (role_is(m, "tool")) {
            DPEP_TRY(put_tool_output(c, i));
        }
    }
    if (c->is_tool) sb_str(&c->out, TK_OUTS_END);
    if (c->opt.add_generation_prompt && !c->is_tool) sb_str(&c->out, TK_ASSISTANT TK_THINK "\n");
    return DPEP_OK;
}

/* V3.1 assistant message with tool calls: "<｜Assistant｜></think>" when it
 * answers a user message, then the content (when not null) and the calls
 * NAME<｜tool▁sep｜>ARGUMENTS (no type, no fences; ns.is_first is reset per
 * message), closed by <｜tool▁calls▁end｜><｜end▁of▁sentence｜>. */
static dpep_status v31_tool_calls(chat_ctx *c, int i)
{
    const dpep_chat_msg *m = &c->msgs[i];
    if (c->is_last_user) sb_str(&c->out, TK_ASSISTANT TK_THINK_END);
    c->is_last_user = false;
    c->is_first = false;
    c->is_tool = false;
    for (int j = 0; j < m->n_tool_calls; j++) {
        const dpep_chat_tool_call *t = &m->tool_calls[j];
        if (!c->is_first) {
            if (m->content) sb_str(&c->out, m->content);
            sb_str(&c->out, TK_CALLS_BEGIN);
            c->is_first = true;
        }
        DPEP_TRY(need(c, t->name, i, j, "function.name"));
        DPEP_TRY(need(c, t->arguments, i, j, "function.arguments"));
        sb_str(&c->out, TK_CALL_BEGIN);
        sb_str(&c->out, t->name);
        sb_str(&c->out, TK_SEP);
        sb_str(&c->out, t->arguments);
        sb_str(&c->out, TK_CALL_END);
    }
    sb_str(&c->out, TK_CALLS_END TK_EOS);
    return DPEP_OK;
}

/* V3.1 plain assistant message: when it answers a user message it opens
 * with <｜Assistant｜> and "<think>" (prefix message while thinking) or
 * "</think>"; its content loses everything up to the first "</think>"
 * unless it follows tool outputs (then it is written whole). */
static dpep_status v31_assistant(chat_ctx *c, int i)
{
    const dpep_chat_msg *m = &c->msgs[i];
    if (c->is_last_user) {
        sb_str(&c->out, TK_ASSISTANT);
        sb_str(&c->out, m->prefix && c->opt.thinking ? TK_THINK : TK_THINK_END);
    }
    c->is_last_user = false;
    DPEP_TRY(need(c, m->content, i, -1, "content"));
    if (c->is_tool) {
        sb_str(&c->out, m->content);
        c->is_tool = false;
    } else {
        sb_str(&c->out, after_think(m->content, false));
    }
    sb_str(&c->out, TK_EOS);
    return DPEP_OK;
}

/* V3.1. Tool outputs are <｜tool▁output▁begin｜>X<｜tool▁output▁end｜> with no
 * outer markers. The generation prompt "<｜Assistant｜>" + "</think>" (or
 * "<think>" when thinking) is written only right after a user message. */
static dpep_status render_v31(chat_ctx *c)
{
    DPEP_TRY(put_system_prompt(c));
    for (int i = 0; i < c->n; i++) {
        const dpep_chat_msg *m = &c->msgs[i];
        if (role_is(m, "user")) {
            c->is_tool = false;
            c->is_first = false;
            c->is_last_user = true;
            DPEP_TRY(need(c, m->content, i, -1, "content"));
            sb_str(&c->out, TK_USER);
            sb_str(&c->out, m->content);
        } else if (role_is(m, "assistant") && m->has_tool_calls) {
            DPEP_TRY(v31_tool_calls(c, i));
        } else if (role_is(m, "assistant")) {
            DPEP_TRY(v31_assistant(c, i));
        } else if (role_is(m, "tool")) {
            c->is_last_user = false;
            c->is_tool = true;
            DPEP_TRY(need(c, m->content, i, -1, "content"));
            sb_str(&c->out, TK_OUT_BEGIN);
            sb_str(&c->out, m->content);
            sb_str(&c->out, TK_OUT_END);
        }
    }
    if (c->opt.add_generation_prompt && c->is_last_user && !c->is_tool) {
        sb_str(&c->out, TK_ASSISTANT);
        sb_str(&c->out, c->opt.thinking ? TK_THINK : TK_THINK_END);
    }
    return DPEP_OK;
}

/* Shape checks the templates cannot express (bad struct, not bad JSON). */
static dpep_status check_messages(dpep_chat_kind kind, const dpep_chat_msg *msgs, int n,
                                  dpep_diag *diag)
{
    const char *why = NULL;
    int bad = -1;
    if (n <= 0 || !msgs) why = "messages: empty conversation (at least one message is needed)";
    for (int i = 0; !why && i < n; i++) {
        if (msgs[i].has_tool_calls &&
            (msgs[i].n_tool_calls < 0 || (msgs[i].n_tool_calls > 0 && !msgs[i].tool_calls))) {
            why = "tool_calls: n_tool_calls is negative or tool_calls is NULL";
            bad = i;
        }
    }
    if (!why) return DPEP_OK;
    if (diag) {
        if (bad >= 0)
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "messages[%d].%s (%s chat template)", bad, why,
                          dpep_chat_kind_name(kind));
        else
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s (%s chat template)", why,
                          dpep_chat_kind_name(kind));
    }
    return DPEP_ERR_INVALID;
}

dpep_status dpep_chat_render_kind(dpep_chat_kind kind, const char *bos, const char *eos,
                                  const dpep_chat_msg *msgs, int n, const dpep_chat_opts *o,
                                  char **out, size_t *len, dpep_diag *diag)
{
    if (kind < DPEP_CHAT_DEEPSEEK_V2 || kind > DPEP_CHAT_DEEPSEEK_R1) {
        if (diag)
            dpep_diag_add(diag, DPEP_DIAG_ERROR,
                          "chat_template: %s chat template (dpep renders the DeepSeek "
                          "V2/V2.5/V3/V3.1/R1 templates natively)",
                          kind == DPEP_CHAT_NONE ? "no" : "unsupported");
        return DPEP_ERR_UNSUPPORTED;
    }
    DPEP_TRY(check_messages(kind, msgs, n, diag));
    chat_ctx c = {.kind = kind, .bos = bos, .eos = eos, .msgs = msgs, .n = n, .diag = diag,
                  .is_output_first = true};
    if (o) c.opt = *o;
    sb_str(&c.out, bos ? bos : "");
    dpep_status st;
    switch (kind) {
    case DPEP_CHAT_DEEPSEEK_V2: st = render_v2(&c); break;
    case DPEP_CHAT_DEEPSEEK_R1: st = render_r1(&c); break;
    case DPEP_CHAT_DEEPSEEK_V31: st = render_v31(&c); break;
    default: st = render_v25_v3(&c); break;
    }
    if (st == DPEP_OK && c.out.oom) st = DPEP_ERR_NOMEM;
    if (st != DPEP_OK) {
        free(c.out.p);
        return st;
    }
    *out = c.out.p;
    if (len) *len = c.out.len;
    return DPEP_OK;
}
