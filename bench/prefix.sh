#!/usr/bin/env bash
# prefix.sh — the prefix cache and cache-aware DP assignment on SGLang's
# generated-shared-prefix workload: the cache-aware experiment of SGLang's
# router / DP-attention guide (hit rate 20% -> 75%, throughput +92%) scaled to
# a small CPU machine, all in one invocation; prints Markdown tables.
#
# Model: the `tiny` preset (hidden 256, 4 layers, 16 experts, vocab 512),
# generated into a temporary directory with the real DeepSeek-V3 tokenizer
# files copied beside it (sglang-router loads a tokenizer from the workers'
# model_path; the requests are token ids below 512, so dpep never uses it).
# Workload: NUM_GROUPS groups x PROMPTS_PER_GROUP prompts, each = the group's
# random system prompt (SYSTEM_LEN tokens) + its own question (QUESTION_LEN),
# OUTPUT_LEN new tokens (ignore_eos), shuffled, everything admitted at once.
#
# Part 1 — `dpep run` on 4 ranks, DP attention 4 + EP 4 (dense FFN data
# parallel), page_size 16, chunked_prefill_size CHUNK; the variants in turn,
# ROUNDS rounds (a b c [d] a b c [d]: the spread between rounds is the noise):
#   (a) radix cache off (--disable-radix-cache)
#   (b) cache + round_robin
#   (c) cache + cache_aware (--load-balance-method cache_aware)
#   (d) cache + cache_aware + balance mode (--set runtime.dp_balance_hold_steps=HOLD_STEPS):
#       the HOOK for that option; its row says "n/a (not built)" while
#       `dpep config check` rejects the key
# Ratios are against (b) of the same round.
#
# Part 2 — the same workload (a JSONL of token ids, same shape, its own
# random tokens) through `dpep serve`, every request sent at once by
# bench/serve_load.py (streaming /generate, greedy, ignore_eos); hit rates
# from each server's GET /metrics (cached / prompt tokens per DP group).
# Every setup starts from cold servers (and a fresh router). Ratios against (e0).
#   (e0) one dpep serve of 4 ranks (DP attention 4), dpep round_robin
#   (e1) one dpep serve of 4 ranks (DP attention 4), dpep cache_aware
#   (e2) sglang-router --policy cache_aware --dp-aware over two dpep serve of
#        2 ranks each (DP attention 2): one router target per DP group
#   (e3) sglang-router --policy cache_aware (one target per instance) over the
#        same two instances, each assigning its DP groups with dpep cache_aware
#   (e4) as (e1) with Poisson arrivals at RATE req/s (40), (e5) the same with
#        balance mode (--dp-balance-hold-steps HOLD_STEPS): live arrivals are
#        where balance is meant to help (ratios still against (e0))
# Everything of part 2 runs inside a network namespace with only loopback
# (sglang-router would otherwise try to download a tokenizer). Part 2 is
# skipped, with the reason printed, when not root, without `ip netns`, or
# without SRC/.venv holding sglang_router (scripts/setup.sh makes it).
#
#   bench/prefix.sh [DPEP_BIN]
# Env: NUM_GROUPS (32) PROMPTS_PER_GROUP (8) SYSTEM_LEN (512) QUESTION_LEN (32)
#      OUTPUT_LEN (16) CHUNK (2048) ROUNDS (2) HOLD_STEPS (4)
#      PART1 (1) PART2 (1): 0 skips that part; SETUPS ("e0 e1 e2 e3 e4 e5"): part 2's setups; RATE (40);
#      ROUTER_ARGS: more sglang-router options (e.g. "--balance-abs-threshold 32");
#      KEEP_TMP=1 keeps the temporary directory (logs, summaries).
# Runs one benchmark at a time: 2.5 to 4.5 minutes with the defaults on 2 shared cores.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
here=$root/bench
dpep=$(realpath "${1:-$root/build/dpep}")
G=${NUM_GROUPS:-32}
P=${PROMPTS_PER_GROUP:-8}
S=${SYSTEM_LEN:-512}
Q=${QUESTION_LEN:-32}
O=${OUTPUT_LEN:-16}
chunk=${CHUNK:-2048}
rounds=${ROUNDS:-2}
hold=${HOLD_STEPS:-4}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn}
export NO_PROXY='*' no_proxy='*'
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy

[ -x "$dpep" ] || { echo "prefix.sh: no dpep binary at $dpep" >&2; exit 2; }
t_start=$SECONDS
tmp=$(mktemp -d /tmp/dpep-prefix-XXXXXX)
ns="" pids=()
cleanup() {
    local p left
    trap - EXIT INT TERM
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    if [ -n "$ns" ]; then
        for _ in 1 2 3; do
            left=$(ns_pids | sort -un | tr '\n' ' ')
            [ -z "$left" ] && break
            # shellcheck disable=SC2086
            kill -KILL $left 2>/dev/null || true
            sleep 0.2
        done
        ip netns del "$ns" 2>/dev/null || echo "prefix.sh: could not delete the namespace $ns"
    fi
    if [ -n "${KEEP_TMP:-}" ]; then echo "prefix.sh: kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'echo "prefix.sh: interrupted"; exit 130' INT
trap 'echo "prefix.sh: terminated"; exit 143' TERM

# ---- the model: tiny preset, with the DeepSeek-V3 tokenizer files beside it ----
model=$tmp/model
"$dpep" model gen --preset tiny --seed 1 "$model" > /dev/null
xz -dc "$root/tests/reference/tokenizers/deepseek-v3/tokenizer.json.xz" > "$model/tokenizer.json"
cp "$root/tests/reference/tokenizers/deepseek-v3/tokenizer_config.json" "$model/"
vocab=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["vocab_size"])' "$model/config.json")

n_req=$((G * P))
echo "# prefix.sh: shared-prefix workload, cache-aware DP assignment"
echo
echo "dpep $dpep; model: tiny preset (hidden 256, 4 layers, 16 experts, vocab $vocab, f32)."
echo "Workload: $G groups x $P prompts = $n_req requests, system prompt $S + question $Q tokens" \
    "($((n_req * (S + Q))) prompt tokens), $O output tokens each (ignore_eos), shuffled, all at once." \
    "Best possible hit rate: $(python3 -c "print(f'{100 * ($n_req - $G) * $S / ($n_req * ($S + $Q)):.1f}%')")" \
    "(every prompt but each group's first reuses the system prompt; page 16)."
echo "Machine: $(getconf _NPROCESSORS_ONLN) cores, load average at start $(cut -d' ' -f1-3 /proc/loadavg); $(date -u '+%Y-%m-%d %H:%M UTC')."

# ---- part 1: dpep run ----
layout=(--tp 4 --dp 4 --ep 4 --enable-dp-attention --moe-dense-tp-size 1)
if [ "${PART1:-1}" != 0 ]; then
    cat > "$tmp/run.yaml" <<YAML
model: {path: $model}
runtime: {device: cpu, page_size: 16, chunked_prefill_size: $chunk, comm_timeout_s: 300, seed: 1}
workload: {kind: shared_prefix, num_groups: $G, prompts_per_group: $P, system_prompt_len: $S,
           question_len: $Q, output_len: $O}
YAML
    "$dpep" config check "$tmp/run.yaml" --world 4 "${layout[@]}" > "$tmp/check.log" 2>&1 ||
        { echo "prefix.sh: dpep config check rejects the part 1 config:"; cat "$tmp/check.log"; exit 1; }
    # HOOK (d), "+ balance mode": cache_aware plus runtime.dp_balance_hold_steps; a build whose
    # `dpep config check` rejects the key gets an "n/a (not built)" row instead of a run
    d_args=(--load-balance-method cache_aware --set "runtime.dp_balance_hold_steps=$hold")
    d_note=""
    if ! "$dpep" config check "$tmp/run.yaml" --world 4 "${layout[@]}" "${d_args[@]}" > "$tmp/check-d.log" 2>&1; then
        d_note="n/a (not built)"
    fi
    declare -A v_args v_label
    v_args[a]="--disable-radix-cache"
    v_label[a]="(a) radix cache off"
    v_args[b]="--load-balance-method round_robin"
    v_label[b]="(b) cache + round_robin"
    v_args[c]="--load-balance-method cache_aware"
    v_label[c]="(c) cache + cache_aware"
    v_args[d]="${d_args[*]}"
    v_label[d]="(d) cache + cache_aware + balance mode (dp_balance_hold_steps=$hold)"
    : > "$tmp/part1.tsv"
    for r in $(seq 1 "$rounds"); do
        for v in a b c d; do
            if [ $v = d ] && [ -n "$d_note" ]; then
                printf '%s\t%s\t%s\t-\t%s\n' "$r" $v "${v_label[$v]}" "$d_note" >> "$tmp/part1.tsv"
                continue
            fi
            out=$tmp/p1-$r-$v
            # shellcheck disable=SC2086
            if mpirun -np 4 --oversubscribe --bind-to none --mca btl self,vader "$dpep" run "$tmp/run.yaml" \
                "${layout[@]}" ${v_args[$v]} --ignore-eos --quiet --summary-json "$out.json" > "$out.log" 2>&1; then
                printf '%s\t%s\t%s\t%s\t\n' "$r" $v "${v_label[$v]}" "$out.json" >> "$tmp/part1.tsv"
            else
                echo "prefix.sh: dpep run, variant $v round $r, failed (exit $?):"
                tail -5 "$out.log"
                printf '%s\t%s\t%s\t-\t%s\n' "$r" $v "${v_label[$v]}" "failed (exit, see above)" >> "$tmp/part1.tsv"
            fi
        done
    done
    echo
    echo "## Part 1: \`dpep run\`, 4 ranks, DP attention 4 + EP 4, page 16, chunked prefill $chunk"
    echo
    python3 "$here/prefix_tool.py" part1 "$tmp/part1.tsv"
    echo
    echo "Command (variant flags: (a) --disable-radix-cache, (b) --load-balance-method round_robin," \
        "(c) --load-balance-method cache_aware, (d) (c) + --set runtime.dp_balance_hold_steps=$hold):"
    echo "\`mpirun -np 4 --oversubscribe --bind-to none --mca btl self,vader dpep run RUN.yaml ${layout[*]}" \
        "VARIANT --ignore-eos --quiet --summary-json S.json\` with RUN.yaml:"
    echo
    echo '```yaml'
    sed "s|$model|MODEL|" "$tmp/run.yaml"
    echo '```'
    echo
    echo "Throughput = tokens / the run's wall time (summary wall_s: first step to last token, start-up excluded);" \
        "total = input + output. OMP_NUM_THREADS=OPENBLAS_NUM_THREADS=1."
    if [ -n "$d_note" ]; then
        echo "(d): $(grep -m1 dp_balance_hold_steps "$tmp/check-d.log" || head -1 "$tmp/check-d.log")"
    fi
fi

# ---- part 2: dpep serve, alone and behind sglang-router ----
[ "${PART2:-1}" != 0 ] || { echo; echo "Part 2 skipped (PART2=0). Total runtime $((SECONDS - t_start)) s."; exit 0; }
py=$root/.venv/bin/python
skip2=""
if [ "$(id -u)" != 0 ]; then
    skip2="needs root to make a network namespace (running as uid $(id -u))"
elif ! command -v ip > /dev/null 2>&1; then
    skip2="the 'ip' command (iproute2) is not installed"
elif [ ! -x "$py" ] || ! "$py" -c 'import sglang_router' > /dev/null 2>&1; then
    skip2="no venv with sglang_router at $root/.venv (scripts/setup.sh makes it)"
fi
ns_prefix=dpeppfx
if [ -z "$skip2" ]; then
    # namespaces left by killed earlier runs of this script (their shell is gone)
    for old in $(ip netns list 2> /dev/null | awk '{print $1}' | grep -E "^${ns_prefix}-[0-9]+\$" || true); do
        kill -0 "${old#"${ns_prefix}"-}" 2> /dev/null && continue
        for p in $(ip netns pids "$old" 2> /dev/null); do kill -KILL "$p" 2> /dev/null || true; done
        ip netns del "$old" 2> /dev/null || true
    done
    if err=$(ip netns add "$ns_prefix-$$" 2>&1); then
        ns=$ns_prefix-$$
        ip -n "$ns" link set lo up || skip2="cannot bring up lo in the namespace $ns"
    else
        skip2="'ip netns add' does not work here: $err"
    fi
fi
if [ -n "$skip2" ]; then
    echo
    echo "Part 2 (dpep serve, sglang-router) skipped: $skip2."
    echo
    echo "Total runtime $((SECONDS - t_start)) s."
    exit 0
fi
ns_pids() { # every process in the namespace
    local ino p
    ip netns pids "$ns" 2> /dev/null || true
    ino=$(stat -L -c %i "/run/netns/$ns" 2> /dev/null) || return 0
    for p in /proc/[0-9]*; do
        [ "$(readlink "$p/ns/net" 2> /dev/null)" = "net:[$ino]" ] && echo "${p#/proc/}"
    done
    return 0
}
in_ns() { ip netns exec "$ns" "$@"; }
forget() { # forget PID: it has exited; the cleanup must not signal a reused pid
    local keep=() p
    for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    pids=("${keep[@]}")
}
descendants() {
    local c
    for c in $(pgrep -P "$1" || true); do
        echo "$c"
        descendants "$c"
    done
}
router_ver=$("$py" -c 'import importlib.metadata as m; print(m.version("sglang-router"))')
jsonl=$tmp/gsp.jsonl
in_tokens=$(python3 "$here/prefix_tool.py" gsp "$jsonl" --groups "$G" --per-group "$P" --system "$S" \
    --question "$Q" --output "$O" --vocab "$vocab" --seed 1)
cat > "$tmp/serve.yaml" <<YAML
model: {path: $model}
runtime: {device: cpu, page_size: 16, chunked_prefill_size: $chunk, comm_timeout_s: 300, seed: 1}
server: {host: 127.0.0.1, port: 0}
YAML

declare -A wpid wport
start_worker() { # start_worker NAME NP LB_METHOD [dpep serve options...]
    local w=$1 np=$2 lb=$3
    shift 3
    timeout 900 ip netns exec "$ns" mpirun -np "$np" --oversubscribe --bind-to none --mca btl self,vader \
        "$dpep" serve "$tmp/serve.yaml" --tp "$np" --dp "$np" --ep "$np" --enable-dp-attention \
        --moe-dense-tp-size 1 --load-balance-method "$lb" "$@" > "$tmp/$w.log" 2>&1 &
    wpid[$w]=$!
    pids+=("$!")
}
wait_worker() { # wait_worker NAME: its port from the log
    local w=$1 p=""
    for _ in $(seq 1 900); do
        p=$(sed -n 's/.*listening on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$tmp/$w.log")
        [ -n "$p" ] && break
        kill -0 "${wpid[$w]}" 2> /dev/null || break
        sleep 0.1
    done
    [ -n "$p" ] || { echo "prefix.sh: worker $w did not start:"; tail -20 "$tmp/$w.log"; return 1; }
    wport[$w]=$p
}
stop_worker() { # SIGTERM to its ranks (drain: nothing is in flight), then wait
    local w=$1 ranks=() p
    for p in $(descendants "${wpid[$w]}"); do
        case $(tr '\0' ' ' < "/proc/$p/cmdline" 2> /dev/null) in "$dpep serve "*) ranks+=("$p") ;; esac
    done
    [ ${#ranks[@]} -gt 0 ] && kill -TERM "${ranks[@]}" 2> /dev/null
    for _ in $(seq 1 300); do kill -0 "${wpid[$w]}" 2> /dev/null || break; sleep 0.1; done
    kill -0 "${wpid[$w]}" 2> /dev/null && kill -TERM "${wpid[$w]}" 2> /dev/null
    wait "${wpid[$w]}" 2> /dev/null || true
    forget "${wpid[$w]}"
}
rport=30000 rpid=""
read -ra router_extra <<< "${ROUTER_ARGS:-}"
read -ra setups <<< "${SETUPS:-e0 e1 e2 e3 e4 e5}"
start_router() { # start_router NTARGETS ROUTER_ARGS...: one router in front of W1 and W2
    local targets=$1
    shift
    rport=$((rport + 1))
    timeout 900 ip netns exec "$ns" "$py" -m sglang_router.launch_router --host 127.0.0.1 --port "$rport" \
        --prometheus-host 127.0.0.1 --prometheus-port $((rport + 1000)) --log-level warn \
        --worker-urls "http://127.0.0.1:${wport[W1]}" "http://127.0.0.1:${wport[W2]}" "$@" "${router_extra[@]}" \
        > "$tmp/router-$rport.log" 2>&1 &
    rpid=$!
    pids+=("$rpid")
    in_ns python3 "$here/prefix_tool.py" wait-router "http://127.0.0.1:$rport" --targets "$targets" --timeout 90 ||
        { tail -20 "$tmp/router-$rport.log"; return 1; }
}
stop_router() {
    [ -n "$rpid" ] || return 0
    kill -TERM "$rpid" 2> /dev/null || true
    for _ in $(seq 1 50); do kill -0 "$rpid" 2> /dev/null || break; sleep 0.1; done
    kill -KILL "$rpid" 2> /dev/null || true
    wait "$rpid" 2> /dev/null || true
    forget "$rpid"
    rpid=""
}
measure() { # measure OUT PORT WORKER...: send everything at once (or at $load_rate req/s, Poisson), then read the workers' /metrics
    local out=$1 port=$2 urls=() w
    shift 2
    for w in "$@"; do urls+=("http://127.0.0.1:${wport[$w]}"); done
    in_ns python3 "$here/serve_load.py" "$port" "$jsonl" --concurrency 0 --rate "${load_rate:-0}" --check > "$out.client" ||
        echo "prefix.sh: serve_load.py reported failures for $(basename "$out"): $(tail -3 "$out.client" | tr '\n' ' ')"
    in_ns python3 "$here/prefix_tool.py" collect "$out.json" --client "$out.client" --input-tokens "$in_tokens" \
        "${urls[@]}"
}
declare -A e_label
e_label[e0]="(e0) dpep serve 4 ranks (DPA 4, EP 4), round_robin"
e_label[e1]="(e1) dpep serve 4 ranks (DPA 4, EP 4), cache_aware"
e_label[e2]="(e2) sglang-router cache_aware --dp-aware, 2 x dpep serve 2 ranks (DPA 2, EP 2)"
e_label[e3]="(e3) sglang-router cache_aware, 2 x dpep serve 2 ranks (DPA 2, EP 2), each cache_aware"
e_label[e4]="(e4) as (e1), Poisson arrivals at ${RATE:-40} req/s"
e_label[e5]="(e5) as (e4) + balance mode (dp_balance_hold_steps=${HOLD_STEPS:-4})"
run_setup() { # run_setup KEY OUT
    local k=$1 out=$2
    case $k in
        e0 | e1)
            local lb=round_robin
            [ "$k" = e1 ] && lb=cache_aware
            start_worker W 4 $lb && wait_worker W || return 1
            measure "$out" "${wport[W]}" W || { stop_worker W; return 1; }
            stop_worker W
            ;;
        e4 | e5) # live arrivals: where balance mode is meant to help
            local hold=()
            [ "$k" = e5 ] && hold=(--dp-balance-hold-steps "${HOLD_STEPS:-4}")
            start_worker W 4 cache_aware "${hold[@]}" && wait_worker W || return 1
            load_rate=${RATE:-40} measure "$out" "${wport[W]}" W || { stop_worker W; return 1; }
            stop_worker W
            ;;
        e2 | e3)
            local lb=cache_aware rargs=(--policy cache_aware) targets=2
            [ "$k" = e2 ] && rargs+=(--dp-aware) && targets=4
            start_worker W1 2 $lb
            start_worker W2 2 $lb
            local ok=1
            if wait_worker W1 && wait_worker W2 && start_router $targets "${rargs[@]}"; then
                measure "$out" "$rport" W1 W2 || ok=0
            else
                ok=0
            fi
            stop_router
            stop_worker W1
            stop_worker W2
            [ $ok = 1 ]
            ;;
    esac
}
: > "$tmp/part2.tsv"
for r in $(seq 1 "$rounds"); do
    for k in "${setups[@]}"; do
        out=$tmp/p2-$r-$k
        if run_setup "$k" "$out" && [ -s "$out.json" ]; then
            printf '%s\t%s\t%s\t%s\t\n' "$r" "$k" "${e_label[$k]}" "$out.json" >> "$tmp/part2.tsv"
        else
            echo "prefix.sh: part 2 setup $k round $r failed (logs: worker/router output above)"
            printf '%s\t%s\t%s\t-\t%s\n' "$r" "$k" "${e_label[$k]}" "failed" >> "$tmp/part2.tsv"
        fi
    done
done
echo
echo "## Part 2: \`dpep serve\` (+ sglang-router $router_ver), the same workload as a JSONL, sent all at once"
echo
python3 "$here/prefix_tool.py" part2 "$tmp/part2.tsv" --base "${setups[0]}"
echo
echo "Each setup starts cold (new servers, new router). Servers: \`mpirun -np N dpep serve SERVE.yaml --tp N --dp N" \
    "--ep N --enable-dp-attention --moe-dense-tp-size 1 --load-balance-method LB\` (N = 4, or 2 per instance), SERVE.yaml:"
echo
echo '```yaml'
sed "s|$model|MODEL|" "$tmp/serve.yaml"
echo '```'
echo
echo "Router: \`python -m sglang_router.launch_router --policy cache_aware [--dp-aware] --log-level warn" \
    "${ROUTER_ARGS:+$ROUTER_ARGS }--worker-urls W1 W2\` (defaults: cache threshold 0.3, balance abs 64 / rel 1.5), inside a network" \
    "namespace with only lo. Client: \`bench/serve_load.py PORT GSP.jsonl --concurrency 0 --check\`" \
    "(streaming /generate; TTFT and throughput as the client sees them, wall = first send to last token)." \
    "Hit rate = sum over DP groups of dpep_dp_rank_cached_tokens_total / dpep_dp_rank_prompt_tokens_total" \
    "from each server's /metrics; the router, the client and the ranks share the $(getconf _NPROCESSORS_ONLN) cores."
for f in "$tmp"/router-*.log; do # --log-level warn: anything here is a warning or an error
    [ -s "$f" ] || continue
    echo
    echo "sglang-router said ($(basename "$f"), first lines):"
    sed 's/\x1b\[[0-9;]*m//g' "$f" | head -5 | cut -c1-300
done
echo
echo "Total runtime $((SECONDS - t_start)) s."
