"""One conversation's logic: the body of the session actor, drivable without Ray.

:class:`Conversation` owns the session's state (Postgres is the system of record; it is the only
writer of its session), its turn queue (customer messages are answered one at a time, in order)
and its timers. Its operations never wait behind a running turn: ``takeover``, ``handoff`` and
``close`` abort it (:class:`runtime.conversation.control.TurnControl`), wait for it to wind down,
then commit the new status, then change memory, then publish. Operations are serialised among
themselves by one lock; turns are paused while one runs.

Activation loads the session and re-queues its unanswered messages; transient failures (Postgres
or Redis briefly down) are retried with backoff; a failed activation is not remembered. During
passivation calls are refused with SessionPassivating (the caller retries on the next actor).

Caps: a live conversation holds a lease under its tenant's and node's caps of live actors
(:mod:`runtime.conversation.capacity`), refreshed while active and given back on passivation.
At most ``max_turn_queue`` customer messages wait behind the running turn: a widget message
beyond that is refused (:class:`runtime.errors.TurnQueueFull`, 429) before anything is stored.
Messages already stored (a channel's webhook stored them; re-queued on activation or by
:meth:`Conversation.recover`) are never refused. Escalated conversations passivate like any
other: their SLA timer is a ``timers`` row the Timekeeper fires on a fresh activation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from runtime.answering.intents import IntentClassifier
from runtime.config import Settings
from runtime.conversation.capacity import LEASE_REFRESH_S, hold_lease, release_lease
from runtime.conversation.control import TurnControl
from runtime.conversation.delivery import delivery_for, send_message
from runtime.conversation.escalation import Escalation, SlaTimer, escalate, now, stop_task
from runtime.conversation.faults import is_transient
from runtime.conversation.live import LiveSession, load_config
from runtime.conversation.payloads import message_payload
from runtime.conversation.pipeline import TurnPipeline
from runtime.conversation.ports import ModelPorts
from runtime.conversation.resources import Resources, open_resources
from runtime.conversation.state import SessionRecord, SessionState
from runtime.conversation.turns import TurnRunner
from runtime.db import Conn
from runtime.db import escalations as esc_db
from runtime.db import messages as msg_db
from runtime.db import sessions as sess_db
from runtime.db import timers as timer_db
from runtime.errors import Conflict, DependencyUnavailable, SessionPassivating, TurnQueueFull
from runtime.policy import make_canary
from runtime.retrieval import search

log = logging.getLogger(__name__)

ABORT_WAIT_S = 10.0
# A refused message (too many waiting) may be sent again after this many seconds.
TURN_QUEUE_RETRY_AFTER_S = 5


class Conversation:
    """The session ``session_id`` of ``tenant_id``. models: embeddings and generation (Serve
    handles in the actor); intents: the process's shared intent classifier; opener: opens the
    pool and Redis client (default :func:`open_resources`); node_id: the Ray node the actor runs
    on (its lease under the node's cap; None: the tenant's cap only)."""

    def __init__(self, tenant_id: UUID, session_id: UUID, *, settings: Settings, models: ModelPorts,
                 intents: IntentClassifier,
                 opener: Callable[[Settings], Awaitable[Resources]] = open_resources,
                 node_id: str | None = None) -> None:
        self.tenant_id = tenant_id
        self.session_id = session_id
        self.settings = settings
        self.models = models
        self.intents = intents
        self._opener = opener
        self.live: LiveSession | None = None
        self._resources: Resources | None = None
        self._runner: TurnRunner | None = None
        self._activating = asyncio.Lock()
        self._ops = asyncio.Lock()
        self._turns_open = asyncio.Event()
        self._turns_open.set()
        # Oldest message first; stored, echoed and queued in one order (the submit lock).
        self.queue: asyncio.PriorityQueue[int] = asyncio.PriorityQueue()
        self.queued: set[int] = set()
        self._submit_lock = asyncio.Lock()
        self.current: TurnControl | None = None
        self._worker: asyncio.Task[None] | None = None
        self.node_id = node_id
        self._lease: asyncio.Task[None] | None = None
        self.closing = False
        self.in_flight = 0
        self.last_activity = time.monotonic()

    # ------------------------------------------------------------------ activation
    async def activate(self) -> LiveSession:
        """Load the session (retrying transient failures), re-queue unanswered messages, arm the
        SLA and start the turn worker. Idempotent. Raises DependencyUnavailable when Postgres or
        Redis stay unreachable (the next call tries again), SessionNotFound for a missing row."""
        if self.live is not None:
            return self.live
        async with self._activating:
            if self.live is not None:
                return self.live
            try:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception(is_transient), reraise=True,
                    stop=stop_after_delay(self.settings.turn_retry_window_s / 3),
                    wait=wait_exponential_jitter(initial=0.2, max=3.0),
                ):
                    with attempt:
                        live = await self._load()
            except Exception as exc:
                if is_transient(exc):
                    raise DependencyUnavailable(
                        f"the conversation could not be loaded ({type(exc).__name__}): Postgres or "
                        "Redis is unreachable; try again shortly") from exc
                raise
            self.live = live
            loop = asyncio.get_running_loop()
            self._worker = loop.create_task(self._work())
            self._lease = loop.create_task(self._hold_lease(live))
            return live

    async def _load(self) -> LiveSession:
        res = await self._opener(self.settings)
        try:
            async with res.pool.acquire() as conn:
                row = await sess_db.get_session_for_actor(conn, self.tenant_id, self.session_id)
                pending = await msg_db.unanswered_customer_messages(conn, self.tenant_id, self.session_id)
                sla_due = await timer_db.get_timer(conn, self.tenant_id, self.session_id, "sla")
        except BaseException:
            with contextlib.suppress(Exception):
                await res.close()
            raise
        record = SessionRecord.from_row(row)
        secret = self.settings.session_token_secret
        assert secret is not None, "CHAT_ENGINE_SESSION_TOKEN_SECRET is resolved by the launcher"
        live = LiveSession(
            record=record, state=SessionState.load(row["state"]), pool=res.pool, events=res.events,
            delivery=delivery_for(record, res.events), settings=self.settings,
            canary=make_canary(str(self.tenant_id), secret.get_secret_value()),
            sla=SlaTimer(lambda: self.fire_timer("sla")),
        )
        self._resources = res

        async def retrieve(question: str, vec: Any) -> list[Any]:
            return await search(res.pool, None, self.tenant_id, question, k=self.settings.retrieval_k,
                                query_embedding=vec)

        self._runner = TurnRunner(live, self.models, TurnPipeline(self.models, retrieve, self.intents))
        if sum(self._enqueue(int(m["id"])) for m in pending):  # a turn acts only on `received`
            log.info("session %s re-queued %d unanswered message(s)", self.session_id, len(pending))
        if sla_due is not None:
            live.sla.arm(sla_due)
        return live

    def _enqueue(self, message_id: int) -> bool:
        """Queue a message's turn once; True when it was not queued yet."""
        if message_id in self.queued:
            return False
        self.queued.add(message_id)
        self.queue.put_nowait(message_id)
        return True

    async def _work(self) -> None:
        assert self._runner is not None
        while True:
            message_id = await self.queue.get()
            await self._turns_open.wait()
            ctl = self.current = TurnControl(message_id)
            try:
                await self._runner.run(message_id, ctl)
            finally:
                self.current = None
                self.queued.discard(message_id)
                self.last_activity = time.monotonic()

    async def _hold_lease(self, live: LiveSession) -> None:
        """Keep this conversation's place under the live-actor caps while it is active."""
        while True:
            try:
                await hold_lease(live.events.redis, self.tenant_id, self.session_id, self.node_id)
            except Exception as exc:  # noqa: BLE001 - Redis hiccup: the next refresh writes it
                log.warning("session %s: actor lease not refreshed (%s)", self.session_id,
                            type(exc).__name__)
            await asyncio.sleep(LEASE_REFRESH_S)

    # ------------------------------------------------------------------ call plumbing
    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[LiveSession]:
        if self.closing:
            raise SessionPassivating("this conversation's actor is being passivated; call again")
        self.in_flight += 1
        try:
            live = await self.activate()
            self.last_activity = time.monotonic()
            try:
                yield live
            except Exception as exc:
                if is_transient(exc):  # nothing was committed: say so, and that a retry may work
                    raise DependencyUnavailable(
                        f"Postgres or Redis is unreachable ({type(exc).__name__}); nothing was "
                        "changed: try again shortly") from exc
                raise
        finally:
            self.in_flight -= 1
            self.last_activity = time.monotonic()

    @contextlib.asynccontextmanager
    async def _transition(self, *, abort: bool) -> AsyncIterator[LiveSession]:
        """A status operation: exclusive among operations; no new turn starts meanwhile; with
        ``abort`` the running turn is aborted and has wound down before the body runs."""
        async with self._call() as live, self._ops:
            self._turns_open.clear()
            try:
                if abort and self.current is not None:
                    ctl = self.current
                    await ctl.abort()
                    if not await ctl.wait_finished(ABORT_WAIT_S):
                        log.warning("session %s: aborted turn still running after %.0f s",
                                    self.session_id, ABORT_WAIT_S)
                yield live
            finally:
                self._turns_open.set()

    # ------------------------------------------------------------------ operations
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
        await live.events.notify_inbox(self.tenant_id, "assigned",
                                       {"session_id": self.session_id, "agent_id": str(agent)})

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

            return await send_message(live.pool, live.delivery, live.record, "agent", text, 0,
                                      agent_id=UUID(agent_id), in_tx=answered,
                                      payload_extra={"agent_name": agent_name})

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
            return {"status": "ai_handled"}

    async def close(self) -> dict[str, Any]:
        """Close the conversation (a running answer is aborted); the actor passivates soon."""
        async with self._transition(abort=True) as live:
            async with live.pool.acquire() as conn, conn.transaction():
                await sess_db.update_session(conn, self.tenant_id, self.session_id, status="closed",
                                             closed_at=now())
                await timer_db.clear_timer(conn, self.tenant_id, self.session_id, "sla")
            live.record = live.record.with_(status="closed")
            live.sla.cancel()
            self.last_activity = 0.0
            return {"status": "closed"}

    async def fire_timer(self, kind: str) -> dict[str, Any]:
        """Run a due timer (the Timekeeper's call or the in-memory SLA timer). Acts at most once:
        the timer row is deleted in the transaction that sends the fallback message."""
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

    # ------------------------------------------------------------------ passivation
    def idle_for(self) -> float:
        """Seconds since the last call or turn."""
        return time.monotonic() - self.last_activity

    def can_passivate(self, force: bool = False) -> bool:
        """True when nothing runs or waits (no turn running or queued, no call in flight).

        A conversation waiting for an agent (``human_escalated``) passivates like any other:
        its SLA timer is the stored ``timers`` row, which the Timekeeper fires on a fresh
        activation, and an agent's takeover or reply activates it again. ``force`` is accepted
        for callers written when it overrode that wait; it changes nothing now.
        """
        del force
        return self.current is None and self.queue.empty() and self.in_flight == 0

    async def passivate(self, force: bool = False) -> bool:
        """Refuse new calls, persist, give back the actor's place under the caps, release
        everything. False (and nothing changed) when :meth:`can_passivate` says no. The caller
        then ends the process/actor."""
        if self.closing or not self.can_passivate(force):
            return False
        self.closing = True
        await stop_task(self._worker)
        await stop_task(self._lease)
        with contextlib.suppress(Exception):
            if self.live is not None:
                self.live.sla.cancel()
                async with self.live.pool.acquire() as conn:
                    await sess_db.update_session(conn, self.tenant_id, self.session_id,
                                                 state=self.live.state.dump())
        with contextlib.suppress(Exception):
            if self.live is not None:
                await release_lease(self.live.events.redis, self.tenant_id, self.session_id,
                                    self.node_id)
        with contextlib.suppress(Exception):
            if self._resources is not None:
                await self._resources.close()
        return True


class _AlreadyFired(Exception):
    """The SLA timer row was already gone: another call fired it."""
