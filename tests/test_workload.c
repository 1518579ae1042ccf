/* test_workload.c — workloads (random, shared_prefix, JSONL with bad lines
 * named and skipped, non-regular files refused without blocking, ids kept
 * whole and unique), the DP scheduler's rules, and sampling (greedy ties,
 * temperature distribution, top-k, top-p, determinism per seed). */
#include "dpep_serve.h"
#include "dpep_test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>


/* The workload of the JSONL file at `path` (vocabulary 512, 2 DP ranks);
 * *c and *d are set up here, the caller frees them. */
static dpep_status build_file_workload(const char *path, dpep_config *c, dpep_workload *w,
                                       dpep_diag *d)
{
    dpep_config_init(c);
    c->workload.kind = DPEP_WORKLOAD_FILE;
    free(c->workload.path);
    c->workload.path = strdup(path);
    dpep_diag_init(d);
    return dpep_workload_build(c, 512, 2, w, d);
}

static void test_random(void)
{
    dpep_config c;
    dpep_config_init(&c);
    c.workload.num_prompts = 200;
    c.workload.input_len = 100;
    c.workload.output_len = 20;
    c.workload.range_ratio = 0.25;
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_workload a, b;
    EXPECT(dpep_workload_build(&c, 512, 4, &a, &d) == DPEP_OK && a.n == 200, "random build");
    EXPECT(dpep_workload_build(&c, 512, 4, &b, &d) == DPEP_OK, "random rebuild");
    bool ranges = true, same = a.n_tokens == b.n_tokens, vocab_ok = true;
    int min_in = 1 << 30, max_in = 0;
    for (int i = 0; i < a.n; i++) {
        const dpep_request *r = &a.req[i];
        ranges &= r->input_len >= 25 && r->input_len <= 100 && r->max_new_tokens >= 5 &&
                  r->max_new_tokens <= 20 && r->dp_rank == -1 && r->index == i;
        if (r->input_len < min_in) min_in = r->input_len;
        if (r->input_len > max_in) max_in = r->input_len;
        for (int k = 0; k < r->input_len; k++) vocab_ok &= r->input_ids[k] >= 0 && r->input_ids[k] < 512;
        same &= r->input_len == b.req[i].input_len &&
                memcmp(r->input_ids, b.req[i].input_ids, sizeof(int32_t) * (size_t)r->input_len) == 0;
    }
    EXPECT(ranges, "random lengths in [max(len*ratio,1), len]");
    EXPECT(min_in < 40 && max_in > 85, "random lengths spread (%d..%d)", min_in, max_in);
    EXPECT(vocab_ok, "random tokens inside the vocabulary");
    EXPECT(same, "random workload is deterministic for a seed");
    dpep_workload_free(&b);
    c.runtime.seed = 2;
    EXPECT(dpep_workload_build(&c, 512, 4, &b, &d) == DPEP_OK &&
               memcmp(a.req[0].input_ids, b.req[0].input_ids, sizeof(int32_t) * 5) != 0,
           "another seed, other tokens");
    dpep_workload_free(&a);
    dpep_workload_free(&b);
    dpep_config_free(&c);
}

static void test_shared_prefix(void)
{
    dpep_config c;
    dpep_config_init(&c);
    c.workload.kind = DPEP_WORKLOAD_SHARED_PREFIX;
    c.workload.num_groups = 4;
    c.workload.prompts_per_group = 5;
    c.workload.system_prompt_len = 30;
    c.workload.question_len = 7;
    c.workload.output_len = 9;
    dpep_diag d;
    dpep_diag_init(&d);
    dpep_workload w;
    EXPECT(dpep_workload_build(&c, 300, 2, &w, &d) == DPEP_OK && w.n == 20, "shared_prefix build");
    int seen[4][5] = {{0}};
    bool shared = true, lens = true, shuffled = false;
    for (int i = 0; i < w.n; i++) {
        int g, p;
        EXPECT(sscanf(w.req[i].id, "g%d-p%d", &g, &p) == 2 && g < 4 && p < 5, "id %s", w.req[i].id);
        seen[g][p]++;
        lens &= w.req[i].input_len == 37 && w.req[i].max_new_tokens == 9;
        if (!(g == i / 5 && p == i % 5)) shuffled = true;
        for (int j = 0; j < w.n; j++) {
            int g2, p2;
            sscanf(w.req[j].id, "g%d-p%d", &g2, &p2);
            bool eq = memcmp(w.req[i].input_ids, w.req[j].input_ids, sizeof(int32_t) * 30) == 0;
            if (g2 == g) shared &= eq;
            else shared &= !eq;
        }
    }
    bool once = true;
    for (int g = 0; g < 4; g++)
        for (int p = 0; p < 5; p++) once &= seen[g][p] == 1;
    EXPECT(once, "every (group, prompt) once");
    EXPECT(shared, "prompts of a group share the system prompt, other groups do not");
    EXPECT(lens, "lengths: system + question, output_len");
    EXPECT(shuffled, "requests are shuffled");
    dpep_workload_free(&w);
    dpep_config_free(&c);
}

static void test_file(void)
{
    char path[] = "/tmp/dpep-test-wl-XXXXXX";
    int fd = mkstemp(path);
    const char *text =
        "{\"input_ids\": [1, 2, 3], \"max_new_tokens\": 4, \"id\": \"first\"}\n"
        "\n"
        "{\"input_ids\": [5], \"sampling\": {\"temperature\": 0.7, \"top_k\": 20, \"top_p\": 0.9, \"seed\": 11}, \"data_parallel_rank\": 1}\n"
        "{\"input_ids\": [1, 2, \n"                                   /* 4: bad JSON */
        "{\"max_new_tokens\": 3}\n"                                     /* 5: no input_ids */
        "{\"input_ids\": [1, 999]}\n"                                   /* 6: out of vocab */
        "{\"input_ids\": [1], \"max_new_tokens\": 0}\n"                 /* 7 */
        "{\"input_ids\": [1], \"data_parallel_rank\": 2}\n"             /* 8: dp is 2 */
        "{\"input_ids\": [1], \"temperature\": 1}\n"                    /* 9: unknown key */
        "{\"input_ids\": [1], \"sampling\": {\"top_p\": 0}}\n"          /* 10 */
        "[1, 2]\n"                                                      /* 11 */
        "{\"input_ids\": [7, 8], \"id\": 42}\n"                          /* 12: good */
        "{\"input_ids\": [1], \"text\": \"hi\"}\n";                       /* 13: two inputs */
    if (write(fd, text, strlen(text)) < 0) perror("write");
    if (write(fd, "{\"input_ids\": [1]\0}\n", 20) < 0) perror("write"); /* 14: NUL */
    /* 15: text, but model.path (unset) has no tokenizer */
    const char *t15 = "{\"text\": \"hello\"}\n";
    if (write(fd, t15, strlen(t15)) < 0) perror("write");
    close(fd);
    dpep_config c;
    dpep_diag d;
    dpep_workload w;
    dpep_status st = build_file_workload(path, &c, &w, &d);
    EXPECT(st == DPEP_OK && w.n == 3 && w.bad_lines == 11, "file: 3 good, 11 bad (st %s n %d bad %d)",
           dpep_status_string(st), st == DPEP_OK ? w.n : -1, st == DPEP_OK ? w.bad_lines : -1);
    const char *needles[] = {":4: not valid JSON", ":5: input_ids: missing", ":6: input_ids[1]: out of the vocabulary",
                             ":7: max_new_tokens: expected", ":8: data_parallel_rank: expected an integer from 0 to 1",
                             ":9: temperature: unknown key", ":10: sampling.top_p: expected a number in (0, 1]",
                             ":11: expected a JSON object", ":13: input_ids, text, messages: give only one",
                             ":14: NUL byte", ":15: text: needs the model's tokenizer"};
    for (size_t i = 0; i < sizeof needles / sizeof needles[0]; i++)
        EXPECT(dpep_diag_find(&d, needles[i]), "file message %s", needles[i]);
    if (st == DPEP_OK && w.n == 3) {
        EXPECT(strcmp(w.req[0].id, "first") == 0 && w.req[0].input_len == 3 && w.req[0].max_new_tokens == 4 &&
                   w.req[0].input_ids[2] == 3, "line 1 parsed");
        EXPECT(w.req[1].dp_rank == 1 && fabsf(w.req[1].sampling.temperature - 0.7f) < 1e-6 &&
                   w.req[1].sampling.top_k == 20 && w.req[1].sampling.seed == 11 && w.req[1].max_new_tokens == 32,
               "line 3 parsed (sampling, rank, default max_new_tokens)");
        EXPECT(strcmp(w.req[2].id, "42") == 0 && w.req[2].index == 2 && w.req[2].input_ids[1] == 8, "line 12 parsed");
        dpep_workload_free(&w);
    }
    /* only bad lines: an error */
    fd = open(path, O_WRONLY | O_TRUNC);
    if (write(fd, "nope\n", 5) < 0) perror("write");
    close(fd);
    dpep_diag_init(&d);
    EXPECT(dpep_workload_build(&c, 512, 2, &w, &d) == DPEP_ERR_INVALID &&
               dpep_diag_find(&d, "no valid request (1 line rejected)"), "file with no good line");
    unlink(path);
    dpep_diag_init(&d);
    EXPECT(dpep_workload_build(&c, 512, 2, &w, &d) == DPEP_ERR_INVALID && dpep_diag_find(&d, "cannot open"),
           "missing file");
    dpep_config_free(&c);
}

/* A build that blocks (a FIFO without a writer, /dev/zero read forever)
 * fails the test by alarm instead of hanging it. */
static const char *g_blocked_case;
static void on_alarm(int sig)
{
    (void)sig;
    static const char m[] = "FAIL workload build blocked (timeout alarm): ";
    if (write(1, m, sizeof m - 1) < 0 || write(1, g_blocked_case, strlen(g_blocked_case)) < 0 ||
        write(1, "\n", 1) < 0) {
    }
    _exit(1);
}

/* workload.path naming something that is not a regular file: refused at
 * once with the path, the field and what it is. */
static void test_file_kinds(void)
{
    char dir[] = "/tmp/dpep-test-wlk-XXXXXX";
    if (!mkdtemp(dir)) {
        EXPECT(0, "mkdtemp: %s", dir);
        return;
    }
    char fifo[64];
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    EXPECT(mkfifo(fifo, 0600) == 0, "mkfifo %s", fifo);
    struct sigaction sa = {.sa_handler = on_alarm}, old;
    sigaction(SIGALRM, &sa, &old);
    const struct {
        const char *path, *kind;
    } cases[] = {{fifo, "is a FIFO (named pipe) (expected a regular file)"},
                 {"/dev/zero", "is a character device (expected a regular file)"},
                 {"/dev/urandom", "is a character device (expected a regular file)"},
                 {dir, "is a directory (expected a regular file)"}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        dpep_config c;
        dpep_config_init(&c);
        c.workload.kind = DPEP_WORKLOAD_FILE;
        free(c.workload.path);
        c.workload.path = strdup(cases[i].path);
        dpep_diag d;
        dpep_diag_init(&d);
        dpep_workload w;
        char want[256];
        snprintf(want, sizeof want, "%s: workload.path: %s", cases[i].path, cases[i].kind);
        g_blocked_case = cases[i].path;
        alarm(10);
        dpep_status st = dpep_workload_build(&c, 512, 2, &w, &d);
        alarm(0);
        EXPECT(st == DPEP_ERR_INVALID && dpep_diag_find(&d, want), "%s refused (st %s, message [%s])",
               cases[i].path, dpep_status_string(st), d.n ? d.item[0].msg : "");
        if (st == DPEP_OK) dpep_workload_free(&w);
        dpep_config_free(&c);
    }
    sigaction(SIGALRM, &old, NULL);
    unlink(fifo);
    rmdir(dir);
}

/* Ids: kept whole up to 127 bytes (UTF-8 included), refused beyond by line,
 * unique (explicit ids and the default line-number ids alike). */
static void test_ids(void)
{
    char a127[128], a128[129], b64[65], c127[128], d128[129], p1[101], p2[101];
    memset(a127, 'a', 127), a127[127] = '\0';
    memset(a128, 'a', 128), a128[128] = '\0';
    memset(b64, 'b', 62), strcpy(b64 + 62, "\xc3\xa9");       /* 62 + é: the old cut at 63 */
    memset(c127, 'c', 124), strcpy(c127 + 124, "\xe2\x82\xac"); /* 124 + €: ends at 127 */
    memset(d128, 'd', 126), strcpy(d128 + 126, "\xc3\xa9");     /* 126 + é: 128 bytes */
    memset(p1, 'p', 99), strcpy(p1 + 99, "1");                  /* share 99 bytes */
    memset(p2, 'p', 99), strcpy(p2 + 99, "2");
    char text[4096];
    snprintf(text, sizeof text,
             "{\"input_ids\": [21], \"id\": \"%s\"}\n"                /* 1: ok */
             "{\"input_ids\": [1], \"id\": \"%s\"}\n"                 /* 2: 128 bytes */
             "{\"input_ids\": [23], \"id\": \"%s\"}\n"                /* 3: ok */
             "{\"input_ids\": [24], \"id\": \"%s\"}\n"                /* 4: ok */
             "{\"input_ids\": [1], \"id\": \"%s\"}\n"                 /* 5: 128 bytes */
             "{\"input_ids\": [2, 3], \"id\": \"x\"}\n"               /* 6: ok */
             "{\"input_ids\": [4], \"id\": \"%s\"}\n"                 /* 7: ok */
             "{\"input_ids\": [5, 6, 7], \"id\": \"x\"}\n"            /* 8: x again */
             "{\"input_ids\": [8], \"id\": \"%s\"}\n"                 /* 9: ok */
             "{\"input_ids\": [9]}\n"                                 /* 10: ok, id "10" */
             "{\"input_ids\": [10], \"id\": \"10\"}\n"                /* 11: line 10's id */
             "{\"input_ids\": [11], \"id\": 13}\n"                    /* 12: ok, id "13" */
             "{\"input_ids\": [12]}\n"                                /* 13: id "13" again */
             "{\"input_ids\": [13], \"id\": \"q\\\"uo\\nte\"}\n"      /* 14: ok */
             "{\"input_ids\": [14], \"id\": \"q\\\"uo\\nte\"}\n",     /* 15: 14's id */
             a127, a128, b64, c127, d128, p1, p2);
    char path[] = "/tmp/dpep-test-wlid-XXXXXX";
    int fd = mkstemp(path);
    if (write(fd, text, strlen(text)) < 0) perror("write");
    close(fd);
    dpep_config c;
    dpep_diag d;
    dpep_workload w;
    dpep_status st = build_file_workload(path, &c, &w, &d);
    EXPECT(st == DPEP_OK && w.n == 9 && w.bad_lines == 6, "ids: 9 good, 6 bad (st %s n %d bad %d)",
           dpep_status_string(st), st == DPEP_OK ? w.n : -1, st == DPEP_OK ? w.bad_lines : -1);
    char want[400];
    snprintf(want, sizeof want, "%s:2: id: 128 bytes (expected at most 127)", path);
    EXPECT(dpep_diag_find(&d, want), "message [%s]", want);
    snprintf(want, sizeof want, "%s:5: id: 128 bytes (expected at most 127)", path);
    EXPECT(dpep_diag_find(&d, want), "message [%s]", want);
    snprintf(want, sizeof want, "%s:8: id \"x\": already used on line 6 (ids must be unique)", path);
    EXPECT(dpep_diag_find(&d, want), "message [%s]", want);
    snprintf(want, sizeof want, "%s:11: id \"10\": already used on line 10 (ids must be unique)", path);
    EXPECT(dpep_diag_find(&d, want), "message [%s]", want);
    snprintf(want, sizeof want, "%s:13: id \"13\": already used on line 12 (ids must be unique)", path);
    EXPECT(dpep_diag_find(&d, want), "message [%s]", want);
    snprintf(want, sizeof want, "%s:15: id \"q\\\"uo\\u000ate\": already used on line 14", path);
    EXPECT(dpep_diag_find(&d, want), "message [%s]", want);
    if (st == DPEP_OK) {
        /* the request of a line, found by its first token */
        const dpep_request *by[32] = {0};
        for (int i = 0; i < w.n; i++)
            if (w.req[i].input_ids[0] < 32) by[w.req[i].input_ids[0]] = &w.req[i];
        EXPECT(by[21] && strcmp(by[21]->id, a127) == 0, "127-byte id kept whole (%zu bytes)",
               by[21] ? strlen(by[21]->id) : 0);
        EXPECT(by[23] && strcmp(by[23]->id, b64) == 0,
               "id with a 2-byte character across byte 63 kept whole (%zu bytes)", by[23] ? strlen(by[23]->id) : 0);
        EXPECT(by[24] && strcmp(by[24]->id, c127) == 0,
               "127-byte id ending in a 3-byte character kept whole (%zu bytes)", by[24] ? strlen(by[24]->id) : 0);
        EXPECT(by[4] && by[8] && strcmp(by[4]->id, p1) == 0 && strcmp(by[8]->id, p2) == 0,
               "ids that share a 99-byte prefix stay distinct");
        EXPECT(by[9] && by[11] && by[13] && strcmp(by[9]->id, "10") == 0 && strcmp(by[11]->id, "13") == 0 &&
                   strcmp(by[13]->id, "q\"uo\nte") == 0, "default and integer ids");
        /* a rejected duplicate's tokens are dropped: the next request's follow */
        EXPECT(w.n_tokens == 10 && by[2] && by[2]->input_len == 2 && by[2]->input_ids[1] == 3 && by[8] &&
                   by[8]->input_len == 1 && !by[5] && !by[10] && !by[12] && !by[14],
               "tokens of the good lines only (%zu)", w.n_tokens);
        dpep_workload_free(&w);
    }
    /* many ids, all distinct: none reported (the set grows) */
    fd = open(path, O_WRONLY | O_TRUNC);
    for (int i = 0; i < 5000; i++) {
        char l[64];
        int k = snprintf(l, sizeof l, "{\"input_ids\": [1], \"id\": \"r%d\"}\n", i);
        if (write(fd, l, (size_t)k) < 0) perror("write");
    }
    const char *again = "{\"input_ids\": [1], \"id\": \"r4321\"}\n";
    if (write(fd, again, strlen(again)) < 0) perror("write");
    close(fd);
    dpep_diag_init(&d);
    st = dpep_workload_build(&c, 512, 2, &w, &d);
    snprintf(want, sizeof want, "%s:5001: id \"r4321\": already used on line 4322", path);
    EXPECT(st == DPEP_OK && w.n == 5000 && w.bad_lines == 1 && d.n == 1 && dpep_diag_find(&d, want),
           "5000 distinct ids, then one repeated (n %d, %d messages)", st == DPEP_OK ? w.n : -1, d.n);
    if (st == DPEP_OK) dpep_workload_free(&w);
    unlink(path);
    dpep_config_free(&c);
}

static void test_sched(void)
{
    dpep_dp_load load[4];
    memset(load, 0, sizeof load);
    dpep_request r = {.input_len = 10, .max_new_tokens = 5, .dp_rank = -1};
    int rr = 0, picks[6];
    for (int i = 0; i < 6; i++) picks[i] = dpep_sched_assign(DPEP_LB_ROUND_ROBIN, &r, 4, load, &rr);
    EXPECT(picks[0] == 0 && picks[1] == 1 && picks[3] == 3 && picks[4] == 0 && picks[5] == 1, "round robin");
    EXPECT(load[0].requests == 2 && load[0].tokens == 30 && load[2].requests == 1, "load bookkeeping");
    r.dp_rank = 3;
    EXPECT(dpep_sched_assign(DPEP_LB_SHORTEST_QUEUE, &r, 4, load, &rr) == 3, "explicit rank wins");
    r.dp_rank = -1;
    /* loads now: 2, 2, 1, 2 requests */
    EXPECT(dpep_sched_assign(DPEP_LB_SHORTEST_QUEUE, &r, 4, load, &rr) == 2, "shortest queue");
    memset(load, 0, sizeof load);
    load[0].tokens = 100, load[1].tokens = 50, load[2].tokens = 50, load[3].tokens = 70;
    load[1].requests = 9;
    EXPECT(dpep_sched_assign(DPEP_LB_TOTAL_TOKENS, &r, 4, load, &rr) == 1, "total tokens (tie to the lowest rank)");
    EXPECT(dpep_sched_assign(DPEP_LB_TOTAL_TOKENS, &r, 4, load, &rr) == 2, "total tokens updates load");
}

/* cache_aware: a prompt follows its cached prefix, a new prefix goes to the
 * least loaded group, imbalance overrides affinity, the explicit rank wins
 * (and its group's view learns the prompt), done() returns load. */
static void test_cache_aware(void)
{
    dpep_assigner_params ap = {.method = DPEP_LB_CACHE_AWARE, .groups = 4, .page_size = 4,
                               .cache_tokens = 64, .cache_threshold = 0.3, .balance_abs = 4,
                               .balance_rel = 1.5};
    dpep_assigner *a = NULL;
    EXPECT(dpep_assigner_create(&ap, &a) == DPEP_OK, "assigner create");
    if (!a) return;
    int32_t sysA[24], sysB[24];
    for (int i = 0; i < 24; i++) {
        sysA[i] = 100 + i;
        sysB[i] = 200 + i;
    }
    int32_t qa[24], qb[24];
    memcpy(qa, sysA, sizeof qa);
    memcpy(qb, sysB, sizeof qb);
    dpep_request r = {.input_ids = qa, .input_len = 24, .max_new_tokens = 8, .dp_rank = -1};
    int64_t m = -1;
    int g0 = dpep_assigner_pick(a, &r, &m);
    EXPECT(g0 == 0 && m == 0, "first prompt: least loaded (group 0), nothing cached (%d, %lld)", g0,
           (long long)m);
    qa[23] = 999; /* the same 20-token prefix (5 pages), another question */
    int g1 = dpep_assigner_pick(a, &r, &m);
    EXPECT(g1 == 0 && m == 20, "shared prefix: the group that holds it, 20 tokens matched (%d, %lld)",
           g1, (long long)m);
    r.input_ids = qb;
    int g2 = dpep_assigner_pick(a, &r, &m);
    EXPECT(g2 == 1 && m == 0, "a new prefix: the least loaded group (%d)", g2);
    /* load group 0 up (2 requests): the 4th more with prefix A finds it 5 - 0 > 4 apart */
    r.input_ids = qa;
    int last = -1;
    for (int i = 0; i < 5; i++) last = dpep_assigner_pick(a, &r, &m);
    const dpep_dp_load *ld = dpep_assigner_load(a);
    EXPECT(last != 0 && ld[0].requests == 5, "out of balance: affinity dropped (last pick %d, group 0 has %lld)",
           last, (long long)ld[0].requests);
    r.dp_rank = 3;
    r.input_ids = qb;
    EXPECT(dpep_assigner_pick(a, &r, &m) == 3, "explicit data_parallel_rank wins");
    for (int i = 0; i < 5; i++) dpep_assigner_done(a, 0, 32);
    EXPECT(ld[0].requests == 0 && ld[0].tokens == 0, "done returns the load");
    r.dp_rank = -1;
    qb[23] = 998;
    int g3 = dpep_assigner_pick(a, &r, &m);
    EXPECT((g3 == 1 || g3 == 3) && m == 20, "prefix B: a group that holds it (%d, %lld)", g3, (long long)m);
    dpep_assigner_destroy(a);
    /* the views keep 64 tokens (16 pages) each: new prefixes push A out */
    ap.groups = 2;
    EXPECT(dpep_assigner_create(&ap, &a) == DPEP_OK, "assigner create (2 groups)");
    if (!a) return;
    r.input_ids = qa;
    r.dp_rank = 0;
    dpep_assigner_pick(a, &r, &m);
    int32_t other[24];
    for (int k = 0; k < 8; k++) {
        for (int i = 0; i < 24; i++) other[i] = 1000 + 50 * k + i;
        r.input_ids = other;
        dpep_assigner_pick(a, &r, &m);
    }
    r.dp_rank = -1;
    r.input_ids = qa;
    dpep_assigner_pick(a, &r, &m);
    EXPECT(m == 0, "evicted from the view: prefix A no longer matched (%lld)", (long long)m);
    dpep_assigner_destroy(a);
    dpep_assigner_params bad = ap;
    bad.groups = 0;
    EXPECT(dpep_assigner_create(&bad, &a) == DPEP_ERR_INVALID, "0 groups refused");
}

static void test_sampling(void)
{
    float scratch[64];
    float tie[5] = {1, 3, 3, 2, 0};
    uint64_t rng = dpep_rng_seed(1);
    dpep_sampling greedy = {.temperature = 0, .top_p = 1};
    EXPECT(dpep_sample(tie, 5, &greedy, &rng, scratch) == 1, "greedy: lowest id among equal maxima");
    /* temperature: empirical frequencies match softmax(logits / T) */
    float lg[4] = {0.0f, 1.0f, 2.0f, 0.5f};
    dpep_sampling t = {.temperature = 0.8f, .top_p = 1.0f, .seed = 5};
    rng = dpep_rng_seed(t.seed);
    int cnt[4] = {0};
    const int N = 200000;
    for (int i = 0; i < N; i++) cnt[dpep_sample(lg, 4, &t, &rng, scratch)]++;
    double z = 0, maxdev = 0;
    for (int i = 0; i < 4; i++) z += exp(lg[i] / 0.8);
    for (int i = 0; i < 4; i++) {
        double p = exp(lg[i] / 0.8) / z, sd = sqrt(p * (1 - p) / N);
        maxdev = fmax(maxdev, fabs(cnt[i] / (double)N - p) / sd);
    }
    EXPECT(maxdev < 5.0, "temperature sampling matches softmax (max %.1f sigma)", maxdev);
    /* top-k = 2: only the two largest */
    dpep_sampling k2 = {.temperature = 1.0f, .top_k = 2, .top_p = 1.0f, .seed = 9};
    rng = dpep_rng_seed(9);
    int c2[4] = {0};
    for (int i = 0; i < 20000; i++) c2[dpep_sample(lg, 4, &k2, &rng, scratch)]++;
    EXPECT(c2[0] == 0 && c2[3] == 0 && c2[1] > 0 && c2[2] > 0, "top-k keeps the 2 largest");
    /* top-p: probabilities 0.5, 0.3, 0.15, 0.05; p = 0.7 keeps the first two */
    float lp[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    dpep_sampling tp = {.temperature = 1.0f, .top_p = 0.7f, .seed = 3};
    rng = dpep_rng_seed(3);
    int c3[4] = {0};
    for (int i = 0; i < 20000; i++) c3[dpep_sample(lp, 4, &tp, &rng, scratch)]++;
    EXPECT(c3[0] > 0 && c3[1] > 0 && c3[2] == 0 && c3[3] == 0, "top-p keeps the nucleus (%d %d %d %d)",
           c3[0], c3[1], c3[2], c3[3]);
    EXPECT(fabs(c3[0] / 20000.0 - 0.625) < 0.02, "top-p renormalizes (%.3f)", c3[0] / 20000.0);
    /* min-p = 0.25: keeps 0.5, 0.3, 0.15 (>= 0.125 = 0.25 x 0.5), drops 0.05;
     * renormalized: 0.5 / 0.95 */
    dpep_sampling mp = {.temperature = 1.0f, .top_p = 1.0f, .seed = 4, .min_p = 0.25f};
    rng = dpep_rng_seed(4);
    int c4[4] = {0};
    for (int i = 0; i < 40000; i++) c4[dpep_sample(lp, 4, &mp, &rng, scratch)]++;
    EXPECT(c4[0] > 0 && c4[1] > 0 && c4[2] > 0 && c4[3] == 0, "min-p drops below 0.25 x max (%d %d %d %d)",
           c4[0], c4[1], c4[2], c4[3]);
    EXPECT(fabs(c4[0] / 40000.0 - 0.5 / 0.95) < 0.015, "min-p renormalizes (%.3f)", c4[0] / 40000.0);
    /* min-p after top-p: top-p 0.7 keeps {0.5, 0.3}; min-p 0.7 then keeps 0.5 only */
    dpep_sampling both = {.temperature = 1.0f, .top_p = 0.7f, .seed = 5, .min_p = 0.7f};
    rng = dpep_rng_seed(5);
    int c5[4] = {0};
    for (int i = 0; i < 2000; i++) c5[dpep_sample(lp, 4, &both, &rng, scratch)]++;
    EXPECT(c5[0] == 2000, "min-p 0.7 with top-p 0.7 keeps the top token only (%d)", c5[0]);
    /* same seed, same stream */
    uint64_t a = dpep_rng_seed(77), b = dpep_rng_seed(77);
    bool same = true;
    for (int i = 0; i < 100; i++) same &= dpep_sample(lg, 4, &t, &a, scratch) == dpep_sample(lg, 4, &t, &b, scratch);
    EXPECT(same, "deterministic for a seed");
}

int main(void)
{
    test_random();
    test_shared_prefix();
    test_file();
    test_file_kinds();
    test_ids();
    test_sched();
    test_cache_aware();
    test_sampling();
    return dpep_test_summary();
}
