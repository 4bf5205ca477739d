"""The adapters' compute: per target linear, ``max_loras`` device slots and a forward hook adding the delta.

Each linear an adapter may target (``qkv_proj``, ``o_proj``, ``gate_up_proj``, ``down_proj`` of every decoder layer)
gets a :class:`LoRASlots` of S shards (q/k/v: 3, gate/up: 2, else 1), L = ``max_loras`` slots and rank R =
``max_lora_rank``: ``a`` [S, L, R, in] and ``bt`` [L * R, out] (an adapter of rank r < R fills the first r of its R,
the rest stay zero; its scale is folded into ``bt``; shard s owns the output columns ``offsets[s]:+sizes[s]``).

The hook adds, for every row, its slot's delta, with the same kernels whatever the step holds (on CUDA the matmul
and one launch of :mod:`pagoda.lora.triton_lora` for the rest; elsewhere these torch ops):
``xa = x a^T`` [T, S, L, R] for all slots at once, times the step's row mask (:class:`LoRABatch`: row t, slot l is
1 where row t's request uses the adapter in slot l, else 0), then per shard ``y[:, shard] += xa[:, s] bt[:, shard]``.
A row without an adapter gets an exact zero; rows past the step's (padding of a CUDA graph's bucket) too. The shapes
and buffers do not depend on the step, so the hook is captured into CUDA graphs and replays with each step's mask
(written in place before the launch). The hook works whatever the module computes the base output with (a dense,
packed or quantized linear), as long as the model calls the module (the native CPU decoder stack does not: it runs
only steps without adapter rows).
"""

from __future__ import annotations

import torch
from torch import nn


class LoRABatch:
    """This step's rows: ``row_mask`` [rows, max_loras] (row t, slot l: 1 where row t uses slot l's adapter; rows
    past the step's are 0), a persistent device buffer written in place once per step (:meth:`set_rows`), so CUDA
    graphs read each step's. ``active``: some row uses an adapter; ``always``: the hooks run even when none does
    (CUDA graphs replay their kernels whatever the step holds, so eager steps do the same and give the same
    numbers); else a step without adapter rows skips them."""

    def __init__(self, max_rows: int, max_loras: int, dtype: torch.dtype, device: torch.device) -> None:
        self.row_mask = torch.zeros(max_rows, max_loras, dtype=dtype, device=device)
        self.active = False
        self.always = False
        self._host = torch.zeros(0, max_loras, dtype=dtype)  # the mask last written (its rows past it are zero)
        self._slots: list[int] = []  # the rows' slots last written

    @property
    def max_rows(self) -> int:
        return self.row_mask.shape[0]

    def set_rows(self, slots: list[int]) -> None:
        """Row t of this step uses the adapter in slot ``slots[t]`` (-1: none). Writes the mask only when it
        changed, clearing rows the last step set beyond this one's."""
        n = len(slots)
        if n > self.max_rows:
            raise RuntimeError(f"a LoRA step of {n} rows is over the {self.max_rows} rows its mask holds")
        if slots == self._slots:  # a decode step of the same batch: nothing to build or write
            return
        self._slots = list(slots)
        self.active = any(s >= 0 for s in slots)
        rows = max(n, self._host.shape[0])
        host = torch.zeros(rows, self.row_mask.shape[1], dtype=self.row_mask.dtype)
        if self.active:
            t = torch.tensor(slots, dtype=torch.long)
            used = (t >= 0).nonzero().squeeze(1)
            host[used, t[used]] = 1
        if host.shape == self._host.shape and torch.equal(host, self._host):
            return
        self.row_mask[:rows].copy_(host.to(self.row_mask.device, non_blocking=True))
        self._host = host[:n].clone() if rows > n else host


class LoRASlots:
    """The slot buffers of one target linear and its forward hook (module docstring)."""

    def __init__(self, names: tuple[str, ...], in_features: int, out_sizes: tuple[int, ...], max_loras: int,
                 max_rank: int, dtype: torch.dtype, device: torch.device, batch: LoRABatch) -> None:
        self.names = names
        self.sizes = out_sizes
        self.offsets = tuple(sum(out_sizes[:i]) for i in range(len(out_sizes)))
        self.rank = max_rank
        self.slots = max_loras
        self.batch = batch
        self.a = torch.zeros(len(names), max_loras, max_rank, in_features, dtype=dtype, device=device)
        self.bt = torch.zeros(max_loras * max_rank, sum(out_sizes), dtype=dtype, device=device)
        self._a_all = self.a.view(-1, in_features)  # [S * L * R, in]
        self._expand = None  # on CUDA: pagoda.lora.triton_lora.lora_expand, the mask and every shard in one launch
        if device.type == "cuda":
            from pagoda.lora.triton_lora import MAX_SHARDS, lora_expand

            self._expand = lora_expand if len(names) <= MAX_SHARDS else None

    @property
    def nbytes(self) -> int:
        return self.a.numel() * self.a.element_size() + self.bt.numel() * self.bt.element_size()

    def set_slot(self, slot: int, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Put one adapter's weights of this module (``name -> (A [r, in], B [out, r])``; a shard it does not target
        is absent) into ``slot``."""
        R = self.rank
        self.a[:, slot].zero_()
        self.bt[slot * R : (slot + 1) * R].zero_()
        for s, name in enumerate(self.names):
            w = weights.get(name)
            if w is None:
                continue
            a, b = w
            r = a.shape[0]
            self.a[s, slot, :r].copy_(a, non_blocking=True)
            self.bt[slot * R : slot * R + r, self.offsets[s] : self.offsets[s] + self.sizes[s]].copy_(
                b.t(), non_blocking=True)

    def __call__(self, module: nn.Module, inputs: tuple, y: torch.Tensor) -> torch.Tensor | None:
        """The forward hook: ``y`` plus each row's delta (None: the step has no adapter rows and runs eager)."""
        batch = self.batch
        if not (batch.active or batch.always):
            return None
        x = inputs[0]
        xa = x.to(self.a.dtype) @ self._a_all.t()  # [T, S * L * R]
        if self._expand is not None and y.stride(-1) == 1:  # CUDA: the rest in one launch (it applies the mask)
            return self._expand(y, xa, self.bt, batch.row_mask, self.offsets, self.rank, self.slots)
        T, S, LR = x.shape[0], len(self.names), self.slots * self.rank
        xa = xa.view(T, S, self.slots, self.rank).mul_(batch.row_mask[:T, None, :, None]).view(T, S, LR)
        same = y.dtype == self.bt.dtype
        for s, (off, size) in enumerate(zip(self.offsets, self.sizes, strict=True)):
            out, bt = y.narrow(-1, off, size), self.bt.narrow(1, off, size)
            if same:
                out.addmm_(xa[:, s], bt)
            else:
                out.add_((xa[:, s] @ bt).to(y.dtype))
        return y
