"""Function tools and reasoning on ``POST /v1/responses``, on chat's machinery (:mod:`.tool_calling`,
:mod:`.chat_output`).

The Responses API's function tool is flat (``{"type": "function", "name", "description", "parameters",
"strict"}``) and its named ``tool_choice`` is ``{"type": "function", "name"}``; both are turned into chat's
nested shape, so ``required`` / named choices are constrained to the schema and ``auto`` uses the server's
``--tool-call-parser`` exactly as on /v1/chat/completions. Input ``function_call`` items become an assistant
message with ``tool_calls`` and ``function_call_output`` items a ``role: tool`` message, so they round-trip
through the chat template. Each call the model makes is a ``function_call`` output item; a stream sends
OpenAI's ``response.output_item.added``, ``response.function_call_arguments.delta``…,
``response.function_call_arguments.done`` and ``response.output_item.done`` for it. Hosted tool types
(``web_search``, ``file_search``, …) are a 400 naming ``tools``. With ``--reasoning-parser`` the thinking is a
``reasoning`` output item (its text in ``content[0]``, ``reasoning_text``; streamed as
``response.reasoning_text.delta``… and ``response.reasoning_text.done``), before the answer's items.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pagoda.entrypoints.openai.chat_output import ChatOutputParser, ParsedMessage
from pagoda.entrypoints.openai.protocol import ChatMessageIn, ContentPart
from pagoda.entrypoints.openai.protocol_responses import (
    FunctionCallInput,
    FunctionCallItem,
    FunctionCallOutputInput,
    InputItem,
    InputMessage,
    InputTextPart,
    OutputItem,
    OutputMessage,
    OutputText,
    ReasoningInput,
    ReasoningItem,
    ReasoningText,
)
from pagoda.entrypoints.openai.serving_engine import ServingError

Status = Literal["completed", "incomplete"]


_FUNCTION_TOOL_KEYS = frozenset({"type", "name", "description", "parameters", "strict"})
"""The keys of a Responses API function tool; any other is a 400 (never silently dropped)."""


def _bad(message: str, param: str = "tools") -> ServingError:
    return ServingError(400, message, param=param)


def chat_tools(tools: list[Any] | None) -> list[dict[str, Any]] | None:
    """Responses function tools → chat's ``{"type": "function", "function": {...}}`` (None when there are none)."""
    if not tools:
        return None
    out = []
    for i, t in enumerate(tools):
        kind = t.get("type") if isinstance(t, dict) else None
        if kind != "function":
            raise _bad(f"tools[{i}]: type {kind!r} is not supported by pagoda's /v1/responses; only 'function' "
                       f"tools are (hosted tools such as web_search or file_search are not).")
        if "function" in t:
            raise _bad(f"tools[{i}]: a Responses API function tool is flat ({{\"type\": \"function\", \"name\": "
                       f"..., \"parameters\": ...}}), not chat's nested 'function' object.")
        unknown = sorted(set(t) - _FUNCTION_TOOL_KEYS)
        if unknown:
            raise _bad(f"tools[{i}].{unknown[0]}: unknown key of a function tool (known: "
                       f"{', '.join(sorted(_FUNCTION_TOOL_KEYS))}).")
        if t.get("strict") is not None and not isinstance(t["strict"], bool):  # named in this flat shape here
            raise _bad(f"tools[{i}].strict must be a boolean, got {t['strict']!r}.")
        fn = {k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None}
        out.append({"type": "function", "function": fn})
    return out


def chat_tool_choice(choice: Any, has_tools: bool) -> Any:
    """Responses ``tool_choice`` → chat's (``none`` / ``auto`` / ``required`` / a named function)."""
    if choice is None or (not has_tools and choice in ("auto", "none")):
        return None
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and set(choice) <= {"type", "name"}:
        if not isinstance(choice.get("name"), str):
            raise _bad("tool_choice {\"type\": \"function\"} needs the function's 'name'.", "tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad(f"tool_choice {choice!r} is not supported: use 'none', 'auto', 'required' or "
               f"{{\"type\": \"function\", \"name\": ...}}.", "tool_choice")


def _content(content: str | list[InputTextPart]) -> str | list[ContentPart]:
    """Input content as chat's: a string, or its text parts as chat's ``text`` parts (so they are joined, or
    handed to the template, by chat's rule: ``--chat-template-content-format``)."""
    return content if isinstance(content, str) else [ContentPart(type="text", text=p.text) for p in content]


_PARTIAL = ("in_progress", "incomplete")
"""The statuses of an earlier output item that was cut off (vLLM continues such a final message)."""


def continues_final_message(items: str | list[InputItem]) -> bool:
    """Whether the input ends with an assistant message cut off earlier (``status`` ``in_progress`` or
    ``incomplete``): the answer continues it (chat's ``continue_final_message``, no generation prompt), as vLLM
    does. A final cut-off ``reasoning`` item cannot be continued (reasoning items are not rendered): a 400."""
    last = items[-1] if isinstance(items, list) and items else None
    if isinstance(last, ReasoningInput) and last.status in _PARTIAL:
        raise _bad(f"input[{len(items) - 1}]: a reasoning item with status {last.status!r} cannot be continued "
                   f"(earlier reasoning is not rendered); send it completed, or end the input with the assistant "
                   f"message to continue.", "input")
    return isinstance(last, InputMessage) and last.role == "assistant" and last.status in _PARTIAL


def input_messages(items: Sequence[InputItem]) -> list[ChatMessageIn]:
    """Input items → chat messages (consecutive function calls are one assistant turn's ``tool_calls``)."""
    msgs: list[ChatMessageIn] = []
    for it in items:
        if isinstance(it, FunctionCallInput):
            call = {"id": it.call_id, "type": "function", "function": {"name": it.name, "arguments": it.arguments}}
            last = msgs[-1] if msgs else None
            if last is not None and last.role == "assistant" and isinstance(getattr(last, "tool_calls", None), list):
                last.tool_calls.append(call)  # type: ignore[attr-defined]
            else:
                msgs.append(ChatMessageIn(role="assistant", content=None, tool_calls=[call]))  # type: ignore[call-arg]
        elif isinstance(it, FunctionCallOutputInput):
            msgs.append(ChatMessageIn(role="tool", content=_content(it.output), tool_call_id=it.call_id))  # type: ignore[call-arg]
        elif isinstance(it, InputMessage):
            msgs.append(ChatMessageIn(role=it.role, content=_content(it.content)))
    return msgs


def _fc_id() -> str:
    return f"fc_{uuid.uuid4().hex}"


def event_logprobs(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output text logprobs as a text event carries them (OpenAI's event type: token, logprob, top_logprobs; no
    ``bytes``)."""
    return [{"token": t["token"], "logprob": t["logprob"],
             "top_logprobs": [{"token": x["token"], "logprob": x["logprob"]} for x in t["top_logprobs"]]}
            for t in entries]


def output_items(m: ParsedMessage, status: Status, logprobs: list[dict[str, Any]] | None = None) -> list[OutputItem]:
    """A parsed answer → its output items in the order a stream opens them (:class:`ResponsesItemStream`): the
    reasoning, the text (if any) as a message (``logprobs``: its tokens'), one item per call; the message after the
    calls when all of its text came after them."""
    items: list[OutputItem] = []
    if m.reasoning:
        items.append(ReasoningItem(id=f"rs_{uuid.uuid4().hex}", status=status,
                                   content=[ReasoningText(text=m.reasoning)]))
    message: list[OutputItem] = [OutputMessage(id=f"msg_{uuid.uuid4().hex}", status=status, content=[
        OutputText(text=m.content, logprobs=logprobs or [])])] if m.content else []
    calls: list[OutputItem] = [FunctionCallItem(id=_fc_id(), call_id=c["id"], name=c["function"]["name"],
                                                arguments=c["function"]["arguments"], status=status)
                               for c in m.tool_calls]
    items += message + calls if m.content_first else calls + message
    return items


class ResponsesItemStream:
    """The parser's chat deltas → Responses stream events, one output item per reasoning / message / call, in
    the order they start. ``event(kind, **fields)`` formats one event (it numbers them). ``content_logprobs``
    (logprobs asked for): the answer's token logprobs not yet sent, taken with each text delta (the deltas'
    concatenate to the done event's and the output text's)."""

    def __init__(self, parser: ChatOutputParser, event: Callable[..., str],
                 content_logprobs: Callable[[], list[dict[str, Any]]] | None = None) -> None:
        self.parser = parser
        self.event = event
        self.content_logprobs = content_logprobs
        self.items: list[OutputItem] = []
        self._reasoning: ReasoningItem | None = None
        self._msg: OutputMessage | None = None
        self._calls: dict[int, FunctionCallItem] = {}
        self._pending: dict[int, tuple[str, str]] = {}  # calls named but without arguments yet: (call id, name)

    def feed(self, text_so_far: str, final: bool, finish_reason: str | None = None,
             stop_reason: int | str | None = None) -> list[str]:
        """The events for the output so far (``finish_reason``, ``stop_reason``: the engine's, at the end)."""
        delta = self.parser.delta(text_so_far, final, finish_reason, stop_reason)
        out: list[str] = []
        if delta.get("reasoning"):
            out += self._reasoning_text(delta["reasoning"])
        if delta.get("content"):
            out += self._content(delta["content"])
        for d in delta.get("tool_calls") or []:
            out += self._call(d)
        return out

    def _reasoning_text(self, text: str) -> list[str]:
        out = []
        if self._reasoning is None:
            self._reasoning = ReasoningItem(id=f"rs_{uuid.uuid4().hex}", status="in_progress")
            self.items.append(self._reasoning)
            out.append(self.event("response.output_item.added", output_index=len(self.items) - 1,
                                  item=self._reasoning.model_dump()))
            self._reasoning.content.append(ReasoningText(text=""))
        self._reasoning.content[0].text += text
        out.append(self.event("response.reasoning_text.delta", **self._where(self._reasoning), delta=text))
        return out

    def _content(self, text: str) -> list[str]:
        out = []
        if self._msg is None:
            self._msg = OutputMessage(id=f"msg_{uuid.uuid4().hex}", status="in_progress")
            self.items.append(self._msg)
            out.append(self.event("response.output_item.added", output_index=len(self.items) - 1,
                                  item=self._msg.model_dump()))
            self._msg.content.append(OutputText(text=""))
            out.append(self.event("response.content_part.added", **self._where(self._msg),
                                  part=OutputText(text="").model_dump()))
        self._msg.content[0].text += text
        out.append(self._text_delta(self._msg, text))
        return out

    def _text_delta(self, msg: OutputMessage, text: str, lps: list[dict[str, Any]] | None = None) -> str:
        """A text delta event; ``lps``: its tokens' logprobs (by default those not yet sent)."""
        if lps is None:
            lps = self.content_logprobs() if self.content_logprobs is not None else []
        msg.content[0].logprobs += lps
        return self.event("response.output_text.delta", **self._where(msg), delta=text, logprobs=event_logprobs(lps))

    def _call(self, d: dict[str, Any]) -> list[str]:
        """A call's item starts with its first arguments (a named choice's parser knows the name before the
        model wrote anything, even while it still thinks: the reasoning item must come first)."""
        out: list[str] = []
        if "id" in d:
            self._pending[d["index"]] = (d["id"], d["function"]["name"])
        args = d["function"].get("arguments") or ""
        if not args:
            return out
        item = self._calls.get(d["index"])
        if item is None:
            out += self._open_call(d["index"])
            item = self._calls[d["index"]]
        item.arguments += args
        out.append(self.event("response.function_call_arguments.delta", item_id=item.id,
                              output_index=self.items.index(item), delta=args))
        return out

    def _open_call(self, index: int) -> list[str]:
        call_id, name = self._pending.pop(index)
        item = FunctionCallItem(id=_fc_id(), call_id=call_id, name=name, arguments="", status="in_progress")
        self._calls[index] = item
        self.items.append(item)
        return [self.event("response.output_item.added", output_index=len(self.items) - 1, item=item.model_dump())]

    def _where(self, msg: OutputMessage | ReasoningItem) -> dict[str, Any]:
        return {"item_id": msg.id, "output_index": self.items.index(msg), "content_index": 0}

    def finish(self, status: Status) -> list[str]:
        """The closing events of every item (their final state), in output order."""
        out = []
        for index in sorted(self._pending):  # calls that never got arguments
            out += self._open_call(index)
        for i, item in enumerate(self.items):
            item.status = status
            if isinstance(item, FunctionCallItem):
                out.append(self.event("response.function_call_arguments.done", item_id=item.id, output_index=i,
                                      arguments=item.arguments))
            elif isinstance(item, ReasoningItem):
                out.append(self.event("response.reasoning_text.done", **self._where(item), text=item.content[0].text))
            else:
                where = self._where(item)
                lps = self.content_logprobs() if self.content_logprobs is not None else []
                if lps:  # the answer's last tokens, whose text came earlier (or was empty)
                    out.append(self._text_delta(item, "", lps))
                out.append(self.event("response.output_text.done", **where, text=item.content[0].text,
                                      logprobs=event_logprobs(item.content[0].logprobs)))
                out.append(self.event("response.content_part.done", **where, part=item.content[0].model_dump()))
            out.append(self.event("response.output_item.done", output_index=i, item=item.model_dump()))
        return out

