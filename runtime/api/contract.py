"""The API contract's shared pieces: the error envelope in OpenAPI, and request text types.

Every error response is ``{"error": {"code": str, "message": str, ...fields}}``
(:class:`ErrorEnvelope`); :func:`error_responses` documents it for the statuses a route can
answer, so a client (or a fuzzer) reading ``/openapi.json`` knows every status it may get.

Request text uses :mod:`runtime.fields` (re-exported here): NUL, lone surrogates and U+FFFE/U+FFFF
give 422 naming the field, and the schema says so with a ``pattern``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field

from runtime.fields import WHITESPACE, NonBlankText, Text

__all__ = ["AUTHED", "COMMON", "WHITESPACE", "AfterId", "ErrorEnvelope", "NonBlankText", "RowId", "Text",
           "error_responses", "merge_patch_schema"]


class ErrorDetail(BaseModel):
    """What went wrong: a stable ``code``, a ``message`` saying what to do, and extra fields
    (``field``, ``fields``, ``retry_after_s``...)."""

    model_config = ConfigDict(extra="allow")

    code: str = Field(description="stable snake_case identifier, e.g. rate_limited")
    message: str = Field(description="what was wrong and what to do")


class ErrorEnvelope(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


_DESCRIPTIONS = {
    400: "Malformed request: the body could not be parsed",
    401: "Missing, malformed or unknown credentials",
    403: "The credentials lack the needed role, or the origin is not allowed",
    404: "No such resource in this tenant (another tenant's is also 404)",
    405: "Method not allowed (the Allow header lists the allowed ones)",
    409: "Conflicts with the current state",
    411: "A request body without Content-Length (chunked bodies are refused)",
    413: "A body, message or upload over its size limit",
    422: "Invalid input; `field`/`fields` name what to fix",
    429: "Over a rate limit or cap; retry after `Retry-After` seconds",
    502: "A model backend failed while answering",
    503: "A dependency or backend is unavailable, or a capacity cap is reached; retry later",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying",
                                "schema": {"type": "integer"}}}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ``statuses``, each with the :class:`ErrorEnvelope` schema.

    Returns e.g. ``{401: {"model": ErrorEnvelope, "description": ...}}`` for a route's or a
    router's ``responses=``.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorEnvelope, "description": _DESCRIPTIONS[status]}
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


# Every route that parses a body or query can answer these, and every route that reads Postgres
# or Redis can answer 503.
COMMON = (400, 411, 413, 422, 429, 503)
AUTHED = (*COMMON, 401, 403)


AfterId = Annotated[int, Query(ge=0, le=2**62, description="only rows with a larger id")]
"""A cursor query parameter: a message or row id, 0 for the start."""

RowId = Annotated[int, Path(ge=1, le=2**62)]
"""An integer row id in a path."""


def merge_patch_schema(model: type[BaseModel], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON Schema of an RFC 7396 merge patch of ``model``: every object property optional
    and nullable (``null`` resets it to its default), unknown properties refused, arrays and
    their items whole (a patch replaces a list). ``extra``: more top-level properties.

    Returns a self-contained schema (``$ref``s inlined) for ``openapi_extra``.
    """
    full = model.model_json_schema()
    defs = full.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    def patchable(node: dict[str, Any]) -> dict[str, Any]:
        if node.get("type") != "object" or "properties" not in node:
            return node
        props = {}
        for name, prop in node["properties"].items():
            inner = patchable(prop)
            props[name] = {"anyOf": [inner, {"type": "null"}],
                           **({"description": prop["description"]} if "description" in prop else {})}
        out = {k: v for k, v in node.items() if k not in ("required", "properties")}
        return {**out, "properties": props, "additionalProperties": False}

    schema = patchable(inline(full))
    schema["properties"].update(extra or {})
    return schema
