"""The adapters' compute: per target linear, ``max_loras`` device slots and a forward hook adding the delta.

Each linear an adapter may target (``qkv_proj``, ``o_proj``, ``gate_up_proj``, ``down_proj`` of every decoder layer)
gets a :class:`LoRASlots`: ``a`` [slots, shards * R, in] and ``b`` [slots, out, R] (R = ``max_lora_rank``; an
adapter of rank r < R fills the first r, the rest stay zero; its scale is folded into ``b``). A fused layer's shards
(q/k/v, gate/up) take their own R rows of ``a`` and their own output slice of ``b``. A forward hook on the module
adds, for each slot of the step (:class:`LoRABatch`, set once per step by the model runner),
``y[rows] += (x[rows] a_slot^T)_shard b_slot[shard]^T`` per shard: the rows of the requests using that adapter.
The hook works whatever the module computes the base output with (a dense, packed or quantized linear), as long
as the model calls the module (the native CPU decoder stack does not: it is switched off with LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class LoRABatch:
    """This step's adapters: ``(slot, rows)`` per adapter in the batch; ``rows`` None means every row. Empty: no
    request of the step uses an adapter (the hooks add nothing)."""

    groups: list[tuple[int, torch.Tensor | None]] = field(default_factory=list)


class LoRASlots:
    """The slot buffers of one target linear and its forward hook (module docstring)."""

    def __init__(self, names: tuple[str, ...], in_features: int, out_sizes: tuple[int, ...], max_loras: int,
                 max_rank: int, dtype: torch.dtype, device: torch.device, batch: LoRABatch) -> None:
        self.names = names
        self.sizes = out_sizes
        self.offsets = tuple(sum(out_sizes[:i]) for i in range(len(out_sizes)))
        self.rank = max_rank
        self.batch = batch
        self.a = torch.zeros(max_loras, len(names) * max_rank, in_features, dtype=dtype, device=device)
        self.b = torch.zeros(max_loras, sum(out_sizes), max_rank, dtype=dtype, device=device)

    def set_slot(self, slot: int, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Put one adapter's weights of this module (``name -> (A [r, in], B [out, r])``; a shard it does not target
        is absent) into ``slot``."""
        self.a[slot].zero_()
        self.b[slot].zero_()
        R = self.rank
        for s, name in enumerate(self.names):
            w = weights.get(name)
            if w is None:
                continue
            a, b = w
            r = a.shape[0]
            self.a[slot, s * R : s * R + r].copy_(a, non_blocking=True)
            self.b[slot, self.offsets[s] : self.offsets[s] + self.sizes[s], :r].copy_(b, non_blocking=True)

    def __call__(self, module: nn.Module, inputs: tuple, y: torch.Tensor) -> torch.Tensor | None:
        """The forward hook: ``y`` plus each slot's delta on its rows (None: unchanged)."""
        groups = self.batch.groups
        if not groups:
            return None
        x = inputs[0]
        R = self.rank
        for slot, rows in groups:
            xs = x if rows is None else x.index_select(0, rows)
            xa = xs.to(self.a.dtype) @ self.a[slot].t()  # [m, shards * R]
            for s, (off, size) in enumerate(zip(self.offsets, self.sizes, strict=True)):
                d = (xa[:, s * R : (s + 1) * R] @ self.b[slot, off : off + size].t()).to(y.dtype)
                out = y.narrow(-1, off, size)
                if rows is None:
                    out.add_(d)
                else:
                    out.index_add_(0, rows, d)
        return y
