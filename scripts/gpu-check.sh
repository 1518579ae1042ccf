#!/usr/bin/env bash
# gpu-check.sh — the one command to run on the GPU machine (or anywhere):
# records what the machine has, then runs the GPU tests and the goldens, each
# under a timeout with its own log, and ends with a table
# (check | PASS/FAIL/SKIP/NOT-BUILT | seconds | note).
#   scripts/gpu-check.sh [KIT_OR_BUILD_DIR]
# KIT_OR_BUILD_DIR: a kit from scripts/device-kit.sh (has env.sh; default when
# this script runs from inside a kit), or a build folder (default ./build, with
# the system's mpirun). Logs: $OUT/ when OUT is set (the device tool brings
# back at most 8 files: there it writes summary.txt, machine.txt and
# gpu-check-logs.tar.gz), else ./gpu-check-out/ (one log per check).
# Checks (discovered, so that new tests are picked up):
#   machine          nvidia-smi, driver/CUDA, GPU, nvcc, glibc, CPUs, NCCL, ldd of dpep
#   cuda_devices     tests/test_cuda_devices
#   comm_nccl_np1/2  tests/comm/test_comm --nccl under mpirun -np 1 / 2
#   op tests         every build/tests/**/test_*ops* and test_*_cuda executable (run as CTest
#                    does: no arguments)
#   cpu_*            the CPU path: dpep run on the tiny golden models (1 and 4 ranks),
#                    tests/engine/layouts.sh, the tiny config through dpep launch
#   comm_staged_cuda_np2  every collective on the mpi-staged backend, GPU buffers
#   comm_dshm_cuda_* device-shared segments (CUDA IPC) between 2 / 4 processes
#   cuda_golden_*    dpep run --device cuda on the tiny V3/V2 models vs the HF goldens
#                    (tokens identical, logprobs within 1e-4): 1 rank with CUDA graphs
#                    (replays required) and _eager without; and 2 / 4
#                    ranks sharing the GPU, DP attention + EP, the MoE rows over
#                    CUDA IPC and staged through the host, attention-TP 2 with
#                    dense TP, MoE-TP 2 and the allgather backend (mpi-staged
#                    comms); NOT-BUILT while the
#                    engine has no CUDA kernels
#   cuda_bf16_*      a tiny model with BF16 weights: dpep on the GPU vs HF transformers
#                    on the same GPU (bench/hf_gpu.py): widened to f32 vs HF fp32,
#                    tokens identical and logprobs within 1e-4; kept BF16 on the GPU
#                    vs HF fp32 (logprobs within 0.1, agreement >= 0.9) and vs HF
#                    BF16 (agreement and error measured)
#   cuda_fp8_v3      a tiny V3 in FP8: projections kept FP8 on the GPU vs the same
#                    checkpoint dequantized to BF16 at load (log-probs within 0.05)
#   cuda_kv_bf16_*   the golden models with a BF16 KV cache, GPU vs CPU (same tokens,
#                    log-probs: median 1e-4, p90 1e-3, max 0.05)
#   bench_*          every bench executable named *cuda* (GPU_CHECK_BENCH=0: none), and
#                    bench_moe_a2a_*: dispatch + combine between 2 / 4 GPU ranks
# GPU_CHECK_MULTI=0 leaves out the rows with several GPU ranks (issue 17:
# the multi-rank goldens and bench_moe_a2a_*, about 3 minutes together).
# Exit status: 1 if any check FAILed, else 0. Never hangs: every step has a
# timeout (GPU_CHECK_TIMEOUT, default 120 s per check; op tests
# GPU_CHECK_OPS_TIMEOUT, 300 s) inside a budget for the whole run
# (GPU_CHECK_BUDGET, default 480 s; checks past it are FAIL "timed out").
# GPU_CHECK_QUICK=1 leaves out tests/engine/layouts.sh (CPU only, ~7 s).
# DPEP_CUDA_NO_TC=1 turns dpep's own tensor-core kernels off (BF16-pool
# attention core, direct FP8 products, grouped expert tiles: their previous
# paths run): after a failure, `GPU_CHECK_MULTI=0 GPU_CHECK_BENCH=0
# GPU_CHECK_QUICK=1 DPEP_CUDA_NO_TC=1 bash scripts/gpu-check.sh DIR` tells in
# a few minutes whether they are the cause (read the cuda_* end-to-end rows;
# the op tests' tensor-core checks do not hold under it).
# Proof without a GPU (see scripts/device-kit.sh):
#   scripts/device-kit.sh /tmp/kit build && env -i PATH=/usr/bin:/bin HOME=/tmp \
#       bash /tmp/kit/scripts/gpu-check.sh /tmp/kit
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
arg=${1:-}
if [ -z "$arg" ]; then
  if [ -f "$here/env.sh" ]; then arg=$here; else arg=$here/build; fi
fi
arg=$(cd "$arg" 2>/dev/null && pwd) || { echo "gpu-check: no folder ${1:-}" >&2; exit 2; }
if [ -f "$arg/env.sh" ]; then            # a kit
  # shellcheck disable=SC1091
  source "$arg/env.sh"
  bin=$arg/build src=$arg mode="kit $arg"
  # a --lean kit has no tests/: take them from the tree this script is in
  [ -d "$arg/tests/reference" ] || { src=$here; mode="$mode (sources $here)"; }
else                                     # a build folder
  bin=$arg
  src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$bin/CMakeCache.txt" 2>/dev/null)
  [ -d "$src" ] || src=$here
  mode="build $bin (source $src)"
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1 \
         OMPI_MCA_rmaps_base_oversubscribe=1
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
export DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn}
dpep=$bin/dpep
tmo=${GPU_CHECK_TIMEOUT:-120}
budget=${GPU_CHECK_BUDGET:-480}   # the whole run, so that the device tool's call (10 min) is never outlasted
deadline=$((SECONDS + budget))
if [ -n "${OUT:-}" ]; then logs=$(mktemp -d /tmp/gpu-check-XXXXXX); else logs=$PWD/gpu-check-out; mkdir -p "$logs"; fi
work=$(mktemp -d /tmp/gpu-check-work-XXXXXX)
trap 'rm -rf "$work"' EXIT
rows=()
fails=0
row() { # check result seconds note
  rows+=("$(printf '%-26s %-9s %6s  %s' "$1" "$2" "$3" "$4")")
  [ "$2" = FAIL ] && fails=$((fails + 1))
  printf '%-26s %-9s %6ss  %s\n' "$1" "$2" "$3" "$4"
}
# t NAME SECONDS CMD...: run under a timeout, log to $logs/NAME.log; sets rc, dt
t() {
  local name=$1 lim=$2; shift 2
  local t0 left; t0=$(date +%s.%N)
  left=$((deadline - SECONDS))           # the whole run's budget comes first
  if [ "$left" -lt 10 ]; then
    echo "gpu-check: not run: GPU_CHECK_BUDGET (${budget}s) spent" > "$logs/$name.log"; rc=124; dt=0; return
  fi
  [ "$lim" -gt "$left" ] && lim=$left
  { echo "\$ $*"; timeout -k 10 "$lim" "$@"; } > "$logs/$name.log" 2>&1
  rc=$?
  dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  [ $rc = 124 ] || [ $rc = 137 ] && echo "gpu-check: TIMEOUT after ${lim}s" >> "$logs/$name.log"
}
# verdict NAME: PASS / SKIP (77) / FAIL (else, or a FAIL line) from rc and the log
verdict() {
  local name=$1 note
  if [ $rc = 124 ] || [ $rc = 137 ]; then row "$name" FAIL "$dt" "timed out"; return; fi
  if [ $rc = 77 ] || { [ $rc = 0 ] && grep -q '^SKIP' "$logs/$name.log" && ! grep -q '^OK\|passed' "$logs/$name.log"; }; then
    note=$(grep -m1 -o 'SKIP.*' "$logs/$name.log" | cut -c1-90)
    row "$name" SKIP "$dt" "${note:-exit 77}"; return
  fi
  if [ $rc = 0 ] && ! grep -q '^FAIL\|[^_]FAIL:' "$logs/$name.log"; then
    note=$(grep -E 'passed|^OK|PASSED|identical|^summary|tok/s' "$logs/$name.log" | tail -1 | cut -c1-90)
    row "$name" PASS "$dt" "$note"; return
  fi
  note=$(grep -v '^\$ ' "$logs/$name.log" | grep -m1 -E 'FAIL|ERROR|error|requested|cannot|refused' | cut -c1-90)
  row "$name" FAIL "$dt" "exit $rc${note:+: $note}"
}

# --- 1. The machine -------------------------------------------------------
m=$logs/machine.log
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "mode: $mode"
  echo "host: $(uname -srm)"
  echo "cpus: $(getconf _NPROCESSORS_ONLN)   memory: $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"
  echo "glibc: $(ldd --version 2>&1 | head -1)"
  if command -v nvidia-smi >/dev/null; then
    timeout 30 nvidia-smi 2>&1 | head -20
    echo "gpus: $(timeout 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | paste -sd';')"
  else
    echo "nvidia-smi: not found"
  fi
  for n in nvcc /usr/local/cuda/bin/nvcc; do
    command -v $n >/dev/null && { echo "nvcc: $($n --version | tail -2 | paste -sd' ')"; break; }
  done
  command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || echo "nvcc: none"
  echo "cuda dir: $(readlink -f /usr/local/cuda 2>/dev/null || echo none)"
  echo "mpirun: $(command -v mpirun || echo none) ($(timeout 10 mpirun --version 2>&1 | head -1))"
  echo "python3: $(command -v python3 || echo none)"
  echo "--- ldd $dpep"
  ldd "$dpep" 2>&1
  echo "--- dpep info"
  timeout 60 "$dpep" info 2>&1
} > "$m" 2>&1
gpu_name=$(timeout 30 nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1)
ngpu=$(timeout 30 nvidia-smi -L 2>/dev/null | grep -c '^GPU ')
if [ "${ngpu:-0}" -gt 0 ]; then nogpu=""
elif command -v nvidia-smi >/dev/null; then nogpu="nvidia-smi lists no GPU"
else nogpu="no GPU (no nvidia-smi)"; fi
[ -n "${GPU_CHECK_NO_GPU:-}" ] && nogpu="GPU_CHECK_NO_GPU set"
echo "gpu-check: $mode; logs in ${OUT:-$logs}"
if grep -q 'not found' <(ldd "$dpep" 2>&1); then
  row machine FAIL 0 "unresolved: $(ldd "$dpep" | awk '/not found/ {print $1}' | paste -sd' ')"
  missing_libs=1
else
  row machine PASS 0 "${gpu_name:-no GPU}; $(getconf _NPROCESSORS_ONLN) CPUs; $(ldd --version 2>&1 | head -1 | grep -o '[0-9.]*$' | sed 's/^/glibc /')"
  missing_libs=""
fi

# --- 2. CUDA devices and NCCL -------------------------------------------
tb=$bin/tests
if [ -x "$tb/test_cuda_devices" ]; then
  t cuda_devices "$tmo" "$tb/test_cuda_devices"; verdict cuda_devices
  # a GPU that nvidia-smi lists but CUDA cannot use: the GPU rows below skip with its reason
  [ $rc = 77 ] && [ -z "$nogpu" ] && nogpu=$(grep -m1 -o 'SKIP.*' "$logs/cuda_devices.log" | cut -c7-90)
else row cuda_devices NOT-BUILT 0 "no tests/test_cuda_devices in $bin"; fi
for n in 1 2; do
  if [ ! -x "$tb/comm/test_comm" ]; then row comm_nccl_np$n NOT-BUILT 0 "no tests/comm/test_comm"; continue; fi
  if [ -n "$nogpu" ]; then row comm_nccl_np$n SKIP 0 "$nogpu"; continue; fi
  t comm_nccl_np$n "$tmo" mpirun -np $n --oversubscribe --bind-to none --mca btl self,vader \
    "$tb/comm/test_comm" --nccl; verdict comm_nccl_np$n
done

# --- 3. Op tests (test executables named *ops* or *_cuda: each CUDA op or
# backend against the CPU one) ---------------------------------------------
mapfile -t ops < <(find "$tb" -type f -perm -u+x \( -name 'test_*ops*' -o -name 'test_*_cuda' \) 2>/dev/null | sort)
if [ ${#ops[@]} = 0 ]; then row op_tests NOT-BUILT 0 "no tests/**/test_*ops* or test_*_cuda executable yet"; fi
for o in "${ops[@]}"; do
  name=$(basename "$o")
  # no arguments, from the source tree (tests that read tests/reference default to ".")
  t "$name" "${GPU_CHECK_OPS_TIMEOUT:-300}" bash -c 'cd "$1" && exec "$2"' _ "$src" "$o"; verdict "$name"
done

# --- 4. End to end: the HF goldens ---------------------------------------
# golden_job MODEL_DIR: writes $work/MODEL.{jsonl,yaml,expect.json} (each golden
# prompt, greedy, its 16 tokens, EOS ignored) from the model's golden.json and
# golden.safetensors (the expected log-softmax of each greedy token).
golden_job() {
  local model=$1 tag; tag=$(basename "$1")
  python3 - "$model" "$work/$tag" <<'PY' || return 1
import json, math, struct, sys
model, base = sys.argv[1], sys.argv[2]
gold = json.load(open(model + "/golden.json"))["prompts"]
blob = open(model + "/golden.safetensors", "rb").read()
hlen = struct.unpack_from("<Q", blob)[0]
head = json.loads(blob[8:8 + hlen])
reqs, want = [], {"tokens": {}, "logprobs": {}}
for key, p in sorted(gold.items()):
    meta = head.get(key + ".seq_logits")
    ids, greedy = p["input_ids"], p["greedy"]
    reqs.append({"id": key, "input_ids": ids, "max_new_tokens": len(greedy)})
    want["tokens"][key] = greedy
    if meta is None or meta["dtype"] != "F32":
        continue
    vocab = meta["shape"][1]
    start = 8 + hlen + meta["data_offsets"][0]
    lps = []
    for step, tok in enumerate(greedy):
        row_at = start + 4 * vocab * (len(ids) - 1 + step)
        logits = struct.unpack_from("<%df" % vocab, blob, row_at)
        top = max(logits)
        lps.append(logits[tok] - top - math.log(sum(math.exp(v - top) for v in logits)))
    want["logprobs"][key] = lps
with open(base + ".jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in reqs)
json.dump(want, open(base + ".expect.json", "w"))
PY
  cat > "$work/$tag.yaml" <<YAML
model: {path: $model}
parallel: {tp: 1}
runtime: {device: cpu, page_size: 16, chunked_prefill_size: 16, max_running_requests: 8, comm_timeout_s: 60, bind: none}
launch: {gpu_memory_gb: 1}
workload: {kind: file, path: $work/$tag.jsonl}
YAML
}
# golden_cmp NAME OUTPUT.jsonl EXPECT.json >> log: tokens identical, logprobs within 1e-4
golden_cmp() {
  python3 - "$2" "$3" <<'PY'
import json, sys
got = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    got[r["id"]] = r
want = json.load(open(sys.argv[2]))
diff = [k for k, v in want["tokens"].items() if k not in got or got[k]["output_ids"] != v]
worst = 0.0
for k, ref in want["logprobs"].items():
    mine = (got.get(k) or {}).get("logprobs") or []
    worst = max([worst, float("inf") if len(mine) != len(ref) else 0.0] +
                [abs(a - b) for a, b in zip(mine, ref)])
print("%d/%d prompts identical to the HF goldens, logprobs max |diff| %.1e%s" % (
    len(want["tokens"]) - len(diff), len(want["tokens"]), worst,
    " FAIL: differ " + " ".join(diff) if diff else (" FAIL: logprobs" if worst > 1e-4 else "")))
sys.exit(1 if diff or worst > 1e-4 else 0)
PY
}
# e2e NAME NP MODEL_DIR [dpep run overrides]: dpep run + golden_cmp, logged
e2e() {
  local name=$1 np=$2 model=$3 tag; shift 3; tag=$(basename "$model")
  t "$name" "$tmo" bash -c 'mpirun -np "$1" --oversubscribe --bind-to none --mca btl self,vader \
      "$2" run "$3" --ignore-eos --quiet --output "$4" "${@:5}"' _ "$np" "$dpep" "$work/$tag.yaml" \
      "$work/$name.out.jsonl" "$@"
  if [ $rc = 0 ]; then
    golden_cmp "$name" "$work/$name.out.jsonl" "$work/$tag.expect.json" >> "$logs/$name.log" 2>&1 || rc=1
  fi
}
ref=$src/tests/reference
models=()
for d in deepseek_v3_tiny deepseek_v2_tiny; do [ -f "$ref/$d/golden.json" ] && models+=("$ref/$d"); done
have_py=$(command -v python3 || true)
for mdl in "${models[@]}"; do
  v=$(basename "$mdl" | sed 's/deepseek_\(v[0-9]\)_tiny/\1/')
  if [ -z "$have_py" ]; then row cpu_golden_$v SKIP 0 "no python3 (needed to read the goldens)"; continue; fi
  golden_job "$mdl" || { row cpu_golden_$v FAIL 0 "cannot read the goldens of $mdl"; continue; }
  e2e cpu_golden_${v}_np1 1 "$mdl"; verdict cpu_golden_${v}_np1
  # 4 ranks: DP attention 4, EP 4 (both tiny models have 4 heads, 16 experts)
  e2e cpu_golden_${v}_np4 4 "$mdl" --tp 4 --dp 4 --ep 4 --enable-dp-attention; verdict cpu_golden_${v}_np4
  name=cuda_golden_$v
  if [ -n "$nogpu" ]; then row $name SKIP 0 "$nogpu"; continue; fi
  # decode steps through CUDA graphs (the default): tokens as HF's, and the
  # summary must show graphs replayed
  e2e $name 1 "$mdl" --device cuda --summary-json "$work/$name.summary.json"
  if [ $rc != 0 ] && [ $rc != 124 ] && [ $rc != 137 ] &&
     grep -qiE 'no CUDA (kernels|engine|support)|CUDA engine is not built|has no (kernels|ops) for (device )?"?cuda|not built (yet|with CUDA)|no CUDA in this build|device cuda[:0-9]*: this build has no (attention|moe) backend' "$logs/$name.log"; then
    row $name NOT-BUILT "$dt" "$(grep -m1 -iE 'cuda' "$logs/$name.log" | cut -c1-90)"
  elif [ $rc = 0 ]; then
    graphs=$(python3 -c 'import json, sys; g = json.load(open(sys.argv[1])).get("cuda_graphs", {}); print("%d %d %d" % (g.get("captured", 0), g.get("replayed", 0), g.get("eager_decode", 0)))' "$work/$name.summary.json" 2>/dev/null || echo "0 0 0")
    read -r g_cap g_rep g_eag <<< "$graphs"
    if [ "${g_rep:-0}" -gt 0 ]; then row $name PASS "$dt" "tokens as HF; CUDA graphs: $g_cap captured, $g_rep replays, $g_eag eager decode"
    else row $name FAIL "$dt" "tokens as HF but no CUDA graph replayed ($graphs: captured replayed eager)"; fi
  else
    verdict $name
  fi
  # the same without graphs: every step eager
  e2e ${name}_eager 1 "$mdl" --device cuda --disable-cuda-graph; verdict ${name}_eager
done
[ ${#models[@]} = 0 ] && row goldens SKIP 0 "no tests/reference/*/golden.json under $src"

# --- 4b. BF16 weights: dpep on the GPU against HF transformers on the same GPU
# A tiny model generated with BF16 weights (V3 and V2), greedy, 16 tokens per
# prompt, run twice by dpep: (f32) model.dtype f32, the BF16 values widened
# at load and computed in fp32 — against HF in fp32 on the same weights:
# tokens identical, log-probs within 1e-4; (bf16) model.dtype auto, the
# matrices kept BF16 on the GPU (products on BF16 inputs, fp32 sums) —
# against HF in fp32 (gated: log-probs of dpep's tokens within 0.1, greedy
# agreement >= 0.9) and against HF in BF16 as users run it (measured, not
# gated: greedy agreement and log-prob error are the documented figures;
# see bench/RESULTS.md).
hfpy=$src/bench/hf_gpu.py
# tiny_job DIR SEED DTYPE...: DIR.jsonl (four random prompts of 1, 9, 40 and
# 130 tokens, 16 new tokens each) and DIR.DTYPE.yaml per model.dtype, one GPU
tiny_job() {
  local mdir=$1 seed=$2 wt; shift 2
  python3 -c 'import json, random, sys
r = random.Random(int(sys.argv[1]))
for i, n in enumerate((1, 9, 40, 130)):
    print(json.dumps({"id": "p%d" % i, "input_ids": [r.randrange(2, 250) for _ in range(n)], "max_new_tokens": 16}))' "$seed" > "$mdir.jsonl"
  for wt in "$@"; do
    cat > "$mdir.$wt.yaml" <<YAML
model: {path: $mdir, dtype: $wt}
parallel: {tp: 1}
runtime: {device: cuda, page_size: 16, chunked_prefill_size: 64, max_running_requests: 8, comm_timeout_s: 60, bind: none}
launch: {gpu_memory_gb: 2}
workload: {kind: file, path: $mdir.jsonl}
YAML
  done
}
for v in v3 v2; do
  name=cuda_bf16_$v
  if [ -n "$nogpu" ]; then row $name SKIP 0 "$nogpu"; continue; fi
  if [ -z "$have_py" ] || [ ! -f "$hfpy" ]; then row $name SKIP 0 "no python3 or bench/hf_gpu.py"; continue; fi
  mdir=$work/bf16_$v
  t ${name}_gen "$tmo" "$dpep" model gen --arch deepseek_$v --preset tiny --dtype bf16 --seed 7 "$mdir"
  [ $rc = 0 ] || { verdict ${name}_gen; continue; }
  tiny_job "$mdir" 5 f32 auto
  t ${name}_run_f32 "$tmo" mpirun -np 1 --bind-to none "$dpep" run "$mdir.f32.yaml" --ignore-eos --quiet --output "$mdir.f32.out.jsonl"
  verdict ${name}_run_f32
  if [ $rc = 0 ]; then
    t ${name}_f32_vs_hf_fp32 "$tmo" python3 "$hfpy" compare --model "$mdir" --dtype fp32 --requests "$mdir.jsonl" \
      --dpep "$mdir.f32.out.jsonl" --require-identical --max-lp-diff 1e-4
    verdict ${name}_f32_vs_hf_fp32
  fi
  t ${name}_run "$tmo" mpirun -np 1 --bind-to none "$dpep" run "$mdir.auto.yaml" --ignore-eos --quiet --output "$mdir.out.jsonl" --summary-json "$mdir.summary.json"
  [ $rc = 0 ] || { verdict ${name}_run; continue; }
  wdt=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("weights_dtype", "?"))' "$mdir.summary.json" 2>/dev/null || echo "?")
  if [ "$wdt" = bf16 ]; then row ${name}_run PASS "$dt" "weights held as bf16 on the GPU"
  else row ${name}_run FAIL "$dt" "weights held as $wdt, not bf16"; fi
  t ${name}_vs_hf_fp32 "$tmo" python3 "$hfpy" compare --model "$mdir" --dtype fp32 --requests "$mdir.jsonl" \
    --dpep "$mdir.out.jsonl" --max-lp-diff 0.1 --min-agree 0.9
  if [ $rc = 0 ]; then
    row ${name}_vs_hf_fp32 PASS "$dt" "$(grep -m1 '^summary' "$logs/${name}_vs_hf_fp32.log" | sed 's/^summary: //' | cut -c1-90)"
  else verdict ${name}_vs_hf_fp32; fi
  t ${name}_vs_hf_bf16 "$tmo" python3 "$hfpy" compare --model "$mdir" --dtype bf16 --requests "$mdir.jsonl" \
    --dpep "$mdir.out.jsonl"
  if [ $rc = 0 ]; then
    # (measured, not gated: hf_gpu.py's summary line is the note)
    row ${name}_vs_hf_bf16 PASS "$dt" "$(grep -m1 '^summary' "$logs/${name}_vs_hf_bf16.log" | sed 's/^summary: //' | cut -c1-90)"
  else verdict ${name}_vs_hf_bf16; fi
done

# --- 4c. FP8 weights kept as stored: a tiny V3 generated in FP8 (E4M3, 128 x
# 128 block scales), dpep on the GPU with the projections kept FP8 (model.dtype
# auto; dequantized per product) against the same checkpoint dequantized to
# BF16 at load (model.dtype bf16): the same BF16 values reach the products, so
# the runs agree up to summation order (gated: log-probs of the same tokens
# within 0.05, greedy tokens agree on >= 90% of positions).
name=cuda_fp8_v3
if [ -n "$nogpu" ]; then row $name SKIP 0 "$nogpu"
elif [ -z "$have_py" ]; then row $name SKIP 0 "no python3"
else
  mdir=$work/fp8_v3
  t ${name}_gen "$tmo" "$dpep" model gen --arch deepseek_v3 --preset tiny --dtype fp8 --seed 7 "$mdir"
  if [ $rc != 0 ]; then verdict ${name}_gen
  else
    tiny_job "$mdir" 9 auto bf16
    t ${name}_run "$tmo" mpirun -np 1 --bind-to none "$dpep" run "$mdir.auto.yaml" --ignore-eos --quiet \
      --output "$mdir.auto.out.jsonl" --summary-json "$mdir.auto.json"
    ok1=$rc
    t ${name}_run_bf16 "$tmo" mpirun -np 1 --bind-to none "$dpep" run "$mdir.bf16.yaml" --ignore-eos --quiet \
      --output "$mdir.bf16.out.jsonl" --summary-json "$mdir.bf16.json"
    if [ $ok1 != 0 ] || [ $rc != 0 ]; then verdict $name
    else
      t $name 60 python3 - "$mdir.auto.out.jsonl" "$mdir.bf16.out.jsonl" "$mdir.auto.json" "$mdir.bf16.json" <<'PY'
import json, sys
a = {r["id"]: r for r in map(json.loads, open(sys.argv[1]))}
b = {r["id"]: r for r in map(json.loads, open(sys.argv[2]))}
wa = json.load(open(sys.argv[3])).get("weights_dtype"); wb = json.load(open(sys.argv[4])).get("weights_dtype")
same = tot = 0; lp = 0.0
for k, ra in a.items():
    rb = b.get(k) or {}
    ta, tb = ra.get("output_ids", []), rb.get("output_ids", [])
    n = 0
    while n < min(len(ta), len(tb)) and ta[n] == tb[n]: n += 1
    same += sum(x == y for x, y in zip(ta, tb)); tot += max(len(ta), len(tb))
    la, lb = ra.get("logprobs") or [], rb.get("logprobs") or []
    lp = max([lp] + [abs(x - y) for x, y in zip(la[:n], lb[:n])])
ok = wa == "fp8" and wb == "bf16" and tot > 0 and same >= 0.9 * tot and lp <= 0.05
print("%s: weights %s vs %s, %d/%d tokens agree, log-probs max |diff| %.1e (same prefix)" % (
    "summary" if ok else "FAIL", wa, wb, same, tot, lp))
sys.exit(0 if ok else 1)
PY
      if [ $rc = 0 ]; then row $name PASS "$dt" "$(grep -m1 '^summary' "$logs/$name.log" | sed 's/^summary: //' | cut -c1-90)"
      else verdict $name; fi
    fi
  fi
fi

# --- 4d. The latent KV cache in BF16 (runtime.kv_cache_dtype bf16): the tiny
# golden models (f32 weights), dpep on the GPU against dpep on the CPU, both
# with a BF16 cache. Each backend rounds its own f32 rows, which differ in the
# last bits, so an element now and then lands one BF16 step apart (as between
# CPU layouts, tests/engine/kv_dtype.sh): gated on the same tokens and
# |d log-prob| median <= 1e-4, p90 <= 1e-3, max <= 0.05
# (tests/engine/close_outputs.py), and the summary saying bf16.
closepy=$src/tests/engine/close_outputs.py
for mdl in "${models[@]}"; do
  v=$(basename "$mdl" | sed 's/deepseek_\(v[0-9]\)_tiny/\1/')
  name=cuda_kv_bf16_$v tag=$(basename "$mdl")
  if [ -n "$nogpu" ]; then row $name SKIP 0 "$nogpu"; continue; fi
  if [ -z "$have_py" ] || [ ! -f "$closepy" ] || [ ! -f "$work/$tag.yaml" ]; then
    row $name SKIP 0 "no python3, tests/engine/close_outputs.py or golden job"; continue
  fi
  t ${name}_cpu "$tmo" mpirun -np 1 --bind-to none "$dpep" run "$work/$tag.yaml" --ignore-eos --quiet \
    --kv-cache-dtype bf16 --output "$work/$name.cpu.jsonl"
  [ $rc = 0 ] || { verdict ${name}_cpu; continue; }
  t ${name}_run "$tmo" mpirun -np 1 --bind-to none "$dpep" run "$work/$tag.yaml" --device cuda --ignore-eos \
    --quiet --kv-cache-dtype bf16 --output "$work/$name.gpu.jsonl" --summary-json "$work/$name.json"
  [ $rc = 0 ] || { verdict ${name}_run; continue; }
  kvd=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("kv_cache_dtype", "?"))' "$work/$name.json" 2>/dev/null || echo "?")
  if [ "$kvd" != bf16 ]; then row $name FAIL "$dt" "the GPU run's KV cache is $kvd, not bf16"; continue; fi
  t $name 60 python3 "$closepy" "$work/$name.gpu.jsonl" "$work/$name.cpu.jsonl" "$(wc -l < "$work/$tag.jsonl")" \
    "gpu vs cpu, bf16 KV" 1e-4 1e-3 5e-2 --same-tokens
  if [ $rc = 0 ]; then row $name PASS "$dt" "$(grep -m1 ' ok ' "$logs/$name.log" | sed 's/.*tokens; //' | cut -c1-90)"
  else verdict $name; fi
done

# --- 5. The CPU path as the tests run it ----------------------------------
if [ -f "$src/tests/engine/layouts.sh" ] && [ -n "$have_py" ] && [ -z "${GPU_CHECK_QUICK:-}" ]; then
  t cpu_engine_layouts 300 bash "$src/tests/engine/layouts.sh" "$dpep" "$src"; verdict cpu_engine_layouts
fi
if [ -f "$src/configs/tiny.yaml" ]; then
  # the embedded default job (generates the tiny model under build/models on first use)
  t cpu_tiny_launch 300 "$dpep" launch "$src/configs/tiny.yaml"; verdict cpu_tiny_launch
fi

# --- 5b. Kernel benches (GPU_CHECK_BENCH=0 leaves them out): every bench
# executable named *cuda* (ceilings, MLA decode, grouped experts), no
# arguments; each prints its ratios against ceilings measured in the same run.
# End to end (dpep vs HF on the GPU) is bench/cuda_e2e.sh, a call of its own.
if [ "${GPU_CHECK_BENCH:-1}" != 0 ]; then
  mapfile -t benches < <(find "$bin/bench" -type f -perm -u+x -name '*cuda*' 2>/dev/null | sort)
  for b in "${benches[@]}"; do
    name=bench_$(basename "$b")
    if [ -n "$nogpu" ]; then row "$name" SKIP 0 "$nogpu"; continue; fi
    t "$name" "${GPU_CHECK_BENCH_TIMEOUT:-180}" "$b"
    if [ $rc = 0 ]; then
      row "$name" PASS "$dt" "$(grep -iE '^(ceiling|summary|ratio)' "$logs/$name.log" | tail -1 | cut -c1-90)"
    else verdict "$name"; fi
  done
fi

# --- 7. Several GPU ranks (issue 17), after every one-GPU row (issue 16) so
# that the budget serves those first; GPU_CHECK_MULTI=0 leaves them out ------
if [ "${GPU_CHECK_MULTI:-1}" != 0 ]; then
# The mpi-staged comm backend on device buffers (ranks sharing a GPU): the
# attention-TP and dense comms of GPU ranks that cannot use NCCL
if [ ! -x "$tb/comm/test_comm" ]; then row comm_staged_cuda_np2 NOT-BUILT 0 "no tests/comm/test_comm"
elif [ -n "$nogpu" ]; then row comm_staged_cuda_np2 SKIP 0 "$nogpu"
else
  t comm_staged_cuda_np2 "$tmo" mpirun -np 2 --oversubscribe --bind-to none --mca btl self,vader \
    "$tb/comm/test_comm" --staged cuda; verdict comm_staged_cuda_np2
fi
# Device-shared segments (CUDA IPC between processes): 2 and 4 ranks on the
# GPUs there are (on one GPU: ranks sharing it, issue 17)
for n in 2 4; do
  if [ ! -x "$tb/comm/test_comm_dshm" ]; then row comm_dshm_cuda_np$n NOT-BUILT 0 "no tests/comm/test_comm_dshm"; continue; fi
  if [ -n "$nogpu" ]; then row comm_dshm_cuda_np$n SKIP 0 "$nogpu"; continue; fi
  t comm_dshm_cuda_np$n "$tmo" mpirun -np $n --oversubscribe --bind-to none --mca btl self,vader \
    "$tb/comm/test_comm_dshm" --device cuda; verdict comm_dshm_cuda_np$n
done

for mdl in "${models[@]}"; do
  v=$(basename "$mdl" | sed 's/deepseek_\(v[0-9]\)_tiny/\1/')
  [ -f "$work/$(basename "$mdl").expect.json" ] || continue
  if [ -n "$nogpu" ]; then row cuda_golden_${v}_multi SKIP 0 "$nogpu"; continue; fi
  # Several GPU ranks (issue 17): DP attention + EP over 2 and 4 ranks sharing
  # the GPUs there are (runtime.ranks_per_gpu), the MoE rows over CUDA IPC
  # (auto) and staged through the host (mpi); tokens identical to HF's
  # goldens as the 1-rank run's, and the transport named in the log.
  # Then attention-TP and dense TP on the device (mpi-staged comms: the ranks
  # share a GPU): tp 2 without DP attention (attn_tp 2, dense TP 2, EP 2), and
  # tp 4 with 2 DP-attention groups of attn_tp 2 (dense TP over the 4).
  # And MoE-TP 2 (tp 4, ep 2: each expert split over two ranks).
  for spec in "2 auto ipc dpa" "4 auto ipc dpa" "2 mpi mpi-staged dpa" "4 mpi mpi-staged dpa" \
              "2 auto ipc tp" "4 auto ipc tp" "4 auto ipc mtp" "4 auto allgather ag"; do
    read -r np trn want shape <<< "$spec"
    name=cuda_golden_${v}_np${np}_${want}
    ep=$np
    case $shape in
      dpa) lay=(--tp $np --dp $np --enable-dp-attention --moe-dense-tp-size 1) ;;
      tp)  name=${name}_attn_tp; lay=(--tp $np --dp $((np / 2)) --enable-dp-attention)
           [ $np = 2 ] && lay=(--tp 2 --dp 1) ;;
      mtp) name=${name}_moe_tp; ep=$((np / 2)); lay=(--tp $np --dp $np --enable-dp-attention) ;;
      ag)  lay=(--tp $np --dp $np --enable-dp-attention --moe-a2a-backend allgather) ;;
    esac
    e2e $name $np "$mdl" --device cuda --ranks-per-gpu $np --ep $ep "${lay[@]}" \
      --moe-a2a-transport $trn
    if [ $rc = 0 ] && ! grep -q "MoE buffers.*$(
        case $want in ipc) echo 'CUDA IPC';; allgather) echo 'allgather';;
                      *) echo 'staged through host';; esac)" "$logs/$name.log"; then
      echo "FAIL: the log does not name the $want transport" >> "$logs/$name.log"; rc=1
    fi
    verdict $name
  done
done

# The engine's layout matrix on the GPU (issue 17): tests/engine/layouts.sh
# --cuda (1 and 4 ranks sharing the GPU: vanilla TP, DPA + EP over ipc and
# mpi-staged, attention-TP, MoE-TP, allgather, dense TP, idle ranks, KV waits)
if [ "${GPU_CHECK_MULTI:-1}" != 0 ] && [ -f "$src/tests/engine/layouts.sh" ] && [ -n "$have_py" ]; then
  if [ -n "$nogpu" ]; then row cuda_engine_layouts SKIP 0 "$nogpu"
  else t cuda_engine_layouts 300 bash "$src/tests/engine/layouts.sh" "$dpep" "$src" --cuda; verdict cuda_engine_layouts; fi
fi

# MoE dispatch + combine between GPU ranks (issue 17): 2 and 4 ranks sharing
# the GPU(s), CUDA IPC and MPI staging, nccl-tests' columns vs the device's
# copy bandwidth (bench/moe_a2a_gpu.c; its own #wrong check gates the row)
if [ "${GPU_CHECK_BENCH:-1}" != 0 ] && [ "${GPU_CHECK_MULTI:-1}" != 0 ]; then
  for spec in "2 ipc" "4 ipc" "2 mpi" "4 mpi"; do
    read -r np trn <<< "$spec"
    name=bench_moe_a2a_np${np}_$trn
    if [ ! -x "$bin/bench/dpep_moe_a2a_gpu" ]; then row $name NOT-BUILT 0 "no bench/dpep_moe_a2a_gpu"; continue; fi
    if [ -n "$nogpu" ]; then row $name SKIP 0 "$nogpu"; continue; fi
    t $name "${GPU_CHECK_BENCH_TIMEOUT:-180}" mpirun -np $np --oversubscribe --bind-to none \
      --mca btl self,vader "$bin/bench/dpep_moe_a2a_gpu" --transport $trn -t 128,512,2048 -w 2 -n 5
    if [ $rc = 0 ]; then
      row $name PASS "$dt" "$(awk '$1 == 2048 {printf "T 2048: %s us, %s GB/s, %s of copy", $3, $4, $7}' "$logs/$name.log")"
    else verdict $name; fi
  done
fi

fi

# --- 6. The table -----------------------------------------------------------
{
  echo
  echo "gpu-check $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname): ${gpu_name:-no GPU}; $mode"
  printf '%-26s %-9s %6s  %s\n' check result seconds note
  printf '%s\n' "${rows[@]}"
  echo "$fails failed"
} | tee "$logs/summary.txt"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$logs/summary.txt" "$OUT/summary.txt"; cp "$logs/machine.log" "$OUT/machine.txt"
  tar -czf "$OUT/gpu-check-logs.tar.gz" -C "$logs" . && rm -rf "$logs"
fi
[ -n "$missing_libs" ] && exit 1
[ $fails = 0 ]
