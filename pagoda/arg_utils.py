"""Command-line flags generated from a config dataclass, the help formatter every command uses, and the checks
that several commands share (argparse types for counts and ratios, ``--port``, binding ``--host``/``--port``).

One source for each flag: the dataclass field gives the name (``max_num_seqs`` ->
``--max-num-seqs``), the type (``int``, ``float``, ``str``, ``bool``, ``X | None``,
``Literal[...]`` -> choices, ``list[str]`` -> several values, ``dict`` -> a JSON object), the
default, and (through its attribute docstring, read from the source with :mod:`ast`) the help
text. Field metadata adds what a type cannot say: ``{"size": True}`` parses ``2G``/``512M``
and shows the default the same way; ``{"choices": (...)}`` when the choices are a constant
defined elsewhere.

:class:`HelpFormatter` states each flag's default exactly once: it appends ``(default: X)``
unless the help already states its default ('default: ...' or 'X (default)'), or the default is
unset (None) or off (False), where the help says what happens instead. A default inside the text of
something else ('a scale (default 1.0)') is not the flag's: the flag's is still appended.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import errno
import functools
import inspect
import json
import re
import socket
import textwrap
import types
import typing
from collections.abc import Callable
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


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``low`` ('argument --batch-size: must be at least 1, got 0')."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def range_ratio(text: str) -> float:
    """An argparse ``type``: a length range ratio r in [0, 1), lengths drawn from [len*(1-r), len*(1+r)] (vLLM's
    random dataset requires the same)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def check_port(port: int, flag: str = "--port") -> None:
    """A TCP port to listen on: [1, 65535] (0 would be any free port, which no one could find)."""
    if not 0 < port < 65536:
        raise ValueError(f"{flag} must be in [1, 65535], got {port}.")


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket of ``--host``/``--port``, bound and listening now (``serve`` before the model loads,
    ``router`` before uvicorn starts), so a bad address or a busy port fails at once with a one-line error naming
    the flag, and no other process can take the port while the model loads."""
    check_port(port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"cannot resolve --host {host} to an address to bind ({e.strerror}); change --host."
                         ) from None
    if ":" not in host:  # as uvicorn binds a name: IPv4 (a "localhost" listed as ::1 first would miss 127.0.0.1)
        infos = sorted(infos, key=lambda i: i[0] != socket.AF_INET)
    family, _, _, _, addr = infos[0]
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise ValueError(f"cannot bind {host}:{port} ({e.strerror}); change --host.") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} on {host} is already in use (another server?); choose another with "
                             f"--port, or stop the process that holds it.") from None
        raise ValueError(f"cannot bind {host}:{port} ({e.strerror}); change --host or --port.") from None
    # Listen now: a bound SO_REUSEADDR socket that does not listen yet lets another process bind the same port
    # meanwhile, and the later listen() of one of them fails inside uvicorn, which then "serves" on nothing.
    # (Connections made before uvicorn starts wait in the backlog.)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


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
    """Attribute docstrings of a dataclass (the string right after each field), whitespace folded. Read from the
    source once per class (every subcommand's parser adds the engine flags: reading it each time cost ~2 s a
    ``build_parser``)."""
    return dict(_field_docs(cls))


@functools.cache
def _field_docs(cls: type) -> dict[str, str]:
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


_STATES_DEFAULT = re.compile(r"\bdefault:|\(default\)", re.IGNORECASE)


def states_default(help_text: str) -> bool:
    """True when a help text already gives the flag's default: '(default: ...)', '...; default: ...' or
    'X (default): ...'. '(default 1.0)' does not count: that is how a help gives the default of something else
    (--kv-cache-dtype's k/v scale), not the flag's."""
    return bool(_STATES_DEFAULT.search(help_text))


def format_default(action: argparse.Action) -> str:
    d = action.default
    if isinstance(action, argparse._StoreFalseAction):  # --enable-x storing disable_x=False: off unless given
        return "off" if d else "on"
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
