"""Top-k routing in Triton: :func:`route_row`, shared by :func:`fused_topk` and the small path's first kernel.

:func:`route_row` is :func:`~pagoda.layers.fused_moe.routing.select_experts` for one token: the softmax over all
experts in float32, the ``K`` largest probabilities (the lowest expert index among equal ones), renormalised to
sum 1 when ``RENORM``. Every caller runs the same instructions on the same row, so the small path's in-kernel
routing (:mod:`.small_moe`, ``FUSED_ROUTING``) gives bitwise the weights and ids :func:`fused_topk` gives.
A NaN row has no maximum: its ids are ``E_PAD`` (callers clamp them to the last expert before reading weights).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.layers.fused_moe.routing import RoutingConfig


@triton.jit
def route_row(logits_ptr, row, stride_l, E, K: tl.constexpr, K_PAD: tl.constexpr, E_PAD: tl.constexpr,
              RENORM: tl.constexpr):
    """(weights [K_PAD] float32, ids [K_PAD] int32) of token ``row``; entries past ``K`` are 0."""
    offs = tl.arange(0, E_PAD)
    x = tl.load(logits_ptr + row * stride_l + offs, mask=offs < E, other=float("-inf")).to(tl.float32)
    p = tl.exp(x - tl.max(x, axis=0))
    p = p / tl.sum(p, axis=0)
    p = tl.where(offs < E, p, -1.0)
    kk = tl.arange(0, K_PAD)
    vals = tl.zeros([K_PAD], dtype=tl.float32)
    idxs = tl.zeros([K_PAD], dtype=tl.int32)
    for k in tl.static_range(K):
        v = tl.max(p, axis=0)
        i = tl.min(tl.where(p == v, offs, E_PAD), axis=0)  # the lowest index among equals
        vals = tl.where(kk == k, v, vals)
        idxs = tl.where(kk == k, i, idxs)
        p = tl.where(offs == i, -1.0, p)
    if RENORM:
        vals = vals / tl.sum(tl.where(kk < K, vals, 0.0), axis=0)
    return vals, idxs


@triton.jit
def _topk_softmax_kernel(logits_ptr, w_ptr, ids_ptr, stride_l, E, K: tl.constexpr, K_PAD: tl.constexpr,
                         E_PAD: tl.constexpr, RENORM: tl.constexpr):
    row = tl.program_id(0)
    vals, idxs = route_row(logits_ptr, row, stride_l, E, K, K_PAD, E_PAD, RENORM)
    kk = tl.arange(0, K_PAD)
    tl.store(w_ptr + row * K + kk, vals.to(w_ptr.dtype.element_ty), mask=kk < K)
    tl.store(ids_ptr + row * K + kk, idxs, mask=kk < K)


def routing_weights_dtype(router_logits: torch.Tensor, rc: RoutingConfig) -> torch.dtype:
    return router_logits.dtype if rc.cast_weights else torch.float32


def routing_launch(rc: RoutingConfig, E: int) -> dict:
    """The constexprs of :func:`route_row` for ``rc`` over ``E`` experts."""
    return {"K": rc.top_k, "K_PAD": triton.next_power_of_2(rc.top_k), "E_PAD": triton.next_power_of_2(E),
            "RENORM": rc.norm_topk_prob}


def fused_topk(router_logits: torch.Tensor, rc: RoutingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~pagoda.layers.fused_moe.routing.select_experts` in one kernel; ids are int32."""
    T, E = router_logits.shape
    weights = torch.empty(T, rc.top_k, dtype=routing_weights_dtype(router_logits, rc), device=router_logits.device)
    ids = torch.empty(T, rc.top_k, dtype=torch.int32, device=router_logits.device)
    if T:
        _topk_softmax_kernel[(T,)](router_logits, weights, ids, router_logits.stride(0), E,
                                   **routing_launch(rc, E), num_warps=1 if E <= 128 else 4)
    return weights, ids
