#!/usr/bin/env bash
# test_text_cli.sh — text in and out from the command line and end to end:
#   dpep tokenize / detokenize on the real DeepSeek-V3 tokenizer (ids as HF
#   gives them), chat rendering, every bad input named with exit 2 (FIFOs
#   and devices refused without blocking); then a
#   tiny model generated with that tokenizer (`dpep model gen --tokenizer`)
#   serving a workload of `text` and `messages` lines on 2 ranks, whose
#   input lengths equal what `dpep tokenize` says.
#   test_text_cli.sh DPEP SRC_DIR
set -uo pipefail
dpep=$1
src=$2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_mpi_yield_when_idle=1
command -v xz >/dev/null || { echo "SKIP: xz not found"; exit 77; }
tmp=$(mktemp -d /tmp/dpep-textcli-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
fails=0 passes=0
check() { # name cond-output expected-substring
    if [[ "$2" == *"$3"* ]]; then passes=$((passes + 1)); else echo "FAIL $1: got [$2] expected [$3]"; fails=$((fails + 1)); fi
}
tok=$tmp/v3
mkdir -p "$tok"
xz -dc "$src/tests/reference/tokenizers/deepseek-v3/tokenizer.json.xz" > "$tok/tokenizer.json"
cp "$src/tests/reference/tokenizers/deepseek-v3/tokenizer_config.json" "$tok/"

# ids as HF gives them (tests/reference/tokenizers/deepseek-v3/golden.json.xz)
check "tokenize" "$("$dpep" tokenize "$tok" --text 'Hello world')" "[0, 19923, 2058]"
check "tokenize no special" "$("$dpep" tokenize "$tok" --text ' Hello world' --no-special-tokens)" "[45948, 2058]"
printf 'Hello world' > "$tmp/t.txt"
check "tokenize file" "$("$dpep" tokenize "$tok" --text-file "$tmp/t.txt")" "[0, 19923, 2058]"
check "detokenize" "$("$dpep" detokenize "$tok" 0 19923 2058)" "<｜begin▁of▁sentence｜>Hello world"
check "detokenize skip" "$("$dpep" detokenize "$tok" --skip-special-tokens '[0, 19923, 2058]')" "Hello world"
echo '[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]' > "$tmp/chat.json"
check "chat render" "$("$dpep" tokenize "$tok" --chat "$tmp/chat.json" --add-generation-prompt --render)" \
      "<｜begin▁of▁sentence｜>Be brief.<｜User｜>Hi<｜Assistant｜>"
check "chat ids" "$("$dpep" tokenize "$tok" --chat "$tmp/chat.json" --add-generation-prompt)" "[0, "

# added tokens with lstrip / rstrip / single_word (tests/text/added_flags: ids from HF)
while IFS= read -r line; do
    text=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["text"], end="")' "$line")
    want=$(python3 -c 'import json,sys; print(json.dumps(json.loads(sys.argv[1])["ids"]))' "$line")
    check "added flags [$text]" "$("$dpep" tokenize "$src/tests/text/added_flags" --text "$text" --no-special-tokens)" "$want"
done < "$src/tests/text/added_flags/golden.jsonl"

# bad input: named, exit 2, never a crash
out=$("$dpep" tokenize "$tmp/nowhere" --text hi 2>&1); rc=$?
check "missing dir" "$rc $out" "2 $tmp/nowhere/tokenizer.json:"
mkdir -p "$tmp/garbled"; head -c 5000 "$tok/tokenizer.json" > "$tmp/garbled/tokenizer.json"
out=$("$dpep" tokenize "$tmp/garbled" --text hi 2>&1); rc=$?
check "garbled" "$rc $out" "2 $tmp/garbled/tokenizer.json:"
mkdir -p "$tmp/wp"; echo '{"model": {"type": "WordPiece", "vocab": {}}}' > "$tmp/wp/tokenizer.json"
out=$("$dpep" tokenize "$tmp/wp" --text hi 2>&1); rc=$?
check "unknown model" "$rc $out" "2 $tmp/wp/tokenizer.json: model.type: WordPiece is not supported (expected BPE)"
out=$("$dpep" tokenize "$tok" --text $'ab\xffcd' 2>&1); rc=$?
check "invalid utf-8" "$rc $out" "2 text: invalid UTF-8 at byte 2"
out=$("$dpep" detokenize "$tok" 19923 999999 2>&1); rc=$?
check "id out of range" "$rc $out" "2 ids[1]: 999999 is not a token id"
mkdir -p "$tmp/chatml"; cp "$tok/tokenizer.json" "$tmp/chatml/"
echo '{"chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"}' \
    > "$tmp/chatml/tokenizer_config.json"
out=$("$dpep" tokenize "$tmp/chatml" --chat "$tmp/chat.json" 2>&1); rc=$?
check "unsupported template" "$rc $out" "2 $tmp/chatml/tokenizer_config.json: chat_template: unsupported chat template"
echo '[{"content": "no role"}]' > "$tmp/bad_chat.json"
out=$("$dpep" tokenize "$tok" --chat "$tmp/bad_chat.json" 2>&1); rc=$?
check "chat without role" "$rc $out" "2 $tmp/bad_chat.json: messages[0].role: missing"
out=$("$dpep" tokenize "$tok" 2>&1); rc=$?
check "usage" "$rc" "2"
# inputs that are not regular files: refused at once (a FIFO without a
# writer used to block open() forever; timeout makes a hang a failure)
mkdir -p "$tmp/fifo-tok" "$tmp/fifo-conf"; mkfifo "$tmp/fifo-tok/tokenizer.json"
out=$(timeout -k 5 10 "$dpep" tokenize "$tmp/fifo-tok" --text hi 2>&1); rc=$?
check "FIFO tokenizer.json" "$rc $out" "2 $tmp/fifo-tok/tokenizer.json: is a FIFO (named pipe) (expected a regular file)"
cp "$src/tests/text/added_flags/tokenizer.json" "$tmp/fifo-conf/"; mkfifo "$tmp/fifo-conf/tokenizer_config.json"
out=$(timeout -k 5 10 "$dpep" tokenize "$tmp/fifo-conf" --text hi 2>&1); rc=$?
check "FIFO tokenizer_config.json" "$rc $out" "2 $tmp/fifo-conf/tokenizer_config.json: is a FIFO (named pipe) (expected a regular file)"
mkfifo "$tmp/fifo.txt"
out=$(timeout -k 5 10 "$dpep" tokenize "$tok" --text-file "$tmp/fifo.txt" 2>&1); rc=$?
check "FIFO --text-file" "$rc $out" "2 --text-file $tmp/fifo.txt: is a FIFO (named pipe) (expected a regular file)"
out=$(timeout -k 5 10 "$dpep" tokenize "$tok" --chat /dev/zero 2>&1); rc=$?
check "/dev/zero --chat" "$rc $out" "2 --chat /dev/zero: is a character device (expected a regular file)"
check "--text-file - (stdin)" "$(printf 'Hello world' | "$dpep" tokenize "$tok" --text-file -)" "[0, 19923, 2058]"

# a tiny model that speaks real DeepSeek tokens, end to end on 2 ranks
model=$tmp/model
"$dpep" model gen --tokenizer "$tok" --set hidden_size=64 --set num_hidden_layers=2 "$model" > /dev/null ||
    { echo "FAIL model gen --tokenizer"; exit 1; }
check "vocab follows the tokenizer" "$(grep vocab_size "$model/config.json")" '"vocab_size": 128815'
cat > "$tmp/work.jsonl" <<'JSONL'
{"id": "t", "text": "Hello world", "max_new_tokens": 3}
{"id": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "max_new_tokens": 3}
{"id": "bad", "messages": [{"content": "no role"}]}
JSONL
cat > "$tmp/deploy.yaml" <<YAML
model: {path: $model}
parallel: {tp: 2, dp: 2, ep: 2, enable_dp_attention: true}
runtime: {device: cpu}
workload: {kind: file, path: $tmp/work.jsonl}
YAML
out=$(timeout 120 mpirun -np 2 --oversubscribe --bind-to none "$dpep" run "$tmp/deploy.yaml" --quiet \
      --output "$tmp/out.jsonl" 2>&1); rc=$?
check "run with text and messages (one bad line skipped: exit 3)" "$rc" "3"
check "bad messages line named" "$out" "work.jsonl:3: messages:"
n_text=$("$dpep" tokenize "$tok" --text 'Hello world' | tr -cd ',' | wc -c)
n_chat=$(sed -n 2p "$tmp/work.jsonl" | python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["messages"]))' |
         "$dpep" tokenize "$tok" --chat - --add-generation-prompt | tr -cd ',' | wc -c)
check "text line input_len" "$(grep '"id":"t"' "$tmp/out.jsonl")" "\"input_len\":$((n_text + 1))"
check "messages line input_len" "$(grep '"id":"m"' "$tmp/out.jsonl")" "\"input_len\":$((n_chat + 1))"
echo "$passes passed, $fails failed"
[ "$fails" = 0 ]
