"""``PAGODA_LOG_JIT_COMPILES=1``: one log line per Triton kernel compiled in this process, with its seconds.

A diagnostic for compiles that land where they cost (a first request, a benchmark's timed run):
each line names the kernel, its specialisation (:func:`describe`: constexpr values, integers
specialised as multiples of 16, launch options) and how long the compile took. Triton's disk cache
makes a repeat compile cheap, but it still logs: the line says where the kernel was first used in
this process. Installed by the engine core when the variable is set; a no-op without Triton's
``knobs.runtime`` hooks (Triton < 3.4) or when the kernels run under the interpreter.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

logger = logging.getLogger("pagoda")

_state: dict[str, Any] = {"installed": False, "count": 0, "seconds": 0.0}
_started: dict[int, float] = {}  # thread id -> start of the compile in flight on that thread
_lock = threading.Lock()
_DESCRIBE_CHARS = 800


def _before(*, key: Any = None, **kwargs: Any) -> bool:
    _started[threading.get_ident()] = time.perf_counter()
    return False  # a true return would skip the compile


def describe(info: dict[str, Any]) -> str:
    """The specialisation of one compile from Triton's ``compile`` hook argument: constexpr and ``== 1`` values
    by name (``constants``: argument path -> value), the integer arguments specialised as multiples of 16 and the
    pointers that are not 16-byte aligned (``configs[0]``: argument path -> attributes), the launch options."""
    sig = info.get("signature") or {}
    names = list(sig)

    def name(path: Any) -> str:
        i = path[0] if isinstance(path, tuple | list) and path else path
        return names[i] if isinstance(i, int) and 0 <= i < len(names) else str(path)

    consts = [f"{name(p)}={v}" for p, v in (info.get("constants") or {}).items() if v is not None]
    configs = info.get("configs") or [{}]
    attrs = {name(p) for p in (configs[0] or {})}
    div16 = [n for n in names if n in attrs and not str(sig[n]).startswith("*")]
    unaligned = [n for n in names if str(sig[n]).startswith("*") and n not in attrs]
    parts = [", ".join(consts)]
    if div16:
        parts.append("ints %16: " + ",".join(div16))
    if unaligned:
        parts.append("pointers not 16-byte aligned: " + ",".join(unaligned))
    parts.append(f"num_warps={info.get('num_warps')}, num_stages={info.get('num_stages')}")
    return "; ".join(parts)


def _after(*, fn: Any = None, compile: dict[str, Any] | None = None, **kwargs: Any) -> bool:
    """Triton calls its hooks with ``key``, ``repr``, ``fn`` (a ``JitFunctionInfo``: ``.name``) and ``compile``
    (``signature``, ``constants``, ``configs``, launch options, ...)."""
    t0 = _started.pop(threading.get_ident(), None)
    dt = 0.0 if t0 is None else time.perf_counter() - t0
    name = getattr(fn, "name", None) or "?"
    with _lock:
        _state["count"] += 1
        _state["seconds"] += dt
        n, total = _state["count"], _state["seconds"]
    logger.info("Triton JIT compile #%d: %s in %.2f s (%.1f s in all): %s", n, name, dt, total,
                describe(compile or {})[:_DESCRIBE_CHARS])
    return False


def install() -> bool:
    """Chain the two hooks onto Triton's (idempotent); False when this Triton has no hooks."""
    if _state["installed"]:
        return True
    try:
        from triton import knobs
    except ImportError:
        return False
    rt = getattr(knobs, "runtime", None)
    if rt is None or not hasattr(rt, "jit_post_compile_hook"):
        return False
    prev_before, prev_after = rt.jit_cache_hook, rt.jit_post_compile_hook

    def before(**kw: Any) -> bool:
        skip = bool(prev_before(**kw)) if prev_before else False
        return skip or _before(**kw)

    def after(**kw: Any) -> bool:
        if prev_after:
            prev_after(**kw)
        return _after(**kw)

    rt.jit_cache_hook, rt.jit_post_compile_hook = before, after
    _state["installed"] = True
    return True


def compiles_so_far() -> tuple[int, float]:
    """(kernels compiled since :func:`install`, their seconds)."""
    return _state["count"], _state["seconds"]
