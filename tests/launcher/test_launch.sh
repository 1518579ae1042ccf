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

echo "# serve: dpep launch FILE [options] serve [serve options]"
# A checkpoint directory as launch checks it for serve: config.json and tokenizer.json.
mkdir -p "$tmp/dsv3" "$tmp/dsv3-notok"
cp "$c/models/deepseek-v3/config.json" "$tmp/dsv3/"
cp "$c/models/deepseek-v3/config.json" "$tmp/dsv3-notok/"
echo '{}' >"$tmp/dsv3/tokenizer.json"
h8=$c/deepseek-v3-h200x8-serve.yaml
h96=$c/deepseek-v3-h100x96-serve.yaml
golden serve-1x8-mpirun -- "$h8" --dry-run --dpep "$dpep" --model-path "$tmp/dsv3" --host node07 serve
golden serve-2x8-srun "${s2[@]}" -- "$h96" --dry-run --dpep "$dpep" --model-path "$tmp/dsv3" serve \
  --port 30001 --max-queued-requests 64
golden serve-2x8-hostfile -- "$h96" --dry-run --dpep "$dpep" --model-path "$tmp/dsv3" --hostfile "$d/hosts-2x8" \
  serve --host 127.0.0.1 --api-key s3cret
expect 0 "--program serve is the same command" -- "$h8" --dry-run --dpep "$dpep" --model-path "$tmp/dsv3" \
  --host node07 --program serve
norm <"$tmp/out" | diff -q - "$gold/serve-1x8-mpirun.txt" >/dev/null && ok "--program serve == serve" ||
  bad "--program serve differs from serve"
expect 0 "serve on this node" -- "$h8" --dry-run --dpep "$dpep" --model-path "$tmp/dsv3" serve
contains "^# server: rank 0 on $(hostname) listens on 0.0.0.0:30000 \(server.host, server.port\): http://$(hostname):30000$" "local server URL names this host"
expect 0 "run options after run" -- "$c/tiny.yaml" --dry-run --dpep "$dpep" --ep-size 2 run --output "o.jsonl" \
  --ignore-eos --summary-json=s.json --num-prompts 4
contains "$dpep run $src/configs/tiny.yaml --ep-size 2 --output o.jsonl --ignore-eos --summary-json=s.json --num-prompts 4$" "run's words reach the ranks in order"
expect 0 "cookbook entry after serve" -- "$c/deepseek-v3-cookbook.yaml" --dry-run --dpep "$dpep" \
  --model-path "$tmp/dsv3" serve --configuration high-throughput-dp
contains "serve $src/configs/deepseek-v3-cookbook.yaml --model-path $tmp/dsv3 --configuration high-throughput-dp$" "--configuration after serve is passed on"
contains "tp 8, dp 8 with DP attention" "and picks the cookbook entry here"
for case in "serve-1x8:$h8" "serve-2x8:$h96"; do
  name=${case%%:*}; file=${case#*:}
  if "$cli" launch "$file" --dpep "$dpep" --model-path "$tmp/dsv3" --sbatch "$tmp/$name.sbatch" --time 24:00:00 \
    serve >"$tmp/out" 2>&1; then
    norm <"$tmp/$name.sbatch" >"$tmp/$name.sbatch.txt"
    [ "${UPDATE_GOLDEN:-0}" = 1 ] && cp "$tmp/$name.sbatch.txt" "$gold/sbatch-$name.txt"
    if diff -u "$gold/sbatch-$name.txt" "$tmp/$name.sbatch.txt" >"$tmp/diff"; then ok "golden sbatch-$name"
    else bad "golden sbatch-$name differs"; head -30 "$tmp/diff"; fi
    bash -n "$tmp/$name.sbatch" && ok "sbatch-$name is valid bash" || bad "sbatch-$name: bash -n"
  else
    bad "sbatch $name: $(cat "$tmp/out")"
  fi
done
# The script's echo line names the first node of the allocation.
mkdir -p "$tmp/fakebin"
printf '#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "gpu%%s\\n" 17 18\n' >"$tmp/fakebin/scontrol"
chmod +x "$tmp/fakebin/scontrol"
printf '#!/bin/sh\necho "srun $*"\n' >"$tmp/fakebin/srun"
chmod +x "$tmp/fakebin/srun"
if PATH="$tmp/fakebin:$PATH" SLURM_JOB_ID=77 SLURM_JOB_NODELIST='gpu[17-18]' bash "$tmp/serve-2x8.sbatch" >"$tmp/out" 2>&1; then
  contains "^dpep serve: http://gpu17:30000 \(job 77, rank 0 on gpu17\)$" "sbatch prints the first node's URL"
  contains "^srun --mpi=pmix --nodes=2 .* serve $src/configs/deepseek-v3-h100x96-serve.yaml" "then starts the server"
else
  bad "serve-2x8.sbatch under a fake srun: $(cat "$tmp/out")"
fi
expect 0 "sbatch with a loopback server.host" -- "$h8" --dpep "$dpep" --model-path "$tmp/dsv3" \
  --sbatch "$tmp/lo.sbatch" serve --host 127.0.0.1 --api-key s3cret
contains "note: command line --host: server.host 127.0.0.1: only programs on the job's first node" "loopback host noted"
cp "$tmp/lo.sbatch" "$tmp/out"
contains "^# 127.0.0.1 reaches it from FIRST_NODE only" "the script says so"
contains "--dp-aware --api-key KEY" "router gets --api-key KEY"
contains "-H 'Authorization: Bearer KEY'" "curl sends the key"
if grep -v '^srun' "$tmp/lo.sbatch" | grep -q s3cret; then bad "the key is printed outside the srun line"
else ok "the key is not repeated in the comments"; fi

echo "# serve: bad input"
expect 2 "serve needs tokenizer.json" -- "$h8" --dry-run --dpep "$dpep" --model-path "$tmp/dsv3-notok" serve
contains "command line --model-path: model.path: .*dsv3-notok/tokenizer.json is not readable: .*dpep serve needs" "missing tokenizer named"
expect 0 "--no-model-check skips it" -- "$h8" --dry-run --dpep "$dpep" --model-path "$tmp/dsv3-notok" --no-model-check serve
expect 2 "serve refuses experts that do not divide over ep" -- "$c/deepseek-v3-h100x96.yaml" --dry-run --dpep "$dpep" \
  --model-path "$tmp/dsv3" --hostfile "$d/hosts-12x8" serve
contains "n_routed_experts 256 is not divisible by ep 96" "expert divisibility named for serve"
expect 2 "unknown subcommand" -- "$h8" --dry-run servee
contains "dpep launch: unknown subcommand servee after FILE \(expected run, serve or placement" "unknown subcommand named"
expect 2 "subcommand before FILE" -- serve "$h8" --dry-run
contains "dpep launch: serve before FILE: FILE comes first" "order explained"
expect 2 "launch option after serve" -- "$h8" --model-path "$tmp/dsv3" serve --dry-run
contains "dpep launch: --dry-run is an option of dpep launch, not of dpep serve: put it before .serve." "misplaced option named"
expect 2 "--sbatch after serve" -- "$h8" serve --sbatch "$tmp/x.sbatch"
[ -e "$tmp/x.sbatch" ] && bad "a script was written anyway" || ok "no script written"
expect 2 "--program and serve" -- "$h8" --dry-run --program placement serve
contains "--program placement and the subcommand serve exclude each other" "--program conflict named"
expect 2 "serve and -- CMD" -- "$h8" --dry-run serve -- hostname
contains "the subcommand serve and -- CMD exclude each other" "-- conflict named"
expect 2 "stray word after serve" -- "$h8" --dry-run serve extra
contains "unexpected argument extra after .serve." "stray word named"
expect 2 "unknown option after serve" -- "$h8" --dry-run serve --prot 30001
contains "--prot" "unknown option named"
expect 2 "bad port after serve" -- "$h8" --dry-run serve --port 70000
contains "server.port" "bad port names server.port"
expect 2 "missing value after serve" -- "$h8" --dry-run serve --configuration
contains "command line --configuration: missing value" "missing value named"
expect 2 "--configuration twice" -- "$c/deepseek-v3-cookbook.yaml" --dry-run --configuration default serve \
  --configuration high-throughput-dp
contains "--configuration given before and after .serve." "twice named"
expect 2 "wildcard address as an mpirun host" -- "$h8" --dry-run --host 0.0.0.0 serve
contains "--host 0.0.0.0 before the subcommand names the hosts mpirun starts ranks on" "wildcard host explained"

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
contains "^usage: dpep launch FILE \[options\] \[overrides\] \[run\|serve\|placement" "help shows the subcommand"
contains "After\s*$|after it come that subcommand's options" "help says where the subcommand's options go"
expect 0 "--help after serve" -- "$c/tiny.yaml" serve --help
contains "--sbatch OUT" "launch's help"

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
expect 0 "placement named after FILE" -- "$c/tiny.yaml" --dpep "$dpep" placement --ep-size 2
contains "ep 2 \(attn_tp 1, moe_tp 2, dense_tp 1\)" "placement ran with the override given after it"

echo "# a real server through dpep launch ... serve (mpirun, 4 CPU ranks)"
if command -v xz >/dev/null && command -v curl >/dev/null; then
  mkdir -p "$tmp/tok"
  xz -dc "$src/tests/reference/tokenizers/deepseek-v3/tokenizer.json.xz" >"$tmp/tok/tokenizer.json"
  cp "$src/tests/reference/tokenizers/deepseek-v3/tokenizer_config.json" "$tmp/tok/"
  "$dpep" model gen --tokenizer "$tmp/tok" --set hidden_size=64 --set num_hidden_layers=2 "$tmp/tiny-tok" \
    >/dev/null 2>&1 || bad "dpep model gen --tokenizer"
  "$timeout_bin" -k 5 120 "$cli" launch "$c/tiny.yaml" --dpep "$dpep" --model-path "$tmp/tiny-tok" serve \
    --port 0 --served-model-name tiny-tok >"$tmp/serve.log" 2>&1 &
  lpid=$!
  port=""
  for _ in $(seq 1 600); do
    port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$tmp/serve.log")
    [ -n "$port" ] && break
    kill -0 "$lpid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$port" ]; then
    bad "dpep launch ... serve: no server"; sed 's/^/     /' "$tmp/serve.log" | tail -20
  else
    ok "dpep launch ... serve: listening on port $port"
    cp "$tmp/serve.log" "$tmp/out"
    contains "^# server: rank 0 on .* listens on 127.0.0.1:0 \(server.host, server.port\): http://127.0.0.1:PORT" "the launch record names the server"
    curl -s -m 30 "http://127.0.0.1:$port/server_info" >"$tmp/out"
    contains '"served_model_name": *"tiny-tok"' "serve options reached the ranks"
    contains '"dp_size": *4' "with tiny.yaml's layout"
    curl -s -m 60 "http://127.0.0.1:$port/generate" \
      -d '{"text": "Hello", "sampling_params": {"max_new_tokens": 4, "ignore_eos": true}}' >"$tmp/out"
    contains '"completion_tokens": *4' "a request is answered"
  fi
  ranks=$(pgrep -f "^$dpep serve .*--model-path $tmp/tiny-tok" | tr '\n' ' ')
  # shellcheck disable=SC2086
  [ -n "$ranks" ] && kill -TERM $ranks
  wait "$lpid"
  rc=$?
  [ "$rc" = 0 ] && ok "SIGTERM to the ranks: the launched job exits 0" || bad "launched server exit $rc"
else
  echo "skip: xz or curl not found"
fi
expect 1 "a launcher that is not installed" PATH=/nonexistent -- "$c/tiny.yaml" --dpep "$dpep" --program placement
contains "cannot run mpirun" "exec failure named"

echo "$pass passed, $fail failed"
[ "$fail" = 0 ]
