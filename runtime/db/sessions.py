"""Contacts and sessions (plain SQL, every query tenant-scoped)."""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.db.inbox_teams import Scope
from runtime.errors import SessionNotFound

SESSION_COLUMNS = """id, tenant_id, channel_id, contact_id, status, assignee_id,
    escalation_reason, escalation_question, origin, state, created_at, updated_at,
    last_activity_at, escalated_at, assigned_at, closed_at, address, thread, team_id, resolution,
    first_human_reply_at, csat_asked_at, csat_score, csat_at"""

# A bare score within this long after the CSAT question answers it (messaging channels).
CSAT_REPLY_HOURS = 24.0
_CSAT_RE = re.compile(r"^\s*([1-5])(?:\s*(?:/\s*5|stars?|\u2b50+))?\s*[.!]?\s*$", re.IGNORECASE)


def parse_csat_score(text: str | None) -> int | None:
    """A CSAT answer in a customer's message: ``4``, ``4/5``, ``5 stars``, ``3.``; None for
    anything else (a question, a sentence with a number in it)."""
    m = _CSAT_RE.match(text or "")
    return int(m.group(1)) if m else None


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
    conn: Conn, tenant_id: UUID, status: str | None, limit: int, scope: Scope | None = None,
) -> list[asyncpg.Record]:
    """Sessions of the tenant, most recently active first, optionally by status, only those in
    ``scope`` (an agent's teams; None: all)."""
    clause, extra = (scope or Scope(everything=True)).sql(4, alias="sessions")
    return await conn.fetch(
        f"""SELECT {SESSION_COLUMNS} FROM sessions
            WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2) AND {clause}
            ORDER BY last_activity_at DESC LIMIT $3""",
        tenant_id, status, limit, *extra,
    )


async def update_session(
    conn: Conn, tenant_id: UUID, session_id: UUID, **fields: Any
) -> None:
    """Set the given session columns (names are code-controlled, never user input)."""
    allowed = {
        "status", "assignee_id", "escalation_reason", "escalation_question", "state",
        "escalated_at", "assigned_at", "closed_at",
        "team_id", "resolution", "csat_asked_at", "csat_score", "csat_at",
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
    """The session row plus its channel's ``channel_type`` and ``contact_ref``, where an outbox
    delivery sends: the session's address on its channel (phone, chat id, email address, Slack
    channel), else the contact's external ref. Raises SessionNotFound."""
    cols = ", ".join(f"s.{c.strip()}" for c in SESSION_COLUMNS.split(","))
    row = await conn.fetchrow(
        f"""SELECT {cols}, ch.type AS channel_type, COALESCE(s.address, ct.external_ref) AS contact_ref
            FROM sessions s JOIN channels ch ON ch.id = s.channel_id
            LEFT JOIN contacts ct ON ct.id = s.contact_id
            WHERE s.tenant_id = $1 AND s.id = $2""",
        tenant_id, session_id,
    )
    if row is None:
        raise SessionNotFound(f"no session {session_id} in this tenant")
    return row


# ------------------------------------------------------------------ messaging channels
async def open_channel_session(
    conn: Conn, tenant_id: UUID, channel_id: UUID, contact_id: UUID, address: str,
    thread: dict[str, Any], idle_hours: float, session_id: UUID | None = None, new: bool = False,
    csat_reply: bool = False,
) -> tuple[asyncpg.Record, bool]:
    """The open session of ``contact_id`` on a messaging channel, or a new one.

    Open: not closed and active within ``idle_hours``. session_id: a session already matched
    (an email thread), used when it is still open; new: open a new session whatever is open (an
    email on a new subject is a new conversation). Serialised per (channel, contact) with a
    transaction-level advisory lock, so two webhooks at once never open two sessions; call inside
    a transaction. The session's ``address`` and ``thread`` are brought up to date (the reply goes
    where the customer last wrote from). csat_reply: the message is a bare score
    (:func:`parse_csat_score`): a closed session of the contact waiting for its CSAT answer
    (:data:`CSAT_REPLY_HOURS`) takes it, closed as it is. Returns (row, created).
    """
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                       f"chsess:{channel_id}:{contact_id}")
    if csat_reply:
        pending = await csat_session_for_reply(conn, tenant_id, channel_id, contact_id, CSAT_REPLY_HOURS)
        if pending is not None and session_id in (None, pending):
            return await get_session(conn, tenant_id, pending), False
    row = None if new else await conn.fetchrow(
        f"""SELECT {SESSION_COLUMNS} FROM sessions
            WHERE tenant_id = $1 AND channel_id = $2 AND contact_id = $3 AND status <> 'closed'
              AND last_activity_at > now() - make_interval(secs => $4)
              AND ($5::uuid IS NULL OR id = $5)
            ORDER BY last_activity_at DESC LIMIT 1""",
        tenant_id, channel_id, contact_id, idle_hours * 3600.0, session_id,
    )
    if row is None and session_id is not None:
        # The thread's session is closed or went idle: its continuation is a new conversation.
        return await open_channel_session(conn, tenant_id, channel_id, contact_id, address, thread,
                                          idle_hours, new=True)
    if row is not None:
        updated = await conn.fetchrow(
            f"""UPDATE sessions SET address = $3, thread = thread || $4::jsonb, last_activity_at = now()
                WHERE tenant_id = $1 AND id = $2 RETURNING {SESSION_COLUMNS}""",
            tenant_id, row["id"], address, thread,
        )
        assert updated is not None
        return updated, False
    created = await conn.fetchrow(
        f"""INSERT INTO sessions (tenant_id, channel_id, contact_id, address, thread)
            VALUES ($1, $2, $3, $4, $5) RETURNING {SESSION_COLUMNS}""",
        tenant_id, channel_id, contact_id, address, thread,
    )
    assert created is not None
    return created, True


async def session_for_email_thread(
    conn: Conn, tenant_id: UUID, channel_id: UUID, message_ids: list[str],
) -> UUID | None:
    """The session of this email channel that sent or received any of ``message_ids`` (an
    inbound ``In-Reply-To`` / ``References``), newest first; None when none did."""
    if not message_ids:
        return None
    return await conn.fetchval(
        """SELECT session_id FROM (
               SELECT session_id, id FROM messages
               WHERE tenant_id = $1 AND channel_id = $2 AND external_id = ANY($3::text[])
               UNION ALL
               SELECT session_id, message_id FROM outbox
               WHERE tenant_id = $1 AND channel_id = $2 AND provider_message_ids && $3::text[]
           ) hits ORDER BY id DESC LIMIT 1""",
        tenant_id, channel_id, message_ids,
    )


async def session_for_email_subject(
    conn: Conn, tenant_id: UUID, channel_id: UUID, contact_id: UUID, subject_key: str,
) -> UUID | None:
    """The open session of the contact on this email channel whose thread has the same
    normalised subject (``thread.subject_key``), newest first."""
    return await conn.fetchval(
        """SELECT id FROM sessions
           WHERE tenant_id = $1 AND channel_id = $2 AND contact_id = $3 AND status <> 'closed'
             AND thread->>'subject_key' = $4
           ORDER BY last_activity_at DESC LIMIT 1""",
        tenant_id, channel_id, contact_id, subject_key,
    )


# ------------------------------------------------------------------ inbox: resolution, CSAT
async def default_resolution(conn: Conn, tenant_id: UUID, session_id: UUID) -> str | None:
    """How the conversation ended, from its messages: ``resolved_by_human`` when an agent wrote
    in it, ``abandoned`` when it waits for a human or the customer's last message has no answer
    (waiting in the inbox or unanswered), ``resolved_by_ai`` otherwise; None when the customer
    never wrote (no conversation to resolve)."""
    row = await conn.fetchrow(
        """SELECT
             EXISTS (SELECT 1 FROM messages WHERE tenant_id = $1 AND session_id = $2 AND sender = 'agent'
                     AND status = 'sent') AS agent_wrote,
             (SELECT status FROM messages WHERE tenant_id = $1 AND session_id = $2 AND sender = 'customer'
              ORDER BY id DESC LIMIT 1) AS last_customer,
             (SELECT status FROM sessions WHERE tenant_id = $1 AND id = $2) AS status""",
        tenant_id, session_id,
    )
    assert row is not None
    if row["agent_wrote"]:
        return "resolved_by_human"
    waiting = row["status"] in ("human_escalated", "human_assigned")
    if waiting or row["last_customer"] in ("inbox", "received"):
        return "abandoned"
    if row["last_customer"] is None:
        return None
    return "resolved_by_ai"


async def mark_first_human_reply(conn: Conn, tenant_id: UUID, session_id: UUID) -> None:
    """Record the first agent message after an escalation (kept once set)."""
    await conn.execute(
        """UPDATE sessions SET first_human_reply_at = now()
           WHERE tenant_id = $1 AND id = $2 AND first_human_reply_at IS NULL AND escalated_at IS NOT NULL""",
        tenant_id, session_id,
    )


async def reopen_session(conn: Conn, tenant_id: UUID, session_id: UUID) -> None:
    """A customer wrote to a closed conversation: open again with the bot, no resolution; an
    unanswered CSAT question is forgotten (the next close asks again)."""
    await conn.execute(
        """UPDATE sessions SET status = 'ai_handled', assignee_id = NULL, closed_at = NULL,
                  resolution = NULL,
                  csat_asked_at = CASE WHEN csat_score IS NULL THEN NULL ELSE csat_asked_at END,
                  updated_at = now(), last_activity_at = now()
           WHERE tenant_id = $1 AND id = $2""",
        tenant_id, session_id,
    )


async def csat_state(conn: Conn, tenant_id: UUID, session_id: UUID) -> asyncpg.Record:
    """``csat_asked_at``, ``csat_score``, ``csat_at`` and ``last_activity_at`` of a session.
    Raises SessionNotFound."""
    row = await conn.fetchrow(
        """SELECT csat_asked_at, csat_score, csat_at, last_activity_at, status FROM sessions
           WHERE tenant_id = $1 AND id = $2""", tenant_id, session_id)
    if row is None:
        raise SessionNotFound(f"no session {session_id} in this tenant")
    return row


async def has_customer_messages(conn: Conn, tenant_id: UUID, session_id: UUID,
                                senders: tuple[str, ...] = ("customer",)) -> bool:
    """Whether the customer (or any of ``senders``) wrote anything in the session."""
    return bool(await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM messages
                          WHERE tenant_id = $1 AND session_id = $2 AND sender = ANY($3::text[]))""",
        tenant_id, session_id, list(senders)))


async def csat_session_for_reply(
    conn: Conn, tenant_id: UUID, channel_id: UUID, contact_id: UUID, within_hours: float,
) -> UUID | None:
    """The contact's closed session on a messaging channel whose CSAT question (asked within
    ``within_hours``) is still unanswered: a bare score sent now answers it there."""
    return await conn.fetchval(
        """SELECT id FROM sessions
           WHERE tenant_id = $1 AND channel_id = $2 AND contact_id = $3 AND status = 'closed'
             AND csat_asked_at > now() - make_interval(secs => $4) AND csat_score IS NULL
           ORDER BY csat_asked_at DESC LIMIT 1""",
        tenant_id, channel_id, contact_id, within_hours * 3600.0,
    )
