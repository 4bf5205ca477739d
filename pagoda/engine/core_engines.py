"""The engine-core processes behind one front end: one, or one per data-parallel replica.

With ``--data-parallel-size N`` the front end (:class:`pagoda.engine.async_llm.AsyncLLM`) starts
N engine cores, each a full replica (its own model copy, KV cache and scheduler, and with
``--tensor-parallel-size`` its own tensor-parallel group: world layout DP x TP, as vLLM's). Replica
``i`` talks to the front end over its own socket pair ``input_i`` / ``output_i`` in one private
0700 temp dir (:mod:`pagoda.engine.core_proc` runs unchanged in each).

Devices (:func:`replica_envs`): on CUDA replica ``i`` sees only its own ``tensor_parallel_size`` x
``pipeline_parallel_size`` devices through ``CUDA_VISIBLE_DEVICES`` (the i-th run of the ids the server
itself sees), so its rank r runs on its own ``cuda:r``. On the CPU, unless the user set
``OMP_NUM_THREADS``, the CPUs this process may use are split evenly between the replicas (each gets at
least one thread).

Each replica's process is started with ``data_parallel_size`` 1 in its arguments: it is one engine
and knows nothing of the others; balancing, routing and the summed stats live in the front end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from pagoda.config import EngineArgs, EngineConfig
from pagoda.engine.core_proc import Attach, RemoteCoreProcess, ipc_addresses, start_core_process
from pagoda.engine.messages import CoreFailed, Ready, SchedulerStats, Shutdown, encoder, output_decoder
from pagoda.engine.prelaunch import PrelaunchedCore, replica_engine_args

logger = logging.getLogger("pagoda")

DP_FLAG = "--data-parallel-size"
_INPUT_CONNECT_TIMEOUT_S = 30.0
"""How long a core that sent ``Ready`` may take to connect its input socket (ZMQ retries every 100-200 ms)."""


def check_data_parallel(dp: int, tp: int, device: torch.device, pp: int = 1) -> None:
    """Raise ``ValueError`` naming the flag when ``dp`` replicas of ``tp x pp`` ranks cannot run on ``device``
    (``EngineArgs.validate`` has checked ``dp >= 1``)."""
    if dp == 1 or device.type != "cuda":
        return
    if device.index is not None:
        raise ValueError(f"{DP_FLAG} {dp}: each replica gets its own devices through CUDA_VISIBLE_DEVICES; use "
                         f"--device cuda (or auto), not --device {device}.")
    visible = torch.cuda.device_count()
    if dp * tp * pp > visible:
        stages = f" x --pipeline-parallel-size {pp}" if pp > 1 else ""
        raise ValueError(f"{DP_FLAG} {dp} x --tensor-parallel-size {tp}{stages} needs {dp * tp * pp} CUDA devices; "
                         f"only {visible} are visible (CUDA_VISIBLE_DEVICES). One replica needs --tensor-parallel-size"
                         f"{stages} devices.")


def replica_envs(dp: int, tp: int, device: torch.device) -> list[dict[str, str]]:
    """Environment added to replica i's process (``check_data_parallel`` has passed); ``tp``: devices per replica
    (tensor x pipeline size)."""
    if dp == 1:
        return [{}]
    if device.type == "cuda":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = ([d.strip() for d in visible.split(",") if d.strip()] if visible is not None
               else [str(i) for i in range(torch.cuda.device_count())])
        return [{"CUDA_VISIBLE_DEVICES": ",".join(ids[i * tp:(i + 1) * tp])} for i in range(dp)]
    from pagoda.worker.cpu_threads import THREADS_KNOB, usable_cpus, user_chose_threads

    if user_chose_threads():
        return [{} for _ in range(dp)]
    return [{THREADS_KNOB: str(max(1, usable_cpus() // dp))} for _ in range(dp)]


def replica_rank_env(dp: int, index: int) -> dict[str, str]:
    """Environment naming replica ``index`` to its processes (none without data parallelism). Its model runner seeds
    the global RNG, which unseeded sampling draws from, with ``--seed + index``: identical concurrent unseeded
    requests on two replicas would otherwise draw the same noise. Dummy weights (their own generator) and a
    request's own ``seed`` (its own generator) stay the same on every replica."""
    return {"PAGODA_DP_RANK": str(index)} if dp > 1 else {}


@contextlib.contextmanager
def _environ(extra: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``extra`` while a child process is spawned (it copies the environment then)."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@dataclass
class CoreEngine:
    """One engine-core process and the front end's two sockets to it."""

    index: int
    proc: Any  # multiprocessing process
    in_sock: Any  # zmq PUSH (the front end sends)
    out_sock: Any  # zmq.asyncio PULL (the front end receives)
    ready: Ready | None = None
    last_msg: float = field(default_factory=time.monotonic)
    stats: SchedulerStats = field(default_factory=SchedulerStats)


class CoreEngines:
    """The engine cores of one front end; ``engines[i]`` is data-parallel replica ``i``."""

    def __init__(self, engine_args: EngineArgs, cfg: EngineConfig, log_level: int, num_clients: int = 1,
                 attach: Attach | None = None) -> None:
        """``num_clients``: API server processes the cores will serve (``--api-server-count``; this one is client
        0 and starts them); ``attach``: this front end is another of those clients (see :class:`Attach`)."""
        self.engine_args = engine_args
        self.cfg = cfg
        self.log_level = log_level
        self.num_clients = num_clients
        self.attach = attach
        self.size = engine_args.data_parallel_size
        self.engines: list[CoreEngine] = []
        self._ipc_dir: str | None = None
        self._zctx: Any = None
        self._azctx: Any = None
        self._dec = output_decoder()
        self._stopped = False
        self._discarded: Any = None  # a prelaunched core told to exit (a replica needs its own environment)

    def name(self, index: int) -> str:
        """How messages name replica ``index`` (unchanged wording without data parallelism)."""
        if self.size == 1:
            return "engine core"
        return f"engine core {index} (data-parallel replica {index} of {self.size})"

    def launch(self, prelaunched: PrelaunchedCore | None = None) -> None:
        """Bind every socket pair and spawn every replica (the caller waits with :meth:`wait_ready`);
        ``prelaunched``: a core started early (:mod:`pagoda.engine.prelaunch`), adopted as the only replica when
        it needs no environment of its own, else told to exit."""
        import atexit

        import zmq
        import zmq.asyncio

        if self.attach is not None:
            if prelaunched is not None:
                prelaunched.discard()
            self._attach(self.attach)
            return
        envs = replica_envs(self.size, self.cfg.tensor_parallel_size * self.cfg.pipeline_parallel_size, self.cfg.device)
        early = prelaunched if prelaunched is not None and self.size == 1 and not envs[0] else None
        if prelaunched is not None and early is None:
            prelaunched.discard()
            self._discarded = prelaunched.proc
        if early is not None:
            self._ipc_dir = early.ipc_dir
        else:
            self._ipc_dir = tempfile.mkdtemp(prefix="pagoda-ipc-")  # mode 0700: only this user can connect
            atexit.register(shutil.rmtree, self._ipc_dir, True)
        self._zctx = zmq.Context()
        self._azctx = zmq.asyncio.Context()
        args = replica_engine_args(self.engine_args)
        for i in range(self.size):
            in_addr, out_addr = ipc_addresses(self._ipc_dir, i)
            in_sock, out_sock = self._bind(in_addr, out_addr)
            try:
                if early is not None:
                    proc = early.proc
                    early.adopt(args, self.log_level, self.num_clients)
                else:
                    with _environ({**envs[i], **replica_rank_env(self.size, i)}):
                        proc, conn = start_core_process(in_addr, out_addr, self.log_level)
                    conn.send((args, self.log_level, self.num_clients))
                    conn.close()
            except BaseException:  # not yet in self.engines: closed here, or stop()'s ctx.term() would wait on them
                in_sock.close(linger=0)
                out_sock.close(linger=0)
                raise
            if envs[i]:
                logger.info("%s: pid %d, %s", self.name(i), proc.pid, " ".join(f"{k}={v}" for k, v in envs[i].items()))
            self.engines.append(CoreEngine(i, proc, in_sock, out_sock))

    @property
    def ipc_dir(self) -> str | None:
        return self._ipc_dir

    def _bind(self, in_addr: str, out_addr: str) -> tuple[Any, Any]:
        """This front end's (PUSH, PULL) sockets to one core, bound at these addresses."""
        import zmq

        in_sock = self._zctx.socket(zmq.PUSH)
        out_sock = self._azctx.socket(zmq.PULL)
        try:  # a socket left open by a failed bind would block release()'s ctx.term() forever
            in_sock.setsockopt(zmq.SNDHWM, 0)
            in_sock.setsockopt(zmq.LINGER, 0)
            in_sock.bind(in_addr)
            out_sock.setsockopt(zmq.RCVHWM, 0)
            out_sock.setsockopt(zmq.LINGER, 0)
            out_sock.bind(out_addr)
        except BaseException:
            in_sock.close(linger=0)
            out_sock.close(linger=0)
            raise
        return in_sock, out_sock

    def _attach(self, attach: Attach) -> None:
        import zmq
        import zmq.asyncio

        self._ipc_dir = attach.ipc_dir
        self._zctx = zmq.Context()
        self._azctx = zmq.asyncio.Context()
        if len(attach.core_pids) != self.size:
            raise ValueError(f"attached to {len(attach.core_pids)} engine cores, expected {self.size} (one per "
                             f"data-parallel replica)")
        for i, pid in enumerate(attach.core_pids):
            in_sock, out_sock = self._bind(*ipc_addresses(attach.ipc_dir, i, attach.client))
            self.engines.append(CoreEngine(i, RemoteCoreProcess(pid), in_sock, out_sock))

    async def wait_ready(self) -> list[Ready]:
        """Every replica's ``Ready``; the first that fails to start fails them all."""
        tasks = [asyncio.create_task(self._wait_one(e)) for e in self.engines]
        try:
            readies = await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
        for e, r in zip(self.engines, readies, strict=True):
            e.ready = r
        self._reap_discarded()
        return list(readies)

    def _reap_discarded(self) -> None:
        """Reap the discarded prelaunched core (it exits as soon as it reads that it is not needed, nearly always
        before the replicas are ready; :meth:`first_dead`, the watchdog's tick, tries again): no ``<defunct>`` child
        stays for the server's lifetime. Never blocks."""
        if self._discarded is not None and not self._discarded.is_alive():  # is_alive() reaps an exited child
            self._discarded = None

    async def _wait_one(self, e: CoreEngine) -> Ready:
        import zmq

        dead = False
        while True:
            if await e.out_sock.poll(500 if not dead else 1000, zmq.POLLIN):
                msg = self._dec.decode(await e.out_sock.recv())
                if isinstance(msg, Ready):
                    await self._wait_input_connected(e)
                    return msg
                if isinstance(msg, CoreFailed):
                    raise RuntimeError(f"{self.name(e.index)} failed to start: {msg.message}")
                continue
            if dead:
                raise RuntimeError(f"{self.name(e.index)} exited with code {e.proc.exitcode} while starting; see the "
                                   f"log above")
            # A core that failed sends CoreFailed (its reason) and exits: the exit may be seen before the message
            # is read, so look once more before reporting only the exit code.
            dead = not e.proc.is_alive()

    async def _wait_input_connected(self, e: CoreEngine) -> None:
        """Return once ``e``'s input socket has a peer: until then a non-blocking send fails (``zmq.Again``) and
        the front end would take the core for dead.

        Why: the core *connects* both sockets and ZMQ retries a connect every 100-200 ms until the address is bound.
        A prelaunched core connects before the front end binds; its ``Ready``, queued on its output side, can arrive
        while its input connect still waits for the next retry (seen: a request 3-90 ms after ``Ready`` got
        ``Again``, so the server answered 503 ``engine_dead`` to its first request)."""
        import zmq

        deadline = time.monotonic() + _INPUT_CONNECT_TIMEOUT_S
        while not e.in_sock.poll(0, zmq.POLLOUT):
            if not e.proc.is_alive():
                raise RuntimeError(f"{self.name(e.index)} exited with code {e.proc.exitcode} right after it started; "
                                   f"see the log above")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name(e.index)} was ready but did not connect to the front end's input "
                                   f"socket within {_INPUT_CONNECT_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.005)

    def first_dead(self) -> CoreEngine | None:
        """A replica whose process has exited, if any."""
        self._reap_discarded()
        return next((e for e in self.engines if not e.proc.is_alive()), None)

    async def stop(self) -> None:
        """Ask every replica to stop (``Shutdown``), then terminate / kill those still running; release sockets."""
        import zmq

        if self._stopped:
            return
        self._stopped = True
        enc = encoder()
        live = [e for e in self.engines if e.proc.is_alive()] if self.attach is None else []
        for e in live:
            if e.ready is None:  # still starting: it reads no message before Ready (its loop has not begun), and
                e.proc.terminate()  # SIGTERM stops a starting core cleanly (no 5 s wait for a Shutdown it never reads)
                continue
            with contextlib.suppress(Exception):
                e.in_sock.send(enc.encode(Shutdown()), flags=zmq.NOBLOCK)
        for step in ("wait", "terminate", "kill"):
            deadline = time.monotonic() + (5.0 if step == "wait" else 2.0)
            while any(e.proc.is_alive() for e in live) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            alive = [e for e in live if e.proc.is_alive()]
            if not alive:
                break
            if step == "wait":
                if told := [e for e in alive if e.ready is not None]:
                    logger.warning("%s did not stop within 5 s of Shutdown; terminating it",
                                   ", ".join(self.name(e.index) for e in told))
                for e in alive:
                    e.proc.terminate()
            elif step == "terminate":
                for e in alive:
                    e.proc.kill()
        for e in live:
            e.proc.join(timeout=1)
        self.release()

    def release(self) -> None:
        """Close the sockets and terminate the ZMQ contexts now (idempotent), without waiting for the replicas:
        what :meth:`stop` ends with, and what a stop cut short (its task cancelled when an event loop ended) must
        still do. A context left to the garbage collector with open sockets blocks in ``term()`` forever; a replica
        still running is terminated (it was sent ``Shutdown`` first)."""
        self._stopped = True
        if self.attach is None:
            for e in self.engines:
                if e.proc.is_alive():
                    e.proc.terminate()
        for e in self.engines:
            e.in_sock.close(linger=0)
            e.out_sock.close(linger=0)
        for ctx in (self._zctx, self._azctx):
            if ctx is not None:
                ctx.term()
        self._zctx = self._azctx = None
        if self._ipc_dir and self.attach is None:
            shutil.rmtree(self._ipc_dir, ignore_errors=True)
