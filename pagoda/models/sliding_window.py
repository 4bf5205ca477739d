"""Which layers attend through a sliding window, and how wide: one rule for every model.

A window ``W`` (HF's convention) lets a query at position ``p`` see keys at positions ``> p - W``.
The window is a per-layer attention mask (see :mod:`pagoda.attention.backend`); the KV cache still
keeps every position of a sliding layer (full-attention blocks; no per-layer-type cache groups), so
a window saves compute, not KV memory, and never caps ``max_model_len``.

Which layers slide, as transformers decides:

* ``layer_types`` in config.json (transformers 5 writes it): the ``"sliding_attention"`` entries;
* otherwise Gemma 2 slides on even layers, Gemma 3 on all but every ``sliding_window_pattern``-th
  (default 6), Qwen2/Qwen3 (only with ``use_sliding_window``) from layer ``max_window_layers`` on,
  and every other model (Mistral, Phi-3) on all layers.
"""

from __future__ import annotations

from typing import Any


def layer_sliding_windows(hf_config: dict[str, Any], arch: str, num_layers: int) -> list[int | None]:
    """The window of each layer (None = full attention)."""
    window = hf_config.get("sliding_window")
    if not window or (arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM") and not hf_config.get("use_sliding_window")):
        return [None] * num_layers
    w = int(window)
    types = hf_config.get("layer_types")
    if isinstance(types, list) and arch != "MistralForCausalLM":  # HF Mistral ignores layer_types
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
    return [w] * num_layers
