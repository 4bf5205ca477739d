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
    "Phi3ForCausalLM",
)
_MOE_FAMILY = ("MixtralForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM")  # models/moe.py
_GEMMA = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")  # pagoda.models.gemma


def supported_architectures() -> list[str]:
    return list(_LLAMA_FAMILY + _MOE_FAMILY + _GEMMA)


def resolve_architecture(hf_config: dict[str, Any]) -> str:
    archs = hf_config.get("architectures") or []
    for a in archs:
        if a in _LLAMA_FAMILY + _MOE_FAMILY + _GEMMA:
            return a
        if a == "Gemma3ForConditionalGeneration":
            raise ValueError("Gemma3ForConditionalGeneration (multimodal) checkpoints are not supported; use a "
                             "text-only Gemma3ForCausalLM checkpoint (e.g. gemma-3-270m / gemma-3-1b).")
    if not archs and hf_config.get("model_type") in ("llama", "mistral", "qwen2", "qwen3"):
        return {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                "qwen3": "Qwen3ForCausalLM"}[hf_config["model_type"]]
    raise ValueError(
        f"Model architecture(s) {archs or [hf_config.get('model_type')]} are not supported. "
        f"Supported architectures: {', '.join(supported_architectures())}."
    )


def build_model(hf_config: dict[str, Any], arch: str, dtype: torch.dtype,
                quant_config: QuantizationConfig | None = None) -> LlamaForCausalLM:
    """The model class for ``arch``: the Llama family, or its MoE variants (models/moe.py)."""
    from pagoda.models.llama import LlamaForCausalLM

    if arch in _MOE_FAMILY:
        from pagoda.models.moe import MOE_MODELS

        return MOE_MODELS[arch](hf_config, arch, dtype, quant_config)
    if arch in _GEMMA:
        from pagoda.models.gemma import GemmaForCausalLM

        return GemmaForCausalLM(hf_config, arch, dtype, quant_config)
    return LlamaForCausalLM(hf_config, arch, dtype, quant_config)
