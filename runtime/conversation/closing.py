"""How a conversation ends: its resolution, the CSAT question and the customer's score, and the
idle auto-close (issue 14; the columns are migration 0009's contract with the analytics).

- :func:`close_conversation`: status ``closed`` with a resolution (given by the agent, else
  :func:`runtime.db.sessions.default_resolution`), the SLA and auto-close timers cleared, and
  the tenant's CSAT question sent to the customer's channel in the same transaction (when the
  customer or an agent wrote, the conversation was not abandoned and CSAT is on).
- :func:`record_csat`: a score 1-5, from the widget's buttons or a reply such as ``4`` (the turn
  of a closed conversation; a messaging channel routes a bare score to the closed session that
  asked), recorded once and thanked once.
- :func:`auto_close`: the ``auto_close`` timer armed at passivation fires after
  ``auto_close_hours`` of silence and closes a conversation still with the bot (no CSAT: the
  customer has gone).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from runtime.conversation.delivery import send_message
from runtime.conversation.escalation import now
from runtime.conversation.live import LiveSession
from runtime.db import Conn, inbox_hours
from runtime.db import messages as msg_db
from runtime.db import sessions as sess_db
from runtime.db import timers as timer_db
from runtime.errors import Conflict

log = logging.getLogger(__name__)

RESOLUTIONS = ("resolved_by_ai", "resolved_by_human", "abandoned")
# The auto-close timer is armed at passivation, whose own write moves last_activity_at: allow
# for it when checking that the conversation really stayed silent.
AUTO_CLOSE_SLACK = timedelta(minutes=5)


async def close_conversation(conv: Any, live: LiveSession, resolution: str | None,
                             ask_csat: bool) -> dict[str, Any]:
    """Close ``conv`` (a Conversation, inside its transition). See the module doc."""
    tenant_id, session_id = conv.tenant_id, conv.session_id
    if resolution is not None and resolution not in RESOLUTIONS:
        raise Conflict(f"resolution must be one of {', '.join(RESOLUTIONS)}")
    async with live.pool.acquire() as conn:
        current = await sess_db.get_session(conn, tenant_id, session_id)
        if live.record.status == "closed" and current["status"] == "closed":
            return {"status": "closed", "resolution": current["resolution"], "csat_asked": False}
        final = resolution or await sess_db.default_resolution(conn, tenant_id, session_id)
        settings = await inbox_hours.get_inbox_settings(conn, tenant_id)
        talked = await sess_db.has_customer_messages(conn, tenant_id, session_id, ("customer", "agent"))
    asking = (ask_csat and settings.csat.enabled and talked and final != "abandoned"
              and current["csat_score"] is None)

    async def writes(conn: Conn) -> None:
        fields: dict[str, Any] = {"status": "closed", "closed_at": now(), "resolution": final}
        if asking:
            fields["csat_asked_at"] = now()
        await sess_db.update_session(conn, tenant_id, session_id, **fields)
        await timer_db.clear_timer(conn, tenant_id, session_id, "sla")
        await timer_db.clear_timer(conn, tenant_id, session_id, "auto_close")

    if asking:
        await send_message(live.pool, live.delivery, live.record, "system", settings.csat.question, 0,
                           in_tx=writes, intent="csat")
    else:
        async with live.pool.acquire() as conn, conn.transaction():
            await writes(conn)
    live.record = live.record.with_(status="closed")
    live.sla.cancel()
    conv.last_activity = 0.0
    await live.events.notify_inbox(tenant_id, "status", {
        "session_id": session_id, "status": "closed", "resolution": final, "assignee_id": None})
    return {"status": "closed", "resolution": final, "csat_asked": asking}


async def record_csat(live: LiveSession, score: int, reply_to: int | None) -> dict[str, Any]:
    """Record the CSAT ``score`` (1-5) and thank the customer once. reply_to: the customer
    message that carried it (marked answered), None for the widget's buttons. Returns
    ``{"csat_score", "duplicate"}``; raises Conflict when no CSAT question was asked."""
    if not 1 <= score <= 5:
        raise Conflict("a CSAT score is 1 to 5")
    tenant_id, session_id = live.tenant_id, live.session_id
    async with live.pool.acquire() as conn:
        state = await sess_db.csat_state(conn, tenant_id, session_id)
        settings = await inbox_hours.get_inbox_settings(conn, tenant_id)
    if state["csat_asked_at"] is None:
        raise Conflict("no satisfaction question was asked in this conversation")
    if state["csat_score"] is not None:
        if reply_to is not None:  # a second bare score: answered, without a second thanks
            async with live.pool.acquire() as conn:
                await msg_db.set_message_status(conn, tenant_id, reply_to, "answered")
            await live.delivery.emit("done", f"{reply_to}:1", {"message_id": reply_to}, reply_to)
        return {"csat_score": state["csat_score"], "duplicate": True}

    async def writes(conn: Conn) -> None:
        await sess_db.update_session(conn, tenant_id, session_id, csat_score=score, csat_at=now())

    await send_message(live.pool, live.delivery, live.record, "system", settings.csat.thanks,
                       reply_to or 0, reply_to=reply_to, customer_status="answered" if reply_to else None,
                       in_tx=writes, intent="csat_thanks")
    await live.events.notify_inbox(tenant_id, "csat", {"session_id": session_id, "score": score})
    return {"csat_score": score, "duplicate": False}


async def auto_close(conv: Any, live: LiveSession) -> dict[str, Any]:
    """The ``auto_close`` timer: close a silent conversation still with the bot. The timer row
    is always removed (a conversation active since is re-armed at its next passivation)."""
    tenant_id, session_id = conv.tenant_id, conv.session_id
    async with live.pool.acquire() as conn:
        armed = await timer_db.clear_timer(conn, tenant_id, session_id, "auto_close")
        state = await sess_db.csat_state(conn, tenant_id, session_id)
    quiet_since = now() - timedelta(hours=conv.settings.auto_close_hours) + AUTO_CLOSE_SLACK
    busy = conv.current is not None or not conv.queue.empty()
    if not armed or busy or live.record.status != "ai_handled" or state["last_activity_at"] > quiet_since:
        return {"fired": False}
    out = await close_conversation(conv, live, None, ask_csat=False)
    log.info("session %s closed after %.1f h of silence (%s)", session_id,
             conv.settings.auto_close_hours, out["resolution"])
    return {"fired": True, "resolution": out["resolution"]}
