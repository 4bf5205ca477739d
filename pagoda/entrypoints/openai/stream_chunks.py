"""SSE events of a streamed completion or chat completion, encoded without a pydantic model per chunk.

A stream sends one chunk per request and engine step, so building and validating a
``CompletionStreamResponse`` / ``ChatCompletionStreamResponse`` for each one was a large part of the
API server's CPU per token. Here the per-request constant part (id, object, created, model) is
encoded once, and each chunk's choice and usage are plain dicts in the models' field order,
serialized by pydantic-core's own JSON serializer (the one ``model_dump_json`` uses; pydantic models
inside them, such as logprobs, serialize as themselves). The bytes are exactly those of
``stream_chunk_json`` on the models (``tests/test_stream_chunks.py`` checks it): the same key order,
string escapes and float format, ``usage`` null when absent, and the ``return_token_ids`` keys
(``prompt_token_ids``, ``token_ids``) present only when set.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import to_json
from starlette.responses import StreamingResponse
from starlette.types import Send

_END = b"}\n\n"  # the chunk's closing brace and the SSE event's end


_USAGE = b'{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d,"prompt_tokens_details":null}'


def usage_json(prompt_tokens: int, completion_tokens: int) -> bytes:
    """``UsageInfo(prompt_tokens, completion_tokens, total)`` (no details) as JSON: a chunk's continuous usage."""
    return _USAGE % (prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


class StreamChunks:
    """The ``data: {...}`` events of one streamed response (``object``: "text_completion" or
    "chat.completion.chunk")."""

    def __init__(self, object_: str, response_id: str, created: int, model: str) -> None:
        head = {"id": response_id, "object": object_, "created": created, "model": model}
        self._head = b"data: " + to_json(head)[:-1] + b',"choices":['

    def event(self, choice: dict[str, Any] | None, usage: Any = None,
              prompt_token_ids: list[int] | None = None) -> bytes:
        """One chunk with ``choice`` (None: no choice, as the final usage chunk) and ``usage`` (None: null; a
        ``UsageInfo``, or its JSON from :func:`usage_json`); ``prompt_token_ids``: chat's top-level key, left out
        when None."""
        body = self._head if choice is None else self._head + to_json(choice)
        end = _END if prompt_token_ids is None else b',"prompt_token_ids":' + to_json(prompt_token_ids) + _END
        if usage is None:
            usage = b"null"
        elif not isinstance(usage, bytes):
            usage = to_json(usage)
        return body + b'],"usage":' + usage + end


SSE_DONE_BYTES = b"data: [DONE]\n\n"


class StreamEnd(bytes):
    """A stream's last bytes (its last events and ``data: [DONE]``): :class:`SSEResponse` sends them with the end of
    the body."""


class SSEResponse(StreamingResponse):
    """A ``text/event-stream`` response whose body iterator may end with a :class:`StreamEnd`: that one is sent as
    the body's last message (``more_body`` false), so the last token's chunk, the usage chunk, ``[DONE]`` and the
    chunked encoding's end go out in one write instead of four. The events are the same; only how they are split
    into writes differs. Anything else ends the body as :class:`StreamingResponse` does."""

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            if type(chunk) is StreamEnd:
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
                async for _ in self.body_iterator:  # runs the iterator to its end (nothing follows a StreamEnd)
                    pass
                return
            if not isinstance(chunk, bytes | memoryview):
                chunk = chunk.encode(self.charset)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
