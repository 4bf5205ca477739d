"""Is a wrapped HF model's forward capturable in a CUDA graph? A start-up check by dispatch tracing.

A CUDA graph replays the kernels one forward launched, on the same memory, without running Python again.
So the forward may depend on the shapes of its inputs (each batch size has its own graph) but never on their
values through the host: no ``.item()`` / ``bool(t)`` / ``.tolist()`` (a device-to-host copy and a sync),
no op whose output shape depends on data (``nonzero``, boolean-mask indexing, ``unique``...), no host tensor
copied to the device during the step (its value would be frozen at capture). pagoda's step metadata comes
from the graph runner's static buffers (:mod:`pagoda.worker.cuda_graphs`), which the fallback's attention
reads through its step context, so what remains to check is the HF modules' own code: HF's dynamic rope
(``rope_type: dynamic``), for one, decides on the host whether to recompute its frequencies from
``max(position_ids)``.

:class:`HostSyncCheck` is a ``TorchDispatchMode`` that records every such op a forward dispatches. It runs
once at start-up around the fallback's probe forwards; any finding turns CUDA graphs off for that model
(eager, with a log line naming the op). On the CPU ``.tolist()`` of a CPU tensor does not dispatch, so the
check is complete on the device the graphs run on (where it is a device-to-host copy), not on the CPU.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

_aten = torch.ops.aten
# Ops that read a device value on the host or whose output shape depends on data.
_HOST_SYNC_OPS = frozenset({
    _aten._local_scalar_dense, _aten.is_nonzero, _aten.equal, _aten.nonzero, _aten.masked_select,
    _aten._unique2, _aten.unique_dim, _aten.unique_consecutive, _aten.argwhere,
})


def _crosses_host(func: Any, args: tuple, kwargs: dict, out: Any) -> bool:
    """An op that moves a (non-scalar) tensor between the host and an accelerator."""
    tensors = [t for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)]
    on_host = [t for t in tensors if t.device.type == "cpu"]
    return bool(on_host) and len(on_host) < len(tensors) and any(t.dim() > 0 for t in on_host)


class HostSyncCheck(TorchDispatchMode):
    """Records the ops of a forward that a CUDA graph cannot replay faithfully (module docstring).

    ``problems``: one entry per offending op, in dispatch order (the op's name)."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.overloadpacket in _HOST_SYNC_OPS:
            self.problems.append(str(func.overloadpacket))
        elif _crosses_host(func, args, kwargs, out):
            self.problems.append(f"{func.overloadpacket} (a host/device copy)")
        return out


def describe(problems: list[str]) -> str | None:
    """One line naming the distinct offending ops (None: graph-safe)."""
    if not problems:
        return None
    names = list(dict.fromkeys(problems))
    return f"{len(problems)} host-synchronising op(s) in its forward: {', '.join(names[:5])}"
