"""vLLM's ``--config FILE.yaml``: a YAML mapping of long flag names to values, read as if its flags came first on the
command line, so a flag given on the command line wins over the file (command line > file > defaults, as vLLM).

``model: NAME`` is the model unless the command line names one (positionally or with ``--model``). ``true`` is the
flag itself, ``false`` its ``--no-`` form (or nothing for an on-only flag, whose default is off), a list the flag's
values in order, a mapping the flag's JSON. A key that is not a flag of the command, ``null``, or a nested
``config`` is an error naming the file and the key.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

CONFIG_FLAG = "--config"
MODEL_FROM_CONFIG = "--model-from-config"
"""Hidden flag the file's ``model`` becomes: the command line's model (positional or ``--model``) wins over it."""


def add_config_args(p: argparse.ArgumentParser) -> None:
    """``--config`` (expanded before parsing by :func:`expand_config_file`) and the hidden model it may carry."""
    p.add_argument(CONFIG_FLAG, metavar="FILE.yaml", default=None,
                   help="YAML file of flags, as vLLM's --config: keys are long flag names (`max-model-len: 4096`; "
                        "`model: NAME` is the model); a flag on the command line wins over the file")
    p.add_argument(MODEL_FROM_CONFIG, default=None, help=argparse.SUPPRESS)


def expand_config_file(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """``argv`` with ``--config FILE`` replaced by the file's flags, put right after the (sub)command so the
    command line's own flags, parsed later, win. Unchanged without ``--config``. Raises ``ValueError`` naming the
    file for a file that cannot be read, is not a mapping, or holds a key the command does not take."""
    where = _config_position(argv)
    if where is None:
        return argv
    i, path, width = where
    rest = argv[:i] + argv[i + width:]
    sub, at = _command_parser(parser, rest)
    if sub is None:
        raise ValueError(f"{CONFIG_FLAG} is taken by the commands that run an engine (serve, generate, chat, "
                         f"run-batch, bench throughput|latency)")
    flags = _flags(Path(path), _load(Path(path)), sub)
    return rest[:at] + flags + rest[at:]


def _config_position(argv: list[str]) -> tuple[int, str, int] | None:
    """(index, file, how many arguments it takes) of ``--config FILE`` / ``--config=FILE``; None when absent."""
    for i, arg in enumerate(argv):
        if arg == "--":
            return None
        if arg == CONFIG_FLAG:
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                raise ValueError(f"{CONFIG_FLAG} needs a file: {CONFIG_FLAG} FILE.yaml")
            return i, argv[i + 1], 2
        if arg.startswith(CONFIG_FLAG + "="):
            return i, arg.partition("=")[2], 1
    return None


def _command_parser(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.ArgumentParser | None, int]:
    """The (sub)command's parser named in ``argv``, and the index just after its name (where the file's flags go);
    (None, 0) when that command takes no ``--config``."""
    current, at = parser, 0
    while True:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        names = subs[0].choices
        while at < len(argv) and argv[at] not in names:
            at += 1
        if at >= len(argv):
            return None, 0
        current, at = names[argv[at]], at + 1
    return (current, at) if CONFIG_FLAG in current._option_string_actions else (None, 0)


def _load(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ValueError(f"{CONFIG_FLAG} {path}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{CONFIG_FLAG} {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{CONFIG_FLAG} {path}: the file must be a mapping of flag names to values "
                         f"(e.g. `max-model-len: 4096`), got {type(data).__name__}")
    return data


def _flags(path: Path, data: dict[str, Any], parser: argparse.ArgumentParser) -> list[str]:
    """The file's entries as command-line arguments of ``parser``."""
    options = parser._option_string_actions
    out: list[str] = []
    for key, value in data.items():
        name = str(key).replace("_", "-").lstrip("-")
        flag = f"--{name}"
        where = f"{CONFIG_FLAG} {path}: key {key!r}"
        if name == "config":
            raise ValueError(f"{where}: a config file cannot name another one")
        if name == "model":
            flag = MODEL_FROM_CONFIG
        elif flag not in options or flag == MODEL_FROM_CONFIG:  # vLLM's refused flags are options: refused by name
            raise ValueError(f"{where} is not a flag of this command (`pagoda <command> --help` lists them)")
        if value is None:
            raise ValueError(f"{where} has no value (null); give one or leave the key out")
        if isinstance(value, bool):
            out += _switch(flag, value, options, where)
        elif isinstance(value, list):
            out += [flag, *(_scalar(v) for v in value)]
        elif isinstance(value, dict):
            out += [flag, json.dumps(value)]
        else:
            out += [flag, _scalar(value)]
    return out


def _switch(flag: str, on: bool, options: dict[str, argparse.Action], where: str) -> list[str]:
    if on:
        return [flag] if options[flag].nargs == 0 else [flag, "true"]
    negated = "--no-" + flag[2:]
    if negated in options:
        return [negated]
    if options[flag].nargs == 0 and not options[flag].default:  # an on-only flag: off is its default
        return []
    raise ValueError(f"{where}: false cannot be given to {flag}")


def _scalar(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value)
