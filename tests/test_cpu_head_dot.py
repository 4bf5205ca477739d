"""The bf16-dot LM head (pagoda/layers/cpu_head_dot.c): float32 logits within summation error of a float64
reference, each row's bits independent of the batch, of the thread team and of which path (the few-row head or
the refinement of a larger batch's leading logits) computed it; and the model uses it where it applies."""

from __future__ import annotations

import pytest
import torch

from pagoda.layers import cpu_head_dot
from pagoda.layers.logits import refine_top_logits
from pagoda.models import cpu_decoder_stack

pytestmark = pytest.mark.skipif(not cpu_head_dot.available(),
                                reason="no bf16-dot LM head here (needs x86-64 AVX512-BF16 and a C compiler)")


def _weights(n: int, k: int, m: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g) * 2).bfloat16(), (torch.randn(n, k, generator=g) * 0.1).bfloat16()


@pytest.mark.parametrize("k", [576, 64, 100, 31])  # whole 32-wide chunks, and a masked last chunk
@pytest.mark.parametrize("threads", [1, 3])
def test_matches_float64_and_rows_do_not_depend_on_the_batch(monkeypatch, k, threads):
    monkeypatch.setattr(cpu_decoder_stack, "THREADS", threads)
    x, w = _weights(1000, k, cpu_head_dot.MAX_ROWS)
    got = cpu_head_dot.head(x, w)
    assert got is not None and got.dtype == torch.float32 and got.shape == (x.shape[0], 1000)
    ref = x.double() @ w.double().t()
    bound = (x.double().abs() @ w.double().abs().t()) * 2.0**-20
    assert bool(((got.double() - ref).abs() <= bound).all())
    for m in range(1, x.shape[0] + 1):  # every batch size up to MAX_ROWS: the same bits per row
        assert torch.equal(cpu_head_dot.head(x[:m], w), got[:m])
    assert torch.equal(cpu_head_dot.head(x[3:4], w)[0], got[3])
    alone = cpu_head_dot._run(cpu_head_dot._lib(), x, w, team=False)  # the calling thread only
    assert alone is not None and torch.equal(alone, got)
    assert torch.equal(cpu_head_dot.head(x.t().contiguous().t(), w), got)  # non-contiguous hidden rows are copied


def test_entries_are_the_heads_bits_and_refinement_uses_them():
    x, w = _weights(700, 576, 12, seed=1)
    few = torch.cat([cpu_head_dot.head(x[i : i + 4], w) for i in range(0, 12, 4)])
    rows = torch.tensor([0, 5, 11, 11, 7])
    cols = torch.tensor([3, 699, 0, 42, 500])
    assert torch.equal(cpu_head_dot.entries(x, w, rows, cols), few[rows, cols])
    # a batch above MAX_ROWS: bf16 logits whose leading 8 per row are recomputed, with the few-row head's bits
    bf16 = torch.nn.functional.linear(x, w).float()
    out = refine_top_logits(bf16.clone(), x, w)
    top = bf16.topk(8, dim=-1).indices
    assert torch.equal(out.gather(1, top), few.gather(1, top))
    assert torch.equal(out.argmax(-1), few.argmax(-1))  # the greedy token as the few-row head picks it


def test_refinement_applies_the_soft_cap():
    x, w = _weights(300, 64, 3, seed=2)
    cap = 0.5
    capped = (torch.tanh(torch.nn.functional.linear(x, w).float() / cap) * cap)
    out = refine_top_logits(capped.clone(), x, w, softcap=cap)
    top = capped.topk(8, dim=-1).indices
    exact = torch.tanh(cpu_head_dot.head(x, w) / cap) * cap
    assert torch.equal(out.gather(1, top), exact.gather(1, top))
    assert bool((out.abs() <= cap).all())


def test_declines_what_it_does_not_cover(monkeypatch):
    x, w = _weights(50, 64, cpu_head_dot.MAX_ROWS + 1)
    assert cpu_head_dot.head(x, w) is None  # above MAX_ROWS: the caller's oneDNN head
    assert cpu_head_dot.head(x[:2].float(), w) is None
    assert cpu_head_dot.head(x[:2], w[:, :32]) is None  # another width
    assert cpu_head_dot.head(x[:2, :32], w[:, :32]) is None  # a non-contiguous weight
    monkeypatch.setattr(cpu_head_dot, "ENABLED", False)
    assert cpu_head_dot.head(x[:2], w) is None


@pytest.mark.parametrize("arch", ["llama", "llama-tied"])
def test_the_model_uses_it_for_few_rows_and_refines_larger_batches_with_its_bits(tiny, arch):
    model = tiny.llm(arch, dtype="bfloat16").llm_engine.core.runner.model
    w = model._lm_dot
    assert w is not None and w.dtype == torch.bfloat16
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(2 * cpu_head_dot.MAX_ROWS, w.shape[1], generator=g).bfloat16()
    few = model.compute_logits(hidden[:4])
    assert torch.equal(few, cpu_head_dot.head(hidden[:4], w))  # float32 logits, nothing refined
    many = model.compute_logits(hidden)  # oneDNN's bf16 head, each row's leading 8 refined by entries()
    top = many.topk(8, dim=-1).indices[:4]
    assert torch.equal(many[:4].gather(1, top), few.gather(1, top))
    assert torch.equal(many[:4].argmax(-1), few.argmax(-1))


@pytest.mark.parametrize("rows", [4, 2 * cpu_head_dot.MAX_ROWS])
def test_a_soft_capped_head_stays_capped_on_both_paths(tiny, rows):
    """Gemma 2's final logit soft-cap applies to the few-row head's logits and to the refined leading logits of a
    larger batch alike (the refinement once wrote them uncapped)."""
    model = tiny.llm("gemma2", dtype="bfloat16").llm_engine.core.runner.model
    cap = model.final_logit_softcap
    assert cap and model._lm_dot is not None
    hidden = torch.randn(rows, model._lm_dot.shape[1], generator=torch.Generator().manual_seed(4)).bfloat16() * 30
    logits = model.compute_logits(hidden)
    exact = torch.tanh(cpu_head_dot.head(hidden[:4], model._lm_dot) / cap) * cap
    top = model.compute_logits_raw(hidden).float().topk(8, dim=-1).indices[:4]  # what the refinement recomputes
    assert bool((logits.abs() <= cap).all()) and bool((exact.abs() > cap / 2).any())  # the cap is in play
    assert torch.equal(logits[:4].gather(1, top), exact.gather(1, top))
