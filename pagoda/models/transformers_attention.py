"""pagoda's paged attention as a transformers attention function (``attn_implementation="pagoda"``).

transformers' attention modules compute q/k/v (after rotary, before any GQA repeat) and hand them
to ``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]`` as ``[batch, heads, tokens, head_dim]``.
pagoda runs the HF model on its flattened token batch as one sequence (batch 1, every scheduled
token of every request), so the function sees ``[1, H, T, D]``; it writes K/V into the layer's
paged cache and runs pagoda's attention backend with the step's :class:`AttentionMetadata`, which
keeps requests apart and applies causality per request. Output: ``[1, T, H, D]``, as transformers'
own functions return it.

The step's state reaches the function through the ``module`` argument: every module of the
wrapped model carries a reference to its wrapper's :class:`StepContext` (attribute
``_pagoda_step``), which the wrapper fills for the duration of one forward. No global state.

Probe mode (no metadata): plain causal SDPA over the given tokens, recording each layer's K/V
shape; the wrapper uses it once at start-up to learn the cache shape and check that every layer's
attention comes through here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from pagoda.attention.backend import AttentionBackend
from pagoda.attention.metadata import AttentionMetadata

ATTN_IMPLEMENTATION = "pagoda"
STEP_ATTR = "_pagoda_step"
# Keyword arguments some models pass that change the attention math (name -> what it is); pagoda's backends implement
# none of them.
_UNSUPPORTED_KWARGS = {"softcap": "attention logit soft-capping", "s_aux": "attention sinks",
                       "sinks": "attention sinks"}


@dataclass
class StepContext:
    """What one forward of the wrapped model needs; filled by the wrapper, read by :func:`pagoda_attention`."""

    kv_caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None
    meta: AttentionMetadata | None = None
    backend: AttentionBackend | None = None
    layers_called: list[int] = field(default_factory=list)
    probe_shapes: dict[int, tuple[int, int]] | None = None  # probe mode: layer -> (num_kv_heads, head_dim)

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
        """q [T, H, D], k/v [T, Hkv, D] -> [T, H, D]."""
        self.layers_called.append(layer)
        if self.probe_shapes is not None:
            self.probe_shapes[layer] = (k.shape[1], k.shape[2])
            o = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                               is_causal=True, scale=scale, enable_gqa=True)
            return o.transpose(0, 1)
        if self.meta is None or self.kv_caches is None or self.backend is None:
            raise RuntimeError("pagoda attention was called outside a pagoda forward")
        k_cache, v_cache = self.kv_caches[layer]
        self.backend.write_kv(k, v, k_cache, v_cache, self.meta.slot_mapping)
        return self.backend.forward(q, k_cache, v_cache, self.meta, scale)


def pagoda_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature. ``attention_mask`` is ignored: the metadata says which
    keys each query sees (transformers builds no mask for a registered custom implementation), always causally,
    so a non-causal module (``is_causal`` False) and the arguments in :data:`_UNSUPPORTED_KWARGS` are errors."""
    step: StepContext | None = getattr(module, STEP_ATTR, None)
    layer = getattr(module, "layer_idx", None)
    if step is None or layer is None:
        raise RuntimeError(f"{type(module).__name__} called pagoda attention without a pagoda step or a layer_idx")
    for name, what in _UNSUPPORTED_KWARGS.items():
        if kwargs.get(name) is not None:
            raise RuntimeError(f"{type(module).__name__} asks for {what} ({name}={_describe(kwargs[name])}), which "
                               f"pagoda's attention backends do not implement")
    causal = kwargs.get("is_causal")
    if (getattr(module, "is_causal", True) if causal is None else causal) is False:
        raise RuntimeError(f"{type(module).__name__} attends bidirectionally (is_causal=False; e.g. a config's "
                           f"use_bidirectional_attention); pagoda's attention backends are causal only")
    if query.shape[0] != 1:
        raise RuntimeError(f"pagoda attention expects the flattened batch as one sequence, got {tuple(query.shape)}")
    q = query[0].transpose(0, 1).contiguous()
    k = key[0].transpose(0, 1).contiguous()
    v = value[0].transpose(0, 1).contiguous()
    scale = float(scaling) if scaling is not None else q.shape[-1] ** -0.5
    out = step.attend(int(layer), q, k, v, scale)
    return out.unsqueeze(0), None


def _describe(value: Any) -> str:
    """A short form of an attention argument for an error message (a tensor by its shape, not its values)."""
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)}"
    return repr(value)


def register() -> None:
    """Make ``attn_implementation="pagoda"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, pagoda_attention)
