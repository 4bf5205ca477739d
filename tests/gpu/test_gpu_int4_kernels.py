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
    for dequant in (True, False):
        cfg = tw.WNA16Config(kind, min(m, 4) if kind == "gemv" else 16, 64, 128, 4, dequant=dequant)
        out = tw.wna16_matmul(x.cuda(), tw.pack(codes, 4).cuda(), scales.t().contiguous().bfloat16().cuda(),
                              offsets.t().contiguous().bfloat16().cuda(), 4, 128, config=cfg).cpu()
        assert (out.float() - ref).abs().max() <= 2e-2 * ref.abs().max(), (kind, m, dequant)


@pytest.mark.parametrize("m,block_m,block_n,warps", [(16, 16, 64, 4), (64, 64, 128, 4), (100, 128, 128, 8)])
def test_triton_int4_dot_decodes_agree(m, block_m, block_n, warps):
    """The dot kernel's decodes 1 (one dot per K tile) and 2 (weights as wgmma's register operand) dequantize to
    the same bf16 weights as decode 0: within a few bf16 ulps of it (only the summation order differs), at tiles
    the tables use (split-K included)."""
    from pagoda.quantization.kernels import triton_wna16 as tw

    codes, scales, offsets, _, _ = _case(384, 2048, 128, False)
    from test_int_weight_cpu import reference

    x = torch.randn(m, 2048).bfloat16()
    ref = reference(x, codes, scales, offsets, 4, 128, torch.bfloat16, None, None)
    args = (tw.pack(codes, 4).cuda(), scales.t().contiguous().bfloat16().cuda(),
            offsets.t().contiguous().bfloat16().cuda(), 4, 128)
    outs = {}
    for decode in (0, 1, 2):
        for split in (1, 3):
            cfg = tw.WNA16Config("dot", block_m, block_n, 128, split, warps, decode=decode)
            outs[decode, split] = tw.wna16_matmul(x.cuda(), *args, config=cfg).float().cpu()
            assert (outs[decode, split] - ref).abs().max() <= 2e-2 * ref.abs().max(), (decode, split)
    for key, out in outs.items():
        torch.testing.assert_close(out, outs[0, 1], rtol=2e-2, atol=2e-2 * ref.abs().max().item(), msg=str(key))


@pytest.mark.parametrize("m,sym", [(1, True), (1, False), (2, True), (3, False), (4, True)])
def test_w4_gemv_llama_shapes_graph_replay_bitwise(m, sym):
    """The small-M GEMV through the dispatcher (split-K counters re-armed by each launch's last program): in a
    CUDA graph replayed several times it gives bitwise the eager result, within bf16 tolerance of the
    dequantize reference, on a Llama-like shape (K = 4096, group 128)."""
    from test_int_weight_cpu import random_weight, reference

    from pagoda.quantization.kernels import triton_wna16 as tw

    n, k = 1536, 4096
    codes, scales, offsets = random_weight(4, 128, n, k, sym, seed=m)
    x = torch.randn(m, k).bfloat16()
    ref = reference(x, codes, scales, offsets, 4, 128, torch.bfloat16, None, None)
    args = (tw.pack(codes, 4).cuda(), scales.t().contiguous().bfloat16().cuda(),
            offsets.t().contiguous().bfloat16().cuda(), 4, 128)
    assert tw.choose_config(m, n, k, 128, tw.num_sms(0)).kind == "gemv"
    xc = x.cuda()
    eager = tw.wna16_matmul(xc, *args, symmetric=sym)
    assert (eager.float().cpu() - ref).abs().max() <= 2e-2 * ref.abs().max()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = tw.wna16_matmul(xc, *args, symmetric=sym)
    for _ in range(3):
        out.zero_()
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, eager)
