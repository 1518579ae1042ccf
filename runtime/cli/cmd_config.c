/* cmd_config.c — `dpep config check` and `dpep config options`. */
#include "dpep_cli.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

void dpep_cmd_config_options_help(FILE *f)
{
    fprintf(f, "options:\n"
               "  --markdown   print a Markdown table (docs/CONFIG.md is made from it)\n");
}

int dpep_cmd_config_options(int argc, char **argv)
{
    bool md = false;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--markdown") == 0) {
            md = true;
        } else {
            fprintf(stderr, "dpep config options: unknown argument %s (expected --markdown)\n",
                    argv[i]);
            return 2;
        }
    }
    if (!md) printf("Deployment config options (YAML section.key; override on the command "
                    "line with the flags shown or --set section.key=value):\n");
    dpep_config_print_options(stdout, md);
    return 0;
}

void dpep_cmd_config_check_help(FILE *f)
{
    fprintf(f,
            "FILE is a deployment YAML with the sections model, parallel, runtime, launch and\n"
            "workload, or a cookbook file with a top-level `configurations:` list.\n\n"
            "options:\n"
            "  --configuration NAME  pick an entry of the cookbook `configurations:` list\n"
            "  --world N             check against a job of N ranks (world = tp with DP\n"
            "                        attention, tp × dp without)\n"
            "  --json                print one JSON object: config, layout and a `ranks` array\n"
            "                        of {rank, node, instance, attn_dp_rank, attn_tp_rank,\n"
            "                        ep_rank, moe_tp_rank}\n"
            "  --set SECTION.KEY=V   override any option (also launch.mca.NAME=V, launch.env.NAME=V)\n"
            "  --tp-size N, --dp-size N, --ep-size N, --enable-dp-attention, --moe-a2a-backend B,\n"
            "  --moe-dense-tp-size 1|null, --page-size N, …: SGLang-style overrides; the full\n"
            "                        list is in `dpep config options`\n\n"
            "Errors name the place: FILE:LINE:COL: section.key: what is wrong (what was expected).\n"
            "Exit codes: 0 valid, 2 invalid config or usage.\n\n"
            "Config options (YAML section.key, type, default, allowed values, flags):\n");
    dpep_config_print_options(f, false);
}

static json_t *value_json(const dpep_config *cfg, int i)
{
    const dpep_option *o = dpep_config_option((size_t)i);
    const void *p = (const char *)cfg + o->offset;
    switch (o->type) {
    case DPEP_OPT_INT: {
        int64_t v = *(const int64_t *)p;
        return ((o->flags & DPEP_OPT_NULLABLE) && v == 0) ? json_null() : json_integer(v);
    }
    case DPEP_OPT_FLOAT: return json_real(*(const double *)p);
    case DPEP_OPT_BOOL: return json_boolean(*(const bool *)p);
    case DPEP_OPT_ENUM: return json_string(o->values[*(const int *)p]);
    case DPEP_OPT_STRING: return json_string(*(char *const *)p);
    case DPEP_OPT_MAP: {
        const dpep_kv_map *m = p;
        json_t *obj = json_object();
        for (int k = 0; k < m->n; k++) json_object_set_new(obj, m->key[k], json_string(m->value[k]));
        return obj;
    }
    }
    return json_null();
}

static int print_json(const dpep_config *cfg, const dpep_layout *l)
{
    json_t *root = json_object(), *conf = json_object();
    for (size_t i = 0; i < dpep_config_option_count(); i++) {
        const dpep_option *o = dpep_config_option(i);
        json_t *sec = json_object_get(conf, o->section);
        if (!sec) {
            sec = json_object();
            json_object_set_new(conf, o->section, sec);
        }
        json_object_set_new(sec, o->key, value_json(cfg, (int)i));
    }
    json_object_set_new(root, "source", json_string(cfg->source));
    json_object_set_new(root, "configuration",
                        cfg->configuration[0] ? json_string(cfg->configuration) : json_null());
    json_object_set_new(root, "config", conf);
    json_t *lay = json_pack("{s:i, s:i, s:i, s:i, s:b, s:i, s:i, s:i, s:i, s:i, s:i, s:i}",
                            "world", l->world, "tp", l->tp, "dp", l->dp, "ep", l->ep,
                            "dp_attention", l->dpa, "instances", l->n_instances, "attn_tp",
                            l->attn_tp, "attn_dp", l->attn_dp, "moe_tp", l->moe_tp, "dense_tp",
                            l->dense_tp, "nodes", l->nodes, "ranks_per_node", l->ranks_per_node);
    json_object_set_new(root, "layout", lay);
    json_t *ranks = json_array();
    for (int r = 0; r < l->world; r++) {
        dpep_rank_info ri;
        dpep_layout_rank(l, r, &ri);
        json_array_append_new(ranks, json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i}", "rank",
                                               ri.rank, "node", ri.node, "instance", ri.instance,
                                               "attn_dp_rank", ri.attn_dp_rank, "attn_tp_rank",
                                               ri.attn_tp_rank, "ep_rank", ri.ep_rank,
                                               "moe_tp_rank", ri.moe_tp_rank));
    }
    json_object_set_new(root, "ranks", ranks);
    int rc = json_dumpf(root, stdout, JSON_INDENT(1) | JSON_PRESERVE_ORDER) == 0 ? 0 : 1;
    fputc('\n', stdout);
    json_decref(root);
    return rc;
}

static void print_text(const dpep_config *cfg, const dpep_layout *l)
{
    printf("# %s: valid%s%s%s\n", cfg->source, cfg->configuration[0] ? " (configuration " : "",
           cfg->configuration, cfg->configuration[0] ? ")" : "");
    const char *prev = "";
    for (size_t i = 0; i < dpep_config_option_count(); i++) {
        const dpep_option *o = dpep_config_option(i);
        if (strcmp(prev, o->section) != 0) printf("%s:\n", o->section);
        prev = o->section;
        char val[2048], where[4300];
        dpep_config_format_value(cfg, (int)i, val, sizeof val);
        dpep_config_where(cfg, (int)i, where, sizeof where);
        char kv[2200];
        snprintf(kv, sizeof kv, "%s: %s", o->key, val);
        printf("  %-40s # %s\n", kv, cfg->origin[i].kind == DPEP_ORIGIN_DEFAULT ? "default" : where);
    }
    printf("\nlayout: world %d = ", l->world);
    if (l->dpa) printf("tp %d with DP attention (dp %d)\n", l->tp, l->dp);
    else printf("tp %d × dp %d (%d independent instance%s)\n", l->tp, l->dp, l->n_instances,
                l->n_instances == 1 ? "" : "s");
    printf("  attention: %d DP group%s per instance, attn_tp %d%s\n", l->attn_dp,
           l->attn_dp == 1 ? "" : "s", l->attn_tp,
           l->attn_tp > 1 ? " (latent KV cache duplicated over the attention-TP ranks)" : "");
    static const char *const transport[] = {"auto", "shm", "mpi", "nccl", "ipc"};
    printf("  moe:       ep %d, moe_tp %d, a2a %s", l->ep, l->moe_tp,
           cfg->parallel.moe_a2a_backend == DPEP_A2A_ALLTOALL ? "alltoall" : "allgather");
    const bool gpu = cfg->runtime.device == DPEP_DEVICE_CUDA;
    const bool node1 = l->tp <= l->ranks_per_node;
    if (cfg->parallel.moe_a2a_backend == DPEP_A2A_ALLTOALL && l->ep > 1)
        printf(" over %s",
               cfg->parallel.moe_a2a_transport == DPEP_A2A_TRANSPORT_AUTO
                   ? (gpu ? (node1 ? "ipc (auto, GPUs: EP group on one node)"
                                   : "nccl (auto, GPUs: EP group spans nodes; mpi-staged when "
                                     "ranks share a GPU)")
                          : node1 ? "shm (auto: EP group on one node)"
                                  : "mpi (auto: EP group spans nodes)")
               : gpu && cfg->parallel.moe_a2a_transport == DPEP_A2A_TRANSPORT_MPI
                   ? "mpi-staged (GPU rows through host memory)"
                   : transport[cfg->parallel.moe_a2a_transport]);
    printf("\n");
    printf("  dense FFN: %s\n", l->dense_tp == 1 ? "data-parallel (moe_dense_tp_size 1)"
                                                 : "TP over the instance");
    printf("  nodes:     %d × %d ranks\n\n", l->nodes, l->ranks_per_node);
    printf("%6s %5s %9s %13s %13s %8s %12s\n", "rank", "node", "instance", "attn_dp_rank",
           "attn_tp_rank", "ep_rank", "moe_tp_rank");
    for (int r = 0; r < l->world; r++) {
        dpep_rank_info ri;
        dpep_layout_rank(l, r, &ri);
        printf("%6d %5d %9d %13d %13d %8d %12d\n", ri.rank, ri.node, ri.instance,
               ri.attn_dp_rank, ri.attn_tp_rank, ri.ep_rank, ri.moe_tp_rank);
    }
}

static int fail(dpep_diag *diag, const char *file, dpep_status st)
{
    dpep_diag_print(diag, stderr);
    if (st == DPEP_ERR_INVALID || st == DPEP_ERR_USAGE)
        fprintf(stderr, "dpep config check: %d error%s%s%s\n", diag->n_errors,
                diag->n_errors == 1 ? "" : "s", file ? " in " : "", file ? file : "");
    else
        fprintf(stderr, "dpep config check: %s\n", dpep_status_string(st));
    return dpep_status_exit_code(st);
}

int dpep_cmd_config_check(int argc, char **argv)
{
    const char *file = NULL, *configuration = NULL, *world_s = NULL;
    long world = 0;
    bool json = false;
    dpep_cli_opt opts[] = {{"--json", NULL, &json},
                           {"--world", &world_s, NULL},
                           {"--configuration", &configuration, NULL}};
    int nopt = (int)(sizeof opts / sizeof opts[0]);
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_status st = dpep_cli_scan("config check", argc, argv, opts, nopt, &file, &diag);
    if (st != DPEP_OK) return fail(&diag, NULL, st);
    if (world_s && !dpep_parse_int(world_s, 1, 1 << 20, &world)) {
        dpep_diag_add(&diag, DPEP_DIAG_ERROR, "command line --world: got %s (expected an integer "
                      "from 1 to 1048576)", world_s);
        return fail(&diag, NULL, DPEP_ERR_USAGE);
    }
    if (configuration && !*configuration) {
        dpep_diag_add(&diag, DPEP_DIAG_ERROR, "command line --configuration: missing NAME");
        return fail(&diag, NULL, DPEP_ERR_USAGE);
    }
    if (!file) {
        fprintf(stderr, "dpep config check: missing FILE\nusage: dpep config check FILE "
                        "[--configuration NAME] [--world N] [--json] [overrides]\n");
        return 2;
    }
    dpep_config cfg;
    st = dpep_config_init(&cfg);
    if (st != DPEP_OK) return fail(&diag, NULL, st);
    st = dpep_config_load_file(&cfg, file, configuration, &diag);
    if (st == DPEP_OK) st = dpep_cli_apply_overrides(&cfg, argc, argv, opts, nopt, &diag);
    if (st == DPEP_OK) st = dpep_config_validate(&cfg, (int)world, &diag);
    dpep_layout layout;
    if (st == DPEP_OK) st = dpep_layout_from_config(&cfg, (int)world, &layout);
    if (st != DPEP_OK) {
        int rc = fail(&diag, file, st);
        dpep_config_free(&cfg);
        return rc;
    }
    dpep_diag_print(&diag, stderr); /* notes */
    int rc = 0;
    if (json) rc = print_json(&cfg, &layout);
    else print_text(&cfg, &layout);
    dpep_config_free(&cfg);
    return rc;
}
