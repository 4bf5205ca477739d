"""Top-k expert selection exactly as HF transformers computes it (Mixtral, Qwen2-MoE, Qwen3-MoE).

``probs = softmax(router_logits in float32)`` over *all* experts, then the ``top_k`` largest;
renormalised to sum 1 when ``norm_topk_prob`` (always for Mixtral). Qwen's routers then round
the weights to the model dtype (``cast_weights``); Mixtral's keep float32. The router logits
themselves are a plain matmul in the model dtype (the ``gate`` linear).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RoutingConfig:
    num_experts: int
    top_k: int
    norm_topk_prob: bool
    cast_weights: bool  # round the routing weights to the logits' dtype (Qwen), or keep float32 (Mixtral)


def select_experts(router_logits: torch.Tensor, rc: RoutingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``router_logits`` [T, E] -> (weights [T, K] float32 or model dtype, expert ids [T, K] int64)."""
    probs = torch.softmax(router_logits.float(), dim=-1)
    weights, ids = torch.topk(probs, rc.top_k, dim=-1)
    if rc.norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    if rc.cast_weights:
        weights = weights.to(router_logits.dtype)
    return weights, ids
