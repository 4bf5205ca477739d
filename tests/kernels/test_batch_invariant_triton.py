"""Deterministic mode's Triton kernels (pagoda/layers/batch_invariant_matmul.py, the unified attention kernel
with ``batch_invariant_tiles``): values against torch, and each row's result bitwise the same whatever the
other rows of the launch. Interpreter (``TRITON_INTERPRET=1``) at tiny sizes without a GPU; compiled on one.
"""

import os

import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first triton import

import pytest  # noqa: E402

pytest.importorskip("triton")
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

from pagoda.attention import triton_kernels as tk  # noqa: E402
from pagoda.layers.batch_invariant_matmul import config_for, matmul  # noqa: E402


def interpreter_dot_is_row_invariant(bm: int, bk: int, bn: int) -> bool:
    """Without a GPU, ``tl.dot`` is numpy's ``matmul`` of the two tiles (Triton's interpreter). Whether each row of a
    ``[bm, bk] @ [bk, bn]`` float32 product comes out the same at every position in the tile depends on this
    CPU's BLAS kernels: true with the AVX-512 ones seen so far, false with the AVX2-only EPYC's (rows at some
    positions take another summation order). Where false, the interpreter cannot show the kernels' row
    invariance (the GPU test, tests/gpu/test_gpu_deterministic.py, does)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((bm, bk)).astype(np.float32)
    b = rng.standard_normal((bk, bn)).astype(np.float32)
    full = np.matmul(a, b)
    for i in range(bm):
        alone = np.zeros_like(a)
        alone[0] = a[i]
        if not np.array_equal(np.matmul(alone, b)[0], full[i]):
            return False
    return True


NOT_ROW_INVARIANT = "this CPU's BLAS (the interpreter's tl.dot) sums a tile's rows in position-dependent order"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matmul_values_and_row_invariance(dtype):
    g = torch.Generator().manual_seed(0)
    n, k = 96, 80  # K not a multiple of BLOCK_K: the masked tail
    w = (torch.randn(n, k, generator=g) * 0.1).to(dtype).to(DEVICE)
    b = torch.randn(n, generator=g).to(dtype).to(DEVICE)
    x = torch.randn(70, k, generator=g).to(dtype).to(DEVICE)
    y = matmul(x, w, b)
    ref = x.double() @ w.double().t() + b.double()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert (y.double() - ref).abs().max() < tol * max(1.0, float(ref.abs().max()))
    assert config_for(n, k, dtype) == config_for(n, k, dtype)  # no M in the key
    bm, bn, bk, _ = config_for(n, k, dtype)
    if not ON_GPU and not interpreter_dot_is_row_invariant(bm, bk, bn):
        pytest.skip(NOT_ROW_INVARIANT)
    alone = torch.cat([matmul(x[i : i + 1], w, b) for i in range(x.shape[0])])
    for m, start in ((1, 5), (3, 0), (17, 40), (65, 2), (70, 0)):
        assert torch.equal(matmul(x[start : start + m], w, b), alone[start : start + m])


def _cache(g, blocks, bs, hkv, d, dtype):
    k = torch.randn(blocks, bs, hkv, d, generator=g).to(dtype).to(DEVICE)
    v = torch.randn(blocks, bs, hkv, d, generator=g).to(dtype).to(DEVICE)
    return k, v


def _attend(q, k_cache, v_cache, reqs, tables, scale, window=None):
    """reqs: [(q_len, seq_len)]; tables: block ids per request."""
    qsl = [0]
    for ql, _ in reqs:
        qsl.append(qsl[-1] + ql)
    width = max(len(t) for t in tables)
    bt = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device=DEVICE)
    i32 = dict(dtype=torch.int32, device=DEVICE)
    return tk.unified_attention(
        q, k_cache, v_cache, torch.tensor(qsl, **i32), torch.tensor([s for _, s in reqs], **i32), bt,
        max(ql for ql, _ in reqs), scale, num_real_tokens=qsl[-1], sliding_window=window,
        **tk.batch_invariant_tiles(q, k_cache),
    )


@pytest.mark.parametrize("window", [None, 37])
def test_attention_rows_invariant_to_chunking_and_batch(window):
    dtype, bs, hkv, group, d = torch.bfloat16, 8, 2, 2, 16
    g = torch.Generator().manual_seed(1)
    k_cache, v_cache = _cache(g, 24, bs, hkv, d, dtype)
    table, s_len = [5, 3, 17, 9, 0, 21, 11, 14, 2, 7, 19, 4, 22, 1, 13, 8, 16, 6, 10], 150
    q_all = torch.randn(s_len, hkv * group, d, generator=g).to(dtype).to(DEVICE)
    whole = _attend(q_all, k_cache, v_cache, [(s_len, s_len)], [table], 0.3, window)
    for a, b in ((0, 7), (7, 70), (70, 149), (149, 150)):  # chunked prefill, then a decode step
        out = _attend(q_all[a:b], k_cache, v_cache, [(b - a, b)], [table], 0.3, window)
        assert torch.equal(out, whole[a:b])
    other = torch.randn(5, hkv * group, d, generator=g).to(dtype).to(DEVICE)
    for p in (3, 64, 149):  # one row beside a prefill chunk and a decode of other requests
        q = torch.cat([other[:4], q_all[p : p + 1], other[4:]])
        out = _attend(q, k_cache, v_cache, [(4, 60), (1, p + 1), (1, 90)], [table[:8], table, table[:12]], 0.3,
                      window)
        assert torch.equal(out[4], whole[p])


@pytest.mark.skipif(ON_GPU, reason="the GPU runs tests/gpu/test_gpu_deterministic.py")
def test_engine_with_triton_attention_is_batch_invariant(tiny):
    """The whole engine on the Triton attention backend (interpreter, fp32, tiny Llama) in deterministic
    mode: a request's tokens and logprobs are the same in a batch, alone, and with prefill chunks of 7."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from engine_checks import PROMPTS, greedy

    from pagoda import LLM

    if not all(interpreter_dot_is_row_invariant(*t) for t in ((16, 16, 16), (64, 32, 64))):
        pytest.skip(NOT_ROW_INVARIANT)

    def key(outs):
        return [(list(o.outputs[0].token_ids), [sorted((t, lp.logprob) for t, lp in d.items())
                                                for d in o.outputs[0].logprobs]) for o in outs]

    prompts, sp = PROMPTS[5:8], greedy(max_tokens=5, logprobs=2)
    kw = dict(dtype="float32", device="cpu", attention_backend="triton", deterministic=True, max_num_seqs=8)
    llm = LLM(str(tiny.path("llama")), **kw)
    assert llm.llm_engine.core.runner.backend.batch_invariant
    base = key(llm.generate(prompts, sp, use_tqdm=False))
    assert [key(llm.generate([p], sp, use_tqdm=False))[0] for p in prompts] == base
    chunked = LLM(str(tiny.path("llama")), max_num_batched_tokens=7, **kw)
    got = key(chunked.generate(prompts, sp, use_tqdm=False))
    if got != base:  # seen once in CI (session 4), not reproduced since: say which engine instance was off
        third = key(LLM(str(tiny.path("llama")), **kw).generate(prompts, sp, use_tqdm=False))
        print(f"a third engine (unchunked) matches the first: {third == base}; the chunked one: {third == got}")
    assert got == base
