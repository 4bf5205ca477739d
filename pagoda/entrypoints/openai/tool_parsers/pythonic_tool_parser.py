"""``pythonic``: tool calls as a Python list of calls, ``[get_weather(city="Paris", days=3), now()]``
(Llama 3.2 / Llama 4 style). Arguments are keyword arguments whose values are literals (strings, numbers,
True/False/None and JSON's true/false/null, lists, tuples, dicts), read with ``ast`` -- never evaluated.

Arguments stream as ``json.dumps`` of the keyword dict: ``{`` at the ``(``, each argument once its value
is finished, ``}`` at the ``)``. Output that is not such a list is content."""

from __future__ import annotations

import ast
import json
import re
import warnings
from typing import Any

from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import ParsedCall, Scan, ToolParser
from pagoda.entrypoints.openai.tool_parsers.json_scan import Malformed

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_KEYWORD = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*=")
_PARTIAL_KEYWORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\s*\Z")
_WS = re.compile(r"\s*")
_JSON_NAMES = {"true": True, "false": False, "null": None}


def _ws(text: str, i: int) -> int:
    m = _WS.match(text, i)
    return m.end() if m else i


def _string_end(text: str, j: int) -> int | None:
    """Index after the Python string starting at ``text[j]`` (None: unfinished)."""
    q = text[j] * 3 if text.startswith(text[j] * 3, j) else text[j]
    p = j + len(q)
    while True:
        e = text.find(q, p)
        if e < 0:
            return None
        backslashes = len(text[p:e]) - len(text[p:e].rstrip("\\"))
        if backslashes % 2 == 0:
            return e + len(q)
        p = e + 1


def _value_end(text: str, j: int) -> int | None:
    """Index of the ``,`` or ``)`` that ends the argument value starting at ``j`` (None: not yet)."""
    depth = 0
    while j < len(text):
        c = text[j]
        if c in "\"'":
            end = _string_end(text, j)
            if end is None:
                return None
            j = end
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                if c != ")":
                    raise Malformed(f"unbalanced {c!r}")
                return j
            depth -= 1
        elif c == "," and depth == 0:
            return j
        j += 1
    return None


def literal(node: ast.expr) -> Any:
    """A literal's value (raises Malformed for anything that would need evaluating)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int, float, bool, type(None))):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        keys = [literal(k) if k is not None else None for k in node.keys]
        if not all(isinstance(k, (str, int, float, bool)) for k in keys):
            raise Malformed("dict keys must be literals")
        return {k: literal(v) for k, v in zip(keys, node.values, strict=True)}
    if isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = literal(node.operand)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    raise Malformed("tool-call arguments must be literals")


def _value_json(src: str) -> str:
    try:
        with warnings.catch_warnings():  # the model's bad escapes ("\\#") are its text, not this server's warnings
            warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
            tree = ast.parse(src.strip(), mode="eval")
        value = literal(tree.body)
        return json.dumps(value, ensure_ascii=False, allow_nan=False)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise Malformed(f"bad argument value: {e}") from None


def _arguments(text: str, i: int) -> tuple[str, int, bool, bool]:
    """Keyword arguments from ``text[i:]`` (after the ``(``) → (JSON so far, index after ``)``, done,
    whether they look like keyword arguments yet)."""
    parts: list[str] = []
    while True:
        i = _ws(text, i)
        if i == len(text):
            return "{" + ", ".join(parts), i, False, bool(parts)
        if text[i] == ")":
            return "{" + ", ".join(parts) + "}", i + 1, True, True
        m = _KEYWORD.match(text, i)
        if m is None:
            if _PARTIAL_KEYWORD.match(text, i):
                return "{" + ", ".join(parts), len(text), False, bool(parts)
            raise Malformed("tool-call arguments must be keyword arguments")
        end = _value_end(text, m.end())
        if end is None:
            return "{" + ", ".join(parts), len(text), False, True
        parts.append(f"{json.dumps(m.group(1), ensure_ascii=False)}: {_value_json(text[m.end():end])}")
        i = end + 1 if text[end] == "," else end


class PythonicToolParser(ToolParser):
    name = "pythonic"

    def scan_into(self, text: str, final: bool, acc: Scan) -> None:
        k = _ws(text, 0)
        if k == len(text) or text[k] != "[":
            acc.segments.append(text if final or k < len(text) else "")
            return
        acc.segments.append("")
        i = k + 1
        while True:
            i = _ws(text, i)
            m = _NAME.match(text, i)
            if m is None or m.end() == len(text):
                if final or (m is None and i < len(text)):
                    raise Malformed("expected a call")
                acc.calls.append(ParsedCall(None))
                return
            j = _ws(text, m.end())
            if j == len(text):
                if final:
                    raise Malformed("unfinished call")
                acc.calls.append(ParsedCall(None))
                return
            if text[j] != "(":
                raise Malformed("expected '(' after a tool name")
            args, j, done, confirmed = _arguments(text, j + 1)
            # the name is shown once the arguments look right (a keyword, or the closing parenthesis)
            acc.calls.append(ParsedCall(m.group() if confirmed else None, args, done))
            if not done:
                if final:
                    raise Malformed("unfinished call")
                return
            j = _ws(text, j)
            if j == len(text):
                if final:
                    raise Malformed("unfinished list of calls")
                return
            if text[j] == "]":
                if text[j + 1:].strip():
                    raise Malformed("text after the list of calls")
                return
            if text[j] != ",":
                raise Malformed("expected ',' or ']'")
            i = j + 1
