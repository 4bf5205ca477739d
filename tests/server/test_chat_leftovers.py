"""Chat and Responses leftovers against their references.

* vLLM's chat ``echo`` with ``add_generation_prompt: false``: the answer's role is the last message's (vLLM's
  ``get_chat_request_role``) and the echo repeats that message's content when its role is the answer's, streamed
  (the role chunk, then the echo in a chunk of its own) or not; the reference is the same request without echo.
* ``--reasoning-parser``: chat usage's ``completion_tokens_details.reasoning_tokens`` and Responses usage's
  ``output_tokens_details.reasoning_tokens`` count the tokens between ``<think>`` and ``</think>`` (as vLLM's
  ``count_reasoning_tokens``), the reference counted here on the answer's own token ids; no details without a
  reasoning parser.
* Responses logprobs (``include: ["message.output_text.logprobs"]``) with a reasoning parser: the output text's
  are chat's logprobs of the answer's tokens only (those after ``</think>``), streamed or not.
"""

from __future__ import annotations

import json

import httpx
import pytest
from reasoning_model import END, REASONING, THINK, build_thinking_model
from server_utils import MODEL, RemoteServer

MSGS = [{"role": "user", "content": "Name a colour."}]
INCLUDE = ["message.output_text.logprobs"]


def _sse(r: httpx.Response) -> list[dict]:
    return [json.loads(line[6:]) for line in r.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


# ----------------------------------------------------------------------------------------- echo and role
@pytest.mark.parametrize("last", [
    {"role": "user", "content": "The colour is"},
    {"role": "user", "content": [{"type": "text", "text": "The colour"}, {"type": "text", "text": "is"}]},
    {"role": "system", "content": "Be brief"},
], ids=["user", "user_parts", "system"])
def test_echo_without_generation_prompt_answers_as_the_last_role(server, last):
    msgs = [*MSGS, last]
    base = {"model": MODEL, "messages": msgs, "max_tokens": 4, "temperature": 0, "add_generation_prompt": False}
    plain = server.post("/v1/chat/completions", base).json()["choices"][0]["message"]
    assert plain["role"] == last["role"]  # vLLM: the last message's role without a generation prompt
    content = last["content"] if isinstance(last["content"], str) else "\n".join(p["text"] for p in last["content"])
    r = server.post("/v1/chat/completions", {**base, "echo": True, "n": 2})
    assert r.status_code == 200, r.text
    for c in r.json()["choices"]:
        assert c["message"]["role"] == last["role"]
        assert c["message"]["content"] == content + plain["content"]
    s = server.post("/v1/chat/completions", {**base, "echo": True, "stream": True})
    chunks = _sse(s)
    assert chunks[0]["choices"][0]["delta"] == {"role": last["role"], "content": ""}
    assert chunks[1]["choices"][0]["delta"] == {"content": content}  # the echo in a chunk of its own, as vLLM
    assert "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"]) == \
        content + plain["content"]


def test_echo_with_generation_prompt_repeats_only_an_assistant_message(server):
    base = {"model": MODEL, "max_tokens": 3, "temperature": 0, "echo": True}
    r = server.post("/v1/chat/completions", {**base, "messages": MSGS}).json()["choices"][0]["message"]
    plain = server.post("/v1/chat/completions", {**base, "messages": MSGS, "echo": False}).json()
    assert r == plain["choices"][0]["message"] and r["role"] == "assistant"  # a user message is not echoed
    chunks = _sse(server.post("/v1/chat/completions", {**base, "messages": MSGS, "stream": True}))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(ch["choices"][0]["delta"].get("content") or "" for ch in chunks if ch["choices"]) == r["content"]


def test_no_completion_tokens_details_without_a_reasoning_parser(server):
    body = {"model": MODEL, "messages": MSGS, "max_tokens": 2}
    assert "completion_tokens_details" not in server.post("/v1/chat/completions", body).json()["usage"]
    chunks = _sse(server.post("/v1/chat/completions", {**body, "stream": True, "stream_options": {
        "include_usage": True, "continuous_usage_stats": True}}))
    assert all("completion_tokens_details" not in ch["usage"] for ch in chunks)
    r = server.client().responses.create(model=MODEL, input="hi", max_output_tokens=2)
    assert r.usage.output_tokens_details.reasoning_tokens == 0


# ------------------------------------------------------------------------------------ reasoning parser
@pytest.fixture(scope="module")
def think_server(tmp_path_factory):
    path = build_thinking_model(tmp_path_factory.mktemp("thinking_leftovers") / "model")
    srv = RemoteServer(str(path), ["--served-model-name", MODEL, "--kv-cache-memory-bytes", "32M",
                                   "--reasoning-parser", "qwen3", "--max-logprobs", "5"])
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tags(think_server) -> tuple[int, int]:
    ids = [httpx.post(think_server.url + "/tokenize", json={"model": MODEL, "prompt": t, "add_special_tokens": False})
           .json()["tokens"] for t in (THINK, END)]
    assert all(len(i) == 1 for i in ids)
    return ids[0][0], ids[1][0]


def _reference_count(ids: list[int], tags: tuple[int, int], thinking_opened: bool = True) -> int:
    """The tokens between the start tag (or the output's start, when the prompt opened the thinking) and the first
    end tag (or the end)."""
    start = ids.index(tags[0]) + 1 if tags[0] in ids else (0 if thinking_opened else len(ids))
    end = ids.index(tags[1], start) if tags[1] in ids[start:] else len(ids)
    return max(0, end - start)


@pytest.mark.parametrize("max_tokens", [2, 3, 6, 9])
def test_chat_usage_counts_reasoning_tokens(think_server, tags, max_tokens):
    body = {"model": MODEL, "messages": MSGS, "max_tokens": max_tokens, "temperature": 0, "return_token_ids": True}
    r = think_server.post("/v1/chat/completions", {**body, "n": 2}).json()
    ids = r["choices"][0]["token_ids"]
    ref = _reference_count(ids, tags)
    assert ref == min(max_tokens - 1, len(REASONING))  # <think> } { ] </think> ...: the script's thinking
    assert r["usage"]["completion_tokens_details"] == {"reasoning_tokens": 2 * ref}
    chunks = _sse(think_server.post("/v1/chat/completions", {**body, "stream": True, "stream_options": {
        "include_usage": True, "continuous_usage_stats": True}}))
    assert chunks[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": ref}
    seen: list[int] = []
    for ch in chunks[:-1]:  # each chunk's: the tokens so far
        seen += ch["choices"][0].get("token_ids") or []
        assert ch["usage"]["completion_tokens_details"] == {"reasoning_tokens": _reference_count(seen, tags)}
    assert seen == ids


def test_chat_usage_reasoning_tokens_when_the_prompt_closed_the_thinking(think_server, tags):
    body = {"model": MODEL, "messages": MSGS, "max_tokens": 6, "temperature": 0, "return_token_ids": True,
            "chat_template_kwargs": {"enable_thinking": False}}
    r = think_server.post("/v1/chat/completions", body).json()
    ids = r["choices"][0]["token_ids"]
    assert r["usage"]["completion_tokens_details"]["reasoning_tokens"] == _reference_count(ids, tags) == 3


@pytest.mark.parametrize("max_tokens", [3, 6])
def test_responses_usage_counts_reasoning_tokens(think_server, tags, max_tokens):
    c = think_server.client()
    chat = think_server.post("/v1/chat/completions", {"model": MODEL, "messages": MSGS, "max_tokens": max_tokens,
                                                      "temperature": 0, "return_token_ids": True}).json()
    ref = _reference_count(chat["choices"][0]["token_ids"], tags)
    r = c.responses.create(model=MODEL, input=MSGS[0]["content"], max_output_tokens=max_tokens, temperature=0)
    assert r.usage.output_tokens_details.reasoning_tokens == ref
    final = [e for e in c.responses.create(model=MODEL, input=MSGS[0]["content"], max_output_tokens=max_tokens,
                                           temperature=0, stream=True) if e.type == "response.completed"]
    assert final[0].response.usage.output_tokens_details.reasoning_tokens == ref


def _entries(entries) -> list[tuple]:
    return [(t.token, round(t.logprob, 4), [(x.token, round(x.logprob, 4)) for x in t.top_logprobs])
            for t in entries]


@pytest.mark.parametrize("top", [0, 2])
def test_responses_logprobs_with_a_reasoning_parser_are_the_answers(think_server, tags, top):
    c = think_server.client()
    chat = c.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=9, temperature=0, logprobs=True,
                                     top_logprobs=top, extra_body={"return_token_ids": True})
    ids = chat.choices[0].model_extra["token_ids"]
    answer_start = ids.index(tags[1]) + 1  # after the first </think>
    ref = _entries(chat.choices[0].logprobs.content[answer_start:])
    assert len(ref) == 9 - answer_start > 0
    kw = {"model": MODEL, "input": MSGS[0]["content"], "max_output_tokens": 9, "temperature": 0,
          "include": INCLUDE, "top_logprobs": top}
    r = c.responses.create(**kw)
    reasoning, message = r.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == REASONING
    part = message.content[0]
    assert part.text == chat.choices[0].message.content
    assert _entries(part.logprobs) == ref
    assert [list(t.bytes) for t in part.logprobs] == [list(t.token.encode()) for t in part.logprobs]
    deltas, done, final = [], None, None
    for ev in c.responses.create(**kw, stream=True):
        if ev.type == "response.output_text.delta":
            deltas += ev.logprobs
        elif ev.type == "response.output_text.done":
            done = ev
        elif ev.type == "response.completed":
            final = ev.response
    assert done is not None and final is not None and done.text == part.text
    assert _entries(deltas) == _entries(done.logprobs) == ref
    assert _entries(final.output[1].content[0].logprobs) == ref


def test_responses_logprobs_cut_inside_the_thinking_have_no_answer(think_server):
    r = think_server.client().responses.create(model=MODEL, input="hi", max_output_tokens=3, temperature=0,
                                               include=INCLUDE)
    assert [o.type for o in r.output] == ["reasoning"] and r.status == "incomplete"


def test_responses_logprobs_with_tool_choice_none_are_served(server):
    tools = [{"type": "function", "name": "f", "parameters": {"type": "object"}}]
    r = server.client().responses.create(model=MODEL, input="hi", max_output_tokens=3, temperature=0, tools=tools,
                                         tool_choice="none", include=INCLUDE)
    assert len(r.output[0].content[0].logprobs) == r.usage.output_tokens == 3


def test_token_split_is_exact_or_nothing():
    """The parser's text split on token ids (ids 7 = <think>, 8 = </think>); a tag in the text that is not its
    token (spelled in pieces, or dropped from the text) has no exact split."""
    from pagoda.entrypoints.openai.chat_output import TokenSplit, token_split
    from pagoda.reasoning import get_reasoning_parser
    from pagoda.reasoning.token_ids import ReasoningTokenIds

    tags = ReasoningTokenIds("qwen3", 7, 8, END)
    thinking = get_reasoning_parser("qwen3")
    assert token_split(thinking, "<think>ab</think>c", [7, 1, 2, 8, 3], tags) == TokenSplit(1, 3, 4)
    assert token_split(thinking, "ab</think>c", [1, 2, 8, 3], tags) == TokenSplit(0, 2, 3)  # the prompt opened it
    assert token_split(thinking, "<think>ab", [7, 1, 2], tags) == TokenSplit(1, 3, 3)  # cut inside the thinking
    closed = get_reasoning_parser("qwen3", {"enable_thinking": False})
    assert token_split(closed, "a</think>b", [1, 8, 2], tags) == TokenSplit(0, 0, 0)  # all answer
    assert token_split(thinking, "ab</think>c", [1, 2, 4, 5, 3], tags) is None  # </think> in pieces
    assert token_split(thinking, "abc", [1, 2, 8, 3], tags) is None  # </think> dropped from the text
    assert token_split(thinking, "ab</think>c", [1, 2, 8, 3], "not single tokens") is None
