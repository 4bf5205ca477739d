"""W8A8 FP8 GEMM in Triton for the shapes where cuBLAS's tiles leave SMs idle (CUDA; CPU under ``TRITON_INTERPRET=1``).

Why: at a few hundred token rows ``torch._scaled_mm`` runs every Llama-3-8B linear with 128 x 128 tiles (H100
profile, session 32: one ``nvjet ... 128x128`` kernel for all 128 linears of a batch-256 decode step), so the
4,096-wide outputs (``o_proj``, ``down_proj``) are 64 tiles on 132 SMs at 256 rows: half the GPU idles. Smaller
tiles fill it; a tile's weights are re-read by the other row tiles of its column from L2 (programs walk the rows
of one column of tiles before the next column).

Kernel: ``C[m, n] = (sum_k A[m, k] * B[n, k]) * sa[m] * sb[n] (+ bias[n])``: ``A`` the activations' float8_e4m3fn
codes ``[M, K]`` with per-token scales ``sa`` ``[M, 1]``, ``B`` the weight's codes ``[N, K]`` with per-channel scales
``sb`` ``[N]`` (both K-major, as wgmma wants FP8 operands); products on tensor cores, each K tile's sum added to a
float32 accumulator (as ``_scaled_mm`` without fast accumulation: Hopper's FP8 MMA keeps fewer bits); the
scales applied once in float32 in the epilogue, then one rounding to the output dtype and the bias added in it (as
the ``_scaled_mm`` path adds it). Invariants: deterministic (no split-K, no atomics); every output row depends only
on its own input row; the launch depends only on the shapes (CUDA-graph capturable).

Which shapes take it: :data:`FP8_GEMM_TABLE`, the measured winners over ``_scaled_mm``
(``benchmarks/gpu/fp8_gemm_sweep.py``); anything else stays on ``_scaled_mm``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

Fp8GemmRule = tuple[int, int, int, int, int]
"""``(block_m, block_n, block_k, num_warps, num_stages)`` (a plain tuple, so a benchmark can pass a table as a
Python literal)."""

FP8_GEMM_TABLE: dict[tuple[int, int, int], Fp8GemmRule] = {}
"""``(max rows, N, K) -> rule``: the smallest bucket at or above the call's rows that has an entry for ``(N, K)``
decides (:func:`fp8_gemm_rule`); no entry: ``_scaled_mm``."""

ROW_BUCKETS = (64, 128, 256, 512, 1024)


def fp8_gemm_rule(m: int, n: int, k: int, table: dict[tuple[int, int, int], Fp8GemmRule] | None = None
                  ) -> Fp8GemmRule | None:
    """The Triton launch for an ``[m, k] x [n, k]^T`` FP8 product, or None for ``_scaled_mm``."""
    table = FP8_GEMM_TABLE if table is None else table
    if not table or m > ROW_BUCKETS[-1]:
        return None
    for bucket in ROW_BUCKETS:
        if m <= bucket:
            return table.get((bucket, n, k))
    return None


@triton.jit
def _fp8_gemm_kernel(a_ptr, b_ptr, sa_ptr, sb_ptr, bias_ptr, c_ptr, M, N, K, stride_am, stride_bn, stride_cm,
                     HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     EVEN_K: tl.constexpr, DOT_F32: tl.constexpr):
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    pid_n = pid // tiles_m  # row tiles of one column of tiles run next to each other: its weights stay in L2
    pid_m = pid % tiles_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + offs_n.to(tl.int64)[None, :] * stride_bn + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=m_ok[:, None], other=0.0)
            b = tl.load(b_ptrs, mask=n_ok[None, :], other=0.0)
        else:
            k_ok = k0 + offs_k < K
            a = tl.load(a_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=n_ok[None, :] & k_ok[:, None], other=0.0)
        if DOT_F32:  # the interpreter: exact fp32 products of the codes (each fits fp32), fp32 sums
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:  # each K tile's FP8 dot on its own, added in float32: Hopper's FP8 MMA accumulates with fewer bits,
            acc += tl.dot(a, b)  # so an accumulator carried through all of K drifts (K = 4,096: ~1e-3 of the row)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    sa = tl.load(sa_ptr + offs_m, mask=m_ok, other=0.0)
    sb = tl.load(sb_ptr + offs_n, mask=n_ok, other=0.0)
    out = (acc * sa[:, None] * sb[None, :]).to(c_ptr.dtype.element_ty)
    if HAS_BIAS:  # as torch adds two bf16 tensors: the float32 sum of the rounded product and the bias, rounded
        bias = tl.load(bias_ptr + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        out = (out.to(tl.float32) + bias[None, :]).to(c_ptr.dtype.element_ty)
    tl.store(c_ptr + offs_m.to(tl.int64)[:, None] * stride_cm + offs_n[None, :], out,
             mask=m_ok[:, None] & n_ok[None, :])


def fp8_gemm(xq: torch.Tensor, sx: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
             bias: torch.Tensor | None, out_dtype: torch.dtype, rule: Fp8GemmRule) -> torch.Tensor:
    """``(xq @ weight.T) * sx * weight_scale (+ bias)`` in ``out_dtype``: ``xq`` ``[M, K]`` and ``weight`` ``[N, K]``
    float8_e4m3fn codes with unit stride along K, ``sx`` ``[M, 1]`` and ``weight_scale`` ``[N]`` float32."""
    m, k = xq.shape
    n = weight.shape[0]
    if weight.shape[1] != k or xq.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError(f"fp8_gemm: codes [{m}, {k}] and weight {tuple(weight.shape)} must share K, unit stride")
    block_m, block_n, block_k, num_warps, num_stages = rule
    c = torch.empty((m, n), dtype=out_dtype, device=xq.device)
    if m == 0:
        return c
    interp = not isinstance(_fp8_gemm_kernel, triton.runtime.jit.JITFunction)
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    _fp8_gemm_kernel[grid](xq, weight, sx.reshape(-1), weight_scale.reshape(-1), bias if bias is not None else c, c,
                           m, n, k, xq.stride(0), weight.stride(0), c.stride(0), HAS_BIAS=bias is not None,
                           BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, EVEN_K=k % block_k == 0,
                           DOT_F32=interp, num_warps=num_warps, num_stages=num_stages)
    return c
