"""``--lora-modules`` (vLLM's forms) and its start-up checks; light (no torch): ``pagoda serve`` parses and checks
its flags before anything heavy is imported."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("pagoda.server")


@dataclass(frozen=True)
class LoRAModulePath:
    """One ``--lora-modules`` value (vLLM's): ``name=path`` or ``{"name", "path", "base_model_name"}``."""

    name: str
    path: str
    base_model_name: str | None = None


def parse_lora_module(text: str) -> LoRAModulePath:
    """One ``--lora-modules`` value as vLLM reads it: JSON ``{"name": ..., "path": ..., "base_model_name": ...}``
    (the last optional), else ``name=path``. Raises ``ValueError`` saying which form is wrong."""
    if text.lstrip().startswith("{"):
        try:
            d = json.loads(text)
        except ValueError as e:
            raise ValueError(f"--lora-modules {text}: invalid JSON ({e}).") from None
        if not isinstance(d, dict):
            raise ValueError(f"--lora-modules {text}: the JSON form is an object.")
        unknown = sorted(set(d) - {"name", "path", "base_model_name"})
        if unknown:
            raise ValueError(f"--lora-modules {text}: unknown key(s) {unknown}; the keys are name, path and "
                             f"base_model_name.")
        name, path, base = d.get("name"), d.get("path"), d.get("base_model_name")
        if not (isinstance(name, str) and name and isinstance(path, str) and path):
            raise ValueError(f"--lora-modules {text}: 'name' and 'path' must be non-empty strings.")
        if base is not None and not isinstance(base, str):
            raise ValueError(f"--lora-modules {text}: 'base_model_name' must be a string.")
        return LoRAModulePath(name, path, base)
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise ValueError(f"--lora-modules {text}: give name=path or JSON {{\"name\": ..., \"path\": ..., "
                         f"\"base_model_name\": ...}}.")
    return LoRAModulePath(name, path)


class LoRAModulesAction(argparse.Action):
    """``--lora-modules`` takes one or more values; repeating the flag adds to the list (vLLM keeps only the last
    repetition's)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        got = list(getattr(namespace, self.dest, None) or [])
        for text in values or []:
            if not text:
                continue
            try:
                got.append(parse_lora_module(text))
            except ValueError as e:
                parser.error(str(e))
        setattr(namespace, self.dest, got)


def check_lora_args(args: argparse.Namespace, runtime_updating: bool) -> None:
    """Start-up checks of ``--lora-modules`` and runtime loading that need no model: both need ``--enable-lora``
    (vLLM fails at start-up with "LoRA is not enabled"); runtime loading keeps one adapter table per API server
    process, so it needs ``--api-server-count 1``."""
    modules = getattr(args, "lora_modules", None) or []
    if not getattr(args, "enable_lora", False):
        if modules:
            raise ValueError("--lora-modules needs --enable-lora (the engine applies adapters only with it); add "
                             "--enable-lora, with --max-loras / --max-lora-rank to fit the adapters.")
        return
    names = [m.name for m in modules]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"--lora-modules names {dup} more than once; give each adapter its own name.")
    if runtime_updating and getattr(args, "api_server_count", 1) > 1:
        raise ValueError(f"runtime LoRA loading (PAGODA_ALLOW_RUNTIME_LORA_UPDATING / "
                         f"VLLM_ALLOW_RUNTIME_LORA_UPDATING) with --api-server-count {args.api_server_count}: each "
                         f"API server process keeps its own adapter names, so a load would reach one of them only; "
                         f"use --api-server-count 1 or list the adapters in --lora-modules.")
    if not modules and not runtime_updating:
        logger.warning("--enable-lora without --lora-modules and with runtime loading off "
                       "(VLLM_ALLOW_RUNTIME_LORA_UPDATING): no request can name an adapter")
