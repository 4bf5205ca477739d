"""FP8 weights: FP8 checkpoints (``quant_method: fp8``) and online ``--quantization fp8``.

Checkpoints (vLLM / llm-compressor / AutoFP8, HF fine-grained FP8): ``weight`` float8_e4m3fn ``[out, in]``
with ``weight_scale`` per tensor (``[]``/``[1]``) or per channel (``[out]``/``[out, 1]``); ``input_scale``
(per tensor) when ``activation_scheme: static``. Either kind of weight scale is stored per output channel
(``[out]`` float32, a per-tensor scale repeated over its shard's rows): this keeps each fused shard's own
scale exactly, so q/k/v and gate/up need no requantization to one shared scale (vLLM requantizes to the max).
Static ``input_scale`` of fused shards (one per shard, ``shard_indexed``) become their maximum, as in vLLM.
``weight_block_size`` checkpoints (``weight_scale_inv`` per ``[bn, bk]`` block) are W8A16: small CUDA batches
run the weight-only FP8 GEMV (block scales applied in-kernel), others dequantize the weight per call.

Online (``--quantization fp8`` on a bf16/fp16/fp32 checkpoint): each linear weight is loaded dense, then
quantized to float8_e4m3fn with a per-channel scale (row absmax / 448) in ``process_weights_after_loading``;
activations are quantized dynamically per token. The LM head stays unquantized (as in vLLM).

The product is :func:`~pagoda.quantization.w8a8.fp8_linear`: ``torch._scaled_mm`` on CUDA with compute
capability >= 8.9, elsewhere the portable path (dequantize to float32 per call, same quantized arithmetic); CUDA
calls of at most ``GEMV_MAX_M`` rows run the weight-only FP8 GEMV (``kernels/triton_fp8_gemv.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pagoda.layers.linear import Linear, LinearMethod, set_weight_attrs
from pagoda.quantization.base import QuantizationConfig
from pagoda.quantization.w8a8 import (
    FP8_DTYPE,
    FP8_MAX,
    Fp8Rows,
    fp8_linear,
    fp8_rows_linear,
    fp8_small_m_gemv,
    quantize_weight_fp8_per_channel,
    scaled_mm_supported,
)

_KNOWN_KEYS = {"quant_method", "activation_scheme", "weight_block_size", "ignored_layers",
               "modules_to_not_convert", "fmt", "is_checkpoint_fp8_serialized", *(
                   "dequantize", "scale_fmt", "expert_dtype", "modules_to_convert")}
_HONOURED_VALUES: dict[str, tuple[Any, ...]] = {
    "dequantize": (False,), "scale_fmt": ("float", "ue8m0"), "expert_dtype": ("fp8",),
    "modules_to_convert": (None, []),
}
"""transformers' ``FineGrainedFP8Config`` keys (its ``save_pretrained`` writes them all) and the values pagoda runs:
``ue8m0`` weight scales (powers of two, as float32 or ``float8_e8m0fnu``) load exactly; the block method does
not quantize activations, so the ``ue8m0`` activation-scale rounding does not apply. ``dequantize: true`` (a
loading option), FP4 experts and extra converted modules (embeddings) are refused."""


def tensor(layer: nn.Module, name: str) -> Any:
    """A parameter, buffer or attribute a method registered on ``layer`` (typed loosely for mypy)."""
    return getattr(layer, name)


def load_channel_scale(param: torch.Tensor, tensor: torch.Tensor, shard_id: int | None, *,
                       sizes: tuple[int, ...], name: str) -> None:
    """Weight loader of a per-channel ``[out]`` scale: takes a shard's per-tensor (1 element) or per-channel
    (``size`` or ``[size, 1]``) scale and writes it over that shard's rows."""
    offset = 0 if shard_id is None else sum(sizes[:shard_id])
    size = param.shape[0] if shard_id is None else sizes[shard_id]
    flat = tensor.reshape(-1)
    if flat.numel() not in (1, size) or (flat.numel() == size and size > 1 and tensor.dim() == 2
                                          and tensor.shape[1] != 1):
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected a per-tensor scale or a per-channel "
                         f"one of {size} rows")
    param[offset:offset + size].copy_(flat.float().expand(size))


def load_tensor_scale(param: torch.Tensor, tensor: torch.Tensor, shard_id: int | None, *, name: str) -> None:
    """Weight loader of a per-shard scalar (``input_scale``) into a ``[num_shards]`` parameter."""
    if tensor.numel() != 1:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}; expected one per-tensor scale")
    param[shard_id or 0].copy_(tensor.reshape(()).float())


def create_fp8_weights(layer: Linear, in_features: int, out_features: int, bias: bool, static: bool) -> None:
    """Register an FP8 checkpoint's ``weight``, per-channel ``weight_scale``, optional ``input_scale``/``bias``."""
    weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8_DTYPE), requires_grad=False)
    set_weight_attrs(weight, output_dim=0, input_dim=1)
    layer.register_parameter("weight", weight)
    scale = nn.Parameter(torch.empty(out_features, dtype=torch.float32), requires_grad=False)
    set_weight_attrs(scale, output_dim=0, weight_loader=functools.partial(
        load_channel_scale, sizes=layer.output_sizes, name="weight_scale"))
    layer.register_parameter("weight_scale", scale)
    if static:
        iscale = nn.Parameter(torch.empty(len(layer.output_sizes), dtype=torch.float32), requires_grad=False)
        set_weight_attrs(iscale, weight_loader=functools.partial(load_tensor_scale, name="input_scale"))
        layer.register_parameter("input_scale", iscale)
    _create_bias(layer, out_features, bias)


def _create_bias(layer: Linear, out_features: int, bias: bool) -> None:
    if bias:
        b = nn.Parameter(torch.empty(out_features), requires_grad=False)
        set_weight_attrs(b, output_dim=0)
        layer.register_parameter("bias", b)
    else:
        layer.register_parameter("bias", None)


def finish_static_input_scale(layer: Linear) -> None:
    """Fused shards' static input scales -> their maximum (one scale for the shared input)."""
    if getattr(layer, "input_scale", None) is not None:
        layer.input_scale = nn.Parameter(tensor(layer, "input_scale").detach().amax().reshape(()),
                                         requires_grad=False)


def dummy_fp8_weights(layer: Linear, generator: torch.Generator) -> None:
    """Random FP8 codes and scales giving weights uniform in about ±0.02 (``--load-format dummy``)."""
    w = torch.empty(layer.weight.shape, dtype=torch.float32, device=layer.weight.device)
    w.uniform_(-FP8_MAX, FP8_MAX, generator=generator)
    layer.weight.copy_(w.to(FP8_DTYPE))
    for name in ("weight_scale", "input_scale", "weight_scale_inv"):
        p = getattr(layer, name, None)
        if p is not None:
            p.fill_(0.02 / FP8_MAX)
    if layer.bias is not None:
        layer.bias.uniform_(-0.02, 0.02, generator=generator)


class Fp8LinearMethod(LinearMethod):
    """FP8 weights with a per-channel scale (module docstring). ``act``: ``"token"`` / ``"tensor"`` (dynamic
    activation quantization), ``"static"`` (checkpoint ``input_scale``) or ``None`` (no activation
    quantization: dequantize the weight, W8A16). ``serialized``: the checkpoint holds FP8 (else online)."""

    def __init__(self, act: str | None, serialized: bool) -> None:
        self.act = act
        self.serialized = serialized

    def create_weights(self, layer: Linear, in_features: int, out_features: int, bias: bool) -> None:
        if self.serialized:
            create_fp8_weights(layer, in_features, out_features, bias, self.act == "static")
            return
        weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        set_weight_attrs(weight, output_dim=0, input_dim=1)
        layer.register_parameter("weight", weight)
        _create_bias(layer, out_features, bias)

    def process_weights_after_loading(self, layer: Linear) -> None:
        if not self.serialized:
            q, s = quantize_weight_fp8_per_channel(layer.weight.detach())
            layer.weight = nn.Parameter(q, requires_grad=False)
            layer.weight_scale = nn.Parameter(s, requires_grad=False)
        finish_static_input_scale(layer)
        layer.use_scaled_mm = self.act is not None and scaled_mm_supported(  # type: ignore[assignment]
            layer.weight.device, layer.in_features, layer.out_features)

    def takes_fp8_rows(self, layer: Linear) -> bool:
        """Dynamic per-token activations on ``torch._scaled_mm``: a fused norm or SiLU·mul may quantize them."""
        return self.act == "token" and bool(getattr(layer, "use_scaled_mm", False))

    def apply(self, layer: Linear, x: torch.Tensor | Fp8Rows) -> torch.Tensor:
        if isinstance(x, Fp8Rows):
            return fp8_rows_linear(x, layer.weight, tensor(layer, "weight_scale"), layer.bias,
                                   tensor(layer, "use_scaled_mm"))
        if self.act is None:
            n, k = layer.weight.shape
            small = fp8_small_m_gemv(x.reshape(-1, k), layer.weight, tensor(layer, "weight_scale"), layer.bias)
            if small is not None:
                return small.view(*x.shape[:-1], n)
            w = layer.weight.to(x.dtype) * tensor(layer, "weight_scale").to(x.dtype).view(-1, 1)
            return F.linear(x, w, layer.bias)
        return fp8_linear(x, layer.weight, tensor(layer, "weight_scale"), layer.bias,
                          tensor(layer, "input_scale") if self.act == "static" else None, self.act == "token",
                          tensor(layer, "use_scaled_mm"))

    def init_dummy(self, layer: Linear, generator: torch.Generator) -> None:
        if self.serialized:
            dummy_fp8_weights(layer, generator)
        else:
            super().init_dummy(layer, generator)


class Fp8BlockLinearMethod(LinearMethod):
    """Block-wise FP8 (``weight_block_size [bn, bk]``, ``weight_scale_inv [ceil(out/bn), ceil(in/bk)]``), W8A16:
    small CUDA batches run the FP8 GEMV with the block scales; otherwise the weight is dequantized per call."""

    def __init__(self, block: tuple[int, int], prefix: str = "") -> None:
        self.block = block
        self.prefix = prefix

    def create_weights(self, layer: Linear, in_features: int, out_features: int, bias: bool) -> None:
        bn, bk = self.block
        sizes = list(layer.output_sizes)
        if len(sizes) > 1 and any(n % bn for n in sizes):  # each shard's scale rows must start a block row
            raise ValueError(f"{self.prefix}: fp8 weight_block_size {list(self.block)} needs the output sizes of the "
                             f"modules fused into this layer, {sizes}, to be multiples of block_n {bn} (as vLLM "
                             f"does); this checkpoint's blocks do not line up with pagoda's fused layer.")
        weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8_DTYPE), requires_grad=False)
        set_weight_attrs(weight, output_dim=0, input_dim=1)
        layer.register_parameter("weight", weight)
        rows, cols = -(-out_features // bn), -(-in_features // bk)
        scale = nn.Parameter(torch.empty(rows, cols, dtype=torch.float32), requires_grad=False)
        set_weight_attrs(scale, output_dim=0, input_dim=1, pack_factor=bn)
        layer.register_parameter("weight_scale_inv", scale)
        _create_bias(layer, out_features, bias)

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        bn, bk = self.block
        n, k = layer.weight.shape
        small = fp8_small_m_gemv(x.reshape(-1, k), layer.weight, tensor(layer, "weight_scale_inv"), layer.bias,
                                 block=self.block)
        if small is not None:
            return small.view(*x.shape[:-1], n)
        s = tensor(layer, "weight_scale_inv").repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]
        return F.linear(x, (layer.weight.float() * s).to(x.dtype), layer.bias)

    def init_dummy(self, layer: Linear, generator: torch.Generator) -> None:
        dummy_fp8_weights(layer, generator)


def unfused_names(prefix: str, shard_names: tuple[str, ...]) -> list[str]:
    """The checkpoint module names fused into the layer at ``prefix`` (``...qkv_proj`` -> ``...q_proj`` ...)."""
    parent = prefix.rpartition(".")[0]
    return [f"{parent}.{s}" if parent else s for s in (shard_names or (prefix.rpartition(".")[2],))]


class Fp8Config(QuantizationConfig):
    """``quant_method: fp8`` checkpoints, or online FP8 when forced on a plain checkpoint (module docstring)."""

    name = "fp8"

    def __init__(self, serialized: bool, activation_scheme: str, block: tuple[int, int] | None,
                 ignored: list[str]) -> None:
        self.serialized = serialized
        self.activation_scheme = activation_scheme
        self.block = block
        self.ignored = ignored

    @classmethod
    def from_config(cls, qcfg: dict[str, Any]) -> Fp8Config:
        if not qcfg:
            return cls(False, "dynamic", None, [])
        unknown = sorted(set(qcfg) - _KNOWN_KEYS)
        if unknown:
            raise ValueError(f"fp8 quantization_config field(s) {unknown} are not supported by pagoda")
        scheme = str(qcfg.get("activation_scheme", "dynamic"))
        if scheme not in ("dynamic", "static"):
            raise ValueError(f"fp8 quantization_config activation_scheme {scheme!r} is not supported "
                             f"(dynamic, static)")
        for key, allowed in _HONOURED_VALUES.items():
            if key in qcfg and qcfg[key] not in allowed:
                raise ValueError(f"fp8 quantization_config {key}={qcfg[key]!r} is not supported by pagoda (it runs "
                                 f"{' or '.join(repr(v) for v in allowed)})")
        if str(qcfg.get("fmt", "e4m3")) != "e4m3":
            raise ValueError(f"fp8 quantization_config fmt {qcfg['fmt']!r} is not supported (e4m3)")
        block = qcfg.get("weight_block_size")
        if block is not None:
            if not isinstance(block, list | tuple) or len(block) != 2 or \
                    not all(type(b) is int and b > 0 for b in block):
                raise ValueError(f"fp8 quantization_config weight_block_size={block!r} must be two positive "
                                 f"integers [block_n, block_k]")
            if scheme != "dynamic":
                raise ValueError(f"fp8 weight_block_size {block} with activation_scheme {scheme!r} is not "
                                 f"supported (two sizes, dynamic activations)")
            block = (block[0], block[1])
        ignored: list[str] = []
        for key in ("ignored_layers", "modules_to_not_convert"):
            names = qcfg.get(key) or []
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"fp8 quantization_config {key} must be a list of module names, got {names!r}")
            ignored += names
        return cls(True, scheme, block, ignored)

    def _is_ignored(self, names: list[str]) -> bool:
        hits = [any(n == i or n.startswith(i + ".") or n.endswith("." + i) or n == i.rstrip(".")
                    for i in self.ignored) for n in names]
        if any(hits) and not all(hits):
            raise ValueError(f"fp8: ignored_layers covers only part of the fused modules {names}")
        return all(hits)

    def get_linear_method(self, prefix: str, shard_names: tuple[str, ...] = ()) -> LinearMethod | None:
        if prefix == "lm_head" or self._is_ignored(unfused_names(prefix, shard_names)):
            return None
        if self.block is not None:
            return Fp8BlockLinearMethod(self.block, prefix)
        return Fp8LinearMethod("static" if self.activation_scheme == "static" else "token", self.serialized)

    def describe(self) -> str:
        if not self.serialized:
            return "fp8 (online, per-channel weights, dynamic per-token activations)"
        return f"fp8 (activations {self.activation_scheme}" + (f", blocks {self.block})" if self.block else ")")
