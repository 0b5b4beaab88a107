"""Bot configuration rows: ``config`` jsonb (a validated BotConfig), status, credit balance."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.errors import TenantNotFound


async def get_bot_config(conn: Conn, tenant_id: UUID, *, for_update: bool = False) -> asyncpg.Record:
    """``(tenant_id, config, status, credit_balance, credit_granted, updated_at)``;
    ``for_update`` locks the row until the caller's transaction ends (a read-modify-write).
    Raises TenantNotFound."""
    row = await conn.fetchrow(
        """SELECT tenant_id, config, status, credit_balance, credit_granted, updated_at
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


CREDIT_ALERT_LEVELS = (80, 100)  # percent of the grant spent


async def set_credits(conn: Conn, tenant_id: UUID, credits: int | None) -> asyncpg.Record:
    """Grant ``credits`` (None: unlimited): the balance and the grant become ``credits`` and the
    alerts are re-armed. Returns ``(tenant_id, credit_balance, credit_granted)``. Raises
    TenantNotFound. Platform-admin operation."""
    row = await conn.fetchrow(
        """UPDATE bot_configs SET credit_balance = $2, credit_granted = $2, credit_alert_level = 0,
                                  updated_at = now()
           WHERE tenant_id = $1 RETURNING tenant_id, credit_balance, credit_granted""",
        tenant_id, credits,
    )
    if row is None:
        raise TenantNotFound(f"no tenant {tenant_id}: create it with POST /v1/tenants first")
    return row


async def consume_credit(conn: Conn, tenant_id: UUID, amount: int = 1) -> dict[str, Any] | None:
    """Take ``amount`` credits for an AI answer (no-op when the balance is unlimited), in the
    caller's transaction.

    Returns the alert this answer raised, once per grant and level: ``{"level": 80 | 100,
    "credit_balance": int, "credit_granted": int | None}`` when the balance has just reached 20%
    of the grant (80% spent) or zero (100%), and an ``events`` row (kind ``credits_low`` /
    ``credits_exhausted``) is written with it; None otherwise.
    """
    row = await conn.fetchrow(
        """UPDATE bot_configs SET credit_balance = credit_balance - $2
           WHERE tenant_id = $1 AND credit_balance IS NOT NULL
           RETURNING credit_balance, credit_granted, credit_alert_level""",
        tenant_id, amount,
    )
    if row is None:
        return None
    balance, granted = int(row["credit_balance"]), row["credit_granted"]
    if balance <= 0:
        level = 100
    elif granted and balance * 5 <= int(granted):
        level = 80
    else:
        return None
    raised = await conn.fetchval(
        """UPDATE bot_configs SET credit_alert_level = $2
           WHERE tenant_id = $1 AND credit_alert_level < $2 RETURNING 1""",
        tenant_id, level,
    )
    if raised is None:
        return None
    alert = {"level": level, "credit_balance": balance,
             "credit_granted": int(granted) if granted is not None else None}
    await conn.execute(
        "INSERT INTO events (tenant_id, kind, data) VALUES ($1, $2, $3)",
        tenant_id, "credits_exhausted" if level == 100 else "credits_low", alert,
    )
    return alert
