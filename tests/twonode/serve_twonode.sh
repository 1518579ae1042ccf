#!/usr/bin/env bash
# serve_twonode.sh — `dpep serve` on two nodes (twonode.sh: two network
# namespaces joined by a veth), rank 0 the only HTTP endpoint.
#
#   serve_twonode.sh DPEP SRC_DIR [--timeout S]
#
# A tiny model that speaks the real DeepSeek-V3 tokens; 4 ranks, 2 per node,
# DP attention 4 + EP 4 (--tp 4 --dp 4 --ep 4 --enable-dp-attention
# --moe-dense-tp-size 1). First `dpep run` on this machine alone (4 ranks, same
# layout, --ignore-eos) writes the offline outputs; then twonode.sh runs
# serve_rank.sh on every rank: ranks 1-3 are `dpep serve`, rank 0 starts
# `dpep serve` and, from inside node 0, checks through its HTTP port that
# greedy outputs (plain, streamed, concurrent, pinned to each DP group) equal
# the offline ones (serve_client.py, serve_twonode_client.py), then sends
# SIGTERM to its dpep serve: the whole two-node job must stop with exit 0.
# Also checked: the MoE all-to-all of the job goes over MPI (the EP group
# spans the nodes), and the traffic crossed the veth (twonode.sh --min-bytes).
#
# Exit: 0 pass; 77 (SKIP) exactly when twonode.sh skips (not root, no ip
# netns, ...); 1 on failure.
set -uo pipefail
dpep=$1
src=$2
shift 2
timeout_s=200 # mpirun's, inside twonode.sh
while [ $# -gt 0 ]; do
  case $1 in
    --timeout) timeout_s=$2; shift 2 ;;
    *) echo "usage: $0 DPEP SRC_DIR [--timeout S]" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
layout=(--tp 4 --dp 4 --ep 4 --enable-dp-attention --moe-dense-tp-size 1)
# Bytes across the veth, measured: about 40 KB for the job alone (wire-up,
# model load agreement, the idle loop, SIGTERM), about 2.1 MB with the clients
# below (0.7 MB serve_client.py, 1.4 MB serve_twonode_client.py): the steps'
# MoE all-to-all and the token gathers. Require 1 MiB.
min_bytes=1048576

t_start=$SECONDS
tmp=$(mktemp -d /tmp/dpep-serve2n-XXXXXX) || { echo "FAIL: mktemp"; exit 1; }
chmod 755 "$tmp"
trap 'rm -rf "$tmp"' EXIT
die() {
  echo "FAIL twonode_serve: $*"
  exit 1
}

# ---- the model, the prompts and the offline reference (one node) ----
command -v xz >/dev/null || die "xz is not installed (needed for the DeepSeek-V3 tokenizer)"
command -v python3 >/dev/null || die "python3 is not installed"
mkdir -p "$tmp/tok"
xz -dc "$src/tests/reference/tokenizers/deepseek-v3/tokenizer.json.xz" >"$tmp/tok/tokenizer.json" ||
  die "cannot decompress the DeepSeek-V3 tokenizer"
cp "$src/tests/reference/tokenizers/deepseek-v3/tokenizer_config.json" "$tmp/tok/" || die "tokenizer_config.json"
"$dpep" model gen --tokenizer "$tmp/tok" --set hidden_size=64 --set num_hidden_layers=2 "$tmp/model" \
  >"$tmp/gen.log" 2>&1 || { cat "$tmp/gen.log"; die "dpep model gen"; }
python3 - "$tmp/work.jsonl" <<'PY' || die "writing the prompts"
import json, sys
prompts = [[0, 19923, 2058], [0, 671, 4787, 13769, 46012], [0, 45948, 2058, 30594, 223, 6895, 18009, 16, 17],
           [0, 2107, 515, 270, 2455, 294, 2734, 14, 436, 515, 270]]
with open(sys.argv[1], "w") as f:
    for i, p in enumerate(prompts * 2):
        f.write(json.dumps({"id": f"p{i}", "input_ids": p, "max_new_tokens": 8}) + "\n")
PY
cat >"$tmp/serve.yaml" <<YAML
model: {path: $tmp/model}
runtime: {device: cpu, max_running_requests: 16, chunked_prefill_size: 64, comm_timeout_s: 60}
server: {host: 127.0.0.1, port: 0, max_new_tokens: 8}
workload: {kind: file, path: $tmp/work.jsonl}
YAML
timeout 60 mpirun -np 4 --oversubscribe --bind-to none "$dpep" run "$tmp/serve.yaml" "${layout[@]}" \
  --ignore-eos --quiet --output "$tmp/offline.jsonl" >"$tmp/run.log" 2>&1 ||
  { tail -20 "$tmp/run.log"; die "dpep run (offline reference, 4 ranks on one node)"; }
n=$(grep -c '"output_ids"' "$tmp/offline.jsonl")
[ "$n" = 8 ] || die "dpep run wrote $n results, expected 8"
echo "twonode_serve: offline reference of 8 requests from dpep run (4 ranks, one node) in $((SECONDS - t_start)) s"

# ---- dpep serve on two nodes (same layout; the config's launch.nodes is 1) ----
bash "$here/twonode.sh" --np-per-node 2 --min-bytes "$min_bytes" --timeout "$timeout_s" -- \
  bash "$here/serve_rank.sh" "$dpep" "$src" "$tmp" "$tmp/serve.yaml" "${layout[@]}" --nnodes 2 2>&1 |
  tee "$tmp/twonode.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 77 ] && exit 77 # twonode.sh skipped: the machine cannot build the two nodes

fails=0
[ "$rc" = 0 ] || { echo "FAIL twonode_serve: twonode.sh exited with $rc"; fails=$((fails + 1)); }
# The EP group spans the nodes: dispatch/combine must go over MPI, not
# node-shared memory (rank 0 logs the transport it picked, "moe: alltoall ...").
moe=$(grep -m1 "moe: alltoall" "$tmp/serve.rank0.log" 2>/dev/null)
if [ -z "$moe" ]; then
  echo "twonode_serve: note: rank 0 logged no 'moe: alltoall' line; the transport is not checked"
elif ! printf '%s' "$moe" | grep -q "over MPI"; then
  echo "FAIL twonode_serve: the EP group spans two nodes, but: $moe"
  fails=$((fails + 1))
fi
echo "twonode_serve: $fails failure(s) in $((SECONDS - t_start)) s"
[ "$fails" = 0 ]
