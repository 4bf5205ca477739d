"""The attention-backend interface and its registry.

A backend does two things per layer and step: write the new tokens' K/V into the
paged cache (driven by ``slot_mapping``), then compute attention of the new queries
over every cached key of their request (driven by ``block_tables``/``seq_lens``).
See :mod:`pagoda.attention.metadata` for the layout contract.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from pagoda.attention.metadata import AttentionMetadata
from pagoda.config import ATTENTION_BACKENDS


class AttentionBackend(ABC):
    """Stateless attention implementation over a paged KV cache."""

    name: str = "abstract"

    @abstractmethod
    def write_kv(
        self,
        key: torch.Tensor,  # [T, Hkv, D]
        value: torch.Tensor,  # [T, Hkv, D]
        k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
        v_cache: torch.Tensor,
        slot_mapping: torch.Tensor,  # int64 [T]; negative = skip
        k_scale: float = 1.0,
        v_scale: float = 1.0,
    ) -> None:
        """Scatter new K/V rows into their cache slots (an FP8 cache stores ``k / k_scale``, ``v / v_scale``,
        saturated: :mod:`pagoda.attention.kv_quant`)."""

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,  # [T, H, D]
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
        sliding_window: int | None = None,
        logits_soft_cap: float | None = None,
    ) -> torch.Tensor:
        """Return attention output ``[T, H, D]`` (causal, GQA by head grouping).

        An FP8 cache is read as its contents times ``k_scale`` / ``v_scale`` (other caches ignore the
        scales). ``sliding_window = W``: a query at position ``p`` sees keys at positions ``> p - W`` only
        (the layer's window, HF's convention); ``logits_soft_cap = c``: scores ``s = scale * q.k`` become
        ``c * tanh(s / c)`` (Gemma 2). Both are per layer; None means off."""


_REGISTRY: dict[str, Callable[[], AttentionBackend]] = {}


def register_backend(name: str, factory: Callable[[], AttentionBackend]) -> None:
    _REGISTRY[name] = factory


def get_backend(name: str) -> AttentionBackend:
    if name not in _REGISTRY:
        # Import built-ins lazily so CPU-only installs never import triton.
        if name == "torch":
            from pagoda.attention import torch_ref  # noqa: F401
        elif name == "triton":
            from pagoda.attention import triton_backend  # noqa: F401
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown attention backend {name!r}; available: {sorted(_REGISTRY) or list(ATTENTION_BACKENDS)}"
        )
    return _REGISTRY[name]()


def default_backend_name(device: torch.device) -> str:
    """CUDA uses the Triton kernels; everything else uses the PyTorch implementation."""
    return "triton" if device.type == "cuda" else "torch"
