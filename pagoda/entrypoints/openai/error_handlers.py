"""Every error the framework raises, answered in OpenAI's JSON error shape."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from pagoda.entrypoints.openai.serving_engine import error_response, serving_error_response

MAX_LISTED_ERRORS = 5


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A body that does not fit the request schema: 400 naming the first offending field."""
    errs = exc.errors()
    if errs and errs[0].get("type") == "json_invalid":
        detail = (errs[0].get("ctx") or {}).get("error", "")
        return error_response(400, f"The request body is not valid JSON: {detail}".rstrip(": "),
                              "invalid_request_error")
    if errs and errs[0].get("type") == "missing" and tuple(errs[0].get("loc", ())) == ("body",):
        required = _required_fields(request)
        msg = "The request body is empty; send a JSON object"
        msg += f" with the required field(s): {', '.join(required)}." if required else "."
        return error_response(400, msg, "invalid_request_error", required[0] if required else None)
    msg, param = validation_message(errs)
    return error_response(400, msg, "invalid_request_error", param)


def validation_message(errs: Sequence[Any]) -> tuple[str, str | None]:
    """A body's schema errors (pydantic's ``errors()``) as one message naming each offending field (the first
    ``MAX_LISTED_ERRORS``), and the first field (the error's ``param``)."""
    parts = []
    param = None
    for e in errs[:MAX_LISTED_ERRORS]:
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if param is None and loc:
            param = loc[0]
        where = ".".join(loc)
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    msg = "; ".join(parts) or "Invalid request."
    if len(errs) > MAX_LISTED_ERRORS:
        msg += f" (and {len(errs) - MAX_LISTED_ERRORS} more errors)"
    return msg, param


def _required_fields(request: Request) -> list[str]:
    """The required fields of the route's request body model (none known: empty)."""
    field = getattr(request.scope.get("route"), "body_field", None)
    model = getattr(getattr(field, "field_info", None), "annotation", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return [f.alias or name for name, f in model.model_fields.items() if f.is_required()]
    return []


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    msg = exc.detail if isinstance(exc.detail, str) else "HTTP error"
    resp = error_response(exc.status_code, msg, None, None, None)
    for k, v in (exc.headers or {}).items():  # a 405's Allow, as Starlette's own answer has it
        resp.headers[k] = v
    return resp


async def on_error(request: Request, exc: Exception) -> JSONResponse:
    return serving_error_response(exc)


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_error)
