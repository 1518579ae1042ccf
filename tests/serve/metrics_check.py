#!/usr/bin/env python3
"""metrics_check.py — GET /metrics of a real `dpep serve` job that has served
requests and is now idle:

    metrics_check.py PORT DP_GROUPS NAME

  - well-formed Prometheus text, a TYPE for every family;
  - SGLang's names: requests and token counters moved, nothing running or
    queued once idle, the KV pools holding only the prefix cache, the hit
    rate equal to cached / prompt tokens (the test's prompts repeat: > 0);
  - one gauge per DP group (dp_rank 0..DP_GROUPS-1);
  - the expert load of all ranks: every MoE layer saw the same number of
    token-expert pairs (each token goes to top-k experts in each MoE layer);
  - POST /flush_cache on the idle job empties every prefix cache.
Prints one line per check; exits 1 when one fails. Stdlib only."""
import http.client
import json
import re
import sys
import time

port, groups, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
fails = 0


def check(what, ok, detail=""):
    global fails
    print(("ok   " if ok else "FAIL ") + f"{name} metrics: {what}" + ("" if ok else f": {detail}"), flush=True)
    fails += 0 if ok else 1


def scrape():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", "/metrics")
    r = c.getresponse()
    text = r.read().decode()
    samples, typed, bad = [], {}, []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, n, kind = line.split(" ", 3)
            typed[n] = kind
        elif line and not line.startswith("#"):
            m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\} (\S+)$', line)
            if not m:
                bad.append(line)
                continue
            samples.append((m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(2))), float(m.group(3))))
    return r.status, r.getheader("Content-Type", ""), samples, typed, bad


def total(samples, n):
    return sum(v for s, _, v in samples if s == n)


time.sleep(1.5)  # the job refreshes the expert load within a second of going idle
st, ctype, samples, typed, bad = scrape()
check("200, text/plain, well formed", st == 200 and ctype.startswith("text/plain") and not bad and samples,
      (st, ctype, bad[:2]))
fams = {re.sub(r"_(bucket|sum|count)$", "", s) for s, _, _ in samples}
check("a TYPE for every family", all(f in typed for f in fams), sorted(f for f in fams if f not in typed))
check("requests counted", total(samples, "sglang:num_requests_total") > 0, "")
check("prompt and generation tokens counted", total(samples, "sglang:prompt_tokens_total") > 0
      and total(samples, "sglang:generation_tokens_total") > 0, "")
check("TTFT histogram count = requests that produced a token",
      0 < total(samples, "sglang:time_to_first_token_seconds_count") <= total(samples, "sglang:num_requests_total"), "")
ranks = sorted(int(l["dp_rank"]) for s, l, _ in samples if s == "sglang:num_running_reqs")
check(f"one gauge per DP group ({groups})", ranks == list(range(groups)), ranks)
check("idle: nothing running or queued", total(samples, "sglang:num_running_reqs") == 0
      and total(samples, "sglang:num_queue_reqs") == 0, "")
check("idle: the KV pools hold only the prefix cache", total(samples, "sglang:num_used_tokens")
      == total(samples, "dpep_prefix_cache_tokens"), (total(samples, "sglang:num_used_tokens"),
                                                     total(samples, "dpep_prefix_cache_tokens")))
prompt, cached = total(samples, "dpep_dp_rank_prompt_tokens_total"), total(samples, "sglang:cached_tokens_total")
hit = total(samples, "sglang:cache_hit_rate")
check("cache hit rate = cached / prompt tokens", prompt > 0 and abs(hit - cached / prompt) < 1e-9, (hit, cached, prompt))
check("the prompts shared prefixes: some were cached", cached > 0, cached)
check("requests per DP group add up to the requests", total(samples, "dpep_dp_rank_requests_total")
      == total(samples, "sglang:num_requests_total"), (total(samples, "dpep_dp_rank_requests_total"),
                                                      total(samples, "sglang:num_requests_total")))
check("KV capacity reported", all(v > 0 for s, _, v in samples if s == "dpep_kv_capacity_tokens"), "")
check("idle: no outstanding load", total(samples, "dpep_dp_rank_outstanding_requests") == 0
      and total(samples, "dpep_dp_rank_outstanding_tokens") == 0, "")
per_layer = {}
for s, l, v in samples:
    if s == "dpep_expert_tokens_total":
        per_layer[int(l["layer"])] = per_layer.get(int(l["layer"]), 0) + v
moe = {k: v for k, v in per_layer.items() if v > 0}
check("expert load: every MoE layer saw the same token-expert pairs", moe and len(set(moe.values())) == 1, per_layer)
# POST /flush_cache on the idle job: 200, the caches are empty, and a prompt
# cached before is computed again after it (pinned to DP group 0)
def post(path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    return r.status, r.read()


def cached_now():
    return total(scrape()[2], "sglang:cached_tokens_total")


prompt = {"input_ids": [0] + [1000 + 7 * i for i in range(40)], "data_parallel_rank": 0,
          "sampling_params": {"max_new_tokens": 2, "ignore_eos": True}}
post("/generate", prompt)
c0 = cached_now()
post("/generate", prompt)
c1 = cached_now()
st, body = post("/flush_cache")
_, _, after, _, _ = scrape()
check("/flush_cache when idle: 200, every prefix cache and KV pool empty after",
      st == 200 and total(after, "dpep_prefix_cache_tokens") == 0
      and total(after, "sglang:num_used_tokens") == 0, (st, body[:100],
                                                        total(after, "dpep_prefix_cache_tokens")))
post("/generate", prompt)
c2 = cached_now()
check("a repeated prompt is cached before the flush, computed again after it", c1 - c0 >= 36 and c2 == c1,
      (c0, c1, c2))
sys.exit(1 if fails else 0)
