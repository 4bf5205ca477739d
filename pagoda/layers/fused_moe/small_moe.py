"""Fused MoE for a few (token, expert) pairs (decode at small batch): two GEMV kernels, no alignment.

At batch 1 with top-8 there are 8 pairs; sorting them by expert and padding each expert's run to a
``BLOCK_M`` tile (:mod:`.triton_moe`) costs three alignment launches, a SiLU·mul launch and a top-k sum,
and the grouped GEMM computes 16 rows to use one. Here each pair is a matrix-vector product instead:

* :func:`_gate_up_gemv_kernel`, program ``(p, n-tile)`` (pairs vary fastest, so pairs that chose the
  same expert read the same weight rows at about the same time and share them through L2): token
  ``t = p // top_k``, expert ``e = topk_ids[p]`` read on the device; ``gate = x[t] . w13[e, n, :]`` and
  ``up = x[t] . w13[e, I + n, :]`` for its ``BLOCK_N`` rows (H walked in ``BLOCK_K`` steps, products
  accumulated element-wise in a float32 tile and reduced over K once at the end, so no step waits on a
  cross-warp reduction); stores ``act[p, n] = silu(gate) * up``.
* :func:`_down_gemv_kernel`, program ``(t, n-tile)``: ``out[t, n] = sum_k topk_w[t, k] *
  (act[t*top_k + k] . w2[e_k, n, :])``, ``BLOCK_U`` choices' weight tiles loaded per step (bytes in
  flight: one program streams ``BLOCK_U x BLOCK_N x BLOCK_K`` weights at once), the choices summed in
  a fixed order in float32 and rounded once.

So a layer is the router GEMM, :func:`~.triton_moe.fused_topk` and these two launches. Deterministic (no
atomics; every sum has a fixed order for a given rule), no host synchronisation, every shape a function of
``T``: capturable in CUDA graphs like the grouped path.

Numerics against the grouped path: gate and up are rounded to the activation dtype before the SiLU and the
SiLU output again before the product (as :func:`pagoda.layers.fused_kernels.silu_and_mul` does on the
rounded gate_up GEMM output), so ``act`` matches up to float32 summation order. The down side differs: the
grouped path rounds each pair's weighted down output to the activation dtype and then sums the ``top_k``
rows; here the weighted sum stays in float32 and is rounded once (one rounding instead of ``top_k + 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@dataclass(frozen=True)
class MoeGemvRule:
    """Launch of one small-path kernel: ``block_n`` output rows per program, ``block_k`` elements of the
    reduction dim per step, ``num_warps``; ``block_u`` (down kernel only): top-k choices whose weight tiles
    are loaded per step (0: all of them)."""

    block_n: int
    block_k: int
    num_warps: int = 4
    block_u: int = 0


SMALL_MOE_ENABLED = True
"""False: :func:`small_moe_rules` always answers None, so every call takes the grouped path (the A/B switch
of ``benchmarks/gpu/moe_bench.py --small-moe off``; read at call time, so at CUDA-graph capture)."""

# Measured: benchmarks/gpu/moe_small_sweep.py on an H200 (session 4, call 3; Qwen3-30B-A3B layer, T = 1..16);
# the small path beat the grouped one at every T measured (at T = 16 by 1 %). Re-run the sweep (it prints the
# table to paste) after changing the kernels; the default before measurement was reasoned from register counts.
SMALL_MOE_TABLE: dict[int, tuple[MoeGemvRule, MoeGemvRule]] = {  # max pairs -> (gate_up rule, down rule)
    8: (MoeGemvRule(block_n=8, block_k=256), MoeGemvRule(block_n=8, block_k=128, num_warps=8)),
    16: (MoeGemvRule(block_n=8, block_k=256), MoeGemvRule(block_n=4, block_k=256, block_u=2)),
    32: (MoeGemvRule(block_n=16, block_k=256, num_warps=8), MoeGemvRule(block_n=8, block_k=128, num_warps=8)),
    64: (MoeGemvRule(block_n=8, block_k=256), MoeGemvRule(block_n=8, block_k=128, num_warps=8)),
    128: (MoeGemvRule(block_n=8, block_k=256), MoeGemvRule(block_n=8, block_k=128, num_warps=8)),
}
"""``T * top_k`` at most the key (the smallest key at or above it): the small path with these launches; above
the largest key (or above the expert count: :func:`small_moe_rules`) the grouped path of :mod:`.triton_moe`."""


def small_moe_rules(num_pairs: int, num_experts: int,
                    table: dict[int, tuple[MoeGemvRule, MoeGemvRule]] | None = None
                    ) -> tuple[MoeGemvRule, MoeGemvRule] | None:
    """The small path's launches for ``num_pairs`` (token, expert) pairs over ``num_experts`` experts from
    ``table`` (default :data:`SMALL_MOE_TABLE`), or None for the grouped path: above the table's largest key,
    and with more pairs than experts (then some expert is surely chosen twice, and the GEMVs read its weights
    once per pair where the grouped GEMM reads them once; Mixtral's 8 experts at batch 8, say)."""
    table = SMALL_MOE_TABLE if table is None else table
    if not SMALL_MOE_ENABLED or num_pairs == 0 or num_pairs > num_experts:
        return None
    fits = [b for b in table if b >= num_pairs]
    return table[min(fits)] if fits else None


@triton.jit(do_not_specialize=["P"])  # one compile for every batch size
def _gate_up_gemv_kernel(x_ptr, w_ptr, ids_ptr, act_ptr, P, INTER, H, E, stride_xt, stride_we, stride_wn,
                         stride_ap, TOP_K: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    """act[p, n] = silu(x[t] . w[e, n]) * (x[t] . w[e, INTER + n]) with t = p // TOP_K, e = ids[p]."""
    pid = tl.program_id(0)
    p = pid % P
    pid_n = pid // P
    e = tl.minimum(tl.load(ids_ptr + p), E - 1).to(tl.int64)  # (a NaN row's id E_PAD: no read past the weights)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < INTER
    gate_rows = w_ptr + e * stride_we + offs_n.to(tl.int64)[:, None] * stride_wn
    up_rows = gate_rows + INTER * stride_wn
    x_row = x_ptr + (p // TOP_K).to(tl.int64) * stride_xt
    acc_g = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)  # reduced over K once, after the loop
    acc_u = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        if EVEN_K:
            xk = tl.load(x_row + offs_k)
            g = tl.load(gate_rows + offs_k[None, :], mask=n_ok[:, None], other=0.0)
            u = tl.load(up_rows + offs_k[None, :], mask=n_ok[:, None], other=0.0)
        else:
            k_ok = offs_k < H
            xk = tl.load(x_row + offs_k, mask=k_ok, other=0.0)
            g = tl.load(gate_rows + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
            u = tl.load(up_rows + offs_k[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0.0)
        xf = xk.to(tl.float32)[None, :]
        acc_g += g.to(tl.float32) * xf
        acc_u += u.to(tl.float32) * xf
    dt = act_ptr.dtype.element_ty
    gate = tl.sum(acc_g, axis=1).to(dt).to(tl.float32)  # rounded as the grouped GEMM's output, then as
    up = tl.sum(acc_u, axis=1).to(dt).to(tl.float32)  # silu_and_mul rounds the SiLU
    s = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
    tl.store(act_ptr + p.to(tl.int64) * stride_ap + offs_n, (s * up).to(dt), mask=n_ok)


@triton.jit(do_not_specialize=["T"])
def _down_gemv_kernel(act_ptr, w_ptr, ids_ptr, tw_ptr, out_ptr, T, H, INTER, E, stride_ap, stride_we, stride_wn,
                      stride_ot, TOP_K: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_U: tl.constexpr,
                      BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[t, n] = sum_k tw[t, k] * (act[t * TOP_K + k] . w[ids[t, k], n]), k in order, float32."""
    pid = tl.program_id(0)
    t = pid % T
    pid_n = pid // T
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < H
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for u0 in tl.static_range(0, TOP_K, BLOCK_U):
        offs_u = u0 + tl.arange(0, BLOCK_U)
        u_ok = offs_u < TOP_K
        pair = t * TOP_K + offs_u
        e = tl.minimum(tl.load(ids_ptr + pair, mask=u_ok, other=0), E - 1).to(tl.int64)
        wk = tl.load(tw_ptr + pair, mask=u_ok, other=0.0).to(tl.float32)
        rows = w_ptr + e[:, None, None] * stride_we + offs_n.to(tl.int64)[None, :, None] * stride_wn
        a_rows = act_ptr + pair.to(tl.int64)[:, None] * stride_ap
        un_ok = u_ok[:, None, None] & n_ok[None, :, None]
        part = tl.zeros([BLOCK_U, BLOCK_N, BLOCK_K], dtype=tl.float32)  # reduced over K after the loop
        for k0 in range(0, INTER, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            if EVEN_K:
                a = tl.load(a_rows + offs_k[None, :], mask=u_ok[:, None], other=0.0)
                w = tl.load(rows + offs_k[None, None, :], mask=un_ok, other=0.0)
            else:
                k_ok = offs_k < INTER
                a = tl.load(a_rows + offs_k[None, :], mask=u_ok[:, None] & k_ok[None, :], other=0.0)
                w = tl.load(rows + offs_k[None, None, :], mask=un_ok & k_ok[None, None, :], other=0.0)
            part += w.to(tl.float32) * a.to(tl.float32)[:, None, :]
        acc += tl.sum(tl.sum(part, axis=2) * wk[:, None], axis=0)
    tl.store(out_ptr + t.to(tl.int64) * stride_ot + offs_n, acc.to(out_ptr.dtype.element_ty), mask=n_ok)


def small_fused_experts(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                        topk_ids: torch.Tensor, rules: tuple[MoeGemvRule, MoeGemvRule]) -> torch.Tensor:
    """:func:`~.triton_moe.fused_experts` by the two GEMV kernels (module docstring); ``x`` [T, H] contiguous,
    ``w13`` [E, 2I, H] and ``w2`` [E, H, I] with the last dim contiguous, ``topk_ids`` [T, K] int32 (an id
    past ``E - 1``, which the routing kernel gives a NaN row, reads expert ``E - 1``: never past the weights)."""
    T, H = x.shape
    inter = w2.shape[2]
    top_k = topk_ids.shape[1]
    if T == 0:
        return torch.empty_like(x)
    r13, r2 = rules
    P = T * top_k
    ids = topk_ids.contiguous()
    tw = topk_weights.contiguous()
    act = torch.empty(P, inter, dtype=x.dtype, device=x.device)
    _gate_up_gemv_kernel[(P * triton.cdiv(inter, r13.block_n),)](
        x, w13, ids, act, P, inter, H, w13.shape[0], x.stride(0), w13.stride(0), w13.stride(1), act.stride(0),
        TOP_K=top_k, EVEN_K=H % r13.block_k == 0, BLOCK_N=r13.block_n, BLOCK_K=r13.block_k,
        num_warps=r13.num_warps)
    out = torch.empty_like(x)
    bu = triton.next_power_of_2(min(r2.block_u or top_k, top_k))
    _down_gemv_kernel[(T * triton.cdiv(H, r2.block_n),)](
        act, w2, ids, tw, out, T, H, inter, w2.shape[0], act.stride(0), w2.stride(0), w2.stride(1), out.stride(0),
        TOP_K=top_k, EVEN_K=inter % r2.block_k == 0, BLOCK_U=bu, BLOCK_N=r2.block_n, BLOCK_K=r2.block_k,
        num_warps=r2.num_warps)
    return out
