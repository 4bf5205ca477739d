"""The server's ASGI middleware: API key, request-body cap, X-Request-Id, CORS, server-load count.

``add_middlewares`` installs them in the order that keeps the rules: the key check runs before any
body is read, and CORS answers a browser's preflight before the key check (a preflight carries no
credentials, as browsers send it).
"""

from __future__ import annotations

import argparse
import json
import uuid
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pagoda import envs
from pagoda.entrypoints.api_keys import ApiKeys
from pagoda.entrypoints.openai.serving_engine import error_body

# Health probes answer without the key: load balancers and SageMaker (/ping) send none; nor does a browser
# opening the chat page (/), static HTML with no data whose own API calls carry the key. (vLLM checks the
# key on /v1/* only; pagoda checks it everywhere else too.)
UNAUTHENTICATED_PATHS = frozenset({"/health", "/ping", "/"})


def load_tracked_paths() -> frozenset[str]:
    """The routes whose requests occupy the engine, what --enable-server-load-tracking counts (vLLM's list): every
    POST route of the completion, chat, Responses and pooling routers, and SageMaker's /invocations (which
    dispatches to them). Read from the routers themselves, so a new route there is counted."""
    from fastapi.routing import APIRoute

    from pagoda.entrypoints.openai.routes import chat, completions, pooling, responses

    paths = {r.path for m in (completions, chat, responses, pooling) for r in m.router.routes
             if isinstance(r, APIRoute) and "POST" in (r.methods or ())}
    return frozenset({*paths, "/invocations"})


async def send_json(send: Send, status: int, body: dict[str, Any],
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


def route_path(scope: Scope) -> str:
    """The path the router matches: without the --root-path prefix when the request carries it."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


class ApiKeyMiddleware:
    """Bearer-token check (:class:`ApiKeys`) on every route but ``UNAUTHENTICATED_PATHS``."""

    def __init__(self, app: ASGIApp, api_key: str | list[str]) -> None:
        self.app = app
        self.keys = ApiKeys(api_key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or route_path(scope) in UNAUTHENTICATED_PATHS:
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        if not self.keys.accepts(given):
            msg = "Missing API key." if not given else "Incorrect API key provided."
            return await send_json(send, 401, error_body(401, msg, "invalid_request_error", None, "invalid_api_key"),
                                   [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Reads a request body up to ``limit`` bytes; beyond it the request is a 400 naming the cap."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    # A body over the limit is read and discarded up to this many bytes before the 400 goes out:
    # answering while the client is still uploading makes the server close the connection under
    # it, and the client sees a reset instead of the error. Beyond it, the connection is dropped.
    DRAIN_LIMIT = 64 * 2**20

    async def _too_large(self, receive: Receive, send: Send, seen: int, more: bool) -> None:
        while more and seen <= self.limit + self.DRAIN_LIMIT:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            seen += len(msg.get("body", b""))
            more = msg.get("more_body", False)
        await send_json(send, 400, error_body(
            400, f"The request body is larger than the server's limit of {self.limit} bytes "
                 f"(--max-request-body-bytes).", "invalid_request_error", None, "request_too_large"))

    def _declared_too_large(self, scope: Scope) -> bool:
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    return int(v) > self.limit
                except ValueError:
                    return False
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        if self._declared_too_large(scope):
            return await self._too_large(receive, send, 0, True)
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            body = msg.get("body", b"")
            size += len(body)
            if size > self.limit:
                return await self._too_large(receive, send, size, msg.get("more_body", False))
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: waits for http.disconnect

        return await self.app(scope, replay, send)


class RequestIdMiddleware:
    """--enable-request-id-headers: every response carries X-Request-Id, the request's own or a new one."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), None) or uuid.uuid4().hex.encode()

        async def send_with_id(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                headers = [(k, v) for k, v in msg.get("headers", []) if k.lower() != b"x-request-id"]
                msg = {**msg, "headers": [*headers, (b"x-request-id", rid)]}
            await send(msg)

        return await self.app(scope, receive, send_with_id)


class ServerLoadMiddleware:
    """--enable-server-load-tracking: ``counter.server_load`` is the number of POST requests to ``paths`` (default:
    :func:`load_tracked_paths`) being served, from the route's start to the response's last byte (a stream's
    included), whatever the outcome."""

    def __init__(self, app: ASGIApp, counter: Any, paths: frozenset[str] | None = None) -> None:
        self.app = app
        self.counter = counter
        self.paths = load_tracked_paths() if paths is None else paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or route_path(scope) not in self.paths:
            return await self.app(scope, receive, send)
        self.counter.server_load += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.counter.server_load -= 1


def server_api_keys(args: argparse.Namespace) -> list[str]:
    """The keys ``--api-key`` (repeated) gives, else ``$PAGODA_API_KEY``; empty values dropped (``--api-key "$KEY"``
    with the variable unset means no key given, as in vLLM, not a key nobody can send)."""
    return [k for k in (args.api_key or [envs.api_key()]) if k]


def add_middlewares(app: FastAPI, args: argparse.Namespace) -> None:
    """Install the middleware ``args`` asks for. Middleware added last runs first."""
    if getattr(args, "enable_server_load_tracking", False):  # innermost: refused requests are not counted
        app.add_middleware(ServerLoadMiddleware, counter=app.state.pagoda)
    app.add_middleware(BodyLimitMiddleware, limit=args.max_request_body_bytes)
    api_keys = server_api_keys(args)
    if api_keys:
        app.add_middleware(ApiKeyMiddleware, api_key=api_keys)
    if getattr(args, "allowed_origins", None):
        app.add_middleware(CORSMiddleware, allow_origins=args.allowed_origins, allow_methods=args.allowed_methods,
                           allow_headers=args.allowed_headers, allow_credentials=args.allow_credentials)
    if getattr(args, "enable_request_id_headers", False):
        app.add_middleware(RequestIdMiddleware)
