"""Fused MoE on the GPU: top-k routing, align-by-expert and a grouped GEMM, in Triton.

The ``M = T * top_k`` (token, choice) pairs are sorted by expert and each expert's run is
padded to a multiple of ``BLOCK_M`` (``moe_align_block_size``), so every ``BLOCK_M`` rows of
the sorted order belong to one expert. One launch of :func:`_moe_gemm_kernel` then covers all
experts: program ``(m, n)`` loads the rows of block ``m`` (gathered from the activations),
the ``[BLOCK_N, K]`` slice of its expert's weight, and scatters its tile back to the pairs'
rows. ``gate_up`` is one such launch, ``SiLU(gate) * up`` one elementwise kernel, ``down`` a
second launch that also multiplies by the routing weight; the ``top_k`` rows of a token are
summed last. For a few pairs (decode at small batch) :mod:`.small_moe` replaces all of that
after the routing by two GEMV launches (:func:`fused_experts` picks the path by ``T * top_k``).

Every shape is a function of ``T`` alone (the grids are sized for the worst case and blocks
past the device-side padded count exit at once), with no host synchronisation: the whole
path can be captured in a CUDA graph. Alignment is three small deterministic kernels
(per-chunk counts and ranks from a one-hot prefix sum, per-expert offsets, scatter), so
results do not depend on atomics' order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pagoda.layers.fused_moe.quantized import MODE_INT4, StackedWeight
from pagoda.layers.fused_moe.routing import RoutingConfig
from pagoda.layers.fused_moe.small_moe import (
    SMALL_MOE_QUANT_TABLES,
    MoeGemvRule,
    small_fused_experts,
    small_moe_rules,
)
from pagoda.layers.fused_moe.triton_dequant import WeightArgs, fp8_to_f32, kernel_args
from pagoda.layers.triton_mode import interpreted

_ALIGN_BLOCK = 64  # pairs per one-hot chunk
_ALIGN_SPAN = 1024  # pairs per counting program


@triton.jit
def _topk_softmax_kernel(logits_ptr, w_ptr, ids_ptr, stride_l, E, K: tl.constexpr, K_PAD: tl.constexpr,
                         E_PAD: tl.constexpr, RENORM: tl.constexpr):
    row = tl.program_id(0)
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
    tl.store(w_ptr + row * K + kk, vals.to(w_ptr.dtype.element_ty), mask=kk < K)
    tl.store(ids_ptr + row * K + kk, idxs, mask=kk < K)


def fused_topk(router_logits: torch.Tensor, rc: RoutingConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~pagoda.layers.fused_moe.routing.select_experts` in one kernel; ids are int32."""
    T, E = router_logits.shape
    wdtype = router_logits.dtype if rc.cast_weights else torch.float32
    weights = torch.empty(T, rc.top_k, dtype=wdtype, device=router_logits.device)
    ids = torch.empty(T, rc.top_k, dtype=torch.int32, device=router_logits.device)
    if T:
        _topk_softmax_kernel[(T,)](router_logits, weights, ids, router_logits.stride(0), E, K=rc.top_k,
                                   K_PAD=triton.next_power_of_2(rc.top_k), E_PAD=triton.next_power_of_2(E),
                                   RENORM=rc.norm_topk_prob, num_warps=1 if E <= 128 else 4)
    return weights, ids


@triton.jit
def _align_count_kernel(ids_ptr, rank_ptr, pcount_ptr, M, SPAN: tl.constexpr, E_PAD: tl.constexpr,
                        BLOCK: tl.constexpr):
    """Per program (a span of pairs): each pair's rank among its expert's pairs in the span, and the
    span's per-expert counts."""
    pid = tl.program_id(0)
    experts = tl.arange(0, E_PAD)
    counts = tl.zeros([E_PAD], dtype=tl.int32)
    for start in range(pid * SPAN, pid * SPAN + SPAN, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < M
        e = tl.load(ids_ptr + offs, mask=mask, other=-1)
        onehot = (e[:, None] == experts[None, :]).to(tl.int32)
        incl = tl.cumsum(onehot, axis=0)
        rank = tl.sum((incl - 1 + counts[None, :]) * onehot, axis=1)
        tl.store(rank_ptr + offs, rank, mask=mask)
        counts += tl.sum(onehot, axis=0)
    tl.store(pcount_ptr + pid * E_PAD + experts, counts)


@triton.jit
def _align_offsets_kernel(pcount_ptr, poff_ptr, eoff_ptr, expert_ids_ptr, sorted_ptr, npost_ptr, P, M, E,
                          GRID_M, MAX_PADDED, E_PAD: tl.constexpr, BM: tl.constexpr, BLOCK: tl.constexpr):
    """One program: spans' offsets within each expert, experts' padded start offsets, the padded
    total, each block's expert, and the sentinel ``M`` in every sorted slot."""
    experts = tl.arange(0, E_PAD)
    total = tl.zeros([E_PAD], dtype=tl.int32)
    for p in range(P):
        c = tl.load(pcount_ptr + p * E_PAD + experts)
        tl.store(poff_ptr + p * E_PAD + experts, total)
        total += c
    padded = (total + BM - 1) // BM * BM
    end = tl.cumsum(padded, axis=0)
    tl.store(eoff_ptr + experts, end - padded)
    tl.store(npost_ptr, tl.sum(padded, axis=0))
    for b0 in range(0, GRID_M, BLOCK):
        b = b0 + tl.arange(0, BLOCK)
        eid = tl.sum((end[None, :] <= (b * BM)[:, None]).to(tl.int32), axis=1)
        tl.store(expert_ids_ptr + b, tl.minimum(eid, E - 1), mask=b < GRID_M)
    for s0 in range(0, MAX_PADDED, BLOCK):
        s = s0 + tl.arange(0, BLOCK)
        tl.store(sorted_ptr + s, M, mask=s < MAX_PADDED)


@triton.jit
def _align_scatter_kernel(ids_ptr, rank_ptr, poff_ptr, eoff_ptr, sorted_ptr, M, SPAN: tl.constexpr,
                          E_PAD: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    for start in range(pid * SPAN, pid * SPAN + SPAN, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < M
        e = tl.load(ids_ptr + offs, mask=mask, other=0)
        dest = tl.load(eoff_ptr + e, mask=mask, other=0) + tl.load(poff_ptr + pid * E_PAD + e, mask=mask, other=0)
        dest += tl.load(rank_ptr + offs, mask=mask, other=0)
        tl.store(sorted_ptr + dest, offs, mask=mask)


def grid_blocks(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Blocks of ``block_m`` sorted rows that can be in use: each holds >= 1 pair, and at most one per
    expert is partial."""
    return min(num_pairs, triton.cdiv(num_pairs, block_m) + num_experts)


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_m: int):
    """``topk_ids`` [T, K] int32 -> (sorted_ids [G*block_m] int32, expert_ids [G] int32, num_post_padded [1]).

    ``sorted_ids`` lists pair indices (``t * K + k``) grouped by expert, each expert's run padded to a
    multiple of ``block_m`` with the sentinel ``M``; ``expert_ids[b]`` owns rows ``b*block_m ...``;
    blocks at or past ``num_post_padded`` are unused. ``G`` = :func:`grid_blocks`."""
    dev = topk_ids.device
    M = topk_ids.numel()
    g = grid_blocks(M, num_experts, block_m)
    e_pad = triton.next_power_of_2(num_experts)
    P = triton.cdiv(M, _ALIGN_SPAN)
    flat = topk_ids.reshape(-1)
    rank = torch.empty(M, dtype=torch.int32, device=dev)
    pcount = torch.empty(P, e_pad, dtype=torch.int32, device=dev)
    poff = torch.empty_like(pcount)
    eoff = torch.empty(e_pad, dtype=torch.int32, device=dev)
    sorted_ids = torch.empty(g * block_m, dtype=torch.int32, device=dev)
    expert_ids = torch.empty(g, dtype=torch.int32, device=dev)
    npost = torch.empty(1, dtype=torch.int32, device=dev)
    _align_count_kernel[(P,)](flat, rank, pcount, M, SPAN=_ALIGN_SPAN, E_PAD=e_pad, BLOCK=_ALIGN_BLOCK)
    _align_offsets_kernel[(1,)](pcount, poff, eoff, expert_ids, sorted_ids, npost, P, M, num_experts, g,
                                g * block_m, E_PAD=e_pad, BM=block_m, BLOCK=256)
    _align_scatter_kernel[(P,)](flat, rank, poff, eoff, sorted_ids, M, SPAN=_ALIGN_SPAN, E_PAD=e_pad,
                                BLOCK=_ALIGN_BLOCK)
    return sorted_ids, expert_ids, npost


@triton.jit
def _moe_gemm_kernel(a_ptr, w_ptr, s_ptr, o_ptr, c_ptr, topk_w_ptr, sorted_ptr, expert_ids_ptr, npost_ptr, N, K, M,
                     stride_am, stride_we, stride_wn, stride_wk, stride_se, stride_sn, stride_sk, stride_cm, GRID_M,
                     A_DIV: tl.constexpr, MUL_WEIGHT: tl.constexpr, IEEE: tl.constexpr, QUANT: tl.constexpr,
                     SN: tl.constexpr, SK: tl.constexpr, S_ROW: tl.constexpr, FP8_NATIVE: tl.constexpr,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """c[pair] = a[pair // A_DIV] @ w[expert]ᵀ (× routing weight), for the pairs of block ``m``; ``QUANT``: the
    weight's mode (:mod:`.triton_dequant`), each tile dequantized to float32 and rounded to ``a``'s dtype."""
    pid = tl.program_id(0)
    pid_m = pid % GRID_M
    pid_n = pid // GRID_M
    if pid_m * BM >= tl.load(npost_ptr):
        return
    offs_m = pid_m * BM + tl.arange(0, BM)
    pair = tl.load(sorted_ptr + offs_m)
    valid = pair < M
    row = (pair // A_DIV).to(tl.int64)
    e = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BN + tl.arange(0, BN)
    n_mask = offs_n < N
    a_base = a_ptr + row[:, None] * stride_am
    w_base = w_ptr + e * stride_we + offs_n[None, :] * stride_wn
    s_base = s_ptr + e * stride_se + (offs_n // SN)[None, :] * stride_sn
    o_base = o_ptr + e * stride_se + (offs_n // SN)[None, :] * stride_sn
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k0 in range(0, K, BK):
        if QUANT == 2:  # 4-bit codes, two per byte: low nibbles meet even inputs, high nibbles odd ones
            kb = k0 // 2 + tl.arange(0, BK // 2)
            kb_mask = kb < K // 2
            am = valid[:, None] & kb_mask[None, :]
            a_even = tl.load(a_base + (2 * kb)[None, :], mask=am, other=0.0)
            a_odd = tl.load(a_base + (2 * kb + 1)[None, :], mask=am, other=0.0)
            wm = kb_mask[:, None] & n_mask[None, :]
            byte = tl.load(w_base + kb[:, None] * stride_wk, mask=wm, other=0)
            if S_ROW:
                s_off = (k0 // SK) * stride_sk
                s = tl.load(s_base + s_off, mask=n_mask[None, :], other=0.0).to(tl.float32)
                o = tl.load(o_base + s_off, mask=n_mask[None, :], other=0.0).to(tl.float32)
            else:
                s_off = ((2 * kb) // SK)[:, None] * stride_sk
                s = tl.load(s_base + s_off, mask=wm, other=0.0).to(tl.float32)
                o = tl.load(o_base + s_off, mask=wm, other=0.0).to(tl.float32)
            lo = (byte & 15).to(tl.float32) * s + o
            hi = (byte >> 4).to(tl.float32) * s + o
            if IEEE:
                acc += tl.dot(a_even.to(tl.float32), lo, input_precision="ieee")
                acc += tl.dot(a_odd.to(tl.float32), hi, input_precision="ieee")
            else:
                acc += tl.dot(a_even, lo.to(a_even.dtype))
                acc += tl.dot(a_odd, hi.to(a_odd.dtype))
        else:
            offs_k = k0 + tl.arange(0, BK)
            k_mask = offs_k < K
            a = tl.load(a_base + offs_k[None, :], mask=valid[:, None] & k_mask[None, :], other=0.0)
            wm = k_mask[:, None] & n_mask[None, :]
            b = tl.load(w_base + offs_k[:, None] * stride_wk, mask=wm, other=0.0)
            if QUANT != 0:
                if S_ROW:
                    s_off = (k0 // SK) * stride_sk
                    s = tl.load(s_base + s_off, mask=n_mask[None, :], other=0.0).to(tl.float32)
                else:
                    s_off = (offs_k // SK)[:, None] * stride_sk
                    s = tl.load(s_base + s_off, mask=wm, other=0.0).to(tl.float32)
                if QUANT == 1:
                    bf = fp8_to_f32(b, FP8_NATIVE) * s
                else:
                    if S_ROW:
                        o = tl.load(o_base + s_off, mask=n_mask[None, :], other=0.0).to(tl.float32)
                    else:
                        o = tl.load(o_base + s_off, mask=wm, other=0.0).to(tl.float32)
                    bf = b.to(tl.float32) * s + o
                b = bf.to(a.dtype)
            if IEEE:  # fp32 weights, or bf16 under the interpreter (numpy has no bf16 matmul)
                acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
            else:
                acc += tl.dot(a, b)
    if MUL_WEIGHT:
        acc = acc * tl.load(topk_w_ptr + pair, mask=valid, other=0.0).to(tl.float32)[:, None]
    c = c_ptr + pair.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c, acc.to(c_ptr.dtype.element_ty), mask=valid[:, None] & n_mask[None, :])


def _block_m(num_pairs: int, num_experts: int) -> int:
    per_expert = num_pairs / num_experts
    return 16 if per_expert <= 16 else 32 if per_expert <= 48 else 64


@dataclass(frozen=True)
class MoeRule:
    """Launch of one grouped GEMM. ``block_n=None``: 64 below ``BLOCK_M`` 64, else 128."""

    block_n: int | None = None
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 3


BIG = 1 << 30
MOE_TABLE: dict[int, tuple[MoeRule, MoeRule]] = {  # max (token, expert) pairs -> (gate_up rule, down rule)
    8: (MoeRule(block_n=32, block_k=128), MoeRule(block_n=64, block_k=128)),
    512: (MoeRule(block_n=64, block_k=128), MoeRule(block_n=128, block_k=128)),
    BIG: (MoeRule(), MoeRule()),  # benchmarks/gpu/int_weight_sweep.py prints a measured table
}


def moe_rules(num_pairs: int) -> tuple[MoeRule, MoeRule]:
    return MOE_TABLE[min(b for b in MOE_TABLE if b >= num_pairs)]


def _moe_gemm(a, w: WeightArgs, out, topk_w, sorted_ids, expert_ids, npost, a_div: int, mul_weight: bool, bm: int,
              rule: MoeRule) -> None:
    M, N = out.shape
    K = a.shape[1]
    g = expert_ids.numel()
    bn = rule.block_n or (64 if bm < 64 else 128)
    bk = w.step_k(rule.block_k, 32 if w.mode == MODE_INT4 else 16)  # tl.dot needs K >= 16 (4-bit: bytes)
    ieee = a.dtype == torch.float32 or interpreted(_moe_gemm_kernel)
    _moe_gemm_kernel[(g * triton.cdiv(N, bn),)](
        a, w.w, w.s, w.o, out, topk_w, sorted_ids, expert_ids, npost, N, K, M, a.stride(0), *w.strides_w,
        *w.strides_s, out.stride(0), g, A_DIV=a_div, MUL_WEIGHT=mul_weight, IEEE=ieee, **w.constexprs(bk),
        BM=bm, BN=bn, BK=bk, num_warps=rule.num_warps, num_stages=rule.num_stages)


def fused_experts(x: torch.Tensor, w13: torch.Tensor | StackedWeight, w2: torch.Tensor | StackedWeight,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor, rules: tuple[MoeRule, MoeRule] | None = None,
                  small_rules: tuple[MoeGemvRule, MoeGemvRule] | None = None) -> torch.Tensor:
    """``sum_k topk_weights[t, k] * down_e(silu(gate_e(x_t)) * up_e(x_t))`` with ``e = topk_ids[t, k]``.

    ``x`` [T, H]; ``w13`` [E, 2I, H] (gate rows then up rows); ``w2`` [E, H, I] (dense tensors with the last dim
    contiguous, or quantized :class:`~.quantized.StackedWeight`); returns [T, H] in x's dtype.
    The path: the small-batch GEMVs of :mod:`.small_moe` with ``small_rules`` when given, else (``rules``
    not given) when :func:`~.small_moe.small_moe_rules` has a launch for ``T * top_k`` pairs (quantized experts:
    their mode's table in ``SMALL_MOE_QUANT_TABLES`` when it has one); otherwise
    the grouped GEMMs with ``rules`` (default :data:`MOE_TABLE` by ``T * top_k``)."""
    from pagoda.layers.fused_kernels import silu_and_mul

    T, H = x.shape
    E, two_i, _ = w13.shape
    top_k = topk_ids.shape[1]
    M = T * top_k
    if T == 0:
        return torch.empty_like(x)
    a13, a2 = kernel_args(w13), kernel_args(w2)
    assert x.is_contiguous() and a13.strides_w[2] == 1 and a2.strides_w[2] == 1
    small = small_rules or (None if rules else small_moe_rules(M, E, SMALL_MOE_QUANT_TABLES.get(a13.mode)))
    if small is not None:
        return small_fused_experts(x, a13, a2, topk_weights, topk_ids, small)
    bm = _block_m(M, E)
    r13, r2 = rules or moe_rules(M)
    sorted_ids, expert_ids, npost = moe_align_block_size(topk_ids, E, bm)
    gate_up = torch.empty(M, two_i, dtype=x.dtype, device=x.device)
    _moe_gemm(x, a13, gate_up, topk_weights, sorted_ids, expert_ids, npost, top_k, False, bm, r13)
    act = silu_and_mul(gate_up)
    down = torch.empty(M, H, dtype=x.dtype, device=x.device)
    _moe_gemm(act, a2, down, topk_weights, sorted_ids, expert_ids, npost, 1, True, bm, r2)
    return down.view(T, top_k, H).sum(dim=1)
