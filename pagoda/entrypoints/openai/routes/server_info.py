"""GET /server_info, and the routes a flag turns on: /tokenizer_info, /load (vLLM's routes).

``/tokenizer_info`` (``--enable-tokenizer-info-endpoint``) and ``/load``
(``--enable-server-load-tracking``) live on their own routers, which :func:`optional_routers` adds
only when the flag is given, so without it they are a 404 (vLLM answers ``/load`` with an
untracked 0; pagoda does not answer a number it does not count).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

import pagoda
from pagoda import envs
from pagoda.entrypoints.openai.routes.common import guarded, ready, server_state

router = APIRouter()
tokenizer_info_router = APIRouter()
load_router = APIRouter()

# Tokenizer init kwargs that are local file paths: what they point at is the tokenizer itself.
_TOKENIZER_FILE_KWARGS = {"vocab_file", "merges_file", "tokenizer_file", "name_or_path", "special_tokens_map_file"}


def _jsonable(value: Any) -> Any:
    """``value`` with whatever JSON cannot hold (dtypes, devices, paths, token objects) as strings."""
    return json.loads(json.dumps(value, default=str))


@router.get("/server_info")
async def server_info(request: Request, config_format: Literal["text", "json"] = Query("text")) -> Response:
    """vLLM's shape: ``vllm_config`` is the engine config (its text form, or with ``?config_format=json``
    an object), ``vllm_env`` the ``PAGODA_*`` variables set (none whose name holds KEY); plus
    ``pagoda_version``. (vLLM also sends ``system_env``, its collect-env report: not sent.)"""
    async def run() -> Response:
        s = ready(request)
        assert s.engine is not None and s.engine.cfg is not None
        cfg = s.engine.cfg
        config: Any = str(cfg) if config_format == "text" else _jsonable(dataclasses.asdict(cfg))
        return JSONResponse({"vllm_config": config, "vllm_env": envs.server_info_vars(),
                             "pagoda_version": pagoda.__version__})
    return await guarded(run)


def tokenizer_info(tokenizer: Any) -> dict[str, Any]:
    """vLLM's ``TokenizerInfo``: the tokenizer's init kwargs (file paths left out), its class, its chat
    template."""
    info = {k: v for k, v in dict(getattr(tokenizer, "init_kwargs", {}) or {}).items()
            if k not in _TOKENIZER_FILE_KWARGS}
    info["tokenizer_class"] = type(tokenizer).__name__
    template = getattr(tokenizer, "chat_template", None)
    if template:
        info["chat_template"] = template
    return _jsonable(info)


@tokenizer_info_router.get("/tokenizer_info")
async def get_tokenizer_info(request: Request) -> Response:
    async def run() -> Response:
        s = ready(request)
        assert s.engine is not None
        return JSONResponse(tokenizer_info(s.engine.get_tokenizer()))
    return await guarded(run)


@load_router.get("/load")
async def get_server_load(request: Request) -> Response:
    """``server_load``: HTTP requests to the generation routes being served now (streams until their
    last byte), as vLLM counts them."""
    return JSONResponse({"server_load": server_state(request).server_load})


def optional_routers(args: argparse.Namespace) -> list[APIRouter]:
    out = []
    if getattr(args, "enable_tokenizer_info_endpoint", False):
        out.append(tokenizer_info_router)
    if getattr(args, "enable_server_load_tracking", False):
        out.append(load_router)
    return out
