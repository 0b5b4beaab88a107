"""Escalation to a human, and the SLA timer that watches it.

:func:`escalate` commits everything an escalation is in one transaction (the session's status,
reason and question, the escalation row with its priority, an analytics event, the durable SLA
timer, the ticket (and lead) with their help-desk sends (:mod:`runtime.helpdesk.tickets`), the
polite message to the customer and its delivery), then the caller's memory changes,
then the events go out (``message``, ``handoff``, ``done``; the inbox notification). A failed
transaction changes nothing: memory and Postgres keep agreeing.

:class:`SlaTimer` is the actor's in-memory copy of the ``timers`` row: while the actor is active it
fires on time; when the actor is passivated the Timekeeper fires the stored row instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from runtime.bot_config import BotConfig
from runtime.config import get_settings
from runtime.conversation.delivery import Delivery, publish_message, store_message
from runtime.conversation.state import SessionRecord, SessionState
from runtime.db import Conn, inbox_hours
from runtime.db import escalations as esc_db
from runtime.db import inbox_teams as teams_db
from runtime.db import sessions as sess_db
from runtime.db import timers as timer_db
from runtime.events import SessionEvents
from runtime.helpdesk.tickets import open_ticket
from runtime.metrics import metrics

log = logging.getLogger(__name__)


def now() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Escalation:
    """What an escalation asks: reason (one sentence for the inbox), signal, the customer's
    question, detail (JSON-safe specifics), priority (low | normal | high | critical)."""

    reason: str
    signal: str | None
    question: str | None
    detail: dict[str, Any]
    priority: str = "normal"


async def escalate(
    pool: Any, delivery: Delivery, events: SessionEvents, record: SessionRecord, cfg: BotConfig,
    esc: Escalation, *, turn: int, state: SessionState, default_sla_minutes: float,
    on_committed: Callable[[SessionRecord, SessionState, datetime], None],
) -> dict[str, Any]:
    """Escalate the session; returns the customer message's payload.

    turn: the customer message being answered (0 for the "Talk to a human" button); its status
    becomes ``inbox``. on_committed(record, state, sla_due) runs after the commit and before any
    event goes out. Raises what asyncpg raises (nothing committed, nothing emitted).
    """
    at = now()
    async with pool.acquire() as conn:
        inbox = await inbox_hours.get_inbox_settings(conn, record.tenant_id)
    hours = inbox.business_hours
    offline = not hours.is_open(at)
    # Outside business hours the SLA counts from the next opening (nobody can claim before it).
    start = (hours.next_open(at) or at) if offline else at
    due = start + timedelta(minutes=cfg.sla_minutes or default_sla_minutes)
    ids: dict[str, Any] = {}

    async def writes(conn: Conn) -> None:
        team_id, assignee = await teams_db.route_escalation(conn, record.tenant_id, record.channel_id)
        ids.update(team=team_id, assignee=assignee)
        routed: dict[str, Any] = {"team_id": team_id} if team_id else {}
        if assignee is not None:
            routed["assignee_id"] = assignee
        await sess_db.update_session(
            conn, record.tenant_id, record.session_id, status="human_escalated",
            escalation_reason=esc.reason, escalation_question=esc.question, escalated_at=now(),
            state=state.dump(), **routed,
        )
        ids["contact"] = (await sess_db.get_contact(conn, record.tenant_id, record.contact_id)
                          if record.contact_id else None)
        ids["escalation"] = await esc_db.insert_escalation(
            conn, record.tenant_id, record.session_id, esc.reason, esc.signal, esc.question,
            esc.priority,
        )
        await esc_db.record_event(conn, record.tenant_id, record.session_id, "escalation", {
            "escalation_id": str(ids["escalation"]), "reason": esc.reason, "signal": esc.signal,
            "question": esc.question, "priority": esc.priority, "detail": esc.detail,
        })
        await timer_db.set_timer(conn, record.tenant_id, record.session_id, "sla", due)
        ids.update(await _ticket(conn, record, cfg, esc, ids["escalation"]))

    text = cfg.could_not_answer_message if esc.signal == "low_coverage" else cfg.handoff_message
    if offline:
        text = inbox.offline_reply(at)
    stored = await store_message(
        pool, delivery, record, "system", text, reply_to=turn or None,
        customer_status="inbox" if turn else None, in_tx=writes,
        intent="offline" if offline else "escalation",
    )
    on_committed(record.with_(status="human_escalated", assignee_id=ids["assignee"]), state, due)
    metrics().escalation(esc.signal)
    handoff = {"reason": esc.reason, "signal": esc.signal, "priority": esc.priority, "offline": offline}
    await publish_message(delivery, stored, turn, extra_events=(("handoff", handoff),))
    contact = ids["contact"]
    await events.notify_inbox(record.tenant_id, "escalation", {
        "session_id": record.session_id, "escalation_id": ids["escalation"], "reason": esc.reason,
        "signal": esc.signal, "question": esc.question, "priority": esc.priority,
        "ticket_id": ids.get("ticket"),
        "channel_id": record.channel_id, "channel_type": record.channel_type,
        "contact_name": (contact["name"] or contact["email"] or contact["phone"]) if contact else None,
        "team_id": ids["team"], "assignee_id": ids["assignee"], "offline": offline,
        "status": "human_escalated",
    })
    return stored.payload


async def _ticket(conn: Conn, record: SessionRecord, cfg: BotConfig, esc: Escalation,
                  escalation_id: UUID) -> dict[str, UUID]:
    """The escalation's ticket, in a savepoint of its transaction: ``{"ticket": id}``. A ticket
    that cannot be written must not stop the handoff: the savepoint is rolled back, a
    ``ticket_failed`` event is recorded with the error, and the escalation commits without it."""
    try:
        async with conn.transaction():
            made = await open_ticket(
                conn, get_settings(), cfg, tenant_id=record.tenant_id, session_id=record.session_id,
                contact_id=record.contact_id, channel_type=record.channel_type,
                escalation_id=escalation_id, reason=esc.reason, signal=esc.signal,
                question=esc.question, priority=esc.priority)
    except Exception as exc:  # noqa: BLE001 - the customer's handoff goes on without a ticket
        log.exception("session %s: the escalation's ticket failed", record.session_id)
        await esc_db.record_event(conn, record.tenant_id, record.session_id, "ticket_failed", {
            "escalation_id": str(escalation_id), "error": f"{type(exc).__name__}: {exc}"[:500]})
        return {}
    return {"ticket": made["ticket_id"]}


class SlaTimer:
    """An asyncio timer calling ``fire()`` at ``due_at`` (errors are logged; the stored timer
    row stays, so the Timekeeper fires it later)."""

    def __init__(self, fire: Callable[[], Awaitable[Any]]) -> None:
        self._fire = fire
        self._task: asyncio.Task[None] | None = None
        self.due_at: datetime | None = None

    def arm(self, due_at: datetime) -> None:
        """(Re)arm for ``due_at`` (UTC)."""
        self.cancel()
        self.due_at = due_at
        delay = max(0.0, (due_at - now()).total_seconds())

        async def _run() -> None:
            await asyncio.sleep(delay)
            try:
                await self._fire()
            except Exception:  # noqa: BLE001 - the Timekeeper retries from the stored row
                log.exception("SLA timer failed; the Timekeeper will fire it")

        self._task = asyncio.get_running_loop().create_task(_run())

    def cancel(self) -> None:
        """Disarm (the stored row is the caller's to clear). Called from the timer's own firing,
        it only forgets the task (cancelling it would cut the firing short)."""
        if self._task is not None:
            if self._task is not asyncio.current_task():
                self._task.cancel()
            self._task = None
        self.due_at = None

    @property
    def armed(self) -> bool:
        """Whether a timer is pending."""
        return self._task is not None and not self._task.done()


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task and wait for it (its CancelledError swallowed)."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
