"""top_k / top_p / min_p against Hugging Face's logits warpers on the same logits, ties included.

vLLM's sampler and HF's warpers agree on the edges: top_k keeps every token tied with the k-th largest value
(a mask by value, not by position; ties are common in bf16 logits), and top_p removes a token when it and the
less likely ones hold at most ``1 - top_p`` (so of two equally likely tokens at top_p=0.5 one stays).
"""

from __future__ import annotations

import pytest
import torch
from transformers.generation.logits_process import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from pagoda.layers.sampler import sampling_probs
from pagoda.sampling_params import SamplingParams

V = 400


def _kept(logits: torch.Tensor, **kw) -> torch.Tensor:
    """The tokens pagoda's sampler may draw for one row (probability above zero)."""
    return sampling_probs(logits.clone(), [SamplingParams(**kw)])[0] > 0


def _hf_kept(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0) -> torch.Tensor:
    """HF's order for these three (vLLM's is min_p first; the cases below do not combine min_p with the others)."""
    x = logits.clone()
    if top_k:
        x = TopKLogitsWarper(top_k)(None, x)
    if top_p < 1.0:
        x = TopPLogitsWarper(top_p)(None, x)
    if min_p:
        x = MinPLogitsWarper(min_p)(None, x)
    return x[0] > float("-inf")


def _tied_logits(seed: int) -> torch.Tensor:
    """[1, V] logits with many ties: bf16-rounded (as a bf16 LM head gives them) or small integers."""
    g = torch.Generator().manual_seed(seed)
    if seed % 2:
        return (torch.randn(1, V, generator=g) * 2).to(torch.bfloat16).float()
    return torch.randint(-3, 3, (1, V), generator=g).float()


@pytest.mark.parametrize("top_k", [1, 2, 5, 50])
def test_top_k_keeps_the_tokens_tied_with_the_kth(top_k):
    for seed in range(40):
        x = _tied_logits(seed)
        assert torch.equal(_kept(x, top_k=top_k), _hf_kept(x, top_k=top_k)), seed
    # The plainest case: two tokens share the largest logit; top_k=1 draws either, as vLLM's and HF's.
    x = torch.zeros(1, V)
    x[0, 7] = x[0, 11] = 5.0
    assert _kept(x, top_k=1).nonzero().flatten().tolist() == [7, 11]


def test_top_p_of_two_equally_likely_tokens_keeps_one():
    x = torch.full((1, V), float("-inf"))
    x[0, 5] = x[0, 9] = 1.0
    assert int(_kept(x, top_p=0.5).sum()) == 1 == int(_hf_kept(x, top_p=0.5).sum())
    assert int(_kept(x, top_p=0.51).sum()) == 2 == int(_hf_kept(x, top_p=0.51).sum())


@pytest.mark.parametrize("top_p", [0.05, 0.3, 0.5, 0.8, 0.95, 0.999])
def test_top_p_and_top_k_with_top_p_match_hf(top_p):
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, V, generator=g) * (1 + seed % 4)
        assert torch.equal(_kept(x, top_p=top_p), _hf_kept(x, top_p=top_p)), seed
        for k in (3, 40):
            assert torch.equal(_kept(x, top_k=k, top_p=top_p), _hf_kept(x, top_k=k, top_p=top_p)), (seed, k)


@pytest.mark.parametrize("min_p", [0.01, 0.2, 0.9, 1.0])
def test_min_p_matches_hf(min_p):
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, V, generator=g) * (1 + seed % 4)
        assert torch.equal(_kept(x, min_p=min_p), _hf_kept(x, min_p=min_p)), seed


def test_a_row_is_truncated_the_same_in_any_batch():
    """Another row's top_k / top_p (which turn the sort on for the whole batch) leave a row's distribution as
    it is alone, so a seeded request draws the same tokens whatever it is batched with."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, V, generator=g)
    rows = [SamplingParams(), SamplingParams(top_k=7), SamplingParams(top_p=0.6, temperature=0.7)]
    batched = sampling_probs(x.clone(), rows)
    for i, p in enumerate(rows):
        assert torch.equal(batched[i], sampling_probs(x[i:i + 1].clone(), [p])[0]), i


def test_top_p_cut_inside_a_tie_keeps_the_lowest_ids():
    """Ten equally likely tokens at scattered ids and top_p=0.35: four stay (the tail rule), and they are the four
    lowest ids, whatever order the ids come in, so every device keeps the same set (a stable sort's order)."""
    ids = [390, 3, 77, 250, 12, 301, 41, 199, 5, 160]
    x = torch.full((1, V), -30.0)
    x[0, ids] = 4.0
    kept = _kept(x, top_p=0.35).nonzero().flatten().tolist()
    assert kept == sorted(ids)[:4]
    assert int(_hf_kept(x, top_p=0.35).sum()) == 4  # the same count as HF's warper
