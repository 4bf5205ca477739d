"""Pooling on the GPU (skipped without CUDA): the varlen encoder attention (bf16) against the grouped SDPA
path, and tiny BERT / Llama embedders and a Qwen2 classifier on CUDA (fp32) against the same models on the CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pooling_models import build_pooling_model  # noqa: E402

TEXTS = ["the quick brown fox", "paris is the capital of france. " * 4, "tokens"]


def test_varlen_encoder_attention_matches_grouped_path():
    from pagoda.attention.encoder import encoder_attention, plan_encoder_attention, to_flat, to_grouped

    torch.manual_seed(0)
    lens = [5, 17, 17, 64, 1]
    qkv = torch.randn(sum(lens), 3 * 4 * 64, device="cuda", dtype=torch.bfloat16)
    qsl = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    plan = plan_encoder_attention(lens, qsl, qkv.dtype)
    assert plan.varlen is not None
    got = encoder_attention(qkv, plan, 4, 0.125)
    ref_plan = plan_encoder_attention(lens, qsl.cpu().long(), torch.float32)
    ref = to_flat(encoder_attention(to_grouped(qkv.float().cpu(), ref_plan), ref_plan, 4, 0.125), ref_plan)
    assert torch.allclose(got.float().cpu(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name,kw", [("bert", {}), ("llama", {"convert": "embed"}), ("qwen2-cls", {})])
def test_cuda_matches_cpu(tmp_path, name, kw):
    from pagoda import LLM

    path = build_pooling_model(tmp_path / name, name)
    outs = {}
    for dev in ("cpu", "cuda"):
        with LLM(str(path), dtype="float32", device=dev, **kw) as llm:
            res = llm.encode(TEXTS, use_tqdm=False)
            outs[dev] = [o.outputs.data for o in res]
    for a, b in zip(outs["cpu"], outs["cuda"], strict=True):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4)
