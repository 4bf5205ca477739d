"""Parallel sampling (issue 5, item 2): the samples of an n > 1 request share its prompt blocks.

Unit tests drive the scheduler with a fake model (as tests/test_scheduler.py): forks wait for
the leader's prompt, then hold its full blocks by reference, a partially filled block is
copied (copy-on-write) before the next forward, the prompt is computed once, and nothing
leaks. End-to-end: an n > 1 request on a tiny fp32 model gives the same tokens as n separate
requests while using fewer KV blocks and computing its prompt once.
"""

from __future__ import annotations

import pytest
from engine_checks import PROMPTS, assert_engine_clean
from test_prefix_caching import assert_no_leak, new_sched, req, run_all, step

from pagoda import SamplingParams

P10 = list(range(100, 110))  # 2 full blocks of 4 + 2 tokens: position 9 sits in block 2 with 8


def add_group(s, prompt, n, max_tokens=4, leader="0_r"):
    s.add_request(req(leader, prompt, max_tokens))
    for i in range(1, n):
        s.add_request(req(f"{i}_r", prompt, max_tokens), fork_of=leader)


@pytest.mark.parametrize("caching", [True, False])
def test_forks_share_prompt_blocks_and_copy_the_partial_one(caching):
    s = new_sched(caching=caching)
    add_group(s, P10, 4)
    assert s.num_waiting == 4 and len(s.waiting) == 1  # the forks wait for the leader, holding nothing
    out, _ = step(s)
    assert [x.request.request_id for x in out.scheduled] == ["0_r"] and out.num_batched_tokens == 10
    lead = s.kv.get_block_ids("0_r")
    # The leader's prompt is computed: each fork holds its two full blocks by reference and a
    # fresh block for position 9 onwards, into which block 2 (positions 8..9) gets copied.
    for i in range(1, 4):
        blocks = s.kv.get_block_ids(f"{i}_r")
        assert blocks[:2] == lead[:2] and blocks[2] not in lead
        assert s.requests[f"{i}_r"].num_computed_tokens == 9
    assert all(s.kv.pool.ref_cnt[b] == 4 for b in lead[:2])
    assert s.kv.pool.ref_cnt[lead[2]] == 1
    out, _ = step(s)
    assert sorted(out.block_copies) == sorted((lead[2], s.kv.get_block_ids(f"{i}_r")[2]) for i in range(1, 4))
    # Each fork recomputes only the last prompt token (and samples its own first token).
    assert {x.request.request_id: x.num_new_tokens for x in out.scheduled} == {"0_r": 1, "1_r": 1, "2_r": 1, "3_r": 1}
    assert all(x.sample for x in out.scheduled)
    out, _ = step(s)
    assert out.block_copies == []  # copies are handed out once
    run_all(s)


def test_fork_at_a_block_boundary_needs_no_copy():
    s = new_sched()
    prompt = list(range(200, 209))  # 9 tokens: position 8 starts block 2
    add_group(s, prompt, 3)
    step(s)
    lead = s.kv.get_block_ids("0_r")
    for i in (1, 2):
        assert s.kv.get_block_ids(f"{i}_r")[:2] == lead[:2]
    out, _ = step(s)
    assert out.block_copies == []
    run_all(s)


def test_forks_wait_through_chunked_prefill_and_preemption_of_the_leader():
    s = new_sched(num_blocks=64, budget=4)
    add_group(s, P10, 3)
    out, _ = step(s)  # first chunk of 4
    assert [x.request.request_id for x in out.scheduled] == ["0_r"]
    assert s.num_waiting == 2 and "1_r" not in s.kv.req_blocks
    s._preempt(s.requests["0_r"])  # the leader restarts from scratch; its forks keep waiting
    for _ in range(3):
        step(s)
    assert s.requests["1_r"].num_computed_tokens >= 9
    run_all(s)


def test_fork_without_a_free_block_falls_back_to_a_plain_request():
    # 4 usable blocks: the leader takes 3 (10 prompt tokens, block size 4); one left.
    s = new_sched(num_blocks=5, budget=64, caching=True)
    add_group(s, P10, 3, max_tokens=2)
    step(s)
    assert s.requests["1_r"].status.name == "RUNNING"  # took the last free block
    assert s.requests["2_r"] in s.waiting  # no block left: queued as a plain request
    run_all(s)


def test_leader_aborted_before_its_prompt_releases_its_forks():
    s = new_sched(budget=4)
    add_group(s, P10, 3)
    step(s)
    s.abort_requests(["0_r"])
    assert [r.request_id for r in s.waiting] == ["2_r", "1_r"] or [r.request_id for r in s.waiting] == ["1_r", "2_r"]
    assert s.num_pending_forks == 0
    run_all(s)


def test_aborting_a_pending_fork():
    s = new_sched(budget=4)
    add_group(s, P10, 3)
    s.abort_requests(["2_r"])
    assert s.num_pending_forks == 1
    run_all(s)


def test_max_tokens_one_leader_finishes_in_its_prompt_step():
    s = new_sched()
    add_group(s, P10, 3, max_tokens=1)
    _, fin = step(s)
    assert [r.request_id for r in fin] == ["0_r"]  # the forks were started before it freed its blocks
    out, fin = step(s)
    assert len(out.block_copies) == 2
    assert sorted(r.request_id for r in fin) == ["1_r", "2_r"]
    assert_no_leak(s)


# ------------------------------------------------------------------------------ end to end
def _run_counting(llm, prompts, params):
    """Generate step by step; return (outputs, peak KV blocks used, prompt tokens computed)."""
    eng = llm.llm_engine
    for i, (p, sp) in enumerate(zip(prompts, params, strict=True)):
        eng.add_request(f"ps{i}", p, sp)
    outs, peak, prompt_tokens = {}, 0, 0
    while eng.has_unfinished_requests():
        for o in eng.step():
            if o.finished:
                outs[o.request_id] = o
        peak = max(peak, eng.core.kv.pool.num_used_blocks)
        prompt_tokens += eng.last_stats.num_prompt_tokens
    assert_engine_clean(llm)
    return [outs[f"ps{i}"] for i in range(len(prompts))], peak, prompt_tokens


def test_n_request_uses_fewer_blocks_and_equals_separate_requests(tiny):
    llm = tiny.llm("llama", enable_prefix_caching=False)
    prompt = PROMPTS[2] * 6  # long enough to fill several blocks, and a partial last one
    n, T = 4, dict(temperature=1.0, max_tokens=12, ignore_eos=True)
    (grouped,), peak_n, ptok_n = _run_counting(llm, [prompt], [SamplingParams(n=n, seed=11, **T)])
    separate, peak_sep, ptok_sep = _run_counting(
        llm, [prompt] * n, [SamplingParams(seed=11 + i, **T) for i in range(n)]
    )
    # Child i is seeded with seed + i, so each shared-block sample equals a separate request.
    assert [c.token_ids for c in grouped.outputs] == [s.outputs[0].token_ids for s in separate]
    assert len({tuple(c.token_ids) for c in grouped.outputs}) == n
    P = len(grouped.prompt_token_ids)
    assert P % 16 != 1, "the test wants a partially filled shared block"
    assert ptok_sep == n * P
    assert ptok_n == P + (n - 1), "the prompt is computed once; each other sample recomputes its last token"
    assert peak_n < peak_sep


def test_greedy_n_with_prefix_caching_and_preemption(tiny):
    llm = tiny.llm("llama", num_gpu_blocks_override=12, max_num_seqs=8)
    prompts = [PROMPTS[2] * 3, PROMPTS[0] * 3]
    base = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True), use_tqdm=False)
    got = llm.generate(prompts, SamplingParams(n=3, temperature=0.0, max_tokens=40, ignore_eos=True), use_tqdm=False)
    assert llm.llm_engine.core.scheduler.num_preemptions_total > 0, "the test wants memory pressure"
    for g, b in zip(got, base, strict=True):
        assert [c.token_ids for c in g.outputs] == [b.outputs[0].token_ids] * 3
    assert_engine_clean(llm)


@pytest.mark.parametrize(("seed", "child_seeds"), [(-2, [-2, 2**64 - 1, 0]), (2**64 - 1, [2**64 - 1, 0, 1])])
def test_child_seeds_at_the_ends_of_the_seed_range_stay_seeds(tiny, seed, child_seeds):
    """Child i draws with seed + i kept a 64-bit seed: -1 (vLLM's "no seed") is never a child's seed, and a seed at the
    top of the range does not fail its children."""
    llm = tiny.llm("llama", enable_prefix_caching=False)
    T = dict(temperature=1.0, max_tokens=8, ignore_eos=True)
    (grouped,) = llm.generate([PROMPTS[0]], SamplingParams(n=len(child_seeds), seed=seed, **T), use_tqdm=False)
    separate = llm.generate([PROMPTS[0]] * len(child_seeds), [SamplingParams(seed=s, **T) for s in child_seeds],
                            use_tqdm=False)
    assert [c.token_ids for c in grouped.outputs] == [s.outputs[0].token_ids for s in separate]
    again = llm.generate([PROMPTS[0]], SamplingParams(n=len(child_seeds), seed=seed, **T), use_tqdm=False)[0]
    assert [c.token_ids for c in again.outputs] == [c.token_ids for c in grouped.outputs]  # every child seeded
    assert_engine_clean(llm)


def test_a_launch_that_fails_before_its_block_copies_fails_the_fork_waiting_for_one(tiny, monkeypatch):
    """The scheduler hands a fork's copy-on-write copy out once, with the next step. When that step's launch fails
    (here: its grammar bitmask, which runs before the runner applies the copies) and the fork is not in it (the
    token budget went to a long prompt), the fork fails too: before, it went on from a tail block never copied,
    and its tokens silently differed from an n = 1 request's."""
    import logging

    prompt, long_prompt = list(range(20, 30)), list(range(100, 200))  # 10 tokens: the fork copies a partial block
    greedy = dict(temperature=0.0, ignore_eos=True)
    ref = tiny.llm("llama", enable_prefix_caching=False)
    want = ref.generate([{"prompt_token_ids": prompt}], SamplingParams(max_tokens=8, **greedy),
                        use_tqdm=False)[0].outputs[0].token_ids
    llm = tiny.llm("llama", block_size=8, max_num_batched_tokens=16, max_num_seqs=8, enable_prefix_caching=False)
    eng, core = llm.llm_engine, llm.llm_engine.core
    real = core.structured.grammar_bitmask
    failed = []

    def fail_the_copy_step(sched):
        forks_out = [d for _, d in sched.block_copies
                     if not any(d in core.kv.get_block_ids(s.request.request_id) for s in sched.scheduled)]
        if forks_out and not failed:
            failed.append(sched.block_copies)
            raise RuntimeError("injected launch failure")
        return real(sched)

    monkeypatch.setattr(core.structured, "grammar_bitmask", fail_the_copy_step)
    monkeypatch.setattr(logging.getLogger("pagoda"), "disabled", True)  # _fail logs the traceback
    eng.add_request("x", {"prompt_token_ids": prompt}, SamplingParams(n=2, max_tokens=8, **greedy), final_only=True)
    eng.add_request("big", {"prompt_token_ids": long_prompt}, SamplingParams(max_tokens=4, **greedy), final_only=True)
    final = {}
    while eng.has_unfinished_requests():
        final.update((o.request_id, o) for o in eng.step() if o.finished)
    assert failed, "the test wants a failed launch holding the copy of a fork outside the step"
    samples = final["x"].outputs
    assert [c.finish_reason for c in samples] == ["error", "error"]
    assert all(c.token_ids == want[:len(c.token_ids)] for c in samples)
    assert final["big"].outputs[0].finish_reason == "error"
    assert_engine_clean(llm)
