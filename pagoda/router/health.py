"""The periodic probe of every replica: ``/health``, then ``/v1/models`` and ``/metrics``.

A replica whose ``/health`` fails (connection error, timeout, non-200) is taken out of rotation; the
next probe that passes puts it back. Its served models come from ``/v1/models`` and its load from
``/metrics``: ``num_requests_running``, ``num_requests_waiting`` and ``kv_cache_usage_perc`` under
``vllm:`` or ``pagoda:`` (pagoda's ``--metrics-prefix``). Request counts are summed over the replica's label
sets (a data-parallel server labels each engine); the KV usage fraction is their mean.

A replica that answers the router's own ``/v1/models`` or ``/metrics`` with 401/403 (it has an API key and the
router sends none, or the wrong one) is logged once, naming ``--backend-api-key``; its model list becomes
*unknown* (see :mod:`pagoda.router.backends`) and its load is then only the router's own open requests on it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx

from pagoda.router.backends import Backend

logger = logging.getLogger("pagoda.router")

LOAD_METRICS = {"num_requests_running": "num_running", "num_requests_waiting": "num_waiting",
                "kv_cache_usage_perc": "kv_usage"}
"""Metric name (without its ``vllm:``/``pagoda:`` prefix) -> Backend field."""
METRIC_PREFIXES = ("vllm:", "pagoda:")
MEAN_FIELDS = frozenset({"kv_usage"})
"""Fractions: averaged over label sets, not summed."""


def parse_load(text: str) -> dict[str, float]:
    """Backend field -> value from a Prometheus text exposition (the first prefix that has each metric)."""
    found: dict[str, dict[str, float]] = {p: {} for p in METRIC_PREFIXES}
    counts: dict[str, dict[str, int]] = {p: {} for p in METRIC_PREFIXES}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i >= 0), default=-1)
        if name_end < 0:
            continue
        name = line[:name_end]
        for prefix in METRIC_PREFIXES:
            if name.startswith(prefix) and name[len(prefix):] in LOAD_METRICS:
                try:
                    value = float(line.rsplit(" ", 1)[1])
                except (ValueError, IndexError):
                    continue
                key = LOAD_METRICS[name[len(prefix):]]
                found[prefix][key] = found[prefix].get(key, 0.0) + value
                counts[prefix][key] = counts[prefix].get(key, 0) + 1
    out: dict[str, float] = {}
    for key in LOAD_METRICS.values():
        for prefix in METRIC_PREFIXES:
            if key in found[prefix]:
                total = found[prefix][key]
                out[key] = total / counts[prefix][key] if key in MEAN_FIELDS else total
                break
    return out


class HealthChecker:
    """Probes backends; ``on_change(backend, healthy)`` is called when a backend goes in or out."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str], stats_interval_s: float,
                 on_change: Callable[[Backend, bool], None] | None = None) -> None:
        self.client = client
        self.headers = headers
        self.stats_interval_s = stats_interval_s
        self.on_change = on_change
        self._last_stats: dict[str, float] = {}

    def forget(self, urls: list[str]) -> None:
        """Backends gone from the pool: their scrape times go too."""
        for url in urls:
            self._last_stats.pop(url, None)

    async def check_all(self, backends: list[Backend]) -> None:
        await asyncio.gather(*(self.check(b) for b in backends))

    async def check(self, b: Backend) -> None:
        taken_out = b.taken_out
        try:
            r = await self.client.get(b.url + "/health")
            ok, why = r.status_code == 200, f"/health answered {r.status_code}"
        except httpx.HTTPError as e:
            ok, why = False, f"/health failed: {e!r}"
        if ok:
            await self._refresh_models(b)
            now = time.monotonic()
            if now - self._last_stats.get(b.url, -1e9) >= self.stats_interval_s:
                self._last_stats[b.url] = now
                await self.refresh_load(b)
        if ok and b.taken_out != taken_out:  # a request found it refusing since this probe's /health: the next
            return  # probe decides
        self.set_health(b, ok, None if ok else why)

    def set_health(self, b: Backend, ok: bool, why: str | None) -> None:
        if b.healthy != ok:
            logger.warning("backend %s %s%s", b.url, "is back" if ok else "taken out", f": {why}" if why else "")
            b.healthy = ok
            if self.on_change:
                self.on_change(b, ok)
        b.last_error = why

    def _denied(self, b: Backend, path: str, status: int) -> None:
        if not b.denied:
            how = "a wrong key" if self.headers else "no key"
            logger.warning("backend %s answers the router's own %s with %d: the router sends it %s; give the "
                           "router the replicas' key with --backend-api-key (until then its model list is unknown "
                           "and its load is only the router's own requests on it)", b.url, path, status, how)
        b.denied.add(path)

    async def _refresh_models(self, b: Backend) -> None:
        try:
            r = await self.client.get(b.url + "/v1/models", headers=self.headers)
            if r.status_code in (401, 403):
                self._denied(b, "/v1/models", r.status_code)
                b.models_known, b.models, b.model_cards = False, set(), []
                return
            data = r.json().get("data") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return
        if isinstance(data, list):
            b.denied.discard("/v1/models")
            b.model_cards = [c for c in data if isinstance(c, dict) and "id" in c]
            b.models = {str(c["id"]) for c in b.model_cards}
            b.models_known = True

    async def refresh_load(self, b: Backend) -> None:
        try:
            r = await self.client.get(b.url + "/metrics", headers=self.headers)
        except httpx.HTTPError:
            return
        if r.status_code in (401, 403):
            self._denied(b, "/metrics", r.status_code)
            b.num_running = b.num_waiting = b.kv_usage = 0.0  # stale numbers would steer leastloaded
        elif r.status_code == 200:
            b.denied.discard("/metrics")
            for key, value in parse_load(r.text).items():
                setattr(b, key, value)
