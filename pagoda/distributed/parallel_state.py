"""A tensor-parallel process group: rank, world size and the collectives the sharded layers use.

Backend: NCCL when the ranks run on CUDA (rank ``r`` uses ``cuda:r`` of the devices
``CUDA_VISIBLE_DEVICES`` leaves visible; a Ray actor its one GPU), gloo on the CPU. The rendezvous is a
file store in a private temp dir (``file://``, the mp executor: nothing listens on a network port) or a TCP
store the engine core serves (the Ray executor, ranks on several nodes). Every collective has the group's timeout
(``PAGODA_DIST_TIMEOUT_S``), so a rank that stops answering fails the step instead of hanging it.
"""

from __future__ import annotations

import datetime
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from pagoda import envs

logger = logging.getLogger("pagoda")


@dataclass
class CommStats:
    """Host time spent in all-reduce calls (on CUDA only the launch: NCCL runs asynchronously), and in the
    LM head's logits gathers (``gather_*``)."""

    calls: int = 0
    seconds: float = 0.0
    bytes: int = 0
    gather_calls: int = 0
    gather_seconds: float = 0.0


@dataclass(frozen=True)
class TPGroup:
    """This process's place in the tensor-parallel group. ``world_size == 1``: every collective is a no-op."""

    rank: int
    world_size: int
    stats: CommStats = field(default_factory=CommStats, compare=False)
    group: Any = field(default=None, compare=False)  # the ranks' subgroup under pipeline parallelism; None: WORLD

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the ranks, in place; returns ``x``."""
        if self.world_size > 1:
            t0 = time.perf_counter()
            dist.all_reduce(x, group=self.group)
            st = self.stats
            st.seconds += time.perf_counter() - t0
            st.calls += 1
            st.bytes += x.numel() * x.element_size()
        return x

    def broadcast(self, x: torch.Tensor) -> torch.Tensor:
        """Group rank 0's ``x`` into every rank's ``x`` (in place, same shape and dtype everywhere); returns ``x``."""
        if self.world_size > 1:
            dist.broadcast(x, group=self.group, group_src=0)
        return x

    def gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's ``x`` (the same shape on every rank) concatenated along ``dim`` in rank order, on group
        rank 0 (under pipeline parallelism: this stage's subgroup, not the world); the other ranks get their own
        ``x`` back. A collective: every rank of the group calls it, in the same order."""
        if self.world_size == 1:
            return x
        t0 = time.perf_counter()
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.world_size)] if self.rank == 0 else None
        dist.gather(x, parts, group=self.group, group_dst=0)
        self.stats.gather_seconds += time.perf_counter() - t0
        self.stats.gather_calls += 1
        return torch.cat(parts, dim=dim) if parts is not None else x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's ``x`` concatenated along ``dim`` in rank order (the same shape on every rank)."""
        if self.world_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, rank: int) -> torch.device:
    """The device rank ``rank`` computes on: ``cuda:rank`` on CUDA, the CPU otherwise."""
    return torch.device("cuda", rank) if device.type == "cuda" else device


def init_world(rank: int, world_size: int, device: torch.device, *, init_method: str | None = None,
               store: Any = None, device_index: int | None = None) -> None:
    """Join the process group of every rank (tensor x pipeline), through ``init_method`` (a ``file://`` store)
    or a ``store`` (a TCPStore for ranks on several machines). ``device_index``: this rank's CUDA device
    (default: ``cuda:rank``; a Ray actor sees its one GPU as ``cuda:0``)."""
    if device.type == "cuda":
        torch.cuda.set_device(torch.device("cuda", rank if device_index is None else device_index))
    restart_group_names()
    timeout = datetime.timedelta(seconds=envs.dist_timeout_s())
    dist.init_process_group(backend_for(device), init_method=init_method, store=store, rank=rank,
                            world_size=world_size, timeout=timeout)
    logger.debug("rank %d/%d joined the %s group", rank, world_size, backend_for(device))


def restart_group_names() -> None:
    """Name this process's next WORLD group as a fresh interpreter's (the workers') is named.

    torch names WORLD after a process-wide counter that each ``init_process_group`` raises and only a
    ``destroy_process_group`` of WORLD resets. A rendezvous that never completed (a rank died before joining: the
    engine failed at start-up) leaves it raised, so the next engine in this process would rendezvous under another
    name than its new workers and every rank would wait for the others' keys until ``PAGODA_DIST_TIMEOUT_S``.
    Invariant kept: with no group in this process, the counter is 0, as after a clean destroy."""
    if not dist.is_initialized():
        from torch.distributed import distributed_c10d

        distributed_c10d._world.group_count = 0


def make_tp_group(rank: int, tp_size: int, pp_size: int) -> TPGroup:
    """This rank's tensor-parallel group. Ranks are laid out as vLLM does (``rank = stage * tp_size + tp_rank``);
    with one stage the group is WORLD, with several every rank creates every stage's subgroup (in the same order,
    as ``new_group`` requires) and keeps its own."""
    if pp_size == 1:
        return TPGroup(rank, tp_size)
    mine = None
    for stage in range(pp_size):
        ranks = list(range(stage * tp_size, (stage + 1) * tp_size))
        g = dist.new_group(ranks) if tp_size > 1 else None
        if rank in ranks:
            mine = g
    return TPGroup(rank % tp_size, tp_size, group=mine)


def destroy_tp_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
