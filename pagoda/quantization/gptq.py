"""GPTQ checkpoints (AutoGPTQ / GPTQModel layout), converted to the canonical :class:`IntWeight`.

Per linear layer (``K`` inputs, ``N`` outputs, ``p = 32 // bits`` codes per int32, ``G`` groups)::

    qweight int32 [K/p, N]   codes packed along the INPUT dim (first code in the lowest bits)
    qzeros  int32 [G, N/p]   zero points packed along the OUTPUT dim
    scales  fp16  [G, N]
    g_idx   int32 [K]        the group of each input column (act-order: not i // group_size)
    bias    [N]              when the model has one

``W[n, k] = scales[g, n] * (q[k, n] - z[g, n])`` with ``g = g_idx[k]``. The ``gptq`` (v1) format
stores ``z - 1``: GPTQModel writes it by subtracting ``0x11111111`` (4-bit) from the packed word, so
pagoda adds it back on the whole word (exact for every value GPTQModel writes); ``gptq_v2`` stores
``z``. Act-order (``desc_act``) becomes the IntWeight's ``perm``: the columns sorted (stably) by
group, so each group is contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from pagoda.layers.linear import Linear, LinearMethod
from pagoda.quantization.act_order import regroup_columns
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

SUPPORTED_BITS = (4, 8)
FORMATS = ("gptq", "gptq_v2")
DEFAULTS: dict[str, Any] = {"bits": 4, "group_size": 128, "desc_act": False, "sym": True}
"""What ``--quantization gptq`` without a ``quantization_config`` means (``--load-format dummy`` only)."""

_CHECKPOINT_PARAMS = ("qweight", "qzeros", "scales", "g_idx")


def _flag(qcfg: dict[str, Any], key: str, default: bool) -> bool:
    v = qcfg.get(key, default)
    if not isinstance(v, bool):
        raise ValueError(f"GPTQ quantization_config.{key} must be true or false, got {v!r}")
    return v


@dataclass(frozen=True)
class GPTQConfig(QuantizationConfig):
    """A GPTQ checkpoint's ``quantization_config``; every field pagoda does not honour is refused."""

    bits: int
    group_size: int
    desc_act: bool
    sym: bool
    checkpoint_format: str = "gptq"
    from_defaults: bool = False
    quantized_modules: tuple[str, ...] = ()
    """``modules_in_block_to_quantize``, flattened: a linear is GPTQ when one of them is a substring of its
    checkpoint name (as vLLM matches them), else it loads dense; empty: every linear but the LM head."""

    name: ClassVar[str] = "gptq"
    checkpoint_only: ClassVar[bool] = True

    @classmethod
    def from_config(cls, qcfg: dict[str, Any]) -> GPTQConfig:
        if not qcfg:
            return cls(**DEFAULTS, from_defaults=True)
        bits = qcfg.get("bits")
        if type(bits) is not int or bits not in SUPPORTED_BITS:  # 4.0 would pass `in`; true is not a width
            raise ValueError(f"GPTQ quantization_config.bits={bits!r} is not supported; pagoda runs bits 4 and 8.")
        group_size = qcfg.get("group_size", 128)
        if type(group_size) is not int or not (group_size == -1 or group_size > 0):
            raise ValueError(f"GPTQ quantization_config.group_size={group_size!r} must be -1 or a positive integer.")
        fmt = str(qcfg.get("checkpoint_format") or qcfg.get("format") or "gptq").lower()  # as transformers reads it
        if fmt not in FORMATS:
            raise ValueError(f"GPTQ quantization_config.checkpoint_format={fmt!r} is not supported; pagoda reads "
                             f"{', '.join(FORMATS)}.")
        if qcfg.get("is_marlin_format"):  # AutoGPTQ's older spelling of checkpoint_format marlin
            raise ValueError(f"GPTQ quantization_config.is_marlin_format={qcfg['is_marlin_format']!r} (AutoGPTQ's "
                             f"Marlin layout) is not supported; pagoda reads {', '.join(FORMATS)}.")
        refuse_unhonoured_keys(qcfg, "GPTQ")
        return cls(bits, group_size, _flag(qcfg, "desc_act", False), _flag(qcfg, "sym", True), fmt,
                   quantized_modules=_module_names(qcfg.get("modules_in_block_to_quantize")))

    def get_linear_method(self, prefix: str, shard_names: tuple[str, ...] = ()) -> LinearMethod | None:
        """``None`` for the LM head and for layers ``quantized_modules`` leaves out (fused shards must agree)."""
        if prefix == "lm_head" or (self.quantized_modules and not fused_layer_quantized(
                prefix, shard_names, lambda n: any(m in n for m in self.quantized_modules),
                "GPTQ modules_in_block_to_quantize")):
            return None
        return GPTQLinearMethod(self, prefix)

    def weight_only_int(self) -> bool:
        return True

    def describe(self) -> str:
        group = "whole input" if self.group_size == -1 else f"group {self.group_size}"
        text = (f"gptq ({self.bits}-bit, {group}, {'sym' if self.sym else 'asym'}, "
                f"desc_act {'on' if self.desc_act else 'off'}, {self.checkpoint_format})")
        if self.quantized_modules:
            text += f", modules matching {list(self.quantized_modules)}"
        return text + (" with defaults (no quantization_config)" if self.from_defaults else "")


def _module_names(v: Any) -> tuple[str, ...]:
    """``modules_in_block_to_quantize`` (transformers: lists of module names, one list per sequential step; a flat
    list is read too) as one tuple; ``None`` / empty: every module."""
    if v is None:
        return ()
    flat = [n for x in v for n in (x if isinstance(x, list) else [x])] if isinstance(v, list) else None
    if flat is None or not all(isinstance(n, str) and n for n in flat):
        raise ValueError(f"GPTQ quantization_config.modules_in_block_to_quantize must be lists of module names, got "
                         f"{v!r}")
    return tuple(flat)


def _v1_word_offset(bits: int) -> int:
    """What v1 subtracts from each packed zero-point word: 1 in every field (``0x11111111`` for 4-bit)."""
    return sum(1 << s for s in range(0, PACK_BITS, bits))


def _wrap_int32(words: torch.Tensor) -> torch.Tensor:
    words = torch.remainder(words, 2**32)
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def v2_qzeros(qzeros: torch.Tensor, bits: int, checkpoint_format: str) -> torch.Tensor:
    """The packed zero points as ``gptq_v2`` stores them (v1 words get the offset added back, wrapping)."""
    if checkpoint_format == "gptq_v2":
        return qzeros
    return _wrap_int32(qzeros.to(torch.int64) + _v1_word_offset(bits))


def pack_qzeros(zeros: torch.Tensor, bits: int, checkpoint_format: str) -> torch.Tensor:
    """Zero points ``[G, N]`` (each in ``[0, 2**bits)``) packed as ``checkpoint_format`` stores them."""
    words = pack_int32(zeros, bits, dim=1)
    if checkpoint_format == "gptq_v2":
        return words
    return _wrap_int32(words.to(torch.int64) - _v1_word_offset(bits))


class GPTQLinearMethod(LinearMethod):
    """Creates the checkpoint-layout parameters, then converts them to ``layer.int_weight``."""

    def __init__(self, config: GPTQConfig, prefix: str) -> None:
        self.config = config
        self.prefix = prefix

    def create_weights(self, layer: Linear, in_features: int, out_features: int, bias: bool) -> None:
        c = self.config
        pack = PACK_BITS // c.bits
        if in_features % pack or out_features % pack:
            raise ValueError(f"{self.prefix}: GPTQ {c.bits}-bit needs input and output sizes that are multiples of "
                             f"{pack}, got {in_features}x{out_features}")
        # Row-parallel (tensor parallelism): the groups split with the input, except with act-order, where
        # every rank keeps every group's scales and zeros (its columns may belong to any group; see act_order.py).
        full_in = getattr(layer, "full_in_features", in_features)
        whole = c.desc_act and full_in != in_features
        groups = group_count(full_in if whole else in_features, c.group_size, self.prefix)
        group_dim = {} if whole or c.group_size == -1 else {"input_dim": 0}
        layer.register_parameter("qweight", checkpoint_param((in_features // pack, out_features), torch.int32,
                                                   input_dim=0, output_dim=1))
        layer.register_parameter("qzeros", checkpoint_param((groups, out_features // pack), torch.int32,
                                                  output_dim=1, pack_factor=pack, **group_dim))
        layer.register_parameter("scales", checkpoint_param((groups, out_features), torch.float32, output_dim=1,
                                                  **group_dim))
        # A rank whose groups split with its input reads global group numbers: tp_slice shifts them by its first.
        shift = {"group_shift": groups} if group_dim and full_in != in_features else {}
        # Without act-order a checkpoint may lack g_idx (older GPTQ-for-LLaMa writers; transformers and vLLM load
        # it): it then keeps this trivial one. With act-order it is required.
        g_idx = checkpoint_param((in_features,), torch.int32, input_dim=0, output_dim=None, required=c.desc_act,
                                 **shift)
        g_idx.copy_(torch.arange(in_features, dtype=torch.int32) // (in_features if c.group_size == -1
                                                                      else c.group_size))
        layer.register_parameter("g_idx", g_idx)
        if bias:
            layer.register_parameter("bias", checkpoint_param((out_features,), torch.get_default_dtype(), output_dim=0))
        else:
            layer.register_parameter("bias", None)
        self.dtype = torch.get_default_dtype()
        self.group_size = in_features if c.group_size == -1 else c.group_size

    def process_weights_after_loading(self, layer: Linear) -> None:
        c = self.config
        codes = unpack_int32(param(layer, "qweight"), c.bits, dim=0).t()  # [N, K]
        qzeros = v2_qzeros(param(layer, "qzeros"), c.bits, c.checkpoint_format)
        zeros = unpack_int32(qzeros, c.bits, dim=1).t()  # [N, G]
        scales = param(layer, "scales").t().float()
        perm: torch.Tensor | None
        if scales.shape[1] > 1 and scales.shape[1] * self.group_size != codes.shape[1]:
            # A row-parallel act-order rank: every group's scales, some of the columns (quantization/act_order.py).
            codes, groups, regrouped = regroup_columns(codes, zeros, param(layer, "g_idx"), self.group_size,
                                                       f"{self.prefix}.g_idx")
            scales, zeros, perm = scales[:, groups], zeros[:, groups], regrouped
        else:
            perm = self._act_order_perm(param(layer, "g_idx"), scales.shape[1])
            if perm is not None:
                codes = codes.index_select(1, perm)
        weight = make_int_weight(codes, scales, -zeros.float() * scales, c.bits, self.group_size, self.dtype, perm)
        install_int_weight(layer, weight, _CHECKPOINT_PARAMS)

    def _act_order_perm(self, g_idx: torch.Tensor, groups: int) -> torch.Tensor | None:
        """``None`` for the trivial ``g_idx`` (``i // group_size``); else the stable sort of the columns by
        group. Raises naming the tensor when a value is out of range or a group's size is not group_size."""
        name = f"{self.prefix}.g_idx"
        g = g_idx.to(torch.int64)
        if g.numel() and (int(g.min()) < 0 or int(g.max()) >= groups):
            raise ValueError(f"{name}: group index out of range [0, {groups}) (min {int(g.min())}, "
                             f"max {int(g.max())})")
        trivial = torch.arange(g.numel(), device=g.device) // self.group_size
        if torch.equal(g, trivial):
            return None
        counts = torch.bincount(g, minlength=groups)
        if not bool((counts == self.group_size).all()):
            raise ValueError(f"{name}: every group must have exactly {self.group_size} input columns; counts "
                             f"range {int(counts.min())}..{int(counts.max())}")
        return torch.sort(g, stable=True).indices

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        return int_weight_linear(x, int_weight_of(layer), layer.bias)

    def apply_silu_mul(self, layer: Linear, x: torch.Tensor) -> torch.Tensor | None:
        return int_weight_silu_mul(x, int_weight_of(layer), layer.bias)

    def init_dummy(self, layer: Linear, generator: torch.Generator) -> None:
        """Random valid codes, zero points (``2**(bits-1)`` when sym), scales giving weights of about ±0.02,
        and the trivial ``g_idx``."""
        c = self.config
        qweight = param(layer, "qweight")
        dev = qweight.device
        qweight.copy_(torch.randint(-2**31, 2**31, qweight.shape, generator=generator, device=dev))
        groups, n = param(layer, "scales").shape
        if c.sym:
            z = torch.full((groups, n), 2 ** (c.bits - 1), dtype=torch.int64, device=dev)
        else:
            z = torch.randint(0, 2**c.bits, (groups, n), generator=generator, device=dev)
        param(layer, "qzeros").copy_(pack_qzeros(z, c.bits, c.checkpoint_format))
        param(layer, "scales").uniform_(0.5, 1.5, generator=generator).mul_(0.02 / 2 ** (c.bits - 1))
        param(layer, "g_idx").copy_(torch.arange(param(layer, "g_idx").numel(), device=dev) // self.group_size)
        if layer.bias is not None:
            layer.bias.uniform_(-0.02, 0.02, generator=generator)
