"""Async scheduling: step N+1 is scheduled (and its inputs prepared) before step N's tokens
reach the host. It must change nothing a user sees.

* The scheduler with a FAKE model run as a one-step-deep pipeline ends every request with
  exactly the tokens of the synchronous run, under EOS stops (the extra row is dropped),
  length stops (never scheduled past ``max_tokens``), preemption of requests in flight and
  aborts in flight, and leaks no block.
* The engine (tiny Llama, fp32, CPU) gives identical tokens and logprobs with async scheduling
  on and off for greedy, seeded, parallel (n > 1), penalised and ``min_tokens`` requests, with
  a KV cache small enough to preempt, and did run steps ahead.
"""

from __future__ import annotations

import random

import pytest
from engine_checks import assert_engine_clean
from test_scheduler import EOS, assert_no_leak, make_req, new_sched

from pagoda.core.async_scheduler import AsyncScheduler
from pagoda.core.request import Request, RequestStatus
from pagoda.core.scheduler import Scheduler, SchedulerOutput
from pagoda.sampling_params import SamplingParams


def fake_next(tokens: list[int]) -> int:
    """A deterministic 'model' of the tokens so far; sometimes EOS."""
    h = 7
    for t in tokens:
        h = (h * 131 + t) % 1_000_003
    return EOS if h % 29 == 0 else 10 + h % 500


def fake_launch(out: SchedulerOutput, prev: dict[str, list[int]]) -> dict[str, list[int]]:
    """'Run' a step at launch: a token still in flight is taken from the previous step's
    results, as the model runner takes it from the previous step's device tensor."""
    sampled = {}
    for x in out.scheduled:
        r = x.request
        end = x.start + x.num_new_tokens
        assert x.num_new_tokens >= 1 and x.start >= r.num_computed_tokens
        toks = r.all_token_ids[:end]
        if len(toks) < end:
            assert len(toks) == end - 1 and x.num_new_tokens == 1, "only a decode row waits for its input"
            toks = toks + prev[r.request_id]
        if x.sample:
            sampled[r.request_id] = [fake_next(toks)]
    return sampled


def drive(s: Scheduler, reqs: list[Request], pipelined: bool, abort_at: dict[int, str] | None = None) -> int:
    """Run to completion; returns how many steps were launched with a token still unknown."""
    for r in reqs:
        s.add_request(r)
    inflight: tuple[SchedulerOutput, dict[str, list[int]]] | None = None
    ahead = 0
    for i in range(20_000):
        if not (s.has_unfinished_requests() or inflight):
            break
        if abort_at and i in abort_at:
            s.abort_requests([abort_at[i]])
        if not pipelined:
            out = s.schedule()
            if not out.is_empty:
                s.update_from_output(out, fake_launch(out, {}))
            assert_no_leak(s)
            continue
        out = s.schedule()
        prev = inflight[1] if inflight else {}
        ahead += any(x.request.num_placeholders and x.start + x.num_new_tokens > x.request.num_tokens
                     for x in out.scheduled)
        launched = None if out.is_empty else (out, fake_launch(out, prev))
        for x in out.scheduled:
            assert x.request.num_output_tokens + x.request.num_placeholders <= x.request.max_tokens
        if inflight:
            s.update_from_output(*inflight)
        inflight = launched
        s.check_integrity()
    assert not s.has_unfinished_requests() and inflight is None
    assert_no_leak(s)
    for r in reqs:
        assert r.num_inflight_tokens == 0 and r.num_placeholders == 0
    return ahead


def workload(seed: int, n: int = 40) -> list[Request]:
    rng = random.Random(seed)
    reqs = []
    for i in range(n):  # prompts from the seeded rng (make_req's come from the per-process str hash)
        max_tokens = rng.randint(1, 30)
        prompt = [10 + rng.randrange(500) for _ in range(rng.randint(1, 60))]
        reqs.append(Request(f"r{i}", prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0), {EOS},
                            max_tokens, arrival_time=i))
    return reqs


@pytest.mark.parametrize("num_blocks", [400, 40])  # 40 blocks of 4: constant preemption
def test_pipelined_scheduler_gives_the_synchronous_tokens(num_blocks):
    sync_reqs, async_reqs = workload(1), workload(1)
    drive(new_sched(num_blocks=num_blocks, max_num_seqs=8, budget=32), sync_reqs, pipelined=False)
    s = new_sched(num_blocks=num_blocks, max_num_seqs=8, budget=32, cls=AsyncScheduler)
    ahead = drive(s, async_reqs, pipelined=True)
    assert ahead > 50, "decode steps should run ahead of their last token"
    if num_blocks == 40:
        assert s.num_preemptions_total > 0
    stopped_by_eos = 0
    for a, b in zip(sync_reqs, async_reqs, strict=True):
        assert b.output_token_ids == a.output_token_ids, a.request_id
        assert b.status == a.status
        stopped_by_eos += a.status == RequestStatus.FINISHED_STOPPED
    assert stopped_by_eos > 0, "the workload should exercise EOS stops"


def test_abort_in_flight_frees_everything():
    reqs = [make_req(f"r{i}", 5 + 3 * i, 30, arrival=i, ignore_eos=True) for i in range(12)]
    s = new_sched(num_blocks=200, cls=AsyncScheduler)
    drive(s, reqs, pipelined=True, abort_at={5: "r0", 9: "r3", 10: "r4"})
    for r in reqs:
        want = RequestStatus.FINISHED_ABORTED if r.request_id in ("r0", "r3", "r4") else RequestStatus.FINISHED_LENGTH
        assert r.status == want, r.request_id


def test_no_row_is_scheduled_past_max_tokens():
    s = new_sched(cls=AsyncScheduler)
    r = make_req("a", 5, 2, ignore_eos=True)
    s.add_request(r)
    first = s.schedule()  # prompt -> first token
    assert first.scheduled[0].sample and r.num_placeholders == 1
    second = s.schedule()  # the second (last) token, run ahead of the first
    assert second.scheduled[0].num_new_tokens == 1 and second.scheduled[0].start == 5 and r.num_placeholders == 2
    assert s.schedule().is_empty, "both tokens are in flight: nothing more to run"
    s.update_from_output(first, {"a": [11]})
    assert s.schedule().is_empty
    s.update_from_output(second, {"a": [12]})
    assert r.status == RequestStatus.FINISHED_LENGTH and r.output_token_ids == [11, 12]
    assert r.num_inflight_tokens == 0 and r.num_placeholders == 0
    assert_no_leak(s)


# ------------------------------------------------------------------------------- engine
def _outputs(outs):
    return [[(c.token_ids, c.finish_reason, [sorted((t, round(lp.logprob, 4)) for t, lp in d.items())
                                               for d in (c.logprobs or [])]) for c in o.outputs] for o in outs]


def test_engine_outputs_match_synchronous(tiny):
    from pagoda import LLM, SamplingParams

    prompts = ["Hello world", "The capital of France is", "a b c d e f g h i j k l m n o p",
               "Once upon a time", "1 2 3 4 5", "x" * 40]
    params = [
        SamplingParams(temperature=0, max_tokens=24, logprobs=2),
        SamplingParams(temperature=0.9, seed=5, max_tokens=20, top_p=0.9),
        SamplingParams(temperature=0.8, seed=7, n=3, max_tokens=16),
        SamplingParams(temperature=0, max_tokens=18, repetition_penalty=1.3, presence_penalty=0.5),
        SamplingParams(temperature=1.0, seed=9, max_tokens=20, min_tokens=12),
        SamplingParams(temperature=0, max_tokens=30),
    ]
    results = {}
    for flag in (False, True):
        # 24 blocks of 16 tokens for ~10 sequences: requests are preempted and recomputed.
        llm = LLM(str(tiny.path("llama")), dtype="float32", async_scheduling=flag, num_gpu_blocks_override=12,
                  max_num_seqs=8)
        results[flag] = _outputs(llm.generate(prompts, params, use_tqdm=False))
        core = llm.llm_engine.core
        assert core.cfg.async_scheduling is flag
        assert (core.num_steps_ahead > 0) is flag
        assert core.scheduler.num_preemptions_total > 0
        core.check_integrity()
        assert not core.has_unfinished_requests() and core.kv.pool.num_used_blocks == 0
    assert results[True] == results[False]
    for o in results[True]:
        for toks, reason, _ in o:
            assert reason in ("length", "stop") and toks


def test_async_default_follows_the_device(tiny):
    from pagoda.config import EngineArgs

    cfg = EngineArgs(model=str(tiny.path("llama")), device="cpu").create_config()
    assert cfg.async_scheduling is False
    cfg = EngineArgs(model=str(tiny.path("llama")), device="cpu", async_scheduling=True).create_config()
    assert cfg.async_scheduling is True


def test_a_step_failing_at_result_time_fails_the_next_steps_prefix_hits_on_its_blocks(tiny, monkeypatch):
    """Step N registers the full blocks it writes in the prefix cache when it is scheduled, so step N+1, scheduled
    before N's result, may admit a request that takes them as a prefix-cache hit. When N then fails at result time
    its blocks hold no valid K/V (simulated here by overwriting them): that request fails too, and none of N's
    blocks stays findable. Before, it went on from those blocks (its tokens silently differed from a run without
    the failure) and they stayed registered, so a later request with the same prefix read them as well."""
    import logging

    import torch

    from pagoda import SamplingParams

    greedy = dict(temperature=0.0, ignore_eos=True, max_tokens=8)
    shared = list(range(20, 60))  # 40 tokens: two full blocks of 16, both registered by the step that writes them
    a, b, c, other = shared, shared + [200, 201, 202], shared + [210, 211], list(range(300, 330))
    ref = tiny.llm("llama", enable_prefix_caching=False)
    want = {k: ref.generate([{"prompt_token_ids": p}], SamplingParams(**greedy), use_tqdm=False)[0].outputs[0].token_ids
            for k, p in (("b", b), ("c", c), ("other", other))}
    llm = tiny.llm("llama", async_scheduling=True)
    eng, core = llm.llm_engine, llm.llm_engine.core
    bs = core.kv.block_size
    assert core.kv.enable_prefix_caching and bs == 16
    real = core.runner.execute_async
    failed: list[int] = []

    def fail_the_first_step(sched, block_ids, epochs=None):
        handle = real(sched, block_ids, epochs)
        if not failed:
            failed.extend(sorted({blk for s in sched.scheduled for blk in block_ids[s.request.request_id][
                s.start // bs: -(-(s.start + s.num_new_tokens) // bs)]}))
            idx = torch.tensor(failed)
            for k, v in core.runner.kv_caches:  # what the device left in the blocks is unknown
                k[idx], v[idx] = torch.randn_like(k[idx]), torch.randn_like(v[idx])

            def result():
                raise RuntimeError("injected device error at result time")

            handle.result = result
        return handle

    monkeypatch.setattr(core.runner, "execute_async", fail_the_first_step)
    monkeypatch.setattr(logging.getLogger("pagoda"), "disabled", True)  # _fail logs the traceback
    final, ahead = {}, core.num_steps_ahead
    eng.add_request("a", {"prompt_token_ids": a}, SamplingParams(**greedy), final_only=True)
    final.update((o.request_id, o) for o in eng.step() if o.finished)  # step N: a's prompt, launched
    eng.add_request("b", {"prompt_token_ids": b}, SamplingParams(**greedy), final_only=True)
    eng.add_request("other", {"prompt_token_ids": other}, SamplingParams(**greedy), final_only=True)
    final.update((o.request_id, o) for o in eng.step() if o.finished)  # N+1 launched (b hits a's blocks); N fails
    assert failed and core.num_steps_ahead == ahead + 1, "the test wants step N+1 launched before N's result"
    assert not [blk for blk in failed if core.kv.pool.block_hash[blk] is not None]
    while eng.has_unfinished_requests():
        final.update((o.request_id, o) for o in eng.step() if o.finished)
    eng.add_request("c", {"prompt_token_ids": c}, SamplingParams(**greedy), final_only=True)
    while eng.has_unfinished_requests():
        final.update((o.request_id, o) for o in eng.step() if o.finished)
    assert final["a"].outputs[0].finish_reason == "error"
    assert final["b"].outputs[0].finish_reason == "error"
    assert final["other"].outputs[0].token_ids == want["other"]
    assert final["c"].outputs[0].token_ids == want["c"]
    assert_engine_clean(llm)
