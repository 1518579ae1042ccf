#!/usr/bin/env bash
# serve.sh — serving overhead and latency of `dpep serve`: the same requests
# served offline (`dpep run`) and through the server (bench/serve_load.py,
# streaming, all at once and at Poisson rates), same ranks, same run.
# Prints a Markdown table; ratio = server output tok/s / offline output tok/s
# (the serving-overhead figure is the saturated row: every request sent at
# once, as `dpep run` admits them; the others show latency under less load).
#   bench/serve.sh [DPEP] [NP] [N_REQUESTS]
# Uses a tiny model with the real DeepSeek-V3 tokenizer (tests/reference/tokenizers).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dpep=${1:-$root/build/dpep}
np=${2:-4}
n=${3:-200}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 DPEP_LOG_LEVEL=warn
tmp=$(mktemp -d /tmp/dpep-servebench-XXXXXX)
mpid=""
trap '[ -n "$mpid" ] && kill $mpid 2>/dev/null; rm -rf "$tmp"' EXIT
mkdir -p "$tmp/tok"
xz -dc "$root/tests/reference/tokenizers/deepseek-v3/tokenizer.json.xz" > "$tmp/tok/tokenizer.json"
cp "$root/tests/reference/tokenizers/deepseek-v3/tokenizer_config.json" "$tmp/tok/"
"$dpep" model gen --tokenizer "$tmp/tok" --set hidden_size=128 --set num_hidden_layers=4 "$tmp/model" > /dev/null
python3 - "$tmp/work.jsonl" "$n" <<'PY'
import json, random, sys
rng = random.Random(7)
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        plen = rng.randint(16, 256)
        f.write(json.dumps({"id": f"r{i}", "input_ids": [rng.randrange(1000, 120000) for _ in range(plen)],
                            "max_new_tokens": rng.randint(16, 64)}) + "\n")
PY
cat > "$tmp/d.yaml" <<YAML
model: {path: $tmp/model}
parallel: {tp: $np, dp: $np, ep: $np, enable_dp_attention: true, moe_dense_tp_size: 1}
runtime: {device: cpu, max_running_requests: 64, chunked_prefill_size: 512, comm_timeout_s: 300}
server: {port: 0}
workload: {kind: file, path: $tmp/work.jsonl}
YAML
mpirun -np "$np" --oversubscribe --bind-to none "$dpep" run "$tmp/d.yaml" --ignore-eos --quiet \
    --summary-json "$tmp/offline.json" > "$tmp/run.log" 2>&1
mpirun -np "$np" --oversubscribe --bind-to none "$dpep" serve "$tmp/d.yaml" > "$tmp/serve.log" 2>&1 &
mpid=$!
port=""
for _ in $(seq 1 600); do
    port=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$tmp/serve.log")
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || { echo "serve.sh: the server did not start"; cat "$tmp/serve.log"; exit 1; }
python3 "$root/bench/serve_load.py" "$port" "$tmp/work.jsonl" --concurrency 0 --check > "$tmp/sat.json"
python3 "$root/bench/serve_load.py" "$port" "$tmp/work.jsonl" --concurrency 64 --check > "$tmp/c64.json"
for rate in 4 16; do
    python3 "$root/bench/serve_load.py" "$port" "$tmp/work.jsonl" --concurrency 256 --rate $rate > "$tmp/rate$rate.json"
done
kill -TERM $(pgrep -f "^$dpep serve $tmp/d.yaml") 2>/dev/null || true
wait $mpid || true
mpid=""
python3 - "$tmp" "$np" "$n" <<'PY'
import json, sys
d, np_, n = sys.argv[1], sys.argv[2], sys.argv[3]
off = json.load(open(f"{d}/offline.json"))
rows = [("saturated (all at once, as offline)", json.load(open(f"{d}/sat.json"))),
        ("64 concurrent streams", json.load(open(f"{d}/c64.json")))] + \
       [(f"Poisson {r} req/s", json.load(open(f"{d}/rate{r}.json"))) for r in (4, 16)]
print(f"{n} requests (prompt 16-256, output 16-64 tokens), {np_} ranks DPA+EP; offline dpep run: "
      f"{off['output_tok_s']:.1f} output tok/s, {off['requests'] / off['wall_s']:.2f} req/s\n")
print("| load | completed | req/s | output tok/s | vs offline | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | E2E p50 / p99 (ms) | client CPU (s) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, r in rows:
    print(f"| {name} | {r['completed']}/{r['requests']} | {r['request_throughput']:.2f} | {r['output_tok_s']:.1f} | "
          f"{r['output_tok_s'] / off['output_tok_s']:.2f} | {r['ttft_p50_ms']:.0f} / {r['ttft_p99_ms']:.0f} | "
          f"{r['itl_p50_ms']:.0f} / {r['itl_p99_ms']:.0f} | {r['e2e_p50_ms']:.0f} / {r['e2e_p99_ms']:.0f} | "
          f"{r['client_cpu_s']:.1f} of {r['wall_s']:.0f} |")
PY
