"""Bot configuration rows: ``config`` jsonb (a validated BotConfig), status, credit balance."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.errors import TenantNotFound


async def get_bot_config(conn: Conn, tenant_id: UUID, *, for_update: bool = False) -> asyncpg.Record:
    """``(tenant_id, config, status, credit_balance, updated_at)``; ``for_update`` locks the row
    until the caller's transaction ends (a read-modify-write). Raises TenantNotFound."""
    row = await conn.fetchrow(
        """SELECT tenant_id, config, status, credit_balance, updated_at
           FROM bot_configs WHERE tenant_id = $1""" + (" FOR UPDATE" if for_update else ""),
        tenant_id,
    )
    if row is None:
        raise TenantNotFound(f"no bot configuration for tenant {tenant_id}")
    return row


async def update_bot_config(
    conn: Conn, tenant_id: UUID, config: dict[str, Any], status: str
) -> asyncpg.Record:
    """Replace the config and status; returns the new row. Raises TenantNotFound."""
    row = await conn.fetchrow(
        """UPDATE bot_configs SET config = $2, status = $3, updated_at = now()
           WHERE tenant_id = $1
           RETURNING tenant_id, config, status, credit_balance, updated_at""",
        tenant_id, config, status,
    )
    if row is None:
        raise TenantNotFound(f"no bot configuration for tenant {tenant_id}")
    return row


async def set_credit_balance(
    conn: Conn, tenant_id: UUID, credits: int | None
) -> None:
    """Set the credit balance (None: unlimited). Platform-admin operation."""
    await conn.execute(
        "UPDATE bot_configs SET credit_balance = $2 WHERE tenant_id = $1", tenant_id, credits
    )


async def consume_credit(conn: Conn, tenant_id: UUID, amount: int = 1) -> None:
    """Take ``amount`` credits for an AI answer; no-op when the balance is unlimited."""
    await conn.execute(
        """UPDATE bot_configs SET credit_balance = credit_balance - $2
           WHERE tenant_id = $1 AND credit_balance IS NOT NULL""",
        tenant_id, amount,
    )
