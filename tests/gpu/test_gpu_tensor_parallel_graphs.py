"""Tensor parallelism with CUDA graphs on GPUs (skipped without 2 CUDA devices).

Every rank captures its decode graphs at start-up in lockstep (the forward's NCCL all-reduces inside each graph)
and replays them together; the vocabulary-parallel LM head's gather runs eagerly after the replay. TP=2 with
graphs against TP=2 eager and TP=1 with graphs (tokens by the top-5 rule: NCCL's sum order may flip a near-tie),
with and without async scheduling, on a tied-embedding model whose vocabulary does not split evenly, and a MoE.
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


def _run(folder: Path, tp: int, **kw):
    from pagoda import LLM

    llm = LLM(str(folder), dtype="float32", tensor_parallel_size=tp, max_num_batched_tokens=64,
              gpu_memory_utilization=0.3, **kw)
    try:
        runner = llm.llm_engine.core.runner
        assert (runner.graphs is not None) == (not kw.get("enforce_eager", False)), "decode graphs not captured"
        return llm.generate(PROMPTS, greedy(max_tokens=16, logprobs=5), use_tqdm=False)
    finally:
        llm.llm_engine.shutdown()


def _same_by_top5(a_outs, b_outs, what: str) -> None:
    for a, b in zip(a_outs, b_outs, strict=True):
        ca, cb = a.outputs[0], b.outputs[0]
        compare_top5(cb.token_ids, ca.token_ids, [our_top(d) for d in cb.logprobs],
                     [our_top(d) for d in ca.logprobs], what=f"{what} {a.prompt[:20]!r}")


@pytest.mark.parametrize("arch,tie,extra_vocab", [("llama", True, 1), ("qwen3moe", False, 0)])
@pytest.mark.parametrize("async_scheduling", [False, True])
def test_tp2_graphs_match_eager_and_tp1(tmp_path, arch, tie, extra_vocab, async_scheduling):
    folder = build_tiny_model(tmp_path / arch, arch, tie=tie, extra_vocab=extra_vocab)
    graphs = _run(folder, 2, async_scheduling=async_scheduling)
    _same_by_top5(_run(folder, 2, enforce_eager=True), graphs, f"{arch} TP2 eager vs graphs")
    _same_by_top5(_run(folder, 1, async_scheduling=async_scheduling), graphs, f"{arch} TP1 vs TP2 graphs")
