"""Contacts, sessions, messages, escalations, leads, events, usage and timers (plain SQL).

Every function takes ``tenant_id`` and filters on it. Message ids are bigint identities; an AI
answer's id is reserved up front (:func:`reserve_message_id`) so its streamed tokens carry it,
and the row is written only when the answer is complete.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.errors import SessionNotFound

SESSION_COLUMNS = """id, tenant_id, channel_id, contact_id, status, assignee_id,
    escalation_reason, escalation_question, origin, state, created_at, updated_at,
    last_activity_at, escalated_at, assigned_at, closed_at"""

MESSAGE_COLUMNS = """m.id, m.session_id, m.sender, m.text, m.attachments, m.client_msg_id,
    m.external_id, m.reply_to, m.status, m.agent_id, m.intent, m.confidence, m.latency_ms,
    m.prompt_tokens, m.completion_tokens, m.backend, m.source_chunk_ids, m.created_at,
    u.name AS agent_name"""


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


# ------------------------------------------------------------------ messages
async def insert_customer_message(
    conn: Conn, tenant_id: UUID, session_id: UUID, channel_id: UUID, text: str,
    attachments: list[dict[str, Any]], client_msg_id: str | None, external_id: str | None,
) -> tuple[asyncpg.Record, bool]:
    """Persist a customer message idempotently.

    Returns (row, created). A repeat of ``(session, client_msg_id)`` or ``(channel,
    external_id)`` returns the original row with created=False; a repeat that belongs to another
    session is reported as SessionNotFound, never returned.
    """
    row = await conn.fetchrow(
        """INSERT INTO messages (tenant_id, session_id, channel_id, sender, text, attachments,
                                 client_msg_id, external_id, status)
           VALUES ($1, $2, $3, 'customer', $4, $5, $6, $7, 'received')
           ON CONFLICT DO NOTHING
           RETURNING id, session_id, sender, text, attachments, client_msg_id, status, created_at""",
        tenant_id, session_id, channel_id, text, attachments, client_msg_id, external_id,
    )
    if row is not None:
        return row, True
    existing = await conn.fetchrow(
        """SELECT id, session_id, sender, text, attachments, client_msg_id, status, created_at
           FROM messages
           WHERE tenant_id = $1 AND ((session_id = $2 AND client_msg_id = $3)
                                     OR (channel_id = $4 AND external_id = $5))""",
        tenant_id, session_id, client_msg_id, channel_id, external_id,
    )
    if existing is None or existing["session_id"] != session_id:
        raise SessionNotFound("that message id belongs to another conversation")
    return existing, False


async def reserve_message_id(conn: Conn) -> int:
    """A fresh message id for an answer that is about to stream (gaps are harmless)."""
    return int(await conn.fetchval("SELECT nextval(pg_get_serial_sequence('messages', 'id'))"))


async def insert_message(
    conn: Conn, tenant_id: UUID, session_id: UUID, channel_id: UUID, sender: str,
    text: str, *, message_id: int | None = None, reply_to: int | None = None,
    status: str = "sent", agent_id: UUID | None = None, intent: str | None = None,
    confidence: float | None = None, latency_ms: int | None = None,
    prompt_tokens: int | None = None, completion_tokens: int | None = None,
    backend: str | None = None, source_chunk_ids: list[int] | None = None,
) -> asyncpg.Record:
    """Insert an ai/agent/system message (with a reserved id when given); returns the row."""
    id_col, id_val = ("id, ", "$15, ") if message_id is not None else ("", "")
    override = "OVERRIDING SYSTEM VALUE" if message_id is not None else ""
    args: list[Any] = [
        tenant_id, session_id, channel_id, sender, text, reply_to, status, agent_id, intent,
        confidence, latency_ms, prompt_tokens, completion_tokens, backend,
    ]
    if message_id is not None:
        args.append(message_id)
    row = await conn.fetchrow(
        f"""INSERT INTO messages ({id_col}tenant_id, session_id, channel_id, sender, text,
                reply_to, status, agent_id, intent, confidence, latency_ms, prompt_tokens,
                completion_tokens, backend, source_chunk_ids)
            {override}
            VALUES ({id_val}$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                    ${len(args) + 1})
            RETURNING id, session_id, sender, text, reply_to, status, agent_id, source_chunk_ids,
                      created_at""",
        *args, list(source_chunk_ids or []),
    )
    assert row is not None
    return row


async def set_message_status(
    conn: Conn, tenant_id: UUID, message_id: int, status: str
) -> None:
    """Mark a customer message ``answered`` / ``inbox``."""
    await conn.execute(
        "UPDATE messages SET status = $3 WHERE tenant_id = $1 AND id = $2",
        tenant_id, message_id, status,
    )


async def list_messages(
    conn: Conn, tenant_id: UUID, session_id: UUID, after: int = 0, limit: int = 200,
    include_unsent: bool = False,
) -> list[asyncpg.Record]:
    """Messages of the session with id > ``after``, oldest first (aborted answers excluded)."""
    return await conn.fetch(
        f"""SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN users u ON u.id = m.agent_id
            WHERE m.tenant_id = $1 AND m.session_id = $2 AND m.id > $3
              AND ($5 OR m.status NOT IN ('aborted', 'failed'))
            ORDER BY m.id LIMIT $4""",
        tenant_id, session_id, after, limit, include_unsent,
    )


async def answer_to(
    conn: Conn, tenant_id: UUID, customer_message_id: int
) -> asyncpg.Record | None:
    """The delivered reply to a customer message, if any."""
    return await conn.fetchrow(
        f"""SELECT {MESSAGE_COLUMNS} FROM messages m LEFT JOIN users u ON u.id = m.agent_id
            WHERE m.tenant_id = $1 AND m.reply_to = $2 AND m.status = 'sent'
            ORDER BY m.id LIMIT 1""",
        tenant_id, customer_message_id,
    )


async def unanswered_customer_messages(
    conn: Conn, tenant_id: UUID, session_id: UUID
) -> list[asyncpg.Record]:
    """Customer messages still ``received`` (not answered, not sent to the inbox), in order."""
    return await conn.fetch(
        """SELECT id, session_id, sender, text, attachments, client_msg_id, status, created_at
           FROM messages
           WHERE tenant_id = $1 AND session_id = $2 AND sender = 'customer'
             AND status = 'received'
           ORDER BY id""",
        tenant_id, session_id,
    )


async def recent_history(
    conn: Conn, tenant_id: UUID, session_id: UUID, before_id: int, limit: int
) -> list[asyncpg.Record]:
    """The last ``limit`` delivered messages before ``before_id``, oldest first."""
    rows = await conn.fetch(
        """SELECT id, sender, text FROM messages
           WHERE tenant_id = $1 AND session_id = $2 AND id < $3 AND status <> 'aborted'
             AND text <> ''
           ORDER BY id DESC LIMIT $4""",
        tenant_id, session_id, before_id, limit,
    )
    return list(reversed(rows))


# ------------------------------------------------------------------ escalations, leads, events
async def insert_escalation(
    conn: Conn, tenant_id: UUID, session_id: UUID, reason: str,
    signal: str | None, question: str | None,
) -> UUID:
    """Record an escalation; returns its id."""
    return await conn.fetchval(
        """INSERT INTO escalations (tenant_id, session_id, reason, signal, question)
           VALUES ($1, $2, $3, $4, $5) RETURNING id""",
        tenant_id, session_id, reason, signal, question,
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


async def record_usage(
    conn: Conn, tenant_id: UUID, session_id: UUID, message_id: int, backend: str,
    prompt_tokens: int, completion_tokens: int,
) -> None:
    """Token usage of one generation."""
    await conn.execute(
        """INSERT INTO usage (tenant_id, session_id, message_id, backend, prompt_tokens,
                              completion_tokens)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        tenant_id, session_id, message_id, backend, prompt_tokens, completion_tokens,
    )


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
