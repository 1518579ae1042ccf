/* sink.c — rank 0's output file of `dpep run`: written line by line as
 * requests finish and flushed after every step that finished some, so a
 * job killed or stopped at any point keeps every request it reported; every
 * write checked (a full disk is a runtime failure naming the file, never a
 * silent cut); --resume keeps the complete lines of an earlier run; a run
 * that completes leaves the file in request order (rewritten through a
 * temporary file renamed over it, so the rewrite cannot lose anything). */
#include "serve_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio_ext.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

dpep_status serve_sink_check(const char *path, dpep_diag *diag)
{
    if (!path) return DPEP_OK;
    struct stat pre;
    if (stat(path, &pre) == 0 && !S_ISREG(pre.st_mode)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "--output %s: is %s (expected a regular file, or a "
                      "path to create: the file is rewritten in request order at the end)", path,
                      dpep_file_kind_name((unsigned)pre.st_mode));
        return DPEP_ERR_INVALID;
    }
    /* not truncated here: a run that fails before serving leaves an
     * earlier output as it was. O_NONBLOCK: a FIFO without a reader fails
     * (ENXIO) instead of blocking; it is refused below anyway. */
    int fd = open(path, O_WRONLY | O_CREAT | O_NONBLOCK | O_CLOEXEC | O_NOCTTY, 0644);
    if (fd < 0) {
        const int e = errno;
        if (e == ENOENT) {
            char *dup = strdup(path);
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "--output %s: cannot create it: the directory "
                          "%s does not exist", path, dup ? dirname(dup) : "of it");
            free(dup);
        } else {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "--output %s: cannot open for writing: %s", path,
                          strerror(e));
        }
        return DPEP_ERR_INVALID;
    }
    struct stat st;
    const bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
    const unsigned mode = ok ? 0 : (unsigned)st.st_mode;
    close(fd);
    if (!ok) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "--output %s: is %s (expected a regular file, or a "
                      "path to create: the file is rewritten in request order at the end)", path,
                      dpep_file_kind_name(mode));
        return DPEP_ERR_INVALID;
    }
    return DPEP_OK;
}

/* ---- --resume ---------------------------------------------------------- */
typedef struct id_index {
    const serve_req_meta *meta;
    int64_t *order; /* request indices sorted by id */
    int64_t n;
} id_index;

static const serve_req_meta *g_sort_meta; /* qsort has no context argument */
static int cmp_by_id(const void *a, const void *b)
{
    return strcmp(g_sort_meta[*(const int64_t *)a].id, g_sort_meta[*(const int64_t *)b].id);
}

static int64_t find_id(const id_index *x, const char *id)
{
    int64_t lo = 0, hi = x->n - 1;
    while (lo <= hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        const int c = strcmp(x->meta[x->order[mid]].id, id);
        if (c == 0) return x->order[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid - 1;
    }
    return -1;
}

/* A complete line: an object with a string id, an output_ids array and no
 * "error" (a failed request is served again). */
static const char *complete_id(const char *line, size_t len, json_t **keep)
{
    json_error_t je;
    json_t *o = json_loadb(line, len, 0, &je);
    json_t *id = o && json_is_object(o) ? json_object_get(o, "id") : NULL;
    if (!id || !json_is_string(id) || !json_is_array(json_object_get(o, "output_ids")) ||
        json_object_get(o, "error")) {
        json_decref(o);
        return NULL;
    }
    *keep = o;
    return json_string_value(id);
}

dpep_status serve_sink_resume(serve_sink *s, const char *path, serve_req_meta *meta, int64_t n,
                              dpep_diag *diag)
{
    s->n = n;
    s->kept = calloc((size_t)(n > 0 ? n : 1), sizeof *s->kept);
    if (!s->kept) return DPEP_ERR_NOMEM;
    char why[300];
    FILE *f = dpep_fopen_regular(path, 0, why, sizeof why);
    if (!f) {
        if (access(path, F_OK) != 0) {
            printf("dpep run: --resume: %s does not exist yet: every request is served\n", path);
            return DPEP_OK;
        }
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "--output %s: %s (--resume reads it)", path, why);
        return DPEP_ERR_INVALID;
    }
    id_index x = {.meta = meta, .order = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1)), .n = n};
    if (!x.order) {
        fclose(f);
        return DPEP_ERR_NOMEM;
    }
    for (int64_t i = 0; i < n; i++) x.order[i] = i;
    g_sort_meta = meta;
    qsort(x.order, (size_t)n, sizeof *x.order, cmp_by_id);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int64_t lineno = 0, cut = 0, failed = 0, dup = 0;
    dpep_status st = DPEP_OK;
    while (st == DPEP_OK && (len = getline(&line, &cap, f)) > 0) {
        lineno++;
        if (line[len - 1] != '\n') { /* the last line, cut by the end of the earlier run */
            cut++;
            break;
        }
        json_t *o = NULL;
        const char *id = complete_id(line, (size_t)len - 1, &o);
        if (!id) {
            failed++;
            continue;
        }
        const int64_t i = find_id(&x, id);
        if (i < 0) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "--output %s:%lld: id \"%.*s\" is not a request of "
                          "this workload (--resume continues the run that wrote the file: same "
                          "workload, same output)", path, (long long)lineno, 80, id);
            st = DPEP_ERR_INVALID;
        } else if (s->kept[i]) {
            dup++;
        } else {
            s->kept[i] = strndup(line, (size_t)len - 1);
            if (!s->kept[i]) st = DPEP_ERR_NOMEM;
            meta[i].resumed = 1;
            s->n_kept++;
        }
        json_decref(o);
    }
    if (st == DPEP_OK && ferror(f)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "--output %s: read error (--resume)", path);
        st = DPEP_ERR_IO;
    }
    free(line);
    free(x.order);
    fclose(f);
    if (st == DPEP_OK)
        printf("dpep run: --resume: %lld of %lld requests complete in %s (kept); %lld to serve%s%s%s\n",
               (long long)s->n_kept, (long long)n, path, (long long)(n - s->n_kept),
               failed ? " (failed or unreadable lines are served again)" : "",
               cut ? "; the cut last line is dropped" : "", dup ? "; repeated ids kept once" : "");
    s->n_dropped = failed + cut + dup;
    return st;
}

/* ---- writing ------------------------------------------------------------ */
/* The row view of one record (ib/db as results.c packs them). */
static serve_row rec_row(const int32_t *ib, const double *db)
{
    const int n_out = ib[2];
    const int64_t ng = n_out > 1 ? n_out - 1 : 0;
    return (serve_row){.present = 1, .failed = ib[1] == SERVE_FAILED,
                       .aborted = ib[1] == SERVE_ABORTED, .n_out = n_out, .out = ib + 4,
                       .ttft = db[0], .latency = db[1], .gaps = db + 2, .logprob = db + 2 + ng};
}

static void write_failed(serve_sink *s, int e, const char *what)
{
    if (s->werr) return;
    s->werr = e ? e : EIO;
    DPEP_ERROR("--output %s: %s failed: %s; %lld line%s written before it; the requests "
               "finishing from now on are not written (not delivered)", s->path, what,
               strerror(s->werr), (long long)s->n_written, s->n_written == 1 ? "" : "s");
    /* a cut record at the end would read as garbage: keep the file whole up
     * to the last line known written (a resumed run rewrites the rest) */
    if (s->f) {
        __fpurge(s->f); /* the buffered rest must not reach the file at close */
        if (ftruncate(fileno(s->f), s->off_ok) != 0)
            DPEP_WARN("--output %s: cannot cut the partial last line (%s)", s->path,
                      dpep_errno_string());
    }
}

/* tmp path beside `path` (the same file system, so rename is atomic) */
static char *tmp_path(const char *path)
{
    size_t n = strlen(path) + 48;
    char *t = malloc(n);
    if (t) snprintf(t, n, "%s.tmp.%ld", path, (long)getpid());
    return t;
}

static void fsync_dir_of(const char *path)
{
    char *dup = strdup(path);
    if (!dup) return;
    int fd = open(dirname(dup), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(dup);
}

/* Writes the kept lines and, when `rows`, every row in request order into
 * a temporary file renamed over s->path. errno-style result (0: done). */
static int rewrite(serve_sink *s, bool rows)
{
    char *tmp = tmp_path(s->path);
    if (!tmp) return ENOMEM;
    FILE *f = fopen(tmp, "w");
    int e = f ? 0 : errno;
    for (int64_t i = 0; !e && i < s->n; i++) {
        if (s->kept && s->kept[i]) {
            if (fputs(s->kept[i], f) < 0 || fputc('\n', f) < 0) e = errno ? errno : EIO;
            continue;
        }
        if (!rows || s->oi[i] < 0) continue;
        const serve_row r = rec_row(s->ib + s->oi[i], s->db + s->od[i]);
        if (r.aborted) continue;
        char *line = serve_format_line(&s->meta[i], &r);
        if (!line) e = ENOMEM;
        else if (fputs(line, f) < 0 || fputc('\n', f) < 0) e = errno ? errno : EIO;
        free(line);
    }
    if (!e && fflush(f) != 0) e = errno;
    if (!e && fsync(fileno(f)) != 0) e = errno;
    if (f && fclose(f) != 0 && !e) e = errno;
    if (!e && rename(tmp, s->path) != 0) e = errno;
    if (e) unlink(tmp);
    else fsync_dir_of(s->path);
    free(tmp);
    return e;
}

dpep_status serve_sink_start(serve_sink *s, const char *path, const serve_req_meta *meta, int64_t n)
{
    s->path = path;
    s->meta = meta;
    s->n = n;
    s->oi = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    s->od = malloc(sizeof(int64_t) * (size_t)(n > 0 ? n : 1));
    if (!s->oi || !s->od) return DPEP_ERR_NOMEM;
    for (int64_t i = 0; i < n; i++) s->oi[i] = s->od[i] = -1;
    if (!path) return DPEP_OK;
    if (s->n_kept > 0 || s->n_dropped > 0) {
        /* the kept lines only, atomically: a kill now leaves the old file */
        int e = rewrite(s, false);
        if (e) {
            DPEP_ERROR("--output %s: cannot rewrite it with the %lld kept lines: %s", path,
                       (long long)s->n_kept, strerror(e));
            return DPEP_ERR_IO;
        }
        s->f = fopen(path, "a");
    } else {
        s->f = fopen(path, "w");
    }
    if (!s->f) {
        DPEP_ERROR("--output %s: cannot open for writing: %s", path, dpep_errno_string());
        return DPEP_ERR_IO;
    }
    s->off_ok = ftello(s->f);
    if (s->off_ok < 0) s->off_ok = 0;
    return DPEP_OK;
}

void serve_sink_add(serve_sink *s, const int32_t *ib, const double *db)
{
    const int64_t idx = ib[0];
    const int n_out = ib[2];
    if (idx < 0 || idx >= s->n || s->oi[idx] >= 0 || n_out < 0) {
        DPEP_ERROR("results: a record for request %lld %s", (long long)idx,
                   idx < 0 || idx >= s->n ? "out of range" : "arrived twice");
        s->st = DPEP_ERR_INTERNAL;
        return;
    }
    const int64_t ni = SERVE_REC_INTS(n_out), nd = SERVE_REC_DBLS(n_out);
    if (!dpep_grow((void **)&s->ib, &s->cap_i, s->ni + ni, sizeof *s->ib) ||
        !dpep_grow((void **)&s->db, &s->cap_d, s->nd + nd, sizeof *s->db)) {
        DPEP_ERROR("request %s: no memory to record its result", s->meta[idx].id);
        s->st = DPEP_ERR_NOMEM;
        return;
    }
    memcpy(s->ib + s->ni, ib, sizeof(int32_t) * (size_t)ni);
    memcpy(s->db + s->nd, db, sizeof(double) * (size_t)nd);
    s->oi[idx] = s->ni;
    s->od[idx] = s->nd;
    s->ni += ni;
    s->nd += nd;
    s->n_records++;
    s->n_failed += ib[1] == SERVE_FAILED;
    s->n_aborted += ib[1] == SERVE_ABORTED;
    if (ib[1] == SERVE_ABORTED || !s->f || s->werr) return;
    const serve_row r = rec_row(ib, db);
    char *line = serve_format_line(&s->meta[idx], &r);
    if (!line) {
        write_failed(s, ENOMEM, "formatting a line");
        return;
    }
    errno = 0;
    if (fputs(line, s->f) < 0 || fputc('\n', s->f) < 0) write_failed(s, errno, "write");
    else s->unflushed++;
    free(line);
}

void serve_sink_flush(serve_sink *s)
{
    if (!s || !s->f || s->werr || s->unflushed == 0) return;
    errno = 0;
    if (fflush(s->f) != 0) {
        write_failed(s, errno, "write");
        return;
    }
    s->n_written += s->unflushed;
    s->unflushed = 0;
    const off_t o = ftello(s->f);
    if (o >= 0) s->off_ok = o;
}

dpep_status serve_sink_finish(serve_sink *s, bool in_order)
{
    if (!s->path || !s->f) return s->werr ? DPEP_ERR_IO : DPEP_OK;
    serve_sink_flush(s);
    if (!s->werr && fsync(fileno(s->f)) != 0 && errno != EINVAL) write_failed(s, errno, "fsync");
    errno = 0;
    if (fclose(s->f) != 0 && !s->werr) write_failed(s, errno, "close");
    s->f = NULL;
    if (s->werr) return DPEP_ERR_IO;
    if (in_order) {
        int e = rewrite(s, true);
        if (e)
            DPEP_WARN("--output %s: not rewritten in request order (%s): its lines stay in the "
                      "order the requests finished, all of them there", s->path, strerror(e));
    }
    return DPEP_OK;
}

dpep_status serve_sink_rows(const serve_sink *s, serve_gathered *g)
{
    memset(g, 0, sizeof *g);
    g->n = s->n;
    g->row = calloc((size_t)(s->n > 0 ? s->n : 1), sizeof *g->row);
    g->gaps = malloc(sizeof(double) * (size_t)(s->nd + 1));
    if (!g->row || !g->gaps) {
        serve_gathered_free(g);
        return DPEP_ERR_NOMEM;
    }
    for (int64_t i = 0; i < s->n; i++) {
        if (!s->oi || s->oi[i] < 0) continue;
        serve_row *r = &g->row[i];
        *r = rec_row(s->ib + s->oi[i], s->db + s->od[i]);
        const int64_t ng = r->n_out > 1 ? r->n_out - 1 : 0;
        if (!r->aborted) {
            if (ng) memcpy(g->gaps + g->n_gaps, r->gaps, sizeof(double) * (size_t)ng);
            g->n_gaps += ng;
        }
    }
    return DPEP_OK;
}

void serve_sink_free(serve_sink *s)
{
    if (s->f) fclose(s->f);
    for (int64_t i = 0; s->kept && i < s->n; i++) free(s->kept[i]);
    free(s->kept);
    free(s->ib);
    free(s->db);
    free(s->oi);
    free(s->od);
    memset(s, 0, sizeof *s);
}
