"""The transformers fallback on the GPU (skipped without CUDA): tiny models through the Triton attention
backend against HF on the GPU, fp32 greedy (top-5 rule), with chunked prefill and a batch of prompts; the
fallback runs eagerly (no CUDA graphs are captured for it)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_gpu_parity import PROMPTS, check_top5, hf_greedy_with_top5  # noqa: E402
from tiny_models import build_tiny_model  # noqa: E402


@pytest.mark.parametrize("arch,impl", [("gpt_neox", "auto"), ("gpt2", "auto"), ("llama", "transformers")])
def test_gpu_fallback_matches_hf(tmp_path, arch, impl):
    from pagoda import LLM, SamplingParams

    folder = build_tiny_model(tmp_path / arch, arch)
    llm = LLM(str(folder), dtype="float32", device="cuda", model_impl=impl, max_num_batched_tokens=32)
    assert llm.llm_engine.cfg.model_impl == "transformers"
    assert llm.llm_engine.core.runner.graphs is None  # eager only
    assert llm.llm_engine.core.runner.backend.name == "triton"
    outs = llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    refs = hf_greedy_with_top5(folder, PROMPTS, 16, torch.float32)
    for out, (toks, top5) in zip(outs, refs, strict=True):
        check_top5(out.outputs[0].token_ids, toks, top5)
    llm.shutdown()
