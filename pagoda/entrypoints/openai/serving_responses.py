"""POST /v1/responses: OpenAI's Responses API (text, function tools, reasoning), on the chat serving path.

The request becomes a conversation (``instructions`` as the system message, then ``input``), rendered
by the chat template (an input ending with a cut-off assistant message, ``status`` ``in_progress`` or
``incomplete``, is continued, as vLLM does) and sampled with chat's rules (:class:`OpenAIServingChat`); the
output is one assistant message, or with ``tools`` or ``--reasoning-parser`` a ``reasoning`` item, the message and/or
``function_call`` items (:mod:`pagoda.entrypoints.openai.responses_tools`, which also streams them).
Text-only streams send
OpenAI's event sequence, each as ``event: TYPE`` + ``data: JSON``:
``response.created``, ``response.in_progress``, ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta``…, ``response.output_text.done``,
``response.content_part.done``, ``response.output_item.done``, ``response.completed`` (as vLLM, also
when the answer was cut at ``max_output_tokens``: ``status`` then says ``incomplete``); an error
mid-stream is an ``error`` event and ends the stream. With the store on (:mod:`.responses_store`) answers are
kept (``store``), a request may continue one (``previous_response_id``) or run in the background; off, those
fields are refused. With ``include:
["message.output_text.logprobs"]`` the output text carries chat's logprobs of its tokens (``top_logprobs``
alternatives each), and each ``response.output_text.delta`` those of its tokens, which concatenate to the
``response.output_text.done`` event's (OpenAI's event shape: no ``bytes``). With ``--reasoning-parser`` they are
the answer's tokens only (those after the reasoning's end tag, :func:`token_split`; the reasoning's are not the
output text's); not with a tool parser's items (the calls' text is cut out of the answer, so no token range is it).
Usage's ``output_tokens_details.reasoning_tokens`` counts the reasoning's tokens (as vLLM).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from pagoda.engine.async_llm import RequestStream, final_output
from pagoda.entrypoints.openai.chat_output import ChatOutputParser, TokenSplit, token_split
from pagoda.entrypoints.openai.protocol import ChatCompletionRequest, ChatMessageIn
from pagoda.entrypoints.openai.protocol_responses import (
    LOGPROBS_INCLUDE,
    STORE_FIELDS,
    InputTokensDetails,
    OutputItem,
    OutputMessage,
    OutputText,
    OutputTokensDetails,
    ResponseObject,
    ResponsesRequest,
    ResponseUsage,
    ignored_hints,
    response_format,
    unsupported_fields,
    wants_logprobs,
)
from pagoda.entrypoints.openai.request_fields import check_ignored_values
from pagoda.entrypoints.openai.responses_store import ResponseStore, StoredResponse, listed_input
from pagoda.entrypoints.openai.responses_tools import (
    ResponsesItemStream,
    Status,
    chat_tool_choice,
    chat_tools,
    continues_final_message,
    event_logprobs,
    input_messages,
    output_items,
)
from pagoda.entrypoints.openai.serving_chat import OpenAIServingChat
from pagoda.entrypoints.openai.serving_engine import (
    ServingError,
    close_streams,
    output_error,
    request_field_names,
    to_serving_error,
)
from pagoda.entrypoints.openai.tool_calling import (
    check_reasoning_request,
    constraint,
    note_prompt,
    output_parser,
    plan_tools,
)
from pagoda.reasoning.token_ids import ReasoningTokenIds

logger = logging.getLogger("pagoda.server")

TokenLogprobs = Callable[[list[int], list[Any]], list[dict[str, Any]]]
"""(token ids, their engine logprobs) -> the output text's logprobs entries (chat's, as dicts)."""

VLLM_EXTRA_FIELDS = ("seed", "top_k", "stop", "repetition_penalty", "ignore_eos", "skip_special_tokens",
                     "include_stop_str_in_output", "logit_bias", "priority", "cache_salt")
"""vLLM's extra fields of a Responses request: passed to the chat request as they are (same names, same rules)."""

# Chat's names for the fields a Responses request calls otherwise.
FIELD_NAMES = {"max_tokens": "max_output_tokens", "messages": "input", "prompt": "input", "response_format": "text",
               "logprobs": "top_logprobs"}


def event(kind: str, seq: int, **fields: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': seq, **fields})}\n\n"


def _status(finish_reason: str | None) -> Status:
    return "incomplete" if finish_reason == "length" else "completed"


def _text_config(text: Any) -> Any:
    """The request's ``text`` as the response echoes it: ``format`` absent or null reads as plain text."""
    return {**text, "format": text.get("format") or {"type": "text"}} if isinstance(text, dict) else text


@contextmanager
def responses_field_names(req: ResponsesRequest) -> Iterator[None]:
    """Errors name the Responses request's fields (``input``, ``max_output_tokens``, ``tools``), not chat's."""
    names = {**FIELD_NAMES, "structured_outputs": "tools" if req.tools else "text"}
    with request_field_names(names):
        try:
            yield
        except ServingError as e:
            if e.param in names:
                e.param = names[e.param]
            raise


def turn_messages(req: ResponsesRequest) -> list[ChatMessageIn]:
    """The request's ``input`` as chat messages (what a stored turn keeps: not its ``instructions``)."""
    if isinstance(req.input, str):
        return [ChatMessageIn(role="user", content=req.input)]
    return input_messages(req.input)


def to_messages(req: ResponsesRequest, history: Sequence[ChatMessageIn] = ()) -> list[ChatMessageIn]:
    """The conversation: ``instructions`` as the system message, the earlier turns (``previous_response_id``'s:
    an earlier turn's instructions are not carried over, as OpenAI's), then ``input``."""
    msgs = [ChatMessageIn(role="system", content=req.instructions)] if req.instructions is not None else []
    return [*msgs, *history, *turn_messages(req)]


def chat_request(req: ResponsesRequest, history: Sequence[ChatMessageIn] = ()) -> ChatCompletionRequest:
    """The chat request a Responses request runs as (tools in chat's shape, ``text.format`` as
    ``response_format``; ``history`` the earlier turns')."""
    tools = chat_tools(req.tools)
    try:
        rf = response_format(req.text)
    except ValueError as e:
        raise ServingError(400, str(e), param="text") from None
    extras = {k: getattr(req, k) for k in VLLM_EXTRA_FIELDS}
    return ChatCompletionRequest(model=req.model, messages=to_messages(req, history), temperature=req.temperature,
                                 top_p=req.top_p, max_tokens=req.max_output_tokens, user=req.user, tools=tools,
                                 tool_choice=chat_tool_choice(req.tool_choice, tools is not None),
                                 parallel_tool_calls=req.parallel_tool_calls, response_format=rf,
                                 logprobs=wants_logprobs(req), top_logprobs=req.top_logprobs, **extras)


class AnswerTokens:
    """A parsed output's tokens as they come (:meth:`update`): how many are the reasoning's, and the answer's
    logprobs not yet taken (:meth:`take`; ``token_logprobs`` None: not asked for). The split is the reasoning
    parser's on the tokens (:func:`token_split`); the answer is every token after the reasoning's end tag. Once the
    output is finished, a split that cannot be exact (the text holds a reasoning tag its tokens do not) fails the
    request rather than give the reasoning's logprobs as the answer's."""

    def __init__(self, parser: ChatOutputParser, tags: Any, token_logprobs: TokenLogprobs | None) -> None:
        self.parser = parser
        self.tags = tags
        self.token_logprobs = token_logprobs
        self.text = ""
        self.ids: Sequence[int] = ()
        self.lps: list[Any] = []
        self.sent = 0  # the answer's tokens whose logprobs were taken
        self.finished = False

    def update(self, text: str, token_ids: Sequence[int], logprobs: list[Any], finished: bool) -> None:
        """The output so far (``token_ids`` kept as given, not copied: this runs at every step of a stream)."""
        self.text, self.ids, self.lps, self.finished = text, token_ids, logprobs, finished

    def _split(self) -> TokenSplit | None:
        if self.parser.reasoning is None:
            return TokenSplit(0, 0, 0)  # no reasoning parser: every token is the answer's
        return token_split(self.parser.reasoning, self.text, self.ids, self.tags)

    def reasoning_tokens(self) -> int | None:
        """The reasoning's tokens (vLLM's ``output_tokens_details.reasoning_tokens``); None when not exact."""
        split = self._split()
        return split.reasoning_tokens if split is not None else None

    def take(self) -> list[dict[str, Any]]:
        """The logprobs of the answer's tokens since the last call ([] while the split is undecided)."""
        if self.token_logprobs is None:
            return []
        split = self._split()
        if split is None:
            if self.finished:
                raise ServingError(500, f"the answer's logprobs cannot be told from the reasoning's: the output's "
                                   f"text holds a reasoning tag that is not one of its tokens (include "
                                   f"{LOGPROBS_INCLUDE!r}).", type_="server_error", param="include")
            return []
        start = split.content_start + self.sent
        new = list(self.ids[start:])
        self.sent += len(new)
        return self.token_logprobs(new, self.lps[start:])


STORE_OFF = ("this server does not store responses (start it with PAGODA_ENABLE_RESPONSES_API_STORE=1, or "
             "vLLM's VLLM_ENABLE_RESPONSES_API_STORE=1)")


def not_found(rid: str, param: str | None = None) -> ServingError:
    return ServingError(404, f"Response with id {rid!r} not found.", param=param, code="response_not_found")


class OpenAIServingResponses:
    """``store``: the store when the server keeps responses (None: every store field is refused at a value that
    asks for it, :data:`STORE_FIELDS`)."""

    def __init__(self, chat: OpenAIServingChat, store: ResponseStore | None = None) -> None:
        self.chat = chat
        self.store = store

    def check(self, req: ResponsesRequest) -> None:
        bad = unsupported_fields(req)
        if bad:
            raise ServingError(400, f"{', '.join(bad)}: not supported by pagoda's /v1/responses (it does text, "
                                    f"function tools and reasoning).", param=bad[0],
                              code="unsupported_field")
        if self.store is None:
            asked = [k for k, ok in STORE_FIELDS.items() if getattr(req, k) not in ok]
            if asked:
                raise ServingError(400, f"{', '.join(asked)}: {STORE_OFF}.", param=asked[0],
                                   code="unsupported_field")
        elif req.background and req.store is False:
            raise ServingError(400, "background needs store (a background response is read back by id).",
                               param="background")
        elif req.background and req.stream:
            raise ServingError(400, "background with stream is not supported by pagoda (send stream: false and "
                               "read the response with GET /v1/responses/{id}).", param="background")
        hints = ignored_hints(req)
        check_ignored_values(hints)
        if hints:  # chat's log line for its ignored fields
            logger.warning("The following fields were present in the request but ignored: %s", sorted(hints))

    def base_response(self, req: ResponsesRequest, rid: str, model: str) -> ResponseObject:
        return ResponseObject(id=rid, created_at=self.chat.now(), status="in_progress", model=model,
                              instructions=req.instructions, max_output_tokens=req.max_output_tokens,
                              temperature=req.temperature, top_p=req.top_p, user=req.user,
                              metadata=req.metadata or {}, tools=req.tools or [],
                              tool_choice=req.tool_choice if req.tool_choice is not None else
                              ("auto" if req.tools else "none"),
                              parallel_tool_calls=req.parallel_tool_calls is not False,
                              top_logprobs=req.top_logprobs,
                              **({"text": _text_config(req.text)} if req.text is not None else {}))

    def stored(self, rid: str, param: str | None = None) -> StoredResponse:
        """A stored response by id; a 404 when there is none (or no store)."""
        entry = self.store.get(rid) if self.store is not None else None
        if entry is None:
            if self.store is None:
                raise ServingError(404, f"Response with id {rid!r} not found: {STORE_OFF}.", param=param,
                                   code="response_not_found")
            raise not_found(rid, param)
        return entry

    def _previous(self, req: ResponsesRequest) -> StoredResponse | None:
        if req.previous_response_id is None:
            return None
        prev = self.stored(req.previous_response_id, "previous_response_id")
        if prev.running:
            raise ServingError(400, f"previous_response_id {req.previous_response_id!r} is still "
                               f"{prev.response.status}; continue it once it has finished.",
                               param="previous_response_id")
        return prev

    async def create_response(self, req: ResponsesRequest) -> Any:
        self.check(req)
        chat = self.chat
        prev = self._previous(req)
        with responses_field_names(req):
            model, lora = chat.resolve_model(req.model)
            creq = chat_request(req, prev.conversation() if prev is not None else ())
            plan = plan_tools(creq, chat.limits.tools)
            check_reasoning_request(creq, chat.limits.tools, plan, creq.response_format is not None)
            chat.check_common(creq, "chat")
            cont = continues_final_message(req.input)
            text, ids = chat.render_prompt(creq.messages, not cont, cont, None, None, plan.tools, False)
            note_prompt(plan, ids, chat.reasoning_tags)
            # tools or reasoning: output items from chat's parsers; else the text as one message
            parser = output_parser(creq, chat.limits.tools, plan)
            logprobs = chat._logprobs(creq)  # chat's checks and setting (-1: the whole vocabulary)
            if logprobs is not None and parser is not None:
                self._check_logprobs_split(parser)
            given = req.max_output_tokens is not None
            params = chat.sampling_params(creq, len(ids), req.max_output_tokens, given, None, logprobs,
                                          stream=bool(req.stream))
            so = constraint(plan)
            if so is not None or plan.sampling_overrides:
                params = params.clone(**plan.sampling_overrides, **({"structured_outputs": so} if so else {}))
            rid = f"resp_{uuid.uuid4().hex}"
            chat.log_request(rid, text, ids, params)
            stream = chat.engine.add_request(rid, {"prompt": text, "prompt_token_ids": ids,
                                                   "cache_salt": creq.cache_salt}, params, priority=creq.priority or 0,
                                               lora_request=lora)
        resp = self.base_response(req, rid, model)
        entry = None
        if self.store is not None and req.store is not False:
            resp.store, resp.previous_response_id = True, req.previous_response_id
            entry = StoredResponse(resp, turn_messages(req), prev, input_items=listed_input(req.input))
        num, as_ids = chat.num_logprobs(logprobs), chat.as_ids(creq)

        def token_logprobs(token_ids: list[int], lps: list[Any]) -> list[dict[str, Any]]:
            """The tokens' logprobs as chat reports them ([] when not asked for)."""
            if num is None or not token_ids:
                return []
            return [t.model_dump() for t in chat.chat_logprobs(token_ids, lps, num, as_ids).content or ()]

        if req.stream:
            body = self._stream(resp, stream, token_logprobs, entry) if parser is None else \
                self._stream_items(resp, stream, parser, AnswerTokens(parser, chat.reasoning_tags,
                                                                      token_logprobs if num is not None else None),
                                   entry)
            return StreamingResponse(body, media_type="text/event-stream",
                                     background=BackgroundTask(close_streams, stream))
        answer = AnswerTokens(parser, chat.reasoning_tags, token_logprobs if num is not None else None) \
            if parser is not None else None
        if entry is not None and req.background:
            resp.background, resp.status = True, "queued"
            snapshot = resp.model_dump()
            entry.task = asyncio.create_task(self._background(entry, stream, parser, answer, token_logprobs),
                                             name=f"responses-background-{rid}")
            self.store.put(entry)  # type: ignore[union-attr]  # entry is set only with a store
            return JSONResponse(snapshot)
        await self._complete(resp, stream, parser, answer, token_logprobs)
        if entry is not None:
            self.store.put(entry)  # type: ignore[union-attr]
        return JSONResponse(resp.model_dump())

    async def _complete(self, resp: ResponseObject, stream: RequestStream, parser: ChatOutputParser | None,
                        answer: AnswerTokens | None, token_logprobs: TokenLogprobs) -> None:
        """Wait for an unstreamed request's final output and fill ``resp`` with it (raises its error)."""
        out = await final_output(stream)
        if out.error:
            raise output_error(out)
        c = out.outputs[0]
        status = _status(c.finish_reason)
        reasoning_tokens: int | None = 0
        if parser is None:
            items: list[OutputItem] = [OutputMessage(id=f"msg_{uuid.uuid4().hex}", status=status, content=[
                OutputText(text=c.text, logprobs=token_logprobs(list(c.token_ids), c.logprobs or []))])]
        else:
            assert answer is not None
            answer.update(c.text, c.token_ids, c.logprobs or [], True)
            reasoning_tokens = answer.reasoning_tokens()
            message = parser.message(c.text, c.finish_reason, c.stop_reason)
            items = output_items(message, status, answer.take() if message.content else None)
        self._finish(resp, items, status, len(out.prompt_token_ids), len(c.token_ids), out.num_cached_tokens,
                     reasoning_tokens)

    async def _background(self, entry: StoredResponse, stream: RequestStream, parser: ChatOutputParser | None,
                          answer: AnswerTokens | None, token_logprobs: TokenLogprobs) -> None:
        """A background response's generation: the stored response goes ``in_progress``, then ``completed`` /
        ``incomplete``, ``failed`` (with its error) or ``cancelled`` (:meth:`cancel`; the engine request is
        aborted)."""
        resp = entry.response
        resp.status = "in_progress"
        try:
            await self._complete(resp, stream, parser, answer, token_logprobs)
        except asyncio.CancelledError:
            resp.status = "cancelled"
        except Exception as e:  # the response says what failed; the server goes on
            err = to_serving_error(e)
            resp.status, resp.error = "failed", {"code": str(err.code or err.type), "message": err.message}
            logger.warning("background response %s failed: %s", resp.id, err.message)
        finally:
            stream.close()
            entry.task = None

    async def retrieve(self, rid: str) -> JSONResponse:
        """GET /v1/responses/{id}: the stored response as it stands (a background one's status may be running)."""
        return JSONResponse(self.stored(rid).response.model_dump())

    async def input_items(self, rid: str, after: str | None, limit: int, order: str) -> JSONResponse:
        """GET /v1/responses/{id}/input_items: the request's own input items (not the earlier turns'), OpenAI's
        list page (``order`` ``desc`` by default, ``after`` an item id, ``limit`` 1-100)."""
        items = list(self.stored(rid).input_items)
        if order == "desc":
            items.reverse()
        if after is not None:
            at = next((i for i, it in enumerate(items) if it.get("id") == after), None)
            if at is None:
                raise ServingError(400, f"after: no input item {after!r} in response {rid!r}.", param="after")
            items = items[at + 1:]
        page = items[:limit]
        return JSONResponse({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                             "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})

    async def cancel(self, rid: str) -> JSONResponse:
        """POST /v1/responses/{id}/cancel: a running background response is stopped (``cancelled``, its engine
        request aborted); a finished background one is returned as it is; a response that was not created with
        ``background`` is a 400, as vLLM's."""
        entry = self.stored(rid)
        if not entry.response.background:
            raise ServingError(400, "Cannot cancel a synchronous response (only background responses can be "
                               "cancelled).", param="response_id")
        task = entry.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return JSONResponse(entry.response.model_dump())

    async def stop_background(self) -> None:
        """Server shutdown: every running background response is cancelled (its engine request aborted)."""
        for entry in self.store.running() if self.store is not None else ():
            if entry.task is not None:
                entry.task.cancel()
                await asyncio.gather(entry.task, return_exceptions=True)

    async def delete(self, rid: str) -> JSONResponse:
        """DELETE /v1/responses/{id}: forgotten (a running background one is cancelled first); a later turn that
        continued it keeps its conversation."""
        entry = self.stored(rid)
        task = entry.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert self.store is not None
        self.store.delete(rid)
        return JSONResponse({"id": rid, "object": "response", "deleted": True})

    def _keep(self, entry: StoredResponse | None) -> None:
        """A streamed response, complete, into the store (when it is kept)."""
        if entry is not None:
            assert self.store is not None
            self.store.put(entry)

    def _check_logprobs_split(self, parser: ChatOutputParser) -> None:
        """Logprobs beside parsed items need the answer's tokens told apart exactly (:class:`AnswerTokens`)."""
        if parser.tools is not None:
            raise ServingError(400, f"include {LOGPROBS_INCLUDE!r} is not supported with tools (a tool parser cuts "
                               f"the calls' text out of the answer, so no range of tokens is the output text); ask "
                               f"without tools or with tool_choice 'none'.", param="include")
        tags = self.chat.reasoning_tags
        if not isinstance(tags, ReasoningTokenIds):
            raise ServingError(400, f"include {LOGPROBS_INCLUDE!r} is not supported with this server's "
                               f"--reasoning-parser: {tags}, so the answer's tokens cannot be told from the "
                               f"reasoning's.", param="include")

    @staticmethod
    def _finish(resp: ResponseObject, items: list[OutputItem], status: Status,
                input_tokens: int, output_tokens: int, cached: int, reasoning_tokens: int | None = 0) -> None:
        """Fill ``resp`` with its final output and usage."""
        resp.status = status
        resp.incomplete_details = {"reason": "max_output_tokens"} if status == "incomplete" else None
        resp.output = items
        resp.usage = ResponseUsage(input_tokens=input_tokens, output_tokens=output_tokens,
                                   total_tokens=input_tokens + output_tokens,
                                   input_tokens_details=InputTokensDetails(cached_tokens=cached),
                                   output_tokens_details=OutputTokensDetails(reasoning_tokens=reasoning_tokens))

    async def _stream_items(self, resp: ResponseObject, stream: RequestStream,
                            parser: ChatOutputParser, answer: AnswerTokens,
                            entry: StoredResponse | None = None) -> AsyncIterator[str]:
        """A stream whose output items come from chat's parsers (:class:`ResponsesItemStream`), the answer's
        logprobs (when asked for) from ``answer``; ``entry`` stored once the response is complete."""
        seq = iter(range(1 << 62))

        def ev(kind: str, **fields: Any) -> str:
            return event(kind, next(seq), **fields)

        items = ResponsesItemStream(parser, ev, answer.take if answer.token_logprobs is not None else None)
        try:
            yield ev("response.created", response=resp.model_dump())
            yield ev("response.in_progress", response=resp.model_dump())
            text, last = "", None
            async for out in stream:
                if out.error:
                    raise output_error(out)
                last = out
                text += stream.last_deltas[0] if stream.last_deltas else ""
                answer.update(text, out.outputs[0].token_ids, out.outputs[0].logprobs or [], out.finished)
                for e in items.feed(text, out.finished, out.outputs[0].finish_reason, out.outputs[0].stop_reason):
                    yield e
            assert last is not None
            c = last.outputs[0]
            status = _status(c.finish_reason)
            reasoning_tokens = answer.reasoning_tokens()
            for e in items.finish(status):
                yield e
            self._finish(resp, items.items, status, len(last.prompt_token_ids), len(c.token_ids),
                         last.num_cached_tokens, reasoning_tokens)
            self._keep(entry)
            yield ev("response.completed", response=resp.model_dump())
        except asyncio.CancelledError:
            raise
        except Exception as e:
            err = to_serving_error(e)
            yield ev("error", code=err.code or err.type, message=err.message, param=err.param)
        finally:
            stream.close()

    async def _stream(self, resp: ResponseObject, stream: RequestStream,
                      token_logprobs: TokenLogprobs, entry: StoredResponse | None = None) -> AsyncIterator[str]:
        """A text-only stream; with logprobs asked for, each delta event carries those of its tokens and the done
        event all of them (:func:`event_logprobs`'s shape), the final output text all of them with ``bytes``;
        ``entry`` stored once the response is complete."""
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
            all_lps: list[dict[str, Any]] = []  # the logprobs sent so far, one entry a token
            async for out in stream:
                if out.error:
                    raise output_error(out)
                last = out
                c = out.outputs[0]
                delta = stream.last_deltas[0] if stream.last_deltas else ""
                sent = len(all_lps)  # the tokens whose logprobs went out (none when not asked for)
                lps = token_logprobs(list(c.token_ids[sent:]), (c.logprobs or [])[sent:])
                all_lps += lps
                if delta or lps:
                    text += delta
                    yield event("response.output_text.delta", next(seq), **where, delta=delta,
                                logprobs=event_logprobs(lps))
            assert last is not None
            c = last.outputs[0]
            status = _status(c.finish_reason)
            msg = OutputMessage(id=msg_id, status=status, content=[OutputText(text=text, logprobs=all_lps)])
            self._finish(resp, [msg], status, len(last.prompt_token_ids), len(c.token_ids), last.num_cached_tokens)
            self._keep(entry)
            yield event("response.output_text.done", next(seq), **where, text=text, logprobs=event_logprobs(all_lps))
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
