"""Less-used chat fields through the OpenAI client, each against its reference: the non-streamed answer for
streams (``n`` > 1 with ``logprobs``, vLLM's ``echo``), OpenAI's default for ``verbosity`` (``medium`` asks for
nothing new: accepted on chat as ``text.verbosity`` is on /v1/responses; another value is a 400 naming it)."""

from __future__ import annotations

import openai
import pytest
from server_utils import MODEL

MSGS = [{"role": "user", "content": "Name a colour."}]


def test_verbosity_medium_is_the_default(server):
    client = server.client()
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4, temperature=0, verbosity="medium")
    plain = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4, temperature=0)
    assert r.choices[0].message.content == plain.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=4, verbosity="low")
    assert e.value.body["param"] == "verbosity" and "medium" in e.value.body["message"]


def test_stream_n_with_logprobs_equals_the_whole_answer(server):
    client = server.client()
    kw = {"model": MODEL, "messages": MSGS, "max_tokens": 5, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    whole = client.chat.completions.create(n=1, **kw)
    ref = [(t.token, t.logprob, [x.token for x in t.top_logprobs]) for t in whole.choices[0].logprobs.content]
    got: dict[int, list] = {}
    texts: dict[int, str] = {}
    usage = None
    for chunk in client.chat.completions.create(n=2, stream=True, stream_options={"include_usage": True}, **kw):
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.logprobs and c.logprobs.content:
                got.setdefault(c.index, []).extend(
                    (t.token, t.logprob, [x.token for x in t.top_logprobs]) for t in c.logprobs.content)
    assert sorted(got) == [0, 1]
    for i in (0, 1):  # logprobs of a batch of two differ from one's in float rounding only
        assert [(t, top) for t, _, top in got[i]] == [(t, top) for t, _, top in ref]
        assert [lp for _, lp, _ in got[i]] == pytest.approx([lp for _, lp, _ in ref], abs=1e-4)
        assert texts[i] == whole.choices[0].message.content
    assert usage.completion_tokens == 2 * whole.usage.completion_tokens


def test_echo_continues_the_assistant_message_streamed_or_not(server):
    client = server.client()
    msgs = [*MSGS, {"role": "assistant", "content": "It is"}]
    extra = {"echo": True, "continue_final_message": True, "add_generation_prompt": False}
    whole = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, temperature=0, n=2,
                                           extra_body=extra)
    plain = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, temperature=0,
                                           extra_body={**extra, "echo": False})
    for c in whole.choices:
        assert c.message.content == "It is" + plain.choices[0].message.content
    texts: dict[int, str] = {}
    for chunk in client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, temperature=0, n=2,
                                                stream=True, extra_body=extra):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
    assert texts == {0: whole.choices[0].message.content, 1: whole.choices[1].message.content}
