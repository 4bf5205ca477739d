"""The Triton W8A8 FP8 GEMM (pagoda.quantization.kernels.triton_fp8_gemm) against the dequantized product, run by the
Triton interpreter on the CPU (the GPU runs the same tests on tensor cores, and against ``torch._scaled_mm``)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from pagoda.quantization.kernels import triton_fp8_gemm as tg  # noqa: E402
from pagoda.quantization.w8a8 import (  # noqa: E402
    FP8_DTYPE,
    quantize_fp8,
    quantize_weight_fp8_per_channel,
    scaled_fp8_mm,
    scaled_mm_supported,
)

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ROUNDING = 2 ** -6 if DEV == "cuda" else 2 ** -5
"""Relative bound of a bf16 output against float64: a bf16 step is 2^-8..2^-7 of the value; the interpreter's
float32 -> bf16 cast truncates."""


def _operands(m: int, n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g) * torch.logspace(-2, 1, m)[:, None]
    xq, sx = quantize_fp8(x, None, per_token=True)
    wq, ws = quantize_weight_fp8_per_channel(torch.randn(n, k, generator=g) * 0.05)
    return xq.to(DEV), sx.to(DEV), wq.to(DEV), ws.to(DEV)


def _reference(xq, sx, wq, ws) -> torch.Tensor:
    """float64 products of the codes (exact), the scales applied after the sum as the kernel does."""
    acc = xq.double().cpu() @ wq.double().cpu().t()
    return acc * sx.double().cpu() * ws.double().cpu()[None, :]


@pytest.mark.parametrize("m,n,k,rule", [
    (5, 48, 64, (16, 32, 32, 4, 2)),  # masked rows and columns, two K tiles
    (33, 64, 96, (32, 64, 64, 4, 3)),  # K not a multiple of the K tile (masked K)
    (16, 16, 128, (16, 16, 128, 4, 1)),
])
def test_fp8_gemm_matches_the_dequantized_product(m, n, k, rule):
    xq, sx, wq, ws = _operands(m, n, k, seed=m + n + k)
    ref = _reference(xq, sx, wq, ws)
    out = tg.fp8_gemm(xq, sx, wq, ws, None, torch.float32, rule)
    torch.testing.assert_close(out.cpu().double(), ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())
    bias = torch.randn(n).to(torch.bfloat16).to(DEV)
    out = tg.fp8_gemm(xq, sx, wq, ws, bias, torch.bfloat16, rule)
    want = (ref.float().to(torch.bfloat16).float() + bias.cpu().float()).to(torch.bfloat16)
    # two bf16 roundings (the scaled sum, then with the bias), each a step at most where the fp32 sums' order moves
    # the first across a rounding boundary; the interpreter truncates instead of rounding to nearest (two more)
    scale = ref.abs().float() + bias.cpu().float().abs()
    assert ((out.cpu().float() - want.float()).abs() <= ROUNDING * scale + 1e-6).all()


def test_rule_buckets_and_scaled_fp8_mm_dispatch(monkeypatch):
    table = {(64, 48, 64): (16, 32, 32, 4, 2), (256, 48, 64): (32, 32, 32, 4, 2)}
    assert tg.fp8_gemm_rule(1, 48, 64, table) == (16, 32, 32, 4, 2)
    assert tg.fp8_gemm_rule(64, 48, 64, table) == (16, 32, 32, 4, 2)
    assert tg.fp8_gemm_rule(65, 48, 64, table) is None  # the 128 bucket has no entry: _scaled_mm
    assert tg.fp8_gemm_rule(200, 48, 64, table) == (32, 32, 32, 4, 2)
    assert tg.fp8_gemm_rule(2000, 48, 64, table) is None and tg.fp8_gemm_rule(5, 64, 48, table) is None
    monkeypatch.setattr(tg, "FP8_GEMM_TABLE", {(64, 48, 64): (16, 32, 32, 4, 2)})
    xq, sx, wq, ws = _operands(5, 48, 64, seed=1)
    out = scaled_fp8_mm(xq, sx, wq, ws)  # the table's shape: the Triton kernel (on the CPU: its only way)
    assert out.dtype == torch.bfloat16 and out.shape == (5, 48)
    ref = _reference(xq, sx, wq, ws)
    assert ((out.cpu().double() - ref).abs() <= ROUNDING * ref.abs() + 1e-6).all()


@pytest.mark.skipif(DEV != "cuda", reason="needs CUDA: torch._scaled_mm")
@pytest.mark.parametrize("m,k", [(7, 512), (64, 512), (200, 512), (256, 4096)])
def test_fp8_gemm_is_as_exact_as_scaled_mm(m, k):
    """Against the float64 product of the same codes, the kernel's error is at most twice ``_scaled_mm``'s or one
    bf16 step: at K = 4,096 an FP8 MMA accumulator carried through all of K would not be (Hopper keeps fewer bits)."""
    if not scaled_mm_supported(torch.device("cuda"), k, 768):
        pytest.skip("compute capability < 8.9")
    xq, sx, wq, ws = _operands(m, 768, k, seed=m)
    assert xq.dtype == wq.dtype == FP8_DTYPE
    ref = _reference(xq, sx, wq, ws).cuda()

    def err(out: torch.Tensor) -> float:
        return ((out.double() - ref).abs() / (ref.abs() + 1e-3 * ref.abs().max())).max().item()

    base = err(torch._scaled_mm(xq, wq.t(), scale_a=sx, scale_b=ws.view(1, -1), out_dtype=torch.bfloat16))
    for rule in ((64, 64, 128, 4, 4), (64, 128, 128, 4, 4), (128, 64, 128, 8, 3)):
        assert err(tg.fp8_gemm(xq, sx, wq, ws, None, torch.bfloat16, rule)) <= max(2 * base, 2 ** -7)
