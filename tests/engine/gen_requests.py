#!/usr/bin/env python3
"""gen_requests.py — a `dpep run` file workload of random token prompts.
  gen_requests.py OUT N MIN_LEN MAX_LEN NEW_TOKENS SEED [PREFIX]
N requests "PREFIX0".."PREFIX(N-1)" (PREFIX default "r"), prompts of
MIN_LEN..MAX_LEN ids in [1, 500), NEW_TOKENS each; Python's random, seeded.
"""
import json
import random
import sys

out, n, lo, hi, new, seed = sys.argv[1], *map(int, sys.argv[2:7])
prefix = sys.argv[7] if len(sys.argv) > 7 else "r"
random.seed(seed)
with open(out, "w") as f:
    for i in range(n):
        k = random.randint(lo, hi)
        f.write(json.dumps({"id": f"{prefix}{i}", "input_ids": [random.randrange(1, 500) for _ in range(k)],
                            "max_new_tokens": new}) + "\n")
