"""The Responses API's store: responses kept in this API server process for ``GET /v1/responses/{id}``,
``previous_response_id`` and ``background`` (on when ``PAGODA_ENABLE_RESPONSES_API_STORE`` or vLLM's
``VLLM_ENABLE_RESPONSES_API_STORE`` is ``1``; see :func:`pagoda.envs.responses_api_store`).

Invariants:
- An entry holds its own turn only (its input messages, without the request's ``instructions``, and its response);
  a conversation is rebuilt by walking ``parent`` links (:meth:`StoredResponse.conversation`), so a chain of n turns
  costs n entries' text, not n².
- At most ``max_entries`` ids can be looked up; the oldest finished entry is dropped first (an entry still running,
  ``queued`` or ``in_progress``, is never dropped). A dropped entry's data lives on while a later turn links to
  it, so its descendants still continue the whole conversation; only its own id stops resolving (a 404).
- One store per API server process (``--api-server-count 1`` is required with it, checked at start-up).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pagoda.entrypoints.openai.protocol import ChatMessageIn
from pagoda.entrypoints.openai.protocol_responses import (
    FunctionCallInput,
    FunctionCallItem,
    InputMessage,
    OutputMessage,
    ResponseObject,
)

RUNNING = ("queued", "in_progress")
"""The statuses of a response whose generation has not ended (a background one; cancellable)."""


@dataclass(eq=False)
class StoredResponse:
    """One stored turn: its response (updated in place while a background one runs), the chat messages its
    ``input`` became, and the turn it continued."""

    response: ResponseObject
    messages: list[ChatMessageIn]
    parent: StoredResponse | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)  # a background generation
    input_items: list[dict[str, Any]] = field(default_factory=list)  # the request's input, as listed back

    @property
    def running(self) -> bool:
        return self.response.status in RUNNING

    def conversation(self) -> list[ChatMessageIn]:
        """Every earlier turn's input and output as chat messages, oldest first, this turn's included (the
        reasoning items are left out, as chat templates drop earlier turns' thinking)."""
        chain: list[StoredResponse] = []
        node: StoredResponse | None = self
        while node is not None:
            chain.append(node)
            node = node.parent
        # imported here: responses_tools pulls in torch (through serving_engine), and `pagoda serve` reads this
        # module's start-up check before torch is imported (tests/test_prelaunch.py)
        from pagoda.entrypoints.openai.responses_tools import input_messages

        out: list[ChatMessageIn] = []
        for turn in reversed(chain):
            out += [m.model_copy(deep=True) for m in turn.messages]
            out += input_messages(output_as_input(turn.response))
        return out


_ITEM_ID_PREFIX = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


def listed_input(value: Any) -> list[dict[str, Any]]:
    """A request's ``input`` as ``GET /v1/responses/{id}/input_items`` lists it: a string is one user message of
    ``input_text``; every item keeps its fields and has an ``id`` (its own, else a new one)."""
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    out = []
    for item in value:
        d = item.model_dump(exclude_none=True) if hasattr(item, "model_dump") else dict(item)
        kind = d.get("type", "message")
        d.setdefault("id", f"{_ITEM_ID_PREFIX.get(kind, 'item')}_{uuid.uuid4().hex}")
        if kind == "message" and isinstance(d.get("content"), str):
            part = "output_text" if d.get("role") == "assistant" else "input_text"
            d["content"] = [{"type": part, "text": d["content"]}]
        out.append(d)
    return out


def output_as_input(resp: ResponseObject) -> list[InputMessage | FunctionCallInput]:
    """A response's output items as the input items a client would send back (text and calls)."""
    items: list[InputMessage | FunctionCallInput] = []
    for it in resp.output:
        if isinstance(it, OutputMessage):
            text = "".join(part.text for part in it.content)
            items.append(InputMessage(role="assistant", content=text))
        elif isinstance(it, FunctionCallItem):
            items.append(FunctionCallInput(type="function_call", call_id=it.call_id, name=it.name,
                                           arguments=it.arguments))
    return items


class ResponseStore:
    """Stored responses by id, at most ``max_entries`` resolvable (see the module's invariants)."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError(f"the Responses store needs room for at least 1 response, got {max_entries}.")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, rid: str) -> StoredResponse | None:
        return self._entries.get(rid)

    def put(self, entry: StoredResponse) -> None:
        """Store ``entry`` under its response's id, dropping the oldest finished entries past the bound."""
        self._entries[entry.response.id] = entry
        self._entries.move_to_end(entry.response.id)
        over = len(self._entries) - self.max_entries
        if over > 0:
            for rid in [r for r, e in self._entries.items() if not e.running][:over]:
                del self._entries[rid]

    def running(self) -> list[StoredResponse]:
        """The entries whose background generation has not ended."""
        return [e for e in self._entries.values() if e.running]

    def delete(self, rid: str) -> StoredResponse | None:
        """Forget ``rid``; the entry, or None when it was not stored."""
        return self._entries.pop(rid, None)


def check_store_args(api_server_count: int) -> None:
    """Start-up check of the store's variables (a bad bound fails here, before the port is bound); the store lives
    in one API server process, so with several a later turn or a GET could reach a process that never saw the
    response."""
    from pagoda import envs

    if not envs.responses_api_store():
        return
    envs.responses_api_store_max_entries()
    if api_server_count > 1:
        raise ValueError(f"the Responses API store (PAGODA_ENABLE_RESPONSES_API_STORE / "
                         f"VLLM_ENABLE_RESPONSES_API_STORE) with --api-server-count {api_server_count}: each API "
                         f"server process would keep its own responses, so previous_response_id and GET "
                         f"/v1/responses/{{id}} would miss the ones another process stored; use --api-server-count 1 "
                         f"or turn the store off.")
