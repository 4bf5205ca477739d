"""A CPU stand-in for CUDA-graph capture and replay, for tests of graph safety on a machine without a GPU.

``with OpTrace() as trace: out = f(static_inputs)`` records every aten op ``f`` dispatches, with the very
tensors it read and wrote. ``trace.replay()`` re-runs those ops on the same tensors, writing each op's result
into the tensor the capture produced, without running ``f``'s Python again: exactly what a CUDA graph does
with its kernels and memory addresses. So after the caller changes the contents of the static inputs in place,
``replay()`` leaves in ``out`` what ``f`` would compute now, if and only if ``f`` reads its inputs only through
device ops: a value taken to the host at capture (``.item()``, ``.tolist()``, a branch on a tensor) stays frozen,
as it would in a real graph, and the replayed output then differs from an eager run.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class OpTrace(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[Any, tuple, dict, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out

    @torch.inference_mode()
    def replay(self) -> None:
        for func, args, kwargs, out in self.ops:
            new = func(*args, **kwargs)
            for dst, src in zip(tree_leaves(out), tree_leaves(new), strict=True):
                if isinstance(dst, torch.Tensor) and dst.data_ptr() != src.data_ptr():
                    dst.copy_(src)  # lands where the capture's result was (views, in-place ops: already there)
