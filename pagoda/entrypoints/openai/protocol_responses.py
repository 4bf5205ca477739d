"""Request and response models of ``POST /v1/responses`` (OpenAI's Responses API: text, function tools and
reasoning items).

What is honoured: ``model``, ``input`` (a string, or a list of messages whose content is a string or
``input_text`` / ``output_text`` parts, ``function_call`` / ``function_call_output`` items, and earlier
``reasoning`` items, which are not rendered),
``instructions``, ``max_output_tokens``, ``temperature``, ``top_p``, ``stream``, ``metadata`` and ``user``
(echoed back), and function ``tools`` with ``tool_choice`` and ``parallel_tool_calls``
(:mod:`pagoda.entrypoints.openai.responses_tools`). Every other field OpenAI defines is
accepted only at its neutral value (listed in :data:`NEUTRAL_VALUES`); any other value, and any
field OpenAI does not define, is a 400 naming it (:func:`unsupported_fields`).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Fields of OpenAI's request that pagoda does not implement, with the values that mean "not used"
# (the ones a client may send without asking for the feature). Anything else is refused.
NEUTRAL_VALUES: dict[str, tuple[Any, ...]] = {
    "previous_response_id": (None,),
    "conversation": (None,),
    "store": (None, False),  # nothing is stored: no retrieval by id
    "background": (None, False),
    "reasoning": (None,),
    "include": (None, []),
    "truncation": (None, "disabled"),
    "top_logprobs": (None, 0),
    "max_tool_calls": (None,),
    "prompt": (None,),
    "service_tier": (None, "auto", "default"),
    "stream_options": (None,),
    "prompt_cache_key": (None,),
    "safety_identifier": (None,),
}


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


InputItem = InputMessage | FunctionCallInput | FunctionCallOutputInput | ReasoningInput


class ResponsesRequest(BaseModel):
    """Unknown fields are kept (``extra="allow"``) so they can be refused by name, never dropped."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    input: str | list[InputItem]
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
    # not implemented: accepted at their neutral values only (NEUTRAL_VALUES)
    previous_response_id: str | None = None
    conversation: Any = None
    store: bool | None = None
    background: bool | None = None
    reasoning: Any = None
    include: list[Any] | None = None
    text: Any = None
    truncation: str | None = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None
    prompt: Any = None
    service_tier: str | None = None
    stream_options: Any = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None


def unsupported_fields(req: ResponsesRequest) -> list[str]:
    """Fields set to something pagoda does not do: unknown ones, then known ones off their neutral value."""
    out = sorted(req.model_extra or ())
    out += [k for k, ok in NEUTRAL_VALUES.items() if getattr(req, k) not in ok]
    return out


_TEXT_FORMAT_KEYS = {"text": {"type"}, "json_object": {"type"},
                     "json_schema": {"type", "name", "schema", "strict", "description"}}


def response_format(text: Any) -> dict[str, Any] | None:
    """``text.format`` as chat's ``response_format`` (OpenAI's Responses API flattens the json_schema one:
    ``{"type": "json_schema", "name", "schema", "strict", "description"}``); None for plain text. Another shape
    is a ``ValueError`` (a 400 naming ``text``)."""
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) and set(text) <= {"format", "verbosity"} else None
    if not isinstance(fmt, dict) or fmt.get("type") not in _TEXT_FORMAT_KEYS:
        raise ValueError(f"text must be {{\"format\": {{\"type\": \"text\" | \"json_object\" | \"json_schema\"}}}}"
                         f", got {text!r}.")
    kind = fmt["type"]
    extra = sorted(set(fmt) - _TEXT_FORMAT_KEYS[kind])
    if extra:
        raise ValueError(f"text.format of type {kind!r} takes {sorted(_TEXT_FORMAT_KEYS[kind])}, got unknown "
                         f"key(s) {extra}.")
    if isinstance(text, dict) and text.get("verbosity") not in (None, "medium"):
        raise ValueError(f"text.verbosity {text['verbosity']!r} is not supported (a model setting of OpenAI's).")
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
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseObject(BaseModel):
    """OpenAI's ``response`` object; the unimplemented features read as off (no storage)."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
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
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
