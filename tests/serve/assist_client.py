"""assist_client.py PORT WORK.jsonl ALONE.jsonl GROUPS ROUNDS -- a
`dpep serve` of DP attention with the DP assist on, hit the way that once
exposed its claim race (tests/serve/test_assist.sh): every distinct prompt of
WORK.jsonl pinned to every DP group, one request at a time, ROUNDS times (so
that each step has one owner and idle helpers, and the roles move between the
ranks), then the same pairs all at once. Greedy, with log-probs.
  - one at a time: output_ids and log-probs bit-equal to ALONE.jsonl (`dpep run`
    with one request at a time, the assist off);
  - all at once: output_ids equal to ALONE.jsonl's, log-probs within 1e-4
    (batched with each other now: a row's last bits may differ).
Prints FAIL lines (the first 10) and a summary; exits 1 on any failure.
Standard library only."""
import json
import sys
import threading
import urllib.request

port, work, alone = sys.argv[1:4]
groups, rounds = int(sys.argv[4]), int(sys.argv[5])
base = f"http://127.0.0.1:{port}"


def load(path):
    return {r["id"]: r for r in (json.loads(line) for line in open(path))}


ref = load(alone)
prompts = {}  # distinct prompt -> its first request's id
for line in open(work):
    r = json.loads(line)
    prompts.setdefault(tuple(r["input_ids"]), r["id"])

fails, n = [], 0
lock = threading.Lock()


def generate(ids, group):
    body = {"input_ids": list(ids), "data_parallel_rank": group, "return_logprob": True,
            "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}}
    req = urllib.request.Request(base + "/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def check(ids, rid, group, tag, exact):
    global n
    try:
        out = generate(ids, group)
        got = out.get("output_ids")
        lps = [x[0] for x in out.get("meta_info", {}).get("output_token_logprobs", [])]
    except Exception as e:  # noqa: BLE001 - reported as a failure
        got, lps = f"error: {e}", []
    want = ref[rid]
    ok = got == want["output_ids"] and len(lps) == len(want["logprobs"])
    if ok:
        diffs = [abs(a - b) for a, b in zip(lps, want["logprobs"])]
        ok = max(diffs) == 0.0 if exact else max(diffs) <= 1e-4
    with lock:
        n += 1
        if not ok:
            fails.append(f"{tag} {rid} in DP group {group}: {got} {lps} != dpep run "
                         f"{want['output_ids']} {want['logprobs']}")


for rd in range(rounds):
    for ids, rid in prompts.items():
        for g in range(groups):
            check(ids, rid, g, f"one at a time (round {rd})", True)
n_alone = n
threads = [threading.Thread(target=check, args=(ids, rid, g, "all at once", False))
           for ids, rid in prompts.items() for g in range(groups)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for f in fails[:10]:
    print(f"FAIL assist client: {f}", flush=True)
print(f"assist client: {n_alone} requests one at a time over {groups} DP groups bit-equal to "
      f"dpep run, {n - n_alone} at once equal: {len(fails)} failure(s)", flush=True)
sys.exit(1 if fails else 0)
