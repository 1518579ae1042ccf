#!/usr/bin/env bash
# pad_decode.sh — the decode padding the CUDA graphs use (a step of n
# sequences padded to its bucket: 1-4, then multiples of 8, with rows of
# token 0 at position 0 of the KV pool's extra slots), run on the CPU through
# the tests' hook DPEP_TEST_PAD_DECODE=1: `dpep run` with and without it on
# the tiny V3 and V2 models (13 requests of mixed lengths, so the decode
# batches shrink through several buckets; f32 and BF16 KV caches) must give
# the same tokens and log-probabilities (the padding rows are separate rows
# and are dropped) and the same expert load (their picks are not counted),
# and the summary must show padded steps.
#   tests/engine/pad_decode.sh DPEP_BIN SRC_DIR
set -uo pipefail
dpep=${1:?dpep binary}
src=$(cd "${2:?source dir}" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn}
tmp=$(mktemp -d /tmp/dpep-pad-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0
"$dpep" model gen --preset tiny --seed 5 "$tmp/v3" > /dev/null || { echo "FAIL model gen v3"; exit 1; }
"$dpep" model gen --arch deepseek_v2 --preset tiny --seed 6 "$tmp/v2" > /dev/null || { echo "FAIL model gen v2"; exit 1; }
python3 "$src/tests/engine/gen_requests.py" "$tmp/work.jsonl" 13 3 40 14 29
python3 "$src/tests/engine/run_yaml.py" "$tmp/run.yaml" "$tmp/v3" "$tmp/work.jsonl" \
    runtime.chunked_prefill_size=64 runtime.max_running_requests=13 runtime.bind=none
run() { # name model pad [args...]
    local name=$1 model=$2 pad=$3
    shift 3
    if ! DPEP_TEST_PAD_DECODE=$pad timeout 120 "$dpep" run "$tmp/run.yaml" --ignore-eos --quiet \
        --output "$tmp/$name.jsonl" --summary-json "$tmp/$name.json" --set model.path="$model" "$@" \
        > "$tmp/$name.log" 2>&1; then
        echo "FAIL $name: dpep run exited non-zero"; tail -15 "$tmp/$name.log"; fails=$((fails + 1))
    fi
}
check() { # plain padded
    python3 "$src/tests/engine/same_outputs.py" "$tmp/$1.jsonl" "$tmp/$2.jsonl" 1e-5 13 "$2 vs $1" ||
        fails=$((fails + 1))
    python3 - "$tmp/$1.json" "$tmp/$2.json" "$2" <<'PY' || fails=$((fails + 1))
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
pad = b.get("decode_padding") or {}
ok = a.get("expert_load") == b.get("expert_load") and pad.get("padded_steps", 0) > 0 and \
     pad.get("padding_rows", 0) >= pad.get("padded_steps", 0) and "decode_padding" not in a
print("%s %s: expert load %s, %d decode steps padded, %d padding rows" % (
    "  ok  " if ok else "FAIL", sys.argv[3], "equal" if a.get("expert_load") == b.get("expert_load") else "DIFFERS",
    pad.get("padded_steps", 0), pad.get("padding_rows", 0)))
sys.exit(0 if ok else 1)
PY
}
echo "decode steps padded to buckets (the CUDA graphs' padding, on the CPU):"
run v3 "$tmp/v3" 0
run v3_pad "$tmp/v3" 1
check v3 v3_pad
run v3_kv16 "$tmp/v3" 0 --kv-cache-dtype bf16
run v3_kv16_pad "$tmp/v3" 1 --kv-cache-dtype bf16
check v3_kv16 v3_kv16_pad
run v2 "$tmp/v2" 0
run v2_pad "$tmp/v2" 1
check v2 v2_pad
# a cap below the batch: steps above it unpadded, at it padded up to it
run v3_cap "$tmp/v3" 0 --cuda-graph-max-bs 10
run v3_cap_pad "$tmp/v3" 1 --cuda-graph-max-bs 10
check v3_cap v3_cap_pad
[ $fails -eq 0 ] && echo "PASSED" || echo "FAILED ($fails)"
[ $fails -eq 0 ]
