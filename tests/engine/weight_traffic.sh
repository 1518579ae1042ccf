#!/usr/bin/env bash
# weight_traffic.sh — what a decode step streams, as the run summary reports
# it (issue 19: the memory floor of a layout): "decode weights: N MB read per
# decode-only step on the busiest rank" and --summary-json's
# decode_weight_bytes_per_step (one entry per rank). With one request, every
# decode-only step reads each attention matrix, the dense FFN, each MoE
# layer's router, top-k routed experts and shared experts, and the lm_head
# exactly once (the router in f32 whatever the matrices' type), so the count
# must equal that sum computed from config.json:
#   - tiny V3 and V2, one rank, f32 and bf16 matrices (bytes of the stored type);
#   - 2 ranks, DP attention + EP 2 (dense FFN split over the instance, lm_head
#     vocabulary-parallel): the ranks' counts add up to the same sum, and the
#     rank holding the request is the busiest (it reads the attention alone).
#   tests/engine/weight_traffic.sh DPEP_BIN
set -uo pipefail
dpep=${1:?dpep binary}
here=$(cd "$(dirname "$0")" && pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
export DPEP_LOG_LEVEL=${DPEP_LOG_LEVEL:-warn} OMP_NUM_THREADS=1
tmp=$(mktemp -d /tmp/dpep-wtraffic-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0
python3 "$here/gen_requests.py" "$tmp/one.jsonl" 1 5 12 12 33
for arch in deepseek_v3 deepseek_v2; do
    "$dpep" model gen --arch $arch --preset tiny --seed 5 "$tmp/$arch" > /dev/null ||
        { echo "FAIL model gen $arch"; exit 1; }
    python3 "$here/run_yaml.py" "$tmp/$arch.yaml" "$tmp/$arch" "$tmp/one.jsonl"
done
check() { # name arch np dtype_bytes [args...]
    local name=$1 arch=$2 np=$3 tb=$4
    shift 4
    if ! timeout 120 mpirun -np "$np" --bind-to none --oversubscribe "$dpep" run "$tmp/$arch.yaml" \
        --ignore-eos --output "$tmp/$name.jsonl" --summary-json "$tmp/$name.json" "$@" \
        > "$tmp/$name.log" 2>&1; then
        echo "FAIL $name: dpep run exited non-zero"; tail -15 "$tmp/$name.log"; fails=$((fails + 1)); return
    fi
    python3 - "$tmp/$arch/config.json" "$tmp/$name.json" "$tmp/$name.log" "$tb" "$name" <<'PY' ||
import json, sys
c = json.load(open(sys.argv[1])); s = json.load(open(sys.argv[2])); log = open(sys.argv[3]).read()
tb, name = int(sys.argv[4]), sys.argv[5]
H, nh, ql, kl = c["hidden_size"], c["num_attention_heads"], c.get("q_lora_rank"), c["kv_lora_rank"]
nope, rope, v = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
attn = (ql * H + nh * (nope + rope) * ql if ql else nh * (nope + rope) * H) \
    + (kl + rope) * H + nh * (nope + v) * kl + H * nh * v
L, fk = c["num_hidden_layers"], c["first_k_dense_replace"]
mi, ffn = c["moe_intermediate_size"], 3 * H
moe = (c["num_experts_per_tok"] + c["n_shared_experts"]) * ffn * mi
router = 4 * c["n_routed_experts"] * H  # the router stays f32 (the gate's scores, as in HF)
want = tb * (L * attn + fk * ffn * c["intermediate_size"] + (L - fk) * moe + c["vocab_size"] * H) \
    + (L - fk) * router
per = s.get("decode_weight_bytes_per_step") or []
got = sum(per)
ok = abs(got - want) < 0.5 and "decode weights:" in log
busy = s.get("decode_weight_busiest_rank")
if len(per) > 1:  # the rank with the request reads the attention alone
    ok = ok and per[busy] == max(per) and min(per) < max(per) and min(per) > 0
print("%s %-10s %d rank(s): %s bytes per decode step (sum), want %d%s" % (
    "  ok  " if ok else "FAIL", name, len(per), " + ".join("%.0f" % x for x in per), want,
    "; busiest rank %s" % busy if len(per) > 1 else ""))
sys.exit(0 if ok else 1)
PY
        fails=$((fails + 1))
}
echo "weights read per decode step vs the sum from config.json (one request):"
check v3_f32 deepseek_v3 1 4
check v3_bf16 deepseek_v3 1 2 --set model.dtype=bf16
check v2_f32 deepseek_v2 1 4
check v3_dpa deepseek_v3 2 4 --tp 2 --dp 2 --ep 2 --enable-dp-attention
check v2_dpa_bf16 deepseek_v2 2 2 --tp 2 --dp 2 --ep 2 --enable-dp-attention --set model.dtype=bf16
[ $fails -eq 0 ] && echo "weight_traffic: all passed" || echo "FAIL weight_traffic: $fails check(s)"
[ $fails -eq 0 ]
