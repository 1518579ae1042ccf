#!/usr/bin/env bash
# test_comm_timeout.sh MPIEXEC NP BINARY [ARGS...] -- runs the hung-collective
# test and checks that the job ended non-zero within 30 s with one line naming
# the operation, the comm and the ranks that did not arrive. Env EXPECT_COMM,
# EXPECT_MISSING and EXPECT_OP override the expected comm name ("ep"),
# missing-rank list ("3") and operation ("allreduce #2"); EXPECT_DETAIL is a
# further text the timeout line must contain.
set -u
mpiexec=$1 np=$2 bin=$3
shift 3
comm=${EXPECT_COMM:-ep}
op=${EXPECT_OP:-allreduce #2}
missing=${EXPECT_MISSING:-3}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
out=$(mktemp)
trap 'rm -f "$out"' EXIT
start=$(date +%s)
timeout 60 "$mpiexec" -n "$np" --oversubscribe --mca btl self,vader "$bin" "$@" >"$out" 2>&1
rc=$?
elapsed=$(( $(date +%s) - start ))
cat "$out"
echo "--- exit code $rc after ${elapsed} s"
fail=0
if [ "$rc" -eq 0 ]; then echo "FAIL: job exited 0 (expected an abort)"; fail=1; fi
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then echo "FAIL: job hung until timeout 60"; fail=1; fi
if [ "$elapsed" -gt 30 ]; then echo "FAIL: took ${elapsed} s (> 30 s)"; fail=1; fi
line=$(grep -E "ERROR comm \"$comm\": $op timed out after [0-9.]+ s; ranks that did not arrive: $missing \(of " "$out" | head -1)
if [ -z "$line" ]; then
  echo "FAIL: no line 'ERROR comm \"$comm\": $op timed out ...; ranks that did not arrive: $missing (of N)'"
  fail=1
else
  echo "found: $line"
fi
if [ -n "${EXPECT_DETAIL:-}" ] && ! grep -q "ranks that did not arrive: $missing .*${EXPECT_DETAIL}" "$out"; then
  echo "FAIL: the timeout line does not say '${EXPECT_DETAIL}'"; fail=1
fi
if grep -q "the watchdog did not fire" "$out"; then echo "FAIL: a collective returned"; fail=1; fi
[ "$fail" -eq 0 ] && echo "PASS" && exit 0
exit 1
