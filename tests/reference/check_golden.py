#!/usr/bin/env python3
"""Reload the committed tiny checkpoints from disk with transformers and
re-verify the goldens written by make_golden.py.

    tests/reference/.venv/bin/python tests/reference/check_golden.py

Checks, per model dir:
  * config.json + safetensors (single file or shards + index) load with
    AutoModelForCausalLM (fp32, eager) with no missing/unexpected keys;
  * tensors listed in golden.json match the files on disk (names/shapes/dtypes);
  * prompt logits and seq_logits recomputed from the reloaded model match the
    goldens (max abs diff printed; expected 0 on the same machine, tiny elsewhere);
  * the 16 greedy tokens are reproduced (no-cache and generate(use_cache=True));
  * the same checkpoint with a legacy `rope_scaling` config (the key real Hub
    DeepSeek configs use) gives the same logits;
  * golden.safetensors sha256 matches the one recorded in golden.json.
Exit status 0 iff everything holds.
"""
import hashlib
import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = ["deepseek_v3_tiny", "deepseek_v2_tiny"]
TOL = 1e-4  # fp32; same-machine reruns give 0


def load(path, experts="eager"):
    model, info = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", experts_implementation=experts,
        output_loading_info=True,
    )
    model.eval()
    return model, info


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False).logits[0].float()


def check(name):
    d = os.path.join(HERE, name)
    meta = json.load(open(os.path.join(d, "golden.json")))
    gold = load_file(os.path.join(d, "golden.safetensors"))
    fails = []

    h = hashlib.sha256(open(os.path.join(d, "golden.safetensors"), "rb").read()).hexdigest()
    if h != meta["golden_safetensors_sha256"]:
        fails.append("golden.safetensors sha256 differs from golden.json")

    on_disk = {}
    for fn in meta["checkpoint_files"]:
        with safe_open(os.path.join(d, fn), framework="pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                on_disk[k] = (list(sl.get_shape()), sl.get_dtype())
    listed = {r["name"]: (r["shape"], r["dtype"]) for r in meta["checkpoint_tensors"]}
    if on_disk != listed:
        fails.append("checkpoint tensor list differs from golden.json")

    model, info = load(d)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        if info.get(k):
            fails.append(f"{k}: {info[k]}")

    worst = 0.0
    for p, pinfo in meta["prompts"].items():
        ids = gold[f"{p}.input_ids"].tolist()
        if ids != pinfo["input_ids"]:
            fails.append(f"{p}: input_ids mismatch")
        diff = float((logits_of(model, ids) - gold[f"{p}.logits"]).abs().max())
        sdiff = float((logits_of(model, gold[f"{p}.seq_ids"].tolist()) - gold[f"{p}.seq_logits"]).abs().max())
        worst = max(worst, diff, sdiff)
        if diff > TOL or sdiff > TOL:
            fails.append(f"{p}: logits differ by {diff:.3e} / seq {sdiff:.3e}")
        # greedy, no cache
        seq = list(ids)
        for _ in range(meta["n_greedy"]):
            seq.append(int(torch.argmax(logits_of(model, seq)[-1])))
        if seq[len(ids):] != gold[f"{p}.greedy"].tolist():
            fails.append(f"{p}: greedy (no cache) differs: {seq[len(ids):]}")
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]), do_sample=False, max_new_tokens=meta["n_greedy"],
                min_new_tokens=meta["n_greedy"], use_cache=True, eos_token_id=None, pad_token_id=0,
            )
        if out[0, len(ids):].tolist() != gold[f"{p}.greedy"].tolist():
            fails.append(f"{p}: greedy (generate, cache) differs: {out[0, len(ids):].tolist()}")

    # Legacy-key variant: rope_parameters -> rope_scaling {type: yarn, ...} + top-level rope_theta.
    with tempfile.TemporaryDirectory() as tmp:
        for fn in os.listdir(d):
            if fn.startswith("model") or fn == "config.json":
                shutil.copy(os.path.join(d, fn), tmp)
        cfg = json.load(open(os.path.join(tmp, "config.json")))
        rp = dict(cfg.pop("rope_parameters"))
        cfg["rope_theta"] = rp.pop("rope_theta")
        rp["type"] = rp.pop("rope_type")
        cfg["rope_scaling"] = rp
        json.dump(cfg, open(os.path.join(tmp, "config.json"), "w"), indent=2)
        legacy, _ = load(tmp)
        p = list(meta["prompts"])[-1]
        ldiff = float((logits_of(legacy, gold[f"{p}.input_ids"].tolist()) - gold[f"{p}.logits"]).abs().max())
        if ldiff > TOL:
            fails.append(f"legacy rope_scaling config gives different logits ({ldiff:.3e})")

    # transformers' default experts implementation (grouped_mm): same up to fp32 rounding.
    fast, _ = load(d, experts=None)
    gdiff = max(
        float((logits_of(fast, gold[f"{p}.seq_ids"].tolist()) - gold[f"{p}.seq_logits"]).abs().max())
        for p in meta["prompts"]
    )
    if gdiff > TOL:
        fails.append(f"default experts implementation differs by {gdiff:.3e}")

    print(
        f"{name}: {'OK' if not fails else 'FAIL'}  max|logit diff|={worst:.3e}  "
        f"legacy-config diff={ldiff:.3e}  {fast.config._experts_implementation} diff={gdiff:.3e}"
    )
    for f in fails:
        print("   ", f)
    return not fails


def main():
    torch.set_num_threads(1)
    ok = all([check(n) for n in MODELS])
    print(f"{sum(1 for _ in MODELS) if ok else 0} passed, {0 if ok else 1} failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
