"""The MoE experts in plain PyTorch (the CPU path, and CUDA without Triton).

Pairs ``(token, choice)`` are sorted by expert; each expert that some token chose runs once, on
its contiguous run of rows (one ``gate_up`` and one ``down`` matmul), so an unselected expert's
weights are never read. The arithmetic follows HF transformers' expert loop: matmuls in the
model dtype, ``act(gate) * up``, the down output times the routing weight, summed per token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F


def _expert_linear(w: Any, e: int, x: torch.Tensor) -> torch.Tensor:
    """``x @ w[e].T``: a quantized form's own kernels when it has them (``linear``), else the dense expert."""
    linear = getattr(w, "linear", None)
    return linear(e, x) if linear is not None else F.linear(x, w[e])


def grouped_experts(x: torch.Tensor, w13: Any, w2: Any, topk_weights: torch.Tensor,
                    topk_ids: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor] = F.silu) -> torch.Tensor:
    """Same contract as :func:`pagoda.layers.fused_moe.triton_moe.fused_experts`."""
    T, H = x.shape
    top_k = topk_ids.shape[1]
    inter = w2.shape[2]
    flat = topk_ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=w13.shape[0]).tolist()
    rows = x.index_select(0, order // top_k)
    out = torch.empty(T * top_k, H, dtype=x.dtype, device=x.device)
    start = 0
    for e, n in enumerate(counts):
        if n == 0:
            continue
        seg = rows[start : start + n]
        gate, up = _expert_linear(w13, e, seg).split(inter, dim=-1)
        out[start : start + n] = _expert_linear(w2, e, act(gate) * up)
        start += n
    w = topk_weights.reshape(-1).index_select(0, order)
    weighted = (out * w[:, None]).to(x.dtype)
    result = torch.zeros(T * top_k, H, dtype=x.dtype, device=x.device)
    result.index_copy_(0, order, weighted)
    return result.view(T, top_k, H).sum(dim=1)
