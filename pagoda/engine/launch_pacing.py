"""When a server's engine core launches its next step, with asynchronous scheduling: late enough that requests
arriving meanwhile can still join it.

Asynchronous scheduling launches step N+1 as soon as step N's outputs are back, while the device still runs
the step before; a request that arrives during step N therefore waits for N, then N+1 (already launched
without it), and joins N+2. Measured on an H200 at 64 streams (RESULTS.md, session 16), that in-flight step
is a whole decode step (~6.4 ms) of each new request's time to first token.

Pacing: the core's loop keeps admitting requests until shortly before the step in flight is predicted to end,
then schedules and launches the next one. The prediction is conservative so the device does not wait for the
host: the step's start (the later of its launch and the previous step's end, both seen on the host) plus the
*shortest* recent device time of steps of the same kind (forward path and token-count bucket), less the
longest recent host time from the end of a hold to the launch it leads to, less a margin. A kind without
enough history, no room for a new request in the next step (every seat or the token budget already taken by
the running and waiting requests: the engine core's check, ``EngineCore.launch_hold_until``), or a prediction
less than :data:`MIN_HOLD_S` away: no hold, the step launches at once as before. Requests already waiting do
not prevent a hold: their step starts on the device when the one in flight ends, held or not. A hold needs the
host to have time to spare: steps whose host work is as long as their device time (eager launches) leave none.

Timing only: which step a request joins may change, never what any step computes.
``PAGODA_LAUNCH_PACING=0`` turns it off (an A/B switch).
"""

from __future__ import annotations

from collections import defaultdict, deque
from dataclasses import dataclass

WINDOW = 8
"""Recent samples kept per step kind (durations) and of the host's hold-to-launch time."""
MIN_SAMPLES = 3
"""Durations of a kind needed before its steps are predicted."""
MARGIN_S = 0.0004
"""Slack left between the predicted launch and the predicted end of the step in flight."""
MIN_HOLD_S = 0.001
"""A hold shorter than this is not worth a poll: the step launches at once."""


def step_kind(path: str | None, num_tokens: int) -> tuple[str, int]:
    """The kind of a step for its duration: forward path and the power-of-two bucket of its token rows."""
    return (path or "none", max(1, num_tokens - 1).bit_length())


@dataclass
class _InFlight:
    kind: tuple[str, int]
    launched_at: float


class LaunchPacer:
    """Predicts when the engine core may launch its next step (module docstring). Times are ``time.perf_counter()``
    seconds. The core reports each launch (:meth:`launched`), each result's arrival (:meth:`completed`, in launch
    order) and the end of each hold (:meth:`hold_ended`); :meth:`hold_until` answers the loop."""

    def __init__(self) -> None:
        self._durations: dict[tuple[str, int], deque[float]] = defaultdict(lambda: deque(maxlen=WINDOW))
        self._host: deque[float] = deque(maxlen=WINDOW)  # hold end (or step() entry) -> launch
        self._inflight: deque[_InFlight] = deque()
        self._last_done: float | None = None  # when the last completed step's result reached the host
        self._step_entered: float | None = None
        self.holds = 0  # holds granted (for tests and logs)

    def hold_ended(self, now: float) -> None:
        """The loop calls ``step()`` now (after a hold or none)."""
        self._step_entered = now

    def launched(self, path: str | None, num_tokens: int, now: float) -> None:
        if self._step_entered is not None:
            self._host.append(now - self._step_entered)
            self._step_entered = None
        self._inflight.append(_InFlight(step_kind(path, num_tokens), now))

    def completed(self, now: float) -> None:
        """The oldest step in flight has its result on the host now."""
        if not self._inflight:
            return
        s = self._inflight.popleft()
        start = s.launched_at if self._last_done is None else max(s.launched_at, self._last_done)
        self._durations[s.kind].append(now - start)
        self._last_done = now

    def forget(self) -> None:
        """Steps in flight were dropped without results (a failure): start again from what completes next."""
        self._inflight.clear()
        self._last_done = None

    def hold_until(self, now: float) -> float | None:
        """The time until which the loop may keep admitting requests before it calls ``step()``, or None (call
        it now). Only with exactly one step in flight, whose kind has history."""
        if len(self._inflight) != 1 or self._last_done is None or len(self._host) == 0:
            return None
        s = self._inflight[0]
        durs = self._durations.get(s.kind)
        if durs is None or len(durs) < MIN_SAMPLES:
            return None
        end = max(s.launched_at, self._last_done) + min(durs)
        until = end - max(self._host) - MARGIN_S
        if until - now < MIN_HOLD_S:
            return None
        self.holds += 1
        return until
