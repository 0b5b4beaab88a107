"""Escalations, leads, analytics events and token usage (plain SQL, tenant-scoped)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn


# ------------------------------------------------------------------ escalations, leads, events
async def insert_escalation(
    conn: Conn, tenant_id: UUID, session_id: UUID, reason: str,
    signal: str | None, question: str | None, priority: str = "normal",
) -> UUID:
    """Record an escalation; returns its id. priority: low | normal | high | critical."""
    return await conn.fetchval(
        """INSERT INTO escalations (tenant_id, session_id, reason, signal, question, priority)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        tenant_id, session_id, reason, signal, question, priority,
    )


async def mark_sla_breached(conn: Conn, tenant_id: UUID, session_id: UUID) -> None:
    """The session's unclaimed escalations passed their SLA."""
    await conn.execute(
        """UPDATE escalations SET sla_breached_at = now()
           WHERE tenant_id = $1 AND session_id = $2 AND claimed_at IS NULL
             AND sla_breached_at IS NULL""",
        tenant_id, session_id,
    )


async def list_escalations(
    conn: Conn, tenant_id: UUID, signal: str | None, limit: int
) -> list[asyncpg.Record]:
    """Recent escalations of the tenant, newest first, optionally by signal."""
    return await conn.fetch(
        """SELECT id, session_id, reason, signal, question, priority, created_at, claimed_at,
                  sla_breached_at, resolved_kb_entry
           FROM escalations WHERE tenant_id = $1 AND ($2::text IS NULL OR signal = $2)
           ORDER BY created_at DESC LIMIT $3""",
        tenant_id, signal, limit,
    )


async def escalation_question(conn: Conn, tenant_id: UUID, escalation_id: UUID) -> asyncpg.Record | None:
    """The escalation's ``question`` (row) or None for an unknown/other tenant's escalation."""
    return await conn.fetchrow(
        "SELECT question FROM escalations WHERE tenant_id = $1 AND id = $2", tenant_id, escalation_id
    )


async def mark_resolved_by_kb_entry(conn: Conn, tenant_id: UUID, escalation_id: UUID) -> None:
    """The owner answered this escalation's question in the knowledge base."""
    await conn.execute(
        "UPDATE escalations SET resolved_kb_entry = true WHERE tenant_id = $1 AND id = $2",
        tenant_id, escalation_id,
    )


async def claim_escalations(
    conn: Conn, tenant_id: UUID, session_id: UUID, agent_id: UUID
) -> None:
    """Mark the session's open escalations as claimed by ``agent_id``."""
    await conn.execute(
        """UPDATE escalations SET claimed_at = now(), claimed_by = $3
           WHERE tenant_id = $1 AND session_id = $2 AND claimed_at IS NULL""",
        tenant_id, session_id, agent_id,
    )


async def insert_lead(
    conn: Conn, tenant_id: UUID, session_id: UUID, contact_id: UUID | None,
    email: str, topic: str | None, question: str | None,
) -> UUID:
    """Record a captured lead; returns its id."""
    return await conn.fetchval(
        """INSERT INTO leads (tenant_id, session_id, contact_id, email, topic, question)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        tenant_id, session_id, contact_id, email, topic, question,
    )


async def record_event(
    conn: Conn, tenant_id: UUID, session_id: UUID | None, kind: str,
    data: dict[str, Any],
) -> None:
    """Append an analytics event (``escalation``, ``sla_breached``, ``lead``, ...)."""
    await conn.execute(
        "INSERT INTO events (tenant_id, session_id, kind, data) VALUES ($1, $2, $3, $4)",
        tenant_id, session_id, kind, data,
    )


