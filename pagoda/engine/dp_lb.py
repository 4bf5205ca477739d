"""Data parallelism in the front end: which replica gets a new request, and the replicas' stats summed.

vLLM's internal load balancer (``DPLBAsyncMPClient``): the front end keeps, per engine core, the
number of waiting and running requests that the core last reported (with every step's outputs and
every idle heartbeat) and sends a new request to the one with the smallest ``4 * waiting + running``
(a waiting request costs more than a running one: it still needs its prefill and a place in the
batch). A dispatch counts as one more waiting request on the chosen replica at once, so a burst of
requests that arrives between two reports spreads over the replicas instead of piling onto the one
that looked idle. Ties go round-robin: the scan starts one replica further each time.
"""

from __future__ import annotations

from pagoda.engine.messages import SchedulerStats

WAITING_WEIGHT = 4
"""A waiting request counts this many running ones (vLLM's weight)."""


class LoadBalancer:
    """Invariant: ``counts[i]`` is ``[waiting, running]`` of replica ``i`` as last reported, plus the requests
    sent to it since that report (as waiting)."""

    def __init__(self, num_engines: int) -> None:
        if num_engines < 1:
            raise ValueError(f"a load balancer needs at least one engine, got {num_engines}")
        self.counts = [[0, 0] for _ in range(num_engines)]
        self._start = 0

    @property
    def num_engines(self) -> int:
        return len(self.counts)

    def choose(self) -> int:
        """The least-loaded replica (ties: the first from a start that advances round-robin); counts the
        request as waiting there."""
        n = len(self.counts)
        best, best_score = self._start, None
        for k in range(n):
            i = (self._start + k) % n
            waiting, running = self.counts[i]
            score = WAITING_WEIGHT * waiting + running
            if best_score is None or score < best_score:
                best, best_score = i, score
        self._start = (self._start + 1) % n
        self.counts[best][0] += 1
        return best

    def on_stats(self, engine: int, stats: SchedulerStats) -> None:
        """Replica ``engine`` reported its scheduler state."""
        self.counts[engine] = [stats.num_waiting, stats.num_running]


def sum_stats(per_engine: list[SchedulerStats]) -> SchedulerStats:
    """The replicas' stats as one engine's: counts and cumulative counters add up; cache usages are the
    mean over replicas (each replica has its own cache of the same size)."""
    if len(per_engine) == 1:
        return per_engine[0]
    n = len(per_engine)
    out = SchedulerStats()
    for s in per_engine:
        for name in ("num_running", "num_waiting", "num_waiting_deferred", "num_preemptions", "num_prompt_tokens",
                     "num_generation_tokens", "prefix_cache_queries", "prefix_cache_hits",
                     "external_prefix_cache_queries", "external_prefix_cache_hits", "kv_offload_stored_blocks",
                     "kv_offload_loaded_blocks", "spec_num_drafts", "spec_num_draft_tokens",
                     "spec_num_accepted_tokens"):
            setattr(out, name, getattr(out, name) + getattr(s, name))
        out.kv_cache_usage += s.kv_cache_usage / n
        out.cpu_kv_cache_usage += s.cpu_kv_cache_usage / n
        per_pos = out.spec_accepted_per_pos
        per_pos.extend([0] * (len(s.spec_accepted_per_pos) - len(per_pos)))
        for i, v in enumerate(s.spec_accepted_per_pos):
            per_pos[i] += v
        for mine, theirs in ((out.running_lora_adapters, s.running_lora_adapters),
                             (out.waiting_lora_adapters, s.waiting_lora_adapters)):
            for name, count in theirs.items():  # per adapter name, over the replicas
                mine[name] = mine.get(name, 0) + count
    return out
