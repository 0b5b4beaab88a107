"""The API's dependencies, in one place: the replica's context, who is calling, and which session.

- ``Ctx``: the ingress replica's settings, Postgres pool and Redis client.
- ``Admin``: the platform admin token.
- ``User`` / ``Agent`` / ``Owner`` / ``TenantOwner``: a tenant user, from an API key
  (``Authorization: Bearer``) or the inbox's login cookie (writes then CSRF-checked, see
  :mod:`runtime.api.auth`); every query is scoped to their tenant. Roles (seed 003's RBAC):
  ``User`` any role (a viewer only reads: any other method is 403 for them, on every route),
  ``Agent`` owner/admin/agent (the inbox's writes), ``Owner`` owner/admin (the tenant's setup),
  ``TenantOwner`` owners only.
- ``WidgetSession``: the iframe's signed session token (``Authorization: Bearer`` or ``?token=``
  for EventSource) for the ``{session_id}`` in the path.
- ``OwnedSession``: a tenant user and a ``{session_id}`` of their tenant that they may see (an
  agent in teams sees their teams' conversations, :mod:`runtime.db.inbox_teams`); another
  tenant's session, or one outside an agent's teams, is 404, never 403.
- ``Models``: the Embedder/Generator deployment handles the ingress was built with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from fastapi import Depends, Header, Query, Request

from runtime.api.auth import SAFE_METHODS, principal_from_cookie
from runtime.api.context import MODEL_HANDLES, AppContext, get_context
from runtime.db import sessions as sess_db
from runtime.db.inbox_teams import Scope, scope_for
from runtime.db.tenants import Principal, principal_for_key
from runtime.errors import Forbidden, SessionNotFound, Unauthorized
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
    """Any active tenant user: an API key, else the login cookie (a write with the cookie is
    CSRF-checked). A viewer may only read (GET/HEAD). Raises Unauthorized, Forbidden (a
    viewer's write, CsrfRefused)."""
    principal: Principal | None
    if request.headers.get("authorization") or not request.cookies:
        token = _bearer(request)
        async with ctx.pool.acquire() as conn:
            principal = await principal_for_key(conn, token)
        if principal is None:
            raise Unauthorized("invalid API key: it is unknown or was disabled")
    else:
        principal = await principal_from_cookie(request, ctx)
        if principal is None:
            _bearer(request)  # raises the missing-credentials error
            raise AssertionError("unreachable")
    if principal.role == "viewer" and request.method not in SAFE_METHODS:
        raise Forbidden("viewers have read-only access: ask an owner or admin for the agent role")
    return principal


def _roles(*roles: str, why: str) -> Any:
    async def check(principal: Annotated[Principal, Depends(require_user)]) -> Principal:
        if principal.role not in roles:
            raise Forbidden(why)
        return principal
    return check


require_agent = _roles("owner", "admin", "agent",
                       why="this needs an agent, admin or owner: viewers have read-only access")
require_owner = _roles("owner", "admin",
                       why="this needs an owner or admin: agents and viewers cannot change the "
                       "tenant's setup")
require_tenant_owner = _roles("owner", why="only an owner can do this")

Admin = Annotated[None, Depends(require_admin)]
Owner = Annotated[Principal, Depends(require_owner)]
TenantOwner = Annotated[Principal, Depends(require_tenant_owner)]
Agent = Annotated[Principal, Depends(require_agent)]
User = Annotated[Principal, Depends(require_user)]


async def user_scope(ctx: Ctx, who: User) -> Scope:
    """Which conversations the caller sees (:class:`runtime.db.inbox_teams.Scope`)."""
    async with ctx.pool.acquire() as conn:
        return await scope_for(conn, who.tenant_id, who.user_id, who.role)


UserScope = Annotated[Scope, Depends(user_scope)]


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
    """``session_id`` if it belongs to the caller's tenant and is in their scope. Raises
    SessionNotFound otherwise."""
    async with ctx.pool.acquire() as conn:
        row = await sess_db.get_session(conn, who.tenant_id, session_id)
        scope = await scope_for(conn, who.tenant_id, who.user_id, who.role)
        if not scope.sees(row):
            raise SessionNotFound(f"no session {session_id} in your teams' inbox")
    return SessionOfTenant(who, session_id, row)


OwnedSession = Annotated[SessionOfTenant, Depends(owned_session)]


def model_handles() -> dict[str, Any]:
    """``{"embedder": handle | None, "generator": handle | None}``."""
    return MODEL_HANDLES


Models = Annotated[dict[str, Any], Depends(model_handles)]
