"""The edge: runtime errors and request validation errors become JSON responses here only."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from runtime.conversation.faults import is_transient
from runtime.errors import ChatEngineError, DependencyUnavailable, RateLimited
from runtime.fields import error_message

log = logging.getLogger(__name__)


def _field_path(loc: tuple[object, ...] | list[object], body: object = None) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path", "header")]
    # A discriminated union's tag (e.g. a channel body's ``type``) is not a field of the request.
    if parts and isinstance(body, dict) and parts[0] == body.get("type") and len(loc) > 2:
        parts = parts[1:]
    return ".".join(str(p) for p in parts) or "body"


def _dependency_errors() -> tuple[type[Exception], ...]:
    import asyncpg
    import redis.exceptions

    # Connection errors only: a FileNotFoundError (an OSError too) is no dependency being down.
    return (ConnectionError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
            asyncpg.CannotConnectNowError, asyncpg.TooManyConnectionsError,
            redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


_DEPENDENCY_ERRORS = _dependency_errors()

_HTTP_CODES = {400: "malformed_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


def _routes(routes: list[Any]) -> list[Any]:
    """``routes`` with included routers opened up (FastAPI wraps each included router)."""
    out = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        out.extend(_routes(inner.routes) if inner is not None else [route])
    return out


def allowed_methods(app: Any, path: str) -> list[str]:
    """Every method some route of ``app`` answers at ``path`` (Starlette's own 405 names only
    the first matching route's), sorted."""
    methods: set[str] = set()
    for route in _routes(app.router.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(path):
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def install_error_handlers(app: FastAPI) -> None:
    """Map ChatEngineError to ``{"error": {...}}`` with its status, 422s to named fields, the
    framework's own HTTP errors (404 route, 405 method, 400 unparsable body) to the same
    envelope (405 with an ``Allow`` header naming every method of the path), and Postgres or
    Redis being unreachable where a route does not handle it to 503 ``dependency_unavailable``
    with ``Retry-After``."""

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        status = exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) else "request refused"
        if status == 405:
            # The app serving the request (Serve may wrap the one built here), its own path.
            allow = allowed_methods(request.app, request.url.path) or allowed_methods(app, request.url.path)
            headers["Allow"] = ", ".join(allow)
            detail = f"{request.method} is not allowed here; use {', '.join(allow) or 'another path'}"
        elif status == 404 and detail == "Not Found":
            detail = f"no route {request.url.path}: see /docs for the API"
        elif status == 400:
            detail = f"the body could not be parsed ({detail}): send valid JSON or form data"
        body = {"error": {"code": _HTTP_CODES.get(status, "http_error"), "message": detail}}
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ChatEngineError)
    async def _chat_engine_error(_: Request, exc: ChatEngineError) -> JSONResponse:
        headers = {}
        # RateLimited always says when to retry; other errors may (CapacityExceeded, 503).
        retry_after = (exc.retry_after_s if isinstance(exc, RateLimited)
                       else getattr(exc, "retry_after_s", None))
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if exc.status_code >= 500:
            log.error("%s: %s", exc.code, exc.message)
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)

    async def _dependency_down(_: Request, exc: Exception) -> JSONResponse:
        # Postgres or Redis unreachable in a route that does not handle it: a clear 503 rather
        # than a bare 500 (anything else of these types is still a 500, in the same envelope).
        if not is_transient(exc):
            log.exception("unhandled error", exc_info=exc)
            body = {"error": {"code": "internal_error", "message": "something went wrong on our side"}}
            return JSONResponse(body, status_code=500)
        log.warning("dependency unavailable: %s: %s", type(exc).__name__, exc)
        err = DependencyUnavailable(
            f"Postgres or Redis is unreachable ({type(exc).__name__}); try again shortly")
        return JSONResponse(err.to_dict(), status_code=503, headers={"Retry-After": "5"})

    for exc_type in _DEPENDENCY_ERRORS:
        app.add_exception_handler(exc_type, _dependency_down)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"field": _field_path(e.get("loc", ()), exc.body), "message": error_message(e)}
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
