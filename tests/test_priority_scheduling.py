"""--scheduling-policy priority: the waiting queue is ordered by (priority, arrival) and a preemption takes
the lowest-priority running request (vLLM's policy); fcfs is unchanged. A fake model as in test_scheduler."""

from __future__ import annotations

import pytest
from engine_checks import PROMPTS, greedy
from test_scheduler import assert_no_leak, expected_tokens, fake_token, make_req

from pagoda.core.kv_cache_manager import KVCacheManager
from pagoda.core.request import Request, RequestStatus
from pagoda.core.request_queue import FCFSRequestQueue, PriorityRequestQueue
from pagoda.core.scheduler import Scheduler


def new_sched(policy: str, num_blocks=64, block_size=4, max_num_seqs=8, budget=32) -> Scheduler:
    return Scheduler(KVCacheManager(num_blocks, block_size), max_num_seqs, budget, 256, scheduling_policy=policy)


def run(s: Scheduler, on_step=None) -> dict[str, Request]:
    done: dict[str, Request] = {}
    for _ in range(10_000):
        if not s.has_unfinished_requests():
            break
        out = s.schedule()
        if on_step:
            on_step(out)
        sampled = {x.request.request_id: [fake_token(x.request)] for x in out.scheduled if x.sample}
        for r in s.update_from_output(out, sampled):
            done[r.request_id] = r
        assert_no_leak(s)
    assert not s.has_unfinished_requests()
    return done


def prioritised(rid: str, priority: int, arrival: float, prompt_len=8, max_tokens=4) -> Request:
    r = make_req(rid, prompt_len, max_tokens, arrival=arrival)
    r.priority = priority
    return r


def admission_order(policy: str, reqs: list[Request]) -> list[str]:
    s = new_sched(policy, max_num_seqs=1)
    for r in reqs:
        s.add_request(r)
    order: list[str] = []

    def record(out):
        for x in out.scheduled:
            if x.request.request_id not in order:
                order.append(x.request.request_id)
    done = run(s, record)
    for r in reqs:
        assert done[r.request_id].output_token_ids == expected_tokens(r.prompt_token_ids, 4)
    return order


def test_waiting_requests_are_admitted_by_priority_then_arrival():
    reqs = [prioritised("a", 3, 0.0), prioritised("b", 1, 1.0), prioritised("c", 2, 2.0), prioritised("d", 1, 3.0)]
    assert admission_order("priority", reqs) == ["b", "d", "c", "a"]


def test_fcfs_ignores_priority_order():
    reqs = [prioritised("a", 3, 0.0), prioritised("b", 1, 1.0), prioritised("c", 2, 2.0)]
    assert admission_order("fcfs", reqs) == ["a", "b", "c"]


def _preempted_first(policy: str) -> str:
    # 9 usable blocks of 4 tokens: two requests of 8 prompt + 12 new tokens (5 blocks each) cannot both finish.
    s = new_sched(policy, num_blocks=10, max_num_seqs=4)
    low = prioritised("low", 5, 0.0, max_tokens=12)  # arrived first, least important
    high = prioritised("high", 0, 1.0, max_tokens=12)
    s.add_request(low)
    s.add_request(high)
    preempted: list[str] = []
    done = run(s, lambda out: preempted.extend(out.preempted_ids))
    assert preempted, "control: the cache is too small for both"
    for r in (low, high):
        assert done[r.request_id].output_token_ids == expected_tokens(r.prompt_token_ids, 12)
        assert done[r.request_id].status == RequestStatus.FINISHED_LENGTH
    return preempted[0]


def test_preemption_takes_the_lowest_priority_running_request():
    assert _preempted_first("priority") == "low"
    assert _preempted_first("fcfs") == "high"  # fcfs: the latest to start running


def test_parallel_sampling_forks_under_priority():
    s = new_sched("priority")
    leader = prioritised("0_r", 1, 0.0)
    s.add_request(prioritised("x", 0, 1.0))
    s.add_request(leader)
    for i in (1, 2):
        f = make_req(f"{i}_r", 8, 4, arrival=0.0)
        f.prompt_token_ids = list(leader.prompt_token_ids)
        f.all_token_ids = list(leader.prompt_token_ids)
        f.priority = 1
        s.add_request(f, fork_of="0_r")
    done = run(s)
    assert set(done) == {"x", "0_r", "1_r", "2_r"}


def test_queues_keep_their_order_through_prepend_and_remove():
    a, b, c = (prioritised(r, p, t) for r, p, t in (("a", 2, 0.0), ("b", 1, 1.0), ("c", 1, 2.0)))
    q = PriorityRequestQueue()
    for r in (a, b, c):
        q.add_request(r)
    assert [r.request_id for r in q] == ["b", "c", "a"]
    q.remove_request(b)
    q.prepend_request(b)  # no front: placed by its key
    assert q.pop_request() is b and q.peek_request() is c and len(q) == 2 and a in q
    f = FCFSRequestQueue()
    for r in (a, b):
        f.add_request(r)
    f.prepend_request(c)
    assert [r.request_id for r in f] == ["c", "a", "b"]


def test_llm_with_the_priority_policy_gives_each_prompt_its_greedy_answer(tiny):
    """End to end through LLM: priorities change the order of service, never the tokens."""
    from pagoda.errors import ValidationError

    plain = tiny.llm("llama")
    prio = tiny.llm("llama", scheduling_policy="priority", max_num_seqs=2)
    sp = greedy(max_tokens=6)
    want = [o.outputs[0].token_ids for o in plain.generate(PROMPTS[:4], sp, use_tqdm=False)]
    got = prio.generate(PROMPTS[:4], sp, use_tqdm=False, priority=[3, -1, 2, 0])
    assert [o.outputs[0].token_ids for o in got] == want
    with pytest.raises(ValidationError) as e:
        prio.generate(PROMPTS[:2], sp, use_tqdm=False, priority=[1])
    assert e.value.parameter == "priority"
