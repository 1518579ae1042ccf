"""serve_client.py PORT WORK.jsonl OFFLINE.jsonl NAME — a client of `dpep serve`
(stdlib only): greedy /generate equals `dpep run`'s output for every prompt of
WORK.jsonl, streaming concatenates to the non-streamed text, the OpenAI
endpoints answer in their shape, and 32 concurrent requests are answered once
each. Prints FAIL lines; exits 1 on any."""
import json
import sys
import threading
import urllib.request

port, work, offline, name = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
base = f"http://127.0.0.1:{port}"
fails = []


def post(path, body, stream=False):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        if not stream:
            return r.status, json.loads(r.read())
        events = []
        for line in r:
            line = line.decode().strip()
            if line.startswith("data:"):
                events.append(line[5:].strip())
        return r.status, events


def get(path):
    with urllib.request.urlopen(base + path, timeout=30) as r:
        data = r.read()
        return r.status, (json.loads(data) if data else None)


def check(cond, what):
    if not cond:
        fails.append(what)
        print(f"FAIL {name}: {what}")


st, _ = get("/health")
check(st == 200, "/health")
st, info = get("/server_info")
check(st == 200 and isinstance(info.get("dp_size"), int) and isinstance(info.get("tp_size"), int)
      and info.get("kv_cache_dtype") in ("f32", "bf16"), f"/server_info types: {info}")
st, models = get("/v1/models")
check(st == 200 and models["data"] and models["data"][0]["id"], f"/v1/models: {models}")

reqs = [json.loads(l) for l in open(work)]
want = {json.loads(l)["id"]: json.loads(l)["output_ids"] for l in open(offline)}
for r in reqs:
    st, out = post("/generate", {"input_ids": r["input_ids"],
                                 "sampling_params": {"max_new_tokens": 8, "temperature": 0,
                                                     "ignore_eos": True}})
    check(st == 200 and out["output_ids"] == want[r["id"]],
          f"/generate {r['id']}: {out.get('output_ids')} != dpep run {want[r['id']]}")

# streaming: the last chunk's text (cumulative, as SGLang) equals the whole text
body = {"input_ids": reqs[1]["input_ids"], "sampling_params": {"max_new_tokens": 8, "temperature": 0,
        "ignore_eos": True}}
st, full = post("/generate", body)
body["stream"] = True
st, events = post("/generate", body, stream=True)
chunks = [json.loads(e) for e in events if e != "[DONE]"]
check(events and events[-1] == "[DONE]" and chunks and chunks[-1]["text"] == full["text"],
      f"stream: {[c.get('text') for c in chunks]} vs {full.get('text')!r}")

st, c = post("/v1/completions", {"model": models["data"][0]["id"], "prompt": "Hello world",
                                 "max_tokens": 4, "temperature": 0})
check(st == 200 and c["object"] == "text_completion" and c["usage"]["completion_tokens"] >= 1,
      f"/v1/completions: {c}")
st, c = post("/v1/chat/completions", {"model": models["data"][0]["id"], "max_tokens": 4,
                                      "messages": [{"role": "user", "content": "Hi"}]})
check(st == 200 and c["object"] == "chat.completion" and c["choices"][0]["message"]["role"] == "assistant",
      f"/v1/chat/completions: {c}")
st, ev = post("/v1/chat/completions", {"model": models["data"][0]["id"], "max_tokens": 4, "stream": True,
                                       "messages": [{"role": "user", "content": "Hi"}]}, stream=True)
check(ev and ev[-1] == "[DONE]" and json.loads(ev[0])["object"] == "chat.completion.chunk",
      f"chat stream: {ev[:2]}")

# 32 concurrent requests, each answered once with its own rid
results = {}
lock = threading.Lock()


def one(i):
    try:
        st, out = post("/generate", {"input_ids": reqs[i % len(reqs)]["input_ids"], "rid": f"c{i}",
                                     "sampling_params": {"max_new_tokens": 8, "temperature": 0,
                                                         "ignore_eos": True}})
        with lock:
            results.setdefault(out["meta_info"]["id"], []).append(out["output_ids"])
    except Exception as e:  # noqa: BLE001 - reported below
        with lock:
            results.setdefault(f"error {i}", []).append(str(e))


ts = [threading.Thread(target=one, args=(i,)) for i in range(32)]
for t in ts:
    t.start()
for t in ts:
    t.join()
check(sorted(results) == sorted(f"c{i}" for i in range(32)) and all(len(v) == 1 for v in results.values()),
      f"concurrent: {sorted(results)[:5]}...")
for i in range(32):
    got = results.get(f"c{i}", [[None]])[0]
    check(got == want[reqs[i % len(reqs)]["id"]], f"concurrent c{i}: {got}")
# a client that leaves mid-stream: its request is aborted in the job (the
# group's load, which counts it until it retires and frees its KV, drops to 0)
import http.client  # noqa: E402
import time  # noqa: E402


def load_reqs():
    return sum(x["num_reqs"] for x in get("/get_load")[1])


conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=60)
conn.request("POST", "/generate", json.dumps({"input_ids": reqs[0]["input_ids"], "stream": True,
             "sampling_params": {"max_new_tokens": 3000, "temperature": 0, "ignore_eos": True}}),
             {"Content-Type": "application/json"})
resp = conn.getresponse()
for _ in range(3):
    resp.fp.readline()
busy = load_reqs()
conn.sock.close()
conn.close()
t0 = time.time()
while load_reqs() > 0 and time.time() - t0 < 20:
    time.sleep(0.2)
left = load_reqs()
check(busy >= 1 and left == 0, f"disconnect: load while streaming {busy}, {left} left after the client left")
print(f"{name}: disconnect aborted in {time.time() - t0:.1f} s")
print(f"{name}: client checks done, {len(fails)} failure(s)")
sys.exit(1 if fails else 0)
