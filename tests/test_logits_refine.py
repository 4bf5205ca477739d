"""layers/logits.py: each row's leading logits are recomputed in float32 from the same weights."""

import torch

from pagoda.layers.logits import refine_top_logits


def test_refined_entries_are_the_float32_products_and_the_rest_is_untouched():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 64, generator=g).bfloat16()
    weight = torch.randn(500, 64, generator=g).bfloat16()
    bf16 = torch.nn.functional.linear(hidden, weight).float()
    exact = hidden.float() @ weight.float().t()
    out = refine_top_logits(bf16.clone(), hidden, weight, k=8)
    top = bf16.topk(8, dim=-1).indices
    torch.testing.assert_close(out.gather(1, top), exact.gather(1, top), rtol=0, atol=1e-4)
    mask = torch.ones_like(out, dtype=torch.bool).scatter_(1, top, False)
    assert torch.equal(out[mask], bf16[mask])


def test_a_bf16_tie_is_broken_by_the_exact_values():
    """Two logits one bf16 step apart in float32 round to the same bf16 value; refinement restores the order."""
    hidden = torch.ones(1, 2).bfloat16()
    weight = torch.tensor([[10.0, 10.0], [10.0, 10.0625]]).bfloat16()  # rows sum to 20 and 20.0625 exactly
    logits = torch.tensor([[20.0, 20.0]])  # what a bf16 head returns for both (step 0.125 near 20)
    out = refine_top_logits(logits, hidden, weight, k=2)
    assert out.argmax().item() == 1 and out[0, 1].item() == 20.0625
