#!/usr/bin/env bash
# fuzz.sh — build a libFuzzer target with clang (ASan + UBSan) and run it.
#   scripts/fuzz.sh [TARGET] [SECONDS]     TARGET: config (default), safetensors, tokenizer
#                                          or tok_roundtrip (DPEP_FUZZ_TOKENIZER=DIR: a real tokenizer)
# The seed corpus is tests/fuzz/corpus/TARGET (plus every configs/*.yaml);
# new inputs go to .fuzz/TARGET/corpus, crashes to .fuzz/TARGET/.
set -euo pipefail
target=${1:-config}
seconds=${2:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/.fuzz/$target
mkdir -p "$out/corpus"
case $target in
  config) srcs=(runtime/base/status.c runtime/base/log.c runtime/config/yaml_doc.c
                runtime/config/config_options.c runtime/config/config.c runtime/config/layout.c
                tests/fuzz/fuzz_config.c)
          seeds=("$root/tests/fuzz/corpus/config" "$root/configs") ;;
  safetensors) srcs=(runtime/base/status.c runtime/base/log.c runtime/model/safetensors.c
                     tests/fuzz/fuzz_safetensors.c)
          seeds=("$root/tests/fuzz/corpus/safetensors") ;;
  tokenizer|tok_roundtrip)
          srcs=(runtime/base/status.c runtime/base/log.c runtime/base/grow.c runtime/text/tokenizer.c
                runtime/text/encode.c runtime/text/decode.c runtime/text/chat.c runtime/text/chat_json.c
                tests/fuzz/fuzz_$target.c)
          extra_libs="$(pkg-config --libs libpcre2-8 libutf8proc) -lpthread"
          seeds=("$root/tests/fuzz/corpus/$target") ;;
  *) echo "fuzz.sh: unknown target '$target' (expected: config, safetensors, tokenizer or tok_roundtrip)" >&2; exit 2 ;;
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
# -rss_limit_mb bounds memory; -timeout flags any input slower than 2 s.
dict=()
[ -f "$root/tests/fuzz/$target.dict" ] && dict=(-dict="$root/tests/fuzz/$target.dict")
exec ./"fuzz_$target" -max_total_time="$seconds" -rss_limit_mb=512 -timeout=2 \
  -max_len=65536 -print_final_stats=1 "${dict[@]}" corpus "${seeds[@]}"
