"""Aborting many queued requests stays linear (the scheduler's waiting queue and pending forks).

``LLM.generate`` aborts every request it queued when one prompt is refused or the run is interrupted, one
``abort_requests`` call per prompt (its samples together), and a server aborts requests one by one as clients go.
Each abort must cost about O(1) in the number of other queued requests: the work is counted as comparisons made
by the queue (priority keys and requests count the times they are compared), never timed.
"""

from __future__ import annotations

import pytest
from test_prefix_caching import assert_no_leak

from pagoda.core.kv_cache_manager import KVCacheManager
from pagoda.core.request import Request
from pagoda.core.request_queue import create_request_queue
from pagoda.core.scheduler import Scheduler
from pagoda.sampling_params import SamplingParams

COMPARES = [0]


class CountedPriority(int):
    """A priority that counts how often a heap compares it."""

    def __lt__(self, other: object) -> bool:
        COMPARES[0] += 1
        return int(self) < int(other)  # type: ignore[call-overload]

    def __eq__(self, other: object) -> bool:
        COMPARES[0] += 1
        return int(self) == other

    __hash__ = int.__hash__


class CountedRequest(Request):
    """A request that counts how often a list or deque compares it with another one."""

    def __eq__(self, other: object) -> bool:
        if other is not self:
            COMPARES[0] += 1
        return other is self

    __hash__ = Request.__hash__


def queued(policy: str, num_prompts: int, n: int) -> tuple[Scheduler, list[list[str]]]:
    """A scheduler holding ``num_prompts`` waiting prompts of ``n`` samples each (the samples after the first
    wait for its prompt as pending forks). Returns it and each prompt's request ids."""
    s = Scheduler(KVCacheManager(64, 4, enable_prefix_caching=True), 8, 64, 512, scheduling_policy=policy)
    groups = []
    for i in range(num_prompts):
        ids = [f"{i}-{j}" for j in range(n)]
        for j, rid in enumerate(ids):
            sp = SamplingParams(max_tokens=4, temperature=0.0)
            r = CountedRequest(rid, [5, 6, 7, i % 50], sp, {2}, 4, arrival_time=float(i),
                               priority=CountedPriority(i % 3))
            s.add_request(r, fork_of=ids[0] if j else None)
        groups.append(ids)
    return s, groups


@pytest.mark.parametrize("policy", ["fcfs", "priority"])
@pytest.mark.parametrize("n", [1, 3])
def test_aborting_queued_prompts_one_by_one_is_linear(policy, n):
    num = 2000
    s, groups = queued(policy, num, n)
    assert s.num_waiting == num * n and s.num_pending_forks == num * (n - 1)
    COMPARES[0] = 0
    for ids in groups:  # as LLM.generate aborts what it queued: one call per prompt
        assert len(s.abort_requests(ids)) == n
    # Linear: a few comparisons per request (a quadratic scan makes about num**2 / 2 = 2,000,000).
    assert COMPARES[0] <= 20 * num * n, COMPARES[0]
    assert s.num_waiting == 0 and s.num_pending_forks == 0 and not s.forks
    assert_no_leak(s)


def test_priority_queue_order_survives_removals():
    """Removed requests never come out again; the others come out by (priority, arrival), ties in insertion
    order, also after the queue compacts its removed entries."""
    q = create_request_queue("priority")
    sp = SamplingParams(max_tokens=1)
    reqs = [Request(f"r{i}", [1], sp, set(), 1, arrival_time=float(i % 7), priority=i % 4) for i in range(200)]
    for r in reqs:
        q.add_request(r)
    gone = set(range(0, 200, 3)) | set(range(1, 200, 5))
    for i in sorted(gone):
        q.remove_request(reqs[i])
    with pytest.raises(ValueError):
        q.remove_request(reqs[0])
    live = [r for i, r in enumerate(reqs) if i not in gone]
    assert len(q) == len(live) and all(r in q for r in live) and not any(reqs[i] in q for i in gone)
    want = sorted(live, key=lambda r: (r.priority, r.arrival_time))  # stable: insertion order on ties
    assert list(q) == want
    assert q.peek_request() is want[0]
    assert [q.pop_request() for _ in range(len(want))] == want
    assert not q and len(q) == 0
    with pytest.raises(IndexError):
        q.peek_request()
