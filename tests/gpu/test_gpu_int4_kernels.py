"""CUDA 4-bit kernels against the dequantize reference (skipped without CUDA): torch's tinygemm with the
canonical mapping of :mod:`pagoda.quantization.kernels.tinygemm`, and the Triton GEMV / dot kernels at
Llama-like sizes in bf16 (the CPU tests run them only tiny, in the interpreter)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))


def _case(n: int, k: int, group: int, sym: bool):
    from test_int_weight_cpu import random_weight, reference

    codes, scales, offsets = random_weight(4, group, n, k, sym, seed=n + k)
    x = torch.randn(5, k).bfloat16()
    return codes, scales, offsets, x, reference(x, codes, scales, offsets, 4, group, torch.bfloat16, None, None)


@pytest.mark.parametrize("group,sym", [(32, False), (128, True), (256, False)])
def test_tinygemm_canonical_mapping(group, sym):
    from pagoda.quantization.kernels import tinygemm

    codes, scales, offsets, x, ref = _case(256, 1024, group, sym)
    packed = tinygemm.pack(codes.cuda())
    out = tinygemm.matmul(x.cuda(), packed, group, tinygemm.scales_and_zeros(scales, offsets).cuda()).cpu()
    assert (out.float() - ref).abs().max() <= 2e-2 * ref.abs().max()


@pytest.mark.parametrize("kind,m", [("gemv", 1), ("gemv", 4), ("dot", 16), ("dot", 64)])
def test_triton_int4_kernels_bf16(kind, m):
    from pagoda.quantization.kernels import triton_wna16 as tw

    codes, scales, offsets, _, _ = _case(512, 2048, 128, False)
    from test_int_weight_cpu import reference

    x = torch.randn(m, 2048).bfloat16()
    ref = reference(x, codes, scales, offsets, 4, 128, torch.bfloat16, None, None)
    for dequant, paired in ((True, True), (True, False), (False, True)):
        cfg = tw.WNA16Config(kind, min(m, 4) if kind == "gemv" else 16, 64, 128, 4, dequant=dequant, paired=paired)
        out = tw.wna16_matmul(x.cuda(), tw.pack(codes, 4).cuda(), scales.t().contiguous().bfloat16().cuda(),
                              offsets.t().contiguous().bfloat16().cuda(), 4, 128, config=cfg).cpu()
        assert (out.float() - ref).abs().max() <= 2e-2 * ref.abs().max(), (kind, m, dequant, paired)


def correctly_rounded(got: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Per element: ``got`` (bf16/fp16, nonzero) is ``exact`` (float64) rounded to nearest, ties to even: no
    neighbour (bit pattern +-1) is nearer, and a tie keeps an even last bit."""
    bits = got.view(torch.int16)
    err = (got.double() - exact).abs()
    ok = torch.ones_like(exact, dtype=torch.bool)
    for step in (1, -1):
        other = (bits + step).view(got.dtype).double()
        d = (other - exact).abs()
        ok &= (err < d) | ((err == d) & (bits % 2 == 0))
    return ok | (got == 0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("group,n", [(128, 384), (32, 200)])
def test_paired_decode_is_the_weights_rounded_once(dtype, group, n):
    """:mod:`triton_pair_decode` (inline PTX, two weights a register) gives ``q * s + o`` rounded once to the 16-bit
    dtype: correctly rounded everywhere, and bit for bit the fp32 path's weights wherever ``q * s + o`` is exact
    in fp32 (elsewhere the fp32 path rounds twice); the ``dot`` kernel, paired or not, agrees to accumulation order."""
    from pagoda.quantization.kernels import triton_wna16 as tw

    codes, scales, offsets = _case(n, 1024, group, False)[:3]
    s, o = scales.to(dtype), offsets.to(dtype)
    exact = (codes.double().view(n, -1, group) * s.double()[..., None] + o.double()[..., None]).view(n, -1).t()
    in_fp32 = exact.float().double() == exact
    assert in_fp32.float().mean() > 0.5, in_fp32.float().mean()
    want = exact.float().to(dtype)
    args = (tw.pack(codes, 4).cuda(), s.t().contiguous().cuda(), o.t().contiguous().cuda(), 4, group)
    for paired in (True, False):
        got = tw.dequantize(*args, dtype, paired=paired).cpu()
        assert torch.equal(got[in_fp32].view(torch.int16), want[in_fp32].view(torch.int16)), paired
        if paired:
            assert correctly_rounded(got, exact).all()
    x = torch.randn(64, 1024, dtype=dtype).cuda()
    outs = [tw.wna16_matmul(x, *args, config=tw.WNA16Config("dot", 64, 128, 128, 1, paired=p)).float()
            for p in (True, False)]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(outs[0], x.float() @ want.cuda().float(), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("m", [16, 300])
def test_triton_int4_dot_and_dense_copy_agree(m):
    """The dot kernel (in-loop dequantization) and ``Rule('deq')`` (a dense bf16 copy, then torch.matmul) use the
    same bf16 weights: within a few bf16 ulps of each other (only the summation order differs), and both within
    the reference's tolerance."""
    from pagoda.quantization.kernels import triton_wna16 as tw

    codes, scales, offsets, _, _ = _case(384, 2048, 128, False)
    from test_int_weight_cpu import reference

    x = torch.randn(m, 2048).bfloat16()
    ref = reference(x, codes, scales, offsets, 4, 128, torch.bfloat16, None, None)
    args = (tw.pack(codes, 4).cuda(), scales.t().contiguous().bfloat16().cuda(),
            offsets.t().contiguous().bfloat16().cuda(), 4, 128)
    outs = {}
    for rule in (tw.Rule("dot", 64, block_m=16), tw.Rule("dot", 128, block_m=128, num_warps=8), tw.Rule("deq", 128)):
        cfg = tw.resolve(rule, m, 384, 2048, 128, tw.num_sms(0))
        outs[rule.kind, rule.block_m] = out = tw.wna16_matmul(x.cuda(), *args, config=cfg).float().cpu()
        assert (out - ref).abs().max() <= 2e-2 * ref.abs().max(), rule
    first = next(iter(outs.values()))
    for key, out in outs.items():
        torch.testing.assert_close(out, first, rtol=2e-2, atol=1e-2 * ref.abs().max().item(), msg=str(key))


def _table_rules():
    """Every distinct dot rule the 4-bit tables dispatch, with the largest M of its bucket."""
    from pagoda.quantization.kernels import triton_wna16 as tw

    rules = {(rule, key) for key, rule in tw.INT4_TABLE.items() if rule.kind == "dot" and key < tw.BIG}
    rules |= {(rule, key) for (key, _, _), rule in tw.INT4_SHAPE_TABLE.items() if rule.kind == "dot"}
    return sorted(rules, key=lambda rk: (rk[1], str(rk[0])))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_every_table_dot_rule_runs_and_is_right(dtype):
    """Each ``dot`` launch the tables choose (swapped or not, every tile shape and warp count) at its bucket's
    largest M, on a 600 x 2048 weight (a partial last column tile for blocks of 64 and 128) with a bias,
    against the reference; bf16 and fp32 activations (fp32 doubles the x tile in shared memory)."""
    from test_int_weight_cpu import reference

    from pagoda.quantization.kernels import triton_wna16 as tw

    codes, scales, offsets = _case(600, 2048, 128, True)[:3]
    args = (tw.pack(codes, 4).cuda(), scales.t().contiguous().to(dtype).cuda(),
            offsets.t().contiguous().to(dtype).cuda(), 4, 128)
    bias = torch.randn(600).to(dtype)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    for rule, m in _table_rules():
        x = torch.randn(m, 2048, generator=torch.Generator().manual_seed(m)).to(dtype)
        ref = reference(x, codes, scales, offsets, 4, 128, dtype, None, bias)
        cfg = tw.resolve(rule, m, 600, 2048, 128, tw.num_sms(0))
        out = tw.wna16_matmul(x.cuda(), *args, bias.cuda(), config=cfg, symmetric=True).float().cpu()
        assert (out - ref).abs().max() <= tol * ref.abs().max(), (rule, m)


@pytest.mark.parametrize("sym", [True, False])
def test_gated_gate_up_gemv_is_the_gemv_then_silu_and_mul(sym, monkeypatch):
    """The Llama-3-8B gate_up at one row (its table rule is the two-block GEMV): ``wna16_silu_mul`` (switched on)
    takes it and gives, bit for bit, the GEMV's output through ``silu_and_mul`` (the MLP's unfused path)."""
    from test_int_weight_cpu import random_weight

    from pagoda.layers.fused_kernels import silu_and_mul
    from pagoda.quantization.kernels import triton_wna16 as tw

    n, k = 28672, 4096
    monkeypatch.setattr(tw, "GATED_STORE", True)
    codes, scales, offsets = random_weight(4, 128, n, k, sym, seed=3)
    qw = tw.pack(codes, 4).cuda()
    s, o = scales.t().contiguous().bfloat16().cuda(), offsets.t().contiguous().bfloat16().cuda()
    x = torch.randn(1, k).bfloat16().cuda()
    out = tw.wna16_silu_mul(x, qw, s, o, 4, 128, symmetric=sym)
    assert out is not None and out.shape == (1, n // 2)
    assert torch.equal(out, silu_and_mul(tw.wna16_matmul(x, qw, s, o, 4, 128, symmetric=sym)))
