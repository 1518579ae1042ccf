#!/usr/bin/env bash
# test_launch.sh — `dpep launch`: golden command lines (mpirun and srun, with
# and without Slurm variables, 1 x 4 CPU ranks, 2 x 8 and 12 x 8 GPUs), the
# sbatch script, validation errors naming the config's FILE:LINE:COL, usage
# errors, and real launches of `dpep placement` under mpirun.
#   tests/launcher/test_launch.sh CLI DPEP SOURCE_DIR
# CLI is a binary taking `launch …` (dpep);
# DPEP is the binary the ranks run. UPDATE_GOLDEN=1 rewrites the golden files.
set -u
cli=$1
dpep=$(readlink -f "$2")
src=$(readlink -f "$3")
here=$src/tests/launcher
gold=$here/golden
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pass=0
fail=0
# No batch system from outside: each case sets its own Slurm variables.
for v in $(compgen -v | grep -E '^SLURM_'); do unset "$v"; done
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1

ok() { pass=$((pass + 1)); echo "ok   $*"; }
bad() { fail=$((fail + 1)); echo "FAIL $*"; }
norm() { sed -e "s|$dpep|@DPEP@|g" -e "s|$src|@SRC@|g" -e "s|$tmp|@TMP@|g"; }

# golden NAME [VAR=VALUE…] -- ARGS…: `CLI launch ARGS…` must exit 0 and print
# exactly golden/NAME.txt (paths normalized).
golden() {
  local name=$1
  shift
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" "$cli" launch "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  norm <"$tmp/out" >"$tmp/$name.txt"
  if [ "${UPDATE_GOLDEN:-0}" = 1 ] && [ $rc = 0 ]; then cp "$tmp/$name.txt" "$gold/$name.txt"; fi
  if [ $rc != 0 ]; then
    bad "golden $name: exit $rc"; sed 's/^/     /' "$tmp/err"
  elif ! diff -u "$gold/$name.txt" "$tmp/$name.txt" >"$tmp/diff" 2>&1; then
    bad "golden $name differs from golden/$name.txt"; sed 's/^/     /' "$tmp/diff" | head -30
  else
    ok "golden $name"
  fi
}

# expect CODE DESCRIPTION [VAR=VALUE…] -- ARGS…: exit code, output in $tmp/out.
expect() {
  local want=$1 what=$2
  shift 2
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" "$timeout_bin" -k 5 90 "$cli" launch "$@" >"$tmp/out" 2>&1
  local got=$?
  if [ "$got" = "$want" ]; then ok "$what"
  else bad "$what: exit $got, expected $want"; sed 's/^/     /' "$tmp/out" | head -20; fi
}
contains() {
  if grep -qE -- "$1" "$tmp/out"; then ok "$2"
  else bad "$2: output lacks /$1/"; sed 's/^/     /' "$tmp/out" | head -20; fi
}

c=$src/configs
timeout_bin=$(command -v timeout)
d=$here/data
s2=(SLURM_JOB_ID=4242 SLURM_JOB_NUM_NODES=2 SLURM_NNODES=2 SLURM_NTASKS_PER_NODE=8 SLURM_GPUS_ON_NODE=8)
s12=(SLURM_JOB_ID=9696 SLURM_JOB_NUM_NODES=12 SLURM_NNODES=12 SLURM_NTASKS_PER_NODE='8(x12)')

echo "# golden command lines"
golden tiny-1x4-mpirun -- "$c/tiny.yaml" --dry-run --program placement --dpep "$dpep"
golden tiny-1x4-srun SLURM_JOB_ID=17 SLURM_JOB_NUM_NODES=1 SLURM_NTASKS_PER_NODE=4 -- \
  "$c/tiny.yaml" --dry-run --program placement --dpep "$dpep" --launcher auto
golden v3-1x8-mpirun -- "$c/deepseek-v3-h200x8.yaml" --dry-run --dpep "$dpep"
golden v3-2x8-mpirun -- "$c/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep" --hostfile "$d/hosts-2x8" \
  --set launch.env.NCCL_DEBUG=WARN
golden v3-2x8-host -- "$c/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep" --host node01,node02
golden v3-2x8-srun "${s2[@]}" -- "$c/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep" \
  --set launch.env.NCCL_DEBUG=WARN
golden v3-12x8-mpirun -- "$c/deepseek-v3-h100x96.yaml" --dry-run --dpep "$dpep" --program placement \
  --hostfile "$d/hosts-12x8"
golden v3-12x8-srun "${s12[@]}" -- "$c/deepseek-v3-h100x96.yaml" --dry-run --dpep "$dpep" --program placement
golden v3-12x8-mca "${s12[@]}" -- "$c/deepseek-v3-h100x96.yaml" --dry-run --dpep "$dpep" --program placement \
  --set launch.mca.pml=ucx --set launch.mca.btl=^vader,tcp --set "launch.env.DPEP_LOG_LEVEL=debug"

echo "# sbatch scripts"
for case in "v3-12x8:$c/deepseek-v3-h100x96.yaml:--program placement" "v3-2x8:$c/deepseek-v3-h100x16.yaml:" \
  "tiny-1x4:$c/tiny.yaml:--program placement"; do
  name=${case%%:*}; rest=${case#*:}; file=${rest%%:*}; extra=${rest#*:}
  # shellcheck disable=SC2086
  if "$cli" launch "$file" --dpep "$dpep" --sbatch "$tmp/$name.sbatch" --time 00:30:00 $extra >"$tmp/out" 2>&1; then
    norm <"$tmp/$name.sbatch" >"$tmp/$name.sbatch.txt"
    [ "${UPDATE_GOLDEN:-0}" = 1 ] && cp "$tmp/$name.sbatch.txt" "$gold/sbatch-$name.txt"
    if diff -u "$gold/sbatch-$name.txt" "$tmp/$name.sbatch.txt" >"$tmp/diff"; then ok "golden sbatch-$name"
    else bad "golden sbatch-$name differs"; head -30 "$tmp/diff"; fi
    bash -n "$tmp/$name.sbatch" && ok "sbatch-$name is valid bash" || bad "sbatch-$name: bash -n"
  else
    bad "sbatch $name: $(cat "$tmp/out")"
  fi
done

echo "# validation errors name the config line"
expect 2 "world vs tp" -- "$d/bad-world.yaml" --dry-run --dpep "$dpep" --program placement
contains "bad-world.yaml:3:3: parallel.tp: the world has 4 ranks but tp × dp = 8 × 1 = 8" "world error names parallel.tp's line"
contains "bad-world.yaml:8:3: launch.gpus_per_node: the job has nodes × gpus_per_node = 1 × 4 = 4 ranks" "and notes gpus_per_node's line"
expect 2 "nodes do not divide the world" -- "$d/bad-nodes.yaml" --dry-run --dpep "$dpep" --program placement
contains "bad-nodes.yaml:9:3: launch.nodes: 3 nodes do not divide the world of 4 ranks" "nodes error names its line"
expect 2 "nodes x gpus_per_node vs tp" -- "$c/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep" --host a,b --gpus-per-node 4
contains "command line --gpus-per-node" "a command-line override is named as such"
expect 2 "hostfile with too few slots" -- "$c/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep" --hostfile "$d/hosts-short-slots"
contains "hosts-short-slots:2: host node02 has 4 slots but the job puts 8 ranks on each node \(.*deepseek-v3-h100x16.yaml:[0-9]+:[0-9]+\)" "slot error names the hostfile line and the config line"
expect 2 "hostfile with too few hosts" -- "$c/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep" --hostfile "$d/hosts-one"
contains "launch.hostfile: .*hosts-one lists 1 host but launch.nodes is 2" "host count error"
expect 2 "bad hostfile line" -- "$c/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep" --hostfile "$d/hosts-bad"
contains "hosts-bad:1: slots=eight: not KEY=N" "bad hostfile line named"
expect 2 "missing hostfile" -- "$c/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep" --hostfile "$tmp/nope"
contains "nope: cannot open the hostfile" "missing hostfile named"
expect 2 "two nodes, no hosts, no Slurm" -- "$c/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep"
contains "deepseek-v3-h100x16.yaml:[0-9]+:[0-9]+: launch.nodes: 2 nodes but neither launch.hostfile nor --host" "no-hosts error names launch.nodes"
expect 2 "model path not readable" -- "$c/deepseek-v3-h200x8.yaml" --dry-run --dpep "$dpep" --model-path "$tmp/no-model"
contains "command line --model-path: model.path: .*no-model/config.json is not readable" "unreadable model named"
expect 2 "model path not readable (from the YAML)" -- "$c/deepseek-v3-h200x8.yaml" --dry-run --dpep "$dpep" --set model.path=/nonexistent/dsv3
contains "model.path: /nonexistent/dsv3/config.json is not readable" "YAML model path named"
expect 2 "dpep run refuses experts that do not divide over ep" -- "$c/deepseek-v3-h100x96.yaml" --dry-run --dpep "$dpep" --hostfile "$d/hosts-12x8"
contains "n_routed_experts 256 is not divisible by ep 96" "expert divisibility named"
expect 0 "--no-model-check skips the model" -- "$c/deepseek-v3-h200x8.yaml" --dry-run --dpep "$dpep" --model-path "$tmp/no-model" --no-model-check
expect 2 "Slurm allocation too small" "${s2[@]}" SLURM_JOB_NUM_NODES=1 SLURM_NNODES=1 -- "$c/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep"
contains "deepseek-v3-h100x16.yaml:[0-9]+:[0-9]+: launch.nodes: the job needs 2 nodes but Slurm allocation 4242 has 1" "allocation nodes error names launch.nodes"
expect 2 "Slurm tasks per node too few" "${s2[@]}" SLURM_NTASKS_PER_NODE=4 -- "$c/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep"
contains "launch.gpus_per_node: the job puts 8 ranks on each node but Slurm allocation 4242 allows 4" "tasks-per-node error names launch.gpus_per_node"
expect 2 "Slurm GPUs per node too few" "${s2[@]}" SLURM_GPUS_ON_NODE=4 -- "$c/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep"
contains "has 4 GPUs per node" "GPU count error"
expect 0 "a larger allocation is fine (a note)" "${s12[@]}" -- "$c/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep"
contains "note: Slurm allocation 9696 has 12 nodes; the job uses 2" "larger allocation noted"
expect 0 "launch.launcher mpirun inside Slurm" "${s2[@]}" -- "$c/deepseek-v3-h100x16.yaml" --dry-run --dpep "$dpep" --launcher mpirun
contains "^mpirun -np 16 --map-by ppr:8:node" "mpirun chosen by the config inside Slurm"

echo "# usage"
expect 2 "no FILE" -- --dry-run
expect 2 "unknown option" -- "$c/tiny.yaml" --dry-rnu
contains "did you mean|unknown option" "unknown option named"
expect 2 "--program and -- together" -- "$c/tiny.yaml" --program placement -- hostname
expect 2 "nothing after --" -- "$c/tiny.yaml" --
expect 2 "missing config file" -- "$tmp/none.yaml" --dry-run
expect 0 "--help" -- --help
contains "--sbatch OUT" "help lists --sbatch"

echo "# real launches (mpirun, 4 CPU ranks)"
expect 0 "launch configs/tiny.yaml --program placement" -- "$c/tiny.yaml" --program placement --dpep "$dpep"
contains "dpep placement: 4 ranks on 1 node; tp 4, dp 4 with DP attention, ep 4" "the 4 ranks ran placement"
contains "group sizes: attn_tp 1, attn_dp 4, ep 4" "groups as configured"
expect 0 "overrides reach every rank" -- "$c/tiny.yaml" --program placement --dpep "$dpep" --ep-size 2
contains "ep 2 \(attn_tp 1, moe_tp 2, dense_tp 1\)" "ranks saw --ep-size 2"
expect 0 "-- CMD runs on every rank" -- "$c/tiny.yaml" -- sh -c 'echo rank-$OMPI_COMM_WORLD_RANK-of-$OMPI_COMM_WORLD_SIZE'
n=$(grep -c '^rank-[0-3]-of-4$' "$tmp/out")
[ "$n" = 4 ] && ok "4 ranks ran the command" || bad "expected 4 rank lines, got $n"
expect 0 "launch.env reaches the ranks" -- "$c/tiny.yaml" --set launch.env.DPEP_TEST_VALUE=forty-two -- sh -c 'echo "v=$DPEP_TEST_VALUE"'
n=$(grep -c '^v=forty-two$' "$tmp/out")
[ "$n" = 4 ] && ok "every rank saw launch.env" || bad "expected 4 env lines, got $n"
expect 1 "a launcher that is not installed" PATH=/nonexistent -- "$c/tiny.yaml" --dpep "$dpep" --program placement
contains "cannot run mpirun" "exec failure named"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
