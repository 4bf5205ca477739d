"""CPU attention: a request's few query rows in one step (a speculative verify) give, row by row, bitwise what
a decode step gives that position alone (the same cache), with and without a sliding window, next to a decode
request and a long prefill chunk in the same step, and with the step memo on (several layers). This is what keeps
greedy outputs identical with speculation on and off."""

import pytest
import torch

from pagoda.attention.metadata import AttentionMetadata
from pagoda.attention.torch_ref import TorchAttentionBackend

NB, HKV, BS, D, H = 40, 3, 16, 64, 9


def _meta(q_lens: list[int], seq_lens: list[int], tables: list[list[int]]) -> AttentionMetadata:
    width = max(len(t) for t in tables)
    starts = [0]
    for q in q_lens:
        starts.append(starts[-1] + q)
    return AttentionMetadata(
        query_start_loc=torch.tensor(starts, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32),
        block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32),
        slot_mapping=torch.zeros(starts[-1], dtype=torch.int64), max_query_len=max(q_lens),
        max_seq_len=max(seq_lens), query_lens_cpu=q_lens, seq_lens_cpu=seq_lens,
        is_decode_only=all(q == 1 for q in q_lens))


@pytest.mark.parametrize("native", [True, False], ids=["native-kernel", "torch-sdpa"])
@pytest.mark.parametrize("window", [None, 37])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_verify_rows_equal_decode_rows(window, dtype, native, monkeypatch):
    """Both CPU paths: the native decode kernel (where it builds) and SDPA."""
    from pagoda.attention import cpu_decode_native

    if native and not cpu_decode_native.eligible(torch.zeros(1, H, D, dtype=dtype),
                                                 torch.zeros(1, HKV, BS, D, dtype=dtype), None):
        pytest.skip("the native decode attention kernel is not available here (no C compiler)")
    monkeypatch.setattr(cpu_decode_native, "ENABLED", native)
    gen = torch.Generator().manual_seed(0)
    k_cache = torch.randn(NB, HKV, BS, D, generator=gen).to(dtype)
    v_cache = torch.randn(NB, HKV, BS, D, generator=gen).to(dtype)
    verify_table, other_table, long_table = list(range(1, 14)), [20, 21], list(range(25, 35))
    backend = TorchAttentionBackend()
    backend.step_memo = True
    # the default limit, then an engine speculating 24 tokens (the model runner raises the limit to k + 1)
    for limit, s_len, q_len in ((16, 200, 4), (16, 193, 4), (16, 17, 2), (16, 208, 6), (16, 130, 16), (25, 190, 25)):
        backend.decode_like_rows = limit
        # one step: a decode request, the verify request (q_len rows ending at s_len), a long prefill chunk
        meta = _meta([1, q_len, 40], [30, s_len, 150], [other_table, verify_table[: -(-s_len // BS)], long_table])
        query = torch.randn(1 + q_len + 40, H, D, generator=gen).to(dtype)
        outs = [backend.forward(query, k_cache, v_cache, meta, 0.125, sliding_window=window) for _ in range(2)]
        assert torch.equal(outs[0], outs[1])  # a second layer of the step (memoized rows and mask)
        for t in range(q_len):  # each verify row alone, as a decode step at its position
            pos_len = s_len - q_len + 1 + t
            dec = _meta([1], [pos_len], [verify_table[: -(-pos_len // BS)]])
            ref = backend.forward(query[1 + t : 2 + t], k_cache, v_cache, dec, 0.125, sliding_window=window)
            assert torch.equal(outs[0][1 + t], ref[0]), (s_len, q_len, t)
        dec = _meta([1], [30], [other_table])
        assert torch.equal(outs[0][0], backend.forward(query[:1], k_cache, v_cache, dec, 0.125,
                                                       sliding_window=window)[0])
