#!/usr/bin/env python3
"""Single-threaded throughput of Hugging Face `tokenizers` (Rust) encode and
decode, the reference for dpep's C tokenizer bench.

    python bench/tokenizer_hf.py TOKENIZER CORPUS [--iters N] [--warmup W]
                                 [--repeat K] [--join] [--special]

TOKENIZER  a tokenizer.json, a tokenizer.json.xz, or a folder holding either
           (e.g. tests/reference/tokenizers/deepseek-v3).
CORPUS     a .jsonl file of {"text": ...} objects (e.g.
           tests/reference/tokenizers/corpus.jsonl), or any other file, read
           as UTF-8 text and split into lines at "\n" (newlines kept).

Each iteration encodes every text with Tokenizer.encode (never
encode_batch) and then decodes every id list with Tokenizer.decode; the
corpus is repeated --repeat times (or, with --join, concatenated into one
text). Timing is time.perf_counter_ns around the whole pass; the reported
figure is the median over --iters passes after --warmup untimed ones.
MB/s is 10^6 bytes of UTF-8 *input text* per second for both directions, so
encode and decode figures are comparable; tokens/s counts ids.

RAYON_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false are set before
`tokenizers` is imported. Prints exactly one JSON line on stdout.
"""
import os

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["RAYON_RS_NUM_CPUS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import json  # noqa: E402
import lzma  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402


def load_tokenizer(path):
    from tokenizers import Tokenizer
    if os.path.isdir(path):
        for name in ("tokenizer.json", "tokenizer.json.xz"):
            if os.path.exists(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            sys.exit(f"no tokenizer.json[.xz] in {path}")
    if path.endswith(".xz"):
        with open(path, "rb") as f:
            return Tokenizer.from_str(lzma.decompress(f.read()).decode("utf-8")), path
    return Tokenizer.from_file(path), path


def load_corpus(path):
    # Split on "\n" only: str.splitlines() would also split on U+2028, U+0085,
    # \x1c.. which corpus.jsonl holds unescaped inside its strings.
    with open(path, encoding="utf-8", newline="") as f:
        data = f.read()
    if path.endswith(".jsonl"):
        return [json.loads(line)["text"] for line in data.split("\n") if line.strip()]
    lines = data.split("\n")
    return [l + "\n" for l in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tokenizer")
    ap.add_argument("corpus")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="use the corpus K times per pass")
    ap.add_argument("--join", action="store_true", help="encode the corpus as one text")
    ap.add_argument("--special", action="store_true",
                    help="encode with add_special_tokens=True (no-op for these files: "
                         "their post_processor adds nothing)")
    a = ap.parse_args()

    import tokenizers
    tok, tok_path = load_tokenizer(a.tokenizer)
    texts = [t for t in load_corpus(a.corpus) if t] * a.repeat
    if a.join:
        texts = ["".join(texts)]
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    add_sp = a.special

    def enc_pass():
        return [tok.encode(t, add_special_tokens=add_sp).ids for t in texts]

    ids = enc_pass()
    n_tokens = sum(len(x) for x in ids)

    def dec_pass():
        for x in ids:
            tok.decode(x, skip_special_tokens=False)

    def timed(fn):
        for _ in range(a.warmup):
            fn()
        ts = []
        for _ in range(a.iters):
            t0 = time.perf_counter_ns()
            fn()
            ts.append((time.perf_counter_ns() - t0) / 1e9)
        return ts

    enc_ts = timed(enc_pass)
    dec_ts = timed(dec_pass)
    enc_s = statistics.median(enc_ts)
    dec_s = statistics.median(dec_ts)
    out = {
        "impl": "hf-tokenizers",
        "version": tokenizers.__version__,
        "python": platform.python_version(),
        "tokenizer": tok_path,
        "corpus": a.corpus,
        "texts": len(texts),
        "bytes": n_bytes,
        "tokens": n_tokens,
        "iters": a.iters,
        "warmup": a.warmup,
        "threads": 1,
        "add_special_tokens": add_sp,
        "encode_s": round(enc_s, 6),
        "encode_s_min": round(min(enc_ts), 6),
        "encode_MBps": round(n_bytes / enc_s / 1e6, 3),
        "encode_tok_per_s": round(n_tokens / enc_s, 1),
        "decode_s": round(dec_s, 6),
        "decode_s_min": round(min(dec_ts), 6),
        "decode_MBps": round(n_bytes / dec_s / 1e6, 3),
        "decode_tok_per_s": round(n_tokens / dec_s, 1),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
