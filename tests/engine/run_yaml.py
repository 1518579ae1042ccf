#!/usr/bin/env python3
"""run_yaml.py — the `dpep run` file the engine tests share: a model, a
JSONL workload, and the tiny-model defaults (CPU, page 16, chunked prefill
64, a 60 s collective timeout, 1 GB of "device" memory), any of which
SECTION.KEY=VALUE arguments replace or add to.
  run_yaml.py OUT MODEL_DIR WORKLOAD.jsonl [SECTION.KEY=VALUE ...]
"""
import sys


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    out, model, work = sys.argv[1:4]
    doc = {"model": {"path": model},
           "runtime": {"device": "cpu", "page_size": "16", "chunked_prefill_size": "64",
                       "comm_timeout_s": "60"},
           "launch": {"gpu_memory_gb": "1"},
           "workload": {"kind": "file", "path": work}}
    for kv in sys.argv[4:]:
        key, sep, value = kv.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            sys.exit(f"run_yaml.py: {kv!r}: expected SECTION.KEY=VALUE")
        doc.setdefault(section, {})[name] = value
    with open(out, "w") as f:
        for section in ("model", "parallel", "runtime", "launch", "workload"):
            if section in doc:
                f.write(f"{section}:\n" + "".join(f"  {k}: {v}\n" for k, v in doc[section].items()))


if __name__ == "__main__":
    main()
