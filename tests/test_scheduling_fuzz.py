"""Scheduling state machine fuzz: a request's output must not depend on what runs beside it.

Each case is one small engine (tiny random Llama, max_model_len 160) combining preemption (a KV cache a few blocks
over one request's need), chunked prefill under a small token budget, few sequences, prefix caching over prompts
that share prefixes, the host KV tier, async scheduling, the priority policy, long_prefill_token_threshold and
n-gram speculative decoding. It is driven by hand, one random operation per step (fixed seed): add a request under
one of a few reused ids (an id comes back as soon as its request ends or is aborted), abort a live request, reset
the prefix cache, or just step. Requests are greedy (n up to 4, logprobs, prompt logprobs, stop strings) or seeded
sampled (n up to 3, top-k).

Every request that finished equals the same request run alone on a plain engine (prefix caching off, defaults):

* ``--deterministic`` in bf16 (docs/design.md, "Deterministic mode"): token ids, text, finish reason, and every
  logprob and rank *bitwise* (test_feature_combinations.py compares its deterministic case in fp32 within 1e-4);
* otherwise fp32, with test_feature_combinations.py's tolerance (logprobs within 1e-4, ranks within 2).

Seeded sampled requests are compared only without speculation (with it their draws follow the verifies' draft
counts: docs/design.md). ``check_integrity`` holds after every step, the engine ends idle and clean, and each case
checks that what it combines did happen (preemptions, prefix or host-tier hits, forks, drafts, steps run ahead).
"""

from __future__ import annotations

import random

import pytest
from test_feature_combinations import _assert_clean, _assert_same, _prompt_pool

from pagoda import LLM, SamplingParams

MAX_LEN = 160
NGRAM = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 2}

CASES = {
    # bitwise: preemption, host-tier loads, parallel-sampling forks, prefix hits, a long-prefill cap
    "det-bf16-block16-budget24-preempt-host-tier-threshold": dict(
        deterministic=True, dtype="bfloat16", block_size=16, max_num_batched_tokens=24, num_gpu_blocks_override=19,
        kv_offloading_size=0.0005, long_prefill_token_threshold=12),
    # bitwise: async scheduling (steps run ahead) under preemption, priority and prefill chunks of 7
    "det-bf16-block8-budget7-preempt-async-priority": dict(
        deterministic=True, dtype="bfloat16", block_size=8, max_num_batched_tokens=7, num_gpu_blocks_override=24,
        max_num_seqs=4, async_scheduling=True, scheduling_policy="priority"),
    # bitwise: n-gram verifies (cut by a budget of 9) under preemption, prefix caching and few sequences
    "det-bf16-block4-budget9-preempt-ngram-seqs3": dict(
        deterministic=True, dtype="bfloat16", block_size=4, max_num_batched_tokens=9, num_gpu_blocks_override=44,
        max_num_seqs=3, speculative_config=NGRAM),
    # fp32 without --deterministic: everything at once
    "fp32-block2-budget13-preempt-async-host-tier-priority": dict(
        dtype="float32", block_size=2, max_num_batched_tokens=13, num_gpu_blocks_override=84, max_num_seqs=5,
        kv_offloading_size=0.0005, async_scheduling=True, scheduling_policy="priority"),
}


def _bitwise(a, b, what: str) -> None:
    assert (a is None) == (b is None), what
    if a is None:
        return
    assert set(a) == set(b), f"{what}: keys {sorted(a)} vs {sorted(b)}"
    for t in a:
        assert a[t].logprob == b[t].logprob, f"{what}: token {t}: logprob {a[t].logprob!r} vs {b[t].logprob!r}"
        assert a[t].rank == b[t].rank, f"{what}: token {t}: rank {a[t].rank} vs {b[t].rank}"


def _assert_bitwise(o, r, what: str) -> None:
    assert o.prompt_token_ids == r.prompt_token_ids, what
    assert len(o.outputs) == len(r.outputs), what
    for i, (c, d) in enumerate(zip(o.outputs, r.outputs, strict=True)):
        w = f"{what}[{i}]"
        assert (c.token_ids, c.text, c.finish_reason, c.stop_reason) == \
            (d.token_ids, d.text, d.finish_reason, d.stop_reason), w
        assert (c.logprobs is None) == (d.logprobs is None), w
        for k, (x, y) in enumerate(zip(c.logprobs or [], d.logprobs or [], strict=True)):
            _bitwise(x, y, f"{w} logprobs {k}")
    assert (o.prompt_logprobs is None) == (r.prompt_logprobs is None), what
    for k, (x, y) in enumerate(zip(o.prompt_logprobs or [], r.prompt_logprobs or [], strict=True)):
        _bitwise(x, y, f"{what} prompt_logprobs {k}")


class _Alone:
    """Each request's output run alone on a plain engine of the same dtype and mode."""

    def __init__(self, path: str, dtype: str, det: bool) -> None:
        self.llm = LLM(path, dtype=dtype, max_model_len=MAX_LEN, enable_prefix_caching=False, deterministic=det)
        self._outs: dict[tuple, object] = {}

    def __call__(self, ids: list[int], sp: SamplingParams):
        key = (tuple(ids), repr(sp))
        if key not in self._outs:
            self._outs[key] = self.llm.generate([{"prompt_token_ids": ids}], sp, use_tqdm=False)[0]
        return self._outs[key]


def _request(rng: random.Random, pool: list[list[int]], alone: _Alone) -> tuple[list[int], SamplingParams]:
    ids = list(rng.choice(pool))
    if rng.random() < 0.2:  # two pool prompts back to back: a shared prefix and a longer prompt
        ids = (ids + list(rng.choice(pool)))[: MAX_LEN - 2]
    mt = rng.randint(1, min(30, MAX_LEN - len(ids)))
    kind = rng.choice(["greedy", "greedy", "seeded", "stop"])
    lp = rng.choice([None, 0, 2, 5])
    if kind == "greedy":
        return ids, SamplingParams(temperature=0, max_tokens=mt, n=rng.choice([1, 1, 2, 4]), logprobs=lp,
                                   prompt_logprobs=rng.choice([None, None, None, 1]), ignore_eos=rng.random() < 0.7)
    if kind == "seeded":
        return ids, SamplingParams(temperature=rng.choice([0.5, 1.0]), seed=rng.randint(0, 1000), max_tokens=mt,
                                   n=rng.choice([1, 2, 3]), logprobs=lp, top_k=rng.choice([0, 10]),
                                   ignore_eos=rng.random() < 0.7)
    text = alone(ids, SamplingParams(temperature=0, max_tokens=mt, ignore_eos=True)).outputs[0].text
    a = rng.randint(0, max(0, len(text) - 1))
    return ids, SamplingParams(temperature=0, max_tokens=mt, stop=[text[a:a + rng.randint(1, 3)] or "zz"],
                               logprobs=lp, include_stop_str_in_output=rng.random() < 0.5, ignore_eos=True)


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_scheduling_fuzz_equals_alone(tiny, case):
    cfg = dict(CASES[case])
    det, dtype = bool(cfg.pop("deterministic", False)), cfg.pop("dtype")
    spec = "speculative_config" in cfg
    path = str(tiny.path("llama"))
    rng = random.Random(f"scheduling-fuzz-{case}")
    alone = _Alone(path, dtype, det)
    llm = LLM(path, dtype=dtype, max_model_len=MAX_LEN, deterministic=det, **cfg)
    eng = llm.llm_engine
    pool = _prompt_pool(rng, llm.get_tokenizer())
    prio = cfg.get("scheduling_policy") == "priority"
    live: dict[str, tuple[list[int], SamplingParams]] = {}
    done: list[tuple[list[int], SamplingParams, object]] = []
    ids = [f"r{i}" for i in range(6)]  # few ids: each is reused as soon as its request ends or is aborted
    try:
        added, total, steps = 0, 60, 0
        while added < total or eng.has_unfinished_requests():
            r = rng.random()
            free = [i for i in ids if i not in live]
            if added < total and r < 0.35 and free:
                rid = rng.choice(free)
                live[rid] = _request(rng, pool, alone)
                eng.add_request(rid, {"prompt_token_ids": live[rid][0]}, live[rid][1], final_only=True,
                                priority=rng.randint(-2, 2) if prio else 0)
                added += 1
            elif 0.35 <= r < 0.40 and live:
                rid = rng.choice(sorted(live))
                eng.abort_request(rid)
                del live[rid]
            elif 0.40 <= r < 0.43:
                eng.reset_prefix_cache()
            for out in eng.step():
                if out.finished:
                    p, sp = live.pop(out.request_id)
                    done.append((p, sp, out))
            eng.core.check_integrity()
            steps += 1
            assert steps < 5000, "no progress"
        compared = 0
        for i, (p, sp, out) in enumerate(done):
            what = f"{case}: finished request {i} ({len(p)} prompt tokens, {sp!r})"
            assert out.error is None, what
            if sp.temperature == 0 or (sp.seed is not None and not spec):
                (_assert_bitwise if det else _assert_same)(out, alone(p, sp), what)
                compared += 1
        _assert_clean(llm)
        core = eng.core
        sched, kv = core.scheduler, core.kv
        assert compared >= 20, f"{case}: only {compared} requests compared"
        assert sched.num_preemptions_total > 0, "the case was meant to preempt"
        assert kv.num_forked_blocks > 0, "parallel samples were meant to share their prompt blocks"
        assert kv.prefix_cache_hits > 0, "the case was meant to hit the prefix cache"
        if "kv_offloading_size" in cfg:
            assert kv.host is not None and kv.host.num_loaded > 0, "the case was meant to load from the host tier"
        if spec:
            assert sched.spec_stats.num_drafts > 0, "the case was meant to speculate"
        if cfg.get("async_scheduling"):
            assert core.num_steps_ahead > 0, "the case was meant to schedule steps ahead"
    finally:
        llm.shutdown()
        alone.llm.shutdown()
