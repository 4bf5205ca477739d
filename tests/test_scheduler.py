"""Scheduler, KV cache manager and block pool, driven by a FAKE model (no weights, no tensors).

The fake model "samples" a token that is a pure function of the request's tokens so far, so a
request that is preempted and recomputed must end with exactly the tokens it gets when nothing is
preempted. Every step is checked against the scheduler's contract (``check_step``) and every
scenario ends with no leaked block.
"""

from __future__ import annotations

import random

import pytest

from pagoda.core.block_pool import BlockPool, NoFreeBlocksError
from pagoda.core.kv_cache_manager import KVCacheManager, cdiv
from pagoda.core.request import Request, RequestStatus
from pagoda.core.scheduler import Scheduler
from pagoda.errors import EngineInvariantError
from pagoda.sampling_params import SamplingParams

EOS = 2
STOP = 3


def make_req(rid: str, prompt_len: int, max_tokens: int, arrival: float = 0.0, **sp) -> Request:
    rng = random.Random(rid)  # seeded by the id: the same prompt in every process (hash() of a str is not)
    prompt = [rng.randrange(10, 510) for _ in range(prompt_len)]
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, **sp)
    return Request(rid, prompt, params, {EOS}, max_tokens, arrival_time=arrival)


def fake_token(req: Request) -> int:
    """A deterministic 'model': the next token depends only on the tokens so far (never EOS/STOP)."""
    h = 7
    for t in req.all_token_ids:
        h = (h * 131 + t) % 1_000_003
    return 10 + h % 500


def new_sched(num_blocks=64, block_size=4, max_num_seqs=8, budget=32, max_model_len=256, chunked=True, cls=Scheduler):
    kv = KVCacheManager(num_blocks, block_size)
    return cls(kv, max_num_seqs, budget, max_model_len, enable_chunked_prefill=chunked)


def assert_no_leak(s: Scheduler) -> None:
    pool = s.kv.pool
    s.check_integrity()
    assert pool.num_free_blocks + pool.num_used_blocks == pool.num_blocks - 1
    if not s.has_unfinished_requests():
        assert pool.num_used_blocks == 0
        assert pool.num_free_blocks == pool.num_blocks - 1
        assert not s.kv.req_blocks and not s.requests


def check_step(s: Scheduler, out) -> None:
    """The contract of one ``schedule()`` result, checked before the step's update."""
    bs = s.kv.block_size
    total = sum(x.num_new_tokens for x in out.scheduled)
    assert 0 < total <= s.max_num_batched_tokens or out.is_empty
    assert out.num_batched_tokens == total
    assert len(out.scheduled) <= s.max_num_seqs
    assert len(s.running) <= s.max_num_seqs
    ids = [x.request.request_id for x in out.scheduled]
    assert len(ids) == len(set(ids)), "a request scheduled twice in one step"
    seen_blocks: set[int] = set()
    for x in out.scheduled:
        r = x.request
        assert r.status == RequestStatus.RUNNING and r in s.running
        assert x.start == r.num_computed_tokens
        assert x.num_new_tokens >= 1
        end = x.start + x.num_new_tokens
        assert end <= r.num_tokens
        assert x.sample == (end == r.num_tokens)
        blocks = s.kv.get_block_ids(r.request_id)
        assert len(blocks) == cdiv(end, bs), "blocks must cover exactly the tokens computed so far"
        assert 0 not in blocks, "the null block is never handed out"
        assert not seen_blocks & set(blocks), "two requests share a block"
        seen_blocks |= set(blocks)
    # Running requests stay in arrival order (so the last one is the latest arrival).
    arrivals = [r.arrival_time for r in s.running]
    assert arrivals == sorted(arrivals)
    s.check_integrity()


def step(s: Scheduler, model=fake_token):
    out = s.schedule()
    check_step(s, out)
    sampled = {x.request.request_id: [model(x.request)] for x in out.scheduled if x.sample}
    finished = s.update_from_output(out, sampled)
    assert_no_leak(s)
    return out, finished


def run_all(s: Scheduler, max_steps: int = 10_000, model=fake_token, on_step=None) -> dict[str, Request]:
    done: dict[str, Request] = {}
    for i in range(max_steps):
        if not s.has_unfinished_requests():
            break
        out, finished = step(s, model)
        for r in finished:
            done[r.request_id] = r
        if on_step:
            on_step(i, out)
    assert not s.has_unfinished_requests(), "scheduler did not drain"
    assert_no_leak(s)
    return done


def expected_tokens(prompt: list[int], n: int) -> list[int]:
    r = Request("x", prompt, SamplingParams(max_tokens=n), set(), n)
    for _ in range(n):
        r.append_output_token(fake_token(r))
    return r.output_token_ids


# --------------------------------------------------------------------------------- scheduler
def test_budget_and_max_num_seqs_respected_on_a_random_workload():
    rng = random.Random(0)
    s = new_sched(num_blocks=200, block_size=4, max_num_seqs=5, budget=24)
    reqs = [make_req(f"r{i}", rng.randint(1, 70), rng.randint(1, 20), arrival=i) for i in range(30)]
    for r in reqs:
        s.add_request(r)
    max_batch = 0

    def watch(i, out):
        nonlocal max_batch
        max_batch = max(max_batch, len(out.scheduled))

    done = run_all(s, on_step=watch)
    assert max_batch == 5, "the batch should fill up to max_num_seqs"
    assert set(done) == {r.request_id for r in reqs}
    for r in reqs:
        assert r.status == RequestStatus.FINISHED_LENGTH
        assert r.output_token_ids == expected_tokens(r.prompt_token_ids, r.max_tokens)


def test_chunked_prefill_splits_a_long_prompt():
    s = new_sched(budget=16, block_size=4)
    r = make_req("long", 50, 3)
    s.add_request(r)
    chunks = []
    run_all(s, on_step=lambda i, out: chunks.append([(x.start, x.num_new_tokens, x.sample) for x in out.scheduled]))
    assert chunks == [
        [(0, 16, False)], [(16, 16, False)], [(32, 16, False)], [(48, 2, True)],
        [(50, 1, True)], [(51, 1, True)],
    ]
    assert r.num_output_tokens == 3


def test_prefill_chunks_share_steps_with_decodes():
    s = new_sched(budget=10, block_size=4)
    a = make_req("a", 3, 20, arrival=0)
    s.add_request(a)
    step(s)  # a's prompt
    b = make_req("b", 30, 2, arrival=1)
    s.add_request(b)
    out, _ = step(s)
    # The decode comes first and costs 1 token; b's prefill gets the remaining 9.
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 1), ("b", 9)]
    out, _ = step(s)
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 1), ("b", 9)]


def test_without_chunking_a_prompt_waits_for_a_step_with_room():
    s = new_sched(budget=64, block_size=4, chunked=False)
    a, b = make_req("a", 40, 2, arrival=0), make_req("b", 40, 2, arrival=1)
    s.add_request(a)
    s.add_request(b)
    out, _ = step(s)
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 40)]
    out, _ = step(s)
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 1), ("b", 40)]
    run_all(s)


def test_decodes_first_then_fcfs_admission():
    s = new_sched(budget=8, block_size=4, max_num_seqs=8)
    first = make_req("first", 2, 10, arrival=0)
    s.add_request(first)
    step(s)
    w1, w2, w3 = make_req("w1", 4, 2, arrival=1), make_req("w2", 2, 2, arrival=2), make_req("w3", 5, 2, arrival=3)
    for r in (w1, w2, w3):
        s.add_request(r)
    out, _ = step(s)
    # decode of the running request, then waiting requests in arrival order until the budget ends
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [
        ("first", 1), ("w1", 4), ("w2", 2), ("w3", 1)]
    run_all(s)


def test_fcfs_does_not_skip_a_request_that_lacks_blocks():
    """Admission is strictly in order: a later request that would fit does not overtake one that doesn't."""
    s = new_sched(num_blocks=6, block_size=4, budget=64)  # 5 usable blocks
    holder = make_req("holder", 12, 4, arrival=0)  # 3 blocks, then 4
    s.add_request(holder)
    step(s)
    big = make_req("big", 12, 1, arrival=1)  # needs 3 blocks: only 2 free
    small = make_req("small", 2, 1, arrival=2)  # would fit in 1
    s.add_request(big)
    s.add_request(small)
    out, _ = step(s)
    assert [x.request.request_id for x in out.scheduled] == ["holder"]
    assert [r.request_id for r in s.waiting] == ["big", "small"]
    done = run_all(s)
    assert set(done) == {"holder", "big", "small"}


def test_preemption_victim_is_latest_arrival_and_returns_to_front():
    s = new_sched(num_blocks=7, block_size=4, budget=64)  # 6 usable blocks
    reqs = [make_req(n, 4, 8, arrival=i) for i, n in enumerate("ABC")]  # 12 tokens = 3 blocks each at the end
    for r in reqs:
        s.add_request(r)
    late = make_req("D", 3, 2, arrival=10)
    events = []

    def on_step(i, out):
        if i == 0:
            s.add_request(late)
        if out.preempted_ids:
            events.append((list(out.preempted_ids), [r.request_id for r in s.waiting]))
            for rid in out.preempted_ids:
                v = next(r for r in reqs + [late] if r.request_id == rid)
                assert v.status == RequestStatus.PREEMPTED and v.num_computed_tokens == 0
                assert not s.kv.get_block_ids(rid)

    done = run_all(s, on_step=on_step)
    assert s.num_preemptions_total > 0 and events
    victims, waiting = events[0]
    assert victims == ["C"], "the latest-arrived running request is preempted first"
    assert waiting[0] == "C", "a preempted request goes back to the front of the waiting queue"
    assert "D" in waiting and waiting.index("C") < waiting.index("D")
    assert reqs[2].num_preemptions >= 1
    # Everyone finishes with the tokens of an unconstrained run.
    assert set(done) == {"A", "B", "C", "D"}
    for r in reqs + [late]:
        assert r.output_token_ids == expected_tokens(r.prompt_token_ids, r.max_tokens)


def test_preemption_outputs_equal_unconstrained_run():
    rng = random.Random(1)
    specs = [(f"r{i}", rng.randint(1, 40), rng.randint(1, 30)) for i in range(20)]

    def go(num_blocks, budget, seqs):
        s = new_sched(num_blocks=num_blocks, block_size=4, budget=budget, max_num_seqs=seqs)
        for i, (rid, p, m) in enumerate(specs):
            s.add_request(make_req(rid, p, m, arrival=i))
        done = run_all(s)
        return s, {rid: r.output_token_ids for rid, r in done.items()}

    _, free_run = go(1000, 64, 32)
    s, tight = go(20, 12, 8)  # 19 usable blocks: the longest request alone needs 18
    assert s.num_preemptions_total > 0
    assert tight == free_run


def test_self_preemption_when_alone_never_happens_if_it_fits():
    """A request admitted alone always completes: admission guarantees it fits in the whole cache."""
    s = new_sched(num_blocks=5, block_size=4, budget=64)  # 16 tokens
    r = make_req("r", 10, 6)
    s.add_request(r)
    run_all(s)
    assert r.status == RequestStatus.FINISHED_LENGTH and s.num_preemptions_total == 0


def test_abort_frees_blocks_of_running_waiting_and_preempted():
    s = new_sched(num_blocks=9, block_size=4, budget=64, max_num_seqs=2)
    a, b, c = make_req("a", 8, 14, arrival=0), make_req("b", 8, 10, arrival=1), make_req("c", 8, 10, arrival=2)
    for r in (a, b, c):
        s.add_request(r)
    step(s)
    pool = s.kv.pool
    assert pool.num_used_blocks == 4 and [r.request_id for r in s.waiting] == ["c"]
    # waiting (holds no blocks)
    done = s.abort_requests(["c"])
    assert done == [c] and c.status == RequestStatus.FINISHED_ABORTED and not s.waiting
    assert pool.num_used_blocks == 4
    # run until b gets preempted, then abort it while it waits
    while not s.waiting:
        step(s)
    assert s.waiting[0] is b and b.status == RequestStatus.PREEMPTED
    s.abort_requests(["b"])
    assert b.status == RequestStatus.FINISHED_ABORTED and not s.waiting
    assert_no_leak(s)
    # running
    held = len(s.kv.get_block_ids("a"))
    assert held > 0 and pool.num_used_blocks == held
    s.abort_requests(["a", "a", "unknown"])  # repeats and unknown ids are ignored
    assert a.status == RequestStatus.FINISHED_ABORTED
    assert not s.has_unfinished_requests()
    assert_no_leak(s)
    assert s.schedule().is_empty


def test_abort_mid_step_is_ignored_by_update():
    s = new_sched(budget=64)
    a, b = make_req("a", 5, 3, arrival=0), make_req("b", 5, 3, arrival=1)
    s.add_request(a)
    s.add_request(b)
    out = s.schedule()
    s.abort_requests(["a"])  # e.g. a client disconnect while the step runs
    s.update_from_output(out, {"a": [11], "b": [12]})
    assert a.output_token_ids == [] and b.output_token_ids == [12]
    assert_no_leak(s)
    run_all(s)


def test_token_level_stops():
    s = new_sched(budget=64)
    eos = make_req("eos", 3, 10)
    stop = make_req("stop", 3, 10, stop_token_ids=[STOP])
    minimal = make_req("min", 3, 10, min_tokens=3)
    ign = make_req("ign", 3, 4, ignore_eos=True)
    for r in (eos, stop, minimal, ign):
        s.add_request(r)
    script = {"eos": [11, EOS], "stop": [STOP], "min": [EOS, EOS, EOS, 12], "ign": [EOS, EOS, EOS, EOS]}

    def model(r):
        return script[r.request_id][r.num_output_tokens]

    done = run_all(s, model=model)
    assert done["eos"].status.finish_reason == "stop" and done["eos"].stop_reason is None
    assert done["eos"].output_token_ids == [11, EOS]
    assert done["stop"].status.finish_reason == "stop" and done["stop"].stop_reason == STOP
    # min_tokens: an EOS before min_tokens does not stop (the sampler also bans it; see test_sampling)
    assert done["min"].output_token_ids == [EOS, EOS, EOS]
    assert done["min"].status.finish_reason == "stop"
    assert done["ign"].output_token_ids == [EOS] * 4 and done["ign"].status.finish_reason == "length"


def test_scheduler_refuses_requests_that_can_never_fit():
    """Admission (tests/test_admission.py) refuses these for the user; a request that reaches the
    scheduler anyway is a bug, refused as an invariant error, leaving nothing behind."""
    s = new_sched(num_blocks=9, block_size=4, max_model_len=64, budget=16)  # cache: 32 tokens
    with pytest.raises(EngineInvariantError, match="max_model_len 64") as e:
        s.add_request(make_req("too-long", 60, 5))
    assert "60 prompt + 5 new tokens" in str(e.value)
    with pytest.raises(EngineInvariantError, match="KV cache 32 tokens"):
        s.add_request(make_req("too-big", 30, 10))
    assert not s.requests and not s.waiting
    ok = make_req("ok", 30, 2)  # exactly fills the cache
    s.add_request(ok)
    with pytest.raises(EngineInvariantError, match="already in the scheduler"):
        s.add_request(make_req("ok", 1, 1))
    run_all(s)
    assert ok.status == RequestStatus.FINISHED_LENGTH

    s2 = new_sched(budget=16, chunked=False)
    with pytest.raises(EngineInvariantError, match="token budget 16"):
        s2.add_request(make_req("p", 17, 1))
    assert not s2.requests


@pytest.mark.parametrize("seed", range(4))
def test_no_leaks_under_random_adds_aborts_and_stops(seed):
    rng = random.Random(seed)
    bs = rng.choice([1, 2, 4, 16])
    s = new_sched(num_blocks=rng.randint(12, 40) * 16 // bs, block_size=bs, budget=rng.choice([4, 16, 64]),
                  max_num_seqs=rng.choice([1, 3, 16]), max_model_len=128)
    cap = s.kv.usable_blocks * bs
    live: list[str] = []
    n = 0

    def model(r):
        return EOS if rng.random() < 0.03 else fake_token(r)

    for _ in range(400):
        if rng.random() < 0.3 and n < 60:
            p, m = rng.randint(1, 60), rng.randint(1, 40)
            r = make_req(f"q{n}", p, m, arrival=n)
            if p + m <= min(128, cap):
                s.add_request(r)
                live.append(r.request_id)
            else:
                with pytest.raises(EngineInvariantError):
                    s.add_request(r)
            n += 1
        if live and rng.random() < 0.1:
            s.abort_requests([live.pop(rng.randrange(len(live)))])
            assert_no_leak(s)
        if s.has_unfinished_requests():
            step(s, model)
    run_all(s, model=model)


# -------------------------------------------------------------------------------- block pool
def test_block_pool_free_list_is_lru_with_reverse_freeing():
    pool = BlockPool(6)  # blocks 1..5; 0 is the null block
    assert pool.num_free_blocks == 5 and pool.num_used_blocks == 0
    a = pool.allocate(3)
    assert a == [1, 2, 3]
    b = pool.allocate(2)
    assert b == [4, 5] and pool.num_free_blocks == 0
    with pytest.raises(NoFreeBlocksError):
        pool.allocate(1)
    pool.free(a)  # freed in reverse: the tail block 3 is reused first
    assert pool.allocate(1) == [3]
    pool.free(b)  # free list now: 2, 1, 5, 4
    assert pool.allocate(4) == [2, 1, 5, 4]
    pool.check_integrity()


def test_block_pool_allocation_failure_is_all_or_nothing():
    pool = BlockPool(4)
    pool.allocate(2)
    with pytest.raises(NoFreeBlocksError):
        pool.allocate(2)
    assert pool.num_free_blocks == 1
    pool.check_integrity()


def test_block_pool_ref_counts():
    pool = BlockPool(5)
    [x] = pool.allocate(1)
    pool.incref(x)
    pool.free([x])
    assert pool.ref_cnt[x] == 1 and pool.num_used_blocks == 1
    pool.free([x])
    assert pool.ref_cnt[x] == 0 and pool.num_free_blocks == 4
    # A block taken back from the middle of the free list (a prefix-cache hit) leaves it at once.
    pool.incref(x)
    assert pool.num_free_blocks == 3 and x not in pool.allocate(3)
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free([x, x])
    with pytest.raises(ValueError):
        BlockPool(1)


def test_block_pool_check_integrity_detects_corruption():
    pool = BlockPool(4)
    [x] = pool.allocate(1)
    pool.ref_cnt[x] = 0  # off the free list with no reference: a leak
    with pytest.raises(AssertionError):
        pool.check_integrity()


def test_kv_manager_allocates_lazily_and_all_or_nothing():
    kv = KVCacheManager(num_blocks=5, block_size=4)  # 4 usable
    r = make_req("r", 6, 10)
    assert kv.allocate_slots(r, 6) and len(kv.get_block_ids("r")) == 2
    r.num_computed_tokens = 6
    assert kv.allocate_slots(r, 2) and len(kv.get_block_ids("r")) == 2  # still fits in block 2
    assert not kv.allocate_slots(r, 11)  # would need 5 blocks in all
    assert len(kv.get_block_ids("r")) == 2 and kv.pool.num_free_blocks == 2
    kv.check_integrity()
    kv.req_blocks["r"].append(kv.pool.allocate(1)[0])
    kv.req_blocks["ghost"] = [kv.req_blocks["r"].pop()]
    kv.check_integrity()  # still consistent: every used block is held by exactly one table
    kv.req_blocks.pop("ghost")  # a table dropped without freeing: a leak
    with pytest.raises(AssertionError):
        kv.check_integrity()


def test_long_prefill_token_threshold_caps_each_requests_chunk():
    """vLLM's --long-prefill-token-threshold: no request computes more than the threshold in one step (a long
    prompt is prefilled in chunks of it while a running request keeps decoding in the same steps); outputs are
    unchanged."""
    s = Scheduler(KVCacheManager(64, 4), 8, 32, 256, long_prefill_token_threshold=8)
    a = make_req("a", 3, 8)
    s.add_request(a)
    step(s)  # a's whole 3-token prompt (under the threshold)
    b = make_req("b", 20, 2, arrival=1.0)
    s.add_request(b)
    steps: list[list[tuple[str, int, int]]] = []
    run_all(s, on_step=lambda i, out: steps.append([(x.request.request_id, x.start, x.num_new_tokens)
                                                    for x in out.scheduled]))
    assert steps[:3] == [[("a", 3, 1), ("b", 0, 8)], [("a", 4, 1), ("b", 8, 8)], [("a", 5, 1), ("b", 16, 4)]]
    assert max(n for st in steps for _, _, n in st) == 8  # the budget (32) would have taken b whole
    for r in (a, b):
        assert r.output_token_ids == expected_tokens(r.prompt_token_ids, r.max_tokens)


def test_long_prefill_token_threshold_flag_checks():
    from pagoda.config import EngineArgs

    EngineArgs(model="m", long_prefill_token_threshold=256).validate()
    with pytest.raises(ValueError, match="long_prefill_token_threshold must be 0"):
        EngineArgs(model="m", long_prefill_token_threshold=-1).validate()
    with pytest.raises(ValueError, match="needs chunked prefill"):
        EngineArgs(model="m", long_prefill_token_threshold=64, enable_chunked_prefill=False).validate()


# ------------------------------------------------------------------- launch pacing's admission estimate
def test_room_for_arrival_counts_seats_and_the_waiting_prompts():
    s = new_sched(max_num_seqs=4, budget=32)
    assert s.room_for_arrival()
    for i in range(2):
        s.add_request(make_req(f"d{i}", 3, 50, arrival=i))
    step(s)  # both prompts computed: two running decodes (one token each next step)
    s.add_request(make_req("w", 29, 5, arrival=5))  # 2 + 29 = 31 of 32 tokens: one left
    assert s.room_for_arrival()
    s.add_request(make_req("x", 1, 5, arrival=6))  # the last token taken
    assert not s.room_for_arrival()
    s.abort_requests(["x"])
    assert s.room_for_arrival()
    s.add_request(make_req("y", 1, 5, arrival=7))  # 2 running + 2 waiting = 4 seats
    assert not s.room_for_arrival()
    capped = Scheduler(KVCacheManager(64, 4), 8, 32, 256, long_prefill_token_threshold=8)
    capped.add_request(make_req("long", 100, 2))  # counts as the 8 tokens its first chunk takes
    assert capped.room_for_arrival()


@pytest.mark.parametrize("seed", range(6))
def test_room_for_arrival_agrees_with_the_next_schedule(seed):
    """With decoding requests running and no prefix cache (the cases the estimate counts exactly), a request that
    arrives when ``room_for_arrival()`` says yes is scheduled in the next step, and one that arrives when it says no
    is not."""
    rng = random.Random(seed)
    for _ in range(25):
        s = new_sched(num_blocks=400, max_num_seqs=rng.randint(2, 8), budget=rng.randint(4, 40))
        for i in range(rng.randint(0, s.max_num_seqs)):
            s.add_request(make_req(f"r{i}", rng.randint(1, 3), 100, arrival=i))
        # Every prompt admitted and computed: the running requests only decode from here.
        while s.waiting or any(r.num_computed_tokens < r.num_prompt_tokens for r in s.running):
            step(s)
        for i in range(rng.randint(0, 3)):
            s.add_request(make_req(f"w{i}", rng.randint(1, 20), 3, arrival=100 + i))
        room = s.room_for_arrival()
        new = make_req("new", rng.randint(1, 20), 3, arrival=200)
        s.add_request(new)
        out = s.schedule()
        assert (new in [x.request for x in out.scheduled]) == room
