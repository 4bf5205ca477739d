"""The router's ASGI app: routes, API key, body cap, and the background refresh of the backend pool.

Routes: ``/health`` (200 while at least one backend is in rotation, else 503; no key needed),
``/metrics``, ``/v1/models`` (merged over the healthy replicas, one card per id), ``/v1/models/{id}``, and
the proxied OpenAI routes :data:`PROXIED_PATHS`. A request naming a ``model`` that no healthy replica
serves is a 404 (``model_not_found``), as pagoda serve answers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from pagoda.router.backends import BackendPool
from pagoda.router.discovery import DiscoveryError, FileSource
from pagoda.router.health import HealthChecker
from pagoda.router.metrics import RouterMetrics
from pagoda.router.policies import RequestInfo, RoutingPolicy
from pagoda.router.proxy import Proxy, ProxyConfig, error_body, error_response

logger = logging.getLogger("pagoda.router")

PROXIED_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/tokenize",
                 "/detokenize")
UNAUTHENTICATED_PATHS = frozenset({"/health"})
DRAIN_LIMIT = 64 * 2**20
"""A body over the cap is read and dropped up to this many more bytes before the 400 (answering while the
client still uploads would reset its connection and hide the error)."""


@dataclass
class RouterConfig:
    policy: RoutingPolicy
    sources: list[Any]
    """Objects with ``async urls() -> list[str]`` (see :mod:`pagoda.router.discovery`)."""
    api_key: str | None = None
    backend_api_key: str | None = None
    max_request_body_bytes: int = 8 * 2**20
    max_retries: int = 2
    request_timeout_s: float = 600.0
    connect_timeout_s: float = 5.0
    health_check_interval_s: float = 5.0
    health_check_timeout_s: float = 5.0
    engine_stats_interval_s: float = 5.0
    initial_urls: list[str] = field(default_factory=list)


class ApiKeyMiddleware:
    """``Authorization: Bearer KEY`` on every route but /health (constant-time comparison)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNAUTHENTICATED_PATHS:
            return await self.app(scope, receive, send)
        given = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        if not secrets.compare_digest(given, self.expected):
            msg = "Missing API key." if not given else "Incorrect API key provided."
            resp = JSONResponse(error_body(401, msg, "invalid_api_key"), status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
            return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` bytes (then drained up to DRAIN_LIMIT more)."""
    declared = request.headers.get("content-length")
    chunks, size = [], 0
    if declared is not None and declared.isdigit() and int(declared) > limit:
        size = limit + 1
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit + DRAIN_LIMIT:
            break
        if size <= limit:
            chunks.append(chunk)
    return b"".join(chunks) if size <= limit else None


class RouterState:
    """The pool, its refresh loop, and the proxy (built at start-up, inside the event loop)."""

    def __init__(self, cfg: RouterConfig) -> None:
        self.cfg = cfg
        self.pool = BackendPool(cfg.initial_urls)
        self.metrics = RouterMetrics()
        self.reload = asyncio.Event()
        self.proxy: Proxy | None = None
        self.checker: HealthChecker | None = None

    async def start(self) -> None:
        cfg = self.cfg
        timeout = httpx.Timeout(cfg.request_timeout_s, connect=cfg.connect_timeout_s)
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
        self.client = httpx.AsyncClient(timeout=timeout, limits=limits)
        self.health_client = httpx.AsyncClient(timeout=cfg.health_check_timeout_s)
        self.proxy = Proxy(self.pool, cfg.policy, self.client, self.metrics,
                           ProxyConfig(cfg.max_retries, cfg.backend_api_key))
        headers = {"Authorization": f"Bearer {cfg.backend_api_key or cfg.api_key}"} \
            if (cfg.backend_api_key or cfg.api_key) else {}
        self.checker = HealthChecker(self.health_client, headers, cfg.engine_stats_interval_s)
        await self.refresh(force=True)
        self.task = asyncio.create_task(self._loop())
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload.set)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.client.aclose()
        await self.health_client.aclose()
        for s in self.cfg.sources:
            if hasattr(s, "aclose"):
                await s.aclose()

    async def refresh(self, force: bool = False) -> None:
        """Re-read the sources (a source that fails keeps the pool as it was), then probe every backend."""
        if self.cfg.sources:
            urls: list[str] = []
            try:
                for s in self.cfg.sources:
                    urls += await (s.urls(force=force) if isinstance(s, FileSource) else s.urls())
            except DiscoveryError as e:
                logger.warning("backend discovery failed, keeping %d backend(s): %s", len(self.pool.backends), e)
            else:
                added, removed = self.pool.set_urls(urls)
                if added or removed:
                    logger.info("backends added %s, removed %s", added, removed)
        assert self.checker is not None
        await self.checker.check_all(self.pool.all())

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.reload.wait(), self.cfg.health_check_interval_s)
            forced = self.reload.is_set()
            self.reload.clear()
            try:
                await self.refresh(force=forced)
            except Exception:  # the loop must survive anything one refresh runs into
                logger.exception("backend refresh failed")


def build_app(cfg: RouterConfig) -> FastAPI:
    state = RouterState(cfg)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        yield
        await state.stop()

    app = FastAPI(title="pagoda router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.router = state
    _add_routes(app, state)
    if cfg.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=cfg.api_key)
    return app


def _add_routes(app: FastAPI, state: RouterState) -> None:
    @app.get("/health")
    async def health() -> Response:
        n = len(state.pool.healthy())
        return Response(status_code=200 if n else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        data, ctype = state.metrics.render(state.pool)
        return Response(data, media_type=ctype)

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": state.pool.merged_models()})

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> JSONResponse:
        card = next((c for c in state.pool.merged_models() if c.get("id") == model_id), None)
        if card is None:
            return error_response(404, f"The model `{model_id}` does not exist.", "model_not_found")
        return JSONResponse(card)

    async def proxied(request: Request) -> Response:
        return await _proxy(state, request)

    for path in PROXIED_PATHS:
        app.add_api_route(path, proxied, methods=["POST"])


async def _proxy(state: RouterState, request: Request) -> Response:
    t0 = time.monotonic()
    path = request.url.path
    body = await read_body(request, state.cfg.max_request_body_bytes)
    if body is None:
        return error_response(400, f"The request body is larger than the router's limit of "
                                   f"{state.cfg.max_request_body_bytes} bytes (--max-request-body-bytes).",
                              "request_too_large")
    try:
        parsed = json.loads(body) if body else {}
    except (ValueError, UnicodeDecodeError):
        parsed = {}  # the replica answers the bad JSON with its own 400
    parsed = parsed if isinstance(parsed, dict) else {}
    model = parsed.get("model") if isinstance(parsed.get("model"), str) else None
    if model is not None and state.pool.healthy() and not state.pool.known_model(model):
        return error_response(404, f"The model `{model}` does not exist.", "model_not_found")
    info = RequestInfo(path, {k.lower(): v for k, v in request.headers.items()}, parsed)
    assert state.proxy is not None
    headers = state.proxy.upstream_headers(request.headers.items(), request.client.host if request.client else None)
    return await state.proxy.forward("POST", path, body, headers, info, model, t0)
