"""The API's dependencies, in one place: the replica's context, who is calling, and which session.

- ``Ctx``: the ingress replica's settings, Postgres pool and Redis client.
- ``Admin`` / ``User`` / ``Owner``: bearer keys (platform admin token; a tenant user's API key,
  every query then scoped to its tenant).
- ``WidgetSession``: the iframe's signed session token (``Authorization: Bearer`` or ``?token=``
  for EventSource) for the ``{session_id}`` in the path.
- ``OwnedSession``: a tenant user and a ``{session_id}`` of their tenant (another tenant's session
  is 404, never 403).
- ``Models``: the Embedder/Generator deployment handles the ingress was built with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Header, Query, Request

from runtime.api.context import MODEL_HANDLES, AppContext, get_context
from runtime.db import sessions as sess_db
from runtime.db.tenants import Principal, principal_for_key
from runtime.errors import Forbidden, Unauthorized
from runtime.security import SessionClaims, same_secret, verify_session_token

Ctx = Annotated[AppContext, Depends(get_context)]


_TOKEN_RE = re.compile(r"[\x20-\x7e]{1,1024}")


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "missing API key: send `Authorization: Bearer <key>` (the key shown when the user "
            "or tenant was created)"
        )
    token = token.strip()
    if not _TOKEN_RE.fullmatch(token):
        # Keys and tokens are printable ASCII; anything else (non-ASCII, NUL, control characters)
        # is refused here, before it reaches a comparison or a query.
        raise Unauthorized("invalid API key: keys and tokens are printable ASCII")
    return token


async def require_admin(request: Request, ctx: Ctx) -> None:
    """Platform admin: the bearer must equal CHAT_ENGINE_ADMIN_TOKEN. Raises Unauthorized."""
    expected = ctx.settings.admin_token
    if expected is None or not same_secret(_bearer(request), expected.get_secret_value()):
        raise Unauthorized("invalid admin token: use the token `chat-engine up` printed")


async def require_user(request: Request, ctx: Ctx) -> Principal:
    """Any active tenant user (owner or agent). Raises Unauthorized."""
    token = _bearer(request)
    async with ctx.pool.acquire() as conn:
        principal = await principal_for_key(conn, token)
    if principal is None:
        raise Unauthorized("invalid API key: it is unknown or was disabled")
    return principal


async def require_owner(principal: Annotated[Principal, Depends(require_user)]) -> Principal:
    """A tenant owner. Raises Unauthorized / Forbidden (agents may not administer)."""
    if principal.role != "owner":
        raise Forbidden("this needs an owner's API key; agents cannot change the tenant's setup")
    return principal


Admin = Annotated[None, Depends(require_admin)]
Owner = Annotated[Principal, Depends(require_owner)]
User = Annotated[Principal, Depends(require_user)]


async def widget_session(
    session_id: UUID, ctx: Ctx,
    authorization: Annotated[str | None, Header()] = None,
    token: Annotated[str | None, Query(description="session token, for EventSource")] = None,
) -> SessionClaims:
    """The claims of the session token for ``session_id``. Raises Unauthorized (missing, bad or
    expired token) and SessionNotFound (a token of another session)."""
    bearer = None
    if authorization and authorization.lower().startswith("bearer "):
        bearer = authorization[7:].strip()
    return verify_session_token(ctx.settings, bearer or token, session_id)


WidgetSession = Annotated[SessionClaims, Depends(widget_session)]


@dataclass(frozen=True)
class SessionOfTenant:
    """A tenant user and one of their tenant's sessions (its row)."""

    who: Principal
    session_id: UUID
    row: Any

    @property
    def tenant_id(self) -> UUID:
        return self.who.tenant_id


async def owned_session(session_id: UUID, ctx: Ctx, who: User) -> SessionOfTenant:
    """``session_id`` if it belongs to the caller's tenant. Raises SessionNotFound otherwise."""
    async with ctx.pool.acquire() as conn:
        row = await sess_db.get_session(conn, who.tenant_id, session_id)
    return SessionOfTenant(who, session_id, row)


OwnedSession = Annotated[SessionOfTenant, Depends(owned_session)]


def model_handles() -> dict[str, Any]:
    """``{"embedder": handle | None, "generator": handle | None}``."""
    return MODEL_HANDLES


Models = Annotated[dict[str, Any], Depends(model_handles)]
