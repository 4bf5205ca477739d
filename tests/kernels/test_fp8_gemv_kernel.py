"""The weight-only FP8 GEMV (``kernels/triton_fp8_gemv.py``) against dequantize-then-matmul (float64), run by
the Triton interpreter on the CPU (on a GPU machine the same tests run compiled): M in {1, 2, 5}, per-channel
and per-tensor scales, block-wise scales, bias, odd N, K not a multiple of the K block (masking), both FP8
decodings, CUDA-core (with and without register prefetch) and tensor-core forms, split-K (fixed-order sum,
counters left at zero)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from pagoda.layers.arrival_counters import arrival_counters  # noqa: E402
from pagoda.quantization.kernels import triton_fp8_gemv as gemv  # noqa: E402
from pagoda.quantization.kernels.triton_fp8_gemv import GemvConfig, fp8_gemv  # noqa: E402
from pagoda.quantization.w8a8 import FP8_DTYPE, quantize_weight_fp8_per_channel  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
CONFIGS = {
    "fma": GemvConfig(block_n=16, block_k=32),
    "fma-split3": GemvConfig(block_n=16, block_k=32, split_k=3),
    "fma-noprefetch": GemvConfig(block_n=8, block_k=32, prefetch=False),
    "dot": GemvConfig(block_n=16, block_k=32, use_dot=True),
    "dot-split2": GemvConfig(block_n=32, block_k=16, split_k=2, use_dot=True),
}


def _weight(n: int, k: int, per_tensor: bool, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    w = torch.randn(n, k, generator=g) * torch.logspace(-2, 0, n)[:, None]  # rows of different magnitudes
    if per_tensor:
        s = w.abs().amax() / 448
        return (w / s).to(FP8_DTYPE), s.reshape(1)
    return quantize_weight_fp8_per_channel(w)


def _reference(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, bias: torch.Tensor | None,
               block: tuple[int, int] | None = None) -> torch.Tensor:
    """Dequantize, then matmul in float64 (the exact product the kernel approximates in float32)."""
    n, k = q.shape
    if block is not None:
        bn, bk = block
        scale = s.double().repeat_interleave(bn, 0)[:n].repeat_interleave(bk, 1)[:, :k]
    else:
        scale = s.double().reshape(-1, 1)
    y = x.double().cpu() @ (q.cpu().double() * scale.cpu()).T
    return y if bias is None else y + bias.double().cpu()


def _check(y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """Within the output dtype's rounding (one unit in the last place) plus float32 summation error."""
    assert y.dtype == dtype
    rtol = {torch.float32: 1e-5, torch.bfloat16: 2**-7, torch.float16: 2**-10}[dtype]
    torch.testing.assert_close(y.double().cpu(), ref, rtol=rtol, atol=1e-5 * ref.abs().max().item())


@pytest.mark.parametrize("m", [1, 2, 5])
@pytest.mark.parametrize("per_tensor", [False, True])
@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("decode", ["native", "bits"])
def test_gemv_matches_dequantized_reference(m: int, per_tensor: bool, cfg: str, decode: str) -> None:
    g = torch.Generator().manual_seed(m)
    n, k = 37, 100  # odd N, K not a multiple of any K block
    q, s = _weight(n, k, per_tensor, g)
    x = torch.randn(m, k, generator=g).bfloat16()
    bias = torch.randn(n, generator=g).bfloat16() if m != 2 else None
    y = fp8_gemv(x.to(DEV), q.to(DEV), s.to(DEV), None if bias is None else bias.to(DEV), config=CONFIGS[cfg],
                 decode=decode)
    _check(y, _reference(x, q, s, bias), torch.bfloat16)


@pytest.mark.parametrize("k", [96, 100, 192])  # 96, 192: every K step full, the unmasked (vector-load) path
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gemv_activation_dtypes_and_even_k(k: int, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(k)
    q, s = _weight(24, k, False, g)
    x = torch.randn(3, k, generator=g).to(dtype)
    for cfg in (CONFIGS["fma"], CONFIGS["fma-split3"], CONFIGS["dot-split2"]):  # fp32: CUDA cores (no tf32)
        _check(fp8_gemv(x.to(DEV), q.to(DEV), s.to(DEV), config=cfg), _reference(x, q, s, None), dtype)


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("cfg", [GemvConfig(block_n=16, block_k=32), GemvConfig(block_n=16, block_k=64, use_dot=True),
                                 GemvConfig(block_n=8, block_k=16, split_k=2)])
def test_gemv_block_scales(m: int, cfg: GemvConfig) -> None:
    """DeepSeek-style ``[bn, bk]`` block scales; partial blocks at both edges; block_k 64 is halved to 32."""
    g = torch.Generator().manual_seed(7)
    n, k, block = 37, 100, (16, 32)
    q = (torch.randn(n, k, generator=g) * 100).clamp(-448, 448).to(FP8_DTYPE)
    s = torch.rand(3, 4, generator=g) + 0.01
    x = torch.randn(m, k, generator=g).bfloat16()
    y = fp8_gemv(x.to(DEV), q.to(DEV), s.to(DEV), block=block, config=cfg)
    _check(y, _reference(x, q, s, None, block), torch.bfloat16)


def test_gemv_deterministic_and_row_independent() -> None:
    """Split-K sums partials in a fixed order: the same output twice; rows never mix (a permutation of the
    inputs permutes the outputs bitwise); the arrival counters are left at zero."""
    g = torch.Generator().manual_seed(3)
    q, s = _weight(48, 200, False, g)
    x = torch.randn(5, 200, generator=g).bfloat16().to(DEV)
    q, s = q.to(DEV), s.to(DEV)
    for cfg in (CONFIGS["fma-split3"], CONFIGS["dot-split2"]):
        y = fp8_gemv(x, q, s, config=cfg)
        assert torch.equal(y, fp8_gemv(x, q, s, config=cfg))
        perm = torch.tensor([3, 0, 4, 1, 2], device=DEV)
        assert torch.equal(fp8_gemv(x[perm], q, s, config=cfg), y[perm])
        assert int(arrival_counters(x.device).abs().sum()) == 0


@pytest.mark.parametrize("cfg", ["fma", "dot-split2"])
def test_bits_decode_equals_native(cfg: str) -> None:
    """The bit-pattern decode is the value times 2**-8 and the 2**8 is folded into the scale: bitwise the same
    output as the native conversion (power-of-two scalings are exact)."""
    g = torch.Generator().manual_seed(11)
    q, s = _weight(40, 64, False, g)
    codes = [0, 1, 7, 8, 0x80, 0x81, 0x7E, 0xFE]  # +-0, subnormals, the largest normals
    q.view(torch.uint8)[0, :8] = torch.tensor(codes, dtype=torch.uint8)
    x = torch.randn(2, 64, generator=g).bfloat16().to(DEV)
    q, s = q.to(DEV), s.to(DEV)
    assert torch.equal(fp8_gemv(x, q, s, config=CONFIGS[cfg], decode="bits"),
                       fp8_gemv(x, q, s, config=CONFIGS[cfg], decode="native"))


def test_gemv_strided_operands() -> None:
    """A column-major weight view, an expanded (stride-0) per-channel scale and a row-strided input."""
    g = torch.Generator().manual_seed(5)
    q, _ = _weight(24, 40, False, g)
    s = torch.tensor(0.01).expand(24)
    x = torch.randn(3, 80, generator=g).bfloat16()[:, ::2]
    q_cm = q.t().contiguous().t()
    y = fp8_gemv(x.to(DEV), q_cm.to(DEV), s.to(DEV), config=CONFIGS["fma"])
    _check(y, _reference(x, q, s.contiguous(), None), torch.bfloat16)


def test_gemv_rejects_bad_scales() -> None:
    q = torch.zeros(8, 32, dtype=FP8_DTYPE)
    x = torch.zeros(1, 32).bfloat16()
    with pytest.raises(ValueError, match="weight scale of 3 elements"):
        fp8_gemv(x, q, torch.ones(3))
    with pytest.raises(ValueError, match="block scale shape"):
        fp8_gemv(x, q, torch.ones(2, 2), block=(16, 8))


def test_default_rule_and_table() -> None:
    assert gemv.m_bucket(1) == 1 and gemv.m_bucket(3) == 4 and gemv.m_bucket(8) == 8
    cfg = GemvConfig(block_n=8, block_k=1024)
    gemv.GEMV_TABLE[(2, 1000, 2048)] = cfg  # a shape the measured table does not list
    try:
        assert gemv.pick_config(2, 1000, 2048) is cfg
        assert gemv.pick_config(1, 1000, 2048) == gemv.default_config(1, 1000, 2048)
    finally:
        del gemv.GEMV_TABLE[(2, 1000, 2048)]
    for (m, n, k), listed in gemv.GEMV_TABLE.items():  # the measured entries are what a listed shape gets
        assert gemv.pick_config(m, n, k) is listed
