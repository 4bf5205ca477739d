"""Bit-packing shared by the GPTQ and AWQ readers, the step that installs their canonical weight, and the
``quantization_config`` keys both refuse (:func:`refuse_unhonoured_keys`).

Both formats pack ``32 // bits`` codes per int32 word, the first code in the lowest bits; they
differ in which dimension is packed (GPTQ ``qweight``: the input dim; ``qzeros`` and every AWQ
tensor: the output dim) and AWQ interleaves the 8 codes of a word (see ``awq.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pagoda.layers.linear import Linear, set_weight_attrs
from pagoda.quantization.fp8 import unfused_names
from pagoda.quantization.int_weight import IntWeight

PACK_BITS = 32
"""Bits of one packed word (int32, the only ``pack_dtype`` pagoda reads)."""


def refuse_unhonoured_keys(qcfg: dict[str, Any], method: str) -> None:
    """Raise ``ValueError`` naming the key for a GPTQ / AWQ ``quantization_config`` setting that changes the math
    and that pagoda does not run: GPTQModel's per-module ``dynamic`` overrides, a quantized ``lm_head``, a
    ``pack_dtype`` other than int32, a ``rotation`` (QuaRot / SpinQuant: an online Hadamard transform of
    ``down_proj``'s input at inference) and a W4A ``activation`` stream (FP8 / NVFP4 activations). GPTQModel
    writes every one of these keys for both methods (``null`` / false / int32 when unused)."""
    if qcfg.get("dynamic"):
        raise ValueError(f"{method} quantization_config.dynamic (per-module overrides) is not supported by pagoda.")
    lm_head = qcfg.get("lm_head", False)
    if not isinstance(lm_head, bool):
        raise ValueError(f"{method} quantization_config.lm_head must be true or false, got {lm_head!r}")
    if lm_head:
        raise ValueError(f"{method} quantization_config.lm_head=true (a quantized LM head) is not supported by "
                         "pagoda.")
    pack_dtype = str(qcfg.get("pack_dtype", "int32")).removeprefix("torch.")
    if pack_dtype != "int32":
        raise ValueError(f"{method} quantization_config.pack_dtype={pack_dtype!r} is not supported; pagoda reads "
                         "int32.")
    for key, what in (("rotation", "an online Hadamard rotation of the activations"),
                      ("activation", "quantized activations (W4A)")):
        if qcfg.get(key) not in (None, False, "", {}):
            raise ValueError(f"{method} quantization_config.{key}={qcfg[key]!r} ({what}) is not supported by pagoda; "
                             f"it runs {method} weights with unquantized, unrotated activations only.")


def fused_layer_quantized(prefix: str, shard_names: tuple[str, ...], quantized: Callable[[str], bool],
                          rule: str) -> bool:
    """Whether the layer at ``prefix`` is quantized, by ``quantized`` of each checkpoint module fused into it
    (``shard_names``; the layer itself when none). The modules of one fused layer must agree: a ``ValueError``
    naming ``rule`` (the config key that decides) otherwise."""
    names = unfused_names(prefix, shard_names)
    flags = [quantized(n) for n in names]
    if any(flags) and not all(flags):
        raise ValueError(f"{rule} covers only some of {names}, which pagoda fuses into {prefix}; it needs all or "
                         f"none of them quantized.")
    return all(flags)


def unpack_int32(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Codes (int32, each in ``[0, 2**bits)``) of the int32 tensor ``packed``, unpacked along ``dim``:
    word ``w`` of that dim becomes codes ``w * (32 // bits) + j`` for ``j`` from the lowest bits up."""
    per_word = PACK_BITS // bits
    shifts = torch.arange(0, PACK_BITS, bits, dtype=torch.int32, device=packed.device)
    p = packed.movedim(dim, -1).unsqueeze(-1)
    codes = torch.bitwise_and(torch.bitwise_right_shift(p, shifts), (1 << bits) - 1)
    codes = codes.reshape(*p.shape[:-2], p.shape[-2] * per_word)
    return codes.movedim(-1, dim)


def pack_int32(codes: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """The inverse of :func:`unpack_int32` (used for dummy weights and tests)."""
    per_word = PACK_BITS // bits
    c = codes.movedim(dim, -1).to(torch.int64)
    c = c.reshape(*c.shape[:-1], c.shape[-1] // per_word, per_word)
    shifts = torch.arange(0, PACK_BITS, bits, dtype=torch.int64, device=codes.device)
    words = (c << shifts).sum(-1)
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.to(torch.int32).movedim(-1, dim).contiguous()


def param(layer: nn.Module, name: str) -> torch.Tensor:
    """``layer.<name>`` typed as a tensor (a checkpoint-layout parameter)."""
    t = getattr(layer, name)
    assert isinstance(t, torch.Tensor)
    return t


def int_weight_of(layer: nn.Module) -> IntWeight:
    """The canonical weight :func:`install_int_weight` registered on ``layer``."""
    w = layer.int_weight
    assert isinstance(w, IntWeight)
    return w


def install_int_weight(layer: Linear, weight: IntWeight, checkpoint_params: tuple[str, ...]) -> None:
    """Register ``weight`` as ``layer.int_weight`` and drop the checkpoint-layout parameters."""
    for name in checkpoint_params:
        delattr(layer, name)
    layer.int_weight = weight


def group_count(in_features: int, group_size: int, what: str) -> int:
    """Groups along the input for ``group_size`` (``-1``: one group); a size that does not divide the input
    is an error naming ``what`` (the layer)."""
    if group_size == -1:
        return 1
    if in_features % group_size:
        raise ValueError(f"{what}: input size {in_features} is not a multiple of group_size {group_size}")
    return in_features // group_size


def checkpoint_param(shape: tuple[int, ...], dtype: torch.dtype, **attrs: Any) -> nn.Parameter:
    """An empty parameter in a checkpoint's layout with its loading attributes (see ``layers/linear.py``)."""
    p = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
    set_weight_attrs(p, **attrs)
    return p
