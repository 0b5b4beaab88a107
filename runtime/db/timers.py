"""Durable timers (SLA) that session actors arm and the Timekeeper polls (plain SQL)."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import asyncpg

from runtime.db import Conn


# ------------------------------------------------------------------ timers
async def set_timer(
    conn: Conn, tenant_id: UUID, session_id: UUID, kind: str, due_at: datetime
) -> None:
    """Arm (or re-arm) the session's timer of ``kind``."""
    await conn.execute(
        """INSERT INTO timers (tenant_id, session_id, kind, due_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (session_id, kind) DO UPDATE SET due_at = EXCLUDED.due_at""",
        tenant_id, session_id, kind, due_at,
    )


async def clear_timer(conn: Conn, tenant_id: UUID, session_id: UUID, kind: str) -> bool:
    """Disarm a timer; True if one was armed."""
    res = await conn.execute(
        "DELETE FROM timers WHERE tenant_id = $1 AND session_id = $2 AND kind = $3",
        tenant_id, session_id, kind,
    )
    return res.endswith(" 1")


async def due_timers(conn: Conn, limit: int = 100) -> list[asyncpg.Record]:
    """Timers due now, across tenants (the Timekeeper's poll), earliest first."""
    return await conn.fetch(
        """SELECT tenant_id, session_id, kind, due_at FROM timers
           WHERE due_at <= now() ORDER BY due_at LIMIT $1""",
        limit,
    )


async def get_timer(
    conn: Conn, tenant_id: UUID, session_id: UUID, kind: str
) -> datetime | None:
    """When the timer is due, or None."""
    return await conn.fetchval(
        "SELECT due_at FROM timers WHERE tenant_id = $1 AND session_id = $2 AND kind = $3",
        tenant_id, session_id, kind,
    )
