"""GET /v1/models and /v1/models/{model_id}."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pagoda.entrypoints.openai.protocol import ModelList
from pagoda.entrypoints.openai.routes.common import guarded, ready
from pagoda.entrypoints.openai.serving_engine import ServingError

router = APIRouter()


def model_cards(request: Request) -> ModelList:
    """The base model's names, then the LoRA adapters (:meth:`ServingModels.cards`)."""
    s = ready(request)
    assert s.models is not None
    return s.models.cards()


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
