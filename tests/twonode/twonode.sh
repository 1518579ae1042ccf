#!/usr/bin/env bash
# twonode.sh — run an MPI program on a two-node cluster built on this machine.
#
#   tests/twonode/twonode.sh [--np-per-node N] [--min-bytes B] [--timeout S] -- PROGRAM [ARGS...]
#
# Two network namespaces ("nodes") joined by a veth pair (10.231.0.1/24 and
# 10.231.0.2/24, private to those namespaces). Each node gets its own hostname
# (a UTS namespace) and an /etc/hosts that names both (/etc/netns/NS/hosts,
# which `ip netns exec` mounts over /etc/hosts). mpirun runs in node 0 and
# starts node 1's orted through a plm_rsh_agent script that runs the command
# with `ip netns exec`. MPI uses the ob1 PML with the self and tcp BTLs only,
# restricted to the veth subnet: no shared memory, so everything between the
# nodes crosses the veth. Afterwards the veth byte counters are printed and
# the run FAILS when fewer than B bytes crossed (default 1 MiB) or when
# mpirun's map does not show ranks on two distinct nodes.
#
# Exit: the program's exit code (0 ok); 77 when the machine cannot do this
# (not root, no `ip netns`, no mpirun, ...), with "SKIP: reason"; 1 when the
# harness itself fails (setup, traffic, node check, timeout); 2 usage.
# Everything is torn down on exit, also on failure or signal: processes left
# in the namespaces are killed by pid, namespaces, veth and temp files removed.
# shellcheck disable=SC2317  # functions run from traps
set -u

np_per_node=2
min_bytes=1048576
timeout_s=150
subnet=10.231.0
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
  echo "usage: $0 [--np-per-node N] [--min-bytes B] [--timeout S] -- PROGRAM [ARGS...]" >&2
  exit 2
}
skip() {
  echo "SKIP: $*"
  exit 77
}
log() { echo "twonode: $*"; }

while [ $# -gt 0 ]; do
  case $1 in
    --np-per-node) [ $# -ge 2 ] || usage; np_per_node=$2; shift 2 ;;
    --min-bytes) [ $# -ge 2 ] || usage; min_bytes=$2; shift 2 ;;
    --timeout) [ $# -ge 2 ] || usage; timeout_s=$2; shift 2 ;;
    --) shift; break ;;
    -h|--help) usage ;;
    *) break ;;
  esac
done
case $np_per_node in ''|*[!0-9]*|0) usage ;; esac
case $min_bytes in ''|*[!0-9]*) usage ;; esac
case $timeout_s in ''|*[!0-9]*|0) usage ;; esac
if [ $# -eq 0 ]; then
  # Default program: the self-test, when built in the usual build directory.
  default=$here/../../build/tests/twonode/mpi_twonode_check
  [ -x "$default" ] || { echo "twonode: no PROGRAM given and $default is not built" >&2; usage; }
  set -- "$default" --expect-nodes 2
fi
prog=$1
shift
if [ -e "$prog" ]; then
  prog=$(readlink -f "$prog")
elif command -v "$prog" >/dev/null 2>&1; then
  prog=$(command -v "$prog")
else
  echo "twonode: program not found: $prog" >&2
  exit 2
fi

# ---- prerequisites: anything missing is a plain SKIP ----
[ "$(id -u)" = 0 ] || skip "needs root to create network namespaces and a veth pair (running as uid $(id -u))"
if ! command -v ip >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    log "iproute2 is missing; installing it (apt-get install -y iproute2)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 90 sh -c 'apt-get install -y -q iproute2 || { apt-get update -q && apt-get install -y -q iproute2; }' \
      >/dev/null 2>&1
  fi
  command -v ip >/dev/null 2>&1 || skip "the 'ip' command (iproute2) is not installed and could not be installed"
fi
for tool in mpirun unshare timeout tail; do
  command -v $tool >/dev/null 2>&1 || skip "'$tool' is not installed"
done
unshare --uts true 2>/dev/null || skip "'unshare --uts' does not work here (no CAP_SYS_ADMIN / UTS namespaces)"

id=$$
ns_prefix=dpep2n
# Namespaces of earlier runs that were killed without cleanup (their pid is gone).
for old in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${ns_prefix}-[0-9]+-[01p]\$"); do
  opid=${old#"${ns_prefix}"-}
  opid=${opid%-*}
  if ! kill -0 "$opid" 2>/dev/null; then
    log "removing stale namespace $old (its run, pid $opid, is gone)"
    for p in $(ip netns pids "$old" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    ip netns del "$old" 2>/dev/null
    rm -rf "/etc/netns/$old"
  fi
done
for old in /etc/netns/"$ns_prefix"-* /tmp/"$ns_prefix".*; do
  [ -e "$old" ] || continue
  opid=${old##*/}
  opid=${opid#"${ns_prefix}"[-.]}
  opid=${opid%%[-.]*}
  case $opid in '' | *[!0-9]*) continue ;; esac
  kill -0 "$opid" 2>/dev/null || rm -rf "$old"
done

probe=${ns_prefix}-$id-p
if ! err=$(ip netns add "$probe" 2>&1); then
  skip "'ip netns add' does not work here: $err"
fi
if ! err=$(ip netns exec "$probe" true 2>&1); then
  ip netns del "$probe" 2>/dev/null
  skip "'ip netns exec' does not work here: $err"
fi
if ! err=$(ip -n "$probe" link add p0 type veth peer name p1 2>&1); then
  ip netns del "$probe" 2>/dev/null
  skip "cannot create a veth pair (kernel without veth?): $err"
fi
ip netns del "$probe"

# ---- names ----
ns0=${ns_prefix}-$id-0
ns1=${ns_prefix}-$id-1
host0=$ns0 # hostnames of the two nodes (distinct, so Open MPI maps by node)
host1=$ns1
veth0=d2n${id}a # at most 15 characters
veth1=d2n${id}b
ip0=$subnet.1
ip1=$subnet.2
tmp=
mpirun_pid=
tail_pid=

# ---- teardown (EXIT, INT, TERM) ----
kill_pids() { # kill_pids WHAT TENTHS PID...: TERM, wait up to TENTHS/10 s, then KILL
  local what=$1 tenths=$2
  shift 2
  [ $# -gt 0 ] || return 0
  log "teardown: stopping $what (pids $*)"
  kill -TERM "$@" 2>/dev/null
  local left
  for _ in $(seq "$tenths"); do
    left=
    for p in "$@"; do kill -0 "$p" 2>/dev/null && left="$left $p"; done
    [ -z "$left" ] && return 0
    sleep 0.1
  done
  log "teardown: killing$left"
  # shellcheck disable=SC2086
  kill -KILL $left 2>/dev/null
  sleep 0.2
}
ns_pids() { # processes in namespace $1: `ip netns pids`, plus a /proc scan
  local ino p
  ip netns pids "$1" 2>/dev/null
  ino=$(stat -L -c %i "/run/netns/$1" 2>/dev/null) || return 0
  for p in /proc/[0-9]*; do
    [ "$(readlink "$p/ns/net" 2>/dev/null)" = "net:[$ino]" ] && echo "${p#/proc/}"
  done
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  if [ -n "$mpirun_pid" ] && kill -0 "$mpirun_pid" 2>/dev/null; then
    kill_pids "mpirun" 100 "$mpirun_pid" # mpirun gets 10 s to stop its job
  fi
  local ns
  for ns in "$ns0" "$ns1"; do
    if ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$ns"; then
      local pids
      for _ in 1 2 3; do
        pids=$(ns_pids "$ns" | sort -un | tr '\n' ' ')
        [ -z "$pids" ] && break
        # shellcheck disable=SC2086
        kill_pids "processes left in $ns" 30 $pids
      done
      ip netns del "$ns" || log "teardown: could not delete namespace $ns"
    fi
    rm -rf "/etc/netns/$ns"
  done
  # /etc/netns itself goes when a twonode run made it (marker) and it is empty.
  if [ -e /etc/netns/.dpep2n-made-this ] &&
    [ -z "$(find /etc/netns -mindepth 1 -maxdepth 1 ! -name .dpep2n-made-this 2>/dev/null)" ]; then
    rm -f /etc/netns/.dpep2n-made-this
    rmdir /etc/netns 2>/dev/null
  fi
  # The veth dies with its namespace; this catches a failure before it moved.
  ip link show "$veth0" >/dev/null 2>&1 && ip link del "$veth0"
  [ -n "$tail_pid" ] && kill "$tail_pid" 2>/dev/null
  [ -n "$tmp" ] && rm -rf "$tmp"
  if ip netns list 2>/dev/null | grep -q "^${ns_prefix}-$id-"; then
    log "teardown: namespaces still present: $(ip netns list | grep "^${ns_prefix}-$id-" | tr '\n' ' ')"
    [ "$rc" = 0 ] && rc=1
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

fail() {
  echo "FAIL: $*"
  exit 1
}
run() { # run a setup command; fail loudly
  "$@" || fail "setup step failed: $*"
}

# ---- setup ----
tmp=$(mktemp -d /tmp/dpep2n.$id.XXXXXX) || fail "mktemp"
mkdir -p "$tmp/node0" "$tmp/node1"
run ip netns add "$ns0"
run ip netns add "$ns1"
run ip link add "$veth0" type veth peer name "$veth1"
run ip link set "$veth0" netns "$ns0"
run ip link set "$veth1" netns "$ns1"
run ip -n "$ns0" addr add "$ip0/24" dev "$veth0"
run ip -n "$ns1" addr add "$ip1/24" dev "$veth1"
for ns in "$ns0" "$ns1"; do
  run ip -n "$ns" link set lo up
done
run ip -n "$ns0" link set "$veth0" up
run ip -n "$ns1" link set "$veth1" up
[ -d /etc/netns ] || { mkdir -p /etc/netns && touch /etc/netns/.dpep2n-made-this; }
for ns in "$ns0" "$ns1"; do
  run mkdir -p "/etc/netns/$ns"
  printf '127.0.0.1\tlocalhost\n%s\t%s\n%s\t%s\n' "$ip0" "$host0" "$ip1" "$host1" >"/etc/netns/$ns/hosts" ||
    fail "cannot write /etc/netns/$ns/hosts"
done
# Wait (up to 5 s) until the link is up on both sides.
for _ in $(seq 50); do
  s0=$(ip netns exec "$ns0" cat "/sys/class/net/$veth0/operstate" 2>/dev/null)
  s1=$(ip netns exec "$ns1" cat "/sys/class/net/$veth1/operstate" 2>/dev/null)
  [ "$s0" = up ] && [ "$s1" = up ] && break
  sleep 0.1
done
if [ "$s0" != up ] || [ "$s1" != up ]; then fail "veth did not come up ($veth0: $s0, $veth1: $s1)"; fi

printf '%s slots=%s\n%s slots=%s\n' "$host0" "$np_per_node" "$host1" "$np_per_node" >"$tmp/hostfile"

# plm_rsh_agent: called by mpirun as AGENT HOST COMMAND... (like ssh); runs
# COMMAND through a shell in HOST's namespace, under HOST's hostname.
cat >"$tmp/agent" <<EOF
#!/bin/sh
while [ \$# -gt 0 ]; do case \$1 in -*) shift ;; *) break ;; esac; done
target=\$1
shift
case \$target in
  $host0|$ip0) ns=$ns0 node=$host0 dir=$tmp/node0 ;;
  $host1|$ip1) ns=$ns1 node=$host1 dir=$tmp/node1 ;;
  *) echo "twonode agent: unknown host '\$target'" >&2; exit 255 ;;
esac
echo "agent: \$node (namespace \$ns): \$*" >>$tmp/agent.log
TMPDIR=\$dir
export TMPDIR
exec ip netns exec "\$ns" unshare --uts /bin/sh -c 'hostname "\$1" && shift && exec /bin/sh -c "\$*"' twonode-agent "\$node" "\$@"
EOF
chmod +x "$tmp/agent"

# ---- counters ----
counter() { # counter NS DEV rx|tx
  ip netns exec "$1" cat "/sys/class/net/$2/statistics/$3_bytes" 2>/dev/null || echo 0
}
rx0_a=$(counter "$ns0" "$veth0" rx); tx0_a=$(counter "$ns0" "$veth0" tx)
rx1_a=$(counter "$ns1" "$veth1" rx); tx1_a=$(counter "$ns1" "$veth1" tx)
lo0_a=$(counter "$ns0" lo tx); lo1_a=$(counter "$ns1" lo tx)

# ---- run ----
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
# A batch system's environment would override the hostfile.
for v in $(compgen -v | grep -E '^(SLURM_|PBS_|LSB_|PE_HOSTFILE|OMPI_MCA_(plm|ras|btl|pml|oob|orte_default_hostfile))'); do
  unset "$v"
done
np=$((2 * np_per_node))
# shellcheck disable=SC2054  # commas inside MCA values
mpirun_cmd=(mpirun -np "$np" --map-by "ppr:$np_per_node:node" --bind-to none --oversubscribe
  --hostfile "$tmp/hostfile" --display-map
  --mca plm rsh --mca plm_rsh_agent "$tmp/agent" --mca plm_rsh_no_tree_spawn 1
  --mca pml ob1 --mca btl self,tcp
  --mca btl_tcp_if_include "$subnet.0/24" --mca oob_tcp_if_include "$subnet.0/24"
  --mca mpi_yield_when_idle 1
  "$prog" "$@")
log "nodes: $host0 ($ns0, $veth0 $ip0) <-> $host1 ($ns1, $veth1 $ip1)"
log "running in $ns0: ${mpirun_cmd[*]}"
: >"$tmp/mpirun.log"
start=$(date +%s.%N)
TMPDIR=$tmp/node0 timeout -k 10 "$timeout_s" \
  ip netns exec "$ns0" unshare --uts /bin/sh -c 'hostname "$1" && shift && exec "$@"' twonode-mpirun "$host0" \
  "${mpirun_cmd[@]}" </dev/null >"$tmp/mpirun.log" 2>&1 &
mpirun_pid=$!
tail -n +1 -f --pid="$mpirun_pid" "$tmp/mpirun.log" &
tail_pid=$!
wait "$mpirun_pid"
rc=$?
mpirun_pid=
wait "$tail_pid" 2>/dev/null
tail_pid=
elapsed=$(echo "$start $(date +%s.%N)" | awk '{printf "%.1f", $2 - $1}')
log "mpirun exited with $rc after ${elapsed}s"

rx0_b=$(counter "$ns0" "$veth0" rx); tx0_b=$(counter "$ns0" "$veth0" tx)
rx1_b=$(counter "$ns1" "$veth1" rx); tx1_b=$(counter "$ns1" "$veth1" tx)
lo0_b=$(counter "$ns0" lo tx); lo1_b=$(counter "$ns1" lo tx)
d_rx0=$((rx0_b - rx0_a)); d_tx0=$((tx0_b - tx0_a))
d_rx1=$((rx1_b - rx1_a)); d_tx1=$((tx1_b - tx1_a))
crossed=$((d_tx0 + d_tx1))
echo "veth byte counters (before -> after):"
printf '  %-14s %-16s rx %12s -> %12s (+%s)  tx %12s -> %12s (+%s)\n' \
  "$veth0" "[$host0]" "$rx0_a" "$rx0_b" "$d_rx0" "$tx0_a" "$tx0_b" "$d_tx0" \
  "$veth1" "[$host1]" "$rx1_a" "$rx1_b" "$d_rx1" "$tx1_a" "$tx1_b" "$d_tx1"
echo "  loopback within nodes (tx): $host0 +$((lo0_b - lo0_a)), $host1 +$((lo1_b - lo1_a))"
echo "  crossed the veth: $crossed bytes ($host0->$host1 $d_tx0, $host1->$host0 $d_tx1); required >= $min_bytes"

# ---- checks ----
status=0
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "FAIL: mpirun timed out after ${timeout_s}s"
  status=1
elif [ "$rc" != 0 ]; then
  echo "FAIL: the program (mpirun) exited with $rc"
  status=$rc
  [ "$status" = 77 ] && status=1 # not a skip: the program really ran
fi
if [ "$crossed" -lt "$min_bytes" ]; then
  echo "FAIL: only $crossed bytes crossed the veth (< $min_bytes): the traffic did not go between the nodes"
  [ "$status" = 0 ] && status=1
fi
if [ "$d_tx0" -eq 0 ] || [ "$d_tx1" -eq 0 ]; then
  echo "FAIL: traffic crossed the veth in one direction only"
  [ "$status" = 0 ] && status=1
fi
# mpirun --display-map: " Data for node: NAME  Num slots: S  Max slots: M  Num procs: P"
nodes=$(sed -n 's/.*Data for node: *\([^ \t]*\).*Num procs: *\([0-9]*\).*/\1 \2/p' "$tmp/mpirun.log" |
  awk '$2 > 0 {print $1}' | sort -u)
nnodes=$(printf '%s\n' "$nodes" | grep -c .)
nodes=$(printf '%s' "$nodes" | tr '\n' ' ')
if [ "$nnodes" != 2 ]; then
  echo "FAIL: mpirun's map shows ranks on $nnodes node(s) ($nodes), expected 2 ($host0 $host1)"
  [ "$status" = 0 ] && status=1
elif ! grep -q "agent: $host1 " "$tmp/agent.log" 2>/dev/null; then
  echo "FAIL: mpirun never started a daemon on $host1 through the agent"
  [ "$status" = 0 ] && status=1
else
  echo "nodes in mpirun's map: $nodes; daemon on $host1 started through the ip-netns agent"
fi
if [ "$status" = 0 ]; then
  echo "twonode: PASS ($np ranks on 2 nodes, $crossed bytes across the veth, ${elapsed}s)"
else
  echo "twonode: FAILED (exit $status)"
fi
exit "$status"
