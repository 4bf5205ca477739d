"""``mistral``: Mistral tool calls after the ``[TOOL_CALLS]`` token: a JSON list
``[{"name": ..., "arguments": {...}}, ...]`` (tokenizer versions before v11), or, from v11 on, one
``[TOOL_CALLS]name[ARGS]{...}`` per call (``name{...}`` also read). Content before the first call."""

from __future__ import annotations

import re

from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import (
    ParsedCall,
    Scan,
    ToolParser,
    partial_tag_overlap,
)
from pagoda.entrypoints.openai.tool_parsers.json_calls import arguments_text, call_from_object, scan_object
from pagoda.entrypoints.openai.tool_parsers.json_scan import Malformed, loads_object, scan_partial, skip_ws

_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class MistralToolParser(ToolParser):
    name = "mistral"
    bot_token = "[TOOL_CALLS]"
    args_token = "[ARGS]"
    special_tokens_in_output = True

    def scan_into(self, text: str, final: bool, acc: Scan) -> None:
        i = text.find(self.bot_token)
        if i < 0:
            acc.segments.append(text if final else text[:len(text) - partial_tag_overlap(text, self.bot_token)])
            return
        acc.segments.append(text[:i])
        j = skip_ws(text, i + len(self.bot_token))
        if j == len(text):
            if final:
                raise Malformed("nothing after [TOOL_CALLS]")
            return
        if text[j] == "[":
            self._json_list(text, j, final, acc)
        else:
            self._named(text, j, final, acc)

    def _json_list(self, text: str, j: int, final: bool, acc: Scan) -> None:
        node = scan_partial(text, j)
        assert node is not None and node.kind == "array"
        for item in node.items:
            acc.calls.append(call_from_object(text, item))
        if node.end is None:
            if final:
                raise Malformed("unfinished tool-call list")
            return
        if not node.items:
            raise Malformed("empty tool-call list")
        acc.segments.append(text[node.end:])

    def _named(self, text: str, j: int, final: bool, acc: Scan) -> None:
        while True:
            m = _NAME.match(text, j)
            if m is None:
                raise Malformed("expected a tool name after [TOOL_CALLS]")
            k = m.end()
            if text.startswith(self.args_token, k):
                k += len(self.args_token)
            elif k == len(text) or self.args_token.startswith(text[k:]):
                if final:
                    raise Malformed("a tool name without arguments")
                acc.calls.append(ParsedCall(None))
                return
            node = scan_object(text, k)
            if node is None:
                if final:
                    raise Malformed("a tool name without arguments")
                acc.calls.append(ParsedCall(None))
                return
            args = arguments_text(text, node)
            if node.end is None:
                if final:
                    raise Malformed("unfinished arguments")
                acc.calls.append(ParsedCall(m.group(), args))
                return
            if loads_object(text[node.start:node.end]) is None:
                raise Malformed("arguments are not a JSON object")
            acc.calls.append(ParsedCall(m.group(), args, True))
            n = skip_ws(text, node.end)
            if text.startswith(self.bot_token, n):
                j = skip_ws(text, n + len(self.bot_token))
                continue
            rest = text[n:]
            if not final and self.bot_token.startswith(rest):
                return
            acc.segments.append(rest)
            return
