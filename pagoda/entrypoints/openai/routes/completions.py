"""POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pagoda.entrypoints.openai.protocol import CompletionRequest
from pagoda.entrypoints.openai.routes.common import guarded, ready, with_disconnect_abort

router = APIRouter()


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, raw: Request) -> Response:
    async def run() -> Response:
        s = ready(raw)
        assert s.completion is not None
        return await s.completion.create_completion(body)
    return await with_disconnect_abort(raw, guarded(run)) if not body.stream else await guarded(run)
