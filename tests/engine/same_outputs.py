#!/usr/bin/env python3
"""same_outputs.py — two `dpep run --output` files against each other: every
request of A in B with the same output tokens, and their log-probabilities
within TOL. Prints one line (`  ok  ` or `FAIL`), exits 0 or 1.
  same_outputs.py A.jsonl B.jsonl TOL N LABEL   (N: the requests expected)
"""
import json
import sys


def main():
    pa, pb, tol, n, label = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    a = {r["id"]: r for r in map(json.loads, open(pa))}
    b = {r["id"]: r for r in map(json.loads, open(pb))}
    bad = [k for k in a if k not in b or a[k]["output_ids"] != b[k]["output_ids"]]
    err = max((abs(x - y) for k in a if k in b for x, y in zip(a[k]["logprobs"], b[k]["logprobs"])),
              default=0.0)
    ok = not bad and len(a) == len(b) == n and err <= tol
    print("%s %s: %d/%d requests with the same tokens, logprobs max |diff| %.1e (<= %g)"
          % ("  ok  " if ok else "FAIL", label, len(a) - len(bad), len(a), err, tol))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
