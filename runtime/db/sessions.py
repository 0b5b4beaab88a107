"""Contacts and sessions (plain SQL, every query tenant-scoped)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.errors import SessionNotFound

SESSION_COLUMNS = """id, tenant_id, channel_id, contact_id, status, assignee_id,
    escalation_reason, escalation_question, origin, state, created_at, updated_at,
    last_activity_at, escalated_at, assigned_at, closed_at"""

# ------------------------------------------------------------------ contacts & sessions
async def upsert_contact(
    conn: Conn, tenant_id: UUID, channel_id: UUID, external_ref: str,
    name: str | None = None,
) -> UUID:
    """The contact for ``(channel, external_ref)``, created if new; returns its id."""
    row = await conn.fetchrow(
        """INSERT INTO contacts (tenant_id, channel_id, external_ref, name)
           VALUES ($1, $2, $3, $4)
           ON CONFLICT (tenant_id, channel_id, external_ref)
           DO UPDATE SET name = COALESCE(EXCLUDED.name, contacts.name)
           RETURNING id""",
        tenant_id, channel_id, external_ref, name,
    )
    assert row is not None
    return row["id"]


async def set_contact_email(
    conn: Conn, tenant_id: UUID, contact_id: UUID, email: str
) -> None:
    """Store a validated email on the contact."""
    await conn.execute(
        "UPDATE contacts SET email = $3 WHERE tenant_id = $1 AND id = $2",
        tenant_id, contact_id, email,
    )


async def get_contact(conn: Conn, tenant_id: UUID, contact_id: UUID) -> asyncpg.Record | None:
    """One contact or None."""
    return await conn.fetchrow(
        "SELECT id, name, email, phone, external_ref FROM contacts WHERE tenant_id = $1 AND id = $2",
        tenant_id, contact_id,
    )


async def create_session(
    conn: Conn, tenant_id: UUID, channel_id: UUID, contact_id: UUID | None,
    origin: str | None,
) -> asyncpg.Record:
    """A new ``ai_handled`` session."""
    row = await conn.fetchrow(
        f"""INSERT INTO sessions (tenant_id, channel_id, contact_id, origin)
            VALUES ($1, $2, $3, $4) RETURNING {SESSION_COLUMNS}""",
        tenant_id, channel_id, contact_id, origin,
    )
    assert row is not None
    return row


async def get_session(conn: Conn, tenant_id: UUID, session_id: UUID) -> asyncpg.Record:
    """The session row. Raises SessionNotFound (also for another tenant's session)."""
    row = await conn.fetchrow(
        f"SELECT {SESSION_COLUMNS} FROM sessions WHERE tenant_id = $1 AND id = $2",
        tenant_id, session_id,
    )
    if row is None:
        raise SessionNotFound(f"no session {session_id} in this tenant")
    return row


async def list_sessions(
    conn: Conn, tenant_id: UUID, status: str | None, limit: int
) -> list[asyncpg.Record]:
    """Sessions of the tenant, most recently active first, optionally by status."""
    return await conn.fetch(
        f"""SELECT {SESSION_COLUMNS} FROM sessions
            WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
            ORDER BY last_activity_at DESC LIMIT $3""",
        tenant_id, status, limit,
    )


async def update_session(
    conn: Conn, tenant_id: UUID, session_id: UUID, **fields: Any
) -> None:
    """Set the given session columns (names are code-controlled, never user input)."""
    allowed = {
        "status", "assignee_id", "escalation_reason", "escalation_question", "state",
        "escalated_at", "assigned_at", "closed_at",
    }
    assert set(fields) <= allowed, set(fields) - allowed
    cols = list(fields)
    sets = ", ".join(f"{c} = ${i + 3}" for i, c in enumerate(cols))
    await conn.execute(
        f"""UPDATE sessions SET {sets}, updated_at = now(), last_activity_at = now()
            WHERE tenant_id = $1 AND id = $2""",
        tenant_id, session_id, *[fields[c] for c in cols],
    )




async def get_session_for_actor(conn: Conn, tenant_id: UUID, session_id: UUID) -> asyncpg.Record:
    """The session row plus its channel's ``channel_type`` and the contact's ``contact_ref``
    (phone, chat id, email address: where an outbox delivery sends). Raises SessionNotFound."""
    cols = ", ".join(f"s.{c.strip()}" for c in SESSION_COLUMNS.split(","))
    row = await conn.fetchrow(
        f"""SELECT {cols}, ch.type AS channel_type, ct.external_ref AS contact_ref
            FROM sessions s JOIN channels ch ON ch.id = s.channel_id
            LEFT JOIN contacts ct ON ct.id = s.contact_id
            WHERE s.tenant_id = $1 AND s.id = $2""",
        tenant_id, session_id,
    )
    if row is None:
        raise SessionNotFound(f"no session {session_id} in this tenant")
    return row
