#!/usr/bin/env bash
# long_prefill.sh — prefill of long prompts on one CPU node in the two
# layouts of issue 19: 1 rank x 2 threads (1 x 2) against 2 ranks with DP
# attention + EP 2 x 1 thread (2 x 1), where one rank holds the prompt and
# the other can only help through the DP assist. Prints the tok/s of each
# run, the paired ratio 1 x 2 / 2 x 1 per rep (the two layouts back to back,
# which goes first alternating) and its median; with --base, the same 2 x 1
# figure from a second dpep binary in the same reps (an A/B of a change).
# Not part of CI (minutes per rep).
#
#   bash bench/long_prefill.sh DPEP_BIN [--base DPEP_BIN2] [--model DIR]
#        [--tokens N] [--prompts N] [--reps N] [--out DIR]
#
#  --model    a dpep checkpoint (default: ~/.cache/dpep-bench/models/small-bf16,
#             made with `DPEP_BIN model gen --preset small --seed 1 --dtype bf16`
#             when missing: the model of bench/llama_compare.sh)
#  --tokens   prompt length (default 3000); --prompts lone prompts a run
#             (default 4: one at a time on DP rank 0, max_running_requests 1,
#             each prefilled in one step; the first is the process's first
#             long step, as in llama_compare's 512-token figure); --reps
#             (default 3)
# Prefill tok/s: prompt tokens over the time of the steps with prefill
# (--summary-json); the helper's idle time per run from its `dp_assist`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dpep=${1:?usage: long_prefill.sh DPEP_BIN [--base BIN2] [--model DIR] [--tokens N] [--prompts N] [--reps N] [--out DIR]}
shift
base="" model="$HOME/.cache/dpep-bench/models/small-bf16" tokens=3000 prompts=4 reps=3 out=""
while [ $# -gt 0 ]; do
  case $1 in
    --base) base=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --tokens) tokens=$2; shift 2 ;;
    --prompts) prompts=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "long_prefill.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
for v in "$tokens" "$prompts" "$reps"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "long_prefill.sh: --tokens, --prompts, --reps take positive integers" >&2; exit 2; }
done
[ -x "$dpep" ] || { echo "long_prefill.sh: $dpep is not an executable" >&2; exit 2; }
[ -z "$base" ] || [ -x "$base" ] || { echo "long_prefill.sh: --base $base is not an executable" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn}
out=${out:-$(mktemp -d /tmp/dpep-long-XXXXXX)}
mkdir -p "$out"
if [ ! -f "$model/config.json" ]; then
  echo "long_prefill.sh: generating the small preset (bf16) into $model"
  mkdir -p "$(dirname "$model")"
  "$dpep" model gen --preset small --seed 1 --dtype bf16 "$model" > "$out/model_gen.log"
fi
vocab=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['vocab_size'])" "$model/config.json")
python3 - "$out/prompts.jsonl" "$tokens" "$prompts" "$vocab" <<'PY'
import json, random, sys
path, n, k, vocab = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
random.seed(7)
with open(path, "w") as f:
    for i in range(k):
        ids = [random.randrange(2, vocab) for _ in range(n)]
        f.write(json.dumps({"id": f"long{i}", "input_ids": ids, "max_new_tokens": 1,
                            "data_parallel_rank": 0}) + "\n")
PY
step=$(( tokens > 4096 ? tokens : 4096 ))
cat > "$out/run.yaml" <<EOF
model:
  path: $model
runtime:
  device: cpu
  page_size: 16
  chunked_prefill_size: $step
  max_running_requests: 1
  seed: 1
launch:
  gpu_memory_gb: 8
workload: {kind: file, path: $out/prompts.jsonl}
EOF
one() { # label bin layout rep -> one line "label rep tok/s idle_attn idle_ffn"
  local label=$1 bin=$2 lay=$3 rep=$4 j="$out/$1_$4.json"
  local -a cmd
  if [ "$lay" = 2x1 ]; then
    cmd=(env OMP_NUM_THREADS=1 "$bin" launch "$out/run.yaml" --tp 2 --dp 2 --ep 2 --enable-dp-attention)
  else
    cmd=(env OMP_NUM_THREADS=2 "$bin" launch "$out/run.yaml")
  fi
  if ! timeout 900 "${cmd[@]}" run --ignore-eos --quiet --summary-json "$j" --output "$out/$1_$4.jsonl" \
      > "$out/$1_$4.log" 2>&1; then
    echo "long_prefill.sh: $label rep $rep failed (log: $out/$1_$4.log)" >&2; tail -5 "$out/$1_$4.log" >&2
    return 1
  fi
  python3 - "$j" "$label" "$rep" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); a = d.get("dp_assist", {})
print(sys.argv[2], sys.argv[3], "%.1f" % d["prefill_tok_s"], "%.3f" % a.get("idle_attention_s", 0.0),
      "%.3f" % a.get("idle_ffn_s", 0.0))
PY
}
res="$out/results.txt"
: > "$res"
echo "long_prefill.sh: $prompts lone ${tokens}-token prompts a run, $reps reps; results in $out"
for r in $(seq "$reps"); do
  labels=(1x2 2x1); [ -n "$base" ] && labels+=(base_2x1)
  if [ $((r % 2)) = 0 ]; then order=$(seq $((${#labels[@]} - 1)) -1 0); else order=$(seq 0 $((${#labels[@]} - 1))); fi
  for i in $order; do
    case ${labels[$i]} in
      1x2) one 1x2 "$dpep" 1x2 "$r" >> "$res" ;;
      2x1) one 2x1 "$dpep" 2x1 "$r" >> "$res" ;;
      base_2x1) one base_2x1 "$base" 2x1 "$r" >> "$res" ;;
    esac
  done
done
python3 - "$res" "$tokens" "$prompts" "${base:+1}" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
tokens, prompts, has_base = sys.argv[2], sys.argv[3], bool(sys.argv[4])
by = {}
for lab, rep, tps, ia, iff in rows:
    by.setdefault(rep, {})[lab] = (float(tps), float(ia), float(iff))
hdr = "| rep | dpep 1 x 2 tok/s | dpep 2 x 1 tok/s | 2 x 1 helper idle, attention / FFN (s) |"
if has_base: hdr += " base 2 x 1 tok/s | base helper idle (s) |"
hdr += " 1 x 2 / 2 x 1 |"
if has_base: hdr += " 2 x 1 / base |"
print(f"\nPrefill of {prompts} lone {tokens}-token prompts a run (tok/s):\n")
print(hdr)
print("|" + "---:|" * (hdr.count("|") - 1))
ratios, gains = [], []
for rep in sorted(by, key=int):
    d = by[rep]
    if "1x2" not in d or "2x1" not in d: continue
    line = f"| {rep} | {d['1x2'][0]:.1f} | {d['2x1'][0]:.1f} | {d['2x1'][1]:.2f} / {d['2x1'][2]:.2f} |"
    ratios.append(d["1x2"][0] / d["2x1"][0])
    if has_base and "base_2x1" in d:
        b = d["base_2x1"]
        line += f" {b[0]:.1f} | {b[1]:.2f} / {b[2]:.2f} |"
    line += f" {ratios[-1]:.2f} |"
    if has_base and "base_2x1" in d:
        gains.append(d["2x1"][0] / d["base_2x1"][0])
        line += f" {gains[-1]:.2f} |"
    print(line)
if ratios:
    print(f"\nmedian 1 x 2 / 2 x 1, paired: {statistics.median(ratios):.2f} (range {min(ratios):.2f}-{max(ratios):.2f})")
if gains:
    print(f"median 2 x 1 / base 2 x 1, paired: {statistics.median(gains):.2f} (range {min(gains):.2f}-{max(gains):.2f})")
PY
