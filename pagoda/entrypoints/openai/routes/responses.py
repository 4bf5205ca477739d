"""POST /v1/responses (OpenAI's Responses API: text in, text out; see :mod:`..serving_responses`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pagoda.entrypoints.openai.protocol_responses import ResponsesRequest
from pagoda.entrypoints.openai.routes.common import guarded, ready, with_disconnect_abort

router = APIRouter()


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, raw: Request) -> Response:
    async def run() -> Response:
        s = ready(raw)
        assert s.responses is not None
        return await s.responses.create_response(body)
    return await with_disconnect_abort(raw, guarded(run)) if not body.stream else await guarded(run)
