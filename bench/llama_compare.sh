#!/usr/bin/env bash
# llama_compare.sh — CPU decode and prefill of dpep against llama.cpp and HF
# transformers eager on the same model and cores, measured in one run, printed
# as one Markdown table with the ratios (issue 19). Not part of CI: it builds
# llama.cpp and installs torch.
#
#   bash bench/llama_compare.sh DPEP_BIN [--cache DIR] [--only dpep|llama|hf]
#        [--reps N] [--quick] [--hf-dtypes "f32 bf16"] [--out DIR]
#
# What it does (everything reusable is kept in the cache, default
# ~/.cache/dpep-bench, outside the repository, and reused when present):
#  1. llama.cpp: the source vendored in PyPI's llama-cpp-python sdist (pinned
#     below; its CHANGELOG names the llama.cpp commit), built with CMake:
#     Release, CPU only, GGML_NATIVE=ON (-march=native: what a user building
#     llama.cpp on this machine gets), targets llama-bench and
#     llama-batched-bench, plus bench/llama_compare_greedy.cpp against its
#     static libraries for the token check.
#  2. A venv with torch (PyPI's wheel), transformers, safetensors, numpy,
#     sentencepiece, pinned below: the converter and the HF column need them.
#  3. Models: `DPEP_BIN model gen --preset small --seed 1 --dtype f32|bf16`
#     (deepseek_v3, ~0.8 B parameters, vocab 32000, no tokenizer), converted
#     to GGUF by the vendored convert_hf_to_gguf.py through
#     bench/llama_compare_convert.py (which gives the converter's DeepSeek
#     class the "none" vocab it lacks). All three engines run these weights.
#  4. A token check: greedy continuation of one fixed 32-token prompt by
#     llama.cpp, HF and dpep (1 x 2); the tokens equal up to the first
#     difference, printed.
#  5. Measurements, median of --reps runs each (tokens/s):
#     decode batch 1 (prompt 32, 128 new tokens) and batch 16 (16 prompts of
#     128, 128 new tokens each), prefill 1 x 32, 1 x 512 and 16 x 128 tokens,
#     f32, and the two decodes on the bf16 checkpoint; dpep's 1 x 512 is four
#     lone 512-token prefills in one process (distinct prompts, one at a
#     time on DP rank 0; the first of them the process's first long step),
#     as llama-bench's pp512 and HF's figure are warm repetitions;
#     - dpep: `dpep launch` (mpirun) of `dpep run` on a file workload of fixed
#       input_ids, greedy, --ignore-eos; 1 rank x 2 threads (OMP_NUM_THREADS=2)
#       and 2 ranks, DP attention + EP 2 (the dense FFN layer split over both,
#       dpep's and SGLang's default), x 1 thread; prefill and decode tok/s
#       from --summary-json (decode: tokens of decode-only steps over their
#       time; prefill: prompt tokens over the time of the steps with prefill);
#     - the engines' repetitions alternate: dpep's rep 1, llama.cpp's rep 1,
#       dpep's rep 2, ... (a slow spell of a shared machine hits both); in
#       dpep's rep the two layouts of a figure run back to back, the first
#       of the pair alternating by rep, and the table gives their paired
#       ratio (1 x 2 / 2 x 1) per figure;
#     - llama.cpp: llama-bench -p 32,512 -n 128 -t 2 -ngl 0 -r 1 per rep (batch 1: tg128
#       from an empty context, pp32, pp512) and llama-batched-bench -npp 128
#       -ntg 128 -npl 16 -t 2 (prefill 16 x 128 and decode of 16 sequences);
#     - HF: bench/llama_compare_hf.py (torch 2 threads, eager attention,
#       generate() greedy: prefill = generate of 1 token, decode = generate of
#       128 minus generate of 1). On a CPU without AVX-512 BF16 torch's bf16
#       is slow: the bf16 HF part can take over 20 minutes.
#  6. The batch-1 memory floor: memcpy bandwidth (bench/llama_compare_floor.py,
#     2 threads, 1 GiB, bytes read + written per second) over the bytes read
#     per decoded token (weights of one token's active path at the stored
#     dtype + KV, from config.json). And the read ceiling, taken right before
#     every batch-1 run of either engine (a shared host's bandwidth moves by
#     2x within minutes): `dpep_linear_perf -c 1024 -t 2 -r 3`, built beside
#     DPEP_BIN (or $DPEP_LINEAR_PERF), a C loop that reads a 1 GiB buffer on
#     huge pages over 2 threads, best of 3; each run's fraction is taken
#     against its own ceiling (numpy's sgemv stands in without that binary).
#
# The script cannot know whether anything else runs on the machine; it prints
# the load average at the start and at the end. Take the numbers when the
# machine is otherwise idle.
#   --only E   run only engine E's measurements and the setup it needs
#              (llama.cpp is built and the GGUFs converted for all and llama)
#   --reps N   runs per figure (default 3)
#   --quick    32 new tokens instead of 128, 1 rep, no 16 x 128 prefill run of
#              HF: a smoke run of the whole script, figures not for the record
#   --hf-dtypes L  HF's dtypes (default "f32 bf16"; bf16 alone can take
#              over 20 minutes on a CPU without AVX-512 BF16)
#   --out DIR  keep the raw results there (default: a new dir under the cache)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

LLAMA_CPP_PYTHON=0.3.36  # vendors ggml-org/llama.cpp@0c1e57098 (its CHANGELOG)
TORCH=2.15.0
TRANSFORMERS=5.24.0

usage() { sed -n '8,9p' "$0" | sed 's/^# *//' >&2; exit 2; }
[ $# -ge 1 ] || usage
dpep=$(readlink -f "$1")
shift
cache=${HOME}/.cache/dpep-bench
only=all
reps=3
quick=0
out=
hf_dtypes="f32 bf16"
while [ $# -gt 0 ]; do
    case $1 in
        --cache) cache=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --reps) reps=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        --out) out=$2; shift 2 ;;
        --hf-dtypes) hf_dtypes=$2; shift 2 ;;
        *) usage ;;
    esac
done
case $only in all | dpep | llama | hf) ;; *) usage ;; esac
[ -x "$dpep" ] || { echo "llama_compare.sh: $dpep is not an executable" >&2; exit 2; }
ntok=128
if [ "$quick" = 1 ]; then ntok=32; reps=1; fi
mkdir -p "$cache"
cache=$(readlink -f "$cache")
out=${out:-$cache/results/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"
out=$(readlink -f "$out")
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn}

load() { cut -d' ' -f1-3 /proc/loadavg; }
log "load average at start: $(load) on $(nproc) CPUs — the script cannot see other work:" \
    "run it when the machine is otherwise idle (a load near 0)"
echo "$(load)" > "$out/load_start"

# ---------------------------------------------------------------- llama.cpp
# the source is needed by every engine (its converter); the build only by llama.cpp's column
src=$cache/src/llama_cpp_python-$LLAMA_CPP_PYTHON
llama=$src/vendor/llama.cpp
lbuild=$cache/llama-build-$LLAMA_CPP_PYTHON
if [ ! -f "$llama/convert_hf_to_gguf.py" ]; then
    log "llama.cpp: pip download llama-cpp-python==$LLAMA_CPP_PYTHON (sdist)"
    mkdir -p "$cache/dl" "$cache/src"
    python3 -m pip download -q --no-binary :all: --no-deps -d "$cache/dl" "llama-cpp-python==$LLAMA_CPP_PYTHON"
    tar -xzf "$cache/dl/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$cache/src"
fi
commit=$(sed -n "/^## \[$LLAMA_CPP_PYTHON\]/,/^## /p" "$src/CHANGELOG.md" | grep -o 'llama.cpp@[0-9a-f]*' | head -1)
want_llama=0
{ [ "$only" = all ] || [ "$only" = llama ]; } && want_llama=1
if [ $want_llama = 1 ] && { [ ! -x "$lbuild/bin/llama-bench" ] || [ ! -x "$lbuild/bin/llama-batched-bench" ]; }; then
    t0=$SECONDS
    log "llama.cpp: building (Release, CPU, GGML_NATIVE=ON) into $lbuild — long on 2 cores"
    cmake -S "$llama" -B "$lbuild" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
        -DBUILD_SHARED_LIBS=OFF > "$cache/llama-build.log" 2>&1
    cmake --build "$lbuild" -j"$(nproc)" --target llama-bench llama-batched-bench >> "$cache/llama-build.log" 2>&1 ||
        { tail -20 "$cache/llama-build.log"; exit 1; }
    log "llama.cpp: built in $((SECONDS - t0)) s"
fi
greedy=$lbuild/bin/llama_compare_greedy
if [ $want_llama = 1 ] && { [ ! -x "$greedy" ] || [ "$root/bench/llama_compare_greedy.cpp" -nt "$greedy" ]; }; then
    # libllama first, then ggml, ggml-cpu, ggml-base (each needs the ones after it)
    c++ -O2 -std=c++17 -I"$llama/include" -I"$llama/ggml/include" "$root/bench/llama_compare_greedy.cpp" \
        "$lbuild/src/libllama.a" "$lbuild/ggml/src/libggml.a" "$lbuild/ggml/src/libggml-cpu.a" \
        "$lbuild/ggml/src/libggml-base.a" -fopenmp -lpthread -ldl -lm -o "$greedy"
fi

# ---------------------------------------------------------------- venv
venv=$cache/venv
py=$venv/bin/python
if ! "$py" -c "import torch, transformers, safetensors, numpy" 2>/dev/null; then
    t0=$SECONDS
    log "venv: torch==$TORCH transformers==$TRANSFORMERS (PyPI; several GB with torch's CUDA dependencies)"
    python3 -m venv "$venv"
    "$py" -m pip install -q --upgrade pip
    "$py" -m pip install -q "torch==$TORCH" "transformers==$TRANSFORMERS" safetensors numpy sentencepiece pyyaml protobuf
    log "venv: ready in $((SECONDS - t0)) s"
fi

# ---------------------------------------------------------------- models
for dt in f32 bf16; do
    m=$cache/models/small-$dt
    if [ ! -f "$m/config.json" ]; then
        log "model: $dpep model gen --preset small --seed 1 --dtype $dt $m"
        "$dpep" model gen --preset small --seed 1 --dtype "$dt" "$m" >&2
    fi
    g=$cache/gguf/small-$dt.gguf
    if [ $want_llama = 1 ] && { [ ! -f "$g" ] || [ "$m/model.safetensors" -nt "$g" ]; }; then
        t0=$SECONDS
        mkdir -p "$cache/gguf"
        log "gguf: converting $m (--outtype $dt)"
        "$py" "$root/bench/llama_compare_convert.py" "$llama" "$m" "$g.tmp" "$dt" > "$cache/convert-$dt.log" 2>&1 ||
            { tail -20 "$cache/convert-$dt.log"; exit 1; }
        mv "$g.tmp" "$g"
        log "gguf: $g in $((SECONDS - t0)) s"
    fi
done

# ---------------------------------------------------------------- workloads
# fixed random prompt ids (seed 7), the same for dpep and HF
python3 - "$out" "$ntok" <<'PY'
import json, random, sys
d, ntok = sys.argv[1], int(sys.argv[2])
def prompts(n, length, seed=7, vocab=32000):  # as llama_compare_hf.py
    r = random.Random(seed)
    return [[r.randrange(2, vocab) for _ in range(length)] for _ in range(n)]
# p512: 4 distinct prompts (no prefix reuse), the first HF's; dpep runs them
# one at a time (max_running_requests 1) on DP rank 0: 4 lone prefills
for name, (b, l, n) in {"b1": (1, 32, ntok), "b16": (16, 128, ntok), "p512": (4, 512, 1)}.items():
    with open(f"{d}/{name}.jsonl", "w") as f:
        for i, ids in enumerate(prompts(b, l)):
            r = {"id": f"{name}-{i}", "input_ids": ids, "max_new_tokens": n}
            if name == "p512":
                r["data_parallel_rank"] = 0
            f.write(json.dumps(r) + "\n")
PY

# ---------------------------------------------------------------- versions, machine
{
    echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo "cpus=$(nproc)"
    echo "mem=$(free -g | awk '/^Mem:/ {print $2}') GiB"
    # the pages node-shared windows get (2 x 1's expert pool: runtime/engine/README.md)
    echo "shm_huge=$(findmnt -no OPTIONS /dev/shm 2>/dev/null | tr ',' '\n' | sed -n 's/^huge=//p' | head -1)"
    echo "llama_cpp=$commit (llama-cpp-python $LLAMA_CPP_PYTHON sdist), Release, GGML_NATIVE=ON"
    echo "torch=$("$py" -c 'import torch; print(torch.__version__)')"
    echo "transformers=$("$py" -c 'import transformers; print(transformers.__version__)')"
    echo "dpep=$("$dpep" --help 2>&1 | head -1 | cut -d' ' -f1-2) $dpep"
    # the tree this script is in (DPEP_BIN may be built from another one)
    echo "dpep_git=$(git -C "$root" log -1 --format=%h 2>/dev/null || echo '?')$(git -C "$root" diff --quiet HEAD 2>/dev/null || echo ' +local changes')"
    echo "blas=$("$dpep" info 2>/dev/null | grep -i blas | head -1 | tr -s ' ')"
} > "$out/meta.env"

# ---------------------------------------------------------------- memory floor
linear_perf=${DPEP_LINEAR_PERF:-$(dirname "$dpep")/bench/dpep_linear_perf}
[ -x "$linear_perf" ] || { log "no $linear_perf: the read ceiling falls back to numpy's sgemv, once"; linear_perf=; }
ceiling() { # NAME: the read ceiling right now, for the run of that name
    [ -n "$linear_perf" ] || return 0
    "$linear_perf" -c 1024 -t 2 -r 3 > "$out/ceiling_$1.json" 2> "$out/ceiling_$1.log" ||
        { log "read ceiling for $1 failed: $(tail -1 "$out/ceiling_$1.log")"; rm -f "$out/ceiling_$1.json"; }
}
"$py" "$root/bench/llama_compare_floor.py" memcpy --threads 2 > "$out/memcpy.json"
for dt in f32 bf16; do
    db=4; [ $dt = bf16 ] && db=2
    # average context of the batch-1 decode: 32 prompt tokens + half the new ones
    python3 "$root/bench/llama_compare_floor.py" bytes "$cache/models/small-$dt" --dtype-bytes $db \
        --context $((32 + ntok / 2)) > "$out/bytes_$dt.json"
done

# ---------------------------------------------------------------- token check
log "token check: greedy continuation of the 32-token prompt, llama.cpp / HF / dpep (f32)"
# (HF's comes from its timing run, dpep's from its batch-1 run: their --output)
ids=$(python3 -c "import json; print(' '.join(map(str, json.loads(open('$out/b1.jsonl').readline())['input_ids'])))")
if [ $want_llama = 1 ]; then
    # shellcheck disable=SC2086
    "$greedy" "$cache/gguf/small-f32.gguf" 32 2 $ids > "$out/greedy_llama.json" 2> "$out/greedy_llama.log" ||
        { tail -5 "$out/greedy_llama.log" >&2; echo "llama.cpp greedy run failed" >&2; }
fi

# ---------------------------------------------------------------- dpep
dpep_run() { # dtype layout workload rep
    local dt=$1 lay=$2 wl=$3 rep=$4 name=dpep_$1_$2_$3_$4
    local ov threads mrr=64
    [ "$wl" = p512 ] && mrr=1 # lone prefills, one after another
    cat > "$out/$name.yaml" <<YAML
model:
  path: $cache/models/small-$dt
runtime:
  device: cpu
  page_size: 16
  chunked_prefill_size: 4096
  max_running_requests: $mrr
  seed: 1
launch:
  gpu_memory_gb: 4
workload: {kind: file, path: $out/$wl.jsonl}
YAML
    if [ "$lay" = 1x2 ]; then ov=(); threads=2
    else ov=(--tp 2 --dp 2 --ep 2 --enable-dp-attention); threads=1; fi
    [ "$wl" = b1 ] && ceiling "$name"
    echo "OMP_NUM_THREADS=$threads $dpep launch $out/$name.yaml ${ov[*]} run --ignore-eos --quiet" \
        "--summary-json $out/$name.json --output $out/$name.jsonl" > "$out/$name.cmd"
    OMP_NUM_THREADS=$threads timeout 1800 "$dpep" launch "$out/$name.yaml" "${ov[@]}" run --ignore-eos --quiet \
        --summary-json "$out/$name.json" --output "$out/$name.jsonl" > "$out/$name.log" 2>&1 ||
        { echo "dpep run $name failed:" >&2; tail -20 "$out/$name.log" >&2; return 1; }
}
dpep_rep() { # rep: every dpep figure once
    # The two layouts of one figure run back to back (their ratio is the
    # "within 10 %" goal; minutes apart, a shared host's drift would decide
    # it), and which goes first alternates by rep: each layout runs first,
    # right after the previous figure's runs, as often as the other.
    local rep=$1 lay wl dt lays
    if [ $((rep % 2)) = 1 ]; then lays="1x2 2x1"; else lays="2x1 1x2"; fi
    for dt in f32 bf16; do
        for wl in b1 b16 p512; do
            [ $dt = bf16 ] && [ $wl = p512 ] && continue
            for lay in $lays; do
                log "dpep $dt $lay $wl (rep $rep/$reps)"
                dpep_run $dt $lay $wl "$rep"
            done
        done
    done
}

# ---------------------------------------------------------------- llama.cpp
llama_rep() { # rep: every llama.cpp figure once (llama-bench -r 1 per rep)
    local rep=$1 dt g pp
    for dt in f32 bf16; do
        g=$cache/gguf/small-$dt.gguf
        pp=32,512; [ $dt = bf16 ] && pp=32
        log "llama-bench $dt (rep $rep/$reps)"
        ceiling "llama_bench_${dt}_$rep"
        "$lbuild/bin/llama-bench" -m "$g" -p "$pp" -n "$ntok" -t 2 -ngl 0 -r 1 -o json \
            > "$out/llama_bench_${dt}_$rep.json" 2> "$out/llama_bench_${dt}_$rep.log" ||
            { tail -20 "$out/llama_bench_${dt}_$rep.log" >&2; exit 1; }
        log "llama-batched-bench $dt (rep $rep/$reps)"
        "$lbuild/bin/llama-batched-bench" -m "$g" -c $((16 * (128 + ntok) + 64)) -b 2048 -ub 512 \
            -npp 128 -ntg "$ntok" -npl 16 -t 2 -ngl 0 --output-format jsonl \
            > "$out/llama_batched_${dt}_$rep.jsonl" 2> "$out/llama_batched_${dt}_$rep.log" ||
            { tail -20 "$out/llama_batched_${dt}_$rep.log" >&2; exit 1; }
    done
}

# The two engines' repetitions alternate (dpep rep 1, llama.cpp rep 1,
# dpep rep 2, ...): on a shared machine a slow spell then lands on both
# columns, not on one, and the ratios stay comparable.
t_dpep=0 t_llama=0
for rep in $(seq "$reps"); do
    if [ "$only" = all ] || [ "$only" = dpep ]; then
        t0=$SECONDS; dpep_rep "$rep"; t_dpep=$((t_dpep + SECONDS - t0))
    fi
    if [ "$only" = all ] || [ "$only" = llama ]; then
        t0=$SECONDS; llama_rep "$rep"; t_llama=$((t_llama + SECONDS - t0))
    fi
done
log "dpep: $t_dpep s, llama.cpp: $t_llama s"

# ---------------------------------------------------------------- HF
if [ "$only" = all ] || [ "$only" = hf ]; then
    t0=$SECONDS
    for dt in $hf_dtypes; do
        case $dt in f32 | bf16) ;; *) echo "llama_compare.sh: --hf-dtypes: $dt is not f32 or bf16" >&2; exit 2 ;; esac
        pf="1x32,1x512,16x128"
        [ "$quick" = 1 ] && pf="1x32,1x512"
        [ $dt = bf16 ] && pf=""
        greedy_arg=()
        [ $dt = f32 ] && greedy_arg=(--greedy-ids "$out/greedy_hf.json")
        log "HF eager $dt"
        "$py" "$root/bench/llama_compare_hf.py" --model "$cache/models/small-$dt" --dtype $dt --threads 2 \
            --reps "$reps" --decode-len "$ntok" --prefill "$pf" "${greedy_arg[@]}" \
            > "$out/hf_$dt.json" 2> "$out/hf_$dt.log" ||
            { tail -c 2000 "$out/hf_$dt.log" >&2; log "HF $dt failed: its cells stay empty"; }
    done
    log "HF: $((SECONDS - t0)) s"
fi

echo "$(load)" > "$out/load_end"
log "load average at end: $(load)"
python3 "$root/bench/llama_compare_table.py" "$out"
