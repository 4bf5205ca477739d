"""The two-launch Triton argmax of logit rows (pagoda/layers/argmax_triton.py) against ``torch.argmax``: the
first maximal index, NaN counting as the largest value, on rows that span several first-stage blocks.

On the CPU the kernels run in Triton's interpreter (a small ``BLOCK`` so rows cross blocks); the dispatcher
(pagoda/layers/argmax.py) is checked on any device.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

from pagoda.layers import argmax, argmax_triton  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _rows(dtype: torch.dtype, vocab: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(vocab)
    x = torch.randn(9, vocab, generator=g)
    x[1, 5] = x[1, vocab - 3] = x[1].max() + 1  # a tie across blocks: the first index wins
    x[2] = float("-inf")  # nothing finite: index 0
    x[3, 7] = x[3, vocab - 1] = float("nan")  # NaNs beat everything, the first one wins
    x[3, 2] = float("inf")
    x[4, vocab - 1] = float("inf")  # the last column of a partial block
    x[5] = 0.0  # all equal
    x[6, 0] = float("nan")
    x[7, vocab // 2] = float("inf")
    x[7, vocab // 2 + 1] = float("inf")
    x[8, vocab - 2] = float("nan")
    x[8, 1] = float("inf")
    return x.to(DEV, dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("vocab", [1, 100, 257, 1000])
def test_argmax_matches_torch(monkeypatch, dtype, vocab):
    monkeypatch.setattr(argmax_triton, "BLOCK", 64)
    x = _rows(dtype, vocab) if vocab > 8 else torch.randn(3, vocab).to(DEV, dtype)
    got = argmax_triton.argmax_triton(x)
    assert got.dtype == torch.int64 and got.device == x.device
    assert got.tolist() == x.argmax(dim=-1).tolist()


def test_strided_rows(monkeypatch):
    """Rows of a wider buffer (a row stride larger than the vocabulary)."""
    monkeypatch.setattr(argmax_triton, "BLOCK", 64)
    wide = torch.randn(4, 300).to(DEV, torch.bfloat16)
    x = wide[:, :200]
    assert argmax_triton.argmax_triton(x).tolist() == x.argmax(dim=-1).tolist()


def test_dispatcher_leaves_other_inputs_to_torch(monkeypatch):
    calls = []
    monkeypatch.setattr(argmax_triton, "argmax_triton", lambda x: calls.append(x) or x.argmax(dim=-1))
    cpu = torch.randn(2, 50)
    assert argmax.argmax_rows(cpu).tolist() == cpu.argmax(dim=-1).tolist()
    assert argmax.argmax_rows(torch.randn(50)).shape == ()  # 1-D
    assert not calls
    if DEV == "cuda":
        argmax.argmax_rows(torch.randn(2, 50, device=DEV))
        assert len(calls) == 1
        monkeypatch.setattr(argmax, "ENABLED", False)
        argmax.argmax_rows(torch.randn(2, 50, device=DEV))
        assert len(calls) == 1
