/* test_log.c — the log prefix "[host:rank] LEVEL", DPEP_LOG_LEVEL filtering,
 * rank-0-only info unless DPEP_LOG_ALL_RANKS, and the CHECK family's report
 * "file:line call -> error" with the matching status. */
#include "dpep_config.h"
#include "dpep_test.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


static char g_path[] = "/tmp/dpep-test-log-XXXXXX";
static int g_saved_stderr;

static void capture_begin(void)
{
    fflush(stderr);
    int fd = open(g_path, O_WRONLY | O_TRUNC);
    dup2(fd, 2);
    close(fd);
}

static void capture_end(char *buf, size_t n)
{
    fflush(stderr);
    dup2(g_saved_stderr, 2);
    FILE *f = fopen(g_path, "r");
    size_t len = fread(buf, 1, n - 1, f);
    buf[len] = '\0';
    fclose(f);
}

static dpep_status failing_libc(void)
{
    errno = 0;
    FILE *f = fopen("/nonexistent-dir/x", "r");
    DPEP_CHECK_LIBC(f != NULL, "fopen(/nonexistent-dir/x)");
    fclose(f);
    return DPEP_OK;
}

static dpep_status propagate(void)
{
    DPEP_TRY(failing_libc());
    return DPEP_OK;
}

static dpep_status failing_vendor(void)
{
    DPEP_CHECK_CUDA(2); /* cudaErrorMemoryAllocation's value */
    return DPEP_OK;
}

int main(void)
{
    int fd = mkstemp(g_path);
    close(fd);
    g_saved_stderr = dup(2);
    char host[64], buf[4096], want[256];
    gethostname(host, sizeof host);
    host[sizeof host - 1] = '\0';
    char *dot = strchr(host, '.');
    if (dot) *dot = '\0';

    unsetenv("DPEP_LOG_ALL_RANKS");
    setenv("DPEP_LOG_LEVEL", "info", 1);
    dpep_log_init();
    dpep_log_set_rank(0);
    capture_begin();
    DPEP_INFO("hello %d", 42);
    DPEP_DEBUG("hidden");
    capture_end(buf, sizeof buf);
    snprintf(want, sizeof want, "[%s:0] INFO hello 42\n", host);
    EXPECT(strcmp(buf, want) == 0, "info line: got '%s' want '%s'", buf, want);

    setenv("DPEP_LOG_LEVEL", "DEBUG", 1);
    dpep_log_init();
    capture_begin();
    DPEP_DEBUG("shown");
    capture_end(buf, sizeof buf);
    EXPECT(strstr(buf, "] DEBUG shown") != NULL, "debug at debug level: '%s'", buf);

    setenv("DPEP_LOG_LEVEL", "error", 1);
    dpep_log_init();
    capture_begin();
    DPEP_WARN("not shown");
    DPEP_ERROR("bad %s", "thing");
    capture_end(buf, sizeof buf);
    EXPECT(strstr(buf, "not shown") == NULL && strstr(buf, "] ERROR bad thing"), "error level: '%s'", buf);

    /* rank 3: info hidden, warnings shown; DPEP_LOG_ALL_RANKS shows info */
    setenv("DPEP_LOG_LEVEL", "info", 1);
    dpep_log_init();
    dpep_log_set_rank(3);
    capture_begin();
    DPEP_INFO("rank3 info");
    DPEP_WARN("rank3 warn");
    capture_end(buf, sizeof buf);
    snprintf(want, sizeof want, "[%s:3] WARN rank3 warn", host);
    EXPECT(strstr(buf, "rank3 info") == NULL && strstr(buf, want), "rank 3: '%s'", buf);
    setenv("DPEP_LOG_ALL_RANKS", "1", 1);
    dpep_log_init();
    capture_begin();
    DPEP_INFO("rank3 info");
    capture_end(buf, sizeof buf);
    EXPECT(strstr(buf, "[") && strstr(buf, ":3] INFO rank3 info"), "all ranks: '%s'", buf);
    unsetenv("DPEP_LOG_ALL_RANKS");

    /* bad level: a warning and the default */
    setenv("DPEP_LOG_LEVEL", "loud", 1);
    capture_begin();
    dpep_log_init();
    capture_end(buf, sizeof buf);
    EXPECT(strstr(buf, "DPEP_LOG_LEVEL=loud is not one of") != NULL, "bad level: '%s'", buf);

    /* CHECK family */
    setenv("DPEP_LOG_LEVEL", "info", 1);
    dpep_log_init();
    dpep_log_set_rank(0);
    capture_begin();
    dpep_status st = propagate();
    capture_end(buf, sizeof buf);
    EXPECT(st == DPEP_ERR_IO, "libc check status %s", dpep_status_string(st));
    EXPECT(strstr(buf, "ERROR test_log.c:") && strstr(buf, "fopen(/nonexistent-dir/x) -> No such file or directory"),
           "libc check report: '%s'", buf);
    capture_begin();
    st = failing_vendor();
    capture_end(buf, sizeof buf);
    EXPECT(st == DPEP_ERR_CUDA && strstr(buf, "ERROR test_log.c:") && strstr(buf, " 2 -> "),
           "cuda check: %s '%s'", dpep_status_string(st), buf);

    /* status strings and exit codes */
    EXPECT(dpep_status_exit_code(DPEP_OK) == 0, "exit ok");
    EXPECT(dpep_status_exit_code(DPEP_ERR_INVALID) == 2 && dpep_status_exit_code(DPEP_ERR_USAGE) == 2, "exit 2");
    EXPECT(dpep_status_exit_code(DPEP_ERR_MPI) == 1 && dpep_status_exit_code(DPEP_ERR_TIMEOUT) == 1, "exit 1");
    for (int s = 0; s >= DPEP_ERR_INTERNAL; s--)
        EXPECT(strcmp(dpep_status_string((dpep_status)s), "unknown status") != 0, "string of %d", s);

    unlink(g_path);
    return dpep_test_summary();
}
