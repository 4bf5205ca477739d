"""``llama3_json``: Llama 3.1/3.2 JSON tool calls: ``<|python_tag|>`` and/or bare JSON at the start of the
output, ``{"name": ..., "parameters": {...}}`` (or ``"arguments"``), several separated by ``;``.

Output that starts with ``{`` but is not such an object is content (sent once it is decided)."""

from __future__ import annotations

from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import Scan, ToolParser
from pagoda.entrypoints.openai.tool_parsers.json_calls import call_from_object, scan_object
from pagoda.entrypoints.openai.tool_parsers.json_scan import Malformed, skip_ws


class Llama3JsonToolParser(ToolParser):
    name = "llama3_json"
    bot_token = "<|python_tag|>"
    special_tokens_in_output = True

    def scan_into(self, text: str, final: bool, acc: Scan) -> None:
        k = skip_ws(text, 0)
        rest = text[k:]
        if text.startswith(self.bot_token, k):
            i, committed = k + len(self.bot_token), True
        elif rest.startswith("{"):
            i, committed = k, False
        elif not final and (not rest or self.bot_token.startswith(rest)):
            acc.segments.append("")  # undecided: whitespace or part of the tag
            return
        else:
            acc.segments.append(text)
            return
        acc.segments.append("")
        while True:
            node = scan_object(text, i)
            if node is None:  # nothing yet after the tag, or after a ';'
                if final and not acc.calls:
                    raise Malformed("no tool call")
                return
            acc.calls.append(call_from_object(text, node, need_arguments_key=not committed and not acc.calls))
            if node.end is None:
                if final:
                    raise Malformed("unfinished tool call")
                return
            j = skip_ws(text, node.end)
            if j == len(text):
                return
            if text[j] != ";":
                raise Malformed("text after a tool call")
            i = j + 1
