"""Inputs for the CPU tests of the step graphs (tests/test_verify_graphs.py, tests/test_mixed_graphs.py): KV caches
holding an arbitrary earlier context, and a step's flattened rows for given query lengths, contexts and blocks."""

from __future__ import annotations

import torch

from pagoda.worker.kv_cache import allocate_kv_caches


def random_kv_caches(model, num_blocks: int, block_size: int, backend, g: torch.Generator):
    caches = allocate_kv_caches(model.num_layers, num_blocks, block_size, model.num_kv_heads, model.head_dim,
                                torch.float32, torch.device("cpu"), getattr(backend, "kv_layout", "NHD"))
    for k, v in caches:
        k.copy_(torch.randn(k.shape, generator=g))
        v.copy_(torch.randn(v.shape, generator=g))
    return caches


def step_rows(model, block_size: int, query_lens: list[int], ctx: list[int], blocks: list[list[int]],
              g: torch.Generator) -> tuple[list[int], list[int], list[int], list[int]]:
    """(ids, positions, slots, seq_lens) of a step: request i has ``query_lens[i]`` new tokens after ``ctx[i]``."""
    rows = sum(query_lens)
    ids = torch.randint(0, model.shape.vocab_size, (rows,), generator=g).tolist()
    pairs = list(zip(ctx, query_lens, strict=True))
    pos = [p for c, n in pairs for p in range(c, c + n)]
    slots = [blocks[i][p // block_size] * block_size + p % block_size for i, (c, n) in enumerate(pairs)
             for p in range(c, c + n)]
    return ids, pos, slots, [c + n for c, n in pairs]
