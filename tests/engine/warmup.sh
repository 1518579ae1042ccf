#!/usr/bin/env bash
# warmup.sh — the engine's warm-up step at start (runtime.warmup_tokens):
# one synthetic prefill and one decode step on every rank before the first
# request, that must leave nothing behind. Checked on the tiny V3 model:
#   - outputs bit-identical with the warm-up off (0), default (32) and larger
#     than a step (clamped), on 1 rank and on 2 ranks (DP attention + EP 2:
#     the warm-up's MoE exchange and vocabulary-parallel lm_head collective);
#   - the expert load counts only the requests' tokens: per MoE layer, the
#     sum over experts = top-k x (prompt tokens + generated tokens - 1) of
#     every request (the last sampled token is never fed back);
#   - a KV pool too small for the warm-up: the rank joins with no tokens and
#     the run still serves; a warm-up longer than the longest sequence is
#     shortened to fit; none of these logs an error or a warning;
#   - a bad value is refused (exit 2, naming runtime.warmup_tokens).
#   tests/engine/warmup.sh DPEP_BIN
set -uo pipefail
dpep=${1:?dpep binary}
here=$(cd "$(dirname "$0")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn} OMP_NUM_THREADS=1
tmp=$(mktemp -d /tmp/dpep-warmup-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0
"$dpep" model gen --preset tiny --seed 11 "$tmp/m" > /dev/null || { echo "FAIL model gen"; exit 1; }
python3 "$here/gen_requests.py" "$tmp/work.jsonl" 6 3 36 9 17
python3 "$here/run_yaml.py" "$tmp/run.yaml" "$tmp/m" "$tmp/work.jsonl"
run() { # name np args...
    local name=$1 np=$2
    shift 2
    if ! timeout 120 mpirun -np "$np" --bind-to none --oversubscribe "$dpep" run "$tmp/run.yaml" \
        --ignore-eos --output "$tmp/$name.jsonl" --summary-json "$tmp/$name.json" "$@" \
        > "$tmp/$name.log" 2>&1; then
        echo "FAIL $name: dpep run exited non-zero"; tail -15 "$tmp/$name.log"; fails=$((fails + 1)); return 1
    fi
    if grep -E "ERROR|WARN" "$tmp/$name.log"; then
        echo "FAIL $name: the run logged errors or warnings"; fails=$((fails + 1))
    fi
    python3 - "$tmp/m/config.json" "$tmp/$name.json" "$tmp/$name.jsonl" "$name" <<'PY' || fails=$((fails + 1))
import json, sys
c = json.load(open(sys.argv[1])); s = json.load(open(sys.argv[2]))
reqs = [json.loads(l) for l in open(sys.argv[3])]
fed = sum(r["input_len"] + len(r["output_ids"]) - 1 for r in reqs)
want = fed * c["num_experts_per_tok"]
sums = [round(x["mean"] * c["n_routed_experts"]) for x in s["expert_load"]]
# every expert's count (the JSON's, for placement work) adds up the same,
# within the text's min / max, and the EP ranks' share is >= 1 when given
counts_ok = all(len(x["counts"]) == c["n_routed_experts"] and sum(x["counts"]) == want and
                min(x["counts"]) == x["min"] and max(x["counts"]) == x["max"] and
                x.get("ep_rank_max_over_mean", 1.0) >= 1.0 for x in s["expert_load"])
ok = len(reqs) == 6 and sums and all(x == want for x in sums) and counts_ok
print("%s %-10s expert load per MoE layer %s, want %d (top-k x %d tokens fed)%s" % (
    "  ok  " if ok else "FAIL", sys.argv[4], sums, want, fed, "" if counts_ok else "; per-expert counts wrong"))
sys.exit(0 if ok else 1)
PY
}
same() { # a b: bit-identical tokens and log-probs
    python3 "$here/same_outputs.py" "$tmp/$1.jsonl" "$tmp/$2.jsonl" 0 6 "$1 vs $2" || fails=$((fails + 1))
}
echo "warm-up at start leaves no trace (tiny V3):"
run off1 1 --warmup-tokens 0
run def1 1
run big1 1 --warmup-tokens 100000
same off1 def1
same off1 big1
run off2 2 --tp 2 --dp 2 --ep 2 --enable-dp-attention --warmup-tokens 0
run def2 2 --tp 2 --dp 2 --ep 2 --enable-dp-attention --warmup-tokens 48
same off2 def2
# a KV pool of 32 tokens, shorter than the longest request (45): the warm-up
# (32 + 1 tokens) does not fit, the rank joins its steps with none; the
# requests that fit are served as with no warm-up (in other batches: log-probs
# within 1e-5), the two others fail (exit 3)
DPEP_LOG_LEVEL=debug timeout 120 mpirun -np 1 --bind-to none "$dpep" run "$tmp/run.yaml" --ignore-eos \
    --max-kv-tokens 32 --output "$tmp/small1.jsonl" > "$tmp/small1.log" 2>&1
rc=$?
if [ $rc -eq 3 ] && grep -q "warm-up: the KV pool cannot hold 33 tokens" "$tmp/small1.log" &&
    python3 - "$tmp/small1.jsonl" "$tmp/off1.jsonl" <<'PY'
import json, sys
a = {r["id"]: r for r in map(json.loads, open(sys.argv[1]))}
b = {r["id"]: r for r in map(json.loads, open(sys.argv[2]))}
served = [k for k in a if a[k].get("output_ids")]
# the small pool runs them in other batches: log-probs within 1e-5, not bitwise
sys.exit(0 if len(served) == 4 and all(a[k]["output_ids"] == b[k]["output_ids"] and max(
    abs(x - y) for x, y in zip(a[k]["logprobs"], b[k]["logprobs"])) <= 1e-5 for k in served) else 1)
PY
then
    echo "  ok   small1     the warm-up skipped where the KV pool cannot hold it; 4 requests as without it"
else
    echo "FAIL small1: exit $rc (want 3), or no skip message, or outputs differ"; tail -8 "$tmp/small1.log"
    fails=$((fails + 1))
fi
# bad values
for v in -1 x 1.5; do
    out=$(timeout 60 mpirun -np 1 "$dpep" run "$tmp/run.yaml" --warmup-tokens "$v" 2>&1)
    rc=$?
    if [ $rc -eq 2 ] && grep -q "warmup_tokens" <<< "$out"; then
        echo "  ok   --warmup-tokens $v refused (exit 2)"
    else
        echo "FAIL --warmup-tokens $v: exit $rc"; echo "$out" | tail -5; fails=$((fails + 1))
    fi
done
[ $fails -eq 0 ] && echo "warmup: all passed" || echo "FAIL warmup: $fails check(s)"
[ $fails -eq 0 ]
