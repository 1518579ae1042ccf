/* cmd_run.c — `dpep run FILE`: the serving job under mpirun/srun. Sets up the
 * world (binding, communicators, placement table), generates the tiny model
 * on first use when model.path has no config.json, and runs the engine. */
#include "cli.h"
#include "dpep_engine.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void dpep_cmd_run_help(FILE *f)
{
    fprintf(f,
            "Run under the launcher, one rank per GPU (or per CPU slot on the CPU backend):\n"
            "  mpirun -np 4 dpep run configs/tiny.yaml --output out.jsonl\n\n"
            "Every rank reads FILE and checks the job against it; rank 0 prints the placement,\n"
            "builds the workload (workload.kind random | shared_prefix | file) and assigns\n"
            "requests to DP groups by runtime.load_balance_method. Each DP group serves its\n"
            "requests with continuous batching, chunked prefill and a paged KV cache; rank 0\n"
            "prints progress and a summary. When model.path holds no config.json, rank 0\n"
            "generates the tiny DeepSeek-V3 model there first.\n\n"
            "Options:\n"
            "  --output FILE        JSONL per request, in request order: id, dp_rank,\n"
            "                       input_len, output_ids, ttft_s, latency_s\n"
            "  --summary-json FILE  the summary as JSON\n"
            "  --ignore-eos         always generate max_new_tokens tokens\n"
            "  --max-kv-tokens N    cap each rank's KV pool at N tokens (tests admission)\n"
            "  --quiet              no progress lines\n"
            "  --configuration NAME cookbook entry of FILE\n"
            "Takes the overrides of `dpep config check` (--tp, --dp, --ep, --set k=v, ...).\n");
}

int dpep_cmd_run(int argc, char **argv)
{
    dpep_world w;
    int margc = 0;
    char **margv = NULL;
    dpep_status st = dpep_world_init(&margc, &margv, &w);
    if (st != DPEP_OK) return dpep_status_exit_code(st);
    dpep_diag diag;
    dpep_diag_init(&diag);
    dpep_config cfg;
    const char *file = NULL, *conf = NULL, *output = NULL, *summary = NULL, *maxkv = NULL;
    bool ignore_eos = false, quiet = false;
    dpep_cli_opt opts[] = {{"--configuration", &conf, NULL}, {"--output", &output, NULL},
                           {"--summary-json", &summary, NULL}, {"--ignore-eos", NULL, &ignore_eos},
                           {"--quiet", NULL, &quiet}, {"--max-kv-tokens", &maxkv, NULL}};
    const int nopt = (int)(sizeof opts / sizeof opts[0]);
    st = dpep_config_init(&cfg);
    if (st == DPEP_OK) st = dpep_cli_scan("run", argc, argv, opts, nopt, &file, &diag);
    if (st == DPEP_OK && !file) {
        dpep_diag_add(&diag, DPEP_DIAG_ERROR, "dpep run: missing FILE (see --help)");
        st = DPEP_ERR_USAGE;
    }
    long kvcap = 0;
    if (st == DPEP_OK && maxkv && !dpep_parse_int(maxkv, 1, 1L << 40, &kvcap)) {
        dpep_diag_add(&diag, DPEP_DIAG_ERROR, "dpep run: --max-kv-tokens %s (expected an integer >= 1)",
                      maxkv);
        st = DPEP_ERR_USAGE;
    }
    if (st == DPEP_OK) st = dpep_config_load_file(&cfg, file, conf, &diag);
    if (st == DPEP_OK) st = dpep_cli_apply_overrides(&cfg, argc, argv, opts, nopt, &diag);
    if (st == DPEP_OK) st = dpep_config_validate(&cfg, w.size, &diag);
    if (st == DPEP_OK && !*cfg.model.path) {
        dpep_diag_add(&diag, DPEP_DIAG_ERROR, "%s: model.path: not set (expected a checkpoint "
                      "directory)", file);
        st = DPEP_ERR_INVALID;
    }
    if (st == DPEP_OK) st = dpep_world_setup(&w, &cfg, &diag);
    if (st != DPEP_OK) {
        if (w.rank == 0 || (st != DPEP_ERR_INVALID && st != DPEP_ERR_USAGE))
            dpep_diag_print(&diag, stderr);
        dpep_config_free(&cfg);
        dpep_world_finalize(&w);
        return dpep_status_exit_code(st);
    }
    if (w.rank == 0) {
        dpep_diag_print(&diag, stderr); /* notes */
        const dpep_layout *l = &w.layout;
        printf("dpep run: %d ranks on %d node%s; tp %d, dp %d%s, ep %d (attn_tp %d, moe_tp %d, "
               "dense_tp %d)\n", w.size, w.n_nodes, w.n_nodes == 1 ? "" : "s", l->tp, l->dp,
               l->dpa ? " with DP attention" : " replicas", l->ep, l->attn_tp, l->moe_tp,
               l->dense_tp);
        fflush(stdout);
    }
    dpep_diag_init(&diag);
    st = dpep_world_print_placement(&w, stdout);
    /* The generated test model on first use (model.generate), else a clear
     * error: a mistyped path must never turn into a random model. */
    if (st == DPEP_OK) {
        int gst = DPEP_OK;
        if (w.rank == 0) {
            char cj[4200];
            snprintf(cj, sizeof cj, "%s/config.json", cfg.model.path);
            if (access(cj, F_OK) != 0 && cfg.model.generate == DPEP_GEN_NONE) {
                char where[4300];
                dpep_config_where(&cfg, dpep_config_option_find("model.path"), where, sizeof where);
                fprintf(stderr, "%s: model.path: %s has no config.json (expected a Hugging Face "
                                "checkpoint directory; set model.generate to make a test model "
                                "there)\n", where, cfg.model.path);
                gst = DPEP_ERR_INVALID;
            } else if (access(cj, F_OK) != 0) {
                bool v3 = cfg.model.generate == DPEP_GEN_TINY_V3;
                dpep_model_config mc;
                printf("dpep run: %s has no config.json: generating the tiny DeepSeek-%s model "
                       "there (model.generate, seed %lld)\n", cfg.model.path, v3 ? "V3" : "V2",
                       (long long)cfg.runtime.seed);
                fflush(stdout);
                gst = dpep_model_preset(v3 ? DPEP_ARCH_DEEPSEEK_V3 : DPEP_ARCH_DEEPSEEK_V2, "tiny", &mc);
                if (gst == DPEP_OK)
                    gst = dpep_model_generate(cfg.model.path, &mc, DPEP_ST_F32,
                                              (uint64_t)cfg.runtime.seed, &diag);
                if (gst != DPEP_OK) dpep_diag_print(&diag, stderr);
                dpep_diag_init(&diag);
            }
        }
        MPI_Bcast(&gst, 1, MPI_INT, 0, w.world); /* the others wait here */
        st = (dpep_status)gst;
    }
    if (st == DPEP_OK) {
        dpep_run_opts o = {.output = output, .summary_json = summary, .ignore_eos = ignore_eos,
                           .quiet = quiet, .max_kv_tokens = kvcap};
        st = dpep_engine_run(&w, &cfg, &o, &diag);
        if (diag.n) dpep_diag_print(&diag, stderr);
    }
    dpep_config_free(&cfg);
    dpep_world_finalize(&w);
    return dpep_status_exit_code(st);
}
