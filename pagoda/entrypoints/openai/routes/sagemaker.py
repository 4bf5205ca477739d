"""SageMaker's routes: GET/POST /ping (the health check) and POST /invocations (vLLM's dispatch).

``/invocations`` picks the endpoint by the body's shape, as vLLM does: ``messages`` is a chat
completion, ``prompt`` a completion; the request then goes through that route unchanged (same
validation, same errors, streaming included). A pooling-shaped body (``input``: embeddings;
``text_1``/``text_2``: score; ``query``/``documents``: rerank) is a 400 naming it: pagoda has no
pooling models yet.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from pagoda.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
from pagoda.entrypoints.openai.routes import admin, chat, completions
from pagoda.entrypoints.openai.serving_engine import error_response

router = APIRouter()

# Body keys of vLLM's pooling requests, and what they ask for.
_POOLING_KEYS = (("input", "embeddings (`input`)"), ("text_1", "score (`text_1`/`text_2`)"),
                 ("query", "rerank (`query`/`documents`)"), ("documents", "rerank (`query`/`documents`)"))


@router.get("/ping", response_class=Response)
@router.post("/ping", response_class=Response)
async def ping(request: Request) -> Response:
    """SageMaker's health check: the same answer as GET /health."""
    return await admin.health(request)


def _validated(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise RequestValidationError(e.errors()) from None


@router.post("/invocations")
async def invocations(raw: Request) -> Response:
    try:
        body = await raw.json()
    except ValueError as e:
        return error_response(400, f"The request body is not valid JSON: {e}", "invalid_request_error")
    if isinstance(body, dict) and "messages" in body:
        return await chat.create_chat_completion(_validated(ChatCompletionRequest, body), raw)
    if isinstance(body, dict) and "prompt" in body:
        return await completions.create_completion(_validated(CompletionRequest, body), raw)
    expected = "Expected one of: ChatCompletionRequest (`messages`), CompletionRequest (`prompt`)."
    for key, what in _POOLING_KEYS:
        if isinstance(body, dict) and key in body:
            return error_response(400, f"/invocations: {what} requests are not supported by this server (it "
                                       f"serves no pooling model). {expected}", "invalid_request_error", key)
    return error_response(400, f"Cannot find suitable handler for request. {expected}", "invalid_request_error")
