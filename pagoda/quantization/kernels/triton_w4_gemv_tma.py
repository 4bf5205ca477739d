"""One-row 4-bit weight GEMV whose weight tiles arrive by TMA (Hopper's tensor memory accelerator) into a
multi-stage shared-memory ring: ``y[1, N] = x[1, K] @ W.T`` on the packed layout of :mod:`triton_w4_gemv`
(int32 ``[K/8, N]``, nibble ``j`` of word row ``t*P/8 + r`` = code of K row ``t*P + j*P/8 + r``; scales
``[K/G, N]``), CUDA with compute capability >= 9.0 or ``TRITON_INTERPRET=1``.

Why: at one row :func:`triton_w4_gemv.w4_gemv` streams the large Llama-3-8B linears at ~2.2 TB/s in steady state
(gate_up 30.1 us against 18.3 us of bytes at 3.2 TB/s, RESULTS.md session 36): its words travel through
registers, so the bytes a program keeps in flight are bounded by the registers it can spare (1-2 tiles ahead).
A TMA load lands in shared memory without registers or per-thread address arithmetic, and Triton's pipeliner
keeps ``STAGES - 1`` tiles in flight per program for it.

Arithmetic as :func:`triton_w4_gemv.w4_gemv` (the same ``_nibble`` / ``lift`` decode and per-group scale; sums
in fp32; split-K partials summed in split order by the program that arrives last, so a result does not depend
on which program finishes last). Counters as there (:mod:`pagoda.layers.arrival_counters`).
"""

from __future__ import annotations

from functools import cache

import torch
import triton
import triton.language as tl

from pagoda.layers.arrival_counters import arrival_counters
from pagoda.layers.pdl import launch_kwargs, pdl_launch_dependents, pdl_wait
from pagoda.layers.triton_mode import interpreted
from pagoda.quantization.kernels.triton_w4_gemv import LIFT, MAGIC, _denormal, _lift, _nibble

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # a Triton without host-side descriptors: available() is False
    TensorDescriptor = None


def available(device: torch.device) -> bool:
    """Whether this kernel can run on ``device``: the interpreter, or CUDA sm_90+ with host tensor descriptors."""
    if TensorDescriptor is None:
        return False
    if device.type == "cpu":
        return interpreted(_w4_gemv_tma_kernel)
    return device.type == "cuda" and _sm90(device.index if device.index is not None else torch.cuda.current_device())


@cache
def _sm90(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


@triton.jit(do_not_specialize=["tiles_per_split", "num_tiles", "num_splits"])
def _w4_gemv_tma_kernel(x_ptr, w_desc, s_ptr, o_ptr, out_ptr, ws_ptr, cnt_ptr, N, tiles_per_split, num_tiles,
                        num_splits, magic, GROUP: tl.constexpr, PACK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                        SPLIT: tl.constexpr, STAGES: tl.constexpr, USE_PDL: tl.constexpr, LIFT_X: tl.constexpr,
                        SYM: tl.constexpr):
    """Program (n block, K split): K tiles ``[pid_k * tiles_per_split, ...)`` of ``BLOCK_N`` columns. Tensors are
    ``[P/8, BLOCK_N]`` (word rows by columns), x loaded per nibble position as ``[P/8, 1]``; the sum over word
    rows runs once at the end. ``SYM``: offsets are ``-8 * scales`` (not read); else ``o_ptr`` holds them."""
    pdl_launch_dependents(USE_PDL)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    KP: tl.constexpr = PACK_K // 8
    JG: tl.constexpr = 8 if GROUP % PACK_K == 0 else (GROUP // KP if PACK_K % GROUP == 0 else 1)
    offs_r = tl.arange(0, KP)
    n0 = pid_n * BLOCK_N
    on = n0 + tl.arange(0, BLOCK_N)
    n_ok = on < N
    acc = tl.zeros((KP, BLOCK_N), dtype=tl.float32)
    t_lo = pid_k * tiles_per_split
    t_hi = tl.minimum(num_tiles, t_lo + tiles_per_split)
    for t in tl.range(t_lo, t_hi, num_stages=STAGES):
        p = w_desc.load([t * KP, n0])
        pdl_wait(USE_PDL)  # in the loop, after the weights' load: the pipeliner's first loads issue before it
        ph = p >> 12
        for gj in tl.static_range(8 // JG):
            part = tl.zeros((KP, BLOCK_N), dtype=tl.float32)
            xs = tl.zeros((KP, 1), dtype=tl.float32)
            for jj in tl.static_range(JG):
                xj = tl.load(x_ptr + t * PACK_K + (gj * JG + jj) * KP + offs_r).to(tl.float32)[:, None]
                if LIFT_X:
                    part += (xj * _lift(gj * JG + jj)) * _denormal(p, ph, gj * JG + jj)
                else:
                    part += xj * _nibble(p, ph, magic, gj * JG + jj, 8 if SYM else 0)
                if LIFT_X or not SYM:
                    xs += xj
            g = (t * PACK_K + gj * JG * KP) // GROUP
            s = tl.load(s_ptr + g * N + on, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            if LIFT_X:
                acc += part * (s * (2.0 ** (149 - LIFT)))
            else:
                acc += part * s
            if not SYM:
                acc += xs * tl.load(o_ptr + g * N + on, mask=n_ok, other=0.0).to(tl.float32)[None, :]
            elif LIFT_X:  # the lift decode reads q, not q - 8
                acc += xs * (s * -8.0)
    pdl_wait(USE_PDL)  # (also for a program without tiles)
    res = tl.sum(acc, axis=0)
    if SPLIT:
        ws = ws_ptr + on
        tl.store(ws + pid_k * N, res, mask=n_ok)
        tl.debug_barrier()  # every thread's partial is written before the release below
        arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel")
        if arrived == num_splits - 1:  # the last program of this column block: fixed-order sum of all partials
            total = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for i in range(0, num_splits, 8):  # 8 loads in flight per round, summed in split order
                for u in tl.static_range(8):
                    ok = n_ok & (tl.full((BLOCK_N,), i + u, tl.int32) < num_splits)
                    total += tl.load(ws + (i + u) * N, mask=ok, other=0.0, cache_modifier=".cg")
            tl.store(cnt_ptr + pid_n, 0)  # re-armed for the next launch
            tl.store(out_ptr + on, total.to(out_ptr.dtype.element_ty), mask=n_ok)
    else:
        tl.store(out_ptr + on, res.to(out_ptr.dtype.element_ty), mask=n_ok)


def w4_gemv_tma(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor,
                group_size: int, pack_k: int, block_n: int, split_k: int, num_warps: int = 4, stages: int = 4,
                pdl: bool = False, lift: bool = False, symmetric: bool = False) -> torch.Tensor:
    """``x[1, K] @ W.T`` in ``x``'s dtype; ``symmetric``: the caller guarantees ``offsets == -8 * scales`` (then
    ``offsets`` is not read); ``split_k`` programs share each column block's K tiles; ``stages``: the
    shared-memory ring's depth (tiles in flight + 1); ``lift``: :data:`triton_w4_gemv.LIFT`'s decode
    (``|x| < 2**38``)."""
    m, k = x.shape
    if m != 1 or not x.is_contiguous():
        raise ValueError(f"w4_gemv_tma: one contiguous row (got {tuple(x.shape)})")
    n = scales.shape[1]
    k_tiles = k // pack_k
    per_split = triton.cdiv(k_tiles, split_k)
    split = triton.cdiv(k_tiles, per_split)
    out = torch.empty((1, n), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(n, block_n), split)
    if split > 1:
        ws = torch.empty((split, n), device=x.device, dtype=torch.float32)
        cnt = arrival_counters(x.device, grid[0])
    else:
        ws, cnt = out, out
    desc = TensorDescriptor(qweight, list(qweight.shape), list(qweight.stride()), [pack_k // 8, block_n])
    _w4_gemv_tma_kernel[grid](x, desc, scales, offsets, out, ws, cnt, n, per_split, k_tiles, split, MAGIC,
                              GROUP=group_size, PACK_K=pack_k, BLOCK_N=block_n, SPLIT=split > 1, STAGES=stages,
                              LIFT_X=lift, SYM=symmetric, num_warps=num_warps,
                              **(launch_kwargs(x.device) if pdl else {"USE_PDL": False}))
    return out
