#!/usr/bin/env python3
"""serve_load.py — a load client for `dpep serve` (stdlib only), reporting
what SGLang's bench_serving reports: request throughput, output tok/s, TTFT,
ITL and end-to-end latency percentiles.

    serve_load.py PORT REQUESTS.jsonl [--concurrency C] [--rate R] [--check]

REQUESTS.jsonl: one {"id", "input_ids", "max_new_tokens"} per line (the file
`dpep run` serves, so the two can be compared). Every request streams through
POST /generate (greedy, ignore_eos). --rate: Poisson arrivals per second
(default: all at once, bounded by --concurrency). --check: every request must
come back exactly once, well formed, with max_new_tokens tokens whose ids equal
the stream's last chunk (exit 1 otherwise). Prints one JSON line.
"""
import argparse
import json
import random
import sys
import threading
import time
import urllib.request


def one(port, req, out, lock):
    body = {"input_ids": req["input_ids"], "rid": req["id"], "stream": True,
            "sampling_params": {"max_new_tokens": req["max_new_tokens"], "temperature": 0,
                                "ignore_eos": True}}
    t0 = time.perf_counter()
    times, last, err = [], None, None
    try:
        r = urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=json.dumps(body).encode(),
                                   headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(r, timeout=600) as resp:
            n_prev = 0
            for line in resp:
                line = line.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    err = chunk["error"]
                    break
                n = len(chunk.get("output_ids", []))
                now = time.perf_counter()
                times.extend([now] * (n - n_prev))
                n_prev = n
                last = chunk
    except Exception as e:  # noqa: BLE001 - counted as a failed request
        err = str(e)
    t1 = time.perf_counter()
    with lock:
        out.append({"id": req["id"], "t0": t0, "t1": t1, "times": times, "last": last, "err": err,
                    "want": req["max_new_tokens"]})


def pct(v, p):
    if not v:
        return 0.0
    v = sorted(v)
    return v[min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.5)) - 1))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port")
    ap.add_argument("requests")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    reqs = [json.loads(l) for l in open(a.requests) if l.strip()]
    out, lock = [], threading.Lock()
    sem = threading.Semaphore(a.concurrency)
    rng = random.Random(1)

    def run(r):
        with sem:
            one(a.port, r, out, lock)

    start = time.perf_counter()
    threads = []
    for r in reqs:
        if a.rate > 0:
            time.sleep(rng.expovariate(a.rate))
        t = threading.Thread(target=run, args=(r,))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [o for o in out if o["err"] is None and o["last"] is not None]
    ttft = [o["times"][0] - o["t0"] for o in ok if o["times"]]
    itl = [b - a_ for o in ok for a_, b in zip(o["times"], o["times"][1:])]
    e2e = [o["t1"] - o["t0"] for o in ok]
    n_out = sum(len(o["last"]["output_ids"]) for o in ok)
    res = {"requests": len(reqs), "completed": len(ok), "failed": len(out) - len(ok), "wall_s": round(wall, 3),
           "concurrency": a.concurrency, "rate": a.rate, "output_tokens": n_out,
           "request_throughput": round(len(ok) / wall, 3), "output_tok_s": round(n_out / wall, 1),
           "ttft_p50_ms": round(pct(ttft, 50) * 1e3, 2), "ttft_p99_ms": round(pct(ttft, 99) * 1e3, 2),
           "itl_p50_ms": round(pct(itl, 50) * 1e3, 2), "itl_p99_ms": round(pct(itl, 99) * 1e3, 2),
           "e2e_p50_ms": round(pct(e2e, 50) * 1e3, 2), "e2e_p99_ms": round(pct(e2e, 99) * 1e3, 2)}
    print(json.dumps(res))
    if a.check:
        bad = []
        ids = [o["id"] for o in out]
        if sorted(ids) != sorted(r["id"] for r in reqs):
            bad.append("requests lost or duplicated")
        for o in out:
            if o["err"] is not None:
                bad.append(f"{o['id']}: {o['err']}")
            elif o["last"]["meta_info"]["id"] != o["id"] or len(o["last"]["output_ids"]) != o["want"]:
                bad.append(f"{o['id']}: malformed or short: {o['last'].get('meta_info')}")
        for b in bad[:10]:
            print("FAIL load:", b)
        sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
