/* cmd_text.c — `dpep tokenize` and `dpep detokenize`: the tokenizer of a
 * model directory (tokenizer.json + tokenizer_config.json only) from the
 * command line, scriptable: ids as one JSON array on stdout, text as is. */
#include "dpep_cli.h"
#include "dpep_text.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void dpep_cmd_tokenize_help(FILE *f)
{
    fprintf(f,
            "Encodes text with DIR's Hugging Face tokenizer (tokenizer.json and\n"
            "tokenizer_config.json; no config.json or weights needed) and prints the ids as\n"
            "one JSON array on stdout.\n"
            "  dpep tokenize DIR --text TEXT [--no-special-tokens]\n"
            "  dpep tokenize DIR --text-file FILE [--no-special-tokens]\n"
            "  dpep tokenize DIR --chat MESSAGES.json [--add-generation-prompt] [--thinking] [--render]\n\n"
            "  --text TEXT             the text (UTF-8)\n"
            "  --text-file FILE        the text from a file ('-': stdin), byte for byte\n"
            "  --no-special-tokens     do not add bos/eos (add_bos_token / add_eos_token)\n"
            "  --chat FILE             a conversation ('-': stdin): a JSON array of OpenAI\n"
            "                          messages, or an object with \"messages\", rendered with\n"
            "                          the tokenizer's chat template (DeepSeek V2/V2.5/V3/\n"
            "                          V3.1/R1), then encoded\n"
            "  --add-generation-prompt end with the assistant's turn opener\n"
            "  --thinking              V3.1's thinking mode\n"
            "  --render                print the rendered text instead of the ids\n"
            "Exit codes: 0 ok, 2 bad input (a missing or garbled tokenizer, invalid UTF-8,\n"
            "an unsupported chat template), 1 runtime failure.\n");
}

void dpep_cmd_detokenize_help(FILE *f)
{
    fprintf(f,
            "Decodes ids with DIR's tokenizer and prints the text (no newline added).\n"
            "  dpep detokenize DIR [--skip-special-tokens] ID...\n"
            "  dpep detokenize DIR [--skip-special-tokens] --ids '[1, 2, 3]'\n");
}

/* The whole of FILE ('-': stdin), NUL-terminated; NULL with the reason in
 * `why`. A named FILE must be a regular file: a FIFO without a writer would
 * block open(), /dev/zero would never end. */
static char *read_file(const char *path, size_t *len, char *why, size_t why_len)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : dpep_fopen_regular(path, 0, why, why_len);
    if (!f) {
        size_t k = strlen(why); /* a pipe such as <(cmd) is refused too: stdin takes one */
        if (strstr(why, "FIFO")) snprintf(why + k, why_len - k, "; '-' reads stdin");
        return NULL;
    }
    char *buf = NULL;
    int64_t cap = 0;
    size_t n = 0;
    bool ok = true;
    for (;;) {
        if (!(ok = dpep_grow((void **)&buf, &cap, (int64_t)n + 4097, 1))) break;
        size_t r = fread(buf + n, 1, (size_t)cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    int err = ok && ferror(f) ? (errno ? errno : EIO) : 0;
    if (f != stdin) fclose(f);
    if (!ok || err) {
        snprintf(why, why_len, "%s", ok ? "read error: " : "out of memory");
        if (err) snprintf(why + strlen(why), why_len - strlen(why), "%s", strerror(err));
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

static void print_ids(const int32_t *ids, size_t n)
{
    putchar('[');
    for (size_t i = 0; i < n; i++) printf(i ? ", %d" : "%d", ids[i]);
    printf("]\n");
}

typedef struct tok_args {
    const char *dir, *text, *text_file, *chat;
    bool no_special, gen_prompt, thinking, render;
} tok_args;

static int parse_tok_args(int argc, char **argv, tok_args *a)
{
    memset(a, 0, sizeof *a);
    for (int i = 0; i < argc; i++) {
        const char *x = argv[i];
        const char **val = strcmp(x, "--text") == 0        ? &a->text
                           : strcmp(x, "--text-file") == 0 ? &a->text_file
                           : strcmp(x, "--chat") == 0      ? &a->chat
                                                           : NULL;
        if (val) {
            if (i + 1 >= argc) {
                fprintf(stderr, "dpep tokenize: %s needs a value\n", x);
                return 2;
            }
            *val = argv[++i];
        } else if (strcmp(x, "--no-special-tokens") == 0) {
            a->no_special = true;
        } else if (strcmp(x, "--add-generation-prompt") == 0) {
            a->gen_prompt = true;
        } else if (strcmp(x, "--thinking") == 0) {
            a->thinking = true;
        } else if (strcmp(x, "--render") == 0) {
            a->render = true;
        } else if (x[0] == '-' && x[1]) {
            fprintf(stderr, "dpep tokenize: unknown option %s (see dpep tokenize --help)\n", x);
            return 2;
        } else if (!a->dir) {
            a->dir = x;
        } else {
            fprintf(stderr, "dpep tokenize: unexpected argument %s\n", x);
            return 2;
        }
    }
    int inputs = (a->text != NULL) + (a->text_file != NULL) + (a->chat != NULL);
    if (!a->dir || inputs != 1) {
        fprintf(stderr, "dpep tokenize: expected DIR and exactly one of --text, --text-file, --chat "
                        "(see dpep tokenize --help)\n");
        return 2;
    }
    return 0;
}

static dpep_status tokenize_chat(const dpep_tokenizer *t, const tok_args *a, dpep_diag *diag)
{
    size_t len = 0;
    char why[160];
    char *json = read_file(a->chat, &len, why, sizeof why);
    if (!json) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "--chat %s: %s", a->chat, why);
        return DPEP_ERR_INVALID;
    }
    dpep_chat_conv conv;
    dpep_status st = dpep_chat_parse_json(json, len, a->chat, &conv, diag);
    free(json);
    if (st != DPEP_OK) return st;
    dpep_chat_opts o = {.add_generation_prompt = a->gen_prompt, .thinking = a->thinking};
    if (a->render) {
        char *text = NULL;
        st = dpep_tok_chat_render(t, conv.msg, conv.n, &o, &text, &len, diag);
        if (st == DPEP_OK) fwrite(text, 1, len, stdout);
        free(text);
    } else {
        int32_t *ids = NULL;
        size_t n = 0;
        st = dpep_tok_chat_encode(t, conv.msg, conv.n, &o, &ids, &n, diag);
        if (st == DPEP_OK) print_ids(ids, n);
        free(ids);
    }
    dpep_chat_conv_free(&conv);
    return st;
}

int dpep_cmd_tokenize(int argc, char **argv)
{
    tok_args a;
    int rc = parse_tok_args(argc, argv, &a);
    if (rc) return rc;
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_tokenizer *t = NULL;
    dpep_status st = dpep_tok_load(a.dir, &t, &diag);
    if (st == DPEP_OK && a.chat) {
        st = tokenize_chat(t, &a, &diag);
    } else if (st == DPEP_OK) {
        size_t len = a.text ? strlen(a.text) : 0;
        char why[160];
        char *buf = a.text_file ? read_file(a.text_file, &len, why, sizeof why) : NULL;
        if (a.text_file && !buf) {
            dpep_diag_add(&diag, DPEP_DIAG_ERROR, "--text-file %s: %s", a.text_file, why);
            st = DPEP_ERR_INVALID;
        } else {
            int32_t *ids = NULL;
            size_t n = 0;
            st = dpep_tok_encode(t, buf ? buf : a.text, len, !a.no_special, &ids, &n, &diag);
            if (st == DPEP_OK) print_ids(ids, n);
            free(ids);
        }
        free(buf);
    }
    dpep_diag_print(&diag, stderr);
    dpep_tok_free(t);
    return dpep_status_exit_code(st);
}

/* ids from "1 2 3" arguments or one JSON-ish list "[1, 2, 3]". */
static int parse_ids(int argc, char **argv, int first, int32_t **ids, size_t *n)
{
    int64_t cap = 0, k = 0;
    *ids = NULL;
    for (int i = first; i < argc; i++) {
        for (char *p = argv[i]; *p;) {
            while (*p == '[' || *p == ']' || *p == ',' || *p == ' ') p++;
            if (!*p) break;
            char *end;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (end == p || errno || v < INT32_MIN || v > INT32_MAX) {
                fprintf(stderr, "dpep detokenize: %s: not a token id\n", argv[i]);
                return 2;
            }
            if (!dpep_grow((void **)ids, &cap, k + 1, sizeof **ids)) return 1;
            (*ids)[k++] = (int32_t)v;
            p = end;
        }
    }
    if (!*ids && !dpep_grow((void **)ids, &cap, 1, sizeof **ids)) return 1;
    *n = (size_t)k;
    return 0;
}

int dpep_cmd_detokenize(int argc, char **argv)
{
    const char *dir = NULL;
    bool skip = false;
    int first = argc;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--skip-special-tokens") == 0) {
            skip = true;
        } else if (strcmp(argv[i], "--ids") == 0) {
            continue;
        } else if (argv[i][0] == '-' && argv[i][1] && (argv[i][1] < '0' || argv[i][1] > '9')) {
            fprintf(stderr, "dpep detokenize: unknown option %s (see dpep detokenize --help)\n", argv[i]);
            return 2;
        } else if (!dir) {
            dir = argv[i];
        } else {
            first = i;
            break;
        }
    }
    if (!dir) {
        fprintf(stderr, "dpep detokenize: expected DIR and ids (see dpep detokenize --help)\n");
        return 2;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = parse_ids(argc, argv, first, &ids, &n);
    if (rc) {
        free(ids);
        return rc;
    }
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_tokenizer *t = NULL;
    dpep_status st = dpep_tok_load(dir, &t, &diag);
    char *text = NULL;
    size_t len = 0;
    if (st == DPEP_OK) st = dpep_tok_decode(t, ids, n, skip, &text, &len, &diag);
    if (st == DPEP_OK) fwrite(text, 1, len, stdout);
    dpep_diag_print(&diag, stderr);
    free(text);
    free(ids);
    dpep_tok_free(t);
    return dpep_status_exit_code(st);
}
