"""``pythonic``: tool calls as a Python list of calls, ``[get_weather(city="Paris", days=3), now()]``
(Llama 3.2 / Llama 4 style). Arguments are keyword arguments whose values are literals (strings, numbers,
True/False/None and JSON's true/false/null, lists, tuples, dicts), read with ``ast`` -- never evaluated.

Names (of the tools, ``a.b`` dotted too, and of the keywords) are Python identifiers, non-ASCII ones included
(``météo(é=1)``), read as Python reads them: a run of ASCII word characters and non-ASCII characters (whitespace
aside) is one name, which must be an identifier (``str.isidentifier``), and means its NFKC form (PEP 3131: ``ﬁle``
is ``file``), as ``ast`` (vLLM's parser) reports it. A keyword given twice is malformed, as Python says.

Arguments stream as ``json.dumps`` of the keyword dict: ``{`` at the ``(``, each argument once its value
is finished, ``}`` at the ``)``; a surrogate in a string (``"\\ud83d\\ude42"``: Python reads a JSON-style pair as
two) is written as its ``\\u`` escape, so the text stays valid UTF-8 and a pair reads back as its character. Output
that is not such a list is content."""

from __future__ import annotations

import ast
import json
import re
import unicodedata
import warnings
from typing import Any

from pagoda.entrypoints.openai.tool_parsers.abstract_tool_parser import ParsedCall, Scan, ToolParser
from pagoda.entrypoints.openai.tool_parsers.json_scan import Malformed

# one name token as Python's tokenizer cuts it (ASCII word characters and any non-ASCII character but whitespace, not
# starting with an ASCII digit); whether it is an identifier is checked apart (``_identifier``). One character class,
# not ``(?:\w|[^\x00-\x7f\s])+``: a non-ASCII letter matches both branches, so a long run of them that fails to be
# followed by ``=`` backtracks exponentially (30 letters: over a minute)
_IDENT = r"(?![0-9])[^\x00-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f\s]+"
_NAME = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
_KEYWORD = re.compile(rf"({_IDENT})\s*=")
_PARTIAL_KEYWORD = re.compile(rf"{_IDENT}\s*\Z")
_SURROGATE = re.compile("[\ud800-\udfff]")
_WS = re.compile(r"\s*")
_JSON_NAMES = {"true": True, "false": False, "null": None}


def _identifier(token: str) -> str:
    """The name a Python name token means: its NFKC form (PEP 3131); raises Malformed where it is no identifier."""
    if not token.isidentifier():
        raise Malformed(f"{token!r} is not a Python identifier")
    return token if token.isascii() else unicodedata.normalize("NFKC", token)


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
        # a surrogate (lone, or half of a JSON-style pair Python reads as two) as its escape: valid UTF-8, and a
        # pair reads back as its character
        return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", json.dumps(value, ensure_ascii=False,
                                                                              allow_nan=False))
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise Malformed(f"bad argument value: {e}") from None


def _arguments(text: str, i: int) -> tuple[str, int, bool, bool]:
    """Keyword arguments from ``text[i:]`` (after the ``(``) → (JSON so far, index after ``)``, done,
    whether they look like keyword arguments yet)."""
    parts: list[str] = []
    seen: set[str] = set()
    while True:
        i = _ws(text, i)
        if i == len(text):
            return "{" + ", ".join(parts), i, False, bool(parts)
        if text[i] == ")":
            return "{" + ", ".join(parts) + "}", i + 1, True, True
        m = _KEYWORD.match(text, i)
        if m is None:
            if _PARTIAL_KEYWORD.match(text, i):
                _identifier(text[i:].rstrip())  # a prefix of an identifier is one
                return "{" + ", ".join(parts), len(text), False, bool(parts)
            raise Malformed("tool-call arguments must be keyword arguments")
        key = _identifier(m.group(1))
        if key in seen:
            raise Malformed(f"keyword argument {key!r} repeated")
        seen.add(key)
        end = _value_end(text, m.end())
        if end is None:
            return "{" + ", ".join(parts), len(text), False, True
        parts.append(f"{json.dumps(key, ensure_ascii=False)}: {_value_json(text[m.end():end])}")
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
            name = ".".join(_identifier(part) for part in m.group().split("."))
            args, j, done, confirmed = _arguments(text, j + 1)
            # the name is shown once the arguments look right (a keyword, or the closing parenthesis)
            acc.calls.append(ParsedCall(name if confirmed else None, args, done))
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
