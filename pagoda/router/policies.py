"""``--routing-logic``: which healthy replica gets a request.

Names as vLLM production-stack's router (``roundrobin``, ``session``, ``prefixaware``) plus
``leastloaded`` (production-stack has no policy that reads the replicas' own queues):

* ``roundrobin`` — candidates in URL order, one after the other (a turn counter per candidate set);
* ``leastloaded`` — the smallest queue (running + waiting from the replica's ``/metrics``, or the router's
  own open requests on it if larger), then the lowest KV-cache usage; ties rotate;
* ``session`` — consistent hashing (a ring of virtual nodes, SHA-1: independent of hash seeds) of the
  session id: the ``--session-key`` header, else the body field of that name, else the body's ``user``;
  no id -> ``leastloaded``. When a replica leaves, only its sessions move;
* ``prefixaware`` — the prompt text (completions ``prompt``, chat ``messages``, responses ``input``) cut
  into ``--prefix-chunk-size``-character chunks with chained hashes; the request goes to the replica that
  served the longest matching chain (ties and no match: ``leastloaded``), unless that replica's queue is
  more than ``--prefix-balance-threshold`` above the shortest one (then ``leastloaded``: SGLang's guard
  against piling onto one cache). The chosen replica is recorded as holding the chain.

Every policy picks from the candidates it is given (healthy, serving the requested model, not yet tried
for this request); the list is never empty.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pagoda.router.backends import Backend

ROUTING_LOGICS = ("roundrobin", "leastloaded", "session", "prefixaware")


@dataclass
class RequestInfo:
    """What a policy may look at: the path, the headers (lower-case names) and the parsed JSON body."""

    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)


class RoutingPolicy:
    name = ""

    def choose(self, candidates: Sequence[Backend], req: RequestInfo) -> Backend:
        raise NotImplementedError


class Rotation:
    """One turn counter per candidate set: requests for model A must not skip turns of model B's replicas."""

    MAX_SETS = 1024

    def __init__(self) -> None:
        self.turns: dict[tuple[str, ...], int] = {}

    def next(self, candidates: Sequence[Backend]) -> int:
        key = tuple(b.url for b in candidates)
        if key not in self.turns and len(self.turns) >= self.MAX_SETS:
            self.turns.clear()
        turn = self.turns.get(key, 0)
        self.turns[key] = turn + 1
        return turn % len(candidates)


class RoundRobin(RoutingPolicy):
    name = "roundrobin"

    def __init__(self) -> None:
        self.rotation = Rotation()

    def choose(self, candidates: Sequence[Backend], req: RequestInfo) -> Backend:
        return candidates[self.rotation.next(candidates)]


class LeastLoaded(RoutingPolicy):
    name = "leastloaded"

    def __init__(self) -> None:
        self.rotation = Rotation()

    def choose(self, candidates: Sequence[Backend], req: RequestInfo) -> Backend:
        n = len(candidates)
        start = self.rotation.next(candidates)
        rotated = [candidates[(start + i) % n] for i in range(n)]
        return min(rotated, key=lambda b: (b.load, b.kv_usage))  # min keeps the first of equals


def _hash64(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8", "surrogatepass")).digest()[:8], "big")


class HashRing:
    """Consistent hashing with ``replicas`` virtual nodes per URL."""

    def __init__(self, replicas: int = 160) -> None:
        self.replicas = replicas
        self._urls: tuple[str, ...] = ()
        self._points: list[int] = []
        self._owners: list[str] = []

    def _build(self, urls: tuple[str, ...]) -> None:
        ring = sorted((_hash64(f"{u}#{i}"), u) for u in urls for i in range(self.replicas))
        self._points = [p for p, _ in ring]
        self._owners = [u for _, u in ring]
        self._urls = urls

    def lookup(self, urls: Sequence[str], key: str) -> str:
        t = tuple(sorted(urls))
        if t != self._urls:
            self._build(t)
        i = bisect.bisect(self._points, _hash64(key)) % len(self._points)
        return self._owners[i]


class Session(RoutingPolicy):
    name = "session"

    def __init__(self, session_key: str | None = None) -> None:
        self.session_key = session_key
        self.ring = HashRing()
        self.fallback = LeastLoaded()

    def session_id(self, req: RequestInfo) -> str | None:
        if self.session_key:
            value = req.headers.get(self.session_key.lower())
            if value:
                return value
            value = req.body.get(self.session_key)
            if isinstance(value, (str, int)) and str(value):
                return str(value)
        user = req.body.get("user")
        return user if isinstance(user, str) and user else None

    def choose(self, candidates: Sequence[Backend], req: RequestInfo) -> Backend:
        sid = self.session_id(req)
        if sid is None:
            return self.fallback.choose(candidates, req)
        url = self.ring.lookup([b.url for b in candidates], sid)
        return next(b for b in candidates if b.url == url)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: the text ones, in order
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else json.dumps(content, sort_keys=True)


def prompt_text(body: Mapping[str, Any]) -> str:
    """The request's prompt as one string, in the order the model reads it (the prefix's key)."""
    if isinstance(body.get("messages"), list):
        return "".join(f"<{m.get('role')}>{_content_text(m.get('content'))}\n"
                       for m in body["messages"] if isinstance(m, dict))
    for key in ("prompt", "input"):
        value = body.get(key)
        if isinstance(value, str):
            return (body.get("instructions") or "") + value if key == "input" else value
        if isinstance(value, list) and value:
            first = value[0]
            if isinstance(first, int):  # token ids
                return ",".join(map(str, value))
            if isinstance(first, dict):  # responses input items
                return "".join(f"<{m.get('role')}>{_content_text(m.get('content'))}\n" for m in value
                               if isinstance(m, dict))
            return _content_text(first) if isinstance(first, str) else json.dumps(first)
    return ""


class PrefixAware(RoutingPolicy):
    name = "prefixaware"

    def __init__(self, chunk_size: int = 128, balance_threshold: float = 32.0, max_entries: int = 200_000) -> None:
        if chunk_size < 1:
            raise ValueError(f"--prefix-chunk-size must be >= 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.balance_threshold = balance_threshold
        self.max_entries = max_entries
        self.table: OrderedDict[int, set[str]] = OrderedDict()
        """Chained chunk hash -> URLs that served a prompt with that prefix (LRU, at most max_entries)."""
        self.fallback = LeastLoaded()

    def chain(self, text: str) -> list[int]:
        out, h = [], 0
        for i in range(0, len(text) - self.chunk_size + 1, self.chunk_size):
            h = _hash64(f"{h:x}|{text[i:i + self.chunk_size]}")
            out.append(h)
        return out

    def matched(self, chain: list[int], urls: set[str]) -> set[str]:
        """The candidate URLs holding the longest prefix of ``chain`` (empty: no chunk matched)."""
        best: set[str] = set()
        for h in chain:
            holders = self.table.get(h, set()) & urls
            if not holders:
                break
            best = holders
        return best

    def record(self, chain: list[int], url: str) -> None:
        for h in chain:
            self.table.setdefault(h, set()).add(url)
            self.table.move_to_end(h)
        while len(self.table) > self.max_entries:
            self.table.popitem(last=False)

    def choose(self, candidates: Sequence[Backend], req: RequestInfo) -> Backend:
        chain = self.chain(prompt_text(req.body))
        best = self.matched(chain, {b.url for b in candidates})
        holders = [b for b in candidates if b.url in best]
        least = min(b.load for b in candidates)
        if holders and min(b.load for b in holders) - least <= self.balance_threshold:
            chosen = self.fallback.choose(holders, req)
        else:
            chosen = self.fallback.choose(candidates, req)
        self.record(chain, chosen.url)
        return chosen


def make_policy(name: str, session_key: str | None = None, prefix_chunk_size: int = 128,
                prefix_balance_threshold: float = 32.0) -> RoutingPolicy:
    if name == "roundrobin":
        return RoundRobin()
    if name == "leastloaded":
        return LeastLoaded()
    if name == "session":
        return Session(session_key)
    if name == "prefixaware":
        return PrefixAware(prefix_chunk_size, prefix_balance_threshold)
    raise ValueError(f"--routing-logic must be one of {', '.join(ROUTING_LOGICS)}, got {name!r}")
