#!/usr/bin/env python3
"""llama_compare_floor.py — the batch-1 decode memory floor of
bench/llama_compare.sh (issue 19).

  llama_compare_floor.py memcpy [--threads 2] [--gib 1]
      memcpy bandwidth: numpy copies of a GiB buffer (src and dst touched
      first), split in --threads contiguous parts copied by as many Python
      threads at once (numpy releases the GIL for the copy); best of 5.
      Reported as memory traffic, bytes read + bytes written per second (2 x
      the buffer per copy, STREAM's convention for Copy), and as bytes copied
      per second: one JSON object. Also the read bandwidth: a matrix-vector
      product (numpy's BLAS sgemv, its default threads) over a float32 matrix
      of the same size, which reads each byte once and writes nothing — the
      ceiling of a decode step, which only reads its weights.
  llama_compare_floor.py bytes MODEL_DIR --dtype-bytes 4|2 --context N
      bytes read per decoded token at batch 1, from MODEL_DIR/config.json:
      the weights of one token's active path at the stored dtype (per layer
      the MLA projections and norms, the dense FFN of the first
      first_k_dense_replace layers, else the router + the top-k routed and the
      shared experts; the final norm, the lm_head and one embedding row), plus
      the KV read by attention at N tokens of context (dpep's MLA cache: the
      compressed kv_lora_rank + qk_rope_head_dim values per layer, float32).
"""
import json
import sys
import threading
import time


def active_weights(c):
    h, H = c["hidden_size"], c["num_attention_heads"]
    nope, rope, vd = c["qk_nope_head_dim"], c["qk_rope_head_dim"], c["v_head_dim"]
    qr, kvr = c.get("q_lora_rank"), c["kv_lora_rank"]
    if qr:
        attn = h * qr + qr + qr * H * (nope + rope)
    else:
        attn = h * H * (nope + rope)
    attn += h * (kvr + rope) + kvr + kvr * H * (nope + vd) + H * vd * h + 2 * h  # + input/post norms
    dense = 3 * h * c["intermediate_size"]
    moe = (c["n_routed_experts"] * h + c["n_routed_experts"]  # router and its correction bias
           + (c["num_experts_per_tok"] + c.get("n_shared_experts", 0)) * 3 * h * c["moe_intermediate_size"])
    L, k = c["num_hidden_layers"], c.get("first_k_dense_replace", 0)
    parts = {"attention": L * attn, "dense_ffn": k * dense, "moe_active": (L - k) * moe,
             "lm_head": c["vocab_size"] * h, "embed_row_and_norm": 2 * h}
    return parts


def cmd_bytes(argv):
    model, db, ctx = argv[0], int(argv[argv.index("--dtype-bytes") + 1]), int(argv[argv.index("--context") + 1])
    c = json.load(open(f"{model}/config.json"))
    parts = active_weights(c)
    params = sum(parts.values())
    kv = ctx * c["num_hidden_layers"] * (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * 4
    print(json.dumps({"active_params": params, "parts_params": parts, "dtype_bytes": db,
                      "weight_bytes": params * db, "kv_bytes": kv, "context": ctx,
                      "bytes_per_token": params * db + kv}))


def cmd_memcpy(argv):
    import numpy as np
    threads = int(argv[argv.index("--threads") + 1]) if "--threads" in argv else 2
    gib = float(argv[argv.index("--gib") + 1]) if "--gib" in argv else 1.0
    n = int(gib * 2**30)
    src = np.ones(n, dtype=np.uint8)
    dst = np.full(n, 2, dtype=np.uint8)
    cuts = [n * i // threads for i in range(threads + 1)]

    def part(i):
        np.copyto(dst[cuts[i]:cuts[i + 1]], src[cuts[i]:cuts[i + 1]])

    best = float("inf")
    for _ in range(5):
        ts = [threading.Thread(target=part, args=(i,)) for i in range(threads)]
        t = time.perf_counter()
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        best = min(best, time.perf_counter() - t)
    del dst
    mat = np.frombuffer(src, dtype=np.float32).reshape(-1, 1024)
    vec = np.ones(1024, dtype=np.float32)
    best_r = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        mat.dot(vec)
        best_r = min(best_r, time.perf_counter() - t)
    print(json.dumps({"threads": threads, "bytes": n, "best_s": best, "memcpy_GBps": 2 * n / best / 1e9,
                      "copied_GBps": n / best / 1e9, "read_GBps": n / best_r / 1e9}))


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("memcpy", "bytes"):
        sys.exit(__doc__)
    (cmd_memcpy if sys.argv[1] == "memcpy" else cmd_bytes)(sys.argv[2:])
