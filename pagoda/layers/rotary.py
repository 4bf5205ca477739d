"""Rotary position embedding (neox / rotate-half layout, as HF Llama) with a cos/sin table.

Rope types, computed as transformers' ``modeling_rope_utils`` does (one source of truth here):
``default``, ``linear``, ``dynamic`` (NTK), ``yarn``, ``longrope`` (Phi-3's ``su``) and ``llama3``.
Any other type is a start-up error naming it. ``partial_rotary_factor`` < 1 rotates only the first
``int(head_dim * factor)`` dims of each head (Phi-4-mini); the rest pass through.

Two types depend on the sequence length in HF, and pagoda's static table pins them down:

* ``dynamic``: HF rescales the base only once a batch runs past ``max_position_embeddings``, so up to
  that length (pagoda's cap for this type) it is exactly the default rope.
* ``longrope``: positions below ``original_max_position_embeddings`` use the short factors, later
  positions the long ones. HF switches a whole sequence to the long factors (recomputing its cache)
  once it grows past that length; the two agree on every sequence up to it.

The attention factor of ``yarn``/``longrope`` multiplies cos and sin (as HF does), so q·k scales by
its square.
"""

from __future__ import annotations

import math
from typing import Any

import torch

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")


def rope_parameters(hf_config: dict[str, Any], layer_type: str | None = None,
                    default_theta: float = 10000.0, check: bool = True) -> dict[str, Any]:
    """Normalise transformers 4.x (``rope_theta``/``rope_scaling``) and 5.x (``rope_parameters``, possibly
    nested per layer type) into one flat dict with ``rope_type``, ``rope_theta``, ``partial_rotary_factor``
    and ``max_position_embeddings`` (plus the type's own keys). ``layer_type`` picks a nested entry;
    ``check`` refuses a rope type this module cannot compute."""
    params: dict[str, Any] = {}
    rp = hf_config.get("rope_parameters")
    if isinstance(rp, dict):
        nested = layer_type is not None and isinstance(rp.get(layer_type), dict)
        params.update(rp[layer_type] if nested else {k: v for k, v in rp.items() if not isinstance(v, dict)})
    if isinstance(hf_config.get("rope_scaling"), dict):
        params.update(hf_config["rope_scaling"])
    params.setdefault("rope_theta", hf_config.get("rope_theta") or default_theta)
    params.setdefault("partial_rotary_factor", hf_config.get("partial_rotary_factor") or 1.0)
    rt = params.get("rope_type") or params.get("type") or "default"
    params["rope_type"] = "longrope" if rt == "su" else rt
    params["max_position_embeddings"] = int(hf_config.get("max_position_embeddings") or 2048)
    if params["rope_type"] in ("llama3", "yarn", "longrope"):
        if hf_config.get("original_max_position_embeddings"):  # Phi-3 keeps it at the top level; it wins
            params["original_max_position_embeddings"] = hf_config["original_max_position_embeddings"]
        params.setdefault("original_max_position_embeddings", params["max_position_embeddings"])
    if check and params["rope_type"] not in ROPE_TYPES:
        raise ValueError(f"config.json rope_scaling / rope_parameters: rope type {params['rope_type']!r} is not "
                         f"supported by pagoda's native models (supported: {', '.join(ROPE_TYPES)}).")
    return params


def rope_max_position(hf_config: dict[str, Any]) -> int:
    """The longest context the model's rope supports: ``max_position_embeddings``, or for YaRN
    ``original_max_position_embeddings * factor`` when larger (Qwen2.5/Qwen3 long context)."""
    rp = rope_parameters(hf_config, check=False)  # any model's config (the fallback's too)
    mpe = rp["max_position_embeddings"]
    if rp["rope_type"] == "yarn" and rp.get("factor"):
        return max(mpe, int(rp["original_max_position_embeddings"] * float(rp["factor"])))
    return mpe


def rotary_dim(head_dim: int, params: dict[str, Any]) -> int:
    return int(head_dim * float(params.get("partial_rotary_factor") or 1.0))


def _base_inv_freq(dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))


def _llama3(inv_freq: torch.Tensor, p: dict[str, Any]) -> torch.Tensor:
    factor = float(p["factor"])
    low = float(p["low_freq_factor"])
    high = float(p["high_freq_factor"])
    old_len = float(p["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
    return torch.where(medium, smoothed, scaled)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn(dim: int, base: float, p: dict[str, Any]) -> tuple[torch.Tensor, float]:
    orig = float(p["original_max_position_embeddings"])
    factor = p.get("factor")
    factor = float(factor) if factor is not None else p["max_position_embeddings"] / orig
    attn = p.get("attention_factor")
    if attn is None:
        ms, ms_all = p.get("mscale"), p.get("mscale_all_dim")
        attn = _yarn_mscale(factor, ms) / _yarn_mscale(factor, ms_all) if ms and ms_all else _yarn_mscale(factor)
    beta_fast = p.get("beta_fast") or 32
    beta_slow = p.get("beta_slow") or 1

    def corr_dim(rot: float) -> float:
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2).float() / dim)
    extra = 1 - ramp  # weight of the extrapolated (unscaled) frequency
    inv = (1.0 / (factor * pos_freqs)) * (1 - extra) + (1.0 / pos_freqs) * extra
    return inv, float(attn)


def _longrope_attention_factor(p: dict[str, Any]) -> float:
    if p.get("attention_factor") is not None:
        return float(p["attention_factor"])
    orig = float(p["original_max_position_embeddings"])
    factor = p.get("factor")
    factor = float(factor) if factor is not None else p["max_position_embeddings"] / orig
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))


def compute_inv_freq(head_dim: int, params: dict[str, Any], long: bool = False) -> tuple[torch.Tensor, float]:
    """``(inv_freq [rotary_dim/2], attention_factor)``; ``long`` picks longrope's long factors."""
    dim = rotary_dim(head_dim, params)
    base = float(params["rope_theta"])
    rt = params["rope_type"]
    if rt in ("default", "dynamic"):  # dynamic: see the module docstring
        return _base_inv_freq(dim, base), 1.0
    if rt == "linear":
        return _base_inv_freq(dim, base) / float(params["factor"]), 1.0
    if rt == "llama3":
        return _llama3(_base_inv_freq(dim, base), params), 1.0
    if rt == "yarn":
        return _yarn(dim, base, params)
    if rt == "longrope":
        ext = torch.tensor(params["long_factor" if long else "short_factor"], dtype=torch.float32)
        shape = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
        return 1.0 / (ext * base**shape), _longrope_attention_factor(params)
    raise ValueError(f"rope type {rt!r} is not supported (supported: {', '.join(ROPE_TYPES)}).")


def _freqs(head_dim: int, max_position: int, params: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """Angles [max_position, rotary_dim/2] (longrope: short rows, then long rows) and the attention factor."""
    t = torch.arange(max_position, dtype=torch.int64).float()
    inv, attn = compute_inv_freq(head_dim, params)
    freqs = torch.outer(t, inv)
    if params["rope_type"] == "longrope":
        orig = int(params["original_max_position_embeddings"])
        if max_position > orig:
            long_inv, _ = compute_inv_freq(head_dim, params, long=True)
            freqs[orig:] = torch.outer(t[orig:], long_inv)
    return freqs, attn


class RotaryEmbedding(torch.nn.Module):
    cos: torch.Tensor  # buffers (register_buffer)
    sin: torch.Tensor

    def __init__(self, head_dim: int, max_position: int, params: dict[str, Any], dtype: torch.dtype) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim(head_dim, params)
        self.partial = self.rotary_dim != head_dim
        freqs, attn = _freqs(head_dim, max_position, params)
        # [max_pos, rotary_dim/2] each, scaled by the attention factor and stored in the model dtype, as HF.
        self.register_buffer("cos", (freqs.cos() * attn).to(dtype), persistent=False)
        self.register_buffer("sin", (freqs.sin() * attn).to(dtype), persistent=False)

    def cos_sin(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gathered once per step and shared by every layer: [T, 1, rotary_dim/2] each."""
        return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)

    def rotate(
        self, cos_sin: tuple[torch.Tensor, torch.Tensor], q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """q: [T, H, D], k: [T, Hkv, D]."""
        cos, sin = cos_sin
        if not self.partial:
            return _apply(q, cos, sin), _apply(k, cos, sin)
        r = self.rotary_dim
        return (torch.cat((_apply(q[..., :r], cos, sin), q[..., r:]), dim=-1),
                torch.cat((_apply(k[..., :r], cos, sin), k[..., r:]), dim=-1))


def _apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
