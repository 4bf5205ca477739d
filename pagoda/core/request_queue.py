"""The scheduler's waiting queue, one class per scheduling policy (vLLM's ``request_queue``).

* ``fcfs`` (:class:`FCFSRequestQueue`): arrival order; ``prepend_request`` puts a request at
  the front (a preempted request, a fork that could not share its leader's blocks).
* ``priority`` (:class:`PriorityRequestQueue`): ordered by ``(priority, arrival_time)``, lower
  first; there is no front, so ``prepend_request`` places a request by its key like any other.
  Equal keys (the samples of one request share their arrival time) keep insertion order.

The policy also orders the running requests (:meth:`RequestQueue.order_running`): the scheduler
serves them in that order and, when blocks run out, preempts the last one. Under ``fcfs`` that
is the latest to start running (the list is not reordered); under ``priority`` the running list
is sorted by the same key, so the victim is the lowest-priority, latest-arrived request.
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator

from pagoda.core.request import Request


class RequestQueue(ABC):
    """Waiting requests in the order the policy admits them."""

    @abstractmethod
    def add_request(self, request: Request) -> None:
        """Queue a new request."""

    @abstractmethod
    def prepend_request(self, request: Request) -> None:
        """Queue a request that should go before new arrivals (preempted, or a fork sent back)."""

    @abstractmethod
    def peek_request(self) -> Request:
        """The request admitted next (IndexError when empty)."""

    @abstractmethod
    def pop_request(self) -> Request:
        """Remove and return the request admitted next."""

    @abstractmethod
    def remove_request(self, request: Request) -> None:
        """Remove a queued request (ValueError when absent)."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __iter__(self) -> Iterator[Request]: ...

    def __bool__(self) -> bool:
        return len(self) > 0

    def __contains__(self, request: object) -> bool:
        return any(r is request for r in self)

    @abstractmethod
    def order_running(self, running: list[Request]) -> None:
        """Reorder ``running`` in place into serving order (the last one is preempted first)."""


class FCFSRequestQueue(deque[Request], RequestQueue):
    """First come, first served (a deque: ``[0]`` is the next request)."""

    def add_request(self, request: Request) -> None:
        self.append(request)

    def prepend_request(self, request: Request) -> None:
        self.appendleft(request)

    def peek_request(self) -> Request:
        if not self:
            raise IndexError("peek from an empty queue")
        return self[0]

    def pop_request(self) -> Request:
        return self.popleft()

    def remove_request(self, request: Request) -> None:
        self.remove(request)

    def __len__(self) -> int:
        return deque.__len__(self)

    def __iter__(self) -> Iterator[Request]:
        return deque.__iter__(self)

    def __bool__(self) -> bool:
        return deque.__len__(self) > 0

    def __contains__(self, request: object) -> bool:
        return deque.__contains__(self, request)

    def order_running(self, running: list[Request]) -> None:
        """Served in the order they started running: nothing to do."""


def priority_key(r: Request) -> tuple[int, float]:
    """Lower is served first; the running request with the largest key is preempted first."""
    return r.priority, r.arrival_time


class PriorityRequestQueue(RequestQueue):
    """A heap of ``(priority, arrival_time, insertion number, request)``."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, float, int, Request]] = []
        self._count = itertools.count()

    def add_request(self, request: Request) -> None:
        heapq.heappush(self._heap, (*priority_key(request), next(self._count), request))

    def prepend_request(self, request: Request) -> None:
        self.add_request(request)  # no front in a priority queue: its key places it

    def peek_request(self) -> Request:
        if not self._heap:
            raise IndexError("peek from an empty queue")
        return self._heap[0][3]

    def pop_request(self) -> Request:
        if not self._heap:
            raise IndexError("pop from an empty queue")
        return heapq.heappop(self._heap)[3]

    def remove_request(self, request: Request) -> None:
        for i, entry in enumerate(self._heap):
            if entry[3] is request:
                self._heap[i] = self._heap[-1]
                self._heap.pop()
                heapq.heapify(self._heap)
                return
        raise ValueError(f"request {request.request_id!r} is not queued")

    def __len__(self) -> int:
        return len(self._heap)

    def __iter__(self) -> Iterator[Request]:
        return (entry[3] for entry in sorted(self._heap, key=lambda e: e[:3]))

    def order_running(self, running: list[Request]) -> None:
        running.sort(key=priority_key)  # stable: equal keys keep their order


def create_request_queue(policy: str) -> RequestQueue:
    """The waiting queue of a scheduling policy (``fcfs`` or ``priority``)."""
    if policy == "fcfs":
        return FCFSRequestQueue()
    if policy == "priority":
        return PriorityRequestQueue()
    raise ValueError(f"unknown scheduling policy {policy!r}; use fcfs or priority")
