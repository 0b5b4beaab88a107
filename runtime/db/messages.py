"""Messages: customer messages (idempotent), answers with reserved ids, history (plain SQL).

Message ids are bigint identities; an AI answer's id is reserved up front (:func:`reserve_answer_id`)
and recorded on the customer message, so its streamed tokens carry it and an actor restarted
mid-stream knows which answer to mark ``aborted``; the row is written only when the answer is
complete.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.errors import SessionNotFound

MESSAGE_COLUMNS = """m.id, m.session_id, m.sender, m.text, m.attachments, m.client_msg_id,
    m.external_id, m.reply_to, m.status, m.agent_id, m.intent, m.confidence, m.latency_ms,
    m.prompt_tokens, m.completion_tokens, m.backend, m.source_chunk_ids, m.created_at,
    m.answer_id, m.strategy, m.supported_sentences, m.removed_sentences, u.name AS agent_name"""


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
    """A fresh message id (gaps are harmless)."""
    return int(await conn.fetchval("SELECT nextval(pg_get_serial_sequence('messages', 'id'))"))


async def reserve_answer_id(conn: Conn, tenant_id: UUID, customer_message_id: int) -> tuple[int, int | None]:
    """Reserve the id of the answer about to stream to ``customer_message_id`` and record it.

    Returns (new answer id, the previously recorded answer id or None). A previous id means an
    earlier attempt streamed under it and never finished (an actor killed mid-stream, a turn
    retried after a Redis/Postgres failure): the caller marks it ``aborted`` on the stream.
    """
    row = await conn.fetchrow(
        """UPDATE messages m SET answer_id = nextval(pg_get_serial_sequence('messages', 'id'))
           FROM (SELECT id, answer_id FROM messages WHERE tenant_id = $1 AND id = $2
                 FOR UPDATE) old
           WHERE m.id = old.id RETURNING m.answer_id, old.answer_id AS previous""",
        tenant_id, customer_message_id,
    )
    if row is None:
        raise SessionNotFound(f"no message {customer_message_id} in this tenant")
    return int(row["answer_id"]), row["previous"]


async def insert_message(
    conn: Conn, tenant_id: UUID, session_id: UUID, channel_id: UUID, sender: str,
    text: str, *, message_id: int | None = None, reply_to: int | None = None,
    status: str = "sent", agent_id: UUID | None = None, intent: str | None = None,
    confidence: float | None = None, latency_ms: int | None = None,
    prompt_tokens: int | None = None, completion_tokens: int | None = None,
    backend: str | None = None, source_chunk_ids: list[int] | None = None,
    strategy: str | None = None, supported_sentences: int | None = None,
    removed_sentences: int | None = None,
) -> asyncpg.Record:
    """Insert an ai/agent/system message (with a reserved id when given); returns the row.

    strategy: ``generative`` | ``extractive`` for AI answers; supported/removed_sentences: what
    the grounding check kept and removed.
    """
    values: dict[str, Any] = {
        "tenant_id": tenant_id, "session_id": session_id, "channel_id": channel_id,
        "sender": sender, "text": text, "reply_to": reply_to, "status": status,
        "agent_id": agent_id, "intent": intent, "confidence": confidence,
        "latency_ms": latency_ms, "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens, "backend": backend,
        "source_chunk_ids": list(source_chunk_ids or []), "strategy": strategy,
        "supported_sentences": supported_sentences, "removed_sentences": removed_sentences,
    }
    if message_id is not None:
        values["id"] = message_id
    cols = list(values)
    override = "OVERRIDING SYSTEM VALUE" if message_id is not None else ""
    row = await conn.fetchrow(
        f"""INSERT INTO messages ({", ".join(cols)}) {override}
            VALUES ({", ".join(f"${i + 1}" for i in range(len(cols)))})
            RETURNING id, session_id, sender, text, reply_to, status, agent_id, intent,
                      source_chunk_ids, strategy, created_at""",
        *values.values(),
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


async def get_customer_message(
    conn: Conn, tenant_id: UUID, session_id: UUID, message_id: int
) -> asyncpg.Record | None:
    """A customer message's id, text, attachments, status and in-flight answer id, or None."""
    return await conn.fetchrow(
        """SELECT id, text, attachments, status, answer_id FROM messages
           WHERE tenant_id = $1 AND session_id = $2 AND id = $3 AND sender = 'customer'""",
        tenant_id, session_id, message_id,
    )


async def close_inbox_messages(conn: Conn, tenant_id: UUID, session_id: UUID) -> None:
    """An agent replied: the session's customer messages waiting in the inbox are answered."""
    await conn.execute(
        """UPDATE messages SET status = 'answered' WHERE tenant_id = $1 AND session_id = $2
           AND sender = 'customer' AND status = 'inbox'""",
        tenant_id, session_id,
    )


async def sessions_with_stale_messages(
    conn: Conn, older_than_s: float, limit: int = 100
) -> list[asyncpg.Record]:
    """(tenant_id, session_id) of sessions holding a customer message still ``received`` after
    ``older_than_s`` seconds: no actor is answering it (the Timekeeper re-activates them)."""
    return await conn.fetch(
        """SELECT DISTINCT tenant_id, session_id FROM messages
           WHERE sender = 'customer' AND status = 'received'
             AND created_at < now() - make_interval(secs => $1)
           LIMIT $2""",
        older_than_s, limit,
    )


async def unanswered_customer_messages(
    conn: Conn, tenant_id: UUID, session_id: UUID
) -> list[asyncpg.Record]:
    """Customer messages still ``received`` (not answered, not sent to the inbox), in order."""
    return await conn.fetch(
        """SELECT id, session_id, sender, text, attachments, client_msg_id, status, answer_id,
                  created_at
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




async def external_message_exists(conn: Conn, channel_id: UUID, external_id: str) -> bool:
    """True when the channel already stored the provider message ``external_id`` (a duplicate
    webhook delivery)."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM messages WHERE channel_id = $1 AND external_id = $2)",
        channel_id, external_id,
    ))


async def settle_customer_message(
    conn: Conn, tenant_id: UUID, message_id: int, status: str, intent: str
) -> None:
    """Mark a customer message handled without a turn (``status``, e.g. answered) and why
    (``intent``, e.g. opt_out): no model sees it."""
    await conn.execute(
        "UPDATE messages SET status = $3, intent = $4 WHERE tenant_id = $1 AND id = $2",
        tenant_id, message_id, status, intent,
    )


INBOUND_CHANNEL = "inbound"
"""Postgres LISTEN/NOTIFY channel: a webhook stored a customer message (payload
``<tenant_id>:<session_id>``, delivered at commit); the Timekeeper hands it to the session's actor."""


async def notify_inbound(conn: Conn, tenant_id: UUID, session_id: UUID) -> None:
    """Announce, at commit, a stored customer message waiting for its session's actor."""
    await conn.execute("SELECT pg_notify($1, $2)", INBOUND_CHANNEL, f"{tenant_id}:{session_id}")
