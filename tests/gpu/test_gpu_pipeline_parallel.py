"""Pipeline parallelism on GPUs (skipped without 2 CUDA devices): NCCL send/recv between stages, rank r on cuda:r,
the fused path's (h, residual) pair on the wire; TP=2 x PP=2 with 4 devices.

PP against PP=1 on a tiny model, fp32 and bf16 (tokens by the guide's top-5 rule). The workers inherit the
environment, so NCCL_NVLS_ENABLE=0 set for the machine stays set.
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


def _run(folder: Path, dtype: str, tp: int = 1, pp: int = 1):
    from pagoda import LLM

    llm = LLM(str(folder), dtype=dtype, tensor_parallel_size=tp, pipeline_parallel_size=pp,
              max_num_batched_tokens=64, max_num_seqs=4, gpu_memory_utilization=0.3)
    try:
        return llm.generate(PROMPTS, greedy(max_tokens=16, logprobs=5), use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("tp,pp", [(1, 2), (2, 2)])
def test_pp_matches_pp1_on_gpu(tmp_path, dtype, tp, pp):
    if tp * pp > torch.cuda.device_count():
        pytest.skip(f"needs {tp * pp} CUDA GPUs")
    folder = build_tiny_model(tmp_path / "llama", "llama")
    one, two = _run(folder, dtype), _run(folder, dtype, tp, pp)
    for a, b in zip(one, two, strict=True):
        ca, cb = a.outputs[0], b.outputs[0]
        compare_top5(cb.token_ids, ca.token_ids, [our_top(d) for d in cb.logprobs],
                     [our_top(d) for d in ca.logprobs], what=f"{dtype} tp{tp} pp{pp} {a.prompt[:20]!r}")
