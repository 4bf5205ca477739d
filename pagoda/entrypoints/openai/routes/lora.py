"""POST /v1/load_lora_adapter and /v1/unload_lora_adapter (vLLM's runtime LoRA routes).

They exist only when ``PAGODA_ALLOW_RUNTIME_LORA_UPDATING`` (or vLLM's ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``) is on,
as vLLM's (without it: a 404). Success is vLLM's plain-text ``Success: LoRA adapter 'NAME' added successfully.``;
errors are vLLM's bodies and statuses (:class:`pagoda.entrypoints.openai.serving_models.ServingModels`).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response

from pagoda import envs
from pagoda.entrypoints.openai.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest
from pagoda.entrypoints.openai.routes.common import guarded, ready

logger = logging.getLogger("pagoda.server")
router = APIRouter()


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(body: LoadLoRAAdapterRequest, raw: Request) -> Response:
    async def run() -> Response:
        s = ready(raw)
        assert s.models is not None
        text = await s.models.load(body.lora_name, body.lora_path, load_inplace=body.load_inplace)
        return Response(status_code=200, content=text)
    return await guarded(run)


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadLoRAAdapterRequest, raw: Request) -> Response:
    async def run() -> Response:
        s = ready(raw)
        assert s.models is not None
        return Response(status_code=200, content=await s.models.unload(body.lora_name, body.lora_int_id))
    return await guarded(run)


def optional_routers() -> list[APIRouter]:
    """The runtime LoRA routes when the variable allows them (vLLM's warning logged), else none."""
    if not envs.allow_runtime_lora_updating():
        return []
    logger.warning("LoRA dynamic loading & unloading is enabled in the API server (/v1/load_lora_adapter, "
                   "/v1/unload_lora_adapter). This should ONLY be used for local development!")
    return [router]
