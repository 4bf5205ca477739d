"""Tool-call parsers on representative outputs of each family's format: the calls found, content kept,
malformed output returned as content (never an exception), and streaming split at every character
boundary reassembling to exactly the non-streamed calls and content."""

from __future__ import annotations

import json

import pytest

from pagoda.entrypoints.openai.tool_parsers import TOOL_PARSERS, ToolCallStream, get_tool_parser
from pagoda.entrypoints.openai.tool_parsers.constrained import NamedToolParser, RequiredToolParser
from pagoda.entrypoints.openai.tool_parsers.json_scan import canonical

WEATHER = {"city": "Paris", "unit": "celsius"}

# (parser, model output, expected calls as (name, arguments object), expected content)
WELL_FORMED = [
    # Qwen2.5 / Qwen3 / Hermes
    ("hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
     [("get_weather", WEATHER)], None),
    ("hermes", 'I will check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
               '\n<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris", "fmt": "24h"}}\n</tool_call>',
     [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "Europe/Paris", "fmt": "24h"})], "I will check both."),
    ("hermes", '<tool_call>\n{"name": "search", "arguments": {"q": "a \\"quoted\\" </tool_call> \\u00e9t\\u00e9",'
               ' "filters": {"year": [2023, 2024], "exact": true, "score": -1.5e-3, "tag": null}}}\n</tool_call>',
     [("search", {"q": 'a "quoted" </tool_call> été', "filters": {"year": [2023, 2024], "exact": True,
                                                               "score": -1.5e-3, "tag": None}})], None),
    ("hermes", '<tool_call>\n{"name": "ping", "arguments": {}}\n</tool_call>', [("ping", {})], None),
    ("hermes", '<tool_call>{"name": "noargs"}</tool_call>', [("noargs", {})], None),
    ("hermes", "The weather in Paris is 18 °C. <tool is a word here", [], "The weather in Paris is 18 °C. <tool is a "
                                                                           "word here"),
    # Llama 3.1 / 3.2 JSON
    ("llama3_json", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}',
     [("get_weather", WEATHER)], None),
    ("llama3_json", '{"name": "get_weather", "parameters": {"city": "Paris"}}; {"name": "get_time", "parameters": {}}',
     [("get_weather", {"city": "Paris"}), ("get_time", {})], None),
    ("llama3_json", '\n\n{"name": "f", "arguments": {"x": [1, {"y": "z"}]}}', [("f", {"x": [1, {"y": "z"}]})], None),
    ("llama3_json", '{"name": "Bob", "age": 42}', [], '{"name": "Bob", "age": 42}'),  # JSON, not a call
    ("llama3_json", "Paris is the capital of France.", [], "Paris is the capital of France."),
    # Mistral (list before tokenizer v11; name[ARGS]{...} from v11)
    ("mistral", '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]',
     [("get_weather", WEATHER)], None),
    ("mistral", 'Sure. [TOOL_CALLS] [{"name": "a", "arguments": {"n": 1}}, {"name": "b", "arguments": {}}]',
     [("a", {"n": 1}), ("b", {})], "Sure."),
    ("mistral", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris", "unit": "celsius"}[TOOL_CALLS]get_time[ARGS]{}',
     [("get_weather", WEATHER), ("get_time", {})], None),
    ("mistral", "No tools needed [TOOL", [], "No tools needed [TOOL"),
    # pythonic (Llama 3.2 / Llama 4)
    ("pythonic", '[get_weather(city="Paris", unit="celsius")]', [("get_weather", WEATHER)], None),
    ("pythonic", "[get_weather(city='San Francisco, CA', days=3), get_time(tz=\"PST\", opts={'a': [1, (2, 3)], "
                 "'b': None, 'c': true, 'd': -0.5})]",
     [("get_weather", {"city": "San Francisco, CA", "days": 3}),
      ("get_time", {"tz": "PST", "opts": {"a": [1, [2, 3]], "b": None, "c": True, "d": -0.5}})], None),
    ("pythonic", "[now()]", [("now", {})], None),
    ("pythonic", "[Note: this is a list of thoughts]", [], "[Note: this is a list of thoughts]"),
    # Qwen3-Coder XML (no tools in the request: every value is text; typed values: test_tool_parser_qwen3coder.py)
    ("qwen3_coder", "Checking.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
                    "<parameter=unit>\ncelsius\n</parameter>\n</function>\n</tool_call>",
     [("get_weather", WEATHER)], "Checking."),
]

MALFORMED = [
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": 1}\n</tool_call>'),  # missing brace
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {a: 1}}\n</tool_call>'),
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": 1'),  # cut at max_tokens
    ("hermes", '<tool_call>\n{"name": 3, "arguments": {}}\n</tool_call>'),
    ("hermes", '<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1}"}\n</tool_call>'),  # string arguments
    ("hermes", "<tool_call>"),
    ("llama3_json", '<|python_tag|>{"name": "f", "parameters": {"x": }}'),
    ("llama3_json", '{"name": "f", "parameters": {"x": 1}} and then some text'),
    ("mistral", '[TOOL_CALLS][{"name": "f", "arguments": {"x": 1}'),
    ("mistral", '[TOOL_CALLS]f[ARGS]{"x": nope}'),
    ("pythonic", "[f(1, 2)]"),  # positional arguments
    ("pythonic", '[f(x=open("/etc/passwd").read())]'),  # never evaluated
    ("pythonic", "[f(x=1)"),
    ("pythonic", "[f(x=1)] trailing"),
    ("qwen3_coder", "<tool_call>\n<function=f>\n<parameter=x>\n1\n</parameter>\nstray\n</function>\n</tool_call>"),
]


WELL_IDS = [f"{w[0]}-{i}" for i, w in enumerate(WELL_FORMED)]


def stream_all(parser, text: str, step: int = 1) -> tuple[str, list[tuple[str, str]], list[dict]]:
    """Feed ``text`` in pieces of ``step`` characters; reassemble content and calls as a client does."""
    s = ToolCallStream(parser)
    content, calls, deltas = "", {}, []
    cuts = list(range(0, len(text), step)) + [len(text)]
    for k, end in enumerate(cuts):
        new, entries = s.update(text[:end], k == len(cuts) - 1)
        content += new
        for e in entries:
            deltas.append(e)
            if "id" in e:
                assert e["index"] not in calls and e["type"] == "function" and e["id"].startswith("chatcmpl-tool-")
                calls[e["index"]] = [e["function"]["name"], ""]
            else:
                assert set(e) == {"index", "function"} and set(e["function"]) == {"arguments"}
            calls[e["index"]][1] += e["function"]["arguments"]
    return content, [tuple(calls[i]) for i in sorted(calls)], deltas


@pytest.mark.parametrize("name,text,expected,content", WELL_FORMED, ids=WELL_IDS)
def test_well_formed_calls(name, text, expected, content):
    info = get_tool_parser(name).extract_tool_calls(text)
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in info.tool_calls]
    assert got == expected
    assert info.tools_called == bool(expected)
    assert info.content == content
    for c in info.tool_calls:
        assert c["type"] == "function" and c["id"].startswith("chatcmpl-tool-") and len(c["id"]) == 14 + 32
        # laid out as json.dumps lays them out (strings and numbers as the model wrote them)
        assert c["function"]["arguments"] == canonical(c["function"]["arguments"])


@pytest.mark.parametrize("name,text,expected,content", WELL_FORMED, ids=WELL_IDS)
def test_streaming_at_every_boundary_matches(name, text, expected, content):
    info = get_tool_parser(name).extract_tool_calls(text)
    whole = [(c["function"]["name"], c["function"]["arguments"]) for c in info.tool_calls]
    for step in (1, 2, 3, 7, len(text)):
        s_content, s_calls, _ = stream_all(get_tool_parser(name), text, step)
        assert s_calls == whole, (step, s_calls)
        assert s_content == (info.content or ""), step


@pytest.mark.parametrize("name,text", MALFORMED, ids=[f"{m[0]}-{i}" for i, m in enumerate(MALFORMED)])
def test_malformed_is_content_and_never_raises(name, text):
    info = get_tool_parser(name).extract_tool_calls(text)
    assert not info.tools_called and info.tool_calls == [] and info.content == text
    for step in (1, 5):
        stream_all(get_tool_parser(name), text, step)  # no exception; what was sent stays sent


def test_every_registered_parser_is_covered():
    assert {w[0] for w in WELL_FORMED} == set(TOOL_PARSERS) == {m[0] for m in MALFORMED}


def test_canonical_is_character_wise():
    raw = '{ "a" :[1 ,2], "s":"x , y: z\\" ,", "n":{ } }'
    full = canonical(raw)
    assert json.loads(full) == json.loads(raw) and full == json.dumps(json.loads(raw))
    for i in range(len(raw)):
        assert full.startswith(canonical(raw[:i]))


def test_required_and_named_outputs():
    out = '[{"name": "get_weather", "parameters": {"city": "Paris"}}, {"name": "get_time", "parameters": {}}]'
    info = RequiredToolParser().extract_tool_calls(out)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in info.tool_calls] == [
        ("get_weather", '{"city": "Paris"}'), ("get_time", "{}")]
    assert stream_all(RequiredToolParser(), out)[1] == [("get_weather", '{"city": "Paris"}'), ("get_time", "{}")]
    named = NamedToolParser("get_weather")
    info = named.extract_tool_calls('{"city": "Paris"}')
    assert info.content is None and info.tool_calls[0]["function"] == {"name": "get_weather",
                                                                      "arguments": '{"city": "Paris"}'}
    _, calls, deltas = stream_all(NamedToolParser("get_weather"), '{"city": "Paris"}')
    assert calls == [("get_weather", '{"city": "Paris"}')]
    assert deltas[0]["function"] == {"name": "get_weather", "arguments": ""}  # the name comes first
    assert not NamedToolParser("f").extract_tool_calls('{"city": ').tools_called  # cut short: content


@pytest.mark.parametrize("ref", ["#", "#/properties/kids"])
def test_required_refuses_references_the_list_of_calls_would_move(ref):
    """``required`` wraps each tool's parameters in a list of calls: ``#`` would mean that list (a self-referencing
    tree accepted ``kids: [[{call}]]``). Refused by name; ``$defs`` / ``definitions`` are hoisted and keep working."""
    from pagoda.entrypoints.openai.tool_parsers.constrained import required_schema
    from pagoda.structured_output.schema_support import unsupported_feature

    def tool(params):
        return {"type": "function", "function": {"name": "tree", "parameters": params}}

    bad = {"type": "object", "properties": {"kids": {"type": "array", "items": {"$ref": ref}}}}
    with pytest.raises(ValueError, match=r"tool 'tree': '\$ref'"):
        required_schema([tool(bad)])
    for where in ("$defs", "definitions"):
        good = {"type": "object", "properties": {"n": {"$ref": f"#/{where}/N"}}, where: {"N": {"type": "integer"}}}
        schema = required_schema([tool(good)])
        assert schema[where] == {"N": {"type": "integer"}} and unsupported_feature(schema) is None


def test_first_delta_names_the_call_then_arguments_append():
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    _, _, deltas = stream_all(get_tool_parser("hermes"), text)
    assert deltas[0]["function"]["name"] == "get_weather" and "id" in deltas[0]
    assert len(deltas) > 5 and all("name" not in d["function"] for d in deltas[1:])


def test_serve_flags_for_tools_and_reasoning(capsys):
    import argparse

    from pagoda.entrypoints.openai.cli_args import add_serve_args, tool_config_from

    parser = add_serve_args(argparse.ArgumentParser(prog="pagoda serve"))
    args = parser.parse_args(["--enable-auto-tool-choice", "--tool-call-parser", "pythonic", "--reasoning-parser",
                              "qwen3", "--exclude-tools-when-tool-choice-none"])
    cfg = tool_config_from(args)
    cfg.validate()
    assert (cfg.tool_call_parser, cfg.reasoning_parser, cfg.exclude_tools_when_tool_choice_none) == (
        "pythonic", "qwen3", True)
    with pytest.raises(ValueError, match="--tool-call-parser"):
        tool_config_from(parser.parse_args(["--enable-auto-tool-choice"])).validate()
    for argv in (["--tool-call-parser", "nope"], ["--reasoning-parser", "nope"], ["--tool-parser-plugin", "x.py"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    assert "--tool-parser-plugin is a vLLM flag that pagoda does not support" in capsys.readouterr().err


def test_templates_see_tool_call_arguments_as_objects():
    from pagoda.engine.tokenizer import apply_chat_template

    class Recorder:
        chat_template = "x"

        def apply_chat_template(self, msgs, **kw):
            self.msgs, self.kw = msgs, kw
            return "ok"

    tok = Recorder()
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"city": "Paris"}'}}
    odd = {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "not json"}}
    apply_chat_template(tok, [{"role": "assistant", "content": None, "tool_calls": [call, odd]},
                              {"role": "tool", "tool_call_id": "c1", "content": "18 C"}], tools=[{"x": 1}])
    assert tok.msgs[0]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert tok.msgs[0]["tool_calls"][1]["function"]["arguments"] == "not json"
    assert tok.msgs[1] == {"role": "tool", "tool_call_id": "c1", "content": "18 C"} and tok.kw["tools"] == [{"x": 1}]
    assert call["function"]["arguments"] == '{"city": "Paris"}'  # the request's own message is not changed
