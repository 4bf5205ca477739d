"""The server's stat loggers: Prometheus metrics and the periodic stats log line.

:class:`PrometheusStatLogger` exports vLLM's V1 metrics (the table :data:`VLLM_METRICS`: names,
types, help texts, buckets and label names as vLLM's ``PrometheusStatLogger``) under the prefix
chosen by ``--metrics-prefix``: ``pagoda:`` (default) or ``vllm:`` (names exactly as vLLM's, for
dashboards made for vLLM). Every vLLM series carries ``model_name`` and ``engine`` (the data-parallel
replica, ``"0"`` without data parallelism), as vLLM's.
pagoda's own metrics (:data:`NATIVE_METRICS`: the host KV tier) are always ``pagoda:*``, labelled
``model_name``.
Each server gets its own ``CollectorRegistry`` (several apps can live in one process, as in tests).
With several API server processes (``--api-server-count``) the values live in prometheus_client's
multiprocess files instead (:func:`enable_multiprocess`) and ``/metrics`` sums them over the processes
(gauges: the largest live value; only API server 0 sets the engine-level ones).

Request-level histograms count engine requests (each of ``n`` samples once, as vLLM);
``request_params_n`` and ``request_max_num_generation_tokens`` count user requests.

:class:`LoggingStatLogger` logs vLLM's periodic line (throughput, running / waiting
requests, KV-cache usage, prefix-cache hit rate, and the host KV tier's usage when it is
on) every ``PAGODA_LOG_STATS_INTERVAL`` seconds (10) while the engine is busy; with data-parallel
replicas, one line for all of them (their stats summed, cache usage averaged).
"""

from __future__ import annotations

import bisect
import logging
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.utils import floatToGoString

from pagoda import envs
from pagoda.engine.dp_lb import sum_stats
from pagoda.engine.messages import SchedulerStats
from pagoda.engine.request_stats import FinishedRequestStats

PREFIXES = ("pagoda", "vllm")
"""Values of ``--metrics-prefix``."""
NATIVE_PREFIX = "pagoda:"
LOG_STATS_INTERVAL_S = envs.log_stats_interval_s()
LABELS = ["model_name", "engine"]

logger = logging.getLogger("pagoda.server")

# vLLM's buckets.
TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0]
LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
                   240.0, 480.0, 960.0, 1920.0, 7680.0]
ITERATION_TOKEN_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
"""vLLM's buckets for ``iteration_tokens_total`` (tokens per engine step)."""
N_BUCKETS = [1, 2, 5, 10, 20]
TOKENS = "tokens"  # buckets 1, 2, 5, 10, ... up to max_model_len


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


# name (without prefix and, for counters, without _total) -> (type, help, buckets, extra labels)
VLLM_METRICS: dict[str, tuple[str, str, Any, tuple[str, ...]]] = {
    "num_requests_running": ("gauge", "Number of requests in model execution batches.", None, ()),
    "num_requests_waiting": ("gauge", "Number of requests waiting to be processed.", None, ()),
    "num_requests_waiting_by_reason": ("gauge", (
        "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; "
        "'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). "
        "Sum of all reasons equals vllm:num_requests_waiting."), None, ("reason",)),
    "engine_sleep_state": ("gauge", (
        "Engine sleep state; awake = 0 means engine is sleeping; awake = 1 means engine is awake; "
        "weights_offloaded = 1 means sleep level 1; discard_all = 1 means sleep level 2."), None, ("sleep_state",)),
    "kv_cache_usage_perc": ("gauge", "KV-cache usage. 1 means 100 percent usage.", None, ()),
    "gpu_cache_usage_perc": ("gauge", "GPU KV-cache usage. 1 means 100 percent usage."
                             "DEPRECATED: Use vllm:kv_cache_usage_perc instead.", None, ()),
    "prefix_cache_queries": ("counter", "Prefix cache queries, in terms of number of queried tokens.", None, ()),
    "prefix_cache_hits": ("counter", "Prefix cache hits, in terms of number of cached tokens.", None, ()),
    "external_prefix_cache_queries": ("counter", "External prefix cache queries from KV connector cross-instance "
                                      "cache sharing, in terms of number of queried tokens.", None, ()),
    "external_prefix_cache_hits": ("counter", "External prefix cache hits from KV connector cross-instance cache "
                                   "sharing, in terms of number of cached tokens.", None, ()),
    "gpu_prefix_cache_queries": ("counter", "GPU prefix cache queries, in terms of number of queried"
                                 "tokens. DEPRECATED: Use vllm:prefix_cache_queries instead.", None, ()),
    "gpu_prefix_cache_hits": ("counter", "GPU prefix cache hits, in terms of number of cached "
                              "tokens. DEPRECATED: Use vllm:prefix_cache_hits instead.", None, ()),
    "num_preemptions": ("counter", "Cumulative number of preemption from the engine.", None, ()),
    "prompt_tokens": ("counter", "Number of prefill tokens processed.", None, ()),
    "generation_tokens": ("counter", "Number of generation tokens processed.", None, ()),
    "request_success": ("counter", "Count of successfully processed requests.", None, ("finished_reason",)),
    "request_prompt_tokens": ("histogram", "Number of prefill tokens processed.", TOKENS, ()),
    "request_generation_tokens": ("histogram", "Number of generation tokens processed.", TOKENS, ()),
    "iteration_tokens_total": ("histogram", "Histogram of number of tokens per engine_step.",
                               ITERATION_TOKEN_BUCKETS, ()),
    "request_max_num_generation_tokens": ("histogram",
                                          "Histogram of maximum number of requested generation tokens.", TOKENS, ()),
    "request_params_n": ("histogram", "Histogram of the n request parameter.", N_BUCKETS, ()),
    "request_params_max_tokens": ("histogram", "Histogram of the max_tokens request parameter.", TOKENS, ()),
    "time_to_first_token_seconds": ("histogram", "Histogram of time to first token in seconds.", TTFT_BUCKETS, ()),
    "inter_token_latency_seconds": ("histogram", "Histogram of inter-token latency in seconds.", ITL_BUCKETS, ()),
    "time_per_output_token_seconds": ("histogram", "Histogram of time per output token in seconds."
                                      "DEPRECATED: Use vllm:inter_token_latency_seconds instead.", ITL_BUCKETS, ()),
    "request_time_per_output_token_seconds": ("histogram", "Histogram of time_per_output_token_seconds per request.",
                                              ITL_BUCKETS, ()),
    "e2e_request_latency_seconds": ("histogram", "Histogram of e2e request latency in seconds.",
                                    LATENCY_BUCKETS, ()),
    "request_queue_time_seconds": ("histogram", "Histogram of time spent in WAITING phase for request.",
                                   LATENCY_BUCKETS, ()),
    "request_inference_time_seconds": ("histogram", "Histogram of time spent in RUNNING phase for request.",
                                       LATENCY_BUCKETS, ()),
    "request_prefill_time_seconds": ("histogram", "Histogram of time spent in PREFILL phase for request.",
                                     LATENCY_BUCKETS, ()),
    "request_decode_time_seconds": ("histogram", "Histogram of time spent in DECODE phase for request.",
                                    LATENCY_BUCKETS, ()),
    "request_prefill_kv_computed_tokens": ("histogram", "Histogram of new KV tokens computed during prefill "
                                           "(excluding cached tokens).", TOKENS, ()),
    "cache_config_info": ("gauge", "Information of the LLMEngine CacheConfig", None, ()),
    "spec_decode_num_drafts": ("counter", "Number of spec decoding drafts.", None, ()),
    "spec_decode_num_draft_tokens": ("counter", "Number of draft tokens.", None, ()),
    "spec_decode_num_accepted_tokens": ("counter", "Number of accepted tokens.", None, ()),
    "spec_decode_num_accepted_tokens_per_pos": ("counter", "Accepted tokens per draft position.", None,
                                                ("position",)),
}
"""Every vLLM metric pagoda exports on every server (docs/serving.md lists those it does not, and why)."""

LORA_INFO = ("lora_requests_info", "Running stats on lora requests.",
             ("max_lora", "waiting_lora_adapters", "running_lora_adapters"))
"""vLLM's LoRA gauge (name, help, labels): exported only with ``--enable-lora``, as vLLM's, so not in
:data:`VLLM_METRICS`. Its labels are its own (no ``model_name`` / ``engine``), its value the time of the last step."""

NATIVE_METRICS: dict[str, tuple[str, str]] = {
    "cpu_cache_usage_perc": ("gauge", "Host-memory KV tier usage (--kv-offloading-size). 1 means 100 percent usage."),
    "kv_offload_stored_blocks": ("counter", "KV blocks copied into the host-memory KV tier."),
    "kv_offload_loaded_blocks": ("counter", "KV blocks copied back from the host-memory KV tier on a prefix hit."),
}
"""pagoda's own metrics, always under ``pagoda:``."""

def num_speculative_tokens(cfg: Any) -> int:
    """k of the engine's speculative config (0: off), which decides whether spec_decode_* are exported."""
    spec = getattr(cfg, "speculative_config", None)
    return spec.num_speculative_tokens if spec is not None else 0


FINISH_REASONS = ("stop", "length", "abort", "error")
SLEEP_STATES = {"awake": 1, "weights_offloaded": 0, "discard_all": 0}  # pagoda has no sleep mode


def cache_config_info(cfg: Any, engine: Any) -> dict[str, str]:
    """The labels of ``cache_config_info``: vLLM's CacheConfig fields that pagoda has, as strings."""
    ready = engine.ready_info
    return {"block_size": str(cfg.block_size), "cache_dtype": str(getattr(cfg, "kv_cache_dtype", "auto")),
            "enable_prefix_caching": str(cfg.enable_prefix_caching),
            "gpu_memory_utilization": str(cfg.gpu_memory_utilization),
            "num_gpu_blocks": str(ready.num_blocks - 1 if ready is not None else None),
            "num_gpu_blocks_override": str(cfg.num_gpu_blocks_override),
            "kv_offloading_size": str(cfg.kv_offloading_size or None)}


PER_TOKEN_HISTOGRAMS = ("inter_token_latency_seconds", "time_per_output_token_seconds")
"""Observed once per streamed token, always with the same value: kept by :class:`_TokenGaps`, not prometheus_client."""


class _TokenGaps:
    """One replica's gaps between streamed tokens, as a histogram over ``ITL_BUCKETS``: a list index and two
    additions per token, where prometheus_client's ``Histogram.observe`` takes two locks and a bucket scan, and
    the two vLLM families it feeds (:data:`PER_TOKEN_HISTOGRAMS`) cost that twice. Exposed by
    :class:`_TokenGapsCollector` with exactly the samples a ``Histogram`` would give."""

    def __init__(self) -> None:
        self.counts = [0] * (len(ITL_BUCKETS) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(ITL_BUCKETS, seconds)] += 1  # a value on a bound counts in that bucket (le)
        self.sum += seconds


class _TokenGapsCollector:
    """Yields :data:`PER_TOKEN_HISTOGRAMS` (each under ``prefix``) from every replica's :class:`_TokenGaps`."""

    def __init__(self, prefix: str, model_name: str, gaps: list[_TokenGaps]) -> None:
        self.prefix, self.model_name, self.gaps = prefix, model_name, gaps
        self._les = [floatToGoString(b) for b in ITL_BUCKETS] + ["+Inf"]

    def collect(self) -> Any:
        for name in PER_TOKEN_HISTOGRAMS:
            fam = HistogramMetricFamily(self.prefix + name, VLLM_METRICS[name][1], labels=LABELS)
            for engine, g in enumerate(self.gaps):
                counts, total = list(g.counts), g.sum  # one consistent view while the event loop observes
                cumulative, acc = [], 0
                for le, c in zip(self._les, counts, strict=True):
                    acc += c
                    cumulative.append((le, acc))
                fam.add_metric([self.model_name, str(engine)], cumulative, total)
            yield fam


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's multiprocess directory (set by API server 0 for all of them; a private temp dir)."""


def enable_multiprocess(create: bool) -> str:
    """Make this process's metric values live in the shared multiprocess directory; returns it. ``create`` (API
    server 0): a fresh private directory, even over one the user set (stale files of an earlier run would add
    their counts), which the others inherit through the environment. Call before any metric of this process
    exists."""
    from prometheus_client import values

    path = os.environ.get(MULTIPROC_ENV)
    if create:
        if path is not None:
            logger.info("%s=%s is replaced by a private directory for this server's processes", MULTIPROC_ENV, path)
        path = os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="pagoda-metrics-")
    elif path is None:
        raise RuntimeError(f"{MULTIPROC_ENV} is not set: API server 0 sets it for the others")
    values.ValueClass = values.get_value_class()
    return path


def forget_process(pid: int) -> None:
    """An API server exited: drop its live gauges (its counters and histograms stay in the sums)."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


class _HistogramPair:
    """:data:`PER_TOKEN_HISTOGRAMS` as two prometheus_client histograms (multiprocess mode, where they must live
    in the shared files); the same ``observe`` as :class:`_TokenGaps`."""

    def __init__(self, a: Any, b: Any) -> None:
        self.a, self.b = a, b

    def observe(self, seconds: float) -> None:
        self.a.observe(seconds)
        self.b.observe(seconds)


class _EngineSeries:
    """One replica's labelled series and what it last reported (its counters advance by differences)."""

    def __init__(self, m: dict[str, Any], success: dict[str, Any], waiting_by_reason: dict[str, Any],
                 gaps: _TokenGaps | _HistogramPair | None = None) -> None:
        self.gaps = gaps if gaps is not None else _TokenGaps()
        self.m = m
        self.success = success
        self.waiting_by_reason = waiting_by_reason
        self.last_preemptions = 0
        self.last_cumulative: dict[str, int] = {}
        self.last_per_pos: list[int] = []
        self.cpu_cache_usage = 0.0
        self.loras: tuple[dict[str, int], dict[str, int]] = ({}, {})  # requests per adapter: running, waiting


class PrometheusStatLogger:
    """vLLM's metrics, fed by :class:`pagoda.engine.async_llm.AsyncLLM`'s stat-logger hooks.

    With ``num_engines`` data-parallel replicas every vLLM series exists once per replica (``engine="0"``,
    ``"1"``, ...: as vLLM's, each counts what that replica did, so a sum over ``engine`` is the server's
    total); pagoda's own series have no ``engine`` label and hold the total (counters) or the mean over
    replicas (the host-tier usage gauge).
    """

    def __init__(self, model_name: str, max_model_len: int = 4096, prefix: str = "pagoda",
                 cache_config: dict[str, str] | None = None, num_spec_tokens: int = 0, num_engines: int = 1,
                 multiprocess: bool = False, max_loras: int | None = None) -> None:
        """``multiprocess``: several API server processes (:func:`enable_multiprocess` has run in this one).
        ``max_loras``: ``--max-loras`` with ``--enable-lora`` (None: LoRA is off, no ``lora_requests_info``)."""
        if prefix not in PREFIXES:
            raise ValueError(f"metrics prefix must be one of {PREFIXES}, got {prefix!r}")
        self.multiprocess = multiprocess
        self.registry = CollectorRegistry(auto_describe=True)
        self.prefix = prefix + ":"
        self.model_name = model_name
        self.families: dict[str, Any] = {}
        tb = _token_buckets(max_model_len)
        for name, (kind, doc, buckets, extra) in VLLM_METRICS.items():
            if name == "cache_config_info" or (name.startswith("spec_decode_") and not num_spec_tokens):
                continue  # as vLLM: spec_decode_* exist only with speculative decoding on
            if name in PER_TOKEN_HISTOGRAMS and not multiprocess:
                continue  # _TokenGapsCollector, below
            self.families[name] = self._make(self.prefix + name, kind, doc, LABELS + list(extra),
                                             tb if buckets == TOKENS else buckets)
        native = {}
        for name, (kind, doc) in NATIVE_METRICS.items():  # labelled model_name only (not vLLM's)
            self.families[name] = self._make(NATIVE_PREFIX + name, kind, doc, ["model_name"], None)
            native[name] = self.families[name].labels(model_name)
        info_gauge = Gauge(self.prefix + "cache_config_info", VLLM_METRICS["cache_config_info"][1],
                           ["engine", *(cache_config or {})], registry=self.registry,
                           multiprocess_mode=self._gauge_mode)
        self.engines = [self._engine_series(str(i), native, num_spec_tokens) for i in range(num_engines)]
        if not multiprocess:
            gaps = [e.gaps for e in self.engines if isinstance(e.gaps, _TokenGaps)]
            self.registry.register(_TokenGapsCollector(self.prefix, model_name, gaps))
        for i in range(num_engines):
            info_gauge.labels(engine=str(i), **(cache_config or {})).set(1)
        self.max_loras = max_loras
        self.lora_info: Gauge | None = None
        if max_loras is not None:  # as vLLM: only with LoRA on, labelled by the adapters' names (no model / engine)
            name, doc, labels = LORA_INFO
            self.lora_info = Gauge(self.prefix + name, doc, list(labels), registry=self.registry,
                                   multiprocess_mode=self._gauge_mode)
        # The core reports these counters cumulatively; the Prometheus counters advance by the difference.
        self._cumulative = {"prefix_cache_queries": ("prefix_cache_queries", "gpu_prefix_cache_queries"),
                            "prefix_cache_hits": ("prefix_cache_hits", "gpu_prefix_cache_hits"),
                            "external_prefix_cache_queries": ("external_prefix_cache_queries",),
                            "external_prefix_cache_hits": ("external_prefix_cache_hits",),
                            "kv_offload_stored_blocks": ("kv_offload_stored_blocks",),
                            "kv_offload_loaded_blocks": ("kv_offload_loaded_blocks",),
                            "spec_num_drafts": ("spec_decode_num_drafts",),
                            "spec_num_draft_tokens": ("spec_decode_num_draft_tokens",),
                            "spec_num_accepted_tokens": ("spec_decode_num_accepted_tokens",)}

    def _engine_series(self, engine: str, native: dict[str, Any], num_spec_tokens: int) -> _EngineSeries:
        name_ = self.model_name
        m = {name: fam.labels(name_, engine) for name, fam in self.families.items()
             if name in VLLM_METRICS and not VLLM_METRICS[name][3]}
        m.update(native)
        for pos in range(num_spec_tokens):  # vLLM creates one series per draft position up front
            self.families["spec_decode_num_accepted_tokens_per_pos"].labels(name_, engine, str(pos))
        success = {r: self.families["request_success"].labels(name_, engine, r) for r in FINISH_REASONS}
        waiting = {r: self.families["num_requests_waiting_by_reason"].labels(name_, engine, r)
                   for r in ("capacity", "deferred")}
        for state, value in SLEEP_STATES.items():
            self.families["engine_sleep_state"].labels(name_, engine, state).set(value)
        gaps = None
        if self.multiprocess:
            gaps = _HistogramPair(*(self.families[n].labels(name_, engine) for n in PER_TOKEN_HISTOGRAMS))
        return _EngineSeries(m, success, waiting, gaps)

    @property
    def m(self) -> dict[str, Any]:
        """Replica 0's series (the only ones without data parallelism)."""
        return self.engines[0].m

    @property
    def _gauge_mode(self) -> Literal["livemax", "all"]:
        """Multiprocess: the largest value among live processes (API server 0 sets the engine's gauges, the
        others keep 0). "all" is prometheus_client's default, unused outside multiprocess mode."""
        return "livemax" if self.multiprocess else "all"

    def _make(self, full: str, kind: str, doc: str, labels: list[str], buckets: Any) -> Any:
        if kind == "gauge":
            return Gauge(full, doc, labels, registry=self.registry, multiprocess_mode=self._gauge_mode)
        if kind == "counter":
            return Counter(full, doc, labels, registry=self.registry)
        return Histogram(full, doc, labels, buckets=buckets, registry=self.registry)

    # ------------------------------------------------------------ StatLogger
    def on_step(self, stats: SchedulerStats, engine: int = 0) -> None:
        e = self.engines[engine]
        m = e.m
        m["num_requests_running"].set(stats.num_running)
        m["num_requests_waiting"].set(stats.num_waiting)
        e.waiting_by_reason["capacity"].set(stats.num_waiting - stats.num_waiting_deferred)
        e.waiting_by_reason["deferred"].set(stats.num_waiting_deferred)
        for name in ("kv_cache_usage_perc", "gpu_cache_usage_perc"):
            m[name].set(stats.kv_cache_usage)
        if stats.num_preemptions > e.last_preemptions:
            m["num_preemptions"].inc(stats.num_preemptions - e.last_preemptions)
            e.last_preemptions = stats.num_preemptions
        e.cpu_cache_usage = stats.cpu_kv_cache_usage
        m["cpu_cache_usage_perc"].set(sum(x.cpu_cache_usage for x in self.engines) / len(self.engines))
        for field, names in self._cumulative.items():
            value = getattr(stats, field)
            last = e.last_cumulative.get(field, 0)
            if value > last and names[0] in m:
                for name in names:
                    m[name].inc(value - last)
                e.last_cumulative[field] = value
        self._on_spec_per_pos(stats.spec_accepted_per_pos, engine)
        if self.lora_info is not None:
            e.loras = (stats.running_lora_adapters, stats.waiting_lora_adapters)
            self._on_loras()

    def _on_loras(self) -> None:
        """vLLM's ``lora_requests_info``: the series labelled with the adapters that have running / waiting requests
        (comma-separated names; every replica's) is set to the current time (a consumer reads the newest)."""
        assert self.lora_info is not None
        running = sorted({n for e in self.engines for n, c in e.loras[0].items() if c > 0})
        waiting = sorted({n for e in self.engines for n, c in e.loras[1].items() if c > 0})
        self.lora_info.labels(max_lora=str(self.max_loras), waiting_lora_adapters=",".join(waiting),
                              running_lora_adapters=",".join(running)).set_to_current_time()

    def on_tokens(self, prompt_tokens: int, generation_tokens: int, engine: int = 0) -> None:
        """vLLM's prompt / generation token counters and iteration_tokens_total, from the outputs of one engine step
        that the front end accepted: a request's whole prompt once (cached tokens included), its output tokens as
        usage counts them (none past a stop string)."""
        m = self.engines[engine].m
        if prompt_tokens:
            m["prompt_tokens"].inc(prompt_tokens)
        if generation_tokens:
            m["generation_tokens"].inc(generation_tokens)
        m["iteration_tokens_total"].observe(prompt_tokens + generation_tokens)  # one engine step's (vLLM's sum)

    def _on_spec_per_pos(self, per_pos: list[int], engine: int) -> None:
        """vLLM's ``spec_decode_num_accepted_tokens_per_pos{position=i}`` from the cumulative list."""
        fam = self.families.get("spec_decode_num_accepted_tokens_per_pos")
        if fam is None:
            return
        e = self.engines[engine]
        for i, value in enumerate(per_pos):
            last = e.last_per_pos[i] if i < len(e.last_per_pos) else 0
            if value > last:
                fam.labels(self.model_name, str(engine), str(i)).inc(value - last)
        e.last_per_pos = list(per_pos)

    def on_queue_time(self, seconds: float, engine: int = 0) -> None:
        pass  # observed per finished request (on_finished), as vLLM's

    def on_first_token(self, seconds: float, engine: int = 0) -> None:
        self.engines[engine].m["time_to_first_token_seconds"].observe(seconds)

    def on_inter_token(self, seconds: float, engine: int = 0) -> None:
        self.engines[engine].gaps.observe(seconds)  # both PER_TOKEN_HISTOGRAMS

    def on_finished(self, s: FinishedRequestStats, engine: int = 0) -> None:
        e = self.engines[engine]
        c = e.success.get(s.finish_reason)
        if c is None:
            c = e.success[s.finish_reason] = self.families["request_success"].labels(
                self.model_name, str(engine), s.finish_reason)
        c.inc()
        m = e.m
        for name, value in (("e2e_request_latency_seconds", s.e2e_latency),
                            ("request_queue_time_seconds", s.queued_time),
                            ("request_prefill_time_seconds", s.prefill_time),
                            ("request_decode_time_seconds", s.decode_time),
                            ("request_inference_time_seconds", s.inference_time),
                            ("request_time_per_output_token_seconds", s.mean_time_per_output_token),
                            ("request_prompt_tokens", s.num_prompt_tokens),
                            ("request_generation_tokens", s.num_generation_tokens),
                            ("request_prefill_kv_computed_tokens", max(0, s.num_prompt_tokens - s.num_cached_tokens))):
            m[name].observe(value)
        if s.max_tokens_param:
            m["request_params_max_tokens"].observe(s.max_tokens_param)

    def on_request_finished(self, n: int, max_num_generation_tokens: int, engine: int = 0) -> None:
        m = self.engines[engine].m
        m["request_params_n"].observe(n)
        m["request_max_num_generation_tokens"].observe(max_num_generation_tokens)

    # ------------------------------------------------------------ exposition
    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # every API server's values, summed
            return generate_latest(registry), CONTENT_TYPE_LATEST
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
        self._per_engine: dict[int, SchedulerStats] = {}
        self._base_queries = 0
        self._base_hits = 0
        self._base_external = (0, 0)  # (queries, hits) of the host tier at the last reset
        self._last_idle = True
        self._spec_base = (0, 0)  # (drafts, accepted tokens) at the last line

    def hit_rate(self) -> float:
        q = self.stats.prefix_cache_queries - self._base_queries
        return (self.stats.prefix_cache_hits - self._base_hits) / q if q > 0 else 0.0

    def external_hit_rate(self) -> float:
        """The host tier's hits over the prompt tokens looked up since start-up or the last reset."""
        q = self.stats.external_prefix_cache_queries - self._base_external[0]
        return (self.stats.external_prefix_cache_hits - self._base_external[1]) / q if q > 0 else 0.0

    def on_prefix_cache_reset(self) -> None:
        self._base_queries = self.stats.prefix_cache_queries
        self._base_hits = self.stats.prefix_cache_hits
        self._base_external = (self.stats.external_prefix_cache_queries, self.stats.external_prefix_cache_hits)

    def on_step(self, stats: SchedulerStats, engine: int = 0) -> None:
        self.prompt_tokens += stats.num_prompt_tokens
        self.generation_tokens += stats.num_generation_tokens
        self._per_engine[engine] = stats
        self.stats = sum_stats([self._per_engine[i] for i in sorted(self._per_engine)])
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
            text += (f", External prefix cache hit rate: {100 * self.external_hit_rate():.1f}%"
                     f", Host KV tier usage: {100 * s.cpu_kv_cache_usage:.1f}%")
        drafts = s.spec_num_drafts - self._spec_base[0]
        if drafts > 0:  # speculative decoding: tokens per verify step over this interval, the bonus included
            text += f", Mean acceptance length: {1 + (s.spec_num_accepted_tokens - self._spec_base[1]) / drafts:.2f}"
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
        self._spec_base = (s.spec_num_drafts, s.spec_num_accepted_tokens)

    def on_tokens(self, prompt_tokens: int, generation_tokens: int, engine: int = 0) -> None:
        pass  # the line reports the engine's computed tokens (on_step)

    def on_queue_time(self, seconds: float, engine: int = 0) -> None:
        pass

    def on_first_token(self, seconds: float, engine: int = 0) -> None:
        pass

    def on_inter_token(self, seconds: float, engine: int = 0) -> None:
        pass

    def on_finished(self, stats: FinishedRequestStats, engine: int = 0) -> None:
        pass

    def on_request_finished(self, n: int, max_num_generation_tokens: int, engine: int = 0) -> None:
        pass
