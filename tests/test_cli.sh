#!/usr/bin/env bash
# test_cli.sh — the dpep command line: exit codes (0 ok, 2 bad input/usage),
# help texts, `config check` text and JSON output (keys and values of every
# rank), 96-rank layouts, cookbook selection, docs/CONFIG.md in sync, and
# inputs that are not regular files (a FIFO without a writer, /dev/zero)
# refused at once instead of blocking: config FILE, workload.path under
# `dpep run` on 2 ranks, safetensors shards and index, the hostfile.
#   tests/test_cli.sh path/to/dpep SOURCE_DIR
set -u
dpep=$1
src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0

# expect CODE DESCRIPTION -- COMMAND...   (stdout+stderr saved in $tmp/out)
expect() {
  local want=$1 what=$2
  shift 3
  "$@" >"$tmp/out" 2>&1
  local got=$?
  if [ "$got" = "$want" ]; then
    pass=$((pass + 1)); echo "ok   $what"
  else
    fail=$((fail + 1)); echo "FAIL $what: exit $got, expected $want"; sed 's/^/     /' "$tmp/out" | head -20
  fi
}
# contains TEXT DESCRIPTION   (checks the last command's output)
contains() {
  if grep -qF -- "$1" "$tmp/out"; then
    pass=$((pass + 1)); echo "ok   $2"
  else
    fail=$((fail + 1)); echo "FAIL $2: output lacks: $1"; sed 's/^/     /' "$tmp/out" | head -20
  fi
}

expect 2 "no arguments is a usage error" -- "$dpep"
expect 0 "dpep --help" -- "$dpep" --help
contains "config check" "--help lists config check"
contains "config options" "--help lists config options"
contains "info" "--help lists info"
expect 0 "dpep --version" -- "$dpep" --version
expect 2 "unknown command" -- "$dpep" frobnicate
contains "unknown command 'frobnicate'" "unknown command is named"
expect 2 "config without subcommand" -- "$dpep" config
contains "expected one of: check options" "subcommands listed"
expect 0 "config --help" -- "$dpep" config --help
expect 0 "config check --help" -- "$dpep" config check --help
contains "--configuration NAME" "check help lists --configuration"
expect 2 "config check without FILE" -- "$dpep" config check
expect 2 "config check of a missing file" -- "$dpep" config check "$tmp/nope.yaml"
contains "nope.yaml: cannot open" "missing file named"
expect 2 "two files" -- "$dpep" config check "$src/configs/tiny.yaml" other.yaml
expect 2 "bad --world" -- "$dpep" config check "$src/configs/tiny.yaml" --world 0
expect 2 "bad --world text" -- "$dpep" config check "$src/configs/tiny.yaml" --world four
expect 0 "info" -- "$dpep" info
contains "MPI:" "info names MPI"
contains "GPUs:" "info names GPUs"
expect 2 "info with an argument" -- "$dpep" info extra
expect 0 "config options" -- "$dpep" config options
contains "flags: --tp-size, --tp, --tensor-parallel-size" "options list SGLang flags"
expect 2 "config options bad arg" -- "$dpep" config options --bogus

# The main config, as README runs it.
expect 0 "tiny.yaml --world 4" -- "$dpep" config check "$src/configs/tiny.yaml" --world 4
contains "layout: world 4 = tp 4 with DP attention (dp 4)" "tiny layout line"
contains "enable_dp_attention: true" "tiny shows DPA"
expect 2 "tiny.yaml --world 8 names the rule" -- "$dpep" config check "$src/configs/tiny.yaml" --world 8
contains "tiny.yaml:10:3: parallel.tp: the world has 8 ranks but tp = 4 (rule: with DP attention world = tp)" "world rule message"

# GPU-only MoE transports with runtime.device cpu, and ranks_per_gpu out of
# range: exit 2 naming the file, line and field (issue 17)
printf 'parallel:\n  tp: 4\n  ep: 4\n  moe_a2a_transport: ipc\nruntime:\n  device: cpu\n' > "$tmp/ipc_cpu.yaml"
expect 2 "ipc with runtime.device cpu" -- "$dpep" config check "$tmp/ipc_cpu.yaml"
contains "ipc_cpu.yaml:4:3: parallel.moe_a2a_transport: ipc moves rows between GPUs, but runtime.device is cpu" "ipc on cpu message"
expect 2 "nccl with --device cpu" -- "$dpep" config check "$src/configs/tiny.yaml" --moe-a2a-transport nccl --device cpu
contains "parallel.moe_a2a_transport: nccl moves rows between GPUs" "nccl on cpu message"
expect 2 "ranks_per_gpu 0" -- "$dpep" config check "$src/configs/tiny.yaml" --ranks-per-gpu 0
contains "runtime.ranks_per_gpu" "ranks_per_gpu named"
expect 0 "4 ranks sharing a GPU, auto transport" -- "$dpep" config check "$src/configs/tiny.yaml" --device cuda --ranks-per-gpu 4
contains "a2a alltoall over ipc (auto, GPUs: EP group on one node)" "GPU layout names ipc"
expect 0 "moe_a2a_transport mpi on GPUs" -- "$dpep" config check "$src/configs/tiny.yaml" --device cuda --moe-a2a-transport mpi
contains "a2a alltoall over mpi-staged (GPU rows through host memory)" "GPU layout names mpi-staged"

# Bad file: the message names file, line, column and key; exit 2.
printf 'parallel:\n  tp: 8\n  ep: 3\n' > "$tmp/bad.yaml"
expect 2 "ep 3 of tp 8" -- "$dpep" config check "$tmp/bad.yaml"
contains "bad.yaml:3:3: parallel.ep: ep must divide tp" "ep rule message"
printf 'parallel:\n  tp: 8\n  tpp: 3\n' > "$tmp/typo.yaml"
expect 2 "unknown key" -- "$dpep" config check "$tmp/typo.yaml"
contains "typo.yaml:3:3: parallel.tpp: unknown key" "unknown key message"
head -c 3000 /dev/urandom > "$tmp/garbage.yaml"
expect 2 "binary garbage" -- "$dpep" config check "$tmp/garbage.yaml"
expect 2 "a directory" -- "$dpep" config check "$tmp"
expect 2 "override typo" -- "$dpep" config check "$src/configs/tiny.yaml" --tp-siz 4
contains "did you mean --tp-size?" "flag did-you-mean"

# Inputs that are not regular files: refused at once, named, exit 2 (a FIFO
# without a writer used to block open() forever, /dev/zero to be read
# forever by rank 0 while the other ranks waited). `within SECS` bounds the
# command, so a hang fails instead of stalling the suite.
within() { local s=$1; shift; timeout -k 5 "$s" "$@"; }
# quick SECS DESCRIPTION   (checks the last timed command's wall time)
quick() {
  if [ "$(( $(date +%s) - t0 ))" -le "$1" ]; then pass=$((pass + 1)); echo "ok   $2"
  else fail=$((fail + 1)); echo "FAIL $2: took $(( $(date +%s) - t0 )) s (expected at most $1 s)"; fi
}
mkfifo "$tmp/fifo.yaml" "$tmp/fifo.jsonl"
t0=$(date +%s)
expect 2 "config check of a FIFO" -- within 10 "$dpep" config check "$tmp/fifo.yaml"
contains "$tmp/fifo.yaml: is a FIFO (named pipe) (expected a regular file)" "FIFO config named"
quick 5 "FIFO config refused within 5 s"
expect 2 "config check of /dev/zero" -- within 10 "$dpep" config check /dev/zero
contains "/dev/zero: is a character device (expected a regular file)" "/dev/zero config named"
# a model whose weights file or index is a FIFO
mkdir -p "$tmp/m"
if "$dpep" model gen --set hidden_size=64 --set num_hidden_layers=2 "$tmp/m/ok" >/dev/null 2>&1; then
  cp -r "$tmp/m/ok" "$tmp/m/fifo-shard"; rm "$tmp/m/fifo-shard/model.safetensors"; mkfifo "$tmp/m/fifo-shard/model.safetensors"
  expect 2 "model check with a FIFO shard" -- within 10 "$dpep" model check "$tmp/m/fifo-shard"
  contains "$tmp/m/fifo-shard/model.safetensors: is a FIFO (named pipe) (expected a regular file)" "FIFO shard named"
  cp -r "$tmp/m/ok" "$tmp/m/fifo-index"; mkfifo "$tmp/m/fifo-index/model.safetensors.index.json"
  expect 2 "model check with a FIFO index" -- within 10 "$dpep" model check "$tmp/m/fifo-index"
  contains "$tmp/m/fifo-index/model.safetensors.index.json: is a FIFO (named pipe) (expected a regular file)" "FIFO index named"
else
  fail=$((fail + 1)); echo "FAIL model gen for the FIFO cases"
fi
# the hostfile of `dpep launch`
mkfifo "$tmp/hosts"
expect 2 "launch with a FIFO hostfile" -- within 10 "$dpep" launch "$src/configs/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep" --hostfile "$tmp/hosts"
contains "$tmp/hosts: the hostfile is a FIFO (named pipe) (expected a regular file)" "FIFO hostfile named"
# workload.path under `dpep run` on 2 ranks: rank 0 refuses it, the job ends
if command -v mpirun >/dev/null && [ -f "$tmp/m/ok/config.json" ]; then
  for wl in "$tmp/fifo.jsonl" /dev/zero; do
    printf 'model: {path: %s}\nparallel: {tp: 2, dp: 2, ep: 2, enable_dp_attention: true}\nruntime: {device: cpu, comm_timeout_s: 60}\nworkload: {kind: file, path: %s}\n' \
      "$tmp/m/ok" "$wl" > "$tmp/wl.yaml"
    t0=$(date +%s)
    expect 2 "dpep run, workload.path $wl" -- env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
      OMPI_MCA_mpi_yield_when_idle=1 OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
      timeout -k 5 60 mpirun -np 2 --oversubscribe --bind-to none "$dpep" run "$tmp/wl.yaml" --quiet --output "$tmp/wl.out"
    contains "$wl: workload.path: is " "workload $wl named"
    contains "(expected a regular file)" "workload $wl: what was expected"
    quick 30 "workload $wl refused within 30 s"
  done
else
  echo "SKIP dpep run with a FIFO workload: mpirun or the model missing"
fi

# Notes do not fail the check.
printf 'parallel:\n  tp: 4\n  enable_dp_attention: true\n' > "$tmp/dp1.yaml"
expect 0 "dp 1 switches DPA off" -- "$dpep" config check "$tmp/dp1.yaml"
contains "note: " "note printed"

# Cookbook selection.
expect 2 "cookbook needs a name" -- "$dpep" config check "$src/configs/deepseek-v3-cookbook.yaml"
contains "available: default, high-throughput-dp, high-throughput-dp-ep, low-latency" "names listed"
expect 2 "cookbook unknown name" -- "$dpep" config check "$src/configs/deepseek-v3-cookbook.yaml" --configuration fast
contains 'no entry named "fast"' "unknown name message"
expect 0 "cookbook pick" -- "$dpep" config check "$src/configs/deepseek-v3-cookbook.yaml" --configuration high-throughput-dp --world 8
contains "(configuration high-throughput-dp)" "chosen configuration shown"

# JSON: exactly the promised keys, values from the layout rules.
if command -v python3 >/dev/null; then
  check_json() { # file world args... ; python asserts on the ranks array
    local f=$1 w=$2; shift 2
    "$dpep" config check "$f" --world "$w" --json "$@" >"$tmp/j.json" 2>"$tmp/j.err" || { echo "exit $?"; cat "$tmp/j.err"; return 1; }
    python3 - "$tmp/j.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
L, C = d["layout"], d["config"]["parallel"]
tp, dp, ep = C["tp"], C["dp"], C["ep"]
dpa = C["enable_dp_attention"]
attn_tp = tp // dp if dpa else tp
moe_tp = tp // ep
rpn = L["world"] // L["nodes"]
assert len(d["ranks"]) == L["world"], "ranks array length"
keys = {"rank", "node", "instance", "attn_dp_rank", "attn_tp_rank", "ep_rank", "moe_tp_rank"}
for r, x in enumerate(d["ranks"]):
    assert set(x) == keys, f"keys {sorted(x)}"
    i = r % tp
    want = dict(rank=r, node=r // rpn, instance=r // tp, attn_dp_rank=i // attn_tp,
                attn_tp_rank=i % attn_tp, ep_rank=i // moe_tp, moe_tp_rank=i % moe_tp)
    assert x == want, f"rank {r}: {x} != {want}"
PY
  }
  if check_json "$src/configs/tiny.yaml" 4 > "$tmp/out" 2>&1; then pass=$((pass+1)); echo "ok   json tiny 4 ranks"; else fail=$((fail+1)); echo "FAIL json tiny"; cat "$tmp/out"; fi
  printf 'parallel: {tp: 96, dp: 48, ep: 96, enable_dp_attention: true}\nlaunch: {nodes: 12, gpus_per_node: 8}\n' > "$tmp/big.yaml"
  if check_json "$tmp/big.yaml" 96 > "$tmp/out" 2>&1; then pass=$((pass+1)); echo "ok   json 96 ranks (tp 96 dp 48 ep 96, 12 nodes)"; else fail=$((fail+1)); echo "FAIL json 96"; cat "$tmp/out"; fi
  if check_json "$tmp/big.yaml" 96 --ep 48 --dp 96 > "$tmp/out" 2>&1; then pass=$((pass+1)); echo "ok   json 96 ranks (dp 96 ep 48 by flags)"; else fail=$((fail+1)); echo "FAIL json 96 flags"; cat "$tmp/out"; fi
  printf 'parallel: {tp: 2, dp: 4}\nlaunch: {nodes: 2}\n' > "$tmp/rep.yaml"
  if check_json "$tmp/rep.yaml" 8 > "$tmp/out" 2>&1; then pass=$((pass+1)); echo "ok   json replicas tp 2 × dp 4 on 2 nodes"; else fail=$((fail+1)); echo "FAIL json replicas"; cat "$tmp/out"; fi
else
  echo "SKIP json checks: python3 not found"
fi

# docs/CONFIG.md carries the current option table.
"$dpep" config options --markdown > "$tmp/table.md"
sed -n '/<!-- options:begin -->/,/<!-- options:end -->/p' "$src/docs/CONFIG.md" | sed '1d;$d' > "$tmp/doc.md"
if cmp -s "$tmp/table.md" "$tmp/doc.md"; then
  pass=$((pass + 1)); echo "ok   docs/CONFIG.md is current"
else
  fail=$((fail + 1)); echo "FAIL docs/CONFIG.md is stale: run scripts/gen-docs.sh"; diff "$tmp/table.md" "$tmp/doc.md" | head
fi

# OpenBLAS's kernels: where it takes this CPU for a generic one (a CPU newer
# than the library) and the CPU has AVX-512 / AVX2, dpep runs itself again with
# OPENBLAS_CORETYPE (a second "Core:" line from OPENBLAS_VERBOSE); otherwise it
# keeps OpenBLAS's pick; a user's OPENBLAS_CORETYPE is left alone.
cores=$(OPENBLAS_VERBOSE=2 "$dpep" --version 2>&1 | grep '^Core:' | awk '{print $2}' | tr '\n' ' ')
first=${cores%% *}
want=""
case " Prescott Core2 Penryn Nehalem Sandybridge " in
  *" $first "*)
    flags=$(grep -m1 '^flags' /proc/cpuinfo)
    if printf '%s' "$flags" | grep -qw avx512f && printf '%s' "$flags" | grep -qw avx512bw &&
       printf '%s' "$flags" | grep -qw avx512dq && printf '%s' "$flags" | grep -qw avx512vl &&
       printf '%s' "$flags" | grep -qw avx512cd; then want=SkylakeX
    elif printf '%s' "$flags" | grep -qw avx2 && printf '%s' "$flags" | grep -qw fma; then want=Haswell; fi ;;
esac
if [ -z "$first" ]; then
  echo "SKIP OpenBLAS core: OPENBLAS_VERBOSE printed no Core line (not a DYNAMIC_ARCH OpenBLAS)"
elif { [ -n "$want" ] && [ "$cores" = "$first $want " ]; } || { [ -z "$want" ] && [ "$cores" = "$first " ]; }; then
  pass=$((pass + 1)); echo "ok   OpenBLAS core: $cores(asked for: ${want:-nothing})"
else
  fail=$((fail + 1)); echo "FAIL OpenBLAS core: got '$cores', expected ${want:+$first then }${want:-$first alone}"
fi
forced=$(OPENBLAS_CORETYPE=Prescott OPENBLAS_VERBOSE=2 "$dpep" --version 2>&1 | grep -c '^Core:')
if [ -z "$first" ] || [ "$forced" = 1 ]; then
  pass=$((pass + 1)); echo "ok   OPENBLAS_CORETYPE set by the user: kept"
else
  fail=$((fail + 1)); echo "FAIL OPENBLAS_CORETYPE=Prescott: $forced Core lines (dpep ran itself again)"
fi

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
