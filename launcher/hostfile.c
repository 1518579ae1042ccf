/* hostfile.c — Open MPI hostfiles ("host slots=N max_slots=M") and the
 * argument vectors the launcher builds and prints. */
#include "dpep_launcher.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

static bool parse_count(const char *s, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno || v < 1 || v > 1 << 20) return false;
    *out = (int)v;
    return true;
}

dpep_status dpep_hostfile_parse(const char *path, dpep_hostfile *out, dpep_diag *diag)
{
    /* A regular file only: a FIFO would block the launcher in open(). */
    char why[160];
    FILE *f = dpep_fopen_regular(path, 0, why, sizeof why);
    if (!f) {
        static const char co[] = "cannot open: ";
        if (strncmp(why, co, sizeof co - 1) == 0)
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot open the hostfile: %s", path,
                          why + sizeof co - 1);
        else
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: the hostfile %s", path, why);
        return DPEP_ERR_INVALID;
    }
    dpep_hostfile h = {0, calloc(DPEP_HOSTFILE_MAX, sizeof(dpep_host))};
    if (!h.host) {
        fclose(f);
        return DPEP_ERR_NOMEM;
    }
    int before = diag->n_errors, lineno = 0;
    char line[1024];
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char *save = NULL, *tok = strtok_r(line, " \t\r\n", &save);
        if (!tok) continue;
        if (strlen(tok) >= sizeof h.host[0].name) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d: host name too long (expected at most %zu "
                          "characters)", path, lineno, sizeof h.host[0].name - 1);
            continue;
        }
        int slots = 0;
        for (char *kv; (kv = strtok_r(NULL, " \t\r\n", &save));) {
            char *eq = strchr(kv, '=');
            int v;
            if (!eq || !parse_count(eq + 1, &v)) {
                dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d: %s: not KEY=N (expected slots=N or "
                              "max_slots=N with N >= 1)", path, lineno, kv);
                continue;
            }
            *eq = '\0';
            if (strcmp(kv, "slots") == 0 || strcmp(kv, "count") == 0 || strcmp(kv, "cpu") == 0)
                slots = v;
            else if (strcmp(kv, "max_slots") == 0 || strcmp(kv, "max-slots") == 0)
                ; /* an upper bound for oversubscription: not a slot count */
            else
                dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d: unknown key %s (expected slots or "
                              "max_slots)", path, lineno, kv);
        }
        int k;
        for (k = 0; k < h.n; k++)
            if (strcmp(h.host[k].name, tok) == 0) break;
        if (k == h.n) {
            if (h.n == DPEP_HOSTFILE_MAX) {
                dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d: more than %d hosts", path, lineno,
                              DPEP_HOSTFILE_MAX);
                break;
            }
            snprintf(h.host[k].name, sizeof h.host[k].name, "%s", tok);
            h.host[k].line = lineno;
            h.n++;
        }
        /* Open MPI adds up the slots of a host listed twice; a line without
         * slots counts one. */
        h.host[k].slots += slots ? slots : 1;
    }
    fclose(f);
    if (diag->n_errors == before && h.n == 0)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: no hosts in the hostfile (expected lines like "
                      "\"node01 slots=8\")", path);
    if (diag->n_errors > before) {
        free(h.host);
        return DPEP_ERR_INVALID;
    }
    *out = h;
    return DPEP_OK;
}

void dpep_hostfile_free(dpep_hostfile *h)
{
    free(h->host);
    h->host = NULL;
    h->n = 0;
}

/* ---------------------------------------------------------------------- */
/* argument vectors                                                       */
/* ---------------------------------------------------------------------- */
void dpep_argv_init(dpep_argv *a)
{
    a->n = 0;
    a->cap = 0;
    a->v = NULL;
}

void dpep_argv_push(dpep_argv *a, const char *s)
{
    if (a->n + 2 > a->cap) {
        int cap = a->cap ? 2 * a->cap : 32;
        char **v = realloc(a->v, (size_t)cap * sizeof *v);
        if (!v) abort(); /* a few hundred short strings: no recovery worth having */
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n] = strdup(s);
    if (!a->v[a->n]) abort();
    a->n++;
    a->v[a->n] = NULL;
}

void dpep_argv_pushf(dpep_argv *a, const char *fmt, ...)
{
    char buf[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    dpep_argv_push(a, buf);
}

void dpep_argv_free(dpep_argv *a)
{
    for (int i = 0; i < a->n; i++) free(a->v[i]);
    free(a->v);
    dpep_argv_init(a);
}

void dpep_shell_print_word(const char *s, FILE *f)
{
    bool plain = *s != '\0';
    for (const char *p = s; *p; p++)
        if (!isalnum((unsigned char)*p) && !strchr("_@%+=:,./-", *p)) plain = false;
    if (plain) {
        fputs(s, f);
        return;
    }
    fputc('\'', f);
    for (const char *p = s; *p; p++) {
        if (*p == '\'') fputs("'\\''", f);
        else fputc(*p, f);
    }
    fputc('\'', f);
}

void dpep_argv_print_shell(const dpep_argv *a, FILE *f)
{
    for (int i = 0; i < a->n; i++) {
        if (i) fputc(' ', f);
        dpep_shell_print_word(a->v[i], f);
    }
}
