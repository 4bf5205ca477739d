"""torch's CUDA int4 "tinygemm" (``aten._weight_int4pack_mm``): a sweep candidate for 4-bit weights on CUDA.

Contract (torch >= 2.5 CUDA): ``_convert_weight_to_int4pack(uint8 [N, K/2], inner_k_tiles)`` takes two codes
per byte, the even K index in the high nibble; ``inner_k_tiles`` in (2, 4, 8), ``K % (inner_k_tiles * 16) == 0``,
``N % 8 == 0``; ``_weight_int4pack_mm(x bf16 [M, K], packed, group, scales_and_zeros [K/G, N, 2] bf16)``
computes ``W = (q - 8) * s + z`` per group (groups 32/64/128/256), bf16 activations only. The canonical
``q * s + o`` maps to it with ``z = o + 8 s`` (:func:`scales_and_zeros`; exact for symmetric weights, one
bf16 rounding of ``z`` otherwise). The CPU twin op has another packing, so only the mapping is tested on
CPU; tests/gpu/test_gpu_int4_kernels.py checks the CUDA op against the dequantize reference.

Not wired into :class:`~pagoda.quantization.int_weight.IntWeight` (its packing differs from the Triton
layout, and one copy per weight is the rule): ``benchmarks/gpu/int_weight_sweep.py`` measures it next to
the Triton kernels so the choice of a single CUDA layout is made by measurement.
"""

from __future__ import annotations

import torch

GROUPS = (32, 64, 128, 256)


def supported(bits: int, group_size: int, out_features: int, in_features: int, inner_k_tiles: int = 8) -> bool:
    return bits <= 4 and group_size in GROUPS and out_features % 8 == 0 and \
        in_features % (inner_k_tiles * 16) == 0 and hasattr(torch.ops.aten, "_weight_int4pack_mm")


def scales_and_zeros(scales: torch.Tensor, offsets: torch.Tensor, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Canonical ``[N, K/G]`` scales/offsets -> tinygemm's ``[K/G, N, 2]`` (``z = o + 8 s``)."""
    s, o = scales.float(), offsets.float()
    return torch.stack([s, o + 8 * s], -1).transpose(0, 1).contiguous().to(dtype)


def pack(codes: torch.Tensor, inner_k_tiles: int = 8) -> torch.Tensor:
    """uint8 codes ``[N, K]`` (< 16) -> the op's opaque int32 packing (on the codes' CUDA device)."""
    pairs = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8).contiguous()
    return torch.ops.aten._convert_weight_to_int4pack(pairs, inner_k_tiles)


def matmul(x: torch.Tensor, packed: torch.Tensor, group_size: int, sz: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._weight_int4pack_mm(x, packed, group_size, sz)
