"""Tool calls written as JSON objects ``{"name": ..., "arguments" | "parameters": {...}}`` (hermes,
llama3_json, mistral): one partially generated object → a :class:`ParsedCall`."""

from __future__ import annotations

import json

from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import ParsedCall
from pagoda.entrypoints.openai.tool_parsers.json_scan import Malformed, Node, canonical, loads_object, scan_partial

ARGUMENT_KEYS = ("arguments", "parameters")


def arguments_text(text: str, node: Node) -> str:
    """Canonical JSON of an arguments value (so far); it must be an object."""
    if node.kind != "object":
        raise Malformed("tool-call arguments must be a JSON object")
    return canonical(text[node.start:node.end if node.end is not None else len(text)])


def call_from_object(text: str, node: Node, need_arguments_key: bool = False) -> ParsedCall:
    """The call an object node describes. The name is reported once complete (and, with
    ``need_arguments_key``, once an arguments key has appeared too: bare JSON is only a call when it
    looks like one). A finished object must parse and carry a non-empty string name; missing arguments
    are ``{}``."""
    if node.kind != "object":
        raise Malformed("a tool call must be a JSON object")
    name_node = node.member("name")
    args_node = node.member(*ARGUMENT_KEYS)
    name = None
    if name_node is not None:
        if name_node.kind != "string":
            raise Malformed("a tool call's name must be a string")
        if name_node.end is not None:
            name = json.loads(text[name_node.start:name_node.end])
            if not name:
                raise Malformed("empty tool name")
    if need_arguments_key and args_node is None:
        if node.end is not None:
            raise Malformed("an object without arguments is not a tool call here")
        name = None
    args = arguments_text(text, args_node) if args_node is not None else ""
    if node.end is None:
        return ParsedCall(name, args)
    obj = loads_object(text[node.start:node.end])
    if obj is None or not isinstance(obj.get("name"), str) or name is None:
        raise Malformed("not a tool call")
    return ParsedCall(name, args if args_node is not None else "{}", True)


def scan_object(text: str, i: int) -> Node | None:
    """The object at ``text[i:]`` (None: only whitespace so far)."""
    node = scan_partial(text, i)
    if node is not None and node.kind != "object":
        raise Malformed("a tool call must be a JSON object")
    return node
