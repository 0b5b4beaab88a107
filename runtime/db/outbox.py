"""The outbox: messages to send on non-widget channels, and their delivery state (plain SQL).

A row is written in the same transaction as the message it carries (DESIGN.md, Channels and
delivery), so an answer is never stored without its send, nor sent without being stored. Senders
claim due rows with ``FOR UPDATE SKIP LOCKED`` and a lease (two senders never hold one row; a
sender that dies loses its lease and the row is claimed again), keep per-session order (a row is
not claimed while an earlier row of its session is unsent), retry with backoff, and finally mark
a row ``dead``: a dead letter that an agent can inspect and re-drive.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn

OUTBOX_COLUMNS = """o.id, o.tenant_id, o.channel_id, o.session_id, o.message_id, o.recipient, o.body,
    o.status, o.attempts, o.next_attempt_at, o.lease_until, o.last_error, o.provider_message_id,
    o.created_at, o.sent_at"""


async def enqueue(
    conn: Conn, tenant_id: UUID, channel_id: UUID, session_id: UUID | None, message_id: int | None,
    recipient: str | None, body: dict[str, Any],
) -> int:
    """Add a row to send; returns its id. Call inside the transaction that stores the message.

    body: what the sender needs, e.g. ``{"text": "...", "sender": "ai"}``.
    """
    return int(await conn.fetchval(
        """INSERT INTO outbox (tenant_id, channel_id, session_id, message_id, recipient, body)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        tenant_id, channel_id, session_id, message_id, recipient, body,
    ))


async def claim_due(
    conn: Conn, channel_types: list[str], limit: int, lease_s: float
) -> list[asyncpg.Record]:
    """Claim up to ``limit`` due rows of the given channel types for ``lease_s`` seconds.

    A row is due when it is pending (or its sending lease expired) and its ``next_attempt_at`` has
    passed, and no earlier row of its session is still unsent. Returns the claimed rows (status
    ``sending``, ``attempts`` incremented) with the channel's ``channel_type``, oldest first.
    """
    return await conn.fetch(
        f"""WITH due AS (
               SELECT o.id FROM outbox o JOIN channels ch ON ch.id = o.channel_id
               WHERE ch.type = ANY($1::text[])
                 AND o.next_attempt_at <= now()
                 AND (o.status = 'pending' OR (o.status = 'sending' AND o.lease_until < now()))
                 AND NOT EXISTS (
                     SELECT 1 FROM outbox e WHERE e.session_id = o.session_id AND e.id < o.id
                       AND e.status IN ('pending', 'sending'))
               ORDER BY o.id LIMIT $2 FOR UPDATE OF o SKIP LOCKED)
            UPDATE outbox o SET status = 'sending', attempts = o.attempts + 1,
                   lease_until = now() + make_interval(secs => $3), updated_at = now()
            FROM due, channels ch WHERE o.id = due.id AND ch.id = o.channel_id
            RETURNING {OUTBOX_COLUMNS}, ch.type AS channel_type""",
        channel_types, limit, lease_s,
    )


async def mark_sent(conn: Conn, outbox_id: int, provider_message_id: str | None) -> bool:
    """The provider accepted the row; True if this sender still held it."""
    res = await conn.execute(
        """UPDATE outbox SET status = 'sent', sent_at = now(), lease_until = NULL,
               provider_message_id = $2, last_error = NULL, updated_at = now()
           WHERE id = $1 AND status = 'sending'""",
        outbox_id, provider_message_id,
    )
    return res.endswith(" 1")


async def mark_failed(conn: Conn, outbox_id: int, error: str, retry_at: datetime | None) -> None:
    """A failed attempt: ``pending`` again at ``retry_at``, or ``dead`` when ``retry_at`` is None."""
    await conn.execute(
        """UPDATE outbox SET status = CASE WHEN $3::timestamptz IS NULL THEN 'dead' ELSE 'pending' END,
               next_attempt_at = COALESCE($3, next_attempt_at), lease_until = NULL,
               last_error = left($2, 2000), updated_at = now()
           WHERE id = $1 AND status = 'sending'""",
        outbox_id, error, retry_at,
    )


async def list_rows(
    conn: Conn, tenant_id: UUID, *, status: str | None = None, channel_id: UUID | None = None,
    session_id: UUID | None = None, limit: int = 100,
) -> list[asyncpg.Record]:
    """The tenant's outbox rows (dead letters with ``status='dead'``), oldest first."""
    return await conn.fetch(
        f"""SELECT {OUTBOX_COLUMNS} FROM outbox o
            WHERE o.tenant_id = $1 AND ($2::text IS NULL OR o.status = $2)
              AND ($3::uuid IS NULL OR o.channel_id = $3) AND ($4::uuid IS NULL OR o.session_id = $4)
            ORDER BY o.id LIMIT $5""",
        tenant_id, status, channel_id, session_id, limit,
    )


async def redrive(
    conn: Conn, tenant_id: UUID, *, outbox_id: int | None = None, channel_id: UUID | None = None
) -> int:
    """Put dead rows back to ``pending`` now (one row, or all of a channel); returns how many."""
    res = await conn.execute(
        """UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = now(),
               updated_at = now()
           WHERE tenant_id = $1 AND status = 'dead'
             AND ($2::bigint IS NULL OR id = $2) AND ($3::uuid IS NULL OR channel_id = $3)""",
        tenant_id, outbox_id, channel_id,
    )
    return int(res.split()[-1])
