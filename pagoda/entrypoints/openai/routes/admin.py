"""GET /health, /version, /metrics; POST /reset_prefix_cache."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

import pagoda
from pagoda.entrypoints.openai.protocol import VersionResponse
from pagoda.entrypoints.openai.routes.common import guarded, ready, server_state
from pagoda.entrypoints.openai.serving_engine import ServingError, error_response

logger = logging.getLogger("pagoda.server")
router = APIRouter()


@router.get("/health")
async def health(request: Request) -> Response:
    """200 when the server can serve; 503 while loading, or when the engine core is dead or stuck."""
    state = server_state(request)
    if state.load_error is not None:
        return error_response(503, f"The model failed to load: {state.load_error}", "service_unavailable")
    if state.engine is None:
        return error_response(503, "The model is loading.", "service_unavailable", None, "model_loading")
    ok, reason = state.engine.health()
    if not ok:
        return error_response(503, reason, "service_unavailable")
    if state.api_servers is not None and not state.api_servers.all_ready():
        return error_response(503, "The other API server processes are starting.", "service_unavailable", None,
                              "model_loading")
    return Response(status_code=200)


@router.get("/version")
async def version() -> JSONResponse:
    return JSONResponse(VersionResponse(version=pagoda.__version__).model_dump())


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    state = server_state(request)
    if state.metrics is None:
        return Response(content=b"", media_type="text/plain; version=0.0.4; charset=utf-8")
    body, ctype = state.metrics.render()
    return Response(content=body, media_type=ctype)


@router.post("/reset_prefix_cache")
async def reset_prefix_cache(request: Request, reset_running_requests: bool = Query(False),
                             reset_external: bool = Query(False)) -> Response:
    """vLLM's route: forget the prefix cache (e.g. between benchmark runs). 200 with
    ``{"success": false}`` when running requests still hold cached blocks. vLLM's query options are read:
    ``reset_running_requests=true`` (preempt the running requests first) and ``reset_external=true`` (a KV
    connector's cache) are a 400 naming the option, since pagoda does neither; false is the default."""
    async def run() -> Response:
        for name, value, why in (
                ("reset_running_requests", reset_running_requests,
                 "pagoda does not preempt running requests to reset the cache; their blocks stay cached and the "
                 "answer is {\"success\": false} while they run"),
                ("reset_external", reset_external, "pagoda has no KV connector, so no external prefix cache")):
            if value:
                raise ServingError(400, f"{name}=true is not supported: {why}. Omit it or send false.",
                                   param=name)
        s = ready(request)
        assert s.engine is not None
        logger.info("Resetting prefix cache...")
        ok = await s.engine.reset_prefix_cache()
        if ok and s.stats_log is not None:
            s.stats_log.on_prefix_cache_reset()
        return JSONResponse({"success": ok})
    return await guarded(run)
