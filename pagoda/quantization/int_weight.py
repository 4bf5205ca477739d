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

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pagoda.layers.cpu_linear import packed_linear
from pagoda.quantization.kernels import cpu_int4_dot, cpu_woq

Layout = str
"""Storage layout of an :class:`IntWeight` (see its docstring): ``plain``, ``triton``, ``cpu_int4``, ``cpu_int8``."""

_BUFFERS = ("codes", "codes_hi", "scales", "offsets", "scales_zeros", "scales_zeros_hi")


class IntWeight(nn.Module):
    """A canonical integer weight on its device. Holds its tensors as buffers (they count as weight bytes).

    Built (``plain`` layout) with ``codes``: uint8 ``[out, in]``; ``scales``/``offsets``: ``[out, in // group]``
    in the activation dtype; ``perm``: int64 ``[in]`` or ``None``. :meth:`finalize` (called by
    :func:`make_int_weight`, and again after a device move) replaces the storage by the fastest kernel's
    layout for the device, keeping the meaning:

    * ``triton`` (CUDA): ``codes`` = :mod:`triton_wna16` layout (int32 ``[in/8, out]``, sub-block interleaved, for
      <= 4 bits, uint8 ``[in, out]`` above); ``scales``/``offsets`` keep their canonical shape as views of
      ``[groups, out]`` storage (``.t()`` is contiguous).
    * ``cpu_int4``: ``codes`` (and ``codes_hi`` for 5..8 bits) in torch's int4pack order, ``scales_zeros``
      (and ``scales_zeros_hi``) ``[groups, out, 2]``; ``scales``/``offsets`` are ``None`` (read them with
      :meth:`group_params`).
    * ``cpu_int8`` (8-bit, one group per row, ``offsets == -128 * scales``): ``codes`` int8 ``codes - 128``.

    :meth:`dequantize` always returns the dense weight.
    """

    codes: torch.Tensor
    codes_hi: torch.Tensor | None
    scales: torch.Tensor | None
    offsets: torch.Tensor | None
    scales_zeros: torch.Tensor | None
    scales_zeros_hi: torch.Tensor | None
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
        self.dtype = scales.dtype
        self.layout: Layout = "plain"
        self.dense_packed: torch.Tensor | None = None  # optional bf16 oneDNN copy (cpu_linear.pack_int_weight_copies)
        self.batch_invariant = False  # --deterministic: one path for every row (pagoda.layers.batch_invariant)
        # Speculative decoding (set by the model runner where the CPU kernel's builds can disagree: groups above
        # cpu_int4_dot.GRID_MAX_GROUP): one build for every row count, so a verify's rows equal decode rows
        self.one_kernel = False
        self.bound_call: cpu_int4_dot.BoundCall | None = None  # the small-step fast path (set by finalize)
        self.symmetric = False  # ``triton`` layout: offsets == -2**(bits-1) * scales exactly (set by finalize)
        self._set_plain(codes.to(torch.uint8).contiguous(), scales.contiguous(), offsets.contiguous())
        self.register_buffer("perm", perm)

    def _set(self, **tensors: torch.Tensor | None) -> None:
        for name in _BUFFERS:
            self.register_buffer(name, tensors.get(name))

    def _set_plain(self, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor) -> None:
        self._set(codes=codes, scales=scales, offsets=offsets)
        self.layout = "plain"

    def _parts(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        assert self.scales_zeros is not None
        parts = [(self.codes, self.scales_zeros)]
        if self.codes_hi is not None and self.scales_zeros_hi is not None:
            parts.append((self.codes_hi, self.scales_zeros_hi))
        return parts

    def plain_codes(self) -> torch.Tensor:
        """The uint8 codes ``[out, in]`` whatever the layout."""
        if self.layout == "triton":
            from pagoda.quantization.kernels import triton_wna16
            return triton_wna16.unpack(self.codes, self.bits)
        if self.layout == "cpu_int4":
            return cpu_woq.unpack_int4(self._parts(), self.in_features, self.group_size)
        if self.layout == "cpu_int8":
            return (self.codes.to(torch.int16) + 128).to(torch.uint8)
        return self.codes

    def group_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Canonical ``(scales, offsets)``, ``[out, in // group]``, whatever the layout (for ``cpu_int4`` the
        offsets come back from the stored zeros, so within one rounding of the activation dtype)."""
        if self.layout != "cpu_int4":
            assert self.scales is not None and self.offsets is not None
            return self.scales, self.offsets
        assert self.scales_zeros is not None
        if self.scales_zeros_hi is None:
            s = self.scales_zeros[..., 0].float()
            o = self.scales_zeros[..., 1].float() - 8 * s
        else:
            s = self.scales_zeros[..., 0].float()
            o = self.scales_zeros_hi[..., 1].float() - 128 * s
        return s.t().to(self.dtype), o.t().to(self.dtype)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The dense ``[out, in]`` weight, columns in stored order (permuted by ``perm`` when set, to match
        ``x[:, perm]``)."""
        dtype = dtype or self.dtype
        if self.layout == "cpu_int4":
            return cpu_woq.dequantize_int4(self._parts(), self.in_features, self.group_size, dtype)
        scales, offsets = self.group_params()
        g = self.group_size
        q = self.plain_codes().view(self.out_features, -1, g).to(torch.float32)
        w = q * scales.float().unsqueeze(-1) + offsets.float().unsqueeze(-1)
        return w.view(self.out_features, self.in_features).to(dtype)

    def finalize(self) -> None:
        """Repack the storage into the layout of the fastest kernel for its device (class docstring)."""
        codes, (scales, offsets) = self.plain_codes(), self.group_params()
        self._set_plain(codes, scales, offsets)
        self.dense_packed = None
        self.symmetric = False
        self.bound_call = None
        self.layout = _choose_layout(self, codes.device, scales, offsets)
        if self.layout == "triton":
            from pagoda.layers.arrival_counters import arrival_counters
            from pagoda.quantization.kernels import triton_wna16
            self._set(codes=triton_wna16.pack(codes, self.bits), scales=scales.t().contiguous().t(),
                      offsets=offsets.t().contiguous().t())
            arrival_counters(codes.device)  # the split-K GEMV's, before any CUDA graph capture
            self.symmetric = bool(torch.equal(offsets, scales * -(2 ** (self.bits - 1))))
        elif self.layout == "cpu_int4":
            parts = cpu_woq.pack_int4(codes, scales, offsets, self.bits, self.dtype)
            hi = parts[1] if len(parts) > 1 else (None, None)
            self._set(codes=parts[0][0], scales_zeros=parts[0][1], codes_hi=hi[0], scales_zeros_hi=hi[1])
            if len(parts) == 1 and self.perm is None:
                self.bound_call = cpu_int4_dot.bind(parts[0][0], parts[0][1], self.in_features, self.group_size)
        elif self.layout == "cpu_int8":
            q8, _ = cpu_woq.pack_int8(codes, scales)
            self._set(codes=q8, scales=scales, offsets=offsets)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> IntWeight:
        """A device or dtype move unpacks, moves the canonical tensors and packs again for the new device."""
        probe = torch.zeros((), device=self.codes.device, dtype=self.dtype)
        moved = fn(probe)
        if self.layout == "plain" or (moved.device == probe.device and moved.dtype == probe.dtype):
            return super()._apply(fn, recurse)
        codes, (scales, offsets) = self.plain_codes(), self.group_params()
        self._set_plain(codes, scales, offsets)
        super()._apply(fn, recurse)
        assert self.scales is not None
        self.dtype = self.scales.dtype
        self.finalize()
        return self

    def extra_repr(self) -> str:
        return f"{self.out_features}x{self.in_features}, int{self.bits}, group {self.group_size}, " \
               f"{self.layout}" + (", act-order" if self.perm is not None else "")


def _choose_layout(w: IntWeight, device: torch.device, scales: torch.Tensor, offsets: torch.Tensor) -> Layout:
    if device.type == "cuda":
        try:
            from pagoda.quantization.kernels import triton_wna16
        except ImportError:  # no triton: the dequantize reference path
            return "plain"
        return "triton" if triton_wna16.supported(w.bits, w.group_size, w.in_features) else "plain"
    if device.type != "cpu":
        return "plain"
    if cpu_woq.int8_per_channel(w.bits, w.group_size, w.in_features, scales, offsets):
        return "cpu_int8"
    if cpu_woq.int4_supported(w.bits, w.group_size, w.out_features):
        return "cpu_int4"
    return "plain"


def make_int_weight(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, bits: int,
                    group_size: int, dtype: torch.dtype, perm: torch.Tensor | None = None) -> IntWeight:
    """Build the canonical weight (module docstring) with scales/offsets in the activation ``dtype``, packed
    for its device's kernel (:meth:`IntWeight.finalize`)."""
    if bits < 1 or bits > 8:
        raise ValueError(f"int weight: {bits}-bit codes are not supported (1..8)")
    if codes.numel() and int(codes.max()) >= 2**bits:
        raise ValueError(f"int weight: a code exceeds {bits} bits")
    w = IntWeight(codes, scales.to(dtype), offsets.to(dtype), bits, group_size, perm)
    w.finalize()
    return w


def int_weight_silu_mul(x: torch.Tensor, w: IntWeight, bias: torch.Tensor | None = None) -> torch.Tensor | None:
    """``silu(gate) * up`` of :func:`int_weight_linear`'s output for a gate-then-up weight in one kernel, where the
    weight's layout has one for ``x``'s rows (:func:`triton_wna16.wna16_silu_mul`); None elsewhere."""
    if w.layout != "triton" or x.device.type != "cuda" or x.dim() != 2 or x.shape[0] == 0:
        return None
    from pagoda.quantization.kernels import triton_wna16
    assert w.scales is not None and w.offsets is not None
    return triton_wna16.wna16_silu_mul(x, w.codes, w.scales.t(), w.offsets.t(), w.bits, w.group_size, bias,
                                       symmetric=w.symmetric, perm=w.perm)


def int_weight_linear(x: torch.Tensor, w: IntWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ W.T (+ bias)`` for a canonical weight, by the kernel of ``w.layout`` (dequantize + ``F.linear``
    for ``plain`` or a layout that does not match ``x``'s device); on the CPU from ``cpu_woq.DENSE_MIN_M`` rows
    by the weight's bf16 oneDNN copy when it has one."""
    bound = w.bound_call
    if bound is not None and bias is None and w.dense_packed is None and bound.takes(x) and \
            not cpu_woq.takes_dense_gemm(x.shape[0], w.out_features, w.batch_invariant, True):
        return bound(x, w.batch_invariant or w.one_kernel)  # what the general path below computes, without its Python
    if w.perm is not None:
        x = x.index_select(-1, w.perm)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, w.in_features)
    on = x.device.type
    if x2.shape[0] == 0 or w.layout == "plain" or (on == "cuda") != (w.layout == "triton"):
        if w.batch_invariant:
            from pagoda.layers.batch_invariant import int_weight_dense

            return int_weight_dense(x, w.dequantize(x.dtype), bias)
        return F.linear(x, w.dequantize(x.dtype), bias)
    if w.layout == "triton":
        from pagoda.quantization.kernels import triton_wna16
        assert w.scales is not None and w.offsets is not None
        y = triton_wna16.wna16_matmul(x2, w.codes, w.scales.t(), w.offsets.t(), w.bits, w.group_size, bias,
                                      symmetric=w.symmetric)
        return y.view(*lead, w.out_features)
    if w.batch_invariant and w.dense_packed is not None:  # --deterministic: the copy for every row
        from pagoda.layers.batch_invariant import row_tiled

        packed = w.dense_packed
        y = row_tiled(lambda t: packed_linear(t, packed, bias), x2)
        return y.view(*lead, w.out_features)
    if w.dense_packed is not None and x2.shape[0] >= cpu_woq.DENSE_MIN_M and x2.dtype == torch.bfloat16:
        return packed_linear(x2, w.dense_packed, bias).view(*lead, w.out_features)
    if w.layout == "cpu_int8":
        assert w.scales is not None
        y = cpu_woq.int8_matmul(x2, w.codes, w.scales.view(-1), per_row=w.batch_invariant)
    else:
        y = cpu_woq.int4_matmul(x2, w._parts(), w.group_size, per_row=w.batch_invariant, one_kernel=w.one_kernel)
    if bias is not None:
        y = y.add_(bias)
    return y.view(*lead, w.out_features)
