"""A worker rank (1..N-1) of tensor parallelism: ``python -m pagoda.distributed.worker FD RANK WORLD INIT PPID LVL``.

It receives rank 0's resolved config over its socket, joins the group, builds the same
:class:`~pagoda.worker.model_runner.ModelRunner` (its shard of the model and its share of the KV
heads), reports :class:`WorkerReady`, allocates what rank 0 says, then runs one forward per
:class:`ForwardStep` until told to stop. It never samples: rank 0 holds the full logits.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from multiprocessing.connection import Connection

import torch

from pagoda.distributed import messages as m
from pagoda.distributed.config_codec import decode_config
from pagoda.distributed.parallel_state import destroy_tp_group, init_tp_group, rank_device

logger = logging.getLogger("pagoda")


def serve(conn: Connection, rank: int, world_size: int, init_method: str) -> None:
    """Join the group, load, and run steps until :class:`StopWorker` or rank 0's socket closes."""
    from pagoda.worker.model_runner import ModelRunner

    cfg = decode_config(conn.recv_bytes())
    cfg = dataclasses.replace(cfg, device=rank_device(cfg.device, rank))
    if cfg.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    tp = init_tp_group(rank, world_size, init_method, cfg.device)
    runner = ModelRunner(cfg, tp=tp)
    conn.send_bytes(m.encoder.encode(m.WorkerReady(rank, runner.determine_num_blocks())))
    while True:
        msg = m.to_worker_decoder.decode(conn.recv_bytes())
        if isinstance(msg, m.ForwardStep):
            runner.execute_forward(msg)
        elif isinstance(msg, m.AllocateKV):
            runner.allocate_kv_cache(msg.num_blocks)
            runner.maybe_capture_graphs()  # rank 0 captures now too: the captured all-reduces need every rank
        else:
            return


def main(argv: list[str]) -> int:
    fd, rank, world, init_method, parent_pid, level = argv
    logging.basicConfig(level=int(level), format=f"%(levelname)s %(asctime)s %(name)s[rank{rank}]: %(message)s",
                        datefmt="%H:%M:%S")
    from pagoda.engine.core_proc import _set_parent_death_signal

    _set_parent_death_signal()
    if os.getppid() != int(parent_pid):
        return 0
    conn = Connection(int(fd))
    try:
        serve(conn, int(rank), int(world), init_method)
    except EOFError:  # rank 0 is gone
        return 0
    except Exception as e:
        logger.exception("tensor-parallel rank %s failed", rank)
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
