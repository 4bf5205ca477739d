"""MoE models on the GPU (skipped without CUDA): the fused Triton MoE path, eager and in CUDA graphs.

fp32: greedy tokens equal HF's on the GPU (top-5 rule at a divergence, all but one sequence exact);
fp32 and bf16: CUDA graphs on and off give identical tokens (the fused path has no host sync).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_gpu_parity import PROMPTS, check_top5, hf_greedy_with_top5  # noqa: E402
from tiny_models import build_tiny_model  # noqa: E402


@pytest.mark.parametrize("arch", ["mixtral", "qwen2moe_dense", "qwen3moe"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_moe_matches_hf_and_graphs(tmp_path, arch, dtype):
    from pagoda import LLM, SamplingParams

    folder = build_tiny_model(tmp_path / arch, arch)
    sp = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    outs = {}
    for eager in (True, False):
        llm = LLM(str(folder), dtype=dtype, device="cuda", enforce_eager=eager, kv_cache_memory_bytes=256 * 2**20)
        assert any(getattr(m, "fused", False) for m in llm.llm_engine.core.runner.model.modules())
        outs[eager] = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, sp, use_tqdm=False)]
        del llm
        torch.cuda.empty_cache()
    assert outs[True] == outs[False], "CUDA graphs changed the output"
    if dtype == "float32":
        ref = hf_greedy_with_top5(folder, PROMPTS, 32, torch.float32)
        exact = 0
        for ours, (theirs, top5) in zip(outs[True], ref, strict=True):
            check_top5(ours, theirs, top5)
            exact += ours == theirs
        assert exact >= len(PROMPTS) - 1, f"only {exact}/{len(PROMPTS)} fp32 sequences token-exact"
