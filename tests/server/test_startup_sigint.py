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


IMPORTING_CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from pagoda.entrypoints import startup_sigint

    sys.path.insert(0, sys.argv[1])
    with open(os.path.join(sys.argv[1], "slow_import.py"), "w") as f:
        f.write("import os, signal, time\\n"
                "os.kill(os.getpid(), signal.SIGINT)\\n"
                "end = time.monotonic() + 0.5\\n"
                "while time.monotonic() < end:\\n"  # bytecodes run: an un-deferred handler would raise here
                "    pass\\n"
                "FINISHED = True\\n")
    startup_sigint.install()
    try:
        import slow_import
        time.sleep(30)  # a blocking system call: the retried SIGINT must wake it
        print("not interrupted")
    except KeyboardInterrupt:  # a module whose import was interrupted is not in sys.modules
        print("interrupted, import finished:", getattr(sys.modules.get("slow_import"), "FINISHED", False))
    try:
        startup_sigint.hand_over()
    except KeyboardInterrupt:
        print("hand_over raised it again")
""")


def test_ctrl_c_during_an_import_waits_for_the_import_to_end(tmp_path):
    """A ``KeyboardInterrupt`` raised in Python code that C++ called during an import kills the process
    (``std::terminate``, seen with torch's import): the handler raises none inside an import and delivers the
    Ctrl-C again once the import is over, even to a main thread then blocked in a system call."""
    proc = subprocess.run([sys.executable, "-c", IMPORTING_CHILD, str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.splitlines() == ["interrupted, import finished: True", "hand_over raised it again"], \
        proc.stdout + proc.stderr
    assert proc.returncode == 0 and not proc.stderr, proc.stderr


@pytest.mark.parametrize(("how", "ours"), [("script", True), ("copied-argv", False), ("-c", False),
                                          ("/venv/bin/pytest", False)])
def test_the_window_opens_at_import_only_for_the_pagoda_command(tmp_path, how, ours):
    """The ``pagoda`` console script opens the window before ``pagoda``'s own imports (a Ctrl-C lost in msgspec's
    import was seen to crash the server later); a program that imports pagoda keeps its own handler, and so does
    a process that only carries the command's ``sys.argv`` (``copied-argv``: what ``multiprocessing`` gives a
    spawned child)."""
    argv0 = {"script": str(tmp_path / "pagoda"), "copied-argv": "/venv/bin/pagoda"}.get(how, how)
    child = textwrap.dedent(f"""
        import signal, sys
        sys.argv = [{argv0!r}, "serve"]
        import pagoda
        from pagoda.entrypoints import startup_sigint
        print(signal.getsignal(signal.SIGINT) is startup_sigint._on_sigint)
    """)
    if how == "script":  # run as a file named pagoda, as the console script is
        (tmp_path / "pagoda").write_text(child, encoding="utf-8")
        cmd = [sys.executable, str(tmp_path / "pagoda"), "serve"]
    else:
        cmd = [sys.executable, "-c", child]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == str(ours), proc.stdout + proc.stderr


def _spawned_child_handler_is_ours(queue, _imports_pagoda):
    import signal

    from pagoda.entrypoints import startup_sigint
    queue.put(signal.getsignal(signal.SIGINT) is startup_sigint._on_sigint)


def test_a_spawned_child_of_the_pagoda_command_keeps_pythons_handler():
    """A ``multiprocessing`` child (API server, engine core) imports pagoda with the parent's ``sys.argv``: it
    must not open the window (no hand-over runs there before its own SIGINT policy)."""
    child = textwrap.dedent("""
        import multiprocessing, sys
        here = sys.argv[1]
        sys.argv = ["/venv/bin/pagoda", "serve"]
        sys.path.insert(0, here)
        import test_startup_sigint as t
        if __name__ == "__main__":
            ctx = multiprocessing.get_context("spawn")
            q = ctx.Queue()
            from pagoda.entrypoints import startup_sigint
            # a pagoda function as an argument: the child imports pagoda while it unpickles its target, as the
            # engine core does, when multiprocessing.parent_process() is still None
            p = ctx.Process(target=t._spawned_child_handler_is_ours, args=(q, startup_sigint.interrupted))
            p.start()
            print(q.get(timeout=60))
            p.join()
    """)
    proc = subprocess.run([sys.executable, "-c", child, os.path.dirname(os.path.abspath(__file__))],
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stdout + proc.stderr
