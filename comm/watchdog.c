/* watchdog.c — one thread per process that (1) answers peers' "what is your
 * sequence number on this comm" queries on every comm's control communicator
 * and (2) ends the job when a collective runs past its comm's timeout, after
 * asking every peer how far it got and naming the ranks that did not arrive.
 *
 * Protocol on c->ctrl: a timed-out rank sends TAG_QUERY (its own seq) to every
 * peer; each peer's watchdog answers TAG_REPLY {seq, in_op, op_id} (op_id: a
 * hash of the current op's name). A peer whose seq is below ours never
 * entered our collective; a peer that does not answer within the wait is
 * reported too. Needs MPI_THREAD_MULTIPLE.
 *
 * Strict ops end the job at the first timeout. Patient ops (watch_begin with
 * patient, wait_all) run the same query round at each timeout but end the job
 * only when some peer does not answer (stopped or gone), or when a peer is
 * inside an op of another name at the same seq (the ranks do not run the
 * same collectives: waiting cannot help). Otherwise the op's clock restarts
 * (watchdog-private wd_seq/wd_since, keyed by the op's seq, so nothing carries
 * over to the next op) and, once per op, an INFO line says whom it waits for.
 * Every piece of this state is per comm, every round runs on that comm's own
 * control communicator and completes all its requests (or ends the job), so
 * a round of a patient op can neither read replies meant for another comm's
 * round nor leave one behind for the next, and a strict op of another comm
 * is judged by its own flag and clock only. */
#include "comm_internal.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <time.h>

#define POLL_NS 20000000LL /* 20 ms between polls */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static dpep_comm *g_head;        /* registered comms (under g_lock)          */
static pthread_mutex_t g_life = PTHREAD_MUTEX_INITIALIZER; /* start/stop; never
                                  taken by the thread, so joining under it is safe */
static pthread_t g_thread;
static bool g_running;           /* thread started (under g_life)            */
static _Atomic int g_stop;
static _Atomic bool g_warned;

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {.tv_sec = ns / 1000000000LL, .tv_nsec = ns % 1000000000LL};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

#define REPLY_N 3 /* {seq, in_op, op_id} */

/* FNV-1a of an op name: same name on every rank, same id. */
static uint64_t op_id(const char *op)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)op; p && *p; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h;
}

/* Answers every pending query on every registered comm (under g_lock).
 * Replies are 24 bytes, sent eagerly, so MPI_Send does not wait for the
 * querying rank. */
static void serve_queries(void)
{
    for (dpep_comm *c = g_head; c; c = c->next) {
        for (;;) {
            int flag = 0;
            MPI_Status s;
            if (MPI_Iprobe(MPI_ANY_SOURCE, DPEP_COMM_TAG_QUERY, c->ctrl, &flag, &s) !=
                    MPI_SUCCESS ||
                !flag)
                break;
            uint64_t q, reply[REPLY_N], again;
            MPI_Recv(&q, 1, MPI_UINT64_T, s.MPI_SOURCE, DPEP_COMM_TAG_QUERY, c->ctrl,
                     MPI_STATUS_IGNORE);
            /* One consistent {seq, in_op, op}: op_begin stores in_op = 0,
             * then the name (release), then seq and in_op = 1. Reading seq,
             * the name, in_op, seq: a name of the next op comes with in_op 0
             * or a changed seq (then read again), never with "inside #seq". */
            do {
                reply[0] = atomic_load_explicit(&c->seq, memory_order_acquire);
                reply[2] = op_id(atomic_load_explicit(&c->op, memory_order_acquire));
                reply[1] = (uint64_t)atomic_load_explicit(&c->in_op, memory_order_acquire);
                again = atomic_load_explicit(&c->seq, memory_order_acquire);
            } while (again != reply[0]);
            MPI_Send(reply, REPLY_N, MPI_UINT64_T, s.MPI_SOURCE, DPEP_COMM_TAG_REPLY, c->ctrl);
        }
    }
}

static size_t append(char *buf, size_t len, size_t pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static size_t append(char *buf, size_t len, size_t pos, const char *fmt, ...)
{
    if (pos >= len) return pos;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + pos, len - pos, fmt, ap);
    va_end(ap);
    return n < 0 ? pos : pos + (size_t)n;
}

/* One query round for collective #myseq on c (under g_lock): asks every peer
 * for its {seq, in_op, op_id} on c and waits a bounded time for the answers,
 * serving the peers' own queries meanwhile (they are likely timing out at
 * the same moment). Afterwards replied[p] says whether peer p answered (its
 * answer in c->wd_reply[REPLY_N*p ...]). Returns whether every peer
 * answered; then no request of the round is left pending. */
static bool query_round(dpep_comm *c, uint64_t myseq, bool *replied)
{
    int n = c->size, me = c->rank;
    c->wd_query = myseq;
    for (int p = 0; p < n; p++) {
        c->wd_reqs[p] = MPI_REQUEST_NULL;
        c->wd_reqs[n + p] = MPI_REQUEST_NULL;
        c->wd_reply[REPLY_N * p] = UINT64_MAX; /* "no answer" */
        c->wd_reply[REPLY_N * p + 1] = 0;
        c->wd_reply[REPLY_N * p + 2] = 0;
        if (p == me) continue;
        MPI_Irecv(&c->wd_reply[REPLY_N * p], REPLY_N, MPI_UINT64_T, p, DPEP_COMM_TAG_REPLY, c->ctrl,
                  &c->wd_reqs[p]);
        MPI_Isend(&c->wd_query, 1, MPI_UINT64_T, p, DPEP_COMM_TAG_QUERY, c->ctrl,
                  &c->wd_reqs[n + p]);
    }
    /* Peers poll every POLL_NS; give them a bounded time. */
    double timeout = c->timeout_s;
    double wait_s = timeout < 1.0 ? 1.0 : timeout > 5.0 ? 5.0 : timeout;
    double deadline = dpep_clock_s() + wait_s;
    for (;;) {
        serve_queries();
        int done = 0;
        MPI_Testall(n, c->wd_reqs, &done, MPI_STATUSES_IGNORE);
        if (done || dpep_clock_s() > deadline) break;
        sleep_ns(POLL_NS / 4);
    }
    /* A reply landed iff its receive request completed (set to NULL). */
    bool all = true;
    for (int p = 0; p < n; p++) {
        replied[p] = p == me;
        if (p == me) continue;
        int flag = 0;
        if (c->wd_reqs[p] != MPI_REQUEST_NULL) MPI_Test(&c->wd_reqs[p], &flag, MPI_STATUS_IGNORE);
        replied[p] = c->wd_reqs[p] == MPI_REQUEST_NULL;
        all = all && replied[p];
    }
    /* Every peer answered, so every query was received: the sends complete
     * at once. (When one did not, the job ends and nothing is reused.) */
    if (all) MPI_Waitall(n, c->wd_reqs + n, MPI_STATUSES_IGNORE);
    return all;
}

/* Formats the ranks of c that are not past #myseq after a query round:
 * `list` gets "2, 3", `detail` how far each got or that it did not answer.
 * Returns how many. */
static int missing_ranks(const dpep_comm *c, uint64_t myseq, const bool *replied, char *list,
                         size_t list_len, char *detail, size_t detail_len)
{
    size_t lp = 0, dp = 0;
    int missing = 0;
    list[0] = detail[0] = '\0';
    for (int p = 0; p < c->size; p++) {
        if (p == c->rank) continue;
        uint64_t pseq = c->wd_reply[REPLY_N * p];
        if (replied[p] && pseq >= myseq) continue; /* entered #seq (or went past it) */
        lp = append(list, list_len, lp, "%s%d", missing ? ", " : "", p);
        if (!replied[p])
            dp = append(detail, detail_len, dp, "%srank %d (world %d) did not answer",
                        dp ? "; " : "", p, c->world_rank[p]);
        else
            dp = append(detail, detail_len, dp, "%srank %d (world %d) is at #%llu%s",
                        dp ? "; " : "", p, c->world_rank[p], (unsigned long long)pseq,
                        c->wd_reply[REPLY_N * p + 1] ? " (inside it)" : " (done with it)");
        missing++;
    }
    return missing;
}

/* Collective #seq on c has run `waited` seconds and the query round is in
 * `replied`: say who did not arrive in one line and end the job. Called
 * under g_lock; does not return. */
static void abort_job(dpep_comm *c, uint64_t myseq, const char *op, double waited,
                      const bool *replied)
{
    char list[1024], detail[1024];
    int missing = missing_ranks(c, myseq, replied, list, sizeof list, detail, sizeof detail);
    int n = c->size;
    if (missing)
        DPEP_ERROR("comm \"%s\": %s #%llu timed out after %.1f s; ranks that did not arrive: "
                   "%s (of %d) [%s]; aborting the job",
                   c->name, op, (unsigned long long)myseq, waited, list, n, detail);
    else
        DPEP_ERROR("comm \"%s\": %s #%llu timed out after %.1f s; ranks that did not arrive: "
                   "none (all %d entered it: stuck inside the library or the network); "
                   "aborting the job",
                   c->name, op, (unsigned long long)myseq, waited, n);
    fflush(stdout);
    fflush(stderr);
    if (c->ops->abort) c->ops->abort(c, 2.0); /* e.g. NCCL: ncclCommAbort */
    MPI_Abort(MPI_COMM_WORLD, 1);
    for (;;) sleep_ns(1000000000LL); /* MPI_Abort does not return */
}

/* Strict collective #seq past its timeout: end the job. Does not return. */
static void timed_out(dpep_comm *c, uint64_t seq, const char *op, double waited)
{
    query_round(c, seq, c->wd_replied);
    abort_job(c, seq, op, waited, c->wd_replied);
}

/* After a query round of patient op #seq: a peer inside an op of another
 * name at the same seq means the ranks do not run the same collectives (one
 * skipped or added one), and waiting cannot help. (A peer already past #seq
 * is no such sign: a gather or bcast lets some ranks leave first.) Formats
 * them into `detail` and returns how many. */
static int mismatched_ranks(const dpep_comm *c, uint64_t seq, const char *op, char *detail,
                            size_t len)
{
    size_t dp = 0;
    int n = 0;
    uint64_t mine = op_id(op);
    for (int p = 0; p < c->size; p++) {
        if (p == c->rank || !c->wd_replied[p]) continue;
        const uint64_t *r = &c->wd_reply[REPLY_N * p];
        if (r[0] != seq || !r[1] || r[2] == mine) continue;
        dp = append(detail, len, dp, "%srank %d (world %d) is inside another op at #%llu",
                    dp ? "; " : "", p, c->world_rank[p], (unsigned long long)r[0]);
        n++;
    }
    return n;
}

/* Whether collective #seq of c is still in progress (the calling thread's
 * view, as the loop reads it). */
static bool still_in(dpep_comm *c, uint64_t seq)
{
    return atomic_load_explicit(&c->seq, memory_order_acquire) == seq &&
           atomic_load_explicit(&c->in_op, memory_order_acquire);
}

/* Patient collective #seq has waited one timeout (`waited` s since it
 * began): end the job when a peer does not answer or the ranks are in
 * different collectives; else restart its clock and, once per op, say whom
 * it waits for. Under g_lock. */
static void patient_check(dpep_comm *c, uint64_t seq, const char *op, double waited)
{
    double t0 = dpep_clock_s();
    bool all = query_round(c, seq, c->wd_replied);
    waited += dpep_clock_s() - t0;
    if (!all) abort_job(c, seq, op, waited, c->wd_replied);
    if (!still_in(c, seq)) return; /* it completed during the round */
    char list[1024], detail[1024];
    if (mismatched_ranks(c, seq, op, detail, sizeof detail)) {
        DPEP_ERROR("comm \"%s\": %s #%llu (a patient wait) cannot complete after %.1f s: %s; the "
                   "ranks do not run the same collectives on this comm; aborting the job",
                   c->name, op, (unsigned long long)seq, waited, detail);
        fflush(stdout);
        fflush(stderr);
        if (c->ops->abort) c->ops->abort(c, 2.0);
        MPI_Abort(MPI_COMM_WORLD, 1);
        for (;;) sleep_ns(1000000000LL);
    }
    c->wd_seq = seq;
    c->wd_since = dpep_clock_s();
    if (c->wd_logged == seq) return;
    c->wd_logged = seq;
    if (missing_ranks(c, seq, c->wd_replied, list, sizeof list, detail, sizeof detail))
        DPEP_INFO("comm \"%s\": %s #%llu has waited %.0f s for ranks %s (of %d) [%s]; they "
                  "answer the watchdog, so the wait goes on",
                  c->name, op, (unsigned long long)seq, waited, list, c->size, detail);
    else
        DPEP_INFO("comm \"%s\": %s #%llu has run %.0f s; every rank entered it and answers "
                  "the watchdog, so the wait goes on",
                  c->name, op, (unsigned long long)seq, waited);
}

static void *watchdog_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&g_stop)) {
        pthread_mutex_lock(&g_lock);
        serve_queries();
        double now = dpep_clock_s();
        for (dpep_comm *c = g_head; c; c = c->next) {
            double timeout = c->timeout_s;
            if (timeout <= 0) continue;
            uint64_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
            if (!atomic_load_explicit(&c->in_op, memory_order_acquire)) continue;
            double start = atomic_load_explicit(&c->start_s, memory_order_relaxed);
            const char *op = atomic_load_explicit(&c->op, memory_order_relaxed);
            /* op_end clears patient (release) after in_op: seeing its 0 here
             * means in_op is 0 again below, so an op that just ended is never
             * taken for a strict one. */
            bool patient = atomic_load_explicit(&c->patient, memory_order_acquire) != 0;
            if (atomic_load_explicit(&c->seq, memory_order_acquire) != seq ||
                !atomic_load_explicit(&c->in_op, memory_order_acquire))
                continue;
            double waited = now - start;
            if (!patient) {
                if (waited > timeout) timed_out(c, seq, op, waited);
                continue;
            }
            double since = c->wd_seq == seq && c->wd_since > start ? c->wd_since : start;
            if (now - since > timeout) patient_check(c, seq, op, waited);
        }
        pthread_mutex_unlock(&g_lock);
        sleep_ns(POLL_NS);
    }
    return NULL;
}

dpep_status dpep_watchdog_register(dpep_comm *c)
{
    int level = MPI_THREAD_SINGLE;
    DPEP_CHECK_MPI(MPI_Query_thread(&level));
    if (level < MPI_THREAD_MULTIPLE) {
        /* No thread: nothing would answer peers' queries either, so every
         * process of the job is in the same position. */
        if (c->timeout_s > 0 && !g_warned) {
            DPEP_WARN("comm \"%s\": MPI was initialized without MPI_THREAD_MULTIPLE (level %d); "
                      "the collective watchdog is disabled and a hung collective will hang",
                      c->name, level);
            g_warned = true;
        }
        c->timeout_s = 0;
        c->next = NULL; /* not registered; unregister finds nothing to remove */
        return DPEP_OK;
    }
    pthread_mutex_lock(&g_life);
    pthread_mutex_lock(&g_lock);
    c->next = g_head;
    g_head = c;
    pthread_mutex_unlock(&g_lock);
    dpep_status st = DPEP_OK;
    if (!g_running) {
        atomic_store(&g_stop, 0);
        int rc = pthread_create(&g_thread, NULL, watchdog_main, NULL);
        if (rc != 0) {
            DPEP_ERROR("comm \"%s\": pthread_create(watchdog) -> %s", c->name, strerror(rc));
            pthread_mutex_lock(&g_lock);
            g_head = c->next; /* c is still the head: g_life kept others out */
            pthread_mutex_unlock(&g_lock);
            st = DPEP_ERR_INTERNAL;
        } else {
            g_running = true;
        }
    }
    pthread_mutex_unlock(&g_life);
    return st;
}

dpep_comm *dpep_watchdog_congruent(MPI_Comm parent)
{
    dpep_comm *found = NULL;
    pthread_mutex_lock(&g_lock);
    for (dpep_comm *c = g_head; c && !found; c = c->next) {
        /* One inside a bracket of its own (the caller nests the creation in
         * it) is left alone: its op stays watched as it was. */
        if (atomic_load(&c->in_op)) continue;
        int cmp = MPI_UNEQUAL;
        if (MPI_Comm_compare(parent, c->comm, &cmp) == MPI_SUCCESS && cmp == MPI_CONGRUENT)
            found = c; /* the list is newest first */
    }
    pthread_mutex_unlock(&g_lock);
    return found;
}

void dpep_watchdog_unregister(dpep_comm *c)
{
    pthread_mutex_lock(&g_life);
    pthread_mutex_lock(&g_lock);
    for (dpep_comm **pp = &g_head; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    bool empty = g_head == NULL;
    pthread_mutex_unlock(&g_lock);
    if (empty && g_running) {
        atomic_store(&g_stop, 1);
        pthread_join(g_thread, NULL);
        g_running = false;
    }
    pthread_mutex_unlock(&g_life);
}
