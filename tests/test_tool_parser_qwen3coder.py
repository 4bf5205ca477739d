"""``--tool-call-parser qwen3_coder`` (Qwen3-Coder's XML calls): parameters typed by the request's tool schemas as
vLLM's parser types them, content around calls, malformed output as content, a cut call kept, and streams split at
every character that reassemble to exactly the unstreamed calls and content."""

from __future__ import annotations

import json

import pytest
from test_tool_parsers import stream_all

from pagoda.entrypoints.openai.tool_parsers import get_tool_parser
from pagoda.entrypoints.openai.tool_parsers.qwen3coder_tool_parser import param_value

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "integer"}, "metric": {"type": "boolean"},
    "temp": {"type": ["number", "null"]}, "opts": {"type": "object"}, "tags": {"type": "array"},
    "code": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}]


def call(name: str, *params: tuple[str, str]) -> str:
    body = "".join(f"<parameter={k}>\n{v}\n</parameter>\n" for k, v in params)
    return f"<tool_call>\n<function={name}>\n{body}</function>\n</tool_call>"


WELL_FORMED = [
    (call("get_weather", ("city", "Paris"), ("days", "3")), [("get_weather", {"city": "Paris", "days": 3})], None),
    ("Let me look.\n" + call("get_weather", ("city", "São Paulo, \"BR\""), ("metric", "True"), ("temp", "21.0"))
     + "\n" + call("now"),
     [("get_weather", {"city": 'São Paulo, "BR"', "metric": True, "temp": 21}), ("now", {})], "Let me look."),
    (call("get_weather", ("opts", '{"a": [1, 2], "b": null}'), ("tags", "['x', 'y']"), ("temp", "null")),
     [("get_weather", {"opts": {"a": [1, 2], "b": None}, "tags": ["x", "y"], "temp": None})], None),
    # a string keeps its text whole: newlines inside, markup, numbers that are text
    (call("get_weather", ("code", "def f():\n    return '<b>'\n"), ("city", "12")),
     [("get_weather", {"code": "def f():\n    return '<b>'\n", "city": "12"})], None),
    # not in the schema: text; an unknown tool: every parameter is text; a value that is not its type stays text
    (call("get_weather", ("extra", "7"), ("days", "three")), [("get_weather", {"extra": "7", "days": "three"})], None),
    (call("unknown_tool", ("n", "5")), [("unknown_tool", {"n": "5"})], None),
    # vLLM reads a missing </parameter> as ending at the next parameter or </function>; no <tool_call>: still a call
    ("<function=get_weather>\n<parameter=city>\nRome\n<parameter=days>\n2\n</function>",
     [("get_weather", {"city": "Rome", "days": 2})], None),
    ("Nothing to call. <tool is a word", [], "Nothing to call. <tool is a word"),
    (call("now") + "\nDone.", [("now", {})], "Done."),
]

MALFORMED = [
    "<tool_call>\nnot a function\n</tool_call>",
    "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n",  # ends inside the function
    "<tool_call>\n<function=get_weather>\nstray text\n</function>\n</tool_call>",
    call("get_weather", ("city", "a"), ("city", "b")),  # a parameter twice
    "<tool_call>\n<function=>\n</function>\n</tool_call>",
    "<tool_call>\n<function=get_weather>\n</function>\ntext inside\n</tool_call>",
]


def parser():
    return get_tool_parser("qwen3_coder", TOOLS)


@pytest.mark.parametrize("text,expected,content", WELL_FORMED, ids=[str(i) for i in range(len(WELL_FORMED))])
def test_calls_typed_by_the_schema(text, expected, content):
    info = parser().extract_tool_calls(text)
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in info.tool_calls]
    assert got == expected and info.content == content and info.tools_called == bool(expected)
    for c in info.tool_calls:  # vLLM's layout: json.dumps of the parameters in order, not ASCII-escaped
        assert c["function"]["arguments"] == json.dumps(json.loads(c["function"]["arguments"]), ensure_ascii=False)


@pytest.mark.parametrize("text,expected,content", WELL_FORMED, ids=[str(i) for i in range(len(WELL_FORMED))])
def test_streaming_at_every_boundary_matches(text, expected, content):
    info = parser().extract_tool_calls(text)
    whole = [(c["function"]["name"], c["function"]["arguments"]) for c in info.tool_calls]
    for step in (1, 2, 5, len(text)):
        s_content, s_calls, _ = stream_all(parser(), text, step)
        assert s_calls == whole and s_content == (info.content or ""), step


@pytest.mark.parametrize("text", MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_malformed_is_content(text):
    info = parser().extract_tool_calls(text)
    assert not info.tools_called and info.content == text
    for step in (1, 4):
        stream_all(parser(), text, step)  # never raises


def test_cut_call_keeps_what_was_written():
    text = "<tool_call>\n<function=get_weather>\n<parameter=city>\nOslo\n</parameter>\n<parameter=days>\n4"
    info = parser().extract_tool_calls(text, cut=True)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in info.tool_calls] == [
        ("get_weather", '{"city": "Oslo"')] and not info.complete


@pytest.mark.parametrize("text,schema,value", [
    ("1e999", {"type": "number"}, "1e999"), ("NaN", {"type": "number"}, "NaN"),  # JSON holds no infinity or NaN
    ("{1, 2}", {"type": "object"}, "{1, 2}"), ("b'x'", {"type": "array"}, "b'x'"),  # no sets or bytes either
    ("[1, (2, 3)]", {"type": "array"}, [1, (2, 3)]), ("NULL", {"type": "string"}, None),
    ("false", {"type": "bool"}, False), ("yes", {"type": "boolean"}, "yes"), ("-4", {"type": "int64"}, -4),
    ("2.50", {"type": "float"}, 2.5), ("7", {"type": "number"}, 7), ("x", None, "x"),
])
def test_param_value_rules(text, schema, value):
    assert param_value(text, schema) == value


def test_a_requests_tools_reach_the_parser():
    """Through the server's tool plan (chat and /v1/responses build their parsers so): the request's schemas type
    the values, streamed and not."""
    from pagoda.entrypoints.openai.protocol import ChatCompletionRequest
    from pagoda.entrypoints.openai.tool_calling import output_parser, plan_tools
    from pagoda.entrypoints.openai.tool_config import ToolServingConfig

    cfg = ToolServingConfig(enable_auto_tool_choice=True, tool_call_parser="qwen3_coder")
    req = ChatCompletionRequest(messages=[{"role": "user", "content": "weather?"}], tools=TOOLS, tool_choice="auto")
    text = call("get_weather", ("city", "Lima"), ("days", "2"), ("metric", "false"))
    parsed = output_parser(req, cfg, plan_tools(req, cfg)).message(text, "stop")  # type: ignore[union-attr]
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in parsed.tool_calls] == [
        ("get_weather", {"city": "Lima", "days": 2, "metric": False})]
