"""The server's routes, one module per endpoint family, each with an ``APIRouter``.

``ROUTERS`` are always served; :func:`routers` adds those a flag (or, for the runtime LoRA routes, an environment
variable) turns on.
"""

from __future__ import annotations

import argparse

from fastapi import APIRouter

from pagoda.entrypoints.openai.routes import (
    admin,
    chat,
    chat_page,
    completions,
    lora,
    models,
    pooling,
    responses,
    sagemaker,
    server_info,
    tokenize,
)

ROUTERS: tuple[APIRouter, ...] = (admin.router, models.router, completions.router, chat.router, tokenize.router,
                                  responses.router, sagemaker.router, server_info.router,
                                  chat_page.router, pooling.router)


def routers(args: argparse.Namespace) -> list[APIRouter]:
    return [*ROUTERS, *server_info.optional_routers(args), *lora.optional_routers()]
