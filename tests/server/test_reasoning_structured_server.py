"""Structured output after the reasoning, through the server and the official client: the scripted thinking
model (tests/reasoning_model.py) behind ``--reasoning-parser qwen3`` thinks ``}{]`` unconstrained, then answers
by the schema; ``reasoning_content`` is split out, streamed and not, and a prompt whose template closed the
thinking (``enable_thinking: false``) is answered constrained from the first token."""

from __future__ import annotations

import json

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
