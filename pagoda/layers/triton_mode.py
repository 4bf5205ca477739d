"""Whether a Triton kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``: the CPU tests) or compiled."""

from __future__ import annotations

from triton.runtime.jit import JITFunction


def interpreted(kernel: object) -> bool:
    """True when ``kernel`` was decorated under ``TRITON_INTERPRET=1`` (decided when its module was imported, not
    now). Callers then take their exact fallbacks: the interpreter's bf16 dots and float8 casts are not the GPU's."""
    return not isinstance(kernel, JITFunction)
