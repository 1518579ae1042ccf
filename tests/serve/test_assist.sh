#!/usr/bin/env bash
# test_assist.sh — `dpep serve` with the DP assist on (runtime.dp_assist), hit
# the way that once exposed a race in its claim protocol (a product ended one
# part early, with a stale part: a wrong answer for ~1% of one-at-a-time
# requests, fixed in runtime/engine/assist.c's job_post).
#
#   tests/serve/test_assist.sh DPEP SRC_DIR
#
# A tiny model that speaks the DeepSeek-V3 tokens (hidden 64, 2 layers: its
# products are cut into column parts as they are); `dpep run` with one
# request at a time and the assist off writes the reference; then 2 ranks of
# `dpep serve` (DP attention 2 + EP 2, the assist on, its default parts) and
# assist_client.py: every prompt pinned to every DP group one at a time,
# ROUNDS times (each step has an owner and an idle helper, and the roles move
# between the ranks) — bit-equal to the reference — then all at once. The
# same `dpep run` with the assist on must lend parts (and keep the bits).
# About 20 s.
# Exit: 0 pass, 1 fail.
set -uo pipefail
dpep=$1
src=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
rounds=80
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn}
layout=(--tp 2 --dp 2 --ep 2 --enable-dp-attention --moe-dense-tp-size 1)
tmp=$(mktemp -d /tmp/dpep-serve-assist-XXXXXX) || { echo "FAIL: mktemp"; exit 1; }
serve_pid=
cleanup() {
    [ -n "$serve_pid" ] && kill -TERM "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
die() {
    echo "FAIL serve_assist: $*"
    exit 1
}
command -v xz > /dev/null || die "xz is not installed (needed for the DeepSeek-V3 tokenizer)"
mkdir -p "$tmp/tok"
xz -dc "$src/tests/reference/tokenizers/deepseek-v3/tokenizer.json.xz" > "$tmp/tok/tokenizer.json" ||
    die "cannot decompress the DeepSeek-V3 tokenizer"
cp "$src/tests/reference/tokenizers/deepseek-v3/tokenizer_config.json" "$tmp/tok/" || die "tokenizer_config.json"
"$dpep" model gen --tokenizer "$tmp/tok" --set hidden_size=64 --set num_hidden_layers=2 "$tmp/model" \
    > "$tmp/gen.log" 2>&1 || { cat "$tmp/gen.log"; die "dpep model gen"; }
python3 - "$tmp/work.jsonl" << 'PY' || die "writing the prompts"
import json, sys
prompts = [[0, 19923, 2058], [0, 671, 4787, 13769, 46012], [0, 45948, 2058, 30594, 223, 6895, 18009, 16, 17],
           [0, 2107, 515, 270, 2455, 294, 2734, 14, 436, 515, 270]]
with open(sys.argv[1], "w") as f:
    for i, p in enumerate(prompts):
        f.write(json.dumps({"id": f"p{i}", "input_ids": p, "max_new_tokens": 8}) + "\n")
PY
cat > "$tmp/serve.yaml" << YAML
model: {path: $tmp/model}
runtime: {device: cpu, max_running_requests: 16, chunked_prefill_size: 64, comm_timeout_s: 60}
server: {host: 127.0.0.1, port: 0, max_new_tokens: 8}
workload: {kind: file, path: $tmp/work.jsonl}
YAML
# the reference: one request at a time (as the one-at-a-time requests run), no assist
timeout 60 mpirun -np 2 --oversubscribe --bind-to none "$dpep" run "$tmp/serve.yaml" "${layout[@]}" \
    --dp-assist off --set runtime.max_running_requests=1 --ignore-eos --quiet --output "$tmp/alone.jsonl" \
    > "$tmp/run.log" 2>&1 || { tail -20 "$tmp/run.log"; die "dpep run (the reference)"; }

# the assist lends this model's products in this layout (one request with it
# on: parts lent, the same bits as alone with it off)
head -1 "$tmp/work.jsonl" > "$tmp/one.jsonl"
timeout 60 mpirun -np 2 --oversubscribe --bind-to none "$dpep" run "$tmp/serve.yaml" "${layout[@]}" \
    --dp-assist on --set workload.path="$tmp/one.jsonl" --ignore-eos --quiet --output "$tmp/one_on.jsonl" \
    --summary-json "$tmp/run_on.json" > "$tmp/run_on.log" 2>&1 || { tail -20 "$tmp/run_on.log"; die "dpep run (assist on)"; }
lent=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['dp_assist']['parts_lent'])" \
    "$tmp/run_on.json" 2> /dev/null)
[ "${lent:-0}" -gt 0 ] 2> /dev/null || die "dpep run with the assist on lent no parts (parts_lent=$lent)"
python3 - "$tmp/alone.jsonl" "$tmp/one_on.jsonl" << 'PY' || die "dpep run with the assist on differs from it off"
import json, sys
ref = {r["id"]: r for r in map(json.loads, open(sys.argv[1]))}
got = [json.loads(line) for line in open(sys.argv[2])]
assert len(got) == 1 and [got[0]["output_ids"], got[0]["logprobs"]] == \
    [ref[got[0]["id"]]["output_ids"], ref[got[0]["id"]]["logprobs"]], got
PY
echo "serve_assist: dpep run lends on this model: $(grep -m1 '^dp assist:' "$tmp/run_on.log" | sed 's/  */ /g')"

timeout 300 mpirun -np 2 --oversubscribe --bind-to none "$dpep" serve "$tmp/serve.yaml" "${layout[@]}" \
    --dp-assist on > "$tmp/serve.log" 2>&1 &
serve_pid=$!
port=
for _ in $(seq 1 300); do
    port=$(grep -o "listening on http://127.0.0.1:[0-9]*" "$tmp/serve.log" | head -1 | sed 's/.*://')
    [ -n "$port" ] && break
    kill -0 "$serve_pid" 2>/dev/null || break
    sleep 0.1
done
[ -n "$port" ] || { tail -20 "$tmp/serve.log"; die "dpep serve did not start"; }
fails=0
python3 "$here/assist_client.py" "$port" "$tmp/work.jsonl" "$tmp/alone.jsonl" 2 "$rounds" ||
    fails=$((fails + 1))
# (stopping a job through mpirun's signal forwarding is not what this checks:
# test_serve.sh and twonode_serve check the SIGTERM drain)
kill -TERM "$serve_pid" 2>/dev/null
wait "$serve_pid"
serve_pid=
echo "serve_assist: $fails failure(s)"
[ "$fails" = 0 ]
