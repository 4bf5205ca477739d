"""The native bf16 LM head (pagoda/layers/cpu_bf16_head.c, for CPUs without native bf16) against a float64
reference of the same bf16 values, and its row invariance: a row alone gets the bits it gets inside any batch."""

import pytest
import torch

from pagoda.layers import cpu_bf16_head

pytestmark = pytest.mark.skipif(not cpu_bf16_head.available(), reason="no bf16 head kernel here (not x86-64 AVX2, "
                                                                       "or no C compiler)")


@pytest.mark.parametrize("n,k", [(1, 8), (2, 64), (97, 576), (1000, 136)])
def test_head_matches_float64_reference_and_is_row_invariant(n, k):
    gen = torch.Generator().manual_seed(n + k)
    w = (torch.randn(n, k, generator=gen) * 0.05).to(torch.bfloat16)
    x = (torch.randn(11, k, generator=gen) * 2).to(torch.bfloat16)
    out = cpu_bf16_head.head(x, w)
    assert out is not None and out.dtype == torch.float32 and out.shape == (11, n)
    ref = x.double() @ w.double().t()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    for m in (1, 2, 3, 4, 5, 7):
        part = cpu_bf16_head.head(x[:m], w)
        assert part is not None and torch.equal(part, out[:m]), m
    for i in range(11):
        alone = cpu_bf16_head.head(x[i : i + 1], w)
        assert alone is not None and torch.equal(alone[0], out[i]), i


def test_head_declines_what_it_does_not_cover():
    w = torch.randn(16, 12).to(torch.bfloat16)
    assert cpu_bf16_head.head(torch.randn(2, 12).to(torch.bfloat16), w) is None  # K not a multiple of 8
    w8 = torch.randn(16, 16).to(torch.bfloat16)
    assert cpu_bf16_head.head(torch.randn(2, 16), w8) is None  # float32 activations
    assert cpu_bf16_head.head(torch.randn(2, 16).to(torch.bfloat16), w8.float()) is None
