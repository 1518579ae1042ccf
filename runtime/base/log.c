/* log.c — "[host:rank] LEVEL message" logging, level from DPEP_LOG_LEVEL. */
#include "dpep_base.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static struct {
    bool init;
    dpep_log_level level;
    bool all_ranks;
    int rank;
    char host[64];
} g_log = {.level = DPEP_LOG_INFO, .rank = -1};

static const char *const k_level_name[] = {"ERROR", "WARN", "INFO", "DEBUG", "TRACE"};

static int rank_from_env(void)
{
    static const char *const vars[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK",
                                       "SLURM_PROCID"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) {
            char *end;
            long r = strtol(v, &end, 10);
            if (*end == '\0' && r >= 0 && r < (1L << 30)) return (int)r;
        }
    }
    return 0;
}

void dpep_log_init(void)
{
    const char *lv = getenv("DPEP_LOG_LEVEL");
    g_log.level = DPEP_LOG_INFO;
    if (lv && *lv) {
        bool found = false;
        for (int i = 0; i <= DPEP_LOG_TRACE; i++)
            if (strcasecmp(lv, k_level_name[i]) == 0 ||
                (i == DPEP_LOG_WARN && strcasecmp(lv, "warning") == 0)) {
                g_log.level = (dpep_log_level)i;
                found = true;
            }
        if (!found)
            fprintf(stderr, "dpep: DPEP_LOG_LEVEL=%s is not one of error|warn|info|debug|trace; "
                            "using info\n", lv);
    }
    const char *all = getenv("DPEP_LOG_ALL_RANKS");
    g_log.all_ranks = all && strcmp(all, "0") != 0 && *all;
    if (gethostname(g_log.host, sizeof g_log.host) != 0) strcpy(g_log.host, "?");
    g_log.host[sizeof g_log.host - 1] = '\0';
    char *dot = strchr(g_log.host, '.');
    if (dot) *dot = '\0';
    if (g_log.rank < 0) g_log.rank = rank_from_env();
    g_log.init = true;
}

void dpep_log_set_rank(int rank)
{
    if (!g_log.init) dpep_log_init();
    g_log.rank = rank;
}

int dpep_log_rank(void)
{
    if (!g_log.init) dpep_log_init();
    return g_log.rank;
}

bool dpep_log_enabled(dpep_log_level level)
{
    if (!g_log.init) dpep_log_init();
    if (level > g_log.level) return false;
    if (level >= DPEP_LOG_INFO && !g_log.all_ranks && g_log.rank != 0) return false;
    return true;
}

void dpep_log(dpep_log_level level, const char *fmt, ...)
{
    if (!dpep_log_enabled(level)) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* One write per line so that ranks sharing a terminal do not interleave. */
    fprintf(stderr, "[%s:%d] %s %s\n", g_log.host, g_log.rank, k_level_name[level], msg);
}
