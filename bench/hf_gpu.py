#!/usr/bin/env python3
"""hf_gpu.py — HF transformers on the GPU machine, as the baseline and the
reference of the CUDA backend (issue 16). Two modes:

  time     the HF speed of a model on one GPU, both from generate() as users
           run it (greedy, KV cache on, exactly N new tokens: min_new_tokens):
           prefill = generate of 1 token (the prompt's forward with last-position
           logits, best of --repeat), decode = (generate of N - that) over the
           N - 1 one-token steps, at a batch of random prompts; with
           transformers' default attention and MoE kernels (what a user gets),
           not the eager loops compare uses. One JSON line on stdout, a
           summary line on stderr.
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


def load(model_dir, dtype_name, device, reference=True):
    """reference: the eager attention and MoE loops (the goldens' settings, for
    compare); else transformers' own defaults (its fastest built-in kernels:
    the baseline a user gets, for time)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    if dtype_name == "fp32":
        # the fp32 reference must not use TF32 (dpep's CUDA path is pedantic fp32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    kw = dict(attn_implementation="eager") if reference else {}
    ex = dict(experts_implementation="eager") if reference else {}
    try:  # transformers >= 5: dtype=, and the MoE experts loop ("eager") as the reference
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, **ex, **kw)
    except (TypeError, ValueError):  # older transformers: torch_dtype, no experts_implementation
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, **kw)
    # an unknown keyword is kept as a config field by older versions, not refused:
    # check that the weights really are in the dtype asked for
    got = next(model.parameters()).dtype
    if got != dtype:
        print(f"hf_gpu: weights loaded as {got}, converting to {dtype}", file=sys.stderr)
        model.to(dtype)
    model.to(device).eval()
    return model


def sync(device):
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def cmd_time(a):
    import torch

    model = load(a.model, a.dtype, a.device, reference=False)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(a.seed)
    ids = torch.randint(0, vocab, (a.batch, a.input_len), generator=g).to(a.device)
    mask = torch.ones_like(ids)

    def generate(n):
        # greedy, exactly n new tokens (min_new_tokens: EOS cannot end it early), KV cache on
        sync(a.device)
        t0 = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, use_cache=True, pad_token_id=0)
        sync(a.device)
        return time.perf_counter() - t0, out.shape[1] - a.input_len

    with torch.inference_mode():
        generate(2)  # warm-up: kernels, cuBLAS handles, allocator, the cache's code paths
        # prefill: generate of one token is the prompt's forward (last-position logits,
        # the cache filled, as in every generate) and one argmax; the best of `repeat`
        t_prefill = min(generate(1)[0] for _ in range(max(a.repeat, 1)))
        t_gen, n_new = generate(a.output_len)
    # decode: the n_new - 1 one-token steps after the first token
    n_dec = max(int(n_new) - 1, 0)
    t_decode = t_gen - t_prefill
    res = {
        "model": a.model, "dtype": a.dtype, "device": str(a.device), "batch": a.batch,
        "input_len": a.input_len, "output_len": int(n_new),
        "prefill_s": t_prefill, "prefill_tok_s": a.batch * a.input_len / t_prefill,
        "generate_s": t_gen, "decode_s": t_decode,
        "decode_tok_s": a.batch * n_dec / t_decode if n_dec > 0 and t_decode > 0 else None,
        "gpu": torch.cuda.get_device_name() if str(a.device).startswith("cuda") else "cpu",
        "torch": torch.__version__,
    }
    import transformers

    res["transformers"] = transformers.__version__
    print(json.dumps(res), flush=True)
    print("summary: HF %s batch %d: prefill %.1f tok/s, decode %s tok/s" % (
        a.dtype, a.batch, res["prefill_tok_s"],
        "n/a" if res["decode_tok_s"] is None else "%.1f" % res["decode_tok_s"]), file=sys.stderr)
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
    n_lp = 0
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
                    n_lp += 1
                    lp_max = max(lp_max, d)
                    num += d * d
                    den += hf_lp * hf_lp
    res = {
        "model": a.model, "dtype": a.dtype, "requests": len(reqs), "missing": missing,
        "tokens": n_tok, "greedy_agree": n_same, "agree_frac": n_same / n_tok if n_tok else None,
        "first_divergence": first_diff, "logprobs_compared": n_lp, "logprob_max_abs_diff": lp_max,
        "logprob_rel_l2": math.sqrt(num / den) if den > 0 else 0.0,
    }
    print(json.dumps(res), flush=True)
    why = []
    if missing:
        why.append("%d request(s) missing from the dpep output" % len(missing))
    if n_tok == 0:
        why.append("no generated tokens to compare")
    if a.require_identical and n_same != n_tok:
        why.append("greedy tokens differ (%d of %d agree; first divergence %s)" % (n_same, n_tok, first_diff))
    if a.max_lp_diff is not None and n_lp < n_tok:
        why.append("only %d of %d tokens have a dpep logprob" % (n_lp, n_tok))
    if a.max_lp_diff is not None and lp_max > a.max_lp_diff:
        why.append("logprob max |diff| %.2e > %.0e" % (lp_max, a.max_lp_diff))
    if a.min_agree is not None and n_tok and n_same < a.min_agree * n_tok:
        why.append("greedy agreement %.3f < %.2f" % (n_same / n_tok, a.min_agree))
    print("%s: HF %s vs dpep: %d/%d greedy tokens agree, logprob max |diff| %.2e, rel L2 %.2e%s" % (
        "FAIL" if why else "summary", a.dtype, n_same, n_tok, lp_max, res["logprob_rel_l2"],
        ("; " + "; ".join(why)) if why else (", identical" if n_same == n_tok else "")), flush=True)
    return 1 if why else 0


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
    c.add_argument("--min-agree", type=float, default=None,
                   help="fail when fewer than this fraction of HF's teacher-forced argmaxes equal dpep's tokens")
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
