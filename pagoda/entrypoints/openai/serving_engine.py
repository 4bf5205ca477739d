"""What every endpoint's serving class shares: errors, model names, limits, sampling params,
prompt tokenization, logprob formatting, SSE helpers and stream merging.

Serving classes talk only to the engine client (:class:`pagoda.engine.async_llm.AsyncLLM`):
``add_request`` (admits; raises :class:`pagoda.errors.ValidationError`), the returned
``RequestStream``, and ``close()`` on it to abort. Errors become HTTP responses by their
type (:func:`to_serving_error`), never by their text.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi.responses import JSONResponse

from pagoda.engine import admission
from pagoda.engine.async_llm import (
    AsyncLLM,
    EngineDeadError,
    EngineNotReadyError,
    RequestAbortedError,
    RequestStream,
    final_output,  # noqa: F401 - re-exported for the serving classes
)
from pagoda.engine.detokenizer import decode_token
from pagoda.entrypoints.openai.protocol import (
    ChatLogprobs,
    ChatLogprobToken,
    ChatLogprobTop,
    CompletionLogprobs,
    ErrorInfo,
    ErrorResponse,
    PromptTokenUsageInfo,
    SamplingFields,
    UsageInfo,
)
from pagoda.entrypoints.openai.request_fields import check_request_fields
from pagoda.entrypoints.openai.structured_fields import structured_outputs_from_request
from pagoda.entrypoints.openai.tool_config import ToolServingConfig
from pagoda.errors import EngineInvariantError, ValidationError
from pagoda.lora.request import LoRARequest
from pagoda.outputs import Logprob, RequestOutput
from pagoda.reasoning.token_ids import ReasoningTokenIds, reasoning_token_ids
from pagoda.sampling_params import BeamSearchParams, RequestOutputKind, SamplingParams

if TYPE_CHECKING:
    from pagoda.entrypoints.openai.serving_models import ServingModels

logger = logging.getLogger("pagoda.server")

LOGPROB_FLOOR = -9999.0  # JSON has no -inf; vLLM reports this instead

STREAM_PROMPT_LOGPROBS = "`prompt_logprobs` are not available when `stream=True`."
"""vLLM's words for ``prompt_logprobs`` (> 0 or -1) asked of a streamed completion or chat completion."""


@dataclass
class ServerLimits:
    """Caps on what multiplies work; each violation is a 400 naming the cap."""

    max_prompts_per_request: int = 64
    max_request_body_bytes: int = 8 * 2**20
    trust_request_chat_template: bool = False
    chat_template_content_format: str = "auto"  # --chat-template-content-format (pagoda.engine.chat_content_format)
    enable_prompt_tokens_details: bool = False  # usage.prompt_tokens_details.cached_tokens
    return_tokens_as_token_ids: bool = False  # --return-tokens-as-token-ids: the requests' default
    tools: ToolServingConfig = field(default_factory=ToolServingConfig)  # tool-call and reasoning parsers


class ServingError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code


def error_body(status: int, message: str, type_: str | None = None, param: str | None = None,
               code: str | int | None = None) -> dict[str, Any]:
    if type_ is None:
        type_ = "invalid_request_error" if status < 500 else "server_error"
    # Messages may quote the request (a model name, a role); a lone surrogate from the JSON would
    # make rendering the error itself fail (and uvicorn then drops the connection).
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return ErrorResponse(error=ErrorInfo(message=message, type=type_, param=param, code=code)).model_dump()


def error_response(status: int, message: str, type_: str | None = None, param: str | None = None,
                   code: str | int | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, type_, param, code), status_code=status)


def to_serving_error(exc: BaseException) -> ServingError:
    """Map an exception raised while serving one request to the response it deserves, by its type."""
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, ValidationError):
        return ServingError(400, str(exc), "invalid_request_error", exc.parameter, exc.code)
    if isinstance(exc, ValueError):  # user input refused by a library (tokenizer, chat template)
        return ServingError(400, str(exc), "invalid_request_error")
    if isinstance(exc, EngineNotReadyError):
        return ServingError(503, str(exc), "service_unavailable", None, "model_loading")
    if isinstance(exc, EngineDeadError):
        return ServingError(503, str(exc), "service_unavailable", None, "engine_dead")
    if isinstance(exc, RequestAbortedError):
        return ServingError(500, str(exc), "server_error", None, "aborted")
    if not isinstance(exc, EngineInvariantError):
        logger.error("internal error while serving a request", exc_info=exc)
    return ServingError(500, f"Internal server error: {type(exc).__name__}: {exc}", "server_error", None,
                        "internal_error")


def output_error(out: RequestOutput) -> Exception:
    """The exception a failed engine output (``out.error``) raises while serving: a ValidationError naming the
    field when the request caused it (``error_param``, e.g. ``min_tokens`` against a grammar: a 400), else a
    RuntimeError (a 500)."""
    if out.error_param:
        return ValidationError(str(out.error), out.error_param)
    return RuntimeError(out.error)


@contextmanager
def request_field_names(names: Mapping[str, str]) -> Iterator[None]:
    """Name a refused field as the endpoint's request calls it (chat's ``top_logprobs`` is the
    engine's ``logprobs``; beam search's ``beam_width`` is the request's ``n``)."""
    try:
        yield
    except ValidationError as e:
        raise e.renamed(names) from None


def serving_error_response(exc: BaseException) -> JSONResponse:
    e = to_serving_error(exc)
    return error_response(e.status, e.message, e.type, e.param, e.code)


def sse(data: str) -> str:
    return f"data: {data}\n\n"


def sse_error(exc: BaseException) -> str:
    e = to_serving_error(exc)
    return sse(json.dumps(error_body(e.status, e.message, e.type, e.param, e.code)))


SSE_DONE = "data: [DONE]\n\n"


def absent_max_tokens(endpoint_default: int | None, generation_default: Any, room: int) -> int:
    """The ``max_tokens`` of a request that gave none, as vLLM's ``get_max_tokens`` (since vLLM PR #34063, the
    generation config's value is a default, not a ceiling): the endpoint's default (completions 16 when the field is
    absent: vLLM's ``CompletionRequest.max_tokens`` default, which the generation config does not lower), else the
    generation config's ``max_new_tokens`` (chat, and a completion's explicit ``null``), capped by the room left in
    the context (at least 1)."""
    fallback = endpoint_default if endpoint_default is not None else generation_default
    caps = [max(1, room)] + ([int(fallback)] if fallback is not None else [])
    return min(caps)


class OpenAIServing:
    def __init__(self, engine: AsyncLLM, models: ServingModels, limits: ServerLimits,
                 log_requests: bool = True, max_log_len: int | None = None) -> None:
        """``models``: the served names (base model and LoRA adapters), shared by every serving object."""
        self.engine = engine
        self.models = models
        self.limits = limits
        self.log_requests = log_requests
        self.max_log_len = max_log_len

    @property
    def tokenizer(self) -> Any:
        return self.engine.get_tokenizer()

    @property
    def reasoning_tags(self) -> ReasoningTokenIds | str | None:
        """``--reasoning-parser``'s tags as token ids of this tokenizer (or why not); None without a parser."""
        name = self.limits.tools.reasoning_parser
        if name is None:
            return None
        if getattr(self, "_reasoning_tags", None) is None:
            self._reasoning_tags = reasoning_token_ids(name, self.tokenizer)
        return self._reasoning_tags

    # ------------------------------------------------------------------ checks
    @property
    def served_model_names(self) -> list[str]:
        return self.models.base_names

    def resolve_model(self, requested: str | None) -> tuple[str, LoRARequest | None]:
        """The request's ``model``: the name its response reports and the LoRA adapter it runs with (None: the
        base model); an unknown name is vLLM's 404 (:meth:`ServingModels.resolve`)."""
        return self.models.resolve(requested)

    def model_name(self, requested: str | None, what: str = "pooling") -> str:
        """The request's ``model`` on a route that takes no LoRA adapter (``what``): an adapter's name is a 400."""
        return self.models.base_only(requested, what)

    @staticmethod
    def check_no_beam_lora(lora: LoRARequest | None) -> None:
        """Beam search runs the base model only: with an adapter, a 400 (never the base model silently)."""
        if lora is not None:
            raise ServingError(400, f"use_beam_search with the LoRA adapter `{lora.lora_name}` is not supported "
                               f"(beam search runs the base model only); sample instead, or name the base model.",
                               param="use_beam_search")

    def check_common(self, req: SamplingFields, endpoint: str) -> None:
        """Request-shape checks shared by completions and chat (the engine's admission comes later)."""
        if self.engine.cfg is not None and self.engine.cfg.runner == "pooling":
            from pagoda.pooling.inputs import GENERATIVE_ONLY

            raise ValidationError(GENERATIVE_ONLY, "model", code="wrong_runner")
        check_request_fields(req, endpoint)
        structured_outputs_from_request(req)  # a malformed or conflicting constraint is a 400 before any work
        if req.stream_options is not None and not req.stream:
            raise ServingError(400, "stream_options can only be set when stream is true.", param="stream_options")
        if req.stream and req.prompt_logprobs is not None and (req.prompt_logprobs > 0 or req.prompt_logprobs == -1):
            # a stream's chunks have no prompt_logprobs field: refused as vLLM does, never dropped
            raise ServingError(400, STREAM_PROMPT_LOGPROBS, param="prompt_logprobs")

    def usage(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> UsageInfo:
        """Usage; with --enable-prompt-tokens-details also the prompt tokens served from the prefix cache."""
        u = UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                      total_tokens=prompt_tokens + completion_tokens)
        if self.limits.enable_prompt_tokens_details:
            u.prompt_tokens_details = PromptTokenUsageInfo(cached_tokens=cached_tokens)
        return u

    # ----------------------------------------------------------- sampling params
    def sampling_params(self, req: SamplingFields, prompt_len: int, user_max_tokens: int | None,
                        max_tokens_given: bool, default_max_tokens: int | None, logprobs: int | None,
                        prompt_logprobs: int | None = None, *, stream: bool) -> SamplingParams:
        """Explicit request fields over the model's generation-config defaults (vLLM's semantics).

        A ``max_tokens`` the client gave is used as is (too large is a 400); an absent one
        is :func:`absent_max_tokens`. ``stream`` False: the engine hands over only the final output
        (``output_kind`` FINAL_ONLY, as vLLM's server asks for an unstreamed request), so the API process builds
        no output and wakes no consumer at each token of a request that only waits for its end.
        """
        fields = req.explicit_sampling_fields()
        if not stream:
            fields["output_kind"] = RequestOutputKind.FINAL_ONLY
        so, _ = structured_outputs_from_request(req)
        if so is not None:
            fields["structured_outputs"] = so
        if logprobs is not None:
            fields["logprobs"] = logprobs
        if prompt_logprobs is not None:
            fields["prompt_logprobs"] = prompt_logprobs
        defaults = dict(self.engine.input_processor.sampling_defaults)  # type: ignore[union-attr]
        if max_tokens_given and user_max_tokens is not None:
            fields["max_tokens"] = user_max_tokens
        else:
            fields["max_tokens"] = absent_max_tokens(default_max_tokens, defaults.get("max_tokens"),
                                                     self.engine.max_model_len - prompt_len)
        defaults.pop("max_tokens", None)
        return SamplingParams(**{**defaults, **fields})

    # ------------------------------------------------------------- beam search
    def beam_search_params(self, req: SamplingFields, prompt_len: int, user_max_tokens: int | None,
                           max_tokens_given: bool, default_max_tokens: int | None) -> BeamSearchParams:
        """vLLM's ``to_beam_search_params``: ``n`` beams, returned as ``n`` choices; ``max_tokens``
        defaults as for sampling. Temperature and top-p/k/min-p do not change beam search."""
        defaults = self.engine.input_processor.sampling_defaults  # type: ignore[union-attr]
        if max_tokens_given and user_max_tokens is not None:
            max_tokens = user_max_tokens
        else:
            max_tokens = absent_max_tokens(default_max_tokens, defaults.get("max_tokens"),
                                           self.engine.max_model_len - prompt_len)
        return BeamSearchParams(
            beam_width=req.n if req.n is not None else 1, max_tokens=max_tokens, ignore_eos=bool(req.ignore_eos),
            temperature=req.temperature if req.temperature is not None else 0.0,
            length_penalty=req.length_penalty if req.length_penalty is not None else 1.0,
            include_stop_str_in_output=bool(req.include_stop_str_in_output),
            early_stopping=req.early_stopping if req.early_stopping is not None else False,
        )

    def start_beam_search(self, request_id: str, prompt: dict[str, Any], params: BeamSearchParams,
                          req: SamplingFields, logprobs: int | None, prompt_logprobs: int | None = None) -> Any:
        """The engine's beam-search stream (shaped like a RequestStream: one final output)."""
        return self.engine.beam_search(request_id, prompt, params,
                                       skip_special_tokens=req.skip_special_tokens is not False, logprobs=logprobs,
                                       prompt_logprobs=prompt_logprobs)

    # --------------------------------------------------------------- prompts
    def encode(self, text: str, add_special_tokens: bool, param: str = "prompt") -> list[int]:
        """Tokenize text from a request. JSON can carry lone surrogates ("\\ud800"), which are not
        Unicode text: the tokenizer would fail with a TypeError (a 500), so they are a 400 here."""
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ServingError(400, f"{param} is not valid Unicode text: {e.reason} at position {e.start}.",
                               param=param) from None
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)

    def truncate(self, ids: list[int], truncate: int | None, side: str | None = None) -> list[int]:
        """vLLM's ``truncate_prompt_tokens`` (-1: the context length) and ``truncation_side``: "left"
        (the default) keeps the last ``truncate`` tokens, "right" the first."""
        if truncate is not None:
            limits = self.engine.input_processor.limits  # type: ignore[union-attr]
            if truncate == -1:
                truncate = limits.max_model_len
            admission.check_truncate_prompt_tokens(truncate, limits)
            ids = ids[:truncate] if side == "right" else ids[-truncate:]
        return list(ids)

    def num_logprobs(self, value: int | None) -> int | None:
        """A request's logprobs count with -1 (the whole vocabulary) resolved."""
        return admission.resolve_num_logprobs(value, self.engine.input_processor.limits)  # type: ignore[union-attr]

    def as_ids(self, req: SamplingFields) -> bool:
        """Tokens shown as ``token_id:N``: the request's return_tokens_as_token_ids or the server's
        --return-tokens-as-token-ids (either one, as vLLM)."""
        return bool(req.return_tokens_as_token_ids) or self.limits.return_tokens_as_token_ids

    def log_request(self, request_id: str, prompt: str | None, ids: list[int], params: SamplingParams) -> None:
        if not self.log_requests:
            return
        shown: Any = prompt
        if shown is not None and self.max_log_len is not None:
            shown = shown[: self.max_log_len]
        shown_ids = ids if self.max_log_len is None else ids[: self.max_log_len]
        logger.info("Received request %s: prompt: %r, prompt_token_ids: %s (%d tokens), params: %r",
                    request_id, shown, shown_ids, len(ids), params)

    @staticmethod
    def new_id(prefix: str, request_id: str | None = None) -> str:
        """The response's id: ``prefix-`` and the request's ``request_id`` (vLLM's), else a random one."""
        return f"{prefix}-{request_id or uuid.uuid4().hex}"

    @staticmethod
    def now() -> int:
        return int(time.time())

    # --------------------------------------------------------------- logprobs
    def token_str(self, token_id: int, lp: Logprob | None, as_ids: bool) -> str:
        if as_ids:
            return f"token_id:{token_id}"
        return self.token_text.text(token_id)

    @property
    def token_text(self) -> TokenText:
        tt = getattr(self, "_token_text", None)
        if tt is None:
            tt = self._token_text = TokenText(self.tokenizer)
        return tt

    def completion_logprobs(self, token_ids: list[int], logprobs: Sequence[dict[int, Logprob] | None], num: int,
                            offset: int, as_ids: bool) -> tuple[CompletionLogprobs, int]:
        """OpenAI's legacy completions format; returns it and the next text offset."""
        out = CompletionLogprobs()
        for tok, d in zip(token_ids, logprobs, strict=True):
            if d is None:  # first prompt token: nothing predicts it
                s = self.token_str(tok, None, as_ids)
                out.tokens.append(s)
                out.token_logprobs.append(None)
                out.top_logprobs.append(None)
            else:
                chosen = d.get(tok)
                s = self.token_str(tok, chosen, as_ids)
                out.tokens.append(s)
                out.token_logprobs.append(max(chosen.logprob, LOGPROB_FLOOR) if chosen else None)
                # vLLM's order: the chosen (or echoed) token first, then the top ones by rank, num + 1 at most
                top: dict[str, float] = {}
                for t, v in itertools.islice(d.items(), num + 1):
                    top[self.token_str(t, v, as_ids)] = max(v.logprob, LOGPROB_FLOOR)
                out.top_logprobs.append(top)
            out.text_offset.append(offset)
            offset += len(self.token_text.get(tok)[0].decode("utf-8", errors="replace"))
        return out, offset

    def chat_logprobs(self, token_ids: list[int], logprobs: list[dict[int, Logprob]], num: int,
                      as_ids: bool) -> ChatLogprobs:
        content = []
        for tok, d in zip(token_ids, logprobs, strict=True):
            chosen = d.get(tok)
            s = self.token_str(tok, chosen, as_ids)
            # vLLM's order: the chosen token first, then the top ones by rank, num at most
            tops = [ChatLogprobTop(token=self.token_str(t, v, as_ids), logprob=max(v.logprob, LOGPROB_FLOOR),
                                   bytes=self.token_text.bytes(t)) for t, v in itertools.islice(d.items(), num)]
            content.append(ChatLogprobToken(token=s, logprob=max(chosen.logprob, LOGPROB_FLOOR) if chosen else
                                            LOGPROB_FLOOR, bytes=self.token_text.bytes(tok), top_logprobs=tops))
        return ChatLogprobs(content=content)

    def prompt_logprobs_json(self, out: RequestOutput) -> list[dict[str, Any] | None] | None:
        """vLLM's ``prompt_logprobs`` field: per prompt position, token id -> {logprob, rank, decoded_token}."""
        if out.prompt_logprobs is None:
            return None
        res: list[dict[str, Any] | None] = []
        for d in out.prompt_logprobs:
            if d is None:
                res.append(None)
            else:
                res.append({str(t): {"logprob": max(v.logprob, LOGPROB_FLOOR), "rank": v.rank,
                                     "decoded_token": v.decoded_token} for t, v in d.items()})
        return res


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character map of byte-level BPE vocabularies (GPT-2 family)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


class TokenText:
    """The exact bytes of a single token, and the string OpenAI shows for it.

    A token that is not valid UTF-8 on its own (part of a multi-byte character) is shown as
    ``bytes:\\xNN...`` like OpenAI does, instead of a lossy U+FFFD, so distinct tokens keep
    distinct keys in ``top_logprobs``.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.byte_level = False
        try:
            decoder = json.loads(tokenizer.backend_tokenizer.to_str()).get("decoder") or {}
            self.byte_level = "ByteLevel" in json.dumps(decoder)
        except Exception:
            pass
        self.byte_decoder = {c: b for b, c in _bytes_to_unicode().items()}
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._cache: dict[int, tuple[bytes, str]] = {}

    def _compute(self, token_id: int) -> tuple[bytes, str]:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if piece is None:
            return b"", ""
        if token_id in self.special:
            data = piece.encode("utf-8")
        elif self.byte_level and all(c in self.byte_decoder for c in piece):
            data = bytes(self.byte_decoder[c] for c in piece)
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                data = bytes([int(piece[3:5], 16)])
            except ValueError:
                data = piece.encode("utf-8")
        elif not self.byte_level:
            data = piece.replace("\u2581", " ").encode("utf-8")
        else:
            data = decode_token(self.tokenizer, token_id).encode("utf-8")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = "bytes:" + "".join(f"\\x{b:02x}" for b in data)
        return data, text

    def get(self, token_id: int) -> tuple[bytes, str]:
        r = self._cache.get(token_id)
        if r is None:
            if len(self._cache) > 200_000:
                self._cache.clear()
            r = self._cache[token_id] = self._compute(token_id)
        return r

    def text(self, token_id: int) -> str:
        return self.get(token_id)[1]

    def bytes(self, token_id: int) -> list[int]:
        return list(self.get(token_id)[0])


async def close_streams(*streams: RequestStream) -> None:
    """Background task of a streaming response: abort whatever is still running.

    A coroutine on purpose: Starlette runs a plain-function background task in its thread
    pool, and ``close()`` must run on the event loop's thread (it sends on the engine's ZMQ
    socket, which is not thread-safe); it also kept up to 40 pool threads alive per burst.
    """
    for s in streams:
        s.close()


async def merge_streams(streams: list[RequestStream]) -> AsyncIterator[tuple[int, RequestOutput, list[str]]]:
    """Interleave several request streams: yields (stream index, output, its text deltas)."""
    if len(streams) == 1:
        s = streams[0]
        async for out in s:
            yield 0, out, s.last_deltas
        return
    queue: asyncio.Queue = asyncio.Queue()
    DONE = object()

    async def pump(i: int, s: RequestStream) -> None:
        try:
            async for out in s:
                queue.put_nowait((i, out, s.last_deltas))
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            queue.put_nowait((i, e, None))
        finally:
            queue.put_nowait((i, DONE, None))

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    try:
        remaining = len(streams)
        while remaining:
            i, item, deltas = await queue.get()
            if item is DONE:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield i, item, deltas
    finally:
        for t in tasks:
            t.cancel()
        for s in streams:
            s.close()
