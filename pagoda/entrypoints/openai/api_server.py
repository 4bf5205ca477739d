"""The OpenAI-compatible HTTP server (FastAPI on uvicorn): assembles the app and runs it.

``build_app(args)`` returns the app: the routes of :mod:`pagoda.entrypoints.openai.routes`, the
middleware of :mod:`.middleware`, the error handlers of :mod:`.error_handlers`, and a lifespan that
loads the model in the background (:mod:`.server_state`), so ``/health`` answers 503 until the engine
core is ready (and again if it dies or stalls). ``run_server(args, sock)`` serves it on a socket bound
before anything loads, and exits non-zero if the model fails to load.

Routes: GET / (the chat page, :mod:`.routes.chat_page`), /health, /ping, /version, /metrics, /server_info,
/v1/models[/{id}], /tokenizer_info (``--enable-tokenizer-info-endpoint``), /load
(``--enable-server-load-tracking``); POST /ping, /invocations, /v1/completions, /v1/chat/completions,
/v1/responses, /tokenize, /detokenize, /reset_prefix_cache. Every route but /, /health and /ping requires the
API key when one is set (``--api-key`` or ``PAGODA_API_KEY``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from typing import Any

import prometheus_client
from fastapi import FastAPI

import pagoda
from pagoda.engine.gc_policy import freeze_startup_heap
from pagoda.entrypoints import startup_sigint
from pagoda.entrypoints.openai.api_servers import ApiServerProcesses
from pagoda.entrypoints.openai.error_handlers import add_exception_handlers
from pagoda.entrypoints.openai.middleware import add_middlewares
from pagoda.entrypoints.openai.routes import routers
from pagoda.entrypoints.openai.server_state import ServerState, engine_args_from, load_engine, watch_engine

logger = logging.getLogger("pagoda.server")

__all__ = ["build_app", "engine_args_from", "run_server", "main"]


def build_app(args: argparse.Namespace, api_servers: ApiServerProcesses | None = None) -> FastAPI:
    """``api_servers``: API servers 1.. that this one (API server 0) starts and stops (``--api-server-count``)."""
    prometheus_client.disable_created_metrics()
    state = ServerState(args)
    state.api_servers = api_servers

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from pagoda.structured_output.validate import start_workers

        start_workers()  # the structured-output check's threads exist from the start, whatever requests come
        tasks = []
        if getattr(args, "attach", None) is not None:  # API server 1..: accept connections only once ready
            await load_engine(state)
        else:
            tasks.append(asyncio.create_task(load_engine(state)))
        tasks.append(asyncio.create_task(watch_engine(state)))
        if api_servers is not None:
            tasks.append(asyncio.create_task(api_servers.watch(lambda why: state.on_api_server_death(why))))
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
            if state.responses is not None:  # background responses end as cancelled, not cut off mid-step
                await state.responses.stop_background()
            if api_servers is not None:  # they drain their own requests before the core stops
                await api_servers.stop(getattr(args, "shutdown_grace_period", None) or 0.0)
            if state.engine is not None:
                await state.engine.shutdown()

    docs: dict[str, Any] = {}
    if getattr(args, "disable_fastapi_docs", False):
        docs = {"openapi_url": None, "docs_url": None, "redoc_url": None}
    app = FastAPI(title="pagoda OpenAI-compatible server", version=pagoda.__version__, lifespan=lifespan, **docs)
    # vLLM's rule: the app (not uvicorn) holds the prefix, so a request comes with it or without it (a proxy that
    # strips it, or none); uvicorn's root_path would prepend it again to a request that already has it
    app.root_path = getattr(args, "root_path", None) or ""
    app.state.pagoda = state
    add_middlewares(app, args)
    add_exception_handlers(app)
    for router in routers(args):
        app.include_router(router)
    return app


def _uvicorn_config(app: FastAPI, args: argparse.Namespace) -> Any:
    import uvicorn

    grace = getattr(args, "shutdown_grace_period", None)
    return uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.uvicorn_log_level,
        access_log=not args.disable_uvicorn_access_log,
        timeout_keep_alive=5,
        # in-flight requests (streams included) finish within this, then are cut off
        timeout_graceful_shutdown=grace if grace is not None and grace >= 0 else None,
        ssl_keyfile=getattr(args, "ssl_keyfile", None),
        ssl_certfile=getattr(args, "ssl_certfile", None),
        ssl_ca_certs=getattr(args, "ssl_ca_certs", None),
        ssl_cert_reqs=getattr(args, "ssl_cert_reqs", 0),
    )


def run_server(args: argparse.Namespace, sock: socket.socket | None = None) -> None:
    """Serve until SIGTERM / Ctrl-C (exit 0), a failed load or a dead engine core (exit 1).

    The process ends with ``os._exit`` once the server and the engine core have stopped and the logs are
    flushed: the interpreter's own teardown of torch's and transformers' module graph takes a second or
    more of CPU (several on a loaded machine) and has nothing left to do.
    """
    import uvicorn

    api_servers = ApiServerProcesses.for_server(args, sock)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            if api_servers is not None:
                api_servers.signal_stop()
            super().handle_exit(sig, frame)
            # uvicorn re-raises a caught signal once it has shut down, so the process would die
            # of SIGTERM even after draining every request; a drained SIGTERM is a clean exit (0).
            if sig == signal.SIGTERM and sig in self._captured_signals:
                self._captured_signals.remove(sig)

    app = build_app(args, api_servers)
    state: ServerState = app.state.pagoda
    server = Server(_uvicorn_config(app, args))
    engine_died = False
    api_server_died: str | None = None

    def fail() -> None:
        server.should_exit = True

    def on_engine_death() -> None:
        nonlocal engine_died
        engine_died = True
        server.should_exit = True

    def on_api_server_death(reason: str) -> None:
        nonlocal api_server_died
        logger.error("%s; the server exits", reason)
        api_server_died = reason
        server.should_exit = True

    state.on_load_failure = fail
    state.on_engine_death = on_engine_death
    state.on_api_server_death = on_api_server_death
    state.on_ready = lambda: _on_ready(args)
    try:
        startup_sigint.hand_over()  # a Ctrl-C so far, even one a library lost, ends start-up here (status 130)
    except KeyboardInterrupt:
        if api_servers is not None:
            api_servers.clean_up()
        raise
    try:
        server.run(sockets=[sock] if sock is not None else None)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C (SIGINT) after its graceful shutdown: exit as on SIGTERM
        logger.info("interrupted: the server has shut down")
    message = None
    if state.load_error is not None:
        message = f"error: the model failed to load: {state.load_error}"
    elif engine_died:
        message = f"error: the engine core died ({state.engine.dead_reason if state.engine else '?'}); exiting"
    elif api_server_died is not None:
        message = f"error: {api_server_died}; exiting"
    if api_servers is not None:
        api_servers.clean_up()
    _exit_now(message)


def _on_ready(args: argparse.Namespace) -> None:
    freeze_startup_heap("API server")
    ready_conn = getattr(args, "ready_conn", None)  # API server 1..: tells API server 0 it serves
    if ready_conn is not None:
        ready_conn.send(True)
        ready_conn.close()


def _exit_now(message: str | None) -> None:
    if message:
        print(message, file=sys.stderr)
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(1 if message else 0)


def main(argv: list[str] | None = None) -> None:
    from pagoda.arg_utils import HelpFormatter
    from pagoda.entrypoints.openai.cli_args import add_serve_args, run_serve

    parser = argparse.ArgumentParser(prog="pagoda-serve", description="pagoda OpenAI-compatible server",
                                     formatter_class=HelpFormatter)
    parser.add_argument("--log-level", default="INFO", help="logging level")
    add_serve_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(levelname)s %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    run_serve(args)


if __name__ == "__main__":
    main()
