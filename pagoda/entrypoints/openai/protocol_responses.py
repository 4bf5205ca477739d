"""Request and response models of ``POST /v1/responses`` (OpenAI's Responses API: text, function tools and
reasoning items).

What is honoured: ``model``, ``input`` (a string, or a list of messages whose content is a string or
``input_text`` / ``output_text`` parts, ``function_call`` / ``function_call_output`` items, and earlier
``reasoning`` items, which are not rendered),
``instructions``, ``max_output_tokens``, ``temperature``, ``top_p``, ``stream``, ``metadata`` and ``user``
(echoed back), function ``tools`` with ``tool_choice`` and ``parallel_tool_calls``
(:mod:`pagoda.entrypoints.openai.responses_tools`), and vLLM's extra fields of this route (``seed``,
``top_k``, ``stop``, ``repetition_penalty``, ``ignore_eos``, ``skip_special_tokens``,
``include_stop_str_in_output``, ``logit_bias``, ``priority``, ``cache_salt``), as chat honours them, and
``include: ["message.output_text.logprobs"]`` with ``top_logprobs`` (:func:`wants_logprobs`), and with the
Responses store on ``store``, ``previous_response_id`` and ``background`` (:data:`STORE_FIELDS`). OpenAI's platform
hints (:data:`IGNORED_HINTS`) are accepted and logged as ignored, as on chat. Every other field OpenAI defines is
accepted only at its neutral value (listed in :data:`NEUTRAL_VALUES`); any other value, and any field OpenAI does
not define, is a 400 naming it (:func:`unsupported_fields`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator
from pydantic_core import PydanticCustomError

from pagoda.entrypoints.openai.protocol import SamplingFields
from pagoda.entrypoints.openai.request_fields import IGNORED, default_verbosity
from pagoda.errors import ValidationError

# Fields of OpenAI's request that pagoda does not implement, with the values that mean "not used"
# (the ones a client may send without asking for the feature). Anything else is refused.
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "conversation": (None,),
    "reasoning": (None,),
    "truncation": (None, "disabled"),
    "max_tool_calls": (None,),
    "prompt": (None,),
    "stream_options": (None, {}, {"include_obfuscation": False}),  # no obfuscation padding is sent
}

STORE_FIELDS: dict[str, tuple[Any, ...]] = {
    "store": (None, False),
    "previous_response_id": (None,),
    "background": (None, False),
}
"""The fields that need the Responses store (:mod:`..responses_store`), with the values that ask nothing of it:
any other value is refused while the store is off. With the store on, ``store`` absent means true (OpenAI's
default)."""

IGNORED_HINTS = ("service_tier", "safety_identifier", "prompt_cache_key", "prompt_cache_retention",
                 "prompt_cache_options")
"""OpenAI's platform hints that a Responses request may carry: accepted and logged as ignored, as chat does
(``request_fields.IGNORED`` says why each changes no output; ``check_ignored_values`` checks OpenAI's values)."""
assert set(IGNORED_HINTS) <= set(IGNORED)

LOGPROBS_INCLUDE = "message.output_text.logprobs"
"""The one ``include`` value pagoda serves: each output text's token logprobs (``top_logprobs`` alternatives)."""


def wants_logprobs(req: ResponsesRequest) -> bool:
    """Whether the answer carries logprobs (``include`` names them, as vLLM reads it). Another ``include`` value, or
    ``top_logprobs`` without the include (vLLM drops it), is a ``ValidationError`` (a 400) naming the field."""
    other = sorted(str(x) for x in req.include or () if x != LOGPROBS_INCLUDE)
    if other:
        raise ValidationError(f"include {other} is not supported by pagoda's /v1/responses (only "
                              f"{LOGPROBS_INCLUDE!r}: there are no hosted tools or encrypted reasoning).", "include")
    want = LOGPROBS_INCLUDE in (req.include or ())
    if req.top_logprobs and not want:
        raise ValidationError(f"top_logprobs needs include: [{LOGPROBS_INCLUDE!r}] (without it no logprobs are "
                              f"returned).", "top_logprobs")
    return want


class InputTextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None  # output_text parts of an earlier answer carry them (ignored: no text)
    logprobs: list[Any] | None = None


class InputMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputTextPart]
    id: str | None = None  # an earlier output item sent back as input
    status: str | None = None


class FunctionCallInput(BaseModel):
    """An earlier ``function_call`` output item sent back (the assistant's tool call)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputInput(BaseModel):
    """The result of a tool call (the chat template's ``role: tool`` message)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[InputTextPart]
    id: str | None = None
    status: str | None = None


class ReasoningInput(BaseModel):
    """An earlier ``reasoning`` output item sent back: accepted and not rendered (chat templates drop
    earlier turns' thinking too)."""

    model_config = ConfigDict(extra="allow")
    type: Literal["reasoning"]
    status: str | None = None


_PART_TYPES = ("input_text", "output_text")
"""Content part types an input message may hold (text; images, files and audio are refused by name)."""


def _item_type(item: Any) -> Any:
    """An input item's ``type`` (OpenAI's easy input message has none: a message)."""
    return item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", None)


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")] | Annotated[FunctionCallInput, Tag("function_call")]
    | Annotated[FunctionCallOutputInput, Tag("function_call_output")] | Annotated[ReasoningInput, Tag("reasoning")],
    Discriminator(_item_type)]
"""One input item, chosen by its ``type`` (so an error names the item's own field, not every union member)."""

_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")
"""The tags of :data:`InputItem` (any other ``type`` is refused by name before the union is tried)."""


def _without_nulls(value: Any) -> Any:
    """A JSON object without its null-valued keys (a null asks for nothing: an SDK object dumped whole sends its
    unset fields as nulls)."""
    return {k: v for k, v in value.items() if v is not None} if isinstance(value, dict) else value


def check_input_items(items: list[Any]) -> list[Any]:
    """Input items with their null-valued keys dropped; an item or content part of a kind pagoda does not read
    (``item_reference``, ``input_image``, ``input_file``, ...) is an error naming where it is and what is read."""
    out = []
    for i, item in enumerate(items):
        item = _without_nulls(item)
        kind = _item_type(item)
        if kind not in _ITEM_TYPES:
            raise PydanticCustomError("unsupported_input_item", "{msg}", {"msg": (
                f"item {i}: type {kind!r} is not supported by pagoda's /v1/responses (it reads "
                f"{', '.join(_ITEM_TYPES)}).")})
        for key in ("content", "output"):
            parts = item.get(key) if isinstance(item, dict) and kind != "reasoning" else None
            if not isinstance(parts, list):
                continue
            parts = [_without_nulls(p) for p in parts]
            for j, part in enumerate(parts):
                ptype = part.get("type") if isinstance(part, dict) else None
                if ptype not in _PART_TYPES:
                    raise PydanticCustomError("unsupported_content_part", "{msg}", {"msg": (
                        f"item {i}, {key}[{j}]: content part type {ptype!r} is not supported by pagoda's "
                        f"/v1/responses (text only: {', '.join(_PART_TYPES)}).")})
            item = {**item, key: parts}
        out.append(item)
    return out


class ResponsesRequest(BaseModel):
    """Unknown fields are kept (``extra="allow"``) so they can be refused by name, never dropped."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: Annotated[Annotated[str, Tag("text")] | Annotated[list[InputItem], Tag("items")],
                     Discriminator(lambda v: "text" if isinstance(v, str) else "items")]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stream: bool | None = False
    metadata: dict[str, str] | None = None
    user: str | None = None
    tools: list[Any] | None = None  # function tools in the Responses API's flat shape
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    # vLLM's extra fields of a Responses request (its ResponsesRequest), honoured as on chat
    seed: int | None = None
    top_k: int | None = None
    stop: str | list[str] | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    skip_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    logit_bias: dict[str, float] | None = None
    priority: int | None = None
    cache_salt: str | None = None
    # logprobs: include names LOGPROBS_INCLUDE, top_logprobs the alternatives per token (wants_logprobs)
    include: list[Any] | None = None
    top_logprobs: int | None = None
    # the store's (STORE_FIELDS): honoured with the store on, else accepted at their neutral values only
    previous_response_id: str | None = None
    store: bool | None = None
    background: bool | None = None
    # not implemented: accepted at their neutral values only (NEUTRAL_VALUES)
    conversation: Any = None
    reasoning: Any = None
    text: Any = None
    truncation: str | None = None
    max_tool_calls: int | None = None
    prompt: Any = None
    stream_options: Any = None

    @field_validator("cache_salt")
    @classmethod
    def _non_empty_cache_salt(cls, v: str | None) -> str | None:
        return SamplingFields._non_empty_cache_salt(v)  # chat's rule and words

    @field_validator("input", mode="before")
    @classmethod
    def _check_items(cls, v: Any) -> Any:
        return check_input_items(v) if isinstance(v, list) else v


def unsupported_fields(req: ResponsesRequest) -> list[str]:
    """Fields set to something pagoda does not do: unknown ones, then known ones off their neutral value."""
    out = sorted(k for k in req.model_extra or () if k not in IGNORED_HINTS)
    out += [k for k, ok in NEUTRAL_VALUES.items() if getattr(req, k) not in ok]
    return out


def ignored_hints(req: ResponsesRequest) -> dict[str, Any]:
    """The platform hints the request sets (:data:`IGNORED_HINTS`; a null asks for nothing)."""
    return {k: v for k, v in (req.model_extra or {}).items() if k in IGNORED_HINTS and v is not None}


_TEXT_FORMAT_KEYS = {"text": {"type"}, "json_object": {"type"},
                     "json_schema": {"type", "name", "schema", "strict", "description"}}


def response_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format`` (OpenAI's Responses API flattens the json_schema one:
    ``{"type": "json_schema", "name", "schema", "strict", "description"}``); None for plain text (also when
    ``format`` is absent or null, OpenAI's default). Another shape
    is a ``ValueError`` (a 400 naming ``text``)."""
    if text is None:
        return None
    fmt = None
    if isinstance(text, dict) and set(text) <= {"format", "verbosity"}:
        fmt = text.get("format") or {"type": "text"}
    if not isinstance(fmt, dict) or fmt.get("type") not in _TEXT_FORMAT_KEYS:
        raise ValueError(f"text must be {{\"format\": {{\"type\": \"text\" | \"json_object\" | \"json_schema\"}}}}"
                         f", got {text!r}.")
    kind = fmt["type"]
    extra = sorted(set(fmt) - _TEXT_FORMAT_KEYS[kind])
    if extra:
        raise ValueError(f"text.format of type {kind!r} takes {sorted(_TEXT_FORMAT_KEYS[kind])}, got unknown "
                         f"key(s) {extra}.")
    if isinstance(text, dict) and not default_verbosity(text.get("verbosity")):
        raise ValueError(f"text.verbosity {text['verbosity']!r} is not supported (a model setting of OpenAI's; "
                         f"only its default, medium).")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {k: v for k, v in fmt.items() if k != "type"}}


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"] = "assistant"
    content: list[OutputText] = Field(default_factory=list)


class FunctionCallItem(BaseModel):
    """A ``function_call`` output item (the model called a tool)."""

    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class ReasoningItem(BaseModel):
    """A ``reasoning`` output item: the thinking split out by ``--reasoning-parser``."""

    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[Any] = Field(default_factory=list)
    content: list[ReasoningText] = Field(default_factory=list)
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = ReasoningItem | OutputMessage | FunctionCallItem


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0


class OutputTokensDetails(BaseModel):
    """``reasoning_tokens``: the reasoning's tokens under ``--reasoning-parser`` (0 without one); null only when
    they cannot be counted exactly (the reasoning tags are not single tokens of this tokenizer)."""

    reasoning_tokens: int | None = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseObject(BaseModel):
    """OpenAI's ``response`` object; the unimplemented features read as off. ``queued`` and ``cancelled`` are a
    background response's (stored) states."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["queued", "in_progress", "completed", "incomplete", "failed", "cancelled"]
    background: bool = False
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, str] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] = Field(default_factory=lambda: {"effort": None, "summary": None})
    store: bool = False
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Any = "auto"
    tools: list[Any] = Field(default_factory=list)
    top_p: float | None = None
    truncation: str = "disabled"
    top_logprobs: int | None = None
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
