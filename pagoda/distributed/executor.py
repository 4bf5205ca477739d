"""Rank 0's side of tensor parallelism: start ranks 1..N-1, send each step's inputs, watch them live.

The process that runs the engine core is rank 0 (it schedules, and samples from its full-vocabulary
logits). Workers are fresh interpreters (``python -m pagoda.distributed.worker``, like multiprocessing's
``spawn``, but not its children: the engine core may itself be a daemon process, which multiprocessing
forbids to have children). Each talks to rank 0 over its own socket pair in length-prefixed msgpack
frames (:mod:`pagoda.distributed.messages`); tensors move only through torch.distributed collectives.

Failure: before each step rank 0 checks that every worker still runs; a worker that dies during a
step breaks the collective (gloo: its sockets close; NCCL: the group's timeout), and rank 0 turns that
into ``RuntimeError("tensor-parallel rank r died ...")`` with the worker's own error when it sent one.
Workers exit on :class:`StopWorker`, when rank 0's socket closes, or when their parent dies.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from multiprocessing.connection import Connection

import torch.distributed as dist

from pagoda import envs
from pagoda.config import EngineConfig
from pagoda.distributed import messages as m
from pagoda.distributed.config_codec import encode_config
from pagoda.distributed.parallel_state import TPGroup, destroy_tp_group, init_tp_group
from pagoda.errors import EngineFatalError
from pagoda.worker.input_batch import StepInputs

logger = logging.getLogger("pagoda")

_POLL_S = 0.1


class WorkerDied(EngineFatalError):
    """A tensor-parallel worker rank exited or failed; the engine cannot continue."""


class MultiprocExecutor:
    """Workers of ranks 1..N-1 and rank 0's group (``self.tp``), ready when the constructor returns."""

    def __init__(self, cfg: EngineConfig) -> None:
        if dist.is_initialized():
            raise RuntimeError("this process already runs a tensor-parallel engine (torch.distributed is initialized); "
                               "shut it down before starting another one")
        self.world_size = cfg.tensor_parallel_size
        self._dir = tempfile.mkdtemp(prefix="pagoda-tp-")
        init_method = f"file://{self._dir}/rendezvous"
        raw_cfg = encode_config(cfg)
        self.procs: list[subprocess.Popen] = []
        self.conns: list[Connection] = []
        self.errors: dict[int, str] = {}  # rank -> the error it reported (WorkerFailed)
        self.ready: dict[int, int] = {}  # rank -> its KV-block count (WorkerReady)
        for rank in range(1, self.world_size):
            ours, theirs = socket.socketpair()
            cmd = [sys.executable, "-m", "pagoda.distributed.worker", str(theirs.fileno()), str(rank),
                   str(self.world_size), init_method, str(os.getpid()), str(logger.getEffectiveLevel())]
            self.procs.append(subprocess.Popen(cmd, pass_fds=[theirs.fileno()]))
            theirs.close()
            conn = Connection(ours.detach())
            conn.send_bytes(raw_cfg)
            self.conns.append(conn)
        self._finalizer = weakref.finalize(self, _stop, self.procs, self.conns, self._dir)
        self.tp = self._join(init_method, cfg)
        logger.info("tensor parallelism: %d ranks (%s), worker pids %s", self.world_size,
                    "nccl" if cfg.device.type == "cuda" else "gloo", [p.pid for p in self.procs])

    def _join(self, init_method: str, cfg: EngineConfig) -> TPGroup:
        """Rank 0 joins the group in a thread while this one watches the workers (a worker that dies before the
        rendezvous fails start-up at once instead of after the timeout)."""
        box: dict[str, object] = {}

        def target() -> None:
            try:
                box["tp"] = init_tp_group(0, self.world_size, init_method, cfg.device)
            except BaseException as e:  # noqa: BLE001 - re-raised below in the caller's thread
                box["error"] = e

        t = threading.Thread(target=target, name="pagoda-tp-rendezvous", daemon=True)
        t.start()
        while t.is_alive():
            t.join(_POLL_S)
            self.check_alive()
        if "error" in box:
            raise RuntimeError(f"tensor-parallel rendezvous failed: {box['error']}") from box["error"]  # type: ignore[misc]
        tp = box["tp"]
        assert isinstance(tp, TPGroup)
        return tp

    # ------------------------------------------------------------------ liveness
    def _read_messages(self) -> None:
        """Take every message the workers have sent (into ``errors`` / ``ready``)."""
        for rank, conn in enumerate(self.conns, start=1):
            try:
                while conn.poll(0):
                    msg = m.from_worker_decoder.decode(conn.recv_bytes())
                    if isinstance(msg, m.WorkerFailed):
                        self.errors[rank] = msg.error
                    else:
                        self.ready[rank] = msg.num_blocks
            except (EOFError, OSError):
                continue

    def check_alive(self) -> None:
        """Raise :class:`WorkerDied` when a worker has exited or reported a failure."""
        dead = [(rank, p.poll()) for rank, p in enumerate(self.procs, start=1) if p.poll() is not None]
        self._read_messages()
        if not dead and not self.errors:
            return
        rank, code = dead[0] if dead else (min(self.errors), None)
        why = self.errors.get(rank)
        raise WorkerDied(f"tensor-parallel rank {rank} of {self.world_size} "
                         + (f"died (exit code {code})" if code is not None else "failed")
                         + (f": {why}" if why else "") + "; the engine cannot continue.")

    def explain(self, exc: BaseException) -> None:
        """After ``exc`` broke a step: if a worker is the cause, raise :class:`WorkerDied` from it (waiting a little
        for the worker's exit to become visible)."""
        deadline = time.monotonic() + 2.0
        while True:
            try:
                self.check_alive()
            except WorkerDied as died:
                raise died from exc
            if time.monotonic() > deadline:
                return
            time.sleep(_POLL_S)

    # ------------------------------------------------------------------ messages
    def _send(self, msg: m.ToWorker) -> None:
        raw = m.encoder.encode(msg)
        for conn in self.conns:
            try:
                conn.send_bytes(raw)
            except OSError as e:
                self.explain(e)
                raise WorkerDied(f"a tensor-parallel worker closed its connection: {e}") from e

    def agree_num_blocks(self, num_blocks: int) -> int:
        """Wait for every worker's :class:`WorkerReady`; the group uses the smallest KV-block count, which is sent to
        the workers (they allocate it) and returned."""
        deadline = time.monotonic() + envs.dist_timeout_s()
        while len(self.ready) < len(self.conns):
            self.check_alive()  # also reads the workers' messages
            if time.monotonic() > deadline:
                late = sorted(set(range(1, self.world_size)) - set(self.ready))
                raise WorkerDied(f"tensor-parallel workers {late} did not load their shard within "
                                 f"PAGODA_DIST_TIMEOUT_S={envs.dist_timeout_s():g} s.")
            time.sleep(_POLL_S)
        n = min(num_blocks, *self.ready.values())
        self._send(m.AllocateKV(n))
        return n

    def broadcast_step(self, inputs: StepInputs, block_copies: list[tuple[int, int]],
                       logits_rows: list[list[int]] | None = None, shares_sampled: bool = False,
                       graph: bool = False) -> None:
        """Send the step's forward inputs to every worker (before rank 0 starts its own forward); ``logits_rows``:
        the rows of each ``compute_logits`` call rank 0 will make, in order; ``shares_sampled``: rank 0 broadcasts
        the step's sampled tokens (async scheduling: the next step's ``fills`` read them); ``graph``: rank 0 replays
        its decode CUDA graph (the workers replay theirs)."""
        self.check_alive()
        self._send(m.ForwardStep(inputs.input_ids, inputs.positions, inputs.slots, inputs.query_start_loc,
                                 inputs.query_lens, inputs.seq_lens, inputs.block_tables, list(block_copies),
                                 logits_rows or [], list(inputs.fills), shares_sampled, graph))

    def shutdown(self) -> None:
        self._finalizer()


def _stop(procs: list[subprocess.Popen], conns: list[Connection], tmpdir: str) -> None:
    stop = m.encoder.encode(m.StopWorker())
    for conn in conns:
        try:
            conn.send_bytes(stop)
        except OSError:
            pass
    deadline = time.monotonic() + 5.0
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for conn in conns:
        conn.close()
    destroy_tp_group()
    shutil.rmtree(tmpdir, ignore_errors=True)
