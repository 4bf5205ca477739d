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
from typing import Any

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
    """A heap of ``[priority, arrival_time, insertion number, request]`` entries.

    Removal is lazy (O(1)): the entry's request becomes None and the entry is dropped when it reaches
    the top, so aborting many queued requests one by one stays linear. Invariants: a request is queued
    at most once; ``_entries`` maps each queued request to its live heap entry; the heap holds at most
    ``2 * len(self) + 16`` entries (it is rebuilt without the dead ones beyond that).
    """

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._entries: dict[Request, list[Any]] = {}
        self._count = itertools.count()

    def add_request(self, request: Request) -> None:
        entry: list[Any] = [*priority_key(request), next(self._count), request]
        self._entries[request] = entry
        heapq.heappush(self._heap, entry)

    def prepend_request(self, request: Request) -> None:
        self.add_request(request)  # no front in a priority queue: its key places it

    def _drop_dead_top(self) -> None:
        while self._heap and self._heap[0][3] is None:
            heapq.heappop(self._heap)

    def peek_request(self) -> Request:
        self._drop_dead_top()
        if not self._heap:
            raise IndexError("peek from an empty queue")
        request: Request = self._heap[0][3]
        return request

    def pop_request(self) -> Request:
        self._drop_dead_top()
        if not self._heap:
            raise IndexError("pop from an empty queue")
        request: Request = heapq.heappop(self._heap)[3]
        del self._entries[request]
        return request

    def remove_request(self, request: Request) -> None:
        entry = self._entries.pop(request, None)
        if entry is None:
            raise ValueError(f"request {request.request_id!r} is not queued")
        entry[3] = None
        if len(self._heap) > 2 * len(self._entries) + 16:  # mostly dead entries: rebuild
            self._heap = [e for e in self._heap if e[3] is not None]
            heapq.heapify(self._heap)

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Request]:
        """In admission order, lazily (a reader that stops early pays for what it read, plus a copy)."""
        heap = list(self._heap)
        while heap:
            request = heapq.heappop(heap)[3]
            if request is not None:
                yield request

    def __contains__(self, request: object) -> bool:
        return isinstance(request, Request) and request in self._entries

    def order_running(self, running: list[Request]) -> None:
        running.sort(key=priority_key)  # stable: equal keys keep their order


def create_request_queue(policy: str) -> RequestQueue:
    """The waiting queue of a scheduling policy (``fcfs`` or ``priority``)."""
    if policy == "fcfs":
        return FCFSRequestQueue()
    if policy == "priority":
        return PriorityRequestQueue()
    raise ValueError(f"unknown scheduling policy {policy!r}; use fcfs or priority")
