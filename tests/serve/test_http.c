/* test_http.c — the HTTP front of `dpep serve` (runtime/serve/http.c) on
 * loopback, with the real hub and an echo-model serve loop (fake_loop.c)
 * instead of the job, and the real DeepSeek-V3 tokenizer:
 *   1. start/port/stop contracts (port 0, a port in use named, bad host);
 *   2. four servers — "main" (2 ms steps, 2 DP groups), "auth" (api_key),
 *      "slow" (1 request at a time, a queue of 2, 0.1 s steps, a 3 s
 *      request timeout), "fast" (steps without pause: tokens arrive while
 *      the HTTP threads read them) — driven by test_http.py (stdlib HTTP
 *      clients);
 *   3. stops while requests wait (the serve loop's order: hub_shutdown, then
 *      serve_http_stop), with a loop that aborts them and without one: each
 *      waiting client gets a 503 (a stream: an error event), a new request
 *      a 503, and the stop is prompt.
 *   test_http TOKENIZER_DIR TEST_HTTP_PY WORK_DIR
 * Prints "N passed, M failed" (the script prints its own line first). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "dpep_test.h"
#include "fake_loop.h"
#include "http.h"

typedef struct instance {
    serve_hub *hub;
    fake_loop *loop;
    serve_http *http;
    serve_metrics *metrics;
    FILE *events;
} instance;

static serve_http_opts base_opts(const dpep_tokenizer *tok)
{
    return (serve_http_opts){.host = "127.0.0.1", .port = 0, .served_model_name = "dpep-test",
                             .model_path = "/models/test-v3", .model_type = "deepseek_v3",
                             .architecture = "DeepseekV3ForCausalLM", .tp_size = 1, .dp_size = 2,
                             .dp_groups = 2, .vocab = dpep_tok_vocab_size(tok), .context_len = 4096,
                             .default_max_new_tokens = 32, .request_timeout_s = 30,
                             .max_body_bytes = 1 << 20};
}

static bool start(instance *in, const serve_http_opts *o, const dpep_tokenizer *tok,
                  int max_queued, double step_s, int max_running, const char *events)
{
    memset(in, 0, sizeof *in);
    in->events = fopen(events, "w");
    in->metrics = metrics_create(o->served_model_name, o->dp_groups, 2, 4);
    in->hub = in->metrics ? hub_create(max_queued, max_running, in->metrics) : NULL;
    serve_http_opts oo = *o;
    oo.metrics = in->metrics;
    fake_loop_opts lo = {.step_s = step_s, .max_running = max_running,
                         .eos_id = dpep_tok_eos_id(tok), .events = in->events,
                         .dp_groups = o->dp_groups};
    in->loop = in->hub ? fake_loop_start(in->hub, &lo) : NULL;
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_status st = in->loop ? serve_http_start(&oo, in->hub, tok, &in->http, &diag) : DPEP_ERR_NOMEM;
    if (st != DPEP_OK) dpep_diag_print(&diag, stdout);
    return st == DPEP_OK && in->events;
}

/* The serve loop's order: shutdown the hub, stop HTTP, stop the loop. */
static void stop(instance *in)
{
    if (in->hub) hub_shutdown(in->hub);
    serve_http_stop(in->http);
    fake_loop_stop(in->loop);
    hub_destroy(in->hub);
    metrics_destroy(in->metrics);
    if (in->events) fclose(in->events);
}

/* 1. Start/port/stop contracts. */
static void test_contracts(const dpep_tokenizer *tok)
{
    serve_hub *h = hub_create(4, 0, NULL);
    serve_http_opts o = base_opts(tok);
    serve_http *a = NULL, *b = NULL;
    dpep_diag diag;
    dpep_diag_init(&diag);
    EXPECT(serve_http_start(&o, h, tok, &a, &diag) == DPEP_OK, "start on port 0");
    int port = serve_http_port(a);
    EXPECT(port > 0 && port < 65536, "an ephemeral port (%d)", port);
    o.port = port;
    dpep_diag_init(&diag);
    EXPECT(serve_http_start(&o, h, tok, &b, &diag) == DPEP_ERR_IO, "a port in use is an I/O error");
    char want[64];
    snprintf(want, sizeof want, "127.0.0.1:%d", port);
    EXPECT(dpep_diag_find(&diag, want) != NULL, "the error names %s (%s)", want,
           diag.n ? diag.item[0].msg : "no message");
    o.port = 0;
    o.host = "no-such-host.invalid";
    dpep_diag_init(&diag);
    EXPECT(serve_http_start(&o, h, tok, &b, &diag) == DPEP_ERR_IO, "an unknown host is an I/O error");
    EXPECT(dpep_diag_find(&diag, "no-such-host.invalid") != NULL, "the error names the host");
    o.host = "127.0.0.1";
    o.port = 70000;
    dpep_diag_init(&diag);
    EXPECT(serve_http_start(&o, h, tok, &b, &diag) == DPEP_ERR_INVALID, "port 70000 is invalid");
    o.port = 0;
    o.host = "::1";
    dpep_diag_init(&diag);
    if (serve_http_start(&o, h, tok, &b, &diag) == DPEP_OK) { /* no IPv6 here: skipped */
        EXPECT(serve_http_port(b) > 0, "an IPv6 listener has a port");
        serve_http_stop(b);
    }
    serve_http_stop(a);
    serve_http_stop(NULL);
    EXPECT(serve_http_port(NULL) < 0, "no server, no port");
    hub_destroy(h);
}

/* Runs the script; its "N passed, M failed" is added to ours. */
static void run_script(const char *py, const char *work, const int *ports)
{
    char p[4][16];
    for (int i = 0; i < 4; i++) snprintf(p[i], sizeof p[i], "%d", ports[i]);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        execlp("python3", "python3", py, work, p[0], p[1], p[2], p[3], (char *)NULL);
        _exit(127);
    }
    int status = 0;
    EXPECT(pid > 0 && waitpid(pid, &status, 0) == pid, "the script ran");
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "test_http.py passed (status %d)", status);
}

/* A raw request on a new connection to port; returns the socket. */
static int send_req(int port, const char *path, const char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        if (fd >= 0) close(fd);
        return -1;
    }
    char req[1024];
    int n = snprintf(req, sizeof req, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     "application/json\r\nContent-Length: %zu\r\n\r\n%s", path, strlen(body), body);
    if (send(fd, req, (size_t)n, 0) != n) {
        close(fd);
        return -1;
    }
    struct timeval tv = {3, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    return fd;
}

/* Reads what comes within the receive timeout (the answer, or "" on a close). */
static void recv_all(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    ssize_t got;
    buf[0] = 0;
    while (fd >= 0 && n + 1 < cap && (got = recv(fd, buf + n, cap - 1 - n, 0)) > 0) {
        n += (size_t)got;
        buf[n] = 0;
        if (strstr(buf, "\r\n\r\n") && strstr(buf, "}}")) break;
    }
}

static const char *k_long = "{\"input_ids\": [1, 2, 3], \"sampling_params\": {\"max_new_tokens\": "
                            "1000, \"ignore_eos\": true}}";

/* GET path on a new connection; the status line's code, -1 on no answer. */
static int get_status(int port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct timeval tv = {3, 0};
    char buf[512] = {0};
    int code = -1;
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a) == 0) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char req[256];
        int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
        if (send(fd, req, (size_t)n, 0) == n && recv(fd, buf, sizeof buf - 1, 0) > 12)
            code = atoi(buf + 9); /* "HTTP/1.1 NNN" */
    }
    if (fd >= 0) close(fd);
    return code;
}

/* 3a. The serve loop's stop: draining first (hub_stop_accepting: /health and
 * new requests 503, the request in flight goes on), then hub_shutdown (the
 * loop aborts what runs: the waiting client gets 503; a new request 503),
 * then a prompt stop. */
static void test_stop_while_waiting(instance *slow)
{
    int port = serve_http_port(slow->http);
    EXPECT(get_status(port, "/health") == 200, "/health 200 before the stop");
    int fd = send_req(port, "/generate", k_long);
    EXPECT(fd >= 0, "connect");
    usleep(400 * 1000);
    hub_stop_accepting(slow->hub);
    EXPECT(get_status(port, "/health") == 503, "/health 503 while draining");
    char buf[4096];
    int fd2 = send_req(port, "/generate", "{\"text\": \"Hi\"}");
    recv_all(fd2, buf, sizeof buf);
    EXPECT(strstr(buf, " 503 ") && strstr(buf, "shutting down"), "a new request while draining: 503 "
           "(%.120s)", buf);
    if (fd2 >= 0) close(fd2);
    struct timeval tv = {0, 300 * 1000};
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    recv_all(fd, buf, sizeof buf);
    EXPECT(buf[0] == 0, "the request in flight goes on while draining (%.80s)", buf);
    tv.tv_sec = 3;
    tv.tv_usec = 0;
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    hub_shutdown(slow->hub);
    recv_all(fd, buf, sizeof buf);
    EXPECT(strstr(buf, " 503 ") && strstr(buf, "shutting down"),
           "the waiting client got a 503 at shutdown (%.120s)", buf);
    if (fd >= 0) close(fd);
    fd = send_req(port, "/v1/completions", "{\"prompt\": \"Hi\"}");
    recv_all(fd, buf, sizeof buf);
    EXPECT(strstr(buf, " 503 ") && strstr(buf, "shutting down"), "a new request after shutdown: 503 "
           "(%.120s)", buf);
    if (fd >= 0) close(fd);
    double t = dpep_clock_s();
    stop(slow);
    double dt = dpep_clock_s() - t;
    EXPECT(dt < 3.0, "serve_http_stop returned in %.2f s", dt);
}

/* 3b. A job that never answers (no loop): after hub_shutdown hub_wait
 * returns at once, so the waiting threads must not spin, and
 * serve_http_stop must still end them: a 503, an error event. */
static void test_stop_without_loop(const dpep_tokenizer *tok)
{
    instance in = {0};
    in.hub = hub_create(8, 0, NULL);
    serve_http_opts o = base_opts(tok);
    dpep_diag diag;
    dpep_diag_init(&diag);
    EXPECT(serve_http_start(&o, in.hub, tok, &in.http, &diag) == DPEP_OK, "start (no loop)");
    int port = serve_http_port(in.http);
    int fd = send_req(port, "/generate", k_long);
    char body[256];
    snprintf(body, sizeof body, "{\"text\": \"Hi\", \"stream\": true}");
    int fd2 = send_req(port, "/generate", body);
    usleep(300 * 1000);
    hub_shutdown(in.hub);
    usleep(300 * 1000);
    double t = dpep_clock_s();
    serve_http_stop(in.http);
    double dt = dpep_clock_s() - t;
    EXPECT(dt < 3.0, "serve_http_stop with requests the job never ran: %.2f s", dt);
    char buf[4096];
    recv_all(fd, buf, sizeof buf);
    EXPECT(strstr(buf, " 503 ") && strstr(buf, "shutting down"), "the waiting client got a 503 "
           "(%.120s)", buf);
    recv_all(fd2, buf, sizeof buf);
    EXPECT(strstr(buf, " 200 ") && strstr(buf, "data: {\"error\"") && strstr(buf, "shutting down"),
           "the stream ended with an error event (%.300s)", buf);
    if (fd >= 0) close(fd);
    if (fd2 >= 0) close(fd2);
    hub_destroy(in.hub);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: test_http TOKENIZER_DIR TEST_HTTP_PY WORK_DIR\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    dpep_tokenizer *tok = NULL;
    dpep_diag diag;
    dpep_diag_init(&diag);
    if (dpep_tok_load(argv[1], &tok, &diag) != DPEP_OK) {
        dpep_diag_print(&diag, stdout);
        printf("FAIL: cannot load the tokenizer\n");
        return 1;
    }
    test_contracts(tok);
    test_stop_without_loop(tok);
    instance main_, auth, slow, fast;
    serve_http_opts o = base_opts(tok), oa = base_opts(tok), os = base_opts(tok);
    oa.api_key = "sk-test-key";
    os.request_timeout_s = 3.0;
    os.dp_groups = 1;
    char ev[4][1024];
    snprintf(ev[0], sizeof ev[0], "%s/events-main.txt", argv[3]);
    snprintf(ev[1], sizeof ev[1], "%s/events-auth.txt", argv[3]);
    snprintf(ev[2], sizeof ev[2], "%s/events-slow.txt", argv[3]);
    snprintf(ev[3], sizeof ev[3], "%s/events-fast.txt", argv[3]);
    bool ok = start(&main_, &o, tok, 1024, 0.002, 1024, ev[0]) &&
              start(&auth, &oa, tok, 64, 0.001, 64, ev[1]) &&
              start(&slow, &os, tok, 2, 0.1, 1, ev[2]) && start(&fast, &o, tok, 1024, 0, 1024, ev[3]);
    EXPECT(ok, "four servers started");
    if (ok) {
        int ports[4] = {serve_http_port(main_.http), serve_http_port(auth.http),
                        serve_http_port(slow.http), serve_http_port(fast.http)};
        run_script(argv[2], argv[3], ports);
        test_stop_while_waiting(&slow);
        stop(&main_);
        stop(&auth);
        stop(&fast);
    }
    dpep_tok_free(tok);
    return dpep_test_summary();
}
