"""Helpers every route module uses: the shared state, errors as JSON, client disconnects."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from pagoda.client_disconnect import unless_client_leaves
from pagoda.entrypoints.openai.protocol import SamplingFields
from pagoda.entrypoints.openai.server_state import ServerState
from pagoda.entrypoints.openai.serving_engine import serving_error_response

logger = logging.getLogger("pagoda.server")


def take_header_request_id(raw: Request, body: SamplingFields) -> None:
    """vLLM's rule for completions and chat: a non-empty ``X-Request-Id`` header is the request's id, over the
    body's ``request_id`` (the response's ``id`` is ``cmpl-<id>`` / ``chatcmpl-<id>``, and the log names it), so a
    gateway's id follows the request through the server."""
    rid = raw.headers.get("x-request-id")
    if rid:
        body.request_id = rid


def server_state(request: Request) -> ServerState:
    return request.app.state.pagoda


def ready(request: Request) -> ServerState:
    """The shared state once the engine can serve; raises a 503 ``ServingError`` before."""
    return server_state(request).ready()


async def guarded(fn: Callable[[], Awaitable[Any]]) -> Response:
    """Run a handler body; any exception becomes its JSON error response."""
    try:
        res = await fn()
    except Exception as e:
        return serving_error_response(e)
    return res


async def generate(raw: Request, stream: bool | None,
                   handler: Callable[[ServerState], Awaitable[Response]]) -> Response:
    """A generation route: ``handler`` on the ready state, errors as JSON; a non-streaming request is
    aborted when its client disconnects (a stream notices the disconnect itself)."""
    work = guarded(lambda: handler(ready(raw)))
    return await (work if stream else with_disconnect_abort(raw, work))


async def with_disconnect_abort(request: Request, work: Awaitable[Response]) -> Response:
    """Run a non-streaming handler; if the client disconnects first, cancel it (which aborts its
    requests in the engine and frees their KV blocks)."""
    finished, res = await unless_client_leaves(work, request.receive)
    if finished:
        assert res is not None
        return res
    logger.info("client disconnected; request aborted")
    return Response(status_code=499)
