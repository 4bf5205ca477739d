"""Vocabulary-parallel token embedding and LM head (Megatron's split, vLLM's ``VocabParallelEmbedding``).

The vocabulary is padded to a multiple of the tensor-parallel size (:func:`padded_vocab_size`) and each
rank keeps one contiguous block of rows ``[rank * per_rank, (rank + 1) * per_rank)`` of the ``[vocab,
hidden]`` table; the padding rows (past the checkpoint's vocabulary, on the last ranks) are zeros.

- lookup: a rank embeds the ids in its block and gives zeros for the others; the all-reduce sums the
  one non-zero row per token (:meth:`VocabParallelEmbedding.forward`);
- LM head: each rank computes its block of logits, which are gathered along the vocabulary on rank 0
  (the rank that samples) and cut back to the checkpoint's vocabulary
  (:meth:`VocabParallelEmbedding.lm_head`). Every rank must call it on the same rows in the same order
  (a collective); on ranks other than 0 it returns the rank's own block (unused).

Tied embeddings stay tied: the untied head is a separate :class:`ParallelLMHead` with the same split, the
tied one is the embedding's own :meth:`~VocabParallelEmbedding.lm_head`. The table is the weight of a
:class:`~pagoda.layers.linear.Linear` (``in = hidden``, ``out = per_rank``), loaded through
:meth:`~pagoda.layers.linear.Linear.load_shard`, so this layer slices the checkpoint in :meth:`tp_slice`.
Only unquantized tables split (a quantized LM head stays replicated, see ``models/llama.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pagoda.distributed.parallel_state import TPGroup
from pagoda.layers.linear import Linear


def padded_vocab_size(vocab_size: int, world_size: int) -> int:
    """``vocab_size`` rounded up to a multiple of ``world_size`` (every rank keeps as many rows)."""
    return -(-vocab_size // world_size) * world_size


class VocabParallelEmbedding(Linear):
    """``nn.Embedding(vocab_size, hidden)`` whose rows are split over the ranks (module docstring)."""

    def __init__(self, vocab_size: int, hidden_size: int, tp: TPGroup) -> None:
        self.tp = tp
        self.vocab_size = vocab_size
        self.per_rank = padded_vocab_size(vocab_size, tp.world_size) // tp.world_size
        self.vocab_start = tp.rank * self.per_rank
        super().__init__(hidden_size, self.per_rank, bias=False)

    def tp_slice(self, name: str, param: torch.Tensor, tensor: torch.Tensor, shard_id: int | None) -> torch.Tensor:
        if tensor.shape[0] != self.vocab_size:
            raise ValueError(f"{name}: the checkpoint has {tensor.shape[0]} rows, the config's vocab_size is "
                             f"{self.vocab_size}")
        start = min(self.vocab_start, self.vocab_size)
        rows = tensor[start : min(self.vocab_start + self.per_rank, self.vocab_size)]
        if rows.shape[0] == self.per_rank:
            return rows
        pad = tensor.new_zeros((self.per_rank - rows.shape[0], *tensor.shape[1:]))
        return torch.cat([rows, pad])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.vocab_start
        outside = (local < 0) | (local >= self.per_rank)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0.0)
        return self.tp.all_reduce(out)

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits ``[R, vocab_size]`` on rank 0 (this rank's ``[R, per_rank]`` block elsewhere)."""
        block = self.linear_method.apply(self, hidden)
        full = self.tp.gather(block, dim=-1)
        return full[..., : self.vocab_size] if self.tp.rank == 0 else full


class ParallelLMHead(VocabParallelEmbedding):
    """An untied LM head split along the vocabulary: ``forward(hidden)`` is :meth:`lm_head`."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
