"""A tensor/pipeline-parallel engine whose start-up fails after its ranks started (a KV budget too small, a bad
draft model, ...) stops them at once, even while the failure's traceback keeps the half-built engine alive (a
notebook's ``sys.last_value``, ``except ... as e`` kept): no worker process is left, and an engine built next in
the same process starts (one process holds one distributed engine: torch's default group is process-wide).
"""

from __future__ import annotations

import psutil
import pytest
import torch.distributed as dist
from engine_checks import PROMPTS, greedy, token_ids

KW = {"dtype": "float32", "device": "cpu", "max_num_seqs": 4}


@pytest.mark.parametrize("parallel", [{"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}])
def test_failed_start_up_stops_its_ranks_and_the_next_engine_starts(tiny, parallel):
    from pagoda import LLM

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ValueError, match="--kv-cache-memory-bytes") as failed:
        LLM(str(tiny.path("llama")), kv_cache_memory_bytes=1000, **parallel, **KW)
    assert failed.value.__traceback__ is not None  # the half-built engine stays reachable from here
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not [p for p in left if p.status() != psutil.STATUS_ZOMBIE], left  # the worker ranks are stopped
    assert not dist.is_initialized()

    prompts = PROMPTS[:3]
    one = tiny.llm("llama", **KW).generate(prompts, greedy(max_tokens=6), use_tqdm=False)
    llm = LLM(str(tiny.path("llama")), **parallel, **KW)
    try:
        assert token_ids(llm.generate(prompts, greedy(max_tokens=6), use_tqdm=False)) == token_ids(one)
    finally:
        llm.llm_engine.shutdown()
