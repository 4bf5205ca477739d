"""Which replica holds a stored Responses API answer (``pagoda serve`` with its Responses store on keeps them in
that replica's memory): the router sends ``GET`` / ``DELETE /v1/responses/{id}``, ``POST
/v1/responses/{id}/cancel`` and a ``POST /v1/responses`` naming ``previous_response_id`` to it.

The holder is found by asking every healthy replica ``GET /v1/responses/{id}`` at once with the client's own
headers (the one answering 200 holds it; ids are unique, so at most one does) and remembered in a bounded map, most
recently used last. A remembered holder is used while it is healthy, without asking again: if it lost the response
(a restart), its own 404 is the right answer, since no other replica has it either.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from urllib.parse import quote

import httpx

from pagoda.router.backends import Backend, BackendPool

MAX_REMEMBERED = 100_000
"""Response ids whose holder the router remembers (an id past it is asked for again)."""

Ask = Callable[[str, list[Backend]], Awaitable[list[tuple[Backend, httpx.Response]]]]
"""(path, backends) -> the backends' answers to ``GET path`` with the client's headers (failed ones left out)."""


class ResponseHolders:
    """Response id -> the URL of the replica holding it (at most ``limit`` ids)."""

    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self.limit = limit
        self._urls: OrderedDict[str, str] = OrderedDict()

    def remember(self, rid: str, url: str) -> None:
        self._urls[rid] = url
        self._urls.move_to_end(rid)
        while len(self._urls) > self.limit:
            self._urls.popitem(last=False)

    def forget(self, rid: str) -> None:
        self._urls.pop(rid, None)

    async def find(self, rid: str, pool: BackendPool, ask: Ask) -> tuple[Backend | None, httpx.Response | None]:
        """The healthy replica holding ``rid``; else None and a replica's refusal of the client (401 / 403) when
        one refused it (the client's key is not good there), so the client hears why rather than a 404."""
        url = self._urls.get(rid)
        healthy = pool.healthy()
        if url is not None:
            known = next((b for b in healthy if b.url == url), None)
            if known is not None:
                self._urls.move_to_end(rid)
                return known, None
        answers = await ask("/v1/responses/" + quote(rid, safe=""), healthy)
        for b, r in answers:
            if r.status_code == 200:
                self.remember(rid, b.url)
                return b, None
        return None, next((r for _, r in answers if r.status_code in (401, 403)), None)
