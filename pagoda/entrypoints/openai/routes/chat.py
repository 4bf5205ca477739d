"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pagoda.entrypoints.openai.protocol import ChatCompletionRequest
from pagoda.entrypoints.openai.routes.common import guarded, ready, with_disconnect_abort

router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, raw: Request) -> Response:
    async def run() -> Response:
        s = ready(raw)
        assert s.chat is not None
        return await s.chat.create_chat_completion(body)
    return await with_disconnect_abort(raw, guarded(run)) if not body.stream else await guarded(run)
