/* results.c — the offline run's sinks: finished requests recorded on their
 * DP group's leader as they finish, gathered to rank 0, written as JSONL in
 * request order. */
#include "serve_internal.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

void serve_results_on_finish(void *user, const dpep_sched_result *r)
{
    serve_results *s = user;
    if (s->st != DPEP_OK) return;
    int64_t gaps = r->n_out > 1 ? r->n_out - 1 : 0;
    if (!dpep_grow((void **)&s->ib, &s->cap_i, s->ni + 4 + r->n_out, sizeof *s->ib) ||
        !dpep_grow((void **)&s->db, &s->cap_d, s->nd + 2 + gaps + r->n_out, sizeof *s->db)) {
        DPEP_ERROR("request %s: no memory to record its result", r->id);
        s->st = DPEP_ERR_NOMEM;
        return;
    }
    s->ib[s->ni++] = (int32_t)r->index; /* offline: below the workload's request limit */
    s->ib[s->ni++] = r->failed || r->aborted;
    s->ib[s->ni++] = r->n_out;
    s->ib[s->ni++] = r->dp_rank;
    memcpy(s->ib + s->ni, r->out, sizeof(int32_t) * (size_t)r->n_out);
    s->ni += r->n_out;
    s->db[s->nd++] = r->failed ? 0.0 : r->t_first - r->t_arrive;
    s->db[s->nd++] = r->failed ? 0.0 : r->t_last - r->t_arrive;
    memcpy(s->db + s->nd, r->gaps, sizeof(double) * (size_t)gaps);
    s->nd += gaps;
    memcpy(s->db + s->nd, r->logprob, sizeof(double) * (size_t)r->n_out);
    s->nd += r->n_out;
}

void serve_results_free(serve_results *r)
{
    free(r->ib);
    free(r->db);
    memset(r, 0, sizeof *r);
}

void serve_gathered_free(serve_gathered *g)
{
    free(g->row);
    free(g->gaps);
    free(g->iall);
    free(g->dall);
    memset(g, 0, sizeof *g);
}

dpep_status serve_results_gather(const serve_results *r, MPI_Comm comm, int64_t n_requests,
                                 serve_gathered *g)
{
    memset(g, 0, sizeof *g);
    int rank = 0, size = 1;
    DPEP_CHECK_MPI(MPI_Comm_rank(comm, &rank));
    DPEP_CHECK_MPI(MPI_Comm_size(comm, &size));
    dpep_status st = DPEP_OK;
    /* counts (int: one rank's records stay below 2^31 elements) */
    int cnt[2] = {(int)r->ni, (int)r->nd};
    int *cnts = NULL, *ci = NULL, *cd = NULL, *di = NULL, *dd = NULL;
    int bad = r->ni > INT32_MAX || r->nd > INT32_MAX, any_bad = 0;
    DPEP_CHECK_MPI(MPI_Allreduce(&bad, &any_bad, 1, MPI_INT, MPI_MAX, comm));
    if (any_bad) {
        DPEP_ERROR("results: more than 2^31 values on one rank");
        return DPEP_ERR_UNSUPPORTED;
    }
    int64_t si = 0, sd = 0;
    if (rank == 0) {
        cnts = malloc(sizeof(int) * 2 * (size_t)size);
        ci = malloc(sizeof(int) * (size_t)size);
        cd = malloc(sizeof(int) * (size_t)size);
        di = malloc(sizeof(int) * (size_t)size);
        dd = malloc(sizeof(int) * (size_t)size);
        if (!cnts || !ci || !cd || !di || !dd) st = DPEP_ERR_NOMEM;
    }
    DPEP_CHECK_MPI_GOTO(MPI_Gather(cnt, 2, MPI_INT, cnts, 2, MPI_INT, 0, comm), st, done);
    if (rank == 0 && st == DPEP_OK) {
        for (int p = 0; p < size; p++) {
            ci[p] = cnts[2 * p];
            cd[p] = cnts[2 * p + 1];
            di[p] = (int)si;
            dd[p] = (int)sd;
            si += ci[p];
            sd += cd[p];
        }
        g->iall = malloc(sizeof(int32_t) * (size_t)(si + 1));
        g->dall = malloc(sizeof(double) * (size_t)(sd + 1));
        g->row = calloc((size_t)(n_requests > 0 ? n_requests : 1), sizeof *g->row);
        g->gaps = malloc(sizeof(double) * (size_t)(sd + 1));
        if (!g->iall || !g->dall || !g->row || !g->gaps) st = DPEP_ERR_NOMEM;
    }
    /* a rank 0 without memory still joins the gathers (receiving nothing) */
    if (rank == 0 && st != DPEP_OK)
        for (int p = 0; ci && p < size; p++) ci[p] = cd[p] = di[p] = dd[p] = 0;
    DPEP_CHECK_MPI_GOTO(MPI_Gatherv(r->ib, cnt[0], MPI_INT32_T, g->iall, ci, di, MPI_INT32_T, 0,
                                    comm), st, done);
    DPEP_CHECK_MPI_GOTO(MPI_Gatherv(r->db, cnt[1], MPI_DOUBLE, g->dall, cd, dd, MPI_DOUBLE, 0,
                                    comm), st, done);
    if (rank == 0 && st == DPEP_OK) {
        g->n = n_requests;
        const int32_t *p = g->iall, *pe = g->iall + si;
        const double *q = g->dall;
        while (p < pe) {
            int idx = p[0], n_out = p[2];
            int64_t n_gap = n_out > 1 ? n_out - 1 : 0;
            if (idx < 0 || idx >= n_requests) {
                st = DPEP_ERR_INTERNAL;
                break;
            }
            serve_row *row = &g->row[idx];
            row->failed = p[1];
            row->n_out = n_out;
            row->out = p + 4;
            row->ttft = q[0];
            row->latency = q[1];
            memcpy(g->gaps + g->n_gaps, q + 2, sizeof(double) * (size_t)n_gap);
            g->n_gaps += n_gap;
            row->logprob = q + 2 + n_gap;
            p += 4 + n_out;
            q += 2 + n_gap + n_out;
        }
    }
done:
    free(cnts);
    free(ci);
    free(cd);
    free(di);
    free(dd);
    if (st != DPEP_OK) serve_gathered_free(g);
    return st;
}

dpep_status serve_write_jsonl(const char *path, const serve_req_meta *meta, const serve_gathered *g)
{
    FILE *of = fopen(path, "w");
    if (!of) {
        DPEP_ERROR("--output %s: cannot open for writing (%s)", path, dpep_errno_string());
        return DPEP_ERR_IO;
    }
    dpep_status st = DPEP_OK;
    for (int64_t i = 0; i < g->n && st == DPEP_OK; i++) {
        const serve_row *r = &g->row[i];
        json_t *ids = json_array(), *lpa = json_array();
        for (int j = 0; j < r->n_out; j++) {
            json_array_append_new(ids, json_integer(r->out[j]));
            json_array_append_new(lpa, json_real(r->logprob[j]));
        }
        json_t *js = json_pack("{s:s, s:i, s:i, s:o, s:f, s:f}", "id", meta[i].id, "dp_rank",
                               meta[i].group, "input_len", meta[i].input_len, "output_ids", ids,
                               "ttft_s", r->ttft, "latency_s", r->latency);
        json_object_set_new(js, "logprobs", lpa);
        if (r->failed)
            json_object_set_new(js, "error", json_string("does not fit the KV pool or context"));
        char *line = json_dumps(js, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!line || fprintf(of, "%s\n", line) < 0) st = DPEP_ERR_IO;
        free(line);
        json_decref(js);
    }
    if (fclose(of) != 0) st = DPEP_ERR_IO;
    if (st != DPEP_OK) DPEP_ERROR("--output %s: write failed (%s)", path, dpep_errno_string());
    return st;
}
