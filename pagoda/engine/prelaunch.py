"""``pagoda serve`` starts its engine core before its own imports, so the two processes' imports overlap.

Why: the API server process spends seconds importing torch, transformers and FastAPI and parsing its flags
before :meth:`pagoda.engine.async_llm.AsyncLLM.start` spawns the core, which then spends as long importing
the same modules before it builds the engine (RESULTS.md, H200, 8B shape: 6.3 s in the API process before
the spawn; the core's imports 4.3 s).

How: the CLI's first step for ``serve`` (before building its parser, which imports torch) creates the
private 0700 ipc dir and spawns the core (:func:`pagoda.engine.core_proc.start_core_process`), which connects
to replica 0's addresses and imports its modules, then waits for its engine arguments. The server's
:class:`~pagoda.engine.core_engines.CoreEngines` adopts it (binds those addresses, sends the arguments) when it
runs one replica with no per-replica environment; otherwise, or when the server stops before that, the early
core is told to exit (``discard``) and never starts an engine. ``PAGODA_PRELAUNCH_CORE=0`` turns it off.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from pagoda.engine.core_proc import ipc_addresses, start_core_process


@dataclass
class PrelaunchedCore:
    """An engine-core process started before the front end knew its arguments (replica 0's addresses)."""

    proc: Any  # multiprocessing process
    conn: Any  # the pipe's send end, for (engine_args, log_level) or None
    ipc_dir: str
    input_addr: str
    output_addr: str
    used: bool = False

    def give_args(self, engine_args: dict[str, Any], log_level: int) -> None:
        self.used = True
        self.conn.send((engine_args, log_level))
        self.conn.close()

    def discard(self) -> None:
        """Tell the core to exit without starting an engine (idempotent; nothing once it has been used)."""
        if self.used:
            return
        self.used = True
        try:
            self.conn.send(None)
            self.conn.close()
        except OSError:  # the core is gone already
            pass
        shutil.rmtree(self.ipc_dir, ignore_errors=True)


def prelaunch_core() -> PrelaunchedCore:
    ipc_dir = tempfile.mkdtemp(prefix="pagoda-ipc-")  # mode 0700: only this user can connect
    atexit.register(shutil.rmtree, ipc_dir, True)
    in_addr, out_addr = ipc_addresses(ipc_dir, 0)
    proc, conn = start_core_process(in_addr, out_addr)
    return PrelaunchedCore(proc, conn, ipc_dir, in_addr, out_addr)
