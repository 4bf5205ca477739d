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

Its arguments go early (:func:`hand_over_early`, right after the flags are parsed and checked, before the front end
imports torch, FastAPI and the tokenizer) when the model resolves in place; the core then builds its engine while
the front end imports (RESULTS.md, session 8).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pagoda.engine.core_proc import engine_args_to_dict, ipc_addresses, start_core_process

if TYPE_CHECKING:
    from pagoda.config import EngineArgs


@dataclass
class PrelaunchedCore:
    """An engine-core process started before the front end knew its arguments (replica 0's addresses).

    Invariant: the core gets its arguments at most once (:meth:`give_args`), early (:func:`hand_over_early`) or
    when :class:`~pagoda.engine.core_engines.CoreEngines` adopts it; a core never adopted is told to exit, or
    stopped if it had its arguments already (:meth:`discard`)."""

    proc: Any  # multiprocessing process
    conn: Any  # the pipe's send end, for (engine_args, log_level, num_clients) or None
    ipc_dir: str
    input_addr: str
    output_addr: str
    sent: tuple[dict[str, Any], int, int] | None = None  # the arguments it was given
    adopted: bool = False
    discarded: bool = False

    def give_args(self, engine_args: dict[str, Any], log_level: int, num_clients: int = 1) -> None:
        """Send the core its arguments (``num_clients``: API server processes, ``--api-server-count``); again with
        the same ones, nothing (they went early)."""
        if self.sent is not None:
            if self.sent != (engine_args, log_level, num_clients):
                raise RuntimeError("the early engine core was given other engine arguments than the server's")
            return
        self.sent = (engine_args, log_level, num_clients)
        self.conn.send(self.sent)
        self.conn.close()

    def adopt(self, engine_args: dict[str, Any], log_level: int, num_clients: int = 1) -> None:
        self.give_args(engine_args, log_level, num_clients)
        self.adopted = True

    def discard(self) -> None:
        """Unless adopted: tell the core to exit without starting an engine, or stop it if it is building one
        (idempotent)."""
        if self.adopted or self.discarded:
            return
        self.discarded = True
        if self.sent is None:
            try:
                self.conn.send(None)
                self.conn.close()
            except OSError:  # the core is gone already
                pass
        else:
            self.proc.terminate()
        shutil.rmtree(self.ipc_dir, ignore_errors=True)


def hand_over_early(early: PrelaunchedCore, engine_args: EngineArgs, log_level: int, num_clients: int = 1) -> bool:
    """Give the early core its arguments now, before the front end's own imports, when nothing the front end
    does before the launch can change what the core finds: one replica, and a model and tokenizer that resolve
    with no download, conversion or lock (:func:`pagoda.models.model_files.resolves_in_place`). Returns whether
    it did; otherwise the arguments go at the launch, as before."""
    from pagoda.models.model_files import resolves_in_place

    if engine_args.data_parallel_size != 1:
        return False
    if not resolves_in_place(engine_args.model, engine_args.load_format):
        return False
    if engine_args.tokenizer and not resolves_in_place(engine_args.tokenizer, "dummy"):
        return False
    early.give_args(replica_engine_args(engine_args), log_level, num_clients)
    return True


def replica_engine_args(engine_args: EngineArgs) -> dict[str, Any]:
    """The engine arguments each replica starts from: the front end's, as one engine (no data parallelism)."""
    args = engine_args_to_dict(engine_args)
    args["data_parallel_size"] = 1
    args["data_parallel_size_local"] = None
    return args


def prelaunch_core() -> PrelaunchedCore:
    ipc_dir = tempfile.mkdtemp(prefix="pagoda-ipc-")  # mode 0700: only this user can connect
    atexit.register(shutil.rmtree, ipc_dir, True)
    in_addr, out_addr = ipc_addresses(ipc_dir, 0)
    proc, conn = start_core_process(in_addr, out_addr)
    return PrelaunchedCore(proc, conn, ipc_dir, in_addr, out_addr)
