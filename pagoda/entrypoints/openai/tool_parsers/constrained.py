"""Output of requests whose ``tool_choice`` is ``required`` or a named function: generation is constrained
to a JSON schema (structured outputs), and these parsers read it back as tool calls.

* ``required``: a JSON list ``[{"name": ..., "parameters": {...}}, ...]`` (vLLM's schema, built by
  :func:`required_schema`: each item one of the tools, its parameters that tool's schema);
* a named function: the output is that function's arguments object.
"""

from __future__ import annotations

from typing import Any

from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import ParsedCall, Scan, ToolParser
from pagoda.entrypoints.openai.tool_parsers.json_calls import arguments_text, call_from_object, scan_object
from pagoda.entrypoints.openai.tool_parsers.json_scan import Malformed, loads_object, scan_partial, skip_ws

_EMPTY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
"""The arguments of a tool without ``parameters``: ``{}`` (a grammar left open here lets a small model
invent keys until max_tokens)."""


def tool_schema(tool: dict[str, Any]) -> dict[str, Any]:
    """One item of the ``required`` list: this tool's name and its parameters, nothing else (vLLM's item,
    closed to other keys so generation ends)."""
    fn = tool["function"]
    return {"type": "object", "properties": {"name": {"type": "string", "enum": [fn["name"]]},
                           "parameters": fn.get("parameters") or _EMPTY_OBJECT},
            "required": ["name", "parameters"], "additionalProperties": False}


def required_schema(tools: list[dict[str, Any]], parallel_tool_calls: bool = True) -> dict[str, Any]:
    """vLLM's schema for ``tool_choice: "required"``: a non-empty list of calls (at most one without
    ``parallel_tool_calls``); the tools' ``$defs`` are hoisted to the top (a name defined twice
    differently is a ValueError)."""
    hoisted: dict[str, dict[str, Any]] = {"$defs": {}, "definitions": {}}
    items = []
    for tool in tools:
        params = dict(tool["function"].get("parameters") or {})
        _check_refs(tool["function"]["name"], params)
        for where, defs in hoisted.items():
            for name, d in params.pop(where, {}).items():
                if name in defs and defs[name] != d:
                    raise ValueError(f"Tool definition '{name}' has multiple schemas, which is not supported.")
                defs[name] = d
        items.append(tool_schema({"function": {**tool["function"], "parameters": params or None}}))
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"type": "object", "anyOf": items}}
    if not parallel_tool_calls:
        schema["maxItems"] = 1
    schema.update({where: defs for where, defs in hoisted.items() if defs})
    return schema


def _check_refs(tool: str, node: Any) -> None:
    """Under ``required`` a tool's parameters move into a list of calls, where only their ``$defs`` /
    ``definitions`` (hoisted to the top) keep their meaning: any other document-relative ``$ref`` (``#``,
    ``#/properties/...``) would resolve against the list. Refused by name (ValueError)."""
    if isinstance(node, list):
        for n in node:
            _check_refs(tool, n)
    elif isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and not ref.startswith(("#/$defs/", "#/definitions/")):
            raise ValueError(f"tool {tool!r}: '$ref': {ref!r} under tool_choice \"required\" (the parameters are "
                             f"wrapped in a list of calls, so only '#/$defs/...' and '#/definitions/...' references "
                             f"keep their meaning); move the referenced schema into '$defs', or name the tool in "
                             f"tool_choice.")
        for k, v in node.items():
            if k not in ("enum", "const", "default", "examples"):
                _check_refs(tool, v)


def named_schema(tool: dict[str, Any]) -> dict[str, Any]:
    """The schema of a named function's output: its parameters (an empty object when it has none)."""
    return tool["function"].get("parameters") or _EMPTY_OBJECT


class RequiredToolParser(ToolParser):
    name = "required"
    output_is_calls = True

    def scan_into(self, text: str, final: bool, acc: Scan) -> None:
        acc.segments.append("")
        node = scan_partial(text, 0)
        if node is None:
            if final:
                raise Malformed("no output")
            return
        if node.kind != "array":
            raise Malformed("expected a list of tool calls")
        for item in node.items:
            acc.calls.append(call_from_object(text, item))
        if node.end is None:
            if final:
                raise Malformed("unfinished list of tool calls")
            return
        if not node.items or text[skip_ws(text, node.end):]:
            raise Malformed("empty list, or text after it")


class NamedToolParser(ToolParser):
    """The whole output is the arguments of ``function_name``."""

    name = "named"
    output_is_calls = True

    def __init__(self, function_name: str) -> None:
        self.function_name = function_name

    def scan_into(self, text: str, final: bool, acc: Scan) -> None:
        acc.segments.append("")
        node = scan_object(text, 0)
        if node is None:
            if final:
                raise Malformed("no output")
            acc.calls.append(ParsedCall(self.function_name))
            return
        args = arguments_text(text, node)
        if node.end is None:
            if final:
                raise Malformed("unfinished arguments")
            acc.calls.append(ParsedCall(self.function_name, args))
            return
        if loads_object(text[node.start:node.end]) is None or text[skip_ws(text, node.end):]:
            raise Malformed("the arguments are not one JSON object")
        acc.calls.append(ParsedCall(self.function_name, args, True))
