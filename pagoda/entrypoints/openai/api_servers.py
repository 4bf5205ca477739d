"""Several API server processes in front of one engine core (``--api-server-count N``, vLLM's flag).

Why: one Python process serializes every request's HTTP parsing, tokenization, output processing, detokenization
and SSE writes; at a few hundred concurrent streams it, not the engine, sets the time to first token (RESULTS.md,
H200 session 17). N processes share that work.

Shape: the process ``pagoda serve`` runs is API server 0. It binds the listening socket, starts the engine core as
always (telling it there are N clients) and, once the core is spawned, starts API servers 1..N-1
(:class:`ApiServerProcesses`), which serve on the same listening socket (the kernel hands each new connection to
one of the processes waiting in ``accept``). Each talks to the core over its own socket pair
(:class:`pagoda.engine.core_proc.Attach`); the core sends each request's outputs to the process that sent it.

With ``--data-parallel-size M`` every API server talks to all M replicas and balances its own requests over them
(:class:`pagoda.engine.dp_lb.LoadBalancer`: the load each replica reports with every step, which every API server
receives, plus the requests this process sent it since that report).

``--enable-server-load-tracking`` is refused (:func:`check_api_server_count`, before anything loads): ``/load``
would count one process's requests only.

``/metrics`` answers the same from every process: its counters, histograms and gauges live in
prometheus_client's multiprocess files (:func:`pagoda.entrypoints.openai.metrics.enable_multiprocess`), summed
over the processes; the engine-level series (running / waiting requests, KV-cache usage, token counters) are fed
by API server 0 only, which also writes the periodic stats log line.

Lifetime: an API server 1.. that dies takes the server down (exit 1), as the engine core's death does; API server 0
dying takes the others with it (``PR_SET_PDEATHSIG``). On SIGTERM, API server 0 passes it on, waits for the others
to drain (``--shutdown-grace-period``), then stops the core.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import time
from typing import Any

from pagoda.engine.core_proc import Attach
from pagoda.engine.spawn_sigint import set_sigint_policy, sigint_blocked

logger = logging.getLogger("pagoda.server")

FLAG = "--api-server-count"


def check_api_server_count(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` naming the flag when ``--api-server-count`` cannot be honoured."""
    n = getattr(args, "api_server_count", 1)
    if n < 1:
        raise ValueError(f"{FLAG} must be at least 1, got {n}.")
    if n == 1:
        return
    if getattr(args, "enable_server_load_tracking", False):
        raise ValueError(f"{FLAG} {n} cannot serve --enable-server-load-tracking: /load would count the requests of "
                         f"the one process that answers it; drop one of the two flags.")


class ApiServerProcesses:
    """API servers 1..N-1, children of API server 0. Invariant: started at most once; ``procs[k-1]`` is client
    ``k``."""

    def __init__(self, args: argparse.Namespace, sock: socket.socket, metrics_dir: str) -> None:
        # what the children get (pickled): the flags, without API server 0's early core
        self.args = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "prelaunched_core"})
        self.sock = sock
        self.metrics_dir = metrics_dir
        self.procs: list[Any] = []
        self.ready_conns: list[Any] = []  # the read ends of pipes on which each says it serves
        self._ready: set[int] = set()
        self.stopping = False

    @classmethod
    def for_server(cls, args: argparse.Namespace, sock: socket.socket | None) -> ApiServerProcesses | None:
        """In each API server process of several: switch the metrics to multiprocess mode (before any metric
        exists here). Returns the other processes to start when this is API server 0, else None."""
        if getattr(args, "api_server_count", 1) == 1:
            return None
        from pagoda.entrypoints.openai.metrics import enable_multiprocess

        first = getattr(args, "attach", None) is None
        metrics_dir = enable_multiprocess(create=first)
        if not first:
            return None
        if sock is None:
            raise ValueError(f"{FLAG} above 1 needs the listening socket bound before the server starts")
        return cls(args, sock, metrics_dir)

    def clean_up(self) -> None:
        """API server 0, after the others have stopped: remove the metrics directory."""
        shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def start(self, ipc_dir: str, core_pids: tuple[int, ...]) -> None:
        """Spawn the others (``pagoda.engine.async_llm.AsyncLLM``'s ``on_launched``: the core is spawned)."""
        if self.procs:
            return
        ctx = multiprocessing.get_context("spawn")
        n = self.args.api_server_count
        for client in range(1, n):
            recv, send = ctx.Pipe(duplex=False)  # a pipe, not an Event: no semaphores left to a resource tracker
            proc = ctx.Process(target=run_api_server_process, name=f"pagoda-api-server-{client}",
                               args=(self.args, self.sock, Attach(ipc_dir, core_pids, client), os.getpid(), send),
                               daemon=False)
            with sigint_blocked():  # it takes Ctrl-C only once it ignores it (pagoda.engine.spawn_sigint)
                proc.start()
            send.close()
            self.procs.append(proc)
            self.ready_conns.append(recv)
        logger.info("started %d more API server processes (pids %s) on the same socket", n - 1,
                    ", ".join(str(p.pid) for p in self.procs))

    def all_ready(self) -> bool:
        """Every API server 1.. serves (``/health`` of API server 0 answers 503 until then)."""
        for k, conn in enumerate(self.ready_conns):
            if k not in self._ready:
                try:
                    if conn.poll():
                        conn.recv()
                        self._ready.add(k)
                except (EOFError, OSError):  # it exited before it served: the watch ends the server
                    pass
        return len(self._ready) == len(self.ready_conns) > 0

    def first_dead(self) -> tuple[int, int | None] | None:
        """(client, exit code) of an API server that exited while nobody asked it to, if any."""
        if self.stopping:
            return None
        for k, p in enumerate(self.procs, start=1):
            if not p.is_alive():
                return k, p.exitcode
        return None

    def signal_stop(self) -> None:
        """Ask each to stop (SIGTERM: finish in-flight requests within the grace period, then exit)."""
        self.stopping = True
        for p in self.procs:
            if p.is_alive():
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    async def stop(self, grace_s: float) -> None:
        """:meth:`signal_stop`, wait up to ``grace_s`` (+5 s) for them to exit, then kill the rest."""
        self.signal_stop()
        deadline = time.monotonic() + max(0.0, grace_s) + 5.0
        while any(p.is_alive() for p in self.procs) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for p in self.procs:
            if p.is_alive():
                logger.warning("API server process %d did not exit in time; killing it", p.pid)
                p.kill()
            p.join(timeout=1)
        from pagoda.entrypoints.openai.metrics import forget_process

        for p in self.procs:
            forget_process(p.pid)

    async def watch(self, on_death: Any) -> None:
        """Call ``on_death(reason)`` once if an API server exits unasked."""
        while True:
            await asyncio.sleep(0.5)
            dead = self.first_dead()
            if dead is not None:
                client, code = dead
                on_death(f"API server process {client} exited (exit code {code})")
                return


def run_api_server_process(args: argparse.Namespace, sock: socket.socket, attach: Attach, parent_pid: int,
                           ready: Any) -> None:
    """Entry point of API server ``attach.client``: the same server as API server 0, attached to its core. It
    accepts connections only once its engine front end is ready, and then says so on ``ready`` (a pipe's send
    end)."""
    from pagoda.engine.core_proc import _set_parent_death_signal, set_process_name

    # Ctrl-C goes to the whole process group: API server 0 stops this one (SIGTERM); uvicorn takes SIGINT again
    # once it runs
    set_sigint_policy(signal.SIG_IGN)
    _set_parent_death_signal()
    set_process_name(f"pagoda-api{attach.client}")
    if os.getppid() != parent_pid:  # API server 0 died before prctl took effect
        return
    level = getattr(logging, str(getattr(args, "log_level", "INFO")).upper(), logging.INFO)
    logging.basicConfig(level=level, format=f"%(levelname)s %(asctime)s %(name)s[api{attach.client}]: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("pagoda").setLevel(level)
    args.attach = attach
    args.ready_conn = ready
    from pagoda.entrypoints.openai.api_server import run_server

    run_server(args, sock)
