/* test_config.c — config loader cases: each valid case checks the values it
 * sets, each invalid one checks that the message names the file, line,
 * column and key ("c.yaml:LINE:COL: section.key:") and the status. Files
 * are written to a temporary directory as c.yaml. Also checks that every
 * YAML file under configs/ is valid. */
#include "dpep_config.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct tcase {
    const char *name;
    const char *yaml;     /* file contents (NULL: use `bytes`)                 */
    const char *args;     /* space-separated overrides, or NULL                */
    int world;            /* --world, 0 none                                   */
    const char *conf;     /* --configuration                                   */
    dpep_status expect;   /* status of load + overrides + validate             */
    const char *msg;      /* substring of an error (or note) that must appear  */
    const char *check;    /* "key=value" pairs (space-separated) after success */
} tcase;

#define OK DPEP_OK
#define BAD DPEP_ERR_INVALID
#define USAGE DPEP_ERR_USAGE

static const tcase k_cases[] = {
    /* ---------------- valid ---------------- */
    {"full", "model:\n  path: /models/v3\n  dtype: bf16\nparallel:\n  tp: 4\n  dp: 4\n  ep: 4\n"
     "  enable_dp_attention: true\n  moe_a2a_backend: alltoall\n  moe_dense_tp_size: 1\n"
     "runtime:\n  device: cpu\n  page_size: 16\n  chunked_prefill_size: 256\n"
     "launch:\n  nodes: 1\nworkload:\n  kind: random\n  num_prompts: 8\n",
     NULL, 4, NULL, OK, NULL,
     "model.path=\"/models/v3\" model.dtype=bf16 parallel.tp=4 parallel.enable_dp_attention=true "
     "parallel.moe_dense_tp_size=1 runtime.page_size=16 workload.num_prompts=8"},
    {"minimal", "parallel: {tp: 8}\n", NULL, 8, NULL, OK, NULL,
     "parallel.tp=8 parallel.dp=1 parallel.ep=1 parallel.moe_dense_tp_size=null"},
    {"dpa_full", "parallel: {tp: 8, dp: 8, ep: 8, enable_dp_attention: true}\n", NULL, 8, NULL,
     OK, NULL, "parallel.enable_dp_attention=true"},
    {"dpa_attn_tp2", "parallel: {tp: 8, dp: 4, ep: 8, enable_dp_attention: yes}\n", NULL, 8,
     NULL, OK, NULL, "parallel.dp=4"},
    {"replicas", "parallel:\n  tp: 2\n  dp: 4\n", NULL, 8, NULL, OK, NULL,
     "parallel.enable_dp_attention=false"},
    {"cookbook_pick", "configurations:\n  - name: default\n    optimization: balanced\n    tp: 8\n"
     "  - name: high-throughput-dp\n    optimization: high-throughput\n    tp: 8\n    dp: 8\n"
     "    enable_dp_attention: true\n  - name: low-latency\n    optimization: low-latency\n"
     "    tp: 8\n", NULL, 8, "high-throughput-dp", OK, NULL,
     "parallel.tp=8 parallel.dp=8 parallel.enable_dp_attention=true"},
    {"cookbook_single", "runtime: {page_size: 32}\nconfigurations:\n  - name: only\n    tp: 2\n",
     NULL, 2, NULL, OK, NULL, "parallel.tp=2 runtime.page_size=32"},
    {"cookbook_over_section", "parallel: {tp: 4, ep: 2}\nconfigurations:\n  - name: a\n    tp: 8\n",
     NULL, 8, NULL, OK, NULL, "parallel.tp=8 parallel.ep=2"},
    {"flat_keys", "tp: 8\ndp: 8\nenable_dp_attention: true\n", NULL, 8, NULL, OK, NULL,
     "parallel.tp=8 parallel.enable_dp_attention=true"},
    {"dpa_dp1_note", "parallel:\n  tp: 4\n  enable_dp_attention: true\n", NULL, 4, NULL, OK,
     "c.yaml:3:3: parallel.enable_dp_attention: dp == 1", "parallel.enable_dp_attention=false"},
    {"a2a_none_alias", "parallel: {moe_a2a_backend: none}\n", NULL, 0, NULL, OK, NULL,
     "parallel.moe_a2a_backend=allgather"},
    {"lb_dash_alias", "runtime: {load_balance_method: total-requests}\n", NULL, 0, NULL, OK, NULL,
     "runtime.load_balance_method=shortest_queue"},
    {"dense_null_tilde", "parallel: {moe_dense_tp_size: ~}\n", NULL, 0, NULL, OK, NULL,
     "parallel.moe_dense_tp_size=null"},
    {"overrides", "parallel: {tp: 2}\n", "--tp 4 --dp-size=4 --enable-dp-attention --set parallel.ep=2",
     4, NULL, OK, NULL, "parallel.tp=4 parallel.dp=4 parallel.ep=2 parallel.enable_dp_attention=true"},
    {"override_null", "parallel: {moe_dense_tp_size: 1}\n", "--moe-dense-tp-size null", 0, NULL,
     OK, NULL, "parallel.moe_dense_tp_size=null"},
    {"maps", "launch:\n  mca: {btl: \"self,tcp\", pml: ob1}\n  env:\n    OMP_NUM_THREADS: 2\n",
     "--set launch.env.DPEP_X=1 --set launch.mca.btl=vader,self", 0, NULL, OK, NULL,
     "launch.mca={btl: \"vader,self\", pml: \"ob1\"} launch.env={OMP_NUM_THREADS: \"2\", DPEP_X: \"1\"}"},
    {"relative_path", "model: {path: models/x}\nlaunch: {hostfile: /etc/hosts}\n", NULL, 0, NULL,
     OK, NULL, "model.path=@/models/x\" launch.hostfile=\"/etc/hosts\""},
    {"null_section", "runtime:\nparallel: {tp: 2}\n", NULL, 2, NULL, OK, NULL, "parallel.tp=2"},
    {"doc_markers", "%YAML 1.1\n---\n# comment\nparallel: {tp: 2} # trailing\n...\n", NULL, 2,
     NULL, OK, NULL, "parallel.tp=2"},
    {"enum_case", "model: {dtype: F32}\nruntime: {bind: NUMA}\n", NULL, 0, NULL, OK, NULL,
     "model.dtype=f32 runtime.bind=numa"},
    {"plus_int_float_int", "runtime: {comm_timeout_s: 60, mem_fraction_static: 1}\n", NULL, 0,
     NULL, OK, NULL, "runtime.comm_timeout_s=60 runtime.mem_fraction_static=1"},
    {"world_96", "parallel: {tp: 96, dp: 48, ep: 96, enable_dp_attention: true}\n"
     "launch: {nodes: 12, gpus_per_node: 8}\n", NULL, 96, NULL, OK, NULL, "launch.nodes=12"},

    /* ---------------- invalid: types and bounds ---------------- */
    {"tp_zero", "parallel:\n  tp: 0\n", NULL, 0, NULL, BAD, "c.yaml:2:3: parallel.tp: 0 is out of range", NULL},
    {"tp_float", "parallel:\n  dp: 2\n  tp: 3.0\n", NULL, 0, NULL, BAD, "c.yaml:3:3: parallel.tp: got the number 3.0 (expected an integer)", NULL},
    {"tp_quoted", "parallel: {tp: \"8\"}\n", NULL, 0, NULL, BAD, "c.yaml:1:12: parallel.tp: got the string", NULL},
    {"tp_overflow", "parallel:\n  tp: 99999999999999999999999\n", NULL, 0, NULL, BAD, "c.yaml:2:3: parallel.tp:", NULL},
    {"tp_word", "parallel:\n  tp: eight\n", NULL, 0, NULL, BAD, "c.yaml:2:3: parallel.tp: got \"eight\" (expected an integer)", NULL},
    {"dp_seq", "parallel:\n  dp: [1, 2]\n", NULL, 0, NULL, BAD, "c.yaml:2:3: parallel.dp: got a sequence", NULL},
    {"bool_bad", "parallel:\n  enable_dp_attention: maybe\n", NULL, 0, NULL, BAD, "c.yaml:2:3: parallel.enable_dp_attention: got \"maybe\" (expected true or false)", NULL},
    {"enum_bad", "parallel:\n  moe_a2a_backend: deepep\n", NULL, 0, NULL, BAD, "c.yaml:2:3: parallel.moe_a2a_backend: unknown value \"deepep\" (expected alltoall|allgather)", NULL},
    {"enum_typo", "parallel:\n  moe_a2a_backend: alltoal\n", NULL, 0, NULL, BAD, "did you mean alltoall?", NULL},
    {"dense_two", "parallel:\n  moe_dense_tp_size: 2\n", NULL, 0, NULL, BAD, "c.yaml:2:3: parallel.moe_dense_tp_size: got 2 (expected 1 or null)", NULL},
    {"page_not_pow2", "runtime:\n  page_size: 48\n", NULL, 0, NULL, BAD, "c.yaml:2:3: runtime.page_size: 48 is not a power of two", NULL},
    {"chunk_multiple", "runtime:\n  page_size: 64\n  chunked_prefill_size: 100\n", NULL, 0, NULL, BAD, "c.yaml:3:3: runtime.chunked_prefill_size: 100 is not a multiple of page_size 64", NULL},
    {"memfrac_zero", "runtime:\n  mem_fraction_static: 0\n", NULL, 0, NULL, BAD, "c.yaml:2:3: runtime.mem_fraction_static: 0 is out of range (expected a number in (0, 1])", NULL},
    {"memfrac_big", "runtime:\n  mem_fraction_static: 1.5\n", NULL, 0, NULL, BAD, "c.yaml:2:3: runtime.mem_fraction_static: 1.5 is out of range", NULL},
    {"memfrac_nan", "runtime:\n  mem_fraction_static: nan\n", NULL, 0, NULL, BAD, "c.yaml:2:3: runtime.mem_fraction_static: got \"nan\" (expected a number)", NULL},
    {"seed_negative", "runtime:\n  seed: -1\n", NULL, 0, NULL, BAD, "c.yaml:2:3: runtime.seed: -1 is out of range", NULL},
    {"string_nul_escape", "model:\n  path: \"a\\0b\"\n", NULL, 0, NULL, BAD, "c.yaml:2:3: model.path: value contains a NUL character", NULL},
    {"string_is_map", "model:\n  path: {a: 1}\n", NULL, 0, NULL, BAD, "c.yaml:2:3: model.path: got a mapping (expected a string)", NULL},

    /* ---------------- invalid: keys and structure ---------------- */
    {"unknown_key", "parallel:\n  tp: 2\n  tpp: 4\n", NULL, 0, NULL, BAD, "c.yaml:3:3: parallel.tpp: unknown key (expected one of: tp, dp, ep,", NULL},
    {"unknown_key_dym", "parallel:\n  enable_dp_atention: true\n", NULL, 0, NULL, BAD, "did you mean parallel.enable_dp_attention?", NULL},
    {"unknown_section", "paralel:\n  tp: 2\n", NULL, 0, NULL, BAD, "c.yaml:1:1: paralel: unknown key (expected one of: model, parallel,", NULL},
    {"key_wrong_section", "page_size: 64\n", NULL, 0, NULL, BAD, "c.yaml:1:1: page_size: unknown key", NULL},
    {"key_wrong_section_hint", "runtime:\n  nodes: 2\n", NULL, 0, NULL, BAD, "nodes belongs under launch:", NULL},
    {"duplicate_key", "parallel:\n  tp: 2\n  dp: 2\n  tp: 4\n", NULL, 0, NULL, BAD, "c.yaml:4:3: parallel.tp: duplicate key (first at line 2", NULL},
    {"duplicate_section", "runtime: {seed: 1}\nruntime: {seed: 2}\n", NULL, 0, NULL, BAD, "c.yaml:2:1: runtime: duplicate key (first at line 1", NULL},
    {"flat_and_section", "tp: 8\nparallel:\n  tp: 4\n", NULL, 0, NULL, BAD, "c.yaml:3:3: parallel.tp: set twice (first at line 1:1", NULL},
    {"section_scalar", "parallel: 8\n", NULL, 0, NULL, BAD, "c.yaml:1:11: parallel: got a scalar (expected a mapping of parallel options)", NULL},
    {"section_seq", "runtime:\n  - page_size: 64\n", NULL, 0, NULL, BAD, "c.yaml:2:3: runtime: got a sequence", NULL},
    {"key_is_mapping", "? [a, b]\n: 1\n", NULL, 0, NULL, BAD, "c.yaml:1:3: top level: a key that is a sequence", NULL},
    {"top_sequence", "- tp: 8\n", NULL, 0, NULL, BAD, "c.yaml:1:1: top level is a sequence", NULL},
    {"top_scalar", "hello\n", NULL, 0, NULL, BAD, "c.yaml:1:1: top level is a scalar", NULL},

    /* ---------------- invalid: YAML itself and hostile input ---------------- */
    {"syntax_unclosed", "parallel: {tp: 8\nruntime: {}\n", NULL, 0, NULL, BAD, "c.yaml:2:8: YAML syntax error: did not find expected ',' or '}'", NULL},
    {"syntax_tab", "parallel:\n\ttp: 8\n", NULL, 0, NULL, BAD, "c.yaml:2:1: YAML syntax error", NULL},
    {"syntax_bad_indent", "parallel:\n  tp: 8\n dp: 2\n", NULL, 0, NULL, BAD, "c.yaml:3:2: YAML syntax error", NULL},
    {"empty_file", "", NULL, 0, NULL, BAD, "c.yaml:1:1: empty config", NULL},
    {"only_comments", "# nothing here\n\n# at all\n", NULL, 0, NULL, BAD, "c.yaml:1:1: empty config", NULL},
    {"binary_garbage", "\xff\xfe\x01\x02\x80\x81garbage\xc3\x28", NULL, 0, NULL, BAD, "c.yaml:1:1: YAML syntax error", NULL},
    {"bad_utf8_midway", "parallel:\n  tp: 8\n  dp: \xc3\x28\n", NULL, 0, NULL, BAD, "c.yaml:3:8: YAML syntax error: invalid trailing UTF-8 octet", NULL},
    {"alias_bomb", "a: &a [\"lol\",\"lol\",\"lol\",\"lol\"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\n"
     "c: &c [*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c]\n", NULL, 0, NULL, BAD,
     "c.yaml:2:8: YAML alias *a (aliases are not supported", NULL},
    {"alias_value", "parallel:\n  tp: &n 8\n  dp: *n\n", NULL, 0, NULL, BAD, "c.yaml:3:7: YAML alias *n", NULL},
    {"two_documents", "parallel: {tp: 2}\n---\nparallel: {tp: 4}\n", NULL, 0, NULL, BAD, "c.yaml:2:1: a second YAML document", NULL},
    {"yaml_tag", "parallel:\n  tp: !!int 8\n", NULL, 0, NULL, BAD, "c.yaml:2:7: YAML tag", NULL},
    /* deep nesting, NUL byte, huge file and many keys are built in main() */

    /* ---------------- invalid: layout rules ---------------- */
    {"dpa_tp_mod_dp", "parallel:\n  tp: 8\n  dp: 3\n  enable_dp_attention: true\n", NULL, 0, NULL, BAD, "c.yaml:3:3: parallel.dp: DP attention needs tp % dp == 0 (tp = 8, dp = 3", NULL},
    {"ep_not_divides", "parallel:\n  tp: 8\n  ep: 3\n", NULL, 0, NULL, BAD, "c.yaml:3:3: parallel.ep: ep must divide tp (tp = 8, ep = 3; expected one of 1, 2, 4, 8)", NULL},
    {"ep_bigger", "parallel:\n  tp: 4\n  ep: 8\n", NULL, 0, NULL, BAD, "c.yaml:3:3: parallel.ep: ep must divide tp", NULL},
    {"world_mismatch_dpa", "parallel:\n  tp: 4\n  dp: 4\n  enable_dp_attention: true\n", NULL, 8, NULL, BAD, "c.yaml:2:3: parallel.tp: the world has 8 ranks but tp = 4 (rule: with DP attention world = tp)", NULL},
    {"world_mismatch_replicas", "parallel:\n  tp: 4\n  dp: 4\n", NULL, 8, NULL, BAD, "c.yaml:2:3: parallel.tp: the world has 8 ranks but tp × dp = 4 × 4 = 16 (rule: without DP attention world = tp × dp)", NULL},
    {"nodes_not_divide", "parallel: {tp: 8}\nlaunch:\n  nodes: 3\n", NULL, 0, NULL, BAD, "c.yaml:3:3: launch.nodes: 3 nodes do not divide the world of 8 ranks", NULL},
    {"gpus_per_node_mismatch", "parallel: {tp: 8}\nlaunch:\n  nodes: 1\n  gpus_per_node: 4\n", NULL, 0, NULL, BAD, "c.yaml:4:3: launch.gpus_per_node: nodes × gpus_per_node = 1 × 4 = 4 but the world has 8 ranks", NULL},
    {"shm_transport_spans_nodes", "parallel: {tp: 16, ep: 8, moe_a2a_transport: shm}\nlaunch:\n  nodes: 2\n", NULL, 0, NULL, BAD, "c.yaml:1:27: parallel.moe_a2a_transport: shm needs each EP group on one node, but an instance of tp = 16 spans 2 nodes of 8 ranks (expected auto or mpi)", NULL},
    {"shm_transport_one_node", "parallel: {tp: 16, dp: 2, ep: 8, moe_a2a_transport: shm}\nlaunch:\n  nodes: 2\n", NULL, 0, NULL, OK, NULL, "parallel.moe_a2a_transport=shm"},
    {"shm_transport_ep1_spans", "moe_a2a_transport: shm\nparallel: {tp: 16}\nlaunch:\n  nodes: 2\n", NULL, 0, NULL, OK, NULL, "parallel.moe_a2a_transport=shm"},
    {"auto_transport_spans", "parallel: {tp: 16, ep: 16}\nlaunch:\n  nodes: 2\n", NULL, 0, NULL, OK, NULL, "parallel.moe_a2a_transport=auto"},
    {"instance_straddles_nodes", "parallel: {tp: 2, dp: 3}\nlaunch:\n  nodes: 2\n", NULL, 0, NULL, BAD, "c.yaml:3:3: launch.nodes: 3 ranks per node and tp = 2", NULL},
    {"file_without_path", "workload:\n  kind: file\n", NULL, 0, NULL, BAD, "c.yaml:2:3: workload.kind: kind is file but workload.path is empty", NULL},

    /* ---------------- invalid: cookbook ---------------- */
    {"cookbook_unknown_name", "configurations:\n  - name: a\n    tp: 2\n  - name: b\n    tp: 4\n", NULL, 0, "zzz", BAD, "c.yaml:1:1: configurations: no entry named \"zzz\" (available: a, b)", NULL},
    {"cookbook_none_chosen", "configurations:\n  - name: a\n    tp: 2\n  - name: b\n    tp: 4\n", NULL, 0, NULL, BAD, "configurations: 2 entries and none chosen (expected --configuration NAME; available: a, b)", NULL},
    {"cookbook_unknown_key", "configurations:\n  - name: a\n    tpp: 2\n", NULL, 0, NULL, BAD, "c.yaml:3:5: configurations.tpp: unknown key", NULL},
    {"cookbook_dup_name", "configurations:\n  - name: a\n    tp: 2\n  - name: a\n    tp: 4\n", NULL, 0, "a", BAD, "c.yaml:4:11: configurations.name: \"a\" is used twice (first at line 2", NULL},
    {"cookbook_bad_unselected", "configurations:\n  - name: a\n    tp: 2\n  - name: b\n    tp: x\n", NULL, 0, "a", BAD, "c.yaml:5:5: parallel.tp: got \"x\" (expected an integer)", NULL},
    {"cookbook_no_name", "configurations:\n  - tp: 2\n", NULL, 0, NULL, BAD, "c.yaml:2:5: configurations: entry has no name", NULL},
    {"cookbook_not_list", "configurations: {name: a}\n", NULL, 0, NULL, BAD, "c.yaml:1:17: configurations: got a mapping (expected a list", NULL},
    {"cookbook_flag_no_list", "parallel: {tp: 2}\n", NULL, 0, "a", BAD, "c.yaml:1:1: configurations: --configuration a given but the file has no configurations", NULL},

    /* ---------------- invalid: maps ---------------- */
    {"env_bad_name", "launch:\n  env:\n    1BAD: x\n", NULL, 0, NULL, BAD, "c.yaml:3:5: launch.env: bad name \"1BAD\"", NULL},
    {"mca_list_value", "launch:\n  mca:\n    btl: [self, tcp]\n", NULL, 0, NULL, BAD, "c.yaml:3:5: launch.mca.btl: got a sequence (expected a scalar value)", NULL},
    {"env_dup", "launch:\n  env:\n    A: 1\n    A: 2\n", NULL, 0, NULL, BAD, "c.yaml:4:5: launch.env.A: duplicate key", NULL},
    {"map_scalar", "launch:\n  env: FOO=1\n", NULL, 0, NULL, BAD, "c.yaml:2:3: launch.env: got a scalar (expected a mapping", NULL},

    /* ---------------- invalid: command line ---------------- */
    {"flag_typo", "parallel: {tp: 2}\n", "--tp-siz 4", 0, NULL, USAGE, "command line: unknown option --tp-siz; did you mean --tp-size?", NULL},
    {"flag_bad_value", "parallel: {tp: 2}\n", "--page-size 3", 0, NULL, BAD, "command line --page-size: runtime.page_size: 3 is not a power of two", NULL},
    {"flag_missing_value", "parallel: {tp: 2}\n", "--dp-size", 0, NULL, USAGE, "command line --dp-size: missing value", NULL},
    {"set_unknown", "parallel: {tp: 2}\n", "--set parallel.tpp=4", 0, NULL, USAGE, "parallel.tpp: unknown option (expected section.key, see dpep config options); did you mean parallel.tp?", NULL},
    {"set_no_equals", "parallel: {tp: 2}\n", "--set parallel.tp", 0, NULL, USAGE, "command line --set: expected section.key=value", NULL},
    {"override_breaks_rule", "parallel: {tp: 8, dp: 8, enable_dp_attention: true}\n", "--dp 3", 0, NULL, BAD, "command line --dp: parallel.dp: DP attention needs tp % dp == 0", NULL},
};
#define N_CASES (sizeof k_cases / sizeof k_cases[0])

static char g_dir[256];

#define EXPECT(cond, ...)                                                                      \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            printf("FAIL %s: ", name);                                                        \
            printf(__VA_ARGS__);                                                               \
            printf("\n");                                                                      \
            return 1;                                                                          \
        }                                                                                      \
    } while (0)

static const char *write_file(const char *base, const char *data, size_t len)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", g_dir, base);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len) {
        perror(path);
        exit(1);
    }
    fclose(f);
    return path;
}

/* Runs load + overrides + validate like `dpep config check` does. */
static dpep_status run_case(const char *path, const char *args, int world, const char *conf,
                            dpep_config *cfg, dpep_diag *diag)
{
    dpep_status st = dpep_config_load_file(cfg, path, conf, diag);
    if (st == DPEP_OK && args) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", args);
        char *argv[32];
        int argc = 0;
        for (char *t = strtok(buf, " "); t && argc < 32; t = strtok(NULL, " ")) argv[argc++] = t;
        for (int i = 0; i < argc && st == DPEP_OK;) st = dpep_config_parse_flag(cfg, argc, argv, &i, diag);
    }
    if (st == DPEP_OK) st = dpep_config_validate(cfg, world, diag);
    if (st == DPEP_OK) {
        dpep_layout l;
        st = dpep_layout_from_config(cfg, world, &l);
    }
    return st;
}

static bool any_msg(const dpep_diag *d, const char *needle)
{
    for (int i = 0; i < d->n; i++)
        if (strstr(d->item[i].msg, needle)) return true;
    return false;
}

static int check_values(const char *name, const dpep_config *cfg, const char *check)
{
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", check);
    /* pairs are separated by spaces outside {…} */
    char *p = buf;
    while (*p) {
        while (*p == ' ') p++;
        if (!*p) break;
        char *start = p;
        int depth = 0;
        while (*p && (depth > 0 || *p != ' ')) {
            if (*p == '{') depth++;
            if (*p == '}') depth--;
            p++;
        }
        if (*p) *p++ = '\0';
        char *eq = strchr(start, '=');
        *eq = '\0';
        const char *want = eq + 1;
        int i = dpep_config_option_find(start);
        EXPECT(i >= 0, "unknown option %s in check", start);
        char got[2048];
        dpep_config_format_value(cfg, i, got, sizeof got);
        if (want[0] == '@') { /* "@/x": path under the test dir */
            char full[768];
            snprintf(full, sizeof full, "\"%s%s", g_dir, want + 1);
            EXPECT(strcmp(got, full) == 0, "%s = %s, expected %s", start, got, full);
        } else {
            EXPECT(strcmp(got, want) == 0, "%s = %s, expected %s", start, got, want);
        }
    }
    return 0;
}

static int one_case(const tcase *c, const char *bytes, size_t len)
{
    const char *name = c->name;
    const char *path = write_file("c.yaml", bytes, len);
    dpep_config cfg;
    if (dpep_config_init(&cfg) != DPEP_OK) return 1;
    dpep_diag diag;
    dpep_diag_init(&diag);
    clock_t t0 = clock();
    dpep_status st = run_case(path, c->args, c->world, c->conf, &cfg, &diag);
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    int rc = 0;
    if (st != c->expect) {
        printf("FAIL %s: status %s, expected %s\n", name, dpep_status_string(st),
               dpep_status_string(c->expect));
        dpep_diag_print(&diag, stdout);
        rc = 1;
    } else if (c->msg && !any_msg(&diag, c->msg)) {
        printf("FAIL %s: no message containing\n    %s\n  got:\n", name, c->msg);
        dpep_diag_print(&diag, stdout);
        rc = 1;
    } else if (c->expect != DPEP_OK && diag.n_errors == 0) {
        printf("FAIL %s: rejected without an error message\n", name);
        rc = 1;
    } else if (c->expect == DPEP_OK && c->check) {
        rc = check_values(name, &cfg, c->check);
    } else if (secs > 2.0) {
        /* not a timing test: a bound on pathological work (hostile input) */
        printf("FAIL %s: took %.1f s of CPU\n", name, secs);
        rc = 1;
    }
    if (rc == 0) printf("ok   %-28s %s\n", name, c->expect == DPEP_OK ? "valid" : diag.n ? diag.item[0].msg : "");
    dpep_config_free(&cfg);
    return rc;
}

/* Cases whose input is built rather than written out. */
static int generated_cases(void)
{
    int fails = 0;
    size_t cap = DPEP_CONFIG_MAX_BYTES + 4096;
    char *buf = malloc(cap);
    size_t n;

    /* deep nesting: 200 levels of flow sequences */
    n = (size_t)sprintf(buf, "parallel:\n  tp: ");
    for (int i = 0; i < 200; i++) buf[n++] = '[';
    for (int i = 0; i < 200; i++) buf[n++] = ']';
    buf[n++] = '\n';
    tcase deep = {"deep_nesting", NULL, NULL, 0, NULL, BAD, "nesting deeper than 16 levels", NULL};
    fails += one_case(&deep, buf, n);

    /* NUL byte in the middle of line 3 */
    n = (size_t)sprintf(buf, "parallel:\n  tp: 8\n  dp: 2");
    buf[n++] = '\0';
    n += (size_t)sprintf(buf + n, "\n");
    tcase nul = {"nul_byte", NULL, NULL, 0, NULL, BAD, "c.yaml:3:8: NUL byte in file", NULL};
    fails += one_case(&nul, buf, n);

    /* over the size limit */
    n = (size_t)sprintf(buf, "parallel:\n  tp: 8\n");
    while (n < DPEP_CONFIG_MAX_BYTES + 10) buf[n++] = '#';
    tcase huge = {"huge_file", NULL, NULL, 0, NULL, BAD, "c.yaml:1:1: file is larger than 1048576 bytes", NULL};
    fails += one_case(&huge, buf, n);

    /* 100000 short keys: over the node limit */
    n = 0;
    for (int i = 0; i < 100000 && n + 16 < cap; i++) n += (size_t)sprintf(buf + n, "k%d: 1\n", i);
    tcase nodes = {"too_many_nodes", NULL, NULL, 0, NULL, BAD, "more than 65536 YAML nodes", NULL};
    fails += one_case(&nodes, buf, n);

    /* 20000 unknown keys under a section: errors are capped, work is bounded */
    n = (size_t)sprintf(buf, "runtime:\n");
    for (int i = 0; i < 20000; i++) n += (size_t)sprintf(buf + n, "  key%d: 1\n", i);
    tcase many = {"many_unknown_keys", NULL, NULL, 0, NULL, BAD, "c.yaml:2:3: runtime.key0: unknown key", NULL};
    fails += one_case(&many, buf, n);

    /* a long scalar where a number belongs */
    n = (size_t)sprintf(buf, "parallel:\n  tp: ");
    for (int i = 0; i < 100000; i++) buf[n++] = '9';
    buf[n++] = '\n';
    tcase longnum = {"long_number", NULL, NULL, 0, NULL, BAD, "c.yaml:2:3: parallel.tp:", NULL};
    fails += one_case(&longnum, buf, n);

    /* a directory instead of a file, and a missing file */
    {
        const char *name = "directory_as_file";
        dpep_config cfg;
        dpep_config_init(&cfg);
        dpep_diag d;
        dpep_diag_init(&d);
        dpep_status st = dpep_config_load_file(&cfg, g_dir, NULL, &d);
        dpep_config_free(&cfg);
        if (st != DPEP_ERR_INVALID || d.n_errors == 0) {
            printf("FAIL %s\n", name);
            fails++;
        } else {
            printf("ok   %-28s %s\n", name, d.item[0].msg);
        }
        dpep_config_init(&cfg);
        dpep_diag_init(&d);
        char missing[512];
        snprintf(missing, sizeof missing, "%s/does-not-exist.yaml", g_dir);
        st = dpep_config_load_file(&cfg, missing, NULL, &d);
        dpep_config_free(&cfg);
        if (st != DPEP_ERR_INVALID || !dpep_diag_find(&d, "does-not-exist.yaml: cannot open")) {
            printf("FAIL missing_file\n");
            fails++;
        } else {
            printf("ok   %-28s %s\n", "missing_file", d.item[0].msg);
        }
    }
    free(buf);
    return fails;
}

/* Every YAML file under configs/ must be valid (cookbook files: every entry). */
static int shipped_configs(const char *srcdir)
{
    char dir[512];
    snprintf(dir, sizeof dir, "%s/configs", srcdir);
    DIR *d = opendir(dir);
    if (!d) {
        printf("FAIL shipped configs: cannot open %s\n", dir);
        return 1;
    }
    int fails = 0, seen = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".yaml") != 0) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        dpep_config cfg;
        dpep_config_init(&cfg);
        dpep_diag diag;
        dpep_diag_init(&diag);
        dpep_status st = dpep_config_load_file(&cfg, path, NULL, &diag);
        /* A cookbook with several entries wants a name: check each. */
        if (st != DPEP_OK && dpep_diag_find(&diag, "none chosen")) {
            const char *avail = strstr(dpep_diag_find(&diag, "none chosen"), "available: ");
            char names[1024];
            snprintf(names, sizeof names, "%s", avail + 11);
            char *close = strrchr(names, ')');
            if (close) *close = '\0';
            st = DPEP_OK;
            for (char *t = strtok(names, ", "); t && st == DPEP_OK; t = strtok(NULL, ", ")) {
                dpep_config c2;
                dpep_config_init(&c2);
                dpep_diag d2;
                dpep_diag_init(&d2);
                st = dpep_config_load_file(&c2, path, t, &d2);
                if (st == DPEP_OK) st = dpep_config_validate(&c2, 0, &d2);
                if (st != DPEP_OK) dpep_diag_print(&d2, stdout);
                dpep_config_free(&c2);
            }
        } else if (st == DPEP_OK) {
            st = dpep_config_validate(&cfg, 0, &diag);
        }
        if (st != DPEP_OK) {
            printf("FAIL shipped config %s\n", e->d_name);
            dpep_diag_print(&diag, stdout);
            fails++;
        } else {
            printf("ok   shipped %s\n", e->d_name);
        }
        seen++;
        dpep_config_free(&cfg);
    }
    closedir(d);
    if (seen == 0) {
        printf("FAIL no configs/*.yaml found\n");
        fails++;
    }
    return fails;
}

int main(int argc, char **argv)
{
    snprintf(g_dir, sizeof g_dir, "/tmp/dpep-test-config-XXXXXX");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    int fails = 0, total = 0;
    for (size_t i = 0; i < N_CASES; i++, total++)
        fails += one_case(&k_cases[i], k_cases[i].yaml, strlen(k_cases[i].yaml));
    total += 8;
    fails += generated_cases();
    if (argc > 1) fails += shipped_configs(argv[1]);
    char path[512];
    snprintf(path, sizeof path, "%s/c.yaml", g_dir);
    unlink(path);
    rmdir(g_dir);
    printf("%d config cases, %d failed\n", total, fails);
    return fails ? 1 : 0;
}
