"""The one integer-weight form every weight-only format converts to, and its matmul.

GPTQ, AWQ, compressed-tensors ``pack-quantized`` and GGUF's block formats all describe a weight
``W[out, in]`` by small integer codes and per-group affine parameters. Each format's loader turns
its checkpoint layout into this canonical form (:func:`make_int_weight`), and one set of kernels
(:func:`int_weight_linear`) multiplies by it, so a kernel improvement serves every format.

Canonical meaning (the invariant every converter must keep)::

    W[o, i] = codes[o, i] * scales[o, g(i)] + offsets[o, g(i)],   g(i) = i // group_size

with ``codes`` in ``[0, 2**bits)``. A symmetric format has ``offsets = -2**(bits-1) * scales``;
GPTQ/AWQ zero points ``z`` give ``offsets = -z * scales``; GGUF's ``d·q + m`` gives ``scales = d``,
``offsets = m``. ``perm`` (GPTQ act-order) is an input permutation applied to ``x`` first: the
stored columns are the checkpoint's columns in ``perm`` order, so groups are contiguous.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class IntWeight(nn.Module):
    """A canonical integer weight on its device. Holds its tensors as buffers (they count as weight bytes).

    ``codes``: uint8 ``[out, in]``; ``scales``/``offsets``: ``[out, in // group_size]`` in the activation
    dtype; ``perm``: int64 ``[in]`` or ``None``. Kernels may replace the storage with a packed layout in
    ``finalize``; :meth:`dequantize` always returns the dense weight.
    """

    codes: torch.Tensor
    scales: torch.Tensor
    offsets: torch.Tensor
    perm: torch.Tensor | None

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, bits: int,
                 group_size: int, perm: torch.Tensor | None = None) -> None:
        super().__init__()
        out_f, in_f = codes.shape
        if in_f % group_size or scales.shape != (out_f, in_f // group_size) or offsets.shape != scales.shape:
            raise ValueError(f"int weight: codes {tuple(codes.shape)}, group {group_size}, scales "
                             f"{tuple(scales.shape)}, offsets {tuple(offsets.shape)} do not agree")
        if perm is not None and perm.shape != (in_f,):
            raise ValueError(f"int weight: perm has shape {tuple(perm.shape)}, expected ({in_f},)")
        self.bits, self.group_size = bits, group_size
        self.in_features, self.out_features = in_f, out_f
        self.register_buffer("codes", codes.to(torch.uint8).contiguous())
        self.register_buffer("scales", scales.contiguous())
        self.register_buffer("offsets", offsets.contiguous())
        self.register_buffer("perm", perm)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense ``[out, in]`` weight, columns in stored order (permuted by ``perm`` when set, to match
        ``x[:, perm]``)."""
        dtype = dtype or self.scales.dtype
        g = self.group_size
        q = self.codes.view(self.out_features, -1, g).to(torch.float32)
        w = q * self.scales.float().unsqueeze(-1) + self.offsets.float().unsqueeze(-1)
        return w.view(self.out_features, self.in_features).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.out_features}x{self.in_features}, int{self.bits}, group {self.group_size}" + \
               (", act-order" if self.perm is not None else "")


def make_int_weight(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, bits: int,
                    group_size: int, dtype: torch.dtype, perm: torch.Tensor | None = None) -> IntWeight:
    """Build the canonical weight (module docstring) with scales/offsets in the activation ``dtype``."""
    if bits < 1 or bits > 8:
        raise ValueError(f"int weight: {bits}-bit codes are not supported (1..8)")
    if codes.numel() and int(codes.max()) >= 2**bits:
        raise ValueError(f"int weight: a code exceeds {bits} bits")
    return IntWeight(codes, scales.to(dtype), offsets.to(dtype), bits, group_size, perm)


def int_weight_linear(x: torch.Tensor, w: IntWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for a canonical weight. Reference path: dequantize, then ``F.linear``."""
    if w.perm is not None:
        x = x.index_select(-1, w.perm)
    return F.linear(x, w.dequantize(x.dtype), bias)
