"""POST /v1/responses (OpenAI's Responses API: text, function tools, reasoning and logprobs; see
:mod:`..serving_responses`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pagoda.entrypoints.openai.protocol_responses import ResponsesRequest
from pagoda.entrypoints.openai.routes.common import generate
from pagoda.entrypoints.openai.server_state import ServerState

router = APIRouter()


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, raw: Request) -> Response:
    async def handler(s: ServerState) -> Response:
        assert s.responses is not None
        return await s.responses.create_response(body)
    return await generate(raw, body.stream, handler)
