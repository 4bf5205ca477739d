"""GGUF weights kept quantized (``--quantization gguf``, vLLM's name; chosen automatically for a .gguf model).

A .gguf model is still converted once (:mod:`pagoda.models.model_files`) for its ``config.json`` and
tokenizer; with this method the weights come from the original file instead of the conversion's
dequantized safetensors: :func:`gguf_model_config` records the file in the config's
``quantization_config``, :meth:`GGUFConfig.checkpoint_weights` reads its raw tensors
(:mod:`~pagoda.quantization.gguf_file`), and every linear layer, the token embedding and the LM head
turn their blocks into the canonical :class:`~pagoda.quantization.int_weight.IntWeight`
(:mod:`~pagoda.quantization.gguf_blocks`). F32/F16/BF16 tensors stay dense.

Modes (``--dtype`` sets the activation dtype and the scales' dtype in every mode):

- ``--load-format auto`` / ``gguf``: quantized (this method).
- ``--load-format safetensors``: the dequantized conversion (pagoda's behaviour before this method).
- ``--load-format dummy``: random unquantized weights of the model's shape.

Invariant: a layer's weights are exactly ``gguf.dequantize`` of its tensors (q/k rows un-permuted as
transformers does), with scales and offsets rounded to the activation dtype.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from pagoda.layers.linear import Linear, LinearMethod, set_weight_attrs
from pagoda.quantization.base import QuantizationConfig
from pagoda.quantization.gguf_blocks import FORMATS, BlockFormat, decode_blocks, decode_dense, q8_0_codes
from pagoda.quantization.gguf_file import RawTensor, iter_gguf_tensors
from pagoda.quantization.int_weight import IntWeight, int_weight_linear, int_weight_silu_mul, make_int_weight

if TYPE_CHECKING:
    from pagoda.layers.cpu_head_q8 import Q8Head

QUANTIZED_LOAD_FORMATS = ("auto", "gguf")
"""``--load-format`` values that run a .gguf model quantized (module docstring)."""


logger = logging.getLogger("pagoda")

GGUF_QUANTIZED_ARCHS = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                        "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")
"""Architectures whose GGUF tensors run quantized (llama.cpp's ``llama`` / ``qwen2`` / ``qwen3`` / ``qwen2moe`` /
``qwen3moe`` tensor names and row order, tested); a GGUF of another architecture runs its dequantized conversion."""

_MOE_ARCHS = ("Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")

_DENSE_MODULES = (".mlp.gate.", ".mlp.shared_expert_gate.")
"""Modules pagoda never quantizes (the MoE routers, models/moe.py): their GGUF tensors load as dense weights."""


def _dense_expert_types(gguf_file: Path) -> list[str]:
    """The types of ``gguf_file``'s stacked expert tensors that are not quantized (F16 / BF16 / F32 experts run the
    dequantized conversion: the quantized experts' stacked forms hold integer codes only)."""
    from pagoda.quantization.gguf_file import open_gguf

    return sorted({t.type_name for t in open_gguf(gguf_file).tensors
                   if "_exps." in t.name and t.type_name not in FORMATS})


def gguf_model_config(hf_config: dict[str, Any], gguf_file: Path | None, load_format: str,
                      requested: str | None, arch: str | None = None) -> dict[str, Any]:
    """``hf_config`` with ``quantization_config = {quant_method: gguf, gguf_file}`` when the model is the
    conversion of ``gguf_file``, ``load_format`` runs it quantized and ``arch`` is one of
    :data:`GGUF_QUANTIZED_ARCHS`; unchanged otherwise. A request for ``gguf`` that cannot be honoured is a
    ``ValueError`` naming the flag."""
    if gguf_file is not None and load_format in QUANTIZED_LOAD_FORMATS:
        dense = _dense_expert_types(gguf_file) if arch in _MOE_ARCHS else []
        if dense:
            if requested == "gguf":
                raise ValueError(f"--quantization gguf: the experts of {gguf_file.name} are {', '.join(dense)}, not "
                                 f"quantized; drop --quantization to run its dequantized conversion.")
            logger.info("%s: its experts are %s; running its dequantized conversion.", gguf_file.name, ", ".join(dense))
            return hf_config
        if arch is None or arch in GGUF_QUANTIZED_ARCHS:
            return {**hf_config, "quantization_config": {"quant_method": "gguf", "gguf_file": str(gguf_file)}}
        if requested == "gguf":
            raise ValueError(f"--quantization gguf runs {', '.join(GGUF_QUANTIZED_ARCHS)} GGUF files quantized, not "
                             f"{arch}; drop --quantization to run its dequantized conversion.")
        logger.info("%s GGUF: running its dequantized conversion (quantized GGUF runs %s).", arch,
                    ", ".join(GGUF_QUANTIZED_ARCHS))
        return hf_config
    if requested == "gguf":
        if gguf_file is None:
            raise ValueError("--quantization gguf needs a .gguf model (a .gguf file or a folder holding one).")
        raise ValueError(f"--quantization gguf contradicts --load-format {load_format} (which runs the "
                         f"{'dequantized conversion' if load_format == 'safetensors' else 'random weights'}); "
                         f"drop one of them.")
    return hf_config


class GGUFConfig(QuantizationConfig):
    """Weights read from ``gguf_file``; every linear layer, the embedding and the LM head stay quantized."""

    name = "gguf"

    def __init__(self, gguf_file: Path) -> None:
        self.gguf_file = gguf_file
        self._types: collections.Counter[str] = collections.Counter()  # tensors read, by type (for describe)

    @classmethod
    def from_config(cls, qcfg: dict[str, Any]) -> GGUFConfig:
        path = qcfg.get("gguf_file")
        if not path:
            raise ValueError("--quantization gguf needs a .gguf model (a .gguf file or a folder holding one).")
        unknown = sorted(set(qcfg) - {"quant_method", "gguf_file"})
        if unknown:
            raise ValueError(f"quantization_config fields {unknown} are not understood by the gguf method.")
        if not Path(path).is_file():
            raise FileNotFoundError(f"GGUF file {path} (the source of this converted model) does not exist.")
        return cls(Path(path))

    def get_linear_method(self, prefix: str, shard_names: tuple[str, ...] = ()) -> LinearMethod | None:
        return GGUFLinearMethod()

    def quantizes_embedding(self) -> bool:
        return True

    def checkpoint_weights(self, hf_config: dict[str, Any]) -> Iterator[tuple[str, torch.Tensor]]:
        """The file's tensors under HF names: 1-D ones (norms, biases) and the MoE routers (:data:`_DENSE_MODULES`,
        dequantized) dense; matrices as ``<module>.qweight`` raw-byte tensors carrying ``gguf_name`` / ``gguf_type`` /
        ``gguf_shape`` attributes. A stacked expert tensor counts once in :meth:`describe`."""
        for name, raw in iter_gguf_tensors(self.gguf_file, hf_config):
            if not raw.name.endswith("]") or raw.name.endswith("[0]"):
                self._types[raw.type_name] += 1
            if any(m in name for m in _DENSE_MODULES):
                w = _dense(raw, torch.device("cpu"))
                yield name, w.view(1, -1) if w.dim() == 1 else w  # llama.cpp stores the shared-expert gate as [H]
            elif len(raw.shape) == 1 and not raw.quantized:
                yield name, decode_dense(raw.type_name, raw.data, raw.shape)
            elif len(raw.shape) == 2 and name.endswith(".weight"):
                t = raw.data
                set_weight_attrs(t, gguf_name=raw.name, gguf_type=raw.type_name, gguf_shape=raw.shape)
                yield name[: -len("weight")] + "qweight", t
            else:
                raise ValueError(f"GGUF tensor {raw.name!r} ({raw.type_name}, shape {list(raw.shape)}) has no "
                                 f"place in pagoda's model")

    def weight_only_int(self) -> bool:
        return True

    def describe(self) -> str:
        types = ", ".join(f"{n} x{c}" for n, c in self._types.most_common())  # opening the file again costs seconds
        return f"gguf ({types}) from {self.gguf_file.name}" if types else f"gguf from {self.gguf_file.name}"


def _raw_of(t: torch.Tensor) -> RawTensor:
    return RawTensor(t.gguf_name, t.gguf_type, t.gguf_shape, t)  # type: ignore[attr-defined]


def _decode(raw: RawTensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, BlockFormat]:
    """:func:`decode_blocks` of one quantized tensor on ``device``; its errors name the GGUF tensor."""
    try:
        return decode_blocks(raw.type_name, raw.data.to(device), raw.shape[1])
    except ValueError as exc:
        raise ValueError(f"GGUF tensor {raw.name!r}: {exc}") from exc


def _dense(raw: RawTensor, device: torch.device) -> torch.Tensor:
    """The float32 value of one tensor (``gguf.dequantize``'s)."""
    if not raw.quantized:
        return decode_dense(raw.type_name, raw.data.to(device), raw.shape).float()
    codes, scales, offsets, fmt = _decode(raw, device)
    q = codes.view(codes.shape[0], -1, fmt.group).float()
    return (q * scales.unsqueeze(-1) + offsets.unsqueeze(-1)).reshape(raw.shape)


def _int_weight(raws: list[RawTensor], device: torch.device, dtype: torch.dtype) -> IntWeight:
    """One canonical weight for the (fused) shards: rows stacked, the finest group and widest codes of all
    shards (coarser groups repeat their scales, so values are unchanged)."""
    parts = [_decode(r, device) for r in raws]
    group = min(p[3].group for p in parts)
    bits = max(p[3].bits for p in parts)

    def fine(t: torch.Tensor, g: int) -> torch.Tensor:
        return t if g == group else t.repeat_interleave(g // group, dim=1)

    codes = torch.cat([p[0] for p in parts])
    scales = torch.cat([fine(p[1], p[3].group) for p in parts])
    offsets = torch.cat([fine(p[2], p[3].group) for p in parts])
    return make_int_weight(codes, scales, offsets, bits, group, dtype)


def _dense_table(layer: Linear, raws: list[RawTensor], device: torch.device, dtype: torch.dtype) -> bool:
    """Whether a token embedding (tied LM head) of 8-bit blocks is kept dense in a 16-bit ``dtype`` on the CPU.

    There the quantized form costs as much memory (the kernel's two int4 nibble planes plus the plain-layout
    lookup copy: ~2.2 bytes per weight for Q8_0) and runs slower: int4pack is a GEMV per row, so the 49152-row
    head of the default model took 41 ms at 1 row and 354 ms at 32 against 32 and 64 ms for the bf16
    oneDNN-prepacked matmul (``benchmarks/RESULTS.md``, 2026-12-01). The dense values are exactly the
    dequantized model's (``gguf.dequantize`` rounded once to ``dtype``)."""
    if not hasattr(layer, "lm_head") or device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16):
        return False
    return all(r.type_name in FORMATS and FORMATS[r.type_name].bits >= 8 for r in raws)


_PENDING = "_gguf_pending"


@dataclass
class _Pending:
    """A layer's GGUF tensors between loading and ``process_weights_after_loading`` (shard -> tensor)."""

    dtype: torch.dtype
    device: torch.device
    shards: dict[int, RawTensor] = field(default_factory=dict)


class GGUFLinearMethod(LinearMethod):
    """A linear layer (or embedding, see :class:`QuantizedEmbedding`) from GGUF tensors: ``int_weight`` when
    every shard is quantized, else a dense ``weight``."""

    plain_dense_weight = True

    def create_weights(self, layer: Linear, in_features: int, out_features: int, bias: bool) -> None:
        qweight = nn.Parameter(torch.empty(0, dtype=torch.uint8), requires_grad=False)
        set_weight_attrs(qweight, weight_loader=lambda p, t, shard: self._stash(layer, t, shard))
        layer.register_parameter("qweight", qweight)
        if bias:
            b = nn.Parameter(torch.empty(out_features), requires_grad=False)
            set_weight_attrs(b, output_dim=0)
            layer.register_parameter("bias", b)
        else:
            layer.register_parameter("bias", None)
        vars(layer)[_PENDING] = _Pending(torch.get_default_dtype(), torch.get_default_device())

    @staticmethod
    def _stash(layer: Linear, t: torch.Tensor, shard_id: int | None) -> None:
        if not hasattr(t, "gguf_type"):
            raise ValueError("expected a GGUF tensor (this layer runs with --quantization gguf)")
        raw = _raw_of(t)
        i = shard_id or 0
        want = (layer.output_sizes[i], layer.in_features)
        if tuple(raw.shape) != want:
            raise ValueError(f"GGUF tensor {raw.name!r} has shape {list(raw.shape)} but the model's config needs "
                             f"{list(want)}")
        vars(layer)[_PENDING].shards[i] = raw

    def process_weights_after_loading(self, layer: Linear) -> None:
        pending: _Pending = vars(layer).pop(_PENDING)
        raws = [pending.shards[i] for i in range(len(layer.output_sizes))]
        device, dtype = pending.device, pending.dtype
        del layer.qweight
        try:
            if all(r.quantized for r in raws) and not _dense_table(layer, raws, device, dtype):
                layer.int_weight = _int_weight(raws, device, dtype)
                if hasattr(layer, "lm_head"):  # a QuantizedEmbedding: its lookups need addressable rows
                    self.add_lookup_copy(layer)
            else:  # a dense shard (or a table kept dense, see _dense_table): the whole layer runs dense
                w = torch.cat([_dense(r, device) for r in raws]).to(dtype)
                layer.register_parameter("weight", nn.Parameter(w, requires_grad=False))
                if hasattr(layer, "lm_head") and dtype == torch.bfloat16:
                    self._keep_q8_codes(layer, raws)
        except ValueError as exc:
            if str(exc).startswith("GGUF tensor "):  # names its tensor already
                raise
            raise ValueError(f"GGUF tensor(s) {[r.name for r in raws]}: {exc}") from exc

    @staticmethod
    def _keep_q8_codes(layer: Linear, raws: list[RawTensor]) -> None:
        """A Q8_0 table kept dense in bf16 on the CPU also keeps its raw blocks (``q8_source``, the file's bytes) for
        the few-row LM head of :mod:`pagoda.layers.cpu_head_q8`; :func:`take_q8_head` builds that head from them
        where the model's head is this table (tied embeddings), and every ``pack_for_cpu`` takes them away."""
        if len(raws) != 1 or raws[0].type_name != "Q8_0" or raws[0].data.device.type != "cpu":
            return
        from pagoda.layers import cpu_head_q8

        if cpu_head_q8.available():
            vars(layer)["q8_source"] = raws[0]

    def apply(self, layer: Linear, x: torch.Tensor) -> torch.Tensor:
        w = getattr(layer, "int_weight", None)
        if w is not None:
            return int_weight_linear(x, w, layer.bias)
        return F.linear(x, layer.weight, layer.bias)

    def apply_silu_mul(self, layer: Linear, x: torch.Tensor) -> torch.Tensor | None:
        w = getattr(layer, "int_weight", None)
        return int_weight_silu_mul(x, w, layer.bias) if w is not None else None

    def embedding(self, layer: Linear, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the weight (the embedding lookup), dequantizing only those rows."""
        w = getattr(layer, "lookup_weight", None)
        if w is None:
            w = getattr(layer, "int_weight", None)
        if w is None:
            return F.embedding(ids, layer.weight)
        return dequantize_rows(w, ids)

    @staticmethod
    def add_lookup_copy(layer: Linear) -> None:
        """Give an embedding whose ``int_weight`` the kernels repacked (rows no longer addressable) a plain-layout
        copy for lookups (``lookup_weight``, about one byte per weight; it counts as weight bytes). Called once
        after loading, so nothing is built inside a CUDA graph capture."""
        w = getattr(layer, "int_weight", None)
        if w is None or w.layout == "plain":
            return
        scales, offsets = w.group_params()
        layer.lookup_weight = IntWeight(w.plain_codes(), scales, offsets, w.bits, w.group_size, w.perm)


def take_q8_head(layer: nn.Module, build: bool) -> Q8Head | None:
    """Removes a table's raw Q8_0 blocks (``GGUFLinearMethod._keep_q8_codes``) and, if ``build``, returns the
    :class:`~pagoda.layers.cpu_head_q8.Q8Head` made of them (the file's signed codes and scales); None where the
    layer kept none."""
    raw: RawTensor | None = vars(layer).pop("q8_source", None)
    if raw is None or not build:
        return None
    from pagoda.layers.cpu_head_q8 import Q8Head

    return Q8Head.pack(*q8_0_codes(raw.data, raw.shape[1]))


def dequantize_rows(w: IntWeight, ids: torch.Tensor) -> torch.Tensor:
    """``w.dequantize()[ids]`` without dequantizing the other rows (``w`` in the ``plain`` layout)."""
    if w.layout != "plain" or w.scales is None or w.offsets is None:
        raise ValueError(f"row lookup needs a plain-layout IntWeight, not {w.layout!r}")
    flat = ids.reshape(-1)
    q = w.codes.index_select(0, flat).view(flat.numel(), -1, w.group_size).float()
    scales, offsets = (t.index_select(0, flat).float().unsqueeze(-1) for t in (w.scales, w.offsets))
    rows = q * scales + offsets
    return rows.view(*ids.shape, w.in_features).to(w.scales.dtype)
