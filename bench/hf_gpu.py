#!/usr/bin/env python3
"""hf_gpu.py — HF transformers on the GPU machine, as the baseline and the
reference of the CUDA backend (issue 16). Two modes:

  time     the HF speed of a model on one GPU: prefill tokens/s over a batch
           of random prompts, and greedy decode tokens/s (KV cache on, EOS
           ignored) at that batch. One JSON line on stdout.
  compare  dpep's output (dpep run --output OUT.jsonl, with logprobs) against
           HF on the same GPU: each request's prompt + dpep's tokens are run
           through HF in one teacher-forced forward; reported: greedy-token
           agreement (HF's argmax at each position vs dpep's token, and the
           first position where they part), and the difference of the
           log-probabilities dpep reported for its tokens against HF's
           (max |diff| and the relative L2 error of the vectors). One JSON
           line on stdout; exit 1 when --max-lp-diff is given and exceeded, or
           when --require-identical and any token differs.

The machine has torch and transformers (>= 5, DeepseekV2/V3 built in) but no
network: the model is a local directory (dpep model gen or the goldens).
  python3 bench/hf_gpu.py time --model DIR --dtype bf16 --batch 1 --input-len 128 --output-len 64
  python3 bench/hf_gpu.py compare --model DIR --dtype fp32 --requests REQ.jsonl --dpep OUT.jsonl
"""
import argparse
import json
import math
import sys
import time


def load(model_dir, dtype_name, device):
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    if dtype_name == "fp32":
        # the fp32 reference must not use TF32 (dpep's CUDA path is pedantic fp32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    kw = dict(attn_implementation="eager")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, experts_implementation="eager", **kw)
    except TypeError:  # older transformers: torch_dtype, no experts_implementation
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, **kw)
    model.to(device).eval()
    return model


def sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def cmd_time(a):
    import torch

    model = load(a.model, a.dtype, a.device)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(0, vocab, (a.batch, a.input_len), generator=g).to(a.device)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        # warm-up: kernels, cuBLAS handles, allocator
        model(input_ids=ids[:, : min(8, a.input_len)], use_cache=False)
        sync(a.device)
        t0 = time.perf_counter()
        for _ in range(a.repeat):
            model(input_ids=ids, use_cache=False)
        sync(a.device)
        t_prefill = (time.perf_counter() - t0) / a.repeat
        gen = dict(max_new_tokens=a.output_len, min_new_tokens=a.output_len, do_sample=False,
                   use_cache=True, pad_token_id=0)
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=2, min_new_tokens=2,
                       do_sample=False, use_cache=True, pad_token_id=0)
        sync(a.device)
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, **gen)
        sync(a.device)
        t_gen = time.perf_counter() - t0
    n_new = out.shape[1] - a.input_len
    # decode time = generate time minus its own prefill (measured above)
    t_decode = max(t_gen - t_prefill, 1e-9)
    res = {
        "model": a.model, "dtype": a.dtype, "device": str(a.device), "batch": a.batch,
        "input_len": a.input_len, "output_len": int(n_new),
        "prefill_s": t_prefill, "prefill_tok_s": a.batch * a.input_len / t_prefill,
        "generate_s": t_gen,
        "decode_tok_s": a.batch * max(n_new - 1, 1) / t_decode,
        "gpu": torch.cuda.get_device_name() if str(a.device).startswith("cuda") else "cpu",
        "torch": torch.__version__,
    }
    import transformers

    res["transformers"] = transformers.__version__
    print(json.dumps(res))
    return 0


def read_jsonl(path):
    rows = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except ValueError as e:
                sys.exit(f"{path}:{n}: not JSON: {e}")
            rows[str(r.get("id", n))] = r
    return rows


def cmd_compare(a):
    import torch

    model = load(a.model, a.dtype, a.device)
    reqs = read_jsonl(a.requests)
    outs = read_jsonl(a.dpep)
    n_tok = n_same = 0
    first_diff = {}
    lp_max = 0.0
    num = den = 0.0
    missing = [k for k in reqs if k not in outs]
    with torch.inference_mode():
        for key, r in reqs.items():
            o = outs.get(key)
            if o is None:
                continue
            prompt, gen = list(r["input_ids"]), list(o["output_ids"])
            lps = o.get("logprobs") or []
            if not gen:
                continue
            ids = torch.tensor([prompt + gen], dtype=torch.long, device=a.device)
            logits = model(input_ids=ids, use_cache=False).logits[0].float()
            lsm = torch.log_softmax(logits, dim=-1)
            for j, tok in enumerate(gen):
                row = len(prompt) - 1 + j
                hf_tok = int(torch.argmax(logits[row]).item())
                n_tok += 1
                if hf_tok == tok:
                    n_same += 1
                elif key not in first_diff:
                    first_diff[key] = j
                if j < len(lps):
                    hf_lp = float(lsm[row, tok].item())
                    d = abs(hf_lp - float(lps[j]))
                    lp_max = max(lp_max, d)
                    num += d * d
                    den += hf_lp * hf_lp
    res = {
        "model": a.model, "dtype": a.dtype, "requests": len(reqs), "missing": missing,
        "tokens": n_tok, "greedy_agree": n_same, "agree_frac": n_same / n_tok if n_tok else None,
        "first_divergence": first_diff, "logprob_max_abs_diff": lp_max,
        "logprob_rel_l2": math.sqrt(num / den) if den > 0 else 0.0,
    }
    print(json.dumps(res))
    bad = bool(missing)
    if a.require_identical and n_same != n_tok:
        bad = True
    if a.max_lp_diff is not None and lp_max > a.max_lp_diff:
        bad = True
    return 1 if bad else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("time")
    c = sub.add_parser("compare")
    for q in (t, c):
        q.add_argument("--model", required=True)
        q.add_argument("--dtype", choices=["fp32", "bf16"], default="bf16")
        q.add_argument("--device", default="cuda")
    t.add_argument("--batch", type=int, default=1)
    t.add_argument("--input-len", type=int, default=128)
    t.add_argument("--output-len", type=int, default=64)
    t.add_argument("--repeat", type=int, default=3)
    t.add_argument("--seed", type=int, default=1)
    c.add_argument("--requests", required=True, help="the JSONL dpep ran (id, input_ids)")
    c.add_argument("--dpep", required=True, help="dpep run --output JSONL (id, output_ids, logprobs)")
    c.add_argument("--max-lp-diff", type=float, default=None)
    c.add_argument("--require-identical", action="store_true")
    a = p.parse_args()
    try:
        import torch  # noqa: F401
    except ImportError:
        print("SKIP: hf_gpu.py needs torch and transformers (the GPU machine has them)")
        return 77
    if str(a.device).startswith("cuda") and not __import__("torch").cuda.is_available():
        print("SKIP: torch sees no CUDA device")
        return 77
    return cmd_time(a) if a.cmd == "time" else cmd_compare(a)


if __name__ == "__main__":
    sys.exit(main())
