"""Act-order (GPTQ ``desc_act``, compressed-tensors ``actorder: group``) weights on a row-parallel rank.

An act-order checkpoint assigns input columns to quantization groups out of order (``g_idx``), so the
contiguous block of columns a row-parallel rank keeps holds some columns of many groups. vLLM keeps every
group's scales and zeros on every rank and gathers them per column in its kernel. pagoda's
:class:`~pagoda.quantization.int_weight.IntWeight` needs whole groups, so each rank regroups its columns:
sorted by group (the IntWeight ``perm``), each present group padded up to ``group_size`` columns with
zero-weight columns (code = the column's zero point, so ``code * scale + offset = 0``: exactly for a
symmetric checkpoint, whose zero point ``2**(bits-1)`` times the scale is exact, and to within one rounding
of ``z * scale`` otherwise). The rank's layer then holds at most as many groups as the whole layer; the
padding costs memory and time only where the columns of a group are spread over ranks.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger("pagoda")


def regroup_columns(codes: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor, group_size: int,
                    what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``codes`` ``[N, K]`` (this rank's columns, checkpoint order), ``zeros`` ``[N, G]`` (every group's zero
    point), ``g_idx`` ``[K]`` -> ``(codes [N, G' * group_size], groups [G'], perm [G' * group_size])``: the present
    groups in order, their columns first then padding (module docstring); ``perm`` indexes the input columns
    (a padding column points at column 0, with weight 0). Raises naming ``what`` on an invalid ``g_idx``."""
    g = g_idx.to(torch.int64)
    num_groups = zeros.shape[1]
    if g.numel() and (int(g.min()) < 0 or int(g.max()) >= num_groups):
        raise ValueError(f"{what}: group index out of range [0, {num_groups})")
    counts = torch.bincount(g, minlength=num_groups)
    if int(counts.max()) > group_size:
        raise ValueError(f"{what}: a group has {int(counts.max())} input columns, more than group_size {group_size}")
    groups = torch.nonzero(counts).flatten()
    order = torch.sort(g, stable=True).indices  # columns grouped, in group order
    slot_of_group = torch.full((num_groups,), -1, dtype=torch.int64, device=g.device)
    slot_of_group[groups] = torch.arange(groups.numel(), device=g.device)
    first = torch.cumsum(counts, 0) - counts  # position of each group's first column in ``order``
    sorted_g = g[order]
    dest = slot_of_group[sorted_g] * group_size + (torch.arange(g.numel(), device=g.device) - first[sorted_g])
    width = groups.numel() * group_size
    perm = torch.zeros(width, dtype=torch.int64, device=g.device)
    perm[dest] = order
    out = zeros[:, groups].repeat_interleave(group_size, dim=1).to(codes.dtype)  # padding: the zero point
    out[:, dest] = codes[:, order]
    if width > g.numel():
        logger.debug("%s: act-order columns regrouped for this rank, %d -> %d columns", what, g.numel(), width)
    return out, groups, perm
