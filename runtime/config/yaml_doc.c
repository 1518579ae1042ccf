/* yaml_doc.c — bounded YAML tree from libyaml's event parser. */
#include "yaml_doc.h"

#include <stdlib.h>
#include <string.h>
#include <yaml.h>

static int node_new(ydoc *d, ydoc_kind kind, const yaml_mark_t *m)
{
    if (d->n >= DPEP_CONFIG_MAX_NODES) return -1;
    if (d->n == d->cap) {
        int cap = d->cap ? d->cap * 2 : 64;
        ydoc_node *p = realloc(d->node, (size_t)cap * sizeof *p);
        if (!p) return -1;
        d->node = p;
        d->cap = cap;
    }
    ydoc_node *n = &d->node[d->n];
    memset(n, 0, sizeof *n);
    n->kind = kind;
    n->line = (int)m->line + 1;
    n->col = (int)m->column + 1;
    n->text = "";
    n->first = n->next = -1;
    return d->n++;
}

/* Copies scalar text into the pool; returns offset or -1. Texts are fixed
 * up to pointers once the pool stops moving. */
static long pool_add(ydoc *d, const unsigned char *s, size_t len)
{
    if (d->pool_len + len + 1 > d->pool_cap) {
        size_t cap = d->pool_cap ? d->pool_cap : 4096;
        while (cap < d->pool_len + len + 1) cap *= 2;
        char *p = realloc(d->pool, cap);
        if (!p) return -1;
        d->pool = p;
        d->pool_cap = cap;
    }
    long off = (long)d->pool_len;
    memcpy(d->pool + d->pool_len, s, len);
    d->pool[d->pool_len + len] = '\0';
    d->pool_len += len + 1;
    return off;
}

void ydoc_free(ydoc *d)
{
    free(d->node);
    free(d->pool);
    memset(d, 0, sizeof *d);
}

const char *ydoc_kind_name(const ydoc_node *n)
{
    switch (n->kind) {
    case YDOC_MAP: return "a mapping";
    case YDOC_SEQ: return "a sequence";
    default: return ydoc_is_null(n) ? "null" : "a scalar";
    }
}

bool ydoc_is_null(const ydoc_node *n)
{
    if (n->kind != YDOC_SCALAR || n->quoted) return false;
    return n->len == 0 || strcmp(n->text, "~") == 0 || strcmp(n->text, "null") == 0 ||
           strcmp(n->text, "Null") == 0 || strcmp(n->text, "NULL") == 0;
}

/* Line/column of a byte offset, counting lines like libyaml does. */
static void locate(const char *buf, size_t off, int *line, int *col)
{
    int l = 1, c = 1;
    for (size_t i = 0; i < off; i++) {
        if (buf[i] == '\n') {
            l++;
            c = 1;
        } else {
            c++;
        }
    }
    *line = l;
    *col = c;
}

/* Builder state while events arrive: the open collections (node index and
 * the last child appended to each) and scalar texts as pool offsets, since
 * the pool may move until the parse ends. */
typedef struct ybuild {
    ydoc *d;
    const char *name;
    dpep_diag *diag;
    int stack[DPEP_CONFIG_MAX_DEPTH + 1], last[DPEP_CONFIG_MAX_DEPTH + 1];
    int depth, docs;
    long *text_off;     /* owned; text_off[i] is node i's pool offset or -1 */
    size_t text_cap;
} ybuild;

/* Refuses input libyaml should never see: oversized files and NUL bytes
 * (libyaml would stop at the NUL and report a misleading error). */
static dpep_status check_input(const char *buf, size_t len, const char *name, dpep_diag *diag)
{
    if (len > DPEP_CONFIG_MAX_BYTES) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR,
                      "%s:1:1: file is larger than %u bytes (expected a YAML config, not a data "
                      "file)", name, DPEP_CONFIG_MAX_BYTES);
        return DPEP_ERR_INVALID;
    }
    const char *nul = memchr(buf, '\0', len);
    if (nul) {
        int l, c;
        locate(buf, (size_t)(nul - buf), &l, &c);
        dpep_diag_add(diag, DPEP_DIAG_ERROR,
                      "%s:%d:%d: NUL byte in file (expected UTF-8 YAML text; is this a binary "
                      "file?)", name, l, c);
        return DPEP_ERR_INVALID;
    }
    return DPEP_OK;
}

/* One message for a failed yaml_parser_parse, at the problem's position. */
static void report_syntax_error(const yaml_parser_t *parser, const char *buf, size_t len,
                                const char *name, dpep_diag *diag)
{
    int l = (int)parser->problem_mark.line + 1, c = (int)parser->problem_mark.column + 1;
    /* Reader errors (bad UTF-8, control characters) carry a byte
     * offset instead of a mark. */
    if (parser->error == YAML_READER_ERROR)
        locate(buf, parser->problem_offset < len ? parser->problem_offset : len, &l, &c);
    const char *prob = parser->problem ? parser->problem : "malformed YAML";
    if (parser->context)
        dpep_diag_add(diag, DPEP_DIAG_ERROR,
                      "%s:%d:%d: YAML syntax error: %s %s (line %d)", name, l, c, prob,
                      parser->context, (int)parser->context_mark.line + 1);
    else
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d:%d: YAML syntax error: %s", name,
                      l, c, prob);
}

/* Grows text_off to hold node `idx`. */
static dpep_status reserve_text(ybuild *b, int idx)
{
    if ((size_t)idx < b->text_cap) return DPEP_OK;
    size_t cap = b->text_cap ? b->text_cap * 2 : 64;
    long *p = realloc(b->text_off, cap * sizeof *p);
    if (!p) {
        dpep_diag_add(b->diag, DPEP_DIAG_ERROR, "%s: out of memory", b->name);
        return DPEP_ERR_NOMEM;
    }
    b->text_off = p;
    b->text_cap = cap;
    return DPEP_OK;
}

/* A scalar or the start of a sequence or mapping: refuses tags and deep
 * nesting, appends the node to its parent and opens a collection. */
static dpep_status add_node(ybuild *b, const yaml_event_t *ev)
{
    ydoc *d = b->d;
    const yaml_mark_t *m = &ev->start_mark;
    const yaml_char_t *tag = ev->type == YAML_SCALAR_EVENT ? ev->data.scalar.tag
                             : ev->type == YAML_SEQUENCE_START_EVENT
                                 ? ev->data.sequence_start.tag
                                 : ev->data.mapping_start.tag;
    if (tag) {
        dpep_diag_add(b->diag, DPEP_DIAG_ERROR,
                      "%s:%d:%d: YAML tag %s (tags are not supported in dpep configs)",
                      b->name, (int)m->line + 1, (int)m->column + 1, (const char *)tag);
        return DPEP_ERR_INVALID;
    }
    ydoc_kind k = ev->type == YAML_SCALAR_EVENT           ? YDOC_SCALAR
                  : ev->type == YAML_SEQUENCE_START_EVENT ? YDOC_SEQ
                                                          : YDOC_MAP;
    if (k != YDOC_SCALAR && b->depth >= DPEP_CONFIG_MAX_DEPTH) {
        dpep_diag_add(b->diag, DPEP_DIAG_ERROR,
                      "%s:%d:%d: nesting deeper than %d levels (expected a shallow "
                      "config: section -> key -> value)", b->name, (int)m->line + 1,
                      (int)m->column + 1, DPEP_CONFIG_MAX_DEPTH);
        return DPEP_ERR_INVALID;
    }
    int idx = node_new(d, k, m);
    if (idx < 0) {
        dpep_diag_add(b->diag, DPEP_DIAG_ERROR,
                      "%s:%d:%d: more than %d YAML nodes (expected a config, not a "
                      "data file)", b->name, (int)m->line + 1, (int)m->column + 1,
                      DPEP_CONFIG_MAX_NODES);
        return DPEP_ERR_INVALID;
    }
    DPEP_TRY(reserve_text(b, idx));
    b->text_off[idx] = -1;
    if (k == YDOC_SCALAR) {
        long off = pool_add(d, ev->data.scalar.value, ev->data.scalar.length);
        if (off < 0) {
            dpep_diag_add(b->diag, DPEP_DIAG_ERROR, "%s: out of memory", b->name);
            return DPEP_ERR_NOMEM;
        }
        b->text_off[idx] = off;
        d->node[idx].len = ev->data.scalar.length;
        d->node[idx].quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
    }
    /* Link into the parent. */
    if (b->depth > 0) {
        int parent = b->stack[b->depth - 1];
        if (b->last[b->depth - 1] < 0) d->node[parent].first = idx;
        else d->node[b->last[b->depth - 1]].next = idx;
        b->last[b->depth - 1] = idx;
        d->node[parent].n_children++;
    } else if (idx != 0) {
        return DPEP_ERR_INTERNAL; /* libyaml gives one root per document */
    }
    if (k != YDOC_SCALAR) {
        b->stack[b->depth] = idx;
        b->last[b->depth] = -1;
        b->depth++;
    }
    return DPEP_OK;
}

/* One parser event; sets *done at the end of the stream. */
static dpep_status on_event(ybuild *b, const yaml_event_t *ev, bool *done)
{
    const yaml_mark_t *m = &ev->start_mark;
    switch (ev->type) {
    case YAML_STREAM_START_EVENT:
    case YAML_DOCUMENT_END_EVENT:
    case YAML_NO_EVENT:
        return DPEP_OK;
    case YAML_STREAM_END_EVENT:
        *done = true;
        return DPEP_OK;
    case YAML_DOCUMENT_START_EVENT:
        if (++b->docs > 1) {
            dpep_diag_add(b->diag, DPEP_DIAG_ERROR,
                          "%s:%d:%d: a second YAML document (expected one document per "
                          "config file)", b->name, (int)m->line + 1, (int)m->column + 1);
            return DPEP_ERR_INVALID;
        }
        return DPEP_OK;
    case YAML_ALIAS_EVENT:
        dpep_diag_add(b->diag, DPEP_DIAG_ERROR,
                      "%s:%d:%d: YAML alias *%s (aliases are not supported in dpep "
                      "configs; write the value out)", b->name, (int)m->line + 1,
                      (int)m->column + 1, (const char *)ev->data.alias.anchor);
        return DPEP_ERR_INVALID;
    case YAML_SCALAR_EVENT:
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT:
        return add_node(b, ev);
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        if (b->depth > 0) b->depth--;
        return DPEP_OK;
    }
    return DPEP_OK;
}

dpep_status ydoc_parse(ydoc *d, const char *buf, size_t len, const char *name, dpep_diag *diag)
{
    memset(d, 0, sizeof *d);
    DPEP_TRY(check_input(buf, len, name, diag));

    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot initialize the YAML parser", name);
        return DPEP_ERR_NOMEM;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);

    ybuild b = {.d = d, .name = name, .diag = diag};
    bool done = false;
    dpep_status st = DPEP_OK;
    while (!done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            report_syntax_error(&parser, buf, len, name, diag);
            st = DPEP_ERR_INVALID;
            break;
        }
        st = on_event(&b, &ev, &done);
        yaml_event_delete(&ev);
        if (st != DPEP_OK) break;
    }
    yaml_parser_delete(&parser);
    if (st == DPEP_OK) {
        for (int i = 0; i < d->n; i++)
            d->node[i].text = b.text_off[i] >= 0 ? d->pool + b.text_off[i] : "";
    } else {
        ydoc_free(d);
    }
    free(b.text_off);
    return st;
}
