"""Every error the framework raises, answered in OpenAI's JSON error shape."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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
    return error_response(400, msg, "invalid_request_error", param)


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    msg = exc.detail if isinstance(exc.detail, str) else "HTTP error"
    return error_response(exc.status_code, msg, None, None, None)


async def on_error(request: Request, exc: Exception) -> JSONResponse:
    return serving_error_response(exc)


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, on_http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_error)
