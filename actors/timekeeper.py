"""Timekeeper: the single detached actor that wakes sessions whose stored timers are due.

Session actors arm asyncio timers while active; this actor polls the ``timers`` table so an SLA
fires even for a passivated session (activating it through its named actor).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import ray

from runtime.config import get_settings
from runtime.db import conversations as conv
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
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        from actors.session import session_actor

        assert self.settings.database_url is not None
        pool = await create_pool(str(self.settings.database_url), min_size=0, max_size=1,
                                 max_inactive_connection_lifetime=60.0)
        while True:
            try:
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

    async def stats(self) -> dict[str, Any]:
        """``{"fired": n, "errors": n}`` since this actor started."""
        return {"fired": self.fired, "errors": self.errors}


def ensure_timekeeper() -> Any:
    """Get or create the single Timekeeper (named, detached)."""
    with contextlib.suppress(ValueError):
        return ray.get_actor(TIMEKEEPER_NAME, namespace="chat")
    return Timekeeper.options(  # type: ignore[attr-defined]
        name=TIMEKEEPER_NAME, namespace="chat", lifetime="detached", get_if_exists=True
    ).remote()
