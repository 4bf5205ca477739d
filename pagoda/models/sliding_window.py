"""Which layers attend through a sliding window, and how wide: one rule for every model.

A window ``W`` (HF's convention) lets a query at position ``p`` see keys at positions ``> p - W``.
The window is a per-layer attention mask (see :mod:`pagoda.attention.backend`); the KV cache still
keeps every position of a sliding layer (full-attention blocks; no per-layer-type cache groups), so
a window saves compute, not KV memory, and never caps ``max_model_len``.

Which layers slide, as each architecture's transformers modeling decides:

* Llama: none (HF Llama's attention has no window: a ``sliding_window`` key in its config.json is ignored, with
  a warning, as HF's forward ignores it);
* Qwen2, Qwen3, Qwen2-MoE and Qwen3-MoE: none unless ``use_sliding_window`` is true (their hub configs
  carry a ``sliding_window`` that is off);
* ``layer_types`` in config.json (transformers 5 writes it), for the architectures whose HF modeling reads it
  (Gemma 2/3, Qwen2, Qwen3, Qwen2-MoE): the ``"sliding_attention"`` entries;
* otherwise Gemma 2 slides on even layers, Gemma 3 on all but every ``sliding_window_pattern``-th
  (default 6), Qwen2/Qwen3 from layer ``max_window_layers`` on, Qwen2-MoE on even layers below
  ``max_window_layers``, and every other model (Mistral, Mixtral, Phi-3, Qwen3-MoE) on all layers.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger("pagoda")

_NO_WINDOW = frozenset({"LlamaForCausalLM"})
"""Architectures whose HF modeling never slides."""
_GATED = frozenset({"Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM"})
"""Architectures that slide only with ``use_sliding_window`` true."""
_READS_LAYER_TYPES = frozenset({"Gemma2ForCausalLM", "Gemma3ForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                                "Qwen2MoeForCausalLM"})
"""Architectures whose HF modeling picks the sliding layers from ``layer_types`` when config.json has it."""


def layer_sliding_windows(hf_config: dict[str, Any], arch: str, num_layers: int) -> list[int | None]:
    """The window of each layer (None = full attention)."""
    window = hf_config.get("sliding_window")
    if window and arch in _NO_WINDOW:
        logger.warning("config.json sliding_window=%s is ignored: %s attends over the whole context (as its "
                       "transformers modeling does).", window, arch)
    if not window or arch in _NO_WINDOW or (arch in _GATED and not hf_config.get("use_sliding_window")):
        return [None] * num_layers
    w = int(window)
    types = hf_config.get("layer_types")
    if isinstance(types, list) and arch in _READS_LAYER_TYPES:
        if len(types) != num_layers:
            raise ValueError(f"config.json layer_types has {len(types)} entries for {num_layers} layers.")
        return [w if t == "sliding_attention" else None for t in types]
    if arch == "Gemma2ForCausalLM":
        return [w if i % 2 == 0 else None for i in range(num_layers)]
    if arch == "Gemma3ForCausalLM":
        pattern = int(hf_config.get("sliding_window_pattern") or 6)
        return [w if (i + 1) % pattern else None for i in range(num_layers)]
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        first = int(hf_config.get("max_window_layers", 28))
        return [w if i >= first else None for i in range(num_layers)]
    if arch == "Qwen2MoeForCausalLM":
        below = int(hf_config.get("max_window_layers", 28))
        return [w if (i + 1) % 2 and i < below else None for i in range(num_layers)]
    return [w] * num_layers
