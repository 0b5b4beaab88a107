"""The inbox's reads and its own rows: the queue, a conversation's history with its sources and
handoff context, private notes and labels (plain SQL, every query tenant-scoped).

Notes live in ``session_notes``, never in ``messages``: nothing that delivers to a customer
(the widget's message list and event stream, the outbox) reads that table.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.db.inbox_teams import Scope
from runtime.errors import NotFound

# Waiting: since the escalation while nobody claimed it; once claimed, since the oldest customer
# message still waiting in the inbox for an agent's reply.
QUEUE_SQL = """
SELECT s.id, s.status, s.channel_id, ch.type AS channel_type, ch.name AS channel_name,
       s.contact_id, ct.name AS contact_name, ct.email AS contact_email, ct.phone AS contact_phone,
       s.assignee_id, u.name AS assignee_name, s.team_id, s.escalation_reason, s.escalation_question,
       s.escalated_at, s.created_at, s.last_activity_at, s.resolution, s.csat_score,
       lm.id AS last_id, lm.sender AS last_sender, lm.text AS last_text, lm.created_at AS last_at,
       CASE WHEN s.status = 'human_escalated' THEN s.escalated_at
            WHEN s.status = 'human_assigned' THEN (
                SELECT min(w.created_at) FROM messages w WHERE w.tenant_id = s.tenant_id
                AND w.session_id = s.id AND w.sender = 'customer' AND w.status = 'inbox')
       END AS waiting_since,
       sla.due_at AS sla_due_at, esc.priority, esc.sla_breached_at, esc.signal,
       COALESCE((SELECT array_agg(l.label ORDER BY l.label) FROM session_labels l
                 WHERE l.session_id = s.id AND l.tenant_id = s.tenant_id), '{}') AS labels
FROM sessions s
JOIN channels ch ON ch.id = s.channel_id AND ch.tenant_id = s.tenant_id
LEFT JOIN contacts ct ON ct.id = s.contact_id AND ct.tenant_id = s.tenant_id
LEFT JOIN users u ON u.id = s.assignee_id AND u.tenant_id = s.tenant_id
LEFT JOIN timers sla ON sla.session_id = s.id AND sla.kind = 'sla' AND sla.tenant_id = s.tenant_id
LEFT JOIN LATERAL (SELECT m.id, m.sender, m.text, m.created_at FROM messages m
                   WHERE m.tenant_id = s.tenant_id AND m.session_id = s.id
                     AND m.status NOT IN ('aborted', 'failed')
                   ORDER BY m.id DESC LIMIT 1) lm ON TRUE
LEFT JOIN LATERAL (SELECT e.priority, e.sla_breached_at, e.signal FROM escalations e
                   WHERE e.tenant_id = s.tenant_id AND e.session_id = s.id
                   ORDER BY e.created_at DESC LIMIT 1) esc ON TRUE
"""


async def queue(
    conn: Conn, tenant_id: UUID, scope: Scope, *, statuses: list[str] | None, channel_id: UUID | None,
    channel_type: str | None, assignee: str | None, me: UUID, label: str | None, team_id: UUID | None,
    limit: int,
) -> list[asyncpg.Record]:
    """The inbox's conversations in ``scope``: escalated first (oldest waiting first), then the
    rest by latest activity. assignee: ``me``, ``none`` or a user id (as text); statuses: None
    means every open one (not closed)."""
    args: list[Any] = [tenant_id, statuses, channel_id, channel_type, label, team_id, limit]
    where = ["s.tenant_id = $1",
             "($2::text[] IS NULL AND s.status <> 'closed' OR s.status = ANY($2::text[]))",
             "($3::uuid IS NULL OR s.channel_id = $3)", "($4::text IS NULL OR ch.type = $4)",
             "($5::text IS NULL OR EXISTS (SELECT 1 FROM session_labels l WHERE l.session_id = s.id "
             "AND l.tenant_id = s.tenant_id AND l.label = $5))",
             "($6::uuid IS NULL OR s.team_id = $6)"]
    if assignee == "none":
        where.append("s.assignee_id IS NULL")
    elif assignee is not None:
        args.append(me if assignee == "me" else UUID(assignee))
        where.append(f"s.assignee_id = ${len(args)}")
    clause, extra = scope.sql(len(args) + 1)
    where.append(clause)
    args.extend(extra)
    return await conn.fetch(
        QUEUE_SQL + " WHERE " + " AND ".join(where) + """
        ORDER BY (s.status = 'human_escalated') DESC,
                 CASE WHEN s.status = 'human_escalated' THEN s.escalated_at END ASC NULLS LAST,
                 s.last_activity_at DESC
        LIMIT $7""", *args)


async def queue_row(conn: Conn, tenant_id: UUID, session_id: UUID) -> asyncpg.Record:
    """One conversation as a queue row. Raises NotFound."""
    row = await conn.fetchrow(QUEUE_SQL + " WHERE s.tenant_id = $1 AND s.id = $2", tenant_id, session_id)
    if row is None:
        raise NotFound(f"no session {session_id} in this tenant")
    return row


async def sources_for(conn: Conn, tenant_id: UUID, chunk_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The cited chunks by id: ``chunk_id``, ``document_id``, ``source`` (URL or file), ``title``,
    ``section``, ``page`` and a ``snippet`` (the chunk's first 300 characters). Chunks deleted
    since are absent."""
    if not chunk_ids:
        return {}
    rows = await conn.fetch(
        """SELECT c.id, c.document_id, d.source, COALESCE(NULLIF(c.title, ''), d.title) AS title,
                  NULLIF(c.section, '') AS section, c.page, left(c.text, 300) AS snippet
           FROM kb_chunks c JOIN kb_documents d ON d.id = c.document_id AND d.tenant_id = $1
           WHERE c.tenant_id = $1 AND c.id = ANY($2::bigint[])""",
        tenant_id, sorted(set(chunk_ids)))
    return {int(r["id"]): {"chunk_id": int(r["id"]), "document_id": str(r["document_id"]),
                           "source": r["source"], "title": r["title"], "section": r["section"],
                           "page": r["page"], "snippet": r["snippet"]} for r in rows}


async def handoff_facts(conn: Conn, tenant_id: UUID, session_id: UUID) -> dict[str, Any]:
    """What the handoff context is made of: the latest escalation (reason, signal, question,
    priority, when), the captured contact and leads, and every customer/AI message (for the
    summary)."""
    esc = await conn.fetchrow(
        """SELECT id, reason, signal, question, priority, created_at, claimed_at, sla_breached_at
           FROM escalations WHERE tenant_id = $1 AND session_id = $2 ORDER BY created_at DESC LIMIT 1""",
        tenant_id, session_id)
    contact = await conn.fetchrow(
        """SELECT ct.id, ct.name, ct.email, ct.phone, ct.external_ref FROM sessions s
           JOIN contacts ct ON ct.id = s.contact_id AND ct.tenant_id = s.tenant_id
           WHERE s.tenant_id = $1 AND s.id = $2""", tenant_id, session_id)
    leads = await conn.fetch(
        """SELECT email, name, phone, topic, question, created_at FROM leads
           WHERE tenant_id = $1 AND session_id = $2 ORDER BY created_at""", tenant_id, session_id)
    return {"escalation": esc, "contact": contact, "leads": leads}


# ------------------------------------------------------------------ notes
async def add_note(conn: Conn, tenant_id: UUID, session_id: UUID, author_id: UUID,
                   text: str) -> asyncpg.Record:
    """Add a private note to a conversation; returns it (with the author's name)."""
    row = await conn.fetchrow(
        """WITH n AS (INSERT INTO session_notes (tenant_id, session_id, author_id, text)
                      VALUES ($1, $2, $3, $4) RETURNING id, session_id, author_id, text, created_at)
           SELECT n.*, u.name AS author_name FROM n LEFT JOIN users u ON u.id = n.author_id""",
        tenant_id, session_id, author_id, text)
    assert row is not None
    return row


async def list_notes(conn: Conn, tenant_id: UUID, session_id: UUID) -> list[asyncpg.Record]:
    """The conversation's private notes, oldest first."""
    return await conn.fetch(
        """SELECT n.id, n.session_id, n.author_id, u.name AS author_name, n.text, n.created_at
           FROM session_notes n LEFT JOIN users u ON u.id = n.author_id
           WHERE n.tenant_id = $1 AND n.session_id = $2 ORDER BY n.id""", tenant_id, session_id)


# ------------------------------------------------------------------ labels
async def add_label(conn: Conn, tenant_id: UUID, session_id: UUID, label: str, by: UUID) -> list[str]:
    """Label a conversation (idempotent); returns its labels."""
    await conn.execute(
        """INSERT INTO session_labels (tenant_id, session_id, label, created_by) VALUES ($1, $2, $3, $4)
           ON CONFLICT DO NOTHING""", tenant_id, session_id, label, by)
    return await labels_of(conn, tenant_id, session_id)


async def remove_label(conn: Conn, tenant_id: UUID, session_id: UUID, label: str) -> list[str]:
    """Remove a label (absent: nothing happens); returns the conversation's labels."""
    await conn.execute("DELETE FROM session_labels WHERE tenant_id = $1 AND session_id = $2 AND label = $3",
                       tenant_id, session_id, label)
    return await labels_of(conn, tenant_id, session_id)


async def labels_of(conn: Conn, tenant_id: UUID, session_id: UUID) -> list[str]:
    """A conversation's labels, sorted."""
    rows = await conn.fetch(
        "SELECT label FROM session_labels WHERE tenant_id = $1 AND session_id = $2 ORDER BY label",
        tenant_id, session_id)
    return [r["label"] for r in rows]


async def tenant_labels(conn: Conn, tenant_id: UUID) -> list[asyncpg.Record]:
    """Labels in use in the tenant with how many conversations carry each."""
    return await conn.fetch(
        """SELECT label, count(*) AS sessions FROM session_labels WHERE tenant_id = $1
           GROUP BY label ORDER BY label""", tenant_id)


# ------------------------------------------------------------------ canned responses
CANNED_COLUMNS = "id, shortcut, title, text, created_by, created_at, updated_at"


async def list_canned(conn: Conn, tenant_id: UUID) -> list[asyncpg.Record]:
    """The tenant's canned responses by shortcut."""
    return await conn.fetch(
        f"SELECT {CANNED_COLUMNS} FROM canned_responses WHERE tenant_id = $1 ORDER BY shortcut", tenant_id)


async def save_canned(conn: Conn, tenant_id: UUID, canned_id: UUID | None, shortcut: str | None,
                      title: str | None, text: str | None, by: UUID) -> asyncpg.Record:
    """Create (``canned_id`` None; all fields given) or update a canned response. Raises
    NotFound, and asyncpg's UniqueViolationError for a shortcut in use (the caller says so)."""
    if canned_id is None:
        row = await conn.fetchrow(
            f"""INSERT INTO canned_responses (tenant_id, shortcut, title, text, created_by)
                VALUES ($1, $2, $3, $4, $5) RETURNING {CANNED_COLUMNS}""",
            tenant_id, shortcut, title, text, by)
    else:
        row = await conn.fetchrow(
            f"""UPDATE canned_responses SET shortcut = COALESCE($3, shortcut), title = COALESCE($4, title),
                       text = COALESCE($5, text), updated_at = now()
                WHERE tenant_id = $1 AND id = $2 RETURNING {CANNED_COLUMNS}""",
            tenant_id, canned_id, shortcut, title, text)
    if row is None:
        raise NotFound(f"no canned response {canned_id} in this tenant")
    return row


async def delete_canned(conn: Conn, tenant_id: UUID, canned_id: UUID) -> None:
    """Delete a canned response. Raises NotFound."""
    res = await conn.execute("DELETE FROM canned_responses WHERE tenant_id = $1 AND id = $2",
                             tenant_id, canned_id)
    if not res.endswith(" 1"):
        raise NotFound(f"no canned response {canned_id} in this tenant")
