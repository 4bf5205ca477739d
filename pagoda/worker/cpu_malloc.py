"""Keep glibc from returning large blocks to the OS between CPU forward passes.

By default glibc serves allocations above its mmap threshold (128 KiB until it adapts)
with fresh ``mmap`` pages and unmaps them on free, so activations and KV gathers of that
size page-fault anew on each use. In a micro-benchmark of one batch-32 decode attention
call on the 2-core CI machine, raising the thresholds took it from 1.49 ms to 0.59 ms; in
a whole engine glibc's own adaptive threshold already recovers most of that (no change
above run-to-run noise was measured end to end), so this only removes the warm-up cost
and the dependence on glibc's heuristics. Linux/glibc only; elsewhere a no-op.
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger("pagoda")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def tune_malloc(threshold: int = 1 << 30) -> bool:
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, threshold) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, threshold) == 1
    except (OSError, AttributeError):
        ok = False
    _done = ok
    if not ok:
        logger.debug("mallopt not available; CPU allocations keep glibc defaults")
    return ok
