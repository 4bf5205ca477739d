"""Per-step attention metadata, built once per step by the model runner.

Layout (shared by every backend):

* Tokens of all scheduled requests are flattened into one batch of ``T`` tokens,
  request after request. Request ``i`` owns query rows
  ``query_start_loc[i] : query_start_loc[i+1]``.
* ``seq_lens[i]`` is the request's context length *after* this step (cached tokens
  plus the new ones). Its new tokens sit at positions
  ``seq_lens[i] - q_len_i … seq_lens[i] - 1``; each attends causally to every key
  at a position ``<=`` its own.
* ``block_tables[i, j]`` is the physical block holding positions
  ``j*block_size … (j+1)*block_size - 1`` of request ``i`` (rows padded with 0).
* ``slot_mapping[t]`` is the flat slot (``block * block_size + offset``) where token
  ``t``'s K/V is written; a negative slot means "do not write" (padding rows).
* KV cache per layer: ``k_cache`` and ``v_cache`` each of shape
  ``[num_blocks, block_size, num_kv_heads, head_dim]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    query_start_loc: torch.Tensor  # int32 [B+1] (device)
    seq_lens: torch.Tensor  # int32 [B] (device)
    block_tables: torch.Tensor  # int32 [B, max_blocks] (device)
    slot_mapping: torch.Tensor  # int64 [T] (device)
    max_query_len: int
    max_seq_len: int
    # Host copies, for backends that loop or split on the CPU.
    query_lens_cpu: list[int]
    seq_lens_cpu: list[int]
    # True when every request has exactly one query token (pure decode step).
    is_decode_only: bool = False
    # Context bound a backend uses to choose how to split the KV range (when set, the
    # runner passes max_model_len, so eager and CUDA-graph steps split, and round, alike).
    split_kv_len: int | None = None
    # The step is recorded in a CUDA graph (the verify graphs): a kernel's second launch costs no host time when
    # it replays, so a backend may split work for the device alone.
    in_cuda_graph: bool = False

    @property
    def num_seqs(self) -> int:
        return len(self.seq_lens_cpu)
