"""POST /v1/chat/completions: the model's chat template, then generation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from pagoda.engine.async_llm import RequestStream
from pagoda.engine.chat_template_args import template_kwargs
from pagoda.engine.tokenizer import content_parts_text
from pagoda.entrypoints.openai.chat_output import ChatOutputParser, token_split
from pagoda.entrypoints.openai.chat_render import render_chat
from pagoda.entrypoints.openai.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessageIn,
    ChatMessageOut,
    CompletionTokenUsageInfo,
    UsageInfo,
)
from pagoda.entrypoints.openai.serving_engine import (
    OpenAIServing,
    ServingError,
    close_streams,
    final_output,
    output_error,
    request_field_names,
    sse_error,
)
from pagoda.entrypoints.openai.stream_chunks import SSE_DONE_BYTES, SSEResponse, StreamChunks, StreamEnd, usage_json
from pagoda.entrypoints.openai.structured_fields import structured_outputs_from_request, structured_source
from pagoda.entrypoints.openai.tool_calling import (
    ToolPlan,
    check_reasoning_request,
    constraint,
    finish_reason,
    note_prompt,
    output_parser,
    plan_tools,
)
from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import is_strict


class OpenAIServingChat(OpenAIServing):
    def render_prompt(self, messages: list[ChatMessageIn], add_generation_prompt: bool, continue_final: bool,
                      chat_template: str | None, chat_template_kwargs: dict[str, Any] | None,
                      tools: list[dict[str, Any]] | None, add_special_tokens: bool) -> tuple[str, list[int]]:
        """Chat template → (prompt text, token ids). Raises ValueError/ServingError for bad input."""
        conv = [m.model_dump(exclude_none=True) for m in messages]
        kwargs = template_kwargs(chat_template_kwargs, tools, continue_final, add_generation_prompt)
        text = render_chat(self.tokenizer, conv, add_generation_prompt, chat_template,
                           self.limits.trust_request_chat_template, self.limits.chat_template_content_format, **kwargs)
        return text, self.encode(text, add_special_tokens, param="messages")

    @staticmethod
    def _logprobs(req: ChatCompletionRequest) -> int | None:
        """The engine's logprobs setting (-1: the whole vocabulary; the cap is admission's, reported as
        top_logprobs); vLLM's checks and words."""
        top = req.top_logprobs
        if top is not None and top < 0 and top != -1:
            raise ServingError(400, "`top_logprobs` must be a positive value or -1.", param="top_logprobs")
        if top and not req.logprobs:
            raise ServingError(400, "when using `top_logprobs`, `logprobs` must be set to true.",
                               param="top_logprobs")
        return (top or 0) if req.logprobs else None

    @staticmethod
    def _prompt_logprobs(req: ChatCompletionRequest, logprobs: int | None) -> int | None:
        """The engine's prompt_logprobs: the request's, else with ``echo`` and ``logprobs`` the ``top_logprobs``
        count (vLLM's ``to_sampling_params``: "if prompt_logprobs is None and echo: top_logprobs"), so the response
        carries ``prompt_logprobs``. vLLM's ``top_logprobs`` defaults to 0, which makes every ``echo`` request compute
        them; here only one that asked for ``logprobs`` does (the mapping's stated purpose, vLLM PR #7453: "echo and
        top_logprobs enabled"), as the others never asked for logprobs and would lose the prefix-cache lookup. None
        for a stream (its chunks carry no prompt logprobs: vLLM computes them for nothing) and for beam search (vLLM
        never asks beam search for them)."""
        if req.prompt_logprobs is not None:
            return req.prompt_logprobs
        if req.echo and logprobs is not None and not req.stream and not req.use_beam_search:
            return logprobs
        return None

    @staticmethod
    def _field_names(req: ChatCompletionRequest) -> dict[str, str]:
        """What chat calls the engine's fields (see ``request_field_names``)."""
        names = {"prompt": "messages", "logprobs": "top_logprobs", "beam_width": "n",
                 "structured_outputs": structured_source(req)}
        # plan_tools' default: "auto" when tools are given. Only a choice whose plan constrains the output makes the
        # tools' schemas the constraint; under "none" a strict tool is only shown, and a bad response_format is
        # still response_format's.
        choice = req.tool_choice if req.tool_choice is not None else ("auto" if req.tools else "none")
        if choice == "required" or isinstance(choice, dict) or (
                choice == "auto" and any(is_strict(t) for t in req.tools or ())):
            names["structured_outputs"] = "tools"
        if req.max_completion_tokens is not None:
            names["max_tokens"] = "max_completion_tokens"
        return names

    async def create_chat_completion(self, req: ChatCompletionRequest) -> Any:
        with request_field_names(self._field_names(req)):
            return await self._create(req)

    async def _create(self, req: ChatCompletionRequest) -> Any:
        model, lora = self.resolve_model(req.model)
        self.check_common(req, "chat")
        if req.use_beam_search:
            self.check_no_beam_lora(lora)
        logprobs = self._logprobs(req)
        prompt_lp = self._prompt_logprobs(req, logprobs)
        plan = plan_tools(req, self.limits.tools)
        check_reasoning_request(req, self.limits.tools, plan, structured_outputs_from_request(req)[0] is not None)
        text, ids = self.render_prompt(
            req.messages, bool(req.add_generation_prompt), bool(req.continue_final_message), req.chat_template,
            req.chat_template_kwargs, plan.tools, bool(req.add_special_tokens),
        )
        ids = self.truncate(ids, req.truncate_prompt_tokens, req.truncation_side)
        note_prompt(plan, ids, self.reasoning_tags)
        user_max: int | None
        if req.max_completion_tokens is not None:
            user_max, given = req.max_completion_tokens, True
        else:
            user_max, given = req.max_tokens, req.max_tokens is not None
        request_id = self.new_id("chatcmpl", req.request_id)
        stream: Any
        if req.use_beam_search and (plan.schema is not None or plan.structural_tag is not None):
            raise ServingError(400, f"tool_choice {plan.mode!r} (constrained decoding) is not supported with "
                               f"use_beam_search.", param="tool_choice")
        if req.use_beam_search:  # one final output with n beams; a stream gets it in one burst
            bparams = self.beam_search_params(req, len(ids), user_max, given, None)
            self.log_request(request_id, text, ids, bparams)  # type: ignore[arg-type]
            prompt = {"prompt": text, "prompt_token_ids": ids, "cache_salt": req.cache_salt}
            stream = self.start_beam_search(request_id, prompt, bparams, req, self.num_logprobs(logprobs))
        else:
            params = self.sampling_params(req, len(ids), user_max, given, None, logprobs, prompt_lp,
                                          stream=bool(req.stream))
            so = constraint(plan)
            if so is not None or plan.sampling_overrides:
                params = params.clone(**plan.sampling_overrides, **({"structured_outputs": so} if so else {}))
            self.log_request(request_id, text, ids, params)
            stream = self.engine.add_request(
                request_id, {"prompt": text, "prompt_token_ids": ids, "cache_salt": req.cache_salt}, params,
                priority=req.priority or 0, lora_request=lora)
        if req.stream:
            return SSEResponse(self._stream(req, model, request_id, stream, plan), media_type="text/event-stream",
                               background=BackgroundTask(close_streams, stream))
        out = await final_output(stream)
        if out.error:
            raise output_error(out)
        as_ids = self.as_ids(req)
        echo = self._echo_text(req)
        role = self.response_role(req)
        num = self.num_logprobs(logprobs)
        choices = []
        parsers: list[ChatOutputParser | None] = []
        for c in out.outputs:
            lp = None
            if num is not None:
                lp = self.chat_logprobs(c.token_ids, c.logprobs or [], num, as_ids)
            parser = output_parser(req, self.limits.tools, plan)
            parsers.append(parser)
            message, reason = self._message(parser, plan, echo, c.text, c.finish_reason, c.stop_reason)
            message.role = role
            choices.append(ChatChoice(index=c.index, message=message, logprobs=lp,
                                      finish_reason=reason, stop_reason=c.stop_reason,
                                      token_ids=list(c.token_ids) if req.return_token_ids else None))
        pt = len(out.prompt_token_ids)
        ct = sum(len(c.token_ids) for c in out.outputs)
        resp = ChatCompletionResponse(
            id=request_id, created=self.now(), model=model, choices=choices,
            usage=self._with_reasoning(self.usage(pt, ct, out.num_cached_tokens), parsers,
                                       [c.text for c in out.outputs], [c.token_ids for c in out.outputs]),
            prompt_logprobs=self.prompt_logprobs_json(out) if prompt_lp is not None else None,
            prompt_token_ids=list(out.prompt_token_ids) if req.return_token_ids else None,
        )
        return JSONResponse(resp.model_dump())

    def _with_reasoning(self, usage: UsageInfo, parsers: list[ChatOutputParser | None], texts: list[str],
                        token_ids: list[Any]) -> UsageInfo:
        """``usage`` with vLLM's ``completion_tokens_details.reasoning_tokens`` when ``--reasoning-parser`` is on:
        the reasoning's tokens of every choice (:func:`token_split`); left out when they cannot be counted exactly
        (the reasoning tags are not single tokens of this tokenizer)."""
        if self.limits.tools.reasoning_parser is None:
            return usage
        total = 0
        for parser, text, ids in zip(parsers, texts, token_ids, strict=True):
            split = token_split(parser.reasoning, text, ids, self.reasoning_tags) \
                if parser is not None and parser.reasoning is not None else None
            if split is None:
                return usage
            total += split.reasoning_tokens
        usage.completion_tokens_details = CompletionTokenUsageInfo(reasoning_tokens=total)
        return usage

    @staticmethod
    def _message(parser: ChatOutputParser | None, plan: ToolPlan, echo: str, text: str,
                 reason: str | None, stop_reason: int | str | None = None) -> tuple[ChatMessageOut, str | None]:
        """One choice's message (reasoning and tool calls parsed out) and finish reason."""
        if parser is None:
            return ChatMessageOut(content=echo + text), reason
        m = parser.message(text, reason, stop_reason)
        content = echo + m.content if echo and m.content is not None else (echo or m.content)
        return (ChatMessageOut(content=content, reasoning=m.reasoning, reasoning_content=m.reasoning,
                               tool_calls=m.tool_calls),
                finish_reason(plan, bool(m.tool_calls) and m.calls_complete, reason))

    @staticmethod
    def _delta(parser: ChatOutputParser | None, plan: ToolPlan, text_so_far: str, new_text: str, reason: str | None,
               extras: bool, new_tokens: bool,
               stop_reason: int | str | None = None) -> tuple[dict[str, Any] | None, str | None]:
        """A stream chunk's delta and finish reason; None: no chunk for this step (``extras``: it carries
        logprobs or token ids anyway)."""
        if parser is not None:  # reasoning / tool calls: the parser decides what is new
            delta = parser.delta(text_so_far, reason is not None, reason, stop_reason)
            reason = finish_reason(plan, parser.tools_called, reason)
            return (delta if delta or extras or reason is not None else None), reason
        if not new_text and not extras and reason is None and not new_tokens:  # as vLLM: a token, a chunk
            return None, reason
        return ({"content": new_text} if new_text or reason is None else {}), reason

    @staticmethod
    def response_role(req: ChatCompletionRequest) -> str:
        """The answer's role (vLLM's ``get_chat_request_role``): ``assistant`` when the template adds the generation
        prompt, else the last message's role (the model continues that message, whoever wrote it)."""
        if req.add_generation_prompt or not req.messages:
            return "assistant"
        return req.messages[-1].role

    @classmethod
    def _echo_text(cls, req: ChatCompletionRequest) -> str:
        """vLLM's chat ``echo``: repeat the last message's content when its role is the answer's role
        (:meth:`response_role`)."""
        if not req.echo or not req.messages or req.messages[-1].role != cls.response_role(req):
            return ""
        content = req.messages[-1].content
        if isinstance(content, list):  # as the template got it (vLLM echoes the parsed content)
            return content_parts_text([p.model_dump(exclude_none=True) for p in content])
        return content or ""

    def _chunk_usage(self, prompt_tokens: int, parser: ChatOutputParser | None, text: str,
                     token_ids: Any) -> bytes | UsageInfo:
        """A choice's continuous usage so far (with its reasoning tokens under ``--reasoning-parser``)."""
        done = len(token_ids)
        if self.limits.tools.reasoning_parser is None:
            return usage_json(prompt_tokens, done)
        return self._with_reasoning(UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=done,
                                              total_tokens=prompt_tokens + done), [parser], [text], [token_ids])

    def _opening(self, req: ChatCompletionRequest, chunks: StreamChunks, n: int, prompt_ids: list[int] | None,
                 usage: Callable[[int], Any] | None) -> list[bytes]:
        """A stream's first events: each choice's role (:meth:`response_role`; the prompt's ids, when asked for, in
        each choice's role chunk, as vLLM's stream generator sends them with ``n`` > 1 too), then the echo (if any)
        in chunks of its own, as vLLM sends them."""
        out = [b"".join(chunks.event(_choice(i, {"role": self.response_role(req), "content": ""}),
                                     usage(i) if usage else None, prompt_ids)
                        for i in range(n))]
        echo = self._echo_text(req)
        if echo:
            out.append(b"".join(chunks.event(_choice(i, {"content": echo}), usage(i) if usage else None)
                                for i in range(n)))
        return out

    async def _stream(self, req: ChatCompletionRequest, model: str, request_id: str,
                      stream: RequestStream, plan: ToolPlan) -> AsyncIterator[str | bytes]:
        chunks = StreamChunks("chat.completion.chunk", request_id, self.now(), model)
        n = stream.n
        parsers = [output_parser(req, self.limits.tools, plan) for _ in range(n)]
        texts = [""] * n
        ids_so_far: list[Any] = [()] * n
        sent_tokens = [0] * n
        finished = [False] * n
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        continuous = bool(include_usage and req.stream_options and req.stream_options.continuous_usage_stats)
        num_logprobs = self.num_logprobs((req.top_logprobs or 0) if req.logprobs else None)
        as_ids = self.as_ids(req)
        want_ids = bool(req.return_token_ids)
        pt = len(stream.prompt_token_ids)
        cached_tokens = 0
        events: list[bytes] = []  # one write for all the choices of an output (n > 1)

        try:
            for opening in self._opening(req, chunks, n, list(stream.prompt_token_ids) if want_ids else None,
                                         (lambda i: self._chunk_usage(pt, parsers[i], "", ())) if continuous else None):
                yield opening
            async for out in stream:
                if out.error:
                    raise output_error(out)
                cached_tokens = out.num_cached_tokens
                deltas = stream.last_deltas
                for c in out.outputs:
                    i = c.index
                    if finished[i]:
                        continue
                    text = deltas[i] if i < len(deltas) else ""
                    lp = None
                    new_ids = c.token_ids[sent_tokens[i]:]
                    if num_logprobs is not None and new_ids:
                        lp = self.chat_logprobs(new_ids, (c.logprobs or [])[sent_tokens[i]:], num_logprobs, as_ids)
                    sent_tokens[i] = len(c.token_ids)
                    if c.finish_reason is not None:
                        finished[i] = True
                    texts[i] += text
                    ids_so_far[i] = c.token_ids
                    delta, reason = self._delta(parsers[i], plan, texts[i], text, c.finish_reason,
                                                lp is not None or bool(want_ids and new_ids), bool(new_ids),
                                                c.stop_reason)
                    if delta is None:
                        continue
                    choice = _choice(i, delta, lp, reason, c.stop_reason)
                    if want_ids:
                        choice["token_ids"] = new_ids
                    events.append(chunks.event(choice, self._chunk_usage(pt, parsers[i], texts[i], c.token_ids)
                                               if continuous else None))
                if events and not out.finished:  # the last output's events go out with the stream's end
                    yield events[0] if len(events) == 1 else b"".join(events)
                    events.clear()
            if include_usage:
                events.append(chunks.event(None, self._with_reasoning(self.usage(pt, sum(sent_tokens), cached_tokens),
                                                                      list(parsers), texts, ids_so_far)))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            if events:  # the choices encoded before the error
                yield b"".join(events)
                events.clear()
            yield sse_error(e)
        finally:
            stream.close()
        events.append(SSE_DONE_BYTES)
        yield StreamEnd(b"".join(events))


def _choice(index: int, delta: dict[str, Any], logprobs: ChatLogprobs | None = None, finish_reason: str | None = None,
            stop_reason: int | str | None = None) -> dict[str, Any]:
    """A stream chunk's choice as ``ChatStreamChoice`` serializes it (``token_ids`` added only when set)."""
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason,
            "stop_reason": stop_reason}
