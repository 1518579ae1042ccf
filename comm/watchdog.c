/* watchdog.c — one thread per process that (1) answers peers' "what is your
 * sequence number on this comm" queries on every comm's control communicator
 * and (2) ends the job when a collective runs past its comm's timeout, after
 * asking every peer how far it got and naming the ranks that did not arrive.
 *
 * Protocol on c->ctrl: a timed-out rank sends TAG_QUERY (its own seq) to every
 * peer; each peer's watchdog answers TAG_REPLY {seq, in_op}. A peer whose seq
 * is below ours never entered our collective; a peer that does not answer
 * within the wait is reported too. Needs MPI_THREAD_MULTIPLE. */
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

/* Answers every pending query on every registered comm (under g_lock).
 * Replies are 16 bytes, sent eagerly, so MPI_Send does not wait for the
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
            uint64_t q, reply[2];
            MPI_Recv(&q, 1, MPI_UINT64_T, s.MPI_SOURCE, DPEP_COMM_TAG_QUERY, c->ctrl,
                     MPI_STATUS_IGNORE);
            reply[1] = (uint64_t)atomic_load(&c->in_op);
            reply[0] = atomic_load(&c->seq);
            MPI_Send(reply, 2, MPI_UINT64_T, s.MPI_SOURCE, DPEP_COMM_TAG_REPLY, c->ctrl);
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

/* Collective #seq on c has run `waited` seconds: find who did not arrive,
 * say so in one line and end the job. Called under g_lock; does not return. */
static void timed_out(dpep_comm *c, uint64_t seq, const char *op, double waited)
{
    int n = c->size, me = c->rank;
    uint64_t myseq = seq;
    for (int p = 0; p < n; p++) {
        c->wd_reqs[p] = MPI_REQUEST_NULL;
        c->wd_reqs[n + p] = MPI_REQUEST_NULL;
        c->wd_reply[2 * p] = UINT64_MAX; /* "no answer" */
        c->wd_reply[2 * p + 1] = 0;
        if (p == me) continue;
        MPI_Irecv(&c->wd_reply[2 * p], 2, MPI_UINT64_T, p, DPEP_COMM_TAG_REPLY, c->ctrl,
                  &c->wd_reqs[p]);
        MPI_Isend(&myseq, 1, MPI_UINT64_T, p, DPEP_COMM_TAG_QUERY, c->ctrl, &c->wd_reqs[n + p]);
    }
    /* Peers poll every POLL_NS; give them a bounded time, serving their own
     * queries meanwhile (they are likely timing out at the same moment). */
    double wait_s = c->timeout_s < 1.0 ? 1.0 : c->timeout_s > 5.0 ? 5.0 : c->timeout_s;
    double deadline = dpep_clock_s() + wait_s;
    for (;;) {
        serve_queries();
        int done = 0;
        MPI_Testall(n, c->wd_reqs, &done, MPI_STATUSES_IGNORE);
        if (done || dpep_clock_s() > deadline) break;
        sleep_ns(POLL_NS / 4);
    }
    /* A reply landed iff its receive request completed (set to NULL). */
    char list[1024], detail[1024];
    size_t lp = 0, dp = 0;
    int missing = 0;
    for (int p = 0; p < n; p++) {
        if (p == me) continue;
        int flag = 0;
        if (c->wd_reqs[p] != MPI_REQUEST_NULL) MPI_Test(&c->wd_reqs[p], &flag, MPI_STATUS_IGNORE);
        bool replied = c->wd_reqs[p] == MPI_REQUEST_NULL;
        uint64_t pseq = c->wd_reply[2 * p];
        if (replied && pseq >= myseq) continue; /* entered #seq (or went past it) */
        lp = append(list, sizeof list, lp, "%s%d", missing ? ", " : "", p);
        if (!replied)
            dp = append(detail, sizeof detail, dp, "%srank %d (world %d) did not answer",
                        dp ? "; " : "", p, c->world_rank[p]);
        else
            dp = append(detail, sizeof detail, dp, "%srank %d (world %d) is at #%llu%s",
                        dp ? "; " : "", p, c->world_rank[p], (unsigned long long)pseq,
                        c->wd_reply[2 * p + 1] ? " (inside it)" : " (done with it)");
        missing++;
    }
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

static void *watchdog_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&g_stop)) {
        pthread_mutex_lock(&g_lock);
        serve_queries();
        double now = dpep_clock_s();
        for (dpep_comm *c = g_head; c; c = c->next) {
            if (c->timeout_s <= 0) continue;
            uint64_t seq = atomic_load_explicit(&c->seq, memory_order_acquire);
            if (!atomic_load_explicit(&c->in_op, memory_order_acquire)) continue;
            double start = atomic_load_explicit(&c->start_s, memory_order_relaxed);
            const char *op = atomic_load_explicit(&c->op, memory_order_relaxed);
            if (atomic_load_explicit(&c->seq, memory_order_acquire) != seq) continue;
            double waited = now - start;
            if (waited > c->timeout_s) timed_out(c, seq, op, waited);
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
