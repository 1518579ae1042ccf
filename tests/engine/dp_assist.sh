#!/usr/bin/env bash
# dp_assist.sh — the DP assist (runtime.dp_assist): under DP attention, ranks
# of a node without tokens in a step compute column parts of a busy peer's
# replicated products (and its prefill attention core, head by head).
# `dpep run` on the tiny V3 model, the assist forced on
# with the smallest parts (DPEP_TEST_ASSIST_PARTS=1: the tiny model's
# matrices are too small to be cut otherwise; =2: moreover the owner leaves
# every part to its helpers, so that lending is certain even when a helper
# sleeps), against the same layout with it off: the outputs must be
# bit-identical (tokens equal, log-probs equal), and with =2 the summary
# must show parts lent. Layouts: 2 ranks DPA + EP 2 with one
# request (one owner, one helper, every step) at 1 and 2 threads per rank;
# 4 ranks with 3 requests of different lengths (owners and helpers change
# from step to step, up to three owners); MoE-TP 2 (the shared experts are split: only the
# attention is lent); attention-TP 2 (no assist: the attention is split);
# auto's choice on this machine; the expert pool (runtime.node_experts) on
# against off with the assist on; shared products (every node rank busy
# with a few tokens: each replicated product computed once for the node's
# rows) against the assist on without them; a bad value refused naming the
# field.
#   tests/engine/dp_assist.sh DPEP_BIN
set -uo pipefail
dpep=${1:?dpep binary}
here=$(cd "$(dirname "$0")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn}
tmp=$(mktemp -d /tmp/dpep-assist-XXXXXX)
trap '[ -n "${KEEP_TMP:-}" ] || rm -rf "$tmp"' EXIT
fails=0
"$dpep" model gen --preset tiny --seed 11 "$tmp/m" > /dev/null || { echo "FAIL model gen"; exit 1; }
python3 "$here/gen_requests.py" "$tmp/one.jsonl" 1 21 21 24 5 one
# 3 requests of 4, 12 and 20 new tokens: on 4 ranks one to three are idle
# per step, with one to three owners
python3 - "$tmp/few.jsonl" <<'PY'
import json, random, sys
random.seed(23)
with open(sys.argv[1], "w") as f:
    for i, new in enumerate((4, 12, 20)):
        ids = [random.randrange(1, 500) for _ in range(random.randint(3, 40))]
        f.write(json.dumps({"id": f"f{i}", "input_ids": ids, "max_new_tokens": new}) + "\n")
PY
# a 200-token prompt beside a short one: its prefill's waves (~400 rows a
# rank) run in their own kernels, the decode steps' waves go to the pool
python3 - "$tmp/long.jsonl" <<'PY'
import json, random, sys
random.seed(29)
with open(sys.argv[1], "w") as f:
    for i, (n, new) in enumerate(((200, 6), (10, 12))):
        ids = [random.randrange(1, 500) for _ in range(n)]
        f.write(json.dumps({"id": f"l{i}", "input_ids": ids, "max_new_tokens": new}) + "\n")
PY
# one 200-token prompt (its prefill has an idle peer)
python3 - "$tmp/lone.jsonl" <<'PY'
import json, random, sys
random.seed(31)
with open(sys.argv[1], "w") as f:
    ids = [random.randrange(1, 500) for _ in range(200)]
    f.write(json.dumps({"id": "lone", "input_ids": ids, "max_new_tokens": 6}) + "\n")
PY
# 2 and 4 requests of different lengths: on 2 and 4 ranks every rank is busy
# until the shortest ends (shared products), then owners and helpers
for n in 2 4; do
    python3 - "$tmp/busy$n.jsonl" "$n" <<'PY'
import json, random, sys
random.seed(37)
with open(sys.argv[1], "w") as f:
    for i in range(int(sys.argv[2])):
        ids = [random.randrange(1, 500) for _ in range(random.randint(5, 30))]
        f.write(json.dumps({"id": f"b{i}", "input_ids": ids, "max_new_tokens": 6 + 5 * i}) + "\n")
PY
done
python3 "$here/run_yaml.py" "$tmp/run.yaml" "$tmp/m" "$tmp/one.jsonl" runtime.chunked_prefill_size=4096 \
    runtime.max_running_requests=64 runtime.bind=none launch.gpu_memory_gb=2
field() { # json key
    python3 -c "import json,sys; d=json.load(open(sys.argv[1])).get('dp_assist',{}); print(d.get(sys.argv[2]))" "$@"
}
run() { # name np threads args...
    local name=$1 np=$2 th=$3
    shift 3
    if ! OMP_NUM_THREADS=$th timeout 180 mpirun -np "$np" --oversubscribe --bind-to none --mca btl self,vader \
        "$dpep" run "$tmp/run.yaml" --ignore-eos --quiet --output "$tmp/$name.jsonl" \
        --summary-json "$tmp/$name.json" "$@" > "$tmp/$name.log" 2>&1; then
        echo "FAIL $name: dpep run exited non-zero"; tail -15 "$tmp/$name.log"; fails=$((fails + 1)); return 1
    fi
}
pair() { # name np threads n_requests parts args...: off against forced on, bit-identical
    local name=$1 np=$2 th=$3 n=$4 parts=$5
    shift 5
    run "${name}_off" "$np" "$th" --dp-assist off "$@" || return
    DPEP_TEST_ASSIST_PARTS=$parts run "${name}_on" "$np" "$th" --dp-assist on "$@" || return
    python3 "$here/same_outputs.py" "$tmp/${name}_off.jsonl" "$tmp/${name}_on.jsonl" 0 "$n" \
        "$name: assist on vs off (bit-identical)" || fails=$((fails + 1))
    local en lent off_en
    en=$(field "$tmp/${name}_on.json" enabled)
    lent=$(field "$tmp/${name}_on.json" parts_lent)
    off_en=$(field "$tmp/${name}_off.json" enabled)
    if [ "$en" != True ] || [ "$off_en" != False ] ||
        { [ "$parts" = 2 ] && ! [ "${lent:-0}" -gt 0 ] 2>/dev/null; }; then
        echo "FAIL $name: summary dp_assist: on enabled=$en parts_lent=$lent, off enabled=$off_en"
        fails=$((fails + 1)); return
    fi
    # where lending loses time: present, non-negative
    local w i1 i2
    w=$(field "$tmp/${name}_on.json" wait_parts_s); i1=$(field "$tmp/${name}_on.json" idle_attention_s)
    i2=$(field "$tmp/${name}_on.json" idle_ffn_s)
    if ! python3 -c "import sys; assert all(float(v) >= 0 for v in sys.argv[1:])" "$w" "$i1" "$i2" 2>/dev/null ||
        ! grep -q "per step: owners waited" "$tmp/${name}_on.log"; then
        echo "FAIL $name: dp_assist wait_parts_s=$w idle_attention_s=$i1 idle_ffn_s=$i2"
        fails=$((fails + 1)); return
    fi
    echo "  ok   $name: $(grep '^dp assist:' "$tmp/${name}_on.log")"
}
dpa2=(--tp 2 --dp 2 --ep 2 --enable-dp-attention)
dpa4=(--tp 4 --dp 4 --ep 4 --enable-dp-attention)
echo "DP assist (tiny V3, greedy):"
pair dpa2_one 2 1 1 1 "${dpa2[@]}"
pair dpa2_one_left 2 1 1 2 "${dpa2[@]}"
pair dpa2_one_2thr 2 2 1 2 "${dpa2[@]}"
# the claim protocol under the interleaving that once ended a product one
# part early (a helper reads a finished job's claim word, then the next
# job's descriptor; DPEP_TEST_ASSIST_RACE=1 pauses both sides in that window)
# (helpers take every part: they are in the claim loop when a job ends)
DPEP_TEST_ASSIST_RACE=1 pair dpa2_one_race 2 1 1 2 "${dpa2[@]}"
pair dpa4_few 4 1 3 2 "${dpa4[@]}" --set workload.path="$tmp/few.jsonl"
# prefill in chunks of 16 tokens: the lent prefill cores see a cached prefix
# (pos0 > 0) from the second chunk on
pair dpa2_chunked 2 1 3 2 "${dpa2[@]}" --set workload.path="$tmp/few.jsonl" --set runtime.chunked_prefill_size=16
pair dpa4_moetp2 4 1 3 2 --tp 4 --dp 4 --ep 2 --enable-dp-attention --set workload.path="$tmp/few.jsonl"
# a prompt longer than a segment holds at once (DPEP_TEST_ASSIST_ROWS=100:
# segments of 100 rows): its products and shared experts go in row chunks,
# its prefill core in groups of heads — bit-identical, and the summary
# counts both
rows_pair() { # name threads
    DPEP_TEST_ASSIST_ROWS=100 pair "$1" 2 "$2" 1 2 "${dpa2[@]}" --set workload.path="$tmp/lone.jsonl" || return
    local ch pc pg
    ch=$(field "$tmp/${1}_on.json" rows_chunked); pc=$(field "$tmp/${1}_on.json" prefill_cores)
    pg=$(field "$tmp/${1}_on.json" prefill_head_groups)
    if [ "${ch:-0}" -gt 0 ] 2>/dev/null && [ "${pc:-0}" -gt 0 ] 2>/dev/null &&
        [ "${pg:-0}" -gt "${pc:-0}" ] 2>/dev/null && grep -q "attention cores lent (in" "$tmp/${1}_on.log"; then
        echo "  ok   $1: $(grep -o 'prefill: [0-9]* attention cores.*' "$tmp/${1}_on.log")"
    else
        echo "FAIL $1: rows_chunked=$ch prefill_cores=$pc prefill_head_groups=$pg"; fails=$((fails + 1))
    fi
}
rows_pair dpa2_rows 1
rows_pair dpa2_rows_2thr 2
# the expert pool (runtime.node_experts): the node's routed experts in one
# node-shared window, each rank's expert waves shared out among the node's
# ranks; DPEP_TEST_POOL_LEAVE=1 has a poster leave every part of its waves
# to its peers, so that borrowing is certain. Against the same layout with
# the assist on and the pool off: bit-identical, parts borrowed.
pool_pair() { # name np threads n_requests min_own_waves args...
    local name=$1 np=$2 th=$3 n=$4 min_own=$5
    shift 5
    run "${name}_nopool" "$np" "$th" --dp-assist on --node-experts off "$@" || return
    DPEP_TEST_POOL_LEAVE=1 run "${name}_pool" "$np" "$th" --dp-assist on --node-experts on "$@" || return
    python3 "$here/same_outputs.py" "$tmp/${name}_nopool.jsonl" "$tmp/${name}_pool.jsonl" 0 "$n" \
        "$name: expert pool on vs off (bit-identical)" || fails=$((fails + 1))
    local xb waves bor xb_off own
    xb=$(field "$tmp/${name}_pool.json" node_expert_bytes); waves=$(field "$tmp/${name}_pool.json" pool_waves)
    own=$(field "$tmp/${name}_pool.json" pool_waves_own)
    bor=$(field "$tmp/${name}_pool.json" pool_parts_borrowed)
    xb_off=$(field "$tmp/${name}_nopool.json" node_expert_bytes)
    if ! [ "${xb:-0}" -gt 0 ] 2>/dev/null || ! [ "${waves:-0}" -gt 0 ] 2>/dev/null ||
        ! [ "${bor:-0}" -gt 0 ] 2>/dev/null || [ "$xb_off" != 0 ] || ! [ "${own:--1}" -ge "$min_own" ] 2>/dev/null ||
        ! grep -q "expert pool: routed experts node-shared" "$tmp/${name}_pool.log" ||
        ! grep -q "expert pool: off" "$tmp/${name}_nopool.log"; then
        echo "FAIL $name: summary dp_assist: node_expert_bytes=$xb pool_waves=$waves" \
            "pool_parts_borrowed=$bor pool_waves_own=$own (off: node_expert_bytes=$xb_off)"
        fails=$((fails + 1)); return
    fi
    # the pages the summary reports: all of the window's 2 MiB pages, or none
    # where the kernel gives shared memory none — never a part (a report
    # taken before the peers' segments were mapped said 50 %)
    local hf
    hf=$(field "$tmp/${name}_pool.json" node_expert_huge_fraction)
    if [ "$hf" != None ] && python3 -c "import sys; f = float(sys.argv[1]); sys.exit(0 if 0 < f < 0.99 else 1)" "$hf"; then
        echo "FAIL $name: node_expert_huge_fraction $hf: part of the experts on 2 MiB pages"
        fails=$((fails + 1)); return
    fi
    echo "  ok   $name: $(grep -o 'expert pool: .*' "$tmp/${name}_pool.log") (2 MiB pages: $hf)"
}
pool_pair pool2_one 2 1 1 0 "${dpa2[@]}"
pool_pair pool4_few_2thr 4 2 3 0 "${dpa4[@]}" --set workload.path="$tmp/few.jsonl"
pool_pair pool2_long 2 1 2 1 "${dpa2[@]}" --set workload.path="$tmp/long.jsonl"
# shared products (ROLE_SHARE): with every node rank busy, each registered
# product's column parts are claimed by whoever comes first and computed for
# every rank's rows; against the assist on without them
# (DPEP_TEST_ASSIST_SHARE=0): bit-identical, and the summary counts the
# shared steps and parts. parts=2: node rank 0 leaves every part to its
# peers (its rows certainly computed by another rank).
share_pair() { # name np threads n_requests parts args...
    local name=$1 np=$2 th=$3 n=$4 parts=$5
    shift 5
    DPEP_TEST_ASSIST_SHARE=0 DPEP_TEST_ASSIST_PARTS=1 run "${name}_noshare" "$np" "$th" --dp-assist on "$@" || return
    DPEP_TEST_ASSIST_PARTS=$parts run "${name}_share" "$np" "$th" --dp-assist on "$@" || return
    python3 "$here/same_outputs.py" "$tmp/${name}_noshare.jsonl" "$tmp/${name}_share.jsonl" 0 "$n" \
        "$name: shared products on vs off (bit-identical)" || fails=$((fails + 1))
    local st pr pa st_off w
    st=$(field "$tmp/${name}_share.json" steps_share); pr=$(field "$tmp/${name}_share.json" share_products)
    pa=$(field "$tmp/${name}_share.json" share_parts); w=$(field "$tmp/${name}_share.json" share_wait_s)
    st_off=$(field "$tmp/${name}_noshare.json" steps_share)
    if ! [ "${st:-0}" -gt 0 ] 2>/dev/null || ! [ "${pr:-0}" -ge "$st" ] 2>/dev/null ||
        ! [ "${pa:-0}" -gt 0 ] 2>/dev/null || [ "$st_off" != 0 ] ||
        ! python3 -c "import sys; assert float(sys.argv[1]) >= 0" "$w" 2>/dev/null ||
        ! grep -q "shared products: .* rank-steps with every node rank busy" "$tmp/${name}_share.log"; then
        echo "FAIL $name: summary dp_assist: steps_share=$st share_products=$pr share_parts=$pa" \
            "share_wait_s=$w (off: steps_share=$st_off)"
        fails=$((fails + 1)); return
    fi
    echo "  ok   $name: $(grep -o 'shared products: .*' "$tmp/${name}_share.log")"
}
share_pair share2 2 1 2 1 "${dpa2[@]}" --set workload.path="$tmp/busy2.jsonl"
share_pair share2_left 2 1 2 2 "${dpa2[@]}" --set workload.path="$tmp/busy2.jsonl"
share_pair share2_2thr 2 2 2 2 "${dpa2[@]}" --set workload.path="$tmp/busy2.jsonl"
share_pair share4 4 1 4 2 "${dpa4[@]}" --set workload.path="$tmp/busy4.jsonl"
# against a 1-rank reference too (tokens; log-probs as the layouts' own tolerance)
run ref 1 1 --set workload.path="$tmp/few.jsonl" &&
    { python3 "$here/same_outputs.py" "$tmp/ref.jsonl" "$tmp/dpa4_few_on.jsonl" 1e-5 3 "dpa4 assisted vs 1 rank" ||
        fails=$((fails + 1)); }
# attention-TP 2: the attention is split over the group, nothing to lend
if run atp2_on 4 1 --tp 4 --dp 2 --ep 4 --enable-dp-attention --dp-assist on; then
    en=$(field "$tmp/atp2_on.json" enabled)
    if [ "$en" = False ] && grep -q "^dp assist: *off" "$tmp/atp2_on.log"; then
        echo "  ok   atp2_on: attention-TP 2 keeps the assist off"
    else
        echo "FAIL atp2_on: dp_assist enabled=$en"; fails=$((fails + 1))
    fi
fi
# auto: on when the node's ranks x threads fit its CPUs
if run dpa2_auto 2 1 "${dpa2[@]}"; then
    want=False; [ "$(nproc)" -ge 2 ] && want=True
    en=$(field "$tmp/dpa2_auto.json" enabled)
    if [ "$en" = "$want" ]; then
        echo "  ok   dpa2_auto: enabled=$en on $(nproc) CPUs"
    else
        echo "FAIL dpa2_auto: enabled=$en, expected $want on $(nproc) CPUs"; fails=$((fails + 1))
    fi
fi
# no room in /dev/shm (a 1 MiB tmpfs behind Open MPI's windows; root only):
# auto goes on without the assist, with a warning; on fails naming it
small_shm="$(cd "$here/../comm" && pwd)/with_small_shm.sh"
mp=(mpirun -np 2 --oversubscribe --bind-to none --mca btl self,vader "$dpep" run "$tmp/run.yaml"
    --ignore-eos --quiet "${dpa2[@]}")
OMP_NUM_THREADS=1 bash "$small_shm" 1m "${mp[@]}" --summary-json "$tmp/noroom.json" \
    --output "$tmp/noroom.jsonl" > "$tmp/noroom.log" 2>&1
rc=$?
if [ $rc -eq 77 ]; then
    echo "  skip no room in /dev/shm: $(tail -1 "$tmp/noroom.log")"
else
    en=$(field "$tmp/noroom.json" enabled 2>/dev/null)
    if [ $rc -eq 0 ] && [ "$en" = False ] && grep -q "DP assist off: no room" "$tmp/noroom.log"; then
        echo "  ok   no room in /dev/shm, auto: ran without the assist ($(grep -o 'DP assist off[^(]*' "$tmp/noroom.log" | head -1))"
    else
        echo "FAIL no room, auto: exit $rc, dp_assist enabled=$en"; tail -5 "$tmp/noroom.log"; fails=$((fails + 1))
    fi
    OMP_NUM_THREADS=1 bash "$small_shm" 1m "${mp[@]}" --node-experts on > "$tmp/noroom_x.log" 2>&1
    rc=$?
    if [ $rc -eq 1 ] && grep -q "runtime.node_experts: the node-shared window" "$tmp/noroom_x.log"; then
        echo "  ok   no room in /dev/shm, node_experts on: exit 1, $(grep -o "runtime.node_experts: the node-shared window[^:]*" "$tmp/noroom_x.log" | head -1)"
    else
        echo "FAIL no room, node_experts on: exit $rc"; tail -5 "$tmp/noroom_x.log"; fails=$((fails + 1))
    fi
    OMP_NUM_THREADS=1 bash "$small_shm" 1m "${mp[@]}" --dp-assist on > "$tmp/noroom_on.log" 2>&1
    rc=$?
    if [ $rc -eq 1 ] && grep -q "DP assist's node-shared segments" "$tmp/noroom_on.log"; then
        echo "  ok   no room in /dev/shm, on: exit 1, $(grep -o "the DP assist's node-shared segments[^)]*)" "$tmp/noroom_on.log" | head -1)"
    else
        echo "FAIL no room, on: exit $rc"; tail -5 "$tmp/noroom_on.log"; fails=$((fails + 1))
    fi
fi
# the memory plan shows the assist's segment where it can run, not elsewhere
seg() { "$dpep" plan "$tmp/run.yaml" --json "$@" |
    python3 -c "import json,sys; print(int(json.load(sys.stdin)['dp_assist_segment_bytes']))"; }
s_on=$(seg "${dpa2[@]}"); s_off=$(seg "${dpa2[@]}" --dp-assist off); s_atp=$(seg --tp 4 --dp 2 --ep 4 --enable-dp-attention)
if [ "${s_on:-0}" -gt 0 ] 2>/dev/null && [ "$s_off" = 0 ] && [ "$s_atp" = 0 ] &&
    "$dpep" plan "$tmp/run.yaml" "${dpa2[@]}" | grep -q "dp assist segment"; then
    echo "  ok   plan: dp assist segment $s_on B per rank (off: $s_off, attention-TP 2: $s_atp)"
else
    echo "FAIL plan: dp_assist_segment_bytes on=$s_on off=$s_off atp2=$s_atp"; fails=$((fails + 1))
fi
# the plan shows the node's expert window where the pool can run
xbytes() { "$dpep" plan "$tmp/run.yaml" --json "$@" |
    python3 -c "import json,sys; print(int(json.load(sys.stdin)['node_experts_bytes']))"; }
x_on=$(xbytes "${dpa2[@]}"); x_off=$(xbytes "${dpa2[@]}" --node-experts off); x_na=$(xbytes "${dpa2[@]}" --dp-assist off)
if [ "${x_on:-0}" -gt 0 ] 2>/dev/null && [ "$x_off" = 0 ] && [ "$x_na" = 0 ] &&
    "$dpep" plan "$tmp/run.yaml" "${dpa2[@]}" | grep -q "node experts:"; then
    echo "  ok   plan: node experts $x_on B per rank (node_experts off: $x_off, dp_assist off: $x_na)"
else
    echo "FAIL plan: node_experts_bytes on=$x_on off=$x_off dp_assist_off=$x_na"; fails=$((fails + 1))
fi
# a bad value names the field
out=$("$dpep" config check "$tmp/run.yaml" --set runtime.dp_assist=sometimes 2>&1); rc=$?
if [ $rc -eq 2 ] && grep -q "runtime.dp_assist" <<< "$out"; then
    echo "  ok   runtime.dp_assist=sometimes refused (exit 2): $(head -1 <<< "$out")"
else
    echo "FAIL runtime.dp_assist=sometimes: exit $rc: $out"; fails=$((fails + 1))
fi
[ $fails -eq 0 ] && echo "dp_assist: all passed" || echo "FAIL dp_assist: $fails check(s)"
[ $fails -eq 0 ]
