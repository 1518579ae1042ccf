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

dpep_status ydoc_parse(ydoc *d, const char *buf, size_t len, const char *name, dpep_diag *diag)
{
    memset(d, 0, sizeof *d);
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
                      "%s:%d:%d: NUL byte in file (expected UTF-8 YAML text; is this a binary file?)",
                      name, l, c);
        return DPEP_ERR_INVALID;
    }

    yaml_parser_t parser;
    if (!yaml_parser_initialize(&parser)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot initialize the YAML parser", name);
        return DPEP_ERR_NOMEM;
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)buf, len);
    yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING);

    /* Stack of open collections: node index and the last child appended. */
    int stack[DPEP_CONFIG_MAX_DEPTH + 1], last[DPEP_CONFIG_MAX_DEPTH + 1];
    int depth = 0, docs = 0;
    bool done = false;
    dpep_status st = DPEP_OK;
    /* Scalar texts are stored as pool offsets first (the pool may move). */
    long *text_off = NULL;
    size_t text_cap = 0;

    while (!done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            int l = (int)parser.problem_mark.line + 1, c = (int)parser.problem_mark.column + 1;
            /* Reader errors (bad UTF-8, control characters) carry a byte
             * offset instead of a mark. */
            if (parser.error == YAML_READER_ERROR)
                locate(buf, parser.problem_offset < len ? parser.problem_offset : len, &l, &c);
            const char *prob = parser.problem ? parser.problem : "malformed YAML";
            if (parser.context)
                dpep_diag_add(diag, DPEP_DIAG_ERROR,
                              "%s:%d:%d: YAML syntax error: %s %s (line %d)", name, l, c, prob,
                              parser.context, (int)parser.context_mark.line + 1);
            else
                dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d:%d: YAML syntax error: %s", name,
                              l, c, prob);
            st = DPEP_ERR_INVALID;
            break;
        }
        const yaml_mark_t *m = &ev.start_mark;
        int idx = -1;
        switch (ev.type) {
        case YAML_STREAM_START_EVENT:
        case YAML_DOCUMENT_END_EVENT:
            break;
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1) {
                dpep_diag_add(diag, DPEP_DIAG_ERROR,
                              "%s:%d:%d: a second YAML document (expected one document per "
                              "config file)", name, (int)m->line + 1, (int)m->column + 1);
                st = DPEP_ERR_INVALID;
            }
            break;
        case YAML_ALIAS_EVENT:
            dpep_diag_add(diag, DPEP_DIAG_ERROR,
                          "%s:%d:%d: YAML alias *%s (aliases are not supported in dpep "
                          "configs; write the value out)", name, (int)m->line + 1,
                          (int)m->column + 1, (const char *)ev.data.alias.anchor);
            st = DPEP_ERR_INVALID;
            break;
        case YAML_SCALAR_EVENT:
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT: {
            const yaml_char_t *tag = ev.type == YAML_SCALAR_EVENT ? ev.data.scalar.tag
                                     : ev.type == YAML_SEQUENCE_START_EVENT
                                         ? ev.data.sequence_start.tag
                                         : ev.data.mapping_start.tag;
            if (tag) {
                dpep_diag_add(diag, DPEP_DIAG_ERROR,
                              "%s:%d:%d: YAML tag %s (tags are not supported in dpep configs)",
                              name, (int)m->line + 1, (int)m->column + 1, (const char *)tag);
                st = DPEP_ERR_INVALID;
                break;
            }
            ydoc_kind k = ev.type == YAML_SCALAR_EVENT           ? YDOC_SCALAR
                          : ev.type == YAML_SEQUENCE_START_EVENT ? YDOC_SEQ
                                                                 : YDOC_MAP;
            if (k != YDOC_SCALAR && depth >= DPEP_CONFIG_MAX_DEPTH) {
                dpep_diag_add(diag, DPEP_DIAG_ERROR,
                              "%s:%d:%d: nesting deeper than %d levels (expected a shallow "
                              "config: section -> key -> value)", name, (int)m->line + 1,
                              (int)m->column + 1, DPEP_CONFIG_MAX_DEPTH);
                st = DPEP_ERR_INVALID;
                break;
            }
            idx = node_new(d, k, m);
            if (idx < 0) {
                dpep_diag_add(diag, DPEP_DIAG_ERROR,
                              "%s:%d:%d: more than %d YAML nodes (expected a config, not a "
                              "data file)", name, (int)m->line + 1, (int)m->column + 1,
                              DPEP_CONFIG_MAX_NODES);
                st = DPEP_ERR_INVALID;
                break;
            }
            if ((size_t)idx >= text_cap) {
                size_t cap = text_cap ? text_cap * 2 : 64;
                long *p = realloc(text_off, cap * sizeof *p);
                if (!p) {
                    st = DPEP_ERR_NOMEM;
                    dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: out of memory", name);
                    break;
                }
                text_off = p;
                text_cap = cap;
            }
            text_off[idx] = -1;
            if (k == YDOC_SCALAR) {
                long off = pool_add(d, ev.data.scalar.value, ev.data.scalar.length);
                if (off < 0) {
                    st = DPEP_ERR_NOMEM;
                    dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: out of memory", name);
                    break;
                }
                text_off[idx] = off;
                d->node[idx].len = ev.data.scalar.length;
                d->node[idx].quoted = ev.data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
            }
            /* Link into the parent. */
            if (depth > 0) {
                int parent = stack[depth - 1];
                if (last[depth - 1] < 0) d->node[parent].first = idx;
                else d->node[last[depth - 1]].next = idx;
                last[depth - 1] = idx;
                d->node[parent].n_children++;
            } else if (idx != 0) {
                st = DPEP_ERR_INTERNAL; /* libyaml gives one root per document */
                break;
            }
            if (k != YDOC_SCALAR) {
                stack[depth] = idx;
                last[depth] = -1;
                depth++;
            }
            break;
        }
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            if (depth > 0) depth--;
            break;
        case YAML_NO_EVENT:
            break;
        }
        yaml_event_delete(&ev);
        if (st != DPEP_OK) break;
    }
    yaml_parser_delete(&parser);
    if (st == DPEP_OK) {
        for (int i = 0; i < d->n; i++)
            d->node[i].text = text_off[i] >= 0 ? d->pool + text_off[i] : "";
    } else {
        ydoc_free(d);
    }
    free(text_off);
    return st;
}
