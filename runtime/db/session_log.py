"""A conversation's log for export, in seed 004's conversation-log shape ("Feature 4 -
Conversation Logger"): the session, its contact, every message as a turn, the resolution and
the session's metadata. Built from the system of record (``sessions``, ``messages``,
``escalations``, ``usage``) at the time of the call; nothing is stored twice.
"""

from __future__ import annotations

import uuid
from collections import Counter
from importlib import metadata
from typing import Any
from uuid import UUID

from runtime.db import Conn
from runtime.errors import SessionNotFound

ROLES = {"customer": "user", "ai": "assistant", "agent": "agent", "system": "system"}
# Customer messages left in these states got no answer from anyone.
UNANSWERED = ("received", "inbox", "failed", "aborted")


def _bot_version() -> str:
    try:
        return metadata.version("chat-engine")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def log_id(session_id: UUID) -> UUID:
    """The log's id: a UUID derived from the session's (uuid5), so exporting twice names one log."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"chat-engine:session-log:{session_id}")


async def session_log(conn: Conn, tenant_id: UUID, session_id: UUID) -> dict[str, Any]:
    """The session's log.

    Shape (seed 004): ``{"log_id", "session_id", "channel", "customer_phone", "customer_email",
    "customer_name", "timestamp_start", "timestamp_end", "messages": [{"turn", "role",
    "content", "timestamp", ...}], "resolution_status", "escalation_reason",
    "session_metadata": {"bot_version", "model", "total_turns", "duration_seconds", "status"}}``.
    A customer message (``role: user``) carries ``intent_detected`` and ``confidence`` of the
    bot's reply to it (None when nobody replied or a human did); a bot message
    (``assistant``/``system``) carries ``feature_used`` (its intent: answer, lead_ask,
    escalation, paused...), ``escalated``, ``strategy`` and ``sources`` (chunk ids); an agent's
    carries ``agent_name``. Timestamps are ISO-8601 (UTC offsets included).

    resolution_status: ``escalated`` (the conversation was handed to a human), else ``resolved``
    (every customer message was answered), else ``abandoned`` (one was left without an answer).
    Raises SessionNotFound for a session that is not the tenant's.
    """
    session = await conn.fetchrow(
        """SELECT s.id, s.status, s.created_at, s.last_activity_at, c.type AS channel,
                  ct.name, ct.email, ct.phone
           FROM sessions s JOIN channels c ON c.id = s.channel_id
           LEFT JOIN contacts ct ON ct.id = s.contact_id
           WHERE s.tenant_id = $1 AND s.id = $2""",
        tenant_id, session_id,
    )
    if session is None:
        raise SessionNotFound(f"no session {session_id} in this workspace")
    messages = await conn.fetch(
        """SELECT m.id, m.sender, m.text, m.status, m.intent, m.confidence, m.strategy,
                  m.reply_to, m.source_chunk_ids, m.created_at, u.name AS agent_name
           FROM messages m LEFT JOIN users u ON u.id = m.agent_id
           WHERE m.tenant_id = $1 AND m.session_id = $2 ORDER BY m.id""",
        tenant_id, session_id,
    )
    escalation = await conn.fetchrow(
        """SELECT reason FROM escalations WHERE tenant_id = $1 AND session_id = $2
           ORDER BY created_at LIMIT 1""",
        tenant_id, session_id,
    )
    models = await conn.fetch(
        "SELECT model FROM usage WHERE tenant_id = $1 AND session_id = $2 AND model IS NOT NULL",
        tenant_id, session_id,
    )
    replies = {int(m["reply_to"]): m for m in messages
               if m["reply_to"] is not None and m["sender"] in ("ai", "system")}
    turns: list[dict[str, Any]] = []
    for n, m in enumerate(messages, start=1):
        turn: dict[str, Any] = {"turn": n, "role": ROLES[m["sender"]], "content": m["text"],
                                "timestamp": m["created_at"].isoformat()}
        if m["sender"] == "customer":
            reply = replies.get(int(m["id"]))
            turn["intent_detected"] = reply["intent"] if reply is not None else None
            turn["confidence"] = (round(float(reply["confidence"]), 4)
                                  if reply is not None and reply["confidence"] is not None else None)
        elif m["sender"] in ("ai", "system"):
            turn.update(feature_used=m["intent"], escalated=m["intent"] == "escalation",
                        strategy=m["strategy"], sources=list(m["source_chunk_ids"] or []))
        else:
            turn["agent_name"] = m["agent_name"]
        turns.append(turn)
    customer = [m for m in messages if m["sender"] == "customer"]
    if escalation is not None:
        resolution = "escalated"
    elif customer and all(m["status"] not in UNANSWERED for m in customer):
        resolution = "resolved"
    else:
        resolution = "abandoned"
    start = messages[0]["created_at"] if messages else session["created_at"]
    end = messages[-1]["created_at"] if messages else session["last_activity_at"]
    used = Counter(r["model"] for r in models).most_common(1)
    return {
        "log_id": str(log_id(session_id)),
        "session_id": str(session_id),
        "channel": session["channel"],
        "customer_phone": session["phone"],
        "customer_email": session["email"],
        "customer_name": session["name"],
        "timestamp_start": start.isoformat(),
        "timestamp_end": end.isoformat(),
        "messages": turns,
        "resolution_status": resolution,
        "escalation_reason": escalation["reason"] if escalation is not None else None,
        "session_metadata": {
            "bot_version": _bot_version(),
            "model": used[0][0] if used else None,
            "total_turns": len(turns),
            "duration_seconds": round((end - start).total_seconds(), 3),
            "status": session["status"],
        },
    }
