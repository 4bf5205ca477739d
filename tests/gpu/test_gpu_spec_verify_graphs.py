"""GPU checks (skipped without CUDA): speculative verify steps replay CUDA graphs (worker/verify_graphs.py).

Tiny Llama, fp32, Triton backend, graphs on: greedy tokens and logprobs are identical with and without
speculation (the timing-only synthetic proposer, which always proposes k tokens, and an EAGLE-3 head,
whose aux hidden states come out of the decode and verify graphs), and verify steps replay a graph
(``VerifyGraphs.replays`` grows); n-gram and suffix speculation too (drafts of varying length, padded in the
graph).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine_checks import PROMPTS, greedy, token_ids  # noqa: E402

PROMPTS_SPEC = [" ".join(["one two three four five six seven"] * 5), *PROMPTS[:5]]


def _same(outs, base) -> None:
    assert token_ids(outs) == token_ids(base)
    for o, b in zip(outs, base, strict=True):
        for d, e in zip(o.outputs[0].logprobs, b.outputs[0].logprobs, strict=True):
            assert d.keys() == e.keys()
            assert all(math.isclose(d[t].logprob, e[t].logprob, abs_tol=1e-3) for t in d)


@pytest.mark.parametrize("method", ["synthetic", "ngram", "suffix", "eagle3"])
def test_verify_steps_replay_a_graph_and_change_no_token(tiny, method):
    from test_spec_eagle import TARGET, _spec

    from pagoda import LLM

    target = str(tiny.path(TARGET))
    p = greedy(32, logprobs=2)
    kw = {"dtype": "float32", "device": "cuda", "kv_cache_memory_bytes": 256 * 2**20}
    base_llm = LLM(target, **kw)
    base = base_llm.generate(PROMPTS_SPEC, p, use_tqdm=False)
    base_llm.shutdown()
    spec = {"method": method, "num_speculative_tokens": 3}
    if method == "eagle3":
        spec = _spec(tiny, "eagle3")
    llm = LLM(target, speculative_config=spec, **kw)
    runner = llm.llm_engine.core.runner
    assert runner.graphs is not None and runner.verify_graphs is not None and runner.verify_graphs.q == 4
    _same(llm.generate(PROMPTS_SPEC, p, use_tqdm=False), base)
    _same(llm.generate(PROMPTS_SPEC[:1], p, use_tqdm=False), base[:1])  # batch 1 too
    assert runner.verify_graphs.replays > 0  # n-gram / suffix drafts vary in length: rows padded to k + 1
    assert llm.llm_engine.core.scheduler.spec_stats.num_drafts > 0
    llm.shutdown()


def test_constrained_verify_steps_in_a_graph_change_no_token(tiny):
    """Structured outputs with n-gram speculation on the GPU: the verify graph's rows take the grammar's per-position
    bitmask rows (sent by a pinned, non-blocking copy) and the greedy answers are those without speculation."""
    from test_spec_structured import NGRAM, PROMPTS, _params

    from pagoda import LLM

    kw = {"dtype": "float32", "device": "cuda", "kv_cache_memory_bytes": 256 * 2**20}
    base_llm = LLM(str(tiny.path("llama")), **kw)
    base = base_llm.generate(PROMPTS, _params(), use_tqdm=False)
    base_llm.shutdown()
    llm = LLM(str(tiny.path("llama")), speculative_config=NGRAM, **kw)
    runner = llm.llm_engine.core.runner
    _same(llm.generate(PROMPTS, _params(), use_tqdm=False), base)
    assert runner.verify_graphs is not None and runner.verify_graphs.replays > 0
    assert llm.llm_engine.core.scheduler.spec_stats.num_drafts > 0
    llm.shutdown()
