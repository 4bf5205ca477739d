"""Structured output after the reasoning, through the server and the official client: the scripted thinking
model (tests/reasoning_model.py) behind ``--reasoning-parser qwen3`` thinks ``}{]`` unconstrained, then answers
by the schema; ``reasoning_content`` is split out, streamed and not, and a prompt whose template closed the
thinking (``enable_thinking: false``) is answered constrained from the first token. /v1/completions never splits
the reasoning off: its text is constrained from the first token (the thinking would otherwise stay in the text, and
this model, never closing it on a raw prompt, would be unconstrained)."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from reasoning_model import REASONING, build_thinking_model
from server_utils import MODEL, RemoteServer

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "city": {"enum": ["Paris", "Rome"]}},
          "required": ["ok", "city"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}
TOOL = {"type": "function", "function": {"name": "where", "parameters": SCHEMA}}
ASK = [{"role": "user", "content": "Where?"}]


@pytest.fixture(scope="module")
def think_server(tmp_path_factory):
    path = build_thinking_model(tmp_path_factory.mktemp("thinking") / "model")
    srv = RemoteServer(str(path), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "32M",
                                   "--reasoning-parser", "qwen3"])
    yield srv
    srv.stop()


def _stream_parts(chunks) -> tuple[str, str]:
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    return ("".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas),
            "".join(d.content or "" for d in deltas))


def test_answer_follows_the_schema_after_free_reasoning(think_server):
    c = think_server.client()
    body = {"model": MODEL, "messages": ASK, "max_tokens": 80, "temperature": 0, "response_format": FORMAT}
    r = c.chat.completions.create(**body)
    m = r.choices[0].message
    assert m.model_extra["reasoning_content"] == REASONING and r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(m.content), SCHEMA)
    reasoning, content = _stream_parts(list(c.chat.completions.create(**body, stream=True)))
    assert (reasoning, content) == (REASONING, m.content)
    closed = c.chat.completions.create(**body, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert closed.choices[0].message.model_extra["reasoning_content"] is None
    assert closed.choices[0].message.content == m.content
    free = c.chat.completions.create(**{**body, "response_format": None, "max_tokens": 8})
    assert free.choices[0].message.content.startswith("]")  # unconstrained, the model's script goes on


def test_named_tool_after_reasoning(think_server):
    c = think_server.client()
    body = {"model": MODEL, "messages": ASK, "max_tokens": 80, "temperature": 0, "tools": [TOOL],
            "tool_choice": {"type": "function", "function": {"name": "where"}}}
    m = c.chat.completions.create(**body).choices[0].message
    assert m.model_extra["reasoning_content"] == REASONING and len(m.tool_calls) == 1
    jsonschema.validate(json.loads(m.tool_calls[0].function.arguments), SCHEMA)


FLAT_TOOL = {"type": "function", "name": "where", "parameters": SCHEMA}


def test_responses_reasoning_item_then_the_constrained_call(think_server):
    c = think_server.client()
    body = {"model": MODEL, "input": "Where?", "max_output_tokens": 80, "temperature": 0, "tools": [FLAT_TOOL],
            "tool_choice": {"type": "function", "name": "where"}}
    r = c.responses.create(**body)
    assert [o.type for o in r.output] == ["reasoning", "function_call"], r.output
    assert r.output[0].content[0].text == REASONING and r.output[0].content[0].type == "reasoning_text"
    jsonschema.validate(json.loads(r.output[1].arguments), SCHEMA)
    events = list(c.responses.create(**body, stream=True))
    kinds = [e.type for e in events]
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == REASONING
    assert [e.text for e in events if e.type == "response.reasoning_text.done"] == [REASONING]
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert args == r.output[1].arguments
    added = [e.item.type for e in events if e.type == "response.output_item.added"]
    assert added == ["reasoning", "function_call"] and kinds.count("response.output_item.done") == 2
    final = events[-1].response
    assert [o.type for o in final.output] == ["reasoning", "function_call"]
    # the earlier output items sent back as input (reasoning items are accepted, not rendered)
    again = c.responses.create(model=MODEL, max_output_tokens=4, temperature=0, tools=[FLAT_TOOL],
                               tool_choice="none", input=[
        {"role": "user", "content": "Where?"}, *[o.model_dump(exclude_none=True) for o in r.output],
        {"type": "function_call_output", "call_id": r.output[1].call_id, "output": "Paris"}])
    assert again.status == "incomplete" and again.output[0].type == "reasoning"  # the script thinks again


def test_responses_text_with_a_reasoning_parser(think_server):
    r = think_server.client().responses.create(model=MODEL, input="Where?", max_output_tokens=6, temperature=0)
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == REASONING and r.output[1].content[0].text == "]"


COMPLETION_CONSTRAINTS = [  # (field, value, what the whole text must be)
    ("response_format", FORMAT, lambda t: jsonschema.validate(json.loads(t), SCHEMA)),
    ("guided_json", SCHEMA, lambda t: jsonschema.validate(json.loads(t), SCHEMA)),
    ("structured_outputs", {"json": SCHEMA}, lambda t: jsonschema.validate(json.loads(t), SCHEMA)),
    ("guided_choice", ["yes", "no"], lambda t: t in ("yes", "no") or pytest.fail(t)),
    ("guided_regex", "[0-9]+", lambda t: re.fullmatch("[0-9]+", t) or pytest.fail(t)),
]


@pytest.mark.parametrize("field,value,check", COMPLETION_CONSTRAINTS, ids=[c[0] for c in COMPLETION_CONSTRAINTS])
def test_completions_are_constrained_from_the_first_token(think_server, field, value, check):
    """The raw prompt leaves this model thinking forever (``<think>}{]</think>]</think>...``, no answer after a
    close it never makes): with the reasoning rule the text came back 200 / stop and not what was asked for."""
    body = {"model": MODEL, "prompt": "Answer:", "max_tokens": 80, "temperature": 0, field: value}
    r = think_server.post("/v1/completions", body)
    assert r.status_code == 200, r.text
    ch = r.json()["choices"][0]
    assert ch["finish_reason"] == "stop" and "<think>" not in ch["text"], ch
    check(ch["text"])
    streamed = think_server.post("/v1/completions", {**body, "stream": True})
    events = [json.loads(x[6:]) for x in streamed.text.splitlines() if x.startswith("data: {")]
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == ch["text"]
    free = think_server.post("/v1/completions", {**body, field: None, "max_tokens": 4}).json()
    assert free["choices"][0]["text"].startswith("<think>")  # unconstrained, the model thinks
