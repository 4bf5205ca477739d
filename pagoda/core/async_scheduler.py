"""The scheduler for asynchronous scheduling: one step stays in flight.

``schedule()`` of step N runs while step N-1 is still on the device, so ``update_from_output``
of step N-1 comes after it. A request in the step in flight carries two counters (see
:mod:`pagoda.core.request`), both 0 whenever no step is in flight:

* ``num_inflight_tokens``: tokens scheduled in a step not yet updated (not yet in
  ``num_computed_tokens``);
* ``num_placeholders``: tokens such steps will sample, not yet known on the host.

A request is planned from ``num_computed_tokens + num_inflight_tokens`` to ``num_tokens +
num_placeholders``: its next decode is scheduled before its last token is known, and the
model runner takes that token from the previous step's device output. A request whose token
in flight is its last (``max_tokens`` or the context length) is not scheduled again; one that
stops on EOS or a stop token spends one extra row, dropped when its update comes. A request
preempted while in flight keeps the token it was sampling (its context was complete) and is
not re-admitted until that token is known.

One sampled token per request per step while a step is in flight: the device-side fill of a
placeholder reads one token per request. Speculative decoding samples several, so the engine
completes each step before scheduling the next when it speculates (the proposer needs the
accepted tokens on the host anyway); a multi-row step scheduled for a request that still has a
step in flight is refused here.
"""

from __future__ import annotations

from pagoda.core.request import Request, RequestStatus
from pagoda.core.scheduler import ScheduledRequest, Scheduler


class AsyncScheduler(Scheduler):
    def _span(self, req: Request) -> tuple[int, int]:
        return (req.num_computed_tokens + req.num_inflight_tokens,
                req.num_tokens + req.num_placeholders + len(req.spec_token_ids))

    def _can_extend(self, req: Request, end: int) -> bool:
        return not (req.num_placeholders and self._last_token_in_flight(req, end))

    def _last_token_in_flight(self, req: Request, end: int) -> bool:
        """The token being sampled for ``req`` ends it by length: nothing to schedule after it."""
        return req.num_output_tokens + req.num_placeholders >= req.max_tokens or end >= self.max_model_len

    def _can_admit(self, req: Request) -> bool:
        return not req.num_placeholders  # preempted while its token was in flight: wait for that token

    def _on_scheduled(self, s: ScheduledRequest) -> None:
        if s.sample and s.num_sample_rows != 1 and (s.request.num_placeholders or s.request.num_inflight_tokens):
            raise ValueError(
                f"request {s.request.request_id}: async scheduling samples one token per request per step "
                f"(asked for {s.num_sample_rows}); turn async scheduling off for multi-token steps."
            )
        s.request.num_inflight_tokens += s.num_new_tokens
        s.request.num_placeholders += s.sample

    def _preempt(self, req: Request) -> None:
        super()._preempt(req)
        req.num_inflight_tokens = 0

    def _advance(self, s: ScheduledRequest) -> bool:
        req = s.request
        if req.status.finished:  # finished or aborted while the step ran: nothing from it counts
            req.num_inflight_tokens = req.num_placeholders = 0
            return False
        if req.status == RequestStatus.RUNNING:
            req.num_inflight_tokens -= s.num_new_tokens
            super()._advance(s)
        elif not (s.sample and req.num_placeholders):
            return False  # preempted mid-prompt: that chunk is recomputed
        # else: preempted after this step was launched; its token is valid.
        if s.sample:
            req.num_placeholders -= 1
        return True

    def check_integrity(self) -> None:
        super().check_integrity()
        for req in self.requests.values():
            if req.num_inflight_tokens < 0 or req.num_placeholders < 0:
                raise AssertionError(f"request {req.request_id}: negative in-flight counters")
