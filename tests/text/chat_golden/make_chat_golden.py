#!/usr/bin/env python3
"""Writes the chat-template goldens of tests/text/test_chat.c.

For each DeepSeek template (<name>.tokenizer_config.json here, copied from the
Hub repos deepseek-ai/DeepSeek-V2, -V2.5, -V3, -V3.1, -R1) it renders every
conversation below with transformers' Jinja renderer and writes <name>.json:

  {"template": NAME, "tokenizer_config": "NAME.tokenizer_config.json",
   "generator": "...", "cases": [CASE...], "errors": [ERROR...]}
  CASE  = {"name", "messages", "add_generation_prompt", "thinking", "expected",
           optional "hf_apply_chat_template": {"text"|"error": ...}}
  ERROR = {"name", "messages", "add_generation_prompt", "thinking",
           "jinja_error", "field"}

Every conversation goes to every template with the same options (`thinking`
is passed to all; only V3.1 reads it), so each file holds the same number of
conversations: those Jinja renders are CASEs, those where it raises are
ERRORs ("field" is the place dpep's message must name, e.g.
"messages[1].content").

Renderer. The expected text is what the template produces for the messages
as given, None values included (content null = Jinja None), rendered by
transformers.utils.chat_template_utils.render_jinja_template: the sandboxed
environment and arguments apply_chat_template uses (special tokens + kwargs).
transformers 5.x's apply_chat_template first DROPS every key whose value is
None (_normalize_chat_messages), which turns `content: null` into a missing
key; the DeepSeek templates then raise on every assistant tool-call message
with null content (and V2.5 no longer prints "None" for a null system
prompt). Where apply_chat_template differs from the template, its result is
recorded as "hf_apply_chat_template" for reference; for every other
conversation the generator asserts that both agree.

Usage: /work/venv-tok/bin/python tests/text/chat_golden/make_chat_golden.py
"""
import copy
import json
import os
import sys

import jinja2
import transformers
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ["deepseek-v2", "deepseek-v2.5", "deepseek-v3", "deepseek-v3.1", "deepseek-r1"]


def U(c):
    return {"role": "user", "content": c}


def A(c, calls=None, prefix=None):
    m = {"role": "assistant", "content": c}
    if calls is not None:
        m["tool_calls"] = calls
    if prefix is not None:
        m["prefix"] = prefix
    return m


def S(c):
    return {"role": "system", "content": c}


def T(c, call_id="call_0"):
    return {"role": "tool", "tool_call_id": call_id, "content": c}


def call(name, args, typ="function", cid="call_0"):
    c = {"id": cid, "function": {"name": name, "arguments": args}}
    if typ is not None:
        c["type"] = typ
    return c


W1 = call("get_weather", '{"city": "Paris"}')
W2 = call("get_time", '{"tz": "Europe/Paris"}', cid="call_1")
W3 = call("search", '{"q": "caf\u00e9 \u2615", "n": 3,\n "nested": {"a": [1, 2]}}', cid="call_2")
EMOJI = "h\u00e9llo \u4e16\u754c \U0001F680\U0001F468\u200D\U0001F469\u200D\U0001F467 \u00fc\u00df"
SPECIALS = ("User: fake\n\nAssistant: fake<\uff5cUser\uff5c>x<\uff5cAssistant\uff5c>y"
            "<\uff5cend\u2581of\u2581sentence\uff5c><\uff5ctool\u2581outputs\u2581end\uff5c></think>z")

# (name, messages, add_generation_prompt, thinking, error field or None)
# The error field is where the template raises, for the templates that do.
CONVS = [
    ("user_only", [U("Hello")], False, False),
    ("user_only_gen", [U("Hello")], True, False),
    ("system_user_gen", [S("You are a helpful assistant."), U("Hi")], True, False),
    ("two_systems", [S("First rule."), S("Second rule."), U("Hi")], True, False),
    ("systems_interleaved", [S("sys A"), U("q1"), S("sys B"), A("a1"), S("sys C"), U("q2")],
     True, False),
    ("system_only_gen", [S("Only a system prompt.")], True, False),
    ("multi_turn", [U("q1"), A("a1"), U("q2"), A("a2")], False, False),
    ("multi_turn_gen", [S("sys"), U("q1"), A("a1"), U("q2")], True, False),
    ("assistant_last_gen", [U("q1"), A("a1")], True, False),
    ("consecutive_users", [U("one"), U("two"), A("three"), A("four")], True, False),
    ("assistant_first", [A("I speak first."), U("ok")], True, False),
    ("think_in_history", [U("2+2?"), A("<think>\nadd them\n</think>\n\n4"), U("and 3+3?")],
     True, False),
    ("think_twice", [U("q"), A("<think>a</think>b</think>c"), U("again")], True, False),
    ("think_unclosed", [U("q"), A("<think>never closed"), U("r")], False, False),
    ("think_only_close", [U("q"), A("</think>")], False, False),
    ("empty_strings", [S(""), U(""), A(""), U("")], True, False),
    ("unicode_emoji", [S(EMOJI), U(EMOJI), A(EMOJI), U("\u0001 ctrl \u007f \u00a0")], True, False),
    ("newlines_specials", [S("a\n\nb"), U(SPECIALS), A("x\n\n\ny\r\n"), U("\n\n")], True, False),
    ("thinking_gen", [U("Think hard.")], True, True),
    ("thinking_history", [S("s"), U("q1"), A("<think>r1</think>a1"), U("q2")], True, True),
    ("thinking_no_gen", [U("q1"), A("a1")], False, True),
    ("prefix_thinking", [U("Continue me"), A("Partial", prefix=True)], False, True),
    ("prefix_not_thinking", [U("Continue me"), A("Partial", prefix=True)], False, False),
    ("prefix_false", [U("q"), A("<think>r</think>a", prefix=False)], True, True),
    ("tool_null_one", [U("Weather?"), A(None, [W1]), T("22C"), A("It is 22C.")], False, False),
    ("tool_null_two_calls", [U("Weather and time?"), A(None, [W1, W2]), T("22C"), T("10:00", "call_1"),
                             A("22C at 10:00."), U("thanks")], True, False),
    ("tool_null_three_calls", [U("q"), A(None, [W1, W2, W3]), T("r1"), T("r2"), T("r3"), A("done")],
     False, False),
    ("tool_content_one", [U("Weather?"), A("Let me check.", [W1]), T("22C"), A("22C.")], True, False),
    ("tool_content_two_calls", [U("q"), A("Checking both.", [W1, W2]), T("22C"), T("10:00"),
                                A("ok")], False, False),
    ("tool_two_assistant_turns", [S("sys"), U("q1"), A(None, [W1]), T("r1"), A("a1"), U("q2"),
                                  A(None, [W2, W3]), T("r2"), T("r3"), A("a2")], True, False),
    ("tool_content_then_null", [U("q1"), A("first", [W1]), T("r1"), A("a1"), U("q2"),
                                A(None, [W2]), T("r2"), A("a2")], False, False),
    ("tool_ends_with_tool_gen", [U("q"), A(None, [W1]), T("r1")], True, False),
    ("tool_ends_with_tools_nogen", [U("q"), A(None, [W1, W2]), T("r1"), T("r2")], False, False),
    ("tool_then_user", [U("q"), A(None, [W1]), T("r1"), U("never mind")], True, False),
    ("tool_think_after_outputs", [U("q"), A(None, [W3]), T("{\"ok\": true}"),
                                  A("<think>x</think>y")], False, True),
    ("tool_calls_empty_list", [U("q"), A("plain", [])], True, False),
    ("tool_calls_empty_list_null", [U("q"), A(None, [])], True, False),
    ("tool_unicode_args", [U(EMOJI), A(None, [W3]), T(EMOJI + "\n\nend"), A(EMOJI)], True, True),
    ("tool_outputs_without_call", [U("q"), T("orphan output"), T("second"), A("a")], True, False),
    ("unknown_roles", [{"role": "developer", "content": "dev"}, U("q"),
                       {"role": "function", "content": "f"}, A("a"), {"role": "ipython", "content": None}],
     True, False),
    ("call_type_custom", [U("q"), A(None, [call("f", "{}", typ="custom")]), T("r")], False, False),
    # Inputs on which some templates raise (the others render them).
    ("err_user_null", [S("s"), U(None)], True, False),
    ("err_system_null", [S(None), U("q")], True, False),
    ("err_system_null_second", [S("s"), S(None), U("q")], False, False),
    ("err_assistant_null_plain", [U("q"), A(None)], False, False),
    ("err_tool_null", [U("q"), A(None, [W1]), T(None)], False, False),
    ("err_call_no_type", [U("q"), A(None, [call("f", "{}", typ=None)])], False, False),
    ("err_call_name_null", [U("q"), A(None, [call(None, "{}")])], False, False),
    ("err_call_args_null", [U("q"), A(None, [W1, call("g", None)])], False, False),
    ("err_call_args_null_content", [U("q"), A("text", [call("g", None)])], False, False),
    ("err_after_tool_null", [U("q"), A(None, [W1]), T("r"), A(None)], False, False),
]

# Where each error conversation fails, for the templates where it does.
ERROR_FIELD = {
    "err_user_null": "messages[1].content",
    "err_system_null": "messages[0].content",
    "err_system_null_second": "messages[1].content",
    "err_assistant_null_plain": "messages[1].content",
    "err_tool_null": "messages[2].content",
    "err_call_no_type": "messages[1].tool_calls[0].type",
    "err_call_name_null": "messages[1].tool_calls[0].function.name",
    "err_call_args_null": "messages[1].tool_calls[1].function.arguments",
    "err_call_args_null_content": "messages[1].tool_calls[0].function.arguments",
    "err_after_tool_null": "messages[3].content",
}


def error_field(name, cname, msgs):
    """V2 concatenates the content of every user, assistant and system message
    in order, so it fails at the first null one; the others as listed above."""
    if name == "deepseek-v2":
        for i, m in enumerate(msgs):
            if m["role"] in ("user", "assistant", "system") and m["content"] is None:
                return "messages[%d].content" % i
        sys.exit("%s/%s: no null content" % (name, cname))
    return ERROR_FIELD[cname]


def special_tokens(cfg):
    def content(v):
        return v["content"] if isinstance(v, dict) else v
    return {k: content(cfg[k]) for k in ("bos_token", "eos_token") if cfg.get(k) is not None}


def render_raw(template, specials, msgs, gen, thinking):
    """The template on the messages as given (None kept), as transformers renders it."""
    out, _ = render_jinja_template(conversations=[copy.deepcopy(msgs)], chat_template=template,
                                   add_generation_prompt=gen, thinking=thinking, **specials)
    return out[0]


def render_hf(tok, msgs, gen, thinking):
    return tok.apply_chat_template(copy.deepcopy(msgs), tokenize=False, add_generation_prompt=gen,
                                   thinking=thinking)


def outcome(fn):
    try:
        return {"text": fn()}
    except Exception as e:  # noqa: BLE001 - any Jinja/Python error is the outcome
        return {"error": "%s: %s" % (type(e).__name__, e)}


def make_one(name):
    cfg_path = os.path.join(HERE, name + ".tokenizer_config.json")
    with open(cfg_path, encoding="utf-8") as f:
        cfg = json.load(f)
    template = cfg["chat_template"]
    specials = special_tokens(cfg)
    tok = _tok(name, cfg)
    cases, errors = [], []
    for cname, msgs, gen, thinking in CONVS:
        raw = outcome(lambda: render_raw(template, specials, msgs, gen, thinking))
        hf = outcome(lambda: render_hf(tok, msgs, gen, thinking))
        rec = {"name": cname, "messages": msgs, "add_generation_prompt": gen, "thinking": thinking}
        if "text" in raw:
            rec["expected"] = raw["text"]
            cases.append(rec)
        else:
            if cname not in ERROR_FIELD and name != "deepseek-v2":
                sys.exit("%s/%s: unexpected Jinja error %s" % (name, cname, raw["error"]))
            rec["jinja_error"] = raw["error"]
            rec["field"] = error_field(name, cname, msgs)
            errors.append(rec)
        if hf != raw:
            if not _has_none(msgs):
                sys.exit("%s/%s: apply_chat_template differs without None values" % (name, cname))
            rec["hf_apply_chat_template"] = hf
    return {
        "template": name,
        "tokenizer_config": name + ".tokenizer_config.json",
        "generator": "tests/text/chat_golden/make_chat_golden.py, transformers %s, jinja2 %s"
                     % (transformers.__version__, jinja2.__version__),
        "cases": cases,
        "errors": errors,
    }


def _has_none(v):
    if v is None:
        return True
    if isinstance(v, dict):
        return any(_has_none(x) for x in v.values())
    if isinstance(v, list):
        return any(_has_none(x) for x in v)
    return False


def _tok(name, cfg):
    """The real tokenizer when its directory is at hand ($DSTOK/<name>, default
    /tmp/dstok/<name>, holding tokenizer.json + tokenizer_config.json); else
    one carrying only the config's chat template and special tokens, which is
    all apply_chat_template(tokenize=False) uses."""
    real = os.path.join(os.environ.get("DSTOK", "/tmp/dstok"), name)
    if os.path.exists(os.path.join(real, "tokenizer.json")):
        tok = AutoTokenizer.from_pretrained(real)
        assert tok.chat_template == cfg["chat_template"], real
        return tok
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    specials = special_tokens(cfg)
    inner = Tokenizer(WordLevel({v: i for i, v in enumerate(specials.values())}, unk_token=None))
    tok = PreTrainedTokenizerFast(tokenizer_object=inner, **specials)
    tok.chat_template = cfg["chat_template"]
    return tok


def main():
    for name in NAMES:
        doc = make_one(name)
        path = os.path.join(HERE, name + ".json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print("%s: %d rendered, %d errors" % (path, len(doc["cases"]), len(doc["errors"])))


if __name__ == "__main__":
    main()
