#!/usr/bin/env bash
# slurm_cluster.sh — `dpep launch` on a real (local) two-node Slurm cluster.
#
#   tests/slurm/slurm_cluster.sh LAUNCH_CLI DPEP SOURCE_DIR
#
# LAUNCH_CLI runs `launch` (dpep);
# DPEP is the binary the ranks run. Starts a private munged, slurmctld and two
# slurmd ("nodes" n1 and n2 on this machine, each on its own port with its
# own spool directory), then:
#   1. `dpep launch --sbatch` writes a script for tests/slurm/twonode.yaml
#      (2 nodes x 2 ranks, `dpep placement`); it is submitted with sbatch and
#      waited for with a timeout; its rank/group table must equal that of a
#      direct `mpirun -np 4 dpep placement` of the same config;
#   2. `dpep launch` inside `salloc -N 2` picks srun by itself and prints the
#      same table;
#   3. a 1-node allocation is refused naming the config line;
#   4. `dpep launch --sbatch ... serve` for the same config with a tiny model
#      that has a tokenizer: the job prints its first node's URL, the server
#      answers /health and /generate there, scancel stops it.
# Every daemon is stopped by pid on exit (also on failure or signal) and the
# state directory removed. Exit 0 all passed, 1 a check failed, 77 with
# "SKIP: reason" when this machine cannot run Slurm (not root, packages
# missing and not installable, no PMIx plugin).
set -u
cli=${1:?usage: $0 LAUNCH_CLI DPEP SOURCE_DIR}
dpep=${2:?usage: $0 LAUNCH_CLI DPEP SOURCE_DIR}
src=${3:?usage: $0 LAUNCH_CLI DPEP SOURCE_DIR}
cfg=$(readlink -f "$src/tests/slurm/twonode.yaml")
pass=0
fail=0
skip() {
  echo "SKIP: $*"
  exit 77
}
ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
log() { echo "slurm: $*"; }

# ---- prerequisites ----
[ "$(id -u)" = 0 ] || skip "needs root to run slurmctld, slurmd and munged (running as uid $(id -u))"
command -v mpirun >/dev/null 2>&1 || skip "mpirun is not installed"
need_pkgs=
for t in slurmctld slurmd sbatch srun salloc scontrol sinfo; do
  command -v $t >/dev/null 2>&1 || need_pkgs="slurm-wlm"
done
command -v munged >/dev/null 2>&1 || need_pkgs="$need_pkgs munge"
if [ -n "$need_pkgs" ]; then
  command -v apt-get >/dev/null 2>&1 || skip "Slurm/munge are not installed and there is no apt-get"
  log "installing $need_pkgs (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  timeout 300 sh -c "apt-get install -y -q $need_pkgs || { apt-get update -q && apt-get install -y -q $need_pkgs; }" \
    >/dev/null 2>&1
  for t in slurmctld slurmd sbatch srun salloc munged; do
    command -v $t >/dev/null 2>&1 || skip "'$t' is missing and '$need_pkgs' could not be installed"
  done
fi
plugdir=$(dirname "$(find /usr/lib /usr/lib64 /usr/local/lib -name 'mpi_pmix*.so' -path '*slurm*' 2>/dev/null | head -1)" 2>/dev/null)
[ -n "$plugdir" ] && [ "$plugdir" != . ] || skip "Slurm has no PMIx plugin (mpi_pmix.so), which dpep's srun line needs"

# ---- state and teardown ----
d=$(mktemp -d /tmp/dpep-slurm.XXXXXX) || { echo "FAIL mktemp"; exit 1; }
pids=()
names=()
stop_all() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  # Daemons in reverse start order: slurmd, slurmctld, munged; TERM, 5 s, KILL.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    local p=${pids[$i]}
    kill -0 "$p" 2>/dev/null || continue
    log "stopping ${names[$i]} (pid $p)"
    kill -TERM "$p" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && { log "killing ${names[$i]} (pid $p)"; kill -KILL "$p" 2>/dev/null; }
    wait "$p" 2>/dev/null
  done
  rm -rf "$d"
  exit "$rc"
}
trap stop_all EXIT
trap 'log interrupted; exit 130' INT
trap 'log terminated; exit 143' TERM
start() { # start NAME CMD...: background daemon, remembered by pid
  local name=$1
  shift
  "$@" >"$d/$name.out" 2>&1 &
  pids+=($!)
  names+=("$name")
}
dump_logs() {
  for f in "$d"/*.log "$d"/*.out; do
    [ -f "$f" ] || continue
    echo "---- $f (last 15 lines)"
    tail -n 15 "$f"
  done
}

# ---- munge (private socket and key) ----
dd if=/dev/urandom of="$d/munge.key" bs=1024 count=1 2>/dev/null
chmod 600 "$d/munge.key"
mkdir -p "$d/munge"
chmod 700 "$d/munge"
start munged munged --foreground --force --socket="$d/munge/sock" --key-file="$d/munge.key" \
  --pid-file="$d/munge/pid" --log-file="$d/munged.log" --seed-file="$d/munge/seed"
for _ in $(seq 50); do [ -S "$d/munge/sock" ] && break; sleep 0.1; done
[ -S "$d/munge/sock" ] || { dump_logs; skip "munged did not start (see its log above)"; }

# ---- slurm.conf: two nodes on this host, one port each ----
host=$(hostname -s)
base=$((20000 + ($$ % 2000) * 4))
mkdir -p "$d/ctld" "$d/spool-n1" "$d/spool-n2" "$d/tmp-n1" "$d/tmp-n2"
cat >"$d/slurm.conf" <<CONF
ClusterName=dpeptest
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$base
SlurmdPort=$((base + 1))
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$d/munge/sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$d/ctld
SlurmdSpoolDir=$d/spool-%n
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd-%n.pid
SlurmctldLogFile=$d/slurmctld.log
SlurmdLogFile=$d/slurmd-%n.log
TmpFS=$d/tmp-%n
PlugStackConfig=$d/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=pmix
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
ReturnToService=2
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((base + 2)) CPUs=2 RealMemory=1000 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=$((base + 3)) CPUs=2 RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes=n1,n2 Default=YES MaxTime=10 State=UP OverSubscribe=YES
CONF
: >"$d/plugstack.conf"
export SLURM_CONF=$d/slurm.conf
# A batch system's variables from outside would confuse the clients.
for v in $(compgen -v | grep -E '^SLURM_' | grep -v '^SLURM_CONF$'); do unset "$v"; done

start slurmctld slurmctld -D -i -f "$d/slurm.conf"
start slurmd-n1 slurmd -D -N n1 -f "$d/slurm.conf"
start slurmd-n2 slurmd -D -N n2 -f "$d/slurm.conf"
up=
for _ in $(seq 150); do
  states=$(sinfo -h -N -o '%N %t' 2>/dev/null | sort -u | tr '\n' ' ')
  case $states in *"n1 idle"*"n2 idle"*) up=1; break ;; esac
  sleep 0.2
done
if [ -z "$up" ]; then
  dump_logs
  echo "FAIL the two-node cluster did not come up (sinfo: ${states:-nothing})"
  echo "0 passed, 1 failed"
  exit 1
fi
log "cluster up: $states(ports $base..$((base + 3)), state in $d)"

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1

# The meaningful part of `dpep placement`: the rank/group table.
# The header line and the all-number rows after it (launcher chatter dropped).
table() { awk '/^ *rank +instance/ {on = 1; print; next} on && /^ *[0-9]+( +[0-9]+)+ *$/' "$1"; }

# ---- reference: a direct mpirun of the same program on one host ----
timeout -k 5 60 mpirun -np 4 --oversubscribe --bind-to none --mca pml ob1 --mca btl self,vader \
  "$dpep" placement "$cfg" --nnodes 1 >"$d/direct.txt" 2>&1
rc=$?
if [ $rc = 0 ] && [ -n "$(table "$d/direct.txt")" ]; then ok "direct mpirun -np 4 dpep placement"
else bad "direct mpirun (exit $rc)"; cat "$d/direct.txt"; fi

# ---- 1. dpep launch --sbatch, sbatch, wait ----
if "$cli" launch "$cfg" --program placement --dpep "$dpep" --sbatch "$d/job.sbatch" --time 00:02:00 \
  >"$d/gen.txt" 2>&1; then
  ok "dpep launch --sbatch wrote the script"
  sed 's/^/     | /' "$d/job.sbatch"
else
  bad "dpep launch --sbatch"; cat "$d/gen.txt"
fi
for want in "#SBATCH --nodes=2" "#SBATCH --ntasks-per-node=2" "#SBATCH --time=00:02:00" \
  "export OMPI_MCA_btl=self,tcp" "srun --mpi=pmix --nodes=2 --ntasks=4 --ntasks-per-node=2"; do
  if grep -qF -- "$want" "$d/job.sbatch" 2>/dev/null; then ok "script has: $want"; else bad "script lacks: $want"; fi
done
jobid=$(cd "$d" && sbatch --parsable --output="$d/job-%j.out" "$d/job.sbatch" 2>"$d/sbatch.err")
if [ -n "$jobid" ]; then
  ok "sbatch accepted the script (job $jobid)"
  state=
  for _ in $(seq 450); do
    state=$(scontrol show job "$jobid" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
    case $state in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL) break ;; esac
    sleep 0.2
  done
  if [ "$state" = COMPLETED ]; then ok "job $jobid completed"
  else bad "job $jobid ended as '${state:-unknown}' (waited 90 s)"; scancel "$jobid" 2>/dev/null; fi
  echo "     job output:"
  sed 's/^/     | /' "$d/job-$jobid.out" 2>/dev/null
  if [ -n "$(table "$d/direct.txt")" ] && [ "$(table "$d/job-$jobid.out" 2>/dev/null)" = "$(table "$d/direct.txt")" ]; then
    ok "the sbatch job's rank/group table equals the direct mpirun's"
  else
    bad "the sbatch job's table differs from the direct mpirun's"
    diff <(table "$d/direct.txt") <(table "$d/job-$jobid.out" 2>/dev/null) | head -20
  fi
  if grep -q "4 ranks on 2 nodes" "$d/job-$jobid.out" 2>/dev/null; then ok "the job ran on 2 nodes"
  else bad "the job did not report 4 ranks on 2 nodes"; fi
else
  bad "sbatch refused the script: $(cat "$d/sbatch.err")"
fi

# ---- 2. dpep launch inside salloc ----
timeout -k 5 90 salloc -N 2 --ntasks-per-node=2 --time=2 \
  "$cli" launch "$cfg" --program placement --dpep "$dpep" >"$d/salloc.txt" 2>&1
rc=$?
sed 's/^/     | /' "$d/salloc.txt"
if [ $rc = 0 ]; then ok "dpep launch inside salloc"; else bad "dpep launch inside salloc (exit $rc)"; fi
if grep -q "^# launcher: srun (launch.launcher auto, inside Slurm job" "$d/salloc.txt"; then
  ok "inside salloc the launcher is srun"
else
  bad "inside salloc the launcher was not srun"
fi
if [ -n "$(table "$d/direct.txt")" ] && [ "$(table "$d/salloc.txt")" = "$(table "$d/direct.txt")" ]; then
  ok "the salloc run's rank/group table equals the direct mpirun's"
else
  bad "the salloc run's table differs from the direct mpirun's"
fi

# ---- 3. the allocation is checked: 1 node for a 2-node config ----
timeout -k 5 60 salloc -N 1 --ntasks-per-node=2 --time=2 \
  "$cli" launch "$cfg" --program placement --dpep "$dpep" >"$d/small.txt" 2>&1
rc=$?
if [ $rc = 2 ] && grep -q "twonode.yaml:[0-9]*:[0-9]*: launch.nodes: the job needs 2 nodes but Slurm allocation" "$d/small.txt"; then
  ok "a 1-node allocation is refused naming the config line"
else
  bad "1-node allocation: exit $rc"; cat "$d/small.txt"
fi

# ---- 4. a server: dpep launch --sbatch ... serve, sbatch, a request, scancel ----
# The tiny model with the real DeepSeek-V3 tokenizer (dpep serve needs one).
if command -v xz >/dev/null 2>&1 && command -v curl >/dev/null 2>&1; then
  mkdir -p "$d/tok"
  xz -dc "$src/tests/reference/tokenizers/deepseek-v3/tokenizer.json.xz" >"$d/tok/tokenizer.json"
  cp "$src/tests/reference/tokenizers/deepseek-v3/tokenizer_config.json" "$d/tok/"
  "$dpep" model gen --tokenizer "$d/tok" --set hidden_size=64 --set num_hidden_layers=2 "$d/model" \
    >"$d/gen-model.txt" 2>&1 || bad "dpep model gen --tokenizer: $(cat "$d/gen-model.txt")"
  sport=$((base + 4))
  if "$cli" launch "$cfg" --dpep "$dpep" --model-path "$d/model" --sbatch "$d/serve.sbatch" --time 00:03:00 \
    serve --host 0.0.0.0 --port "$sport" >"$d/gen-serve.txt" 2>&1; then
    ok "dpep launch --sbatch ... serve wrote the script"
  else
    bad "dpep launch --sbatch ... serve"; cat "$d/gen-serve.txt"
  fi
  sjob=$(cd "$d" && sbatch --parsable --output="$d/serve-%j.out" "$d/serve.sbatch" 2>"$d/sbatch-serve.err")
  if [ -n "$sjob" ]; then
    ok "sbatch accepted the serve script (job $sjob)"
    # The script's echo line names the allocation's first node (n1; its
    # address here is 127.0.0.1), then the server comes up on it.
    up=
    for _ in $(seq 300); do
      grep -q "listening on http://0.0.0.0:$sport" "$d/serve-$sjob.out" 2>/dev/null && { up=1; break; }
      sleep 0.2
    done
    if grep -q "^dpep serve: http://n1:$sport (job $sjob, rank 0 on n1)$" "$d/serve-$sjob.out" 2>/dev/null; then
      ok "the job's output names the first node's URL"
    else
      bad "the job's output lacks 'dpep serve: http://n1:$sport'"
    fi
    if [ -n "$up" ]; then
      ok "the server is listening (job $sjob)"
      code=$(curl -s -m 10 -o /dev/null -w '%{http_code}' "http://127.0.0.1:$sport/health")
      [ "$code" = 200 ] && ok "GET /health on n1: 200" || bad "GET /health on n1: $code"
      out=$(curl -s -m 60 "http://127.0.0.1:$sport/generate" \
        -d '{"text": "Hello", "sampling_params": {"max_new_tokens": 4, "ignore_eos": true}}')
      case $out in *'"completion_tokens":4'* | *'"completion_tokens": 4'*) ok "POST /generate answered by the 4 ranks" ;;
        *) bad "POST /generate: $out" ;; esac
    else
      bad "the server did not start within 60 s"
    fi
    scancel "$sjob" 2>/dev/null
    gone=
    for _ in $(seq 300); do
      squeue -h -j "$sjob" 2>/dev/null | grep -q . || { gone=1; break; }
      sleep 0.2
    done
    [ -n "$gone" ] && ok "scancel stopped the server" || bad "job $sjob still queued 60 s after scancel"
    grep -q "dpep serve: stopped" "$d/serve-$sjob.out" 2>/dev/null && ok "the ranks stopped cleanly" ||
      bad "no 'dpep serve: stopped' in the job output"
    echo "     job output:"
    sed 's/^/     | /' "$d/serve-$sjob.out" 2>/dev/null | tail -25
  else
    bad "sbatch refused the serve script: $(cat "$d/sbatch-serve.err")"
  fi
else
  echo "skip: the serve job needs xz and curl"
fi

[ $fail = 0 ] || dump_logs
echo "$pass passed, $fail failed"
[ $fail = 0 ]
