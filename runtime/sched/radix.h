/* radix.h — private to runtime/sched: a radix tree over token ids whose
 * nodes own KV pages (the prefix cache of one DP group), or, without pages,
 * rank 0's view of what each DP group has cached (for cache-aware
 * assignment).
 *
 * Page-granular: every edge holds a whole number of pages (page_size tokens
 * each); a match counts whole pages only, and an insert takes whole pages.
 * A node holds one reference (retain) on each of its pages; eviction drops
 * it (release). Locks: a running request that adopted a matched prefix locks
 * its deepest node (and so the path to the root); locked nodes are never
 * evicted. Eviction takes least-recently-used unlocked leaves first (time is
 * the caller's counter, e.g. the step number; ties go to the older node), so
 * every attention-TP rank of a group, doing the same calls, keeps the same
 * tree.
 *
 * Memory: nodes come from a pool grown in chunks and recycled; a match
 * allocates nothing; an insert allocates only when the pool is exhausted.
 *
 * Ownership: the tree owns its nodes; pages are the caller's (the KV pool),
 * referenced through the retain/release callbacks. */
#ifndef DPEP_SCHED_RADIX_H
#define DPEP_SCHED_RADIX_H

#include <stdbool.h>
#include <stdint.h>

#include "dpep_base.h"

typedef struct dpep_radix dpep_radix;           /* opaque */
typedef struct dpep_radix_node dpep_radix_node; /* opaque */

typedef struct dpep_radix_params {
    int page_size;                    /* tokens per page, >= 1               */
    bool pages;                       /* false: a token-only tree (no pages) */
    /* with pages: one more / one less reference on a KV page */
    void (*retain)(void *user, int32_t page);
    void (*release)(void *user, int32_t page);
    void *user;
} dpep_radix_params;

/* DPEP_ERR_INVALID (page_size < 1, pages without callbacks), DPEP_ERR_NOMEM. */
dpep_status dpep_radix_create(const dpep_radix_params *p, dpep_radix **out);
/* Releases every page the tree holds; NULL is a no-op. */
void dpep_radix_destroy(dpep_radix *t);

/* The longest cached prefix of tokens[0, n) in whole pages, at most
 * max_pages: returns the pages matched; pages[0 .. matched) gets their page
 * ids when pages != NULL (the caller's array of max_pages). *node (may be
 * NULL) gets the deepest node of the match — lock it while using the pages;
 * the root when nothing matched. The matched path's time becomes `now`. */
int64_t dpep_radix_match(dpep_radix *t, const int32_t *tokens, int64_t n, int64_t max_pages,
                         int32_t *pages, dpep_radix_node **node, uint64_t now);
/* Locks / unlocks node and its ancestors (counted; the root is a no-op). */
void dpep_radix_lock(dpep_radix *t, dpep_radix_node *node);
void dpep_radix_unlock(dpep_radix *t, dpep_radix_node *node);

/* Inserts tokens[0, n_pages * page_size) held in pages[0 .. n_pages) (NULL
 * for a token-only tree). Where the tree already holds a prefix of it, the
 * tree's pages stay and the caller's are not taken; the new part's pages are
 * retained. *added (may be NULL) gets the pages newly held. The inserted
 * path's time becomes `now`. DPEP_ERR_NOMEM leaves the tree as it was. */
dpep_status dpep_radix_insert(dpep_radix *t, const int32_t *tokens, int64_t n_pages,
                              const int32_t *pages, uint64_t now, int64_t *added);

/* Evicts least-recently-used unlocked leaves (whole nodes; a parent whose
 * last child went becomes a leaf in turn) until at least `want` pages were
 * dropped or nothing unlocked is left. Returns the pages dropped. */
int64_t dpep_radix_evict(dpep_radix *t, int64_t want);
/* Evicts everything unlocked (flush). Returns the pages dropped. */
int64_t dpep_radix_clear(dpep_radix *t);

/* Pages the tree holds; of them, those no lock protects. */
int64_t dpep_radix_cached_pages(const dpep_radix *t);
int64_t dpep_radix_evictable_pages(const dpep_radix *t);

#endif /* DPEP_SCHED_RADIX_H */
