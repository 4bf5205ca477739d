"""Registry of quantization methods and resolution of the one a model runs with.

Adding a method: one module with a :class:`~pagoda.quantization.base.QuantizationConfig` subclass,
and one line in ``_METHODS`` (``--quantization`` choices come from it and from ``_ALIASES``).
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path
from typing import Any

from pagoda.quantization.base import QuantizationConfig

logger = logging.getLogger("pagoda")

_METHODS: dict[str, str] = {
    # name: "module:Class" (imported only when used)
    "fp8": "pagoda.quantization.fp8:Fp8Config",
    "compressed-tensors": "pagoda.quantization.compressed_tensors:CompressedTensorsConfig",
    "gguf": "pagoda.quantization.gguf:GGUFConfig",
    "awq": "pagoda.quantization.awq:AWQConfig",
    "gptq": "pagoda.quantization.gptq:GPTQConfig",
}
"""``--quantization`` name -> the class implementing it."""

_ALIASES: dict[str, str] = {
    "gptq_marlin": "gptq",
    "gptq_bitblas": "gptq",
    "awq_marlin": "awq",
    "cpu_awq": "awq",
}
"""vLLM's names for its own kernels of a checkpoint layout pagoda reads -> that layout's method. Each reads the same
checkpoint (vLLM picks them for a ``gptq`` / ``awq`` ``quant_method``) with the same math; pagoda runs its own
kernels for them. vLLM's other methods (``gptq_marlin_24``, ``fbgemm_fp8``, ``ptpc_fp8``, ``bitsandbytes``, ...)
are other layouts or other math and stay refused by name."""

QUANTIZATION_METHODS: tuple[str, ...] = tuple(_METHODS) + tuple(_ALIASES)
"""Accepted ``--quantization`` values."""

QUANT_CONFIG_FILES: dict[str, tuple[str, ...]] = {
    "gptq": ("quantize_config.json",),
    "awq": ("quant_config.json", "quantize_config.json"),
}
"""Where old AutoGPTQ / AutoAWQ checkpoints keep their quantization config when config.json has none (vLLM's
``get_config_filenames`` of the method)."""

_aliases_logged: set[str] = set()


def canonical_method(name: str) -> str:
    """The method ``--quantization name`` runs: ``name`` itself, or the layout a vLLM alias reads (``_ALIASES``)."""
    return _ALIASES.get(name, name)


def get_quantization_config_class(name: str) -> type[QuantizationConfig]:
    method = canonical_method(name)
    if method not in _METHODS:
        raise ValueError(
            f"Quantization method {name!r} is not supported; supported: {', '.join(QUANTIZATION_METHODS) or 'none'}."
        )
    module, cls = _METHODS[method].split(":")
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


def with_legacy_quant_config(hf_config: dict[str, Any], folder: Path, requested: str | None) -> dict[str, Any]:
    """``hf_config`` with the ``quantization_config`` an older checkpoint keeps elsewhere when config.json has none
    (as vLLM reads them): config.json's ``compression_config`` (older compressed-tensors), else an AutoGPTQ /
    AutoAWQ file (:data:`QUANT_CONFIG_FILES`); ``hf_config`` itself otherwise.

    With ``requested`` (``--quantization``) only that method's files are read, as vLLM does; without it, any of them.
    A file without ``quant_method`` takes ``requested``'s method, and is a ``ValueError`` naming the file and the flag
    when none was given; two candidate files, or a file that is not a JSON object, are a ``ValueError`` naming them.
    """
    if hf_config.get("quantization_config"):
        return hf_config
    if hf_config.get("compression_config"):
        return {**hf_config, "quantization_config": hf_config["compression_config"]}
    method = canonical_method(requested) if requested is not None else None
    if method is not None:
        names = QUANT_CONFIG_FILES.get(method, ())
    else:
        names = tuple(dict.fromkeys(n for files in QUANT_CONFIG_FILES.values() for n in files))
    found = [folder / n for n in names if (folder / n).is_file()]
    if not found:
        return hf_config
    if len(found) > 1:
        raise ValueError(f"{folder} has no quantization_config in config.json and several quantization config files "
                         f"({', '.join(p.name for p in found)}); keep the one that describes the weights.")
    path = found[0]
    try:
        qcfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path} is not readable JSON ({exc}).") from exc
    if not isinstance(qcfg, dict):
        raise ValueError(f"{path} must hold a JSON object (the quantization config), got {type(qcfg).__name__}.")
    if "quant_method" in qcfg and str(qcfg["quant_method"]).lower() not in _METHODS:
        raise ValueError(f"{path}'s quant_method {qcfg['quant_method']!r} is not supported by pagoda (supported: "
                         f"{', '.join(_METHODS)}).")
    if "quant_method" not in qcfg:
        if method is None:
            raise ValueError(f"{path} (the checkpoint's quantization config; config.json has none) does not name its "
                             f"quant_method: pass --quantization gptq (AutoGPTQ) or --quantization awq (AutoAWQ).")
        qcfg = {**qcfg, "quant_method": method}
    logger.info("config.json has no quantization_config: reading %s (%s)", path.name, qcfg["quant_method"])
    return {**hf_config, "quantization_config": qcfg}


def resolve_quantization(hf_config: dict[str, Any], requested: str | None,
                         load_format: str | None = None) -> QuantizationConfig | None:
    """The config the model runs with: the checkpoint's own method, or ``requested`` (``--quantization``).

    ``requested`` may be a vLLM alias (``_ALIASES``): it runs its layout's method and must match the checkpoint as
    that method would. A plain checkpoint with ``requested`` set is quantized online when the method supports it
    (fp8); a request that contradicts the checkpoint's method is an error naming both. A ``checkpoint_only`` method
    (GPTQ, AWQ) forced on a plain checkpoint runs with its defaults for ``load_format="dummy"`` and is an error
    for any other given ``load_format``.
    """
    found = checkpoint_quant_method(hf_config)
    if found is None and requested is None:
        return None
    if found is not None and found not in _METHODS:
        raise ValueError(f"config.json's quantization_config.quant_method {found!r} is not supported by pagoda "
                         f"(supported: {', '.join(_METHODS)}).")
    method = canonical_method(requested) if requested is not None else None
    if found is not None and method is not None and found != method:
        reads = f" (which reads {method} checkpoints)" if method != requested else ""
        raise ValueError(
            f"The checkpoint is quantized with {found!r} but --quantization {requested!r} was given{reads}; "
            f"drop --quantization or pass --quantization {found}."
        )
    name = found or method
    assert name is not None
    cls = get_quantization_config_class(name)
    if requested is not None and requested != name and requested not in _aliases_logged:
        _aliases_logged.add(requested)
        logger.info("--quantization %s: vLLM's kernel for %s checkpoints; pagoda reads the same %s layout and runs "
                    "it with its own kernels.", requested, name, name)
    if found is None and cls.checkpoint_only and load_format not in (None, "dummy"):
        files = " or ".join(QUANT_CONFIG_FILES.get(name, ()))
        raise ValueError(f"--quantization {requested} needs a checkpoint quantized with {name} (config.json has no "
                         f"quantization_config{', and there is no ' + files if files else ''}); a plain checkpoint "
                         f"cannot be loaded as {name}. Use --load-format dummy for random {name} weights.")
    return cls.from_config(dict(hf_config.get("quantization_config") or {}))
