"""The scheduler for pipeline parallelism: several steps in flight, each request in at most one of them.

With ``--pipeline-parallel-size P`` the engine core keeps up to P launched steps in a queue (vLLM's batch
queue) so that every stage has work: while the last stage runs step N, the first already runs step N+1.
``schedule()`` therefore runs again before ``update_from_output`` of the steps in flight, and the steps'
updates come in launch order. A request with a step in flight is skipped (not extended, not re-admitted)
until that step's update: its next chunk depends on the step's result (its computed tokens, its sampled
token), so no request is ever in two in-flight steps, and every step is planned from a fully updated request.

A request preempted while its step is in flight: its blocks are freed at once (a later step that reuses
them runs after the in-flight one on every stage, since each stage runs steps in launch order); a prompt chunk
of that step is recomputed later, and a token it sampled is kept (its context was complete), as
:class:`~pagoda.core.async_scheduler.AsyncScheduler` does.
"""

from __future__ import annotations

from typing import Any

from pagoda.core.request import Request, RequestStatus
from pagoda.core.scheduler import ScheduledRequest, Scheduler


class PipelineScheduler(Scheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.in_flight: set[str] = set()  # ids of requests in a launched, not yet updated step

    def _can_extend(self, req: Request, end: int) -> bool:
        return req.request_id not in self.in_flight

    def _can_admit(self, req: Request) -> bool:
        return req.request_id not in self.in_flight  # preempted while in flight: wait for that step

    def _on_scheduled(self, s: ScheduledRequest) -> None:
        if s.num_sample_rows != 1:
            raise ValueError(f"request {s.request.request_id}: pipeline parallelism samples one token per request "
                             f"per step (asked for {s.num_sample_rows}).")
        self.in_flight.add(s.request.request_id)

    def _advance(self, s: ScheduledRequest) -> bool:
        req = s.request
        if req.status.finished:  # _finish dropped its mark: one under its id now is a new request's (id reused)
            return False
        self.in_flight.discard(req.request_id)
        if req.status == RequestStatus.RUNNING:
            return super()._advance(s)
        return s.sample  # preempted after launch: a prompt chunk is recomputed, a sampled token kept

    def _finish(self, req: Request) -> None:
        super()._finish(req)
        self.in_flight.discard(req.request_id)

    def check_integrity(self) -> None:
        super().check_integrity()
        if not self.has_unfinished_requests() and self.in_flight:
            raise AssertionError(f"idle scheduler has requests in flight: {sorted(self.in_flight)}")
