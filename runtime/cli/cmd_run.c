/* cmd_run.c — `dpep run FILE`: the serving job under mpirun/srun. Sets up the
 * world (binding, communicators, placement table), generates the tiny model
 * on first use when model.path has no config.json, and runs the engine. */
#include "dpep_cli.h"
#include "dpep_comm.h"
#include "dpep_serve.h"

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
            "prints progress and a summary. When model.path holds no config.json and\n"
            "model.generate names a test model (tiny_v3, tiny_v2), rank 0 generates it first.\n\n"
            "Options:\n"
            "  --output FILE        JSONL, a line per request (id, dp_rank, input_len,\n"
            "                       output_ids, logprobs, ttft_s, latency_s; \"error\" when it\n"
            "                       cannot fit), written and flushed as requests finish, so\n"
            "                       a job that dies keeps them; in request order once the\n"
            "                       whole run completes. Checked writable before loading.\n"
            "  --resume             keep FILE's complete lines (same workload), serve the rest\n"
            "  --summary-json FILE  the summary as JSON\n"
            "  --ignore-eos         always generate max_new_tokens tokens\n"
            "  --max-kv-tokens N    cap each rank's KV pool at N tokens (tests admission)\n"
            "  --quiet              no progress lines\n"
            "  --configuration NAME cookbook entry of FILE\n"
            "Takes the overrides of `dpep config check` (--tp, --dp, --ep, --set k=v, ...);\n"
            "--device cuda runs each rank's forward step on its own GPU (runtime.device:\n"
            "weights, KV cache and activations in device memory; one rank per GPU).\n\n"
            "SIGTERM or SIGINT (ctrl-C) stops the run: no new requests, running ones are\n"
            "aborted, the finished ones are already in --output; a second signal ends it at\n"
            "once. Rerun with --resume to serve the rest.\n\n"
            "Exit codes: 0 every request served; 1 a runtime failure (including a failed\n"
            "write of --output); 2 bad input or usage; 3 the run ended but not every\n"
            "request was served (failed to fit, or workload lines skipped); 4 stopped by a\n"
            "signal.\n");
}

/* dpep run needs a checkpoint directory. */
static dpep_status run_check(const dpep_config *cfg, const char *file, dpep_diag *diag)
{
    if (*cfg->model.path) return DPEP_OK;
    dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: model.path: not set (expected a checkpoint "
                  "directory)", file);
    return DPEP_ERR_INVALID;
}

/* Rank 0: the generated test model on first use (model.generate), else a
 * clear error: a mistyped path must never turn into a random model. */
static dpep_status ensure_model(const dpep_config *cfg, dpep_diag *diag)
{
    size_t n = strlen(cfg->model.path) + sizeof "/config.json";
    char *cj = malloc(n);
    if (!cj) return DPEP_ERR_NOMEM;
    snprintf(cj, n, "%s/config.json", cfg->model.path);
    const bool present = access(cj, F_OK) == 0;
    free(cj);
    if (present) return DPEP_OK;
    if (cfg->model.generate == DPEP_GEN_NONE) {
        char where[sizeof cfg->source + 64];
        dpep_config_where(cfg, dpep_config_option_find("model.path"), where, sizeof where);
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: model.path: %s has no config.json (expected a "
                      "Hugging Face checkpoint directory; set model.generate to make a test model "
                      "there)", where, cfg->model.path);
        return DPEP_ERR_INVALID;
    }
    const bool v3 = cfg->model.generate == DPEP_GEN_TINY_V3;
    printf("dpep run: %s has no config.json: generating the tiny DeepSeek-%s model there "
           "(model.generate, seed %lld)\n", cfg->model.path, v3 ? "V3" : "V2",
           (long long)cfg->runtime.seed);
    fflush(stdout);
    dpep_model_config mc;
    DPEP_TRY(dpep_model_preset(v3 ? DPEP_ARCH_DEEPSEEK_V3 : DPEP_ARCH_DEEPSEEK_V2, "tiny", &mc));
    return dpep_model_generate(cfg->model.path, &mc, DPEP_ST_F32, (uint64_t)cfg->runtime.seed, diag);
}

int dpep_cmd_run(int argc, char **argv)
{
    dpep_world w;
    dpep_config cfg;
    dpep_diag diag;
    dpep_diag_init(&diag);
    const char *conf = NULL, *output = NULL, *summary = NULL, *maxkv = NULL;
    bool ignore_eos = false, quiet = false, resume = false;
    dpep_cli_opt opts[] = {{"--configuration", &conf, NULL}, {"--output", &output, NULL},
                           {"--summary-json", &summary, NULL}, {"--ignore-eos", NULL, &ignore_eos},
                           {"--quiet", NULL, &quiet}, {"--max-kv-tokens", &maxkv, NULL},
                           {"--resume", NULL, &resume}};
    const int nopt = (int)(sizeof opts / sizeof opts[0]);
    int rc = dpep_cli_job_start("run", argc, argv, opts, nopt, &conf, &w, &cfg, run_check, &diag);
    if (rc != 0) return rc;
    long kvcap = 0;
    const bool bad_kv = maxkv && !dpep_parse_int(maxkv, 1, 1L << 40, &kvcap);
    if (bad_kv || (resume && !output)) {
        if (w.rank == 0 && bad_kv)
            fprintf(stderr, "dpep run: --max-kv-tokens %s (expected an integer >= 1)\n", maxkv);
        else if (w.rank == 0)
            fprintf(stderr, "dpep run: --resume needs --output FILE (the output to continue)\n");
        dpep_config_free(&cfg);
        dpep_world_finalize(&w);
        return 2;
    }
    dpep_status st = dpep_world_print_placement(&w, stdout);
    if (st == DPEP_OK) {
        int gst = w.rank == 0 ? ensure_model(&cfg, &diag) : DPEP_OK;
        if (w.rank == 0 && diag.n) dpep_diag_print(&diag, stderr);
        dpep_diag_init(&diag);
        /* the others wait here, patiently: rank 0 may be generating the model
         * (a rank that stops answering is named by the watchdog) */
        dpep_comm_watch_begin(w.job, "bcast(model ready)", true);
        int rc_b = MPI_Bcast(&gst, 1, MPI_INT, 0, dpep_comm_mpi(w.job));
        dpep_comm_watch_end(w.job);
        if (rc_b != MPI_SUCCESS) {
            dpep_check_fail_(__FILE__, __LINE__, "MPI_Bcast(model ready)", dpep_mpi_error_string(rc_b));
            gst = DPEP_ERR_MPI;
        }
        st = (dpep_status)gst;
    }
    if (st == DPEP_OK) {
        dpep_run_opts o = {.output = output, .summary_json = summary, .ignore_eos = ignore_eos,
                           .quiet = quiet, .max_kv_tokens = kvcap, .resume = resume};
        st = dpep_serve_offline(&w, &cfg, &o, &diag);
        if (diag.n) dpep_diag_print(&diag, stderr);
    }
    dpep_config_free(&cfg);
    dpep_world_finalize(&w);
    return dpep_status_exit_code(st);
}
