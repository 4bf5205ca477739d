"""A partial-JSON scanner for tool-call parsers: spans of a possibly unfinished JSON value.

``scan(text, i)`` reads one JSON value starting at ``text[i]`` (leading whitespace skipped) and returns
its :class:`Node`: the value's kind, its span, whether it is finished, and for objects and arrays their
members. Unfinished input is not an error (the node is ``done=False``); input that can no longer become
JSON raises :class:`Malformed`. A finished value is checked by ``json.loads`` before anyone trusts it.

``canonical(raw)`` rewrites JSON text into the shape ``json.dumps`` gives (no insignificant whitespace,
``": "`` and ``", "`` separators; strings, numbers and literals kept as written). It maps each input
character on its own (given whether it lies inside a string), so the canonical text of a prefix is a
prefix of the canonical text of the whole: what streaming relies on to send arguments piece by piece.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

_WS = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')
# an unfinished string: whole characters and escapes, then at most one escape cut by the end of the text. Only at the
# end: allowed anywhere (a \u with 0-4 hex digits, a bare backslash), \u4e2d could be read six ways, and a string of
# N such escapes that failed later (a raw newline) backtracked through 6**N readings (10: seconds; 15: days)
_STRING_PARTIAL = re.compile(
    r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*(?:\\(?:u[0-9a-fA-F]{0,3})?)?\Z')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NUMBER_PARTIAL = re.compile(r"-?(?:0|[1-9][0-9]*)?(?:\.[0-9]*)?(?:[eE][+-]?[0-9]*)?\Z")
_LITERALS = ("true", "false", "null")


class Malformed(ValueError):
    """The text cannot be the beginning of a JSON value."""


@dataclass
class Node:
    kind: str  # "object", "array", "string", "number", "literal"
    start: int
    end: int | None = None  # exclusive; None while unfinished
    members: list[tuple[str | None, Node]] = field(default_factory=list)  # objects: (key or None while unfinished)
    items: list[Node] = field(default_factory=list)  # arrays

    @property
    def done(self) -> bool:
        return self.end is not None

    def member(self, *names: str) -> Node | None:
        """The value of the first member named one of ``names`` (keys must be complete)."""
        for key, value in self.members:
            if key in names:
                return value
        return None


def skip_ws(text: str, i: int) -> int:
    m = _WS.match(text, i)
    return m.end() if m else i


def scan(text: str, i: int) -> Node:
    """The JSON value at ``text[i:]`` (whitespace first allowed); raises Malformed."""
    i = skip_ws(text, i)
    if i >= len(text):
        raise _Incomplete(i)
    c = text[i]
    if c == "{":
        return _scan_container(text, i, "object")
    if c == "[":
        return _scan_container(text, i, "array")
    if c == '"':
        m = _STRING.match(text, i)
        if m:
            return Node("string", i, m.end())
        if _STRING_PARTIAL.match(text, i):
            return Node("string", i)
        raise Malformed(f"bad string at {i}")
    if c in "-0123456789":
        if _NUMBER_PARTIAL.match(text, i):  # runs to the end of the text: "12" may go on to "123"
            return Node("number", i)
        m = _NUMBER.match(text, i)
        if m:
            return Node("number", i, m.end())
        raise Malformed(f"bad number at {i}")
    for lit in _LITERALS:
        if text.startswith(lit, i):
            return Node("literal", i, i + len(lit))
        if lit.startswith(text[i:]):
            return Node("literal", i)
    raise Malformed(f"unexpected {c!r} at {i}")


class _Incomplete(Exception):
    def __init__(self, pos: int) -> None:
        self.pos = pos


def scan_partial(text: str, i: int) -> Node | None:
    """``scan``, or None when nothing but whitespace follows ``i``."""
    try:
        return scan(text, i)
    except _Incomplete:
        return None


def _scan_container(text: str, i: int, kind: str) -> Node:
    node = Node(kind, i)
    close = "}" if kind == "object" else "]"
    j = skip_ws(text, i + 1)
    if j < len(text) and text[j] == close:
        node.end = j + 1
        return node
    while True:
        j = skip_ws(text, j)
        if j >= len(text):
            return node
        key: str | None = None
        if kind == "object":
            if text[j] != '"':
                raise Malformed(f"expected a key at {j}")
            k = scan(text, j)
            if not k.done:
                return node
            assert k.end is not None
            key = json.loads(text[j:k.end])
            j = skip_ws(text, k.end)
            if j >= len(text):
                return node
            if text[j] != ":":
                raise Malformed(f"expected ':' at {j}")
            j = skip_ws(text, j + 1)
            if j >= len(text):
                return node
        value = scan(text, j)
        if kind == "object":
            node.members.append((key, value))
        else:
            node.items.append(value)
        if value.end is None:
            return node
        j = skip_ws(text, value.end)
        if j >= len(text):
            return node
        if text[j] == close:
            node.end = j + 1
            return node
        if text[j] != ",":
            raise Malformed(f"expected ',' or {close!r} at {j}")
        j += 1


_CANON = str.maketrans({" ": "", "\t": "", "\n": "", "\r": "", ":": ": ", ",": ", "})
_SPLIT = re.compile(r'("(?:[^"\\]|\\.)*(?:"|\\?\Z))', re.S)


def canonical(raw: str) -> str:
    """JSON text (finished or a prefix) in json.dumps' layout, character by character (see the module doc)."""
    parts = _SPLIT.split(raw)
    # odd indices are strings (kept verbatim), even ones are the structure between them
    return "".join(p if k % 2 else p.translate(_CANON) for k, p in enumerate(parts))


def loads_object(raw: str) -> dict | None:
    """``json.loads(raw)`` when it is an object, else None."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
