"""Which tokenizer class ``AutoTokenizer`` picks for a model folder, remembered across runs.

Why: importing ``AutoTokenizer``'s module imports transformers' auto-model factory, and with it the generation
stack (scikit-learn, scipy, torch._dynamo): 12 s of the H200's 21 s from the shell to a ready ``pagoda serve``
(RESULTS.md, session 7), against 0.3 s for the load itself. Once ``AutoTokenizer`` has chosen a class for a
folder, the next start imports that class's own module and calls its ``from_pretrained`` as ``AutoTokenizer``
would (``_from_auto=True``, the only argument it adds for a local folder).

Invariants: an entry is keyed on everything ``AutoTokenizer``'s choice reads (transformers' version, the folder,
its ``config.json`` and ``tokenizer_config.json`` bytes, the names of its files, fast or slow), so a changed folder
or library misses and goes through ``AutoTokenizer`` again; only classes defined in transformers itself are
remembered (never remote code); a remembered class that fails to load is forgotten and ``AutoTokenizer`` runs.
The cache is one JSON file under ``PAGODA_CACHE``, replaced atomically; a missing or unreadable one is empty.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from pagoda import envs

logger = logging.getLogger("pagoda")

CACHE_FILE = "tokenizer_classes.json"
_KEY_FILES = ("config.json", "tokenizer_config.json")


def cache_path() -> Path:
    return Path(envs.cache_root()).expanduser() / CACHE_FILE


def class_key(folder: Path, use_fast: bool) -> str | None:
    """The cache key of ``folder``'s tokenizer choice; None when the folder cannot be read."""
    import transformers

    h = hashlib.sha256()
    try:
        names = sorted(p.name for p in folder.iterdir())
        h.update(json.dumps([transformers.__version__, str(folder.resolve()), use_fast, names]).encode())
        for name in _KEY_FILES:
            f = folder / name
            h.update(name.encode() + (f.read_bytes() if f.is_file() else b"\0missing"))
    except OSError:
        return None
    return h.hexdigest()


def _read() -> dict[str, str]:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remembered_class(key: str) -> Any:
    """The tokenizer class remembered under ``key``, imported (a ``type``); None when there is none or it cannot
    be imported."""
    ref = _read().get(key)
    if not isinstance(ref, str) or ":" not in ref or not ref.startswith("transformers."):
        return None
    module, _, name = ref.partition(":")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) else None


def remember(key: str, tokenizer: Any) -> None:
    """Record ``type(tokenizer)`` under ``key`` (classes of transformers itself only); failures are logged only."""
    cls = type(tokenizer)
    if not cls.__module__.startswith("transformers.") or "." in cls.__qualname__:
        return
    ref = f"{cls.__module__}:{cls.__qualname__}"
    update(key, ref)


def update(key: str, ref: str | None) -> None:
    """Set (``ref``) or drop (None) the entry ``key``, replacing the file atomically."""
    data = _read()
    if data.get(key) == ref:
        return
    if ref is None:
        data.pop(key, None)
    else:
        data[key] = ref
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tokenizer_classes.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=0, sort_keys=True)
        os.replace(tmp, path)
    except OSError as e:
        logger.debug("could not write %s: %s", path, e)
