"""The native CPU kernel for decode rows and few-row runs (pagoda/attention/cpu_decode_attention.c), through the torch
backend: values against a float64 dense causal softmax (decode rows, speculative verifies, a short chunk and a long
prefill chunk in one step; windows; bf16 and float32), each row independent of the rest of the step (bitwise), and
the cases it leaves to SDPA (a soft-cap, an FP8 cache)."""

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
