"""The native 4-bit dequantization (``cpu_int4_dequant.c``) against torch's ops for the same planes, bit for bit,
and the prefill path that uses it against the int4 kernel's reference."""

from __future__ import annotations

import pytest
import torch

from pagoda.native import cpu_has
from pagoda.quantization.kernels import cpu_int4_dequant, cpu_woq


def _planes(n: int, k: int, group: int, planes: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(planes):
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=g)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        mag = torch.exp2(torch.randint(-14, 6, (k // group, n, 2), generator=g).float())
        out.append((packed, (torch.randn(k // group, n, 2, generator=g) * mag).to(torch.bfloat16)))
    return out


def _native_expected() -> bool:
    """Where the kernel must serve: x86 AVX-512 and torch's 64-column int4pack layout."""
    return cpu_woq.int4_supported(4, 32, 64) and cpu_woq.block_width() == 64 and \
        cpu_has("avx512f", "avx512bw", "avx512vl", "avx512dq")


@pytest.mark.parametrize("n,k,group,planes", [(64, 32, 32, 1), (192, 576, 32, 1), (128, 1536, 128, 1),
                                              (320, 256, 64, 2), (64, 512, 256, 2)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_native_dequantization_equals_torchs_ops(n, k, group, planes, dtype):
    """Every element equals what torch's unpack + addcmul (+ the planes' sum) give, in bf16 and float32."""
    if not _native_expected():
        assert cpu_int4_dequant.dequantized_t(_planes(64, 32, 32, 1, 0), 64, 32, 32, dtype) is None
        pytest.skip("the native dequantization serves AVX-512 CPUs with 64-column int4pack blocks")
    parts = _planes(n, k, group, planes, seed=n + k + planes)
    got = cpu_int4_dequant.dequantized_t(parts, n, k, group, dtype)
    assert got is not None
    want = cpu_woq._dequantized_t_torch(parts, n, k, group, dtype, 64)
    view = torch.int16 if dtype == torch.bfloat16 else torch.int32
    assert got.shape == (k, n) and torch.equal(got.view(view), want.view(view))
    assert torch.equal(cpu_woq._dequantized_t(parts, n, k, group, dtype, 64).view(view), want.view(view))


def test_native_dequantization_declines_what_it_does_not_cover():
    """Scales not in bf16, other output dtypes and the switch off: None (the caller runs torch's ops)."""
    parts = _planes(64, 64, 32, 1, seed=3)
    assert cpu_int4_dequant.dequantized_t([(p, s.float()) for p, s in parts], 64, 64, 32, torch.bfloat16) is None
    assert cpu_int4_dequant.dequantized_t(parts, 64, 64, 32, torch.float16) is None
    try:
        cpu_int4_dequant.ENABLED = False
        assert cpu_int4_dequant.dequantized_t(parts, 64, 64, 32, torch.bfloat16) is None
    finally:
        cpu_int4_dequant.ENABLED = True


def test_prefill_rows_on_the_native_dequantization_match_the_int4_kernel_rows():
    """A prefill of more than the dense threshold's rows (the dequantize-once GEMM) against the same rows through
    the int4 kernel a few at a time: within a bf16 rounding of each other (two arithmetic orders of one weight)."""
    if not _native_expected():
        pytest.skip("the native dequantization serves AVX-512 CPUs with 64-column int4pack blocks")
    n, k = 256, 576
    parts = _planes(n, k, 32, 1, seed=9)
    rows = max(cpu_woq.DEQUANT_MIN_M, cpu_woq.DEQUANT_MIN_M_NATIVE) + 7
    x = (torch.randn(rows, k, generator=torch.Generator().manual_seed(1)) * 0.5).to(torch.bfloat16)
    assert cpu_woq.takes_dense_gemm(rows, n, False, True)
    dense = cpu_woq.int4_matmul(x, parts, 32)
    few = torch.cat([cpu_woq.int4_matmul(x[i : i + 8], parts, 32) for i in range(0, rows, 8)])
    ref = x.double() @ cpu_woq._dequantized_t_torch(parts, n, k, 32, torch.float32, 64).double()
    scale = ref.abs().max().item()
    assert (dense.double() - ref).abs().max().item() <= 2e-2 * scale
    assert (few.double() - ref).abs().max().item() <= 2e-2 * scale
