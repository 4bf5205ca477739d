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

from pagoda.layers.fused_moe.quantized import MODE_FP8, MODE_INT4, StackedWeight
from pagoda.layers.fused_moe.triton_dequant import WeightArgs, dequant, dequant_nibbles, kernel_args


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


# Quantized experts (:mod:`.quantized`): measured the same way (``moe_small_sweep.py --quant fp8|int4``, H200,
# session 13; FP8 per-row scales, 4-bit groups of 128); a mode without a table uses SMALL_MOE_TABLE.
SMALL_MOE_QUANT_TABLES: dict[int, dict[int, tuple[MoeGemvRule, MoeGemvRule]]] = {
    MODE_FP8: {
        8: (MoeGemvRule(block_n=8, block_k=256), MoeGemvRule(block_n=8, block_k=512, num_warps=8)),
        16: (MoeGemvRule(block_n=8, block_k=512), MoeGemvRule(block_n=4, block_k=256)),
        32: (MoeGemvRule(block_n=16, block_k=256), MoeGemvRule(block_n=4, block_k=256)),
        64: (MoeGemvRule(block_n=16, block_k=256), MoeGemvRule(block_n=4, block_k=256)),
    },
    MODE_INT4: {
        8: (MoeGemvRule(block_n=8, block_k=512), MoeGemvRule(block_n=8, block_k=256, num_warps=8)),
        16: (MoeGemvRule(block_n=16, block_k=256), MoeGemvRule(block_n=16, block_k=256, num_warps=8)),
        32: (MoeGemvRule(block_n=16, block_k=256), MoeGemvRule(block_n=16, block_k=256, num_warps=8)),
        64: (MoeGemvRule(block_n=16, block_k=256), MoeGemvRule(block_n=16, block_k=256, num_warps=8)),
    },
}
"""Per weight mode, the small path's launches and its reach (above the largest key: the grouped path)."""


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
def _gate_up_gemv_kernel(x_ptr, w_ptr, s_ptr, o_ptr, ids_ptr, act_ptr, P, INTER, H, E, stride_xt, stride_we,
                         stride_wn, stride_se, stride_sn, stride_sk, stride_ap, TOP_K: tl.constexpr,
                         EVEN_K: tl.constexpr, QUANT: tl.constexpr, SN: tl.constexpr, SK: tl.constexpr,
                         S_ROW: tl.constexpr, FP8_NATIVE: tl.constexpr, KT: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr):
    """act[p, n] = silu(x[t] . w[e, n]) * (x[t] . w[e, INTER + n]) with t = p // TOP_K, e = ids[p]; ``QUANT``:
    the weight's mode (:mod:`.triton_dequant`; 4-bit: ``KT = BLOCK_K / 2`` packed bytes per step)."""
    pid = tl.program_id(0)
    p = pid % P
    pid_n = pid // P
    e = tl.minimum(tl.load(ids_ptr + p), E - 1).to(tl.int64)  # (a NaN row's id E_PAD: no read past the weights)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < INTER
    gate_rows = w_ptr + e * stride_we + offs_n.to(tl.int64)[:, None] * stride_wn
    up_rows = gate_rows + INTER * stride_wn
    gs_rows = s_ptr + e * stride_se + (offs_n // SN)[:, None] * stride_sn
    us_rows = s_ptr + e * stride_se + ((offs_n + INTER) // SN)[:, None] * stride_sn
    go_rows = o_ptr + e * stride_se + (offs_n // SN)[:, None] * stride_sn
    uo_rows = o_ptr + e * stride_se + ((offs_n + INTER) // SN)[:, None] * stride_sn
    x_row = x_ptr + (p // TOP_K).to(tl.int64) * stride_xt
    acc_g = tl.zeros([BLOCK_N, KT], dtype=tl.float32)  # reduced over K once, after the loop
    acc_u = tl.zeros([BLOCK_N, KT], dtype=tl.float32)
    for k0 in range(0, H, BLOCK_K):
        if QUANT == 2:  # packed 4-bit: byte kb holds inputs 2kb (low nibble) and 2kb + 1
            kb = k0 // 2 + tl.arange(0, KT)
            k_ok = kb < H // 2
            m = n_ok[:, None] & k_ok[None, :]
            xe = tl.load(x_row + 2 * kb, mask=k_ok, other=0.0).to(tl.float32)[None, :]
            xo = tl.load(x_row + 2 * kb + 1, mask=k_ok, other=0.0).to(tl.float32)[None, :]
            if S_ROW:
                s_off = (k0 // SK) * stride_sk
                sm = n_ok[:, None]
            else:
                s_off = ((2 * kb) // SK)[None, :] * stride_sk
                sm = m
            g_lo, g_hi = dequant_nibbles(tl.load(gate_rows + kb[None, :], mask=m, other=0), gs_rows + s_off,
                                         go_rows + s_off, sm)
            u_lo, u_hi = dequant_nibbles(tl.load(up_rows + kb[None, :], mask=m, other=0), us_rows + s_off,
                                         uo_rows + s_off, sm)
            acc_g += g_lo * xe + g_hi * xo
            acc_u += u_lo * xe + u_hi * xo
        else:
            offs_k = k0 + tl.arange(0, BLOCK_K)
            if EVEN_K:
                xk = tl.load(x_row + offs_k)
                m = n_ok[:, None]
            else:
                k_ok = offs_k < H
                xk = tl.load(x_row + offs_k, mask=k_ok, other=0.0)
                m = n_ok[:, None] & k_ok[None, :]
            g = tl.load(gate_rows + offs_k[None, :], mask=m, other=0.0)
            u = tl.load(up_rows + offs_k[None, :], mask=m, other=0.0)
            if QUANT != 0:
                if S_ROW:
                    s_off = (k0 // SK) * stride_sk
                    sm = n_ok[:, None]
                else:
                    s_off = (offs_k // SK)[None, :] * stride_sk
                    sm = n_ok[:, None] & (offs_k < H)[None, :]
                g = dequant(g, gs_rows + s_off, go_rows + s_off, sm, QUANT, FP8_NATIVE)
                u = dequant(u, us_rows + s_off, uo_rows + s_off, sm, QUANT, FP8_NATIVE)
            xf = xk.to(tl.float32)[None, :]
            acc_g += g.to(tl.float32) * xf
            acc_u += u.to(tl.float32) * xf
    dt = act_ptr.dtype.element_ty
    gate = tl.sum(acc_g, axis=1).to(dt).to(tl.float32)  # rounded as the grouped GEMM's output, then as
    up = tl.sum(acc_u, axis=1).to(dt).to(tl.float32)  # silu_and_mul rounds the SiLU
    s = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
    tl.store(act_ptr + p.to(tl.int64) * stride_ap + offs_n, (s * up).to(dt), mask=n_ok)


@triton.jit(do_not_specialize=["T"])
def _down_gemv_kernel(act_ptr, w_ptr, s_ptr, o_ptr, ids_ptr, tw_ptr, out_ptr, T, H, INTER, E, stride_ap, stride_we,
                      stride_wn, stride_se, stride_sn, stride_sk, stride_ot, TOP_K: tl.constexpr, EVEN_K: tl.constexpr,
                      QUANT: tl.constexpr, SN: tl.constexpr, SK: tl.constexpr, S_ROW: tl.constexpr,
                      FP8_NATIVE: tl.constexpr, KT: tl.constexpr, BLOCK_U: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr):
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
        s_rows = s_ptr + e[:, None, None] * stride_se + (offs_n // SN)[None, :, None] * stride_sn
        o_rows = o_ptr + e[:, None, None] * stride_se + (offs_n // SN)[None, :, None] * stride_sn
        a_rows = act_ptr + pair.to(tl.int64)[:, None] * stride_ap
        un_ok = u_ok[:, None, None] & n_ok[None, :, None]
        part = tl.zeros([BLOCK_U, BLOCK_N, KT], dtype=tl.float32)  # reduced over K after the loop
        for k0 in range(0, INTER, BLOCK_K):
            if QUANT == 2:
                kb = k0 // 2 + tl.arange(0, KT)
                k_ok = kb < INTER // 2
                am = u_ok[:, None] & k_ok[None, :]
                ae = tl.load(a_rows + (2 * kb)[None, :], mask=am, other=0.0).to(tl.float32)[:, None, :]
                ao = tl.load(a_rows + (2 * kb + 1)[None, :], mask=am, other=0.0).to(tl.float32)[:, None, :]
                m = un_ok & k_ok[None, None, :]
                if S_ROW:
                    s_off = (k0 // SK) * stride_sk
                    sm = un_ok
                else:
                    s_off = ((2 * kb) // SK)[None, None, :] * stride_sk
                    sm = m
                lo, hi = dequant_nibbles(tl.load(rows + kb[None, None, :], mask=m, other=0), s_rows + s_off,
                                         o_rows + s_off, sm)
                part += lo * ae + hi * ao
            else:
                offs_k = k0 + tl.arange(0, BLOCK_K)
                if EVEN_K:
                    a = tl.load(a_rows + offs_k[None, :], mask=u_ok[:, None], other=0.0)
                    m = un_ok
                else:
                    k_ok = offs_k < INTER
                    a = tl.load(a_rows + offs_k[None, :], mask=u_ok[:, None] & k_ok[None, :], other=0.0)
                    m = un_ok & k_ok[None, None, :]
                w = tl.load(rows + offs_k[None, None, :], mask=m, other=0.0)
                if QUANT != 0:
                    if S_ROW:
                        s_off = (k0 // SK) * stride_sk
                        sm = un_ok
                    else:
                        s_off = (offs_k // SK)[None, None, :] * stride_sk
                        sm = un_ok & (offs_k < INTER)[None, None, :]
                    w = dequant(w, s_rows + s_off, o_rows + s_off, sm, QUANT, FP8_NATIVE)
                part += w.to(tl.float32) * a.to(tl.float32)[:, None, :]
        acc += tl.sum(tl.sum(part, axis=2) * wk[:, None], axis=0)
    tl.store(out_ptr + t.to(tl.int64) * stride_ot + offs_n, acc.to(out_ptr.dtype.element_ty), mask=n_ok)


def small_fused_experts(x: torch.Tensor, w13: WeightArgs | torch.Tensor | StackedWeight,
                        w2: WeightArgs | torch.Tensor | StackedWeight, topk_weights: torch.Tensor,
                        topk_ids: torch.Tensor, rules: tuple[MoeGemvRule, MoeGemvRule]) -> torch.Tensor:
    """:func:`~.triton_moe.fused_experts` by the two GEMV kernels (module docstring); ``x`` [T, H] contiguous,
    ``w13`` ([E, 2I, H]) and ``w2`` ([E, H, I]) dense or quantized weights or their launch arguments
    (:func:`.triton_dequant.kernel_args`; the last dim contiguous), ``topk_ids`` [T, K] int32 (an id past
    ``E - 1``, which the routing kernel gives a NaN row, reads expert ``E - 1``: never past the weights)."""
    w13 = w13 if isinstance(w13, WeightArgs) else kernel_args(w13)
    w2 = w2 if isinstance(w2, WeightArgs) else kernel_args(w2)
    T, H = x.shape
    inter = w2.k
    top_k = topk_ids.shape[1]
    if T == 0:
        return torch.empty_like(x)
    r13, r2 = rules
    P = T * top_k
    ids = topk_ids.contiguous()
    tw = topk_weights.contiguous()
    act = torch.empty(P, inter, dtype=x.dtype, device=x.device)
    bk13, bk2 = w13.step_k(r13.block_k, 2), w2.step_k(r2.block_k, 2)
    _gate_up_gemv_kernel[(P * triton.cdiv(inter, r13.block_n),)](
        x, w13.w, w13.s, w13.o, ids, act, P, inter, H, w13.w.shape[0], x.stride(0), *w13.strides_w[:2],
        *w13.strides_s, act.stride(0), TOP_K=top_k, EVEN_K=H % bk13 == 0, **w13.constexprs(bk13),
        KT=bk13 // 2 if w13.mode == MODE_INT4 else bk13, BLOCK_N=r13.block_n, BLOCK_K=bk13, num_warps=r13.num_warps)
    out = torch.empty_like(x)
    bu = triton.next_power_of_2(min(r2.block_u or top_k, top_k))
    _down_gemv_kernel[(T * triton.cdiv(H, r2.block_n),)](
        act, w2.w, w2.s, w2.o, ids, tw, out, T, H, inter, w2.w.shape[0], act.stride(0), *w2.strides_w[:2],
        *w2.strides_s, out.stride(0), TOP_K=top_k, EVEN_K=inter % bk2 == 0, **w2.constexprs(bk2),
        KT=bk2 // 2 if w2.mode == MODE_INT4 else bk2, BLOCK_U=bu, BLOCK_N=r2.block_n, BLOCK_K=bk2,
        num_warps=r2.num_warps)
    return out
