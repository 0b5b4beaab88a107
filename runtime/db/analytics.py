"""The owner's numbers (issue 14), computed in SQL from the system of record: sessions, messages,
escalations, leads and contacts. Nothing is stored twice; every query filters on ``tenant_id``.

Definitions (one conversation = one session; it counts on the day its session was created, in
the time zone ``tz``, UTC by default, since tenants have no time zone of their own yet):

- visitor: a session opened (a widget session, or the first message of a contact on a
  messaging channel); chatted: the session has a customer message; conversation: chatted, or
  handed to a human without a message (the "Talk to a human" button).
- outcome, exactly one per conversation (the daily stacked bars):
  ``abandoned`` (``sessions.resolution``), ``human`` (``resolved_by_human``), ``ai`` (handled fully
  by the AI: never escalated, assigned or answered by an agent, and not closed as abandoned or by a
  human) and ``other`` (a human took part but it is not, or not yet, resolved by one: waiting for an
  agent, with an agent, or handed back to the AI).
- escalated: handed to a human (``sessions.escalated_at`` set), whatever came next;
  handoff rate = escalated / conversations.
- leads: ``leads`` rows created in the range (by their own time); the funnel's ``leads`` counts
  the range's sessions that produced one.
- email captured: a chatted session whose contact has an email address or that produced a lead.
- AI first response: a customer message to the AI's first reply to it (``messages.reply_to``),
  seconds, over the customer messages of the range's sessions that the AI answered.
- human first response: ``escalated_at`` to ``first_human_reply_at``, seconds.
- CSAT: the range's sessions' ``csat_score`` (1-5).
Percentiles are ``percentile_cont`` (linear interpolation).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn

# One row per session of the range with everything the aggregates need.
# $1 tenant, $2 start (inclusive), $3 end (exclusive), $4 time zone, $5 channel type or NULL.
_SESSIONS = """
WITH range_sessions AS (
    SELECT s.id, s.contact_id, c.type AS channel, (s.created_at AT TIME ZONE $4)::date AS day,
           s.escalated_at, s.first_human_reply_at, s.resolution, s.csat_score,
           s.assigned_at IS NOT NULL AS assigned
    FROM sessions s
    JOIN channels c ON c.id = s.channel_id
    WHERE s.tenant_id = $1 AND s.created_at >= $2 AND s.created_at < $3
      AND ($5::text IS NULL OR c.type = $5)
), senders AS (
    SELECT m.session_id, bool_or(m.sender = 'customer') AS chatted,
           bool_or(m.sender = 'agent') AS agent_replied
    FROM messages m
    WHERE m.tenant_id = $1 AND m.session_id IN (SELECT id FROM range_sessions)
      AND m.sender IN ('customer', 'agent') AND m.created_at >= $2
    GROUP BY m.session_id
), lead_sessions AS (
    SELECT DISTINCT l.session_id FROM leads l
    WHERE l.tenant_id = $1 AND l.session_id IN (SELECT id FROM range_sessions)
), base AS (
    SELECT r.*, coalesce(m.chatted, false) AS chatted,
           coalesce(m.agent_replied, false) AS agent_replied,
           ls.session_id IS NOT NULL AS has_lead,
           (ct.email IS NOT NULL AND btrim(ct.email) <> '') AS contact_email
    FROM range_sessions r
    LEFT JOIN senders m ON m.session_id = r.id
    LEFT JOIN lead_sessions ls ON ls.session_id = r.id
    LEFT JOIN contacts ct ON ct.id = r.contact_id AND ct.tenant_id = $1
), per_session AS (
    SELECT b.*,
           (b.chatted OR b.escalated_at IS NOT NULL) AS conversation,
           CASE WHEN b.resolution = 'abandoned' THEN 'abandoned'
                WHEN b.resolution = 'resolved_by_human' THEN 'human'
                WHEN b.escalated_at IS NULL AND NOT b.assigned AND NOT b.agent_replied THEN 'ai'
                ELSE 'other' END AS outcome,
           CASE WHEN b.first_human_reply_at >= b.escalated_at
                THEN extract(epoch FROM b.first_human_reply_at - b.escalated_at) END AS human_frt_s
    FROM base b
)
"""

_FIGURES = _SESSIONS + """
SELECT channel, day,
       count(*) AS visitors,
       count(*) FILTER (WHERE chatted) AS chatted,
       count(*) FILTER (WHERE chatted AND (contact_email OR has_lead)) AS email_captured,
       count(*) FILTER (WHERE chatted AND has_lead) AS lead_sessions,
       count(*) FILTER (WHERE conversation) AS conversations,
       count(*) FILTER (WHERE conversation AND outcome = 'ai') AS handled_by_ai,
       count(*) FILTER (WHERE conversation AND escalated_at IS NOT NULL) AS escalated,
       count(*) FILTER (WHERE conversation AND outcome = 'human') AS resolved_by_human,
       count(*) FILTER (WHERE conversation AND outcome = 'abandoned') AS abandoned,
       count(*) FILTER (WHERE conversation AND outcome = 'other') AS other,
       count(human_frt_s) AS human_frt_n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY human_frt_s) AS human_frt_p50,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY human_frt_s) AS human_frt_p90,
       count(csat_score) AS csat_n,
       avg(csat_score)::float8 AS csat_avg,
       count(*) FILTER (WHERE csat_score = 1) AS csat_1,
       count(*) FILTER (WHERE csat_score = 2) AS csat_2,
       count(*) FILTER (WHERE csat_score = 3) AS csat_3,
       count(*) FILTER (WHERE csat_score = 4) AS csat_4,
       count(*) FILTER (WHERE csat_score = 5) AS csat_5,
       CASE WHEN GROUPING(channel) = 0 THEN 'channel' WHEN GROUPING(day) = 0 THEN 'day'
            ELSE 'total' END AS grouping
FROM per_session
GROUP BY GROUPING SETS ((channel), (day), ())
"""

# The AI's first reply to each customer message of the range's sessions. Messages are narrowed
# by tenant and time (a session's messages come after it starts) before the reply join.
_AI_FRT = """
WITH range_sessions AS (
    SELECT s.id, c.type AS channel
    FROM sessions s JOIN channels c ON c.id = s.channel_id
    WHERE s.tenant_id = $1 AND s.created_at >= $2 AND s.created_at < $3
      AND ($4::text IS NULL OR c.type = $4)
), replies AS (
    SELECT r.channel, extract(epoch FROM min(a.created_at) - q.created_at) AS frt_s
    FROM range_sessions r
    JOIN messages q ON q.session_id = r.id AND q.tenant_id = $1 AND q.sender = 'customer'
                   AND q.created_at >= $2
    JOIN messages a ON a.reply_to = q.id AND a.session_id = r.id AND a.tenant_id = $1
                   AND a.sender = 'ai' AND a.created_at >= $2
    GROUP BY r.channel, q.id, q.created_at
)
SELECT channel, count(*) AS n,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY frt_s) AS p50,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY frt_s) AS p90,
       GROUPING(channel) = 1 AS is_total
FROM replies
GROUP BY GROUPING SETS ((channel), ())
"""

# Leads by their own creation time; a lead whose session is gone counts in the total only.
_LEADS = """
SELECT c.type AS channel, (l.created_at AT TIME ZONE $4)::date AS day, count(*) AS leads
FROM leads l
LEFT JOIN sessions s ON s.id = l.session_id AND s.tenant_id = l.tenant_id
LEFT JOIN channels c ON c.id = s.channel_id
WHERE l.tenant_id = $1 AND l.created_at >= $2 AND l.created_at < $3
  AND ($5::text IS NULL OR c.type = $5)
GROUP BY c.type, (l.created_at AT TIME ZONE $4)::date
"""


async def conversation_figures(
    conn: Conn, tenant_id: UUID, start: datetime, end: datetime, tz: str, channel: str | None,
) -> list[asyncpg.Record]:
    """The sessions created in [start, end), in one pass, grouped three ways (``grouping``):
    per ``channel`` type, per local ``day`` (a date in ``tz``, days without sessions absent) and
    the ``total``. Each row: visitors, chatted, email_captured, lead_sessions, conversations,
    handled_by_ai, escalated, resolved_by_human, abandoned, other, human first response
    (human_frt_n, _p50, _p90 in seconds; None without samples), CSAT (csat_n, csat_avg,
    csat_1..csat_5). tz: an IANA zone name; channel: a channel type or None for all. An empty
    range gives one total row of zeros."""
    return await conn.fetch(_FIGURES, tenant_id, start, end, tz, channel)


async def ai_first_response(
    conn: Conn, tenant_id: UUID, start: datetime, end: datetime, channel: str | None,
) -> list[asyncpg.Record]:
    """The AI's first-response time per channel type and in total (``is_total``): n, p50, p90 in
    seconds, over the customer messages of the range's sessions that the AI replied to."""
    return await conn.fetch(_AI_FRT, tenant_id, start, end, channel)


async def leads_by_day(
    conn: Conn, tenant_id: UUID, start: datetime, end: datetime, tz: str, channel: str | None,
) -> list[asyncpg.Record]:
    """Leads created in [start, end) per channel type (None: the session is gone) and local day."""
    return await conn.fetch(_LEADS, tenant_id, start, end, tz, channel)


# ------------------------------------------------------------------ unanswered questions
KB_ENTRY_EVENT = "kb_entry_added"
"""``events.kind`` of an owner's knowledge-base entry made from unanswered questions; its data
lists the ``escalation_ids`` and ``message_ids`` it answered (those leave the list)."""


async def unanswered_questions(
    conn: Conn, tenant_id: UUID, start: datetime, end: datetime, channel: str | None,
    weak_below: float, limit: int,
) -> list[asyncpg.Record]:
    """The questions the bot could not answer, newest first, at most ``limit``:

    - ``kind = 'escalation'``: escalations with signal ``low_coverage`` (the knowledge base had
      nothing good) not yet answered in the knowledge base (``resolved_kb_entry``); ``ref`` is
      the escalation id;
    - ``kind = 'weak_answer'``: customer messages the AI answered from weak sources (the answer's
      best source similarity, ``messages.confidence``, under ``weak_below``) and not yet covered
      by an owner's entry (a ``kb_entry_added`` event naming the message); ``ref`` is the
      customer message's id.

    Columns: kind, ref (text), question, created_at, session_id, channel (type).
    """
    return await conn.fetch(
        """SELECT * FROM (
               SELECT 'escalation' AS kind, e.id::text AS ref, btrim(e.question) AS question,
                      e.created_at, e.session_id, c.type AS channel
               FROM escalations e
               JOIN sessions s ON s.id = e.session_id AND s.tenant_id = e.tenant_id
               JOIN channels c ON c.id = s.channel_id
               WHERE e.tenant_id = $1 AND e.signal = 'low_coverage' AND NOT e.resolved_kb_entry
                 AND e.created_at >= $2 AND e.created_at < $3
                 AND e.question IS NOT NULL AND btrim(e.question) <> ''
                 AND ($4::text IS NULL OR c.type = $4)
               UNION ALL
               SELECT 'weak_answer', q.id::text, btrim(q.text), q.created_at, q.session_id, c.type
               FROM messages a
               JOIN messages q ON q.id = a.reply_to AND q.session_id = a.session_id
               JOIN channels c ON c.id = a.channel_id
               WHERE a.tenant_id = $1 AND a.sender = 'ai' AND a.intent = 'answer'
                 AND a.created_at >= $2  -- answers come after their question (the index's range)
                 AND a.confidence < $5 AND q.sender = 'customer' AND btrim(q.text) <> ''
                 AND q.created_at >= $2 AND q.created_at < $3
                 AND ($4::text IS NULL OR c.type = $4)
                 AND NOT EXISTS (
                     SELECT 1 FROM events ev
                     WHERE ev.tenant_id = $1 AND ev.kind = 'kb_entry_added'
                       AND ev.data->'message_ids' @> to_jsonb(q.id))
           ) u
           ORDER BY created_at DESC LIMIT $6""",
        tenant_id, start, end, channel, weak_below, limit,
    )


async def unknown_refs(
    conn: Conn, tenant_id: UUID, escalation_ids: list[UUID], message_ids: list[int],
) -> tuple[list[UUID], list[int]]:
    """The ids among these that are not the tenant's low-coverage escalations / customer messages
    (unknown, another tenant's, or of another kind)."""
    found_e = {r["id"] for r in await conn.fetch(
        "SELECT id FROM escalations WHERE tenant_id = $1 AND id = ANY($2::uuid[])",
        tenant_id, escalation_ids)} if escalation_ids else set()
    found_m = {int(r["id"]) for r in await conn.fetch(
        "SELECT id FROM messages WHERE tenant_id = $1 AND id = ANY($2::bigint[]) AND sender = 'customer'",
        tenant_id, message_ids)} if message_ids else set()
    return ([e for e in escalation_ids if e not in found_e], [m for m in message_ids if m not in found_m])


async def resolve_unanswered(
    conn: Conn, tenant_id: UUID, escalation_ids: list[UUID], message_ids: list[int],
    entry: dict[str, Any],
) -> int:
    """The owner answered these in the knowledge base (``entry``: its document_id, source,
    question): the escalations get ``resolved_kb_entry``, and a ``kb_entry_added`` event records
    the entry with the ids (the weak-answer turns leave the list through it). Returns the number
    of escalations marked. Call in a transaction."""
    marked = await conn.fetchval(
        """WITH m AS (UPDATE escalations SET resolved_kb_entry = true
                      WHERE tenant_id = $1 AND id = ANY($2::uuid[]) RETURNING 1)
           SELECT count(*) FROM m""",
        tenant_id, escalation_ids,
    )
    await conn.execute(
        "INSERT INTO events (tenant_id, session_id, kind, data) VALUES ($1, NULL, $2, $3)",
        tenant_id, KB_ENTRY_EVENT,
        {"document_id": str(entry["document_id"]), "source": entry["source"],
         "question": entry["question"], "escalation_ids": [str(e) for e in escalation_ids],
         "message_ids": list(message_ids)},
    )
    return int(marked or 0)


# ------------------------------------------------------------------ the weekly report
async def tenants_due_weekly_report(
    conn: Conn, period_start: Any, period_end_excl: datetime, tenant_id: UUID | None = None,
) -> list[asyncpg.Record]:
    """Tenants to send the week starting ``period_start`` (a date) to: they existed before the
    week ended, have an active email channel with credentials, an owner with an email address,
    and no report for that week yet (only ``tenant_id``, if given). Columns: tenant_id, name,
    channel_id, recipient."""
    return await conn.fetch(
        """SELECT t.id AS tenant_id, t.name, ch.id AS channel_id, u.email AS recipient
           FROM tenants t
           JOIN LATERAL (SELECT c.id FROM channels c
                         WHERE c.tenant_id = t.id AND c.type = 'email' AND c.status = 'active'
                           AND c.secrets ? 'enc'
                         ORDER BY c.created_at LIMIT 1) ch ON true
           JOIN LATERAL (SELECT u.email FROM users u
                         WHERE u.tenant_id = t.id AND u.role = 'owner' AND u.disabled_at IS NULL
                           AND u.email IS NOT NULL AND btrim(u.email) <> ''
                         ORDER BY u.created_at LIMIT 1) u ON true
           WHERE t.created_at < $2 AND ($3::uuid IS NULL OR t.id = $3)
             AND NOT EXISTS (SELECT 1 FROM weekly_reports w
                             WHERE w.tenant_id = t.id AND w.period_start = $1)""",
        period_start, period_end_excl, tenant_id,
    )


async def claim_weekly_report(
    conn: Conn, tenant_id: UUID, period_start: Any, channel_id: UUID, recipient: str,
) -> bool:
    """Take the week's marker (in the transaction that enqueues the email); False when another
    Timekeeper (or an earlier run) already has it, and then nothing may be sent."""
    res = await conn.execute(
        """INSERT INTO weekly_reports (tenant_id, period_start, period_end, channel_id, recipient)
           VALUES ($1, $2::date, $2::date + 6, $3, $4) ON CONFLICT DO NOTHING""",
        tenant_id, period_start, channel_id, recipient,
    )
    return res.endswith(" 1")


async def set_weekly_report_outbox(conn: Conn, tenant_id: UUID, period_start: Any, outbox_id: int) -> None:
    """Record the outbox row that carries the week's report."""
    await conn.execute(
        "UPDATE weekly_reports SET outbox_id = $3 WHERE tenant_id = $1 AND period_start = $2::date",
        tenant_id, period_start, outbox_id,
    )
