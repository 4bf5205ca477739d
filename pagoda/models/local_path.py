"""Whether a ``--model`` names a local path or a Hugging Face Hub id (no torch: the CLI checks it before loading).

A hub id is ``name`` or ``org/name``; a path starts with ``/``, ``./``, ``../`` or ``~``, names a ``.gguf`` /
``.safetensors`` / ``.json`` file, a Windows drive, or has more than two parts. The embedded default model's names
(``default``, ``SmolLM2-135M-Instruct``) look like neither a path nor anything on disk, and are left alone.
"""

from __future__ import annotations

import re
from pathlib import Path


def looks_like_local_path(text: str) -> bool:
    if text.startswith(("/", "./", "../", "~", ".\\", "..\\")) or text in (".", ".."):
        return True
    if text.lower().endswith((".gguf", ".safetensors", ".json")):
        return True
    if re.match(r"^[A-Za-z]:[\\/]", text):  # a Windows drive
        return True
    # A hub id is "name" or "org/name"; anything with more parts is a path.
    return text.count("/") > 1 or "\\" in text


def check_local_path_exists(model: str | None) -> None:
    """``FileNotFoundError`` for a ``--model`` that names a local path (not a hub id) that does not exist: the
    check model resolution makes, run by ``pagoda serve`` before it binds its port (so the error comes first)."""
    if model is None:
        return
    text = str(model)
    if looks_like_local_path(text) and not Path(text).expanduser().exists():
        raise FileNotFoundError(f"model path does not exist: {Path(text).expanduser()}")
