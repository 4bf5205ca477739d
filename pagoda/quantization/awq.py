"""AWQ checkpoints (AutoAWQ ``gemm`` layout), converted to the canonical :class:`IntWeight`.

Per linear layer (``K`` inputs, ``N`` outputs, 4-bit, ``G`` groups)::

    qweight int32 [K, N/8]   codes packed along the OUTPUT dim, interleaved
    qzeros  int32 [G, N/8]   zero points, the same packing
    scales  fp16  [G, N]
    bias    [N]              when the model has one

Interleave: AutoAWQ's ``WQLinear_GEMM`` puts output column ``8w + AWQ_ORDER[j]`` into bits
``4j..4j+3`` of word ``w`` (``AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]``), so column ``8w + c`` is read
from field ``AWQ_REVERSE_ORDER[c]`` (the inverse permutation, ``[0, 4, 1, 5, 2, 6, 3, 7]``).
``W[n, k] = scales[g, n] * (q[k, n] - z[g, n])`` with ``g = k // group_size`` (zeros stored as is).
``zero_point`` is accepted either way: the GEMM layout always stores ``qzeros`` (GPTQModel writes
``zero_point: false`` with zeros of 8) and, as in vLLM and the library's ``dequantize_gemm``, they are
used as stored. Refused at start-up, naming the key: a layout other than ``gemm`` in any of ``version`` /
``format`` / ``checkpoint_format`` (GPTQModel's ``gemv`` / ``gemv_fast`` / ``llm-awq`` checkpoints carry it in all
three), transformers' ``backend: llm-awq`` packing, ``desc_act`` true, and the keys
:func:`~pagoda.quantization.packing.refuse_unhonoured_keys` names (``rotation``, ``activation``, ``dynamic``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from pagoda.layers.linear import Linear, LinearMethod
from pagoda.quantization.base import QuantizationConfig
from pagoda.quantization.int_weight import int_weight_linear, int_weight_silu_mul, make_int_weight
from pagoda.quantization.packing import (
    PACK_BITS,
    checkpoint_param,
    fused_layer_quantized,
    group_count,
    install_int_weight,
    int_weight_of,
    pack_int32,
    param,
    refuse_unhonoured_keys,
    unpack_int32,
)

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
"""Field ``j`` of a packed word holds output column ``AWQ_ORDER[j]`` of its 8."""
AWQ_REVERSE_ORDER = tuple(AWQ_ORDER.index(c) for c in range(8))
"""Column ``c`` of a word's 8 lives in field ``AWQ_REVERSE_ORDER[c]``."""

BITS = 4
LAYOUT_KEYS = ("version", "format", "checkpoint_format")
"""Where AWQ writers name the layout: AutoAWQ / transformers ``version``; GPTQModel all three (the same value)."""
_CHECKPOINT_PARAMS = ("qweight", "qzeros", "scales")


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """Codes ``[rows, 8 * words]`` in natural column order from AWQ-packed ``[rows, words]``."""
    fields = unpack_int32(packed, BITS, dim=1)
    order = torch.tensor(AWQ_REVERSE_ORDER, device=packed.device)
    idx = (torch.arange(fields.shape[1], device=packed.device) // 8) * 8
    idx = idx + order.repeat(fields.shape[1] // 8)
    return fields.index_select(1, idx)


def pack_awq(codes: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`unpack_awq` (dummy weights)."""
    order = torch.tensor(AWQ_ORDER, device=codes.device)
    idx = (torch.arange(codes.shape[1], device=codes.device) // 8) * 8 + order.repeat(codes.shape[1] // 8)
    return pack_int32(codes.index_select(1, idx), BITS, dim=1)


@dataclass(frozen=True)
class AWQConfig(QuantizationConfig):
    """An AWQ checkpoint's ``quantization_config``; every field pagoda does not honour is refused."""

    group_size: int
    modules_to_not_convert: tuple[str, ...] = field(default=())
    from_defaults: bool = False

    name: ClassVar[str] = "awq"
    checkpoint_only: ClassVar[bool] = True

    @classmethod
    def from_config(cls, qcfg: dict[str, Any]) -> AWQConfig:
        if not qcfg:
            return cls(128, from_defaults=True)
        bits = qcfg.get("bits", qcfg.get("w_bit"))
        if type(bits) is not int or bits != BITS:
            raise ValueError(f"AWQ quantization_config.bits={bits!r} is not supported; pagoda runs 4-bit AWQ.")
        for key in LAYOUT_KEYS:
            layout = str(qcfg.get(key) or "gemm").lower()
            if layout != "gemm":
                raise ValueError(f"AWQ quantization_config.{key}={layout!r} is not supported; pagoda reads the "
                                 "'gemm' layout.")
        backend = str(qcfg.get("backend") or "autoawq").lower()
        if backend != "autoawq":
            raise ValueError(f"AWQ quantization_config.backend={backend!r} (its packing) is not supported; pagoda "
                             "reads AutoAWQ's.")
        if qcfg.get("desc_act", False) is not False:
            raise ValueError(f"AWQ quantization_config.desc_act={qcfg['desc_act']!r} (act-order) is not supported; "
                             "pagoda runs AWQ with desc_act false.")
        refuse_unhonoured_keys(qcfg, "AWQ")
        if not isinstance(qcfg.get("zero_point", True), bool):
            raise ValueError(f"AWQ quantization_config.zero_point must be true or false, got {qcfg['zero_point']!r}")
        group_size = qcfg.get("group_size", qcfg.get("q_group_size", 128))
        if type(group_size) is not int or not (group_size == -1 or group_size > 0):
            raise ValueError(f"AWQ quantization_config.group_size={group_size!r} must be -1 or a positive integer.")
        skip = qcfg.get("modules_to_not_convert") or []
        if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
            raise ValueError(f"AWQ quantization_config.modules_to_not_convert must be a list of names, got {skip!r}")
        return cls(group_size, tuple(skip))

    def _skipped(self, name: str) -> bool:
        return any(s in name for s in self.modules_to_not_convert)

    def get_linear_method(self, prefix: str, shard_names: tuple[str, ...] = ()) -> LinearMethod | None:
        """``None`` for the LM head and for modules in ``modules_to_not_convert`` (matched as substrings of the
        checkpoint module names, as vLLM does); a fused layer whose shards disagree is an error."""
        if prefix == "lm_head" or not fused_layer_quantized(prefix, shard_names, lambda n: not self._skipped(n),
                                                             "AWQ modules_to_not_convert"):
            return None
        return AWQLinearMethod(self, prefix)

    def weight_only_int(self) -> bool:
        return True

    def describe(self) -> str:
        group = "whole input" if self.group_size == -1 else f"group {self.group_size}"
        text = f"awq (4-bit, {group}, gemm)"
        return text + (" with defaults (no quantization_config)" if self.from_defaults else "")


class AWQLinearMethod(LinearMethod):
    """Creates the checkpoint-layout parameters, then converts them to ``layer.int_weight``."""

    def __init__(self, config: AWQConfig, prefix: str) -> None:
        self.config = config
        self.prefix = prefix

    def create_weights(self, layer: Linear, in_features: int, out_features: int, bias: bool) -> None:
        pack = PACK_BITS // BITS
        groups = group_count(in_features, self.config.group_size, self.prefix)
        if out_features % pack:
            raise ValueError(f"{self.prefix}: AWQ needs an output size that is a multiple of {pack}, "
                             f"got {out_features}")
        layer.register_parameter("qweight", checkpoint_param((in_features, out_features // pack), torch.int32,
                                                   input_dim=0, output_dim=1, pack_factor=pack))
        group_dim = {} if self.config.group_size == -1 else {"input_dim": 0}  # groups split with a row-parallel input
        layer.register_parameter("qzeros", checkpoint_param((groups, out_features // pack), torch.int32,
                                                  output_dim=1, pack_factor=pack, **group_dim))
        layer.register_parameter("scales", checkpoint_param((groups, out_features), torch.float32, output_dim=1,
                                                  **group_dim))
        if bias:
            layer.register_parameter("bias", checkpoint_param((out_features,), torch.get_default_dtype(), output_dim=0))
        else:
            layer.register_parameter("bias", None)
        self.dtype = torch.get_default_dtype()
        self.group_size = in_features if self.config.group_size == -1 else self.config.group_size

    def process_weights_after_loading(self, layer: Linear) -> None:
        codes = unpack_awq(param(layer, "qweight")).t()  # [N, K]
        zeros = unpack_awq(param(layer, "qzeros")).t()  # [N, G]
        scales = param(layer, "scales").t().float()
        weight = make_int_weight(codes, scales, -zeros.float() * scales, BITS, self.group_size, self.dtype)
        install_int_weight(layer, weight, _CHECKPOINT_PARAMS)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        return int_weight_linear(x, int_weight_of(layer), layer.bias)

    def apply_silu_mul(self, layer: Linear, x: torch.Tensor) -> torch.Tensor | None:
        return int_weight_silu_mul(x, int_weight_of(layer), layer.bias)

    def init_dummy(self, layer: Linear, generator: torch.Generator) -> None:
        """Random valid codes and zero points; scales giving weights of about ±0.02."""
        qweight, qzeros, scales = (param(layer, n) for n in _CHECKPOINT_PARAMS)
        dev = qweight.device
        qweight.copy_(torch.randint(-2**31, 2**31, qweight.shape, generator=generator, device=dev))
        z = torch.randint(0, 2**BITS, (qzeros.shape[0], scales.shape[1]), generator=generator, device=dev)
        qzeros.copy_(pack_awq(z))
        scales.uniform_(0.5, 1.5, generator=generator).mul_(0.02 / 2 ** (BITS - 1))
        if layer.bias is not None:
            layer.bias.uniform_(-0.02, 0.02, generator=generator)
