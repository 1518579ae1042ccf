#!/usr/bin/env bash
# test_model_cli.sh — `dpep model gen/info/check` end to end, and broken
# checkpoints through the CLI: exit 2 with the file and tensor named.
set -u
dpep=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
expect() { # CODE WHAT -- CMD...
  local want=$1 what=$2; shift 3
  "$@" >"$tmp/out" 2>&1; local got=$?
  if [ "$got" = "$want" ]; then pass=$((pass+1)); echo "ok   $what"
  else fail=$((fail+1)); echo "FAIL $what: exit $got, expected $want"; sed 's/^/     /' "$tmp/out" | head -20; fi
}
contains() {
  if grep -qF -- "$1" "$tmp/out"; then pass=$((pass+1)); echo "ok   $2"
  else fail=$((fail+1)); echo "FAIL $2: output lacks: $1"; sed 's/^/     /' "$tmp/out" | head -20; fi
}

expect 0 "gen tiny v3" -- "$dpep" model gen --arch deepseek_v3 --preset tiny --seed 3 "$tmp/v3"
contains "DeepseekV3ForCausalLM, 6.4 M parameters" "gen summary"
expect 0 "gen tiny v2 bf16 sharded" -- "$dpep" model gen --arch deepseek_v2 --dtype bf16 --shard-mb 4 "$tmp/v2"
[ -f "$tmp/v2/model.safetensors.index.json" ] && { pass=$((pass+1)); echo "ok   index written"; } || { fail=$((fail+1)); echo "FAIL no index"; }
expect 0 "gen with --set n_routed_experts=24" -- "$dpep" model gen --set n_routed_experts=24 --set rope_scaling.factor=4 "$tmp/v3e24"
grep -q '"n_routed_experts": 24' "$tmp/v3e24/config.json" && grep -q '"factor": 4' "$tmp/v3e24/config.json" \
  && { pass=$((pass+1)); echo "ok   --set reached config.json"; } || { fail=$((fail+1)); echo "FAIL --set"; }
expect 0 "gen fp8" -- "$dpep" model gen --dtype fp8 "$tmp/v3fp8"
grep -q '"quant_method": "fp8"' "$tmp/v3fp8/config.json" && { pass=$((pass+1)); echo "ok   fp8 quantization_config"; } || { fail=$((fail+1)); echo "FAIL fp8 config"; }
# determinism: same seed, same bytes
"$dpep" model gen --seed 3 "$tmp/v3again" >/dev/null
cmp -s "$tmp/v3/model.safetensors" "$tmp/v3again/model.safetensors" && { pass=$((pass+1)); echo "ok   deterministic"; } || { fail=$((fail+1)); echo "FAIL not deterministic"; }

expect 2 "gen bad arch" -- "$dpep" model gen --arch llama "$tmp/x"
expect 2 "gen bad preset" -- "$dpep" model gen --preset huge "$tmp/x"
expect 2 "gen --set breaking the model" -- "$dpep" model gen --set n_group=5 "$tmp/x"
contains "n_group: must divide n_routed_experts" "gen names the field"
expect 2 "gen without DIR" -- "$dpep" model gen

expect 0 "info" -- "$dpep" model info "$tmp/v3" --tp 4 --dp 4 --ep 4 --enable-dp-attention
contains "routed experts" "info kinds"
contains "total                   6405040" "info total parameters"
expect 2 "info: experts not divisible by ep" -- "$dpep" model info "$tmp/v3e24" --tp 16 --dp 16 --ep 16 --enable-dp-attention
contains "n_routed_experts 24 is not divisible by ep 16" "ep rule named"
expect 2 "info: heads not divisible by attention TP" -- "$dpep" model info "$tmp/v3" --tp 3
contains "num_attention_heads 8 is not divisible by the attention-TP size 3" "attn_tp rule named"
expect 0 "check v3" -- "$dpep" model check "$tmp/v3"
contains "201 tensors match config.json" "check count"
expect 0 "check v2 sharded, load rank 1 of ep 2" -- "$dpep" model check "$tmp/v2" --tp 2 --dp 2 --ep 2 --enable-dp-attention --load --rank 1
contains "experts 8..15" "rank 1 holds experts 8..15"
expect 0 "check fp8 with load" -- "$dpep" model check "$tmp/v3fp8" --load

# Broken checkpoints.
cp -r "$tmp/v3" "$tmp/trunc"; truncate -s 1000000 "$tmp/trunc/model.safetensors"
expect 2 "truncated file" -- "$dpep" model check "$tmp/trunc"
contains "out of bounds" "truncation named"
cp -r "$tmp/v3" "$tmp/noshard"; rm "$tmp/noshard/model.safetensors"
expect 2 "no weights" -- "$dpep" model check "$tmp/noshard"
cp -r "$tmp/v2" "$tmp/v2missing"; rm "$tmp/v2missing/model-00002-of-"*.safetensors
expect 2 "index names a missing shard" -- "$dpep" model check "$tmp/v2missing"
contains "which is missing" "missing shard named"
cp -r "$tmp/v3" "$tmp/wrongcfg"; sed -i 's/"intermediate_size": 512/"intermediate_size": 500/' "$tmp/wrongcfg/config.json"
expect 2 "shape disagreeing with config.json" -- "$dpep" model check "$tmp/wrongcfg"
contains "tensor model.layers.0.mlp.gate_proj.weight has 2 dims [512, 256] (expected [500, 256]" "shape error names tensor"
cp -r "$tmp/v3" "$tmp/morelayers"; sed -i 's/"num_hidden_layers": 4/"num_hidden_layers": 5/' "$tmp/morelayers/config.json"
expect 2 "missing tensors" -- "$dpep" model check "$tmp/morelayers"
contains "tensor model.layers.4.input_layernorm.weight is missing" "missing tensor named"
cp -r "$tmp/v3" "$tmp/arch"; sed -i 's/DeepseekV3ForCausalLM/MixtralForCausalLM/' "$tmp/arch/config.json"
expect 2 "unsupported architecture" -- "$dpep" model check "$tmp/arch"
contains "architectures: unsupported architecture MixtralForCausalLM" "architecture named"
cp -r "$tmp/v3" "$tmp/badjson"; printf '{"hidden_size": 256,' > "$tmp/badjson/config.json"
expect 2 "config.json not JSON" -- "$dpep" model check "$tmp/badjson"
# a weight stored as I32 (same byte size as F32): the dtype is named
cp -r "$tmp/v3" "$tmp/i32"
python3 - "$tmp/i32/model.safetensors" <<'PY'
import json, struct, sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
h["model.layers.2.self_attn.o_proj.weight"]["dtype"] = "I32"
t = json.dumps(h, separators=(",", ":")).encode()
t += b" " * (n - len(t))
assert len(t) == n
b[8:8 + n] = t
open(p, "wb").write(b)
PY
expect 2 "integer dtype where a weight belongs" -- "$dpep" model check "$tmp/i32"
contains "tensor model.layers.2.self_attn.o_proj.weight has dtype I32" "dtype named"
# fewer layers than stored (like an MTP layer beyond num_hidden_layers): ignored, noted
cp -r "$tmp/v3" "$tmp/mtp"; sed -i 's/"num_hidden_layers": 4/"num_hidden_layers": 3/' "$tmp/mtp/config.json"
expect 0 "layers beyond num_hidden_layers are ignored" -- "$dpep" model check "$tmp/mtp" --load
contains "tensors the model does not use (e.g. an MTP layer) ignored" "extra tensors noted"
expect 0 "gen f16" -- "$dpep" model gen --dtype f16 "$tmp/v3f16"
expect 0 "check f16 with load" -- "$dpep" model check "$tmp/v3f16" --load
head -c 4096 /dev/urandom > "$tmp/noshard/model.safetensors"
expect 2 "random bytes as safetensors" -- "$dpep" model check "$tmp/noshard"
expect 2 "no such directory" -- "$dpep" model check "$tmp/nope"

# A bad config.json is exit 2 naming the field, never a signal (SIGFPE was
# 136) nor a hang: model info, model check and plan, each under a timeout.
src=$(cd "$(dirname "$0")/../.." && pwd)
bad_config() { # NAME FIELD SED-EXPR: a copy of v3 whose config.json is edited
  local d=$tmp/$1 field=$2
  cp -r "$tmp/v3" "$d"; sed -i "$3" "$d/config.json"
  expect 2 "model info: $field ($1)" -- timeout 20 "$dpep" model info "$d"
  contains "$d/config.json: $field: " "model info names $field ($1)"
  expect 2 "model check: $field ($1)" -- timeout 20 "$dpep" model check "$d"
  contains "$d/config.json: $field: " "model check names $field ($1)"
  expect 2 "plan: $field ($1)" -- timeout 20 "$dpep" plan "$src/configs/tiny.yaml" --model-path "$d"
  contains "$d/config.json: $field: " "plan names $field ($1)"
}
bad_config ngroup0 n_group 's/"n_group": 4/"n_group": 0/'
bad_config ngroupstr n_group 's/"n_group": 4/"n_group": "4"/'
bad_config ngroupfrac n_group 's/"n_group": 4/"n_group": 1.5/'
bad_config ngroupnull topk_group 's/"n_group": 4/"n_group": null/'    # 1 group, keep 2: no
bad_config betafast rope_scaling.beta_fast 's/"beta_fast": 32.0/"beta_fast": 0/'
bad_config eosbig eos_token_id 's/"eos_token_id": 1/"eos_token_id": 4294967297/'
# 2^16 experts x 4096 layers: 0.8 G tensors to list (a hang before), now one line
bad_config experts n_routed_experts \
  's/"n_routed_experts": 16/"n_routed_experts": 65536/; s/"num_hidden_layers": 4/"num_hidden_layers": 4096/'
# heads x dims beyond an int
bad_config heads num_attention_heads \
  's/"num_attention_heads": 8/"num_attention_heads": 65536/; s/"qk_nope_head_dim": 32/"qk_nope_head_dim": 65536/'
# config.json that is a FIFO (open() blocked forever before) or /dev/zero
mkdir "$tmp/fifo" && mkfifo "$tmp/fifo/config.json"
expect 2 "config.json a FIFO: refused, not blocked on" -- timeout 20 "$dpep" model info "$tmp/fifo"
contains "config.json: is a FIFO (named pipe) (expected a regular file)" "FIFO named"
mkdir "$tmp/zero" && ln -s /dev/zero "$tmp/zero/config.json"
expect 2 "config.json -> /dev/zero: refused" -- timeout 20 "$dpep" model check "$tmp/zero"
contains "config.json: is a character device (expected a regular file)" "device named"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
