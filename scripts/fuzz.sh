#!/usr/bin/env bash
# fuzz.sh — build a libFuzzer target with clang (ASan + UBSan) and run it.
#   scripts/fuzz.sh [TARGET] [SECONDS]     TARGET: config (default), safetensors, model_config,
#                                          tokenizer or tok_roundtrip (DPEP_FUZZ_TOKENIZER=DIR: a
#                                          real tokenizer)
# The seed corpus is tests/fuzz/corpus/TARGET (config: plus configs/*.yaml;
# model_config: plus configs/models/*/config.json);
# new inputs go to .fuzz/TARGET/corpus, crashes to .fuzz/TARGET/.
set -euo pipefail
target=${1:-config}
seconds=${2:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/.fuzz/$target
mkdir -p "$out/corpus"
# base/file.c (inputs only when regular files) and base/fault.c (the test
# fault hook) are in every list: the loaders call them.
base=(runtime/base/status.c runtime/base/log.c runtime/base/file.c runtime/base/fault.c)
case $target in
  config) srcs=("${base[@]}" runtime/config/yaml_doc.c
                runtime/config/config_options.c runtime/config/config.c runtime/config/layout.c
                tests/fuzz/fuzz_config.c)
          seeds=("$root/tests/fuzz/corpus/config" "$root/configs") ;;
  safetensors) srcs=("${base[@]}" runtime/model/safetensors.c tests/fuzz/fuzz_safetensors.c)
          seeds=("$root/tests/fuzz/corpus/safetensors") ;;
  # config.json: the parser, plus the tensor list and the config-to-JSON
  # writer a loaded config goes through (model.c, model_gen.c and theirs)
  model_config)
          srcs=("${base[@]}" runtime/base/clock.c runtime/base/device.c runtime/base/vendor_none.c
                runtime/base/grow.c runtime/model/model_config.c runtime/model/model.c
                runtime/model/model_gen.c runtime/model/safetensors.c
                tests/fuzz/fuzz_model_config.c)
          seeds=("$root/tests/fuzz/corpus/model_config" "$root/configs/models/deepseek-v3"
                 "$root/configs/models/deepseek-v2-lite") ;;
  tokenizer|tok_roundtrip)
          srcs=("${base[@]}" runtime/base/grow.c runtime/text/tokenizer.c
                runtime/text/encode.c runtime/text/decode.c runtime/text/chat.c runtime/text/chat_json.c
                tests/fuzz/fuzz_$target.c)
          extra_libs="$(pkg-config --libs libpcre2-8 libutf8proc) -lpthread"
          seeds=("$root/tests/fuzz/corpus/$target") ;;
  *) echo "fuzz.sh: unknown target '$target' (expected: config, safetensors, model_config, tokenizer or tok_roundtrip)" >&2; exit 2 ;;
esac
cc=${CC_FUZZ:-clang}
command -v "$cc" >/dev/null || { echo "fuzz.sh: $cc not found (apt-get install clang)" >&2; exit 2; }
mpi_cflags=$(pkg-config --cflags ompi-c)
mpi_libs=$(pkg-config --libs ompi-c)
(cd "$root" && "$cc" -std=gnu11 -g -O1 -fsanitize=fuzzer,address,undefined \
   -fno-sanitize-recover=undefined -Iruntime/base -Iruntime/config -Iruntime/model -Iruntime/text $mpi_cflags "${srcs[@]}" \
   $(pkg-config --libs yaml-0.1 jansson) ${extra_libs:-} $mpi_libs -lm -o "$out/fuzz_$target")
echo "fuzz.sh: running fuzz_$target for ${seconds}s (corpus $out/corpus)"
cd "$out"
# -rss_limit_mb bounds memory; -timeout flags any input slower than 2 s
# (DPEP_FUZZ_TIMEOUT=S on a loaded machine, where a niced fuzzer can wait
# seconds for a core: a unit of 8 ms was flagged at a load of 25 on 2 cores).
dict=()
[ -f "$root/tests/fuzz/$target.dict" ] && dict=(-dict="$root/tests/fuzz/$target.dict")
exec ./"fuzz_$target" -max_total_time="$seconds" -rss_limit_mb=512 -timeout="${DPEP_FUZZ_TIMEOUT:-2}" \
  -max_len=65536 -print_final_stats=1 "${dict[@]}" corpus "${seeds[@]}"
