"""The sampler's top-k / top-p mask on CUDA equals the CPU's on the same logits, ties included (skipped without
CUDA): the kept set must not depend on the device, so a seeded request draws from the same tokens anywhere."""

from __future__ import annotations

import pytest
import torch

from pagoda.layers.sampler import _apply_top_k_top_p
from pagoda.sampling_params import SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_top_k_top_p_mask_is_the_same_on_cuda_and_cpu():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 50000, generator=g).round(decimals=1)  # full of ties, as bf16 logits are
    params = [SamplingParams(temperature=1.0, top_k=k, top_p=p) for k, p in
              [(1, 1.0), (5, 1.0), (50, 0.9), (0, 0.5), (-1, 0.95), (3, 0.3), (1000, 0.99), (2, 1.0)]]
    cpu = _apply_top_k_top_p(x.clone(), params)
    cuda = _apply_top_k_top_p(x.cuda(), params).cpu()
    assert torch.equal(cpu > float("-inf"), cuda > float("-inf"))
    assert torch.equal(cpu, cuda)
