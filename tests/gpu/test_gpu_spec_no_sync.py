"""GPU check (skipped without CUDA): launching a speculative verify step never waits for the device.

Speculating, the engine completes every step before it schedules the next, so host work between "the
device finished step N" and "step N+1's kernels are queued" leaves the GPU idle. A host synchronisation in
the launch (``torch.tensor(..., device=cuda)``, ``.item()``, ``bool(t)``, boolean-mask indexing) moves the
sampler's whole host time into that gap. Here the verify graph's staging and the whole sampling of every
verify step (greedy fast path, and the rejection sampler with seeded sampling and logprobs) run under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronising call.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine_checks import PROMPTS, greedy, token_ids  # noqa: E402


def _no_sync(fn, errors: list[BaseException], calls: list[int]):
    def guarded(*a, **kw):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return fn(*a, **kw)
        except Exception as e:  # the engine would turn it into a failed request: keep it for the assert
            errors.append(e)
            raise
        finally:
            torch.cuda.set_sync_debug_mode("default")
            calls.append(1)

    return guarded


def test_verify_step_launch_never_synchronises(tiny):
    from pagoda import LLM, SamplingParams

    kw = {"dtype": "float32", "device": "cuda", "kv_cache_memory_bytes": 256 * 2**20}
    base_llm = LLM(str(tiny.path("llama")), **kw)
    base = base_llm.generate(PROMPTS[:4], greedy(24), use_tqdm=False)
    base_llm.shutdown()
    llm = LLM(str(tiny.path("llama")), speculative_config={"method": "synthetic", "num_speculative_tokens": 3}, **kw)
    runner = llm.llm_engine.core.runner
    assert runner.verify_graphs is not None
    errors: list[BaseException] = []
    calls: list[int] = []
    finish = runner._finish_step

    def finish_step(sched, inputs, fwd):
        if any(s.spec_token_ids for s in sched.scheduled):
            return _no_sync(finish, errors, calls)(sched, inputs, fwd)
        return finish(sched, inputs, fwd)

    runner._finish_step = finish_step
    runner.verify_graphs.run = _no_sync(runner.verify_graphs.run, errors, calls)
    outs = llm.generate(PROMPTS[:4], greedy(24), use_tqdm=False)  # plain greedy: the argmax fast path
    sampled = [SamplingParams(temperature=0.8, seed=i, max_tokens=24, logprobs=2) for i in range(4)]
    llm.generate(PROMPTS[:4], sampled, use_tqdm=False)  # the rejection sampler's general path
    assert not errors, errors
    assert calls and runner.verify_graphs.replays > 0
    assert token_ids(outs) == token_ids(base)
    llm.shutdown()
