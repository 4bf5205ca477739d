"""Rotary position embedding (neox / rotate-half layout, as HF Llama) with a cos/sin table.

Supports rope scaling types ``default``, ``linear`` and ``llama3`` (Llama-3.1).
"""

from __future__ import annotations

import math
from typing import Any

import torch


def rope_parameters(hf_config: dict[str, Any]) -> dict[str, Any]:
    """Normalise transformers 4.x (``rope_theta``/``rope_scaling``) and 5.x (``rope_parameters``)."""
    params: dict[str, Any] = {}
    if isinstance(hf_config.get("rope_parameters"), dict):
        params.update(hf_config["rope_parameters"])
    if isinstance(hf_config.get("rope_scaling"), dict):
        params.update(hf_config["rope_scaling"])
    params.setdefault("rope_theta", hf_config.get("rope_theta", 10000.0))
    rt = params.get("rope_type") or params.get("type") or "default"
    params["rope_type"] = rt
    return params


def compute_inv_freq(head_dim: int, params: dict[str, Any]) -> torch.Tensor:
    base = float(params["rope_theta"])
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rt = params["rope_type"]
    if rt == "default":
        return inv_freq
    if rt == "linear":
        return inv_freq / float(params["factor"])
    if rt == "llama3":
        factor = float(params["factor"])
        low = float(params["low_freq_factor"])
        high = float(params["high_freq_factor"])
        old_len = float(params["original_max_position_embeddings"])
        low_wavelen = old_len / low
        high_wavelen = old_len / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled)
    raise ValueError(
        f"rope scaling type {rt!r} is not supported yet (supported: default, linear, llama3)."
    )


class RotaryEmbedding(torch.nn.Module):
    cos: torch.Tensor  # buffers (register_buffer)
    sin: torch.Tensor

    def __init__(self, head_dim: int, max_position: int, params: dict[str, Any], dtype: torch.dtype) -> None:
        super().__init__()
        inv_freq = compute_inv_freq(head_dim, params)
        t = torch.arange(max_position, dtype=torch.int64).float()
        freqs = torch.outer(t, inv_freq)
        # [max_pos, head_dim/2] each, stored in the model dtype as HF does.
        self.register_buffer("cos", freqs.cos().to(dtype), persistent=False)
        self.register_buffer("sin", freqs.sin().to(dtype), persistent=False)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gathered once per step and shared by every layer: [T, 1, D/2] each."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

    @staticmethod
    def rotate(
        cos_sin: tuple[torch.Tensor, torch.Tensor], q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, H, D], k: [T, Hkv, D]."""
        cos, sin = cos_sin
        return _apply(q, cos, sin), _apply(k, cos, sin)


def _apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
