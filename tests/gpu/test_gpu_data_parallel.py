"""Data parallelism on GPUs (skipped without enough CUDA devices): each replica on its own devices.

``--data-parallel-size 2`` (x ``--tensor-parallel-size`` 1 or 2) through ``AsyncLLM``: every replica's process
takes memory on its own slice of the devices (CUDA_VISIBLE_DEVICES set per replica), and the
greedy tokens follow DP=1's by the guide's top-5 rule.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine_checks import PROMPTS, compare_top5, greedy, our_top  # noqa: E402
from tiny_models import build_tiny_model  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                reason="needs 2 CUDA GPUs")


def _free() -> list[int]:
    return [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]


async def _serve(folder: Path, dp: int, tp: int, used: list[list[int]]):
    from pagoda.config import EngineArgs
    from pagoda.engine.async_llm import AsyncLLM, final_output

    eng = AsyncLLM(EngineArgs(model=str(folder), dtype="float32", data_parallel_size=dp, tensor_parallel_size=tp,
                              gpu_memory_utilization=0.3, max_num_batched_tokens=64))
    before = _free()
    await eng.start()
    try:
        used.append([b - a for b, a in zip(before, _free(), strict=True)])
        outs = await asyncio.gather(*(final_output(eng.add_request(f"r{i}", p, greedy(16, logprobs=5)))
                                      for i, p in enumerate(PROMPTS)))
        return outs
    finally:
        await eng.shutdown()


@pytest.mark.parametrize("tp", [1, 2])
def test_dp2_replicas_use_their_own_gpus(tmp_path, tp):
    if torch.cuda.device_count() < 2 * tp:
        pytest.skip(f"needs {2 * tp} CUDA GPUs")
    folder = build_tiny_model(tmp_path / "llama", "llama")
    used: list[list[int]] = []
    ref = asyncio.run(_serve(folder, 1, 1, used))
    outs = asyncio.run(_serve(folder, 2, tp, used))
    total = torch.cuda.mem_get_info(0)[1]
    busy = [i for i, u in enumerate(used[1]) if u > 0.2 * total]
    assert busy == list(range(2 * tp)), used[1]  # one device per rank of each replica, none shared
    for a, b in zip(ref, outs, strict=True):
        ca, cb = a.outputs[0], b.outputs[0]
        compare_top5(cb.token_ids, ca.token_ids, [our_top(d) for d in cb.logprobs],
                     [our_top(d) for d in ca.logprobs], what=f"dp2 tp{tp} {a.prompt[:20]!r}")
