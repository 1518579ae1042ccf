/* config.c — the YAML deployment config: loading (libyaml via yaml_doc),
 * typed setters driven by the option table, command-line overrides, the
 * cross-field rules of DESIGN.md, and printing. */
#include "config_internal.h"
#include "yaml_doc.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define MAX_STRING 4096
#define MAX_CONFIGURATIONS 256
#define WORLD_LIMIT (1 << 20)

/* ---------------------------------------------------------------------- */
/* small helpers                                                          */
/* ---------------------------------------------------------------------- */
int dpep_edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64) return 1000;
    int prev[65], cur[65];
    for (size_t j = 0; j <= lb; j++) prev[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int sub = prev[j - 1] + (tolower((unsigned char)a[i - 1]) !=
                                     tolower((unsigned char)b[j - 1]));
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof(int) * (lb + 1));
    }
    return prev[lb];
}

/* Best candidate within a distance that scales with the word's length. */
static const char *closest(const char *word, const char *const *cands, size_t n)
{
    const char *best = NULL;
    int bestd = 1000;
    size_t wl = strlen(word);
    int limit = wl <= 3 ? 1 : wl <= 6 ? 2 : 3;
    for (size_t i = 0; i < n; i++) {
        if (!cands[i]) continue;
        int d = dpep_edit_distance(word, cands[i]);
        if (d < bestd) {
            bestd = d;
            best = cands[i];
        }
    }
    return bestd <= limit ? best : NULL;
}

/* Quotes a user-supplied text for a message: printable ASCII kept, the rest
 * escaped, long texts cut. */
static const char *show(const char *s, size_t len, char *buf, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 5 < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o + 8 >= n) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') buf[o++] = (char)c;
        else o += (size_t)snprintf(buf + o, n - o, "\\x%02x", c);
    }
    buf[o] = '\0';
    return buf;
}

static void *opt_ptr(dpep_config *cfg, const dpep_option *o)
{
    return (char *)cfg + o->offset;
}
static const void *opt_cptr(const dpep_config *cfg, const dpep_option *o)
{
    return (const char *)cfg + o->offset;
}

static void kv_clear(dpep_kv_map *m)
{
    for (int i = 0; i < m->n; i++) {
        free(m->key[i]);
        free(m->value[i]);
    }
    m->n = 0;
}

static const char *type_name(const dpep_option *o)
{
    switch (o->type) {
    case DPEP_OPT_INT: return "an integer";
    case DPEP_OPT_FLOAT: return "a number";
    case DPEP_OPT_BOOL: return "true or false";
    case DPEP_OPT_ENUM: return "one of the listed names";
    case DPEP_OPT_STRING: return "a string";
    case DPEP_OPT_MAP: return "a mapping of names to values";
    }
    return "?";
}

static void enum_list(const dpep_option *o, char *buf, size_t n)
{
    size_t off = 0;
    buf[0] = '\0';
    for (int i = 0; o->values[i] && off < n; i++)
        off += (size_t)snprintf(buf + off, n - off, "%s%s", i ? "|" : "", o->values[i]);
}

/* Formats a number the way a user would write it in YAML. */
static void fmt_num(double v, char *buf, size_t n)
{
    if (v == floor(v) && fabs(v) < 1e15) snprintf(buf, n, "%.0f", v);
    else snprintf(buf, n, "%g", v);
}

/* ---------------------------------------------------------------------- */
/* typed setter: the one place values are parsed and checked              */
/* ---------------------------------------------------------------------- */
typedef struct value_src {
    const char *text;
    size_t len;
    bool quoted;
    bool is_null;
    bool in_file;   /* from the YAML file: relative paths resolve against it */
} value_src;

/* One setter per option type. Each gets the option, the value, the message
 * prefix `where` and the value already quoted for messages (`shown`); each
 * either stores the parsed value and returns DPEP_OK or adds exactly one
 * error and returns DPEP_ERR_INVALID (DPEP_ERR_NOMEM for a failed copy). */

/* Decimal integers only: a quoted value, a fraction or an exponent is named
 * as such; then the range and the power-of-two rule. */
static dpep_status set_int(dpep_config *cfg, const dpep_option *o, const value_src *v,
                           const char *where, const char *shown, dpep_diag *diag)
{
    char lim1[32], lim2[32];
    if (v->quoted) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: got the string \"%s\" (expected an "
                      "integer; remove the quotes)", where, o->section, o->key, shown);
        return DPEP_ERR_INVALID;
    }
    const char *s = v->text;
    size_t k = (*s == '-' || *s == '+') ? 1 : 0;
    bool digits = v->len > k;
    for (size_t j = k; j < v->len; j++)
        if (!isdigit((unsigned char)s[j])) digits = false;
    if (!digits) {
        char *end;
        errno = 0;
        double d = strtod(s, &end);
        if (*end == '\0' && end != s && isfinite(d))
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: got the number %s (expected an "
                          "integer)", where, o->section, o->key, shown);
        else
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: got \"%s\" (expected an "
                          "integer)", where, o->section, o->key, shown);
        return DPEP_ERR_INVALID;
    }
    errno = 0;
    long long x = strtoll(s, NULL, 10);
    fmt_num(o->min, lim1, sizeof lim1);
    fmt_num(o->max, lim2, sizeof lim2);
    if (errno == ERANGE || (double)x < o->min || (double)x > o->max) {
        if (o->min == o->max)
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: got %s (expected %s%s)", where,
                          o->section, o->key, shown, lim1,
                          (o->flags & DPEP_OPT_NULLABLE) ? " or null" : "");
        else
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: %s is out of range (expected an "
                          "integer from %s to %s)", where, o->section, o->key, shown, lim1,
                          lim2);
        return DPEP_ERR_INVALID;
    }
    if ((o->flags & DPEP_OPT_POW2) && (x & (x - 1)) != 0) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: %lld is not a power of two "
                      "(expected 1, 2, 4, … %s)", where, o->section, o->key, x, lim2);
        return DPEP_ERR_INVALID;
    }
    *(int64_t *)opt_ptr(cfg, o) = (int64_t)x;
    return DPEP_OK;
}

/* Plain decimal numbers within [min, max] (or (min, max] with MIN_EXCL). */
static dpep_status set_float(dpep_config *cfg, const dpep_option *o, const value_src *v,
                             const char *where, const char *shown, dpep_diag *diag)
{
    char lim1[32], lim2[32];
    char *end;
    errno = 0;
    double d = v->len ? strtod(v->text, &end) : 0;
    bool ok = !v->quoted && v->len && *end == '\0' && errno != ERANGE && isfinite(d);
    /* strtod also reads hex floats and "infinity": insist on decimal. */
    for (size_t j = 0; ok && j < v->len; j++)
        if (!strchr("0123456789+-.eE", v->text[j])) ok = false;
    if (!ok) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: got %s%s%s (expected a number)",
                      where, o->section, o->key, v->quoted ? "the string \"" : "\"", shown,
                      "\"");
        return DPEP_ERR_INVALID;
    }
    bool excl = (o->flags & DPEP_OPT_MIN_EXCL) != 0;
    if ((excl ? d <= o->min : d < o->min) || d > o->max) {
        fmt_num(o->min, lim1, sizeof lim1);
        fmt_num(o->max, lim2, sizeof lim2);
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: %s is out of range (expected a "
                      "number in %s%s, %s])", where, o->section, o->key, shown,
                      excl ? "(" : "[", lim1, lim2);
        return DPEP_ERR_INVALID;
    }
    *(double *)opt_ptr(cfg, o) = d;
    return DPEP_OK;
}

/* YAML 1.1 booleans, any case, unquoted only. */
static dpep_status set_bool(dpep_config *cfg, const dpep_option *o, const value_src *v,
                            const char *where, const char *shown, dpep_diag *diag)
{
    static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no",
                                                                             "off"};
    if (!v->quoted)
        for (int j = 0; j < 3; j++) {
            if (strcasecmp(v->text, yes[j]) == 0) {
                *(bool *)opt_ptr(cfg, o) = true;
                return DPEP_OK;
            }
            if (strcasecmp(v->text, no[j]) == 0) {
                *(bool *)opt_ptr(cfg, o) = false;
                return DPEP_OK;
            }
        }
    dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: got %s\"%s\" (expected true or false)",
                  where, o->section, o->key, v->quoted ? "the string " : "", shown);
    return DPEP_ERR_INVALID;
}

/* A listed name or alias, case-insensitive with '-' read as '_'; stores the
 * index into o->values. Unknown names get the list and a near miss. */
static dpep_status set_enum(dpep_config *cfg, const dpep_option *o, const value_src *v,
                            const char *where, const char *shown, dpep_diag *diag)
{
    char norm[64];
    size_t n = v->len < sizeof norm - 1 ? v->len : sizeof norm - 1;
    for (size_t j = 0; j < n; j++)
        norm[j] = v->text[j] == '-' ? '_' : (char)tolower((unsigned char)v->text[j]);
    norm[n] = '\0';
    if (v->len < sizeof norm) {
        for (int j = 0; o->values[j]; j++)
            if (strcmp(norm, o->values[j]) == 0) {
                *(int *)opt_ptr(cfg, o) = j;
                return DPEP_OK;
            }
        for (int j = 0; o->aliases && o->aliases[j]; j++) {
            const char *eq = strchr(o->aliases[j], '=');
            if (strlen(norm) == (size_t)(eq - o->aliases[j]) &&
                strncmp(norm, o->aliases[j], (size_t)(eq - o->aliases[j])) == 0)
                for (int m = 0; o->values[m]; m++)
                    if (strcmp(eq + 1, o->values[m]) == 0) {
                        *(int *)opt_ptr(cfg, o) = m;
                        return DPEP_OK;
                    }
        }
    }
    char list[256];
    enum_list(o, list, sizeof list);
    size_t nv = 0;
    while (o->values[nv]) nv++;
    const char *near = closest(norm, (const char *const *)o->values, nv);
    dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: unknown value \"%s\" (expected %s)%s%s%s",
                  where, o->section, o->key, shown, list, near ? "; did you mean " : "",
                  near ? near : "", near ? "?" : "");
    return DPEP_ERR_INVALID;
}

/* Replaces the owned string; null stores "". A relative PATH option read
 * from a YAML file is made relative to that file's directory. */
static dpep_status set_string(dpep_config *cfg, const dpep_option *o, const value_src *v,
                              const char *where, dpep_diag *diag)
{
    if (v->len > MAX_STRING) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: string of %zu bytes (expected at "
                      "most %d)", where, o->section, o->key, v->len, MAX_STRING);
        return DPEP_ERR_INVALID;
    }
    const char *text = v->is_null ? "" : v->text;
    size_t len = v->is_null ? 0 : v->len;
    char *dup;
    /* Paths in a YAML file are relative to that file's directory. */
    const char *slash = strrchr(cfg->source, '/');
    if ((o->flags & DPEP_OPT_PATH) && v->in_file && len && text[0] != '/' && slash) {
        size_t dl = (size_t)(slash - cfg->source);
        dup = malloc(dl + 1 + len + 1);
        if (dup) {
            memcpy(dup, cfg->source, dl);
            dup[dl] = '/';
            memcpy(dup + dl + 1, text, len + 1);
        }
    } else {
        dup = strdup(text);
    }
    if (!dup) return DPEP_ERR_NOMEM;
    char **slot = (char **)opt_ptr(cfg, o);
    free(*slot);
    *slot = dup;
    return DPEP_OK;
}

/* Writes option `i` from text; `where` prefixes messages ("f.yaml:3:5" or
 * "command line --tp"). The origin is recorded by the caller on success.
 * The checks common to every type come first (NUL bytes, null), then the
 * type's setter. */
static dpep_status opt_set(dpep_config *cfg, int i, const value_src *v, const char *where,
                           dpep_diag *diag)
{
    const dpep_option *o = dpep_config_option((size_t)i);
    char shown[96];
    show(v->text, v->len, shown, sizeof shown);
    if (strlen(v->text) != v->len) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: value contains a NUL character "
                      "(expected %s)", where, o->section, o->key, type_name(o));
        return DPEP_ERR_INVALID;
    }
    if (v->is_null && o->type != DPEP_OPT_STRING && o->type != DPEP_OPT_MAP) {
        if (o->flags & DPEP_OPT_NULLABLE) {
            *(int64_t *)opt_ptr(cfg, o) = 0;
            return DPEP_OK;
        }
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: value is missing or null (expected %s)",
                      where, o->section, o->key, type_name(o));
        return DPEP_ERR_INVALID;
    }
    switch (o->type) {
    case DPEP_OPT_INT: return set_int(cfg, o, v, where, shown, diag);
    case DPEP_OPT_FLOAT: return set_float(cfg, o, v, where, shown, diag);
    case DPEP_OPT_BOOL: return set_bool(cfg, o, v, where, shown, diag);
    case DPEP_OPT_ENUM: return set_enum(cfg, o, v, where, shown, diag);
    case DPEP_OPT_STRING: return set_string(cfg, o, v, where, diag);
    case DPEP_OPT_MAP:
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: got %s (expected a mapping; on the "
                      "command line use --set %s.%s.NAME=VALUE)", where, o->section, o->key,
                      v->is_null ? "null" : "a scalar", o->section, o->key);
        return DPEP_ERR_INVALID;
    }
    return DPEP_ERR_INTERNAL;
}

/* Checks and stores one map entry (launch.mca / launch.env). */
static dpep_status map_put(dpep_config *cfg, int i, const char *key, size_t klen,
                           const char *val, size_t vlen, const char *where, bool replace,
                           dpep_diag *diag)
{
    const dpep_option *o = dpep_config_option((size_t)i);
    dpep_kv_map *m = opt_ptr(cfg, o);
    char shown[96];
    bool env = strcmp(o->key, "env") == 0;
    bool ok = klen > 0 && klen <= 128 && strlen(key) == klen;
    for (size_t j = 0; ok && j < klen; j++) {
        unsigned char c = (unsigned char)key[j];
        ok = isalnum(c) || c == '_' || (!env && (c == '.' || c == '-'));
    }
    if (ok && env && isdigit((unsigned char)key[0])) ok = false;
    if (!ok) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: bad name \"%s\" (expected %s)", where,
                      o->section, o->key, show(key, klen, shown, sizeof shown),
                      env ? "an environment variable name: letters, digits, _"
                          : "an MCA parameter name: letters, digits, _ . -");
        return DPEP_ERR_INVALID;
    }
    if (vlen > MAX_STRING || strlen(val) != vlen || memchr(val, '\n', vlen)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s.%s: bad value (expected one line of at "
                      "most %d bytes)", where, o->section, o->key, key, MAX_STRING);
        return DPEP_ERR_INVALID;
    }
    for (int j = 0; j < m->n; j++)
        if (strcmp(m->key[j], key) == 0) {
            if (!replace) {
                dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s.%s: duplicate key (expected "
                              "each name once)", where, o->section, o->key, key);
                return DPEP_ERR_INVALID;
            }
            char *nv = strdup(val);
            if (!nv) return DPEP_ERR_NOMEM;
            free(m->value[j]);
            m->value[j] = nv;
            return DPEP_OK;
        }
    if (m->n >= DPEP_KV_MAX) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s.%s: more than %d entries (expected at most "
                      "%d)", where, o->section, o->key, DPEP_KV_MAX, DPEP_KV_MAX);
        return DPEP_ERR_INVALID;
    }
    char *k = strdup(key), *v = strdup(val);
    if (!k || !v) {
        free(k);
        free(v);
        return DPEP_ERR_NOMEM;
    }
    m->key[m->n] = k;
    m->value[m->n] = v;
    m->n++;
    return DPEP_OK;
}

/* ---------------------------------------------------------------------- */
/* init / free                                                            */
/* ---------------------------------------------------------------------- */
dpep_status dpep_config_init(dpep_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    size_t n = dpep_config_option_count();
    cfg->origin = calloc(n, sizeof *cfg->origin);
    if (!cfg->origin) return DPEP_ERR_NOMEM;
    dpep_diag diag;
    dpep_diag_init(&diag);
    for (size_t i = 0; i < n; i++) {
        const dpep_option *o = dpep_config_option(i);
        if (o->type == DPEP_OPT_MAP) continue;
        value_src v = {o->def, strlen(o->def), false, strcmp(o->def, "null") == 0, false};
        if (strcmp(o->def, "\"\"") == 0) {
            v.text = "";
            v.len = 0;
            v.quoted = true;
        }
        dpep_status st = opt_set(cfg, (int)i, &v, "default", &diag);
        if (st != DPEP_OK) {
            /* A default the table itself rejects is a bug in the table. */
            dpep_diag_print(&diag, stderr);
            dpep_config_free(cfg);
            return DPEP_ERR_INTERNAL;
        }
    }
    return DPEP_OK;
}

void dpep_config_free(dpep_config *cfg)
{
    free(cfg->model.path);
    free(cfg->launch.hostfile);
    free(cfg->workload.path);
    free(cfg->server.host);
    free(cfg->server.api_key);
    free(cfg->server.served_model_name);
    kv_clear(&cfg->launch.mca);
    kv_clear(&cfg->launch.env);
    free(cfg->origin);
    memset(cfg, 0, sizeof *cfg);
}

/* ---------------------------------------------------------------------- */
/* loading                                                                */
/* ---------------------------------------------------------------------- */
/* Keys allowed at the top level as the seeds' flat shorthand for parallel.* */
static const char *const k_flat[] = {"tp", "dp", "ep", "enable_dp_attention",
                                     "moe_a2a_backend", "moe_a2a_transport",
                                     "moe_dense_tp_size", NULL};

typedef struct loader {
    dpep_config *cfg;
    const ydoc *doc;
    const char *name;
    dpep_diag *diag;
    dpep_status st;     /* first fatal status (NOMEM / INTERNAL), else OK */
    int *set_line;      /* per option: line where this file set it, 0 if not */
    int *set_col;
} loader;

static bool too_many(const loader *L)
{
    return L->diag->n_errors >= DPEP_DIAG_MAX || L->st != DPEP_OK;
}

/* Reports a second occurrence of a key in one mapping. Returns true if dup. */
static bool check_dup(loader *L, const ydoc_node *map, const ydoc_node *key, const char *ctx)
{
    for (int k = map->first; k >= 0; k = L->doc->node[L->doc->node[k].next].next) {
        const ydoc_node *kn = &L->doc->node[k];
        if (kn == key) break;
        if (kn->kind == YDOC_SCALAR && kn->len == key->len &&
            memcmp(kn->text, key->text, key->len) == 0) {
            char shown[96];
            dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s:%d:%d: %s%s%s: duplicate key (first at "
                          "line %d; expected each key once)", L->name, key->line, key->col,
                          ctx ? ctx : "", ctx ? "." : "", show(key->text, key->len, shown,
                                                               sizeof shown), kn->line);
            return true;
        }
    }
    return false;
}

static bool key_ok(loader *L, const ydoc_node *key, const char *ctx)
{
    if (key->kind != YDOC_SCALAR || strlen(key->text) != key->len || key->len == 0 ||
        key->len > 128) {
        dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s:%d:%d: %s: a key that is %s (expected a "
                      "short plain name)", L->name, key->line, key->col, ctx ? ctx : "top level",
                      key->kind == YDOC_SCALAR ? "empty, too long or holds a NUL"
                                               : ydoc_kind_name(key));
        return false;
    }
    return true;
}

/* Sets option i from a YAML value node; key gives the position. */
static void set_from_node(loader *L, int i, const ydoc_node *key, const ydoc_node *val,
                          bool allow_override)
{
    const dpep_option *o = dpep_config_option((size_t)i);
    char where[4200];
    snprintf(where, sizeof where, "%s:%d:%d", L->name, key->line, key->col);
    if (!allow_override && L->set_line[i]) {
        dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s: %s.%s: set twice (first at line %d:%d; "
                      "expected one value)", where, o->section, o->key, L->set_line[i],
                      L->set_col[i]);
        return;
    }
    dpep_status st = DPEP_OK;
    if (o->type == DPEP_OPT_MAP) {
        if (val->kind == YDOC_SEQ || (val->kind == YDOC_SCALAR && !ydoc_is_null(val))) {
            dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s: %s.%s: got %s (expected a mapping of "
                          "names to values)", where, o->section, o->key, ydoc_kind_name(val));
            return;
        }
        dpep_kv_map *m = opt_ptr(L->cfg, o);
        kv_clear(m);
        for (int k = val->kind == YDOC_MAP ? val->first : -1; k >= 0 && !too_many(L);
             k = L->doc->node[L->doc->node[k].next].next) {
            const ydoc_node *kn = &L->doc->node[k], *vn = &L->doc->node[kn->next];
            char ctx[64];
            snprintf(ctx, sizeof ctx, "%s.%s", o->section, o->key);
            if (!key_ok(L, kn, ctx)) continue;
            char kw[4200];
            snprintf(kw, sizeof kw, "%s:%d:%d", L->name, kn->line, kn->col);
            if (vn->kind != YDOC_SCALAR) {
                dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s: %s.%s: got %s (expected a "
                              "scalar value)", kw, ctx, kn->text, ydoc_kind_name(vn));
                continue;
            }
            const char *vt = ydoc_is_null(vn) ? "" : vn->text;
            size_t vl = ydoc_is_null(vn) ? 0 : vn->len;
            st = map_put(L->cfg, i, kn->text, kn->len, vt, vl, kw, false, L->diag);
            if (st == DPEP_ERR_NOMEM) L->st = st;
        }
    } else if (val->kind != YDOC_SCALAR) {
        dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s: %s.%s: got %s (expected %s)", where,
                      o->section, o->key, ydoc_kind_name(val), type_name(o));
        return;
    } else {
        value_src v = {val->text, val->len, val->quoted, ydoc_is_null(val), true};
        st = opt_set(L->cfg, i, &v, where, L->diag);
        if (st == DPEP_ERR_NOMEM || st == DPEP_ERR_INTERNAL) L->st = st;
    }
    if (st == DPEP_OK) {
        L->set_line[i] = key->line;
        L->set_col[i] = key->col;
        dpep_origin *og = &L->cfg->origin[i];
        og->kind = DPEP_ORIGIN_FILE;
        og->line = key->line;
        og->col = key->col;
    }
}

/* Collects the option keys of a section into `out` for did-you-mean. */
static size_t section_keys(const char *section, const char **out, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < dpep_config_option_count() && n < cap; i++)
        if (strcmp(dpep_config_option(i)->section, section) == 0)
            out[n++] = dpep_config_option(i)->key;
    return n;
}

/* Section of an option key, or NULL (for "it belongs under X" hints). */
static const char *section_of_key(const char *key)
{
    for (size_t i = 0; i < dpep_config_option_count(); i++)
        if (strcmp(dpep_config_option(i)->key, key) == 0) return dpep_config_option(i)->section;
    return NULL;
}

static void unknown_key(loader *L, const ydoc_node *key, const char *section,
                        const char **cands, size_t ncand)
{
    char shown[96];
    show(key->text, key->len, shown, sizeof shown);
    const char *near = closest(key->text, cands, ncand);
    const char *home = section_of_key(key->text);
    char hint[160] = "";
    if (near) snprintf(hint, sizeof hint, "; did you mean %s%s%s?", section ? section : "",
                       section ? "." : "", near);
    else if (home && (!section || strcmp(home, section) != 0))
        snprintf(hint, sizeof hint, "; %s belongs under %s:", shown, home);
    char list[512] = "";
    size_t off = 0;
    for (size_t j = 0; j < ncand && off < sizeof list; j++)
        off += (size_t)snprintf(list + off, sizeof list - off, "%s%s", j ? ", " : "", cands[j]);
    dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s:%d:%d: %s%s%s: unknown key (expected one of: "
                  "%s)%s", L->name, key->line, key->col, section ? section : "",
                  section ? "." : "", shown, list, hint);
}

static void load_section(loader *L, const char *section, const ydoc_node *sec)
{
    if (ydoc_is_null(sec)) return; /* "runtime:" with nothing under it */
    if (sec->kind != YDOC_MAP) {
        dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s:%d:%d: %s: got %s (expected a mapping of "
                      "%s options)", L->name, sec->line, sec->col, section, ydoc_kind_name(sec),
                      section);
        return;
    }
    const char *cands[64];
    size_t ncand = section_keys(section, cands, 64);
    for (int k = sec->first; k >= 0 && !too_many(L);
         k = L->doc->node[L->doc->node[k].next].next) {
        const ydoc_node *key = &L->doc->node[k], *val = &L->doc->node[key->next];
        if (!key_ok(L, key, section)) continue;
        if (check_dup(L, sec, key, section)) continue;
        char dotted[200];
        snprintf(dotted, sizeof dotted, "%s.%s", section, key->text);
        int i = dpep_config_option_find(dotted);
        if (i < 0) {
            unknown_key(L, key, section, cands, ncand);
            continue;
        }
        set_from_node(L, i, key, val, false);
    }
}

/* Cookbook entries: {name, optimization, tp, dp, ep, enable_dp_attention, …}. */
static const char *const k_entry_keys[] = {"name", "optimization", "tp", "dp", "ep",
                                           "enable_dp_attention", "moe_a2a_backend",
                                           "moe_dense_tp_size", NULL};

static void load_configurations(loader *L, const ydoc_node *key, const ydoc_node *list,
                                const char *want)
{
    if (list->kind != YDOC_SEQ) {
        dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s:%d:%d: configurations: got %s (expected a "
                      "list of {name, optimization, tp, dp, ep, enable_dp_attention})", L->name,
                      list->line, list->col, ydoc_kind_name(list));
        return;
    }
    if (list->n_children > MAX_CONFIGURATIONS) {
        dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s:%d:%d: configurations: %d entries (expected "
                      "at most %d)", L->name, list->line, list->col, list->n_children,
                      MAX_CONFIGURATIONS);
        return;
    }
    const ydoc_node *chosen = NULL;
    char names[2048] = "";
    size_t noff = 0;
    int n_named = 0;
    for (int e = list->first; e >= 0 && !too_many(L); e = L->doc->node[e].next) {
        const ydoc_node *ent = &L->doc->node[e];
        if (ent->kind != YDOC_MAP) {
            dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s:%d:%d: configurations: entry is %s "
                          "(expected a mapping with a name)", L->name, ent->line, ent->col,
                          ydoc_kind_name(ent));
            continue;
        }
        const ydoc_node *name = NULL;
        /* Type-check every entry on a scratch config, chosen or not. */
        dpep_config scratch;
        if (dpep_config_init(&scratch) != DPEP_OK) {
            L->st = DPEP_ERR_NOMEM;
            return;
        }
        memcpy(scratch.source, L->cfg->source, sizeof scratch.source);
        size_t nopt = dpep_config_option_count();
        loader S = *L;
        S.cfg = &scratch;
        S.set_line = calloc(nopt, sizeof(int));
        S.set_col = calloc(nopt, sizeof(int));
        if (!S.set_line || !S.set_col) {
            free(S.set_line);
            free(S.set_col);
            dpep_config_free(&scratch);
            L->st = DPEP_ERR_NOMEM;
            return;
        }
        for (int k = ent->first; k >= 0 && !too_many(L);
             k = L->doc->node[L->doc->node[k].next].next) {
            const ydoc_node *kn = &L->doc->node[k], *vn = &L->doc->node[kn->next];
            if (!key_ok(L, kn, "configurations")) continue;
            if (check_dup(L, ent, kn, "configurations")) continue;
            if (strcmp(kn->text, "name") == 0 || strcmp(kn->text, "optimization") == 0) {
                if (vn->kind != YDOC_SCALAR || ydoc_is_null(vn) || vn->len > 100 ||
                    strlen(vn->text) != vn->len) {
                    dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s:%d:%d: configurations.%s: got "
                                  "%s (expected a short string)", L->name, kn->line, kn->col,
                                  kn->text, ydoc_kind_name(vn));
                    continue;
                }
                if (kn->text[0] == 'n') name = vn;
                continue;
            }
            char dotted[200];
            snprintf(dotted, sizeof dotted, "parallel.%s", kn->text);
            int i = dpep_config_option_find(dotted);
            bool allowed = false;
            for (int j = 0; k_entry_keys[j]; j++)
                if (strcmp(kn->text, k_entry_keys[j]) == 0) allowed = true;
            if (i < 0 || !allowed) {
                unknown_key(L, kn, "configurations", (const char **)k_entry_keys, 8);
                continue;
            }
            set_from_node(&S, i, kn, vn, false);
        }
        free(S.set_line);
        free(S.set_col);
        if (S.st != DPEP_OK) L->st = S.st;
        dpep_config_free(&scratch);
        if (!name) {
            dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s:%d:%d: configurations: entry has no "
                          "name (expected name: TEXT)", L->name, ent->line, ent->col);
            continue;
        }
        /* Names must be unique. */
        for (int p = list->first; p != e; p = L->doc->node[p].next) {
            const ydoc_node *pe = &L->doc->node[p];
            if (pe->kind != YDOC_MAP) continue;
            for (int k = pe->first; k >= 0; k = L->doc->node[L->doc->node[k].next].next) {
                const ydoc_node *kn = &L->doc->node[k], *vn = &L->doc->node[kn->next];
                if (kn->kind == YDOC_SCALAR && strcmp(kn->text, "name") == 0 &&
                    vn->kind == YDOC_SCALAR && strcmp(vn->text, name->text) == 0)
                    dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s:%d:%d: configurations.name: "
                                  "\"%s\" is used twice (first at line %d; expected unique "
                                  "names)", L->name, name->line, name->col, name->text,
                                  vn->line);
            }
        }
        n_named++;
        if (noff < sizeof names)
            noff += (size_t)snprintf(names + noff, sizeof names - noff, "%s%s",
                                     noff ? ", " : "", name->text);
        if ((want && strcmp(want, name->text) == 0) || (!want && list->n_children == 1))
            chosen = ent;
    }
    if (too_many(L) || L->diag->n_errors) return;
    if (!chosen) {
        if (want)
            dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s:%d:%d: configurations: no entry named "
                          "\"%s\" (available: %s)", L->name, key->line, key->col, want, names);
        else
            dpep_diag_add(L->diag, DPEP_DIAG_ERROR, "%s:%d:%d: configurations: %d entries and "
                          "none chosen (expected --configuration NAME; available: %s)", L->name,
                          key->line, key->col, n_named, names);
        return;
    }
    for (int k = chosen->first; k >= 0; k = L->doc->node[L->doc->node[k].next].next) {
        const ydoc_node *kn = &L->doc->node[k], *vn = &L->doc->node[kn->next];
        if (strcmp(kn->text, "name") == 0) {
            snprintf(L->cfg->configuration, sizeof L->cfg->configuration, "%s", vn->text);
            continue;
        }
        if (strcmp(kn->text, "optimization") == 0) continue;
        char dotted[200];
        snprintf(dotted, sizeof dotted, "parallel.%s", kn->text);
        set_from_node(L, dpep_config_option_find(dotted), kn, vn, true);
    }
}

dpep_status dpep_config_load_buffer(dpep_config *cfg, const char *buf, size_t len,
                                    const char *name, const char *configuration,
                                    dpep_diag *diag)
{
    snprintf(cfg->source, sizeof cfg->source, "%s", name);
    ydoc doc;
    int errors_before = diag->n_errors;
    dpep_status st = ydoc_parse(&doc, buf, len, name, diag);
    if (st != DPEP_OK) return st;
    size_t nopt = dpep_config_option_count();
    int *set_line = calloc(nopt, sizeof(int)), *set_col = calloc(nopt, sizeof(int));
    if (!set_line || !set_col) {
        free(set_line);
        free(set_col);
        ydoc_free(&doc);
        return DPEP_ERR_NOMEM;
    }
    loader L = {cfg, &doc, name, diag, DPEP_OK, set_line, set_col};
    const ydoc_node *root = doc.n ? &doc.node[0] : NULL;
    const ydoc_node *conf_key = NULL, *conf_val = NULL;
    if (!root || ydoc_is_null(root)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:1:1: empty config (expected a mapping with "
                      "sections model, parallel, runtime, launch, workload, server)", name);
    } else if (root->kind != YDOC_MAP) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d:%d: top level is %s (expected a mapping with "
                      "sections model, parallel, runtime, launch, workload, server)", name, root->line,
                      root->col, ydoc_kind_name(root));
    } else {
        const char *cands[16];
        size_t nc = 0;
        for (int s = 0; dpep_config_sections[s]; s++) cands[nc++] = dpep_config_sections[s];
        for (int s = 0; k_flat[s]; s++) cands[nc++] = k_flat[s];
        cands[nc++] = "configurations";
        for (int k = root->first; k >= 0 && !too_many(&L);
             k = doc.node[doc.node[k].next].next) {
            const ydoc_node *key = &doc.node[k], *val = &doc.node[key->next];
            if (!key_ok(&L, key, NULL)) continue;
            if (check_dup(&L, root, key, NULL)) continue;
            bool done = false;
            for (int s = 0; dpep_config_sections[s] && !done; s++)
                if (strcmp(key->text, dpep_config_sections[s]) == 0) {
                    load_section(&L, dpep_config_sections[s], val);
                    done = true;
                }
            for (int s = 0; k_flat[s] && !done; s++)
                if (strcmp(key->text, k_flat[s]) == 0) {
                    char dotted[64];
                    snprintf(dotted, sizeof dotted, "parallel.%s", k_flat[s]);
                    set_from_node(&L, dpep_config_option_find(dotted), key, val, false);
                    done = true;
                }
            if (!done && strcmp(key->text, "configurations") == 0) {
                conf_key = key;
                conf_val = val;
                done = true;
            }
            if (!done) unknown_key(&L, key, NULL, cands, nc);
        }
        /* The chosen entry applies on top of the sections, wherever it stands. */
        if (conf_key && !too_many(&L)) load_configurations(&L, conf_key, conf_val, configuration);
    }
    if (configuration && !conf_key && diag->n_errors == errors_before)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:1:1: configurations: --configuration %s given "
                      "but the file has no configurations: list", name, configuration);
    st = L.st;
    free(set_line);
    free(set_col);
    ydoc_free(&doc);
    if (st != DPEP_OK) return st;
    return diag->n_errors > errors_before ? DPEP_ERR_INVALID : DPEP_OK;
}

dpep_status dpep_config_load_file(dpep_config *cfg, const char *path, const char *configuration,
                                  dpep_diag *diag)
{
    /* Regular files only: a FIFO would block open() and a device such as
     * /dev/zero never ends. The size is left to the bounded read below (the
     * file may grow after the stat), so an oversized file gets the parser's
     * message. */
    char why[160];
    FILE *f = dpep_fopen_regular(path, 0, why, sizeof why);
    if (!f) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s", path, why);
        return DPEP_ERR_INVALID;
    }
    /* Read at most one byte past the limit. */
    size_t cap = DPEP_CONFIG_MAX_BYTES + 1, len = 0;
    char *buf = malloc(cap);
    if (!buf) {
        fclose(f);
        return DPEP_ERR_NOMEM;
    }
    while (len < cap) {
        size_t r = fread(buf + len, 1, cap - len, f);
        if (r == 0) break;
        len += r;
    }
    int err = ferror(f) ? (errno ? errno : EIO) : 0;
    fclose(f);
    if (err) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: read error: %s", path, strerror(err));
        free(buf);
        return DPEP_ERR_INVALID;
    }
    dpep_status st = dpep_config_load_buffer(cfg, buf, len, path, configuration, diag);
    free(buf);
    return st;
}

/* ---------------------------------------------------------------------- */
/* command-line overrides                                                 */
/* ---------------------------------------------------------------------- */
dpep_status dpep_config_set(dpep_config *cfg, const char *dotted, const char *value,
                            const char *flag, dpep_diag *diag)
{
    char where[128];
    snprintf(where, sizeof where, "command line %s", flag);
    int i = dpep_config_option_find(dotted);
    if (i < 0) {
        /* launch.mca.NAME / launch.env.NAME */
        const char *maps[] = {"launch.mca.", "launch.env."};
        for (int m = 0; m < 2; m++)
            if (strncmp(dotted, maps[m], 11) == 0) {
                char opt[16];
                snprintf(opt, sizeof opt, "%.10s", maps[m]);
                int mi = dpep_config_option_find(opt);
                dpep_status st = map_put(cfg, mi, dotted + 11, strlen(dotted + 11), value,
                                         strlen(value), where, true, diag);
                if (st == DPEP_OK) {
                    cfg->origin[mi].kind = DPEP_ORIGIN_CLI;
                    snprintf(cfg->origin[mi].flag, sizeof cfg->origin[mi].flag, "%s", flag);
                }
                return st;
            }
        const char *cands[128];
        char names[128][48];
        size_t n = 0;
        for (size_t j = 0; j < dpep_config_option_count() && n < 128; j++) {
            snprintf(names[n], sizeof names[n], "%s.%s", dpep_config_option(j)->section,
                     dpep_config_option(j)->key);
            cands[n] = names[n];
            n++;
        }
        const char *near = closest(dotted, cands, n);
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s: unknown option (expected section.key, see "
                      "dpep config options)%s%s%s", where, dotted, near ? "; did you mean " : "",
                      near ? near : "", near ? "?" : "");
        return DPEP_ERR_USAGE;
    }
    const dpep_option *o = dpep_config_option((size_t)i);
    bool is_null = strcmp(value, "null") == 0 || strcmp(value, "~") == 0 ||
                   (value[0] == '\0' && o->type != DPEP_OPT_STRING);
    value_src v = {value, strlen(value), false, is_null, false};
    dpep_status st = opt_set(cfg, i, &v, where, diag);
    if (st == DPEP_OK) {
        cfg->origin[i].kind = DPEP_ORIGIN_CLI;
        snprintf(cfg->origin[i].flag, sizeof cfg->origin[i].flag, "%s", flag);
    }
    return st;
}

/* Does `flag` appear in the '|' list `list`? */
static bool flag_in(const char *list, const char *flag, size_t flen)
{
    while (list && *list) {
        const char *bar = strchr(list, '|');
        size_t l = bar ? (size_t)(bar - list) : strlen(list);
        if (l == flen && strncmp(list, flag, flen) == 0) return true;
        list = bar ? bar + 1 : NULL;
    }
    return false;
}

dpep_status dpep_config_parse_flag(dpep_config *cfg, int argc, char **argv, int *i,
                                   dpep_diag *diag)
{
    const char *arg = argv[*i];
    const char *eq = strchr(arg, '=');
    size_t flen = eq ? (size_t)(eq - arg) : strlen(arg);
    char flag[64];
    snprintf(flag, sizeof flag, "%.*s", (int)(flen < 63 ? flen : 63), arg);
    if (strcmp(flag, "--set") == 0) {
        const char *kv = eq ? eq + 1 : (*i + 1 < argc ? argv[*i + 1] : NULL);
        const char *e2 = kv ? strchr(kv, '=') : NULL;
        if (!kv || !e2 || e2 == kv) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "command line --set: expected section.key=value");
            return DPEP_ERR_USAGE;
        }
        char key[256];
        snprintf(key, sizeof key, "%.*s", (int)(e2 - kv < 255 ? e2 - kv : 255), kv);
        dpep_status st = dpep_config_set(cfg, key, e2 + 1, "--set", diag);
        if (st == DPEP_OK) *i += eq ? 1 : 2;
        return st;
    }
    for (size_t j = 0; j < dpep_config_option_count(); j++) {
        const dpep_option *o = dpep_config_option(j);
        if (!flag_in(o->cli, arg, flen)) continue;
        char dotted[96];
        snprintf(dotted, sizeof dotted, "%s.%s", o->section, o->key);
        const char *value;
        int used;
        if (eq) {
            value = eq + 1;
            used = 1;
        } else if (o->type == DPEP_OPT_BOOL) {
            value = "true"; /* store_true, as SGLang's flags */
            used = 1;
        } else if (*i + 1 < argc) {
            value = argv[*i + 1];
            used = 2;
        } else {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "command line %s: missing value (expected %s)",
                          flag, type_name(o));
            return DPEP_ERR_USAGE;
        }
        dpep_status st = dpep_config_set(cfg, dotted, value, flag, diag);
        if (st == DPEP_OK) *i += used;
        return st;
    }
    /* Unknown: suggest the nearest flag of the table. */
    const char *best = NULL;
    int bestd = 1000;
    static char cand[64];
    for (size_t j = 0; j < dpep_config_option_count(); j++) {
        const char *list = dpep_config_option(j)->cli;
        while (list && *list) {
            const char *bar = strchr(list, '|');
            size_t l = bar ? (size_t)(bar - list) : strlen(list);
            char one[64];
            snprintf(one, sizeof one, "%.*s", (int)(l < 63 ? l : 63), list);
            int d = dpep_edit_distance(flag, one);
            if (d < bestd) {
                bestd = d;
                snprintf(cand, sizeof cand, "%s", one);
                best = cand;
            }
            list = bar ? bar + 1 : NULL;
        }
    }
    if (best && bestd <= 3)
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "command line: unknown option %s; did you mean %s?",
                      flag, best);
    else
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "command line: unknown option %s (see --help)", flag);
    return DPEP_ERR_USAGE;
}

/* ---------------------------------------------------------------------- */
/* validation: the layout rules                                           */
/* ---------------------------------------------------------------------- */
void dpep_config_where(const dpep_config *cfg, int opt, char *buf, size_t n)
{
    const dpep_origin *o = &cfg->origin[opt];
    const char *src = cfg->source[0] ? cfg->source : "(no config file)";
    if (o->kind == DPEP_ORIGIN_FILE) snprintf(buf, n, "%s:%d:%d", src, o->line, o->col);
    else if (o->kind == DPEP_ORIGIN_CLI) snprintf(buf, n, "command line %s", o->flag);
    else snprintf(buf, n, "%s (default)", src);
}

static int opt_index(const char *dotted)
{
    return dpep_config_option_find(dotted);
}

#define RULE_ERR(optname, ...)                                                                 \
    do {                                                                                       \
        char w_[4300];                                                                         \
        dpep_config_where(cfg, opt_index(optname), w_, sizeof w_);                             \
        char m_[400];                                                                          \
        snprintf(m_, sizeof m_, __VA_ARGS__);                                                  \
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s: %s", w_, optname, m_);                   \
    } while (0)

dpep_status dpep_config_validate(dpep_config *cfg, int world_size, dpep_diag *diag)
{
    int before = diag->n_errors;
    int64_t tp = cfg->parallel.tp, dp = cfg->parallel.dp, ep = cfg->parallel.ep;

    if (cfg->parallel.enable_dp_attention && dp == 1) {
        char w[4300];
        dpep_config_where(cfg, opt_index("parallel.enable_dp_attention"), w, sizeof w);
        dpep_diag_add(diag, DPEP_DIAG_NOTE, "%s: parallel.enable_dp_attention: dp == 1, so DP "
                      "attention is switched off (set dp > 1 to use it)", w);
        cfg->parallel.enable_dp_attention = false;
    }
    bool dpa = cfg->parallel.enable_dp_attention;
    if (dpa && tp % dp != 0)
        RULE_ERR("parallel.dp", "DP attention needs tp %% dp == 0 (tp = %lld, dp = %lld; "
                 "expected dp to divide tp)", (long long)tp, (long long)dp);
    if (tp % ep != 0) {
        char divs[256] = "";
        size_t off = 0;
        for (int64_t d = 1; d <= tp && off < sizeof divs - 16; d++)
            if (tp % d == 0) off += (size_t)snprintf(divs + off, sizeof divs - off, "%s%lld",
                                                     off ? ", " : "", (long long)d);
        RULE_ERR("parallel.ep", "ep must divide tp (tp = %lld, ep = %lld; expected one of %s)",
                 (long long)tp, (long long)ep, divs);
    }
    int64_t need = dpa ? tp : tp * dp;
    if (need > WORLD_LIMIT)
        RULE_ERR(dpa ? "parallel.tp" : "parallel.dp", "the layout needs %lld ranks (expected at "
                 "most %d)", (long long)need, WORLD_LIMIT);
    if (world_size > 0 && need != world_size && need <= WORLD_LIMIT) {
        if (dpa)
            RULE_ERR("parallel.tp", "the world has %d ranks but tp = %lld (rule: with DP "
                     "attention world = tp)", world_size, (long long)tp);
        else
            RULE_ERR("parallel.tp", "the world has %d ranks but tp × dp = %lld × %lld = %lld "
                     "(rule: without DP attention world = tp × dp)", world_size, (long long)tp,
                     (long long)dp, (long long)need);
    }
    int64_t world = world_size > 0 ? world_size : need;
    int64_t nodes = cfg->launch.nodes;
    if (world % nodes != 0) {
        RULE_ERR("launch.nodes", "%lld nodes do not divide the world of %lld ranks (expected "
                 "nodes to divide the world size)", (long long)nodes, (long long)world);
    } else {
        int64_t rpn = world / nodes;
        if (cfg->launch.gpus_per_node && cfg->launch.gpus_per_node * nodes != world)
            RULE_ERR("launch.gpus_per_node", "nodes × gpus_per_node = %lld × %lld = %lld but the "
                     "world has %lld ranks (expected them equal)", (long long)nodes,
                     (long long)cfg->launch.gpus_per_node,
                     (long long)(nodes * cfg->launch.gpus_per_node), (long long)world);
        else if (rpn % tp != 0 && tp % rpn != 0)
            RULE_ERR("launch.nodes", "%lld ranks per node and tp = %lld: an instance must fit in "
                     "a node or span whole nodes (expected tp to divide or be a multiple of the "
                     "ranks per node)", (long long)rpn, (long long)tp);
        /* an EP group strides over its whole instance (ep_rank = r / moe_tp) */
        else if (cfg->parallel.moe_a2a_transport == DPEP_A2A_TRANSPORT_SHM &&
                 cfg->parallel.moe_a2a_backend == DPEP_A2A_ALLTOALL && cfg->parallel.ep > 1 &&
                 tp > rpn)
            RULE_ERR("parallel.moe_a2a_transport", "shm needs each EP group on one node, but an "
                     "instance of tp = %lld spans %lld nodes of %lld ranks (expected auto or mpi)",
                     (long long)tp, (long long)(tp / rpn), (long long)rpn);
    }
    if ((cfg->parallel.moe_a2a_transport == DPEP_A2A_TRANSPORT_NCCL ||
         cfg->parallel.moe_a2a_transport == DPEP_A2A_TRANSPORT_IPC) &&
        cfg->runtime.device == DPEP_DEVICE_CPU)
        RULE_ERR("parallel.moe_a2a_transport", "%s moves rows between GPUs, but runtime.device "
                 "is cpu (expected auto, shm or mpi on the CPU, or runtime.device cuda)",
                 cfg->parallel.moe_a2a_transport == DPEP_A2A_TRANSPORT_NCCL ? "nccl" : "ipc");
    if (cfg->runtime.chunked_prefill_size % cfg->runtime.page_size != 0)
        RULE_ERR("runtime.chunked_prefill_size", "%lld is not a multiple of page_size %lld "
                 "(expected a multiple of page_size)", (long long)cfg->runtime.chunked_prefill_size,
                 (long long)cfg->runtime.page_size);
    if (cfg->workload.kind == DPEP_WORKLOAD_FILE && !cfg->workload.path[0])
        RULE_ERR("workload.kind", "kind is file but workload.path is empty (expected the path "
                 "of a JSONL request file)");
    return diag->n_errors > before ? DPEP_ERR_INVALID : DPEP_OK;
}

/* ---------------------------------------------------------------------- */
/* printing                                                               */
/* ---------------------------------------------------------------------- */
void dpep_config_format_value(const dpep_config *cfg, int opt, char *buf, size_t n)
{
    const dpep_option *o = dpep_config_option((size_t)opt);
    const void *p = opt_cptr(cfg, o);
    switch (o->type) {
    case DPEP_OPT_INT: {
        int64_t v = *(const int64_t *)p;
        if ((o->flags & DPEP_OPT_NULLABLE) && v == 0) snprintf(buf, n, "null");
        else snprintf(buf, n, "%lld", (long long)v);
        break;
    }
    case DPEP_OPT_FLOAT: snprintf(buf, n, "%g", *(const double *)p); break;
    case DPEP_OPT_BOOL: snprintf(buf, n, "%s", *(const bool *)p ? "true" : "false"); break;
    case DPEP_OPT_ENUM: snprintf(buf, n, "%s", o->values[*(const int *)p]); break;
    case DPEP_OPT_STRING: snprintf(buf, n, "\"%s\"", *(char *const *)p); break;
    case DPEP_OPT_MAP: {
        const dpep_kv_map *m = p;
        size_t off = (size_t)snprintf(buf, n, "{");
        for (int i = 0; i < m->n && off < n; i++)
            off += (size_t)snprintf(buf + off, n - off, "%s%s: \"%s\"", i ? ", " : "", m->key[i],
                                    m->value[i]);
        if (off < n) snprintf(buf + off, n - off, "}");
        break;
    }
    }
}

static void bounds_text(const dpep_option *o, char *buf, size_t n)
{
    char a[32], b[32];
    fmt_num(o->min, a, sizeof a);
    fmt_num(o->max, b, sizeof b);
    switch (o->type) {
    case DPEP_OPT_INT:
        if (o->min == o->max) snprintf(buf, n, "%s%s", a, (o->flags & DPEP_OPT_NULLABLE) ? " or null" : "");
        else snprintf(buf, n, "%s..%s%s%s", a, b, (o->flags & DPEP_OPT_POW2) ? ", power of two" : "",
                      (o->flags & DPEP_OPT_NULLABLE) ? ", or null" : "");
        break;
    case DPEP_OPT_FLOAT:
        snprintf(buf, n, "%s%s, %s]", (o->flags & DPEP_OPT_MIN_EXCL) ? "(" : "[", a, b);
        break;
    case DPEP_OPT_ENUM: enum_list(o, buf, n); break;
    case DPEP_OPT_BOOL: snprintf(buf, n, "true|false"); break;
    case DPEP_OPT_STRING: snprintf(buf, n, "%s", (o->flags & DPEP_OPT_PATH) ? "path" : "text"); break;
    case DPEP_OPT_MAP: snprintf(buf, n, "NAME: VALUE"); break;
    }
}

static const char *short_type(const dpep_option *o)
{
    static const char *const t[] = {"int", "float", "bool", "enum", "string", "map"};
    return t[o->type];
}

void dpep_config_print_options(FILE *f, bool markdown)
{
    const char *prev = "";
    if (markdown)
        fprintf(f, "| option | type | default | allowed | command line | meaning |\n"
                   "|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < dpep_config_option_count(); i++) {
        const dpep_option *o = dpep_config_option(i);
        char bounds[256], cli[160] = "";
        bounds_text(o, bounds, sizeof bounds);
        if (o->cli) {
            size_t off = 0;
            for (const char *c = o->cli; *c && off + 3 < sizeof cli; c++) {
                if (*c == '|') {
                    cli[off++] = ',';
                    cli[off++] = ' ';
                } else {
                    cli[off++] = *c;
                }
            }
            cli[off] = '\0';
        }
        if (markdown) {
            /* '|' would split the table cell */
            for (char *c = bounds; *c; c++)
                if (*c == '|') *c = '/';
            fprintf(f, "| `%s.%s` | %s | `%s` | %s | %s | %s |\n", o->section, o->key,
                    short_type(o), o->def, bounds, cli[0] ? cli : "`--set`", o->help);
        } else {
            if (strcmp(prev, o->section) != 0) fprintf(f, "\n%s:\n", o->section);
            prev = o->section;
            fprintf(f, "  %-22s %-6s default %-12s %s\n", o->key, short_type(o), o->def, bounds);
            fprintf(f, "  %-22s %s\n", "", o->help);
            if (cli[0]) fprintf(f, "  %-22s flags: %s\n", "", cli);
        }
    }
}
