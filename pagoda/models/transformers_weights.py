"""Checkpoint names -> parameter names of a transformers model, for the transformers fallback.

transformers 5 renames some legacy checkpoint keys when it loads them (``WeightRenaming`` in its
conversion mapping, e.g. GPT-NeoX ``embed_out.`` -> ``lm_head.``; ``save_pretrained`` writes the
legacy names back). The fallback applies the same renamings, and the base-model prefix is added or
dropped as needed. Tensors that transformers would *transform* (a ``WeightConverter``, e.g. per-expert
tensors stacked into one) are refused by name: the fallback copies tensors, it does not convert them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Renamer = Callable[[str], tuple[str, bool]]
"""name -> (parameter name, whether transformers would convert the tensor rather than copy it)."""


def checkpoint_renamer(model: Any, params: dict[str, Any]) -> Renamer:
    prefix = getattr(model, "base_model_prefix", "")
    transforms = _renamings_and_converters(model)

    def rename(name: str) -> tuple[str, bool]:
        converted = False
        if transforms is not None:
            renamings, converters, apply = transforms
            name, pattern = apply(name, renamings, converters)
            converted = pattern is not None
        if name not in params and prefix:
            if f"{prefix}.{name}" in params:
                name = f"{prefix}.{name}"
            elif name.startswith(prefix + ".") and name[len(prefix) + 1:] in params:
                name = name[len(prefix) + 1:]
        return name, converted

    return rename


def _renamings_and_converters(model: Any) -> tuple[list, list, Callable] | None:
    """transformers' transforms for ``model`` (None where this transformers version lacks the API)."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

        transforms = get_model_conversion_mapping(model)
    except (ImportError, AttributeError, TypeError):
        return None
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    return renamings, converters, rename_source_key
