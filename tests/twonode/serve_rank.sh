#!/usr/bin/env bash
# serve_rank.sh — one rank of the two-node `dpep serve` test (serve_twonode.sh
# runs it through twonode.sh on every rank, 2 per node).
#
#   serve_rank.sh DPEP SRC_DIR DIR CONFIG [OVERRIDES...]
#
# Ranks other than 0 become `dpep serve CONFIG OVERRIDES` (exec). Rank 0 (on
# node 0, the only HTTP endpoint) starts `dpep serve` in the background, reads
# its port from the "listening on http://127.0.0.1:PORT" line, runs the clients
# inside node 0 (tests/serve/serve_client.py against DIR/offline.jsonl, then
# serve_twonode_client.py: every prompt pinned to every DP group, streamed and
# not), sends SIGTERM to its dpep serve and waits for the whole job to stop.
# Exit: 0 when the clients passed and dpep serve exited 0 with "dpep serve:
# stopped"; 1 otherwise (every failure printed as a FAIL line).
set -uo pipefail
dpep=$1
src=$2
dir=$3
cfg=$4
shift 4

rank=${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-}}
if [ -z "$rank" ]; then
  echo "FAIL serve_rank: no OMPI_COMM_WORLD_RANK (not started by mpirun?)"
  exit 1
fi
if [ "$rank" != 0 ]; then
  exec "$dpep" serve "$cfg" "$@"
fi

log=$dir/serve.rank0.log
: >"$log"
# dpep serve's output goes to the log and, through tee, to mpirun's output.
"$dpep" serve "$cfg" "$@" > >(tee -a "$log") 2>&1 &
serve_pid=$!
# mpirun stopping the job (timeout, teardown) signals this script: pass it on.
trap 'kill -TERM "$serve_pid" 2>/dev/null; exit 143' TERM INT

fails=0
fail() {
  echo "FAIL twonode_serve: $*"
  fails=$((fails + 1))
}

port=
t0=$SECONDS
while [ $((SECONDS - t0)) -lt 90 ]; do
  port=$(sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$log" | head -1)
  [ -n "$port" ] && break
  kill -0 "$serve_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$port" ]; then
  fail "rank 0's dpep serve did not start listening within 90 s (its log: $log)"
  kill -TERM "$serve_pid" 2>/dev/null
  wait "$serve_pid"
  echo "rank 0: dpep serve exited with $?"
  exit 1
fi
echo "rank 0 ($(hostname)): dpep serve listens on 127.0.0.1:$port after $((SECONDS - t0)) s"

t1=$SECONDS
timeout 150 python3 "$src/tests/serve/serve_client.py" "$port" "$dir/work.jsonl" "$dir/offline.jsonl" \
  twonode_serve || fail "serve_client.py exited with $?"
timeout 120 python3 "$src/tests/twonode/serve_twonode_client.py" "$port" "$dir/work.jsonl" \
  "$dir/offline.jsonl" || fail "serve_twonode_client.py exited with $?"
echo "rank 0: clients done in $((SECONDS - t1)) s"

# SIGTERM to rank 0 only: it drains and tells every rank, on both nodes, to stop.
t2=$SECONDS
kill -TERM "$serve_pid"
stopped=
for _ in $(seq 300); do
  kill -0 "$serve_pid" 2>/dev/null || { stopped=1; break; }
  sleep 0.1
done
if [ -z "$stopped" ]; then
  fail "rank 0's dpep serve still runs 30 s after SIGTERM; killing it"
  kill -KILL "$serve_pid" 2>/dev/null
fi
wait "$serve_pid"
rc=$?
echo "rank 0: SIGTERM -> dpep serve exited with $rc in $((SECONDS - t2)) s"
[ "$rc" = 0 ] || fail "rank 0's dpep serve exited with $rc after SIGTERM"
sleep 0.2 # let tee copy the last lines
grep -q "dpep serve: stopped" "$log" || fail "no 'dpep serve: stopped' in rank 0's output"
echo "rank 0: $fails failure(s)"
[ "$fails" = 0 ]
