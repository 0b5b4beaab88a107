"""Bearer-key authentication: platform admin token and tenant users' API keys."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from runtime.api.context import AppContext, get_context
from runtime.db.tenants import Principal, principal_for_key
from runtime.errors import Forbidden, Unauthorized


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "missing API key: send `Authorization: Bearer <key>` (the key shown when the user "
            "or tenant was created)"
        )
    return token.strip()


async def require_admin(
    request: Request, ctx: Annotated[AppContext, Depends(get_context)]
) -> None:
    """Platform admin: the bearer must equal CHAT_ENGINE_ADMIN_TOKEN. Raises Unauthorized."""
    token = _bearer(request)
    expected = ctx.settings.admin_token
    if expected is None or not hmac.compare_digest(token, expected.get_secret_value()):
        raise Unauthorized("invalid admin token: use the token `chat-engine up` printed")


async def require_user(
    request: Request, ctx: Annotated[AppContext, Depends(get_context)]
) -> Principal:
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
Ctx = Annotated[AppContext, Depends(get_context)]
