"""Which implementation runs each Hugging Face ``architectures`` name.

Three sources, in this order:

1. plugin models registered at run time (:meth:`ModelRegistry.register_model`, usually from a
   ``pagoda.general_plugins`` entry point; they win over native ones);
2. pagoda's native models, the table ``_NATIVE_MODELS`` below (one line per architecture:
   ``"Arch": "module:Class"``);
3. the transformers fallback (:mod:`pagoda.models.transformers_backend`) for any other
   ``*ForCausalLM`` / ``*LMHeadModel`` that transformers can build.

``--model-impl`` (vLLM's flag) picks: ``auto`` (native or plugin if there is one, else the
fallback), ``pagoda`` (alias ``vllm``: native or plugin only) or ``transformers`` (the fallback).

A model class states what it supports in class attributes ``supports_<feature>`` for the
features in :data:`MODEL_FEATURES` (default True); ``pagoda models`` prints them.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    from pathlib import Path

    import torch

    from pagoda.quantization.base import QuantizationConfig

logger = logging.getLogger("pagoda")

_NATIVE_MODELS: dict[str, str] = {
    "LlamaForCausalLM": "pagoda.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "pagoda.models.llama:LlamaForCausalLM",
    "Qwen2ForCausalLM": "pagoda.models.llama:LlamaForCausalLM",
    "Qwen3ForCausalLM": "pagoda.models.llama:LlamaForCausalLM",
    "Phi3ForCausalLM": "pagoda.models.llama:LlamaForCausalLM",
    "Gemma2ForCausalLM": "pagoda.models.gemma:GemmaForCausalLM",
    "Gemma3ForCausalLM": "pagoda.models.gemma:GemmaForCausalLM",
    "MixtralForCausalLM": "pagoda.models.moe:MixtralForCausalLM",
    "Qwen2MoeForCausalLM": "pagoda.models.moe:Qwen2MoeForCausalLM",
    "Qwen3MoeForCausalLM": "pagoda.models.moe:Qwen3MoeForCausalLM",
}
"""Native architectures: HF ``architectures`` name -> ``"module:Class"``."""

_MODEL_TYPES: dict[str, str] = {
    "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM", "phi3": "Phi3ForCausalLM", "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM", "mixtral": "MixtralForCausalLM", "qwen2_moe": "Qwen2MoeForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
}
"""config.json ``model_type`` -> architecture, for configs without ``architectures``."""

# Pooling-only architectures (models/bert.py, models/llama_pooling.py): served with --runner pooling.
_ENCODERS = ("BertModel", "BertForSequenceClassification", "RobertaModel", "RobertaForSequenceClassification",
             "XLMRobertaModel", "XLMRobertaForSequenceClassification")
_DECODER_POOLING = ("LlamaForSequenceClassification", "MistralForSequenceClassification",
                    "Qwen2ForSequenceClassification", "Qwen3ForSequenceClassification",
                    "LlamaModel", "MistralModel", "Qwen2Model", "Qwen3Model")
_MOE = ("MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")


def pooling_architectures() -> list[tuple[str, str, str]]:
    """(architecture, implementing class, default task) of every pooling-only architecture, for the support table;
    the class is the one :func:`_build_pooling_model` builds for the default ``--convert auto``."""
    out = []
    for arch in (*_ENCODERS, *_DECODER_POOLING):
        kind, _ = default_pooling(arch, "auto")
        module, embed = ("bert", "BertModel") if arch in _ENCODERS else ("llama_pooling", "LlamaForEmbedding")
        classify = "BertForSequenceClassification" if arch in _ENCODERS else "LlamaForSequenceClassification"
        out.append((arch, f"{module}.{embed if kind == 'embed' else classify}", kind))
    return out


def is_pooling_architecture(arch: str) -> bool:
    """True for architectures that only pool (encoders, sequence classifiers, base decoder models)."""
    return arch in _ENCODERS or arch in _DECODER_POOLING


def default_pooling(arch: str, convert: str) -> tuple[str, str]:
    """(kind: embed | classify | reward, default pooling type) of ``arch`` run as a pooling model.
    ``convert`` (``--convert``) picks the kind; ``auto``: classify for ``*ForSequenceClassification``,
    embed otherwise. Encoders pool CLS by default, decoders their last token (vLLM's defaults)."""
    classifier = arch.endswith("ForSequenceClassification")
    kind = convert if convert in ("embed", "classify", "reward") else ("classify" if classifier else "embed")
    if kind in ("classify", "reward") and not classifier:
        raise ValueError(f"--convert {kind} needs a *ForSequenceClassification checkpoint (a classifier head); "
                         f"{arch} has none" + ("" if kind != "classify" or not arch.endswith("ForCausalLM") else
                                               " (a Llama-family *ForCausalLM classifies from its LM-head rows with "
                                               "classifier_from_token and method in --hf-overrides, as vLLM's "
                                               "LLM-as-reranker recipe)"))
    return kind, "CLS" if arch in _ENCODERS else "LAST"


ModelImpl = Literal["auto", "pagoda", "vllm", "transformers"]
MODEL_IMPLS: tuple[str, ...] = get_args(ModelImpl)

MODEL_FEATURES: dict[str, str] = {
    "cuda_graphs": "CUDA graphs",
    "prefix_caching": "prefix caching",
    "chunked_prefill": "chunked prefill",
    "quantization": "quantization",
}
"""Features a model class may lack: attribute ``supports_<key>`` (default True) -> column title."""


class ModelRegistry:
    """Plugin models (vLLM's ``ModelRegistry.register_model``)."""

    _plugins: dict[str, str | type] = {}

    @classmethod
    def register_model(cls, model_arch: str, model_cls: str | type) -> None:
        """Run architecture ``model_arch`` with ``model_cls`` (a class or ``"pkg.module:Class"``, imported when
        a model is built). The class has the interface of :class:`pagoda.models.llama.LlamaForCausalLM`."""
        if not isinstance(model_cls, type) and (not isinstance(model_cls, str) or ":" not in model_cls):
            raise ValueError(f"register_model({model_arch!r}, ...): give a class or 'pkg.module:Class', "
                             f"got {model_cls!r}.")
        if model_arch in _NATIVE_MODELS or model_arch in cls._plugins:
            logger.warning("Model architecture %s is already registered; %s replaces it.", model_arch, model_cls)
        cls._plugins[model_arch] = model_cls

    @classmethod
    def get_supported_archs(cls) -> list[str]:
        return sorted({*_NATIVE_MODELS, *cls._plugins})

    @classmethod
    def is_registered(cls, arch: str) -> bool:
        return arch in cls._plugins or arch in _NATIVE_MODELS


def supported_architectures() -> list[str]:
    """Architectures with a native or plugin implementation."""
    return ModelRegistry.get_supported_archs()


def native_architectures() -> dict[str, str]:
    return dict(_NATIVE_MODELS)


def model_class(arch: str) -> type:
    """The native or plugin class of ``arch`` (imported)."""
    target = ModelRegistry._plugins.get(arch) or _NATIVE_MODELS[arch]
    if isinstance(target, type):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def model_supports(cls: type, feature: str) -> bool:
    return bool(getattr(cls, f"supports_{feature}", True))


def hf_architectures(hf_config: dict[str, Any]) -> list[str]:
    archs = list(hf_config.get("architectures") or [])
    if not archs and hf_config.get("model_type") in _MODEL_TYPES:
        archs = [_MODEL_TYPES[hf_config["model_type"]]]
    return archs


def resolve_architecture(hf_config: dict[str, Any], model_impl: str = "auto",
                         trust_remote_code: bool = False) -> tuple[str, str]:
    """``(architecture, impl)``: ``impl`` is ``"pagoda"`` (native or plugin class) or ``"transformers"``.

    Raises a ValueError naming the architecture and what to do when nothing can run it."""
    if model_impl not in MODEL_IMPLS:
        raise ValueError(f"model_impl must be one of {MODEL_IMPLS}, got {model_impl!r}.")
    archs = hf_architectures(hf_config)
    if "Gemma3ForConditionalGeneration" in archs:
        raise ValueError("Gemma3ForConditionalGeneration (multimodal) checkpoints are not supported; use a "
                         "text-only Gemma3ForCausalLM checkpoint (e.g. gemma-3-270m / gemma-3-1b).")
    for a in archs:
        if is_pooling_architecture(a):
            return a, "pagoda"
    if model_impl != "transformers":
        for a in archs:
            if ModelRegistry.is_registered(a):
                return a, "pagoda"
        if model_impl in ("pagoda", "vllm"):
            raise ValueError(
                f"Model architecture(s) {archs or [hf_config.get('model_type')]} have no native pagoda "
                f"implementation (native: {', '.join(supported_architectures())}). Use --model-impl transformers "
                f"(or auto) to run it through the transformers fallback, or register a plugin model."
            )
    from pagoda.models.transformers_support import resolve_transformers_arch

    return resolve_transformers_arch(hf_config, archs, trust_remote_code), "transformers"


def build_model(hf_config: dict[str, Any], arch: str, dtype: torch.dtype,
                quant_config: QuantizationConfig | None = None, impl: str = "pagoda",
                trust_remote_code: bool = False, model_dir: Path | None = None,
                pooling_kind: str | None = None) -> Any:
    """An instance of the class that runs ``arch`` (``impl`` as :func:`resolve_architecture` returned); with
    ``pooling_kind`` (``--runner pooling``) the pooling variants (models/bert.py, models/llama_pooling.py)."""
    if pooling_kind is not None:
        return _build_pooling_model(hf_config, arch, dtype, quant_config, pooling_kind)
    if impl == "transformers":
        from pagoda.models.transformers_backend import TransformersForCausalLM

        return TransformersForCausalLM(hf_config, arch, dtype, quant_config, trust_remote_code, model_dir)
    return model_class(arch)(hf_config, arch, dtype, quant_config)


def _build_pooling_model(hf_config: dict[str, Any], arch: str, dtype: torch.dtype,
                         quant_config: QuantizationConfig | None, kind: str) -> Any:
    if arch in _ENCODERS:
        from pagoda.models import bert

        if kind == "embed":
            return bert.BertModel(hf_config, arch, dtype, quant_config)
        return bert.BertForSequenceClassification(hf_config, arch, dtype, quant_config)
    if arch in _MOE:
        raise ValueError(f"{arch} cannot run as a pooling model yet (MoE pooling is not implemented)")
    if arch not in _DECODER_POOLING and arch not in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                                     "Qwen3ForCausalLM"):
        raise ValueError(f"{arch} cannot run as a pooling model (pooling runs BERT-family encoders and the Llama / "
                         f"Mistral / Qwen2 / Qwen3 decoders)")
    from pagoda.models import llama_pooling as lp

    cls = lp.LlamaForEmbedding if kind == "embed" else lp.LlamaForSequenceClassification
    return cls(hf_config, arch, dtype, quant_config)
