"""Replicas as the router sees them, and the pool that holds them.

Invariants: a backend URL has no trailing slash and appears once in the pool; a backend is routed to
only while ``healthy``; ``models`` is the set of ids its ``/v1/models`` last listed, meaningful only
while ``models_known`` (before the first successful probe, and while the replica refuses the router's
own request with 401/403, its list is *unknown*: it may serve any model, and a request routed to it on
that chance falls through to the next such replica when it answers 404 ``model_not_found``);
``in_flight`` counts the requests the router has open on it right now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def normalize_url(url: str) -> str:
    """``host:port`` or ``http://host:port/`` -> ``http://host:port`` (the pool's key)."""
    url = url.strip().rstrip("/")
    if not url:
        raise ValueError("empty backend URL")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"backend URL must be http:// or https://, got {url!r}")
    import httpx

    try:  # as the proxy and the probes will read it (a bad port is only found here, not by the checks above)
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as e:
        raise ValueError(f"backend URL {url!r} is not a valid URL: {e}") from None
    if not parsed.host:
        raise ValueError(f"backend URL {url!r} has no host")
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"backend URL {url!r}: port {port} is not in 1-65535")
    return url


@dataclass
class Backend:
    url: str
    healthy: bool = True
    """Routed to only while True. Starts True so a router serves before its first probe."""
    models: set[str] = field(default_factory=set)
    models_known: bool = False
    """Whether ``models`` is the replica's list (False: not read yet, or the replica refused the router)."""
    denied: set[str] = field(default_factory=set)
    """The router's own probe paths (``/v1/models``, ``/metrics``) the replica answers 401/403 right now: the
    router needs ``--backend-api-key``."""
    model_cards: list[dict[str, Any]] = field(default_factory=list)
    """The ``data`` entries of the replica's last ``/v1/models`` answer (merged by the router's own)."""
    num_running: float = 0.0
    num_waiting: float = 0.0
    kv_usage: float = 0.0
    """From the replica's ``/metrics`` (vllm:/pagoda: num_requests_running, num_requests_waiting,
    kv_cache_usage_perc), refreshed every ``--engine-stats-interval``."""
    in_flight: int = 0
    last_error: str | None = None
    taken_out: int = 0
    """How many times a request found the replica refusing connections (:meth:`Proxy._refused`): a probe that
    began before the latest of those cannot put it back (its 200 may predate the replica's death)."""

    def serves(self, model: str | None) -> bool:
        """Whether the replica may serve ``model`` (None: any; an unknown model list: maybe)."""
        return model is None or not self.models_known or model in self.models

    def known_to_serve(self, model: str) -> bool:
        return self.models_known and model in self.models

    @property
    def load(self) -> float:
        """Queue depth: the replica's own running + waiting count, or the router's open requests on it if
        that is larger (the scrape lags; the router's count is exact for traffic that went through it)."""
        return max(self.num_running + self.num_waiting, float(self.in_flight))


class BackendPool:
    """The current replicas by URL. ``set_urls`` replaces the list and keeps the state of URLs that stay."""

    def __init__(self, urls: list[str] | None = None) -> None:
        self.backends: dict[str, Backend] = {}
        if urls:
            self.set_urls(urls)

    def set_urls(self, urls: list[str]) -> tuple[list[str], list[str]]:
        """Make the pool exactly ``urls``; returns (added, removed)."""
        wanted = list(dict.fromkeys(normalize_url(u) for u in urls))
        removed = [u for u in self.backends if u not in wanted]
        added = [u for u in wanted if u not in self.backends]
        for u in removed:
            del self.backends[u]
        for u in added:
            self.backends[u] = Backend(u)
        return added, removed

    def all(self) -> list[Backend]:
        return list(self.backends.values())

    def healthy(self) -> list[Backend]:
        return [b for b in self.backends.values() if b.healthy]

    def candidates(self, model: str | None, exclude: set[str] = frozenset()) -> list[Backend]:  # type: ignore[assignment]
        """Healthy backends for ``model``, sorted by URL, less ``exclude``: any when ``model`` is None; else those
        known to serve it, or, only when no healthy backend is known to, those whose model list is unknown (the
        tier is chosen before ``exclude``, so retries never leave the known servers for guesses)."""
        healthy = sorted(self.healthy(), key=lambda b: b.url)
        if model is not None:
            known = [b for b in healthy if b.known_to_serve(model)]
            healthy = known or [b for b in healthy if not b.models_known]
        return [b for b in healthy if b.url not in exclude]

    def known_model(self, model: str) -> bool:
        """Whether some backend serves ``model`` (or may: its model list is unknown), healthy or not: a model whose
        replicas are all out for now is a 503 (retried by clients), not a 404 "does not exist"."""
        return any(b.serves(model) for b in self.all())

    def unknown_lists(self) -> list[Backend]:
        """Healthy backends whose model list the router does not know, sorted by URL."""
        return sorted((b for b in self.healthy() if not b.models_known), key=lambda b: b.url)

    def merged_models(self) -> list[dict[str, Any]]:
        """The union of the healthy backends' known ``/v1/models`` cards, one per id, in first-seen order."""
        out: dict[str, dict[str, Any]] = {}
        for b in sorted(self.healthy(), key=lambda b: b.url):
            for card in b.model_cards if b.models_known else ():
                out.setdefault(str(card.get("id")), card)
        return list(out.values())
