"""POST /v1/embeddings, /pooling, /classify, /score, /v1/score, /rerank, /v1/rerank, /v2/rerank."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pagoda.entrypoints.openai.protocol_pooling import (
    ClassificationRequest,
    EmbeddingRequest,
    PoolingRequest,
    RerankRequest,
    ScoreRequest,
)
from pagoda.entrypoints.openai.routes.common import generate
from pagoda.entrypoints.openai.server_state import ServerState
from pagoda.entrypoints.openai.serving_pooling import OpenAIServingPooling

router = APIRouter()


def _serving(s: ServerState) -> OpenAIServingPooling:
    assert s.pooling is not None
    return s.pooling


@router.post("/v1/embeddings")
async def create_embedding(body: EmbeddingRequest, raw: Request) -> Response:
    return await generate(raw, False, lambda s: _serving(s).create_embedding(body))


@router.post("/pooling")
async def create_pooling(body: PoolingRequest, raw: Request) -> Response:
    return await generate(raw, False, lambda s: _serving(s).create_pooling(body))


@router.post("/classify")
async def create_classify(body: ClassificationRequest, raw: Request) -> Response:
    return await generate(raw, False, lambda s: _serving(s).create_classify(body))


@router.post("/score")
@router.post("/v1/score")
async def create_score(body: ScoreRequest, raw: Request) -> Response:
    return await generate(raw, False, lambda s: _serving(s).create_score(body))


@router.post("/rerank")
@router.post("/v1/rerank")
@router.post("/v2/rerank")
async def create_rerank(body: RerankRequest, raw: Request) -> Response:
    return await generate(raw, False, lambda s: _serving(s).create_rerank(body))
