"""POST /v1/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pagoda.entrypoints.openai.protocol import CompletionRequest
from pagoda.entrypoints.openai.routes.common import generate, take_header_request_id
from pagoda.entrypoints.openai.server_state import ServerState

router = APIRouter()


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, raw: Request) -> Response:
    take_header_request_id(raw, body)

    async def handler(s: ServerState) -> Response:
        assert s.completion is not None
        return await s.completion.create_completion(body)
    return await generate(raw, body.stream, handler)
