#!/usr/bin/env bash
# kv_dtype.sh — the latent KV cache in BF16 (runtime.kv_cache_dtype, SGLang's
# --kv-cache-dtype) through `dpep run` on the tiny V3 and V2 models:
#  - a BF16 cache gives the same greedy tokens on 1 rank, on 4 ranks with DP
#    attention + EP 4, on 2 ranks with attention-TP 2, and with the prefix
#    cache reusing its pages (shared prompts); log-probs: median |diff| <=
#    1e-4, p90 <= 1e-3, max <= 0.05 (the layouts' f32 rows differ in the last
#    bits, which now and then moves an element across a BF16 rounding
#    boundary: one BF16 step, 2^-8, where f32 would differ by 2^-24);
#  - against the f32 cache, over the tokens before each request's first
#    differing token: |d log-prob| median <= 0.01, p90 <= 0.02, max <= 1
#    (rows rounded to 8 bits of mantissa; a MoE router may flip an expert for
#    a token; a random tiny model's top tokens are close, so greedy paths may
#    part), and not all equal (the rounding is really on);
#  - the summary names the dtype and its bytes per token, and the pool takes
#    half the bytes for the same tokens;
#  - auto is f32 on the CPU; a bad value exits 2 naming the field.
#   tests/engine/kv_dtype.sh DPEP_BIN SRC_DIR
set -uo pipefail
dpep=${1:?dpep binary}
src=$(cd "${2:?source dir}" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn}
tmp=$(mktemp -d /tmp/dpep-kvdtype-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0
"$dpep" model gen --preset tiny --seed 5 "$tmp/v3" > /dev/null || { echo "FAIL model gen v3"; exit 1; }
"$dpep" model gen --arch deepseek_v2 --preset tiny --seed 6 "$tmp/v2" > /dev/null || { echo "FAIL model gen v2"; exit 1; }
python3 "$src/tests/engine/gen_requests.py" "$tmp/work.jsonl" 6 3 40 12 19
python3 "$src/tests/engine/run_yaml.py" "$tmp/run.yaml" "$tmp/v3" "$tmp/work.jsonl" \
    runtime.chunked_prefill_size=32 runtime.bind=none
run() { # name np model kv_dtype [args...]: runs, checks the summary's KV line
    local name=$1 np=$2 model=$3 kv=$4
    shift 4
    if ! timeout 120 mpirun -np "$np" --oversubscribe --bind-to none --mca btl self,vader "$dpep" run \
        "$tmp/run.yaml" --ignore-eos --quiet --output "$tmp/$name.jsonl" --set model.path="$model" \
        --kv-cache-dtype "$kv" --summary-json "$tmp/$name.json" "$@" > "$tmp/$name.log" 2>&1; then
        echo "FAIL $name: dpep run exited non-zero"; tail -15 "$tmp/$name.log"; fails=$((fails + 1)); return
    fi
    local want=$kv
    [ "$kv" = auto ] && want=f32
    if ! grep -q "^KV cache per rank ($want, " "$tmp/$name.log"; then
        echo "FAIL $name: the summary does not name a $want KV cache:"
        grep "^KV cache" "$tmp/$name.log"; fails=$((fails + 1)); return
    fi
    echo "  ran  $name: $(grep '^KV cache per rank' "$tmp/$name.log")"
}
same() { # a b tol: tokens identical, logprobs within tol
    python3 "$src/tests/engine/same_outputs.py" "$tmp/$1.jsonl" "$tmp/$2.jsonl" "$3" 6 "$1 vs $2" ||
        fails=$((fails + 1))
}
close() { # a b med p90 max [flags]: see close_outputs.py
    python3 "$src/tests/engine/close_outputs.py" "$tmp/$1.jsonl" "$tmp/$2.jsonl" 6 "$1 vs $2" "${@:3}" ||
        fails=$((fails + 1))
}
echo "BF16 latent KV cache (tiny models, greedy, 12 tokens, 6 requests):"
run v3_f32 1 "$tmp/v3" f32
run v3_auto 1 "$tmp/v3" auto
run v3_bf16 1 "$tmp/v3" bf16
run v3_bf16_dpa4 4 "$tmp/v3" bf16 --tp 4 --dp 4 --ep 4 --enable-dp-attention
run v3_bf16_tp2 2 "$tmp/v3" bf16 --tp 2
run v2_f32 1 "$tmp/v2" f32
run v2_bf16 1 "$tmp/v2" bf16
run v2_bf16_dpa2 2 "$tmp/v2" bf16 --tp 2 --dp 2 --ep 2 --enable-dp-attention
printf '  auto on the CPU is f32:            '; same v3_auto v3_f32 0
printf '  bf16, 4 ranks DPA+EP vs 1:         '; close v3_bf16_dpa4 v3_bf16 1e-4 1e-3 5e-2 --same-tokens
printf '  bf16, attention-TP 2 vs 1:         '; close v3_bf16_tp2 v3_bf16 1e-4 1e-3 5e-2 --same-tokens
printf '  V2 bf16, 2 ranks DPA+EP vs 1:      '; close v2_bf16_dpa2 v2_bf16 1e-4 1e-3 5e-2 --same-tokens
printf '  V3 bf16 vs f32:                    '; close v3_f32 v3_bf16 1e-2 2e-2 1.0 --differ
printf '  V2 bf16 vs f32:                    '; close v2_f32 v2_bf16 1e-2 2e-2 1.0 --differ
# the prefix cache hands BF16 pages to later requests: shared prompts, same
# tokens with the radix cache on and off, and some prompt tokens reused
python3 "$src/tests/engine/run_yaml.py" "$tmp/run.yaml" "$tmp/v3" "$tmp/work.jsonl" \
    runtime.chunked_prefill_size=32 runtime.bind=none workload.kind=shared_prefix \
    workload.num_groups=2 workload.prompts_per_group=3 workload.system_prompt_len=48 \
    workload.question_len=8 workload.output_len=10 runtime.max_running_requests=2
run pc_on 1 "$tmp/v3" bf16
run pc_off 1 "$tmp/v3" bf16 --disable-radix-cache
printf '  bf16, prefix cache on vs off:      '; close pc_on pc_off 1e-4 1e-3 5e-2 --same-tokens
python3 - "$tmp/pc_on.json" <<'PY' || fails=$((fails + 1))
import json, sys
s = json.load(open(sys.argv[1]))
ok = s.get("cached_tokens", 0) > 0 and s.get("kv_cache_dtype") == "bf16"
print("%s prefix cache reused %d bf16 prompt tokens" % ("  ok  " if ok else "FAIL", s.get("cached_tokens", 0)))
sys.exit(0 if ok else 1)
PY
# the same tokens in half the bytes
python3 - "$tmp/v3_bf16.json" "$tmp/v3_f32.json" <<'PY' || fails=$((fails + 1))
import json, sys
b, f = (json.load(open(p)) for p in sys.argv[1:])
rb, rf = b["kv_per_rank"][0], f["kv_per_rank"][0]
ok = (b["kv_cache_dtype"], f["kv_cache_dtype"]) == ("bf16", "f32") and \
     rb["capacity_tokens"] == rf["capacity_tokens"] and 2 * rb["pool_bytes"] == rf["pool_bytes"]
print("%s pool: bf16 %d B, f32 %d B for %d tokens" % ("  ok  " if ok else "FAIL", rb["pool_bytes"],
                                                      rf["pool_bytes"], rb["capacity_tokens"]))
sys.exit(0 if ok else 1)
PY
# bad values: exit 2 naming the field
"$dpep" run "$tmp/run.yaml" --kv-cache-dtype fp8 > "$tmp/bad.log" 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q "runtime.kv_cache_dtype" "$tmp/bad.log"; then
    echo "  ok   --kv-cache-dtype fp8: exit 2 naming runtime.kv_cache_dtype"
else
    echo "FAIL --kv-cache-dtype fp8: exit $rc"; cat "$tmp/bad.log"; fails=$((fails + 1))
fi
printf 'model:\n  path: %s\nruntime:\n  device: cpu\n  kv_cache_dtype: f16\n' "$tmp/v3" > "$tmp/bad.yaml"
"$dpep" config check "$tmp/bad.yaml" > "$tmp/bad.log" 2>&1
rc=$?
if [ $rc -eq 2 ] && grep -q "bad.yaml:5:3: runtime.kv_cache_dtype" "$tmp/bad.log"; then
    echo "  ok   kv_cache_dtype: f16 in YAML: exit 2 naming file, line and field"
else
    echo "FAIL kv_cache_dtype f16 in YAML: exit $rc"; cat "$tmp/bad.log"; fails=$((fails + 1))
fi
[ $fails -eq 0 ] && echo "PASSED" || echo "FAILED ($fails)"
[ $fails -eq 0 ]
