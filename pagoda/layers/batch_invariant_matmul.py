"""A batch-invariant matmul for CUDA linears (``--deterministic``; pagoda.layers.batch_invariant).

``y = x W^T (+ b)`` by one Triton kernel whose tile config is a function of the weight's shape (N, K) and
dtype only, never of M: a program owns a ``BLOCK_M x BLOCK_N`` output tile and walks K from 0 in
``BLOCK_K`` steps, accumulating ``tl.dot`` in float32 (no split-K, no atomics). Every output element is
thus the same sequence of operations whatever the number of rows and whichever tile its row lands in,
so a row's result never depends on the other rows (cuBLAS picks kernels, and split-K, per M).
Tested under ``TRITON_INTERPRET=1`` at tiny sizes (tests/kernels/test_batch_invariant_matmul.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.layers.triton_mode import interpreted


@triton.jit
def _matmul_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                   HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + rk) < K
        x = tl.load(x_ptr + rm[:, None].to(tl.int64) * stride_xm + (k0 + rk)[None, :],
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = tl.load(w_ptr + rn[None, :].to(tl.int64) * stride_wn + (k0 + rk)[:, None],
                    mask=n_ok[None, :] & k_ok[:, None], other=0.0)
        acc += tl.dot(x.to(DOT_DTYPE), w.to(DOT_DTYPE), input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None].to(tl.int64) * stride_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def config_for(n: int, k: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps): from the weight's (N, K) and dtype only (never from M).
    Without split-K a decode step has only ``N / BLOCK_N`` programs, so narrow layers get narrow tiles
    (N = 4096: 128 programs at BLOCK_N = 32) to keep the SMs streaming weights. Not tuned on a GPU yet."""
    if dtype == torch.float32:
        return 64, 32, 32, 4
    return (64, 64, 64, 4) if n >= 16384 else (64, 32, 64, 4)


def matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           config: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """x [M, K] @ weight[N, K]^T (+ bias [N]) -> [M, N] in x's dtype; ``config`` overrides the tiles (tests)."""
    m, k = x.shape
    n = weight.shape[0]
    if weight.shape[1] != k:
        raise ValueError(f"matmul: x has {k} columns, weight {tuple(weight.shape)}")
    x = x if x.stride(-1) == 1 else x.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    bm, bn, bk, warps = config or config_for(n, k, x.dtype)
    if x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and interpreted(_matmul_kernel)):
        dot_dtype, precision = tl.float32, "ieee"  # no TF32; numpy has no bf16 matmul
    else:
        dot_dtype, precision = (tl.bfloat16 if x.dtype == torch.bfloat16 else tl.float16), "tf32"
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _matmul_kernel[grid](x, weight, bias if bias is not None else y, y, m, n, k, x.stride(0), weight.stride(0),
                         y.stride(0), HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                         DOT_DTYPE=dot_dtype, DOT_PRECISION=precision, num_warps=warps, num_stages=3)
    return y


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` with any leading dimensions, batch-invariant."""
    lead = x.shape[:-1]
    y = matmul(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.view(*lead, weight.shape[0])
