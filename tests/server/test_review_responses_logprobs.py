"""/v1/responses logprobs and OpenAI's platform hints, each against /v1/chat/completions (the route's reference).

* ``include: ["message.output_text.logprobs"]`` with ``top_logprobs`` (vLLM honours it): the output text's
  ``logprobs`` are chat's for the same greedy request (tokens, values, ``bytes``, alternatives), streamed or not;
  the ``response.output_text.delta`` events' logprobs concatenate to the ``.done`` event's, in OpenAI's event shape
  (no ``bytes``). Another ``include`` value, ``top_logprobs`` without the include, more than ``--max-logprobs``,
  or logprobs beside a tool parser's items are a 400 naming the field.
* ``prompt_cache_key``, ``prompt_cache_retention``, ``prompt_cache_options``, ``safety_identifier`` and the
  ``service_tier`` values OpenAI documents are accepted (and logged as ignored) on both routes, as vLLM accepts
  them; they change nothing about the answer. A value OpenAI does not define is a 400 naming the field on both.
"""

from __future__ import annotations

import openai
import pytest
from server_utils import MODEL

PROMPT = "Name a colour."
INCLUDE = ["message.output_text.logprobs"]
KW = {"model": MODEL, "temperature": 0}


def _chat_logprobs(client, top: int, n_tokens: int):
    chat = client.chat.completions.create(messages=[{"role": "user", "content": PROMPT}], max_tokens=n_tokens,
                                          logprobs=True, top_logprobs=top, **KW)
    return chat.choices[0].message.content, chat.choices[0].logprobs.content


def _tokens(entries, with_bytes: bool = True):
    """(token, bytes, [alternative tokens]) of each entry, and the values apart (compared approximately)."""
    shape = [(t.token, t.bytes if with_bytes else None, [x.token for x in t.top_logprobs]) for t in entries]
    values = [t.logprob for t in entries] + [x.logprob for t in entries for x in t.top_logprobs]
    return shape, values


@pytest.mark.parametrize("top", [0, 3])
def test_responses_logprobs_equal_chats(server, top):
    client = server.client()
    text, ref = _chat_logprobs(client, top, 6)
    ref_shape, ref_values = _tokens(ref)
    assert len(ref) == 6 and all(len(t.top_logprobs) == top for t in ref)
    r = client.responses.create(input=PROMPT, max_output_tokens=6, include=INCLUDE, top_logprobs=top, **KW)
    part = r.output[0].content[0]
    assert part.text == text and r.top_logprobs == top
    shape, values = _tokens(part.logprobs)
    assert shape == ref_shape
    assert values == pytest.approx(ref_values, abs=1e-5)
    # streamed: the deltas' logprobs concatenate to the done event's, and those are chat's (no bytes in events)
    deltas, done, final = [], None, None
    for ev in client.responses.create(input=PROMPT, max_output_tokens=6, include=INCLUDE, top_logprobs=top,
                                      stream=True, **KW):
        if ev.type == "response.output_text.delta":
            deltas.extend(ev.logprobs)
        elif ev.type == "response.output_text.done":
            done = ev
        elif ev.type == "response.completed":
            final = ev.response
    assert done is not None and final is not None and done.text == text
    ref_events = _tokens(ref, with_bytes=False)
    assert _tokens(deltas, with_bytes=False)[0] == _tokens(done.logprobs, with_bytes=False)[0] == ref_events[0]
    assert _tokens(deltas, with_bytes=False)[1] == _tokens(done.logprobs, with_bytes=False)[1]
    assert _tokens(done.logprobs, with_bytes=False)[1] == pytest.approx(ref_events[1], abs=1e-5)
    final_shape, final_values = _tokens(final.output[0].content[0].logprobs)
    assert final_shape == ref_shape and final_values == pytest.approx(ref_values, abs=1e-5)


def test_responses_without_include_has_no_logprobs(server):
    r = server.client().responses.create(input=PROMPT, max_output_tokens=3, **KW)
    assert r.output[0].content[0].logprobs == []


@pytest.mark.parametrize("extra,param,words", [
    ({"include": ["reasoning.encrypted_content"]}, "include", "reasoning.encrypted_content"),
    ({"include": [*INCLUDE, "file_search_call.results"]}, "include", "file_search_call.results"),
    ({"top_logprobs": 2}, "top_logprobs", INCLUDE[0]),
    ({"include": INCLUDE, "top_logprobs": 6}, "top_logprobs", "max allowed: 5"),  # the server's --max-logprobs
    ({"include": INCLUDE, "top_logprobs": -2}, "top_logprobs", "top_logprobs"),
    ({"include": INCLUDE, "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
      "tool_choice": "required"}, "include", "tools"),
])
def test_responses_logprobs_refusals_name_the_field(server, extra, param, words):
    r = server.post("/v1/responses", {"model": MODEL, "input": "hi", "max_output_tokens": 2, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and words in err["message"], err


HINTS = {"prompt_cache_key": "conv-1", "prompt_cache_retention": "24h",
         "prompt_cache_options": {"mode": "implicit", "ttl": "30m"}, "safety_identifier": "user-hash",
         "service_tier": "flex"}


@pytest.mark.parametrize("tier", ["auto", "default", "flex", "scale", "priority"])
def test_cache_hints_are_accepted_on_chat_and_responses(server, tier):
    client = server.client()
    hints = {**HINTS, "service_tier": tier}
    msgs = [{"role": "user", "content": PROMPT}]
    plain = client.chat.completions.create(messages=msgs, max_tokens=4, **KW)
    chat = client.chat.completions.create(messages=msgs, max_tokens=4, extra_body=hints, **KW)
    assert chat.choices[0].message.content == plain.choices[0].message.content
    r = client.responses.create(input=PROMPT, max_output_tokens=4, extra_body=hints, **KW)
    assert r.output_text == plain.choices[0].message.content


@pytest.mark.parametrize("field,value", [("service_tier", "turbo"), ("prompt_cache_retention", "forever")])
def test_cache_hint_values_openai_does_not_define_are_refused_on_both(server, field, value):
    client = server.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(messages=[{"role": "user", "content": PROMPT}], max_tokens=2,
                                       extra_body={field: value}, **KW)
    assert e.value.body["param"] == field and value in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(input=PROMPT, max_output_tokens=2, extra_body={field: value}, **KW)
    assert e.value.body["param"] == field and value in e.value.body["message"]
