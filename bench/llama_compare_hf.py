#!/usr/bin/env python3
"""llama_compare_hf.py — HF transformers eager on the CPU, the floor column of
bench/llama_compare.sh (issue 19).

  llama_compare_hf.py --model DIR --dtype f32|bf16 --threads 2 --reps 3
      [--decode-len 128] [--prompt-len 32] [--batch 16] [--batch-prompt-len 128]
      [--prefill 1x32,1x512,16x128] [--greedy-ids OUT.json]

The model is loaded as stored (float32 for an F32 checkpoint, bfloat16 for a
BF16 one) with attn_implementation="eager" and the transformers defaults
otherwise (what a user gets on a CPU; no torch.compile), torch on --threads
intra-op threads. Timings come from generate() as users run it (greedy, KV
cache on, min_new_tokens = max_new_tokens so exactly N tokens):
  prefill  generate of 1 new token = one forward of the prompt (1 x 32,
           1 x 512, 16 x 128 tokens): prompt tokens / time
  decode   (generate of N tokens - generate of 1) over the N - 1 one-token
           steps, at batch 1 (a prompt of --prompt-len tokens) and --batch
           (prompts of --batch-prompt-len tokens):
           batch x (N - 1) / time
Each figure is the median of --reps runs, after one untimed warm-up generate. The
prompts are the same fixed random ids (seed 7) the dpep workload uses, so
--greedy-ids writes HF's greedy continuation of the batch-1 prompt for the
token check. One JSON object on stdout.
"""
import argparse
import json
import random
import statistics
import sys
import time


def prompts(n, length, seed, vocab):
    r = random.Random(seed)
    return [[r.randrange(2, vocab) for _ in range(length)] for _ in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--dtype", choices=["f32", "bf16"], required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--decode-len", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=32, help="prompt of the batch-1 decode")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batch-prompt-len", type=int, default=128, help="prompts of the batched decode")
    ap.add_argument("--prefill", default="1x32,1x512,16x128", help="BxL,... ('' for none)")
    ap.add_argument("--greedy-ids")
    a = ap.parse_args()

    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="eager")
    if next(model.parameters()).dtype != dtype:
        sys.exit(f"llama_compare_hf: weights loaded as {next(model.parameters()).dtype}, not {dtype}")
    model.eval()
    vocab = model.config.vocab_size

    def gen(ids, n):
        x = torch.tensor(ids, dtype=torch.long)
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                                 do_sample=False, use_cache=True, pad_token_id=0)
        return time.perf_counter() - t, out[:, x.shape[1]:].tolist()

    memo = {}

    def median_time(ids, n):  # memoized: the 16 x 128 prefill is also the batched decode's first step
        key = (len(ids), len(ids[0]), n)
        if key not in memo:
            memo[key] = statistics.median(gen(ids, n)[0] for _ in range(a.reps))
        return memo[key]

    gen(prompts(1, 8, 1, vocab), 2)  # warm-up: first touch of the weights, allocator
    res = {"engine": "hf", "dtype": a.dtype, "threads": a.threads, "reps": a.reps,
           "torch": torch.__version__, "transformers": transformers.__version__,
           "attn_implementation": getattr(model.config, "_attn_implementation", None),
           "experts_implementation": getattr(model.config, "_experts_implementation", None)}
    for spec in filter(None, a.prefill.split(",")):
        b, l = map(int, spec.split("x"))
        res[f"prefill_{b}x{l}"] = b * l / median_time(prompts(b, l, 7, vocab), 1)
    for b, l in ((1, a.prompt_len), (a.batch, a.batch_prompt_len)):
        ids = prompts(b, l, 7, vocab)
        t1 = median_time(ids, 1)
        tn = median_time(ids, a.decode_len)
        res[f"decode_b{b}"] = b * (a.decode_len - 1) / (tn - t1)
    if a.greedy_ids:
        _, toks = gen(prompts(1, a.prompt_len, 7, vocab), a.decode_len)
        json.dump({"input_ids": prompts(1, a.prompt_len, 7, vocab)[0], "output_ids": toks[0]},
                  open(a.greedy_ids, "w"))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
