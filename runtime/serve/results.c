/* results.c — the offline run's results channel: each finished request is
 * packed as a record on its DP group's leader and sent to rank 0 after the
 * step it finished in, so that rank 0 writes its line at once (sink.c) and
 * nothing finished is lost when the job dies later. The same channel
 * carries the stop of a run: any rank a signal reached asks rank 0, which
 * tells the source rank of every instance to abort what is left.
 *
 * Messages on a duplicate of the world (tags below): DATA and END carry
 * records (END is a rank's last message, sent once its instance is
 * drained, even when empty), STOPREQ goes to rank 0, STOP from rank 0 to
 * instance sources. Every non-root rank sends one END; rank 0 counts them,
 * so it knows when every record has arrived. */
#include "serve_internal.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

enum { TAG_DATA = 11, TAG_END = 12, TAG_STOPREQ = 13, TAG_STOP = 14 };

/* ------------------------------------------------------------------------ */
/* Rows and lines                                                            */
/* ------------------------------------------------------------------------ */
void serve_gathered_free(serve_gathered *g)
{
    free(g->row);
    free(g->gaps);
    memset(g, 0, sizeof *g);
}

char *serve_format_line(const serve_req_meta *meta, const serve_row *r)
{
    json_t *ids = json_array(), *lpa = json_array();
    for (int j = 0; ids && lpa && j < r->n_out; j++) {
        json_array_append_new(ids, json_integer(r->out[j]));
        json_array_append_new(lpa, json_real(r->logprob[j]));
    }
    /* "s%": the id with its length, so an id is written exactly as read */
    json_t *js = json_pack("{s:s%, s:i, s:i, s:o, s:f, s:f}", "id", meta->id, strlen(meta->id),
                           "dp_rank", meta->group, "input_len", meta->input_len, "output_ids",
                           ids, "ttft_s", r->ttft, "latency_s", r->latency);
    if (!js) {
        json_decref(lpa);
        return NULL;
    }
    json_object_set_new(js, "logprobs", lpa);
    if (r->failed)
        json_object_set_new(js, "error", json_string("does not fit the KV pool or context"));
    char *line = json_dumps(js, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(js);
    return line;
}

/* ------------------------------------------------------------------------ */
/* The channel                                                               */
/* ------------------------------------------------------------------------ */
dpep_status serve_results_init(serve_results *r, MPI_Comm world, serve_sink *sink)
{
    memset(r, 0, sizeof *r);
    r->chan = MPI_COMM_NULL;
    r->req[0] = r->req[1] = r->stop_req_rq = MPI_REQUEST_NULL;
    r->stop_from = -1;
    DPEP_CHECK_MPI(MPI_Comm_rank(world, &r->rank));
    DPEP_CHECK_MPI(MPI_Comm_size(world, &r->size));
    DPEP_CHECK_MPI(MPI_Comm_dup(world, &r->chan));
    DPEP_CHECK_MPI(MPI_Comm_set_errhandler(r->chan, MPI_ERRORS_RETURN));
    r->sink = r->rank == 0 ? sink : NULL;
    if (r->rank == 0) {
        r->stop_rq = malloc(sizeof *r->stop_rq * (size_t)r->size);
        if (!r->stop_rq) return DPEP_ERR_NOMEM;
        for (int p = 0; p < r->size; p++) r->stop_rq[p] = MPI_REQUEST_NULL;
    }
    return DPEP_OK;
}

void serve_results_free(serve_results *r)
{
    free(r->ib);
    free(r->db);
    free(r->buf[0]);
    free(r->buf[1]);
    free(r->stop_rq);
    if (r->chan != MPI_COMM_NULL) MPI_Comm_free(&r->chan);
    memset(r, 0, sizeof *r);
    r->chan = MPI_COMM_NULL;
}

void serve_results_on_finish(void *user, const dpep_sched_result *x)
{
    serve_results *s = user;
    if (s->st != DPEP_OK) return;
    const int64_t gaps = x->n_out > 1 ? x->n_out - 1 : 0;
    if (!dpep_grow((void **)&s->ib, &s->cap_i, s->ni + SERVE_REC_INTS(x->n_out), sizeof *s->ib) ||
        !dpep_grow((void **)&s->db, &s->cap_d, s->nd + SERVE_REC_DBLS(x->n_out), sizeof *s->db)) {
        DPEP_ERROR("request %s: no memory to record its result", x->id);
        s->st = DPEP_ERR_NOMEM;
        return;
    }
    int32_t *ib = s->ib + s->ni;
    double *db = s->db + s->nd;
    ib[0] = (int32_t)x->index; /* offline: below the workload's request limit */
    ib[1] = x->aborted ? SERVE_ABORTED : x->failed ? SERVE_FAILED : SERVE_DONE;
    ib[2] = x->n_out;
    ib[3] = x->dp_rank;
    if (x->n_out > 0) memcpy(ib + 4, x->out, sizeof(int32_t) * (size_t)x->n_out);
    db[0] = x->failed || x->aborted ? 0.0 : x->t_first - x->t_arrive;
    db[1] = x->failed || x->aborted ? 0.0 : x->t_last - x->t_arrive;
    if (gaps > 0) memcpy(db + 2, x->gaps, sizeof(double) * (size_t)gaps);
    if (x->n_out > 0) memcpy(db + 2 + gaps, x->logprob, sizeof(double) * (size_t)x->n_out);
    if (s->rank == 0) { /* rank 0's own: straight to the file */
        serve_sink_add(s->sink, ib, db);
        return;
    }
    s->ni += SERVE_REC_INTS(x->n_out);
    s->nd += SERVE_REC_DBLS(x->n_out);
    s->n_rec++;
}

/* Pending records into buf[slot]: {n_rec, ni, nd} as int64, ints, padding
 * to 8 bytes, doubles. */
static bool pack(serve_results *r, int slot, int64_t *bytes)
{
    const int64_t ib = r->ni * (int64_t)sizeof(int32_t), pad = (8 - ib % 8) % 8;
    const int64_t n = 3 * (int64_t)sizeof(int64_t) + ib + pad + r->nd * (int64_t)sizeof(double);
    if (n > INT32_MAX) return false; /* the caller sends before this grows so far */
    if (!dpep_grow((void **)&r->buf[slot], &r->cap_b[slot], n, 1)) return false;
    unsigned char *p = r->buf[slot];
    const int64_t hdr[3] = {r->n_rec, r->ni, r->nd};
    memcpy(p, hdr, sizeof hdr);
    /* an empty end marker has no records (and NULL arrays) */
    if (ib) memcpy(p + sizeof hdr, r->ib, (size_t)ib);
    if (r->nd) memcpy(p + sizeof hdr + ib + pad, r->db, (size_t)(r->nd * (int64_t)sizeof(double)));
    r->ni = r->nd = r->n_rec = 0;
    *bytes = n;
    return true;
}

/* Rank 0: the records of one message into the sink. */
static dpep_status unpack(serve_results *r, const unsigned char *p, int64_t len)
{
    int64_t hdr[3];
    if (len < (int64_t)sizeof hdr) return DPEP_ERR_INTERNAL;
    memcpy(hdr, p, sizeof hdr);
    const int64_t ib = hdr[1] * (int64_t)sizeof(int32_t), pad = (8 - ib % 8) % 8;
    if (hdr[0] < 0 || hdr[1] < 0 || hdr[2] < 0 ||
        len != (int64_t)sizeof hdr + ib + pad + hdr[2] * (int64_t)sizeof(double))
        return DPEP_ERR_INTERNAL;
    /* the ints and doubles are copied out: the message buffer is not aligned for them */
    int32_t *iv = malloc((size_t)(ib + 4));
    double *dv = malloc(sizeof(double) * (size_t)(hdr[2] + 1));
    if (!iv || !dv) {
        free(iv);
        free(dv);
        return DPEP_ERR_NOMEM;
    }
    if (ib) memcpy(iv, p + sizeof hdr, (size_t)ib);
    if (hdr[2]) memcpy(dv, p + sizeof hdr + ib + pad, sizeof(double) * (size_t)hdr[2]);
    int64_t oi = 0, od = 0;
    dpep_status st = DPEP_OK;
    for (int64_t k = 0; k < hdr[0]; k++) {
        if (oi + 4 > hdr[1]) {
            st = DPEP_ERR_INTERNAL;
            break;
        }
        const int n_out = iv[oi + 2];
        if (n_out < 0 || oi + SERVE_REC_INTS(n_out) > hdr[1] || od + SERVE_REC_DBLS(n_out) > hdr[2]) {
            st = DPEP_ERR_INTERNAL;
            break;
        }
        serve_sink_add(r->sink, iv + oi, dv + od);
        oi += SERVE_REC_INTS(n_out);
        od += SERVE_REC_DBLS(n_out);
    }
    free(iv);
    free(dv);
    return st;
}

/* Rank 0: one message that MPI_Probe/Iprobe found. */
static void take(serve_results *r, const MPI_Status *ps)
{
    int len = 0;
    MPI_Get_count(ps, MPI_BYTE, &len);
    unsigned char *buf = malloc((size_t)(len > 0 ? len : 1));
    if (!buf) {
        r->st = DPEP_ERR_NOMEM;
        /* still receive it, into nothing useful, so the channel moves on */
        static unsigned char sink1[1];
        MPI_Recv(sink1, 0, MPI_BYTE, ps->MPI_SOURCE, ps->MPI_TAG, r->chan, MPI_STATUS_IGNORE);
        return;
    }
    int rc = MPI_Recv(buf, len, MPI_BYTE, ps->MPI_SOURCE, ps->MPI_TAG, r->chan, MPI_STATUS_IGNORE);
    if (rc != MPI_SUCCESS) {
        dpep_check_fail_(__FILE__, __LINE__, "MPI_Recv(results)", dpep_mpi_error_string(rc));
        r->st = DPEP_ERR_MPI;
    } else if (ps->MPI_TAG == TAG_STOPREQ) {
        if (!r->stop_asked && len == (int)sizeof(int)) {
            memcpy(&r->stop_sig, buf, sizeof(int));
            r->stop_from = ps->MPI_SOURCE;
        }
        r->stop_asked = true;
    } else {
        dpep_status st = unpack(r, buf, len);
        if (st != DPEP_OK) {
            DPEP_ERROR("results from rank %d: a malformed message (%s)", ps->MPI_SOURCE,
                       dpep_status_string(st));
            if (r->st == DPEP_OK) r->st = st;
        }
        if (ps->MPI_TAG == TAG_END) r->ends++;
    }
    free(buf);
}

void serve_results_pump(serve_results *r)
{
    if (r->rank == 0) {
        for (;;) {
            int flag = 0;
            MPI_Status ps;
            if (MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, r->chan, &flag, &ps) != MPI_SUCCESS || !flag)
                break;
            if (ps.MPI_TAG == TAG_STOP) break; /* never sent to rank 0 */
            take(r, &ps);
        }
        serve_sink_flush(r->sink);
        return;
    }
    int done = 1;
    if (r->req[0] != MPI_REQUEST_NULL) MPI_Test(&r->req[0], &done, MPI_STATUS_IGNORE);
    if (done && r->n_rec > 0) {
        int64_t bytes = 0;
        if (!pack(r, 0, &bytes)) {
            r->st = DPEP_ERR_NOMEM;
        } else {
            int rc = MPI_Isend(r->buf[0], (int)bytes, MPI_BYTE, 0, TAG_DATA, r->chan, &r->req[0]);
            if (rc != MPI_SUCCESS) {
                dpep_check_fail_(__FILE__, __LINE__, "MPI_Isend(results)", dpep_mpi_error_string(rc));
                r->st = DPEP_ERR_MPI;
            }
        }
    }
    if (!r->stop_asked) {
        int flag = 0;
        MPI_Status ps;
        if (MPI_Iprobe(0, TAG_STOP, r->chan, &flag, &ps) == MPI_SUCCESS && flag) {
            int v = 0;
            MPI_Recv(&v, 1, MPI_INT, 0, TAG_STOP, r->chan, MPI_STATUS_IGNORE);
            r->stop_asked = true;
        }
    }
}

void serve_results_ask_stop(serve_results *r, int sig)
{
    /* after the end marker rank 0 may have stopped listening: nothing to stop then */
    if (r->stop_req_sent || r->ended) return;
    r->stop_req_sent = true;
    if (r->rank == 0) {
        r->stop_asked = true;
        return;
    }
    r->stop_payload = sig;
    MPI_Isend(&r->stop_payload, 1, MPI_INT, 0, TAG_STOPREQ, r->chan, &r->stop_req_rq);
}

void serve_results_send_stop(serve_results *r, const int *sources, int n_sources)
{
    if (r->rank != 0 || r->stop_sent) return;
    r->stop_sent = true;
    r->stop_payload = 1;
    for (int i = 0; i < n_sources; i++)
        if (sources[i] != 0 && sources[i] < r->size)
            MPI_Isend(&r->stop_payload, 1, MPI_INT, sources[i], TAG_STOP, r->chan,
                      &r->stop_rq[sources[i]]);
}

void serve_results_end(serve_results *r)
{
    if (r->rank == 0 || r->ended) return;
    r->ended = true;
    int64_t bytes = 0;
    if (!pack(r, 1, &bytes)) {
        /* an end marker without the records: rank 0 still learns this rank is done */
        r->st = DPEP_ERR_NOMEM;
        r->ni = r->nd = r->n_rec = 0;
        if (!pack(r, 1, &bytes)) return;
    }
    int rc = MPI_Isend(r->buf[1], (int)bytes, MPI_BYTE, 0, TAG_END, r->chan, &r->req[1]);
    if (rc != MPI_SUCCESS) {
        dpep_check_fail_(__FILE__, __LINE__, "MPI_Isend(results end)", dpep_mpi_error_string(rc));
        r->st = DPEP_ERR_MPI;
    }
}

dpep_status serve_results_complete(serve_results *r, bool stop_sent, bool is_source)
{
    if (r->rank == 0) {
        /* every END was posted before its rank entered the final barrier */
        while (r->ends < r->size - 1) {
            MPI_Status ps;
            int rc = MPI_Probe(MPI_ANY_SOURCE, MPI_ANY_TAG, r->chan, &ps);
            if (rc != MPI_SUCCESS) {
                dpep_check_fail_(__FILE__, __LINE__, "MPI_Probe(results)", dpep_mpi_error_string(rc));
                return DPEP_ERR_MPI;
            }
            take(r, &ps);
        }
        if (r->stop_sent)
            for (int p = 0; p < r->size; p++)
                if (r->stop_rq[p] != MPI_REQUEST_NULL) MPI_Wait(&r->stop_rq[p], MPI_STATUS_IGNORE);
        serve_sink_flush(r->sink);
        return r->st;
    }
    /* a source that rank 0 sent a STOP takes it (it may still be in flight) */
    if (stop_sent && is_source && !r->stop_asked) {
        int v = 0;
        MPI_Recv(&v, 1, MPI_INT, 0, TAG_STOP, r->chan, MPI_STATUS_IGNORE);
        r->stop_asked = true;
    }
    MPI_Waitall(2, r->req, MPI_STATUSES_IGNORE);
    if (r->stop_req_rq != MPI_REQUEST_NULL) MPI_Wait(&r->stop_req_rq, MPI_STATUS_IGNORE);
    return r->st;
}
