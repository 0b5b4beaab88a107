"""Tickets and leads on escalation (plain SQL, tenant-scoped).

A ticket is written in the escalation's transaction (:mod:`runtime.helpdesk.tickets` composes
it); a lead is either captured earlier by lead capture (``source='lead_capture'``) and attached
to the ticket, or created with it (``source='escalation'``) when the contact left an email or a
phone and the conversation shows a buying signal.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.errors import NotFound

TICKET_COLUMNS = """t.id, t.session_id, t.escalation_id, t.contact_id, t.lead_id, t.subject, t.summary,
    t.transcript_url, t.inbox_url, t.priority, t.category, t.signal, t.reason, t.status, t.created_at"""
LEAD_COLUMNS = """l.id, l.session_id, l.contact_id, l.email, l.name, l.phone, l.topic, l.question,
    l.source, l.buying_signal, l.forwarded_at, l.created_at"""


# ------------------------------------------------------------------ reading the conversation
async def customer_messages(conn: Conn, tenant_id: UUID, session_id: UUID, limit: int = 200) -> list[str]:
    """The customer's message texts in the session, oldest first (the newest ``limit``)."""
    rows = await conn.fetch(
        """SELECT text FROM (
               SELECT id, text FROM messages
               WHERE tenant_id = $1 AND session_id = $2 AND sender = 'customer' AND text <> ''
               ORDER BY id DESC LIMIT $3) m ORDER BY id""",
        tenant_id, session_id, limit,
    )
    return [str(r["text"]) for r in rows]


async def contact_details(conn: Conn, tenant_id: UUID, contact_id: UUID | None) -> dict[str, str | None]:
    """``{"name", "email", "phone"}`` of the contact: its columns, else its identities (a
    WhatsApp or SMS contact's phone, an email contact's address); all None without a contact."""
    out: dict[str, str | None] = {"name": None, "email": None, "phone": None}
    if contact_id is None:
        return out
    row = await conn.fetchrow(
        """SELECT c.name, c.email, c.phone,
                  (SELECT value FROM contact_identities i WHERE i.tenant_id = c.tenant_id
                     AND i.contact_id = c.id AND i.kind = 'email' ORDER BY created_at LIMIT 1) AS id_email,
                  (SELECT value FROM contact_identities i WHERE i.tenant_id = c.tenant_id
                     AND i.contact_id = c.id AND i.kind = 'phone' ORDER BY created_at LIMIT 1) AS id_phone
           FROM contacts c WHERE c.tenant_id = $1 AND c.id = $2""",
        tenant_id, contact_id,
    )
    if row is None:
        return out
    return {"name": row["name"], "email": row["email"] or row["id_email"],
            "phone": row["phone"] or row["id_phone"]}


# ------------------------------------------------------------------ leads
async def session_lead(conn: Conn, tenant_id: UUID, session_id: UUID) -> asyncpg.Record | None:
    """The session's newest lead, or None."""
    return await conn.fetchrow(
        f"""SELECT {LEAD_COLUMNS} FROM leads l WHERE l.tenant_id = $1 AND l.session_id = $2
            ORDER BY l.created_at DESC LIMIT 1""",
        tenant_id, session_id,
    )


async def insert_lead(
    conn: Conn, tenant_id: UUID, session_id: UUID, contact_id: UUID | None, *, email: str | None,
    phone: str | None, name: str | None, topic: str | None, question: str | None, buying_signal: str,
) -> asyncpg.Record:
    """A lead found at escalation (``source='escalation'``); returns the row."""
    row = await conn.fetchrow(
        f"""INSERT INTO leads AS l (tenant_id, session_id, contact_id, email, phone, name, topic,
                                    question, source, buying_signal)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'escalation', $9) RETURNING {LEAD_COLUMNS}""",
        tenant_id, session_id, contact_id, email, phone, name, topic, question, buying_signal,
    )
    assert row is not None
    return row


async def complete_lead(
    conn: Conn, tenant_id: UUID, lead_id: UUID, *, phone: str | None, name: str | None,
    buying_signal: str | None,
) -> asyncpg.Record:
    """Fill a captured lead's missing phone, name and buying signal; returns the row."""
    row = await conn.fetchrow(
        f"""UPDATE leads l SET phone = COALESCE(l.phone, $3), name = COALESCE(l.name, $4),
                   buying_signal = COALESCE(l.buying_signal, $5)
            WHERE l.tenant_id = $1 AND l.id = $2 RETURNING {LEAD_COLUMNS}""",
        tenant_id, lead_id, phone, name, buying_signal,
    )
    assert row is not None
    return row


async def mark_lead_forwarded(conn: Conn, tenant_id: UUID, lead_id: UUID) -> bool:
    """Mark the lead as enqueued to the destinations; False when it already was (a lead is
    forwarded once, however many escalations its session has)."""
    got = await conn.fetchval(
        """UPDATE leads SET forwarded_at = now() WHERE tenant_id = $1 AND id = $2
             AND forwarded_at IS NULL RETURNING 1""",
        tenant_id, lead_id,
    )
    return got is not None


async def list_leads(conn: Conn, tenant_id: UUID, *, session_id: UUID | None = None,
                     source: str | None = None, limit: int = 100) -> list[asyncpg.Record]:
    """The tenant's leads, newest first, with the id of the ticket that carried each (if any)."""
    return await conn.fetch(
        f"""SELECT {LEAD_COLUMNS},
                   (SELECT t.id FROM tickets t WHERE t.tenant_id = l.tenant_id AND t.lead_id = l.id
                    ORDER BY t.created_at LIMIT 1) AS ticket_id
            FROM leads l WHERE l.tenant_id = $1 AND ($2::uuid IS NULL OR l.session_id = $2)
              AND ($3::text IS NULL OR l.source = $3)
            ORDER BY l.created_at DESC, l.id LIMIT $4""",
        tenant_id, session_id, source, limit,
    )


# ------------------------------------------------------------------ tickets
async def insert_ticket(conn: Conn, tenant_id: UUID, **fields: Any) -> asyncpg.Record:
    """Insert a ticket; ``fields``: session_id, escalation_id, contact_id, lead_id, subject,
    summary, transcript_url, inbox_url, priority, category, signal, reason. Returns the row."""
    names = ["session_id", "escalation_id", "contact_id", "lead_id", "subject", "summary",
             "transcript_url", "inbox_url", "priority", "category", "signal", "reason"]
    values = [fields.get(n) for n in names]
    placeholders = ", ".join(f"${i}" for i in range(2, len(names) + 2))
    row = await conn.fetchrow(
        f"""INSERT INTO tickets AS t (tenant_id, {", ".join(names)}) VALUES ($1, {placeholders})
            RETURNING {TICKET_COLUMNS}""",
        tenant_id, *values,
    )
    assert row is not None
    return row


async def list_tickets(
    conn: Conn, tenant_id: UUID, *, session_id: UUID | None = None, priority: str | None = None,
    category: str | None = None, limit: int = 100,
) -> list[asyncpg.Record]:
    """The tenant's tickets, newest first."""
    return await conn.fetch(
        f"""SELECT {TICKET_COLUMNS} FROM tickets t
            WHERE t.tenant_id = $1 AND ($2::uuid IS NULL OR t.session_id = $2)
              AND ($3::text IS NULL OR t.priority = $3) AND ($4::text IS NULL OR t.category = $4)
            ORDER BY t.created_at DESC, t.id LIMIT $5""",
        tenant_id, session_id, priority, category, limit,
    )


async def get_ticket(conn: Conn, tenant_id: UUID, ticket_id: UUID) -> asyncpg.Record:
    """One ticket of the tenant. Raises NotFound (also for another tenant's)."""
    row = await conn.fetchrow(
        f"SELECT {TICKET_COLUMNS} FROM tickets t WHERE t.tenant_id = $1 AND t.id = $2", tenant_id, ticket_id,
    )
    if row is None:
        raise NotFound(f"no ticket {ticket_id} in this tenant")
    return row


async def ticket_deliveries(conn: Conn, tenant_id: UUID, ticket_id: UUID, session_id: UUID,
                            ) -> list[asyncpg.Record]:
    """The outbox rows that carry the ticket (one per destination; found through the ticket's
    session): id, helpdesk_id, status, attempts, last_error, provider_message_id, sent_at."""
    return await conn.fetch(
        """SELECT id, helpdesk_id, status, attempts, last_error, provider_message_id, sent_at
           FROM outbox WHERE tenant_id = $1 AND session_id = $3 AND helpdesk_id IS NOT NULL
             AND body->>'event' = 'ticket.created' AND body->'ticket'->>'id' = $2
           ORDER BY id""",
        tenant_id, str(ticket_id), session_id,
    )
