#!/usr/bin/env bash
# test_plan.sh — `dpep plan`: runs on every shipped deployment in configs/,
# the DeepSeek-V3 8 x H200 plan against its golden text (TP 8 vs TP 8 DP 8
# with DP attention side by side), the exact KV bytes per token of V3 and
# V2-Lite, JSON output, "does not fit" verdicts naming what overflows, and
# usage errors.
#   tests/launcher/test_plan.sh CLI DPEP SOURCE_DIR
# CLI is a binary taking `plan …` (dpep);
# DPEP makes the tiny test model. UPDATE_GOLDEN=1 rewrites the golden files.
set -u
cli=$1
dpep=$(readlink -f "$2")
src=$(readlink -f "$3")
gold=$src/tests/launcher/golden
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
c=$src/configs
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
expect() { # expect CODE DESCRIPTION -- ARGS…  (`CLI plan ARGS…`, output in $tmp/out)
  local want=$1 what=$2
  shift 3
  timeout 60 "$cli" plan "$@" >"$tmp/out" 2>&1
  local got=$?
  if [ "$got" = "$want" ]; then ok "$what"
  else bad "$what: exit $got, expected $want"; sed 's/^/     /' "$tmp/out" | head -30; fi
}
contains() {
  if grep -qE -- "$1" "$tmp/out"; then ok "$2"
  else bad "$2: output lacks /$1/"; sed 's/^/     /' "$tmp/out" | head -40; fi
}

echo "# every shipped deployment"
for f in "$c"/*.yaml; do
  name=$(basename "$f")
  case $name in
    tiny.yaml)
      # The tiny model is generated on first use: make it here.
      "$dpep" model gen "$tmp/tiny-v3" >/dev/null 2>&1 || bad "dpep model gen"
      expect 0 "plan $name" -- "$f" --model-path "$tmp/tiny-v3"
      contains "CPU backend: weights loaded as f32, KV cache f32" "tiny: CPU plan says f32" ;;
    *cookbook*)
      for conf in default high-throughput-dp; do
        expect 0 "plan $name --configuration $conf" -- "$f" --configuration "$conf" \
          --model-path "$c/models/deepseek-v3"
      done ;;
    *)
      expect 0 "plan $name" -- "$f"
      contains "verdict: fits" "$name fits" ;;
  esac
done

echo "# DeepSeek-V3 on 8 x H200: golden plan with the TP vs DP-attention comparison"
expect 0 "plan deepseek-v3-h200x8.yaml" -- "$c/deepseek-v3-h200x8.yaml"
sed -e "s|$src|@SRC@|g" "$tmp/out" >"$tmp/plan.txt"
[ "${UPDATE_GOLDEN:-0}" = 1 ] && cp "$tmp/plan.txt" "$gold/plan-v3-h200x8.txt"
if diff -u "$gold/plan-v3-h200x8.txt" "$tmp/plan.txt" >"$tmp/diff"; then ok "golden plan-v3-h200x8"
else bad "golden plan-v3-h200x8 differs"; head -40 "$tmp/diff"; fi
contains "KV cache per token: 61 layers x \(kv_lora 512 \+ rope 64\) x 2 B = 70272 B" "V3 KV bytes per token (bf16)"
contains "FP8 e4m3 projections with float32 block scales" "FP8 weights with scales"
contains "TP 8, no DP attention +TP 8, DP 8, DP attention" "comparison header"
contains "GPUs holding each token's KV +8 +1" "TP duplicates the KV 8x, DPA once"
contains "per GPU +[0-9.]+ GB \(1x\) +[0-9.]+ GB \(1/8x\)" "KV per GPU 1x vs 1/8x"
contains "all 8 GPUs +[0-9.]+ GB \(8x\) +[0-9.]+ GB \(1x\)" "total KV 8x vs 1x"
contains "batch capacity with DP attention: x[0-9.]+ \(x8 at equal KV memory per GPU" "batch capacity ratio"
expect 0 "--compare on a TP-only layout" -- "$c/deepseek-v3-h200x8.yaml" --dp 1 --ep 1 --compare
contains "DP attention vs TP for the KV cache" "comparison shown on request"
expect 0 "--kv-dtype f32" -- "$c/deepseek-v3-h200x8.yaml" --kv-dtype f32
contains "x 4 B = 140544 B" "f32 KV doubles the bytes per token"
expect 0 "V2-Lite on one GPU" -- "$c/deepseek-v2-lite-1gpu.yaml" --context 8192
contains "27 layers x \(kv_lora 512 \+ rope 64\) x 2 B = 31104 B" "V2-Lite KV bytes per token"
contains "weights in the checkpoint's dtypes \(BF16\)" "V2-Lite is BF16"
contains "KV cache bf16" "V2-Lite: bf16 KV (auto, BF16 weights on a GPU)"
expect 0 "runtime.kv_cache_dtype f32" -- "$c/deepseek-v2-lite-1gpu.yaml" --kv-cache-dtype f32
contains "KV cache f32" "kv_cache_dtype f32 named"
contains "x 4 B = 62208 B" "kv_cache_dtype f32 doubles the bytes per token"
expect 0 "model.dtype f32: auto KV f32" -- "$c/deepseek-v2-lite-1gpu.yaml" --dtype f32
contains "x 4 B = 62208 B" "f32 weights keep an f32 KV under auto"
expect 0 "--kv-dtype over kv_cache_dtype" -- "$c/deepseek-v2-lite-1gpu.yaml" --kv-cache-dtype f32 --kv-dtype bf16
contains "x 2 B = 31104 B" "--kv-dtype wins"
expect 0 "96 x H100: redundant expert slots" -- "$c/deepseek-v3-h100x96.yaml"
contains "routed experts: 3 per rank \(ep does not divide" "3 expert slots per GPU named"

echo "# JSON"
expect 0 "--json" -- "$c/deepseek-v3-h200x8.yaml" --json
if command -v python3 >/dev/null 2>&1; then
  if python3 - "$tmp/out" <<'PY'
import json, sys
o = json.load(open(sys.argv[1]))
assert o["kv_bytes_per_token"] == 61 * 576 * 2, o["kv_bytes_per_token"]
assert o["layout"]["world"] == 8 and o["layout"]["dpa"] is True
assert o["fits"] is True and o["kv_tokens_per_instance"] == 8 * o["kv_tokens_per_rank"]
c = o["compare"]
assert c["tp"]["kv_tokens_per_instance"] == c["tp"]["kv_tokens_per_rank"]
assert c["dp_attention"]["max_batch_per_instance"] > c["tp"]["max_batch_per_instance"]
w = o["weights_bytes"]
assert abs(sum(v for k, v in w.items() if k != "total") - w["total"]) < 1e3
PY
  then ok "JSON fields consistent"; else bad "JSON fields"; head -40 "$tmp/out"; fi
else
  contains '"kv_bytes_per_token": 70272' "JSON KV bytes per token"
fi

echo "# does not fit"
expect 2 "V3 on 8 x 80 GB TP 8" -- "$c/deepseek-v3-h200x8.yaml" --gpu-memory-gb 80 --dp 1
contains "verdict: does not fit: weights [0-9.]+ GB \(largest: routed experts" "overflow names the weights"
contains "exceed the 70.40 GB per rank \(gpu_memory_gb 80 x mem_fraction_static 0.88\)" "and the budget"
expect 2 "context longer than the KV room" -- "$c/deepseek-v2-lite-1gpu.yaml" --context 1000000000
contains "does not fit: the KV cache: .* less than one request of 1000000000 tokens" "KV overflow named"

echo "# usage"
expect 2 "no FILE" -- --json
expect 2 "bad --context" -- "$c/deepseek-v3-h200x8.yaml" --context 0
expect 2 "bad --kv-dtype" -- "$c/deepseek-v3-h200x8.yaml" --kv-dtype fp8
expect 2 "bad runtime.kv_cache_dtype" -- "$c/deepseek-v3-h200x8.yaml" --kv-cache-dtype fp8_e4m3
contains "kv_cache_dtype" "bad kv_cache_dtype named"
expect 2 "missing model config" -- "$c/deepseek-v3-h200x8.yaml" --model-path "$tmp/none"
contains "model.path is .*none" "missing config.json named with the config line"
expect 2 "layout the model cannot take" -- "$c/deepseek-v3-h200x8.yaml" --tp 8 --dp 1 --ep 8 --moe-dense-tp-size null --set parallel.tp=7 --gpus-per-node 7
expect 0 "--help" -- --help

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
