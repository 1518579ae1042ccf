#!/usr/bin/env bash
# layouts.sh — `dpep run` on the tiny V3 reference model (tests/reference/
# deepseek_v3_tiny) with a JSONL workload of the three golden prompts (each
# twice; the copies pinned to DP rank 0 for skew, so some DP ranks idle),
# greedy, 16 new tokens, EOS ignored, chunked prefill of 16 tokens. Every
# layout must give the HF golden tokens (and so the same as 1 rank).
#   tests/engine/layouts.sh DPEP_BIN SRC_DIR [--long | --twonode | --device-comms | --cuda]
# The fast part (11 runs, ~7 s on 2 cores) is the CTest `engine_layouts`.
# --long adds 96 ranks (tp 96, dp 96, ep 96, dense FFN data-parallel) on a
# generated model with 96 experts and 96 heads (no golden: tokens must equal
# its 1-rank run). --twonode runs only tp 4 dp 4 DPA ep 4 on two nodes (2 ranks
# each) built by tests/twonode/twonode.sh (network namespaces, TCP over a veth;
# exit 77 where the machine cannot) — the CTest `engine_twonode`.
# --device-comms runs the fast part with DPEP_TEST_DEVICE_COMMS=1: the comms
# and MoE transports a GPU job takes (mpi-staged TP / allgather comms, the
# ipc and mpi-staged transports), on the CPU — the CTest
# `engine_layouts_device_comms` (issue 17: the GPU engine's multi-rank path
# but its kernels). --cuda runs the fast part on the GPU(s) there are, the
# ranks sharing them (runtime.ranks_per_gpu 4): scripts/gpu-check.sh.
set -uo pipefail
dpep=${1:?dpep binary}
src=$(cd "${2:?source dir}" && pwd)
dpep=$(cd "$(dirname "$dpep")" && pwd)/$(basename "$dpep")
long=${3:-}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=1 DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn}
tmp=$(mktemp -d /tmp/dpep-layouts-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
model=$src/tests/reference/deepseek_v3_tiny
python3 - "$model" "$tmp" <<'PY'
import array, json, math, struct, sys
model, tmp = sys.argv[1], sys.argv[2]
g = json.load(open(model + "/golden.json"))["prompts"]
# The log-softmax of each greedy token from transformers' logits of the prompt
# plus its continuation (p*.seq_logits [len + 16, vocab], fp32).
raw = open(model + "/golden.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
def tensor(name):
    t = hdr[name]; b, e = t["data_offsets"]
    a = array.array("f"); a.frombytes(raw[8 + n + b:8 + n + e])
    return a, t["shape"]
with open(tmp + "/work.jsonl", "w") as f, open(tmp + "/expect.json", "w") as e:
    exp, lps = {}, {}
    for p in ("p0", "p1", "p2"):
        lg, (rows, vocab) = tensor(p + ".seq_logits")
        plen = len(g[p]["input_ids"])
        lp = []
        for j, tok in enumerate(g[p]["greedy"]):
            row = lg[(plen - 1 + j) * vocab:(plen + j) * vocab]
            mx = max(row)
            lp.append(row[tok] - mx - math.log(sum(math.exp(x - mx) for x in row)))
        for copy in range(2):
            rid = f"{p}-{copy}"
            r = {"id": rid, "input_ids": g[p]["input_ids"], "max_new_tokens": 16}
            if copy: r["data_parallel_rank"] = 0
            f.write(json.dumps(r) + "\n")
            exp[rid] = g[p]["greedy"]
            lps[rid] = lp
    json.dump({"tokens": exp, "logprobs": lps}, e)
PY
cat > "$tmp/run.yaml" <<YAML
model:
  path: $model
parallel:
  tp: 1
runtime:
  device: $([ "$long" = --cuda ] && echo cuda || echo cpu)
  ranks_per_gpu: $([ "$long" = --cuda ] && echo 4 || echo 1)
  page_size: 16
  chunked_prefill_size: 16
  max_running_requests: 8
  comm_timeout_s: 60
  bind: none
launch:
  gpu_memory_gb: 1
workload:
  kind: file
  path: $tmp/work.jsonl
YAML
fails=0
check() { # name jsonl expect.json: tokens identical, logprobs within 1e-4
    python3 - "$2" "$3" <<'PY'
import json, sys
e = json.load(open(sys.argv[2]))
exp, lps = e["tokens"], e.get("logprobs")
got, glp = {}, {}
for line in open(sys.argv[1]):
    r = json.loads(line); got[r["id"]] = r["output_ids"]; glp[r["id"]] = r.get("logprobs")
bad = [k for k in exp if got.get(k) != exp[k]]
err = 0.0
if lps:
    for k in exp:
        if glp.get(k) is None or len(glp[k]) != len(lps[k]): err = float("inf"); continue
        err = max([err] + [abs(a - b) for a, b in zip(glp[k], lps[k])])
print("%d/%d requests identical to the HF goldens%s, logprobs max |diff| %.1e" % (
    len(exp) - len(bad), len(exp), (" (differ: " + ", ".join(bad) + ")") if bad else "", err))
sys.exit(1 if bad or err > 1e-4 else 0)
PY
}
run() { # name np [--expect-moe TEXT] args...
    local name=$1 np=$2 moe_text=
    shift 2
    if [ "${1:-}" = --expect-moe ]; then moe_text=$2; shift 2; fi
    local out=$tmp/$name.jsonl t0=$SECONDS
    if ! timeout 90 mpirun -np "$np" --oversubscribe --bind-to none --mca btl self,vader \
        "$dpep" run "$tmp/run.yaml" --ignore-eos --quiet --output "$out" "$@" > "$tmp/$name.log" 2>&1; then
        echo "FAIL $name: dpep run exited non-zero; log:"; tail -20 "$tmp/$name.log"; fails=$((fails + 1)); return
    fi
    local verdict
    if [ -n "$moe_text" ] && ! grep -q "^layout: .*moe $moe_text\$" "$tmp/$name.log"; then
        echo "FAIL $name: the summary does not say 'moe $moe_text':"; grep '^layout:' "$tmp/$name.log"
        fails=$((fails + 1)); return
    fi
    if verdict=$(check "$name" "$out" "$tmp/expect.json"); then
        printf '  ok   %-34s np %-2s %3ss  %s\n' "$name" "$np" $((SECONDS - t0)) "$verdict"
    else
        printf 'FAIL %-34s np %-2s %s\n' "$name" "$np" "$verdict"; fails=$((fails + 1))
    fi
}
if [ "$long" = --twonode ]; then
    # Two nodes: the same golden check, ranks spread 2 + 2 over two namespaces.
    out=$tmp/twonode.jsonl
    bash "$src/tests/twonode/twonode.sh" --np-per-node 2 --min-bytes 65536 --timeout 120 -- \
        "$dpep" run "$tmp/run.yaml" --ignore-eos --quiet --output "$out" --tp 4 --dp 4 --ep 4 \
        --enable-dp-attention --nnodes 2 > "$tmp/twonode.log" 2>&1
    rc=$?
    if [ $rc = 77 ]; then grep '^SKIP' "$tmp/twonode.log"; exit 77; fi
    grep -E '^twonode: (nodes|PASS)|crossed the veth' "$tmp/twonode.log"
    if [ $rc != 0 ]; then echo "FAIL two-node dpep run (exit $rc)"; tail -30 "$tmp/twonode.log"; exit 1; fi
    # the EP group spans the two nodes: auto picks MPI for dispatch/combine
    if ! grep -q '^layout: .*moe alltoall over MPI$' "$tmp/twonode.log"; then
        echo "FAIL two-node run: the summary does not say 'moe alltoall over MPI'"
        grep '^layout:' "$tmp/twonode.log"; exit 1
    fi
    if v=$(check twonode "$out" "$tmp/expect.json"); then
        echo "  ok   tp4_dp4_dpa_ep4 on 2 nodes: $v"; echo "1 passed, 0 failed"; exit 0
    fi
    echo "FAIL tp4_dp4_dpa_ep4 on 2 nodes: $v"; echo "0 passed, 1 failed"; exit 1
fi
# The node-shared transport needs room in /dev/shm (a container with a small
# --shm-size has little): without 512 MB free, do not insist on it.
shm_room=1
avail_kb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')
if [ -z "$avail_kb" ] || [ "$avail_kb" -lt 500000 ]; then
    shm_room=0; echo "note: /dev/shm has ${avail_kb:-no} KB free: shm transport not expected"
fi
shm_moe() { [ $shm_room = 1 ] && echo "alltoall over node-shared memory" || echo ""; }
shm_flag() { [ $shm_room = 1 ] && echo shm || echo auto; }
if [ "$long" = --device-comms ] || [ "$long" = --cuda ]; then
    [ "$long" = --device-comms ] && export DPEP_TEST_DEVICE_COMMS=1
    # auto's device transport is ipc (its segments node-shared memory here)
    shm_moe() { [ $shm_room = 1 ] && echo "alltoall over CUDA IPC" || echo ""; }
    shm_flag() { echo auto; }
    [ "$long" = --cuda ] && echo "(runtime.device cuda, 4 ranks per GPU)" ||
        echo "(DPEP_TEST_DEVICE_COMMS=1: the GPU job's comms and MoE transports, on the CPU)"
fi
mpi_moe() { case "$long" in --device-comms|--cuda) echo "alltoall over MPI (staged through the host)";;
            *) echo "alltoall over MPI";; esac; }
echo "engine layouts on $model (4 heads, 16 experts, moe_inter 32, dense inter 128):"
run 1rank 1
run tp4_vanilla_ep1_moetp4 4 --tp 4
run tp4_vanilla_ep4 4 --tp 4 --ep 4
run tp4_dp4_dpa_ep4 4 --expect-moe "$(shm_moe)" --tp 4 --dp 4 --ep 4 --enable-dp-attention
run tp4_dp4_dpa_ep4_mpi 4 --expect-moe "$(mpi_moe)" --tp 4 --dp 4 --ep 4 --enable-dp-attention \
    --moe-a2a-transport mpi
run tp4_dp2_dpa_ep4_attntp2 4 --tp 4 --dp 2 --ep 4 --enable-dp-attention
run tp4_dp4_dpa_ep2_moetp2 4 --expect-moe "$(shm_moe)" --tp 4 --dp 4 --ep 2 \
    --enable-dp-attention --moe-a2a-transport "$(shm_flag)"
run dp2_replicas_x_tp2_ep2 4 --tp 2 --dp 2 --ep 2
run tp4_dp4_dpa_ep4_allgather 4 --tp 4 --dp 4 --ep 4 --enable-dp-attention --moe-a2a-backend allgather
run tp4_dp4_dpa_ep4_dense_tp1 4 --tp 4 --dp 4 --ep 4 --enable-dp-attention --moe-dense-tp-size 1
run tp4_dp4_dpa_ep4_dense_null 4 --tp 4 --dp 4 --ep 4 --enable-dp-attention --set parallel.moe_dense_tp_size=null
run tp4_dp2_dpa_kv48_waits 4 --tp 4 --dp 2 --ep 2 --enable-dp-attention --max-kv-tokens 48 --max-running-requests 2
if [ "$long" = --device-comms ] || [ "$long" = --cuda ]; then
    # the attention-TP and dense comms moved device rows through host staging
    if grep -q '^comms: .*attn_tp mpi-staged.*dense mpi-staged' "$tmp/tp4_dp2_dpa_ep4_attntp2.log"; then
        echo "  ok   staged comms named in the summary: $(grep '^comms:' "$tmp/tp4_dp2_dpa_ep4_attntp2.log")"
    else
        echo "FAIL tp4_dp2_dpa_ep4_attntp2: the summary does not name the staged comms:"
        grep -E '^(layout|comms):' "$tmp/tp4_dp2_dpa_ep4_attntp2.log"; fails=$((fails + 1))
    fi
fi
if [ "$long" = --long ]; then
    gen=$tmp/v3-96
    "$dpep" model gen --arch deepseek_v3 --preset tiny --seed 3 --set n_routed_experts=96 --set n_group=8 \
        --set topk_group=4 --set num_attention_heads=96 "$gen" > /dev/null || { echo "FAIL model gen"; exit 1; }
    sed "s|path: $model|path: $gen|" "$tmp/run.yaml" > "$tmp/run96.yaml"
    base=$tmp/96-1rank.jsonl
    timeout 300 mpirun -np 1 "$dpep" run "$tmp/run96.yaml" --ignore-eos --quiet --output "$base" > /dev/null 2>&1
    python3 - "$base" "$tmp/expect96.json" <<'PY'
import json, sys
rs = [json.loads(l) for l in open(sys.argv[1])]
json.dump({"tokens": {r["id"]: r["output_ids"] for r in rs},
           "logprobs": {r["id"]: r["logprobs"] for r in rs}}, open(sys.argv[2], "w"))
PY
    t0=$SECONDS
    if timeout 600 mpirun -np 96 --oversubscribe --bind-to none --mca btl self,vader "$dpep" run "$tmp/run96.yaml" \
        --ignore-eos --quiet --output "$tmp/96.jsonl" --tp 96 --dp 96 --ep 96 --enable-dp-attention \
        --moe-dense-tp-size 1 \
        > "$tmp/96.log" 2>&1 && v=$(check 96 "$tmp/96.jsonl" "$tmp/expect96.json"); then
        echo "  ok   tp96_dp96_ep96 ($((SECONDS - t0)) s): ${v/HF goldens/1-rank run}"
    else
        echo "FAIL tp96_dp96_ep96"; tail -20 "$tmp/96.log"; fails=$((fails + 1))
    fi
fi
[ $fails -eq 0 ] && echo "PASSED" || echo "FAILED ($fails)"
[ $fails -eq 0 ]
