"""Linear methods for compressed-tensors' integer formats: ``pack-quantized`` (W4A16/W8A16 -> IntWeight) and
``int-quantized`` W8A8 (int8 weights, dynamic per-token int8 activations).

``pack-quantized`` layout (compressed-tensors ``pack_to_int32``): the signed code ``q`` is stored unsigned
(``q + 2**(bits-1)``), densely packed little-endian along the input dim (element ``j`` at bits
``j * bits``: 8 int4 or 4 int8 per int32); ``weight_scale [out, in // group]``; asymmetric
``weight_zero_point`` (signed, same offset) packed the same way along the *output* dim,
``[ceil(out / pack), groups]``; ``W = (q - z) * scale``. In IntWeight's terms (unsigned ``u``, ``uz``):
``codes = u``, ``scales = scale``, ``offsets = -uz * scale`` (symmetric: ``uz = 2**(bits-1)``).
``actorder: group`` adds ``weight_g_idx [in]`` (column -> group); columns are sorted by group into
IntWeight's ``perm``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from pagoda.layers.linear import Linear, LinearMethod, set_weight_attrs
from pagoda.quantization.act_order import regroup_columns
from pagoda.quantization.fp8 import load_channel_scale, tensor
from pagoda.quantization.int_weight import int_weight_linear, int_weight_silu_mul, make_int_weight
from pagoda.quantization.w8a8 import int8_linear


def unpack_int32(packed: torch.Tensor, bits: int, n: int, dim: int) -> torch.Tensor:
    """Unsigned codes from int32 words packed along ``dim`` (0 or 1), keeping the first ``n`` along it."""
    pf = 32 // bits
    shifts = torch.arange(0, 32, bits, device=packed.device, dtype=torch.int32)
    if dim == 1:
        codes = (packed.unsqueeze(-1) >> shifts) & (2**bits - 1)
        return codes.reshape(packed.shape[0], -1)[:, :n]
    codes = (packed.unsqueeze(1) >> shifts.view(1, pf, 1)) & (2**bits - 1)
    return codes.reshape(-1, packed.shape[1])[:n]


def _load_weight_shape(param: torch.Tensor, tensor: torch.Tensor, shard_id: int | None, *,
                       sizes: tuple[int, ...], in_features: int) -> None:
    out = sum(sizes) if shard_id is None else sizes[shard_id]
    if tensor.numel() != 2 or tensor.reshape(-1).tolist() != [out, in_features]:
        raise ValueError(f"weight_shape is {tensor.reshape(-1).tolist()}; the model expects [{out}, {in_features}]")
    param.copy_(tensor.reshape(-1))


class PackQuantizedLinearMethod(LinearMethod):
    """``pack-quantized`` int4/int8 weights, converted to :class:`IntWeight` after loading (module docstring)."""

    def __init__(self, bits: int, group_size: int | None, symmetric: bool, g_idx: bool, prefix: str = "") -> None:
        self.bits, self.group_size, self.symmetric, self.g_idx = bits, group_size, symmetric, g_idx
        self.prefix = prefix

    def _group(self, in_features: int) -> int:
        g = self.group_size or in_features
        if in_features % g:
            raise ValueError(f"compressed-tensors group_size {g} does not divide the input size {in_features}")
        return g

    def create_weights(self, layer: Linear, in_features: int, out_features: int, bias: bool) -> None:
        pf = 32 // self.bits
        # Row-parallel (tensor parallelism): grouped scales/zeros split with the input, except with act-order,
        # where every rank keeps every group's (quantization/act_order.py); channel scales are whole.
        full_in = getattr(layer, "full_in_features", in_features)
        whole = self.g_idx and full_in != in_features
        groups = (full_in if whole else in_features) // self._group(full_in if whole else in_features)
        group_dim: dict[str, Any] = {"input_dim": 1} if self.group_size and not whole else {}

        def param(name: str, shape: tuple[int, ...], dtype: torch.dtype | None = None, **attrs) -> None:
            p = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
            set_weight_attrs(p, **attrs)
            layer.register_parameter(name, p)

        param("weight_packed", (out_features, -(-in_features // pf)), torch.int32, output_dim=0, input_dim=1)
        param("weight_scale", (out_features, groups), None, output_dim=0, **group_dim)
        param("weight_shape", (2,), torch.int64, output_dim=None, weight_loader=functools.partial(  # the full shape
            _load_weight_shape, sizes=getattr(layer, "full_output_sizes", layer.output_sizes), in_features=full_in))
        if not self.symmetric:
            param("weight_zero_point", (-(-out_features // pf), groups), torch.int32, output_dim=0, pack_factor=pf,
                  **group_dim)
        if self.g_idx:
            param("weight_g_idx", (in_features,), torch.int32, output_dim=None, input_dim=0)
        if bias:
            param("bias", (out_features,), output_dim=0)
        else:
            layer.register_parameter("bias", None)

    def process_weights_after_loading(self, layer: Linear) -> None:
        out_f, in_f = layer.out_features, layer.in_features
        g = self._group(in_f)
        codes = unpack_int32(tensor(layer, "weight_packed"), self.bits, in_f, dim=1)
        scales = tensor(layer, "weight_scale").detach()
        if self.symmetric:
            zeros = torch.full_like(scales, 2 ** (self.bits - 1))
        else:
            zeros = unpack_int32(tensor(layer, "weight_zero_point"), self.bits, out_f, dim=0).to(scales.dtype)
        perm = None
        if self.g_idx and scales.shape[1] > 1 and scales.shape[1] * g != in_f:  # a row-parallel act-order rank
            codes, groups, perm = regroup_columns(codes, zeros.long(), tensor(layer, "weight_g_idx").detach(), g,
                                                  f"weight_g_idx of {self.prefix}")
            scales, zeros = scales[:, groups], zeros[:, groups]
        elif self.g_idx:
            g_idx = tensor(layer, "weight_g_idx").detach().long()
            if g_idx.min() < 0 or g_idx.max() >= in_f // g or \
                    not torch.all(torch.bincount(g_idx, minlength=in_f // g) == g):
                raise ValueError(f"weight_g_idx of {self.prefix} is out of range or its groups are not "
                                 f"{g} columns each")
            perm = torch.argsort(g_idx, stable=True)
            codes = codes.index_select(1, perm)
        w = make_int_weight(codes.to(torch.uint8), scales, -zeros * scales, self.bits, g, scales.dtype, perm)
        for name in ("weight_packed", "weight_scale", "weight_shape", "weight_zero_point", "weight_g_idx"):
            if hasattr(layer, name):
                delattr(layer, name)
        layer.int_weight = w

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        return int_weight_linear(x, tensor(layer, "int_weight"), layer.bias)

    def apply_silu_mul(self, layer: Linear, x: torch.Tensor) -> torch.Tensor | None:
        return int_weight_silu_mul(x, tensor(layer, "int_weight"), layer.bias)

    def init_dummy(self, layer: Linear, generator: torch.Generator) -> None:
        for name in ("weight_packed", "weight_zero_point"):
            p = getattr(layer, name, None)
            if p is not None:
                p.copy_(torch.randint(-2**31, 2**31 - 1, p.shape, generator=generator, device=p.device,
                                      dtype=torch.int64).to(torch.int32))
        tensor(layer, "weight_scale").fill_(0.04 / 2**self.bits)
        tensor(layer, "weight_shape").copy_(torch.tensor([layer.out_features, layer.in_features]))
        if self.g_idx:
            g = self._group(layer.in_features)
            g_idx = tensor(layer, "weight_g_idx")
            g_idx.copy_(torch.arange(layer.in_features, device=g_idx.device) // g)
        if layer.bias is not None:
            layer.bias.uniform_(-0.02, 0.02, generator=generator)


class Int8W8A8LinearMethod(LinearMethod):
    """``int-quantized`` W8A8: int8 ``weight [out, in]``, ``weight_scale`` per channel (or per tensor, expanded),
    dynamic per-token int8 activations (:func:`~pagoda.quantization.w8a8.int8_linear`)."""

    def create_weights(self, layer: Linear, in_features: int, out_features: int, bias: bool) -> None:
        weight = nn.Parameter(torch.empty(out_features, in_features, dtype=torch.int8), requires_grad=False)
        set_weight_attrs(weight, output_dim=0, input_dim=1)
        layer.register_parameter("weight", weight)
        scale = nn.Parameter(torch.empty(out_features, dtype=torch.float32), requires_grad=False)
        set_weight_attrs(scale, output_dim=0, weight_loader=functools.partial(
            load_channel_scale, sizes=layer.output_sizes, name="weight_scale"))
        layer.register_parameter("weight_scale", scale)
        if bias:
            b = nn.Parameter(torch.empty(out_features), requires_grad=False)
            set_weight_attrs(b, output_dim=0)
            layer.register_parameter("bias", b)
        else:
            layer.register_parameter("bias", None)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, layer.weight, tensor(layer, "weight_scale"), layer.bias)

    def init_dummy(self, layer: Linear, generator: torch.Generator) -> None:
        layer.weight.copy_(torch.randint(-127, 128, layer.weight.shape, generator=generator,
                                         device=layer.weight.device, dtype=torch.int8))
        tensor(layer, "weight_scale").fill_(0.02 / 127)
        if layer.bias is not None:
            layer.bias.uniform_(-0.02, 0.02, generator=generator)
