"""The server's routes, one module per endpoint family, each with an ``APIRouter``."""

from __future__ import annotations

from fastapi import APIRouter

from pagoda.entrypoints.openai.routes import admin, chat, completions, models, tokenize

ROUTERS: tuple[APIRouter, ...] = (admin.router, models.router, completions.router, chat.router, tokenize.router)
