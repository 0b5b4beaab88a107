"""Running one turn: load the customer message, decide, carry the decision out, and survive
faults without losing or repeating anything.

:meth:`TurnRunner.run` answers a customer message at most once: it acts only on a message still
``received`` and marks it ``answered`` or ``inbox`` in the transaction that stores the reply. A
turn failing on Postgres or Redis (:func:`runtime.conversation.faults.is_transient`) is retried
with backoff for ``turn_retry_window_s``; the message stays ``received`` meanwhile, so it is never
dropped. An earlier attempt that streamed tokens under an answer id (an actor killed mid-stream,
a retried turn) gets its ``aborted`` event before the new attempt starts. A turn aborted by a
takeover, handoff or close publishes ``aborted`` for its answer (or ``done``), never a reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from runtime.actions.types import ActionSession
from runtime.conversation.answers import AnswerWriter, CouldNotAnswer
from runtime.conversation.closing import record_csat
from runtime.conversation.control import Aborted, TurnControl
from runtime.conversation.decisions import (
    Act,
    Answer,
    CapturedLead,
    Escalate,
    InboundMessage,
    Outcome,
    Reply,
    ToInbox,
)
from runtime.conversation.delivery import send_message
from runtime.conversation.escalation import Escalation, escalate
from runtime.conversation.faults import is_transient
from runtime.conversation.live import LiveSession, load_config
from runtime.conversation.pipeline import TurnPipeline, step_outcome
from runtime.conversation.ports import ModelPorts
from runtime.db import Conn
from runtime.db import contacts as contact_db
from runtime.db import escalations as esc_db
from runtime.db import messages as msg_db
from runtime.db import sessions as sess_db
from runtime.errors import ChatEngineError
from runtime.metrics import metrics

log = logging.getLogger(__name__)

_OUTCOMES = {"Answer": "answer", "Reply": "reply", "Escalate": "escalation", "ToInbox": "inbox",
             "Act": "action"}
# Action requests that change something: executed inside the delivery section, so a takeover
# waits for the change and its confirmation rather than cutting between them.
_WRITE_OPS = frozenset({"create", "cancel"})
FAILED_TEXT = "Something went wrong on our side; a person from our team will reply here."


class TurnRunner:
    """Runs the turns of one session (one at a time; the Conversation queues them)."""

    def __init__(self, live: LiveSession, models: ModelPorts, pipeline: TurnPipeline) -> None:
        self.live = live
        self.models = models
        self.pipeline = pipeline
        self.answers = AnswerWriter(live, models)

    async def run(self, message_id: int, ctl: TurnControl) -> None:
        """Answer customer message ``message_id`` (see the module doc). Never raises."""
        deadline = time.monotonic() + self.live.settings.turn_retry_window_s
        delay = 0.25
        t0 = time.perf_counter()
        outcome = "failed"
        try:
            while True:
                try:
                    outcome = await self._once(message_id, ctl)
                    return
                except Aborted:
                    outcome = "aborted"
                    await self._best_effort(self._after_abort(message_id, ctl))
                    return
                except Exception as exc:
                    if is_transient(exc) and time.monotonic() < deadline and not ctl.aborted:
                        log.warning("turn %s: %s; retrying in %.2f s", message_id, exc, delay)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, 5.0)
                        continue
                    if ctl.aborted:
                        outcome = "aborted"
                        await self._best_effort(self._after_abort(message_id, ctl))
                        return
                    log.exception("turn %s failed", message_id)
                    await self._best_effort(self._failed(message_id, ctl, exc))
                    return
        finally:
            ctl.finished.set()
            if outcome:  # "" : nothing to do (answered already)
                metrics().turn(outcome, (time.perf_counter() - t0) * 1000, ctl.overhead_ms)

    async def _once(self, message_id: int, ctl: TurnControl) -> str:
        """One attempt; returns the outcome (answer, reply, escalation, inbox; "" when the
        message needed nothing)."""
        live = self.live
        t0 = time.perf_counter()
        async with live.pool.acquire() as conn:
            row = await msg_db.get_customer_message(conn, live.tenant_id, live.session_id, message_id)
            if row is None or row["status"] != "received":
                return ""  # answered already (a repeat, or re-queued after a restart)
            cfg, paused = await load_config(conn, live.tenant_id)
        ctl.checkpoint()
        if row["answer_id"] is not None and ctl.answer_id is None:
            # An earlier attempt streamed under this id and never finished.
            await live.delivery.emit("aborted", f"{row['answer_id']}:a",
                                     {"message_id": row["answer_id"], "superseded": True}, message_id)
        ctl.answer_id = None
        ctl.tokens_sent = 0
        if live.record.status == "closed":
            score = sess_db.parse_csat_score(row["text"])
            if score is not None:
                async with live.pool.acquire() as conn:
                    asked = (await sess_db.csat_state(conn, live.tenant_id, live.session_id))["csat_asked_at"]
                if asked is not None:  # the answer to the CSAT question: the conversation stays closed
                    async with ctl.delivering():
                        await record_csat(live, score, reply_to=message_id)
                    return "reply"
            await self._reopen()
        msg = InboundMessage(message_id, row["text"], list(row["attachments"] or []))
        outcome = await self.pipeline.decide(
            msg, cfg, live.state, status=live.record.status, paused=paused,
            contact_has_email=self._contact_has_email, ctl=ctl, who=self._who(),
        )
        timing = {"decide_ms": round((time.perf_counter() - t0) * 1000, 2)}
        ctl.overhead_ms = timing["decide_ms"]
        if outcome.lead is not None:
            await self._save_lead(outcome.lead)
        ctl.checkpoint()
        await self._act(msg, outcome, cfg, ctl, t0, timing)
        return _OUTCOMES.get(type(outcome.decision).__name__, "other")

    async def _act(self, msg: InboundMessage, outcome: Outcome, cfg: Any, ctl: TurnControl,
                   t0: float, timing: dict[str, float]) -> None:
        live, d = self.live, outcome.decision
        if isinstance(d, Act):
            await self._run_action(msg, d, outcome, cfg, ctl, t0, timing)
        elif isinstance(d, Answer):
            try:
                await self.answers.answer(msg, d, cfg, ctl, t0, timing, outcome.state)
            except CouldNotAnswer as exc:
                await self._escalate(msg, Escalation(exc.reason, exc.signal, d.question, d.coverage),
                                     cfg, ctl, outcome.state)
        elif isinstance(d, Escalate):
            await self._escalate(msg, Escalation(d.reason, d.signal, d.question, d.detail, d.priority),
                                 cfg, ctl, outcome.state)
        elif isinstance(d, Reply):
            async with ctl.delivering():
                await send_message(
                    live.pool, live.delivery, live.record, "ai", d.text, msg.id, reply_to=msg.id,
                    customer_status=d.customer_status, in_tx=self._state_writer(outcome), intent=d.intent,
                )
                live.state = outcome.state
            if d.notify_inbox:
                await live.events.notify_inbox(live.tenant_id, "message", {
                    "session_id": live.session_id, "message_id": msg.id, "attachments": msg.attachments})
        elif isinstance(d, ToInbox):
            async with ctl.delivering():
                if d.notice:
                    await send_message(live.pool, live.delivery, live.record, "system", d.notice, 0,
                                       in_tx=self._state_writer(outcome), intent="paused")
                    live.state = outcome.state
                await self._to_inbox(msg)

    def _who(self) -> ActionSession:
        record = self.live.record
        return ActionSession(record.channel_type, record.contact_ref, record.contact_id, record.session_id)

    async def _run_action(self, msg: InboundMessage, d: Act, outcome: Outcome, cfg: Any,
                          ctl: TurnControl, t0: float, timing: dict[str, float]) -> None:
        """Execute an action request (the tenant's source, the bookings) and say its result."""
        engine = self.pipeline.actions
        assert engine is not None, "an Act comes only from a pipeline with actions"
        who, failures = self._who(), outcome.state.action_failures
        if d.request.get("op") in _WRITE_OPS:
            async with ctl.delivering():
                step = await engine.execute(d.request, who, failures)
                result = step_outcome(step, msg.text, outcome.state, outcome.lead)
                await self._act(msg, result, cfg, ctl, t0, timing)
            return
        step = await engine.execute(d.request, who, failures)
        ctl.checkpoint()
        result = step_outcome(step, msg.text, outcome.state, outcome.lead)
        if isinstance(result.decision, Act):
            raise RuntimeError(f"an executed action asked for another request: {d.request}")
        await self._act(msg, result, cfg, ctl, t0, timing)

    def _state_writer(self, outcome: Outcome) -> Any:
        live = self.live

        async def write(conn: Conn) -> None:
            if outcome.state != live.state:
                await sess_db.update_session(conn, live.tenant_id, live.session_id,
                                             state=outcome.state.dump())
        return write

    async def _escalate(self, msg: InboundMessage, esc: Escalation, cfg: Any, ctl: TurnControl,
                        state: Any) -> None:
        live = self.live
        async with ctl.delivering():
            if ctl.tokens_sent and ctl.answer_id is not None:
                await live.delivery.emit("aborted", f"{ctl.answer_id}:a",
                                         {"message_id": ctl.answer_id}, msg.id)
            await escalate(live.pool, live.delivery, live.events, live.record, cfg, esc, turn=msg.id,
                           state=state, default_sla_minutes=live.settings.sla_minutes,
                           on_committed=live.escalated)

    async def _to_inbox(self, msg: InboundMessage) -> None:
        live = self.live
        async with live.pool.acquire() as conn:
            await msg_db.set_message_status(conn, live.tenant_id, msg.id, "inbox")
        await live.delivery.emit("done", f"{msg.id}:1", {"message_id": msg.id}, msg.id)
        await live.events.notify_inbox(live.tenant_id, "message", {
            "session_id": live.session_id, "message_id": msg.id, "text": msg.text[:200]})

    async def _reopen(self) -> None:
        """A customer writing to a closed conversation reopens it with the bot."""
        live = self.live
        async with live.pool.acquire() as conn:
            await sess_db.reopen_session(conn, live.tenant_id, live.session_id)
        live.record = live.record.with_(status="ai_handled", assignee_id=None)

    async def _contact_has_email(self) -> bool:
        live = self.live
        if live.record.contact_id is None:
            return False
        async with live.pool.acquire() as conn:
            contact = await sess_db.get_contact(conn, live.tenant_id, live.record.contact_id)
        return bool(contact and contact["email"])

    async def _save_lead(self, lead: CapturedLead) -> None:
        live = self.live
        async with live.pool.acquire() as conn, conn.transaction():
            if live.record.contact_id is not None:
                await sess_db.set_contact_email(conn, live.tenant_id, live.record.contact_id, lead.email)
                # The email now finds this contact from any channel (a WhatsApp customer who later
                # writes by email is the same contact), unless another contact already holds it.
                await contact_db.add_identity(conn, live.tenant_id, live.record.contact_id, "email",
                                              lead.email.lower())
            lead_id = await esc_db.insert_lead(conn, live.tenant_id, live.session_id,
                                               live.record.contact_id, lead.email, lead.topic,
                                               lead.question)
            await esc_db.record_event(conn, live.tenant_id, live.session_id, "lead",
                                      {"lead_id": str(lead_id), "email": lead.email})
        await live.events.notify_inbox(live.tenant_id, "lead",
                                       {"session_id": live.session_id, "email": lead.email})

    async def _after_abort(self, message_id: int, ctl: TurnControl) -> None:
        """The session went to a human (or closed) mid-turn: the message waits in the inbox; the
        stream gets ``aborted`` for a started answer, else ``done`` for the turn."""
        live = self.live
        async with live.pool.acquire() as conn:
            row = await msg_db.get_customer_message(conn, live.tenant_id, live.session_id, message_id)
            if row is not None and row["status"] == "received":
                await msg_db.set_message_status(conn, live.tenant_id, message_id, "inbox")
        if ctl.answer_id is not None:
            await live.delivery.emit("aborted", f"{ctl.answer_id}:a", {"message_id": ctl.answer_id},
                                     message_id)
        else:
            await live.delivery.emit("done", f"{message_id}:1", {"message_id": message_id}, message_id)

    async def _failed(self, message_id: int, ctl: TurnControl, exc: BaseException) -> None:
        """A turn that cannot complete: the customer is told, the conversation goes to a human.
        If even that fails, the message stays ``received`` and the Timekeeper brings it back."""
        live = self.live
        code = exc.code if isinstance(exc, ChatEngineError) else "turn_failed"
        if ctl.tokens_sent and ctl.answer_id is not None:
            # ``failed``: the turn's stream goes on to the ``error`` that follows.
            await live.delivery.emit("aborted", f"{ctl.answer_id}:a",
                                     {"message_id": ctl.answer_id, "failed": True}, message_id)
        await live.delivery.emit("error", f"{message_id}:e",
                                 {"code": code, "message": FAILED_TEXT}, message_id)
        if live.record.status == "ai_handled":
            async with live.pool.acquire() as conn:
                cfg, _ = await load_config(conn, live.tenant_id)
            await escalate(live.pool, live.delivery, live.events, live.record, cfg,
                           Escalation("The assistant failed to answer.", code, None,
                                      {"error": str(exc)[:300]}, "high"),
                           turn=message_id, state=live.state,
                           default_sla_minutes=live.settings.sla_minutes, on_committed=live.escalated)
        else:
            async with live.pool.acquire() as conn:
                await msg_db.set_message_status(conn, live.tenant_id, message_id, "inbox")

    @staticmethod
    async def _best_effort(coro: Any) -> None:
        try:
            await coro
        except Exception:  # noqa: BLE001 - the message stays received; the Timekeeper re-queues it
            log.exception("could not finish a turn's bookkeeping")
