#!/usr/bin/env python3
"""llama_compare_convert.py — run llama.cpp's convert_hf_to_gguf.py on a
dpep-generated checkpoint (part of bench/llama_compare.sh).

  llama_compare_convert.py LLAMA_CPP_DIR MODEL_DIR OUT.gguf f32|bf16

The `small` preset has no tokenizer (vocab 32000 of ids only), and the
converter's DeepSeek-V2/V3 class has no no-tokenizer path: it tries a GPT-2
BPE vocab, then AutoTokenizer, and fails. Where MODEL_DIR has no tokenizer
files this wrapper makes that class write the converter's own "none" vocab
(`_set_vocab_none`, as other architectures do); llama.cpp then adds
vocab_size dummy tokens, which is all llama-bench and llama-batched-bench
need (they feed random ids) and keeps the model identical to dpep's. The
weights go through the converter untouched. A model with tokenizer.json
(`dpep model gen --tokenizer`) is converted as is.
"""
import os
import sys


def main():
    if len(sys.argv) != 5 or sys.argv[4] not in ("f32", "bf16"):
        sys.exit(__doc__.split("\n\n")[1])
    llama, model, out, outtype = sys.argv[1:]
    sys.path.insert(0, llama)
    import convert_hf_to_gguf as conv  # also puts the vendored gguf-py first on sys.path
    from conversion.deepseek import DeepseekV2Model

    if not os.path.exists(os.path.join(model, "tokenizer.json")):
        DeepseekV2Model.set_vocab = lambda self: self._set_vocab_none()
    sys.argv = [conv.__file__, model, "--outfile", out, "--outtype", outtype]
    conv.main()


if __name__ == "__main__":
    main()
