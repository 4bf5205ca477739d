"""POST /v1/completions: prompts as a string, strings, token ids or lists of token ids."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import msgspec
from fastapi.responses import JSONResponse
from starlette.background import BackgroundTask

from pagoda.engine.async_llm import RequestStream
from pagoda.entrypoints.openai.protocol import (
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
    CompletionResponse,
)
from pagoda.entrypoints.openai.serving_engine import (
    OpenAIServing,
    ServingError,
    close_streams,
    final_output,
    merge_streams,
    output_error,
    request_field_names,
    sse_error,
)
from pagoda.entrypoints.openai.stream_chunks import SSE_DONE_BYTES, SSEResponse, StreamChunks, StreamEnd, usage_json
from pagoda.entrypoints.openai.structured_fields import structured_source
from pagoda.outputs import CompletionOutput, RequestOutput
from pagoda.sampling_params import SamplingParams

EMPTY_PROMPT = "Either prompt or prompt_embeds must be provided and non-empty."
"""vLLM's words for an empty prompt."""


@dataclass
class _Prompt:
    text: str | None
    ids: list[int]


def _max_tokens(req: CompletionRequest) -> tuple[int | None, bool, int | None]:
    """(the engine's max_tokens, whether the request gave it, the default otherwise), as vLLM: absent, 16 (less only
    if the room left in the context is less: the generation config's max_new_tokens does not lower it, as in vLLM
    since PR #34063); ``null``, the generation config's max_new_tokens, else the room left in the context (the
    lesser); 0 with ``echo``, the prompt alone (:func:`echo_only`: the engine draws one token that no choice
    shows)."""
    given = "max_tokens" in req.model_fields_set
    if echo_only(req):
        return 1, True, None
    return req.max_tokens, given, None if given and req.max_tokens is None else 16


def echo_only(req: CompletionRequest) -> bool:
    """``echo`` with ``max_tokens: 0`` (OpenAI's and vLLM's way to score a text): the choices hold the prompt and,
    with ``logprobs``, its logprobs; nothing generated is shown or counted in ``usage.completion_tokens``."""
    return bool(req.echo) and req.max_tokens == 0


def _shown(c: CompletionOutput) -> CompletionOutput:
    """What an :func:`echo_only` choice shows of the engine's output: no token, and once it ends ``length``."""
    return replace(c, text="", token_ids=[], cumulative_logprob=None, logprobs=None if c.logprobs is None else [],
                   finish_reason=None if c.finish_reason is None else "length", stop_reason=None)


def _view(c: CompletionOutput, deltas: list[str], hide: bool) -> tuple[CompletionOutput, str]:
    """A streamed choice and its new text as the client sees them (``hide``: :func:`echo_only`'s view)."""
    if hide:
        return _shown(c), ""
    return c, deltas[c.index] if c.index < len(deltas) else ""


def _whole_text_constrained(params: SamplingParams) -> SamplingParams:
    """A constrained completion holds the constraint from its first token, even with ``--reasoning-parser``: this
    endpoint never splits the reasoning off (as vLLM's), so the text is the answer. Left to the engine's rule (the
    grammar starts after the end tag), the thinking would stay in the text before the JSON, and a model that never
    closes it would be unconstrained: ``finish_reason`` stop on text that is not what was asked for."""
    so = params.structured_outputs
    if so is None or so._enable_in_reasoning:
        return params
    return params.clone(structured_outputs=msgspec.structs.replace(so, _enable_in_reasoning=True))


class OpenAIServingCompletion(OpenAIServing):
    def _prompts(self, req: CompletionRequest) -> list[_Prompt]:
        p: Any = req.prompt
        if isinstance(p, str):
            items: list[Any] = [p]
        elif isinstance(p, list) and p and all(isinstance(t, int) for t in p):
            items = [p]
        else:
            items = list(p)
        if not items or p == "":
            raise ServingError(400, EMPTY_PROMPT, param="prompt")
        cap = self.limits.max_prompts_per_request
        if len(items) > cap:
            raise ServingError(400, f"prompt may hold at most {cap} prompts per request "
                               f"(--max-prompts-per-request), got {len(items)}.", param="prompt")
        out = []
        for item in items:
            if isinstance(item, str):
                ids = self.encode(item, bool(req.add_special_tokens))
                kept = self.truncate(ids, req.truncate_prompt_tokens, req.truncation_side)
                # A prompt cut by truncate_prompt_tokens is echoed as the model saw it: its kept tokens decoded
                # (text None: :meth:`_prompt_text` decodes them, as for a prompt of token ids), so the echoed text,
                # its logprobs' tokens and text offsets all describe the same tokens. vLLM echoes the whole text
                # it was given there, tokens the model never saw before the ones the logprobs describe.
                out.append(_Prompt(item if len(kept) == len(ids) else None, kept))
            else:
                out.append(_Prompt(None, self.truncate(list(item), req.truncate_prompt_tokens,
                                                       req.truncation_side)))
        return out

    async def create_completion(self, req: CompletionRequest) -> Any:
        with request_field_names({"beam_width": "n", "structured_outputs": structured_source(req)}):
            return await self._create(req)

    async def _create(self, req: CompletionRequest) -> Any:
        model, lora = self.resolve_model(req.model)
        self.check_common(req, "completions")
        if req.use_beam_search:
            self.check_no_beam_lora(lora)
        if req.logprobs is not None and req.logprobs < 0:  # vLLM's server: -1 only for prompt_logprobs here
            raise ServingError(400, "`logprobs` must be a positive value.", param="logprobs")
        prompts = self._prompts(req)
        request_id = self.new_id("cmpl", req.request_id)
        streams: list[RequestStream] = []
        # echo with logprobs reports the prompt tokens' logprobs too, as vLLM: ``logprobs`` of them unless the request
        # gave ``prompt_logprobs`` (then that, as given: the response's prompt_logprobs hold what was asked, and an
        # invalid value is refused by SamplingParams, never replaced).
        prompt_lp = req.prompt_logprobs
        if prompt_lp is None and req.echo:
            prompt_lp = req.logprobs
        max_tokens, given, default_max = _max_tokens(req)
        try:
            for i, p in enumerate(prompts):
                rid = f"{request_id}-{i}"
                if req.use_beam_search:  # one final output with n beams; a stream gets it in one burst
                    bparams = self.beam_search_params(req, len(p.ids), max_tokens, given, default_max)
                    self.log_request(rid, p.text, p.ids, bparams)  # type: ignore[arg-type]
                    prompt = {"prompt": p.text, "prompt_token_ids": p.ids, "cache_salt": req.cache_salt}
                    streams.append(self.start_beam_search(rid, prompt, bparams, req, req.logprobs, prompt_lp))
                    continue
                params = self.sampling_params(req, len(p.ids), max_tokens, given, default_max, req.logprobs,
                                              prompt_lp, stream=bool(req.stream))
                params = _whole_text_constrained(params)
                self.log_request(rid, p.text, p.ids, params)
                streams.append(self.engine.add_request(
                    rid, {"prompt": p.text, "prompt_token_ids": p.ids, "cache_salt": req.cache_salt}, params,
                    priority=req.priority or 0, lora_request=lora))
        except BaseException:
            for s in streams:
                s.close()
            raise
        n = streams[0].n
        if req.stream:
            return SSEResponse(
                self._stream(req, model, request_id, prompts, streams, n),
                media_type="text/event-stream",
                background=BackgroundTask(close_streams, *streams),
            )
        try:
            finals = await asyncio.gather(*[final_output(s) for s in streams])
        finally:
            _close_all(streams)
        return JSONResponse(self._response(req, model, request_id, prompts, finals).model_dump())

    # ------------------------------------------------------------------ full
    def _prompt_text(self, p: _Prompt) -> str:
        if p.text is None:
            p.text = self.tokenizer.decode(p.ids, skip_special_tokens=False)
        return p.text

    def _response(self, req: CompletionRequest, model: str, request_id: str, prompts: list[_Prompt],
                  finals: list[RequestOutput]) -> CompletionResponse:
        choices = []
        prompt_tokens = completion_tokens = 0
        as_ids = self.as_ids(req)
        hide = echo_only(req)
        for pi, (p, out) in enumerate(zip(prompts, finals, strict=True)):
            if out.error:
                raise output_error(out)
            prompt_tokens += len(out.prompt_token_ids)
            for c in out.outputs:
                if hide:
                    c = _shown(c)
                completion_tokens += len(c.token_ids)
                text = c.text
                logprobs = None
                if req.echo:
                    text = self._prompt_text(p) + text
                if req.logprobs is not None:
                    logprobs = CompletionLogprobs()
                    offset = 0
                    if req.echo and out.prompt_logprobs is not None:
                        logprobs, offset = self.completion_logprobs(
                            out.prompt_token_ids, out.prompt_logprobs, req.logprobs, 0, as_ids)
                    gen, _ = self.completion_logprobs(c.token_ids, c.logprobs or [], req.logprobs, offset, as_ids)
                    for f in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                        getattr(logprobs, f).extend(getattr(gen, f))
                choices.append(CompletionChoice(
                    index=pi * len(out.outputs) + c.index, text=text, logprobs=logprobs,
                    finish_reason=c.finish_reason, stop_reason=c.stop_reason,
                    prompt_logprobs=self.prompt_logprobs_json(out) if req.prompt_logprobs is not None else None,
                    prompt_token_ids=list(out.prompt_token_ids) if req.return_token_ids else None,
                    token_ids=list(c.token_ids) if req.return_token_ids else None,
                ))
        return CompletionResponse(
            id=request_id, created=self.now(), model=model, choices=choices,
            usage=self.usage(prompt_tokens, completion_tokens, sum(out.num_cached_tokens for out in finals)),
        )

    # ------------------------------------------------------------- streaming
    async def _stream(self, req: CompletionRequest, model: str, request_id: str, prompts: list[_Prompt],
                      streams: list[RequestStream], n: int) -> AsyncIterator[str | bytes]:
        st = _StreamState(self, req, StreamChunks("text_completion", request_id, self.now(), model), prompts, n)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        encode, events = st.encode, st.events  # events: one write for all the choices of an output (n > 1)
        try:
            if len(streams) == 1:  # the stream itself, without merge_streams' generator in between
                s = streams[0]
                async for out in s:
                    encode(0, out, s.last_deltas)
                    if events and not out.finished:  # the last output's events go out with the stream's end
                        yield events[0] if len(events) == 1 else b"".join(events)
                        events.clear()
            else:
                live = len(streams)  # prompts whose last output has not come
                async for pi, out, deltas in merge_streams(streams):
                    if out.finished:
                        live -= 1
                    encode(pi, out, deltas)
                    if events and live:
                        yield b"".join(events)
                        events.clear()
            if include_usage:
                pt = sum(len(s.prompt_token_ids) for s in streams)
                events.append(st.chunks.event(None, self.usage(pt, sum(st.sent_tokens), sum(st.cached_tokens))))
        except asyncio.CancelledError:
            raise
        except Exception as e:  # after the stream started, errors travel as an event
            if events:  # the choices encoded before the error
                yield b"".join(events)
                events.clear()
            yield sse_error(e)
        finally:
            _close_all(streams)
        events.append(SSE_DONE_BYTES)
        yield StreamEnd(b"".join(events))

    def _echo_and_logprobs(self, req: CompletionRequest, prompt: _Prompt, out: RequestOutput, c: CompletionOutput,
                           idx: int, text: str, sent_tokens: list[int], echoed: list[bool], text_offset: list[int],
                           as_ids: bool) -> tuple[str, CompletionLogprobs | None]:
        """Choice ``idx``'s new text with the prompt before it the first time (``echo``), and its logprobs."""
        echo_prompt = bool(req.echo) and not echoed[idx]
        if echo_prompt:
            echoed[idx] = True
            text = self._prompt_text(prompt) + text
        logprobs, text_offset[idx] = self._delta_logprobs(
            req, out, c, sent_tokens[idx], echo_prompt, text_offset[idx], as_ids)
        return text, logprobs

    def _delta_logprobs(self, req: CompletionRequest, out: RequestOutput, c: CompletionOutput, start: int,
                        echo_prompt: bool, offset: int, as_ids: bool) -> tuple[CompletionLogprobs | None, int]:
        """Logprobs of choice ``c``'s tokens from ``start`` on (after the prompt's when ``echo_prompt``),
        and the text offset after them; None when the request asks for none or there is nothing new."""
        if req.logprobs is None:
            return None, offset
        logprobs = None
        if echo_prompt and out.prompt_logprobs is not None:
            logprobs, offset = self.completion_logprobs(
                out.prompt_token_ids, out.prompt_logprobs, req.logprobs, 0, as_ids)
        new_ids = c.token_ids[start:]
        if new_ids:
            gen, offset = self.completion_logprobs(new_ids, (c.logprobs or [])[start:], req.logprobs, offset, as_ids)
            if logprobs is None:
                logprobs = gen
            else:
                for f in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
                    getattr(logprobs, f).extend(getattr(gen, f))
        return logprobs, offset


class _StreamState:
    """What a streamed completion has sent of each choice, and the events of its outputs (:meth:`encode`)."""

    def __init__(self, serving: OpenAIServingCompletion, req: CompletionRequest, chunks: StreamChunks,
                 prompts: list[_Prompt], n: int) -> None:
        self.serving, self.req, self.chunks, self.prompts, self.n = serving, req, chunks, prompts, n
        num_choices = len(prompts) * n
        self.sent_tokens = [0] * num_choices
        self.text_offset = [0] * num_choices
        self.echoed = [False] * num_choices
        self.finished = [False] * num_choices
        self.started = [False] * num_choices  # a chunk of the choice was sent (the first carries prompt_token_ids)
        self.cached_tokens = [0] * len(prompts)
        opts = req.stream_options
        self.continuous = bool(opts and opts.include_usage and opts.continuous_usage_stats)
        self.as_ids = serving.as_ids(req)
        self.want_ids = bool(req.return_token_ids)
        self.echo, self.want_logprobs, self.hide = bool(req.echo), req.logprobs is not None, echo_only(req)
        self.events: list[bytes] = []

    def encode(self, pi: int, out: RequestOutput, deltas: list[str]) -> None:
        """Append the events of prompt ``pi``'s output ``out`` to ``events``."""
        if out.error:
            raise output_error(out)
        self.cached_tokens[pi] = out.num_cached_tokens
        finished, sent_tokens, started = self.finished, self.sent_tokens, self.started
        for c in out.outputs:
            idx = pi * self.n + c.index
            if finished[idx]:
                continue
            c, text = _view(c, deltas, self.hide)
            logprobs = None
            if self.echo or self.want_logprobs:
                text, logprobs = self.serving._echo_and_logprobs(
                    self.req, self.prompts[pi], out, c, idx, text, sent_tokens, self.echoed, self.text_offset,
                    self.as_ids)
            start = sent_tokens[idx]
            num_tokens = sent_tokens[idx] = len(c.token_ids)
            if c.finish_reason is not None:
                finished[idx] = True
            elif not text and logprobs is None and num_tokens == start:
                continue  # no new token (as vLLM: every new token gets a chunk, even with its text held back)
            choice = {"index": idx, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason,
                      "stop_reason": c.stop_reason}
            if self.want_ids:
                if not started[idx]:
                    choice["prompt_token_ids"] = list(out.prompt_token_ids)
                choice["token_ids"] = c.token_ids[start:]
            started[idx] = True
            self.events.append(self.chunks.event(choice, usage_json(len(out.prompt_token_ids), num_tokens)
                                                 if self.continuous else None))


def _close_all(streams: list[RequestStream]) -> None:
    for s in streams:
        s.close()
