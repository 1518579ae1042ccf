#!/usr/bin/env bash
# test_stall_phases.sh DPEP SRC_DIR SUBCOMMAND PHASE... -- a rank stopped
# (SIGSTOP, DPEP_FAULT=PHASE@2=stop) at any phase of a 4-rank job must not
# hang it: for each PHASE, `dpep SUBCOMMAND configs/tiny.yaml` (run or
# placement) with runtime.comm_timeout_s=5 must exit non-zero within
# 5 + 30 s, with the watchdog's line naming world rank 2 as the rank that did
# not answer, and leave no process behind. `run` first serves once without a
# fault (exit 0; it also generates the tiny model into a per-test directory).
#   phases of run: startup setup model intake engine sched step:3 results report finalize
#   (startup, setup, finalize: runtime/world; the others: runtime/serve/run.c)
set -uo pipefail
dpep=$1 src=$2 sub=$3
shift 3
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
timeout_s=5 margin=30
tmp=$(mktemp -d /tmp/dpep-stall-XXXXXX)
model=$tmp/model
# Leftovers are found by this test's own directory (on every rank's command
# line) and killed by pid: SIGKILL also ends a stopped process.
leftovers() { pgrep -f -- "$tmp" | grep -vx "$$"; }
kill_leftovers() { for p in $(leftovers); do kill -9 "$p" 2>/dev/null; done; }
cleanup() { kill_leftovers; rm -rf "$tmp"; }
trap cleanup EXIT
fails=0

job() { # OUTFILE [env...]: one 4-rank job; sets rc and elapsed
    local out=$1
    shift
    local t0 t1
    t0=$(date +%s.%N)
    env "$@" timeout 120 mpirun --oversubscribe -np 4 --bind-to none "$dpep" "$sub" \
        "$src/configs/tiny.yaml" --set "model.path=$model" --set "runtime.comm_timeout_s=$timeout_s" \
        $([ "$sub" = run ] && echo "--quiet --output $tmp/out.jsonl") > "$out" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    elapsed=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
}

if [ "$sub" = run ]; then
    job "$tmp/clean.log"
    if [ "$rc" -ne 0 ]; then
        echo "FAIL clean run: exit $rc after ${elapsed} s (expected 0)"
        tail -20 "$tmp/clean.log"
        exit 1
    fi
    echo "ok   clean run: exit 0 after ${elapsed} s"
fi

for phase in "$@"; do
    log=$tmp/stop-${phase//:/_}.log
    job "$log" "DPEP_FAULT=$phase@2=stop"
    why=""
    grep -q "DPEP_FAULT: rank 2 at $phase: stop" "$log" ||
        why="$why; the fault point \"$phase\" was never reached (not placed?)"
    [ "$rc" -ne 0 ] || why="$why; exit 0"
    { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && why="$why; hung until timeout 120"
    awk -v e="$elapsed" -v m="$((timeout_s + margin))" 'BEGIN { exit !(e > m) }' &&
        why="$why; took ${elapsed} s (> $((timeout_s + margin)) s)"
    line=$(grep -E 'ERROR comm "[^"]+": .*ranks that did not arrive: .*\(world 2\) did not answer' "$log" | head -1)
    [ -n "$line" ] || why="$why; no watchdog line naming world rank 2 as not answering"
    for _ in 1 2 3 4 5 6 7 8 9 10; do [ -z "$(leftovers)" ] && break; sleep 0.5; done
    if [ -n "$(leftovers)" ]; then
        why="$why; processes left behind: $(leftovers | tr '\n' ' ')"
        kill_leftovers
    fi
    if [ -z "$why" ]; then
        echo "ok   stop at $phase: exit $rc after ${elapsed} s: ${line#*ERROR }"
    else
        fails=$((fails + 1))
        echo "FAIL stop at $phase: exit $rc after ${elapsed} s${why}"
        sed 's/^/     /' "$log" | tail -15
    fi
done
[ "$fails" -eq 0 ] && echo "PASS" && exit 0
echo "$fails case(s) failed"
exit 1
