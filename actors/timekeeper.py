"""Timekeeper: the single detached actor that wakes sessions whose stored timers are due.

Session actors arm asyncio timers while active; this actor polls the ``timers`` table so an SLA
fires even for a passivated session (activating it through its named actor). Every
``kb_job_heartbeat_s`` it also fails ingestion jobs whose worker stopped reporting
(``kb_job_stale_s``), so no job stays ``running`` forever after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import ray

from runtime.config import get_settings
from runtime.db import conversations as conv
from runtime.db import kb as kb_db
from runtime.db.pool import create_pool

log = logging.getLogger(__name__)

TIMEKEEPER_NAME = "timekeeper"


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class Timekeeper:
    """Polls due timers every ``settings.timekeeper_poll_s`` seconds and fires them."""

    def __init__(self) -> None:
        self.settings = get_settings()
        self.fired = 0
        self.errors = 0
        self.jobs_failed_stale = 0
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        from actors.session import session_actor

        assert self.settings.database_url is not None
        pool = await create_pool(str(self.settings.database_url), min_size=0, max_size=1,
                                 max_inactive_connection_lifetime=60.0)
        last_sweep = 0.0
        while True:
            try:
                if time.monotonic() - last_sweep >= self.settings.kb_job_heartbeat_s:
                    last_sweep = time.monotonic()
                    await self._sweep_jobs(pool)
                async with pool.acquire() as conn:
                    due = await conv.due_timers(conn)
                calls = [
                    session_actor(t["tenant_id"], t["session_id"]).fire_timer.remote(t["kind"])
                    for t in due
                ]
                for ref in calls:
                    try:
                        res = await asyncio.wait_for(ref, timeout=30)
                        self.fired += int(bool(res.get("fired")))
                    except Exception:  # noqa: BLE001 - retried at the next poll
                        self.errors += 1
                        log.exception("firing a timer failed")
            except Exception:  # noqa: BLE001 - Postgres hiccup: try again next poll
                self.errors += 1
                log.exception("timer poll failed")
            await asyncio.sleep(self.settings.timekeeper_poll_s)

    async def _sweep_jobs(self, pool: Any) -> None:
        async with pool.acquire() as conn:
            failed = await kb_db.fail_stale_jobs(conn, self.settings.kb_job_stale_s)
        for row in failed:
            log.warning("ingestion job %s (tenant %s) had no heartbeat for %.0f s: failed",
                        row["id"], row["tenant_id"], self.settings.kb_job_stale_s)
        self.jobs_failed_stale += len(failed)

    async def stats(self) -> dict[str, Any]:
        """``{"fired": n, "errors": n, "jobs_failed_stale": n}`` since this actor started."""
        return {"fired": self.fired, "errors": self.errors,
                "jobs_failed_stale": self.jobs_failed_stale}


def ensure_timekeeper() -> Any:
    """Get or create the single Timekeeper (named, detached)."""
    with contextlib.suppress(ValueError):
        return ray.get_actor(TIMEKEEPER_NAME, namespace="chat")
    return Timekeeper.options(  # type: ignore[attr-defined]
        name=TIMEKEEPER_NAME, namespace="chat", lifetime="detached", get_if_exists=True
    ).remote()
