"""Features must not change outputs (GUIDE section 4): fp32 greedy tokens are identical with tiny
prefill chunks, one sequence at a time, other block sizes, chunked prefill off, and a KV cache so
small that requests are preempted and recomputed. After every run the engine is idle, its
invariants hold and it holds no KV block.
"""

from __future__ import annotations

import math

import pytest
from engine_checks import NEW_TOKENS, PROMPTS, assert_engine_clean, greedy, token_ids

LONGEST = max(PROMPTS, key=len)

_base: dict[str, list] = {}


def baseline(tiny, arch: str) -> list:
    """Default configuration (block 16, chunked prefill with a 2048-token budget, 256 seqs)."""
    if arch not in _base:
        llm = tiny.llm(arch)
        _base[arch] = llm.generate(PROMPTS, greedy(logprobs=2, prompt_logprobs=2), use_tqdm=False)
        assert_engine_clean(llm)
    return _base[arch]


def run(tiny, arch: str, **kwargs):
    from pagoda import LLM

    llm = LLM(str(tiny.path(arch)), dtype="float32", **kwargs)
    outs = llm.generate(PROMPTS, greedy(logprobs=2, prompt_logprobs=2), use_tqdm=False)
    assert_engine_clean(llm)
    return llm, outs


def assert_same(outs, base, what: str) -> None:
    assert token_ids(outs) == token_ids(base), what
    for o, b in zip(outs, base, strict=True):
        assert o.outputs[0].text == b.outputs[0].text
        assert o.outputs[0].finish_reason == "length"
        # Logprobs too, reported once per position (no duplicates after a recompute).
        assert len(o.outputs[0].logprobs) == NEW_TOKENS
        for d, e in zip(o.outputs[0].logprobs, b.outputs[0].logprobs, strict=True):
            assert d.keys() == e.keys()
            for t in d:
                assert math.isclose(d[t].logprob, e[t].logprob, abs_tol=1e-4), what
        assert len(o.prompt_logprobs) == len(b.prompt_logprobs)
        assert o.prompt_logprobs[0] is None
        for d, e in zip(o.prompt_logprobs[1:], b.prompt_logprobs[1:], strict=True):
            assert d is not None and d.keys() == e.keys(), what
            for t in d:
                assert math.isclose(d[t].logprob, e[t].logprob, abs_tol=1e-4), what


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_tiny_prefill_chunks(tiny, arch):
    llm, outs = run(tiny, arch, max_num_batched_tokens=8, max_num_seqs=8)
    sched = llm.llm_engine.core.scheduler
    assert sched.max_num_batched_tokens == 8
    assert_same(outs, baseline(tiny, arch), "chunked prefill with an 8-token budget")


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_one_sequence_at_a_time(tiny, arch):
    _, outs = run(tiny, arch, max_num_seqs=1)
    assert_same(outs, baseline(tiny, arch), "max_num_seqs=1")


@pytest.mark.parametrize("block_size", [1, 8, 32])
def test_block_size(tiny, block_size):
    llm, outs = run(tiny, "llama", block_size=block_size)
    assert llm.llm_engine.core.kv.block_size == block_size
    assert_same(outs, baseline(tiny, "llama"), f"block_size={block_size}")


def test_chunked_prefill_disabled(tiny):
    llm, outs = run(tiny, "llama", enable_chunked_prefill=False, max_num_batched_tokens=512)
    assert not llm.llm_engine.core.scheduler.enable_chunked_prefill
    assert_same(outs, baseline(tiny, "llama"), "chunked prefill off")


def test_batch_of_one_vs_many(tiny):
    llm = tiny.llm("llama")
    base = baseline(tiny, "llama")
    for i in (0, 4, 9):
        alone = llm.generate(PROMPTS[i], greedy(logprobs=2, prompt_logprobs=2), use_tqdm=False)
        assert_same(alone, [base[i]], f"prompt {i} alone")
    assert_engine_clean(llm)


@pytest.mark.parametrize("arch,kwargs", [
    ("llama", dict(num_gpu_blocks_override=24)),
    ("qwen3", dict(num_gpu_blocks_override=44, block_size=8, max_num_batched_tokens=16, max_num_seqs=4)),
])
def test_preemption(tiny, arch, kwargs):
    """The longest request (275 + 32 tokens) needs 20 blocks of 16 (39 of 8); a cache only a little
    larger than that must preempt while the other requests run beside it."""
    llm, outs = run(tiny, arch, **kwargs)
    core = llm.llm_engine.core
    assert core.kv.num_blocks == kwargs["num_gpu_blocks_override"]
    assert core.scheduler.num_preemptions_total > 0, "the cache was meant to be too small for the batch"
    assert_same(outs, baseline(tiny, arch), f"preemption {kwargs}")


def test_add_and_abort_while_running(tiny):
    """Requests join a running batch and others leave it (abort) without changing anyone's tokens."""
    llm = tiny.llm("llama", max_num_batched_tokens=16, max_num_seqs=3)
    base = baseline(tiny, "llama")
    eng = llm.llm_engine
    done: dict[str, list[int]] = {}
    eng.add_request("b", PROMPTS[2], greedy())
    eng.add_request("victim-running", PROMPTS[7], greedy())
    eng.add_request("a", PROMPTS[9], greedy())  # its long prefill takes the budget for many steps
    eng.add_request("victim-waiting", PROMPTS[8], greedy())
    for step in range(200):
        for out in eng.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
        core = eng.core
        core.check_integrity()
        if step == 3:
            assert core.kv.get_block_ids("victim-running"), "expected the request to be running"
            eng.abort_request("victim-running")
            assert not core.kv.get_block_ids("victim-running")
            eng.add_request("c", PROMPTS[5], greedy())
        if step == 5:
            assert any(r.request_id == "victim-waiting" for r in core.scheduler.waiting)
            eng.abort_request(["victim-waiting", "no-such-request"])
            eng.add_request("d", PROMPTS[0], greedy())
        if not eng.has_unfinished_requests() and step > 5:
            break
    assert set(done) == {"a", "b", "c", "d"}
    assert done["a"] == base[9].outputs[0].token_ids
    assert done["b"] == base[2].outputs[0].token_ids
    assert done["c"] == base[5].outputs[0].token_ids
    assert done["d"] == base[0].outputs[0].token_ids
    assert_engine_clean(llm)
