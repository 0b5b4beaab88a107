"""Channels: widget (public widget_token + allowed origins), whatsapp, telegram, sms, email, slack.

Credentials live in ``secrets`` as ``{"enc": <Fernet token>}`` (sealed by
:func:`runtime.security.encrypt_secrets` before they get here); only :func:`channel_for_webhook`
and the senders read them back, and no API response carries them.
"""

from __future__ import annotations

import secrets
from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.errors import NotFound

_COLUMNS = """id, tenant_id, type, name, config, widget_token, allowed_origins, status, created_at,
    COALESCE(secrets->'keys', '[]'::jsonb) AS credential_names"""


def new_widget_token() -> str:
    """A public widget token: ``wt_`` + 32 url-safe characters."""
    return "wt_" + secrets.token_urlsafe(24)


async def create_channel(
    conn: Conn, tenant_id: UUID, type_: str, name: str,
    config: dict[str, Any], secrets_: dict[str, Any], allowed_origins: list[str],
) -> asyncpg.Record:
    """Insert a channel; a widget channel gets a fresh widget_token. ``secrets_``: the sealed
    credentials (``{"enc": token}``), or ``{}``. Returns the row (no secrets)."""
    token = new_widget_token() if type_ == "widget" else None
    row = await conn.fetchrow(
        f"""INSERT INTO channels (tenant_id, type, name, config, secrets, widget_token,
                                  allowed_origins)
            VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_COLUMNS}""",
        tenant_id, type_, name, config, secrets_, token, allowed_origins,
    )
    assert row is not None
    return row


async def list_channels(conn: Conn, tenant_id: UUID) -> list[asyncpg.Record]:
    """The tenant's channels, oldest first (no secrets)."""
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM channels WHERE tenant_id = $1 ORDER BY created_at", tenant_id
    )


async def get_channel(conn: Conn, tenant_id: UUID, channel_id: UUID) -> asyncpg.Record:
    """One channel of the tenant. Raises NotFound (also for another tenant's channel)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM channels WHERE tenant_id = $1 AND id = $2",
        tenant_id, channel_id,
    )
    if row is None:
        raise NotFound(f"no channel {channel_id} in this tenant")
    return row


async def channel_by_widget_token(conn: Conn, token: str) -> asyncpg.Record | None:
    """The active widget channel holding ``token``, or None."""
    return await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM channels
            WHERE widget_token = $1 AND type = 'widget' AND status = 'active'""",
        token,
    )


_SECRET_COLUMNS = _COLUMNS + ", secrets"


async def channel_for_webhook(conn: Conn, channel_id: UUID, type_: str) -> asyncpg.Record | None:
    """The active channel ``channel_id`` of type ``type_``, with its sealed ``secrets`` (any
    tenant: the webhook URL names the channel). None when there is no such channel."""
    return await conn.fetchrow(
        f"""SELECT {_SECRET_COLUMNS} FROM channels WHERE id = $1 AND type = $2 AND status = 'active'""",
        channel_id, type_,
    )


async def whatsapp_channel_for_number(
    conn: Conn, tenant_id: UUID, phone_number_id: str
) -> asyncpg.Record | None:
    """The tenant's active WhatsApp channel receiving on ``phone_number_id``, with secrets."""
    return await conn.fetchrow(
        f"""SELECT {_SECRET_COLUMNS} FROM channels
            WHERE tenant_id = $1 AND type = 'whatsapp' AND status = 'active'
              AND config->>'phone_number_id' = $2""",
        tenant_id, phone_number_id,
    )


async def channels_with_secrets(conn: Conn, channel_ids: list[UUID]) -> list[asyncpg.Record]:
    """Channels by id, with sealed secrets (the senders' read)."""
    return await conn.fetch(f"SELECT {_SECRET_COLUMNS} FROM channels WHERE id = ANY($1::uuid[])", channel_ids)


def sealed(row: Any) -> str | None:
    """The Fernet token of a channel row's secrets, or None."""
    raw = row["secrets"] or {}
    return raw.get("enc") if isinstance(raw, dict) else None
