"""A request's work run while its client is watched: the one mechanism behind the server's non-streaming routes
(a client that leaves aborts its engine requests) and the router's forwarding (it closes the upstream request).
Plain asyncio on an ASGI ``receive`` channel: no FastAPI, no torch (the router imports it)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

logger = logging.getLogger("pagoda")

T = TypeVar("T")


async def client_gone(receive: Callable[[], Awaitable[MutableMapping[str, Any]]]) -> None:
    """Returns when the client disconnects (the request body must have been read already)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_client_leaves(work: Awaitable[T], receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
                               what: str = "a request") -> tuple[bool, T | None]:
    """``(True, result)`` when ``work`` finishes first (or while it is being cancelled: its answer stands);
    ``(False, None)`` when the client disconnects first, after ``work`` was cancelled and has ended. If the client's
    channel itself fails there is no news of the client: ``work`` is awaited. Cancelling the caller cancels both."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(client_gone(receive))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task not in done and watcher.exception() is not None:
        logger.warning("cannot watch the client of %s: %r", what, watcher.exception())
        return True, await task
    watcher.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait({task})
    if not task.cancelled():
        return True, task.result()
    return False, None
