"""The native CPU kernel for decode rows and few-row runs (pagoda/attention/cpu_decode_attention.c), through the torch
backend: values against a float64 dense causal softmax (decode rows, speculative verifies, a short chunk and a long
prefill chunk in one step; windows; bf16 and float32), each row independent of the rest of the step (bitwise), the
same with position chunks of 256 (``set_pos_chunk``, off by default), whose merges must keep it (and verify rows
there equal decode rows), and the cases it leaves to SDPA (a soft-cap, an FP8 cache)."""

import pytest
import torch
from test_attention_verify_rows import _meta

from pagoda.attention import cpu_decode_native
from pagoda.attention.kv_quant import quantize
from pagoda.attention.torch_ref import TorchAttentionBackend

NB, HKV, BS, D, H = 48, 3, 16, 64, 9

pytestmark = pytest.mark.skipif(
    not cpu_decode_native.eligible(torch.zeros(1, H, D), torch.zeros(1, HKV, BS, D), None),
    reason="the native decode attention kernel is not available here (no C compiler)")


def _reference(query, k_cache, v_cache, meta, scale, window):
    out, start = [], 0
    for q_len, s_len, table in zip(meta.query_lens_cpu, meta.seq_lens_cpu, meta.block_tables.tolist(), strict=True):
        blocks = table[: -(-s_len // BS)]
        k = torch.cat([k_cache[b] for b in blocks], dim=1)[:, :s_len].double().repeat_interleave(H // HKV, 0)
        v = torch.cat([v_cache[b] for b in blocks], dim=1)[:, :s_len].double().repeat_interleave(H // HKV, 0)
        s = torch.einsum("qhd,hkd->hqk", query[start:start + q_len].double(), k) * scale
        qpos = torch.arange(s_len - q_len, s_len)[:, None]
        vis = torch.arange(s_len)[None, :] <= qpos
        if window is not None:
            vis &= torch.arange(s_len)[None, :] > qpos - window
        out.append(torch.einsum("hqk,hkd->qhd", torch.softmax(s.masked_fill(~vis, float("-inf")), -1), v))
        start += q_len
    return torch.cat(out)


def _step(gen, dtype):
    k_cache = torch.randn(NB, HKV, BS, D, generator=gen).to(dtype)
    v_cache = torch.randn(NB, HKV, BS, D, generator=gen).to(dtype)
    # decode rows, a 5-row verify, a 16-row chunk, a 40-row prefill chunk (SDPA), one more decode row
    meta = _meta([1, 5, 16, 40, 1], [30, 200, 120, 150, 1],
                 [[40, 41], list(range(1, 14)), list(range(14, 22)), list(range(22, 32)), [47]])
    query = torch.randn(63, H, D, generator=gen).to(dtype)
    return query, k_cache, v_cache, meta


@pytest.mark.parametrize("window", [None, 37])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_values_against_a_float64_softmax(window, dtype):
    gen = torch.Generator().manual_seed(0)
    query, k_cache, v_cache, meta = _step(gen, dtype)
    backend = TorchAttentionBackend()
    backend.step_memo = True
    out = backend.forward(query, k_cache, v_cache, meta, 0.125, sliding_window=window)
    ref = _reference(query, k_cache, v_cache, meta, 0.125, window)
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out.double(), ref, **tol)
    # a second layer of the step (memoized rows) gives the same bits
    assert torch.equal(out, backend.forward(query, k_cache, v_cache, meta, 0.125, sliding_window=window))


def test_a_row_does_not_depend_on_the_rest_of_the_step():
    """Each decode row alone, and the verify run alone, give bitwise what the whole step gives them."""
    gen = torch.Generator().manual_seed(1)
    query, k_cache, v_cache, meta = _step(gen, torch.bfloat16)
    backend = TorchAttentionBackend()
    out = backend.forward(query, k_cache, v_cache, meta, 0.125)
    tables = meta.block_tables.tolist()
    for first, (q_len, s_len, req) in ((0, (1, 30, 0)), (1, (5, 200, 1)), (62, (1, 1, 4))):
        alone = _meta([q_len], [s_len], [tables[req][: -(-s_len // BS)]])
        got = backend.forward(query[first:first + q_len], k_cache, v_cache, alone, 0.125)
        assert torch.equal(got, out[first:first + q_len])


def test_soft_cap_and_fp8_caches_keep_the_sdpa_path():
    q = torch.zeros(2, H, D, dtype=torch.bfloat16)
    cache = torch.zeros(4, HKV, BS, D, dtype=torch.bfloat16)
    assert cpu_decode_native.eligible(q, cache, None)
    assert not cpu_decode_native.eligible(q, cache, 30.0)
    assert not cpu_decode_native.eligible(q, quantize(cache, 1.0, torch.float8_e4m3fn), None)
    assert not cpu_decode_native.eligible(q.half(), cache.half(), None)


@pytest.fixture
def chunks256():
    cpu_decode_native.set_pos_chunk(256)
    yield
    cpu_decode_native.set_pos_chunk(0)


def _long_step(gen, dtype):
    """Rows past 256 positions: a decode row at 700 (three chunks), a 5-row verify at 510..514 (across
    the boundary at 512), a short decode row (one chunk: written directly), a 16-row chunk at 250..265."""
    nb = 110
    k_cache = torch.randn(nb, HKV, BS, D, generator=gen).to(dtype)
    v_cache = torch.randn(nb, HKV, BS, D, generator=gen).to(dtype)
    order = torch.randperm(nb, generator=gen).tolist()
    sizes = [44, 33, 2, 17]
    tables, at = [], 0
    for n in sizes:
        tables.append(order[at:at + n])
        at += n
    meta = _meta([1, 5, 1, 16], [701, 515, 30, 266], tables)
    query = torch.randn(23, H, D, generator=gen).to(dtype)
    return query, k_cache, v_cache, meta


@pytest.mark.parametrize("window", [None, 300])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_position_chunks_against_a_float64_softmax(chunks256, window, dtype):
    gen = torch.Generator().manual_seed(2)
    query, k_cache, v_cache, meta = _long_step(gen, dtype)
    out = TorchAttentionBackend().forward(query, k_cache, v_cache, meta, 0.125, sliding_window=window)
    ref = _reference(query, k_cache, v_cache, meta, 0.125, window)
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(out.double(), ref, **tol)


def test_position_chunks_keep_rows_independent_and_verify_rows_equal_decode_rows(chunks256):
    """Past 256 positions a row's output is its position chunks merged (chunks on); it still depends on its own
    query, K/V and position only: alone or in the step, as a verify row or as a decode row at that position; and a
    short row in a step of several chunks gets the bits of a step of one chunk."""
    gen = torch.Generator().manual_seed(3)
    query, k_cache, v_cache, meta = _long_step(gen, torch.bfloat16)
    backend = TorchAttentionBackend()
    out = backend.forward(query, k_cache, v_cache, meta, 0.125)
    tables = meta.block_tables.tolist()
    for first, (q_len, s_len, req) in ((0, (1, 701, 0)), (1, (5, 515, 1)), (6, (1, 30, 2)), (7, (16, 266, 3))):
        alone = _meta([q_len], [s_len], [tables[req][: -(-s_len // BS)]])
        assert torch.equal(backend.forward(query[first:first + q_len], k_cache, v_cache, alone, 0.125),
                           out[first:first + q_len])
    for i in range(5):  # the verify's rows at positions 510..514, each as a decode row
        s_len = 511 + i
        row = _meta([1], [s_len], [tables[1][: -(-s_len // BS)]])
        assert torch.equal(backend.forward(query[1 + i:2 + i], k_cache, v_cache, row, 0.125), out[1 + i:2 + i])


@pytest.mark.parametrize("window", [None, 37, 300])
def test_verify_rows_equal_decode_rows_whatever_the_score_blocks(window):
    """The bf16 scores go 16 positions at a time from the item's first position (the rest one at a time), so a
    verify row's positions fall into other blocks than the same row's as a decode row wherever the run's rows
    start at different positions (a window): the bits must not depend on it."""
    gen = torch.Generator().manual_seed(4)
    query, k_cache, v_cache, meta = _long_step(gen, torch.bfloat16)
    backend = TorchAttentionBackend()
    out = backend.forward(query, k_cache, v_cache, meta, 0.125, sliding_window=window)
    tables = meta.block_tables.tolist()
    for i in range(5):  # the verify's rows at positions 510..514, each as a decode row
        s_len = 511 + i
        row = _meta([1], [s_len], [tables[1][: -(-s_len // BS)]])
        assert torch.equal(backend.forward(query[1 + i:2 + i], k_cache, v_cache, row, 0.125, sliding_window=window),
                           out[1 + i:2 + i])


@pytest.mark.parametrize("chunk", [0, 256])
def test_a_nan_in_the_cache_reaches_the_output_with_or_without_chunks(chunk):
    """A NaN key in the first chunk makes the row's output NaN whether or not the kernel merges position chunks (the
    merge once skipped a chunk whose sum was NaN and returned a finite, wrong value)."""
    gen = torch.Generator().manual_seed(4)
    query, k_cache, v_cache, meta = _long_step(gen, torch.float32)
    table = meta.block_tables.tolist()[0]
    k_cache[table[0], 0, 5] = float("nan")  # position 5 of the first request, KV head 0
    cpu_decode_native.set_pos_chunk(chunk)
    try:
        out = TorchAttentionBackend().forward(query, k_cache, v_cache, meta, 0.125)
    finally:
        cpu_decode_native.set_pos_chunk(0)
    assert bool(out[0, : H // HKV].isnan().all())  # the heads of KV head 0
    assert not bool(out[0, H // HKV:].isnan().any())  # the other KV heads' heads
