#!/usr/bin/env python3
"""close_outputs.py — two `dpep run --output` files that should agree up to
rounding (e.g. a BF16 KV cache against the f32 one, or across layouts with
it): over each request's tokens before its first differing token, the
log-probabilities' |difference| has a median <= MED, a 90th percentile <=
P90 and a maximum <= MAX (a MoE router may flip an expert for one token,
which moves that token's log-prob more than rounding does). With
--same-tokens every request must keep all its tokens; with --differ some
log-prob must differ (the rounding is really on). Prints one line (`  ok  `
or `FAIL`), exits 0 or 1.
  close_outputs.py A.jsonl B.jsonl N LABEL MED P90 MAX [--same-tokens] [--differ]
"""
import json
import sys


def main():
    pa, pb, n, label = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    med_tol, p90_tol, max_tol = (float(x) for x in sys.argv[5:8])
    flags = set(sys.argv[8:])
    a = {r["id"]: r for r in map(json.loads, open(pa))}
    b = {r["id"]: r for r in map(json.loads, open(pb))}
    diffs, n_same = [], 0
    for k in a:
        if k not in b:
            continue
        x, y = a[k], b[k]
        m = 0
        while m < min(len(x["output_ids"]), len(y["output_ids"])) and x["output_ids"][m] == y["output_ids"][m]:
            m += 1
        n_same += m == len(x["output_ids"]) == len(y["output_ids"])
        diffs += [abs(p - q) for p, q in zip(x["logprobs"][:m], y["logprobs"][:m])]
    diffs.sort()
    pick = lambda q: diffs[min(len(diffs) - 1, int(q * len(diffs)))] if diffs else float("inf")
    med, p90, mx = pick(0.5), pick(0.9), (diffs[-1] if diffs else float("inf"))
    ok = len(a) == len(b) == n and med <= med_tol and p90 <= p90_tol and mx <= max_tol
    if "--same-tokens" in flags:
        ok = ok and n_same == n
    if "--differ" in flags:
        ok = ok and mx > 0
    print("%s %s: %d/%d requests with the same tokens; over the %d tokens before a first difference "
          "|d logprob| median %.1e (<= %g), p90 %.1e (<= %g), max %.1e (<= %g)%s"
          % ("  ok  " if ok else "FAIL", label, n_same, len(a), len(diffs), med, med_tol, p90, p90_tol,
             mx, max_tol, ", > 0" if "--differ" in flags else ""))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
