"""Automatic prefix caching (issue 5, item 1).

Unit tests drive the scheduler, KV cache manager and block pool with a FAKE model (as
tests/test_scheduler.py does): exact hit accounting (block ids, reference counts, hit tokens =
full blocks only, the last token always recomputed), LRU eviction order, hits confirmed by
token ids, cache_salt isolation, and no leaked block after any scenario. The end-to-end tests
check that greedy fp32 outputs of a tiny model are identical with caching on and off, also
with chunked prefill and forced preemption.
"""

from __future__ import annotations

import random

import pytest

from pagoda.core.block_pool import BlockPool
from pagoda.core.kv_cache_manager import KVCacheManager
from pagoda.core.request import Request, RequestStatus
from pagoda.core.scheduler import Scheduler
from pagoda.errors import EngineInvariantError
from pagoda.sampling_params import SamplingParams

EOS = 2
BS = 4


def req(rid: str, prompt: list[int], max_tokens: int = 4, salt: str | None = None, **sp) -> Request:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, **sp)
    return Request(rid, prompt, params, {EOS}, max_tokens, arrival_time=0.0, cache_salt=salt)


def fake_token(r: Request) -> int:
    h = 7
    for t in r.all_token_ids:
        h = (h * 131 + t) % 1_000_003
    return 10 + h % 500


def new_sched(num_blocks=64, budget=64, max_num_seqs=8, caching=True, chunked=True) -> Scheduler:
    kv = KVCacheManager(num_blocks, BS, enable_prefix_caching=caching)
    return Scheduler(kv, max_num_seqs, budget, 512, enable_chunked_prefill=chunked)


def assert_no_leak(s: Scheduler) -> None:
    s.check_integrity()
    pool = s.kv.pool
    assert pool.num_free_blocks + pool.num_used_blocks == pool.num_blocks - 1
    if not s.has_unfinished_requests():
        assert pool.num_used_blocks == 0
        assert pool.num_free_blocks == pool.num_blocks - 1
        assert not s.kv.req_blocks and not s.kv.req_num_hashed and not s.requests
        assert all(rc == 0 for rc in pool.ref_cnt)


def step(s: Scheduler):
    out = s.schedule()
    for x in out.scheduled:
        assert x.start == x.request.num_computed_tokens
        assert 0 < x.num_new_tokens
        assert x.start + x.num_new_tokens <= x.request.num_tokens
    sampled = {x.request.request_id: [fake_token(x.request)] for x in out.scheduled if x.sample}
    fin = s.update_from_output(out, sampled)
    s.check_integrity()
    return out, fin


def run_all(s: Scheduler, max_steps: int = 10_000) -> None:
    for _ in range(max_steps):
        if not s.has_unfinished_requests():
            break
        step(s)
    assert not s.has_unfinished_requests()
    assert_no_leak(s)


P10 = list(range(100, 110))  # 2 full blocks of 4 + 2 tokens


# ------------------------------------------------------------------- hit accounting
def test_hit_reuses_full_blocks_by_reference():
    s = new_sched()
    a = req("a", P10, max_tokens=8)
    s.add_request(a)
    out, _ = step(s)  # a's whole prompt computed in one step
    assert [x.num_new_tokens for x in out.scheduled] == [10]
    a_blocks = list(s.kv.get_block_ids("a"))
    assert len(a_blocks) == 3
    # The two full prompt blocks are registered once their K/V is written; the partial one is not.
    assert s.kv.pool.num_cached_blocks == 2
    assert s.kv.pool.block_hash[a_blocks[2]] is None

    b = req("b", P10 + [7, 8, 9], max_tokens=2)
    s.add_request(b)
    out, _ = step(s)
    sb = next(x for x in out.scheduled if x.request is b)
    assert b.num_cached_tokens == 8  # full blocks only
    assert sb.start == 8 and sb.num_new_tokens == 5
    b_blocks = s.kv.get_block_ids("b")
    assert b_blocks[:2] == a_blocks[:2]
    assert b_blocks[2] not in a_blocks
    assert [s.kv.pool.ref_cnt[x] for x in a_blocks[:2]] == [2, 2]
    assert s.kv.pool.ref_cnt[a_blocks[2]] == 1
    assert s.kv.prefix_cache_queries == 10 + 13
    assert s.kv.prefix_cache_hits == 8
    run_all(s)
    # Finished requests leave their registered blocks as evictable cache: free, hashes kept.
    assert s.kv.pool.num_cached_blocks >= 2


def test_full_prompt_hit_recomputes_last_token():
    s = new_sched()
    p8 = list(range(200, 208))  # exactly 2 full blocks
    s.add_request(req("a", p8, max_tokens=1))
    run_all(s)
    a_hashes = dict(s.kv.pool.cached)
    assert len(a_hashes) == 2
    b = req("b", p8, max_tokens=1)
    s.add_request(b)
    out = s.schedule()
    (sb,) = out.scheduled
    # Only the first block may be reused: the second holds the last prompt token, which must be computed.
    assert b.num_cached_tokens == 4
    assert sb.start == 4 and sb.num_new_tokens == 4 and sb.sample
    first = s.kv.get_block_ids("b")[0]
    assert s.kv.pool.block_hash[first] in a_hashes
    assert s.kv.pool.ref_cnt[first] == 1
    s.update_from_output(out, {"b": [fake_token(b)]})
    assert_no_leak(s)
    # A one-block prompt can never hit.
    c = req("c", p8[:4], max_tokens=1)
    s.add_request(c)
    out, _ = step(s)
    assert c.num_cached_tokens == 0 and out.scheduled[0].start == 0
    run_all(s)


def test_hit_confirmed_by_token_ids_not_hash():
    s = new_sched()
    s.add_request(req("a", P10, max_tokens=1))
    run_all(s)
    pool = s.kv.pool
    h, b0 = next(iter(pool.cached.items()))
    # Simulate a hash collision: the entry's stored tokens no longer match the request's.
    toks, extra = pool.block_key[b0]
    pool.block_key[b0] = ((toks[0] + 1,) + toks[1:], extra)
    b = req("b", P10, max_tokens=1)
    assert s.kv.get_computed_blocks(b) == []
    s.add_request(b)
    step(s)
    assert b.num_cached_tokens == 0
    run_all(s)


def test_registered_when_scheduled_so_a_twin_in_the_same_step_shares():
    s = new_sched()
    a, b = req("a", P10, max_tokens=1), req("b", P10, max_tokens=1)
    s.add_request(a)
    s.add_request(b)
    out = s.schedule()
    # a's full blocks are findable as soon as the step that writes them is scheduled; b, admitted
    # later in the same step, takes them (its attention runs after a's K/V write in every layer).
    assert [x.start for x in out.scheduled] == [0, 8]
    assert s.kv.pool.num_cached_blocks == 2
    a_blocks, b_blocks = list(s.kv.get_block_ids("a")), list(s.kv.get_block_ids("b"))
    assert b_blocks[:2] == a_blocks[:2] and b_blocks[2] != a_blocks[2]
    assert b.num_cached_tokens == 8
    s.update_from_output(out, {r.request_id: [fake_token(r)] for r in (a, b)})
    assert s.kv.pool.num_cached_blocks == 2
    assert_no_leak(s)
    assert set(s.kv.pool.cached.values()) == set(a_blocks[:2])


def test_chunked_prefill_registers_block_by_block():
    s = new_sched(budget=6)
    a = req("a", P10 + list(range(300, 306)), max_tokens=1)  # 16 tokens
    s.add_request(a)
    step(s)  # 6 computed: 1 full block
    assert s.kv.pool.num_cached_blocks == 1
    step(s)  # 12 computed: 3 full blocks
    assert s.kv.pool.num_cached_blocks == 3
    run_all(s)
    assert s.kv.pool.num_cached_blocks == 4  # the fourth, full once the last prompt token ran
    b = req("b", a.prompt_token_ids + [1, 2], max_tokens=1)
    s.add_request(b)
    step(s)
    assert b.num_cached_tokens == 16
    run_all(s)


def test_generated_tokens_are_cached_too():
    s = new_sched()
    a = req("a", P10, max_tokens=8)
    s.add_request(a)
    run_all(s)
    # 10 prompt + 8 outputs; the last output's K/V is never computed: 17 computed, 4 full blocks.
    assert s.kv.pool.num_cached_blocks == 4
    b = req("b", a.all_token_ids + [5], max_tokens=1)  # a follow-up turn
    s.add_request(b)
    step(s)
    assert b.num_cached_tokens == 16
    run_all(s)


def test_prompt_logprobs_requests_skip_lookup():
    s = new_sched()
    s.add_request(req("a", P10, max_tokens=1))
    run_all(s)
    b = req("b", P10, max_tokens=1, prompt_logprobs=1)
    s.add_request(b)
    out, _ = step(s)
    assert b.num_cached_tokens == 0 and out.scheduled[0].start == 0
    run_all(s)


def test_caching_off_finds_nothing():
    s = new_sched(caching=False)
    s.add_request(req("a", P10, max_tokens=1))
    run_all(s)
    assert s.kv.pool.num_cached_blocks == 0
    b = req("b", P10, max_tokens=1)
    s.add_request(b)
    step(s)
    assert b.num_cached_tokens == 0
    assert s.kv.prefix_cache_queries == 0 and s.kv.prefix_cache_hits == 0
    run_all(s)


# ------------------------------------------------------------------------ cache_salt
def test_cache_salt_isolation():
    s = new_sched()
    s.add_request(req("a", P10, max_tokens=1, salt="tenant-1"))
    run_all(s)
    for rid, salt, hit in [("b", None, 0), ("c", "tenant-2", 0), ("d", "tenant-1", 8)]:
        r = req(rid, P10, max_tokens=1, salt=salt)
        s.add_request(r)
        step(s)
        assert r.num_cached_tokens == hit, (rid, salt)
        run_all(s)
    # The salt changes every block's hash (it enters the chain at block 0), not just the first.
    kv = s.kv
    h1 = kv.block_hashes(req("x", P10, salt="s1"), 2)
    h2 = kv.block_hashes(req("y", P10, salt="s2"), 2)
    h0 = kv.block_hashes(req("z", P10), 2)
    assert len({h1[0], h2[0], h0[0]}) == 3 and len({h1[1], h2[1], h0[1]}) == 3


def test_chained_hash_depends_on_parent():
    kv = KVCacheManager(16, BS, enable_prefix_caching=True)
    x = kv.block_hashes(req("x", [1, 2, 3, 4, 5, 6, 7, 8]), 2)
    y = kv.block_hashes(req("y", [9, 9, 9, 9, 5, 6, 7, 8]), 2)
    assert x[0] != y[0] and x[1] != y[1]  # same second block, different parent


# ---------------------------------------------------------------------------- LRU
def test_block_pool_lru_eviction_order():
    pool = BlockPool(5)
    blocks = pool.allocate(4)
    assert blocks == [1, 2, 3, 4]
    for b in blocks:
        assert pool.register(b, bytes([b]), ((b,), None))
    pool.free([1, 2])  # tail-first: 2 then 1
    pool.free([3, 4])  # 4 then 3
    assert list(pool._free) == [2, 1, 4, 3]
    assert pool.lookup(bytes([3]), ((3,), None)) == 3
    assert pool.lookup(bytes([3]), ((4,), None)) is None  # confirmed against the stored key
    # A hit takes a cached block off the free list; freeing it again makes it most recent.
    pool.incref(1)
    assert pool.ref_cnt[1] == 1 and 1 not in pool._free
    pool.free([1])
    assert list(pool._free) == [2, 4, 3, 1]
    assert pool.allocate(1) == [2]  # least recently freed, its hash evicted
    assert bytes([2]) not in pool.cached and pool.block_hash[2] is None
    assert pool.allocate(2) == [4, 3]
    assert set(pool.cached) == {bytes([1])}
    assert pool.num_evictions == 3
    pool.check_integrity()
    # A hash already taken is not registered twice.
    assert not pool.register(2, bytes([1]), ((2,), None))
    pool.free([2, 3, 4])
    pool.check_integrity()
    assert pool.num_free_blocks == 4 and pool.num_used_blocks == 0
    assert pool.reset_prefix_cache() == 1 and not pool.cached
    pool.check_integrity()


def test_scheduler_evicts_least_recently_used():
    # 7 usable blocks; an 8-token prompt with max_tokens=1 holds (and caches) 2 blocks.
    s = new_sched(num_blocks=8)
    p = {k: list(range(1000 * k, 1000 * k + 8)) for k in range(3)}
    for k in (0, 1, 2):
        s.add_request(req(f"r{k}", p[k], max_tokens=1))
        run_all(s)
    # Free list, least recently freed first (each request frees tail-first): 7, 2,1, 4,3, 6,5.
    assert list(s.kv.pool._free) == [7, 2, 1, 4, 3, 6, 5]
    # Prompt 0 again: its first block (1) is a hit and becomes most recently used; its second is
    # recomputed into block 7 (identical content already cached in block 2: 7 stays unhashed).
    r = req("again0", p[0], max_tokens=1)
    s.add_request(r)
    run_all(s)
    assert r.num_cached_tokens == 4
    assert list(s.kv.pool._free) == [2, 4, 3, 6, 5, 7, 1]
    # A 16-token prompt takes 4 blocks from the front: 2, 4, 3, 6 lose their hashes.
    s.add_request(req("r3", list(range(9000, 9016)), max_tokens=1))
    run_all(s)
    assert s.kv.pool.num_evictions == 4
    hits = {k: len(s.kv.get_computed_blocks(req(f"probe{k}", p[k] + [1], max_tokens=1))) for k in (0, 1, 2)}
    assert hits == {0: 1, 1: 0, 2: 1}, hits


def test_admission_counts_free_cached_blocks_it_takes():
    # 4 usable blocks, all cached and free; a hit on 2 of them leaves 2 allocatable.
    s = new_sched(num_blocks=5)
    p = list(range(500, 512))  # 12 tokens: 3 blocks, 2 cached after the step (+ the partial-out block)
    s.add_request(req("a", p, max_tokens=1))
    run_all(s)
    b = req("b", p + list(range(600, 610)), max_tokens=1)  # 22 tokens: 6 blocks, more than the pool
    with pytest.raises(EngineInvariantError):
        s.add_request(b)
    c = req("c", p + list(range(600, 604)), max_tokens=1)  # 16 + 1 tokens: 5 blocks > 4
    with pytest.raises(EngineInvariantError):
        s.add_request(c)
    d = req("d", p + [1, 2, 3], max_tokens=1)  # 15 + 1 tokens: 4 blocks, 3 of them cached
    s.add_request(d)
    step(s)
    assert d.num_cached_tokens == 12
    assert_no_leak(s)
    run_all(s)


# ------------------------------------------------------------------- preemption
def test_preempted_request_hits_its_own_blocks():
    s = new_sched(num_blocks=12, budget=64, max_num_seqs=4)
    a = req("a", list(range(10, 22)), max_tokens=16)
    b = req("b", list(range(40, 52)), max_tokens=16)
    s.add_request(a)
    s.add_request(b)
    preempted = False
    for _ in range(200):
        if not s.has_unfinished_requests():
            break
        out, _ = step(s)
        if out.preempted_ids:
            preempted = True
    assert preempted
    assert_no_leak(s)
    # The recompute reused cached blocks; as in vLLM, a re-admission's lookup is counted apart from the exported
    # prefix_cache_queries / _hits (each request's first admission), which found nothing here.
    assert s.kv.preempted_prefix_cache_hits > 0
    assert s.kv.prefix_cache_hits == 0 and s.kv.prefix_cache_queries == 12 + 12


# --------------------------------------------------------- randomized, vs caching off
def _workload(seed: int):
    rng = random.Random(seed)
    prefixes = [[rng.randrange(10, 60) for _ in range(rng.randrange(1, 20))] for _ in range(4)]
    reqs = []
    for i in range(24):
        pre = rng.choice(prefixes)
        tail = [rng.randrange(10, 60) for _ in range(rng.randrange(0, 8))]
        salt = rng.choice([None, None, "t1"])
        reqs.append((f"r{i}", pre + tail, rng.randrange(1, 10), salt, rng.randrange(0, 3)))
    return reqs


def _drive(s: Scheduler, reqs) -> dict[str, list[int]]:
    pending = sorted(reqs, key=lambda r: r[4])
    t, outs, alive = 0, {}, {}
    while pending or s.has_unfinished_requests():
        while pending and pending[0][4] <= t:
            rid, prompt, mt, salt, _ = pending.pop(0)
            r = req(rid, prompt, max_tokens=mt, salt=salt, ignore_eos=True)
            alive[rid] = r
            s.add_request(r)
        step(s)
        for rid, r in list(alive.items()):
            if r.status.finished:
                outs[rid] = list(r.output_token_ids)
                del alive[rid]
        t += 1
        assert t < 10_000
    assert_no_leak(s)
    return outs


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cfg", [
    dict(num_blocks=64, budget=64),
    dict(num_blocks=12, budget=16, max_num_seqs=4),  # preemption
    dict(num_blocks=10, budget=5, max_num_seqs=3),  # tiny chunks + preemption
    dict(num_blocks=40, budget=64, chunked=False),
])
def test_random_workload_matches_caching_off(seed, cfg):
    reqs = _workload(seed)
    on = new_sched(caching=True, **cfg)
    off = new_sched(caching=False, **cfg)
    out_on = _drive(on, reqs)
    assert out_on == _drive(off, reqs)
    assert on.kv.prefix_cache_hits <= on.kv.prefix_cache_queries
    assert all(rc == 0 for rc in on.kv.pool.ref_cnt)


def test_abort_keeps_cache_consistent():
    s = new_sched()
    a = req("a", P10, max_tokens=8)
    s.add_request(a)
    step(s)
    b = req("b", P10, max_tokens=8)
    s.add_request(b)
    step(s)
    assert b.num_cached_tokens == 8
    s.abort_requests(["a"])
    assert a.status == RequestStatus.FINISHED_ABORTED
    assert_no_leak(s)
    shared = s.kv.get_block_ids("b")[:2]
    assert [s.kv.pool.ref_cnt[x] for x in shared] == [1, 1]
    run_all(s)


# ----------------------------------------------------------------- tiny model, end to end
from engine_checks import PROMPTS, assert_engine_clean, greedy, token_ids  # noqa: E402

LONG = PROMPTS[-1]
SHARED = [LONG, LONG + " And then", LONG + " Something else entirely", PROMPTS[-2], PROMPTS[-2] + " more", "Hi"]

_off: dict[str, list] = {}


def _generate(llm, prompts):
    return llm.generate(prompts, greedy(logprobs=2), use_tqdm=False)


def _baseline(tiny) -> list:
    if "llama" not in _off:
        from pagoda import LLM

        llm = LLM(str(tiny.path("llama")), dtype="float32", enable_prefix_caching=False)
        _off["llama"] = _generate(llm, SHARED)
        assert_engine_clean(llm)
        assert llm.llm_engine.core.kv.pool.num_cached_blocks == 0
    return _off["llama"]


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(max_num_batched_tokens=8, max_num_seqs=8),  # chunked prefill in tiny chunks
    dict(num_gpu_blocks_override=24),  # forced preemption
    dict(num_gpu_blocks_override=24, kv_offloading_size=0.001),  # preemption + host KV tier
    dict(block_size=8, num_gpu_blocks_override=44, max_num_batched_tokens=16, max_num_seqs=4),
])
def test_tiny_model_outputs_identical_with_caching(tiny, kwargs):
    from pagoda import LLM

    base = _baseline(tiny)
    llm = LLM(str(tiny.path("llama")), dtype="float32", **kwargs)
    kv = llm.llm_engine.core.kv
    assert kv.enable_prefix_caching  # on by default
    first = _generate(llm, SHARED)
    assert_engine_clean(llm)
    second = _generate(llm, SHARED)  # everything long is now (partly) cached
    assert_engine_clean(llm)
    for outs in (first, second):
        assert token_ids(outs) == token_ids(base), kwargs
        for o, b in zip(outs, base, strict=True):
            assert o.outputs[0].text == b.outputs[0].text
            for d, e in zip(o.outputs[0].logprobs, b.outputs[0].logprobs, strict=True):
                assert d.keys() == e.keys()
                for t in d:
                    assert abs(d[t].logprob - e[t].logprob) < 1e-4
    assert kv.prefix_cache_hits > 0
    if "num_gpu_blocks_override" not in kwargs:
        # The whole prompt was cached by the first pass; all its full blocks but the last token's hit.
        n = len(second[0].prompt_token_ids)
        assert second[0].num_cached_tokens == (n - 1) // kv.block_size * kv.block_size > 0
    if "num_gpu_blocks_override" in kwargs:
        assert llm.llm_engine.core.scheduler.num_preemptions_total > 0
    if "kv_offloading_size" in kwargs:
        assert kv.host.num_loaded > 0, "blocks should have come back from the host tier"


def test_tiny_model_cache_salt_and_off_switch(tiny):
    from pagoda import LLM

    llm = tiny.llm("llama")
    a = llm.generate([{"prompt": LONG, "cache_salt": "s1"}], greedy(max_tokens=4), use_tqdm=False)[0]
    b = llm.generate([{"prompt": LONG, "cache_salt": "s2"}], greedy(max_tokens=4), use_tqdm=False)[0]
    c = llm.generate([{"prompt": LONG, "cache_salt": "s1"}], greedy(max_tokens=4), use_tqdm=False)[0]
    assert a.num_cached_tokens == 0 and b.num_cached_tokens == 0 and c.num_cached_tokens > 0
    assert a.outputs[0].token_ids == b.outputs[0].token_ids == c.outputs[0].token_ids
    assert_engine_clean(llm)
    with pytest.raises(ValueError):
        llm.generate([{"prompt": LONG, "cache_salt": 3}], greedy(max_tokens=1), use_tqdm=False)

    off = LLM(str(tiny.path("llama")), dtype="float32", enable_prefix_caching=False)
    off.generate([LONG], greedy(max_tokens=2), use_tqdm=False)
    o = off.generate([LONG], greedy(max_tokens=2), use_tqdm=False)[0]
    assert o.num_cached_tokens == 0 and off.llm_engine.core.kv.prefix_cache_queries == 0
    assert_engine_clean(off)


def test_llm_reset_prefix_cache(tiny):
    llm = tiny.llm("llama")
    prompt = {"prompt": LONG, "cache_salt": "reset-test"}
    llm.generate([prompt], greedy(max_tokens=2), use_tqdm=False)
    assert llm.generate([prompt], greedy(max_tokens=2), use_tqdm=False)[0].num_cached_tokens > 0
    pool = llm.llm_engine.core.kv.pool
    assert pool.num_cached_blocks > 0
    assert llm.reset_prefix_cache() is True
    assert pool.num_cached_blocks == 0
    assert llm.generate([prompt], greedy(max_tokens=2), use_tqdm=False)[0].num_cached_tokens == 0
    assert_engine_clean(llm)


def test_engine_core_reset_keeps_blocks_of_running_requests(tiny):
    llm = tiny.llm("llama")
    eng = llm.llm_engine
    eng.add_request("held", {"prompt": LONG, "cache_salt": "held"}, greedy(max_tokens=50), final_only=True)
    while eng.core.scheduler.requests["held"].num_computed_tokens < 20:  # its full prompt blocks are registered
        eng.step()
    assert eng.core.reset_prefix_cache() is False  # the running request still holds its cached blocks
    assert eng.core.kv.pool.num_cached_blocks > 0
    while eng.has_unfinished_requests():
        eng.step()
    assert eng.core.reset_prefix_cache() is True and eng.core.kv.pool.num_cached_blocks == 0
    assert_engine_clean(llm)


def test_cli_flag_pair():
    import argparse

    from pagoda.entrypoints.cli import add_engine_args, engine_kwargs

    p = argparse.ArgumentParser()
    add_engine_args(p)
    assert engine_kwargs(p.parse_args([]))["enable_prefix_caching"] is True
    assert engine_kwargs(p.parse_args(["--no-enable-prefix-caching"]))["enable_prefix_caching"] is False
    assert engine_kwargs(p.parse_args(["--enable-prefix-caching"]))["enable_prefix_caching"] is True
