#!/usr/bin/env python3
"""llama_compare_table.py — the table of bench/llama_compare.sh, from the raw
results it left in OUT_DIR (dpep summaries, llama-bench JSON,
llama-batched-bench JSONL, HF JSON, the floor, the token check).

  llama_compare_table.py OUT_DIR

Every figure is the median over the reps (tokens/s); a missing one is "—".
Ratios: dpep / llama.cpp and dpep / HF, for each dpep layout.
"""
import glob
import json
import os
import statistics
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def dpep(d, dt, lay, wl, key):
    return med((load(p) or {}).get(key) for p in sorted(glob.glob(f"{d}/dpep_{dt}_{lay}_{wl}_*.json")))


def traffic_table(d):
    """What each dpep layout streams per decode-only step, from its own
    summaries (decode_weight_bytes_per_step and decode_weight_GBps per rank,
    counted by the engine): the busiest rank bounds the step, so its bytes
    are the layout's memory floor."""
    rows = []
    for dt in ("f32", "bf16"):
        for wl in ("b1", "b16"):
            for lay in ("1x2", "2x1"):
                runs = [load(p) or {} for p in sorted(glob.glob(f"{d}/dpep_{dt}_{lay}_{wl}_*.json"))]
                runs = [r for r in runs if r.get("decode_weight_bytes_per_step")]
                if not runs:
                    continue
                per = [r["decode_weight_bytes_per_step"] for r in runs]
                bw = [r["decode_weight_GBps"] for r in runs]
                busy = [max(range(len(p)), key=lambda i: p[i]) for p in per]
                rows.append((dt, wl, lay, med(p[b] for p, b in zip(per, busy)) / 1e6,
                             " / ".join("%.1f" % (med(p[i] for p in per) / 1e6) for i in range(len(per[0]))),
                             med(g[b] for g, b in zip(bw, busy)), med(r.get("decode_tok_s") for r in runs)))
    if not rows:
        return
    print("\nWeights read per decode-only step, from dpep's summaries (the engine counts each product's"
          " matrix once; medians over the reps): the busiest rank bounds a step.")
    print("\n| dtype | decode | layout | MB per step, busiest rank | MB per step, rank 0 / 1 / … | GB/s on the"
          " busiest rank | tok/s |")
    print("|---|---|---|---:|---|---:|---:|")
    for dt, wl, lay, mb, ranks, g, tok in rows:
        print(f"| {dt} | {wl} | {lay} | {mb:.1f} | {ranks} | {g:.1f} | {fmt(tok)} |")


def llama_rows(d, dt):
    """llama-bench's rows of every rep (llama_bench_DT_REP.json; an older
    run's single llama_bench_DT.json too)."""
    rows = []
    for p in sorted(glob.glob(f"{d}/llama_bench_{dt}.json") + glob.glob(f"{d}/llama_bench_{dt}_*.json")):
        rows += load(p) or []
    return rows


def llama_bench(d, dt, n_prompt, n_gen):
    vals = []
    for r in llama_rows(d, dt):
        if r.get("n_prompt") == n_prompt and r.get("n_gen") == n_gen and not r.get("n_depth"):
            vals += r.get("samples_ts") or [r.get("avg_ts")]
    return med(vals)


def llama_bench_tg(d, dt):
    vals = []
    for r in llama_rows(d, dt):
        if r.get("n_prompt") == 0 and r.get("n_gen", 0) > 0:
            vals += r.get("samples_ts") or [r.get("avg_ts")]
    return med(vals)


def llama_batched(d, dt, key):
    vals = []
    for p in sorted(glob.glob(f"{d}/llama_batched_{dt}_*.jsonl")):
        for line in open(p):
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                if r.get("pl") == 16:
                    vals.append(r.get(key))
    return med(vals)


def ceiling_table(d):
    """Batch-1 decode against the read ceiling taken right before each run
    (ceiling_NAME.json from dpep_linear_perf -c): per run, tok/s x bytes per
    token / that ceiling; median (min-max) over the reps."""
    rows = []
    for dt in ("f32", "bf16"):
        by = load(f"{d}/bytes_{dt}.json")
        if not by:
            continue
        cols, ceils, rw = [], [], []
        runs = [(f"dpep_{dt}_{lay}_b1", lambda p: (load(p) or {}).get("decode_tok_s")) for lay in ("1x2", "2x1")]
        runs.append((f"llama_bench_{dt}", None))
        for stem, get in runs:
            fr = []
            for c in glob.glob(f"{d}/ceiling_{stem}_*.json"):
                ce, rep = load(c), rep_of(c)
                if not ce or rep is None:
                    continue
                ceils.append(ce["read_GBps"])
                rw.append(ce["memcpy_rw_GBps"])
                if get:
                    v = get(f"{d}/{stem}_{rep}.json")
                else:
                    v = llama_by_rep(d, dt, ("bench", 0, None)).get(rep)
                if v:
                    fr.append(v * by["bytes_per_token"] / (ce["read_GBps"] * 1e9))
            fr.sort()
            cols.append(f"{statistics.median(fr):.2f} ({fr[0]:.2f}-{fr[-1]:.2f})" if fr else "—")
        if ceils:
            ceils.sort()
            rows.append((dt, by, f"{statistics.median(ceils):.1f} ({ceils[0]:.1f}-{ceils[-1]:.1f})",
                         f"{statistics.median(rw):.1f}", cols))
    if not rows:
        return
    print("\nBatch-1 decode against the read ceiling taken right before each run (dpep_linear_perf -c 1024"
          " -t 2 -r 3: a C loop summing a 1 GiB buffer on huge pages over 2 threads, best of 3; a decode step"
          " only reads its weights): per run, tok/s × bytes per token ÷ that ceiling, median (min-max) over"
          " the reps.\n")
    print("| decode batch 1 | bytes per token | read ceiling GB/s, median (min-max) | memcpy r+w GB/s, median"
          " | dpep 1×2 | dpep 2×1 | llama.cpp |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for dt, by, ce, rw, cols in rows:
        print(f"| {dt} | {by['bytes_per_token'] / 1e6:.1f} MB | {ce} | {rw} | {' | '.join(cols)} |")


def rep_of(path):
    """The rep number at the end of a raw result's name (…_REP.json[l])."""
    stem = os.path.basename(path).split(".")[0]
    tail = stem.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else None


def dpep_by_rep(d, dt, lay, wl, key):
    out = {}
    for p in glob.glob(f"{d}/dpep_{dt}_{lay}_{wl}_*.json"):
        v = (load(p) or {}).get(key)
        if v is not None and rep_of(p) is not None:
            out[rep_of(p)] = v
    return out


def llama_by_rep(d, dt, kind):
    """llama.cpp's figure of each rep: kind ("bench", n_prompt, n_gen) or
    ("batched", key)."""
    out = {}
    if kind[0] == "bench":
        for p in glob.glob(f"{d}/llama_bench_{dt}_*.json"):
            vals = []
            for r in load(p) or []:
                if r.get("n_prompt") == kind[1] and (r.get("n_gen") == kind[2] or
                                                    (kind[2] is None and r.get("n_gen", 0) > 0)) \
                        and not r.get("n_depth"):
                    vals += r.get("samples_ts") or [r.get("avg_ts")]
            if med(vals) is not None and rep_of(p) is not None:
                out[rep_of(p)] = med(vals)
    else:
        for p in glob.glob(f"{d}/llama_batched_{dt}_*.jsonl"):
            for line in open(p):
                line = line.strip()
                if line.startswith("{"):
                    r = json.loads(line)
                    if r.get("pl") == 16 and r.get(kind[1]) is not None and rep_of(p) is not None:
                        out[rep_of(p)] = r.get(kind[1])
    return out


def paired(a, b):
    """Median (min-max) over the reps of a[rep] / b[rep]: the engines' runs of
    one rep were taken back to back, so a slow spell of a shared machine
    lands on both sides of a ratio."""
    rs = sorted(a[r] / b[r] for r in a if r in b and b[r])
    if not rs:
        return "—"
    return f"{statistics.median(rs):.2f} ({rs[0]:.2f}-{rs[-1]:.2f})"


def fmt(x, nd=1):
    return "—" if x is None else f"{x:.{nd}f}"


def ratio(a, b):
    return "—" if a is None or b is None or b == 0 else f"{a / b:.2f}"


def main():
    d = sys.argv[1]
    hf = {dt: load(f"{d}/hf_{dt}.json") or {} for dt in ("f32", "bf16")}
    rows = [  # label, dtype, dpep (workload, key), HF key, llama.cpp getter
        ("decode, batch 1, f32", "f32", ("b1", "decode_tok_s"), "decode_b1", lambda: llama_bench_tg(d, "f32")),
        ("decode, 16 requests, f32", "f32", ("b16", "decode_tok_s"), "decode_b16",
         lambda: llama_batched(d, "f32", "speed_tg")),
        ("prefill 1 × 32 tokens, f32", "f32", ("b1", "prefill_tok_s"), "prefill_1x32",
         lambda: llama_bench(d, "f32", 32, 0)),
        ("prefill 1 × 512 tokens, f32", "f32", ("p512", "prefill_tok_s"), "prefill_1x512",
         lambda: llama_bench(d, "f32", 512, 0)),
        ("prefill 16 × 128 tokens, f32", "f32", ("b16", "prefill_tok_s"), "prefill_16x128",
         lambda: llama_batched(d, "f32", "speed_pp")),
        ("decode, batch 1, bf16", "bf16", ("b1", "decode_tok_s"), "decode_b1", lambda: llama_bench_tg(d, "bf16")),
        ("decode, 16 requests, bf16", "bf16", ("b16", "decode_tok_s"), "decode_b16",
         lambda: llama_batched(d, "bf16", "speed_tg")),
    ]
    print("| tokens/s | dpep 1 rank × 2 threads | dpep 2 ranks (DPA + EP 2) × 1 thread | HF transformers eager"
          " | llama.cpp | dpep 1×2 / llama.cpp | dpep 2×1 / llama.cpp | dpep 1×2 / HF | dpep 2×1 / HF |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    b1 = {}
    for label, dt, (wl, key), hk, lget in rows:
        a = dpep(d, dt, "1x2", wl, key)
        b = dpep(d, dt, "2x1", wl, key)
        h = hf[dt].get(hk)
        l = lget()
        if wl == "b1" and key == "decode_tok_s":
            b1[dt] = (a, b, l)
        print(f"| {label} | {fmt(a)} | {fmt(b)} | {fmt(h)} | {fmt(l)} | {ratio(a, l)} | {ratio(b, l)} "
              f"| {ratio(a, h)} | {ratio(b, h)} |")

    kinds = {  # the llama.cpp figure of each row, per rep
        "decode, batch 1, f32": ("f32", ("bench", 0, None)), "decode, 16 requests, f32": ("f32", ("batched", "speed_tg")),
        "prefill 1 × 32 tokens, f32": ("f32", ("bench", 32, 0)), "prefill 1 × 512 tokens, f32": ("f32", ("bench", 512, 0)),
        "prefill 16 × 128 tokens, f32": ("f32", ("batched", "speed_pp")),
        "decode, batch 1, bf16": ("bf16", ("bench", 0, None)), "decode, 16 requests, bf16": ("bf16", ("batched", "speed_tg")),
    }
    print("\nPaired ratios: the median (min-max) over the reps of dpep's run ÷ the llama.cpp run taken right"
          " after it (the steadier figure on a shared machine):\n")
    print("| | dpep 1×2 / llama.cpp | dpep 2×1 / llama.cpp |")
    print("|---|---:|---:|")
    for label, dt, (wl, key), hk, lget in rows:
        ldt, kind = kinds[label]
        lr = llama_by_rep(d, ldt, kind)
        print(f"| {label} | {paired(dpep_by_rep(d, dt, '1x2', wl, key), lr)} "
              f"| {paired(dpep_by_rep(d, dt, '2x1', wl, key), lr)} |")

    print("\nThe two layouts, paired: the median (min-max) over the reps of dpep 1 rank × 2 threads ÷ 2 ranks"
          " × 1 thread, the two runs of a figure taken back to back (goal: within 10 %, 0.90-1.10):\n")
    print("| | dpep 1×2 / 2×1 |")
    print("|---|---:|")
    for label, dt, (wl, key), hk, lget in rows:
        print(f"| {label} | {paired(dpep_by_rep(d, dt, '1x2', wl, key), dpep_by_rep(d, dt, '2x1', wl, key))} |")

    reps = len(glob.glob(f"{d}/dpep_f32_1x2_b1_*.json"))
    print(f"\nMedians of {reps} runs per dpep figure; llama-bench -r / llama-batched-bench and HF: the same"
          " count of runs. Decode batch 1: dpep and HF after a 32-token prompt, llama-bench tg from an empty"
          " context; decode of 16: 16 prompts of 128 tokens (llama-batched-bench -npp 128 -npl 16).")

    mc = load(f"{d}/memcpy.json")
    if mc:
        print(f"\nBatch-1 memory floor: memcpy {mc['memcpy_GBps']:.2f} GB/s (numpy copy of a {mc['bytes'] / 2**30:.0f}"
              f" GiB buffer split over {mc['threads']} threads, best of 5; bytes read + written per second, i.e."
              f" {mc.get('copied_GBps', mc['memcpy_GBps'] / 2):.2f} GB/s copied); floor = that / bytes per token")
        floors = [("floor (memcpy r+w)", mc["memcpy_GBps"])]
        if mc.get("read_GBps"):
            floors.append(("read ceiling", mc["read_GBps"]))
            print(f"Read ceiling: {mc['read_GBps']:.2f} GB/s (numpy's BLAS sgemv over a {mc['bytes'] / 2**30:.0f}"
                  " GiB float32 matrix, best of 5: each byte read once, nothing written, as a decode step"
                  " reads its weights); memcpy's read + written rate is not reachable by a read-only loop"
                  " on every machine.")
        print("\n| decode batch 1 | bytes per token (weights + KV) | against | tok/s | dpep 1×2 | fraction"
              " | dpep 2×1 | fraction | llama.cpp | fraction |")
        print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for dt in ("f32", "bf16"):
            by = load(f"{d}/bytes_{dt}.json")
            if not by:
                continue
            a, b, l = b1.get(dt, (None, None, None))
            for name, gbps in floors:
                floor = gbps * 1e9 / by["bytes_per_token"]
                print(f"| {dt} | {by['bytes_per_token'] / 1e6:.1f} MB ({by['active_params'] / 1e6:.1f} M"
                      f" active params × {by['dtype_bytes']} B + {by['kv_bytes'] / 1e6:.2f} MB KV at"
                      f" {by['context']} tokens) | {name} | {floor:.1f} | {fmt(a)} | {ratio(a, floor)}"
                      f" | {fmt(b)} | {ratio(b, floor)} | {fmt(l)} | {ratio(l, floor)} |")

    ceiling_table(d)
    traffic_table(d)

    gl, gh = load(f"{d}/greedy_llama.json"), load(f"{d}/greedy_hf.json")
    dp = None
    for p in sorted(glob.glob(f"{d}/dpep_f32_1x2_b1_*.jsonl"))[:1]:
        dp = json.loads(open(p).readline())
    if gl or gh or dp:
        print("\nToken check (f32, greedy, the 32-token prompt of the batch-1 run):")
        ref = (dp or {}).get("output_ids")
        for name, g in (("llama.cpp", gl), ("HF", gh)):
            if not g or ref is None:
                print(f"- {name}: —")
                continue
            o = g["output_ids"]
            n = min(len(o), len(ref))
            same = next((i for i in range(n) if o[i] != ref[i]), n)
            print(f"- {name} vs dpep: first {same} of {n} tokens equal"
                  + ("" if same == n else f" (position {same}: {o[same]} vs dpep {ref[same]})"))
        if gl and dp and dp.get("logprobs"):
            n = min(len(gl["logprobs"]), len(dp["logprobs"]), len(gl["output_ids"]))
            same = next((i for i in range(n) if gl["output_ids"][i] != dp["output_ids"][i]), n)
            if same:
                diff = max(abs(gl["logprobs"][i] - dp["logprobs"][i]) for i in range(same))
                print(f"- llama.cpp vs dpep: max |log-prob difference| over the equal tokens {diff:.2e}")

    meta = {}
    if os.path.exists(f"{d}/meta.env"):
        for line in open(f"{d}/meta.env"):
            k, _, v = line.rstrip("\n").partition("=")
            meta[k] = v
    ls = open(f"{d}/load_start").read().strip() if os.path.exists(f"{d}/load_start") else "?"
    le = open(f"{d}/load_end").read().strip() if os.path.exists(f"{d}/load_end") else "?"
    print(f"\nMachine: {meta.get('cpu', '?')}, {meta.get('cpus', '?')} CPUs, {meta.get('mem', '?')},"
          f" /dev/shm huge={meta.get('shm_huge') or 'never'};"
          f" date {meta.get('date_utc', '?')}; load average (1/5/15 min) at start {ls}, at end {le}.")
    print(f"Versions: llama.cpp {meta.get('llama_cpp', '?')}; torch {meta.get('torch', '?')}; transformers"
          f" {meta.get('transformers', '?')} (HF attn {hf['f32'].get('attn_implementation', '?')}, experts"
          f" {hf['f32'].get('experts_implementation', '?')}); {meta.get('dpep', '?')} (script tree git {meta.get('dpep_git', '?')});"
          f" {meta.get('blas', '')}")
    comp = []
    for lay in ("1x2", "2x1"):
        for dt in ("f32", "bf16"):
            sm = load(next(iter(sorted(glob.glob(f"{d}/dpep_{dt}_{lay}_b1_*.json"))), "")) or {}
            if "weights_dtype" in sm:
                comp.append(f"{dt} {lay}: {sm['weights_dtype']} weights, {sm.get('threads_per_rank', '?')} threads"
                            f" per rank, {sm.get('cpu_kernels', '?')} kernels"
                            f" (batch-1 products in {sm.get('cpu_linear_m1_order', '?')} order,"
                            f" attention decode core {sm.get('cpu_attn_kernels', '?')})")
    if comp:
        print("dpep compute (from its summary): " + "; ".join(comp) + ".")
    print(f"Raw results: {d}")


if __name__ == "__main__":
    main()
