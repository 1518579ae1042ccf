/* radix.c — the prefix cache's radix tree (radix.h): page-granular edges in
 * pooled, recycled nodes; children found through one hash table keyed by
 * (parent, first page); LRU eviction of unlocked leaves through a binary heap.
 *
 * Data structures, and why:
 *  - Node pool: chunks of nodes that never move (so node pointers, the
 *    handles callers lock, stay valid), a LIFO free list, and per-node token
 *    and page arrays (dpep_grow) kept when a node is recycled, so a warm tree
 *    inserts without malloc.
 *  - Children: one open-addressing table (linear probing, backward-shift
 *    deletion) over all non-root nodes, keyed by a hash of (parent's seq,
 *    the child's first page). A lookup hashes one page and compares it, so a
 *    walk costs O(tokens) whatever the fan-out (the root of a busy server has
 *    thousands of children).
 *  - Eviction: a binary min-heap of the evictable leaves (unlocked, no
 *    children), ordered by (time, seq). A scan over leaves would cost
 *    O(leaves) per evicted node; a heap keeps evict(), lock/unlock and the
 *    time refresh of a match at O(log leaves). Each node knows its heap slot.
 *
 * Splits: when an insert diverges inside node N after j whole pages, a new
 * node M takes N's first j pages and goes between N's parent and N; N keeps
 * the rest of its pages, its children and its identity. A running request
 * that locked N (or a descendant) keeps a handle that still names the node
 * holding its deepest pages, and M's lock count is N's (every lock through N
 * also passes through M), so unlock(N) later walks N, M and up, and every
 * count returns to zero. M inherits N's time, and M's seq is new.
 *
 * Matches do not split: a match that ends inside N (a divergence, the end of
 * the query or max_pages) returns N; locking N also protects N's unmatched
 * tail, which errs on the safe side and keeps match free of allocation. */
#include "radix.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#define POOL_CHUNK_MIN 64   /* nodes in the first chunk; chunks then double */
#define POOL_CHUNK_MAX 4096 /* ... up to this many nodes per chunk          */
#define TABLE_MIN 64        /* slots of the first child table               */

struct dpep_radix_node {
    dpep_radix_node *parent;    /* NULL for the root and for free nodes       */
    dpep_radix_node *next_free; /* free-list link while not in the tree       */
    int32_t *tok;               /* (n_pages * page_size) token ids of the edge */
    int32_t *pg;                /* (n_pages) KV page ids; NULL without pages  */
    int64_t tok_cap, pg_cap;    /* capacities in elements; kept when recycled */
    int64_t n_pages;            /* whole pages on the edge, >= 1 (root: 0)    */
    int64_t n_children;
    int64_t lock;               /* locks taken on this node or a descendant   */
    int64_t heap_at;            /* slot in the LRU heap; -1 when not in it    */
    uint64_t key;               /* edge_key(parent->seq, first page)          */
    uint64_t seq;               /* creation order: unique, the LRU tie-break  */
    uint64_t time;              /* last use, the caller's `now`               */
    bool live;                  /* in the tree (false: on the free list)      */
};

typedef struct radix_chunk {
    dpep_radix_node *nodes;     /* (n) nodes, calloc'd, never moved           */
    int64_t n;
} radix_chunk;

struct dpep_radix {
    dpep_radix_params p;
    dpep_radix_node root;       /* seq 0, no pages, never evicted nor hashed  */
    uint64_t next_seq;          /* seq of the next node taken from the pool   */

    radix_chunk *chunks;        /* (n_chunks) the node pool                   */
    int64_t n_chunks, cap_chunks, pool_nodes;
    dpep_radix_node *free;      /* free list (LIFO)                           */
    int64_t n_free, n_live;     /* nodes on the free list / in the tree       */

    dpep_radix_node **slots;    /* (n_slots) child table, a power of two      */
    int64_t n_slots, n_entries; /* n_entries == n_live, <= n_slots / 2        */

    dpep_radix_node **heap;     /* (heap_cap) evictable leaves, min at [0]    */
    int64_t heap_n, heap_cap;   /* heap_cap >= n_live                         */

    int64_t cached, evictable;  /* pages held; of them in unlocked nodes      */
};

/* ------------------------------------------------------------------------ */
/* LRU heap of evictable leaves: least recent first, the older node on ties. */
/* ------------------------------------------------------------------------ */
static bool lru_before(const dpep_radix_node *a, const dpep_radix_node *b)
{
    return a->time != b->time ? a->time < b->time : a->seq < b->seq;
}

static void heap_set(dpep_radix *t, int64_t i, dpep_radix_node *n)
{
    t->heap[i] = n;
    n->heap_at = i;
}

static void heap_up(dpep_radix *t, int64_t i)
{
    dpep_radix_node *n = t->heap[i];
    while (i > 0) {
        int64_t up = (i - 1) / 2;
        if (!lru_before(n, t->heap[up])) break;
        heap_set(t, i, t->heap[up]);
        i = up;
    }
    heap_set(t, i, n);
}

static void heap_down(dpep_radix *t, int64_t i)
{
    dpep_radix_node *n = t->heap[i];
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= t->heap_n) break;
        if (c + 1 < t->heap_n && lru_before(t->heap[c + 1], t->heap[c])) c++;
        if (!lru_before(t->heap[c], n)) break;
        heap_set(t, i, t->heap[c]);
        i = c;
    }
    heap_set(t, i, n);
}

/* Capacity is reserved before nodes are made (heap_cap >= n_live). */
static void heap_push(dpep_radix *t, dpep_radix_node *n)
{
    assert(n->heap_at < 0 && t->heap_n < t->heap_cap);
    heap_set(t, t->heap_n++, n);
    heap_up(t, n->heap_at);
}

static void heap_remove(dpep_radix *t, dpep_radix_node *n)
{
    int64_t i = n->heap_at;
    assert(i >= 0 && i < t->heap_n && t->heap[i] == n);
    n->heap_at = -1;
    dpep_radix_node *last = t->heap[--t->heap_n];
    if (i == t->heap_n) return;
    heap_set(t, i, last);
    heap_up(t, i);
    heap_down(t, last->heap_at);
}

/* A node is in the heap exactly when it is an unlocked leaf (not the root). */
static void heap_sync(dpep_radix *t, dpep_radix_node *n)
{
    bool want = n != &t->root && n->n_children == 0 && n->lock == 0;
    if (want && n->heap_at < 0) heap_push(t, n);
    if (!want && n->heap_at >= 0) heap_remove(t, n);
}

/* ------------------------------------------------------------------------ */
/* Child table: slot of a child = hash(parent seq, first page) & mask.        */
/* ------------------------------------------------------------------------ */
static uint64_t mix64(uint64_t x)
{
    x ^= x >> 31;
    x *= 0x7fb5d329728ea185ULL;
    x ^= x >> 27;
    x *= 0x81dadef4bc2dd44dULL;
    x ^= x >> 33;
    return x;
}

static uint64_t edge_key(uint64_t parent_seq, const int32_t *page, int ps)
{
    uint64_t h = mix64(parent_seq + 0x9e3779b97f4a7c15ULL);
    for (int i = 0; i < ps; i++) h = (h ^ (uint32_t)page[i]) * 0x100000001b3ULL;
    return mix64(h);
}

static bool page_eq(const int32_t *a, const int32_t *b, int ps)
{
    return memcmp(a, b, (size_t)ps * sizeof *a) == 0;
}

/* The child of `parent` whose first page is page[0, ps), or NULL. */
static dpep_radix_node *child_find(const dpep_radix *t, const dpep_radix_node *parent,
                                   const int32_t *page)
{
    if (t->n_slots == 0) return NULL;
    int ps = t->p.page_size;
    uint64_t key = edge_key(parent->seq, page, ps);
    uint64_t mask = (uint64_t)t->n_slots - 1;
    for (uint64_t i = key & mask; t->slots[i]; i = (i + 1) & mask) {
        dpep_radix_node *c = t->slots[i];
        if (c->key == key && c->parent == parent && page_eq(c->tok, page, ps)) return c;
    }
    return NULL;
}

/* Room is reserved beforehand (n_entries < n_slots / 2). */
static void table_put(dpep_radix *t, dpep_radix_node *n)
{
    uint64_t mask = (uint64_t)t->n_slots - 1;
    uint64_t i = n->key & mask;
    while (t->slots[i]) i = (i + 1) & mask;
    t->slots[i] = n;
    t->n_entries++;
}

static uint64_t table_slot_of(const dpep_radix *t, const dpep_radix_node *n)
{
    uint64_t mask = (uint64_t)t->n_slots - 1;
    uint64_t i = n->key & mask;
    while (t->slots[i] != n) {
        assert(t->slots[i]);
        i = (i + 1) & mask;
    }
    return i;
}

/* Backward-shift deletion: later entries of the probe run move up into the
 * hole unless their home slot lies cyclically in (hole, their slot]. */
static void table_del(dpep_radix *t, const dpep_radix_node *n)
{
    uint64_t mask = (uint64_t)t->n_slots - 1;
    uint64_t hole = table_slot_of(t, n);
    t->slots[hole] = NULL;
    for (uint64_t j = (hole + 1) & mask; t->slots[j]; j = (j + 1) & mask) {
        uint64_t home = t->slots[j]->key & mask;
        bool stays = hole <= j ? (hole < home && home <= j) : (hole < home || home <= j);
        if (stays) continue;
        t->slots[hole] = t->slots[j];
        t->slots[j] = NULL;
        hole = j;
    }
    t->n_entries--;
}

/* Makes room for `entries` children at a load of at most 1/2. */
static dpep_status table_reserve(dpep_radix *t, int64_t entries)
{
    if (entries * 2 <= t->n_slots) return DPEP_OK;
    int64_t cap = t->n_slots ? t->n_slots : TABLE_MIN;
    while (cap < entries * 2) cap *= 2;
    dpep_radix_node **slots = calloc((size_t)cap, sizeof *slots);
    if (!slots) return DPEP_ERR_NOMEM;
    dpep_radix_node **old = t->slots;
    int64_t n_old = t->n_slots;
    t->slots = slots;
    t->n_slots = cap;
    t->n_entries = 0;
    for (int64_t i = 0; i < n_old; i++)
        if (old[i]) table_put(t, old[i]);
    free(old);
    return DPEP_OK;
}

/* ------------------------------------------------------------------------ */
/* Node pool.                                                                */
/* ------------------------------------------------------------------------ */
static dpep_status pool_grow(dpep_radix *t)
{
    int64_t n = t->pool_nodes < POOL_CHUNK_MIN   ? POOL_CHUNK_MIN
                : t->pool_nodes > POOL_CHUNK_MAX ? POOL_CHUNK_MAX
                                                 : t->pool_nodes;
    if (!dpep_grow((void **)&t->chunks, &t->cap_chunks, t->n_chunks + 1, sizeof *t->chunks))
        return DPEP_ERR_NOMEM;
    dpep_radix_node *c = calloc((size_t)n, sizeof *c);
    if (!c) return DPEP_ERR_NOMEM;
    t->chunks[t->n_chunks++] = (radix_chunk){c, n};
    t->pool_nodes += n;
    for (int64_t i = n - 1; i >= 0; i--) { /* lowest address first off the list */
        c[i].heap_at = -1;
        c[i].next_free = t->free;
        t->free = &c[i];
    }
    t->n_free += n;
    return DPEP_OK;
}

/* Room in a (free) node's arrays for n_pages pages. */
static dpep_status node_room(const dpep_radix *t, dpep_radix_node *n, int64_t n_pages)
{
    if (!dpep_grow((void **)&n->tok, &n->tok_cap, n_pages * t->p.page_size, sizeof *n->tok))
        return DPEP_ERR_NOMEM;
    if (t->p.pages && !dpep_grow((void **)&n->pg, &n->pg_cap, n_pages, sizeof *n->pg))
        return DPEP_ERR_NOMEM;
    return DPEP_OK;
}

/* Everything an insert needs for k new nodes of need[0..k) pages (taken from
 * the free list in that order): nodes, heap and table room, node arrays.
 * Touches no tree state, so a failure leaves the tree as it was. */
static dpep_status radix_reserve(dpep_radix *t, const int64_t *need, int k)
{
    while (t->n_free < k) DPEP_TRY(pool_grow(t));
    if (!dpep_grow((void **)&t->heap, &t->heap_cap, t->n_live + k, sizeof *t->heap))
        return DPEP_ERR_NOMEM;
    DPEP_TRY(table_reserve(t, t->n_entries + k));
    dpep_radix_node *n = t->free;
    for (int i = 0; i < k; i++, n = n->next_free) DPEP_TRY(node_room(t, n, need[i]));
    return DPEP_OK;
}

/* Takes the head of the free list (reserved) as a fresh, unlinked node. */
static dpep_radix_node *node_take(dpep_radix *t)
{
    dpep_radix_node *n = t->free;
    assert(n && !n->live);
    t->free = n->next_free;
    t->n_free--;
    t->n_live++;
    n->next_free = NULL;
    n->parent = NULL;
    n->n_pages = 0;
    n->n_children = 0;
    n->lock = 0;
    n->heap_at = -1;
    n->seq = t->next_seq++;
    n->live = true;
    return n;
}

static void node_put(dpep_radix *t, dpep_radix_node *n)
{
    n->live = false;
    n->parent = NULL;
    n->next_free = t->free;
    t->free = n;
    t->n_free++;
    t->n_live--;
}

/* ------------------------------------------------------------------------ */
/* Tree operations.                                                          */
/* ------------------------------------------------------------------------ */
typedef struct radix_walk {
    dpep_radix_node *node; /* deepest node touched; the root if none        */
    int64_t in_node;       /* pages of node's edge matched (all, or fewer)  */
    int64_t pages;         /* pages matched in total                        */
} radix_walk;

/* Follows tokens[0, avail * page_size) from the root; copies the matched
 * page ids to pages_out when given. Changes nothing. */
static radix_walk radix_follow(const dpep_radix *t, const int32_t *tokens, int64_t avail,
                               int32_t *pages_out)
{
    int ps = t->p.page_size;
    radix_walk w = {(dpep_radix_node *)&t->root, 0, 0};
    while (w.pages < avail) {
        const int32_t *q = tokens + w.pages * ps;
        dpep_radix_node *c = child_find(t, w.node, q);
        if (!c) break;
        int64_t lim = c->n_pages < avail - w.pages ? c->n_pages : avail - w.pages;
        int64_t m = 1; /* child_find compared the first page */
        while (m < lim && page_eq(c->tok + m * ps, q + m * ps, ps)) m++;
        if (pages_out && c->pg) memcpy(pages_out + w.pages, c->pg, (size_t)m * sizeof *c->pg);
        w.node = c;
        w.in_node = m;
        w.pages += m;
        if (m < c->n_pages) break;
    }
    return w;
}

/* Sets the time of n and its ancestors to now. */
static void radix_touch(dpep_radix *t, dpep_radix_node *n, uint64_t now)
{
    for (; n != &t->root; n = n->parent) {
        n->time = now;
        if (n->heap_at >= 0) {
            heap_up(t, n->heap_at);
            heap_down(t, n->heap_at);
        }
    }
}

/* Splits n after its first j pages (0 < j < n_pages): a new node takes
 * them and becomes n's parent; n keeps the rest (see the file comment). */
static dpep_radix_node *radix_split(dpep_radix *t, dpep_radix_node *n, int64_t j)
{
    int ps = t->p.page_size;
    dpep_radix_node *m = node_take(t);
    memcpy(m->tok, n->tok, (size_t)(j * ps) * sizeof *n->tok);
    memmove(n->tok, n->tok + j * ps, (size_t)((n->n_pages - j) * ps) * sizeof *n->tok);
    if (t->p.pages) {
        memcpy(m->pg, n->pg, (size_t)j * sizeof *n->pg);
        memmove(n->pg, n->pg + j, (size_t)(n->n_pages - j) * sizeof *n->pg);
    }
    m->n_pages = j;
    n->n_pages -= j;
    m->parent = n->parent;
    m->key = n->key; /* same parent, same first page: m takes n's slot */
    m->lock = n->lock;
    m->time = n->time;
    m->n_children = 1;
    t->slots[table_slot_of(t, n)] = m;
    n->parent = m;
    n->key = edge_key(m->seq, n->tok, ps);
    table_put(t, n);
    /* n stays in the heap or out of it (same children, same lock); m has a
     * child. Pages only moved between equally locked nodes: counts hold. */
    return m;
}

/* Hangs a new unlocked leaf of n_pages pages under parent, retaining them. */
static dpep_radix_node *radix_leaf(dpep_radix *t, dpep_radix_node *parent, const int32_t *tokens,
                                   const int32_t *pages, int64_t n_pages, uint64_t now)
{
    int ps = t->p.page_size;
    dpep_radix_node *n = node_take(t);
    memcpy(n->tok, tokens, (size_t)(n_pages * ps) * sizeof *tokens);
    if (t->p.pages) {
        memcpy(n->pg, pages, (size_t)n_pages * sizeof *pages);
        for (int64_t i = 0; i < n_pages; i++) t->p.retain(t->p.user, pages[i]);
    }
    n->n_pages = n_pages;
    n->parent = parent;
    n->key = edge_key(parent->seq, tokens, ps);
    n->time = now;
    table_put(t, n);
    parent->n_children++;
    heap_sync(t, parent); /* parent is no leaf any more */
    heap_sync(t, n);
    t->cached += n_pages;
    t->evictable += n_pages;
    return n;
}

/* Removes an evictable leaf: releases its pages, recycles it, and lets its
 * parent join the heap if that made it an unlocked leaf. */
static int64_t radix_drop(dpep_radix *t, dpep_radix_node *n)
{
    assert(n->n_children == 0 && n->lock == 0 && n != &t->root);
    int64_t dropped = n->n_pages;
    if (t->p.pages)
        for (int64_t i = 0; i < n->n_pages; i++) t->p.release(t->p.user, n->pg[i]);
    heap_remove(t, n);
    table_del(t, n);
    dpep_radix_node *parent = n->parent;
    parent->n_children--;
    heap_sync(t, parent);
    t->cached -= dropped;
    t->evictable -= dropped;
    node_put(t, n);
    return dropped;
}

/* ------------------------------------------------------------------------ */
/* Public API.                                                               */
/* ------------------------------------------------------------------------ */
dpep_status dpep_radix_create(const dpep_radix_params *p, dpep_radix **out)
{
    if (!p || !out || p->page_size < 1) return DPEP_ERR_INVALID;
    if (p->pages && (!p->retain || !p->release)) return DPEP_ERR_INVALID;
    dpep_radix *t = calloc(1, sizeof *t);
    if (!t) return DPEP_ERR_NOMEM;
    t->p = *p;
    if (!t->p.pages) {
        t->p.retain = NULL;
        t->p.release = NULL;
    }
    t->root.heap_at = -1;
    t->root.live = true;
    t->next_seq = 1; /* the root is seq 0 */
    *out = t;
    return DPEP_OK;
}

void dpep_radix_destroy(dpep_radix *t)
{
    if (!t) return;
    for (int64_t c = 0; c < t->n_chunks; c++) {
        for (int64_t i = 0; i < t->chunks[c].n; i++) {
            dpep_radix_node *n = &t->chunks[c].nodes[i];
            if (n->live && t->p.pages)
                for (int64_t k = 0; k < n->n_pages; k++) t->p.release(t->p.user, n->pg[k]);
            free(n->tok);
            free(n->pg);
        }
        free(t->chunks[c].nodes);
    }
    free(t->chunks);
    free(t->slots);
    free(t->heap);
    free(t);
}

int64_t dpep_radix_match(dpep_radix *t, const int32_t *tokens, int64_t n, int64_t max_pages,
                         int32_t *pages, dpep_radix_node **node, uint64_t now)
{
    int64_t avail = tokens && n > 0 ? n / t->p.page_size : 0;
    if (max_pages < avail) avail = max_pages > 0 ? max_pages : 0;
    radix_walk w = radix_follow(t, tokens, avail, pages);
    radix_touch(t, w.node, now);
    if (node) *node = w.node;
    return w.pages;
}

void dpep_radix_lock(dpep_radix *t, dpep_radix_node *node)
{
    for (dpep_radix_node *n = node; n && n != &t->root; n = n->parent) {
        assert(n->live);
        if (n->lock++ == 0) {
            t->evictable -= n->n_pages;
            heap_sync(t, n);
        }
    }
}

void dpep_radix_unlock(dpep_radix *t, dpep_radix_node *node)
{
    for (dpep_radix_node *n = node; n && n != &t->root; n = n->parent) {
        assert(n->live && n->lock > 0); /* an unlock without its lock */
        if (n->lock <= 0) return;
        if (--n->lock == 0) {
            t->evictable += n->n_pages;
            heap_sync(t, n);
        }
    }
}

dpep_status dpep_radix_insert(dpep_radix *t, const int32_t *tokens, int64_t n_pages,
                              const int32_t *pages, uint64_t now, int64_t *added)
{
    if (n_pages < 0 || (n_pages > 0 && !tokens) || n_pages > INT64_MAX / t->p.page_size)
        return DPEP_ERR_INVALID;
    if (t->p.pages && n_pages > 0 && !pages) return DPEP_ERR_INVALID;
    if (!t->p.pages) pages = NULL;

    radix_walk w = radix_follow(t, tokens, n_pages, NULL);
    int64_t rest = n_pages - w.pages;
    dpep_radix_node *last = w.node;
    if (rest > 0) {
        /* A divergence inside a node splits it at the last whole page. */
        bool split = w.node != &t->root && w.in_node < w.node->n_pages;
        int64_t need[2] = {w.in_node, rest};
        DPEP_TRY(split ? radix_reserve(t, need, 2) : radix_reserve(t, need + 1, 1));
        dpep_radix_node *parent = split ? radix_split(t, w.node, w.in_node) : w.node;
        int64_t off = w.pages * t->p.page_size;
        last = radix_leaf(t, parent, tokens + off, pages ? pages + w.pages : NULL, rest, now);
    }
    radix_touch(t, last, now);
    if (added) *added = rest;
    return DPEP_OK;
}

int64_t dpep_radix_evict(dpep_radix *t, int64_t want)
{
    int64_t dropped = 0;
    while (dropped < want && t->heap_n > 0) dropped += radix_drop(t, t->heap[0]);
    return dropped;
}

int64_t dpep_radix_clear(dpep_radix *t)
{
    return dpep_radix_evict(t, INT64_MAX);
}

int64_t dpep_radix_cached_pages(const dpep_radix *t)
{
    return t->cached;
}

int64_t dpep_radix_evictable_pages(const dpep_radix *t)
{
    return t->evictable;
}
