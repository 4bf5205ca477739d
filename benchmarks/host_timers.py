"""Thread-CPU timers around methods, for the host-overhead benches (``spec_host_overhead.py``,
``structured_host_overhead.py``): ``wrap(obj, name, label)`` replaces a method with a timed one.

``exclusive``: a wrapped call inside another is charged to its own label only (otherwise each label counts its
calls' whole time, nested wrapped calls included). ``restore`` puts the originals back.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

clock = time.thread_time


class Timers:
    def __init__(self, exclusive: bool = False) -> None:
        self.t: dict[str, float] = defaultdict(float)
        self.exclusive = exclusive
        self._saved: list[tuple[object, str, Callable]] = []
        self._inner: list[float] = []  # per open call: the time of the wrapped calls inside it

    def wrap(self, obj, name: str, label: str) -> None:
        fn: Callable = getattr(obj, name)
        t, inner, exclusive = self.t, self._inner, self.exclusive

        def timed(*a, **kw):
            inner.append(0.0)
            t0 = clock()
            try:
                return fn(*a, **kw)
            finally:
                dt = clock() - t0
                nested = inner.pop()
                t[label] += dt - nested if exclusive else dt
                if inner:
                    inner[-1] += dt

        self._saved.append((obj, name, fn))
        setattr(obj, name, timed)

    def restore(self) -> None:
        for obj, name, fn in reversed(self._saved):
            setattr(obj, name, fn)
        self._saved.clear()
