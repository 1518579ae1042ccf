#!/usr/bin/env bash
# check_leak_canary.sh MPIEXEC NP CANARY — passes only when LeakSanitizer,
# under the environment the tests run with (suppressions, MPI shim), reports
# on every rank the canary's two dropped blocks (4242 bytes from malloc, an
# hwloc bitmap) and no leak whose stack misses leak_canary.c: the test set-up
# hides the MPI stack's leaks, not dpep's, and reaches the ranks mpiexec starts.
set -u
mpiexec=$1 np=$2 canary=$3
out=$(mktemp)
trap 'rm -f "$out"' EXIT

timeout 120 "$mpiexec" -n "$np" --oversubscribe --mca btl self,vader "$canary" >"$out" 2>&1
rc=$?

fail=0
check() { # check WHAT OK(1|"")
    if [ "$2" = 1 ]; then echo "ok   $1"; else echo "FAIL $1"; fail=1; fi
}
reports=$(grep -c 'ERROR: LeakSanitizer: detected memory leaks' "$out")
malloced=$(grep -c '^Direct leak of 4242 byte(s) in 1 object(s)' "$out")
bitmaps=$(grep -c 'in hwloc_bitmap_alloc ' "$out")
# Leak blocks (a "Direct/Indirect leak" line, its frames, a blank line) whose
# frames never reach leak_canary.c: leaks of the MPI stack that got through.
foreign=$(awk '/^(Direct|Indirect) leak/ { inb = 1; mine = 0; next }
               inb && /leak_canary\.c/ { mine = 1 }
               inb && /^$/ { if (!mine) n++; inb = 0 }
               END { if (inb && !mine) n++; print n + 0 }' "$out")
check "the job fails (exit $rc)" "$([ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && echo 1)"
check "$reports of $np ranks report leaks" "$([ "$reports" -eq "$np" ] && echo 1)"
check "$malloced of $np ranks report the 4242-byte block" "$([ "$malloced" -eq "$np" ] && echo 1)"
check "$bitmaps stacks of hwloc_bitmap_alloc (>= $np)" "$([ "$bitmaps" -ge "$np" ] && echo 1)"
check "$foreign leaks outside leak_canary.c" "$([ "$foreign" -eq 0 ] && echo 1)"
if [ "$fail" != 0 ]; then
    echo "--- output (first 200 lines) ---"
    head -n 200 "$out"
    echo "FAILED"
    exit 1
fi
echo "leak canary: both leaks reported on all $np ranks, nothing else"
