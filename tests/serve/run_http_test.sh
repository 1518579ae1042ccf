#!/usr/bin/env bash
# run_http_test.sh — the HTTP front's test in one command:
#   tests/serve/run_http_test.sh DIR
# Uses DIR/test_http when a build system made it (CMake), else (re)builds it
# there with gcc from the sources: http.c, hub.c (DPEP_HUB_SRC overrides),
# the text and base libraries, fake_loop.c, test_http.c; DPEP_HTTP_CFLAGS
# adds flags (e.g. -fsanitize=thread). The DeepSeek-V3 tokenizer comes from
# tests/reference/tokenizers (xz). Exit 0: passed; 77: skipped (no xz).
set -uo pipefail
dir=${1:?usage: run_http_test.sh BUILD_OR_TMP_DIR}
src=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$dir"
command -v xz >/dev/null || { echo "SKIP: xz not found"; exit 77; }
work=$(mktemp -d "${TMPDIR:-/tmp}/dpep-http-XXXXXX")
trap 'rm -rf "$work"' EXIT

bin=$dir/test_http
if [[ ! -x $bin || -e $dir/test_http.gcc ]]; then
    inc=(-I"$src/runtime/serve" -I"$src/runtime/text" -I"$src/runtime/base" -I"$src/runtime/engine"
         -I"$src/runtime/model" -I"$src/runtime/config" -I"$src/runtime/world" -I"$src/runtime/sched"
         -I"$src/attn" -I"$src/comm" -I"$src/moe" -I"$src/tests")
    # shellcheck disable=SC2046
    gcc -std=gnu11 -O1 -g -Wall -Wextra -Wshadow -Wno-format-truncation ${DPEP_HTTP_CFLAGS:-} \
        "${inc[@]}" $(pkg-config --cflags ompi-c libmicrohttpd jansson) \
        "$src/runtime/serve/http.c" "${DPEP_HUB_SRC:-$src/runtime/serve/hub.c}" \
        "$src"/runtime/text/*.c "$src"/runtime/base/{status,log,grow,clock}.c \
        "$src/tests/serve/fake_loop.c" "$src/tests/serve/test_http.c" \
        -o "$bin" $(pkg-config --libs ompi-c libmicrohttpd jansson) -lpcre2-8 -lutf8proc -lpthread -lm \
        || { echo "FAIL: build of test_http"; exit 1; }
    touch "$dir/test_http.gcc" # ours: rebuilt on every run
fi

tok=$work/deepseek-v3
mkdir -p "$tok"
xz -dc "$src/tests/reference/tokenizers/deepseek-v3/tokenizer.json.xz" > "$tok/tokenizer.json" || exit 1
cp "$src/tests/reference/tokenizers/deepseek-v3/tokenizer_config.json" "$tok/"
exec timeout 300 "$bin" "$tok" "$src/tests/serve/test_http.py" "$work"
