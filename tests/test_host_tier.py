"""The host-memory KV tier (issue 5, item 4; ``--kv-offloading-size``).

Bookkeeping is tested with no model (LRU, locks, confirmation by key); the scheduler with a
fake model shows evicted blocks stored and host hits loaded into fresh device blocks; the
end-to-end tests on a tiny fp32 model show that a block which leaves for the host tier and
comes back holds identical K/V, and that outputs under memory pressure are unchanged.
"""

from __future__ import annotations

import pytest
import torch
from engine_checks import PROMPTS, assert_engine_clean
from test_prefix_caching import BS, _drive, _workload, assert_no_leak, new_sched, req, run_all

from pagoda import SamplingParams
from pagoda.core.host_tier import HostKVTier
from pagoda.core.kv_cache_manager import KVCacheManager
from pagoda.core.scheduler import Scheduler


def H(i: int) -> bytes:
    return bytes([i]) * 32


# ------------------------------------------------------------------------- bookkeeping
def test_tier_stores_looks_up_and_drops_least_recently_used():
    t = HostKVTier(2)
    assert t.store(H(1), ("k1",)) == 0 and t.store(H(2), ("k2",)) == 1
    assert t.store(H(1), ("k1",)) is None  # already held: no copy, just touched
    assert t.lookup(H(1), ("k1",)) == 0 and t.lookup(H(1), ("other",)) is None  # confirmed by key
    assert t.store(H(3), ("k3",)) == 1  # full: drops H(2), the least recently used
    assert t.lookup(H(2), ("k2",)) is None and t.num_dropped == 1
    assert t.usage() == 1.0
    t.check_integrity()
    assert t.reset() == 2 and t.usage() == 0.0


def test_a_block_being_loaded_is_never_overwritten_in_the_same_step():
    t = HostKVTier(2)
    t.store(H(1), ("k1",))
    t.store(H(2), ("k2",))
    t.take_for_load(H(2))
    t.take_for_load(H(1))
    assert t.store(H(3), ("k3",)) is None  # every block is locked for a load this step
    t.end_step()
    assert t.store(H(3), ("k3",)) is not None


# -------------------------------------------------------------------------- scheduler
P13 = list(range(100, 113))  # 3 full blocks of 4 + 1 token


def tier_sched(num_blocks=8, host_blocks=16, budget=64):
    kv = KVCacheManager(num_blocks, BS, enable_prefix_caching=True, host_tier=HostKVTier(host_blocks))
    return Scheduler(kv, 4, budget, 512)


def test_tier_needs_prefix_caching():
    with pytest.raises(ValueError, match="prefix caching"):
        KVCacheManager(8, BS, enable_prefix_caching=False, host_tier=HostKVTier(4))


def test_evicted_blocks_are_stored_and_host_hits_are_loaded():
    s = tier_sched()
    s.add_request(req("a", P13, max_tokens=1))
    run_all(s)
    a_blocks = {h: b for h, b in s.kv.pool.cached.items()}
    assert len(a_blocks) == 3
    # Another prompt needing all 7 usable blocks evicts a's 3 cached blocks: stored to the host.
    s.add_request(req("b", list(range(300, 326)), max_tokens=1))
    out = s.schedule()
    assert sorted(d for d, _ in out.swap_out) == sorted(a_blocks.values())
    assert out.swap_in == []
    s.update_from_output(out, {"b": [5]})
    assert s.kv.host.num_used_blocks == 3 and not set(a_blocks) & set(s.kv.pool.cached)
    run_all(s)
    # a again: a device miss, a host hit for its 3 full blocks, loaded into fresh device blocks.
    s.kv.prefix_cache_queries = s.kv.prefix_cache_hits = 0
    s.kv.external_prefix_cache_queries = s.kv.external_prefix_cache_hits = 0
    a2 = req("a2", P13, max_tokens=1)
    s.add_request(a2)
    out = s.schedule()
    assert len(out.swap_in) == 3 and out.scheduled[0].num_new_tokens == 1
    assert a2.num_cached_tokens == 12
    # vLLM's counters: the device cache missed (prefix_cache_*), the host tier hit, counted as a KV connector's
    # (external_prefix_cache_*)
    assert (s.kv.prefix_cache_queries, s.kv.prefix_cache_hits) == (13, 0)
    assert (s.kv.external_prefix_cache_queries, s.kv.external_prefix_cache_hits) == (13, 12)
    held = s.kv.get_block_ids("a2")
    assert [d for _, d in out.swap_in] == held[:3]
    # The loaded blocks are registered on the device again under the same hashes.
    assert {s.kv.pool.cached[h] for h in a_blocks} == set(held[:3])
    s.update_from_output(out, {"a2": [5]})
    assert s.kv.host.num_loaded == 3
    run_all(s)
    assert_no_leak(s)


def test_preempted_requests_come_back_from_the_host_tier():
    s = tier_sched(num_blocks=10, host_blocks=64, budget=16)
    for i in range(4):
        s.add_request(req(f"r{i}", [10 * i + j for j in range(1, 14)], max_tokens=12))
    run_all(s)
    assert s.num_preemptions_total > 0
    assert s.kv.host.num_stored > 0 and s.kv.host.num_loaded > 0
    assert_no_leak(s)


@pytest.mark.parametrize("seed", range(4))
def test_random_workload_with_the_tier_matches_caching_off(seed):
    reqs = _workload(seed)
    tiered = tier_sched(num_blocks=12, host_blocks=24, budget=16)
    assert _drive(tiered, reqs) == _drive(new_sched(caching=False, num_blocks=12, budget=16, max_num_seqs=4), reqs)
    assert tiered.kv.host.num_loaded > 0
    tiered.kv.host.check_integrity()


# -------------------------------------------------------------------------- end to end
def bytes_per_block(llm) -> int:
    return llm.llm_engine.core.runner.bytes_per_block()


def snapshot(core) -> dict[bytes, tuple[torch.Tensor, ...]]:
    """K/V of every device-cached block, keyed by its chained hash."""
    out = {}
    for h, b in core.kv.pool.cached.items():
        out[h] = tuple(t[b].clone() for kv in core.runner.kv_caches for t in kv)
    return out


def test_block_round_trip_through_the_host_tier_holds_identical_kv(tiny):
    probe = tiny.llm("llama", num_gpu_blocks_override=8)
    size_gib = 64 * bytes_per_block(probe) / 2**30
    llm = tiny.llm("llama", num_gpu_blocks_override=8, kv_offloading_size=size_gib)
    core = llm.llm_engine.core
    core.kv.reset_prefix_cache()
    greedy = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    a = PROMPTS[6] * 2  # 52 tokens: 3 full blocks
    first = llm.generate(a, greedy, use_tqdm=False)[0]
    before = snapshot(core)
    assert len(before) >= 3
    # Other prompts push every one of a's blocks out of the 7-block device pool.
    for p in [PROMPTS[i] * 3 for i in (2, 3, 4, 5)] + [PROMPTS[7]]:  # none starts like a
        llm.generate(p, greedy, use_tqdm=False)
    assert not set(before) & set(core.kv.pool.cached), "a's blocks should have left the device"
    assert core.kv.host.num_stored >= len(before)
    loaded = core.kv.host.num_loaded
    again = llm.generate(a, greedy, use_tqdm=False)[0]
    assert core.kv.host.num_loaded - loaded == len(before)
    assert again.num_cached_tokens == len(before) * 16
    after = snapshot(core)
    for h, tensors in before.items():
        assert all(torch.equal(x, y) for x, y in zip(tensors, after[h], strict=True)), "K/V changed on the round trip"
    assert again.outputs[0].token_ids == first.outputs[0].token_ids
    assert_engine_clean(llm)


def test_outputs_under_pressure_are_unchanged_with_the_host_tier(tiny):
    ref = tiny.llm("llama", enable_prefix_caching=False)
    probe = tiny.llm("llama", num_gpu_blocks_override=8)
    size_gib = 64 * bytes_per_block(probe) / 2**30
    llm = tiny.llm("llama", num_gpu_blocks_override=16, max_num_seqs=6, kv_offloading_size=size_gib)
    prompts = [p * 3 for p in PROMPTS[:6]]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    want = [o.outputs[0].token_ids for o in ref.generate(prompts, params, use_tqdm=False)]
    got = [o.outputs[0].token_ids for o in llm.generate(prompts, params, use_tqdm=False)]
    core = llm.llm_engine.core
    assert core.scheduler.num_preemptions_total > 0, "the test wants memory pressure"
    assert core.kv.host.num_loaded > 0, "preempted requests should have come back from the host tier"
    assert got == want
    assert_engine_clean(llm)
    stats = core.stats()
    assert stats.kv_offload_loaded_blocks == core.kv.host.num_loaded and 0 < stats.cpu_kv_cache_usage <= 1


def test_tier_flag_errors_are_actionable(tiny):
    from pagoda import LLM

    with pytest.raises(ValueError, match="needs prefix caching"):
        LLM(str(tiny.path("llama")), dtype="float32", kv_offloading_size=0.01, enable_prefix_caching=False)
    with pytest.raises(ValueError, match="kv_offloading_size"):
        LLM(str(tiny.path("llama")), dtype="float32", kv_offloading_size=-1)
