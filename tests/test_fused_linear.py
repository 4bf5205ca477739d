"""CPU linears with fused epilogues (pagoda.layers.fused_linear) against F.linear then the activation / add."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pagoda.layers.fused_linear import ACTIVATIONS, linear_act, linear_add
from pagoda.layers.linear import Linear


def _layer(n_in: int, n_out: int, dtype: torch.dtype) -> Linear:
    torch.manual_seed(0)
    lin = Linear(n_in, n_out, bias=True)
    lin.weight.data = torch.randn(n_out, n_in, dtype=dtype) / n_in**0.5
    lin.bias.data = torch.randn(n_out, dtype=dtype)  # type: ignore[union-attr]
    return lin


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_linear_act(dtype: torch.dtype, tol: float, act: str) -> None:
    lin = _layer(48, 80, dtype)
    x = torch.randn(37, 48, dtype=dtype)
    y = F.linear(x.float(), lin.weight.float(), lin.bias.float())  # type: ignore[union-attr]
    op, algo = ACTIVATIONS[act]
    ref = y if op == "none" else F.relu(y) if op == "relu" else F.gelu(y, approximate=algo)
    with torch.inference_mode():
        got = linear_act(x, lin, act)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_linear_add(dtype: torch.dtype, tol: float) -> None:
    lin = _layer(64, 32, dtype)
    x, r = torch.randn(29, 64, dtype=dtype), torch.randn(29, 32, dtype=dtype)
    ref = F.linear(x.float(), lin.weight.float(), lin.bias.float()) + r.float()  # type: ignore[union-attr]
    with torch.inference_mode():
        got = linear_add(x, lin, r)
    torch.testing.assert_close(got.float(), ref, rtol=tol, atol=tol)
