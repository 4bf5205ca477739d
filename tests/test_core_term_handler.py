"""The engine core's SIGTERM handler (``core_proc._term_handler``): before the front end has sent the engine
arguments, a SIGTERM ends the process at once with status 0 and prints nothing, also where it lands inside a weakref
callback (the imports run them), whose exception Python would print as ignored and then go on; after that it raises
``_Terminated`` for the core's clean-up."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from pagoda.engine import core_proc

_CHILD = """
import gc, os, signal, sys, weakref
from pagoda.engine.core_proc import _term_handler
signal.signal(signal.SIGTERM, _term_handler([False]))

class Obj:
    pass

def cb(ref):  # the signal arrives while this callback runs
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):
        pass

o = Obj()
r = weakref.ref(o, cb)
del o
gc.collect()
print("still running", flush=True)
sys.exit(3)
"""


def test_sigterm_before_the_arguments_exits_quietly_even_inside_a_weakref_callback():
    r = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert r.stdout == "" and r.stderr == "", (r.stdout, r.stderr)


def test_sigterm_after_the_arguments_raises_terminated():
    given = [True]
    handler = _term_handler_restoring(given)
    with pytest.raises(core_proc._Terminated):
        handler(signal.SIGTERM, None)


def _term_handler_restoring(given: list[bool]):
    """The handler, with SIGTERM's disposition restored after it ran (it ignores a second SIGTERM)."""
    before = signal.getsignal(signal.SIGTERM)
    handler = core_proc._term_handler(given)

    def run(signum, frame):
        try:
            handler(signum, frame)
        finally:
            signal.signal(signal.SIGTERM, before)
    return run
