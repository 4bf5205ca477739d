"""The engine core's side of its ranks: start the others, send each step's inputs, watch them live.

The process that runs the engine core is one rank: tensor rank 0 of the last pipeline stage (it schedules,
and samples from its full-vocabulary logits); with one stage that is global rank 0. The other ranks are
started by an executor: :class:`MultiprocExecutor` (``--distributed-executor-backend mp``, the default:
fresh interpreters on this machine, ``python -m pagoda.distributed.worker``, like multiprocessing's
``spawn`` but not its children: the engine core may itself be a daemon process, which multiprocessing
forbids to have children) or :class:`~pagoda.distributed.ray_executor.RayExecutor` (Ray actors). Either
sends every rank the same msgpack frames (:mod:`pagoda.distributed.messages`); tensors move only through
torch.distributed (collectives within a stage, send/recv between stages).

Failure: before each step the executor checks that every worker still runs; a worker that dies during a
step breaks the collective (gloo: its sockets close; NCCL: the group's timeout), and the engine core turns
that into :class:`WorkerDied` with the worker's own error when it sent one. A rank that is stuck, not dead (a hung
device, a paused or starved process), makes the others' collectives time out after ``PAGODA_DIST_TIMEOUT_S``:
that :class:`WorkerDied` names the step, the limit, the ranks that stayed silent and the variable that raises it.
Workers exit on :class:`StopWorker`, when the engine's connection closes, or when their parent process is gone
(:func:`pagoda.distributed.worker.watch_parent`; not when the thread that started them ends).

A worker that dies while the engine core waits in a collective for it can leave the core blocked for good: NCCL
does not notice a dead peer (a lazily made communicator waits in its init, a graph-replayed all-reduce has no
timeout). So :class:`MultiprocExecutor` runs a monitor thread: a worker found dead that the engine core's own
thread has not reported within :data:`DEATH_GRACE_S` is passed to the handler of :func:`set_death_handler` (the
engine-core process sends ``CoreFailed`` naming the rank and exits), or logged when there is none.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import torch.distributed as dist

from pagoda import envs
from pagoda.config import EngineConfig
from pagoda.distributed import messages as m
from pagoda.distributed.config_codec import encode_config
from pagoda.distributed.parallel_state import TPGroup, destroy_tp_group, init_world, make_tp_group
from pagoda.errors import EngineFatalError
from pagoda.worker.input_batch import StepInputs

logger = logging.getLogger("pagoda")

_POLL_S = 0.1
DEATH_GRACE_S = 5.0
"""How long a dead worker may go unreported by the engine core's own thread before the monitor acts (a gloo
collective fails at once, and :meth:`Executor.explain` waits :attr:`Executor.explain_wait_s` for the exit)."""
_MONITOR_POLL_S = 0.2
_death_handler: Callable[[str], object] | None = None


def set_death_handler(handler: Callable[[str], object] | None) -> None:
    """What the monitor of every later :class:`MultiprocExecutor` of this process calls, on its own thread, with
    the message naming a dead worker that the engine core did not report (None: log it only). With a handler the
    monitor first kills the other workers and removes the rendezvous folder: the handler is expected to end the
    process (its engine is lost); the monitor stops after calling it."""
    global _death_handler
    _death_handler = handler


class WorkerDied(EngineFatalError):
    """A worker rank exited or failed; the engine cannot continue."""


def is_timeout(error: BaseException | str) -> bool:
    """Whether a distributed error is torch.distributed's timeout (gloo: "Timed out waiting 4000ms", the
    rendezvous store: "... timeout ...", NCCL's watchdog: "... before timing out"), not a peer's death."""
    return re.search(r"tim(ed|ing)[ _]?out|timeout", str(error), re.IGNORECASE) is not None


def driver_rank(tp_size: int, pp_size: int) -> int:
    """The engine core's global rank: tensor rank 0 of the last stage (``rank = stage * tp_size + tp_rank``)."""
    return (pp_size - 1) * tp_size


class Executor:
    """Ranks other than the engine core's, and the core's own groups (``self.tp``, ``self.pp``).

    Subclasses start the workers and implement :meth:`_send`, :meth:`_poll` (read what the workers reported
    into ``errors`` / ``ready``) and :meth:`_dead` (workers that are gone, with how)."""

    explain_wait_s = 2.0  # how long a broken step waits for a worker's death to become visible

    def __init__(self, cfg: EngineConfig) -> None:
        if dist.is_initialized():
            raise RuntimeError("this process already runs a distributed engine (torch.distributed is initialized); "
                               "shut it down before starting another one")
        self.tp_size, self.pp_size = cfg.tensor_parallel_size, cfg.pipeline_parallel_size
        self.world_size = self.tp_size * self.pp_size
        self.rank = driver_rank(self.tp_size, self.pp_size)
        self.worker_ranks = [r for r in range(self.world_size) if r != self.rank]
        self.raw_cfg = encode_config(cfg)
        self.errors: dict[int, str] = {}  # rank -> the error it reported (WorkerFailed)
        self.ready: dict[int, int] = {}  # rank -> its KV-block count (WorkerReady)
        self.tp: TPGroup | None = None
        self.pp: Any = None  # PPStage under pipeline parallelism
        self.out_of_step: str | None = None  # why the ranks are out of step (abandon_step); None: in step
        self.steps = 0  # distributed steps sent (broadcast_step): the number a timeout names
        self.reported = False  # the engine core's thread raised WorkerDied (the monitor then stays silent)
        _LIVE.add(self)

    def who(self, rank: int) -> str:
        if self.pp_size == 1:
            return f"tensor-parallel rank {rank} of {self.world_size}"
        return (f"rank {rank} of {self.world_size} (pipeline stage {rank // self.tp_size} of {self.pp_size}, "
                f"tensor rank {rank % self.tp_size})")

    # ------------------------------------------------------------------ start-up
    def _join(self, cfg: EngineConfig, *, init_method: str | None = None, store: Any = None) -> None:
        """The engine core joins the group in a thread while this one watches the workers (a worker that dies
        before the rendezvous fails start-up at once instead of after the timeout)."""
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                init_world(self.rank, self.world_size, cfg.device, init_method=init_method, store=store,
                           device_index=self._device_index())
                box["tp"] = make_tp_group(self.rank, self.tp_size, self.pp_size)
            except BaseException as e:  # noqa: BLE001 - re-raised below in the caller's thread
                box["error"] = e

        t = threading.Thread(target=target, name="pagoda-dist-rendezvous", daemon=True)
        t.start()
        while t.is_alive():
            t.join(_POLL_S)
            self.check_alive()
        if "error" in box:
            e = box["error"]
            if is_timeout(e):
                raise RuntimeError(f"distributed rendezvous timed out: the {self.world_size} ranks did not all join "
                                   f"within PAGODA_DIST_TIMEOUT_S={envs.dist_timeout_s():g} s (no worker exited; one "
                                   f"is stuck or starting slowly). Set PAGODA_DIST_TIMEOUT_S higher (seconds) if "
                                   f"start-up is that slow here. ({type(e).__name__}: {e})") from e
            raise RuntimeError(f"distributed rendezvous failed: {e}") from e
        self.tp = box["tp"]
        if self.pp_size > 1:
            from pagoda.distributed.pipeline import PPStage

            assert cfg.pp_layer_partition is not None
            self.pp = PPStage.for_rank(self.rank, self.tp_size, cfg.pp_layer_partition)

    def _device_index(self) -> int | None:
        return None  # cuda:rank

    # ------------------------------------------------------------------ liveness
    def _poll(self) -> None:
        raise NotImplementedError

    def _dead(self) -> list[tuple[int, str]]:
        raise NotImplementedError

    def _send(self, raw: bytes) -> None:
        raise NotImplementedError

    def abandon_step(self, why: str) -> None:
        """The engine core left a step it had sent (an exception it does not turn into :class:`WorkerDied`, such as
        a ``KeyboardInterrupt``): the workers are still in that step's collectives or transfers, so a next step
        would pair its tensors with theirs (wrong numbers, a hang until the timeout, or gloo aborting the process).
        Every later :meth:`check_alive` (each step's first call) raises instead."""
        self.out_of_step = why

    def check_alive(self, *, blame_timeouts: bool = True) -> None:
        """Raise :class:`WorkerDied` when a worker has exited or reported a failure, or a step was abandoned.
        ``blame_timeouts`` False: a worker whose failure was a timeout (it waited for the same stuck rank as the
        engine core) is not the cause."""
        if self.out_of_step is not None:
            raise WorkerDied(f"the ranks are out of step: {self.out_of_step}; the engine cannot continue: shut it "
                             f"down and build a new one.")
        dead = self._dead()
        self._poll()
        timed_out = set() if blame_timeouts else self._timed_out()
        dead = [(rank, how) for rank, how in dead if rank not in timed_out]
        errors = {rank: why for rank, why in self.errors.items() if rank not in timed_out}
        if not dead and not errors:
            return
        rank, how = dead[0] if dead else (min(errors), "failed")
        why = errors.get(rank)
        waited = (f" (it waited PAGODA_DIST_TIMEOUT_S={envs.dist_timeout_s():g} s in a collective: another rank, "
                  f"possibly the engine core's, was stuck or slower than that; set PAGODA_DIST_TIMEOUT_S higher, in "
                  f"seconds, if steps this slow are expected)" if why and is_timeout(why) else "")
        self.reported = True
        raise WorkerDied(f"{self.who(rank)} {how}" + (f": {why}" if why else "") + waited
                         + "; the engine cannot continue.")

    def _timed_out(self) -> set[int]:
        """Workers that reported a timeout of their own."""
        return {rank for rank, why in self.errors.items() if is_timeout(why)}

    def explain(self, exc: BaseException) -> None:
        """After ``exc`` broke a step: if a worker is the cause, raise :class:`WorkerDied` from it (waiting a little
        for the worker's exit to become visible); if ``exc`` is a timeout and no worker died, raise
        :class:`WorkerDied` saying so (:meth:`_timeout_message`)."""
        timeout = is_timeout(exc)
        deadline = time.monotonic() + self.explain_wait_s
        while True:
            try:
                self.check_alive(blame_timeouts=not timeout)
            except WorkerDied as died:
                raise died from exc
            if time.monotonic() > deadline:
                break
            time.sleep(_POLL_S)
        if timeout:
            raise WorkerDied(self._timeout_message(exc)) from exc

    def _timeout_message(self, exc: BaseException) -> str:
        """A step's collective timed out and no worker died: which step, after how long, the ranks that neither
        timed out themselves nor exited (the stuck ones, as far as the engine core can tell), and the variable."""
        timed_out = self._timed_out()
        silent = [rank for rank in self.worker_ranks if rank not in timed_out]
        stuck = (f"still running without answering: {', '.join(self.who(r) for r in silent)}" if silent
                 else "every worker rank timed out as well")
        return (f"distributed step {self.steps} timed out: the engine core's rank ({self.who(self.rank)}) waited "
                f"PAGODA_DIST_TIMEOUT_S={envs.dist_timeout_s():g} s for the other ranks ({stuck}). Nothing else "
                f"failed, so a rank is stuck (a hung device, a paused or starved process) or the step is slower than "
                f"the limit; set PAGODA_DIST_TIMEOUT_S higher (seconds) if steps this slow are expected. The engine "
                f"cannot continue. ({type(exc).__name__}: {exc})")

    # ------------------------------------------------------------------ messages
    def send(self, msg: m.ToWorker) -> None:
        self._send(m.encoder.encode(msg))

    def agree_num_blocks(self, num_blocks: int) -> int:
        """Wait for every worker's :class:`WorkerReady`; the group uses the smallest KV-block count, which is sent to
        the workers (they allocate it) and returned."""
        deadline = time.monotonic() + envs.dist_timeout_s()
        while len(self.ready) < len(self.worker_ranks):
            self.check_alive()  # also reads the workers' messages
            if time.monotonic() > deadline:
                late = sorted(set(self.worker_ranks) - set(self.ready))
                raise WorkerDied(f"workers {late} did not load their shard within "
                                 f"PAGODA_DIST_TIMEOUT_S={envs.dist_timeout_s():g} s.")
            time.sleep(_POLL_S)
        n = min(num_blocks, *self.ready.values())
        self.send(m.AllocateKV(n))
        return n

    def broadcast_step(self, inputs: StepInputs, block_copies: list[tuple[int, int]],
                       logits_rows: list[list[int]] | None = None, shares_sampled: bool = False,
                       graph: bool = False) -> None:
        """Send the step's forward inputs to every worker (before the engine core starts its own forward);
        ``logits_rows``: the rows of each ``compute_logits`` call the engine core will make, in order (its stage's
        tensor ranks make the same calls); ``shares_sampled``: the engine core broadcasts the step's sampled tokens
        (async scheduling: the next step's ``fills`` read them); ``graph``: the engine core replays its decode CUDA
        graph (the workers replay theirs). Under pipeline parallelism the last two stay off (start-up checks)."""
        if self.pp_size > 1 and (inputs.fills or shares_sampled or graph):
            raise RuntimeError("pipeline stages need every input token on the host and run eager (async scheduling "
                               "and CUDA graphs are off under --pipeline-parallel-size)")
        self.check_alive()
        self.steps += 1
        self.send(m.ForwardStep(inputs.input_ids, inputs.positions, inputs.slots, inputs.query_start_loc,
                                inputs.query_lens, inputs.seq_lens, inputs.block_tables, list(block_copies),
                                logits_rows or [], list(inputs.fills), shares_sampled, graph))

    def shutdown(self) -> None:
        raise NotImplementedError


class MultiprocExecutor(Executor):
    """Workers as local processes, one socket pair each; ready when the constructor returns."""

    def __init__(self, cfg: EngineConfig) -> None:
        super().__init__(cfg)
        self._dir = tempfile.mkdtemp(prefix="pagoda-tp-")
        init_method = f"file://{self._dir}/rendezvous"
        self.procs: list[subprocess.Popen] = []  # in the order of worker_ranks
        self.conns: list[Connection] = []
        self._finalizer = weakref.finalize(self, _stop, self.procs, self.conns, self._dir, self.worker_ranks,
                                           self.ready)
        try:
            for rank in self.worker_ranks:
                ours, theirs = socket.socketpair()
                bound_sends(ours, envs.dist_timeout_s())
                cmd = [sys.executable, "-m", "pagoda.distributed.worker", str(theirs.fileno()), str(rank),
                       init_method, str(os.getpid()), str(logger.getEffectiveLevel())]
                self.procs.append(subprocess.Popen(cmd, pass_fds=[theirs.fileno()]))
                theirs.close()
                conn = Connection(ours.detach())
                self.conns.append(conn)
                conn.send_bytes(self.raw_cfg)
            self._join(cfg, init_method=init_method)
        except BaseException:  # stop the workers now: the traceback keeps this half-built executor reachable
            self._finalizer()
            raise
        logger.info("distributed: %d ranks (tensor %d x pipeline %d, %s, mp), worker pids %s", self.world_size,
                    self.tp_size, self.pp_size, "nccl" if cfg.device.type == "cuda" else "gloo",
                    [p.pid for p in self.procs])
        threading.Thread(target=_monitor, args=(weakref.ref(self), _death_handler), name="pagoda-rank-monitor",
                         daemon=True).start()

    def _poll(self) -> None:
        for rank, conn in zip(self.worker_ranks, self.conns, strict=True):
            try:
                while conn.poll(0):
                    msg = m.from_worker_decoder.decode(conn.recv_bytes())
                    if isinstance(msg, m.WorkerFailed):
                        self.errors[rank] = msg.error
                    else:
                        self.ready[rank] = msg.num_blocks
            except (EOFError, OSError):
                continue

    def _dead(self) -> list[tuple[int, str]]:
        return [(rank, f"died (exit code {p.poll()})") for rank, p in zip(self.worker_ranks, self.procs, strict=True)
                if p.poll() is not None]

    def _send(self, raw: bytes) -> None:
        for rank, conn in zip(self.worker_ranks, self.conns, strict=True):
            try:
                conn.send_bytes(raw)
            except BlockingIOError as e:  # bound_sends: the rank is alive and read nothing for the whole limit
                raise WorkerDied(f"{self.who(rank)} did not read its step within PAGODA_DIST_TIMEOUT_S="
                                 f"{envs.dist_timeout_s():g} s (stuck, paused or starved); set PAGODA_DIST_TIMEOUT_S "
                                 f"higher (seconds) if that is expected. The engine cannot continue.") from e
            except OSError as e:
                self.explain(e)
                raise WorkerDied(f"a worker rank closed its connection: {e}") from e

    def shutdown(self) -> None:
        self._finalizer()


def _monitor(ref: weakref.ref[MultiprocExecutor], handler: Callable[[str], object] | None) -> None:
    """The monitor thread (module docstring): reads only the worker processes' exit codes (``Popen.poll`` takes
    its own lock), never their connections, which the engine core's thread owns. Ends with the executor's stop."""
    first_seen: float | None = None
    while True:
        time.sleep(_MONITOR_POLL_S)
        ex = ref()
        if ex is None or not ex._finalizer.alive:
            return
        dead = [] if ex.reported else ex._dead()
        if not dead:
            first_seen = None
            continue
        now = time.monotonic()
        first_seen = first_seen or now
        if now - first_seen < DEATH_GRACE_S:
            continue
        rank, how = dead[0]
        message = (f"{ex.who(rank)} {how}; the engine cannot continue. The engine core's own step did not fail "
                   f"within {DEATH_GRACE_S:g} s (a collective that waits for a dead rank does not fail under NCCL), "
                   f"so the rank monitor reports it; the rank's log above may say why it died.")
        if handler is None:
            logger.error("%s", message)
            return
        for p in ex.procs:  # the handler ends the process, which skips _stop: the other ranks and the folder go now
            if p.poll() is None:
                p.kill()
        shutil.rmtree(ex._dir, ignore_errors=True)
        del ex
        handler(message)
        return


def bound_sends(sock: socket.socket, seconds: float) -> None:
    """A send on ``sock`` that the peer does not drain (a step's frame larger than the socket's buffer, to a paused
    worker) raises ``BlockingIOError`` after ``seconds`` instead of blocking for ever: the collectives' own timeout
    never starts while the engine core is stuck in a send."""
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    struct.pack("ll", whole, int((seconds - whole) * 1e6)))


def _stop(procs: list[subprocess.Popen], conns: list[Connection], tmpdir: str, ranks: list[int],
          ready: dict[int, int]) -> None:
    """Stop the workers: ``StopWorker`` to those that reported ready (they read it between steps; 5 s, then killed),
    killed at once the others (still importing, joining or loading: they read nothing yet). The kill, the sockets
    and the folder are released whatever happens meanwhile."""
    try:
        stop = m.encoder.encode(m.StopWorker())
        for rank, p, conn in zip(ranks, procs, conns, strict=False):
            if rank not in ready:
                p.kill()
                continue
            try:
                conn.send_bytes(stop)
            except OSError:
                pass
        deadline = time.monotonic() + 5.0
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for conn in conns:
            conn.close()
        destroy_tp_group()
        shutil.rmtree(tmpdir, ignore_errors=True)


_LIVE: weakref.WeakSet[Executor] = weakref.WeakSet()
"""Every executor not yet collected: what a terminated engine core shuts down (:func:`shutdown_all`)."""


def shutdown_all() -> None:
    """Shut down every live executor of this process (the engine core's SIGTERM path, which skips the clean
    stop's own shutdown): their workers end now and their rendezvous folders go."""
    for ex in list(_LIVE):
        with contextlib.suppress(Exception):
            ex.shutdown()


def make_executor(cfg: EngineConfig) -> Executor:
    """The executor ``--distributed-executor-backend`` names."""
    if cfg.distributed_executor_backend == "ray":
        from pagoda.distributed.ray_executor import RayExecutor

        return RayExecutor(cfg)
    return MultiprocExecutor(cfg)
