"""A second tensor-parallel engine in the process whose first one failed before its ranks met.

A worker that exits before the rendezvous (an import error, the OOM killer) fails start-up at once with
``WorkerDied``; the user fixes the cause and builds the engine again in the same process (a notebook). That
engine must start and give TP=1's tokens, not wait ``PAGODA_DIST_TIMEOUT_S`` and fail with gloo's "Wait timeout"
(torch's process-wide group counter stayed raised by the failed rendezvous, so rank 0 and its fresh workers
looked for each other under different group names).
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch.distributed as dist
from engine_checks import PROMPTS, greedy, token_ids

KW = {"dtype": "float32", "device": "cpu", "max_num_seqs": 4}


def test_tp_engine_starts_after_a_start_up_whose_worker_died_before_the_rendezvous(tiny, monkeypatch):
    from pagoda import LLM
    from pagoda.distributed import executor
    from pagoda.distributed.executor import WorkerDied

    def worker_that_dies_at_once(cmd, **kw):  # the worker's interpreter exits before it joins the group
        return subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"], **kw)

    monkeypatch.setattr(executor, "subprocess",
                        SimpleNamespace(Popen=worker_that_dies_at_once, TimeoutExpired=subprocess.TimeoutExpired))
    with pytest.raises(WorkerDied, match=r"tensor-parallel rank 1 of 2 died \(exit code 3\)"):
        LLM(str(tiny.path("llama")), tensor_parallel_size=2, **KW)
    monkeypatch.undo()
    assert not dist.is_initialized()

    prompts = PROMPTS[:3]
    one = tiny.llm("llama", **KW).generate(prompts, greedy(max_tokens=6), use_tqdm=False)
    llm = LLM(str(tiny.path("llama")), tensor_parallel_size=2, **KW)
    try:
        assert token_ids(llm.generate(prompts, greedy(max_tokens=6), use_tqdm=False)) == token_ids(one)
    finally:
        llm.llm_engine.shutdown()
