"""A token embedding whose table a quantization method stores (GGUF keeps it quantized).

The table ``[vocab, hidden]`` is the weight of a :class:`~pagoda.layers.linear.Linear` with
``in_features = hidden`` and ``out_features = vocab``, so the method's storage serves both uses:
``forward(ids)`` looks rows up (the method's ``embedding``) and :meth:`lm_head` is the tied LM head's
matmul (the method's ``apply``). Loading and dummy weights work as for any ``Linear``.
"""

from __future__ import annotations

from typing import Protocol

import torch

from pagoda.layers.linear import Linear, LinearMethod


class EmbeddingMethod(Protocol):
    def embedding(self, layer: Linear, ids: torch.Tensor) -> torch.Tensor: ...


class QuantizedEmbedding(Linear):
    """``nn.Embedding(num_embeddings, embedding_dim)`` stored by ``linear_method`` (which must have ``embedding``)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, linear_method: LinearMethod) -> None:
        if not hasattr(linear_method, "embedding"):
            raise ValueError(f"{type(linear_method).__name__} cannot store a token embedding")
        super().__init__(embedding_dim, num_embeddings, bias=False, linear_method=linear_method)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        method: EmbeddingMethod = self.linear_method  # type: ignore[assignment]
        return method.embedding(self, ids)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden @ table.T``: logits of a model whose LM head is tied to this embedding."""
        return self.linear_method.apply(self, hidden)
