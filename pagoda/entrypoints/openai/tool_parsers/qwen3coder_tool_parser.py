"""``qwen3_coder``: Qwen3-Coder's XML tool calls (vLLM's parser name), with content before, between and after::

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    <parameter=days>
    3
    </parameter>
    </function>
    </tool_call>

A parameter's text is its value with one newline on each side dropped; the value is typed by the tool's JSON schema
(:func:`param_value`, vLLM's rules: ``null`` is null for any type, strings stay text, integers / numbers / booleans
are read as such, objects and arrays as JSON, else as a Python literal; a value that does not read as its type stays
text, a boolean too, where vLLM reads anything but ``true`` as false; a parameter the schema does not name is text).
The arguments are ``json.dumps`` of the parameters in their order (``ensure_ascii=False``, vLLM's layout), built one
finished parameter at a time, so a stream's arguments are a prefix of the final ones. A parameter ends at
``</parameter>``, or at the next ``<parameter=`` or ``</function>`` (vLLM reads a missing ``</parameter>`` so too).
As vLLM, a ``<function=`` without the ``<tool_call>`` around it is a call too. Not well-formed, the whole output is
content (the module doc of :mod:`.abstract_tool_parser`): a ``<tool_call>`` not followed by ``<function=``, text
between parameters, a parameter named twice (vLLM keeps the last value), an output ending inside a function.
"""

from __future__ import annotations

import ast
import json
from typing import Any

from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import (
    ParsedCall,
    Scan,
    ToolParser,
    partial_tag_overlap,
)
from pagoda.entrypoints.openai.tool_parsers.json_scan import Malformed, skip_ws

TOOL_CALL, TOOL_CALL_END = "<tool_call>", "</tool_call>"
FUNCTION, FUNCTION_END = "<function=", "</function>"
PARAMETER, PARAMETER_END = "<parameter=", "</parameter>"

_INT_PREFIXES = ("int", "uint", "long", "short", "unsigned")
_TEXT_TYPES = ("string", "str", "text", "varchar", "char", "enum")


def _schema_type(schema: Any) -> str:
    """A parameter schema's type as vLLM's parser reads it (lower case; the first non-null of a list; none: text)."""
    kind = schema.get("type") if isinstance(schema, dict) else None
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    return str(kind).strip().lower() if kind is not None else "string"


def param_value(text: str, schema: Any) -> Any:
    """A parameter's text as its schema's type (see the module doc); ``schema`` None: not in the tool's schema. A
    value JSON cannot hold (an infinite number, a Python set or bytes) stays text, so the arguments are JSON."""
    value = _typed(text, schema)
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return text
    return value


def _typed(text: str, schema: Any) -> Any:
    if text.lower() == "null":
        return None
    if schema is None:
        return text
    kind = _schema_type(schema)
    if kind in _TEXT_TYPES:
        return text
    if kind.startswith(_INT_PREFIXES):
        try:
            return int(text)
        except ValueError:
            return text
    if kind.startswith(("num", "float")):
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() else number
    if kind in ("boolean", "bool", "binary"):
        return {"true": True, "false": False}.get(text.lower(), text)  # vLLM reads anything else as false
    if kind in ("object", "array", "arr") or kind.startswith(("dict", "list")):
        try:
            return json.loads(text)
        except ValueError:
            pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _strip_one_newline(text: str) -> str:
    if text.startswith("\n"):
        text = text[1:]
    return text[:-1] if text.endswith("\n") else text


class Qwen3CoderToolParser(ToolParser):
    name = "qwen3_coder"

    def _properties(self, function: str) -> dict[str, Any] | None:
        """The named tool's parameter schemas (None: no such tool, or its schema names none)."""
        for tool in self.tools:
            fn = tool.get("function") if isinstance(tool, dict) else None
            if isinstance(fn, dict) and fn.get("name") == function:
                params = fn.get("parameters")
                if isinstance(params, dict):
                    props = params.get("properties", params)
                    return props if isinstance(props, dict) else None
                return None
        return None

    def scan_into(self, text: str, final: bool, acc: Scan) -> None:
        pos = 0
        while True:
            starts = [i for i in (text.find(TOOL_CALL, pos), text.find(FUNCTION, pos)) if i >= 0]
            if not starts:
                seg = text[pos:]
                held = max(partial_tag_overlap(seg, TOOL_CALL), partial_tag_overlap(seg, FUNCTION))
                acc.segments.append(seg if final else seg[:len(seg) - held])
                return
            i = min(starts)
            acc.segments.append(text[pos:i])
            wrapped = text.startswith(TOOL_CALL, i)
            k = i + len(TOOL_CALL) if wrapped else i
            k = skip_ws(text, k)
            if not text.startswith(FUNCTION, k):
                if final or not FUNCTION.startswith(text[k:]):
                    raise Malformed("<tool_call> without <function=")
                acc.calls.append(ParsedCall(None))  # the function tag is still coming
                return
            end = self._scan_function(text, k + len(FUNCTION), final, acc)
            if end is None:
                return
            if wrapped:
                k = skip_ws(text, end)
                if text.startswith(TOOL_CALL_END, k):
                    end = k + len(TOOL_CALL_END)
                elif text[k:] and not (not final and TOOL_CALL_END.startswith(text[k:])):
                    raise Malformed("text after </function> inside <tool_call>")
                else:
                    return  # </tool_call> is coming (or, at the end, was left out: accepted)
            pos = end

    def _scan_function(self, text: str, i: int, final: bool, acc: Scan) -> int | None:
        """One function from just after ``<function=``: appends its call; the index after ``</function>``, or None
        when the text ends first (``final``: malformed)."""
        gt = text.find(">", i)
        name = text[i:gt] if gt >= 0 else None
        if name is None or "\n" in name or "<" in name:
            if final or (name is None and ("\n" in text[i:] or "<" in text[i:])) or name is not None:
                raise Malformed("unreadable function name")
            acc.calls.append(ParsedCall(None))
            return None
        if not name.strip():
            raise Malformed("empty function name")
        props = self._properties(name)
        call = ParsedCall(name, "{")
        acc.calls.append(call)
        seen: set[str] = set()
        k = gt + 1
        while True:
            k = skip_ws(text, k)
            if text.startswith(FUNCTION_END, k):
                call.arguments += "}"
                call.done = True
                return k + len(FUNCTION_END)
            if not text.startswith(PARAMETER, k):
                rest = text[k:]
                if final or not (FUNCTION_END.startswith(rest) or PARAMETER.startswith(rest)):
                    raise Malformed("text between a function's parameters")
                return None
            pgt = text.find(">", k + len(PARAMETER))
            if pgt < 0:
                if final or "\n" in text[k:]:
                    raise Malformed("unreadable parameter name")
                return None
            pname = text[k + len(PARAMETER):pgt]
            if not pname or "\n" in pname or "<" in pname:
                raise Malformed("unreadable parameter name")
            if pname in seen:
                raise Malformed(f"parameter {pname!r} given twice")
            v = pgt + 1
            ends = [j for j in (text.find(PARAMETER_END, v), text.find(PARAMETER, v), text.find(FUNCTION_END, v))
                    if j >= 0]
            if not ends:
                if final:
                    raise Malformed("a parameter without its end")
                return None
            j = min(ends)
            value = param_value(_strip_one_newline(text[v:j]), None if props is None else props.get(pname))
            sep = ", " if seen else ""
            seen.add(pname)
            call.arguments += f"{sep}{json.dumps(pname, ensure_ascii=False)}: {json.dumps(value, ensure_ascii=False)}"
            k = j + len(PARAMETER_END) if text.startswith(PARAMETER_END, j) else j
