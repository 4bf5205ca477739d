"""A Ctrl-C during ``pagoda serve``'s start-up ends the process even when a library loses or converts the
``KeyboardInterrupt`` (pagoda/entrypoints/startup_sigint.py). The libraries' windows are too short to hit on
purpose, so the child process stands in for them: it sends itself SIGINT inside the parser's construction and
swallows (or converts) the interrupt there, as numpy's import chain and pydantic's validator build were seen to."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from server_utils import free_port

CHILD = textwrap.dedent("""
    import os, signal, sys
    import pagoda.entrypoints.cli as cli

    real = cli.build_parser
    mode = sys.argv[1]

    def build_parser():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
        except BaseException:
            if mode == "convert":
                raise ValueError("a library's own error made of the interrupt") from None
        return real()

    cli.build_parser = build_parser
    sys.argv = ["pagoda", "serve", *sys.argv[2:]]
    cli.main()
""")


@pytest.mark.parametrize("mode", ["swallow", "convert"])
def test_lost_ctrl_c_during_start_up_still_ends_the_server(tiny_model_dir, mode):
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, str(tiny_model_dir), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PAGODA_PRELAUNCH_CORE": "0"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 130, out
    assert "Traceback" not in out and "error:" not in out, out
    assert "Started server process" not in out and "engine core ready" not in out, out


def test_handler_outside_the_window_is_pythons_own():
    """asyncio's runner (uvicorn's) installs its Ctrl-C handler only over ``signal.default_int_handler``."""
    from pagoda.entrypoints import startup_sigint

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    startup_sigint.install()
    assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    startup_sigint.hand_over()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert not startup_sigint.interrupted()
