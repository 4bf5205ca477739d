"""What every tool-call parser provides, and the one streaming engine they share.

A parser implements one pure function, ``parse(text, final)``: the model's output so far (``final``:
the whole output) → :class:`ParseResult`, the content outside tool calls and the calls found. Its
contract, which makes streaming a mere diff: for a prefix ``p`` of ``t``, ``parse(p, False)`` is a
*prefix* of ``parse(t, ...)`` -- its content is a prefix of the later content, it has no more calls,
each call's name is either unknown (None) or final, and each call's arguments are a prefix of the later
arguments. Text that might still become a tool-call marker is held back until it is decided.

``parse(t, True)`` on output that is not well-formed returns the whole text as content and no calls
(never an exception): a malformed tool call reaches the client as text (no content at all from a parser whose
whole output is calls, :attr:`ToolParser.output_is_calls`). A stream cannot take back what
it sent, so for malformed output the streamed calls may differ from the non-streamed answer.

A stream sends a call (its id and name) only once its arguments have begun as an object (``{``), or the call is
finished, or the output is (the end's view then decides, as for the non-streamed answer: a call cut before its
arguments began is returned with empty arguments): a call whose arguments are something else (a JSON string) is
malformed, and the non-streamed answer is then the text; sent early, its name would have gone out as a call of empty
arguments with the text as content too.

The end of an output is read by :meth:`ToolParser.parse_end`: an output cut while a call was being written
(``finish_reason: length``, or a stop string / stop token id of the request), and in a stream any output whose calls
were already sent, keeps the prefix view
``parse(t, False)`` -- the content before the calls and the calls so far, the last one unfinished -- so the
call's text is never sent again as content, and a cut output streams to exactly its non-streamed message.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pagoda.entrypoints.openai.tool_parsers.json_scan import Malformed

logger = logging.getLogger("pagoda.server")


@dataclass
class ParsedCall:
    name: str | None  # None until the whole name is known
    arguments: str = ""  # JSON text of the arguments so far (a prefix of the final text)
    done: bool = False


@dataclass
class ParseResult:
    content: str
    calls: list[ParsedCall] = field(default_factory=list)
    content_first: bool = True  # content (if any) began before the first call (False: only text after the calls)


@dataclass
class Scan:
    """What a parser found so far: the text outside calls (``segments``, one more than ``calls`` once
    complete; missing trailing ones are empty) and the calls."""

    segments: list[str] = field(default_factory=list)
    calls: list[ParsedCall] = field(default_factory=list)


@dataclass
class ExtractedToolCallInformation:
    """vLLM's name: the non-streamed result. ``complete``: every call was finished (False only for an output
    cut while writing one, whose last call's arguments are a prefix). ``content_first``: the content began before the
    first call, as a stream sends them (False: all of it came after a call)."""

    tools_called: bool
    tool_calls: list[dict[str, Any]]
    content: str | None
    complete: bool = True
    content_first: bool = True  # the content began before the first call (a stream sends it first)


def is_strict(tool: Any) -> bool:
    """A chat-shaped tool sent with ``"strict": true`` (its calls' arguments must follow its ``parameters``)."""
    fn = tool.get("function") if isinstance(tool, dict) else None
    return isinstance(fn, dict) and fn.get("strict") is True


def make_tool_call_id() -> str:
    """vLLM's tool-call ids: ``chatcmpl-tool-`` and 32 hex digits."""
    return f"chatcmpl-tool-{uuid.uuid4().hex}"


def tool_call(name: str, arguments: str, call_id: str | None = None) -> dict[str, Any]:
    """One OpenAI ``message.tool_calls`` entry."""
    return {"id": call_id or make_tool_call_id(), "type": "function",
            "function": {"name": name, "arguments": arguments}}


def partial_tag_overlap(text: str, tag: str) -> int:
    """Length of the longest proper prefix of ``tag`` that ``text`` ends with (0: none)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


def assemble_content(segments: list[str], n_calls: int, final: bool) -> str:
    """Content from the text between calls (``segments``: before the first call, between calls, after the
    last; ``n_calls + 1`` of them). Without calls, the text as is (while streaming, trailing whitespace
    waits: a call may follow). With calls, the text before them loses its trailing whitespace and the
    pieces after calls are stripped, so the newlines models put around calls are not content."""
    if n_calls == 0:
        return segments[0] if final else segments[0].rstrip()
    return segments[0].rstrip() + "".join(s.strip() for s in segments[1:])


class ToolParser:
    """Base class: subclasses set ``name`` and implement ``parse``."""

    name = ""
    special_tokens_in_output = False
    """The format's markers are special tokens: requests keep special tokens in the text
    (``skip_special_tokens=False``, as vLLM's adjust_request does for these parsers)."""
    output_is_calls = False
    """The whole output is calls, never content (``tool_choice`` required or named: a grammar holds it to JSON), so
    text that holds no call yet (cut at ``max_tokens`` inside the first name) is no content either."""
    tools: Sequence[dict[str, Any]] = ()
    """The request's tools in chat's shape (set by :func:`get_tool_parser`): a format whose arguments are not JSON
    reads their types from the tools' schemas (``qwen3_coder``)."""

    def parse(self, text: str, final: bool) -> ParseResult:
        """See the module doc. Subclasses fill a :class:`Scan` in ``scan_into``; malformed output raises
        ``Malformed`` there, which becomes the whole text as content (final) or what was found before the
        fault (while streaming)."""
        acc = Scan()
        try:
            self.scan_into(text, final, acc)
        except Malformed:
            if final:
                return ParseResult("" if self.output_is_calls else text, [])
        while len(acc.segments) < len(acc.calls) + 1:
            acc.segments.append("")
        return ParseResult(assemble_content(acc.segments[:len(acc.calls) + 1], len(acc.calls), final), acc.calls,
                           not acc.calls or bool(acc.segments[0].rstrip()))

    def scan_into(self, text: str, final: bool, acc: Scan) -> None:
        raise NotImplementedError

    def strict_tags(self, tools: list[dict[str, Any]], one_call: bool) -> dict[str, Any] | None:
        """The format as an xgrammar structural tag that holds every call to its tool's schema (for tools sent
        with ``strict: true`` under ``tool_choice: "auto"``): text stays free, a call's marker starts a tag whose
        arguments follow the tool's ``parameters`` (a non-strict tool's: any object); ``one_call``: generation ends
        after the first call. None: this format has no such form (strict tools are then refused)."""
        return None

    def parse_end(self, text: str, keep_partial: bool = False) -> ParseResult:
        """The whole output: ``parse(text, True)``; with ``keep_partial`` (the output was cut, or a stream
        already sent calls), output that is not well-formed but whose prefix view holds a named call keeps
        that view (see the module doc) instead of becoming the whole text as content."""
        r = self.parse(text, True)
        if r.calls or not keep_partial:
            return r
        partial = self.parse(text, False)
        return partial if partial.calls and partial.calls[0].name is not None else r

    def extract_tool_calls(self, model_output: str, cut: bool = False) -> ExtractedToolCallInformation:
        """The finished output → tool calls and the content around them (never raises). ``cut``: generation
        stopped at ``max_tokens`` (or a stop string / token), so an unfinished last call is returned as far as it
        got."""
        try:
            r = self.parse_end(model_output, cut)
        except Exception:  # a parser bug must not turn a generated answer into a 500
            logger.exception("%s tool parser failed; returning the text as content", self.name)
            return ExtractedToolCallInformation(False, [], model_output)
        named = [c for c in r.calls if c.name is not None]
        calls = [tool_call(c.name, c.arguments) for c in named if c.name is not None]
        return ExtractedToolCallInformation(bool(calls), calls, r.content if (r.content or not calls) else None,
                                            all(c.done for c in named), r.content_first)


class ToolCallStream:
    """Turns successive ``parse`` results of one choice into OpenAI stream deltas."""

    def __init__(self, parser: ToolParser) -> None:
        self.parser = parser
        self.content = ""
        self.sent: list[tuple[str, str]] = []  # per call: (id, arguments sent)
        self.broken = False
        self.unfinished = False  # the output ended inside a call (its arguments are a prefix)

    def update(self, text: str, final: bool, cut: bool = False) -> tuple[str, list[dict[str, Any]]]:
        """The whole output so far → (new content, tool_calls delta entries). ``cut``: the output ended at
        ``max_tokens`` (or a stop string / token). Once calls were sent, the end keeps the prefix view (never the
        whole text as content)."""
        try:
            r = self.parser.parse_end(text, cut or bool(self.sent)) if final else self.parser.parse(text, False)
        except Exception:
            logger.exception("%s tool parser failed while streaming", self.parser.name)
            r = ParseResult(text if final and not self.sent else "", [])
        if final:
            named = [c for c in r.calls if c.name is not None]
            if self.sent and not named:
                # malformed, the fault inside the first call's JSON (no prefix view holds it): the stream keeps what
                # it sent and never sends the call's text again as content
                r = ParseResult(self.content, [])
            # a call sent that the end's view lost (its JSON went wrong) is unfinished too: never ``tool_calls``
            self.unfinished = len(named) < len(self.sent) or any(not c.done for c in named)
        new_content = ""
        if r.content.startswith(self.content):
            new_content = r.content[len(self.content):]
            self.content = r.content
        elif not self.broken:  # only malformed output can do this (see the module doc)
            self.broken = True
            logger.debug("%s tool parser: content is not a continuation; stream keeps what it sent", self.parser.name)
        return new_content, self._call_deltas(r.calls, final)

    def _call_deltas(self, calls: list[ParsedCall], final: bool) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for i, c in enumerate(calls):
            if c.name is None:
                break
            if i == len(self.sent):
                # sent once its arguments are an object: a malformed call (arguments as a string) stays text; at
                # the end, a call of the end's view (one cut before its arguments began) goes as it is
                if not (c.done or final or self.parser.output_is_calls or c.arguments.lstrip().startswith("{")):
                    break
                call_id = make_tool_call_id()
                self.sent.append((call_id, c.arguments))
                out.append({"index": i, "id": call_id, "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments}})
                continue
            call_id, args = self.sent[i]
            if c.arguments != args and c.arguments.startswith(args):
                out.append({"index": i, "function": {"arguments": c.arguments[len(args):]}})
                self.sent[i] = (call_id, c.arguments)
        return out

    @property
    def called(self) -> bool:
        """Calls were sent and, at the end, every one of them was finished (what ``tool_calls`` means)."""
        return bool(self.sent) and not self.unfinished
