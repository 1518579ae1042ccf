#!/usr/bin/env bash
# test_clients.sh — `dpep serve` with real clients from PyPI: the `openai`
# Python client and sglang-router (the SGLang Model Gateway), from the venv
# that scripts/setup.sh makes in SRC_DIR/.venv. Everything runs inside a
# network namespace of its own that has only `lo` (the router would fetch
# tokenizers from the Hugging Face Hub otherwise; here it must read
# tokenizer.json from the model_path the workers report).
#
# Three workers of one tiny model that speaks the real DeepSeek-V3 tokens:
#   A  1 rank                                   (dp_size 1)
#   B  2 ranks, DP attention over 2 groups + EP  (dp_size 2)
#   C  1 rank, started with --api-key
# and checks (test_clients.py does the talking):
#   - the openai client on A, B and C: completions and chat, streamed and not
#     (greedy streams concatenate to the non-streamed text), usage numbers,
#     the stream_options.include_usage chunk, max_completion_tokens, stop,
#     bad requests -> BadRequestError naming the field, models.list() and
#     models.retrieve(); on C a wrong key -> AuthenticationError (401);
#   - sglang-router in front of A and B with the policies cache_aware,
#     round_robin, power_of_two, cache_aware --dp-aware, round_robin
#     --dp-aware, and round_robin --api-key in front of C and B: both workers
#     registered (one target per DP rank with --dp-aware) with the metadata of
#     their /server_info, the router's /v1/models and /get_model_info,
#     /generate, /v1/completions and /v1/chat/completions through the router,
#     streamed and not, equal to the workers' own greedy answers; the requests
#     the workers took add up to those sent, and spread as the policy says;
#   - every worker is still up at the end and stops on SIGTERM with exit 0.
# Skips (exit 77) only without root or the `ip` command / network namespaces.
#   test_clients.sh DPEP SRC_DIR
set -uo pipefail
dpep=$1
src=$2
here=$src/tests/serve
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
# no proxy between the clients and loopback
export NO_PROXY='*' no_proxy='*'
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy

skip() {
    echo "SKIP: $*"
    exit 77
}
[ "$(id -u)" = 0 ] || skip "needs root to make a network namespace (running as uid $(id -u))"
command -v ip >/dev/null 2>&1 || skip "the 'ip' command (iproute2) is not installed"

t_start=$SECONDS
fails=0
failed() { # failed WHAT: a FAIL line, counted
    echo "FAIL: $*"
    fails=$((fails + 1))
}

py=$src/.venv/bin/python
if [ ! -x "$py" ]; then
    echo "FAIL: no Python venv at $src/.venv: scripts/setup.sh makes it (pip install openai sglang-router)"
    exit 1
fi
if ! err=$("$py" -c 'import openai, sglang_router' 2>&1); then
    echo "FAIL: the venv $src/.venv lacks openai or sglang-router (run scripts/setup.sh): $err"
    exit 1
fi
for tool in mpirun xz timeout; do
    command -v $tool >/dev/null 2>&1 || { echo "FAIL: '$tool' is not installed (scripts/setup.sh)"; exit 1; }
done
echo "clients: $("$py" -c 'import importlib.metadata as m; print("openai", m.version("openai"), "sglang-router", m.version("sglang-router"))')"

# ---- the namespace (and those of earlier runs that were killed) ----
ns_prefix=dpepcl
for old in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${ns_prefix}-[0-9]+\$"); do
    kill -0 "${old#"${ns_prefix}"-}" 2>/dev/null && continue
    for p in $(ip netns pids "$old" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    ip netns del "$old" 2>/dev/null
done
ns=$ns_prefix-$$
if ! err=$(ip netns add "$ns" 2>&1); then
    skip "'ip netns add' does not work here: $err"
fi
tmp=$(mktemp -d /tmp/dpep-clients-XXXXXX)
pids=() # what this script started (timeout wrappers), killed at the end

ns_pids() { # every process in the namespace: `ip netns pids`, plus a /proc scan
    local ino p
    ip netns pids "$ns" 2>/dev/null
    ino=$(stat -L -c %i "/run/netns/$ns" 2>/dev/null) || return 0
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/ns/net" 2>/dev/null)" = "net:[$ino]" ] && echo "${p#/proc/}"
    done
}
cleanup() {
    local p left
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for _ in 1 2 3; do
        left=$(ns_pids | sort -un | tr '\n' ' ')
        [ -z "$left" ] && break
        # shellcheck disable=SC2086
        kill -KILL $left 2>/dev/null
        sleep 0.2
    done
    ip netns del "$ns" 2>/dev/null || echo "clients: could not delete the namespace $ns"
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'echo "clients: interrupted"; exit 130' INT
trap 'echo "clients: terminated"; exit 143' TERM

ip -n "$ns" link set lo up || { echo "FAIL: cannot bring up lo in $ns"; exit 1; }
links=$(ip -n "$ns" -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')
[ "$links" = "lo " ] || { echo "FAIL: the namespace has more than lo: $links"; exit 1; }
in_ns() { ip netns exec "$ns" "$@"; }

# ---- the model: tiny, with the real DeepSeek-V3 tokenizer ----
tok=$tmp/tok
mkdir -p "$tok"
if ! xz -dc "$src/tests/reference/tokenizers/deepseek-v3/tokenizer.json.xz" > "$tok/tokenizer.json" ||
    ! cp "$src/tests/reference/tokenizers/deepseek-v3/tokenizer_config.json" "$tok/"; then
    echo "FAIL: cannot unpack the reference tokenizer"
    exit 1
fi
model=$tmp/model
"$dpep" model gen --tokenizer "$tok" --set hidden_size=64 --set num_hidden_layers=2 "$model" > /dev/null ||
    { echo "FAIL: dpep model gen"; exit 1; }
name="dpep-tiny" # --served-model-name: what /v1/models and the router call it
key=test-key-$$

# ---- the workers ----
declare -A port tpid
start_worker() { # start_worker NAME NP ARGS...: mpirun in the namespace, port 0
    local w=$1 np=$2
    shift 2
    cat > "$tmp/$w.yaml" <<YAML
model: {path: $model}
runtime: {device: cpu, max_running_requests: 16, chunked_prefill_size: 64, comm_timeout_s: 60}
server: {host: 127.0.0.1, port: 0, max_new_tokens: 8}
YAML
    timeout 400 ip netns exec "$ns" mpirun -np "$np" --oversubscribe --bind-to none \
        "$dpep" serve "$tmp/$w.yaml" --served-model-name "$name" "$@" > "$tmp/$w.log" 2>&1 &
    tpid[$w]=$!
    pids+=("$!")
}
wait_worker() { # wait_worker NAME: its port from the log, or FAIL
    local w=$1 p=""
    for _ in $(seq 1 600); do
        p=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$tmp/$w.log")
        [ -n "$p" ] && break
        kill -0 "${tpid[$w]}" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$p" ]; then
        echo "FAIL: worker $w did not start"
        tail -20 "$tmp/$w.log"
        exit 1
    fi
    port[$w]=$p
    echo "worker $w: $(grep -m1 '^dpep serve:' "$tmp/$w.log")"
}
start_worker A 1 --tp 1 --dp 1 --ep 1
# B with the DP assist (runtime.dp_assist auto: on where its 2 ranks fit the
# CPUs): under the Traffic thread's load the router checks below compare its
# answers with the same prompts' answers given alone, which once caught a
# race in the assist's claim protocol (runtime/engine/assist.c, job_post).
start_worker B 2 --tp 2 --dp 2 --ep 2 --enable-dp-attention --moe-dense-tp-size 1
start_worker C 1 --tp 1 --dp 1 --ep 1 --api-key "$key"
for w in A B C; do wait_worker $w; done
url() { echo "http://127.0.0.1:${port[$1]}"; }

# ---- 1. the openai client on each worker ----
for w in A B C; do
    extra=()
    [ $w = C ] && extra=(--api-key "$key")
    timeout 120 ip netns exec "$ns" "$py" "$here/test_clients.py" openai --url "$(url $w)" --model "$name" \
        --dpep "$dpep" --model-dir "$model" "${extra[@]}" || failed "openai client on worker $w"
done

# ---- 2. sglang-router in front of two workers ----
rport=30000
run_router() { # run_router WORKER WORKER POLICY [--dp-aware] [--api-key K] [-- ROUTER_ONLY_ARGS...]
    local w1=$1 w2=$2 policy=$3
    shift 3
    local args=() only=()
    while [ $# -gt 0 ]; do
        case $1 in
            --) shift; only=("$@"); break ;;
            --api-key) args+=("$1" "$2"); shift 2 ;;
            *) args+=("$1"); shift ;;
        esac
    done
    rport=$((rport + 1))
    local log=$tmp/router-$rport.log started rpid rc
    started=$(date +%s.%N)
    timeout 200 ip netns exec "$ns" "$py" -m sglang_router.launch_router --host 127.0.0.1 --port "$rport" \
        --prometheus-host 127.0.0.1 --prometheus-port $((rport - 1000)) \
        --worker-urls "$(url "$w1")" "$(url "$w2")" --policy "$policy" "${args[@]}" "${only[@]}" \
        > "$log" 2>&1 &
    rpid=$!
    pids+=("$rpid")
    timeout 150 ip netns exec "$ns" "$py" "$here/test_clients.py" router --router "http://127.0.0.1:$rport" \
        --workers "$(url "$w1")" "$(url "$w2")" --model "$name" --model-dir "$model" \
        --policy "$policy" --started "$started" "${args[@]}"
    rc=$?
    # the tokenizer came from the workers' model_path on disk (no network here)
    sed 's/\x1b\[[0-9;]*m//g' "$log" > "$log.txt" # without its colors
    if ! grep -q "Loading tokenizer .* from source: $model" "$log.txt" ||
        ! grep -q "Successfully registered tokenizer" "$log.txt"; then
        echo "FAIL router $policy ${args[*]}: the router did not load the tokenizer from $model"
        rc=1
    fi
    if ! kill -0 "$rpid" 2>/dev/null; then
        failed "router $policy ${args[*]}: the router exited early"
        rc=1
    fi
    if [ $rc != 0 ]; then
        failed "router $policy ${args[*]} in front of $w1 and $w2"
        echo "--- the router's log (last 15 lines; $log) ---"
        grep -v 'started processing request' "$log.txt" | tail -15 | cut -c1-400
    fi
    kill -TERM "$rpid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$rpid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$rpid" 2>/dev/null
    wait "$rpid" 2>/dev/null
}
run_router A B cache_aware
run_router A B round_robin
run_router A B power_of_two -- --worker-startup-check-interval 1
run_router A B cache_aware --dp-aware
run_router A B round_robin --dp-aware
run_router C B round_robin --api-key "$key"

# ---- 3. every worker is still up and stops on SIGTERM ----
descendants() { # every process below pid $1
    local c
    for c in $(pgrep -P "$1"); do
        echo "$c"
        descendants "$c"
    done
}
for w in A B C; do
    if ! kill -0 "${tpid[$w]}" 2>/dev/null; then
        wait "${tpid[$w]}"
        failed "worker $w exited during the test (exit $?)"
        tail -20 "$tmp/$w.log"
        continue
    fi
    ranks=()
    for p in $(descendants "${tpid[$w]}"); do
        case $(tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null) in "$dpep serve "*) ranks+=("$p") ;; esac
    done
    [ ${#ranks[@]} -gt 0 ] || { failed "worker $w: no rank found"; continue; }
    kill -TERM "${ranks[@]}"
    wait "${tpid[$w]}"
    rc=$?
    [ $rc = 0 ] || { failed "worker $w: exit $rc after SIGTERM"; tail -10 "$tmp/$w.log"; }
    if grep -E '(ERROR|FATAL)' "$tmp/$w.log" > /dev/null; then
        failed "worker $w logged errors:"
        grep -E '(ERROR|FATAL)' "$tmp/$w.log" | head -10
    fi
done

echo "clients: $fails failure(s) in $((SECONDS - t_start)) s"
[ $fails = 0 ]
