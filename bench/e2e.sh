#!/usr/bin/env bash
# e2e.sh — end-to-end `dpep run` bench: the same model, workload and ranks
# served twice in one invocation, with DP attention + EP (tp 4, dp 4, ep 4,
# dense FFN data-parallel) and with vanilla TP (tp 4, no DP attention, ep 1:
# attention heads, experts and dense FFN all split 4 ways). Prints decode
# tokens/s and KV bytes per rank of both (peak KV reserved by the requests;
# the DPA rank must hold about 1/dp of the TP rank's) as a Markdown table,
# and DPA + EP once more with the MoE rows over MPI instead of node-shared
# memory (the transport's end-to-end effect).
#   bench/e2e.sh [DPEP_BIN] [MODEL_DIR] [NP]
# MODEL_DIR defaults to /tmp/dpep-small-v3, generated (`small` preset, ~0.8 B
# parameters, 3.2 GB fp32) when absent. Env: PROMPTS (32), INPUT_LEN (128),
# OUTPUT_LEN (32).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dpep=${1:-$root/build/dpep}
model=${2:-/tmp/dpep-small-v3}
np=${3:-4}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn}
[ -f "$model/config.json" ] || "$dpep" model gen --arch deepseek_v3 --preset small --seed 1 "$model"
tmp=$(mktemp -d /tmp/dpep-e2e-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/bench.yaml" <<YAML
model:
  path: $model
runtime:
  device: cpu
  page_size: 16
  chunked_prefill_size: 1024
  max_running_requests: 64
  comm_timeout_s: 300
  bind: auto
  seed: 1
launch:
  gpu_memory_gb: 4
workload:
  kind: random
  num_prompts: ${PROMPTS:-32}
  input_len: ${INPUT_LEN:-128}
  output_len: ${OUTPUT_LEN:-32}
  range_ratio: 1.0
YAML
run() { # name args...
    local name=$1
    shift
    mpirun -np "$np" --oversubscribe --bind-to none --mca btl self,vader "$dpep" run "$tmp/bench.yaml" \
        --ignore-eos --quiet --summary-json "$tmp/$name.json" "$@" > "$tmp/$name.log" 2>&1 ||
        { echo "dpep run ($name) failed:"; tail -20 "$tmp/$name.log"; exit 1; }
}
run dpa --tp "$np" --dp "$np" --ep "$np" --enable-dp-attention --moe-dense-tp-size 1
run dpa_mpi --tp "$np" --dp "$np" --ep "$np" --enable-dp-attention --moe-dense-tp-size 1 \
    --moe-a2a-transport mpi
run tp --tp "$np" --ep 1 --set parallel.moe_dense_tp_size=null
python3 - "$tmp" "$np" "$model" <<'PY'
import json, sys
d, np_, model = sys.argv[1], sys.argv[2], sys.argv[3]
rows = []
for name, label in (("dpa", f"DPA + EP (tp {np_}, dp {np_}, ep {np_}), MoE rows over shm (auto)"),
                    ("tp", f"vanilla TP (tp {np_}, ep 1)"),
                    ("dpa_mpi", f"DPA + EP, MoE rows over MPI (--moe-a2a-transport mpi)")):
    s = json.load(open(f"{d}/{name}.json"))
    kv = [r["peak_bytes"] for r in s["kv_per_rank"]]
    rows.append((label, s["decode_tok_s"], s["prefill_tok_s"], s["output_tok_s"], s["itl_s"]["p50"] * 1e3,
                 max(kv) / 2**20, s["requests"], s["input_tokens"], s["output_tokens"]))
print(f"model {model}; {rows[0][6]} requests, {rows[0][7]} input / {rows[0][8]} output tokens, {np_} ranks\n")
print("| layout | decode tok/s | prefill tok/s | output tok/s | ITL p50 (ms) | KV bytes per rank (peak, MiB) |")
print("|---|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r[0]} | {r[1]:.1f} | {r[2]:.1f} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.2f} |")
print(f"\nDPA/TP: decode x{rows[0][1] / rows[1][1]:.2f}, KV per rank x{rows[0][5] / rows[1][5]:.3f} (1/dp = {1 / int(np_):.3f})")
print(f"shm/mpi transport (DPA + EP): decode x{rows[0][1] / rows[2][1]:.2f}, prefill x{rows[0][2] / rows[2][2]:.2f}")
PY
