/* safetensors.c — Hugging Face safetensors: header parsing (jansson),
 * sharded checkpoints through model.safetensors.index.json, read-only mmap
 * and conversion to float32 (BF16, F16, F8_E4M3 with block scales). */
#include "dpep_model.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_NAME 1024
#define MAX_SHARDS 4096

static const struct {
    const char *name;
    size_t size;
} k_dtypes[DPEP_ST_NDTYPES] = {
    [DPEP_ST_F32] = {"F32", 4},     [DPEP_ST_F16] = {"F16", 2},
    [DPEP_ST_BF16] = {"BF16", 2},   [DPEP_ST_F8_E4M3] = {"F8_E4M3", 1},
    [DPEP_ST_F8_E5M2] = {"F8_E5M2", 1}, [DPEP_ST_F64] = {"F64", 8},
    [DPEP_ST_I64] = {"I64", 8},     [DPEP_ST_I32] = {"I32", 4},
    [DPEP_ST_I16] = {"I16", 2},     [DPEP_ST_I8] = {"I8", 1},
    [DPEP_ST_U8] = {"U8", 1},       [DPEP_ST_BOOL] = {"BOOL", 1},
};

size_t dpep_st_dtype_size(dpep_st_dtype t)
{
    return (unsigned)t < DPEP_ST_NDTYPES ? k_dtypes[t].size : 0;
}

const char *dpep_st_dtype_name(dpep_st_dtype t)
{
    return (unsigned)t < DPEP_ST_NDTYPES ? k_dtypes[t].name : "?";
}

void dpep_st_header_free(dpep_st_header *h)
{
    free(h->tensor);
    free(h->names);
    memset(h, 0, sizeof *h);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const dpep_tensor_info *)a)->name, ((const dpep_tensor_info *)b)->name);
}

static int cmp_begin(const void *a, const void *b)
{
    const dpep_tensor_info *x = *(const dpep_tensor_info *const *)a;
    const dpep_tensor_info *y = *(const dpep_tensor_info *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

/* Shows a tensor name safely in a message (names come from the file). */
static const char *safe_name(const char *s, char *buf, size_t n)
{
    size_t o = 0;
    for (; *s && o + 5 < n; s++) {
        unsigned char c = (unsigned char)*s;
        if (c >= 0x20 && c < 0x7f) buf[o++] = (char)c;
        else o += (size_t)snprintf(buf + o, n - o, "\\x%02x", c);
    }
    buf[o] = '\0';
    return buf;
}

/* Parses the header text into *root: size limit, JSON syntax (jansson also
 * checks UTF-8 and duplicate keys), only padding after the object, and an
 * object at the top. On error one message is added and *root is NULL. */
static dpep_status load_header_json(const char *json, size_t len, const char *fname,
                                    json_t **root, dpep_diag *diag)
{
    *root = NULL;
    if (len > DPEP_ST_MAX_HEADER) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: header of %zu bytes (expected at most %u)",
                      fname, len, DPEP_ST_MAX_HEADER);
        return DPEP_ERR_INVALID;
    }
    json_error_t jerr;
    /* jansson checks UTF-8 and, with this flag, duplicate keys. */
    json_t *r = json_loadb(json, len, JSON_REJECT_DUPLICATES | JSON_DISABLE_EOF_CHECK, &jerr);
    if (!r) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: header is not valid JSON: %s (header byte %d)",
                      fname, jerr.text, jerr.position);
        return DPEP_ERR_INVALID;
    }
    /* Only spaces may follow the JSON object inside the declared length. */
    for (size_t i = (size_t)jerr.position; i < len; i++)
        if (json[i] != ' ' && json[i] != '\0') {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: header has trailing bytes after the JSON "
                          "object at header byte %zu (expected spaces)", fname, i);
            json_decref(r);
            return DPEP_ERR_INVALID;
        }
    if (!json_is_object(r)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: header is not a JSON object", fname);
        json_decref(r);
        return DPEP_ERR_INVALID;
    }
    *root = r;
    return DPEP_OK;
}

/* __metadata__: string values only; "format" is kept. */
static void parse_metadata(json_t *val, const char *fname, dpep_st_header *out, dpep_diag *diag)
{
    char shown[160];
    if (!json_is_object(val)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: __metadata__ is not an object", fname);
        return;
    }
    const char *mk;
    json_t *mv;
    json_object_foreach(val, mk, mv)
    {
        if (!json_is_string(mv)) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: __metadata__.%s is not a string",
                          fname, safe_name(mk, shown, sizeof shown));
            break;
        }
        if (strcmp(mk, "format") == 0)
            snprintf(out->format, sizeof out->format, "%s", json_string_value(mv));
    }
}

/* Byte size of the shape in t->dtype, into t->shape / t->ndim; false when a
 * dimension is not a non-negative integer or the product passes 2^62. */
static bool parse_shape(json_t *js, dpep_tensor_info *t, uint64_t *bytes_out)
{
    size_t nd = json_array_size(js);
    /* numel * size in 128 bits worth of care: stop at 2^62. */
    uint64_t bytes = dpep_st_dtype_size(t->dtype);
    for (size_t d = 0; d < nd; d++) {
        json_t *e = json_array_get(js, d);
        json_int_t v = json_is_integer(e) ? json_integer_value(e) : -1;
        if (v < 0 || (v > 0 && bytes > (UINT64_C(1) << 62) / (uint64_t)v)) return false;
        t->shape[d] = v;
        bytes *= (uint64_t)v;
    }
    t->ndim = (int)nd;
    *bytes_out = bytes;
    return true;
}

/* One tensor entry {dtype, shape, data_offsets}: checked, then appended to
 * out->tensor with its name copied into out->names at *noff. On a bad entry
 * one message is added and nothing is appended. */
static void parse_tensor(const char *key, json_t *val, uint64_t data_len, const char *fname,
                         dpep_st_header *out, size_t *noff, dpep_diag *diag)
{
    char shown[160];
    safe_name(key, shown, sizeof shown);
    size_t kl = strlen(key);
    if (kl == 0 || kl > MAX_NAME) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor name of %zu bytes (expected 1 to %d)",
                      fname, kl, MAX_NAME);
        return;
    }
    if (!json_is_object(val)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s: entry is not an object", fname,
                      shown);
        return;
    }
    json_t *jd = json_object_get(val, "dtype"), *js = json_object_get(val, "shape"),
           *jo = json_object_get(val, "data_offsets");
    if (json_object_size(val) != 3 || !json_is_string(jd) || !json_is_array(js) ||
        !json_is_array(jo) || json_array_size(jo) != 2) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s: expected exactly {dtype: string, "
                      "shape: [ints], data_offsets: [begin, end]}", fname, shown);
        return;
    }
    dpep_tensor_info *t = &out->tensor[out->n];
    t->dtype = DPEP_ST_NDTYPES;
    for (int d = 0; d < DPEP_ST_NDTYPES; d++)
        if (strcmp(json_string_value(jd), k_dtypes[d].name) == 0) t->dtype = (dpep_st_dtype)d;
    if (t->dtype == DPEP_ST_NDTYPES) {
        char dt[64];
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s: unsupported dtype %s (expected "
                      "F32, F16, BF16, F8_E4M3, F8_E5M2, F64, I64, I32, I16, I8, U8 or BOOL)",
                      fname, shown, safe_name(json_string_value(jd), dt, sizeof dt));
        return;
    }
    size_t nd = json_array_size(js);
    if (nd > DPEP_ST_MAX_DIMS) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s: %zu dimensions (expected at most "
                      "%d)", fname, shown, nd, DPEP_ST_MAX_DIMS);
        return;
    }
    uint64_t bytes;
    if (!parse_shape(js, t, &bytes)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s: bad shape (expected non-negative "
                      "integers of a sane product)", fname, shown);
        return;
    }
    json_t *jb = json_array_get(jo, 0), *je = json_array_get(jo, 1);
    json_int_t b = json_is_integer(jb) ? json_integer_value(jb) : -1;
    json_int_t e = json_is_integer(je) ? json_integer_value(je) : -1;
    if (b < 0 || e < b || (uint64_t)e > data_len) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s: data_offsets [%lld, %lld] out of "
                      "bounds (expected 0 <= begin <= end <= %llu, the data size)", fname, shown,
                      (long long)b, (long long)e, (unsigned long long)data_len);
        return;
    }
    if ((uint64_t)(e - b) != bytes) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s: %lld data bytes but dtype %s and "
                      "its shape need %llu", fname, shown, (long long)(e - b),
                      k_dtypes[t->dtype].name, (unsigned long long)bytes);
        return;
    }
    t->begin = (uint64_t)b;
    t->end = (uint64_t)e;
    memcpy(out->names + *noff, key, kl + 1);
    t->name = out->names + *noff;
    *noff += kl + 1;
    out->n++;
}

/* No two tensors may share bytes: sorted by begin, each must start at or
 * after the previous one's end. Reports the first overlap only. */
static dpep_status check_overlaps(const dpep_st_header *out, const char *fname, dpep_diag *diag)
{
    dpep_tensor_info **by_begin = malloc(sizeof(void *) * (size_t)(out->n ? out->n : 1));
    if (!by_begin) return DPEP_ERR_NOMEM;
    for (int i = 0; i < out->n; i++) by_begin[i] = &out->tensor[i];
    qsort(by_begin, (size_t)out->n, sizeof *by_begin, cmp_begin);
    for (int i = 1; i < out->n; i++)
        if (by_begin[i]->begin < by_begin[i - 1]->end) {
            char a[160], b2[160];
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensors %s and %s overlap (bytes %llu..%llu "
                          "and %llu..%llu)", fname, safe_name(by_begin[i - 1]->name, a, sizeof a),
                          safe_name(by_begin[i]->name, b2, sizeof b2),
                          (unsigned long long)by_begin[i - 1]->begin,
                          (unsigned long long)by_begin[i - 1]->end,
                          (unsigned long long)by_begin[i]->begin,
                          (unsigned long long)by_begin[i]->end);
            break;
        }
    free(by_begin);
    return DPEP_OK;
}

dpep_status dpep_st_parse_header(const char *json, size_t len, uint64_t data_len,
                                 const char *fname, dpep_st_header *out, dpep_diag *diag)
{
    memset(out, 0, sizeof *out);
    json_t *root;
    DPEP_TRY(load_header_json(json, len, fname, &root, diag));
    size_t n = json_object_size(root), names_len = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) names_len += strlen(key) + 1;
    out->tensor = calloc(n ? n : 1, sizeof *out->tensor);
    out->names = malloc(names_len ? names_len : 1);
    if (!out->tensor || !out->names) {
        json_decref(root);
        dpep_st_header_free(out);
        return DPEP_ERR_NOMEM;
    }
    size_t noff = 0;
    int errors = diag->n_errors;
    /* Stop after 8 errors: a hostile header must not flood the output. */
    json_object_foreach(root, key, val)
    {
        if (diag->n_errors - errors >= 8) break;
        if (strcmp(key, "__metadata__") == 0)
            parse_metadata(val, fname, out, diag);
        else
            parse_tensor(key, val, data_len, fname, out, &noff, diag);
    }
    json_decref(root);
    if (diag->n_errors > errors) {
        dpep_st_header_free(out);
        return DPEP_ERR_INVALID;
    }
    if (check_overlaps(out, fname, diag) != DPEP_OK) {
        dpep_st_header_free(out);
        return DPEP_ERR_NOMEM;
    }
    if (diag->n_errors > errors) {
        dpep_st_header_free(out);
        return DPEP_ERR_INVALID;
    }
    qsort(out->tensor, (size_t)out->n, sizeof *out->tensor, cmp_name);
    return DPEP_OK;
}

/* ---------------------------------------------------------------------- */
/* checkpoints                                                            */
/* ---------------------------------------------------------------------- */
typedef struct shard {
    char *path;              /* owned */
    const unsigned char *map;/* whole file, read-only                   */
    size_t size;
    uint64_t data_off;       /* 8 + header length                       */
    dpep_st_header hdr;
} shard;

struct dpep_ckpt {
    char *dir;
    int n_shards;
    shard *shard;
    int n;                   /* tensors over all shards, sorted by name  */
    dpep_tensor_info *all;   /* owned (names point into shard headers)   */
};

static dpep_status open_shard(shard *s, const char *path, dpep_diag *diag)
{
    memset(s, 0, sizeof *s);
    s->path = strdup(path);
    if (!s->path) return DPEP_ERR_NOMEM;
    /* open() itself would block on a FIFO named *.safetensors: the helper
     * refuses anything but a regular file without blocking. */
    char why[160];
    int64_t size = 0;
    int fd = dpep_open_regular(path, 0, &size, why, sizeof why);
    if (fd < 0) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s", path, why);
        return DPEP_ERR_INVALID;
    }
    s->size = (size_t)size;
    if (s->size < 8) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: truncated: %zu bytes (expected an 8-byte header "
                      "length, a JSON header and data)", path, s->size);
        close(fd);
        return DPEP_ERR_INVALID;
    }
    void *m = mmap(NULL, s->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: mmap failed: %s", path, strerror(errno));
        return DPEP_ERR_IO;
    }
    s->map = m;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | s->map[i]; /* little-endian */
    if (hl > s->size - 8) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: header length %llu goes beyond the file (%zu "
                      "bytes): truncated or not a safetensors file", path, (unsigned long long)hl,
                      s->size);
        return DPEP_ERR_INVALID;
    }
    s->data_off = 8 + hl;
    return dpep_st_parse_header((const char *)s->map + 8, (size_t)hl, s->size - s->data_off,
                                path, &s->hdr, diag);
}

static void close_shard(shard *s)
{
    if (s->map) munmap((void *)s->map, s->size);
    dpep_st_header_free(&s->hdr);
    free(s->path);
}

void dpep_ckpt_close(dpep_ckpt *c)
{
    if (!c) return;
    for (int i = 0; i < c->n_shards; i++) close_shard(&c->shard[i]);
    free(c->shard);
    free(c->all);
    free(c->dir);
    free(c);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Shard file names: from the index's weight_map, else model.safetensors,
 * else every *.safetensors in dir. */
static dpep_status list_shards(const char *dir, char ***names, int *n, json_t **index,
                               dpep_diag *diag)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    *names = NULL;
    *n = 0;
    *index = NULL;
    if (access(path, F_OK) == 0) {
        char why[160];
        FILE *in = dpep_fopen_regular(path, 0, why, sizeof why);
        if (!in) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %s", path, why);
            return DPEP_ERR_INVALID;
        }
        json_error_t e;
        json_t *root = json_loadf(in, JSON_REJECT_DUPLICATES, &e);
        fclose(in);
        if (!root) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s:%d:%d: not valid JSON: %s", path, e.line,
                          e.column, e.text);
            return DPEP_ERR_INVALID;
        }
        json_t *wm = json_object_get(root, "weight_map");
        if (!json_is_object(wm) || json_object_size(wm) == 0) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: weight_map: missing or empty (expected "
                          "{tensor name: shard file})", path);
            json_decref(root);
            return DPEP_ERR_INVALID;
        }
        char **list = calloc(json_object_size(wm), sizeof(char *));
        int cnt = 0;
        const char *k;
        json_t *v;
        json_object_foreach(wm, k, v)
        {
            const char *f = json_string_value(v);
            if (!f || !*f || strchr(f, '/') || strcmp(f, "..") == 0) {
                char shown[160];
                dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: weight_map.%s: expected a shard file "
                              "name in the same directory", path, safe_name(k, shown, sizeof shown));
                free(list);
                json_decref(root);
                return DPEP_ERR_INVALID;
            }
            bool seen = false;
            for (int i = 0; i < cnt && !seen; i++) seen = strcmp(list[i], f) == 0;
            if (!seen) list[cnt++] = (char *)f;
        }
        if (cnt > MAX_SHARDS) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: %d shards (expected at most %d)", path, cnt,
                          MAX_SHARDS);
            free(list);
            json_decref(root);
            return DPEP_ERR_INVALID;
        }
        for (int i = 0; i < cnt; i++) list[i] = strdup(list[i]);
        qsort(list, (size_t)cnt, sizeof *list, cmp_str);
        *names = list;
        *n = cnt;
        *index = root;
        return DPEP_OK;
    }
    /* No index: model.safetensors, as transformers loads it; other
     * *.safetensors beside it (goldens, adapters) are not the model. */
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (access(path, F_OK) == 0) {
        char **list = malloc(sizeof(char *));
        if (!list || !(list[0] = strdup("model.safetensors"))) {
            free(list);
            return DPEP_ERR_NOMEM;
        }
        *names = list;
        *n = 1;
        return DPEP_OK;
    }
    DIR *d = opendir(dir);
    if (!d) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: cannot open the checkpoint directory: %s", dir,
                      strerror(errno));
        return DPEP_ERR_INVALID;
    }
    char **list = NULL;
    int cnt = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) && cnt < MAX_SHARDS) {
        size_t l = strlen(e->d_name);
        if (l <= 12 || strcmp(e->d_name + l - 12, ".safetensors") != 0) continue;
        if (cnt == cap) {
            cap = cap ? 2 * cap : 8;
            char **p = realloc(list, sizeof(char *) * (size_t)cap);
            if (!p) break;
            list = p;
        }
        list[cnt++] = strdup(e->d_name);
    }
    closedir(d);
    if (cnt == 0) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: no *.safetensors files and no "
                      "model.safetensors.index.json (expected a Hugging Face checkpoint "
                      "directory)", dir);
        free(list);
        return DPEP_ERR_INVALID;
    }
    qsort(list, (size_t)cnt, sizeof *list, cmp_str);
    *names = list;
    *n = cnt;
    return DPEP_OK;
}

/* Opens the shards `names` of `dir` (taking ownership of names and index). */
static dpep_status open_list(const char *dir, char **names, int n, json_t *index, dpep_ckpt **out,
                             dpep_diag *diag)
{
    dpep_status st = DPEP_OK;
    dpep_ckpt *c = calloc(1, sizeof *c);
    if (!c || !(c->dir = strdup(dir)) || !(c->shard = calloc((size_t)n, sizeof *c->shard))) {
        st = DPEP_ERR_NOMEM;
        goto fail;
    }
    int total = 0;
    for (int i = 0; i < n; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (index && access(path, F_OK) != 0) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s/model.safetensors.index.json: names shard "
                          "%s, which is missing", dir, names[i]);
            st = DPEP_ERR_INVALID;
            goto fail;
        }
        c->n_shards++;
        st = open_shard(&c->shard[i], path, diag);
        if (st != DPEP_OK) goto fail;
        total += c->shard[i].hdr.n;
    }
    c->all = malloc(sizeof *c->all * (size_t)(total ? total : 1));
    if (!c->all) {
        st = DPEP_ERR_NOMEM;
        goto fail;
    }
    for (int i = 0; i < n; i++)
        for (int k = 0; k < c->shard[i].hdr.n; k++) {
            c->all[c->n] = c->shard[i].hdr.tensor[k];
            c->all[c->n].file = i;
            c->n++;
        }
    qsort(c->all, (size_t)c->n, sizeof *c->all, cmp_name);
    for (int i = 1; i < c->n; i++)
        if (strcmp(c->all[i].name, c->all[i - 1].name) == 0) {
            char shown[160];
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s is in both %s and %s", dir,
                          safe_name(c->all[i].name, shown, sizeof shown),
                          c->shard[c->all[i - 1].file].path, c->shard[c->all[i].file].path);
            st = DPEP_ERR_INVALID;
            goto fail;
        }
    if (index) {
        /* Every tensor the index names must be in the shard it names. */
        json_t *wm = json_object_get(index, "weight_map");
        const char *k;
        json_t *v;
        json_object_foreach(wm, k, v)
        {
            const dpep_tensor_info *t = dpep_ckpt_find(c, k);
            const char *want = json_string_value(v);
            const char *got = t ? strrchr(c->shard[t->file].path, '/') + 1 : NULL;
            if (!t || strcmp(got, want) != 0) {
                char shown[160];
                dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s/model.safetensors.index.json: tensor %s "
                              "should be in %s but %s", dir, safe_name(k, shown, sizeof shown), want,
                              t ? "is in another shard" : "is in no shard");
                st = DPEP_ERR_INVALID;
                goto fail;
            }
        }
    }
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    json_decref(index);
    *out = c;
    return DPEP_OK;
fail:
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
    json_decref(index);
    dpep_ckpt_close(c);
    return st;
}

dpep_status dpep_ckpt_open(const char *dir, dpep_ckpt **out, dpep_diag *diag)
{
    char **names = NULL;
    int n = 0;
    json_t *index = NULL;
    DPEP_TRY(list_shards(dir, &names, &n, &index, diag));
    return open_list(dir, names, n, index, out, diag);
}

dpep_status dpep_ckpt_open_file(const char *path, dpep_ckpt **out, dpep_diag *diag)
{
    const char *slash = strrchr(path, '/');
    char dir[4096];
    if (slash) snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    else snprintf(dir, sizeof dir, ".");
    char **names = malloc(sizeof(char *));
    if (!names || !(names[0] = strdup(slash ? slash + 1 : path))) {
        free(names);
        return DPEP_ERR_NOMEM;
    }
    return open_list(dir, names, 1, NULL, out, diag);
}

dpep_status dpep_ckpt_read_raw(const dpep_ckpt *c, const char *name, void *dst, size_t cap,
                               dpep_diag *diag)
{
    const dpep_tensor_info *t = dpep_ckpt_find(c, name);
    if (!t) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s is missing", c->dir, name);
        return DPEP_ERR_INVALID;
    }
    if (t->end - t->begin > cap) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s has %llu bytes (buffer of %zu)",
                      c->shard[t->file].path, name, (unsigned long long)(t->end - t->begin), cap);
        return DPEP_ERR_INVALID;
    }
    const shard *s = &c->shard[t->file];
    memcpy(dst, s->map + s->data_off + t->begin, (size_t)(t->end - t->begin));
    return DPEP_OK;
}

const dpep_tensor_info *dpep_ckpt_find(const dpep_ckpt *c, const char *name)
{
    dpep_tensor_info key = {.name = name};
    return bsearch(&key, c->all, (size_t)c->n, sizeof *c->all, cmp_name);
}

int dpep_ckpt_count(const dpep_ckpt *c) { return c->n; }
const dpep_tensor_info *dpep_ckpt_tensor(const dpep_ckpt *c, int i) { return &c->all[i]; }
const char *dpep_ckpt_file_name(const dpep_ckpt *c, int file) { return c->shard[file].path; }

/* ---------------------------------------------------------------------- */
/* conversion                                                             */
/* ---------------------------------------------------------------------- */
static float bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static float f16_to_f32(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    float v;
    if (e == 0) v = ldexpf((float)m, -24);
    else if (e == 31) v = m ? NAN : INFINITY;
    else v = ldexpf((float)(m | 0x400), e - 25);
    return s ? -v : v;
}

/* OCP FP8 E4M3 ("fn": no infinities, 0x7f/0xff are NaN), bias 7. */
static float f8e4m3_to_f32(uint8_t b)
{
    int s = b >> 7, e = (b >> 3) & 0xf, m = b & 7;
    float v;
    if (e == 0xf && m == 7) v = NAN;
    else if (e == 0) v = ldexpf((float)m, -9);
    else v = ldexpf((float)(m | 8), e - 10);
    return s ? -v : v;
}

/* E5M2, bias 15, IEEE-like. */
static float f8e5m2_to_f32(uint8_t b)
{
    return f16_to_f32((uint16_t)b << 8);
}

static float elem_f32(const unsigned char *p, dpep_st_dtype t)
{
    switch (t) {
    case DPEP_ST_F32: {
        float f;
        memcpy(&f, p, 4);
        return f;
    }
    case DPEP_ST_BF16: {
        uint16_t h;
        memcpy(&h, p, 2);
        return bf16_to_f32(h);
    }
    case DPEP_ST_F16: {
        uint16_t h;
        memcpy(&h, p, 2);
        return f16_to_f32(h);
    }
    case DPEP_ST_F8_E4M3: return f8e4m3_to_f32(*p);
    case DPEP_ST_F8_E5M2: return f8e5m2_to_f32(*p);
    case DPEP_ST_F64: {
        double d;
        memcpy(&d, p, 8);
        return (float)d;
    }
    default: return NAN;
    }
}

static void release_pages(const unsigned char *p, size_t len)
{
    long pg = sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)p & ~(uintptr_t)(pg - 1);
    uintptr_t e = ((uintptr_t)p + len + (uintptr_t)pg - 1) & ~(uintptr_t)(pg - 1);
    madvise((void *)a, e - a, MADV_DONTNEED);
}

/* The tensor `name` with the shape and a convertible dtype the caller
 * expects, else a message naming file and tensor. */
static dpep_status find_checked(dpep_ckpt *c, const char *name, const int64_t *shape, int ndim,
                                const dpep_tensor_info **out, dpep_diag *diag)
{
    const dpep_tensor_info *t = dpep_ckpt_find(c, name);
    if (!t) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s is missing (expected by the model "
                      "config)", c->dir, name);
        return DPEP_ERR_INVALID;
    }
    const shard *s = &c->shard[t->file];
    bool shape_ok = t->ndim == ndim;
    for (int d = 0; shape_ok && d < ndim; d++) shape_ok = t->shape[d] == shape[d];
    if (!shape_ok) {
        char got[128] = "", want[128] = "";
        size_t go = 0, wo = 0;
        for (int d = 0; d < t->ndim; d++)
            go += (size_t)snprintf(got + go, sizeof got - go, "%s%lld", d ? ", " : "",
                                   (long long)t->shape[d]);
        for (int d = 0; d < ndim; d++)
            wo += (size_t)snprintf(want + wo, sizeof want - wo, "%s%lld", d ? ", " : "",
                                   (long long)shape[d]);
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s has shape [%s] (expected [%s] from "
                      "config.json)", s->path, name, got, want);
        return DPEP_ERR_INVALID;
    }
    if (t->dtype != DPEP_ST_F32 && t->dtype != DPEP_ST_BF16 && t->dtype != DPEP_ST_F16 &&
        t->dtype != DPEP_ST_F8_E4M3 && t->dtype != DPEP_ST_F8_E5M2 && t->dtype != DPEP_ST_F64) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s has dtype %s (expected a floating "
                      "point dtype)", s->path, name, dpep_st_dtype_name(t->dtype));
        return DPEP_ERR_INVALID;
    }
    *out = t;
    return DPEP_OK;
}

/* Rows × cols view of a tensor: 1-D is one row, dims after the first are
 * flattened into the columns. */
static void view_2d(const int64_t *shape, int ndim, int64_t *rows, int64_t *cols)
{
    *rows = ndim >= 2 ? shape[0] : 1;
    *cols = 1;
    for (int d = ndim >= 2 ? 1 : 0; d < ndim; d++) *cols *= shape[d];
}

/* The conversion itself, on a checked tensor and an in-range rectangle
 * [r0, r1) x [c0, c1). Every element goes through the same per-element code
 * whatever the rectangle, so pieces of a tensor read separately are
 * bit-identical to the tensor read at once. FP8 block scales: only the
 * scale rows/cols the rectangle touches are read. */
static dpep_status convert_rect(dpep_ckpt *c, const dpep_tensor_info *t, const char *name,
                                int64_t rows, int64_t cols, int64_t r0, int64_t r1, int64_t c0,
                                int64_t c1, int block_h, int block_w, float *dst, dpep_diag *diag)
{
    const shard *s = &c->shard[t->file];
    const float *scale = NULL;
    int64_t sr0 = 0, sc0 = 0, sn = 0;
    float *scale_buf = NULL;
    if (t->dtype == DPEP_ST_F8_E4M3 || t->dtype == DPEP_ST_F8_E5M2) {
        char sname[MAX_NAME + 16];
        snprintf(sname, sizeof sname, "%s_scale_inv", name);
        const dpep_tensor_info *st = dpep_ckpt_find(c, sname);
        if (block_h <= 0 || block_w <= 0 || t->ndim != 2) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s is FP8 but config.json gives no "
                          "weight_block_size (expected quantization_config.weight_block_size)",
                          s->path, name);
            return DPEP_ERR_INVALID;
        }
        int64_t srows = (rows + block_h - 1) / block_h, scols = (cols + block_w - 1) / block_w;
        if (!st) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: FP8 tensor %s has no %s (expected float32 "
                          "block scales [%lld, %lld])", c->dir, name, sname, (long long)srows,
                          (long long)scols);
            return DPEP_ERR_INVALID;
        }
        if (r1 <= r0 || c1 <= c0) return DPEP_OK; /* nothing to convert */
        sr0 = r0 / block_h;
        sc0 = c0 / block_w;
        int64_t snr = (r1 - 1) / block_h + 1 - sr0;
        sn = (c1 - 1) / block_w + 1 - sc0;
        scale_buf = malloc(sizeof(float) * (size_t)(snr * sn));
        if (!scale_buf) return DPEP_ERR_NOMEM;
        int64_t sshape[2] = {srows, scols};
        dpep_status ss = dpep_ckpt_read_f32_rect(c, sname, sshape, 2, sr0, snr, sc0, sn, 0, 0,
                                                 scale_buf, diag);
        if (ss != DPEP_OK) {
            free(scale_buf);
            return ss;
        }
        scale = scale_buf;
    }
    if (r1 <= r0 || c1 <= c0) return DPEP_OK;
    const unsigned char *base = s->map + s->data_off + t->begin;
    size_t es = dpep_st_dtype_size(t->dtype);
    int64_t oc = c1 - c0;
    for (int64_t r = r0; r < r1; r++) {
        const unsigned char *row = base + (size_t)(r * cols) * es;
        float *o = dst + (r - r0) * oc;
        if (t->dtype == DPEP_ST_F32) {
            memcpy(o, row + (size_t)c0 * 4, (size_t)oc * 4);
        } else {
            for (int64_t k = c0; k < c1; k++) o[k - c0] = elem_f32(row + (size_t)k * es, t->dtype);
        }
        if (scale) {
            const float *srow = scale + (r / block_h - sr0) * sn;
            for (int64_t k = c0; k < c1; k++) o[k - c0] *= srow[k / block_w - sc0];
        }
    }
    free(scale_buf);
    /* the span of the file the rectangle covered */
    release_pages(base + (size_t)(r0 * cols + c0) * es, (size_t)((r1 - 1 - r0) * cols + oc) * es);
    return DPEP_OK;
}

dpep_status dpep_ckpt_read_f32(dpep_ckpt *c, const char *name, const int64_t *shape, int ndim,
                               int slice_dim, int64_t slice_begin, int64_t slice_len,
                               int block_h, int block_w, float *dst, dpep_diag *diag)
{
    const dpep_tensor_info *t = NULL;
    DPEP_TRY(find_checked(c, name, shape, ndim, &t, diag));
    int64_t rows, cols;
    view_2d(shape, ndim, &rows, &cols);
    int64_t r0 = 0, r1 = rows, c0 = 0, c1 = cols;
    if (slice_dim == 0 || slice_dim == 1) {
        int64_t extent = slice_dim == 0 ? rows : cols;
        if (slice_begin < 0 || slice_len < 0 || slice_begin + slice_len > extent || ndim > 2 ||
            (slice_dim == 1 && ndim != 2)) {
            dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s: slice [%lld, +%lld) of dim %d "
                          "outside its %lld (internal layout error)", c->shard[t->file].path, name,
                          (long long)slice_begin, (long long)slice_len, slice_dim,
                          (long long)extent);
            return DPEP_ERR_INTERNAL;
        }
        if (slice_dim == 0) {
            r0 = slice_begin;
            r1 = slice_begin + slice_len;
        } else {
            c0 = slice_begin;
            c1 = slice_begin + slice_len;
        }
    }
    return convert_rect(c, t, name, rows, cols, r0, r1, c0, c1, block_h, block_w, dst, diag);
}

dpep_status dpep_ckpt_read_f32_rect(dpep_ckpt *c, const char *name, const int64_t *shape, int ndim,
                                    int64_t row0, int64_t nrows, int64_t col0, int64_t ncols,
                                    int block_h, int block_w, float *dst, dpep_diag *diag)
{
    const dpep_tensor_info *t = NULL;
    DPEP_TRY(find_checked(c, name, shape, ndim, &t, diag));
    int64_t rows, cols;
    view_2d(shape, ndim, &rows, &cols);
    if (row0 < 0 || nrows < 0 || col0 < 0 || ncols < 0 || row0 > rows - nrows ||
        col0 > cols - ncols || ndim > 2) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s: rows [%lld, +%lld) x cols [%lld, "
                      "+%lld) outside its [%lld, %lld] (internal layout error)",
                      c->shard[t->file].path, name, (long long)row0, (long long)nrows,
                      (long long)col0, (long long)ncols, (long long)rows, (long long)cols);
        return DPEP_ERR_INTERNAL;
    }
    return convert_rect(c, t, name, rows, cols, row0, row0 + nrows, col0, col0 + ncols, block_h,
                        block_w, dst, diag);
}

dpep_status dpep_ckpt_read_rect_stored(dpep_ckpt *c, const char *name, const int64_t *shape,
                                       int ndim, int64_t row0, int64_t nrows, int64_t col0,
                                       int64_t ncols, void *dst, dpep_diag *diag)
{
    const dpep_tensor_info *t = NULL;
    DPEP_TRY(find_checked(c, name, shape, ndim, &t, diag));
    int64_t rows, cols;
    view_2d(shape, ndim, &rows, &cols);
    if (row0 < 0 || nrows < 0 || col0 < 0 || ncols < 0 || row0 > rows - nrows ||
        col0 > cols - ncols || ndim > 2 ||
        (t->dtype != DPEP_ST_BF16 && t->dtype != DPEP_ST_F16 && t->dtype != DPEP_ST_F8_E4M3)) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: tensor %s (%s): rows [%lld, +%lld) x cols "
                      "[%lld, +%lld) of [%lld, %lld] cannot be copied as stored (internal error)",
                      c->shard[t->file].path, name, dpep_st_dtype_name(t->dtype), (long long)row0,
                      (long long)nrows, (long long)col0, (long long)ncols, (long long)rows,
                      (long long)cols);
        return DPEP_ERR_INTERNAL;
    }
    if (nrows == 0 || ncols == 0) return DPEP_OK;
    const shard *s = &c->shard[t->file];
    const unsigned char *base = s->map + s->data_off + t->begin;
    unsigned char *o = dst;
    const size_t es = dpep_st_dtype_size(t->dtype);
    for (int64_t r = row0; r < row0 + nrows; r++)
        memcpy(o + (size_t)((r - row0) * ncols) * es, base + (size_t)(r * cols + col0) * es,
               (size_t)ncols * es);
    release_pages(base + (size_t)(row0 * cols + col0) * es,
                  (size_t)((nrows - 1) * cols + ncols) * es);
    return DPEP_OK;
}
