"""Ctrl-C during ``pagoda serve``'s start-up, before uvicorn handles signals: the process always ends (status 130).

Python turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread is, and during start-up that is often
inside a library's import or set-up. Some lose it: an import guarded by a broad ``except`` goes on (seen in
numpy's import chain), and pydantic turns it into a ``SchemaError`` while it builds a validator. Worse, an
exception raised in Python code that C++ called during an import (torch's extension loads ``torch.distributed``
from pybind11) ends in ``std::terminate``: the process dies of SIGABRT. So, from :func:`install` until
:func:`hand_over`:

- SIGINT sets a flag that no library can swallow;
- it raises ``KeyboardInterrupt`` only when no import is in progress on the main thread; during an import it
  raises nothing, and a helper thread delivers SIGINT again every :data:`RETRY_S` seconds until it lands
  outside every import;
- :func:`hand_over` (just before uvicorn takes the signals) raises ``KeyboardInterrupt`` if the flag is set, and
  the CLI's top level reads the flag to exit 130 from whatever error a library made of the interrupt.

The window opens as ``pagoda`` is first imported when the process is the ``pagoda`` command
(:func:`install_if_cli`: a Ctrl-C in msgspec's import, lost there, was seen to end in a segmentation fault later),
or when the CLI reads the ``serve`` command otherwise (``cli.main`` called from Python); the CLI closes it at once
for every other command.

Invariant: outside that window SIGINT's handler is Python's own ``signal.default_int_handler``, which asyncio's
runner (and so uvicorn) checks for before it installs its handler.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

RETRY_S = 0.05
"""How often a Ctrl-C deferred during an import is delivered again."""

_interrupted = False
_stop_retrying = threading.Event()
_retrier: threading.Thread | None = None


def _importing(frame: FrameType | None) -> bool:
    """Whether ``frame`` or a caller of it is importlib's import machinery (CPython names its frozen files so)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _retry() -> None:
    while not _stop_retrying.wait(RETRY_S):
        # a real signal (not _thread.interrupt_main): it also wakes a main thread blocked in a system call
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    global _interrupted, _retrier
    _interrupted = True
    if not _importing(frame):
        _stop_retrying.set()
        raise KeyboardInterrupt
    if _retrier is None:
        _retrier = threading.Thread(target=_retry, name="pagoda-ctrl-c", daemon=True)
        _retrier.start()


def install() -> None:
    """Start the window (from the main thread, while SIGINT has Python's default handler; otherwise a no-op)."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def install_if_cli() -> None:
    """:func:`install` if this process is the ``pagoda`` command (its console script, or ``python -m pagoda``);
    called from ``pagoda/__init__.py`` before its imports.

    Read from ``sys.orig_argv``, this process's own command line, not from ``sys.argv`` alone: a process that
    ``multiprocessing`` spawned (an API server, the engine core) is given the parent's ``sys.argv`` before it
    imports pagoda to unpickle its target, and has its own SIGINT policy. (``multiprocessing.parent_process()``
    cannot tell: it is still ``None`` while the target is unpickled.)"""
    main = sys.argv[0] if sys.argv else ""
    if (os.path.basename(main) == "pagoda" and main in sys.orig_argv[1:]) or (main == "-m" and _runs_module("pagoda")):
        install()


def _runs_module(name: str) -> bool:
    argv = sys.orig_argv
    return any(a == "-m" and b == name for a, b in zip(argv, argv[1:], strict=False))


def interrupted() -> bool:
    """Whether a Ctrl-C came during the window (whatever became of its ``KeyboardInterrupt``)."""
    return _interrupted


def hand_over() -> None:
    """End the window: no more retries, Python's default handler again, then ``KeyboardInterrupt`` if a Ctrl-C
    came meanwhile."""
    _stop_retrying.set()
    if _retrier is not None:
        _retrier.join()
    if signal.getsignal(signal.SIGINT) is _on_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _interrupted:
        raise KeyboardInterrupt
