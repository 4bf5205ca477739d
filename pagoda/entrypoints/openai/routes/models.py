"""GET /v1/models and /v1/models/{model_id}."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from pagoda.entrypoints.openai.protocol import ModelCard, ModelList
from pagoda.entrypoints.openai.routes.common import guarded, ready
from pagoda.entrypoints.openai.serving_engine import ServingError
from pagoda.models.model_files import DEFAULT_MODEL_ALIASES

router = APIRouter()


def model_cards(request: Request) -> ModelList:
    """One card per served name; ``root`` is the model as ``--model`` named it (a hub id stays a hub id, as vLLM's,
    so a client can load its tokenizer from it), the folder only for the embedded default model."""
    s = ready(request)
    assert s.engine is not None and s.engine.cfg is not None
    cfg = s.engine.cfg
    root = str(cfg.model_path) if cfg.model is None or cfg.model in DEFAULT_MODEL_ALIASES else cfg.model
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
