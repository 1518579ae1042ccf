#!/usr/bin/env python3
"""serve_load.py — a load client for `dpep serve` (stdlib only), reporting
what SGLang's bench_serving reports: request throughput, output tok/s, TTFT,
ITL and end-to-end latency percentiles.

    serve_load.py PORT REQUESTS.jsonl [--concurrency C] [--rate R] [--check]

REQUESTS.jsonl: one {"id", "input_ids", "max_new_tokens"} per line (the file
`dpep run` serves, so the two can be compared). Every request streams through
POST /generate (greedy, ignore_eos). --rate: Poisson arrivals per second
(default: all at once, bounded by --concurrency; 0: no bound). --check: every
request must come back exactly once, well formed, with max_new_tokens tokens
whose ids equal the stream's last chunk (exit 1 otherwise). Prints one JSON
line, with the client's own CPU time (it shares the machine with the ranks).

One thread and asyncio sockets: the client's CPU stays small next to the
server's, so it measures the server, not itself.
"""
import argparse
import asyncio
import json
import random
import sys
import time


async def read_chunked(reader):
    """Yields the body pieces of a chunked HTTP/1.1 response."""
    while True:
        size_line = await reader.readline()
        if not size_line:
            return
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            await reader.readline()
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


async def one(port, req, out):
    body = json.dumps({"input_ids": req["input_ids"], "rid": req["id"], "stream": True,
                       "sampling_params": {"max_new_tokens": req["max_new_tokens"], "temperature": 0,
                                           "ignore_eos": True}}).encode()
    t0 = time.perf_counter()
    times, last, err = [], None, None
    writer = None
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        status = await reader.readline()
        chunked = False
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            if h.lower().startswith(b"transfer-encoding:") and b"chunked" in h.lower():
                chunked = True
        if b" 200 " not in status:
            raise RuntimeError(status.decode().strip())
        pieces = read_chunked(reader) if chunked else None
        buf, n_prev, done = b"", 0, False
        while not done:
            if pieces is not None:
                try:
                    data = await pieces.__anext__()
                except StopAsyncIteration:
                    break
            else:
                data = await reader.read(65536)
                if not data:
                    break
            buf += data
            while b"\n\n" in buf and not done:
                ev, buf = buf.split(b"\n\n", 1)
                ev = ev.strip()
                if not ev.startswith(b"data:"):
                    continue
                payload = ev[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    err = chunk["error"]
                    done = True
                    break
                n = len(chunk.get("output_ids", []))
                now = time.perf_counter()
                times.extend([now] * (n - n_prev))
                n_prev = n
                last = chunk
    except Exception as e:  # noqa: BLE001 - counted as a failed request
        err = repr(e)
    finally:
        if writer is not None:
            writer.close()
    out.append({"id": req["id"], "t0": t0, "t1": time.perf_counter(), "times": times, "last": last,
                "err": err, "want": req["max_new_tokens"]})


def pct(v, p):
    if not v:
        return 0.0
    v = sorted(v)
    return v[min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.5)) - 1))]


async def drive(a, reqs, out):
    sem = asyncio.Semaphore(a.concurrency if a.concurrency > 0 else len(reqs) + 1)
    rng = random.Random(1)

    async def run(r):
        async with sem:
            await one(a.port, r, out)

    tasks = []
    for r in reqs:
        if a.rate > 0:
            await asyncio.sleep(rng.expovariate(a.rate))
        tasks.append(asyncio.create_task(run(r)))
    await asyncio.gather(*tasks)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("requests")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    reqs = [json.loads(l) for l in open(a.requests) if l.strip()]
    out = []
    cpu0 = time.process_time()
    start = time.perf_counter()
    asyncio.run(drive(a, reqs, out))
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
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
           "e2e_p50_ms": round(pct(e2e, 50) * 1e3, 2), "e2e_p99_ms": round(pct(e2e, 99) * 1e3, 2),
           "client_cpu_s": round(cpu, 3)}
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
