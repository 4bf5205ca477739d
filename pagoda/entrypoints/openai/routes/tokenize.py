"""POST /tokenize and /detokenize (vLLM's routes)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pagoda.entrypoints.openai.protocol import DetokenizeRequest
from pagoda.entrypoints.openai.routes.common import guarded, ready
from pagoda.entrypoints.openai.serving_engine import ServingError

router = APIRouter()


@router.post("/tokenize")
async def tokenize(raw: Request) -> Response:
    async def run() -> Response:
        s = ready(raw)
        assert s.tokenization is not None
        try:
            body = await raw.json()
        except ValueError as e:
            raise ServingError(400, f"The request body is not valid JSON: {e}") from None
        return JSONResponse(s.tokenization.tokenize(body).model_dump())
    return await guarded(run)


@router.post("/detokenize")
async def detokenize(body: DetokenizeRequest, raw: Request) -> Response:
    async def run() -> Response:
        s = ready(raw)
        assert s.tokenization is not None
        return JSONResponse(s.tokenization.detokenize(body).model_dump())
    return await guarded(run)
