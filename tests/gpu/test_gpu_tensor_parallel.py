"""Tensor parallelism on GPUs (skipped without 2 CUDA devices): NCCL, rank r on cuda:r.

TP=2 against TP=1 on a tiny model, fp32 and bf16 (tokens by the guide's top-5 rule: NCCL's sum order may flip
a near-tie). The workers inherit the environment, so NCCL_NVLS_ENABLE=0 set for the machine stays set.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                reason="needs 2 CUDA GPUs")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine_checks import PROMPTS, compare_top5, greedy, our_top  # noqa: E402
from tiny_models import build_tiny_model  # noqa: E402


def _run(folder: Path, tp: int, dtype: str):
    from pagoda import LLM

    llm = LLM(str(folder), dtype=dtype, tensor_parallel_size=tp, max_num_batched_tokens=64,
              gpu_memory_utilization=0.3)
    try:
        return llm.generate(PROMPTS, greedy(max_tokens=16, logprobs=5), use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tp2_matches_tp1_on_gpu(tmp_path, dtype):
    folder = build_tiny_model(tmp_path / "llama", "llama")
    one, two = _run(folder, 1, dtype), _run(folder, 2, dtype)
    for a, b in zip(one, two, strict=True):
        ca, cb = a.outputs[0], b.outputs[0]
        compare_top5(cb.token_ids, ca.token_ids, [our_top(d) for d in cb.logprobs],
                     [our_top(d) for d in ca.logprobs], what=f"{dtype} {a.prompt[:20]!r}")
