"""SageMaker's routes: GET/POST /ping (the health check) and POST /invocations (vLLM's dispatch).

``/invocations`` picks the endpoint by the body's shape, as vLLM does: ``messages`` is a chat
completion, ``prompt`` a completion; the request then goes through that route unchanged (same
validation, same errors, streaming included); a pooling-shaped one goes to the pooling route it asks
for: ``input`` embeddings, ``text_1``/``text_2`` (or vLLM's other spellings of a score's sides: ``queries``,
``items``, ``data_1``/``data_2``) score, ``query``/``documents`` rerank (each answers for itself when the model
does not serve that task).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from pagoda.entrypoints.openai.protocol import ChatCompletionRequest, CompletionRequest
from pagoda.entrypoints.openai.protocol_pooling import (
    SCORE_FIELD_PAIRS,
    EmbeddingRequest,
    RerankRequest,
    ScoreRequest,
)
from pagoda.entrypoints.openai.routes import admin, chat, completions, pooling
from pagoda.entrypoints.openai.serving_engine import error_response

router = APIRouter()

# Body keys of vLLM's pooling requests, the request each asks for, and its route, in the order they are tried: a
# score request's every spelling of its sides (SCORE_FIELD_PAIRS: ``queries`` with ``documents`` is a score) before
# rerank's ``query`` / ``documents``.
_POOLING_KEYS: tuple[tuple[str, type[BaseModel], Any], ...] = (
    ("input", EmbeddingRequest, pooling.create_embedding),
    *((key, ScoreRequest, pooling.create_score) for pair in SCORE_FIELD_PAIRS for key in pair if key != "documents"),
    ("query", RerankRequest, pooling.create_rerank), ("documents", RerankRequest, pooling.create_rerank))


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
    for key, model, route in _POOLING_KEYS:
        if isinstance(body, dict) and key in body:
            return await route(_validated(model, body), raw)
    expected = ("Expected one of: ChatCompletionRequest (`messages`), CompletionRequest (`prompt`), EmbeddingRequest "
                "(`input`), ScoreRequest (`text_1`/`text_2`), RerankRequest (`query`/`documents`).")
    return error_response(400, f"Cannot find suitable handler for request. {expected}", "invalid_request_error")
