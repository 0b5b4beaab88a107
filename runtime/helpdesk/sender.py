"""The help-desk sender: drains the outbox rows of help-desk destinations (``helpdesk_id`` set).

An :class:`~runtime.channels.outbox_sender.OutboxSender` with another claim and another send: the
same loop (Postgres NOTIFY wakes it), leases (``FOR UPDATE SKIP LOCKED``; a sender that dies loses
its lease and the row is claimed again), full-jitter backoff stored as ``next_attempt_at``, dead
letters after ``outbox_max_attempts`` (or at once on a permanent 4xx), ``outbox_dead`` events and
the inbox's ``delivery_failed`` push; ``GET /v1/outbox?status=dead`` lists the dead rows and
``POST /v1/outbox/{id}/redrive`` (or ``/v1/helpdesks/{id}/redrive``) sends them again.

A row is one request (no pieces). Per destination and session, rows go in order (a ticket before
its lead). Requests go through the crawler's egress policy (:mod:`ingestion.egress`): a webhook URL
is the owner's to choose, so loopback, private and metadata addresses are refused at connect time
(a refused row is dead at once; ``CHAT_ENGINE_CRAWL_ALLOW_PRIVATE`` allows private ones outside
production).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx

from ingestion.egress import EgressRefused, EgressTransport, policy_from_settings
from runtime.channels.base import Permanent, Retry, SendOutcome, Sent
from runtime.channels.outbox_sender import OutboxSender
from runtime.config import Settings
from runtime.db import helpdesks as helpdesk_db
from runtime.db import outbox as outbox_db
from runtime.helpdesk.destinations import Destination, HelpdeskRequest, Unsupported, destination_for
from runtime.security import decrypt_secrets

log = logging.getLogger(__name__)

HELPDESK = "helpdesk"
"""The sender's name among the outbox senders (``outbox-sender:helpdesk``)."""


class HelpdeskSender(OutboxSender):
    """Sends help-desk rows. settings: backoff, leases, limits, API bases; client: an httpx
    client (default: one through the egress policy, ``outbox_send_timeout_s`` per request)."""

    def __init__(self, settings: Settings, *, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(settings, [HELPDESK], client=client)

    async def _open(self) -> None:
        if self._client is None:
            timeout = httpx.Timeout(self.settings.outbox_send_timeout_s, connect=5.0)
            transport = EgressTransport(policy_from_settings(self.settings))
            self._client = httpx.AsyncClient(transport=transport, timeout=timeout, follow_redirects=False)
        await super()._open()

    async def drain_once(self) -> int:
        """Claim due help-desk rows and send them; returns how many rows were handled."""
        await self._open()
        self.stats.passes += 1
        async with self._pool.acquire() as conn:
            rows = await helpdesk_db.claim_due(conn, self.settings.outbox_batch, self.settings.outbox_lease_s)
        if rows:
            await asyncio.gather(*(self._send_row(r) for r in rows))
        return len(rows)

    async def _deliver(self, row: Any) -> None:
        destination = destination_for(row["helpdesk_kind"])
        secrets = decrypt_secrets(self.settings, row["helpdesk_secrets"])
        try:
            req = destination.build(dict(row["body"] or {}), dict(row["helpdesk_config"] or {}), secrets,
                                    self.settings, tenant_id=row["tenant_id"], now=int(time.time()))
        except (Unsupported, KeyError) as exc:
            await self._fail(row, Permanent(f"cannot build the request: {exc}"))
            return
        outcome = await self._send(destination, req)
        if not isinstance(outcome, Sent):
            await self._fail(row, outcome)
            return
        async with self._pool.acquire() as conn:
            if await outbox_db.mark_sent(conn, int(row["id"]), outcome.provider_message_id):
                self.stats.sent += 1
            else:
                log.warning("outbox row %s: lease lost mid-send", row["id"])

    async def _send(self, destination: Destination, req: HelpdeskRequest) -> SendOutcome:
        assert self._client is not None
        try:
            resp = await self._client.request(req.method, req.url, headers=req.headers, content=req.content,
                                              auth=req.auth)
        except EgressRefused as exc:
            return Permanent(f"refused by the egress policy: {exc}")
        except httpx.TimeoutException as exc:
            return Retry(f"timeout after {self.settings.outbox_send_timeout_s:.0f} s ({type(exc).__name__})")
        except httpx.TransportError as exc:
            return Retry(f"connection failed: {type(exc).__name__}: {exc}")
        headers = {k.lower(): v for k, v in resp.headers.items()}
        outcome = destination.read_response(resp.status_code, headers, resp.content)
        kind = type(outcome).__name__.lower()
        self.stats.by_outcome[kind] = self.stats.by_outcome.get(kind, 0) + 1
        return outcome
