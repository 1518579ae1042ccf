#!/usr/bin/env bash
# prefix_cache.sh — the radix prefix cache end to end with `dpep run`: SGLang's
# generated-shared-prefix workload (groups of prompts sharing a system prompt
# that ends mid-page, shuffled, all admitted at once) on a generated tiny V3
# model, on three layouts (1 rank; DP attention 4 + EP 4; DP attention 2 with
# attention-TP 2), each served with the cache off, on with round_robin, on
# with cache_aware, and on with cache_aware + attention-DP balance:
#   - every request's greedy tokens equal the cache-off run's, logprobs
#     within 1e-5;
#   - the cache was used (hit rate > 0), and cache_aware reaches the
#     workload's maximum hit rate (every prompt but each group's first reuses
#     the system prompt's whole pages) on every layout, round_robin less with
#     several DP groups;
#   - a KV pool too small for the cache: it evicts, the outputs still equal.
#   prefix_cache.sh DPEP SRC_DIR
set -uo pipefail
dpep=$1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
tmp=$(mktemp -d /tmp/dpep-prefix-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0
"$dpep" model gen --arch deepseek_v3 --preset tiny --seed 5 "$tmp/model" > /dev/null ||
    { echo "FAIL model gen"; exit 1; }
cat > "$tmp/run.yaml" <<YAML
model: {path: $tmp/model}
runtime: {device: cpu, page_size: 16, max_running_requests: 16, chunked_prefill_size: 64, comm_timeout_s: 60}
workload: {kind: shared_prefix, num_groups: 4, prompts_per_group: 6, system_prompt_len: 100,
           question_len: 10, output_len: 8}
YAML

run() { # name np overrides... -> $tmp/name.jsonl, $tmp/name.json
    local name=$1 np=$2
    shift 2
    timeout 120 mpirun -np "$np" --oversubscribe --bind-to none "$dpep" run "$tmp/run.yaml" "$@" \
        --ignore-eos --quiet --output "$tmp/$name.jsonl" --summary-json "$tmp/$name.json" \
        > "$tmp/$name.log" 2>&1 ||
        { echo "FAIL $name: dpep run exited non-zero"; tail -5 "$tmp/$name.log"; fails=$((fails + 1)); }
}

compare() { # base other
    python3 - "$tmp/$1.jsonl" "$tmp/$2.jsonl" "$tmp/$2.json" "$2" <<'PY' || fails=$((fails + 1))
import json, sys
base = {json.loads(l)["id"]: json.loads(l) for l in open(sys.argv[1])}
got = {json.loads(l)["id"]: json.loads(l) for l in open(sys.argv[2])}
summ = json.load(open(sys.argv[3]))
name = sys.argv[4]
bad = [k for k in base if k not in got or got[k]["output_ids"] != base[k]["output_ids"]]
d = max((abs(a - b) for k in base if k in got for a, b in zip(got[k]["logprobs"], base[k]["logprobs"])),
        default=0.0)
hit = summ["cache_hit_rate"]
ok = not bad and len(got) == len(base) and d < 1e-5
print(f"{'ok  ' if ok else 'FAIL'} {name}: {len(got)} requests, tokens equal to the cache off run: "
      f"{not bad}, max logprob diff {d:.1e}, hit rate {hit:.3f}, evicted {summ['evicted_tokens']}")
sys.exit(0 if ok else 1)
PY
}

hit() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['cache_hit_rate'])" "$tmp/$1.json"; }

layout() { # name np overrides...
    local name=$1 np=$2
    shift 2
    run "$name.off" "$np" "$@" --disable-radix-cache
    run "$name.rr" "$np" "$@" --load-balance-method round_robin
    run "$name.ca" "$np" "$@" --load-balance-method cache_aware
    run "$name.bal" "$np" "$@" --load-balance-method cache_aware --dp-balance-hold-steps 4
    for v in rr ca bal; do compare "$name.off" "$name.$v"; done
    python3 - "$(hit "$name.rr")" "$(hit "$name.ca")" "$name" "$np" <<'PY' || fails=$((fails + 1))
import sys
rr, ca, name, np_ = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4])
# 4 groups x 6 prompts of 100 shared + 10 own tokens, pages of 16: a prompt
# can reuse at most 96 tokens (6 whole pages) of its 110, and the first of
# each group none: the maximum is 4 * 5 * 96 / (24 * 110)
top = 4 * 5 * 96 / (24 * 110)
ok = rr > 0 and ca >= rr - 1e-9 and abs(ca - top) < 1e-9
print(f"{'ok  ' if ok else 'FAIL'} {name}: hit rate round_robin {rr:.3f}, cache_aware {ca:.3f} "
      f"(workload maximum {top:.3f})")
sys.exit(0 if ok else 1)
PY
}

layout one 1 --tp 1 --dp 1 --ep 1
layout dpa4 4 --tp 4 --dp 4 --ep 4 --enable-dp-attention --moe-dense-tp-size 1
layout dpa2_atp2 4 --tp 4 --dp 2 --ep 4 --enable-dp-attention --moe-dense-tp-size 1
# a pool of 160 tokens per rank: the running requests fit, the cache must evict
run small.off 1 --disable-radix-cache --max-kv-tokens 160 --max-running-requests 4
run small.ca 1 --max-kv-tokens 160 --max-running-requests 4
compare small.off small.ca
python3 -c "import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))['evicted_tokens'] > 0 else 1)" \
    "$tmp/small.ca.json" || { echo "FAIL small: the cache did not evict"; fails=$((fails + 1)); }
echo "prefix cache: $fails failure(s)"
[ "$fails" = 0 ]
