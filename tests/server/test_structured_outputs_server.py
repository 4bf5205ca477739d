"""Structured outputs through the OpenAI client (tiny model): response_format json_schema / json_object on chat
and completions, structured_outputs and the guided_* aliases; bad specs are a 400 naming the field."""

from __future__ import annotations

import json
import re

import pytest
from server_utils import MODEL

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 0,
                                                                              "maximum": 9}},
          "required": ["ok", "n"], "additionalProperties": False}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40, "temperature": 0}
COMPLETION = {"model": MODEL, "prompt": "Paris is", "max_tokens": 40, "temperature": 0}


def _check(obj):
    assert set(obj) == {"ok", "n"} and isinstance(obj["ok"], bool) and 0 <= obj["n"] <= 9


def test_response_format_json_schema_chat_and_completions(server):
    c = server.client()
    rf = {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA, "strict": True}}
    r = c.chat.completions.create(model=MODEL, messages=CHAT["messages"], max_tokens=40, temperature=0,
                                  response_format=rf, extra_body={"structured_outputs": None})
    assert r.choices[0].finish_reason == "stop"
    _check(json.loads(r.choices[0].message.content))
    rc = c.completions.create(model=MODEL, prompt="Paris is", max_tokens=40, temperature=0,
                              extra_body={"response_format": rf})
    _check(json.loads(rc.choices[0].text))
    stream = c.chat.completions.create(model=MODEL, messages=CHAT["messages"], max_tokens=40, temperature=0,
                                       response_format=rf, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == r.choices[0].message.content


@pytest.mark.parametrize("body,check", [
    # json_object: any object; the random tiny model may stay in a string until max_tokens (finish "length", an
    # unfinished prefix, as vLLM); test_json_object_truncated_is_a_prefix covers that case
    ({"response_format": {"type": "json_object"}, "max_tokens": 1}, lambda t: t == "{"),
    ({"structured_outputs": {"choice": ["yes", "no"]}}, lambda t: t in ("yes", "no")),
    ({"guided_choice": ["yes", "no"], "n": 3, "temperature": 1.0}, lambda t: t in ("yes", "no")),
    ({"guided_regex": r"[0-9]{2}-[a-c]{2}"}, lambda t: re.fullmatch(r"[0-9]{2}-[a-c]{2}", t)),
    ({"guided_json": SCHEMA, "guided_decoding_backend": "xgrammar"}, lambda t: _check(json.loads(t)) is None),
    ({"guided_grammar": 'root ::= "a" root | "b"', "max_tokens": 200}, lambda t: re.fullmatch("a*b", t)),
])
def test_fields_and_aliases_constrain(server, body, check):
    for path, base in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)):
        r = server.post(path, {**base, **body})
        assert r.status_code == 200, r.text
        for ch in r.json()["choices"]:
            text = ch["message"]["content"] if "message" in ch else ch["text"]
            assert ch["finish_reason"] == ("length" if body.get("max_tokens") == 1 else "stop") and check(text), text


def test_json_object_truncated_is_a_prefix(server):
    """A document ends valid only if generation ends: at max_tokens the text is an unfinished JSON prefix."""
    r = server.post("/v1/completions", {**COMPLETION, "response_format": {"type": "json_object"}})
    ch = r.json()["choices"][0]
    if ch["finish_reason"] == "stop":
        assert isinstance(json.loads(ch["text"]), dict)
    else:
        assert ch["finish_reason"] == "length" and ch["text"].startswith("{")


@pytest.mark.parametrize("body,param", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "response_format"),
    ({"response_format": {"type": "yaml"}}, "response_format"),
    ({"guided_json": {"type": "object", "properties": {"a": {"$ref": "#/missing"}}}}, "guided_json"),
    ({"guided_regex": "(("}, "guided_regex"),
    ({"guided_grammar": "root ::= missing_rule"}, "guided_grammar"),
    ({"guided_choice": []}, "guided_choice"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs"),
    ({"structured_outputs": {"bogus": 1}}, "structured_outputs"),
    ({"structured_outputs": {"json_object": True, "_enable_in_reasoning": True}}, "structured_outputs"),  # private
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),
    ({"guided_regex": "a", "use_beam_search": True, "n": 2}, "guided_regex"),
    ({"guided_regex": "a", "guided_decoding_backend": "outlines"}, "guided_decoding_backend"),
])
def test_bad_constraints_are_400_naming_the_field(server, body, param):
    for path, base in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)):
        r = server.post(path, {**base, **body})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == param, r.json()


@pytest.mark.parametrize("extra,param", [
    ({"min_tokens": 6}, "min_tokens"),  # bans the end the choice needs after "a"
    ({"allowed_token_ids": [7]}, "allowed_token_ids"),  # bans every token that starts "a"
])
def test_a_rule_that_bans_every_token_the_constraint_allows_is_a_400_naming_it(server, extra, param):
    """Another sampling rule can leave a constrained request no token: the request's fault, a 400 naming the rule
    (streamed: the error event names it), never a 500; the server serves on."""
    body = {"guided_choice": ["a"], "max_tokens": 8, **extra}
    for path, base in (("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)):
        r = server.post(path, {**base, **body})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and param in err["message"] and "choice" in err["message"], err
        r = server.post(path, {**base, **body, "stream": True})
        events = [json.loads(x[6:]) for x in r.text.splitlines() if x.startswith("data: {")]
        assert events[-1]["error"]["param"] == param, events[-1]
    ok = server.post("/v1/completions", {**COMPLETION, "guided_choice": ["a", "b"]})
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] in ("a", "b")
