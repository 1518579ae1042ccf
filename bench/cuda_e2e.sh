#!/usr/bin/env bash
# cuda_e2e.sh — end to end on one GPU (issue 16): `dpep run --device cuda` on
# a generated model against HF transformers on the same GPU and model, and
# against the floor of a decode step (bytes read per step / the copy
# bandwidth measured in this run by bench/cuda_ceilings). Models:
#   small    dpep model gen --preset small (DeepSeek-V3 shape, ~0.8 B params), BF16
#   small_fp8  the same in FP8 (E4M3, 128x128 block scales; kept FP8 on the GPU),
#            dpep only (E2E_FP8=0: not)
#   v2lite   DeepSeek-V2-Lite's dimensions (random, BF16 on disk) with
#            E2E_V2LITE_LAYERS layers (default 8 of its 27: generating all 27,
#            15.7 B params / 31 GB, takes minutes of the GPU machine's short
#            lease; per-layer dims are V2-Lite's, so per-token costs scale with
#            the layer count). E2E_V2LITE=0 leaves it out.
# For each: batch 1 and batch E2E_BATCH (64) of random prompts (E2E_INPUT
# 128 tokens in, E2E_OUTPUT 64 out, EOS ignored, greedy); the small model
# also without CUDA graphs (--disable-cuda-graph; E2E_EAGER=0: not). The
# floor counts the matrices at the bytes dpep held them (its summary's
# weights_dtype: BF16 kept on the GPU). Prints a Markdown
# table and writes $OUT/cuda_e2e.json when OUT is set. The whole script keeps
# to E2E_BUDGET seconds (default 540: the device tool's call is 10 minutes);
# a step that would start past it is left out (its cells say n/a).
#   bench/cuda_e2e.sh [BUILD_OR_KIT_DIR]   (default ./build; a device kit works)
# Needs a GPU, python3 with torch + transformers for the HF side (the GPU
# machine has them; without them the HF columns say n/a). Not part of CI.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
arg=${1:-$root/build}
arg=$(cd "$arg" && pwd) || { echo "cuda_e2e: no folder ${1:-}" >&2; exit 2; }
if [ -f "$arg/env.sh" ]; then source "$arg/env.sh"; bin=$arg/build; else bin=$arg; fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn}
dpep=$bin/dpep
B=${E2E_BATCH:-64} IN=${E2E_INPUT:-128} OUTL=${E2E_OUTPUT:-64}
work=${E2E_WORK:-/tmp/dpep-cuda-e2e}
mkdir -p "$work"
deadline=$((SECONDS + ${E2E_BUDGET:-540}))
# lim WANT: a step's timeout, never past the deadline; fails (no time left) under 20 s
lim() {
  local left=$((deadline - SECONDS))
  [ "$left" -ge 20 ] || { echo "cuda_e2e: E2E_BUDGET spent: step left out" >&2; return 1; }
  echo $(($1 < left ? $1 : left))
}
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "SKIP: cuda_e2e needs a GPU (nvidia-smi lists none)"; exit 0
fi
# 1. ceilings (copy GB/s), measured now
copy_gbs=$(timeout 120 "$bin/bench/cuda_ceilings" --quick 2>&1 | tee "$work/ceilings.log" | sed -n 's/^ceiling copy_gbs=\([0-9.]*\).*/\1/p' | head -1)
[ -n "$copy_gbs" ] || { echo "cuda_e2e: bench/cuda_ceilings gave no copy bandwidth (see $work/ceilings.log)"; copy_gbs=0; }
# 2. runs (functions; a model is run as soon as it is generated, so that a
# budget spent on the big one still leaves the small one measured)
run_dpep() { # model batch [eager] -> $work/dpep_MODEL_bB[_eager].json
  local m=$1 b=$2 t x=${3:+_eager} extra=()
  [ -n "${3:-}" ] && extra=(--disable-cuda-graph)
  rm -f "$work/dpep_${m}_b$b$x.json"   # (no stale figures from an earlier run)
  t=$(lim 300) || return 0
  cat > "$work/$m.b$b.yaml" <<YAML
model: {path: $work/$m}
runtime: {device: cuda, page_size: 64, chunked_prefill_size: 8192, max_running_requests: $b, comm_timeout_s: 600, bind: none, seed: 1}
launch: {gpu_memory_gb: 130}
workload: {kind: random, num_prompts: $b, input_len: $IN, output_len: $OUTL, range_ratio: 1.0}
YAML
  timeout -k 10 "$t" mpirun -np 1 --bind-to none "$dpep" run "$work/$m.b$b.yaml" --ignore-eos --quiet \
    "${extra[@]}" --summary-json "$work/dpep_${m}_b$b$x.json" > "$work/dpep_${m}_b$b$x.log" 2>&1 ||
    { echo "cuda_e2e: dpep run $m batch $b$x failed (log: $work/dpep_${m}_b$b$x.log):"
      grep -v -e '^---' -e '^ *$' "$work/dpep_${m}_b$b$x.log" | grep -m3 -iE 'error|fail|cannot|refuse|requested|timeout|killed' ||
        tail -5 "$work/dpep_${m}_b$b$x.log"; }
}
run_hf() { # model batch -> $work/hf_MODEL_bB.json
  local m=$1 b=$2 t
  t=$(lim 300) || return 0
  timeout -k 10 "$t" python3 "$root/bench/hf_gpu.py" time --model "$work/$m" --dtype bf16 --batch "$b" \
    --input-len "$IN" --output-len "$OUTL" > "$work/hf_${m}_b$b.json" 2> "$work/hf_${m}_b$b.log" ||
    { echo "cuda_e2e: HF $m batch $b: $(cat "$work/hf_${m}_b$b.json" "$work/hf_${m}_b$b.log" | grep . | tail -1)"
      rm -f "$work/hf_${m}_b$b.json"; }   # (hf_gpu.py: SKIP on stdout, exit 77, without torch)
}
# 3. models, each generated then run at batch 1 and E2E_BATCH
# (and, for the small model unless E2E_EAGER=0, dpep without CUDA graphs)
run_all() {
  local b
  for b in 1 "$B"; do
    run_dpep "$1" "$b"; run_hf "$1" "$b"
    [ "$1" = small ] && [ "${E2E_EAGER:-1}" != 0 ] && run_dpep "$1" "$b" eager
  done
}
gen() { # dir args...
  local d=$1 t; shift
  [ -f "$d/.complete" ] && return 0   # (a gen cut short leaves no marker: redone)
  t=$(lim 300) || return 1
  rm -rf "$d"
  timeout "$t" "$dpep" model gen "$@" "$d" > "$d.gen.log" 2>&1 && touch "$d/.complete" ||
    { echo "cuda_e2e: model gen $d failed:"; tail -5 "$d.gen.log"; return 1; }
}
models=()
gen "$work/small" --arch deepseek_v3 --preset small --dtype bf16 --seed 1 && { models+=(small); run_all small; }
# the same shape in FP8 (kept FP8 on the GPU, dequantized per product): dpep
# only (E2E_FP8=0 leaves it out)
if [ "${E2E_FP8:-1}" != 0 ]; then
  gen "$work/small_fp8" --arch deepseek_v3 --preset small --dtype fp8 --seed 1 &&
    { models+=(small_fp8); for b in 1 "$B"; do run_dpep small_fp8 "$b"; done; }
fi
if [ "${E2E_V2LITE:-1}" != 0 ]; then
  gen "$work/v2lite${E2E_V2LITE_LAYERS:-8}" --arch deepseek_v2 --preset small --dtype bf16 --seed 1 --shard-mb 4096 \
    --set hidden_size=2048 --set num_hidden_layers=${E2E_V2LITE_LAYERS:-8} --set num_attention_heads=16 \
    --set num_key_value_heads=16 --set q_lora_rank=null --set kv_lora_rank=512 \
    --set qk_nope_head_dim=128 --set qk_rope_head_dim=64 --set v_head_dim=128 \
    --set n_routed_experts=64 --set n_shared_experts=2 --set num_experts_per_tok=6 \
    --set n_group=1 --set topk_group=1 --set routed_scaling_factor=1.0 --set norm_topk_prob=false \
    --set scoring_func='"softmax"' --set topk_method='"greedy"' --set first_k_dense_replace=1 \
    --set moe_intermediate_size=1408 --set intermediate_size=10944 --set vocab_size=102400 \
    && { models+=(v2lite${E2E_V2LITE_LAYERS:-8}); run_all v2lite${E2E_V2LITE_LAYERS:-8}; }
fi
# 4. the table
python3 - "$work" "$copy_gbs" "$B" "$IN" "$OUTL" "${models[@]}" <<'PY'
import json, os, sys
work, copy_gbs, B, IN, OUTL = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
models = sys.argv[6:]
def js(p):
    """dpep's --summary-json (one indented object) or hf_gpu.py's output (one line)."""
    try:
        with open(p) as f:
            text = f.read().strip()
    except OSError:
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None
def step_bytes(cfg, batch, ctx, wbytes, kvbytes):
    """Bytes a decode step must read at least: every weight a step touches
    (dense layers, attention, shared experts, and the routed experts the
    batch selects, at most all of them), the KV cache of the batch, once."""
    H, L, V = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    nh, qr = cfg["num_attention_heads"], cfg.get("q_lora_rank")
    kvr, nope, rope, vd = cfg["kv_lora_rank"], cfg["qk_nope_head_dim"], cfg["qk_rope_head_dim"], cfg["v_head_dim"]
    qk = nope + rope
    attn = (H * qr + qr * nh * qk if qr else H * nh * qk) + H * (kvr + rope) + kvr * nh * (nope + vd) + nh * vd * H
    E, k, S, I, Id = cfg["n_routed_experts"], cfg["num_experts_per_tok"], cfg.get("n_shared_experts", 0), cfg["moe_intermediate_size"], cfg["intermediate_size"]
    fk = cfg.get("first_k_dense_replace", 0)
    expert = 3 * H * I
    touched = E * (1 - (1 - k / E) ** batch)  # distinct experts the batch routes to (random gates: expected)
    moe = touched * expert + S * expert + H * E
    dense = 3 * H * Id
    w = L * attn + fk * dense + (L - fk) * moe + V * H  # lm_head in full; the batch's embed rows negligible
    kv = batch * ctx * L * (kvr + rope) * kvbytes  # the latent KV as dpep holds it (f32 or bf16)
    return w * wbytes + kv
rows = []
for m in models:
    cfg = json.load(open(os.path.join(work, m, "config.json")))
    for b in (1, B):
        d, h = js(f"{work}/dpep_{m}_b{b}.json"), js(f"{work}/hf_{m}_b{b}.json")
        de = js(f"{work}/dpep_{m}_b{b}_eager.json")
        ctx = IN + OUTL // 2  # mean context of the decode steps
        # the matrices' bytes as dpep held them (its summary: bf16 kept on the GPU)
        wdt = d and d.get("weights_dtype")
        wb = 1 if wdt == "fp8" else 2 if wdt in ("bf16", "f16") else 4
        kb = 2 if d and d.get("kv_cache_dtype") == "bf16" else 4  # its KV cache (runtime.kv_cache_dtype)
        floor = copy_gbs * 1e9 / step_bytes(cfg, b, ctx, wb, kb) * b if copy_gbs else 0  # tok/s at the floor
        g = (d or {}).get("cuda_graphs") or {}
        rows.append(dict(model=m, batch=b, weights=(d or {}).get("weights_dtype"), kv=(d or {}).get("kv_cache_dtype"),
                         dpep_decode=d and d.get("decode_tok_s"), dpep_prefill=d and d.get("prefill_tok_s"),
                         eager_decode=de and de.get("decode_tok_s"), graph_replays=g.get("replayed"),
                         hf_decode=h and h.get("decode_tok_s"), hf_prefill=h and h.get("prefill_tok_s"),
                         floor_decode=floor))
f = lambda v: "n/a" if not v else f"{v:.1f}"
r = lambda a, b: "n/a" if not a or not b else f"{a / b:.2f}"
print(f"copy ceiling: {copy_gbs:.0f} GB/s (bytes read + written)")
print("| model | batch | weights / KV | dpep decode tok/s (graph replays) | eager decode tok/s | graphs/eager | HF decode tok/s | dpep/HF | floor tok/s | of floor | dpep prefill tok/s | HF prefill tok/s | dpep/HF |")
print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for x in rows:
    rep = "" if x["graph_replays"] is None else f" ({x['graph_replays']})"
    print(f"| {x['model']} | {x['batch']} | {x['weights'] or 'n/a'} / {x['kv'] or 'n/a'} | {f(x['dpep_decode'])}{rep} | {f(x['eager_decode'])} | "
          f"{r(x['dpep_decode'], x['eager_decode'])} | {f(x['hf_decode'])} | {r(x['dpep_decode'], x['hf_decode'])} | "
          f"{f(x['floor_decode'])} | {r(x['dpep_decode'], x['floor_decode'])} | {f(x['dpep_prefill'])} | {f(x['hf_prefill'])} | "
          f"{r(x['dpep_prefill'], x['hf_prefill'])} |")
if os.environ.get("OUT"):
    json.dump({"copy_gbs": copy_gbs, "rows": rows}, open(os.path.join(os.environ["OUT"], "cuda_e2e.json"), "w"), indent=1)
PY
