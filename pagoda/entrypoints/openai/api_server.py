"""The OpenAI-compatible HTTP server (FastAPI on uvicorn).

``build_app(args)`` returns the app; the model loads in the background after start-up, so
``/health`` answers 503 until the engine core is ready (and again if it dies or stalls).
``run_server(args)`` serves it and exits non-zero if the model fails to load.

Routes: GET /health, /version, /metrics, /v1/models[/{id}]; POST /v1/completions,
/v1/chat/completions, /tokenize, /detokenize, /reset_prefix_cache. Every route but /health requires the API
key when one is set (``--api-key`` or ``PAGODA_API_KEY``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import secrets
import sys
from typing import Any, Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import prometheus_client

import pagoda
from pagoda.config import EngineArgs
from pagoda.engine.async_llm import AsyncLLM
from pagoda.entrypoints.openai.metrics import LoggingStatLogger, PrometheusStatLogger
from pagoda.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ModelCard,
    ModelList,
    VersionResponse,
)
from pagoda.entrypoints.openai.serving_chat import OpenAIServingChat
from pagoda.entrypoints.openai.serving_completion import OpenAIServingCompletion
from pagoda.entrypoints.openai.serving_engine import (
    ServerLimits,
    ServingError,
    error_body,
    error_response,
    serving_error_response,
)
from pagoda.entrypoints.openai.serving_tokenize import OpenAIServingTokenization

logger = logging.getLogger("pagoda.server")

API_KEY_ENV = "PAGODA_API_KEY"
UNAUTHENTICATED_PATHS = frozenset({"/health"})


# ------------------------------------------------------------------------ middleware
async def _send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


class ApiKeyMiddleware:
    """Bearer-token check on every route but /health (constant-time comparison)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNAUTHENTICATED_PATHS:
            return await self.app(scope, receive, send)
        given = b""
        for k, v in scope.get("headers", ()):
            if k == b"authorization":
                given = v
                break
        if not secrets.compare_digest(given, self.expected):
            msg = "Missing API key." if not given else "Incorrect API key provided."
            return await _send_json(send, 401, error_body(401, msg, "invalid_request_error", None, "invalid_api_key"),
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
        await _send_json(send, 400, error_body(
            400, f"The request body is larger than the server's limit of {self.limit} bytes "
                 f"(--max-request-body-bytes).", "invalid_request_error", None, "request_too_large"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    if int(v) > self.limit:
                        return await self._too_large(receive, send, 0, True)
                except ValueError:
                    pass
                break
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


# ------------------------------------------------------------------- disconnects
async def with_disconnect_abort(request: Request, work: Awaitable[Response]) -> Response:
    """Run a non-streaming handler; if the client disconnects first, cancel it (which aborts its
    requests in the engine and frees their KV blocks)."""
    task = asyncio.ensure_future(work)

    async def wait_disconnect() -> None:
        while True:
            msg = await request.receive()
            if msg["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    logger.info("client disconnected; request aborted")
    return Response(status_code=499)


# --------------------------------------------------------------------------- app
class ServerState:
    def __init__(self, args: argparse.Namespace, engine_args: EngineArgs) -> None:
        self.args = args
        self.engine_args = engine_args
        self.engine: AsyncLLM | None = None
        self.metrics: PrometheusStatLogger | None = None
        self.stats_log: LoggingStatLogger | None = None
        self.completion: OpenAIServingCompletion | None = None
        self.chat: OpenAIServingChat | None = None
        self.tokenization: OpenAIServingTokenization | None = None
        self.served_model_names: list[str] = []
        self.load_error: str | None = None
        self.on_load_failure: Callable[[], None] | None = None
        self.on_engine_death: Callable[[], None] | None = None  # set by run_server: exit after a delay


def engine_args_from(args: argparse.Namespace) -> EngineArgs:
    from pagoda.entrypoints.cli import engine_kwargs

    return EngineArgs(**engine_kwargs(args))


def build_app(args: argparse.Namespace) -> FastAPI:
    prometheus_client.disable_created_metrics()
    engine_args = engine_args_from(args)
    state = ServerState(args, engine_args)
    limits = ServerLimits(
        max_prompts_per_request=args.max_prompts_per_request,
        max_request_body_bytes=args.max_request_body_bytes,
        trust_request_chat_template=args.trust_request_chat_template,
        enable_prompt_tokens_details=getattr(args, "enable_prompt_tokens_details", False),
    )

    async def load() -> None:
        try:
            engine = AsyncLLM(engine_args, stuck_timeout_s=args.engine_stuck_timeout)
            state.engine = engine
            await engine.start()
            cfg = engine.cfg
            assert cfg is not None
            names = list(cfg.served_model_name)
            state.served_model_names = names
            state.metrics = PrometheusStatLogger(names[0], cfg.max_model_len)
            engine.stat_loggers.append(state.metrics)
            if not getattr(args, "disable_log_stats", False):
                state.stats_log = LoggingStatLogger(kv_offload=bool(cfg.kv_offloading_size))
                engine.stat_loggers.append(state.stats_log)
            common = dict(log_requests=not args.disable_log_requests, max_log_len=args.max_log_len)
            state.chat = OpenAIServingChat(engine, names, limits, **common)
            state.completion = OpenAIServingCompletion(engine, names, limits, **common)
            state.tokenization = OpenAIServingTokenization(engine, names, limits, chat=state.chat, **common)
            logger.info("serving %s on http://%s:%d", ", ".join(names), args.host, args.port)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            expected = isinstance(e, (ValueError, RuntimeError, OSError))  # a clear message is enough
            logger.error("failed to load the model: %s", e, exc_info=not expected)
            state.load_error = str(e)
            if state.on_load_failure is not None:
                state.on_load_failure()

    async def watch_engine() -> None:
        """The engine core died: after --engine-death-exit-delay s of 503s, exit (status 1)."""
        delay = getattr(args, "engine_death_exit_delay", -1.0)
        while not (state.engine is not None and state.engine.state == "dead"):
            await asyncio.sleep(0.2)
        if delay is None or delay < 0 or state.on_engine_death is None:
            return
        logger.error("engine core is dead; the server exits in %g s", delay)
        await asyncio.sleep(delay)
        state.on_engine_death()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(load())
        watcher = asyncio.create_task(watch_engine())
        try:
            yield
        finally:
            for t in (loader, watcher):
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
            if state.engine is not None:
                await state.engine.shutdown()

    app = FastAPI(title="pagoda OpenAI-compatible server", version=pagoda.__version__, lifespan=lifespan)
    app.state.pagoda = state

    # Middleware runs outermost-last-added: the key check comes before reading any body.
    app.add_middleware(BodyLimitMiddleware, limit=args.max_request_body_bytes)
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=api_key)

    # ------------------------------------------------------------ error shapes
    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        parts = []
        param = None
        if errs and errs[0].get("type") == "json_invalid":
            detail = (errs[0].get("ctx") or {}).get("error", "")
            return error_response(400, f"The request body is not valid JSON: {detail}".rstrip(": "),
                                  "invalid_request_error")
        for e in errs[:5]:
            loc = [str(x) for x in e.get("loc", ()) if x != "body"]
            if param is None and loc:
                param = loc[0]
            where = ".".join(loc)
            parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
        msg = "; ".join(parts) or "Invalid request."
        if len(errs) > 5:
            msg += f" (and {len(errs) - 5} more errors)"
        return error_response(400, msg, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        msg = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        return error_response(exc.status_code, msg, None, None, None)

    @app.exception_handler(Exception)
    async def on_error(request: Request, exc: Exception) -> JSONResponse:
        return serving_error_response(exc)

    def ready() -> ServerState:
        if state.load_error is not None:
            raise ServingError(503, f"The model failed to load: {state.load_error}", "service_unavailable",
                               None, "load_failed")
        if state.engine is None or state.completion is None:
            raise ServingError(503, "The model is still loading; retry shortly.", "service_unavailable", None,
                               "model_loading")
        state.engine.check_servable()
        return state

    async def guarded(fn: Callable[[], Awaitable[Any]]) -> Response:
        try:
            res = await fn()
        except Exception as e:
            return serving_error_response(e)
        return res

    # ----------------------------------------------------------------- routes
    @app.get("/health")
    async def health() -> Response:
        if state.load_error is not None:
            return error_response(503, f"The model failed to load: {state.load_error}", "service_unavailable")
        if state.engine is None:
            return error_response(503, "The model is loading.", "service_unavailable", None, "model_loading")
        ok, reason = state.engine.health()
        if not ok:
            return error_response(503, reason, "service_unavailable")
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> JSONResponse:
        return JSONResponse(VersionResponse(version=pagoda.__version__).model_dump())

    @app.get("/metrics")
    async def metrics() -> Response:
        if state.metrics is None:
            return Response(content=b"", media_type="text/plain; version=0.0.4; charset=utf-8")
        body, ctype = state.metrics.render()
        return Response(content=body, media_type=ctype)

    @app.post("/reset_prefix_cache")
    async def reset_prefix_cache() -> Response:
        """vLLM's route: forget the prefix cache (e.g. between benchmark runs). 200 with
        ``{"success": false}`` when running requests still hold cached blocks."""
        async def run() -> Response:
            s = ready()
            assert s.engine is not None
            logger.info("Resetting prefix cache...")
            ok = await s.engine.reset_prefix_cache()
            if ok and s.stats_log is not None:
                s.stats_log.on_prefix_cache_reset()
            return JSONResponse({"success": ok})
        return await guarded(run)

    def model_cards() -> ModelList:
        s = ready()
        assert s.engine is not None and s.engine.cfg is not None
        root = str(s.engine.cfg.model_path)
        return ModelList(data=[ModelCard(id=n, root=root, max_model_len=s.engine.max_model_len)
                               for n in s.served_model_names])

    @app.get("/v1/models")
    async def list_models() -> Response:
        async def run() -> Response:
            return JSONResponse(model_cards().model_dump())
        return await guarded(run)

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        async def run() -> Response:
            for card in model_cards().data:
                if card.id == model_id:
                    return JSONResponse(card.model_dump())
            raise ServingError(404, f"The model `{model_id}` does not exist.", param="model", code="model_not_found")
        return await guarded(run)

    @app.post("/v1/completions")
    async def create_completion(body: CompletionRequest, raw: Request) -> Response:
        async def run() -> Response:
            s = ready()
            assert s.completion is not None
            return await s.completion.create_completion(body)
        return await with_disconnect_abort(raw, guarded(run)) if not body.stream else await guarded(run)

    @app.post("/v1/chat/completions")
    async def create_chat_completion(body: ChatCompletionRequest, raw: Request) -> Response:
        async def run() -> Response:
            s = ready()
            assert s.chat is not None
            return await s.chat.create_chat_completion(body)
        return await with_disconnect_abort(raw, guarded(run)) if not body.stream else await guarded(run)

    @app.post("/tokenize")
    async def tokenize(raw: Request) -> Response:
        async def run() -> Response:
            s = ready()
            assert s.tokenization is not None
            try:
                body = await raw.json()
            except ValueError as e:
                raise ServingError(400, f"The request body is not valid JSON: {e}") from None
            return JSONResponse(s.tokenization.tokenize(body).model_dump())
        return await guarded(run)

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest) -> Response:
        async def run() -> Response:
            s = ready()
            assert s.tokenization is not None
            return JSONResponse(s.tokenization.detokenize(body).model_dump())
        return await guarded(run)

    return app


def run_server(args: argparse.Namespace) -> None:
    import signal

    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises a caught signal once it has shut down, so the process would die
            # of SIGTERM even after draining every request; a drained SIGTERM is a clean exit (0).
            if sig == signal.SIGTERM and sig in self._captured_signals:
                self._captured_signals.remove(sig)

    app = build_app(args)
    state: ServerState = app.state.pagoda
    grace = getattr(args, "shutdown_grace_period", None)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.uvicorn_log_level,
        access_log=not args.disable_uvicorn_access_log,
        timeout_keep_alive=5,
        # in-flight requests (streams included) finish within this, then are cut off
        timeout_graceful_shutdown=grace if grace is not None and grace >= 0 else None,
    )
    server = Server(config)
    engine_died = False

    def fail() -> None:
        server.should_exit = True

    def on_engine_death() -> None:
        nonlocal engine_died
        engine_died = True
        server.should_exit = True

    state.on_load_failure = fail
    state.on_engine_death = on_engine_death
    server.run()
    if state.load_error is not None:
        sys.exit(f"error: the model failed to load: {state.load_error}")
    if engine_died:
        sys.exit(f"error: the engine core died ({state.engine.dead_reason if state.engine else '?'}); exiting")


def main(argv: list[str] | None = None) -> None:
    from pagoda.entrypoints.openai.cli_args import add_serve_args, run_serve

    parser = argparse.ArgumentParser(prog="pagoda-serve", description="pagoda OpenAI-compatible server")
    parser.add_argument("--log-level", default="INFO", help="logging level")
    add_serve_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(levelname)s %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run_serve(args)


if __name__ == "__main__":
    main()
