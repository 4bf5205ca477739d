"""The router's own Prometheus metrics (``/metrics`` of ``pagoda router``), all ``pagoda:router_*``.

* ``pagoda:router_requests_total{backend, path, status}`` — requests answered, by the backend that
  answered (``none`` when no backend could: a 4xx/5xx from the router itself) and the HTTP status (``499``: the
  client left before the answer's last byte, mid-stream included; ``stream_error``: the replica broke off);
* ``pagoda:router_request_latency_seconds{path}`` — from the request's arrival to its last byte;
* ``pagoda:router_retries_total{backend}`` — attempts that failed before the first byte and were retried;
* ``pagoda:router_stream_errors_total{backend}`` — responses that broke after their first byte;
* ``pagoda:router_backend_healthy{backend}`` (1/0), ``pagoda:router_healthy_backends``,
  ``pagoda:router_backend_in_flight{backend}``, ``pagoda:router_backend_load{backend}`` (queue depth as
  routed on), ``pagoda:router_backend_unauthorized{backend}`` (1 while the backend answers the router's own
  ``/v1/models`` or ``/metrics`` scrape with 401/403: the router needs ``--backend-api-key``).
"""

from __future__ import annotations

import contextlib
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pagoda.router.backends import BackendPool

PREFIX = "pagoda:router_"
LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   120.0, 300.0, 600.0]
NO_BACKEND = "none"
CLIENT_GONE = "499"
"""The status of a request whose client left before the last byte of its answer (nginx's "client closed
request")."""


class RouterMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(PREFIX + "requests", "Requests answered through the router.",
                                ["backend", "path", "status"], registry=r)
        self.latency = Histogram(PREFIX + "request_latency_seconds",
                                 "Time from a request's arrival at the router to its last byte.", ["path"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.retries = Counter(PREFIX + "retries", "Attempts that failed before the first byte and were retried "
                               "on another backend.", ["backend"], registry=r)
        self.stream_errors = Counter(PREFIX + "stream_errors", "Responses that broke after their first byte.",
                                     ["backend"], registry=r)
        self.backend_healthy = Gauge(PREFIX + "backend_healthy", "1 while the backend is in rotation.", ["backend"],
                                     registry=r)
        self.healthy_backends = Gauge(PREFIX + "healthy_backends", "Backends in rotation.", registry=r)
        self.in_flight = Gauge(PREFIX + "backend_in_flight", "Requests the router has open on the backend.",
                               ["backend"], registry=r)
        self.load = Gauge(PREFIX + "backend_load", "The backend's queue depth as the router sees it "
                          "(running + waiting).", ["backend"], registry=r)
        self.unauthorized = Gauge(PREFIX + "backend_unauthorized", "1 while the backend answers the router's own "
                                  "/v1/models or /metrics with 401/403 (give the router --backend-api-key).",
                                  ["backend"], registry=r)

    def done(self, backend: str | None, path: str, status: str, t0: float) -> None:
        """One request answered (``backend`` None: by the router itself), ``t0`` its arrival (monotonic)."""
        self.requests.labels(backend or NO_BACKEND, path, status).inc()
        self.latency.labels(path).observe(time.monotonic() - t0)

    def forget(self, urls: list[str]) -> None:
        """Drop every series of these backends (gone from the pool): on Kubernetes each rollout brings new pod
        addresses, and series kept for the old ones would grow without bound."""
        gone = set(urls)
        for counter in (self.retries, self.stream_errors):
            for url in gone:
                with contextlib.suppress(KeyError):
                    counter.remove(url)
        keys = {(s.labels["backend"], s.labels["path"], s.labels["status"])
                for fam in self.requests.collect() for s in fam.samples if s.labels.get("backend") in gone}
        for key in keys:
            with contextlib.suppress(KeyError):
                self.requests.remove(*key)

    def render(self, pool: BackendPool) -> tuple[bytes, str]:
        """Refresh the per-backend gauges from the pool, then the exposition."""
        for fam in (self.backend_healthy, self.in_flight, self.load, self.unauthorized):
            fam.clear()
        for b in pool.all():
            self.retries.labels(b.url)  # a zero series from the start, not only after the first retry
            self.stream_errors.labels(b.url)
            self.backend_healthy.labels(b.url).set(1 if b.healthy else 0)
            self.in_flight.labels(b.url).set(b.in_flight)
            self.load.labels(b.url).set(b.load)
            self.unauthorized.labels(b.url).set(1 if b.denied else 0)
        self.healthy_backends.set(len(pool.healthy()))
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
