"""SessionActor: one detached Ray actor per active conversation (DESIGN.md, Session actor).

The actor is the single writer of its session. Customer messages queue in order and run one turn
at a time in a background task; ``takeover``, ``agent_reply``, ``hand_back``, ``close``,
``handoff`` and ``status`` never wait behind a turn. Every event goes to the session's Redis
stream; HTTP handlers only read from it, so a dropped connection never aborts an answer.
Postgres is the system of record: on (re)activation the actor reloads its state and re-queues
customer messages that have no answer yet.

Light process: no torch, sentence-transformers or llama_cpp here; the models are reached through
Serve handles. At most 2 database connections (pool min 0, max 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import ray

from runtime.bot_config import BotConfig
from runtime.config import get_settings
from runtime.db import bot_configs
from runtime.db import conversations as conv
from runtime.db.pool import create_pool
from runtime.errors import ChatEngineError, Conflict
from runtime.events import SessionEvents, redis_client
from runtime.models.types import Final, GenerationRequest, TokenDelta
from runtime.output_guard import OutputGuard
from runtime.policy.engine import PolicyEngine
from runtime.policy.injection import make_canary
from runtime.policy.leads import check_email_reply, declines_to_share, find_lead_rule
from runtime.prompting import build_prompt

log = logging.getLogger(__name__)

NAMESPACE = "chat"
APP_NAME = "chat"
MEDIA_ONLY_REPLY = (
    "I can only read text messages right now. Could you describe what you're seeing?"
)
INVALID_EMAIL_REPLY = (
    "That email address doesn't look right ({error}). Could you check it and send it again?"
)
# Turns whose best source is only a little above the tenant's threshold count as weak; this many
# in a row (EscalationRules.max_low_coverage_turns) escalate as repeated failure.
WEAK_COVERAGE_MARGIN = 0.1


def actor_name(tenant_id: Any, session_id: Any) -> str:
    """``session:<tenant_id>:<session_id>``."""
    return f"session:{tenant_id}:{session_id}"


def _now() -> datetime:
    return datetime.now(UTC)


class _Aborted(Exception):
    """The running generation was cancelled by a takeover/handoff/close."""


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0, max_concurrency=1000)  # type: ignore[call-overload]
class SessionActor:
    """One conversation. Create with :func:`actors.session.session_actor_options`.

    Methods return JSON-safe dicts. Raises SessionNotFound (through Ray) if the session row is
    gone.
    """

    def __init__(self, tenant_id: str, session_id: str) -> None:
        self.tenant_id = UUID(tenant_id)
        self.session_id = UUID(session_id)
        self.settings = get_settings()
        self.policy = PolicyEngine()
        self.queue: asyncio.Queue[int] = asyncio.Queue()
        self.queued: set[int] = set()
        self.session: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self.pool: Any = None
        self.events: SessionEvents | None = None
        self.generator: Any = None
        self.embedder: Any = None
        self.canary = ""
        self._gen_response: Any = None
        self._aborting = False
        self._turn_running = False
        # Set while a finished answer is being stored and published: an abort that comes then
        # waits for it, so the customer never gets an AI answer after agent_joined/handoff.
        self._delivering: asyncio.Event | None = None
        self._last_activity = time.monotonic()
        self._sla_task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._init_error: BaseException | None = None
        loop = asyncio.get_running_loop()
        self._activation = loop.create_task(self._activate())
        self._worker = loop.create_task(self._run_turns())
        self._idle_task = loop.create_task(self._idle_watch())

    # ------------------------------------------------------------------ lifecycle
    async def _activate(self) -> None:
        try:
            from ray import serve

            s = self.settings
            assert s.database_url is not None and s.redis_url is not None
            self.pool = await create_pool(
                str(s.database_url), min_size=0, max_size=s.actor_db_pool_max,
                statement_cache_size=s.db_statement_cache_size,
                max_inactive_connection_lifetime=30.0,
            )
            self.events = SessionEvents(redis_client(str(s.redis_url)))
            self.generator = serve.get_deployment_handle("Generator", app_name=APP_NAME)
            self.embedder = serve.get_deployment_handle("Embedder", app_name=APP_NAME)
            assert s.session_token_secret is not None
            self.canary = make_canary(str(self.tenant_id), s.session_token_secret.get_secret_value())
            async with self.pool.acquire() as conn:
                row = await conv.get_session(conn, self.tenant_id, self.session_id)
                self.session = dict(row)
                self.state = dict(row["state"] or {})
                pending = await conv.unanswered_customer_messages(
                    conn, self.tenant_id, self.session_id
                )
                sla_due = await conv.get_timer(conn, self.tenant_id, self.session_id, "sla")
            for msg in pending:  # answered exactly once: the turn re-checks the row's status
                self._enqueue(msg["id"])
            if sla_due is not None:
                self._arm_sla(sla_due)
            if pending:
                log.info("session %s re-queued %d unanswered message(s)", self.session_id, len(pending))
        except BaseException as exc:  # surfaced to every caller by _wait_ready
            self._init_error = exc
            log.exception("session %s failed to activate", self.session_id)
        finally:
            self._ready.set()

    async def _wait_ready(self) -> None:
        await self._ready.wait()
        if self._init_error is not None:
            raise self._init_error
        self._last_activity = time.monotonic()

    def _enqueue(self, message_id: int) -> None:
        if message_id not in self.queued:
            self.queued.add(message_id)
            self.queue.put_nowait(message_id)

    async def _idle_watch(self) -> None:
        idle_s = self.settings.idle_minutes * 60
        period = max(0.5, min(30.0, idle_s / 4))
        while True:
            await asyncio.sleep(period)
            if time.monotonic() - self._last_activity >= idle_s and self._can_passivate():
                await self._passivate()
                return

    def _can_passivate(self) -> bool:
        # A session waiting for an agent stays active (its SLA timer is also in Postgres).
        return (
            not self._turn_running
            and self.queue.empty()
            and self.session.get("status") != "human_escalated"
        )

    async def _passivate(self) -> None:
        log.info("session %s passivating", self.session_id)
        with contextlib.suppress(Exception):
            await self._persist_state()
            if self.pool is not None:
                await self.pool.close()
            if self.events is not None:
                await self.events.redis.close()
        ray.actor.exit_actor()

    async def passivate(self, force: bool = False) -> dict[str, Any]:
        """Persist and exit. Refused (``{"passivated": False}``) while a turn runs or, unless
        ``force``, while the session waits for an agent. State is in Postgres either way."""
        await self._wait_ready()
        if not force and not self._can_passivate():
            return {"passivated": False, "status": self.session.get("status")}
        if self._turn_running or not self.queue.empty():
            return {"passivated": False, "status": self.session.get("status")}
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: loop.create_task(self._passivate()))
        return {"passivated": True, "status": self.session.get("status")}

    # ------------------------------------------------------------------ public methods
    async def ping(self) -> dict[str, Any]:
        """Liveness; activates the session."""
        await self._wait_ready()
        return {"ok": True, "pid": os.getpid()}

    async def status(self) -> dict[str, Any]:
        """Current status, assignee, queue length and whether a turn is running."""
        await self._wait_ready()
        return {
            "session_id": str(self.session_id),
            "status": self.session.get("status"),
            "assignee_id": str(self.session["assignee_id"]) if self.session.get("assignee_id") else None,
            "queued": self.queue.qsize(),
            "turn_running": self._turn_running,
            "pid": os.getpid(),
        }

    async def submit(
        self, text: str, client_msg_id: str | None = None, external_id: str | None = None,
        attachments: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Persist a customer message (idempotent) and queue its turn.

        Returns ``{"message_id", "duplicate", "status", "answer"}``; ``answer`` is the delivered
        reply (a message dict) for a duplicate that was already answered, else None.
        Raises SessionNotFound for a client_msg_id/external_id owned by another session.
        """
        await self._wait_ready()
        assert self.events is not None
        async with self.pool.acquire() as conn:
            row, created = await conv.insert_customer_message(
                conn, self.tenant_id, self.session_id, self.session["channel_id"], text,
                attachments or [], client_msg_id, external_id,
            )
            answer = None
            if not created:
                reply = await conv.answer_to(conn, self.tenant_id, row["id"])
                answer = message_payload(reply) if reply is not None else None
        if created:
            await self.events.publish(
                self.session_id, "message", f"{row['id']}:0", message_payload(row), turn=row["id"]
            )
            self._enqueue(row["id"])
        return {
            "message_id": row["id"], "duplicate": not created, "status": row["status"],
            "answer": answer,
        }

    async def handoff(self, reason: str = "The customer asked for a human.") -> dict[str, Any]:
        """The "Talk to a human" button: escalate now, aborting a running answer."""
        await self._wait_ready()
        if self.session["status"] == "ai_handled":
            await self._abort_generation()
            await self._escalate(reason, "handoff_button", None, turn=0)
        return {"status": self.session["status"]}

    async def takeover(self, agent_id: str, agent_name: str) -> dict[str, Any]:
        """An agent takes the conversation: ``human_assigned``, the running generation is
        cancelled (nothing partial is delivered; the stream gets ``aborted``). An answer already
        generated whole and being stored is delivered first; ``agent_joined`` follows it."""
        await self._wait_ready()
        assert self.events is not None
        if self.session["status"] == "closed":
            raise Conflict("the session is closed; a new customer message opens a new one")
        await self._abort_generation()
        agent = UUID(agent_id)
        self.session.update(status="human_assigned", assignee_id=agent)
        async with self.pool.acquire() as conn, conn.transaction():
            await conv.update_session(
                conn, self.tenant_id, self.session_id, status="human_assigned",
                assignee_id=agent, assigned_at=_now(),
            )
            await conv.claim_escalations(conn, self.tenant_id, self.session_id, agent)
            await conv.clear_timer(conn, self.tenant_id, self.session_id, "sla")
            mid = await conv.reserve_message_id(conn)
        self._cancel_sla()
        await self.events.publish(
            self.session_id, "agent_joined", f"{mid}:0", {"agent_name": agent_name}
        )
        await self.events.notify_inbox(
            self.tenant_id, "assigned", {"session_id": self.session_id, "agent_id": agent_id}
        )
        return {"status": "human_assigned"}

    async def agent_reply(self, agent_id: str, agent_name: str, text: str) -> dict[str, Any]:
        """Deliver an agent's message. A reply to a session not yet assigned takes it over."""
        await self._wait_ready()
        assert self.events is not None
        if self.session["status"] in ("ai_handled", "human_escalated"):
            await self.takeover(agent_id, agent_name)
        elif self.session["status"] == "closed":
            raise Conflict("the session is closed; the customer can no longer receive replies")
        async with self.pool.acquire() as conn:
            row = await conv.insert_message(
                conn, self.tenant_id, self.session_id, self.session["channel_id"], "agent", text,
                agent_id=UUID(agent_id),
            )
            await conn.execute(
                """UPDATE messages SET status = 'answered' WHERE tenant_id = $1 AND session_id = $2
                   AND sender = 'customer' AND status = 'inbox'""",
                self.tenant_id, self.session_id,
            )
        payload = {**message_payload(row), "agent_name": agent_name}
        await self.events.publish(self.session_id, "message", f"{row['id']}:0", payload)
        await self.events.publish(self.session_id, "done", f"{row['id']}:1", {"message_id": row["id"]})
        return payload

    async def hand_back(self, agent_id: str | None = None) -> dict[str, Any]:
        """Return the conversation to the bot (``ai_handled``)."""
        await self._wait_ready()
        if self.session["status"] == "closed":
            raise Conflict("the session is closed")
        self.session.update(status="ai_handled", assignee_id=None)
        self.state["weak_streak"] = 0
        async with self.pool.acquire() as conn:
            await conv.update_session(
                conn, self.tenant_id, self.session_id, status="ai_handled", assignee_id=None,
                state=self.state,
            )
            await conv.clear_timer(conn, self.tenant_id, self.session_id, "sla")
        self._cancel_sla()
        return {"status": "ai_handled"}

    async def close(self) -> dict[str, Any]:
        """Close the conversation; the actor then passivates."""
        await self._wait_ready()
        await self._abort_generation()
        self.session["status"] = "closed"
        async with self.pool.acquire() as conn:
            await conv.update_session(
                conn, self.tenant_id, self.session_id, status="closed", closed_at=_now()
            )
            await conv.clear_timer(conn, self.tenant_id, self.session_id, "sla")
        self._cancel_sla()
        self._last_activity = 0.0  # passivate at the next idle check
        return {"status": "closed"}

    async def fire_timer(self, kind: str) -> dict[str, Any]:
        """Run a due timer (called by the Timekeeper or the actor's own asyncio timer).

        Idempotent: the timer row is deleted first, so it acts at most once.
        """
        await self._wait_ready()
        assert self.events is not None
        if kind != "sla":
            return {"fired": False}
        async with self.pool.acquire() as conn:
            if not await conv.clear_timer(conn, self.tenant_id, self.session_id, "sla"):
                return {"fired": False}
            if self.session["status"] != "human_escalated":
                return {"fired": False}
            cfg = await self._config(conn)
            row = await conv.insert_message(
                conn, self.tenant_id, self.session_id, self.session["channel_id"], "system",
                cfg.sla_fallback_message,
            )
            await conn.execute(
                """UPDATE escalations SET sla_breached_at = now()
                   WHERE tenant_id = $1 AND session_id = $2 AND claimed_at IS NULL
                     AND sla_breached_at IS NULL""",
                self.tenant_id, self.session_id,
            )
            await conv.record_event(
                conn, self.tenant_id, self.session_id, "sla_breached",
                {"minutes": cfg.sla_minutes or self.settings.sla_minutes, "message_id": row["id"]},
            )
        await self.events.publish(self.session_id, "message", f"{row['id']}:0", message_payload(row))
        await self.events.notify_inbox(
            self.tenant_id, "sla_breached",
            {"session_id": self.session_id, "message_id": row["id"]},
        )
        return {"fired": True, "message_id": row["id"]}

    # ------------------------------------------------------------------ SLA timer
    def _arm_sla(self, due_at: datetime) -> None:
        self._cancel_sla()
        delay = max(0.0, (due_at - _now()).total_seconds())

        async def _fire() -> None:
            await asyncio.sleep(delay)
            with contextlib.suppress(Exception):
                await self.fire_timer("sla")

        self._sla_task = asyncio.get_running_loop().create_task(_fire())

    def _cancel_sla(self) -> None:
        if self._sla_task is not None:
            self._sla_task.cancel()
            self._sla_task = None

    # ------------------------------------------------------------------ turns
    async def _abort_generation(self) -> None:
        """Cancel the running answer; if it is already past generation and being delivered,
        wait until it is delivered, so whatever the caller publishes next comes after it."""
        if self._turn_running:
            self._aborting = True
            if self._gen_response is not None:
                with contextlib.suppress(Exception):
                    self._gen_response.cancel()
        if self._delivering is not None:
            await self._delivering.wait()

    async def _run_turns(self) -> None:
        await self._ready.wait()
        while True:
            message_id = await self.queue.get()
            self._turn_running = True
            self._aborting = False
            try:
                await self._turn(message_id)
            except Exception:
                log.exception("turn for message %s failed", message_id)
                with contextlib.suppress(Exception):
                    await self._turn_failed(message_id)
            finally:
                self._turn_running = False
                self._gen_response = None
                self.queued.discard(message_id)
                self._last_activity = time.monotonic()

    async def _config(self, conn: Any) -> BotConfig:
        row = await bot_configs.get_bot_config(conn, self.tenant_id)
        self._bot_row = row
        return BotConfig.model_validate(row["config"])

    async def _persist_state(self) -> None:
        if self.pool is None:
            return
        async with self.pool.acquire() as conn:
            await conv.update_session(conn, self.tenant_id, self.session_id, state=self.state)

    async def _send(
        self, sender: str, text: str, turn: int, *, reply_to: int | None = None,
        customer_status: str | None = None,
        extra_events: tuple[tuple[str, dict[str, Any]], ...] = (),
        **fields: Any,
    ) -> dict[str, Any]:
        """Persist and publish a complete message (``message`` then extras then ``done``)."""
        assert self.events is not None
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conv.insert_message(
                conn, self.tenant_id, self.session_id, self.session["channel_id"], sender, text,
                reply_to=reply_to, **fields,
            )
            if customer_status and reply_to is not None:
                await conv.set_message_status(conn, self.tenant_id, reply_to, customer_status)
        payload = message_payload(row)
        mid = row["id"]
        await self.events.publish(self.session_id, "message", f"{mid}:0", payload, turn=turn)
        seq = 1
        for kind, data in extra_events:
            await self.events.publish(self.session_id, kind, f"{mid}:{seq}", data, turn=turn)
            seq += 1
        await self.events.publish(self.session_id, "done", f"{mid}:{seq}", {"message_id": mid}, turn=turn)
        return payload

    async def _finish_to_inbox(self, message_id: int, text: str) -> None:
        assert self.events is not None
        async with self.pool.acquire() as conn:
            await conv.set_message_status(conn, self.tenant_id, message_id, "inbox")
        await self.events.publish(
            self.session_id, "done", f"{message_id}:1", {"message_id": message_id}, turn=message_id
        )
        await self.events.notify_inbox(
            self.tenant_id, "message",
            {"session_id": self.session_id, "message_id": message_id, "text": text[:200]},
        )

    async def _turn_failed(self, message_id: int) -> None:
        assert self.events is not None
        await self.events.publish(
            self.session_id, "error", f"{message_id}:9",
            {"code": "turn_failed", "message": "Something went wrong; our team has been notified."},
            turn=message_id,
        )
        if self.session.get("status") == "ai_handled":
            await self._escalate("The assistant failed to answer.", "turn_failed", None, message_id)

    async def _turn(self, message_id: int) -> None:
        t0 = time.perf_counter()
        async with self.pool.acquire() as conn:
            msg = await conn.fetchrow(
                """SELECT id, text, attachments, status FROM messages
                   WHERE tenant_id = $1 AND session_id = $2 AND id = $3""",
                self.tenant_id, self.session_id, message_id,
            )
            if msg is None or msg["status"] != "received":
                return  # already answered (a repeat, or re-queued after a restart)
            cfg = await self._config(conn)
            bot = self._bot_row
        text: str = msg["text"]
        if self.session["status"] == "closed":
            # A customer writing again reopens the conversation with the bot.
            self.session.update(status="ai_handled", assignee_id=None)
            async with self.pool.acquire() as conn:
                await conv.update_session(conn, self.tenant_id, self.session_id,
                                          status="ai_handled", assignee_id=None, closed_at=None)
        paused = bot["status"] == "paused" or (
            bot["credit_balance"] is not None and bot["credit_balance"] <= 0
        )
        # 2. Human-handled sessions and paused bots: the inbox only.
        if self.session["status"] != "ai_handled" or paused:
            await self._finish_to_inbox(message_id, text)
            return
        if not text.strip():
            await self._send("ai", MEDIA_ONLY_REPLY, message_id, reply_to=message_id,
                             customer_status="inbox")
            await self.events.notify_inbox(  # type: ignore[union-attr]
                self.tenant_id, "message", {"session_id": self.session_id, "message_id": message_id,
                                            "attachments": msg["attachments"]},
            )
            return

        # 3. Policy before generation.
        decision = self.policy.evaluate(text, cfg.escalation, int(self.state.get("weak_streak", 0)))
        if decision.escalate:
            await self._escalate(decision.reason or "policy", decision.signal, text, message_id,
                                 decision.detail)
            return

        # 4. Lead capture.
        question = text
        lead = self.state.get("lead")
        if lead:
            check = check_email_reply(text)
            if check.email:
                await self._save_lead(check.email, lead)
                question = lead["question"]
                self.state.pop("lead", None)
            elif declines_to_share(text):
                question = lead["question"]
                self.state.pop("lead", None)
            else:
                error = check.error or "no email address found"
                await self._send("ai", INVALID_EMAIL_REPLY.format(error=error), message_id,
                                 reply_to=message_id, customer_status="answered", intent="lead_ask")
                return
            await self._persist_state()
        else:
            found = find_lead_rule(text, cfg.lead_capture)
            if found is not None and not await self._contact_has_email():
                rule, topic = found
                self.state["lead"] = {"question": text, "topic": topic}
                await self._persist_state()
                await self._send("ai", rule.ask_message, message_id, reply_to=message_id,
                                 customer_status="answered", intent="lead_ask")
                return

        # 5. Retrieval and coverage.
        from runtime.retrieval import embed_query, search

        t_embed = time.perf_counter()
        query_vec = await embed_query(self.embedder, question)
        t_search = time.perf_counter()
        chunks = await search(self.pool, self.embedder, self.tenant_id, question,
                              k=self.settings.retrieval_k, query_embedding=query_vec)
        timing = {"embed_ms": round((t_search - t_embed) * 1000, 2),
                  "search_ms": round((time.perf_counter() - t_search) * 1000, 2)}
        best = max((c.similarity for c in chunks), default=None)
        coverage = self.policy.check_coverage(best, cfg.escalation.min_similarity)
        if coverage.escalate:
            await self._escalate("could not answer: " + (coverage.reason or ""), "low_coverage",
                                 question, message_id, coverage.detail)
            return
        weak = best is not None and best < cfg.escalation.min_similarity + WEAK_COVERAGE_MARGIN
        self.state["weak_streak"] = int(self.state.get("weak_streak", 0)) + 1 if weak else 0

        # 6. Generate, stream, persist.
        await self._answer(message_id, question, chunks, cfg, t0, timing)

    async def _contact_has_email(self) -> bool:
        if self.session.get("contact_id") is None:
            return False
        async with self.pool.acquire() as conn:
            contact = await conv.get_contact(conn, self.tenant_id, self.session["contact_id"])
        return bool(contact and contact["email"])

    async def _save_lead(self, email: str, lead: dict[str, Any]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if self.session.get("contact_id") is not None:
                await conv.set_contact_email(conn, self.tenant_id, self.session["contact_id"], email)
            lead_id = await conv.insert_lead(
                conn, self.tenant_id, self.session_id, self.session.get("contact_id"), email,
                lead.get("topic"), lead.get("question"),
            )
            await conv.record_event(conn, self.tenant_id, self.session_id, "lead",
                                    {"lead_id": str(lead_id), "email": email})
        assert self.events is not None
        await self.events.notify_inbox(self.tenant_id, "lead",
                                       {"session_id": self.session_id, "email": email})

    async def _answer(
        self, message_id: int, question: str, chunks: list[Any], cfg: BotConfig, t0: float,
        timing: dict[str, float],
    ) -> None:
        """Stream the Generator's answer through the output guard, then persist it.

        timing: milliseconds already spent (embed_ms, search_ms); the ``done`` event carries them
        with the model's own time to first token (model_ttft_ms) and the whole turn (turn_ms).
        """
        assert self.events is not None
        if not hasattr(self, "_context_window"):
            self._context_window = int(await self.generator.context_window.remote())
        async with self.pool.acquire() as conn:
            history_rows = await conv.recent_history(
                conn, self.tenant_id, self.session_id, message_id, self.settings.history_turns
            )
            answer_id = await conv.reserve_message_id(conn)
        max_new = self.settings.llm_max_tokens
        prompt = build_prompt(
            cfg, self.canary, question, chunks, [(r["sender"], r["text"]) for r in history_rows],
            context_window=self._context_window, max_new_tokens=max_new,
            source_tokens=self.settings.prompt_source_tokens,
        )
        used = [chunks[i] for i in prompt.used_chunks]
        request = GenerationRequest(messages=prompt.messages, max_tokens=max_new, prefix_messages=1)
        guard = OutputGuard(self.canary)
        parts: list[str] = []
        seq = 0
        final: Final | None = None
        guard_hit: str | None = None

        async def emit(piece: str) -> None:
            nonlocal seq
            if piece and not self._aborting:
                parts.append(piece)
                await self.events.publish(  # type: ignore[union-attr]
                    self.session_id, "token", f"{answer_id}:{seq}",
                    {"message_id": answer_id, "seq": seq, "text": piece}, turn=message_id,
                )
                seq += 1

        response = self.generator.options(stream=True).generate.remote(request)
        self._gen_response = response
        try:
            async for item in response:
                if self._aborting:
                    raise _Aborted
                if isinstance(item, TokenDelta):
                    safe = guard.feed(item.text)
                    if guard.hit:
                        guard_hit = guard.hit
                        break
                    await emit(safe)
                elif isinstance(item, Final):
                    final = item
            if self._aborting:
                raise _Aborted
            if guard_hit is None:
                tail = guard.flush()
                guard_hit = guard.hit
                await emit(tail)
        except (_Aborted, asyncio.CancelledError):
            await self._publish_aborted(answer_id, message_id)
            return
        except Exception as exc:
            if self._aborting:
                await self._publish_aborted(answer_id, message_id)
                return

            code = exc.code if isinstance(exc, ChatEngineError) else "generation_failed"
            log.warning("generation failed for message %s: %s", message_id, exc)
            if parts:
                await self._publish_aborted(answer_id, message_id)
            await self.events.publish(
                self.session_id, "error", f"{answer_id}:{seq}",
                {"code": code, "message": "The assistant could not answer; a person will help."},
                turn=message_id,
            )
            await self._escalate("The assistant backend failed.", code, question, message_id)
            return
        finally:
            self._gen_response = None
            if guard_hit is not None:
                with contextlib.suppress(Exception):
                    response.cancel()

        if guard_hit is not None:
            if parts:
                await self._publish_aborted(answer_id, message_id)
            reason = ("The answer was stopped by the output guard." if guard_hit == "canary"
                      else "The assistant could not answer from the knowledge base.")
            await self._escalate(reason, guard_hit, question, message_id)
            return

        answer = "".join(parts).strip()
        if not answer:
            await self._escalate("The assistant produced no answer.", "empty_answer", question,
                                 message_id)
            return
        if self._aborting:
            await self._publish_aborted(answer_id, message_id)
            return
        # From here the answer is delivered whole: no await between the check above and this.
        self._delivering = asyncio.Event()
        try:
            await self._deliver_answer(t0, timing, answer, answer_id, message_id, seq, final, used)
        finally:
            self._delivering.set()
            self._delivering = None

    async def _deliver_answer(
        self, t0: float, timing: dict[str, float], answer: str, answer_id: int, message_id: int,
        seq: int, final: Final | None, used: list[Any],
    ) -> None:
        """Store the AI message (with usage, sources, credit) and publish ``message`` + ``done``."""
        assert self.events is not None
        usage = final.usage if final is not None else None
        latency_ms = int((time.perf_counter() - t0) * 1000)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conv.insert_message(
                conn, self.tenant_id, self.session_id, self.session["channel_id"], "ai", answer,
                message_id=answer_id, reply_to=message_id, latency_ms=latency_ms,
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=usage.completion_tokens if usage else None,
                backend=final.backend if final else None,
                source_chunk_ids=[int(c.chunk_id) for c in used],
                confidence=max((c.similarity for c in used), default=None),
            )
            await conv.set_message_status(conn, self.tenant_id, message_id, "answered")
            if usage and final:
                await conv.record_usage(conn, self.tenant_id, self.session_id, answer_id,
                                        final.backend, usage.prompt_tokens, usage.completion_tokens)
            await bot_configs.consume_credit(conn, self.tenant_id)
            await conv.update_session(conn, self.tenant_id, self.session_id, state=self.state)
        payload = {**message_payload(row), "sources": [source_payload(c) for c in used]}
        await self.events.publish(self.session_id, "message", f"{answer_id}:{seq}", payload,
                                  turn=message_id)
        timing = {**timing, "turn_ms": round((time.perf_counter() - t0) * 1000, 2)}
        if usage is not None:
            timing.update(model_ttft_ms=round(usage.ttft_ms, 2),
                          cached_prompt_tokens=usage.cached_prompt_tokens,
                          prompt_tokens=usage.prompt_tokens)
        await self.events.publish(self.session_id, "done", f"{answer_id}:{seq + 1}",
                                  {"message_id": answer_id, "timing": timing}, turn=message_id)

    async def _publish_aborted(self, answer_id: int, message_id: int) -> None:
        assert self.events is not None
        async with self.pool.acquire() as conn:
            status = "inbox" if self.session.get("status") != "ai_handled" else "received"
            if status == "inbox":
                await conv.set_message_status(conn, self.tenant_id, message_id, "inbox")
        await self.events.publish(self.session_id, "aborted", f"{answer_id}:a",
                                  {"message_id": answer_id}, turn=message_id)

    async def _escalate(
        self, reason: str, signal: str | None, question: str | None, turn: int,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Status ``human_escalated``, the reason and question stored, a polite message to the
        customer, ``handoff`` on the stream, an ``escalation`` event for the inbox, SLA armed."""
        assert self.events is not None
        self.session.update(status="human_escalated", escalation_reason=reason)
        async with self.pool.acquire() as conn, conn.transaction():
            cfg = await self._config(conn)
            due = _now() + timedelta(minutes=cfg.sla_minutes or self.settings.sla_minutes)
            await conv.update_session(
                conn, self.tenant_id, self.session_id, status="human_escalated",
                escalation_reason=reason, escalation_question=question, escalated_at=_now(),
                state=self.state,
            )
            esc_id = await conv.insert_escalation(conn, self.tenant_id, self.session_id, reason,
                                                  signal, question)
            await conv.record_event(conn, self.tenant_id, self.session_id, "escalation",
                                    {"escalation_id": str(esc_id), "reason": reason,
                                     "signal": signal, "question": question,
                                     "detail": detail or {}})
            await conv.set_timer(conn, self.tenant_id, self.session_id, "sla", due)
        text = cfg.could_not_answer_message if signal == "low_coverage" else cfg.handoff_message
        await self._send(
            "system", text, turn, reply_to=turn or None,
            customer_status="inbox" if turn else None,
            extra_events=(("handoff", {"reason": reason, "signal": signal}),),
            intent="escalation",
        )
        await self.events.notify_inbox(self.tenant_id, "escalation", {
            "session_id": self.session_id, "escalation_id": esc_id, "reason": reason,
            "signal": signal, "question": question,
        })
        self._arm_sla(due)


def message_payload(row: Any) -> dict[str, Any]:
    """The ``message`` event / API shape of a message row."""
    created = row["created_at"]
    keys = row.keys() if hasattr(row, "keys") else []
    out: dict[str, Any] = {
        "id": row["id"], "sender": row["sender"], "text": row["text"],
        "sources": [], "created_at": created.isoformat() if created else None,
    }
    if "agent_name" in keys and row["agent_name"]:
        out["agent_name"] = row["agent_name"]
    if "attachments" in keys and row["attachments"]:
        out["attachments"] = row["attachments"]
    if "source_chunk_ids" in keys and row["source_chunk_ids"]:
        out["source_chunk_ids"] = list(row["source_chunk_ids"])
    return out


def source_payload(chunk: Any) -> dict[str, Any]:
    """A cited source: chunk/document ids, where it came from, and its scores."""
    return {
        "chunk_id": int(chunk.chunk_id), "document_id": str(chunk.document_id),
        "source": chunk.source, "title": chunk.title, "section": chunk.section,
        "page": chunk.page, "similarity": round(float(chunk.similarity), 4),
    }


def session_actor(tenant_id: Any, session_id: Any, env: dict[str, str] | None = None) -> Any:
    """Get or create the session's actor (named, detached, restarted on failure)."""
    opts: dict[str, Any] = {
        "name": actor_name(tenant_id, session_id), "namespace": NAMESPACE,
        "lifetime": "detached", "get_if_exists": True,
    }
    if env:
        opts["runtime_env"] = {"env_vars": env}
    return SessionActor.options(**opts).remote(  # type: ignore[attr-defined]
        str(tenant_id), str(session_id)
    )
