"""Per-row grammar work of a step on a few persistent threads.

xgrammar releases the GIL inside a matcher's ``accept_token`` and ``fill_next_token_bitmask``, and one
call costs tens of microseconds at a 128k vocabulary: at batch 64 the serial loop is milliseconds of
host time per step, which the device waits for once it exceeds a forward. Rows are independent (each
sequence owns its matcher; each writes only its own bitmask row), so contiguous chunks of them run on
the threads with results bit-identical to the serial loop. Small batches, and hosts with few cores,
stay serial: a hand-off costs more than it saves there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

MIN_ROWS_PER_THREAD = 8
"""Rows below which another thread is not worth its hand-off."""


def default_num_threads() -> int:
    """Half the host's cores, at most 8 (the other half runs the engine loop and the API server)."""
    return max(1, min(8, (os.cpu_count() or 1) // 2))


class RowThreads:
    """``map(fn, items)`` in order, on up to ``num_threads`` threads (the caller's thread takes the first chunk)."""

    def __init__(self, num_threads: int | None = None) -> None:
        self.num_threads = default_num_threads() if num_threads is None else max(1, num_threads)
        self._pool: ThreadPoolExecutor | None = None

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        n = min(self.num_threads, len(items) // MIN_ROWS_PER_THREAD)
        if n < 2:
            return [fn(x) for x in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.num_threads - 1, thread_name_prefix="pagoda-grammar-rows")
        bounds = [len(items) * i // n for i in range(n + 1)]

        def chunk(i: int) -> list[R]:
            return [fn(x) for x in items[bounds[i]:bounds[i + 1]]]

        futures = [self._pool.submit(chunk, i) for i in range(1, n)]
        out = chunk(0)
        for f in futures:
            out.extend(f.result())
        return out

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
