#!/usr/bin/env bash
# lm_head.sh — the vocabulary-parallel lm_head (runtime.lm_head): `dpep run`
# on the tiny V3 model, 1 rank against 4 ranks of DP attention + EP 4 with
# lm_head vocab / replicated / auto, and attention-TP 2 (auto stays
# replicated, vocab is allowed); then 2 ranks with 300 short requests so
# that one step's rows exceed the exchange's 128-row rounds (several rounds,
# unequal counts). Tokens must equal the reference's and log-probs stay
# within 1e-5; the summary says which placement ran; a bad value is refused
# naming the field.
#   tests/engine/lm_head.sh DPEP_BIN
set -uo pipefail
dpep=${1:?dpep binary}
here=$(cd "$(dirname "$0")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMP_NUM_THREADS=1 DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn}
tmp=$(mktemp -d /tmp/dpep-lmhead-XXXXXX)
trap '[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
fails=0
"$dpep" model gen --preset tiny --seed 11 "$tmp/m" > /dev/null || { echo "FAIL model gen"; exit 1; }
python3 "$here/gen_requests.py" "$tmp/few.jsonl" 9 3 50 8 23
python3 "$here/gen_requests.py" "$tmp/many.jsonl" 300 2 9 3 29 m
python3 "$here/run_yaml.py" "$tmp/run.yaml" "$tmp/m" "$tmp/few.jsonl" runtime.chunked_prefill_size=4096 \
    runtime.max_running_requests=256 runtime.bind=none launch.gpu_memory_gb=2
run() { # name np want_group args...
    local name=$1 np=$2 want=$3
    shift 3
    if ! timeout 180 mpirun -np "$np" --oversubscribe --bind-to none --mca btl self,vader "$dpep" run \
        "$tmp/run.yaml" --ignore-eos --quiet --output "$tmp/$name.jsonl" --summary-json "$tmp/$name.json" \
        "$@" > "$tmp/$name.log" 2>&1; then
        echo "FAIL $name: dpep run exited non-zero"; tail -15 "$tmp/$name.log"; fails=$((fails + 1)); return
    fi
    local got
    got=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('lm_head_group'))" "$tmp/$name.json")
    if [ "$got" != "$want" ]; then
        echo "FAIL $name: lm_head_group $got, expected $want"; fails=$((fails + 1)); return
    fi
    echo "  ran  $name: lm_head group $got"
}
same() { # ref other n: tokens identical, logprobs within 1e-5
    python3 "$here/same_outputs.py" "$tmp/$1.jsonl" "$tmp/$2.jsonl" 1e-5 "$3" "$2 vs $1" ||
        fails=$((fails + 1))
}
dpa4=(--tp 4 --dp 4 --ep 4 --enable-dp-attention)
echo "lm_head placement (tiny V3, greedy):"
run ref 1 1
run dpa4_vocab 4 4 "${dpa4[@]}" --set runtime.lm_head=vocab
run dpa4_repl 4 1 "${dpa4[@]}" --set runtime.lm_head=replicated
run dpa4_auto 4 4 "${dpa4[@]}"
run atp2_auto 4 1 --tp 4 --dp 2 --ep 4 --enable-dp-attention
run atp2_vocab 4 4 --tp 4 --dp 2 --ep 4 --enable-dp-attention --set runtime.lm_head=vocab
for n in dpa4_vocab dpa4_repl dpa4_auto atp2_auto atp2_vocab; do same ref $n 9; done
# several exchange rounds: ~150 rows per rank in the prefill step. Compared
# with the same layout's replicated lm_head (same batches, so the same
# hidden states): a 1-rank reference batches 256 sequences at once, and on
# this random model a near-tie of the gate then flips an expert for one
# request (logprobs 0.15 apart, tokens equal; the same before this change).
run many_repl 2 1 --tp 2 --dp 2 --ep 2 --enable-dp-attention --set runtime.lm_head=replicated \
    --set workload.path="$tmp/many.jsonl"
run many_vocab 2 2 --tp 2 --dp 2 --ep 2 --enable-dp-attention --set runtime.lm_head=vocab \
    --set workload.path="$tmp/many.jsonl"
same many_repl many_vocab 300
# a bad value names the field
out=$("$dpep" config check "$tmp/run.yaml" --set runtime.lm_head=sideways 2>&1); rc=$?
if [ $rc -eq 2 ] && grep -q "runtime.lm_head" <<< "$out"; then
    echo "  ok   runtime.lm_head=sideways refused (exit 2): $(head -1 <<< "$out")"
else
    echo "FAIL runtime.lm_head=sideways: exit $rc: $out"; fails=$((fails + 1))
fi
[ $fails -eq 0 ] && echo "lm_head: all passed" || echo "FAIL lm_head: $fails check(s)"
[ $fails -eq 0 ]
