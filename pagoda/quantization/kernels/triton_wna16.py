"""Triton mixed-precision GEMM: int4/int8 weight codes x bf16/fp16/fp32 activations (CUDA; CPU under
``TRITON_INTERPRET=1``).

Layout (made by :func:`pack`, undone by :func:`unpack`; both plain torch)::

    4-bit (bits <= 4): qweight int32 [K/8, N]   code of (k, n) in bits 4*(k%8) .. 4*(k%8)+3 of word (k//8, n)
    5..8 bits:         qweight uint8 [K, N]
    scales, offsets:   [K/G, N] contiguous (N fastest), activation dtype

N is the fastest axis everywhere, so a tile row of ``BLOCK_N`` outputs is one coalesced load.

Kernel: each program owns a ``BLOCK_M x BLOCK_N`` output tile and a contiguous range of K tiles
(split-K, grid axis 1). ``BLOCK_K`` divides the group size, so a K tile has one scale and one offset
per output column and the dequantization is factored out of the dot product::

    acc += dot(x_tile, codes_tile) * scale[n] + rowsum(x_tile)[m] * offset[n]

i.e. codes are only unpacked and converted (exactly) to the activation dtype in registers; the
multiply-adds of the affine map are per tile, not per weight. fp32 accumulation. Split-K partials go to
an fp32 workspace ``[SPLIT_K, M, N]`` summed (+ bias, cast) by one small reduce kernel (deterministic, no
atomics, no zero-fill).

Configs are chosen by :func:`choose_config` (no autotuning): ``BLOCK_M = 16`` for M <= 16 (the
decode GEMV-like case; ``tl.dot`` needs 16 rows), 32/64/128 above; split-K up to ~4 programs per SM for
M <= 16, and for larger M only when the output tiles cannot cover the SMs once; >= 2 K tiles per split.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import triton
import triton.language as tl
from triton.runtime.jit import JITFunction


@triton.jit
def _wna16_kernel(x_ptr, qw_ptr, s_ptr, o_ptr, out_ptr, M, N, K, stride_xm, stride_om, stride_os,
                  tiles_per_split, GROUP: tl.constexpr, BITS4: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr,
                  UNPACK_GATHER: tl.constexpr):
    pid_mn = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_n = tl.cdiv(N, BLOCK_N)
    pid_m = pid_mn // num_n
    pid_n = pid_mn % num_n
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_lo = pid_k * tiles_per_split * BLOCK_K
    k_hi = tl.minimum(K, k_lo + tiles_per_split * BLOCK_K)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :], mask=m_ok[:, None], other=0.0)
        if BITS4 and UNPACK_GATHER:  # each word loaded 8 times (L1 hits), no reshape
            p = tl.load(qw_ptr + (offs_k // 8)[:, None] * N + offs_n[None, :], mask=n_ok[None, :], other=0)
            q = (p >> ((offs_k % 8) * 4)[:, None]) & 0xF
        elif BITS4:  # each word loaded once, unpacked to [BLOCK_K/8, 8, BLOCK_N] and reshaped
            offs_p = k0 // 8 + tl.arange(0, BLOCK_K // 8)
            p = tl.load(qw_ptr + offs_p[:, None] * N + offs_n[None, :], mask=n_ok[None, :], other=0)
            shifts = tl.arange(0, 8) * 4
            q = (p[:, None, :] >> shifts[None, :, None]) & 0xF
            q = tl.reshape(q, (BLOCK_K, BLOCK_N))
        else:
            q = tl.load(qw_ptr + offs_k[:, None] * N + offs_n[None, :], mask=n_ok[None, :], other=0)
        g = k0 // GROUP
        s = tl.load(s_ptr + g * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        o = tl.load(o_ptr + g * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        if DOT_F32:
            part = tl.dot(x.to(tl.float32), q.to(tl.float32), input_precision="ieee")
        else:
            part = tl.dot(x, q.to(x_ptr.dtype.element_ty))
        xsum = tl.sum(x.to(tl.float32), axis=1)
        acc += part * s[None, :] + xsum[:, None] * o[None, :]
    out = out_ptr + pid_k * stride_os + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _splitk_reduce_kernel(ws_ptr, bias_ptr, out_ptr, MN, N, SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr,
                          BLOCK: tl.constexpr):
    """out = sum over splits of the fp32 workspace (+ bias), cast: one launch instead of sum, add, cast."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in tl.static_range(SPLIT):
        acc += tl.load(ws_ptr + i * MN + offs, mask=ok, other=0.0)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs % N, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=ok)


@dataclass(frozen=True)
class WNA16Config:
    block_m: int
    block_n: int
    block_k: int
    split_k: int
    num_warps: int = 4
    num_stages: int = 3
    unpack_gather: bool = False
    """4-bit unpack: False = load each word once and reshape; True = per-element word loads and shifts."""


def max_block_k(group_size: int) -> int:
    """The largest power of two dividing ``group_size``, capped at 128 (a K tile must lie in one group)."""
    return min(128, group_size & -group_size)


def supported(bits: int, group_size: int, in_features: int) -> bool:
    return 1 <= bits <= 8 and max_block_k(group_size) >= 16 and in_features % group_size == 0


@lru_cache(maxsize=8)
def num_sms(device_index: int | None) -> int:
    if not torch.cuda.is_available():
        return 4  # the interpreter: any small number exercises split-K
    return torch.cuda.get_device_properties(device_index or 0).multi_processor_count


def choose_config(m: int, n: int, k: int, group_size: int, sms: int) -> WNA16Config:
    """Tile sizes and split-K by a heuristic (module docstring)."""
    if m <= 16:
        bm, bn, warps, stages = 16, 64, 4, 4
    elif m <= 32:
        bm, bn, warps, stages = 32, 128, 4, 3
    elif m <= 64:
        bm, bn, warps, stages = 64, 128, 4, 3
    else:
        bm, bn, warps, stages = 128, 128, 8, 3
    bk = max_block_k(group_size)
    if bm >= 64:
        bk = min(bk, 64)
    tiles_mn = triton.cdiv(m, bm) * triton.cdiv(n, bn)
    k_tiles = k // bk
    # Decode (M <= 16) is a pure weight stream: aim at ~4 programs per SM. Larger M pays for split-K in
    # workspace traffic (split x M x N fp32), so only split when the tiles cannot cover the SMs once.
    target, need = (4 * sms, 4 * sms) if m <= 16 else (sms, sms)
    split = 1
    if tiles_mn < need:
        split = max(1, min(triton.cdiv(target, tiles_mn), k_tiles // 2))
    return WNA16Config(bm, bn, bk, split, warps, stages)


def _interpreting() -> bool:
    return not isinstance(_wna16_kernel, JITFunction)


def wna16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor,
                 bits: int, group_size: int, bias: torch.Tensor | None = None,
                 config: WNA16Config | None = None) -> torch.Tensor:
    """``x[M, K] @ W.T`` with W in the packed layout of this module (``scales``/``offsets`` ``[K/G, N]``)."""
    m, k = x.shape
    n = scales.shape[1]
    if x.stride(1) != 1:
        x = x.contiguous()
    cfg = config or choose_config(m, n, k, group_size, num_sms(x.device.index))
    k_tiles = k // cfg.block_k
    per_split = triton.cdiv(k_tiles, cfg.split_k)
    split = triton.cdiv(k_tiles, per_split)
    if split == 1:
        out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    else:
        out = torch.empty((split, m, n), device=x.device, dtype=torch.float32)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), split)
    dot_f32 = x.dtype == torch.float32 or _interpreting()
    _wna16_kernel[grid](x, qweight, scales, offsets, out, m, n, k, x.stride(0), n, m * n, per_split,
                        GROUP=group_size, BITS4=bits <= 4, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                        BLOCK_K=cfg.block_k, DOT_F32=dot_f32, UNPACK_GATHER=cfg.unpack_gather,
                        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if split == 1:
        return out if bias is None else out.add_(bias)
    res = torch.empty((m, n), device=x.device, dtype=x.dtype)
    block = 1024
    _splitk_reduce_kernel[(triton.cdiv(m * n, block),)](out, bias if bias is not None else out, res, m * n, n,
                                                       SPLIT=split, HAS_BIAS=bias is not None, BLOCK=block)
    return res


_SHIFTS = (4 * torch.arange(8, dtype=torch.int64)).view(1, 8, 1)


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes ``[N, K]`` -> this module's weight layout (K must be a multiple of 8 for 4-bit)."""
    ct = codes.t()
    if bits > 4:
        return ct.contiguous()
    n_in, n_out = ct.shape
    words = (ct.reshape(n_in // 8, 8, n_out).to(torch.int64) << _SHIFTS.to(codes.device)).sum(1)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32).contiguous()


def unpack(qweight: torch.Tensor, bits: int) -> torch.Tensor:
    """Inverse of :func:`pack`: uint8 codes ``[N, K]``."""
    if bits > 4:
        return qweight.t().contiguous()
    kp, n_out = qweight.shape
    q = (qweight.to(torch.int64).unsqueeze(1) >> _SHIFTS.to(qweight.device)) & 0xF
    return q.reshape(kp * 8, n_out).t().to(torch.uint8).contiguous()
