"""The server's stat loggers: Prometheus metrics and the periodic stats log line.

:class:`PrometheusStatLogger` uses vLLM's names under the ``pagoda:`` prefix. Each server
gets its own ``CollectorRegistry`` (so several apps can live in one process, as in tests).
Every metric carries the ``model_name`` label, like vLLM's.

Gauges: ``num_requests_running``, ``num_requests_waiting``, ``kv_cache_usage_perc``
(0–1), ``cpu_cache_usage_perc`` (host KV tier, 0–1). Counters: ``prompt_tokens_total``,
``generation_tokens_total``, ``num_preemptions_total``,
``request_success_total{finished_reason}`` (stop, length, abort, error),
``prefix_cache_queries_total`` / ``prefix_cache_hits_total`` (tokens looked up in / served
from the prefix cache), ``kv_offload_stored_blocks_total`` /
``kv_offload_loaded_blocks_total`` (blocks copied into / back from the host KV tier).
Histograms: ``time_to_first_token_seconds``, ``inter_token_latency_seconds``,
``e2e_request_latency_seconds``, ``request_queue_time_seconds``,
``request_prompt_tokens``, ``request_generation_tokens``.

:class:`LoggingStatLogger` logs vLLM's periodic line (throughput, running / waiting
requests, KV-cache usage, prefix-cache hit rate, and the host KV tier's usage when it is
on) every ``PAGODA_LOG_STATS_INTERVAL`` seconds (10) while the engine is busy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pagoda import envs
from pagoda.engine.messages import SchedulerStats

PREFIX = "pagoda:"
LOG_STATS_INTERVAL_S = envs.log_stats_interval_s()

logger = logging.getLogger("pagoda.server")

# vLLM's buckets.
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0]
LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0]


def _token_buckets(max_model_len: int) -> list[float]:
    """1, 2, 5, 10, 20, 50, … up to max_model_len (vLLM's build_1_2_5_buckets)."""
    out: list[float] = []
    mantissa = [1, 2, 5]
    exp = 0
    while True:
        for m in mantissa:
            v = m * 10**exp
            if v > max_model_len:
                return out
            out.append(float(v))
        exp += 1


class PrometheusStatLogger:
    FINISH_REASONS = ("stop", "length", "abort", "error")

    def __init__(self, model_name: str, max_model_len: int = 4096) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        lbl = ["model_name"]
        self.model_name = model_name

        def g(name: str, doc: str) -> Gauge:
            return Gauge(PREFIX + name, doc, lbl, registry=r)

        def c(name: str, doc: str):
            return Counter(PREFIX + name, doc, lbl, registry=r).labels(model_name)

        self.running = g("num_requests_running", "Number of requests in model execution batches.").labels(model_name)
        self.waiting = g("num_requests_waiting", "Number of requests waiting to be processed.").labels(model_name)
        self.kv_usage = g("kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.").labels(model_name)
        self.prompt_tokens = c("prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = c("generation_tokens", "Number of generation tokens processed.")
        self.preemptions = c("num_preemptions", "Cumulative number of preemptions from the engine.")
        self.cpu_usage = g("cpu_cache_usage_perc",
                           "Host-memory KV tier usage (--kv-offloading-size). 1 means 100 percent usage.").labels(
                               model_name)
        self.prefix_queries = c("prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens.")
        self.prefix_hits = c("prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens.")
        self.offload_stored = c("kv_offload_stored_blocks", "KV blocks copied into the host-memory KV tier.")
        self.offload_loaded = c("kv_offload_loaded_blocks",
                                "KV blocks copied back from the host-memory KV tier on a prefix hit.")
        success = Counter(PREFIX + "request_success", "Count of finished requests, by finish reason.",
                          lbl + ["finished_reason"], registry=r)
        self.success = {reason: success.labels(model_name, reason) for reason in self.FINISH_REASONS}
        self._success_family = success
        self.ttft = Histogram(PREFIX + "time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              lbl, buckets=TTFT_BUCKETS, registry=r).labels(model_name)
        self.itl = Histogram(PREFIX + "inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             lbl, buckets=ITL_BUCKETS, registry=r).labels(model_name)
        self.e2e = Histogram(PREFIX + "e2e_request_latency_seconds",
                             "Histogram of end to end request latency in seconds.", lbl, buckets=LATENCY_BUCKETS,
                             registry=r).labels(model_name)
        self.queue = Histogram(PREFIX + "request_queue_time_seconds",
                               "Histogram of time spent in WAITING phase for request.", lbl,
                               buckets=LATENCY_BUCKETS, registry=r).labels(model_name)
        tb = _token_buckets(max_model_len)
        self.req_prompt = Histogram(PREFIX + "request_prompt_tokens", "Number of prefill tokens processed.", lbl,
                                    buckets=tb, registry=r).labels(model_name)
        self.req_gen = Histogram(PREFIX + "request_generation_tokens", "Number of generation tokens processed.",
                                 lbl, buckets=tb, registry=r).labels(model_name)
        self._last_preemptions = 0
        # The core reports these counters cumulatively; the Prometheus counters advance by the difference.
        self._last_cumulative = {"prefix_cache_queries": 0, "prefix_cache_hits": 0, "kv_offload_stored_blocks": 0,
                                 "kv_offload_loaded_blocks": 0}
        self._cumulative_counters = {"prefix_cache_queries": self.prefix_queries,
                                     "prefix_cache_hits": self.prefix_hits,
                                     "kv_offload_stored_blocks": self.offload_stored,
                                     "kv_offload_loaded_blocks": self.offload_loaded}

    # ------------------------------------------------------------ StatLogger
    def on_step(self, stats: SchedulerStats) -> None:
        self.running.set(stats.num_running)
        self.waiting.set(stats.num_waiting)
        self.kv_usage.set(stats.kv_cache_usage)
        if stats.num_prompt_tokens:
            self.prompt_tokens.inc(stats.num_prompt_tokens)
        if stats.num_generation_tokens:
            self.generation_tokens.inc(stats.num_generation_tokens)
        if stats.num_preemptions > self._last_preemptions:
            self.preemptions.inc(stats.num_preemptions - self._last_preemptions)
            self._last_preemptions = stats.num_preemptions
        self.cpu_usage.set(stats.cpu_kv_cache_usage)
        for name, counter in self._cumulative_counters.items():
            value = getattr(stats, name)
            last = self._last_cumulative[name]
            if value > last:
                counter.inc(value - last)
                self._last_cumulative[name] = value

    def on_queue_time(self, seconds: float) -> None:
        self.queue.observe(seconds)

    def on_first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def on_inter_token(self, seconds: float) -> None:
        self.itl.observe(seconds)

    def on_finished(self, finish_reason: str, num_prompt_tokens: int, num_generation_tokens: int,
                    e2e_seconds: float) -> None:
        c = self.success.get(finish_reason)
        if c is None:
            c = self.success[finish_reason] = self._success_family.labels(self.model_name, finish_reason)
        c.inc()
        self.e2e.observe(e2e_seconds)
        self.req_prompt.observe(num_prompt_tokens)
        self.req_gen.observe(num_generation_tokens)

    # ------------------------------------------------------------ exposition
    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class LoggingStatLogger:
    """vLLM's periodic stats log line, logged from ``on_step`` once ``interval_s`` has passed.

    The core sends stats every step and a heartbeat every second when idle, so the line
    comes on time without a timer of its own. An idle interval after an idle interval is
    not logged. The prefix-cache hit rate is hits / queries (tokens) since start-up or the
    last :meth:`on_prefix_cache_reset`.
    """

    def __init__(self, interval_s: float = LOG_STATS_INTERVAL_S, kv_offload: bool = False,
                 clock: Callable[[], float] = time.monotonic, log: Callable[..., None] | None = None) -> None:
        self.interval_s = interval_s
        self.kv_offload = kv_offload
        self.clock = clock
        self.log = log or logger.info
        self.last_log = clock()
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.stats = SchedulerStats()
        self._base_queries = 0
        self._base_hits = 0
        self._last_idle = True

    def hit_rate(self) -> float:
        q = self.stats.prefix_cache_queries - self._base_queries
        return (self.stats.prefix_cache_hits - self._base_hits) / q if q > 0 else 0.0

    def on_prefix_cache_reset(self) -> None:
        self._base_queries = self.stats.prefix_cache_queries
        self._base_hits = self.stats.prefix_cache_hits

    def on_step(self, stats: SchedulerStats) -> None:
        self.prompt_tokens += stats.num_prompt_tokens
        self.generation_tokens += stats.num_generation_tokens
        self.stats = stats
        now = self.clock()
        if now - self.last_log >= self.interval_s:
            self.emit(now)

    def line(self, seconds: float) -> str:
        s = self.stats
        text = (f"Avg prompt throughput: {self.prompt_tokens / seconds:.1f} tokens/s, "
                f"Avg generation throughput: {self.generation_tokens / seconds:.1f} tokens/s, "
                f"Running: {s.num_running} reqs, Waiting: {s.num_waiting} reqs, "
                f"KV cache usage: {100 * s.kv_cache_usage:.1f}%, "
                f"Prefix cache hit rate: {100 * self.hit_rate():.1f}%")
        if self.kv_offload:
            text += f", Host KV tier usage: {100 * s.cpu_kv_cache_usage:.1f}%"
        return text

    def emit(self, now: float) -> None:
        seconds = max(now - self.last_log, 1e-9)
        s = self.stats
        idle = not (self.prompt_tokens or self.generation_tokens or s.num_running or s.num_waiting)
        if not (idle and self._last_idle):
            self.log("%s", self.line(seconds))
        self._last_idle = idle
        self.last_log = now
        self.prompt_tokens = self.generation_tokens = 0

    def on_queue_time(self, seconds: float) -> None:
        pass

    def on_first_token(self, seconds: float) -> None:
        pass

    def on_inter_token(self, seconds: float) -> None:
        pass

    def on_finished(self, finish_reason: str, num_prompt_tokens: int, num_generation_tokens: int,
                    e2e_seconds: float) -> None:
        pass
