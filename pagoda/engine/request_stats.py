"""Per-request timing kept by the front end, and what it reports when a request finishes.

The phases follow vLLM's ``FinishedRequestStats``: *queued* from arrival at the engine core
to the first scheduling, *prefill* from the first scheduling to the first token, *decode*
from the first to the last token, *inference* = prefill + decode. The first scheduling is
the core's wall-clock time (``QueueTime.scheduled_at``); token times are the front end's
wall clock when the step's outputs arrive (the same machine clock). Invariant:
``prefill_time + decode_time == inference_time``; a phase a request never reached is 0, and
a request never scheduled was queued for its whole life.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pagoda import envs


@dataclass
class ChildTimes:
    """Timestamps of one engine request (one sample of a user request)."""

    queued_s: float = 0.0
    scheduled_at: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None


@dataclass(frozen=True)
class FinishedRequestStats:
    """One finished engine request (each of ``n`` samples counts once, as in vLLM)."""

    finish_reason: str
    e2e_latency: float
    num_prompt_tokens: int
    num_generation_tokens: int
    max_tokens_param: int | None = None
    num_cached_tokens: int = 0
    queued_time: float = 0.0
    prefill_time: float = 0.0
    decode_time: float = 0.0

    @property
    def inference_time(self) -> float:
        return self.prefill_time + self.decode_time

    @property
    def mean_time_per_output_token(self) -> float:
        """Decode time per token after the first (0 with fewer than two tokens), as vLLM's."""
        return self.decode_time / (self.num_generation_tokens - 1) if self.num_generation_tokens > 1 else 0.0


def finished_stats(times: ChildTimes | None, now: float, arrival: float, reason: str, num_prompt_tokens: int,
                   num_generation_tokens: int, max_tokens_param: int | None = None,
                   num_cached_tokens: int = 0) -> FinishedRequestStats:
    """The stats of a request finishing at ``now`` (wall clock) from its recorded times."""
    t = times or ChildTimes()
    e2e = max(0.0, now - arrival)
    queued, prefill, decode = t.queued_s, 0.0, 0.0
    if t.scheduled_at is None:  # never scheduled: it waited all along
        queued = e2e
    else:
        end_prefill = t.first_token_at if t.first_token_at is not None else now
        prefill = max(0.0, end_prefill - t.scheduled_at)
        if t.first_token_at is not None and t.last_token_at is not None:
            decode = max(0.0, t.last_token_at - t.first_token_at)
    return FinishedRequestStats(reason, e2e, num_prompt_tokens, num_generation_tokens,
                                max_tokens_param, num_cached_tokens, queued, prefill, decode)


class RequestTrace:
    """``PAGODA_REQUEST_TRACE``: one JSON line per finished engine request (``id``: the user request's,
    ``child``: the engine request's, one per sample), appended by the API server, with its
    wall-clock times: ``arrival`` (registered by the front end, after tokenization), ``core_arrival`` (added to
    the engine core), ``scheduled`` (first scheduling), ``first_token`` / ``last_token`` (their step's outputs
    received by the front end); a time the request never reached is null. A diagnostic of where the time to first
    token goes (``benchmarks/ttft_breakdown.py``); line-buffered, so a killed server keeps what it wrote."""

    def __init__(self, path: str) -> None:
        self._f = open(path, "a", buffering=1)  # noqa: SIM115 (lives as long as the server)

    @classmethod
    def from_env(cls) -> RequestTrace | None:
        path = envs.request_trace_path()
        return cls(path) if path else None

    def write(self, request_id: str, child_id: str, arrival: float, times: ChildTimes | None,
              stats: FinishedRequestStats) -> None:
        t = times or ChildTimes()
        core = t.scheduled_at - t.queued_s if t.scheduled_at is not None else None
        self._f.write(json.dumps({
            "id": request_id, "child": child_id, "arrival": arrival, "core_arrival": core, "scheduled": t.scheduled_at,
            "first_token": t.first_token_at, "last_token": t.last_token_at,
            "prompt_tokens": stats.num_prompt_tokens, "output_tokens": stats.num_generation_tokens,
            "finish_reason": stats.finish_reason}) + "\n")
