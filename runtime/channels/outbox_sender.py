"""The outbox sender: drains ``outbox`` rows of some channel types to their providers with httpx.

A plain object (the Ray actor in ``actors/sender.py`` is a thin shell around it, and tests drive
it without Ray). Each pass claims due rows with a lease (``FOR UPDATE SKIP LOCKED``: two senders
never hold one row; a sender that dies loses its lease and the row is claimed again), at most one
row per session (a row waits while an earlier one of its session is unsent, so a conversation's
messages arrive in order), and sends rows of different sessions concurrently.

Per row: the text is split at the channel's limit and sent piece by piece; each accepted piece is
recorded at once (``parts_sent``), so a retry or a re-drive resumes after it. Transient failures
(timeouts, connection errors, 429 with ``Retry-After``, 5xx) are retried with full-jitter
exponential backoff (tenacity's ``wait_random_exponential``; the delay is stored as the row's
``next_attempt_at``, so retries survive a restart) up to ``outbox_max_attempts``, then the row is
``dead``; a permanent 4xx is ``dead`` at once with the provider's error. Before sending, an SMS to
a number that sent STOP and a WhatsApp reply outside the 24-hour customer-service window are not
sent: the row is ``dead`` with the reason and the inbox is told.

What remains at-least-once: a provider that accepted a request whose answer never reached us (the
process died in between) gets that piece again when the lease expires; none of these providers'
send APIs takes an idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import httpx
from tenacity import RetryCallState, wait_random_exponential

from runtime.channels.base import OutboundText, Permanent, Retry, SendOutcome, Sent, split_text
from runtime.channels.registry import adapter_for
from runtime.config import Settings
from runtime.db import channels as ch_db
from runtime.db import contacts as contact_db
from runtime.db import escalations as esc_db
from runtime.db import outbox as outbox_db
from runtime.db.pool import create_pool
from runtime.events import SessionEvents, redis_client
from runtime.security import decrypt_secrets

log = logging.getLogger(__name__)

CHANNEL_CACHE_S = 30.0


@dataclass
class SenderStats:
    """Counters since the sender started: rows sent, attempts retried, rows dead, passes run."""

    sent: int = 0
    retried: int = 0
    dead: int = 0
    passes: int = 0
    errors: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)


def backoff_s(attempt: int, initial_s: float, max_s: float) -> float:
    """Full-jitter exponential backoff before retry ``attempt`` (1-based): a uniform draw in
    ``[0, min(max_s, initial_s * 2**(attempt - 1)))`` seconds, from tenacity."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    return float(wait_random_exponential(multiplier=initial_s, max=max_s)(state))


class OutboxSender:
    """Sends the outbox rows of ``channel_types``. settings: api bases, limits, backoff;
    client: an httpx client (default: one with ``outbox_send_timeout_s`` as the whole-request
    timeout)."""

    def __init__(self, settings: Settings, channel_types: list[str], *,
                 client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self.channel_types = list(channel_types)
        self.stats = SenderStats()
        self._client = client
        self._pool: Any = None
        self._events: SessionEvents | None = None
        self._listener: Any = None
        self._wake = asyncio.Event()
        self._channels: dict[UUID, tuple[float, Any, dict[str, str]]] = {}
        self._stop = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    async def _open(self) -> None:
        if self._pool is None:
            assert self.settings.database_url is not None, "resolved by the launcher"
            self._pool = await create_pool(str(self.settings.database_url), min_size=0, max_size=4,
                                           max_inactive_connection_lifetime=60.0)
        if self._events is None and self.settings.redis_url is not None:
            self._events = SessionEvents(redis_client(str(self.settings.redis_url)))
        if self._client is None:
            timeout = httpx.Timeout(self.settings.outbox_send_timeout_s, connect=5.0)
            self._client = httpx.AsyncClient(timeout=timeout, follow_redirects=False)
        if self._listener is None:
            import asyncpg

            conn = await asyncpg.connect(str(self.settings.database_url))
            await conn.add_listener(outbox_db.NOTIFY_CHANNEL, lambda *_: self._wake.set())
            self._listener = conn

    async def close(self) -> None:
        """Stop the loop and release the pool, the listener and the HTTP client."""
        self._stop.set()
        self._wake.set()
        for resource, method in ((self._listener, "close"), (self._pool, "close"), (self._client, "aclose")):
            if resource is not None:
                with contextlib.suppress(Exception):
                    await getattr(resource, method)()
        if self._events is not None:
            with contextlib.suppress(Exception):
                await self._events.redis.aclose()  # type: ignore[attr-defined]
        self._listener = self._pool = self._client = self._events = None

    async def run(self) -> None:
        """Drain until :meth:`close`: a pass whenever a row is enqueued (Postgres NOTIFY) or every
        ``outbox_poll_s``; a pass that found rows is followed by another at once. Postgres being
        down only delays the next pass."""
        while not self._stop.is_set():
            handled = 0
            try:
                await self._open()
                handled = await self.drain_once()
            except Exception:  # noqa: BLE001 - a Postgres hiccup: the next pass tries again
                self.stats.errors += 1
                log.exception("outbox pass failed (%s)", ",".join(self.channel_types))
                with contextlib.suppress(Exception):
                    if self._listener is not None:
                        await self._listener.close()
                self._listener = None
            if handled:
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.outbox_poll_s)

    # ------------------------------------------------------------------ one pass
    async def drain_once(self) -> int:
        """Claim due rows and send them; returns how many rows were handled."""
        await self._open()
        self.stats.passes += 1
        async with self._pool.acquire() as conn:
            rows = await outbox_db.claim_due(conn, self.channel_types, self.settings.outbox_batch,
                                             self.settings.outbox_lease_s, with_credentials=True)
        if rows:
            await asyncio.gather(*(self._send_row(r) for r in rows))
        return len(rows)

    async def _channel(self, channel_id: UUID) -> tuple[Any, dict[str, str]]:
        hit = self._channels.get(channel_id)
        if hit is not None and time.monotonic() - hit[0] < CHANNEL_CACHE_S:
            return hit[1], hit[2]
        async with self._pool.acquire() as conn:
            rows = await ch_db.channels_with_secrets(conn, [channel_id])
        if not rows:
            raise LookupError(f"channel {channel_id} is gone")
        row = rows[0]
        secrets = decrypt_secrets(self.settings, ch_db.sealed(row))
        self._channels[channel_id] = (time.monotonic(), row, secrets)
        return row, secrets

    async def _send_row(self, row: Any) -> None:
        try:
            await self._deliver(row)
        except Exception as exc:  # noqa: BLE001 - one row's bug must not stop the others
            self.stats.errors += 1
            log.exception("outbox row %s failed unexpectedly", row["id"])
            await self._fail(row, Retry(f"internal error: {type(exc).__name__}: {exc}"))

    async def _deliver(self, row: Any) -> None:
        channel, secrets = await self._channel(row["channel_id"])
        adapter = adapter_for(row["channel_type"])
        recipient = row["recipient"]
        blocked = await self._blocked(row, recipient)
        if blocked is not None:
            await self._fail(row, Permanent(blocked), notify=True)
            return
        body = row["body"] or {}
        parts = split_text(str(body.get("text", "")), adapter.text_limit)
        api_base = str(getattr(self.settings, adapter.api_base_setting)).rstrip("/")
        # A row without a session (the owner's weekly report) carries its own thread (subject).
        thread = dict(row["thread"] or body.get("thread") or {})
        assert self._client is not None
        for index in range(int(row["parts_sent"]), len(parts)):
            out = OutboundText(recipient=recipient or "", text=parts[index], thread=thread,
                               outbox_id=int(row["id"]), part=index, parts=len(parts))
            req = adapter.build_send(out, dict(channel["config"] or {}), secrets, api_base)
            outcome = await self._request(adapter, req)
            if not isinstance(outcome, Sent):
                await self._fail(row, outcome)
                return
            async with self._pool.acquire() as conn:
                if not await outbox_db.record_part(conn, int(row["id"]), outcome.provider_message_id,
                                                   self.settings.outbox_lease_s):
                    log.warning("outbox row %s: lease lost mid-send", row["id"])
                    return
        async with self._pool.acquire() as conn:
            if await outbox_db.mark_sent(conn, int(row["id"])):
                self.stats.sent += 1

    async def _request(self, adapter: Any, req: Any) -> SendOutcome:
        assert self._client is not None
        try:
            resp = await self._client.request(req.method, req.url, headers=req.headers, json=req.json,
                                              data=req.data, auth=req.auth)
        except httpx.TimeoutException as exc:
            return Retry(f"timeout after {self.settings.outbox_send_timeout_s:.0f} s ({type(exc).__name__})")
        except httpx.TransportError as exc:
            return Retry(f"connection failed: {type(exc).__name__}: {exc}")
        headers = {k.lower(): v for k, v in resp.headers.items()}
        outcome: SendOutcome = adapter.read_response(resp.status_code, headers, resp.content)
        kind = type(outcome).__name__.lower()
        self.stats.by_outcome[kind] = self.stats.by_outcome.get(kind, 0) + 1
        return outcome

    async def _blocked(self, row: Any, recipient: str | None) -> str | None:
        """Why this row must not be sent at all, or None."""
        if not recipient:
            return "no recipient address on the session; nothing can be sent on this channel"
        if row["channel_type"] == "sms":
            async with self._pool.acquire() as conn:
                if await contact_db.is_opted_out(conn, row["channel_id"], recipient):
                    return "opted_out: the recipient replied STOP; nothing is sent until they reply START"
        if row["channel_type"] == "whatsapp":
            last = row["last_customer_at"]
            window = timedelta(hours=self.settings.whatsapp_window_hours)
            if last is None or datetime.now(UTC) - last > window:
                return ("whatsapp_window_closed: the customer last wrote more than "
                        f"{self.settings.whatsapp_window_hours:g} h ago, outside WhatsApp's customer-service "
                        "window; only an approved template can reach them now, or wait for them to write")
        return None

    async def _fail(self, row: Any, outcome: Retry | Permanent, notify: bool = False) -> None:
        attempts = int(row["attempts"])
        retry_at: datetime | None = None
        if isinstance(outcome, Retry) and attempts < self.settings.outbox_max_attempts:
            delay = backoff_s(attempts, self.settings.outbox_backoff_initial_s,
                              self.settings.outbox_backoff_max_s)
            delay = max(delay, outcome.retry_after_s or 0.0)
            retry_at = datetime.now(UTC) + timedelta(seconds=delay)
        error = outcome.error
        if isinstance(outcome, Retry) and retry_at is None:
            error = f"gave up after {attempts} attempts; last error: {error}"
        async with self._pool.acquire() as conn:
            await outbox_db.mark_failed(conn, int(row["id"]), error, retry_at)
            if retry_at is None:
                await esc_db.record_event(conn, row["tenant_id"], row["session_id"], "outbox_dead",
                                          {"outbox_id": int(row["id"]), "error": error[:500]})
        if retry_at is not None:
            self.stats.retried += 1
            return
        self.stats.dead += 1
        log.warning("outbox row %s is dead: %s", row["id"], error[:300])
        if self._events is not None:
            with contextlib.suppress(Exception):
                await self._events.notify_inbox(row["tenant_id"], "delivery_failed", {
                    "session_id": row["session_id"], "outbox_id": int(row["id"]),
                    "channel_type": row["channel_type"], "error": error[:500], "blocked": notify,
                })
