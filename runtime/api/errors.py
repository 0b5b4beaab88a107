"""The edge: runtime errors and request validation errors become JSON responses here only."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from runtime.errors import ChatEngineError, RateLimited

log = logging.getLogger(__name__)


def _field_path(loc: tuple[object, ...] | list[object]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def install_error_handlers(app: FastAPI) -> None:
    """Map ChatEngineError to ``{"error": {...}}`` with its status, and 422s to named fields."""

    @app.exception_handler(ChatEngineError)
    async def _chat_engine_error(_: Request, exc: ChatEngineError) -> JSONResponse:
        headers = {}
        if isinstance(exc, RateLimited):
            headers["Retry-After"] = str(exc.retry_after_s)
        if exc.status_code >= 500:
            log.error("%s: %s", exc.code, exc.message)
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": _field_path(e.get("loc", ())), "message": e.get("msg", "invalid")}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
        body = {
            "error": {
                "code": "invalid_input",
                "message": f"invalid request: {summary}",
                "fields": problems,
            }
        }
        return JSONResponse(body, status_code=422)
