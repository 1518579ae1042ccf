/* yaml_doc.h — internal: a bounded YAML document tree built from libyaml
 * events, with a line and column on every node. Refuses aliases, tags,
 * NUL bytes, several documents, deep nesting and oversized input, so that
 * hostile files cost bounded time and memory. */
#ifndef DPEP_YAML_DOC_H
#define DPEP_YAML_DOC_H

#include "dpep_config.h"

typedef enum ydoc_kind { YDOC_SCALAR = 0, YDOC_MAP, YDOC_SEQ } ydoc_kind;

typedef struct ydoc_node {
    ydoc_kind kind;
    int line, col;      /* 1-based position of the node's first character */
    bool quoted;        /* scalar written with quotes or as a block literal */
    const char *text;   /* scalar text (NUL-terminated), "" otherwise      */
    size_t len;         /* scalar length in bytes (may hold no NUL: checked) */
    int first, next;    /* first child / next sibling (node index), -1 none.
                           A MAP's children alternate key, value.           */
    int n_children;
} ydoc_node;

typedef struct ydoc {
    ydoc_node *node;    /* owned; node[0] is the root when n > 0  */
    int n, cap;
    char *pool;         /* owned; scalar texts                     */
    size_t pool_len, pool_cap;
} ydoc;

/* Parses `len` bytes. On error writes one "NAME:LINE:COL: …" message to diag
 * and returns DPEP_ERR_INVALID; `doc` is then empty but safe to free. An
 * empty document yields n == 0. */
dpep_status ydoc_parse(ydoc *doc, const char *buf, size_t len, const char *name,
                       dpep_diag *diag);
void ydoc_free(ydoc *doc);

/* "a mapping", "a sequence", "a scalar" / "null" for messages. */
const char *ydoc_kind_name(const ydoc_node *n);
bool ydoc_is_null(const ydoc_node *n);

#endif
