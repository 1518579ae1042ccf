#!/usr/bin/env python3
"""Build tiny random DeepSeek-V3 / DeepSeek-V2 checkpoints with transformers'
own model classes and record fp32 golden outputs for the dpep engine tests.

Run from anywhere (paths are relative to this file):

    tests/reference/.venv/bin/python tests/reference/make_golden.py

Outputs (per model dir, e.g. tests/reference/deepseek_v3_tiny/):
    config.json, generation_config.json      written by save_pretrained
    model.safetensors  (V3)                   single file, Hub format
    model-0000k-of-0000n.safetensors + model.safetensors.index.json (V2, sharded)
    golden.safetensors                        prompts, logits, greedy tokens, activations
    golden.json                               versions, seeds, stats, tensor lists

Everything is deterministic: fixed seeds, one CPU thread, no timestamps.
Re-running must reproduce byte-identical golden files (check with sha256sum).
"""
import hashlib
import json
import math
import os
import shutil
import sys

import numpy as np
import safetensors
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    DeepseekV2Config,
    DeepseekV2ForCausalLM,
    DeepseekV3Config,
    DeepseekV3ForCausalLM,
)

HERE = os.path.dirname(os.path.abspath(__file__))
N_GREEDY = 16
EXPERTS_IMPL = "eager"

# Three fixed prompts of different lengths (1, 7, 29 tokens); ids < 256 so they
# are valid for both vocabularies.
PROMPTS = [
    [17],
    [3, 141, 59, 26, 235, 89, 79],
    [
        101, 7, 222, 48, 13, 190, 66, 250, 5, 31, 77, 148, 9, 203, 111, 42,
        187, 60, 2, 99, 174, 38, 215, 83, 128, 11, 166, 55, 240,
    ],
]


def v3_config():
    return DeepseekV3Config(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=128,          # dense MLP (layer 0)
        moe_intermediate_size=32,       # per routed expert; shared = 32 * n_shared
        num_hidden_layers=3,
        first_k_dense_replace=1,        # layer 0 dense, layers 1-2 MoE
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=48,
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=16,
        v_head_dim=24,                  # != qk_nope on purpose (catches W_UK/W_UV split bugs)
        n_routed_experts=16,
        n_shared_experts=1,
        num_experts_per_tok=4,
        n_group=4,
        topk_group=2,
        scoring_func="sigmoid",         # not read by transformers (hard-coded); kept for Hub parity
        topk_method="noaux_tc",         # not read by transformers (hard-coded); kept for Hub parity
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        hidden_act="silu",
        max_position_embeddings=2560,   # = factor * original_max_position_embeddings
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 40.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "original_max_position_embeddings": 64,
        },
        rope_interleave=True,
        num_mtp_layers=0,               # no MTP weights in this checkpoint
        tie_word_embeddings=False,
        attention_bias=False,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
    )


def v2_config():
    return DeepseekV2Config(
        vocab_size=288,
        hidden_size=64,
        intermediate_size=160,
        moe_intermediate_size=24,
        num_hidden_layers=3,
        first_k_dense_replace=1,
        num_attention_heads=4,
        num_key_value_heads=4,
        q_lora_rank=None,               # plain q_proj, like V2-Lite
        kv_lora_rank=32,
        qk_nope_head_dim=16,
        qk_rope_head_dim=8,
        v_head_dim=16,
        n_routed_experts=12,
        n_shared_experts=2,
        num_experts_per_tok=3,
        n_group=1,
        topk_group=1,
        topk_method="greedy",
        scoring_func="softmax",         # not read by transformers (hard-coded softmax); Hub parity
        routed_scaling_factor=1.0,
        norm_topk_prob=False,
        hidden_act="silu",
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 16.0,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "original_max_position_embeddings": 128,
        },
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )


MODELS = [
    # name, config fn, model class, weight seed, save kwargs
    ("deepseek_v3_tiny", v3_config, DeepseekV3ForCausalLM, 1234, {}),
    ("deepseek_v2_tiny", v2_config, DeepseekV2ForCausalLM, 5678, {"max_shard_size": "400KB"}),
]


def randomize(model, seed):
    """Overwrite every parameter/buffer with a deterministic, well-scaled value.

    Linear weights W[out, in] ~ N(0, 1/in) (unit gain), embeddings ~ N(0, 1),
    lm_head ~ N(0, 4/H) (logits of std ~2), RMSNorm weights ~ U(0.5, 1.5),
    e_score_correction_bias ~ N(0, 0.15^2).  Iteration is in sorted name order
    with one torch.Generator, so the result depends only on the seed.
    """
    g = torch.Generator().manual_seed(seed)
    named = dict(model.named_parameters())
    named.update({n: b for n, b in model.named_buffers() if n.endswith("e_score_correction_bias")})
    with torch.no_grad():
        for name in sorted(named):
            p = named[name]
            shape = tuple(p.shape)
            if name.endswith("e_score_correction_bias"):
                v = torch.randn(shape, generator=g) * 0.15
            elif "norm" in name.split(".")[-2] and name.endswith("weight"):
                v = torch.rand(shape, generator=g) + 0.5
            elif name.endswith("embed_tokens.weight"):
                v = torch.randn(shape, generator=g)
            elif name == "lm_head.weight":
                v = torch.randn(shape, generator=g) * (2.0 / math.sqrt(shape[1]))
            elif len(shape) == 3:  # fused experts [E, out, in]
                v = torch.randn(shape, generator=g) / math.sqrt(shape[2])
            elif len(shape) == 2:  # nn.Linear / router weight [out, in]
                v = torch.randn(shape, generator=g) / math.sqrt(shape[1])
            else:
                raise RuntimeError(f"unhandled parameter {name} {shape}")
            p.copy_(v.to(p.dtype))


class Recorder:
    """Forward hooks that capture intermediate activations of one forward."""

    def __init__(self, model, is_v3):
        self.acts = {}
        self.handles = []
        m = model.model
        l0 = m.layers[0]
        att = l0.self_attn

        def out_hook(key, first=False):
            def fn(mod, inp, out):
                o = out[0] if (first or isinstance(out, tuple)) else out
                self.acts[key] = o.detach().reshape(-1, o.shape[-1]).clone()
            return fn

        def in_hook(key):
            def fn(mod, inp):
                x = inp[0]
                self.acts[key] = x.detach().reshape(-1, x.shape[-1]).clone()
            return fn

        def rope_hook(mod, inp, out):
            if isinstance(out, tuple):  # V3: (cos, sin), each cat(freqs, freqs) * attention_scaling
                cos, sin = out
                half = cos.shape[-1] // 2
                self.acts["act.rope_cos"] = cos[0, :, :half].detach().clone()
                self.acts["act.rope_sin"] = sin[0, :, :half].detach().clone()
            else:  # V2: complex freqs_cis * attention_scaling
                self.acts["act.rope_cos"] = out[0].real.detach().float().clone()
                self.acts["act.rope_sin"] = out[0].imag.detach().float().clone()

        def gate_hook(layer):
            def fn(mod, inp, out):
                logits, w, idx = out
                order = torch.argsort(idx, dim=-1)
                self.acts[f"act.l{layer}.router_logits"] = logits.detach().clone()
                self.acts[f"act.l{layer}.topk_idx"] = torch.gather(idx, -1, order).detach().clone()
                self.acts[f"act.l{layer}.topk_w"] = torch.gather(w, -1, order).detach().clone()
            return fn

        reg = lambda mod, fn: self.handles.append(mod.register_forward_hook(fn))
        reg(m.embed_tokens, out_hook("act.embed"))
        reg(m.rotary_emb, rope_hook)
        reg(l0.input_layernorm, out_hook("act.l0.attn_norm"))
        if is_v3:
            reg(att.q_a_proj, out_hook("act.l0.q_a"))
            reg(att.q_a_layernorm, out_hook("act.l0.q_a_norm"))
            reg(att.q_b_proj, out_hook("act.l0.q"))
        else:
            reg(att.q_proj, out_hook("act.l0.q"))
        reg(att.kv_a_proj_with_mqa, out_hook("act.l0.kv_a"))
        reg(att.kv_a_layernorm, out_hook("act.l0.kv_norm"))
        reg(att.kv_b_proj, out_hook("act.l0.kv_b"))
        self.handles.append(att.o_proj.register_forward_pre_hook(in_hook("act.l0.attn_heads")))
        reg(att, out_hook("act.l0.attn_out", first=True))
        reg(l0.post_attention_layernorm, out_hook("act.l0.mlp_norm"))
        reg(l0.mlp, out_hook("act.l0.mlp_out"))
        for i, layer in enumerate(m.layers):
            reg(layer, out_hook(f"act.l{i}.out"))
        l1 = m.layers[1]
        reg(l1.post_attention_layernorm, out_hook("act.l1.mlp_norm"))
        reg(l1.mlp.gate, gate_hook(1))
        reg(l1.mlp.experts, out_hook("act.l1.routed_out"))
        reg(l1.mlp.shared_experts, out_hook("act.l1.shared_out"))
        reg(l1.mlp, out_hook("act.l1.moe_out"))
        reg(m.norm, out_hook("act.final_norm"))

    def remove(self):
        for h in self.handles:
            h.remove()


def forward_logits(model, ids):
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float()


def greedy_full(model, prompt, n):
    """Greedy decoding by repeated full (no-cache) forwards. Returns tokens, margins."""
    ids = list(prompt)
    toks, margins = [], []
    for _ in range(n):
        last = forward_logits(model, ids)[-1]
        top2 = torch.topk(last, 2)
        t = int(torch.argmax(last))  # first index among equal maxima
        toks.append(t)
        margins.append(float(top2.values[0] - top2.values[1]))
        ids.append(t)
    return toks, margins


def greedy_generate(model, prompt, n):
    out = model.generate(
        torch.tensor([prompt], dtype=torch.long),
        do_sample=False,
        max_new_tokens=n,
        min_new_tokens=n,
        use_cache=True,
        eos_token_id=None,
        pad_token_id=0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    toks = out.sequences[0, len(prompt):].tolist()
    step_logits = torch.stack([l[0].float() for l in out.logits])  # [n, vocab]
    return toks, step_logits


def router_margin(logits, bias, is_v3, cfg):
    """Smallest gap between the k-th chosen and the best unchosen selection
    score, over all tokens (how close fp noise is to flipping an expert)."""
    if is_v3:
        s = logits.sigmoid() + bias
        E, G = cfg.n_routed_experts, cfg.n_group
        gs = s.view(-1, G, E // G).topk(2, dim=-1)[0].sum(-1)
        gsort = gs.sort(dim=-1, descending=True).values
        group_margin = float((gsort[:, cfg.topk_group - 1] - gsort[:, cfg.topk_group]).min())
        keep = torch.zeros_like(gs).scatter_(1, gs.topk(cfg.topk_group, dim=-1)[1], 1)
        s = s.masked_fill(~keep.repeat_interleave(E // G, dim=-1).bool(), float("-inf"))
    else:
        s = logits.softmax(dim=-1)
        group_margin = None
    k = cfg.num_experts_per_tok
    srt = s.sort(dim=-1, descending=True).values
    return float((srt[:, k - 1] - srt[:, k]).min()), group_margin


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def checkpoint_tensors(out_dir):
    files = sorted(f for f in os.listdir(out_dir) if f.startswith("model") and f.endswith(".safetensors"))
    rows = []
    for fn in files:
        with safe_open(os.path.join(out_dir, fn), framework="pt") as f:
            for k in f.keys():
                sl = f.get_slice(k)
                rows.append({"name": k, "shape": list(sl.get_shape()), "dtype": sl.get_dtype(), "file": fn})
    rows.sort(key=lambda r: r["name"])
    return files, rows


def build_one(name, cfg_fn, cls, seed, save_kwargs):
    out_dir = os.path.join(HERE, name)
    is_v3 = cls is DeepseekV3ForCausalLM
    torch.manual_seed(seed)
    cfg = cfg_fn()
    cfg._attn_implementation = "eager"
    model = cls(cfg).to(torch.float32)
    randomize(model, seed)
    model.eval()
    model.config._attn_implementation = "eager"

    # Fresh output dir (only files this script owns).
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    model.save_pretrained(out_dir, **save_kwargs)

    # Goldens come from the checkpoint as reloaded from disk (exactly what the
    # engine reads), with the plain per-expert loop ("eager") for the experts;
    # transformers' from_pretrained default would be "grouped_mm" (differs by ~1e-6).
    model = cls.from_pretrained(
        out_dir, dtype=torch.float32, attn_implementation="eager", experts_implementation=EXPERTS_IMPL
    )
    model.eval()

    tensors = {}
    report = {"model": name, "class": cls.__name__, "weight_seed": seed, "prompts": {}}
    with torch.no_grad():
        # Facts about rope/yarn as built by this transformers version.
        rot = model.model.rotary_emb
        att0 = model.model.layers[0].self_attn
        report["rope"] = {
            "rope_type": rot.rope_type,
            "inv_freq": [float(x) for x in rot.inv_freq],
            "attention_scaling_cos_sin": float(rot.attention_scaling),
            "softmax_scale": float(att0.scaling),
            "softmax_scale_no_yarn": float((cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5),
            "rope_interleave": bool(getattr(cfg, "rope_interleave", False)) if is_v3 else "n/a (V2 always rotates interleaved pairs via complex multiply)",
        }
        tensors["rope.inv_freq"] = rot.inv_freq.detach().float().clone()

        for i, prompt in enumerate(PROMPTS):
            ids = torch.tensor(prompt, dtype=torch.long)
            rec = Recorder(model, is_v3)
            logits = forward_logits(model, prompt)
            acts = rec.acts
            rec.remove()

            g_full, margins = greedy_full(model, prompt, N_GREEDY)
            g_gen, gen_step_logits = greedy_generate(model, prompt, N_GREEDY)
            seq = prompt + g_full
            seq_logits = forward_logits(model, seq)  # [len+16, vocab]
            # logits of the positions that predict the 16 greedy tokens (no cache)
            pred_logits = seq_logits[len(prompt) - 1: len(prompt) - 1 + N_GREEDY]
            cache_vs_full = float((gen_step_logits - pred_logits).abs().max())
            prefix_diff = float((seq_logits[: len(prompt)] - logits).abs().max())

            tensors[f"p{i}.input_ids"] = ids
            tensors[f"p{i}.logits"] = logits.contiguous()
            tensors[f"p{i}.greedy"] = torch.tensor(g_full, dtype=torch.long)
            tensors[f"p{i}.seq_ids"] = torch.tensor(seq, dtype=torch.long)
            tensors[f"p{i}.seq_logits"] = seq_logits.contiguous()
            for k, v in acts.items():
                tensors[f"p{i}.{k}"] = v.contiguous()

            # How much does e_score_correction_bias change layer-1 routing?
            bias_info = None
            l1_logits = acts["act.l1.router_logits"]
            if is_v3:
                gate = model.model.layers[1].mlp.gate
                saved = gate.e_score_correction_bias.clone()
                gate.e_score_correction_bias.zero_()
                _, _, idx_nb = gate(acts["act.l1.mlp_norm"])
                gate.e_score_correction_bias.copy_(saved)
                nb = idx_nb.sort(dim=-1).values
                changed = int((nb != acts["act.l1.topk_idx"]).any(dim=-1).sum())
                bias_info = {"tokens_whose_l1_selection_changes_without_bias": changed, "tokens": len(prompt)}
                rmargin, gmargin = router_margin(l1_logits, saved, True, cfg)
            else:
                rmargin, gmargin = router_margin(l1_logits, None, False, cfg)

            report["prompts"][f"p{i}"] = {
                "input_ids": prompt,
                "len": len(prompt),
                "greedy": g_full,
                "greedy_generate_use_cache": g_gen,
                "greedy_agree": g_full == g_gen,
                "greedy_top1_top2_margin_min": min(margins),
                "greedy_top1_top2_margins": margins,
                "prompt_logits_max_abs": float(logits.abs().max()),
                "prompt_logits_mean_abs": float(logits.abs().mean()),
                "prompt_logits_std": float(logits.std()),
                "cached_decode_vs_full_forward_max_abs_diff": cache_vs_full,
                "seq_prefix_vs_prompt_logits_max_abs_diff": prefix_diff,
                "l1_router_kth_vs_next_score_margin_min": rmargin,
                "l1_router_group_margin_min": gmargin,
                "e_score_correction_bias_effect": bias_info,
            }

    # Golden tensors.  safetensors writes a deterministic file for a fixed dict.
    gpath = os.path.join(out_dir, "golden.safetensors")
    # Only one metadata key: safetensors keeps __metadata__ in a hash map, so with
    # two or more keys their order in the header (and the file bytes) varies per run.
    save_file({k: tensors[k] for k in sorted(tensors)}, gpath, metadata={"format": "pt"})

    files, ck = checkpoint_tensors(out_dir)
    with open(os.path.join(out_dir, "config.json")) as f:
        saved_cfg = json.load(f)
    report.update(
        {
            "versions": {
                "python": sys.version.split()[0],
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "safetensors": safetensors.__version__,
                "numpy": np.__version__,
            },
            "seeds": {"torch.manual_seed": seed, "weight_generator_seed": seed},
            "dtype": "float32",
            "attn_implementation": "eager",
            "experts_implementation": model.config._experts_implementation,
            "torch_num_threads": torch.get_num_threads(),
            "n_greedy": N_GREEDY,
            "config_json": saved_cfg,
            "checkpoint_files": files,
            "checkpoint_files_sha256": {fn: sha256(os.path.join(out_dir, fn)) for fn in files},
            "checkpoint_tensors": ck,
            "golden_tensors": [
                {"name": k, "shape": list(tensors[k].shape), "dtype": str(tensors[k].dtype).replace("torch.", "")}
                for k in sorted(tensors)
            ],
            "golden_tensor_notes": {
                "p{i}.input_ids": "I64 [len] prompt",
                "p{i}.logits": "F32 [len, vocab] logits of a single no-cache forward over the prompt",
                "p{i}.greedy": "I64 [16] greedy continuation (argmax, first index on ties), repeated no-cache forwards",
                "p{i}.seq_ids / seq_logits": "prompt + 16 greedy tokens, and the no-cache logits over that whole sequence; row len-1+j predicts greedy[j]",
                "rope.inv_freq": "F32 [rope_dim/2] YaRN-corrected inverse frequencies as used by transformers",
                "p{i}.act.rope_cos/sin": "F32 [len, rope_dim/2] cos/sin of position*inv_freq, already multiplied by attention_scaling",
                "p{i}.act.embed": "embedding output [len, H]",
                "p{i}.act.l0.attn_norm": "input_layernorm(h) of layer 0",
                "p{i}.act.l0.q_a / q_a_norm": "V3 only: q_a_proj output, q_a_layernorm output [len, q_lora_rank]",
                "p{i}.act.l0.q": "q_b_proj (V3) / q_proj (V2) output before rope [len, heads*(nope+rope)], per head [nope|rope]",
                "p{i}.act.l0.kv_a": "kv_a_proj_with_mqa output [len, kv_lora+rope] = [c_raw | k_pe_raw (before rope)]",
                "p{i}.act.l0.kv_norm": "kv_a_layernorm(c_raw) [len, kv_lora]",
                "p{i}.act.l0.kv_b": "kv_b_proj(c_kv) [len, heads*(nope+v)], per head [k_nope|v]",
                "p{i}.act.l0.attn_heads": "attention output before o_proj [len, heads*v_head]",
                "p{i}.act.l0.attn_out": "o_proj output [len, H] (before residual add)",
                "p{i}.act.l0.mlp_norm / mlp_out": "post_attention_layernorm output and dense MLP output",
                "p{i}.act.l{n}.out": "decoder layer n output (residual stream) [len, H]",
                "p{i}.act.l1.mlp_norm": "MoE input of layer 1 [len, H]",
                "p{i}.act.l1.router_logits": "F32 [len, n_routed] gate logits (before sigmoid/softmax)",
                "p{i}.act.l1.topk_idx": "I64 [len, k] chosen experts, sorted ascending by expert id",
                "p{i}.act.l1.topk_w": "F32 [len, k] routing weights in the same order (after norm and routed_scaling_factor)",
                "p{i}.act.l1.routed_out / shared_out / moe_out": "routed experts sum, shared experts, total MoE output [len, H]",
                "p{i}.act.final_norm": "final model.norm output [len, H] (input of lm_head)",
            },
            "golden_safetensors_sha256": sha256(gpath),
        }
    )
    with open(os.path.join(out_dir, "golden.json"), "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
        f.write("\n")
    return report


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    for name, cfg_fn, cls, seed, kw in MODELS:
        r = build_one(name, cfg_fn, cls, seed, kw)
        print(f"== {name}")
        for p, info in r["prompts"].items():
            print(
                f"  {p} len={info['len']:2d} greedy={info['greedy']} agree={info['greedy_agree']} "
                f"margin_min={info['greedy_top1_top2_margin_min']:.4f} max|logit|={info['prompt_logits_max_abs']:.3f} "
                f"cache_vs_full={info['cached_decode_vs_full_forward_max_abs_diff']:.2e} "
                f"router_margin={info['l1_router_kth_vs_next_score_margin_min']:.2e} bias={info['e_score_correction_bias_effect']}"
            )
        print("  rope:", json.dumps(r["rope"]))
        print("  files:", r["checkpoint_files"])


if __name__ == "__main__":
    main()
