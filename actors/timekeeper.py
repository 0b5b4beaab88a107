"""Timekeeper: the single detached actor that wakes sessions whose stored timers are due.

Session actors arm asyncio timers while active; this actor polls the ``timers`` table so an SLA
fires even for a passivated session (activating it through its named actor). It also sweeps for
customer messages left ``received`` longer than ``stale_message_s`` (a turn lost to a crash or an
outage) and has their sessions re-queue them, and every ``kb_job_heartbeat_s`` it fails ingestion
jobs whose worker stopped reporting (``kb_job_stale_s``). Postgres being down, at start or later,
only delays a poll: the pool is (re)created inside the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import ray

from runtime.config import get_settings
from runtime.constants import NAMESPACE, TIMEKEEPER_NAME
from runtime.db import kb_jobs as kb_db
from runtime.db import messages as msg_db
from runtime.db import timers as timer_db
from runtime.db.pool import create_pool

log = logging.getLogger(__name__)

CALL_TIMEOUT_S = 30.0


class Timekeeper:
    """Polls every ``settings.timekeeper_poll_s`` seconds; create with :func:`ensure_timekeeper`."""

    def __init__(self) -> None:
        self.settings = get_settings()
        self.fired = 0
        self.recovered = 0
        self.errors = 0
        self.jobs_failed_stale = 0
        self._pool: Any = None
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        last_sweep = 0.0
        while True:
            try:
                if self._pool is None:
                    assert self.settings.database_url is not None
                    self._pool = await create_pool(str(self.settings.database_url), min_size=0,
                                                   max_size=1, max_inactive_connection_lifetime=60.0)
                if time.monotonic() - last_sweep >= self.settings.kb_job_heartbeat_s:
                    await self._sweep_jobs()
                    last_sweep = time.monotonic()
                await self._fire_due()
                await self._recover_stale()
            except Exception:  # noqa: BLE001 - Postgres hiccup: try again next poll
                self.errors += 1
                log.exception("timer poll failed")
            await asyncio.sleep(self.settings.timekeeper_poll_s)

    async def _fire_due(self) -> None:
        from actors.session import session_actor

        async with self._pool.acquire() as conn:
            due = await timer_db.due_timers(conn)
        for t in due:
            try:
                ref = session_actor(t["tenant_id"], t["session_id"]).fire_timer.remote(t["kind"])
                res = await asyncio.wait_for(ref, timeout=CALL_TIMEOUT_S)
                self.fired += int(bool(res.get("fired")))
            except Exception:  # noqa: BLE001 - the row stays; retried at the next poll
                self.errors += 1
                log.exception("firing a timer failed")

    async def _recover_stale(self) -> None:
        from actors.session import session_actor

        async with self._pool.acquire() as conn:
            stale = await msg_db.sessions_with_stale_messages(conn, self.settings.stale_message_s)
        for s in stale:
            try:
                ref = session_actor(s["tenant_id"], s["session_id"]).recover.remote()
                res = await asyncio.wait_for(ref, timeout=CALL_TIMEOUT_S)
                self.recovered += int(res.get("requeued", 0))
            except Exception:  # noqa: BLE001 - retried at the next poll
                self.errors += 1
                log.exception("re-queueing stale messages failed")

    async def _sweep_jobs(self) -> None:
        async with self._pool.acquire() as conn:
            failed = await kb_db.fail_stale_jobs(conn, self.settings.kb_job_stale_s)
        for row in failed:
            log.warning("ingestion job %s (tenant %s) had no heartbeat for %.0f s: failed",
                        row["id"], row["tenant_id"], self.settings.kb_job_stale_s)
        self.jobs_failed_stale += len(failed)

    async def stats(self) -> dict[str, Any]:
        """Counters since this actor started: fired, recovered (messages re-queued), errors,
        jobs_failed_stale, and whether it holds a Postgres pool."""
        return {"fired": self.fired, "recovered": self.recovered, "errors": self.errors,
                "jobs_failed_stale": self.jobs_failed_stale, "connected": self._pool is not None}


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
