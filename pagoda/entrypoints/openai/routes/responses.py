"""POST /v1/responses (OpenAI's Responses API: text, function tools, reasoning and logprobs; see
:mod:`..serving_responses`), and the stored responses' routes: GET and DELETE /v1/responses/{id}, POST
/v1/responses/{id}/cancel, GET /v1/responses/{id}/input_items (404 while the store is off:
:mod:`..responses_store`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pagoda.entrypoints.openai.protocol_responses import ResponsesRequest
from pagoda.entrypoints.openai.routes.common import generate, guarded, ready
from pagoda.entrypoints.openai.server_state import ServerState
from pagoda.entrypoints.openai.serving_engine import ServingError
from pagoda.entrypoints.openai.serving_responses import OpenAIServingResponses

router = APIRouter()


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, raw: Request) -> Response:
    async def handler(s: ServerState) -> Response:
        assert s.responses is not None
        return await s.responses.create_response(body)
    return await generate(raw, body.stream, handler)


@router.get("/v1/responses/{response_id}")
async def retrieve_response(response_id: str, raw: Request) -> Response:
    async def handler() -> Response:
        # OpenAI's query parameters ask for a replayed stream or extra fields: not served, so refused by name
        asked = sorted(k for k, v in raw.query_params.items() if not (k == "stream" and v.lower() == "false"))
        if asked:
            raise ServingError(400, f"{', '.join(asked)}: not supported by pagoda's GET /v1/responses/{{id}} (it "
                               f"returns the stored response as it stands).", param=asked[0])
        return await _serving(raw).retrieve(response_id)
    return await guarded(handler)


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(response_id: str, raw: Request) -> Response:
    async def handler() -> Response:
        q = dict(raw.query_params)
        unknown = sorted(set(q) - {"after", "limit", "order"})
        if unknown:  # include (image URLs, ...) and the like: not served, refused by name
            raise ServingError(400, f"{', '.join(unknown)}: not supported by pagoda's input_items list (it takes "
                               f"after, limit, order).", param=unknown[0])
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ServingError(400, f"order must be 'asc' or 'desc', got {order!r}.", param="order")
        try:
            limit = int(q.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            raise ServingError(400, f"limit must be an integer from 1 to 100, got {q.get('limit')!r}.",
                               param="limit")
        return await _serving(raw).input_items(response_id, q.get("after"), limit, order)
    return await guarded(handler)


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(response_id: str, raw: Request) -> Response:
    return await guarded(lambda: _serving(raw).cancel(response_id))


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, raw: Request) -> Response:
    return await guarded(lambda: _serving(raw).delete(response_id))


def _serving(raw: Request) -> OpenAIServingResponses:
    """The Responses serving object of a ready server (a 503 before)."""
    responses = ready(raw).responses
    assert responses is not None
    return responses
