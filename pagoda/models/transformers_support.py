"""What the transformers fallback can run: the HF config and model class of an architecture, and the
checks that refuse (at start-up, naming the cause) what pagoda's paged attention would compute wrongly.

Refused: architectures that are not decoder LMs (``*ForCausalLM`` / ``*LMHeadModel``), that transformers
does not know (unless the config's ``auto_map`` names remote code and ``--trust-remote-code`` was given),
encoder-decoders, models whose attention does not go through transformers' attention-function registry
(e.g. Falcon, BLOOM, MPT: ALiBi), sliding-window attention narrower than the model's context, layer types
other than full and sliding attention (e.g. Llama 4's chunked attention, linear-attention or Mamba layers), and
attention logit soft-capping.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
TESTED_FALLBACK_ARCHS = (
    "CohereForCausalLM", "GPT2LMHeadModel", "GPTNeoXForCausalLM", "GraniteForCausalLM", "LlamaForCausalLM",
    "Olmo2ForCausalLM", "PhiForCausalLM", "StableLmForCausalLM",
)
"""Architectures tests/test_transformers_fallback.py checks against HF ``generate`` (listed by ``pagoda models``)."""
_REMOTE_KEY = "AutoModelForCausalLM"
_LAYER_TYPES = ("full_attention", "sliding_attention")
"""config ``layer_types`` entries the fallback runs (a sliding window only as wide as the context: checked apart)."""


def _is_lm_arch(arch: str) -> bool:
    return arch.endswith(_LM_SUFFIXES)


def _transformers_class(arch: str) -> Any:
    import transformers

    try:
        cls = getattr(transformers, arch, None)
    except Exception:  # transformers' lazy import of a model whose dependencies are missing
        return None
    return cls if isinstance(cls, type) else None


def _remote_target(hf_config: dict[str, Any]) -> str | None:
    auto_map = hf_config.get("auto_map") or {}
    target = auto_map.get(_REMOTE_KEY)
    return target if isinstance(target, str) else None


def resolve_transformers_arch(hf_config: dict[str, Any], archs: list[str], trust_remote_code: bool) -> str:
    """The architecture the fallback runs, or a ValueError naming the architecture and what to do."""
    named = archs or [str(hf_config.get("model_type"))]
    for arch in archs:
        if _is_lm_arch(arch) and _transformers_class(arch) is not None:
            return arch
    remote = _remote_target(hf_config)
    if remote is not None and archs:
        if not trust_remote_code:
            raise ValueError(
                f"Model architecture {archs[0]} is implemented by remote code in the model folder "
                f"(auto_map {_REMOTE_KEY}: {remote}). pagoda runs it through the transformers fallback only if you "
                f"allow that code to execute: pass --trust-remote-code (trust_remote_code=True)."
            )
        return archs[0]
    from pagoda.models.registry import supported_architectures

    raise ValueError(
        f"Model architecture(s) {named} are not supported: pagoda has no native implementation (native: "
        f"{', '.join(supported_architectures())}) and transformers cannot build a decoder LM "
        f"(*ForCausalLM / *LMHeadModel) for it. Run it with --model-impl transformers once transformers knows the "
        f"class (or the config's auto_map names remote code, with --trust-remote-code), or register a plugin model "
        f"(pagoda.ModelRegistry.register_model, entry-point group pagoda.general_plugins)."
    )


def hf_classes(hf_config: dict[str, Any], arch: str, trust_remote_code: bool,
               model_dir: Path | None) -> tuple[Any, Any]:
    """(a transformers ``PretrainedConfig`` built from ``hf_config``, the model class of ``arch``)."""
    cls = _transformers_class(arch) if _is_lm_arch(arch) else None
    if cls is not None:
        config_cls = cls.config_class
        return config_cls.from_dict(dict(hf_config)), cls
    remote = _remote_target(hf_config)
    if remote is None or not trust_remote_code or model_dir is None:
        resolve_transformers_arch(hf_config, [arch], trust_remote_code)  # raises the right message
        raise ValueError(f"Model architecture {arch} cannot be built from {model_dir}.")
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    model_cls: Any = get_class_from_dynamic_module(remote, str(model_dir))
    config_target = (hf_config.get("auto_map") or {}).get("AutoConfig")
    remote_config: Any = get_class_from_dynamic_module(config_target, str(model_dir)) if config_target else \
        model_cls.config_class
    return remote_config.from_dict(dict(hf_config)), model_cls


def _window_is_narrower(config: Any) -> int | None:
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    if getattr(config, "max_position_embeddings", None) is None:
        return int(window)
    return int(window) if int(window) < longest_context(config) else None


def longest_context(config: Any) -> int:
    """The longest context the engine may run the model at (YaRN extends max_position_embeddings): a window
    shorter than it changes the output somewhere."""
    from pagoda.layers.rotary import rope_max_position

    return rope_max_position(config.to_dict())


def check_supported(config: Any, model_cls: Any, arch: str) -> None:
    """Refuse what pagoda's attention backends would compute wrongly (module docstring)."""
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{arch} is an encoder-decoder model; the transformers fallback runs decoder-only LMs.")
    can_route = getattr(model_cls, "_can_set_attn_implementation", None)
    if can_route is not None and not can_route():
        raise ValueError(
            f"{arch}'s attention does not go through transformers' attention-function registry (AttentionInterface), "
            f"so the transformers fallback cannot route it to pagoda's paged attention (models with ALiBi, such as "
            f"Falcon, BLOOM and MPT, are in this case)."
        )
    if getattr(config, "alibi", False):
        raise ValueError(f"{arch} uses ALiBi position biases (config alibi=true), which pagoda's attention "
                         f"backends do not implement.")
    layer_types = getattr(config, "layer_types", None) or []
    other = sorted({str(t) for t in layer_types} - set(_LAYER_TYPES))
    if other:
        raise ValueError(f"{arch} has layers of type {', '.join(other)} (config layer_types), which the transformers "
                         f"fallback does not run (it runs {' and '.join(_LAYER_TYPES)} layers only).")
    chunk = getattr(config, "attention_chunk_size", None)
    if chunk:
        raise ValueError(f"{arch} uses chunked attention (config attention_chunk_size={chunk}), which the "
                         f"transformers fallback's attention does not implement.")
    window = _window_is_narrower(config)
    if window is not None:
        raise ValueError(
            f"{arch} uses sliding-window attention (config sliding_window={window}, narrower than the model's "
            f"longest context, {longest_context(config)} positions), which the transformers fallback's attention "
            f"does not implement."
        )
    cap = getattr(config, "attn_logit_softcapping", None)
    if cap:
        raise ValueError(f"{arch} soft-caps attention logits (config attn_logit_softcapping={cap}), which the "
                         f"transformers fallback's attention does not implement.")
