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


def step_table_and_meta(query_lens: list[int], seq_lens: list[int], blocks: list[list[int]], slots: list[int],
                        split_kv_len: int | None = None):
    """(block table as numpy int32, eager AttentionMetadata) of a step whose request i has ``blocks[i]``."""
    import numpy as np

    from pagoda.attention.metadata import AttentionMetadata

    table = np.zeros((len(blocks), max(len(b) for b in blocks)), dtype=np.int32)
    for i, b in enumerate(blocks):
        table[i, : len(b)] = b
    qsl = np.concatenate([[0], np.cumsum(query_lens)]).tolist()
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32), seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=torch.from_numpy(table), slot_mapping=torch.tensor(slots), max_query_len=max(query_lens),
        max_seq_len=max(seq_lens), query_lens_cpu=query_lens, seq_lens_cpu=seq_lens, is_decode_only=False,
        split_kv_len=split_kv_len)
    return table, meta


def assert_same_kv_writes(caches, eager_caches, slots: list[int]) -> None:
    """The graph path wrote K/V exactly where the eager forward did and nowhere else (padding rows write nothing):
    every slot the step did not write is bitwise unchanged; the written slots hold the eager values up to the
    rounding of a GEMM over a padded row count (a CPU BLAS may block M=11 and M=16 differently: 1 ulp seen on AMD
    EPYC). Caches NHD-shaped, as the Triton backend's: [blocks, block_size, kv_heads, head_dim]."""
    written = torch.zeros(caches[0][0].shape[0] * caches[0][0].shape[1], dtype=torch.bool)
    written[torch.tensor([s for s in slots if s >= 0], dtype=torch.long)] = True
    for (k, v), (ek, ev) in zip(caches, eager_caches, strict=True):
        for got, want in ((k, ek), (v, ev)):
            got, want = got.flatten(0, 1), want.flatten(0, 1)
            assert torch.equal(got[~written], want[~written])
            torch.testing.assert_close(got[written], want[written], rtol=1e-5, atol=1e-5)
