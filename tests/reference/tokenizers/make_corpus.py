#!/usr/bin/env python3
"""Write the tokenizer test corpus (corpus.jsonl) and the invalid-UTF-8 list
(invalid_utf8.jsonl) next to this file. Deterministic: no randomness beyond a
fixed-seed PRNG, no timestamps. Plain Python 3 (no third-party modules).

    python3 tests/reference/tokenizers/make_corpus.py

corpus.jsonl: one JSON object per line, {"name": str, "text": str}; names are
unique. Written with ensure_ascii=False, so the only \\u escapes in the file
are for U+0000..U+001F (plus the usual \\" \\\\ \\n \\t \\r \\b \\f).

invalid_utf8.jsonl: {"name": str, "hex": str, "replaced": str} where hex is
the raw (invalid) UTF-8 byte string and replaced is
bytes.fromhex(hex).decode("utf-8", "replace") -- what a caller that repairs
input the Python way would hand to Hugging Face. HF itself cannot take these
bytes at all (it only accepts Python str); see README.md.
"""
import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))

C = []  # (name, text)


def add(name, text):
    assert all(n != name for n, _ in C), name
    C.append((name, text))


# ---------------------------------------------------------------- English
add("empty", "")
add("single_space", " ")
add("single_letter", "a")
add("hello_world", "Hello world")
add("hello_world_leading_space", " Hello world")
add("en_sentence", "The quick brown fox jumps over the lazy dog.")
add("en_prose",
    "It was the best of times, it was the worst of times, it was the age of "
    "wisdom, it was the age of foolishness, it was the epoch of belief, it was "
    "the epoch of incredulity, it was the season of Light, it was the season "
    "of Darkness, it was the spring of hope, it was the winter of despair.")
add("en_paragraphs",
    "Large language models are trained on text.\n\nThey predict the next "
    "token. Tokenizers split text into tokens; each token has an id.\n\n"
    "  Indented line after a blank line.\nLast line without newline")
add("en_contractions", "I'm sure you'll see they've done it; isn't it? We'd've. O'Neil's")
add("en_case", "UPPER lower MiXeD camelCase snake_case kebab-case SCREAMING_SNAKE")
add("en_punct", "Hello, world! How are you? (Fine.) [ok] {yes} \"quoted\" 'single' -- dash...")
add("en_repeated_punct", "What?!?!... no!!! ---- ==== **** ____ ~~~~ ////")
add("en_quotes_typographic", "“Smart quotes” and ‘single ones’ — em dash – en dash … ellipsis")

# ---------------------------------------------------------------- CJK etc.
add("zh_simple", "你好，世界！")
add("zh_prose",
    "深度求索是一家专注于人工智能基础技术研究的公司。我们希望用最少的资源，"
    "训练出最好的模型。今天天气很好，我们去公园散步吧。")
add("zh_traditional", "繁體中文測試：臺灣、香港、澳門。電腦與網路。")
add("zh_mixed_en", "DeepSeek-V3 是一个 MoE 模型，总参数 671B，激活 37B。")
add("zh_punct_fullwidth", "「引号」『双引号』（括号）【方括号】《书名》——破折号……省略号；：？！")
add("zh_rare_chars", "𠀀𠀁𪚥𰻞龘齉靐麤 鱻 〇")
add("ja_kana_kanji",
    "日本語のテキストです。ひらがな、カタカナ、漢字が混ざっています。"
    "東京は大きな都市です。")
add("ja_halfwidth_kana", "ｶﾀｶﾅ ﾊﾝｶｸ ｱｲｳｴｵ ｰ ﾞﾟ")
add("ja_long_vowel", "コーヒー スーパー ラーメン ー〜")
add("ko_hangul", "안녕하세요, 세계! 한국어 텍스트입니다. 서울은 큰 도시입니다.")
add("ko_jamo", "ᄀᄁᄂ ᅡᅢᅣ ᆨᆩᆪ ㄱㄴㄷ ㅏㅑ")
add("cjk_compat", "㈱ ㍻ ㌀ ﹏ ＡＢＣ１２３ ａｂｃ　全角スペース")

# ---------------------------------------------------------------- other scripts
add("ru_cyrillic", "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю.")
add("el_greek", "Γειά σου Κόσμε! Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. αβγδε ΑΒΓΔΕ ς")
add("ar_arabic", "مرحبا بالعالم! هذا نص عربي للاختبار. ١٢٣٤٥٦٧٨٩٠")
add("ar_diacritics", "اَلْعَرَبِيَّةُ لُغَةٌ جَمِيلَةٌ")
add("he_hebrew", "שלום עולם! זהו טקסט בעברית. שָׁלוֹם")
add("bidi_mixed", "English then עברית then العربية then English again 123.")
add("hi_devanagari", "नमस्ते दुनिया! हिन्दी पाठ। क्षत्रिय ज्ञान")
add("th_thai", "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ")
add("ta_tamil", "வணக்கம் உலகம்")
add("vi_vietnamese", "Tiếng Việt có dấu: Xin chào thế giới, Đây là một câu.")
add("de_fr_es", "Größe Straße Übung ÄÖÜ äöüß; français: élève, garçon, où; español: ñandú, ¿qué? ¡sí!")
add("pl_tr_latin_ext", "Zażółć gęślą jaźń. İstanbul ığdır Şş Ğğ. Ærøskøbing Ĳsselmeer ǅ ǈ ǋ")
add("am_ethiopic", "ሰላም ዓለም")
add("ka_georgian", "გამარჯობა მსოფლიო ႠႡႢ")
add("hy_armenian", "Բարեւ աշխարհ")
add("mixed_scripts",
    "Mixed: English, 中文, 日本語, 한국어, Русский, Ελληνικά, العربية, עברית, हिन्दी, ไทย.")
add("mixed_no_spaces", "abc中文def日本語ghi한국어jklРусскийmno")

# ---------------------------------------------------------------- code
add("py_code",
    "def fib(n: int) -> int:\n"
    "    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
    "    a, b = 0, 1\n"
    "    for _ in range(n):\n"
    "        a, b = b, a + b\n"
    "    return a\n"
    "\n"
    "\n"
    "if __name__ == \"__main__\":\n"
    "    print([fib(i) for i in range(10)])  # comment\n")
add("py_code_tabs",
    "class Foo:\n\tdef bar(self):\n\t\tif self.x:\n\t\t\treturn {'a': 1, \"b\": [2, 3]}\n\t\treturn None\n")
add("c_code",
    "#include <stdio.h>\n"
    "\n"
    "static int add(int a, int b) { return a + b; }\n"
    "\n"
    "int main(int argc, char **argv) {\n"
    "    for (int i = 0; i < argc; ++i) {\n"
    "        printf(\"%d: %s\\n\", i, argv[i]);\n"
    "    }\n"
    "    return add(1, 2) != 3;  /* never */\n"
    "}\n")
add("json_pretty",
    "{\n"
    "  \"name\": \"dpep\",\n"
    "  \"version\": \"0.1.0\",\n"
    "  \"nested\": {\n"
    "    \"list\": [1, 2.5, -3e10, true, false, null],\n"
    "    \"unicode\": \"\\u00e9\\u4e2d\",\n"
    "    \"empty\": {}\n"
    "  }\n"
    "}")
add("json_compact", "{\"a\":1,\"b\":[true,false,null],\"c\":{\"d\":\"e\"}}")
add("shell_cmd", "$ ls -la /usr/local/bin | grep -E '^-r' && echo \"done\" > /dev/null 2>&1")
add("html_xml", "<html><body class=\"x\"><p>Hi &amp; bye &lt;3</p><br/></body></html>")
add("markdown",
    "# Title\n\n## Subtitle\n\n- item one\n- item two\n  - nested\n\n```python\nprint('x')\n```\n\n"
    "| a | b |\n|---|---|\n| 1 | 2 |\n\n> quote\n\n**bold** _it_ `code`")
add("regex_like", r"^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[a-z0-9!#$%&'*+/=?^_`{|}~-]+)*)@\w+\.\w{2,}$")
add("sql", "SELECT id, name FROM users WHERE age >= 18 AND name LIKE 'A%' ORDER BY id DESC LIMIT 10;")
add("rust_code", "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * x).collect();\n    println!(\"{:?}\", v);\n}\n")

# ---------------------------------------------------------------- numbers
add("digits_short", "0 1 12 123 1234 12345")
add("digits_long_run", "1234567890" * 5)
add("digits_very_long", "31415926535897932384626433832795028841971693993751058209749445923078164062862089986280348253421170679")
add("numbers_decimal", "3.14159 2.71828 -0.5 +1e-10 6.022e23 0.000001 .5 5.")
add("numbers_thousands", "1,234,567 and 1.234.567,89 and 1 234 567 and 12,34,567")
add("numbers_mixed_text", "In 2024, 37B of 671B parameters were active; version v3.1.2-rc4, item #42, 99%.")
add("numbers_fullwidth_and_other", "１２３４５ ٠١٢٣٤ ०१२३४ ⅠⅡⅢⅣ ½ ¾ ² ³ ① ② ③")
add("phone_dates", "Call +1 (555) 123-4567 on 2025-01-31T23:59:59Z or 31/01/2025 at 11:59pm.")

# ---------------------------------------------------------------- whitespace
add("spaces_2", "a  b")
add("spaces_run_16", "a" + " " * 16 + "b")
add("spaces_run_100", " " * 100)
add("spaces_leading_trailing", "   leading and trailing   ")
add("trailing_space", "trailing space ")
add("tabs", "a\tb\t\tc\t\t\t\td")
add("tabs_only", "\t\t\t\t")
add("newlines_3", "a\n\n\nb")
add("newline_only", "\n")
add("newlines_many", "\n" * 20)
add("crlf", "line one\r\nline two\r\n\r\nline four\r\n")
add("cr_only", "old mac\rline\r\r")
add("whitespace_mixed", " \t \n \r\n\t\t  \n\n  x  \t\n")
add("space_before_newline", "end of line   \nnext line\t\n")
add("unicode_spaces",
    "nbsp\u00a0here, en\u2002em\u2003thin\u2009hair\u200a ideographic\u3000narrow\u202f"
    "figure\u2007 zwsp\u200bzwnj\u200czwj\u200d word\u2060joiner, ls\u2028ps\u2029nel\u0085end")
add("vertical_ws", "a\x0bb\x0cc")

# ---------------------------------------------------------------- emoji & marks
add("emoji_simple", "I love 🍕 and 🎉! 😀😃😄😁")
add("emoji_zwj", "Family: 👨‍👩‍👧‍👦 couple: 👩‍❤️‍👨 technologist: 🧑🏽‍💻 rainbow flag: 🏳️‍🌈")
add("emoji_skin_tones", "👋🏻👋🏼👋🏽👋🏾👋🏿")
add("emoji_flags", "🇺🇸🇨🇳🇯🇵🇰🇷🇩🇪🇫🇷 🏴󠁧󠁢󠁳󠁣󠁴󠁿")
add("emoji_keycap_vs", "1️⃣ #️⃣ ©️ ®️ ™️ ❤️ ❤︎ ☺")
add("emoji_only_long", "😀" * 30)
add("combining_marks", "e\u0301 a\u0300 o\u0308 n\u0303 Z\u0351\u0352\u0353 q\u0307\u0323")
add("zalgo", "Z̴̡̪̫̖̥̔̊̈́͗a̵͎̗̽̅l̸̢̰̈́̈́g̷̣̈́o̶͚͑")
add("nfc_vs_nfd", "caf\u00e9 vs cafe\u0301; \u00c5 vs A\u030a; \u1e9b\u0323")
add("ligatures_compat", "ﬁ ﬂ ﬀ ﬃ ℌ ℍ ℕ Ⅸ ㎏ ㎞ ™ №")

# ---------------------------------------------------------------- special tokens inline
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
add("special_bos_alone", BOS)
add("special_eos_alone", EOS)
add("special_bos_text", BOS + "Hello")
add("special_bos_mid", "Hello" + BOS + "world" + EOS)
add("special_bos_spaces", "a " + BOS + " b")
add("special_user_assistant", "<｜User｜>What is 2+2?<｜Assistant｜>4" + EOS)
add("special_user_spaces", " <｜User｜> hi <｜Assistant｜> ")
add("special_think", "<think>\nLet me think.\n</think>\n\nThe answer is 4.")
add("special_think_adjacent", "<think></think><think>x</think>")
add("special_think_nested_angle", "<<think>> <</think>> <think >")
add("special_pad", "<｜▁pad▁｜>x<｜▁pad▁｜>")
add("special_placeholder", "<｜place▁holder▁no▁0｜><｜place▁holder▁no▁797｜>")
add("special_tools",
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
    "```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>")
add("special_tool_outputs",
    "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>{\"t\": 21}<｜tool▁output▁end｜><｜tool▁outputs▁end｜>")
add("special_fim", "<｜fim▁begin｜>def f():\n    <｜fim▁hole｜>\n    return x<｜fim▁end｜>")
add("special_eot_ascii", "<|EOT|> and <|endoftext|> and <s></s>")
add("special_search", "<｜search▁begin｜>query<｜search▁end｜>")
add("special_partial", "<｜begin▁of▁sentence <｜User| <｜User｜ ｜> <｜ <| |> <think </think")
add("special_ascii_bar_lookalike", "<|begin▁of▁sentence|> <|User|> <｜begin_of_sentence｜>")
add("special_repeated", (BOS + EOS) * 5)
add("special_overlap_tries", "<｜User｜<｜Assistant｜>>")

# ---------------------------------------------------------------- long inputs
rng = random.Random(13)
letters = "abcdefghijklmnopqrstuvwxyz"
add("long_word_5000", "".join(rng.choice(letters) for _ in range(5000)))
add("long_word_repeated_a_5000", "a" * 5000)
add("long_cjk_run", "".join(chr(rng.randrange(0x4E00, 0x9FA6)) for _ in range(2000)))
add("long_mixed_paragraph", " ".join(
    ["The model", "模型", "モデル", "모델", "1234", "🚀", "x=y+z;", "\n"] * 60))
add("long_punct_run", "!?" * 500 + "." * 500)
add("long_base64",
    "".join(rng.choice(letters + letters.upper() + "0123456789+/") for _ in range(3000)) + "==")

# ---------------------------------------------------------------- URLs / misc
add("urls",
    "See https://example.com/path/to/page?query=1&b=two#frag and "
    "http://sub.domain.co.uk:8080/a_b-c.d/~user/ or ftp://x.y/z.")
add("email_path", "mail me: first.last+tag@example.org; path C:\\Users\\me\\file.txt; /etc/passwd")
add("hashtags_mentions", "@user #hashtag $TICKER %20 &nbsp; ^caret |pipe| ~tilde`backtick`")
add("math_symbols", "∀x∈ℝ: x²≥0; ∑ᵢ aᵢ = ∫₀¹ f(x) dx ≤ √2 ≠ ∞; α+β→γ ⊂ ∪ ∩ ∅ ≈ ± × ÷ ∂ ∇")
add("latex", r"$\frac{a}{b} + \sqrt{x^2 + y^2} = \sum_{i=1}^{n} \alpha_i$ and \begin{align} x &= 1 \end{align}")
add("currency", "$100 €50 £30 ¥1000 ₹500 ₩1000 ₿0.01 ¢5")
add("box_drawing", "┌──┬──┐\n│ab│cd│\n└──┴──┘ ░▒▓█ ←↑→↓ ★☆♠♣♥♦")
add("braille_misc_symbols", "⠓⠑⠇⠇⠕ ♩♪♫♬ ☯☮☢☣ ⚡⚙ ✓✗")

# ---------------------------------------------------------------- control / odd Unicode
add("control_c0", "a\x01b\x02c\x03d\x07e\x08f\x1bg\x1fh\x7fi")
add("control_nul", "before\x00after")
add("control_c1", "x\x80y\x85z\x9f")
add("bom_start", "\ufeffBOM at start")
add("replacement_char", "bad \ufffd byte \ufffd\ufffd")
add("noncharacters", "\ufdd0 \ufdef \ufffe \uffff \U0001fffe \U0010ffff")
add("private_use", "\ue000\uf8ff \U000f0000 \U00100000\U0010fffd")
add("unassigned_and_tags", "\U000e0041\U000e0042 \u0378 \U0001ffff \U000e007f")
add("variation_selectors", "\u845b\U000e0100 \u845b\U000e0101 a\ufe0f")
add("bidi_controls", "\u202eRLO\u202c \u200fRLM\u200e LRM \u2066iso\u2069 \u061c")
add("supplementary_planes", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝓤𝓷𝓲𝓬𝓸𝓭𝓮 𝟘𝟙𝟚 𐍈 𒀀 𓀀")
add("surrogate_range_neighbours", "\ud7ff\ue000")
add("lone_combining_start", "\u0301\u0302 start with marks")
add("all_ascii_printable", "".join(chr(c) for c in range(0x20, 0x7f)))
add("latin1_block", "".join(chr(c) for c in range(0xa0, 0x100)))
add("byte_level_alphabet_chars", "ĀāĂăĠġĢģĤĥĦħŁłŃ")  # chars the ByteLevel map uses internally

# ---------------------------------------------------------------- pre-tokenizer range edges
# V3/R1 isolate [\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+; V2/V2.5 isolate
# [\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+ and have a long explicit letter class.
add("cjk_range_edges", "a\u4dff\u4e00\u9fa5\u9fa6\u9fffb \u3400\u303f\u3040\u309f\u30a0\u30ff\u3100\u31f0 "
    "\uf900\uac00\ud7a3\ud7ff \u07ff\u0800\u0905 x\u9fa5\u9fa6y \u3007\u3005\u30fc\uff70")
add("letter_range_edges", "\u00b5\u00c0\u00d6\u00d7\u00d8\u00f6\u00f7\u00f8\u01ba\u01bb\u01bc\u01c3\u01c4 "
    "\u0293\u0294\u0295\u02af\u02b0 \u0370\u0373\u0374\u0376 \u1e00\u1f15\u1f16 "
    "\u2102\u2103\u2107 \uff21\uff3a\uff3b\uff41 \U00010400\U0001e900 "
    "\uff01\uff0f\uff10\uff1a \u2018\u201f\u2020 \u3000\u3002\u3003")

# ---------------------------------------------------------------- random (fixed seed)
pool = (
    [chr(c) for c in range(0x20, 0x7f)] * 3
    + list("你好世界中文日本語ひらがなカタカナ한국어Привет")
    + ["😀", "👍🏽", "🇯🇵", "\n", "\t", "  ", "\r\n", "\u00e9", "e\u0301", "１", "\u3000"]
)
for i in range(8):
    n = rng.randrange(20, 200)
    add(f"random_{i}", "".join(rng.choice(pool) for _ in range(n)))
for i in range(4):
    # random codepoints from the whole valid range (no surrogates), weighted to BMP
    cps = []
    for _ in range(rng.randrange(10, 60)):
        while True:
            cp = rng.randrange(0x20, 0x3000) if rng.random() < 0.6 else rng.randrange(0x3000, 0x110000)
            if not 0xD800 <= cp <= 0xDFFF:
                break
        cps.append(chr(cp))
    add(f"random_codepoints_{i}", "".join(cps))

# ---------------------------------------------------------------- invalid UTF-8
INVALID = [
    ("lone_continuation", "61 80 62"),
    ("truncated_2byte", "61 c3"),
    ("truncated_3byte", "e4 bd"),
    ("truncated_4byte_mid", "f0 9f 98 41"),
    ("overlong_slash", "c0 af"),
    ("overlong_nul", "c0 80"),
    ("overlong_3byte", "e0 80 af"),
    ("encoded_surrogate", "ed a0 80"),
    ("above_max", "f4 90 80 80"),
    ("f5_byte", "f5 80 80 80"),
    ("ff_fe", "ff fe 41"),
    ("mixed_valid_invalid", "e4 bd a0 ff e5 a5 bd 80 80 f0 9f 98 80"),
]


def main():
    with open(os.path.join(HERE, "corpus.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for name, text in C:
            f.write(json.dumps({"name": name, "text": text}, ensure_ascii=False) + "\n")
    with open(os.path.join(HERE, "invalid_utf8.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for name, hx in INVALID:
            b = bytes.fromhex(hx.replace(" ", ""))
            f.write(json.dumps({"name": name, "hex": b.hex(),
                                "replaced": b.decode("utf-8", "replace")},
                               ensure_ascii=False) + "\n")
    print(f"corpus.jsonl: {len(C)} texts; invalid_utf8.jsonl: {len(INVALID)} byte strings")


if __name__ == "__main__":
    main()
