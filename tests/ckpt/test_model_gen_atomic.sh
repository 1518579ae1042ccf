#!/usr/bin/env bash
# test_model_gen_atomic.sh — a generated model appears in its directory all
# at once (dpep_model_generate: temporary sibling + rename, under a lock):
#   (a) a generator killed after config.json and before the weights
#       (DPEP_FAULT=gen@0=kill; `dpep model gen`, and `dpep run` with
#       model.generate under mpirun -np 2) leaves no config.json at the
#       target; the next run generates, succeeds, and clears the leftovers;
#   (b) 4 concurrent generators of one fresh directory (`dpep run` with
#       model.generate, and `dpep model gen`) all exit 0 and leave the bytes
#       of a single generation, 4 rounds; a stopped lock holder is waited for;
#   (c) a non-empty directory without config.json is refused (exit 2) and
#       left as it was;
#   (d) `dpep model gen` over a model replaces it whole (old shards and
#       index gone, the user's other files kept); killed mid-way, it leaves
#       the old model intact.
#   test_model_gen_atomic.sh DPEP
set -u
dpep=$1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
tmp=$(mktemp -d /tmp/dpep-genatomic-XXXXXX)
bg=()
cleanup() {
  for p in "${bg[@]}"; do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
  rm -rf "$tmp"
}
trap cleanup EXIT
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; [ -n "${2:-}" ] && [ -f "$2" ] && sed 's/^/     /' "$2" | head -20; }
check() { if eval "$1"; then ok "$2"; else bad "$2" "${3:-}"; fi; }
# leftovers of generators beside DIR: .NAME.gen-* / .NAME.old-*
leftovers() { (cd "$(dirname "$1")" && ls -d ".$(basename "$1").gen-"* ".$(basename "$1").old-"* 2>/dev/null); }
# same bytes as the reference generation
same() { cmp -s "$1/config.json" "$tmp/ref/config.json" && cmp -s "$1/model.safetensors" "$tmp/ref/model.safetensors"; }
yaml() { # yaml FILE MODEL_DIR [parallel]
  {
    echo "model: {path: $2, generate: tiny_v3}"
    [ -n "${3:-}" ] && echo "parallel: {tp: 2, dp: 2, ep: 2, enable_dp_attention: true}"
    echo "runtime: {device: cpu, seed: 1, comm_timeout_s: 60}"
    echo "workload: {kind: random, num_prompts: 2, input_len: 8, output_len: 2}"
  } > "$1"
}

"$dpep" model gen --seed 1 "$tmp/ref" > "$tmp/ref.log" 2>&1 || { cat "$tmp/ref.log"; echo "FAIL reference gen"; exit 1; }

# ---- (a) killed between config.json and the weights ----
DPEP_FAULT=gen@0=kill "$dpep" model gen --seed 1 "$tmp/a/m" > "$tmp/a.log" 2>&1
rc=$?
check '[ $rc = 137 ]' "(a) model gen killed at the gen point (exit $rc)" "$tmp/a.log"
check '[ ! -e "$tmp/a/m/config.json" ]' "(a) no config.json at the target after the kill"
check '[ -n "$(leftovers "$tmp/a/m")" ]' "(a) the killed generator's temporary directory is there to sweep"
"$dpep" model gen --seed 1 "$tmp/a/m" > "$tmp/a2.log" 2>&1
check '[ $? = 0 ] && same "$tmp/a/m"' "(a) next model gen succeeds, same bytes as one generation" "$tmp/a2.log"
check '[ -z "$(leftovers "$tmp/a/m")" ]' "(a) no temporary directory left" "$tmp/a2.log"
check 'grep -q "left by a generator of .* that died" "$tmp/a2.log"' "(a) the sweep is reported" "$tmp/a2.log"

if command -v mpirun > /dev/null; then
  yaml "$tmp/run2.yaml" "$tmp/ar/m" 2
  DPEP_FAULT=gen@0=kill timeout 60 mpirun -np 2 --oversubscribe --bind-to none "$dpep" run "$tmp/run2.yaml" \
    > "$tmp/ar.log" 2>&1
  rc=$?
  check '[ $rc != 0 ] && [ $rc != 124 ] && grep -q "at gen: kill" "$tmp/ar.log"' \
    "(a) dpep run -np 2 with rank 0 killed while generating fails (exit $rc)" "$tmp/ar.log"
  check '[ ! -e "$tmp/ar/m/config.json" ]' "(a) dpep run: no config.json at model.path after the kill"
  timeout 60 mpirun -np 2 --oversubscribe --bind-to none "$dpep" run "$tmp/run2.yaml" > "$tmp/ar2.log" 2>&1
  check '[ $? = 0 ] && same "$tmp/ar/m"' \
    "(a) the next dpep run -np 2 generates and serves" "$tmp/ar2.log"
  check '[ -z "$(leftovers "$tmp/ar/m")" ]' "(a) dpep run: no temporary directory left"
else
  echo "skip (a) under mpirun: mpirun not found"
fi

# ---- (b) concurrent generators of one fresh directory ----
# Rounds 1-3: 4 jobs of `dpep run` (the race that failed: a job loading the
# weights another is still writing); round 4: 2 runs and 2 `model gen`.
contended=0
for round in 1 2 3 4; do
  d=$tmp/b$round/m
  yaml "$tmp/b$round.yaml" "$d"
  pids=()
  for i in 0 1 2 3; do
    if [ $round = 4 ] && [ $i -ge 2 ]; then
      "$dpep" model gen --seed 1 "$d" > "$tmp/b$round.$i.log" 2>&1 &
    else
      timeout 120 "$dpep" run "$tmp/b$round.yaml" > "$tmp/b$round.$i.log" 2>&1 &
    fi
    pids+=($!)
  done
  bg+=("${pids[@]}")
  for i in 0 1 2 3; do
    wait "${pids[$i]}"
    rc=$?
    check '[ $rc = 0 ]' "(b) round $round: generator $i exits 0 (exit $rc)" "$tmp/b$round.$i.log"
  done
  check 'same "$d" && [ "$(ls -A "$d")" = "$(printf "config.json\nmodel.safetensors")" ]' \
    "(b) round $round: the files of one generation, nothing else"
  check '[ -z "$(leftovers "$d")" ]' "(b) round $round: no temporary directory left"
  grep -qE "waiting for it|already holds a model" "$tmp/b$round".*.log && contended=$((contended + 1))
done
echo "(b) generators met at the lock in $contended of 4 rounds"

# a stopped lock holder: the next generator says whom it waits for, and
# goes on once the holder has finished
DPEP_FAULT=gen@0=stop "$dpep" model gen --seed 1 "$tmp/bs/m" > "$tmp/bs.0.log" 2>&1 &
p0=$!
bg+=("$p0")
for _ in $(seq 1 100); do grep -q "at gen: stop" "$tmp/bs.0.log" && break; sleep 0.1; done
"$dpep" model gen --seed 1 "$tmp/bs/m" > "$tmp/bs.1.log" 2>&1 &
p1=$!
bg+=("$p1")
for _ in $(seq 1 100); do grep -q "waiting for it" "$tmp/bs.1.log" && break; sleep 0.1; done
check 'grep -q "pid $p0 on .*waiting for it" "$tmp/bs.1.log" && kill -0 $p1 2>/dev/null && [ ! -e "$tmp/bs/m" ]' \
  "(b) the second generator waits for the stopped one, naming its pid" "$tmp/bs.1.log"
kill -CONT "$p0"
wait "$p0"; r0=$?
wait "$p1"; r1=$?
check '[ $r0 = 0 ] && [ $r1 = 0 ] && same "$tmp/bs/m" && [ -z "$(leftovers "$tmp/bs/m")" ]' \
  "(b) both finish once it resumes (exit $r0, $r1)" "$tmp/bs.1.log"

# ---- (c) a non-empty directory without config.json ----
mkdir -p "$tmp/c/m"
echo "my notes" > "$tmp/c/m/notes.txt"
"$dpep" model gen "$tmp/c/m" > "$tmp/c.log" 2>&1
rc=$?
check '[ $rc = 2 ] && grep -q "c/m is not empty and has no config.json" "$tmp/c.log"' \
  "(c) model gen refuses a non-empty directory without config.json (exit $rc)" "$tmp/c.log"
yaml "$tmp/c.yaml" "$tmp/c/m"
timeout 60 "$dpep" run "$tmp/c.yaml" > "$tmp/c2.log" 2>&1
rc=$?
check '[ $rc = 2 ] && grep -q "c/m is not empty and has no config.json" "$tmp/c2.log"' \
  "(c) dpep run with model.generate refuses it too (exit $rc)" "$tmp/c2.log"
check '[ "$(ls -A "$tmp/c/m")" = notes.txt ] && [ "$(cat "$tmp/c/m/notes.txt")" = "my notes" ] && [ -z "$(leftovers "$tmp/c/m")" ]' \
  "(c) the directory is left as it was"

# ---- (d) model gen over a model: replaced whole, the user's files kept ----
"$dpep" model gen --seed 2 --shard-mb 4 "$tmp/d/m" > /dev/null 2>&1
echo "read me" > "$tmp/d/m/README.md"
mkdir "$tmp/d/m/extra"
cp -r "$tmp/d/m" "$tmp/d/before"
DPEP_FAULT=gen@0=kill "$dpep" model gen --seed 1 "$tmp/d/m" > "$tmp/d.log" 2>&1
rc=$?
check '[ $rc = 137 ] && diff -r "$tmp/d/before" "$tmp/d/m" > /dev/null' \
  "(d) a replace killed mid-way leaves the old model as it was (exit $rc)" "$tmp/d.log"
"$dpep" model gen --seed 1 "$tmp/d/m" > "$tmp/d2.log" 2>&1
rc=$?
check '[ $rc = 0 ] && same "$tmp/d/m" && [ ! -e "$tmp/d/m/model.safetensors.index.json" ] && ! ls "$tmp/d/m"/model-0* > /dev/null 2>&1' \
  "(d) the replace leaves the new model only (old shards and index gone, exit $rc)" "$tmp/d2.log"
check '[ "$(cat "$tmp/d/m/README.md")" = "read me" ] && [ -d "$tmp/d/m/extra" ] && [ -z "$(leftovers "$tmp/d/m")" ]' \
  "(d) the user's files stay, no temporary directory left"
"$dpep" model check "$tmp/d/m" > "$tmp/d3.log" 2>&1
check '[ $? = 0 ]' "(d) model check passes on the replaced model" "$tmp/d3.log"

echo "test_model_gen_atomic: $pass passed, $fail failed"
[ "$fail" = 0 ]
