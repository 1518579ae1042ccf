#!/usr/bin/env bash
# tokenizer.sh — encode/decode throughput of dpep's C tokenizer (dpep_tok_bench)
# against Hugging Face tokenizers (Rust, bench/tokenizer_hf.py) in the same
# run, single thread each, on the golden corpus of tests/reference/tokenizers
# as separate texts and as one joined text. Prints a Markdown table with the
# ratio dpep / HF (MB/s of UTF-8 input).
#   bench/tokenizer.sh [BUILD_DIR] [ITERS]
# PYTHON: a python3 that imports `tokenizers` (e.g. a venv with
# `pip install tokenizers==0.23.3`); default python3.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
iters=${2:-7}
py=${PYTHON:-python3}
"$py" -c "import tokenizers" 2>/dev/null || {
    echo "tokenizer.sh: $py cannot import tokenizers (set PYTHON to a venv with tokenizers)" >&2
    exit 2
}
tmp=$(mktemp -d /tmp/dpep-tokbench-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
corpus=$root/tests/reference/tokenizers/corpus.jsonl
echo "| tokenizer | corpus | dpep encode MB/s | HF encode MB/s | ratio | dpep decode MB/s | HF decode MB/s | ratio |"
echo "|---|---|---:|---:|---:|---:|---:|---:|"
for name in deepseek-v2 deepseek-v3; do
    src=$root/tests/reference/tokenizers/$name
    mkdir -p "$tmp/$name"
    xz -dc "$src/tokenizer.json.xz" > "$tmp/$name/tokenizer.json"
    cp "$src/tokenizer_config.json" "$tmp/$name/"
    for mode in lines join; do
        arg=""; harg=""
        [ "$mode" = join ] && { arg=join; harg=--join; }
        d=$(taskset -c 0 "$build/bench/dpep_tok_bench" "$tmp/$name" "$corpus" "$iters" $arg)
        h=$(taskset -c 0 "$py" "$root/bench/tokenizer_hf.py" "$tmp/$name" "$corpus" --iters "$iters" $harg)
        "$py" - "$name" "$mode" "$d" "$h" <<'PY'
import json, sys
name, mode, d, h = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
de, he, dd, hd = d["encode_mb_s"], h["encode_MBps"], d["decode_mb_s"], h["decode_MBps"]
assert d["tokens"] == h.get("tokens", d["tokens"]), "token counts differ"
print(f"| {name} | {mode} ({d['texts']} texts, {d['bytes']} B, {d['tokens']} tokens) | {de:.2f} | {he:.2f} | {de/he:.2f} | {dd:.2f} | {hd:.2f} | {dd/hd:.2f} |")
PY
    done
done
