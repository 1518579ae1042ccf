#!/usr/bin/env bash
# threads.sh — the thread plan is what the products run on (issue 19): one
# rank of `dpep run` on the tiny V3 model with OMP_NUM_THREADS 1, 2 and unset
# (the team then comes from the rank's cpuset). The summary's
# cpu_product_team_max (the most threads one product was split over, counted
# by runtime/linear) must equal the plan's threads_per_rank — until this test,
# OpenBLAS's OpenMP build reset the team to one thread behind the plan's back
# — and the tokens must equal the one-thread run's (log-probs within 1e-5:
# attention's split-KV sums in another order with more threads).
#   tests/engine/threads.sh DPEP_BIN
set -uo pipefail
dpep=${1:?dpep binary}
here=$(cd "$(dirname "$0")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn}
unset OMP_NUM_THREADS OPENBLAS_NUM_THREADS
tmp=$(mktemp -d /tmp/dpep-threads-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0
cores=$(nproc)
"$dpep" model gen --preset tiny --seed 7 "$tmp/m" > /dev/null || { echo "FAIL model gen"; exit 1; }
python3 "$here/gen_requests.py" "$tmp/work.jsonl" 5 3 60 10 21
python3 "$here/run_yaml.py" "$tmp/run.yaml" "$tmp/m" "$tmp/work.jsonl"
run() { # name want_threads env... -- args...
    local name=$1 want=$2
    shift 2
    local envs=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do envs+=("$1"); shift; done
    shift
    if ! env "${envs[@]}" timeout 120 mpirun -np 1 --bind-to none --mca btl self,vader "$dpep" run \
        "$tmp/run.yaml" --ignore-eos --quiet --output "$tmp/$name.jsonl" \
        --summary-json "$tmp/$name.json" "$@" > "$tmp/$name.log" 2>&1; then
        echo "FAIL $name: dpep run exited non-zero"; tail -15 "$tmp/$name.log"; fails=$((fails + 1)); return
    fi
    python3 - "$tmp/$name.json" "$want" "$name" <<'PY' || fails=$((fails + 1))
import json, sys
s = json.load(open(sys.argv[1])); want = int(sys.argv[2])
plan, team = s.get("threads_per_rank"), s.get("cpu_product_team_max")
ok = plan == want and team == want
print("%s %-14s plan %s threads, products split over up to %s (want %d)" % (
    "  ok  " if ok else "FAIL", sys.argv[3], plan, team, want))
sys.exit(0 if ok else 1)
PY
}
same() { # a b: tokens identical, logprobs within 1e-5
    python3 "$here/same_outputs.py" "$tmp/$1.jsonl" "$tmp/$2.jsonl" 1e-5 5 "$1 vs $2" ||
        fails=$((fails + 1))
}
echo "thread plan vs the threads products ran on ($cores cores, tiny V3, 1 rank):"
run t1 1 OMP_NUM_THREADS=1 --
run t2 2 OMP_NUM_THREADS=2 --
run t2_b1 2 OMP_NUM_THREADS=2 -- --set runtime.max_running_requests=1
run t1_b1 1 OMP_NUM_THREADS=1 -- --set runtime.max_running_requests=1
# unset: the team is the rank's cpuset (bind auto: the whole machine for one rank)
run cpuset "$cores" --
same t2 t1
same t2_b1 t1_b1
same cpuset t1
[ $fails -eq 0 ] && echo "threads: all passed" || echo "FAIL threads: $fails check(s)"
[ $fails -eq 0 ]
