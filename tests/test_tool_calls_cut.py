"""Tool calls cut at ``max_tokens`` (``finish_reason: length``) while being written.

The stream cannot take back the call deltas it already sent, so the end of a cut output keeps the prefix view:
the content before the calls and the calls so far, the last one's arguments unfinished. The stream must not
then send the whole output (the call's own JSON / markup) again as ``content`` (what it did: partial deltas
plus the raw text), and the non-streamed message of the same cut output, told the finish reason, is exactly
what the stream reassembles to. ``tool_calls`` as a finish reason needs every call finished.
"""

from __future__ import annotations

import pytest

from pagoda.entrypoints.openai.chat_output import ChatOutputParser
from pagoda.entrypoints.openai.tool_parsers import ToolCallStream, get_tool_parser
from pagoda.entrypoints.openai.tool_parsers.constrained import NamedToolParser, RequiredToolParser

# (parser factory, output cut while a call is written, content before the calls, expected (name, arguments))
CUT = [
    (RequiredToolParser, '[{"name": "get_weather", "parameters": {', "", [("get_weather", "{")]),
    (RequiredToolParser, '[{"name": "get_time", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Pa',
     "", [("get_time", "{}"), ("get_weather", '{"city": "Pa')]),
    (lambda: NamedToolParser("get_weather"), '{"city": "Par', "", [("get_weather", '{"city": "Par')]),
    (lambda: get_tool_parser("hermes"), 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": ',
     "Let me check.", [("get_weather", '{"city": ')]),
    (lambda: get_tool_parser("llama3_json"), '<|python_tag|>{"name": "f", "parameters": {"x": [1, 2',
     "", [("f", '{"x": [1, 2')]),
    (lambda: get_tool_parser("mistral"), 'Sure. [TOOL_CALLS][{"name": "f", "arguments": {"x": 1}}, {"name": "g", '
     '"arguments": {"y": "a', "Sure.", [("f", '{"x": 1}'), ("g", '{"y": "a')]),
    (lambda: get_tool_parser("mistral"), '[TOOL_CALLS]f[ARGS]{"x": tr', "", [("f", '{"x": tr')]),
    (lambda: get_tool_parser("pythonic"), '[get_weather(city="Paris", unit="cel', "",
     [("get_weather", '{"city": "Paris"')]),  # an argument is sent once its literal is whole
]


def stream(parser: ChatOutputParser, text: str, finish_reason: str, step: int = 1) -> tuple[str, list, list]:
    """Feed ``text`` in pieces as the server does; reassemble (content, calls, deltas) as a client does."""
    content, calls, deltas = "", {}, []
    cuts = list(range(0, len(text), step)) + [len(text)]
    for k, end in enumerate(cuts):
        final = k == len(cuts) - 1
        d = parser.delta(text[:end], final, finish_reason if final else None)
        content += d.get("content", "")
        for e in d.get("tool_calls", []):
            deltas.append(e)
            if "id" in e:
                calls[e["index"]] = [e["function"]["name"], ""]
            calls[e["index"]][1] += e["function"]["arguments"]
    return content, [tuple(calls[i]) for i in sorted(calls)], deltas


@pytest.mark.parametrize("make,text,content,expected", CUT, ids=[f"{i}" for i in range(len(CUT))])
@pytest.mark.parametrize("step", [1, 3, 1000])
def test_a_cut_call_streams_to_the_non_streamed_message(make, text, content, expected, step):
    s_content, s_calls, _ = stream(ChatOutputParser(None, make()), text, "length", step)
    if step < len(text):  # calls were sent before the end: the call's text never becomes content
        assert s_calls == expected
        assert s_content == content, s_content
    m = ChatOutputParser(None, make()).message(text, "length")
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in m.tool_calls] == expected
    assert (m.content or "") == content
    assert s_calls == expected and s_content == content  # also when everything arrives in the last chunk
    assert not m.calls_complete


@pytest.mark.parametrize("text", ['[{"n', "[", '[{"name": "get_wea'])
@pytest.mark.parametrize("step", [1, 1000])
def test_a_required_output_cut_before_a_call_is_named_has_no_content(text, step):
    """The grammar holds the whole output to calls: cut before the first name is whole, the JSON so far is neither a
    call nor content (it came back as ``content: '[{"n'``). (A named choice's call is named from its first token.)"""
    m = ChatOutputParser(None, RequiredToolParser()).message(text, "length")
    assert m.content is None and m.tool_calls == []
    assert stream(ChatOutputParser(None, RequiredToolParser()), text, "length", step)[:2] == ("", [])


@pytest.mark.parametrize("make,text,content,expected", CUT, ids=[f"{i}" for i in range(len(CUT))])
def test_an_unfinished_call_is_not_reported_as_tool_calls(make, text, content, expected):
    p = ChatOutputParser(None, make())
    stream(p, text, "stop", 2)  # e.g. a stop string inside the JSON: the stream sent the call, unfinished
    assert not p.tools_called


def test_finished_calls_are_tool_calls():
    p = ChatOutputParser(None, RequiredToolParser())
    stream(p, '[{"name": "f", "parameters": {}}]', "stop", 2)
    assert p.tools_called


def test_without_a_cut_the_non_streamed_answer_is_still_the_text():
    """Not cut (no finish reason, or ``stop``): malformed output is content, as before."""
    text = '<tool_call>\n{"name": "f", "arguments": {"a": 1'
    for reason in (None, "stop"):
        m = ChatOutputParser(None, get_tool_parser("hermes")).message(text, reason)
        assert m.tool_calls == [] and m.content == text


@pytest.mark.parametrize("step", [1, 5, 10_000])
def test_a_call_whose_arguments_are_not_an_object_streams_as_the_text(step):
    """Arguments written as a JSON string: malformed, so the non-streamed answer is the text. The stream used to send
    the call's name once it was read (then a call of empty arguments, the text as content too, and finish_reason
    tool_calls); a call goes out only once its arguments begin as an object."""
    text = '<tool_call>\n{"name": "get_weather", "arguments": "{\\"city\\": \\"Paris\\"}"}\n</tool_call>'
    m = ChatOutputParser(None, get_tool_parser("hermes")).message(text, "stop")
    assert m.tool_calls == [] and m.content == text
    p = ChatOutputParser(None, get_tool_parser("hermes"))
    assert stream(p, text, "stop", step)[:2] == (text, []) and not p.tools_called


def test_a_stream_that_sent_a_call_never_resends_it_as_content():
    """Malformed at the end (here a stop inside the arguments): what was sent stays, nothing is repeated."""
    s = ToolCallStream(get_tool_parser("hermes"))
    text = 'Hi <tool_call>{"name": "f", "arguments": {"a": 1'
    new, calls = s.update(text[:-3], False)
    assert new == "Hi" and calls[0]["function"]["name"] == "f"
    new, calls = s.update(text, True)
    assert new == "" and calls == [{"index": 0, "function": {"arguments": ': 1'}}]
    assert not s.called


class _Req:
    """The request fields plan_tools reads."""

    def __init__(self, **kw):
        self.tools, self.tool_choice, self.parallel_tool_calls = kw.get("tools"), kw.get("tool_choice"), None


@pytest.mark.parametrize("kind", ["allowed_tools", "custom", "bogus"])
def test_a_named_choice_of_another_type_is_refused_not_read_as_a_function(kind):
    from pagoda.entrypoints.openai.serving_engine import ServingError
    from pagoda.entrypoints.openai.tool_calling import plan_tools
    from pagoda.entrypoints.openai.tool_config import ToolServingConfig

    tools = [{"type": "function", "function": {"name": "f"}}]
    with pytest.raises(ServingError) as e:
        plan_tools(_Req(tools=tools, tool_choice={"type": kind, "function": {"name": "f"}}), ToolServingConfig())
    assert e.value.status == 400 and e.value.param == "tool_choice" and kind in e.value.message
    for ok in ({"type": "function", "function": {"name": "f"}}, {"function": {"name": "f"}}):  # vLLM's default type
        assert plan_tools(_Req(tools=tools, tool_choice=ok), ToolServingConfig()).mode == "named"


@pytest.mark.parametrize("rf,ok", [
    ({"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": True}}, True),
    ({"type": "json_schema", "json_schema": {"name": "w", "description": "d", "schema": {"type": "object"}}}, True),
    ({"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strcit": True}}, False),
    ({"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": "yes"}}, False),
])
def test_response_format_json_schema_keys(rf, ok):
    from pagoda.entrypoints.openai.structured_fields import structured_outputs_from_request
    from pagoda.errors import ValidationError

    class R:
        response_format = rf

    if ok:
        assert structured_outputs_from_request(R())[0].kind == "json"
    else:
        with pytest.raises(ValidationError) as e:
            structured_outputs_from_request(R())
        assert e.value.parameter == "response_format"
