"""Command-line flags generated from a config dataclass, and the help formatter every command uses.

One source for each flag: the dataclass field gives the name (``max_num_seqs`` ->
``--max-num-seqs``), the type (``int``, ``float``, ``str``, ``bool``, ``X | None``,
``Literal[...]`` -> choices, ``list[str]`` -> several values, ``dict`` -> a JSON object), the
default, and (through its attribute docstring, read from the source with :mod:`ast`) the help
text. Field metadata adds what a type cannot say: ``{"size": True}`` parses ``2G``/``512M``
and shows the default the same way; ``{"choices": (...)}`` when the choices are a constant
defined elsewhere.

:class:`HelpFormatter` states each flag's default exactly once: it appends ``(default: X)``
unless the help already states its default ('(default ...' or 'default: ...'), or the default is
unset (None) or off (False), where the help says what happens instead.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

_SIZE_UNITS = (("T", 2**40), ("G", 2**30), ("M", 2**20), ("K", 2**10))


def parse_size(text: str) -> int:
    """'2G', '512M', '1.5GiB', '64K' or a plain byte count -> bytes; a lowercase unit is decimal ('4g' or '4gb' =
    4 * 10**9, '1.5k' = 1500), as vLLM's ``human_readable_int`` reads it, an uppercase one or '...iB' binary ('4G' =
    4 * 2**30, '4gib' too)."""
    raw = text.strip()
    unit = raw.removesuffix("b")  # '4gb' as '4g'; '4gib' stays binary below
    if unit and unit[-1] in "kmgt":
        try:
            return int(float(unit[:-1]) * 1000 ** ("kmgt".index(unit[-1]) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a size: {text!r} (use a byte count or e.g. 512M, 2G)") from None
    t = raw.upper().removesuffix("IB").removesuffix("B")
    mult = dict(_SIZE_UNITS)
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(float(t))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use a byte count or e.g. 512M, 2G)") from None


def parse_count(text: str) -> int:
    """A token count as vLLM's ``human_readable_int`` reads it: '32768', '32k' (32,000), '32K' (32,768), '25.6k'
    (25,600), '1M' (2**20), '1m' (10**6)."""
    raw = text.strip()
    try:
        if raw and raw[-1] in "kmgtKMGT":
            num = float(raw[:-1])
            unit = raw[-1]
            value = num * (1000 ** ("kmgt".index(unit) + 1) if unit.islower() else 1024 ** ("KMGT".index(unit) + 1))
            if value != int(value):
                raise ValueError
            return int(value)
        return int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (an integer, or e.g. 32k = 32000, 32K = 32768)") \
            from None


def format_size(n: int) -> str:
    """The largest unit that divides ``n`` exactly: 2**31 -> '2G', 8 * 2**20 -> '8M'."""
    for unit, mult in _SIZE_UNITS:
        if n and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


def json_object(text: str) -> dict[str, Any]:
    """A JSON object given on the command line, e.g. '{"temperature": 0.5}'."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def json_list_or_str(text: str) -> list[str]:
    """vLLM's form '["a", "b"]' (a JSON list), or a single plain value."""
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise argparse.ArgumentTypeError(f"not a valid JSON list ({e}): {text!r}") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise argparse.ArgumentTypeError(f"expected a JSON list of strings, got {text!r}")
        return value
    return [text]


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string right after each field), whitespace folded."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, nxt in zip(body, body[1:], strict=False):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def field_kwargs(f: dataclasses.Field, tp: Any, help_text: str) -> dict[str, Any]:
    """``add_argument`` keyword arguments for one dataclass field."""
    default = f.default if f.default is not dataclasses.MISSING else None
    if f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    kw: dict[str, Any] = {"default": default, "help": help_text.replace("%", "%%")}
    base = _strip_optional(tp)
    origin = get_origin(base)
    meta = f.metadata
    if base is bool:  # --flag and --no-flag, as vLLM's boolean flags
        kw["action"] = argparse.BooleanOptionalAction
    elif meta.get("size"):
        kw["type"] = parse_size
    elif meta.get("count"):
        kw["type"] = parse_count
    elif origin is Literal:
        kw["choices"] = get_args(base)
        kw["type"] = type(kw["choices"][0])
    elif origin is list:
        kw["nargs"] = "+"
        kw["type"] = get_args(base)[0] if get_args(base) else str
    elif origin is dict or base is dict:
        kw["type"] = json_object
        kw["metavar"] = "JSON"
    elif base in (int, float, str):
        kw["type"] = base
    else:
        raise TypeError(f"no command-line form for field {f.name}: {tp!r}")
    if "choices" in meta:
        kw["choices"] = tuple(meta["choices"])
    return kw


def add_dataclass_args(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls: type,
                       skip: frozenset[str] = frozenset(), only: frozenset[str] | None = None) -> None:
    """One flag per field of ``cls`` (see the module docstring); fields in ``skip`` get none, and with
    ``only`` only those fields get one (a help group's share)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or (only is not None and f.name not in only):
            continue
        if f.name not in docs:
            raise TypeError(f"{cls.__name__}.{f.name} has no docstring to serve as its help")
        kw = field_kwargs(f, hints[f.name], docs[f.name])
        aliases = tuple(f.metadata.get("aliases", ()))  # e.g. -q for --quantization, as vLLM
        action = parser.add_argument(f"--{f.name.replace('_', '-')}", *aliases, **kw)
        action.help = kw["help"]  # BooleanOptionalAction (Python < 3.13) appends its own default note


class HelpFormatter(argparse.HelpFormatter):
    """Appends '(default: X)' to a flag's help unless the help states its default already, or the
    default is None / False (the help then says what happens when the flag is not given)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        h = action.help or ""
        d = action.default
        if (not action.option_strings or states_default(h) or d is None or d is False
                or d is argparse.SUPPRESS or d == []):
            return h
        return f"{h} (default: {format_default(action).replace('%', '%%')})"


def states_default(help_text: str) -> bool:
    """True when a help text already gives its default, as '(default: ...)' or '..., default: ...'."""
    low = help_text.lower()
    return "(default" in low or "default:" in low


def format_default(action: argparse.Action) -> str:
    d = action.default
    if action.type is parse_size and isinstance(d, int):
        return format_size(d)
    if isinstance(d, bool):
        return "on" if d else "off"
    if isinstance(d, (list, tuple)):
        return " ".join(str(x) for x in d)
    return str(d)


def markdown_table(cls: type) -> str:
    """The flags of ``cls`` as a Markdown table (``docs/cli.md`` holds it; a test keeps the two equal)."""
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, cls)
    rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for a in parser._actions:
        if not a.option_strings or a.dest == "help":
            continue
        flag = a.option_strings[0]
        if isinstance(a, argparse.BooleanOptionalAction):
            flag = "--[no-]" + flag[2:]
        shown = "—" if a.default is None or a.default is False else f"`{format_default(a)}`"
        choices = f" ({', '.join(map(str, a.choices))})" if a.choices and not isinstance(a.default, bool) else ""
        rows.append(f"| `{flag}` | {shown} | {(a.help or '').replace('%%', '%')}{choices} |")
    return "\n".join(rows)
