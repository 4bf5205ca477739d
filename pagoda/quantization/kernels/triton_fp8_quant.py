"""One Triton launch that quantizes activations to FP8 for ``torch._scaled_mm`` (CUDA; CPU under
``TRITON_INTERPRET=1``).

The torch form of the same arithmetic (:func:`pagoda.quantization.w8a8.quantize_fp8`) is eight launches per
linear (cast, abs, amax, divide, clamp, divide, clamp, cast); at batch 1 those launches cost more than the
bytes FP8 weights save. This kernel does the whole per-token (or static per-tensor) rule in one pass per row,
with the reference's exact fp32 arithmetic: ``s = max(absmax * (1/448), 1e-12)`` (or the static
``input_scale``), ``q = clamp(x / s, -448, 448)`` with an IEEE round-to-nearest division (``div_rn``, as
torch's tensor-by-tensor division), cast to float8_e4m3fn (round to nearest even). Invariant: codes and
scales are bit-identical to the torch form.

:func:`fp8_row_scale` and :func:`fp8_codes` are that rule for any kernel holding a whole row in registers: the
fused norm and SiLU·mul kernels (:mod:`pagoda.layers.fused_kernels`) quantize their own output with them, so
their :class:`~pagoda.quantization.w8a8.Fp8Rows` equal this kernel's on the rows they would have returned.

``out`` may also be a float32 buffer: then the kernel stores ``clamp(x / s)`` before the cast, which is how the
CPU test checks it (the interpreter's own float8 cast rounds differently from the hardware's and torch's).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_MAX_BLOCK = 16384
"""Rows up to this many elements are read once (held in registers: 32 a thread at 16 warps); longer ones twice."""


@triton.jit
def fp8_row_scale(xf, FP8_MAX: tl.constexpr, MIN_SCALE: tl.constexpr):
    """A row's dynamic scale from its float32 values ``xf`` (the whole row; masked lanes 0):
    ``max(absmax * (1/448), 1e-12)``, the one rule every producer of FP8 rows shares."""
    return tl.maximum(tl.max(tl.abs(xf), axis=0) * (1.0 / FP8_MAX), MIN_SCALE)


@triton.jit
def fp8_codes(xf, s, FP8_MAX: tl.constexpr):
    """``clamp(x / s, -448, 448)`` with an IEEE round-to-nearest division (``div_rn``, as torch's tensor division),
    still float32: the caller casts it to its codes' dtype (float8_e4m3fn rounds to nearest even)."""
    return tl.minimum(tl.maximum(tl.math.div_rn(xf, s), -FP8_MAX), FP8_MAX)


@triton.jit
def _fp8_quant_kernel(x_ptr, q_ptr, s_ptr, static_ptr, K, stride_x, stride_q, FP8_MAX: tl.constexpr,
                      MIN_SCALE: tl.constexpr, STATIC: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    if BLOCK >= K:  # the whole row in registers: read once
        offs = tl.arange(0, BLOCK)
        ok = offs < K
        x = tl.load(x_row + offs, mask=ok, other=0.0).to(tl.float32)
        if STATIC:
            s = tl.load(static_ptr).to(tl.float32)
        else:
            s = fp8_row_scale(x, FP8_MAX, MIN_SCALE)
        tl.store(q_ptr + row * stride_q + offs, fp8_codes(x, s, FP8_MAX).to(q_ptr.dtype.element_ty), mask=ok)
    else:
        if STATIC:
            s = tl.load(static_ptr).to(tl.float32)
        else:
            amax = tl.zeros((BLOCK,), dtype=tl.float32)
            for k0 in range(0, K, BLOCK):
                offs = k0 + tl.arange(0, BLOCK)
                x = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.abs(x))
            s = fp8_row_scale(amax, FP8_MAX, MIN_SCALE)
        for k0 in range(0, K, BLOCK):
            offs = k0 + tl.arange(0, BLOCK)
            ok = offs < K
            x = tl.load(x_row + offs, mask=ok, other=0.0).to(tl.float32)
            tl.store(q_ptr + row * stride_q + offs, fp8_codes(x, s, FP8_MAX).to(q_ptr.dtype.element_ty), mask=ok)
    tl.store(s_ptr + row, s)


def quantize_fp8_rows(x2: torch.Tensor, input_scale: torch.Tensor | None, fp8_max: float, min_scale: float,
                      out_dtype: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """``x2`` ``[M, K]`` (unit stride along K) -> (codes ``[M, K]`` of ``out_dtype``, float32 scales ``[M, 1]``).

    A static ``input_scale`` (one element) is used for every row; otherwise each row's absmax decides."""
    m, k = x2.shape
    if x2.stride(1) != 1:
        x2 = x2.contiguous()
    q = torch.empty((m, k), device=x2.device, dtype=out_dtype)
    s = torch.empty((m, 1), device=x2.device, dtype=torch.float32)
    if m == 0:
        return q, s
    static = input_scale is not None
    block = min(_MAX_BLOCK, triton.next_power_of_2(k))
    _fp8_quant_kernel[(m,)](x2, q, s, input_scale if static else s, k, x2.stride(0), q.stride(0),
                            FP8_MAX=fp8_max, MIN_SCALE=min_scale, STATIC=static, BLOCK=block,
                            num_warps=16 if block >= 8192 else 8 if block >= 2048 else 4)
    return q, s
