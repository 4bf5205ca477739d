"""Column- and row-parallel :class:`~pagoda.layers.linear.Linear` layers (Megatron's split).

A column-parallel layer keeps a slice of the output features on each rank (no communication:
its output stays sharded); a row-parallel layer keeps a slice of the input features, and its
partial products are summed over the ranks (one all-reduce). ``qkv_proj`` / ``gate_up_proj`` are
column-parallel, ``o_proj`` / ``down_proj`` row-parallel: one all-reduce per attention block and
one per MLP.

Sharding happens at load: :meth:`Linear.load_shard` asks :meth:`tp_slice` for this rank's part of
each checkpoint tensor, found through the parameter's ``output_dim`` / ``input_dim`` attributes
(``pack_factor`` divides offsets along the output dimension). A fused layer's checkpoint shards are
each split per rank (``shard_ranges``), so the rank's ``q | k | v`` stay contiguous. A row-parallel
layer slices every parameter with an ``input_dim`` (weights, and a quantized format's per-group
scales and zero points, whose groups then split with the input); the rest (per-channel scales) is
whole on every rank. Attention heads
are split whole; when there are fewer KV heads than ranks each rank keeps the one KV head its query
heads use (:func:`attention_heads`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pagoda.distributed.parallel_state import TPGroup
from pagoda.layers.linear import Linear, LinearMethod

Ranges = tuple[tuple[int, int], ...]  # (start, size) rows of one checkpoint shard, in order


def attention_heads(num_heads: int, num_kv_heads: int, tp: TPGroup) -> tuple[int, int, int]:
    """(query heads, KV heads, first KV head) of rank ``tp.rank``. Raises ``ValueError`` naming the flag
    when the heads do not split evenly."""
    n = tp.world_size
    if num_heads % n:
        raise ValueError(f"--tensor-parallel-size {n} does not divide the model's {num_heads} attention heads.")
    if num_kv_heads >= n:
        if num_kv_heads % n:
            raise ValueError(f"--tensor-parallel-size {n} does not divide the model's {num_kv_heads} KV heads.")
        kv = num_kv_heads // n
        return num_heads // n, kv, tp.rank * kv
    if n % num_kv_heads:
        raise ValueError(f"--tensor-parallel-size {n} is not a multiple of the model's {num_kv_heads} KV heads "
                         f"(fewer KV heads than ranks are replicated, which needs an even split).")
    return num_heads // n, 1, tp.rank // (n // num_kv_heads)


def even_ranges(size: int, tp: TPGroup, what: str) -> Ranges:
    if size % tp.world_size:
        raise ValueError(f"--tensor-parallel-size {tp.world_size} does not divide {what} ({size}).")
    part = size // tp.world_size
    return ((tp.rank * part, part),)


def _narrow_ranges(t: torch.Tensor, dim: int, ranges: Ranges, pack: int, name: str) -> torch.Tensor:
    parts = []
    for start, size in ranges:
        if start % pack or size % pack:
            raise ValueError(f"{name}: tensor-parallel slice ({start}, {size}) is not a multiple of its packing "
                             f"factor {pack}")
        parts.append(t.narrow(dim, start // pack, size // pack))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=dim)


class ColumnParallelLinear(Linear):
    """Output features split over the ranks. ``output_sizes``: the checkpoint shards' full sizes;
    ``shard_ranges``: per shard, the rows this rank keeps (default: an even split of each shard)."""

    def __init__(self, in_features: int, output_sizes: Sequence[int], tp: TPGroup, bias: bool = False,
                 linear_method: LinearMethod | None = None, shard_ranges: Sequence[Ranges] | None = None,
                 name: str = "") -> None:
        full = tuple(output_sizes)
        ranges = tuple(shard_ranges) if shard_ranges is not None else tuple(
            even_ranges(s, tp, f"the output features of {name or 'a layer'}") for s in full)
        if len(ranges) != len(full):
            raise ValueError(f"{name}: {len(ranges)} shard ranges for {len(full)} shards")
        self.full_output_sizes = full
        self.shard_ranges = ranges
        local = tuple(sum(size for _, size in r) for r in ranges)
        super().__init__(in_features, sum(local), bias, linear_method, local)

    def tp_slice(self, name: str, param: torch.Tensor, tensor: torch.Tensor, shard_id: int | None) -> torch.Tensor:
        dim = getattr(param, "output_dim", 0)
        if dim is None or getattr(param, "shard_indexed", False) or tensor.numel() == 1:
            return tensor  # the same for every output feature (or one value per shard, or a per-tensor scale)
        if shard_id is not None:
            ranges = self.shard_ranges[shard_id]
        else:  # the whole fused tensor at once: shift each shard's ranges by the shard's offset
            offsets = [sum(self.full_output_sizes[:i]) for i in range(len(self.full_output_sizes))]
            ranges = tuple((off + s, n) for off, r in zip(offsets, self.shard_ranges, strict=True) for s, n in r)
        return _narrow_ranges(tensor, dim, ranges, int(getattr(param, "pack_factor", 1)), name)


class RowParallelLinear(Linear):
    """Input features split over the ranks; the output is all-reduced (every rank gets the full sum).
    A bias is added once: rank 0 loads it, the others keep zeros."""

    def __init__(self, in_features: int, out_features: int, tp: TPGroup, bias: bool = False,
                 linear_method: LinearMethod | None = None, name: str = "") -> None:
        (_, local), = even_ranges(in_features, tp, f"the input features of {name or 'a layer'}")
        self.tp = tp
        self.full_in_features = in_features
        super().__init__(local, out_features, bias, linear_method)

    def tp_slice(self, name: str, param: torch.Tensor, tensor: torch.Tensor, shard_id: int | None) -> torch.Tensor:
        dim = getattr(param, "input_dim", None)
        if dim is None:
            return tensor if self.tp.rank == 0 or name != "bias" else torch.zeros_like(tensor)
        local = param.shape[dim]
        if tensor.shape[dim] != local * self.tp.world_size:
            raise ValueError(f"{name}: checkpoint input dimension {tensor.shape[dim]} is not "
                             f"{self.tp.world_size} x {local}")
        part = tensor.narrow(dim, self.tp.rank * local, local)
        shift = getattr(param, "group_shift", 0)  # GPTQ g_idx: global group numbers -> this rank's (groups split)
        return part - self.tp.rank * shift if shift else part

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tp.all_reduce(super().forward(x))
