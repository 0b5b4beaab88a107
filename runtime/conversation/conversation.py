"""One conversation's logic: the body of the session actor, drivable without Ray.

:class:`Conversation` owns the session's state (Postgres is the system of record; it is the only
writer of its session), its turn queue (customer messages are answered one at a time, in order)
and its timers. Its operations never wait behind a running turn: ``takeover``, ``handoff`` and
``close`` abort it (:class:`runtime.conversation.control.TurnControl`), wait for it to wind down,
then commit the new status, then change memory, then publish. Operations are serialised among
themselves by one lock; turns are paused while one runs. Activation, the call plumbing and
passivation are :class:`runtime.conversation.lifecycle.ConversationLifecycle`.

Caps: at most ``max_turn_queue`` customer messages wait behind the running turn: a widget message
beyond that is refused (:class:`runtime.errors.TurnQueueFull`, 429) before anything is stored.
Messages already stored (a channel's webhook stored them; re-queued on activation or by
:meth:`Conversation.recover`) are never refused. Escalated conversations passivate like any
other: their SLA timer is a ``timers`` row the Timekeeper fires on a fresh activation.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from uuid import UUID

from runtime.conversation.closing import auto_close, close_conversation, record_csat
from runtime.conversation.delivery import send_message
from runtime.conversation.escalation import Escalation, escalate, now
from runtime.conversation.lifecycle import ConversationLifecycle
from runtime.conversation.live import LiveSession, load_config
from runtime.conversation.payloads import message_payload
from runtime.db import Conn
from runtime.db import escalations as esc_db
from runtime.db import messages as msg_db
from runtime.db import sessions as sess_db
from runtime.db import timers as timer_db
from runtime.errors import Conflict, TurnQueueFull

log = logging.getLogger(__name__)

# A refused message (too many waiting) may be sent again after this many seconds.
TURN_QUEUE_RETRY_AFTER_S = 5


class Conversation(ConversationLifecycle):
    """The session ``session_id`` of ``tenant_id``: its operations (submit, handoff, takeover,
    agent replies, hand-back, close, timers, recovery, status). Construct as
    :class:`ConversationLifecycle`."""

    async def submit(self, text: str, client_msg_id: str | None = None, external_id: str | None = None,
                     attachments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Persist a customer message (idempotent) and queue its turn.

        Returns ``{"message_id", "duplicate", "status", "answer"}``; ``answer`` is the delivered
        reply (a message dict) for a duplicate already answered. The insert and the enqueue finish
        even if the caller is cancelled. Raises TurnQueueFull (429, ``retry_after_s``) when
        ``settings.max_turn_queue`` messages already wait behind the running turn: the message is
        not stored (its insert is rolled back; a repeat of a stored ``client_msg_id`` is still
        answered as a duplicate). A message with an ``external_id`` (a channel's, acknowledged to
        its provider) is never refused. Raises SessionNotFound for a client_msg_id/external_id
        owned by another session, DependencyUnavailable/what asyncpg raises if Postgres is down
        (then nothing was stored).
        """
        async with self._call() as live:
            return await asyncio.shield(self._submit(live, text, client_msg_id, external_id, attachments))

    async def _submit(self, live: LiveSession, text: str, client_msg_id: str | None,
                      external_id: str | None, attachments: list[dict[str, Any]] | None) -> dict[str, Any]:
        async with self._submit_lock:
            r = live.record
            async with live.pool.acquire() as conn:
                async with conn.transaction():
                    row, created = await msg_db.insert_customer_message(
                        conn, r.tenant_id, r.session_id, r.channel_id, text, attachments or [],
                        client_msg_id, external_id)
                    if created and external_id is None:
                        self._check_turn_queue()  # raising rolls the insert back
                answer = None
                if not created and row["status"] != "received":
                    reply = await msg_db.answer_to(conn, r.tenant_id, row["id"])
                    answer = message_payload(reply) if reply is not None else None
            mid = int(row["id"])
            try:
                if created:
                    await live.delivery.emit("message", f"{mid}:0", message_payload(row), mid)
            except Exception as exc:  # noqa: BLE001 - the echo is cosmetic; the turn must still run
                log.warning("session %s: customer message %s not published (%s)", r.session_id, mid, exc)
            finally:
                if row["status"] == "received":
                    self._enqueue(mid)
            return {"message_id": mid, "duplicate": not created, "status": row["status"], "answer": answer}

    def _check_turn_queue(self) -> None:
        """Raise TurnQueueFull when ``max_turn_queue`` messages already wait (not counting the
        running turn's)."""
        waiting, cap = self.queue.qsize(), self.settings.max_turn_queue
        if waiting >= cap:
            raise TurnQueueFull(
                f"{waiting} messages are already waiting for an answer in this conversation (at "
                f"most {cap}); this one was not sent: wait for the answers, then send it again",
                retry_after_s=TURN_QUEUE_RETRY_AFTER_S)

    async def handoff(self, reason: str = "The customer asked for a human.") -> dict[str, Any]:
        """The "Talk to a human" button: escalate now, aborting a running answer."""
        async with self._transition(abort=True) as live:
            if live.record.status == "ai_handled":
                async with live.pool.acquire() as conn:
                    cfg, _ = await load_config(conn, self.tenant_id)
                await escalate(live.pool, live.delivery, live.events, live.record, cfg,
                               Escalation(reason, "handoff_button", None, {}), turn=0, state=live.state,
                               default_sla_minutes=self.settings.sla_minutes, on_committed=live.escalated)
            return {"status": live.record.status}

    async def takeover(self, agent_id: str, agent_name: str) -> dict[str, Any]:
        """An agent takes the conversation: the running generation is cancelled (nothing partial
        is delivered; its stream ends with ``aborted``), then ``human_assigned`` is committed and
        ``agent_joined`` published. Raises Conflict for a closed session."""
        async with self._transition(abort=True) as live:
            await self._assign(live, UUID(agent_id), agent_name)
            return {"status": "human_assigned"}

    async def _assign(self, live: LiveSession, agent: UUID, agent_name: str) -> None:
        if live.record.status == "closed":
            raise Conflict("the session is closed; a new customer message opens a new one")
        async with live.pool.acquire() as conn, conn.transaction():
            await sess_db.update_session(conn, self.tenant_id, self.session_id, status="human_assigned",
                                         assignee_id=agent, assigned_at=now())
            await esc_db.claim_escalations(conn, self.tenant_id, self.session_id, agent)
            await timer_db.clear_timer(conn, self.tenant_id, self.session_id, "sla")
            mid = await msg_db.reserve_message_id(conn)
        live.record = live.record.with_(status="human_assigned", assignee_id=agent)
        live.sla.cancel()
        await live.delivery.emit("agent_joined", f"{mid}:0", {"agent_name": agent_name})
        await live.events.notify_inbox(self.tenant_id, "assigned", {
            "session_id": self.session_id, "agent_id": str(agent), "assignee_id": str(agent),
            "agent_name": agent_name, "status": "human_assigned"})

    async def agent_reply(self, agent_id: str, agent_name: str, text: str) -> dict[str, Any]:
        """Deliver an agent's message (taking the session over first if nobody has). Raises
        Conflict for a closed session."""
        async with self._transition(abort=True) as live:
            if live.record.status == "closed":
                raise Conflict("the session is closed; the customer can no longer receive replies")
            if live.record.status in ("ai_handled", "human_escalated"):
                await self._assign(live, UUID(agent_id), agent_name)

            async def answered(conn: Conn) -> None:
                await msg_db.close_inbox_messages(conn, self.tenant_id, self.session_id)
                await sess_db.mark_first_human_reply(conn, self.tenant_id, self.session_id)

            payload = await send_message(live.pool, live.delivery, live.record, "agent", text, 0,
                                         agent_id=UUID(agent_id), in_tx=answered,
                                         payload_extra={"agent_name": agent_name})
            await live.events.notify_inbox(self.tenant_id, "message", {
                "session_id": self.session_id, "message_id": payload["id"], "sender": "agent"})
            return payload

    async def hand_back(self, agent_id: str | None = None) -> dict[str, Any]:
        """Return the conversation to the bot (``ai_handled``). Raises Conflict when closed."""
        async with self._transition(abort=False) as live:
            if live.record.status == "closed":
                raise Conflict("the session is closed")
            state = live.state.model_copy(update={"weak_streak": 0})
            async with live.pool.acquire() as conn, conn.transaction():
                await sess_db.update_session(conn, self.tenant_id, self.session_id, status="ai_handled",
                                             assignee_id=None, state=state.dump())
                await timer_db.clear_timer(conn, self.tenant_id, self.session_id, "sla")
            live.record = live.record.with_(status="ai_handled", assignee_id=None)
            live.state = state
            live.sla.cancel()
            await live.events.notify_inbox(self.tenant_id, "status", {
                "session_id": self.session_id, "status": "ai_handled", "assignee_id": None})
            return {"status": "ai_handled"}

    async def close(self, resolution: str | None = None, ask_csat: bool = True) -> dict[str, Any]:
        """Close the conversation (a running answer is aborted); the actor passivates soon.

        resolution: resolved_by_ai | resolved_by_human | abandoned (None: from the messages,
        :func:`runtime.db.sessions.default_resolution`). ask_csat: send the tenant's CSAT question
        (1-5) in the closing transaction when the customer or an agent wrote, it was not
        abandoned and CSAT is on. Returns ``{"status", "resolution", "csat_asked"}``; closing a
        closed conversation changes nothing."""
        async with self._transition(abort=True) as live:
            return await close_conversation(self, live, resolution, ask_csat)

    async def rate(self, score: int) -> dict[str, Any]:
        """The customer's CSAT answer (1-5, the widget's buttons): recorded once, thanked once.
        Returns ``{"csat_score", "duplicate"}``. Raises Conflict when no CSAT question was asked."""
        async with self._transition(abort=False) as live:
            return await record_csat(live, score, reply_to=None)

    async def fire_timer(self, kind: str) -> dict[str, Any]:
        """Run a due timer (the Timekeeper's call or the in-memory SLA timer). Acts at most once:
        the timer row is deleted in the transaction that sends the fallback message.
        ``auto_close``: close a conversation with the bot that stayed silent
        ``auto_close_hours`` (no CSAT question: the customer has gone)."""
        if kind == "auto_close":  # never aborts an answer: a busy conversation is not idle
            async with self._transition(abort=False) as live:
                return await auto_close(self, live)
        if kind != "sla":
            return {"fired": False}
        async with self._transition(abort=False) as live:
            async with live.pool.acquire() as conn:
                cfg, _ = await load_config(conn, self.tenant_id)
                armed = await timer_db.get_timer(conn, self.tenant_id, self.session_id, "sla")
            if armed is None or live.record.status != "human_escalated":
                return {"fired": False}
            cleared: dict[str, bool] = {}

            async def breach(conn: Conn) -> None:
                cleared["ok"] = await timer_db.clear_timer(conn, self.tenant_id, self.session_id, "sla")
                if not cleared["ok"]:
                    raise _AlreadyFired
                await esc_db.mark_sla_breached(conn, self.tenant_id, self.session_id)
                await esc_db.record_event(conn, self.tenant_id, self.session_id, "sla_breached",
                                          {"minutes": cfg.sla_minutes or self.settings.sla_minutes})

            try:
                payload = await send_message(live.pool, live.delivery, live.record, "system",
                                             cfg.sla_fallback_message, 0, in_tx=breach,
                                             intent="sla_fallback")
            except _AlreadyFired:
                return {"fired": False}
            live.sla.cancel()
            await live.events.notify_inbox(self.tenant_id, "sla_breached",
                                           {"session_id": self.session_id, "message_id": payload["id"]})
            return {"fired": True, "message_id": payload["id"]}

    async def recover(self) -> dict[str, Any]:
        """Queue customer messages still ``received`` that no turn holds (the Timekeeper's sweep
        after a lost turn). Returns ``{"requeued": n}``."""
        async with self._call() as live:
            async with live.pool.acquire() as conn:
                pending = await msg_db.unanswered_customer_messages(conn, self.tenant_id, self.session_id)
            fresh = {int(m["id"]) for m in pending} - self.queued
            return {"requeued": sum(self._enqueue(mid) for mid in sorted(fresh))}

    async def status(self) -> dict[str, Any]:
        """Status, assignee, queue length, whether a turn is running."""
        async with self._call() as live:
            r = live.record
            return {"session_id": str(self.session_id), "status": r.status,
                    "assignee_id": str(r.assignee_id) if r.assignee_id else None,
                    "queued": self.queue.qsize(), "turn_running": self.current is not None}


class _AlreadyFired(Exception):
    """The SLA timer row was already gone: another call fired it."""
