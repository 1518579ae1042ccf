#!/usr/bin/env bash
# test_durable.sh DPEP SRC — nothing finished is lost (issue 18): `dpep run`
# writes each request's line as it finishes, so a rank killed (kill -9), a
# SIGTERM to mpirun or to one rank, or a watchdog abort keeps every line it
# reported; --resume then serves exactly the rest, with the greedy outputs of
# an uninterrupted run. Also: a full disk is a runtime failure naming the
# file (exit 1, only whole lines kept), an unwritable --output is refused
# before anything loads (exit 2), a run with requests not served exits 3,
# a stopped one 4. Faults are placed with DPEP_FAULT (runtime/base/fault.c).
set -u
dpep=$1
src=$2
# complete_lines FILE: lines that parse as JSON (a cut line would not)
complete_lines() {
  python3 - "$1" <<'PY'
import json, sys
n = 0
try:
    for line in open(sys.argv[1]):
        if line.endswith("\n"):
            json.loads(line); n += 1
except FileNotFoundError:
    pass
print(n)
PY
}
# lines_match FULL PART: every line of PART is whole and has FULL's output for its id
lines_match() {
  python3 - "$1" "$2" <<'PY'
import json, sys
full = {j["id"]: j for j in map(json.loads, open(sys.argv[1]))}
for line in open(sys.argv[2]):
    j = json.loads(line)
    assert j["output_ids"] == full[j["id"]]["output_ids"], j["id"]
PY
}
# same_outputs FULL OUT: the same ids, in the same (request) order, same outputs
same_outputs() {
  python3 - "$1" "$2" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
assert [x["id"] for x in a] == [x["id"] for x in b], "ids differ"
for x, y in zip(a, b):
    assert x["output_ids"] == y["output_ids"], x["id"]
    assert max([abs(p - q) for p, q in zip(x["logprobs"], y["logprobs"])] + [0]) < 1e-4, x["id"]
PY
}
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
ok() { echo "ok: $*"; }

work=$(mktemp -d)
cleanup() {
  pkill -KILL -f "$work/" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
"$dpep" model gen --arch deepseek_v3 --preset tiny --seed 1 "$work/model" >/dev/null || { echo "FAIL: model gen"; exit 1; }
# 4 ranks, DP attention 4 + EP 4; 96 requests in waves of 8 per group, so
# requests finish over many steps
cat > "$work/run.yaml" <<EOF
model: {path: $work/model, dtype: f32}
parallel: {tp: 4, dp: 4, ep: 4, enable_dp_attention: true, moe_a2a_backend: alltoall}
runtime: {device: cpu, page_size: 16, max_running_requests: 8, chunked_prefill_size: 64, comm_timeout_s: 10, bind: none, seed: 1}
launch: {nodes: 1, gpu_memory_gb: 2}
workload: {kind: random, num_prompts: 96, input_len: 24, output_len: 8, range_ratio: 0.5}
EOF
run4() { # run4 NAME [args...]: 4 ranks; rc in $rc, time in $secs, output in $work/NAME.log
  local name=$1
  shift
  local t0
  t0=$(date +%s.%N)
  timeout 300 mpirun --oversubscribe -np 4 "$dpep" run "$work/run.yaml" --quiet "$@" \
    >"$work/$name.log" 2>&1
  rc=$?
  secs=$(echo "$(date +%s.%N) - $t0" | bc)
}

# ---- the reference: an uninterrupted run -----------------------------------
run4 full --output "$work/full.jsonl"
[ "$rc" = 0 ] && [ "$(wc -l <"$work/full.jsonl")" = 96 ] && ok "uninterrupted run: 96 lines, exit 0" \
  || fail "uninterrupted run: rc $rc, $(wc -l <"$work/full.jsonl" 2>/dev/null) lines"

# resume_check NAME: after a fault, --resume finishes the job; the result
# must hold exactly the ids of the full run with identical greedy outputs
resume_check() {
  local name=$1 kept
  kept=$(complete_lines "$work/$name.jsonl")
  run4 "$name.resume" --output "$work/$name.jsonl" --resume
  if [ "$rc" = 0 ] && same_outputs "$work/full.jsonl" "$work/$name.jsonl"; then
    ok "$name: --resume kept $kept lines, served the rest, outputs equal the uninterrupted run"
  else
    fail "$name: --resume: rc $rc"; tail -5 "$work/$name.resume.log"
  fi
}

# ---- a rank killed with SIGKILL mid-run ------------------------------------
DPEP_FAULT='step:8@2=kill' run4 kill --output "$work/kill.jsonl"
n=$(complete_lines "$work/kill.jsonl")
if [ "$rc" != 0 ] && [ "$n" -gt 0 ] && [ "$n" -lt 96 ] && lines_match "$work/full.jsonl" "$work/kill.jsonl"; then
  ok "kill -9 of rank 2 at step 8: exit $rc in ${secs}s, $n finished lines kept (equal to the full run's)"
else
  fail "kill -9 of rank 2: rc $rc, $n lines"; tail -5 "$work/kill.log"
fi
resume_check kill

# ---- SIGTERM to mpirun mid-run ---------------------------------------------
# rank 0 waits 3 s after step 10 (DPEP_FAULT sleep; the first requests have
# finished by then), so that the signal lands mid-run whatever the engine's
# speed (the whole run is ~25 steps, ~1 s of them). mpirun SIGKILLs the ranks
# ~1 s after forwarding the signal and may drop their last output while it
# tears down (seen about once in four runs on 2 cores): up to 3 attempts, each
# checked in full.
term_ok=0
for attempt in 1 2 3; do
  rm -f "$work/term.jsonl"
  t0=$(date +%s.%N)
  DPEP_FAULT='step:10@0=sleep:3000' timeout 300 mpirun --oversubscribe -np 4 "$dpep" run "$work/run.yaml" \
    --quiet --output "$work/term.jsonl" >"$work/term.log" 2>&1 &
  pid=$!
  # wait for the first lines, then stop the job
  for _ in $(seq 3000); do [ -s "$work/term.jsonl" ] && break; sleep 0.05; done
  sleep 0.3
  kill -TERM $pid
  wait $pid
  rc=$?
  secs=$(echo "$(date +%s.%N) - $t0" | bc)
  n=$(complete_lines "$work/term.jsonl")
  if [ "$rc" != 0 ] && grep -q "SIGTERM: stopping" "$work/term.log" && [ "$n" -gt 0 ] \
     && lines_match "$work/full.jsonl" "$work/term.jsonl"; then
    ok "SIGTERM to mpirun: exit $rc in ${secs}s, said so, $n lines kept (attempt $attempt)"
    term_ok=1
    break
  fi
  echo "note: SIGTERM to mpirun, attempt $attempt: rc $rc, $n lines, stopping line $(grep -c 'SIGTERM: stopping' "$work/term.log")"
done
if [ $term_ok = 0 ]; then
  fail "SIGTERM to mpirun: rc $rc, $n lines"; tail -5 "$work/term.log"
fi
resume_check term

# ---- SIGTERM to one rank (not rank 0): the run stops cleanly, exit 4 -------
DPEP_FAULT='step:8@3=term' run4 term1 --output "$work/term1.jsonl"
n=$(complete_lines "$work/term1.jsonl")
if [ "$rc" = 4 ] && grep -q "stopped by SIGTERM to rank 3" "$work/term1.log" \
   && grep -q "rerun the same command with --resume" "$work/term1.log" && [ "$n" -gt 0 ] \
   && [ "$n" -lt 96 ] && lines_match "$work/full.jsonl" "$work/term1.jsonl"; then
  ok "SIGTERM to rank 3: exit 4 in ${secs}s, summary says what stopped, $n lines kept"
else
  fail "SIGTERM to rank 3: rc $rc, $n lines"; tail -8 "$work/term1.log"
fi
resume_check term1

# ---- SIGINT on rank 0 -------------------------------------------------------
DPEP_FAULT='step:5@0=int' run4 int0 --output "$work/int0.jsonl"
n=$(complete_lines "$work/int0.jsonl")
if [ "$rc" = 4 ] && grep -q "SIGINT: stopping" "$work/int0.log" && grep -q "^stopped by: *SIGINT" "$work/int0.log"; then
  ok "SIGINT on rank 0: exit 4 in ${secs}s, $n lines kept"
else
  fail "SIGINT on rank 0: rc $rc"; tail -8 "$work/int0.log"
fi

# ---- a stopped rank: the watchdog ends the job, the lines stay --------------
DPEP_FAULT='step:8@1=stop' run4 stop --output "$work/stop.jsonl"
n=$(complete_lines "$work/stop.jsonl")
if [ "$rc" != 0 ] && grep -q "did not arrive: 1\|did not arrive: .*1" "$work/stop.log" && [ "$n" -gt 0 ] \
   && lines_match "$work/full.jsonl" "$work/stop.jsonl"; then
  ok "SIGSTOP of rank 1: watchdog named it, exit $rc in ${secs}s, $n lines kept"
else
  fail "SIGSTOP of rank 1: rc $rc, $n lines"; tail -5 "$work/stop.log"
fi
resume_check stop

# ---- --resume with a cut last line -----------------------------------------
head -n 30 "$work/full.jsonl" > "$work/cut.jsonl"
sed -n 31p "$work/full.jsonl" | head -c 40 >> "$work/cut.jsonl"
run4 cut --output "$work/cut.jsonl" --resume
if [ "$rc" = 0 ] && grep -q "30 of 96 requests complete" "$work/cut.log" && same_outputs "$work/full.jsonl" "$work/cut.jsonl"; then
  ok "--resume: a cut last line is dropped and served again"
else
  fail "--resume with a cut line: rc $rc"; tail -5 "$work/cut.log"
fi
# a line of another workload: refused, file untouched
printf '{"id":"not-here","output_ids":[1]}\n' > "$work/foreign.jsonl"
cp "$work/foreign.jsonl" "$work/foreign.orig"
run4 foreign --output "$work/foreign.jsonl" --resume
if [ "$rc" = 2 ] && grep -q 'foreign.jsonl:1: id "not-here" is not a request of this workload' "$work/foreign.log" \
   && cmp -s "$work/foreign.jsonl" "$work/foreign.orig"; then
  ok "--resume: an id of another workload is refused (exit 2), the file untouched"
else
  fail "--resume foreign id: rc $rc"; tail -3 "$work/foreign.log"
fi
run4 noout --resume
[ "$rc" = 2 ] && grep -q "resume needs --output" "$work/noout.log" && ok "--resume without --output: exit 2" \
  || fail "--resume without --output: rc $rc"

# ---- unwritable --output: refused before anything loads ---------------------
mkfifo "$work/fifo"
for case in "$work/no/such/dir/out.jsonl:does not exist" "$work:is a directory" \
            "/dev/full:is a character device" "$work/fifo:is a FIFO"; do
  path=${case%%:*}
  want=${case#*:}
  run4 unwritable --output "$path"
  if [ "$rc" = 2 ] && grep -q -- "--output $path: .*$want" "$work/unwritable.log" \
     && ! grep -q "dpep run: .* requests over" "$work/unwritable.log"; then
    ok "--output $path: exit 2 before loading (${secs}s): $want"
  else
    fail "--output $path: rc $rc"; tail -3 "$work/unwritable.log"
  fi
done

# ---- a full disk: exit 1 naming the file, whole lines only ------------------
if [ "$(id -u)" = 0 ] && unshare -m true 2>/dev/null; then
  mkdir -p "$work/small"
  t0=$(date +%s.%N)
  unshare -m bash -c 'mount -t tmpfs -o size=16k tmpfs "$0" && exec "$@"' "$work/small" \
    timeout 300 mpirun --oversubscribe -np 4 "$dpep" run "$work/run.yaml" --quiet \
    --output "$work/small/out.jsonl" >"$work/full_disk.log" 2>&1
  rc=$?
  secs=$(echo "$(date +%s.%N) - $t0" | bc)
  # the tmpfs is gone with the namespace: the summary says what was kept
  if [ "$rc" = 1 ] && grep -q -- "--output $work/small/out.jsonl: write failed: No space left on device" "$work/full_disk.log" \
     && grep -q "not delivered" "$work/full_disk.log"; then
    ok "full tmpfs: exit 1 in ${secs}s naming the file and ENOSPC; $(grep -o '[0-9]* lines written, then writing failed' "$work/full_disk.log")"
  else
    fail "full tmpfs: rc $rc"; grep -v "^  " "$work/full_disk.log" | tail -6
  fi
  # whole lines only: run the same inside the namespace and check the file there
  unshare -m bash -c 'mount -t tmpfs -o size=16k tmpfs "$0" && "$@"; python3 - "$0/out.jsonl" <<PY
import json, sys
n = 0
for line in open(sys.argv[1]):
    json.loads(line); n += 1
print("whole", n)
PY' "$work/small" timeout 300 mpirun --oversubscribe -np 4 "$dpep" run "$work/run.yaml" --quiet \
    --output "$work/small/out.jsonl" >"$work/full_disk2.log" 2>&1
  if grep -q "^whole [1-9]" "$work/full_disk2.log"; then
    ok "full tmpfs: the file holds only whole lines ($(grep '^whole' "$work/full_disk2.log"))"
  else
    fail "full tmpfs: cut lines"; tail -4 "$work/full_disk2.log"
  fi
else
  echo "skip: full-disk case needs root and unshare -m"
fi

# ---- exit 3: requests not served (one does not fit; a bad workload line) ----
cat > "$work/wl.jsonl" <<EOF
{"id": "fits", "input_ids": [1, 2, 3], "max_new_tokens": 4}
{"id": "too-long", "input_ids": [$(seq -s, 1 200)], "max_new_tokens": 4}
{"id": "bad", "input_ids": "nope"}
EOF
timeout 300 mpirun --oversubscribe -np 2 "$dpep" run "$work/run.yaml" --tp 2 --dp 2 --ep 2 --quiet \
  --set workload.kind=file --set workload.path="$work/wl.jsonl" --max-kv-tokens 64 \
  --output "$work/x3.jsonl" >"$work/x3.log" 2>&1
rc=$?
if [ "$rc" = 3 ] && grep -q "1 failed" "$work/x3.log" && grep -q "1 workload line skipped" "$work/x3.log" \
   && grep -q '"id":"too-long".*"error"' "$work/x3.jsonl"; then
  ok "a request that cannot fit and a bad line: exit 3, both counted in the summary"
else
  fail "exit 3 case: rc $rc"; grep -v "^  " "$work/x3.log" | tail -6
fi

[ $fails = 0 ] && echo "test_durable: all passed" || { echo "test_durable: $fails failed"; exit 1; }
