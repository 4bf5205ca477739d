"""Ctrl-C and the processes ``pagoda serve`` spawns (the engine core, API servers 1..).

A terminal's Ctrl-C reaches the whole process group. A spawned child that gets it while it starts (Python's start-up,
then the imports it needs to unpickle its target) raises ``KeyboardInterrupt`` wherever it is: a traceback, or a
SIGABRT when that is inside torch's import (see :mod:`pagoda.entrypoints.startup_sigint`), before its own SIGINT
policy is in place. So the parent spawns it with SIGINT blocked (:func:`sigint_blocked`: the blocked mask survives
fork and exec), and the child unblocks it once its policy is set (:func:`set_sigint_policy`). A Ctrl-C meanwhile
stays pending and then meets that policy. The parent decides when its children stop either way.

Invariant: the parent's own mask is back as it was when :func:`sigint_blocked` ends (a Ctrl-C in that window is
delivered to the parent then).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

_CAN_MASK = hasattr(signal, "pthread_sigmask")


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Run the body (a ``Process.start()``) with SIGINT blocked in this thread; the child inherits the block."""
    if not _CAN_MASK:
        yield
        return
    from multiprocessing import resource_tracker

    # a spawn starts multiprocessing's resource tracker first if it is not running, and that start ends by
    # *unblocking* SIGINT: start it before the block
    resource_tracker.ensure_running()
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def set_sigint_policy(handler: Callable[[int, Any], Any] | int) -> None:
    """In a child spawned under :func:`sigint_blocked`: install ``handler`` (``signal.SIG_IGN``, say), then take
    SIGINT again."""
    signal.signal(signal.SIGINT, handler)
    if _CAN_MASK:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
