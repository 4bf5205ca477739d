"""The quantization seam: a :class:`QuantizationConfig` per checkpoint format.

A config is read from the checkpoint's ``quantization_config`` (or forced with
``--quantization``) and hands each linear layer a :class:`~pagoda.layers.linear.LinearMethod`
(``get_linear_method``), which creates that layer's parameters, loads them and runs ``apply``.
Model code never sees the format: it only passes each layer's checkpoint prefix.

Invariant: ``from_config`` refuses (``ValueError`` naming the field) every setting the method
does not honour; a config that constructs is one pagoda runs exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # `pagoda serve` parses its flags before it imports torch (pagoda.engine.prelaunch)
    import torch

    from pagoda.layers.linear import LinearMethod


class QuantizationConfig(ABC):
    """One quantization format: how its checkpoints' linear layers are stored and multiplied."""

    name: ClassVar[str]
    """The ``--quantization`` value (vLLM's name) and the ``quant_method`` read from ``config.json``."""

    checkpoint_only: ClassVar[bool] = False
    """Only runs checkpoints it wrote (GPTQ, AWQ): forced on a plain checkpoint, it serves dummy weights only."""

    @classmethod
    @abstractmethod
    def from_config(cls, qcfg: dict[str, Any]) -> QuantizationConfig:
        """Build from ``config.json``'s ``quantization_config`` (``{}`` when forced on a plain checkpoint)."""

    @abstractmethod
    def get_linear_method(self, prefix: str, shard_names: tuple[str, ...] = ()) -> LinearMethod | None:
        """The method for the linear layer at ``prefix`` (HF name, e.g. ``model.layers.0.self_attn.qkv_proj``;
        ``shard_names`` are the checkpoint modules fused into it, e.g. ``q_proj, k_proj, v_proj``), or ``None``
        to keep it unquantized (an ignored module, the LM head)."""

    def quantizes_embedding(self) -> bool:
        """Whether the checkpoint stores the token embedding quantized (GGUF); default: no."""
        return False

    def checkpoint_weights(self, hf_config: dict[str, Any]) -> Iterable[tuple[str, torch.Tensor]] | None:
        """HF-named tensors when the format has its own weights file (GGUF); default ``None``: the model
        folder's safetensors."""
        return None

    def weight_only_int(self) -> bool:
        """Whether the linears multiply integer weight codes by unquantized activations (an
        :class:`~pagoda.quantization.int_weight.IntWeight`): on CPU those kernels are fast only with bf16
        activations (:func:`pagoda.config.resolve_dtype`). Default: no."""
        return False

    def describe(self) -> str:
        """One line for the start-up log."""
        return self.name
