#!/usr/bin/env python3
"""drain_check.py — stopping `dpep serve` with requests in flight.

    drain_check.py PORT MODE PID...

A streamed /generate (ignore_eos, N tokens) starts; after its first chunk the
ranks (PIDs) get SIGTERM. Then:
  finish  the stream must complete with all N tokens (finish_reason length),
          and a new request sent while draining must get 503 with a JSON error,
          and /health 503;
  abort   (server.drain_timeout_s short, a long request) the stream must end
          early with an error event and [DONE], within a few seconds;
  twice   a second SIGTERM right after the first: as abort, without waiting
          for the drain timeout.
Prints one line per check; exits 1 when one fails. Stdlib only."""
import http.client
import json
import os
import signal
import sys
import threading
import time

port, mode, pids = int(sys.argv[1]), sys.argv[2], [int(p) for p in sys.argv[3:]]
N = 300 if mode == "finish" else 3000
fails = 0


def check(name, ok, detail=""):
    global fails
    print(("ok   " if ok else "FAIL ") + f"drain {mode}: {name}" + ("" if ok else f": {detail}"), flush=True)
    fails += 0 if ok else 1


started = threading.Event()
result = {}


def stream():
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    body = {"input_ids": [0, 19923, 2058], "stream": True,
            "sampling_params": {"max_new_tokens": N, "ignore_eos": True}}
    c.request("POST", "/generate", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    result["status"] = r.status
    events, buf = [], b""
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            events.append("[DONE]")
            break
        events.append(json.loads(data))
        started.set()
    result["events"] = events
    result["t_end"] = time.time()
    started.set()


t = threading.Thread(target=stream)
t.start()
check("stream started", started.wait(60), "no first chunk in 60 s")
t_sig = time.time()
for p in pids:
    os.kill(p, signal.SIGTERM)
if mode == "twice":
    time.sleep(0.05)
    for p in pids:
        os.kill(p, signal.SIGTERM)
if mode == "finish":
    time.sleep(0.3)
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("POST", "/generate", body=json.dumps({"text": "Hi"}), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        out = r.read()
        err = json.loads(out).get("error", {}) if out.startswith(b"{") else {}
        check("a new request while draining: 503 with an error object", r.status == 503 and "message" in err,
              (r.status, out[:200]))
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        c.request("GET", "/health")
        r = c.getresponse()
        r.read()
        check("/health while draining: 503 (out of a router's rotation)", r.status == 503, r.status)
    except OSError as e:
        check("a new request while draining: answered", False, repr(e))
t.join(120)
ev = result.get("events", [])
objs = [e for e in ev if isinstance(e, dict)]
last = objs[-1] if objs else {}
if mode == "finish":
    meta = last.get("meta_info", {})
    check("the stream in flight finished", result.get("status") == 200 and ev and ev[-1] == "[DONE]"
          and len(last.get("output_ids", [])) == N and (meta.get("finish_reason") or {}).get("type") == "length",
          (result.get("status"), len(last.get("output_ids", [])), meta.get("finish_reason")))
else:
    took = result.get("t_end", t_sig + 999) - t_sig
    n_out = max((len(o.get("output_ids", [])) for o in objs if "output_ids" in o), default=0)
    check("the stream in flight ended early with an error event", ev and ev[-1] == "[DONE]"
          and any("error" in o for o in objs) and n_out < N, (ev[-2:] if ev else ev, n_out))
    check(f"ended in {took:.2f} s", took < (5.0 if mode == "abort" else 2.0), took)
sys.exit(1 if fails else 0)
