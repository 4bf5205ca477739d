"""KV cache memory layouts (``pagoda.worker.kv_cache.KV_LAYOUTS``): the same logical cache, other byte orders.

Every writer and reader of the Triton backend must give the same values whatever the layout: the attention kernels
(unified, split-KV decode; fp32, and a bf16 query over an FP8 cache), ``write_kv``, the fused rotary + KV write,
and the block transfers of the host tier and copy-on-write.
Triton kernels run in the interpreter on the CPU (tiny sizes), compiled on a GPU.
"""

import os

import torch

ON_GPU = torch.cuda.is_available()
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first triton import

import pytest  # noqa: E402

pytest.importorskip("triton")
DEVICE = torch.device("cuda" if ON_GPU else "cpu")

from test_triton_attention import MIXED, make_batch, run_split, run_unified  # noqa: E402

from pagoda.attention import kv_quant  # noqa: E402
from pagoda.attention import triton_kernels as tk  # noqa: E402
from pagoda.attention.reference import ref_paged_attention, ref_write_kv  # noqa: E402
from pagoda.layers import fused_kernels as fk  # noqa: E402
from pagoda.layers.rotary import RotaryEmbedding  # noqa: E402
from pagoda.worker import kv_cache  # noqa: E402

LAYOUTS = ["NHD_BY_HEAD"]


def laid_out(x: torch.Tensor, layout: str) -> torch.Tensor:
    """``x`` (an NHD cache) copied into a fresh cache of ``layout``."""
    nb, bs, h, d = x.shape
    y = kv_cache._zeros(nb, bs, h, d, x.dtype, x.device, layout)
    kv_quant.raw(y).copy_(kv_quant.raw(x))
    return y


def test_layouts_are_views_of_their_memory_order():
    for layout in ("NHD", "NHD_BY_HEAD"):
        k, v = kv_cache.allocate_kv_caches(1, 5, 4, 3, 8, torch.float32, torch.device("cpu"), layout)[0]
        assert k.shape == v.shape == (5, 4, 3, 8)
        if layout != "NHD":
            assert k.stride() == v.stride() == (96, 8, 32, 1)  # one head's keys of a block: 4 x 8 contiguous
    hnd = kv_cache.allocate_kv_caches(1, 5, 4, 3, 8, torch.float32, torch.device("cpu"), "HND")[0][0]
    assert hnd.shape == (5, 3, 4, 8) and hnd.is_contiguous()
    assert kv_cache.allocate_kv_caches(1, 5, 4, 3, 8, torch.float32, torch.device("cpu"), "NHD")[0][0].is_contiguous()
    with pytest.raises(ValueError, match="unknown KV cache layout"):
        kv_cache.allocate_kv_caches(1, 5, 4, 3, 8, torch.float32, torch.device("cpu"), "NDH")


@pytest.mark.parametrize("layout", LAYOUTS)
def test_attention_fp32_same_in_every_layout(layout):
    query, k_cache, v_cache, meta = make_batch(MIXED, 8, 2, 32, 2, torch.float32, seed=11)
    kl, vl = laid_out(k_cache, layout), laid_out(v_cache, layout)
    ref = ref_paged_attention(query, k_cache, v_cache, meta, 0.25)
    for kw in ({"block_m": 16, "block_n": 16}, {"num_splits": 3}, {}):
        out = run_unified(query, kl, vl, meta, 0.25, **kw)
        assert torch.equal(out, run_unified(query, k_cache, v_cache, meta, 0.25, **kw))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    decodes = [(1, 33), (1, 17), (1, 1), (1, 48)]
    query, k_cache, v_cache, meta = make_batch(decodes, 8, 2, 32, 2, torch.float32, seed=12)
    kl, vl = laid_out(k_cache, layout), laid_out(v_cache, layout)
    ref = ref_paged_attention(query, k_cache, v_cache, meta, 0.25)
    for splits, block_n in ((3, 16), (2, 32)):
        out = run_split(query, kl, vl, meta, 0.25, splits, block_n=block_n)
        assert torch.equal(out, run_split(query, k_cache, v_cache, meta, 0.25, splits, block_n=block_n))
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_bf16_query_over_fp8_same_in_every_layout(layout, fp8):
    """The served FP8 case (fp16 dots on the scaled bf16 query): the same outputs in every layout, and the fp32
    oracle's."""
    ks, vs = 0.05, 0.2
    for reqs, run in ((MIXED, lambda *a: run_unified(*a, k_scale=ks, v_scale=vs, block_m=16, block_n=16)),
                      ([(1, 33), (1, 17), (1, 1)], lambda *a: run_split(*a, 2, k_scale=ks, v_scale=vs, block_n=16))):
        query, k_hi, v_hi, meta = make_batch(reqs, 8, 2, 32, 2, torch.bfloat16, seed=13)
        k_cache, v_cache = kv_quant.quantize(k_hi, ks, fp8), kv_quant.quantize(v_hi, vs, fp8)
        kl, vl = laid_out(k_cache, layout), laid_out(v_cache, layout)
        out = run(query, kl, vl, meta, 32**-0.5)
        n = sum(meta.query_lens_cpu)
        assert torch.equal(out[:n], run(query, k_cache, v_cache, meta, 32**-0.5)[:n])
        ref = ref_paged_attention(query.float(), k_cache, v_cache, meta, 32**-0.5, k_scale=ks, v_scale=vs)
        torch.testing.assert_close(out[:n].float(), ref[:n], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float8_e4m3fn])
def test_writers_same_in_every_layout(layout, dtype):
    """write_kv and the fused rotary + KV write put the same values in every layout (FP8: the same bytes)."""
    torch.manual_seed(5)
    T, hq, hk, d, bs, nb = 9, 4, 2, 16, 4, 6
    k = torch.randn(T, hk, d, device=DEVICE) * 4
    v = torch.randn(T, hk, d, device=DEVICE) * 4
    slots = torch.randperm(nb * bs, device=DEVICE)[:T].to(torch.int64)
    slots[4] = -1
    k_ref = torch.zeros(nb, bs, hk, d, dtype=dtype)
    v_ref = torch.zeros_like(k_ref)
    ref_write_kv(k.cpu(), v.cpu(), k_ref, v_ref, slots.cpu(), 2.0, 0.25)
    kc = kv_cache._zeros(nb, bs, hk, d, dtype, DEVICE, layout)
    vc = kv_cache._zeros(nb, bs, hk, d, dtype, DEVICE, layout)
    tk.write_kv(k, v, kc, vc, slots, 2.0, 0.25)
    assert torch.equal(kv_quant.raw(kc).cpu(), kv_quant.raw(k_ref)) and torch.equal(kv_quant.raw(vc).cpu(),
                                                                                    kv_quant.raw(v_ref))
    rope = RotaryEmbedding(d, 64, {"rope_theta": 10000.0, "rope_type": "default"}, torch.float32).to(DEVICE)
    q = torch.randn(T, hq, d, device=DEVICE)
    pos = torch.randint(0, 64, (T,), device=DEVICE)
    kc = kv_cache._zeros(nb, bs, hk, d, dtype, DEVICE, layout)
    vc = kv_cache._zeros(nb, bs, hk, d, dtype, DEVICE, layout)
    fk.rotary_inplace(q, k, rope.cos, rope.sin, pos, v, kc, vc, slots, 2.0, 0.25)
    k_ref.zero_(), v_ref.zero_()
    ref_write_kv(k.cpu(), v.cpu(), k_ref, v_ref, slots.cpu(), 2.0, 0.25)  # k: rotated in place
    assert torch.equal(kv_quant.raw(kc).cpu(), kv_quant.raw(k_ref)) and torch.equal(kv_quant.raw(vc).cpu(),
                                                                                    kv_quant.raw(v_ref))


@pytest.mark.parametrize("layout", ["NHD", "HND", *LAYOUTS])
def test_block_transfers_in_every_layout(layout):
    """Host-tier stores/loads and copy-on-write move whole blocks, the host copy in the device's memory order."""
    cpu = torch.device("cpu")
    caches = kv_cache.allocate_kv_caches(2, 6, 4, 2, 8, torch.float8_e4m3fn, cpu, layout)
    for k, v in caches:
        for c in (k, v):
            c.copy_((torch.randn(c.shape) * 10).to(c.dtype))
    orig = [(k.clone(), v.clone()) for k, v in caches]
    host = kv_cache.allocate_host_caches(caches, 3, pin=False)
    assert host[0][1].stride() == caches[0][1].stride() and host[0][1].shape[0] == 3
    kv_cache.swap_out(caches, host, [(1, 0), (4, 2)], cpu)
    kv_cache.copy_blocks(caches, [(4, 5)], cpu)
    kv_cache.swap_in(caches, host, [(2, 0), (0, 3)], cpu)
    for (k, v), (ok, ov) in zip(caches, orig, strict=True):
        for c, o in ((k, ok), (v, ov)):
            c, o = kv_quant.raw(c), kv_quant.raw(o)
            assert torch.equal(c[0], o[4]) and torch.equal(c[3], o[1]) and torch.equal(c[5], o[4])
            assert torch.equal(c[1], o[1]) and torch.equal(c[2], o[2])


@pytest.mark.skipif(ON_GPU, reason="a CPU run of the model (interpreted Triton); tests/gpu/test_gpu_kv_fp8.py runs "
                    "the engine in each layout on a GPU")
@pytest.mark.parametrize("layout", LAYOUTS)
def test_model_step_same_in_every_layout(tiny, layout):
    """A tiny Llama's mixed step (prompt chunks and decodes over an earlier context) on the Triton backend: the same
    hidden states, and the same K/V written, whatever the caches' layout (bit for bit: the kernels read the same
    values in the same order)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from graph_steps import random_kv_caches, step_rows, step_table_and_meta

    from pagoda.attention.backend import get_backend

    runner = tiny.llm("llama").llm_engine.core.runner
    model, bs = runner.model, runner.block_size
    backend = get_backend("triton")
    g = torch.Generator().manual_seed(0)
    caches = random_kv_caches(model, 12, bs, backend, g)
    laid = [(laid_out(k, layout), laid_out(v, layout)) for k, v in caches]
    query_lens, ctx, blocks = [1, 5, 1, 4], [9, 0, 20, 3], [[1, 2], [3, 4], [5, 6], [7, 8]]
    ids, pos, slots, seq_lens = step_rows(model, bs, query_lens, ctx, blocks, g)
    _, meta = step_table_and_meta(query_lens, seq_lens, blocks, slots)
    with torch.inference_mode():
        ref = model(torch.tensor(ids), torch.tensor(pos), caches, meta, backend)
        out = model(torch.tensor(ids), torch.tensor(pos), laid, meta, backend)
    assert torch.equal(out, ref)
    for (k, v), (lk, lv) in zip(caches, laid, strict=True):
        assert torch.equal(lk, k) and torch.equal(lv, v)
