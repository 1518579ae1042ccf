#!/usr/bin/env bash
# run_comm_perf.sh — all-to-all-v, 1 MiB..64 MiB per rank, on 2, 4 and 8 ranks
# of this node, for each Open MPI transport that works here (shared memory
# vader, TCP, UCX), in one run; prints a transport × ranks × size table of
# busbw and busbw/memcpy, and picks the transport with the highest mean ratio.
#
# usage: bench/run_comm_perf.sh OUTDIR
# Outputs in OUTDIR: a2av_<transport>_n<ranks>.{txt,json} (one dpep_comm_perf
# run each), summary.txt (the table) and best_transport.txt.
# Environment (defaults in brackets): DPEP_COMM_PERF [build/bench/dpep_comm_perf],
# RANKS ["2 4 8"], TRANSPORTS ["vader tcp ucx"], MINBYTES [1M], MAXBYTES [64M],
# WARMUP [2], ITERS [10], VOLUME [256M: fewer iterations at large sizes],
# RUN_TIMEOUT [150 s per run], DTYPE [float]; SUMMARY_ONLY=1 re-prints the
# summary of the runs already in OUTDIR without running anything.
set -u -o pipefail

if [ $# -ne 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
OUT=$1
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
BIN=${DPEP_COMM_PERF:-}
if [ -z "$BIN" ]; then
    for cand in "$root/build/bench/dpep_comm_perf" "$root/build/dpep_comm_perf"; do
        [ -x "$cand" ] && BIN=$cand && break
    done
fi
if [ -z "$BIN" ] || [ ! -x "$BIN" ]; then
    echo "run_comm_perf.sh: dpep_comm_perf not found; build it or set DPEP_COMM_PERF" >&2
    exit 2
fi
command -v python3 >/dev/null || { echo "run_comm_perf.sh: python3 needed for the summary" >&2; exit 2; }

RANKS=${RANKS:-"2 4 8"}
TRANSPORTS=${TRANSPORTS:-"vader tcp ucx"}
MINBYTES=${MINBYTES:-1M}
MAXBYTES=${MAXBYTES:-64M}
WARMUP=${WARMUP:-2}
ITERS=${ITERS:-10}
VOLUME=${VOLUME:-256M}
RUN_TIMEOUT=${RUN_TIMEOUT:-150}
DTYPE=${DTYPE:-float}
CORES=$(nproc)

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Ranks beyond the cores must give the core back while they wait.
export OMPI_MCA_mpi_yield_when_idle=1

# MCA arguments of a transport.
mca_of() {
    case $1 in
    vader) echo "--mca pml ob1 --mca btl self,vader" ;;
    tcp) echo "--mca pml ob1 --mca btl self,tcp" ;;
    ucx) echo "--mca pml ucx --mca pml_ucx_tls any --mca pml_ucx_devices any" ;;
    *) return 1 ;;
    esac
}

# Binding: one core per rank while there are enough cores; none beyond.
bind_of() { if [ "$1" -le "$CORES" ]; then echo "--bind-to core"; else echo "--bind-to none"; fi; }

# Does the transport work here? A 2-rank run at 64 KiB with the check on.
probe() {
    local t=$1 log=$OUT/probe_$1.txt
    if [ "$t" = ucx ] && ! ompi_info 2>/dev/null | grep -q "MCA pml: ucx"; then
        echo "this Open MPI has no pml ucx component" >"$log"
        return 1
    fi
    # shellcheck disable=SC2046
    timeout 60 mpirun -n 2 --oversubscribe $(mca_of "$t") "$BIN" -b 64K -e 64K -w 1 -n 2 -c 1 \
        >"$log" 2>&1
}

start=$(date +%s)
[ "${SUMMARY_ONLY:-0}" = 1 ] || {
    echo "# run_comm_perf.sh $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname): $CORES cores online," \
        "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    echo "# $(mpirun --version 2>/dev/null | head -1)"
    echo "# alltoallv $DTYPE $MINBYTES..$MAXBYTES per rank, ranks: $RANKS, warmup $WARMUP, iters $ITERS" \
        "(capped at $VOLUME per size), check on"
    for n in $RANKS; do
        if [ "$n" -gt "$CORES" ]; then
            echo "# NOTE: $n ranks on $CORES cores is OVERSUBSCRIBED (--oversubscribe --bind-to none," \
                "mpi_yield_when_idle=1): ranks take turns on the cores; these are not bandwidth limits"
        fi
    done
} | tee "$OUT/header.txt"

usable=""
fail=0
if [ "${SUMMARY_ONLY:-0}" = 1 ]; then
    for t in $TRANSPORTS; do ls "$OUT"/a2av_"${t}"_n*.json >/dev/null 2>&1 && usable="$usable $t"; done
    TRANSPORTS=""
fi
for t in $TRANSPORTS; do
    if ! mca_of "$t" >/dev/null; then
        echo "# transport $t: unknown (vader|tcp|ucx)" | tee -a "$OUT/header.txt"
        continue
    fi
    if probe "$t"; then
        usable="$usable $t"
        echo "# transport $t: usable ($(mca_of "$t"))" | tee -a "$OUT/header.txt"
    else
        echo "# transport $t: UNUSABLE here, skipped; probe output in probe_$t.txt: $(grep -v '^#' "$OUT/probe_$t.txt" | grep -m1 -i -E 'error|fail|no |not ' || tail -1 "$OUT/probe_$t.txt")" \
            | tee -a "$OUT/header.txt"
    fi
done

for t in $usable; do
    [ "${SUMMARY_ONLY:-0}" = 1 ] && break
    for n in $RANKS; do
        base=$OUT/a2av_${t}_n${n}
        # shellcheck disable=SC2046
        cmd="mpirun -n $n --oversubscribe $(bind_of "$n") $(mca_of "$t") $BIN -o alltoallv -d $DTYPE -b $MINBYTES -e $MAXBYTES -f 2 -w $WARMUP -n $ITERS -V $VOLUME -c 1 -j $base.json"
        echo "# $cmd" >"$base.txt"
        t0=$(date +%s)
        timeout "$RUN_TIMEOUT" $cmd >>"$base.txt" 2>&1
        rc=$?
        echo "# $t n=$n: exit $rc after $(($(date +%s) - t0)) s -> $base.txt"
        if [ $rc -ne 0 ]; then
            fail=1
            [ $rc -eq 124 ] && echo "#   TIMED OUT after ${RUN_TIMEOUT} s"
            rm -f "$base.json"
        fi
    done
done

echo "# ================================ summary ================================"
python3 - "$OUT" "$usable" "$MAXBYTES" <<'EOF' | tee "$OUT/summary.txt"
import json, os, sys
out, usable, maxbytes = sys.argv[1], sys.argv[2].split(), sys.argv[3]
print(open(os.path.join(out, "header.txt")).read().rstrip())
runs = {}
for t in usable:
    for f in sorted(os.listdir(out)):
        if f.startswith(f"a2av_{t}_n") and f.endswith(".json"):
            j = json.load(open(os.path.join(out, f)))
            runs[(t, j["ranks"])] = j
if not runs:
    print("no results"); sys.exit(1)
print()
print(f"# memcpy baseline (per run): per-rank memcpy GB/s of a {maxbytes} buffer (the largest message),")
print("# all ranks of the node copying at once, best of 5 trials; ratio = busbw / memcpy")
print(f"{'transport':>9} {'ranks':>5} {'size(B)':>10} {'time(us)':>10} {'busbw':>8} {'memcpy':>8} {'ratio':>6} {'wrong':>5}")
for (t, n), j in sorted(runs.items(), key=lambda kv: (usable.index(kv[0][0]), kv[0][1])):
    for s in j["sizes"]:
        print(f"{t:>9} {n:>5} {s['bytes']:>10} {s['time_us']:>10.1f} {s['busbw']:>8.3f} "
              f"{s['memcpy_GBps']:>8.3f} {s['ratio']:>6.3f} {s['wrong']:>5}")
print()
ranks = sorted({n for (_, n) in runs})
print("# mean ratio (busbw/memcpy) over sizes, per transport and ranks; mean: over all ranks and sizes;")
print("# busbw: mean busbw in GB/s over all ranks and sizes (for reference; the pick uses the ratio)")
print(f"{'transport':>9} " + " ".join(f"{'n=' + str(n):>7}" for n in ranks) + f" {'mean':>7} {'busbw':>7}")
best, best_mean = None, -1.0
for t in usable:
    cells, allr, allb = [], [], []
    for n in ranks:
        j = runs.get((t, n))
        if j is None:
            cells.append(f"{'-':>7}"); continue
        r = [s["ratio"] for s in j["sizes"]]
        allr += r
        allb += [s["busbw"] for s in j["sizes"]]
        cells.append(f"{sum(r) / len(r):>7.3f}")
    if not allr:
        continue
    m = sum(allr) / len(allr)
    complete = all((t, n) in runs for n in ranks)
    print(f"{t:>9} " + " ".join(cells) + f" {m:>7.3f} {sum(allb) / len(allb):>7.3f}"
          + ("" if complete else "  (incomplete)"))
    if complete and m > best_mean:
        best, best_mean = t, m
wrong = sum(j["wrong"] for j in runs.values())
print(f"# wrong elements over all runs: {wrong}")
mca = {"vader": {"pml": "ob1", "btl": "self,vader"}, "tcp": {"pml": "ob1", "btl": "self,tcp"},
       "ucx": {"pml": "ucx", "pml_ucx_tls": "any", "pml_ucx_devices": "any"}}
if best:
    print(f"# best transport (highest mean ratio over all ranks and sizes): {best} "
          f"(mean ratio {best_mean:.3f})")
    print("# one-node default for dpep launch: " +
          " ".join(f"--mca {k} {v}" for k, v in mca[best].items()))
    with open(os.path.join(out, "best_transport.txt"), "w") as f:
        f.write(best + "\n")
        f.write(" ".join(f"--mca {k} {v}" for k, v in mca[best].items()) + "\n")
sys.exit(0 if best and wrong == 0 else 1)
EOF
sumrc=$?
echo "# total $(($(date +%s) - start)) s; outputs in $OUT"
[ $fail -eq 0 ] && [ $sumrc -eq 0 ]
