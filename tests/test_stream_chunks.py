"""Stream chunks encoded by ``StreamChunks`` are byte for byte those of the pydantic response models.

The reference is the previous encoding: ``sse(stream_chunk_json(<the model>))`` (the final usage
chunk of /v1/completions used ``model_dump_json()``, the same bytes without optional keys to drop).
"""

from __future__ import annotations

import itertools

import pytest

from pagoda.entrypoints.openai.protocol import (
    ChatCompletionStreamResponse,
    ChatLogprobs,
    ChatLogprobToken,
    ChatLogprobTop,
    ChatStreamChoice,
    CompletionLogprobs,
    CompletionStreamChoice,
    CompletionStreamResponse,
    PromptTokenUsageInfo,
    UsageInfo,
    stream_chunk_json,
)
from pagoda.entrypoints.openai.serving_chat import _choice
from pagoda.entrypoints.openai.serving_engine import sse
from pagoda.entrypoints.openai.stream_chunks import StreamChunks, usage_json

TEXTS = ["", "hello", ' a "quoted"\\ line\nnext\ttab\r\x00\x01\x1f\x7f', "héllo wörld — 日本語 🙂", "\u2028\u2029"]
COMPLETION_LOGPROBS = CompletionLogprobs(
    text_offset=[0, 3], token_logprobs=[-1e-05, None], tokens=["a", "bytes:\\xe6"],
    top_logprobs=[{"a": -0.000123, " b": -9999.0, "é": -1.5}, None])
CHAT_LOGPROBS = ChatLogprobs(content=[ChatLogprobToken(
    token="hi", logprob=-0.25, bytes=[104, 105],
    top_logprobs=[ChatLogprobTop(token="hi", logprob=-0.25, bytes=[104, 105]),
                  ChatLogprobTop(token="token_id:7", logprob=-3.0000001e-07, bytes=None)])])


def _ref(model: CompletionStreamResponse | ChatCompletionStreamResponse) -> bytes:
    return sse(stream_chunk_json(model)).encode()


@pytest.mark.parametrize("text", TEXTS)
def test_completion_chunks(text: str) -> None:
    chunks = StreamChunks("text_completion", "cmpl-bench-0", 1764000000, "tiny-\"model\"")
    cases = itertools.product([None, COMPLETION_LOGPROBS], [None, "length", "stop"], [None, 2, "</s>"],
                              [None, [5, 6]], [None, [], [1, 2, 3]], [None, (7, 3)])
    for lp, finish, stop, prompt_ids, token_ids, usage in cases:
        idx = 3
        choice = {"index": idx, "text": text, "logprobs": lp, "finish_reason": finish, "stop_reason": stop}
        if prompt_ids is not None:
            choice["prompt_token_ids"] = prompt_ids
        if token_ids is not None:
            choice["token_ids"] = token_ids
        model = CompletionStreamResponse(
            id="cmpl-bench-0", created=1764000000, model="tiny-\"model\"",
            choices=[CompletionStreamChoice(index=idx, text=text, logprobs=lp, finish_reason=finish, stop_reason=stop,
                                            prompt_token_ids=prompt_ids, token_ids=token_ids)],
            usage=UsageInfo(prompt_tokens=usage[0], completion_tokens=usage[1], total_tokens=sum(usage))
            if usage else None)
        assert chunks.event(choice, usage_json(*usage) if usage else None) == _ref(model)


@pytest.mark.parametrize("details", [None, PromptTokenUsageInfo(cached_tokens=16)])
def test_final_usage_chunks(details: PromptTokenUsageInfo | None) -> None:
    usage = UsageInfo(prompt_tokens=10, completion_tokens=20, total_tokens=30, prompt_tokens_details=details)
    cmpl = CompletionStreamResponse(id="cmpl-1", created=5, model="m", choices=[], usage=usage)
    assert StreamChunks("text_completion", "cmpl-1", 5, "m").event(None, usage) == sse(cmpl.model_dump_json()).encode()
    chat = ChatCompletionStreamResponse(id="chatcmpl-1", created=5, model="m", choices=[], usage=usage)
    assert StreamChunks("chat.completion.chunk", "chatcmpl-1", 5, "m").event(None, usage) == _ref(chat)


@pytest.mark.parametrize("text", TEXTS)
def test_chat_chunks(text: str) -> None:
    chunks = StreamChunks("chat.completion.chunk", "chatcmpl-x", 1764000000, "m")
    tool_call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1.5}'}}
    deltas = [{"role": "assistant", "content": text}, {"content": text}, {}, {"reasoning": text,
              "reasoning_content": text}, {"tool_calls": [tool_call]}]
    cases = itertools.product(deltas, [None, CHAT_LOGPROBS], [None, "stop", "tool_calls"], [None, 13],
                              [None, [], [4, 5]], [None, [1, 2]], [None, (3, 0), (3, 9)])
    for delta, lp, finish, stop, token_ids, prompt_ids, usage in cases:
        choice = _choice(1, delta, lp, finish, stop)
        if token_ids is not None:
            choice["token_ids"] = token_ids
        model = ChatCompletionStreamResponse(
            id="chatcmpl-x", created=1764000000, model="m",
            choices=[ChatStreamChoice(index=1, delta=delta, logprobs=lp, finish_reason=finish, stop_reason=stop,
                                      token_ids=token_ids)],
            usage=UsageInfo(prompt_tokens=usage[0], completion_tokens=usage[1], total_tokens=sum(usage))
            if usage else None,
            prompt_token_ids=prompt_ids)
        assert chunks.event(choice, usage_json(*usage) if usage else None, prompt_ids) == _ref(model)


def _asgi_messages(body: list[bytes | str]) -> list[dict]:
    import asyncio

    from pagoda.entrypoints.openai.stream_chunks import SSEResponse

    async def gen():
        for b in body:
            yield b

    sent: list[dict] = []

    async def send(msg: dict) -> None:
        sent.append(msg)

    async def receive() -> dict:
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    asyncio.run(SSEResponse(gen(), media_type="text/event-stream")(scope, receive, send))
    return [{k: v for k, v in m.items() if k != "headers"} for m in sent]


def test_sse_response_sends_the_stream_end_with_the_body_end() -> None:
    from pagoda.entrypoints.openai.stream_chunks import StreamEnd

    body = "http.response.body"
    assert _asgi_messages([b"data: 1\n\n", "data: 2\n\n", StreamEnd(b"data: 3\n\ndata: [DONE]\n\n")]) == [
        {"type": "http.response.start", "status": 200},
        {"type": body, "body": b"data: 1\n\n", "more_body": True},
        {"type": body, "body": b"data: 2\n\n", "more_body": True},
        {"type": body, "body": b"data: 3\n\ndata: [DONE]\n\n", "more_body": False},
    ]
    # without a StreamEnd (as StreamingResponse): an empty last message
    assert _asgi_messages([b"data: 1\n\n"])[1:] == [{"type": body, "body": b"data: 1\n\n", "more_body": True},
                                                  {"type": body, "body": b"", "more_body": False}]
