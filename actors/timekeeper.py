"""Timekeeper: the single detached actor that wakes sessions whose stored timers are due, and
hands messages stored by channel webhooks to their sessions.

Session actors arm asyncio timers while active; this actor polls the ``timers`` table so an SLA
fires even for a passivated session (activating it through its named actor). It also sweeps for
customer messages left ``received`` longer than ``stale_message_s`` (a turn lost to a crash or an
outage) and has their sessions re-queue them, and every ``kb_job_heartbeat_s`` it fails ingestion
jobs whose worker stopped reporting (``kb_job_stale_s``). Every ``weekly_report_check_s`` it
enqueues last week's report to owners who have not had it (``runtime.analytics.weekly``).
Postgres being down, at start or later, only delays a poll: the pool is (re)created inside the
loop.

Inbound dispatch: a webhook stores the customer's message and sends a Postgres NOTIFY on
``inbound`` (``<tenant>:<session>``) in the same transaction; this actor listens and calls the
session actor's ``recover`` (queue its unanswered messages, in order), one call in flight per
session (a notification arriving meanwhile runs one more). The ingress thus acknowledges a
webhook without a Ray call of its own; a notification lost while this actor restarts is covered
by the stale-message sweep.

Caps: a session without an actor is admitted under the caps of live actors first
(:func:`actors.session.admit_session`). Beyond them nothing is lost: a channel message stays
stored and ``received`` (the stale-message sweep hands it over once there is room), a due timer
stays in its table (the next poll fires it); ``deferred`` counts these.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Any

import asyncpg
import ray

from runtime.analytics.weekly import send_weekly_reports
from runtime.config import get_settings
from runtime.constants import NAMESPACE, TIMEKEEPER_NAME
from runtime.conversation.capacity import node_key
from runtime.db import kb_jobs as kb_db
from runtime.db import messages as msg_db
from runtime.db import outbox as outbox_db
from runtime.db import timers as timer_db
from runtime.db.pool import create_pool
from runtime.errors import CapacityExceeded, SessionPassivating
from runtime.events import redis_client
from runtime.metrics import metrics

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0
DISPATCH_RETRIES = 40  # a passivating actor refuses calls until it has exited
HANDLE_CACHE_MAX = 10_000
GAUGES_EVERY_S = 10.0  # the metrics agent reports every 10 s too


class Timekeeper:
    """Polls every ``settings.timekeeper_poll_s`` seconds; create with :func:`ensure_timekeeper`."""

    def __init__(self) -> None:
        self.settings = get_settings()
        self.fired = 0
        self.recovered = 0
        self.errors = 0
        self.jobs_failed_stale = 0
        self.dispatched = 0
        self.deferred = 0
        self.weekly_reports = 0
        self._pool: Any = None
        self._redis: Any = None
        self._listener: Any = None
        self._handles: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._dispatching: set[tuple[str, str]] = set()
        self._again: set[tuple[str, str]] = set()
        self._dispatch_tasks: set[asyncio.Task[None]] = set()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        last_sweep = last_gauges = 0.0
        next_report = 0.0
        while True:
            try:
                if self._pool is None:
                    assert self.settings.database_url is not None
                    self._pool = await create_pool(str(self.settings.database_url), min_size=0,
                                                   max_size=1, max_inactive_connection_lifetime=60.0)
                await self._ensure_listener()
                if time.monotonic() - last_sweep >= self.settings.kb_job_heartbeat_s:
                    await self._sweep_jobs()
                    last_sweep = time.monotonic()
                await self._fire_due()
                await self._recover_stale()
                if time.monotonic() - last_gauges >= GAUGES_EVERY_S:
                    last_gauges = time.monotonic()
                    await self._report_gauges()
                if self.settings.weekly_report_enabled and time.monotonic() >= next_report:
                    next_report = time.monotonic() + self.settings.weekly_report_check_s
                    self.weekly_reports += len(await send_weekly_reports(self._pool))
            except Exception:  # noqa: BLE001 - Postgres hiccup: try again next poll
                self.errors += 1
                log.exception("timer poll failed")
            await asyncio.sleep(self.settings.timekeeper_poll_s)

    async def _report_gauges(self) -> None:
        """Cluster-wide levels for the metrics export: live session actors (the unexpired
        leases in every node's set) and outbox rows pending and dead."""
        async with self._pool.acquire() as conn:
            outbox = await outbox_db.counts(conn)
        if self._redis is None:
            assert self.settings.redis_url is not None
            self._redis = redis_client(str(self.settings.redis_url))
        active = 0
        if self._redis is not None:
            now = time.time()
            async for key in self._redis.scan_iter(match=node_key("*"), count=500):
                active += int(await self._redis.zcount(key, now, "+inf"))
        metrics().gauges(active_sessions=active, outbox_pending=outbox.get("pending", 0),
                         outbox_dead=outbox.get("dead", 0))

    # ------------------------------------------------------------------ inbound dispatch
    async def _ensure_listener(self) -> None:
        if self._listener is not None and not self._listener.is_closed():
            return
        assert self.settings.database_url is not None
        conn = await asyncpg.connect(str(self.settings.database_url))
        await conn.add_listener(msg_db.INBOUND_CHANNEL, self._on_inbound)
        self._listener = conn

    def _on_inbound(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        tenant_id, _, session_id = str(payload).partition(":")
        self._start_dispatch((tenant_id, session_id), again=True)

    def _start_dispatch(self, key: tuple[str, str], *, again: bool, stale: bool = False) -> None:
        """Hand the session's unanswered messages over in a task of its own, one per session: a
        slow or restarting actor delays only its own conversation, never the poll loop or the
        other sessions. ``again``: if a hand-over is already running, run one more after it
        (a message may have been stored after it read the table)."""
        if key in self._dispatching:
            if again:
                self._again.add(key)
            return
        self._dispatching.add(key)
        task = asyncio.get_running_loop().create_task(self._dispatch(key, stale=stale))
        self._dispatch_tasks.add(task)
        task.add_done_callback(self._dispatch_tasks.discard)

    async def _session(self, key: tuple[str, str], fresh: bool = False) -> Any:
        """The session's actor handle (cached unless ``fresh``); a new one only after admission
        under the caps. Raises CapacityExceeded."""
        from actors.session import admit_session, session_actor

        if fresh or key not in self._handles:
            if self._redis is None:
                assert self.settings.redis_url is not None
                self._redis = redis_client(str(self.settings.redis_url))
            await admit_session(self._redis, self.settings, *key)
            self._handles[key] = session_actor(*key)
            if len(self._handles) > HANDLE_CACHE_MAX:
                self._handles.popitem(last=False)
        self._handles.move_to_end(key)
        return self._handles[key]

    def _deferred(self, key: tuple[str, str], what: str, exc: CapacityExceeded) -> None:
        self.deferred += 1
        log.info("session %s: %s deferred, at capacity (%s)", key[1], what, exc.message)

    async def _dispatch(self, key: tuple[str, str], *, stale: bool = False) -> None:
        what = "stale-message hand-over" if stale else "inbound hand-over"
        try:
            while True:
                self._again.discard(key)
                requeued = await self._recover_once(key, fresh=stale)
                if stale:
                    self.recovered += requeued
                else:
                    self.dispatched += 1
                if key not in self._again:
                    return
        except CapacityExceeded as exc:  # the message stays stored; the next sweep hands it over
            self._deferred(key, what, exc)
        except Exception:  # noqa: BLE001 - the next stale-message sweep tries again
            self.errors += 1
            log.exception("%s to session %s failed", what, key[1])
        finally:
            self._dispatching.discard(key)

    async def _recover_once(self, key: tuple[str, str], fresh: bool = False) -> int:
        """Call the session's ``recover``; returns the messages it re-queued. ``fresh``: look
        the actor up again even on the first try (the sweep: the cached one may be gone)."""
        for attempt in range(DISPATCH_RETRIES):
            handle = await self._session(key, fresh=fresh or attempt > 0)
            try:
                res = await asyncio.wait_for(handle.recover.remote(), timeout=CALL_TIMEOUT_S)
                return int(res.get("requeued", 0))
            except ray.exceptions.RayActorError:
                pass  # passivated meanwhile: the next handle is a new actor
            except ray.exceptions.RayTaskError as exc:
                if not isinstance(getattr(exc, "cause", None), SessionPassivating):
                    raise
            await asyncio.sleep(0.05)
        raise RuntimeError(f"session {key[1]} kept passivating; left to the stale-message sweep")

    async def _fire_due(self) -> None:
        async with self._pool.acquire() as conn:
            due = await timer_db.due_timers(conn)
        for t in due:
            key = (str(t["tenant_id"]), str(t["session_id"]))
            try:
                ref = (await self._session(key, fresh=True)).fire_timer.remote(t["kind"])
                res = await asyncio.wait_for(ref, timeout=CALL_TIMEOUT_S)
                self.fired += int(bool(res.get("fired")))
            except CapacityExceeded as exc:  # the row stays; the next poll fires it
                self._deferred(key, f"{t['kind']} timer", exc)
            except Exception:  # noqa: BLE001 - the row stays; retried at the next poll
                self.errors += 1
                log.exception("firing a timer failed")

    async def _recover_stale(self) -> None:
        async with self._pool.acquire() as conn:
            stale = await msg_db.sessions_with_stale_messages(conn, self.settings.stale_message_s)
        for s in stale:  # a session whose hand-over is still running is left to it
            self._start_dispatch((str(s["tenant_id"]), str(s["session_id"])), again=False, stale=True)

    async def _sweep_jobs(self) -> None:
        async with self._pool.acquire() as conn:
            failed = await kb_db.fail_stale_jobs(conn, self.settings.kb_job_stale_s)
        for row in failed:
            log.warning("ingestion job %s (tenant %s) had no heartbeat for %.0f s: failed",
                        row["id"], row["tenant_id"], self.settings.kb_job_stale_s)
        self.jobs_failed_stale += len(failed)

    async def stats(self) -> dict[str, Any]:
        """Counters since this actor started: fired, recovered (messages re-queued), errors,
        jobs_failed_stale, dispatched (inbound hand-overs), deferred (hand-overs and timers put
        off because the caps of live actors were reached; retried later), weekly_reports
        (reports enqueued), and whether it holds a Postgres pool."""
        return {"fired": self.fired, "recovered": self.recovered, "errors": self.errors,
                "jobs_failed_stale": self.jobs_failed_stale, "dispatched": self.dispatched,
                "deferred": self.deferred, "weekly_reports": self.weekly_reports,
                "connected": self._pool is not None}


def ensure_timekeeper(env: dict[str, str] | None = None) -> Any:
    """Get or create the single Timekeeper (named, detached, restarted on failure)."""
    with contextlib.suppress(ValueError):
        return ray.get_actor(TIMEKEEPER_NAME, namespace=NAMESPACE)
    opts: dict[str, Any] = {"name": TIMEKEEPER_NAME, "namespace": NAMESPACE, "lifetime": "detached",
                            "get_if_exists": True}
    if env:
        opts["runtime_env"] = {"env_vars": env}
    remote = ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)(Timekeeper)
    return remote.options(**opts).remote()
