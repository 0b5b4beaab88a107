"""A conversation's lifecycle: activation, the call plumbing its operations run in, and
passivation (the operations themselves are :class:`runtime.conversation.conversation.Conversation`).

Activation loads the session (retrying transient failures with backoff; a failed activation is
not remembered), re-queues its unanswered messages, arms the SLA and starts the turn worker,
which answers queued customer messages one at a time, in order. Operations run inside
:meth:`ConversationLifecycle._call` (activate, count the call in flight, turn a transient
failure into DependencyUnavailable) or :meth:`ConversationLifecycle._transition` (exclusive among
operations, no new turn meanwhile, optionally abort the running one and wait for it to wind down).
During passivation calls are refused with SessionPassivating (the caller retries on the next
actor).

A live conversation holds a lease under its tenant's and node's caps of live actors
(:mod:`runtime.conversation.capacity`), refreshed while active and given back on passivation.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from tenacity import AsyncRetrying, retry_if_exception, stop_after_delay, wait_exponential_jitter

from runtime.actions.engine import ActionEngine
from runtime.answering.intents import IntentClassifier
from runtime.config import Settings
from runtime.conversation.capacity import LEASE_REFRESH_S, hold_lease, release_lease
from runtime.conversation.control import TurnControl
from runtime.conversation.delivery import delivery_for
from runtime.conversation.escalation import SlaTimer, stop_task
from runtime.conversation.faults import is_transient
from runtime.conversation.live import LiveSession
from runtime.conversation.pipeline import TurnPipeline
from runtime.conversation.ports import ModelPorts
from runtime.conversation.resources import Resources, open_resources
from runtime.conversation.state import SessionRecord, SessionState
from runtime.conversation.turns import TurnRunner
from runtime.db import messages as msg_db
from runtime.db import sessions as sess_db
from runtime.db import timers as timer_db
from runtime.errors import DependencyUnavailable, SessionPassivating
from runtime.metrics import metrics
from runtime.policy import make_canary
from runtime.retrieval import search

log = logging.getLogger(__name__)

ABORT_WAIT_S = 10.0


class ConversationLifecycle(abc.ABC):
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

    @abc.abstractmethod
    async def fire_timer(self, kind: str) -> dict[str, Any]:
        """Run a due timer (the in-memory SLA timer calls it); see the subclass."""

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
            started = time.perf_counter()
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
            metrics().activation((time.perf_counter() - started) * 1000)
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

        actions = ActionEngine(res.pool, self.settings, self.tenant_id, self.models.embed_many)
        self._runner = TurnRunner(live, self.models, TurnPipeline(self.models, retrieve, self.intents,
                                                                  actions=actions))
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

    # ------------------------------------------------------------------ passivation
    async def _arm_auto_close(self, conn: Any) -> None:
        """A conversation still with the bot, in which the customer wrote, is closed after
        ``auto_close_hours`` of silence (the Timekeeper fires the stored timer; see
        :mod:`runtime.conversation.closing`)."""
        if self.live is None or self.live.record.status != "ai_handled":
            return
        if await sess_db.has_customer_messages(conn, self.tenant_id, self.session_id):
            due = datetime.now(UTC) + timedelta(hours=self.settings.auto_close_hours)
            await timer_db.set_timer(conn, self.tenant_id, self.session_id, "auto_close", due)

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
                    await self._arm_auto_close(conn)
        with contextlib.suppress(Exception):
            if self.live is not None:
                await release_lease(self.live.events.redis, self.tenant_id, self.session_id,
                                    self.node_id)
        with contextlib.suppress(Exception):
            if self._resources is not None:
                await self._resources.close()
        return True
