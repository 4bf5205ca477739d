"""A tensor-parallel process group: rank, world size and the collectives the sharded layers use.

Backend: NCCL when the ranks run on CUDA (rank ``r`` uses ``cuda:r`` of the devices
``CUDA_VISIBLE_DEVICES`` leaves visible), gloo on the CPU. The rendezvous is a file store in a private
temp dir (``file://``): nothing listens on a network port. Every collective has the group's timeout
(``PAGODA_DIST_TIMEOUT_S``), so a rank that stops answering fails the step instead of hanging it.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pagoda import envs

logger = logging.getLogger("pagoda")


@dataclass(frozen=True)
class TPGroup:
    """This process's place in the tensor-parallel group. ``world_size == 1``: every collective is a no-op."""

    rank: int
    world_size: int

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the ranks, in place; returns ``x``."""
        if self.world_size > 1:
            dist.all_reduce(x)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Every rank's ``x`` concatenated along ``dim`` in rank order (the same shape on every rank)."""
        if self.world_size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.world_size)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=dim)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, rank: int) -> torch.device:
    """The device rank ``rank`` computes on: ``cuda:rank`` on CUDA, the CPU otherwise."""
    return torch.device("cuda", rank) if device.type == "cuda" else device


def init_tp_group(rank: int, world_size: int, init_method: str, device: torch.device) -> TPGroup:
    """Join the group (blocks until all ``world_size`` ranks have joined, or the timeout)."""
    if device.type == "cuda":
        torch.cuda.set_device(rank_device(device, rank))
    timeout = datetime.timedelta(seconds=envs.dist_timeout_s())
    dist.init_process_group(backend_for(device), init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timeout)
    logger.debug("rank %d/%d joined the %s group", rank, world_size, backend_for(device))
    return TPGroup(rank, world_size)


def destroy_tp_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
