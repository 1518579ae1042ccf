#!/usr/bin/env bash
# test_serve.sh — `dpep serve` end to end on loopback, with a tiny model that
# speaks the real DeepSeek-V3 tokens, on three layouts (1 rank; DP attention +
# EP on 4 ranks; 2 replicas):
#   - greedy outputs through /generate equal `dpep run`'s on the same prompts;
#   - a streamed /generate concatenates to the non-streamed text;
#   - /v1/completions and /v1/chat/completions answer in OpenAI's shape;
#   - 32 concurrent requests are each answered once;
#   - /metrics of the idle job after the traffic (metrics_check.py);
#   - an idle job costs well under one core (CPU time of every rank over 3 s),
#     and curl's first request after idling is answered at once;
#   - SIGTERM with a stream in flight (drain_check.py): it drains and new
#     requests get 503 (dpa_ep), or it is cut at server.drain_timeout_s
#     (replicas) or at a second signal (one); every rank exits, exit code 0,
#     the port is closed and nothing is left in /dev/shm.
#   test_serve.sh DPEP SRC_DIR
set -uo pipefail
dpep=$1
src=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
command -v xz >/dev/null || { echo "SKIP: xz not found"; exit 77; }
command -v curl >/dev/null || { echo "SKIP: curl not found (scripts/setup.sh installs it)"; exit 77; }
tmp=$(mktemp -d /tmp/dpep-serve-XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
tok=$tmp/tok
mkdir -p "$tok"
xz -dc "$src/tests/reference/tokenizers/deepseek-v3/tokenizer.json.xz" > "$tok/tokenizer.json"
cp "$src/tests/reference/tokenizers/deepseek-v3/tokenizer_config.json" "$tok/"
model=$tmp/model
"$dpep" model gen --tokenizer "$tok" --set hidden_size=64 --set num_hidden_layers=2 "$model" > /dev/null ||
    { echo "FAIL model gen"; exit 1; }

# prompts as ids, and the offline reference (greedy, eos ignored, 8 tokens)
python3 - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
prompts = [[0, 19923, 2058], [0, 671, 4787, 13769, 46012], [0, 45948, 2058, 30594, 223, 6895, 18009, 16, 17],
           [0, 2107, 515, 270, 2455, 294, 2734, 14, 436, 515, 270]]
with open(f"{tmp}/work.jsonl", "w") as f:
    for i, p in enumerate(prompts * 2):
        f.write(json.dumps({"id": f"p{i}", "input_ids": p, "max_new_tokens": 8}) + "\n")
PY

# the load: 200 requests, random prompts and groups sharing a prefix
python3 - "$tmp" <<'PY'
import json, random, sys
rng = random.Random(3)
with open(f"{sys.argv[1]}/load.jsonl", "w") as f:
    prefixes = [[rng.randrange(1000, 120000) for _ in range(64)] for _ in range(8)]
    for i in range(200):
        ids = (prefixes[i % 8] if i % 2 else []) + [rng.randrange(1000, 120000) for _ in range(rng.randint(4, 96))]
        f.write(json.dumps({"id": f"L{i}", "input_ids": [0] + ids, "max_new_tokens": rng.randint(1, 24)}) + "\n")
PY

serve_layout() { # name np overrides...
    local name=$1 np=$2
    shift 2
    cat > "$tmp/$name.yaml" <<YAML
model: {path: $model}
runtime: {device: cpu, max_running_requests: 16, chunked_prefill_size: 64, page_size: 4, comm_timeout_s: 60}
server: {host: 127.0.0.1, port: 0, max_new_tokens: 8}
workload: {kind: file, path: $tmp/work.jsonl}
YAML
    timeout 120 mpirun -np "$np" --oversubscribe --bind-to none "$dpep" run "$tmp/$name.yaml" "$@" \
        --ignore-eos --quiet --output "$tmp/$name.offline.jsonl" > "$tmp/$name.run.log" 2>&1 ||
        { echo "FAIL $name: dpep run"; tail -5 "$tmp/$name.run.log"; fails=$((fails + 1)); return; }
    ls -A /dev/shm > "$tmp/$name.shm.before" 2>/dev/null
    timeout 300 mpirun -np "$np" --oversubscribe --bind-to none "$dpep" serve "$tmp/$name.yaml" "$@" \
        > "$tmp/$name.serve.log" 2>&1 &
    local mpid=$!
    pids+=("$mpid")
    local port=""
    for _ in $(seq 1 300); do
        port=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$tmp/$name.serve.log")
        [ -n "$port" ] && break
        kill -0 "$mpid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$port" ]; then
        echo "FAIL $name: the server did not start"; tail -20 "$tmp/$name.serve.log"; fails=$((fails + 1)); return
    fi
    python3 "$src/tests/serve/serve_client.py" "$port" "$tmp/work.jsonl" "$tmp/$name.offline.jsonl" "$name" ||
        fails=$((fails + 1))
    local groups
    groups=$(sed -n 's/.*model [^,]*, \([0-9]*\) DP group.*/\1/p' "$tmp/$name.serve.log")
    if [ "$name" = dpa_ep ]; then # bounded load: 200 requests, 64 concurrent streams
        python3 "$src/bench/serve_load.py" "$port" "$tmp/load.jsonl" --concurrency 64 --check \
            > "$tmp/load.out" 2>&1 || { echo "FAIL $name: load"; cat "$tmp/load.out"; fails=$((fails + 1)); }
        echo "$name load: $(head -c 400 "$tmp/load.out")"
    fi
    python3 "$src/tests/serve/metrics_check.py" "$port" "$groups" "$name" > "$tmp/$name.metrics" ||
        fails=$((fails + 1))
    grep -v '^ok' "$tmp/$name.metrics"
    echo "$name: /metrics: $(grep -c '^ok' "$tmp/$name.metrics") checks passed"
    # idle: CPU time of every dpep rank over 3 s
    local ranks cores
    ranks=$(pgrep -f "^$dpep serve $tmp/$name.yaml" | tr '\n' ' ')
    cores=$(python3 - $ranks <<'PY'
import os, sys, time
pids = sys.argv[1:]
def cpu():
    t = 0
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            t += int(f[11]) + int(f[12])
        except OSError:
            pass
    return t
time.sleep(1)
a = cpu(); time.sleep(3); b = cpu()
print(f"{(b - a) / os.sysconf('SC_CLK_TCK') / 3:.3f}")
PY
)
    echo "$name: idle CPU of $np rank(s) together: $cores cores"
    if python3 -c "import sys; sys.exit(0 if float('$cores') > 0.5 else 1)"; then
        echo "FAIL $name: idle job uses $cores cores"; fails=$((fails + 1))
    fi
    # the first request after 4 s of idling, with curl: served without delay
    local t_first
    t_first=$(curl -s -m 30 -o "$tmp/$name.first.json" -w '%{time_total}' "http://127.0.0.1:$port/generate" \
        -d '{"input_ids": [0, 19923, 2058], "sampling_params": {"max_new_tokens": 2, "ignore_eos": true}}')
    echo "$name: curl, first request after idling: ${t_first} s"
    python3 - "$tmp/$name.first.json" "$t_first" <<'PY' || { echo "FAIL $name: first request after idling"; fails=$((fails + 1)); }
import json, sys
d = json.load(open(sys.argv[1]))
sys.exit(0 if len(d["output_ids"]) == 2 and float(sys.argv[2]) < 1.0 else 1)
PY
    # SIGTERM to the ranks (as Slurm's scancel or a supervisor sends it; mpirun
    # itself exits non-zero whenever it is signaled) with a stream in flight:
    # it drains (finish), is cut at server.drain_timeout_s (abort), or at a
    # second signal (twice); every rank stops, exit 0
    local t_stop=$SECONDS
    python3 "$src/tests/serve/drain_check.py" "$port" "$drain" $ranks || fails=$((fails + 1))
    wait "$mpid"
    local rc=$?
    echo "$name: SIGTERM -> exit $rc in $((SECONDS - t_stop)) s"
    [ "$rc" = 0 ] || { echo "FAIL $name: exit $rc after SIGTERM"; tail -5 "$tmp/$name.serve.log"; fails=$((fails + 1)); }
    grep -q "dpep serve: stopped" "$tmp/$name.serve.log" || { echo "FAIL $name: no stop message"; fails=$((fails + 1)); }
    # nothing left behind: the port is closed, and no new /dev/shm file is
    # left that no live process maps (Open MPI's and dpep's segments)
    if python3 -c "import socket,sys; s=socket.socket(); s.settimeout(2); sys.exit(0 if s.connect_ex(('127.0.0.1', $port)) == 0 else 1)"; then
        echo "FAIL $name: port $port still answers after the stop"; fails=$((fails + 1))
    fi
    local left
    left=$(python3 - "$tmp/$name.shm.before" <<'PY'
import glob, os, sys, time
before = set(open(sys.argv[1]).read().split())
for attempt in range(3):
    new = [f for f in os.listdir("/dev/shm") if f not in before]
    mapped = set()
    for m in glob.glob("/proc/[0-9]*/maps"):
        try:
            mapped |= {l.split()[-1] for l in open(m) if "/dev/shm/" in l}
        except OSError:
            pass
    left = [f for f in new if "/dev/shm/" + f not in mapped and os.path.exists("/dev/shm/" + f)]
    if not left:
        break
    time.sleep(1)
print(" ".join(left))
PY
)
    [ -z "$left" ] || { echo "FAIL $name: left in /dev/shm: $left"; fails=$((fails + 1)); }
}

drain=twice serve_layout one 1 --tp 1 --dp 1 --ep 1
drain=finish serve_layout dpa_ep 4 --tp 4 --dp 4 --ep 4 --enable-dp-attention --moe-dense-tp-size 1
drain=abort serve_layout replicas 2 --tp 1 --dp 2 --ep 1 --drain-timeout 0.5
echo "serve: $fails failure(s)"
[ "$fails" = 0 ]
