"""Registry of quantization methods and resolution of the one a model runs with.

Adding a method: one module with a :class:`~pagoda.quantization.base.QuantizationConfig` subclass,
and one line in ``_METHODS`` (``--quantization`` choices come from it).
"""

from __future__ import annotations

import importlib
from typing import Any

from pagoda.quantization.base import QuantizationConfig

_METHODS: dict[str, str] = {
    # name: "module:Class" (imported only when used)
    "fp8": "pagoda.quantization.fp8:Fp8Config",
    "compressed-tensors": "pagoda.quantization.compressed_tensors:CompressedTensorsConfig",
    "gguf": "pagoda.quantization.gguf:GGUFConfig",
    "awq": "pagoda.quantization.awq:AWQConfig",
    "gptq": "pagoda.quantization.gptq:GPTQConfig",
}
"""``--quantization`` name -> the class implementing it."""

QUANTIZATION_METHODS: tuple[str, ...] = tuple(_METHODS)
"""Accepted ``--quantization`` values."""


def get_quantization_config_class(name: str) -> type[QuantizationConfig]:
    if name not in _METHODS:
        raise ValueError(
            f"Quantization method {name!r} is not supported; supported: {', '.join(QUANTIZATION_METHODS) or 'none'}."
        )
    module, cls = _METHODS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def checkpoint_quant_method(hf_config: dict[str, Any]) -> str | None:
    """``config.json``'s ``quantization_config.quant_method`` (lower-cased), or ``None`` for a plain checkpoint."""
    qcfg = hf_config.get("quantization_config")
    if not qcfg:
        return None
    if not isinstance(qcfg, dict) or "quant_method" not in qcfg:
        raise ValueError("config.json has a quantization_config without a quant_method; pagoda cannot tell its "
                         "format (pass --quantization).")
    return str(qcfg["quant_method"]).lower()


def resolve_quantization(hf_config: dict[str, Any], requested: str | None,
                         load_format: str | None = None) -> QuantizationConfig | None:
    """The config the model runs with: the checkpoint's own method, or ``requested`` (``--quantization``).

    A plain checkpoint with ``requested`` set is quantized online when the method supports it (fp8);
    a request that contradicts the checkpoint's method is an error naming both. A ``checkpoint_only`` method
    (GPTQ, AWQ) forced on a plain checkpoint runs with its defaults for ``load_format="dummy"`` and is an error
    for any other given ``load_format``.
    """
    found = checkpoint_quant_method(hf_config)
    if found is None and requested is None:
        return None
    if found is not None and requested is not None and found != requested:
        raise ValueError(
            f"The checkpoint is quantized with {found!r} but --quantization {requested!r} was given; "
            f"drop --quantization or pass --quantization {found}."
        )
    name = found or requested
    assert name is not None
    if found is not None and found not in _METHODS:
        raise ValueError(f"config.json's quantization_config.quant_method {found!r} is not supported by pagoda "
                         f"(supported: {', '.join(QUANTIZATION_METHODS)}).")
    cls = get_quantization_config_class(name)
    if found is None and cls.checkpoint_only and load_format not in (None, "dummy"):
        raise ValueError(f"--quantization {name} needs a checkpoint quantized with {name} (config.json has no "
                         f"quantization_config); a plain checkpoint cannot be loaded as {name}. Use "
                         f"--load-format dummy for random {name} weights.")
    return cls.from_config(dict(hf_config.get("quantization_config") or {}))
