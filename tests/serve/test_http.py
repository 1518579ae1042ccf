#!/usr/bin/env python3
"""test_http.py — drives the three servers of test_http.c over loopback with
stdlib clients only (http.client, socket, threads).

  test_http.py WORK_DIR MAIN_PORT AUTH_PORT SLOW_PORT FAST_PORT

The serve loop behind them is fake_loop.c's echo model: output token k is
input_ids[k % n]; without ignore_eos the input is echoed once, then eos
(finish "stop"). Its events (take / cancel / finish RID) are in
WORK_DIR/events-{main,auth,slow,fast}.txt. Prints PASS/FAIL lines and
"N passed, M failed"; exits 1 on any failure."""
import http.client
import json
import copy
import os
import random
import re
import socket
import sys
import threading
import time

WORK = sys.argv[1]
MAIN, AUTH, SLOW, FAST = (int(p) for p in sys.argv[2:6])
MODEL = "dpep-test"
KEY = "sk-test-key"
CTX = 4096
BOS, EOS = 0, 1
passes = 0
fails = 0


def check(name, cond, detail=""):
    global passes, fails
    if cond:
        passes += 1
    else:
        fails += 1
        print(f"FAIL {name}: {detail}", flush=True)


def request(port, method, path, body=None, headers=None, raw=None, timeout=30):
    """One request on a fresh connection: (status, headers dict, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = dict(headers or {})
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
        h.setdefault("Content-Type", "application/json")
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    out = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    return r.status, hdrs, out


def jreq(port, path, body, **kw):
    st, h, out = request(port, "POST", path, body, **kw)
    try:
        return st, h, json.loads(out)
    except ValueError:
        return st, h, out


def sse(out):
    """SSE body -> list of parsed data events (the [DONE] marker as None)."""
    ev = []
    for block in out.decode().split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        d = block[6:]
        ev.append(None if d == "[DONE]" else json.loads(d))
    return ev


def events(name):
    with open(os.path.join(WORK, f"events-{name}.txt")) as f:
        return [line.split(" ", 1)[1].strip() for line in f if " " in line]


def wait_event(name, prefix, timeout):
    t = time.time()
    while time.time() - t < timeout:
        for e in events(name):
            if e.startswith(prefix):
                return time.time() - t, e
        time.sleep(0.02)
    return None, None


def expect_error(name, port, path, body, status, field, raw=None, **kw):
    if raw is not None:
        st, _, out = request(port, "POST", path, raw=raw, headers={"Content-Type": "application/json"}, **kw)
        try:
            out = json.loads(out)
        except ValueError:
            pass
    else:
        st, _, out = jreq(port, path, body, **kw)
    ok = st == status and isinstance(out, dict) and isinstance(out.get("error"), dict)
    err = out.get("error", {}) if isinstance(out, dict) else {}
    ok = ok and isinstance(err.get("message"), str) and "type" in err and "param" in err
    ok = ok and (err.get("code") == status or err.get("code") == "model_not_found")
    if field:
        ok = ok and field in err.get("message", "")
    check(name, ok, f"status {st}, want {status} naming {field!r}: {out!r}"[:400])
    return err


# --------------------------------------------------------------------------
def test_info():
    st, h, out = request(MAIN, "GET", "/health")
    check("health", st == 200 and out == b"", f"{st} {out!r}")
    st, h, out = request(MAIN, "HEAD", "/health")
    check("health HEAD", st == 200, st)
    results = []

    def probe():
        results.append(request(MAIN, "GET", "/health")[0])
    th = [threading.Thread(target=probe) for _ in range(40)]
    [t.start() for t in th]
    [t.join() for t in th]
    check("health burst", results == [200] * 40, results)
    for path in ("/server_info", "/get_server_info"):
        st, h, out = request(MAIN, "GET", path)
        d = json.loads(out)
        check(path, st == 200 and h.get("content-type") == "application/json"
              and d["served_model_name"] == MODEL and d["model_path"] == "/models/test-v3"
              and type(d["dp_size"]) is int and d["dp_size"] == 2 and type(d["tp_size"]) is int
              and type(d["context_length"]) is int and d["tokenizer_path"] == d["model_path"]
              and d["version"].startswith("dpep "), d)
    for path in ("/model_info", "/get_model_info"):
        st, h, out = request(MAIN, "GET", path)
        d = json.loads(out)
        check(path, st == 200 and d["model_type"] == "deepseek_v3" and d["is_generation"] is True
              and d["architectures"] == ["DeepseekV3ForCausalLM"] and d["model_path"] == "/models/test-v3", d)
    st, h, out = request(MAIN, "GET", "/v1/models")
    d = json.loads(out)
    check("/v1/models", st == 200 and d["object"] == "list" and len(d["data"]) == 1
          and d["data"][0]["id"] == MODEL and d["data"][0]["object"] == "model"
          and d["data"][0]["owned_by"] == "dpep" and d["data"][0]["max_model_len"] == CTX, d)
    card = d["data"][0]
    st, h, out = request(MAIN, "GET", "/v1/models/" + MODEL)
    d = json.loads(out)
    check("/v1/models/{id}", st == 200 and d["id"] == MODEL and d["object"] == "model"
          and d["max_model_len"] == card["max_model_len"], d)
    st, h, out = request(MAIN, "GET", "/v1/models/other-model")
    d = json.loads(out)
    check("/v1/models/{unknown}: 404 model_not_found", st == 404 and d["error"]["code"] == "model_not_found"
          and "other-model" in d["error"]["message"], d)
    st, h, out = request(MAIN, "GET", "/v1/models/" + MODEL + "/x")
    check("/v1/models/{id}/x: 404", st == 404, st)
    st, h, out = request(AUTH, "GET", "/v1/models/" + MODEL)
    check("/v1/models/{id} needs the key", st == 401, st)
    st, h, out = request(MAIN, "GET", "/get_load")
    d = json.loads(out)
    check("/get_load", st == 200 and isinstance(d, list) and len(d) == 2
          and [x["dp_rank"] for x in d] == [0, 1]
          and all(type(x[k]) is int for x in d for k in ("num_reqs", "num_waiting_reqs", "num_tokens")), d)
    st, h, out = request(MAIN, "GET", "/health_generate")
    check("/health_generate", st == 200, f"{st} {out!r}")


def test_generate():
    st, h, d = jreq(MAIN, "/generate", {"text": "Hello world", "sampling_params": {"max_new_tokens": 100, "temperature": 0}})
    ok = st == 200 and d["text"] == "Hello world" and d["output_ids"] == [BOS, 19923, 2058, EOS]
    m = d.get("meta_info", {}) if isinstance(d, dict) else {}
    ok = ok and m.get("finish_reason") == {"type": "stop", "matched": EOS} and m["prompt_tokens"] == 3
    ok = ok and m["completion_tokens"] == 4 and m["cached_tokens"] == 0 and isinstance(m["e2e_latency"], float)
    ok = ok and isinstance(m["id"], str) and m["id"]
    check("generate text", ok, d)
    st, h, d = jreq(MAIN, "/generate", {"text": "Hello world", "sampling_params": {"max_new_tokens": 2}})
    check("generate length", st == 200 and d["text"] == "Hello" and d["meta_info"]["finish_reason"] == {"type": "length", "length": 2}, d)
    st, h, d = jreq(MAIN, "/generate", {"input_ids": [19923, 2058], "sampling_params": {"max_new_tokens": 10, "skip_special_tokens": False}})
    check("generate input_ids", st == 200 and d["text"] == "Hello world" and d["output_ids"] == [19923, 2058, EOS], d)
    st, h, d = jreq(MAIN, "/generate", {"input_ids": [0, 19923], "sampling_params": {"max_new_tokens": 10, "skip_special_tokens": False, "no_stop_trim": True}})
    check("special tokens kept, eos untrimmed", st == 200 and d["text"] == "<｜begin▁of▁sentence｜>Hello<｜end▁of▁sentence｜>", d)
    st, h, d = jreq(MAIN, "/generate", {"input_ids": [19923, 2058], "sampling_params": {"max_new_tokens": 5, "ignore_eos": True}})
    check("generate ignore_eos", st == 200 and d["text"] == "Hello worldHello worldHello"
          and d["meta_info"]["finish_reason"]["type"] == "length", d)
    st, h, d = jreq(MAIN, "/generate", {"text": "Hello world", "rid": "my-rid-1", "return_logprob": True, "data_parallel_rank": 1,
                                        "sampling_params": {"max_new_tokens": 3, "temperature": 0.5, "top_p": 0.9, "top_k": 5, "sampling_seed": 42, "min_p": 0.05, "n": 1}})
    lp = d["meta_info"].get("output_token_logprobs") if st == 200 else None
    check("generate logprobs", st == 200 and d["meta_info"]["id"] == "my-rid-1" and lp is not None and len(lp) == 3
          and all(len(x) == 3 and isinstance(x[0], float) and x[2] is None for x in lp)
          and [x[1] for x in lp] == d["output_ids"] and abs(lp[0][0] + 0.01) < 1e-9, d)
    _, e = wait_event("main", "take my-rid-1 ", 2)
    check("generate params reach the hub", e is not None and "dp=1 " in e and "temp=0.5 " in e and "top_p=0.9 " in e
          and "top_k=5 " in e and "seed=42 " in e and "max_new=3 " in e and "min_p=0.05 " in e, e)
    st, h, d = jreq(MAIN, "/generate", {"text": "Hi", "rid": "topk-off", "sampling_params": {"top_k": -1, "max_new_tokens": 1}})
    _, e = wait_event("main", "take topk-off ", 2)
    check("top_k -1 is off", st == 200 and e is not None and "top_k=0 " in e and "max_new=1 " in e, (d, e))
    st, h, d = jreq(MAIN, "/generate", {"text": "Hi", "rid": "default-max"})
    _, e = wait_event("main", "take default-max ", 2)
    check("default max_new_tokens", st == 200 and e is not None and "max_new=32 " in e, (d, e))
    # stream == non-stream
    for body in ({"text": "The quick brown fox jumps over the lazy dog. " * 3, "sampling_params": {"max_new_tokens": 200}},
                 {"text": "Hello world, how are you? 你好世界", "sampling_params": {"max_new_tokens": 200, "stop": ["are"]}},
                 {"input_ids": [19923, 2058, 11, 1286, 477, 440, 33], "sampling_params": {"max_new_tokens": 4}}):
        st, h, d = jreq(MAIN, "/generate", body)
        st2, h2, out = request(MAIN, "POST", "/generate", dict(body, stream=True))
        ev = sse(out)
        chunks = [e for e in ev if e is not None]
        last = chunks[-1] if chunks else {}
        check("generate stream", st == 200 and st2 == 200 and h2.get("content-type") == "text/event-stream"
              and ev[-1] is None and len(chunks) >= 2 and last.get("text") == d["text"]
              and last.get("output_ids") == d["output_ids"]
              and last["meta_info"]["finish_reason"] == d["meta_info"]["finish_reason"]
              and all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
              and all(chunks[i + 1]["text"].startswith(chunks[i]["text"]) for i in range(len(chunks) - 1)),
              (d, chunks[-3:]))
    # stop strings, stop ids
    st, h, d = jreq(MAIN, "/generate", {"text": "Hello world, how are you", "rid": "stop-str", "sampling_params": {"max_new_tokens": 50, "stop": "how"}})
    check("stop string", st == 200 and d["text"] == "Hello world, " and d["meta_info"]["finish_reason"] == {"type": "stop", "matched": "how"}, d)
    st, h, d = jreq(MAIN, "/generate", {"text": "Hello world, how are you", "sampling_params": {"max_new_tokens": 50, "stop": ["you", " how"], "no_stop_trim": True}})
    check("no_stop_trim", st == 200 and d["text"] == "Hello world, how" and d["meta_info"]["finish_reason"]["matched"] == " how", d)
    st, h, d = jreq(MAIN, "/generate", {"input_ids": [19923, 2058, 19923, 2058], "rid": "stop-id", "sampling_params": {"max_new_tokens": 50, "stop_token_ids": [2058], "ignore_eos": True}})
    check("stop_token_ids", st == 200 and d["text"] == "Hello" and d["output_ids"] == [19923, 2058]
          and d["meta_info"]["finish_reason"] == {"type": "stop", "matched": 2058}, d)
    # the job's own ends
    st, h, d = jreq(MAIN, "/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 777}})
    check("job error -> 400", st == 400 and "KV pool" in d["error"]["message"], d)
    st, h, d = jreq(MAIN, "/generate", {"text": "Hello world", "sampling_params": {"max_new_tokens": 778, "ignore_eos": True}})
    check("job abort -> finish abort", st == 200 and d["meta_info"]["finish_reason"]["type"] == "abort"
          and len(d["output_ids"]) == 2, d)


def test_openai():
    base = {"model": MODEL, "prompt": "Hello world", "max_tokens": 50}
    st, h, d = jreq(MAIN, "/v1/completions", base)
    ok = st == 200 and d["object"] == "text_completion" and d["id"].startswith("cmpl-") and d["model"] == MODEL
    ok = ok and isinstance(d["created"], int) and d["choices"][0]["text"] == "Hello world" and d["choices"][0]["index"] == 0
    ok = ok and d["choices"][0]["finish_reason"] == "stop" and d["choices"][0]["logprobs"] is None
    ok = ok and d["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    check("completions", ok, d)
    st, h, out = request(MAIN, "POST", "/v1/completions", dict(base, stream=True, stream_options={"include_usage": True}))
    ev = sse(out)
    ch = [e for e in ev if e is not None]
    text = "".join(c["choices"][0]["text"] for c in ch if c["choices"])
    check("completions stream", st == 200 and ev[-1] is None and text == d["choices"][0]["text"]
          and ch[-1]["choices"] == [] and ch[-1]["usage"] == d["usage"]
          and ch[-2]["choices"][0]["finish_reason"] == "stop"
          and all(c["object"] == "text_completion" for c in ch), ch)
    st, h, out = request(MAIN, "POST", "/v1/completions", dict(base, stream=True))
    ch = [e for e in sse(out) if e is not None]
    check("completions stream no usage", st == 200 and all(c["choices"] for c in ch), ch)
    st, h, d = jreq(MAIN, "/v1/completions", {"model": MODEL, "prompt": [19923, 2058], "max_tokens": 2, "logprobs": 0})
    lp = d["choices"][0]["logprobs"] if st == 200 else None
    check("completions ids + logprobs", st == 200 and d["choices"][0]["text"] == "Hello world" and d["choices"][0]["finish_reason"] == "length"
          and lp["tokens"] == ["Hello", " world"] and len(lp["token_logprobs"]) == 2, d)
    st, h, d = jreq(MAIN, "/v1/completions", {"prompt": ["Hello world"], "max_tokens": 50})
    check("completions one-string list, no model", st == 200 and d["choices"][0]["text"] == "Hello world", d)
    st, h, d = jreq(MAIN, "/v1/completions", {"model": MODEL, "prompt": "Hello world, how are you", "stop": ["are"], "max_tokens": 50})
    check("completions stop", st == 200 and d["choices"][0]["text"] == "Hello world, how " and d["choices"][0]["finish_reason"] == "stop", d)
    # chat
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    cbase = {"model": MODEL, "messages": msgs, "max_tokens": 100}
    st, h, d = jreq(MAIN, "/v1/chat/completions", cbase)
    c0 = d["choices"][0] if st == 200 else {}
    ok = st == 200 and d["object"] == "chat.completion" and d["id"].startswith("chatcmpl-")
    ok = ok and c0["message"]["role"] == "assistant" and "Be brief." in c0["message"]["content"] and "Hi there" in c0["message"]["content"]
    ok = ok and c0["finish_reason"] == "stop" and d["usage"]["total_tokens"] == d["usage"]["prompt_tokens"] + d["usage"]["completion_tokens"]
    check("chat", ok, d)
    st, h, out = request(MAIN, "POST", "/v1/chat/completions", dict(cbase, stream=True, stream_options={"include_usage": True}))
    ev = sse(out)
    ch = [e for e in ev if e is not None]
    content = "".join(c["choices"][0]["delta"].get("content", "") for c in ch if c["choices"])
    check("chat stream", st == 200 and ev[-1] is None and ch[0]["choices"][0]["delta"].get("role") == "assistant"
          and content == c0.get("message", {}).get("content") and ch[-1]["usage"] == d["usage"] and ch[-1]["choices"] == []
          and ch[-2]["choices"][0]["finish_reason"] == "stop" and all(c["object"] == "chat.completion.chunk" for c in ch), ch[-3:])
    st, h, d = jreq(MAIN, "/v1/chat/completions", {"model": "unknown", "messages": msgs, "max_completion_tokens": 3, "logprobs": True,
                                                  "chat_template_kwargs": {"thinking": True}, "seed": 7, "rid": "chat-rid"})
    lp = d["choices"][0]["logprobs"] if st == 200 else None
    check("chat logprobs, max_completion_tokens", st == 200 and d["choices"][0]["finish_reason"] == "length"
          and d["usage"]["completion_tokens"] == 3 and len(lp["content"]) == 3
          and all(isinstance(x["token"], str) and isinstance(x["logprob"], float) for x in lp["content"]), d)
    _, e = wait_event("main", "take chat-rid ", 2)
    check("chat seed", e is not None and "seed=7 " in e, e)


def test_errors():
    G, C, H = "/generate", "/v1/completions", "/v1/chat/completions"
    sp = lambda **k: {"text": "Hi", "sampling_params": k}
    expect_error("malformed json", MAIN, G, None, 400, "JSON", raw=b'{"text": "Hi"')
    expect_error("not an object", MAIN, G, [1, 2], 400, "object")
    expect_error("empty body", MAIN, G, None, 400, "JSON", raw=b"")
    expect_error("batched text", MAIN, G, {"text": ["a", "b"]}, 400, "batched text is not supported")
    expect_error("text and ids", MAIN, G, {"text": "a", "input_ids": [1]}, 400, "input_ids")
    expect_error("no prompt", MAIN, G, {"sampling_params": {}}, 400, "text")
    expect_error("empty text", MAIN, G, {"text": ""}, 400, "empty prompt")
    expect_error("empty ids", MAIN, G, {"input_ids": []}, 400, "empty prompt")
    expect_error("id out of vocab", MAIN, G, {"input_ids": [1, 10 ** 7]}, 400, "input_ids[1]")
    expect_error("negative id", MAIN, G, {"input_ids": [-1]}, 400, "input_ids[0]")
    expect_error("id not int", MAIN, G, {"input_ids": [1, "a"]}, 400, "input_ids[1]")
    expect_error("batched ids", MAIN, G, {"input_ids": [[1], [2]]}, 400, "input_ids")
    expect_error("text type", MAIN, G, {"text": 5}, 400, "text")
    expect_error("prompt too long", MAIN, G, {"input_ids": [5] * CTX}, 400, "input_ids")
    expect_error("prompt + max_new > ctx", MAIN, G, {"input_ids": [5] * 100, "sampling_params": {"max_new_tokens": CTX}}, 400, "sampling_params.max_new_tokens")
    expect_error("max_new type", MAIN, G, sp(max_new_tokens="x"), 400, "sampling_params.max_new_tokens")
    expect_error("max_new 0", MAIN, G, sp(max_new_tokens=0), 400, "sampling_params.max_new_tokens")
    expect_error("temperature < 0", MAIN, G, sp(temperature=-1), 400, "sampling_params.temperature")
    expect_error("temperature type", MAIN, G, sp(temperature="hot"), 400, "sampling_params.temperature")
    expect_error("top_p 0", MAIN, G, sp(top_p=0), 400, "sampling_params.top_p")
    expect_error("top_p > 1", MAIN, G, sp(top_p=1.5), 400, "sampling_params.top_p")
    expect_error("top_k < -1", MAIN, G, sp(top_k=-2), 400, "sampling_params.top_k")
    expect_error("top_k real", MAIN, G, sp(top_k=1.5), 400, "sampling_params.top_k")
    expect_error("min_p > 1", MAIN, G, sp(min_p=1.5), 400, "sampling_params.min_p")
    expect_error("min_p < 0", MAIN, G, sp(min_p=-0.1), 400, "sampling_params.min_p")
    expect_error("min_p type", MAIN, G, sp(min_p="x"), 400, "sampling_params.min_p")
    expect_error("n 2", MAIN, G, sp(n=2), 400, "sampling_params.n")
    expect_error("stop type", MAIN, G, sp(stop=5), 400, "sampling_params.stop")
    expect_error("stop list type", MAIN, G, sp(stop=["a", 5]), 400, "sampling_params.stop")
    expect_error("stop_token_ids", MAIN, G, sp(stop_token_ids=[-1]), 400, "sampling_params.stop_token_ids[0]")
    expect_error("ignore_eos type", MAIN, G, sp(ignore_eos="yes"), 400, "sampling_params.ignore_eos")
    expect_error("seed type", MAIN, G, sp(sampling_seed="x"), 400, "sampling_params.sampling_seed")
    expect_error("frequency_penalty", MAIN, G, sp(frequency_penalty=0.5), 400, "frequency_penalty")
    expect_error("sampling_params type", MAIN, G, {"text": "Hi", "sampling_params": "x"}, 400, "sampling_params")
    expect_error("stream type", MAIN, G, {"text": "Hi", "stream": "yes"}, 400, "stream")
    expect_error("return_logprob type", MAIN, G, {"text": "Hi", "return_logprob": 1}, 400, "return_logprob")
    expect_error("rid type", MAIN, G, {"text": "Hi", "rid": 5}, 400, "rid")
    expect_error("dp rank too big", MAIN, G, {"text": "Hi", "data_parallel_rank": 2}, 400, "data_parallel_rank")
    expect_error("dp rank negative", MAIN, G, {"text": "Hi", "data_parallel_rank": -1}, 400, "data_parallel_rank")
    expect_error("dp rank type", MAIN, G, {"text": "Hi", "data_parallel_rank": "0"}, 400, "data_parallel_rank")
    st, _, _ = jreq(MAIN, G, {"text": "Hi", "data_parallel_rank": None, "model": None, "sampling_params": {"max_new_tokens": 1, "stop": None}})
    check("nulls are absent", st == 200, st)
    e = expect_error("unknown model", MAIN, C, {"model": "gpt-5", "prompt": "Hi"}, 404, "gpt-5")
    check("unknown model code", e.get("code") == "model_not_found" and e.get("param") == "model", e)
    expect_error("model type", MAIN, C, {"model": 5, "prompt": "Hi"}, 400, "model")
    expect_error("no prompt (completions)", MAIN, C, {"model": MODEL}, 400, "prompt")
    expect_error("empty prompt (completions)", MAIN, C, {"model": MODEL, "prompt": ""}, 400, "empty prompt")
    expect_error("empty ids (completions)", MAIN, C, {"model": MODEL, "prompt": []}, 400, "empty prompt")
    expect_error("batched prompt", MAIN, C, {"model": MODEL, "prompt": ["a", "b"]}, 400, "prompt")
    expect_error("max_tokens > ctx", MAIN, C, {"model": MODEL, "prompt": "Hi", "max_tokens": CTX}, 400, "max_tokens")
    expect_error("max_tokens type", MAIN, C, {"model": MODEL, "prompt": "Hi", "max_tokens": "3"}, 400, "max_tokens")
    expect_error("echo", MAIN, C, {"model": MODEL, "prompt": "Hi", "echo": True}, 400, "echo")
    expect_error("n 3", MAIN, C, {"model": MODEL, "prompt": "Hi", "n": 3}, 400, "n")
    expect_error("logprobs 9", MAIN, C, {"model": MODEL, "prompt": "Hi", "logprobs": 9}, 400, "logprobs")
    expect_error("completions temperature", MAIN, C, {"model": MODEL, "prompt": "Hi", "temperature": -0.5}, 400, "temperature")
    expect_error("completions top_p", MAIN, C, {"model": MODEL, "prompt": "Hi", "top_p": 2}, 400, "top_p")
    expect_error("stream_options type", MAIN, C, {"model": MODEL, "prompt": "Hi", "stream": True, "stream_options": 1}, 400, "stream_options")
    expect_error("no messages", MAIN, H, {"model": MODEL}, 400, "messages")
    expect_error("empty messages", MAIN, H, {"model": MODEL, "messages": []}, 400, "messages")
    expect_error("bad message", MAIN, H, {"model": MODEL, "messages": [{"role": 5, "content": "x"}]}, 400, "messages[0]")
    expect_error("chat max_tokens > ctx", MAIN, H, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": CTX}, 400, "max_tokens")
    expect_error("chat max_completion_tokens", MAIN, H, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -1}, 400, "max_completion_tokens")
    expect_error("top_logprobs", MAIN, H, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logprobs": True, "top_logprobs": 2}, 400, "top_logprobs")
    expect_error("chat logprobs type", MAIN, H, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logprobs": 3}, 400, "logprobs")
    expect_error("chat unknown model", MAIN, H, {"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "other")
    expect_error("response_format json_object", MAIN, H, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}, 400, "response_format")
    expect_error("response_format type", MAIN, H, {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "response_format": "json"}, 400, "response_format")
    st, _, d = jreq(MAIN, H, {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "response_format": {"type": "text"}, "max_tokens": 2})
    check("response_format text is plain output", st == 200 and d["object"] == "chat.completion", d)
    expect_error("thinking type", MAIN, H, {"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"thinking": "yes"}}, 400, "chat_template_kwargs.thinking")
    st, h, out = request(MAIN, "GET", "/nope")
    check("404", st == 404 and json.loads(out)["error"]["code"] == 404, (st, out))
    st, h, out = request(MAIN, "GET", "/generate")
    check("405 GET /generate", st == 405 and h.get("allow") == "POST" and "error" in json.loads(out), (st, h, out))
    st, h, out = request(MAIN, "POST", "/health", raw=b"{}")
    check("405 POST /health", st == 405, st)
    st, h, out = request(MAIN, "DELETE", "/v1/models")
    check("405 DELETE", st == 405, st)
    big = b'{"text": "' + b"a" * (1 << 20) + b'"}'
    st, h, out = request(MAIN, "POST", "/generate", raw=big, headers={"Content-Type": "application/json"})
    check("413", st == 413 and json.loads(out)["error"]["code"] == 413, (st, out[:200]))
    # bad UTF-8 in the body, and a NUL inside a string
    expect_error("invalid utf-8", MAIN, G, None, 400, "JSON", raw=b'{"text": "\xff\xfe"}')
    expect_error("NUL in text", MAIN, G, None, 400, "JSON", raw=b'{"text": "a\\u0000b"}')
    st, _, _ = request(MAIN, "GET", "/health")
    check("alive after errors", st == 200, st)


def test_auth():
    st, _, _ = request(AUTH, "GET", "/health")
    check("auth: /health open", st == 200, st)
    for path in ("/server_info", "/get_load", "/v1/models", "/health_generate"):
        st, h, out = request(AUTH, "GET", path)
        check(f"auth: {path} needs the key", st == 401 and "error" in json.loads(out), (st, out))
    st, _, _ = request(AUTH, "GET", "/server_info", headers={"Authorization": "Bearer wrong"})
    check("auth: wrong key", st == 401, st)
    st, _, _ = request(AUTH, "GET", "/server_info", headers={"Authorization": "Bearer " + KEY + "x"})
    check("auth: longer key", st == 401, st)
    st, _, _ = request(AUTH, "GET", "/server_info", headers={"Authorization": KEY})
    check("auth: no Bearer", st == 401, st)
    st, _, _ = request(AUTH, "GET", "/server_info", headers={"Authorization": "Bearer " + KEY})
    check("auth: right key", st == 200, st)
    st, _, d = jreq(AUTH, "/generate", {"text": "Hello world"})
    check("auth: generate without key", st == 401 and d["error"]["code"] == 401, d)
    st, _, d = jreq(AUTH, "/v1/completions", {"model": MODEL, "prompt": "Hello world"}, headers={"Authorization": "bearer " + KEY})
    check("auth: completions with key", st == 200 and d["choices"][0]["text"] == "Hello world", d)


def test_slow():
    """Queue full, timeouts (stream and not), client disconnects."""
    res = {}

    def gen(name, body):
        try:
            st, h, out = request(SLOW, "POST", "/generate", body, timeout=20)
            res[name] = (st, h, out)
        except Exception as e:  # noqa: BLE001
            res[name] = (None, {}, repr(e).encode())
    long_ = lambda rid: {"input_ids": [19923, 2058], "rid": rid, "sampling_params": {"max_new_tokens": 1000, "ignore_eos": True}}
    ta = threading.Thread(target=gen, args=("A", long_("q-A")))
    ta.start()
    dt, _ = wait_event("slow", "take q-A ", 3)
    check("slow: A taken", dt is not None, dt)
    tb = threading.Thread(target=gen, args=("B", long_("q-B")))
    tc = threading.Thread(target=gen, args=("C", long_("q-C")))
    tb.start()
    tc.start()
    time.sleep(0.4)
    st, h, out = request(SLOW, "POST", "/generate", long_("q-D"))
    d = json.loads(out)
    check("queue full -> 503 Retry-After", st == 503 and h.get("retry-after") == "1" and d["error"]["code"] == 503
          and "queue" in d["error"]["message"], (st, h, d))
    ta.join()
    st, h, out = res["A"]
    check("timeout -> 504", st == 504 and json.loads(out)["error"]["code"] == 504 and "timed out" in json.loads(out)["error"]["message"], res["A"])
    dt, _ = wait_event("slow", "cancel q-A", 2)
    check("timeout cancels in the job", dt is not None, dt)
    tb.join()
    tc.join()
    # stream timeout: an error event, then [DONE]
    st, h, out = request(SLOW, "POST", "/generate", dict(long_("q-E"), stream=True), timeout=20)
    ev = sse(out)
    check("stream timeout -> error event", st == 200 and ev[-1] is None and ev[-2] is not None and ev[-2].get("error", {}).get("code") == 504
          and all("text" in e for e in ev[:-2]), ev[-3:])
    time.sleep(0.3)
    # client disconnect mid-stream
    s = socket.create_connection(("127.0.0.1", SLOW))
    body = json.dumps(dict(long_("disc-1"), stream=True)).encode()
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    s.settimeout(5)
    got = b""
    while got.count(b"data: ") < 2:
        got += s.recv(65536)
    s.close()
    dt, _ = wait_event("slow", "cancel disc-1", 2.5)
    check("stream disconnect -> cancel", dt is not None and dt < 1.5, dt)
    # client disconnect while waiting for a non-stream answer
    s = socket.create_connection(("127.0.0.1", SLOW))
    body = json.dumps(long_("disc-2")).encode()
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    wait_event("slow", "take disc-2", 2)
    s.close()
    dt, _ = wait_event("slow", "cancel disc-2", 2.5)
    check("non-stream disconnect -> cancel", dt is not None and dt < 1.5, dt)
    time.sleep(0.3)
    st, _, d = jreq(SLOW, "/generate", {"text": "Hello world"})
    check("slow: serves after all that", st == 200 and d["text"] == "Hello world", d)


def test_raw():
    """HTTP/2 preface and junk: answered or closed promptly (twice, as the router probes)."""
    for name, data in (("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
                       ("h2 preface again", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00"),
                       ("junk", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64 + b"\r\n\r\n"),
                       ("garbage line", b"GARBAGE\r\n\r\n")):
        s = socket.create_connection(("127.0.0.1", MAIN))
        s.settimeout(2)
        t = time.time()
        s.sendall(data)
        got = b""
        try:
            while True:
                b = s.recv(4096)
                if not b:
                    break
                got += b
        except socket.timeout:
            got = None
        except ConnectionResetError:
            pass
        s.close()
        dt = time.time() - t
        check(name, got is not None and dt < 2 and (got == b"" or got.startswith(b"HTTP/1.")), (dt, got))
    # keep-alive: two requests on one connection
    c = http.client.HTTPConnection("127.0.0.1", MAIN, timeout=10)
    ok = True
    for _ in range(2):
        c.request("POST", "/generate", body=json.dumps({"text": "Hello world"}), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        ok = ok and r.status == 200 and json.loads(r.read())["text"] == "Hello world"
    c.request("GET", "/health")
    r = c.getresponse()
    ok = ok and r.status == 200 and r.read() == b""
    c.close()
    check("keep-alive", ok)
    # an HTTP/1.0 client: no chunked encoding, the stream ends with a close
    s = socket.create_connection(("127.0.0.1", MAIN))
    body = json.dumps({"text": "Hello world", "stream": True}).encode()
    s.sendall(b"POST /generate HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    s.settimeout(10)
    got = b""
    while True:
        b = s.recv(65536)
        if not b:
            break
        got += b
    s.close()
    head, _, payload = got.partition(b"\r\n\r\n")
    ev = sse(payload) if payload else []
    check("HTTP/1.0 stream", head.startswith(b"HTTP/1.") and b" 200 " in head and b"chunked" not in head.lower()
          and ev and ev[-1] is None and ev[-2]["text"] == "Hello world", got[:300])


def test_concurrent():
    """64 concurrent requests of every kind: each answered once, correctly."""
    res = [None] * 64
    prompts = [f"Request number {i} says hello" for i in range(64)]

    def one(i):
        kind = i % 4
        stream = (i // 4) % 2 == 1
        try:
            if kind in (0, 1):
                body = {"text": prompts[i], "rid": f"cc-{i}", "stream": stream, "sampling_params": {"max_new_tokens": 100}}
                st, h, out = request(MAIN, "POST", "/generate", body, timeout=60)
                d = sse(out)[-2] if stream else json.loads(out)
                res[i] = (st, d["text"])
            elif kind == 2:
                body = {"model": MODEL, "prompt": prompts[i], "rid": f"cc-{i}", "stream": stream, "max_tokens": 100}
                st, h, out = request(MAIN, "POST", "/v1/completions", body, timeout=60)
                text = "".join(c["choices"][0]["text"] for c in sse(out) if c and c["choices"]) if stream else json.loads(out)["choices"][0]["text"]
                res[i] = (st, text)
            else:
                body = {"model": MODEL, "prompt": prompts[i], "rid": f"cc-{i}", "stream": stream, "max_tokens": 100, "ignore_eos": True}
                st, h, out = request(MAIN, "POST", "/v1/completions", body, timeout=60)
                text = "".join(c["choices"][0]["text"] for c in sse(out) if c and c["choices"]) if stream else json.loads(out)["choices"][0]["text"]
                res[i] = (st, text)
        except Exception as e:  # noqa: BLE001
            res[i] = (None, repr(e))
    th = [threading.Thread(target=one, args=(i,)) for i in range(64)]
    t = time.time()
    [x.start() for x in th]
    [x.join() for x in th]
    bad = []
    for i, r in enumerate(res):
        want = prompts[i] if i % 4 != 3 else None
        if r is None or r[0] != 200 or (want is not None and r[1] != want) or (want is None and not r[1].startswith(prompts[i])):
            bad.append((i, r))
    check("64 concurrent answered", not bad, bad[:4])
    ev = events("main")
    takes = [e.split()[1] for e in ev if e.startswith("take cc-")]
    check("64 concurrent taken once each", sorted(takes) == sorted(f"cc-{i}" for i in range(64)), len(takes))
    print(f"64 concurrent requests in {time.time() - t:.2f} s", flush=True)


def test_fast():
    """Long outputs at full speed (the loop delivers while the HTTP threads
    read): every id and log-prob exact, streams equal to non-streams."""
    res = [None] * 24
    ids = [19923, 2058, 11]

    def one(i):
        body = {"input_ids": ids, "stream": i % 2 == 0, "return_logprob": True,
                "sampling_params": {"max_new_tokens": 1500, "ignore_eos": True}}
        try:
            st, h, out = request(FAST, "POST", "/generate", body, timeout=120)
            d = sse(out)[-2] if i % 2 == 0 else json.loads(out)
            lp = d["meta_info"]["output_token_logprobs"]
            ok = st == 200 and d["output_ids"] == ids * 500 and d["text"] == "Hello world)" * 500 \
                and all(abs(x[0] + (k + 1) / 100) < 1e-9 and x[1] == ids[k % 3] for k, x in enumerate(lp))
            res[i] = True if ok else (st, d["text"][:40], d["output_ids"][:6], lp[:3])
        except Exception as e:  # noqa: BLE001
            res[i] = repr(e)
    th = [threading.Thread(target=one, args=(i,)) for i in range(len(res))]
    [x.start() for x in th]
    [x.join() for x in th]
    check("fast: long outputs exact", all(r is True for r in res), res)


def test_fuzz():
    """Random field values and broken bodies on every generation endpoint:
    each answer is well formed (200 or a JSON 4xx), the server carries on."""
    rnd = random.Random(14)
    vals = [None, True, False, 0, -1, 1, 2, 7, 2 ** 31, 2 ** 63 - 1, -2 ** 63, 1.5, -0.0, 1e308, "", "x",
            "Hello world", "😀 é", [], [1], [-1], ["a"], [[1]], ["a", "b"], {}, {"a": 1}, [19923] * 3,
            [{"role": "user", "content": "Hi"}], [{"role": "user"}], {"include_usage": True}, {"thinking": 1}]
    gen_sp = ["max_new_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stop", "stop_token_ids",
              "ignore_eos", "skip_special_tokens", "no_stop_trim", "sampling_seed", "frequency_penalty"]
    templates = [
        ("/generate", {"text": "Hello world", "sampling_params": {"max_new_tokens": 3}},
         ["text", "input_ids", "sampling_params", "stream", "return_logprob", "rid", "data_parallel_rank"]
         + ["sampling_params." + k for k in gen_sp]),
        ("/v1/completions", {"model": MODEL, "prompt": "Hello world", "max_tokens": 3},
         ["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "logprobs",
          "stream", "stream_options", "echo", "ignore_eos", "data_parallel_rank", "best_of", "suffix"]),
        ("/v1/chat/completions", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
         ["model", "messages", "max_tokens", "max_completion_tokens", "logprobs", "top_logprobs", "stream",
          "stream_options", "chat_template_kwargs", "stop", "seed", "tools", "messages.0.role", "messages.0.content"]),
    ]

    def setpath(d, path, v):
        ks = path.split(".")
        for k in ks[:-1]:
            d = d[int(k)] if isinstance(d, list) else d.setdefault(k, {})
            if not isinstance(d, (dict, list)):
                return
        if isinstance(d, list):
            d[int(ks[-1])] = v
        elif v is None and rnd.random() < 0.5:
            d.pop(ks[-1], None)
        else:
            d[ks[-1]] = v
    cases = []
    for i in range(360):
        path, base, keys = templates[i % 3]
        body = copy.deepcopy(base)
        for _ in range(rnd.randint(1, 3)):
            try:
                setpath(body, rnd.choice(keys), copy.deepcopy(rnd.choice(vals)))
            except (IndexError, KeyError, TypeError, ValueError):
                pass
        raw = json.dumps(body).encode()
        if i % 9 == 0:
            raw = raw[:rnd.randint(0, len(raw))]
        elif i % 9 == 1:
            b = bytearray(raw)
            b[rnd.randrange(len(b))] = rnd.randrange(256)
            raw = bytes(b)
        cases.append((path, raw))
    bad = []
    seen = {}

    def worker(k):
        for path, raw in cases[k::8]:
            try:
                st, h, out = request(FAST, "POST", path, raw=raw, headers={"Content-Type": "application/json"})
                seen[st] = seen.get(st, 0) + 1
                if st == 200 and h.get("content-type") == "text/event-stream":
                    ev = sse(out)
                    ok = ev[-1] is None and all(isinstance(e, dict) for e in ev[:-1])
                elif st == 200:
                    ok = isinstance(json.loads(out), dict)
                else:
                    d = json.loads(out)
                    ok = st in (400, 404) and isinstance(d["error"]["message"], str) and d["error"]["code"] in (st, "model_not_found")
                if not ok:
                    bad.append((path, raw[:200], st, out[:200]))
            except Exception as e:  # noqa: BLE001
                bad.append((path, raw[:200], repr(e)))
    th = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    [t.start() for t in th]
    [t.join() for t in th]
    check("fuzz: every answer well formed", not bad, bad[:3])
    print(f"fuzz: {len(cases)} bodies, statuses {dict(sorted(seen.items()))}", flush=True)
    st, _, _ = request(FAST, "GET", "/health")
    check("fuzz: alive", st == 200, st)


def scrape(port):
    """GET /metrics, parsed: {(name, frozenset(labels)): value}, and the HELP/TYPE names."""
    st, h, out = request(port, "GET", "/metrics")
    samples, typed, bad = {}, {}, []
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$')
    for line in out.decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            typed[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        m = line_re.match(line)
        if not m:
            bad.append(line)
            continue
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        try:
            samples[(m.group(1), labels)] = float(m.group(4))
        except ValueError:
            bad.append(line)
    return st, h, samples, typed, bad


def metric(samples, name, **labels):
    want = {(k, str(v)) for k, v in labels.items()}
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_metrics():
    st, h, before, typed, bad = scrape(MAIN)
    check("/metrics: 200, Prometheus text", st == 200 and h.get("content-type", "").startswith("text/plain")
          and not bad, (st, h.get("content-type"), bad[:3]))
    base = {n.rsplit("_bucket", 1)[0].rsplit("_sum", 1)[0].rsplit("_count", 1)[0] for (n, _) in before}
    check("/metrics: every family has a TYPE", all(b in typed for b in base), sorted(base - set(typed)))
    for name in ("sglang:prompt_tokens_total", "sglang:generation_tokens_total", "sglang:num_requests_total",
                 "sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage", "sglang:cache_hit_rate",
                 "sglang:gen_throughput", "sglang:time_to_first_token_seconds", "sglang:inter_token_latency_seconds",
                 "sglang:e2e_request_latency_seconds", "dpep_expert_tokens_total"):
        check(f"/metrics: {name}", name in typed, sorted(typed))
    check("/metrics: model_name label", all(dict(ls).get("model_name") == MODEL for (_, ls) in before), "")
    check("/metrics: per DP rank", {dict(ls).get("dp_rank") for (n, ls) in before if n == "sglang:num_running_reqs"} == {"0", "1"}, "")
    check("/metrics: per expert", len([1 for (n, _) in before if n == "dpep_expert_tokens_total"]) == 8, "")
    check("/metrics: earlier requests counted", metric(before, "sglang:num_requests_total") > 10
          and metric(before, "sglang:generation_tokens_total") > 10, "")
    for hname in ("sglang:time_to_first_token_seconds", "sglang:e2e_request_latency_seconds"):
        buckets = sorted(((float(dict(ls)["le"]), v) for (n, ls), v in before.items() if n == hname + "_bucket"))
        cum = [v for _, v in buckets]
        check(f"/metrics: {hname} buckets cumulative, +Inf = count", cum == sorted(cum) and buckets[-1][0] == float("inf")
              and cum[-1] == metric(before, hname + "_count"), buckets[-3:])
    # one request of 2 prompt tokens and 3 output tokens: the counters move by exactly that
    st, _, d = jreq(MAIN, "/generate", {"input_ids": [19923, 2058], "sampling_params": {"max_new_tokens": 3, "ignore_eos": True}})
    time.sleep(0.1)
    _, _, after, _, _ = scrape(MAIN)
    delta = {n: metric(after, n) - metric(before, n) for n in (
        "sglang:prompt_tokens_total", "sglang:generation_tokens_total", "sglang:num_requests_total",
        "sglang:time_to_first_token_seconds_count", "sglang:inter_token_latency_seconds_count",
        "sglang:e2e_request_latency_seconds_count", "sglang:num_aborted_requests_total")}
    check("/metrics: one request moves the counters exactly", st == 200 and delta == {
        "sglang:prompt_tokens_total": 2, "sglang:generation_tokens_total": 3, "sglang:num_requests_total": 1,
        "sglang:time_to_first_token_seconds_count": 1, "sglang:inter_token_latency_seconds_count": 2,
        "sglang:e2e_request_latency_seconds_count": 1, "sglang:num_aborted_requests_total": 0}, delta)
    # a stop string ends a request on the HTTP side: finished, not aborted
    st, _, d = jreq(MAIN, "/generate", {"input_ids": [19923, 2058], "sampling_params": {"max_new_tokens": 20, "ignore_eos": True, "stop": " world"}})
    time.sleep(0.3)
    _, _, after2, _, _ = scrape(MAIN)
    check("/metrics: a stop string is not an abort", st == 200 and metric(after2, "sglang:num_aborted_requests_total")
          == metric(after, "sglang:num_aborted_requests_total") and metric(after2, "sglang:num_requests_total")
          == metric(after, "sglang:num_requests_total") + 1, d)
    for method in ("GET", "POST"):
        st, _, out = request(MAIN, method, "/flush_cache")
        _, e = wait_event("main", "flush", 2)
        check(f"/flush_cache {method}: idle, flushed through the loop", st == 200 and b"flushed" in out.lower()
              and e is not None, (st, out))
    # busy: a long request in flight on SLOW -> 400, nothing flushed
    box = {}
    t = threading.Thread(target=lambda: box.update(r=jreq(SLOW, "/generate", {"input_ids": [5, 6], "sampling_params": {"max_new_tokens": 8, "ignore_eos": True}})))
    t.start()
    time.sleep(0.3)
    st, _, out = request(SLOW, "POST", "/flush_cache")
    d = json.loads(out) if out.startswith(b"{") else {}
    check("/flush_cache while a request runs: 400, not flushed", st == 400 and "not flushed" in d.get("error", {}).get("message", ""), (st, out))
    t.join(30)
    check("the running request finished anyway", box.get("r", (0,))[0] == 200, box.get("r"))
    st, _, _ = request(MAIN, "PUT", "/flush_cache")
    check("/flush_cache PUT: 405", st == 405, st)
    st, _, _ = request(AUTH, "GET", "/metrics")
    check("/metrics needs the key", st == 401, st)
    st, _, _ = request(AUTH, "GET", "/metrics", headers={"Authorization": "Bearer " + KEY})
    check("/metrics with the key", st == 200, st)


def main():
    for t in (test_info, test_generate, test_openai, test_errors, test_auth, test_raw, test_concurrent, test_metrics, test_fast, test_fuzz, test_slow):
        try:
            t()
        except Exception as e:  # noqa: BLE001
            import traceback
            traceback.print_exc()
            check(t.__name__, False, f"raised {e!r}")
    print(f"{passes} passed, {fails} failed", flush=True)
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
