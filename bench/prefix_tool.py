#!/usr/bin/env python3
"""prefix_tool.py — the Python half of bench/prefix.sh (stdlib only).

  prefix_tool.py gsp OUT.jsonl --groups G --per-group P --system S --question Q
                 --output O --vocab V [--seed N]
      SGLang's generated-shared-prefix workload as a JSONL for
      bench/serve_load.py: G groups, each with a random system prompt of S
      tokens, P prompts per group (system prompt + a random question of Q
      tokens), shuffled, max_new_tokens O. Prints the input token count.
  prefix_tool.py wait-router URL --targets N [--timeout S]
      Waits until sglang-router lists N healthy workers (targets) and answers
      /readiness with 200; exit 1 on timeout.
  prefix_tool.py collect OUT.json --client C.json --input-tokens N URL...
      Reads each dpep serve's GET /metrics (prompt, cached and evicted tokens
      and requests per DP group: dpep_dp_rank_*_total; sglang:cache_hit_rate)
      and writes them with serve_load.py's result C.json into OUT.json.
  prefix_tool.py part1 MANIFEST     the Markdown table of bench/prefix.sh part 1
  prefix_tool.py part2 MANIFEST     the Markdown table of part 2 (serving)

A MANIFEST has one tab-separated line per measured variant:
round, key, label, result JSON (or "-"), note (why it has no result).
"""
import argparse
import json
import random
import re
import sys
import time
import urllib.error
import urllib.request


def http_get(url, timeout=10):
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e).encode()


def cmd_gsp(a):
    rng = random.Random(a.seed)
    lo, hi = 2, a.vocab - 1  # no bos (0) / eos (1) inside a prompt
    reqs = []
    for g in range(a.groups):
        system = [rng.randint(lo, hi) for _ in range(a.system)]
        for p in range(a.per_group):
            question = [rng.randint(lo, hi) for _ in range(a.question)]
            reqs.append({"id": f"g{g}-p{p}", "input_ids": system + question, "max_new_tokens": a.output})
    rng.shuffle(reqs)
    with open(a.out, "w") as f:
        for r in reqs:
            f.write(json.dumps(r) + "\n")
    print(sum(len(r["input_ids"]) for r in reqs))


def cmd_wait_router(a):
    deadline = time.time() + a.timeout
    seen = None
    while time.time() < deadline:
        st, body = http_get(a.url + "/workers")
        if st == 200:
            try:
                seen = json.loads(body).get("workers", [])
            except ValueError:
                seen = None
            if seen is not None and len(seen) >= a.targets and all(w.get("is_healthy") for w in seen):
                if http_get(a.url + "/readiness")[0] == 200:
                    return 0
        time.sleep(0.2)
    print(f"the router at {a.url} did not list {a.targets} healthy workers in {a.timeout} s: {seen}",
          file=sys.stderr)
    return 1


SAMPLE = re.compile(r'^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)')


def scrape(url):
    st, body = http_get(url + "/metrics")
    if st != 200:
        raise RuntimeError(f"GET {url}/metrics: {st} {body[:200]!r}")
    per = {}  # dp_rank -> {metric: value}
    glob = {}
    for line in body.decode().splitlines():
        m = SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        dp = re.search(r'dp_rank="(\d+)"', labels)
        if dp:
            per.setdefault(int(dp.group(1)), {})[name] = value
        else:
            glob[name] = glob.get(name, 0.0) + value
    groups = []
    for dp in sorted(per):
        d = per[dp]
        groups.append({"dp_rank": dp, "prompt_tokens": d.get("dpep_dp_rank_prompt_tokens_total", 0.0),
                       "cached_tokens": d.get("dpep_dp_rank_cached_tokens_total", 0.0),
                       "evicted_tokens": d.get("dpep_dp_rank_evicted_tokens_total", 0.0),
                       "requests": d.get("dpep_dp_rank_requests_total", 0.0)})
    return {"url": url, "groups": groups, "sglang_cache_hit_rate": glob.get("sglang:cache_hit_rate"),
            "sglang_cached_tokens_total": glob.get("sglang:cached_tokens_total"),
            "sglang_prompt_tokens_total": glob.get("sglang:prompt_tokens_total")}


def cmd_collect(a):
    servers = [scrape(u) for u in a.urls]
    prompt = sum(g["prompt_tokens"] for s in servers for g in s["groups"])
    cached = sum(g["cached_tokens"] for s in servers for g in s["groups"])
    out = {"servers": servers, "prompt_tokens": prompt, "cached_tokens": cached,
           "prefill_tokens_computed": prompt - cached, "cache_hit_rate": cached / prompt if prompt else 0.0}
    with open(a.client) as f:
        client = json.loads(f.read().strip().splitlines()[0])
    with open(a.out, "w") as f:
        json.dump({"client": client, "metrics": out, "input_tokens": a.input_tokens}, f)


def manifest(path):
    rows = []
    for line in open(path):
        if line.strip():
            rnd, key, label, res, note = (line.rstrip("\n").split("\t") + [""] * 5)[:5]
            rows.append({"round": rnd, "key": key, "label": label, "res": None if res in ("", "-") else res,
                         "note": note})
    return rows


def pc(x):
    return f"{100 * x:.1f}%"


def ratio(x, base):
    return f"{x / base:.2f}" if base else "-"


def table(rows, head, cells, ratios, base_key, ncells):
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    base = {}
    for r in rows:
        if r["key"] == base_key and r["res"]:
            base[r["round"]] = r["vals"]
    for r in rows:
        if not r["res"]:
            print(f"| {r['round']} | {r['label']} | " + " | ".join([r["note"]] + [""] * (ncells - 1)) + " |")
            continue
        b = base.get(r["round"])
        rs = [ratio(f(r["vals"]), f(b)) if b else "-" for f in ratios]
        print(f"| {r['round']} | {r['label']} | " + " | ".join(cells(r["vals"]) + rs) + " |")


def cmd_part1(a):
    rows = manifest(a.manifest)
    for r in rows:
        if r["res"]:
            s = json.load(open(r["res"]))
            wall = s["wall_s"]
            r["vals"] = {"hit": s["cache_hit_rate"], "dp_hit": [g["cache_hit_rate"] for g in s["per_dp_rank"]],
                         "dp_req": [g["requests"] for g in s["per_dp_rank"]],
                         "computed": s["prefill_tokens_computed"], "evicted": s["evicted_tokens"],
                         "in_s": s["input_tokens"] / wall, "out_s": s["output_tokens"] / wall,
                         "tot_s": (s["input_tokens"] + s["output_tokens"]) / wall,
                         "ttft50": s["ttft_s"]["p50"], "ttft99": s["ttft_s"]["p99"], "wall": wall,
                         "failed": s["failed"], "steps": s["steps"]}
    head = ["round", "variant", "hit rate (per DP group)", "requests per DP group", "prefill tokens computed",
            "evicted", "input tok/s", "output tok/s", "total tok/s", "TTFT p50 / p99 (s)", "wall (s)", "steps",
            "total tok/s vs (b)", "TTFT p50 vs (b)", "wall vs (b)", "computed vs (b)"]

    def cells(v):
        return [f"{pc(v['hit'])} ({' / '.join(f'{100 * h:.0f}' for h in v['dp_hit'])})",
                " / ".join(str(n) for n in v["dp_req"]), f"{v['computed']}", f"{v['evicted']}",
                f"{v['in_s']:.0f}", f"{v['out_s']:.1f}", f"{v['tot_s']:.0f}",
                f"{v['ttft50']:.2f} / {v['ttft99']:.2f}", f"{v['wall']:.2f}" + (f" ({v['failed']} failed)"
                                                                                 if v["failed"] else ""),
                f"{v['steps']}"]

    table(rows, head, cells, [lambda v: v["tot_s"], lambda v: v["ttft50"], lambda v: v["wall"],
                              lambda v: v["computed"]], "b", len(head) - 2)


def cmd_part2(a):
    rows = manifest(a.manifest)
    for r in rows:
        if r["res"]:
            d = json.load(open(r["res"]))
            c, m = d["client"], d["metrics"]
            wall = c["wall_s"]
            per = []
            for s in m["servers"]:
                for g in s["groups"]:
                    per.append((g["cached_tokens"] / g["prompt_tokens"]) if g["prompt_tokens"] else 0.0)
            reqs = [int(g["requests"]) for s in m["servers"] for g in s["groups"]]
            evicted = int(sum(g["evicted_tokens"] for s in m["servers"] for g in s["groups"]))
            r["vals"] = {"hit": m["cache_hit_rate"], "dp_hit": per, "dp_req": reqs, "evicted": evicted,
                         "computed": int(m["prefill_tokens_computed"]), "in_s": d["input_tokens"] / wall,
                         "out_s": c["output_tokens"] / wall,
                         "tot_s": (d["input_tokens"] + c["output_tokens"]) / wall,
                         "ttft50": c["ttft_p50_ms"] / 1e3, "ttft99": c["ttft_p99_ms"] / 1e3, "wall": wall,
                         "done": f"{c['completed']}/{c['requests']}"}
    head = ["round", "setup", "hit rate (per DP group)", "requests per DP group", "prefill tokens computed",
            "evicted", "completed", "input tok/s", "output tok/s", "total tok/s", "TTFT p50 / p99 (s)", "wall (s)",
            f"total tok/s vs ({a.base})", f"TTFT p50 vs ({a.base})", f"computed vs ({a.base})"]

    def cells(v):
        return [f"{pc(v['hit'])} ({' / '.join(f'{100 * h:.0f}' for h in v['dp_hit'])})",
                " / ".join(str(n) for n in v["dp_req"]), f"{v['computed']}", f"{v['evicted']}", v["done"],
                f"{v['in_s']:.0f}", f"{v['out_s']:.1f}", f"{v['tot_s']:.0f}",
                f"{v['ttft50']:.2f} / {v['ttft99']:.2f}", f"{v['wall']:.2f}"]

    table(rows, head, cells, [lambda v: v["tot_s"], lambda v: v["ttft50"], lambda v: v["computed"]],
          a.base, len(head) - 2)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("gsp")
    p.add_argument("out")
    for k in ("groups", "per-group", "system", "question", "output", "vocab"):
        p.add_argument("--" + k, type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("wait-router")
    p.add_argument("url")
    p.add_argument("--targets", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60)
    p = sub.add_parser("collect")
    p.add_argument("out")
    p.add_argument("--client", required=True)
    p.add_argument("--input-tokens", type=int, required=True)
    p.add_argument("urls", nargs="+")
    p = sub.add_parser("part1")
    p.add_argument("manifest")
    p = sub.add_parser("part2")
    p.add_argument("manifest")
    p.add_argument("--base", default="e0")
    a = ap.parse_args()
    return {"gsp": cmd_gsp, "wait-router": cmd_wait_router, "collect": cmd_collect, "part1": cmd_part1,
            "part2": cmd_part2}[a.cmd](a) or 0


if __name__ == "__main__":
    sys.exit(main())
