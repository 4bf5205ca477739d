"""One chat choice's generated text → the message's ``reasoning``, ``content`` and ``tool_calls``, whole
(:meth:`ChatOutputParser.message`) or as stream deltas (:meth:`ChatOutputParser.delta`).

The reasoning parser (if any) splits the text first; the tool parser (if any) reads the content part.
Both are prefix-monotone pure functions of the text so far, so a stream sends exactly the differences,
and a well-formed output streams to the same message the non-streamed request returns. So does an output cut
at ``max_tokens`` while a call was being written, when the engine's finish reason is passed (``length``): the
calls so far, the last one's arguments unfinished, and no content made of the call's own text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pagoda.entrypoints.openai.tool_parsers import ToolCallStream, ToolParser
from pagoda.reasoning import ReasoningParser
from pagoda.reasoning.abs_reasoning_parsers import BaseThinkingReasoningParser
from pagoda.reasoning.token_ids import ReasoningTokenIds


def was_cut(finish_reason: str | None, stop_reason: int | str | None) -> bool:
    """Whether the output was cut short rather than ended by the model: at ``max_tokens`` (``length``), or by a stop
    string or stop token id of the request (``stop_reason`` set), which may fall inside a tool call. A call being
    written there is returned as far as it got (the prefix view), streamed or not; read as a whole output it would
    be malformed (its text, or no answer at all for a required / named tool choice)."""
    return finish_reason == "length" or (finish_reason == "stop" and stop_reason is not None)


@dataclass
class ParsedMessage:
    content: str | None
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    calls_complete: bool = True  # False: cut at max_tokens inside the last call (its arguments are a prefix)
    content_first: bool = True  # the content began before the first call (False: only text after the calls)


class ChatOutputParser:
    """Per choice; ``include_reasoning=False`` drops the reasoning (vLLM's request field)."""

    def __init__(self, reasoning: ReasoningParser | None, tools: ToolParser | None, include_reasoning: bool = True,
                 max_calls: int | None = None) -> None:
        self.reasoning = reasoning
        self.tools = tools
        self.include_reasoning = include_reasoning
        self.max_calls = max_calls  # 1 without parallel_tool_calls: later calls are dropped
        self._stream = ToolCallStream(tools) if tools is not None else None
        self._sent_reasoning = ""
        self._sent_content = ""

    def _split(self, text: str, final: bool) -> tuple[str, str]:
        return self.reasoning.split(text, final) if self.reasoning is not None else ("", text)

    def message(self, text: str, finish_reason: str | None = None,
                stop_reason: int | str | None = None) -> ParsedMessage:
        """The finished output's message; ``finish_reason`` and ``stop_reason``: the engine's (see :func:`was_cut`)."""
        reasoning, content = self._split(text, True)
        out = ParsedMessage(content)
        if self.reasoning is not None:  # vLLM: empty parts are null once a reasoning parser splits
            out.content = content or None
            out.reasoning = (reasoning or None) if self.include_reasoning else None
        if self.tools is not None:
            info = self.tools.extract_tool_calls(content, cut=was_cut(finish_reason, stop_reason))
            if info.tools_called or self.tools.output_is_calls:  # (the latter's text is never content)
                out.tool_calls = info.tool_calls[:self.max_calls]
                out.content = info.content or None
                out.calls_complete = info.complete
                out.content_first = info.content_first
        return out

    def delta(self, text: str, final: bool, finish_reason: str | None = None,
              stop_reason: int | str | None = None) -> dict[str, Any]:
        """The whole text so far → what is new: a delta with any of ``reasoning``, ``content``, ``tool_calls``
        (``finish_reason`` and ``stop_reason``: the engine's, at the end)."""
        reasoning, content = self._split(text, final)
        delta: dict[str, Any] = {}
        calls: list[dict[str, Any]]
        if reasoning.startswith(self._sent_reasoning) and len(reasoning) > len(self._sent_reasoning):
            if self.include_reasoning:
                delta["reasoning"] = delta["reasoning_content"] = reasoning[len(self._sent_reasoning):]
            self._sent_reasoning = reasoning
        if self._stream is not None and self.reasoning is not None and not content and not final:
            new, calls = "", []  # no answer yet: a named tool choice's call (named before any text) waits, as the
            # output may still end in the thinking, calling nothing (the non-streamed message then has no call)
        elif self._stream is not None:
            new, calls = self._stream.update(content, final, cut=final and was_cut(finish_reason, stop_reason))
            if self.max_calls is not None:
                calls = [c for c in calls if c["index"] < self.max_calls]
            if calls:
                delta["tool_calls"] = calls
        elif content.startswith(self._sent_content):
            new = content[len(self._sent_content):]
            self._sent_content = content
        else:
            new = ""
        if new:
            delta["content"] = new
        return delta

    @property
    def tools_called(self) -> bool:
        """The stream sent calls, all of them finished (``finish_reason: tool_calls`` may be reported)."""
        return self._stream is not None and self._stream.called


@dataclass(frozen=True)
class TokenSplit:
    """Where a thinking output's tokens go: ``token_ids[reasoning_start:reasoning_end]`` are the reasoning's (its
    tags excluded), ``token_ids[content_start:]`` the answer's."""

    reasoning_start: int
    reasoning_end: int
    content_start: int

    @property
    def reasoning_tokens(self) -> int:
        return self.reasoning_end - self.reasoning_start


def token_split(reasoning: ReasoningParser, text: str, token_ids: Sequence[int],
                tags: ReasoningTokenIds | str | None) -> TokenSplit | None:
    """The reasoning parser's split of ``text`` (:meth:`BaseThinkingReasoningParser.split`) on the output's
    ``token_ids``, with the tags as single tokens (``tags``, the engine core's). None when it cannot be exact: the
    tags are not single tokens of this tokenizer, or the text holds a tag the ids do not (a tag spelled in pieces,
    or dropped by ``skip_special_tokens``), so the text's split point is not a token boundary known here.

    Inside the reasoning (the output opens ``<think>``, or the parser thinks by default and the prompt did not
    close it) the reasoning runs to the first ``</think>`` (to the end without one), the answer after it;
    otherwise every token is the answer's (vLLM's ``count_reasoning_tokens`` counts the same tokens)."""
    if not isinstance(reasoning, BaseThinkingReasoningParser) or not isinstance(tags, ReasoningTokenIds):
        return None
    ids = list(token_ids)
    if text.lstrip().startswith(reasoning.start_token):
        if tags.start_id is None or text.count(reasoning.start_token) != ids.count(tags.start_id):
            return None
        start = ids.index(tags.start_id) + 1
    elif not reasoning.thinks_by_default or reasoning.prompt_ends_reasoning:
        return TokenSplit(0, 0, 0)
    else:
        start = 0
    if text.count(reasoning.end_token) != ids.count(tags.end_id):
        return None
    end = ids.index(tags.end_id, start) if tags.end_id in ids[start:] else len(ids)
    return TokenSplit(start, end, min(end + 1, len(ids)))
