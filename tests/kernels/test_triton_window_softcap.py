"""Sliding-window masking and logit soft-capping in the Triton attention kernels and the torch backend,
against the PyTorch oracle (``ref_paged_attention`` with the same window and cap).

Tiny sizes under ``TRITON_INTERPRET=1`` (set by test_triton_attention, imported first); tiles of 16
so windows of 5..40 keys cut KV ranges at, inside and across tile edges.
"""

import pytest
import torch
from test_triton_attention import DEVICE, TOL, make_batch, run_split, run_unified, tk  # sets TRITON_INTERPRET

from pagoda.attention.reference import ref_paged_attention
from pagoda.attention.torch_ref import TorchAttentionBackend

# Fresh prefills longer than the window, chunks over cached prefixes, decodes before and past it.
REQS = [(40, 40), (11, 50), (1, 33), (1, 7), (16, 48), (1, 1)]


def _ref(query, k_cache, v_cache, meta, scale, window, cap):
    return ref_paged_attention(query, k_cache, v_cache, meta, scale, sliding_window=window, logits_soft_cap=cap)


@pytest.mark.parametrize("window", [1, 8, 17, None])
@pytest.mark.parametrize("cap", [None, 2.0])
def test_unified_window_and_softcap(window, cap):
    query, k_cache, v_cache, meta = make_batch(REQS, 8, 2, 32, 2, torch.float32, seed=7, pad_tokens=2)
    query = query * 3  # large scores, so the soft-cap bends them
    out = run_unified(query, k_cache, v_cache, meta, 0.3, block_m=16, block_n=16, sliding_window=window,
                      logits_soft_cap=cap)
    torch.testing.assert_close(out, _ref(query, k_cache, v_cache, meta, 0.3, window, cap), **TOL[torch.float32])


@pytest.mark.parametrize("num_splits", [5])  # uneven splits; two splits are covered by test_triton_attention.py
def test_unified_window_with_kv_splits(num_splits):
    query, k_cache, v_cache, meta = make_batch(REQS, 8, 2, 32, 3, torch.float32, seed=8)
    out = run_unified(query, k_cache, v_cache, meta, 0.2, block_m=16, block_n=16, num_splits=num_splits,
                      sliding_window=13, logits_soft_cap=5.0)
    torch.testing.assert_close(out, _ref(query, k_cache, v_cache, meta, 0.2, 13, 5.0), **TOL[torch.float32])


@pytest.mark.parametrize("window,cap,num_splits", [(9, None, 3), (33, 4.0, 2), (64, 4.0, 4), (3, None, 1)])
def test_split_decode_window_and_softcap(window, cap, num_splits):
    reqs = [(1, 100), (1, 64), (1, 5), (1, 1), (1, 47)]
    query, k_cache, v_cache, meta = make_batch(reqs, 8, 2, 32, 2, torch.float32, seed=9)
    query = query * 3
    out = run_split(query, k_cache, v_cache, meta, 0.25, num_splits, block_n=16, sliding_window=window,
                    logits_soft_cap=cap)
    torch.testing.assert_close(out, _ref(query, k_cache, v_cache, meta, 0.25, window, cap), **TOL[torch.float32])


def test_bf16_window_softcap():
    query, k_cache, v_cache, meta = make_batch(REQS, 16, 1, 64, 4, torch.bfloat16, seed=10)
    out = run_unified(query, k_cache, v_cache, meta, 0.125, block_m=16, block_n=16, sliding_window=10,
                      logits_soft_cap=3.0)
    ref = _ref(query, k_cache, v_cache, meta, 0.125, 10, 3.0)
    torch.testing.assert_close(out.float(), ref.float(), **TOL[torch.bfloat16])


def test_bad_window_and_cap_refused():
    query, k_cache, v_cache, meta = make_batch([(2, 2)], 8, 1, 32, 1, torch.float32)
    with pytest.raises(ValueError, match="sliding_window"):
        run_unified(query, k_cache, v_cache, meta, 0.1, sliding_window=0)
    with pytest.raises(ValueError, match="logits_soft_cap"):
        run_unified(query, k_cache, v_cache, meta, 0.1, logits_soft_cap=-1.0)
    assert tk.NO_WINDOW > 1 << 20


@pytest.mark.parametrize("window,cap", [(6, None), (6, 3.0), (None, 3.0), (50, None)])
def test_torch_backend_window_and_softcap(window, cap):
    """The CPU backend (HND cache layout): decode rows batched, prefill chunks one by one."""
    query, k_cache, v_cache, meta = make_batch(REQS, 8, 2, 32, 2, torch.float32, seed=11)
    query = query * 3
    ref = _ref(query, k_cache, v_cache, meta, 0.3, window, cap)
    k_hnd, v_hnd = k_cache.transpose(1, 2).contiguous().cpu(), v_cache.transpose(1, 2).contiguous().cpu()
    for name in ("query_start_loc", "seq_lens", "block_tables", "slot_mapping"):
        setattr(meta, name, getattr(meta, name).cpu())
    out = TorchAttentionBackend().forward(query.cpu(), k_hnd, v_hnd, meta, 0.3, sliding_window=window,
                                          logits_soft_cap=cap)
    torch.testing.assert_close(out, ref.cpu(), rtol=1e-4, atol=1e-5)
    # The decode-only path too.
    dq, dk, dv, dmeta = make_batch([(1, 30), (1, 3), (1, 17)], 8, 2, 32, 2, torch.float32, seed=12)
    dref = _ref(dq, dk, dv, dmeta, 0.3, window, cap)
    for name in ("query_start_loc", "seq_lens", "block_tables", "slot_mapping"):
        setattr(dmeta, name, getattr(dmeta, name).cpu())
    dout = TorchAttentionBackend().forward(dq.cpu(), dk.transpose(1, 2).contiguous().cpu(),
                                           dv.transpose(1, 2).contiguous().cpu(), dmeta, 0.3,
                                           sliding_window=window, logits_soft_cap=cap)
    torch.testing.assert_close(dout, dref.cpu(), rtol=1e-4, atol=1e-5)
    assert DEVICE.type in ("cpu", "cuda")
