"""Maps Hugging Face ``architectures`` names to pagoda model classes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from pagoda.models.llama import LlamaForCausalLM
    from pagoda.quantization.base import QuantizationConfig

_LLAMA_FAMILY = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
)
_MOE_FAMILY = ("MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")  # models/moe.py
# Pooling-only architectures (models/bert.py, models/llama_pooling.py): served with --runner pooling.
_ENCODERS = ("BertModel", "BertForSequenceClassification", "RobertaModel", "RobertaForSequenceClassification",
             "XLMRobertaModel", "XLMRobertaForSequenceClassification")
_DECODER_POOLING = ("LlamaForSequenceClassification", "MistralForSequenceClassification",
                    "Qwen2ForSequenceClassification", "Qwen3ForSequenceClassification",
                    "LlamaModel", "MistralModel", "Qwen2Model", "Qwen3Model")


def supported_architectures() -> list[str]:
    return list(_LLAMA_FAMILY + _MOE_FAMILY + _ENCODERS + _DECODER_POOLING)


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
                         f"{arch} has none")
    return kind, "CLS" if arch in _ENCODERS else "LAST"


def resolve_architecture(hf_config: dict[str, Any]) -> str:
    archs = hf_config.get("architectures") or []
    for a in archs:
        if a in _LLAMA_FAMILY or a in _MOE_FAMILY or is_pooling_architecture(a):
            return a
    if not archs and hf_config.get("model_type") in ("llama", "mistral", "qwen2", "qwen3"):
        return {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                "qwen3": "Qwen3ForCausalLM"}[hf_config["model_type"]]
    raise ValueError(
        f"Model architecture(s) {archs or [hf_config.get('model_type')]} are not supported. "
        f"Supported architectures: {', '.join(supported_architectures())}."
    )


def build_model(hf_config: dict[str, Any], arch: str, dtype: torch.dtype,
                quant_config: QuantizationConfig | None = None, pooling_kind: str | None = None) -> LlamaForCausalLM:
    """The model class for ``arch``: the Llama family, or its MoE variants (models/moe.py); with
    ``pooling_kind`` (``--runner pooling``) the pooling variants (models/bert.py, models/llama_pooling.py)."""
    from pagoda.models.llama import LlamaForCausalLM

    if pooling_kind is not None:
        return _build_pooling_model(hf_config, arch, dtype, quant_config, pooling_kind)

    if arch in _MOE_FAMILY:
        from pagoda.models.moe import MOE_MODELS

        return MOE_MODELS[arch](hf_config, arch, dtype, quant_config)
    return LlamaForCausalLM(hf_config, arch, dtype, quant_config)


def _build_pooling_model(hf_config: dict[str, Any], arch: str, dtype: torch.dtype,
                         quant_config: QuantizationConfig | None, kind: str) -> Any:
    if arch in _ENCODERS:
        from pagoda.models import bert

        if kind == "embed":
            return bert.BertModel(hf_config, arch, dtype, quant_config)
        return bert.BertForSequenceClassification(hf_config, arch, dtype, quant_config)
    if arch in _MOE_FAMILY:
        raise ValueError(f"{arch} cannot run as a pooling model yet (MoE pooling is not implemented)")
    from pagoda.models import llama_pooling as lp

    cls = lp.LlamaForEmbedding if kind == "embed" else lp.LlamaForSequenceClassification
    return cls(hf_config, arch, dtype, quant_config)
