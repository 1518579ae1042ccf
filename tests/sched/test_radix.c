/* test_radix.c — the prefix cache's radix tree (runtime/sched/radix.h) on a
 * fake KV pool that counts the tree's references per page (every retain is
 * paired with one release, no page is held twice, none released twice, all
 * released at destroy):
 *   fixed cases: bad parameters; match on an empty tree; insert then match of
 *   the same, a longer and a shorter query, a mid-page divergence, the
 *   max_pages cap; shared prefixes (splits, whose page ids are kept, caller's
 *   duplicates not retained); locks (also across a split); LRU order with
 *   ties; evict(want); clear; token-only mode;
 *   randomized: thousands of operations against a page-level reference trie
 *   (an uncompressed trie that marks where radix nodes begin) that predicts
 *   every match, every insert's new pages, every eviction's released pages in
 *   order, and the cached/evictable counts. */
#include "radix.h"

#include "../dpep_test.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------ */
/* Fake KV pool: the tree's references per page id, and a release log.       */
/* ------------------------------------------------------------------------ */
#define KV_PAGES (1 << 20)

typedef struct fake_kv {
    int32_t *refs;           /* (KV_PAGES) the tree's references per page  */
    int64_t retains, releases;
    int64_t held;            /* pages with a reference                     */
    int64_t errors;          /* bad id, page held twice, released unheld   */
    int32_t *log;            /* (KV_PAGES) released pages, in order        */
    int64_t n_log;
} fake_kv;

static void kv_retain(void *user, int32_t page)
{
    fake_kv *kv = user;
    kv->retains++;
    if (page < 0 || page >= KV_PAGES || kv->refs[page] != 0) {
        kv->errors++;
        return;
    }
    kv->refs[page]++;
    kv->held++;
}

static void kv_release(void *user, int32_t page)
{
    fake_kv *kv = user;
    kv->releases++;
    if (page < 0 || page >= KV_PAGES || kv->refs[page] != 1) {
        kv->errors++;
        return;
    }
    kv->refs[page]--;
    kv->held--;
    if (kv->n_log < KV_PAGES) kv->log[kv->n_log++] = page;
}

static void kv_init(fake_kv *kv)
{
    memset(kv, 0, sizeof *kv);
    kv->refs = calloc(KV_PAGES, sizeof *kv->refs);
    kv->log = calloc(KV_PAGES, sizeof *kv->log);
    if (!kv->refs || !kv->log) {
        printf("FAIL out of memory\n");
        exit(1);
    }
}

static int64_t kv_held(const fake_kv *kv)
{
    int64_t n = 0;
    for (int64_t i = 0; i < KV_PAGES; i++) n += kv->refs[i];
    return n;
}

/* After destroy: every retain paired with a release, nothing held. */
static void kv_check_free(fake_kv *kv, const char *what)
{
    EXPECT(kv->errors == 0, "%s: %lld refcount errors", what, (long long)kv->errors);
    EXPECT(kv->retains == kv->releases, "%s: %lld retains, %lld releases", what,
           (long long)kv->retains, (long long)kv->releases);
    EXPECT(kv_held(kv) == 0, "%s: %lld pages still held", what, (long long)kv_held(kv));
    free(kv->refs);
    free(kv->log);
}

static dpep_radix *tree_new(int page_size, fake_kv *kv)
{
    dpep_radix_params p = {page_size, kv != NULL, kv ? kv_retain : NULL,
                           kv ? kv_release : NULL, kv};
    dpep_radix *t = NULL;
    dpep_status st = dpep_radix_create(&p, &t);
    if (st != DPEP_OK || !t) {
        printf("FAIL dpep_radix_create: %s\n", dpep_status_string(st));
        exit(1);
    }
    return t;
}

static bool ids_eq(const int32_t *a, const int32_t *b, int64_t n)
{
    return n == 0 || memcmp(a, b, (size_t)n * sizeof *a) == 0;
}

/* Page ids first .. first + n - 1. */
static void ids_from(int32_t *ids, int32_t first, int n)
{
    for (int i = 0; i < n; i++) ids[i] = first + i;
}

static bool released_all(const fake_kv *kv, int32_t first, int n)
{
    for (int i = 0; i < n; i++)
        if (kv->refs[first + i] != 0) return false;
    return true;
}

static bool held_all(const fake_kv *kv, int32_t first, int n)
{
    for (int i = 0; i < n; i++)
        if (kv->refs[first + i] != 1) return false;
    return true;
}

/* ------------------------------------------------------------------------ */
/* Fixed cases.                                                              */
/* ------------------------------------------------------------------------ */
static void test_create_invalid(void)
{
    dpep_radix *t = (dpep_radix *)0x1;
    dpep_radix_params p = {0, false, NULL, NULL, NULL};
    EXPECT(dpep_radix_create(&p, &t) == DPEP_ERR_INVALID, "page_size 0 accepted");
    p.page_size = -3;
    EXPECT(dpep_radix_create(&p, &t) == DPEP_ERR_INVALID, "page_size < 0 accepted");
    p.page_size = 4;
    p.pages = true;
    EXPECT(dpep_radix_create(&p, &t) == DPEP_ERR_INVALID, "pages without callbacks accepted");
    p.retain = kv_retain;
    EXPECT(dpep_radix_create(&p, &t) == DPEP_ERR_INVALID, "pages without release accepted");
    EXPECT(t == (dpep_radix *)0x1, "*out written on failure");
    EXPECT(dpep_radix_create(NULL, &t) == DPEP_ERR_INVALID, "NULL params accepted");
    dpep_radix_destroy(NULL); /* a no-op */
}

static void test_empty(void)
{
    fake_kv kv;
    kv_init(&kv);
    dpep_radix *t = tree_new(4, &kv);
    int32_t tok[16], out[4] = {-7, -7, -7, -7};
    for (int i = 0; i < 16; i++) tok[i] = i;
    dpep_radix_node *node = NULL;
    EXPECT(dpep_radix_match(t, tok, 16, 4, out, &node, 1) == 0, "match on an empty tree");
    EXPECT(node != NULL, "empty match gives no node (the root expected)");
    EXPECT(out[0] == -7, "empty match wrote page ids");
    dpep_radix_node *root = node;
    EXPECT(dpep_radix_match(t, NULL, 0, 4, NULL, &node, 1) == 0 && node == root,
           "empty query: 0 pages, the root");
    EXPECT(dpep_radix_match(t, tok, 16, 4, NULL, NULL, 1) == 0, "match with NULL outputs");
    dpep_radix_lock(t, root); /* the root: no-op */
    dpep_radix_unlock(t, root);
    EXPECT(dpep_radix_cached_pages(t) == 0 && dpep_radix_evictable_pages(t) == 0,
           "empty tree counts");
    EXPECT(dpep_radix_evict(t, 10) == 0 && dpep_radix_clear(t) == 0, "evict on an empty tree");
    dpep_radix_destroy(t);
    kv_check_free(&kv, "empty");
}

static void test_insert_match(void)
{
    fake_kv kv;
    kv_init(&kv);
    dpep_radix *t = tree_new(4, &kv);
    int32_t a[24], q[24], ids[4], dup[4], out[8];
    for (int i = 0; i < 24; i++) a[i] = 1000 + i;
    ids_from(ids, 10, 4);
    int64_t added = -1;
    EXPECT(dpep_radix_insert(t, a, 4, ids, 1, &added) == DPEP_OK && added == 4, "insert: %lld",
           (long long)added);
    EXPECT(held_all(&kv, 10, 4), "inserted pages not retained once each");
    EXPECT(dpep_radix_cached_pages(t) == 4 && dpep_radix_evictable_pages(t) == 4, "counts");

    dpep_radix_node *node = NULL, *root = NULL;
    dpep_radix_match(t, a, 0, 8, NULL, &root, 2);
    EXPECT(dpep_radix_match(t, a, 16, 8, out, &node, 2) == 4 && ids_eq(out, ids, 4),
           "match of the same");
    EXPECT(node && node != root, "match node is the root");
    EXPECT(dpep_radix_match(t, a, 24, 8, out, NULL, 2) == 4, "longer query");
    EXPECT(dpep_radix_match(t, a, 10, 8, out, NULL, 2) == 2 && ids_eq(out, ids, 2),
           "shorter query (2.5 pages) matches 2 pages");
    EXPECT(dpep_radix_match(t, a, 8, 8, out, NULL, 2) == 2, "shorter query of 2 pages");
    EXPECT(dpep_radix_match(t, a, 3, 8, out, &node, 2) == 0 && node == root,
           "under a page: 0 pages, the root");

    memcpy(q, a, sizeof q);
    q[9] = -1; /* inside page 2 */
    EXPECT(dpep_radix_match(t, q, 16, 8, out, NULL, 2) == 2 && ids_eq(out, ids, 2),
           "mid-page divergence: only whole pages before it");
    memcpy(q, a, sizeof q);
    q[8] = -1; /* first token of page 2 */
    EXPECT(dpep_radix_match(t, q, 16, 8, out, NULL, 2) == 2, "divergence at a page start");
    memcpy(q, a, sizeof q);
    q[15] = -1; /* last token of the last page */
    EXPECT(dpep_radix_match(t, q, 16, 8, out, NULL, 2) == 3, "divergence in the last token");
    memcpy(q, a, sizeof q);
    q[1] = -1;
    EXPECT(dpep_radix_match(t, q, 16, 8, out, &node, 2) == 0 && node == root,
           "divergence in the first page");

    EXPECT(dpep_radix_match(t, a, 16, 3, out, NULL, 2) == 3 && ids_eq(out, ids, 3),
           "max_pages 3");
    out[1] = -7;
    EXPECT(dpep_radix_match(t, a, 16, 1, out, NULL, 2) == 1 && out[1] == -7,
           "max_pages 1 wrote past the cap");
    EXPECT(dpep_radix_match(t, a, 16, 0, NULL, NULL, 2) == 0, "max_pages 0");
    EXPECT(dpep_radix_match(t, a, 16, -1, NULL, NULL, 2) == 0, "max_pages < 0");

    /* The same again with other page ids: nothing taken. */
    ids_from(dup, 20, 4);
    EXPECT(dpep_radix_insert(t, a, 4, dup, 3, &added) == DPEP_OK && added == 0,
           "re-insert added %lld", (long long)added);
    EXPECT(released_all(&kv, 20, 4), "duplicate pages retained");
    EXPECT(dpep_radix_insert(t, a, 2, dup, 3, &added) == DPEP_OK && added == 0,
           "insert of a prefix added %lld", (long long)added);
    EXPECT(dpep_radix_insert(t, a, 0, NULL, 3, &added) == DPEP_OK && added == 0, "empty insert");
    EXPECT(dpep_radix_cached_pages(t) == 4, "cached after re-inserts: %lld",
           (long long)dpep_radix_cached_pages(t));
    /* A longer one: only the new pages are taken. */
    int32_t dup6[6];
    ids_from(dup6, 30, 6);
    EXPECT(dpep_radix_insert(t, a, 6, dup6, 4, &added) == DPEP_OK && added == 2, "extend");
    EXPECT(released_all(&kv, 30, 4) && held_all(&kv, 34, 2), "extension retains pages 4, 5 only");
    EXPECT(dpep_radix_match(t, a, 24, 8, out, NULL, 5) == 6 && ids_eq(out, ids, 4) &&
               out[4] == 34 && out[5] == 35,
           "match after extending");

    /* Bad inserts leave the tree alone. */
    EXPECT(dpep_radix_insert(t, a, 2, NULL, 6, &added) == DPEP_ERR_INVALID,
           "pages tree accepted NULL pages");
    EXPECT(dpep_radix_insert(t, a, -1, ids, 6, &added) == DPEP_ERR_INVALID, "n_pages < 0");
    EXPECT(dpep_radix_insert(t, NULL, 2, ids, 6, &added) == DPEP_ERR_INVALID, "NULL tokens");
    EXPECT(dpep_radix_cached_pages(t) == 6 && kv_held(&kv) == 6, "tree changed by bad inserts");
    dpep_radix_destroy(t);
    kv_check_free(&kv, "insert_match");
}

static void test_shared_prefix(void)
{
    fake_kv kv;
    kv_init(&kv);
    dpep_radix *t = tree_new(2, &kv);
    int32_t a[12], b[12], c[8], d[12], ids[6], out[6], want[6];
    for (int i = 0; i < 12; i++) a[i] = i;
    memcpy(b, a, sizeof b);
    for (int i = 4; i < 12; i++) b[i] = 50 + i; /* shares 2 pages with a */
    memcpy(c, a, sizeof c);
    c[5] = 77; /* diverges inside page 2: shares 2 pages */
    memcpy(d, a, sizeof d);
    d[9] = 88; /* shares 4 pages with a */

    int64_t added = -1;
    ids_from(ids, 100, 6);
    dpep_radix_insert(t, a, 6, ids, 1, &added);
    ids_from(ids, 200, 6);
    EXPECT(dpep_radix_insert(t, b, 6, ids, 2, &added) == DPEP_OK && added == 4,
           "b added %lld", (long long)added);
    EXPECT(released_all(&kv, 200, 2) && held_all(&kv, 202, 4), "b's duplicate pages retained");
    EXPECT(dpep_radix_match(t, b, 12, 6, out, NULL, 3) == 6, "b matchable");
    int32_t wb[6] = {100, 101, 202, 203, 204, 205};
    EXPECT(ids_eq(out, wb, 6), "b's shared pages are not a's");
    ids_from(want, 100, 6);
    EXPECT(dpep_radix_match(t, a, 12, 6, out, NULL, 3) == 6 && ids_eq(out, want, 6),
           "a matchable after the split");
    EXPECT(dpep_radix_match(t, a, 12, 1, out, NULL, 3) == 1 && out[0] == 100, "cap in the split");

    ids_from(ids, 300, 4);
    EXPECT(dpep_radix_insert(t, c, 4, ids, 4, &added) == DPEP_OK && added == 2,
           "c (mid-page divergence) added %lld", (long long)added);
    EXPECT(released_all(&kv, 300, 2) && held_all(&kv, 302, 2), "c's pages");
    int32_t wc[4] = {100, 101, 302, 303};
    EXPECT(dpep_radix_match(t, c, 8, 6, out, NULL, 5) == 4 && ids_eq(out, wc, 4), "c's match");

    ids_from(ids, 400, 6);
    EXPECT(dpep_radix_insert(t, d, 6, ids, 6, &added) == DPEP_OK && added == 2,
           "d (split of a split) added %lld", (long long)added);
    int32_t wd[6] = {100, 101, 102, 103, 404, 405};
    EXPECT(dpep_radix_match(t, d, 12, 6, out, NULL, 7) == 6 && ids_eq(out, wd, 6), "d's match");
    EXPECT(dpep_radix_match(t, a, 12, 6, out, NULL, 7) == 6 && ids_eq(out, want, 6),
           "a after two splits");
    EXPECT(dpep_radix_match(t, b, 12, 6, out, NULL, 7) == 6 && ids_eq(out, wb, 6),
           "b after two splits");
    EXPECT(dpep_radix_cached_pages(t) == 14 && kv_held(&kv) == 14, "cached %lld",
           (long long)dpep_radix_cached_pages(t));
    EXPECT(dpep_radix_clear(t) == 14 && kv_held(&kv) == 0, "clear after splits");
    dpep_radix_destroy(t);
    kv_check_free(&kv, "shared_prefix");
}

static void test_locks(void)
{
    fake_kv kv;
    kv_init(&kv);
    dpep_radix *t = tree_new(2, &kv);
    int32_t a[8], b[8], ids[4];
    for (int i = 0; i < 8; i++) a[i] = b[i] = i;
    b[4] = b[5] = b[6] = b[7] = 99; /* shares 2 pages with a */
    dpep_radix_node *na = NULL, *n = NULL;

    /* 1. A locked leaf survives; a split of it keeps the lock right. */
    ids_from(ids, 10, 4);
    dpep_radix_insert(t, a, 4, ids, 1, NULL);
    EXPECT(dpep_radix_match(t, a, 8, 4, NULL, &na, 2) == 4, "match a");
    dpep_radix_lock(t, na);
    EXPECT(dpep_radix_evictable_pages(t) == 0, "locked: evictable %lld",
           (long long)dpep_radix_evictable_pages(t));
    EXPECT(dpep_radix_evict(t, 100) == 0 && dpep_radix_cached_pages(t) == 4, "evicted locked");
    ids_from(ids, 20, 4);
    dpep_radix_insert(t, b, 4, ids, 3, NULL); /* splits a's node */
    EXPECT(dpep_radix_cached_pages(t) == 6 && dpep_radix_evictable_pages(t) == 2,
           "after split: cached %lld evictable %lld", (long long)dpep_radix_cached_pages(t),
           (long long)dpep_radix_evictable_pages(t));
    EXPECT(dpep_radix_evict(t, 100) == 2 && released_all(&kv, 22, 2) && held_all(&kv, 10, 4),
           "only b's leaf evicted under a's lock");
    dpep_radix_unlock(t, na);
    EXPECT(dpep_radix_evictable_pages(t) == 4, "unlocked after split: %lld",
           (long long)dpep_radix_evictable_pages(t));
    EXPECT(dpep_radix_clear(t) == 4 && dpep_radix_cached_pages(t) == 0, "clear after unlock");

    /* 2. A lock on a partly matched node, split afterwards. */
    ids_from(ids, 30, 4);
    dpep_radix_insert(t, a, 4, ids, 4, NULL);
    EXPECT(dpep_radix_match(t, a, 2, 4, NULL, &n, 5) == 1, "partial match");
    dpep_radix_lock(t, n); /* the whole node, 4 pages */
    EXPECT(dpep_radix_evictable_pages(t) == 0, "partial lock protects the node");
    ids_from(ids, 40, 4);
    dpep_radix_insert(t, b, 4, ids, 6, NULL);
    EXPECT(dpep_radix_evictable_pages(t) == 2 && dpep_radix_evict(t, 100) == 2,
           "split of a partly locked node");
    EXPECT(held_all(&kv, 30, 4), "locked pages dropped");
    dpep_radix_unlock(t, n);
    EXPECT(dpep_radix_evictable_pages(t) == 4 && dpep_radix_clear(t) == 4, "after unlock");

    /* 3. A lock on the upper half of a split; counted locks. */
    ids_from(ids, 50, 4);
    dpep_radix_insert(t, a, 4, ids, 7, NULL);
    ids_from(ids, 60, 4);
    dpep_radix_insert(t, b, 4, ids, 7, NULL);
    EXPECT(dpep_radix_match(t, a, 3, 4, NULL, &n, 8) == 1, "match in the upper node");
    dpep_radix_lock(t, n);
    dpep_radix_lock(t, n);
    EXPECT(dpep_radix_evictable_pages(t) == 4, "upper node locked: evictable %lld",
           (long long)dpep_radix_evictable_pages(t));
    EXPECT(dpep_radix_evict(t, 100) == 4 && held_all(&kv, 50, 2), "leaves under a lock");
    dpep_radix_unlock(t, n);
    EXPECT(dpep_radix_evict(t, 100) == 0 && dpep_radix_cached_pages(t) == 2, "one lock left");
    dpep_radix_unlock(t, n);
    EXPECT(dpep_radix_clear(t) == 2 && dpep_radix_cached_pages(t) == 0, "both unlocked");

    /* 4. Two requests on one path: the deeper lock keeps both nodes. */
    ids_from(ids, 70, 4);
    dpep_radix_insert(t, a, 4, ids, 9, NULL);
    ids_from(ids, 80, 4);
    dpep_radix_insert(t, b, 4, ids, 9, NULL);
    dpep_radix_node *upper = NULL, *lower = NULL;
    dpep_radix_match(t, a, 4, 4, NULL, &upper, 10);
    dpep_radix_match(t, a, 8, 4, NULL, &lower, 10);
    EXPECT(upper != lower, "upper and lower nodes are one");
    dpep_radix_lock(t, upper);
    dpep_radix_lock(t, lower);
    dpep_radix_unlock(t, upper);
    EXPECT(dpep_radix_evictable_pages(t) == 2 && dpep_radix_evict(t, 100) == 2 &&
               held_all(&kv, 70, 4),
           "deeper lock keeps the path");
    dpep_radix_unlock(t, lower);
    EXPECT(dpep_radix_clear(t) == 4, "clear");

    /* The root: no-op. */
    dpep_radix_node *root = NULL;
    dpep_radix_match(t, a, 0, 4, NULL, &root, 11);
    dpep_radix_lock(t, root);
    ids_from(ids, 90, 4);
    dpep_radix_insert(t, a, 4, ids, 12, NULL);
    EXPECT(dpep_radix_evictable_pages(t) == 4 && dpep_radix_clear(t) == 4, "root lock no-op");
    dpep_radix_unlock(t, root);
    dpep_radix_destroy(t);
    kv_check_free(&kv, "locks");
}

/* One-token pages: sequence {base, base + 1} with pages first, first + 1. */
static void insert2(dpep_radix *t, int32_t base, int32_t first, uint64_t now)
{
    int32_t tok[2] = {base, base + 1}, ids[2] = {first, first + 1};
    dpep_radix_insert(t, tok, 2, ids, now, NULL);
}

static void test_lru(void)
{
    fake_kv kv;
    kv_init(&kv);
    dpep_radix *t = tree_new(1, &kv);
    insert2(t, 1, 10, 1); /* x */
    insert2(t, 3, 20, 2); /* y */
    insert2(t, 5, 30, 3); /* z */
    int32_t x[2] = {1, 2};
    dpep_radix_match(t, x, 2, 2, NULL, NULL, 4); /* x is now the newest */
    EXPECT(dpep_radix_evict(t, 1) == 2 && released_all(&kv, 20, 2) && kv_held(&kv) == 4,
           "y (oldest) first, as a whole node");
    EXPECT(dpep_radix_evict(t, 1) == 2 && released_all(&kv, 30, 2), "then z");
    EXPECT(dpep_radix_evict(t, 1) == 2 && released_all(&kv, 10, 2), "then x");

    /* Ties: the older node first, whatever the insert order of the tokens. */
    insert2(t, 9, 40, 10);
    insert2(t, 7, 50, 10);
    insert2(t, 8, 60, 10); /* (8, 9) shares no page with (9, 10) at page 0 */
    kv.n_log = 0;
    dpep_radix_clear(t);
    int32_t wt[6] = {40, 41, 50, 51, 60, 61};
    EXPECT(kv.n_log == 6 && ids_eq(kv.log, wt, 6), "ties by creation order");

    /* A parent becomes a leaf once its children went; partial matches refresh. */
    int32_t a[4] = {1, 2, 3, 4}, b[4] = {1, 2, 7, 8}, c[1] = {9}, ia[4] = {100, 101, 102, 103},
            ib[4] = {200, 201, 202, 203}, ic[1] = {300};
    dpep_radix_insert(t, a, 4, ia, 20, NULL);
    dpep_radix_insert(t, b, 4, ib, 21, NULL); /* m = {1,2}@21, a' = {3,4}@20, b' = {7,8}@21 */
    dpep_radix_insert(t, c, 1, ic, 22, NULL);
    kv.n_log = 0;
    EXPECT(dpep_radix_evict(t, 1) == 2 && ids_eq(kv.log, ia + 2, 2), "a' first");
    EXPECT(dpep_radix_evict(t, 1) == 2 && ids_eq(kv.log + 2, ib + 2, 2), "then b'");
    EXPECT(dpep_radix_evict(t, 1) == 2 && ids_eq(kv.log + 4, ia, 2), "then m, now a leaf");
    EXPECT(dpep_radix_evict(t, 1) == 1 && kv.log[6] == 300, "then c");

    dpep_radix_insert(t, a, 4, ia, 30, NULL);
    dpep_radix_insert(t, b, 4, ib, 31, NULL);
    dpep_radix_insert(t, c, 1, ic, 32, NULL);
    dpep_radix_match(t, a, 3, 4, NULL, NULL, 33); /* ends inside a': refreshes a' */
    kv.n_log = 0;
    EXPECT(dpep_radix_evict(t, 1) == 2 && ids_eq(kv.log, ib + 2, 2), "b' older than a'");
    EXPECT(dpep_radix_evict(t, 1) == 1 && kv.log[2] == 300, "then c");
    dpep_radix_destroy(t);
    kv_check_free(&kv, "lru");
}

static void test_evict_want(void)
{
    fake_kv kv;
    kv_init(&kv);
    dpep_radix *t = tree_new(1, &kv);
    for (int32_t s = 0; s < 3; s++) {
        int32_t tok[3] = {10 * s, 10 * s + 1, 10 * s + 2}, ids[3];
        ids_from(ids, 100 * s, 3);
        dpep_radix_insert(t, tok, 3, ids, (uint64_t)s, NULL);
    }
    EXPECT(dpep_radix_evict(t, 0) == 0 && dpep_radix_evict(t, -5) == 0, "evict nothing");
    EXPECT(dpep_radix_evict(t, 4) == 6 && dpep_radix_cached_pages(t) == 3,
           "evict(4) stops after two nodes");
    EXPECT(held_all(&kv, 200, 3), "the newest stays");
    EXPECT(dpep_radix_evict(t, 3) == 3 && dpep_radix_cached_pages(t) == 0, "evict(3)");
    EXPECT(dpep_radix_evict(t, 3) == 0, "evict on emptied tree");
    dpep_radix_destroy(t);
    kv_check_free(&kv, "evict_want");
}

static void test_clear(void)
{
    fake_kv kv;
    kv_init(&kv);
    dpep_radix *t = tree_new(2, &kv);
    int32_t tok[8], ids[4];
    dpep_radix_node *locked = NULL;
    for (int round = 0; round < 3; round++) { /* recycled nodes each round */
        for (int32_t s = 0; s < 50; s++) {
            for (int i = 0; i < 8; i++) tok[i] = i < 4 ? s % 5 : s * 8 + i;
            ids_from(ids, 1000 * round + 4 * s, 4);
            dpep_radix_insert(t, tok, 4, ids, (uint64_t)s, NULL);
        }
        /* 5 shared 2-page prefixes + 50 2-page tails */
        EXPECT(dpep_radix_cached_pages(t) == 110, "round %d cached %lld", round,
               (long long)dpep_radix_cached_pages(t));
        for (int i = 0; i < 8; i++) tok[i] = i < 4 ? 7 % 5 : 7 * 8 + i;
        EXPECT(dpep_radix_match(t, tok, 8, 4, NULL, &locked, 60) == 4, "match s = 7");
        dpep_radix_lock(t, locked);
        int64_t evictable = dpep_radix_evictable_pages(t);
        EXPECT(evictable == 106, "evictable %lld", (long long)evictable);
        EXPECT(dpep_radix_clear(t) == evictable && dpep_radix_cached_pages(t) == 4,
               "clear keeps the locked path");
        EXPECT(kv_held(&kv) == 4, "held %lld", (long long)kv_held(&kv));
        dpep_radix_unlock(t, locked);
        EXPECT(dpep_radix_clear(t) == 4 && kv_held(&kv) == 0, "clear all");
        EXPECT(dpep_radix_match(t, tok, 8, 4, NULL, NULL, 61) == 0, "match after clear");
    }
    dpep_radix_destroy(t);
    kv_check_free(&kv, "clear");
}

static int g_token_only_calls;
static void count_call(void *user, int32_t page)
{
    (void)user;
    (void)page;
    g_token_only_calls++;
}

static void test_token_only(void)
{
    dpep_radix_params p = {4, false, count_call, count_call, NULL}; /* ignored */
    dpep_radix *t = NULL;
    EXPECT(dpep_radix_create(&p, &t) == DPEP_OK, "token-only create");
    if (!t) return;
    int32_t a[16], b[16], out[4] = {-7, -7, -7, -7};
    for (int i = 0; i < 16; i++) a[i] = b[i] = i;
    b[9] = 99; /* shares 2 pages */
    int64_t added = -1;
    EXPECT(dpep_radix_insert(t, a, 4, NULL, 1, &added) == DPEP_OK && added == 4, "insert a");
    EXPECT(dpep_radix_insert(t, b, 4, NULL, 2, &added) == DPEP_OK && added == 2, "insert b");
    EXPECT(dpep_radix_cached_pages(t) == 6 && dpep_radix_evictable_pages(t) == 6, "counts");
    EXPECT(dpep_radix_match(t, a, 16, 4, out, NULL, 3) == 4 && out[0] == -7,
           "match a; no page ids written");
    dpep_radix_node *n = NULL;
    EXPECT(dpep_radix_match(t, b, 15, 4, NULL, &n, 4) == 3, "match b (3.75 pages)");
    dpep_radix_lock(t, n);
    EXPECT(dpep_radix_evictable_pages(t) == 2, "lock b: evictable %lld",
           (long long)dpep_radix_evictable_pages(t));
    EXPECT(dpep_radix_evict(t, 1) == 2 && dpep_radix_match(t, a, 16, 4, NULL, NULL, 5) == 2,
           "evict a's tail by size");
    dpep_radix_unlock(t, n);
    EXPECT(dpep_radix_clear(t) == 4 && dpep_radix_cached_pages(t) == 0, "clear");
    EXPECT(dpep_radix_insert(t, a, 4, a, 6, &added) == DPEP_OK && added == 4,
           "pages ignored in token-only mode");
    dpep_radix_destroy(t);
    EXPECT(g_token_only_calls == 0, "token-only tree called %d callbacks", g_token_only_calls);
}

/* ------------------------------------------------------------------------ */
/* Reference: an uncompressed trie of pages, each marked where a radix node   */
/* begins. Naive on purpose (linear scans); tree sizes stay in the hundreds.  */
/* ------------------------------------------------------------------------ */
#define MAX_PS 4
#define MAX_SEQ_PAGES 12
#define MAX_SEQ (MAX_PS * MAX_SEQ_PAGES)

typedef struct mpage {
    int parent;            /* previous page; -1 at the root               */
    int next;              /* next page of the same radix node; -1: tail  */
    int n_children;        /* live pages whose parent this is             */
    int32_t tok[MAX_PS];
    int32_t id;            /* KV page id (-1 in token-only mode)          */
    bool live, head;       /* head: the first page of a radix node        */
    int64_t lock;          /* every page of a node carries its count      */
    uint64_t time, seq;    /* the node's, kept on its head                */
} mpage;

typedef struct model {
    mpage *p;              /* (cap) slots; dead ones are reused           */
    int n, cap;
    int ps;
    uint64_t next_seq;     /* mirrors the tree's creation counter         */
} model;

static int m_new(model *md)
{
    for (int i = 0; i < md->n; i++)
        if (!md->p[i].live) return i;
    if (md->n == md->cap) {
        md->cap = md->cap ? 2 * md->cap : 256;
        md->p = realloc(md->p, (size_t)md->cap * sizeof *md->p);
        if (!md->p) exit(1);
    }
    return md->n++;
}

static int m_child(const model *md, int parent, const int32_t *q)
{
    for (int i = 0; i < md->n; i++) {
        const mpage *g = &md->p[i];
        if (g->live && g->parent == parent && ids_eq(g->tok, q, md->ps)) return i;
    }
    return -1;
}

static int m_head(const model *md, int i)
{
    while (!md->p[i].head) i = md->p[i].parent;
    return i;
}

static int m_tail(const model *md, int i)
{
    while (md->p[i].next >= 0) i = md->p[i].next;
    return i;
}

/* Matched pages of q[0, avail pages); *last: the last matched page or -1. */
static int64_t m_walk(const model *md, const int32_t *q, int64_t avail, int32_t *ids, int *last)
{
    int cur = -1;
    int64_t m = 0;
    while (m < avail) {
        int c = m_child(md, cur, q + m * md->ps);
        if (c < 0) break;
        if (ids) ids[m] = md->p[c].id;
        cur = c;
        m++;
    }
    *last = cur;
    return m;
}

static void m_touch(model *md, int last, uint64_t now)
{
    for (int i = last; i >= 0; i = md->p[i].parent)
        if (md->p[i].head) md->p[i].time = now;
}

/* Returns the pages matched; *handle: the tail of the deepest node touched. */
static int64_t m_match(model *md, const int32_t *q, int64_t avail, int32_t *ids, int *handle,
                       uint64_t now)
{
    int last;
    int64_t m = m_walk(md, q, avail, ids, &last);
    m_touch(md, last, now);
    *handle = last < 0 ? -1 : m_tail(md, last);
    return m;
}

static int64_t m_insert(model *md, const int32_t *q, int64_t n, const int32_t *ids, uint64_t now)
{
    int last;
    int64_t m = m_walk(md, q, n, NULL, &last);
    if (m < n && last >= 0 && md->p[last].next >= 0) {
        /* split: the upper part gets a new seq, the lower keeps the old */
        int c = md->p[last].next, h = m_head(md, last);
        md->p[c].head = true;
        md->p[c].seq = md->p[h].seq;
        md->p[c].time = md->p[h].time;
        md->p[h].seq = md->next_seq++;
        md->p[last].next = -1;
    }
    for (int64_t k = m; k < n; k++) {
        int i = m_new(md);
        mpage *g = &md->p[i];
        memset(g, 0, sizeof *g);
        g->parent = last;
        g->next = -1;
        memcpy(g->tok, q + k * md->ps, (size_t)md->ps * sizeof *q);
        g->id = ids ? ids[k] : -1;
        g->live = true;
        g->head = k == m;
        if (g->head) g->seq = md->next_seq++;
        g->time = now;
        if (last >= 0) {
            md->p[last].n_children++;
            if (k > m) md->p[last].next = i;
        }
        last = i;
    }
    m_touch(md, last, now);
    return n - m;
}

static void m_lock(model *md, int handle, int64_t d)
{
    for (int i = handle; i >= 0; i = md->p[i].parent) md->p[i].lock += d;
}

/* Evicts like the tree; appends released page ids to log. */
static int64_t m_evict(model *md, int64_t want, int32_t *log, int64_t *n_log)
{
    int64_t dropped = 0;
    while (dropped < want) {
        int best = -1;
        for (int i = 0; i < md->n; i++) {
            const mpage *g = &md->p[i];
            if (!g->live || !g->head || g->lock != 0) continue;
            if (md->p[m_tail(md, i)].n_children != 0) continue;
            const mpage *b = best >= 0 ? &md->p[best] : NULL;
            if (!b || g->time < b->time || (g->time == b->time && g->seq < b->seq)) best = i;
        }
        if (best < 0) break;
        if (md->p[best].parent >= 0) md->p[md->p[best].parent].n_children--;
        for (int i = best; i >= 0; i = md->p[i].next) {
            md->p[i].live = false;
            log[(*n_log)++] = md->p[i].id;
            dropped++;
        }
    }
    return dropped;
}

static void m_counts(const model *md, int64_t *cached, int64_t *evictable)
{
    *cached = *evictable = 0;
    for (int i = 0; i < md->n; i++) {
        if (!md->p[i].live) continue;
        (*cached)++;
        if (md->p[i].lock == 0) (*evictable)++;
    }
}

/* ------------------------------------------------------------------------ */
/* Randomized run against the reference.                                     */
/* ------------------------------------------------------------------------ */
static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static int rng_int(uint64_t *s, int n) /* [0, n) */
{
    return (int)(rng_next(s) % (uint64_t)n);
}

#define N_BASES 6
#define MAX_RUNNING 12

typedef struct running {
    dpep_radix_node *node; /* the tree's handle                           */
    int mh;                /* the model's (tail page of the node, or -1)  */
} running;

/* A query: a base sequence's prefix, often mutated once or re-randomized
 * after some point, so it diverges at page starts and inside pages. */
static int64_t gen_query(uint64_t *s, int32_t bases[N_BASES][MAX_SEQ], int ps, int32_t *q)
{
    int64_t len = rng_int(s, MAX_SEQ_PAGES * ps + 1);
    memcpy(q, bases[rng_int(s, N_BASES)], (size_t)len * sizeof *q);
    int r = rng_int(s, 8);
    if (len > 0 && r < 3) q[rng_int(s, (int)len)] = rng_int(s, 4);
    if (len > 0 && r == 3)
        for (int64_t i = rng_int(s, (int)len); i < len; i++) q[i] = rng_int(s, 3);
    return len;
}

typedef struct rstate {
    dpep_radix *t;
    model md;
    fake_kv *kv;           /* NULL in token-only mode                     */
    int32_t *mlog;         /* the model's release log                     */
    int64_t n_mlog;
    int ps;
    int32_t next_id;
    bool bad;
    int64_t n_split, n_evicted, n_locks, max_cached; /* coverage, printed */
} rstate;

/* evict(want) in both; the same pages dropped, in the same order. */
static void r_evict(rstate *r, int64_t want, const char *what)
{
    int64_t kv_log0 = r->kv ? r->kv->n_log : 0;
    r->n_mlog = 0;
    int64_t got = want == INT64_MAX ? dpep_radix_clear(r->t) : dpep_radix_evict(r->t, want);
    int64_t exp = m_evict(&r->md, want, r->mlog, &r->n_mlog);
    r->n_evicted += exp;
    if (got != exp) {
        EXPECT(false, "%s(%lld): dropped %lld, reference %lld", what, (long long)want,
               (long long)got, (long long)exp);
        r->bad = true;
    }
    if (r->kv && !r->bad &&
        (r->kv->n_log - kv_log0 != r->n_mlog || !ids_eq(r->kv->log + kv_log0, r->mlog, r->n_mlog))) {
        EXPECT(false, "%s(%lld): released pages differ from the reference", what,
               (long long)want);
        r->bad = true;
    }
    if (r->kv) r->kv->n_log = 0;
}

static void r_insert(rstate *r, uint64_t *s, const int32_t *q, int64_t len, uint64_t now,
                     int64_t budget)
{
    int64_t n = len / r->ps;
    int32_t ids[MAX_SEQ_PAGES], mids[MAX_SEQ_PAGES];
    int64_t first = 0;
    if (rng_int(s, 3) == 0) { /* like a request: the matched prefix's own ids */
        int mh;
        first = dpep_radix_match(r->t, q, len, n, ids, NULL, now);
        int64_t m = m_match(&r->md, q, n, mids, &mh, now);
        if (first != m || (r->kv && !ids_eq(ids, mids, m))) {
            EXPECT(false, "pre-insert match %lld, reference %lld", (long long)first,
                   (long long)m);
            r->bad = true;
        }
    }
    for (int64_t k = first; k < n; k++) ids[k] = r->next_id++;
    int64_t added = -1, nodes0 = r->md.next_seq;
    dpep_status st = dpep_radix_insert(r->t, q, n, r->kv ? ids : NULL, now, &added);
    int64_t exp = m_insert(&r->md, q, n, r->kv ? ids : NULL, now);
    r->n_split += (int64_t)r->md.next_seq - nodes0 == 2;
    if (st != DPEP_OK || added != exp) {
        EXPECT(false, "insert of %lld pages: %s, added %lld, reference %lld", (long long)n,
               dpep_status_string(st), (long long)added, (long long)exp);
        r->bad = true;
    }
    int64_t cached = dpep_radix_cached_pages(r->t);
    if (cached > budget) r_evict(r, cached - budget, "evict to budget");
}

static void r_match(rstate *r, uint64_t *s, const int32_t *q, int64_t len, uint64_t now,
                    running *run, int *n_run)
{
    int64_t max_pages = rng_int(s, 4) == 0 ? rng_int(s, 4) : MAX_SEQ_PAGES;
    int64_t avail = len / r->ps < max_pages ? len / r->ps : max_pages;
    int32_t ids[MAX_SEQ_PAGES], mids[MAX_SEQ_PAGES];
    dpep_radix_node *node = NULL;
    int mh;
    int64_t got = dpep_radix_match(r->t, q, len, max_pages, ids, &node, now);
    int64_t exp = m_match(&r->md, q, avail, mids, &mh, now);
    if (got != exp || (r->kv && !ids_eq(ids, mids, got)) || !node) {
        EXPECT(false, "match of %lld tokens (max %lld): %lld pages, reference %lld",
               (long long)len, (long long)max_pages, (long long)got, (long long)exp);
        r->bad = true;
        return;
    }
    if (*n_run < MAX_RUNNING && rng_int(s, 2) == 0) {
        dpep_radix_lock(r->t, node);
        m_lock(&r->md, mh, +1);
        run[(*n_run)++] = (running){node, mh};
        r->n_locks++;
    }
}

static void r_check_counts(rstate *r, int op)
{
    int64_t cached, evictable;
    m_counts(&r->md, &cached, &evictable);
    if (cached > r->max_cached) r->max_cached = cached;
    if (dpep_radix_cached_pages(r->t) != cached || dpep_radix_evictable_pages(r->t) != evictable) {
        EXPECT(false, "op %d: cached %lld evictable %lld, reference %lld %lld", op,
               (long long)dpep_radix_cached_pages(r->t),
               (long long)dpep_radix_evictable_pages(r->t), (long long)cached,
               (long long)evictable);
        r->bad = true;
    }
    if (r->kv && (r->kv->held != cached || r->kv->errors != 0)) {
        EXPECT(false, "op %d: the pool holds %lld pages for the tree (%lld errors), reference %lld",
               op, (long long)r->kv->held, (long long)r->kv->errors, (long long)cached);
        r->bad = true;
    }
}

static void test_random(int ps, bool pages, uint64_t seed, int ops)
{
    fake_kv kv;
    if (pages) kv_init(&kv);
    rstate r = {0};
    r.t = tree_new(ps, pages ? &kv : NULL);
    r.md.ps = ps;
    r.md.next_seq = 1;
    r.kv = pages ? &kv : NULL;
    r.mlog = calloc(KV_PAGES, sizeof *r.mlog);
    r.ps = ps;
    uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;
    int32_t bases[N_BASES][MAX_SEQ], q[MAX_SEQ];
    for (int b = 0; b < N_BASES; b++)
        for (int i = 0; i < MAX_SEQ; i++) bases[b][i] = rng_int(&s, 3);
    running run[MAX_RUNNING];
    int n_run = 0;
    uint64_t now = 0;
    int64_t budget = 60 + rng_int(&s, 120);
    int op = 0;
    for (; op < ops && !r.bad; op++) {
        now += (uint64_t)rng_int(&s, 2); /* same-time ties half the time */
        int64_t len = gen_query(&s, bases, ps, q);
        int k = rng_int(&s, 100);
        if (k < 40) {
            r_insert(&r, &s, q, len, now, budget);
        } else if (k < 75) {
            r_match(&r, &s, q, len, now, run, &n_run);
        } else if (k < 88) {
            if (n_run > 0) {
                int i = rng_int(&s, n_run);
                dpep_radix_unlock(r.t, run[i].node);
                m_lock(&r.md, run[i].mh, -1);
                run[i] = run[--n_run];
            }
        } else if (k < 99) {
            r_evict(&r, rng_int(&s, 12), "evict");
        } else {
            r_evict(&r, INT64_MAX, "clear");
        }
        r_check_counts(&r, op);
    }
    while (n_run > 0) {
        n_run--;
        dpep_radix_unlock(r.t, run[n_run].node);
        m_lock(&r.md, run[n_run].mh, -1);
    }
    if (!r.bad) r_evict(&r, INT64_MAX, "final clear");
    if (!r.bad) r_check_counts(&r, op);
    EXPECT(!r.bad && dpep_radix_cached_pages(r.t) == 0,
           "random ps=%d pages=%d seed=%llu: stopped at op %d of %d", ps, pages,
           (unsigned long long)seed, op, ops);
    printf("random ps=%d pages=%d seed=%llu: %d ops, %lld splits, %lld locks, %lld pages "
           "evicted, at most %lld cached\n",
           ps, pages, (unsigned long long)seed, op, (long long)r.n_split, (long long)r.n_locks,
           (long long)r.n_evicted, (long long)r.max_cached);
    dpep_radix_destroy(r.t);
    if (pages) kv_check_free(&kv, "random");
    free(r.md.p);
    free(r.mlog);
}

/* Many distinct sequences: pool chunks, table rehashes, then destroy with
 * pages still held. */
static void test_grow(void)
{
    fake_kv kv;
    kv_init(&kv);
    dpep_radix *t = tree_new(2, &kv);
    int32_t tok[6], ids[3], out[3];
    for (int32_t s = 0; s < 20000; s++) {
        tok[0] = s % 97, tok[1] = s % 89, tok[2] = s, tok[3] = 1, tok[4] = s / 3, tok[5] = 2;
        ids_from(ids, 3 * s, 3);
        dpep_radix_insert(t, tok, 3, ids, (uint64_t)s, NULL);
    }
    int64_t cached = dpep_radix_cached_pages(t);
    EXPECT(cached == kv_held(&kv) && cached > 40000, "cached %lld", (long long)cached);
    int bad = 0;
    for (int32_t s = 0; s < 20000; s++) {
        tok[0] = s % 97, tok[1] = s % 89, tok[2] = s, tok[3] = 1, tok[4] = s / 3, tok[5] = 2;
        if (dpep_radix_match(t, tok, 6, 3, out, NULL, 20000) != 3) bad++;
    }
    EXPECT(bad == 0, "%d of 20000 sequences not found", bad);
    EXPECT(dpep_radix_evict(t, cached / 2) >= cached / 2, "evict half");
    dpep_radix_destroy(t); /* releases what is left */
    kv_check_free(&kv, "grow");
}

int main(void)
{
    test_create_invalid();
    test_empty();
    test_insert_match();
    test_shared_prefix();
    test_locks();
    test_lru();
    test_evict_want();
    test_clear();
    test_token_only();
    test_grow();
    for (int ps = 1; ps <= MAX_PS; ps++) {
        for (uint64_t seed = 1; seed <= 3; seed++) {
            test_random(ps, true, seed, 5000);
            test_random(ps, false, seed + 100, 3000);
        }
    }
    return dpep_test_summary();
}
