"""``hermes``: Hermes / Qwen2.5 / Qwen3 tool calls, ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
(several in a row for parallel calls), with content before, between and after them."""

from __future__ import annotations

import json
from typing import Any

from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import (
    ParsedCall,
    Scan,
    ToolParser,
    is_strict,
    partial_tag_overlap,
)
from pagoda.entrypoints.openai.tool_parsers.json_calls import call_from_object, scan_object
from pagoda.entrypoints.openai.tool_parsers.json_scan import Malformed, skip_ws


class Hermes2ProToolParser(ToolParser):
    name = "hermes"
    start_tag = "<tool_call>"
    end_tag = "</tool_call>"

    def strict_tags(self, tools: list[dict[str, Any]], one_call: bool) -> dict[str, Any] | None:
        """Each call as the Hermes / Qwen templates write it, ``<tool_call>\n{"name": N, "arguments": A}\n
        </tool_call>``, A held to N's schema when N is strict (see :meth:`ToolParser.strict_tags`)."""
        tags = []
        for tool in tools:
            fn = tool["function"]
            schema = (fn.get("parameters") or {"type": "object", "properties": {}, "additionalProperties": False}
                      ) if is_strict(tool) else {"type": "object"}
            tags.append({"type": "tag", "begin": f'{self.start_tag}\n{{"name": {json.dumps(fn["name"])}, "arguments": ',
                         "content": {"type": "json_schema", "json_schema": schema}, "end": f"}}\n{self.end_tag}"})
        return {"type": "structural_tag", "format": {"type": "triggered_tags", "triggers": [self.start_tag],
                                                     "tags": tags, "at_least_one": False,
                                                     "stop_after_first": one_call}}

    def scan_into(self, text: str, final: bool, acc: Scan) -> None:
        pos = 0
        while True:
            i = text.find(self.start_tag, pos)
            if i < 0:
                seg = text[pos:]
                acc.segments.append(seg if final else seg[:len(seg) - partial_tag_overlap(seg, self.start_tag)])
                return
            acc.segments.append(text[pos:i])
            node = scan_object(text, i + len(self.start_tag))
            if node is None:  # nothing but whitespace after the tag yet
                if final:
                    raise Malformed("empty tool call")
                acc.calls.append(ParsedCall(None))
                return
            acc.calls.append(call_from_object(text, node))
            if node.end is None:
                if final:
                    raise Malformed("unfinished tool call")
                return
            k = skip_ws(text, node.end)
            if text.startswith(self.end_tag, k):
                pos = k + len(self.end_tag)
                continue
            rest = text[k:]
            if rest and not (not final and self.end_tag.startswith(rest)):
                raise Malformed("text after a tool call's JSON inside the tags")
            return  # the closing tag is coming (or, at the end, was left out: accepted)
