"""GET /v1/models and /v1/models/{model_id}."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pagoda.entrypoints.openai.protocol import ModelCard, ModelList
from pagoda.entrypoints.openai.routes.common import guarded, ready
from pagoda.entrypoints.openai.serving_engine import ServingError

router = APIRouter()


def model_cards(request: Request) -> ModelList:
    s = ready(request)
    assert s.engine is not None and s.engine.cfg is not None
    root = str(s.engine.cfg.model_path)
    return ModelList(data=[ModelCard(id=n, root=root, max_model_len=s.engine.max_model_len)
                           for n in s.served_model_names])


@router.get("/v1/models")
async def list_models(request: Request) -> Response:
    async def run() -> Response:
        return JSONResponse(model_cards(request).model_dump())
    return await guarded(run)


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> Response:
    async def run() -> Response:
        for card in model_cards(request).data:
            if card.id == model_id:
                return JSONResponse(card.model_dump())
        raise ServingError(404, f"The model `{model_id}` does not exist.", param="model", code="model_not_found")
    return await guarded(run)
