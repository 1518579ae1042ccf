/* cmd_serve.c — `dpep serve FILE`: the HTTP server under mpirun/srun. */
#include "dpep_cli.h"
#include "dpep_serve.h"

#include <string.h>
#include <unistd.h>

void dpep_cmd_serve_help(FILE *f)
{
    fprintf(f,
            "Run under the launcher, one rank per GPU (or per CPU slot on the CPU backend):\n"
            "  mpirun -np 4 dpep serve deploy.yaml [--host H] [--port P] [--api-key K]\n\n"
            "Rank 0 serves an HTTP API on server.host:server.port — SGLang's native API\n"
            "(POST /generate, /flush_cache, GET /health, /health_generate, /server_info,\n"
            "/model_info, /get_load, /metrics) and OpenAI's (POST /v1/completions,\n"
            "/v1/chat/completions, GET /v1/models), streaming as server-sent events. At the\n"
            "start of every step the ranks agree on the new requests; each DP group's\n"
            "scheduler serves its share (continuous batching, chunked prefill, KV admission)\n"
            "and the tokens stream back through rank 0. An idle job sleeps. SIGTERM or SIGINT\n"
            "(ctrl-C) stops it: new requests get 503, in-flight ones may finish for\n"
            "server.drain_timeout_s (30 s; a second signal: at once), the rest are aborted,\n"
            "and every rank exits 0.\n\n"
            "model.path must hold tokenizer.json (+ tokenizer_config.json for the chat\n"
            "template); `dpep model gen --tokenizer DIR` makes a test model that has one.\n\n"
            "Options:\n"
            "  --configuration NAME cookbook entry of FILE\n"
            "Takes the overrides of `dpep config check`: --host, --port, --api-key,\n"
            "--served-model-name, --context-length, --max-queued-requests, --request-timeout,\n"
            "--drain-timeout, --tp, --dp, --ep, --set k=v, ...; --device cuda runs each rank's\n"
            "forward step on its own GPU (runtime.device; one rank per GPU).\n");
}

static dpep_status serve_check(const dpep_config *cfg, const char *file, dpep_diag *diag)
{
    if (!*cfg->model.path) {
        dpep_diag_add(diag, DPEP_DIAG_ERROR, "%s: model.path: not set (expected a checkpoint "
                      "directory with tokenizer.json)", file);
        return DPEP_ERR_INVALID;
    }
    return DPEP_OK;
}

int dpep_cmd_serve(int argc, char **argv)
{
    return dpep_cli_job_main("serve", argc, argv, serve_check, dpep_serve_online);
}
