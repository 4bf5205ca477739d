"""Triton side of the FP8 KV cache: the store every KV-writing kernel uses.

``store_kv`` writes ``x`` into a cache slot. For an FP8 cache (``FP8`` = 1: e4m3fn, 2: e5m2) it
applies :mod:`pagoda.attention.kv_quant`'s rule: divide by the scale in fp32, saturate to the
format's max, round to nearest-even, store the byte. The rounding is done in fp32 before the
conversion (the value is then exactly representable, so the conversion itself cannot round):
Triton's interpreter rounds ties away and loses the carry into the exponent, and the pre-rounding
makes the interpreter (CPU tests) and the GPU give torch's bytes. Normal values round by integer
arithmetic on the fp32 bits (drop 20 or 21 mantissa bits, nearest-even, carry included);
subnormals by adding and subtracting a magic constant (1.5 * 2^23 quanta).

Reads need no helper: kernels load the byte and convert it with ``.to()`` (exact), and fold the
scales into the softmax scale and the output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pagoda.attention.kv_quant import is_fp8


def fp8_code(dtype: torch.dtype) -> int:
    """The ``FP8`` constexpr for a cache dtype: 0 (not FP8), 1 (e4m3fn) or 2 (e5m2)."""
    if not is_fp8(dtype):
        return 0
    return 1 if dtype == torch.float8_e4m3fn else 2


@triton.jit
def _round_fp8(x, FP8_MAX: tl.constexpr, MANT_DROP: tl.constexpr, MIN_NORMAL: tl.constexpr,
               MAGIC: tl.constexpr):
    x = tl.minimum(tl.maximum(x, -FP8_MAX), FP8_MAX)
    b = x.to(tl.int32, bitcast=True)
    b = (b + ((1 << (MANT_DROP - 1)) - 1) + ((b >> MANT_DROP) & 1)) & ~((1 << MANT_DROP) - 1)
    sub = (x + MAGIC) - MAGIC
    return tl.where(tl.abs(x) < MIN_NORMAL, sub, b.to(tl.float32, bitcast=True))


@triton.jit
def store_kv(ptr, x, scale, mask, FP8: tl.constexpr):
    """Store ``x`` at ``ptr`` in the cache's dtype (quantized with ``scale`` when ``FP8`` != 0)."""
    if FP8 == 1:  # e4m3fn: max 448, 3 mantissa bits, subnormal quantum 2^-9
        y = _round_fp8(x.to(tl.float32) / scale, 448.0, 20, 0.015625, 24576.0)
        tl.store(ptr, y.to(ptr.dtype.element_ty), mask=mask)
    elif FP8 == 2:  # e5m2: max 57344, 2 mantissa bits, subnormal quantum 2^-16
        y = _round_fp8(x.to(tl.float32) / scale, 57344.0, 21, 0.00006103515625, 192.0)
        tl.store(ptr, y.to(ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(ptr, x.to(ptr.dtype.element_ty), mask=mask)
