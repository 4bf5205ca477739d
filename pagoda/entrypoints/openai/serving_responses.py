"""POST /v1/responses: OpenAI's Responses API (text in, text out), on the chat serving path.

The request becomes a conversation (``instructions`` as the system message, then ``input``), rendered
by the chat template and sampled with chat's rules (:class:`OpenAIServingChat`); the output is one
assistant message. Streams send OpenAI's event sequence, each as ``event: TYPE`` + ``data: JSON``:
``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``…, ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, ``response.completed`` (as vLLM, also
when the answer was cut at ``max_output_tokens``: ``status`` then says ``incomplete``); an error
mid-stream is an ``error`` event and ends the stream. Nothing is stored.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from pagoda.engine.async_llm import RequestStream, final_output
from pagoda.entrypoints.openai.protocol import ChatCompletionRequest, ChatMessageIn
from pagoda.entrypoints.openai.protocol_responses import (
    InputTokensDetails,
    OutputMessage,
    OutputText,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    unsupported_fields,
)
from pagoda.entrypoints.openai.serving_chat import OpenAIServingChat
from pagoda.entrypoints.openai.serving_engine import (
    ServingError,
    close_streams,
    request_field_names,
    to_serving_error,
)

# Chat's names for the fields a Responses request calls otherwise.
FIELD_NAMES = {"max_tokens": "max_output_tokens", "messages": "input", "prompt": "input"}


def event(kind: str, seq: int, **fields: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': seq, **fields})}\n\n"


@contextmanager
def responses_field_names() -> Iterator[None]:
    """Errors name the Responses request's fields (``input``, ``max_output_tokens``), not chat's."""
    with request_field_names(FIELD_NAMES):
        try:
            yield
        except ServingError as e:
            if e.param in FIELD_NAMES:
                e.param = FIELD_NAMES[e.param]
            raise


def to_messages(req: ResponsesRequest) -> list[ChatMessageIn]:
    msgs = [ChatMessageIn(role="system", content=req.instructions)] if req.instructions is not None else []
    if isinstance(req.input, str):
        return [*msgs, ChatMessageIn(role="user", content=req.input)]
    for m in req.input:
        text = m.content if isinstance(m.content, str) else "".join(p.text for p in m.content)
        msgs.append(ChatMessageIn(role=m.role, content=text))
    return msgs


class OpenAIServingResponses:
    def __init__(self, chat: OpenAIServingChat) -> None:
        self.chat = chat

    def check(self, req: ResponsesRequest) -> None:
        bad = unsupported_fields(req)
        if bad:
            raise ServingError(400, f"{', '.join(bad)}: not supported by pagoda's /v1/responses (it does text in, "
                                    f"text out; nothing is stored).", param=bad[0], code="unsupported_field")

    def base_response(self, req: ResponsesRequest, rid: str, model: str) -> ResponseObject:
        return ResponseObject(id=rid, created_at=self.chat.now(), status="in_progress", model=model,
                              instructions=req.instructions, max_output_tokens=req.max_output_tokens,
                              temperature=req.temperature, top_p=req.top_p, user=req.user,
                              metadata=req.metadata or {})

    async def create_response(self, req: ResponsesRequest) -> Any:
        self.check(req)
        chat = self.chat
        with responses_field_names():
            model = chat.model_name(req.model)
            creq = ChatCompletionRequest(model=req.model, messages=to_messages(req), temperature=req.temperature,
                                         top_p=req.top_p, max_tokens=req.max_output_tokens, user=req.user)
            chat.check_common(creq, "chat")
            text, ids = chat.render_prompt(creq.messages, True, False, None, None, None, False)
            given = req.max_output_tokens is not None
            params = chat.sampling_params(creq, len(ids), req.max_output_tokens, given, None, None)
            rid = f"resp_{uuid.uuid4().hex}"
            chat.log_request(rid, text, ids, params)
            stream = chat.engine.add_request(rid, {"prompt": text, "prompt_token_ids": ids}, params)
        resp = self.base_response(req, rid, model)
        if req.stream:
            return StreamingResponse(self._stream(resp, stream), media_type="text/event-stream",
                                     background=BackgroundTask(close_streams, stream))
        out = await final_output(stream)
        if out.error:
            raise RuntimeError(out.error)
        c = out.outputs[0]
        self._finish(resp, f"msg_{uuid.uuid4().hex}", c.text, c.finish_reason, len(out.prompt_token_ids),
                     len(c.token_ids), out.num_cached_tokens)
        return JSONResponse(resp.model_dump())

    @staticmethod
    def _finish(resp: ResponseObject, msg_id: str, text: str, finish_reason: str | None, input_tokens: int,
                output_tokens: int, cached: int) -> OutputMessage:
        """Fill ``resp`` with its final output and usage; returns the output message."""
        status: Literal["completed", "incomplete"] = "incomplete" if finish_reason == "length" else "completed"
        msg = OutputMessage(id=msg_id, status=status, content=[OutputText(text=text)])
        resp.status = status
        resp.incomplete_details = {"reason": "max_output_tokens"} if status == "incomplete" else None
        resp.output = [msg]
        resp.usage = ResponseUsage(input_tokens=input_tokens, output_tokens=output_tokens,
                                   total_tokens=input_tokens + output_tokens,
                                   input_tokens_details=InputTokensDetails(cached_tokens=cached))
        return msg

    async def _stream(self, resp: ResponseObject, stream: RequestStream) -> AsyncIterator[str]:
        seq = iter(range(1 << 62))
        msg_id = f"msg_{uuid.uuid4().hex}"
        where = {"item_id": msg_id, "output_index": 0, "content_index": 0}
        try:
            yield event("response.created", next(seq), response=resp.model_dump())
            yield event("response.in_progress", next(seq), response=resp.model_dump())
            item = OutputMessage(id=msg_id, status="in_progress")
            yield event("response.output_item.added", next(seq), output_index=0, item=item.model_dump())
            yield event("response.content_part.added", next(seq), **where, part=OutputText(text="").model_dump())
            text, last = "", None
            async for out in stream:
                if out.error:
                    raise RuntimeError(out.error)
                last = out
                delta = stream.last_deltas[0] if stream.last_deltas else ""
                if delta:
                    text += delta
                    yield event("response.output_text.delta", next(seq), **where, delta=delta, logprobs=[])
            assert last is not None
            c = last.outputs[0]
            msg = self._finish(resp, msg_id, text, c.finish_reason, len(last.prompt_token_ids), len(c.token_ids),
                               last.num_cached_tokens)
            yield event("response.output_text.done", next(seq), **where, text=text, logprobs=[])
            yield event("response.content_part.done", next(seq), **where, part=msg.content[0].model_dump())
            yield event("response.output_item.done", next(seq), output_index=0, item=msg.model_dump())
            yield event("response.completed", next(seq), response=resp.model_dump())
        except asyncio.CancelledError:
            raise
        except Exception as e:
            err = to_serving_error(e)
            yield event("error", next(seq), code=err.code or err.type, message=err.message, param=err.param)
        finally:
            stream.close()
