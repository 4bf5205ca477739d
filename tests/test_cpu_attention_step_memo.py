"""The CPU torch attention backend keeps a step's write rows, gather rows and decode mask for all layers, and writes
K/V with one row copy per token and head: bitwise the same cache contents and outputs as the direct computation
(``index_put`` at (block, :, offset); SDPA with the boolean length/window mask), across layers and steps."""

import pytest
import torch
import torch.nn.functional as F
from test_attention_verify_rows import _meta as _verify_rows_meta

from pagoda.attention.metadata import AttentionMetadata
from pagoda.attention.torch_ref import TorchAttentionBackend, gather_heads

NB, HKV, BS, D, H = 12, 2, 4, 16, 6


@pytest.fixture(autouse=True)
def _torch_path(monkeypatch):
    """These tests are about the SDPA path's memo; the native decode kernel (its own tests:
    tests/test_cpu_decode_native.py) would take the decode rows."""
    from pagoda.attention import cpu_decode_native

    monkeypatch.setattr(cpu_decode_native, "ENABLED", False)


def _meta(seq_lens: list[int], tables: list[list[int]], slots: list[int]) -> AttentionMetadata:
    width = max(len(t) for t in tables)
    return AttentionMetadata(
        query_start_loc=torch.arange(len(seq_lens) + 1, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        slot_mapping=torch.tensor(slots, dtype=torch.int64), max_query_len=1, max_seq_len=max(seq_lens),
        query_lens_cpu=[1] * len(seq_lens), seq_lens_cpu=seq_lens, is_decode_only=True)


def _direct(query, k_cache, v_cache, meta, scale, window):
    b, h, d = query.shape
    k = gather_heads(k_cache, meta.block_tables, query.dtype)
    v = gather_heads(v_cache, meta.block_tables, query.dtype)
    length = k.shape[2]
    kpos = torch.arange(length)[None, :]
    keep = kpos < meta.seq_lens[:, None]
    if window is not None:
        keep &= kpos > meta.seq_lens[:, None] - 1 - window
    q = query.view(b, HKV, h // HKV, d)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep.view(b, 1, 1, length), scale=scale).reshape(b, h, d)


def test_memoized_steps_equal_the_direct_computation():
    gen = torch.Generator().manual_seed(0)
    backend = TorchAttentionBackend()
    backend.step_memo = True  # as the CPU model runner sets it
    layers = 3
    caches = [(torch.randn(NB, HKV, BS, D, generator=gen).to(torch.bfloat16),
               torch.randn(NB, HKV, BS, D, generator=gen).to(torch.bfloat16)) for _ in range(layers)]
    refs = [(k.clone(), v.clone()) for k, v in caches]
    steps = [_meta([5, 9, 3], [[1, 2], [3, 4, 5], [6]], [13, 24, -1]),  # a padding row: slot -1
             _meta([6, 10, 4], [[1, 2], [3, 4, 5], [6]], [14, 25, 27]),
             _meta([7, 3], [[1, 2], [7]], [15, 30])]
    for meta in steps:
        b = len(meta.seq_lens_cpu)
        for i in range(layers):
            key = torch.randn(b, HKV, D, generator=gen).to(torch.bfloat16)
            val = torch.randn(b, HKV, D, generator=gen).to(torch.bfloat16)
            query = torch.randn(b, H, D, generator=gen).to(torch.bfloat16)
            backend.write_kv(key, val, *caches[i], meta.slot_mapping)
            keep = meta.slot_mapping >= 0
            blk, off = meta.slot_mapping[keep] // BS, meta.slot_mapping[keep] % BS
            refs[i][0][blk, :, off] = key[keep]
            refs[i][1][blk, :, off] = val[keep]
            assert torch.equal(caches[i][0], refs[i][0]) and torch.equal(caches[i][1], refs[i][1])
            window = 3 if i == 1 else None
            out = backend.forward(query, *caches[i], meta, 0.25, sliding_window=window)
            want = _direct(query, *refs[i], meta, 0.25, window)
            assert torch.equal(out.view(torch.int16), want.view(torch.int16)), (i, meta.seq_lens_cpu)


def test_verify_rows_memoized_equal_unmemoized():
    """A speculative verify's rows (each its own decode-like SDPA call): the step's gather rows and row masks kept
    for all layers give bitwise what computing them per layer gives, across layers, windows and steps."""
    gen = torch.Generator().manual_seed(1)
    memo, plain = TorchAttentionBackend(), TorchAttentionBackend()
    memo.step_memo = True
    caches = [(torch.randn(NB, HKV, BS, D, generator=gen).to(torch.bfloat16),
               torch.randn(NB, HKV, BS, D, generator=gen).to(torch.bfloat16)) for _ in range(3)]
    steps = [_verify_rows_meta([5, 1, 3], [9, 4, 7], [[1, 2, 3], [4], [5, 6]]),  # two verifies and a decode row
             _verify_rows_meta([4, 2], [11, 6], [[1, 2, 3], [5, 6]])]
    for meta in steps:
        for i, cache in enumerate(caches):
            query = torch.randn(sum(meta.query_lens_cpu), H, D, generator=gen).to(torch.bfloat16)
            window = 3 if i == 1 else None
            got = memo.forward(query, *cache, meta, 0.25, sliding_window=window)
            want = plain.forward(query, *cache, meta, 0.25, sliding_window=window)
            assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (i, meta.query_lens_cpu)
    assert memo._memos["verify"][1]  # the memo was used (its entries: one per verify request and window)
