/* config_options.c — the one table of deployment options: name, type,
 * default, bounds, command-line flags and help. Parsing, validation,
 * overrides, `--help` and docs/CONFIG.md are all driven from it. */
#include "config_internal.h"

#include <stddef.h>
#include <string.h>

#define OFF(field) offsetof(dpep_config, field)

static const char *const k_dtype[] = {"auto", "f32", "bf16", "f16", NULL};
static const char *const k_kv_dtype[] = {"auto", "f32", "bf16", NULL};
static const char *const k_generate[] = {"none", "tiny_v3", "tiny_v2", NULL};
static const char *const k_a2a[] = {"alltoall", "allgather", NULL};
static const char *const k_a2a_alias[] = {"none=allgather", NULL};
static const char *const k_transport[] = {"auto", "shm", "mpi", "nccl", "ipc", NULL};
static const char *const k_device[] = {"auto", "cpu", "cuda", NULL};
static const char *const k_lb[] = {"round_robin", "shortest_queue", "total_tokens", "cache_aware",
                                   NULL};
static const char *const k_lb_alias[] = {"total_requests=shortest_queue",
                                         "minimum_tokens=total_tokens", NULL};
static const char *const k_bind[] = {"auto", "none", "core", "numa", NULL};
static const char *const k_lm_head[] = {"auto", "replicated", "vocab", NULL};
static const char *const k_dp_assist[] = {"auto", "off", "on", NULL};
static const char *const k_launcher[] = {"auto", "mpirun", "srun", NULL};
static const char *const k_workload[] = {"random", "shared_prefix", "file", NULL};

#define BIG 1e15
/* Bounds chosen so that every product the layout and the memory plan form
 * (tp * dp, nodes * gpus_per_node, tokens * pages) stays far from overflow. */
static const dpep_option k_options[] = {
    /* model */
    {"model", "path", DPEP_OPT_STRING, OFF(model.path), DPEP_OPT_PATH, "\"\"", 0, 0, NULL, NULL,
     "--model-path|--model",
     "Hugging Face checkpoint directory (config.json + *.safetensors); relative to the YAML file"},
    {"model", "dtype", DPEP_OPT_ENUM, OFF(model.dtype), 0, "auto", 0, 0, k_dtype, NULL, "--dtype",
     "how weight matrices are held in memory: auto keeps a checkpoint's bf16/f16 as stored, "
     "and its FP8 projections (128x128 block scales) as stored on a GPU (read once by products "
     "of up to 64 rows, dequantized for larger ones; to f32 at load on the CPU), f32 widens them at load, bf16/f16 round them at "
     "load. Products accumulate in f32 (a GPU rounds a product's input rows to bf16/f16); "
     "activations, norms and the router are f32 (the KV cache: runtime.kv_cache_dtype)"},
    {"model", "generate", DPEP_OPT_ENUM, OFF(model.generate), 0, "none", 0, 0, k_generate, NULL,
     NULL, "dpep run writes this generated test model at model.path when it has no "
     "config.json (none: a missing checkpoint is an error); generated atomically (a temporary "
     "directory renamed into place), concurrent jobs take turns and reuse it, a non-empty "
     "directory without config.json is refused"},

    /* parallel */
    {"parallel", "tp", DPEP_OPT_INT, OFF(parallel.tp), 0, "1", 1, 65536, NULL, NULL,
     "--tp-size|--tp|--tensor-parallel-size", "ranks in one model instance"},
    {"parallel", "dp", DPEP_OPT_INT, OFF(parallel.dp), 0, "1", 1, 65536, NULL, NULL,
     "--dp-size|--dp|--data-parallel-size",
     "with DP attention: attention-DP groups inside the instance (world = tp); "
     "without: independent replicas (world = tp * dp)"},
    {"parallel", "ep", DPEP_OPT_INT, OFF(parallel.ep), 0, "1", 1, 65536, NULL, NULL,
     "--ep-size|--ep|--expert-parallel-size",
     "expert-parallel degree inside an instance; must divide tp (moe_tp = tp / ep)"},
    {"parallel", "enable_dp_attention", DPEP_OPT_BOOL, OFF(parallel.enable_dp_attention), 0,
     "false", 0, 0, NULL, NULL, "--enable-dp-attention",
     "data-parallel attention: each attention-DP group keeps its own requests and latent KV "
     "cache; needs dp > 1 and tp % dp == 0"},
    {"parallel", "moe_a2a_backend", DPEP_OPT_ENUM, OFF(parallel.moe_a2a_backend), 0, "alltoall",
     0, 0, k_a2a, k_a2a_alias, "--moe-a2a-backend",
     "MoE token exchange: alltoall (dispatch/combine over the EP group) or allgather "
     "(SGLang's none: gather all tokens, reduce-scatter back)"},
    {"parallel", "moe_a2a_transport", DPEP_OPT_ENUM, OFF(parallel.moe_a2a_transport), 0, "auto",
     0, 0, k_transport, NULL, "--moe-a2a-transport",
     "how alltoall dispatch/combine move rows: shm (ranks write into and read from each other's "
     "node-shared memory, one copy; needs the EP group on one node; CPU only), mpi (pack, then "
     "MPI all-to-all-v; on GPUs through host staging), nccl (GPUs only: rows packed on the "
     "device, NCCL all-to-all-v between the ranks' GPUs; needs one GPU per EP rank), ipc "
     "(GPUs of one node only: each rank's receive buffers mapped into its peers with CUDA IPC, "
     "senders write rows straight into them; also ranks sharing a GPU), auto (CPU: shm when "
     "the EP group is on one node and /dev/shm has room, else mpi; GPU: ipc inside a node, "
     "else nccl when every EP rank has a GPU of its own, else mpi)"},
    {"parallel", "moe_dense_tp_size", DPEP_OPT_INT, OFF(parallel.moe_dense_tp_size),
     DPEP_OPT_NULLABLE, "null", 1, 1, NULL, NULL, "--moe-dense-tp-size",
     "dense FFN layers: 1 runs them data-parallel, null splits them over the instance (TP)"},

    /* runtime */
    {"runtime", "device", DPEP_OPT_ENUM, OFF(runtime.device), 0, "auto", 0, 0, k_device, NULL,
     "--device", "backend: auto uses CUDA when this build has it and a GPU is visible"},
    {"runtime", "ranks_per_gpu", DPEP_OPT_INT, OFF(runtime.ranks_per_gpu), 0, "1", 1, 64, NULL,
     NULL, "--ranks-per-gpu",
     "ranks sharing one GPU: local rank i drives GPU i / ranks_per_gpu, each taking its share "
     "of mem_fraction_static. 1 in production; more to run a multi-rank layout on fewer GPUs "
     "(tests, small models): NCCL refuses two ranks on one GPU, so the EP exchange then runs "
     "mpi (host staging)"},
    {"runtime", "mem_fraction_static", DPEP_OPT_FLOAT, OFF(runtime.mem_fraction_static),
     DPEP_OPT_MIN_EXCL, "0.88", 0, 1, NULL, NULL, "--mem-fraction-static",
     "fraction of device memory for weights plus KV cache, in (0, 1]"},
    {"runtime", "page_size", DPEP_OPT_INT, OFF(runtime.page_size), DPEP_OPT_POW2, "64", 1,
     65536, NULL, NULL, "--page-size", "tokens per KV-cache page (a power of two)"},
    {"runtime", "max_running_requests", DPEP_OPT_INT, OFF(runtime.max_running_requests), 0,
     "256", 1, 1048576, NULL, NULL, "--max-running-requests",
     "requests decoding at once per attention-DP rank"},
    {"runtime", "chunked_prefill_size", DPEP_OPT_INT, OFF(runtime.chunked_prefill_size), 0,
     "8192", 1, 16777216, NULL, NULL, "--chunked-prefill-size",
     "prefill tokens per step per attention-DP rank (a multiple of page_size)"},
    {"runtime", "load_balance_method", DPEP_OPT_ENUM, OFF(runtime.load_balance_method), 0,
     "round_robin", 0, 0, k_lb, k_lb_alias, "--load-balance-method",
     "how rank 0 assigns requests to DP ranks (cache_aware: to the DP group whose prefix cache "
     "holds most of the prompt, unless the loads are out of balance); a request's "
     "data_parallel_rank always wins"},
    {"runtime", "dp_balance_hold_steps", DPEP_OPT_INT, OFF(runtime.dp_balance_hold_steps), 0, "0",
     0, 1000000, NULL, NULL, "--dp-balance-hold-steps",
     "attention-DP balance: a DP group with new prefills holds them up to N steps until every DP "
     "group of the instance has some, so they prefill in the same step (0: off; not once the "
     "request source is closed, as in dpep run of a fixed workload)"},
    {"runtime", "disable_radix_cache", DPEP_OPT_BOOL, OFF(runtime.disable_radix_cache), 0, "false",
     0, 0, NULL, NULL, "--disable-radix-cache",
     "turn off the prefix cache (a radix tree of KV pages per DP group that later requests "
     "sharing a prompt prefix reuse)"},
    {"runtime", "comm_timeout_s", DPEP_OPT_FLOAT, OFF(runtime.comm_timeout_s),
     DPEP_OPT_MIN_EXCL, "300", 0, 86400, NULL, NULL, "--comm-timeout-s|--dist-timeout",
     "seconds a collective may wait before the job is ended naming the missing ranks"},
    {"runtime", "bind", DPEP_OPT_ENUM, OFF(runtime.bind), 0, "auto", 0, 0, k_bind, NULL,
     "--bind", "CPU binding: auto (near the rank's GPU, else spread), none, core, numa"},
    {"runtime", "lm_head", DPEP_OPT_ENUM, OFF(runtime.lm_head), 0, "auto", 0, 0, k_lm_head, NULL,
     "--lm-head",
     "where the lm_head runs: vocab (each rank of the EP group a slice of the vocabulary for the "
     "rows of all its ranks, as SGLang under DP attention; CPU, models with MoE layers), "
     "replicated (each DP group its own rows, whole matrix), auto (vocab on the CPU with EP > 1, "
     "attention-TP 1 and MoE layers, else replicated)"},
    {"runtime", "dp_assist", DPEP_OPT_ENUM, OFF(runtime.dp_assist), 0, "auto", 0, 0, k_dp_assist,
     NULL, "--dp-assist",
     "under DP attention on the CPU, ranks of a node whose DP group has no tokens in a step "
     "compute parts of a busy peer's attention projections and prefill attention core, shared "
     "experts and dense FFN from their own copies of those weights (bit-identical results): on, "
     "off, auto (on when the "
     "layout has attention-TP 1, MoE-TP 1, no dense TP, and the node's ranks x threads fit its "
     "CPUs)"},
    {"runtime", "node_experts", DPEP_OPT_ENUM, OFF(runtime.node_experts), 0, "auto", 0, 0,
     k_dp_assist, NULL, "--node-experts",
     "on the CPU with the DP assist and EP over several ranks of a node, the routed experts of "
     "the node's EP ranks in one node-shared window (/dev/shm; the same bytes per node as "
     "private copies) and an expert pool: each rank's routed expert products are shared out in "
     "column parts among the node's ranks, so that the rank with fewer of a step's experts "
     "computes parts of its peer's (bit-identical results): on (fails without room in "
     "/dev/shm), off, auto (on when the DP assist runs and /dev/shm has room)"},
    {"runtime", "warmup_tokens", DPEP_OPT_INT, OFF(runtime.warmup_tokens), 0, "32", 0, 16777216,
     NULL, NULL, "--warmup-tokens",
     "tokens of one synthetic prefill (and one decode step after it) that every rank runs after "
     "loading, before the first request, so that the first request's time-to-first-token does "
     "not carry the one-time costs of a first step (at most one step's tokens; 0: off)"},
    {"runtime", "cuda_graph_max_bs", DPEP_OPT_INT, OFF(runtime.cuda_graph_max_bs), 0, "256", 1,
     65536, NULL, NULL, "--cuda-graph-max-bs",
     "on a GPU, decode steps of up to this many sequences are padded to a bucket size (1-4, then "
     "multiples of 8, and this cap), captured into a CUDA graph once per bucket (and attention "
     "split) and replayed after, when the step stays on the rank's GPU (attention-TP 1, one EP "
     "rank, no MoE-TP or dense TP); larger batches run eagerly"},
    {"runtime", "disable_cuda_graph", DPEP_OPT_BOOL, OFF(runtime.disable_cuda_graph), 0, "false",
     0, 0, NULL, NULL, "--disable-cuda-graph",
     "run every GPU step eagerly, without CUDA graphs"},
    {"runtime", "kv_cache_dtype", DPEP_OPT_ENUM, OFF(runtime.kv_cache_dtype), 0, "auto", 0, 0,
     k_kv_dtype, NULL, "--kv-cache-dtype",
     "element type of the latent KV cache: bf16 halves its memory (each row rounded to nearest "
     "even when written, widened to f32 when attention reads it), f32 keeps the computed rows; "
     "auto: bf16 on a GPU when the weight matrices are held in 16 bits or FP8, else f32 (the "
     "CPU: f32)"},
    {"runtime", "seed", DPEP_OPT_INT, OFF(runtime.seed), 0, "0", 0, 9007199254740991.0, NULL,
     NULL, "--random-seed|--seed", "seed for sampling and generated workloads"},

    /* launch */
    {"launch", "launcher", DPEP_OPT_ENUM, OFF(launch.launcher), 0, "auto", 0, 0, k_launcher,
     NULL, "--launcher", "auto: srun inside a Slurm allocation, mpirun otherwise"},
    {"launch", "nodes", DPEP_OPT_INT, OFF(launch.nodes), 0, "1", 1, 65536, NULL, NULL,
     "--nnodes|--nodes", "nodes the job spans; must divide the world size"},
    {"launch", "gpus_per_node", DPEP_OPT_INT, OFF(launch.gpus_per_node), DPEP_OPT_NULLABLE,
     "null", 1, 1024, NULL, NULL, "--gpus-per-node",
     "ranks (GPUs) per node; null: world / nodes. nodes * gpus_per_node must equal the world"},
    {"launch", "hostfile", DPEP_OPT_STRING, OFF(launch.hostfile), DPEP_OPT_PATH, "\"\"", 0, 0,
     NULL, NULL, "--hostfile", "Open MPI hostfile for mpirun (relative to the YAML file)"},
    {"launch", "gpu_memory_gb", DPEP_OPT_FLOAT, OFF(launch.gpu_memory_gb), DPEP_OPT_MIN_EXCL,
     "80", 0, 1048576, NULL, NULL, "--gpu-memory-gb",
     "device memory per GPU in GB (1e9 bytes) for the memory plan"},
    {"launch", "mca", DPEP_OPT_MAP, OFF(launch.mca), 0, "{}", 0, 0, NULL, NULL, NULL,
     "Open MPI MCA parameters passed as --mca NAME VALUE (set with --set launch.mca.NAME=V)"},
    {"launch", "env", DPEP_OPT_MAP, OFF(launch.env), 0, "{}", 0, 0, NULL, NULL, NULL,
     "environment exported to every rank (set with --set launch.env.NAME=V)"},

    /* workload */
    {"workload", "kind", DPEP_OPT_ENUM, OFF(workload.kind), 0, "random", 0, 0, k_workload, NULL,
     "--dataset-name|--workload", "requests dpep run serves: random, shared_prefix or file"},
    {"workload", "num_prompts", DPEP_OPT_INT, OFF(workload.num_prompts), 0, "16", 1, 10000000,
     NULL, NULL, "--num-prompts", "random: number of requests"},
    {"workload", "input_len", DPEP_OPT_INT, OFF(workload.input_len), 0, "128", 1, 10000000,
     NULL, NULL, "--random-input-len|--input-len", "random: prompt tokens (upper bound)"},
    {"workload", "output_len", DPEP_OPT_INT, OFF(workload.output_len), 0, "32", 1, 10000000,
     NULL, NULL, "--random-output-len|--output-len",
     "random and shared_prefix: new tokens per request (upper bound for random)"},
    {"workload", "range_ratio", DPEP_OPT_FLOAT, OFF(workload.range_ratio), 0, "0", 0, 1, NULL,
     NULL, "--random-range-ratio",
     "random: lengths drawn uniformly from [ratio * len, len], as SGLang's bench"},
    {"workload", "num_groups", DPEP_OPT_INT, OFF(workload.num_groups), 0, "64", 1, 1000000,
     NULL, NULL, "--gsp-num-groups", "shared_prefix: groups sharing a system prompt"},
    {"workload", "prompts_per_group", DPEP_OPT_INT, OFF(workload.prompts_per_group), 0, "16", 1,
     1000000, NULL, NULL, "--gsp-prompts-per-group", "shared_prefix: questions per group"},
    {"workload", "system_prompt_len", DPEP_OPT_INT, OFF(workload.system_prompt_len), 0, "2048",
     1, 10000000, NULL, NULL, "--gsp-system-prompt-len",
     "shared_prefix: tokens of each group's shared prefix"},
    {"workload", "question_len", DPEP_OPT_INT, OFF(workload.question_len), 0, "128", 1,
     10000000, NULL, NULL, "--gsp-question-len", "shared_prefix: tokens of each question"},
    {"workload", "path", DPEP_OPT_STRING, OFF(workload.path), DPEP_OPT_PATH, "\"\"", 0, 0, NULL,
     NULL, "--dataset-path",
     "file: JSONL requests (input_ids, or text / messages with the model dir's tokenizer; max_new_tokens, sampling, data_parallel_rank, id)"},
    {"workload", "temperature", DPEP_OPT_FLOAT, OFF(workload.temperature), 0, "0", 0, 100,
     NULL, NULL, "--temperature", "default sampling temperature (0 = greedy)"},
    {"workload", "top_k", DPEP_OPT_INT, OFF(workload.top_k), 0, "0", 0, 1048576, NULL, NULL,
     "--top-k", "default top-k (0 = off)"},
    {"workload", "top_p", DPEP_OPT_FLOAT, OFF(workload.top_p), DPEP_OPT_MIN_EXCL, "1", 0, 1,
     NULL, NULL, "--top-p", "default top-p, in (0, 1]"},

    /* server: dpep serve */
    {"server", "host", DPEP_OPT_STRING, OFF(server.host), 0, "127.0.0.1", 0, 0, NULL, NULL,
     "--host", "address rank 0 listens on (0.0.0.0: every interface)"},
    {"server", "port", DPEP_OPT_INT, OFF(server.port), 0, "30000", 0, 65535, NULL, NULL, "--port",
     "TCP port of the HTTP API (0: any free port, printed at start)"},
    {"server", "api_key", DPEP_OPT_STRING, OFF(server.api_key), 0, "\"\"", 0, 0, NULL, NULL,
     "--api-key", "when set, every endpoint but /health needs Authorization: Bearer KEY"},
    {"server", "served_model_name", DPEP_OPT_STRING, OFF(server.served_model_name), 0, "\"\"", 0,
     0, NULL, NULL, "--served-model-name", "model id of the API (default: model.path's last name)"},
    {"server", "max_queued_requests", DPEP_OPT_INT, OFF(server.max_queued_requests), 0, "1024",
     1, 10000000, NULL, NULL, "--max-queued-requests",
     "requests waiting (beyond max_running_requests per DP group) at which new ones get 503 "
     "with Retry-After"},
    {"server", "request_timeout_s", DPEP_OPT_FLOAT, OFF(server.request_timeout_s), 0, "0", 0,
     1e9, NULL, NULL, "--request-timeout", "a request running longer is aborted (0: no limit)"},
    {"server", "drain_timeout_s", DPEP_OPT_FLOAT, OFF(server.drain_timeout_s), 0, "30", 0, 1e9,
     NULL, NULL, "--drain-timeout",
     "on SIGTERM/SIGINT: seconds in-flight requests may finish before they are aborted (a second "
     "signal aborts at once)"},
    {"server", "context_length", DPEP_OPT_INT, OFF(server.context_length), 0, "4096", 0,
     1 << 24, NULL, NULL, "--context-length",
     "longest prompt + output of a request (0: the model's max_position_embeddings)"},
    {"server", "max_new_tokens", DPEP_OPT_INT, OFF(server.max_new_tokens), 0, "128", 1, 1 << 24,
     NULL, NULL, NULL, "default max_new_tokens / max_tokens of a request that names none"},
};

const char *const dpep_config_sections[] = {"model", "parallel", "runtime", "launch",
                                            "workload", "server", NULL};

size_t dpep_config_option_count(void)
{
    return sizeof k_options / sizeof k_options[0];
}

const dpep_option *dpep_config_option(size_t i)
{
    return i < dpep_config_option_count() ? &k_options[i] : NULL;
}

int dpep_config_option_find(const char *dotted)
{
    const char *dot = strchr(dotted, '.');
    if (!dot) return -1;
    size_t slen = (size_t)(dot - dotted);
    for (size_t i = 0; i < dpep_config_option_count(); i++)
        if (strlen(k_options[i].section) == slen &&
            strncmp(k_options[i].section, dotted, slen) == 0 &&
            strcmp(k_options[i].key, dot + 1) == 0)
            return (int)i;
    return -1;
}
