"""The fused FP8 activation-quantization kernel against the torch form (``w8a8.quantize_fp8``), run by the
Triton interpreter on the CPU. The interpreter's own float8 cast rounds differently from the hardware and
torch, so here the kernel stores its pre-cast float32 values and the test casts them with torch; the GPU
test (tests/gpu/test_gpu_w8a8.py) compares the float8 codes themselves."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from pagoda.quantization.kernels.triton_fp8_quant import quantize_fp8_rows  # noqa: E402
from pagoda.quantization.w8a8 import _MIN_SCALE, FP8_DTYPE, FP8_MAX, quantize_fp8  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("k", [40, 128, 4096 + 72, 16384 + 40])  # the last: two passes over the row
@pytest.mark.parametrize("static", [False, True])
def test_fused_quant_equals_torch_form(k: int, static: bool) -> None:
    g = torch.Generator().manual_seed(k)
    x = (torch.randn(5, k, generator=g) * torch.logspace(-3, 2, 5)[:, None]).to(torch.bfloat16)
    x[2] = 0  # an all-zero row takes the minimum scale
    x = x.to(DEV)
    scale = torch.tensor([0.37], device=DEV) if static else None
    q32, s = quantize_fp8_rows(x, scale, FP8_MAX, _MIN_SCALE, out_dtype=torch.float32)
    ref_q, ref_s = quantize_fp8(x, scale, per_token=True)
    assert torch.equal(s, ref_s.expand(5, 1))
    assert torch.equal(q32.to(FP8_DTYPE).view(torch.uint8), ref_q.view(torch.uint8))
    if DEV == "cuda":  # the hardware cast: the float8 codes themselves
        q8, _ = quantize_fp8_rows(x, scale, FP8_MAX, _MIN_SCALE)
        assert torch.equal(q8.view(torch.uint8), ref_q.view(torch.uint8))
