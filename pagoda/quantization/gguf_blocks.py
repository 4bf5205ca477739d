"""GGUF (ggml) block formats -> the canonical integer weight (codes, per-group scales and offsets).

Each supported type stores a row of ``in`` weights as ``in / block`` blocks of ``type_size`` bytes
(layouts: ggml-common.h). :func:`decode_blocks` unpacks raw rows into ``codes`` (uint8, one per weight)
and float32 ``scales`` / ``offsets`` per group so that, exactly as ``gguf.dequantize`` computes::

    W[o, i] = codes[o, i] * scales[o, i // group] + offsets[o, i // group]

===========  =====  =====  ============================================================
type         bits   group  meaning
===========  =====  =====  ============================================================
Q8_0         8      32     d * q, q int8            -> codes q+128, offset -128 d
Q4_0 / Q5_0  4 / 5  32     d * (q - 8 / 16)         -> offset -8 d / -16 d
Q4_1 / Q5_1  4 / 5  32     d * q + m                -> offset m
Q4_K / Q5_K  4 / 5  32     super-block of 256: d*sc_j * q - dmin*m_j (6-bit sc_j, m_j)
Q6_K         6      16     super-block of 256: d*sc_j * (q - 32) (int8 sc_j)
===========  =====  =====  ============================================================

The block grid runs along the input dimension, so rows are independent (row permutations are exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

QK_K = 256


@dataclass(frozen=True)
class BlockFormat:
    name: str
    block: int  # weights per block
    type_size: int  # bytes per block
    bits: int
    group: int


FORMATS: dict[str, BlockFormat] = {f.name: f for f in (
    BlockFormat("Q8_0", 32, 34, 8, 32),
    BlockFormat("Q4_0", 32, 18, 4, 32),
    BlockFormat("Q4_1", 32, 20, 4, 32),
    BlockFormat("Q5_0", 32, 22, 5, 32),
    BlockFormat("Q5_1", 32, 24, 5, 32),
    BlockFormat("Q4_K", QK_K, 144, 4, 32),
    BlockFormat("Q5_K", QK_K, 176, 5, 32),
    BlockFormat("Q6_K", QK_K, 210, 6, 16),
)}
"""Quantized GGUF types pagoda keeps quantized (by ``gguf.GGMLQuantizationType`` name)."""

DENSE_TYPES = ("F32", "F16", "BF16")
"""GGUF types that stay dense tensors."""


def _f16(raw: torch.Tensor) -> torch.Tensor:
    """``[..., 2]`` little-endian bytes -> float32 ``[...]``."""
    return raw.contiguous().view(torch.float16).squeeze(-1).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """``[..., n]`` bytes -> ``[..., 2n]``: all low nibbles, then all high nibbles (ggml's order)."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _bits_le(raw: torch.Tensor, n: int) -> torch.Tensor:
    """``[..., n/8]`` bytes -> ``[..., n]`` bits, bit ``k`` = bit ``k % 8`` of byte ``k // 8``."""
    shifts = torch.arange(8, device=raw.device, dtype=torch.uint8)
    return ((raw.unsqueeze(-1) >> shifts) & 1).reshape(*raw.shape[:-1], n)


def _q8_0_signed(b: torch.Tensor) -> torch.Tensor:
    """Q8_0 blocks ``[rows, nb, 34]`` -> their int8 codes ``[rows, nb, 32]`` (the f16 scale is bytes 0-1)."""
    return b[..., 2:].contiguous().view(torch.int8)


def _simple(fmt: BlockFormat, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 blocks ``[rows, nb, type_size]`` -> codes, scales, offsets."""
    d = _f16(b[..., 0:2])
    has_min = fmt.name.endswith("_1")
    pos = 4 if has_min else 2
    if fmt.name == "Q8_0":
        codes = (_q8_0_signed(b).to(torch.int16) + 128).to(torch.uint8)
        return codes, d, -128.0 * d
    if fmt.bits == 5:
        high = _bits_le(b[..., pos:pos + 4], 32) << 4
        codes = _nibbles(b[..., pos + 4:]) | high
    else:
        codes = _nibbles(b[..., pos:])
    if has_min:
        return codes, d, _f16(b[..., 2:4])
    return codes, d, -float(2 ** (fmt.bits - 1)) * d


def _k_scales(sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K packed 12 bytes -> 8 six-bit scales and 8 six-bit mins (ggml's get_scale_min_k4)."""
    lo, hi, mix = sc[..., 0:4], sc[..., 4:8], sc[..., 8:12]
    scales = torch.cat([lo & 63, (mix & 0x0F) | ((lo >> 6) << 4)], dim=-1)
    mins = torch.cat([hi & 63, (mix >> 4) | ((hi >> 6) << 4)], dim=-1)
    return scales.float(), mins.float()


def _k45(fmt: BlockFormat, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_K / Q5_K super-blocks -> codes ``[.., 256]``, per-32 scales and offsets ``[.., 8]``."""
    d, dmin = _f16(b[..., 0:2]).unsqueeze(-1), _f16(b[..., 2:4]).unsqueeze(-1)
    sc, m = _k_scales(b[..., 4:16])
    qs = b[..., -128:].reshape(*b.shape[:-1], 4, 32)  # chunk j of 64 weights: low nibbles, then high
    codes = torch.cat([qs & 0x0F, qs >> 4], dim=-1)  # [.., 4, 64]
    if fmt.name == "Q5_K":
        qh = b[..., 16:48].unsqueeze(-2)  # [.., 1, 32]; bit 2j (first 32) / 2j+1 (next 32) of chunk j
        shifts = torch.arange(8, device=b.device, dtype=torch.uint8).view(4, 2, 1)
        high = ((qh.unsqueeze(-2) >> shifts) & 1).reshape(*b.shape[:-1], 4, 64)
        codes = codes | (high << 4)
    return codes.reshape(*b.shape[:-1], QK_K), d * sc, -(dmin * m)


def _q6k(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q6_K super-blocks -> 6-bit codes ``[.., 256]``, per-16 scales and offsets ``[.., 16]``."""
    ql = b[..., 0:128].reshape(*b.shape[:-1], 2, 64)
    qh = b[..., 128:192].reshape(*b.shape[:-1], 2, 1, 32)
    sc = b[..., 192:208].view(torch.int8).float()
    d = _f16(b[..., 208:210]).unsqueeze(-1)
    low = torch.cat([ql[..., 0:32] & 0x0F, ql[..., 32:64] & 0x0F, ql[..., 0:32] >> 4, ql[..., 32:64] >> 4], dim=-1)
    shifts = torch.tensor([0, 2, 4, 6], device=b.device, dtype=torch.uint8).view(4, 1)
    high = ((qh >> shifts) & 3).reshape(*b.shape[:-1], 2, 128)
    codes = (low | (high << 4)).reshape(*b.shape[:-1], QK_K)
    scale = d * sc
    return codes, scale, -32.0 * scale


def decode_blocks(type_name: str, raw: torch.Tensor, in_features: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, BlockFormat]:
    """Raw rows ``[out, in / block * type_size]`` (uint8) of a quantized type -> ``(codes [out, in] uint8,
    scales [out, in / group] float32, offsets like scales, format)``. ``ValueError`` on an unsupported type,
    a byte count that does not fit ``in_features``, or a block whose f16 scale is NaN or infinite (a corrupt
    file: every logit would be NaN)."""
    fmt = FORMATS.get(type_name)
    if fmt is None:
        raise ValueError(f"GGUF type {type_name} is not supported (supported: "
                         f"{', '.join([*FORMATS, *DENSE_TYPES])})")
    if in_features % fmt.block or raw.dim() != 2 or raw.shape[1] != in_features // fmt.block * fmt.type_size:
        raise ValueError(f"{type_name} data of shape {tuple(raw.shape)} does not hold rows of {in_features} "
                         f"weights ({fmt.type_size} bytes per {fmt.block})")
    out = raw.shape[0]
    b = raw.reshape(out, in_features // fmt.block, fmt.type_size)
    if fmt.name == "Q6_K":
        codes, scales, offsets = _q6k(b)
    elif fmt.block == QK_K:
        codes, scales, offsets = _k45(fmt, b)
    else:
        codes, scales, offsets = _simple(fmt, b)
        scales, offsets = scales.unsqueeze(-1), offsets.unsqueeze(-1)
    scales, offsets = scales.reshape(out, -1), offsets.reshape(out, -1)
    if not (bool(torch.isfinite(scales).all()) and bool(torch.isfinite(offsets).all())):
        bad = int((~torch.isfinite(scales) | ~torch.isfinite(offsets)).any(-1).nonzero()[0, 0])
        raise ValueError(f"{type_name} data holds a NaN or infinite block scale (row {bad}; corrupt file?)")
    return codes.reshape(out, in_features), scales, offsets, fmt


def q8_0_codes(raw: torch.Tensor, in_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw Q8_0 rows -> ``(codes [out, in] int8, scales [out, in / 32] float32)``, the weight ``codes * scales``
    (what :func:`decode_blocks` gives as unsigned codes with an offset, here as the file stores them)."""
    fmt = FORMATS["Q8_0"]
    if in_features % fmt.block or raw.dim() != 2 or raw.shape[1] != in_features // fmt.block * fmt.type_size:
        raise ValueError(f"Q8_0 data of shape {tuple(raw.shape)} does not hold rows of {in_features} weights")
    b = raw.reshape(raw.shape[0], in_features // fmt.block, fmt.type_size)
    return _q8_0_signed(b).reshape(raw.shape[0], in_features), _f16(b[..., 0:2]).reshape(raw.shape[0], -1)


def decode_dense(type_name: str, raw: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Raw bytes of an F32 / F16 / BF16 tensor -> that tensor with ``shape``."""
    dtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[type_name]
    flat = raw.contiguous().reshape(-1).view(dtype)
    if flat.numel() != torch.Size(shape).numel():
        raise ValueError(f"{type_name} data of {flat.numel()} values does not fit shape {shape}")
    return flat.reshape(shape)
