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
    o.created_at, o.sent_at, o.parts_sent, o.provider_message_ids, o.delivery_status,
    o.delivery_status_at, o.delivery_error, o.helpdesk_id"""

NOTIFY_CHANNEL = "outbox"
"""Postgres LISTEN/NOTIFY channel: a row was enqueued (delivered at commit); senders wake at once."""


async def enqueue(
    conn: Conn, tenant_id: UUID, channel_id: UUID, session_id: UUID | None, message_id: int | None,
    recipient: str | None, body: dict[str, Any],
) -> int:
    """Add a row to send; returns its id. Call inside the transaction that stores the message.

    body: what the sender needs, e.g. ``{"text": "...", "sender": "ai"}``.
    """
    row_id = int(await conn.fetchval(
        """INSERT INTO outbox (tenant_id, channel_id, session_id, message_id, recipient, body)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        tenant_id, channel_id, session_id, message_id, recipient, body,
    ))
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(row_id))
    return row_id


async def claim_due(
    conn: Conn, channel_types: list[str], limit: int, lease_s: float, *, with_credentials: bool = False,
) -> list[asyncpg.Record]:
    """Claim up to ``limit`` due rows of the given channel types for ``lease_s`` seconds.

    A row is due when it is pending (or its sending lease expired) and its ``next_attempt_at`` has
    passed, and no earlier row of its session is still unsent. Returns the claimed rows (status
    ``sending``, ``attempts`` incremented) with the channel's ``channel_type``, the session's
    ``thread`` and the customer's last message time ``last_customer_at``, oldest first. Rows for
    help-desk destinations (``helpdesk_id``) are neither claimed here nor wait for.
    with_credentials: only rows of channels that have stored credentials (a sender cannot send
    for the others; their rows wait, visible in the outbox, until the channel is set up).
    """
    return await conn.fetch(
        f"""WITH due AS (
               SELECT o.id FROM outbox o JOIN channels ch ON ch.id = o.channel_id
               WHERE ch.type = ANY($1::text[]) AND (NOT $4 OR ch.secrets ? 'enc')
                 AND o.next_attempt_at <= now()
                 AND (o.status = 'pending' OR (o.status = 'sending' AND o.lease_until < now()))
                 AND NOT EXISTS (
                     SELECT 1 FROM outbox e WHERE e.session_id = o.session_id AND e.id < o.id
                       AND e.helpdesk_id IS NULL AND e.status IN ('pending', 'sending'))
               ORDER BY o.id LIMIT $2 FOR UPDATE OF o SKIP LOCKED)
            UPDATE outbox o SET status = 'sending', attempts = o.attempts + 1,
                   lease_until = now() + make_interval(secs => $3), updated_at = now()
            FROM due, channels ch WHERE o.id = due.id AND ch.id = o.channel_id
            RETURNING {OUTBOX_COLUMNS}, ch.type AS channel_type,
                (SELECT s.thread FROM sessions s WHERE s.id = o.session_id) AS thread,
                (SELECT max(m.created_at) FROM messages m
                 WHERE m.session_id = o.session_id AND m.sender = 'customer') AS last_customer_at""",
        channel_types, limit, lease_s, with_credentials,
    )


async def record_part(conn: Conn, outbox_id: int, provider_message_id: str | None, lease_s: float) -> bool:
    """One piece of a split row was accepted: count it (a retry resumes after it), keep the
    provider's id and extend the lease. True if this sender still held the row."""
    res = await conn.execute(
        """UPDATE outbox SET parts_sent = parts_sent + 1,
               provider_message_ids = provider_message_ids || COALESCE(ARRAY[$2::text], '{}'),
               provider_message_id = COALESCE(provider_message_id, $2),
               lease_until = now() + make_interval(secs => $3), updated_at = now()
           WHERE id = $1 AND status = 'sending'""",
        outbox_id, provider_message_id, lease_s,
    )
    return res.endswith(" 1")


async def mark_sent(conn: Conn, outbox_id: int, provider_message_id: str | None = None) -> bool:
    """The provider accepted the row (every piece); True if this sender still held it.
    provider_message_id: set when not already recorded by :func:`record_part`."""
    res = await conn.execute(
        """UPDATE outbox SET status = 'sent', sent_at = now(), lease_until = NULL,
               provider_message_id = COALESCE(provider_message_id, $2), last_error = NULL,
               updated_at = now()
           WHERE id = $1 AND status = 'sending'""",
        outbox_id, provider_message_id,
    )
    return res.endswith(" 1")


async def record_delivery_status(
    conn: Conn, channel_id: UUID, provider_message_id: str, status: str, error: str | None,
    at: datetime | None,
) -> int:
    """A provider's delivery report (sent/delivered/read/failed) on the row that sent
    ``provider_message_id`` on ``channel_id``; an older report never overwrites a newer one.
    Returns the number of rows updated (0: not ours)."""
    res = await conn.execute(
        """UPDATE outbox SET delivery_status = $3, delivery_error = $4,
               delivery_status_at = COALESCE($5, now()), updated_at = now()
           WHERE channel_id = $1 AND provider_message_ids @> ARRAY[$2::text]
             AND (delivery_status_at IS NULL OR delivery_status_at <= COALESCE($5, now()))""",
        channel_id, provider_message_id, status, error, at,
    )
    return int(res.split()[-1])


async def get_row(conn: Conn, tenant_id: UUID, outbox_id: int) -> asyncpg.Record | None:
    """One outbox row of the tenant, or None."""
    return await conn.fetchrow(
        f"SELECT {OUTBOX_COLUMNS} FROM outbox o WHERE o.tenant_id = $1 AND o.id = $2", tenant_id, outbox_id,
    )


async def counts(conn: Conn, tenant_id: UUID | None = None) -> dict[str, int]:
    """Rows per status (all tenants when ``tenant_id`` is None)."""
    rows = await conn.fetch(
        """SELECT status, count(*) AS n FROM outbox WHERE ($1::uuid IS NULL OR tenant_id = $1)
           GROUP BY status""",
        tenant_id,
    )
    return {r["status"]: int(r["n"]) for r in rows}


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
    conn: Conn, tenant_id: UUID, *, outbox_id: int | None = None, channel_id: UUID | None = None,
    helpdesk_id: UUID | None = None,
) -> int:
    """Put dead rows back to ``pending`` now (one row, or all of a channel or of a help-desk
    destination); returns how many. Pieces already accepted stay counted, so a re-drive sends
    only the rest."""
    res = await conn.execute(
        """UPDATE outbox SET status = 'pending', attempts = 0, next_attempt_at = now(),
               updated_at = now()
           WHERE tenant_id = $1 AND status = 'dead'
             AND ($2::bigint IS NULL OR id = $2) AND ($3::uuid IS NULL OR channel_id = $3)
             AND ($4::uuid IS NULL OR helpdesk_id = $4)""",
        tenant_id, outbox_id, channel_id, helpdesk_id,
    )
    n = int(res.split()[-1])
    if n:
        await conn.execute("SELECT pg_notify($1, 'redrive')", NOTIFY_CHANNEL)
    return n
