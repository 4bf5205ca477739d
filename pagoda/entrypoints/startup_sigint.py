"""Ctrl-C during ``pagoda serve``'s start-up, before uvicorn handles signals: the process always ends (status 130).

Python turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread is, and during start-up that is often
inside a library's import or set-up. Some of them lose it: an import guarded by a broad ``except`` goes on (seen
in numpy's import chain), and pydantic turns it into a ``SchemaError`` while it builds a validator. The server
would then start and serve as if Ctrl-C had never been pressed. So, from :func:`install` until
:func:`hand_over`, SIGINT also sets a flag that no library can swallow; :func:`hand_over` (just before uvicorn
takes the signals) raises ``KeyboardInterrupt`` again if the flag is set, and the CLI's top level reads the flag
to exit 130 from whatever error a library made of the interrupt.

Invariant: outside that window SIGINT's handler is Python's own ``signal.default_int_handler``, which asyncio's
runner (and so uvicorn) checks for before it installs its handler.
"""

from __future__ import annotations

import signal
from types import FrameType

_interrupted = False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def install() -> None:
    """Start the window (from the main thread, while SIGINT has Python's default handler; otherwise a no-op)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def interrupted() -> bool:
    """Whether a Ctrl-C came during the window (whatever became of its ``KeyboardInterrupt``)."""
    return _interrupted


def hand_over() -> None:
    """End the window: Python's default handler again, then ``KeyboardInterrupt`` if a Ctrl-C came meanwhile."""
    if signal.getsignal(signal.SIGINT) is _on_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _interrupted:
        raise KeyboardInterrupt
