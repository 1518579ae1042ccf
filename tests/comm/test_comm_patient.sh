#!/usr/bin/env bash
# test_comm_patient.sh MPIEXEC NP BINARY MODE -- a patient wait on which one
# rank is late by 3.5 timeouts but alive (test_comm_patient.c, modes slow and
# slow-bracket): the job must exit 0 after waiting (>= 3 s), every rank must
# pass its checks, and rank 0 must say once (one INFO line for the op) whom
# it waits for, not abort. Mode mismatch: ranks in different patient ops at
# the same seq must end the job within 30 s saying so.
set -u
mpiexec=$1 np=$2 bin=$3 mode=$4
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$(date +%s)
timeout 60 "$mpiexec" -n "$np" --oversubscribe --mca btl self,vader "$bin" "$mode" >"$out" 2>&1
rc=$?
elapsed=$(( $(date +%s) - start ))
cat "$out"
echo "--- exit code $rc after ${elapsed} s"
fail=0
if [ "$mode" = mismatch ]; then
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || { echo "FAIL: exit code $rc (expected an abort)"; fail=1; }
  [ "$elapsed" -le 30 ] || { echo "FAIL: took ${elapsed} s (> 30 s)"; fail=1; }
  re='ERROR comm "patient": test_(wait|bracket) #2 \(a patient wait\) cannot complete after [0-9.]+ s: rank [0-9] \(world [0-9]\) is inside another op at #2.*the ranks do not run the same collectives'
  grep -qE "$re" "$out" || { echo "FAIL: no line matches: $re"; fail=1; }
  [ "$fail" -eq 0 ] && echo "PASS" && exit 0
  exit 1
fi
[ "$rc" -eq 0 ] || { echo "FAIL: exit code $rc (expected 0: the late rank was alive)"; fail=1; }
[ "$elapsed" -ge 3 ] || { echo "FAIL: done in ${elapsed} s: rank 1 did not sleep 3.5 s?"; fail=1; }
passed=$(grep -c ' passed, 0 failed' "$out")
[ "$passed" -eq "$np" ] || { echo "FAIL: $passed of $np ranks passed their checks"; fail=1; }
if [ "$mode" = slow ]; then
  re='INFO comm "patient": test_wait #2 has waited [0-9]+ s for ranks 1 \(of '"$np"'\) \[rank 1 \(world 1\) is at #1 \(done with it\)\]; they answer the watchdog'
else
  re='INFO comm "patient": test_bracket #2 has run [0-9]+ s; every rank entered it and answers the watchdog'
fi
n=$(grep -cE "$re" "$out")
[ "$n" -eq 1 ] || { echo "FAIL: $n lines match (expected exactly one): $re"; fail=1; }
if grep -q "timed out" "$out"; then echo "FAIL: the watchdog ended the job"; fail=1; fi
[ "$fail" -eq 0 ] && echo "PASS" && exit 0
exit 1
