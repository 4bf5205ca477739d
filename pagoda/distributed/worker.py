"""A worker rank: ``python -m pagoda.distributed.worker FD RANK INIT PPID LVL`` (mp), or a Ray actor's body.

It receives the engine core's resolved config, joins the group, builds the same
:class:`~pagoda.worker.model_runner.ModelRunner` (its tensor shard of its pipeline stage's layers, and
their KV cache), reports :class:`WorkerReady`, allocates what the engine core says, then runs one
forward per :class:`ForwardStep` until told to stop. It never samples: the engine core holds the logits.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import torch

from pagoda.distributed import messages as m
from pagoda.distributed.config_codec import decode_config
from pagoda.distributed.parallel_state import destroy_tp_group, init_world, make_tp_group

logger = logging.getLogger("pagoda")


def cpu_threads_per_rank(world: int) -> int:
    """A CPU worker's torch threads: its share of the CPUs this process may use (affinity mask, cgroup quota:
    ``cpu_threads.usable_cpus``), never more than it already has (``OMP_NUM_THREADS`` from the user, a
    data-parallel replica's split or Ray's per-actor CPUs), and at least one. ``os.cpu_count()`` would count the
    host's CPUs, not the container's."""
    from pagoda.worker.cpu_threads import usable_cpus

    return max(1, min(torch.get_num_threads(), usable_cpus() // world))


class WorkerRank:
    """One rank's runner, driven by the engine core's frames (:meth:`handle`)."""

    def __init__(self, raw_cfg: bytes, rank: int, *, init_method: str | None = None, store: Any = None,
                 device_index: int | None = None) -> None:
        from pagoda.worker.model_runner import ModelRunner

        cfg = decode_config(raw_cfg)
        tp_size, pp_size = cfg.tensor_parallel_size, cfg.pipeline_parallel_size
        world = tp_size * pp_size
        if cfg.device.type == "cuda":
            cfg = dataclasses.replace(cfg, device=torch.device("cuda", rank if device_index is None else device_index))
        else:
            torch.set_num_threads(cpu_threads_per_rank(world))
        self.rank = rank
        init_world(rank, world, cfg.device, init_method=init_method, store=store, device_index=device_index)
        tp = make_tp_group(rank, tp_size, pp_size)
        pp = None
        if pp_size > 1:
            from pagoda.distributed.pipeline import PPStage

            assert cfg.pp_layer_partition is not None
            pp = PPStage.for_rank(rank, tp_size, cfg.pp_layer_partition)
        self.runner = ModelRunner(cfg, tp=tp, pp=pp)

    def ready(self) -> bytes:
        return m.encoder.encode(m.WorkerReady(self.rank, self.runner.determine_num_blocks()))

    def handle(self, raw: bytes) -> bool:
        """Run one frame; False on :class:`StopWorker`."""
        msg = m.to_worker_decoder.decode(raw)
        if isinstance(msg, m.ForwardStep):
            self.runner.execute_forward(msg)
        elif isinstance(msg, m.AllocateKV):
            self.runner.allocate_kv_cache(msg.num_blocks)
            # The engine core captures now too: the captured all-reduces need every rank (off under PP: eager).
            self.runner.maybe_capture_graphs()
        else:
            pp = self.runner.pp
            if pp is not None:
                pp.flush()
            return False
        return True


def serve(conn: Connection, rank: int, init_method: str) -> None:
    """Join the group, load, and run steps until :class:`StopWorker` or the engine core's socket closes."""
    worker = WorkerRank(conn.recv_bytes(), rank, init_method=init_method)
    conn.send_bytes(worker.ready())
    while worker.handle(conn.recv_bytes()):
        pass


PARENT_POLL_S = 0.5
"""How often a worker checks that the process that started it still runs."""


def watch_parent(parent_pid: int, poll_s: float = PARENT_POLL_S) -> threading.Thread:
    """A daemon thread that ends this process (exit 0) once ``parent_pid`` is no longer its parent.

    Not ``PR_SET_PDEATHSIG``: the kernel sends that signal when the parent *thread* that started the worker exits,
    so an ``LLM(tensor_parallel_size=N)`` built in a thread that then ends (a thread pool, a web framework's start-up
    hook) would lose its workers while the engine lives. The ppid changes only when the whole process is gone (also
    when a fork of the parent still holds the engine's socket, which would keep ``recv`` from ever seeing EOF)."""

    def run() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        logger.warning("the engine process (pid %d) is gone; worker exiting", parent_pid)
        logging.shutdown()
        os._exit(0)  # the main thread may be blocked in a collective with the dead rank

    t = threading.Thread(target=run, name="pagoda-parent-watch", daemon=True)
    t.start()
    return t


def main(argv: list[str]) -> int:
    fd, rank, init_method, parent_pid, level = argv
    logging.basicConfig(level=int(level), format=f"%(levelname)s %(asctime)s %(name)s[rank{rank}]: %(message)s",
                        datefmt="%H:%M:%S")
    if os.getppid() != int(parent_pid):  # the engine process died before this one ran
        return 0
    watch_parent(int(parent_pid))
    conn = Connection(int(fd))
    try:
        serve(conn, int(rank), init_method)
    except EOFError:  # the engine core is gone
        return 0
    except Exception as e:
        logger.exception("worker rank %s failed", rank)
        try:
            conn.send_bytes(m.encoder.encode(m.WorkerFailed(int(rank), f"{type(e).__name__}: {e}")))
        except OSError:
            pass
        return 1
    finally:
        destroy_tp_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
