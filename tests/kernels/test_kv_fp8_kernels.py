"""FP8 KV cache (``--kv-cache-dtype fp8``): every writer and reader against the plain torch rule.

The rule (pagoda.attention.kv_quant): a slot holds ``clamp(x / scale, ±max)`` rounded to the FP8
format by torch's own cast; a read is the upcast byte times the scale. Triton kernels run in the
interpreter on the CPU (tiny sizes), compiled on a GPU.
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
from pagoda.attention.backend import get_backend  # noqa: E402
from pagoda.attention.reference import ref_paged_attention, ref_write_kv  # noqa: E402
from pagoda.layers import fused_kernels as fk  # noqa: E402
from pagoda.layers.rotary import RotaryEmbedding  # noqa: E402
from pagoda.worker import kv_cache  # noqa: E402

FP8 = [torch.float8_e4m3fn, torch.float8_e5m2]


def same_values(a: torch.Tensor, b: torch.Tensor) -> None:
    """Equal FP8 contents (by value, so +0 and -0 count as equal)."""
    assert a.dtype == b.dtype
    torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=0)


def awkward_values(n: int, d: int, seed: int) -> torch.Tensor:
    """Values over the whole range: beyond max (saturate), tiny (subnormals), exact ties."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * torch.tensor([1e-4, 1e-2, 1.0, 30.0, 1e3, 1e5]).repeat(d)[:d]
    x[0, :6] = torch.tensor([0.0, 1000.0, -1e6, 31.5, 2.0**-10, 3 * 2.0**-10])  # 31.5: a carry into the exponent
    return x


@pytest.mark.parametrize("fp8", FP8)
@pytest.mark.parametrize("src", [torch.float32, torch.bfloat16])
def test_write_kv_quantizes_like_torch(fp8, src):
    T, hk, d, bs, nb = 7, 3, 24, 4, 5
    key = awkward_values(T, hk * d, 0).view(T, hk, d).to(src)
    val = awkward_values(T, hk * d, 1).view(T, hk, d).to(src)
    slots = torch.tensor([3, 17, -1, 0, 9, 19, 6], dtype=torch.int64)
    k_ref = torch.zeros(nb, bs, hk, d, dtype=fp8)
    v_ref = torch.zeros_like(k_ref)
    ref_write_kv(key, val, k_ref, v_ref, slots, k_scale=0.5, v_scale=3.0)
    kc, vc = torch.zeros_like(k_ref, device=DEVICE), torch.zeros_like(v_ref, device=DEVICE)
    tk.write_kv(key.to(DEVICE), val.to(DEVICE), kc, vc, slots.to(DEVICE), 0.5, 3.0)
    same_values(kc.cpu(), k_ref)
    same_values(vc.cpu(), v_ref)
    fmax = torch.finfo(fp8).max
    assert k_ref.float().abs().max() == fmax  # saturated, not inf/NaN
    assert not torch.isnan(k_ref.float()).any()
    # The reference rule is the module's: x / scale, clamp, torch's cast.
    same_values(k_ref[0, 3], (key[0].float() / 0.5).clamp(-fmax, fmax).to(fp8))


@pytest.mark.parametrize("fp8", FP8)
def test_unified_and_split_read_fp8_with_scales(fp8):
    query, k_hi, v_hi, meta = make_batch(MIXED, 8, 2, 32, 2, torch.float32, seed=2)
    ks, vs = 0.05, 0.2
    k_cache = kv_quant.quantize(k_hi, ks, fp8)
    v_cache = kv_quant.quantize(v_hi, vs, fp8)
    scale = 32**-0.5
    ref = ref_paged_attention(query, k_cache, v_cache, meta, scale, k_scale=ks, v_scale=vs)
    # The reference reads dequantized values: the same as attention over the dequantized caches.
    deq = ref_paged_attention(query, kv_quant.dequantize(k_cache, ks), kv_quant.dequantize(v_cache, vs), meta, scale)
    torch.testing.assert_close(ref, deq, rtol=1e-5, atol=1e-6)
    out = run_unified(query, k_cache, v_cache, meta, scale, k_scale=ks, v_scale=vs, block_m=16, block_n=16)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    out = run_unified(query, k_cache, v_cache, meta, scale, k_scale=ks, v_scale=vs, num_splits=3)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)

    decodes = [(1, 33), (1, 17), (1, 1)]
    query, k_hi, v_hi, meta = make_batch(decodes, 8, 2, 32, 2, torch.bfloat16, seed=3)
    k_cache, v_cache = kv_quant.quantize(k_hi, ks, fp8), kv_quant.quantize(v_hi, vs, fp8)
    ref = ref_paged_attention(query, k_cache, v_cache, meta, scale, k_scale=ks, v_scale=vs)
    out = run_split(query, k_cache, v_cache, meta, scale, 3, k_scale=ks, v_scale=vs, block_n=16)
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=1e-2)


def _run_fp8(query, k_cache, v_cache, meta, scale, split):
    """split 0: the split-KV decode kernel (2 splits); else the unified kernel with that many splits."""
    kw = {"k_scale": 0.05, "v_scale": 0.2, "block_n": 16}
    if split == 0:
        return run_split(query, k_cache, v_cache, meta, scale, 2, **kw)
    return run_unified(query, k_cache, v_cache, meta, scale, block_m=16, num_splits=split, **kw)


@pytest.mark.parametrize("fp8", FP8)
@pytest.mark.parametrize("split", [0, 1, 3])
def test_bf16_query_over_fp8_runs_fp16_dots_on_a_scaled_query(fp8, split):
    """A bf16 query over an FP8 cache: fp16 dots on ``q * 2^-4`` (``_query_tile``), the scores scaled back.

    Values against the fp32 reference on the same bf16 query and dequantized cache: at |q| ~ 1, at |q| ~ 1e5 (past
    fp16's 65,504 unless scaled), and beyond 2^20 saturated at 65504 * 16 (finite; the reference on the clamped
    query), with the softmax scale divided to match; padding rows stay 0."""
    assert tk._dot_config(torch.bfloat16, fp8)[::2] == (tk.tl.float16, True)
    assert tk._dot_config(torch.bfloat16, torch.bfloat16)[2] is False
    assert tk._dot_config(torch.float16, fp8) == (tk.tl.float16, "tf32", False)
    reqs = [(1, 33), (1, 17), (1, 1)] if split == 0 else MIXED
    query, k_hi, v_hi, meta = make_batch(reqs, 8, 2, 32, 2, torch.bfloat16, seed=7, pad_tokens=2)
    k_cache, v_cache = kv_quant.quantize(k_hi, 0.05, fp8), kv_quant.quantize(v_hi, 0.2, fp8)
    n = sum(meta.query_lens_cpu)
    limit = 65504.0 * 16
    for shift in (0, 16, 24):  # |q| up to ~4, ~2.6e5, ~6.7e7
        q = query * 2.0**shift
        out = _run_fp8(q, k_cache, v_cache, meta, 32**-0.5 * 2.0**-shift, split)
        assert torch.isfinite(out).all() and not out[n:].any()
        ref = ref_paged_attention(q.float().clamp(-limit, limit), k_cache, v_cache, meta, 32**-0.5 * 2.0**-shift,
                                  k_scale=0.05, v_scale=0.2)
        torch.testing.assert_close(out[:n].float(), ref[:n], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("fp8", FP8)
def test_scales_are_ignored_by_a_model_dtype_cache(fp8):
    query, k_cache, v_cache, meta = make_batch(MIXED[:3], 8, 1, 16, 2, torch.float32, seed=4)
    plain = run_unified(query, k_cache, v_cache, meta, 0.25)
    scaled = run_unified(query, k_cache, v_cache, meta, 0.25, k_scale=7.0, v_scale=3.0)
    torch.testing.assert_close(scaled, plain, rtol=0, atol=0)


@pytest.mark.parametrize("fp8", FP8)
def test_fused_rotary_writes_fp8(fp8):
    torch.manual_seed(5)
    T, hq, hk, d, bs, nb = 9, 4, 2, 16, 4, 6
    rope = RotaryEmbedding(d, 64, {"rope_theta": 10000.0, "rope_type": "default"}, torch.float32).to(DEVICE)
    q = torch.randn(T, hq, d, device=DEVICE)
    k = torch.randn(T, hk, d, device=DEVICE) * 40
    v = torch.randn(T, hk, d, device=DEVICE) * 40
    pos = torch.randint(0, 64, (T,), device=DEVICE)
    slots = torch.randperm(nb * bs, device=DEVICE)[:T].to(torch.int64)
    slots[4] = -1
    kc = torch.zeros(nb, bs, hk, d, dtype=fp8, device=DEVICE)
    vc = torch.zeros_like(kc)
    fk.rotary_inplace(q, k, rope.cos, rope.sin, pos, v, kc, vc, slots, 2.0, 0.25)
    k_ref, v_ref = torch.zeros_like(kc.cpu()), torch.zeros_like(vc.cpu())
    ref_write_kv(k.cpu(), v.cpu(), k_ref, v_ref, slots.cpu(), 2.0, 0.25)  # k: rotated in place
    same_values(kc.cpu(), k_ref)
    same_values(vc.cpu(), v_ref)


@pytest.mark.parametrize("fp8", FP8)
def test_torch_backend_fp8_matches_reference(fp8):
    """The CPU backend (HND layout) writes and reads FP8 exactly as the oracle."""
    backend = get_backend("torch")
    query, k_hi, v_hi, meta = make_batch(MIXED, 8, 2, 16, 2, torch.float32, seed=6)
    new_k = torch.randn(len(meta.slot_mapping), 2, 16) * 3
    new_v = torch.randn(len(meta.slot_mapping), 2, 16) * 3
    ks, vs = 0.1, 0.05
    k_ref, v_ref = kv_quant.quantize(k_hi.cpu(), ks, fp8), kv_quant.quantize(v_hi.cpu(), vs, fp8)
    ref_write_kv(new_k, new_v, k_ref, v_ref, meta.slot_mapping.cpu(), ks, vs)
    kc = k_ref.new_zeros(k_ref.shape).transpose(1, 2).contiguous()  # [N, Hkv, bs, D]
    vc = kc.clone()
    kc.transpose(1, 2).copy_(kv_quant.quantize(k_hi.cpu(), ks, fp8))
    vc.transpose(1, 2).copy_(kv_quant.quantize(v_hi.cpu(), vs, fp8))
    cpu_meta = meta
    for name in ("query_start_loc", "seq_lens", "block_tables", "slot_mapping"):
        setattr(cpu_meta, name, getattr(meta, name).cpu())
    backend.write_kv(new_k, new_v, kc, vc, cpu_meta.slot_mapping, ks, vs)
    same_values(kc.transpose(1, 2), k_ref)
    same_values(vc.transpose(1, 2), v_ref)
    q = query.cpu()
    ref = ref_paged_attention(q, k_ref, v_ref, cpu_meta, 0.25, ks, vs)
    torch.testing.assert_close(backend.forward(q, kc, vc, cpu_meta, 0.25, ks, vs), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fp8", FP8)
def test_block_transfers_copy_fp8_bytes(fp8):
    """Host-tier stores/loads and copy-on-write copy FP8 blocks byte for byte."""
    caches = [tuple(kv_quant.quantize(torch.randn(6, 4, 2, 8) * 10, 1.0, fp8) for _ in range(2)) for _ in range(2)]
    orig = [(k.clone(), v.clone()) for k, v in caches]
    host = kv_cache.allocate_host_caches(caches, 3, pin=False)
    assert host[0][0].dtype == fp8
    cpu = torch.device("cpu")
    kv_cache.swap_out(caches, host, [(1, 0), (4, 2)], cpu)
    kv_cache.copy_blocks(caches, [(4, 5)], cpu)
    kv_cache.swap_in(caches, host, [(2, 0), (0, 3)], cpu)
    for (k, v), (ok, ov) in zip(caches, orig, strict=True):
        for c, o in ((k, ok), (v, ov)):
            assert torch.equal(c.view(torch.uint8)[0], o.view(torch.uint8)[4])  # via host block 2
            assert torch.equal(c.view(torch.uint8)[3], o.view(torch.uint8)[1])  # via host block 0
            assert torch.equal(c.view(torch.uint8)[5], o.view(torch.uint8)[4])


def test_block_bytes_halve_for_fp8():
    bf16 = kv_cache.bytes_per_block(2, 16, 2, 64, torch.bfloat16)
    assert kv_cache.bytes_per_block(2, 16, 2, 64, torch.float8_e4m3fn) * 2 == bf16
    assert kv_cache.bytes_per_block(2, 16, 2, 64, torch.float8_e5m2) * 2 == bf16
