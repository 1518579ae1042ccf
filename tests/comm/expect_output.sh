#!/usr/bin/env bash
# expect_output.sh REGEX CMD [ARGS...] -- runs CMD (under timeout 60) and
# passes when it exits 0 and its output matches the extended regex REGEX.
set -u
re=$1
shift
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
out=$(timeout 60 "$@" 2>&1)
rc=$?
printf '%s\n--- exit code %d\n' "$out" "$rc"
if [ "$rc" -ne 0 ]; then echo "FAIL: exit code $rc"; exit 1; fi
if ! grep -qE -- "$re" <<<"$out"; then echo "FAIL: output does not match: $re"; exit 1; fi
echo PASS
