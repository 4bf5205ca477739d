"""Checkpoint tensors into a model's (partly fused, possibly quantized) parameters.

A model names which checkpoint modules are fused into which of its layers
(``stacked_params``: ``{"q_proj": ("qkv_proj", 0), ...}``); every tensor is routed to the
owning module and, for a :class:`~pagoda.layers.linear.Linear`, to its ``load_shard`` (which
knows how a quantization method lays out its parameters). Loaded keys are
``<param>`` or ``<param>#<shard>``; :func:`missing_weights` compares them with what the model
needs, so a checkpoint missing a tensor (or one shard of a fused layer) fails at start-up.

Corrupt tensors fail at start-up too, naming the tensor: a dtype that cannot hold what its parameter
holds (:func:`dtype_mismatch`, checked here for every tensor routed to a parameter) and a quantization
scale that is not a finite float (:func:`check_scale_values`, which the loader applies to every
checkpoint tensor, MoE experts included).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from pagoda.layers.linear import Linear

# Other spellings of an attention layer's FP8 KV-cache scales (compressed-tensors' kv_cache_scheme
# writes k_proj/v_proj output scales) -> the model's ``self_attn.k_scale`` / ``v_scale``.
_KV_SCALE_ALIASES = ((".k_proj.output_scale", ".k_scale"), (".v_proj.output_scale", ".v_scale"))

SCALE_NAMES = ("scales", "weight_scale", "weight_scale_inv", "input_scale")
"""Last name components of quantization scales (GPTQ/AWQ ``scales``; FP8 and compressed-tensors ``weight_scale``,
block FP8 ``weight_scale_inv``; static activation scales). The KV-cache scales are checked where the attention
layer reads them (``finish_kv_scales`` in :mod:`pagoda.models.llama`)."""
DIVIDING_SCALES = ("input_scale",)
"""Scales that activations are divided by: they must also be positive."""
_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz)


def check_scale_values(name: str, tensor: torch.Tensor) -> None:
    """Raise ``ValueError`` naming checkpoint tensor ``name`` when it is a quantization scale (:data:`SCALE_NAMES`)
    that is not floating point, holds NaN or inf, or (:data:`DIVIDING_SCALES`) is not positive. A NaN scale makes
    every logit NaN: the engine would answer token 0 forever."""
    leaf = name.rpartition(".")[2]
    if leaf not in SCALE_NAMES:
        return
    if not tensor.dtype.is_floating_point:
        raise ValueError(f"Checkpoint tensor {name!r} is a quantization scale stored as {tensor.dtype}; expected "
                         f"floating point (corrupt checkpoint?)")
    if tensor.dtype in _FP8_DTYPES:  # an FP8 scale: torch has no isfinite or comparison for it
        tensor = tensor.float()
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"Checkpoint tensor {name!r} holds NaN or infinite values (corrupt checkpoint?)")
    if leaf in DIVIDING_SCALES and tensor.numel() and not bool((tensor > 0).all()):
        raise ValueError(f"Checkpoint tensor {name!r} must be a positive finite scale, got {float(tensor.min())} "
                         f"(corrupt checkpoint?)")


def dtype_mismatch(param: torch.Tensor, tensor: torch.Tensor) -> str | None:
    """Why checkpoint ``tensor`` cannot be copied into ``param`` without changing what it means, or ``None``.

    A copy converts the dtype, which is exact between float widths (the checkpoint's bf16 into an fp32 model) and
    between integer widths that hold the values (int64 ``g_idx`` into int32), but not from floats into integer
    codes, from integers into float weights, into or out of an FP8 format (a bf16 weight copied into an
    ``float8_e4m3fn`` parameter loses its scale; ``e5m2`` is not ``e4m3``), or between int8 and uint8 (signed
    codes are not unsigned ones). Those are refused."""
    p, t = param.dtype, tensor.dtype
    if p == t:
        return None
    one_byte_int = p.itemsize == 1 and not p.is_floating_point and p != torch.bool
    if p in _FP8_DTYPES or t in _FP8_DTYPES or p.is_floating_point != t.is_floating_point or one_byte_int:
        return f"dtype {t} where the model holds {p}"
    return None


def _route(name: str, stacked: Mapping[str, tuple[str, int]]) -> tuple[str, int | None]:
    for alias, canonical in _KV_SCALE_ALIASES:
        if name.endswith(alias):
            return name[: -len(alias)] + canonical, None
    parts = name.split(".")
    for i, p in enumerate(parts):
        if p in stacked:
            fused, shard = stacked[p]
            parts[i] = fused
            return ".".join(parts), shard
    return name, None


def zero_bias_of_bias_free_layer(module: nn.Module | None, param_name: str, tensor: torch.Tensor) -> bool:
    """Whether checkpoint ``tensor``, named ``<module>.<param_name>``, is an all-zero ``bias`` of a layer built
    without one (``module.bias is None``): GPTQ-for-LLaMa writes such a bias for every linear. Adding zero changes
    nothing, so it is skipped (vLLM skips every bias its layer lacks); a nonzero one stays an error."""
    return (param_name == "bias" and module is not None and hasattr(module, "bias") and module.bias is None
            and tensor.is_floating_point() and not bool(tensor.any()))


def load_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                 stacked: Mapping[str, tuple[str, int]], prefix: str = "model.",
                 skip: tuple[str, ...] = ("rotary_emb.inv_freq",)) -> set[str]:
    """Copy HF-named ``weights`` into ``model``. ``prefix`` is stripped from names; names containing a
    ``skip`` fragment are ignored. Returns the keys loaded (module docstring)."""
    loaded: set[str] = set()
    for raw_name, tensor in weights:
        if any(s in raw_name for s in skip):
            continue
        name = raw_name[len(prefix):] if prefix and raw_name.startswith(prefix) else raw_name
        target, shard = _route(name, stacked)
        module_name, _, param_name = target.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            module = None
        param = getattr(module, param_name, None) if module is not None else None
        if not isinstance(param, torch.Tensor):
            if zero_bias_of_bias_free_layer(module, param_name, tensor):
                continue
            hint = (" (a nonzero bias this architecture's HF modeling does not have, or that config.json's "
                    "attention_bias / mlp_bias / qkv_bias leaves off)" if raw_name.endswith(".bias") else "")
            raise ValueError(f"Checkpoint tensor {raw_name!r} has no place in {type(model).__name__}{hint}.")
        wrong_dtype = dtype_mismatch(param, tensor)
        if wrong_dtype is not None:
            raise ValueError(f"Checkpoint tensor {raw_name!r}: {wrong_dtype} (corrupt checkpoint?)")
        try:
            if isinstance(module, Linear):
                module.load_shard(param_name, tensor, shard)
            else:
                _copy(getattr(module, param_name), tensor, param_name)
        except ValueError as exc:
            raise ValueError(f"Checkpoint tensor {raw_name!r}: {exc}") from exc
        loaded.add(target if shard is None else f"{target}#{shard}")
    return loaded


def _copy(param: torch.Tensor, tensor: torch.Tensor, name: str) -> None:
    if param.dim() == 0 and tensor.numel() == 1:
        tensor = tensor.reshape(())  # a scalar (e.g. a KV-cache scale) stored as [1]
    if param.shape != tensor.shape:
        raise ValueError(f"shape mismatch for {name}: checkpoint {tuple(tensor.shape)} vs model {tuple(param.shape)}")
    with torch.no_grad():
        param.copy_(tensor)


def missing_weights(model: nn.Module, loaded: set[str], optional: Iterable[str] = ()) -> list[str]:
    """Parameters (or shards of fused ones) that ``loaded`` lacks. A parameter with ``required=False``
    (set by a quantization method) and names in ``optional`` may be absent."""
    opt = set(optional)
    missing: list[str] = []
    for mod_name, module in model.named_modules():
        for p_name, param in module.named_parameters(recurse=False):
            key = f"{mod_name}.{p_name}" if mod_name else p_name
            if key in loaded or key in opt or not getattr(param, "required", True):
                continue
            shards = len(module.output_sizes) if isinstance(module, Linear) else 1
            if shards > 1 and all(f"{key}#{i}" in loaded for i in range(shards)):
                continue
            missing.append(key)
    return missing
