"""Dropping or shutting down an ``LLM`` gives its GPU memory back (skipped without CUDA).

On an H200, making, using and deleting ``LLM(...)`` several times in one process once failed
with "No GPU memory left for the KV cache". Each LLM here sizes its KV cache from
``gpu_memory_utilization`` (the profiling path, with CUDA graphs), so a leak of the previous
one's cache or graph pool would leave the next without room or shrink its cache.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import build_tiny_model  # noqa: E402

SLACK = 64 * 2**20  # allocator granularity, cuBLAS workspaces


def _make_and_use(folder: Path, util: float):
    from pagoda import LLM, SamplingParams

    llm = LLM(str(folder), dtype="bfloat16", device="cuda", gpu_memory_utilization=util, max_num_seqs=64,
              max_num_batched_tokens=2048)
    outs = llm.generate(["Hello world", "The capital of France is"],
                        SamplingParams(temperature=0, max_tokens=16, ignore_eos=True), use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 16 for o in outs)
    return llm


@pytest.mark.parametrize("how", ["del", "shutdown"])
def test_llm_loop_returns_gpu_memory(tmp_path, how):
    folder = build_tiny_model(tmp_path / "llama", "llama")
    gc.collect()
    torch.cuda.empty_cache()
    baseline = torch.cuda.memory_allocated()
    # Tensors earlier tests of this process left alive (module caches) pin their allocator segments, so cached
    # memory may sit beside them before this test starts: the loop must not add to it.
    baseline_cached = torch.cuda.memory_reserved() - baseline
    num_blocks = []
    for _ in range(3):
        llm = _make_and_use(folder, 0.5)
        num_blocks.append(llm.llm_engine.core.num_blocks)
        assert torch.cuda.memory_allocated() > baseline + SLACK  # the KV cache is there
        if how == "shutdown":
            llm.shutdown()
            assert torch.cuda.memory_allocated() <= baseline + SLACK
        del llm
        gc.collect()
        assert torch.cuda.memory_allocated() <= baseline + SLACK
        assert torch.cuda.memory_reserved() <= torch.cuda.memory_allocated() + max(baseline_cached, 0) + SLACK
    # Every LLM got the same cache: nothing of the previous one was counted as its own use.
    assert max(num_blocks) - min(num_blocks) <= max(num_blocks) // 100


def test_a_live_engine_is_not_counted_as_the_new_ones_use(tmp_path, caplog):
    folder = build_tiny_model(tmp_path / "llama", "llama")
    first = _make_and_use(folder, 0.4)
    with caplog.at_level("WARNING", logger="pagoda"):
        second = _make_and_use(folder, 0.4)
    assert "another engine" in caplog.text
    # Per-engine budgets: the second gets about as many blocks as the first.
    a, b = first.llm_engine.core.num_blocks, second.llm_engine.core.num_blocks
    assert abs(a - b) <= a // 50
    first.shutdown()
    second.shutdown()
