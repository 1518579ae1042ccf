"""serve_twonode_client.py PORT WORK.jsonl OFFLINE.jsonl — checks of a two-node
`dpep serve` (stdlib only), beyond tests/serve/serve_client.py: every distinct
prompt of WORK.jsonl pinned to every DP group (data_parallel_rank), so that the
groups whose ranks run on the other node serve through rank 0 too:
  - /server_info and /get_load report the 4 DP groups;
  - greedy /generate gives `dpep run`'s output_ids, and its logprobs within
    1e-4 of `dpep run`'s, in every group;
  - a streamed /generate in every group: cumulative chunks whose output_ids
    grow one prefix of the next, ending with the offline ids and [DONE];
  - all (prompt, group) pairs at once, streamed and not: each answered once,
    equal to the offline ids.
Prints FAIL lines; exits 1 on any."""
import json
import sys
import threading
import urllib.request

port, work, offline = sys.argv[1], sys.argv[2], sys.argv[3]
base = f"http://127.0.0.1:{port}"
GROUPS = 4
fails = []


def check(cond, what):
    if not cond:
        fails.append(what)
        print(f"FAIL twonode client: {what}", flush=True)


def get(path):
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return r.status, json.loads(r.read())


def generate(ids, group, stream=False, logprob=False):
    body = {"input_ids": ids, "data_parallel_rank": group, "stream": stream,
            "return_logprob": logprob,
            "sampling_params": {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}}
    req = urllib.request.Request(base + "/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        if not stream:
            return r.status, json.loads(r.read())
        events = [ln.decode().strip()[5:].strip() for ln in r if ln.decode().startswith("data:")]
        return r.status, events


st, info = get("/server_info")
check(st == 200 and info.get("dp_size") == GROUPS, f"/server_info dp_size: {info.get('dp_size')}")
st, load = get("/get_load")
check(st == 200 and sorted(x["dp_rank"] for x in load) == list(range(GROUPS)), f"/get_load: {load}")

offline_rows = {}
for line in open(offline):
    row = json.loads(line)
    offline_rows[row["id"]] = row
prompts = {}  # distinct prompts -> the offline row of their first request
for line in open(work):
    r = json.loads(line)
    prompts.setdefault(tuple(r["input_ids"]), offline_rows[r["id"]])

# one at a time: ids and logprobs in every group
worst = 0.0
for ids, want in prompts.items():
    for g in range(GROUPS):
        st, out = generate(list(ids), g, logprob=True)
        got = out.get("output_ids")
        check(st == 200 and got == want["output_ids"],
              f"/generate {want['id']} in DP group {g}: {got} != dpep run {want['output_ids']}")
        lps = [x[0] for x in out.get("meta_info", {}).get("output_token_logprobs", [])]
        if len(lps) == len(want["logprobs"]):
            diff = max(abs(a - b) for a, b in zip(lps, want["logprobs"]))
            worst = max(worst, diff)
            check(diff <= 1e-4, f"/generate {want['id']} in DP group {g}: logprobs differ by {diff:.2e}: "
                  f"served {lps}, dpep run {want['logprobs']}")
        else:
            check(False, f"/generate {want['id']} in DP group {g}: {len(lps)} logprobs")
print(f"twonode client: {len(prompts)} prompts x {GROUPS} DP groups equal to dpep run "
      f"(logprobs within {worst:.1e})", flush=True)

# streamed, one at a time, in every group
for ids, want in prompts.items():
    for g in range(GROUPS):
        st, events = generate(list(ids), g, stream=True)
        chunks = [json.loads(e) for e in events if e != "[DONE]"]
        seqs = [c.get("output_ids", []) for c in chunks]
        check(st == 200 and events and events[-1] == "[DONE]" and seqs and seqs[-1] == want["output_ids"],
              f"stream {want['id']} in DP group {g}: {seqs[-1:] if seqs else events} != {want['output_ids']}")
        check(all(a == b[:len(a)] for a, b in zip(seqs, seqs[1:])),
              f"stream {want['id']} in DP group {g}: chunks are not cumulative: {seqs}")
        check(len(chunks) >= 2, f"stream {want['id']} in DP group {g}: {len(chunks)} chunk(s), not streamed")

# everything at once, half of it streamed
results = {}
lock = threading.Lock()


def one(key, ids, g, stream):
    try:
        st, out = generate(ids, g, stream=stream)
        if stream:
            chunks = [json.loads(e) for e in out if e != "[DONE]"]
            got = chunks[-1]["output_ids"] if chunks and out[-1] == "[DONE]" else out
        else:
            got = out["output_ids"]
    except Exception as e:  # noqa: BLE001 - reported below
        got = f"error: {e}"
    with lock:
        results.setdefault(key, []).append(got)


jobs = []
for ids, want in prompts.items():
    for g in range(GROUPS):
        for stream in (False, True):
            jobs.append(((want["id"], g, stream), list(ids), g, stream))
ts = [threading.Thread(target=one, args=j) for j in jobs]
for t in ts:
    t.start()
for t in ts:
    t.join()
for (key, ids, g, stream) in jobs:
    want = prompts[tuple(ids)]["output_ids"]
    got = results.get(key)
    check(got == [want], f"concurrent {key}: {got} != {want}")
print(f"twonode client: {len(jobs)} concurrent requests over {GROUPS} DP groups answered", flush=True)
print(f"twonode client: {len(fails)} failure(s)", flush=True)
sys.exit(1 if fails else 0)
