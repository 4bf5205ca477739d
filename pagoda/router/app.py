"""The router's ASGI app: routes, API key, body cap, and the background refresh of the backend pool.

Routes: ``/health`` (200 while at least one backend is in rotation, else 503; no key needed), ``/metrics``,
``/version`` (the router's own pagoda version, as a replica answers it), ``/v1/models`` (merged over the healthy
replicas, one card per id), ``/v1/models/{id}``, and the proxied routes :data:`PROXIED_PATHS`. A request naming a
``model`` that no healthy replica serves is a 404 (``model_not_found``), as pagoda serve answers it. Stored Responses
API answers (``GET`` / ``DELETE /v1/responses/{id}``, ``.../input_items``, ``POST .../cancel``,
``previous_response_id``) go to the replica that holds them (:mod:`.stored_responses`). Every error,
the framework's own (an unknown route, a wrong method) included, has OpenAI's shape ``{"error": {"message", "type",
"param", "code"}}``, as pagoda serve answers it.

Replicas whose model list the router cannot read (they answer its own ``/v1/models`` with 401/403) are asked
with the client's own headers when a client lists the models, so a client holding their key sees their models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

import pagoda
from pagoda.entrypoints.api_keys import ApiKeys
from pagoda.router.backends import Backend, BackendPool
from pagoda.router.discovery import DiscoveryError, FileSource
from pagoda.router.health import HealthChecker
from pagoda.router.metrics import CLIENT_GONE, RouterMetrics
from pagoda.router.policies import RequestInfo, RoutingPolicy
from pagoda.router.proxy import Proxy, ProxyConfig, error_body, error_response, model_not_found, relayed
from pagoda.router.stored_responses import ResponseHolders

logger = logging.getLogger("pagoda.router")

PROXIED_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings", "/v1/responses", "/tokenize",
                 "/detokenize", "/pooling", "/classify", "/score", "/v1/score", "/rerank", "/v1/rerank", "/v2/rerank")
"""Every POST route of ``pagoda serve`` that answers one request on its own (the generation, pooling and tokenizer
routes: a client of the router reaches each as it reaches a replica)."""
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
    """``Authorization: Bearer KEY`` (:class:`ApiKeys`: any case of the scheme, constant-time comparison) on every
    route but /health; ``on_reject(path, t0)`` is told of each 401."""

    def __init__(self, app: ASGIApp, api_key: str, on_reject: Callable[[str, float], None] | None = None) -> None:
        self.app = app
        self.keys = ApiKeys(api_key)
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNAUTHENTICATED_PATHS:
            return await self.app(scope, receive, send)
        t0 = time.monotonic()
        given = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
        if not self.keys.accepts(given):
            if self.on_reject:
                self.on_reject(scope["path"], t0)
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
        self.response_holders = ResponseHolders()

    async def start(self) -> None:
        cfg = self.cfg
        timeout = httpx.Timeout(cfg.request_timeout_s, connect=cfg.connect_timeout_s)
        # idle connections expire before the replicas close them (uvicorn's timeout_keep_alive, 5 s, as pagoda
        # serve's): one reused just as the replica closes it would fail a request that no retry goes back to
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=256, keepalive_expiry=3.0)
        self.client = httpx.AsyncClient(timeout=timeout, limits=limits)
        self.health_client = httpx.AsyncClient(timeout=cfg.health_check_timeout_s)
        self.proxy = Proxy(self.pool, cfg.policy, self.client, self.metrics,
                           ProxyConfig(cfg.max_retries, cfg.backend_api_key))
        headers = {"Authorization": f"Bearer {cfg.backend_api_key or cfg.api_key}"} \
            if (cfg.backend_api_key or cfg.api_key) else {}
        self.checker = HealthChecker(self.health_client, headers, cfg.engine_stats_interval_s)
        # before the first refresh (it lasts up to --health-check-timeout): a SIGHUP meanwhile must not end the
        # router (its default action); it makes the loop's first round a forced refresh
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload.set)
        await self.refresh(force=True)
        self.task = asyncio.create_task(self._loop())

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
        assert self.checker is not None  # (start() made it)
        if self.cfg.sources:
            urls: list[str] = []
            try:
                for s in self.cfg.sources:
                    urls += await (s.urls(force=force) if isinstance(s, FileSource) else s.urls())
            except DiscoveryError as e:
                logger.warning("backend discovery failed, keeping %d backend(s): %s", len(self.pool.backends), e)
            else:
                try:
                    added, removed = self.pool.set_urls(urls)
                except ValueError as e:  # a bad URL in the backends file: keep the pool, and go on probing it
                    logger.warning("backend list refused, keeping %d backend(s): %s", len(self.pool.backends), e)
                else:
                    if added or removed:
                        logger.info("backends added %s, removed %s", added, removed)
                    self.metrics.forget(removed)
                    self.checker.forget(removed)
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
    _add_exception_handlers(app)
    if cfg.api_key:
        def rejected(path: str, t0: float) -> None:
            if path in PROXIED_PATHS:  # (other paths unlabelled: any path would make a series)
                state.metrics.done(None, path, "401", t0)

        app.add_middleware(ApiKeyMiddleware, api_key=cfg.api_key, on_reject=rejected)
    return app


# The framework's errors in OpenAI's shape, as pagoda serve's ``pagoda.entrypoints.openai.error_handlers`` answers
# them (mirrored: importing that module loads the engine).
MAX_LISTED_ERRORS = 5


def _framework_error(status: int, message: str, param: str | None) -> dict[str, Any]:
    body = error_body(status, message, param=param)
    body["error"]["code"] = None  # as the server's (the router's own errors name theirs)
    return body


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """404 for an unknown route, 405 for a wrong method: the server's body (and the ``Allow`` header of a 405)."""
    msg = exc.detail if isinstance(exc.detail, str) else "HTTP error"
    return JSONResponse(_framework_error(exc.status_code, msg, None), status_code=exc.status_code,
                        headers=exc.headers)


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    parts, param = [], None
    for e in errs[:MAX_LISTED_ERRORS]:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        param = param or (loc[0] if loc else None)
        where = ".".join(loc)
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    msg = "; ".join(parts) or "Invalid request."
    if len(errs) > MAX_LISTED_ERRORS:
        msg += f" (and {len(errs) - MAX_LISTED_ERRORS} more errors)"
    return JSONResponse(_framework_error(400, msg, param), status_code=400)


async def on_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("internal error while answering %s", request.url.path, exc_info=exc)
    return error_response(500, f"Internal server error: {type(exc).__name__}: {exc}", "internal_error")


def _add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_error)


def _add_routes(app: FastAPI, state: RouterState) -> None:
    @app.get("/health")
    async def health() -> Response:
        n = len(state.pool.healthy())
        return Response(status_code=200 if n else 503)

    @app.get("/version")
    async def version() -> Response:
        return JSONResponse({"version": pagoda.__version__})

    @app.get("/metrics")
    async def metrics() -> Response:
        data, ctype = state.metrics.render(state.pool)
        return Response(data, media_type=ctype)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        return await _list_models(state, request)

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Response:
        return await _get_model(state, request, model_id)

    async def proxied(request: Request) -> Response:
        return await _proxy(state, request)

    for path in PROXIED_PATHS:
        app.add_api_route(path, proxied, methods=["POST"])

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str, request: Request) -> Response:
        return await _stored_response(state, request, response_id)

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str, request: Request) -> Response:
        return await _stored_response(state, request, response_id)

    @app.get("/v1/responses/{response_id}/input_items")
    async def response_input_items(response_id: str, request: Request) -> Response:
        return await _stored_response(state, request, response_id, "/input_items")

    @app.post("/v1/responses/{response_id}/cancel")
    async def cancel_response(response_id: str, request: Request) -> Response:
        return await _stored_response(state, request, response_id, "/cancel")


async def _list_models(state: RouterState, request: Request) -> Response:
    """The union of the replicas' lists: the router's own copies, and the answers to the client's own request of
    the replicas whose lists it cannot read."""
    unknown = state.pool.unknown_lists()
    if not unknown:
        return JSONResponse({"object": "list", "data": state.pool.merged_models()})
    answers = await _ask(state, request, "/v1/models", unknown)
    cards = {b.url: b.model_cards for b in state.pool.healthy() if b.models_known}
    denied: httpx.Response | None = None
    for b, r in answers:
        data = _json(r).get("data") if r.status_code == 200 else None
        if isinstance(data, list):
            cards[b.url] = [c for c in data if isinstance(c, dict) and "id" in c]
        elif r.status_code in (401, 403) and denied is None:
            denied = r
    merged: dict[str, dict[str, Any]] = {}
    for url in sorted(cards):
        for card in cards[url]:
            merged.setdefault(str(card.get("id")), card)
    if not merged and denied is not None:  # the client may not list them either: the replica's own 401
        return relayed(denied)
    return JSONResponse({"object": "list", "data": list(merged.values())})


async def _get_model(state: RouterState, request: Request, model_id: str) -> Response:
    """One card of the union (a replica's own 401/403 to a client that may not read an unknown list)."""
    card = next((c for c in state.pool.merged_models() if c.get("id") == model_id), None)
    if card is not None:
        return JSONResponse(card)
    unknown = state.pool.unknown_lists()
    answers = await _ask(state, request, "/v1/models/" + quote(model_id, safe="/"), unknown) if unknown else []
    for _, r in answers:
        if r.status_code == 200:
            return relayed(r)
    denied = next((r for _, r in answers if r.status_code in (401, 403)), None)
    return relayed(denied) if denied is not None else model_not_found(model_id)


async def _ask(state: RouterState, request: Request, path: str,
               backends: list[Backend]) -> list[tuple[Backend, httpx.Response]]:
    """``GET path`` on ``backends`` with the client's own headers (and so its key), within --health-check-timeout."""
    assert state.proxy is not None
    headers = state.proxy.upstream_headers(request.headers.items(), request.client.host if request.client else None)
    return await state.proxy.ask(path, headers, backends, state.cfg.health_check_timeout_s)


def _json(r: httpx.Response) -> dict[str, Any]:
    try:
        out = r.json()
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


async def _proxy(state: RouterState, request: Request) -> Response:
    t0 = time.monotonic()
    path = request.url.path
    try:
        body = await read_body(request, state.cfg.max_request_body_bytes)
    except ClientDisconnect:
        state.metrics.done(None, path, CLIENT_GONE, t0)
        return Response(status_code=499)
    if body is None:
        state.metrics.done(None, path, "400", t0)
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
        state.metrics.done(None, path, "404", t0)
        return model_not_found(model)
    info = RequestInfo(path, {k.lower(): v for k, v in request.headers.items()}, parsed)
    assert state.proxy is not None
    headers = state.proxy.upstream_headers(request.headers.items(), request.client.host if request.client else None)
    pin = None
    previous = parsed.get("previous_response_id") if path == "/v1/responses" else None
    if isinstance(previous, str):  # continue on the replica holding it (none found: any one answers the 404)
        holder, _ = await state.response_holders.find(previous, state.pool,
                                                      lambda p, bs: _ask(state, request, p, bs))
        pin = holder.url if holder is not None else None
    return await state.proxy.forward("POST", path, body, headers, info, model, t0, request.receive, pin=pin)


async def _stored_response(state: RouterState, request: Request, response_id: str, suffix: str = "") -> Response:
    """A stored response's route, forwarded to the replica holding it; none holds it: a 404 (or a replica's
    refusal of the client's key)."""
    t0 = time.monotonic()
    label = "/v1/responses/{id}" + suffix  # the metrics' path: one series, whatever the id
    holder, denied = await state.response_holders.find(response_id, state.pool,
                                                       lambda p, bs: _ask(state, request, p, bs))
    if holder is None:
        if denied is not None:
            state.metrics.done(None, label, str(denied.status_code), t0)
            return relayed(denied)
        state.metrics.done(None, label, "404", t0)
        return error_response(404, f"Response with id {response_id!r} not found on any replica (a replica keeps its "
                                   f"answers only with its Responses store on).", "response_not_found")
    assert state.proxy is not None
    headers = state.proxy.upstream_headers(request.headers.items(), request.client.host if request.client else None)
    target = "/v1/responses/" + quote(response_id, safe="") + suffix
    if request.url.query:
        target += "?" + request.url.query
    info = RequestInfo(label, {k.lower(): v for k, v in request.headers.items()}, {})
    answer = await state.proxy.forward(request.method, label, b"", headers, info, None, t0, request.receive,
                                       pin=holder.url, target=target)
    if request.method == "DELETE" and answer.status_code == 200:
        state.response_holders.forget(response_id)
    return answer
