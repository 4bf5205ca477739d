"""Grouped encoder attention (pagoda.attention.encoder) against one plain SDPA call per sequence."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from pagoda.attention.encoder import PAD_WASTE, _groups, encoder_attention, plan_encoder_attention, to_flat, to_grouped


def _reference(qkv: torch.Tensor, lens: list[int], heads: int, scale: float) -> torch.Tensor:
    T, hd = qkv.shape[0], qkv.shape[1] // 3
    q, k, v = qkv.view(T, 3, heads, hd // heads).unbind(1)
    out, s = [], 0
    for n in lens:
        qs, ks, vs = (t[s : s + n].transpose(0, 1) for t in (q, k, v))
        out.append(F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(0, 1).reshape(n, hd))
        s += n
    return torch.cat(out)


@pytest.mark.parametrize("lens", [[5], [4, 4, 4], [3, 9, 1, 9, 7, 2, 30, 29, 28], [1, 1], [17, 3]])
def test_grouped_matches_per_sequence(lens: list[int]) -> None:
    torch.manual_seed(0)
    heads, d = 3, 8
    qkv = torch.randn(sum(lens), 3 * heads * d)
    qsl = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    plan = plan_encoder_attention(lens, qsl, qkv.dtype)
    got = to_flat(encoder_attention(to_grouped(qkv, plan), plan, heads, 1 / math.sqrt(d)), plan)
    torch.testing.assert_close(got, _reference(qkv, lens, heads, 1 / math.sqrt(d)), rtol=1e-5, atol=1e-5)


def test_groups_bound_the_padding() -> None:
    rng = random.Random(0)
    lens = [rng.randint(1, 300) for _ in range(200)]
    groups = _groups(lens)
    assert sorted(i for g in groups for i in g) == list(range(len(lens)))
    for g in groups:
        m = max(lens[i] for i in g)
        assert lens[g[0]] == m and len(g) * m <= PAD_WASTE * sum(lens[i] for i in g)
    assert len(groups) < len(set(lens))  # sequences of different lengths share calls
