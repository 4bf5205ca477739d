"""compressed-tensors checkpoints (what llm-compressor writes; ``quant_method: compressed-tensors``).

``config_groups`` map ``targets`` (``Linear``, exact module names, or ``re:`` regexes, matched with
``re.match`` against the unfused HF module names as compressed-tensors does) to a scheme; ``ignore`` uses the
same matching and wins. Each group's ``format`` (or the top-level one) picks the layout:

- ``pack-quantized``: int4/int8 weights, group or channel scales, symmetric or with zero points, actorder
  ``group``/``weight`` -> :class:`~pagoda.quantization.int_weight.IntWeight` (W4A16/W8A16);
- ``int-quantized``: int8 channel/tensor weights with dynamic per-token symmetric int8 activations (W8A8);
- ``float-quantized``: FP8 tensor/channel weights with static per-tensor, dynamic per-token/per-tensor, or no
  activation quantization (runs :mod:`pagoda.quantization.fp8`'s method).

Anything else (other formats or strategies, asymmetric activations, output activations, sparsity, transforms,
``kv_cache_scheme``) is a start-up ``ValueError`` naming the field and value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pagoda.layers.linear import LinearMethod
from pagoda.quantization.base import QuantizationConfig
from pagoda.quantization.compressed_tensors_methods import Int8W8A8LinearMethod, PackQuantizedLinearMethod
from pagoda.quantization.fp8 import Fp8LinearMethod, unfused_names

_FORMATS = ("pack-quantized", "int-quantized", "float-quantized")


@dataclass(frozen=True)
class QuantArgs:
    """The fields of one compressed-tensors ``QuantizationArgs`` that pagoda reads."""

    num_bits: int
    type: str
    symmetric: bool
    strategy: str
    group_size: int | None
    dynamic: bool
    actorder: str | None
    where: str

    @staticmethod
    def parse(d: Any, where: str) -> QuantArgs | None:
        """The arguments at ``where``; a value of the wrong type is a ``ValueError`` naming its field (a string
        ``"false"`` is not read as true, a ``group_size`` is a positive integer)."""
        if d is None:
            return None
        if not isinstance(d, dict):
            raise ValueError(f"compressed-tensors {where} must be an object, got {d!r}")
        for key in ("block_structure",):
            if d.get(key) is not None:
                raise ValueError(f"compressed-tensors {where}.{key}={d[key]!r} is not supported")
        sd = d.get("scale_dtype")
        if sd is not None and not any(t in str(sd) for t in ("float32", "float16", "bfloat16")):
            raise ValueError(f"compressed-tensors {where}.scale_dtype={sd!r} is not supported")
        group_size = d.get("group_size")
        if group_size is not None and (type(group_size) is not int or group_size < 1):
            raise ValueError(f"compressed-tensors {where}.group_size={group_size!r} must be a positive integer")
        actorder = d.get("actorder")
        if isinstance(actorder, bool):  # compressed-tensors reads true as "group", false as none
            actorder = "group" if actorder else None
        return QuantArgs(_typed(d, "num_bits", 8, int, where), _typed(d, "type", "int", str, where),
                         _typed(d, "symmetric", True, bool, where), _typed(d, "strategy", "tensor", str, where),
                         group_size, _typed(d, "dynamic", False, bool, where), actorder, where)

    def refuse(self, field: str) -> ValueError:
        return ValueError(f"compressed-tensors {self.where}.{field}={getattr(self, field)!r} is not supported "
                          f"here ({self})")

    def require(self, **allowed: tuple[Any, ...]) -> None:
        for field, values in allowed.items():
            if getattr(self, field) not in values:
                raise self.refuse(field)


def _typed(d: dict[str, Any], key: str, default: Any, kind: type, where: str) -> Any:
    """``d[key]`` (``default`` when absent), which must be of ``kind`` exactly (a bool is not an int)."""
    v = d.get(key, default)
    if type(v) is not kind:
        raise ValueError(f"compressed-tensors {where}.{key}={v!r} must be {'an' if kind is int else 'a'} "
                         f"{ {int: 'integer', str: 'string', bool: 'boolean (true / false)'}[kind] }")
    return v


def _names(qcfg: dict[str, Any], key: str, where: str) -> list[str]:
    """A list of module names or ``re:`` patterns (``ignore``, ``targets``)."""
    v = qcfg.get(key) or []
    if not isinstance(v, list) or not all(isinstance(n, str) for n in v):
        raise ValueError(f"compressed-tensors {where}{key} must be a list of module names, got {v!r}")
    return v


@dataclass(frozen=True)
class Scheme:
    """One config group: its targets, format and argument sets."""

    name: str
    targets: tuple[str, ...]
    format: str
    weights: QuantArgs
    input_activations: QuantArgs | None

    def make_method(self, prefix: str) -> LinearMethod:
        w, a = self.weights, self.input_activations
        if self.format == "pack-quantized":
            return PackQuantizedLinearMethod(w.num_bits, w.group_size if w.strategy == "group" else None,
                                             w.symmetric, w.actorder == "group", prefix)
        if self.format == "int-quantized":
            return Int8W8A8LinearMethod()
        if a is None:
            return Fp8LinearMethod(None, serialized=True)
        return Fp8LinearMethod("static" if not a.dynamic else a.strategy, serialized=True)


def _parse_scheme(name: str, group: dict[str, Any], default_format: str | None) -> Scheme:
    where = f"config_groups.{name}"
    if not isinstance(group, dict):
        raise ValueError(f"compressed-tensors {where} must be an object, got {group!r}")
    fmt = group.get("format") or default_format
    if fmt not in _FORMATS:
        raise ValueError(f"compressed-tensors {where}.format={fmt!r} is not supported ({', '.join(_FORMATS)})")
    if group.get("output_activations") is not None:
        raise ValueError(f"compressed-tensors {where}.output_activations is not supported")
    w = QuantArgs.parse(group.get("weights"), f"{where}.weights")
    a = QuantArgs.parse(group.get("input_activations"), f"{where}.input_activations")
    if w is None:
        raise ValueError(f"compressed-tensors {where}.weights is missing (activation-only quantization is not "
                         f"supported)")
    w.require(dynamic=(False,))
    if fmt == "pack-quantized":
        w.require(type=("int",), num_bits=(4, 8), strategy=("group", "channel"), actorder=(None, "group", "weight"))
        if w.strategy == "group" and not w.group_size:
            raise w.refuse("group_size")
        if w.actorder == "group" and w.strategy != "group":
            raise w.refuse("actorder")
        if a is not None:
            raise ValueError(f"compressed-tensors {where}.input_activations with format pack-quantized is not "
                             f"supported (weight-only W4A16/W8A16)")
    elif fmt == "int-quantized":
        w.require(type=("int",), num_bits=(8,), strategy=("channel", "tensor"), symmetric=(True,))
        if a is None:
            raise ValueError(f"compressed-tensors {where}.input_activations is missing for int-quantized W8A8")
        a.require(type=("int",), num_bits=(8,), strategy=("token",), symmetric=(True,), dynamic=(True,))
    else:
        w.require(type=("float",), num_bits=(8,), strategy=("channel", "tensor"), symmetric=(True,))
        if a is not None:
            a.require(type=("float",), num_bits=(8,), symmetric=(True,))
            a.require(strategy=("token", "tensor") if a.dynamic else ("tensor",))
    return Scheme(name, tuple(_names(group, "targets", where + ".")), str(fmt), w, a)


def _matches(name: str, target: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name or target == "Linear"


class CompressedTensorsConfig(QuantizationConfig):
    """``quant_method: compressed-tensors`` (module docstring)."""

    name = "compressed-tensors"

    def __init__(self, schemes: list[Scheme], ignore: list[str]) -> None:
        self.schemes = schemes
        self.ignore = ignore

    @classmethod
    def from_config(cls, qcfg: dict[str, Any]) -> CompressedTensorsConfig:
        if not qcfg:
            raise ValueError("--quantization compressed-tensors needs a compressed-tensors checkpoint (its "
                             "config.json quantization_config); it cannot quantize a plain checkpoint")
        for key in ("kv_cache_scheme", "sparsity_config", "transform_config"):
            if qcfg.get(key):
                raise ValueError(f"compressed-tensors quantization_config.{key} is not supported by pagoda "
                                 f"(got {qcfg[key]!r})")
        status = qcfg.get("quantization_status", "compressed")
        if status != "compressed":
            raise ValueError(f"compressed-tensors quantization_status={status!r} is not supported (compressed)")
        fmt = qcfg.get("format")
        groups = qcfg.get("config_groups") or {}
        if not isinstance(groups, dict):
            raise ValueError(f"compressed-tensors quantization_config.config_groups must be an object of named "
                             f"groups, got {groups!r}")
        if not groups:
            raise ValueError("compressed-tensors quantization_config.config_groups is empty")
        schemes = [_parse_scheme(name, g, None if fmt == "mixed-precision" else fmt) for name, g in groups.items()]
        return cls(schemes, _names(qcfg, "ignore", "quantization_config."))

    def _scheme_for(self, name: str) -> Scheme | None:
        if any(_matches(name, t) and t != "Linear" for t in self.ignore):
            return None
        hits = [s for s in self.schemes if any(_matches(name, t) for t in s.targets)]
        exact = [s for s in hits if name in s.targets or any(t.startswith("re:") for t in s.targets
                                                              if _matches(name, t))]
        chosen = exact or hits
        return chosen[0] if chosen else None

    def get_linear_method(self, prefix: str, shard_names: tuple[str, ...] = ()) -> LinearMethod | None:
        names = unfused_names(prefix, shard_names)
        schemes = [self._scheme_for(n) for n in names]
        if any(s is not schemes[0] for s in schemes):
            found = {n: s.name if s else None for n, s in zip(names, schemes, strict=True)}
            raise ValueError(f"compressed-tensors: the modules fused into {prefix} have different schemes {found}; "
                             f"pagoda fuses them and needs one")
        return schemes[0].make_method(prefix) if schemes[0] is not None else None

    def weight_only_int(self) -> bool:
        return any(s.format == "pack-quantized" for s in self.schemes)

    def describe(self) -> str:
        parts = [f"{s.format} w{s.weights.num_bits}{s.weights.type[0]}"
                 + (f"a{s.input_activations.num_bits}" if s.input_activations else "a16") for s in self.schemes]
        return "compressed-tensors (" + ", ".join(parts) + ")"
