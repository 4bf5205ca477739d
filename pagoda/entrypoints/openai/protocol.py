"""Request and response models of the OpenAI-compatible API (plus vLLM's extra fields).

Requests accept every OpenAI sampling field and vLLM's extras as top-level fields (what
the ``openai`` client's ``extra_body`` sends). Which fields are honoured, ignored (with a
log line) or refused (a 400 naming the field) is decided by the table in
:mod:`pagoda.entrypoints.openai.request_fields`. Range checks live in
:class:`pagoda.sampling_params.SamplingParams` and :mod:`pagoda.engine.admission` (one
source of truth); these models only check types and shapes.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from pagoda.entrypoints.openai.request_fields import logged_as_ignored
from pagoda.errors import ValidationError

logger = logging.getLogger("pagoda.server")


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")
    _unknown_is_error: ClassVar[bool] = False  # completions and chat: an unknown field is a 400 (request_fields)

    @model_validator(mode="after")
    def _log_unknown_fields(self) -> OpenAIBaseModel:
        ignored = logged_as_ignored(self.model_extra or {}, self._unknown_is_error)
        if ignored:
            logger.warning("The following fields were present in the request but ignored: %s", ignored)
        return self


class ResponseModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ----------------------------------------------------------------------------- errors
class ErrorInfo(ResponseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(ResponseModel):
    error: ErrorInfo


# ----------------------------------------------------------------------------- models
class ModelPermission(ResponseModel):
    """vLLM's (OpenAI's former) permission object: one per model card, with vLLM's values."""

    id: str = Field(default_factory=lambda: f"modelperm-{uuid.uuid4().hex}")
    object: Literal["model_permission"] = "model_permission"
    created: int = Field(default_factory=lambda: int(time.time()))
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(ResponseModel):
    """vLLM's card: OpenAI's model object plus ``root``, ``parent``, ``max_model_len`` and ``permission``."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "pagoda"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[ModelPermission] = Field(default_factory=lambda: [ModelPermission()])


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


# ----------------------------------------------------------------------------- shared
class StreamOptions(OpenAIBaseModel):
    """vLLM's: ``include_usage`` defaults to true once ``stream_options`` is sent (so ``{"continuous_usage_stats":
    true}`` alone gets usage); ``continuous_usage_stats`` only with it. An unknown key (a typo such as
    ``include_usag``) is a 400 naming ``stream_options``, as unknown top-level fields are; so is OpenAI's
    ``include_obfuscation: true`` (no chunk carries obfuscation padding)."""

    model_config = ConfigDict(extra="forbid")

    include_usage: bool | None = True
    continuous_usage_stats: bool | None = False
    include_obfuscation: bool | None = None

    @field_validator("include_obfuscation")
    @classmethod
    def _no_obfuscation(cls, v: bool | None) -> bool | None:
        if v:
            raise ValueError("include_obfuscation is not supported by pagoda: stream chunks carry no obfuscation "
                             "padding; omit it or send false.")
        return v


class PromptTokenUsageInfo(ResponseModel):
    cached_tokens: int | None = None


class CompletionTokenUsageInfo(ResponseModel):
    reasoning_tokens: int = 0


class UsageInfo(ResponseModel):
    """``completion_tokens_details`` is vLLM's with ``--reasoning-parser`` on chat (the tokens of the reasoning);
    left out of the JSON when unset, so every other usage reads as before."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokenUsageInfo | None = None  # with --enable-prompt-tokens-details
    completion_tokens_details: CompletionTokenUsageInfo | None = None

    @model_serializer(mode="wrap")
    def _without_unset_details(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        if self.completion_tokens_details is None:
            out.pop("completion_tokens_details", None)
        return out


class SamplingFields(OpenAIBaseModel):
    """Sampling fields shared by completions and chat (OpenAI's, then vLLM's extras)."""

    _unknown_is_error: ClassVar[bool] = True

    model: str | None = None
    n: int | None = 1
    best_of: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop_token_ids: list[int] | None = None
    min_tokens: int | None = None
    ignore_eos: bool | None = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    prompt_logprobs: int | None = None
    use_beam_search: bool | None = False
    length_penalty: float | None = 1.0  # beam search only (vLLM's field)
    early_stopping: bool | Literal["never"] | None = False  # beam search only (HF's meaning; vLLM V0's field)
    truncate_prompt_tokens: int | None = None
    truncation_side: Literal["left", "right"] | None = None  # with truncate_prompt_tokens; default "left"
    return_tokens_as_token_ids: bool | None = None  # or the server's --return-tokens-as-token-ids
    return_token_ids: bool | None = None  # choices carry prompt_token_ids / token_ids
    request_id: str | None = None  # the request's id (the response's id follows it), as vLLM
    # vLLM's prefix-cache salt: requests with different salts never share cached KV blocks.
    cache_salt: str | None = None
    allowed_token_ids: list[int] | None = None
    bad_words: list[str] | None = None
    logprob_token_ids: list[int] | None = None
    priority: int | None = 0  # non-zero needs --scheduling-policy priority
    # Structured outputs (pagoda.entrypoints.openai.structured_fields turns them into StructuredOutputsParams).
    response_format: dict[str, Any] | None = None
    structured_outputs: dict[str, Any] | None = None
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_decoding_backend: str | None = None

    @field_validator("cache_salt")
    @classmethod
    def _non_empty_cache_salt(cls, v: str | None) -> str | None:
        if v is not None and not v:
            raise ValueError("cache_salt must be a non-empty string if provided.")
        return v

    def explicit_sampling_fields(self) -> dict[str, Any]:
        """SamplingParams fields the client set (to a non-null value)."""
        names = (
            "n", "temperature", "top_p", "presence_penalty", "frequency_penalty", "seed", "stop", "top_k",
            "min_p", "repetition_penalty", "stop_token_ids", "min_tokens", "ignore_eos",
            "include_stop_str_in_output", "skip_special_tokens", "spaces_between_special_tokens",
            "prompt_logprobs", "allowed_token_ids", "bad_words", "logprob_token_ids",
        )
        out = {k: getattr(self, k) for k in names if k in self.model_fields_set and getattr(self, k) is not None}
        if self.logit_bias:
            bias: dict[int, float] = {}
            invalid = []
            for k, v in self.logit_bias.items():
                try:
                    bias[int(k)] = v
                except ValueError:
                    invalid.append(k)
            if invalid:  # every bad key named, in vLLM's words
                raise ValidationError(f"logit_bias contains key(s) that cannot be converted to integer token IDs: "
                                      f"{invalid!r}", "logit_bias", value=invalid)
            out["logit_bias"] = bias
        return out

    @field_validator("request_id")
    @classmethod
    def _non_empty_request_id(cls, v: str | None) -> str | None:
        if v is not None and not v:
            raise ValueError("request_id must be a non-empty string if provided.")
        return v


# ------------------------------------------------------------------------ completions
class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    echo: bool | None = False
    logprobs: int | None = None
    suffix: str | None = None
    add_special_tokens: bool | None = True


    @model_validator(mode="after")
    def _logprob_token_ids_ask_for_logprobs(self) -> CompletionRequest:
        """vLLM: logprob_token_ids alone reports logprobs for those ids (``logprobs`` = their count)."""
        if self.logprob_token_ids and self.logprobs is None:
            self.logprobs = len(self.logprob_token_ids)
        return self


class CompletionLogprobs(ResponseModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class CompletionChoice(ResponseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_logprobs: list[dict[str, Any] | None] | None = None
    prompt_token_ids: list[int] | None = None  # with return_token_ids (the keys are always there, as vLLM)
    token_ids: list[int] | None = None


class CompletionResponse(ResponseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None


class CompletionStreamChoice(ResponseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_token_ids: list[int] | None = None  # with return_token_ids: in the choice's first chunk only
    token_ids: list[int] | None = None  # with return_token_ids: this chunk's new tokens


class CompletionStreamResponse(ResponseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionStreamChoice]
    usage: UsageInfo | None = None


# ------------------------------------------------------------------------------- chat
class ContentPart(OpenAIBaseModel):
    """A content part: ``text`` (its ``text``) or ``refusal`` (its ``refusal``, vLLM reads it as text); a missing
    text or another type is a 400 when the messages are rendered (``engine.tokenizer.content_parts_text``)."""

    type: str
    text: str | None = None
    refusal: str | None = None


class ChatMessageIn(OpenAIBaseModel):
    """One message. Any non-empty role string passes (vLLM's custom roles): the chat template decides, and
    a template that raises on a role it does not know is a 400. Extras (tool_call_id, …) reach the template."""

    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _log_unknown_fields(self) -> ChatMessageIn:
        if not self.role:
            raise ValueError("role must be a non-empty string.")
        return self


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessageIn]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = False
    top_logprobs: int | None = None
    tools: list[dict[str, Any]] | None = None  # checked by tool_calling.check_tools (400s name the field)
    tool_choice: str | dict[str, Any] | None = None  # none, auto, required or a named function
    parallel_tool_calls: bool | None = None  # false: at most one tool call
    include_reasoning: bool | None = None  # false: drop the reasoning (needs --reasoning-parser)
    # vLLM extras
    echo: bool | None = False
    add_generation_prompt: bool | None = True
    continue_final_message: bool | None = False
    add_special_tokens: bool | None = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None


    @model_validator(mode="after")
    def _logprob_token_ids_ask_for_logprobs(self) -> ChatCompletionRequest:
        """logprob_token_ids reports logprobs for those ids (``top_logprobs`` = their count)."""
        if self.logprob_token_ids:
            if self.top_logprobs is None:
                self.top_logprobs = len(self.logprob_token_ids)
            if not self.logprobs:
                self.logprobs = True
        return self


class ChatLogprobTop(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprobToken(ResponseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[ChatLogprobTop] = Field(default_factory=list)


class ChatLogprobs(ResponseModel):
    content: list[ChatLogprobToken] | None = None


class ChatMessageOut(ResponseModel):
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    reasoning: str | None = None  # with --reasoning-parser (current vLLM's name)
    reasoning_content: str | None = None  # the same text under older vLLM's name, for clients that read it


class ChatChoice(ResponseModel):
    index: int
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None  # with return_token_ids (the key is always there, as vLLM)


class ChatCompletionResponse(ResponseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    system_fingerprint: str | None = None
    prompt_logprobs: list[dict[str, Any] | None] | None = None
    prompt_token_ids: list[int] | None = None  # with return_token_ids (the key is always there, as vLLM)


class ChatStreamChoice(ResponseModel):
    index: int
    delta: dict[str, Any]  # {"role": …} first, then any of content / reasoning / tool_calls; {} on a bare finish
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None  # with return_token_ids: this chunk's new tokens


class ChatCompletionStreamResponse(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None
    prompt_token_ids: list[int] | None = None  # with return_token_ids: in each choice's role chunk


OPTIONAL_STREAM_KEYS = ("prompt_token_ids", "token_ids")
"""Keys a stream chunk carries only when set (vLLM sends chunks without unset fields)."""


def stream_chunk_json(chunk: CompletionStreamResponse | ChatCompletionStreamResponse) -> str:
    """A stream chunk as JSON, without the ``return_token_ids`` keys where they are null."""
    exclude: dict[Any, Any] = {}
    per_choice = {i: {k for k in OPTIONAL_STREAM_KEYS if getattr(c, k, 0) is None}
                  for i, c in enumerate(chunk.choices)}
    per_choice = {i: keys for i, keys in per_choice.items() if keys}
    if per_choice:
        exclude["choices"] = per_choice
    if getattr(chunk, "prompt_token_ids", 0) is None:
        exclude["prompt_token_ids"] = True
    return chunk.model_dump_json(exclude=exclude or None)


# --------------------------------------------------------------------------- tokenize
class TokenizeCompletionRequest(OpenAIBaseModel):
    _unknown_is_error: ClassVar[bool] = True  # a field these routes do not read is a 400, not ignored
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class TokenizeChatRequest(OpenAIBaseModel):
    _unknown_is_error: ClassVar[bool] = True  # a field these routes do not read is a 400, not ignored
    model: str | None = None
    messages: list[ChatMessageIn]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool | None = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None  # shown to the chat template, as in a chat request


class TokenizeResponse(ResponseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(OpenAIBaseModel):
    _unknown_is_error: ClassVar[bool] = True  # a field these routes do not read is a 400, not ignored
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(ResponseModel):
    prompt: str


class LoadLoRAAdapterRequest(BaseModel):
    """vLLM's body of ``POST /v1/load_lora_adapter``; any other field is a 400. ``load_inplace``: replace the adapter
    served under ``lora_name`` (it gets a new ``lora_int_id``)."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(BaseModel):
    """vLLM's body of ``POST /v1/unload_lora_adapter``; ``lora_int_id``, if given, must be the adapter's."""

    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_int_id: int | None = None


class VersionResponse(ResponseModel):
    version: str
